"""The lab's diagnostics (structvl.lab.diagnostics): each question's arithmetic on hand-built cases, and the
precision diagnostic on a tiny trained run."""

from __future__ import annotations

import pytest
import torch

from structvl.data.masking import candidate_units, unit_token_groups
from structvl.data.text import Tokenizer
from structvl.engine.checkpoint import load_run_model
from structvl.lab.diagnostics import (
    batch_appearance_twins,
    clover_rank_margin,
    eval_precision,
    knowledge_probe,
    learnability,
    retrieval_errors,
)
from structvl.models.text_encoder import build_tokenizer
from structvl.tasks import evaluate

from helpers import SHAPE_CAPTIONS


@pytest.fixture(scope="module")
def tokenizer():
    return Tokenizer(max_length=32)


def test_rank_margin_diagnostic_tells_a_clip_specific_gap_from_a_text_side_one(parsed, tokenizer):
    """structvl.lab.diagnostics.clover_rank_margin: the own-clip gap and the other-clip gap, by hand, and its masked captions
    are Clover's semantic selection with every selected piece replaced by [MASK]."""
    module = clover_rank_margin
    video = torch.eye(2)
    text = torch.eye(2)
    # Clip-specific: each masked caption moves away from its own video, towards the other one.
    # gap[j, i] = v_j.t_i - v_j.tm_i: own 1 - 0.6 = 0.4 (both >= 0.25), other 0 - 0.8 = -0.8.
    g = module.rank_gaps(video, text, torch.tensor([[0.6, 0.8], [0.8, 0.6]]), margin=0.25)
    assert g["own_gap"] == pytest.approx(0.4) and g["own_met"] == 100.0
    assert g["other_gap"] == pytest.approx(-0.8) and g["other_met"] == 0.0
    # Text-side: masking lowers the caption against every video alike (0.3), so the other clips show it too.
    g = module.rank_gaps(video, text, text - 0.3, margin=0.25)
    assert g["own_gap"] == pytest.approx(0.3) and g["other_gap"] == pytest.approx(0.3) and g["other_met"] == 100.0

    tokens, masked = module.mask_captions(tokenizer, SHAPE_CAPTIONS, parsed, ratio=0.3)
    changed = masked != tokens["input_ids"]
    assert (masked[changed] == tokenizer.mask_token_id).all() and changed.any(1).all()
    _, offsets = tokenizer.encode_with_offsets(SHAPE_CAPTIONS)
    for b, k in enumerate(parsed):  # only noun / verb word pieces are masked
        allowed = {t for _, toks in unit_token_groups(k.words, candidate_units(k.words), offsets[b]) for t in toks}
        assert set(changed[b].nonzero().flatten().tolist()) <= allowed


def test_batch_shares_count_shape_twins_only_where_colours_and_sizes_match():
    """structvl.lab.diagnostics.batch_appearance_twins: a shape twin has the same colours and sizes and other shapes."""
    module = batch_appearance_twins
    clips = [(("circle", "red", "big"),), (("square", "red", "big"),),  # shape twins of each other
             (("circle", "blue", "big"),), (("circle", "blue", "big"),)]  # appearance twins, no shape twin
    unique, twin, meets, shape_twin = module.batch_shares([0, 1, 2, 3], clips, batch_size=4)
    assert (unique, twin, shape_twin) == (50.0, 50.0, 50.0) and meets == 50.0
    assert module.batch_shares([0, 2, 1, 3], clips, batch_size=2)[3] == 0.0  # the twins now sit in other batches


def test_retrieval_miss_kinds_name_what_differs():
    """structvl.lab.diagnostics.retrieval_errors: a miss is classed by what tells the caption's clip from the retrieved one."""
    module = retrieval_errors

    def obj(shape, colour="red", size="large", action="rotating"):
        return {"shape": shape, "colour": colour, "size": size, "action": action}

    own = [obj("star"), obj("ring", colour="blue")]
    assert module.miss_kinds(own, list(reversed(own))) == {"same content"}  # object order does not matter
    assert module.miss_kinds(own, [obj("star", action="growing"), own[1]]) == {"action only"}
    assert module.miss_kinds(own, [obj("square"), own[1]]) == {"shape"}
    assert module.miss_kinds(own, [obj("square", size="small"), own[1]]) == {"shape", "size"}
    assert module.miss_kinds(own, own[:1]) == {"count"}
    # the same shapes and colours, bound to each other the other way round
    assert module.miss_kinds(own, [obj("star", colour="blue"), obj("ring")]) == {"binding"}

    # the clip a miss is compared with: the best-scored clip that is not the caption's own, in any block size
    videos = torch.eye(3)
    texts = torch.tensor([[1.0, 0.9, 0.0], [0.0, 0.2, 1.0], [0.0, 0.3, 1.0]])
    for block_size in (1, 2, 1024):
        assert module.best_other_clip(texts, videos, [0, 1, 2], block_size) == [1, 2, 1]


