"""Clover: the exclusive NCE against a direct computation, the ranking and focal losses, semantic / random /
video masking, gradients into every head, the 2-rank all-gathered loss, and a short end-to-end run."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from structvl.config import load_config
from structvl.data.masking import (
    block_mask,
    candidate_units,
    corrupt_tokens,
    random_selection,
    semantic_selection,
    unit_token_groups,
    video_tube_masks,
)
from structvl.engine.pretrain import seed_everything
from structvl.objectives.clover import exclusive_nce, focal_mlm_loss, pairwise_ranking
from two_ranks import run_on_ranks

from helpers import TINY, without_dropout

CAPTIONS = [
    "in this video a small green cross is flashing while the big green ring is moving up",
    "the large white rhombus can be seen moving to the left",
    "a red circle slides to the left of a big blue square",
    "a man quickly runs and a dog is barking loudly at the cat",
]


@pytest.fixture(scope="module")
def knowledge():
    from structvl.data.knowledge.rules import extract_knowledge
    return extract_knowledge(CAPTIONS)


@pytest.fixture(scope="module")
def tokenizer():
    from structvl.data.text import Tokenizer
    return Tokenizer(max_length=32)


def _unit(v):
    return F.normalize(v, dim=-1)


# ---------------------------------------------------------------- losses
def test_exclusive_nce_matches_direct_small_batch_computation():
    g = torch.Generator().manual_seed(0)
    b, e, scale = 3, 5, torch.tensor(4.0)
    anchor = _unit(torch.randn(b, e, generator=g))
    sets = [_unit(torch.randn(b, e, generator=g)) for _ in range(3)]
    out = exclusive_nce(anchor, sets, scale)

    # Anchor side, by hand: anchor i against the pool of all 3B items with *its own other two positives removed*.
    anchor_side = 0.0
    for i in range(b):
        for k in range(3):
            pool = [(j, s) for j in range(3) for s in range(b) if not (s == i and j != k)]
            logits = torch.stack([scale * anchor[i] @ sets[j][s] for j, s in pool])
            anchor_side -= torch.log_softmax(logits, 0)[pool.index((k, i))] / b
    # Reverse side: each of the 3B items against the B anchors, averaged over the 3B rows.
    reverse = sum(-torch.log_softmax(scale * sets[k][s] @ anchor.t(), 0)[s] for k in range(3) for s in range(b)) / (3 * b)
    assert float(out["anchor_side"]) == pytest.approx(float(anchor_side), rel=1e-5)
    assert float(out["reverse_side"]) == pytest.approx(float(reverse), rel=1e-5)
    assert float(out["loss"]) == pytest.approx(float(anchor_side + reverse), rel=1e-5)
    # Removing the other positives matters: the plain softmax over all 3B items is a larger loss.
    logits = torch.cat([scale * anchor @ s.t() for s in sets], 1)
    plain = -sum(torch.log_softmax(logits, 1)[i, k * b + i] for i in range(b) for k in range(3)) / b
    assert float(plain) > float(anchor_side) + 1e-3


def _exclusive_nce_by_hand(anchors, sets, scale, r):
    """Rank r's exclusive NCE from the definition: anchors[q] (B, E) of rank q, sets[k][q] (n_k, E) of rank q,
    row i of every set belonging to that rank's anchor i; each pair's term weighs 1 / B (1 / (K B) reversed)."""
    b, ranks = anchors[0].shape[0], len(anchors)
    pool = [(k, q, s) for k in range(len(sets)) for q in range(ranks) for s in range(len(sets[k][q]))]
    anchor_side = torch.zeros(())
    for k in range(len(sets)):
        terms = []
        for i in range(len(sets[k][r])):
            allowed = [p for p in pool if not (p[1] == r and p[2] == i and p[0] != k)]
            logits = torch.stack([scale * anchors[r][i] @ sets[j][q][s] for j, q, s in allowed])
            terms.append(-torch.log_softmax(logits, 0)[allowed.index((k, r, i))])
        if terms:
            anchor_side = anchor_side + torch.stack(terms).sum() / b
    every_anchor = torch.cat(anchors)
    reverse = [-torch.log_softmax(scale * item @ every_anchor.t(), 0)[r * b + s]
               for k in range(len(sets)) for s, item in enumerate(sets[k][r])]
    return anchor_side, torch.stack(reverse).sum() / (len(sets) * b)


@pytest.mark.parametrize("ranks,sizes", [(1, (3, 2, 1)), (2, (3, 2, 0)), (2, (3, 3, 3))])
def test_exclusive_nce_with_fewer_masked_items_matches_the_definition(ranks, sizes, monkeypatch):
    """`clover.masked_clips`: sets shorter than the anchors, each rank's first rows; every rank's loss as defined."""
    import structvl.objectives.clover as clover
    g = torch.Generator().manual_seed(2)
    b, e, scale = 3, 5, torch.tensor(4.0)
    anchors = [_unit(torch.randn(b, e, generator=g)) for _ in range(ranks)]
    sets = [[_unit(torch.randn(n, e, generator=g)) for _ in range(ranks)] for n in sizes]
    gathered = {id(t): torch.cat(per_rank) for per_rank in [anchors, *sets] for t in per_rank}
    monkeypatch.setattr(clover, "all_gather_with_grad", lambda t: gathered[id(t)])
    for r in range(ranks):
        monkeypatch.setattr(clover, "rank", lambda r=r: r)
        out = exclusive_nce(anchors[r], [per_rank[r] for per_rank in sets], scale)
        anchor_side, reverse = _exclusive_nce_by_hand(anchors, sets, scale, r)
        assert float(out["anchor_side"]) == pytest.approx(float(anchor_side), rel=1e-5)
        assert float(out["reverse_side"]) == pytest.approx(float(reverse), rel=1e-5)


def test_pairwise_ranking_sign_and_margin():
    scale = torch.tensor(20.0)
    a = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    complete = _unit(torch.tensor([[1.0, 0.0], [0.8, 0.6]]))  # cos 1.0 and 0.8
    masked = _unit(torch.tensor([[0.6, 0.8], [1.0, 0.0]]))  # cos 0.6 and 1.0
    # row 0: 20 * (1.0 - 0.6) = 8 >= margin 5 -> 0; row 1: 20 * (0.8 - 1.0) = -4 -> 5 + 4 = 9; mean 4.5
    assert float(pairwise_ranking(a, complete, masked, scale, 5.0)) == pytest.approx(4.5, rel=1e-5)
    assert float(pairwise_ranking(a, complete[:1], masked[:1], scale, 5.0)) == 0.0
    # Only the violated row gets a gradient, and it raises the complete pair's score and lowers the masked one's.
    c, m = complete.clone().requires_grad_(), masked.clone().requires_grad_()
    pairwise_ranking(a, c, m, scale, 5.0).backward()
    assert c.grad[0].abs().sum() == 0 and c.grad[1, 0] < 0 and m.grad[1, 0] > 0  # descent: +c, -m along a


def test_alignment_and_ranking_logits_leave_bf16_autocast():
    """Clover's logits are scaled by 1 / 0.05: under bf16 autocast they are still computed in fp32
    (runtime.precision.full_precision), so both losses equal those of the same embeddings without autocast."""
    g = torch.Generator().manual_seed(0)
    anchor, *positives = (_unit(torch.randn(6, 32, generator=g)) for _ in range(4))
    scale = torch.tensor(20.0)
    expected = exclusive_nce(anchor, positives, scale)["loss"], pairwise_ranking(anchor, *positives[:2], scale, 5.0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = exclusive_nce(anchor, positives, scale)["loss"], pairwise_ranking(anchor, *positives[:2], scale, 5.0)
    for got, want in zip(out, expected):
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


def test_focal_mlm_loss_is_cross_entropy_at_gamma_0_and_down_weights_easy_tokens():
    logits = torch.tensor([[4.0, 0.0, 0.0], [0.0, 0.5, 0.0]])
    labels = torch.tensor([0, 1])
    assert float(focal_mlm_loss(logits, labels, 0.0)) == pytest.approx(float(F.cross_entropy(logits, labels)))
    ce = F.cross_entropy(logits, labels, reduction="none")
    expected = ((1 - torch.exp(-ce)) ** 2 * ce).mean()
    assert float(focal_mlm_loss(logits, labels, 2.0)) == pytest.approx(float(expected), rel=1e-6)


# ---------------------------------------------------------------- text masking
def test_candidates_are_nouns_and_verb_phrases(knowledge):
    def texts(k):
        return [(kind, " ".join(k.words[i]["text"] for i in ids)) for kind, ids in candidate_units(k.words)]
    assert ("verb", "is flashing") in texts(knowledge[0]) and ("noun", "cross") in texts(knowledge[0])
    assert ("verb", "can be seen moving") in texts(knowledge[1])  # AUX* VERB+ as one phrase
    assert ("verb", "quickly runs") in texts(knowledge[3])  # ADV* VERB+
    for k in knowledge:
        for kind, ids in candidate_units(k.words):
            tags = [k.words[i]["pos"] for i in ids]
            assert (kind == "noun" and tags[0] in ("NOUN", "PROPN")) or (kind == "verb" and tags[-1] == "VERB")


def test_semantic_masking_picks_whole_noun_verb_units_in_the_right_share(knowledge, tokenizer):
    enc, offsets = tokenizer.encode_with_offsets(CAPTIONS)
    length = enc["input_ids"].shape[1]
    g = torch.Generator().manual_seed(0)
    picked_units = set()
    for _ in range(30):
        sel = semantic_selection(knowledge, offsets, length, ratio=0.3, generator=g)
        for b, k in enumerate(knowledge):
            units = unit_token_groups(k.words, candidate_units(k.words), offsets[b])
            allowed = {t for _, toks in units for t in toks}
            chosen = set(sel[b].nonzero().flatten().tolist())
            assert chosen <= allowed  # only noun / verb word pieces, never [CLS]/[SEP]/[PAD] or other words
            full = [i for i, (_, toks) in enumerate(units) if set(toks) <= chosen]
            covered = {t for i in full for t in units[i][1]}
            assert chosen == covered  # whole units: no unit is partially masked
            assert len(full) == max(1, round(0.3 * len(units)))  # round(0.3 x #candidates), at least one
            picked_units.update((b, i) for i in full)
    assert len(picked_units) > 8  # the choice is random, not always the same unit
    # A multi-piece word is masked with all its pieces: "rhombus" is several word pieces.
    pieces = [t for t, (s, e) in enumerate(offsets[1]) if s >= CAPTIONS[1].index("rhombus") and e <= CAPTIONS[1].index("rhombus") + 7 and e > s]
    assert len(pieces) > 1


def test_random_masking_and_80_10_10(tokenizer):
    ids = tokenizer(["a red circle slides to the left of a big blue square"] * 400)["input_ids"]
    g = torch.Generator().manual_seed(0)
    sel = random_selection(ids, tokenizer.special_token_ids, prob=0.15, generator=g)
    special = torch.isin(ids, torch.tensor(tokenizer.special_token_ids))
    assert not (sel & special).any() and sel.any(1).all()
    assert 0.12 < sel.sum() / (~special).sum() < 0.18
    masked, labels = corrupt_tokens(ids, sel, tokenizer.mask_token_id, tokenizer.vocab_size,
                                    tokenizer.special_token_ids, generator=g)
    assert torch.equal(labels[sel], ids[sel]) and (labels[~sel] == -100).all()
    assert torch.equal(masked[~sel], ids[~sel])
    n = sel.sum().item()
    to_mask = (masked[sel] == tokenizer.mask_token_id).sum().item() / n
    unchanged = (masked[sel] == ids[sel]).sum().item() / n
    assert 0.75 < to_mask < 0.85 and 0.06 < unchanged < 0.14  # 80% [MASK], ~10% random, ~10% unchanged
    assert not torch.isin(masked[sel & (masked != tokenizer.mask_token_id) & (masked != ids)],
                          torch.tensor(tokenizer.special_token_ids)).any()


# ---------------------------------------------------------------- video masking
def test_block_mask_covers_the_target_share_in_blocks():
    g = torch.Generator().manual_seed(0)
    counts = [int(block_mask(8, 8, 13, min_block=4, generator=g).sum()) for _ in range(50)]
    assert all(0 < c <= 13 for c in counts) and sum(counts) / 50 > 11
    masks = video_tube_masks(6, 8, 0.2, generator=g)
    assert masks.shape == (6, 64) and not all(torch.equal(masks[0], m) for m in masks[1:])


def _tiny_clover(*extra):
    return load_config("clover", TINY + ["model.fusion.layers=2", *extra])


def _batch(cfg, tokenizer, knowledge, b=4):
    from structvl.data.text import Tokenizer
    tok = Tokenizer(max_length=cfg.model.text.max_length)
    enc, offsets = tok.encode_with_offsets(CAPTIONS[:b])
    v = cfg.model.video
    g = torch.Generator().manual_seed(1)
    return dict(video=torch.randn(b, v.num_frames, 3, v.image_size, v.image_size, generator=g),
                frame_mask=torch.ones(b, v.num_frames, dtype=torch.bool), knowledge=list(knowledge[:b]),
                token_offsets=offsets, **enc), tok


def _module(cfg, tok):
    from structvl.models.video_text import build_model
    from structvl.objectives.base import ObjectiveContext
    from structvl.objectives.pretraining import PretrainingModule
    torch.manual_seed(0)
    return PretrainingModule(build_model(cfg.model), cfg, ObjectiveContext(tokenizer=tok))


def test_video_mask_is_the_same_at_every_time_step_and_uses_the_mask_token(knowledge, tokenizer):
    cfg = _tiny_clover("model.video.image_size=64", "clover.video_mask_ratio=0.25")
    batch, tok = _batch(cfg, tokenizer, knowledge)
    module = _module(cfg, tok)
    module.batch_passes = False  # the masked clips in their own call (batched: tests/test_objective_batching.py)
    model = module.model
    seen = {}
    original = model.encode_video

    def spy(video, frame_mask=None, patch_embeddings=None):
        if patch_embeddings is not None:
            seen["masked"] = patch_embeddings.detach()
        return original(video, frame_mask, patch_embeddings)

    model.encode_video = spy
    module(batch)
    plain = model.video_encoder.embed(batch["video"]).detach()
    changed = (seen["masked"] - plain).abs().sum(-1) > 0  # (B, T', N)
    assert changed.shape[1] > 1 and changed.any()
    assert torch.equal(changed, changed[:, :1].expand_as(changed))  # tubes: identical across time
    enc = model.video_encoder
    core = module.objectives["clover_align"].clover
    expected = (core.mask_token + enc.pos_embed[:, None, 1:] + enc.time_embed[:, :, None]).detach()
    b, t, n = changed.nonzero()[0].tolist()
    torch.testing.assert_close(seen["masked"][b, t, n], expected[0, t, n])


# ---------------------------------------------------------------- model + objectives
def test_no_fusion_model_is_the_dual_encoder_bit_for_bit():
    from structvl.models.video_text import build_model
    base_cfg = load_config("demo", TINY)
    torch.manual_seed(0)
    base = build_model(base_cfg.model)
    torch.manual_seed(0)
    fused = build_model(_tiny_clover("model.learn_temperature=true").model)
    assert base.fusion is None and not any(k.startswith("fusion.") for k in base.state_dict())
    fused_state = fused.state_dict()
    for k, v in base.state_dict().items():
        assert torch.equal(v, fused_state[k]), k
    assert fused.fusion.width == fused.text_encoder.width
    # Layer 0 is a copy of the text encoder's first layer; layer 1 (beyond the 1-layer text encoder) is fresh.
    torch.testing.assert_close(fused.fusion.layers[0].state_dict(), fused.text_encoder.bert.encoder.layer[0].state_dict())


def test_fusion_checkpointing_keeps_less_for_the_same_loss_and_gradients(knowledge, tokenizer):
    """model.fusion.activation_checkpointing: the fusion layers recompute their activations in the backward
    instead of saving them, and the step is the same step (loss and every gradient)."""

    def step(checkpointing: bool):
        cfg = _tiny_clover("train.precision=fp32", f"model.fusion.activation_checkpointing={checkpointing}")
        batch, tok = _batch(cfg, tokenizer, knowledge)
        module = _module(cfg, tok).train()
        saved: dict[int, int] = {}  # what the fusion encoder's forward saves for the backward
        inside = []
        module.model.fusion.register_forward_pre_hook(lambda *a: inside.append(1))
        module.model.fusion.register_forward_hook(lambda *a: inside.clear())

        def pack(t):
            if inside:
                saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        torch.manual_seed(2)  # the objectives' masking and dropout draw the same numbers in both runs
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss, _ = module(batch)
        loss.backward()
        grads = {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}
        return loss.detach(), grads, sum(saved.values())

    loss_a, grads_a, saved_a = step(False)
    loss_b, grads_b, saved_b = step(True)
    torch.testing.assert_close(loss_a, loss_b)
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], rtol=1e-4, atol=1e-6, msg=name)
    assert saved_b < 0.5 * saved_a, (saved_a, saved_b)


def test_model_checkpointing_switches_the_fusion_layers_too(knowledge, tokenizer):
    """model.activation_checkpointing recomputes the fusion layers (copied from the text encoder or fresh) in the
    backward, and `set_activation_checkpointing(False)` stops that as it does for the towers: each fusion layer's
    forward runs once per fusion call instead of twice (what benchmarks count as the model's FLOPs)."""
    cfg = _tiny_clover("train.precision=fp32", "model.activation_checkpointing=true")
    batch, tok = _batch(cfg, tokenizer, knowledge)
    module = _module(cfg, tok).train()
    fusion = module.model.fusion
    calls = {"fusion": 0, "layers": [0] * len(fusion.layers)}
    fusion.register_forward_pre_hook(lambda *a: calls.__setitem__("fusion", calls["fusion"] + 1))
    for i, layer in enumerate(fusion.layers):  # its MLP: run whether the layer computes every row or those read
        layer.intermediate.register_forward_pre_hook(
            lambda *a, i=i: calls["layers"].__setitem__(i, calls["layers"][i] + 1))

    def runs_per_call(enabled: bool) -> list[float]:
        module.model.set_activation_checkpointing(enabled)
        calls["fusion"], calls["layers"] = 0, [0] * len(fusion.layers)
        loss, _ = module(batch)
        loss.backward()
        module.zero_grad(set_to_none=True)
        return [n / calls["fusion"] for n in calls["layers"]]

    assert runs_per_call(True) == [2.0] * len(fusion.layers)  # layer 0 copied, layer 1 fresh: both recompute
    assert runs_per_call(False) == [1.0] * len(fusion.layers)
    assert runs_per_call(True) == [2.0] * len(fusion.layers)


def test_fuse_shapes_and_gradients_reach_every_head(knowledge, tokenizer):
    cfg = _tiny_clover("train.precision=fp32")
    batch, tok = _batch(cfg, tokenizer, knowledge)
    module = _module(cfg, tok)
    model = module.model
    out = model.fuse(model.encode_video(batch["video"]).encoder,
                     model.encode_text(batch["input_ids"], batch["attention_mask"]).encoder)
    assert out.cls.shape == (4, model.fusion.width) and out.text_states.shape == (*batch["input_ids"].shape, model.fusion.width)
    loss, logs = module(batch)
    assert {"clover_align/loss", "clover_rank/loss", "clover_mlm/loss", "clover_mlm/accuracy"} <= set(logs)
    assert logs["clover_mlm/masked_tokens"] >= 4  # at least one unit per caption
    loss.backward()
    names = dict(module.named_parameters())
    # The shared core (mask token, fused heads) is registered once, under the first Clover objective.
    assert sum("mask_token" in n for n in names) == 1
    no_grad = [n for n, p in names.items() if p.requires_grad and (p.grad is None or p.grad.abs().sum() == 0)]
    # Position rows past the caption length and unused vocabulary rows are legitimately zero; nothing else.
    assert no_grad == [], no_grad


def test_rank_alone_runs_no_fusion_pass(knowledge, tokenizer):
    cfg = _tiny_clover("objectives.clover_align=0", "objectives.clover_mlm=0", "objectives.contrastive=1",
                       "model.learn_temperature=true")
    batch, tok = _batch(cfg, tokenizer, knowledge)
    module = _module(cfg, tok)
    calls = []
    module.model.fusion.register_forward_hook(lambda *a: calls.append(1))
    loss, logs = module(batch)
    assert calls == [] and "clover_rank/loss" in logs and torch.isfinite(loss)


def test_mlm_alone_runs_one_fusion_pass_and_every_parameter_it_builds_gets_a_gradient(knowledge, tokenizer):
    # The "fusion MLM only" ablation (demo recipe clover_mlm_only): no alignment, so no fused heads.
    cfg = _tiny_clover("objectives.clover_align=0", "objectives.clover_rank=0", "objectives.contrastive=1",
                       "model.learn_temperature=true", "train.precision=fp32")
    batch, tok = _batch(cfg, tokenizer, knowledge)
    module = _module(cfg, tok)
    calls = []
    module.model.fusion.register_forward_hook(lambda *a: calls.append(1))
    loss, logs = module(batch)
    assert len(calls) == 1 and {"clover_mlm/loss", "contrastive/loss"} <= set(logs)
    loss.backward()
    names = dict(module.named_parameters())
    assert not any("fused_" in n or "mask_token" in n for n in names)  # nothing DDP would find unused
    no_grad = [n for n, p in names.items() if p.requires_grad and (p.grad is None or p.grad.abs().sum() == 0)]
    assert no_grad == [], no_grad


@pytest.mark.parametrize("batch_passes", [True, False])
def test_masked_clips_builds_the_masked_samples_of_the_first_pairs(knowledge, tokenizer, batch_passes):
    """`clover.masked_clips: 3` of a batch of 4: the masked clips and captions are the first 3 of those every pair
    would get (the same draws), alignment, ranking and MLM read 3 masked items each, and ranking and MLM weigh
    the 3 pairs as Clover's loss over the 4 does: their mean x 3/4."""
    cfg = _tiny_clover()
    batch, tok = _batch(cfg, tokenizer, knowledge)
    seen = {}
    for n in (0, 3):
        module = _module(_tiny_clover(f"clover.masked_clips={n}"), tok)
        module.batch_passes = batch_passes
        without_dropout(module)  # so that only the masks are random
        seed_everything(5)  # the masks draw from Python's and torch's generators
        loss, logs = module(batch)
        p = module.objectives["clover_align"].clover._passes
        seen[n] = {"tm": p.masked_text()[1], "vm": p.masked_video().embed, "f_vm": p.fused_masked_video()}
        assert torch.isfinite(loss) and {"clover_align/loss", "clover_rank/loss", "clover_mlm/loss"} <= set(logs)
        if n == 0:  # the full batch's terms, to weigh the first 3 pairs' share of them by hand below
            v, t, scale = p.outputs.video.embed, p.outputs.text.embed, module.model.logit_scale
            tm, labels = p.masked_text()[0].embed, p.masked_text()[1]
            states = p.fused_masked_text_output().read_states  # the masked positions', row by row
            margin, gamma = p.core.cfg.rank_margin, p.core.cfg.focal_gamma
            rank3 = (pairwise_ranking(v[:3], t[:3], tm[:3], scale, margin)
                     + pairwise_ranking(t[:3], v[:3], p.masked_video().embed[:3], scale, margin))
            where = labels[:3] != -100
            mlm3 = focal_mlm_loss(module.model.mlm_logits(states[:int(where.sum())]), labels[:3][where], gamma)
        else:  # each masked pair weighs what it weighs in Clover's loss: the mean over the 3 pairs x 3/4
            assert logs["clover_rank/loss"].item() == pytest.approx(0.75 * rank3.item(), rel=1e-5, abs=1e-6)
            assert logs["clover_mlm/loss"].item() == pytest.approx(0.75 * mlm3.item(), rel=1e-5)
    assert [len(x) for x in seen[3].values()] == [3, 3, 3] and [len(x) for x in seen[0].values()] == [4, 4, 4]
    assert torch.equal(seen[3]["tm"], seen[0]["tm"][:3])  # the same text masks
    assert torch.allclose(seen[3]["vm"], seen[0]["vm"][:3], atol=1e-5)  # the same video masks, the same weights
    assert torch.allclose(seen[3]["f_vm"], seen[0]["f_vm"][:3], atol=1e-5)


def test_alignment_pools_hold_the_specified_fused_items(knowledge, tokenizer, monkeypatch):
    """Video anchor vs {t, tm, f_vm}, text anchor vs {v, vm, f_tm} (the spec, and the released code's wiring)."""
    import structvl.objectives.clover as clover
    cfg = _tiny_clover()
    batch, tok = _batch(cfg, tokenizer, knowledge)
    module = _module(cfg, tok)
    core = module.objectives["clover_align"].clover
    made, calls = {}, []
    real_fused, real_nce = core.fused_embedding, clover.exclusive_nce
    monkeypatch.setattr(core, "fused_embedding", lambda out, which: made.setdefault(which, real_fused(out, which)))
    monkeypatch.setattr(clover, "exclusive_nce", lambda a, pos, s: calls.append((a, pos)) or real_nce(a, pos, s))
    module(batch)
    (v_anchor, v_pool), (t_anchor, t_pool) = calls
    masked_video, (masked_text, _) = core._passes.masked_video(), core._passes.masked_text()
    assert v_pool[1] is masked_text.embed and t_pool[1] is masked_video.embed
    assert v_pool[2] is made["video"] and t_pool[2] is made["text"]  # "video" = f_vm (masked video)


# ---------------------------------------------------------------- 2 ranks (gloo) == 1 process
class _Towers(nn.Module):
    """Linear stand-ins for the encoders and fusion: six embeddings + MLM logits from the same inputs."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.heads = nn.ModuleList(nn.Linear(6, 4) for _ in range(6))
        self.mlm = nn.Linear(6, 7)

    def forward(self, x, labels):
        v, t, vm, tm, f_vm, f_tm = (F.normalize(h(x), dim=-1) for h in self.heads)
        scale = torch.tensor(5.0)
        align = exclusive_nce(v, [t, tm, f_vm], scale)["loss"] + exclusive_nce(t, [v, vm, f_tm], scale)["loss"]
        rank = pairwise_ranking(v, t, tm, scale, 1.0) + pairwise_ranking(t, v, vm, scale, 1.0)
        where = labels != -100
        mlm = focal_mlm_loss(self.mlm(x)[where], labels[where], 2.0)
        return align + rank + mlm


def _global_batch():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(8, 6, generator=g)
    labels = torch.randint(0, 7, (8,), generator=g)
    labels[[1, 2, 3, 6]] = -100  # rank 0 holds 1 MLM target, rank 1 holds 3: per-rank means would differ
    return x, labels


def _worker(rank: int, world: int, result_path: str) -> None:
    import torch.distributed as dist

    model = nn.parallel.DistributedDataParallel(_Towers())
    x, labels = _global_batch()
    per = x.shape[0] // world
    loss = model(x[rank * per:(rank + 1) * per], labels[rank * per:(rank + 1) * per])
    loss.backward()
    total = loss.detach().clone()
    dist.all_reduce(total)
    if rank == 0:
        torch.save((float(total) / world, {n: p.grad.clone() for n, p in model.module.named_parameters()}),
                   result_path)


def test_two_rank_gathered_clover_loss_equals_single_process(tmp_path):
    ref = _Towers()
    loss = ref(*_global_batch())
    loss.backward()
    result = tmp_path / "rank0.pt"
    run_on_ranks(_worker, result)
    dist_loss, grads = torch.load(result, weights_only=True)
    assert math.isclose(dist_loss, float(loss.detach()), rel_tol=1e-5)
    for name, param in ref.named_parameters():
        torch.testing.assert_close(grads[name], param.grad, rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------- end to end
def test_clover_training_lowers_the_loss_and_reports_mlm_accuracy(tiny_corpus, tmp_path):
    from structvl.tasks.evaluate import pretrain_and_evaluate

    cfg = _tiny_clover(f"data.root={tiny_corpus}", "train.max_steps=25", "train.checkpoint_every=0",
                       "clover.eval_max_captions=16")
    metrics = pretrain_and_evaluate(cfg, tmp_path / "run")
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    first = sum(r["loss"] for r in rows[:3]) / 3
    last = sum(r["loss"] for r in rows[-3:]) / 3
    assert last < first - 1.0, (first, last)
    assert 0 <= metrics["clover_mlm/accuracy"] <= 100 and metrics["clover_mlm/masked_units"] > 16
    assert "retrieval/t2v/R@1" in metrics
