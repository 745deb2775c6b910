"""DiDeMo (LocalizingMoments json): one record per description, or per video (paragraph)."""

from __future__ import annotations

import collections
from pathlib import Path

from structvl.data.formats.common import clean_caption, field_value, load_json, require
from structvl.data.records import VideoRecord

DIDEMO_SEGMENT_SECONDS = 5.0
DIDEMO_NUM_SEGMENTS = 6


def didemo_consensus(times: list[list[int]]) -> tuple[int, int]:
    """The standard consensus moment of DiDeMo's annotator pairs: the most frequent (first, last) segment
    pair; among equally frequent pairs, the one given first."""
    # Counter.most_common sorts stably, so tied pairs keep their first-seen order.
    return collections.Counter(tuple(pair) for pair in times).most_common(1)[0][0]


def read_didemo(path: Path, issues: list, *, paragraph: bool = False) -> list[VideoRecord]:
    """LocalizingMoments json list of {annotation_id, description, dl_link, num_segments, times, video}.

    Default: one record per description, start/end from the consensus of `times` (segment s covers
    [5s, 5(s+1)] seconds), every annotator pair in meta. paragraph=True: one record per video whose caption
    is its descriptions joined in the time order of their moments. The video path is the `video` field as
    given (the released files keep their upload extensions, and a few have none); it is also the video_id,
    since some Flickr ids were released twice with different extensions.
    """
    data = load_json(path)
    require(isinstance(data, list), path, "top level", "expected a list of annotations")
    moments = []
    for i, item in enumerate(data):
        where = f"item {i}" + (f" (annotation_id {item['annotation_id']})" if "annotation_id" in item else "")
        video = field_value(item, "video", path, where)
        times = field_value(item, "times", path, where)
        require(isinstance(times, list) and all(
            isinstance(p, list) and len(p) == 2 and all(isinstance(s, int) and 0 <= s < DIDEMO_NUM_SEGMENTS
                                                          for s in p) for p in times),
                path, where, f"'times' must be [first, last] segment pairs in 0..{DIDEMO_NUM_SEGMENTS - 1}")
        require("description" in item, path, where, "missing required field 'description'")
        caption = clean_caption(item["description"], issues, path, None, where)
        if caption is None:
            continue
        first, last = didemo_consensus(times)
        meta = {"times": times, **{k: item[k] for k in ("annotation_id", "num_segments", "dl_link") if k in item}}
        moments.append(VideoRecord(video_id=video, video=video, captions=[caption],
                                   start=first * DIDEMO_SEGMENT_SECONDS,
                                   end=(last + 1) * DIDEMO_SEGMENT_SECONDS, meta=meta))
    if not paragraph:
        return moments
    by_video: dict[str, list[VideoRecord]] = collections.defaultdict(list)
    for moment in moments:
        by_video[moment.video].append(moment)
    return [VideoRecord(video_id=video, video=video,
                        captions=[" ".join(m.captions[0] for m in sorted(group, key=lambda m: (m.start, m.end)))],
                        meta={"annotation_ids": [m.meta.get("annotation_id") for m in group]})
            for video, group in by_video.items()]
