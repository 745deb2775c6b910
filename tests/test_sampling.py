"""Frame-index sampling: uniform centres, random segments, fixed fps, windows and short videos."""

from __future__ import annotations

import numpy as np
import pytest

from structvl.data.sampling import frame_window, sample_frame_indices


def test_uniform_takes_segment_centres():
    indices, valid = sample_frame_indices(100, 25.0, 4, "uniform")
    assert indices.tolist() == [12, 37, 62, 87]
    assert indices.dtype == np.int64 and valid.dtype == bool and valid.all()


def test_uniform_ignores_rng():
    a, _ = sample_frame_indices(90, 30.0, 8, "uniform")
    b, _ = sample_frame_indices(90, 30.0, 8, "uniform", rng=np.random.default_rng(3))
    assert a.tolist() == b.tolist()


def test_random_segment_draws_one_frame_per_segment():
    bounds = np.linspace(0, 80, 9)
    draws = set()
    for seed in range(50):
        indices, valid = sample_frame_indices(80, 25.0, 8, "random_segment", rng=np.random.default_rng(seed))
        assert valid.all()
        assert np.all((indices >= np.floor(bounds[:-1])) & (indices < bounds[1:]))
        draws.add(tuple(indices))
    assert len(draws) > 40  # actually random


def test_random_segment_is_reproducible_and_needs_rng():
    a, _ = sample_frame_indices(300, 30.0, 8, "random_segment", rng=np.random.default_rng(7))
    b, _ = sample_frame_indices(300, 30.0, 8, "random_segment", rng=np.random.default_rng(7))
    assert a.tolist() == b.tolist()
    with pytest.raises(ValueError, match="needs an rng"):
        sample_frame_indices(300, 30.0, 8, "random_segment")


@pytest.mark.parametrize("mode", ["uniform", "random_segment"])
def test_short_video_repeats_real_frames(mode):
    # 3 frames for 8 positions: frames repeat (the documented TSN choice) and all count as real.
    indices, valid = sample_frame_indices(3, 8.0, 8, mode, rng=np.random.default_rng(0))
    assert len(indices) == 8 and valid.all()
    assert indices.min() >= 0 and indices.max() <= 2
    assert np.all(np.diff(indices) >= 0)  # time order is kept
    assert set(indices.tolist()) == {0, 1, 2}


@pytest.mark.parametrize("mode", ["uniform", "random_segment", "fps"])
def test_window_restricts_frames(mode):
    # 10 s at 30 fps; the annotation covers 4.0-6.0 s, i.e. frames 120..179.
    for seed in range(10):
        indices, _ = sample_frame_indices(300, 30.0, 8, mode, rng=np.random.default_rng(seed), start_sec=4.0,
                                          end_sec=6.0, target_fps=5.0)
        assert indices.min() >= 120 and indices.max() <= 179


def test_window_is_clamped_into_the_video():
    assert frame_window(100, 10.0, 8.0, 20.0) == (80, 100)  # end past the video
    assert frame_window(100, 10.0, 15.0, 20.0) == (99, 100)  # window wholly after it: last frame
    assert frame_window(100, 10.0, -1.0, None) == (0, 100)
    assert frame_window(100, 10.0, 5.0, 5.0) == (50, 51)  # empty window: at least one frame


def test_fps_mode_steps_at_the_target_rate_from_window_start():
    indices, valid = sample_frame_indices(300, 30.0, 4, "fps", start_sec=2.0, target_fps=10.0)
    assert indices.tolist() == [60, 63, 66, 69] and valid.all()


def test_fps_mode_pads_past_the_window_end_and_marks_it_invalid():
    # 1 s window at 30 fps, 8 frames at 4 fps need 2 s: only 4 positions exist.
    indices, valid = sample_frame_indices(300, 30.0, 8, "fps", start_sec=1.0, end_sec=2.0, target_fps=4.0)
    assert valid.tolist() == [True] * 4 + [False] * 4
    assert indices[:4].tolist() == [30, 37, 45, 52]
    assert (indices[4:] == indices[3]).all()  # padding repeats the last real frame, masked out


def test_fps_mode_random_start_stays_inside_the_window():
    starts = set()
    for seed in range(30):
        indices, valid = sample_frame_indices(300, 30.0, 4, "fps", rng=np.random.default_rng(seed), target_fps=10.0)
        assert valid.all() and indices.max() < 300
        assert np.all(np.diff(indices) == 3)
        starts.add(int(indices[0]))
    assert len(starts) > 20


def test_fps_mode_above_video_rate_repeats_frames():
    indices, valid = sample_frame_indices(100, 5.0, 4, "fps", target_fps=10.0)
    assert indices.tolist() == [0, 0, 1, 1] and valid.all()


@pytest.mark.parametrize("kwargs,message", [
    ({"mode": "tsn"}, "unknown sampling mode"),
    ({"mode": "fps"}, "target_fps"),
    ({"mode": "uniform", "total_frames": 0}, "need a video"),
    ({"mode": "uniform", "num_frames": 0}, "num_frames"),
])
def test_invalid_arguments(kwargs, message):
    args = {"total_frames": 100, "video_fps": 25.0, "num_frames": 8, **kwargs}
    with pytest.raises(ValueError, match=message):
        sample_frame_indices(**args)
