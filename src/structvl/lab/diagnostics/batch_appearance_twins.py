"""How often a training batch forces the contrastive loss to look at motion, per batch sampler.

    python -m structvl.lab.diagnostics.batch_appearance_twins CORPUS [--batch-size 32]

A clip of the structured corpus shows one to three objects, each with a shape, colour and size (its
appearance) and an action. When no other clip of the batch has the same appearance multiset, the caption's
nouns and adjectives alone single the clip out and the InfoNCE never needs its motion. For one epoch of
batches, prints the share of clips whose appearance is unique in their batch, the share with an appearance
twin (only motion tells them apart), the share that meet at least one identical object, and the share with a
shape twin: another clip whose objects have the same colours and sizes but other shapes, which only shape tells
apart (also for the retrieval test gallery, scored as one batch). Samplers: a random
permutation, and CLOP's knowledge-grouped sampler (`clop.kcl_batch_sampler`) grouping on all knowledge types
or on objects and attributes only, with several group sizes and candidate pools - what a sampler change
could buy before training with it.
"""

from __future__ import annotations

import argparse
import collections
import tempfile
from pathlib import Path

import numpy as np
import torch

from structvl.config import load_config
from structvl.data.formats import read_annotations
from structvl.data.knowledge.vocab import multi_hot
from structvl.data.knowledge_sampler import KnowledgeGroupedSampler
from structvl.data.sampler import ResumableDistributedSampler
from structvl.engine.pretrain import build_objective_context, build_train_data
from structvl.models.text_encoder import build_tokenizer

VARIANTS = [  # (knowledge types the sampler groups on, clips per group, candidate pool)
    (["object", "attribute", "action", "relation"], 4, 64),  # clop.yaml's sampler
    (["object", "attribute", "action", "relation"], 8, 512),
    (["object", "attribute"], 4, 64),
    (["object", "attribute"], 8, 512),
    (["object", "attribute"], 32, 2048),
]


def appearance_of(record) -> tuple:
    """A clip's appearance: the sorted multiset of its objects' (shape, colour, size)."""
    return tuple(sorted((o["shape"], o["colour"], o["size"]) for o in record.meta["objects"]))


def batch_shares(order: list[int], appearance: list[tuple], batch_size: int) -> tuple[float, ...]:
    """Shares (%) of clips whose appearance is unique in their batch, that have an appearance twin, that meet an
    identical object, and that have a shape twin (same colours and sizes, other shapes)."""
    unique, shares_object, shape_twin = [], [], []
    for start in range(0, len(order) - batch_size + 1, batch_size):
        batch = [appearance[i] for i in order[start:start + batch_size]]
        counts = collections.Counter(batch)
        unique += [counts[a] == 1 for a in batch]
        objects = [set(a) for a in batch]
        shares_object += [any(objects[i] & objects[j] for j in range(len(batch)) if j != i)
                          for i in range(len(batch))]
        without_shape = [sorted((colour, size) for _, colour, size in a) for a in batch]
        shape_twin += [any(without_shape[j] == without_shape[i] and batch[j] != batch[i] for j in range(len(batch)))
                       for i in range(len(batch))]
    return (100 * np.mean(unique), 100 * (1 - np.mean(unique)), 100 * np.mean(shares_object),
            100 * np.mean(shape_twin))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("corpus")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()

    cfg = load_config("clop", [f"data.root={args.corpus}"])
    tokenizer = build_tokenizer(cfg.model.text)
    context = build_objective_context(cfg, tokenizer, Path(tempfile.mkdtemp()), is_main=True)
    dataset, _ = build_train_data(cfg, tokenizer, knowledge=context.knowledge)
    records = [dataset.records[record_index] for record_index, _ in dataset.items]
    appearance = [appearance_of(r) for r in records]
    print(f"{len(records)} training clips, {len(set(appearance))} distinct appearance multisets")
    print(f"{'sampler':58s} unique  twin  meets-an-identical-object  shape-twin")

    def report(name: str, order: list[int], clips: list[tuple] = appearance, batch_size: int = args.batch_size):
        print(f"{name:58s} {'  '.join(f'{x:5.1f}' for x in batch_shares(order, clips, batch_size))}")

    report("random", ResumableDistributedSampler(len(records), seed=0).indices())
    gallery = [appearance_of(r) for r in read_annotations("jsonl", Path(args.corpus) / "eval/retrieval_test.jsonl")]
    report(f"retrieval test gallery, one batch of {len(gallery)}", list(range(len(gallery))), gallery, len(gallery))
    knowledge = [context.knowledge.knowledge(r.captions)[0] for r in records]
    labels = {types: torch.stack([multi_hot(k, context.vocab, list(types)).amax(0) for k in knowledge]).numpy()
              for types in {tuple(types) for types, _, _ in VARIANTS}}  # once per set of types
    for types, group_size, pool in VARIANTS:
        sampler = KnowledgeGroupedSampler(labels[tuple(types)], seed=0, group_size=group_size, pool=pool)
        report(f"knowledge-grouped on {'+'.join(types)}, {group_size}/{pool}", sampler.indices())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
