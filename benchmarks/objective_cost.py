"""What each paper's objectives cost per pre-training step, as a ratio over the contrastive baseline's step.

Every recipe (demo.yaml = the baseline, clop.yaml, svilm.yaml, clover.yaml, all.yaml) takes the *same* real
batch of the structured corpus - decoded clips, tokenised captions and their cached spaCy knowledge, exactly
what the trainer feeds it - and runs the trainer's step (benchmarks/train_step.py `make_step`: forward,
backward, clipping, the finite checks, AdamW) in the precision the recipe's `train.precision` resolves to on
this machine (`auto`: bf16 where it is the faster, runtime/precision.py), or `--precision`. The ratio
s/step(recipe) / s/step(baseline), measured side by side in one run, is what a user pays for switching a
method on; the extra forward passes behind it are listed beside (CLOP: the constructed negative captions;
S-ViLM: the cut-and-paste clips and the phrases; Clover: masked video, masked text, two fusion passes).

Every recipe is built first; then `--repeats` interleaved rounds each time `--steps` steps of every recipe in
turn, after a burst that measures the matmul peak. s/step is the median of a recipe's rounds, and its ratio over
the baseline the median of its per-round ratios: a machine that drifts during the run (clock, a neighbour's
load) moves both sides of each ratio alike. GFLOP/step counts the matrix products of one forward + backward
(torch's FlopCounterMode: every extra pass, padding included; a checkpointed forward's recomputation not
counted), so its ratio is the floor the time ratio would reach if every FLOP cost the same: what batching and
less padding can win, and what only fewer FLOPs can. MFU divides the step's FLOP/s by the matmul peak of the
same dtype measured in the same round (the median shown); HFU also counts the forward that activation
checkpointing recomputes. Where a recipe's HFU is below the baseline's, its extra work runs less efficiently
than the baseline's, and that part of its cost is not FLOPs. `--unbatched` also times each recipe with its
extra passes in calls of their own (`PretrainingModule(batch_passes=False)`, objectives/passes.py), in the same
rounds. `--tokens` then times, over `--steps` more steps, what the objectives' token caches (CLOP's constructed
captions, S-ViLM's phrases: `data.text.TokenCache`) take per step against the plain tokenizer on the same
texts: what caching them buys. `--profile` then profiles `--steps` more steps of each recipe (torch.profiler)
and prints the milliseconds each operator takes a step, side by side: where a recipe's time goes that its FLOPs
do not explain. `--model CONFIG` layers a config file over every recipe (an architecture: what the objectives
cost there), and `--flops-only` counts the FLOPs without timing anything (a model too slow to time here).

    python benchmarks/objective_cost.py --data /tmp/demodata/structured       # the demo corpus
    python benchmarks/objective_cost.py                                        # a small corpus in a temp dir
    python benchmarks/objective_cost.py --unbatched --threads 1               # batched vs unbatched passes
    python benchmarks/objective_cost.py --recipes clop --variants "" "clop.kcl_negatives_train_text=false"
    python benchmarks/objective_cost.py --recipes clop svilm --tokens          # what the token caches buy
    python benchmarks/objective_cost.py --recipes svilm_cut4 --profile         # its operators beside the baseline's
    python benchmarks/objective_cost.py --model configs/model/vit_b16.yaml --batch 2 --flops-only  # at ViT-B/16
"""

from __future__ import annotations

import argparse
import gc
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from structvl.config import ConfigError, load_config
from structvl.data.text import TokenCache
from structvl.engine.pretrain import build_objective_context, build_train_data, seed_everything
from structvl.lab.demo import ABLATIONS
from structvl.lab.demo import RECIPES as DEMO_RECIPES
from structvl.models.text_encoder import build_tokenizer
from structvl.models.video_text import build_model
from structvl.objectives.pretraining import PretrainingModule
from structvl.runtime.precision import autocast_dtype, dtype_name

# benchmarks/ is on sys.path when run as a script
from train_step import Variant, count_step_flops, make_step, round_ratio, run_rounds

# The demo's recipes and ablations (name -> config file); the five recipes run by default.
RECIPES = {name: config for name, (_, config) in {**DEMO_RECIPES, **ABLATIONS}.items()}
EXTRA_PASSES = {"baseline": "-", "clop": "text: constructed negatives",
                "clop_grounded": "text: up to 8 action swaps a caption",
                "svilm": "video: cut-and-paste clips; text: phrases",
                "clover": "video: masked; text: masked; fusion x2", "all": "all of the above",
                "clop_neg1": "text: 1 constructed negative a caption",
                "clop_neg1_action": "text: 1 action swap a caption",
                "clop_neg2_action": "text: 2 action swaps a caption",
                "svilm_cut4": "video: 4 cut-and-paste clips; text: phrases",
                "clover_mask6": "video: 6 masked; text: 6 masked; fusion x2 of 6",
                "all_lean": "all of the above, lean",
                "all_lean_action": "all of the above, lean, 2 action swaps"}


