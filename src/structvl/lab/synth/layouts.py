"""Writing planned clips as annotation files: the native JSONL records and the benchmark layouts
(MSR-VTT, MSRVTT-MC, MSRVTT-QA, ActivityNet-1.3 localization, ActivityNet Captions, action recognition).

Every file is written atomically and recorded in `CorpusFiles.written`, which becomes the manifest's file list.
All paths inside annotation files are relative: native records' `video` is relative to the corpus root;
the MSR-VTT layout names `video{N}`, found under `msrvtt/videos/`.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np

from structvl.data.formats.qa import write_mcqa_csv
from structvl.data.records import VideoRecord
from structvl.lab.synth.evalsets import hard_negatives, multiple_choice, open_questions
from structvl.lab.synth.plan import EVALUATED_SPLITS, STREAM_EVAL, STREAM_EVAL_VAL, Caption, Clip, UntrimmedVideo
from structvl.lab.synth.vocab import ACTIONS
from structvl.tasks.eval_data import EVAL_SPLITS

MSRVTT_SPLIT_NAMES = {"train": "train", "val": "validate", "test": "test"}
ACTIVITYNET_SUBSETS = {"train": "training", "val": "validation", "test": "testing"}
MC_ANSWER_BASE = 0  # mc_test.csv's `answer` is the 0-based index of the true candidate


class CorpusFiles:
    """Atomic writes under the corpus root (temporary file + rename), remembering what was written."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.written: list[str] = []

    def text(self, relative: str, content: str) -> None:
        path = self.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(content, encoding="utf-8", newline="\n")
        os.replace(tmp, path)
        self.written.append(relative)

    def json(self, relative: str, obj, indent: int | None = None) -> None:
        separators = None if indent else (",", ":")
        self.text(relative, json.dumps(obj, indent=indent, separators=separators, ensure_ascii=False) + "\n")

    def jsonl(self, relative: str, rows: list[dict]) -> None:
        self.text(relative, "".join(json.dumps(r, separators=(",", ":"), ensure_ascii=False) + "\n" for r in rows))

    def external(self, relative: str, write: Callable[[Path], None]) -> None:
        """A file written by another module's (atomic) writer, given its path."""
        write(self.root / relative)
        self.written.append(relative)

    def csv(self, relative: str, header: list[str], rows: list[list]) -> None:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
        self.text(relative, buffer.getvalue())


def _seconds(frames: int, fps: int) -> float:
    return round(frames / fps, 6)


def _phrases(captions: list[Caption]) -> list[dict]:
    return [{"caption_index": c, "start": start, "end": end, "object": obj}
            for c, caption in enumerate(captions) for start, end, obj in caption.spans]


# ----------------------------------------------------------------------------- native records
def clip_record(clip: Clip, fps: int, first_caption_only: bool = False) -> VideoRecord:
    """The native record of a trimmed clip; its `meta` carries the full ground truth (see __init__)."""
    captions = clip.captions[:1] if first_caption_only else clip.captions
    meta = {
        "split": clip.split,
        "msrvtt_id": f"video{clip.msrvtt_index}",
        **clip.scene.to_meta(),
        "phrases": _phrases(captions),
        "action_label": clip.action_label,
        "action_label_unambiguous": clip.label_unambiguous,
        "heldout_composition": clip.heldout,
        "num_frames": clip.scene.num_frames,
        "fps": fps,
    }
    return VideoRecord(video_id=clip.clip_id, video=clip.video, captions=[c.text for c in captions],
                       label=clip.action_label, duration=_seconds(clip.scene.num_frames, fps), meta=meta)


def untrimmed_record(video: UntrimmedVideo, fps: int) -> VideoRecord:
    """An untrimmed video: `segments` tile [0, duration], `captions[k]` describes segment k, and
    `meta.scenes[k]` holds segment k's ground truth (its boxes index frames from its own start_frame)."""
    scenes = [{"start_frame": s.start_frame, "end_frame": s.end_frame, **s.scene.to_meta()} for s in video.segments]
    return VideoRecord(
        video_id=video.video_id, video=video.video, captions=[s.caption.text for s in video.segments],
        segments=[{"start": _seconds(s.start_frame, fps), "end": _seconds(s.end_frame, fps), "label": s.label}
                  for s in video.segments],
        duration=_seconds(video.num_frames, fps),
        meta={"split": video.split, "num_frames": video.num_frames, "fps": fps, "scenes": scenes,
              "phrases": _phrases([s.caption for s in video.segments])})


