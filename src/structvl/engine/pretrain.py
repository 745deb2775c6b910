"""The training half of `structvl pretrain`: config -> data -> model -> objectives -> trainer.

This file is the whole training pipeline in reading order; each step is one call into the library. It runs
unchanged under `torchrun --nproc-per-node K -m structvl pretrain ...`. What the trained model is worth is the
evaluation's business: `structvl.tasks.evaluate.pretrain_and_evaluate` runs this, then the zero-shot suite.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from structvl.config import ConfigError, RunConfig, frame_normalization, save_config
from structvl.data.dataset import SkipLedger, VideoTextCollator, VideoTextDataset
from structvl.data.formats import read_annotations
from structvl.data.knowledge.cache import KnowledgeCache, knowledge_for
from structvl.data.knowledge.vocab import KnowledgeVocab
from structvl.data.shards import ShardedVideoTextDataset
from structvl.data.text import Tokenizer
from structvl.data.transforms import VideoTransform
from structvl.engine.checkpoint import latest_checkpoint, load_model_weights
from structvl.engine.trainer import Trainer
from structvl.models.text_encoder import build_tokenizer
from structvl.models.video_text import VideoTextModel, build_model
from structvl.objectives import OBJECTIVES
from structvl.objectives.base import ObjectiveContext
from structvl.objectives.pretraining import PretrainingModule, enabled_objectives, needs_knowledge
from structvl.runtime.distributed import DistInfo, barrier, init_distributed
from structvl.runtime.precision import dtype_name

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
    root = data_root(cfg)
    if cfg.data.shards:
        pattern = cfg.data.shards if Path(cfg.data.shards).is_absolute() else str(root / cfg.data.shards)
        transform = VideoTransform(cfg.model.video.image_size, train=True, **frame_normalization(cfg.model.video),
                                   scale=tuple(cfg.data.random_resized_crop_scale), hflip=cfg.data.hflip)
        try:
            dataset = ShardedVideoTextDataset(
                pattern, num_frames=cfg.data.num_frames, sampling=cfg.data.sampling,
                target_fps=cfg.data.target_fps, transform=transform, backend=cfg.data.backend,
                caption_mode=cfg.data.caption_mode, seed=cfg.train.seed, rank=rank, world_size=world_size,
                shuffle_buffer=cfg.data.shuffle_buffer)
        except (FileNotFoundError, ValueError) as e:
            raise ConfigError(f"config key 'data.shards': {e}") from e
        return dataset, VideoTextCollator(tokenizer, knowledge)
    records = train_records(cfg)
    if not records:
        raise ConfigError(f"config key 'data.train': {root / cfg.data.train} holds no usable records")
    transform = VideoTransform(cfg.model.video.image_size, train=True, **frame_normalization(cfg.model.video),
                               scale=tuple(cfg.data.random_resized_crop_scale), hflip=cfg.data.hflip)
    dataset = VideoTextDataset(records, cfg.data.videos or root, num_frames=cfg.data.num_frames,
                               sampling=cfg.data.sampling, target_fps=cfg.data.target_fps, transform=transform,
                               backend=cfg.data.backend, caption_mode=cfg.data.caption_mode, seed=cfg.train.seed)
    return dataset, VideoTextCollator(tokenizer, knowledge)


def train_records(cfg: RunConfig):
    ann = data_root(cfg) / cfg.data.train
    if not ann.exists():
        raise ConfigError(f"config key 'data.train': annotation file {ann} does not exist")
    return read_annotations(cfg.data.format, ann)


def build_objective_context(cfg: RunConfig, tokenizer, run_dir: Path, is_main: bool):
    """Tokenizer, and - when an enabled objective needs it - the spaCy knowledge of every training caption
    (parsed once into the on-disk cache) and the label vocabulary, saved as run_dir/knowledge_vocab.json.
    The main rank parses and writes the cache (call it before the others: they then only read it)."""
    if not needs_knowledge(cfg):
        return ObjectiveContext(tokenizer=tokenizer)
    # With shards, the annotation file they were written from still lists the captions to parse.
    records = train_records(cfg)
    captions = sorted({c for record in records for c in record.captions})
    cache_dir = Path(cfg.knowledge.cache_dir or data_root(cfg) / "knowledge_cache")
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


@dataclass
class PretrainResult:
    """What a finished pre-training leaves for evaluation."""

    metrics: dict  # train/* metrics and data/skipped; also written to run_dir/metrics.json
    model: VideoTextModel  # the trained model (under FSDP: an unsharded copy from the final checkpoint, main rank)
    module: PretrainingModule | None  # model + objectives with their heads; None under FSDP (sharded)
    tokenizer: Tokenizer
    info: DistInfo


def batch_sampler(cfg: RunConfig, dataset, context: ObjectiveContext, info: DistInfo):
    """The sampler an enabled objective asks for (its `batch_sampler` hook), or None for the trainer's own.
    Streaming (sharded) datasets order themselves, so they take none."""
    if cfg.data.shards:
        return None
    samplers = {}
    for name in enabled_objectives(cfg):
        hook = getattr(OBJECTIVES[name], "batch_sampler", None)
        sampler = hook(cfg, dataset, context, info.world_size, info.rank) if hook is not None else None
        if sampler is not None:
            samplers[name] = sampler
    if len(samplers) > 1:
        raise ConfigError(f"config key 'objectives': {sorted(samplers)} each decide which clips share a batch; "
                          "turn off all but one's batch sampler")
    return next(iter(samplers.values()), None)


def run_pretraining(cfg: RunConfig, run_dir: Path, resume: bool = False,
                    prepare_data: Callable[[RunConfig], None] | None = None) -> PretrainResult:
    """Train `cfg` into `run_dir` (checkpoints, logs, config.yaml, metrics.json with the training metrics).

    prepare_data: called once on the main rank before anything reads the data (e.g. the lab's corpus
    generator); the other ranks wait for it. The caller tears the process group down when it is done
    (`structvl.runtime.distributed.cleanup`), so that it can evaluate first.
    """
    info = init_distributed(cfg.train.device)
    run_dir = Path(run_dir)
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
        if prepare_data is not None:
            prepare_data(cfg)
    barrier()
    seed_everything(cfg.train.seed)  # same init on every rank (DDP also broadcasts it)

    tokenizer = build_tokenizer(cfg.model.text)
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
    trainer = Trainer(cfg, module, dataset, collator, run_dir, info, skip_ledger=ledger,
                      sampler=batch_sampler(cfg, dataset, context, info))
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
    metrics["train/bf16"] = float(precision == "bf16")  # "auto" differs by machine, and so do the numbers
    metrics["train/fp16"] = float(precision == "fp16")
    fsdp = info.enabled and cfg.train.distributed == "fsdp"
    if fsdp and info.is_main:  # FSDP left each rank a shard: rebuild an unsharded copy from the final checkpoint
        model = build_model(cfg.model, load_pretrained=False).to(info.device)
        load_model_weights(model, latest_checkpoint(run_dir))
    if info.is_main:
        (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2), encoding="utf-8")
    return PretrainResult(metrics, model, None if fsdp else module, tokenizer, info)
