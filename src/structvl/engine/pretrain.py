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

from structvl.config import ConfigError, RunConfig, check_device, load_config, save_config

log = logging.getLogger("structvl")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def data_root(cfg: RunConfig) -> Path:
    return Path(cfg.data.root)


def build_train_data(cfg: RunConfig, tokenizer, rank: int = 0, world_size: int = 1, knowledge=None):
    """The training dataset and its collator: webdataset shards when `data.shards` is set (each rank
    streams its own shards), else the annotation file `data.train` (map-style, exact resume)."""
    from structvl.data.dataset import VideoTextCollator, VideoTextDataset
    from structvl.data.transforms import VideoTransform

    root = data_root(cfg)
    if cfg.data.shards:
        from structvl.data.shards import ShardedVideoTextDataset
        pattern = cfg.data.shards if Path(cfg.data.shards).is_absolute() else str(root / cfg.data.shards)
        transform = VideoTransform(cfg.model.video.image_size, train=True,
                                   scale=tuple(cfg.data.random_resized_crop_scale), hflip=cfg.data.hflip)
        try:
            dataset = ShardedVideoTextDataset(
                pattern, num_frames=cfg.data.num_frames, sampling=cfg.data.sampling,
                target_fps=cfg.data.target_fps, transform=transform, backend=cfg.data.backend,
                caption_mode=cfg.data.caption_mode, seed=cfg.train.seed, rank=rank, world_size=world_size,
                shuffle_buffer=cfg.data.shuffle_buffer, require_captions=True)
        except (FileNotFoundError, ValueError) as e:
            raise ConfigError(f"config key 'data.shards': {e}") from e
        return dataset, VideoTextCollator(tokenizer, knowledge)
    records = train_records(cfg)
    if not records:
        raise ConfigError(f"config key 'data.train': {root / cfg.data.train} holds no usable records")
    transform = VideoTransform(cfg.model.video.image_size, train=True,
                               scale=tuple(cfg.data.random_resized_crop_scale), hflip=cfg.data.hflip)
    dataset = VideoTextDataset(records, cfg.data.videos or root, num_frames=cfg.data.num_frames,
                               sampling=cfg.data.sampling, target_fps=cfg.data.target_fps, transform=transform,
                               backend=cfg.data.backend, caption_mode=cfg.data.caption_mode, seed=cfg.train.seed,
                               require_captions=True, allow_outside_root=cfg.data.allow_outside_root)
    if not dataset.items:
        raise ConfigError(f"config key 'data.train': {root / cfg.data.train} holds no usable records "
                          f"({', '.join(f'{n} x {reason}' for reason, n in dataset.dropped.items())})")
    return dataset, VideoTextCollator(tokenizer, knowledge)


def train_records(cfg: RunConfig):
    from structvl.data.formats import read_annotations

    ann = data_root(cfg) / cfg.data.train
    if not ann.exists():
        raise ConfigError(f"config key 'data.train': annotation file {ann} does not exist")
    return read_annotations(cfg.data.format, ann)


def build_objective_context(cfg: RunConfig, tokenizer, run_dir: Path, is_main: bool):
    """Tokenizer, and - when an enabled objective needs it - the spaCy knowledge of every training caption
    (parsed once into the on-disk cache) and the label vocabulary, saved as run_dir/knowledge_vocab.json.
    The main rank parses and writes the cache (call it before the others: they then only read it)."""
    from structvl.objectives.base import ObjectiveContext
    from structvl.objectives.pretraining import needs_knowledge

    if not needs_knowledge(cfg):
        return ObjectiveContext(tokenizer=tokenizer)
    from structvl.data.knowledge import KnowledgeCache, KnowledgeVocab, knowledge_for

    # With shards, the annotation file they were written from still lists the captions to parse.
    records = train_records(cfg)
    captions = sorted({c for record in records for c in record.captions})
    cache_dir = Path(cfg.knowledge.cache_dir or data_root(cfg) / "knowledge_cache")
    from structvl.objectives import OBJECTIVES
    from structvl.objectives.pretraining import enabled_objectives

    with KnowledgeCache(cache_dir) as cache:
        parsed = knowledge_for(captions, cache)
        vocab_path = run_dir / "knowledge_vocab.json"
        if vocab_path.exists():  # a resumed run keeps the vocabulary its heads were built for
            vocab = KnowledgeVocab.load(vocab_path)
        else:
            vocab = KnowledgeVocab.build(parsed, top_k=dict(cfg.knowledge.top_k), min_count=cfg.knowledge.min_count,
                                         exclude=cfg.knowledge.exclude)
            if is_main:
                vocab.save(vocab_path)
        videos_captions: dict[str, list[str]] = {}
        for record in records:
            videos_captions.setdefault(record.video_id, []).extend(record.captions)
        context = ObjectiveContext(tokenizer=tokenizer, vocab=vocab, knowledge={k.caption: k for k in parsed},
                                   videos_captions=videos_captions)
        # Objectives may precompute from the parsed corpus once (e.g. CLOP's validated swapped captions).
        for name in enabled_objectives(cfg):
            prepare = getattr(OBJECTIVES[name], "prepare_context", None)
            if prepare is not None:
                prepare(cfg, context, cache)
    return context


