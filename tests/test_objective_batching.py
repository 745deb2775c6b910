"""objectives/passes.py: the objectives' extra passes batched into the shared encoder calls compute the same
losses and gradients as one call per pass; the cached tokenisation of recurring texts equals a fresh one."""

from __future__ import annotations

import random

import pytest
import torch

from structvl.config import load_config
from structvl.data.text import TokenCache, Tokenizer
from structvl.engine.pretrain import build_objective_context, build_train_data, seed_everything
from structvl.models.text_encoder import build_tokenizer
from structvl.models.video_text import build_model
from structvl.objectives.passes import TextInput, encode_texts, length_buckets
from structvl.objectives.pretraining import PretrainingModule

from helpers import SHAPE_CAPTIONS, TINY, without_dropout

# The paper recipes and the ablations whose passes differ from them (Clover without alignment or ranking draws
# its masks in another order and fuses once; S-ViLM's "span" phrases need no extra text pass).
# Then the lean options (masked samples and cut-and-paste for part of the batch of 8), as config + overrides.
RECIPES = ["clop", "svilm", "clover", "all", "ablations/clover_mlm_only", "ablations/clover_norank",
           "ablations/svilm_span", "ablations/clop_grounded", "ablations/svilm_cut4", "clover clover.masked_clips=3",
           "all clover.masked_clips=3 svilm.temporal_clips=5 clop.kcl_negatives_per_caption=1"]


def _step(cfg, context, batch, batch_passes: bool):
    """Loss, logs and gradients of one step from the same initial weights, dropout off (its draws are the only
    randomness whose order batching changes)."""
    seed_everything(0)
    context.__dict__.pop("clover_core", None)  # each module builds (and owns) its own Clover core
    module = without_dropout(PretrainingModule(build_model(cfg.model), cfg, context, batch_passes=batch_passes).train())
    seed_everything(1)  # the objectives' own draws (swaps, cut-and-paste, masks) start from the same state
    loss, logs = module(batch)
    loss.backward()
    return loss.detach(), logs, {n: p.grad for n, p in module.named_parameters() if p.grad is not None}


@pytest.fixture(scope="module")
def recipe_batch(tiny_corpus, tmp_path_factory):
    cache = {}

    def make(recipe):
        if recipe not in cache:
            config, *overrides = recipe.split()
            cfg = load_config(config, TINY + [f"data.root={tiny_corpus}", "model.video.group_gumbel_noise=false",
                                              *overrides])
            tokenizer = build_tokenizer(cfg.model.text)
            context = build_objective_context(cfg, tokenizer, tmp_path_factory.mktemp("run"), is_main=True)
            dataset, collator = build_train_data(cfg, tokenizer, knowledge=context.knowledge or None)
            cache[recipe] = cfg, context, collator([dataset[i] for i in range(8)])
        return cache[recipe]

    return make


@pytest.mark.parametrize("recipe", RECIPES)
def test_batched_passes_give_the_unbatched_losses_and_gradients(recipe, recipe_batch, one_thread):
    cfg, context, batch = recipe_batch(recipe)
    ref_loss, ref_logs, ref_grads = _step(cfg, context, batch, batch_passes=False)
    loss, logs, grads = _step(cfg, context, batch, batch_passes=True)
    assert torch.allclose(loss, ref_loss, rtol=1e-5, atol=1e-6)
    for key, value in ref_logs.items():
        assert float(logs[key]) == pytest.approx(float(value), rel=1e-4, abs=1e-5), key
    assert set(grads) == set(ref_grads)
    scale = max(g.abs().max() for g in ref_grads.values())
    for name, g in ref_grads.items():
        assert torch.allclose(grads[name], g, atol=1e-5 * float(scale)), name


