"""`structvl eval`: zero-shot retrieval and hard-negative accuracy of a model or a saved run.

The evaluation protocol (annotation file, frames, sampling, block size) comes from the run's config
(`eval:` section), so a number in metrics.json always says how it was measured.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from structvl.config import ConfigError, RunConfig
from structvl.runtime.precision import autocast_dtype
from structvl.tasks.hard_negative import hard_negative_metrics
from structvl.tasks.retrieval import embed_texts, embed_videos, retrieval_metrics


def eval_loader(records, cfg: RunConfig, video_root, tokenizer, batch_size: int | None = None,
                num_workers: int | None = None):
    """Deterministic loader over records' videos: uniform frames, centre crop, first caption. batch_size and
    num_workers default to the run's eval.batch_size and data.num_workers (at most 2)."""
    from structvl.data.dataset import VideoTextCollator, VideoTextDataset, build_dataloader
    from structvl.data.transforms import VideoTransform

    dataset = VideoTextDataset(records, video_root, num_frames=cfg.eval.num_frames, sampling=cfg.eval.sampling,
                               transform=VideoTransform(cfg.model.video.image_size, train=False),
                               backend=cfg.data.backend, caption_mode="first", seed=0)
    return build_dataloader(dataset, VideoTextCollator(tokenizer), batch_size=batch_size or cfg.eval.batch_size,
                            shuffle=False, seed=0, drop_last=False,
                            num_workers=min(cfg.data.num_workers, 2) if num_workers is None else num_workers)


def evaluate_retrieval(model, cfg: RunConfig, tokenizer, records, video_root, device,
                       prefix: str = "retrieval") -> dict[str, float]:
    autocast = autocast_dtype(cfg.train.precision, device)
    video_embed, kept = embed_videos(model, eval_loader(records, cfg, video_root, tokenizer), device, autocast)
    texts, text_to_video = [], []
    for position, record_index in enumerate(kept):  # captions of skipped (corrupt) videos are dropped too
        for caption in records[record_index].captions:
            texts.append(caption)
            text_to_video.append(position)
    text_embed = embed_texts(model, tokenizer, texts, device, autocast_dtype=autocast)
    out = retrieval_metrics(video_embed, text_embed, text_to_video, cfg.eval.block_size, prefix)
    out[f"{prefix}/skipped_videos"] = float(len(records) - len(kept))
    return out


def evaluate_model(model, cfg: RunConfig, tokenizer, device=torch.device("cpu"),
                   data_root: str | Path | None = None) -> dict[str, float]:
    """Retrieval on `eval.split` and, when the corpus has them, hard negatives on `eval.hard_negatives`."""
    from structvl.data.formats import read_annotations

    root = Path(data_root or cfg.data.root)
    video_root = Path(cfg.data.videos) if cfg.data.videos else root
    records = read_annotations(cfg.data.format, root / cfg.eval.split)
    metrics = evaluate_retrieval(model, cfg, tokenizer, records, video_root, device)
    if cfg.eval.hard_negatives and (root / cfg.eval.hard_negatives).exists():
        metrics.update(hard_negative_metrics(model, cfg, tokenizer, root / cfg.eval.hard_negatives, video_root,
                                             device, eval_loader))
    return metrics


def standard_error(accuracy_percent: float, pairs: float) -> float:
    """The binomial standard error, in points, of an accuracy measured on `pairs` independent pairs."""
    p = accuracy_percent / 100.0
    return 100.0 * (p * (1.0 - p) / pairs) ** 0.5


