"""Saved run configs of older code: removed keys (issue 32: clover.fused_pool)."""

import pytest
import yaml

from structvl.config import ConfigError, load_config


def _old_run_config(tmp_path, fused_pool):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"bases": [], "clover": {"fused_pool": fused_pool}}), encoding="utf-8")
    return path


def test_old_run_config_with_the_remaining_wiring_still_loads(tmp_path):
    cfg = load_config(_old_run_config(tmp_path, "spec"), check_init=False)
    assert not hasattr(cfg.clover, "fused_pool")


def test_the_removed_wiring_is_a_one_line_error(tmp_path):
    with pytest.raises(ConfigError, match=r"config.yaml: config key 'clover.fused_pool' was removed"):
        load_config(_old_run_config(tmp_path, "code"), check_init=False)
    with pytest.raises(ConfigError, match="unknown config key 'clover.fused_pool'"):
        load_config(None, ["clover.fused_pool=spec"])
