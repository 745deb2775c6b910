"""The decord reader: decord indexes the file on opening and seeks on its own; the container header (read
with PyAV) supplies what decord does not report."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from structvl.data.video.base import VideoDecodeError, VideoReader, clamp, decoder_threads, fill_from_decoded, source

# FFmpeg demuxer names of the containers whose frames decord 0.6 gets wrong (a test checks each): its random
# access in MPEG-PS returns earlier frames, in FLV (H.264) the frame before the last, and in MPEG-TS it drops
# the first GOP even when decoding sequentially. open_video reads these with PyAV whatever the backend.
DECORD_MISREADS = ("mpeg", "mpegts", "flv")


class DecordReader(VideoReader):
    """decord's VideoReader: it builds a frame index when opening and seeks accurately itself."""

    def __init__(self, path: str | Path, data: bytes | None = None, header: tuple[int, int, str, str] | None = None,
                 threads: int | None = None):
        """threads: decord's decoding threads (`base.decoder_threads`: None = 1 in a loader worker or for small
        frames, else decord's choice; 0 = decord's choice)."""
        try:
            import decord
        except ImportError:
            raise ImportError("backend 'decord' needs the decord package: pip install decord") from None
        self._decord = decord
        self.path = Path(path)
        # decord reports neither the frame size nor the codec; the container header (PyAV, no decoding) has
        # both, and the container format, which open_video reads first to pick the decoder.
        self.width, self.height, self.codec, self.container_format = header or container_header(self.path, data)
        try:
            self._reader = decord.VideoReader(source(self.path, data), ctx=decord.cpu(0),
                                              num_threads=decoder_threads(threads, self.width, self.height))
        except (decord.DECORDError, RuntimeError) as e:  # decord raises both for unreadable files
            raise VideoDecodeError(self.path, f"cannot open video: {_first_line(e)}") from None
        self.num_frames = len(self._reader)
        self.fps = float(self._reader.get_avg_fps())
        if self.num_frames <= 0 or self.fps <= 0:
            raise VideoDecodeError(self.path, "video stream has no frames")
        self.duration = self.num_frames / self.fps

    def get_frames(self, indices: Sequence[int]) -> np.ndarray:
        wanted = clamp(indices, self.num_frames)
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
        return fill_from_decoded(self.path, wanted, decoded)

    def close(self) -> None:
        self._reader = None


def _first_line(error: Exception) -> str:
    # decord's messages carry a multi-line C++ stack trace; the first line says what went wrong. Its
    # "Error reading <path>..." for unreadable files says nothing the path does not.
    text = str(error).strip()
    if not text or text.startswith("Error reading"):
        return "not a readable video container"
    return text.splitlines()[0]


def container_header(path: Path, data: bytes | None = None) -> tuple[int, int, str, str]:
    """(width, height, codec name, FFmpeg demuxer name) from the container header, read with PyAV without
    decoding."""
    import av

    try:
        with av.open(source(path, data), metadata_errors="ignore") as container:
            context = container.streams.video[0].codec_context
            return context.width, context.height, context.name, container.format.name
    except (av.FFmpegError, IndexError, AttributeError) as e:
        raise VideoDecodeError(path, f"cannot read the video header ({type(e).__name__})") from None
