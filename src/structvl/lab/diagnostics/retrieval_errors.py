"""What a run's text->video retrieval misses: each wrong top-1 clip against the caption's own, by what differs.

    python -m structvl.lab.diagnostics.retrieval_errors CORPUS RUN [RUN ...]

The structured corpus's test clips record their objects (`test.jsonl`, `meta.objects`: shape, colour, size and
action of each). For every caption whose own clip is not ranked first, the clip ranked first is compared with
it object by object:
    same content       the same objects doing the same things: the caption fits both (no model can win these)
    action only        the same objects (shape, colour, size) with different actions: only motion tells them apart
    size / colour / shape / count   what else differs (a miss can count under several), actions aside
The "action only" share of the misses is what an encoder that saw motion could still win; the rest needs a
better eye for the objects themselves. A miss is decided as `retrieval/t2v/R@1` decides it (`ranks_blockwise`:
a tie counts against the caption); the clip it is compared with is the best-scored other clip.
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import torch

from structvl.data.formats import read_annotations
from structvl.engine.checkpoint import load_run_model
from structvl.models.text_encoder import build_tokenizer
from structvl.tasks.eval_data import eval_annotations, eval_loader
from structvl.tasks.retrieval import embed_texts, embed_videos, ranks_blockwise

APPEARANCE = ("shape", "colour", "size")


def miss_kinds(own: list[dict], retrieved: list[dict]) -> set[str]:
    """How the retrieved clip's objects differ from the caption's own clip's (see the module docstring)."""
    def content(objects, keys):
        return sorted(tuple(o[k] for k in keys) for o in objects)

    if content(own, APPEARANCE + ("action",)) == content(retrieved, APPEARANCE + ("action",)):
        return {"same content"}
    if len(own) != len(retrieved):
        return {"count"}
    if content(own, APPEARANCE) == content(retrieved, APPEARANCE):
        return {"action only"}
    return {key for key in APPEARANCE if content(own, (key,)) != content(retrieved, (key,))} or {"binding"}


def best_other_clip(text_embed: torch.Tensor, video_embed: torch.Tensor, own: list[int],
                    block_size: int) -> list[int]:
    """For each caption, the best-scored clip other than its own (block by block, like `ranks_blockwise`)."""
    best = []
    for start in range(0, len(text_embed), block_size):
        sims = text_embed[start:start + block_size].float() @ video_embed.float().t()
        rows = torch.arange(len(sims))
        sims[rows, torch.tensor(own[start:start + block_size])] = float("-inf")
        best.extend(sims.argmax(dim=1).tolist())
    return best


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__)
        return 2
    corpus = Path(argv[0])
    objects = {r.video_id: r.meta["objects"] for r in read_annotations("jsonl", corpus / "test.jsonl")}
    for run in argv[1:]:
        model, cfg, _ = load_run_model(run)
        records = read_annotations(cfg.data.format, corpus / eval_annotations(cfg))
        tokenizer = build_tokenizer(cfg.model.text)
        video_embed, kept = embed_videos(model.eval(), eval_loader(records, cfg, corpus, tokenizer), torch.device("cpu"))
        kept_records = [records[i] for i in kept]
        own = [position for position, r in enumerate(kept_records) for _ in r.captions]
        text_embed = embed_texts(model, tokenizer, [c for r in kept_records for c in r.captions], torch.device("cpu"))
        ranks = ranks_blockwise(text_embed, video_embed, [[v] for v in own], cfg.eval.block_size)
        best = best_other_clip(text_embed, video_embed, own, cfg.eval.block_size)
        kinds, shape_swaps, misses = Counter(), Counter(), 0
        for own_clip, best_clip, rank in zip(own, best, ranks):
            if rank == 1:
                continue
            misses += 1
            own_objects, best_objects = objects[kept_records[own_clip].video_id], objects[kept_records[best_clip].video_id]
            kind = miss_kinds(own_objects, best_objects)
            kinds.update(kind)
            if "shape" in kind:  # same object count, different shapes: which were taken for which
                own_shapes, best_shapes = Counter(o["shape"] for o in own_objects), Counter(o["shape"] for o in best_objects)
                shape_swaps[" / ".join(sorted((own_shapes - best_shapes).elements())) + " -> "
                            + " / ".join(sorted((best_shapes - own_shapes).elements()))] += 1
        total = len(own)
        print(f"{run}: t2v R@1 {100 * (total - misses) / total:.1f} ({total} captions, {misses} misses)")
        for name in ("same content", "action only", "count", "shape", "colour", "size", "binding"):
            print(f"  {name:13s} {kinds[name]:4d}  {100 * kinds[name] / max(misses, 1):5.1f}% of misses"
                  f"  {100 * kinds[name] / total:5.1f}% of captions")
        print("  shapes taken for others (caption's -> retrieved's): "
              + ", ".join(f"{swap} {n}" for swap, n in shape_swaps.most_common(6)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
