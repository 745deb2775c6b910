"""Start the video tower from an image model on disk, in the format its library saved it (`model.video.init`).

One module per format maps its key names to ours (open_clip.py, timm.py, hf_clip.py); common.py reads the
file, inflates and resizes, loads and reports. Nothing here imports open_clip or timm: their files are read as
the state dicts they are.
"""

from __future__ import annotations

import torch.nn as nn

from structvl.config import VideoInitConfig
from structvl.models.pretrained import hf_clip, open_clip, timm
from structvl.models.pretrained.common import LoadReport, load_converted, read_state_dict

CONVERTERS = {"open_clip": open_clip.convert, "timm": timm.convert, "hf_clip": hf_clip.convert}


def load_video_init(encoder: nn.Module, init: VideoInitConfig, head: nn.Linear | None = None) -> LoadReport:
    """Load `init.path` (format `init.format`) into a VideoEncoder, and the source's image-text projection into
    `head` (a bias-carrying Linear of the right sizes; None: the projection is an unused key)."""
    if init.format == "hf_clip":
        hf_clip.check_config(init.path, encoder.cfg)
    converted = CONVERTERS[init.format](read_state_dict(init.path))
    return load_converted(encoder, converted, init, head)


__all__ = ["CONVERTERS", "LoadReport", "load_video_init", "read_state_dict"]
