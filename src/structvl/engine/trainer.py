"""The pre-training loop: data position, accumulation, bf16 autocast, clipping, DDP/FSDP, checkpoints.

The trainer knows nothing about objectives: it calls `module(batch) -> (loss, logs)` on a
`PretrainingModule` and steps the optimizer. Everything needed to continue a run exactly (weights,
optimizer, scheduler, step, epoch, samples consumed this epoch, RNG states) goes into each checkpoint.
"""

from __future__ import annotations

import contextlib
import math
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.distributed as dist

from structvl.config import ConfigError, RunConfig
from structvl.engine import checkpoint as ckpt
from structvl.runtime.distributed import DistInfo, all_reduce_mean
from structvl.engine.logger import RunLogger
from structvl.engine.optim import build_optimizer, build_scheduler
from structvl.runtime.precision import autocast, autocast_dtype
from structvl.engine.sampler import ResumableDistributedSampler


def move_to(batch: dict, device: torch.device) -> dict:
    return {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}


def wrap_distributed(module: nn.Module, cfg: RunConfig, info: DistInfo) -> nn.Module:
    """DDP by default; FSDP2 (`fully_shard`, each transformer block a unit) for models too big to replicate."""
    if not info.enabled:
        return module
    if cfg.train.distributed == "fsdp":
        from torch.distributed.fsdp import fully_shard
        for block in module.model.video_encoder.blocks:
            fully_shard(block)
        for layer in module.model.text_encoder.bert.encoder.layer:
            fully_shard(layer)
        fully_shard(module)
        return module
    ids = [info.local_rank] if info.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(module, device_ids=ids)


