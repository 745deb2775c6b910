"""What a finished run's evaluation costs, measure by measure, and what one shared feature pass buys.

After pre-training, the demo scores each run on the test split (retrieval, hard negatives, S-ViLM's grounding and
scene change, Clover's masked words where the model has a fusion encoder) and on the downstream suite (MC and open
QA, linear-probe recognition, localization: `finetune/structured_demo`). Two ways of doing it, side by side in
interleaved rounds on the same model:

  shared    the test clips decoded and encoded once (`tasks.eval_data.EvalClips`) for every zero-shot measure,
            and the downstream tasks on one `tasks.features.FeatureCache`: what the demo does
  separate  each measure decodes and encodes its own clips, each downstream task fills its own cache

Prints each measure's seconds (median over the rounds), the totals and their ratio, and the largest difference
between the two ways' metrics (the same clips, frames and heads: 0 up to float rounding). Localization reads
sliding windows of the untrimmed videos no other task reads: its own pass either way.

    python benchmarks/eval_cost.py --run runs/demo/all/seed0 --data data/structured
    python benchmarks/eval_cost.py --run runs/demo/baseline/seed0 --data data/structured --rounds 1
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from structvl.data.formats import read_annotations
from structvl.engine.checkpoint import load_run_model
from structvl.lab.demo import DOWNSTREAM_CONFIG
from structvl.models.text_encoder import build_tokenizer
from structvl.runtime.precision import autocast_dtype
from structvl.tasks.downstream import run_task
from structvl.tasks.eval_data import EvalClips, eval_annotations, eval_loader, hard_negatives_file, test_video_root
from structvl.tasks.evaluate import evaluate_retrieval
from structvl.tasks.features import FeatureCache
from structvl.tasks.grounding import evaluate_grounding, evaluate_scene_change
from structvl.tasks.hard_negative import hard_negative_metrics
from structvl.tasks.masked_words import evaluate_masked_words
from structvl.tasks.task_config import load_task_config

WAYS = ("shared", "separate")


def zero_shot_measures(model, cfg, tokenizer, device, root: Path) -> dict:
    """name -> measure(clips) -> metrics; clips is an EvalClips or None (the measure streams its own)."""
    video_root = test_video_root(cfg, root)
    records = read_annotations(cfg.data.format, root / eval_annotations(cfg))
    measures = {
        "retrieval": lambda clips: evaluate_retrieval(model, cfg, tokenizer, records, video_root, device,
                                                      clips=clips),
        "grounding": lambda clips: evaluate_grounding(model, cfg, tokenizer, device, root, clips=clips),
        "scene_change": lambda clips: evaluate_scene_change(model, cfg, tokenizer, device, root, clips=clips),
    }
    negatives = hard_negatives_file(cfg)
    if negatives and (root / negatives).exists():
        measures["hard_negatives"] = lambda clips: hard_negative_metrics(
            model, cfg, tokenizer, root / negatives, video_root, device, eval_loader, clips=clips)
    if getattr(model, "fusion", None) is not None:
        measures["masked_words"] = lambda clips: evaluate_masked_words(model, cfg, tokenizer, device, clips=clips)
    return measures


def evaluate_once(way: str, model, cfg, tokenizer, device, root: Path, task_cfg) -> tuple[dict, dict]:
    """(seconds per measure, metrics) of one whole evaluation done `way`."""
    seconds, metrics = {}, {}
    # As the demo does: the split's clips held once where they fit in memory (`EvalClips.fits`), else streamed.
    clips = EvalClips(model, cfg, tokenizer, device, root) if way == "shared" and EvalClips.fits(cfg, root) else None
    for name, measure in zero_shot_measures(model, cfg, tokenizer, device, root).items():
        start = time.perf_counter()
        metrics.update(measure(clips))
        seconds[name] = time.perf_counter() - start
    cache = None
    if way == "shared":
        cache = FeatureCache(model, device, batch_size=task_cfg.batch_size, num_workers=task_cfg.num_workers,
                             autocast_dtype=autocast_dtype(cfg.train.precision, device))
    for name in task_cfg.suite:
        start = time.perf_counter()
        metrics.update(run_task(name, model, cfg, task_cfg, root, cache=cache, tokenizer=tokenizer, device=device))
        seconds[name] = time.perf_counter() - start
    return seconds, metrics


def largest_difference(a: dict, b: dict) -> tuple[float, str]:
    """The largest |a[k] - b[k]| over the keys both hold (NaN equal to NaN), and its key."""
    worst, where = 0.0, "-"
    for key in sorted(a.keys() & b.keys()):
        x, y = float(a[key]), float(b[key])
        if x != x and y != y:
            continue
        diff = abs(x - y) if x == x and y == y else float("inf")
        if diff > worst:
            worst, where = diff, key
    return worst, where


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="a finished run directory (its config.yaml and checkpoints)")
    parser.add_argument("--data", default="data/structured", help="the structured corpus it is evaluated on")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of both ways (median reported)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    parser.add_argument("--set", nargs="*", default=[], help="overrides of the downstream protocol, e.g. epochs")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    model, cfg, _ = load_run_model(args.run)
    model.eval()
    device, root = torch.device("cpu"), Path(args.data)
    tokenizer = build_tokenizer(cfg.model.text)
    task_cfg = load_task_config(DOWNSTREAM_CONFIG, args.set)
    times: dict[str, dict[str, list[float]]] = {way: {} for way in WAYS}
    results: dict[str, dict] = {}
    for round_ in range(args.rounds):
        for way in WAYS:
            seconds, results[way] = evaluate_once(way, model, cfg, tokenizer, device, root, task_cfg)
            for name, s in seconds.items():
                times[way].setdefault(name, []).append(s)
            print(f"round {round_ + 1}/{args.rounds} {way}: {sum(seconds.values()):.1f} s", flush=True)

    print(f"\n{args.run} on {root} ({torch.get_num_threads()} threads), median of {args.rounds} rounds, seconds")
    print(f"{'measure':<16}{'shared':>10}{'separate':>10}{'ratio':>8}")
    totals = {way: 0.0 for way in WAYS}
    for name in times["shared"]:
        row = {way: statistics.median(times[way][name]) for way in WAYS}
        for way in WAYS:
            totals[way] += row[way]
        print(f"{name:<16}{row['shared']:10.1f}{row['separate']:10.1f}{row['separate'] / row['shared']:8.2f}")
    ratio = totals["separate"] / totals["shared"]
    print(f"{'total':<16}{totals['shared']:10.1f}{totals['separate']:10.1f}{ratio:8.2f}")
    worst, where = largest_difference(results["shared"], results["separate"])
    print(f"metrics: {len(results['shared'].keys() & results['separate'].keys())} keys in both, "
          f"largest difference {worst:.3g} ({where})")


if __name__ == "__main__":
    main()
