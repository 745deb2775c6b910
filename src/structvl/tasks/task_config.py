"""Downstream protocols as typed config: one YAML file per dataset under configs/finetune/, one section per task.

A protocol file says, for each task it supports, where the annotations are, how clips are sampled and how
long and how fast any head or fine-tuning trains, so a number in metrics.json always says how it was
measured. Files are checked against these dataclasses exactly as run configs are (`structvl.config`):
an unknown key or a wrong type fails with the key named, `bases:` merges a parent file first, and
`key=value` overrides work (`openqa.epochs=5`).

Paths are relative to the dataset root (`root`, or `--data` on the command line).
"""

from __future__ import annotations

import copy
import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from omegaconf import OmegaConf

from structvl.config import ConfigError, _load_with_bases, apply_overrides, resolve_config_path
from structvl.config_checks import first_violation, task_rules
from structvl.data.formats import annotation_readers, read_annotations

TASKS = ("retrieval", "mcqa", "openqa", "recognition", "localization")


@dataclass
class TaskData:
    """A task's annotation files. `options` are the format reader's keyword options (for every split);
    `train_options` / `test_options` / `val_options` add split-specific ones (e.g. `subset: training` of one json).
    `val` is the validation split's file, read in place of `test` when the run evaluates on val (`eval.split=val`,
    `on_split`): every choice is made there, and test is read once per result."""
    format: str = "jsonl"
    train: Optional[str] = None
    test: str = ""
    val: Optional[str] = None
    videos: Optional[str] = None  # video root, relative to the dataset root; default: the root
    options: dict = field(default_factory=dict)
    train_options: dict = field(default_factory=dict)
    test_options: dict = field(default_factory=dict)
    val_options: dict = field(default_factory=dict)
    max_train: int = 0  # keep only the first N training items (0 = all): a budget knob for CPU demos


@dataclass
class RetrievalTask:
    """Contrastive fine-tuning (InfoNCE on the dual encoder, the Clover protocol) then text<->video ranks."""
    data: TaskData = field(default_factory=TaskData)
    paragraph: bool = False  # one query per video: its captions joined (DiDeMo / ActivityNet paragraph-to-video)
    steps: int = 200
    batch_size: int = 32
    lr: float = 1e-4
    text_lr: Optional[float] = None
    warmup_steps: int = 20
    sampling: str = "random_segment"  # training frame sampling; testing is always "uniform"
    rerank_top_k: int = 0  # > 0 and a fusion encoder: re-rank each query's top-k with a matching head on fuse()
    matching_weight: float = 1.0  # weight of the matching loss that trains that head (only with rerank_top_k)


@dataclass
class QATask:
    """Multiple-choice (`mcqa`) or open-ended (`openqa`) QA on frozen encoder features.

    mcqa mode "zeroshot": the candidate with the highest video-text similarity. mode "finetune": a scorer
    head trained on `data.train` (softmax over each item's candidates). openqa: classification over the
    `top_k_answers` most frequent training answers. `train_fusion`: also update the fusion encoder (when the
    model has one); the unimodal encoders stay frozen either way.
    """
    data: TaskData = field(default_factory=TaskData)
    mode: str = "zeroshot"  # mcqa only: "zeroshot" or "finetune"
    top_k_answers: int = 1000  # openqa only
    blind_baseline: bool = True  # openqa: also train the same head with the video zeroed (the text prior)
    hidden: int = 512
    epochs: int = 20
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.01
    train_fusion: bool = False


@dataclass
class RecognitionTask:
    """Linear probe on frozen video features and/or full fine-tuning; multi-view testing."""
    data: TaskData = field(default_factory=TaskData)
    classes: Optional[str] = None  # class list file (one name a line); default: the sorted training labels
    modes: list = field(default_factory=lambda: ["linear"])  # any of "linear", "finetune"
    temporal_views: int = 1  # test clips per video (frame offsets shifted inside each segment)
    spatial_crops: int = 1  # test crops per clip along the longer side
    linear_epochs: int = 100
    linear_lr: float = 1e-2
    linear_weight_decay: float = 1e-4
    finetune_steps: int = 300
    finetune_lr: float = 1e-4
    batch_size: int = 32


