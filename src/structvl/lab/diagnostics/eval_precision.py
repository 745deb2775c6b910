"""Is a precision's cost in the training or in the evaluation? Each run's weights, evaluated in fp32 and in bf16.

    python -m structvl.lab.diagnostics.eval_precision RUN [RUN ...]

Every run is evaluated on its own eval split (`eval.split`, zero-shot retrieval) twice: under fp32 and under bf16
autocast, whatever `train.precision` it trained in; its recorded t2v R@1 is printed beside them. A run evaluated in
the precision it trained in gives back its recorded number (the evaluation is deterministic), so the other column is
what the evaluation's precision alone changes; runs trained in bf16 and in fp32 with the same seeds, all evaluated in
fp32, tell what training in bf16 changes. docs/findings.md, "All three in bf16 and fp32 at the same code".
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from structvl.data.formats import read_annotations
from structvl.engine.checkpoint import load_run_model
from structvl.models.text_encoder import build_tokenizer
from structvl.tasks.eval_data import eval_annotations, test_video_root
from structvl.tasks.evaluate import evaluate_retrieval

PRECISIONS = ("fp32", "bf16")


def retrieval_by_precision(run: str | Path, precisions=PRECISIONS) -> dict[str, dict[str, float]]:
    """precision -> the run's zero-shot retrieval metrics on its eval split, evaluated in that precision."""
    model, cfg, _ = load_run_model(run)
    model.eval()
    tokenizer, root = build_tokenizer(cfg.model.text), Path(cfg.data.root)
    records = read_annotations(cfg.data.format, root / eval_annotations(cfg))
    videos = test_video_root(cfg, root)
    out = {}
    for precision in precisions:
        cfg.train.precision = precision
        with torch.no_grad():
            out[precision] = evaluate_retrieval(model, cfg, tokenizer, records, videos, torch.device("cpu"))
    return out


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__)
        return 2
    unfinished = [run for run in argv if not (Path(run) / "metrics.json").is_file()]
    if unfinished:  # before any run is evaluated
        print(f"eval_precision: {unfinished[0]}: no metrics.json there; give finished run directories", file=sys.stderr)
        return 2
    print(f"{'run':50s} {'trained':>7s} {'recorded':>8s} " + " ".join(f"{p + ' t2v':>9s} {p + ' v2t':>9s}"
                                                                     for p in PRECISIONS))
    for run in argv:
        recorded = json.loads((Path(run) / "metrics.json").read_text(encoding="utf-8"))
        trained = "bf16" if recorded.get("train/bf16") else "fp16" if recorded.get("train/fp16") else "fp32"
        by_precision = retrieval_by_precision(run)
        print(f"{run:50s} {trained:>7s} {recorded.get('retrieval/t2v/R@1', float('nan')):8.1f} "
              + " ".join(f"{m['retrieval/t2v/R@1']:9.1f} {m['retrieval/v2t/R@1']:9.1f}" for m in by_precision.values()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
