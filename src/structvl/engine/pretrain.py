"""`structvl pretrain`: config -> data -> model -> objectives -> trainer -> zero-shot evaluation.

This file is the whole pipeline in reading order; each step is one call into the library.
The same command runs under `torchrun --nproc-per-node K -m structvl pretrain ...`.
"""

from __future__ import annotations

import json
import logging
import os
import random
from pathlib import Path

import numpy as np
import torch

from structvl.config import ConfigError, RunConfig, load_config, save_config

log = logging.getLogger("structvl")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def data_root(cfg: RunConfig) -> Path:
    return Path(cfg.data.root)


def build_train_data(cfg: RunConfig, tokenizer):
    """The training dataset and its collator, from the annotation file the config names."""
    from structvl.data.dataset import VideoTextCollator, VideoTextDataset
    from structvl.data.formats import read_annotations
    from structvl.data.transforms import VideoTransform

    root = data_root(cfg)
    ann = root / cfg.data.train
    if not ann.exists():
        raise ConfigError(f"config key 'data.train': annotation file {ann} does not exist")
    records = read_annotations(cfg.data.format, ann)
    if not records:
        raise ConfigError(f"config key 'data.train': {ann} holds no usable records")
    transform = VideoTransform(cfg.model.video.image_size, train=True,
                               scale=tuple(cfg.data.random_resized_crop_scale), hflip=cfg.data.hflip)
    dataset = VideoTextDataset(records, cfg.data.videos or root, num_frames=cfg.data.num_frames,
                               sampling=cfg.data.sampling, target_fps=cfg.data.target_fps, transform=transform,
                               backend=cfg.data.backend, caption_mode=cfg.data.caption_mode, seed=cfg.train.seed)
    return dataset, VideoTextCollator(tokenizer)


def ensure_corpus(cfg: RunConfig) -> None:
    """Generate the structured corpus at data.root when the config asks for it and it is absent."""
    root = data_root(cfg)
    if cfg.data.synth and not (root / "corpus.json").exists():
        from structvl.data.synth import generate_corpus
        generate_corpus(root, num_clips=cfg.data.synth_clips, seed=0)


def run_pretraining(cfg: RunConfig, run_dir: Path, resume: bool = False, evaluate: bool = True) -> dict:
    from structvl.data.dataset import SkipLedger
    from structvl.data.text import Tokenizer
    from structvl.engine.distributed import barrier, cleanup, init_distributed
    from structvl.engine.trainer import Trainer
    from structvl.models.video_text import build_model
    from structvl.objectives.pretraining import PretrainingModule

    info = init_distributed(cfg.train.device)
    run_dir = Path(run_dir)
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
        ensure_corpus(cfg)
    barrier()
    seed_everything(cfg.train.seed)  # same init on every rank (DDP also broadcasts it)

    tokenizer = Tokenizer(max_length=cfg.model.text.max_length)
    dataset, collator = build_train_data(cfg, tokenizer)
    model = build_model(cfg.model)
    module = PretrainingModule(model, cfg)
    ledger = SkipLedger()
    trainer = Trainer(cfg, module, dataset, collator, run_dir, info, skip_ledger=ledger)
    if resume and trainer.resume():
        # The checkpoint restored every RNG, so dropout noise continues exactly where it stopped.
        if info.is_main:
            log.info("resumed %s at step %d (epoch %d)", run_dir, trainer.step, trainer.epoch)
    else:
        # Ranks share the init above but must draw their own dropout noise from here on.
        torch.manual_seed(cfg.train.seed * 1000 + info.rank)
    train_logs = trainer.fit()

    metrics: dict = {f"train/{k}": v for k, v in train_logs.items()}
    metrics["data/skipped"] = ledger.summary()["total"]
    if evaluate and info.is_main:
        from structvl.tasks.evaluate import evaluate_model
        if info.enabled and cfg.train.distributed == "fsdp":
            # FSDP left each rank a shard; evaluate an unsharded copy rebuilt from the final checkpoint.
            from structvl.engine.checkpoint import latest_checkpoint, load_model_weights
            model = build_model(cfg.model).to(info.device)
            load_model_weights(model, latest_checkpoint(run_dir))
        metrics.update(evaluate_model(model, cfg, tokenizer, device=info.device))
    if info.is_main:
        (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2), encoding="utf-8")
    barrier()
    cleanup()
    return metrics


def pretrain_from_cli(args) -> int:
    overrides = list(args.overrides)
    if args.max_steps is not None:
        overrides.append(f"train.max_steps={args.max_steps}")
    if args.seed is not None:
        overrides.append(f"train.seed={args.seed}")
    cfg = load_config(args.config, overrides)
    run_dir = Path(args.out or Path("runs") / cfg.name)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    metrics = run_pretraining(cfg, run_dir, resume=args.resume)
    if os.environ.get("RANK", "0") == "0":
        from structvl.tasks.evaluate import format_metrics_table
        print(format_metrics_table(metrics))
        print(f"run directory: {run_dir}")
    return 0
