"""`structvl demo` / `make demo`: the main job on the embedded structured corpus.

corpus (generated if absent) -> pre-train each recipe for each seed -> zero-shot retrieval and hard-negative
accuracy -> a table on stdout, `metrics.json` and `report.html` in the output directory.

Choices are made on val, results reported on test: `--split val` evaluates every measure (retrieval, hard
negatives, the papers' measures, the downstream protocol) on the corpus's val split, in OUT-val, and is the table to
look at when choosing a weight, an option, a budget or which ablation is a paper's recipe; the default `--split
test` makes the reported table, once per recipe. `--generalize` adds zero-shot retrieval and hard negatives of each
trained model on an unseen corpus (another seed, held-out colour-shape pairs; `unseen_corpus_arguments`).
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import time
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from structvl.config import load_config, resolved_yaml
from structvl.engine.checkpoint import load_run_model
from structvl.engine.run_dir import same_code, same_config
from structvl.lab.report import examples_section, grounding_section, write_report
from structvl.lab.synth.corpus import structured_corpus
from structvl.models.text_encoder import build_tokenizer
from structvl.runtime.errors import RunStopped
from structvl.runtime.process import die_with_parent, preloaded
from structvl.tasks.downstream import run_suite
from structvl.tasks.evaluate import evaluate_model, hold_eval_clips, pretrain_and_evaluate
from structvl.tasks.finetuning import pick_device
from structvl.tasks.grounding import evaluate_grounding, evaluate_scene_change
from structvl.tasks.task_config import load_task_config

# name -> (row label, shipped config). Each recipe is the baseline plus its paper's objectives, same budget.
# `structvl demo --recipes baseline,clop` picks rows; the first listed recipe is the reference row.
RECIPES = {
    "baseline": ("contrastive baseline", "demo.yaml"),
    "clop": ("+ CLOP (SKP + KCL)", "clop.yaml"),
    "svilm": ("+ S-ViLM", "svilm.yaml"),
    "clover": ("+ Clover", "clover.yaml"),
    "all": ("+ CLOP + S-ViLM + Clover", "all.yaml"),
}

# Single-switch ablations, run only when named (`--recipes baseline,clop_skp,...`): name -> (row label, config).
# Each is a small file under configs/ablations/ that says what it changes from its paper's recipe; those that go
# beyond the paper's setup as docs/methods-spec.md describes it open with `# [extension]` there, and their row label
# ends in `[extension]` (in the table and the report). The others leave out or swap a part of the paper's setup.
ABLATIONS = {
    "clop_skp": ("+ CLOP SKP only", "ablations/clop_skp.yaml"),
    "clop_kcl_sampling": ("+ CLOP KCL sampling only", "ablations/clop_kcl_sampling.yaml"),
    "clop_kcl_construct": ("+ CLOP KCL construction only", "ablations/clop_kcl_construct.yaml"),
    "clop_grounded": ("+ CLOP, action swaps + shortcut penalty [extension]", "ablations/clop_grounded.yaml"),
    "clop_motion": ("+ CLOP, action swaps + penalty + SKP on actions from the encoder [extension]",
                    "ablations/clop_motion.yaml"),
    "clop_motion_skp": ("+ CLOP SKP only, on actions from the encoder [extension]", "ablations/clop_motion_skp.yaml"),
    "clop_motion_construct": ("+ CLOP KCL construction only, action swaps + penalty [extension]",
                              "ablations/clop_motion_construct.yaml"),
    "clop_motion_sampling": ("+ CLOP SKP on actions from the encoder + KCL sampling by attributes [extension]",
                             "ablations/clop_motion_sampling.yaml"),
    "clop_neg1": ("+ CLOP, one swapped caption each", "ablations/clop_neg1.yaml"),
    "clop_neg1_action": ("+ CLOP, one action swap each [extension]", "ablations/clop_neg1_action.yaml"),
    "clop_neg2_action": ("+ CLOP, two action swaps each [extension]", "ablations/clop_neg2_action.yaml"),
    "svilm_span": ("+ S-ViLM, phrases as caption spans [extension]", "ablations/svilm_span.yaml"),
    "svilm_cut4": ("+ S-ViLM, cut-and-paste on 4 clips a batch [extension]", "ablations/svilm_cut4.yaml"),
    "clover_random": ("+ Clover, random-token masking", "ablations/clover_random.yaml"),
    "clover_norank": ("+ Clover, no ranking loss", "ablations/clover_norank.yaml"),
    "clover_mlm_only": ("+ fusion MLM only", "ablations/clover_mlm_only.yaml"),
    "clover_mask6": ("+ Clover, masked samples of 6 pairs a batch [extension]", "ablations/clover_mask6.yaml"),
    "all_lean": ("+ CLOP + S-ViLM + Clover, lean passes [extension]", "ablations/all_lean.yaml"),
    "all_lean_action": ("+ CLOP + S-ViLM + Clover, lean passes, two action swaps [extension]",
                        "ablations/all_lean_action.yaml"),
}

# --quick: the same pipeline on a smaller corpus with fewer steps (a smoke test).
QUICK_CORPUS = {"num_clips": 400, "num_untrimmed": 16}
QUICK_OVERRIDES = ["train.max_steps=60", "train.checkpoint_every=0", "optim.warmup_steps=10",
                   "train.batch_size=24"]
FULL_CORPUS = {"num_clips": 2000, "num_untrimmed": 200}

TABLE_COLUMNS = ["retrieval/t2v/R@1", "retrieval/t2v/R@5", "retrieval/t2v/R@10", "retrieval/t2v/MdR",
                 "retrieval/v2t/R@1", "retrieval/v2t/R@5", "hard_negative/overall", "hard_negative/shape",
                 "hard_negative/colour", "hard_negative/size", "hard_negative/action", "hard_negative/relation",
                 "hard_negative/blind/action",  # the action pairs scored with the mean test video: a text prior
                 "hard_negative/static/action",  # ... with the clip frozen to one frame: what needs no motion
                 "hard_negative/balanced/action",  # the mean over kinds of action change: no reward for a fixed preference
                 "mcqa/accuracy", "openqa/accuracy", "recognition/linear/top1", "localization/mAP@0.5",
                 "localization/mAP_avg",
                 "localization/agnostic/mAP_avg",  # the same detections without their class: the boundaries alone
                 # What each paper's objective trains, measured on every recipe where it can be:
                 "clop/skp_mAP",  # CLOP: knowledge prediction on the test captions (SKP heads only)
                 "grounding/pointing", "grounding/pointing_best_patch",  # S-ViLM: chosen group vs best patch
                 "temporal/scene_change_acc",  # S-ViLM: cut-and-paste frames split by 2-means
                 "clover_mlm/accuracy"]  # Clover: masked noun/verb filled in through the fusion encoder

# The downstream columns: the frozen-encoder suite of this protocol file on the corpus's test split after each
# pre-training run (zero-shot MC-QA, open-QA head, linear-probe recognition, localization head), each column
# read against the reference key beside it (chance; the majority answer for open QA).
DOWNSTREAM_CONFIG = "finetune/structured_demo"
DOWNSTREAM_REFERENCE = {"mcqa/accuracy": "mcqa/chance", "openqa/accuracy": "openqa/majority_accuracy",
                        "recognition/linear/top1": "recognition/chance/top1",
                        "localization/mAP@0.5": "localization/chance/mAP@0.5",
                        "localization/mAP_avg": "localization/chance/mAP_avg",
                        "localization/agnostic/mAP_avg": "localization/agnostic/chance/mAP_avg",
                        "clop/skp_mAP": "clop/skp_mAP_chance",  # a scorer that ignores the video
                        "grounding/pointing": "grounding/pointing_chance",  # a uniformly random patch
                        "grounding/pointing_best_patch": "grounding/pointing_chance",
                        "temporal/scene_change_acc": "temporal/scene_change_chance"}  # random frame labels


# --generalize: each trained model, zero-shot, on an unseen corpus: another seed, and colour-shape pairs that never
# appear in its training split (`structvl synth --holdout-compositions`; they are shown in its test split only). Only
# retrieval and hard negatives (no head is trained there), as the columns `unseen:<column>`.
UNSEEN_PREFIX = "unseen:"
UNSEEN_COLUMNS = ["retrieval/t2v/R@1", "retrieval/t2v/R@5", "retrieval/v2t/R@1", "hard_negative/overall",
                  "hard_negative/shape", "hard_negative/colour", "hard_negative/size", "hard_negative/action",
                  "hard_negative/relation"]


def unseen_corpus_arguments(corpus: dict) -> dict:
    """The unseen corpus of a demo corpus: the same size and clips, the next seed, held-out compositions, no
    untrimmed videos (only retrieval and hard negatives are measured on it)."""
    return {**corpus, "seed": corpus["seed"] + 1, "holdout_compositions": True, "num_untrimmed": 0}


def unseen_metrics(run_dir: Path, unseen: Path, split: str) -> dict[str, float]:
    """Zero-shot retrieval and hard negatives of a finished run on the unseen corpus's `split`, keys prefixed with
    UNSEEN_PREFIX; kept in the run's metrics.json and reused from there (a run trained again rewrites that file)."""
    path = Path(run_dir) / "metrics.json"
    saved = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    if any(k.startswith(UNSEEN_PREFIX) for k in saved):
        return {k: v for k, v in saved.items() if k.startswith(UNSEEN_PREFIX)}
    model, cfg, _ = load_run_model(run_dir)
    cfg.eval.split = split
    device = pick_device(cfg)
    metrics = evaluate_model(model.to(device), cfg, build_tokenizer(cfg.model.text), device, data_root=unseen)
    out = {f"{UNSEEN_PREFIX}{k}": v for k, v in metrics.items()}
    write_json_merged(path, out)
    return out


