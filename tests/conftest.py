"""Shared fixtures: tiny real video files written with PyAV (pytorchvideo style), and the real annotation files."""

from __future__ import annotations

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


@pytest.fixture(scope="session")
def search_run(tmp_path_factory) -> tuple[Path, Path]:
    """(corpus, run): 120 tiny structured clips (12 in the test split, 42 test captions) and a tiny model
    pre-trained on them for 100 steps of 16 clips in fp32 (seeded; ~1 CPU-minute): what the search tests embed,
    index and query. Captions fit its 32 tokens (the corpus's grammar keeps them within the demo's length)."""
    from test_engine import TINY

    from structvl.config import load_config
    from structvl.engine.pretrain import run_pretraining
    from structvl.lab.synth import generate_corpus

    corpus, run = tmp_path_factory.mktemp("search_corpus"), tmp_path_factory.mktemp("search_run")
    generate_corpus(corpus, num_clips=120, num_untrimmed=0, size=32, num_frames=8, seed=3, workers=1, progress=False)
    cfg = load_config("demo", TINY + [f"data.root={corpus}", "train.max_steps=100", "train.batch_size=16",
                                      "train.checkpoint_every=0", "train.precision=fp32", "model.text.max_length=32"])
    run_pretraining(cfg, run, evaluate=False)
    return corpus, run
