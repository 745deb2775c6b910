"""Gauntlet, non-finite numbers (issue 29): NaN / inf injected into every metric and into training.

Every metric must score a non-finite number as the worst possible and say how many it saw; training must skip
(and count) a step whose loss or gradient is not finite, stop after `train.max_nonfinite_steps` of them in a
row with one line and no traceback, and never write non-finite weights, the checkpoints already written left
bit-for-bit as they were.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math

import pytest
import torch

from structvl.config import ConfigError, load_config
from structvl.engine.checkpoint import NonFiniteCheckpointError, find_resumable, save_checkpoint
from structvl.engine.pretrain import run_pretraining
from structvl.engine.trainer import NonFiniteTrainingError
from structvl.objectives.pretraining import PretrainingModule
from structvl.runtime.nonfinite import all_finite, pessimistic_rank, top1_hits
from structvl.tasks.finetune_retrieval import rerank_ranks
from structvl.tasks.grounding import group_peak
from structvl.tasks.hard_negative import hard_negative_accuracy
from structvl.tasks.heads import topk_accuracy
from structvl.tasks.knowledge_prediction import average_precision
from structvl.tasks.recognition import multiview_metrics
from structvl.tasks.retrieval import ranks_blockwise, retrieval_metrics
from structvl.tasks.tal_metrics import Segment, detection_map

from helpers import TINY

pytestmark = pytest.mark.usefixtures("one_thread")

BAD = [float("nan"), float("inf"), float("-inf")]


def hashes(root) -> dict[str, str]:
    """sha256 of every file under root (relative path -> hex digest)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------- the ranking primitive
def test_pessimistic_rank_puts_a_nonfinite_target_last_and_nonfinite_others_above():
    nan, inf = float("nan"), float("inf")
    scores = torch.tensor([[1.0, nan, 0.5], [nan, 1.0, 0.5], [1.0, 1.0, 0.0], [inf, 0.0, 0.0], [1.0, 0.0, 0.0]])
    ranks = pessimistic_rank(scores, torch.tensor([0, 0, 0, 0, -1]))
    # a NaN rival ranks above; a NaN target is last; a tie counts against; +inf is garbage too; OOV never first
    assert ranks.tolist() == [2, 3, 2, 3, 3]
    assert top1_hits(torch.tensor([[nan, nan]]), torch.tensor([1])).tolist() == [False]  # argmax would say True


# ----------------------------------------------------------------------------- retrieval
def _gallery():
    video = torch.eye(3)  # video i = e_i
    text_to_video = [0, 0, 1, 2]
    return video, video[text_to_video].clone(), text_to_video


@pytest.mark.parametrize("bad", BAD)
def test_retrieval_nonfinite_video_ranks_last_and_is_counted(bad, caplog):
    video, text, t2v = _gallery()
    assert retrieval_metrics(video, text, t2v)["retrieval/t2v/R@1"] == 100.0  # the finite gallery is perfect
    video[1] = bad
    with caplog.at_level(logging.WARNING, logger="structvl"):
        m = retrieval_metrics(video, text, t2v, block_size=2, v2t_multi_caption="caption_gallery")
    # t2v: caption 2's own video is garbage -> last (3); the others meet garbage above them -> 2
    assert ranks_blockwise(text, video, [[v] for v in t2v], block_size=3).tolist() == [2, 2, 3, 2]
    assert m["retrieval/t2v/R@1"] == 0.0 and m["retrieval/t2v/MdR"] == 2.0 and m["retrieval/t2v/MnR"] == 2.25
    # v2t: video 1's row is all garbage -> last among 4 captions with 1 positive = 4; the others stay first
    assert m["retrieval/v2t/R@1"] == pytest.approx(200 / 3) and m["retrieval/v2t/MnR"] == 2.0
    assert m["retrieval/nonfinite_scores"] == 8.0  # 4 similarities each way
    assert "retrieval: 8 of 24 scores are not finite" in caplog.text


def test_retrieval_all_nan_model_scores_nothing():
    # the reported failure: a NaN model scored R@1 = 100 and MdR = 1
    video, text, t2v = _gallery()
    m = retrieval_metrics(torch.full_like(video, float("nan")), text, t2v)
    assert m["retrieval/t2v/R@1"] == 0.0 and m["retrieval/t2v/MdR"] == 3.0
    assert m["retrieval/v2t/R@1"] == 0.0 and m["retrieval/nonfinite_scores"] == 24.0
    assert "retrieval/nonfinite_scores" not in retrieval_metrics(video, text, t2v)  # absent when all are finite


