"""Zero-shot evaluation of a pre-trained model: retrieval, hard-negative accuracy, and what each paper's objective
trains (`OBJECTIVE_MEASURES`); `structvl eval --task retrieval|hard_negative` and the evaluation half of
`structvl pretrain` (`pretrain_and_evaluate`).

The evaluation protocol (annotation file, frames, sampling, block size) comes from the run's config
(`eval:` section), so a number in metrics.json always says how it was measured.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from structvl.config import RunConfig
from structvl.data.formats import read_annotations
from structvl.engine.checkpoint import load_run_model
from structvl.engine.pretrain import run_pretraining
from structvl.models.text_encoder import build_tokenizer
from structvl.runtime.distributed import barrier, cleanup
from structvl.runtime.precision import autocast_dtype
from structvl.runtime.process import trim_heap
from structvl.tasks.eval_data import EvalClips, eval_annotations, eval_loader, hard_negatives_file, test_video_root
from structvl.tasks.grounding import evaluate_grounding, evaluate_scene_change
from structvl.tasks.hard_negative import hard_negative_metrics
from structvl.tasks.knowledge_prediction import evaluate_knowledge_prediction
from structvl.tasks.masked_words import evaluate_masked_words
from structvl.tasks.retrieval import embed_texts, embed_videos, retrieval_metrics


def evaluate_retrieval(model, cfg: RunConfig, tokenizer, records, video_root, device,
                       prefix: str = "retrieval", clips: EvalClips | None = None) -> dict[str, float]:
    """clips: the split's clips already encoded by this model (read when they are `records`' clips)."""
    autocast = autocast_dtype(cfg.train.precision, device)
    if clips is not None and clips.covers(records, video_root):
        video_embed, kept = clips.embeddings()
    else:
        video_embed, kept = embed_videos(model, eval_loader(records, cfg, video_root, tokenizer), device, autocast)
    texts, text_to_video = [], []
    for position, record_index in enumerate(kept):  # captions of skipped (corrupt) videos are dropped too
        for caption in records[record_index].captions:
            texts.append(caption)
            text_to_video.append(position)
    text_embed = embed_texts(model, tokenizer, texts, device, autocast_dtype=autocast)
    out = retrieval_metrics(video_embed, text_embed, text_to_video, cfg.eval.block_size, prefix,
                            cfg.eval.v2t_multi_caption)
    out[f"{prefix}/skipped_videos"] = float(len(records) - len(kept))
    return out


def evaluate_model(model, cfg: RunConfig, tokenizer, device=torch.device("cpu"),
                   data_root: str | Path | None = None, clips: EvalClips | None = None) -> dict[str, float]:
    """Retrieval on `eval.split` and, when the corpus has them, that split's hard negatives (`eval.hard_negatives`).
    clips: the split's clips for this model (`hold_eval_clips`); by default made here when the split fits."""
    root = Path(data_root or cfg.data.root)
    video_root = test_video_root(cfg, root)
    clips = clips if clips is not None else hold_eval_clips(model, cfg, tokenizer, device, root)
    records = clips.records if clips is not None else read_annotations(cfg.data.format, root / eval_annotations(cfg))
    metrics = evaluate_retrieval(model, cfg, tokenizer, records, video_root, device, clips=clips)
    hard_negatives = hard_negatives_file(cfg)
    if hard_negatives and (root / hard_negatives).exists():
        metrics.update(hard_negative_metrics(model, cfg, tokenizer, root / hard_negatives, video_root,
                                             device, eval_loader, clips=clips))
    return metrics


def hold_eval_clips(model, cfg: RunConfig, tokenizer, device,
                    data_root: str | Path | None = None) -> EvalClips | None:
    """The eval split's clips, decoded and encoded once for all of this model's zero-shot measures; None when the
    split is too large to hold (each measure then streams its own)."""
    return EvalClips(model, cfg, tokenizer, device, data_root) if EvalClips.fits(cfg, data_root) else None