def downstream_metrics(run_dir: Path, data: Path, pretrain_metrics: dict) -> dict[str, float]:
    """Run the downstream suite (DOWNSTREAM_CONFIG) on a finished run, and S-ViLM's grounding / scene-change
    evaluation where pre-training did not already (it works for any model, so the baseline is measured on the
    same footing: its best patch, its per-frame features); merged into the run's metrics.json."""

    start = time.perf_counter()
    model, cfg, _ = load_run_model(run_dir)
    device = pick_device(cfg)
    model = model.to(device)
    metrics = run_suite(model, cfg, load_task_config(DOWNSTREAM_CONFIG), data, device=device)
    tokenizer = build_tokenizer(cfg.model.text)
    clips = hold_eval_clips(model, cfg, tokenizer, device, data)  # both measures read the test clips decoded once
    if "grounding/pointing_best_patch" not in pretrain_metrics:
        metrics.update(evaluate_grounding(model, cfg, tokenizer, device, data, clips=clips))
    if "temporal/scene_change_acc" not in pretrain_metrics:
        metrics.update(evaluate_scene_change(model, cfg, tokenizer, device, data, clips=clips))
    print(f"      downstream suite ({DOWNSTREAM_CONFIG}): {time.perf_counter() - start:.0f} s", flush=True)
    write_json_merged(Path(run_dir) / "metrics.json", metrics)
    return metrics


