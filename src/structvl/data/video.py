"""Reading frames out of video files: one interface, two decoders.

`open_video(path, backend)` returns a reader with the same attributes and the same `get_frames` whatever the
decoder: "pyav" (FFmpeg through PyAV, always installed) or "decord" (optional, `pip install decord`).
Both give uint8 RGB frames (N, H, W, 3) in the order asked for.

Two things make real datasets harder than the happy path:

* Videos are long and a clip needs a handful of frames, so the PyAV reader seeks to the keyframe before
  each wanted frame and decodes forward from there instead of decoding the file from the start. Frames are
  identified by their presentation timestamp (pts), never by counting, because counting is wrong after a seek.
* Container metadata lies (frame counts of truncated downloads, webm/mkv files that carry no count at all).
  `num_frames` is the best estimate available without decoding everything; a requested frame that turns
  out not to exist, or not to decode, is replaced by the last frame that did. If no frame decodes at all the
  reader raises `VideoDecodeError` - a reader never invents a black frame.
"""

from __future__ import annotations

import io
import os
import threading
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path

import numpy as np

BACKENDS = ("pyav", "decord")
# Below this gap (in frames) decoding forward is assumed cheaper than a seek, whose demuxer repositioning
# and decoder flush cost about as much as decoding a few small frames.
MIN_SEEK_GAP = 8


_per_thread = threading.local()


def _reformatter():
    """This thread's PyAV colour converter (YUV -> RGB).

    Reusing one keeps FFmpeg's conversion context alive between frames and files (sizes rarely change); a
    fresh one per file, as `frame.to_ndarray` makes, costs more than decoding a small frame. One per thread,
    because a context must not be shared across threads, and a new one after a fork: a DataLoader worker
    must not touch a context its parent created.
    """
    if getattr(_per_thread, "pid", None) != os.getpid():
        from av.video.reformatter import VideoReformatter

        _per_thread.reformatter, _per_thread.pid = VideoReformatter(), os.getpid()
    return _per_thread.reformatter