def write_native(files: CorpusFiles, clips: list[Clip], videos: list[UntrimmedVideo], fps: int) -> None:
    for split in ("train", "val", "test"):
        files.jsonl(f"{split}.jsonl", [clip_record(c, fps).to_dict() for c in clips if c.split == split])
        files.jsonl(f"untrimmed_{split}.jsonl",
                    [untrimmed_record(v, fps).to_dict() for v in videos if v.split == split])


# ----------------------------------------------------------------------------- MSR-VTT
def write_msrvtt(files: CorpusFiles, clips: list[Clip], fps: int, version: str) -> None:
    """MSRVTT_data.json (all splits), the JSFusion 1k-A style csv of test and of val (one caption per video) and
    the split lists. `category` is the clip's action class index (actions/classes.txt order)."""
    clips = sorted(clips, key=lambda c: c.msrvtt_index)
    videos = [{"video_id": f"video{c.msrvtt_index}", "category": ACTIONS.index(c.action_label), "url": "",
               "start time": 0.0, "end time": _seconds(c.scene.num_frames, fps),
               "split": MSRVTT_SPLIT_NAMES[c.split], "id": c.msrvtt_index} for c in clips]
    sentences = [{"caption": caption.text, "video_id": f"video{c.msrvtt_index}", "sen_id": sen_id}
                 for sen_id, (c, caption) in enumerate((c, cap) for c in clips for cap in c.captions)]
    info = {"contributor": "structvl.lab.synth", "description": "synthetic structured video-text corpus",
            "version": version, "categories": list(ACTIONS)}
    files.json("msrvtt/MSRVTT_data.json", {"info": info, "videos": videos, "sentences": sentences})
    for split in ("test", "val"):
        chosen = [c for c in clips if c.split == split]
        files.csv(EVAL_FILES[split]["retrieval_1k_a"], ["key", "vid_key", "video_id", "sentence"],
                  [[f"ret{k}", f"msr{c.msrvtt_index}", f"video{c.msrvtt_index}", c.captions[0].text]
                   for k, c in enumerate(chosen)])
    for split in ("train", "val", "test"):
        files.text(f"msrvtt/{split}_list.txt",
                   "".join(f"video{c.msrvtt_index}\n" for c in clips if c.split == split))


def link_msrvtt_videos(root: Path, clips: list[Clip]) -> None:
    """msrvtt/videos/video{N}.mp4 -> ../../videos/{clip_id}.mp4: one copy of each video on disk. Falls back
    to a hard link, then to a copy, on filesystems without symlinks."""
    folder = root / "msrvtt" / "videos"
    folder.mkdir(parents=True, exist_ok=True)
    for clip in clips:
        link, target = folder / f"video{clip.msrvtt_index}.mp4", root / clip.video
        if link.is_symlink() or link.exists():
            link.unlink()
        try:
            os.symlink(os.path.relpath(target, folder), link)
        except OSError:
            try:
                os.link(target, link)
            except OSError:
                shutil.copyfile(target, link)


# ----------------------------------------------------------------------------- evaluation sets
# Per evaluation split: the files its sets go to (retrieval and hard negatives as `structvl.tasks.eval_data` reads
# them), the MSR-VTT-style key prefix of its MC items and the random stream that draws them. Test's names and
# stream are those of the corpus before val had its sets, so test's files did not change when val's were added.
EVAL_FILES = {
    split: {"retrieval": EVAL_SPLITS[split]["retrieval"], "hard_negatives": EVAL_SPLITS[split]["hard_negatives"],
            "mc": f"eval/mc_{split}.csv", "openqa": f"eval/openqa_{split}.json",
            "retrieval_1k_a": f"msrvtt/MSRVTT_JSFUSION_{split}.csv"}
    for split in EVALUATED_SPLITS}
MC_STREAMS = {"test": STREAM_EVAL, "val": STREAM_EVAL_VAL}


def write_eval(files: CorpusFiles, clips: list[Clip], fps: int, seed: int) -> dict[str, int]:
    """eval/: for each of val and test, retrieval, hard negatives, multiple choice and open QA of its clips (and
    open QA of train, the answer head's training set). Returns the number of items per file."""
    counts: dict[str, int] = {}
    for split in ("test", "val"):  # test first: its counts keep their historical keys
        counts.update(_write_split_eval(files, [c for c in clips if c.split == split], split, fps, seed))
    for split in ("train", "test", "val"):
        questions = [(question, answer, c.msrvtt_index)
                     for c in clips if c.split == split for question, answer in open_questions(c.facts)]
        path = f"eval/openqa_{split}.json" if split == "train" else EVAL_FILES[split]["openqa"]
        files.json(path, [{"answer": answer, "id": qid, "question": question, "video_id": video}
                          for qid, (question, answer, video) in enumerate(questions)])
        counts[f"openqa_{split}"] = len(questions)
    return counts


