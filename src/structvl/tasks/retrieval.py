"""Text<->video retrieval: embeddings computed once, ranks computed block by block.

A gallery of N videos and M captions never materialises the M x N similarity matrix: queries are scored
`block_size` at a time and only each query's rank is kept. Text->video: each caption is a query and its own video
the one target among the N videos. Video->text with several captions per video follows one of two rules
(`eval.v2t_multi_caption`):

* `video_max` (the default; CLIP4Clip's multi-sentence rule, `tensor_video_to_text_sim` then `compute_metrics`):
  a video query scores every gallery video by the best of that video's captions, and the query's own video is
  ranked among the N videos: one positive among N, the same chance levels as text->video.
* `caption_gallery` (the COCO rule): a video query is scored against all M captions, and its best-ranked caption
  counts. With c captions of its own among M, chance is the best of c random positions (`chance_metrics`).

Ranks are 1-based and ties are pessimistic: a positive scored equal to a negative ranks below it (is not "first"),
so a constant model cannot score above chance. A non-finite similarity is the worst possible: a positive scored
NaN is no candidate for the query's best, a negative scored NaN ranks above the positive, so a model that outputs
NaN ranks every query last (and the metrics say how many similarities were not finite, see
`structvl.runtime.nonfinite`). Under `video_max` a gallery video with a non-finite caption score ranks above the
positive, and the positive video scores the best of its finite captions.
"""

from __future__ import annotations

import numpy as np
import torch

from structvl.engine.trainer import move_to
from structvl.runtime.nonfinite import NonFiniteTally
from structvl.runtime.precision import autocast

RECALL_KS = (1, 5, 10)
V2T_RULES = ("video_max", "caption_gallery")  # eval.v2t_multi_caption, see the module docstring


def ranks_blockwise(queries: torch.Tensor, gallery: torch.Tensor, positives: list[list[int]],
                    block_size: int = 1024, tally: NonFiniteTally | None = None,
                    gallery_owner: torch.Tensor | None = None) -> np.ndarray:
    """1-based rank of the best-ranked positive gallery item for every query (memory: block x N).
    tally: counts the non-finite similarities seen (each ranked as the worst, see the module docstring).
    gallery_owner: (N,) group of each gallery item (a caption's video); each group then scores the max over its
    items and the positives and ranks are over groups (`video_max`)."""
    ranks = np.empty(len(queries), dtype=np.int64)
    groups = None if gallery_owner is None else int(gallery_owner.max()) + 1
    for start in range(0, len(queries), block_size):
        stop = min(start + block_size, len(queries))
        sims = queries[start:stop].float() @ gallery.float().t()  # (b, N): the only matrix held
        if groups is not None:
            sims, bad = max_per_group(sims, gallery_owner, groups, tally)
        else:
            sims, bad = finite_or_worst(sims, tally)
        is_pos = torch.zeros_like(sims, dtype=torch.bool)
        for row, q in enumerate(range(start, stop)):
            is_pos[row, positives[q]] = True
        ranks[start:stop] = ranks_with_bad(sims, is_pos, bad).numpy()
    return ranks


