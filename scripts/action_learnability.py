"""How many supervised steps the demo's video encoder needs to tell the corpus's actions apart.

    python scripts/action_learnability.py CORPUS [RUN ...] [--steps 200] [--lr 5e-4] [--every 50]

Trains the video encoder + a linear head with cross-entropy on the action-recognition split
(configs/finetune/structured.yaml, `recognition`: single-action clips, ten classes) and prints the test top-1
every `--every` steps: once from a random initialisation of the demo model (configs/demo.yaml), then from each
RUN's pre-trained video encoder. It answers two questions the ablation table cannot:
- is an action-blind representation the encoder's limit or the pre-training signal's? (from scratch, with the
  labels, the same encoder learns the actions: then the captions' objectives are what does not teach them);
- does a pre-training recipe make actions easier to learn? (a run whose curve rises sooner holds more of them).

Clips are decoded once (8 frames, one centre view, the evaluation's preprocessing) and kept in memory; no
augmentation, seed 0 for the head and the batch order, bf16 autocast. About 70 s per curve on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from structvl.config import load_config
from structvl.data.formats import read_class_list
from structvl.models.video_encoder import VideoEncoder
from structvl.tasks.evaluate import load_run_model
from structvl.tasks.features import ClipViews, collate_views
from structvl.tasks.recognition import labelled
from structvl.tasks.task_config import load_task_config, read_task_records, video_root

TASK_CONFIG = "finetune/structured"


def decode_split(task, corpus: Path, split: str, classes: list[str], num_frames: int, size: int):
    records, labels = labelled(read_task_records(task.data, corpus, split), classes)
    views = ClipViews(records, video_root(task.data, corpus), num_frames=num_frames, image_size=size)
    batch = collate_views([views[i] for i in range(len(views))])
    return batch["views"][:, 0], labels[batch["index"]]  # (N, T, 3, S, S), (N,)


def learning_curve(encoder: VideoEncoder, train, test, num_classes: int, *, steps: int, lr: float, every: int,
                   batch_size: int = 32) -> list[tuple[int, float]]:
    """Supervised training from `encoder`'s weights; (step, test top-1 %) every `every` steps."""
    torch.manual_seed(0)
    head = nn.Linear(encoder.width, num_classes)
    params = list(encoder.parameters()) + list(head.parameters())
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.05)
    (train_x, train_y), (test_x, test_y) = train, test
    curve = []
    for step in range(1, steps + 1):
        idx = torch.randint(0, len(train_x), (batch_size,))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = head(encoder(train_x[idx]).pooled)
        loss = F.cross_entropy(logits.float(), train_y[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        if step % every == 0 or step == steps:
            encoder.eval()
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
                predicted = torch.cat([head(encoder(x).pooled).argmax(1) for x in test_x.split(64)])
            encoder.train()
            curve.append((step, 100.0 * float((predicted == test_y).float().mean())))
    return curve


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("corpus", type=Path)
    parser.add_argument("runs", nargs="*", type=Path, help="pre-training run directories to start from")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--every", type=int, default=50)
    args = parser.parse_args(argv)

    task = load_task_config(TASK_CONFIG).recognition
    classes = read_class_list(args.corpus / task.classes)
    demo = load_config("demo")
    frames, size = demo.model.video.num_frames, demo.model.video.image_size
    train = decode_split(task, args.corpus, "train", classes, frames, size)
    test = decode_split(task, args.corpus, "test", classes, frames, size)
    print(f"{len(train[0])} training / {len(test[0])} test clips, {len(classes)} classes "
          f"(chance {100 / len(classes):.1f}%); {args.steps} steps, lr {args.lr}")

    torch.manual_seed(0)
    starts = [("random init (demo model)", VideoEncoder(demo.model.video))]
    for run in args.runs:
        model, cfg, _ = load_run_model(run)
        if (cfg.model.video.num_frames, cfg.model.video.image_size) != (frames, size):
            raise SystemExit(f"{run}: its video encoder sees {cfg.model.video.num_frames} frames at "
                             f"{cfg.model.video.image_size} px, the demo's {frames} at {size}")
        starts.append((str(run), copy.deepcopy(model.video_encoder)))
    for name, encoder in starts:
        began = time.perf_counter()
        curve = learning_curve(encoder.train(), train, test, len(classes), steps=args.steps, lr=args.lr,
                               every=args.every)
        points = "  ".join(f"{step}: {acc:.1f}" for step, acc in curve)
        print(f"{name}\n    test top-1 by step  {points}   ({time.perf_counter() - began:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
