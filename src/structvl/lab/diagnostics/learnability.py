"""How many supervised steps the demo's video encoder needs to learn the corpus's actions, or its shapes.

    python -m structvl.lab.diagnostics.learnability CORPUS [RUN ...] [--labels action|shape] [--steps 200] [--lr 5e-4] [--every 50]

Trains the video encoder + a linear head on its pooled clip vector and prints the test score every `--every`
steps: once from a random initialisation of the demo model (configs/demo.yaml), then from each RUN's
pre-trained video encoder.
- `--labels action`: cross-entropy on the action-recognition split (configs/finetune/structured.yaml,
  `recognition`: single-action clips, ten classes); test top-1.
- `--labels shape`: binary cross-entropy on which of the corpus's shapes a clip shows (`meta.objects`), on the
  pre-training split (train.jsonl / test.jsonl); test mAP over the shapes (chance: their prevalence).
It answers two questions the ablation table cannot:
- is a representation blind to a kind the encoder's limit or the pre-training signal's? (if the same encoder,
  given the labels, learns the kind within the pre-training budget, the captions' objectives are what does
  not teach it; if it does not, no objective can at that budget);
- does a pre-training recipe make the kind easier to learn? (a run whose curve rises sooner holds more of it).

Clips are decoded once (8 frames, one centre view, the evaluation's preprocessing) and kept in memory; no
augmentation, seed 0 for the head and the batch order, bf16 autocast. About 70 s per action curve on 2 CPU
cores.
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
from structvl.data.formats import read_annotations
from structvl.data.formats.classification import read_class_list
from structvl.engine.checkpoint import load_run_model
from structvl.lab.diagnostics.knowledge_probe import clip_labels
from structvl.models.video_encoder import VideoEncoder
from structvl.tasks.features import ClipViews, collate_views
from structvl.tasks.knowledge_prediction import average_precision
from structvl.tasks.recognition import labelled
from structvl.tasks.task_config import load_task_config, read_task_records, video_root

TASK_CONFIG = "finetune/structured"


def decode(records, root: Path, num_frames: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, T, 3, S, S) centre views of the records that decode, and their row indices."""
    views = ClipViews(records, root, num_frames=num_frames, image_size=size)
    batch = collate_views([views[i] for i in range(len(views))])
    return batch["views"][:, 0], batch["index"]


def action_splits(corpus: Path, num_frames: int, size: int):
    """((train clips, class ids), (test clips, class ids), number of classes) of the recognition split."""
    task = load_task_config(TASK_CONFIG).recognition
    classes = read_class_list(corpus / task.classes)
    splits = []
    for split in ("train", "test"):
        records, labels = labelled(read_task_records(task.data, corpus, split), classes)
        clips, kept = decode(records, video_root(task.data, corpus), num_frames, size)
        splits.append((clips, labels[kept]))
    return splits[0], splits[1], len(classes)


def shape_splits(corpus: Path, num_frames: int, size: int):
    """((train clips, 0/1 shape matrix), (test clips, 0/1 shape matrix), number of shapes)."""
    train, test = (read_annotations("jsonl", corpus / f"{s}.jsonl") for s in ("train", "test"))
    shapes = clip_labels(train + test)["shape"]  # one vocabulary for both splits
    splits = []
    for records, targets in ((train, shapes[:len(train)]), (test, shapes[len(train):])):
        clips, kept = decode(records, corpus, num_frames, size)
        splits.append((clips, targets[kept]))
    return splits[0], splits[1], shapes.shape[1]


def score(logits: torch.Tensor, targets: torch.Tensor, multi_label: bool) -> float:
    """Test top-1 % (one class per clip) or mAP % over the labels (multi-label)."""
    if multi_label:
        aps, _ = average_precision(logits, targets)
        return 100.0 * sum(aps) / len(aps)
    return 100.0 * float((logits.argmax(1) == targets).float().mean())


def learning_curve(encoder: VideoEncoder, train, test, num_outputs: int, multi_label: bool, *, steps: int,
                   lr: float, every: int, batch_size: int = 32) -> list[tuple[int, float]]:
    """Supervised training from `encoder`'s weights; (step, test score) every `every` steps."""
    torch.manual_seed(0)
    head = nn.Linear(encoder.width, num_outputs)
    params = list(encoder.parameters()) + list(head.parameters())
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.05)
    loss_fn = F.binary_cross_entropy_with_logits if multi_label else F.cross_entropy
    (train_x, train_y), (test_x, test_y) = train, test
    curve = []
    for step in range(1, steps + 1):
        idx = torch.randint(0, len(train_x), (batch_size,))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = head(encoder(train_x[idx]).pooled)
        loss = loss_fn(logits.float(), train_y[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        if step % every == 0 or step == steps:
            encoder.eval()
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
                logits = torch.cat([head(encoder(x).pooled).float() for x in test_x.split(64)])
            encoder.train()
            curve.append((step, score(logits, test_y, multi_label)))
    return curve


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("corpus", type=Path)
    parser.add_argument("runs", nargs="*", type=Path, help="pre-training run directories to start from")
    parser.add_argument("--labels", choices=("action", "shape"), default="action")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--every", type=int, default=50)
    args = parser.parse_args(argv)

    demo = load_config("demo")
    frames, size = demo.model.video.num_frames, demo.model.video.image_size
    multi_label = args.labels == "shape"
    train, test, num_outputs = (shape_splits if multi_label else action_splits)(args.corpus, frames, size)
    chance = (100.0 * float(test[1].mean()) if multi_label else 100.0 / num_outputs)
    print(f"{len(train[0])} training / {len(test[0])} test clips, {num_outputs} {args.labels}s "
          f"({'mAP' if multi_label else 'top-1'}, chance {chance:.1f}%); {args.steps} steps, lr {args.lr}")

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
        curve = learning_curve(encoder.train(), train, test, num_outputs, multi_label, steps=args.steps,
                               lr=args.lr, every=args.every)
        points = "  ".join(f"{step}: {value:.1f}" for step, value in curve)
        print(f"{name}\n    test {'mAP' if multi_label else 'top-1'} by step  {points}   "
              f"({time.perf_counter() - began:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
