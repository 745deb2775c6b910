"""Logging without device syncs (engine/trainer.py, objectives/pretraining.py): the values a step logs stay
tensors on the device and reach the host only at `train.log_every` steps, in one transfer per log step."""

from __future__ import annotations

import json
import typing

import torch

from structvl.engine import trainer as trainer_module
from structvl.engine.logger import RunLogger
from structvl.engine.pretrain import run_pretraining
from structvl.objectives.pretraining import PretrainingModule

from helpers import tiny_cfg

# What moves a tensor's value to the host (a device-to-host sync on a GPU).
_HOST = {torch.Tensor.item, torch.Tensor.__float__, torch.Tensor.__int__, torch.Tensor.__bool__,
         torch.Tensor.tolist, torch.Tensor.numpy, torch.Tensor.cpu, torch.Tensor.__format__}


class Watched(torch.Tensor):
    """A logged value: records each time it (or anything computed from it) is moved to the host."""
    events: typing.ClassVar[list] = []

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if func in _HOST or (func is torch.Tensor.to and any(str(a) == "cpu" for a in args[1:])):
            cls.events.append(("host", getattr(func, "__name__", str(func))))
        return super().__torch_function__(func, types, args, kwargs or {})


def test_logged_values_reach_the_host_only_at_log_steps(tiny_corpus, tmp_path, monkeypatch, one_thread):
    events = Watched.events = []
    forward = PretrainingModule.forward

    def watched_forward(self, batch):
        loss, logs = forward(self, batch)
        assert all(torch.is_tensor(v) for v in logs.values()), "logs must stay tensors, not Python numbers"
        return loss, {k: v.as_subclass(Watched) for k, v in logs.items()}

    step = trainer_module.unscale_and_clip

    def counted_step(*args, **kwargs):
        events.append(("step",))
        return step(*args, **kwargs)

    log = RunLogger.log

    def counted_log(self, step_, scalars, kind="train"):
        if kind == "train":
            events.append(("log", step_))
        return log(self, step_, scalars, kind)

    monkeypatch.setattr(PretrainingModule, "forward", watched_forward)
    monkeypatch.setattr(trainer_module, "unscale_and_clip", counted_step)
    monkeypatch.setattr(RunLogger, "log", counted_log)
    cfg = tiny_cfg(tiny_corpus, "train.max_steps=7", "train.log_every=3", "train.checkpoint_every=0",
                   "optim.accumulate=2", "train.precision=fp32")
    run_pretraining(cfg, tmp_path / "run")

    assert [e[1] for e in events if e[0] == "log"] == [3, 6, 7]  # every 3rd step and the last
    assert sum(e[0] == "step" for e in events) == 7
    # Every move of a logged value to the host happens after a log step's optimizer step and before its log
    # record: a host event followed by another optimizer step (or by nothing) was a sync between log steps.
    for i, event in enumerate(events):
        if event[0] != "host":
            continue
        following = next((e for e in events[i + 1:] if e[0] != "host"), ("end",))
        assert following[0] == "log", (f"logged value moved to the host by {event[1]} between log steps", events)
    # ... and at each log step they go together: one `.cpu()` of the stacked values and its `.tolist()`, not a
    # transfer per value
    hosts = [sum(1 for e in events[:k] if e[0] == "host") for k, e in enumerate(events) if e[0] == "log"]
    assert [b - a for a, b in zip([0] + hosts, hosts)] == [2, 2, 2], events
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["kind"] == "train"]
    assert [r["step"] for r in train] == [3, 6, 7]
    assert all(isinstance(r["loss"], float) and isinstance(r["contrastive/loss"], float) for r in train)