def write_json_merged(path: Path, metrics: dict) -> None:
    saved = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    path.write_text(json.dumps({**saved, **metrics}, indent=2), encoding="utf-8")


def finished_run_metrics(cfg, run_dir: Path) -> dict | None:
    """The metrics of a run this demo finished before (pre-training + downstream) with the same resolved config
    and the same code (package version and source hash, `engine.run_dir.same_code`), else None: an interrupted
    demo resumes where it stopped, and the full table can be assembled from recipes run in separate invocations
    (same --out). A changed config, other code or an unfinished run is trained again."""

    metrics_path, config_path = run_dir / "metrics.json", run_dir / "config.yaml"
    if not (metrics_path.exists() and config_path.exists()):
        return None
    metrics = json.loads(metrics_path.read_text(encoding="utf-8"))
    if not metrics.pop("demo/finished", None):
        return None
    same = OmegaConf.create(resolved_yaml(cfg)) == OmegaConf.load(config_path)
    return metrics if same and same_code(run_dir) else None


def recipe_run(cfg, run_dir: Path, data: Path) -> dict:
    """One recipe and seed: the metrics of the run finished before with this config and code, else pre-train and
    evaluate it (resuming an unfinished run of this config and code; a run of another config or made by other
    code is moved aside to `.replaced-N` and made anew, engine/run_dir.py)."""
    metrics = finished_run_metrics(cfg, run_dir)
    if metrics is not None:
        print("      finished before with this exact config and code: its metrics are reused", flush=True)
        return metrics
    resume = same_config(cfg, run_dir) and same_code(run_dir)
    metrics = pretrain_and_evaluate(cfg, run_dir, resume=resume, overwrite=True)
    metrics.update(downstream_metrics(run_dir, data, metrics))
    write_json_merged(run_dir / "metrics.json", {"demo/finished": 1.0})
    return metrics


