"""What a run's frozen encoders know about each clip's objects, read at each stage on the way to retrieval.

    python -m structvl.lab.diagnostics.knowledge_probe CORPUS RUN [RUN ...] [--train-clips N]

The structured corpus records each clip's objects (`meta.objects`: shape, colour, size, action). From them,
per clip: which shapes, colours, sizes, actions and colour-shape pairs are present (multi-label), and how many
objects there are. A linear probe (logistic regression on standardised features, full batch, L-BFGS, L2) is
fit on the train clips and scored on the test clips - mAP for the multi-label kinds (chance: the labels'
prevalence), accuracy for the count (chance: the commonest count) - reading:
    tokens   the mean of the video encoder's final patch states (what a fusion encoder or S-ViLM's groups read)
    pooled   the encoder's clip vector, [CLS] or mean patch state (what the video projection reads)
    embed    the shared-space video embedding (what retrieval scores)
    text     the shared-space embedding of the clip's first caption (retrieval's other side)
A kind that one stage holds and the next does not is lost between them; a kind the video embedding lacks but
the text embedding holds is what retrieval cannot match. Features are taken as evaluation takes them
(`eval.num_frames`, centre crop).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F

from structvl.data.formats import read_annotations
from structvl.engine.checkpoint import load_run_model
from structvl.models.text_encoder import build_tokenizer
from structvl.tasks.eval_data import eval_loader
from structvl.tasks.knowledge_prediction import average_precision
from structvl.tasks.retrieval import embed_texts, video_stage_features

STAGES = ("tokens", "pooled", "embed", "text")
MULTI_LABEL = ("shape", "colour", "size", "action", "colour+shape")


def clip_labels(records) -> dict[str, torch.Tensor]:
    """Per clip (rows in record order): a 0/1 matrix per multi-label kind, and the object count (long)."""
    def values(obj, kind):
        return obj["colour"] + " " + obj["shape"] if kind == "colour+shape" else obj[kind]

    labels = {}
    for kind in MULTI_LABEL:
        vocab = sorted({values(o, kind) for r in records for o in r.meta["objects"]})
        index = {v: i for i, v in enumerate(vocab)}
        matrix = torch.zeros(len(records), len(vocab))
        for row, record in enumerate(records):
            for obj in record.meta["objects"]:
                matrix[row, index[values(obj, kind)]] = 1.0
        labels[kind] = matrix
    labels["count"] = torch.tensor([len(r.meta["objects"]) for r in records])
    return labels


def stage_features(model, cfg, records, corpus: Path, tokenizer) -> dict[str, torch.Tensor]:
    """(clips, D) features of every stage in STAGES, rows in record order (a clip that fails to decode stops
    the probe: its labels would no longer line up)."""
    feats, seen = video_stage_features(model, eval_loader(records, cfg, corpus, tokenizer), torch.device("cpu"),
                                       STAGES[:3])
    if seen != list(range(len(records))):
        raise SystemExit("knowledge_probe: some clips were skipped; run `structvl data check` on the corpus")
    feats["text"] = embed_texts(model, tokenizer, [r.captions[0] for r in records], torch.device("cpu"))
    return feats


def fit_linear_probe(x: torch.Tensor, y: torch.Tensor, multi_label: bool, weight_decay: float = 1e-3,
                     steps: int = 100) -> torch.nn.Linear:
    """Logistic regression (sigmoid per label if multi_label, else softmax over classes y) by full-batch L-BFGS."""
    torch.manual_seed(0)
    outputs = y.shape[1] if multi_label else int(y.max()) + 1
    probe = torch.nn.Linear(x.shape[1], outputs)
    optimizer = torch.optim.LBFGS(probe.parameters(), max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        logits = probe(x)
        loss = (F.binary_cross_entropy_with_logits(logits, y) if multi_label else F.cross_entropy(logits, y))
        loss = loss + weight_decay * probe.weight.square().sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return probe


def probe_scores(train_x: torch.Tensor, train_labels: dict, test_x: torch.Tensor, test_labels: dict) -> dict:
    """{kind: test score in %}: mAP over the labels present in the test split, or count accuracy."""
    mean, std = train_x.mean(0), train_x.std(0).clamp(min=1e-6)
    train_x, test_x = (train_x - mean) / std, (test_x - mean) / std
    scores = {}
    with torch.enable_grad():
        for kind in MULTI_LABEL:
            probe = fit_linear_probe(train_x, train_labels[kind], multi_label=True)
            aps, _ = average_precision(probe(test_x).detach(), test_labels[kind])
            scores[kind] = 100 * sum(aps) / len(aps)
        probe = fit_linear_probe(train_x, train_labels["count"], multi_label=False)
    scores["count"] = 100 * float((probe(test_x).argmax(1) == test_labels["count"]).float().mean())
    return scores


def chance_scores(test_labels: dict) -> dict:
    """What a probe that sees nothing scores: the labels' prevalence (mAP), the commonest count (accuracy)."""
    scores = {}
    for kind in MULTI_LABEL:
        _, prevalences = average_precision(torch.zeros_like(test_labels[kind]), test_labels[kind])
        scores[kind] = 100 * sum(prevalences) / len(prevalences)
    scores["count"] = 100 * float(torch.bincount(test_labels["count"]).max()) / len(test_labels["count"])
    return scores


def format_row(name: str, scores: dict) -> str:
    return f"  {name:8s}" + "".join(f"{scores[k]:>14.1f}" for k in (*MULTI_LABEL, "count"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("corpus", type=Path)
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--train-clips", type=int, default=0, help="probe on the first N train clips (0: all)")
    args = parser.parse_args(argv)
    train = read_annotations("jsonl", args.corpus / "train.jsonl")
    train = train[:args.train_clips] if args.train_clips else train
    test = read_annotations("jsonl", args.corpus / "test.jsonl")
    labels, split = clip_labels(train + test), len(train)  # one vocabulary for both splits
    train_labels = {k: v[:split] for k, v in labels.items()}
    test_labels = {k: v[split:] for k, v in labels.items()}
    header = f"  {'stage':8s}" + "".join(f"{k:>14s}" for k in (*MULTI_LABEL, "count"))
    chance_row = format_row("chance", chance_scores(test_labels))  # the same for every run
    for run in args.runs:
        model, cfg, _ = load_run_model(run)
        tokenizer = build_tokenizer(cfg.model.text)
        train_feats = stage_features(model, cfg, train, args.corpus, tokenizer)
        test_feats = stage_features(model, cfg, test, args.corpus, tokenizer)
        print(f"{run}: linear probe on {len(train)} train clips, test mAP (count: accuracy) over {len(test)} clips")
        print(header)
        for stage in STAGES:
            print(format_row(stage, probe_scores(train_feats[stage], train_labels, test_feats[stage], test_labels)))
        print(chance_row)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
