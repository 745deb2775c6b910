"""scripts/results_table.py: the README's tables from a demo directory. The seed-noise rule marks a difference
only beyond std + std (ranks: lower is better), a test gain is said to hold only when the unseen corpus gains
too, ablations are compared with their paper's recipe, and a directory whose runs were made by two versions of
the code is refused with one line and exit 2."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from structvl.lab.demo import ABLATIONS, RECIPES, UNSEEN_PREFIX
from structvl.runtime.provenance import code_fingerprint

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import results_table  # scripts/ is not a package: imported from its path

BASE, CLOP, GROUNDED = RECIPES["baseline"][0], RECIPES["clop"][0], ABLATIONS["clop_grounded"][0]


def _demo_dir(tmp_path: Path, rows: dict[str, dict[str, tuple[float, float]]], seeds: int = 3,
              hashes: dict[str, str] | None = None) -> Path:
    out = tmp_path / "demo"
    metrics = {"demo/seeds": seeds, "retrieval/chance/R@1": 0.5}
    names = {label: name for name, (label, _) in {**RECIPES, **ABLATIONS}.items()}
    for label, columns in rows.items():
        for column, (mean, std) in columns.items():
            metrics[f"{label}/{column}"], metrics[f"{label}/{column}/std"] = mean, std
        for seed in range(seeds):
            run = out / names[label] / f"seed{seed}"
            run.mkdir(parents=True)
            code = {**code_fingerprint(), **({"source_sha256": hashes[label]} if hashes and label in hashes else {})}
            (run / "run_info.json").write_text(json.dumps({"code": code}), encoding="utf-8")
    (out / "metrics.json").write_text(json.dumps(metrics), encoding="utf-8")
    return out


def _row(r1, hn, unseen_r1, mdr=2.0, std=1.0):
    return {"retrieval/t2v/R@1": (r1, std), "retrieval/t2v/MdR": (mdr, 0.1), "hard_negative/overall": (hn, std),
            f"{UNSEEN_PREFIX}retrieval/t2v/R@1": (unseen_r1, std)}


def test_marks_only_differences_beyond_seed_noise_and_checks_the_unseen_corpus(tmp_path, capsys):
    rows = {BASE: _row(50.0, 70.0, 30.0), CLOP: _row(53.0, 71.5, 31.0, mdr=1.5), GROUNDED: _row(57.0, 66.0, 36.0)}
    assert results_table.main([str(_demo_dir(tmp_path, rows)), "--git-depth", "0"]) == 0
    out = capsys.readouterr().out
    assert "the working tree's source" in out
    clop_line = next(line for line in out.splitlines() if line.startswith(f"| {CLOP} − {BASE} |"))
    assert "+3.0 ▲" in clop_line  # 3.0 > 1 + 1
    assert "+1.5 |" in clop_line  # 1.5 <= 2: within noise, unmarked
    assert "-0.5 ▲" in clop_line  # MdR 1.5 vs 2.0 (stds 0.1): lower is better
    verdict = next(line for line in out.splitlines() if line.startswith(f"- **{CLOP}** vs {BASE}"))
    assert "t2v/R@1 +3.0 (not on unseen)" in verdict  # unseen +1.0 is within noise
    grounded = next(line for line in out.splitlines() if line.startswith(f"- **{GROUNDED}** vs {BASE}"))
    assert "t2v/R@1 +7.0 (holds unseen)" in grounded and "loses on hn overall -4.0" in grounded
    assert f"- **{GROUNDED}** vs {CLOP}" in out  # an ablation against its paper's recipe too
    assert "| chance / reference | 0.5 |" in out


def test_one_seed_marks_nothing(tmp_path, capsys):
    rows = {BASE: _row(50.0, 70.0, 30.0, std=0.0), CLOP: _row(53.0, 71.5, 31.0, std=0.0)}
    assert results_table.main([str(_demo_dir(tmp_path, rows, seeds=1)), "--git-depth", "0"]) == 0
    out = capsys.readouterr().out
    assert "▲" not in out.split("**Against the reference")[1] and "no difference is judged" in out


def test_runs_of_two_code_versions_are_refused(tmp_path, capsys):
    rows = {BASE: _row(50.0, 70.0, 30.0), CLOP: _row(53.0, 71.5, 31.0)}
    out = _demo_dir(tmp_path, rows, hashes={CLOP: "0" * 64})
    with pytest.raises(SystemExit) as exit_info:
        results_table.main([str(out), "--git-depth", "0"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "2 versions of the code" in err and str(out) in err


def test_a_missing_directory_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        results_table.main([str(tmp_path / "nowhere")])
    assert exit_info.value.code == 2 and "metrics.json: no such file" in capsys.readouterr().err


def test_records_rebuild_the_same_table_and_are_never_overwritten(tmp_path, capsys):
    rows = {BASE: _row(50.0, 70.0, 30.0), CLOP: _row(53.0, 71.5, 31.0)}
    out = _demo_dir(tmp_path, rows, seeds=2)
    (out / "clop" / "seed1" / "config.yaml").write_text("train: {seed: 1}\n", encoding="utf-8")
    (out / "clop" / "seed1" / "model.safetensors").write_bytes(b"weights")  # not a record
    records = tmp_path / "records"
    made_by = ["--git-depth", "0", "--command", "structvl demo --seeds 2"]  # else the header names the directory
    assert results_table.main([str(out), *made_by, "--records", str(records)]) == 0
    table = capsys.readouterr().out
    assert (records / "clop" / "seed1" / "config.yaml").read_text(encoding="utf-8") == "train: {seed: 1}\n"
    assert (records / "baseline" / "seed1" / "run_info.json").exists()
    assert not (records / "clop" / "seed1" / "model.safetensors").exists()
    assert results_table.main([str(records), *made_by]) == 0
    assert capsys.readouterr().out == table
    with pytest.raises(SystemExit) as stop:  # a second copy into the same directory
        results_table.main([str(out), "--git-depth", "0", "--records", str(records)])
    assert stop.value.code == 2 and "never overwritten" in capsys.readouterr().err
