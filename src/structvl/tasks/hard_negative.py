"""Fine-grained accuracy on one-factor hard negatives (the structured corpus's `eval/hard_negatives.jsonl`).

For each test clip the file holds its true caption and, per factor (shape, colour, size, action, relation),
captions that differ from the truth in exactly that factor. Accuracy per factor = how often the model scores
the true caption above a twin, over all (clip, twin) pairs; chance is 50%. A dual encoder that only matches
"some shapes moving" scores near chance; one that binds attributes to objects does not.

The same pairs are also scored against the mean of the test videos' embeddings (`hard_negative/blind/*`): no
clip's own content, only what the text side prefers. Above 50 there, part of the accuracy is a text prior - a
twin reads less like a real caption - not something seen in the video. That matters for any objective trained
on one-element swaps, which are built like these twins (CLOP's constructed negatives).

Where the file names what each twin changed (`changes`, as the structured corpus writes it), each factor also
gets a balanced accuracy (`hard_negative/balanced/*`): the mean over the kinds of change ("staying still ->
moving left", ...) of their accuracy. The pairs are far from balanced: an object that stays still gets nine
action twins, a moving one a single "still" twin, so a model that calls every clip still wins about 60% of
the action pairs; balanced, any fixed preference for one phrase scores 50.

And they are scored against each clip's own video frozen to its middle frame (`hard_negative/static/*`): the
clip's content without its motion. Shape, colour and size survive in one frame, so there the static score
should equal the real one; for actions, real minus static is what the motion contributes. A model can pass
the blind control and still win action pairs without motion: a preference that depends on the clip's
appearance but not on how it moves (`clop_grounded` at 400 steps wins 90% of a still object's twins and 3-18%
of a moving object's "still" twin, from a single frame as well as from the clip).
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path

import torch

from structvl.data.records import VideoRecord
from structvl.runtime.nonfinite import NonFiniteTally
from structvl.runtime.precision import autocast_dtype
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
                           clip_groups: list[str] | None = None,
                           static_embed: torch.Tensor | None = None,
                           changes: list[str] | None = None) -> dict[str, float]:
    """negatives: (clip position, factor, caption embedding). Returns per-factor and overall accuracy in %.
    clip_groups: optional group name per clip position; adds `hard_negative/<factor>/<group>` per group.
    static_embed: optional embedding of each clip frozen to one frame; adds `hard_negative/static/*`.
    changes: optional name of what each negative changed ("staying still>moving left"); adds
    `hard_negative/balanced/<factor>`, the mean over the factor's changes of their accuracy.
    A pair with a non-finite score is a loss (the worst possible); `hard_negative/nonfinite_scores` counts
    such scores when there are any."""
    own, blind, static, grouped = (defaultdict(list) for _ in range(4))  # key -> wins (1.0 / 0.0)
    by_change = defaultdict(lambda: defaultdict(list))  # factor -> change -> wins
    tally = NonFiniteTally("hard_negative")
    true_scores = (video_embed * true_embed).sum(-1)
    mean_video = video_embed.mean(0)
    blind_true_scores = true_embed @ mean_video
    static_true_scores = None if static_embed is None else (static_embed * true_embed).sum(-1)

    def wins(true, neg) -> float:
        """1.0 when the true caption scores strictly above its twin, both scores finite; else 0.0."""
        true, neg = float(true), float(neg)
        bad = (not math.isfinite(true)) + (not math.isfinite(neg))
        tally.seen, tally.nonfinite = tally.seen + 2, tally.nonfinite + bad
        return 0.0 if bad else float(true > neg)

    for j, (clip, factor, neg) in enumerate(negatives):
        win = wins(true_scores[clip], video_embed[clip] @ neg)
        own[factor].append(win)
        if changes is not None:
            by_change[factor][changes[j]].append(win)
        blind[factor].append(wins(blind_true_scores[clip], mean_video @ neg))
        if static_embed is not None:
            static[factor].append(wins(static_true_scores[clip], static_embed[clip] @ neg))
        if clip_groups is not None:
            grouped[f"{factor}/{clip_groups[clip]}"].append(win)
    controls = (("", own), ("blind/", blind)) + ((("static/", static),) if static_embed is not None else ())
    out = {}
    for prefix, table in controls + (("", grouped),):
        out.update({f"hard_negative/{prefix}{key}": 100.0 * sum(w) / len(w) for key, w in sorted(table.items())})
    for prefix, table in controls:  # each pair once, whatever its group
        every = [x for w in table.values() for x in w]
        out[f"hard_negative/{prefix}overall"] = 100.0 * sum(every) / max(1, len(every))
    for factor, cells in sorted(by_change.items()):
        out[f"hard_negative/balanced/{factor}"] = 100.0 * balanced_accuracy(cells)
    # How many pairs each factor has: its accuracy's binomial standard error is 100 * sqrt(p (1 - p) / pairs),
    # e.g. 4.5 points for the structured corpus's 126 relation pairs, so a smaller difference between two runs
    # is not evidence that one binds relations better.
    for factor, wins in sorted(own.items()):
        out[f"hard_negative/pairs/{factor}"] = float(len(wins))
    out["hard_negative/pairs/overall"] = float(len(negatives))
    out["hard_negative/chance"] = 50.0
    return tally.report(out)


def balanced_accuracy(wins_by_change: dict) -> float:
    """The mean over kinds of change of their win rate (wins are 1.0 / 0.0): each kind counts once, however
    many pairs it has, so a fixed preference for one phrase scores 0.5."""
    return sum(sum(w) / len(w) for w in wins_by_change.values()) / max(1, len(wins_by_change))


def frozen_to_middle_frame(video: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
    """(B, T, C, H, W) -> the same shape with every frame replaced by the clip's middle real frame (frame_mask
    (B, T) marks them): the clip without its motion."""
    real = [valid.nonzero().flatten() for valid in frame_mask.bool()]
    middle = torch.stack([r[len(r) // 2] if len(r) else r.new_zeros(()) for r in real])
    frames = video[torch.arange(video.shape[0], device=video.device), middle]  # (B, C, H, W)
    return frames.unsqueeze(1).expand_as(video).contiguous()


def hard_negative_metrics(model, cfg, tokenizer, path: Path, video_root: Path, device, make_loader,
                          group_of=None, clips=None) -> dict:
    """group_of: optional row (the file's JSON object) -> group name, for per-group accuracies.
    clips: the eval split's clips encoded by this model (tasks.eval_data.EvalClips); read, and their frames
    frozen for the static control, when the file names those clips in the same order."""
    rows = read_hard_negatives(path)
    records = [VideoRecord(video_id=r.get("video_id", str(i)), video=r["video"], captions=[r["caption"]])
               for i, r in enumerate(rows)]
    autocast = autocast_dtype(cfg.train.precision, device)
    if clips is not None and clips.covers(records, video_root):
        video_embed, kept = clips.embeddings()
        static_embed, static_kept = clips.transformed_embeddings(frozen_to_middle_frame)
    else:
        video_embed, kept = embed_videos(model, make_loader(records, cfg, video_root, tokenizer), device, autocast)
        static_embed, static_kept = embed_videos(model, make_loader(records, cfg, video_root, tokenizer), device,
                                                 autocast, transform=frozen_to_middle_frame)
    assert static_kept == kept, "the loader must skip the same videos on both passes"
    true_embed = embed_texts(model, tokenizer, [rows[i]["caption"] for i in kept], device, autocast_dtype=autocast)
    flat = [(pos, factor, caption) for pos, i in enumerate(kept)
            for factor, captions in rows[i]["negatives"].items() for caption in captions]
    neg_embed = embed_texts(model, tokenizer, [c for _, _, c in flat], device, autocast_dtype=autocast)
    changes = None  # files that name each negative's change (the structured corpus's) get balanced scores
    if all("changes" in rows[i] for i in kept):
        for i in kept:
            if any(len(rows[i]["changes"].get(f, ())) != len(c) for f, c in rows[i]["negatives"].items()):
                raise ValueError(f"{path}, row {i + 1}: 'changes' must name one change per negative caption")
        changes = [">".join(change) for i in kept for factor in rows[i]["negatives"]
                   for change in rows[i]["changes"][factor]]
    return hard_negative_accuracy(video_embed, true_embed,
                                  [(pos, factor, neg_embed[j]) for j, (pos, factor, _) in enumerate(flat)],
                                  None if group_of is None else [group_of(rows[i]) for i in kept],
                                  static_embed=static_embed, changes=changes)
