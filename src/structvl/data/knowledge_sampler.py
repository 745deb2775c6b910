"""CLOP's knowledge-guided sampling: batches in which clips that share knowledge meet as each other's negatives.

Two forms, one rule (an anchor clip, then the `group_size - 1` clips of highest knowledge overlap among `pool`
random candidates, laid next to each other so that they share a batch):

* `KnowledgeGroupedSampler`, for a map-style dataset: the candidates are drawn from the whole epoch.
* `KnowledgeGrouping`, for webdataset shards: the candidates are drawn from the shuffle buffer, as a stage of
  the shard pipeline before decoding (structvl.data.shards). Grouping in the buffer rather than pre-grouping at
  `data shard` time, because pre-grouped shards would fix each clip's group for ever (the same negatives every
  epoch), would tie the shards to one vocabulary and one `clop.kcl_types` (another config would mean writing
  the shards again, and shards written by other tools could never be grouped), and the shard shuffle, the
  worker split and the shuffle buffer would scatter the groups again unless all three were off. The buffer
  holds only `data.shuffle_buffer` clips, so its groups overlap less than the map-style sampler's, drawn from
  the corpus; a buffer smaller than the `pool` of candidates is refused at start-up (config.validate).
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import numpy as np
import torch

from structvl.data.knowledge.lookup import KnowledgeLookup
from structvl.data.knowledge.record import CaptionKnowledge
from structvl.data.knowledge.vocab import KnowledgeVocab, multi_hot
from structvl.data.sampler import ResumableDistributedSampler

POOL = 64  # random candidates compared with each anchor


class KnowledgeGroupedSampler(ResumableDistributedSampler):
    """Epochs in which clips that share knowledge meet in the same global batch, as each other's negatives.

    Each epoch: a seeded permutation; walking it, every not-yet-used clip anchors a group, filled with the
    `group_size - 1` unused clips of highest knowledge overlap among `pool` random unused candidates.
    Groups are laid end to end; rank r takes every world-th index (as DistributedSampler), so a group's
    clips are spread over the ranks of the same step: with negatives gathered from all ranks they still
    meet. Every clip is used once per epoch; `set_position` resumes mid-epoch like the parent class.
    """

    def __init__(self, item_labels: np.ndarray, num_replicas: int = 1, rank: int = 0, seed: int = 0,
                 group_size: int = 4, pool: int = POOL):
        super().__init__(len(item_labels), num_replicas, rank, shuffle=True, seed=seed, drop_last=True)
        self.labels = item_labels.astype(np.uint8)  # 0/1, a quarter of float32's memory; cast where multiplied
        self.group_size, self.pool = group_size, pool

    def indices(self) -> list[int]:
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(self.num_items)
        used = np.zeros(self.num_items, dtype=bool)
        sizes = self.labels.sum(1, dtype=np.float32)
        grouped: list[int] = []
        for anchor in order:
            if used[anchor]:
                continue
            used[anchor] = True
            grouped.append(int(anchor))
            free = np.flatnonzero(~used)
            if len(free) == 0:
                break
            candidates = rng.choice(free, size=min(self.pool, len(free)), replace=False)
            inter = self.labels[candidates].astype(np.float32) @ self.labels[anchor].astype(np.float32)
            overlap = inter / np.maximum(sizes[candidates] + sizes[anchor] - inter, 1.0)
            chosen = candidates[np.argsort(-overlap, kind="stable")[: self.group_size - 1]]
            used[chosen] = True
            grouped.extend(int(i) for i in chosen)
        total = self.per_rank * self.num_replicas
        return grouped[:total][self.rank:total:self.num_replicas]


def build_knowledge_sampler(dataset, knowledge: KnowledgeLookup, vocab: KnowledgeVocab, types: list[str],
                            world_size: int, rank: int, seed: int = 0, group_size: int = 4,
                            chunk: int = 4096) -> KnowledgeGroupedSampler:
    """The sampler for a map-style VideoTextDataset: a clip's labels are the union over its captions' knowledge
    (read from the cache through `knowledge`, `chunk` records at a time) of the `types` in `vocab`."""
    width = sum(vocab.size(t) for t in types)
    rows = []
    for start in range(0, len(dataset.items), chunk):
        per_item = [dataset.records[record_index].captions for record_index, _ in dataset.items[start:start + chunk]]
        flat, _ = knowledge.knowledge([c for captions in per_item for c in captions])
        position = 0
        for captions in per_item:
            knowledges = flat[position:position + len(captions)]
            position += len(captions)
            rows.append(multi_hot(knowledges, vocab, types).amax(0) if knowledges else torch.zeros(width))
    return KnowledgeGroupedSampler(torch.stack(rows).numpy(), world_size, rank, seed=seed, group_size=group_size)


class KnowledgeGrouping:
    """KCL's grouping for a streaming dataset: a pipeline stage over undecoded items that reorders them so that
    clips sharing knowledge follow each other (and so share a batch), within a buffer of `buffer` items.

    Each item must carry its "caption"; the stage attaches "knowledge" (from the cache through `knowledge`,
    parsed when missing: "knowledge_parsed" counts it), which the collator then uses as is. The buffer replaces
    the shuffle buffer: anchors are drawn at random, so the stream is shuffled too. Items without a caption
    (skip markers) pass straight through.
    """

    def __init__(self, knowledge: KnowledgeLookup, vocab: KnowledgeVocab, types: list[str], group_size: int = 4,
                 buffer: int = 1000, pool: int = POOL):
        if group_size < 1 or buffer < 1:
            raise ValueError(f"need group_size >= 1 and buffer >= 1, got {group_size} and {buffer}")
        self.knowledge, self.group_size, self.buffer, self.pool = knowledge, group_size, buffer, pool
        self.vocab_labels = {(kind, label) for kind in types for label in vocab.labels(kind)}

    def labels(self, knowledge: CaptionKnowledge) -> frozenset[tuple[str, str]]:
        """The caption's in-vocabulary (type, label)s of the grouping's types: what its overlap is measured on."""
        return frozenset(key for kind, labels in knowledge.labels().items() for label in labels
                         if (key := (kind, label)) in self.vocab_labels)

    def __call__(self, items: Iterator[dict], rng: random.Random) -> Iterator[dict]:
        buffer: list[tuple[dict, frozenset]] = []
        for item in items:
            if item.get("caption") is None:
                yield item
                continue
            if item.get("knowledge") is None:
                (knowledge,), parsed = self.knowledge.knowledge([item["caption"]])
                item = {**item, "knowledge": knowledge, "knowledge_parsed": parsed}
            buffer.append((item, self.labels(item["knowledge"])))
            if len(buffer) >= self.buffer:
                yield from self._group(buffer, rng)
        while buffer:
            yield from self._group(buffer, rng)

    def _group(self, buffer: list[tuple[dict, frozenset]], rng: random.Random) -> Iterator[dict]:
        """Take an anchor and its group out of the buffer and yield them."""
        anchor, labels = buffer.pop(rng.randrange(len(buffer)))
        candidates = rng.sample(range(len(buffer)), min(self.pool, len(buffer)))
        overlap = [len(labels & buffer[c][1]) / max(1, len(labels | buffer[c][1])) for c in candidates]
        ranked = sorted(range(len(candidates)), key=lambda i: -overlap[i])[:self.group_size - 1]  # stable
        chosen = sorted((candidates[i] for i in ranked), reverse=True)
        group = [anchor] + [buffer.pop(c)[0] for c in chosen]
        yield from group
