"""Video transformer over space-time patches (ViT / TimeSformer family).

Input (B, T, C, H, W) -> tubelet patch embedding -> [CLS] + T'*N patch tokens with learned spatial and
temporal position embeddings -> transformer blocks (joint space-time or divided time-then-space
attention) -> the pooled [CLS] embedding *and* the patch tokens (B, T', N, D), which S-ViLM's grouping and
Clover's fusion encoder consume. While training with `model.video.token_keep` < 1, a random subset of the
patch positions goes through the blocks (FLIP/UMT token dropping) and N is the number kept.

Every attention is `F.scaled_dot_product_attention` on the fused QKV projection's output viewed per head (no
copy; its output's transpose back is a view too), so each device picks its fastest kernel (flash attention on
GPUs). Under bf16/fp16 autocast on a CPU without AMX that kernel is slow in low precision, so attention runs as
two matmuls and a soft-max in bf16 where bf16 matmuls are fast, else the kernel in fp32
(`runtime.precision.attention_path`; scores beyond `MATMUL_ATTENTION_MAX_SCORES` keep the kernel). Sequences of at
most `model.video.matmul_attention_max_len` tokens (divided attention's temporal step) run as matmuls on any
device and in any precision (`matmul_attention`).

Parameter names follow timm's ViT (patch_embed.proj, cls_token, pos_embed, blocks.i.attn.qkv, ...). An image
model (open_clip, timm or transformers' CLIP) is loaded into it by models/pretrained/, whose parts images don't
have start so that a one-frame clip is the image model: CLIP's ln_pre is `norm_pre` (model.video.pre_norm),
its QuickGELU `model.video.act`, its ln_post `norm`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from structvl.config import VideoEncoderConfig
from structvl.models.grouping import GroupingBlock
from structvl.runtime.precision import attention_path


# The matmul path keeps each call's B x H x N x N scores for the backward (about 6 bytes a score: the soft-max's
# fp32 output and its bf16 copy); past this many scores (~0.8 GB) a call keeps the fused kernel, which keeps none.
MATMUL_ATTENTION_MAX_SCORES = 1 << 27


def matmul_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v written out: for short sequences, where a fused kernel's tiles are mostly padding,
    and for bf16 on CPUs whose fused kernel is slow in bf16. Under autocast the matmuls run in the autocast dtype
    and the soft-max in fp32, as autocast does everywhere."""
    scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return scores.softmax(-1).to(v.dtype) @ v


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, matmul_max_len: int = 0):
        super().__init__()
        self.heads = heads
        self.matmul_max_len = matmul_max_len  # model.video.matmul_attention_max_len
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        # key_padding_mask: (b, n) True = attend. SDPA wants a boolean mask broadcastable to (b, h, n, n).
        mask = key_padding_mask[:, None, None, :] if key_padding_mask is not None else None
        path = "kernel" if q.dtype == torch.float32 else attention_path(q.device.type, q.dtype)
        if path == "matmul" and b * self.heads * n * n > MATMUL_ATTENTION_MAX_SCORES:
            path = "fp32"
        if n <= self.matmul_max_len or path == "matmul":
            out = matmul_attention(q, k, v, mask)
        elif path == "fp32":  # a CPU whose kernel is the faster in fp32 (runtime.precision.attention_path)
            with torch.autocast(q.device.type, enabled=False):
                out = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask).to(q.dtype)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    """OpenAI CLIP's activation, x * sigmoid(1.702 x): its weights were trained with it, not with GELU."""
    return x * torch.sigmoid(1.702 * x)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, act: str = "gelu"):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)
        self.act = quick_gelu if act == "quick_gelu" else F.gelu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class DropPath(nn.Module):
    """Stochastic depth: drop a whole residual branch per sample."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = x.new_empty(x.shape[0], *([1] * (x.dim() - 1))).bernoulli_(1 - self.p)
        return x * keep / (1 - self.p)


class Block(nn.Module):
    """Pre-norm transformer block. `divided=True` adds a temporal attention before the spatial one."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, drop_path: float, divided: bool,
                 act: str = "gelu", eps: float = 1e-5, matmul_max_len: int = 0):
        super().__init__()
        self.divided = divided
        if divided:
            self.temporal_norm = nn.LayerNorm(dim, eps=eps)
            self.temporal_attn = Attention(dim, heads, matmul_max_len)
            # Zero-init the temporal output so an inflated image ViT starts as a per-frame image model.
            nn.init.zeros_(self.temporal_attn.proj.weight)
            nn.init.zeros_(self.temporal_attn.proj.bias)
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, heads, matmul_max_len)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor, t: int, frame_mask: torch.Tensor | None) -> torch.Tensor:
        if not self.divided:
            x = x + self.drop_path(self.attn(self.norm1(x), frame_mask))
        else:
            cls, patches = x[:, :1], x[:, 1:]
            b, tn, d = patches.shape
            n = tn // t
            # Temporal attention: each spatial location attends over time.
            xt = patches.view(b, t, n, d).transpose(1, 2).reshape(b * n, t, d)
            tmask = frame_mask[:, 1:].view(b, t, n)[:, :, 0].repeat_interleave(n, 0) if frame_mask is not None else None
            xt = xt + self.drop_path(self.temporal_attn(self.temporal_norm(xt), tmask))
            patches = xt.view(b, n, t, d).transpose(1, 2).reshape(b, tn, d)
            # Spatial attention: each frame attends over its patches and the (shared) CLS token.
            xs = torch.cat([cls.repeat_interleave(t, 0), patches.reshape(b * t, n, d)], dim=1)
            xs = xs + self.drop_path(self.attn(self.norm1(xs)))
            cls = xs[:, :1].view(b, t, 1, d)
            if frame_mask is not None:  # average the per-frame CLS updates over valid frames only
                fm = frame_mask[:, 1:].view(b, t, n)[:, :, :1, None].to(cls.dtype)
                cls = (cls * fm).sum(1) / fm.sum(1).clamp(min=1)
            else:
                cls = cls.mean(1)
            x = torch.cat([cls, xs[:, 1:].reshape(b, tn, d)], dim=1)
        return x + self.drop_path(self.mlp(self.norm2(x)))