def test_the_batched_step_makes_one_call_per_encoder(recipe_batch, one_thread, monkeypatch):
    cfg, context, batch = recipe_batch("all")
    context.__dict__.pop("clover_core", None)
    module = PretrainingModule(build_model(cfg.model), cfg, context).train()
    calls = {"video": 0, "fuse": 0}
    video_forward, fuse = type(module.model.video_encoder).forward, module.model.fuse

    def count_video(self, *args, **kwargs):
        calls["video"] += 1
        return video_forward(self, *args, **kwargs)

    def count_fuse(*args, **kwargs):
        calls["fuse"] += 1
        return fuse(*args, **kwargs)

    monkeypatch.setattr(type(module.model.video_encoder), "forward", count_video)
    monkeypatch.setattr(module.model, "fuse", count_fuse)
    module(batch)
    # The batch's clips, Clover's masked clips and S-ViLM's cut clips in one call; both fusion passes in one.
    assert calls == {"video": 1, "fuse": 1}


def test_text_inputs_are_bucketed_by_length_and_reassembled_in_order(one_thread):
    cfg = load_config("demo", TINY)
    torch.manual_seed(0)
    model = build_model(cfg.model).eval()
    tokenizer = Tokenizer(24, path=None)
    short = tokenizer(["a circle", "a red star", "a big square"])
    long = tokenizer(SHAPE_CAPTIONS)
    with torch.no_grad():
        batched = encode_texts(model, [TextInput(long["input_ids"], long["attention_mask"], keep_tokens=True),
                                       TextInput(short["input_ids"], short["attention_mask"])])
        alone = [model.encode_text(t["input_ids"], t["attention_mask"]) for t in (long, short)]
    for got, want in zip(batched, alone):
        assert torch.allclose(got.embed, want.embed, atol=1e-5)
        assert torch.allclose(got.encoder.pooled, want.encoder.pooled, atol=1e-5)
    real = long["attention_mask"].bool()
    assert batched[0].encoder.tokens.shape == alone[0].encoder.tokens.shape
    assert torch.allclose(batched[0].encoder.tokens[real], alone[0].encoder.tokens[real], atol=1e-5)
    assert batched[1].encoder.tokens is None  # not asked for


def test_length_buckets_trade_padding_against_calls():
    lengths = [5, 30, 6, 31, 5, 29]
    assert length_buckets(lengths, call_cost=0) == [[0, 4], [2], [5], [1], [3]]  # every length its own bucket
    assert length_buckets(lengths, call_cost=10 ** 6) == [[0, 4, 2, 5, 1, 3]]  # one call, padded to 31
    assert length_buckets(lengths, call_cost=20) == [[0, 4, 2], [5, 1, 3]]  # short and long apart
    assert length_buckets([]) == []


def test_cached_tokenisation_equals_a_fresh_one():
    tokenizer = Tokenizer(12)
    cache = TokenCache(tokenizer, max_entries=4)
    texts = SHAPE_CAPTIONS[:5] + SHAPE_CAPTIONS[:2]  # repeats, and captions cut at 12 tokens
    for batch in (texts, texts[::-1], texts[2:4], ["a star"]):
        fresh, cached = tokenizer(batch), cache(batch)
        assert torch.equal(fresh["input_ids"], cached["input_ids"])
        assert torch.equal(fresh["attention_mask"], cached["attention_mask"])
    assert len(cache) == 4  # least recently used texts left
    assert cache([])["input_ids"].shape == tokenizer([])["input_ids"].shape == (0, 0)


def test_objectives_tokenise_each_recurring_text_once(recipe_batch, one_thread, monkeypatch):
    cfg, context, batch = recipe_batch("all")
    context.__dict__.pop("clover_core", None)
    module = PretrainingModule(build_model(cfg.model), cfg, context).train()
    seen = []
    call = Tokenizer.__call__
    monkeypatch.setattr(Tokenizer, "__call__", lambda self, texts: (seen.extend(texts), call(self, texts))[1])
    random.seed(0)
    module.objectives["svilm_grounding"].requests(batch, module.model)
    first = len(seen)
    assert first > 0
    module.objectives["svilm_grounding"].requests(batch, module.model)
    assert len(seen) == first  # the same phrases again: nothing tokenised