# What each paper's objective trains, measured on the test split after pre-training: objective name ->
# measure(objective, model, cfg, tokenizer, device) -> metrics. `objective` is the trained objective module (CLOP's
# SKP heads live there); S-ViLM's and Clover's measures read the model alone.
# Each takes `clips=` (an EvalClips of the model, or None) and reads the stored clips where it can.
OBJECTIVE_MEASURES = {
    "clop_skp": evaluate_knowledge_prediction,
    "svilm_grounding": lambda objective, *args, clips=None: evaluate_grounding(*args, clips=clips),
    "svilm_temporal": lambda objective, *args, clips=None: evaluate_scene_change(*args, clips=clips),
    "clover_mlm": lambda objective, *args, clips=None: evaluate_masked_words(*args, clips=clips),
}


def objective_measures(module, model, cfg: RunConfig, tokenizer, device,
                       clips: EvalClips | None = None) -> dict[str, float]:
    """`OBJECTIVE_MEASURES` of the objectives `module` (a PretrainingModule) trained."""
    metrics: dict[str, float] = {}
    for name, objective in module.objectives.items():
        if name in OBJECTIVE_MEASURES:
            metrics.update(OBJECTIVE_MEASURES[name](objective, model, cfg, tokenizer, device, clips=clips))
    return metrics


def pretrain_and_evaluate(cfg: RunConfig, run_dir: str | Path, resume: bool = False, overwrite: bool = False,
                          prepare_data=None) -> dict:
    """`structvl pretrain`: train (structvl.engine.pretrain.run_pretraining, which says what resume / overwrite /
    prepare_data do), then evaluate on the main rank: retrieval and hard negatives, and each enabled paper
    objective's own measure. All metrics are merged into run_dir/metrics.json; the process group is torn down
    at the end."""
    result = run_pretraining(cfg, Path(run_dir), resume=resume, overwrite=overwrite, prepare_data=prepare_data)
    trim_heap()  # the trainer (optimizer state, loader workers) is gone: evaluate without its largest step's heap
    metrics = dict(result.metrics)
    if result.info.is_main:
        device = result.info.device
        clips = hold_eval_clips(result.model, cfg, result.tokenizer, device)  # decoded and encoded once for all
        metrics.update(evaluate_model(result.model, cfg, result.tokenizer, device=device, clips=clips))
        if result.module is not None:  # under FSDP the objectives' heads are sharded across ranks
            metrics.update(objective_measures(result.module, result.model, cfg, result.tokenizer, device, clips))
        del clips
        (Path(run_dir) / "metrics.json").write_text(json.dumps(metrics, indent=2), encoding="utf-8")
    barrier()
    cleanup()
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
                             ("chance (text -> video)", "retrieval/chance"),
                             ("chance (video -> text)", "retrieval/chance_v2t")):
            if f"{prefix}/MnR" not in metrics:  # runs made before chance_v2t was reported
                continue
            row = [metrics[f"{prefix}/R@{k}"] for k in (1, 5, 10)] + [metrics[f"{prefix}/MdR"], metrics[f"{prefix}/MnR"]]
            lines.append(f"  {name:<32}" + "".join(f"{v:7.1f}" for v in row))
    own = sorted(k.split("/")[1] for k in metrics
                 if k.startswith("hard_negative/") and k.count("/") == 1
                 and k not in ("hard_negative/chance", "hard_negative/nonfinite_scores"))
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
    nonfinite = {k[:-len("/nonfinite_scores")]: int(v) for k, v in metrics.items() if k.endswith("/nonfinite_scores")}
    if nonfinite:  # runtime/nonfinite.py: each was scored as the worst possible
        lines.append("NON-FINITE scores (NaN/inf), each scored as the worst possible: "
                     + ", ".join(f"{k} {v}" for k, v in sorted(nonfinite.items())))
    return "\n".join(lines)


def evaluate_from_cli(args) -> int:
    model, cfg, run_dir = load_run_model(args.checkpoint)
    cfg.eval.split = getattr(args, "split", None) or cfg.eval.split  # --split val|test
    tokenizer = build_tokenizer(cfg.model.text)
    data = Path(args.data)
    if data.is_dir():  # a structured-corpus directory: its eval split (+ hard negatives for that task)
        metrics = evaluate_model(model, cfg, tokenizer, data_root=data)
        if args.task == "retrieval":
            metrics = {k: v for k, v in metrics.items() if k.startswith("retrieval/")}
    else:  # an annotation file in any supported format
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
