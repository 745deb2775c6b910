"""`structvl data prepare`: re-encode raw videos once so that training decodes them cheaply.

Raw web videos are large (1080p, 30-60 fps) and have keyframes seconds apart, so fetching 8 frames means
decoding hundreds. Training needs a few frames at a few hundred pixels: re-encoding to H.264 with the
shorter side at `short_side`, `fps` frames per second and a keyframe every second makes every seek land
within one second of the wanted frame, and shrinks the data.

Safety: outputs go to `out_dir` only (which may not lie inside `src_dir`), each written to a temporary
file and renamed into place when complete, so an interrupted run never leaves a truncated file under the
final name; rerunning skips finished files and redoes the rest. Audio is dropped (no model here uses it).
"""

from __future__ import annotations

import math
import os
import sys
import time
from fractions import Fraction
from multiprocessing import Pool
from pathlib import Path

from tqdm import tqdm

VIDEO_EXTENSIONS = (".mp4", ".webm", ".avi", ".mkv", ".mov", ".m4v", ".mpg")


def find_videos(src_dir: Path) -> list[Path]:
    """Video files under `src_dir` (recursively, by extension), sorted for a stable order."""
    return sorted(p for p in src_dir.rglob("*") if p.suffix.lower() in VIDEO_EXTENSIONS and p.is_file())


def output_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """(width, height) with the shorter side scaled to `short_side` (never upscaled), both even (yuv420p
    stores colour at half resolution, so x264 needs even dimensions)."""
    scale = min(1.0, short_side / min(width, height))
    return max(2, 2 * round(width * scale / 2)), max(2, 2 * round(height * scale / 2))


def partial_path(dest: Path) -> Path:
    """Where `dest` is written before it is complete (hidden, so no video glob mistakes it for output)."""
    return dest.with_name(f".{dest.name}.part")


def reencode(src: Path, dest: Path, short_side: int, fps: float, crf: int, keyint: int | None) -> None:
    """Re-encode `src` into `dest` (H.264 mp4). Raises ValueError with a reason for an unusable source."""
    import av

    if src.stat().st_size == 0:
        raise ValueError("empty file (0 bytes)")
    tmp = partial_path(dest)
    try:
        with av.open(str(src), metadata_errors="ignore") as source:
            if not source.streams.video:
                raise ValueError("no video stream")
            in_stream = source.streams.video[0]
            in_rate = in_stream.average_rate or in_stream.guessed_rate
            # Lower the frame rate, never raise it: a higher rate would only duplicate frames.
            out_rate = Fraction(fps).limit_denominator(1001)
            if in_rate and float(in_rate) < float(out_rate):
                out_rate = Fraction(in_rate)
            width, height = output_size(in_stream.codec_context.width, in_stream.codec_context.height,
                                        short_side)
            frames_written = 0
            with av.open(str(tmp), "w", format="mp4") as sink:
                out_stream = sink.add_stream("libx264", rate=out_rate)
                out_stream.width, out_stream.height, out_stream.pix_fmt = width, height, "yuv420p"
                out_stream.codec_context.gop_size = keyint or max(1, round(float(out_rate)))
                out_stream.codec_context.options = {"crf": str(crf), "preset": "veryfast"}
                frames_written = _transcode_frames(source, in_stream, sink, out_stream, out_rate)
            if frames_written == 0:
                raise ValueError("no frame could be decoded")
        os.replace(tmp, dest)
    except av.FFmpegError as e:
        raise ValueError(f"unreadable video: {e.strerror or e}") from None
    finally:
        tmp.unlink(missing_ok=True)


def _transcode_frames(source, in_stream, sink, out_stream, out_rate: Fraction) -> int:
    """Decode, drop frames to `out_rate` by timestamp, resize, encode. Returns frames written.

    Output frame n covers [n / rate, (n + 1) / rate); the first source frame in each slot is kept and
    stamped with pts n, so clips keep their timing even where the source has gaps.
    """
    start = in_stream.start_time or 0
    time_base = float(in_stream.time_base)
    next_slot, written = 0, 0
    for frame in source.decode(in_stream):
        pts = frame.pts if frame.pts is not None else frame.dts
        slot = math.floor((pts - start) * time_base * out_rate + 1e-6) if pts is not None else next_slot
        if slot < next_slot:
            continue
        resized = frame.reformat(width=out_stream.width, height=out_stream.height, format="yuv420p",
                                 interpolation="AREA")
        resized.pts, resized.time_base = slot, 1 / out_rate
        sink.mux(out_stream.encode(resized))
        next_slot, written = slot + 1, written + 1
    sink.mux(out_stream.encode())  # flush the encoder's delayed frames
    return written


def _prepare_one(job: tuple) -> tuple[str, str, str | None]:
    """Pool task: ("done" | "failed", source path, reason)."""
    src, dest, short_side, fps, crf, keyint = job
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        reencode(src, dest, short_side, fps, crf, keyint)
    except (ValueError, OSError) as e:
        return "failed", str(src), str(e)
    except Exception as e:  # noqa: BLE001 - one odd file must not end a many-hour batch; it is reported
        return "failed", str(src), f"{type(e).__name__}: {e}"
    return "done", str(src), None


def prepare_videos(src_dir: str | Path, out_dir: str | Path, short_side: int = 256, fps: float = 8,
                   workers: int = 2, crf: int = 23, keyint: int | None = None) -> dict:
    """Re-encode every video under `src_dir` to `out_dir/<same relative path>.mp4`.

    short_side: target shorter side in pixels (smaller videos keep their size). fps: target frame rate
    (lower-rate videos keep theirs). crf: x264 quality, lower is better. keyint: frames between keyframes
    (default: one second). Returns {"done", "skipped_existing", "failed": [{"path", "reason"}], "seconds"}.
    """
    started = time.perf_counter()
    src_dir, out_dir = Path(src_dir).resolve(), Path(out_dir).resolve()
    if not src_dir.is_dir():
        raise FileNotFoundError(f"source directory {src_dir} does not exist")
    if out_dir == src_dir or src_dir in out_dir.parents:
        raise ValueError(f"output directory {out_dir} must lie outside the source directory {src_dir}")
    if short_side < 2 or fps <= 0:
        raise ValueError(f"need short_side >= 2 and fps > 0, got short_side={short_side}, fps={fps}")

    jobs, failed, claimed = [], [], {}
    skipped_existing = 0
    for src in find_videos(src_dir):
        dest = out_dir / src.relative_to(src_dir).with_suffix(".mp4")
        if dest in claimed:  # clip.avi and clip.mkv would both become clip.mp4
            failed.append({"path": str(src), "reason": f"output {dest} is also the output of {claimed[dest]}"})
            continue
        claimed[dest] = src
        if dest.exists():  # only ever created by a rename of a finished file
            skipped_existing += 1
        else:
            jobs.append((src, dest, short_side, fps, crf, keyint))

    done = 0
    with tqdm(total=len(jobs), desc="re-encoding videos", unit="video", file=sys.stderr, disable=None) as bar:
        if workers > 1 and len(jobs) > 1:
            with Pool(min(workers, len(jobs))) as pool:
                results = list(_track(pool.imap_unordered(_prepare_one, jobs), bar))
        else:
            results = list(_track(map(_prepare_one, jobs), bar))
    for status, path, reason in sorted(results, key=lambda r: r[1]):
        if status == "done":
            done += 1
        else:
            failed.append({"path": path, "reason": reason})
    return {"done": done, "skipped_existing": skipped_existing, "failed": failed,
            "seconds": round(time.perf_counter() - started, 3)}


def _track(results, bar):
    for result in results:
        bar.update(1)
        yield result
