"""A DistributedSampler that can start mid-epoch, so `--resume` continues from the exact data position."""

from __future__ import annotations

import torch
from torch.utils.data import Sampler


class ResumableDistributedSampler(Sampler[int]):
    """Seeded per-epoch permutation, split across ranks like DistributedSampler (rank r takes every
    world-th index), with `set_position(epoch, samples_seen)` to skip what this rank already consumed.
    The permutation depends only on (seed, epoch), so it is the same on every rank and after a resume.
    """

    def __init__(self, num_items: int, num_replicas: int = 1, rank: int = 0, shuffle: bool = True,
                 seed: int = 0, drop_last: bool = True):
        if num_items < num_replicas:
            raise ValueError(f"dataset has {num_items} items, fewer than the {num_replicas} ranks")
        self.num_items, self.num_replicas, self.rank = num_items, num_replicas, rank
        self.shuffle, self.seed, self.drop_last = shuffle, seed, drop_last
        self.epoch = 0
        self.start = 0
        per_rank = num_items // num_replicas if drop_last else -(-num_items // num_replicas)
        self.per_rank = per_rank

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self.start = epoch, 0

    def set_position(self, epoch: int, samples_seen: int) -> None:
        self.epoch, self.start = epoch, samples_seen

    def indices(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.num_items, generator=g).tolist()
        else:
            order = list(range(self.num_items))
        total = self.per_rank * self.num_replicas
        order = order[:total] if self.drop_last else (order + order[: total - len(order)])
        return order[self.rank:total:self.num_replicas]

    def __iter__(self):
        return iter(self.indices()[self.start:])

    def __len__(self) -> int:
        return self.per_rank - self.start
