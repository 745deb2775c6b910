"""Clover: tri-modal alignment, semantic masked samples and pair-wise ranking [code: LeeYN-43/Clover].

Per batch (v, t: the plain encodings the shared forward already made):
    vm   = video(V with block/tube-masked patches)          tm   = text(T with nouns / verb phrases masked)
    f_vm = fuse(video(V masked), text(T)) -> own head       f_tm = fuse(video(V), text(T masked)) -> own head
All embeddings L2-normalised; similarities are cosine x the model's logit scale (Clover: 1 / 0.05, fixed).

Objectives (each switched and weighted in the config's `objectives:`; Clover sums them with weight 1):
    clover_align  "exclusive NCE" with both anchors: ExNCE(v; t, tm, f_vm) + ExNCE(t; v, vm, f_tm) (see
                  `exclusive_nce`; the released code wires f_vm to the video anchor too, mlm_ssl_V_head).
    clover_rank   MarginRankingLoss(margin 5) on the scaled logits: s(v_i, t_i) > s(v_i, tm_i) + margin and
                  s(t_i, v_i) > s(t_i, vm_i) + margin - the complete pair must beat the semantically masked one.
    clover_mlm    softmax focal loss (gamma 2) on the masked tokens of fuse(V, T masked).
Every term is computed over the global batch (all-gather with gradients), so K ranks give the single-process
loss. The masked passes are computed once per batch and shared by the three objectives (`CloverPasses`),
and only the passes an enabled objective needs run (rank alone never runs the fusion encoder).

Not in the released pre-training code, so not here: a video-text matching (VTM) loss.

[extension] `clover.masked_clips: N` builds the masked samples (vm, tm, f_vm, f_tm) for the first N pairs of each
rank's batch only: the alignment's pools then hold the B plain items and N of each masked kind, anchor i scores
only the positives it has, ranking and MLM read the N pairs. Each masked pair's terms weigh what they weigh in
Clover's loss (sums over the N pairs divided by B, MLM's token mean scaled by N / B), so the masked terms together
weigh N / B of theirs (averaged over the N pairs instead, they cost retrieval on val: docs/findings.md, "Lean
recipes"). The masked video pass and the two fusion passes are most of what Clover's step costs beyond the
baseline's (the fusion passes' last layer computes only the rows read: the fused vectors and MLM's masked
positions; docs/findings.md has the ratios, which move with the precision). 0, every pair, is the released
code's setup.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from structvl.config import ConfigError
from structvl.data.masking import (
    apply_video_mask,
    corrupt_tokens,
    random_selection,
    semantic_selection,
    video_tube_masks,
)
from structvl.models.fusion import FusionOutput
from structvl.models.text_encoder import TextEncoderOutput, build_tokenizer
from structvl.models.video_encoder import VideoEncoderOutput
from structvl.models.video_text import projection_head
from structvl.objectives.passes import TextInput, VideoInput, take_rows
from structvl.runtime.distributed import all_gather_with_grad, rank, world_size
from structvl.runtime.precision import full_precision


# ---------------------------------------------------------------- losses (pure functions, all-gathered)
def exclusive_nce(anchor: torch.Tensor, positives: list[torch.Tensor], logit_scale: torch.Tensor) -> dict:
    """Clover's "exclusive NCE" for local, L2-normalised `anchor` (B, E) and K local positive sets (n_k, E) each,
    row i of every set belonging to anchor i (n_k = B in Clover; fewer with `clover.masked_clips`).

    Anchor side: the pool is every rank's items of all K sets. Anchor i's k-th positive is scored by a softmax
    over that pool *minus its other positives* (they are not negatives, but they must not share the probability
    mass either); each set's log-probabilities are summed over the anchors that have a positive in it and divided
    by B, and the K sets' terms summed. Reverse side: every item of every set is an anchor against all B_global
    anchors (plain InfoNCE), summed and divided by K x B. With n_k = B these are Clover's means; with fewer
    items each pair's term weighs what it weighs there, and a set of n_k items n_k / B of its whole weight.
    Returns {"loss": anchor side + reverse side, "anchor_side", "reverse_side"}.
    """
    anchor, positives = anchor.float(), [p.float() for p in positives]  # fp32 logits (runtime/precision.py)
    b, r = anchor.shape[0], rank()
    all_anchor = all_gather_with_grad(anchor)
    sizes = [p.shape[0] for p in positives]
    with full_precision(anchor.device.type):
        sims = [logit_scale * anchor @ all_gather_with_grad(p).t() for p in positives]  # K x (B, n_k W)
    rows = torch.arange(b, device=anchor.device)
    # Each anchor's positive column in every block (none where the set has no row for it).
    own = []
    for s, n in zip(sims, sizes):
        own.append(torch.zeros_like(s, dtype=torch.bool))
        own[-1][rows[:n], r * n + rows[:n]] = True
    anchor_side = anchor.new_zeros((), dtype=torch.float32)
    offset = 0
    for k, n in enumerate(sizes):
        logits = torch.cat([s if j == k else s.masked_fill(o, float("-inf"))
                            for j, (s, o) in enumerate(zip(sims, own))], 1)
        if n:
            anchor_side = anchor_side + F.cross_entropy(logits[:n], offset + r * n + rows[:n], reduction="sum") / b
        offset += sims[k].shape[1]
    with full_precision(anchor.device.type):
        reverse = [F.cross_entropy(logit_scale * p @ all_anchor.t(), r * b + rows[:n], reduction="sum")
                   for p, n in zip(positives, sizes)]
    reverse_side = torch.stack(reverse).sum() / (len(positives) * b)
    return {"loss": anchor_side + reverse_side, "anchor_side": anchor_side, "reverse_side": reverse_side}


def pairwise_ranking(anchor: torch.Tensor, complete: torch.Tensor, masked: torch.Tensor,
                     logit_scale: torch.Tensor, margin: float) -> torch.Tensor:
    """mean_i max(0, margin - (s(anchor_i, complete_i) - s(anchor_i, masked_i))), s = scaled cosine."""
    anchor = anchor.float()  # fp32 logits, as every similarity of the objectives (runtime/precision.py)
    pos = logit_scale * (anchor * complete.float()).sum(-1)
    neg = logit_scale * (anchor * masked.float()).sum(-1)
    return F.margin_ranking_loss(pos, neg, torch.ones_like(pos), margin=margin)


def focal_mlm_loss(logits: torch.Tensor, labels: torch.Tensor, gamma: float) -> torch.Tensor:
    """Softmax focal loss (1 - p_t)^gamma * CE, averaged over the masked tokens of *all* ranks.

    Ranks hold different numbers of masked tokens, so each rank divides its sum by the global count and
    multiplies by the world size: the ranks' mean (what DDP's gradient averaging computes) is then the
    single-process mean over the global batch."""
    ce = F.cross_entropy(logits.float(), labels, reduction="none")
    loss = ((1 - torch.exp(-ce)) ** gamma * ce).sum() if gamma else ce.sum()
    count = torch.tensor(float(labels.numel()), device=logits.device)
    if world_size() > 1:
        dist.all_reduce(count)
    return loss * world_size() / count.clamp(min=1.0)


# ---------------------------------------------------------------- the shared masked passes
MASKED_VIDEO = "clover/masked_video"  # request keys (objectives/passes.py)
MASKED_TEXT = "clover/masked_text"


class CloverPasses:
    """The masked forward passes of one batch, each computed on first use and then reused.

    When the shared forward batched the passes (`outputs.batched`), the masked clips and captions come encoded
    with the batch's own (`outputs.extra`, requested by `CloverCore.requests`), and the two fusion passes of the
    alignment run as one fusion call of twice the batch."""

    def __init__(self, core: "CloverCore", batch: dict, outputs, model):
        self.core, self.batch, self.outputs, self.model = core, batch, outputs, model
        self.extra = getattr(outputs, "extra", {})
        self.n = core.masked_count(batch)  # the pairs that get masked samples: the batch's first n
        # What those pairs weigh of the batch: `clover.masked_clips` scales ranking and MLM by it, so that each pair
        # weighs what it does in Clover's loss.
        self.share = self.n / batch["video"].shape[0]
        self._memo: dict = {}

    def _first(self, out):
        """An encoder output of the batch cut to the pairs that get masked samples."""
        return take_rows(out, slice(0, self.n))

    def _once(self, key, fn):
        if key not in self._memo:
            self._memo[key] = fn()
        return self._memo[key]

    def masked_video(self):
        """vm: the video with block/tube-masked patch embeddings (a VideoEmbedding)."""
        if MASKED_VIDEO in self.extra:
            return self.extra[MASKED_VIDEO].output
        return self._once("vm", lambda: self.core.encode_masked_video(self.batch, self.model))

    def masked_text(self):
        """(tm, labels): the caption with nouns / verb phrases masked (a TextEmbedding) and its MLM labels."""
        if MASKED_TEXT in self.extra:
            return self.extra[MASKED_TEXT].output, self.extra[MASKED_TEXT].input.meta
        return self._once("tm", lambda: self.core.encode_masked_text(self.batch, self.model))

    def _read_masked_text(self):
        """What fuse(V, T masked) is read for: the fused vector, and MLM's masked positions where MLM runs."""
        return self.masked_text()[1] != -100 if self.core.predicts_words else "cls"

    def _fused_pair(self):
        """(fuse(video(V masked), text(T)), fuse(video(V), text(T masked))) from one fusion call over both pairs:
        the fusion encoder treats each row on its own, and T and T masked share their length and mask. The first
        is read for its fused vector alone, the second for MLM's masked positions too."""
        vm, v = self.masked_video().encoder, self._first(self.outputs.video.encoder)
        t, tm = self._first(self.outputs.text.encoder), self.masked_text()[0].encoder
        video = VideoEncoderOutput(pooled=torch.cat([vm.pooled, v.pooled]), tokens=torch.cat([vm.tokens, v.tokens]),
                                   frame_mask=torch.cat([vm.frame_mask, v.frame_mask]))
        text = TextEncoderOutput(pooled=torch.cat([t.pooled, tm.pooled]), tokens=torch.cat([t.tokens, tm.tokens]),
                                 attention_mask=torch.cat([t.attention_mask, tm.attention_mask]))
        read = self._read_masked_text()
        if not isinstance(read, str):  # the first half's rows read nothing but [CLS]
            read = torch.cat([torch.zeros_like(read), read])
        fused = self.model.fuse(video, text, read=read)
        b = v.tokens.shape[0]
        return (FusionOutput(cls=fused.cls[:b]),
                FusionOutput(cls=fused.cls[b:], read_states=fused.read_states))

    def _paired(self) -> bool:
        # Both fusion passes are needed (the alignment) and the shared forward batches its passes.
        return bool(getattr(self.outputs, "batched", False)) and self.core.aligned

    def fused_masked_video(self) -> torch.Tensor:
        """f_vm = head(fuse(video(V masked), text(T))), (B, E) normalised."""
        if self._paired():
            return self._once("f_vm", lambda: self.core.fused_embedding(self._once("pair", self._fused_pair)[0],
                                                                          "video"))
        return self._once("f_vm", lambda: self.core.fused_embedding(
            self.model.fuse(self.masked_video().encoder, self._first(self.outputs.text.encoder), read="cls"),
            "video"))

    def fused_masked_text_output(self):
        """fuse(video(V), text(T masked)): the fusion output MLM reads (a FusionOutput; `.read_states` are the
        masked positions' states, in the order labels[labels != -100] gives their targets)."""
        if self._paired():
            return self._once("pair", self._fused_pair)[1]
        return self._once("fuse_tm", lambda: self.model.fuse(self._first(self.outputs.video.encoder),
                                                               self.masked_text()[0].encoder,
                                                               read=self._read_masked_text()))

    def fused_masked_text(self) -> torch.Tensor:
        """f_tm = head(fuse(video(V), text(T masked))), (B, E) normalised (only the alignment has the head)."""
        return self._once("f_tm", lambda: self.core.fused_embedding(self.fused_masked_text_output(), "text"))


