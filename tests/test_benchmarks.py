"""The benchmark scripts run end to end in their tiny smoke modes (benchmarks/gpu_vitb.py on a CPU,
benchmarks/scaling.py) and print every row with a counted FLOP figure. They measure nothing here: no timing is
asserted."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from structvl.runtime.process import find_allocator

ROOT = Path(__file__).resolve().parents[1]


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}


def _run(script: str, *args: str) -> str:
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args, "--smoke"], env=_env(),
                          capture_output=True, text=True, timeout=900, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.mark.slow
def test_gpu_vitb_smoke_runs_bf16_and_fp16_on_a_cpu(tmp_path):
    out = _run("gpu_vitb.py", "--json", str(tmp_path / "r.json"), "--steps=1")
    assert re.search(r"^bf16\s+[\d.]+", out, re.MULTILINE) and re.search(r"^fp16\s+[\d.]+", out, re.MULTILINE), out
    results = json.loads((tmp_path / "r.json").read_text())["results"]
    assert [r["mode"] for r in results] == ["bf16", "fp16"]
    assert all(r["gflop_per_clip"] > 0 and r["clips_per_s"] > 0 and 0 < r["mfu"] <= r["hfu"] for r in results)


@pytest.mark.slow
def test_scaling_smoke_prints_both_attentions_against_the_flop_prediction():
    out = _run("scaling.py", "--threads=1")
    rows = re.findall(r"^(joint|divided)\s+(\d+)\s+(\d+)\s+(\d+)\s+([\d.]+)\s+(\d+)%\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)",
                      out, re.MULTILINE)
    assert [(r[0], r[1]) for r in rows] == [("joint", "2"), ("joint", "4"), ("divided", "2"), ("divided", "4")], out
    for attention in ("joint", "divided"):
        base, more = [r for r in rows if r[0] == attention]
        assert float(base[8]) == 1.0  # the base point predicts itself
        assert float(more[4]) > float(base[4])  # twice the frames: more FLOPs counted


@pytest.mark.skipif(not Path("/proc/self/smaps_rollup").exists(), reason="reads /proc/<pid>/smaps_rollup (Linux)")
def test_peak_memory_counts_the_descendants_and_passes_on_the_exit_code(tmp_path):
    # The measured process holds little itself; a grandchild (a process started by its child) holds 400 MiB of
    # written pages for a second: the peak must include it, and the command's exit code (3) comes back.
    grandchild = "import time; b = bytearray(400 * 2**20); time.sleep(1.5)"
    child = f"import subprocess, sys; subprocess.run([sys.executable, '-c', {grandchild!r}]); sys.exit(3)"
    parent = f"import subprocess, sys; sys.exit(subprocess.run([sys.executable, '-c', {child!r}]).returncode)"
    trace = tmp_path / "trace.tsv"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "peak_memory.py"), "--interval", "0.1",
                           "--trace", str(trace), "--", sys.executable, "-c", parent],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 3, done.stderr
    found = re.search(r"peak summed PSS ([\d.]+) GiB \((\d+) processes at the peak\), largest single RSS ([\d.]+)",
                      done.stdout)
    assert found, done.stdout
    pss, processes, rss = float(found[1]), int(found[2]), float(found[3])
    assert pss >= 0.4 and rss >= 0.39 and processes == 3, done.stdout
    # --trace: every sample, so the grandchild's second shows in the samples that count three processes
    header, *samples = [line.split("\t") for line in trace.read_text().splitlines()]
    assert header == ["seconds", "pss_mib", "largest_rss_mib", "processes"]
    assert max(int(s[1]) for s in samples if s[3] == "3") >= 400
    assert [float(s[0]) for s in samples] == sorted(float(s[0]) for s in samples)


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="resets the peak through /proc (Linux)")
def test_step_memory_counts_what_activation_checkpointing_saves():
    # The baseline at batch 2 with and without activation checkpointing: both rows print, and checkpointing
    # saves far less for the backward (only each block's input instead of everything inside it); each row names
    # the modules that save the most (which one leads depends on the precision the machine resolves). Where tcmalloc
    # is installed, each variant also runs in a process started with it: the row names it, and the activations
    # saved do not depend on the allocator.
    allocators = ["glibc"] + (["tcmalloc"] if find_allocator("tcmalloc") else [])
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "step_memory.py"), "--recipes", "baseline",
                           "--batch", "2", "--steps", "1", "--threads", "1", "--allocators", *allocators,
                           "--variants", "", "model.activation_checkpointing=true"],
                          env=_env(), capture_output=True, text=True, timeout=900, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    found = re.findall(r"^baseline\s+(\(as configured\)|model\.activation_checkpointing=true)\s+(\w+)\s+"
                       r"(?:fp32|bf16)\s+(\d+)\s+"
                       r"(\d+)\s+(-?\d+)\s+(-?\d+)\s+(\d+)\s+[\d.]+\s+[\d.]+\s+(model\.\w+ \d+.*)$", done.stdout,
                       re.MULTILINE)
    assert [r[:2] for r in found] == [(v, a) for v in ("(as configured)", "model.activation_checkpointing=true")
                                      for a in allocators], done.stdout
    assert len({(r[0], r[2]) for r in found}) == 2, done.stdout  # saved: one figure per variant
    assert all("model.video_encoder" in r[-1] for r in found), done.stdout  # among the modules that save the most
    rows = [(r[0], *r[2:]) for r in found if r[1] == "glibc"]
    (_, plain, before, *_), (_, checkpointed, *_) = rows
    assert int(before) > 0 and int(plain) > 3 * int(checkpointed) > 0, done.stdout


@pytest.mark.slow
def test_objective_cost_times_each_recipe_in_the_precision_asked_with_its_mfu():
    # The baseline and Clover, as configured and with activation checkpointing (a --variants row), on the same
    # batch of a small corpus: in the precision asked (the trainer's step, not a fixed bf16 autocast), Clover's
    # extra passes counted as more FLOPs, an MFU against the matmul peak measured in the run. Checkpointing
    # leaves the model's FLOPs as they are (the fusion layers' recomputation included: it is not the model's)
    # and shows as HFU above MFU.
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "objective_cost.py"), "--recipes", "clover",
                           "--batch", "2", "--steps", "1", "--repeats", "1", "--threads", "1", "--precision", "fp32",
                           "--variants", "", "model.activation_checkpointing=true"],
                          env=_env(), capture_output=True, text=True, timeout=900, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = re.findall(r"^(baseline|clover)\s+(\w+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)%\s+"
                      r"([\d.]+)%.*?(\+ model\.activation_checkpointing=true)?$", done.stdout, re.MULTILINE)
    assert [(r[0], r[-1]) for r in rows] == [("baseline", ""), ("clover", ""),
                                             ("clover", "+ model.activation_checkpointing=true")], done.stdout
    assert {r[1] for r in rows} == {"fp32"}, done.stdout
    (_, _, _, _, base_gflop, _, base_mfu, base_hfu, _), plain, checkpointed = rows
    assert 0 < float(base_gflop) < float(plain[4]) == float(checkpointed[4]), done.stdout
    assert 0 < float(base_mfu) == float(base_hfu) and float(plain[6]) == float(plain[7]), done.stdout
    assert float(checkpointed[7]) > float(checkpointed[6]) > 0, done.stdout
    assert re.search(r"^matmul peak .*: \d+ GFLOP/s$", done.stdout, re.MULTILINE), done.stdout


@pytest.mark.slow
def test_objective_cost_counts_flops_only_with_a_model_config_layered_over_each_recipe(tmp_path):
    # --flops-only: GFLOP per step and the ratio over the baseline's, nothing timed (no matmul peak). --model: a
    # config file over every recipe, here a video tower of 1 block instead of 4: fewer FLOPs for both recipes.
    shallow = tmp_path / "shallow.yaml"
    shallow.write_text("model:\n  video:\n    depth: 1\n")
    counts = {}
    for model in ([], ["--model", str(shallow)]):
        done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "objective_cost.py"), "--recipes", "clover",
                               "--batch", "2", "--threads", "1", "--precision", "fp32", "--flops-only", *model],
                              env=_env(), capture_output=True, text=True, timeout=900, check=False)
        assert done.returncode == 0, done.stderr[-3000:]
        assert "matmul peak" not in done.stdout and ("(model: " in done.stdout) == bool(model), done.stdout
        rows = dict((m.group(1), (float(m.group(2)), float(m.group(3)))) for m in re.finditer(
            r"^(baseline|clover)\s+([\d.]+)\s+([\d.]+)\s", done.stdout, re.MULTILINE))
        assert set(rows) == {"baseline", "clover"} and rows["baseline"][1] == 1.0, done.stdout
        assert rows["clover"][1] == pytest.approx(rows["clover"][0] / rows["baseline"][0], rel=0.02), done.stdout
        counts[bool(model)] = rows
    assert counts[True]["baseline"][0] < counts[False]["baseline"][0]
    assert counts[True]["clover"][0] < counts[False]["clover"][0]
    wrong = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "objective_cost.py"), "--flops-only",
                            "--model", str(tmp_path / "nope.yaml")], env=_env(), capture_output=True, text=True,
                           timeout=300, check=False)
    assert wrong.returncode == 2 and "--model: config file not found" in wrong.stderr.splitlines()[-1], wrong.stderr
    (tmp_path / "typo.yaml").write_text("model:\n  video:\n    depthh: 1\n")  # a key the config does not have
    wrong = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "objective_cost.py"), "--flops-only",
                            "--model", str(tmp_path / "typo.yaml")], env=_env(), capture_output=True, text=True,
                           timeout=300, check=False)
    assert wrong.returncode == 2 and "--model: " in wrong.stderr.splitlines()[-1], wrong.stderr
    assert "'model.video.depthh'" in wrong.stderr.splitlines()[-1] and "Traceback" not in wrong.stderr, wrong.stderr


@pytest.mark.slow
def test_eval_cost_times_each_measure_both_ways_and_finds_the_same_metrics(tiny_corpus, tmp_path):
    # A one-step tiny Clover run evaluated with one shared feature pass and with a pass per measure: a row per
    # zero-shot measure (masked words because the model has a fusion encoder) and per downstream task, and both
    # ways score exactly the same (the shared clips are the clips each measure would decode for itself).
    from structvl.config import load_config
    from structvl.engine.pretrain import run_pretraining

    from helpers import TINY

    run = tmp_path / "run"
    run_pretraining(load_config("clover", TINY + ["model.fusion.layers=1", f"data.root={tiny_corpus}",
                                                  "train.max_steps=1", "train.checkpoint_every=0"]), run)
    fast = ["openqa.epochs=2", "mcqa.epochs=2", "localization.epochs=2", "recognition.linear_epochs=2"]
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "eval_cost.py"), "--run", str(run), "--data",
                           str(tiny_corpus), "--rounds", "1", "--threads", "1", "--set", *fast],
                          env=_env(), capture_output=True, text=True, timeout=900, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = re.findall(r"^(\w+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)$", done.stdout, re.MULTILINE)
    assert [r[0] for r in rows] == ["retrieval", "grounding", "scene_change", "hard_negatives", "masked_words",
                                    "mcqa", "openqa", "recognition", "localization", "total"], done.stdout
    found = re.search(r"^metrics: (\d+) keys in both, largest difference (\S+)", done.stdout, re.MULTILINE)
    keys, worst = found.groups()
    assert int(keys) > 50 and float(worst) == 0.0, done.stdout


@pytest.mark.slow
def test_objective_cost_times_the_token_caches_against_the_plain_tokenizer():
    # CLOP's constructed captions and S-ViLM's phrases go through a TokenCache: --tokens adds a line under each of
    # those recipes with the texts tokenised per step, and none under the baseline (it tokenises nothing per step).
    # --profile then prints each operator's ms a step, a column per recipe: the matrix products among them, and
    # more of them where the recipe has extra passes.
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "objective_cost.py"), "--recipes", "clop", "svilm",
                           "--batch", "4", "--steps", "1", "--repeats", "1", "--threads", "1", "--precision", "fp32",
                           "--tokens", "--profile"], env=_env(), capture_output=True, text=True, timeout=900,
                          check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    header = re.search(r"^operator \(self CPU ms/step\)\s+baseline\s+clop\s+svilm$", done.stdout, re.MULTILINE)
    assert header, done.stdout
    ops = {m.group(1): [float(x) for x in m.group(2).split()]
           for m in re.finditer(r"^(total|aten::mm|aten::addmm)\s+([\d.]+\s+[\d.]+\s+[\d.]+)$", done.stdout,
                                re.MULTILINE)}
    assert set(ops) == {"total", "aten::mm", "aten::addmm"}, done.stdout
    base, clop, svilm = ops["total"]
    assert 0 < base < min(clop, svilm) and all(0 < x for x in ops["aten::mm"]), done.stdout
    lines = done.stdout.splitlines()
    below = {lines[i].split()[0]: lines[i + 1] for i in range(len(lines) - 1)
             if lines[i].split() and lines[i].split()[0] in ("baseline", "clop", "svilm")}
    assert "token caches" not in below["baseline"], done.stdout
    for recipe in ("clop", "svilm"):
        found = re.search(r"token caches: ([\d.]+) ms/step for (\d+) texts; the plain tokenizer on the same texts "
                          r"([\d.]+) ms", below[recipe])
        assert found and int(found.group(2)) > 0 and float(found.group(3)) > 0, done.stdout


def test_objective_cost_interleaves_the_recipes_and_takes_the_median_of_per_round_ratios(monkeypatch):
    # Each round measures the peak, then runs every recipe's steps in turn (train_step.run_rounds), so a drifting
    # machine slows both sides of a round's ratio; objective_cost reports the median of the rounds' ratios
    # (train_step.round_ratio), not a ratio of medians.
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import train_step
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    log, now = [], [0.0]
    seconds = {"baseline": [1.0, 1.0, 4.0], "clop": [2.0, 3.0, 4.0]}  # a step's, in each round

    def fake_step(name):
        def step():
            log.append(name)
            now[0] += seconds[name][log.count("peak") - 1]
        return step

    monkeypatch.setattr(train_step, "clock", lambda: now[0])
    monkeypatch.setattr(train_step, "matmul_peak", lambda dtype, seconds, device: log.append("peak") or 100.0)
    recipes = [train_step.Variant(n, "", "fp32", 1, fake_step(n), 1.0, 1.0) for n in seconds]
    peaks = train_step.run_rounds(recipes, rounds=3, peak_seconds=0.1, steps=2)
    assert log == ["peak", "baseline", "baseline", "clop", "clop"] * 3 and peaks == {"fp32": [100.0] * 3}
    base, clop = recipes
    assert base.times == seconds["baseline"] and clop.times == seconds["clop"]
    assert train_step.round_ratio(clop, base) == 2.0  # the rounds' ratios are 2, 3, 1; the medians' would be 3


def test_count_step_flops_counts_the_model_on_the_draws_that_ran():
    # A checkpointed model's FLOPs are counted on a second call with checkpointing off; that call must see the same
    # random draws as the first (an objective's swaps or masks can change the shapes), and the model is left as
    # configured. Here each call multiplies a matrix of a random number of rows, so draws that differ count
    # differently.
    import random

    import torch

    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import train_step
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))

    class Model:
        recomputes = True

        def __init__(self):
            self.states = []  # what set_activation_checkpointing was told, in order

        def set_activation_checkpointing(self, enabled):
            self.states.append(enabled)

    class Module:
        def __init__(self):
            self.model = Model()

    weight, rows = torch.randn(8, 8), []

    def step():
        rows.append(random.randint(1, 1000) + int(torch.randint(0, 1000, ())))
        torch.randn(rows[-1], 8) @ weight

    random.seed(0)
    torch.manual_seed(0)
    module = Module()
    model_flops, ran, _ = train_step.count_step_flops(step, module)
    assert rows[0] == rows[1] and model_flops == ran == 2 * rows[0] * 8 * 8
    assert module.model.states == [False, None]  # off for the count, then as configured
    step()
    assert rows[2] != rows[0]  # the draws go on from there
