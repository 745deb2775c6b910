"""Hard-negative accuracy per factor, split by how many objects the test clip shows, beside its controls.

    python -m structvl.lab.diagnostics.hard_negative_breakdown CORPUS RUN [RUN ...]

The structured corpus's clips show one to three objects, each with its own action. An action twin changes one
object's action, so a model can win it by seeing that motion, by binding the caption's words to the right
object - or without the video at all, when the twin reads less like a real caption than the truth does. The
blind score (`hard_negative/blind/*`: the same pairs against the mean test video) measures that last part,
the static score (`hard_negative/static/*`: against the clip frozen to its middle frame) what is won without
motion; single-object clips need no binding. Object counts come from the corpus's test annotations
(`test.jsonl`, `meta.objects`). Prints one table per run (accuracy in %, pairs per cell in brackets) and merges
the `hard_negative/blind/*`, `static/*` and `balanced/*` keys into the run's metrics.json (runs evaluated
before those scores existed); the other keys are left as they were.
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import torch

from structvl.data.formats import read_annotations
from structvl.engine.checkpoint import load_run_model
from structvl.lab.demo import write_json_merged
from structvl.models.text_encoder import build_tokenizer
from structvl.tasks.eval_data import eval_loader
from structvl.tasks.hard_negative import hard_negative_metrics, read_hard_negatives

FACTORS = ("shape", "colour", "size", "action", "relation")


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__)
        return 2
    corpus = Path(argv[0])
    objects = {r.video_id: len(r.meta["objects"]) for r in read_annotations("jsonl", corpus / "test.jsonl")}

    def group_of(row: dict) -> str:  # a hard-negative row -> its clip's object count
        return f"{objects[row['video_id']]}obj"

    path = corpus / "eval" / "hard_negatives.jsonl"
    pairs = Counter()  # (factor, group) -> number of twins, to print beside the accuracies
    for row in read_hard_negatives(path):
        for factor, captions in row["negatives"].items():
            pairs[factor, group_of(row)] += len(captions)
    groups = sorted({g for _, g in pairs})
    for run in argv[1:]:
        model, cfg, run_dir = load_run_model(run)
        with torch.no_grad():
            metrics = hard_negative_metrics(model.eval(), cfg, build_tokenizer(cfg.model.text), path, corpus,
                                            torch.device("cpu"), eval_loader, group_of=group_of)
        write_json_merged(run_dir / "metrics.json", {k: v for k, v in metrics.items()
                                                     if k.startswith(("hard_negative/blind/", "hard_negative/static/",
                                                                      "hard_negative/balanced/"))})
        print(f"{run}: overall {metrics['hard_negative/overall']:.1f}, "
              f"blind {metrics['hard_negative/blind/overall']:.1f}, static {metrics['hard_negative/static/overall']:.1f}")
        for factor in FACTORS:
            cells = [f"{g} {metrics[f'hard_negative/{factor}/{g}']:5.1f} ({pairs[(factor, g)]})"
                     for g in groups if f"hard_negative/{factor}/{g}" in metrics]
            print(f"  {factor:9s}" + "  ".join(cells) + f"   blind {metrics[f'hard_negative/blind/{factor}']:5.1f}"
                  f"   static {metrics[f'hard_negative/static/{factor}']:5.1f}"
                  + (f"   balanced {metrics[f'hard_negative/balanced/{factor}']:5.1f}"
                     if f"hard_negative/balanced/{factor}" in metrics else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