class TimedTokens:
    """Stands in for an objective's TokenCache (`--tokens`): each call is answered by the cache, and the seconds
    it took are added up beside those the plain tokenizer takes on the same texts (what the step would pay
    without the cache). Installed only for steps of their own, after the timed ones."""

    def __init__(self, cache: TokenCache):
        self.cache, self.cached, self.plain, self.texts = cache, 0.0, 0.0, 0

    def __call__(self, texts):
        start = time.perf_counter()
        self.cache.tokenizer(texts)
        middle = time.perf_counter()
        out = self.cache(texts)
        self.cached += time.perf_counter() - middle
        self.plain += middle - start
        self.texts += len(texts)
        return out


def token_cache_cost(module, step, steps: int) -> dict | None:
    """ms per step in the objectives' token caches and in the plain tokenizer on the same texts, over `steps`
    steps (the caches already warm from the timed steps, as in training); None when no objective has one."""
    owners = [m for m in module.modules() if isinstance(getattr(m, "tokens", None), TokenCache)]
    if not owners:
        return None
    timed = [TimedTokens(m.tokens) for m in owners]
    for owner, proxy in zip(owners, timed):
        owner.tokens = proxy
    try:
        for _ in range(steps):
            step()
    finally:
        for owner, proxy in zip(owners, timed):
            owner.tokens = proxy.cache
    return {"cached_ms": 1e3 * sum(t.cached for t in timed) / steps,
            "plain_ms": 1e3 * sum(t.plain for t in timed) / steps, "texts": sum(t.texts for t in timed) / steps}


def real_batch(cfg, data: Path, batch_size: int, run_dir: Path):
    """The first `batch_size` training clips, collated with their knowledge, and the objective context."""
    tokenizer = build_tokenizer(cfg.model.text)
    context = build_objective_context(cfg, tokenizer, run_dir, is_main=True)
    dataset, collator = build_train_data(cfg, tokenizer, knowledge=context.knowledge or None)
    return collator([dataset[i] for i in range(batch_size)]), context


@dataclass
class Recipe(Variant):
    """A recipe (and `--variants` overrides, batched passes or not) built on the shared batch and warmed up."""
    module: PretrainingModule | None = None
    overrides: str = ""
    batched: bool = True
    objectives: list = field(default_factory=list)


def build(name: str, data: Path, batch_size: int, work: Path, precision: str, batch_passes: bool = True,
          overrides: str = "", model: str | None = None) -> Recipe:
    files = [RECIPES[name]] + ([model] if model else [])
    cfg = load_config(files, [f"data.root={data}", f"train.precision={precision}", *overrides.split()])
    run_dir = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=work))
    batch, context = real_batch(cfg, data, batch_size, run_dir)
    seed_everything(0)
    module = PretrainingModule(build_model(cfg.model), cfg, context, batch_passes=batch_passes).train()
    dtype = autocast_dtype(cfg.train.precision, "cpu")
    step = make_step(module, cfg, batch, dtype)
    flops, ran, _ = count_step_flops(step, module)  # also the warm-up step
    _, logs = step()
    return Recipe(name, RECIPES[name], dtype_name(dtype), batch_size, step, flops, ran, module=module,
                  overrides=overrides, batched=batch_passes, objectives=sorted({k.split("/")[0] for k in logs
                                                                                if "/" in k}))


def operator_profile(recipes: list[Variant], steps: int, top: int = 20) -> None:
    """ms per step in each operator (torch.profiler's self CPU time) over `steps` more steps of every recipe,
    side by side: where a recipe's time goes beyond the baseline's. The `top` operators by their largest figure."""
    times = {}
    for r in recipes:
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            for _ in range(steps):
                r.step()
        times[r.name + (f" {r.overrides}" if r.overrides else "")] = {
            e.key: e.self_cpu_time_total / 1e3 / steps for e in prof.key_averages()}
    names = sorted(set().union(*times.values()), key=lambda k: -max(t.get(k, 0.0) for t in times.values()))
    print(f"\n{'operator (self CPU ms/step)':<60}" + "".join(f"{n[:16]:>18}" for n in times))
    for op in ["total"] + names[:top]:
        row = [sum(t.values()) if op == "total" else t.get(op, 0.0) for t in times.values()]
        print(f"{op[:60]:<60}" + "".join(f"{x:>18.1f}" for x in row), flush=True)


