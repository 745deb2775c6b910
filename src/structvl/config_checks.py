"""What each config value may be: one rule per key, for the run config (`structvl.config`) and the
downstream protocols (`structvl.tasks.task_config`).

OmegaConf already checks types against the dataclasses (an int key refuses 2.5, a bool key refuses "yes").
The rules here say what a well-typed value may still not be: a size of 0, a rate of inf or NaN, a learning
rate of 1e30, a [min, max] pair the wrong way round, a list of the wrong length, a choice that does not
exist. `first_violation` walks a table of rules over a config and returns the first broken one as the
one-line message the CLI prints: the key, the value, and what is allowed. `validate` then checks what ties
several keys together (a patch size that must divide the image size, an objective that needs the fusion
encoder, the checkpoints the towers start from).

The file is longer than most (~510 lines) because it is two tables with one line per key of two configs and
the run config's cross-key checks; splitting it would only separate each table from the rules it uses.

Bounds are chosen to let every sane setting through and to stop values that can only be typos or overflow:
a learning rate above 1 makes AdamW diverge at once, a temperature below 1e-3 scales cosine logits past
1000 and saturates the softmax, a count above a billion is a slipped digit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from structvl.data.formats import annotation_readers
from structvl.data.knowledge.record import KNOWLEDGE_TYPES
from structvl.data.knowledge_sampler import POOL as KNOWLEDGE_POOL

BIG = 10**9  # counts and steps: anything above is a slipped digit


class ConfigError(ValueError):
    """A config problem; the message names the key and, when known, the file."""


# The keys of the `objectives:` weight dict: one per pre-training objective, each implemented by the class of the
# same name in `structvl.objectives.OBJECTIVES` (contrastive.py; CLOP's clop.py; S-ViLM's svilm.py; Clover's
# clover.py). The schema lists them so that a config is checked without importing the objectives.
OBJECTIVE_NAMES = ("contrastive", "clop_skp", "clop_kcl", "svilm_grounding", "svilm_temporal", "clover_align",
                   "clover_rank", "clover_mlm")


@dataclass(frozen=True)
class Number:
    """A finite number in [lo, hi] (an open end excludes its bound); `integer`: a whole number."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    integer: bool = False
    optional: bool = False  # None allowed (the key's "not set")

    def problem(self, value: Any) -> bool:
        if value is None:
            return not self.optional
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return True
        if not math.isfinite(value) or (self.integer and float(value) != int(value)):
            return True
        if self.lo is not None and (value <= self.lo if self.lo_open else value < self.lo):
            return True
        return self.hi is not None and (value >= self.hi if self.hi_open else value > self.hi)

    def allowed(self) -> str:
        kind = "an integer" if self.integer else "a number"
        lo, hi = _bound(self.lo), _bound(self.hi)
        if self.lo is not None and self.hi is not None:
            text = f"{kind} in {'(' if self.lo_open else '['}{lo}, {hi}{')' if self.hi_open else ']'}"
        elif self.lo is not None:
            text = f"{kind} {'>' if self.lo_open else '>='} {lo}"
        elif self.hi is not None:
            text = f"{kind} {'<' if self.hi_open else '<='} {hi}"
        else:
            text = f"a finite {kind.split()[1]}"
        return text + (" (or null)" if self.optional else "")


def _bound(value: float | None) -> str:
    """1000000000 rather than 1e+09: a bound as the user would type it."""
    return str(value) if isinstance(value, int) else f"{value:g}"


@dataclass(frozen=True)
class Choice:
    options: tuple
    optional: bool = False

    def problem(self, value: Any) -> bool:
        return not (value is None and self.optional) and value not in self.options

    def allowed(self) -> str:
        return "one of " + ", ".join(repr(o) for o in self.options) + (" (or null)" if self.optional else "")


