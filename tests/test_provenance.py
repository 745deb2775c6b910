"""Runs keyed by the code that made them: the source fingerprint, run_info.json, and the demo's reuse of a
finished run only when the current code made it (a changed source file re-runs the recipe, the old run moved
aside)."""

import json
import shutil

import pytest

import structvl
from structvl.config import load_config
from structvl.engine.pretrain import run_pretraining
from structvl.engine.run_dir import same_code
from structvl.lab import demo
from structvl.runtime import provenance
from structvl.runtime.provenance import PACKAGE_ROOT, code_fingerprint, source_files

from helpers import TINY


@pytest.fixture
def package_copy(tmp_path, monkeypatch):
    """A copy of the structvl package tree that the fingerprint reads instead of the real one."""
    copy = tmp_path / "structvl"
    shutil.copytree(PACKAGE_ROOT, copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(provenance, "PACKAGE_ROOT", copy)
    return copy


def test_the_fingerprint_follows_the_source_and_configs(package_copy):
    original = code_fingerprint()
    assert original == code_fingerprint(PACKAGE_ROOT)  # the copy has the same files as the package
    assert original["version"] == structvl.__version__ and len(original["source_sha256"]) == 64
    assert package_copy / "configs" / "demo.yaml" in source_files()
    (package_copy / "notes.txt").write_text("not source")
    assert code_fingerprint() == original  # only .py files and the configs' .yaml count
    loss = package_copy / "objectives" / "contrastive.py"
    text = loss.read_text()
    loss.write_text(text + "\n# a comment\n")
    assert code_fingerprint() != original
    loss.write_text(text)
    assert code_fingerprint() == original
    config = package_copy / "configs" / "demo.yaml"
    config.write_text(config.read_text() + "\n")
    assert code_fingerprint() != original
    config.write_text(config.read_text()[:-1])
    loss.rename(loss.with_name("contrastive2.py"))  # the same bytes under another path
    assert code_fingerprint() != original


def test_the_demo_reuses_a_finished_run_only_when_this_code_made_it(tiny_corpus, tmp_path, package_copy,
                                                                     monkeypatch):
    trained = []

    def pretrain(cfg, run_dir, resume=False, overwrite=False):  # pre-training without the evaluation
        trained.append(resume)
        return dict(run_pretraining(cfg, run_dir, resume=resume, overwrite=overwrite).metrics)

    monkeypatch.setattr(demo, "pretrain_and_evaluate", pretrain)
    def downstream(run_dir, data, metrics):  # like the suite: merged into the run's metrics.json
        demo.write_json_merged(run_dir / "metrics.json", {"mcqa/accuracy": 40.0})
        return {"mcqa/accuracy": 40.0}

    monkeypatch.setattr(demo, "downstream_metrics", downstream)
    cfg = load_config("demo", TINY + [f"data.root={tiny_corpus}", "train.max_steps=1", "train.checkpoint_every=0"])
    run = tmp_path / "runs" / "baseline"

    first = demo.recipe_run(cfg, run, tiny_corpus)
    assert trained == [False] and first["mcqa/accuracy"] == 40.0
    assert json.loads((run / "run_info.json").read_text())["code"] == code_fingerprint()
    assert demo.recipe_run(cfg, run, tiny_corpus)["mcqa/accuracy"] == 40.0 and trained == [False]  # reused

    source = package_copy / "tasks" / "retrieval.py"  # a source change: the finished run is not reused
    source.write_text(source.read_text() + "\n# changed\n")
    assert not same_code(run) and demo.finished_run_metrics(cfg, run) is None
    demo.recipe_run(cfg, run, tiny_corpus)
    assert trained == [False, False]  # re-run from the start, not resumed
    aside = run.with_name("baseline.replaced-1")
    assert json.loads((aside / "metrics.json").read_text())["mcqa/accuracy"] == 40.0  # the old run kept
    assert json.loads((run / "run_info.json").read_text())["code"] == code_fingerprint()
    assert demo.finished_run_metrics(cfg, run) is not None  # the new run is this code's


def test_a_run_resumed_by_other_code_is_not_this_codes(tiny_corpus, tmp_path, package_copy):
    cfg = load_config("demo", TINY + [f"data.root={tiny_corpus}", "train.max_steps=2", "train.checkpoint_every=1"])
    run = tmp_path / "run"
    run_pretraining(cfg, run)
    assert same_code(run)
    (package_copy / "cli.py").write_text((package_copy / "cli.py").read_text() + "\n# changed\n")
    run_pretraining(cfg, run, resume=True)
    info = json.loads((run / "run_info.json").read_text())
    assert info["resumed_by"] == [code_fingerprint()] and info["code"] != code_fingerprint()
    assert not same_code(run)
    assert not same_code(tmp_path / "no-run")
