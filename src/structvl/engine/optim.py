"""AdamW with weight-decay groups and a linear-warmup + cosine schedule."""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from structvl.config import OptimConfig

# Parameters that must not be decayed even though they are matrices: embedding tables of positions and
# special tokens (decaying them toward 0 erases position information).
_NO_DECAY_NAMES = ("pos_embed", "time_embed", "cls_token", "mask_token", "position_embeddings",
                   "token_type_embeddings", "group_token", "log_inv_temperature")


def param_groups(module: nn.Module, cfg: OptimConfig) -> list[dict]:
    """Four groups: {decay, no decay} x {text encoder, everything else} (the text encoder may use text_lr)."""
    text_lr = cfg.text_lr if cfg.text_lr is not None else cfg.lr
    groups = {(d, t): [] for d in (True, False) for t in (True, False)}
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        decay = p.ndim >= 2 and not any(k in name for k in _NO_DECAY_NAMES)
        groups[(decay, "text_encoder." in name)].append(p)
    out = []
    for (decay, is_text), params in groups.items():
        if params:
            out.append({"params": params, "weight_decay": cfg.weight_decay if decay else 0.0,
                        "lr": text_lr if is_text else cfg.lr})
    return out


def build_optimizer(module: nn.Module, cfg: OptimConfig) -> torch.optim.AdamW:
    fused = any(p.is_cuda for p in module.parameters())
    return torch.optim.AdamW(param_groups(module, cfg), lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps,
                             fused=fused or None)


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
