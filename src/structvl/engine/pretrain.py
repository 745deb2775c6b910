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
from torch.utils.data import IterableDataset

from structvl.config import ConfigError, RunConfig, frame_normalization, save_config
from structvl.data.dataset import SkipLedger, VideoTextCollator, VideoTextDataset
from structvl.data.formats import read_annotations
from structvl.data.knowledge.cache import KnowledgeCache
from structvl.data.knowledge.corpus import (
    corpus_fingerprint,
    corpus_summary,
    knowledge_pass,
    swap_context,
    vocab_from_cache,
)
from structvl.data.knowledge.lookup import KnowledgeLookup
from structvl.data.knowledge.vocab import KnowledgeVocab
from structvl.data.mix import MixedDataset, MixedShards
from structvl.data.shards import ShardedVideoTextDataset
from structvl.data.text import Tokenizer
from structvl.data.transforms import VideoTransform
from structvl.engine.checkpoint import latest_checkpoint, load_model_weights
from structvl.engine.run_dir import check_run_dir, prepare_run_dir, record_code
from structvl.engine.trainer import Trainer
from structvl.models.text_encoder import build_tokenizer
from structvl.models.video_text import VideoTextModel, build_model
from structvl.objectives import OBJECTIVES
from structvl.objectives.base import ObjectiveContext
from structvl.objectives.pretraining import PretrainingModule, enabled_objectives, needs_knowledge
from structvl.runtime.distributed import DistInfo, barrier, init_distributed
from structvl.runtime.precision import dtype_name
from structvl.runtime.process import allocator_in_use, find_allocator, return_freed_memory

log = logging.getLogger("structvl")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def data_root(cfg: RunConfig) -> Path:
    return Path(cfg.data.root)


def build_train_data(cfg: RunConfig, tokenizer, rank: int = 0, world_size: int = 1, knowledge=None):
    """The training dataset and its collator: webdataset shards when `data.shards` is set (each rank
    streams its own shards), the sources of `data.mix` when it is set, else the annotation file `data.train`
    (map-style, exact resume)."""
    root = data_root(cfg)
    if cfg.data.mix:
        return build_mixed_data(cfg, rank, world_size), VideoTextCollator(tokenizer, knowledge)
    if cfg.data.shards:
        pattern = cfg.data.shards if Path(cfg.data.shards).is_absolute() else str(root / cfg.data.shards)
        transform = VideoTransform(cfg.model.video.image_size, train=True, **frame_normalization(cfg.model.video),
                                   scale=tuple(cfg.data.random_resized_crop_scale), hflip=cfg.data.hflip)
        try:
            dataset = ShardedVideoTextDataset(
                pattern, num_frames=cfg.data.num_frames, sampling=cfg.data.sampling,
                target_fps=cfg.data.target_fps, transform=transform, backend=cfg.data.backend,
                caption_mode=cfg.data.caption_mode, seed=cfg.train.seed, rank=rank, world_size=world_size,
                shuffle_buffer=cfg.data.shuffle_buffer, require_captions=True, decode_threads=cfg.data.decode_threads)
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
                               backend=cfg.data.backend, caption_mode=cfg.data.caption_mode, seed=cfg.train.seed,
                               require_captions=True, allow_outside_root=cfg.data.allow_outside_root,
                               decode_threads=cfg.data.decode_threads)
    if not dataset.items:
        raise ConfigError(f"config key 'data.train': {root / cfg.data.train} holds no usable records "
                          f"({', '.join(f'{n} x {reason}' for reason, n in dataset.dropped.items())})")
    return dataset, VideoTextCollator(tokenizer, knowledge)


