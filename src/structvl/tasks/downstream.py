"""`structvl finetune` / `structvl eval --task T`: run downstream protocols from a pre-trained run.

Two families of protocol, each task in its own module:

* frozen encoder (`eval`): zero-shot MC-QA, QA heads, linear-probe recognition and the localization head train
  at most a small head on cached features (`features.FeatureCache`, shared across tasks);
* fine-tuning (`finetune`): retrieval (contrastive), recognition (full network) and the QA scorers with the
  fusion encoder are trained end to end by the pre-training `Trainer`, on a copy of the model.

`run_suite` runs the frozen-encoder tasks of a protocol file one after another on one cache (the demo's
downstream columns). Metrics are flat keys (`mcqa/accuracy`, `localization/mAP@0.5`, ...) merged into the
run's metrics.json.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import torch

from structvl.engine.checkpoint import load_run_model
from structvl.models.text_encoder import build_tokenizer, paragraph_tokenizer
from structvl.runtime.precision import autocast_dtype
from structvl.runtime.process import trim_heap
from structvl.tasks.eval_data import eval_split_name
from structvl.tasks.evaluate import evaluate_retrieval
from structvl.tasks.features import FeatureCache
from structvl.tasks.finetune_retrieval import paragraph_records, run_finetune_retrieval
from structvl.tasks.finetuning import pick_device
from structvl.tasks.localization import run_localization
from structvl.tasks.qa import run_mcqa, run_openqa
from structvl.tasks.recognition import run_recognition
from structvl.tasks.task_config import TASKS, load_task_config, on_split, read_task_records, video_root

log = logging.getLogger("structvl")

# Each reported metric and the reference it is read against: chance, or for open QA the majority answer
# (the "blind" text-only head is its own row: how far the question alone gets).
REFERENCES = {
    "finetune_retrieval/t2v/R@1": "finetune_retrieval/chance/R@1",
    "finetune_retrieval/v2t/R@1": "finetune_retrieval/chance_v2t/R@1",
    "mcqa/accuracy": "mcqa/chance",
    "mcqa/zeroshot_accuracy": "mcqa/chance",
    "openqa/accuracy": "openqa/majority_accuracy",
    "openqa/text_only_accuracy": "openqa/majority_accuracy",
    "openqa/oov_rate": None,
    "recognition/linear/top1": "recognition/chance/top1",
    "recognition/linear/top5": "recognition/chance/top5",
    "recognition/finetune/top1": "recognition/chance/top1",
    "recognition/finetune/top5": "recognition/chance/top5",
    "localization/mAP@0.3": "localization/chance/mAP@0.3",
    "localization/mAP@0.5": "localization/chance/mAP@0.5",
    "localization/mAP@0.7": "localization/chance/mAP@0.7",
    "localization/mAP_avg": "localization/chance/mAP_avg",
}


# ----------------------------------------------------------------------------- dispatch
def run_task(name: str, model, run_cfg, task_cfg, root, *, finetune: bool = False, out_dir=None, cache=None,
             tokenizer=None, device=torch.device("cpu")) -> dict[str, float]:
    """One task of the protocol file `task_cfg` on the dataset at `root`; returns its flat metrics."""

    cache = cache or FeatureCache(model, device, batch_size=task_cfg.batch_size, num_workers=task_cfg.num_workers,
                                  autocast_dtype=autocast_dtype(run_cfg.train.precision, device))
    tokenizer = tokenizer or build_tokenizer(run_cfg.model.text)
    task = on_split(getattr(task_cfg, name), eval_split_name(run_cfg))  # eval.split=val: the protocol's val files
    seed = task_cfg.seed
    if name == "retrieval":
        if not finetune:  # the frozen protocol for retrieval is the zero-shot one of `structvl eval`
            test = read_task_records(task.data, root, "test")
            if task.paragraph:  # long queries: as many tokens as the text encoder allows
                tokenizer = paragraph_tokenizer(model.text_encoder)
            return evaluate_retrieval(model, run_cfg, tokenizer, paragraph_records(test) if task.paragraph else test,
                                      video_root(task.data, root), device)
        return run_finetune_retrieval(model, run_cfg, task, root, out_dir, device=device, seed=seed)
    if name in ("mcqa", "openqa"):
        if finetune and not task.data.train:
            # MSRVTT-MC ships no training split: its standard protocol scores the candidates with the
            # (retrieval-fine-tuned) dual encoder, i.e. the zero-shot scorer of this checkpoint.
            log.info("%s: the protocol has no training file; scoring zero-shot (the MSRVTT-MC practice)", name)
        elif finetune:  # fine-tuning = a trained scorer, through the fusion encoder when there is one
            task.mode, task.train_fusion = "finetune", True
        runner = run_mcqa if name == "mcqa" else run_openqa
        return runner(model, task, root, cache=cache, tokenizer=tokenizer, device=device, seed=seed)
    if name == "recognition":
        return run_recognition(model, task, root, cache=cache, run_cfg=run_cfg, out_dir=out_dir, device=device,
                               seed=seed, modes=["finetune"] if finetune else ["linear"])
    if name == "localization":
        if finetune:
            log.info("localization trains its head on frozen features: `finetune` runs the same protocol")
        return run_localization(model, task, root, device=device, batch_size=task_cfg.batch_size, seed=seed,
                                num_workers=task_cfg.num_workers, autocast_dtype=cache.autocast_dtype)
    raise ValueError(f"unknown downstream task {name!r}")


def run_suite(model, run_cfg, task_cfg, root, *, device=torch.device("cpu"), tasks=None) -> dict[str, float]:
    """The frozen-encoder protocol of every task in `task_cfg.suite` (or `tasks`), one shared feature cache.
    A task whose files the dataset lacks is skipped with a warning rather than failing the others."""

    cache = FeatureCache(model, device, batch_size=task_cfg.batch_size, num_workers=task_cfg.num_workers,
                         autocast_dtype=autocast_dtype(run_cfg.train.precision, device))
    tokenizer = build_tokenizer(run_cfg.model.text)
    metrics: dict[str, float] = {}
    for name in tasks or task_cfg.suite:
        start = time.perf_counter()
        try:
            metrics.update(run_task(name, model, run_cfg, task_cfg, root, cache=cache, tokenizer=tokenizer,
                                    device=device))
        except FileNotFoundError as e:
            log.warning("downstream task %s skipped: %s", name, e)
            continue
        metrics[f"time/{name}_s"] = time.perf_counter() - start
        trim_heap()  # the next task starts without this one's heap
    return metrics


def format_downstream_table(metrics: dict[str, float]) -> str:
    """Every downstream metric present beside its reference (chance; the majority answer for open QA)."""
    lines = [f"{'downstream':<36}{'score':>8}{'chance':>8}"]
    for key, ref in REFERENCES.items():
        if key in metrics:
            reference = metrics.get(ref, float("nan")) if ref else float("nan")
            lines.append(f"  {key:<34}{metrics[key]:8.1f}{reference:8.1f}")
    return "\n".join(lines)


def downstream_from_cli(args, finetune: bool) -> int:
    """`structvl finetune --task T` and `structvl eval --task T` (T not retrieval-zero-shot/hard_negative)."""

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    task_cfg = load_task_config(args.config, list(getattr(args, "overrides", []) or []))  # checked before any work
    model, run_cfg, run_dir = load_run_model(args.checkpoint)
    run_cfg.eval.split = getattr(args, "split", None) or run_cfg.eval.split  # `structvl eval --split val|test`
    root = Path(args.data or task_cfg.root or run_cfg.data.root)
    device = pick_device(run_cfg)
    model.to(device)
    names = list(task_cfg.suite) if args.task == "all" else [args.task]
    base = Path(args.out) if finetune and args.out else run_dir / "finetune"  # fine-tuned runs go under here
    metrics: dict[str, float] = {}
    for name in names:
        if name not in TASKS:
            raise ValueError(f"unknown task {name!r}")
        metrics.update(run_task(name, model, run_cfg, task_cfg, root, finetune=finetune, out_dir=base / name,
                                device=device))
    print(format_downstream_table(metrics))
    # eval: the run's metrics.json unless --out names a file; finetune: the run's and OUT/metrics.json
    targets = ([run_dir / "metrics.json", base / "metrics.json"] if finetune
               else [Path(args.out or run_dir / "metrics.json")])
    for target in targets:
        target.parent.mkdir(parents=True, exist_ok=True)
        merged = json.loads(target.read_text(encoding="utf-8")) if target.exists() else {}
        merged.update(metrics)
        target.write_text(json.dumps(merged, indent=2), encoding="utf-8")
        print(f"wrote {target}")
    return 0
