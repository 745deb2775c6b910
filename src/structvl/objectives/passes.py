"""One encoder call per modality per step: the objectives' extra inputs encoded together with the batch's own.

Every objective that needs more than the batch's own encodings (CLOP's swapped captions, S-ViLM's noun phrases and
cut-and-paste clips, Clover's masked clips and captions) may say so before the shared forward, through an optional
method `requests(batch, model) -> {key: TextInput | VideoInput}`. `PretrainingModule` then encodes

* every video input with the batch's clips in one video-encoder call (the patch embedding of the batch's clips is
  computed once, and inputs derived from it - Clover's masked clips - start from it), and
* every text input with the batch's captions, sorted by length into a few buckets, each padded only to its own
  longest sequence (`length_buckets`): the encoders see the same tokens with less padding and fewer calls,

and hands each objective the result under its key in `PretrainOutputs.extra` (an `Encoded`: the input, with its
`meta`, and its embedding). An objective whose key is absent (called outside `PretrainingModule`, or with
`batch_passes=False`) encodes the input itself, as before.

The maths is unchanged: the video encoder, the text encoder and the fusion encoder have no operation that mixes the
samples of a batch (no batch norm), so a sample's output does not depend on what else is in its call, and a padded
position is masked out of every attention, so it does not depend on how far its sequence is padded either. What
changes is the floating-point rounding of differently shaped matrix products, and the order in which dropout draws
its random numbers (each element's draw has the same distribution). tests/test_objective_batching.py checks each
loss against the unbatched computation with dropout off.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields

import torch
import torch.nn.functional as F

from structvl.models.text_encoder import TextEncoderOutput
from structvl.models.video_encoder import VideoEncoderOutput
from structvl.models.video_text import TextEmbedding, VideoEmbedding

# What one more text-encoder call costs, in padded tokens' worth of work (its Python and dispatch overhead, the
# per-call casts): `length_buckets` opens a new bucket only where the padding it saves is worth more than that.
CALL_COST_TOKENS = 96


@dataclass
class TextInput:
    """Captions to encode: input_ids / attention_mask (n, L), padded as the tokenizer pads them.

    grad: whether the encoding keeps its graph (False: encoded under no_grad, in a separate call).
    keep_tokens: whether the caller reads the token states (they are re-padded to L); otherwise only the pooled
        state and the embedding are returned, and `tokens` is None.
    meta: whatever the requesting objective needs back with the result (e.g. which caption each row belongs to).
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    grad: bool = True
    keep_tokens: bool = False
    meta: object = None


@dataclass
class VideoInput:
    """Clips to encode with the batch's: either pixels `video` (n, T, C, H, W), or `from_main`, a function of the
    batch's patch embeddings (B, T', N, D) (position embeddings included) that returns this input's."""

    frame_mask: torch.Tensor | None
    video: torch.Tensor | None = None
    from_main: Callable[[torch.Tensor], torch.Tensor] | None = None
    meta: object = None


@dataclass
class Encoded:
    """An extra input and its encoding (a TextEmbedding or VideoEmbedding)."""

    input: TextInput | VideoInput
    output: TextEmbedding | VideoEmbedding = field(repr=False)


