"""Fine-grained accuracy on one-factor hard negatives (the structured corpus's `eval/hard_negatives.jsonl`).

For each test clip the file holds its true caption and, per factor (shape, colour, size, action, relation),
captions that differ from the truth in exactly that factor. Accuracy per factor = how often the model scores
the true caption above a twin, over all (clip, twin) pairs; chance is 50%. A dual encoder that only matches
"some shapes moving" scores near chance; one that binds attributes to objects does not.

The same pairs are also scored against the mean of the test videos' embeddings (`hard_negative/blind/*`): no
clip's own content, only what the text side prefers. Above 50 there, part of the accuracy is a text prior - a
twin reads less like a real caption - not something seen in the video. That matters for any objective trained
on one-element swaps, which are built like these twins (CLOP's constructed negatives).
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import torch

from structvl.data.records import VideoRecord
from structvl.engine.precision import autocast_dtype
from structvl.tasks.retrieval import embed_texts, embed_videos


def read_hard_negatives(path: Path) -> list[dict]:
    rows = []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        for key in ("video", "caption", "negatives"):
            if key not in row:
                raise ValueError(f"{path} line {n}: missing field '{key}'")
        rows.append(row)
    return rows


def hard_negative_accuracy(video_embed: torch.Tensor, true_embed: torch.Tensor,
                           negatives: list[tuple[int, str, torch.Tensor]],
                           clip_groups: list[str] | None = None) -> dict[str, float]:
    """negatives: (clip position, factor, caption embedding). Returns per-factor and overall accuracy in %.
    clip_groups: optional group name per clip position; adds `hard_negative/<factor>/<group>` per group."""
    own, blind, grouped = defaultdict(list), defaultdict(list), defaultdict(list)  # key -> wins (1.0 / 0.0)
    true_scores = (video_embed * true_embed).sum(-1)
    mean_video = video_embed.mean(0)
    blind_true_scores = true_embed @ mean_video
    for clip, factor, neg in negatives:
        win = float(true_scores[clip] > video_embed[clip] @ neg)
        own[factor].append(win)
        blind[factor].append(float(blind_true_scores[clip] > mean_video @ neg))
        if clip_groups is not None:
            grouped[f"{factor}/{clip_groups[clip]}"].append(win)
    out = {}
    for prefix, table in (("", own), ("blind/", blind), ("", grouped)):
        out.update({f"hard_negative/{prefix}{key}": 100.0 * sum(w) / len(w) for key, w in sorted(table.items())})
    for prefix, table in (("", own), ("blind/", blind)):  # each pair once, whatever its group
        every = [x for w in table.values() for x in w]
        out[f"hard_negative/{prefix}overall"] = 100.0 * sum(every) / max(1, len(every))
    out["hard_negative/chance"] = 50.0
    return out


def hard_negative_metrics(model, cfg, tokenizer, path: Path, video_root: Path, device, make_loader,
                          group_of=None) -> dict:
    """group_of: optional row (the file's JSON object) -> group name, for per-group accuracies."""
    rows = read_hard_negatives(path)
    records = [VideoRecord(video_id=r.get("video_id", str(i)), video=r["video"], captions=[r["caption"]])
               for i, r in enumerate(rows)]
    autocast = autocast_dtype(cfg.train.precision, device)
    video_embed, kept = embed_videos(model, make_loader(records, cfg, video_root, tokenizer), device, autocast)
    true_embed = embed_texts(model, tokenizer, [rows[i]["caption"] for i in kept], device, autocast_dtype=autocast)
    flat = [(pos, factor, caption) for pos, i in enumerate(kept)
            for factor, captions in rows[i]["negatives"].items() for caption in captions]
    neg_embed = embed_texts(model, tokenizer, [c for _, _, c in flat], device, autocast_dtype=autocast)
    return hard_negative_accuracy(video_embed, true_embed,
                                  [(pos, factor, neg_embed[j]) for j, (pos, factor, _) in enumerate(flat)],
                                  None if group_of is None else [group_of(rows[i]) for i in kept])
