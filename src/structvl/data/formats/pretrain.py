"""Readers of the web-scale pre-training corpora that are not clip-caption benchmarks (registered in
`structvl.data.formats.ANNOTATION_READERS`; the rules every reader follows are in that package's docstring):

    howto100m   ASR segments, HowTo100M's `caption.json`: {video_id: {"start": [...], "end": [...], "text": [...]}},
                one record per segment: the video's [start, end] window with the spoken text as its caption
    imagetext   image-text pairs: a CSV/TSV with a header naming the image and caption columns (open_clip's
                CsvDataset layout, `filepath` and `title` by default, tab- or comma-separated), or CC3M's
                headerless `caption<TAB>url` TSV; each pair is a record whose `video` is the image, which the
                datasets turn into a one-frame clip (structvl.data.images)
"""

from __future__ import annotations

import csv
from pathlib import Path

from structvl.data.formats.common import (
    clean_caption,
    load_json,
    read_table,
    require,
    skip_item,
    text_lines,
    to_number,
)
from structvl.data.records import AnnotationError, VideoRecord


def read_howto100m(path: Path, issues: list, *, video_ext: str = "mp4") -> list[VideoRecord]:
    """HowTo100M `caption.json`. Videos are `<video_id>.<video_ext>` (the usual download layout). A segment
    with an empty text or an empty window (end <= start) is skipped; lists of unequal length, a missing key or
    a non-number time are errors naming the video."""
    data = load_json(path)
    require(isinstance(data, dict), path, "top level", "expected an object {video_id: {start, end, text}}")
    records = []
    for video_id, segments in data.items():
        where = f"video {video_id!r}"
        require(isinstance(segments, dict), path, where, "expected an object with 'start', 'end' and 'text' lists")
        columns = {}
        for key in ("start", "end", "text"):
            require(isinstance(segments.get(key), list), path, where, f"missing list {key!r}")
            columns[key] = segments[key]
        lengths = {key: len(values) for key, values in columns.items()}
        require(len(set(lengths.values())) == 1, path, where,
                f"'start', 'end' and 'text' differ in length ({lengths['start']}, {lengths['end']}, {lengths['text']})")
        for i, (start, end, text) in enumerate(zip(columns["start"], columns["end"], columns["text"])):
            at = f"{where} segment {i}"
            start, end = to_number(start, float, path, at, "start"), to_number(end, float, path, at, "end")
            caption = clean_caption(text, issues, path, None, at)
            if caption is None:
                continue
            if end <= start:
                skip_item(issues, path, None, f"{at}: empty window ({start} to {end})")
                continue
            records.append(VideoRecord(video_id=str(video_id), video=f"{video_id}.{video_ext}", captions=[caption],
                                       start=start, end=end, meta={"segment": i}))
    return records


def read_image_text(path: Path, issues: list, *, image_key: str = "filepath",
                    caption_key: str = "title") -> list[VideoRecord]:
    """Image-text pairs (module docstring). With a header: the columns `image_key` and `caption_key`, the
    separator a tab when the header line has one, else a comma; `video_id` is the image path. Without one
    (CC3M): `caption<TAB>url` per line; `video_id` is the line number and `video` the url (download the
    images, e.g. into webdataset shards, to train on them; captions alone serve `structvl knowledge`)."""
    first = next((text for _, text in text_lines(path, issues) if text.strip()), None)
    if first is None:
        raise AnnotationError(f"{path}: empty file")
    delimiter = "\t" if "\t" in first else ","
    header = [name.strip() for name in next(csv.reader([first], delimiter=delimiter))]
    records = []
    if image_key in header or caption_key in header:
        _, rows = read_table(path, issues, required=(image_key, caption_key), delimiter=delimiter)
        for line, row in rows:
            image = row[image_key].strip()
            caption = clean_caption(row[caption_key], issues, path, line)
            if caption is None:
                continue
            if not image:
                skip_item(issues, path, line, f"empty {image_key!r}")
                continue
            records.append(VideoRecord(video_id=image, video=image, captions=[caption]))
        return records
    if len(header) != 2 or "://" not in header[1]:
        raise AnnotationError(f"{path} line 1: expected a header with columns {image_key!r} and {caption_key!r}, or "
                              f"CC3M's caption<TAB>url lines; got {len(header)} field(s): {first[:80]!r}")
    for line, text in text_lines(path, issues):
        if not text.strip():
            continue
        fields = text.split("\t")
        if len(fields) != 2:
            raise AnnotationError(f"{path} line {line}: expected caption<TAB>url, got {len(fields)} field(s)")
        caption = clean_caption(fields[0], issues, path, line)
        if caption is None:
            continue
        url = fields[1].strip()
        records.append(VideoRecord(video_id=f"{line - 1:09d}", video=url, captions=[caption], meta={"url": url}))
    return records