def test_rerank_keeps_nonfinite_similarities_pessimistic():
    sims = torch.tensor([[0.9, float("nan"), 0.1], [0.2, 0.9, 0.1]])
    calls = []

    def pair_scores(q, top):
        calls.append(q)
        return torch.tensor([float("nan") if i == 1 else 0.5 for i in top.tolist()]) if q == 1 else top.float()

    ranks = rerank_ranks(sims, [[0], [1]], top_k=2, pair_scores=pair_scores)
    # query 0 has a NaN similarity: no re-ranking, the NaN item ranks above its positive; query 1's positive
    # is re-scored NaN by the matching head: last of its top-2
    assert ranks.tolist() == [2, 2] and calls == [1]


# ----------------------------------------------------------------------------- hard negatives
@pytest.mark.parametrize("bad", BAD)
def test_hard_negative_pairs_with_nonfinite_scores_are_lost(bad):
    video, true = torch.eye(2), torch.eye(2)
    negatives = [(0, "shape", 0.5 * torch.eye(2)[0]), (1, "shape", 0.5 * torch.eye(2)[1])]
    assert hard_negative_accuracy(video, true, negatives)["hard_negative/overall"] == 100.0
    video[1] = bad
    m = hard_negative_accuracy(video, true, negatives, static_embed=video.clone())
    assert m["hard_negative/overall"] == 50.0  # clip 1's pair is lost, clip 0's still won
    assert m["hard_negative/static/overall"] == 50.0
    assert m["hard_negative/blind/overall"] == 0.0  # the mean video is garbage: every blind pair is lost
    # own: clip 1's two scores; blind: all four; static: clip 1's two
    assert m["hard_negative/nonfinite_scores"] == 8.0


# ----------------------------------------------------------------------------- recognition, TAL, SKP, grounding
@pytest.mark.parametrize("bad", BAD)
def test_recognition_views_with_a_nonfinite_logit_are_wrong(bad):
    logits = torch.tensor([[[5.0, 0.0, 0.0], [5.0, 0.0, 0.0]], [[0.0, 5.0, 0.0], [0.0, 5.0, 0.0]]])
    labels = torch.tensor([0, 1])
    assert multiview_metrics(logits, labels, "r")["r/top1"] == 100.0
    logits[0, 1, 2] = bad  # one logit of one view of clip 0
    m = multiview_metrics(logits, labels, "r")
    assert m["r/top1"] == 50.0 and m["r/nonfinite_scores"] == 1.0
    assert topk_accuracy(torch.tensor([[float("nan"), 1.0, 2.0]]), torch.tensor([0]), (1, 2, 3)) == {
        1: 0.0, 2: 0.0, 3: 100.0}


def test_detection_with_a_nonfinite_score_is_a_false_positive_ranked_first():
    truth = [Segment("v", 0.0, 10.0, "a")]
    good = Segment("v", 0.0, 10.0, "a", 0.5)
    assert detection_map(truth, [good], [0.5])["localization/mAP@0.5"] == 100.0
    m = detection_map(truth, [Segment("v", 0.0, 10.0, "a", float("nan")), good], [0.5])
    # the garbage one (a perfect match, had it counted) is first and false: precision 1/2 at full recall
    assert m["localization/mAP@0.5"] == 50.0 and m["localization/nonfinite_detections"] == 1.0


def test_skp_average_precision_ranks_a_nonfinite_positive_last_and_a_nonfinite_negative_first():
    nan = float("nan")
    ap, _ = average_precision(torch.tensor([[nan], [0.9], [0.1]]), torch.tensor([[1.0], [0.0], [0.0]]))
    assert ap == [pytest.approx(1 / 3)]  # argsort put NaN first: AP 1.0
    ap, _ = average_precision(torch.tensor([[0.9], [nan]]), torch.tensor([[1.0], [0.0]]))
    assert ap == [0.5]
    ap, _ = average_precision(torch.tensor([[0.9], [0.1]]), torch.tensor([[1.0], [0.0]]))
    assert ap == [1.0]


