"""Question-answering annotation readers (and writers): MSRVTT-MC, MSRVTT-QA / MSVD-QA, NExT-QA, TGIF-QA,
ActivityNet-QA. Reached through `structvl.data.formats.read_annotations`, whose rules they follow.

Multiple choice: `candidates` holds the options and `answer` the 0-based index of the right one, whatever
base the file uses. Open-ended: `answer` is the answer string, `candidates` stays None.
"""

from __future__ import annotations

import json
from pathlib import Path

from structvl.data.formats.common import (
    atomic_text_writer,
    field_value,
    load_json,
    read_table,
    require,
    skip_item,
    to_number,
)
from structvl.data.formats.msvd import read_msvd_mapping
from structvl.data.records import AnnotationError, VideoRecord

__all__ = ["read_activitynetqa", "read_mcqa", "read_nextqa", "read_openqa", "read_tgifqa", "write_mcqa_csv",
           "write_openqa_json"]


def _option_columns(header: list[str], first: int, path: Path) -> list[str]:
    """The consecutive answer-option columns a<first>, a<first+1>, ... of a header."""
    columns = []
    while f"a{first + len(columns)}" in header:
        columns.append(f"a{first + len(columns)}")
    require(len(columns) >= 2, path, "header",
            f"missing required answer-option columns 'a{first}', 'a{first + 1}', ...")
    return columns


def _choice(row: dict, columns: list[str], answer_base: int, issues: list, path: Path,
            line: int) -> tuple[list[str], int] | None:
    """(options, 0-based answer index) of a multiple-choice row; None (reported) if an option is empty."""
    where = f"line {line}"
    options = [row[c].strip() for c in columns]
    empty = [c for c, option in zip(columns, options, strict=True) if not option]
    if empty:
        skip_item(issues, path, line, f"empty answer option {', '.join(empty)}")
        return None
    answer = to_number(field_value(row, "answer", path, where), int, path, where, "answer") - answer_base
    require(0 <= answer < len(options), path, where,
            f"answer {answer + answer_base} is outside options {answer_base}..{answer_base + len(options) - 1}")
    return options, answer


def _question(text: str, issues: list, path: Path, line: int | None, where: str = "") -> str | None:
    """The question stripped (some files end them with a space), or None (reported) when empty."""
    text = text.strip()
    if not text:
        skip_item(issues, path, line, f"{where + ': ' if where else ''}empty question")
        return None
    return text


# ---------------------------------------------------------------- MSRVTT-MC
def read_mcqa(path: Path, issues: list, *, answer_base: int = 0, video_ext: str = ".mp4") -> list[VideoRecord]:
    """MSRVTT-MC (JSFusion's MSR_MC_test.csv): TAB-separated `key vid_key video_id a1..a5 answer`.

    One record per row: the five candidate sentences, one of which describes the video; video
    `{video_id}{video_ext}`. answer_base: the index of a1 in the `answer` column. It is 0: public evaluation
    code compares `answer` directly with the argmax over the five sentence scores (e.g. fairseq's
    MSRVTTQAMetaProcessor). A comma-separated file is read the same way.
    """
    with path.open("rb") as f:
        delimiter = "\t" if b"\t" in f.readline() else ","
    header, rows = read_table(path, issues, required=("video_id", "answer"), delimiter=delimiter)
    columns = _option_columns(header, 1, path)
    records = []
    for line, row in rows:
        video_id = field_value(row, "video_id", path, f"line {line}")
        choice = _choice(row, columns, answer_base, issues, path, line)
        if choice is not None:
            records.append(VideoRecord(video_id=video_id, video=f"{video_id}{video_ext}", candidates=choice[0],
                                       answer=choice[1], meta={k: row[k] for k in ("key", "vid_key") if row.get(k)}))
    return records


def write_mcqa_csv(records: list[VideoRecord], path: str | Path, answer_base: int = 0) -> None:
    """Write multiple-choice records as MSR_MC_test.csv (TAB-separated, atomically); `read_mcqa` reads it back.

    `key` and `vid_key` come from the record's meta when it has them ('mc<i>' and the video_id otherwise).
    """
    if not records:
        raise ValueError("write_mcqa_csv: no records")
    num_options = len(records[0].candidates or [])
    for i, record in enumerate(records):
        if len(record.candidates or []) != num_options or not isinstance(record.answer, int):
            raise ValueError(f"write_mcqa_csv: record {i} ({record.video_id}) needs {num_options} candidates "
                             f"and an integer answer")
        if any("\t" in c or "\n" in c for c in record.candidates):
            raise ValueError(f"write_mcqa_csv: record {i} ({record.video_id}) has a candidate with a tab or newline")
    header = ["key", "vid_key", "video_id", *(f"a{j + 1}" for j in range(num_options)), "answer"]
    with atomic_text_writer(path, newline="\n") as f:
        f.write("\t".join(header) + "\n")
        for i, r in enumerate(records):
            row = [r.meta.get("key", f"mc{i}"), r.meta.get("vid_key", r.video_id), r.video_id, *r.candidates,
                   str(r.answer + answer_base)]
            f.write("\t".join(row) + "\n")


