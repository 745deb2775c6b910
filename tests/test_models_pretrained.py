"""The video tower started from an image model in each library's own format (models/pretrained/): a clip of one
frame (or a static clip) through the loaded encoder gives the source model's image features - [CLS] and patch
tokens, and the projected embedding where the source has one - to 1e-5 in fp32. Source models are built by
their own libraries with random weights, small, and saved as those libraries save them."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from safetensors.torch import save_file

from structvl.config import ConfigError, VideoEncoderConfig, VideoInitConfig
from structvl.models.pretrained import load_video_init
from structvl.models.video_encoder import VideoEncoder

from helpers import DEPTH, EMBED, HEADS, PATCH, WIDTH, open_clip_model, perturb_

ATOL = 1e-5


def video_cfg(fmt: str, path, image_size: int = 32, **kw) -> VideoEncoderConfig:
    clip = fmt in ("open_clip", "hf_clip")
    base = dict(image_size=image_size, num_frames=1, patch_size=PATCH, tubelet_size=1, width=WIDTH, depth=DEPTH,
                heads=HEADS, attention="joint", pre_norm=clip, act="quick_gelu" if clip else "gelu",
                layer_norm_eps=1e-5 if clip else 1e-6, init=VideoInitConfig(format=fmt, path=str(path)))
    base.update(kw)
    return VideoEncoderConfig(**base)


def load(cfg: VideoEncoderConfig, head_dim: int | None = EMBED):
    torch.manual_seed(1)
    encoder = VideoEncoder(cfg).eval()
    head = nn.Linear(WIDTH, head_dim) if head_dim else None
    report = load_video_init(encoder, cfg.init, head)
    return encoder, head, report


def ours(encoder, head, image: torch.Tensor, frames: int = 1) -> dict:
    """[CLS], patch tokens and projected embedding of a clip repeating `image` `frames` times."""
    with torch.no_grad():
        out = encoder(image[:, None].repeat(1, frames, 1, 1, 1))
        result = {"cls": out.pooled, "tokens": out.tokens[:, 0]}
        if head is not None:
            result["embed"] = head(out.pooled)
    return result


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


# ----------------------------------------------------------------------------- open_clip
def open_clip_features(model, image: torch.Tensor) -> dict:
    states = {}
    hook = model.visual.ln_post.register_forward_hook(lambda m, i, o: states.update(x=o))
    with torch.no_grad():
        embed = model.encode_image(image)
    hook.remove()
    return {"cls": states["x"][:, 0], "tokens": states["x"][:, 1:], "embed": embed}


def test_open_clip_one_frame_is_the_image_model(open_clip_lib, tmp_path):
    source = open_clip_model(open_clip_lib)
    torch.save(source.state_dict(), tmp_path / "open_clip_pytorch_model.bin")  # as open_clip's checkpoints are
    encoder, head, report = load(video_cfg("open_clip", tmp_path))  # a directory: its weight file is found
    image = torch.randn(2, 3, 32, 32)
    assert max_diff(ours(encoder, head, image), open_clip_features(source, image)) < ATOL
    assert "head.weight" in report.loaded and "time_embed" in report.new and "patch_embed.proj.bias" in report.new
    assert "text_projection" in report.dropped and "logit_scale" in report.dropped


@pytest.mark.parametrize("inflate", ["average", "center"])
def test_static_clip_through_divided_attention_and_tubelets_is_the_image_model(open_clip_lib, tmp_path, inflate):
    """8 frames, tubelets of 2, divided space-time attention: the temporal branch starts as an identity and the
    inflated kernel embeds a static tubelet as the image kernel embeds the image."""
    source = open_clip_model(open_clip_lib)
    save_file(source.state_dict(), str(tmp_path / "clip.safetensors"))
    cfg = video_cfg("open_clip", tmp_path / "clip.safetensors", num_frames=8, tubelet_size=2, attention="divided")
    cfg.init.inflate = inflate
    encoder, head, report = load(cfg)
    assert "blocks.0.temporal_attn.qkv.weight" in report.new
    image = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = encoder(image[:, None].repeat(1, 8, 1, 1, 1))
    reference = open_clip_features(source, image)
    assert float((out.pooled - reference["cls"]).abs().max()) < ATOL
    for t in range(4):
        assert float((out.tokens[:, t] - reference["tokens"]).abs().max()) < ATOL
    torch.testing.assert_close(head(out.pooled), reference["embed"], rtol=0, atol=ATOL)


def test_open_clip_positions_are_interpolated_as_open_clip_does(open_clip_lib, tmp_path):
    """A 32 px checkpoint in a 48 px encoder equals open_clip's own model at 48 px given the state dict resized
    by open_clip's resize_pos_embed."""
    source = open_clip_model(open_clip_lib)
    torch.save(source.state_dict(), tmp_path / "clip.pt")
    encoder, head, _ = load(video_cfg("open_clip", tmp_path / "clip.pt", image_size=48))
    bigger = open_clip_model(open_clip_lib, image_size=48, seed=5)
    state = source.state_dict()
    open_clip_lib.model.resize_pos_embed(state, bigger)
    bigger.load_state_dict(state)
    image = torch.randn(2, 3, 48, 48)
    assert max_diff(ours(encoder, head, image), open_clip_features(bigger, image)) < ATOL


