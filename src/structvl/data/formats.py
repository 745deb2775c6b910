"""Annotation readers: every benchmark's own files -> `list[VideoRecord]`.

`read_annotations(fmt, path, issues, **options)` is the one entry point; `annotation_readers()` lists the
formats (the names `structvl ... --format` accepts) and the function that reads each:

    jsonl         the native schema: one `VideoRecord.to_dict()` object per line (`write_jsonl` writes it)
    msrvtt        MSRVTT_data.json (one record per video, all its captions) or the 1k-A test csv (one per row)
    webvid        WebVid csv (videoid, name, page_dir, duration, contentUrl)
    msvd          youtube_mapping.txt, plus captions as AllVideoDescriptions.txt lines or a JSON mapping
    activitynet   ActivityNet Captions json: one record per (video, sentence), or per video (paragraph)
    didemo        LocalizingMoments json: one record per description, or per video (paragraph)
    kinetics      Kinetics csv (label, youtube_id, time_start, time_end, split)
    ucf101        trainlistNN.txt / testlistNN.txt, with classInd.txt beside them
    hmdb51        a directory of `<class>_test_split<k>.txt` files
    localization  ActivityNet-1.3 style json (also the usual conversion of THUMOS14); `write_localization_json`
    mcqa, openqa, nextqa, tgifqa, activitynetqa   question answering: see `structvl.data.formats_qa`
    howto100m, imagetext   ASR segments and image-text pairs for pre-training: see `structvl.data.formats_pretrain`

Rules every reader follows:
* Structural problems (a missing required column or key, a malformed number, invalid JSON) raise
  `AnnotationError` naming the file and the line, row or field. Unknown columns and keys are ignored.
* Some damage is local and not worth losing a whole benchmark over: an empty or whitespace-only caption, a
  line that is not valid UTF-8. Those items are skipped, appended to `issues` as
  {"file", "line", "reason"} dicts, and `read_annotations` logs one warning per file on the
  "structvl.data" logger. A caption record left with no caption at all is skipped the same way.
* Text files are read as bytes and decoded line by line, so one bad byte costs one line, not the file.
  UTF-8 BOMs, CRLF line ends and a missing final newline are all accepted.
* Video paths in records are relative to the dataset's video root, laid out the way each benchmark's
  usual download tools leave them (documented per reader).
"""

from __future__ import annotations

import codecs
import collections
import contextlib
import csv
import inspect
import json
import logging
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from structvl.data.records import AnnotationError, VideoRecord, window_problem, window_text

__all__ = [
    "AnnotationError", "annotation_readers", "read_annotations", "read_class_list", "read_msvd_mapping",
    "write_jsonl", "write_localization_json",
]

log = logging.getLogger("structvl.data")

# A reader takes the annotation path, the list it appends skipped-item issues to, and keyword options.
Reader = Callable[..., list[VideoRecord]]


# ---------------------------------------------------------------- entry point
def annotation_readers() -> dict[str, Reader]:
    """Format name -> reader function, for every format `read_annotations` understands."""
    # formats_qa and formats_pretrain build on this module's file helpers, so they are imported here rather than
    # at the top: importing them at module level would make the modules import each other.
    from structvl.data import formats_pretrain, formats_qa

    return {
        "jsonl": read_jsonl,
        "msrvtt": read_msrvtt,
        "webvid": read_webvid,
        "msvd": read_msvd,
        "activitynet": read_activitynet_captions,
        "didemo": read_didemo,
        "kinetics": read_kinetics,
        "ucf101": read_ucf101,
        "hmdb51": read_hmdb51,
        "mcqa": formats_qa.read_mcqa,
        "openqa": formats_qa.read_openqa,
        "nextqa": formats_qa.read_nextqa,
        "tgifqa": formats_qa.read_tgifqa,
        "activitynetqa": formats_qa.read_activitynetqa,
        "localization": read_localization,
        "howto100m": formats_pretrain.read_howto100m,
        "imagetext": formats_pretrain.read_image_text,
    }


