"""Annotation readers: every benchmark's own files -> `list[VideoRecord]`, one module per format family.

`read_annotations(fmt, path, issues, **options)` is the one entry point; `ANNOTATION_READERS` names the formats
(the names `structvl ... --format` accepts) and the function that reads each (`annotation_readers()` returns a
copy). The modules:

    jsonl.py           jsonl: the native schema, one `VideoRecord.to_dict()` object per line (`write_jsonl`)
    msrvtt.py          msrvtt: MSRVTT_data.json (one record per video, all its captions) or the 1k-A test csv
    webvid.py          webvid: WebVid csv (videoid, name, page_dir, duration, contentUrl)
    msvd.py            msvd: youtube_mapping.txt, plus captions as AllVideoDescriptions.txt lines or a JSON mapping
    activitynet.py     activitynet: ActivityNet Captions json, one record per (video, sentence) or per video
    didemo.py          didemo: LocalizingMoments json, one record per description or per video (paragraph)
    classification.py  kinetics (csv), ucf101 (trainlistNN.txt / testlistNN.txt + classInd.txt), hmdb51 (a
                       directory of `<class>_test_split<k>.txt` files); `read_class_list`
    localization.py    localization: ActivityNet-1.3 style json (also THUMOS14's usual conversion); its writer
    qa.py              mcqa, openqa, nextqa, tgifqa, activitynetqa: question answering, and the QA writers
    pretrain.py        howto100m, imagetext: ASR segments and image-text pairs for pre-training
    common.py          the file helpers that keep the rules below (line decoding, tables, JSON, errors, writes)

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

import inspect
import logging
from pathlib import Path
from typing import Any

from structvl.data.formats.activitynet import read_activitynet_captions
from structvl.data.formats.classification import read_class_list, read_hmdb51, read_kinetics, read_ucf101
from structvl.data.formats.common import Reader
from structvl.data.formats.didemo import read_didemo
from structvl.data.formats.jsonl import read_jsonl, write_jsonl
from structvl.data.formats.localization import read_localization, write_localization_json
from structvl.data.formats.msrvtt import read_msrvtt
from structvl.data.formats.msvd import read_msvd, read_msvd_mapping
from structvl.data.formats.pretrain import read_howto100m, read_image_text
from structvl.data.formats.qa import (
    read_activitynetqa,
    read_mcqa,
    read_nextqa,
    read_openqa,
    read_tgifqa,
    write_mcqa_csv,
    write_openqa_json,
)
from structvl.data.formats.webvid import read_webvid
from structvl.data.records import AnnotationError, VideoRecord

__all__ = [
    "ANNOTATION_READERS", "AnnotationError", "annotation_readers", "read_annotations", "read_class_list",
    "read_msvd_mapping", "write_jsonl", "write_localization_json", "write_mcqa_csv", "write_openqa_json",
]

log = logging.getLogger("structvl.data")

# Format name -> reader, in the order `structvl ... --format` lists them (cli.ANNOTATION_FORMATS).
ANNOTATION_READERS: dict[str, Reader] = {
    "jsonl": read_jsonl,
    "msrvtt": read_msrvtt,
    "webvid": read_webvid,
    "msvd": read_msvd,
    "activitynet": read_activitynet_captions,
    "didemo": read_didemo,
    "kinetics": read_kinetics,
    "ucf101": read_ucf101,
    "hmdb51": read_hmdb51,
    "mcqa": read_mcqa,
    "openqa": read_openqa,
    "nextqa": read_nextqa,
    "tgifqa": read_tgifqa,
    "activitynetqa": read_activitynetqa,
    "localization": read_localization,
    "howto100m": read_howto100m,
    "imagetext": read_image_text,
}


def annotation_readers() -> dict[str, Reader]:
    """Format name -> reader function, for every format `read_annotations` understands (a copy of the table)."""
    return dict(ANNOTATION_READERS)


def read_annotations(fmt: str, path: str | Path, issues: list | None = None, **options: Any) -> list[VideoRecord]:
    """Read an annotation file (or directory, for hmdb51) of format `fmt` into records.

    Skipped items are appended to `issues` (when given) and summarised in one warning. `options` are the
    format's own keyword options (e.g. `split="test"` for msrvtt); an option the format does not have is a
    ValueError that lists the ones it does.
    """
    if fmt not in ANNOTATION_READERS:
        raise ValueError(f"unknown annotation format {fmt!r}; known formats: {', '.join(ANNOTATION_READERS)}")
    reader = ANNOTATION_READERS[fmt]
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
