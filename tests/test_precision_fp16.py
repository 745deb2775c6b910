"""train.precision=fp16 with a gradient scaler, and train.tf32 (runtime/precision.py, engine/trainer.py): an
overflowing step is skipped, counted and never reaches the weights; gradients are unscaled before clipping; the
scaler's state survives a checkpoint."""

from __future__ import annotations

import json

import pytest
import torch

from structvl.engine import checkpoint as ckpt
from structvl.engine.pretrain import run_pretraining
from structvl.engine.trainer import unscale_and_clip
from structvl.objectives.pretraining import PretrainingModule
from structvl.runtime.precision import autocast_dtype, grad_scaler, resolved_name, set_tf32

from helpers import tiny_cfg


def test_fp16_resolves_with_an_active_scaler_and_only_then():
    assert autocast_dtype("fp16", "cpu") is torch.float16 and resolved_name("fp16", "cpu") == "fp16"
    assert grad_scaler(torch.float16, "cpu").is_enabled()
    assert not grad_scaler(torch.bfloat16, "cpu").is_enabled() and not grad_scaler(None, "cpu").is_enabled()


def test_gradients_are_unscaled_before_clipping_and_stepping():
    """A scaled backward then `unscale_and_clip` clips the true gradients: same norm and, after the scaler's
    step, same new weights as the unscaled step."""
    torch.manual_seed(0)
    results = []
    for dtype in (torch.float16, None):
        torch.manual_seed(0)
        layer = torch.nn.Linear(8, 4)
        optimizer = torch.optim.SGD(layer.parameters(), lr=0.1)
        scaler = grad_scaler(dtype, "cpu")
        loss = layer(torch.ones(3, 8)).pow(2).sum()
        scaler.scale(loss).backward()
        norm = unscale_and_clip(optimizer, scaler, list(layer.parameters()), grad_clip=0.5)
        scaler.step(optimizer)
        scaler.update()
        results.append((float(norm), layer.weight.detach().clone()))
    (scaled_norm, scaled_w), (plain_norm, plain_w) = results
    assert scaled_norm == pytest.approx(plain_norm, rel=1e-5) and plain_norm > 0.5  # the clip did act
    torch.testing.assert_close(scaled_w, plain_w)


def _run(tiny_corpus, path, monkeypatch, inject_at=None):
    forward = PretrainingModule.forward
    calls = []

    def forward_with_inf(self, batch):  # a finite loss whose gradient overflows, as fp16 gradients do
        loss, logs = forward(self, batch)
        calls.append(1)
        if len(calls) == inject_at:
            loss = loss.clone()
            loss.register_hook(lambda grad: grad * float("inf"))
        return loss, logs

    monkeypatch.setattr(PretrainingModule, "forward", forward_with_inf)
    cfg = tiny_cfg(tiny_corpus, "train.precision=fp16", "train.max_steps=5", "train.checkpoint_every=0")
    result = run_pretraining(cfg, path)
    rows = [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]
    state = ckpt.load_train_state(ckpt.latest_checkpoint(path))
    steps_taken = {int(s["step"]) for s in state["optimizer"]["state"].values()}
    return result, [r for r in rows if r["kind"] == "train"], state, steps_taken


def test_fp16_skips_an_injected_inf_step_counts_it_and_checkpoints_the_scaler(tiny_corpus, tmp_path, monkeypatch,
                                                                              one_thread):
    _, control, control_state, control_taken = _run(tiny_corpus, tmp_path / "control", monkeypatch)
    result, rows, state, taken = _run(tiny_corpus, tmp_path / "inf", monkeypatch, inject_at=3)
    assert result.metrics["train/fp16"] == 1.0
    before = control[-1]["skipped_steps"]
    assert rows[-1]["skipped_steps"] == before + 1  # the injected step, and only it, came on top
    assert [r["skipped_steps"] for r in rows][2] == before + 1 and rows[1]["skipped_steps"] == before
    # the skipped step never reached the weights: AdamW took one step fewer
    assert taken == {5 - before - 1} and control_taken == {5 - before}
    # the scale halved at the overflow, and the checkpoint holds it (and the count) for a resume
    assert rows[2]["loss_scale"] == rows[1]["loss_scale"] / 2
    assert state["scaler"]["scale"] == rows[-1]["loss_scale"] and state["skipped_steps"] == before + 1
    assert control_state["scaler"]["scale"] == control[-1]["loss_scale"]


def test_tf32_switch_reaches_the_cuda_backends(tiny_corpus, tmp_path, one_thread):
    matmul = torch.backends.cuda.matmul
    try:
        run_pretraining(tiny_cfg(tiny_corpus, "train.tf32=true", "train.max_steps=1", "train.checkpoint_every=0"),
                        tmp_path / "run")
        assert matmul.fp32_precision == "tf32" and torch.backends.cudnn.conv.fp32_precision == "tf32"
        set_tf32(False)
        assert matmul.fp32_precision == "ieee"
    finally:
        set_tf32(False)
