"""Pre-training step throughput and model FLOPs utilisation (MFU), per precision, with A/B variants side by side.

MFU = model FLOP/s achieved / the matmul peak of the same dtype (a 2048^3 product), measured in this same run on
this machine, so the ratio is comparable across machines and survives load from other processes better than a
time does. The peak and the steps are measured in interleaved rounds (peak burst, then one step of every
variant), and each figure is the median over the rounds: a machine whose load drifts moves both alike.

FLOPs are counted, not estimated: `torch.utils.flop_counter.FlopCounterMode` records every matmul,
convolution and attention kernel that one real training step dispatches (forward + backward of both towers, the
projection heads and every enabled objective's extra passes: masked or cut-and-paste clips, phrase and swapped
caption encodings, fusion passes), with the CPU flash-attention kernels added to its table (torch lists only
the CUDA ones). Element-wise work, norms and the optimizer are not FLOPs here: they are the overhead MFU shows.
MFU counts the model's FLOPs (activation-checkpoint recomputation excluded, counted on the same module with
checkpointing off); where checkpointing is on, HFU also counts the recomputed forward, which does run.

The step is the trainer's (engine/trainer.py): autocast forward, (scaled) backward, `unscale_and_clip`
(fp16 unscale, gradient clipping), the finite check of loss and gradient norm (one sync), AdamW as
`build_optimizer` makes it, the weights' finite check (one sync), the logit-scale clamp. Batches are synthetic
tensors: this measures the model step, not the data loader (benchmarks/decode.py).

    python benchmarks/train_step.py                          # demo (tiny) and ViT-B/16 configs, fp32 and bf16
    python benchmarks/train_step.py --configs demo --precisions bf16 --rounds 5
    python benchmarks/train_step.py --configs demo --precisions bf16 --variants "" "model.video.token_keep=0.5"
    python benchmarks/train_step.py --configs model/vit_b16 --set model.activation_checkpointing=false
    python benchmarks/train_step.py --threads 1 --clock process     # a shared machine: CPU time, see --clock
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass, field

import torch
from torch.utils.flop_counter import FlopCounterMode, register_flop_formula

from structvl.config import CONFIG_DIR as CONFIGS
from structvl.config import load_config
from structvl.engine.checkpoint import rng_state, set_rng_state
from structvl.engine.optim import build_optimizer
from structvl.engine.trainer import finite_flag, unscale_and_clip
from structvl.models.video_text import build_model
from structvl.objectives.pretraining import PretrainingModule
from structvl.runtime.nonfinite import all_finite
from structvl.runtime.precision import autocast, autocast_dtype, grad_scaler, native_bf16, resolved_name

CLOCKS = {"wall": time.perf_counter, "process": time.process_time}
clock = time.perf_counter  # --clock: what both the peak and the steps are timed with

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
BATCH = {"demo": 32, "model/vit_b16": 2, "model/clip_vit_b16": 2}  # the CPU benchmark's clips per step


# ----------------------------------------------------------------------------- FLOPs
def _attention_flops(q_shape, k_shape, v_shape) -> int:
    """Q K^T and P V of one attention call: 2 * b * h * s_q * s_k * (d_qk + d_v)."""
    b, h, s_q, d_qk = q_shape
    s_k, d_v = k_shape[-2], v_shape[-1]
    return 2 * b * h * s_q * s_k * (d_qk + d_v)


_cpu_flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
_cpu_flash_backward = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward


@register_flop_formula(_cpu_flash)
def _cpu_flash_flop(query, key, value, *args, out_shape=None, **kwargs) -> int:
    return _attention_flops(query, key, value)


@register_flop_formula(_cpu_flash_backward)
def _cpu_flash_backward_flop(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
    return 2 * _attention_flops(query, key, value)  # dQ, dK, dV and dP: twice the forward, as for the CUDA kernels


def count_step_flops(step, module: PretrainingModule) -> tuple[float, float, dict]:
    """(model FLOPs, FLOPs that run, the model FLOPs per operator) of one call of `step()`: the second includes
    the forward recomputed under activation checkpointing; the first is counted again with checkpointing off
    (equal when it is off), on the same random draws (the objectives' masks, cuts and swaps, which can change the
    shapes): the generators are wound back to where the first call found them."""
    generators = rng_state()  # torch's, NumPy's, Python's (and CUDA's), as a checkpoint holds them
    with FlopCounterMode(display=False) as counter:
        step()
    ran = counter.get_total_flops()
    model = module.model
    if model.recomputes:
        model.set_activation_checkpointing(False)
        set_rng_state(generators)
        try:
            with FlopCounterMode(display=False) as counter:
                step()
        finally:
            model.set_activation_checkpointing(None)  # as configured
    return float(counter.get_total_flops()), float(ran), counter.get_flop_counts()


# ----------------------------------------------------------------------------- peak and step
def matmul_peak(dtype: torch.dtype, n: int = 2048, seconds: float = 2.0, device: str = "cpu") -> float:
    """FLOP/s of an n^3 matmul in `dtype`, sustained over `seconds` (after one warm-up product)."""
    a, b = torch.randn(n, n, dtype=dtype, device=device), torch.randn(n, n, dtype=dtype, device=device)
    a @ b
    _sync(device)
    count, t0 = 0, clock()
    while clock() - t0 < seconds:
        a @ b
        count += 1
        if device != "cpu" and count % 10:
            continue
        _sync(device)
    _sync(device)
    return 2 * n ** 3 * count / (clock() - t0)


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def synthetic_batch(cfg, batch_size: int, text_len: int, device="cpu") -> dict:
    v = cfg.model.video
    return {
        "video": torch.randn(batch_size, v.num_frames, 3, v.image_size, v.image_size, device=device),
        "frame_mask": torch.ones(batch_size, v.num_frames, dtype=torch.bool, device=device),
        "input_ids": torch.randint(1000, 20000, (batch_size, text_len), device=device),
        "attention_mask": torch.ones(batch_size, text_len, dtype=torch.long, device=device),
    }


def make_step(module: PretrainingModule, cfg, batch: dict, dtype: torch.dtype | None, device="cpu"):
    """The trainer's optimizer step on `batch` as a closure returning (loss, logs); its optimizer is built here."""
    optimizer = build_optimizer(module, cfg.optim)
    scaler = grad_scaler(dtype, device)
    params = [p for p in module.parameters()]

    def step():
        optimizer.zero_grad(set_to_none=True)
        with autocast(device, dtype):
            loss, logs = module(batch)
        scaler.scale(loss).backward()
        norm = unscale_and_clip(optimizer, scaler, params, cfg.optim.grad_clip)
        if bool(finite_flag(loss.detach(), norm, scaler)):  # the trainer's one sync before the step
            scaler.step(optimizer)
        scaler.update()
        all_finite(params)  # the trainer's check of the weights after the step
        module.model.clamp_logit_scale_()
        return loss, logs

    return step