def print_flops(recipes: list[Recipe], model: str | None) -> None:
    """GFLOP per step (forward + backward) of each recipe and its ratio over the baseline's: `--flops-only`."""
    base = next(r for r in recipes if r.name == "baseline" and r.batched)
    print(f"{'recipe':<20}{'GFLOP/step':>12}{'x baseline':>12}  extra passes / objectives"
          + (f"   (model: {model})" if model else ""))
    for r in [r for r in recipes if r.batched]:
        print(f"{r.name:<20}{r.model_flops / 1e9:>12.1f}{r.model_flops / base.model_flops:>12.2f}  "
              f"{EXTRA_PASSES.get(r.name, '-')}  [{', '.join(r.objectives)}]"
              + (f"  + {r.overrides}" if r.overrides else ""), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=None, help="structured corpus directory (default: a 64-clip one in a temp dir)")
    ap.add_argument("--recipes", nargs="+", default=list(DEMO_RECIPES), choices=list(RECIPES))
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3, help="interleaved rounds of timings; the medians are reported")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                    help="train.precision for every recipe (auto: what the trainer picks on this machine)")
    ap.add_argument("--unbatched", action="store_true",
                    help="also time each recipe with its extra passes in calls of their own")
    ap.add_argument("--tokens", action="store_true",
                    help="also time the objectives' token caches against the plain tokenizer on the same texts")
    ap.add_argument("--profile", action="store_true",
                    help="then profile --steps more steps of each recipe: ms per step in each operator, side by side")
    ap.add_argument("--model", default=None, metavar="CONFIG",
                    help="a config file layered over every recipe, e.g. configs/model/vit_b16.yaml: what the "
                         "objectives cost at that architecture")
    ap.add_argument("--flops-only", action="store_true",
                    help="count each recipe's GFLOP per step and its ratio over the baseline's, without timing "
                         "(for a model too slow to time on this machine)")
    ap.add_argument("--variants", nargs="*", default=[""], metavar="OVERRIDES",
                    help="config overrides (space-separated in one string; \"\" = as configured): every recipe but "
                         "the baseline is measured once per variant, side by side")
    args = ap.parse_args()
    if args.model:
        try:  # a file, or a shipped config by name ("model/vit_b16"); a missing or wrong one ends here, in one line
            load_config([RECIPES["baseline"], args.model])
        except ConfigError as err:
            ap.error(f"--model: {err}")
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = Path(args.data) if args.data else work / "corpus"
        if not args.data:
            from structvl.lab.synth import generate_corpus
            generate_corpus(data, num_clips=max(64, args.batch * 2), num_untrimmed=0, seed=0)
        names = ["baseline"] + [r for r in args.recipes if r != "baseline"]
        timing = "" if args.flops_only else f"steps={args.steps}  rounds={args.repeats} (median)  "
        print(f"threads={args.threads}  batch={args.batch}  {timing}corpus={data}", flush=True)
        recipes = []
        for name in names:
            for variant in [""] if name == "baseline" else args.variants:
                for batched in [True, False] if args.unbatched else [True]:
                    recipes.append(build(name, data, args.batch, work, args.precision, batched, variant, args.model))
                    if args.flops_only:  # counted: let the model and its optimizer go before the next is built
                        recipes[-1].module = recipes[-1].step = None
                        gc.collect()
        if args.flops_only:
            print_flops(recipes, args.model)
            return
        peaks = run_rounds(recipes, args.repeats, peak_seconds=2.0, steps=args.steps)
        header = (f"{'recipe':<16}{'dtype':>6}{'s/step':>9}{'x baseline':>12}{'GFLOP/step':>12}{'x baseline':>12}"
                  f"{'MFU':>7}{'HFU':>7}"
                  + (f"{'unbatched s/step':>18}{'x baseline':>12}{'GFLOP/step':>12}" if args.unbatched else "")
                  + f"{'params (M)':>12}  extra passes / objectives")
        print(header)
        print("-" * len(header))
        med = statistics.median
        base = {r.batched: r for r in recipes if r.name == "baseline"}
        for r in [r for r in recipes if r.batched]:
            mfu = med(r.mfus)
            line = (f"{r.name:<16}{r.precision:>6}{med(r.times):>9.2f}{round_ratio(r, base[True]):>12.2f}"
                    f"{r.model_flops / 1e9:>12.1f}{r.model_flops / base[True].model_flops:>12.2f}"
                    f"{mfu:>7.1%}{mfu * r.run_flops / r.model_flops:>7.1%}")
            if args.unbatched:
                u = next(u for u in recipes if not u.batched and (u.name, u.overrides) == (r.name, r.overrides))
                line += f"{med(u.times):>18.2f}{round_ratio(u, base[False]):>12.2f}{u.model_flops / 1e9:>12.1f}"
            params = sum(p.numel() for p in r.module.parameters() if p.requires_grad) / 1e6
            print(line + f"{params:>12.1f}  {EXTRA_PASSES.get(r.name, '-')}  [{', '.join(r.objectives)}]"
                  + (f"  + {r.overrides}" if r.overrides else ""), flush=True)
            t = token_cache_cost(r.module, r.step, args.steps) if args.tokens else None
            if t:
                print(f"{'':<16}token caches: {t['cached_ms']:.2f} ms/step for {t['texts']:.0f} texts; the plain "
                      f"tokenizer on the same texts {t['plain_ms']:.2f} ms ({t['plain_ms'] / t['cached_ms']:.1f}x, "
                      f"{t['plain_ms'] / 1e3 / med(r.times):.2%} of the step)", flush=True)
        for dtype, values in peaks.items():
            print(f"matmul peak {dtype} (2048^3, median of the {len(values)} rounds' bursts): "
                  f"{med(values) / 1e9:.0f} GFLOP/s")
        if args.profile:
            operator_profile([r for r in recipes if r.batched], args.steps)


if __name__ == "__main__":
    main()