def ensure_corpus(cfg: RunConfig) -> None:
    """Generate the structured corpus at data.root when the config asks for it and it is absent."""
    root = data_root(cfg)
    if cfg.data.synth and not (root / "corpus.json").exists():
        from structvl.lab.synth import generate_corpus
        generate_corpus(root, num_clips=cfg.data.synth_clips, seed=0)


def run_pretraining(cfg: RunConfig, run_dir: Path, resume: bool = False, evaluate: bool = True) -> dict:
    from structvl.data.dataset import SkipLedger
    from structvl.data.text import Tokenizer
    from structvl.runtime.distributed import barrier, cleanup, init_distributed
    from structvl.runtime.precision import dtype_name
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
    if info.is_main:  # parses the captions into the cache; the other ranks then only read it
        context = build_objective_context(cfg, tokenizer, run_dir, is_main=True)
    barrier()
    if not info.is_main:
        context = build_objective_context(cfg, tokenizer, run_dir, is_main=False)
    dataset, collator = build_train_data(cfg, tokenizer, info.rank, info.world_size,
                                         knowledge=context.knowledge or None)
    model = build_model(cfg.model)
    module = PretrainingModule(model, cfg, context)
    ledger = SkipLedger()
    sampler = None
    if cfg.objectives.get("clop_kcl", 0) > 0 and cfg.clop.kcl_batch_sampler and not cfg.data.shards:
        from structvl.objectives.clop import build_knowledge_sampler
        sampler = build_knowledge_sampler(cfg, dataset, context, info.world_size, info.rank)
    trainer = Trainer(cfg, module, dataset, collator, run_dir, info, skip_ledger=ledger, sampler=sampler)
    precision = dtype_name(trainer.autocast_dtype)
    if info.is_main:
        log.info("train.precision=%s: %s on %s", cfg.train.precision, precision, info.device)
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
    metrics["data/dropped_records"] = sum(getattr(dataset, "dropped", {}).values())  # never items (see dataset.py)
    metrics["train/bf16"] = float(precision == "bf16")  # "auto" differs by machine, and so do the numbers
    if evaluate and info.is_main:
        from structvl.tasks.evaluate import evaluate_model
        if info.enabled and cfg.train.distributed == "fsdp":
            # FSDP left each rank a shard; evaluate an unsharded copy rebuilt from the final checkpoint.
            from structvl.engine.checkpoint import latest_checkpoint, load_model_weights
            model = build_model(cfg.model).to(info.device)
            load_model_weights(model, latest_checkpoint(run_dir))
        metrics.update(evaluate_model(model, cfg, tokenizer, device=info.device))
        if not (info.enabled and cfg.train.distributed == "fsdp"):  # FSDP heads are sharded across ranks
            # Objectives may measure what they train (CLOP's SKP mAP, S-ViLM's grounding, Clover's MLM).
            for objective in module.objectives.values():
                if hasattr(objective, "evaluate"):
                    metrics.update(objective.evaluate(model, cfg, tokenizer, info.device))
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
    check_device(cfg)
    annotations = data_root(cfg) / cfg.data.train
    if not (cfg.data.synth or cfg.data.shards or annotations.is_file()):  # before the run directory is made
        raise ConfigError(f"config key 'data.train': annotation file {annotations} does not exist (data.root "
                          f"{cfg.data.root!r}; data.synth: true generates the structured corpus there)")
    run_dir = Path(args.out or Path("runs") / cfg.name)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    metrics = run_pretraining(cfg, run_dir, resume=args.resume)
    if os.environ.get("RANK", "0") == "0":
        from structvl.tasks.evaluate import format_metrics_table
        print(format_metrics_table(metrics))
        print(f"run directory: {run_dir}")
    return 0
