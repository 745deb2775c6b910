"""Gauntlet (issue 29), errors as tracebacks: every user mistake in a config key, an override, a config file or
a command-line argument ends in exactly one line on stderr that names the key (or argument) and the value,
exit code 2, no traceback, and nothing written (the run directory is not even created).

Most variants run `structvl.cli.main` in this process (capsys); a few run `python -m structvl` in a
subprocess, the way a user meets them. Two tests sweep every rule of `structvl.config_checks` at and past
its bounds, and one checks that every config key has a rule.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from structvl.cli import main
from structvl.config import ConfigError, RunConfig, load_config
from structvl.config_checks import Choice, Items, Number, Text, run_rules, task_rules
from structvl.data.formats import annotation_readers
from structvl.data.knowledge.record import KNOWLEDGE_TYPES
from structvl.runtime import process
from structvl.tasks.task_config import TASKS, FinetuneConfig, load_task_config

SRC = Path(__file__).resolve().parents[1] / "src"


def run_main(argv: list[str], capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    return exit_.value.code, capsys.readouterr().err


def assert_one_line(code: int, err: str, *names: str) -> str:
    """Exit 2 and exactly one stderr line, naming each of `names`; returns the line."""
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    for name in names:
        assert name in lines[0], (name, lines[0])
    return lines[0]


# ---------------------------------------------------------------- config keys, through `structvl pretrain`
# (override, what the line must name besides the key: the value as printed)
CONFIG_MISTAKES = [
    # sizes and counts of zero or below
    ("model.video.image_size=0", "0"), ("model.video.patch_size=0", "0"), ("model.video.width=-1", "-1"),
    ("model.video.depth=0", "0"), ("model.video.heads=0", "0"), ("model.text.max_length=1", "1"),
    ("model.embed_dim=0", "0"), ("model.fusion.video_pool=0", "0"), ("model.video.num_group_tokens=-1", "-1"),
    ("data.num_workers=-1", "-1"), ("data.shuffle_buffer=-1", "-1"), ("data.synth_clips=0", "0"),
    ("data.decode_threads=-1", "-1"),
    ("train.batch_size=0", "0"), ("train.batch_size=-3", "-3"), ("train.max_steps=0", "0"),
    ("train.max_steps=-10", "-10"), ("train.log_every=0", "0"), ("train.checkpoint_every=-1", "-1"),
    ("train.keep_checkpoints=0", "0"), ("train.eval_every=-1", "-1"), ("train.seed=-1", "-1"),
    ("optim.accumulate=0", "0"), ("optim.warmup_steps=-5", "-5"), ("eval.batch_size=0", "0"),
    ("eval.block_size=0", "0"), ("svilm.max_phrases=0", "0"), ("clop.kcl_sampler_groups=0", "0"),
    ("clover.video_mask_min_block=0", "0"), ("knowledge.min_count=0", "0"), ("clop.kcl_negatives_per_caption=-1", "-1"),
    # rates: zero, negative, infinite, not a number, absurd
    ("optim.lr=inf", "inf"), ("optim.lr=0", "0.0"), ("optim.lr=1e30", "1e+30"), ("optim.lr=-1e-4", "-0.0001"),
    ("optim.lr=nan", "nan"), ("optim.text_lr=0", "0.0"), ("optim.weight_decay=-0.1", "-0.1"), ("optim.eps=0", "0.0"),
    ("optim.min_lr_ratio=1.5", "1.5"), ("optim.grad_clip=-1", "-1.0"), ("model.temperature=0", "0.0"),
    ("model.temperature=inf", "inf"), ("model.min_temperature=0", "0.0"), ("model.min_temperature=-0.01", "-0.01"),
    ("svilm.grounding_temperature=0", "0.0"), ("svilm.temporal_temperature=-1", "-1.0"),
    ("model.video.group_gumbel_tau=0", "0.0"), ("data.loader_timeout=-1", "-1.0"), ("model.video.mlp_ratio=0", "0.0"),
    ("model.video.drop_path=1.0", "1.0"), ("clop.kcl_weight_strength=-1", "-1.0"), ("objectives.contrastive=-1", "-1"),
    ("objectives.contrastive=inf", "inf"), ("clover.rank_margin=-5", "-5.0"), ("clover.focal_gamma=-2", "-2.0"),
    # probabilities outside [0, 1]
    ("clover.text_mask_ratio=0", "0.0"), ("clover.text_mask_ratio=1.5", "1.5"), ("clover.random_mask_prob=-0.1", "-0.1"),
    ("clover.mask_replace_prob=1.5", "1.5"), ("clover.video_mask_ratio=1.0", "1.0"),
    ("clover.video_mask_min_aspect=0", "0.0"),
    # wrong-length, wrong-content and reversed lists
    ("optim.betas=[0.9]", "[0.9]"), ("optim.betas=[0.9,0.98,0.99]", "[0.9, 0.98, 0.99]"), ("optim.betas=[1.0,0.98]", "1.0"),
    ("optim.betas=[a,b]", "['a', 'b']"), ("data.random_resized_crop_scale=[0.5]", "[0.5]"),
    ("data.random_resized_crop_scale=[1.0,0.5]", "[1.0, 0.5]"), ("data.random_resized_crop_scale=[0,1]", "[0, 1]"),
    ("data.random_resized_crop_scale=[]", "[]"), ("model.video.group_layers=[1.5]", "[1.5]"), ("clop.skp_types=[colour]", "colour"),
    # choices
    ("train.device=gpu", "gpu"), ("train.precision=fp8", "fp8"), ("data.backend=opencv", "opencv"),
    ("data.sampling=dense", "dense"), ("eval.sampling=random_segment", "random_segment"),
    ("model.video.attention=sparse", "sparse"), ("data.format=csv", "csv"), ("model.projection=mlp2", "mlp2"),
    # empty names and paths
    ("name=", "None"), ("data.train=", "None"), ("data.root=' '", "' '"),
    # types
    ("optim.lr=abc", "abc"), ("train.max_steps=2.5", "2.5"), ("data.hflip=maybe", "maybe"),
]
# Mistakes between keys: (overrides, key named, value named)
CROSS_KEY_MISTAKES = [
    (["model.video.patch_size=7"], "model.video.patch_size", "7"),
    (["model.video.heads=5"], "model.video.heads", "5"),
    (["data.num_frames=4"], "data.num_frames", "4"),
    (["model.min_temperature=0.5"], "model.min_temperature", "0.5"),  # above the start temperature
    (["svilm.cut_min_steps=3", "svilm.cut_max_steps=2"], "svilm.cut_min_steps", "3"),  # reversed range
    (["clover.mask_replace_prob=0.8", "clover.mask_random_prob=0.5"], "clover.mask_random_prob", "0.5"),
    (["clop.kcl_sampler_groups=1000"], "clop.kcl_sampler_groups", "1000"),
    (["model.video.checkpoint_blocks=9"], "model.video.checkpoint_blocks", "9"),  # beyond the demo's depth
    (["data.sampling=fps"], "data.target_fps", "null"),
    (["objectives.contrastive=0"], "objectives", "weight 0"),
    (["objectives.bogus=1"], "objectives.bogus", "bogus"),
    (["objectives.svilm_grounding=1"], "objectives.svilm_grounding", "num_group_tokens"),
    (["objectives.clover_mlm=1"], "objectives.clover_mlm", "fusion"),
    (["model.video.init.format=timm", "model.video.init.path=/nonexistent/vit.pth"], "model.video.init.path",
     "/nonexistent/vit.pth"),
    (["knowledge.top_k.object=0"], "knowledge.top_k.object", "0"),
    (["clop.skp_type_weights.action=-1"], "clop.skp_type_weights.action", "-1"),
    (["model.fusion.layers=1", "model.fusion.video_pool=3"], "model.fusion.video_pool", "3"),
    (["data.synth=false", "data.train=missing.jsonl"], "data.train", "missing.jsonl"),  # not there, no corpus made
]
# Malformed overrides: (override, what the line names)
SYNTAX_MISTAKES = [
    ("optim.betas=[0.9,0.98", "optim.betas"), ("optim.betas=[0.9,0.98]]", "optim.betas"),
    ("model.video={a:1", "model.video"), ("optim.lr", "optim.lr"), ("=3", "=3"), ("optim.lrr=1", "optim.lrr"),
    ("train..x=1", "train..x"),
]


def pretrain(tmp_path, capsys, *overrides: str, extra: tuple = ()) -> tuple[int, str]:
    code, err = run_main(["pretrain", "--config", "demo", "--out", str(tmp_path / "run"), *extra, *overrides],
                         capsys)
    assert not (tmp_path / "run").exists()  # refused before any work: nothing written
    return code, err


@pytest.mark.parametrize("override,value", CONFIG_MISTAKES, ids=[m[0] for m in CONFIG_MISTAKES])
def test_config_value_mistake_is_one_line(tmp_path, capsys, override, value):
    key = override.split("=")[0]
    line = assert_one_line(*pretrain(tmp_path, capsys, override), f"'{key}'", value)
    assert line.startswith("structvl pretrain: error:")


@pytest.mark.parametrize("overrides,key,value", CROSS_KEY_MISTAKES, ids=[m[1] for m in CROSS_KEY_MISTAKES])
def test_mistake_between_keys_is_one_line(tmp_path, capsys, overrides, key, value):
    assert_one_line(*pretrain(tmp_path, capsys, *overrides), f"'{key}", value)


@pytest.mark.parametrize("override,named", SYNTAX_MISTAKES, ids=[m[0] for m in SYNTAX_MISTAKES])
def test_malformed_override_is_one_line(tmp_path, capsys, override, named):
    assert_one_line(*pretrain(tmp_path, capsys, override), named)


def test_cuda_without_cuda_is_refused_before_training(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: train.device=cuda is allowed here")
    assert_one_line(*pretrain(tmp_path, capsys, "train.device=cuda"), "'train.device'", "cuda")


def test_debug_shows_the_traceback(tmp_path, capsys):
    with pytest.raises(ConfigError, match="optim.lr"):
        main(["--debug", "pretrain", "--config", "demo", "--out", str(tmp_path / "run"), "optim.lr=inf"])
    with pytest.raises(ConfigError, match="optim.lr"):  # after the subcommand too
        main(["pretrain", "--debug", "--config", "demo", "--out", str(tmp_path / "run"), "optim.lr=inf"])


# ---------------------------------------------------------------- config files
def bad_config(tmp_path: Path, kind: str) -> tuple[str, str]:
    """A --config argument of the given kind of wrong, and what the error line must name."""
    path = tmp_path / "bad.yaml"
    if kind == "directory":
        return str(tmp_path), str(tmp_path)
    if kind == "missing":
        return str(tmp_path / "nope.yaml"), "nope.yaml"
    content = {"invalid yaml": "optim: [lr: 3\n", "a list": "- 1\n- 2\n", "unknown key": "optim:\n  lrr: 0.1\n",
               "wrong type": "train:\n  max_steps: lots\n", "bad value": "optim:\n  lr: .inf\n",
               "not utf-8": None, "circular bases": "bases: [bad.yaml]\n"}[kind]
    if content is None:
        path.write_bytes(b"name: caf\xe9\n")
    else:
        path.write_text(content)
    named = {"unknown key": "optim.lrr", "wrong type": "train.max_steps", "bad value": "optim.lr"}.get(kind, "bad.yaml")
    return str(path), named


CONFIG_FILE_MISTAKES = ["directory", "missing", "invalid yaml", "a list", "unknown key", "wrong type", "bad value",
                        "not utf-8", "circular bases"]


@pytest.mark.parametrize("kind", CONFIG_FILE_MISTAKES)
def test_config_file_mistake_is_one_line(tmp_path, capsys, kind):
    config, named = bad_config(tmp_path, kind)
    code, err = run_main(["pretrain", "--config", config, "--out", str(tmp_path / "run")], capsys)
    assert_one_line(code, err, named)
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------- command-line arguments
@pytest.fixture
def paths(tmp_path):
    """A file, a directory, an annotation file, and a directory nothing can be written into."""
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "a_dir").mkdir()
    (tmp_path / "ann.jsonl").write_text('{"video": "v.mp4", "caption": "x"}\n')
    read_only = tmp_path / "read_only"
    read_only.mkdir()
    read_only.chmod(0o555)
    try:  # root writes into a 0o555 directory anyway; /sys refuses everyone
        with open(read_only / "probe", "w"):
            pass
        (read_only / "probe").unlink()
        read_only = Path("/sys")
    except OSError:
        pass
    yield {"file": str(tmp_path / "a_file"), "dir": str(tmp_path / "a_dir"), "ann": str(tmp_path / "ann.jsonl"),
           "ro": str(read_only / "out"), "missing": str(tmp_path / "missing"), "tmp": str(tmp_path)}
    (tmp_path / "read_only").chmod(0o755)


# (argv template, what the line names); {file}, {dir}, ... are filled from `paths`
ARGUMENT_MISTAKES = [
    ("synth --out {dir}/c --clips 0", "--clips"), ("synth --out {dir}/c --clips -1", "--clips"),
    ("synth --out {dir}/c --clips many", "--clips"), ("synth --out {dir}/c --size 0", "--size"),
    ("synth --out {dir}/c --frames 0", "--frames"), ("synth --out {dir}/c --fps 0", "--fps"),
    ("synth --out {dir}/c --workers 0", "--workers"), ("synth --out {dir}/c --untrimmed -1", "--untrimmed"),
    ("synth --out {file}", "--out"), ("synth --out {file}/c", "--out"), ("synth --out {ro}", "--out"),
    ("knowledge {missing}", "annotations"), ("knowledge {ann} --top-k 0", "--top-k"),
    ("knowledge {ann} --batch-size -1", "--batch-size"), ("knowledge {ann} --vocab-out {dir}", "--vocab-out"),
    ("knowledge {ann} --cache {file}", "--cache"), ("knowledge {ann} --format bogus", "--format"),
    ("data check {missing} --format jsonl --videos {dir}", "annotations"),
    ("data check {ann} --format jsonl --videos {missing}", "--videos"),
    ("data check {ann} --format jsonl --videos {file}", "--videos"),
    ("data check {ann} --format jsonl --videos {dir} --workers 0", "--workers"),
    ("data prepare {missing} {dir}/out", "src"), ("data prepare {file} {dir}/out", "src"),
    ("data prepare {dir} {file}", "out"), ("data prepare {dir} {dir}/inside", "out"),
    ("data prepare {dir} {ro}", "out"), ("data prepare {dir} {tmp}/o --crf 99", "--crf"),
    ("data prepare {dir} {tmp}/o --fps 0", "--fps"), ("data prepare {dir} {tmp}/o --short-side 0", "--short-side"),
    ("data shard {ann} --format jsonl --videos {dir} --out {tmp}/s.tar", "--out"),
    ("data shard {ann} --format jsonl --videos {dir} --out {file}/s-%06d.tar", "--out"),
    ("data shard {ann} --format jsonl --videos {dir} --out {tmp}/s-%06d.tar --max-count 0", "--max-count"),
    ("data shard {ann} --format jsonl --videos {missing} --out {tmp}/s-%06d.tar", "--videos"),
    ("pretrain --config demo --out {file}", "--out"), ("pretrain --config demo --out {ro}", "--out"),
    ("pretrain --config demo --out {tmp}/r --max-steps 0", "--max-steps"),
    ("pretrain --config demo --out {tmp}/r --seed -1", "--seed"),
    ("eval --checkpoint {missing} --data {dir}", "--checkpoint"),
    ("eval --checkpoint {dir} --data {dir}", "--checkpoint"),  # a directory without a run in it
    ("eval --checkpoint {dir} --data {missing}", "--data"), ("eval --checkpoint {dir} --data {ann} --videos {file}", "--videos"),
    ("eval --checkpoint {dir} --data {dir} --out {dir}", "--out"), ("eval --checkpoint {dir} --data {dir} --task bogus", "--task"),
    ("finetune --task mcqa --checkpoint {missing}", "--checkpoint"), ("finetune --task mcqa --checkpoint {dir} --data {file}", "--data"),
    ("finetune --task mcqa --checkpoint {dir} --out {file}", "--out"), ("finetune --task mcqa --checkpoint {dir} --config {dir}", "is a directory"),
    ("demo --seeds 0 --out {tmp}/d --data {tmp}/corpus", "--seeds"), ("demo --out {file}", "--out"),
    ("demo --recipes bogus --out {tmp}/d --data {tmp}/corpus", "bogus"),
    ("demo --out {tmp}/d --data {tmp}/corpus train.max_steps=0", "train.max_steps"),
    ("demo --out {tmp}/d --data {tmp}/corpus optim.lr=inf", "optim.lr"),
    ("demo --allocator bogus --out {tmp}/d --data {tmp}/corpus", "--allocator"),
    ("bogus", "bogus"), ("pretrain", "--config"),
]


@pytest.mark.parametrize("template,named", ARGUMENT_MISTAKES, ids=[m[0] for m in ARGUMENT_MISTAKES])
def test_argument_mistake_is_one_line(paths, capsys, template, named):
    argv = [part.format(**paths) for part in template.split()]
    before = sorted(os.listdir(paths["tmp"]))
    code, err = run_main(argv, capsys)
    assert_one_line(code, err, named)
    assert sorted(os.listdir(paths["tmp"])) == before  # no directory, corpus or run was made


def test_demo_allocator_not_installed_is_one_line(paths, capsys, monkeypatch):
    monkeypatch.setattr(process, "find_allocator", lambda name: None)  # a machine with neither installed
    before = sorted(os.listdir(paths["tmp"]))
    code, err = run_main(["demo", "--allocator", "jemalloc", "--out", f"{paths['tmp']}/d", "--data",
                          f"{paths['tmp']}/corpus"], capsys)
    assert_one_line(code, err, "--allocator")
    assert "'jemalloc' is not installed" in err and "allowed: auto, glibc;" in err
    assert sorted(os.listdir(paths["tmp"])) == before


# Downstream protocol overrides (`structvl eval/finetune --task T KEY=VALUE`), refused before the model loads.
TASK_MISTAKES = [
    ("mcqa.epochs=0", "mcqa.epochs"), ("openqa.lr=inf", "openqa.lr"), ("openqa.top_k_answers=0", "openqa.top_k_answers"),
    ("localization.nms_threshold=2", "localization.nms_threshold"), ("localization.tiou_thresholds=[]", "localization.tiou_thresholds"),
    ("localization.tiou_thresholds=[0.5,1.5]", "localization.tiou_thresholds"), ("localization.window_seconds=0", "localization.window_seconds"),
    ("retrieval.batch_size=1", "retrieval.batch_size"), ("retrieval.lr=0", "retrieval.lr"), ("retrieval.warmup_steps=-1", "retrieval.warmup_steps"),
    ("recognition.modes=[]", "recognition.modes"), ("recognition.modes=[probe]", "recognition.modes"),
    ("recognition.temporal_views=0", "recognition.temporal_views"), ("suite=[bogus]", "suite"), ("mcqa.mode=guess", "mcqa.mode"),
    ("mcqa.data.format=bogus", "mcqa.data.format"), ("mcqa.data.options.bogus=1", "mcqa.data.options.bogus"),
    ("batch_size=0", "batch_size"), ("num_workers=-1", "num_workers"), ("mcqa.data.max_train=-1", "mcqa.data.max_train"),
]


@pytest.mark.parametrize("command", ["eval", "finetune"])
@pytest.mark.parametrize("override,key", TASK_MISTAKES, ids=[m[0] for m in TASK_MISTAKES])
def test_protocol_override_mistake_is_one_line(paths, capsys, command, override, key):
    # --checkpoint is a directory with no run in it: the protocol is checked first, so its key is what is named.
    argv = [command, "--task", "mcqa", "--checkpoint", paths["dir"], *(["--data", paths["dir"]] if command == "eval"
                                                                       else []), override]
    assert_one_line(*run_main(argv, capsys), f"'{key}'")


# ---------------------------------------------------------------- as a user meets them: python -m structvl
@pytest.mark.parametrize("args,named", [
    (["pretrain", "--config", "demo", "optim.lr=inf"], "optim.lr"),
    (["pretrain", "--config", "demo", "optim.betas=[0.9,0.98"], "optim.betas"),
    (["pretrain", "--config", "demo", "data.random_resized_crop_scale=[1.0,0.5]"], "random_resized_crop_scale"),
    (["pretrain", "--config", "/"], "directory"),
    (["synth", "--out", "/etc/hostname"], "--out"),
    (["data", "check", "/nonexistent.jsonl", "--format", "jsonl", "--videos", "/"], "annotations"),
])
def test_in_a_subprocess(tmp_path, args, named):
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    result = subprocess.run([sys.executable, "-m", "structvl", *args], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=300)
    assert_one_line(result.returncode, result.stderr, named)
    assert list(tmp_path.iterdir()) == []  # no runs/ directory either


# ---------------------------------------------------------------- every rule, at and past its bounds
def leaf_keys(cls, prefix: str = "") -> dict[str, type]:
    """Dotted key -> declared type for every leaf field of a config dataclass."""
    out = {}
    for f in dataclasses.fields(cls):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(default):
            out.update(leaf_keys(type(default), f"{prefix}{f.name}."))
        else:
            out[f"{prefix}{f.name}"] = type(default)
    return out


RUN_RULES = run_rules(tuple(annotation_readers()), tuple(KNOWLEDGE_TYPES))
TASK_RULES = task_rules(tuple(annotation_readers()), TASKS)
# Open dicts, and data.mix (a list of sources): checked key by key in config_checks.validate
OPEN_DICTS = {"objectives", "knowledge.top_k", "knowledge.exclude", "clop.skp_type_weights", "clop.skp_type_inputs",
              "data.mix"}


def test_every_run_config_key_has_a_rule():
    leaves = leaf_keys(RunConfig)
    unruled = {k for k, t in leaves.items() if t is not bool and k not in OPEN_DICTS and k not in RUN_RULES}
    assert unruled == set()
    assert set(RUN_RULES) <= set(leaves)  # no rule for a key that is gone


def test_every_protocol_key_has_a_rule():
    leaves = leaf_keys(FinetuneConfig)
    free = {k for k in leaves if k.split(".")[-1] in ("options", "train_options", "test_options", "val_options",
                                                      "train", "test", "val", "videos")}  # checked on reading
    unruled = {k for k, t in leaves.items() if t is not bool and k not in free and k not in TASK_RULES}
    assert unruled == set()
    assert set(TASK_RULES) <= set(leaves)


def outside_values(rule: Number) -> list:
    """Values just past each end of the rule, and non-finite ones for a float key."""
    step = 1 if rule.integer else 1e-6
    out = []
    if rule.lo is not None:
        out.append(rule.lo if rule.lo_open else rule.lo - step)
    if rule.hi is not None:
        out.append(rule.hi if rule.hi_open else rule.hi + (step if rule.integer else max(1e-6, abs(rule.hi) * 1e-3)))
    if not rule.integer:
        out += [float("nan"), float("inf"), float("-inf")]
    return out


def override(key: str, value) -> str:
    text = {float("inf"): "inf", float("-inf"): "-inf"}.get(value, repr(value))
    return f"{key}={'nan' if value != value else text}"


NUMBER_CASES = [(key, v) for key, rule in RUN_RULES.items() if isinstance(rule, Number) for v in outside_values(rule)]


@pytest.mark.parametrize("key,value", NUMBER_CASES, ids=[override(*c) for c in NUMBER_CASES])
def test_every_number_key_refuses_values_past_its_bounds(key, value):
    with pytest.raises(ConfigError, match=f"config key '{key}'.*expected"):
        load_config("demo", [override(key, value)])


def test_every_rule_accepts_the_shipped_defaults_and_choices():
    load_config(None)  # the dataclass defaults
    for key, rule in RUN_RULES.items():
        if isinstance(rule, Choice) and key not in ("train.device", "data.sampling", "model.video.init.format"):
            # the machine / another key (fps needs data.target_fps, a format needs init.path)
            for option in rule.options:
                cfg = load_config("demo", [f"{key}={option}"] if not isinstance(option, tuple) else [])
                assert cfg is not None


TASK_NUMBER_CASES = [(key, v) for key, rule in TASK_RULES.items() if isinstance(rule, Number)
                     for v in outside_values(rule)]


@pytest.mark.parametrize("key,value", TASK_NUMBER_CASES, ids=[override(*c) for c in TASK_NUMBER_CASES])
def test_every_protocol_number_refuses_values_past_its_bounds(key, value):
    with pytest.raises(ConfigError, match=f"config key '{key}'.*expected"):
        load_task_config("finetune/structured", [override(key, value)])


def test_list_and_text_rules_say_what_is_allowed():
    for key, rule in {**RUN_RULES, **TASK_RULES}.items():
        assert isinstance(rule, (Number, Choice, Items, Text)), key
        assert rule.allowed() and rule.problem(object()), key  # an arbitrary object never passes
