"""Records -> DataLoader batches: the video-text dataset, its collator, the skip ledger and the loader.

Determinism. Every random choice for item i in epoch e (caption, frames, crop) is drawn from generators
seeded by (seed, e, i), never from process-global state, so a batch holds the same values whatever the
number of workers and whatever order the workers finish in.

Bad videos. Real datasets have missing, empty, truncated and undecodable files. A training run should
neither die on one nor learn from a black clip standing in for it: `__getitem__` returns a small
"skipped" marker instead, the collator drops it from the batch and passes (path, reason) along, and a
`SkipLedger` in the main process counts the skips and logs each bad file once. A clip window that starts
past its video's end, and a video that a symlink places outside the video root, are skipped the same way.

Bad records. Records a dataset cannot use whatever the file holds - no caption where captions are required,
a window that is not a number or ends before it starts - never become items: they are counted in
`dataset.dropped` (reason -> count) and logged once. A record whose path leaves the video root (absolute
elsewhere, `..`) stops the dataset's construction with an `AnnotationError` unless `allow_outside_root`.
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler, Sampler

from structvl.data.images import ImageDecodeError, image_clip, is_image_path, load_image
from structvl.data.knowledge.lookup import KnowledgeLookup
from structvl.data.records import AnnotationError, VideoRecord, has_caption, outside_root, window_problem
from structvl.data.sampling import SAMPLING_MODES, sample_frame_indices
from structvl.data.transforms import VideoTransform
from structvl.data.video import BACKENDS, VideoDecodeError, open_video
from structvl.runtime.process import die_with_parent

log = logging.getLogger("structvl.data")

CAPTION_MODES = ("random", "expand", "first")


def check_clip_options(sampling: str, target_fps: float | None, caption_mode: str, backend: str) -> None:
    """The frame sampling, caption choice and decoder a clip dataset (this one or the sharded one) is given."""
    if sampling not in SAMPLING_MODES:
        raise ValueError(f"unknown sampling {sampling!r}; expected one of {SAMPLING_MODES}")
    if sampling == "fps" and not target_fps:
        raise ValueError("sampling 'fps' needs target_fps")
    if caption_mode not in CAPTION_MODES:
        raise ValueError(f"unknown caption_mode {caption_mode!r}; expected one of {CAPTION_MODES}")
    if backend not in BACKENDS:
        raise ValueError(f"unknown video backend {backend!r}; expected one of {BACKENDS}")


class VideoTextDataset(Dataset):
    """Clips with one caption each, decoded, sampled and transformed.

    A record whose `video` is an image file (.jpg, .png, ...) gives a one-frame clip (structvl.data.images).
    caption_mode: "random" - one item per record, a caption drawn anew every epoch (the usual pre-training
        choice); "expand" - one item per (record, caption) pair, every caption seen every epoch (e.g. the
        MSR-VTT training protocol); "first" - one item per record with its first caption (evaluation).
        A record without captions (QA, recognition) gives caption "".
    sampling, num_frames, target_fps: see `structvl.data.sampling`. The record's start/end window is used.
    transform: its `train` flag also decides whether "fps" sampling starts at a random offset.
    require_captions: leave out records without a caption (video-text training and retrieval); without
        it they give caption "" (recognition, QA).
    allow_outside_root: let records name videos outside `video_root` (absolute paths, `..`, symlinks).
    decode_threads: each reader's decoding threads (`data.video.open_video`; None: 1 in a loader worker).
    """

    def __init__(self, records: Sequence[VideoRecord], video_root: str | Path | None, num_frames: int = 8,
                 sampling: str = "random_segment", target_fps: float | None = None, *,
                 transform: VideoTransform, backend: str = "pyav", caption_mode: str = "random", seed: int = 0,
                 require_captions: bool = False, allow_outside_root: bool = False,
                 decode_threads: int | None = None):
        check_clip_options(sampling, target_fps, caption_mode, backend)
        self.records = list(records)
        self.video_root = None if video_root is None else Path(video_root)
        self.num_frames, self.sampling, self.target_fps = num_frames, sampling, target_fps
        self.transform, self.backend, self.decode_threads = transform, backend, decode_threads
        self.caption_mode, self.seed = caption_mode, seed
        # The epoch lives in shared memory: persistent loader workers hold their own copy of the dataset,
        # and a plain attribute set in the main process would never reach them.
        self._epoch = torch.zeros((), dtype=torch.long).share_memory_()
        self.allow_outside_root = allow_outside_root
        if not allow_outside_root:
            outside = [reason for r in self.records if (reason := outside_root(r, self.video_root)) is not None]
            if outside:
                raise AnnotationError(f"{len(outside)} record(s) name a video outside the video root, e.g. "
                                      f"{outside[0]}; set data.allow_outside_root: true to read them")
        # (record index, caption index or None = decided per item) for each item.
        self.items: list[tuple[int, int | None]] = []
        self.dropped: Counter = Counter()  # reason -> records left out
        for record_index, record in enumerate(self.records):
            problem = window_problem(record.start, record.end, record.duration)
            if problem is None and require_captions and not has_caption(record):
                problem = "no caption"
            if problem is not None:
                self.dropped[problem] += 1
                continue
            if caption_mode == "expand" and record.captions:
                self.items.extend((record_index, c) for c, text in enumerate(record.captions) if text.strip())
            else:
                self.items.append((record_index, None))
        if self.dropped:
            log.warning("left out %d of %d records: %s", sum(self.dropped.values()), len(self.records),
                        ", ".join(f"{n} x {reason}" for reason, n in self.dropped.most_common()))

    def __len__(self) -> int:
        return len(self.items)

    @property
    def epoch(self) -> int:
        return int(self._epoch)

    def set_epoch(self, epoch: int) -> None:
        """Draw new random captions / frames / crops. Call before creating the epoch's loader iterator
        (`for batch in loader`), so that no worker has started on the epoch's items yet."""
        self._epoch.fill_(epoch)

    def _generators(self, index: int) -> tuple[np.random.Generator, np.random.Generator, torch.Generator]:
        """Independent generators for the caption, the frames and the crop, all from (seed, epoch, index):
        separate streams, so that e.g. changing caption_mode does not change which frames are sampled."""
        caption_seed, frames_seed, crop_seed = np.random.SeedSequence([self.seed, self.epoch, index]).spawn(3)
        crop_generator = torch.Generator().manual_seed(int(crop_seed.generate_state(1, np.uint64)[0] >> 1))
        return np.random.default_rng(caption_seed), np.random.default_rng(frames_seed), crop_generator

    def _caption(self, record: VideoRecord, caption_index: int | None, rng: np.random.Generator) -> str:
        if caption_index is not None:
            return record.captions[caption_index]
        captions = [c for c in record.captions if c.strip()]
        if not captions:
            return ""
        if self.caption_mode == "random":
            return captions[int(rng.integers(len(captions)))]
        return captions[0]

    def _load_frames(self, path: Path, record: VideoRecord,
                     rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        if not self.allow_outside_root and (reason := outside_root(record, self.video_root, follow_links=True)):
            raise VideoDecodeError(path, reason)
        if is_image_path(path):  # an image-text pair: a one-frame clip (structvl.data.images)
            return image_clip(load_image(path), self.num_frames)
        with open_video(path, self.backend, self.decode_threads) as reader:
            if (problem := window_problem(record.start, record.end, reader.duration)) is not None:
                raise VideoDecodeError(path, problem)
            # "fps" sampling starts at a random offset only in training; evaluation starts at the window start.
            fixed_start = self.sampling == "fps" and not self.transform.train
            indices, valid = sample_frame_indices(
                reader.num_frames, reader.fps, self.num_frames, self.sampling, rng=None if fixed_start else rng,
                start_sec=record.start, end_sec=record.end, target_fps=self.target_fps)
            return reader.get_frames(indices), valid

    def __getitem__(self, index: int) -> dict:
        record_index, caption_index = self.items[index]
        record = self.records[record_index]
        caption_rng, frames_rng, crop_generator = self._generators(index)
        caption = self._caption(record, caption_index, caption_rng)
        path = record.resolve(self.video_root)
        try:
            frames, valid = self._load_frames(path, record, frames_rng)
        except (VideoDecodeError, ImageDecodeError) as e:  # also a window past the video's end, a symlink out
            return {"skipped": True, "path": str(path), "reason": e.reason, "index": index}
        except OSError as e:  # unreadable file (permissions, I/O error): as unusable as a corrupt one
            return {"skipped": True, "path": str(path), "reason": f"{type(e).__name__}: {e}", "index": index}
        return {"video": self.transform(frames, crop_generator), "frame_mask": torch.from_numpy(valid),
                "caption": caption, "index": index, "record_index": record_index, "video_id": record.video_id,
                "video_captions": record.captions}


class VideoTextCollator:
    """Stacks dataset items into a batch and tokenizes the captions.

    tokenizer: callable list[str] -> {"input_ids": (B, L), "attention_mask": (B, L)} (padded); its outputs
    become top-level batch keys. Skipped items leave the batch; `batch["skipped"]` lists their
    (path, reason). A batch whose items were all skipped has `video=None` (the trainer skips the step).

    knowledge: optional `KnowledgeLookup` (the run's knowledge cache). When given, the batch also carries
    "knowledge" (one CaptionKnowledge per caption, read from the cache in the loader worker, parsed there when
    missing), "token_offsets" (each token's character span in its caption, from
    `tokenizer.encode_with_offsets`), which CLOP, S-ViLM and Clover use to find knowledge elements, noun
    phrases and nouns/verbs among the word pieces, the lookup's optional "swaps" / "video_knowledge", and the
    counts "knowledge_parsed" / "swaps_built" of what the cache lacked (the trainer's `SkipLedger` adds them up).
    """

    def __init__(self, tokenizer: Callable[[list[str]], dict], knowledge: KnowledgeLookup | None = None):
        self.tokenizer = tokenizer
        self.knowledge = knowledge

    def __call__(self, samples: list[dict]) -> dict:
        kept = [s for s in samples if not s.get("skipped")]
        skipped = [(s["path"], s["reason"]) for s in samples if s.get("skipped")]
        if not kept:
            return {"video": None, "skipped": skipped}
        captions = [s["caption"] for s in kept]
        batch = {
            "video": torch.stack([s["video"] for s in kept]),
            "frame_mask": torch.stack([s["frame_mask"] for s in kept]),
            "index": torch.tensor([s["index"] for s in kept], dtype=torch.long),
            "record_index": torch.tensor([s["record_index"] for s in kept], dtype=torch.long),
            "caption": captions,
            "video_id": [s["video_id"] for s in kept],
            "skipped": skipped,
        }
        if self.knowledge is None:
            batch.update(self.tokenizer(captions))
            return batch
        tokens, offsets = self.tokenizer.encode_with_offsets(captions)
        batch.update(tokens)
        batch.update(self.knowledge.batch_fields(kept))
        batch["token_offsets"] = offsets
        return batch


class SkipLedger:
    """Main-process record of skipped videos: counts every skip, logs each bad file once. It also adds up the
    captions whose knowledge (or swaps) the loader had to make because the knowledge cache lacked them."""

    def __init__(self):
        self.total = 0
        self.reasons: dict[str, str] = {}  # path -> reason, in first-seen order
        self.per_reason: Counter = Counter()
        self.knowledge_parsed = 0  # captions parsed in a loader worker (not in the knowledge cache)
        self.swaps_built = 0  # captions whose swaps were built in a loader worker

    def update_batch(self, batch: Mapping) -> None:
        """Count a collated batch's skipped items and what its knowledge lookup had to parse or build."""
        self.update(batch.get("skipped"))
        parsed, built = int(batch.get("knowledge_parsed", 0)), int(batch.get("swaps_built", 0))
        if parsed and not self.knowledge_parsed:
            log.warning("parsing captions missing from the knowledge cache in the loader (run `structvl "
                        "knowledge` on the training annotations first to avoid it)")
        self.knowledge_parsed += parsed
        self.swaps_built += built

    def update(self, skipped: Sequence[tuple[str, str]] | None) -> None:
        for path, reason in skipped or ():
            self.total += 1
            self.per_reason[reason] += 1
            if path not in self.reasons:
                self.reasons[path] = reason
                log.warning("skipping video %s: %s", path, reason)

    @property
    def noteworthy(self) -> bool:
        """Whether there is anything to report: a skipped clip, or captions the knowledge cache lacked."""
        return bool(self.total or self.knowledge_parsed or self.swaps_built)

    def summary(self) -> dict:
        """total skips (a file skipped in two epochs counts twice), per-reason counts, unique paths."""
        return {"total": self.total, "per_reason": dict(self.per_reason), "unique_paths": len(self.reasons)}

    def report(self) -> str:
        """One line for an epoch-end log."""
        parts = []
        if self.knowledge_parsed or self.swaps_built:
            parts.append(f"knowledge cache lacked {self.knowledge_parsed} captions (parsed in the loader) and the "
                         f"swaps of {self.swaps_built}")
        if not self.total:
            return "; ".join(["no videos skipped", *parts])
        reasons = ", ".join(f"{count} x {reason}" for reason, count in self.per_reason.most_common())
        return "; ".join([f"skipped {self.total} clips from {len(self.reasons)} unreadable videos ({reasons})", *parts])


def seed_worker(worker_id: int) -> None:
    """A training loader worker's `worker_init_fn`: `die_with_parent`, then seed numpy and `random` from the
    seed torch gave it (base seed + worker id), for any library code that still draws from global state; the
    dataset itself does not."""
    die_with_parent()
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def build_dataloader(dataset: Dataset, collator: Callable, batch_size: int, shuffle: bool, num_workers: int,
                     seed: int, drop_last: bool, sampler: Sampler | None = None,
                     timeout: float = 0, start_method: str | None = None) -> DataLoader:
    """A DataLoader with worker processes (persistent across epochs), seeded shuffling and worker seeds.

    sampler: e.g. a DistributedSampler; it replaces `shuffle`. timeout: seconds to wait for one batch from
    a worker before raising (0 = forever), a guard against a decoder stuck on a pathological file.
    start_method: how the workers start ("fork", "spawn", ...; None: the process's default start method).
    """
    if sampler is None and shuffle:
        # The shuffle gets a generator of its own: the loader's generator also seeds workers, once per
        # iterator, and persistent workers create fewer iterators - sharing it would make the epoch-2 order
        # depend on num_workers.
        sampler = RandomSampler(dataset, generator=torch.Generator().manual_seed(seed))
    return DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers, collate_fn=collator,
        drop_last=drop_last, generator=torch.Generator().manual_seed(seed),
        worker_init_fn=seed_worker if num_workers > 0 else None, persistent_workers=num_workers > 0,
        timeout=timeout if num_workers > 0 else 0, pin_memory=torch.cuda.is_available(),
        prefetch_factor=2 if num_workers > 0 else None,
        multiprocessing_context=start_method if num_workers > 0 else None,
    )
