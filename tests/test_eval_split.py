"""`eval.split=val` evaluates on the structured corpus's val split everywhere the suite reads test: retrieval, hard
negatives, each paper's own measures and the downstream protocol files; no test clip is opened."""

from __future__ import annotations

import os

import pytest
import torch

from structvl.config import ConfigError, load_config
from structvl.data import dataset as dataset_module
from structvl.data.formats import read_annotations
from structvl.engine.pretrain import build_objective_context, seed_everything
from structvl.models.text_encoder import build_tokenizer
from structvl.models.video_text import build_model
from structvl.objectives.pretraining import PretrainingModule
from structvl.tasks import features as features_module
from structvl.tasks.downstream import run_task
from structvl.tasks.eval_data import eval_annotations, hard_negatives_file
from structvl.tasks.evaluate import evaluate_model, hold_eval_clips, objective_measures
from structvl.tasks.task_config import TASKS, load_task_config, on_split

from helpers import TINY


def split_videos(root, split: str) -> set[str]:
    return {os.path.realpath(root / r.video) for r in read_annotations("jsonl", root / f"{split}.jsonl")}


@pytest.fixture
def opened(monkeypatch):
    """Real paths of every video file the evaluation opens (eval loaders and the downstream feature cache)."""
    paths: list[str] = []
    for module in (dataset_module, features_module):
        original = module.open_video
        monkeypatch.setattr(module, "open_video",
                            lambda path, *a, _open=original, **k: (paths.append(os.path.realpath(path)),
                                                                    _open(path, *a, **k))[1])
    return paths


@pytest.mark.parametrize("split", ["val", "test"])
def test_a_run_evaluated_on_a_split_opens_only_that_splits_clips(split, tiny_corpus, one_thread, opened,
                                                                 tmp_path):
    cfg = load_config("all", TINY + [f"data.root={tiny_corpus}", f"eval.split={split}"])
    tokenizer = build_tokenizer(cfg.model.text)
    context = build_objective_context(cfg, tokenizer, tmp_path, is_main=True)
    seed_everything(0)
    module = PretrainingModule(build_model(cfg.model), cfg, context)
    device = torch.device("cpu")
    clips = hold_eval_clips(module.model, cfg, tokenizer, device)
    metrics = evaluate_model(module.model, cfg, tokenizer, device, clips=clips)
    metrics.update(objective_measures(module, module.model, cfg, tokenizer, device, clips))
    metrics.update(evaluate_model(module.model, cfg, tokenizer, device, clips=None))  # each measure's own loader

    wanted = split_videos(tiny_corpus, split)
    assert opened and set(opened) <= wanted, set(opened) - wanted
    assert metrics["retrieval/num_videos"] == len(wanted)
    for key in ("hard_negative/overall", "clop/skp_mAP", "grounding/pointing", "clover_mlm/accuracy"):
        assert key in metrics, key


def test_val_selects_val_files_and_an_annotation_path_still_works():
    val = load_config("demo", ["eval.split=val"])
    assert (eval_annotations(val), hard_negatives_file(val)) == ("eval/retrieval_val.jsonl",
                                                                 "eval/hard_negatives_val.jsonl")
    test = load_config("demo", [])
    assert (eval_annotations(test), hard_negatives_file(test)) == ("eval/retrieval_test.jsonl",
                                                                   "eval/hard_negatives.jsonl")
    saved = load_config("demo", ["eval.split=eval/retrieval_test.jsonl", "eval.hard_negatives=eval/hn.jsonl"])
    assert (eval_annotations(saved), hard_negatives_file(saved)) == ("eval/retrieval_test.jsonl", "eval/hn.jsonl")
    assert hard_negatives_file(load_config("demo", ["eval.split=val", "eval.hard_negatives=null"])) is None


def test_every_structured_protocol_task_has_val_files_of_val_clips(tiny_corpus):
    protocol = load_task_config("finetune/structured")
    val_ids = {r.video_id for r in read_annotations("jsonl", tiny_corpus / "val.jsonl")}
    for name in TASKS:
        task = on_split(getattr(protocol, name), "val")
        assert task.data.test == getattr(protocol, name).data.val and task.data.test
        assert (tiny_corpus / task.data.test).exists(), (name, task.data.test)
        assert getattr(protocol, name).data.test != task.data.test or name == "localization"
    localization = on_split(protocol.localization, "val")
    assert localization.data.test_options == {"subset": "validation"}
    assert protocol.localization.data.test_options == {"subset": "testing"}  # the section itself is untouched
    actions = read_annotations("jsonl", tiny_corpus / on_split(protocol.recognition, "val").data.test)
    assert actions and {r.video_id for r in actions} <= val_ids


def test_downstream_task_on_val_reads_only_val_clips(tiny_corpus, one_thread, opened):
    cfg = load_config("demo", TINY + [f"data.root={tiny_corpus}", "eval.split=val"])
    model = build_model(cfg.model)
    metrics = run_task("mcqa", model, cfg, load_task_config("finetune/structured"), tiny_corpus)
    wanted = split_videos(tiny_corpus, "val")
    assert metrics["mcqa/zeroshot_accuracy"] >= 0 and opened and set(opened) <= wanted


def test_a_protocol_without_val_files_is_refused_on_val():
    protocol = load_task_config("finetune/msrvtt")
    with pytest.raises(ConfigError, match="no 'val' annotation file"):
        on_split(protocol.mcqa, "val")
    assert on_split(protocol.mcqa, "test").data.test == protocol.mcqa.data.test
