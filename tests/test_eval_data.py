"""tasks/eval_data.py: `EvalClips` decodes and encodes the test split once per model, and every zero-shot measure
that reads it (retrieval, hard negatives and their static control, SKP mAP, grounding, scene change, masked
words) gives the same metrics as with its own loader."""

from __future__ import annotations

import pytest
import torch

from structvl.config import load_config
from structvl.data.dataset import VideoTextDataset
from structvl.engine.pretrain import build_objective_context, seed_everything
from structvl.models.text_encoder import build_tokenizer
from structvl.models.video_text import build_model
from structvl.objectives.pretraining import PretrainingModule
from structvl.tasks import eval_data
from structvl.tasks.eval_data import EvalClips
from structvl.tasks.evaluate import evaluate_model, hold_eval_clips, objective_measures
from structvl.tasks.grounding import evaluate_grounding, evaluate_scene_change

from helpers import TINY


@pytest.fixture(scope="module")
def trained_parts(tiny_corpus, tmp_path_factory):
    """A model of the combined recipe (groups, fusion, SKP heads) and its objectives, randomly initialised."""
    cfg = load_config("all", TINY + [f"data.root={tiny_corpus}"])
    tokenizer = build_tokenizer(cfg.model.text)
    context = build_objective_context(cfg, tokenizer, tmp_path_factory.mktemp("run"), is_main=True)
    seed_everything(0)
    module = PretrainingModule(build_model(cfg.model), cfg, context)
    return cfg, tokenizer, module


def _all_measures(cfg, tokenizer, module, clips):
    device = torch.device("cpu")
    metrics = evaluate_model(module.model, cfg, tokenizer, device, clips=clips)
    metrics.update(objective_measures(module, module.model, cfg, tokenizer, device, clips))
    return metrics


def test_measures_on_stored_clips_equal_their_own_loaders(trained_parts, one_thread, monkeypatch):
    cfg, tokenizer, module = trained_parts
    decoded = []
    getitem = VideoTextDataset.__getitem__
    monkeypatch.setattr(VideoTextDataset, "__getitem__", lambda self, i: (decoded.append(i), getitem(self, i))[1])

    fused_video = []  # what the masked-words measure feeds the fusion encoder (an untrained model's MLM accuracy
    fuse = module.model.fuse  # would not notice another clip's states)
    monkeypatch.setattr(module.model, "fuse", lambda video, text, **read: (fused_video.append(video.tokens),
                                                                           fuse(video, text, **read))[1])

    clips = hold_eval_clips(module.model, cfg, tokenizer, torch.device("cpu"))
    stored = _all_measures(cfg, tokenizer, module, clips)
    decoded_stored, fused_stored = len(decoded), list(fused_video)
    monkeypatch.setattr(EvalClips, "MAX_BYTES", 0)  # too large to hold: every measure runs its own loader
    decoded.clear()
    fused_video.clear()
    streamed = _all_measures(cfg, tokenizer, module, None)

    for key in ("retrieval/t2v/R@1", "hard_negative/overall", "hard_negative/static/overall", "clop/skp_mAP",
                "grounding/pointing", "temporal/scene_change_acc", "clover_mlm/accuracy"):
        assert key in stored, key
    assert set(stored) == set(streamed)
    for key, value in streamed.items():
        assert stored[key] == pytest.approx(value, rel=1e-5, abs=1e-5, nan_ok=True), key
    assert len(fused_stored) == len(fused_video) > 0
    for a, b in zip(fused_stored, fused_video):
        assert torch.allclose(a, b, atol=1e-5)
    n = len(eval_data.test_records(cfg))
    assert decoded_stored == n  # each test clip decoded once for all the measures
    assert len(decoded) >= 6 * n  # retrieval, hard negatives (x2), SKP, grounding, scene change, masked words


def test_demo_measures_share_the_clips_and_keep_their_numbers(trained_parts, one_thread, monkeypatch):
    """The demo's extra grounding and scene-change evaluation (for recipes that did not train them) on one set
    of stored clips, against their own loaders."""
    cfg, tokenizer, module = trained_parts
    device = torch.device("cpu")
    clips = EvalClips(module.model, cfg, tokenizer, device)
    stored = {**evaluate_grounding(module.model, cfg, tokenizer, device, clips=clips),
              **evaluate_scene_change(module.model, cfg, tokenizer, device, clips=clips)}
    streamed = {**evaluate_grounding(module.model, cfg, tokenizer, device),
                **evaluate_scene_change(module.model, cfg, tokenizer, device)}
    assert stored == pytest.approx(streamed, rel=1e-5, abs=1e-5, nan_ok=True)


def test_a_split_too_large_to_hold_is_streamed(trained_parts, monkeypatch):
    cfg, tokenizer, module = trained_parts
    n = len(eval_data.test_records(cfg))
    assert EvalClips.estimated_bytes(cfg, n) == n * cfg.eval.num_frames * 3 * cfg.model.video.image_size ** 2 * 4
    assert hold_eval_clips(module.model, cfg, tokenizer, torch.device("cpu")) is not None
    monkeypatch.setattr(EvalClips, "MAX_BYTES", EvalClips.estimated_bytes(cfg, n) - 1)
    assert hold_eval_clips(module.model, cfg, tokenizer, torch.device("cpu")) is None