# ----------------------------------------------------------------------------- timm
def timm_model(timm, image_size: int = 32, seed: int = 0):
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=image_size, patch_size=PATCH,
                              embed_dim=WIDTH, depth=DEPTH, num_heads=HEADS, num_classes=10)
    return perturb_(model, seed)


def timm_features(model, image: torch.Tensor) -> dict:
    with torch.no_grad():
        x = model.forward_features(image)
    return {"cls": x[:, 0], "tokens": x[:, 1:]}


def test_timm_one_frame_is_the_image_model(timm_lib, tmp_path):
    source = timm_model(timm_lib)
    save_file(source.state_dict(), str(tmp_path / "model.safetensors"))  # as timm's hub files are
    encoder, head, report = load(video_cfg("timm", tmp_path / "model.safetensors"), head_dim=None)
    image = torch.randn(2, 3, 32, 32)
    assert max_diff(ours(encoder, head, image), timm_features(source, image)) < ATOL
    assert "patch_embed.proj.bias" in report.loaded and report.dropped == ["head.bias", "head.weight"]


def test_timm_positions_are_interpolated_as_timm_does(timm_lib, tmp_path):
    source = timm_model(timm_lib)
    torch.save(source.state_dict(), tmp_path / "vit.pth")
    encoder, head, _ = load(video_cfg("timm", tmp_path / "vit.pth", image_size=48), head_dim=None)
    bigger = timm_model(timm_lib, image_size=48, seed=5)
    from timm.models.vision_transformer import checkpoint_filter_fn
    bigger.load_state_dict(checkpoint_filter_fn(source.state_dict(), bigger))
    image = torch.randn(2, 3, 48, 48)
    assert max_diff(ours(encoder, head, image), timm_features(bigger, image)) < ATOL


# ----------------------------------------------------------------------------- transformers CLIP
def hf_clip_model(seed: int = 0, vision_only: bool = False):
    from transformers import CLIPConfig, CLIPModel, CLIPVisionConfig, CLIPVisionModel

    vision = dict(hidden_size=WIDTH, intermediate_size=4 * WIDTH, num_hidden_layers=DEPTH,
                  num_attention_heads=HEADS, image_size=32, patch_size=PATCH)
    torch.manual_seed(seed)
    if vision_only:
        return perturb_(CLIPVisionModel(CLIPVisionConfig(**vision)), seed)
    config = CLIPConfig(text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=2, vocab_size=64), vision_config=vision,
                        projection_dim=EMBED)
    return perturb_(CLIPModel(config), seed)


