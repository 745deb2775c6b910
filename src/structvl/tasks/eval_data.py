"""The clips every zero-shot evaluation reads: the run's `eval.split`, a deterministic loader over them, and
`EvalClips`, which decodes and encodes them once for all the measures of one model.

`eval.split` names one of the structured corpus's evaluation splits (`EVAL_SPLITS`: "val" for every choice,
"test" for the reported numbers; `structvl synth` writes both in full), or is a retrieval annotation file
relative to the corpus root (another dataset, or a run config saved before split names existed). The split's
name selects its retrieval clips, its hard negatives (`eval.hard_negatives: auto`) and, in
`structvl.tasks.task_config.on_split`, the downstream protocol files of that split.
"""

from __future__ import annotations

import os
from dataclasses import fields
from pathlib import Path

import torch

from structvl.config import RunConfig, frame_normalization
from structvl.data.dataset import VideoTextCollator, VideoTextDataset, build_dataloader
from structvl.data.formats import read_annotations
from structvl.data.transforms import VideoTransform
from structvl.models.video_encoder import VideoEncoderOutput
from structvl.models.video_text import VideoEmbedding
from structvl.runtime.precision import autocast, autocast_dtype


def eval_loader(records, cfg: RunConfig, video_root, tokenizer, batch_size: int | None = None,
                num_workers: int | None = None):
    """Deterministic loader over records' videos: uniform frames, centre crop, first caption. batch_size and
    num_workers default to the run's eval.batch_size and data.num_workers (at most 2)."""
    dataset = VideoTextDataset(records, video_root, num_frames=cfg.eval.num_frames, sampling=cfg.eval.sampling,
                               transform=VideoTransform(cfg.model.video.image_size, train=False,
                                                        **frame_normalization(cfg.model.video)),
                               backend=cfg.data.backend, caption_mode="first", seed=0,
                               allow_outside_root=cfg.data.allow_outside_root, decode_threads=cfg.data.decode_threads)
    return build_dataloader(dataset, VideoTextCollator(tokenizer), batch_size=batch_size or cfg.eval.batch_size,
                            shuffle=False, seed=0, drop_last=False,
                            num_workers=min(cfg.data.num_workers, 2) if num_workers is None else num_workers)


# The structured corpus's evaluation files of each split, relative to its root (lab/synth/layouts.py writes them).
EVAL_SPLITS = {
    "test": {"retrieval": "eval/retrieval_test.jsonl", "hard_negatives": "eval/hard_negatives.jsonl"},
    "val": {"retrieval": "eval/retrieval_val.jsonl", "hard_negatives": "eval/hard_negatives_val.jsonl"},
}
# `eval.hard_negatives: auto` with `eval.split` an annotation file: the test split's file, read when it exists.
DEFAULT_HARD_NEGATIVES = EVAL_SPLITS["test"]["hard_negatives"]


def eval_split_name(cfg: RunConfig) -> str | None:
    """"val" or "test" when `eval.split` names a split of the structured corpus, None for an annotation file."""
    return cfg.eval.split if cfg.eval.split in EVAL_SPLITS else None


def eval_annotations(cfg: RunConfig) -> str:
    """The retrieval annotation file of `eval.split`, relative to the corpus root."""
    name = eval_split_name(cfg)
    return EVAL_SPLITS[name]["retrieval"] if name else cfg.eval.split


def hard_negatives_file(cfg: RunConfig) -> str | None:
    """The hard-negative file to read (relative to the corpus root), or None: `eval.hard_negatives` as given, or
    with "auto" the split's own file (the test split's for an annotation file)."""
    if cfg.eval.hard_negatives != "auto":
        return cfg.eval.hard_negatives or None
    name = eval_split_name(cfg)
    return EVAL_SPLITS[name]["hard_negatives"] if name else DEFAULT_HARD_NEGATIVES


def test_video_root(cfg: RunConfig, data_root: str | Path | None = None) -> Path:
    """Where the corpus's videos are: `data.videos`, else the corpus directory (`data_root` or `data.root`)."""
    return Path(cfg.data.videos) if cfg.data.videos else Path(data_root or cfg.data.root)


def test_records(cfg: RunConfig, data_root: str | Path | None = None) -> list:
    """The records of `eval.split` under `data_root` (default: the run's `data.root`)."""
    return read_annotations(cfg.data.format, Path(data_root or cfg.data.root) / eval_annotations(cfg))


