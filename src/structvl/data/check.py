"""`structvl data check`: read an annotation file exactly as training will, probe every video it names, and
report what would go wrong before a long run finds out: missing files, undecodable files, skipped
annotation lines (empty captions, clip windows that are not numbers, reversed or past their video's end),
videos outside the video root, and the duration/fps/resolution spread of the videos that do work. The check
fails when any video is missing, unreadable or outside the root, or when no record is usable at all.
"""

from __future__ import annotations

import statistics
import sys
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from tqdm import tqdm

from structvl.data.formats import read_annotations
from structvl.data.records import has_caption, outside_root, window_problem, window_text
from structvl.data.video import VideoDecodeError, probe_video

# Video properties summarised in the report's "stats".
STAT_KEYS = ("duration", "fps", "width", "height")
# Lists longer than this are cut short in the text report (the --json report always has every entry).
MAX_LISTED = 20


def check_dataset(fmt: str, annotations: str | Path, videos_dir: str | Path, backend: str = "pyav",
                  workers: int = 2, allow_outside_root: bool = False) -> dict:
    """Read `annotations` (format `fmt`) and probe each unique video it references under `videos_dir`.

    Returns a JSON-serialisable report: records, usable_records (inside the root, video readable, window
    inside the video), records_without_caption (pre-training leaves them out), videos (unique),
    captions_per_video (min/mean/max), missing, corrupt and outside_root (lists of {"path", "reason"}; a
    video outside the root is not opened unless `allow_outside_root`), annotation_issues (items the reader
    skipped, and windows that start past their video's end), stats (duration/fps/width/height:
    min/median/max over readable videos) and ok. Malformed annotations raise `AnnotationError` as they would
    in training.
    """
    issues: list[dict] = []
    records = read_annotations(fmt, annotations, issues)
    captions_per_video: dict[Path, int] = {}
    outside: dict[Path, str] = {}
    for record in records:  # several records (captions, questions) may share one video
        path = record.resolve(videos_dir)
        captions_per_video[path] = captions_per_video.get(path, 0) + len(record.captions)
        reason = None if allow_outside_root else outside_root(record, videos_dir, follow_links=True)
        if reason is not None:
            outside[path] = f"{reason} (data.allow_outside_root / --allow-outside-root reads it)"

    # Missing files are told apart from unusable ones: the fix differs (download again vs. re-encode).
    inside = [path for path in captions_per_video if path not in outside]
    missing = [{"path": str(path), "reason": "file not found"} for path in inside if not path.exists()]
    probes, corrupt = _probe_all([path for path in inside if path.exists()], backend, workers)
    durations = {Path(probe["path"]): probe["duration"] for probe in probes}
    usable = 0
    for record in records:
        duration = durations.get(record.resolve(videos_dir))
        if duration is None:  # missing, unreadable or outside the root: listed above
            continue
        problem = window_problem(record.start, record.end, duration)
        if problem is None:
            usable += 1
        else:
            issues.append({"file": str(annotations), "line": None, "reason": f"{record.video_id}: {problem} "
                           f"({window_text(record.start, record.end, duration)})"})

    counts = list(captions_per_video.values())
    return {
        "format": fmt,
        "annotations": str(annotations),
        "videos_dir": str(videos_dir),
        "records": len(records),
        "usable_records": usable,
        "records_without_caption": sum(not has_caption(record) for record in records),
        "videos": len(captions_per_video),
        "captions_per_video": {"min": min(counts), "mean": statistics.fmean(counts), "max": max(counts)}
        if counts else {"min": None, "mean": None, "max": None},
        "missing": missing,
        "corrupt": corrupt,
        "outside_root": [{"path": str(path), "reason": reason} for path, reason in outside.items()],
        "annotation_issues": issues,
        "stats": {key: _spread([probe[key] for probe in probes if probe.get(key) is not None])
                  for key in STAT_KEYS},
        "ok": not missing and not corrupt and not outside and usable > 0,
    }


