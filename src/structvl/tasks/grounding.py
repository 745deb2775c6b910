"""S-ViLM's evaluation on the structured corpus: do groups ground noun phrases, do features see scene changes?

Grounding (pointing accuracy). For every noun phrase of a test clip's caption (the corpus's own phrase spans,
each linked to the object it names, whose box is stored per frame), the model picks the group that matches
the phrase best (cosine in the shared space). On each encoder time step, the group's attention peak is the
patch with the highest p(group | patch) among the patches the hard assignment gives to that group (all
patches if it owns none there); a hit is a peak whose centre lies inside the object's box on one of the
step's frames (steps where the object is invisible, e.g. blinking off, are not scored). Reported beside it:

* `pointing_best_patch`: the best single patch, i.e. the patch whose projected state (through the video head)
  has the highest cosine with the phrase - what a model without groups (the baseline) can do;
* `pointing_random`: a random group's peak (does choosing the group matter?);
* `pointing_oracle_group`: the peak of the group that owns most patches inside the object's box over the
  clip (do the groups segment objects at all, whatever the phrase picks?);
* `pointing_chance`: the fraction of patches inside the box (a uniformly random patch);
* `group_precision`: the fraction of the chosen group's patches on a step that lie inside the box;
* `groups_used`: non-empty groups per clip.

Scene change. Every test clip gets an interval of another test clip pasted in (the same cut-and-paste as
training, from a fixed seed), per-time-step features are split in two by 2-means (cosine), and the accuracy
is the fraction of time steps (= frames: a step is a tubelet) labelled with their true part, under the better
of the two label permutations. `scene_change_pixels` runs the same clustering on raw pixels, and
`scene_change_chance` is the expected score of random labels, so the number can be read against both.
`scene_change_acc_same_background` (and `scene_change_same_background_pixels`) is a harder variant reported
beside it: the pasted clip shares the test clip's background, so only the objects and motion change.
`scene_change_acc_reversed_steps` (and `scene_change_reversed_steps_pixels`) is the hardest: the "pasted"
steps are the clip's own, each playing its frames backwards (`svilm.paste_source: reversed_steps`), so only
the direction of motion inside a step tells the parts apart.
All metrics are percentages. A non-finite score is the worst possible: a phrase whose group or patch
similarities, or a group whose attention, hold a NaN or inf is a miss on that step, and a clip whose per-step
features are not finite scores 0 on scene change; `grounding/nonfinite_scores` and
`temporal/nonfinite_scores` count them.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import fields
from math import comb
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from structvl.config import RunConfig
from structvl.data.formats import read_annotations
from structvl.data.sampling import sample_frame_indices
from structvl.engine.checkpoint import load_run_model
from structvl.models.text_encoder import build_tokenizer
from structvl.models.video_encoder import VideoEncoderOutput
from structvl.objectives.svilm import cut_and_paste, embed_phrases, reverse_steps
from structvl.runtime.nonfinite import NonFiniteTally
from structvl.runtime.precision import autocast, autocast_dtype
from structvl.tasks.eval_data import eval_annotations, eval_loader


def _autocast(cfg: RunConfig, device: torch.device):
    return autocast(device, autocast_dtype(cfg.train.precision, device))


def _all_test_records(cfg: RunConfig, data_root: Path):
    return read_annotations(cfg.data.format, data_root / eval_annotations(cfg))


def _test_records(cfg: RunConfig, data_root: Path):
    records = _all_test_records(cfg, data_root)
    return records[: cfg.svilm.eval_clips] if cfg.svilm.eval_clips else records


def _frame_size(data_root: Path, image_size: int) -> int:
    """The corpus's frame side (corpus.json); the model's input side when there is no manifest."""
    try:
        return int(json.loads((data_root / "corpus.json").read_text())["arguments"]["size"])
    except (OSError, ValueError, KeyError):
        return image_size


def boxes_to_input(boxes: np.ndarray, frame_size: int, image_size: int) -> np.ndarray:
    """Boxes [x0, y0, x1, y1] of a square frame_size frame -> coordinates of the eval transform's output
    (resize the shorter side to image_size, then centre crop: a square frame is only rescaled)."""
    return np.asarray(boxes, np.float64) * (image_size / frame_size)


def patch_centres(grid: int, patch_size: int) -> np.ndarray:
    """(N, 2) pixel centres (x, y) of the patch grid, row-major like the encoder's tokens."""
    ys, xs = np.meshgrid(np.arange(grid), np.arange(grid), indexing="ij")
    return np.stack([xs.ravel(), ys.ravel()], 1) * patch_size + patch_size / 2.0


