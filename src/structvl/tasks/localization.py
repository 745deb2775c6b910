"""Temporal action localization on frozen clip features (how S-ViLM evaluates it on ActivityNet-1.3).

1. Sliding-window features: along each untrimmed video, every `stride_seconds` a window of `window_seconds`
   around the snippet centre is sampled to the model's frame count and encoded by the frozen video encoder
   (its [CLS] state). Each video is decoded once; its windows are cut from the decoded frames.
2. The snippet sequence is rescaled to `temporal_scale` steps by linear interpolation (BMN's ActivityNet
   practice), so videos of any length batch together and boundaries are relative positions.
3. A light temporal-convolution head predicts, per step, the action class (or background) and the
   probability that an action starts / ends there (targets: each segment's first and last step, balanced
   binary cross-entropy as in BMN).
4. Proposals pair start and end candidates (peaks, or above half the video's best); each is scored for its
   two likeliest classes as p_start * p_end * the class's mean probability inside it, then per-class NMS.
5. mAP at the configured tIoU thresholds, the ActivityNet way (`tal_metrics`), beside a random-detection
   chance baseline; and the same class-agnostic (`localization/agnostic/*`: segments scored by boundaries
   and actionness, labels dropped), which tells finding the segments apart from naming their action.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from structvl.config import frame_normalization
from structvl.data.records import VideoRecord
from structvl.data.video import VideoDecodeError, open_video
from structvl.runtime.nonfinite import NonFiniteTally, top1_hits
from structvl.runtime.precision import autocast
from structvl.runtime.process import die_with_parent
from structvl.tasks.features import crops, normalise, view_indices
from structvl.tasks.heads import fit_head, loss_summary, standardise
from structvl.tasks.tal_metrics import Segment, detection_map, nms_1d, random_detections
from structvl.tasks.task_config import read_task_records, video_root

AGNOSTIC_LABEL = "action"  # the one class of class-agnostic detection


# ----------------------------------------------------------------------------- sliding-window features
def window_frame_indices(total: int, fps: float, duration: float, num_frames: int, window: float,
                         stride: float) -> tuple[np.ndarray, np.ndarray]:
    """Snippet centres (K,) in seconds and their frame indices (K, num_frames), windows clamped to the video."""
    count = max(1, math.ceil(duration / stride - 1e-9))
    centres = np.minimum((np.arange(count) + 0.5) * stride, duration)
    rows = []
    for c in centres:
        first = int(math.floor((c - window / 2) * fps))
        stop = max(int(math.ceil((c + window / 2) * fps)), first + 1)
        rows.append(np.clip(view_indices(first, stop, num_frames, 0, 1), 0, total - 1))
    return centres, np.stack(rows)


class SnippetWindows(Dataset):
    """Record i -> {"windows": (K, T, 3, S, S), "centres": (K,), "duration", "index"} (or a skip marker)."""

    def __init__(self, records: list[VideoRecord], video_root, num_frames: int, image_size: int, window: float,
                 stride: float, backend: str = "pyav", normalization: dict | None = None):
        self.records, self.video_root, self.num_frames, self.image_size = records, video_root, num_frames, image_size
        self.normalization = normalization or {}  # normalise()'s mean / std; default ImageNet's
        self.window, self.stride, self.backend = window, stride, backend

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict:
        record = self.records[i]
        try:
            with open_video(record.resolve(self.video_root), self.backend) as reader:
                duration = record.duration or reader.num_frames / reader.fps
                centres, idx = window_frame_indices(reader.num_frames, reader.fps, duration, self.num_frames,
                                                    self.window, self.stride)
                needed, inverse = np.unique(idx, return_inverse=True)
                frames = reader.get_frames(needed)  # each frame decoded once, shared by overlapping windows
        except (VideoDecodeError, OSError) as e:
            return {"skipped": True, "index": i, "reason": str(e)}
        video = crops(normalise(frames, self.image_size, **self.normalization), self.image_size, 1)[0]
        windows = video[torch.from_numpy(inverse.reshape(idx.shape))]
        return {"windows": windows, "centres": torch.from_numpy(centres), "duration": duration, "index": i}


@torch.no_grad()
def snippet_features(model, records: list[VideoRecord], video_root, *, num_frames: int, window: float,
                     stride: float, batch_size: int = 32, device=torch.device("cpu"),
                     autocast_dtype=None,
                     num_workers: int = 0) -> tuple[list[torch.Tensor], list[int], list[float]]:
    """Per readable video: (K_i, D) snippet features; also their record indices and durations."""
    model.eval()
    loader = DataLoader(SnippetWindows(records, video_root, num_frames, model.cfg.video.image_size, window, stride,
                                       normalization=frame_normalization(model.cfg.video)),
                        batch_size=None, num_workers=num_workers,
                        worker_init_fn=die_with_parent)
    feats, kept, durations = [], [], []
    pending: list[tuple[int, torch.Tensor]] = []  # windows of several videos batched together

    def flush():
        windows = torch.cat([w for _, w in pending])
        out = []
        for start in range(0, len(windows), batch_size):
            with autocast(device, autocast_dtype):
                clips = windows[start:start + batch_size].to(device)
                out.append(model.encode_video(clips).encoder.pooled.float().cpu())
        feats.extend(torch.cat(out).split([len(w) for _, w in pending]))
        pending.clear()

    for item in loader:
        if item.get("skipped"):
            continue
        pending.append((item["index"], item["windows"]))
        kept.append(item["index"])
        durations.append(float(item["duration"]))
        if sum(len(w) for _, w in pending) >= batch_size:
            flush()
    if pending:
        flush()
    return feats, kept, durations


def rescale(features: torch.Tensor, steps: int) -> torch.Tensor:
    """(K, D) -> (steps, D) by linear interpolation along time."""
    return F.interpolate(features.t()[None], size=steps, mode="linear", align_corners=False)[0].t()


# ----------------------------------------------------------------------------- head and targets
class TemporalHead(nn.Module):
    """Two temporal convolutions, then per-step class logits (index 0 = background) and start/end logits."""

    def __init__(self, dim: int, hidden: int, num_classes: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv1d(dim, hidden, 3, padding=1), nn.ReLU(),
                                  nn.Conv1d(hidden, hidden, 3, padding=1), nn.ReLU())
        self.classes = nn.Conv1d(hidden, num_classes + 1, 1)
        self.boundaries = nn.Conv1d(hidden, 2, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, S, D) -> class logits (B, S, C+1), boundary logits (B, S, 2) [start, end]."""
        h = self.body(x.transpose(1, 2))
        return self.classes(h).transpose(1, 2), self.boundaries(h).transpose(1, 2)


