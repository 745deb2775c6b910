"""Can S-ViLM's temporal grouping be learned at all from one fixed batch? Prints, every few steps, the loss
and the accuracy of the per-time-step features on a fixed cut of that batch.

    python -m structvl.lab.diagnostics.temporal_one_batch CORPUS [--steps 100] [KEY=VALUE ...]

Temporal grouping alone (objectives.svilm_temporal=1, no contrastive or grounding term) on the first 32
training clips, the same clips every step (a new cut each step), plain AdamW at optim.lr, fp32. Compare
`svilm.paste_source=batch` (another clip is pasted in: its objects and background differ) with
`=reversed_steps` (the clip's own steps played backwards: only the direction of motion differs).

The training log's `svilm_temporal/accuracy` flatters a loss near log 2: each step counts in its own part's
centroid, so a one-step part is matched by itself. The accuracy printed here classifies each step against
the centroids of the *other* steps of each part (leave one out; parts of one step are not scored), on one
fixed cut, so 50% is chance. About two minutes per run on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch
import torch.nn.functional as F

from structvl.config import load_config
from structvl.engine.optim import build_optimizer
from structvl.engine.pretrain import build_train_data
from structvl.models.text_encoder import build_tokenizer
from structvl.models.video_text import build_model
from structvl.objectives.pretraining import PretrainingModule
from structvl.objectives.svilm import cut_and_paste, reverse_steps


def leave_one_out_accuracy(features: torch.Tensor, is_a: torch.Tensor) -> float:
    """Share of steps closer to the mean of the other steps of their own part than to the other part's mean."""
    f = F.normalize(features.float(), dim=-1)
    hits, scored = 0, 0
    for clip, part in zip(f, is_a):
        for k in range(len(clip)):
            own = part.clone()
            own[k] = False
            own &= part == part[k]
            other = part != part[k]
            if not own.any() or not other.any():
                continue
            scored += 1
            hits += int(clip[k] @ F.normalize(clip[own].mean(0), dim=0) > clip[k] @ F.normalize(clip[other].mean(0), dim=0))
    return 100.0 * hits / max(scored, 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("corpus", type=Path)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--every", type=int, default=20)
    ap.add_argument("overrides", nargs="*", help="config overrides, e.g. svilm.paste_source=reversed_steps")
    args = ap.parse_intermixed_args()
    torch.manual_seed(0)
    cfg = load_config("svilm", [f"data.root={args.corpus}", "data.synth=false", "objectives.contrastive=0",
                                "objectives.svilm_grounding=0", "objectives.svilm_temporal=1",
                                "train.precision=fp32", *args.overrides])
    tokenizer = build_tokenizer(cfg.model.text)
    dataset, collator = build_train_data(cfg, tokenizer)
    batch = collator([dataset[i] for i in range(32)])
    module = PretrainingModule(build_model(cfg.model), cfg)
    optimizer = build_optimizer(module, cfg.optim)
    paste = cut_and_paste if cfg.svilm.paste_source == "batch" else reverse_steps
    fixed = paste(batch["video"], module.model.video_encoder.time, frame_mask=batch.get("frame_mask"),
                  generator=torch.Generator().manual_seed(1))
    print(f"paste_source={cfg.svilm.paste_source} lr={cfg.optim.lr} (log 2 = {math.log(2):.3f})")
    for step in range(args.steps + 1):
        loss, logs = module(batch)
        if step % args.every == 0:
            with torch.no_grad():
                features = module.model.video_encoder(fixed.video, fixed.frame_mask).per_time_features()
            print(f"step {step:4d}  loss {logs['svilm_temporal/loss']:.3f}  "
                  f"leave-one-out accuracy {leave_one_out_accuracy(features, fixed.is_a):5.1f}", flush=True)
        if step < args.steps:
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()


if __name__ == "__main__":
    main()
