"""Text<->video retrieval: embeddings computed once, ranks computed block by block.

A gallery of N videos and M captions never materialises the M x N similarity matrix: queries are scored
`block_size` at a time and only each query's rank is kept. Several captions per video are handled both
ways (text->video: the caption's own video is the target; video->text: the best-ranked of its captions
counts, the usual MSR-VTT convention). Ranks are 1-based; ties count against the query (a positive ranked
equal to a negative is not "first"), so a constant model cannot score above chance. A non-finite similarity
is the worst possible: a positive scored NaN is no candidate for the query's best, a negative scored NaN ranks
above the positive, so a model that outputs NaN ranks every query last (and the metrics say how many
similarities were not finite, see `structvl.runtime.nonfinite`).
"""

from __future__ import annotations

import numpy as np
import torch

from structvl.engine.trainer import move_to
from structvl.runtime.nonfinite import NonFiniteTally
from structvl.runtime.precision import autocast

RECALL_KS = (1, 5, 10)


def ranks_blockwise(queries: torch.Tensor, gallery: torch.Tensor, positives: list[list[int]],
                    block_size: int = 1024, tally: NonFiniteTally | None = None) -> np.ndarray:
    """1-based rank of the best-ranked positive gallery item for every query (memory: block x N).
    tally: counts the non-finite similarities seen (each ranked as the worst, see the module docstring)."""
    ranks = np.empty(len(queries), dtype=np.int64)
    for start in range(0, len(queries), block_size):
        stop = min(start + block_size, len(queries))
        sims = queries[start:stop].float() @ gallery.float().t()  # (b, N): the only matrix held
        is_pos = torch.zeros_like(sims, dtype=torch.bool)
        for row, q in enumerate(range(start, stop)):
            is_pos[row, positives[q]] = True
        ranks[start:stop] = pessimistic_ranks(sims, is_pos, tally).numpy()
    return ranks


def pessimistic_ranks(sims: torch.Tensor, is_pos: torch.Tensor, tally: NonFiniteTally | None = None) -> torch.Tensor:
    """(b, N) similarities and positive masks -> each row's 1-based rank of its best finite positive; every
    negative scored >= it or not finite ranks above it (a row without a finite positive ranks last)."""
    bad = ~torch.isfinite(sims)
    if tally is not None:
        tally.nonfinite += int(bad.sum())
        tally.seen += sims.numel()
    best_pos = sims.masked_fill(~is_pos | bad, float("-inf")).max(dim=1).values
    return 1 + (((sims >= best_pos[:, None]) | bad) & ~is_pos).sum(dim=1)


def metrics_from_ranks(ranks: np.ndarray, prefix: str) -> dict[str, float]:
    out = {f"{prefix}/R@{k}": float(100.0 * np.mean(ranks <= k)) for k in RECALL_KS}
    out[f"{prefix}/MdR"] = float(np.median(ranks))
    out[f"{prefix}/MnR"] = float(np.mean(ranks))
    return out


def chance_metrics(num_videos: int, prefix: str = "retrieval/chance") -> dict[str, float]:
    """Expected metrics of a random ranking over a gallery of `num_videos` (one positive per query)."""
    out = {f"{prefix}/R@{k}": 100.0 * min(k, num_videos) / num_videos for k in RECALL_KS}
    out[f"{prefix}/MdR"] = (num_videos + 1) / 2
    out[f"{prefix}/MnR"] = (num_videos + 1) / 2
    return out


def retrieval_metrics(video_embed: torch.Tensor, text_embed: torch.Tensor, text_to_video: list[int],
                      block_size: int = 1024, prefix: str = "retrieval") -> dict[str, float]:
    """video_embed (N, E), text_embed (M, E) L2-normalised; text_to_video[m] = index of caption m's video."""
    video_to_texts: list[list[int]] = [[] for _ in range(len(video_embed))]
    for m, v in enumerate(text_to_video):
        video_to_texts[v].append(m)
    if any(not texts for texts in video_to_texts):
        raise ValueError("every gallery video needs at least one caption for video->text retrieval")
    tally = NonFiniteTally(prefix)
    t2v = ranks_blockwise(text_embed, video_embed, [[v] for v in text_to_video], block_size, tally)
    v2t = ranks_blockwise(video_embed, text_embed, video_to_texts, block_size, tally)
    out = {**metrics_from_ranks(t2v, f"{prefix}/t2v"), **metrics_from_ranks(v2t, f"{prefix}/v2t")}
    tally.report(out)
    out.update(chance_metrics(len(video_embed), f"{prefix}/chance"))
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