# ---------------------------------------------------------------- MSRVTT-QA / MSVD-QA
# Integer video ids of each open-ended QA release -> (video_id prefix, video file extension).
OPENQA_DATASETS = {"msrvtt": ("video", ".mp4"), "msvd": ("vid", ".avi")}


def read_openqa(path: Path, issues: list, *, dataset: str | None = None, msvd_mapping: str | Path | None = None,
                video_ext: str | None = None) -> list[VideoRecord]:
    """MSRVTT-QA / MSVD-QA json: a list of {"answer", "id", "question", "video_id"}.

    dataset: "msrvtt" (video_id 7010 -> 'video7010', video 'video7010.mp4') or "msvd" (video_id 3 -> 'vid3').
        Default: "msvd" when msvd_mapping is given, else "msrvtt".
    msvd_mapping: youtube_mapping.txt; MSVD videos are then '<clip>.avi' (the released names), else 'vidN.avi'.
    Releases that give `"video": "video7010"` instead of an integer video_id are read too; a "video" value
    with a file extension is taken as the video path.
    """
    dataset = dataset or ("msvd" if msvd_mapping is not None else "msrvtt")
    if dataset not in OPENQA_DATASETS:
        raise ValueError(f"openqa dataset must be one of {', '.join(OPENQA_DATASETS)}, got {dataset!r}")
    prefix, default_ext = OPENQA_DATASETS[dataset]
    video_ext = default_ext if video_ext is None else video_ext
    clip_of_vid = {} if msvd_mapping is None else {v: c for c, v in read_msvd_mapping(msvd_mapping).items()}
    data = load_json(path)
    require(isinstance(data, list), path, "top level", "expected a list of questions")
    records = []
    for i, item in enumerate(data):
        where = f"item {i}" + (f" (id {item['id']})" if isinstance(item, dict) and "id" in item else "")
        require(isinstance(item, dict), path, where, "expected an object")
        question = _question(str(field_value(item, "question", path, where)), issues, path, None, where)
        if question is None:
            continue
        answer = str(field_value(item, "answer", path, where)).strip()
        raw_id, raw_video = item.get("video_id"), item.get("video")
        if isinstance(raw_id, int) or (isinstance(raw_id, str) and raw_id.isdigit()):
            video_id = f"{prefix}{int(raw_id)}"
        elif isinstance(raw_id, str) and raw_id:
            video_id = raw_id
        elif isinstance(raw_video, str) and raw_video:
            video_id = Path(raw_video).stem if Path(raw_video).suffix else raw_video
        else:
            raise AnnotationError(f"{path} {where}: missing required field 'video_id' (or 'video')")
        if isinstance(raw_video, str) and Path(raw_video).suffix:
            video = raw_video
        elif clip_of_vid:
            require(video_id in clip_of_vid, path, where, f"{video_id!r} is not in the MSVD youtube mapping")
            video = f"{clip_of_vid[video_id]}{video_ext}"
        else:
            video = f"{video_id}{video_ext}"
        meta = {"qid": item["id"]} if "id" in item else {}
        if "category_id" in item:
            meta["category_id"] = item["category_id"]
        records.append(VideoRecord(video_id=video_id, video=video, question=question, answer=answer, meta=meta))
    return records


def write_openqa_json(records: list[VideoRecord], path: str | Path) -> None:
    """Write open-ended QA records as an MSRVTT-QA style json list, atomically.

    Each item carries the record's video_id and, as "video", its path, so `read_openqa` restores both.
    """
    items = [{"answer": r.answer, "id": r.meta.get("qid", i), "question": r.question, "video_id": r.video_id,
              "video": r.video} for i, r in enumerate(records)]
    with atomic_text_writer(path) as f:
        json.dump(items, f, ensure_ascii=False)


# ---------------------------------------------------------------- NExT-QA
def read_nextqa(path: Path, issues: list, *, video_map: str | Path | None = None,
                video_ext: str = ".mp4") -> list[VideoRecord]:
    """NExT-QA csv `video,frame_count,width,height,question,answer,qid,type,a0..a4` (answer: 0-based option).

    video_map: map_vid_vidorID.json ({video: '<dir>/<video>'}), by default the one beside the csv when it
    exists; the video is then '<dir>/<video><video_ext>', else '<video><video_ext>'.
    """
    map_path = Path(video_map) if video_map is not None else path.parent / "map_vid_vidorID.json"
    relative = {}
    if video_map is not None or map_path.exists():
        relative = load_json(map_path)
        require(isinstance(relative, dict), map_path, "top level", "expected an object {video: relative path}")
    header, rows = read_table(path, issues, required=("video", "question", "answer"))
    columns = _option_columns(header, 0, path)
    records = []
    for line, row in rows:
        where = f"line {line}"
        video_id = field_value(row, "video", path, where)
        question = _question(row["question"], issues, path, line)
        choice = _choice(row, columns, 0, issues, path, line)
        if question is None or choice is None:
            continue
        if relative:
            require(video_id in relative, path, where, f"video {video_id!r} is not in {map_path.name}")
        meta = {k: row[k] for k in ("qid", "type") if row.get(k)}
        meta.update({k: to_number(row[k], int, path, where, k) for k in ("frame_count", "width", "height")
                     if row.get(k)})
        records.append(VideoRecord(video_id=video_id, video=f"{relative.get(video_id, video_id)}{video_ext}",
                                   question=question, candidates=choice[0], answer=choice[1], meta=meta))
    return records


