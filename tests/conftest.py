"""Shared fixtures: tiny real video files written with PyAV (pytorchvideo style), and the real annotation files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

REALDATA = Path(__file__).resolve().parents[2] / "shared" / "realdata"


def write_video(path: Path, num_frames: int = 16, size: tuple[int, int] = (48, 64), fps: int = 8,
                codec: str = "libx264", keyint: int | None = None, container_format: str | None = None,
                container_options: dict | None = None, bit_rate: int | None = None) -> np.ndarray:
    """Write a clip whose frame i is a flat colour encoding i (so a decoded frame tells its own index).

    Returns the uint8 frames (T, H, W, 3) that were encoded. Frame i has value 8*i in the red channel.
    container_format: FFmpeg's muxer name when the extension does not pick it (H.264 in MPEG-PS: "mpeg");
    container_options: the muxer's options; bit_rate: for codecs whose default quality blurs the colours.
    """
    import av

    h, w = size
    frames = np.zeros((num_frames, h, w, 3), np.uint8)
    for i in range(num_frames):
        frames[i, :, :, 0] = (8 * i) % 256
        frames[i, :, :, 1] = 128
        frames[i, :, :, 2] = 255 - (8 * i) % 256
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", format=container_format, options=container_options or {}) as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        if keyint is not None:
            stream.codec_context.gop_size = keyint
        if bit_rate is not None:
            stream.codec_context.bit_rate = bit_rate
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return frames


def frame_index_of(frame: np.ndarray) -> int:
    """Recover the index write_video encoded into a decoded frame (robust to codec noise)."""
    return int(round(float(frame[..., 0].astype(np.float32).mean()) / 8))


@pytest.fixture
def make_video(tmp_path):
    def _make(name: str = "clip.mp4", **kwargs) -> Path:
        p = tmp_path / name
        write_video(p, **kwargs)
        return p

    return _make


@pytest.fixture(scope="session")
def realdata() -> Path:
    if not REALDATA.exists():
        pytest.skip(f"real annotation files not found at {REALDATA}")
    return REALDATA
