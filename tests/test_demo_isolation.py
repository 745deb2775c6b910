"""`structvl demo` runs each recipe and seed in a process of its own (`lab.demo.isolated_run`): the child's run
gives exactly the metrics of the same run made in this process, the parent does not run it itself, a finished
run is reused without starting a child, a child that fails is reported with its run directory, and one that
finished with other code than the parent's is refused with the reason."""

import json

import pytest

from structvl.config import load_config
from structvl.engine import run_dir as run_dir_module
from structvl.lab import demo
from structvl.runtime.errors import RunStopped

from helpers import TINY

VARIES = ("time/", "train/clips_per_s", "demo/")  # wall-clock figures, not results


def results(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if not k.startswith(VARIES)}


@pytest.mark.slow
def test_a_run_in_its_own_process_gives_the_metrics_of_one_in_this_process(tiny_corpus, tmp_path, monkeypatch):
    overrides = TINY + [f"data.root={tiny_corpus}", "train.max_steps=2", "train.checkpoint_every=0"]
    cfg = load_config("demo", overrides)
    here = demo.recipe_run(cfg, tmp_path / "here", tiny_corpus)

    def not_here(*args, **kwargs):
        raise AssertionError("the parent ran the recipe itself")

    monkeypatch.setattr(demo, "recipe_run", not_here)  # seen by this process only, not by the spawned child
    child = demo.isolated_run("demo", overrides, cfg, tmp_path / "child", tiny_corpus, None, "test")
    assert results(child) == results(here) and "retrieval/t2v/R@1" in child and "mcqa/accuracy" in child

    monkeypatch.setattr(demo.multiprocessing, "get_context", not_here)
    again = demo.isolated_run("demo", overrides, cfg, tmp_path / "child", tiny_corpus, None, "test")
    assert again == child  # finished with this config and code: reused, no child started


def test_a_failed_child_names_its_run(tiny_corpus, tmp_path):
    overrides = TINY + [f"data.root={tmp_path / 'no-corpus'}", "train.max_steps=1"]
    cfg = load_config("demo", overrides)
    with pytest.raises(RuntimeError, match="bad-run: the run's process exited with code 1"):
        demo.isolated_run("demo", overrides, cfg, tmp_path / "bad-run", tiny_corpus, None, "test")
    assert not (tmp_path / "bad-run" / "metrics.json").exists() or \
        "demo/finished" not in json.loads((tmp_path / "bad-run" / "metrics.json").read_text())


def test_a_run_whose_code_changed_while_it_ran_is_not_taken_and_says_so(tiny_corpus, tmp_path, monkeypatch):
    """The child records the code it imported; the files changing under it (here: the parent's fingerprint of
    them differing) leave a finished run that is not this code's: one line saying so, not "an error above"."""
    overrides = TINY + [f"data.root={tiny_corpus}", "train.max_steps=1", "train.checkpoint_every=0"]
    cfg = load_config("demo", overrides)
    monkeypatch.setattr(run_dir_module, "code_fingerprint", lambda: {"version": "edited", "source_sha256": "0"})
    with pytest.raises(RunStopped, match="changed-run: the run finished, but structvl's source files changed"):
        demo.isolated_run("demo", overrides, cfg, tmp_path / "changed-run", tiny_corpus, None, "test")
    assert json.loads((tmp_path / "changed-run" / "metrics.json").read_text())["demo/finished"]
