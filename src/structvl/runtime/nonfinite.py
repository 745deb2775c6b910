"""Non-finite numbers (NaN, +inf, -inf): never scored as anything but the worst, never trained on, never saved.

A comparison with NaN is always false, so a metric that asks "is the true answer's score above the others?"
as `(others > true).sum() == 0` counts a NaN model as perfect, and `argmax` picks a NaN entry as the maximum.
The metrics therefore rank through `pessimistic_rank`: a non-finite score of the true item puts it last, a
non-finite score of any other item ranks that item above it, and ties count against the true item (a constant
model cannot beat chance). Each metric also counts the non-finite scores it saw (`NonFiniteTally`) and says so
once in the log and as `<prefix>/nonfinite_scores` in its metrics (absent when there were none).

Training uses `all_finite` on the loss, the gradients (one fused norm) and, after each step, the weights.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping

import numpy as np
import torch

log = logging.getLogger("structvl")


def count_nonfinite(x) -> int:
    """Number of NaN / inf entries of a tensor, array or number."""
    if torch.is_tensor(x):
        return int((~torch.isfinite(x)).sum()) if x.is_floating_point() else 0
    return int((~np.isfinite(np.asarray(x, dtype=np.float64))).sum())


class NonFiniteTally:
    """Counts the scores a metric looked at and how many of them were not finite."""

    def __init__(self, prefix: str):
        self.prefix, self.seen, self.nonfinite = prefix, 0, 0

    def add(self, scores) -> int:
        """Count `scores` (tensor / array / number); returns how many of them are not finite."""
        n = count_nonfinite(scores)
        self.nonfinite += n
        self.seen += int(np.prod(getattr(scores, "shape", ()) or (1,)))
        return n

    def report(self, metrics: dict | None = None) -> dict:
        """Log a warning when some score was not finite and add `<prefix>/nonfinite_scores` to `metrics`."""
        metrics = {} if metrics is None else metrics
        if self.nonfinite:
            log.warning("%s: %d of %d scores are not finite (NaN or inf); each was scored as the worst possible",
                        self.prefix, self.nonfinite, self.seen)
            metrics[f"{self.prefix}/nonfinite_scores"] = float(self.nonfinite)
        return metrics


def pessimistic_rank(scores: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1-based rank of column `target[i]` in row i of `scores` (N, C), higher scores first.

    Every other column whose score is >= the target's (ties count against the target) or not finite ranks
    above it; a target whose own score is not finite ranks last (C). A negative target (an answer outside the
    classifier's vocabulary) also ranks last: `rank == 1` then never holds.
    """
    scores = scores.float()
    valid = target >= 0
    index = target.clamp(min=0).long()[:, None]
    true = scores.gather(1, index)
    bad = ~torch.isfinite(scores)
    above = (scores >= true) | bad
    above.scatter_(1, index, False)  # the target itself
    rank = 1 + above.sum(1)
    last = torch.full_like(rank, scores.shape[1])
    return torch.where(valid & torch.isfinite(true[:, 0]), rank, last)


def top1_hits(scores: torch.Tensor, target: torch.Tensor, tally: NonFiniteTally | None = None) -> torch.Tensor:
    """Bool (N,): whether the target is strictly the best-scored column of its row (see `pessimistic_rank`)."""
    if tally is not None:
        tally.add(scores)
    return pessimistic_rank(scores, target) == 1


def _local(t: torch.Tensor) -> torch.Tensor:
    """A tensor's own entries: an FSDP2 shard (DTensor) checks its local part, every rank its own."""
    t = t.detach()
    return t.to_local() if hasattr(t, "to_local") else t


def all_finite(tensors: Iterable[torch.Tensor]) -> bool:
    """Whether every entry of every floating tensor is finite (one fused norm per device, one sync). For
    sharded tensors this rank's shard only: the caller combines the ranks' answers."""
    floats = [_local(t) for t in tensors if t is not None and t.is_floating_point()]
    if not floats:
        return True
    by_device: dict[torch.device, list[torch.Tensor]] = {}
    for t in floats:
        by_device.setdefault(t.device, []).append(t)
    # A norm is non-finite exactly when some entry is (or when finite entries overflow it, values that
    # large are no better), and torch._foreach_norm computes all of a device's norms in a few kernels.
    flags = [torch.isfinite(torch.stack(torch._foreach_norm([t.float() for t in ts]))).all().cpu()
             for ts in by_device.values()]
    return bool(torch.stack(flags).all())


def nonfinite_names(state: Mapping[str, torch.Tensor], limit: int = 3) -> list[str]:
    """Up to `limit` keys of `state` whose tensors hold a non-finite entry (for error messages)."""
    names = []
    for name, t in state.items():
        if torch.is_tensor(t) and t.is_floating_point() and not bool(torch.isfinite(_local(t)).all()):
            names.append(name)
            if len(names) == limit:
                break
    return names


def pessimistic_order(scores: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    """Indices sorting `scores` (N,) from highest to lowest for a ranking metric (average precision), stable
    for equal finite scores, a non-finite score the worst for the ranking: a negative scored so comes before
    every finite score, a positive scored so after every one."""
    scores, positives = scores.detach().float().cpu().numpy(), positives.detach().cpu().numpy().astype(bool)
    finite = np.isfinite(scores)
    group = np.where(finite, 1, np.where(positives, 2, 0))
    key = np.where(finite, -scores, 0.0)  # np.lexsort: the last key is the primary one, ties keep index order
    return torch.from_numpy(np.lexsort((key, group)))