class VideoDecodeError(RuntimeError):
    """A video that cannot be used: the message names the file and why (missing, empty, undecodable, ...)."""

    def __init__(self, path: str | Path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


def _check_file(path: Path) -> None:
    """Fail early, with a clear reason, on the two commonest broken inputs."""
    if not path.exists():
        raise VideoDecodeError(path, "file not found")
    if not path.is_file():
        raise VideoDecodeError(path, "not a regular file")
    if path.stat().st_size == 0:
        raise VideoDecodeError(path, "empty file (0 bytes)")


def _source(path: Path, data: bytes | None) -> str | io.BytesIO:
    """What a decoder opens: the file at `path` (checked first), or the in-memory bytes `data` (`path` then
    only names the video in messages)."""
    if data is None:
        _check_file(path)
        return str(path)
    if not data:
        raise VideoDecodeError(path, "empty file (0 bytes)")
    return io.BytesIO(data)


def _clamp(indices: Sequence[int], num_frames: int) -> np.ndarray:
    """Requested indices as int64, clamped into [0, num_frames - 1]."""
    return np.clip(np.asarray(indices, dtype=np.int64).reshape(-1), 0, max(num_frames - 1, 0))


def _fill_from_decoded(path: Path, wanted: np.ndarray, decoded: dict[int, np.ndarray]) -> np.ndarray:
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


class PyAVReader(VideoReader):
    """FFmpeg through PyAV, seeking to keyframes so that a few frames cost a few GOPs, not the whole file."""

    def __init__(self, path: str | Path, data: bytes | None = None):
        import av

        self._av = av
        self.path = Path(path)
        source = _source(self.path, data)
        try:
            self._container = av.open(source, metadata_errors="ignore")
        except av.FFmpegError as e:
            raise VideoDecodeError(self.path, f"cannot open container: {e.strerror or e}") from None
        try:
            self._read_header()
        except BaseException:
            self._container.close()
            raise
        self.frames_decoded = 0  # frames the decoder produced since opening (profiling, tests)
        self._gop = 0  # largest keyframe-to-keyframe distance seen within one decoding run
        self._last_keyframe = 0  # index of the last keyframe the current run decoded

    def _read_header(self) -> None:
        if not self._container.streams.video:
            raise VideoDecodeError(self.path, "no video stream")
        stream = self._stream = self._container.streams.video[0]
        if stream.codec_context is None:
            raise VideoDecodeError(self.path, "unsupported codec (no decoder in this FFmpeg build)")
        self.codec = stream.codec_context.name
        self.width, self.height = stream.codec_context.width, stream.codec_context.height
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        if not rate or float(rate) <= 0:
            raise VideoDecodeError(self.path, "unknown frame rate")
        self.fps = float(rate)
        self._time_base = float(stream.time_base)
        self._start_pts = stream.start_time or 0
        if stream.duration:
            duration = stream.duration * self._time_base
        elif self._container.duration:
            duration = self._container.duration / self._av.time_base
        else:
            duration = 0.0
        # mp4/avi store the frame count; webm/mkv do not, and there duration x fps is the best estimate
        # that needs no full decode. Either can be wrong; get_frames copes with frames that do not exist.
        self.num_frames = int(stream.frames) if stream.frames > 0 else int(round(duration * self.fps))
        if self.num_frames <= 0:
            raise VideoDecodeError(self.path, "video stream has no frames (no frame count and no duration)")
        self.duration = duration if duration > 0 else self.num_frames / self.fps

    # ------------------------------------------------------------------ decoding
    def _index_of(self, frame) -> int:
        pts = frame.pts if frame.pts is not None else frame.dts
        return int(round((pts - self._start_pts) * self._time_base * self.fps))

    def _run_from(self, target: int):
        """Seek to the keyframe at or before frame `target` and yield (index, frame) from there on.

        Ends quietly at the end of the stream or at the first packet FFmpeg cannot decode (a truncated or
        damaged file): what follows it counts as not decodable. Keyframes seen refine the GOP estimate.
        """
        pts = self._start_pts + int(target / self.fps / self._time_base)
        try:
            self._container.seek(pts, stream=self._stream, backward=True, any_frame=False)
        except self._av.FFmpegError:
            return
        self._last_keyframe, first_key = target, True
        frames = self._container.decode(self._stream)
        while True:
            try:
                frame = next(frames)
            except (StopIteration, self._av.FFmpegError, EOFError):
                return
            self.frames_decoded += 1
            index = self._index_of(frame)
            if frame.key_frame:
                if not first_key:
                    self._gop = max(self._gop, index - self._last_keyframe)
                self._last_keyframe, first_key = index, False
            yield index, frame

    def _seek_pays_off(self, current: int, target: int) -> bool:
        """A seek lands on the keyframe before `target`; it only saves work when that keyframe lies past
        `current`, i.e. when the gap is longer than a GOP. The GOP is only known from keyframes decoded so
        far, so the distance already decoded past `current`'s keyframe is a lower bound for it too."""
        return target - current > max(self._gop, current - self._last_keyframe, MIN_SEEK_GAP)

    def _rgb(self, frame) -> np.ndarray:
        # Converting to the header's size keeps a stream whose resolution changes midway stackable.
        # threads=1: the default (a pool of CPU-count threads) oversubscribes loader workers and, with a
        # pool alive, forking a worker can deadlock it.
        rgb = _reformatter().reformat(frame, width=self.width, height=self.height, format="rgb24", threads=1)
        return rgb.to_ndarray()

    def get_frames(self, indices: Sequence[int]) -> np.ndarray:
        wanted = _clamp(indices, self.num_frames)
        if wanted.size == 0:
            return np.zeros((0, self.height, self.width, 3), np.uint8)
        decoded: dict[int, np.ndarray] = {}
        run, previous, current, ended = None, None, None, False
        for target in np.unique(wanted).tolist():
            if ended:
                break
            if run is None or (current[0] < target and self._seek_pays_off(current[0], target)):
                run, previous = self._run_from(target), None
                current = next(run, None)
                if target > 0 and (current is None or current[0] > target):
                    # The seek overshot or found nothing (a sparse or wrong index): decode from the start.
                    run = self._run_from(0)
                    current = next(run, None)
                if current is None:
                    break
            while current[0] < target:
                following = next(run, None)
                if following is None:
                    ended = True
                    break
                previous, current = current, following
            if current[0] <= target or previous is None:
                # Exactly the wanted frame; or the stream ended (a truncated file) before reaching it; or
                # the first decodable frame already lies past it.
                decoded[target] = self._rgb(current[1])
            else:
                # No frame carries this index (a timestamp gap): the frame on screen at that time is the one
                # before it.
                decoded[target] = self._rgb(previous[1])
        return _fill_from_decoded(self.path, wanted, decoded)

    def close(self) -> None:
        self._container.close()


class DecordReader(VideoReader):
    """decord's VideoReader: it builds a frame index when opening and seeks accurately itself."""

    def __init__(self, path: str | Path, data: bytes | None = None):
        try:
            import decord
        except ImportError:
            raise ImportError("backend 'decord' needs the decord package: pip install decord") from None
        self._decord = decord
        self.path = Path(path)
        self._data = data
        try:
            self._reader = decord.VideoReader(_source(self.path, data), ctx=decord.cpu(0))
        except (decord.DECORDError, RuntimeError) as e:  # decord raises both for unreadable files
            raise VideoDecodeError(self.path, f"cannot open video: {_first_line(e)}") from None
        self.num_frames = len(self._reader)
        self.fps = float(self._reader.get_avg_fps())
        if self.num_frames <= 0 or self.fps <= 0:
            raise VideoDecodeError(self.path, "video stream has no frames")
        self.duration = self.num_frames / self.fps

    # decord reports neither the frame size nor the codec. The container header has both, read on first
    # use only: the data loader never asks, and parsing the header again costs ~10% of a small clip's decode.
    @cached_property
    def _header(self) -> tuple[int, int, str]:
        return _header_size_and_codec(self.path, self._data)

    @property
    def width(self) -> int:
        return self._header[0]

    @property
    def height(self) -> int:
        return self._header[1]

    @property
    def codec(self) -> str:
        return self._header[2]

    def get_frames(self, indices: Sequence[int]) -> np.ndarray:
        wanted = _clamp(indices, self.num_frames)
        if wanted.size == 0:
            return np.zeros((0, self.height, self.width, 3), np.uint8)
        try:
            return self._reader.get_batch(wanted.tolist()).asnumpy()
        except (self._decord.DECORDError, RuntimeError) as e:
            if "must exactly match" in str(e):
                # decord 0.6 mis-copies padded rows of some narrow frames (widths 16, 24, 48, 72 px).
                raise VideoDecodeError(self.path, f"decord cannot convert {self.width}x{self.height} frames "
                                                  "(a decord bug with narrow frames); use backend 'pyav'") from None
        # Some frame does not decode (a truncated file whose header promised more): take frames one at a
        # time and stop at the first failure, like the PyAV reader does at the end of the decodable stream.
        decoded = {}
        for index in np.unique(wanted).tolist():
            try:
                decoded[index] = self._reader.get_batch([index]).asnumpy()[0]
            except (self._decord.DECORDError, RuntimeError):
                break
        return _fill_from_decoded(self.path, wanted, decoded)

    def close(self) -> None:
        self._reader = None


def _first_line(error: Exception) -> str:
    # decord's messages carry a multi-line C++ stack trace; the first line says what went wrong. Its
    # "Error reading <path>..." for unreadable files says nothing the path does not.
    text = str(error).strip()
    if not text or text.startswith("Error reading"):
        return "not a readable video container"
    return text.splitlines()[0]


def _header_size_and_codec(path: Path, data: bytes | None = None) -> tuple[int, int, str]:
    """(width, height, codec name) from the container header, read with PyAV without decoding."""
    import av

    try:
        with av.open(str(path) if data is None else io.BytesIO(data), metadata_errors="ignore") as container:
            context = container.streams.video[0].codec_context
            return context.width, context.height, context.name
    except (av.FFmpegError, IndexError, AttributeError) as e:
        raise VideoDecodeError(path, f"cannot read the video header ({type(e).__name__})") from None


def open_video(path: str | Path, backend: str = "pyav") -> VideoReader:
    """Open `path` with the named decoder. Raises VideoDecodeError for a file that is unusable."""
    if backend == "pyav":
        return PyAVReader(path)
    if backend == "decord":
        return DecordReader(path)
    raise ValueError(f"unknown video backend {backend!r}; expected one of {BACKENDS}")


def open_video_bytes(data: bytes, name: str, backend: str = "pyav") -> VideoReader:
    """Open a video held in memory (e.g. an mp4 member of a webdataset shard) with the named decoder.

    `name` stands in for the path in the reader's `path` and in error messages. Raises VideoDecodeError for
    bytes that are not a usable video.
    """
    if backend == "pyav":
        return PyAVReader(name, data=bytes(data))
    if backend == "decord":
        return DecordReader(name, data=bytes(data))
    raise ValueError(f"unknown video backend {backend!r}; expected one of {BACKENDS}")


def probe_video(path: str | Path, backend: str = "pyav") -> dict:
    """num_frames, fps, duration, width, height and codec of a video, after decoding its first frame (so a
    file whose header parses but whose data does not decode raises VideoDecodeError here, not in training)."""
    with open_video(path, backend) as reader:
        reader.get_frames([0])
        return {"num_frames": reader.num_frames, "fps": reader.fps, "duration": reader.duration,
                "width": reader.width, "height": reader.height, "codec": reader.codec}
