"""The dual encoder every recipe shares, and the one function that builds it from a config.

`VideoTextModel` = video encoder + text encoder + projection heads into a shared L2-normalised space +
a learnable temperature (CLIP's logit scale, clamped after each optimizer step). Objectives call
`encode_video` / `encode_text` and read whatever they need from the outputs (pooled embeddings, patch tokens,
token states).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from structvl.config import ModelConfig
from structvl.models.fusion import FusionEncoder, FusionOutput
from structvl.models.pretrained import LoadReport, load_video_init
from structvl.models.pretrained.common import IMAGE_PARAM
from structvl.models.text_encoder import TextEncoder, TextEncoderOutput
from structvl.models.video_encoder import VideoEncoder, VideoEncoderOutput

log = logging.getLogger("structvl")


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
    """`load_pretrained=False` builds the architecture without reading model.video.init / model.text.init's
    weights (a run's own checkpoint is about to replace them)."""

    def __init__(self, cfg: ModelConfig, load_pretrained: bool = True):
        super().__init__()
        self.cfg = cfg
        self.video_encoder = VideoEncoder(cfg.video)
        self.text_encoder = TextEncoder(cfg.text, load_weights=load_pretrained)
        self.video_proj = projection_head(self.video_encoder.width, cfg.embed_dim, cfg.projection)
        self.text_proj = projection_head(self.text_encoder.width, cfg.embed_dim, cfg.projection)
        # Stored as log(1/tau) (CLIP's logit scale). Clamped in the parameter after each optimizer step
        # (`clamp_logit_scale_`), as open_clip does, not in the forward: a forward clamp zeroes the gradient at
        # the bound, so the scale could never come back. Shape (1,): FSDP cannot shard 0-d parameters.
        self.log_inv_temperature = nn.Parameter(torch.full((1,), math.log(1.0 / cfg.temperature)),
                                                requires_grad=cfg.learn_temperature)
        if cfg.video.num_group_tokens:  # S-ViLM: the groups' own head into the shared space
            self.group_proj = projection_head(self.video_encoder.width, cfg.embed_dim, cfg.projection)
        # Clover's cross-modal fusion encoder (+ MLM head); None when model.fusion.layers == 0. Built after
        # everything else, so a model without it initialises exactly as the plain dual encoder.
        self.fusion = FusionEncoder(cfg.fusion, self.video_encoder, self.text_encoder) if cfg.fusion.layers else None
        self.set_activation_checkpointing(None)
        # Parameter names (relative to this model) whose values come from a pretrained checkpoint: the optimizer
        # gives them optim.pretrained_lr / text_lr and the layer-wise decay (engine/optim.py).
        self.pretrained_parameters: set[str] = set()
        if self.text_encoder.pretrained:
            self.pretrained_parameters |= {f"text_encoder.{n}" for n, _ in self.text_encoder.named_parameters()}
        self.video_init: LoadReport | None = None
        if cfg.video.init.format != "none" and load_pretrained:
            # CLIP's image projection becomes the video projection when it is a Linear of the same sizes.
            head = self.video_proj if isinstance(self.video_proj, nn.Linear) else None
            self.video_init = load_video_init(self.video_encoder, cfg.video.init, head)
            log.info(self.video_init.summary())
        if cfg.video.init.format != "none":
            loaded = self.video_init.loaded if self.video_init else _image_parameters(self)
            self.pretrained_parameters |= {n.replace("head.", "video_proj.", 1) if n.startswith("head.")
                                           else f"video_encoder.{n}" for n in loaded}

    def set_activation_checkpointing(self, enabled: bool | None) -> None:
        """Which layers recompute their activations in the backward pass instead of keeping them (memory for about
        a third more compute): True every tower's (video blocks, text layers, fusion layers), False none, None what
        the config says (`model.activation_checkpointing` all of them; `model.video.` and
        `model.fusion.activation_checkpointing` that tower's)."""
        cfg, configured = self.cfg, enabled is None
        every = cfg.activation_checkpointing if configured else enabled
        self.video_encoder.activation_checkpointing = every or (configured and cfg.video.activation_checkpointing)
        self.text_encoder.set_activation_checkpointing(every)
        if self.fusion is not None:
            self.fusion.recompute = every or (configured and cfg.fusion.activation_checkpointing)

    @property
    def recomputes(self) -> bool:
        """Whether any layer recomputes its activations in the backward (`set_activation_checkpointing`; the text
        layers only ever do with the video blocks)."""
        return self.video_encoder.activation_checkpointing or bool(self.fusion is not None and self.fusion.recompute)

    def compile_towers(self) -> None:
        """`train.compile`: torch.compile the video and the text tower in place (`nn.Module.compile`, so parameter
        names and the state dict stay as they are and checkpoints load either way)."""
        self.video_encoder.compile()
        self.text_encoder.compile()

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.log_inv_temperature.exp().squeeze(0)

    @torch.no_grad()
    def clamp_logit_scale_(self) -> None:
        """Keep the logit scale in [1, 1 / model.min_temperature] ([0, ln 100] in the parameter by default);
        called after every optimizer step."""
        self.log_inv_temperature.clamp_(0.0, math.log(1.0 / self.cfg.min_temperature))

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

    def fuse(self, video: VideoEncoderOutput, text: TextEncoderOutput,
             read: str | torch.Tensor | None = None) -> FusionOutput:
        """Video and text encoder outputs through the fusion encoder: `.cls` (B, D_fusion) is the fused vector
        (QA heads, Clover's fused embeddings), `.text_states` (B, L, D_fusion) the fused token states. `read="cls"`
        or a (B, L) mask of text positions: only the fused vector and those states (`.read_states`) are computed
        in the last layer (`FusionEncoder.forward`)."""
        if self.fusion is None:
            raise RuntimeError("this model has no fusion encoder: set model.fusion.layers > 0")
        return self.fusion(video, text, read)

    def mlm_logits(self, fused_text_states: torch.Tensor) -> torch.Tensor:
        """(..., D_fusion) fused text states -> (..., vocab) logits; the decoder is the text word-embedding table."""
        return self.fusion.mlm_head(fused_text_states, self.text_encoder.word_embeddings.weight)


def _image_parameters(model: VideoTextModel) -> list[str]:
    """The video parameters an image checkpoint provides, for a model built without reading it."""
    return [n for n, _ in model.video_encoder.named_parameters() if IMAGE_PARAM.fullmatch(n)]


def build_model(cfg: ModelConfig, load_pretrained: bool = True) -> VideoTextModel:
    """The one place a model is built from a config (no registry: read this to see what you get).
    `load_pretrained=False`: do not read the init checkpoints (a run's checkpoint will be loaded instead)."""
    return VideoTextModel(cfg, load_pretrained)