@dataclass(frozen=True)
class Items:
    """A list whose items each follow `item`; `length`: exactly that many; `increasing`: each >= the last."""

    item: Number | Choice
    length: int | None = None
    min_length: int = 0
    increasing: bool = False

    def problem(self, value: Any) -> bool:
        if not isinstance(value, (list, tuple)) or len(value) < self.min_length:
            return True
        if self.length is not None and len(value) != self.length:
            return True
        if any(self.item.problem(v) for v in value):
            return True
        return self.increasing and any(b < a for a, b in zip(value, value[1:]))

    def allowed(self) -> str:
        size = f"{self.length} " if self.length is not None else f"at least {self.min_length} " if self.min_length \
            else ""
        order = ", smallest first" if self.increasing else ""
        return f"a list of {size}items, each {self.item.allowed()}{order}"


@dataclass(frozen=True)
class Text:
    """A non-empty string (a name, a path relative to the dataset root)."""

    optional: bool = False

    def problem(self, value: Any) -> bool:
        if value is None:
            return not self.optional
        return not isinstance(value, str) or not value.strip()

    def allowed(self) -> str:
        return "a non-empty string" + (" (or null)" if self.optional else "")


Rule = Number | Choice | Items | Text

# Shorthands for the tables.
COUNT = Number(1, BIG, integer=True)  # sizes, steps, widths: at least one
COUNT0 = Number(0, BIG, integer=True)  # the same where 0 means off / all / at the end
PROB = Number(0, 1)
WEIGHT = Number(0, 1e3)  # loss weights and strengths
LR = Number(0, 1, lo_open=True)
TEMPERATURE = Number(1e-3, 10)
SAMPLING = ("random_segment", "uniform", "fps")


