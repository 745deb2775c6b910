"""How the training step's time scales with frames (8/16/32) and resolution (64/112/224 px), joint vs divided
attention, against what the FLOP count predicts.

A narrow ViT-B/16 layout (patch 16, one frame per tubelet, `--width` 256 wide, `--depth` 4 blocks, 8 clips a
step; a tiny scratch text tower whose cost is the same at every point) makes the smallest point's step tens of
GFLOP, enough that compute rather than fixed per-step overhead sets its time, and the largest a few seconds on
2 cores. Every point's FLOPs are counted over one real training step (benchmarks/train_step.py:
FlopCounterMode, forward + backward); the prediction scales the 8-frame 64-px point's measured time of the same
attention by the FLOP ratio, so measured / predicted is 1.0 where time follows FLOPs. Above 1: the added FLOPs
run slower than the base point's (attention, whose share grows with the tokens, runs at a lower share of the
matmul peak than the projections; memory-bound soft-max, norms and copies whose bytes grow with the tokens);
below 1: the base point did not fill the cores (fixed per-step costs: the optimizer, the text tower, kernel
launches). `attn %` is the share of the step's FLOPs in attention (quadratic in the tokens per attention:
frames x patches for joint, frames or patches for divided). The peak and the steps are interleaved as in
train_step.py, medians of `--rounds`.

    python benchmarks/scaling.py                        # 2 threads, 3 rounds
    python benchmarks/scaling.py --threads 1 --clock process   # a shared machine (see train_step.py --clock)
    python benchmarks/scaling.py --smoke                # 2 tiny points per attention, 1 round: checks the script
"""

from __future__ import annotations

import argparse
import statistics

import torch

import train_step  # benchmarks/ is on sys.path when run as a script
from train_step import CLOCKS, build_variant, run_rounds

POINTS = [(8, 64), (16, 64), (32, 64), (8, 112), (8, 224)]  # (frames, px): the first is the prediction's base
SMOKE_POINTS = [(2, 32), (4, 32)]


def attention_share(variant) -> float:
    """The share of the step's FLOPs in attention: the fused kernels', or the batched matmuls' where attention
    runs as matmuls (bf16 on a CPU without AMX; the towers' projections are mm/addmm, never bmm)."""
    counts = variant.flop_counts.get("Global", {})
    attention = sum(v for op, v in counts.items() if "attention" in str(op) or str(op) == "aten.bmm")
    return attention / max(1, sum(counts.values()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4, help="head width = width / heads (64 as in ViT-B by default)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--precision", default="bf16", choices=["fp32", "bf16"])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--peak-seconds", type=float, default=0.5)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--clock", choices=list(CLOCKS), default="wall", help="as in train_step.py")
    ap.add_argument("--smoke", action="store_true", help="two tiny points per attention, one round")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    train_step.clock = CLOCKS[args.clock]
    points = SMOKE_POINTS if args.smoke else POINTS
    rounds = 1 if args.smoke else args.rounds
    if args.smoke:
        args.width, args.depth, args.heads, args.batch = 64, 1, 2, 2
    common = [f"model.video.width={args.width}", f"model.video.depth={args.depth}", f"model.video.heads={args.heads}",
              "model.video.patch_size=16", "model.video.tubelet_size=1", "model.video.drop_path=0.0",
              "model.activation_checkpointing=false", "model.text.init.path=scratch", "model.text.width=32",
              "model.text.depth=1", "model.text.heads=2", "model.text.intermediate_size=64", "model.embed_dim=64"]
    variants = []
    for attention in ("joint", "divided"):
        for frames, px in points:
            overrides = [*common, f"model.video.attention={attention}", f"model.video.num_frames={frames}",
                         f"data.num_frames={frames}", f"eval.num_frames={frames}", f"model.video.image_size={px}"]
            v = build_variant("model/vit_b16", args.precision, overrides, args.batch, 8)
            v.name, v.point = attention, (frames, px)
            variants.append(v)
    peaks = run_rounds(variants, rounds, args.peak_seconds)
    med = statistics.median
    print(f"threads={args.threads}  clock={args.clock}  {args.precision}  width {args.width}, depth {args.depth}, heads {args.heads}, "
          f"patch 16, batch {args.batch}; matmul peak {med(peaks[args.precision]) / 1e9:.0f} GFLOP/s (median)")
    header = (f"{'attention':<10}{'frames':>7}{'px':>5}{'tokens':>8}{'GFLOP/clip':>12}{'attn %':>8}{'s/step':>9}"
              f"{'predicted':>11}{'meas/pred':>11}{'MFU':>7}")
    print(header)
    print("-" * len(header))
    for attention in ("joint", "divided"):
        rows = [v for v in variants if v.name == attention]
        base = rows[0]
        for v in rows:
            frames, px = v.point
            predicted = med(base.times) * v.model_flops / base.model_flops
            print(f"{attention:<10}{frames:>7}{px:>5}{frames * (px // 16) ** 2 + 1:>8}"
                  f"{v.model_flops / args.batch / 1e9:>12.3f}{attention_share(v):>8.0%}{med(v.times):>9.3f}"
                  f"{predicted:>11.3f}{med(v.times) / predicted:>11.2f}{med(v.mfus):>7.1%}", flush=True)


if __name__ == "__main__":
    main()
