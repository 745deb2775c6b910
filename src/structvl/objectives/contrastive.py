"""Symmetric video<->text InfoNCE with negatives from every rank (the loss all three papers build on).

Each rank scores its local rows against the *global* columns (B_local x B_global logits, not B_global^2),
so memory grows linearly with the number of ranks; `all_gather_with_grad` routes gradients back to the
rank that owns each embedding, so the result equals the single-process loss on the global batch. The logits are
computed in fp32 whatever the autocast (`runtime.precision.full_precision`).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from structvl.runtime.distributed import all_gather_with_grad, rank
from structvl.runtime.precision import full_precision


def info_nce(video: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor,
             extra_text_negatives: torch.Tensor | None = None,
             video_negative_weights: torch.Tensor | None = None,
             extra_negative_mask: torch.Tensor | None = None,
             extra_negative_weight: float = 1.0) -> dict[str, torch.Tensor]:
    """Symmetric InfoNCE between L2-normalised local embeddings `video` and `text` (B, E), rows paired.

    extra_text_negatives: optional (B, K, E) per-video extra caption negatives (e.g. CLOP's constructed hard
        negatives), appended to that video's video->text denominator only.
    video_negative_weights: optional (B, B_global) multiplicative weights on the video->text negatives'
        exp-logits (knowledge-guided re-weighting); the positive keeps weight 1.
    Returns {"loss", "v2t", "t2v"} where the losses are means over this rank's rows.
    """
    video, text = video.float(), text.float()  # fp32 logits whatever the autocast (runtime/precision.py says why)
    all_video = all_gather_with_grad(video)
    all_text = all_gather_with_grad(text)
    b = video.shape[0]
    targets = torch.arange(b, device=video.device) + rank() * b
    with full_precision(video.device.type):
        logits_v2t = logit_scale * video @ all_text.t()  # (B, B_global)
        logits_t2v = logit_scale * text @ all_video.t()
        if extra_text_negatives is not None:
            extra = logit_scale * torch.einsum("be,bke->bk", video, extra_text_negatives.float())
    if video_negative_weights is not None:
        # exp(l) * w == exp(l + log w); the positive's weight is forced to 1.
        w = video_negative_weights.clone()
        w[torch.arange(b), targets] = 1.0
        logits_v2t = logits_v2t + torch.log(w.clamp(min=1e-6))
    if extra_text_negatives is not None:
        if extra_negative_weight != 1.0:
            extra = extra + torch.log(torch.tensor(extra_negative_weight, device=extra.device))
        if extra_negative_mask is not None:
            extra = extra.masked_fill(~extra_negative_mask, float("-inf"))
        logits_v2t = torch.cat([logits_v2t, extra], dim=1)
    v2t = F.cross_entropy(logits_v2t, targets)
    t2v = F.cross_entropy(logits_t2v, targets)
    return {"loss": 0.5 * (v2t + t2v), "v2t": v2t, "t2v": t2v}


class ContrastiveObjective(nn.Module):
    """The global video-text InfoNCE on the pooled, projected embeddings."""

    def __init__(self, cfg, model, context):
        super().__init__()

    def forward(self, batch: dict, outputs, model) -> dict[str, torch.Tensor]:
        out = info_nce(outputs.video.embed, outputs.text.embed, model.logit_scale)
        with torch.no_grad():
            out["accuracy"] = (outputs.video.embed @ outputs.text.embed.t()).argmax(1).eq(
                torch.arange(len(outputs.video.embed), device=outputs.video.embed.device)).float().mean()
        return out
