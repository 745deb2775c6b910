"""`structvl demo` / `make demo`: the main job on the embedded structured corpus.

corpus (generated if absent) -> pre-train each recipe for each seed -> zero-shot retrieval and hard-negative
accuracy -> a table on stdout, `metrics.json` and `report.html` in the output directory.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np

from structvl.config import load_config

# name -> (row label, shipped config). Each recipe is the baseline plus its paper's objectives, same budget.
# `structvl demo --recipes baseline,clop` picks rows; the first listed recipe is the reference row.
RECIPES = {
    "baseline": ("contrastive baseline", "demo.yaml"),
}

# --quick: the same pipeline on a smaller corpus with fewer steps (a smoke test, ~2 minutes).
QUICK_CORPUS = {"num_clips": 400, "num_untrimmed": 16}
QUICK_OVERRIDES = ["train.max_steps=60", "train.checkpoint_every=0", "optim.warmup_steps=10",
                   "train.batch_size=24"]
FULL_CORPUS = {"num_clips": 2000, "num_untrimmed": 200}

TABLE_COLUMNS = ["retrieval/t2v/R@1", "retrieval/t2v/R@5", "retrieval/t2v/R@10", "retrieval/t2v/MdR",
                 "retrieval/v2t/R@1", "retrieval/v2t/R@5", "hard_negative/overall", "hard_negative/shape",
                 "hard_negative/colour", "hard_negative/size", "hard_negative/action", "hard_negative/relation"]


def aggregate(per_seed: list[dict]) -> dict[str, tuple[float, float]]:
    """metric -> (mean, std over seeds); std is 0 for a single seed."""
    keys = set.intersection(*(set(m) for m in per_seed))
    return {k: (float(np.mean([m[k] for m in per_seed])), float(np.std([m[k] for m in per_seed])))
            for k in sorted(keys) if all(isinstance(m[k], (int, float)) for m in per_seed)}


def format_table(rows: dict[str, dict[str, tuple[float, float]]], chance: dict[str, float]) -> str:
    columns = [c for c in TABLE_COLUMNS if any(c in r for r in rows.values())]
    short = [c.replace("retrieval/", "").replace("hard_negative/", "hn/") for c in columns]
    width = max(len(label) for label in list(rows) + ["chance"]) + 2
    lines = ["".join([f"{'recipe':<{width}}"] + [f"{s:>14}" for s in short])]
    for label, values in rows.items():
        cells = [f"{values[c][0]:>8.1f}±{values[c][1]:<5.1f}" if c in values else f"{'-':>14}" for c in columns]
        lines.append(f"{label:<{width}}" + "".join(cells))
    lines.append(f"{'chance':<{width}}" + "".join(f"{chance.get(c, float('nan')):>14.1f}" for c in columns))
    return "\n".join(lines)


def run_demo(out: str | Path = "runs/demo", quick: bool = False, data: str | Path = "data/structured",
             seeds: int = 1, recipes: list[str] | None = None, overrides: list[str] | None = None) -> int:
    """recipes: keys of RECIPES (default: all). overrides: `key=value` config overrides applied to every
    recipe (e.g. `train.max_steps=150` for a shorter ablation budget)."""
    from structvl.data.synth import generate_corpus
    from structvl.data.text import Tokenizer
    from structvl.engine.pretrain import run_pretraining
    from structvl.report import examples_section, write_report
    from structvl.tasks.evaluate import load_run_model

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    t_start = time.perf_counter()
    out, data = Path(out), Path(data)
    if quick:
        data = data.with_name(data.name + "-quick")
    corpus = QUICK_CORPUS if quick else FULL_CORPUS
    print(f"[1/3] structured corpus at {data}", flush=True)
    generate_corpus(data, num_clips=corpus["num_clips"], num_untrimmed=corpus["num_untrimmed"], seed=0)

    rows: dict[str, dict[str, tuple[float, float]]] = {}
    runs: dict[str, list[Path]] = {}
    per_recipe_seed: dict[str, list[dict]] = {}
    unknown = [r for r in recipes or [] if r not in RECIPES]
    if unknown:
        raise ValueError(f"unknown recipe(s) {unknown}; known: {list(RECIPES)}")
    for name in recipes or list(RECIPES):
        label, config = RECIPES[name]
        for seed in range(seeds):
            run_dir = out / name / f"seed{seed}"
            print(f"[2/3] pre-training '{label}' seed {seed} -> {run_dir}", flush=True)
            cfg = load_config(config, [f"data.root={data}", f"train.seed={seed}"]
                              + (QUICK_OVERRIDES if quick else []) + list(overrides or []))
            per_recipe_seed.setdefault(label, []).append(run_pretraining(cfg, run_dir))
            runs.setdefault(label, []).append(run_dir)
        rows[label] = aggregate(per_recipe_seed[label])

    first = next(iter(per_recipe_seed.values()))[0]
    chance = {k.replace("/chance/", "/t2v/"): v for k, v in first.items() if k.startswith("retrieval/chance/")}
    chance.update({k.replace("/chance/", "/v2t/"): v for k, v in first.items() if k.startswith("retrieval/chance/")})
    chance.update({c: 50.0 for c in TABLE_COLUMNS if c.startswith("hard_negative/")})

    print("[3/3] evaluation (zero-shot, test split)", flush=True)
    table = format_table(rows, chance)
    print(table)
    baseline_label = next(iter(rows))
    summary = {k: v[0] for k, v in rows[baseline_label].items()}
    for label, values in rows.items():
        summary.update({f"{label}/{k}": v[0] for k, v in values.items()})
        summary.update({f"{label}/{k}/std": v[1] for k, v in values.items()})
    summary["demo/seeds"] = seeds
    summary["demo/seconds"] = time.perf_counter() - t_start
    (out / "metrics.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")

    model, cfg, _ = load_run_model(runs[baseline_label][0])
    examples = examples_section(model, cfg, Tokenizer(cfg.model.text.max_length), data)
    columns = [c for c in TABLE_COLUMNS if any(c in r for r in rows.values())]
    notes = (f"Corpus: {data} ({corpus['num_clips']} clips). Seeds: {seeds}. Chance for retrieval is a random "
             f"ranking of the {int(first.get('retrieval/num_videos', 0))} test videos; for hard negatives 50%.")
    report = write_report(out / "report.html", "structvl demo: pre-training on the structured corpus", rows,
                          columns, chance, runs, examples, notes)
    print(f"report: {report}\nmetrics: {out / 'metrics.json'}\ntotal time: {summary['demo/seconds']:.0f} s")
    return 0
