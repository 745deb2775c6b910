"""What every image-checkpoint format shares: reading a state dict from disk, inflating the patch kernel over
a tubelet, resizing the position table, and loading the converted weights into a `VideoEncoder` with a report
of every key (loaded, new, dropped) and a one-line error for any key that does not load.

Each format module (open_clip.py, timm.py, hf_clip.py) only maps its key names to ours (`Converted`).
"""

from __future__ import annotations

import fnmatch
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file

from structvl.config import ConfigError, VideoInitConfig

# Weight files looked for, in this order, when model.video.init.path is a directory.
WEIGHT_FILES = ("open_clip_model.safetensors", "model.safetensors", "open_clip_pytorch_model.bin",
                "pytorch_model.bin")
KEY = "config key 'model.video.init.path'"
# Our parameters an image model has (besides `head.*`, the projection into the image-text space).
IMAGE_PARAM = re.compile(r"(patch_embed\.proj|norm_pre|norm|blocks\.\d+\.(norm1|attn\.qkv|attn\.proj|norm2|mlp\.fc1"
                          r"|mlp\.fc2))\.(weight|bias)|cls_token|pos_embed")


@dataclass
class Converted:
    """A checkpoint in our names. `params`: our name -> tensor (the patch kernel still 2-D, the position table
    at the source's resolution); `sources`: our name -> the source key(s) it came from; `dropped`: source keys
    unused by design (the text tower, a classifier head, buffers); `unexpected`: source keys the format does not
    know; `zeros`: our parameters the source has no counterpart for that start at zero (CLIP's bias-free conv
    and projection), so the output is the source's; `antialias`: see below."""
    params: dict = field(default_factory=dict)
    sources: dict = field(default_factory=dict)
    dropped: list = field(default_factory=list)
    unexpected: list = field(default_factory=list)
    zeros: list = field(default_factory=list)
    # How the source library resizes its position table for another resolution: bicubic, with antialiasing
    # (timm, open_clip) or without (transformers). PyTorch's antialiased bicubic is another kernel, so the
    # two differ even when enlarging.
    antialias: bool = True

    def put(self, name: str, value: torch.Tensor, source: str) -> None:
        self.params[name] = value
        self.sources[name] = source


@dataclass
class LoadReport:
    """Our parameters set from the checkpoint (`loaded`), initialised here (`new`: temporal parts, zero biases,
    group tokens), and the checkpoint keys left out by design (`dropped`)."""
    format: str
    path: str
    loaded: list
    new: list
    dropped: list

    def summary(self) -> str:
        return (f"model.video.init: {self.format} {self.path}: {len(self.loaded)} parameters loaded, "
                f"{len(self.new)} new ({_names(self.new)}), {len(self.dropped)} checkpoint keys dropped "
                f"({_names(self.dropped)})")