def test_grounding_peak_of_nonfinite_attention_is_a_miss():
    probs = torch.tensor([[[0.1, 0.9]], [[float("nan"), 0.5]]])  # (groups, steps, patches)
    assignment = torch.tensor([[0, 1]])
    assert group_peak(assignment, probs, 0, 0) == 0  # group 0 owns patch 0 only
    assert group_peak(assignment, probs, 1, 0) is None
    assert group_peak(assignment, probs, None, 0) is None


# ----------------------------------------------------------------------------- a NaN model, end to end
@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from structvl.lab.synth import generate_corpus

    root = tmp_path_factory.mktemp("nfcorpus")
    generate_corpus(root, num_clips=40, num_untrimmed=8, size=32, num_frames=8, seed=3, workers=1, progress=False)
    return root


def nan_video_model(cfg):
    """A tiny model whose patch embedding is NaN: every video feature, token and embedding is NaN."""
    from structvl.models.video_text import build_model

    torch.manual_seed(0)
    model = build_model(cfg.model)
    with torch.no_grad():
        next(p for n, p in model.video_encoder.named_parameters() if "patch" in n).fill_(float("nan"))
    return model


def test_a_nan_model_scores_the_worst_on_every_metric(corpus, caplog):
    from structvl.data.text import Tokenizer
    from structvl.tasks.downstream import run_suite
    from structvl.tasks.evaluate import evaluate_model
    from structvl.tasks.grounding import evaluate_grounding, evaluate_scene_change
    from structvl.tasks.task_config import load_task_config

    cfg = load_config("demo", TINY + [f"data.root={corpus}", "train.precision=fp32"])
    model = nan_video_model(cfg)
    tokenizer = Tokenizer(max_length=cfg.model.text.max_length)
    with caplog.at_level(logging.WARNING, logger="structvl"):
        m = evaluate_model(model, cfg, tokenizer)
        m.update(run_suite(model, cfg, load_task_config("finetune/structured_demo", [
            "openqa.epochs=2", "openqa.hidden=16", "mcqa.hidden=16", "localization.epochs=2", "localization.hidden=8",
            "recognition.linear_epochs=2", "batch_size=16"]), corpus))
        m.update(evaluate_grounding(model, cfg, tokenizer, data_root=corpus))
        m.update(evaluate_scene_change(model, cfg, tokenizer, data_root=corpus))
    worst = {"retrieval/t2v/R@1": 0.0, "retrieval/v2t/R@1": 0.0, "retrieval/t2v/MdR": m["retrieval/num_videos"],
             "hard_negative/overall": 0.0, "hard_negative/blind/overall": 0.0, "mcqa/accuracy": 0.0,
             "openqa/accuracy": 0.0, "recognition/linear/top1": 0.0, "localization/mAP_avg": 0.0,
             "localization/snippet_accuracy": 0.0, "grounding/pointing_best_patch": 0.0,
             "temporal/scene_change_acc": 0.0}
    assert {k: m[k] for k in worst} == worst
    for prefix in ("retrieval", "hard_negative", "mcqa", "openqa", "recognition/linear", "localization", "grounding",
                   "temporal"):
        assert m[f"{prefix}/nonfinite_scores"] > 0, prefix
        assert f"{prefix}: " in caplog.text and "scores are not finite" in caplog.text
    assert math.isfinite(m["openqa/text_only_accuracy"])  # the video-blind head never sees the NaN features
    from structvl.tasks.evaluate import format_metrics_table
    table = format_metrics_table(m)  # what `structvl eval` / `pretrain` print says so too
    assert "NON-FINITE scores (NaN/inf), each scored as the worst possible: " in table
    assert f"retrieval {int(m['retrieval/nonfinite_scores'])}" in table and "  nonfinite_scores" not in table
    assert m["temporal/scene_change_pixels"] > 50  # pixels are no model score: unaffected


def test_masked_word_accuracy_counts_a_nonfinite_logit_as_a_miss(corpus):
    from structvl.data.text import Tokenizer
    from structvl.tasks.masked_words import evaluate_masked_words

    nan = float("nan")
    # argmax takes a NaN for the maximum: the old `argmax == label` scored the second row a hit
    assert top1_hits(torch.tensor([[0.0, 9.0, 1.0], [nan, 0.0, 1.0]]), torch.tensor([1, 0])).tolist() == [True, False]
    cfg = load_config("clover", TINY + ["model.fusion.layers=1", f"data.root={corpus}", "train.precision=fp32",
                                        "clover.eval_max_captions=8"])
    m = evaluate_masked_words(nan_video_model(cfg), cfg, Tokenizer(max_length=cfg.model.text.max_length))
    assert m["clover_mlm/accuracy"] == 0.0 and m["clover_mlm/nonfinite_scores"] > 0


