"""Plain helpers the tests share (fixtures are in conftest.py): tiny model overrides, and video files whose
frames tell their own index."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import torch
import torch.nn as nn

from structvl.config import load_config

# Captions in the structured corpus's style: shapes with colours and sizes, actions, one spatial relation.
SHAPE_CAPTIONS = [
    "a small red circle moves to the left",
    "a big blue square is rotating",
    "a small green triangle is bouncing",
    "a big red star is rotating while a small blue circle moves to the left",
    "a large yellow square is bouncing",
    "a small blue triangle moves to the left",
    "a big green star is bouncing",
    "a small yellow circle is rotating",
]


# A model and loader small enough that a pre-training step takes milliseconds on one CPU core.
TINY = [
    "model.video.image_size=32", "model.video.patch_size=8", "model.video.num_frames=4",
    "model.video.tubelet_size=2", "model.video.width=32", "model.video.depth=1", "model.video.heads=2",
    "model.text.init.path=scratch", "model.text.width=32", "model.text.depth=1", "model.text.heads=2",
    "model.text.intermediate_size=64", "model.text.max_length=24", "model.embed_dim=32",
    "data.num_frames=4", "eval.num_frames=4", "data.num_workers=0", "data.synth=false",
    "train.batch_size=8", "train.log_every=1", "optim.warmup_steps=2", "optim.lr=2e-3",
    "optim.text_lr=2e-3", "eval.batch_size=16",
]


def tiny_cfg(root, *extra):
    return load_config("demo", TINY + [f"data.root={root}", *extra])


def without_dropout(module: nn.Module) -> nn.Module:
    """Every dropout of `module` set to p = 0 (dropout draws by tensor size, so two computations that should agree
    would not share its masks); returns the module."""
    for m in module.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
    return module


def write_video(path: Path, num_frames: int = 16, size: tuple[int, int] = (48, 64), fps: int = 8,
                codec: str = "libx264", keyint: int | None = None, container_format: str | None = None,
                container_options: dict | None = None, bit_rate: int | None = None) -> np.ndarray:
    """Write a clip whose frame i is a flat colour encoding i (so a decoded frame tells its own index).

    Returns the uint8 frames (T, H, W, 3) that were encoded. Frame i has value 8*i in the red channel.
    container_format: FFmpeg's muxer name when the extension does not pick it (H.264 in MPEG-PS: "mpeg");
    container_options: the muxer's options; bit_rate: for codecs whose default quality blurs the colours.
    """
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


# ----------------------------------------------------------------------------- source image models
# The checkpoint-format tests build small image models with the source libraries themselves (random weights).
WIDTH, DEPTH, HEADS, PATCH, EMBED = 64, 2, 2, 8, 24


def perturb_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights everywhere (LayerNorms at 1/0 and zero biases would hide a wrong mapping)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model.eval()


def open_clip_model(open_clip, image_size: int = 32, seed: int = 0):
    model = open_clip.model.CLIP(
        embed_dim=EMBED, quick_gelu=True,
        vision_cfg=dict(image_size=image_size, patch_size=PATCH, width=WIDTH, layers=DEPTH, head_width=WIDTH // HEADS),
        text_cfg=dict(context_length=8, vocab_size=64, width=32, heads=2, layers=1))
    return perturb_(model, seed)