def snippet_targets(segments: list[dict], duration: float, steps: int,
                    class_index: dict[str, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Class per step (the segment holding its centre; 0 = background) and (steps, 2) start/end targets: 1 at
    a segment's first step (first centre at or after its start) and its last step (last centre before its
    end). Decoding inverts this: a start at step i means time i*dt, an end at step j time (j+1)*dt.
    Unknown classes count as background."""
    dt = duration / steps
    centres = (np.arange(steps) + 0.5) * dt
    cls = torch.zeros(steps, dtype=torch.long)
    bounds = torch.zeros(steps, 2)
    for s in sorted(segments, key=lambda s: -(s["end"] - s["start"])):  # shorter segments win overlaps
        if s["label"] not in class_index:
            continue
        cls[torch.from_numpy((centres >= s["start"]) & (centres < s["end"]))] = class_index[s["label"]] + 1
        bounds[int(np.clip(math.ceil(s["start"] / dt - 0.5), 0, steps - 1)), 0] = 1.0
        bounds[int(np.clip(math.ceil(s["end"] / dt - 0.5) - 1, 0, steps - 1)), 1] = 1.0
    return cls, bounds


def balanced_bce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """BMN's boundary loss: positives and negatives each weigh half, however rare the positives are."""
    pos = targets.sum().clamp(min=1)
    neg = (1 - targets).sum().clamp(min=1)
    weight = torch.where(targets > 0.5, 0.5 * targets.numel() / pos, 0.5 * targets.numel() / neg)
    return F.binary_cross_entropy_with_logits(logits, targets, weight=weight)


# ----------------------------------------------------------------------------- proposals
def boundary_candidates(p: np.ndarray) -> list[int]:
    """Steps that are local peaks or above half the video's best boundary probability (BMN's rule)."""
    padded = np.concatenate([[-1.0], p, [-1.0]])
    peak = (padded[1:-1] > padded[:-2]) & (padded[1:-1] > padded[2:])
    return [int(i) for i in np.where(peak | (p > 0.5 * p.max()))[0]]


def decode_detections(video: str, cls_prob: np.ndarray, bound_prob: np.ndarray, duration: float,
                      labels: list[str], nms_threshold: float, max_detections: int,
                      classes_per_proposal: int = 2, class_agnostic: bool = False) -> list[Segment]:
    """Scored, per-class-NMS'd segments of one video from the head's (S, C+1) and (S, 2) probabilities.
    A proposal from start step i to end step j >= i covers [i*dt, (j+1)*dt] (see `snippet_targets`).
    `class_agnostic`: every proposal is one "action" scored by its boundaries and its actionness (1 - the mean
    background probability inside), the ActivityNet proposal setting: how well the segments are found,
    whatever their class."""
    steps = len(cls_prob)
    dt = duration / steps
    starts, ends = boundary_candidates(bound_prob[:, 0]), boundary_candidates(bound_prob[:, 1])
    cumulative = np.concatenate([np.zeros((1, cls_prob.shape[1])), np.cumsum(cls_prob, axis=0)])
    by_class: dict[int, list[tuple[float, float, float]]] = {}
    for i in starts:
        for j in ends:
            if j < i:
                continue
            begin, finish = i * dt, (j + 1) * dt
            mean = (cumulative[j + 1] - cumulative[i]) / (j - i + 1)
            confidence = bound_prob[i, 0] * bound_prob[j, 1]
            if class_agnostic:
                by_class.setdefault(0, []).append((begin, finish, float(confidence * (1.0 - mean[0]))))
                continue
            mean = mean[1:]  # action classes, background left out
            for c in np.argsort(-mean)[:classes_per_proposal]:
                by_class.setdefault(int(c), []).append((begin, finish, float(confidence * mean[c])))
    out = []
    for c, items in by_class.items():
        segs, scores = np.array([x[:2] for x in items]), np.array([x[2] for x in items])
        label = AGNOSTIC_LABEL if class_agnostic else labels[c]
        out.extend(Segment(video, float(segs[k, 0]), float(segs[k, 1]), label, float(scores[k]))
                   for k in nms_1d(segs, scores, nms_threshold))
    return sorted(out, key=lambda s: -s.score)[:max_detections]


# ----------------------------------------------------------------------------- the protocol
def run_localization(model, task, root, *, device=torch.device("cpu"), batch_size: int = 32,
                     seed: int = 0, num_workers: int = 0, autocast_dtype=None) -> dict[str, float]:
    """Train the head on the train split's snippet features, detect on the test split, return metrics."""

    videos = video_root(task.data, root)
    num_frames = model.cfg.video.num_frames
    splits = {}
    for split in ("train", "test"):
        records = read_task_records(task.data, root, split)
        feats, kept, durations = snippet_features(model, records, videos, num_frames=num_frames,
                                                  window=task.window_seconds, stride=task.stride_seconds,
                                                  batch_size=batch_size, device=device, num_workers=num_workers,
                                                  autocast_dtype=autocast_dtype)
        splits[split] = ([records[i] for i in kept], torch.stack([rescale(f, task.temporal_scale) for f in feats]),
                         durations)
    train_records, train_x, train_dur = splits["train"]
    test_records, test_x, test_dur = splits["test"]
    labels = sorted({s["label"] for r in train_records for s in r.segments or []})
    class_index = {c: i for i, c in enumerate(labels)}
    targets = [snippet_targets(r.segments or [], d, task.temporal_scale, class_index)
               for r, d in zip(train_records, train_dur)]
    train_cls, train_bounds = torch.stack([t[0] for t in targets]), torch.stack([t[1] for t in targets])
    train_x, test_x = standardise(train_x.flatten(0, 1), train_x, test_x)[1:]

    torch.manual_seed(seed)
    head = TemporalHead(train_x.shape[-1], task.hidden, len(labels))

    def loss_fn(rows):
        cls_logits, bound_logits = head(train_x[rows])
        return (F.cross_entropy(cls_logits.flatten(0, 1), train_cls[rows].flatten())
                + balanced_bce(bound_logits, train_bounds[rows]))

    history = fit_head(loss_fn, list(head.parameters()), len(train_x), epochs=task.epochs,
                       batch_size=task.batch_size, lr=task.lr, weight_decay=task.weight_decay, seed=seed,
                       modules=[head])
    with torch.no_grad():
        cls_logits, bound_logits = head(test_x)
    tally = NonFiniteTally("localization")  # the head's outputs: every detection and snippet score comes from them
    tally.add(cls_logits)
    tally.add(bound_logits)
    cls_prob, bound_prob = cls_logits.softmax(-1).numpy(), bound_logits.sigmoid().numpy()
    detections = [d for k, r in enumerate(test_records)
                  for d in decode_detections(r.video_id, cls_prob[k], bound_prob[k], test_dur[k], labels,
                                             task.nms_threshold, task.max_detections)]
    ground_truth = [Segment(r.video_id, s["start"], s["end"], s["label"])
                    for r in test_records for s in r.segments or []]
    thresholds = [float(t) for t in task.tiou_thresholds]
    metrics = detection_map(ground_truth, detections, thresholds, "localization")
    chance = random_detections({r.video_id: d for r, d in zip(test_records, test_dur)}, labels, seed=seed)
    metrics.update(detection_map(ground_truth, chance, thresholds, "localization/chance"))
    # Class-agnostic: the same head's segments without their class - separates finding the boundaries (what
    # temporal objectives such as S-ViLM's claim to improve) from naming the action.
    agnostic = [d for k, r in enumerate(test_records)
                for d in decode_detections(r.video_id, cls_prob[k], bound_prob[k], test_dur[k], labels,
                                           task.nms_threshold, task.max_detections, class_agnostic=True)]
    agnostic_truth = [replace(g, label=AGNOSTIC_LABEL) for g in ground_truth]
    metrics.update(detection_map(agnostic_truth, agnostic, thresholds, "localization/agnostic"))
    metrics.update(detection_map(agnostic_truth, [replace(d, label=AGNOSTIC_LABEL) for d in chance], thresholds,
                                 "localization/agnostic/chance"))
    test_cls = torch.stack([snippet_targets(r.segments or [], d, task.temporal_scale, class_index)[0]
                            for r, d in zip(test_records, test_dur)])
    hits = top1_hits(cls_logits.flatten(0, 1), test_cls.flatten())
    metrics["localization/snippet_accuracy"] = float(100 * hits.float().mean())
    metrics.update(loss_summary(history, "localization"))
    metrics["localization/num_test_videos"] = float(len(test_records))
    return tally.report(metrics)
