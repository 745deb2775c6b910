"""`generate_corpus`: plan, render and encode every video in parallel, then write all annotation files
and, last, the manifest `corpus.json`.

Validation: the corpus has always planned a val split (10% of the clips and untrimmed videos, `plan.split_sizes`),
each clip from its own random stream (corpus seed, kind, split, index) and in its own files
(videos/val_{k}.mp4, msrvtt/videos/video{N} with N of its own). Since version 1.1 it also carries test's whole
evaluation suite (retrieval, hard negatives, MC and open QA, and as before recognition, localization and dense
captions). Val was not drawn out of train, nor appended as new clips: either would have changed train's or test's
content (a re-split moves clips, appended clips shift the MSR-VTT numbering); writing val's sets from val's own
clips, and its MC items from a random stream of their own (`plan.STREAM_EVAL_VAL`), leaves every train and test
file byte-identical for the same arguments (tests/test_synth_validation.py checks the digests). No clip and no video
file is shared between splits: val's clips are disjoint from train's and test's by construction.

The manifest is the commit point. While a corpus is being written the directory holds an `.incomplete`
marker (naming the arguments) and no manifest, so a half-written corpus is never mistaken for a finished one.
A call whose arguments match an existing manifest returns at once without touching anything.

A call never deletes data it did not make: a directory holding a corpus generated with other arguments (a
manifest, or the marker of an unfinished one), or files of the corpus layout without either, is refused with
`CorpusConflict` naming the differing arguments, unless `overwrite=True`; then the folders this generator owns
are cleared and it starts over. The one thing cleared without asking is an unfinished corpus whose marker
names these very arguments: the generator is deterministic, so it writes exactly that data again.
"""

from __future__ import annotations

import json
import shutil
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np
from tqdm import tqdm

from structvl.config import ConfigError
from structvl.lab.synth.layouts import (
    EVAL_FILES,
    MC_ANSWER_BASE,
    CorpusFiles,
    link_msrvtt_videos,
    write_actions,
    write_eval,
    write_localization,
    write_msrvtt,
    write_native,
)
from structvl.lab.synth.plan import (
    SPLITS,
    Clip,
    UntrimmedVideo,
    heldout_compositions,
    plan_clip,
    plan_untrimmed,
    split_sizes,
)
from structvl.lab.synth.scene import render_frames
from structvl.lab.synth.video import encode_mp4
from structvl.lab.synth.vocab import vocabularies

# 1.1: the val split carries the full evaluation suite (its own retrieval, hard-negative, MC, open-QA and 1k-A files);
# every file 1.0 wrote is byte-identical for the same arguments (but the version in msrvtt/MSRVTT_data.json). A 1.0
# corpus is refused (CorpusConflict) rather than used without val sets.
GENERATOR_VERSION = "1.1"
MANIFEST = "corpus.json"
INCOMPLETE_MARKER = ".incomplete"
OWNED_DIRS = ("videos", "untrimmed", "msrvtt", "eval", "actions", "localization")


class CorpusConflict(ConfigError):
    """The output directory holds a corpus generated with other arguments, or files that are not a corpus."""


def generate_corpus(out_dir, num_clips: int = 2000, seed: int = 0, holdout_compositions: bool = False,
                    size: int = 64, num_frames: int = 16, fps: int = 8, num_untrimmed: int = 200,
                    workers: int = 2, progress: bool = True, overwrite: bool = False,
                    hint: str = "pass overwrite=True to replace it") -> dict:
    """Write the structured synthetic corpus under `out_dir` and return a JSON-serialisable summary.

    Deterministic: the same arguments give byte-identical annotation files and identical decoded frames,
    whatever `workers` is. Idempotent: if `out_dir/corpus.json` was written with the same arguments, returns
    its summary without regenerating. Another corpus there is refused (`CorpusConflict`, its message ending
    in `hint`) unless `overwrite`.
    """
    started = time.perf_counter()
    root = Path(out_dir)
    arguments = {"num_clips": num_clips, "seed": seed, "holdout_compositions": holdout_compositions,
                 "size": size, "num_frames": num_frames, "fps": fps, "num_untrimmed": num_untrimmed}
    existing = _read_manifest(root)
    if existing and existing.get("generator_version") == GENERATOR_VERSION and existing.get("arguments") == arguments:
        return _summary(existing, root, time.perf_counter() - started, reused=True)
    _check_arguments(arguments)
    _claim(root, arguments, overwrite, hint)

    heldout = heldout_compositions(seed) if holdout_compositions else []
    clips, videos = _make_videos(root, arguments, heldout, workers, progress)

    files = CorpusFiles(root)
    write_native(files, clips, videos, fps)
    write_msrvtt(files, clips, fps, GENERATOR_VERSION)
    link_msrvtt_videos(root, clips)
    eval_counts = write_eval(files, clips, fps, seed)
    eval_counts.update(write_actions(files, clips, fps))
    write_localization(files, videos, fps, size)

    manifest = {
        "generator": "structvl.lab.synth",
        "generator_version": GENERATOR_VERSION,
        "arguments": arguments,
        "counts": {split: {"clips": sum(c.split == split for c in clips),
                           "captions": sum(len(c.captions) for c in clips if c.split == split),
                           "untrimmed": sum(v.split == split for v in videos)} for split in SPLITS},
        "eval_counts": eval_counts,
        "vocabularies": vocabularies(),
        "heldout_compositions": [list(pair) for pair in heldout],
        "mc_answer_base": MC_ANSWER_BASE,
        "annotations": _annotation_guide(),
        "videos": {"videos": len(clips), "untrimmed": len(videos), "msrvtt/videos": len(clips)},
        "files": sorted(files.written + [MANIFEST]),
    }
    files.json(MANIFEST, manifest, indent=2)
    (root / INCOMPLETE_MARKER).unlink()
    return _summary(manifest, root, time.perf_counter() - started, reused=False)


