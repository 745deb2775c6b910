"""Memory of one pre-training step per recipe: what autograd keeps for the backward, by module, and the peak.

Every recipe (demo.yaml = the baseline, clop.yaml, svilm.yaml, clover.yaml, all.yaml) takes the same real batch
of the structured corpus (as benchmarks/objective_cost.py) and runs the trainer's step (forward, backward,
gradient clipping, AdamW) in the precision its `train.precision` resolves to on this machine (a variant
`train.precision=fp32` forces fp32; each row names the precision it ran in), in a process of its own, started by
`spawn`, so that no recipe inherits another's heap.
Printed per recipe and variant (config overrides, e.g. `model.activation_checkpointing=true`; `--set` overrides
every variant alike):

* saved MiB: the bytes of the tensors the forward saves for the backward (`torch.autograd.graph.saved_tensors_hooks`,
  each storage counted once, the weights themselves not counted): the activation memory, exact and independent of
  the allocator; the three modules that save the most beside it.
* before: the process's resident set before the first step (model, batch, tokenizer, knowledge extractor);
  +kept: what the first step (run with the counting hooks) left resident (gradients, the optimizer's state, the
  allocator's cache); +step: how far `--steps` more steps raised it above that (VmHWM after resetting it through
  /proc/self/clear_refs, Linux): what the allocator really took for a step; peak: the resident set's peak then.
  All in MiB.
* s/step: the median of those steps' wall time, and its ratio over the recipe's first variant (measured one
  after the other: load from other processes moves it).
Each process sets `train.mmap_threshold_kib` as `run_pretraining` does, so a variant can compare it.
`--allocators glibc tcmalloc jemalloc`: each variant once per allocator its process starts with
(`runtime.process.preloaded`; the "saved" column does not depend on it, the rest does).

    python benchmarks/step_memory.py --data data/structured
    python benchmarks/step_memory.py --recipes all --variants "" "model.activation_checkpointing=true"
    python benchmarks/step_memory.py --recipes all --variants "train.mmap_threshold_kib=0" ""
    python benchmarks/step_memory.py --recipes all --steps 5 --allocators glibc tcmalloc jemalloc
    python benchmarks/step_memory.py --recipes baseline --set model.video.activation_checkpointing=true \
        --variants "" "model.video.checkpoint_blocks=2"
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path

import torch

from structvl.config import load_config
from structvl.engine.pretrain import seed_everything
from structvl.lab.demo import RECIPES as DEMO_RECIPES
from structvl.models.video_text import build_model
from structvl.objectives.pretraining import PretrainingModule
from structvl.runtime.precision import autocast_dtype, dtype_name
from structvl.runtime.process import (ALLOCATORS, allocator_in_use, choose_allocator, preloaded,
                                      return_freed_memory)

from objective_cost import RECIPES, real_batch  # benchmarks/ is on sys.path when run as a script
from train_step import make_step

MIB = 2 ** 20


def _status_kib(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


class SavedTensors:
    """Bytes saved for the backward while active, per module: the innermost module (at most `depth` names below
    the root, e.g. `model.text_encoder`) whose forward was running when the tensor was saved."""

    def __init__(self, root: torch.nn.Module, depth: int = 2):
        self.bytes: Counter = Counter()
        self.seen: set[int] = {p.untyped_storage().data_ptr() for p in root.parameters()}
        self.stack: list[str] = []
        self.handles = []
        for name, module in root.named_modules():
            if name and name.count(".") < depth:
                self.handles.append(module.register_forward_pre_hook(lambda m, a, n=name: self.stack.append(n)))
                self.handles.append(module.register_forward_hook(self._leave))
        self.hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)

    def _leave(self, module, args, output) -> None:  # a forward hook that returns something replaces the output
        self.stack.pop()

    def _pack(self, tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.device.type != "meta" and storage.data_ptr() not in self.seen:
            self.seen.add(storage.data_ptr())
            self.bytes[self.stack[-1] if self.stack else "(objectives' glue)"] += storage.nbytes()
        return tensor

    def __enter__(self):
        self.hooks.__enter__()
        return self

    def __exit__(self, *exc):
        self.hooks.__exit__(*exc)
        for handle in self.handles:
            handle.remove()


def measure(name: str, overrides: list[str], data: str, batch_size: int, steps: int, threads: int, work: str,
            queue) -> None:
    """One recipe and variant, in this (spawned) process; puts its figures on `queue`."""
    torch.set_num_threads(threads)
    cfg = load_config(RECIPES[name], [f"data.root={data}", *overrides])
    return_freed_memory(cfg.train.mmap_threshold_kib)  # as run_pretraining does
    run_dir = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=work))  # each variant a directory of its own
    batch, context = real_batch(cfg, Path(data), batch_size, run_dir)
    seed_everything(0)
    module = PretrainingModule(build_model(cfg.model), cfg, context).train()
    dtype = autocast_dtype(cfg.train.precision, "cpu")  # as the trainer resolves it
    step = make_step(module, cfg, batch, dtype)
    before = _status_kib("VmRSS")
    with SavedTensors(module) as saved:
        step()
    kept = _status_kib("VmRSS")  # gradients and the optimizer's state now exist
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    peak = _status_kib("VmHWM")
    queue.put({"allocator": allocator_in_use(), "precision": dtype_name(dtype), "saved": dict(saved.bytes),
               "before": before, "kept": kept - before, "step": peak - kept, "peak": peak,
               "seconds": statistics.median(times)})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=None, help="structured corpus directory (default: a 64-clip one in a temp dir)")
    ap.add_argument("--recipes", nargs="+", default=list(DEMO_RECIPES), choices=list(RECIPES))
    ap.add_argument("--variants", nargs="*", default=[""], metavar="OVERRIDES",
                    help="space-separated config overrides per variant; \"\" is the config as it is")
    ap.add_argument("--set", nargs="*", default=[], metavar="OVERRIDE",
                    help="config overrides applied to every variant (the variants' column stays short)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=2, help="steps measured after the first")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--allocators", nargs="+", default=["glibc"], choices=["glibc", *ALLOCATORS],
                    help="the malloc each measuring process starts with (each variant once per allocator)")
    args = ap.parse_args()
    if not Path("/proc/self/clear_refs").exists():
        ap.error("needs Linux's /proc/self/clear_refs to reset the peak resident set")
    for allocator in args.allocators:
        try:
            choose_allocator(allocator)
        except ValueError as error:
            ap.error(f"--allocators: {error}")
    context = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory() as tmp:
        data = args.data
        if data is None:
            from structvl.lab.synth import generate_corpus
            data = str(Path(tmp) / "corpus")
            generate_corpus(Path(data), num_clips=max(64, args.batch * 2), num_untrimmed=0, seed=0)
        print(f"threads={args.threads}  batch={args.batch}  steps={args.steps}  corpus={data}"
              + (f"  --set {' '.join(args.set)}" if args.set else ""))
        header = (f"{'recipe':<10}{'variant':<38} {'malloc':<10}{'prec':<6}{'saved':>8}{'before':>8}{'+kept':>8}"
                  f"{'+step':>8}{'peak':>8}{'s/step':>8}{'x first':>8}  saved most (MiB)")
        print(header + "\n" + "-" * (len(header) + 40))
        for name in args.recipes:
            first = None
            for variant, allocator in ((v, a) for v in args.variants for a in args.allocators):
                queue = context.Queue()
                overrides = [*args.set, *variant.split()]
                child = context.Process(target=measure, args=(name, overrides, data, args.batch, args.steps,
                                                              args.threads, tmp, queue))
                with preloaded(allocator):
                    child.start()
                child.join()
                if child.exitcode != 0:
                    raise SystemExit(f"{name} {variant!r}: the measuring process exited with code {child.exitcode}")
                result = queue.get(timeout=60)
                saved = Counter(result["saved"])
                most = ", ".join(f"{k} {v / MIB:.0f}" for k, v in saved.most_common(3))
                figures = [sum(saved.values()) / MIB] + [result[k] / 1024 for k in ("before", "kept", "step", "peak")]
                first = first or result["seconds"]
                print(f"{name:<10}{variant or '(as configured)':<38} {result['allocator']:<10}{result['precision']:<6}"
                      + "".join(f"{f:>8.0f}" for f in figures)
                      + f"{result['seconds']:>8.2f}{result['seconds'] / first:>8.2f}  {most}", flush=True)


if __name__ == "__main__":
    main()
