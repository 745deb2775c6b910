"""model.video.token_keep (models/video_encoder.py): patch-token dropping while training, FLIP/UMT style."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from structvl.config import ConfigError, load_config
from structvl.models.video_encoder import VideoEncoder

from helpers import TINY


def _encoder(*extra):
    cfg = load_config("demo", TINY + ["model.video.image_size=64", *extra])
    torch.manual_seed(0)
    return VideoEncoder(cfg.model.video)


@pytest.mark.parametrize("attention", ["joint", "divided"])
def test_training_keeps_the_same_random_positions_in_every_time_step(attention, one_thread):
    encoder = _encoder("model.video.token_keep=0.25", f"model.video.attention={attention}",
                       "model.video.num_group_tokens=3").train()
    video = torch.randn(3, 4, 3, 64, 64)
    torch.manual_seed(1)
    out = encoder(video)
    n = encoder.grid ** 2  # 64 patch positions, 16 kept
    assert out.tokens.shape == (3, encoder.time, 16, encoder.width) and out.kept.shape == (3, 16)
    assert out.group_assignment.shape == (3, encoder.time, 16)
    for row in out.kept:  # distinct positions in raster order, and not the same ones for every clip
        assert row.unique().numel() == 16 and torch.equal(row, row.sort().values) and int(row.max()) < n
    assert not torch.equal(out.kept[0], out.kept[1])
    # the kept tokens are the embedded patches at those positions (position embeddings included)
    torch.manual_seed(1)
    kept_embeddings, kept = encoder._drop_tokens(encoder.embed(video))
    torch.testing.assert_close(kept_embeddings, encoder.embed(video)[torch.arange(3)[:, None], :, kept].transpose(1, 2))
    # seeded: the same draw again
    torch.manual_seed(1)
    assert torch.equal(encoder(video).kept, out.kept)
    out.pooled.sum().backward()  # and it trains


def test_evaluation_sees_every_token_and_training_costs_about_the_kept_share(one_thread):
    blocks = ["model.video.depth=4", "model.video.width=64"]  # blocks, not the patch embedding, dominate the cost
    full, dropped = _encoder(*blocks), _encoder(*blocks, "model.video.token_keep=0.5")
    dropped.load_state_dict(full.state_dict())
    video = torch.randn(2, 4, 3, 64, 64)
    dropped.eval()
    with torch.no_grad():
        torch.testing.assert_close(dropped(video).pooled, full.eval()(video).pooled)
        assert dropped(video).kept is None
    flops = []
    for encoder in (full.train(), dropped.train()):
        with FlopCounterMode(display=False) as counter:
            encoder(video)
        flops.append(counter.get_total_flops())
    assert 0.4 < flops[1] / flops[0] < 0.6


def test_token_keep_is_checked_before_any_work():
    with pytest.raises(ConfigError, match="model.video.token_keep"):
        load_config("demo", TINY + ["model.video.token_keep=0"])
    with pytest.raises(ConfigError, match="model.video.token_keep.*fusion"):
        load_config("demo", TINY + ["model.video.token_keep=0.5", "model.fusion.layers=1"])