def _run_in_child(config: str, overrides: list[str], run_dir: str, data: str, unseen: str | None,
                  split: str) -> None:
    """The body of `isolated_run`, in the child process: one recipe and seed, and its unseen-corpus columns. It
    dies with the demo (`die_with_parent`): a demo killed outright leaves no run training on in its directory."""
    die_with_parent()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    recipe_run(load_config(config, overrides), Path(run_dir), Path(data))
    if unseen is not None:
        unseen_metrics(Path(run_dir), Path(unseen), split)


def isolated_run(config: str, overrides: list[str], cfg, run_dir: Path, data: Path, unseen: Path | None,
                 split: str, allocator: str = "glibc") -> dict:
    """`recipe_run` (and `unseen_metrics` when `unseen` is given) in a fresh process of its own, started by
    `spawn`; the metrics are read back from the run's metrics.json. Why: one process that trains and evaluates
    the runs one after another keeps the heap each run's evaluation grew (glibc returns little of it), every
    loader worker it forks later inherits that heap, and a run's numbers could depend on process-wide state an
    earlier run left behind (thread and backend settings). A run in its own process starts from the same state
    whichever runs came before, and gives its memory back when it ends; and the source hash a run records
    (read from the files when it starts) is that of the code its process imported then, even when the files
    are edited while a long demo runs. `cfg` is `load_config(config, overrides)`,
    already checked in this process, so a mistake in it fails before any child starts. allocator: the malloc the
    child (and its loader workers) start with (`runtime.process.preloaded`)."""
    metrics = finished_run_metrics(cfg, run_dir)
    if metrics is not None and (unseen is None or any(k.startswith(UNSEEN_PREFIX) for k in metrics)):
        print("      finished before with this exact config and code: its metrics are reused", flush=True)
        return metrics
    child = multiprocessing.get_context("spawn").Process(
        target=_run_in_child, name=f"structvl demo {run_dir}",
        args=(config, list(overrides), str(run_dir), str(data), None if unseen is None else str(unseen), split))
    with preloaded(allocator):
        child.start()
    try:
        child.join()
    except BaseException:  # Ctrl-C or a signal to this process: the child does not outlive it
        child.terminate()
        child.join()
        raise
    metrics = finished_run_metrics(cfg, run_dir)
    if child.exitcode == 0 and metrics is None and not same_code(run_dir):
        raise RunStopped(f"{run_dir}: the run finished, but structvl's source files changed while it ran, so its "
                         "numbers are not the current code's; run the demo again to redo it with the current code "
                         "(the finished run is moved aside, not deleted)")
    if child.exitcode != 0 or metrics is None:
        raise RuntimeError(f"{run_dir}: the run's process exited with code {child.exitcode} without finishing "
                           "(its error is printed above)")
    return metrics


def aggregate(per_seed: list[dict]) -> dict[str, tuple[float, float]]:
    """metric -> (mean, std over seeds); std is 0 for a single seed."""
    keys = set.intersection(*(set(m) for m in per_seed))
    return {k: (float(np.mean([m[k] for m in per_seed])), float(np.std([m[k] for m in per_seed])))
            for k in sorted(keys) if all(isinstance(m[k], (int, float)) for m in per_seed)}


def table_columns(rows: dict[str, dict[str, tuple[float, float]]]) -> list[str]:
    """TABLE_COLUMNS, then the unseen corpus's (--generalize), those any row has."""
    known = TABLE_COLUMNS + [f"{UNSEEN_PREFIX}{c}" for c in UNSEEN_COLUMNS]
    return [c for c in known if any(c in r for r in rows.values())]


