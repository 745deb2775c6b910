"""VideoTextModel's temperature follows open_clip: the logit scale is clamped in the parameter after each
optimizer step, so a scale that reached its bound still has a gradient and can come back."""

from __future__ import annotations

import math

import pytest
import torch

from structvl.config import ModelConfig, TextEncoderConfig, TextInitConfig, VideoEncoderConfig
from structvl.models.video_text import build_model


def tiny() -> ModelConfig:
    return ModelConfig(video=VideoEncoderConfig(image_size=16, num_frames=2, patch_size=8, width=16, depth=1, heads=2),
                       text=TextEncoderConfig(init=TextInitConfig(path="scratch"), width=16, depth=1, heads=2,
                                              intermediate_size=32), embed_dim=8)


def test_logit_scale_is_clamped_after_the_step_and_can_move_back():
    model = build_model(tiny())
    optimizer = torch.optim.SGD([model.log_inv_temperature], lr=1.0)
    bound = math.log(100)
    for _ in range(3):  # a loss that wants an ever larger scale pushes the parameter past ln 100 ...
        optimizer.zero_grad()
        (-model.logit_scale / 10).backward()
        optimizer.step()
        model.clamp_logit_scale_()  # ... and the clamp after the step puts it back on the bound
        assert float(model.log_inv_temperature.detach()) == pytest.approx(bound, abs=1e-6)
    optimizer.zero_grad()
    model.logit_scale.backward()  # at the bound the scale still has its gradient (no clamp in the forward)
    assert float(model.log_inv_temperature.grad) == pytest.approx(100.0, rel=1e-5)
    optimizer.step()
    model.clamp_logit_scale_()
    assert float(model.log_inv_temperature.detach()) < bound - 1  # so a loss that wants it smaller moves it back


def test_logit_scale_never_goes_below_one():
    model = build_model(tiny())
    with torch.no_grad():
        model.log_inv_temperature.fill_(-3.0)
    model.clamp_logit_scale_()
    assert float(model.logit_scale) == 1.0
