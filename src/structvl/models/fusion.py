"""Clover's fusion encoder: a single-stream cross-modal transformer over video and text token states.

Input sequence (as in Clover's released `CrossModalTransformerFromPretrained`):

    [ video tokens (T' x N')             ; learned [CLS] ; text token states (L) ]
      = Linear(video patch states)          (optional)     = the text encoder's last hidden states
        + spatial + temporal position embeddings
        + token-type embedding 0, LayerNorm                 + token-type embedding 1

The layers are BERT layers with the text encoder's own sizes, by default copies of its first `layers` layers
(Clover initialises its 3 fusion layers from BERT-base's first 3), so text states enter a network that
already reads them; `model.fusion.init_from_text_layers: top` copies its last `layers` instead. The fused
vector is the output at the text [CLS] position (`FusionOutput.cls`); the output text states feed the MLM head
and, downstream, the QA heads (`VideoTextModel.fuse`).

A caller that reads only some outputs says so (`read`: the [CLS] alone, or the [CLS] and some text positions,
such as MLM's masked ones): the last layer then computes the keys and values of every position, and the queries,
the output projection and the MLP of those rows alone: the same numbers as the whole layer gives there. The last
layer is a third of a 3-layer encoder; for the rows not read, 10 of a BERT layer's 12 d^2 a token are skipped.

The MLM head is BERT's (dense -> GELU -> LayerNorm -> vocabulary) with the decoder tied to the text encoder's
word embeddings (passed in at call time, so the weight has exactly one owner in the state dict).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint
from transformers.models.bert.modeling_bert import BertLayer

from structvl.config import ConfigError, FusionConfig


@dataclass
class FusionOutput:
    cls: torch.Tensor  # (B, D_fusion) output at the text [CLS] position: the fused vector
    text_states: torch.Tensor | None = None  # (B, L, D_fusion) output text states (None when only some were read)
    video_states: torch.Tensor | None = None  # (B, T' * N', D_fusion) output video token states (idem)
    read_states: torch.Tensor | None = None  # (n, D_fusion) the states `read` asked for, in text_states[read]'s order


class MLMHead(nn.Module):
    """BERT's prediction head; the decoder matrix is the (tied) word-embedding table given to forward."""

    def __init__(self, width: int, vocab_size: int, eps: float):
        super().__init__()
        self.dense = nn.Linear(width, width)
        self.norm = nn.LayerNorm(width, eps=eps)
        self.bias = nn.Parameter(torch.zeros(vocab_size))

    def forward(self, states: torch.Tensor, word_embeddings: torch.Tensor) -> torch.Tensor:
        return F.linear(self.norm(F.gelu(self.dense(states))), word_embeddings, self.bias)


