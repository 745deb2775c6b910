"""open_clip's CLIP state dict (`torch.save(model.state_dict())`, or its hub files open_clip_model.safetensors /
open_clip_pytorch_model.bin) -> our names. Only `visual.*` is the image tower; the rest (the text transformer,
token and position tables, text_projection, logit_scale) is dropped by design.

    visual.conv1.weight                      -> patch_embed.proj.weight  (no bias: ours starts at 0)
    visual.class_embedding (D)               -> cls_token (1, 1, D)
    visual.positional_embedding (1 + N, D)   -> pos_embed (1, 1 + N, D)
    visual.ln_pre                            -> norm_pre   (model.video.pre_norm: true)
    visual.transformer.resblocks.i.ln_1      -> blocks.i.norm1
        .attn.in_proj_{weight,bias}          -> blocks.i.attn.qkv   (q, k, v stacked in the same order)
        .attn.out_proj                       -> blocks.i.attn.proj
        .ln_2 / .mlp.c_fc / .mlp.c_proj      -> blocks.i.norm2 / mlp.fc1 / mlp.fc2
    visual.ln_post                           -> norm
    visual.proj (D, E), used as x @ proj     -> head.weight = proj.T (the video projection; no bias: 0)
"""

from __future__ import annotations

import re

import torch

from structvl.models.pretrained.common import Converted

_BLOCK = {"ln_1": "norm1", "attn.in_proj": "attn.qkv", "attn.out_proj": "attn.proj", "ln_2": "norm2",
          "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2"}
_TOP = {"visual.conv1.weight": "patch_embed.proj.weight", "visual.ln_pre.weight": "norm_pre.weight",
        "visual.ln_pre.bias": "norm_pre.bias", "visual.ln_post.weight": "norm.weight",
        "visual.ln_post.bias": "norm.bias"}
_RESBLOCK = re.compile(r"visual\.transformer\.resblocks\.(\d+)\.(.+)[._](weight|bias)")


def convert(state: dict[str, torch.Tensor]) -> Converted:
    out = Converted(zeros=["patch_embed.proj.bias", "head.bias"])
    for key, value in state.items():
        block = _RESBLOCK.fullmatch(key)
        if not key.startswith("visual."):
            out.dropped.append(key)
        elif key in _TOP:
            out.put(_TOP[key], value, key)
        elif key == "visual.class_embedding":
            out.put("cls_token", value.reshape(1, 1, -1), key)
        elif key == "visual.positional_embedding":
            out.put("pos_embed", value.unsqueeze(0), key)
        elif key == "visual.proj":
            out.put("head.weight", value.t(), key)
        elif block and block.group(2) in _BLOCK:
            out.put(f"blocks.{block.group(1)}.{_BLOCK[block.group(2)]}.{block.group(3)}", value, key)
        else:  # LayerScale, attention pooling, ...: parts our encoder does not have
            out.unexpected.append(key)
    return out
