
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from structvl.tasks.hard_negative import frozen_to_middle_frame, hard_negative_accuracy
from structvl.tasks.retrieval import chance_metrics, metrics_from_ranks, ranks_blockwise, retrieval_metrics


def test_ranks_hand_computed_case():
    # 3 videos (unit vectors e0, e1, e2); captions: c0 -> v0 exact, c1 -> v1 but closest to v2, c2 -> v2.
    videos = torch.eye(3)
    texts = F.normalize(torch.tensor([[1.0, 0, 0], [0, 0.6, 0.8], [0, 0, 1.0]]), dim=1)
    ranks = ranks_blockwise(texts, videos, [[0], [1], [2]])
    assert ranks.tolist() == [1, 2, 1]
    m = metrics_from_ranks(ranks, "t2v")
    assert m["t2v/R@1"] == pytest.approx(200 / 3)
    assert m["t2v/MdR"] == 1 and m["t2v/MnR"] == pytest.approx(4 / 3)


def test_ties_count_against_the_query():
    # A constant model: every score equal -> the positive is ranked last, never "first".
    ranks = ranks_blockwise(torch.ones(4, 2), torch.ones(4, 2), [[i] for i in range(4)])
    assert ranks.tolist() == [4, 4, 4, 4]


def test_blockwise_equals_full_and_multi_caption_v2t():
    g = torch.Generator().manual_seed(0)
    videos = F.normalize(torch.randn(17, 8, generator=g), dim=1)
    text_to_video = [i % 17 for i in range(40)]  # several captions per video
    texts = F.normalize(videos[text_to_video] + 0.9 * torch.randn(40, 8, generator=g), dim=1)
    full = retrieval_metrics(videos, texts, text_to_video, block_size=10_000, v2t_multi_caption="caption_gallery")
    blocked = retrieval_metrics(videos, texts, text_to_video, block_size=3, v2t_multi_caption="caption_gallery")
    assert full == blocked
    # v2t by brute force: rank of the best of the video's captions among all captions.
    sims = videos @ texts.t()
    expected = []
    for v in range(17):
        pos = [m for m, vv in enumerate(text_to_video) if vv == v]
        best = sims[v, pos].max()
        neg = [m for m in range(40) if m not in pos]
        expected.append(1 + int((sims[v, neg] >= best).sum()))
    assert full["retrieval/v2t/MnR"] == pytest.approx(np.mean(expected))
    assert full["retrieval/chance/R@1"] == pytest.approx(100 / 17)


def test_chance_metrics():
    c = chance_metrics(1000)
    assert c["retrieval/chance/R@10"] == pytest.approx(1.0) and c["retrieval/chance/MdR"] == 500.5


def test_hard_negative_accuracy_per_factor():
    video = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    true = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    good, bad = torch.tensor([0.0, 1.0]), torch.tensor([1.0, 0.0])
    out = hard_negative_accuracy(video, true, [(0, "colour", good), (1, "colour", bad), (0, "shape", good)])
    # clip 1's colour twin equals clip 0's truth direction: for clip 1 score 0 vs true 1 -> win.
    assert out["hard_negative/colour"] == 100.0 and out["hard_negative/shape"] == 100.0
    assert (out["hard_negative/pairs/colour"], out["hard_negative/pairs/shape"]) == (2, 1)
    assert out["hard_negative/pairs/overall"] == 3
    out = hard_negative_accuracy(video, true, [(0, "colour", torch.tensor([1.0, 0.0]))])
    assert out["hard_negative/colour"] == 0.0  # a tie is not a win


def test_hard_negative_accuracy_per_group():
    video = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    true = video.clone()
    good, bad = torch.tensor([0.0, 1.0]), torch.tensor([1.0, 0.0])
    negatives = [(0, "action", good), (1, "action", good), (2, "action", bad), (2, "shape", good)]
    out = hard_negative_accuracy(video, true, negatives, clip_groups=["1obj", "2obj", "2obj"])
    # clip 1's twin is its own truth (a tie, a loss); clip 2's action twin equals its truth too
    assert out["hard_negative/action/1obj"] == 100.0 and out["hard_negative/action/2obj"] == 0.0
    assert out["hard_negative/shape/2obj"] == 100.0 and "hard_negative/shape/1obj" not in out
    assert out["hard_negative/action"] == pytest.approx(100 / 3)
    assert out["hard_negative/overall"] == 50.0  # each pair counted once, not once more per group


def test_hard_negative_blind_score_uses_the_mean_video_only():
    """`blind/*` scores every pair against the mean test video: a twin that only the clip's own video rejects
    is a win but not a blind win; a true caption closer to every video than its twin wins both."""
    video = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # mean video (0.5, 0.5)
    true = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    seen_only = torch.tensor([0.0, 1.0])  # clip 0: own 0 < true 1 (win); blind 0.5 = 0.5 (tie, no win)
    text_prior = torch.tensor([-0.6, 0.8])  # clip 1: own 0.8 = 0.8 (tie, no win); blind 0.1 < 0.7 (win)
    out = hard_negative_accuracy(video, true, [(0, "action", seen_only), (1, "action", text_prior)])
    assert out["hard_negative/action"] == 50.0 and out["hard_negative/blind/action"] == 50.0
    out = hard_negative_accuracy(video, true, [(0, "action", seen_only), (0, "shape", seen_only),
                                               (1, "shape", text_prior)])
    assert out["hard_negative/blind/action"] == 0.0 and out["hard_negative/blind/shape"] == 50.0
    assert out["hard_negative/blind/overall"] == pytest.approx(100 / 3)
    assert out["hard_negative/overall"] == pytest.approx(200 / 3)


