"""The demo's recipes: every row and ablation resolves to a valid config that switches exactly what its label
says, and the combined recipe (CLOP + S-ViLM + Clover) trains with every objective active."""

from __future__ import annotations

import json
import math

from structvl.config import load_config
from structvl.lab.demo import ABLATIONS, RECIPES

from helpers import TINY


def _resolve(name):
    label, config = {**RECIPES, **ABLATIONS}[name]
    return load_config(config)


def _on(cfg):
    return {name for name, weight in cfg.objectives.items() if weight > 0}


def test_each_recipe_switches_what_its_label_says():
    assert _on(_resolve("baseline")) == {"contrastive"}
    assert _on(_resolve("clop")) == {"clop_kcl", "clop_skp"}
    assert _on(_resolve("svilm")) == {"contrastive", "svilm_grounding", "svilm_temporal"}
    assert _on(_resolve("clover")) == {"clover_align", "clover_rank", "clover_mlm"}
    assert _on(_resolve("all")) == {"clop_kcl", "clop_skp", "svilm_grounding", "svilm_temporal",
                                     "clover_align", "clover_rank", "clover_mlm"}
    # Single-switch ablations: one part on, the rest of its paper off.
    assert _on(_resolve("clop_skp")) == {"contrastive", "clop_skp"}
    sampling, construct = _resolve("clop_kcl_sampling"), _resolve("clop_kcl_construct")
    assert _on(sampling) == _on(construct) == {"clop_kcl"}
    assert sampling.clop.kcl_batch_sampler and not sampling.clop.kcl_construct
    assert construct.clop.kcl_construct and not (construct.clop.kcl_batch_sampler
                                                 or construct.clop.kcl_negative_weighting)
    grounded = _resolve("clop_grounded")
    assert _on(grounded) == {"clop_kcl", "clop_skp"} and grounded.clop.kcl_shortcut_penalty > 0
    assert list(grounded.clop.kcl_swap_types) == ["action"] and _resolve("clop").clop.kcl_shortcut_penalty == 0
    motion, motion_skp, motion_construct = (_resolve(n) for n in
                                            ("clop_motion", "clop_motion_skp", "clop_motion_construct"))
    assert _on(motion) == {"clop_kcl", "clop_skp"} and _on(motion_skp) == {"contrastive", "clop_skp"}
    motion_sampling = _resolve("clop_motion_sampling")  # SKP + KCL sampling grouped by attributes, no swaps
    for cfg in (motion, motion_skp, motion_sampling):  # the same SKP in each
        assert (list(cfg.clop.skp_types), cfg.clop.skp_input, cfg.objectives["clop_skp"]) == (["action"], "encoder", 4)
    assert _on(motion_sampling) == {"clop_kcl", "clop_skp"} and not motion_sampling.clop.kcl_construct
    assert motion_sampling.clop.kcl_batch_sampler and list(motion_sampling.clop.kcl_types) == ["attribute"]
    assert _on(motion_construct) == {"clop_kcl"} and not motion_construct.clop.kcl_batch_sampler
    for cfg in (motion, motion_construct):  # the same swaps in the full recipe and its construction-only switch
        assert (list(cfg.clop.kcl_swap_types), cfg.clop.kcl_shortcut_penalty) == (["action"], 1)
    assert _resolve("clover_random").clover.text_masking == "random"
    assert _on(_resolve("clover_norank")) == {"clover_align", "clover_mlm"}
    assert _on(_resolve("clover_mlm_only")) == {"contrastive", "clover_mlm"}


def test_all_recipes_share_the_baseline_budget_and_model():
    base = _resolve("baseline")
    for name in [*RECIPES, *ABLATIONS]:
        cfg = _resolve(name)
        assert (cfg.train.max_steps, cfg.train.batch_size, cfg.optim.lr) == (
            base.train.max_steps, base.train.batch_size, base.optim.lr), name
        assert (cfg.model.video.width, cfg.model.video.depth, cfg.model.text.init) == (
            base.model.video.width, base.model.video.depth, base.model.text.init), name
    combined = _resolve("all")
    assert combined.model.video.num_group_tokens == _resolve("svilm").model.video.num_group_tokens > 0
    assert combined.model.fusion.layers == _resolve("clover").model.fusion.layers > 0


def test_combined_recipe_trains_every_objective(tiny_corpus, tmp_path):
    from structvl.engine.pretrain import run_pretraining

    cfg = load_config("all", TINY + [f"data.root={tiny_corpus}", "train.max_steps=3", "train.checkpoint_every=0",
                                     "model.fusion.layers=1", "knowledge.min_count=1",
                                     "clop.kcl_sampler_groups=2"])
    run_pretraining(cfg, tmp_path / "run")
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    logged = set().union(*rows)
    for objective in _on(cfg):
        assert any(key.startswith(f"{objective}/") for key in logged), objective
    assert all(math.isfinite(r["loss"]) for r in rows if "loss" in r)