def read_annotations(fmt: str, path: str | Path, issues: list | None = None, **options: Any) -> list[VideoRecord]:
    """Read an annotation file (or directory, for hmdb51) of format `fmt` into records.

    Skipped items are appended to `issues` (when given) and summarised in one warning. `options` are the
    format's own keyword options (e.g. `split="test"` for msrvtt); an option the format does not have is a
    ValueError that lists the ones it does.
    """
    readers = annotation_readers()
    if fmt not in readers:
        raise ValueError(f"unknown annotation format {fmt!r}; known formats: {', '.join(readers)}")
    reader = readers[fmt]
    accepted = [p.name for p in inspect.signature(reader).parameters.values() if p.kind is p.KEYWORD_ONLY]
    for name in options:
        if name not in accepted:
            raise ValueError(f"format {fmt!r} has no option {name!r} (options: {', '.join(accepted) or 'none'})")
    skipped: list[dict] = []
    records = reader(Path(path), skipped, **options)
    if skipped:
        first = "; ".join(f"line {i['line']}: {i['reason']}" if i["line"] else i["reason"] for i in skipped[:3])
        log.warning("%s: skipped %d item(s) (%s%s)", path, len(skipped), first, "; ..." if len(skipped) > 3 else "")
    if issues is not None:
        issues.extend(skipped)
    return records


# ---------------------------------------------------------------- file helpers (shared with formats_qa)
def skip_item(issues: list | None, path: Path, line: int | None, reason: str) -> None:
    """Record a skipped item; with `issues=None` (a strict caller) it is an error instead."""
    if issues is None:
        raise AnnotationError(f"{path}{f' line {line}' if line else ''}: {reason}")
    issues.append({"file": str(path), "line": line, "reason": reason})


def text_lines(path: Path, issues: list | None) -> Iterator[tuple[int, str]]:
    """(1-based line number, text without its line end) for every line of a text file.

    Each line is decoded on its own: a line that is not valid UTF-8 is skipped via `skip_item`.
    Splitting the raw bytes at b"\\n" is safe because no multi-byte UTF-8 sequence contains that byte.
    """
    data = path.read_bytes()
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8):]
    lines = data.split(b"\n")
    if lines[-1] == b"":  # the file ends with a newline (many do not: then the last piece is a real line)
        lines.pop()
    for number, raw in enumerate(lines, 1):
        try:
            yield number, raw.removesuffix(b"\r").decode("utf-8")
        except UnicodeDecodeError as e:
            skip_item(issues, path, number, f"not valid UTF-8 (byte {e.start}: {raw[e.start:e.start + 1]!r})")


class _LineFeed:
    """Feeds decoded lines to `csv.reader` and remembers the physical line number it is at."""

    def __init__(self, path: Path, issues: list | None):
        self.line = 0
        self._lines = text_lines(path, issues)

    def __iter__(self) -> Iterator[str]:
        for number, text in self._lines:
            self.line = number
            yield text + "\n"  # csv needs the line end to keep newlines inside quoted fields


def read_table(path: Path, issues: list | None, required: tuple[str, ...] = (),
               delimiter: str = ",") -> tuple[list[str], Iterator[tuple[int, dict[str, str]]]]:
    """The header of a csv/tsv file and an iterator of (line number, {column: value}) rows.

    Checks the header holds every `required` column, and each row the header's number of fields (trailing
    empty fields are tolerated). Blank lines are skipped. Quoted fields are unquoted the way
    csv does it (a few TGIF-QA options are quoted, with doubled inner quotes).
    """
    feed = _LineFeed(path, issues)
    reader = csv.reader(feed, delimiter=delimiter)
    header = next((row for row in reader if any(f.strip() for f in row)), None)
    if header is None:
        raise AnnotationError(f"{path}: empty file (expected a header line)")
    header = [name.strip() for name in header]
    for name in required:
        if name not in header:
            raise AnnotationError(f"{path} line {feed.line}: missing required column {name!r} "
                                  f"(header: {', '.join(header)})")

    def rows() -> Iterator[tuple[int, dict[str, str]]]:
        for fields in reader:
            if not any(f.strip() for f in fields):
                continue
            while len(fields) > len(header) and not fields[-1].strip():
                fields.pop()
            if len(fields) != len(header):
                raise AnnotationError(f"{path} line {feed.line}: {len(fields)} fields, but the header has "
                                      f"{len(header)}")
            yield feed.line, dict(zip(header, fields, strict=True))

    return header, rows()


