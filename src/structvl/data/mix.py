"""`data.mix`: pre-training on several sources at once (e.g. WebVid clips and CC3M images as one-frame clips),
each batch from one source, the source drawn by weight.

Batch-level rather than sample-level mixing: a batch of images (one valid frame each) and a batch of videos
cost and behave differently, and keeping them apart keeps each batch's shapes and statistics uniform (the
contrastive negatives of an image come from images). The draws are seeded by (seed, epoch), so a mix is
reproducible and resumable.

* Annotation files: `MixedDataset` concatenates the sources' map-style datasets and `MixSampler` orders an
  epoch: for each global step a source is drawn by weight and `batch_size x world_size` of its items are taken
  from its own seeded permutation (started anew when fewer than that are left, so a small source with a large
  weight repeats within an epoch and a large one with a small weight is subsampled); rank r takes the r-th slice, so every
  rank's batch of a step comes from the same source. An epoch has as many items as all sources together. Being a
  `ResumableDistributedSampler`, it resumes exactly.
* Shards: `MixedShards` draws the source per batch-sized block of each loader worker's stream (a generator
  seeded by (seed, epoch, rank, worker role)) and takes the block from that source's own webdataset pipeline;
  a worker's epoch ends when one of its sources runs out. Resuming replays the draws of the blocks already
  delivered and skips them in each source before decoding: exact until the first worker runs out.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from structvl.data.sampler import ResumableDistributedSampler
from structvl.data.shards import ShardedVideoTextDataset, stable_hash


class MixedDataset(Dataset):
    """The items of several map-style datasets, source after source; each item says its source ("source")."""

    def __init__(self, datasets: Sequence[Dataset], names: Sequence[str]):
        self.datasets, self.names = list(datasets), list(names)
        self.offsets = np.cumsum([0] + [len(d) for d in self.datasets]).tolist()

    def __len__(self) -> int:
        return self.offsets[-1]

    def source_of(self, index: int) -> int:
        return int(np.searchsorted(self.offsets, index, side="right") - 1)

    def __getitem__(self, index: int) -> dict:
        source = self.source_of(index)
        item = self.datasets[source][index - self.offsets[source]]
        return {**item, "index": index, "source": self.names[source]}

    def set_epoch(self, epoch: int) -> None:
        for dataset in self.datasets:
            dataset.set_epoch(epoch)

    def sampler(self, weights: Sequence[float], batch_size: int, num_replicas: int = 1, rank: int = 0,
                seed: int = 0) -> MixSampler:
        return MixSampler([len(d) for d in self.datasets], weights, batch_size, num_replicas, rank, seed)


class MixSampler(ResumableDistributedSampler):
    """Indices into a `MixedDataset` whose every global batch comes from one source (module docstring)."""

    def __init__(self, sizes: Sequence[int], weights: Sequence[float], batch_size: int, num_replicas: int = 1,
                 rank: int = 0, seed: int = 0):
        if len(sizes) != len(weights) or not all(w > 0 for w in weights) or min(sizes, default=0) < 1:
            raise ValueError(f"need one weight > 0 per non-empty source, got sizes {list(sizes)}, weights {list(weights)}")
        super().__init__(sum(sizes), num_replicas, rank, shuffle=True, seed=seed, drop_last=True)
        self.sizes, self.batch_size = list(sizes), batch_size
        self.probabilities = np.asarray(weights, dtype=np.float64) / sum(weights)
        self.offsets = np.cumsum([0] + self.sizes).tolist()
        self.steps = self.num_items // (batch_size * num_replicas)
        self.per_rank = self.steps * batch_size

    def sources(self, epoch: int) -> list[int]:
        """The source of each global step of `epoch`."""
        rng = np.random.default_rng([self.seed, epoch, 1])
        return rng.choice(len(self.sizes), size=self.steps, p=self.probabilities).tolist()

    def indices(self) -> list[int]:
        rng = np.random.default_rng([self.seed, self.epoch, 2])
        streams: list[list[int]] = [[] for _ in self.sizes]
        block = self.batch_size * self.num_replicas
        out: list[int] = []
        for source in self.sources(self.epoch):
            stream = streams[source]
            if len(stream) < block:  # used up: a new permutation (the few left over are dropped, so that no
                stream = []          # batch holds an item twice), several for a source smaller than a batch
                while len(stream) < block:
                    stream.extend((rng.permutation(self.sizes[source]) + self.offsets[source]).tolist())
            taken, streams[source] = stream[:block], stream[block:]
            out.extend(taken[self.rank * self.batch_size:(self.rank + 1) * self.batch_size])
        return out


class MixedShards(IterableDataset):
    """Blocks of `batch_size` items from one of several sharded datasets at a time (module docstring)."""

    def __init__(self, sources: Sequence[ShardedVideoTextDataset], weights: Sequence[float], names: Sequence[str],
                 batch_size: int, seed: int = 0):
        self.sources, self.names, self.batch_size, self.seed = list(sources), list(names), batch_size, seed
        self.weights = [float(w) for w in weights]
        self.rank = self.sources[0].rank
        # (epoch, resume epoch, batches consumed in it), in shared memory: persistent workers hold their own copy
        self._state = torch.tensor([0, -1, 0], dtype=torch.long).share_memory_()

    @property
    def epoch(self) -> int:
        return int(self._state[0])

    def set_epoch(self, epoch: int) -> None:
        self._state[0] = epoch
        for source in self.sources:
            source.set_epoch(epoch)

    def set_position(self, epoch: int, samples_seen: int, batch_size: int | None = None, drop_last: bool = True) -> None:
        self.set_epoch(epoch)
        self._state[1], self._state[2] = epoch, samples_seen // self.batch_size

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        worker_id, num_workers = (0, 1) if info is None else (info.id, info.num_workers)
        epoch, resume_epoch, consumed = (int(v) for v in self._state)
        delivered = consumed if resume_epoch == epoch else 0  # batches this rank consumed
        first = delivered % num_workers  # the role whose turn came next, for loader worker 0
        role = (worker_id + first) % num_workers
        blocks_done = delivered // num_workers + (1 if role < first else 0)
        rng = random.Random(stable_hash(f"mix:{self.seed}:{epoch}:{self.rank}:{role}"))
        per_source = [0] * len(self.sources)
        for _ in range(blocks_done):  # replay the draws of the blocks already delivered
            per_source[rng.choices(range(len(self.sources)), weights=self.weights)[0]] += 1
        streams = [source.pipeline(epoch, role, num_workers, skip=n * self.batch_size)
                   for source, n in zip(self.sources, per_source)]
        while True:
            source = rng.choices(range(len(self.sources)), weights=self.weights)[0]
            block = list(itertools.islice(streams[source], self.batch_size))
            if len(block) < self.batch_size:  # a source ran out: this worker's epoch ends
                return
            for item in block:
                yield {**item, "source": self.names[source]}
