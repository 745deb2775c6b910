"""Clip transforms: shapes, normalisation, centre crop position, one crop per clip, seeded randomness."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from structvl.data.transforms import VideoTransform, random_resized_crop_box

IDENTITY = {"mean": (0.0, 0.0, 0.0), "std": (1 / 255, 1 / 255, 1 / 255)}  # output = pixel values


def noise_clip(t=4, h=60, w=80, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (t, h, w, 3), dtype=np.uint8)


def test_eval_shape_and_normalisation():
    frames = np.full((3, 40, 50, 3), 200, np.uint8)
    out = VideoTransform(32, train=False)(frames)
    assert out.shape == (3, 3, 32, 32) and out.dtype == torch.float32
    expected = (200 / 255 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
    torch.testing.assert_close(out[0, :, 5, 5], expected)


def test_eval_center_crop_takes_the_middle():
    # Column x holds value x: after a centre crop of a 40x80 frame to 40x40, column 0 comes from x=20.
    frames = np.broadcast_to(np.arange(80, dtype=np.uint8)[None, None, :, None], (2, 40, 80, 3)).copy()
    out = VideoTransform(40, train=False, **IDENTITY)(frames)
    torch.testing.assert_close(out[0, 0, 0, :], torch.arange(20, 60, dtype=torch.float32), atol=1e-3, rtol=0)


def test_eval_resize_short_then_crop():
    out = VideoTransform((24, 32), train=False, resize_short=36)(noise_clip(h=60, w=80))
    assert out.shape == (4, 3, 24, 32)


def test_eval_is_deterministic():
    clip = noise_clip()
    t = VideoTransform(32, train=False)
    assert torch.equal(t(clip), t(clip, torch.Generator().manual_seed(5)))


def test_train_crop_is_shared_by_all_frames():
    one = noise_clip(t=1)
    clip = np.repeat(one, 5, axis=0)
    out = VideoTransform(32, train=True, hflip=True)(clip, torch.Generator().manual_seed(1))
    for t in range(1, 5):
        assert torch.equal(out[t], out[0])


def test_train_randomness_comes_from_the_generator():
    clip = noise_clip()
    t = VideoTransform(32, train=True)
    a = t(clip, torch.Generator().manual_seed(0))
    torch.manual_seed(123)  # global state must not matter
    b = t(clip, torch.Generator().manual_seed(0))
    c = t(clip, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_hflip_is_off_by_default():
    clip = noise_clip(h=40, w=40)
    # Full-frame crop (scale 1, ratio 1): the only possible change is a flip.
    unflipped = VideoTransform(40, train=False)(clip)
    never = VideoTransform(40, train=True, scale=(1.0, 1.0), ratio=(1.0, 1.0))
    sometimes = VideoTransform(40, train=True, scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=True)
    flips = 0
    for seed in range(20):
        assert torch.equal(never(clip, torch.Generator().manual_seed(seed)), unflipped)
        out = sometimes(clip, torch.Generator().manual_seed(seed))
        if not torch.equal(out, unflipped):
            assert torch.equal(out, unflipped.flip(-1))
            flips += 1
    assert 0 < flips < 20


def test_random_resized_crop_box_respects_bounds():
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        top, left, h, w = random_resized_crop_box(60, 80, (0.3, 1.0), (3 / 4, 4 / 3), g)
        assert 0 <= top and top + h <= 60 and 0 <= left and left + w <= 80
        assert 0.3 * 4800 * 0.9 <= h * w <= 4800 * 1.05


def test_downscaling_is_antialiased():
    # A 1-pixel checkerboard shrunk 4x must become flat grey; without antialiasing it aliases to 0/255.
    board = ((np.indices((64, 64)).sum(0) % 2) * 255).astype(np.uint8)
    clip = np.repeat(board[None, :, :, None], 3, axis=3)
    out = VideoTransform(16, train=False, **IDENTITY)(clip)
    assert out.min() > 100 and out.max() < 155


def test_values_do_not_overshoot():
    out = VideoTransform(24, train=True, **IDENTITY)(noise_clip(), torch.Generator().manual_seed(0))
    assert out.min() >= -1e-3 and out.max() <= 255 + 1e-3


@pytest.mark.parametrize("bad", [np.zeros((4, 8, 8), np.uint8), np.zeros((2, 8, 8, 3), np.float32)])
def test_rejects_wrong_input(bad):
    with pytest.raises(ValueError, match="uint8 frames"):
        VideoTransform(8, train=False)(bad)


def _reference(transform: VideoTransform, frames: np.ndarray, generator: torch.Generator) -> torch.Tensor:
    """The transform the plain way: the whole clip to float first, then resize, crop, flip and normalise."""
    from structvl.data.transforms import center_crop, resize, resize_shorter_side

    video = torch.from_numpy(frames).permute(0, 3, 1, 2).float()
    if transform.resize_short is not None:
        video = resize_shorter_side(video, transform.resize_short)
    if transform.train:
        top, left, h, w = random_resized_crop_box(video.shape[-2], video.shape[-1], transform.scale,
                                                  transform.ratio, generator)
        video = resize(video[..., top:top + h, left:left + w], transform.size)
        if transform.hflip and torch.rand(1, generator=generator).item() < 0.5:
            video = video.flip(-1)
    else:
        video = center_crop(resize_shorter_side(video, transform.resize_short or min(transform.size)),
                            transform.size)
    return (video - transform._mean) / transform._std


@pytest.mark.parametrize("train,resize_short", [(True, None), (True, 40), (False, None), (False, 40)])
def test_cropping_and_resizing_before_or_after_the_float_conversion_give_the_same_clip(train, resize_short):
    # The transform converts only the crop to float and resizes a plane-by-plane copy (faster); the clip must be
    # exactly what the plain order gives: the same crop box from the same generator, the same resized values.
    frames = np.random.default_rng(0).integers(0, 256, (3, 45, 80, 3), dtype=np.uint8)
    transform = VideoTransform(24, train=train, resize_short=resize_short, scale=(0.3, 1.0), hflip=True)
    for seed in range(4):
        out = transform(frames, torch.Generator().manual_seed(seed))
        expected = _reference(transform, frames, torch.Generator().manual_seed(seed))
        assert out.shape == expected.shape == (3, 3, 24, 24)
        assert torch.equal(out, expected)