# ----------------------------------------------------------------------------- training
def train_cfg(root, *extra):
    return load_config("demo", TINY + [f"data.root={root}", "train.precision=fp32", "train.keep_checkpoints=10",
                                       *extra])


def inject_loss(monkeypatch, bad_calls: set[int], value: float):
    """PretrainingModule's loss becomes `value` on the listed forward calls (1-based), else unchanged."""
    original, calls = PretrainingModule.forward, [0]

    def forward(self, batch):
        calls[0] += 1
        loss, logs = original(self, batch)
        if calls[0] in bad_calls:
            loss = loss * 0 + value
            logs = {**logs, "loss": float(loss.detach())}
        return loss, logs

    monkeypatch.setattr(PretrainingModule, "forward", forward)
    return calls


def inject_grad(monkeypatch, bad_calls: set[int], value: float):
    """A finite loss whose gradient is `value` on the listed forward calls (a hook on the loss's gradient)."""
    original, calls = PretrainingModule.forward, [0]

    def forward(self, batch):
        calls[0] += 1
        loss, logs = original(self, batch)
        if calls[0] in bad_calls:
            loss.register_hook(lambda g: torch.full_like(g, value))
        return loss, logs

    monkeypatch.setattr(PretrainingModule, "forward", forward)
    return calls


def steps_logged(run):
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["kind"] == "train"], [r for r in rows if r["kind"] == "nonfinite"]


@pytest.mark.parametrize("fault, value, clip", [("loss", float("nan"), 1.0), ("loss", float("inf"), 0.0),
                                                ("grad", float("nan"), 1.0), ("grad", float("inf"), 0.0),
                                                ("grad", float("-inf"), 1.0)])
def test_a_nonfinite_step_is_skipped_counted_and_the_run_finishes(tiny_corpus, tmp_path, monkeypatch, fault, value,
                                                                  clip):
    inject = inject_loss if fault == "loss" else inject_grad
    inject(monkeypatch, {3, 4}, value)  # two bad steps in a row, under the limit of 3
    run = tmp_path / "run"
    metrics = run_pretraining(train_cfg(tiny_corpus, "train.max_steps=5", "train.checkpoint_every=0",
                                        "train.max_nonfinite_steps=3", f"optim.grad_clip={clip}"), run).metrics
    train, skipped = steps_logged(run)
    assert [r["step"] for r in train] == [1, 2, 3, 4, 5]  # 5 real steps from 7 forward passes
    assert [r["nonfinite_skipped"] for r in skipped] == [1, 2] and [r["step"] for r in skipped] == [2, 2]
    assert metrics["train/nonfinite_skipped"] == 2 and all(math.isfinite(r["loss"]) for r in train)
    _, module_state, state = find_resumable(run)
    assert all_finite(module_state.values()) and state["step"] == 5 and state["nonfinite_skipped"] == 2


def test_a_skipped_step_changes_no_weight_no_optimizer_state_and_no_learning_rate(tiny_corpus, tmp_path,
                                                                                 monkeypatch):
    clean = tmp_path / "clean"
    run_pretraining(train_cfg(tiny_corpus, "train.max_steps=3", "train.checkpoint_every=0"), clean)
    original_forward, original_step = PretrainingModule.forward, torch.optim.AdamW.step
    weights, optimizer_steps = [], [0]

    def forward(self, batch):
        weights.append({k: v.clone() for k, v in self.state_dict().items()})
        loss, logs = original_forward(self, batch)
        if len(weights) == 2:  # the second pass: NaN loss
            loss = loss * float("nan")
            logs = {**logs, "loss": float(loss.detach())}
        return loss, logs

    def step(self, *args, **kwargs):
        optimizer_steps[0] += 1
        return original_step(self, *args, **kwargs)

    monkeypatch.setattr(PretrainingModule, "forward", forward)
    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    bad = tmp_path / "bad"
    run_pretraining(train_cfg(tiny_corpus, "train.max_steps=3", "train.checkpoint_every=0"), bad)
    assert len(weights) == 4 and optimizer_steps[0] == 3  # 4 passes, 3 optimizer steps
    assert all(torch.equal(weights[1][k], weights[2][k]) for k in weights[1])  # the NaN pass moved nothing
    assert not all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])  # a real step does
    # the learning-rate schedule did not advance either: step k has the clean run's lr of step k
    assert [r["lr"] for r in steps_logged(bad)[0]] == [r["lr"] for r in steps_logged(clean)[0]]


