"""ActivityNet Captions: one record per (video, sentence), or per video (paragraph-to-video retrieval)."""

from __future__ import annotations

from pathlib import Path

from structvl.data.formats.common import clean_caption, field_value, load_json, require, skip_item, to_number
from structvl.data.records import VideoRecord, window_problem, window_text


def read_activitynet_captions(path: Path, issues: list, *, paragraph: bool = False,
                              video_ext: str = ".mp4") -> list[VideoRecord]:
    """ActivityNet Captions json {"v_xxx": {duration, timestamps, sentences}}; video '<v_xxx><video_ext>'.

    Default: one record per (video, sentence) with its start/end. paragraph=True: one record per video whose
    single caption is all its sentences joined in order (paragraph-to-video retrieval).
    """
    data = load_json(path)
    require(isinstance(data, dict), path, "top level", "expected an object {video id: annotation}")
    records = []
    for video_id, item in data.items():
        where = f"[{video_id!r}]"
        require(isinstance(item, dict), path, where, "expected an object")
        duration = to_number(field_value(item, "duration", path, where), float, path, where, "duration")
        timestamps = field_value(item, "timestamps", path, where)
        sentences = field_value(item, "sentences", path, where)
        require(len(timestamps) == len(sentences), path, where,
                f"{len(timestamps)} timestamps but {len(sentences)} sentences")
        moments = []
        for i, (stamp, sentence) in enumerate(zip(timestamps, sentences, strict=True)):
            require(isinstance(stamp, list) and len(stamp) == 2, path, f"{where}.timestamps[{i}]",
                    f"expected [start, end], got {stamp!r}")
            caption = clean_caption(sentence, issues, path, None, f"{where}.sentences[{i}]")
            if caption is not None:
                start, end = (to_number(t, float, path, f"{where}.timestamps[{i}]", "timestamp") for t in stamp)
                problem = window_problem(start, end, duration)
                if problem is not None:
                    skip_item(issues, path, None, f"{where}.timestamps[{i}]: {problem} "
                                                  f"({window_text(start, end, duration)})")
                    continue
                moments.append((start, end, caption, i))
        video = f"{video_id}{video_ext}"
        if paragraph:
            if moments:
                records.append(VideoRecord(video_id=video_id, video=video, duration=duration,
                                           captions=[" ".join(caption for _, _, caption, _ in moments)],
                                           meta={"timestamps": [[s, e] for s, e, _, _ in moments]}))
            continue
        records.extend(VideoRecord(video_id=video_id, video=video, captions=[caption], start=start, end=end,
                                   duration=duration, meta={"sentence_index": i})
                       for start, end, caption, i in moments)
    return records
