"""Hard-negative accuracy per (true label -> twin's label) pair, with the clip, frozen, and blind.

    python -m structvl.lab.diagnostics.hard_negative_pairs [--factor action|shape|colour|size|relation] CORPUS RUN [RUN ...]

The factor is action unless `--factor` names another: then the table says which shape (colour, ...) the twin
puts in place of which.

`hard_negative/action` is one number over ~3,400 pairs; this splits it by which action the twin puts in place of
which. Each pair is scored three ways: against the clip's own video (the benchmark), against the clip frozen to
its middle frame (`static`: no motion to see) and against the mean test video (`blind`: no clip at all). A model
that sees motion wins both "still -> moving" and "moving -> still" pairs with the clip and loses its edge when
frozen; one with a preference for a phrase wins one direction and loses the other, clip or no clip.

The structured corpus's twins change one object's action; the file names the action before and after
(`changes`; a corpus written before it had them must be regenerated). Prints, per run and score, a
10x10 table of accuracies in % (rows: the clip's action, columns: the twin's), each row's accuracy and pairs,
and the balanced accuracy (the mean over cells). The benchmark's pairs are not balanced: an object that stays
still gets nine twins, each moving object one "still" twin, so a model that calls every clip still wins the 30%
of the pairs that are a still object's (and about 61% of all, with the rest a coin toss) without seeing motion.
"""

from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path

import torch

from structvl.data.records import VideoRecord
from structvl.engine.checkpoint import load_run_model
from structvl.lab.synth.vocab import ACTIONS, COLOURS, RELATIONS, SHAPES, SIZES
from structvl.models.text_encoder import build_tokenizer
from structvl.tasks.eval_data import eval_loader
from structvl.tasks.hard_negative import balanced_accuracy, frozen_to_middle_frame, read_hard_negatives
from structvl.tasks.retrieval import embed_texts, embed_videos

LABELS = {"action": ACTIONS, "shape": SHAPES, "colour": tuple(COLOURS), "size": tuple(SIZES), "relation": RELATIONS}


def print_table(title: str, wins: dict[tuple[str, str], list[float]], labels: tuple[str, ...] = ACTIONS) -> None:
    short = {a: a.replace("moving ", "").replace("staying ", "")[:7] for a in labels}
    total = [w for cell in wins.values() for w in cell]
    balanced = balanced_accuracy(wins)
    print(f"{title}: {100 * sum(total) / max(1, len(total)):.1f}% of {len(total)} pairs, "
          f"{100 * balanced:.1f}% balanced (the mean of the cells: a fixed preference for one phrase scores 50)")
    print(f"  {'clip / twin':<12}" + "".join(f"{short[a]:>8}" for a in labels) + "     row")
    for true in labels:
        cells = [wins.get((true, new), []) for new in labels]
        row = [w for cell in cells for w in cell]
        print(f"  {short[true]:<12}" + "".join(f"{100 * sum(c) / len(c):8.0f}" if c else f"{'-':>8}" for c in cells)
              + f"  {100 * sum(row) / max(1, len(row)):5.1f} ({len(row)})")


def main(argv: list[str]) -> int:
    factor = "action"
    if argv[:1] == ["--factor"] and len(argv) > 1:
        factor, argv = argv[1], argv[2:]
    if factor not in LABELS or len(argv) < 2:
        print(__doc__)
        return 2
    corpus = Path(argv[0])
    rows = read_hard_negatives(corpus / "eval" / "hard_negatives.jsonl")
    if not all("changes" in r for r in rows):
        raise SystemExit(f"{corpus}/eval/hard_negatives.jsonl names no changes: regenerate it with `structvl synth`")
    records = [VideoRecord(video_id=r["video_id"], video=r["video"], captions=[r["caption"]]) for r in rows]
    for run in argv[1:]:
        model, cfg, _ = load_run_model(run)
        tokenizer, device = build_tokenizer(cfg.model.text), torch.device("cpu")
        with torch.no_grad():
            video, kept = embed_videos(model, eval_loader(records, cfg, corpus, tokenizer), device)
            frozen, _ = embed_videos(model, eval_loader(records, cfg, corpus, tokenizer), device,
                                     transform=frozen_to_middle_frame)
            true = embed_texts(model, tokenizer, [rows[i]["caption"] for i in kept], device)
            pairs = [(pos, old, new, twin) for pos, i in enumerate(kept)  # (clip, true label, twin's, twin)
                     for twin, (old, new) in zip(rows[i]["negatives"][factor], rows[i]["changes"][factor])]
            twins = embed_texts(model, tokenizer, [p[3] for p in pairs], device)
        mean_video = video.mean(0, keepdim=True).expand_as(video)
        print(f"{run}")
        for title, clips in (("own clip", video), ("static (middle frame)", frozen), ("blind (mean video)", mean_video)):
            wins = defaultdict(list)
            for j, (pos, old, new, _) in enumerate(pairs):
                wins[(old, new)].append(float(clips[pos] @ true[pos] > clips[pos] @ twins[j]))
            print_table(title, wins, LABELS[factor])
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
