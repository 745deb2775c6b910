"""The pre-training loop: data position, accumulation, bf16/fp16 autocast, clipping, DDP/FSDP, checkpoints.

The trainer knows nothing about objectives: it calls `module(batch) -> (loss, logs)` on a
`PretrainingModule` and steps the optimizer. Everything needed to continue a run exactly (weights,
optimizer, scheduler, grad scaler, step, epoch, samples consumed this epoch, RNG states) goes into each
checkpoint.

Non-finite numbers are never trained on: a step whose loss or gradient holds a NaN or inf is skipped (the
optimizer and scheduler do not move, the step is not counted, `nonfinite_skipped` in the logged metrics counts
it), and `train.max_nonfinite_steps` such steps in a row stop the run with `NonFiniteTrainingError`. The weights
are checked after every optimizer step too: a step that makes them non-finite stops the run at once, before
anything is saved, so the last checkpoint is the last good one (and `checkpoint.save_checkpoint` refuses
non-finite weights as well). Under fp16 a non-finite gradient is the grad scaler's business (it skips the step
and lowers the scale, counted in `skipped_steps`); a non-finite loss is skipped and counted as above.

Host-device syncs: the logs stay tensors on the device (summed over micro-steps) and reach the host in one
transfer at `train.log_every` steps. Between log steps a step waits for the device twice: for the all-finite flag
of the loss and gradient norm before the optimizer moves the weights, and for the weights' own flag after.
"""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn

from structvl.config import ConfigError, RunConfig
from structvl.data.dataset import build_dataloader
from structvl.data.sampler import ResumableDistributedSampler
from structvl.engine import checkpoint as ckpt
from structvl.engine.logger import RunLogger
from structvl.engine.optim import build_optimizer, build_scheduler
from structvl.models.video_text import VideoTextModel
from structvl.runtime.distributed import DistInfo, all_reduce_mean
from structvl.runtime.errors import RunStopped
from structvl.runtime.nonfinite import all_finite, nonfinite_names
from structvl.runtime.precision import autocast, autocast_dtype, grad_scaler, set_tf32
from structvl.runtime.process import worker_start_method

log = logging.getLogger("structvl")


class NonFiniteTrainingError(RunStopped):
    """Training stopped because its numbers went non-finite; the last checkpoint is the last good one."""


def move_to(batch: dict, device: torch.device) -> dict:
    return {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}


def unscale_and_clip(optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, parameters,
                     grad_clip: float) -> torch.Tensor:
    """Unscale the gradients (fp16), clip them when `grad_clip` > 0, and return their total norm as a device
    tensor (no sync of its own): it is finite exactly when every gradient is."""
    if scaler.is_enabled():
        scaler.unscale_(optimizer)
    if grad_clip > 0:
        norm = torch.nn.utils.clip_grad_norm_(parameters, grad_clip)
    else:
        grads = [p.grad for p in parameters if p.grad is not None]
        norm = torch.nn.utils.get_total_norm(grads) if grads else torch.zeros(())
    if hasattr(norm, "full_tensor"):  # FSDP: a DTensor; the plain tensor every rank agrees on (no host sync)
        norm = norm.full_tensor()
    return norm


def finite_flag(loss: torch.Tensor, grad_norm: torch.Tensor, scaler: torch.amp.GradScaler) -> torch.Tensor:
    """The device flag a step is taken on: the loss finite and, unless fp16's scaler skips non-finite gradients
    itself, the gradient norm too (no sync of its own)."""
    finite = torch.isfinite(loss)
    return finite if scaler.is_enabled() else finite & torch.isfinite(grad_norm)


def wrap_distributed(module: nn.Module, cfg: RunConfig, info: DistInfo) -> nn.Module:
    """DDP by default; FSDP2 (`fully_shard`, each transformer block a unit) for models too big to replicate."""
    if not info.enabled:
        return module
    if cfg.train.distributed == "fsdp":
        from torch.distributed.fsdp import fully_shard
        for block in module.model.video_encoder.blocks:
            fully_shard(block)
        for layer in module.model.text_encoder.layers:
            fully_shard(layer)
        fully_shard(module)
        return module
    ids = [info.local_rank] if info.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(module, device_ids=ids)


