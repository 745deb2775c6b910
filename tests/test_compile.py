"""train.compile (VideoTextModel.compile_towers, engine/trainer.py): a compiled CPU training run computes the
same losses as the eager one, and compiling keeps the parameter names checkpoints are saved under."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from structvl.engine.pretrain import run_pretraining

from helpers import tiny_cfg


def _losses(run_dir) -> list[float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if r["kind"] == "train"]


@pytest.mark.slow
def test_compiled_steps_give_the_eager_losses(tiny_corpus, tmp_path, monkeypatch, one_thread):
    # Dropout under inductor draws from its own generator unless told to fall back to eager's: with it, both
    # runs see the same random numbers and must agree to float tolerance.
    monkeypatch.setattr(torch._inductor.config, "fallback_random", True)
    common = ["train.max_steps=3", "train.log_every=1", "train.checkpoint_every=0", "train.precision=fp32"]
    run_pretraining(tiny_cfg(tiny_corpus, *common), tmp_path / "eager")
    torch._dynamo.reset()
    compiled = run_pretraining(tiny_cfg(tiny_corpus, *common, "train.compile=true"), tmp_path / "compiled")
    torch._dynamo.reset()
    eager_losses, compiled_losses = _losses(tmp_path / "eager"), _losses(tmp_path / "compiled")
    assert len(eager_losses) == 3 and eager_losses[0] != eager_losses[-1]  # the weights moved between steps
    assert compiled_losses == pytest.approx(eager_losses, rel=1e-4)
    # the towers did run compiled, and the checkpoint's names are the eager model's
    assert compiled.model.video_encoder._compiled_call_impl is not None
    eager_keys = load_file(str(tmp_path / "eager" / "checkpoints" / "step_00000003" / "model.safetensors")).keys()
    compiled_keys = load_file(str(tmp_path / "compiled" / "checkpoints" / "step_00000003" / "model.safetensors")).keys()
    assert compiled_keys == eager_keys
