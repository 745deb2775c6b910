"""WebVid: the csv of (videoid, name, page_dir, duration, contentUrl) rows."""

from __future__ import annotations

import re
from pathlib import Path

from structvl.data.formats.common import clean_caption, field_value, read_table
from structvl.data.records import AnnotationError, VideoRecord

_ISO_DURATION = re.compile(r"^P(?:(\d+(?:\.\d+)?)D)?T?(?:(\d+(?:\.\d+)?)H)?(?:(\d+(?:\.\d+)?)M)?"
                           r"(?:(\d+(?:\.\d+)?)S)?$")


def iso8601_seconds(value: str) -> float:
    """'PT00H00M11S' -> 11.0 (the ISO-8601 durations WebVid stores). ValueError if it is not one."""
    match = _ISO_DURATION.match(value.strip())
    if not match or not any(match.groups()):
        raise ValueError(f"not an ISO-8601 duration: {value!r}")
    days, hours, minutes, seconds = (float(g) if g else 0.0 for g in match.groups())
    return ((days * 24 + hours) * 60 + minutes) * 60 + seconds


def read_webvid(path: Path, issues: list) -> list[VideoRecord]:
    """WebVid csv: `name` is the caption, the video is `{page_dir}/{videoid}.mp4` (the usual download layout)."""
    _, rows = read_table(path, issues, required=("videoid", "name", "page_dir"))
    records = []
    for line, row in rows:
        where = f"line {line}"
        video_id, page_dir = field_value(row, "videoid", path, where), field_value(row, "page_dir", path, where)
        caption = clean_caption(row["name"], issues, path, line)
        if caption is None:
            continue
        duration = None
        if row.get("duration"):
            try:
                duration = iso8601_seconds(row["duration"])
            except ValueError as e:
                raise AnnotationError(f"{path} {where}: 'duration' {e}") from None
        meta = {"url": row["contentUrl"]} if row.get("contentUrl") else {}
        records.append(VideoRecord(video_id=video_id, video=f"{page_dir}/{video_id}.mp4", captions=[caption],
                                   duration=duration, meta=meta))
    return records
