"""Downstream tasks end to end with tiny models on a tiny structured corpus: each task's data path, head and
metrics; fine-tuning through the Trainer lowers its loss; the fusion-encoder path (a stand-in fusion module
with the `model.fuse(video_out, text_out).cls` interface); the CLI writes flat keys into metrics.json."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
import torch
import torch.nn as nn

from structvl.config import load_config
from structvl.data.records import VideoRecord
from structvl.models.video_text import VideoTextModel, build_model
from structvl.tasks.downstream import run_suite, run_task
from structvl.tasks.features import FeatureCache
from structvl.tasks.task_config import load_task_config

from helpers import TINY

pytestmark = pytest.mark.usefixtures("one_thread")

FAST = ["openqa.epochs=8", "openqa.hidden=32", "mcqa.hidden=32", "mcqa.epochs=8", "localization.epochs=15",
        "localization.hidden=16", "recognition.linear_epochs=20", "batch_size=16"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from structvl.lab.synth import generate_corpus

    root = tmp_path_factory.mktemp("dcorpus")
    generate_corpus(root, num_clips=40, num_untrimmed=8, size=32, num_frames=8, seed=3, workers=1, progress=False)
    return root


@pytest.fixture(scope="module")
def run_cfg(corpus):
    return load_config("demo", TINY + [f"data.root={corpus}"])


def tiny_model(run_cfg, seed=0):
    torch.manual_seed(seed)
    return build_model(run_cfg.model)


@dataclass
class FusionOutput:
    cls: torch.Tensor


class StandInFusion(nn.Module):
    """The fusion encoder's interface with the least machinery: mean video patch state and masked-mean text
    state, projected and mixed into a 16-d [CLS]."""

    def __init__(self, video_width: int, text_width: int):
        super().__init__()
        self.video, self.text = nn.Linear(video_width, 16), nn.Linear(text_width, 16)
        self.mix = nn.Linear(32, 16)

    def forward(self, video_out, text_out) -> FusionOutput:
        v = video_out.tokens.float().mean(dim=(1, 2))
        m = text_out.attention_mask[..., None].float()
        t = (text_out.tokens.float() * m).sum(1) / m.sum(1).clamp(min=1)
        return FusionOutput(self.mix(torch.cat([self.video(v), self.text(t)], -1)).tanh())


class FusedModel(VideoTextModel):
    def __init__(self, cfg):
        super().__init__(cfg)
        self.fusion = StandInFusion(self.video_encoder.width, self.text_encoder.width)

    def fuse(self, video_out, text_out, read=None) -> FusionOutput:
        return self.fusion(video_out, text_out)


def test_suite_reports_every_task_against_chance(corpus, run_cfg):
    task_cfg = load_task_config("finetune/structured_demo", FAST)
    metrics = run_suite(tiny_model(run_cfg), run_cfg, task_cfg, corpus)
    assert metrics["mcqa/chance"] == 20.0 and 0 <= metrics["mcqa/accuracy"] <= 100
    assert metrics["mcqa/num_test"] == 4
    assert metrics["openqa/oov_rate"] == 0.0 and 0 <= metrics["openqa/accuracy"] <= 100
    assert metrics["openqa/train_loss_last"] < metrics["openqa/train_loss_first"]
    assert "openqa/text_only_accuracy" in metrics and "openqa/majority_accuracy" in metrics
    assert metrics["recognition/chance/top1"] == 10.0 and metrics["recognition/num_classes"] == 10
    assert 0 <= metrics["recognition/linear/top1"] <= metrics["recognition/linear/top5"] <= 100
    for t in ("0.3", "0.5", "0.7"):
        assert 0 <= metrics[f"localization/mAP@{t}"] <= 100 and f"localization/chance/mAP@{t}" in metrics
        assert 0 <= metrics[f"localization/agnostic/mAP@{t}"] <= 100 and f"localization/agnostic/chance/mAP@{t}" in metrics
    assert metrics["localization/train_loss_last"] < metrics["localization/train_loss_first"]


def test_openqa_oov_counts_as_wrong(corpus, run_cfg):
    from structvl.data.formats import read_annotations
    from structvl.tasks.qa import answer_vocabulary, oov_rate

    task_cfg = load_task_config("finetune/structured", FAST + ["openqa.top_k_answers=3", "openqa.blind_baseline=false"])
    metrics = run_task("openqa", tiny_model(run_cfg), run_cfg, task_cfg, corpus)
    train = read_annotations("openqa", corpus / "eval/openqa_train.json")
    test = read_annotations("openqa", corpus / "eval/openqa_test.json")
    expected = oov_rate(test, answer_vocabulary(train, 3))
    assert expected > 20 and metrics["openqa/oov_rate"] == pytest.approx(expected)
    assert metrics["openqa/num_answers"] == 3
    assert metrics["openqa/accuracy"] <= 100 - expected + 1e-6  # an OOV answer can never be predicted


def test_qa_labels_stay_aligned_with_items(corpus, run_cfg, tmp_path):
    """Answers a head can learn from the text alone (each question has one answer; MC: the right candidate is
    always "yes", at a random position) must be learnt perfectly: any misalignment of items, candidates,
    answers or video rows would show as lost accuracy."""
    import random

    from structvl.data.formats import read_annotations
    from structvl.data.formats.qa import write_mcqa_csv, write_openqa_json

    answers = ["red", "two", "star", "up"]
    for split in ("train", "test"):
        records = read_annotations("openqa", corpus / f"eval/openqa_{split}.json")
        for i, r in enumerate(records):
            r.question, r.answer = f"question number {i % 4}?", answers[i % 4]
        write_openqa_json(records, tmp_path / f"qa_{split}.json")
    rng = random.Random(0)
    for split, ids in (("train", range(0, 32)), ("test", range(36, 40))):
        mc = []
        for n in ids:
            options = ["no", "never", "nope", "not at all"]
            answer = rng.randrange(5)
            options.insert(answer, "yes")
            mc.append(VideoRecord(f"video{n}", f"video{n}.mp4", candidates=options, answer=answer))
        write_mcqa_csv(mc, tmp_path / f"mc_{split}.csv")
    task_cfg = load_task_config("finetune/structured", [
        f"openqa.data.train={tmp_path}/qa_train.json", f"openqa.data.test={tmp_path}/qa_test.json",
        "openqa.epochs=40", "openqa.lr=1e-2", "openqa.hidden=32",
        "mcqa.mode=finetune", f"mcqa.data.train={tmp_path}/mc_train.csv", f"mcqa.data.test={tmp_path}/mc_test.csv",
        "mcqa.epochs=60", "mcqa.lr=1e-2", "mcqa.hidden=32", "mcqa.batch_size=8"])
    model = tiny_model(run_cfg)
    openqa = run_task("openqa", model, run_cfg, task_cfg, corpus)
    assert openqa["openqa/accuracy"] == 100.0 and openqa["openqa/text_only_accuracy"] == 100.0
    assert openqa["openqa/majority_accuracy"] < 40
    mcqa = run_task("mcqa", model, run_cfg, task_cfg, corpus)
    assert mcqa["mcqa/accuracy"] == 100.0 and mcqa["mcqa/num_test"] == 4


def test_feature_cache_shares_clips_and_views(corpus, run_cfg):
    from structvl.data.formats import read_annotations

    model = tiny_model(run_cfg)
    cache = FeatureCache(model, batch_size=8)
    records = read_annotations("jsonl", corpus / "actions/test.jsonl")
    a = cache.get(records, corpus, num_frames=4)
    assert a.pooled.shape == (len(records), 1, 32) and a.embed.shape == (len(records), 1, 32)
    torch.testing.assert_close(a.embed.norm(dim=-1), torch.ones(len(records), 1), atol=1e-2, rtol=0)
    stored = len(cache._store)
    b = cache.get(records + records[:1], corpus, num_frames=4)  # nothing new to extract
    assert len(cache._store) == stored and b.pooled.shape[0] == len(records) + 1
    views = cache.get(records, corpus, num_frames=4, temporal_views=2, spatial_crops=3)
    assert views.pooled.shape == (len(records), 6, 32)


def test_mcqa_finetune_head_with_and_without_fusion(corpus, run_cfg):
    # the corpus has no MC training split: train on the test file itself, a data-path and loss check only
    overrides = FAST + ["mcqa.mode=finetune", "mcqa.data.train=eval/mc_test.csv", "mcqa.epochs=150", "mcqa.lr=1e-2"]
    task_cfg = load_task_config("finetune/structured", overrides)
    plain = run_task("mcqa", tiny_model(run_cfg), run_cfg, task_cfg, corpus)
    assert plain["mcqa/train_loss_last"] < plain["mcqa/train_loss_first"]
    torch.manual_seed(0)
    fused_model = FusedModel(run_cfg.model)
    before = {k: v.clone() for k, v in fused_model.fusion.state_dict().items()}
    fused = run_task("mcqa", fused_model, run_cfg, task_cfg, corpus, finetune=True)  # trains the fusion too
    assert fused["mcqa/train_loss_last"] < fused["mcqa/train_loss_first"]
    assert all(torch.equal(before[k], v) for k, v in fused_model.fusion.state_dict().items())  # a copy trained


def test_openqa_through_fusion_encoder(corpus, run_cfg):
    torch.manual_seed(0)
    task_cfg = load_task_config("finetune/structured", FAST + ["openqa.blind_baseline=false"])
    metrics = run_task("openqa", FusedModel(run_cfg.model), run_cfg, task_cfg, corpus)
    assert metrics["openqa/train_loss_last"] < metrics["openqa/train_loss_first"]


def test_finetune_retrieval_loss_falls_and_run_reloads(corpus, run_cfg, tmp_path):
    from structvl.engine.checkpoint import load_run_model

    task_cfg = load_task_config("finetune/structured", ["retrieval.steps=25", "retrieval.batch_size=8",
                                                         "retrieval.lr=2e-3", "retrieval.text_lr=2e-3"])
    model = tiny_model(run_cfg)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    metrics = run_task("retrieval", model, run_cfg, task_cfg, corpus, finetune=True, out_dir=tmp_path / "ft")
    assert metrics["finetune_retrieval/train_loss_last"] < metrics["finetune_retrieval/train_loss_first"] - 0.1
    assert metrics["finetune_retrieval/num_videos"] == 4 and "finetune_retrieval/v2t/MnR" in metrics
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the caller's model untouched
    reloaded, cfg, _ = load_run_model(tmp_path / "ft")
    assert cfg.train.max_steps == 25 and not torch.equal(reloaded.video_proj[0].weight, model.video_proj[0].weight)


def test_paragraph_records_join_captions_in_time_order():
    from structvl.tasks.finetune_retrieval import paragraph_records

    records = [VideoRecord("v", "v.mp4", ["then it spins"], start=5, end=9),
               VideoRecord("v", "v.mp4", ["a star grows"], start=0, end=5),
               VideoRecord("w", "w.mp4", ["a ring", "a red ring"])]
    out = paragraph_records(records)
    assert [(r.video, r.captions, r.start) for r in out] == [("v.mp4", ["a star grows then it spins"], None),
                                                             ("w.mp4", ["a ring a red ring"], None)]


def test_rerank_reorders_only_the_top_k():
    from structvl.tasks.finetune_retrieval import rerank_ranks

    sims = torch.tensor([[0.9, 0.8, 0.7, 0.1], [0.9, 0.8, 0.7, 0.1]])
    prefer_last_in_top = lambda q, top: torch.arange(len(top), dtype=torch.float)  # noqa: E731
    ranks = rerank_ranks(sims, [[2], [3]], 3, prefer_last_in_top)
    assert ranks.tolist() == [1, 4]  # item 2 moves from 3rd to 1st; item 3 is outside the top-3 and stays 4th


def test_finetune_retrieval_trains_matching_head_for_rerank(corpus, run_cfg, tmp_path):
    torch.manual_seed(0)
    task_cfg = load_task_config("finetune/structured", ["retrieval.steps=6", "retrieval.batch_size=8",
                                                         "retrieval.rerank_top_k=2"])
    metrics = run_task("retrieval", FusedModel(run_cfg.model), run_cfg, task_cfg, corpus, finetune=True,
                       out_dir=tmp_path / "ft")
    rows = [json.loads(line) for line in (tmp_path / "ft" / "metrics.jsonl").read_text().splitlines()]
    assert "matching" in rows[-1]
    assert 1 <= metrics["finetune_retrieval/t2v/MnR"] <= 4


def test_recognition_finetune_and_multiview(corpus, run_cfg, tmp_path):
    task_cfg = load_task_config("finetune/structured", ["recognition.finetune_steps=15", "recognition.batch_size=8",
                                                        "recognition.finetune_lr=2e-3", "recognition.temporal_views=2"])
    metrics = run_task("recognition", tiny_model(run_cfg), run_cfg, task_cfg, corpus, finetune=True,
                       out_dir=tmp_path / "rec")
    assert metrics["recognition/finetune/train_loss_last"] < metrics["recognition/finetune/train_loss_first"]
    assert 0 <= metrics["recognition/finetune/top1"] <= metrics["recognition/finetune/top5"] <= 100


def test_cli_eval_and_finetune_merge_flat_keys(corpus, run_cfg, tmp_path):
    from structvl.cli import main
    from structvl.engine.pretrain import run_pretraining

    run = tmp_path / "run"
    one_step = load_config("demo", TINY + [f"data.root={corpus}", "train.max_steps=1", "train.checkpoint_every=0"])
    run_pretraining(one_step, run)
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", "--task", "mcqa", "--checkpoint", str(run), "--data", str(corpus),
              "--out", str(tmp_path / "m.json")])
    assert exit_info.value.code == 0
    assert json.loads((tmp_path / "m.json").read_text())["mcqa/chance"] == 20.0
    with pytest.raises(SystemExit) as exit_info:
        main(["finetune", "--task", "localization", "--checkpoint", str(run), "--data", str(corpus),
              "--config", "finetune/structured_demo", "localization.epochs=2"])
    assert exit_info.value.code == 0
    saved = json.loads((run / "metrics.json").read_text())
    assert "localization/mAP@0.5" in saved and "localization/mAP_avg" in saved
    # MSRVTT-MC style: no training file, so `finetune` scores zero-shot (the dataset's protocol), not an error.
    with pytest.raises(SystemExit) as exit_info:
        main(["finetune", "--task", "mcqa", "--checkpoint", str(run), "--data", str(corpus)])
    assert exit_info.value.code == 0
    assert json.loads((run / "metrics.json").read_text())["mcqa/zeroshot_accuracy"] >= 0


def test_demo_downstream_columns(corpus, run_cfg, tmp_path):
    from structvl.engine.pretrain import run_pretraining
    from structvl.lab.demo import DOWNSTREAM_REFERENCE, aggregate, downstream_metrics, format_table

    run = tmp_path / "run"
    one_step = load_config("demo", TINY + [f"data.root={corpus}", "train.max_steps=1", "train.checkpoint_every=0"])
    run_pretraining(one_step, run)
    metrics = downstream_metrics(run, corpus, {})
    # Every column a plain dual encoder can be measured on, with its reference beside it; the baseline gets
    # S-ViLM's structure metrics too (best patch, per-frame features) but no SKP mAP (it has no SKP heads).
    for column, reference in DOWNSTREAM_REFERENCE.items():
        if column in ("clop/skp_mAP", "grounding/pointing"):
            assert column not in metrics
        else:
            assert column in metrics and reference in metrics, column
    assert "mcqa/accuracy" in json.loads((run / "metrics.json").read_text())
    table = format_table({"baseline": aggregate([metrics])}, {c: metrics[r] for c, r in DOWNSTREAM_REFERENCE.items()
                                                              if r in metrics})
    assert "mcqa/acc" in table and "tal/mAP@0.5" in table and "rec/top1" in table and "gr/best_patch" in table


def test_demo_reuses_a_finished_run_only_with_the_same_config(corpus, tmp_path):
    from structvl.engine.pretrain import run_pretraining
    from structvl.lab.demo import finished_run_metrics, write_json_merged

    run = tmp_path / "run"
    cfg = load_config("demo", TINY + [f"data.root={corpus}", "train.max_steps=1", "train.checkpoint_every=0"])
    run_pretraining(cfg, run)
    assert finished_run_metrics(cfg, run) is None  # pre-trained but the demo never finished it
    write_json_merged(run / "metrics.json", {"demo/finished": 1.0, "mcqa/accuracy": 40.0})
    reused = finished_run_metrics(cfg, run)
    assert reused["mcqa/accuracy"] == 40.0 and "demo/finished" not in reused
    changed = load_config("demo", TINY + [f"data.root={corpus}", "train.max_steps=2", "train.checkpoint_every=0"])
    assert finished_run_metrics(changed, run) is None


@pytest.mark.parametrize("choice, expected", [("fp32", None), ("bf16", torch.bfloat16)])
def test_downstream_features_follow_the_runs_precision(corpus, run_cfg, monkeypatch, choice, expected):
    # The feature extractors once autocast to bf16 whatever the run said; every video and text pass of a task
    # must now use the run's train.precision.
    import copy

    import structvl.tasks.features as features

    used = []
    original = features.autocast
    monkeypatch.setattr(features, "autocast", lambda device, dtype: used.append(dtype) or original(device, dtype))
    cfg = copy.deepcopy(run_cfg)
    cfg.train.precision = choice
    run_task("mcqa", tiny_model(cfg), cfg, load_task_config("finetune/structured", FAST), corpus)
    assert len(used) >= 2 and set(used) == {expected}  # video clips and candidate texts
