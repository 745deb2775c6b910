"""Temporal action localization: ActivityNet-1.3 style json (also the usual conversion of THUMOS14), read by
`read_localization` and written by `write_localization_json`."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from structvl.data.formats.common import atomic_text_writer, field_value, load_json, require, to_number
from structvl.data.records import VideoRecord


def read_localization(path: Path, issues: list, *, subset: str | None = None, video_prefix: str = "v_",
                      video_ext: str = ".mp4") -> list[VideoRecord]:
    """ActivityNet-1.3 style json {"version", "taxonomy", "database": {id: {subset, duration, url, resolution,
    annotations: [{segment: [s, e], label}]}}}: one record per video with its duration and segments.

    THUMOS14's temporal annotations are usually converted to this same json (the per-class txt files become
    `annotations`, the subsets "validation"/"test"); read those with video_prefix="" since THUMOS files are
    named by their id. The video is `{video_prefix}{id}{video_ext}` (ActivityNet downloads are 'v_<id>'),
    unless an entry carries a "video" path (as `write_localization_json` writes).
    subset: keep only "training", "validation" or "testing" entries.
    """
    data = load_json(path)
    require(isinstance(data, dict) and isinstance(data.get("database"), dict), path, "top level",
            "expected an object with a 'database' object")
    records = []
    for video_id, entry in data["database"].items():
        where = f"database[{video_id!r}]"
        require(isinstance(entry, dict), path, where, "expected an object")
        if subset is not None and entry.get("subset") != subset:
            continue
        segments = []
        for i, annotation in enumerate(entry.get("annotations", [])):
            at = f"{where}.annotations[{i}]"
            segment = field_value(annotation, "segment", path, at)
            require(isinstance(segment, list) and len(segment) == 2, path, at, "'segment' is not [start, end]")
            start, end = (to_number(t, float, path, at, "segment") for t in segment)
            segments.append({"start": start, "end": end, "label": field_value(annotation, "label", path, at)})
        duration = entry.get("duration")
        meta = {k: entry[k] for k in ("subset", "url", "resolution") if entry.get(k)}
        records.append(VideoRecord(
            video_id=video_id, video=entry.get("video") or f"{video_prefix}{video_id}{video_ext}",
            segments=segments, meta=meta,
            duration=None if duration is None else to_number(duration, float, path, where, "duration")))
    return records


def write_localization_json(records: list[VideoRecord], path: str | Path,
                            subset_of: str | Callable[[VideoRecord], str] = "validation",
                            version: str = "VERSION 1.3") -> None:
    """Write records with segments as ActivityNet-1.3 style json, atomically.

    subset_of: the subset every record belongs to ("training", "validation", "testing"), or a function
    giving each record's. Each entry also gets a "video" key with the record's path, which
    `read_localization` prefers, so paths round-trip; the taxonomy lists the segment labels as leaves.
    """
    database = {}
    for record in records:
        database[record.video_id] = {
            "subset": subset_of if isinstance(subset_of, str) else subset_of(record),
            "duration": record.duration, "url": record.meta.get("url", ""),
            "resolution": record.meta.get("resolution", ""), "video": record.video,
            "annotations": [{"segment": [s["start"], s["end"]], "label": s["label"]}
                            for s in record.segments or []],
        }
    labels = sorted({s["label"] for record in records for s in record.segments or []})
    taxonomy = [{"nodeId": i, "nodeName": label, "parentId": None, "parentName": None}
                for i, label in enumerate(labels)]
    with atomic_text_writer(path) as f:
        json.dump({"version": version, "taxonomy": taxonomy, "database": database}, f, ensure_ascii=False)