def _write_split_eval(files: CorpusFiles, split_clips: list[Clip], split: str, fps: int,
                      seed: int) -> dict[str, int]:
    """Retrieval (one caption per clip), hard negatives and multiple choice of one evaluation split."""
    names = EVAL_FILES[split]
    files.jsonl(names["retrieval"], [clip_record(c, fps, first_caption_only=True).to_dict() for c in split_clips])
    rows, mc_items = [], []
    for k, clip in enumerate(split_clips):
        caption, msrvtt_id = clip.captions[0], f"video{clip.msrvtt_index}"
        negatives, changes = hard_negatives(clip.scene, clip.facts, caption.wording)
        rows.append({"video_id": clip.clip_id, "video": clip.video, "msrvtt_id": msrvtt_id,
                     "caption": caption.text, "negatives": negatives, "changes": changes})
        rng = np.random.default_rng([seed, MC_STREAMS[split], k])
        candidates, answer = multiple_choice(rng, caption.text, negatives)
        mc_items.append(VideoRecord(video_id=msrvtt_id, video=f"{msrvtt_id}.mp4", candidates=candidates,
                                    answer=answer, meta={"key": f"mc{k}", "vid_key": f"msr{clip.msrvtt_index}"}))
    files.jsonl(names["hard_negatives"], rows)
    # The MSRVTT-MC layout is written by the reader's own module, so the two cannot drift apart.
    files.external(names["mc"], lambda path: write_mcqa_csv(mc_items, path, answer_base=MC_ANSWER_BASE))
    suffix = "" if split == "test" else f"_{split}"
    return {f"retrieval_{split}": len(split_clips), f"hard_negatives{suffix}": len(rows),
            f"hard_negative_captions{suffix}": sum(len(v) for r in rows for v in r["negatives"].values()),
            f"mc_{split}": len(mc_items)}


# ----------------------------------------------------------------------------- actions and localization
def write_actions(files: CorpusFiles, clips: list[Clip], fps: int) -> dict[str, int]:
    """actions/classes.txt and actions/{split}.jsonl: native records with `label`, only for clips whose label
    is unambiguous (no other object does a different action). No Kinetics csv: its file naming
    ({youtube_id}_{start:06d}_{end:06d}.mp4) cannot point at these clips."""
    files.text("actions/classes.txt", "".join(f"{a}\n" for a in ACTIONS))
    counts = {}
    for split in ("train", "val", "test"):
        chosen = [c for c in clips if c.split == split and c.label_unambiguous]
        files.jsonl(f"actions/{split}.jsonl", [
            VideoRecord(video_id=c.clip_id, video=c.video, label=c.action_label,
                        duration=_seconds(c.scene.num_frames, fps),
                        meta={"split": split, "msrvtt_id": f"video{c.msrvtt_index}"}).to_dict() for c in chosen])
        counts[f"actions_{split}"] = len(chosen)
    return counts


def write_localization(files: CorpusFiles, videos: list[UntrimmedVideo], fps: int, frame: int) -> None:
    """localization/activitynet13.json (ActivityNet-1.3 temporal action localization ground truth) and
    localization/activitynet_captions_{split}.json (ActivityNet Captions dense-captioning layout). Both name
    videos by id; the files are untrimmed/{id}.mp4. Each ActivityNet-1.3 entry also carries that file name
    as "video" (relative to untrimmed/), which `structvl.data.formats.localization.read_localization` prefers to its
    ActivityNet default of 'v_{id}.mp4'."""
    database = {
        v.video_id: {"subset": ACTIVITYNET_SUBSETS[v.split], "duration": _seconds(v.num_frames, fps), "url": "",
                     "resolution": f"{frame}x{frame}", "video": f"{v.video_id}.mp4",
                     "annotations": [{"segment": [_seconds(s.start_frame, fps), _seconds(s.end_frame, fps)],
                                      "label": s.label} for s in v.segments]}
        for v in videos}
    files.json("localization/activitynet13.json", {"version": "structvl-synth", "taxonomy": [], "database": database})
    for split in ("train", "val", "test"):
        files.json(f"localization/activitynet_captions_{split}.json", {
            v.video_id: {"duration": _seconds(v.num_frames, fps),
                         "timestamps": [[_seconds(s.start_frame, fps), _seconds(s.end_frame, fps)] for s in v.segments],
                         "sentences": [s.caption.text for s in v.segments]}
            for v in videos if v.split == split})