# ----------------------------------------------------------------------------- one config
@dataclass
class Variant:
    """One config + precision + override set, built and warmed up, timed over the rounds."""
    name: str
    config: str
    precision: str
    batch_size: int
    step: object
    model_flops: float
    run_flops: float
    flop_counts: dict = field(default_factory=dict)  # FlopCounterMode's {module: {operator: FLOPs}}
    point: tuple = ()  # free for a caller's label (benchmarks/scaling.py)
    times: list = field(default_factory=list)
    mfus: list = field(default_factory=list)


def build_variant(config: str, precision: str, overrides: list[str], batch_size: int, text_len: int,
                  device: str = "cpu", warmup: int = 1) -> Variant:
    # Random weights time the same as loaded ones: model.video.init is switched off and the text tower is built
    # from its checkpoint's config.json alone (no weights needed: a copy of that file will do on another machine).
    cfg = load_config(CONFIGS / f"{config}.yaml" if not config.endswith(".yaml") else config,
                      ["model.video.init.format=none", "model.video.init.path=null", *overrides])
    torch.manual_seed(0)
    model = build_model(cfg.model, load_pretrained=False).to(device)
    module = PretrainingModule(model, cfg).to(device).train()
    dtype = autocast_dtype(precision, device)  # as the trainer resolves it: bf16 settles the attention path here
    batch = synthetic_batch(cfg, batch_size, text_len, device)
    step = make_step(module, cfg, batch, dtype, device)
    model_flops, run_flops, counts = count_step_flops(step, module)  # also the first warm-up step
    if cfg.train.compile:
        model.compile_towers()
        warmup += 2  # compilation of forward and backward, then one step of the compiled code
    for _ in range(warmup):
        step()
    _sync(device)
    label = " ".join(overrides) or "(as configured)"
    return Variant(label, config, precision, batch_size, step, model_flops, run_flops, counts)


