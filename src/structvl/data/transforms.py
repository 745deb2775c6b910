"""Clip-level image transforms: decoded uint8 frames (T, H, W, 3) -> normalised float tensor (T, C, H, W).

Every frame of a clip gets the same crop (and flip): a per-frame crop would make the clip jitter, which the
video encoder would read as motion. Written with plain torch ops (torchvision is not a dependency);
resizing uses antialiased bilinear interpolation, whose weights are non-negative, so pixel values never
overshoot [0, 255].
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # what OpenAI CLIP (and open_clip, HF CLIP) trained with
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# Per-channel (mean, std) of [0, 1] pixels, by the name `data.normalize` gives them.
NORMALIZATION = {"imagenet": (IMAGENET_MEAN, IMAGENET_STD), "clip": (CLIP_MEAN, CLIP_STD),
                 "inception": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))}


def _pair(size: int | tuple[int, int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def resize(video: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize float frames (T, C, H, W) to `size` = (height, width)."""
    if tuple(video.shape[-2:]) == tuple(size):
        return video
    return F.interpolate(video, size=size, mode="bilinear", align_corners=False, antialias=True)


def resize_shorter_side(video: torch.Tensor, short: int) -> torch.Tensor:
    """Resize (T, C, H, W) so that its shorter side is `short`, keeping the aspect ratio."""
    h, w = video.shape[-2:]
    scale = short / min(h, w)
    return resize(video, (max(short, round(h * scale)), max(short, round(w * scale))))


def center_crop(video: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Crop the central `size` region; a side smaller than the crop is first enlarged to it."""
    h, w = video.shape[-2:]
    if h < size[0] or w < size[1]:
        scale = max(size[0] / h, size[1] / w)
        video = resize(video, (max(size[0], math.ceil(h * scale)), max(size[1], math.ceil(w * scale))))
        h, w = video.shape[-2:]
    top, left = (h - size[0]) // 2, (w - size[1]) // 2
    return video[..., top:top + size[0], left:left + size[1]]


def random_resized_crop_box(height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float],
                            generator: torch.Generator | None) -> tuple[int, int, int, int]:
    """(top, left, h, w) of a random crop covering `scale` of the area with aspect ratio in `ratio`.

    The Inception-style algorithm torchvision's RandomResizedCrop uses: ten tries at a random area and
    log-uniform aspect ratio; if none fits, the largest central crop whose ratio is within bounds.
    """
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * torch.empty(1).uniform_(scale[0], scale[1], generator=generator).item()
        aspect = math.exp(torch.empty(1).uniform_(log_ratio[0], log_ratio[1], generator=generator).item())
        w = round(math.sqrt(target_area * aspect))
        h = round(math.sqrt(target_area / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (1,), generator=generator))
            left = int(torch.randint(0, width - w + 1, (1,), generator=generator))
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        h, w = height, round(height * ratio[1])
    else:
        h, w = height, width
    return (height - h) // 2, (width - w) // 2, h, w


def _float_planes(video: torch.Tensor) -> torch.Tensor:
    """A uint8 (T, 3, H, W) view of decoded frames as float32 laid out plane by plane (a float tensor as it is):
    torch's antialiased resize runs faster on that layout than on the frames' channels-last one, to the same values
    (docs/findings.md, "Per core, measured again")."""
    return video.contiguous().float() if video.dtype == torch.uint8 else video


class VideoTransform:
    """Resize, crop and normalise a clip; random-resized-crop for training, centre crop for evaluation.

    size: output side (int) or (height, width).
    train: random crop (and flip, if enabled) when True; deterministic resize + centre crop when False.
    resize_short: resize the shorter side to this first (eval default: `size`, i.e. crop the largest
        central square; train default: crop from the frames as decoded).
    scale, ratio: area fraction and aspect-ratio range of the training crop.
    hflip: random horizontal flip in training. Off by default: captions say "on the left of", "turns
        right", and a flipped clip with an unflipped caption is a wrong training pair.
    mean, std: per-channel normalisation of [0, 1] pixel values (ImageNet statistics by default).
    """

    def __init__(self, size: int | tuple[int, int], train: bool, resize_short: int | None = None,
                 scale: tuple[float, float] = (0.5, 1.0), ratio: tuple[float, float] = (3 / 4, 4 / 3),
                 hflip: bool = False, mean: tuple[float, ...] = IMAGENET_MEAN, std: tuple[float, ...] = IMAGENET_STD):
        if not 0 < scale[0] <= scale[1] <= 1:
            raise ValueError(f"scale must satisfy 0 < min <= max <= 1, got {scale}")
        if not 0 < ratio[0] <= ratio[1]:
            raise ValueError(f"ratio must satisfy 0 < min <= max, got {ratio}")
        self.size = _pair(size)
        self.train = train
        self.resize_short = resize_short
        self.scale, self.ratio = tuple(scale), tuple(ratio)
        self.hflip = hflip
        # Folding the /255 into the normalisation saves one pass over the clip.
        self._mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1) * 255.0
        self._std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1) * 255.0

    def __call__(self, frames: np.ndarray, generator: torch.Generator | None = None) -> torch.Tensor:
        """uint8 frames (T, H, W, 3) -> float32 (T, 3, size_h, size_w). All randomness comes from
        `generator` (torch's global generator when None), so a seeded generator gives the same clip."""
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise ValueError(f"expected uint8 frames (T, H, W, 3), got {frames.dtype} {frames.shape}")
        video = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)  # uint8, a view
        if self.train:
            if self.resize_short is not None:
                video = resize_shorter_side(_float_planes(video), self.resize_short)
            top, left, h, w = random_resized_crop_box(video.shape[-2], video.shape[-1], self.scale, self.ratio,
                                                      generator)
            # Cropped before the conversion to float where nothing was resized first: only the crop is converted.
            video = resize(_float_planes(video[..., top:top + h, left:left + w]), self.size)
            if self.hflip and torch.rand(1, generator=generator).item() < 0.5:
                video = video.flip(-1)
        else:
            video = center_crop(resize_shorter_side(_float_planes(video), self.resize_short or min(self.size)),
                                self.size)
        return ((video - self._mean) / self._std).contiguous()

    def __repr__(self) -> str:
        mode = f"train, scale={self.scale}, ratio={self.ratio}, hflip={self.hflip}" if self.train else "eval"
        return f"VideoTransform(size={self.size}, resize_short={self.resize_short}, {mode})"