def _encoded_batches(model, cfg: RunConfig, tokenizer, records, video_root, device, clips=None):
    """(records, frames' encoder output on `device`) per batch of `records` (test-split records): from the stored
    clips when `clips` (an EvalClips of this model) holds them all, else from their own loader."""
    if clips is not None:
        index = {id(r): i for i, r in enumerate(clips.records)}
        wanted = [index.get(id(r)) for r in records]
        if None not in wanted:
            wanted = set(wanted)
            for batch, out in zip(clips.batches(), clips.encoded()):
                rows = [j for j, i in enumerate(batch["record_index"].tolist()) if i in wanted]
                if rows:
                    enc = out.encoder
                    yield [clips.records[i] for i in batch["record_index"][rows].tolist()], VideoEncoderOutput(
                        **{f.name: None if getattr(enc, f.name) is None else getattr(enc, f.name)[rows].to(device)
                           for f in fields(enc)})
            return
    for batch in eval_loader(records, cfg, video_root, tokenizer):
        if batch.get("video") is None:
            continue
        with _autocast(cfg, device):
            enc = model.video_encoder(batch["video"].to(device), batch["frame_mask"].to(device))
        yield [records[i] for i in batch["record_index"].tolist()], enc


@torch.no_grad()
def clip_groundings(model, cfg: RunConfig, tokenizer, records, video_root, device, clips=None):
    """Per test clip: its record, sampled frame indices, and for each corpus phrase of its first caption the
    phrase x patch cosines (T', N) and phrase x group cosines (G,) (None without groups), plus the patch ->
    group assignment (T', N) and p(group | patch) (G, T', N). clips: see `_encoded_batches`."""

    model.eval()
    for recs, enc in _encoded_batches(model, cfg, tokenizer, records, video_root, device, clips):
        captions = [r.captions[0] for r in recs]
        items = [[ph for ph in r.meta.get("phrases", []) if ph["caption_index"] == 0] for r in recs]
        spans = [[(ph["start"], ph["end"]) for ph in phs] for phs in items]
        tokens, offsets = tokenizer.encode_with_offsets(captions)
        with _autocast(cfg, device):
            patches = F.normalize(model.video_proj(enc.tokens), dim=-1)  # (B, T', N, E)
            groups = model.embed_groups(enc) if enc.groups is not None else None
            states = None
            if cfg.svilm.phrase_encoding == "span":
                states = model.text_encoder(tokens["input_ids"].to(device), tokens["attention_mask"].to(device)).tokens
            phrases, _ = embed_phrases(model, spans, max(1, max(map(len, spans))), cfg.svilm.phrase_encoding,
                                       token_states=states, offsets=offsets, captions=captions, tokenizer=tokenizer)
        patch_sim = torch.einsum("bpe,btne->bptn", phrases.float(), patches.float()).cpu()
        group_sim = None if groups is None else torch.einsum("bpe,bge->bpg", phrases.float(), groups.float()).cpu()
        for b, rec in enumerate(recs):
            n_frames = int(rec.meta.get("num_frames", len(rec.meta["objects"][0]["boxes"])))
            frames, _ = sample_frame_indices(n_frames, float(rec.meta.get("fps", 8)), cfg.eval.num_frames, "uniform")
            yield {
                "record": rec, "frame_indices": frames, "phrases": items[b],
                "patch_sim": patch_sim[b, :len(items[b])], "group_sim": None if group_sim is None else group_sim[b, :len(items[b])],
                "assignment": None if enc.group_assignment is None else enc.group_assignment[b].cpu(),
                "probs": None if enc.group_probs is None else enc.group_probs[b].float().cpu(),
            }


