"""Writing webdataset tar shards from records: `structvl data shard` (read back by `structvl.data.shards`).

A sample is

    <key>.mp4            the video file's bytes, as they were on disk (any container; the member is "mp4")
    <key>.json           the record's `to_dict()` (captions, start/end window, ids, meta, ...)
    <key>.record_index   the record's position in the annotation list it was written from

and `sizes.json` beside the shards ({shard file name: samples}, open_clip's convention) says how many samples
each shard holds, which exact resume reads.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from pathlib import Path

from structvl.data.records import VideoRecord, outside_root

log = logging.getLogger("structvl.data")

SIZES_FILE = "sizes.json"  # {shard file name: samples}, beside the shards (open_clip's convention)


def _safe_key(index: int, video_id: str) -> str:
    """A tar sample key: unique (the record's position comes first) and free of the characters webdataset
    splits names on ('.' separates key and member, '/' directories)."""
    safe = re.sub(r"[^A-Za-z0-9_-]+", "_", str(video_id)).strip("_")[:80]
    return f"{index:09d}_{safe}" if safe else f"{index:09d}"


def write_shards(records: Sequence[VideoRecord], video_root: str | Path | None, out_pattern: str,
                 max_count: int = 1000, missing: list | None = None, allow_outside_root: bool = False) -> list[str]:
    """Pack records and their video files into webdataset tar shards; returns the shard paths written.

    out_pattern: a printf pattern for the shard files, e.g. "out/train-%06d.tar" (its directory is created).
    max_count: samples per shard (the last shard holds the rest).
    missing: when given, a {"index", "video_id", "path", "reason"} dict is appended for each record whose
        video file is missing, not a regular file or empty; such records are left out (and logged in one
        warning). Videos are not decoded here: one that is corrupt is skipped at training time.
    allow_outside_root: pack videos outside `video_root` too; without it a record whose path leaves the root
        (absolute elsewhere, `..`, a symlink leading out) is left out the same way, with that reason.
    """
    import webdataset as wds

    if max_count <= 0:
        raise ValueError(f"max_count must be positive, got {max_count}")
    try:
        first = out_pattern % 0
    except TypeError:
        first = out_pattern
    if first == out_pattern:
        raise ValueError(f"out_pattern needs a shard-number placeholder such as %06d, got {out_pattern!r}")
    Path(first).parent.mkdir(parents=True, exist_ok=True)
    left_out: list[dict] = []
    shards: list[str] = []
    counts: dict[str, int] = {}
    writer = None
    try:
        for index, record in enumerate(records):
            path = record.resolve(video_root)
            reason = None if allow_outside_root else outside_root(record, video_root, follow_links=True)
            if reason is not None:
                pass
            elif not path.exists():
                reason = "file not found"
            elif not path.is_file():
                reason = "not a regular file"
            elif path.stat().st_size == 0:
                reason = "empty file (0 bytes)"
            if reason is not None:
                left_out.append({"index": index, "video_id": record.video_id, "path": str(path), "reason": reason})
                continue
            if writer is None:  # no empty shard when every video is missing
                writer = wds.ShardWriter(out_pattern, maxcount=max_count, verbose=0)
            sample = {
                "__key__": _safe_key(index, record.video_id),
                "mp4": path.read_bytes(),
                "json": json.dumps(record.to_dict(), ensure_ascii=False, default=str).encode("utf-8"),
                "record_index": str(index).encode("ascii"),
            }
            writer.write(sample)
            if not shards or shards[-1] != writer.fname:
                shards.append(writer.fname)
            counts[writer.fname] = counts.get(writer.fname, 0) + 1
    finally:
        if writer is not None:
            writer.close()
    _write_sizes(counts)
    if left_out:
        first_few = "; ".join(f"{m['path']}: {m['reason']}" for m in left_out[:3])
        log.warning("write_shards: left out %d record(s) whose video is unusable (%s%s)", len(left_out),
                    first_few, "; ..." if len(left_out) > 3 else "")
    if missing is not None:
        missing.extend(left_out)
    return shards


def _write_sizes(counts: dict[str, int]) -> None:
    """Add the shards' sample counts to the sizes.json beside them (what exact resume reads)."""
    for directory in {Path(name).parent for name in counts}:
        path = directory / SIZES_FILE
        sizes = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
        sizes.update({Path(name).name: n for name, n in counts.items() if Path(name).parent == directory})
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(dict(sorted(sizes.items())), indent=1), encoding="utf-8")
        tmp.replace(path)  # atomic: a reader never sees half a file
