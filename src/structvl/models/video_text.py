"""The dual encoder every recipe shares, and the one function that builds it from a config.

`VideoTextModel` = video encoder + text encoder + projection heads into a shared L2-normalised space +
a learnable (clamped) temperature. Objectives call `encode_video` / `encode_text` and read whatever they
need from the outputs (pooled embeddings, patch tokens, token states).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from structvl.config import ModelConfig
from structvl.models.fusion import FusionEncoder, FusionOutput
from structvl.models.text_encoder import TextEncoder, TextEncoderOutput
from structvl.models.video_encoder import VideoEncoder, VideoEncoderOutput


def projection_head(in_dim: int, out_dim: int, kind: str) -> nn.Module:
    if kind == "linear":
        return nn.Linear(in_dim, out_dim)
    return nn.Sequential(nn.Linear(in_dim, in_dim), nn.GELU(), nn.Linear(in_dim, out_dim))


@dataclass
class VideoEmbedding:
    embed: torch.Tensor  # (B, E) L2-normalised
    encoder: VideoEncoderOutput


@dataclass
class TextEmbedding:
    embed: torch.Tensor  # (B, E) L2-normalised
    encoder: TextEncoderOutput


class VideoTextModel(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.video_encoder = VideoEncoder(cfg.video, cfg.activation_checkpointing)
        self.text_encoder = TextEncoder(cfg.text)
        self.text_encoder.set_activation_checkpointing(cfg.activation_checkpointing)
        self.video_proj = projection_head(self.video_encoder.width, cfg.embed_dim, cfg.projection)
        self.text_proj = projection_head(self.text_encoder.width, cfg.embed_dim, cfg.projection)
        # Stored as log(1/tau) (CLIP's logit scale); clamped in `logit_scale` so tau >= min_temperature.
        # Shape (1,), not a scalar: FSDP cannot shard 0-d parameters.
        self.log_inv_temperature = nn.Parameter(torch.full((1,), math.log(1.0 / cfg.temperature)),
                                                requires_grad=cfg.learn_temperature)
        if cfg.video.num_group_tokens:  # S-ViLM: the groups' own head into the shared space
            self.group_proj = projection_head(self.video_encoder.width, cfg.embed_dim, cfg.projection)
        # Clover's cross-modal fusion encoder (+ MLM head); None when model.fusion.layers == 0. Built after
        # everything else, so a model without it initialises exactly as the plain dual encoder.
        self.fusion = FusionEncoder(cfg.fusion, self.video_encoder, self.text_encoder) if cfg.fusion.layers else None

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.log_inv_temperature.clamp(max=math.log(1.0 / self.cfg.min_temperature)).exp().squeeze(0)

    def encode_video(self, video: torch.Tensor, frame_mask: torch.Tensor | None = None,
                     patch_embeddings: torch.Tensor | None = None) -> VideoEmbedding:
        out = self.video_encoder(video, frame_mask, patch_embeddings)
        return VideoEmbedding(F.normalize(self.video_proj(out.pooled), dim=-1), out)

    def embed_groups(self, out: VideoEncoderOutput) -> torch.Tensor:
        """(B, G, E) L2-normalised group embeddings of an encoder output (needs model.video.num_group_tokens)."""
        return F.normalize(self.group_proj(out.groups), dim=-1)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> TextEmbedding:
        out = self.text_encoder(input_ids, attention_mask)
        return TextEmbedding(F.normalize(self.text_proj(out.pooled), dim=-1), out)

    def fuse(self, video: VideoEncoderOutput, text: TextEncoderOutput) -> FusionOutput:
        """Video and text encoder outputs through the fusion encoder: `.cls` (B, D_fusion) is the fused vector
        (QA heads, Clover's fused embeddings), `.text_states` (B, L, D_fusion) the fused token states."""
        if self.fusion is None:
            raise RuntimeError("this model has no fusion encoder: set model.fusion.layers > 0")
        return self.fusion(video, text)

    def mlm_logits(self, fused_text_states: torch.Tensor) -> torch.Tensor:
        """(..., D_fusion) fused text states -> (..., vocab) logits; the decoder is the text word-embedding table."""
        return self.fusion.mlm_head(fused_text_states, self.text_encoder.word_embeddings.weight)


def build_model(cfg: ModelConfig) -> VideoTextModel:
    """The one place a model is built from a config (no registry: read this to see what you get)."""
    return VideoTextModel(cfg)
