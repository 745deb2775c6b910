"""Optimizer groups: new parameters at optim.lr, the video tower's loaded parameters at optim.pretrained_lr,
the text encoder at optim.text_lr (or pretrained_lr when it was loaded), with optional layer-wise decay."""

from __future__ import annotations

import pytest
import torch

from structvl.config import (
    ModelConfig,
    OptimConfig,
    TextEncoderConfig,
    TextInitConfig,
    VideoEncoderConfig,
    VideoInitConfig,
)
from structvl.engine.optim import build_optimizer, layer_id, param_groups
from structvl.models.video_text import build_model
from structvl.objectives.pretraining import PretrainingModule


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A 2-block video tower from a timm-named file, with a scratch text tower."""
    from safetensors.torch import save_file

    from structvl.models.video_encoder import VideoEncoder

    path = tmp_path_factory.mktemp("vit") / "vit.safetensors"
    video = dict(image_size=16, num_frames=2, patch_size=8, width=16, depth=2, heads=2)
    image = VideoEncoder(VideoEncoderConfig(**video))
    state = {k: v for k, v in image.state_dict().items() if k != "time_embed"}
    state["patch_embed.proj.weight"] = state["patch_embed.proj.weight"][:, :, 0].contiguous()
    save_file(state, str(path))
    cfg = ModelConfig(video=VideoEncoderConfig(**video, attention="divided",
                                               init=VideoInitConfig(format="timm", path=str(path))),
                      text=TextEncoderConfig(init=TextInitConfig(path="scratch"), width=16, depth=2, heads=2,
                                             intermediate_size=32), embed_dim=8)
    return build_model(cfg)


def rates(module, cfg: OptimConfig) -> dict[str, float]:
    by_param = {id(p): g["lr"] for g in param_groups(module, cfg) for p in g["params"]}
    return {n: by_param[id(p)] for n, p in module.named_parameters()}


def test_pretrained_and_new_parameters_get_their_rates(model):
    lr = rates(model, OptimConfig(lr=1e-3, pretrained_lr=1e-5, text_lr=None))
    assert lr["video_encoder.blocks.1.attn.qkv.weight"] == lr["video_encoder.pos_embed"] == 1e-5  # loaded
    assert lr["video_encoder.time_embed"] == lr["video_encoder.blocks.0.temporal_attn.qkv.weight"] == 1e-3  # new
    assert lr["video_proj.0.weight"] == lr["log_inv_temperature"] == 1e-3
    assert lr["text_encoder.bert.encoder.layer.0.attention.self.query.weight"] == 1e-3  # scratch text: new
    assert rates(model, OptimConfig(lr=1e-3, text_lr=2e-4))["text_encoder.bert.embeddings.word_embeddings.weight"] == 2e-4


def test_layer_decay_scales_the_pretrained_blocks(model):
    lr = rates(PretrainingModule(model, type("C", (), {"objectives": {"contrastive": 1.0}})()),
               OptimConfig(lr=1e-3, pretrained_lr=1e-4, layer_decay=0.5))
    # depth 2: embeddings layer 0 (x 0.5^3), block i layer i + 1, the final norm layer 3 (x 1)
    assert lr["model.video_encoder.patch_embed.proj.weight"] == pytest.approx(1e-4 * 0.5 ** 3)
    assert lr["model.video_encoder.blocks.0.mlp.fc1.weight"] == pytest.approx(1e-4 * 0.5 ** 2)
    assert lr["model.video_encoder.blocks.1.mlp.fc1.weight"] == pytest.approx(1e-4 * 0.5)
    assert lr["model.video_encoder.norm.weight"] == pytest.approx(1e-4)
    assert lr["model.video_encoder.blocks.0.temporal_attn.qkv.weight"] == 1e-3  # new: no decay


def test_layer_ids():
    assert [layer_id(n, 12) for n in ("cls_token", "blocks.0.attn.qkv.weight", "blocks.11.norm1.bias", "norm.weight",
                                       "bert.embeddings.word_embeddings.weight", "bert.encoder.layer.3.output.dense.bias",
                                       "bert.transformer.layer.5.ffn.lin1.weight")] == [0, 1, 12, 13, 0, 4, 6]


def test_each_adamw_implementation_takes_the_same_steps(model):
    """optim.implementation picks torch's kernel (auto = fused on a CPU); the weights after two steps agree up to
    rounding whichever runs. Controls: the kernels really differ (the optimizer's own flags)."""
    torch.manual_seed(0)
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    grads = [{n: torch.randn_like(p) for n, p in model.named_parameters() if p.requires_grad} for _ in range(2)]
    after, flags = {}, {}
    for implementation in ("auto", "fused", "foreach", "for_loop"):
        with torch.no_grad():
            for n, p in model.named_parameters():
                p.copy_(start[n])
        opt = build_optimizer(model, OptimConfig(implementation=implementation))
        for g in grads:
            for n, p in model.named_parameters():
                p.grad = g.get(n)
            opt.step()
        flags[implementation] = (opt.defaults["fused"], opt.defaults["foreach"])
        after[implementation] = {n: p.detach().clone() for n, p in model.named_parameters()}
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.copy_(start[n])
            p.grad = None
    assert flags == {"auto": (True, None), "fused": (True, None), "foreach": (None, True),
                     "for_loop": (None, False)}
    for implementation in ("fused", "foreach", "for_loop"):
        for n in start:
            torch.testing.assert_close(after[implementation][n], after["auto"][n], msg=f"{implementation}: {n}")
    assert any(not torch.equal(after["auto"][n], start[n]) for n in start)  # the steps moved the weights
