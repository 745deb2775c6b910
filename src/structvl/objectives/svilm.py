"""S-ViLM's two structure objectives: inter-clip spatial grounding and intra-clip temporal grouping.

[reconstruction] The abstract (docs/abstracts/001_svilm.txt) names the two objectives; how they work comes from secondary
sources of medium confidence (docs/methods-spec.md, "S-ViLM"). Every choice below is a config key
(`svilm:` section, `SvilmConfig`); the weights alpha and beta are `objectives.svilm_grounding` and
`objectives.svilm_temporal`, so L = L_contrast + alpha L_g + beta L_t.

`svilm_grounding` (L_g). Each caption's noun phrases (spaCy noun chunks from the batch's knowledge, at most
`max_phrases`) are embedded by the text encoder - the phrase encoded on its own ("alone", the default) or
the mean of the caption's token states over the phrase's word pieces ("span") - and projected into the
shared space. "span" states are contextualised by the whole caption, so a phrase scores best against the
group that carries the whole clip (the large background group) and grounding learns no locality (pointing
accuracy, tasks/grounding.py, for both: docs/findings.md, S-ViLM). The
score of phrase n against clip j is the best match among j's groups, s(n, j) = max_g cos(n, z_jg) / tau.
InfoNCE over the clips of the all-gathered batch, positive = the phrase's own clip: the other clips' groups
are the negatives ("inter-clip"). With `grounding_symmetric`, also clip -> phrase: each clip must score
each of its own phrases above every other caption's phrases.

`svilm_temporal` (L_t). Cut-and-paste: every clip A of the batch gets a random contiguous interval of time
steps replaced by the same time steps of another clip B of the batch; the mask says which steps are A.
The cut clips go through the video encoder once more; per-time-step features (mean patch state of each
step) are L2-normalised, the A-centroid and B-centroid are the normalised means of each part, and every
step is classified to its own part's centroid (cross-entropy over the two cosines / tau). The captions
meet their *uncut* clip in the shared contrastive loss; `temporal_contrastive: a_part` also contrasts the
cut clip's A part with A's caption. Intervals are whole encoder time steps (tubelets), so no tubelet mixes
two clips.

[extension] `paste_source: reversed_steps` pastes the clip's own steps played backwards instead: on the
demo corpus another clip differs in its objects and background, so the parts are told apart by appearance
(training accuracy 1.0 within a few steps) and the loss never asks the encoder to see motion; a step played
backwards looks the same and differs only in the direction of its motion. `temporal_centroids:
leave_one_out` keeps each step out of its own part's centroid: with the step inside it, making every step
unlike every other meets the loss without any scenes (see `temporal_grouping_loss`).

[extension] `temporal_clips: N` cuts only the first N clips of each rank's batch (their partners still come
from the whole batch): the cut clips' extra pass through the video encoder is what makes L_t cost as much as
the baseline's video pass, and it shrinks with N (docs/findings.md, "Lean recipes"). 0, every clip, is the
reading above.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from structvl.config import ConfigError
from structvl.data.text import TokenCache, char_span_to_token_span
from structvl.objectives.contrastive import info_nce
from structvl.objectives.passes import TextInput, VideoInput, take_rows
from structvl.runtime.distributed import all_gather_no_grad, all_gather_with_grad, rank
from structvl.runtime.precision import full_precision


# ----------------------------------------------------------------------------- phrases
def embed_phrases(model, spans: list[list[tuple[int, int]]], max_phrases: int, mode: str, *,
                  token_states: torch.Tensor | None = None, offsets: list | None = None,
                  captions: list[str] | None = None, tokenizer=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Noun-phrase embeddings (B, P, E), L2-normalised, and their validity mask (B, P), P = max_phrases.

    spans: per caption, the phrases' character spans (start, end) in the caption (the first `max_phrases`
        are used). mode "span": mean of `token_states` (B, L, D), the caption's text-encoder states, over the
        word pieces `offsets` maps each span onto (a span truncated away is invalid); mode "alone": each
        phrase text (`captions[b][start:end]`) encoded on its own with `tokenizer`.
    """
    b, p = len(spans), max_phrases
    mask = torch.zeros(b, p, dtype=torch.bool)
    if mode == "span":
        weights = token_states.new_zeros(b, p, token_states.shape[1])
        for i, caption_spans in enumerate(spans):
            for j, (start, end) in enumerate(caption_spans[:p]):
                tokens = char_span_to_token_span(offsets[i], start, end)
                if tokens is not None:
                    weights[i, j, tokens[0]:tokens[1]] = 1.0 / (tokens[1] - tokens[0])
                    mask[i, j] = True
        pooled = torch.einsum("bpl,bld->bpd", weights, token_states)
        embed = F.normalize(model.text_proj(pooled), dim=-1)
    elif mode == "alone":
        texts, rows, cols = phrase_texts(spans, p, captions)
        device = next(model.parameters()).device
        phrase_embed = None
        if texts:
            tok = tokenizer(texts)
            phrase_embed = model.encode_text(tok["input_ids"].to(device), tok["attention_mask"].to(device)).embed
        embed, mask = place_phrases(model, phrase_embed, rows, cols, b, p)
    else:
        raise ValueError(f"unknown phrase encoding {mode!r}; expected 'span' or 'alone'")
    return embed, mask.to(embed.device)


