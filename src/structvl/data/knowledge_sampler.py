"""CLOP's knowledge-guided sampling: batches in which clips that share knowledge meet as each other's negatives."""

from __future__ import annotations

import numpy as np
import torch

from structvl.data.knowledge.vocab import KnowledgeVocab, multi_hot
from structvl.data.sampler import ResumableDistributedSampler


class KnowledgeGroupedSampler(ResumableDistributedSampler):
    """Epochs in which clips that share knowledge meet in the same global batch, as each other's negatives.

    Each epoch: a seeded permutation; walking it, every not-yet-used clip anchors a group, filled with the
    `group_size - 1` unused clips of highest knowledge overlap among `pool` random unused candidates.
    Groups are laid end to end; rank r takes every world-th index (as DistributedSampler), so a group's
    clips are spread over the ranks of the same step: with negatives gathered from all ranks they still
    meet. Every clip is used once per epoch; `set_position` resumes mid-epoch like the parent class.
    """

    def __init__(self, item_labels: np.ndarray, num_replicas: int = 1, rank: int = 0, seed: int = 0,
                 group_size: int = 4, pool: int = 64):
        super().__init__(len(item_labels), num_replicas, rank, shuffle=True, seed=seed, drop_last=True)
        self.labels = item_labels.astype(np.float32)
        self.group_size, self.pool = group_size, pool

    def indices(self) -> list[int]:
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(self.num_items)
        used = np.zeros(self.num_items, dtype=bool)
        sizes = self.labels.sum(1)
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
            inter = self.labels[candidates] @ self.labels[anchor]
            overlap = inter / np.maximum(sizes[candidates] + sizes[anchor] - inter, 1.0)
            chosen = candidates[np.argsort(-overlap, kind="stable")[: self.group_size - 1]]
            used[chosen] = True
            grouped.extend(int(i) for i in chosen)
        total = self.per_rank * self.num_replicas
        return grouped[:total][self.rank:total:self.num_replicas]


def build_knowledge_sampler(dataset, knowledge: dict, vocab: KnowledgeVocab, types: list[str], world_size: int,
                            rank: int, seed: int = 0, group_size: int = 4) -> KnowledgeGroupedSampler:
    """The sampler for a map-style VideoTextDataset: a clip's labels are the union over its captions' knowledge
    (`knowledge`: caption -> CaptionKnowledge) of the `types` in `vocab`."""
    rows = []
    for record_index, _ in dataset.items:
        captions = dataset.records[record_index].captions
        knowledges = [knowledge[c] for c in captions if c in knowledge]
        rows.append(multi_hot(knowledges, vocab, types).amax(0) if knowledges else
                    torch.zeros(sum(vocab.size(t) for t in types)))
    return KnowledgeGroupedSampler(torch.stack(rows).numpy(), world_size, rank, seed=seed, group_size=group_size)
