"""Downstream metrics and building blocks against hand-computed cases: ActivityNet detection AP (interpolated
precision, each ground truth matched once, duplicates as false positives), 1-D NMS, top-k accuracy, the QA
answer vocabulary and OOV rate, multi-view sampling, sliding windows, localization targets and decoding."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from structvl.data.records import VideoRecord
from structvl.tasks.heads import PairHead, fit_head, topk_accuracy
from structvl.tasks.localization import (
    SnippetWindows,
    decode_detections,
    rescale,
    snippet_targets,
    window_frame_indices,
)
from structvl.tasks.tal_metrics import Segment, average_precision, detection_map, interpolated_ap, nms_1d, segment_iou

pytestmark = pytest.mark.usefixtures("one_thread")


def seg(video, start, end, score=1.0, label="a"):
    return Segment(video, start, end, label, score)


# ----------------------------------------------------------------------------- tIoU, NMS
def test_segment_iou():
    np.testing.assert_allclose(segment_iou((0, 10), np.array([[0, 10], [5, 15], [10, 20], [2, 4]])),
                               [1.0, 5 / 15, 0.0, 0.2])


def test_nms_keeps_best_and_drops_overlaps_above_threshold():
    segments = np.array([[0, 10], [1, 10], [20, 30], [0, 9]])
    scores = np.array([0.9, 0.8, 0.7, 0.95])
    # [0, 9] wins; [0, 10] (tIoU 0.9) and [1, 10] (tIoU 0.8) go; [20, 30] does not overlap
    assert nms_1d(segments, scores, 0.5) == [3, 2]
    assert nms_1d(segments, scores, 0.95) == [3, 0, 1, 2]  # nothing overlaps that much
    assert nms_1d(segments, scores, 0.5, max_keep=1) == [3]


# ----------------------------------------------------------------------------- AP, the ActivityNet way
def test_interpolated_precision_not_raw_nor_11_point():
    # ground truths A, B, C; detections in score order: TP, FP, FP, TP, TP
    precision = np.array([1, 1 / 2, 1 / 3, 2 / 4, 3 / 5])
    recall = np.array([1, 1, 1, 2, 3]) / 3
    # envelope: precision at recall 2/3 becomes 0.6 (the best at that recall or beyond), not 0.5
    assert interpolated_ap(precision, recall) == pytest.approx((1 + 0.6 + 0.6) / 3)  # raw would be (1+.5+.6)/3


def test_average_precision_duplicates_are_false_positives():
    gt = [seg("v", 0, 10), seg("v", 20, 30)]
    dets = [seg("v", 0, 10, 0.9), seg("v", 0, 10, 0.8), seg("v", 20, 30, 0.7)]  # the second finds A again
    ap = average_precision(gt, dets, [0.5])
    # TP, FP, TP: precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1 -> 0.5 * 1 + 0.5 * 2/3
    assert ap[0] == pytest.approx(0.5 + 0.5 * 2 / 3)
    assert average_precision(gt, [dets[0], dets[2]], [0.5])[0] == pytest.approx(1.0)


def test_matched_ground_truth_is_skipped_for_the_next_best_one():
    gt = [seg("v", 0, 10), seg("v", 2, 12)]
    dets = [seg("v", 0, 10, 0.9), seg("v", 0, 11, 0.8)]
    # det 2 overlaps A (10/11) best, but A is taken: it falls through to B (tIoU 9/12 = 0.75)
    ap = average_precision(gt, dets, [0.5, 0.8])
    assert ap[0] == pytest.approx(1.0)
    assert ap[1] == pytest.approx(0.5)  # at 0.8, B is too far: FP, recall stops at 1/2


def test_thresholds_videos_and_score_order():
    gt = [seg("v1", 0, 10)]
    det = seg("v1", 0, 6, 0.9)  # tIoU 0.6
    np.testing.assert_allclose(average_precision(gt, [det], [0.3, 0.5, 0.7]), [1, 1, 0])
    # a higher-scored detection in a video without ground truth is a false positive ranked first
    ap = average_precision(gt, [seg("v2", 0, 10, 0.95), det], [0.5])
    assert ap[0] == pytest.approx(0.5)
    assert average_precision(gt, [], [0.5])[0] == 0.0


def test_detection_map_averages_classes_with_ground_truth():
    gt = [seg("v", 0, 10, label="run"), seg("v", 10, 20, label="jump")]
    dets = [seg("v", 0, 10, 0.9, label="run"), seg("v", 30, 40, 0.5, label="swim")]  # no jump detection
    out = detection_map(gt, dets, [0.5, 0.7])
    assert out["localization/mAP@0.5"] == pytest.approx(50.0)  # run 1.0, jump 0.0; swim has no ground truth
    assert out["localization/mAP_avg"] == pytest.approx(50.0)


# ----------------------------------------------------------------------------- recognition / QA metrics
def test_topk_accuracy_ties_count_against():
    scores = torch.tensor([[0.1, 0.9, 0.0], [0.5, 0.5, 0.0], [0.2, 0.3, 0.5]])
    labels = torch.tensor([1, 0, 0])
    acc = topk_accuracy(scores, labels, (1, 2))
    assert acc[1] == pytest.approx(100 / 3)  # row 2 ties for first: not counted
    assert acc[2] == pytest.approx(200 / 3)  # row 3's label is third
    assert topk_accuracy(torch.zeros(4, 10), torch.arange(4), (1,))[1] == 0.0  # a constant scorer gets nothing


def test_multiview_averages_probabilities():
    from structvl.tasks.recognition import multiview_metrics

    # view 1 says class 0 weakly, view 2 says class 1 strongly: the average picks class 1
    logits = torch.tensor([[[1.0, 0.0, -5], [0.0, 5.0, -5]]])
    assert multiview_metrics(logits, torch.tensor([1]), "r")["r/top1"] == 100.0


def test_answer_vocabulary_and_oov_rate():
    from structvl.tasks.qa import answer_vocabulary, oov_rate, qa_text

    train = [VideoRecord("v", "v.mp4", answer=a) for a in ["two", "red", "two", "star", "red", "two", "blue"]]
    vocab = answer_vocabulary(train, 2)
    assert vocab == ["two", "red"]
    test = [VideoRecord("v", "v.mp4", answer=a) for a in ["two", "star", "red", "cyan"]]
    assert oov_rate(test, vocab) == pytest.approx(50.0)
    assert oov_rate(test, answer_vocabulary(train, 10)) == pytest.approx(25.0)
    assert qa_text("what colour?", "red") == "what colour? red" and qa_text(None, "a red star") == "a red star"


def test_pair_head_blind_ignores_video_and_fit_head_learns():
    torch.manual_seed(0)
    v, t = torch.randn(64, 8), torch.randn(64, 8)
    y = (v[:, 0] > 0).long()  # only the video side knows the answer
    head = PairHead(8, 32, 2)
    history = fit_head(lambda rows: torch.nn.functional.cross_entropy(head(v[rows], t[rows]), y[rows]),
                       list(head.parameters()), 64, epochs=30, batch_size=16, lr=1e-2, modules=[head])
    assert history[-1] < 0.5 * history[0]
    assert not head.training  # left in eval mode
    blind = PairHead(8, 32, 2, blind=True).eval()
    torch.testing.assert_close(blind(v, t), blind(torch.randn(64, 8), t))


# ----------------------------------------------------------------------------- views and windows
def test_view_indices_shift_inside_segments():
    from structvl.data.sampling import sample_frame_indices
    from structvl.tasks.features import view_indices

    uniform, _ = sample_frame_indices(32, 8.0, 8, "uniform")
    np.testing.assert_array_equal(view_indices(0, 32, 8, 0, 1), uniform)  # one view = evaluation sampling
    a, b = view_indices(0, 32, 8, 0, 2), view_indices(0, 32, 8, 1, 2)
    np.testing.assert_array_equal(a, np.arange(0, 32, 4) + 1)
    np.testing.assert_array_equal(b, np.arange(0, 32, 4) + 3)


def test_crops_along_longer_side():
    from structvl.tasks.features import crops

    video = torch.arange(2 * 3 * 4 * 8, dtype=torch.float).view(2, 3, 4, 8)
    left, mid, right = crops(video, 4, 3)
    assert left.shape == (2, 3, 4, 4)
    torch.testing.assert_close(left, video[..., 0:4])
    torch.testing.assert_close(mid, video[..., 2:6])
    torch.testing.assert_close(right, video[..., 4:8])


def test_window_frame_indices_cover_the_video():
    centres, idx = window_frame_indices(total=40, fps=8.0, duration=5.0, num_frames=4, window=1.0, stride=0.5)
    assert idx.shape == (10, 4)
    np.testing.assert_allclose(centres, np.arange(10) * 0.5 + 0.25)
    assert idx.min() >= 0 and idx.max() <= 39
    assert np.all(np.diff(idx, axis=1) >= 0) and np.all(np.diff(idx[:, 0]) >= 0)  # time runs forward
    assert abs(idx[5].mean() / 8.0 - centres[5]) < 0.25  # a window sits around its centre


def test_snippet_windows_decode_each_video_once(make_video):
    path = make_video("u.mp4", num_frames=24, size=(40, 48), fps=8)
    record = VideoRecord("u", str(path), duration=3.0)
    item = SnippetWindows([record], None, num_frames=4, image_size=32, window=1.0, stride=0.5)[0]
    assert item["windows"].shape == (6, 4, 3, 32, 32)
    assert item["centres"].shape == (6,)
    missing = SnippetWindows([VideoRecord("x", "/nonexistent.mp4")], None, 4, 32, 1.0, 0.5)[0]
    assert missing["skipped"]


def test_rescale_keeps_constant_sequences():
    x = torch.ones(7, 3) * torch.tensor([1.0, 2.0, 3.0])
    torch.testing.assert_close(rescale(x, 16), torch.ones(16, 3) * torch.tensor([1.0, 2.0, 3.0]))


def test_snippet_targets_and_decoding_recover_a_segment():
    segments = [{"start": 0.0, "end": 2.0, "label": "grow"}, {"start": 2.0, "end": 4.0, "label": "spin"}]
    cls, bounds = snippet_targets(segments, duration=4.0, steps=8, class_index={"grow": 0, "spin": 1})
    assert cls.tolist() == [1, 1, 1, 1, 2, 2, 2, 2]
    assert bounds[:, 0].nonzero().flatten().tolist() == [0, 4]  # starts at 0 s and 2 s
    assert bounds[:, 1].nonzero().flatten().tolist() == [3, 7]  # last steps inside: centres 1.75 s and 3.75 s
    # a head that predicts exactly those targets finds both segments with the right classes
    probs = torch.nn.functional.one_hot(cls, 3).float().numpy() * 0.9 + 0.1 / 3
    found = decode_detections("v", probs, bounds.numpy() * 0.9 + 0.05, 4.0, ["grow", "spin"], 0.5, 100)
    best = {}
    for d in found:
        best.setdefault(d.label, d)
    assert (best["grow"].start, best["grow"].end) == (0.0, 2.0)
    assert (best["spin"].start, best["spin"].end) == (2.0, 4.0)
    gt = [Segment("v", s["start"], s["end"], s["label"]) for s in segments]
    assert detection_map(gt, found, [0.5])["localization/mAP@0.5"] == pytest.approx(100.0)
    # Class-agnostic: the same segments found with one label, whatever the class probabilities say; a head
    # that knows the boundaries but confuses the classes still scores full marks there.
    swapped = probs[:, [0, 2, 1]]
    agnostic = decode_detections("v", swapped, bounds.numpy() * 0.9 + 0.05, 4.0, ["grow", "spin"], 0.5, 100,
                                 class_agnostic=True)
    assert {d.label for d in agnostic} == {"action"}
    # One detection per segment (no per-class copies), scored p_start * p_end * (1 - mean background inside).
    assert len({(d.start, d.end) for d in agnostic}) == len(agnostic)
    b = bounds.numpy() * 0.9 + 0.05
    top = max(agnostic, key=lambda d: d.score)
    i, j = int(top.start / 0.5), int(top.end / 0.5) - 1
    assert top.score == pytest.approx(b[i, 0] * b[j, 1] * (1 - swapped[i:j + 1, 0].mean()))
    truth = [Segment("v", s["start"], s["end"], "action") for s in segments]
    assert detection_map(truth, agnostic, [0.5])["localization/mAP@0.5"] == pytest.approx(100.0)
    confused = decode_detections("v", swapped, bounds.numpy() * 0.9 + 0.05, 4.0, ["grow", "spin"], 0.5, 100)
    assert detection_map(gt, confused, [0.5])["localization/mAP@0.5"] < 100.0