def run_rules(annotation_formats: tuple, knowledge_types: tuple) -> dict[str, Rule]:
    """Every key of `structvl.config.RunConfig` but its booleans (typed by OmegaConf) and its open dicts
    (`objectives`, `knowledge.top_k`/`exclude`, `clop.skp_type_*`, checked in `validate`)."""
    return {
        "name": Text(),
        # model
        "model.video.image_size": Number(8, 4096, integer=True),
        "model.video.num_frames": Number(1, 1024, integer=True),
        "model.video.patch_size": Number(1, 1024, integer=True),
        "model.video.tubelet_size": Number(1, 1024, integer=True),
        "model.video.width": Number(1, 65536, integer=True),
        "model.video.depth": Number(1, 1024, integer=True),
        "model.video.heads": Number(1, 1024, integer=True),
        "model.video.mlp_ratio": Number(0, 64, lo_open=True),
        "model.video.attention": Choice(("joint", "divided")),
        "model.video.matmul_attention_max_len": Number(0, 1 << 20, integer=True),
        "model.video.pooling": Choice(("cls", "mean")),
        "model.video.drop_path": Number(0, 1, hi_open=True),
        "model.video.token_keep": Number(0, 1, lo_open=True),
        "model.video.checkpoint_blocks": Number(0, 1024, integer=True),
        "model.video.act": Choice(("gelu", "quick_gelu")),
        "model.video.layer_norm_eps": Number(0, 1, lo_open=True),
        "model.video.normalize": Choice(("auto", "imagenet", "clip", "inception")),
        "model.video.init.format": Choice(("none", "open_clip", "timm", "hf_clip")),
        "model.video.init.path": Text(optional=True),
        "model.video.init.allow_missing": Items(Text()),
        "model.video.init.inflate": Choice(("average", "center")),
        "model.video.num_group_tokens": Number(0, 4096, integer=True),
        "model.video.group_layers": Items(Number(-1024, 1023, integer=True)),  # taken modulo depth: -1 = last
        "model.video.group_gumbel_tau": TEMPERATURE,
        "model.text.init.path": Text(),  # minilm, scratch or a checkpoint directory (checked in validate)
        "model.text.init.pooling": Choice(("mean", "cls")),
        # [CLS] and [SEP]; null: what the tokenizer allows (its checkpoint's positions)
        "model.text.max_length": Number(2, 65536, integer=True, optional=True),
        "model.text.width": Number(1, 65536, integer=True),
        "model.text.depth": Number(1, 1024, integer=True),
        "model.text.heads": Number(1, 1024, integer=True),
        "model.text.intermediate_size": Number(1, 1 << 20, integer=True),
        "model.fusion.layers": Number(0, 1024, integer=True),
        "model.fusion.video_pool": Number(1, 1024, integer=True),
        "model.fusion.init_from_text_layers": Choice(("first", "top", "none")),
        "model.embed_dim": Number(1, 65536, integer=True),
        "model.projection": Choice(("mlp", "linear")),
        "model.temperature": TEMPERATURE,
        "model.min_temperature": TEMPERATURE,
        # data
        "data.root": Text(),
        "data.format": Choice(annotation_formats),
        "data.train": Text(),
        "data.val": Text(optional=True),
        "data.videos": Text(optional=True),
        "data.shards": Text(optional=True),
        "data.shuffle_buffer": Number(0, 10**8, integer=True),
        "data.backend": Choice(("pyav", "decord")),
        "data.decode_threads": Number(0, 1024, integer=True, optional=True),
        "data.num_frames": Number(1, 1024, integer=True),
        "data.sampling": Choice(SAMPLING),
        "data.target_fps": Number(0, 1000, lo_open=True, optional=True),
        "data.caption_mode": Choice(("random", "expand", "first")),
        "data.random_resized_crop_scale": Items(Number(0, 1, lo_open=True), length=2, increasing=True),
        "data.num_workers": Number(0, 1024, integer=True),
        "data.loader_timeout": Number(0, 86400),  # seconds; 0: wait for ever
        "data.synth_clips": COUNT,
        # optimisation
        "optim.lr": LR,
        "optim.text_lr": Number(0, 1, lo_open=True, optional=True),
        "optim.pretrained_lr": Number(0, 1, lo_open=True, optional=True),
        "optim.layer_decay": Number(0, 1, lo_open=True),
        "optim.weight_decay": Number(0, 10),
        "optim.betas": Items(Number(0, 1, hi_open=True), length=2),
        "optim.eps": Number(0, 1, lo_open=True),
        "optim.warmup_steps": COUNT0,
        "optim.min_lr_ratio": PROB,
        "optim.grad_clip": Number(0, 1e6),  # 0: no clipping
        "optim.accumulate": Number(1, 65536, integer=True),
        "optim.implementation": Choice(("auto", "fused", "foreach", "for_loop")),
        # training
        "train.batch_size": COUNT,
        "train.max_steps": COUNT,
        "train.precision": Choice(("auto", "bf16", "fp16", "fp32")),
        "train.max_nonfinite_steps": Number(1, BIG, integer=True),  # 1: stop at the first non-finite step
        "train.mmap_threshold_kib": Number(0, 32768, integer=True),  # glibc's largest mmap threshold: 32 MiB
        "train.seed": Number(0, 2**63 - 1, integer=True),
        "train.log_every": COUNT,
        "train.checkpoint_every": COUNT0,  # 0: at the end only
        "train.keep_checkpoints": COUNT,
        "train.eval_every": COUNT0,
        "train.distributed": Choice(("ddp", "fsdp")),
        "train.device": Choice(("auto", "cpu", "cuda")),
        # knowledge and the papers' options
        "knowledge.cache_dir": Text(optional=True),
        "knowledge.min_count": COUNT,
        "knowledge.startup_parse_limit": COUNT0,
        "clop.skp_types": Items(Choice(knowledge_types)),
        "clop.skp_hidden": COUNT0,
        "clop.skp_reduction": Choice(("mean", "sum")),
        "clop.skp_input_norm": Choice(("batch", "none")),
        "clop.skp_targets": Choice(("caption", "video")),
        "clop.skp_input": Choice(("shared", "encoder")),
        "clop.skp_similarity_weight": WEIGHT,
        "clop.kcl_types": Items(Choice(knowledge_types)),
        "clop.kcl_weight_strength": WEIGHT,
        "clop.kcl_sampler_groups": COUNT,
        "clop.kcl_negatives_per_caption": Number(0, 1024, integer=True),
        "clop.kcl_swap_types": Items(Choice(knowledge_types)),
        "clop.kcl_swap_sampling": Choice(("uniform", "frequency")),
        "clop.kcl_negative_weight": WEIGHT,
        "clop.kcl_shortcut_penalty": WEIGHT,
        "svilm.phrase_encoding": Choice(("span", "alone")),
        "svilm.max_phrases": Number(1, 1024, integer=True),
        "svilm.grounding_temperature": TEMPERATURE,
        "svilm.temporal_temperature": TEMPERATURE,
        "svilm.cut_min_steps": COUNT,
        "svilm.cut_max_steps": COUNT0,  # 0: all time steps but one
        "svilm.temporal_centroids": Choice(("all", "leave_one_out")),
        "svilm.paste_source": Choice(("batch", "reversed_steps")),
        "svilm.temporal_clips": COUNT0,
        "svilm.temporal_contrastive": Choice(("uncut", "a_part")),
        "svilm.eval_clips": COUNT0,
        "clover.text_masking": Choice(("semantic", "random")),
        "clover.text_mask_ratio": Number(0, 1, lo_open=True),
        "clover.random_mask_prob": Number(0, 1, lo_open=True),
        "clover.mask_replace_prob": PROB,
        "clover.mask_random_prob": PROB,
        "clover.video_mask_ratio": Number(0, 1, hi_open=True),
        "clover.video_mask_min_block": COUNT,
        "clover.masked_clips": COUNT0,
        "clover.video_mask_min_aspect": Number(0, 1, lo_open=True),
        "clover.rank_margin": Number(0, 1e3),
        "clover.focal_gamma": Number(0, 100),
        "clover.eval_max_captions": COUNT0,
        # evaluation: deterministic frames only ("random_segment" draws at random; "fps" has no rate here)
        "eval.split": Text(),
        "eval.hard_negatives": Text(optional=True),
        "eval.num_frames": Number(1, 1024, integer=True),
        "eval.sampling": Choice(("uniform",)),
        "eval.batch_size": COUNT,
        "eval.block_size": COUNT,
        "eval.v2t_multi_caption": Choice(("video_max", "caption_gallery")),
        "bases": Items(Text()),
    }


