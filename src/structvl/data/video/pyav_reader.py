"""The PyAV (FFmpeg) reader: seeks to keyframes where the container's timestamps allow it, decodes from the
start and counts frames where they do not (see the package docstring)."""

from __future__ import annotations

import io
import math
import os
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from structvl.data.video.base import VideoDecodeError, VideoReader, clamp, decoder_threads, fill_from_decoded, source

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


class PyAVReader(VideoReader):
    """FFmpeg through PyAV, seeking to keyframes so that a few frames cost a few GOPs, not the whole file."""

    def __init__(self, path: str | Path, data: bytes | None = None, threads: int | None = None):
        """threads: FFmpeg's decoding threads (`base.decoder_threads`: None = 1 in a loader worker or for small
        frames, else FFmpeg's choice; 0 = FFmpeg's choice). The frames are the same whatever the count."""
        import av

        self._av = av
        self.path = Path(path)
        self._threads_asked = threads
        self._source = source(self.path, data)
        self._container = self._open()
        try:
            self._read_header()
        except BaseException:
            self._container.close()
            raise
        self.frames_decoded = 0  # frames the decoder produced since opening (profiling, tests)
        self._gop = 0  # largest keyframe-to-keyframe distance seen within one decoding run
        self._last_keyframe = 0  # index of the last keyframe the current run decoded

    def _open(self):
        """Open the source; the demuxer then stands at the first packet (`_at_start`)."""
        if isinstance(self._source, io.BytesIO):
            self._source.seek(0)
        try:
            container = self._av.open(self._source, metadata_errors="ignore")
        except self._av.FFmpegError as e:
            raise VideoDecodeError(self.path, f"cannot open container: {e.strerror or e}") from None
        self._at_start = True
        return container

    def _reopen(self) -> None:
        """Back to the first packet of the file: the one position every container reaches exactly."""
        self._container.close()
        self._container = self._open()
        self._stream = self._container.streams.video[0]
        self._set_threads()

    def _set_threads(self) -> None:
        """Before the stream's first packet is decoded (the codec opens then). More than one thread (or 0, FFmpeg's
        count) decodes whole frames in parallel as well as slices: PyAV's own setting, slices only, leaves a
        stream of one slice a frame (most web video) on one core."""
        context = self._stream.codec_context
        if self.threads != 1:
            context.thread_type = "AUTO"
        context.thread_count = self.threads

    def _read_header(self) -> None:
        if not self._container.streams.video:
            raise VideoDecodeError(self.path, "no video stream")
        stream = self._stream = self._container.streams.video[0]
        if stream.codec_context is None:
            raise VideoDecodeError(self.path, "unsupported codec (no decoder in this FFmpeg build)")
        self.codec = stream.codec_context.name
        self.width, self.height = stream.codec_context.width, stream.codec_context.height
        self.threads = decoder_threads(self._threads_asked, self.width, self.height)
        self._set_threads()
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        if not rate or float(rate) <= 0:
            raise VideoDecodeError(self.path, "unknown frame rate")
        self.fps = float(rate)
        self._time_base = float(stream.time_base)
        self._start_pts = stream.start_time or 0
        # Frames are placed by counting from the start of the file, not by their timestamps, in containers
        # whose timestamps may jump (FFmpeg's ts_discont flag: MPEG-PS and MPEG-TS; there a seek lands past
        # its target, or on stamps half a frame off), and in streams with packets that have none (MPEG-PS
        # stamps a PES packet, not a frame, and the decoder pins the stamps it has on the wrong frames
        # around B-frames).
        self._counted = bool(self._container.format.flags & self._av.format.Flags.ts_discont.value)
        self._seekable = not self._counted  # until a seek lands past its target (see get_frames)
        self._run_seeked = False  # whether the current decoding run started with a seek
        if stream.duration:
            duration = stream.duration * self._time_base
        elif self._container.duration:
            duration = self._container.duration / self._av.time_base
        else:
            duration = 0.0
        if stream.frames > 0:  # mp4, mov, avi, ... store the count (a truncated file's is too high)
            self.num_frames = int(stream.frames)
        else:
            self.num_frames = self._measure_frames()
            duration = self.num_frames / self.fps
            self._seekable = not self._counted
        if self.num_frames <= 0:
            raise VideoDecodeError(self.path, "video stream has no frames (no frame count and no timestamps)")
        self.duration = duration if duration > 0 else self.num_frames / self.fps

    def _measure_frames(self) -> int:
        """The frame count of a stream whose header has none: where the last packet's frame ends, from the
        timestamps of the last GOP's packets (a seek to the end and no decoding), or of every packet from
        the start when that seek finds none (an FLV without a keyframe index).

        A partial frame counts as one: a count one too high costs a repeated last frame, one too low a frame
        that can never be asked for."""
        end = None
        try:
            self._container.seek(self._start_pts + (1 << 40), stream=self._stream, backward=True)
            self._at_start = False
            end = self._end_timestamp()
        except self._av.FFmpegError:
            pass
        if end is None:
            self._reopen()
            end = self._end_timestamp()
            self._reopen()
        if end is None:
            return 0
        return math.ceil((end - self._start_pts) * self._time_base * self.fps - 1e-3)

    def _end_timestamp(self) -> int | None:
        """The end (pts + duration) of the latest frame among the packets from here to the end of the stream.
        A packet without a timestamp follows the one before it; a damaged packet ends the stream."""
        frame_ticks = max(1, round(1 / (self.fps * self._time_base)))
        end, running = None, None
        packets = self._container.demux(self._stream)
        while True:
            try:
                packet = next(packets)
            except (StopIteration, self._av.FFmpegError, EOFError):
                return end
            if not packet.size:  # the flush packet at the end
                continue
            duration = packet.duration or frame_ticks
            stamp = packet.pts if packet.pts is not None else packet.dts
            self._counted = self._counted or stamp is None
            running = stamp if stamp is not None else None if running is None else running + duration
            if running is not None:
                end = running + duration if end is None else max(end, running + duration)

    # ------------------------------------------------------------------ decoding
    def _run_from(self, target: int):
        """Position the demuxer at the keyframe at or before frame `target` and yield (index, frame) from
        there on; index is None for a frame that cannot be placed (no timestamp, nothing decoded before it).

        Seeks while seeking is trusted; otherwise decodes from the start of the file (re-opening it, unless
        nothing was read yet). Ends quietly at the end of the stream or at the first packet FFmpeg cannot
        decode (a truncated or damaged file): what follows it counts as not decodable. Keyframes seen refine
        the GOP estimate.
        """
        from_start = not self._seekable or (target == 0 and self._at_start)
        self._run_seeked = not from_start
        if from_start:
            if not self._at_start:
                self._reopen()
        else:
            pts = self._start_pts + int(target / self.fps / self._time_base)
            try:
                self._container.seek(pts, stream=self._stream, backward=True, any_frame=False)
            except self._av.FFmpegError:
                return
        self._at_start = False
        self._last_keyframe, first_key = target, True
        index = -1 if from_start else None  # counted from the start of the file, the first frame is frame 0
        frames = self._container.decode(self._stream)
        while True:
            try:
                frame = next(frames)
            except (StopIteration, self._av.FFmpegError, EOFError):
                return
            self.frames_decoded += 1
            pts = frame.pts if frame.pts is not None else frame.dts
            if pts is None and not self._counted:  # found only now: the next runs count from the start
                self._counted, self._seekable = True, False
            if pts is not None and not self._counted:
                index = round((pts - self._start_pts) * self._time_base * self.fps)
            elif index is not None:
                index += 1
            if index is not None and frame.key_frame:
                if not first_key:
                    self._gop = max(self._gop, index - self._last_keyframe)
                self._last_keyframe, first_key = index, False
            yield index, frame

    def _seek_pays_off(self, current: int, target: int) -> bool:
        """A seek lands on the keyframe before `target`; it only saves work when that keyframe lies past
        `current`. The demuxer's index says which keyframe each frame follows where it was read from the file
        (mp4 and mov list every frame, mkv and webm with cues their keyframes), which is so where it lists
        frames past `current`: the demuxer has not read that far. Elsewhere (an index built while reading, or
        none) the gap must be longer than a GOP, which is only known from keyframes decoded so far, so the
        distance already decoded past `current`'s keyframe is a lower bound for it too. A wrong guess costs
        time, never a wrong frame."""
        if not self._seekable or target - current <= MIN_SEEK_GAP:
            return False
        entries = self._stream.index_entries
        if len(entries):
            # Index timestamps are decode timestamps in mp4 (the first frame's is below its pts by the B-frame
            # delay): frame k is placed k frame durations after the first entry.
            first, ticks = entries[0].timestamp, 1 / (self.fps * self._time_base)
            here, there = first + round(current * ticks), first + round(target * ticks)
            if here < entries[len(entries) - 1].timestamp:
                return entries.search_timestamp(there) > entries.search_timestamp(here)
        return target - current > max(self._gop, current - self._last_keyframe)

    def _rgb(self, frame) -> np.ndarray:
        # Converting to the header's size keeps a stream whose resolution changes midway stackable.
        # threads=1: the default (a pool of CPU-count threads) oversubscribes loader workers and, with a
        # pool alive, forking a worker can deadlock it.
        rgb = _reformatter().reformat(frame, width=self.width, height=self.height, format="rgb24", threads=1)
        return rgb.to_ndarray()

    def get_frames(self, indices: Sequence[int]) -> np.ndarray:
        wanted = clamp(indices, self.num_frames)
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
                if self._run_seeked and (current is None or current[0] is None or current[0] > target):
                    # The seek overshot, landed on a frame it cannot place, or found nothing (MPEG-TS, a
                    # sparse or wrong index): seeking is not trusted again; decode from the start.
                    self._seekable = False
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
        return fill_from_decoded(self.path, wanted, decoded)

    def close(self) -> None:
        self._container.close()
