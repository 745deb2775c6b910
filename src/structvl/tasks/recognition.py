"""Action recognition (Kinetics / UCF101 / HMDB51 protocols): linear probe and full fine-tuning, top-1/top-5.

Linear probe: a linear classifier on the frozen video encoder's [CLS] state (standardised by the training
features), trained on one centre view per training clip. Full fine-tuning: the video encoder and a linear
head trained end to end by the pre-training `Trainer` (random frames and crops), on a copy of the model.
Both are tested multi-view: `temporal_views` clips x `spatial_crops` crops per video, class probabilities
averaged over the views (see `features` for how views are sampled).
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from structvl.config import frame_normalization
from structvl.data.dataset import VideoTextCollator, VideoTextDataset
from structvl.data.formats.classification import read_class_list
from structvl.data.transforms import VideoTransform
from structvl.models.text_encoder import build_tokenizer
from structvl.runtime.nonfinite import NonFiniteTally
from structvl.runtime.precision import autocast_dtype
from structvl.tasks.features import FeatureCache, extract_clip_features
from structvl.tasks.finetuning import finetune_run_config, train_module
from structvl.tasks.heads import fit_head, loss_summary, standardise, topk_accuracy
from structvl.tasks.task_config import read_task_records, video_root

log = logging.getLogger("structvl")


def labelled(records, classes: list[str]) -> tuple[list, torch.Tensor]:
    """Records whose label is a known class, and their class indices (test lists without labels drop out)."""
    index = {c: i for i, c in enumerate(classes)}
    kept = [r for r in records if r.label in index]
    if len(kept) < len(records):
        log.warning("recognition: %d of %d records have no known label and are left out",
                    len(records) - len(kept), len(records))
    return kept, torch.tensor([index[r.label] for r in kept], dtype=torch.long)


def multiview_metrics(view_logits: torch.Tensor, labels: torch.Tensor, prefix: str) -> dict[str, float]:
    """view_logits (N, V, C): softmax per view, averaged over views, then top-1 / top-5 (a clip with a
    non-finite logit in any view is wrong, even -inf, which softmax would turn into a plain 0)."""
    probs = view_logits.float().softmax(-1).mean(1)
    probs[~torch.isfinite(view_logits).flatten(1).all(1)] = float("nan")
    acc = topk_accuracy(probs, labels, (1, 5))
    tally = NonFiniteTally(prefix)
    tally.add(view_logits)
    return tally.report({f"{prefix}/top1": acc[1], f"{prefix}/top5": acc[5]})


def linear_probe(model, task, train, test, videos, cache: FeatureCache, num_classes: int,
                 seed: int = 0) -> dict[str, float]:
    (train_records, train_y), (test_records, test_y) = train, test
    num_frames = model.cfg.video.num_frames
    tr = cache.get(train_records, videos, num_frames=num_frames)
    te = cache.get(test_records, videos, num_frames=num_frames, temporal_views=task.temporal_views,
                   spatial_crops=task.spatial_crops)
    train_x, test_x = standardise(tr.pooled[:, 0], te.pooled)
    train_y, test_y = train_y[tr.kept], test_y[te.kept]
    torch.manual_seed(seed)
    linear = nn.Linear(train_x.shape[1], num_classes)
    history = fit_head(lambda rows: F.cross_entropy(linear(train_x[rows]), train_y[rows]), list(linear.parameters()),
                       len(train_x), epochs=task.linear_epochs, batch_size=256, lr=task.linear_lr,
                       weight_decay=task.linear_weight_decay, seed=seed)
    with torch.no_grad():
        out = multiview_metrics(linear(test_x), test_y, "recognition/linear")
    out["recognition/linear/train_loss_last"] = history[-1]
    return out


class RecognitionModule(nn.Module):
    """What the Trainer steps for full fine-tuning: video encoder [CLS] -> linear head -> cross-entropy.
    The labels are looked up by the batch's record indices (the dataset is the pre-training one)."""

    def __init__(self, model, num_classes: int, record_labels: torch.Tensor):
        super().__init__()
        self.model = model
        self.head = nn.Linear(model.video_encoder.width, num_classes)
        self.record_labels = record_labels  # a plain tensor, not a buffer: it is data, not state to save

    def forward(self, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        logits = self.head(self.model.encode_video(batch["video"], batch.get("frame_mask")).encoder.pooled)
        labels = self.record_labels[batch["record_index"].cpu()].to(logits.device)
        loss = F.cross_entropy(logits.float(), labels)
        return loss, {"loss": float(loss.detach()), "accuracy": float((logits.argmax(1) == labels).float().mean())}


def finetune(model, run_cfg, task, train, test, videos, num_classes: int, out_dir: Path, device,
             seed: int = 0) -> dict[str, float]:
    """Full fine-tuning with the pre-training Trainer on a copy of the model, then multi-view testing."""

    (train_records, train_y), (test_records, test_y) = train, test
    cfg = finetune_run_config(run_cfg, steps=task.finetune_steps, batch_size=task.batch_size, lr=task.finetune_lr,
                              seed=seed)
    module = RecognitionModule(copy.deepcopy(model), num_classes, train_y)
    transform = VideoTransform(cfg.model.video.image_size, train=True, **frame_normalization(cfg.model.video), scale=tuple(cfg.data.random_resized_crop_scale))
    dataset = VideoTextDataset(train_records, videos, num_frames=cfg.data.num_frames, sampling=cfg.data.sampling,
                               transform=transform, backend=cfg.data.backend, caption_mode="first", seed=seed,
                               allow_outside_root=cfg.data.allow_outside_root)
    history = train_module(cfg, module, dataset, VideoTextCollator(build_tokenizer(cfg.model.text)), out_dir,
                           device)
    feats = extract_clip_features(module.model, test_records, videos, num_frames=cfg.model.video.num_frames,
                                  temporal_views=task.temporal_views, spatial_crops=task.spatial_crops,
                                  device=device, autocast_dtype=autocast_dtype(cfg.train.precision, device))
    module.eval()
    with torch.no_grad():
        out = multiview_metrics(module.head(feats.pooled.to(device)).cpu(), test_y[feats.kept],
                                "recognition/finetune")
    out.update(loss_summary(history, "recognition/finetune"))
    return out


def run_recognition(model, task, root, *, cache: FeatureCache, run_cfg=None, out_dir=None,
                    device=torch.device("cpu"), seed: int = 0, modes=None) -> dict[str, float]:
    videos = video_root(task.data, root)
    train_records = read_task_records(task.data, root, "train")
    test_records = read_task_records(task.data, root, "test")
    classes = (read_class_list(Path(root) / task.classes) if task.classes
               else sorted({r.label for r in train_records if r.label}))
    train, test = labelled(train_records, classes), labelled(test_records, classes)
    metrics = {"recognition/chance/top1": 100.0 / len(classes),
               "recognition/chance/top5": 100.0 * min(5, len(classes)) / len(classes),
               "recognition/num_classes": float(len(classes)), "recognition/num_test": float(len(test[0]))}
    for mode in modes or task.modes:
        if mode == "linear":
            metrics.update(linear_probe(model, task, train, test, videos, cache, len(classes), seed))
        else:
            if run_cfg is None or out_dir is None:
                raise ValueError("recognition fine-tuning needs the run's config and an output directory")
            metrics.update(finetune(model, run_cfg, task, train, test, videos, len(classes), Path(out_dir), device,
                                        seed))
    return metrics
