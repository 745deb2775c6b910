"""Evaluation's text features with less padding: texts encoded in batches of similar length (tasks/retrieval.py
`embed_texts`, tasks/features.py `extract_text_features`) and cached question states cut to the rows' longest
sequence before the fusion encoder (`fuse_cached`) give what each text encoded alone gives."""

from __future__ import annotations

import torch

from structvl.config import load_config
from structvl.data.text import Tokenizer
from structvl.models.video_encoder import VideoEncoderOutput
from structvl.models.video_text import build_model
from structvl.tasks.features import extract_text_features, fuse_cached
from structvl.tasks.retrieval import embed_texts, length_sorted_batches

from helpers import SHAPE_CAPTIONS, TINY

# Short and long texts interleaved, with a repeat: sorting by length reorders them, the results must not move.
TEXTS = ["a star", SHAPE_CAPTIONS[3], "a circle", SHAPE_CAPTIONS[0], SHAPE_CAPTIONS[3] + " and then stops",
         "a red star", SHAPE_CAPTIONS[1], "a star"]


def _model(*extra):
    torch.manual_seed(0)
    return build_model(load_config("demo", TINY + list(extra)).model).eval()


def _alone(model, tokenizer, texts):
    with torch.no_grad():
        return [model.encode_text(**tokenizer([t])) for t in texts]


def test_length_sorted_batches_cover_every_row_once_cut_to_their_longest():
    tokens = Tokenizer(24)(TEXTS)
    seen = []
    for rows, batch in length_sorted_batches(tokens, batch_size=3):
        lengths = tokens["attention_mask"][rows].sum(1)
        assert batch["input_ids"].shape == (len(rows), int(lengths.max()))
        assert torch.equal(batch["input_ids"], tokens["input_ids"][rows, :int(lengths.max())])
        seen += rows.tolist()
    assert sorted(seen) == list(range(len(TEXTS)))
    lengths = tokens["attention_mask"].sum(1)[seen]
    assert torch.equal(lengths, lengths.sort().values)  # shortest first


def test_embed_texts_equals_each_text_alone(one_thread):
    model, tokenizer = _model(), Tokenizer(24)
    got = embed_texts(model, tokenizer, TEXTS, torch.device("cpu"), batch_size=3)
    want = torch.cat([out.embed for out in _alone(model, tokenizer, TEXTS)])
    assert torch.allclose(got, want, atol=1e-5)


def test_text_features_equal_each_text_alone_with_states_padded_to_max_length(one_thread):
    model, tokenizer = _model(), Tokenizer(24)
    feats = extract_text_features(model, tokenizer, TEXTS, keep_tokens=True, batch_size=3)
    alone = _alone(model, tokenizer, TEXTS)
    assert feats.tokens.shape[:2] == (len(TEXTS), tokenizer.max_length)
    for i, out in enumerate(alone):
        n = out.encoder.tokens.shape[1]
        assert torch.allclose(feats.embed[i], out.embed[0], atol=1e-5)
        assert torch.allclose(feats.pooled[i], out.encoder.pooled[0], atol=1e-5)
        assert torch.allclose(feats.tokens[i, :n], out.encoder.tokens[0], atol=1e-5)
        assert feats.attention_mask[i].sum() == n


def test_fused_cls_of_trimmed_question_states_equals_the_padded_ones(one_thread):
    model, tokenizer = _model("model.fusion.layers=1"), Tokenizer(24)
    feats = extract_text_features(model, tokenizer, TEXTS, keep_tokens=True)
    torch.manual_seed(1)
    b, t, n = 3, model.video_encoder.time, model.video_encoder.grid ** 2
    pooled, tokens = torch.randn(b, model.video_encoder.width), torch.randn(b, t, n, model.video_encoder.width)
    rows = torch.tensor([0, 2, 5])  # short texts only: cut to 4 of the 24 positions
    with torch.no_grad():
        got = fuse_cached(model, pooled, tokens, feats, rows)
        full = model.fuse(VideoEncoderOutput(pooled, tokens, torch.ones(b, t, dtype=torch.bool)),
                          type("T", (), {"tokens": feats.tokens[rows], "attention_mask": feats.attention_mask[rows]})()
                          ).cls
    assert torch.allclose(got, full, atol=1e-5)
