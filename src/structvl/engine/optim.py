"""AdamW with weight-decay and learning-rate groups (pretrained vs new parameters, optional layer-wise decay)
and a linear-warmup + cosine schedule."""

from __future__ import annotations

import math
import re

import torch
import torch.nn as nn

from structvl.config import ConfigError, OptimConfig

# Parameters that must not be decayed even though they are matrices: embedding tables of positions and
# special tokens (decaying them toward 0 erases position information).
_NO_DECAY_NAMES = ("pos_embed", "time_embed", "cls_token", "mask_token", "position_embeddings",
                   "token_type_embeddings", "group_token", "log_inv_temperature")
# Layer-wise decay: the embedding parameters of a tower (layer 0), and where a layer index is in a name
# (the video encoder's blocks.i., BERT/RoBERTa's encoder.layer.i., DistilBERT's transformer.layer.i.).
_EMBEDDING_NAMES = ("patch_embed", "cls_token", "pos_embed", "time_embed", "norm_pre", "embeddings")
_LAYER = re.compile(r"(?:^|\.)(?:blocks|layer)\.(\d+)\.")


def _pretrained_model(module: nn.Module) -> tuple[str, nn.Module | None]:
    """The VideoTextModel inside `module` (under DDP's "module." and PretrainingModule's "model." prefixes) and
    its name prefix; ("", None) when there is none."""
    for prefix, sub in module.named_modules():
        if hasattr(sub, "pretrained_parameters"):
            return (prefix + "." if prefix else ""), sub
    return "", None


def layer_id(name: str, depth: int) -> int:
    """A tower parameter's layer for layer-wise decay: embeddings 0, block/layer i -> i + 1, the rest depth + 1."""
    match = _LAYER.search(name)
    if match:
        return int(match.group(1)) + 1
    if any(k in name for k in _EMBEDDING_NAMES):
        return 0
    return depth + 1


def param_groups(module: nn.Module, cfg: OptimConfig) -> list[dict]:
    """AdamW groups by (weight decay, learning rate).

    No decay for biases, norms and the embedding tables in `_NO_DECAY_NAMES`. Rates: `optim.lr` for parameters
    the run starts from scratch, `optim.pretrained_lr` for the video tower's parameters loaded from
    model.video.init, `optim.text_lr` for the text encoder (default: pretrained_lr when it was loaded from a
    checkpoint, else lr); with `optim.layer_decay` < 1 a pretrained parameter of layer l of L is scaled by
    layer_decay^(L + 1 - l) (`layer_id`).
    """
    prefix, model = _pretrained_model(module)
    pretrained = {prefix + n for n in model.pretrained_parameters} if model is not None else set()
    pretrained_lr = cfg.pretrained_lr if cfg.pretrained_lr is not None else cfg.lr
    depths = {}
    if model is not None:
        depths = {"video_encoder.": model.video_encoder.cfg.depth, "text_encoder.": len(model.text_encoder.layers)}
    groups: dict[tuple[float, float], list] = {}
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        decay = p.ndim >= 2 and not any(k in name for k in _NO_DECAY_NAMES)
        is_text = "text_encoder." in name
        if is_text:
            lr = cfg.text_lr if cfg.text_lr is not None else pretrained_lr if name in pretrained else cfg.lr
        else:
            lr = pretrained_lr if name in pretrained else cfg.lr
        if name in pretrained and cfg.layer_decay < 1.0:
            tower = "text_encoder." if is_text else "video_encoder."
            depth = depths[tower]
            lr *= cfg.layer_decay ** (depth + 1 - layer_id(name.split(tower, 1)[-1], depth))
        groups.setdefault((cfg.weight_decay if decay else 0.0, lr), []).append(p)
    return [{"params": params, "weight_decay": wd, "lr": lr} for (wd, lr), params in groups.items()]


def build_optimizer(module: nn.Module, cfg: OptimConfig) -> torch.optim.AdamW:
    """AdamW over `param_groups`. `optim.implementation: auto` takes torch's fused kernel (one pass over each
    parameter's weight, gradient and moments instead of a dozen element-wise ops; on a CPU torch's default is a
    Python loop over parameters) where every parameter is a plain tensor on a device that has it; DTensors (FSDP)
    keep the default implementation unless they are on CUDA. "fused", "foreach" and "for_loop" ask for one."""
    params = list(module.parameters())
    plain = all(type(p.data) is torch.Tensor for p in params)
    fused = all(p.device.type in _FUSED_DEVICES for p in params) if plain else all(p.is_cuda for p in params)
    if cfg.implementation == "fused" and not fused:
        raise ConfigError("config key 'optim.implementation': 'fused' needs every parameter a plain tensor on a CPU "
                          "or CUDA device (or a DTensor on CUDA); use auto, foreach or for_loop")
    kernel = {"auto": {"fused": fused or None}, "fused": {"fused": True}, "foreach": {"foreach": True},
              "for_loop": {"foreach": False}}[cfg.implementation]
    return torch.optim.AdamW(param_groups(module, cfg), lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, **kernel)


_FUSED_DEVICES = ("cpu", "cuda")  # where torch has the fused AdamW kernel (torch >= 2.4 on CPU)


class WarmupCosine:
    """lr multiplier: linear 0 -> 1 over `warmup` steps, then cosine 1 -> min_ratio at `total` steps.
    A class (not a closure) so the scheduler's state_dict holds plain numbers."""

    def __init__(self, warmup: int, total: int, min_ratio: float):
        self.warmup, self.total, self.min_ratio = warmup, total, min_ratio

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / max(1, self.warmup)
        progress = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
        return self.min_ratio + (1 - self.min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig, total_steps: int):
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, WarmupCosine(cfg.warmup_steps, total_steps, cfg.min_lr_ratio))
