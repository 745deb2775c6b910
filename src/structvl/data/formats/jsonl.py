"""The native schema: one `VideoRecord.to_dict()` object per line (`write_jsonl` writes it)."""

from __future__ import annotations

import json
from pathlib import Path

from structvl.data.formats.common import (
    atomic_text_writer,
    clean_caption,
    field_value,
    require,
    skip_item,
    text_lines,
    to_number,
)
from structvl.data.records import AnnotationError, VideoRecord, window_problem, window_text


def read_jsonl(path: Path, issues: list) -> list[VideoRecord]:
    """One `VideoRecord.to_dict()` object per line. `video` is required; `video_id` defaults to the video
    file's stem; a single `caption` string is accepted for `captions`."""
    records = []
    for line, text in text_lines(path, issues):
        if not text.strip():
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            raise AnnotationError(f"{path} line {line}: invalid JSON ({e.msg})") from None
        require(isinstance(obj, dict), path, f"line {line}", "expected a JSON object")
        record = _record_from_json(obj, path, line, issues)
        if record is not None:
            records.append(record)
    return records


def _record_from_json(obj: dict, path: Path, line: int, issues: list) -> VideoRecord | None:
    where = f"line {line}"
    video = field_value(obj, "video", path, where)
    require(isinstance(video, str), path, where, f"'video' is not a string: {video!r}")
    raw_captions = obj["captions"] if "captions" in obj else [obj["caption"]] if "caption" in obj else []
    require(isinstance(raw_captions, list), path, where, "'captions' is not a list")
    captions = [c for c in (clean_caption(c, issues, path, line) for c in raw_captions) if c is not None]
    if raw_captions and not captions and obj.get("question") is None and obj.get("label") is None:
        return None  # a caption record whose captions were all empty (already reported)

    def number(key: str) -> float | None:
        return None if obj.get(key) is None else to_number(obj[key], float, path, where, key)

    segments = obj.get("segments")
    if segments is not None:
        require(isinstance(segments, list) and all(isinstance(s, dict) and "start" in s and "end" in s
                                                    for s in segments),
                path, where, "'segments' must be a list of {start, end, label} objects")
    candidates = obj.get("candidates")
    require(candidates is None or isinstance(candidates, list), path, where, "'candidates' is not a list")
    meta = obj.get("meta", {})
    require(isinstance(meta, dict), path, where, "'meta' is not an object")
    start, end, duration = number("start"), number("end"), number("duration")
    problem = window_problem(start, end, duration)
    if problem is not None:  # NaN, reversed, past the stated duration: a clip that cannot be sampled
        skip_item(issues, path, line, f"{problem} ({window_text(start, end, duration)})")
        return None
    return VideoRecord(
        video_id=str(obj.get("video_id") or Path(video).stem), video=video, captions=captions,
        start=start, end=end, label=obj.get("label"), question=obj.get("question"),
        candidates=candidates, answer=obj.get("answer"), segments=segments, duration=duration,
        meta=meta)


def write_jsonl(records: list[VideoRecord], path: str | Path) -> None:
    """Write records in the native jsonl schema, atomically (temporary file + os.replace)."""
    with atomic_text_writer(path, newline="\n") as f:
        for record in records:
            f.write(json.dumps(record.to_dict(), ensure_ascii=False) + "\n")
