"""Where must a knowledge head read for its labels to teach the demo's video encoder the corpus's actions?

    python -m structvl.lab.diagnostics.skp_head_probe CORPUS [--head shared|pooled] [--labels parsed|oracle] [--steps 200]
                                            [KEY=VALUE ...]

Trains the demo's video encoder from a random init with one multi-label BCE on the pre-training clips
(train.jsonl; 8 frames, the evaluation's centre view, decoded once and kept in memory; AdamW at 5e-4, batch 32,
seed 0, fp32) and prints the test mAP over the action labels every 50 steps, then each label's AP.

--head shared: SKP's own path (objectives/clop.py) - the projection into the shared L2-normalised space, then
    SKP's action head, reading the embedding as `clop.skp_input_norm` says (override it to compare: `batch`,
    the default, or `none`, the behaviour before stop 15);
--head pooled: a linear head on the video encoder's pooled token (what structvl.lab.diagnostics.learnability trains).
--labels parsed: each clip's action labels as SKP gets them (the knowledge vocabulary's actions of the cached
    spaCy parse, the union over the clip's captions); oracle: the generator's action of each object.
Same encoder, clips, steps and labels for every variant, so a difference is the head's. About 3 minutes a run
on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from structvl.config import load_config
from structvl.data.formats import read_annotations
from structvl.data.knowledge.cache import KnowledgeCache, knowledge_for
from structvl.engine.pretrain import build_objective_context
from structvl.models.text_encoder import build_tokenizer
from structvl.models.video_text import build_model
from structvl.objectives.clop import KnowledgePredictionObjective
from structvl.tasks.features import ClipViews, collate_views
from structvl.tasks.knowledge_prediction import average_precision


def decode(corpus: Path, split: str, num_frames: int, size: int):
    records = read_annotations("jsonl", corpus / split)
    views = ClipViews(records, corpus, num_frames=num_frames, image_size=size)
    return records, collate_views([views[i] for i in range(len(views))])["views"][:, 0]  # (N, T, 3, S, S)


def action_targets(records, labels: str, vocab, classes: list[str], cache) -> torch.Tensor:
    if labels == "oracle":
        y = torch.zeros(len(records), len(classes))
        for i, record in enumerate(records):
            for obj in record.meta["objects"]:
                y[i, classes.index(obj["action"])] = 1
        return y
    return torch.stack([vocab.encode_batch(knowledge_for(list(r.captions), cache))["action"].amax(0)
                        for r in records])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("corpus", type=Path)
    ap.add_argument("--head", choices=("shared", "pooled"), default="shared")
    ap.add_argument("--labels", choices=("parsed", "oracle"), default="parsed")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("overrides", nargs="*", help="config overrides, e.g. clop.skp_input_norm=none")
    args = ap.parse_intermixed_args()
    cfg = load_config("clop", [f"data.root={args.corpus}", "data.synth=false", "objectives.clop_kcl=0",
                               "objectives.contrastive=0", "objectives.clop_skp=1", "clop.skp_types=[action]",
                               "clop.skp_reduction=sum", *args.overrides])
    began = time.perf_counter()
    train_records, train_x = decode(args.corpus, cfg.data.train, cfg.data.num_frames, cfg.model.video.image_size)
    test_records, test_x = decode(args.corpus, "test.jsonl", cfg.data.num_frames, cfg.model.video.image_size)
    with tempfile.TemporaryDirectory() as run_dir:  # the vocabulary is written there and thrown away
        context = build_objective_context(cfg, build_tokenizer(cfg.model.text), Path(run_dir),
                                          is_main=True)
    classes = sorted({obj["action"] for r in train_records for obj in r.meta.get("objects", [])})
    with KnowledgeCache(Path(cfg.knowledge.cache_dir or args.corpus / "knowledge_cache")) as cache:
        train_y, test_y = (action_targets(r, args.labels, context.vocab, classes, cache)
                           for r in (train_records, test_records))
    names = classes if args.labels == "oracle" else context.vocab.labels("action")

    torch.manual_seed(0)
    model = build_model(cfg.model)
    if args.head == "shared":
        skp = KnowledgePredictionObjective(cfg, model, context)
        if train_y.shape[1] != context.vocab.size("action"):  # oracle labels: a head of their own width
            skp.heads["action"][-1] = nn.Linear(cfg.clop.skp_hidden, train_y.shape[1])
        modules = [model.video_encoder, model.video_proj, skp]

        def scores_and_loss(x, y=None):
            embed = model.encode_video(x).embed
            return skp.predict(embed)["action"], None if y is None else skp.bce(embed, {"action": y})
    else:
        head = nn.Linear(model.video_encoder.width, train_y.shape[1])
        modules = [model.video_encoder, head]

        def scores_and_loss(x, y=None):
            logits = head(model.video_encoder(x).pooled)
            loss = None if y is None else F.binary_cross_entropy_with_logits(logits, y, reduction="none").sum(1).mean()
            return logits, loss
    last = skp.heads["action"][-1] if args.head == "shared" else head
    prior = train_y.mean(0).clamp(1e-3, 1 - 1e-3)
    with torch.no_grad():
        last.bias.copy_(torch.log(prior / (1 - prior)))  # both heads start at the label prior
    params = [p for m in modules for p in m.parameters()]
    optimizer = torch.optim.AdamW(params, lr=5e-4, weight_decay=0.05)
    print(f"{len(train_x)} training / {len(test_x)} test clips, {train_y.shape[1]} {args.labels} action labels; "
          f"head {args.head}, skp_input_norm={cfg.clop.skp_input_norm}", flush=True)
    generator = torch.Generator().manual_seed(0)
    for step in range(1, args.steps + 1):
        index = torch.randint(0, len(train_x), (32,), generator=generator)
        for m in modules:
            m.train()
        _, loss = scores_and_loss(train_x[index], train_y[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        if step % 50 == 0 or step == args.steps:
            for m in modules:
                m.eval()
            with torch.no_grad():
                scores = torch.cat([scores_and_loss(x)[0] for x in test_x.split(64)])
            present = test_y.sum(0) > 0
            ap, chance = average_precision(scores[:, present], test_y[:, present])
            print(f"step {step:4d}  train BCE {loss.item():6.2f}  test mAP {100 * np.mean(ap):5.1f} "
                  f"(chance {100 * np.mean(chance):.1f})  {time.perf_counter() - began:.0f} s", flush=True)
    kept = [n for n, p in zip(names, present.tolist()) if p]
    per_label = (f"{n} {100 * a:.0f}/{100 * c:.0f}" for n, a, c in zip(kept, ap, chance))
    print("per label (AP / chance):", "  ".join(per_label))


if __name__ == "__main__":
    main()
