"""Fine-grained accuracy on one-factor hard negatives (the structured corpus's `eval/hard_negatives.jsonl`).

For each test clip the file holds its true caption and, per factor (shape, colour, size, action, relation),
captions that differ from the truth in exactly that factor. Accuracy per factor = how often the model scores
the true caption above a twin, over all (clip, twin) pairs; chance is 50%. A dual encoder that only matches
"some shapes moving" scores near chance; one that binds attributes to objects does not.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from structvl.data.records import VideoRecord
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
                           negatives: list[tuple[int, str, torch.Tensor]]) -> dict[str, float]:
    """negatives: (clip position, factor, caption embedding). Returns per-factor and overall accuracy in %."""
    wins: dict[str, list[float]] = {}
    true_scores = (video_embed * true_embed).sum(-1)
    for clip, factor, neg in negatives:
        wins.setdefault(factor, []).append(float(true_scores[clip] > video_embed[clip] @ neg))
    out = {f"hard_negative/{f}": 100.0 * sum(w) / len(w) for f, w in sorted(wins.items())}
    every = [x for w in wins.values() for x in w]
    out["hard_negative/overall"] = 100.0 * sum(every) / max(1, len(every))
    out["hard_negative/chance"] = 50.0
    return out


def hard_negative_metrics(model, cfg, tokenizer, path: Path, video_root: Path, device, make_loader) -> dict:
    rows = read_hard_negatives(path)
    records = [VideoRecord(video_id=r.get("video_id", str(i)), video=r["video"], captions=[r["caption"]])
               for i, r in enumerate(rows)]
    autocast = torch.bfloat16 if cfg.train.precision == "bf16" else None
    video_embed, kept = embed_videos(model, make_loader(records, cfg, video_root, tokenizer), device, autocast)
    true_embed = embed_texts(model, tokenizer, [rows[i]["caption"] for i in kept], device, autocast_dtype=autocast)
    flat = [(pos, factor, caption) for pos, i in enumerate(kept)
            for factor, captions in rows[i]["negatives"].items() for caption in captions]
    neg_embed = embed_texts(model, tokenizer, [c for _, _, c in flat], device, autocast_dtype=autocast)
    return hard_negative_accuracy(video_embed, true_embed,
                                  [(pos, factor, neg_embed[j]) for j, (pos, factor, _) in enumerate(flat)])
