"""What every video reader shares: the reader interface, the error for unusable files, and the helpers
both decoders use (opening a file or bytes, their decoding threads, clamping requested indices, filling frames
that did not decode)."""

from __future__ import annotations

import io
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np


class VideoDecodeError(RuntimeError):
    """A video that cannot be used: the message names the file and why (missing, empty, undecodable, ...)."""

    def __init__(self, path: str | Path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


def check_file(path: Path) -> None:
    """Fail early, with a clear reason, on the two commonest broken inputs."""
    if not path.exists():
        raise VideoDecodeError(path, "file not found")
    if not path.is_file():
        raise VideoDecodeError(path, "not a regular file")
    if path.stat().st_size == 0:
        raise VideoDecodeError(path, "empty file (0 bytes)")


def source(path: Path, data: bytes | None) -> str | io.BytesIO:
    """What a decoder opens: the file at `path` (checked first), or the in-memory bytes `data` (`path` then
    only names the video in messages)."""
    if data is None:
        check_file(path)
        return str(path)
    if not data:
        raise VideoDecodeError(path, "empty file (0 bytes)")
    return io.BytesIO(data)


# Below this many pixels a frame (320x240) a decoder thread pool started for every file costs more than it saves
# (docs/findings.md, "Per core, measured again": the synthetic corpus's 64 px clips against 640x360 web video).
SMALL_FRAME_PIXELS = 320 * 240


def decoder_threads(threads: int | None, width: int = 0, height: int = 0) -> int:
    """The decoding threads a reader asks its decoder for: `threads` when given (0 = the decoder's own choice,
    FFmpeg's and decord's: about one a core), else 1 inside a DataLoader worker or for frames smaller than
    SMALL_FRAME_PIXELS, and the decoder's choice otherwise. In a loader the workers are the parallelism: each
    worker's decoder taking a thread a core would put cores x workers threads on the cores, and a thread pool
    costs more CPU time a clip than one thread (docs/findings.md, "Per core, measured again")."""
    if threads is not None:
        return threads
    if 0 < width * height < SMALL_FRAME_PIXELS:
        return 1
    loader = sys.modules.get("torch.utils.data")  # never imported here: a process without torch has no workers
    return 1 if loader is not None and loader.get_worker_info() is not None else 0


def clamp(indices: Sequence[int], num_frames: int) -> np.ndarray:
    """Requested indices as int64, clamped into [0, num_frames - 1]."""
    return np.clip(np.asarray(indices, dtype=np.int64).reshape(-1), 0, max(num_frames - 1, 0))


def fill_from_decoded(path: Path, wanted: np.ndarray, decoded: dict[int, np.ndarray]) -> np.ndarray:
    """Stack the frames for `wanted` (in order); an index that did not decode gets the nearest earlier
    decoded frame (the last frame of a truncated file), or the nearest later one if there is none."""
    if not decoded:
        raise VideoDecodeError(path, "no frame could be decoded (corrupt or truncated file)")
    have = np.array(sorted(decoded))
    out = []
    for index in wanted.tolist():
        pos = int(np.searchsorted(have, index, side="right")) - 1
        out.append(decoded[int(have[max(pos, 0)])])
    return np.stack(out)


class VideoReader:
    """What every backend provides. Use as a context manager, or call `close()`."""

    path: Path
    num_frames: int
    fps: float
    duration: float
    width: int
    height: int
    codec: str

    def get_frames(self, indices: Sequence[int]) -> np.ndarray:
        """uint8 RGB frames (N, H, W, 3) for `indices`, in the order given; duplicates allowed. Indices are
        clamped into [0, num_frames - 1]."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({str(self.path)!r}, {self.num_frames} frames, {self.fps:.3g} fps, "
                f"{self.width}x{self.height}, {self.codec})")