def time_step(variant: Variant, device: str = "cpu", steps: int = 1) -> float:
    """Seconds per step over `steps` steps."""
    _sync(device)
    t0 = clock()
    for _ in range(steps):
        variant.step()
    _sync(device)
    return (clock() - t0) / steps


def run_rounds(variants: list[Variant], rounds: int, peak_seconds: float, device: str = "cpu",
               steps: int = 1) -> dict:
    """Interleaved rounds: per round, the matmul peak of each precision in use, then `steps` steps of each
    variant, so a machine that drifts during the run moves every variant of a round alike. Returns the
    per-round peaks; fills each variant's times (s/step) and MFUs."""
    peaks: dict[str, list[float]] = {v.precision: [] for v in variants}
    for _ in range(rounds):
        now = {p: matmul_peak(DTYPES[p], seconds=peak_seconds, device=device) for p in peaks}
        for p, value in now.items():
            peaks[p].append(value)
        for v in variants:
            seconds = time_step(v, device, steps)
            v.times.append(seconds)
            v.mfus.append(v.model_flops / seconds / now[v.precision])
    return peaks


def round_ratio(variant: Variant, base: Variant) -> float:
    """The median over the rounds of variant's s/step / base's in the same round: drift between rounds cancels."""
    return statistics.median([a / b for a, b in zip(variant.times, base.times)])


def report(variants: list[Variant], peaks: dict) -> None:
    med = statistics.median
    print("matmul peak (median of the rounds): " + ", ".join(f"{p} {med(x) / 1e9:.0f} GFLOP/s"
                                                             for p, x in peaks.items()))
    header = (f"{'config':<16}{'prec':<6}{'batch':>6}{'s/step':>9}{'clips/s':>9}{'GFLOP/clip':>12}"
              f"{'MFU':>7}{'HFU':>7}{'x first':>9}  variant")
    print(header)
    print("-" * len(header))
    first: dict[tuple, Variant] = {}
    for v in variants:
        base = first.setdefault((v.config, v.precision), v)
        ratio = round_ratio(v, base)
        hfu = med([m * v.run_flops / v.model_flops for m in v.mfus])
        print(f"{v.config:<16}{v.precision:<6}{v.batch_size:>6}{med(v.times):>9.3f}{v.batch_size / med(v.times):>9.2f}"
              f"{v.model_flops / v.batch_size / 1e9:>12.2f}{med(v.mfus):>7.1%}{hfu:>7.1%}{ratio:>9.2f}  {v.name}",
              flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", nargs="+", default=["demo", "model/vit_b16"])
    ap.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=list(DTYPES))
    ap.add_argument("--rounds", type=int, default=3, help="interleaved peak + step rounds; figures are medians")
    ap.add_argument("--peak-seconds", type=float, default=1.0, help="length of each round's matmul-peak burst")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides for every run")
    ap.add_argument("--variants", nargs="*", default=[""], metavar="OVERRIDES",
                    help="A/B: space-separated override sets timed side by side (\"\" = as configured); "
                         "'x first' is each one's step time over the first's, the median of per-round ratios")
    ap.add_argument("--batch", type=int, default=None, help="clips per step (default: 32 demo, 2 ViT-B)")
    ap.add_argument("--text-len", type=int, default=20)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--clock", choices=list(CLOCKS), default="wall",
                    help="wall: seconds as a user waits them; process: this process's CPU seconds, for a machine "
                         "other processes share (with --threads 1 it counts only the time this step held a core)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    global clock
    clock = CLOCKS[args.clock]
    print(f"threads={args.threads}  clock={args.clock}  rounds={args.rounds}  native bf16: {native_bf16('cpu')} "
          f"(train.precision=auto picks {resolved_name('auto', 'cpu')})", flush=True)
    variants = []
    for config in args.configs:
        for precision in args.precisions:
            for extra in args.variants:
                overrides = [*args.set, *extra.split()]
                variants.append(build_variant(config, precision, overrides, args.batch or BATCH.get(config, 8),
                                              args.text_len))
    peaks = run_rounds(variants, args.rounds, args.peak_seconds)
    report(variants, peaks)


if __name__ == "__main__":
    main()