def test_consecutive_nonfinite_steps_stop_the_run_and_keep_the_last_checkpoint(tiny_corpus, tmp_path, monkeypatch,
                                                                               capsys):
    from structvl.cli import main

    run = tmp_path / "run"
    args = ["pretrain", "--config", "demo", "--out", str(run), *TINY, f"data.root={tiny_corpus}",
            "train.precision=fp32", "train.checkpoint_every=2", "train.max_nonfinite_steps=3", "train.keep_checkpoints=5"]
    with pytest.raises(SystemExit) as done:
        main(args + ["--max-steps", "4"])
    assert done.value.code == 0
    before = hashes(run / "checkpoints")
    inject_loss(monkeypatch, {3, 4, 5, 6}, float("nan"))  # after resuming at 4: steps 5, 6 fine, then 3 NaN
    capsys.readouterr()
    with pytest.raises(SystemExit) as stopped:
        main(args + ["--max-steps", "10", "--resume"])
    err = capsys.readouterr().err
    assert stopped.value.code == 1 and "Traceback" not in err
    line = [x for x in err.splitlines() if x.startswith("structvl pretrain: stopped:")]
    assert len(line) == 1 and "3 steps in a row" in line[0] and "train.max_nonfinite_steps=3" in line[0]
    assert "step_00000006" in line[0]  # the last good checkpoint, written before the faults
    now = hashes(run / "checkpoints")
    assert {k: now[k] for k in before if k != "latest"} == {k: v for k, v in before.items() if k != "latest"}
    assert (run / "checkpoints" / "latest").read_text() == "step_00000006"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "latest", "step_00000002", "step_00000004", "step_00000006"]


def test_an_optimizer_step_that_makes_weights_nonfinite_stops_before_any_save(tiny_corpus, tmp_path, monkeypatch):
    run = tmp_path / "run"
    cfg = train_cfg(tiny_corpus, "train.max_steps=4", "train.checkpoint_every=2")
    run_pretraining(cfg, run)
    before = hashes(run / "checkpoints")
    original = torch.optim.AdamW.step

    def step(self, *args, **kwargs):  # e.g. lr=1e30: finite gradients, weights beyond float range
        out = original(self, *args, **kwargs)
        self.param_groups[0]["params"][0].data.fill_(float("inf"))
        return out

    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    with pytest.raises(NonFiniteTrainingError, match="non-finite; stopped without saving"):
        run_pretraining(train_cfg(tiny_corpus, "train.max_steps=6", "train.checkpoint_every=1"), run, resume=True)
    assert hashes(run / "checkpoints") == before  # no step_00000005, nothing rewritten


@pytest.mark.parametrize("where", ["model", "objectives", "optimizer"])
def test_save_refuses_nonfinite_state_and_writes_nothing(tmp_path, where):
    good = {"model.w": torch.ones(3), "head.b": torch.zeros(2)}
    save_checkpoint(tmp_path, 1, good, {"step": 1, "optimizer": {"state": {0: {"exp_avg": torch.ones(3)}}}})
    before = hashes(tmp_path)
    module = dict(good)
    optimizer = {"state": {0: {"exp_avg": torch.ones(3)}}}
    if where == "model":
        module["model.w"] = torch.tensor([1.0, float("nan"), 1.0])
    elif where == "objectives":
        module["head.b"] = torch.tensor([float("inf"), 0.0])
    else:
        optimizer["state"][0]["exp_avg"] = torch.tensor([float("-inf"), 0.0, 0.0])
    with pytest.raises(NonFiniteCheckpointError, match="refusing to save step 2.*step_00000001"):
        save_checkpoint(tmp_path, 2, module, {"step": 2, "optimizer": optimizer})
    assert hashes(tmp_path) == before and not any(p.name.startswith(".") for p in (tmp_path / "checkpoints").iterdir())


def test_max_nonfinite_steps_must_be_positive():
    with pytest.raises(ConfigError, match=r"train.max_nonfinite_steps.*0.*\[1, "):
        load_config("demo", ["train.max_nonfinite_steps=0"])
