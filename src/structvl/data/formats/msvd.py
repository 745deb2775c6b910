"""MSVD: youtube_mapping.txt (clip name -> vidN), with captions as AllVideoDescriptions.txt lines or a JSON
mapping. `read_msvd_mapping` is shared with MSVD-QA (`structvl.data.formats.qa.read_openqa`)."""

from __future__ import annotations

import re
from pathlib import Path

from structvl.data.formats.common import clean_caption, load_json, require, skip_item, text_lines
from structvl.data.records import VideoRecord

# An MSVD clip name: '<youtube id>_<start second>_<end second>'; YouTube ids may contain '_' and start with '-'.
_MSVD_CLIP = re.compile(r"^(?P<youtube_id>.+)_(?P<start>\d+)_(?P<end>\d+)$")


def read_msvd_mapping(path: str | Path, issues: list | None = None) -> dict[str, str]:
    """youtube_mapping.txt -> {clip name ('-4wsuPCjDBc_5_15'): vid ('vid1')}, in file order.

    With `issues=None` an undecodable line is an error rather than a skipped line.
    """
    path = Path(path)
    mapping: dict[str, str] = {}
    for line, text in text_lines(path, issues):
        if not text.strip():
            continue
        parts = text.split()
        require(len(parts) == 2, path, f"line {line}", f"expected '<youtube-id>_<start>_<end> vid<N>', got {text!r}")
        clip, vid = parts
        require(_MSVD_CLIP.match(clip) is not None, path, f"line {line}",
                f"{clip!r} is not a clip name '<youtube-id>_<start>_<end>'")
        require(clip not in mapping, path, f"line {line}", f"clip {clip!r} appears twice")
        mapping[clip] = vid
    return mapping


def split_msvd_clip(clip: str) -> tuple[str, int, int]:
    """'zzit5b_-ukg_5_20' -> ('zzit5b_-ukg', 5, 20): the YouTube id and the clip's seconds in that video."""
    match = _MSVD_CLIP.match(clip)
    if match is None:
        raise ValueError(f"{clip!r} is not an MSVD clip name '<youtube-id>_<start>_<end>'")
    return match["youtube_id"], int(match["start"]), int(match["end"])


def read_msvd(path: Path, issues: list, *, captions: str | Path | None = None,
              video_ext: str = ".avi") -> list[VideoRecord]:
    """MSVD: `path` is youtube_mapping.txt; one record per clip, video_id 'vidN', video '<clip><video_ext>'.

    captions: AllVideoDescriptions.txt-style lines ('<clip> caption words', '#' comments) or a JSON mapping
        {"vidN" or clip name: [captions]}. Without it the records carry no captions (a video list); with it,
        clips left with no caption are skipped and reported.
    """
    mapping = read_msvd_mapping(path, issues)
    by_clip: dict[str, list[str]] = {clip: [] for clip in mapping}
    if captions is not None:
        captions = Path(captions)
        reader = _msvd_json_captions if captions.suffix.lower() == ".json" else _msvd_text_captions
        reader(captions, mapping, by_clip, issues)
    records = []
    for clip, vid in mapping.items():
        if captions is not None and not by_clip[clip]:
            skip_item(issues, path, None, f"{clip} ({vid}): no captions in {captions.name}")
            continue
        youtube_id, start, end = split_msvd_clip(clip)
        # start/end are the clip's place in its YouTube source; the released .avi is already the clip.
        records.append(VideoRecord(video_id=vid, video=f"{clip}{video_ext}", captions=by_clip[clip],
                                   meta={"clip": clip, "youtube_id": youtube_id, "source_start": start,
                                         "source_end": end}))
    return records


def _msvd_text_captions(path: Path, mapping: dict[str, str], by_clip: dict[str, list[str]], issues: list) -> None:
    for line, text in text_lines(path, issues):
        if not text.strip() or text.lstrip().startswith("#"):
            continue
        clip, _, caption = text.strip().partition(" ")
        if clip not in mapping:
            skip_item(issues, path, line, f"clip {clip!r} is not in the youtube mapping")
            continue
        caption = clean_caption(caption, issues, path, line)
        if caption is not None:
            by_clip[clip].append(caption)


def _msvd_json_captions(path: Path, mapping: dict[str, str], by_clip: dict[str, list[str]], issues: list) -> None:
    data = load_json(path)
    require(isinstance(data, dict), path, "top level", "expected an object {vidN or clip name: [captions]}")
    clip_of_vid = {vid: clip for clip, vid in mapping.items()}
    for key, texts in data.items():
        clip = clip_of_vid.get(key, key)
        if clip not in by_clip:
            skip_item(issues, path, None, f"{key!r} is neither a vid nor a clip of the youtube mapping")
            continue
        require(isinstance(texts, list), path, f"[{key!r}]", "expected a list of captions")
        for i, text in enumerate(texts):
            caption = clean_caption(text, issues, path, None, f"[{key!r}][{i}]")
            if caption is not None:
                by_clip[clip].append(caption)
