"""Images as one-frame clips, so image-text pairs (CC3M, WebVid stills) train the same video model.

An image becomes a clip of the model's `num_frames` positions whose first frame is the image and whose
other positions are marked invalid in `frame_mask`; their pixels repeat the image. That is the convention
`sampling.py` already uses for positions past a video's end: the encoder masks the invalid positions out of
attention and pooling (models/video_encoder.py), so the image is seen once, at one time step.

Why a mask rather than the image repeated as `num_frames` valid frames: a repeated image claims a clip in
which nothing moves for the whole clip, and objectives that read time (S-ViLM's temporal grouping, motion)
would learn from that fake stillness; CC3M would also outweigh video in what a "still clip" looks like. Why
the pixels still repeat the image: with `tubelet_size` > 1 the first tubelet holds the image and padding,
and a tubelet of the image repeated is the image's own still tubelet, not the image next to black frames.
Decoding is PIL's (Pillow), which reads JPEG, PNG and WebP.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

IMAGE_MEMBERS = ("jpg", "jpeg", "png", "webp")  # webdataset member names (and file suffixes) that hold an image
IMAGE_SUFFIXES = tuple(f".{ext}" for ext in IMAGE_MEMBERS)


class ImageDecodeError(RuntimeError):
    """An image that cannot be used: names the file and why (the same shape as `video.VideoDecodeError`)."""

    def __init__(self, path: str | Path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = str(path), reason


def is_image_path(path: str | Path) -> bool:
    return str(path).lower().endswith(IMAGE_SUFFIXES)


def decode_image(data: bytes, name: str = "<bytes>") -> np.ndarray:
    """uint8 RGB (H, W, 3) from an encoded image; ImageDecodeError when it is empty or does not decode."""
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise ImageDecodeError(name, "empty image (0 bytes)")
    try:
        with Image.open(io.BytesIO(data)) as image:
            return np.asarray(image.convert("RGB"), dtype=np.uint8).copy()
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise ImageDecodeError(name, f"not a readable image ({type(e).__name__}: {e})") from None


def load_image(path: str | Path) -> np.ndarray:
    path = Path(path)
    if "://" in str(path):
        raise ImageDecodeError(path, "a remote url: download the images first (e.g. into webdataset shards)")
    if not path.is_file():
        raise ImageDecodeError(path, "file not found")
    return decode_image(path.read_bytes(), str(path))


def image_clip(image: np.ndarray, num_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """(frames (num_frames, H, W, 3), valid (num_frames,) bool): the image once, then masked repeats of it."""
    frames = np.repeat(image[None], num_frames, axis=0)
    valid = np.zeros(num_frames, dtype=bool)
    valid[0] = True
    return frames, valid