def build_mixed_data(cfg: RunConfig, rank: int = 0, world_size: int = 1) -> MixedDataset | MixedShards:
    """`data.mix`'s sources as one dataset (structvl.data.mix): annotation files or shards."""
    root = data_root(cfg)
    transform = VideoTransform(cfg.model.video.image_size, train=True, **frame_normalization(cfg.model.video),
                               scale=tuple(cfg.data.random_resized_crop_scale), hflip=cfg.data.hflip)
    names = [s.name or s.train or s.shards for s in cfg.data.mix]
    weights = [s.weight for s in cfg.data.mix]
    if cfg.data.mix[0].shards is not None:
        sources = []
        for i, source in enumerate(cfg.data.mix):
            pattern = source.shards if Path(source.shards).is_absolute() else str(root / source.shards)
            try:
                sources.append(ShardedVideoTextDataset(
                    pattern, num_frames=cfg.data.num_frames, sampling=cfg.data.sampling, target_fps=cfg.data.target_fps,
                    transform=transform, backend=cfg.data.backend, caption_mode=cfg.data.caption_mode,
                    seed=cfg.train.seed, rank=rank, world_size=world_size, shuffle_buffer=cfg.data.shuffle_buffer,
                    require_captions=True, decode_threads=cfg.data.decode_threads))
            except (FileNotFoundError, ValueError) as e:
                raise ConfigError(f"config key 'data.mix[{i}].shards': {e}") from e
        return MixedShards(sources, weights, names, cfg.train.batch_size, seed=cfg.train.seed)
    datasets = []
    for i, source in enumerate(cfg.data.mix):
        path = root / source.train
        if not path.exists():
            raise ConfigError(f"config key 'data.mix[{i}].train': annotation file {path} does not exist")
        records = read_annotations(source.format, path)
        if not records:
            raise ConfigError(f"config key 'data.mix[{i}].train': {path} holds no usable records")
        datasets.append(VideoTextDataset(records, source.videos or root, num_frames=cfg.data.num_frames,
                                         sampling=cfg.data.sampling, target_fps=cfg.data.target_fps,
                                         transform=transform, backend=cfg.data.backend,
                                         caption_mode=cfg.data.caption_mode, seed=cfg.train.seed,
                                         require_captions=True, allow_outside_root=cfg.data.allow_outside_root,
                                         decode_threads=cfg.data.decode_threads))
    return MixedDataset(datasets, names)


def train_records(cfg: RunConfig):
    ann = data_root(cfg) / cfg.data.train
    if not ann.exists():
        raise ConfigError(f"config key 'data.train': annotation file {ann} does not exist")
    return read_annotations(cfg.data.format, ann)


def build_objective_context(cfg: RunConfig, tokenizer, run_dir: Path, is_main: bool):
    """Tokenizer, and - when an enabled objective needs it - the knowledge: the label vocabulary (saved as
    run_dir/knowledge_vocab.json) read from the knowledge cache's counts of the training captions, and the
    `KnowledgeLookup` through which the loader workers read each batch's knowledge (and CLOP's swaps) from the
    cache. Nothing here grows with the corpus beyond the cache's index, once `structvl knowledge` has counted the
    corpus (its annotation file's fingerprint is remembered in the cache with the file's size and time). When it has not, the main rank runs
    that pass here for a corpus of at most `knowledge.startup_parse_limit` captions (call it before the
    others: they then only read), and every rank refuses a larger one with the command to run first."""
    if not needs_knowledge(cfg):
        return ObjectiveContext(tokenizer=tokenizer)
    annotations = data_root(cfg) / cfg.data.train  # with shards too: it names the corpus the shards were cut from
    if not annotations.exists():
        raise ConfigError(f"config key 'data.train': annotation file {annotations} does not exist (the knowledge "
                          "of the training captions is counted from it)")
    cache = KnowledgeCache(Path(cfg.knowledge.cache_dir or data_root(cfg) / "knowledge_cache"))
    corpus = corpus_fingerprint(cfg.data.format, annotations, cache)  # a stat when the file has not changed
    swaps = [hook(cfg) for name in enabled_objectives(cfg)
             if (hook := getattr(OBJECTIVES[name], "knowledge_swaps", None)) is not None]
    swaps = next((s for s in swaps if s is not None), None)
    vocab_options = {"top_k": dict(cfg.knowledge.top_k), "min_count": cfg.knowledge.min_count,
                     "exclude": cfg.knowledge.exclude}
    if corpus_summary(cache, corpus) is None:
        records = train_records(cfg) if is_main else []
        captions = len({c for record in records for c in record.captions})
        if not is_main or captions > cfg.knowledge.startup_parse_limit:
            raise ConfigError(
                f"config key 'knowledge.startup_parse_limit': the knowledge of {annotations} is not counted in "
                f"{cache.path}; run `structvl knowledge --config <this config>` (with --shard i/n on several "
                f"machines) first, or raise the limit ({cfg.knowledge.startup_parse_limit}) to parse it here")
        log.info("knowledge: parsing and counting the %d training captions of %s (run `structvl knowledge` "
                 "beforehand to skip this)", captions, annotations)
        knowledge_pass(records, cache, corpus, swaps=swaps, **vocab_options)
    vocab_path = run_dir / "knowledge_vocab.json"
    if vocab_path.exists():  # a resumed run keeps the vocabulary its heads were built for
        vocab = KnowledgeVocab.load(vocab_path)
    else:
        vocab = vocab_from_cache(cache, corpus, **vocab_options)
        if is_main:
            vocab.save(vocab_path)
    lookup = KnowledgeLookup(cache, swap_context(cache, corpus, vocab, swaps) if swaps is not None else None)
    context = ObjectiveContext(tokenizer=tokenizer, vocab=vocab, knowledge=lookup)
    for name in enabled_objectives(cfg):  # objectives may adjust the context (e.g. ask the lookup for more)
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
    """The order an enabled objective asks for (its `batch_sampler` hook), or None for the trainer's own: a
    sampler for a map-style dataset, a grouping stage for a streaming (sharded) one."""
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


