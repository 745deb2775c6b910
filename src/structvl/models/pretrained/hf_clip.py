"""transformers' CLIP vision tower (a `save_pretrained` directory of CLIPVisionModel, CLIPVisionModelWithProjection
or CLIPModel: config.json + model.safetensors) -> our names. Under the `vision_model.` prefix:

    (transformers >= 5 saves a CLIPVisionModel's keys without the prefix; both load.)
    embeddings.class_embedding (D)            -> cls_token (1, 1, D)
    embeddings.patch_embedding.weight         -> patch_embed.proj.weight  (no bias: ours starts at 0)
    embeddings.position_embedding.weight      -> pos_embed (1, 1 + N, D)
    pre_layrnorm (sic)                        -> norm_pre   (model.video.pre_norm: true)
    encoder.layers.i.layer_norm1              -> blocks.i.norm1
        .self_attn.{q,k,v}_proj               -> blocks.i.attn.qkv   (concatenated q, k, v)
        .self_attn.out_proj                   -> blocks.i.attn.proj
        .layer_norm2 / .mlp.fc1 / .mlp.fc2    -> blocks.i.norm2 / mlp.fc1 / mlp.fc2
    post_layernorm                            -> norm  (transformers applies it to the [CLS] state only; ours to
                                                 every token, as open_clip's ln_post does)
    visual_projection.weight (E, D)           -> head.weight (no bias: 0)

The text tower (`text_model.*`, `text_projection`, `logit_scale`) and the position-id buffer are dropped.
config.json's activation and LayerNorm eps must equal model.video.act / layer_norm_eps (no weight shows them).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from structvl.config import ConfigError, VideoEncoderConfig
from structvl.models.pretrained.common import Converted

_LAYER = {"layer_norm1": "norm1", "self_attn.out_proj": "attn.proj", "layer_norm2": "norm2", "mlp.fc1": "mlp.fc1",
          "mlp.fc2": "mlp.fc2"}
_TOP = {"vision_model.embeddings.patch_embedding.weight": "patch_embed.proj.weight",
        "vision_model.pre_layrnorm.weight": "norm_pre.weight", "vision_model.pre_layrnorm.bias": "norm_pre.bias",
        "vision_model.post_layernorm.weight": "norm.weight", "vision_model.post_layernorm.bias": "norm.bias",
        "visual_projection.weight": "head.weight"}
_ENCODER = re.compile(r"vision_model\.encoder\.layers\.(\d+)\.(.+)\.(weight|bias)")
_BARE = ("embeddings.", "encoder.", "pre_layrnorm.", "post_layernorm.")
_ACT = {"quick_gelu": "quick_gelu", "gelu": "gelu"}  # transformers' hidden_act -> model.video.act


def check_config(path: str | Path, cfg: VideoEncoderConfig) -> None:
    """What config.json says and no weight shape shows: the activation and the LayerNorm eps."""
    config = json.loads((Path(path) / "config.json").read_text())
    vision = config.get("vision_config", config)
    act, eps = vision.get("hidden_act", "quick_gelu"), vision.get("layer_norm_eps", 1e-5)
    if _ACT.get(act) != cfg.act:
        raise ConfigError(f"config key 'model.video.act': {cfg.act!r}, but {path} was trained with {act!r}")
    if abs(eps - cfg.layer_norm_eps) > 1e-12:
        raise ConfigError(f"config key 'model.video.layer_norm_eps': {cfg.layer_norm_eps}, but {path} uses {eps}")


def convert(state: dict[str, torch.Tensor]) -> Converted:
    out = Converted(zeros=["patch_embed.proj.bias", "head.bias"], antialias=False)
    qkv: dict[tuple[str, str], dict[str, tuple[str, torch.Tensor]]] = {}
    for key, value in state.items():
        if key.startswith(_BARE):  # transformers >= 5 saves a CLIPVisionModel without the prefix
            key = "vision_model." + key
        layer = _ENCODER.fullmatch(key)
        if not (key.startswith("vision_model.") or key == "visual_projection.weight"):
            out.dropped.append(key)
        elif key in _TOP:
            out.put(_TOP[key], value, key)
        elif key == "vision_model.embeddings.class_embedding":
            out.put("cls_token", value.reshape(1, 1, -1), key)
        elif key == "vision_model.embeddings.position_embedding.weight":
            out.put("pos_embed", value.unsqueeze(0), key)
        elif key == "vision_model.embeddings.position_ids":
            out.dropped.append(key)
        elif layer and layer.group(2) in _LAYER:
            out.put(f"blocks.{layer.group(1)}.{_LAYER[layer.group(2)]}.{layer.group(3)}", value, key)
        elif layer and layer.group(2) in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
            qkv.setdefault((layer.group(1), layer.group(3)), {})[layer.group(2)[-6]] = (key, value)
        else:
            out.unexpected.append(key)
    for (i, kind), parts in qkv.items():
        if set(parts) != {"q", "k", "v"}:  # a lone q/k/v projection cannot be loaded
            out.unexpected.extend(key for key, _ in parts.values())
            continue
        out.put(f"blocks.{i}.attn.qkv.{kind}", torch.cat([parts[c][1] for c in "qkv"]),
                "+".join(parts[c][0] for c in "qkv"))
    return out