def phrase_texts(spans: list[list[tuple[int, int]]], max_phrases: int,
                 captions: list[str]) -> tuple[list[str], list[int], list[int]]:
    """The texts of the first `max_phrases` phrases of each caption, and each text's (caption, slot) position."""
    texts, rows, cols = [], [], []
    for i, caption_spans in enumerate(spans):
        for j, (start, end) in enumerate(caption_spans[:max_phrases]):
            texts.append(captions[i][start:end])
            rows.append(i)
            cols.append(j)
    return texts, rows, cols


def place_phrases(model, phrase_embed: torch.Tensor | None, rows: list[int], cols: list[int], b: int,
                  p: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, P, E) phrase embeddings with row k of `phrase_embed` at (rows[k], cols[k]), zeros elsewhere, and the
    (B, P) mask of the filled slots."""
    device = next(model.parameters()).device
    mask = torch.zeros(b, p, dtype=torch.bool)
    mask[rows, cols] = True
    embed = torch.zeros(b, p, model.cfg.embed_dim, device=device)
    if rows:
        index = (torch.tensor(rows, device=device), torch.tensor(cols, device=device))
        embed = embed.to(phrase_embed.dtype).index_put(index, phrase_embed)
    return embed, mask.to(device)


# ----------------------------------------------------------------------------- spatial grounding
def grounding_loss(phrases: torch.Tensor, phrase_mask: torch.Tensor, groups: torch.Tensor, temperature: float,
                   symmetric: bool = True) -> dict[str, torch.Tensor]:
    """InfoNCE of noun phrases against clips scored by their best group.

    phrases (B, P, E) and groups (B, G, E): L2-normalised, row i of both from clip/caption i; phrase_mask
    (B, P). phrase -> clip: s(n, j) = max_g n . z_jg / temperature over the all-gathered clips j, target =
    the phrase's own clip. clip -> phrase (symmetric): for each own phrase n of clip i, -log of
    exp s(n, i) / (exp s(n, i) + sum over the other captions' phrases m of exp s(m, i)); the clip's other
    own phrases are left out of the denominator (they are positives too). Losses are means over phrases.
    """
    b, p = phrase_mask.shape
    zero = groups.sum() * 0.0  # keeps the graph (and DDP's parameter bookkeeping) when nothing is valid
    if not bool(phrase_mask.any()):
        return {"loss": zero, "p2v": zero.detach(), "accuracy": zero.detach()}
    all_groups = all_gather_with_grad(groups)
    own = torch.arange(b, device=groups.device) + rank() * b
    with full_precision(groups.device.type):  # fp32 logits (runtime/precision.py says why); (B, P, B_all)
        scores = torch.einsum("bpe,cge->bpcg", phrases.float(), all_groups.float()).amax(-1) / temperature
    targets = own[:, None].expand(b, p)[phrase_mask]
    p2v = F.cross_entropy(scores[phrase_mask], targets)
    out = {"loss": p2v, "p2v": p2v.detach(),
           "accuracy": (scores[phrase_mask].argmax(-1) == targets).float().mean().detach()}
    if symmetric:
        all_phrases = all_gather_with_grad(phrases)  # (B_all, P, E)
        all_mask = all_gather_no_grad(phrase_mask)
        with full_precision(groups.device.type):  # (B, B_all, P)
            rev = torch.einsum("cpe,bge->bcpg", all_phrases.float(), groups.float()).amax(-1) / temperature
        is_own = (torch.arange(all_mask.shape[0], device=groups.device)[None, :] == own[:, None])  # (B, B_all)
        negatives = rev.masked_fill(~all_mask[None] | is_own[:, :, None], float("-inf")).flatten(1)
        log_neg = torch.logsumexp(negatives, dim=1)  # (B,); -inf when there is no other phrase
        positives = rev[torch.arange(b), own]  # (B, P): clip i against its own phrases
        v2p = (torch.logaddexp(positives, log_neg[:, None]) - positives)[phrase_mask].mean()
        out["v2p"] = v2p.detach()
        out["loss"] = 0.5 * (p2v + v2p)
    return out


def noun_phrase_spans(knowledge) -> list[list[tuple[int, int]]]:
    """Per caption, the character spans of its spaCy noun phrases (CaptionKnowledge.noun_phrases)."""
    return [[(np_["start"], np_["end"]) for np_ in k.noun_phrases] for k in knowledge]


PHRASES = "svilm_grounding/phrases"  # request keys (objectives/passes.py)
CUT_CLIPS = "svilm_temporal/cut_clips"


class SpatialGroundingObjective(nn.Module):
    """L_g: noun phrases vs. the batch's clips, each clip scored by its best-matching group."""

    needs_knowledge = True

    def __init__(self, cfg, model, context):
        super().__init__()
        if not model.cfg.video.num_group_tokens:
            raise ConfigError("config key 'objectives.svilm_grounding': needs group tokens; set "
                              "model.video.num_group_tokens (e.g. 32)")
        self.cfg = cfg.svilm
        self.tokenizer = context.tokenizer
        # Each phrase is tokenised once and its ids kept: a caption's phrases recur every epoch.
        self.tokens = TokenCache(self.tokenizer) if self.tokenizer is not None else None

    def requests(self, batch: dict, model) -> dict:
        """The noun phrases ("alone"), to be encoded with the batch's captions (objectives/passes.py)."""
        if self.cfg.phrase_encoding != "alone":
            return {}
        texts, rows, cols = phrase_texts(noun_phrase_spans(batch["knowledge"]), self.cfg.max_phrases,
                                         batch["caption"])
        tokens = {k: v.to(batch["input_ids"].device) for k, v in self.tokens(texts).items()}
        return {PHRASES: TextInput(tokens["input_ids"], tokens["attention_mask"], meta=(rows, cols))}

    def forward(self, batch: dict, outputs, model) -> dict[str, torch.Tensor]:
        encoded = getattr(outputs, "extra", {}).get(PHRASES)
        if encoded is not None:  # encoded with the batch's captions
            rows, cols = encoded.input.meta
            phrases, mask = place_phrases(model, encoded.output.embed, rows, cols, len(batch["caption"]),
                                          self.cfg.max_phrases)
        else:
            phrases, mask = embed_phrases(
                model, noun_phrase_spans(batch["knowledge"]), self.cfg.max_phrases, self.cfg.phrase_encoding,
                token_states=outputs.text.encoder.tokens, offsets=batch["token_offsets"], captions=batch["caption"],
                tokenizer=self.tokens or self.tokenizer)
        groups = model.embed_groups(outputs.video.encoder)
        out = grounding_loss(phrases, mask, groups, self.cfg.grounding_temperature, self.cfg.grounding_symmetric)
        out["phrases_per_caption"] = mask.float().sum(1).mean()
        return out


# ----------------------------------------------------------------------------- temporal grouping
@dataclass
class CutAndPaste:
    video: torch.Tensor  # (B, T, C, H, W) clip A with an interval of clip B's frames
    frame_mask: torch.Tensor | None  # (B, T) validity of the frames now in place
    is_a: torch.Tensor  # (B, T') True where the time step shows the clip itself (A)
    partner: torch.Tensor  # (B,) batch index of clip B
    source: torch.Tensor  # (B, T) batch index of the clip each frame came from


def _draw_intervals(b: int, time_steps: int, min_steps: int, max_steps: int,
                    generator: torch.Generator | None) -> torch.Tensor:
    """(B, T') True where a step keeps the clip (A), False on one random contiguous interval per clip.
    Its length is drawn from [min_steps, max_steps] (max_steps 0: T' - 1), capped so A keeps a step."""
    hi = min(max_steps or time_steps - 1, time_steps - 1)
    lo = max(1, min(min_steps, hi))
    lengths = torch.randint(lo, hi + 1, (b,), generator=generator)
    starts = (torch.rand(b, generator=generator) * (time_steps - lengths + 1)).long()
    steps = torch.arange(time_steps)
    return ~((steps >= starts[:, None]) & (steps < (starts + lengths)[:, None]))


def cut_and_paste(video: torch.Tensor, time_steps: int, min_steps: int = 1, max_steps: int = 0,
                  frame_mask: torch.Tensor | None = None, generator: torch.Generator | None = None,
                  partner: torch.Tensor | None = None) -> CutAndPaste:
    """Replace a random contiguous interval of each clip's time steps with the same steps of another clip.

    time_steps: the encoder's time steps T' (frames T must be a multiple: a step is a tubelet). The interval
    is drawn by `_draw_intervals`; the partner of clip i is a random other clip of the batch (never i itself)
    unless `partner` (B,) names it. Needs a batch of >= 2.
    """
    b, t = video.shape[:2]
    if b < 2:
        raise ValueError("cut-and-paste needs at least two clips in the batch")
    tubelet = t // time_steps
    drawn = (torch.arange(b) + torch.randint(1, b, (b,), generator=generator)) % b
    partner = drawn if partner is None else partner.cpu()
    if bool((partner == torch.arange(b)).any()):
        raise ValueError("cut-and-paste: a clip cannot be its own partner")
    is_a = _draw_intervals(b, time_steps, min_steps, max_steps, generator)
    frame_is_a = is_a.repeat_interleave(tubelet, dim=1)
    source = torch.where(frame_is_a, torch.arange(b)[:, None], partner[:, None])
    dev = video.device
    partner, is_a, frame_is_a, source = partner.to(dev), is_a.to(dev), frame_is_a.to(dev), source.to(dev)
    cut = torch.where(frame_is_a[:, :, None, None, None], video, video[partner])
    mask = None if frame_mask is None else torch.where(frame_is_a, frame_mask, frame_mask[partner])
    return CutAndPaste(cut, mask, is_a, partner, source)


def reverse_steps(video: torch.Tensor, time_steps: int, min_steps: int = 1, max_steps: int = 0,
                  frame_mask: torch.Tensor | None = None, generator: torch.Generator | None = None) -> CutAndPaste:
    """[extension] The "pasted" part is the clip itself, each step of a random interval playing its frames
    backwards (frames 2k, 2k+1 of a 2-frame tubelet shown as 2k+1, 2k).

    Every step keeps its own frames, so its appearance and its objects' positions are those of the uncut clip;
    only the direction of motion inside the step differs. (Reversing the whole interval would also reorder
    the steps, and an object's position would then tell the parts apart without any motion.) Returns a
    CutAndPaste whose partner and source are the clip itself; `is_a` marks the steps played forwards.
    """
    b, t = video.shape[:2]
    tubelet = t // time_steps
    if tubelet < 2:
        raise ValueError(f"reverse_steps needs at least 2 frames per time step, got {t} frames in {time_steps} steps")
    is_a = _draw_intervals(b, time_steps, min_steps, max_steps, generator)
    frame_is_a = is_a.repeat_interleave(tubelet, dim=1)
    forward = torch.arange(t).expand(b, t)
    backward = forward - forward % tubelet + (tubelet - 1 - forward % tubelet)
    order = torch.where(frame_is_a, forward, backward).to(video.device)
    rows = torch.arange(b, device=video.device)[:, None]
    mask = None if frame_mask is None else frame_mask[rows, order]
    own = torch.arange(b, device=video.device)
    return CutAndPaste(video[rows, order], mask, is_a.to(video.device), own, own[:, None].expand(b, t))


def temporal_grouping_loss(features: torch.Tensor, is_a: torch.Tensor, valid: torch.Tensor | None,
                           temperature: float, detach_centroids: bool = False,
                           leave_one_out: bool = False) -> dict[str, torch.Tensor]:
    """Classify each time step to its own scene's centroid.

    features (B, T', D) per-time-step features; is_a (B, T') which part each step belongs to; valid (B, T')
    real time steps. c_A, c_B = normalised means of the normalised features of each part; logits =
    [f . c_A, f . c_B] / temperature; label 0 for A, 1 for B; mean cross-entropy over valid steps.

    leave_one_out: a step's own part's centroid is the mean of the part's *other* steps, and a step alone in
    its part is not scored. With the step inside its own centroid the loss has a solution that needs no
    scenes at all: make every step's feature unlike every other's (each is then nearest the centroid it is
    part of), which structvl.lab.diagnostics.temporal_one_batch shows the encoder finding when the parts look alike.
    """
    valid = torch.ones_like(is_a) if valid is None else valid
    f = F.normalize(features.float(), dim=-1)

    def part_sums(part: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        w = (part & valid).float()[..., None]
        return (f * w).sum(1, keepdim=True), w.sum(1, keepdim=True)  # (B, 1, D), (B, 1, 1)

    def centroid(total: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
        c = F.normalize(total / count.clamp(min=1.0), dim=-1)
        return c.detach() if detach_centroids else c

    (sum_a, n_a), (sum_b, n_b) = part_sums(is_a), part_sums(~is_a)
    own = is_a[..., None]
    if leave_one_out:  # (B, T', D): per step, its own part without it; the other part whole
        c_a = centroid(torch.where(own, sum_a - f, sum_a), torch.where(own, n_a - 1, n_a))
        c_b = centroid(torch.where(own, sum_b, sum_b - f), torch.where(own, n_b, n_b - 1))
        scored = valid & (torch.where(is_a, n_a[..., 0], n_b[..., 0]) > 1)
    else:
        c_a, c_b, scored = centroid(sum_a, n_a), centroid(sum_b, n_b), valid
    logits = torch.stack([(f * c_a).sum(-1), (f * c_b).sum(-1)], dim=-1) / temperature
    labels = (~is_a).long()
    if not scored.any():  # every part a single step: nothing to classify
        zero = features.sum() * 0.0
        return {"loss": zero, "accuracy": zero.detach()}
    loss = F.cross_entropy(logits[scored], labels[scored])
    accuracy = (logits.argmax(-1) == labels)[scored].float().mean()
    return {"loss": loss, "accuracy": accuracy.detach()}


class TemporalGroupingObjective(nn.Module):
    """L_t: cut-and-paste clips, then per-time-step features must tell the two scenes apart."""

    def __init__(self, cfg, model, context):
        super().__init__()
        self.cfg = cfg.svilm

    def _cut(self, batch: dict, model) -> CutAndPaste:
        paste = cut_and_paste if self.cfg.paste_source == "batch" else reverse_steps
        cut = paste(batch["video"], model.video_encoder.time, self.cfg.cut_min_steps, self.cfg.cut_max_steps,
                    batch.get("frame_mask"))
        n = self.cfg.temporal_clips  # drawn for every clip first, so that 0 and n >= B draw the same cuts
        return take_rows(cut, slice(0, n)) if 0 < n < len(cut.is_a) else cut  # partners index the whole batch

    def _pairless(self, batch: dict) -> bool:
        return batch["video"].shape[0] < 2 and self.cfg.paste_source == "batch"  # no partner clip to paste from

    def requests(self, batch: dict, model) -> dict:
        """The cut-and-paste clips, to be encoded with the batch's clips (objectives/passes.py)."""
        if self._pairless(batch):
            return {}
        cut = self._cut(batch, model)
        return {CUT_CLIPS: VideoInput(cut.frame_mask, video=cut.video, meta=cut)}

    def forward(self, batch: dict, outputs, model) -> dict[str, torch.Tensor]:
        if self._pairless(batch):
            zero = outputs.video.embed.sum() * 0.0
            return {"loss": zero, "accuracy": zero.detach()}
        encoded = getattr(outputs, "extra", {}).get(CUT_CLIPS)
        if encoded is not None:  # encoded with the batch's clips
            cut, enc = encoded.input.meta, encoded.output.encoder
        else:
            cut = self._cut(batch, model)
            enc = model.video_encoder(cut.video, cut.frame_mask)
        per_time = enc.per_time_features()
        out = temporal_grouping_loss(per_time, cut.is_a, enc.frame_mask, self.cfg.temporal_temperature,
                                     self.cfg.detach_centroids, self.cfg.temporal_centroids == "leave_one_out")
        if self.cfg.temporal_contrastive == "a_part":
            w = (cut.is_a & enc.frame_mask).to(per_time.dtype)[..., None]
            a_part = F.normalize(model.video_proj((per_time * w).sum(1) / w.sum(1).clamp(min=1.0)), dim=-1)
            nce = info_nce(a_part, outputs.text.embed[:len(a_part)], model.logit_scale)["loss"]
            out["a_part_nce"] = nce.detach()
            out["loss"] = out["loss"] + nce
        return out
