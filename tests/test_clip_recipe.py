"""configs/model/clip_vit_b16.yaml end to end on CPU (2 steps from a tiny random-weight open_clip file, the
widths overridden), and the one-line errors for init checkpoints that are wrong before any work starts."""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import load_file

from structvl.cli import main
from structvl.config import ConfigError, load_config

from helpers import EMBED, open_clip_model

TINY_CLIP = [
    "model.video.image_size=32", "model.video.patch_size=8", "model.video.num_frames=4", "model.video.width=64",
    "model.video.depth=2", "model.video.heads=2", "model.video.drop_path=0", f"model.embed_dim={EMBED}",
    "model.text.init.path=scratch", "model.text.width=32", "model.text.depth=1", "model.text.heads=2",
    "model.text.intermediate_size=64", "model.activation_checkpointing=false", "data.num_frames=4",
    "eval.num_frames=4", "data.num_workers=0", "data.synth=false", "train.batch_size=4", "train.max_steps=2",
    "train.precision=fp32", "train.checkpoint_every=0", "optim.warmup_steps=1", "eval.batch_size=16",
]


@pytest.fixture(scope="module")
def tiny_corpus(tmp_path_factory):
    from structvl.lab.synth import generate_corpus

    root = tmp_path_factory.mktemp("corpus")
    generate_corpus(root, num_clips=24, num_untrimmed=0, size=32, num_frames=8, seed=3, workers=1, progress=False)
    return root


def test_clip_recipe_pretrains_two_steps_from_an_open_clip_file(open_clip_lib, tiny_corpus, tmp_path, capsys):
    source = open_clip_model(open_clip_lib)
    torch.save(source.state_dict(), tmp_path / "open_clip.pt")
    out = tmp_path / "run"
    # temperature 0.01 is a logit scale of 100, the clamp (model.min_temperature 0.01, CLIP's): the optimizer steps
    # push it up and the clamp after each brings it back to ln 100 at most
    with pytest.raises(SystemExit) as done:
        main(["pretrain", "--config", "model/clip_vit_b16.yaml", "--out", str(out), *TINY_CLIP,
              f"model.video.init.path={tmp_path / 'open_clip.pt'}", f"data.root={tiny_corpus}",
              "model.temperature=0.01"])
    assert done.value.code == 0
    saved = load_file(str(out / "checkpoints" / "step_00000002" / "model.safetensors"))
    assert float(saved["log_inv_temperature"]) <= math.log(100) + 1e-6
    # the run started from the CLIP tower: two small steps leave it close to the file's weights
    reference = source.state_dict()["visual.transformer.resblocks.1.mlp.c_fc.weight"]
    moved = (saved["video_encoder.blocks.1.mlp.fc1.weight"] - reference).abs().max()
    assert 0 < float(moved) < 0.01
    cfg = load_config(out / "config.yaml", check_init=False)
    assert (cfg.model.video.init.format, cfg.model.video.act, cfg.model.video.pre_norm) == ("open_clip", "quick_gelu", True)


@pytest.mark.parametrize("override, message", [
    ("model.video.init.format=open_clip model.video.init.path=/no/such/clip.pt", "config key 'model.video.init.path': no such file"),
    ("model.video.init.format=timm", "config key 'model.video.init.path': required with model.video.init.format=timm"),
    ("model.video.init_checkpoint=/x.pt", "config key 'model.video.init_checkpoint' was replaced"),
    ("model.text.init.path=/no/bert", "config key 'model.text.init.path'"),
    ("model.video.init.format=hf", "config key 'model.video.init.format': 'hf' is not allowed; expected one of"),
])
def test_wrong_init_is_one_line_exit_2_before_any_work(override, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as done:
        main(["pretrain", "--config", "demo", "--out", str(tmp_path / "run"), *override.split()])
    err = capsys.readouterr().err
    assert done.value.code == 2 and message in err and err.count("\n") == 1
    assert not (tmp_path / "run").exists()  # nothing was started


def test_old_video_key_in_a_file_is_an_error_and_old_text_keys_migrate(tmp_path):
    (tmp_path / "old.yaml").write_text("model:\n  video:\n    init_checkpoint: /weights/vit.pth\n")
    with pytest.raises(ConfigError, match=r"'model.video.init_checkpoint' was replaced by 'model.video.init'"):
        load_config(tmp_path / "old.yaml")
    # a saved run config of an older version still loads, its values moved to the new keys
    (tmp_path / "run.yaml").write_text("model:\n  video:\n    init_checkpoint: null\n  text:\n    init: scratch\n"
                                       "    pooling: cls\n  fusion:\n    init_from_text: false\n")
    cfg = load_config(tmp_path / "run.yaml")
    assert (cfg.model.text.init.path, cfg.model.text.init.pooling, cfg.model.fusion.init_from_text_layers) == (
        "scratch", "cls", "none")


def test_frame_normalization_follows_the_source(tmp_path):
    from structvl.config import frame_normalization
    from structvl.data.transforms import CLIP_MEAN, IMAGENET_MEAN

    (tmp_path / "w.pt").write_bytes(b"")
    clip = load_config("model/clip_vit_b16", [f"model.video.init.path={tmp_path / 'w.pt'}"])
    assert frame_normalization(clip.model.video)["mean"] == CLIP_MEAN
    assert frame_normalization(load_config("demo").model.video)["mean"] == IMAGENET_MEAN
    timm = load_config("demo", ["model.video.init.format=timm", f"model.video.init.path={tmp_path / 'w.pt'}"])
    assert frame_normalization(timm.model.video)["mean"] == IMAGENET_MEAN
    forced = load_config("demo", ["model.video.normalize=clip"])
    assert frame_normalization(forced.model.video)["mean"] == CLIP_MEAN
