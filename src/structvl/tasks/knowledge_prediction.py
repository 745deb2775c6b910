"""CLOP's own measure: how well the SKP heads predict a test clip's knowledge from its video (SKP mAP)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from structvl.config import RunConfig
from structvl.data.knowledge.cache import KnowledgeCache, knowledge_for
from structvl.runtime.nonfinite import NonFiniteTally, pessimistic_order
from structvl.runtime.precision import autocast_dtype
from structvl.tasks.eval_data import eval_loader, test_records, test_video_root
from structvl.tasks.retrieval import embed_videos


def average_precision(scores: torch.Tensor, targets: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per column (label) with at least one positive: AP of ranking rows by score (mean of the precision at
    each positive's rank), and the label's prevalence (the expected AP of a random ranking, for chance)."""
    aps, prevalences = [], []
    for j in range(targets.shape[1]):
        positives = targets[:, j] > 0
        if not positives.any():
            continue
        order = pessimistic_order(scores[:, j], positives)  # a non-finite score ranks as the worst
        hits = positives[order].float()
        precision_at_hit = hits.cumsum(0) / torch.arange(1, len(hits) + 1)
        aps.append(float((precision_at_hit * hits).sum() / hits.sum()))
        prevalences.append(float(hits.mean()))
    return aps, prevalences


@torch.no_grad()
def evaluate_knowledge_prediction(skp, model, cfg: RunConfig, tokenizer, device, clips=None) -> dict[str, float]:
    """SKP mAP on the test split: average precision of each in-vocabulary label that occurs in the test
    captions, ranking the test videos by the probability the trained heads (`skp`, the run's
    KnowledgePredictionObjective) give it; chance = a random ranking. A test video's knowledge is the union
    of its captions' labels. clips: the test split's clips encoded by this model (tasks.eval_data.EvalClips)."""
    records = test_records(cfg)
    autocast = autocast_dtype(cfg.train.precision, device)
    video_root = test_video_root(cfg)
    stored = clips is not None and clips.covers(records, video_root)
    was_training = skp.training
    skp.eval()
    video_embed = {}
    for used in skp.used_inputs:
        if stored:
            video_embed[used], kept = clips.embeddings(pooled=used == "encoder")
        else:
            video_embed[used], kept = embed_videos(model, eval_loader(records, cfg, video_root, tokenizer), device,
                                                   autocast, pooled=used == "encoder")
    with KnowledgeCache(Path(cfg.knowledge.cache_dir or Path(cfg.data.root) / "knowledge_cache")) as cache:
        per_caption = knowledge_for([c for i in kept for c in records[i].captions], cache)
    per_video, position = [], 0
    for i in kept:
        n = len(records[i].captions)
        merged = skp.vocab.encode_batch(per_caption[position:position + n])
        per_video.append({k: v.amax(0) for k, v in merged.items()})
        position += n
    scores = skp.predict({used: e.to(device).float() for used, e in video_embed.items()})
    skp.train(was_training)
    metrics, all_ap, all_chance = {}, [], []
    tally = NonFiniteTally("clop")
    for kind in skp.types:
        tally.add(scores[kind])
        target = torch.stack([v[kind] for v in per_video])
        ap, chance = average_precision(scores[kind].float().cpu(), target)
        metrics[f"clop/skp_mAP/{kind}"] = 100.0 * float(np.mean(ap)) if ap else float("nan")
        all_ap += ap
        all_chance += chance
    metrics["clop/skp_mAP"] = 100.0 * float(np.mean(all_ap)) if all_ap else float("nan")
    metrics["clop/skp_mAP_chance"] = 100.0 * float(np.mean(all_chance)) if all_chance else float("nan")
    return tally.report(metrics)