def group_peak(assignment: torch.Tensor, probs: torch.Tensor, group: int | None, t: int) -> int | None:
    """The group's attention peak on time step t: argmax of p(group | patch) over the patches assigned to it
    there (over all patches when it owns none). None (a miss) when the group is None or its attention there
    is not finite."""
    if group is None or not bool(torch.isfinite(probs[group, t]).all()):
        return None
    p = probs[group, t].clone()
    owned = assignment[t] == group
    if bool(owned.any()):
        p[~owned] = -1.0
    return int(p.argmax())


def _best(scores: torch.Tensor, tally: NonFiniteTally) -> int | None:
    """argmax of `scores`, or None (a miss) when any of them is not finite."""
    return None if tally.add(scores) else int(scores.argmax())


def _hit(inside: np.ndarray, index: int | None) -> float:
    return 0.0 if index is None else float(inside[index])


def _step_boxes(obj: dict, frames: np.ndarray, t: int, tubelet: int) -> list:
    """The object's boxes on the visible frames of time step t (the tubelet's frames)."""
    idx = frames[t * tubelet:(t + 1) * tubelet]
    return [obj["boxes"][i] for i in idx if obj["visible"][i]]


def _inside(centres: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """(N,) whether each centre (x, y) lies in any of the boxes (K, 4)."""
    x, y = centres[:, :1], centres[:, 1:]
    return ((x >= boxes[:, 0]) & (x < boxes[:, 2]) & (y >= boxes[:, 1]) & (y < boxes[:, 3])).any(1)


@torch.no_grad()
def evaluate_grounding(model, cfg: RunConfig, tokenizer, device=torch.device("cpu"),
                       data_root: str | Path | None = None, clips=None) -> dict[str, float]:
    """Pointing accuracies on the test split (see the module docstring); {} when the corpus has no boxes.
    clips: the test split's clips encoded by this model (tasks.eval_data.EvalClips), read instead of encoding."""
    root = Path(data_root or cfg.data.root)
    video_root = Path(cfg.data.videos) if cfg.data.videos else root
    split = _test_records(cfg, root)
    if clips is not None and clips.covers(_all_test_records(cfg, root), video_root):
        split = clips.records[:len(split)]  # the same records, as the stored clips know them
    else:
        clips = None
    records = [r for r in split if r.meta.get("phrases") and r.meta.get("objects")]
    if not records:
        return {}
    v = cfg.model.video
    grid, tubelet = v.image_size // v.patch_size, v.tubelet_size
    centres = patch_centres(grid, v.patch_size)
    scale_from = _frame_size(root, v.image_size)
    rng = np.random.default_rng(0)
    hits: dict[str, list[float]] = {k: [] for k in ("best_patch", "chance", "group", "random", "oracle", "precision")}
    empty, groups_used, num_phrases = [], [], 0
    tally = NonFiniteTally("grounding")
    for clip in clip_groundings(model, cfg, tokenizer, records, video_root, device, clips):
        assign, probs = clip["assignment"], clip["probs"]
        if assign is not None:
            groups_used.append(len(torch.unique(assign[assign >= 0])))
        for p, phrase in enumerate(clip["phrases"]):
            obj = clip["record"].meta["objects"][phrase["object"]]
            num_phrases += 1
            in_box_steps = []
            for t in range(clip["patch_sim"].shape[1]):
                boxes = _step_boxes(obj, clip["frame_indices"], t, tubelet)
                in_box_steps.append(None if not boxes else
                                    _inside(centres, boxes_to_input(np.array(boxes), scale_from, v.image_size)))
            if assign is not None:
                chosen = _best(clip["group_sim"][p], tally)
                random_group = int(rng.integers(probs.shape[0]))
                # Oracle: the group owning most in-box patches over the clip.
                counts = torch.zeros(probs.shape[0])
                for t, inside in enumerate(in_box_steps):
                    if inside is not None:
                        owners = assign[t][torch.from_numpy(inside)]
                        counts += torch.bincount(owners[owners >= 0], minlength=probs.shape[0]).float()
                oracle = int(counts.argmax())
            for t, inside in enumerate(in_box_steps):
                if inside is None:
                    continue
                hits["best_patch"].append(_hit(inside, _best(clip["patch_sim"][p, t], tally)))
                hits["chance"].append(float(inside.mean()))
                if assign is None:
                    continue
                tally.add(probs[:, t])
                hits["group"].append(_hit(inside, group_peak(assign, probs, chosen, t)))
                hits["random"].append(_hit(inside, group_peak(assign, probs, random_group, t)))
                hits["oracle"].append(_hit(inside, group_peak(assign, probs, oracle, t)))
                owned = (assign[t] == chosen).numpy() if chosen is not None else np.zeros(len(inside), bool)
                empty.append(float(not owned.any()))
                if owned.any():
                    hits["precision"].append(float(inside[owned].mean()))
    out = {"grounding/num_phrases": float(num_phrases),
           "grounding/pointing_best_patch": 100.0 * float(np.mean(hits["best_patch"])),
           "grounding/pointing_chance": 100.0 * float(np.mean(hits["chance"]))}
    if hits["group"]:
        out.update({"grounding/pointing": 100.0 * float(np.mean(hits["group"])),
                    "grounding/pointing_random": 100.0 * float(np.mean(hits["random"])),
                    "grounding/pointing_oracle_group": 100.0 * float(np.mean(hits["oracle"])),
                    "grounding/group_precision": 100.0 * float(np.mean(hits["precision"] or [0.0])),
                    "grounding/group_empty": 100.0 * float(np.mean(empty)),
                    "grounding/groups_used": float(np.mean(groups_used))})
    return tally.report(out)


# ----------------------------------------------------------------------------- scene change
def two_means(features: torch.Tensor, iterations: int = 10) -> torch.Tensor:
    """Split rows of `features` (T, D) into two clusters by cosine 2-means; returns 0/1 labels (T,).
    Seeds: the two least similar rows, so the result is deterministic."""
    f = F.normalize(features.float(), dim=-1)
    sim = f @ f.t()
    i, j = divmod(int(sim.argmin()), sim.shape[0])
    centroids = torch.stack([f[i], f[j]])
    labels = (f @ centroids.t()).argmax(1)
    for _ in range(iterations):
        if labels.min() == labels.max():
            break
        centroids = F.normalize(torch.stack([f[labels == k].mean(0) for k in (0, 1)]), dim=-1)
        new = (f @ centroids.t()).argmax(1)
        if torch.equal(new, labels):
            break
        labels = new
    return labels


def permutation_accuracy(labels: torch.Tensor, truth: torch.Tensor) -> float:
    """Fraction of positions where 0/1 `labels` match `truth`, under the better of the two label names."""
    agree = float((labels.long() == truth.long()).float().mean())
    return max(agree, 1.0 - agree)


def random_label_chance(steps: int) -> float:
    """Expected permutation_accuracy of uniformly random labels over `steps` positions."""
    return sum(comb(steps, k) * max(k, steps - k) / steps for k in range(steps + 1)) / 2 ** steps


@torch.no_grad()
def evaluate_scene_change(model, cfg: RunConfig, tokenizer, device=torch.device("cpu"),
                          data_root: str | Path | None = None, seed: int = 0, clips=None) -> dict[str, float]:
    """Scene-change accuracy of per-time-step features on cut-and-paste test clips (see module docstring).
    clips: the test split's clips decoded once (tasks.eval_data.EvalClips): their batches are replayed instead of
    decoding the clips again, when they are the batches this evaluation's own loader would give."""

    root = Path(data_root or cfg.data.root)
    records = _test_records(cfg, root)
    video_root = Path(cfg.data.videos) if cfg.data.videos else root
    replay = clips is not None and len(records) == len(clips.records) and clips.covers(records, video_root)
    generator = torch.Generator().manual_seed(seed)
    same_generator, rng = torch.Generator().manual_seed(seed + 1), np.random.default_rng(seed)
    steps = model.video_encoder.time
    model.eval()
    reversed_generator = torch.Generator().manual_seed(seed + 2)
    acc: dict[str, list[float]] = {k + p: [] for k in ("", "_same_background", "_reversed_steps")
                                   for p in ("", "_pixels")}
    tally = NonFiniteTally("temporal")

    def score(cut, keep: list[bool], suffix: str) -> None:
        with _autocast(cfg, device):
            enc = model.video_encoder(cut.video.to(device), cut.frame_mask.to(device))
        features = enc.per_time_features().float().cpu()
        pixels = cut.video.reshape(cut.video.shape[0], steps, -1)
        pixels = pixels - pixels.mean(1, keepdim=True)  # what changes over time, not the clip's overall look
        for i in (i for i, k in enumerate(keep) if k):
            garbage = tally.add(features[i])  # features that are not finite cannot tell the parts apart
            acc[suffix].append(0.0 if garbage else permutation_accuracy(two_means(features[i]), ~cut.is_a[i]))
            acc[suffix + "_pixels"].append(permutation_accuracy(two_means(pixels[i]), ~cut.is_a[i]))

    for batch in clips.batches() if replay else eval_loader(records, cfg, video_root, tokenizer):
        if batch.get("video") is None or batch["video"].shape[0] < 2:
            continue
        b = batch["video"].shape[0]
        score(cut_and_paste(batch["video"], steps, frame_mask=batch["frame_mask"], generator=generator), [True] * b, "")
        # Harder variant: the pasted clip has the same background, so only the objects change.
        backgrounds = [records[i].meta.get("background") for i in batch["record_index"].tolist()]
        partner, keep = [], []
        for i, bg in enumerate(backgrounds):
            same = [j for j, other in enumerate(backgrounds) if j != i and bg is not None and other == bg]
            partner.append(int(rng.choice(same)) if same else (i + 1) % b)
            keep.append(bool(same))
        cut = cut_and_paste(batch["video"], steps, frame_mask=batch["frame_mask"], generator=same_generator,
                            partner=torch.tensor(partner))
        score(cut, keep, "_same_background")
        if batch["video"].shape[1] // steps >= 2:  # a step of one frame has no direction to reverse
            score(reverse_steps(batch["video"], steps, frame_mask=batch["frame_mask"], generator=reversed_generator),
                  [True] * b, "_reversed_steps")
    if not acc[""]:
        return {}
    out = {f"temporal/scene_change_acc{k}" if not k.endswith("pixels") else f"temporal/scene_change{k}":
           100.0 * float(np.mean(v)) for k, v in acc.items() if v}
    out["temporal/scene_change_chance"] = 100.0 * random_label_chance(steps)
    return tally.report(out)


def evaluate_all(model, cfg: RunConfig, tokenizer, device=torch.device("cpu"),
                 data_root: str | Path | None = None) -> dict[str, float]:
    """Both S-ViLM evaluations; works for any model (without groups only the best-patch pointing)."""
    return {**evaluate_grounding(model, cfg, tokenizer, device, data_root),
            **evaluate_scene_change(model, cfg, tokenizer, device, data_root)}


def main(argv: list[str] | None = None) -> int:
    """`python -m structvl.tasks.grounding RUN_DIR... [--data DIR] [--out FILE]`: evaluate saved runs (e.g.
    the contrastive baseline's) and print/merge mean +- std over them."""
    parser = argparse.ArgumentParser(prog="python -m structvl.tasks.grounding")
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--data", default=None, help="corpus directory (default: the run's data.root)")
    parser.add_argument("--out", default=None, help="write {run: metrics, 'mean'/'std': ...} here as JSON")
    args = parser.parse_args(argv)
    per_run = {}
    for run in args.runs:
        model, cfg, _ = load_run_model(run)
        per_run[run] = evaluate_all(model, cfg, build_tokenizer(cfg.model.text), data_root=args.data)
        print(run, json.dumps(per_run[run], indent=1))
    keys = sorted(set.intersection(*(set(m) for m in per_run.values())))
    summary = {"mean": {k: float(np.mean([m[k] for m in per_run.values()])) for k in keys},
               "std": {k: float(np.std([m[k] for m in per_run.values()])) for k in keys}, "runs": per_run}
    for k in keys:
        print(f"{k:<36}{summary['mean'][k]:8.2f} ± {summary['std'][k]:.2f}")
    if args.out:
        Path(args.out).write_text(json.dumps(summary, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