def _to_cpu(out: VideoEmbedding) -> VideoEmbedding:
    encoder = out.encoder
    return VideoEmbedding(out.embed.cpu(), VideoEncoderOutput(
        **{f.name: None if getattr(encoder, f.name) is None else getattr(encoder, f.name).cpu()
           for f in fields(encoder)}))


class EvalClips:
    """The eval split's clips for one model, decoded once and encoded once, shared by the zero-shot measures.

    Retrieval, the hard negatives' clips (when their file names the split's clips), SKP mAP, grounding and masked
    words read the stored encodings; the scene-change and frozen-frame controls re-encode the stored clips they
    alter. Each batch is kept as the eval loader yielded it (same clips, same order, same batch size), so a
    measure that pairs clips within a batch (scene change) sees exactly the batches its own loader would give.
    Without it (`clips=None`) every measure runs its own loader, as before.

    Everything is held on the CPU: the normalised frames (`estimated_bytes`) and the encoder's outputs.
    `EvalClips.fits` says whether a split is small enough to be held at all.
    """

    MAX_BYTES = 1 << 30  # splits whose frames would need more than this are streamed by each measure instead

    def __init__(self, model, cfg: RunConfig, tokenizer, device, data_root: str | Path | None = None):
        self.model, self.cfg, self.tokenizer, self.device = model, cfg, tokenizer, device
        self.records = test_records(cfg, data_root)
        self.video_root = test_video_root(cfg, data_root)
        self.autocast_dtype = autocast_dtype(cfg.train.precision, device)
        self._batches: list[dict] | None = None
        self._encoded: list[VideoEmbedding] | None = None

    @staticmethod
    def estimated_bytes(cfg: RunConfig, num_records: int) -> int:
        """The normalised float32 frames of `num_records` eval clips."""
        return num_records * cfg.eval.num_frames * 3 * cfg.model.video.image_size ** 2 * 4

    @classmethod
    def fits(cls, cfg: RunConfig, data_root: str | Path | None = None) -> bool:
        return cls.estimated_bytes(cfg, len(test_records(cfg, data_root))) <= cls.MAX_BYTES

    def batches(self) -> list[dict]:
        """The eval loader's batches (those with at least one readable clip), decoded on first use."""
        if self._batches is None:
            self._batches = [batch for batch in eval_loader(self.records, self.cfg, self.video_root, self.tokenizer)
                             if batch.get("video") is not None]
        return self._batches

    @torch.no_grad()
    def encoded(self) -> list[VideoEmbedding]:
        """The model's encoding of each batch (embedding and encoder outputs, on the CPU), computed on first use."""
        if self._encoded is None:
            self.model.eval()
            self._encoded = []
            for batch in self.batches():
                with autocast(self.device, self.autocast_dtype):
                    out = self.model.encode_video(batch["video"].to(self.device), batch["frame_mask"].to(self.device))
                self._encoded.append(_to_cpu(out))
        return self._encoded

    def kept(self) -> list[int]:
        """Record indices of the readable clips, in order (the rows of `embeddings`)."""
        return [i for batch in self.batches() for i in batch["record_index"].tolist()]

    def embeddings(self, pooled: bool = False) -> tuple[torch.Tensor, list[int]]:
        """(clips, E) joint-space embeddings (or, with pooled, the encoder's clip vectors) and their record
        indices, as `tasks.retrieval.embed_videos` returns them."""
        rows = [(out.encoder.pooled if pooled else out.embed).float() for out in self.encoded()]
        return torch.cat(rows), self.kept()

    @torch.no_grad()
    def transformed_embeddings(self, transform) -> tuple[torch.Tensor, list[int]]:
        """Embeddings of the stored clips after `transform(video, frame_mask)` (a control such as a frozen frame),
        as `tasks.retrieval.embed_videos(..., transform=...)` returns them."""
        self.model.eval()
        rows = []
        for batch in self.batches():
            video, mask = batch["video"].to(self.device), batch["frame_mask"].to(self.device)
            with autocast(self.device, self.autocast_dtype):
                rows.append(self.model.encode_video(transform(video, mask), mask).embed.float().cpu())
        return torch.cat(rows), self.kept()

    def covers(self, records, video_root) -> bool:
        """Whether `records` are this split's clips (same files and windows, same order)."""
        def key(r, root):
            return os.path.realpath(r.resolve(root)), r.start, r.end

        return len(records) == len(self.records) and all(
            key(a, video_root) == key(b, self.video_root) for a, b in zip(records, self.records))