def run_pretraining(cfg: RunConfig, run_dir: Path, resume: bool = False, overwrite: bool = False,
                    prepare_data: Callable[[RunConfig], None] | None = None) -> PretrainResult:
    """Train `cfg` into `run_dir` (checkpoints, logs, config.yaml, metrics.json with the training metrics).

    resume / overwrite: what to do when run_dir already holds a run (engine/run_dir.py): continue it, or move it
    aside and start anew; with neither, such a directory is refused before anything is written.

    prepare_data: called once on the main rank before anything reads the data (e.g. the lab's corpus
    generator); the other ranks wait for it. The caller tears the process group down when it is done
    (`structvl.runtime.distributed.cleanup`), so that it can evaluate first.
    """
    run_dir = Path(run_dir)
    action = check_run_dir(run_dir, resume=resume, overwrite=overwrite)  # every rank, before anything changes
    return_freed_memory(cfg.train.mmap_threshold_kib)  # before the loaders fork their workers, which inherit it
    info = init_distributed(cfg.train.device)
    barrier()
    if info.is_main:
        prepare_run_dir(run_dir, action)
        save_config(cfg, run_dir / "config.yaml")
        record_code(run_dir, resumed=action == "resume")  # which code made the run (a demo reuses only its own)
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
    dataset, collator = build_train_data(cfg, tokenizer, info.rank, info.world_size, knowledge=context.knowledge)
    order = batch_sampler(cfg, dataset, context, info)
    if isinstance(dataset, MixedDataset):  # each global batch from one source, drawn by weight
        order = dataset.sampler([s.weight for s in cfg.data.mix], cfg.train.batch_size, info.world_size, info.rank,
                                seed=cfg.train.seed)
    if isinstance(dataset, IterableDataset) and order is not None:
        dataset.set_grouping(order)  # a streaming dataset orders itself: the stage joins its pipeline
        order = None
    model = build_model(cfg.model)
    module = PretrainingModule(model, cfg, context)
    ledger = SkipLedger()
    trainer = Trainer(cfg, module, dataset, collator, run_dir, info, skip_ledger=ledger, sampler=order)
    precision = dtype_name(trainer.autocast_dtype)
    if info.is_main:
        log.info("train.precision=%s: %s on %s", cfg.train.precision, precision, info.device)
        # glibc keeps what each step frees, fragmented, and the process grows over its steps; tcmalloc, preloaded
        # when the process starts (as `structvl demo` starts its runs), keeps it at what the steps use
        allocator = allocator_in_use()
        tcmalloc = find_allocator("tcmalloc") if allocator == "glibc" else None  # looked up only where it helps
        log.info("allocator: %s%s", allocator, f" (LD_PRELOAD={tcmalloc} keeps the run's memory at what its steps "
                 "use: docs/findings.md, \"Allocators\")" if tcmalloc else "")
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
    metrics["data/knowledge_parsed"] = ledger.knowledge_parsed  # captions the knowledge cache lacked
    metrics["data/swaps_built"] = ledger.swaps_built
    metrics["data/dropped_records"] = sum(getattr(dataset, "dropped", {}).values())  # never items (see dataset.py)
    metrics["train/bf16"] = float(precision == "bf16")  # "auto" differs by machine, and so do the numbers
    metrics["train/fp16"] = float(precision == "fp16")
    fsdp = info.enabled and cfg.train.distributed == "fsdp"
    if fsdp and info.is_main:  # FSDP left each rank a shard: rebuild an unsharded copy from the final checkpoint
        model = build_model(cfg.model, load_pretrained=False).to(info.device)
        load_model_weights(model, latest_checkpoint(run_dir))
    if info.is_main:
        (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2), encoding="utf-8")
    return PretrainResult(metrics, model, None if fsdp else module, tokenizer, info)