@dataclass
class VideoEncoderOutput:
    pooled: torch.Tensor  # (B, D) the clip vector: final [CLS] state, or mean patch state (model.video.pooling)
    tokens: torch.Tensor  # (B, T', N, D) final patch states
    frame_mask: torch.Tensor  # (B, T') True where the tubelet holds a real frame
    # Token dropping (model.video.token_keep < 1, training only): the patch positions (B, N) kept in every time
    # step, indices into the full grid; None when every patch went through.
    kept: torch.Tensor | None = None
    # S-ViLM groups (only when model.video.num_group_tokens > 0; see models/grouping.py):
    groups: torch.Tensor | None = None  # (B, G, D) group features
    group_assignment: torch.Tensor | None = None  # (B, T', N) long: each patch's group (-1: padded time step)
    group_probs: torch.Tensor | None = None  # (B, G, T', N) soft assignment p(group | patch)

    def per_time_features(self) -> torch.Tensor:
        """(B, T', D) mean of each time step's patch states (per-time-step features for temporal objectives)."""
        return self.tokens.mean(dim=2)


class VideoEncoder(nn.Module):
    def __init__(self, cfg: VideoEncoderConfig):
        super().__init__()
        self.cfg = cfg
        self.grid = cfg.image_size // cfg.patch_size
        self.time = cfg.num_frames // cfg.tubelet_size
        self.width = cfg.width
        self.activation_checkpointing = cfg.activation_checkpointing  # VideoTextModel.set_activation_checkpointing
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv3d(
            3, cfg.width, kernel_size=(cfg.tubelet_size, cfg.patch_size, cfg.patch_size),
            stride=(cfg.tubelet_size, cfg.patch_size, cfg.patch_size))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.width))
        # Spatial table includes the CLS slot (timm layout); the temporal table is per tubelet.
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.grid ** 2, cfg.width))
        self.time_embed = nn.Parameter(torch.zeros(1, self.time, cfg.width))
        rates = torch.linspace(0, cfg.drop_path, cfg.depth).tolist()
        self.blocks = nn.ModuleList(
            Block(cfg.width, cfg.heads, cfg.mlp_ratio, rate, cfg.attention == "divided", cfg.act, cfg.layer_norm_eps,
                  cfg.matmul_attention_max_len)
            for rate in rates)
        self.norm = nn.LayerNorm(cfg.width, eps=cfg.layer_norm_eps)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.time_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        if cfg.num_group_tokens:  # built last, so a model without groups initialises exactly as before
            self.group_layers = sorted({i % cfg.depth for i in (cfg.group_layers or [cfg.depth - 1])})
            self.group_token = nn.Parameter(torch.zeros(1, cfg.num_group_tokens, cfg.width))
            nn.init.trunc_normal_(self.group_token, std=0.02)
            self.grouping = nn.ModuleList(
                GroupingBlock(cfg.width, cfg.heads, cfg.group_gumbel_tau, cfg.group_hard, cfg.group_gumbel_noise)
                for _ in self.group_layers)
        # CLIP's ln_pre; built last (and only when asked) so other models initialise exactly as before.
        self.norm_pre = nn.LayerNorm(cfg.width, eps=cfg.layer_norm_eps) if cfg.pre_norm else None

    def embed(self, video: torch.Tensor) -> torch.Tensor:
        """(B, T, C, H, W) -> patch embeddings (B, T', N, D), position embeddings included (no CLS)."""
        x = self.patch_embed.proj(video.transpose(1, 2))  # (B, D, T', g, g)
        x = x.flatten(3).permute(0, 2, 3, 1)  # (B, T', N, D)
        return x + self.pos_embed[:, None, 1:] + self.time_embed[:, :, None]

    def forward(self, video: torch.Tensor, frame_mask: torch.Tensor | None = None,
                patch_embeddings: torch.Tensor | None = None) -> VideoEncoderOutput:
        """`patch_embeddings` lets a caller (Clover's video masking) edit the embedded patches first."""
        x = self.embed(video) if patch_embeddings is None else patch_embeddings
        kept = None
        if self.training and self.cfg.token_keep < 1.0:
            x, kept = self._drop_tokens(x)
        b, t, n, d = x.shape
        tube_mask = self._tube_mask(frame_mask, b, x.device)
        token_mask = None
        if tube_mask is not None and not bool(tube_mask.all()):
            token_mask = torch.cat([tube_mask.new_ones(b, 1), tube_mask.repeat_interleave(n, 1)], dim=1)
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(b, -1, -1)
        x = torch.cat([cls, x.reshape(b, t * n, d)], dim=1)
        if self.norm_pre is not None:
            x = self.norm_pre(x)
        groups = assign = probs = None
        if self.cfg.num_group_tokens:
            groups = self.group_token.expand(b, -1, -1)
            patch_mask = None if token_mask is None else token_mask[:, 1:]
        recomputed = (self.cfg.checkpoint_blocks or len(self.blocks)) if self.activation_checkpointing else 0
        for i, block in enumerate(self.blocks):
            if i < recomputed and self.training:
                x = checkpoint(block, x, t, token_mask, use_reentrant=False)
            else:
                x = block(x, t, token_mask)
            if self.cfg.num_group_tokens and i in self.group_layers:  # groups read this block's patch states
                groups, assign, probs = self.grouping[self.group_layers.index(i)](groups, x[:, 1:], patch_mask)
        x = self.norm(x)
        valid = tube_mask if tube_mask is not None else x.new_ones(b, t, dtype=torch.bool)
        tokens = x[:, 1:].reshape(b, t, n, d)
        out = VideoEncoderOutput(pooled=self._pool(x[:, 0], tokens, valid), tokens=tokens, frame_mask=valid,
                                 kept=kept)
        if groups is not None:
            out.groups = groups
            assignment = assign.detach().argmax(1)
            if patch_mask is not None:  # padded time steps belong to no group
                assignment = assignment.masked_fill(~patch_mask, -1)
            out.group_assignment = assignment.view(b, t, n)
            out.group_probs = probs.view(b, -1, t, n)
        return out

    def _drop_tokens(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keep round(N * token_keep) random patch positions per clip, the same ones in every time step (tube
        dropping, as VideoMAE masks), so divided attention's temporal step still sees one place across time.
        (B, T', N, D) -> (B, T', K, D) and the kept positions (B, K) in raster order. Position embeddings were
        added before, so each kept token still says where it was."""
        b, t, n, d = x.shape
        keep = max(1, round(n * self.cfg.token_keep))
        kept = torch.rand(b, n, device=x.device).argsort(dim=1)[:, :keep].sort(dim=1).values
        return x.gather(2, kept[:, None, :, None].expand(b, t, keep, d)), kept

    def _pool(self, cls: torch.Tensor, tokens: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """The clip vector (`model.video.pooling`): the [CLS] state, or the mean patch state over real frames."""
        if self.cfg.pooling == "cls":
            return cls
        per_time = tokens.mean(dim=2)  # (B, T', D): as VideoEncoderOutput.per_time_features
        weight = valid[..., None].to(per_time.dtype)
        return (per_time * weight).sum(1) / weight.sum(1).clamp(min=1)

    def _tube_mask(self, frame_mask: torch.Tensor | None, b: int, device) -> torch.Tensor | None:
        """A tubelet is valid when any of its frames is."""
        if frame_mask is None:
            return None
        return frame_mask.to(device).view(b, self.time, -1).any(-1)

    def flops_per_clip(self) -> float:
        """Forward multiply-accumulates x2 of the matmuls (patch embed, attention, MLP); used by benchmarks."""
        c = self.cfg
        n_tok = 1 + self.time * self.grid ** 2
        d = c.width
        per_block = 2 * n_tok * (4 * d * d + 2 * c.mlp_ratio * d * d)  # qkv+proj, mlp
        if c.attention == "joint":
            per_block += 2 * 2 * n_tok * n_tok * d
        else:
            per_block += 2 * 2 * (self.grid ** 2 * self.time ** 2 + self.time * (self.grid ** 2 + 1) ** 2) * d
            per_block += 2 * n_tok * 4 * d * d
        patch = 2 * self.time * self.grid ** 2 * d * 3 * c.tubelet_size * c.patch_size ** 2
        return float(c.depth * per_block + patch)

