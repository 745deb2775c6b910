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

ROOT = Path(__file__).resolve().parents[1]


def _run(script: str, *args: str) -> str:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args, "--smoke"], env=env,
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