def hf_clip_features(model, image: torch.Tensor, **kw) -> dict:
    vision = getattr(model, "vision_model", model)  # transformers >= 5: CLIPVisionModel is the tower itself
    with torch.no_grad():
        out = vision(pixel_values=image, **kw)
        states = vision.post_layernorm(out.last_hidden_state)  # transformers norms only [CLS]; open_clip all
        result = {"cls": out.pooler_output, "tokens": states[:, 1:]}
        assert float((states[:, 0] - out.pooler_output).abs().max()) == 0
        if hasattr(model, "visual_projection"):
            result["embed"] = model.visual_projection(out.pooler_output)
    return result


def test_hf_clip_one_frame_is_the_image_model(tmp_path):
    source = hf_clip_model()
    source.save_pretrained(tmp_path)
    encoder, head, report = load(video_cfg("hf_clip", tmp_path))
    image = torch.randn(2, 3, 32, 32)
    assert max_diff(ours(encoder, head, image), hf_clip_features(source, image)) < ATOL
    assert "blocks.1.attn.qkv.weight" in report.loaded
    assert any(k.startswith("text_model.") for k in report.dropped) and "logit_scale" in report.dropped


def test_hf_clip_vision_model_and_interpolation(tmp_path):
    """CLIPVisionModel (no projection) at 48 px equals transformers' interpolate_pos_encoding=True."""
    source = hf_clip_model(vision_only=True)
    source.save_pretrained(tmp_path)
    encoder, head, _ = load(video_cfg("hf_clip", tmp_path, image_size=48), head_dim=None)
    image = torch.randn(2, 3, 48, 48)
    reference = hf_clip_features(source, image, interpolate_pos_encoding=True)
    assert max_diff(ours(encoder, head, image), reference) < ATOL


def test_hf_clip_activation_must_match_its_config(tmp_path):
    hf_clip_model(vision_only=True).save_pretrained(tmp_path)
    with pytest.raises(ConfigError, match="model.video.act.*quick_gelu"):
        load(video_cfg("hf_clip", tmp_path, act="gelu"), head_dim=None)


# ----------------------------------------------------------------------------- keys that do not load
def test_a_key_that_does_not_load_fails_with_its_name(timm_lib, tmp_path):
    save_file(timm_model(timm_lib).state_dict(), str(tmp_path / "vit.safetensors"))
    path = tmp_path / "vit.safetensors"
    with pytest.raises(ConfigError, match=r"checkpoint keys unused \(blocks\.1\.attn\.proj\.bias"):
        load(video_cfg("timm", path, depth=1), head_dim=None)  # the checkpoint's second block has no home
    with pytest.raises(ConfigError, match=r"parameters not in the checkpoint \(blocks\.2\.attn\.proj\.bias"):
        load(video_cfg("timm", path, depth=3), head_dim=None)
    with pytest.raises(ConfigError, match=r"parameters not in the checkpoint \(norm_pre\.bias, norm_pre\.weight\)"):
        load(video_cfg("timm", path, pre_norm=True), head_dim=None)
    with pytest.raises(ConfigError, match=r"has shape \(64,\), the model.s blocks.0.attn.proj.bias \(32,\)"):
        load(video_cfg("timm", path, width=32, heads=2), head_dim=None)
    cfg = video_cfg("timm", path, depth=1)
    cfg.init.allow_missing = ["blocks.1.*"]  # named: the run goes on without them
    _, _, report = load(cfg, head_dim=None)
    assert not any(k.startswith("blocks.1.") for k in report.loaded)


def test_clip_projection_without_a_linear_head_is_an_unused_key(open_clip_lib, tmp_path):
    torch.save(open_clip_model(open_clip_lib).state_dict(), tmp_path / "clip.pt")
    with pytest.raises(ConfigError, match=r"checkpoint keys unused \(visual\.proj\)"):
        load(video_cfg("open_clip", tmp_path / "clip.pt"), head_dim=None)


def test_unreadable_checkpoint_is_a_config_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="holds none of"):
        load(video_cfg("timm", tmp_path / "empty"), head_dim=None)
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="is not a state dict"):
        load(video_cfg("timm", tmp_path / "bad.pt"), head_dim=None)
