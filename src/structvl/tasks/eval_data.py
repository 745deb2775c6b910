"""The test clips every zero-shot evaluation reads: the run's `eval.split`, and a deterministic loader over them."""

from __future__ import annotations

from pathlib import Path

from structvl.config import RunConfig, frame_normalization
from structvl.data.dataset import VideoTextCollator, VideoTextDataset, build_dataloader
from structvl.data.formats import read_annotations
from structvl.data.transforms import VideoTransform


def eval_loader(records, cfg: RunConfig, video_root, tokenizer):
    """Deterministic loader over records' videos: uniform frames, centre crop, first caption."""
    dataset = VideoTextDataset(records, video_root, num_frames=cfg.eval.num_frames, sampling=cfg.eval.sampling,
                               transform=VideoTransform(cfg.model.video.image_size, train=False,
                                                        **frame_normalization(cfg.model.video)),
                               backend=cfg.data.backend, caption_mode="first", seed=0)
    return build_dataloader(dataset, VideoTextCollator(tokenizer), batch_size=cfg.eval.batch_size, shuffle=False,
                            num_workers=min(cfg.data.num_workers, 2), seed=0, drop_last=False)


def test_video_root(cfg: RunConfig, data_root: str | Path | None = None) -> Path:
    """Where the corpus's videos are: `data.videos`, else the corpus directory (`data_root` or `data.root`)."""
    return Path(cfg.data.videos) if cfg.data.videos else Path(data_root or cfg.data.root)


def test_records(cfg: RunConfig, data_root: str | Path | None = None) -> list:
    """The records of `eval.split` under `data_root` (default: the run's `data.root`)."""
    return read_annotations(cfg.data.format, Path(data_root or cfg.data.root) / cfg.eval.split)