class FusionEncoder(nn.Module):
    def __init__(self, cfg: FusionConfig, video_encoder: nn.Module, text_encoder: nn.Module):
        super().__init__()
        bert_config = copy.deepcopy(text_encoder.bert.config)
        bert_config._attn_implementation = "sdpa"  # the boolean attention mask below is SDPA's format
        self.cfg = cfg
        self.width = bert_config.hidden_size
        if video_encoder.grid % cfg.video_pool:
            raise ConfigError(f"config key 'model.fusion.video_pool': {cfg.video_pool} does not divide the "
                              f"video patch grid {video_encoder.grid}")
        self.pool = cfg.video_pool
        grid = video_encoder.grid // cfg.video_pool
        eps = bert_config.layer_norm_eps
        self.video_in = nn.Linear(video_encoder.width, self.width)
        # Names end in pos_embed / time_embed / cls_token / token_type_embeddings: the optimizer's no-decay list.
        self.space_pos_embed = nn.Parameter(0.02 * torch.randn(1, 1, grid * grid, self.width))
        self.time_embed = nn.Parameter(0.02 * torch.randn(1, video_encoder.time, 1, self.width))
        self.token_type_embeddings = nn.Embedding(2, self.width)  # 0 = video, 1 = text
        nn.init.normal_(self.token_type_embeddings.weight, std=0.02)
        self.video_norm = nn.LayerNorm(self.width, eps=eps)  # Clover (after VIOLET): LayerNorm on video tokens
        self.cls_token = nn.Parameter(0.02 * torch.randn(1, 1, self.width)) if cfg.learned_cls else None
        if not hasattr(text_encoder.bert, "encoder"):
            raise ConfigError(f"config key 'model.fusion.layers': the fusion encoder is made of BERT layers, which a "
                              f"{bert_config.model_type} text model does not have; use a BERT/RoBERTa-style one")
        source = list(text_encoder.layers)
        if cfg.init_from_text_layers == "none":
            source = []
        elif cfg.init_from_text_layers == "top":
            source = source[-cfg.layers:]
        layers = []
        for i in range(cfg.layers):
            if i < len(source):
                layer = copy.deepcopy(source[i])
                if hasattr(layer, "gradient_checkpointing"):  # the copy does not follow the text encoder's switch
                    layer.gradient_checkpointing = False
                layers.append(layer)
            else:  # fresh layers beyond the text encoder's depth (or init_from_text_layers: none), BERT's init
                layer = BertLayer(bert_config, layer_idx=i)
                layer.apply(_bert_init)
                layers.append(layer)
        self.layers = nn.ModuleList(layers)
        # Whether every fusion layer recomputes its activations in the backward: cfg.activation_checkpointing (the
        # fusion's alone), and in a VideoTextModel whatever its `set_activation_checkpointing` says.
        self.recompute = cfg.activation_checkpointing
        self.mlm_head = MLMHead(self.width, bert_config.vocab_size, eps)

    def forward(self, video, text, read: str | torch.Tensor | None = None) -> FusionOutput:
        """video: a VideoEncoderOutput (tokens (B, T', N, Dv), frame_mask (B, T')); text: a TextEncoderOutput
        (tokens (B, L, Dt), attention_mask (B, L)). read: which outputs the caller reads. None: every position's
        (`.text_states`, `.video_states`); "cls": the fused vector alone; a (B, L) bool mask of text positions:
        the fused vector and those positions' states, as `.read_states` (n, D) in the order `text_states[read]`
        would give them. With "cls" or a mask the last layer computes only the rows read."""
        v = video.tokens
        b, t, n, d = v.shape
        length = text.tokens.shape[1]
        if isinstance(read, str) and read != "cls":
            raise ValueError(f"read: None, 'cls' or a mask of text positions, got '{read}'")
        if isinstance(read, torch.Tensor) and read.shape != (b, length):
            raise ValueError(f"read: a ({b}, {length}) mask of text positions, got {tuple(read.shape)}")
        if self.pool > 1:
            g = int(round(n ** 0.5))
            v = F.avg_pool2d(v.reshape(b * t, g, g, d).permute(0, 3, 1, 2), self.pool)
            v = v.flatten(2).transpose(1, 2).reshape(b, t, -1, d)
            n = v.shape[2]
        v = self.video_in(v) + self.space_pos_embed + self.time_embed[:, :t] + self.token_type_embeddings.weight[0]
        v = self.video_norm(v).reshape(b, t * n, self.width)
        x_text = text.tokens + self.token_type_embeddings.weight[1]
        parts, masks = [v], [video.frame_mask.to(v.device).bool().repeat_interleave(n, dim=1)]
        if self.cls_token is not None:
            parts.append(self.cls_token.expand(b, -1, -1).to(v.dtype))
            masks.append(masks[0].new_ones(b, 1))
        parts.append(x_text.to(v.dtype))
        masks.append(text.attention_mask.bool())
        x = torch.cat(parts, dim=1)
        attend = torch.cat(masks, dim=1)[:, None, None, :]  # (B, 1, 1, S) True = may be attended to
        recompute = self.recompute and self.training and torch.is_grad_enabled()
        layers = list(self.layers) if read is None else list(self.layers)[:-1]
        for layer in layers:
            if recompute:
                out = checkpoint(layer, x, attention_mask=attend, use_reentrant=False)
            else:
                out = layer(x, attention_mask=attend)
            x = out[0] if isinstance(out, tuple) else out
        if read is None:
            text_states = x[:, -length:]
            return FusionOutput(cls=text_states[:, 0], text_states=text_states, video_states=x[:, :t * n])
        # The rows read: [CLS] (text position 0) and `read`'s positions, ascending, padded per row with positions
        # not read (computed and dropped) up to the longest row's count.
        states_read = None if isinstance(read, str) else read.to(x.device).bool()
        wanted = (torch.zeros(b, length, dtype=torch.bool, device=x.device) if states_read is None
                  else states_read.clone())
        wanted[:, 0] = True
        count = int(wanted.sum(1).max())
        positions = torch.argsort((~wanted).to(torch.int8), dim=1, stable=True)[:, :count]
        rows = positions + (x.shape[1] - length)
        last = self.layers[-1]
        if recompute:
            out = checkpoint(_layer_rows, last, x, rows, attend, use_reentrant=False)
        else:
            out = _layer_rows(last, x, rows, attend)
        states = None if states_read is None else out[states_read.gather(1, positions)]
        return FusionOutput(cls=out[:, 0], read_states=states)


def _layer_rows(layer: nn.Module, x: torch.Tensor, rows: torch.Tensor, attend: torch.Tensor) -> torch.Tensor:
    """A BERT layer's output (B, R, D) at `rows` (B, R) of its input x (B, S, D): every position's keys and
    values, the queries, the output projection (with its residual and LayerNorm) and the MLP of those rows alone,
    the numbers the whole layer gives there. Dropout as the layer's (attention dropout inside SDPA, as HF's)."""
    att = layer.attention.self
    b, r = rows.shape
    x_rows = x.gather(1, rows[..., None].expand(-1, -1, x.shape[-1]))

    def heads(states):  # (B, S, D) -> (B, H, S, D / H)
        return states.view(b, states.shape[1], att.num_attention_heads, att.attention_head_size).transpose(1, 2)

    context = F.scaled_dot_product_attention(heads(att.query(x_rows)), heads(att.key(x)), heads(att.value(x)),
                                             attn_mask=attend, dropout_p=att.dropout.p if att.training else 0.0,
                                             scale=att.scaling)
    context = context.transpose(1, 2).reshape(b, r, -1)
    return layer.feed_forward_chunk(layer.attention.output(context, x_rows))


def _bert_init(module: nn.Module) -> None:
    """BERT's initialisation (normal 0.02, zero bias, unit LayerNorm), for layers not copied from the text encoder."""
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
