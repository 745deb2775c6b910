"""Temporal action localization metrics, the ActivityNet way: tIoU, 1-D NMS and detection mAP.

`average_precision` follows the official ActivityNet evaluation (`Evaluation/eval_detection.py`,
`compute_average_precision_detection` and `interpolated_prec_rec`):

* detections of a class are taken in decreasing score order (stable for equal scores);
* a detection is a true positive at threshold θ when some ground truth of the same class in the same video
  has tIoU >= θ with it and is still unmatched; ground truths are tried from the highest tIoU down, and one
  already matched is skipped in favour of the next one, so each ground truth is matched at most once and a
  duplicate detection of a found instance is a false positive;
* AP is the area under the *interpolated* precision-recall curve: precision at each recall is replaced by
  the best precision at that recall or beyond, and summed over the recall steps (no 11-point sampling);
* mAP averages AP over the classes that have ground truth; a class with no detection has AP 0.

A detection whose score is not finite is the worst a detection can be: ranked before every other one and
never a true positive (a false positive at the top); `detection_map` counts them as
`<prefix>/nonfinite_detections` and logs a warning.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

log = logging.getLogger("structvl")


@dataclass(frozen=True)
class Segment:
    video: str
    start: float
    end: float
    label: str
    score: float = 1.0


def segment_iou(segment: Sequence[float], candidates: np.ndarray) -> np.ndarray:
    """tIoU of one [start, end] against candidates (N, 2)."""
    candidates = np.asarray(candidates, dtype=np.float64).reshape(-1, 2)
    inter = (np.minimum(segment[1], candidates[:, 1]) - np.maximum(segment[0], candidates[:, 0])).clip(0)
    union = (candidates[:, 1] - candidates[:, 0]) + (segment[1] - segment[0]) - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def nms_1d(segments: np.ndarray, scores: np.ndarray, threshold: float, max_keep: int | None = None) -> list[int]:
    """Greedy non-maximum suppression: keep the best-scoring segment, drop those overlapping it with
    tIoU > threshold, repeat. Returns kept indices in decreasing score order."""
    segments = np.asarray(segments, dtype=np.float64).reshape(-1, 2)
    order = list(np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable"))
    keep: list[int] = []
    while order and (max_keep is None or len(keep) < max_keep):
        best = order.pop(0)
        keep.append(int(best))
        if order:
            ious = segment_iou(segments[best], segments[order])
            order = [i for i, iou in zip(order, ious) if iou <= threshold]
    return keep


def interpolated_ap(precision: np.ndarray, recall: np.ndarray) -> float:
    """Area under the interpolated precision-recall curve (ActivityNet's `interpolated_prec_rec`)."""
    mprec = np.concatenate([[0.0], precision, [0.0]])
    mrec = np.concatenate([[0.0], recall, [1.0]])
    for i in range(len(mprec) - 2, -1, -1):  # precision envelope: best precision at this recall or beyond
        mprec[i] = max(mprec[i], mprec[i + 1])
    steps = np.where(mrec[1:] != mrec[:-1])[0] + 1
    return float(np.sum((mrec[steps] - mrec[steps - 1]) * mprec[steps]))


def average_precision(ground_truth: Sequence[Segment], detections: Sequence[Segment],
                      thresholds: Sequence[float]) -> np.ndarray:
    """AP of one class at each tIoU threshold (see the module docstring for the matching rule)."""
    ap = np.zeros(len(thresholds))
    if not detections or not ground_truth:
        return ap
    gt_by_video: dict[str, list[int]] = defaultdict(list)
    for j, g in enumerate(ground_truth):
        gt_by_video[g.video].append(j)
    gt_bounds = np.array([[g.start, g.end] for g in ground_truth], dtype=np.float64)
    scores = np.array([d.score for d in detections], dtype=np.float64)
    garbage = ~np.isfinite(scores)  # non-finite scores: false positives ranked first (the module docstring)
    finite = np.flatnonzero(~garbage)
    order = np.concatenate([np.flatnonzero(garbage), finite[np.argsort(-scores[finite], kind="stable")]])
    matched = np.zeros((len(thresholds), len(ground_truth)), dtype=bool)
    tp = np.zeros((len(thresholds), len(detections)))
    for rank, i in enumerate(order):
        d = detections[i]
        candidates = gt_by_video.get(d.video, [])
        if garbage[i] or not candidates:
            continue  # no ground truth in that video (or a non-finite score): a false positive at every threshold
        ious = segment_iou((d.start, d.end), gt_bounds[candidates])
        by_iou = np.argsort(-ious, kind="stable")
        for t, threshold in enumerate(thresholds):
            for k in by_iou:
                if ious[k] < threshold:
                    break  # the rest overlap even less
                if matched[t, candidates[k]]:
                    continue  # already found by a better-scored detection: try the next ground truth
                matched[t, candidates[k]] = True
                tp[t, rank] = 1
                break
    tp_cum = np.cumsum(tp, axis=1)
    fp_cum = np.cumsum(1 - tp, axis=1)
    recall = tp_cum / len(ground_truth)
    precision = tp_cum / (tp_cum + fp_cum)
    for t in range(len(thresholds)):
        ap[t] = interpolated_ap(precision[t], recall[t])
    return ap


def detection_map(ground_truth: Iterable[Segment], detections: Iterable[Segment], thresholds: Sequence[float],
                  prefix: str = "localization") -> dict[str, float]:
    """{prefix/mAP@θ for each θ, prefix/mAP_avg} in percent, averaged over the ground-truth classes."""
    gt_by_class: dict[str, list[Segment]] = defaultdict(list)
    det_by_class: dict[str, list[Segment]] = defaultdict(list)
    for g in ground_truth:
        gt_by_class[g.label].append(g)
    nonfinite = 0
    for d in detections:
        nonfinite += not math.isfinite(d.score)
        det_by_class[d.label].append(d)
    if not gt_by_class:
        raise ValueError("no ground-truth segments to evaluate against")
    aps = np.stack([average_precision(gt_by_class[c], det_by_class.get(c, []), thresholds)
                    for c in sorted(gt_by_class)])
    per_threshold = 100.0 * aps.mean(axis=0)
    out = {f"{prefix}/mAP@{t:g}": float(m) for t, m in zip(thresholds, per_threshold)}
    out[f"{prefix}/mAP_avg"] = float(per_threshold.mean())
    if nonfinite:
        log.warning("%s: %d detections have a non-finite score; each ranked first as a false positive", prefix,
                    nonfinite)
        out[f"{prefix}/nonfinite_detections"] = float(nonfinite)
    return out


def random_detections(videos: dict[str, float], labels: Sequence[str], per_video: int = 10,
                      seed: int = 0) -> list[Segment]:
    """A chance baseline: `per_video` uniformly random segments per video (duration given) with random
    classes and scores, evaluated like any detector's output."""
    rng = np.random.default_rng(seed)
    out = []
    for video, duration in sorted(videos.items()):
        for _ in range(per_video):
            a, b = np.sort(rng.uniform(0, duration, 2))
            out.append(Segment(video, float(a), float(b), str(labels[rng.integers(len(labels))]), float(rng.random())))
    return out