def format_table(rows: dict[str, dict[str, tuple[float, float]]], chance: dict[str, float]) -> str:
    columns = table_columns(rows)
    short = [c.replace("retrieval/", "").replace("hard_negative/blind/", "hn_blind/")
             .replace("hard_negative/static/", "hn_static/").replace("hard_negative/balanced/", "hn_bal/")
             .replace("hard_negative/", "hn/")
             .replace("/accuracy", "/acc").replace("recognition/linear/", "rec/")
             .replace("localization/agnostic/", "tal_agn/")
             .replace("localization/", "tal/").replace("grounding/", "gr/")
             .replace("pointing_best_patch", "best_patch").replace("temporal/scene_change_acc", "scene_chg")
             .replace("clover_mlm/", "mlm/") for c in columns]
    width = max(len(label) for label in list(rows) + ["chance"]) + 2
    cell = [max(14, len(s) + 1) for s in short]
    lines = ["".join([f"{'recipe':<{width}}"] + [f"{s:>{w}}" for s, w in zip(short, cell)])]
    for label, values in rows.items():
        cells = [f"{values[c][0]:>{w - 6}.1f}±{values[c][1]:<5.1f}" if c in values else f"{'-':>{w}}"
                 for c, w in zip(columns, cell)]
        lines.append(f"{label:<{width}}" + "".join(cells))
    lines.append(f"{'chance':<{width}}" + "".join(f"{chance[c]:>{w}.1f}" if c in chance else f"{'-':>{w}}"
                                                 for c, w in zip(columns, cell)))
    return "\n".join(lines)