def task_rules(annotation_formats: tuple, tasks: tuple) -> dict[str, Rule]:
    """Every key of `structvl.tasks.task_config.FinetuneConfig` but its booleans, its tasks' annotation
    files and the format readers' options (checked by the readers)."""
    rules: dict[str, Rule] = {
        "name": Text(),
        "root": Text(optional=True),
        "suite": Items(Choice(tasks)),
        "batch_size": COUNT,
        "num_workers": Number(0, 1024, integer=True),
        "seed": Number(0, 2**63 - 1, integer=True),
        "bases": Items(Text()),
        "retrieval.steps": COUNT,
        "retrieval.batch_size": Number(2, BIG, integer=True),  # an InfoNCE batch needs a negative
        "retrieval.lr": LR,
        "retrieval.text_lr": Number(0, 1, lo_open=True, optional=True),
        "retrieval.warmup_steps": COUNT0,
        "retrieval.sampling": Choice(("random_segment", "uniform")),
        "retrieval.rerank_top_k": COUNT0,
        "retrieval.matching_weight": WEIGHT,
        "recognition.classes": Text(optional=True),
        "recognition.modes": Items(Choice(("linear", "finetune")), min_length=1),
        "recognition.temporal_views": Number(1, 1024, integer=True),
        "recognition.spatial_crops": Number(1, 1024, integer=True),
        "recognition.linear_epochs": COUNT,
        "recognition.linear_lr": LR,
        "recognition.linear_weight_decay": Number(0, 10),
        "recognition.finetune_steps": COUNT,
        "recognition.finetune_lr": LR,
        "recognition.batch_size": COUNT,
        "localization.window_seconds": Number(0, 3600, lo_open=True),
        "localization.stride_seconds": Number(0, 3600, lo_open=True),
        "localization.temporal_scale": Number(2, 100000, integer=True),
        "localization.hidden": COUNT,
        "localization.epochs": COUNT,
        "localization.batch_size": COUNT,
        "localization.lr": LR,
        "localization.weight_decay": Number(0, 10),
        "localization.nms_threshold": PROB,
        "localization.max_detections": COUNT,
        "localization.tiou_thresholds": Items(Number(0, 1, lo_open=True), min_length=1),
    }
    for qa in ("mcqa", "openqa"):
        rules.update({f"{qa}.mode": Choice(("zeroshot", "finetune")), f"{qa}.top_k_answers": COUNT,
                      f"{qa}.hidden": COUNT, f"{qa}.epochs": COUNT, f"{qa}.batch_size": COUNT, f"{qa}.lr": LR,
                      f"{qa}.weight_decay": Number(0, 10)})
    for task in tasks:
        # Its files are checked where they are read: "" and null both mean "not given" there.
        rules.update({f"{task}.data.format": Choice(annotation_formats), f"{task}.data.max_train": COUNT0})
    return rules


