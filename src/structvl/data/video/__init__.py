"""Reading frames out of video files: one interface, two decoders.

`open_video(path, backend)` returns a reader with the same attributes and the same `get_frames` whatever the
decoder: "pyav" (FFmpeg through PyAV, always installed) or "decord" (optional, `pip install decord`).
Both give uint8 RGB frames (N, H, W, 3) in the order asked for.

Three things make real datasets harder than the happy path:

* Videos are long and a clip needs a handful of frames, so the PyAV reader seeks to the keyframe before
  each wanted frame and decodes forward from there instead of decoding the file from the start; it decodes on
  instead where the demuxer's index says the next wanted frame follows the same keyframe. Frames are
  identified by their presentation timestamp (pts), never by counting, because counting is wrong after a seek.
  Each reader decodes on one thread inside a DataLoader worker (the workers are the parallelism) and with the
  decoder's threads elsewhere (`threads` of `open_video`).
* Container metadata lies (frame counts of truncated downloads; webm/mkv/MPEG-PS/MPEG-TS/FLV files carry no
  count at all, and MPEG-PS durations are guesses from the bit rate). Without a count in the header, the
  count is measured from the timestamps of the last packets (one seek to the end, no decoding), or by
  demuxing the stream from the start when that finds nothing. A requested frame that turns out not to
  exist, or not to decode, is replaced by the last frame that did. If no frame decodes at all the reader
  raises `VideoDecodeError` - a reader never invents a black frame.
* Timestamps and seeks are not always right. MPEG-PS and MPEG-TS (FFmpeg's `ts_discont` formats: their
  timestamps may jump, a seek lands past its target or on stamps half a frame off, and MPEG-PS stamps a PES
  packet, not each frame) are decoded from the start and their frames counted; `structvl data prepare`
  re-encodes them into seekable mp4. Elsewhere, a seek that overshoots its frame, or lands on a frame that
  cannot be placed, is not trusted again for that file: the reader re-opens it and decodes from the start.
  decord, which seeks on its own where this cannot be checked, returns wrong frames from MPEG-PS, MPEG-TS
  and FLV files, so `open_video(..., "decord")` reads those containers with PyAV.

Modules: `base` (the reader interface, VideoDecodeError, shared helpers), `pyav_reader`, `decord_reader`.
"""

from __future__ import annotations

from pathlib import Path

from structvl.data.video.base import VideoDecodeError, VideoReader
from structvl.data.video.decord_reader import DECORD_MISREADS, DecordReader, container_header
from structvl.data.video.pyav_reader import PyAVReader

__all__ = ["BACKENDS", "DECORD_MISREADS", "DecordReader", "PyAVReader", "VideoDecodeError", "VideoReader",
           "open_video", "open_video_bytes", "probe_video"]

BACKENDS = ("pyav", "decord")


def _open(path: str | Path, data: bytes | None, backend: str, threads: int | None) -> VideoReader:
    if backend == "pyav":
        return PyAVReader(path, data, threads)
    if backend == "decord":
        header = container_header(Path(path), data)
        if header[3] in DECORD_MISREADS:
            return PyAVReader(path, data, threads)
        return DecordReader(path, data, header, threads)
    raise ValueError(f"unknown video backend {backend!r}; expected one of {BACKENDS}")


def open_video(path: str | Path, backend: str = "pyav", threads: int | None = None) -> VideoReader:
    """Open `path` with the named decoder (PyAV for the containers in DECORD_MISREADS). Raises
    VideoDecodeError for a file that is unusable. threads: the decoder's threads (None: 1 in a DataLoader
    worker, the decoder's own choice elsewhere; 0: the decoder's choice; `base.decoder_threads`)."""
    return _open(path, None, backend, threads)


def open_video_bytes(data: bytes, name: str, backend: str = "pyav", threads: int | None = None) -> VideoReader:
    """Open a video held in memory (e.g. an mp4 member of a webdataset shard) with the named decoder.

    `name` stands in for the path in the reader's `path` and in error messages; threads as for `open_video`.
    Raises VideoDecodeError for bytes that are not a usable video.
    """
    return _open(name, bytes(data), backend, threads)


def probe_video(path: str | Path, backend: str = "pyav") -> dict:
    """num_frames, fps, duration, width, height and codec of a video, after decoding its first frame (so a
    file whose header parses but whose data does not decode raises VideoDecodeError here, not in training)."""
    with open_video(path, backend) as reader:
        reader.get_frames([0])
        return {"num_frames": reader.num_frames, "fps": reader.fps, "duration": reader.duration,
                "width": reader.width, "height": reader.height, "codec": reader.codec}
