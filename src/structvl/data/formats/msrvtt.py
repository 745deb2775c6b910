"""MSR-VTT: MSRVTT_data.json (one record per video, all its captions) or the 1k-A test csv (one per row)."""

from __future__ import annotations

import collections
from pathlib import Path

from structvl.data.formats.common import (
    clean_caption,
    field_value,
    load_json,
    read_table,
    require,
    skip_item,
    text_lines,
)
from structvl.data.records import AnnotationError, VideoRecord

MSRVTT_SPLITS = ("train", "validate", "test")


def read_msrvtt(path: Path, issues: list, *, split: str | None = None,
                video_ids_file: str | Path | None = None) -> list[VideoRecord]:
    """MSRVTT_data.json (by extension .json) or the 1k-A test csv (.csv). Videos are `{video_id}.mp4`.

    split: keep the json's videos of this split ("train", "validate", "test").
    video_ids_file: keep only the ids listed one per line (the 9k/7k train lists: `video0`, ...).
    """
    keep = None if video_ids_file is None else _video_id_list(Path(video_ids_file))
    suffix = path.suffix.lower()
    if suffix == ".json":
        records = _read_msrvtt_json(path, issues, split)
    elif suffix == ".csv":
        if split is not None:
            raise ValueError("option 'split' applies to MSRVTT_data.json; the 1k-A csv is the test split")
        records = _read_msrvtt_csv(path, issues)
    else:
        raise AnnotationError(f"{path}: expected MSRVTT_data.json (.json) or the 1k-A test csv (.csv)")
    if keep is not None:
        records = [r for r in records if r.video_id in keep]
    return records


def _video_id_list(path: Path) -> set[str]:
    return {text.strip() for _, text in text_lines(path, None) if text.strip()}


def _read_msrvtt_json(path: Path, issues: list, split: str | None) -> list[VideoRecord]:
    if split is not None and split not in MSRVTT_SPLITS:
        raise ValueError(f"MSR-VTT split must be one of {MSRVTT_SPLITS}, got {split!r}")
    data = load_json(path)
    require(isinstance(data, dict), path, "top level", "expected an object with 'videos' and 'sentences'")
    videos = field_value(data, "videos", path, "top level")
    sentences = field_value(data, "sentences", path, "top level")
    captions: dict[str, list[str]] = collections.defaultdict(list)
    for i, sentence in enumerate(sentences):
        where = f"sentences[{i}]"
        video_id = str(field_value(sentence, "video_id", path, where))
        require("caption" in sentence, path, where, "missing required field 'caption'")
        caption = clean_caption(sentence["caption"], issues, path, None, f"{where} ({video_id})")
        if caption is not None:
            captions[video_id].append(caption)
    records = []
    for i, video in enumerate(videos):
        where = f"videos[{i}]"
        video_id = str(field_value(video, "video_id", path, where))
        if split is not None and field_value(video, "split", path, where) != split:
            continue
        if not captions.get(video_id):
            skip_item(issues, path, None, f"{where} ({video_id}): no captions")
            continue
        # "start time"/"end time" locate the clip in its YouTube source; the released mp4 is already that clip.
        meta = {"category": video.get("category"), "url": video.get("url"), "split": video.get("split"),
                "source_start": video.get("start time"), "source_end": video.get("end time")}
        records.append(VideoRecord(video_id=video_id, video=f"{video_id}.mp4", captions=captions[video_id],
                                   meta={k: v for k, v in meta.items() if v is not None}))
    return records


def _read_msrvtt_csv(path: Path, issues: list) -> list[VideoRecord]:
    _, rows = read_table(path, issues, required=("video_id", "sentence"))
    records = []
    for line, row in rows:
        video_id = field_value(row, "video_id", path, f"line {line}")
        caption = clean_caption(row["sentence"], issues, path, line)
        if caption is not None:
            meta = {k: row[k] for k in ("key", "vid_key") if row.get(k)}
            records.append(VideoRecord(video_id=video_id, video=f"{video_id}.mp4", captions=[caption], meta=meta))
    return records