def test_knowledge_probe_finds_what_features_hold_and_only_that():
    """structvl.lab.diagnostics.knowledge_probe: a linear probe reads a kind that the features encode and no other."""
    from structvl.data.records import VideoRecord

    module = knowledge_probe

    shapes, colours = ["star", "ring", "cross", "square"], ["red", "blue", "green"]
    gen = torch.Generator().manual_seed(0)
    records = []
    for i in range(240):
        count = 1 + i % 3
        picked = torch.randperm(len(shapes), generator=gen)[:count].tolist()
        objects = [{"shape": shapes[s], "colour": colours[int(torch.randint(3, (1,), generator=gen))],
                    "size": "large", "action": "rotating"} for s in picked]
        records.append(VideoRecord(video_id=f"v{i}", video=f"v{i}.mp4", captions=["c"], meta={"objects": objects}))
    labels = module.clip_labels(records)
    assert labels["shape"].shape == (240, 4) and labels["colour"].shape == (240, 3)
    assert labels["shape"].sum(1).tolist() == labels["count"].float().tolist()  # each object's shape, once
    assert labels["colour+shape"].sum(1).tolist() == labels["count"].float().tolist()

    # features = which shapes are present (plus noise): shapes and count are readable, colours are not
    features = labels["shape"] + 0.1 * torch.randn(240, 4, generator=gen)
    features = torch.cat([features, torch.randn(240, 4, generator=gen)], dim=1)
    train = {k: v[:160] for k, v in labels.items()}
    test = {k: v[160:] for k, v in labels.items()}
    scores = module.probe_scores(features[:160], train, features[160:], test)
    chance = module.chance_scores(test)
    assert scores["shape"] > 95 and chance["shape"] < 60
    assert scores["count"] > 90 and chance["count"] < 40
    assert abs(scores["colour"] - chance["colour"]) < 15


def test_learnability_curve_learns_a_visible_multi_label_kind(monkeypatch):
    """structvl.lab.diagnostics.learnability: the supervised curve rises on labels the clips show, scored as mAP (multi-label)
    or top-1 (one class per clip)."""
    from structvl.config import VideoEncoderConfig
    from structvl.models.video_encoder import VideoEncoder

    module = learnability

    # scoring: a perfect ranking is 100 mAP, a reversed one far below; top-1 counts argmax hits
    targets = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 0.0]])
    assert module.score(targets * 2 - 1, targets, multi_label=True) == 100.0
    assert module.score(1 - targets, targets, multi_label=True) < 60.0
    assert module.score(torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 0]), multi_label=False) == 50.0

    # clips whose labels say which of two colour channels is lit: learnable in a few dozen steps
    gen = torch.Generator().manual_seed(0)
    labels = (torch.rand(160, 2, generator=gen) > 0.5).float()
    clips = 0.3 * torch.randn(160, 2, 3, 16, 16, generator=gen)
    clips[:, :, 0] += 2 * labels[:, 0, None, None, None]
    clips[:, :, 2] += 2 * labels[:, 1, None, None, None]
    torch.manual_seed(0)
    encoder = VideoEncoder(VideoEncoderConfig(image_size=16, num_frames=2, patch_size=8, width=16, depth=1, heads=2))
    curve = module.learning_curve(encoder, (clips[:128], labels[:128]), (clips[128:], labels[128:]), 2, True,
                                  steps=40, lr=3e-3, every=20)
    assert [step for step, _ in curve] == [20, 40]
    assert curve[-1][1] > 95.0


def test_eval_precision_evaluates_the_run_in_each_precision(search_run, monkeypatch):
    """structvl.lab.diagnostics.eval_precision: each column encodes under its own precision's autocast, whatever the
    run trained in (fp32 here), and the fp32 column is the run's own fp32 evaluation."""
    corpus, run = search_run
    seen, embed_texts = [], evaluate.embed_texts

    def spy(*args, autocast_dtype=None, **kwargs):
        seen.append(autocast_dtype)
        return embed_texts(*args, autocast_dtype=autocast_dtype, **kwargs)

    monkeypatch.setattr(evaluate, "embed_texts", spy)
    by_precision = eval_precision.retrieval_by_precision(run)
    assert list(by_precision) == ["fp32", "bf16"] and seen == [None, torch.bfloat16]
    monkeypatch.setattr(evaluate, "embed_texts", embed_texts)
    model, cfg, _ = load_run_model(run)
    own = evaluate.evaluate_model(model.eval(), cfg, build_tokenizer(cfg.model.text), data_root=corpus)
    assert by_precision["fp32"]["retrieval/t2v/R@1"] == own["retrieval/t2v/R@1"]


def test_eval_precision_refuses_a_directory_without_a_finished_run_in_one_line(search_run, tmp_path, capsys):
    assert eval_precision.main([str(search_run[1]), str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"eval_precision: {tmp_path}: no metrics.json there; give finished run directories"
