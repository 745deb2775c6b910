"""Can CLOP's knowledge prediction (SKP) fit the labels of one fixed batch? It prints, every few steps, each
knowledge type's BCE (summed over its labels) and the mean cosine between the batch's video embeddings.

    python -m structvl.lab.diagnostics.skp_one_batch CORPUS [--steps 80] [KEY=VALUE ...]

SKP alone (objectives.clop_skp=1, no contrastive term) on the first 32 training clips, the same batch every
step, plain AdamW at optim.lr, fp32. A model that learns anything from the labels fits 32 clips; one whose
BCE stops at the label prior while the cosine goes to 1 has collapsed every clip onto one embedding. Compare
`clop.skp_prior_init=true` (the default) with `=false` (zero-mean output biases, the behaviour before stop 14).
About a minute per run on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

from structvl.config import load_config
from structvl.engine.optim import build_optimizer
from structvl.engine.pretrain import build_objective_context, build_train_data
from structvl.models.text_encoder import build_tokenizer
from structvl.models.video_text import build_model
from structvl.objectives.pretraining import PretrainingModule


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("corpus", type=Path)
    ap.add_argument("--steps", type=int, default=80)
    ap.add_argument("--every", type=int, default=20)
    ap.add_argument("overrides", nargs="*", help="config overrides, e.g. clop.skp_prior_init=false")
    args = ap.parse_intermixed_args()
    torch.manual_seed(0)
    cfg = load_config("clop", [f"data.root={args.corpus}", "data.synth=false", "objectives.clop_kcl=0",
                               "objectives.contrastive=0", "objectives.clop_skp=1", "train.precision=fp32",
                               *args.overrides])
    tokenizer = build_tokenizer(cfg.model.text)
    with tempfile.TemporaryDirectory() as run_dir:  # the vocabulary is written there and thrown away
        context = build_objective_context(cfg, tokenizer, Path(run_dir), is_main=True)
    dataset, collator = build_train_data(cfg, tokenizer, knowledge=context.knowledge)
    batch = collator([dataset[i] for i in range(32)])
    module = PretrainingModule(build_model(cfg.model), cfg, context)
    skp = module.objectives["clop_skp"]
    targets = skp.vocab.encode_batch(batch["knowledge"])
    optimizer = build_optimizer(module, cfg.optim)
    print(f"skp_prior_init={cfg.clop.skp_prior_init} skp_reduction={cfg.clop.skp_reduction} lr={cfg.optim.lr}")
    for step in range(args.steps + 1):
        if step % args.every == 0:
            with torch.no_grad():
                embed = module.model.encode_video(batch["video"]).embed
                logits = skp.predict(embed)
                bce = {k: float(F.binary_cross_entropy_with_logits(logits[k], targets[k], reduction="none")
                                .sum(1).mean()) for k in skp.types}
                cosine = float((embed @ embed.t()).fill_diagonal_(0).sum() / (len(embed) * (len(embed) - 1)))
            print(f"step {step:4d}  " + "  ".join(f"{k} {v:6.2f}" for k, v in bce.items())
                  + f"  mean cosine {cosine:.3f}", flush=True)
        if step < args.steps:
            loss, _ = module(batch)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()


if __name__ == "__main__":
    main()