def finite_or_worst(sims: torch.Tensor, tally: NonFiniteTally | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(similarities with each non-finite one set to -inf, the mask of those), counted in `tally`."""
    bad = ~torch.isfinite(sims)
    if tally is not None:
        tally.nonfinite += int(bad.sum())
        tally.seen += sims.numel()
    return sims.masked_fill(bad, float("-inf")), bad


def max_per_group(sims: torch.Tensor, owner: torch.Tensor, groups: int,
                  tally: NonFiniteTally | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(b, M) item similarities -> (b, groups): each group's best finite item (-inf if none) and whether any of
    its items was non-finite (the block's (b, groups) matrix is all that is added)."""
    sims, bad = finite_or_worst(sims, tally)
    index = owner.to(sims.device)[None].expand_as(sims)
    best = sims.new_full((len(sims), groups), float("-inf")).scatter_reduce(1, index, sims, "amax")
    any_bad = torch.zeros(len(sims), groups, dtype=torch.bool, device=sims.device)
    any_bad = any_bad.scatter_reduce(1, index, bad, "amax")
    return best, any_bad


def ranks_with_bad(sims: torch.Tensor, is_pos: torch.Tensor, bad: torch.Tensor) -> torch.Tensor:
    """(b, N) similarities (non-finite already -inf), positive masks, non-finite masks -> each row's 1-based rank
    of its best positive; a negative scored >= it (a tie counts against the query) or non-finite ranks above it."""
    best_pos = sims.masked_fill(~is_pos, float("-inf")).max(dim=1).values
    return 1 + (((sims >= best_pos[:, None]) | bad) & ~is_pos).sum(dim=1)


def pessimistic_ranks(sims: torch.Tensor, is_pos: torch.Tensor, tally: NonFiniteTally | None = None) -> torch.Tensor:
    """(b, N) similarities and positive masks -> each row's 1-based rank of its best finite positive; every
    negative scored >= it or not finite ranks above it (a row without a finite positive ranks last)."""
    clean, bad = finite_or_worst(sims, tally)
    return ranks_with_bad(clean, is_pos, bad)


def metrics_from_ranks(ranks: np.ndarray, prefix: str) -> dict[str, float]:
    out = {f"{prefix}/R@{k}": float(100.0 * np.mean(ranks <= k)) for k in RECALL_KS}
    out[f"{prefix}/MdR"] = float(np.median(ranks))
    out[f"{prefix}/MnR"] = float(np.mean(ranks))
    return out


def chance_metrics(gallery_size: int, prefix: str = "retrieval/chance",
                   positives: list[int] | None = None) -> dict[str, float]:
    """Expected metrics of a random ranking over a gallery of `gallery_size` items. positives: how many
    positives each query has (default one each); a query's rank is that of its best positive, so with c of
    them P(rank > r) = C(N - c, r) / C(N, r). R@K and MnR are the means over queries of each query's expected
    value; MdR is the median of the queries' pooled rank distribution (the midpoint where it is exactly half, as
    np.median gives for a large sample: (N + 1) / 2 for one positive)."""
    n = gallery_size
    counts = np.bincount(np.asarray(positives if positives is not None else [1], dtype=np.int64))
    r = np.arange(n + 1, dtype=np.float64)
    survival = np.zeros(n + 1)  # pooled P(rank > r), r = 0..N
    for c, queries in enumerate(counts):
        if queries and c:
            s = np.ones(n + 1)
            for i in range(c):  # P(all c positives land after position r)
                s *= np.clip((n - r - i) / (n - i), 0.0, None)
            survival += queries * s
    survival /= counts[1:].sum()
    out = {f"{prefix}/R@{k}": 100.0 * (1.0 - survival[min(k, n)]) for k in RECALL_KS}
    cdf = 1.0 - survival
    first = int(np.argmax(cdf >= 0.5 - 1e-12))
    out[f"{prefix}/MdR"] = first + 0.5 if abs(cdf[first] - 0.5) < 1e-12 else float(first)
    out[f"{prefix}/MnR"] = float(survival[:n].sum())  # E[rank] = sum over r >= 0 of P(rank > r)
    return out


def retrieval_metrics(video_embed: torch.Tensor, text_embed: torch.Tensor, text_to_video: list[int],
                      block_size: int = 1024, prefix: str = "retrieval",
                      v2t_multi_caption: str = "video_max") -> dict[str, float]:
    """video_embed (N, E), text_embed (M, E) L2-normalised; text_to_video[m] = index of caption m's video.
    v2t_multi_caption: the video->text rule (module docstring). `{prefix}/chance/*` is text->video's chance,
    `{prefix}/chance_v2t/*` video->text's under the chosen rule."""
    if v2t_multi_caption not in V2T_RULES:
        raise ValueError(f"v2t_multi_caption must be one of {V2T_RULES}, not {v2t_multi_caption!r}")
    video_to_texts: list[list[int]] = [[] for _ in range(len(video_embed))]
    for m, v in enumerate(text_to_video):
        video_to_texts[v].append(m)
    if any(not texts for texts in video_to_texts):
        raise ValueError("every gallery video needs at least one caption for video->text retrieval")
    tally = NonFiniteTally(prefix)
    t2v = ranks_blockwise(text_embed, video_embed, [[v] for v in text_to_video], block_size, tally)
    if v2t_multi_caption == "video_max":
        v2t = ranks_blockwise(video_embed, text_embed, [[v] for v in range(len(video_embed))], block_size, tally,
                              gallery_owner=torch.as_tensor(text_to_video, dtype=torch.long))
        v2t_chance = chance_metrics(len(video_embed), f"{prefix}/chance_v2t")
    else:
        v2t = ranks_blockwise(video_embed, text_embed, video_to_texts, block_size, tally)
        v2t_chance = chance_metrics(len(text_embed), f"{prefix}/chance_v2t", [len(t) for t in video_to_texts])
    out = {**metrics_from_ranks(t2v, f"{prefix}/t2v"), **metrics_from_ranks(v2t, f"{prefix}/v2t")}
    tally.report(out)
    out.update(chance_metrics(len(video_embed), f"{prefix}/chance"))
    out.update(v2t_chance)
    out[f"{prefix}/num_videos"] = float(len(video_embed))
    out[f"{prefix}/num_captions"] = float(len(text_embed))
    return out


# What each stage of the video path reads from the model's video output (see `video_stage_features`).
VIDEO_STAGES = {
    "tokens": lambda out: out.encoder.tokens.mean(dim=(1, 2)),  # mean final patch state
    "pooled": lambda out: out.encoder.pooled,  # the encoder's clip vector, before the projection
    "embed": lambda out: out.embed,  # the shared-space embedding retrieval scores
}


@torch.no_grad()
def video_stage_features(model, loader, device: torch.device, stages=("embed",), autocast_dtype=None,
                         transform=None) -> tuple[dict[str, torch.Tensor], list[int]]:
    """{stage: (clips, D)} for the named VIDEO_STAGES, from one forward pass per batch; also the clips' record
    indices (skipped corrupt videos are absent, and the caller must drop their captions). transform: optional
    function of each batch's (B, T, C, H, W) video and (B, T) frame mask, returning the video to encode (a
    control such as a frozen frame)."""
    model.eval()
    feats, record_ids = {s: [] for s in stages}, []
    for batch in loader:
        if batch.get("video") is None:
            continue
        batch = move_to(batch, device)
        video = batch["video"] if transform is None else transform(batch["video"], batch["frame_mask"])
        with autocast(device, autocast_dtype):
            out = model.encode_video(video, batch["frame_mask"])
            for stage in stages:
                feats[stage].append(VIDEO_STAGES[stage](out).float().cpu())
        record_ids.extend(batch["record_index"].tolist())
    return {s: torch.cat(v) for s, v in feats.items()}, record_ids


def embed_videos(model, loader, device: torch.device, autocast_dtype=None,
                 transform=None, pooled: bool = False) -> tuple[torch.Tensor, list[int]]:
    """Video embeddings (or, with pooled, the encoder's clip vectors) for every item the loader yields, and
    their record indices; see `video_stage_features`."""
    stage = "pooled" if pooled else "embed"
    feats, record_ids = video_stage_features(model, loader, device, (stage,), autocast_dtype, transform)
    return feats[stage], record_ids


def length_sorted_batches(tokens: dict[str, torch.Tensor], batch_size: int):
    """(rows, tokens of those rows) `batch_size` rows at a time in order of length, each batch cut to its own
    longest sequence: the same tokens with the least padding. A padded position is masked out of every attention,
    so no row's encoding depends on how far it is padded; a caller puts the results back with `rows`."""
    lengths = tokens["attention_mask"].sum(1)
    order = torch.argsort(lengths, stable=True)
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        longest = int(lengths[rows].max())
        yield rows, {k: v[rows, :longest] for k, v in tokens.items()}


@torch.no_grad()
def embed_texts(model, tokenizer, texts: list[str], device: torch.device, batch_size: int = 256,
                autocast_dtype=None) -> torch.Tensor:
    """(M, E) embeddings of `texts`, in their order; encoded in batches of similar length (less padding)."""
    model.eval()
    if not texts:
        return torch.empty(0)
    out = None
    for rows, tok in length_sorted_batches(tokenizer(texts), batch_size):
        tok = move_to(tok, device)
        with autocast(device, autocast_dtype):
            embed = model.encode_text(tok["input_ids"], tok["attention_mask"]).embed.float().cpu()
        out = embed.new_empty(len(texts), embed.shape[1]) if out is None else out
        out[rows] = embed
    return out
