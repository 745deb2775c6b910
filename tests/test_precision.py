"""train.precision: "auto" resolves by what the hardware computes natively, an explicit choice is kept, and the
evaluation loops follow the run's choice instead of a precision of their own (engine/precision.py)."""

from __future__ import annotations

import logging

import pytest
import torch

from structvl.runtime import precision
from structvl.runtime.precision import autocast_dtype, native_bf16, resolved_name


def _cpu_has_bf16(monkeypatch, supported: bool) -> None:
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: supported)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)


@pytest.mark.parametrize("supported", [True, False])
def test_auto_keeps_fp32_on_a_cpu_without_amx(monkeypatch, supported):
    """AVX512-BF16 alone is native bf16 (no emulation warning) but slower than fp32: auto keeps fp32."""
    _cpu_has_bf16(monkeypatch, supported)
    assert native_bf16("cpu") is supported
    assert autocast_dtype("auto", "cpu") is None
    assert resolved_name("auto", "cpu") == "fp32"
    assert autocast_dtype("fp32", "cpu") is None
    assert autocast_dtype("bf16", torch.device("cpu")) == torch.bfloat16  # an explicit choice is kept


def test_auto_takes_bf16_on_a_cpu_with_amx(monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    assert autocast_dtype("auto", "cpu") == torch.bfloat16


def test_explicit_bf16_on_an_emulating_cpu_warns_once(monkeypatch, caplog):
    _cpu_has_bf16(monkeypatch, False)
    precision._warn_emulated.cache_clear()
    with caplog.at_level(logging.WARNING, logger=precision.__name__):
        autocast_dtype("bf16", "cpu")
        autocast_dtype("bf16", "cpu")
    warnings = [r for r in caplog.records if "without native bf16" in r.getMessage()]
    assert len(warnings) == 1 and "train.precision=auto" in warnings[0].getMessage()


def test_unknown_precision_names_the_config_key():
    with pytest.raises(ValueError, match="train.precision"):
        autocast_dtype("fp8", "cpu")
