"""Clover: tri-modal alignment, semantic masked samples and pair-wise ranking [code: LeeYN-43/Clover].

Per batch (v, t: the plain encodings the shared forward already made):
    vm   = video(V with block/tube-masked patches)          tm   = text(T with nouns / verb phrases masked)
    f_vm = fuse(video(V masked), text(T)) -> own head       f_tm = fuse(video(V), text(T masked)) -> own head
All embeddings L2-normalised; similarities are cosine x the model's logit scale (Clover: 1 / 0.05, fixed).

Objectives (each switched and weighted in the config's `objectives:`; Clover sums them with weight 1):
    clover_align  "exclusive NCE" with both anchors: ExNCE(v; t, tm, f_vm) + ExNCE(t; v, vm, f_tm) (see
                  `exclusive_nce`; `clover.fused_pool: code` swaps the fused items, as the released code wires them).
    clover_rank   MarginRankingLoss(margin 5) on the scaled logits: s(v_i, t_i) > s(v_i, tm_i) + margin and
                  s(t_i, v_i) > s(t_i, vm_i) + margin - the complete pair must beat the semantically masked one.
    clover_mlm    softmax focal loss (gamma 2) on the masked tokens of fuse(V, T masked).
Every term is computed over the global batch (all-gather with gradients), so K ranks give the single-process
loss. The masked passes are computed once per batch and shared by the three objectives (`CloverPasses`),
and only the passes an enabled objective needs run (rank alone never runs the fusion encoder).

Not in the released pre-training code, so not here: a video-text matching (VTM) loss.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from structvl.data.masking import (apply_video_mask, corrupt_tokens, random_selection, semantic_selection,
                                   video_tube_masks)
from structvl.runtime.distributed import all_gather_with_grad, rank, world_size
from structvl.runtime.nonfinite import NonFiniteTally, top1_hits
from structvl.runtime.precision import autocast, autocast_dtype
from structvl.models.video_text import projection_head


# ---------------------------------------------------------------- losses (pure functions, all-gathered)
def exclusive_nce(anchor: torch.Tensor, positives: list[torch.Tensor], logit_scale: torch.Tensor) -> dict:
    """Clover's "exclusive NCE" for local, L2-normalised `anchor` (B, E) and K local positive sets (B, E) each.

    Anchor side: the pool is every rank's items of all K sets (K x B_global). Anchor i's k-th positive is scored
    by a softmax over that pool *minus its other K-1 positives* (they are not negatives, but they must not
    share the probability mass either); the K log-probabilities are summed, then averaged over anchors.
    Reverse side: every item of every set is an anchor against all B_global anchors (plain InfoNCE), averaged
    over the K x B rows. Returns {"loss": anchor side + reverse side, "anchor_side", "reverse_side"}.
    """
    b = anchor.shape[0]
    targets = torch.arange(b, device=anchor.device) + rank() * b
    all_anchor = all_gather_with_grad(anchor)
    sims = [(logit_scale * anchor @ all_gather_with_grad(p).t()).float() for p in positives]  # K x (B, G)
    own = F.one_hot(targets, sims[0].shape[1]).bool()  # each anchor's positive column in every block
    anchor_side = anchor.new_zeros((), dtype=torch.float32)
    for k in range(len(sims)):
        logits = torch.cat([s if j == k else s.masked_fill(own, float("-inf")) for j, s in enumerate(sims)], 1)
        anchor_side = anchor_side + F.cross_entropy(logits, targets + k * sims[0].shape[1])
    reverse_side = torch.stack([F.cross_entropy((logit_scale * p @ all_anchor.t()).float(), targets)
                                for p in positives]).mean()
    return {"loss": anchor_side + reverse_side, "anchor_side": anchor_side, "reverse_side": reverse_side}


def pairwise_ranking(anchor: torch.Tensor, complete: torch.Tensor, masked: torch.Tensor,
                     logit_scale: torch.Tensor, margin: float) -> torch.Tensor:
    """mean_i max(0, margin - (s(anchor_i, complete_i) - s(anchor_i, masked_i))), s = scaled cosine."""
    pos = logit_scale * (anchor * complete).sum(-1)
    neg = logit_scale * (anchor * masked).sum(-1)
    return F.margin_ranking_loss(pos.float(), neg.float(), torch.ones_like(pos, dtype=torch.float32), margin=margin)


def focal_mlm_loss(logits: torch.Tensor, labels: torch.Tensor, gamma: float) -> torch.Tensor:
    """Softmax focal loss (1 - p_t)^gamma * CE, averaged over the masked tokens of *all* ranks.

    Ranks hold different numbers of masked tokens, so each rank divides its sum by the global count and
    multiplies by the world size: the ranks' mean (what DDP's gradient averaging computes) is then the
    single-process mean over the global batch."""
    ce = F.cross_entropy(logits.float(), labels, reduction="none")
    loss = ((1 - torch.exp(-ce)) ** gamma * ce).sum() if gamma else ce.sum()
    count = torch.tensor(float(labels.numel()), device=logits.device)
    if world_size() > 1:
        import torch.distributed as dist
        dist.all_reduce(count)
    return loss * world_size() / count.clamp(min=1.0)


# ---------------------------------------------------------------- the shared masked passes
class CloverPasses:
    """The masked forward passes of one batch, each computed on first use and then reused."""

    def __init__(self, core: "CloverCore", batch: dict, outputs, model):
        self.core, self.batch, self.outputs, self.model = core, batch, outputs, model
        self._memo: dict = {}

    def _once(self, key, fn):
        if key not in self._memo:
            self._memo[key] = fn()
        return self._memo[key]

    def masked_video(self):
        """vm: the video with block/tube-masked patch embeddings (a VideoEmbedding)."""
        return self._once("vm", lambda: self.core.encode_masked_video(self.batch, self.model))

    def masked_text(self):
        """(tm, labels): the caption with nouns / verb phrases masked (a TextEmbedding) and its MLM labels."""
        return self._once("tm", lambda: self.core.encode_masked_text(self.batch, self.model))

    def fused_masked_video(self) -> torch.Tensor:
        """f_vm = head(fuse(video(V masked), text(T))), (B, E) normalised."""
        return self._once("f_vm", lambda: self.core.fused_embedding(
            self.model.fuse(self.masked_video().encoder, self.outputs.text.encoder), "video"))

    def fused_masked_text_output(self):
        """fuse(video(V), text(T masked)): the fusion output MLM reads (a FusionOutput)."""
        return self._once("fuse_tm", lambda: self.model.fuse(self.outputs.video.encoder,
                                                               self.masked_text()[0].encoder))

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
            from structvl.data.text import Tokenizer
            self.tokenizer = Tokenizer(max_length=cfg.model.text.max_length)
        # Only what an enabled objective uses is built: under DDP a parameter without a gradient is an error.
        weights = cfg.objectives
        if weights.get("clover_align", 0) > 0 or weights.get("clover_rank", 0) > 0:
            # BEiT-style learned mask token: it replaces a masked cell's patch content; the cell keeps its position.
            self.mask_token = nn.Parameter(torch.zeros(1, 1, 1, model.video_encoder.width))
            nn.init.trunc_normal_(self.mask_token, std=0.02)
        if weights.get("clover_align", 0) > 0:
            # Separate heads for the fused-from-masked-video and fused-from-masked-text vectors (Clover's V / T heads).
            self.fused_video_proj = projection_head(model.fusion.width, cfg.model.embed_dim, cfg.model.projection)
            self.fused_text_proj = projection_head(model.fusion.width, cfg.model.embed_dim, cfg.model.projection)
        self._passes: CloverPasses | None = None

    def passes(self, batch: dict, outputs, model) -> CloverPasses:
        # Keyed on the batch object itself (not its id, which Python may reuse once a batch is freed).
        if self._passes is None or self._passes.batch is not batch or self._passes.outputs is not outputs:
            self._passes = CloverPasses(self, batch, outputs, model)
        return self._passes

    def encode_masked_video(self, batch: dict, model):
        enc = model.video_encoder
        embeddings = enc.embed(batch["video"])
        mask = video_tube_masks(embeddings.shape[0], enc.grid, self.cfg.video_mask_ratio,
                                self.cfg.video_mask_min_block, self.cfg.video_mask_min_aspect)
        position = enc.pos_embed[:, None, 1:] + enc.time_embed[:, :, None]  # (1, T', N, D)
        masked = apply_video_mask(embeddings, mask, self.mask_token + position)
        return model.encode_video(batch["video"], batch.get("frame_mask"), patch_embeddings=masked)

    def select_text(self, batch: dict) -> torch.Tensor:
        ids = batch["input_ids"]
        if self.cfg.text_masking == "semantic":
            if "knowledge" not in batch:
                raise KeyError("clover.text_masking=semantic needs the captions' knowledge in the batch")
            return semantic_selection(batch["knowledge"], batch["token_offsets"], ids.shape[1],
                                      self.cfg.text_mask_ratio)
        return random_selection(ids, self.tokenizer.special_token_ids, self.cfg.random_mask_prob)

    def encode_masked_text(self, batch: dict, model):
        tok = self.tokenizer
        selected = self.select_text(batch) & batch["attention_mask"].bool().cpu()
        masked_ids, labels = corrupt_tokens(batch["input_ids"], selected, tok.mask_token_id, tok.vocab_size,
                                            tok.special_token_ids, self.cfg.mask_replace_prob,
                                            self.cfg.mask_random_prob)
        return model.encode_text(masked_ids, batch["attention_mask"]), labels

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
            from structvl.config import ConfigError
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


class CloverAlignObjective(_CloverObjective):
    """Tri-modal alignment ("exclusive NCE") with the video and the text as anchors."""

    name = "clover_align"

    def forward(self, batch, outputs, model) -> dict:
        p = self.clover.passes(batch, outputs, model)
        scale = model.logit_scale
        f_vm = p.fused_masked_video()
        f_tm = p.fused_masked_text()
        video_pool_fused, text_pool_fused = (f_vm, f_tm) if self.clover.cfg.fused_pool == "spec" else (f_tm, f_vm)
        v_anchor = exclusive_nce(outputs.video.embed, [outputs.text.embed, p.masked_text()[0].embed,
                                                       video_pool_fused], scale)
        t_anchor = exclusive_nce(outputs.text.embed, [outputs.video.embed, p.masked_video().embed,
                                                      text_pool_fused], scale)
        return {"loss": v_anchor["loss"] + t_anchor["loss"], "video_anchor": v_anchor["loss"].detach(),
                "text_anchor": t_anchor["loss"].detach()}


class CloverRankObjective(_CloverObjective):
    """Pair-wise ranking: the complete pair beats the semantically masked one by a margin, both anchors."""

    name = "clover_rank"
    needs_fusion = False

    def forward(self, batch, outputs, model) -> dict:
        p = self.clover.passes(batch, outputs, model)
        scale, margin = model.logit_scale, self.clover.cfg.rank_margin
        v, t = outputs.video.embed, outputs.text.embed
        tm, vm = p.masked_text()[0].embed, p.masked_video().embed
        text_side = pairwise_ranking(v, t, tm, scale, margin)
        video_side = pairwise_ranking(t, v, vm, scale, margin)
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
        fused = p.fused_masked_text_output()
        where = labels != -100
        logits = model.mlm_logits(fused.text_states[where])
        target = labels[where]
        loss = focal_mlm_loss(logits, target, self.clover.cfg.focal_gamma)
        with torch.no_grad():
            acc = (logits.argmax(-1) == target).float().mean() if target.numel() else loss.new_zeros(())
        return {"loss": loss, "accuracy": acc, "masked_tokens": torch.tensor(float(target.numel()))}

    def evaluate(self, model, cfg, tokenizer, device) -> dict:
        return evaluate_masked_words(model, cfg, tokenizer, device)


# ---------------------------------------------------------------- evaluation: fill in the masked word
@torch.no_grad()
def evaluate_masked_words(model, cfg, tokenizer, device=torch.device("cpu")) -> dict[str, float]:
    """MLM accuracy through the fusion encoder on the test captions (`eval.split`, first caption per clip).

    Every noun and every verb phrase of a caption is masked *alone* (all its word pieces -> [MASK]) and predicted
    from the rest of the caption and the clip's video: on the structured corpus the nouns are the shapes and
    the verbs the actions, so this is a fill-in-the-blank QA on what is in the video. The same is measured with
    another test clip's video ("shuffled_video"): the gap between the two is what the fusion reads from the video
    rather than from the caption's words.
    Returns clover_mlm/{accuracy, noun_accuracy, verb_accuracy, accuracy_shuffled_video, ...} (token-level, %).
    """
    from pathlib import Path

    from structvl.data.formats import read_annotations
    from structvl.data.knowledge import KnowledgeCache, knowledge_for
    from structvl.data.masking import candidate_units, unit_token_groups
    from structvl.models.video_encoder import VideoEncoderOutput
    from structvl.tasks.evaluate import eval_loader

    if model.fusion is None:
        return {}
    root = Path(cfg.data.root)
    records = read_annotations(cfg.data.format, root / cfg.eval.split)
    if cfg.clover.eval_max_captions:
        records = records[:cfg.clover.eval_max_captions]
    video_root = Path(cfg.data.videos) if cfg.data.videos else root
    cache_dir = Path(cfg.knowledge.cache_dir or root / "knowledge_cache")
    autocast_context = autocast(device, autocast_dtype(cfg.train.precision, device))
    was_training = model.training
    model.eval()
    correct = {"noun": 0, "verb": 0, "shuffled": 0}
    total = {"noun": 0, "verb": 0, "shuffled": 0}
    units_seen = 0
    tally = NonFiniteTally("clover_mlm")
    with KnowledgeCache(cache_dir) as cache:
        for batch in eval_loader(records, cfg, video_root, tokenizer):
            captions = batch["caption"]
            knowledge = knowledge_for(captions, cache)
            enc, offsets = tokenizer.encode_with_offsets(captions)
            rows, kinds, owners = [], [], []
            for b, (k, offs) in enumerate(zip(knowledge, offsets)):
                for kind, tokens in unit_token_groups(k.words, candidate_units(k.words), offs):
                    rows.append(tokens)
                    kinds.append(kind)
                    owners.append(b)
            if not rows:
                continue
            units_seen += len(rows)
            ids = enc["input_ids"][owners].clone()
            labels = torch.full_like(ids, -100)
            for r, tokens in enumerate(rows):
                labels[r, tokens] = ids[r, tokens]
                ids[r, tokens] = tokenizer.mask_token_id
            attention = enc["attention_mask"][owners]
            with autocast_context:
                video = model.video_encoder(batch["video"].to(device), batch["frame_mask"].to(device))
                text = model.text_encoder(ids.to(device), attention.to(device))
                n = len(captions)
                for shuffled in ([False, True] if n > 1 else [False]):
                    owner = torch.tensor(owners, device=device)
                    if shuffled:  # the next clip's video in the batch: a different scene
                        owner = (owner + 1) % n
                    fused = model.fuse(VideoEncoderOutput(pooled=video.pooled[owner], tokens=video.tokens[owner],
                                                          frame_mask=video.frame_mask[owner]), text)
                    where = labels.to(device) != -100
                    hit = top1_hits(model.mlm_logits(fused.text_states[where]).float(), labels.to(device)[where],
                                    tally).cpu()  # a non-finite logit: a miss
                    row_of = where.nonzero()[:, 0].cpu()
                    if shuffled:
                        correct["shuffled"] += int(hit.sum())
                        total["shuffled"] += hit.numel()
                    else:
                        for kind in ("noun", "verb"):
                            sel = torch.tensor([kinds[r] == kind for r in row_of.tolist()], dtype=torch.bool)
                            correct[kind] += int(hit[sel].sum())
                            total[kind] += int(sel.sum())
    model.train(was_training)
    pct = lambda c, t: 100.0 * c / t if t else float("nan")  # noqa: E731
    return tally.report({
        "clover_mlm/accuracy": pct(correct["noun"] + correct["verb"], total["noun"] + total["verb"]),
        "clover_mlm/noun_accuracy": pct(correct["noun"], total["noun"]),
        "clover_mlm/verb_accuracy": pct(correct["verb"], total["verb"]),
        "clover_mlm/accuracy_shuffled_video": pct(correct["shuffled"], total["shuffled"]),
        "clover_mlm/masked_units": float(units_seen),
    })
