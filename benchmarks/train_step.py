"""Pre-training step throughput and model FLOPs utilisation (MFU), fp32 vs bf16 autocast, side by side.

MFU = achieved model FLOP/s / the matmul peak of the same dtype measured in this same run on this machine,
so the ratio is comparable across machines. Model FLOPs = 3 x forward matmul FLOPs (forward + backward),
counted analytically from the architecture (VideoEncoder.flops_per_clip, TextEncoder.flops_per_text).
Batches are synthetic tensors: this measures the model step, not the data loader (benchmarks/decode.py).

    python benchmarks/train_step.py                 # demo (tiny) and ViT-B/16 configs
    python benchmarks/train_step.py --configs demo  # just the demo model
    python benchmarks/train_step.py --configs model/clip_vit_b16 --precisions fp32 --steps 2
"""

from __future__ import annotations

import argparse
import time

import torch

from structvl.config import CONFIG_DIR as CONFIGS
from structvl.config import load_config
from structvl.engine.optim import build_optimizer
from structvl.models.video_text import build_model
from structvl.objectives.pretraining import PretrainingModule
from structvl.runtime.precision import native_bf16, resolved_name


def matmul_peak(dtype: torch.dtype, n: int = 2048, seconds: float = 2.0) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b  # warm-up
    count, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        count += 1
    return 2 * n ** 3 * count / (time.perf_counter() - t0)


def synthetic_batch(cfg, batch_size: int, text_len: int) -> dict:
    v = cfg.model.video
    return {
        "video": torch.randn(batch_size, v.num_frames, 3, v.image_size, v.image_size),
        "frame_mask": torch.ones(batch_size, v.num_frames, dtype=torch.bool),
        "input_ids": torch.randint(1000, 20000, (batch_size, text_len)),
        "attention_mask": torch.ones(batch_size, text_len, dtype=torch.long),
    }


def seconds_per_step(module: PretrainingModule, cfg, batch: dict, steps: int, bf16: bool) -> tuple[float, dict]:
    """Mean wall time of forward + backward + optimizer step over `steps` steps after one warm-up step
    (allocations, autocast caches), and the warm-up step's logs."""
    optimizer = build_optimizer(module, cfg.optim)

    def step() -> dict:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss, logs = module(batch)
        loss.backward()
        optimizer.step()
        return logs

    logs = step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - t0) / steps, logs


def measure(config: str, precision: str, batch_size: int, steps: int, text_len: int) -> dict:
    # Random weights time the same as loaded ones: model.video.init is switched off (no checkpoint needed).
    cfg = load_config(CONFIGS / f"{config}.yaml" if not config.endswith(".yaml") else config,
                      ["model.video.init.format=none", "model.video.init.path=null"])
    torch.manual_seed(0)
    model = build_model(cfg.model)
    module = PretrainingModule(model, cfg).train()
    batch = synthetic_batch(cfg, batch_size, text_len)
    seconds, _ = seconds_per_step(module, cfg, batch, steps, bf16=precision == "bf16")
    flops_per_clip = 3 * (model.video_encoder.flops_per_clip() + model.text_encoder.flops_per_text(text_len))
    return {"config": config, "precision": precision, "batch": batch_size, "s_per_step": seconds,
            "clips_per_s": batch_size / seconds, "flops_per_s": flops_per_clip * batch_size / seconds,
            "gflop_per_clip": flops_per_clip / 1e9}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", nargs="+", default=["demo", "model/vit_b16"])
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    ap.add_argument("--text-len", type=int, default=20)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    peaks = {"fp32": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16)}
    print(f"threads={args.threads}  measured matmul peak: fp32 {peaks['fp32'] / 1e9:.0f} GFLOP/s, "
          f"bf16 {peaks['bf16'] / 1e9:.0f} GFLOP/s; native bf16: {native_bf16('cpu')} "
          f"(train.precision=auto picks {resolved_name('auto', 'cpu')})")
    batch_for = {"demo": 32, "model/vit_b16": 2, "model/clip_vit_b16": 2}
    header = f"{'config':<16}{'precision':<10}{'batch':>6}{'s/step':>9}{'clips/s':>9}{'GFLOP/clip':>12}{'GFLOP/s':>9}{'MFU':>7}"
    print(header)
    print("-" * len(header))
    results = []
    for config in args.configs:
        for precision in args.precisions:
            r = measure(config, precision, batch_for.get(config, 8), args.steps, args.text_len)
            r["mfu"] = r["flops_per_s"] / peaks[precision]
            results.append(r)
            print(f"{config:<16}{precision:<10}{r['batch']:>6}{r['s_per_step']:>9.3f}{r['clips_per_s']:>9.2f}"
                  f"{r['gflop_per_clip']:>12.2f}{r['flops_per_s'] / 1e9:>9.1f}{r['mfu']:>7.1%}", flush=True)
    for config in args.configs if len(args.precisions) == 2 else []:
        fp32, bf16 = [r for r in results if r["config"] == config]
        print(f"{config}: bf16 autocast speed-up over fp32 = {bf16['clips_per_s'] / fp32['clips_per_s']:.2f}x")


if __name__ == "__main__":
    main()
