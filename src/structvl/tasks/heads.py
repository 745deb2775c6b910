"""Small heads trained on frozen features, the loop that trains them, and top-k accuracy.

Every frozen-feature protocol (linear probe, QA heads, the localization head) is "a few thousand cached
feature rows -> a small module -> a loss", so one loop serves them all: AdamW, shuffled minibatches from a
seeded generator (the same seed gives the same head), cosine learning-rate decay.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn as nn

from structvl.runtime.nonfinite import pessimistic_rank


class PairHead(nn.Module):
    """MLP over [v; t; v*t; |v-t|] of pooled video and text embeddings (same width) -> `out` scores.

    The fallback when the model has no fusion encoder: the element-wise product and difference let a small
    MLP compare the two embeddings feature by feature, which concatenation alone makes it learn from scratch.
    `blind=True` zeroes the video side (a text-only prior baseline with the same capacity).
    """

    def __init__(self, dim: int, hidden: int, out: int, blind: bool = False):
        super().__init__()
        self.blind = blind
        self.mlp = nn.Sequential(nn.Linear(4 * dim, hidden), nn.GELU(), nn.Dropout(0.1), nn.Linear(hidden, out))

    def forward(self, v: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if self.blind:
            v = torch.zeros_like(v)
        return self.mlp(torch.cat([v, t, v * t, (v - t).abs()], dim=-1))


class FusedHead(nn.Module):
    """MLP over the fusion encoder's [CLS] (Clover's QA heads: fused CLS -> MLP -> answers or one score)."""

    def __init__(self, dim: int, hidden: int, out: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(0.1), nn.Linear(hidden, out))

    def forward(self, fused: torch.Tensor) -> torch.Tensor:
        return self.mlp(fused)


def fit_head(step_loss: Callable[[torch.Tensor], torch.Tensor], params: Sequence[nn.Parameter], num_items: int,
             *, epochs: int, batch_size: int, lr: float, weight_decay: float = 0.0, seed: int = 0,
             modules: Sequence[nn.Module] = ()) -> list[float]:
    """Train: for each shuffled minibatch of item indices, `step_loss(indices)` returns the loss.

    `modules` are put in train mode for the loop and back in eval mode after (dropout). Returns the mean
    loss of every epoch, so callers and tests can see that it fell.
    """
    params = [p for p in params if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    steps_per_epoch = max(1, math.ceil(num_items / batch_size))
    total = max(1, epochs * steps_per_epoch)
    schedule = torch.optim.lr_scheduler.LambdaLR(  # cosine decay to 0 over the whole run
        optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    generator = torch.Generator().manual_seed(seed)
    for m in modules:
        m.train()
    history = []
    try:
        for _ in range(epochs):
            order = torch.randperm(num_items, generator=generator)
            losses = []
            for start in range(0, num_items, batch_size):
                loss = step_loss(order[start:start + batch_size])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                losses.append(float(loss.detach()))
            history.append(sum(losses) / len(losses))
    finally:
        for m in modules:
            m.eval()
    return history


def loss_summary(history: Sequence[float], prefix: str) -> dict[str, float]:
    """{prefix/train_loss_first, prefix/train_loss_last}: means over the first and last few steps or epochs
    (single minibatch losses are too noisy to show that training went anywhere)."""
    k = max(1, min(5, len(history) // 5))
    return {f"{prefix}/train_loss_first": sum(history[:k]) / k, f"{prefix}/train_loss_last": sum(history[-k:]) / k}


def topk_accuracy(scores: torch.Tensor, labels: torch.Tensor, ks: Sequence[int] = (1, 5)) -> dict[int, float]:
    """Percentage of rows whose label is among the k highest scores. Ties count against the row (a label
    scored equal to a wrong class ranks below it), so a constant scorer cannot beat chance; a non-finite score
    is the worst (the label's own puts it last, another class's ranks that class above it)."""
    rank = pessimistic_rank(scores, labels)
    return {k: float(100.0 * (rank <= k).float().mean()) for k in ks}


def standardise(train: torch.Tensor, *others: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Scale features by the training rows' mean and std (a linear probe's usual input normalisation)."""
    mean, std = train.mean(0, keepdim=True), train.std(0, keepdim=True).clamp(min=1e-6)
    return tuple((x - mean) / std for x in (train, *others))
