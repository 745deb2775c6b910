"""GroupViT-style grouping of a video's patch tokens into learnable groups (S-ViLM's candidate "regions").

[reconstruction] S-ViLM's video encoder clusters patch tokens with 32 learnable group tokens through
GroupViT grouping blocks (spec: docs/methods-spec.md, "S-ViLM"). The paper's full text was not available
to us; what we built, each choice a config key under `model.video`:

* The group tokens do not join the backbone's self-attention (so joint and divided attention both work
  unchanged and the patch tokens other objectives read are those of the plain encoder). Instead, after each
  block listed in `group_layers`, a `GroupingBlock` reads that block's patch states: the groups first
  cross-attend to the patches (GroupViT's pre-assignment attention), then every patch is assigned to exactly
  one group and each group becomes the mean of its patches. Several grouping layers refine the same groups
  in turn; the last one's assignment is the patch -> group map the encoder returns.
* Assignment: logits = (group queries . patch keys) / sqrt(D); a softmax *over groups* per patch
  (`group_gumbel_tau`, with Gumbel noise while training when `group_gumbel_noise`), made hard (one-hot
  argmax) with the straight-through estimator when `group_hard` - forward pass hard, gradient of the soft
  assignment.
* Group feature = the assignment-weighted mean of the patches' values, projected, plus a residual MLP.
  Groups are over space *and* time (a group is a tube of patches), since a clip's regions move.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def gumbel_softmax_assignment(logits: torch.Tensor, dim: int, tau: float = 1.0, hard: bool = True,
                              noise: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(assignment, soft probabilities) over `dim`.

    soft = softmax((logits + g) / tau) with g Gumbel noise when `noise`, else plain softmax. With `hard`, the
    assignment is one-hot at the argmax of `soft` in the forward pass and carries soft's gradient
    (straight-through: hard - soft.detach() + soft); otherwise it is `soft` itself.
    """
    if noise:
        gumbel = -torch.empty_like(logits).exponential_().log()
        logits = logits + gumbel
    soft = F.softmax(logits.float() / tau, dim=dim).to(logits.dtype)
    if not hard:
        return soft, soft
    index = soft.argmax(dim=dim, keepdim=True)
    one_hot = torch.zeros_like(soft).scatter_(dim, index, 1.0)
    return one_hot - soft.detach() + soft, soft


class GroupingBlock(nn.Module):
    """Groups (B, G, D) x patches (B, M, D) -> new groups (B, G, D), assignment (B, G, M), probabilities (B, G, M).

    `patch_mask` (B, M), True = a real patch: padded time steps are never assigned (they get no group's
    weight, and their assignment column is all zero).
    """

    def __init__(self, dim: int, heads: int, tau: float = 1.0, hard: bool = True, noise: bool = True,
                 mlp_ratio: float = 4.0):
        super().__init__()
        self.tau, self.hard, self.noise = tau, hard, noise
        self.norm_groups = nn.LayerNorm(dim)
        self.norm_patches = nn.LayerNorm(dim)
        # Pre-assignment attention: groups look at the patches before claiming them (GroupViT).
        self.pre_assign = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm_query = nn.LayerNorm(dim)
        self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        self.norm_out = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, groups: torch.Tensor, patches: torch.Tensor, patch_mask: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.norm_patches(patches)
        g = self.norm_groups(groups)
        pad = None if patch_mask is None else ~patch_mask
        g = groups + self.pre_assign(g, x, x, key_padding_mask=pad, need_weights=False)[0]
        q = self.q(self.norm_query(g))
        logits = q @ self.k(x).transpose(1, 2) / math.sqrt(q.shape[-1])  # (B, G, M)
        assign, soft = gumbel_softmax_assignment(logits, dim=1, tau=self.tau, hard=self.hard,
                                                 noise=self.noise and self.training)
        if patch_mask is not None:
            keep = patch_mask[:, None, :].to(assign.dtype)
            assign, soft = assign * keep, soft * keep
        # Mean of each group's patches; an empty group gets a zero mean (its feature is then the MLP's bias).
        count = assign.sum(-1, keepdim=True)
        pooled = (assign @ self.v(x)) / (count.detach().clamp(min=1.0) if self.hard else count + 1e-6)
        out = self.proj(pooled)
        out = out + self.mlp(self.norm_out(out))
        return out, assign, soft