def load_json(path: Path) -> Any:
    """A whole JSON document. Invalid UTF-8 or JSON is an AnnotationError naming the line."""
    data = path.read_bytes()
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8):]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise AnnotationError(f"{path} line {line}: not valid UTF-8 (a JSON document must be UTF-8 throughout)") \
            from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise AnnotationError(f"{path} line {e.lineno}: invalid JSON ({e.msg})") from None


def require(condition: bool, path: Path, where: str, problem: str) -> None:
    """Raise an AnnotationError '<file> <where>: <problem>' unless `condition` holds."""
    if not condition:
        raise AnnotationError(f"{path} {where}: {problem}")


def field_value(item: dict, key: str, path: Path, where: str) -> Any:
    """item[key] for a required key (or column) whose value must not be empty."""
    value = item.get(key)
    require(value is not None and value != "", path, where, f"missing required field {key!r}")
    return value


def to_number(value: Any, kind: type, path: Path, where: str, name: str) -> Any:
    """int(value) or float(value), with a message naming the field when it is not a number."""
    try:
        if isinstance(value, bool) or (kind is int and isinstance(value, float) and not value.is_integer()):
            raise ValueError
        return kind(value)
    except (TypeError, ValueError):
        raise AnnotationError(f"{path} {where}: {name!r} is not a{'n integer' if kind is int else ' number'}: "
                              f"{value!r}") from None


def clean_caption(text: Any, issues: list | None, path: Path, line: int | None, where: str = "") -> str | None:
    """The caption stripped of outer whitespace, or None (and a skipped-item issue) when nothing is left."""
    if not isinstance(text, str):
        raise AnnotationError(f"{path} {where or f'line {line}'}: caption is not a string: {text!r}")
    text = text.strip()
    if not text:
        skip_item(issues, path, line, f"{where + ': ' if where else ''}empty caption")
        return None
    return text