def _check_arguments(args: dict) -> None:
    if args["num_clips"] < 3:
        raise ValueError(f"num_clips must be at least 3 (one per split), got {args['num_clips']}")
    if args["num_untrimmed"] != 0 and args["num_untrimmed"] < 3:
        raise ValueError(f"num_untrimmed must be 0 or at least 3, got {args['num_untrimmed']}")
    if args["size"] < 24 or args["size"] % 2:
        raise ValueError(f"size must be even and at least 24 pixels (yuv420p, room for 3 objects), got {args['size']}")
    if args["num_frames"] < 4 or args["fps"] < 1:
        raise ValueError(f"need num_frames >= 4 and fps >= 1, got {args['num_frames']} and {args['fps']}")


def _read_manifest(root: Path) -> dict | None:
    try:
        return json.loads((root / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def corpus_arguments(root) -> dict | None:
    """The arguments a complete corpus at `root` was generated with (its manifest's), else None."""
    manifest = _read_manifest(Path(root))
    return None if manifest is None else manifest.get("arguments")


def structured_corpus(root, arguments: dict, use_existing: bool = False, overwrite: bool = False,
                      hint: str = "pass overwrite=True to replace it", **options) -> dict:
    """The arguments of the corpus to use at `root`: generate it with `arguments` (reused when it is there
    already; another corpus is refused unless `overwrite`), or with `use_existing`, take the complete corpus
    found there whatever its arguments (ConfigError when there is none)."""
    if use_existing:
        found = corpus_arguments(root)
        if found is None:
            raise ConfigError(f"{root} holds no complete structured corpus ({MANIFEST} is missing) to use as it is")
        return found
    generate_corpus(root, **arguments, overwrite=overwrite, hint=hint, **options)
    return corpus_arguments(root)


def _differences(found: dict, asked: dict) -> str:
    keys = [k for k in asked if found.get(k) != asked[k]] + [k for k in found if k not in asked]
    return ", ".join(f"{k}={found.get(k)!r} (asked: {asked.get(k)!r})" for k in keys)


def _conflict(root: Path, arguments: dict) -> str | None:
    """Why `root` must not be cleared for a corpus of `arguments`, or None when it may be."""
    manifest, marker = _read_manifest(root), root / INCOMPLETE_MARKER
    if manifest is not None:
        if manifest.get("generator_version") != GENERATOR_VERSION:
            return (f"{root} holds a corpus of generator version {manifest.get('generator_version')!r} "
                    f"(this one writes {GENERATOR_VERSION!r})")
        found = manifest.get("arguments") or {}
        return f"{root} holds a corpus generated with other arguments: {_differences(found, arguments)}"
    if marker.exists():
        try:
            started = json.loads(marker.read_text(encoding="utf-8"))
        except ValueError:
            started = None
        if started == arguments:
            return None  # our own unfinished write of these very arguments: regenerated identically
        if not isinstance(started, dict):
            return f"{root} holds an unfinished corpus whose arguments are unreadable ({marker})"
        return (f"{root} holds an unfinished corpus generated with other arguments: "
                f"{_differences(started, arguments)}")
    foreign = [name for name in (*OWNED_DIRS, "train.jsonl", "val.jsonl", "test.jsonl") if (root / name).exists()]
    if foreign:
        return (f"{root} holds {', '.join(foreign)} but no corpus manifest ({MANIFEST}): not a corpus this "
                "generator made")
    return None


def _claim(root: Path, arguments: dict, overwrite: bool, hint: str) -> None:
    """Mark the corpus as being written; clear what an earlier (finished or interrupted) run left, when that
    is allowed (see the module docstring)."""
    conflict = _conflict(root, arguments)
    if conflict and not overwrite:
        raise CorpusConflict(f"{conflict}; it is left as it is: {hint}")
    manifest, marker = root / MANIFEST, root / INCOMPLETE_MARKER
    if manifest.exists() or marker.exists() or conflict:
        manifest.unlink(missing_ok=True)
        for name in OWNED_DIRS:
            shutil.rmtree(root / name, ignore_errors=True)
    root.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps(arguments) + "\n", encoding="utf-8")


# ----------------------------------------------------------------------------- videos
def _make_videos(root: Path, args: dict, heldout: list, workers: int,
                 progress: bool) -> tuple[list[Clip], list[UntrimmedVideo]]:
    """Plan, render and encode every video, in `workers` processes. Jobs are planned from their own seeds,
    so the results do not depend on the number of workers."""
    jobs: list[tuple] = []
    msrvtt_index = 0
    for split, count in split_sizes(args["num_clips"]).items():
        for index in range(count):
            jobs.append(("clip", str(root), args, split, index, msrvtt_index, heldout))
            msrvtt_index += 1
    if args["num_untrimmed"]:
        for split, count in split_sizes(args["num_untrimmed"]).items():
            jobs += [("untrimmed", str(root), args, split, index, None, heldout) for index in range(count)]

    pool = Pool(workers) if workers > 1 else None
    try:
        chunk = max(1, min(32, len(jobs) // (8 * workers)))
        outputs = pool.imap(_make_video, jobs, chunksize=chunk) if pool else map(_make_video, jobs)
        results = list(tqdm(outputs, total=len(jobs), desc="synth videos", unit="video", disable=not progress))
    finally:
        if pool:
            pool.close()
            pool.join()
    return [r for r in results if isinstance(r, Clip)], [r for r in results if isinstance(r, UntrimmedVideo)]


def _make_video(job: tuple) -> Clip | UntrimmedVideo:
    """Worker: plan one clip or untrimmed video, draw it and write its mp4."""
    kind, root, args, split, index, msrvtt_index, heldout = job
    if kind == "clip":
        clip = plan_clip(args["seed"], split, index, msrvtt_index, args["size"], args["num_frames"], heldout)
        encode_mp4(Path(root) / clip.video, render_frames(clip.scene), args["fps"])
        return clip
    video = plan_untrimmed(args["seed"], split, index, args["size"], heldout)
    frames = np.concatenate([render_frames(segment.scene) for segment in video.segments])
    encode_mp4(Path(root) / video.video, frames, args["fps"])
    return video


# ----------------------------------------------------------------------------- manifest
def _annotation_guide() -> dict:
    """Which file serves which task, in which format (`structvl data check --format`) and video root."""
    return {
        "train": {"file": "train.jsonl", "format": "jsonl", "videos": "."},
        "val": {"file": "val.jsonl", "format": "jsonl", "videos": "."},
        "test": {"file": "test.jsonl", "format": "jsonl", "videos": "."},
        "untrimmed": {"files": [f"untrimmed_{s}.jsonl" for s in SPLITS], "format": "jsonl", "videos": "."},
        "msrvtt": {"file": "msrvtt/MSRVTT_data.json", "format": "msrvtt", "videos": "msrvtt/videos",
                   "test_1k_a": EVAL_FILES["test"]["retrieval_1k_a"], "val_1k_a": EVAL_FILES["val"]["retrieval_1k_a"],
                   "train_list": "msrvtt/train_list.txt"},
        **{f"retrieval_{s}": {"file": EVAL_FILES[s]["retrieval"], "format": "jsonl", "videos": "."}
           for s in ("test", "val")},
        "hard_negatives": {"file": EVAL_FILES["test"]["hard_negatives"], "videos": "."},
        "hard_negatives_val": {"file": EVAL_FILES["val"]["hard_negatives"], "videos": "."},
        **{f"mc_{s}": {"file": EVAL_FILES[s]["mc"], "format": "mcqa", "videos": "msrvtt/videos",
                       "answer_base": MC_ANSWER_BASE} for s in ("test", "val")},
        "openqa": {"files": ["eval/openqa_train.json", EVAL_FILES["val"]["openqa"], EVAL_FILES["test"]["openqa"]],
                   "format": "openqa", "videos": "msrvtt/videos", "video_id": "N of msrvtt/videos/video{N}.mp4"},
        "action_recognition": {"classes": "actions/classes.txt",
                               "files": [f"actions/{s}.jsonl" for s in SPLITS], "format": "jsonl", "videos": ".",
                               "note": "use these native records (label field); no Kinetics csv is written, "
                                       "its file naming cannot point at these clips"},
        "localization": {"file": "localization/activitynet13.json", "format": "localization",
                         "videos": "untrimmed"},
        "dense_captions": {"files": [f"localization/activitynet_captions_{s}.json" for s in SPLITS],
                           "format": "activitynet", "videos": "untrimmed"},
    }


def _summary(manifest: dict, root: Path, seconds: float, reused: bool) -> dict:
    return {"out_dir": str(root), "reused": reused, "seconds": round(seconds, 2),
            "counts": manifest["counts"], "eval_counts": manifest["eval_counts"],
            "videos": manifest["videos"], "heldout_compositions": manifest["heldout_compositions"],
            "files": manifest["files"]}


def ensure_corpus(cfg) -> None:
    """`data.synth: true` in a run config: generate the structured corpus at `data.root` (`data.synth_clips`
    clips, seed 0) when that directory holds none yet."""
    root = Path(cfg.data.root)
    if cfg.data.synth and not (root / "corpus.json").exists():
        generate_corpus(root, num_clips=cfg.data.synth_clips, seed=0,
                        hint="set config key 'data.root' to another directory (data.synth generates one there)")
