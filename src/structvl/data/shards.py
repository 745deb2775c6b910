"""Webdataset tar shards read as a sharded iterable dataset (`shard_writer.write_shards` writes them).

Big corpora (WebVid-scale) are read far faster as a few hundred large tar files than as millions of small
video files. `ShardedVideoTextDataset` reads them back and yields exactly the item dicts `VideoTextDataset` yields
({"video", "frame_mask", "caption", "index", "record_index", "video_id", "video_captions"}, or a "skipped"
marker for a video that does not decode), so the same `VideoTextCollator` and `SkipLedger` work unchanged.
Shards written by other tools are read too: video2dataset's ("mp4" + a json with "caption" and/or a "txt"
member) and image-text shards such as img2dataset's CC3M ("jpg"/"png"/"webp" + "txt"), whose images become
one-frame clips (structvl.data.images).

Reading is webdataset's own pipeline (`wds.DataPipeline`), as open_clip's data.py builds it:

    SimpleShardList (shuffled per epoch) -> rank split -> worker split -> tar samples (tariterators)
    -> describe (record, caption) -> shuffle buffer (`wds.shuffle`) or a grouping stage -> skip -> decode

structvl adds only what webdataset does not do: deterministic seeds for every stage, the resume position
(the skip stage, before decoding), skip markers for bad shards and samples, and images as one-frame clips.

Splitting. Like `DistributedSampler` for the map-style dataset, every rank reads a disjoint part of the data:
each epoch the full shard list is shuffled with a seed made of (seed, epoch), shard i of that order goes to
rank i % world_size, and a rank's shards are dealt the same way to worker roles. The rank is passed in, not
read from the environment (webdataset's split_by_node would), and the whole pipeline is seeded (no global
random state), so a rank's stream is a function of (seed, epoch, rank, number of workers).

Determinism. Each sample's caption, frames and crop are drawn from generators seeded by (seed, epoch, hash of
the sample key), so a sample looks the same whatever the number of ranks and workers. The *order* samples
arrive in does depend on the number of ranks and workers (and on `shuffle_buffer`).

Resume. `set_position(epoch, samples_seen, batch_size)` continues exactly where a rank stopped. A DataLoader
takes its batches from its workers in turn, skipping workers that have run out; from the shards' sample
counts (`sizes.json` beside them, written by `write_shards`; else counted from the tar headers of local shards)
the dataset replays that order, so each worker role skips exactly the batches it had delivered, and loader
worker 0 takes the role whose turn came next. Exact for any shard sizes with caption_mode "random"/"first";
with "expand" (items per sample unknown) or remote shards without sizes.json it is exact until the first
worker runs out of shards.

Caveats (the price of streaming):
* Ranks can see different numbers of samples (shards hold different counts; shards do not divide evenly).
  Write shards of equal size (`max_count`) and use a shard count divisible by world_size x num_workers, or
  stop each epoch after a fixed number of steps, so that no rank waits for another in a collective.
* A shard that is not a tar file, or cannot be opened, gives one "skipped" marker ("unreadable shard: ...").
  A shard truncated at a member boundary (an interrupted copy) just ends early: Python's tarfile reads a
  cut-off header as the end of the archive, so the lost samples cannot be reported.

The module stays whole (~430 lines, this docstring included) because its one class and its pipeline
stages together carry out the splitting, determinism and resume contract above; the tar writer is apart
(`shard_writer.py`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import fields
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from structvl.data.dataset import check_clip_options
from structvl.data.images import IMAGE_MEMBERS, ImageDecodeError, decode_image, image_clip
from structvl.data.records import VideoRecord, has_caption, window_problem
from structvl.data.sampling import sample_frame_indices
from structvl.data.shard_writer import SIZES_FILE, write_shards
from structvl.data.transforms import VideoTransform
from structvl.data.video import VideoDecodeError, open_video_bytes

__all__ = ["SIZES_FILE", "ShardedVideoTextDataset", "count_samples", "expand_urls", "shard_sizes", "write_shards"]
log = logging.getLogger("structvl.data")

# Members that may hold the video, in order of preference ("mp4" is what write_shards writes).
VIDEO_MEMBERS = ("mp4", "webm", "mkv", "avi", "mov", "m4v")
_RECORD_FIELDS = {f.name for f in fields(VideoRecord)}


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


def stable_hash(key: str) -> int:
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


def shard_sizes(urls: Sequence[str]) -> dict[str, int]:
    """Samples per shard from the `sizes.json` files beside local shards ({shard file name: samples}, as
    write_shards and open_clip write them); shards not listed are absent from the result."""
    sizes: dict[str, int] = {}
    for directory in {str(Path(u).parent) for u in urls if _is_local(u)}:
        path = Path(directory) / SIZES_FILE
        if path.is_file():
            try:
                listed = json.loads(path.read_text(encoding="utf-8"))
            except ValueError:
                continue
            sizes.update({str(Path(directory) / name): int(n) for name, n in listed.items()})
    return {u: sizes[u] for u in urls if u in sizes}


def count_samples(url: str) -> int:
    """Samples in a local tar shard, counted from its member names (headers only, no member is read)."""
    with tarfile.open(url) as tar:
        return len({name.split(".", 1)[0] for name in tar.getnames() if not name.startswith("__")})


class ShardedVideoTextDataset(IterableDataset):
    """`VideoTextDataset`'s items, streamed from webdataset tar shards and split across ranks and workers.

    urls: a brace pattern or a list of shard urls/patterns (local paths, or anything webdataset's gopen reads).
    num_frames, sampling, target_fps, transform, backend, caption_mode, seed, decode_threads: as for
        `VideoTextDataset`.
        caption_mode "expand" yields one item per caption of each sample.
    rank, world_size: this process's place among the training processes (e.g. from torch.distributed).
    shuffle_buffer: > 0 shuffles samples within a worker through a buffer of that many samples (webdataset's
        `shuffle` stage, seeded by (seed, epoch, rank, worker role)); the shard order is shuffled every epoch
        regardless, unless `shuffle_shards=False` (evaluation).
    `index` of an item is a running counter: `n * num_workers + role` for the role's n-th item, i.e. unique
    among one rank's items of an epoch. A "skipped" item's `path` is "<shard url>/<sample key>".
    """

    def __init__(self, urls: str | Sequence[str], num_frames: int = 8, sampling: str = "random_segment",
                 target_fps: float | None = None, *, transform: VideoTransform, backend: str = "pyav",
                 caption_mode: str = "random", seed: int = 0, rank: int = 0, world_size: int = 1,
                 shuffle_buffer: int = 0, shuffle_shards: bool = True, require_captions: bool = False,
                 decode_threads: int | None = None):
        check_clip_options(sampling, target_fps, caption_mode, backend)
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
        self.transform, self.backend, self.decode_threads = transform, backend, decode_threads
        self.caption_mode, self.seed = caption_mode, seed
        self.rank, self.world_size = rank, world_size
        self.shuffle_buffer, self.shuffle_shards = shuffle_buffer, shuffle_shards
        self.grouping = None  # a stage that reorders undecoded items (CLOP's KnowledgeGrouping): set_grouping
        self.require_captions = require_captions
        # Shared memory, as in VideoTextDataset: persistent workers keep their own copy of the dataset.
        # _resume = (epoch, samples of the rank's stream to skip, batch size or 0, drop_last); epoch -1 = none.
        self._epoch = torch.zeros((), dtype=torch.long).share_memory_()
        self._resume = torch.tensor([-1, 0, 0, 1], dtype=torch.long).share_memory_()
        self._sizes: dict[str, int | None] = {}

    # ------------------------------------------------------------ epochs, splitting, resume
    @property
    def epoch(self) -> int:
        return int(self._epoch)

    def set_epoch(self, epoch: int) -> None:
        """New shard order and new random captions / frames / crops. Call before creating the epoch's
        loader iterator (`for batch in loader`)."""
        self._epoch.fill_(epoch)

    def set_grouping(self, grouping) -> None:
        """Reorder the undecoded items with `grouping(items, rng)` instead of the shuffle buffer (e.g. CLOP's
        `KnowledgeGrouping`, which puts clips that share knowledge into one batch)."""
        self.grouping = grouping

    def set_position(self, epoch: int, samples_seen: int, batch_size: int | None = None,
                     drop_last: bool = True) -> None:
        """Resume inside `epoch` after this rank has consumed `samples_seen` items, skipping them without
        decoding. With a DataLoader, pass its `batch_size` and `drop_last`: the loader takes batches from its
        workers in turn, and each worker then skips exactly the batches it had delivered and takes the role
        of the worker whose turn came next (module docstring, "Resume"). Only `epoch` is affected."""
        if samples_seen < 0:
            raise ValueError(f"samples_seen must be >= 0, got {samples_seen}")
        self.set_epoch(epoch)
        self._resume.copy_(torch.tensor([epoch, samples_seen, batch_size or 0, int(drop_last)]))

    def shard_order(self, epoch: int) -> list[str]:
        """All shards in the order of `epoch` (webdataset's SimpleShardList, shuffled with a seed made of
        (seed, epoch) unless shuffle_shards=False)."""
        import webdataset as wds

        return [entry["url"] for entry in wds.SimpleShardList(self.urls, seed=self._shard_seed(epoch))]

    def _shard_seed(self, epoch: int) -> int | None:
        return None if not self.shuffle_shards else stable_hash(f"shards:{self.seed}:{epoch}")

    def rank_shards(self, epoch: int) -> list[str]:
        """This rank's shards in `epoch`: shard i of the epoch's order goes to rank i % world_size."""
        return self.shard_order(epoch)[self.rank::self.world_size]

    def worker_shards(self, epoch: int, worker_id: int = 0, num_workers: int = 1) -> list[str]:
        """A worker role's share of the rank's shards, dealt round-robin."""
        return self.rank_shards(epoch)[worker_id::num_workers]

    def _items_in(self, url: str) -> int | None:
        """Items a shard gives (its samples; unknown with caption_mode "expand" or for a remote shard)."""
        if url not in self._sizes:
            self._sizes.update(shard_sizes(self.urls))
            if url not in self._sizes:
                self._sizes[url] = count_samples(url) if _is_local(url) else None
        return None if self.caption_mode == "expand" else self._sizes[url]

    def _resume_plan(self, epoch: int, num_workers: int) -> tuple[int, list[int]]:
        """(role of loader worker 0, items each role skips) for resuming `epoch`."""
        resume_epoch, seen, batch_size, drop_last = (int(v) for v in self._resume)
        if resume_epoch != epoch or seen <= 0:
            return 0, [0] * num_workers
        if num_workers == 1:
            return 0, [seen]
        if batch_size <= 0:  # no batch structure given: evenly
            return 0, [seen // num_workers + (1 if w < seen % num_workers else 0) for w in range(num_workers)]
        batches, rest = divmod(seen, batch_size)
        left = []  # batches each role delivers this epoch (a large number when its shards' sizes are unknown)
        for role in range(num_workers):
            sizes = [self._items_in(url) for url in self.worker_shards(epoch, role, num_workers)]
            items = sum(sizes) if None not in sizes else 1 << 62
            left.append(items // batch_size if drop_last else -(-items // batch_size))
        taken, turn = [0] * num_workers, 0
        for _ in range(batches):  # the loader's order: workers in turn, skipping those that have run out
            for _ in range(num_workers):
                role, turn = turn % num_workers, turn + 1
                if taken[role] < left[role]:
                    taken[role] += 1
                    break
            else:
                break
        first = next((r % num_workers for r in range(turn, turn + num_workers) if taken[r % num_workers] < left[r % num_workers]),
                     turn % num_workers)
        skips = [t * batch_size for t in taken]
        skips[first] += rest
        return first, skips

    # ------------------------------------------------------------ the webdataset pipeline
    def pipeline(self, epoch: int, role: int, num_workers: int, skip: int) -> Iterator[dict]:
        """The items worker role `role` of `num_workers` yields in `epoch` after skipping `skip`, through
        webdataset's stages: shard list -> rank split -> worker split -> tar -> describe -> shuffle or group
        -> skip -> decode."""
        import webdataset as wds

        rng = random.Random(stable_hash(f"buffer:{self.seed}:{epoch}:{self.rank}:{role}"))
        if self.grouping is not None:
            order = wds.filters.pipelinefilter(self.grouping)(rng)
        elif self.shuffle_buffer > 0:
            order = wds.shuffle(self.shuffle_buffer, initial=self.shuffle_buffer, rng=rng)
        else:
            order = None
        return iter(wds.DataPipeline(
            wds.SimpleShardList(self.urls, seed=self._shard_seed(epoch)),
            # webdataset's split_by_node reads the rank from the environment; structvl passes it explicitly (the
            # same islice), so a rank's shards never depend on environment variables.
            wds.slice(self.rank, None, self.world_size),
            # the worker split by role, not by loader worker id: on resume the roles rotate (set_position)
            wds.slice(role, None, num_workers),
            _tar_samples,
            self._describe(epoch),
            order,
            wds.slice(skip, None),
            self._decode(epoch, role, num_workers, skip),
        ))

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        worker_id, num_workers = (0, 1) if info is None else (info.id, info.num_workers)
        epoch = self.epoch
        first, skips = self._resume_plan(epoch, num_workers)
        role = (worker_id + first) % num_workers
        if not self.worker_shards(epoch, role, num_workers):
            log.warning("rank %d worker %d has no shard in epoch %d (%d shards for %d ranks x %d workers)",
                        self.rank, worker_id, epoch, len(self.urls), self.world_size, num_workers)
            return
        yield from self.pipeline(epoch, role, num_workers, skips[role])

    def _describe(self, epoch: int):
        """Stage: tar samples -> undecoded items {"sample", "record", "caption_index", "caption"} (one per caption
        with caption_mode "expand"); a sample that cannot be read becomes an item with a "reason"."""
        def describe(samples: Iterator[dict]) -> Iterator[dict]:
            for sample in samples:
                if "__error__" in sample:
                    yield {"sample": sample, "record": None, "caption": None, "reason": sample["__error__"]}
                    continue
                try:
                    record = _record_of(sample)
                except (ValueError, UnicodeDecodeError, TypeError) as e:  # JSONDecodeError is a ValueError
                    yield {"sample": sample, "record": None, "caption": None,
                           "reason": f"bad annotation: {type(e).__name__}: {e}"}
                    continue
                problem = window_problem(record.start, record.end, record.duration)
                if problem is None and self.require_captions and not has_caption(record):
                    problem = "no caption"
                if problem is not None:  # skipped and counted like an unreadable video, never trained on
                    yield {"sample": sample, "record": None, "caption": None, "reason": problem}
                    continue
                if self.caption_mode == "expand" and record.captions:
                    for c in (c for c, text in enumerate(record.captions) if text.strip()):
                        yield {"sample": sample, "record": record, "caption_index": c, "caption": record.captions[c]}
                    continue
                caption_rng = self._generators(epoch, sample["__key__"], None)[0]
                captions = [c for c in record.captions if c.strip()]
                if not captions:
                    caption = ""
                elif self.caption_mode == "random":
                    caption = captions[int(caption_rng.integers(len(captions)))]
                else:
                    caption = captions[0]
                yield {"sample": sample, "record": record, "caption_index": None, "caption": caption}
        return describe

    def _generators(self, epoch: int, key: str,
                    caption_index: int | None) -> tuple[np.random.Generator, np.random.Generator, torch.Generator]:
        entropy = [self.seed, epoch, stable_hash(key)] + ([] if caption_index is None else [caption_index])
        caption_seed, frames_seed, crop_seed = np.random.SeedSequence(entropy).spawn(3)
        crop_generator = torch.Generator().manual_seed(int(crop_seed.generate_state(1, np.uint64)[0] >> 1))
        return np.random.default_rng(caption_seed), np.random.default_rng(frames_seed), crop_generator

    def _decode(self, epoch: int, role: int, num_workers: int, skip: int):
        """Stage: undecoded items -> dataset items (the video, or an image as a one-frame clip, decoded and
        transformed), or "skipped" markers."""
        def decode(units: Iterator[dict]) -> Iterator[dict]:
            for n, unit in enumerate(units, start=skip):
                yield self._item(epoch, unit, n * num_workers + role)
        return decode

    def _item(self, epoch: int, unit: dict, index: int) -> dict:
        sample, record = unit["sample"], unit["record"]
        name = f"{sample.get('__url__', '?')}/{sample['__key__']}" if "__key__" in sample else sample.get("__url__", "?")
        if record is None:
            return {"skipped": True, "path": name, "reason": unit["reason"], "index": index}
        member = next((m for m in VIDEO_MEMBERS + IMAGE_MEMBERS if m in sample), None)
        if member is None:
            return {"skipped": True, "path": name, "reason": "no video or image member in the sample", "index": index}
        _, frames_rng, crop_generator = self._generators(epoch, sample["__key__"], unit["caption_index"])
        try:
            if member in IMAGE_MEMBERS:
                frames, valid = image_clip(decode_image(sample[member], name), self.num_frames)
            else:
                with open_video_bytes(sample[member], name, self.backend, self.decode_threads) as reader:
                    if (problem := window_problem(record.start, record.end, reader.duration)) is not None:
                        return {"skipped": True, "path": name, "reason": problem, "index": index}
                    fixed_start = self.sampling == "fps" and not self.transform.train
                    indices, valid = sample_frame_indices(
                        reader.num_frames, reader.fps, self.num_frames, self.sampling,
                        rng=None if fixed_start else frames_rng, start_sec=record.start, end_sec=record.end,
                        target_fps=self.target_fps)
                    frames = reader.get_frames(indices)
        except (VideoDecodeError, ImageDecodeError) as e:
            return {"skipped": True, "path": name, "reason": e.reason, "index": index}
        try:
            record_index = int(sample["record_index"]) if "record_index" in sample else -1
        except ValueError:
            record_index = -1
        item = {"video": self.transform(frames, crop_generator), "frame_mask": torch.from_numpy(valid),
                "caption": unit["caption"], "index": index, "record_index": record_index,
                "video_id": record.video_id, "video_captions": record.captions}
        if unit.get("knowledge") is not None:  # attached by the grouping stage: the collator uses it as is
            item["knowledge"], item["knowledge_parsed"] = unit["knowledge"], unit.get("knowledge_parsed", 0)
        return item

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({len(self.urls)} shards, rank {self.rank}/{self.world_size}, "
                f"{self.num_frames} frames, {self.sampling}, caption_mode={self.caption_mode})")


def _tar_samples(shards: Iterator[dict]) -> Iterator[dict]:
    """Stage: shard urls -> samples, by webdataset's tar reader (`tariterators.tarfile_samples`, what
    `wds.tarfile_to_samples` runs); an unreadable shard (or tar member) becomes a {"__error__": reason,
    "__url__": url} entry, so it is skipped and counted rather than raised or silently dropped."""
    from webdataset import tariterators

    errors: list[Exception] = []
    urls: list[str] = []

    def handler(exn: Exception) -> bool:
        errors.append(exn)
        return True  # go on with what can still be read

    def drain() -> Iterator[dict]:
        while errors:
            exn = errors.pop(0)
            url = next((a for a in reversed(exn.args) if isinstance(a, str) and a in urls), "?")
            yield {"__error__": f"unreadable shard: {type(exn).__name__}: {exn.args[0] if exn.args else ''}",
                   "__url__": url}

    def noted(entries: Iterator[dict]) -> Iterator[dict]:
        for entry in entries:
            urls.append(entry["url"])
            yield entry

    for sample in tariterators.tarfile_samples(noted(shards), handler=handler):
        yield from drain()
        yield sample
    yield from drain()