# ---------------------------------------------------------------- TGIF-QA
def tgifqa_task(header: list[str]) -> str:
    """Which TGIF-QA file a header belongs to: "multiple_choice" (action, transition), "frameqa" or "count"."""
    if "a1" in header:
        return "multiple_choice"
    return "frameqa" if "type" in header else "count"


def read_tgifqa(path: Path, issues: list, *, video_ext: str = ".gif") -> list[VideoRecord]:
    """TGIF-QA tab-separated files; the task comes from the header:

    action / transition  `gif_name question a1..a5 answer vid_id key`: multiple choice, answer 0-4
    frameqa              `gif_name question answer type vid_id key description`: open-ended
    count                `gif_name question answer vid_id key`: open-ended, the count as a string
    The video is `{gif_name}{video_ext}` (TGIF is often converted to .mp4: pass video_ext=".mp4").
    """
    header, rows = read_table(path, issues, required=("gif_name", "question", "answer"), delimiter="\t")
    task = tgifqa_task(header)
    columns = _option_columns(header, 1, path) if task == "multiple_choice" else []
    records = []
    for line, row in rows:
        where = f"line {line}"
        gif = field_value(row, "gif_name", path, where)
        question = _question(row["question"], issues, path, line)
        if question is None:
            continue
        meta = {"task": task, **{k: row[k] for k in ("vid_id", "key") if row.get(k)}}
        if task == "multiple_choice":
            choice = _choice(row, columns, 0, issues, path, line)
            if choice is None:
                continue
            candidates, answer = choice
        else:
            candidates, answer = None, field_value(row, "answer", path, where).strip()
            if task == "frameqa":
                meta["answer_type"] = to_number(field_value(row, "type", path, where), int, path, where, "type")
                if row.get("description"):
                    meta["description"] = row["description"].strip()
        records.append(VideoRecord(video_id=gif, video=f"{gif}{video_ext}", question=question,
                                   candidates=candidates, answer=answer, meta=meta))
    return records


# ---------------------------------------------------------------- ActivityNet-QA
def read_activitynetqa(path: Path, issues: list, *, answers_path: str | Path | None = None,
                       video_ext: str = ".mp4") -> list[VideoRecord]:
    """ActivityNet-QA: `path` is the questions file (test_q.json: {video_name, question, question_id}); the
    answers ({answer, type, question_id}) come from `answers_path`, by default the same name with '_q.json'
    replaced by '_a.json'. Joined on question_id; video 'v_{video_name}{video_ext}' (video_name lacks the
    'v_' that ActivityNet ids and question_id carry)."""
    if answers_path is None:
        if not path.name.endswith("_q.json"):
            raise ValueError(f"{path.name} does not end in '_q.json': pass answers_path")
        answers_path = path.with_name(path.name[: -len("_q.json")] + "_a.json")
    answers_path = Path(answers_path)
    answers = {}
    answer_items = load_json(answers_path)
    require(isinstance(answer_items, list), answers_path, "top level", "expected a list of answers")
    for i, item in enumerate(answer_items):
        qid = field_value(item, "question_id", answers_path, f"item {i}")
        require(qid not in answers, answers_path, f"item {i}", f"question_id {qid!r} appears twice")
        answers[qid] = item
    questions = load_json(path)
    require(isinstance(questions, list), path, "top level", "expected a list of questions")
    records = []
    for i, item in enumerate(questions):
        where = f"item {i}"
        qid = field_value(item, "question_id", path, where)
        where = f"item {i} (question_id {qid})"
        video_name = field_value(item, "video_name", path, where)
        question = _question(str(field_value(item, "question", path, where)), issues, path, None, where)
        if question is None:
            continue
        require(qid in answers, answers_path, f"(answers to {path.name})", f"no answer for question_id {qid!r}")
        answer = answers[qid]
        meta = {"question_id": qid, **({"answer_type": answer["type"]} if "type" in answer else {})}
        records.append(VideoRecord(video_id=f"v_{video_name}", video=f"v_{video_name}{video_ext}", question=question,
                                   answer=str(field_value(answer, "answer", answers_path, f"question_id {qid}")),
                                   meta=meta))
    return records
