"""The ViT-B/16 recipe on one GPU: clips/s and MFU in bf16, fp16 (with the gradient scaler) and bf16 with
`train.compile`, each over 20 timed steps, against the matmul peak of the same GPU measured in the same run.

The model is configs/model/vit_b16.yaml (224 px, 8 frames, divided attention, activation checkpointing, the
MiniLM text tower) with random weights: they time the same as loaded ones, so no checkpoint is needed and a
machine without the MiniLM package can run it from a copy of its config.json (`--text DIR`). The step and the
FLOP count are benchmarks/train_step.py's (FlopCounterMode over a real step; MFU on the model's FLOPs, HFU with
the checkpointed forward's recomputation). Batches are synthetic tensors already on the GPU.

    python benchmarks/gpu_vitb.py                      # CUDA: bf16, fp16, bf16+compile, batch 32, 20 steps
    python benchmarks/gpu_vitb.py --modes bf16 tf32 --batch 64
    python benchmarks/gpu_vitb.py --smoke              # CPU, a tiny ViT, 2 steps: checks the script runs
    python benchmarks/gpu_vitb.py --profile 15         # also: each mode's 15 costliest operators over one step
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from structvl.runtime.precision import set_tf32

from train_step import _sync, build_variant, matmul_peak  # benchmarks/ is on sys.path when run as a script

# mode -> (train.precision, extra overrides)
MODES = {"bf16": ("bf16", []), "fp16": ("fp16", []), "bf16+compile": ("bf16", ["train.compile=true"]),
         "tf32": ("fp32", ["train.tf32=true"]), "fp32": ("fp32", [])}
PEAK_DTYPE = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
SMOKE = ["model.video.image_size=32", "model.video.patch_size=16", "model.video.num_frames=2", "data.num_frames=2",
         "eval.num_frames=2", "model.video.width=64", "model.video.depth=2", "model.video.heads=2",
         "model.text.init.path=scratch", "model.text.width=32", "model.text.depth=1", "model.text.heads=2",
         "model.text.intermediate_size=64", "model.embed_dim=32"]


def run_mode(mode: str, args, device: str, peaks: dict) -> dict:
    precision, extra = MODES[mode]
    overrides = [*(SMOKE if args.smoke else []), *extra, *args.set]
    if args.text and not args.smoke:
        overrides.append(f"model.text.init.path={args.text}")
    set_tf32("train.tf32=true" in overrides)  # the trainer's switch, set as the trainer sets it
    try:
        variant = build_variant(args.config, precision, overrides, args.batch, args.text_len, device=device,
                                warmup=args.warmup)
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(args.steps):
            variant.step()
        _sync(device)
        seconds = (time.perf_counter() - t0) / args.steps
        if args.profile:
            try:
                print_profile(variant, mode, args.profile, device)
            except Exception as e:  # noqa: BLE001 - the timing above still counts
                print(f"{mode}: profile failed: {type(e).__name__}: {e}", flush=True)
    finally:
        set_tf32(False)
    key = "fp32" if precision == "fp32" else precision
    peak = peaks[key]
    result = {"mode": mode, "batch": args.batch, "s_per_step": seconds, "clips_per_s": args.batch / seconds,
              "gflop_per_clip": variant.model_flops / args.batch / 1e9,
              "mfu": variant.model_flops / seconds / peak, "hfu": variant.run_flops / seconds / peak,
              "peak_tflops": peak / 1e12, "memory_gib": torch.cuda.max_memory_allocated() / 2 ** 30
              if device == "cuda" else None}
    del variant
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    return result


def print_profile(variant, mode: str, rows: int, device: str) -> None:
    """The operators that took the most device time (self time) over one step: where the gap to the peak goes."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        variant.step()
        _sync(device)
    key = "self_device_time_total" if device == "cuda" else "self_cpu_time_total"
    print(f"-- {mode}: one step's {rows} costliest operators")
    print(prof.key_averages().table(sort_by=key, row_limit=rows, max_name_column_width=60), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--modes", nargs="+", default=None, choices=list(MODES),
                    help="default: bf16 fp16 bf16+compile (--smoke: bf16 fp16; compiling on a CPU takes minutes)")
    ap.add_argument("--config", default="model/vit_b16")
    ap.add_argument("--batch", type=int, default=None, help="clips per step (default 32; --smoke 2)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per mode (default 20; --smoke 2)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps first (compile adds 2)")
    ap.add_argument("--text-len", type=int, default=20)
    ap.add_argument("--text", default=None, help="model.text.init.path (a directory with MiniLM's config.json will "
                                                 "do: weights are random)")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides for every mode")
    ap.add_argument("--smoke", action="store_true", help="CPU, tiny model: checks the script, measures nothing")
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument("--profile", type=int, default=0, metavar="ROWS",
                    help="after timing each mode, print its ROWS costliest operators over one more step")
    args = ap.parse_args()
    args.modes = args.modes or (["bf16", "fp16"] if args.smoke else ["bf16", "fp16", "bf16+compile"])
    args.batch = args.batch or (2 if args.smoke else 32)
    args.steps = args.steps or (2 if args.smoke else 20)
    device = "cpu" if args.smoke else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run with --smoke to check the script on a CPU")
    name = "CPU (smoke)" if args.smoke else torch.cuda.get_device_name()
    n = 256 if args.smoke else 8192
    needed = {"fp32" if MODES[m][0] == "fp32" else MODES[m][0] for m in args.modes}
    set_tf32("tf32" in args.modes)  # the fp32 peak of a tf32 run is tf32's
    peaks = {p: matmul_peak(PEAK_DTYPE[p], n=n, seconds=0.2 if args.smoke else 2.0, device=device) for p in needed}
    set_tf32(False)
    print(f"{name}: {args.config}, batch {args.batch}, {args.steps} timed steps per mode; matmul peak ({n}^3): "
          + ", ".join(f"{p}{' (tf32)' if p == 'fp32' and 'tf32' in args.modes else ''} {v / 1e12:.1f} TFLOP/s"
                      for p, v in peaks.items()), flush=True)
    results = []
    for mode in args.modes:  # a mode that fails (a compiler error, say) is reported and the others still run
        try:
            results.append(run_mode(mode, args, device, peaks))
        except Exception as e:  # a benchmark's report, not a library's error path
            print(f"{mode}: failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}", flush=True)
            if args.smoke:
                raise
    header = f"{'mode':<14}{'s/step':>9}{'clips/s':>10}{'GFLOP/clip':>12}{'MFU':>7}{'HFU':>7}{'mem GiB':>9}"
    print(header)
    print("-" * len(header))
    for r in results:
        mem = f"{r['memory_gib']:>9.1f}" if r["memory_gib"] is not None else f"{'-':>9}"
        print(f"{r['mode']:<14}{r['s_per_step']:>9.4f}{r['clips_per_s']:>10.1f}{r['gflop_per_clip']:>12.1f}"
              f"{r['mfu']:>7.1%}{r['hfu']:>7.1%}{mem}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"device": name, "peaks_tflops": {k: v / 1e12 for k, v in peaks.items()}, "results": results},
                      f, indent=2)


if __name__ == "__main__":
    main()
