"""`train.precision` -> the autocast dtype, decided in one place for training and every evaluation loop.

"auto" (the default) takes bf16 where it is the faster (`fast_bf16`): a CUDA GPU with bf16, a CPU with AMX tiles,
or a CPU with AVX512-BF16 whose bf16 matmuls measure at least `CPU_BF16_MIN_SPEEDUP` times fp32's; fp32
elsewhere. On a CPU without AVX512-BF16 or AMX, bf16 autocast is emulated and several times slower than fp32.
AVX512-BF16 alone splits: a 2-core Xeon's oneDNN bf16 matmuls ran 0.54x fp32's (demo step 1.36x slower), a
2-core AMD EPYC's 2.3x (demo step 0.70x; docs/findings.md, Performance), so for those CPUs `auto` measures
(`cpu_bf16_speedup`, once a process, ~0.1 s) instead of guessing from the flags. benchmarks/train_step.py prints
both peaks and what `auto` picks.
The resolved precision is logged and recorded in the run's metrics.json (`train/bf16`, `train/fp16`), because
bf16 and fp32 runs of the same config give different numbers.

"fp16" is for GPUs without bf16 (V100, T4): fp16's narrow exponent range lets small gradients underflow, so
training scales the loss with `torch.amp.GradScaler` (`grad_scaler`), which skips the optimizer step whose
gradients overflowed and lowers the scale; the trainer counts those skipped steps. `auto` never picks fp16.
`train.tf32` (`set_tf32`) lets fp32 matmuls and convolutions on Ampere and newer GPUs run in TensorFloat-32.
"""

from __future__ import annotations

import functools
import logging
import time

import torch

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "bf16", "fp16", "fp32")


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


# bf16 autocast also pays for casts and fp32 soft-max and norms that do not speed up, so matmuls only a little
# faster in bf16 do not make the step faster; 1.5x leaves room either side of the two CPUs measured (0.54x, 2.3x).
CPU_BF16_MIN_SPEEDUP = 1.5


@functools.lru_cache(maxsize=None)
def cpu_bf16_speedup(n: int = 1024, rounds: int = 4) -> float:
    """How many times faster an n^3 matmul runs in bf16 than in fp32 on this CPU, with this process's threads.
    The dtypes alternate over `rounds` and each keeps its fastest time, so load from elsewhere moves both alike.
    Measured once a process (cached): the answer is the same for the whole run. Autocast is off while it runs (a
    first call from inside a bf16 step would otherwise time bf16 twice); `autocast_dtype` makes that first call
    before any step where bf16 is asked for, so no step pays for it."""
    g = torch.Generator().manual_seed(0)  # its own generator: the run's random stream is left where it was
    a, b = torch.randn(n, n, generator=g), torch.randn(n, n, generator=g)
    best = {torch.float32: float("inf"), torch.bfloat16: float("inf")}
    operands = {dtype: (a.to(dtype), b.to(dtype)) for dtype in best}
    with torch.autocast("cpu", enabled=False):
        for dtype in best:  # warm-up: oneDNN builds its kernels on the first product
            torch.mm(*operands[dtype])
        for _ in range(rounds):
            for dtype in best:
                t0 = time.perf_counter()
                torch.mm(*operands[dtype])
                best[dtype] = min(best[dtype], time.perf_counter() - t0)
    return best[torch.float32] / best[torch.bfloat16]


def fast_bf16(device: torch.device | str) -> bool:
    """Whether bf16 autocast is faster than fp32 on `device`, which `auto` picks it on: a GPU computing bf16 in
    hardware, a CPU with AMX tiles, or a CPU with AVX512-BF16 whose bf16 matmuls measure fast enough (above)."""
    device = torch.device(device)
    if device.type == "cuda":
        return native_bf16(device)
    if getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)():
        return True
    return native_bf16(device) and cpu_bf16_speedup() >= CPU_BF16_MIN_SPEEDUP


def autocast_dtype(precision: str, device: torch.device | str) -> torch.dtype | None:
    """The dtype to autocast to on `device` for config value `precision`; None means plain fp32."""
    if precision not in PRECISIONS:
        raise ValueError(f"config key 'train.precision': {precision!r} is not one of {list(PRECISIONS)}")
    if precision == "fp32":
        return None
    if precision == "fp16":
        return torch.float16
    if precision == "bf16":
        if not native_bf16(device):
            _warn_emulated(torch.device(device).type)
        attention_path(torch.device(device).type, torch.bfloat16)  # decided (and measured) now, not in a step
        return torch.bfloat16
    return torch.bfloat16 if fast_bf16(device) else None


