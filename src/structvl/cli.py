"""The `structvl` command. Each subcommand is a thin adapter: parse arguments, call one library function.

Heavy imports (torch, spaCy, PyAV) happen inside the handlers so `structvl --help` stays instant.
"""

from __future__ import annotations

import argparse
import json
import sys

DOWNSTREAM_TASKS = ["retrieval", "mcqa", "openqa", "recognition", "localization"]  # structvl.tasks.task_config.TASKS
ANNOTATION_FORMATS = [
    "jsonl", "msrvtt", "webvid", "msvd", "activitynet", "didemo", "kinetics", "ucf101", "hmdb51",
    "mcqa", "openqa", "nextqa", "tgifqa", "activitynetqa", "localization",
]


# ---------------------------------------------------------------- data commands
def _cmd_synth(args: argparse.Namespace) -> int:
    from structvl.lab.synth import generate_corpus

    summary = generate_corpus(
        args.out, num_clips=args.clips, seed=args.seed, holdout_compositions=args.holdout_compositions,
        size=args.size, num_frames=args.frames, fps=args.fps, num_untrimmed=args.untrimmed,
        workers=args.workers,
    )
    print(json.dumps(summary, indent=2))
    return 0


def _cmd_knowledge(args: argparse.Namespace) -> int:
    from structvl.data.knowledge import build_knowledge_cli

    return build_knowledge_cli(args.annotations, fmt=args.format, cache_dir=args.cache, top_k=args.top_k,
                               batch_size=args.batch_size, vocab_out=args.vocab_out)


def _cmd_data_check(args: argparse.Namespace) -> int:
    from structvl.data.check import check_dataset, format_report

    report = check_dataset(args.format, args.annotations, args.videos, backend=args.backend,
                           workers=args.workers)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0 if report["ok"] else 1


def _cmd_data_prepare(args: argparse.Namespace) -> int:
    from structvl.data.prepare import prepare_videos

    summary = prepare_videos(args.src, args.out, short_side=args.short_side, fps=args.fps,
                             workers=args.workers, crf=args.crf)
    print(json.dumps(summary, indent=2))
    return 0 if not summary.get("failed") else 1


def _cmd_data_shard(args: argparse.Namespace) -> int:
    from structvl.data.formats import read_annotations
    from structvl.data.shards import write_shards

    records = read_annotations(args.format, args.annotations)
    missing: list[dict] = []
    shards = write_shards(records, args.videos, args.out, max_count=args.max_count, missing=missing)
    print(json.dumps({"records": len(records), "samples": len(records) - len(missing), "shards": shards,
                      "missing": missing}, indent=2))
    return 0 if not missing else 1