@contextlib.contextmanager
def atomic_text_writer(path: str | Path, newline: str | None = None) -> Iterator[Any]:
    """A text file handle whose content replaces `path` only once the block finishes without error.

    Writes to a temporary file beside `path` and `os.replace`s it, so readers never see half a file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with open(fd, "w", encoding="utf-8", newline=newline) as f:
            yield f
        # mkstemp creates 0600 files; give the result the permissions a plain open() would (umask).
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ---------------------------------------------------------------- jsonl (native)
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


# ---------------------------------------------------------------- MSR-VTT
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


# ---------------------------------------------------------------- WebVid
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


# ---------------------------------------------------------------- MSVD
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


# ---------------------------------------------------------------- ActivityNet Captions
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


# ---------------------------------------------------------------- DiDeMo
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


# ---------------------------------------------------------------- action recognition
def read_kinetics(path: Path, issues: list, *, layout: str = "label") -> list[VideoRecord]:
    """Kinetics csv `label,youtube_id,time_start,time_end,split`.

    The clip is `{label}/{youtube_id}_{time_start:06d}_{time_end:06d}.mp4` (layout="label", the layout of
    the common download scripts) or the same name without the label folder (layout="flat"). Test lists
    without labels are read with the flat layout and label None.
    """
    if layout not in ("label", "flat"):
        raise ValueError(f"kinetics layout must be 'label' or 'flat', got {layout!r}")
    _, rows = read_table(path, issues, required=("youtube_id", "time_start", "time_end"))
    records = []
    for line, row in rows:
        where = f"line {line}"
        youtube_id = field_value(row, "youtube_id", path, where)
        start, end = (to_number(field_value(row, k, path, where), int, path, where, k)
                      for k in ("time_start", "time_end"))
        label = row.get("label", "").strip() or None
        clip = f"{youtube_id}_{start:06d}_{end:06d}"
        # time_start/time_end place the clip in its YouTube source; the downloaded file is already trimmed.
        meta = {"youtube_id": youtube_id, "source_start": start, "source_end": end,
                **({"split": row["split"]} if row.get("split") else {})}
        video = f"{label}/{clip}.mp4" if layout == "label" and label else f"{clip}.mp4"
        records.append(VideoRecord(video_id=clip, video=video, label=label, meta=meta))
    return records


def read_class_list(path: str | Path) -> list[str]:
    """Class names, one per line (Kinetics-style label files); blank lines are ignored."""
    return [text.strip() for _, text in text_lines(Path(path), None) if text.strip()]


def read_ucf101(path: Path, issues: list, *, class_index: str | Path | None = None) -> list[VideoRecord]:
    """A UCF101 split list: trainlistNN.txt ('ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1') or
    testlistNN.txt (no number: the class is the folder). Class names come from classInd.txt ('1 ApplyEyeMakeup'),
    looked up beside the split file unless `class_index` names it. meta["label_index"] is 0-based."""
    index_path = Path(class_index) if class_index is not None else path.parent / "classInd.txt"
    classes: dict[int, str] = {}
    for line, text in text_lines(index_path, None):
        if text.strip():
            number, _, name = text.strip().partition(" ")
            classes[to_number(number, int, index_path, f"line {line}", "class number")] = name.strip()
    label_index = {name: number - 1 for number, name in classes.items()}
    records = []
    for line, text in text_lines(path, issues):
        parts = text.split()
        if not parts:
            continue
        where = f"line {line}"
        require(len(parts) <= 2, path, where, f"expected '<class>/<video> [class number]', got {text!r}")
        video, folder = parts[0], parts[0].split("/")[0]
        if len(parts) == 2:
            number = to_number(parts[1], int, path, where, "class number")
            require(number in classes, path, where, f"class number {number} is not in {index_path.name}")
            label = classes[number]
            require(label == folder, path, where, f"class number {number} is {label!r}, but the folder is {folder!r}")
        else:
            require(folder in label_index, path, where, f"class folder {folder!r} is not in {index_path.name}")
            label = folder
        records.append(VideoRecord(video_id=Path(video).stem, video=video, label=label,
                                   meta={"label_index": label_index[label]}))
    return records


_HMDB_SPLIT_FILE = re.compile(r"^(?P<label>.+)_test_split(?P<split>\d)\.txt$")
HMDB_SUBSETS = {"1": "train", "2": "test"}  # the split files' codes; 0 = not used in this split


def read_hmdb51(path: Path, issues: list, *, split_id: int = 1, subset: str | None = None) -> list[VideoRecord]:
    """HMDB51: `path` is the directory of `<class>_test_split<k>.txt` files ('video.avi 1' per line).

    split_id: which of the three official splits (1-3). subset: "train" (code 1), "test" (code 2), or None
    for both (videos coded 0 are unused in that split and never read). The video is `{class}/{video}`;
    meta["label_index"] follows the sorted class names.
    """
    if split_id not in (1, 2, 3):
        raise ValueError(f"hmdb51 split_id must be 1, 2 or 3, got {split_id!r}")
    if subset not in (None, "train", "test"):
        raise ValueError(f"hmdb51 subset must be 'train', 'test' or None, got {subset!r}")
    if not path.is_dir():
        raise AnnotationError(f"{path}: hmdb51 reads a directory of <class>_test_split<k>.txt files")
    split_files = {}
    for file in path.iterdir():
        match = _HMDB_SPLIT_FILE.match(file.name)
        if match and int(match["split"]) == split_id:
            split_files[match["label"]] = file
    if not split_files:
        raise AnnotationError(f"{path}: no *_test_split{split_id}.txt files")
    records = []
    for label_index, label in enumerate(sorted(split_files)):
        file = split_files[label]
        for line, text in text_lines(file, issues):
            parts = text.split()
            if not parts:
                continue
            require(len(parts) == 2 and parts[1] in ("0", "1", "2"), file, f"line {line}",
                    f"expected '<video> <0|1|2>', got {text!r}")
            video, code = parts
            if code in HMDB_SUBSETS and subset in (None, HMDB_SUBSETS[code]):
                records.append(VideoRecord(video_id=Path(video).stem, video=f"{label}/{video}", label=label,
                                           meta={"label_index": label_index, "subset": HMDB_SUBSETS[code]}))
    return records


# ---------------------------------------------------------------- temporal localization
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
