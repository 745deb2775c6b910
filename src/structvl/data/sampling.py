"""Which frames of a video a clip is made of.

`sample_frame_indices` turns (video length, fps, clip annotation window) into `num_frames` frame indices
plus a validity mask. Three strategies, all restricted to the annotated [start_sec, end_sec] window when
there is one (ActivityNet / DiDeMo captions describe a moment, not the whole video):

* "uniform" (evaluation): the centre frame of each of `num_frames` equal segments. Deterministic.
* "random_segment" (training; TSN / ClipBERT sparse sampling): one random frame inside each segment, so
  every epoch sees different frames while the clip still spans the whole window.
* "fps" (fixed frame rate): frames `1 / target_fps` seconds apart from the window start, or from a random
  offset inside the window when an `rng` is given (training).

Short videos. With uniform / random_segment a window shorter than `num_frames` frames gives repeated
indices (segments narrower than one frame share it); every position is still a real frame of the window at
its proper time, so all are valid - this is the usual TSN/ClipBERT behaviour and keeps the clip's time axis
evenly spread. With "fps", the positions past the window's end do not exist at that frame rate: they are
padded with the last real index and marked invalid (`valid=False`), so the model can mask them out instead
of learning from a frozen frame that claims to be later in time.
"""

from __future__ import annotations

import math

import numpy as np

SAMPLING_MODES = ("uniform", "random_segment", "fps")


def frame_window(total_frames: int, video_fps: float, start_sec: float | None = None,
                 end_sec: float | None = None) -> tuple[int, int]:
    """The [first, stop) frame range covering [start_sec, end_sec]; never empty.

    A window that lies partly or wholly outside the video is clamped into it (annotations are often made
    against a slightly different copy of the video), keeping at least one frame.
    """
    first = 0 if start_sec is None else int(math.floor(start_sec * video_fps))
    stop = total_frames if end_sec is None else int(math.ceil(end_sec * video_fps))
    first = min(max(first, 0), total_frames - 1)
    stop = min(max(stop, first + 1), total_frames)
    return first, stop


def sample_frame_indices(total_frames: int, video_fps: float, num_frames: int, mode: str,
                         rng: np.random.Generator | None = None, start_sec: float | None = None,
                         end_sec: float | None = None,
                         target_fps: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """`num_frames` frame indices (int64) into the video and a bool mask of which positions are real.

    total_frames, video_fps: the decoded video's length and rate.
    mode: "uniform", "random_segment" (needs `rng`) or "fps" (needs `target_fps`; `rng` randomises the start).
    start_sec, end_sec: the annotated window; None means the start / end of the video.
    """
    if total_frames <= 0 or video_fps <= 0:
        raise ValueError(f"need a video with frames and a frame rate, got total_frames={total_frames}, "
                         f"video_fps={video_fps}")
    if num_frames <= 0:
        raise ValueError(f"num_frames must be positive, got {num_frames}")
    first, stop = frame_window(total_frames, video_fps, start_sec, end_sec)
    length = stop - first

    if mode == "uniform":
        offsets = _segment_centres(length, num_frames)
        valid = np.ones(num_frames, bool)
    elif mode == "random_segment":
        if rng is None:
            raise ValueError("sampling mode 'random_segment' needs an rng (use 'uniform' for evaluation)")
        offsets = _random_in_segments(length, num_frames, rng)
        valid = np.ones(num_frames, bool)
    elif mode == "fps":
        if not target_fps or target_fps <= 0:
            raise ValueError(f"sampling mode 'fps' needs a positive target_fps, got {target_fps}")
        offsets, valid = _fixed_rate(length, num_frames, video_fps / target_fps, rng)
    else:
        raise ValueError(f"unknown sampling mode {mode!r}; expected one of {SAMPLING_MODES}")
    return (first + offsets).astype(np.int64), valid


def _segment_bounds(length: int, num_frames: int) -> np.ndarray:
    """num_frames + 1 boundaries splitting [0, length) into equal (fractional) segments."""
    return np.linspace(0.0, length, num_frames + 1)


def _segment_centres(length: int, num_frames: int) -> np.ndarray:
    bounds = _segment_bounds(length, num_frames)
    return np.minimum(np.floor((bounds[:-1] + bounds[1:]) / 2), length - 1).astype(np.int64)


def _random_in_segments(length: int, num_frames: int, rng: np.random.Generator) -> np.ndarray:
    bounds = _segment_bounds(length, num_frames)
    # A uniform draw in [lo, hi) floored to a frame: segments narrower than one frame land on the frame
    # they overlap, so short videos repeat frames instead of failing.
    draws = bounds[:-1] + rng.random(num_frames) * (bounds[1:] - bounds[:-1])
    return np.minimum(np.floor(draws), length - 1).astype(np.int64)


def _fixed_rate(length: int, num_frames: int, step: float,
                rng: np.random.Generator | None) -> tuple[np.ndarray, np.ndarray]:
    """Frames `step` source frames apart (step < 1 repeats frames: the target rate is above the video's)."""
    span = (num_frames - 1) * step + 1  # source frames the clip covers
    slack = max(0.0, length - span)
    start = rng.random() * slack if rng is not None else 0.0
    positions = np.floor(start + step * np.arange(num_frames)).astype(np.int64)
    valid = positions < length
    last_real = positions[valid][-1] if valid.any() else 0
    return np.where(valid, positions, last_real), valid