def _add_data_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("synth", help="generate the embedded structured video-text corpus",
                       description="Write the procedurally generated structured corpus: real H.264 mp4 clips, "
                                   "annotations in the native JSONL and MSR-VTT layouts, and the evaluation sets "
                                   "(retrieval, hard negatives, MC/open QA, action labels, localization).")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--clips", type=int, default=2000, help="number of trimmed clips over all splits")
    p.add_argument("--untrimmed", type=int, default=200, help="number of untrimmed multi-segment videos")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--holdout-compositions", action="store_true",
                   help="keep some colour-shape compositions out of train (compositional generalisation test)")
    p.add_argument("--size", type=int, default=64, help="frame width and height in pixels")
    p.add_argument("--frames", type=int, default=16, help="frames per trimmed clip")
    p.add_argument("--fps", type=int, default=8)
    p.add_argument("--workers", type=int, default=2)
    p.set_defaults(func=_cmd_synth)

    p = sub.add_parser("knowledge", help="parse captions into structural knowledge and cache it",
                       description="Run spaCy over every caption of an annotation file (batched), extract noun "
                                   "phrases, objects, attributes, actions and relations, cache them on disk keyed by "
                                   "caption hash, and print the top-k vocabularies.")
    p.add_argument("annotations", help="annotation file")
    p.add_argument("--format", choices=ANNOTATION_FORMATS, default="jsonl")
    p.add_argument("--cache", default=None, help="cache directory (default: beside the annotation file)")
    p.add_argument("--top-k", type=int, default=100, help="vocabulary size per knowledge type")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--vocab-out", default=None, help="write the vocabularies to this JSON file")
    p.set_defaults(func=_cmd_knowledge)

    data = sub.add_parser("data", help="check or prepare a dataset").add_subparsers(dest="data_cmd", required=True)
    p = data.add_parser("check", help="read annotations as the trainer would and probe every video",
                        description="Read an annotation file with the trainer's reader, probe every referenced video, "
                                    "and report records, videos, captions per video, missing and undecodable files "
                                    "(with reasons) and duration/fps/resolution statistics. Exit code 1 if any "
                                    "video is missing or corrupt.")
    p.add_argument("annotations")
    p.add_argument("--format", choices=ANNOTATION_FORMATS, required=True)
    p.add_argument("--videos", required=True, help="root directory the annotation's video paths are relative to")
    p.add_argument("--backend", choices=["pyav", "decord"], default="pyav")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--json", action="store_true", help="print one JSON object (records, videos, missing, corrupt, ok)")
    p.set_defaults(func=_cmd_data_check)

    p = data.add_parser("prepare", help="re-encode raw videos for fast training-time decoding",
                        description="Re-encode every video under SRC_DIR into OUT_DIR: shorter side resized, fps "
                                    "lowered, dense keyframes so seeking is cheap. Parallel, resumable (finished "
                                    "files are skipped), reports the files it could not read.")
    p.add_argument("src")
    p.add_argument("out")
    p.add_argument("--short-side", type=int, default=256)
    p.add_argument("--fps", type=float, default=8)
    p.add_argument("--crf", type=int, default=23, help="x264 quality (lower is better)")
    p.add_argument("--workers", type=int, default=2)
    p.set_defaults(func=_cmd_data_prepare)

    p = data.add_parser("shard", help="pack annotated videos into webdataset tar shards",
                        description="Read an annotation file with the trainer's reader and write each record's video "
                                    "file (mp4 member) and annotation (json member) into webdataset tar shards of at "
                                    "most --max-count samples, for ShardedVideoTextDataset. Missing or empty videos "
                                    "are left out and listed; exit code 1 if there were any.")
    p.add_argument("annotations")
    p.add_argument("--format", choices=ANNOTATION_FORMATS, required=True)
    p.add_argument("--videos", required=True, help="root directory the annotation's video paths are relative to")
    p.add_argument("--out", required=True, help="shard path pattern, e.g. shards/train-%%06d.tar")
    p.add_argument("--max-count", type=int, default=1000, help="samples per shard")
    p.set_defaults(func=_cmd_data_shard)


# ---------------------------------------------------------------- training and evaluation
def _cmd_pretrain(args: argparse.Namespace) -> int:
    from structvl.engine.pretrain import pretrain_from_cli

    return pretrain_from_cli(args)


def _cmd_eval(args: argparse.Namespace) -> int:
    if args.task not in ("retrieval", "hard_negative"):  # the downstream tasks' frozen-encoder protocols
        from structvl.tasks.downstream import downstream_from_cli

        return downstream_from_cli(args, finetune=False)
    from structvl.tasks.evaluate import evaluate_from_cli

    return evaluate_from_cli(args)


def _cmd_finetune(args: argparse.Namespace) -> int:
    from structvl.tasks.downstream import downstream_from_cli

    return downstream_from_cli(args, finetune=True)


def _cmd_demo(args: argparse.Namespace) -> int:
    from structvl.lab.demo import run_demo

    recipes = [r.strip() for r in args.recipes.split(",")] if args.recipes else None
    return run_demo(out=args.out, quick=args.quick, data=args.data, seeds=args.seeds, recipes=recipes,
                    overrides=args.overrides)