def format_metrics_table(metrics: dict[str, float]) -> str:
    """A readable table: retrieval both ways beside chance, then hard-negative accuracy per factor."""
    lines = []
    if "retrieval/t2v/R@1" in metrics:
        n = int(metrics.get("retrieval/num_videos", 0))
        lines.append(f"zero-shot retrieval ({n} videos)      R@1    R@5   R@10    MdR    MnR")
        for name, prefix in (("text -> video", "retrieval/t2v"), ("video -> text", "retrieval/v2t"),
                             ("chance", "retrieval/chance")):
            row = [metrics[f"{prefix}/R@{k}"] for k in (1, 5, 10)] + [metrics[f"{prefix}/MdR"], metrics[f"{prefix}/MnR"]]
            lines.append(f"  {name:<32}" + "".join(f"{v:7.1f}" for v in row))
    own = sorted(k.split("/")[1] for k in metrics
                 if k.startswith("hard_negative/") and k.count("/") == 1 and k != "hard_negative/chance")
    if own:
        lines.append("hard-negative accuracy (true caption beats its one-factor twin; chance 50.0); blind: the")
        lines.append("same pairs scored against the mean test video, i.e. what the text side prefers alone;")
        lines.append("static: against the clip's own video frozen to its middle frame, i.e. without motion;")
        lines.append("balanced: own, averaged over the kinds of change instead of the pairs (where the file names")
        lines.append("them); pairs and se: how many pairs the factor has and own's binomial standard error")
        lines.append(f"  {'factor':<32}{'own':>7}{'blind':>7}{'static':>7}{'bal':>7}{'pairs':>7}{'se':>7}")
        for f in own:
            accuracy, pairs = metrics["hard_negative/" + f], metrics.get(f"hard_negative/pairs/{f}")
            controls = [metrics.get(f"hard_negative/{c}/{f}") for c in ("blind", "static", "balanced")]
            counted = f"{int(pairs):7d}{standard_error(accuracy, pairs):7.1f}" if pairs else ""
            lines.append((f"  {f:<32}{accuracy:7.1f}"
                          + "".join(f"{v:7.1f}" if v is not None else " " * 7 for v in controls) + counted).rstrip())
    return "\n".join(lines)


def load_run_model(checkpoint: str | Path):
    """Rebuild a run's model from its saved config.yaml and load the newest checkpoint's weights."""
    from structvl.config import load_config
    from structvl.engine.checkpoint import latest_checkpoint, load_model_weights
    from structvl.models.video_text import build_model

    path = Path(checkpoint)
    run_dir = path if (path / "config.yaml").exists() else path.parent.parent
    ckpt = latest_checkpoint(path)
    if ckpt is None or not (run_dir / "config.yaml").exists():
        raise ConfigError(f"--checkpoint {path}: no checkpoint with a config.yaml there (expected a run directory "
                          f"or one of its checkpoints/step_* directories)")
    cfg = load_config(run_dir / "config.yaml")
    model = build_model(cfg.model)
    load_model_weights(model, ckpt)
    return model, cfg, run_dir


def evaluate_from_cli(args) -> int:
    from structvl.data.text import Tokenizer

    model, cfg, run_dir = load_run_model(args.checkpoint)
    tokenizer = Tokenizer(max_length=cfg.model.text.max_length)
    data = Path(args.data)
    if data.is_dir():  # a structured-corpus directory: its eval split (+ hard negatives for that task)
        metrics = evaluate_model(model, cfg, tokenizer, data_root=data)
        if args.task == "retrieval":
            metrics = {k: v for k, v in metrics.items() if k.startswith("retrieval/")}
    else:  # an annotation file in any supported format
        from structvl.data.formats import read_annotations
        records = read_annotations(args.format or "jsonl", data)
        metrics = evaluate_retrieval(model, cfg, tokenizer, records, Path(args.videos or data.parent),
                                     torch.device("cpu"))
    print(format_metrics_table(metrics))
    # Merge into the run's metrics.json (pre-training wrote its own keys there) unless --out says otherwise.
    out = Path(args.out) if args.out else run_dir / "metrics.json"
    merged = json.loads(out.read_text(encoding="utf-8")) if out.exists() else {}
    merged.update(metrics)
    out.write_text(json.dumps(merged, indent=2), encoding="utf-8")
    print(f"wrote {out}")
    return 0