@dataclass
class LocalizationTask:
    """Temporal action localization on frozen sliding-window clip features (S-ViLM's protocol)."""
    data: TaskData = field(default_factory=TaskData)
    window_seconds: float = 1.0  # each snippet feature encodes this much video around its centre
    stride_seconds: float = 0.5  # snippet spacing
    temporal_scale: int = 32  # snippet features of every video rescaled to this length (BMN on ActivityNet: 100)
    hidden: int = 256
    epochs: int = 60
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 1e-4
    nms_threshold: float = 0.5
    max_detections: int = 100  # per video, after NMS (the ActivityNet challenge limit)
    tiou_thresholds: list = field(default_factory=lambda: [0.3, 0.5, 0.7])  # mAP_avg averages over these


@dataclass
class FinetuneConfig:
    name: str = "downstream"
    root: Optional[str] = None  # dataset root; `--data` overrides it
    suite: list = field(default_factory=lambda: list(TASKS))  # tasks the demo / `--task all` runs, in order
    batch_size: int = 32  # clips per batch when extracting features
    num_workers: int = 0  # decoding processes for feature extraction (0: in the main process, best on 2 CPU cores)
    seed: int = 0
    retrieval: RetrievalTask = field(default_factory=RetrievalTask)
    mcqa: QATask = field(default_factory=QATask)
    openqa: QATask = field(default_factory=QATask)
    recognition: RecognitionTask = field(default_factory=RecognitionTask)
    localization: LocalizationTask = field(default_factory=LocalizationTask)
    bases: list = field(default_factory=list)


def load_task_config(path: str | Path, overrides: list[str] | None = None) -> FinetuneConfig:
    """defaults <- bases <- file <- `key=value` overrides, checked; e.g. load_task_config("finetune/structured")."""
    cfg = _load_with_bases(resolve_config_path(path), OmegaConf.structured(FinetuneConfig))
    cfg = apply_overrides(cfg, overrides)
    readers = annotation_readers()
    tree = OmegaConf.to_container(cfg, resolve=True)
    problem = first_violation(tree, task_rules(tuple(readers), TASKS))
    if problem is not None:
        raise ConfigError(f"{path}: {problem}")
    for task in TASKS:  # the format reader's own keyword options, named as its signature names them
        data = tree[task]["data"]
        accepted = [p.name for p in inspect.signature(readers[data["format"]]).parameters.values()
                    if p.kind is p.KEYWORD_ONLY]
        for group in ("options", "train_options", "test_options", "val_options"):
            unknown = [name for name in data[group] if name not in accepted]
            if unknown:
                raise ConfigError(f"{path}: config key '{task}.data.{group}.{unknown[0]}': format "
                                  f"{data['format']!r} has no such option; options: {', '.join(accepted) or 'none'}")
    return OmegaConf.to_object(cfg)


def on_split(task, split: str | None):
    """A copy of a task section (RetrievalTask, QATask, ...) whose test files are those of `split`: "val" reads
    `data.val` with `data.val_options` wherever a runner reads the test split; "test" or None (an `eval.split`
    that names an annotation file) leaves it as it is. ConfigError when the protocol has no val file for the task:
    a choice made on val must never silently read test."""
    task = copy.deepcopy(task)
    if split in (None, "test"):
        return task
    if split != "val":
        raise ValueError(f"unknown evaluation split {split!r}")
    if not task.data.val:
        raise ConfigError(f"eval.split is 'val' but the downstream protocol gives this task no 'val' annotation "
                          f"file (its test file: {task.data.test}); add data.val to evaluate it on val")
    task.data.test, task.data.test_options = task.data.val, dict(task.data.val_options)
    return task


def read_task_records(data: TaskData, root: str | Path, split: str) -> list:
    """The records of `split` ("train" or "test") of a task, read with the format's own reader."""

    rel = data.train if split == "train" else data.test
    if not rel:
        raise ConfigError(f"the task config gives no '{split}' annotation file")
    options = {**data.options, **(data.train_options if split == "train" else data.test_options)}
    # Option values naming a file under the root (a 9k id list, a class index, a mapping) are joined to it.
    options = {k: str(Path(root) / v) if isinstance(v, str) and (Path(root) / v).exists() else v
               for k, v in options.items()}
    records = read_annotations(data.format, Path(root) / rel, **options)
    if split == "train" and data.max_train:
        records = records[: data.max_train]
    return records


def video_root(data: TaskData, root: str | Path) -> Path:
    return Path(root) / data.videos if data.videos else Path(root)