def _names(names: list, limit: int = 6) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "") if names else "none"


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A checkpoint file's tensors (never unpickling objects), or those of the weight file(s) in a directory.
    Training checkpoints ({"state_dict": ...} with DDP's "module." prefix) are unwrapped."""
    p = Path(path)
    if p.is_dir():
        index = p / "model.safetensors.index.json"
        if index.is_file():  # transformers' sharded safetensors
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            state = {}
            for shard in shards:
                state.update(load_file(str(p / shard)))
            return state
        found = [p / name for name in WEIGHT_FILES if (p / name).is_file()]
        if not found:
            raise ConfigError(f"{KEY}: {p} holds none of {', '.join(WEIGHT_FILES)}")
        p = found[0]
    try:
        if p.suffix == ".safetensors":
            return load_file(str(p))
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # a TorchScript archive, a truncated file, pickled objects
        raise ConfigError(f"{KEY}: {p} is not a state dict of tensors ({str(e).splitlines()[0][:120]})") from None
    for container in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(container), dict):
            state = state[container]
    if not isinstance(state, dict):
        raise ConfigError(f"{KEY}: {p} is not a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items() if torch.is_tensor(v)}


def inflate_patch_kernel(weight: torch.Tensor, tubelet: int, mode: str) -> torch.Tensor:
    """(D, 3, p, p) image kernel -> (D, 3, tubelet, p, p). "average": the kernel / tubelet at every frame;
    "center": the kernel at the centre frame. Either way a static clip embeds as the image does."""
    if mode == "average":
        return weight.unsqueeze(2).repeat(1, 1, tubelet, 1, 1) / tubelet
    out = weight.new_zeros(*weight.shape[:2], tubelet, *weight.shape[2:])
    out[:, :, tubelet // 2] = weight
    return out


def resize_pos_embed(pos: torch.Tensor, grid: int, antialias: bool = True) -> torch.Tensor:
    """(1, 1 + n*n, D) [CLS] + square grid table -> (1, 1 + grid*grid, D): the grid part resized bicubically
    with align_corners=False, antialiased as timm's resample_abs_pos_embed and open_clip's resize_pos_embed do
    or not, as transformers' interpolate_pos_encoding does."""
    cls_pos, grid_pos = pos[:, :1], pos[:, 1:]
    old = int(round(grid_pos.shape[1] ** 0.5))
    if old * old != grid_pos.shape[1]:
        raise ConfigError(f"{KEY}: the position table's {grid_pos.shape[1]} patch positions are not a square grid")
    grid_pos = grid_pos.reshape(1, old, old, -1).permute(0, 3, 1, 2).float()
    grid_pos = F.interpolate(grid_pos, size=(grid, grid), mode="bicubic", antialias=antialias,
                             align_corners=False)
    grid_pos = grid_pos.permute(0, 2, 3, 1).reshape(1, grid * grid, -1).to(pos.dtype)
    return torch.cat([cls_pos, grid_pos], dim=1)


def load_converted(encoder: nn.Module, converted: Converted, init: VideoInitConfig,
                   head: nn.Linear | None = None) -> LoadReport:
    """Copy a converted checkpoint into `encoder` (and the image-text projection into `head`, when given).

    Every image parameter must come from the checkpoint and every checkpoint key must be used or dropped by
    design, unless `init.allow_missing` names it; otherwise a ConfigError lists them. The parts an image model
    lacks start so that a static clip is the image model: the temporal position table at zero, and each
    divided block's temporal attention as TimeSformer starts it (its norm and qkv copied from the spatial
    attention, its output projection at zero, so the branch adds nothing).
    """
    targets = dict(encoder.named_parameters())
    if head is not None:
        targets.update({f"head.{k}": v for k, v in head.named_parameters()})
    params = dict(converted.params)
    if params.get("patch_embed.proj.weight") is not None and params["patch_embed.proj.weight"].dim() == 4:
        params["patch_embed.proj.weight"] = inflate_patch_kernel(params["patch_embed.proj.weight"],
                                                                 encoder.cfg.tubelet_size, init.inflate)
    if params.get("pos_embed") is not None and params["pos_embed"].shape != encoder.pos_embed.shape:
        params["pos_embed"] = resize_pos_embed(params["pos_embed"], encoder.grid, converted.antialias)
    expected = {name for name in targets if IMAGE_PARAM.fullmatch(name) or name.startswith("head.")}
    expected -= set(converted.zeros)
    unexpected = list(converted.unexpected) + [converted.sources[k] for k in params if k not in targets]
    missing = sorted(expected - set(params))
    allowed = lambda name: any(fnmatch.fnmatchcase(name, pattern) for pattern in init.allow_missing)  # noqa: E731
    missing = [name for name in missing if not allowed(name)]
    unexpected = [key for key in unexpected if not allowed(key)]
    where = f"config key 'model.video.init': {init.path} ({init.format})"
    if missing or unexpected:
        raise ConfigError(f"{where}: {len(missing)} parameters not in the checkpoint ({_names(missing)}); "
                          f"{len(unexpected)} checkpoint keys unused ({_names(unexpected)}); the model's sizes "
                          "must match the checkpoint's, or model.video.init.allow_missing must name them")
    loaded = sorted(k for k in params if k in targets)
    for name in loaded:
        if params[name].shape != targets[name].shape:
            raise ConfigError(f"{where}: {converted.sources[name]} has shape {tuple(params[name].shape)}, "
                              f"the model's {name} {tuple(targets[name].shape)}: set model.video's sizes to the "
                              "checkpoint's")
    with torch.no_grad():
        for name in loaded:
            targets[name].copy_(params[name])
        for name in converted.zeros:
            if name in targets:
                targets[name].zero_()
        encoder.time_embed.zero_()
        for block in encoder.blocks:
            if block.divided:
                block.temporal_norm.load_state_dict(block.norm1.state_dict())
                block.temporal_attn.qkv.load_state_dict(block.attn.qkv.state_dict())
                block.temporal_attn.proj.weight.zero_()
                block.temporal_attn.proj.bias.zero_()
    new = sorted(set(targets) - set(loaded))
    return LoadReport(init.format, str(init.path), loaded, new, sorted(converted.dropped))
