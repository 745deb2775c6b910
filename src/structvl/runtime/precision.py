"""`train.precision` -> the autocast dtype, decided in one place for training and every evaluation loop.

"auto" (the default) takes bf16 where the device computes it in hardware and fp32 elsewhere. On a CPU without
AVX512-BF16 or AMX, bf16 autocast is emulated and several times slower than fp32; with them bf16 matmuls are
the faster (benchmarks/train_step.py prints both peaks and what `auto` picks), so no fixed choice suits both.
The resolved precision is logged and recorded in the run's metrics.json (`train/bf16`), because bf16 and fp32
runs of the same config give different numbers.
"""

from __future__ import annotations

import functools
import logging

import torch

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "bf16", "fp32")


def native_bf16(device: torch.device | str) -> bool:
    """Whether `device` computes bf16 in hardware (not emulated)."""
    device = torch.device(device)
    if device.type == "cuda":
        try:
            return torch.cuda.is_bf16_supported(including_emulation=False)
        except TypeError:  # torch < 2.3 has no emulation flag and answers for hardware support
            return torch.cuda.is_bf16_supported()
    # torch's own CPU capability probes (the ones its oneDNN kernels dispatch on); absent probes mean no
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in probes)


def autocast_dtype(precision: str, device: torch.device | str) -> torch.dtype | None:
    """The dtype to autocast to on `device` for config value `precision`; None means plain fp32."""
    if precision not in PRECISIONS:
        raise ValueError(f"config key 'train.precision': {precision!r} is not one of {list(PRECISIONS)}")
    if precision == "fp32":
        return None
    native = native_bf16(device)
    if precision == "bf16":
        if not native:
            _warn_emulated(torch.device(device).type)
        return torch.bfloat16
    return torch.bfloat16 if native else None


def autocast(device: torch.device | str, dtype: torch.dtype | None):
    """The autocast context for `dtype` on `device` (what `autocast_dtype` returned); a no-op for None."""
    return torch.autocast(torch.device(device).type, dtype=dtype, enabled=dtype is not None)


def dtype_name(dtype: torch.dtype | None) -> str:
    """"bf16" or "fp32" for an autocast dtype (None = fp32), as logs and the run's record name it."""
    return "fp32" if dtype is None else "bf16"


def resolved_name(precision: str, device: torch.device | str) -> str:
    """"bf16" or "fp32": what `precision` means on `device`."""
    return dtype_name(autocast_dtype(precision, device))


@functools.lru_cache(maxsize=None)
def _warn_emulated(device_type: str) -> None:  # cached: once per device type, not once per evaluation loop
    log.warning("train.precision=bf16 on a %s without native bf16: autocast is emulated and runs several times "
                "slower than fp32 here; train.precision=auto would pick fp32", device_type)
