
import pytest

from structvl.config import CONFIG_DIR as CONFIGS
from structvl.config import ConfigError, load_config


def test_demo_config_merges_model_base_and_overrides():
    cfg = load_config(CONFIGS / "demo.yaml", ["optim.lr=3e-4", "objectives.contrastive=2.0"])
    assert cfg.model.video.tubelet_size == 2  # from bases: [model/tiny.yaml]
    assert cfg.optim.lr == pytest.approx(3e-4)
    assert cfg.objectives["contrastive"] == 2.0


def test_unknown_key_in_file_is_named(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim:\n  lrr: 0.1\n")
    with pytest.raises(ConfigError, match=r"bad.yaml.*optim.lrr"):
        load_config(bad)


def test_unknown_override_and_wrong_type_are_named():
    with pytest.raises(ConfigError, match="train.nonexistent"):
        load_config(CONFIGS / "demo.yaml", ["train.nonexistent=1"])
    with pytest.raises(ConfigError, match="train.batch_size"):
        load_config(CONFIGS / "demo.yaml", ["train.batch_size=many"])


def test_choices_shapes_and_objectives_are_checked():
    with pytest.raises(ConfigError, match="model.video.attention"):
        load_config(None, ["model.video.attention=sideways"])
    with pytest.raises(ConfigError, match="patch_size"):
        load_config(None, ["model.video.patch_size=7"])
    with pytest.raises(ConfigError, match="objectives.telepathy"):
        load_config(None, ["objectives.telepathy=1.0"])
    with pytest.raises(ConfigError, match="nothing to train"):
        load_config(None, ["objectives.contrastive=0"])


def test_bases_cycle_is_an_error(tmp_path):
    (tmp_path / "a.yaml").write_text("bases: [b.yaml]\n")
    (tmp_path / "b.yaml").write_text("bases: [a.yaml]\n")
    with pytest.raises(ConfigError, match="circular"):
        load_config(tmp_path / "a.yaml")