def test_hard_negative_static_score_uses_each_clips_frozen_embedding():
    """`static/*` scores every pair against the clip's own video frozen to one frame: a twin that only the
    motion rejects is a win but not a static win; one its appearance rejects wins both."""
    video = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    static = torch.tensor([[0.0, 1.0], [0.0, 1.0]])  # clip 0 looks different without its motion, clip 1 not
    true = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    motion_twin = torch.tensor([0.0, 1.0])  # clip 0: own 0 < 1 (win); frozen 1 > 0 (loss)
    appearance_twin = torch.tensor([1.0, 0.0])  # clip 1: own 0 < 1 and frozen 0 < 1 (win both)
    out = hard_negative_accuracy(video, true, [(0, "action", motion_twin), (1, "shape", appearance_twin)],
                                 static_embed=static)
    assert out["hard_negative/action"] == 100.0 and out["hard_negative/static/action"] == 0.0
    assert out["hard_negative/shape"] == 100.0 and out["hard_negative/static/shape"] == 100.0
    assert out["hard_negative/static/overall"] == 50.0
    assert not any("static" in k for k in hard_negative_accuracy(video, true, [(0, "action", motion_twin)]))


def test_balanced_accuracy_gives_a_fixed_preference_fifty():
    """A model that always prefers "still" wins the still object's many twins and loses the moving object's
    one "still" twin: 75% of the pairs, but 50 balanced (the mean over the two kinds of change)."""
    still_text, moving_text = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    video = torch.tensor([[1.0, 0.2], [1.0, 0.2]])  # both clips look "still" to this model
    true = torch.stack([still_text, moving_text])  # clip 0 stays still, clip 1 moves
    negatives = [(0, "action", moving_text)] * 3 + [(1, "action", still_text)]
    changes = ["staying still>moving left"] * 3 + ["moving left>staying still"]
    out = hard_negative_accuracy(video, true, negatives, changes=changes)
    assert out["hard_negative/action"] == 75.0 and out["hard_negative/balanced/action"] == 50.0
    assert "hard_negative/balanced/action" not in hard_negative_accuracy(video, true, negatives)


def test_frozen_to_middle_frame_repeats_the_middle_real_frame():
    video = torch.arange(2 * 6, dtype=torch.float32).view(2, 6, 1, 1, 1).expand(2, 6, 3, 2, 2)
    mask = torch.tensor([[True] * 6, [True] * 3 + [False] * 3])  # clip 1: 3 real frames, then padding
    frozen = frozen_to_middle_frame(video, mask)
    assert frozen.shape == video.shape
    assert (frozen[0] == video[0, 3]).all()  # frames 0-5: middle 3
    assert (frozen[1] == video[1, 1]).all()  # real frames 0-2: middle 1, never a padded frame


def test_metrics_table_puts_the_blind_score_beside_its_factor():
    from structvl.tasks.evaluate import format_metrics_table

    table = format_metrics_table({"hard_negative/action": 61.5, "hard_negative/blind/action": 45.6,
                                  "hard_negative/static/action": 58.0,
                                  "hard_negative/overall": 73.5, "hard_negative/blind/overall": 50.1,
                                  "hard_negative/static/overall": 72.2, "hard_negative/chance": 50.0})
    rows = {line.split()[0]: line.split()[1:] for line in _factor_table(table)[1]}
    assert rows == {"action": ["61.5", "45.6", "58.0"], "overall": ["73.5", "50.1", "72.2"]}
    # runs evaluated before the static control existed keep their two columns
    table = format_metrics_table({"hard_negative/action": 61.5, "hard_negative/blind/action": 45.6})
    assert [line.split()[1:] for line in _factor_table(table)[1]] == [["61.5", "45.6"]]


def _factor_table(table: str) -> tuple[str, list[str]]:
    """The hard-negative table's header line and the factor rows under it."""
    lines = table.splitlines()
    at = next(i for i, line in enumerate(lines) if line.split()[:1] == ["factor"])
    return lines[at], lines[at + 1:]


def test_metrics_table_gives_each_factor_its_pairs_and_standard_error():
    from structvl.tasks.evaluate import format_metrics_table

    table = format_metrics_table({"hard_negative/relation": 50.0, "hard_negative/pairs/relation": 126.0,
                                  "hard_negative/balanced/relation": 44.1,
                                  "hard_negative/shape": 64.0, "hard_negative/pairs/shape": 2273.0})
    header, lines = _factor_table(table)
    rows = {line.split()[0]: line for line in lines}
    # 100 * sqrt(0.5 * 0.5 / 126) = 4.45; 100 * sqrt(0.64 * 0.36 / 2273) = 1.01
    assert rows["relation"].split()[-3:] == ["44.1", "126", "4.5"]
    assert rows["shape"].split()[-2:] == ["2273", "1.0"]
    # the columns stay aligned when controls are missing: the count ends where its header does
    assert rows["shape"].index("2273") + len("2273") == header.index("pairs") + len("pairs")


