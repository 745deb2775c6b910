"""Webdataset tar shards: writing them from records, and reading them as a sharded iterable dataset.

Big corpora (WebVid-scale) are read far faster as a few hundred large tar files than as millions of small
video files. `write_shards` packs each record's video file and its annotation into tar shards; a sample is

    <key>.mp4            the video file's bytes, as they were on disk (any container; the member is "mp4")
    <key>.json           the record's `to_dict()` (captions, start/end window, ids, meta, ...)
    <key>.record_index   the record's position in the annotation list it was written from

`ShardedVideoTextDataset` reads them back and yields exactly the item dicts `VideoTextDataset` yields
({"video", "frame_mask", "caption", "index", "record_index", "video_id"}, or a "skipped" marker for a video
that does not decode), so the same `VideoTextCollator` and `SkipLedger` work unchanged. Shards written by
other tools (e.g. video2dataset: "mp4" + a json with "caption" and/or a "txt" member) are read too.

Splitting. Like `DistributedSampler` for the map-style dataset, every rank reads a disjoint part of the data:
each epoch the full shard list is shuffled with a generator seeded by (seed, epoch), shard i of that order
goes to rank i % world_size, and a rank's shards are dealt the same way to its DataLoader workers. All of it
is explicit and deterministic (no environment variables, no global random state).

Determinism. Each sample's caption, frames and crop are drawn from generators seeded by (seed, epoch, hash of
the sample key), so a sample looks the same whatever the number of ranks and workers. The *order* samples
arrive in does depend on the number of ranks and workers (and on `shuffle_buffer`).

Caveats (the price of streaming):
* Ranks can see different numbers of samples (shards hold different counts; shards do not divide evenly).
  Write shards of equal size (`max_count`) and use a shard count divisible by world_size x num_workers, or
  stop each epoch after a fixed number of steps, so that no rank waits for another in a collective.
* Resume is approximate: `set_position` skips samples of the rank's stream without decoding them, and is
  exact only while every worker still has data and batches come round-robin from the workers (the
  DataLoader's in-order default). Exact resume is only guaranteed with the map-style `VideoTextDataset`.
* A shard that is not a tar file, or cannot be opened, gives one "skipped" marker ("unreadable shard: ...").
  A shard truncated at a member boundary (an interrupted copy) just ends early: Python's tarfile reads a
  cut-off header as the end of the archive, so the lost samples cannot be reported.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Iterator, Sequence
from dataclasses import fields
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from structvl.data.dataset import CAPTION_MODES
from structvl.data.records import VideoRecord, has_caption, outside_root, window_problem
from structvl.data.sampling import SAMPLING_MODES, sample_frame_indices
from structvl.data.transforms import VideoTransform
from structvl.data.video import BACKENDS, VideoDecodeError, open_video_bytes

log = logging.getLogger("structvl.data")

# Members that may hold the video, in order of preference ("mp4" is what write_shards writes).
VIDEO_MEMBERS = ("mp4", "webm", "mkv", "avi", "mov", "m4v")
_RECORD_FIELDS = {f.name for f in fields(VideoRecord)}


# ---------------------------------------------------------------- writing
def _safe_key(index: int, video_id: str) -> str:
    """A tar sample key: unique (the record's position comes first) and free of the characters webdataset
    splits names on ('.' separates key and member, '/' directories)."""
    safe = re.sub(r"[^A-Za-z0-9_-]+", "_", str(video_id)).strip("_")[:80]
    return f"{index:09d}_{safe}" if safe else f"{index:09d}"


def write_shards(records: Sequence[VideoRecord], video_root: str | Path | None, out_pattern: str,
                 max_count: int = 1000, missing: list | None = None, allow_outside_root: bool = False) -> list[str]:
    """Pack records and their video files into webdataset tar shards; returns the shard paths written.

    out_pattern: a printf pattern for the shard files, e.g. "out/train-%06d.tar" (its directory is created).
    max_count: samples per shard (the last shard holds the rest).
    missing: when given, a {"index", "video_id", "path", "reason"} dict is appended for each record whose
        video file is missing, not a regular file or empty; such records are left out (and logged in one
        warning). Videos are not decoded here: one that is corrupt is skipped at training time.
    allow_outside_root: pack videos outside `video_root` too; without it a record whose path leaves the root
        (absolute elsewhere, `..`, a symlink leading out) is left out the same way, with that reason.
    """
    import webdataset as wds

    if max_count <= 0:
        raise ValueError(f"max_count must be positive, got {max_count}")
    try:
        first = out_pattern % 0
    except TypeError:
        first = out_pattern
    if first == out_pattern:
        raise ValueError(f"out_pattern needs a shard-number placeholder such as %06d, got {out_pattern!r}")
    Path(first).parent.mkdir(parents=True, exist_ok=True)
    left_out: list[dict] = []
    shards: list[str] = []
    writer = None
    try:
        for index, record in enumerate(records):
            path = record.resolve(video_root)
            reason = None if allow_outside_root else outside_root(record, video_root, follow_links=True)
            if reason is not None:
                pass
            elif not path.exists():
                reason = "file not found"
            elif not path.is_file():
                reason = "not a regular file"
            elif path.stat().st_size == 0:
                reason = "empty file (0 bytes)"
            if reason is not None:
                left_out.append({"index": index, "video_id": record.video_id, "path": str(path), "reason": reason})
                continue
            if writer is None:  # no empty shard when every video is missing
                writer = wds.ShardWriter(out_pattern, maxcount=max_count, verbose=0)
            sample = {
                "__key__": _safe_key(index, record.video_id),
                "mp4": path.read_bytes(),
                "json": json.dumps(record.to_dict(), ensure_ascii=False, default=str).encode("utf-8"),
                "record_index": str(index).encode("ascii"),
            }
            writer.write(sample)
            if not shards or shards[-1] != writer.fname:
                shards.append(writer.fname)
    finally:
        if writer is not None:
            writer.close()
    if left_out:
        first_few = "; ".join(f"{m['path']}: {m['reason']}" for m in left_out[:3])
        log.warning("write_shards: left out %d record(s) whose video is unusable (%s%s)", len(left_out),
                    first_few, "; ..." if len(left_out) > 3 else "")
    if missing is not None:
        missing.extend(left_out)
    return shards


# ---------------------------------------------------------------- reading
def expand_urls(urls: str | Sequence[str]) -> list[str]:
    """A shard list from a brace pattern ("out/train-{000000..000009}.tar") or a list of urls/patterns."""
    import braceexpand

    if isinstance(urls, (str, Path)):
        urls = [str(urls)]
    out: list[str] = []
    for url in urls:
        out.extend(braceexpand.braceexpand(str(url)))
    return out


def _is_local(url: str) -> bool:
    return "://" not in url and not url.startswith("pipe:")


def _key_hash(key: str) -> int:
    """A stable 63-bit hash of a sample key (Python's hash() is salted per process)."""
    return int.from_bytes(hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest(), "little") >> 1


def _record_of(sample: dict) -> VideoRecord:
    """The sample's record from its json (write_shards' `to_dict()`, or a video2dataset-style json with a
    "caption" string) and/or a "txt" caption member."""
    meta = json.loads(sample["json"]) if "json" in sample else {}
    if not isinstance(meta, dict):
        raise ValueError("json member is not an object")
    known = {k: v for k, v in meta.items() if k in _RECORD_FIELDS}
    captions = known.get("captions")
    if not captions:
        caption = meta.get("caption")
        if caption is None and "txt" in sample:
            caption = sample["txt"].decode("utf-8").strip()
        captions = [caption] if caption else []
    known["captions"] = list(captions)
    known.setdefault("video_id", str(meta.get("key") or sample["__key__"]))
    known.setdefault("video", sample["__key__"])
    return VideoRecord(**known)


class ShardedVideoTextDataset(IterableDataset):
    """`VideoTextDataset`'s items, streamed from webdataset tar shards and split across ranks and workers.

    urls: a brace pattern or a list of shard urls/patterns (local paths, or anything webdataset's gopen reads).
    num_frames, sampling, target_fps, transform, backend, caption_mode, seed: as for `VideoTextDataset`.
        caption_mode "expand" yields one item per caption of each sample.
    rank, world_size: this process's place among the training processes (e.g. from torch.distributed).
    shuffle_buffer: > 0 shuffles samples within a worker through a buffer of that many samples (seeded by
        (seed, epoch, rank, worker)); the shard order is shuffled every epoch regardless, unless
        `shuffle_shards=False` (evaluation).
    `index` of an item is a running counter: `n * num_workers + worker_id` for the worker's n-th item, i.e.
    unique among one rank's items of an epoch. A "skipped" item's `path` is "<shard url>/<sample key>".
    """

    def __init__(self, urls: str | Sequence[str], num_frames: int = 8, sampling: str = "random_segment",
                 target_fps: float | None = None, *, transform: VideoTransform, backend: str = "pyav",
                 caption_mode: str = "random", seed: int = 0, rank: int = 0, world_size: int = 1,
                 shuffle_buffer: int = 0, shuffle_shards: bool = True, require_captions: bool = False):
        if sampling not in SAMPLING_MODES:
            raise ValueError(f"unknown sampling {sampling!r}; expected one of {SAMPLING_MODES}")
        if sampling == "fps" and not target_fps:
            raise ValueError("sampling 'fps' needs target_fps")
        if caption_mode not in CAPTION_MODES:
            raise ValueError(f"unknown caption_mode {caption_mode!r}; expected one of {CAPTION_MODES}")
        if backend not in BACKENDS:
            raise ValueError(f"unknown video backend {backend!r}; expected one of {BACKENDS}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        if shuffle_buffer < 0:
            raise ValueError(f"shuffle_buffer must be >= 0, got {shuffle_buffer}")
        self.urls = expand_urls(urls)
        if not self.urls:
            raise ValueError(f"no shards in {urls!r}")
        absent = [u for u in self.urls if _is_local(u) and not Path(u).is_file()]
        if absent:
            raise FileNotFoundError(f"{len(absent)} shard(s) not found: {', '.join(absent[:3])}"
                                    f"{', ...' if len(absent) > 3 else ''}")
        if len(self.urls) < world_size:
            raise ValueError(f"{len(self.urls)} shard(s) cannot be split across {world_size} ranks: every rank "
                             "needs at least one shard (write smaller shards with a lower max_count)")
        self.num_frames, self.sampling, self.target_fps = num_frames, sampling, target_fps
        self.transform, self.backend = transform, backend
        self.caption_mode, self.seed = caption_mode, seed
        self.rank, self.world_size = rank, world_size
        self.shuffle_buffer, self.shuffle_shards = shuffle_buffer, shuffle_shards
        self.require_captions = require_captions
        # Shared memory, as in VideoTextDataset: persistent workers keep their own copy of the dataset.
        # _resume = (epoch, samples of the rank's stream to skip, batch size or 0); epoch -1 = no resume.
        self._epoch = torch.zeros((), dtype=torch.long).share_memory_()
        self._resume = torch.tensor([-1, 0, 0], dtype=torch.long).share_memory_()

    # ------------------------------------------------------------ epochs, splitting, resume
    @property
    def epoch(self) -> int:
        return int(self._epoch)

    def set_epoch(self, epoch: int) -> None:
        """New shard order and new random captions / frames / crops. Call before creating the epoch's
        loader iterator (`for batch in loader`)."""
        self._epoch.fill_(epoch)

    def set_position(self, epoch: int, samples_seen: int, batch_size: int | None = None) -> None:
        """Resume (approximately) inside `epoch`: sets the epoch and skips the first `samples_seen` items of
        this rank's stream, without decoding them. With a DataLoader, pass its `batch_size`: batches come
        round-robin from the workers, and the skip is then split over the workers batch by batch (without
        it, evenly). Only the epoch set here is affected; exact resume needs the map-style dataset."""
        if samples_seen < 0:
            raise ValueError(f"samples_seen must be >= 0, got {samples_seen}")
        self.set_epoch(epoch)
        self._resume.copy_(torch.tensor([epoch, samples_seen, batch_size or 0]))

    def shard_order(self, epoch: int) -> list[str]:
        """All shards in the order of `epoch` (shuffled with (seed, epoch) unless shuffle_shards=False)."""
        if not self.shuffle_shards:
            return list(self.urls)
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, epoch]))
        return [self.urls[i] for i in rng.permutation(len(self.urls))]

    def rank_shards(self, epoch: int) -> list[str]:
        """This rank's shards in `epoch`: shard i of the epoch's order goes to rank i % world_size."""
        return self.shard_order(epoch)[self.rank::self.world_size]

    def worker_shards(self, epoch: int, worker_id: int = 0, num_workers: int = 1) -> list[str]:
        """A loader worker's share of the rank's shards, dealt round-robin."""
        return self.rank_shards(epoch)[worker_id::num_workers]

    def _to_skip(self, epoch: int, worker_id: int, num_workers: int) -> int:
        resume_epoch, seen, batch_size = (int(v) for v in self._resume)
        if resume_epoch != epoch or seen <= 0:
            return 0
        if num_workers == 1:
            return seen
        if batch_size <= 0:  # evenly
            return seen // num_workers + (1 if worker_id < seen % num_workers else 0)
        full_batches, rest = divmod(seen, batch_size)
        mine = full_batches // num_workers + (1 if worker_id < full_batches % num_workers else 0)
        return mine * batch_size + (rest if full_batches % num_workers == worker_id else 0)

    # ------------------------------------------------------------ reading
    def _raw_samples(self, shards: list[str]) -> Iterator[dict]:
        """Samples of the shards in order; an unreadable shard (or tar member) becomes a
        {"__error__": reason, "__url__": url} entry instead of an exception."""
        from webdataset import tariterators

        errors: list[Exception] = []

        def handler(exn: Exception) -> bool:
            errors.append(exn)
            return True  # go on with what can still be read

        def drain() -> Iterator[dict]:
            while errors:
                exn = errors.pop(0)
                url = next((a for a in reversed(exn.args) if isinstance(a, str) and a in shards), "?")
                yield {"__error__": f"unreadable shard: {type(exn).__name__}: {exn.args[0] if exn.args else ''}",
                       "__url__": url}

        for sample in tariterators.tarfile_samples(({"url": url} for url in shards), handler=handler):
            yield from drain()
            yield sample
        yield from drain()

    def _units(self, shards: list[str]) -> Iterator[tuple[dict, VideoRecord | None, int | None]]:
        """(sample, record, caption index or None) for each item to yield; record None = a skip marker."""
        for sample in self._raw_samples(shards):
            if "__error__" in sample:
                yield sample, None, None
                continue
            try:
                record = _record_of(sample)
            except (ValueError, UnicodeDecodeError, TypeError) as e:  # JSONDecodeError is a ValueError
                yield {**sample, "__error__": f"bad annotation: {type(e).__name__}: {e}"}, None, None
                continue
            problem = window_problem(record.start, record.end, record.duration)
            if problem is None and self.require_captions and not has_caption(record):
                problem = "no caption"
            if problem is not None:  # skipped and counted like an unreadable video, never trained on
                yield {**sample, "__error__": problem}, None, None
                continue
            if self.caption_mode == "expand" and record.captions:
                for c in (c for c, text in enumerate(record.captions) if text.strip()):
                    yield sample, record, c
            else:
                yield sample, record, None

    def _shuffled(self, units: Iterator, rng: np.random.Generator) -> Iterator:
        buffer: list = []
        for unit in units:
            buffer.append(unit)
            if len(buffer) >= self.shuffle_buffer:
                j = int(rng.integers(len(buffer)))
                buffer[j], buffer[-1] = buffer[-1], buffer[j]
                yield buffer.pop()
        while buffer:
            j = int(rng.integers(len(buffer)))
            buffer[j], buffer[-1] = buffer[-1], buffer[j]
            yield buffer.pop()

    def _generators(self, epoch: int, key: str,
                    caption_index: int | None) -> tuple[np.random.Generator, np.random.Generator, torch.Generator]:
        entropy = [self.seed, epoch, _key_hash(key)] + ([] if caption_index is None else [caption_index])
        caption_seed, frames_seed, crop_seed = np.random.SeedSequence(entropy).spawn(3)
        crop_generator = torch.Generator().manual_seed(int(crop_seed.generate_state(1, np.uint64)[0] >> 1))
        return np.random.default_rng(caption_seed), np.random.default_rng(frames_seed), crop_generator

    def _item(self, epoch: int, sample: dict, record: VideoRecord | None, caption_index: int | None,
              index: int) -> dict:
        name = f"{sample.get('__url__', '?')}/{sample['__key__']}" if "__key__" in sample else sample["__url__"]
        if record is None:
            return {"skipped": True, "path": name, "reason": sample["__error__"], "index": index}
        member = next((m for m in VIDEO_MEMBERS if m in sample), None)
        if member is None:
            return {"skipped": True, "path": name, "reason": "no video member in the sample", "index": index}
        caption_rng, frames_rng, crop_generator = self._generators(epoch, sample["__key__"], caption_index)
        captions = [c for c in record.captions if c.strip()]
        if not captions:
            caption = ""
        elif caption_index is not None:
            caption = record.captions[caption_index]
        elif self.caption_mode == "random":
            caption = captions[int(caption_rng.integers(len(captions)))]
        else:
            caption = captions[0]
        try:
            with open_video_bytes(sample[member], name, self.backend) as reader:
                if (problem := window_problem(record.start, record.end, reader.duration)) is not None:
                    return {"skipped": True, "path": name, "reason": problem, "index": index}
                fixed_start = self.sampling == "fps" and not self.transform.train
                indices, valid = sample_frame_indices(
                    reader.num_frames, reader.fps, self.num_frames, self.sampling,
                    rng=None if fixed_start else frames_rng, start_sec=record.start, end_sec=record.end,
                    target_fps=self.target_fps)
                frames = reader.get_frames(indices)
        except VideoDecodeError as e:
            return {"skipped": True, "path": name, "reason": e.reason, "index": index}
        try:
            record_index = int(sample["record_index"]) if "record_index" in sample else -1
        except ValueError:
            record_index = -1
        return {"video": self.transform(frames, crop_generator), "frame_mask": torch.from_numpy(valid),
                "caption": caption, "index": index, "record_index": record_index, "video_id": record.video_id}

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        worker_id, num_workers = (0, 1) if info is None else (info.id, info.num_workers)
        epoch = self.epoch
        shards = self.worker_shards(epoch, worker_id, num_workers)
        if not shards:
            log.warning("rank %d worker %d has no shard in epoch %d (%d shards for %d ranks x %d workers)",
                        self.rank, worker_id, epoch, len(self.urls), self.world_size, num_workers)
            return
        units = self._units(shards)
        if self.shuffle_buffer > 0:
            rng = np.random.default_rng(np.random.SeedSequence([self.seed, epoch, self.rank, worker_id, 1]))
            units = self._shuffled(units, rng)
        to_skip = self._to_skip(epoch, worker_id, num_workers)
        for n, (sample, record, caption_index) in enumerate(units):
            if n < to_skip:
                continue
            yield self._item(epoch, sample, record, caption_index, n * num_workers + worker_id)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({len(self.urls)} shards, rank {self.rank}/{self.world_size}, "
                f"{self.num_frames} frames, {self.sampling}, caption_mode={self.caption_mode})")
