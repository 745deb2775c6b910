"""End to end on a tiny structured corpus: the loss falls, resume is exact, eval writes metrics."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from structvl.engine import trainer
from structvl.engine.pretrain import run_pretraining
from structvl.runtime.precision import fast_bf16
from structvl.runtime.process import worker_start_method
from structvl.tasks.evaluate import pretrain_and_evaluate

from helpers import TINY, tiny_cfg


def test_tiny_run_loss_falls_and_metrics_written(tiny_corpus, tmp_path):
    cfg = tiny_cfg(tiny_corpus, "train.max_steps=30", "train.checkpoint_every=0")
    metrics = pretrain_and_evaluate(cfg, tmp_path / "run")
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    first = sum(r["loss"] for r in rows[:3]) / 3
    last = sum(r["loss"] for r in rows[-3:]) / 3
    assert last < first - 0.2, (first, last)
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    for key in ("retrieval/t2v/R@1", "retrieval/v2t/R@1", "retrieval/chance/R@1", "hard_negative/overall",
                "hard_negative/static/action", "hard_negative/balanced/action"):
        assert key in saved and key in metrics
    # demo.yaml's train.precision=auto: bf16 exactly where it is the faster (AMX), and the run says which
    assert saved["train/bf16"] == float(fast_bf16("cpu"))
    assert (tmp_path / "run" / "config.yaml").exists()
    assert (tmp_path / "run" / "checkpoints" / "latest").exists()


def test_resume_reproduces_uninterrupted_weights(tiny_corpus, tmp_path):
    """Stop at step 6 of 12 (a checkpoint), resume, and land on the uninterrupted run's weights exactly.
    The scratch BERT has dropout, so this also checks that RNG states are restored."""
    common = ["train.max_steps=12", "train.checkpoint_every=6", "train.keep_checkpoints=5",
              "train.precision=fp32"]
    full = tmp_path / "full"
    assert run_pretraining(tiny_cfg(tiny_corpus, *common), full).metrics["train/bf16"] == 0.0  # fp32 kept

    stopped = tmp_path / "stopped"
    (stopped / "checkpoints").mkdir(parents=True)
    import shutil
    shutil.copytree(full / "checkpoints" / "step_00000006", stopped / "checkpoints" / "step_00000006")
    (stopped / "checkpoints" / "latest").write_text("step_00000006")
    run_pretraining(tiny_cfg(tiny_corpus, *common), stopped, resume=True)

    a = load_file(str(full / "checkpoints" / "step_00000012" / "model.safetensors"))
    b = load_file(str(stopped / "checkpoints" / "step_00000012" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    # and the run did train: weights moved away from the step-6 state
    mid = load_file(str(full / "checkpoints" / "step_00000006" / "model.safetensors"))
    assert any(not torch.equal(mid[k], a[k]) for k in a)


def test_eval_command_writes_metrics(tiny_corpus, tmp_path):
    from structvl.cli import main

    run_pretraining(tiny_cfg(tiny_corpus, "train.max_steps=2", "train.checkpoint_every=0"), tmp_path / "r")
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", "--task", "retrieval", "--checkpoint", str(tmp_path / "r"), "--data", str(tiny_corpus),
              "--out", str(tmp_path / "m.json")])
    assert exit_info.value.code == 0
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert 0 <= metrics["retrieval/t2v/R@1"] <= 100 and metrics["retrieval/num_videos"] > 0


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_torchrun_two_processes_train_save_and_resume(tiny_corpus, tmp_path, strategy):
    """The same command under torchrun (gloo on CPU): trains, checkpoints, resumes, evaluates on rank 0."""
    import subprocess
    import sys

    run = tmp_path / "run"
    args = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "-m", "structvl", "pretrain",
            "--config", "demo", "--out", str(run)] + TINY + [f"data.root={tiny_corpus}",
                                                             f"train.distributed={strategy}", "train.batch_size=4",
                                                             "train.checkpoint_every=2"]
    first = subprocess.run(args + ["--max-steps", "2"], capture_output=True, text=True, timeout=240)
    assert first.returncode == 0, first.stderr[-3000:]
    second = subprocess.run(args + ["--max-steps", "4", "--resume"], capture_output=True, text=True, timeout=240)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resumed" in second.stderr and "step 2" in second.stderr
    assert (run / "checkpoints" / "step_00000004" / "model.safetensors").exists()
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]
    assert "retrieval/t2v/R@1" in json.loads((run / "metrics.json").read_text())


def test_the_trainers_loader_starts_its_workers_as_worker_start_method_says(tiny_corpus, tmp_path, monkeypatch):
    """The demo's run process is spawned, so spawn is its default; the trainer passes the start method that
    forks on Linux (test_runtime_process checks what a forked worker inherits)."""
    loaders = []

    def recording(*args, **kwargs):
        loaders.append(build(*args, **kwargs))
        return loaders[-1]

    build = trainer.build_dataloader
    monkeypatch.setattr(trainer, "build_dataloader", recording)
    run_pretraining(tiny_cfg(tiny_corpus, "train.max_steps=1", "train.checkpoint_every=0", "data.num_workers=1"),
                    tmp_path / "run")
    assert len(loaders) == 1
    context = loaders[0].multiprocessing_context  # None: the process's default
    assert (context.get_start_method() if context else None) == worker_start_method()


def test_pretrain_streams_from_webdataset_shards(tiny_corpus, tmp_path):
    """`data.shards` swaps the map-style dataset for tar shards; the same trainer learns from them."""
    from structvl.data.formats import read_annotations
    from structvl.data.shards import write_shards

    records = read_annotations("jsonl", tiny_corpus / "train.jsonl")
    write_shards(records, tiny_corpus, str(tmp_path / "shards" / "train-%03d.tar"), max_count=10)
    cfg = tiny_cfg(tiny_corpus, "train.max_steps=20", "train.checkpoint_every=0",
                   f"data.shards={tmp_path}/shards/train-{{000..002}}.tar")
    run_pretraining(cfg, tmp_path / "run")
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 20 and rows[-1]["epoch"] >= 1  # 30 samples / batch 8: epochs roll over
    assert sum(r["loss"] for r in rows[-3:]) < sum(r["loss"] for r in rows[:3]) - 0.1

    bad = tiny_cfg(tiny_corpus, f"data.shards={tmp_path}/nowhere-{{000..001}}.tar")
    from structvl.config import ConfigError
    with pytest.raises(ConfigError, match="data.shards"):
        run_pretraining(bad, tmp_path / "bad")
