"""The one record type every annotation reader produces and every dataset consumes.

A reader turns a benchmark's own files (MSR-VTT json/csv, WebVid csv, QA files, ...) into a list of
`VideoRecord`s; everything downstream (datasets, `data check`, knowledge extraction) only sees records.
Fields a format does not carry stay at their defaults.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


class AnnotationError(ValueError):
    """A malformed annotation file; the message names the file, and the line/field when known."""


@dataclass
class VideoRecord:
    """One clip (or one QA/classification item) of a dataset.

    video_id: the dataset's id for the video (e.g. "video9770"); several records may share it.
    video: path of the video file, absolute or relative to the dataset's video root.
    captions: zero or more captions describing the clip.
    start, end: the clip's window inside the video in seconds (None = the whole video).
    label: action class name (recognition datasets).
    question, candidates, answer: QA items. Multiple choice: `candidates` holds the options and
        `answer` the index of the right one (int). Open-ended: `answer` is the answer string.
    segments: temporal annotations inside an untrimmed video, [{"start": s, "end": e, "label": str}, ...].
    duration: video duration in seconds when the annotation states it.
    meta: everything else a format carries that some task may want (boxes, phrase spans, qid, ...).
    """

    video_id: str
    video: str
    captions: list[str] = field(default_factory=list)
    start: float | None = None
    end: float | None = None
    label: str | None = None
    question: str | None = None
    candidates: list[str] | None = None
    answer: Any = None
    segments: list[dict] | None = None
    duration: float | None = None
    meta: dict = field(default_factory=dict)

    def resolve(self, video_root: str | Path | None) -> Path:
        """The video's path on disk, joined to `video_root` when the record's path is relative."""
        p = Path(self.video)
        if p.is_absolute() or video_root is None:
            return p
        return Path(video_root) / p

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v not in (None, [], {})}


# ---------------------------------------------------------------- content checks shared by readers, datasets, data check
def window_problem(start: float | None, end: float | None, duration: float | None = None) -> str | None:
    """Why a clip window [start, end] (seconds; None = the video's start / end) cannot be sampled, or None.
    The reasons are fixed phrases, so that they can be counted; `window_text` gives the numbers.

    Not a number or infinite, negative, an end before the start, or a start at or past the video's end
    (`duration`, when known) all are; an end past the video's end is not (annotations are often made on a
    slightly longer copy, and the sampler clamps it).
    """
    for name, value in (("start", start), ("end", end)):
        if value is not None and not math.isfinite(value):
            return f"window {name} is not a finite number"
        if value is not None and value < 0:
            return f"window {name} is negative"
    if start is not None and end is not None and end < start:
        return "window ends before it starts"
    if start is not None and duration is not None and start >= duration:
        return "window starts past the video's end"
    return None


def window_text(start: float | None, end: float | None, duration: float | None = None) -> str:
    """'start 40 s, end 45 s, video 30 s' for messages."""
    parts = [f"{name} {value:g} s" for name, value in (("start", start), ("end", end), ("video", duration))
             if value is not None]
    return ", ".join(parts)


def has_caption(record: VideoRecord) -> bool:
    """Whether a record has a caption with text in it (a video-text pair needs one)."""
    return any(isinstance(c, str) and c.strip() for c in record.captions)


def outside_root(record: VideoRecord, video_root: str | Path | None, follow_links: bool = False) -> str | None:
    """Why the record's video lies outside `video_root`, or None when it lies inside (or there is no root).

    Without `follow_links` the check is on the path as written (an absolute path elsewhere, `..` leaving the
    root) and costs no file-system access; with it, symlinks on the way are resolved too (a link inside the
    root to a file elsewhere), which touches the file system, so it is done where the file is opened anyway.
    """
    if video_root is None:
        return None
    root, path = os.path.abspath(video_root), os.path.abspath(os.path.join(video_root, record.video))
    if follow_links:
        root, path = os.path.realpath(root), os.path.realpath(path)
    if os.path.commonpath([root, path]) == root:
        return None
    how = "resolves to" if follow_links else "is"
    return f"video {record.video!r} {how} {path}, outside the video root {root}"
