"""`structvl demo --generalize` adds each recipe's zero-shot retrieval and hard negatives on an unseen corpus (the next
seed, held-out compositions, generated beside --data) as `unseen:` columns; `--split val` evaluates on val, in
OUT-val. Pre-training is one step of a tiny model, the downstream suite a stub (`stubbed_demo` in conftest.py)."""

import json

import pytest
import torch

from structvl.config import load_config
from structvl.engine.checkpoint import load_run_model
from structvl.lab import demo
from structvl.lab.synth.corpus import corpus_arguments
from structvl.models.text_encoder import build_tokenizer
from structvl.tasks.evaluate import evaluate_model

def test_generalize_adds_the_unseen_corpus_columns(stubbed_demo, tmp_path, one_thread, capsys):
    data, out = tmp_path / "structured", tmp_path / "runs"
    assert demo.run_demo(out=out, data=data, recipes=["baseline"], overrides=stubbed_demo, generalize=True,
                         isolate=False) == 0
    table = capsys.readouterr().out

    unseen = tmp_path / "structured-unseen"
    arguments = corpus_arguments(unseen)
    assert arguments == {**corpus_arguments(data), "seed": 1, "holdout_compositions": True, "num_untrimmed": 0}
    header = next(line for line in table.splitlines() if line.startswith("recipe"))
    assert "unseen:t2v/R@1" in header and "unseen:hn/overall" in header and " t2v/R@1" in header
    summary = json.loads((out / "metrics.json").read_text())
    run = out / "baseline" / "seed0"
    model, cfg, _ = load_run_model(run)
    expected = evaluate_model(model, cfg, build_tokenizer(cfg.model.text), torch.device("cpu"), data_root=unseen)
    for key in ("retrieval/t2v/R@1", "retrieval/num_videos", "hard_negative/overall"):
        assert summary[f"unseen:{key}"] == pytest.approx(expected[key]), key
    on_own_corpus = evaluate_model(model, cfg, build_tokenizer(cfg.model.text), torch.device("cpu"), data_root=data)
    assert summary["hard_negative/overall"] == pytest.approx(on_own_corpus["hard_negative/overall"])
    assert "Unseen corpus" in (out / "report.html").read_text()

    # a second demo reuses the unseen corpus and the run's unseen numbers; without --generalize they are left out
    assert demo.run_demo(out=out, data=data, recipes=["baseline"], overrides=stubbed_demo,
                         isolate=False) == 0
    assert "unseen:" not in capsys.readouterr().out
    assert corpus_arguments(unseen) == arguments


def test_split_val_evaluates_on_val_in_its_own_directory(stubbed_demo, tmp_path, one_thread, capsys):
    data, out = tmp_path / "structured", tmp_path / "runs"
    assert demo.run_demo(out=out, data=data, recipes=["baseline"], overrides=stubbed_demo, split="val",
                         isolate=False) == 0
    assert "(zero-shot, val split)" in capsys.readouterr().out
    run = tmp_path / "runs-val" / "baseline" / "seed0"
    assert load_config(run / "config.yaml", check_init=False).eval.split == "val"
    assert not out.exists()
    val_videos = len((data / "eval" / "retrieval_val.jsonl").read_text().splitlines())
    assert json.loads((run / "metrics.json").read_text())["retrieval/num_videos"] == val_videos
