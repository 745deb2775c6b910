"""train.precision: "auto" resolves by what the hardware computes natively and fast, an explicit choice is kept,
and the evaluation loops follow the run's choice instead of a precision of their own (runtime/precision.py)."""

from __future__ import annotations

import logging

import pytest
import torch

from structvl.runtime import precision
from structvl.runtime.precision import autocast_dtype, native_bf16, resolved_name


@pytest.fixture(autouse=True)
def fresh_attention_path():
    """attention_path is cached a process; these tests fake the CPU, so none of their answers outlives them."""
    precision.attention_path.cache_clear()
    yield
    precision.attention_path.cache_clear()


def _cpu_has_bf16(monkeypatch, supported: bool, speedup: float | None = None) -> None:
    """A CPU without AMX, with or without AVX512-BF16, whose bf16 matmuls measure `speedup` times fp32's
    (None: the measurement must not be taken)."""
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: supported)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)

    def measured():
        assert speedup is not None, "auto measured bf16 on a CPU that does not compute it natively"
        return speedup
    monkeypatch.setattr(precision, "cpu_bf16_speedup", measured)


@pytest.mark.parametrize("supported,speedup", [(True, 0.54), (True, 1.4), (False, None)])
def test_auto_keeps_fp32_on_a_cpu_without_amx_where_bf16_is_not_faster(monkeypatch, supported, speedup):
    """AVX512-BF16 alone is native bf16 (no emulation warning); where its matmuls measure slower than fp32 or
    under CPU_BF16_MIN_SPEEDUP times faster (a Xeon: 0.54x), auto keeps fp32; an emulating CPU is not measured."""
    _cpu_has_bf16(monkeypatch, supported, speedup)
    assert native_bf16("cpu") is supported
    assert autocast_dtype("auto", "cpu") is None
    assert resolved_name("auto", "cpu") == "fp32"
    assert autocast_dtype("fp32", "cpu") is None
    assert autocast_dtype("bf16", torch.device("cpu")) == torch.bfloat16  # an explicit choice is kept


def test_auto_takes_bf16_on_a_cpu_whose_bf16_matmuls_measure_faster(monkeypatch):
    _cpu_has_bf16(monkeypatch, True, speedup=2.3)  # an AMD EPYC with AVX512-BF16, no AMX
    assert autocast_dtype("auto", "cpu") == torch.bfloat16
    assert resolved_name("auto", "cpu") == "bf16"


def test_auto_takes_bf16_on_a_cpu_with_amx(monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    monkeypatch.setattr(precision, "cpu_bf16_speedup", lambda: pytest.fail("AMX is taken without measuring"))
    assert autocast_dtype("auto", "cpu") == torch.bfloat16


def test_the_bf16_measurement_is_a_ratio_and_leaves_the_run_s_random_stream_alone(one_thread):
    """The probe draws its matrices from a generator of its own: when auto first resolves must not change what
    the run's seed gives afterwards. Its answer is a positive time ratio, measured once a process."""
    precision.cpu_bf16_speedup.cache_clear()
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    ratio = precision.cpu_bf16_speedup(n=64, rounds=2)
    assert torch.equal(torch.rand(3), expected)
    assert 0.0 < ratio < float("inf")
    assert precision.cpu_bf16_speedup(n=64, rounds=2) == ratio  # cached: the run keeps one answer
    precision.cpu_bf16_speedup.cache_clear()


def test_the_bf16_measurement_runs_outside_autocast(monkeypatch, one_thread):
    """A first call from inside a bf16 step (train.precision=bf16 resolves no `auto`) must still time fp32
    against bf16, not bf16 twice."""
    precision.cpu_bf16_speedup.cache_clear()
    seen = []
    mm = torch.mm
    monkeypatch.setattr(torch, "mm", lambda *a: seen.append(torch.is_autocast_enabled("cpu")) or mm(*a))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        precision.cpu_bf16_speedup(n=32, rounds=1)
    precision.cpu_bf16_speedup.cache_clear()
    assert seen and not any(seen)


def test_explicit_bf16_decides_the_attention_path_before_any_step(monkeypatch):
    """autocast_dtype("bf16") measures the CPU then, so the video tower's first attention finds its path decided."""
    _cpu_has_bf16(monkeypatch, True, speedup=2.3)
    assert autocast_dtype("bf16", "cpu") == torch.bfloat16
    monkeypatch.setattr(precision, "cpu_bf16_speedup", lambda: pytest.fail("measured again inside a step"))
    assert precision.attention_path("cpu", torch.bfloat16) == "matmul"


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