class Trainer:
    def __init__(self, cfg: RunConfig, module: nn.Module, dataset, collator, run_dir: Path, info: DistInfo,
                 skip_ledger=None, sampler=None):

        self.cfg, self.info, self.run_dir = cfg, info, Path(run_dir)
        set_tf32(cfg.train.tf32)
        self.raw_module = module.to(info.device)
        if cfg.train.compile:  # before DDP wraps it; compiled in place, so parameter names do not change
            for model in self.raw_module.modules():
                if isinstance(model, VideoTextModel):
                    model.compile_towers()
        self.module = wrap_distributed(self.raw_module, cfg, info)
        self.dataset = dataset
        self.optimizer = build_optimizer(self.module, cfg.optim)
        # Models whose logit scale is clamped after each optimizer step (open_clip's rule; see VideoTextModel).
        self.clamped = [m for m in self.raw_module.modules() if isinstance(m, VideoTextModel)]
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
                                       timeout=cfg.data.loader_timeout if cfg.data.num_workers > 0 else 0,
                                       start_method=worker_start_method())
        if self.sampler is not None and len(self.sampler) < cfg.train.batch_size:
            raise ConfigError(f"config key 'train.batch_size': {cfg.train.batch_size} is larger than the "
                             f"{len(self.sampler)} training items each rank gets")
        self.skip_ledger = skip_ledger
        self.step, self.epoch, self.samples_seen = 0, 0, 0
        self.nonfinite_skipped = 0  # optimizer steps skipped for a non-finite loss or gradient, over the whole run
        self.autocast_dtype = autocast_dtype(cfg.train.precision, self.info.device)
        self.scaler = grad_scaler(self.autocast_dtype, self.info.device)  # fp16 only; a pass-through otherwise
        self.skipped_steps = torch.zeros((), device=self.info.device)  # optimizer steps the fp16 scaler skipped

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
                 "optimizer": optim_state, "scheduler": self.scheduler.state_dict(),
                 "scaler": self.scaler.state_dict(), "skipped_steps": int(self.skipped_steps),
                 "rng": self._rng_states(), "world_size": self.info.world_size,
                 "nonfinite_skipped": self.nonfinite_skipped}
        path, error = None, None
        if self.info.is_main:
            try:
                path = ckpt.save_checkpoint(self.run_dir, self.step, module_state, state,
                                            keep=self.cfg.train.keep_checkpoints)
            except RunStopped as e:  # every rank stops, rather than the others waiting at the barrier for ever
                error = e
        if not self._all_ranks_ok(error is None):
            raise error or RunStopped(f"rank 0 could not save step {self.step} (its message says why)")
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
        """Load the run's newest loadable checkpoint (`checkpoint.find_resumable`); returns whether there was
        one. Raises CheckpointError when checkpoints exist but none loads."""
        found = ckpt.find_resumable(self.run_dir)
        if found is None:
            if self.info.is_main:
                log.info("no checkpoint in %s: starting at step 0", self.run_dir / "checkpoints")
            return False
        path, module_state, state = found
        if self._is_fsdp():
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict
            set_state_dict(self.raw_module, self.optimizer, model_state_dict=module_state,
                           optim_state_dict=state["optimizer"], options=StateDictOptions(full_state_dict=True))
        else:
            self.raw_module.load_state_dict(module_state)
            self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.skipped_steps.fill_(state.get("skipped_steps", 0))
        self.step, self.epoch, self.samples_seen = state["step"], state["epoch"], state["samples_seen"]
        self.nonfinite_skipped = state.get("nonfinite_skipped", 0)
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
            if self.skip_ledger is not None and self.info.is_main and self.skip_ledger.noteworthy:
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
        consecutive = 0  # non-finite steps in a row
        t_last, clips_since = time.perf_counter(), 0
        try:
            while self.step < cfg.train.max_steps:
                self.module.train()
                self.optimizer.zero_grad(set_to_none=True)
                sums: dict[str, torch.Tensor] = {}  # this step's logs summed over micro-steps, on the device
                loss_sum = torch.zeros((), device=self.info.device)  # the loss trained on, over micro-steps
                for micro in range(cfg.optim.accumulate):
                    batch = None
                    while batch is None:  # a batch whose samples were all skipped is not a step
                        raw = next(batches)
                        if self.skip_ledger is not None:  # skipped clips, captions the knowledge cache lacked
                            self.skip_ledger.update_batch(raw)
                        batch = self._equal_size(raw)
                    batch = move_to(batch, self.info.device)
                    sync = micro == cfg.optim.accumulate - 1 or not isinstance(
                        self.module, nn.parallel.DistributedDataParallel)
                    with (contextlib.nullcontext() if sync else self.module.no_sync()), self._autocast():
                        loss, logs = self.module(batch)
                    self.scaler.scale(loss / cfg.optim.accumulate).backward()
                    loss_sum = loss_sum + loss.detach().float()
                    for k, v in logs.items():
                        sums[k] = sums[k] + v if k in sums else torch.as_tensor(v, device=self.info.device)
                    clips_since += batch["video"].shape[0] * self.info.world_size
                grad_norm = unscale_and_clip(self.optimizer, self.scaler, list(self.module.parameters()),
                                             cfg.optim.grad_clip)
                finite = finite_flag(loss_sum, grad_norm, self.scaler)
                if not self._all_ranks_ok(bool(finite)):  # the step's one sync before the weights move
                    consecutive += 1
                    self._skip_step(float(loss_sum) / cfg.optim.accumulate, float(grad_norm), consecutive)
                    continue
                consecutive = 0
                if self.scaler.is_enabled():
                    self.skipped_steps += (~torch.isfinite(grad_norm)).float()
                self.scaler.step(self.optimizer)
                self.scaler.update()
                self._check_weights()
                for model in self.clamped:
                    model.clamp_logit_scale_()
                self.scheduler.step()
                self.step += 1
                self.logger.step(1)
                if self.step % cfg.train.log_every == 0 or self.step == cfg.train.max_steps:
                    logs = self._host_logs(sums, cfg.optim.accumulate, grad_norm)
                    now = time.perf_counter()
                    logs["clips_per_s"] = clips_since / max(now - t_last, 1e-9)
                    t_last, clips_since = now, 0
                    logs["lr"] = self.scheduler.get_last_lr()[0]
                    logs["nonfinite_skipped"] = self.nonfinite_skipped
                    logs["epoch"] = self.epoch
                    self.logger.step(0, {"loss": logs["loss"]})
                    self.logger.log(self.step, logs)
                    last_logs = logs
                if cfg.train.checkpoint_every and self.step % cfg.train.checkpoint_every == 0:
                    self.save()
            if not cfg.train.checkpoint_every or self.step % cfg.train.checkpoint_every:
                self.save()
        finally:
            self.logger.close()
        return last_logs

    def _host_logs(self, sums: dict[str, torch.Tensor], micro_steps: int, grad_norm: torch.Tensor | None) -> dict:
        """This step's logs (micro-step means; losses averaged over ranks) as Python floats: every value goes
        to the host in one transfer (and one all-reduce for the losses)."""
        values = {k: v / micro_steps for k, v in sums.items()}
        if grad_norm is not None:
            values["grad_norm"] = grad_norm
        if self.scaler.is_enabled():
            values["skipped_steps"] = self.skipped_steps
            values["loss_scale"] = self.scaler.get_scale()
        keys = list(values)
        stacked = torch.stack([torch.as_tensor(values[k], device=self.info.device).float() for k in keys])
        losses = torch.tensor([k.endswith("loss") for k in keys], device=stacked.device)
        if self.info.enabled:  # ranks' mean of the losses; other values are this rank's
            stacked = torch.where(losses, all_reduce_mean(stacked), stacked)
        return dict(zip(keys, stacked.double().cpu().tolist()))

    def _autocast(self):
        return autocast(self.info.device, self.autocast_dtype)

    # ------------------------------------------------------------------ non-finite numbers
    def _all_ranks_ok(self, ok: bool) -> bool:
        """True only when every rank says ok (ranks must skip or stop together, or their collectives desync)."""
        if not self.info.enabled:
            return ok
        flag = torch.tensor([0.0 if ok else 1.0], device=self.info.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return not bool(flag.item())

    def _skip_step(self, loss: float, grad_norm: float, consecutive: int) -> None:
        """Drop this step's gradients and count it; stop the run after train.max_nonfinite_steps in a row."""
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler.is_enabled():  # the scaler saw the gradients (unscale_), so it must hear of the step
            self.scaler.update()
        self.nonfinite_skipped += 1
        limit = self.cfg.train.max_nonfinite_steps
        what = f"loss {loss:.4g}, gradient norm {grad_norm:.4g}"
        self.logger.message(f"step {self.step + 1}: non-finite loss or gradient ({what}); optimizer step skipped "
                            f"({consecutive} in a row of train.max_nonfinite_steps={limit}, "
                            f"{self.nonfinite_skipped} in this run)")
        self.logger.log(self.step, {"nonfinite_skipped": self.nonfinite_skipped}, kind="nonfinite")
        if consecutive >= limit:
            kept = ckpt.latest_checkpoint(self.run_dir, quiet=True)
            raise NonFiniteTrainingError(
                f"{consecutive} steps in a row had a non-finite loss or gradient (train.max_nonfinite_steps={limit}, "
                f"last: {what}); stopped after step {self.step} without saving, last checkpoint: "
                f"{kept if kept else 'none'}; lower optim.lr, try train.precision=fp32 or check the data")

    def _check_weights(self) -> None:
        """Stop at once when the optimizer step just taken made a weight non-finite: nothing is saved."""
        if self._all_ranks_ok(all_finite(self.module.parameters())):
            return
        names = nonfinite_names(dict(self.raw_module.named_parameters())) or ["some weights"]
        kept = ckpt.latest_checkpoint(self.run_dir, quiet=True)
        raise NonFiniteTrainingError(
            f"the optimizer step after step {self.step} made {', '.join(names)} non-finite; stopped without "
            f"saving, last checkpoint: {kept if kept else 'none'}; lower optim.lr or optim.grad_clip")
