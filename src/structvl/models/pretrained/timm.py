"""timm's `vit_*` state dict (`torch.save(model.state_dict())` or `safetensors.torch.save_file`, as timm's hub
files are) -> our names. Our encoder is named after timm's ViT, so most keys load as they are:

    patch_embed.proj, cls_token, pos_embed (1, 1 + N, D), norm_pre (CLIP-style timm ViTs), blocks.i.{norm1,
    attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}, norm.

`head.*` (the ImageNet classifier) is dropped by design. Parts our encoder does not have (fc_norm of a
mean-pooled ViT, LayerScale ls1/ls2, register tokens, qk-norm) are unexpected: the run fails unless
model.video.init.allow_missing names them. timm's ViTs use LayerNorm eps 1e-6 (model.video.layer_norm_eps).
"""

from __future__ import annotations

import re

import torch

from structvl.models.pretrained.common import Converted

_KEY = re.compile(r"(patch_embed\.proj|norm_pre|norm|blocks\.\d+\.(norm1|attn\.qkv|attn\.proj|norm2|mlp\.fc1"
                  r"|mlp\.fc2))\.(weight|bias)|cls_token|pos_embed")


def convert(state: dict[str, torch.Tensor]) -> Converted:
    out = Converted()
    for key, value in state.items():
        if key.startswith("head.") or key.startswith("head_drop."):
            out.dropped.append(key)
        elif _KEY.fullmatch(key):
            out.put(key, value, key)
        else:
            out.unexpected.append(key)
    return out