def lookup(tree: dict, key: str) -> Any:
    for part in key.split("."):
        tree = tree[part]
    return tree


def first_violation(tree: dict, rules: dict[str, Rule]) -> str | None:
    """The message for the first key of `tree` (a config as nested dicts) that breaks its rule, or None."""
    for key, rule in rules.items():
        value = lookup(tree, key)
        if rule.problem(value):
            return f"config key '{key}': {value!r} is not allowed; expected {rule.allowed()}"
    return None


# ---------------------------------------------------------------- the run config
SKP_INPUTS = ("shared", "encoder")  # clop.skp_input and each clop.skp_type_inputs value


def _error(key: str, value: Any, allowed: str) -> ConfigError:
    return ConfigError(f"config key '{key}': {value!r} is not allowed; expected {allowed}")


def _check_weights(key: str, weights: dict, names) -> None:
    """An open dict of non-negative finite weights keyed by `names`."""
    for name, weight in weights.items():
        if name not in names:
            raise ConfigError(f"config key '{key}.{name}': unknown name; known: {sorted(names)}")
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0 <= weight <= 1e3:
            raise _error(f"{key}.{name}", weight, "a weight in [0, 1000]")  # NaN and inf fail too


def validate(cfg, check_init: bool = True) -> None:
    """A `structvl.config.RunConfig`: every key against its rule, then the checks that tie keys together:
    shapes that must divide, pairs that must be ordered, options one objective needs from another.
    `check_init`: also check that the checkpoints the towers start from exist (not for a trained run's saved
    config, whose own weights replace them)."""
    tree = OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)
    problem = first_violation(tree, run_rules(tuple(annotation_readers()), tuple(KNOWLEDGE_TYPES)))
    if problem is not None:
        raise ConfigError(problem)
    v = cfg.model.video
    if v.image_size % v.patch_size:
        raise ConfigError(f"config key 'model.video.patch_size': {v.patch_size} does not divide image_size {v.image_size}")
    if v.num_frames % v.tubelet_size:
        raise ConfigError(f"config key 'model.video.tubelet_size': {v.tubelet_size} does not divide num_frames {v.num_frames}")
    if v.width % v.heads:
        raise ConfigError(f"config key 'model.video.heads': {v.heads} does not divide width {v.width}")
    if cfg.model.text.init.path == "scratch" and cfg.model.text.width % cfg.model.text.heads:
        raise ConfigError(f"config key 'model.text.heads': {cfg.model.text.heads} does not divide width "
                          f"{cfg.model.text.width}")
    grid = v.image_size // v.patch_size
    if cfg.model.fusion.layers and grid % cfg.model.fusion.video_pool:
        raise _error("model.fusion.video_pool", cfg.model.fusion.video_pool,
                     f"a divisor of the {grid}x{grid} patch grid (image_size / patch_size)")
    if cfg.model.min_temperature > cfg.model.temperature:
        raise ConfigError(f"config key 'model.min_temperature': {cfg.model.min_temperature!r} is above "
                          f"model.temperature {cfg.model.temperature!r}; the clamp must lie below the start value")
    if cfg.svilm.paste_source == "reversed_steps" and v.tubelet_size < 2:
        raise ConfigError("config key 'svilm.paste_source': reversed_steps plays each encoder time step's frames "
                          f"backwards, which needs model.video.tubelet_size >= 2 (got {v.tubelet_size})")
    if cfg.data.num_frames != v.num_frames or cfg.eval.num_frames != v.num_frames:
        raise ConfigError(
            f"config key 'data.num_frames'/'eval.num_frames' ({cfg.data.num_frames}/{cfg.eval.num_frames}) must equal "
            f"'model.video.num_frames' ({v.num_frames}): the temporal position embeddings have that length")
    if cfg.data.sampling == "fps" and cfg.data.target_fps is None:
        raise ConfigError("config key 'data.target_fps': null is not allowed with data.sampling 'fps'; expected "
                          "the frame rate to sample at (a number > 0)")
    if cfg.clop.kcl_sampler_groups > cfg.train.batch_size:
        raise _error("clop.kcl_sampler_groups", cfg.clop.kcl_sampler_groups,
                     f"at most train.batch_size ({cfg.train.batch_size})")
    if cfg.svilm.cut_max_steps and cfg.svilm.cut_min_steps > cfg.svilm.cut_max_steps:
        raise ConfigError(f"config key 'svilm.cut_min_steps': {cfg.svilm.cut_min_steps} is above svilm.cut_max_steps "
                          f"{cfg.svilm.cut_max_steps}; expected min <= max (or cut_max_steps 0: all steps but one)")
    if cfg.clover.mask_replace_prob + cfg.clover.mask_random_prob > 1:
        raise ConfigError(f"config key 'clover.mask_random_prob': {cfg.clover.mask_random_prob!r} plus "
                          f"clover.mask_replace_prob {cfg.clover.mask_replace_prob!r} is above 1; they split one "
                          "probability")
    if v.checkpoint_blocks > v.depth:
        raise _error("model.video.checkpoint_blocks", v.checkpoint_blocks,
                     f"at most model.video.depth ({v.depth}), or 0 for every block")
    if v.token_keep < 1 and cfg.model.fusion.layers:
        raise ConfigError(f"config key 'model.video.token_keep': {v.token_keep} drops patch tokens, but the fusion "
                          "encoder (model.fusion.layers > 0) reads the whole patch grid; use 1.0 with it")
    _check_weights("objectives", cfg.objectives, OBJECTIVE_NAMES)
    if cfg.objectives.get("contrastive", 0) > 0 and cfg.objectives.get("clop_kcl", 0) > 0:
        raise ConfigError("config key 'objectives.clop_kcl': CLOP's KCL is itself the video-text InfoNCE (with "
                          "knowledge-guided negatives); set objectives.contrastive to 0 when it is on")
    if not any(w > 0 for w in cfg.objectives.values()):
        raise ConfigError("config key 'objectives': every objective has weight 0; nothing to train")
    on = {name for name, weight in cfg.objectives.items() if weight > 0}
    if "svilm_grounding" in on and v.num_group_tokens == 0:
        raise ConfigError("config key 'objectives.svilm_grounding': needs group tokens; set "
                          "model.video.num_group_tokens > 0")
    if "svilm_temporal" in on and v.num_frames // v.tubelet_size < 2:
        raise ConfigError("config key 'objectives.svilm_temporal': cut-and-paste needs at least 2 encoder time "
                          f"steps (model.video.num_frames / tubelet_size = {v.num_frames // v.tubelet_size})")
    needs_fusion = sorted(on & {"clover_align", "clover_mlm"})
    if needs_fusion and cfg.model.fusion.layers == 0:
        raise ConfigError(f"config key 'objectives.{needs_fusion[0]}': needs the fusion encoder; set "
                          "model.fusion.layers > 0")
    for kind, weight in cfg.clop.skp_type_weights.items():
        if kind not in KNOWLEDGE_TYPES or isinstance(weight, bool) or not isinstance(weight, (int, float)) \
                or not 0 <= weight <= 1e3:
            raise ConfigError(f"config key 'clop.skp_type_weights.{kind}': expected a weight in [0, 1000] under one "
                              f"of {KNOWLEDGE_TYPES}, got {weight!r}")
    for kind, used in cfg.clop.skp_type_inputs.items():
        if kind not in KNOWLEDGE_TYPES or used not in SKP_INPUTS:
            raise ConfigError(f"config key 'clop.skp_type_inputs.{kind}': expected one of {SKP_INPUTS} "
                              f"under one of {KNOWLEDGE_TYPES}, got {used!r}")
    for kind, count in cfg.knowledge.top_k.items():
        if kind not in KNOWLEDGE_TYPES or isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ConfigError(f"config key 'knowledge.top_k.{kind}': expected an integer >= 1 under one of "
                              f"{KNOWLEDGE_TYPES}, got {count!r}")
    for kind, labels in cfg.knowledge.exclude.items():
        if kind not in KNOWLEDGE_TYPES or not isinstance(labels, (list, tuple)):
            raise ConfigError(f"config key 'knowledge.exclude.{kind}': expected a list of labels under one of "
                              f"{KNOWLEDGE_TYPES}")
    _validate_mix(cfg)
    kcl_on = cfg.objectives.get("clop_kcl", 0) > 0
    if kcl_on and cfg.clop.kcl_batch_sampler and cfg.data.shards and cfg.data.shuffle_buffer < KNOWLEDGE_POOL:
        raise ConfigError(f"config keys 'clop.kcl_batch_sampler' and 'data.shuffle_buffer': with data.shards, KCL "
                          f"groups clips within the shuffle buffer, which must hold at least {KNOWLEDGE_POOL} "
                          f"samples (the candidates compared with each anchor); got {cfg.data.shuffle_buffer}")
    if check_init:
        _validate_init(cfg)


