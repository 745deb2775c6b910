"""Frozen-encoder features for the downstream tasks: clip views, video and text features, a shared cache.

Most downstream protocols here train a small head on features of a frozen pre-trained encoder (linear probe,
QA heads, the localization head), so each clip is decoded and encoded once and the result reused by every
task: the structured corpus's QA, recognition and MC files point at the same clips (through symlinks), and
`FeatureCache` keys features by the resolved file and window.

Views (multi-view testing). A record's window is cut into `num_frames` equal segments; view i of
`temporal_views` takes the frame at fraction (i + 0.5) / temporal_views of each segment (TSN-style shifted
sparse sampling; one view = the centre frames, i.e. the "uniform" evaluation sampling). Each clip is then
resized (shorter side = image size) and cropped `spatial_crops` times along its longer side (one crop = the
centre crop of evaluation).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from structvl.config import frame_normalization
from structvl.data.records import VideoRecord, window_problem
from structvl.data.sampling import frame_window
from structvl.data.transforms import IMAGENET_MEAN, IMAGENET_STD, resize_shorter_side
from structvl.data.video import VideoDecodeError, open_video
from structvl.models.text_encoder import TextEncoderOutput
from structvl.models.video_encoder import VideoEncoderOutput
from structvl.runtime.precision import autocast
from structvl.runtime.process import die_with_parent
from structvl.tasks.retrieval import length_sorted_batches


def view_indices(first: int, stop: int, num_frames: int, view: int, num_views: int) -> np.ndarray:
    """Frame indices of temporal view `view` of the window [first, stop)."""
    bounds = np.linspace(first, stop, num_frames + 1)
    picks = bounds[:-1] + (view + 0.5) / num_views * (bounds[1:] - bounds[:-1])
    return np.minimum(np.floor(picks), stop - 1).astype(np.int64)


def normalise(frames: np.ndarray | torch.Tensor, size: int, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    """uint8 (T, H, W, 3) -> float (T, 3, H', W') with the shorter side resized to `size`, normalised with the
    per-channel `mean` / `std` of [0, 1] pixels (the model's: `frame_normalization(model.cfg.video)`)."""
    video = torch.as_tensor(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()
    video = resize_shorter_side(video, size)
    mean = torch.tensor(mean).view(1, 3, 1, 1) * 255.0
    std = torch.tensor(std).view(1, 3, 1, 1) * 255.0
    return (video - mean) / std


def crops(video: torch.Tensor, size: int, num_crops: int) -> list[torch.Tensor]:
    """`num_crops` size x size crops evenly spaced along the longer side (1 = the centre crop)."""
    h, w = video.shape[-2:]
    top_max, left_max = h - size, w - size
    out = []
    for j in range(num_crops):
        frac = 0.5 if num_crops == 1 else j / (num_crops - 1)
        top, left = int(round(frac * top_max)), int(round(frac * left_max))
        out.append(video[..., top:top + size, left:left + size])
    return out


class ClipViews(Dataset):
    """Record i -> {"views": (V, T, 3, S, S), "index": i}; V = temporal_views x spatial_crops.
    An unreadable video gives a "skipped" marker (dropped by `collate_views`), as in training."""

    def __init__(self, records: list[VideoRecord], video_root, num_frames: int, image_size: int,
                 temporal_views: int = 1, spatial_crops: int = 1, backend: str = "pyav",
                 normalization: dict | None = None):
        self.records, self.video_root = records, video_root
        self.normalization = normalization or {}  # normalise()'s mean / std; default ImageNet's
        self.num_frames, self.image_size = num_frames, image_size
        self.temporal_views, self.spatial_crops, self.backend = temporal_views, spatial_crops, backend

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict:
        record = self.records[i]
        path = record.resolve(self.video_root)
        try:
            with open_video(path, self.backend) as reader:
                if (problem := window_problem(record.start, record.end, reader.duration)) is not None:
                    raise VideoDecodeError(path, problem)  # NaN, reversed, past the end: skipped, not a crash
                first, stop = frame_window(reader.num_frames, reader.fps, record.start, record.end)
                indices = np.concatenate([view_indices(first, stop, self.num_frames, v, self.temporal_views)
                                          for v in range(self.temporal_views)])
                frames = reader.get_frames(indices)
        except (VideoDecodeError, OSError) as e:
            return {"skipped": True, "index": i, "reason": str(e)}
        video = normalise(frames, self.image_size, **self.normalization)
        views = [c for clip in video.split(self.num_frames) for c in crops(clip, self.image_size, self.spatial_crops)]
        return {"views": torch.stack(views), "index": i}


def collate_views(samples: list[dict]) -> dict:
    kept = [s for s in samples if not s.get("skipped")]
    if not kept:
        return {"views": None, "index": torch.empty(0, dtype=torch.long)}
    return {"views": torch.stack([s["views"] for s in kept]), "index": torch.tensor([s["index"] for s in kept])}


@dataclass
class ClipFeatures:
    """Per-record features (records whose video could not be read are absent: see `kept`)."""
    pooled: torch.Tensor  # (N, V, D) video encoder [CLS] state per view
    embed: torch.Tensor  # (N, V, E) L2-normalised joint-space embedding per view
    kept: list[int]  # record indices, aligned with the rows
    tokens: torch.Tensor | None = None  # (N, T', P, D) patch states of the first view (for a fusion encoder)


@torch.no_grad()
def extract_clip_features(model, records: list[VideoRecord], video_root, *, num_frames: int, batch_size: int = 32,
                          temporal_views: int = 1, spatial_crops: int = 1, keep_tokens: bool = False,
                          device=torch.device("cpu"), autocast_dtype=None, num_workers: int = 0,
                          backend: str = "pyav") -> ClipFeatures:
    model.eval()
    dataset = ClipViews(records, video_root, num_frames, model.cfg.video.image_size, temporal_views, spatial_crops,
                        backend, frame_normalization(model.cfg.video))
    loader = DataLoader(dataset, batch_size=max(1, batch_size // (temporal_views * spatial_crops)),
                        collate_fn=collate_views, num_workers=num_workers,
                        worker_init_fn=die_with_parent)
    pooled, embed, tokens, kept = [], [], [], []
    for batch in loader:
        if batch["views"] is None:
            continue
        views = batch["views"].to(device)
        b, v = views.shape[:2]
        with autocast(device, autocast_dtype):
            out = model.encode_video(views.flatten(0, 1))
        pooled.append(out.encoder.pooled.float().view(b, v, -1).cpu())
        embed.append(out.embed.float().view(b, v, -1).cpu())
        if keep_tokens:  # bf16 halves the memory of what is by far the largest tensor kept
            tokens.append(out.encoder.tokens.view(b, v, *out.encoder.tokens.shape[1:])[:, 0].to(torch.bfloat16).cpu())
        kept.extend(batch["index"].tolist())
    if not kept:
        raise ValueError("none of the task's videos could be read")
    return ClipFeatures(torch.cat(pooled), torch.cat(embed), kept, torch.cat(tokens) if keep_tokens else None)


class FeatureCache:
    """Clip features shared between tasks, keyed by (resolved video file, window, views, frames).

    `get` extracts only the records it has not seen and returns features aligned with the records asked for
    (rows of unreadable videos are absent, as in `ClipFeatures.kept`).
    """

    def __init__(self, model, device=torch.device("cpu"), batch_size: int = 32, autocast_dtype=None,
                 num_workers: int = 0):
        self.model, self.device, self.batch_size = model, device, batch_size
        self.autocast_dtype, self.num_workers = autocast_dtype, num_workers
        self._store: dict[tuple, tuple] = {}

    def get(self, records: list[VideoRecord], video_root, *, num_frames: int, temporal_views: int = 1,
            spatial_crops: int = 1, keep_tokens: bool = False) -> ClipFeatures:
        def key(r: VideoRecord) -> tuple:
            return (os.path.realpath(r.resolve(video_root)), r.start, r.end, num_frames, temporal_views, spatial_crops)

        keys = [key(r) for r in records]
        todo: dict[tuple, int] = {}
        for i, k in enumerate(keys):
            known = self._store.get(k)
            if k not in todo and (known is None or (keep_tokens and known[2] is None)):
                todo[k] = i
        if todo:
            fresh = extract_clip_features(self.model, [records[i] for i in todo.values()], video_root,
                                          num_frames=num_frames, batch_size=self.batch_size,
                                          temporal_views=temporal_views, spatial_crops=spatial_crops,
                                          keep_tokens=keep_tokens, device=self.device,
                                          autocast_dtype=self.autocast_dtype, num_workers=self.num_workers)
            todo_keys = list(todo)
            for row, j in enumerate(fresh.kept):
                self._store[todo_keys[j]] = (fresh.pooled[row], fresh.embed[row],
                                             None if fresh.tokens is None else fresh.tokens[row])
            for k in todo_keys:  # unreadable: remember, so it is not decoded again
                self._store.setdefault(k, None)
        kept = [i for i, k in enumerate(keys) if self._store[k] is not None]
        if not kept:
            raise ValueError("none of the task's videos could be read")
        rows = [self._store[keys[i]] for i in kept]
        return ClipFeatures(torch.stack([r[0] for r in rows]), torch.stack([r[1] for r in rows]), kept,
                            torch.stack([r[2] for r in rows]) if keep_tokens else None)


@dataclass
class TextFeatures:
    embed: torch.Tensor  # (M, E) L2-normalised
    tokens: torch.Tensor | None = None  # (M, L, D) token states (for a fusion encoder)
    attention_mask: torch.Tensor | None = None  # (M, L)
    pooled: torch.Tensor | None = None  # (M, D)


@torch.no_grad()
def extract_text_features(model, tokenizer, texts: list[str], *, keep_tokens: bool = False, batch_size: int = 256,
                          device=torch.device("cpu"), autocast_dtype=None) -> TextFeatures:
    """Features of `texts` (duplicates encoded once: QA files repeat a few templated questions thousands of
    times). Token states are padded to the tokenizer's max_length so rows from different batches stack."""
    model.eval()
    unique = list(dict.fromkeys(texts))
    embeds, tokens, masks, pooled, encoded_rows = [], [], [], [], []
    # Encoded in batches of similar length (less padding; see retrieval.length_sorted_batches), put back below.
    for rows, tok in length_sorted_batches(tokenizer(unique), batch_size) if unique else ():
        ids, mask = tok["input_ids"], tok["attention_mask"]
        pad = tokenizer.max_length - ids.shape[1] if keep_tokens else 0
        if pad > 0:
            ids = torch.cat([ids, ids.new_full((ids.shape[0], pad), tokenizer.pad_token_id)], 1)
            mask = torch.cat([mask, mask.new_zeros(mask.shape[0], pad)], 1)
        with autocast(device, autocast_dtype):
            out = model.encode_text(ids.to(device), mask.to(device))
        embeds.append(out.embed.float().cpu())
        encoded_rows.append(rows)
        if keep_tokens:
            tokens.append(out.encoder.tokens.float().cpu())
            masks.append(mask)
            pooled.append(out.encoder.pooled.float().cpu())
    position = torch.empty(len(unique), dtype=torch.long)  # unique text -> its row in the encoded order
    position[torch.cat(encoded_rows)] = torch.arange(len(unique))
    row = {t: i for i, t in enumerate(unique)}
    order = position[torch.tensor([row[t] for t in texts], dtype=torch.long)]
    if not keep_tokens:
        return TextFeatures(torch.cat(embeds)[order])
    return TextFeatures(torch.cat(embeds)[order], torch.cat(tokens)[order], torch.cat(masks)[order],
                        torch.cat(pooled)[order])


def has_fusion(model) -> bool:
    return getattr(model, "fusion", None) is not None


def fuse_cached(model, video_pooled: torch.Tensor, video_tokens: torch.Tensor, text: TextFeatures,
                rows: torch.Tensor, device=torch.device("cpu")) -> torch.Tensor:
    """Fused [CLS] (B, D) of cached video states (pooled (B, D), patches (B, T', P, D)) with the cached texts
    `rows`, through `model.fuse(video_encoder_output, text_encoder_output)` (the fusion encoder's interface)."""
    video_tokens = video_tokens.to(device).float()
    b, t = video_tokens.shape[:2]
    video_out = VideoEncoderOutput(pooled=video_pooled.to(device).float(), tokens=video_tokens,
                                   frame_mask=torch.ones(b, t, dtype=torch.bool, device=device))
    # The cached states are padded to the tokenizer's max_length; these rows need only their longest sequence
    # (the rest is masked out of the fusion's attention, so the fused [CLS] is the same, for fewer tokens).
    mask = text.attention_mask[rows]
    longest = max(1, int(mask.sum(1).max())) if len(mask) else mask.shape[1]
    text_out = TextEncoderOutput(pooled=text.pooled[rows].to(device), tokens=text.tokens[rows, :longest].to(device),
                                 attention_mask=mask[:, :longest].to(device))
    return model.fuse(video_out, text_out, read="cls").cls
