"""The `structvl` command. Each subcommand is a thin adapter: parse arguments, call one library function.

The only module that imports the lab. Each handler imports what its command runs when it runs (`# lazy:`
imports): `structvl --help` and argument errors must answer at once, without loading torch, PyAV and spaCy.

A user's mistake (an argument out of range, a path that is not there or cannot be written, a config key
outside what it allows, a malformed annotation) is one line on stderr naming it, with exit code 2, before
any work starts; a traceback means a bug. `structvl --debug ...` shows the traceback of a user error too.

The file is longer than most (~530 lines) because it lists every subcommand's arguments, grouped as data,
training and search commands, each handler a few lines; argument types and checks are in `cli_args.py`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from structvl.cli_args import (
    OneLineParser,
    existing_dir,
    existing_path,
    number,
    output_dir,
    output_file,
    shard_pattern,
)

DOWNSTREAM_TASKS = ["retrieval", "mcqa", "openqa", "recognition", "localization"]  # structvl.tasks.task_config.TASKS
ANNOTATION_FORMATS = [
    "jsonl", "msrvtt", "webvid", "msvd", "activitynet", "didemo", "kinetics", "ucf101", "hmdb51",
    "mcqa", "openqa", "nextqa", "tgifqa", "activitynetqa", "localization", "howto100m", "imagetext",
]


# ---------------------------------------------------------------- data commands
def _shard_spec(text: str) -> str:
    """--shard i/n, checked by argparse (one line and exit code 2 on a bad value)."""
    try:
        index, count = (int(x) for x in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected i/n such as 0/8, got {text!r}") from None
    if not 0 <= index < count:
        raise argparse.ArgumentTypeError(f"need 0 <= i < n, got {text!r}")
    return text


def _cmd_synth(args: argparse.Namespace) -> int:
    from structvl.lab.synth import generate_corpus  # lazy

    summary = generate_corpus(
        args.out, num_clips=args.clips, seed=args.seed, holdout_compositions=args.holdout_compositions,
        size=args.size, num_frames=args.frames, fps=args.fps, num_untrimmed=args.untrimmed,
        workers=args.workers, overwrite=args.overwrite, hint="pass --overwrite to replace it",
    )
    print(json.dumps(summary, indent=2))
    return 0


def _cmd_knowledge(args: argparse.Namespace) -> int:
    from structvl.config import ConfigError  # lazy
    from structvl.data.knowledge.cache import KnowledgeCache  # lazy
    from structvl.data.knowledge.corpus import build_knowledge_cli  # lazy

    if args.merge:  # caches parsed on several machines -> this one
        with KnowledgeCache(args.cache or ".knowledge_cache") as cache:
            for other in args.merge:
                print(f"{other}: merged {cache.merge_from(other)} knowledge rows into {cache.path}")
        return 0
    options = {"top_k": args.top_k, "swaps": None, "min_count": 1, "exclude": None}
    if args.config is not None and args.annotations is not None and "=" in args.annotations \
            and not Path(args.annotations).exists():  # `--config C key=value`: the first override, not a file
        args.overrides, args.annotations = [args.annotations, *args.overrides], None
    annotations, fmt, cache_dir = args.annotations, args.format, args.cache
    if args.config is not None:  # exactly what `structvl pretrain --config` will read: its corpus, cache, vocabulary, swaps
        from structvl.config import load_config  # lazy
        from structvl.objectives import OBJECTIVES  # lazy

        cfg = load_config(args.config, args.overrides)
        root = Path(cfg.data.root)
        annotations = annotations or root / cfg.data.train
        fmt = cfg.data.format if args.annotations is None else fmt
        cache_dir = cache_dir or cfg.knowledge.cache_dir or root / "knowledge_cache"
        hooks = [getattr(OBJECTIVES[name], "knowledge_swaps", None) for name, w in cfg.objectives.items() if w > 0]
        options = {"top_k": dict(cfg.knowledge.top_k), "min_count": cfg.knowledge.min_count,
                   "exclude": cfg.knowledge.exclude,
                   "swaps": next((s for hook in hooks if hook is not None and (s := hook(cfg)) is not None), None)}
    elif args.overrides:
        raise ConfigError("KEY=VALUE overrides need --config")
    if annotations is None:
        raise ConfigError("argument annotations: give an annotation file or --config")
    if not Path(annotations).exists():
        raise ConfigError(f"argument annotations: {str(annotations)!r} does not exist")
    return build_knowledge_cli(annotations, fmt=fmt, cache_dir=cache_dir, batch_size=args.batch_size,
                               vocab_out=args.vocab_out, n_process=args.processes, shard=args.shard,
                               wait=args.wait, **options)


def _cmd_data_check(args: argparse.Namespace) -> int:
    from structvl.data.check import check_dataset, format_report  # lazy

    report = check_dataset(args.format, args.annotations, args.videos, backend=args.backend,
                           workers=args.workers, allow_outside_root=args.allow_outside_root)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0 if report["ok"] else 1


def _cmd_data_prepare(args: argparse.Namespace) -> int:
    from structvl.config import ConfigError  # lazy
    from structvl.data.prepare import prepare_videos  # lazy

    src, out = Path(args.src).resolve(), Path(args.out).resolve()
    if out == src or src in out.parents:
        raise ConfigError(f"argument out: {args.out!r} lies inside the source directory {args.src!r}; the copies "
                          "would be read as sources on the next run")
    summary = prepare_videos(args.src, args.out, short_side=args.short_side, fps=args.fps,
                             workers=args.workers, crf=args.crf)
    print(json.dumps(summary, indent=2))
    return 0 if not summary.get("failed") else 1


def _cmd_data_shard(args: argparse.Namespace) -> int:
    from structvl.data.formats import read_annotations  # lazy
    from structvl.data.shard_writer import write_shards  # lazy

    records = read_annotations(args.format, args.annotations)
    missing: list[dict] = []
    shards = write_shards(records, args.videos, args.out, max_count=args.max_count, missing=missing,
                          allow_outside_root=args.allow_outside_root)
    print(json.dumps({"records": len(records), "samples": len(records) - len(missing), "shards": shards,
                      "missing": missing}, indent=2))
    return 0 if not missing else 1


def _add_data_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("synth", help="generate the embedded structured video-text corpus",
                       description="Write the procedurally generated structured corpus: real H.264 mp4 clips, "
                                   "annotations in the native JSONL and MSR-VTT layouts, and the evaluation sets "
                                   "(retrieval, hard negatives, MC/open QA, action labels, localization).")
    p.add_argument("--out", required=True, type=output_dir, help="output directory")
    p.add_argument("--clips", type=number(1, 10**7), default=2000, help="number of trimmed clips over all splits")
    p.add_argument("--untrimmed", type=number(0, 10**6), default=200,
                   help="number of untrimmed multi-segment videos")
    p.add_argument("--seed", type=number(0, 2**32 - 1), default=0)
    p.add_argument("--holdout-compositions", action="store_true",
                   help="keep some colour-shape compositions out of train (compositional generalisation test)")
    p.add_argument("--size", type=number(16, 1024), default=64, help="frame width and height in pixels")
    p.add_argument("--frames", type=number(2, 1000), default=16, help="frames per trimmed clip")
    p.add_argument("--fps", type=number(1, 240), default=8)
    p.add_argument("--workers", type=number(1, 256), default=2)
    p.add_argument("--overwrite", action="store_true",
                   help="replace a corpus at --out generated with other arguments (refused without it)")
    p.set_defaults(func=_cmd_synth)

    p = sub.add_parser("knowledge", help="parse captions into structural knowledge and cache it",
                       description="Run spaCy over every caption of an annotation file (batched, on --processes "
                                   "cores), extract noun phrases, objects, attributes, actions and relations, cache them "
                                   "on disk keyed by caption hash, count the corpus (the vocabularies a training run "
                                   "reads) and, with --config of a CLOP run, build and cache its swapped captions. "
                                   "--shard i/n splits the work across processes or machines writing one cache.")
    p.add_argument("annotations", nargs="?", default=None,  # or the first KEY=VALUE with --config: not checked here
                   help="annotation file (default with --config: the config's data.root/data.train)")
    p.add_argument("--config", default=None, help="a run config: its training annotations, knowledge cache, "
                                                   "vocabulary options and swap settings")
    p.add_argument("--format", choices=ANNOTATION_FORMATS, default="jsonl")
    p.add_argument("--cache", type=output_dir, default=None,
                   help="cache directory (default: the config's, else beside the annotations)")
    p.add_argument("--top-k", type=number(1, 10**6), default=100,
                   help="vocabulary size per knowledge type (without --config)")
    p.add_argument("--batch-size", type=number(1, 10**5), default=256, help="spaCy's batch size")
    p.add_argument("--processes", type=number(1, 1024), default=1, help="parsing processes")
    p.add_argument("--shard", default="0/1", type=_shard_spec,
                   help="i/n: this process parses the i-th of n parts (by video)")
    p.add_argument("--wait", type=number(0, 10**6, integer=False), default=0.0,
                   help="seconds to wait for the other shards' counts before building the swaps (default: do not wait; "
                        "run the command again once they finish)")
    p.add_argument("--merge", nargs="+", type=existing_dir, default=None, metavar="CACHE_DIR",
                   help="instead of parsing: merge these cache directories (e.g. from other machines) into --cache")
    p.add_argument("--vocab-out", type=output_file, default=None, help="write the vocabularies to this JSON file")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides (with --config)")
    p.set_defaults(func=_cmd_knowledge)

    data = sub.add_parser("data", help="check or prepare a dataset").add_subparsers(dest="data_cmd", required=True)
    p = data.add_parser("check", help="read annotations as the trainer would and probe every video",
                        description="Read an annotation file with the trainer's reader, probe every referenced video, "
                                    "and report records, videos, captions per video, missing and undecodable files "
                                    "(with reasons) and duration/fps/resolution statistics. Exit code 1 if any "
                                    "video is missing, corrupt or outside the video root, or no record is usable.")
    p.add_argument("annotations", type=existing_path)
    p.add_argument("--format", choices=ANNOTATION_FORMATS, required=True)
    p.add_argument("--videos", required=True, type=existing_dir,
                   help="root directory the annotation's video paths are relative to")
    p.add_argument("--backend", choices=["pyav", "decord"], default="pyav")
    p.add_argument("--workers", type=number(1, 256), default=2)
    p.add_argument("--json", action="store_true", help="print one JSON object (records, videos, missing, corrupt, ok)")
    p.add_argument("--allow-outside-root", action="store_true",
                   help="read videos the annotations place outside --videos (absolute paths, '..', symlinks)")
    p.set_defaults(func=_cmd_data_check)

    p = data.add_parser("prepare", help="re-encode raw videos for fast training-time decoding",
                        description="Re-encode every video under SRC_DIR into OUT_DIR: shorter side resized, fps "
                                    "lowered, dense keyframes so seeking is cheap. Parallel, resumable (finished "
                                    "files are skipped), reports the files it could not read.")
    p.add_argument("src", type=existing_dir)
    p.add_argument("out", type=output_dir)
    p.add_argument("--short-side", type=number(16, 8192), default=256)
    p.add_argument("--fps", type=number(0, 240, integer=False, lo_open=True), default=8)
    p.add_argument("--crf", type=number(0, 51), default=23, help="x264 quality (lower is better)")
    p.add_argument("--workers", type=number(1, 256), default=2)
    p.set_defaults(func=_cmd_data_prepare)

    p = data.add_parser("shard", help="pack annotated videos into webdataset tar shards",
                        description="Read an annotation file with the trainer's reader and write each record's video "
                                    "file (mp4 member) and annotation (json member) into webdataset tar shards of at "
                                    "most --max-count samples, for ShardedVideoTextDataset. Missing or empty videos "
                                    "are left out and listed; exit code 1 if there were any.")
    p.add_argument("annotations", type=existing_path)
    p.add_argument("--format", choices=ANNOTATION_FORMATS, required=True)
    p.add_argument("--videos", required=True, type=existing_dir,
                   help="root directory the annotation's video paths are relative to")
    p.add_argument("--out", required=True, type=shard_pattern, help="shard path pattern, e.g. shards/train-%%06d.tar")
    p.add_argument("--max-count", type=number(1, 10**7), default=1000, help="samples per shard")
    p.add_argument("--allow-outside-root", action="store_true",
                   help="pack videos the annotations place outside --videos (absolute paths, '..', symlinks)")
    p.set_defaults(func=_cmd_data_shard)


# ---------------------------------------------------------------- training and evaluation
def _cmd_pretrain(args: argparse.Namespace) -> int:
    import logging
    import os

    from structvl.config import ConfigError, check_device, load_config  # lazy: see the module docstring
    from structvl.lab.synth import ensure_corpus  # lazy
    from structvl.tasks.evaluate import format_metrics_table, pretrain_and_evaluate  # lazy

    overrides = list(args.overrides)
    if args.max_steps is not None:
        overrides.append(f"train.max_steps={args.max_steps}")
    if args.seed is not None:
        overrides.append(f"train.seed={args.seed}")
    cfg = load_config(args.config, overrides)
    check_device(cfg)
    annotations = Path(cfg.data.root) / cfg.data.train
    if not (cfg.data.synth or cfg.data.shards or cfg.data.mix or annotations.is_file()):  # before any work
        raise ConfigError(f"config key 'data.train': annotation file {annotations} does not exist (data.root "
                          f"{cfg.data.root!r}; data.synth: true generates the structured corpus there)")
    run_dir = Path(args.out or Path("runs") / cfg.name)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    metrics = pretrain_and_evaluate(cfg, run_dir, resume=args.resume, overwrite=args.overwrite,
                                    prepare_data=ensure_corpus if cfg.data.synth else None)
    if os.environ.get("RANK", "0") == "0":
        print(format_metrics_table(metrics))
        print(f"run directory: {run_dir}")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    if args.task not in ("retrieval", "hard_negative"):  # the downstream tasks' frozen-encoder protocols
        from structvl.tasks.downstream import downstream_from_cli  # lazy

        return downstream_from_cli(args, finetune=False)
    from structvl.tasks.evaluate import evaluate_from_cli  # lazy

    return evaluate_from_cli(args)


def _cmd_finetune(args: argparse.Namespace) -> int:
    from structvl.tasks.downstream import downstream_from_cli  # lazy

    return downstream_from_cli(args, finetune=True)


def _cmd_demo(args: argparse.Namespace) -> int:
    from structvl.config import ConfigError, load_config  # lazy
    from structvl.lab.demo import ABLATIONS, RECIPES, run_demo  # lazy
    from structvl.runtime.process import choose_allocator  # lazy

    recipes = [r.strip() for r in args.recipes.split(",")] if args.recipes else None
    known = {**RECIPES, **ABLATIONS}
    unknown = [r for r in recipes or [] if r not in known]
    if unknown:
        raise ConfigError(f"--recipes: {', '.join(unknown)} not known; known: {', '.join(known)}")
    for name in recipes or list(RECIPES):  # every recipe's config with the overrides, before any work
        load_config(known[name][1], list(args.overrides))
    try:
        allocator = choose_allocator(args.allocator)
    except ValueError as error:
        raise ConfigError(f"--allocator: {error}") from None
    return run_demo(out=args.out, quick=args.quick, data=args.data, seeds=args.seeds, recipes=recipes,
                    overrides=args.overrides, use_existing_data=args.use_existing_data,
                    overwrite_data=args.overwrite_data, split=args.split, generalize=args.generalize,
                    allocator=allocator)


def _add_train_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pretrain", help="pre-train a video-language model from a YAML config",
                       description="Pre-train from a config file; KEY=VALUE arguments override dotted config keys "
                                   "(e.g. optim.lr=3e-4 objectives.contrastive=1.0). Works unchanged under "
                                   "`torchrun --nproc-per-node K -m structvl pretrain ...`.")
    p.add_argument("--config", required=True, action="append",
                   help="config file; repeat it to combine files, later ones over earlier ones (e.g. --config "
                        "clover.yaml --config model/clip_vit_b16.yaml)")
    p.add_argument("--out", type=output_dir, default=None, help="run directory (default: runs/<config name>)")
    p.add_argument("--max-steps", type=number(1, 10**9), default=None)
    p.add_argument("--seed", type=number(0, 2**63 - 1), default=None)
    p.add_argument("--resume", action="store_true", help="continue from the run directory's last checkpoint")
    p.add_argument("--overwrite", action="store_true",
                   help="when --out holds another run, move it aside (to OUT.replaced-N) and start anew; "
                        "without --resume or --overwrite such a directory is refused")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    p.set_defaults(func=_cmd_pretrain)

    p = sub.add_parser("eval", help="evaluate a checkpoint on a downstream task",
                       description="Evaluate a run's checkpoint; prints a table and writes metrics.json.")
    p.add_argument("--task", choices=["retrieval", "hard_negative", *DOWNSTREAM_TASKS[1:], "all"], default="retrieval",
                   help="retrieval / hard_negative: zero-shot; mcqa, openqa, recognition, localization (or all of "
                        "--config's suite): the frozen-encoder protocol of --config")
    p.add_argument("--checkpoint", required=True, type=existing_path, help="run directory or checkpoint directory")
    p.add_argument("--data", required=True, type=existing_path, help="structured-corpus directory or annotation file")
    p.add_argument("--format", choices=ANNOTATION_FORMATS, default=None,
                   help="annotation format when --data is a file (default: the corpus's test split)")
    p.add_argument("--videos", type=existing_dir, default=None, help="video root for --data annotation files")
    p.add_argument("--out", type=output_file, default=None, help="metrics.json path (default: beside the checkpoint)")
    p.add_argument("--config", default="finetune/structured",
                   help="downstream protocol file (configs/finetune/*.yaml) for the downstream tasks")
    p.add_argument("--split", choices=["test", "val"], default=None,
                   help="the structured corpus's split to evaluate on (default: the run's eval.split); choices are "
                        "made on val, results reported on test")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="protocol overrides, e.g. openqa.epochs=5")
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser("finetune", help="fine-tune a checkpoint on a downstream task and evaluate it",
                       description="Run a downstream task's fine-tuning protocol from a pre-trained run: "
                                   "retrieval (contrastive fine-tuning, R@K/MdR/MnR both ways), mcqa / openqa "
                                   "(a trained scorer, through the fusion encoder when the model has one), "
                                   "recognition (full fine-tuning, multi-view top-1/top-5), localization (head on "
                                   "frozen sliding-window features, mAP@tIoU). Metrics are merged into the run's "
                                   "metrics.json and OUT/metrics.json.")
    p.add_argument("--task", choices=[*DOWNSTREAM_TASKS, "all"], required=True)
    p.add_argument("--checkpoint", required=True, type=existing_path,
                   help="pre-trained run directory or checkpoint directory")
    p.add_argument("--config", default="finetune/structured", help="protocol file (configs/finetune/*.yaml)")
    p.add_argument("--data", type=existing_dir, default=None, help="dataset root (default: the protocol file's `root`)")
    p.add_argument("--out", type=output_dir, default=None,
                   help="directory for the fine-tuned runs (default: RUN/finetune)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="protocol overrides, e.g. retrieval.steps=50")
    p.set_defaults(func=_cmd_finetune)

    p = sub.add_parser("demo", help="the main job: synth corpus -> pre-train -> evaluate -> HTML report",
                       description="Generate the structured corpus if absent, pre-train each recipe (contrastive "
                                   "baseline, + CLOP, + S-ViLM, + Clover, all three) at the same budget, evaluate "
                                   "retrieval, hard negatives, the downstream suite and each paper's own measure, "
                                   "print one row per recipe and write an HTML report in the run directory.")
    p.add_argument("--out", type=output_dir, default="runs/demo")
    p.add_argument("--data", type=output_dir, default="data/structured",
                   help="where the structured corpus lives (made if absent; a corpus generated there with other "
                        "arguments is refused unless one of the next two options says what to do)")
    p.add_argument("--use-existing-data", action="store_true",
                   help="run on the complete corpus at --data whatever arguments it was generated with")
    p.add_argument("--overwrite-data", action="store_true",
                   help="replace a corpus at --data generated with other arguments by the demo's own")
    p.add_argument("--quick", action="store_true", help="same pipeline on a 400-clip corpus at 60 steps (smoke test)")
    p.add_argument("--seeds", type=number(1, 100), default=1, help="seeds per recipe; the table shows mean ± std")
    p.add_argument("--split", choices=["test", "val"], default="test",
                   help="evaluation split: make every choice (weights, options, budgets, which ablation is a paper's "
                        "recipe) on val (runs and report in OUT-val); report test, once per recipe (default)")
    p.add_argument("--generalize", action="store_true",
                   help="also evaluate each trained model zero-shot (retrieval, hard negatives) on an unseen corpus "
                        "generated beside --data (DATA-unseen: the next seed, held-out colour-shape pairs)")
    p.add_argument("--recipes", default=None,
                   help="comma-separated recipe names (default: all; see structvl.lab.demo.RECIPES)")
    p.add_argument("--allocator", default="auto", choices=["auto", "glibc", "tcmalloc", "jemalloc"],
                   help="the malloc each run's process starts with: auto (tcmalloc where installed, else glibc), "
                        "glibc, tcmalloc or jemalloc; glibc keeps what a step frees and a run's memory grows over "
                        "its steps (docs/findings.md, \"Allocators\")")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="config overrides for every recipe, e.g. train.max_steps=150")
    p.set_defaults(func=_cmd_demo)


# ---------------------------------------------------------------- search: using a trained model
def _needs_faiss() -> None:
    """index / search / serve need faiss (the `search` extra): say so in one line, not a traceback."""
    import importlib.util

    from structvl.config import ConfigError  # lazy

    if importlib.util.find_spec("faiss") is None:
        raise ConfigError("faiss is not installed; install the search extra: pip install 'structvl[search]'")


def _cmd_extract(args: argparse.Namespace) -> int:
    from structvl.search.extract import ExtractOptions, extract_embeddings  # lazy

    opts = ExtractOptions(segment=args.segment, stride=args.stride, temporal_views=args.temporal_views,
                          spatial_crops=args.spatial_crops, chunk_size=args.chunk_size, batch_size=args.batch_size,
                          workers=args.workers, dtype=args.dtype)
    summary = extract_embeddings(args.checkpoint, args.data, args.out, fmt=args.format, videos=args.videos,
                                 opts=opts, progress=not args.no_progress)
    print(json.dumps(summary, indent=2))
    return 0


def _cmd_index(args: argparse.Namespace) -> int:
    _needs_faiss()
    from structvl.search.index import index_embeddings  # lazy

    info = index_embeddings(args.embeddings, args.out, index_key=args.index_key, target_recall=args.target_recall,
                            max_memory=int(args.max_memory * 2**30), queries=args.queries, seed=args.seed)
    print(json.dumps({k: v for k, v in info.items() if k != "request"}, indent=2))
    return 0


def _cmd_search(args: argparse.Namespace) -> int:
    _needs_faiss()
    from structvl.search.query import search_from_cli  # lazy

    return search_from_cli(args)


def _cmd_serve(args: argparse.Namespace) -> int:
    _needs_faiss()
    from structvl.search.server import serve_from_cli  # lazy

    return serve_from_cli(args)


def _add_search_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("extract", help="embed a video collection with a trained run (resumable)",
                       description="Embed every clip of a collection (an annotation file, a structured-corpus "
                                   "directory's evaluation split, or every video under a directory) with a run's "
                                   "video tower, and its captions with the text tower, into float16 chunks of "
                                   "--out. Rerun the same command to resume after a crash; unreadable videos are "
                                   "skipped and listed.")
    p.add_argument("--checkpoint", required=True, type=existing_path, help="run directory or checkpoint directory")
    p.add_argument("--data", required=True, type=existing_path, help="annotation file, structured-corpus directory or video directory")
    p.add_argument("--format", choices=ANNOTATION_FORMATS, default=None, help="annotation format (default: jsonl)")
    p.add_argument("--videos", type=existing_dir, default=None, help="video root for an annotation file (default: its folder)")
    p.add_argument("--out", required=True, type=output_dir, help="embedding directory (made, or resumed)")
    p.add_argument("--segment", type=number(0, 10**6, integer=False, lo_open=True), default=None,
                   help="cut windows longer than this many seconds into segments, one entry each")
    p.add_argument("--stride", type=number(0, 10**6, integer=False, lo_open=True), default=None, help="seconds between segment starts (default: --segment)")
    p.add_argument("--temporal-views", type=number(1, 64), default=1, help="shifted frame sets per clip, embeddings averaged")
    p.add_argument("--spatial-crops", type=number(1, 16), default=1, help="crops along the longer side, embeddings averaged")
    p.add_argument("--chunk-size", type=number(1, 10**7), default=4096, help="clips per chunk (the unit kept after a crash)")
    p.add_argument("--batch-size", type=number(1, 10**5), default=None, help="clips per forward pass (default: eval.batch_size)")
    p.add_argument("--workers", type=number(0, 256), default=None, help="loader workers (default: the run's data.num_workers)")
    p.add_argument("--dtype", choices=["float16", "float32"], default="float16", help="storage dtype")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_extract)

    p = sub.add_parser("index", help="build a faiss index over extracted embeddings",
                       description="Build a faiss index chosen by the collection's size (exact below 10,000 clips, "
                                   "inverted lists beyond, product quantization when --max-memory requires it), "
                                   "tune its search parameter to --target-recall, and write the parameters and the "
                                   "recall@10 measured against exact search on held-out queries to OUT/index.json.")
    p.add_argument("embeddings", type=existing_dir, help="embedding directory written by `structvl extract`")
    p.add_argument("--out", required=True, type=output_dir, help="index directory")
    p.add_argument("--index-key", default=None, help="a faiss index factory string instead of the automatic choice")
    p.add_argument("--target-recall", type=number(0, 1, integer=False, lo_open=True), default=0.99, help="recall@10 the search parameter must reach")
    p.add_argument("--max-memory", type=number(0, 10**6, integer=False, lo_open=True), default=16.0, help="GiB the index may use")
    p.add_argument("--queries", type=number(2, 10**7), default=1000, help="queries for tuning (half) and measuring (half)")
    p.add_argument("--seed", type=number(0, 2**32 - 1), default=0)
    p.set_defaults(func=_cmd_index)

    p = sub.add_parser("search", help="search an index by text",
                       description="Encode each query with the run's text tower and print the top-k clips with "
                                   "their scores (and segment times for segments of long videos).")
    p.add_argument("index", type=existing_dir, help="index directory written by `structvl index`")
    p.add_argument("queries", nargs="+", metavar="QUERY")
    p.add_argument("-k", type=number(1, 10**5), default=10, help="results per query")
    p.add_argument("--json", action="store_true", help="print JSON for scripts")
    p.set_defaults(func=_cmd_search)

    p = sub.add_parser("serve", help="a local web page to search an index",
                       description="Serve a search page over an index: a query box, results as animated "
                                   "thumbnails with captions and scores, the videos themselves (only those indexed, "
                                   "from the indexed root). Binds to 127.0.0.1 unless --host says otherwise.")
    p.add_argument("index", type=existing_dir, help="index directory written by `structvl index`")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=number(0, 65535), default=8765, help="0 picks a free port")
    p.set_defaults(func=_cmd_serve)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="structvl", description=__import__("structvl").__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of an error (a user's mistake is otherwise one line)")
    sub = parser.add_subparsers(dest="command", required=True)  # subcommand parsers are OneLineParsers too
    _add_data_commands(sub)
    _add_train_commands(sub)
    # --debug after the subcommand too; SUPPRESS keeps a subcommand from resetting one given before it.
    for command in _all_commands(parser):
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    _add_search_commands(sub)
    return parser


def _all_commands(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """Every (sub)command parser below `parser`, the `data` subcommands included."""
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for command in action.choices.values():
                found += [command, *_all_commands(command)]
    return found


def main(argv: list[str] | None = None) -> None:
    from structvl.config import ConfigError  # lazy
    from structvl.data.records import AnnotationError  # lazy
    from structvl.runtime.errors import RunStopped  # lazy

    # What a user's input can get wrong, as opposed to a bug: a config or annotation the checks refused, or a
    # file the operating system would not give (missing, unreadable, a disk that is full or read-only).
    user_errors = (AnnotationError, ConfigError, OSError)
    args = build_parser().parse_args(argv)
    command = " ".join(filter(None, ["structvl", args.command, getattr(args, "data_cmd", None)]))
    try:
        code = args.func(args)
    except user_errors as e:
        if args.debug:
            raise
        print(f"{command}: error: {_one_line(e, (AnnotationError, ConfigError))}", file=sys.stderr)
        code = 2
    except RunStopped as e:
        # The run could not go on without harm (non-finite numbers, a checkpoint write that failed): the
        # message says why and what was kept; not a bug, so no traceback.
        if args.debug:
            raise
        print(f"{command}: stopped: {_one_line(e, ())}", file=sys.stderr)
        code = 1
    sys.exit(code)


def _one_line(error: BaseException, ours: tuple) -> str:
    """The error's message on one line; an OSError that is not one of `ours` also names its file."""
    if isinstance(error, OSError) and error.strerror and not isinstance(error, ours):
        text = f"{error.strerror}: {error.filename}" if error.filename else error.strerror
    else:
        text = str(error) or type(error).__name__
    return " ".join(text.split())
