"""What the trainer's per-step finiteness checks cost beside the training step they guard, side by side.

Every optimizer step the trainer checks the gradients (`all_finite`, when optim.grad_clip is 0; with clipping
the norm it computes anyway says it) and, after the step, the weights (`all_finite` over every parameter).
This times both checks and one forward + backward + AdamW step of a transformer stack of the given size in
the same run, and prints the checks' share of the step. It also checks on the device that `all_finite` and
`pessimistic_rank` see a NaN / inf in fp32 and bf16 tensors there.

Needs only torch (no config, data or video stack), so it runs on a bare accelerator machine:

    python benchmarks/nonfinite_cost.py                          # ViT-B-sized stack (12 x 768), auto device
    python benchmarks/nonfinite_cost.py --layers 2 --width 128   # a quick one on a CPU
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn as nn

from structvl.runtime.nonfinite import all_finite, pessimistic_rank


def timed(fn, device: torch.device, repeats: int) -> float:
    """Mean seconds per call after two warm-up calls."""
    for _ in range(2):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / repeats


def check_detection(device: torch.device) -> None:
    for dtype in (torch.float32, torch.bfloat16):
        for bad in (float("nan"), float("inf"), float("-inf")):
            tensors = [torch.randn(1000, device=device, dtype=dtype) for _ in range(5)]
            assert all_finite(tensors), dtype
            tensors[3][17] = bad
            assert not all_finite(tensors), (dtype, bad)
            scores = torch.randn(4, 6, device=device, dtype=dtype)
            target = torch.tensor([0, 1, 2, 3], device=device)
            scores[0, 0], scores[1, 0] = bad, bad  # row 0: the target itself; row 1: a rival
            ranks = pessimistic_rank(scores, target).tolist()
            assert ranks[0] == 6 and ranks[1] >= 2, (dtype, bad, ranks)
    print(f"detection on {device}: NaN/+inf/-inf seen in fp32 and bf16 tensors; pessimistic ranks as specified")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--width", type=int, default=768)
    ap.add_argument("--tokens", type=int, default=1568, help="sequence length (ViT-B/16, 8 frames, 224 px: 1568)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    device = torch.device(args.device)
    check_detection(device)

    layer = nn.TransformerEncoderLayer(args.width, args.width // 64, 4 * args.width, batch_first=True,
                                       norm_first=True)
    model = nn.TransformerEncoder(layer, args.layers, enable_nested_tensor=False).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(args.batch, args.tokens, args.width, device=device)
    params = list(model.parameters())

    def step():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = model(x).float().pow(2).mean()
        loss.backward()
        optimizer.step()

    step_s = timed(step, device, args.repeats)
    grads_s = timed(lambda: all_finite(p.grad for p in params), device, args.repeats * 5)
    weights_s = timed(lambda: all_finite(params), device, args.repeats * 5)
    n = sum(p.numel() for p in params)
    print(f"device={device}  params={n / 1e6:.1f}M  batch={args.batch}x{args.tokens} tokens  bf16 autocast")
    print(f"{'training step':<28}{step_s * 1e3:10.2f} ms")
    print(f"{'all_finite(gradients)':<28}{grads_s * 1e3:10.2f} ms  {100 * grads_s / step_s:6.2f}% of the step")
    print(f"{'all_finite(weights)':<28}{weights_s * 1e3:10.2f} ms  {100 * weights_s / step_s:6.2f}% of the step")


if __name__ == "__main__":
    main()