def run_demo(out: str | Path = "runs/demo", quick: bool = False, data: str | Path = "data/structured",
             seeds: int = 1, recipes: list[str] | None = None, overrides: list[str] | None = None,
             use_existing_data: bool = False, overwrite_data: bool = False, split: str = "test",
             generalize: bool = False, isolate: bool = True, allocator: str = "glibc") -> int:
    """recipes: keys of RECIPES (default: all). overrides: `key=value` config overrides applied to every
    recipe (e.g. `train.max_steps=150` for a shorter ablation budget). A corpus at `data` generated with other
    arguments is refused unless `use_existing_data` (run on it as it is) or `overwrite_data` (replace it).
    A run directory of a recipe that holds an unfinished run of the same config and code resumes it; one that
    holds a run of another config or made by other code (`same_code`) is moved aside (engine/run_dir.py), never
    deleted. split: "test" (the reported table) or "val" (the table choices are made on; its runs and report go to
    OUT-val, so a val table never replaces the test one). generalize: also the unseen corpus's columns
    (`unseen_metrics`). isolate: each recipe and seed in a process of its own (`isolated_run`); False runs them in
    this process (a debugger, or tests that replace parts of this module). allocator: the malloc each isolated run
    starts with ("glibc", or an installed key of `runtime.process.ALLOCATORS`; `structvl demo` picks tcmalloc
    where installed: it keeps a run's memory at what its steps use, docs/findings.md "Allocators")."""
    if split not in ("test", "val"):
        raise ValueError(f"split must be 'test' or 'val', got {split!r}")

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    t_start = time.perf_counter()
    # The corpus's absolute path goes into every run's config: the same corpus spelled relative or absolute is
    # one config (its finished runs are reused), and a relative spelling from another directory is another.
    out, data = Path(out), Path(data).resolve()
    if split != "test":
        out = out.with_name(f"{out.name}-{split}")
    if quick:
        data = data.with_name(data.name + "-quick")
    corpus = QUICK_CORPUS if quick else FULL_CORPUS
    if isolate:
        print(f"each run in a process of its own, with the {allocator} allocator", flush=True)
    print(f"[1/3] structured corpus at {data}", flush=True)
    corpus = structured_corpus(data, {**corpus, "seed": 0}, use_existing_data, overwrite_data,
                               hint="pass --use-existing-data to run the demo on it, or --overwrite-data to replace it")
    unseen = data.with_name(f"{data.name}-unseen")
    if generalize:  # made (or reused, when complete with these arguments) before any training
        print(f"[1/3] unseen corpus at {unseen}", flush=True)
        structured_corpus(unseen, unseen_corpus_arguments(corpus), overwrite=overwrite_data,
                          hint="pass --overwrite-data to replace it")

    rows: dict[str, dict[str, tuple[float, float]]] = {}
    runs: dict[str, list[Path]] = {}
    per_recipe_seed: dict[str, list[dict]] = {}
    known = {**RECIPES, **ABLATIONS}
    unknown = [r for r in recipes or [] if r not in known]
    if unknown:
        raise ValueError(f"unknown recipe(s) {unknown}; known: {list(known)}")
    for name in recipes or list(RECIPES):
        label, config = known[name]
        for seed in range(seeds):
            run_dir = out / name / f"seed{seed}"
            print(f"[2/3] pre-training '{label}' seed {seed} -> {run_dir}", flush=True)
            run_overrides = ([f"data.root={data}", f"train.seed={seed}", f"eval.split={split}"]
                             + (QUICK_OVERRIDES if quick else []) + list(overrides or []))
            cfg = load_config(config, run_overrides)
            if isolate:
                metrics = isolated_run(config, run_overrides, cfg, run_dir, data, unseen if generalize else None,
                                       split, allocator)
            else:
                metrics = recipe_run(cfg, run_dir, data)
                if generalize:
                    metrics = {**metrics, **unseen_metrics(run_dir, unseen, split)}
            if not generalize:  # a run reused from a --generalize demo: its unseen columns are not part of this table
                metrics = {k: v for k, v in metrics.items() if not k.startswith(UNSEEN_PREFIX)}
            per_recipe_seed.setdefault(label, []).append(metrics)
            runs.setdefault(label, []).append(run_dir)
        rows[label] = aggregate(per_recipe_seed[label])

    first = next(iter(per_recipe_seed.values()))[0]
    chance = {k.replace("/chance/", "/t2v/"): v for k, v in first.items() if k.startswith("retrieval/chance/")}
    v2t_chance = "retrieval/chance_v2t/" if any(k.startswith("retrieval/chance_v2t/") for k in first) \
        else "retrieval/chance/"  # a run made before video->text's own chance was reported
    chance.update({k.replace(v2t_chance, "retrieval/v2t/"): v for k, v in first.items() if k.startswith(v2t_chance)})
    chance.update({c: 50.0 for c in TABLE_COLUMNS if c.startswith("hard_negative/")})
    if generalize:  # a random ranking of the unseen corpus's videos; 50% for its hard negatives
        chance.update({f"{UNSEEN_PREFIX}{c}": 50.0 if c.startswith("hard_negative/") else
                       first.get(f"{UNSEEN_PREFIX}{c}".replace("/t2v/", "/chance/").replace("/v2t/", "/chance_v2t/"),
                                 float("nan")) for c in UNSEEN_COLUMNS})
    references = {k: v for per_seed in per_recipe_seed.values() for k, v in per_seed[0].items()}  # any recipe's
    chance.update({c: references[ref] for c, ref in DOWNSTREAM_REFERENCE.items() if ref in references})

    print(f"[3/3] evaluation (zero-shot, {split} split)", flush=True)
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
    examples = examples_section(model, cfg, build_tokenizer(cfg.model.text), data)
    for run_dirs in runs.values():  # S-ViLM recipes: the groups their noun phrases pick
        group_model, group_cfg, _ = load_run_model(run_dirs[0])
        if group_cfg.model.video.num_group_tokens:
            examples += grounding_section(group_model, group_cfg, build_tokenizer(group_cfg.model.text), data)
    columns = table_columns(rows)
    notes = (f"Corpus: {data} ({corpus['num_clips']} clips), evaluated on its {split} split. Seeds: {seeds}. Chance "
             f"for retrieval is a random ranking of the {int(first.get('retrieval/num_videos', 0))} {split} videos; for hard negatives 50%. "
             f"Downstream ({DOWNSTREAM_CONFIG}, frozen encoder): MC-QA chance is one of five captions, open QA's "
             f"reference is the most frequent training answer, localization's a random detector.")
    report = write_report(out / "report.html", "structvl demo: pre-training on the structured corpus", rows,
                          columns, chance, runs, examples, notes)
    print(f"report: {report}\nmetrics: {out / 'metrics.json'}\ntotal time: {summary['demo/seconds']:.0f} s")
    return 0