class CloverCore(nn.Module):
    """What the three Clover objectives share: the masking, the video mask token, the fused heads, and the
    per-batch cache. Built once per run (stored on the objective context) and owned by the first Clover
    objective, so its parameters appear once in the state dict."""

    def __init__(self, cfg, model, context):
        super().__init__()
        self.cfg = cfg.clover
        self.tokenizer = context.tokenizer
        if self.tokenizer is None:
            self.tokenizer = build_tokenizer(cfg.model.text)
        # Only what an enabled objective uses is built: under DDP a parameter without a gradient is an error.
        weights = cfg.objectives
        self.aligned = weights.get("clover_align", 0) > 0
        self.predicts_words = weights.get("clover_mlm", 0) > 0  # whether MLM reads fuse(V, T masked)'s states
        self.masks_video = self.aligned or weights.get("clover_rank", 0) > 0  # whether any objective reads vm
        if self.masks_video:
            # BEiT-style learned mask token: it replaces a masked cell's patch content; the cell keeps its position.
            self.mask_token = nn.Parameter(torch.zeros(1, 1, 1, model.video_encoder.width))
            nn.init.trunc_normal_(self.mask_token, std=0.02)
        if weights.get("clover_align", 0) > 0:
            # Separate heads for the fused-from-masked-video and fused-from-masked-text vectors (Clover's V / T heads).
            self.fused_video_proj = projection_head(model.fusion.width, cfg.model.embed_dim, cfg.model.projection)
            self.fused_text_proj = projection_head(model.fusion.width, cfg.model.embed_dim, cfg.model.projection)
        self._passes: CloverPasses | None = None
        self._requested: tuple[dict, dict] | None = None

    def requests(self, batch: dict, model) -> dict:
        """The masked clips (when an objective reads them) and the masked captions, drawn once per batch, to be
        encoded with the batch's own (objectives/passes.py). They are drawn in the order the unbatched passes draw
        them: the clips' mask first where the alignment runs (it reads vm first), else the captions'."""
        if self._requested is None or self._requested[0] is not batch:
            asked, n = {}, self.masked_count(batch)
            for draw in (("video", "text") if self.aligned else ("text", "video")):
                if draw == "video" and self.masks_video:
                    frame_mask = batch.get("frame_mask")
                    asked[MASKED_VIDEO] = VideoInput(None if frame_mask is None else frame_mask[:n],
                                                     from_main=self.draw_video_mask(batch, model))
                elif draw == "text":
                    masked_ids, labels = self.draw_text_mask(batch)
                    asked[MASKED_TEXT] = TextInput(masked_ids, batch["attention_mask"][:n], keep_tokens=True,
                                                   meta=labels)
            self._requested = (batch, asked)
        return self._requested[1]

    def passes(self, batch: dict, outputs, model) -> CloverPasses:
        # Keyed on the batch object itself (not its id, which Python may reuse once a batch is freed).
        if self._passes is None or self._passes.batch is not batch or self._passes.outputs is not outputs:
            self._passes = CloverPasses(self, batch, outputs, model)
        return self._passes

    def masked_count(self, batch: dict) -> int:
        """How many of the batch's pairs (its first ones) get masked samples: `clover.masked_clips`, 0 = all."""
        b, n = batch["video"].shape[0], self.cfg.masked_clips
        return n if 0 < n < b else b

    def draw_video_mask(self, batch: dict, model):
        """A block/tube mask for each clip, as the function that applies it to the first `masked_count` clips'
        patch embeddings (a mask is drawn for every clip, so that the draws do not depend on the count)."""
        enc, n = model.video_encoder, self.masked_count(batch)
        mask = video_tube_masks(batch["video"].shape[0], enc.grid, self.cfg.video_mask_ratio,
                                self.cfg.video_mask_min_block, self.cfg.video_mask_min_aspect)[:n]
        position = enc.pos_embed[:, None, 1:] + enc.time_embed[:, :, None]  # (1, T', N, D)
        return lambda embeddings: apply_video_mask(embeddings[:n], mask, self.mask_token + position)

    def encode_masked_video(self, batch: dict, model):
        masking = self.draw_video_mask(batch, model)
        masked = masking(model.video_encoder.embed(batch["video"]))
        frame_mask = batch.get("frame_mask")
        return model.encode_video(None, None if frame_mask is None else frame_mask[:len(masked)],
                                  patch_embeddings=masked)

    def select_text(self, batch: dict) -> torch.Tensor:
        ids = batch["input_ids"]
        if self.cfg.text_masking == "semantic":
            if "knowledge" not in batch:
                raise KeyError("clover.text_masking=semantic needs the captions' knowledge in the batch")
            return semantic_selection(batch["knowledge"], batch["token_offsets"], ids.shape[1],
                                      self.cfg.text_mask_ratio)
        return random_selection(ids, self.tokenizer.special_token_ids, self.cfg.random_mask_prob)

    def draw_text_mask(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(masked input_ids, MLM labels) of the first `masked_count` captions (drawn for every caption)."""
        tok, n = self.tokenizer, self.masked_count(batch)
        selected = self.select_text(batch) & batch["attention_mask"].bool().cpu()
        masked, labels = corrupt_tokens(batch["input_ids"], selected, tok.mask_token_id, tok.vocab_size,
                                        tok.special_token_ids, self.cfg.mask_replace_prob, self.cfg.mask_random_prob)
        return masked[:n], labels[:n]

    def encode_masked_text(self, batch: dict, model):
        masked_ids, labels = self.draw_text_mask(batch)
        return model.encode_text(masked_ids, batch["attention_mask"][:len(masked_ids)]), labels

    def fused_embedding(self, fusion_out, which: str) -> torch.Tensor:
        head = self.fused_video_proj if which == "video" else self.fused_text_proj
        return F.normalize(head(fusion_out.cls), dim=-1)


class _CloverObjective(nn.Module):
    """Base: find or build the run's CloverCore on the context."""

    needs_knowledge = True  # semantic masking reads spaCy's tags (random masking ignores them)
    needs_fusion = True

    def __init__(self, cfg, model, context):
        super().__init__()
        if self.needs_fusion and model.fusion is None:
            raise ConfigError(f"objective '{self.name}' needs the fusion encoder: set model.fusion.layers > 0")
        core = getattr(context, "clover_core", None) if context is not None else None
        if core is None:
            core = CloverCore(cfg, model, context)
            self.core = core  # registered: this objective owns the shared parameters
            if context is not None:
                context.clover_core = core
        else:
            object.__setattr__(self, "_shared_core", core)  # not registered: no duplicate state-dict entries

    @property
    def clover(self) -> CloverCore:
        return self._modules["core"] if "core" in self._modules else self._shared_core

    def requests(self, batch: dict, model) -> dict:
        return self.clover.requests(batch, model)


class CloverAlignObjective(_CloverObjective):
    """Tri-modal alignment ("exclusive NCE") with the video and the text as anchors."""

    name = "clover_align"

    def forward(self, batch, outputs, model) -> dict:
        p = self.clover.passes(batch, outputs, model)
        scale = model.logit_scale
        # The fused passes first: unbatched, each pass draws its masks when first asked for, and the batched
        # path (objectives/passes.py) draws them in this order too.
        f_vm, f_tm = p.fused_masked_video(), p.fused_masked_text()
        v_anchor = exclusive_nce(outputs.video.embed, [outputs.text.embed, p.masked_text()[0].embed, f_vm], scale)
        t_anchor = exclusive_nce(outputs.text.embed, [outputs.video.embed, p.masked_video().embed, f_tm], scale)
        return {"loss": v_anchor["loss"] + t_anchor["loss"], "video_anchor": v_anchor["loss"].detach(),
                "text_anchor": t_anchor["loss"].detach()}


class CloverRankObjective(_CloverObjective):
    """Pair-wise ranking: the complete pair beats the semantically masked one by a margin, both anchors."""

    name = "clover_rank"
    needs_fusion = False

    def forward(self, batch, outputs, model) -> dict:
        p = self.clover.passes(batch, outputs, model)
        scale, margin = model.logit_scale, self.clover.cfg.rank_margin
        v, t = outputs.video.embed[:p.n], outputs.text.embed[:p.n]
        tm, vm = p.masked_text()[0].embed, p.masked_video().embed
        text_side = p.share * pairwise_ranking(v, t, tm, scale, margin)
        video_side = p.share * pairwise_ranking(t, v, vm, scale, margin)
        with torch.no_grad():  # how often the complete pair already wins by the margin
            sat = ((scale * ((v * t).sum(-1) - (v * tm).sum(-1)) >= margin).float().mean())
        return {"loss": text_side + video_side, "t_vs_tm": text_side.detach(), "v_vs_vm": video_side.detach(),
                "t_vs_tm_satisfied": sat}


class CloverMlmObjective(_CloverObjective):
    """MLM with softmax focal loss on the fused output of (full video, masked text), masked tokens only."""

    name = "clover_mlm"

    def forward(self, batch, outputs, model) -> dict:
        p = self.clover.passes(batch, outputs, model)
        _, labels = p.masked_text()
        logits = model.mlm_logits(p.fused_masked_text_output().read_states)  # the masked positions' states
        target = labels[labels != -100]
        loss = p.share * focal_mlm_loss(logits, target, self.clover.cfg.focal_gamma)
        with torch.no_grad():
            acc = (logits.argmax(-1) == target).float().mean() if target.numel() else loss.new_zeros(())
        return {"loss": loss, "accuracy": acc, "masked_tokens": torch.tensor(float(target.numel()))}
