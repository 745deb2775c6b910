"""The one record type every annotation reader produces and every dataset consumes.

A reader turns a benchmark's own files (MSR-VTT json/csv, WebVid csv, QA files, ...) into a list of
`VideoRecord`s; everything downstream (datasets, `data check`, knowledge extraction) only sees records.
Fields a format does not carry stay at their defaults.
"""

from __future__ import annotations

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