def autocast(device: torch.device | str, dtype: torch.dtype | None):
    """The autocast context for `dtype` on `device` (what `autocast_dtype` returned); a no-op for None."""
    return torch.autocast(torch.device(device).type, dtype=dtype, enabled=dtype is not None)


def full_precision(device_type: str):
    """Autocast off, for the objectives' similarity logits (their inputs cast to fp32 inside): under bf16 a logit
    near 20 (Clover's 1 / 0.05; CLIP's learned scale grows to 100) is rounded to steps of 0.125, coarser than the
    gap between a caption and its one-word twin that the losses are there to score. The products are B x B_global
    x E: nothing beside the towers."""
    return torch.autocast(device_type, enabled=False)


def dtype_name(dtype: torch.dtype | None) -> str:
    """"bf16", "fp16" or "fp32" for an autocast dtype (None = fp32), as logs and the run's record name it."""
    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


def resolved_name(precision: str, device: torch.device | str) -> str:
    """"bf16", "fp16" or "fp32": what `precision` means on `device`."""
    return dtype_name(autocast_dtype(precision, device))


def grad_scaler(dtype: torch.dtype | None, device: torch.device | str) -> torch.amp.GradScaler:
    """The loss scaler for training in `dtype`: active for fp16 only. For bf16 and fp32 it is a disabled
    scaler, whose scale/unscale_/step/update are pass-throughs, so the training loop has one code path."""
    return torch.amp.GradScaler(torch.device(device).type, enabled=dtype == torch.float16)


def set_tf32(enabled: bool) -> None:
    """`train.tf32`: fp32 matmuls and cuDNN convolutions on CUDA may use TensorFloat-32 (Ampere and newer;
    10-bit mantissa inputs, fp32 accumulation). No effect on a CPU. Set for the whole process."""
    matmul, conv = torch.backends.cuda.matmul, torch.backends.cudnn
    if hasattr(matmul, "fp32_precision") and hasattr(conv, "conv"):  # torch >= 2.9: the per-backend setting
        matmul.fp32_precision = conv.conv.fp32_precision = "tf32" if enabled else "ieee"
    else:
        matmul.allow_tf32 = conv.allow_tf32 = enabled


@torch.compiler.assume_constant_result  # one answer a process: a compiled graph takes it in, with no graph break
def attention_path(device_type: str, dtype: torch.dtype) -> str:
    """How attention under `dtype` autocast runs on `device_type` (models/video_encoder.py): "kernel", torch's
    fused kernel in `dtype` (GPUs, AMX CPUs: the low-precision kernels are the fast ones there); on other CPUs
    torch's flash kernel runs slower in bf16 than in fp32 (about 2x on a Xeon, 1.3x on an AVX512-BF16 EPYC, most
    of it in the backward pass), so "matmul", two matmuls and a soft-max in bf16, where bf16 matmuls are the fast
    ones (`fast_bf16`: the EPYC's ViT-B/16 step 0.91x, a 1,569-token joint layout's 0.61x the fp32 kernel's;
    docs/findings.md, "Matmul attention"), else "fp32", the kernel on fp32 copies (the inputs' cast costs a
    fraction of what the kernel gains)."""
    return _attention_path(device_type, dtype)


@functools.lru_cache(maxsize=None)
def _attention_path(device_type: str, dtype: torch.dtype) -> str:
    if device_type != "cpu" or getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)():
        return "kernel"
    return "matmul" if dtype == torch.bfloat16 and fast_bf16(device_type) else "fp32"


attention_path.cache_clear = _attention_path.cache_clear  # tests that fake a CPU forget its answer


@functools.lru_cache(maxsize=None)
def _warn_emulated(device_type: str) -> None:  # cached: once per device type, not once per evaluation loop
    log.warning("train.precision=bf16 on a %s without native bf16: autocast is emulated and runs several times "
                "slower than fp32 here; train.precision=auto would pick fp32", device_type)