# ----------------------------------------------------------------------------- text
def length_buckets(lengths: list[int], call_cost: int = CALL_COST_TOKENS) -> list[list[int]]:
    """Rows grouped into buckets of similar length: sorted by length, split where it minimises the padded tokens
    (rows x the bucket's longest) plus `call_cost` per bucket (dynamic programming over the sorted order).
    Returns row indices per bucket, shortest bucket first."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    sorted_lengths = [lengths[i] for i in order]
    n = len(order)
    best = [0.0] + [float("inf")] * n  # best[j]: cost of rows order[:j]
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        longest = sorted_lengths[j - 1]
        for i in range(j):
            cost = best[i] + (j - i) * longest + call_cost
            if cost < best[j]:
                best[j], cut[j] = cost, i
    buckets, j = [], n
    while j > 0:
        buckets.append(order[cut[j]:j])
        j = cut[j]
    return buckets[::-1]


def _encode_rows(model, ids: torch.Tensor, mask: torch.Tensor, lengths: list[int],
                 keep_tokens: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """embed (n, E), pooled (n, D) and, with keep_tokens, token states (n, L, D) of the rows, bucket by bucket."""
    n, length = ids.shape
    embeds, pooled, tokens, rows = [], [], [], []
    for bucket in length_buckets(lengths):
        index = torch.tensor(bucket, device=ids.device)
        longest = max(lengths[i] for i in bucket)
        out = model.encode_text(ids[index, :longest], mask[index, :longest])
        embeds.append(out.embed)
        pooled.append(out.encoder.pooled)
        if keep_tokens:
            tokens.append(F.pad(out.encoder.tokens, (0, 0, 0, length - longest)))
        rows.append(index)
    inverse = torch.empty(n, dtype=torch.long, device=ids.device)
    inverse[torch.cat(rows)] = torch.arange(n, device=ids.device)
    return (torch.cat(embeds)[inverse], torch.cat(pooled)[inverse],
            torch.cat(tokens)[inverse] if keep_tokens else None)


def encode_texts(model, inputs: list[TextInput]) -> list[TextEmbedding]:
    """Each input's TextEmbedding, from as few text-encoder calls as `length_buckets` finds worthwhile; inputs
    with grad=False are encoded under no_grad, apart. An input with keep_tokens gets its token states re-padded
    to its own length (zeros at padded positions, which its attention mask excludes)."""
    results: list[TextEmbedding | None] = [None] * len(inputs)
    for grad in (True, False):
        chosen = [i for i, t in enumerate(inputs) if t.grad == grad and t.input_ids.shape[0] > 0]
        if not chosen:
            continue
        length = max(inputs[i].input_ids.shape[1] for i in chosen)
        ids = torch.cat([F.pad(inputs[i].input_ids, (0, length - inputs[i].input_ids.shape[1])) for i in chosen])
        mask = torch.cat([F.pad(inputs[i].attention_mask, (0, length - inputs[i].attention_mask.shape[1]))
                          for i in chosen])
        keep_tokens = any(inputs[i].keep_tokens for i in chosen)
        with torch.set_grad_enabled(torch.is_grad_enabled() and grad):
            embed, pooled, tokens = _encode_rows(model, ids, mask, mask.sum(1).tolist(), keep_tokens)
        start = 0
        for i in chosen:
            t = inputs[i]
            n, own = t.input_ids.shape
            rows = slice(start, start + n)
            states = tokens[rows, :own] if t.keep_tokens else None
            results[i] = TextEmbedding(embed[rows], TextEncoderOutput(pooled[rows], states, t.attention_mask))
            start += n
    for i, t in enumerate(inputs):  # no rows: an empty encoding of the right widths
        if results[i] is None:
            results[i] = _empty_text(model, t)
    return results


def _empty_text(model, t: TextInput) -> TextEmbedding:
    ref = next(model.parameters())
    embed = ref.new_zeros(0, model.cfg.embed_dim)
    width = model.text_encoder.width
    states = ref.new_zeros(0, t.input_ids.shape[1], width) if t.keep_tokens else None
    return TextEmbedding(embed, TextEncoderOutput(ref.new_zeros(0, width), states, t.attention_mask))


# ----------------------------------------------------------------------------- video
def take_rows(out, rows: slice):
    """A dataclass of per-row tensors (an encoder or fusion output, a cut-and-paste batch) cut to `rows`; fields
    that are None stay None."""
    return type(out)(**{f.name: None if getattr(out, f.name) is None else getattr(out, f.name)[rows]
                        for f in fields(out)})


def encode_videos(model, video: torch.Tensor, frame_mask: torch.Tensor | None,
                  inputs: list[VideoInput]) -> tuple[VideoEmbedding, list[VideoEmbedding]]:
    """The batch's clips (B, T, C, H, W) and every extra input through one video-encoder call: (the batch's
    VideoEmbedding, one per input). Pixel inputs share one patch-embedding call with the batch's clips."""
    encoder = model.video_encoder
    pixels = [video] + [v.video for v in inputs if v.from_main is None]
    embedded = encoder.embed(torch.cat(pixels) if len(pixels) > 1 else video)
    b = video.shape[0]
    main = embedded[:b]
    parts, masks, start = [main], [frame_mask], b
    for v in inputs:
        if v.from_main is None:
            n = v.video.shape[0]
            parts.append(embedded[start:start + n])
            start += n
        else:
            parts.append(v.from_main(main))
        masks.append(v.frame_mask)
    sizes = [p.shape[0] for p in parts]
    given = [m for m in masks if m is not None]
    mask = None if not given else torch.cat(
        [m if m is not None else torch.ones(n, given[0].shape[1], dtype=given[0].dtype, device=given[0].device)
         for m, n in zip(masks, sizes)])
    encoded = model.encode_video(None, mask, patch_embeddings=torch.cat(parts))
    results, start = [], 0
    for n in sizes:
        rows = slice(start, start + n)
        results.append(VideoEmbedding(encoded.embed[rows], take_rows(encoded.encoder, rows)))
        start += n
    return results[0], results[1:]