def _add_train_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pretrain", help="pre-train a video-language model from a YAML config",
                       description="Pre-train from a config file; KEY=VALUE arguments override dotted config keys "
                                   "(e.g. optim.lr=3e-4 objectives.contrastive=1.0). Works unchanged under "
                                   "`torchrun --nproc-per-node K -m structvl pretrain ...`.")
    p.add_argument("--config", required=True)
    p.add_argument("--out", default=None, help="run directory (default: runs/<config name>)")
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--resume", action="store_true", help="continue from the run directory's last checkpoint")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    p.set_defaults(func=_cmd_pretrain)

    p = sub.add_parser("eval", help="evaluate a checkpoint on a downstream task",
                       description="Evaluate a run's checkpoint; prints a table and writes metrics.json.")
    p.add_argument("--task", choices=["retrieval", "hard_negative", *DOWNSTREAM_TASKS[1:], "all"], default="retrieval",
                   help="retrieval / hard_negative: zero-shot; mcqa, openqa, recognition, localization (or all of "
                        "--config's suite): the frozen-encoder protocol of --config")
    p.add_argument("--checkpoint", required=True, help="run directory or checkpoint directory")
    p.add_argument("--data", required=True, help="structured-corpus directory or annotation file")
    p.add_argument("--format", choices=ANNOTATION_FORMATS, default=None,
                   help="annotation format when --data is a file (default: the corpus's test split)")
    p.add_argument("--videos", default=None, help="video root for --data annotation files")
    p.add_argument("--out", default=None, help="metrics.json path (default: beside the checkpoint)")
    p.add_argument("--config", default="finetune/structured",
                   help="downstream protocol file (configs/finetune/*.yaml) for the downstream tasks")
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
    p.add_argument("--checkpoint", required=True, help="pre-trained run directory or checkpoint directory")
    p.add_argument("--config", default="finetune/structured", help="protocol file (configs/finetune/*.yaml)")
    p.add_argument("--data", default=None, help="dataset root (default: the protocol file's `root`)")
    p.add_argument("--out", default=None, help="directory for the fine-tuned runs (default: RUN/finetune)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="protocol overrides, e.g. retrieval.steps=50")
    p.set_defaults(func=_cmd_finetune)

    p = sub.add_parser("demo", help="the main job: synth corpus -> pre-train -> evaluate -> HTML report",
                       description="Generate the structured corpus if absent, pre-train each recipe (contrastive "
                                   "baseline, + CLOP, + S-ViLM, + Clover, all three) at the same budget, evaluate "
                                   "retrieval, hard negatives, the downstream suite and each paper's own measure, "
                                   "print one row per recipe and write an HTML report in the run directory.")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--data", default="data/structured", help="where the structured corpus lives (made if absent)")
    p.add_argument("--quick", action="store_true", help="same pipeline on a 400-clip corpus at 60 steps (smoke test)")
    p.add_argument("--seeds", type=int, default=1, help="seeds per recipe; the table shows mean ± std")
    p.add_argument("--recipes", default=None,
                   help="comma-separated recipe names (default: all; see structvl.lab.demo.RECIPES)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="config overrides for every recipe, e.g. train.max_steps=150")
    p.set_defaults(func=_cmd_demo)


# ---------------------------------------------------------------- search: using a trained model
def _needs_faiss() -> None:
    """index / search / serve need faiss (the `search` extra): say so in one line, not a traceback."""
    import importlib.util

    from structvl.config import ConfigError

    if importlib.util.find_spec("faiss") is None:
        raise ConfigError("faiss is not installed; install the search extra: pip install 'structvl[search]'")


def _cmd_extract(args: argparse.Namespace) -> int:
    from structvl.search.extract import ExtractOptions, extract_embeddings

    opts = ExtractOptions(segment=args.segment, stride=args.stride, temporal_views=args.temporal_views,
                          spatial_crops=args.spatial_crops, chunk_size=args.chunk_size, batch_size=args.batch_size,
                          workers=args.workers, dtype=args.dtype)
    summary = extract_embeddings(args.checkpoint, args.data, args.out, fmt=args.format, videos=args.videos,
                                 opts=opts, progress=not args.no_progress)
    print(json.dumps(summary, indent=2))
    return 0


def _cmd_index(args: argparse.Namespace) -> int:
    _needs_faiss()
    from structvl.search.index import index_embeddings

    info = index_embeddings(args.embeddings, args.out, index_key=args.index_key, target_recall=args.target_recall,
                            max_memory=int(args.max_memory * 2**30), queries=args.queries, seed=args.seed)
    print(json.dumps({k: v for k, v in info.items() if k != "request"}, indent=2))
    return 0


def _cmd_search(args: argparse.Namespace) -> int:
    _needs_faiss()
    from structvl.search.query import search_from_cli

    return search_from_cli(args)


def _cmd_serve(args: argparse.Namespace) -> int:
    _needs_faiss()
    from structvl.search.server import serve_from_cli

    return serve_from_cli(args)


def _add_search_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("extract", help="embed a video collection with a trained run (resumable)",
                       description="Embed every clip of a collection (an annotation file, a structured-corpus "
                                   "directory's evaluation split, or every video under a directory) with a run's "
                                   "video tower, and its captions with the text tower, into float16 chunks of "
                                   "--out. Rerun the same command to resume after a crash; unreadable videos are "
                                   "skipped and listed.")
    p.add_argument("--checkpoint", required=True, help="run directory or checkpoint directory")
    p.add_argument("--data", required=True, help="annotation file, structured-corpus directory or video directory")
    p.add_argument("--format", choices=ANNOTATION_FORMATS, default=None, help="annotation format (default: jsonl)")
    p.add_argument("--videos", default=None, help="video root for an annotation file (default: its folder)")
    p.add_argument("--out", required=True, help="embedding directory (made, or resumed)")
    p.add_argument("--segment", type=float, default=None,
                   help="cut windows longer than this many seconds into segments, one entry each")
    p.add_argument("--stride", type=float, default=None, help="seconds between segment starts (default: --segment)")
    p.add_argument("--temporal-views", type=int, default=1, help="shifted frame sets per clip, embeddings averaged")
    p.add_argument("--spatial-crops", type=int, default=1, help="crops along the longer side, embeddings averaged")
    p.add_argument("--chunk-size", type=int, default=4096, help="clips per chunk (the unit kept after a crash)")
    p.add_argument("--batch-size", type=int, default=None, help="clips per forward pass (default: eval.batch_size)")
    p.add_argument("--workers", type=int, default=None, help="loader workers (default: the run's data.num_workers)")
    p.add_argument("--dtype", choices=["float16", "float32"], default="float16", help="storage dtype")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_extract)

    p = sub.add_parser("index", help="build a faiss index over extracted embeddings",
                       description="Build a faiss index chosen by the collection's size (exact below 10,000 clips, "
                                   "inverted lists beyond, product quantization when --max-memory requires it), "
                                   "tune its search parameter to --target-recall, and write the parameters and the "
                                   "recall@10 measured against exact search on held-out queries to OUT/index.json.")
    p.add_argument("embeddings", help="embedding directory written by `structvl extract`")
    p.add_argument("--out", required=True, help="index directory")
    p.add_argument("--index-key", default=None, help="a faiss index factory string instead of the automatic choice")
    p.add_argument("--target-recall", type=float, default=0.99, help="recall@10 the search parameter must reach")
    p.add_argument("--max-memory", type=float, default=16.0, help="GiB the index may use")
    p.add_argument("--queries", type=int, default=1000, help="queries for tuning (half) and measuring (half)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_index)

    p = sub.add_parser("search", help="search an index by text",
                       description="Encode each query with the run's text tower and print the top-k clips with "
                                   "their scores (and segment times for segments of long videos).")
    p.add_argument("index", help="index directory written by `structvl index`")
    p.add_argument("queries", nargs="+", metavar="QUERY")
    p.add_argument("-k", type=int, default=10, help="results per query")
    p.add_argument("--json", action="store_true", help="print JSON for scripts")
    p.set_defaults(func=_cmd_search)

    p = sub.add_parser("serve", help="a local web page to search an index",
                       description="Serve a search page over an index: a query box, results as animated "
                                   "thumbnails with captions and scores, the videos themselves (only those indexed, "
                                   "from the indexed root). Binds to 127.0.0.1 unless --host says otherwise.")
    p.add_argument("index", help="index directory written by `structvl index`")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8765, help="0 picks a free port")
    p.set_defaults(func=_cmd_serve)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="structvl", description=__import__("structvl").__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    _add_data_commands(sub)
    _add_train_commands(sub)
    _add_search_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> None:
    from structvl.config import ConfigError
    from structvl.data.records import AnnotationError

    args = build_parser().parse_args(argv)
    try:
        code = args.func(args)
    except (AnnotationError, ConfigError, FileNotFoundError) as e:
        # A user's file or config is wrong: say which and where, without a traceback.
        print(f"structvl {args.command}: error: {e}", file=sys.stderr)
        code = 2
    sys.exit(code)