def _validate_init(cfg) -> None:
    """The checkpoints a run starts from exist and are of the form their format reads (before any work)."""
    init = cfg.model.video.init
    if init.format == "none":
        if init.path:
            raise ConfigError(f"config key 'model.video.init.path': {init.path!r} is set but model.video.init.format "
                              "is 'none'; choose one of ('open_clip', 'timm', 'hf_clip')")
    elif not init.path:
        raise ConfigError(f"config key 'model.video.init.path': required with model.video.init.format={init.format}")
    elif not Path(init.path).exists():
        raise ConfigError(f"config key 'model.video.init.path': no such file or directory {init.path}")
    elif init.format == "hf_clip" and not (Path(init.path) / "config.json").is_file():
        raise ConfigError(f"config key 'model.video.init.path': {init.path} is not a transformers checkpoint "
                          "directory (no config.json), which format hf_clip reads")
    text_path = cfg.model.text.init.path
    if text_path not in ("minilm", "scratch") and not (Path(text_path) / "config.json").is_file():
        raise ConfigError(f"config key 'model.text.init.path': {text_path!r} is neither 'minilm', 'scratch' nor a "
                          "Hugging Face checkpoint directory (with config.json)")


def _validate_mix(cfg) -> None:
    if not cfg.data.mix:
        return
    formats = annotation_readers()
    for i, source in enumerate(cfg.data.mix):
        key = f"data.mix[{i}]"
        if (source.train is None) == (source.shards is None):
            raise ConfigError(f"config key '{key}': give exactly one of 'train' (an annotation file) and 'shards'")
        if not source.weight > 0:
            raise ConfigError(f"config key '{key}.weight': must be > 0, got {source.weight}")
        if source.train is not None and source.format not in formats:
            raise ConfigError(f"config key '{key}.format': {source.format!r} is not one of {sorted(formats)}")
    if len({source.train is None for source in cfg.data.mix}) > 1:
        raise ConfigError("config key 'data.mix': mixes annotation files and shards; give all sources as 'train' "
                          "files or all as 'shards'")
    if cfg.data.shards:
        raise ConfigError("config keys 'data.mix' and 'data.shards': the mix replaces data.shards; list the shards "
                          "as a source of data.mix")
    if cfg.objectives.get("clop_kcl", 0) > 0 and cfg.clop.kcl_batch_sampler:
        raise ConfigError("config keys 'data.mix' and 'clop.kcl_batch_sampler': both decide which clips share a "
                          "batch; set clop.kcl_batch_sampler=false with a mix")


def check_device(cfg) -> None:
    """What the machine must provide for `train.device`; called before training (not by `validate`: a run
    trained on a GPU must still load its config on a laptop for evaluation)."""
    import torch  # heavy: only when a run is about to start

    if cfg.train.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("config key 'train.device': 'cuda' is not available on this machine (torch finds no CUDA "
                          "device); expected 'auto' or 'cpu'")
