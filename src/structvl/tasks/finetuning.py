"""What the fine-tuning protocols share: the pre-training run's config turned into a task's, and the pre-training
`Trainer` stepping a task's module (retrieval, recognition and the QA scorers fine-tune through it)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch

from structvl.engine.trainer import Trainer
from structvl.runtime.distributed import DistInfo


def finetune_run_config(run_cfg, *, steps: int, batch_size: int, lr: float, text_lr: float | None = None,
                        warmup_steps: int = 20, seed: int = 0, sampling: str | None = None):
    """The pre-training run's config turned into a fine-tuning one: same model and data settings, the task's
    steps / batch / learning rates, a checkpoint only at the end, the contrastive objective only."""
    cfg = copy.deepcopy(run_cfg)
    cfg.train.max_steps, cfg.train.batch_size, cfg.train.seed = steps, batch_size, seed
    cfg.train.checkpoint_every, cfg.train.log_every, cfg.train.keep_checkpoints = 0, 1, 1
    cfg.optim.lr, cfg.optim.text_lr = lr, text_lr
    cfg.optim.warmup_steps = min(warmup_steps, max(1, steps // 5))
    cfg.objectives = {"contrastive": 1.0}
    cfg.data.synth = False
    if sampling:
        cfg.data.sampling = sampling
    return cfg


def pick_device(run_cfg) -> torch.device:
    """The run config's device choice (train.device: auto / cpu / cuda)."""
    if run_cfg.train.device == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda")


def train_module(cfg, module, dataset, collator, out_dir: Path, device) -> list[float]:
    """Step `module(batch) -> (loss, logs)` with the pre-training Trainer; returns the loss of every step."""
    torch.manual_seed(cfg.train.seed)
    trainer = Trainer(cfg, module, dataset, collator, Path(out_dir), DistInfo(device=device))
    trainer.fit()
    rows = [json.loads(line) for line in (Path(out_dir) / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [r["loss"] for r in rows if "loss" in r][-cfg.train.max_steps:]