def _probe_all(paths: list[Path], backend: str, workers: int) -> tuple[list[dict], list[dict]]:
    """Probe videos in a thread pool: (probe_video results, [{"path", "reason"} for each that failed]).

    Threads suffice because the work is file I/O and FFmpeg's C code, which PyAV runs without holding the
    GIL, and they need no pickling or per-worker start-up. Failures are listed in the annotation's order.
    """
    results: dict[Path, dict] = {}
    failures: dict[Path, str] = {}
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        futures = {pool.submit(probe_video, path, backend): path for path in paths}
        # disable=None: a live bar on a terminal, nothing in logs and pipes.
        for future in tqdm(as_completed(futures), total=len(futures), desc="probing videos", unit="video",
                           file=sys.stderr, disable=None, leave=False):
            path = futures[future]
            try:
                results[path] = {**future.result(), "path": str(path)}
            except VideoDecodeError as e:  # empty, no video stream, undecodable, ...
                failures[path] = e.reason
            except OSError as e:  # unreadable (permissions, I/O error): as unusable as a corrupt file
                failures[path] = f"{type(e).__name__}: {e}"
    return ([results[p] for p in paths if p in results],
            [{"path": str(p), "reason": failures[p]} for p in paths if p in failures])


def _spread(values: list[float]) -> dict:
    if not values:
        return {"min": None, "median": None, "max": None}
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


# ---------------------------------------------------------------- text report
def _number(value) -> str:
    if value is None:
        return "-"
    return f"{value:,}" if isinstance(value, int) else f"{value:,.2f}"


def _listing(title: str, entries: list[str]) -> list[str]:
    lines = [f"{title} ({len(entries)}):"] + [f"  {e}" for e in entries[:MAX_LISTED]]
    if len(entries) > MAX_LISTED:
        lines.append(f"  ... and {len(entries) - MAX_LISTED} more (--json lists them all)")
    return lines


def _issue_text(issue: dict) -> str:
    where = f"{issue['file']} line {issue['line']}" if issue["line"] else issue["file"]
    return f"{where}: {issue['reason']}"


def format_report(report: dict) -> str:
    """The report of `check_dataset` as a readable text table."""
    broken = len(report["missing"]) + len(report["corrupt"]) + len(report["outside_root"])
    per_video = report["captions_per_video"]
    lines = [
        f"annotations         {report['annotations']} ({report['format']})",
        f"video root          {report['videos_dir']}",
        f"records             {_number(report['records'])}: {_number(report['usable_records'])} usable, "
        f"{_number(report['records_without_caption'])} without a caption (left out of pre-training)",
        f"videos              {_number(report['videos'])} unique: {_number(report['videos'] - broken)} readable, "
        f"{_number(len(report['missing']))} missing, {_number(len(report['corrupt']))} corrupt, "
        f"{_number(len(report['outside_root']))} outside the root",
        f"captions per video  min {_number(per_video['min'])}, mean {_number(per_video['mean'])}, "
        f"max {_number(per_video['max'])}",
        f"annotation issues   {len(report['annotation_issues'])} skipped item(s)",
        "",
        f"{'':<10}{'min':>12}{'median':>12}{'max':>12}",
    ]
    for key, spread in report["stats"].items():
        lines.append(f"{key:<10}" + "".join(f"{_number(spread[k]):>12}" for k in ("min", "median", "max")))
    for title, entries in (
            ("missing videos", [f"{e['path']}: {e['reason']}" for e in report["missing"]]),
            ("corrupt videos", [f"{e['path']}: {e['reason']}" for e in report["corrupt"]]),
            ("videos outside the video root", [e["reason"] for e in report["outside_root"]]),
            ("skipped annotation items", [_issue_text(i) for i in report["annotation_issues"]])):
        if entries:
            lines += [""] + _listing(title, entries)
    if report["ok"]:
        lines += ["", "OK"]
    elif broken:
        unreadable, outside = len(report["missing"]) + len(report["corrupt"]), len(report["outside_root"])
        lines += ["", f"FAILED: {_number(unreadable)} of {_number(report['videos'])} videos missing or unreadable"
                  + (f", {_number(outside)} outside the video root" if outside else "")]
    else:
        lines += ["", f"FAILED: no usable record among {_number(report['records'])}"]
    return "\n".join(lines)
