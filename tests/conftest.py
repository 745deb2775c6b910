"""Shared fixtures: tiny real video files written with PyAV (pytorchvideo style), and the real annotation files."""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

import numpy as np
import pytest

REALDATA = Path(__file__).resolve().parents[2] / "shared" / "realdata"


def write_video(path: Path, num_frames: int = 16, size: tuple[int, int] = (48, 64), fps: int = 8,
                codec: str = "libx264", keyint: int | None = None) -> np.ndarray:
    """Write a clip whose frame i is a flat colour encoding i (so a decoded frame tells its own index).

    Returns the uint8 frames (T, H, W, 3) that were encoded. Frame i has value 8*i in the red channel.
    """
    import av

    h, w = size
    frames = np.zeros((num_frames, h, w, 3), np.uint8)
    for i in range(num_frames):
        frames[i, :, :, 0] = (8 * i) % 256
        frames[i, :, :, 1] = 128
        frames[i, :, :, 2] = 255 - (8 * i) % 256
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        if keyint is not None:
            stream.codec_context.gop_size = keyint
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


# ---------------------------------------------------------------- timm / open_clip for the checkpoint-format tests
# They build the source models whose files structvl must load. PyPI has only CUDA builds of torchvision (which
# both import) for this CPU torch, and installing one beside it breaks `import transformers`; so the Makefile
# installs them with --no-deps into a folder beside the venv (`interop`), which only these tests put on sys.path.
INTEROP = Path(sys.prefix) / "interop"
_TORCHVISION_STUB_LIB = []


def _import_torchvision_without_ops() -> None:
    """A CUDA torchvision cannot load its C++ ops next to CPU torch, and then fails on import when it registers
    shapes for two of them (nms, qnms). Declaring those two ops first lets its pure-Python parts import."""
    import torch

    try:
        import torchvision  # noqa: F401
    except RuntimeError:
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        lib = torch.library.Library("torchvision", "DEF")
        lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        _TORCHVISION_STUB_LIB.append(lib)  # the definitions live as long as the library object
        import torchvision  # noqa: F401


def import_interop(name: str):
    """timm or open_clip; skipped where they are not installed, except under CI, where that is a failure."""
    # On sys.path only while importing: processes spawned later (the two-rank tests) copy sys.path, and there
    # transformers would find this torchvision without the declarations above.
    sys.path.append(str(INTEROP))
    try:
        _import_torchvision_without_ops()
        return importlib.import_module(name)
    except ImportError as e:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"{name} is not installed (the Makefile's venv target puts it in {INTEROP}): {e}")
    finally:
        sys.path.remove(str(INTEROP))


@pytest.fixture(scope="session")
def open_clip_lib():
    return import_interop("open_clip")


@pytest.fixture(scope="session")
def timm_lib():
    return import_interop("timm")