class Trainer:
    def __init__(self, cfg: RunConfig, module: nn.Module, dataset, collator, run_dir: Path, info: DistInfo,
                 skip_ledger=None, sampler=None):
        from structvl.data.dataset import build_dataloader

        self.cfg, self.info, self.run_dir = cfg, info, Path(run_dir)
        self.raw_module = module.to(info.device)
        self.module = wrap_distributed(self.raw_module, cfg, info)
        self.dataset = dataset
        self.optimizer = build_optimizer(self.module, cfg.optim)
        self.scheduler = build_scheduler(self.optimizer, cfg.optim, cfg.train.max_steps)
        # A streaming (sharded) dataset splits itself across ranks; a map-style one needs the sampler.
        self.streaming = isinstance(dataset, torch.utils.data.IterableDataset)
        # `sampler`: a ResumableDistributedSampler subclass that orders the epoch differently (CLOP's
        # knowledge-grouped batches); by default a seeded random permutation.
        self.sampler = None if self.streaming else sampler or ResumableDistributedSampler(
            len(dataset), info.world_size, info.rank, shuffle=True, seed=cfg.train.seed, drop_last=True)
        self.loader = build_dataloader(dataset, collator, batch_size=cfg.train.batch_size, shuffle=False,
                                       num_workers=cfg.data.num_workers, seed=cfg.train.seed, drop_last=True,
                                       sampler=self.sampler,
                                       # a decoder stuck inside FFmpeg becomes an error, not a silent hang
                                       timeout=cfg.data.loader_timeout if cfg.data.num_workers > 0 else 0)
        if self.sampler is not None and len(self.sampler) < cfg.train.batch_size:
            raise ConfigError(f"config key 'train.batch_size': {cfg.train.batch_size} is larger than the "
                             f"{len(self.sampler)} training items each rank gets")
        self.skip_ledger = skip_ledger
        self.step, self.epoch, self.samples_seen = 0, 0, 0
        self.autocast_dtype = autocast_dtype(cfg.train.precision, self.info.device)

    # ------------------------------------------------------------------ state
    def _is_fsdp(self) -> bool:
        return self.info.enabled and self.cfg.train.distributed == "fsdp"

    def _full_state(self) -> tuple[dict, dict]:
        """Unsharded module and optimizer state (a collective under FSDP: every rank must call it)."""
        if self._is_fsdp():
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict
            return get_state_dict(self.raw_module, self.optimizer,
                                  options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return self.raw_module.state_dict(), self.optimizer.state_dict()

    def save(self) -> Path | None:
        module_state, optim_state = self._full_state()
        state = {"step": self.step, "epoch": self.epoch, "samples_seen": self.samples_seen,
                 "optimizer": optim_state, "scheduler": self.scheduler.state_dict(), "scaler": {},
                 "rng": self._rng_states(), "world_size": self.info.world_size}
        path = None
        if self.info.is_main:
            path = ckpt.save_checkpoint(self.run_dir, self.step, module_state, state,
                                        keep=self.cfg.train.keep_checkpoints)
        if self.info.enabled:
            dist.barrier()
        return path

    def _rng_states(self) -> list[dict]:
        """Every rank's RNG state (rank order), so each rank resumes with its own dropout noise."""
        state = ckpt.rng_state()
        if not self.info.enabled:
            return [state]
        states = [None] * self.info.world_size
        dist.all_gather_object(states, state)
        return states

    def resume(self) -> bool:
        """Load the run's latest checkpoint if there is one; returns whether it did."""
        path = ckpt.latest_checkpoint(self.run_dir)
        if path is None:
            return False
        module_state = ckpt.load_module_state(path)
        state = ckpt.load_train_state(path)
        if self._is_fsdp():
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict
            set_state_dict(self.raw_module, self.optimizer, model_state_dict=module_state,
                           optim_state_dict=state["optimizer"], options=StateDictOptions(full_state_dict=True))
        else:
            self.raw_module.load_state_dict(module_state)
            self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step, self.epoch, self.samples_seen = state["step"], state["epoch"], state["samples_seen"]
        rng = state["rng"]
        ckpt.set_rng_state(rng[self.info.rank] if len(rng) == self.info.world_size else rng[0])
        return True

    # ------------------------------------------------------------------ data
    def _batches(self):
        """Endless batches from the saved data position on; epochs roll over with a new permutation."""
        if self.streaming:
            self.dataset.set_position(self.epoch, self.samples_seen, self.cfg.train.batch_size)
        else:
            self.sampler.set_position(self.epoch, self.samples_seen)
            self.dataset.set_epoch(self.epoch)
        while True:
            for batch in self.loader:
                self.samples_seen += self.cfg.train.batch_size
                yield batch
            if self.skip_ledger is not None and self.info.is_main and self.skip_ledger.summary()["total"]:
                self.logger.message(f"epoch {self.epoch}: " + self.skip_ledger.report())
            self.epoch, self.samples_seen = self.epoch + 1, 0
            if self.sampler is not None:
                self.sampler.set_epoch(self.epoch)
            self.dataset.set_epoch(self.epoch)

    def _equal_size(self, batch: dict) -> dict | None:
        """Skipped (corrupt) samples make batches shorter; ranks must gather equal shapes, so every rank
        keeps the smallest size any rank has. None when some rank has nothing left."""
        n = 0 if batch.get("video") is None else batch["video"].shape[0]
        if self.info.enabled:
            t = torch.tensor([n], device=self.info.device)
            dist.all_reduce(t, op=dist.ReduceOp.MIN)
            n_min = int(t)
        else:
            n_min = n
        if n_min == 0:
            return None
        if n_min < n:
            batch = {k: (v[:n_min] if (torch.is_tensor(v) or isinstance(v, list)) and k != "skipped" else v)
                     for k, v in batch.items()}
        return batch

    # ------------------------------------------------------------------ loop
    def fit(self) -> dict:
        cfg = self.cfg
        self.logger = RunLogger(self.run_dir, cfg.train.max_steps, self.step, enabled=self.info.is_main)
        batches = self._batches()
        last_logs: dict = {}
        t_last, clips_since = time.perf_counter(), 0
        try:
            while self.step < cfg.train.max_steps:
                self.module.train()
                self.optimizer.zero_grad(set_to_none=True)
                micro_logs = []
                for micro in range(cfg.optim.accumulate):
                    batch = None
                    while batch is None:  # a batch whose samples were all skipped is not a step
                        raw = next(batches)
                        if self.skip_ledger is not None and raw.get("skipped"):
                            self.skip_ledger.update(raw["skipped"])
                        batch = self._equal_size(raw)
                    batch = move_to(batch, self.info.device)
                    sync = micro == cfg.optim.accumulate - 1 or not isinstance(
                        self.module, nn.parallel.DistributedDataParallel)
                    with (contextlib.nullcontext() if sync else self.module.no_sync()), self._autocast():
                        loss, logs = self.module(batch)
                    (loss / cfg.optim.accumulate).backward()
                    micro_logs.append(logs)
                    clips_since += batch["video"].shape[0] * self.info.world_size
                logs = {k: sum(m[k] for m in micro_logs) / len(micro_logs) for k in micro_logs[0]}
                if not math.isfinite(logs["loss"]):
                    raise FloatingPointError(f"step {self.step}: loss is {logs['loss']}; stopping before the "
                                             "weights are corrupted (lower optim.lr or use train.precision=fp32)")
                if cfg.optim.grad_clip > 0:
                    logs["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(self.module.parameters(),
                                                                             cfg.optim.grad_clip))
                self.optimizer.step()
                self.scheduler.step()
                self.step += 1
                logs["lr"] = self.scheduler.get_last_lr()[0]
                self.logger.step(1, {"loss": logs["loss"]})
                if self.step % cfg.train.log_every == 0 or self.step == cfg.train.max_steps:
                    now = time.perf_counter()
                    logs["clips_per_s"] = clips_since / max(now - t_last, 1e-9)
                    t_last, clips_since = now, 0
                    logs = {k: (all_reduce_mean(v) if k.endswith("loss") else v) for k, v in logs.items()}
                    logs["epoch"] = self.epoch
                    self.logger.log(self.step, logs)
                    last_logs = logs
                if cfg.train.checkpoint_every and self.step % cfg.train.checkpoint_every == 0:
                    self.save()
            if not cfg.train.checkpoint_every or self.step % cfg.train.checkpoint_every:
                self.save()
        finally:
            self.logger.close()
        return last_logs

    def _autocast(self):
        return autocast(self.info.device, self.autocast_dtype)
