"""CLOP: video-language pre-training with knowledge regularizations (Li et al.).

CLOP's abstract names two regularizations built from *structural knowledge*, the objects, attributes,
actions and relations a caption states (parsed with spaCy in structvl.data.knowledge):

* SKP, Structural Knowledge Prediction (`clop_skp`): "pull together the latent representations of similar
  videos". Heads predict the caption's knowledge from the video embedding (multi-label BCE, one head per
  type; optionally from the text embedding too). An optional term aligns the batch's video-video cosine
  similarities with the knowledge similarity (Jaccard) of their captions.
* KCL, knowledge-guided sampling for contrastive learning (`clop_kcl`): "push apart cross-modal hard
  negatives". It *is* the video-text InfoNCE (so recipes set `contrastive: 0` when they turn it on), with
  (i) knowledge-guided sampling: in-batch negatives re-weighted by how much knowledge they share with the
      positive (`kcl_negative_weighting`), and/or batches built from clips that share knowledge
      (`KnowledgeGroupedSampler`, `kcl_batch_sampler`);
  (ii) knowledge-guided construction: captions with exactly one knowledge element swapped for another of
      the same type, added to the video->text denominator (`kcl_construct`).
  Not in the paper, off by default: `kcl_shortcut_penalty`, which keeps the text encoder from learning to
  spot a swapped caption without the video (`text_shortcut_penalty`; KnowledgeContrastiveObjective says why).

The paper's full text was not available to us: everything past the abstract is a reconstruction (see
docs/methods-spec.md, "CLOP"), and every choice is an option of `ClopConfig` in structvl/config.py.
"""

from __future__ import annotations

import random
from dataclasses import replace

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import IterableDataset

from structvl.data.knowledge.swaps import SwapSettings
from structvl.data.knowledge.vocab import multi_hot
from structvl.data.knowledge_sampler import KnowledgeGrouping, build_knowledge_sampler
from structvl.data.text import TokenCache
from structvl.objectives.contrastive import info_nce
from structvl.objectives.passes import TextInput
from structvl.runtime.distributed import all_gather_no_grad, all_gather_with_grad, rank
from structvl.runtime.precision import full_precision


# ----------------------------------------------------------------------------- knowledge similarity
def jaccard(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise Jaccard overlap (A, B) of the label sets in multi-hot rows; 0 where both sets are empty."""
    inter = a @ b.t()
    union = a.sum(1, keepdim=True) + b.sum(1) - inter
    return inter / union.clamp(min=1.0)


# ----------------------------------------------------------------------------- SKP
class KnowledgePredictionObjective(nn.Module):
    """Predict the caption's knowledge labels from the shared-space video embedding (multi-label BCE).

    Predicting from the *shared* embedding (the one retrieval uses) is what makes videos with the same
    knowledge move together there; a head on a deeper feature would leave the retrieval space untouched. That
    is also its cost: labels weighted strongly enough to teach the encoder bend the shared space to them.
    [extension] `clop.skp_input=encoder` puts the heads on the encoder's pooled feature instead, so what they
    teach reaches retrieval only through the contrastive terms (docs/findings.md, CLOP, compares the two).
    """

    needs_knowledge = True

    def __init__(self, cfg, model, context):
        super().__init__()
        if context.vocab is None:
            raise ValueError("clop_skp needs the knowledge vocabulary (built by run_pretraining)")
        self.vocab, self.types = context.vocab, [t for t in cfg.clop.skp_types if context.vocab.size(t) > 0]
        self.from_text, self.similarity_weight = cfg.clop.skp_from_text, cfg.clop.skp_similarity_weight
        self.reduction = cfg.clop.skp_reduction
        self.type_weights = {kind: float(cfg.clop.skp_type_weights.get(kind, 1.0)) for kind in self.types}
        self.video_targets = cfg.clop.skp_targets == "video"
        # What each type's head reads: "shared" (the retrieval embedding) or "encoder" (the pooled encoder feature);
        # clop.skp_type_inputs overrides clop.skp_input per type.
        self.inputs = {kind: cfg.clop.skp_type_inputs.get(kind, cfg.clop.skp_input) for kind in self.types}
        self.used_inputs = sorted(set(self.inputs.values()))
        if self.from_text and "encoder" in self.used_inputs:
            raise ValueError("config keys 'clop.skp_input=encoder' (or skp_type_inputs) and 'clop.skp_from_text': the "
                             "text embedding has no place in the video encoder's feature space; use skp_input=shared")
        dims = {"shared": cfg.model.embed_dim, "encoder": model.video_encoder.width if model is not None else None}
        hidden = cfg.clop.skp_hidden
        self.heads = nn.ModuleDict({
            kind: (nn.Sequential(nn.Linear(dims[self.inputs[kind]], hidden), nn.GELU(),
                                 nn.Linear(hidden, self.vocab.size(kind)))
                   if hidden > 0 else nn.Linear(dims[self.inputs[kind]], self.vocab.size(kind)))
            for kind in self.types})
        # Batch-normalised head inputs (clop.skp_input_norm="batch"): the heads read how a clip's embedding differs
        # from the batch's, not the direction all clips share. One norm per video input - "video" for skp_input (the
        # name checkpoints have always used), "video_shared"/"video_encoder" for a per-type other - and "text" for
        # the caption side; statistics are per rank.
        self.norm_keys = {used: "video" if used == cfg.clop.skp_input else f"video_{used}" for used in self.used_inputs}
        norm_dims = {self.norm_keys[used]: dims[used] for used in self.used_inputs}
        if self.from_text:
            norm_dims["text"] = dims["shared"]
        self.input_norm = (nn.ModuleDict({key: nn.BatchNorm1d(dim, affine=False) for key, dim in norm_dims.items()})
                           if cfg.clop.skp_input_norm == "batch" else None)
        if cfg.clop.skp_prior_init and self.vocab.total:
            self.init_biases_to_prior()

    @torch.no_grad()
    def init_biases_to_prior(self) -> None:
        """Each output bias := log(p / (1 - p)), p the label's share of the training captions (the vocabulary's
        counts out of `vocab.total`, counted by the knowledge pass), so the heads start at the label prior and
        the first gradient on the video embedding tells clips apart instead of pushing them all the same way
        (clop.skp_prior_init; the RetinaNet prior initialisation)."""
        for kind in self.types:
            counts = torch.tensor(self.vocab.counts(kind), dtype=torch.float32)
            p = (counts / max(1, self.vocab.total)).clamp(1e-4, 1 - 1e-4)
            last = self.heads[kind][-1] if isinstance(self.heads[kind], nn.Sequential) else self.heads[kind]
            last.bias.copy_(torch.log(p / (1 - p)))

    def normalised(self, embed: torch.Tensor, side: str, used: str) -> torch.Tensor:
        if self.input_norm is None:
            return embed
        norm = self.input_norm["text" if side == "text" else self.norm_keys[used]]
        if norm.training and embed.shape[0] < 2:  # one clip has no batch statistics: use the running ones
            return F.batch_norm(embed.float(), norm.running_mean, norm.running_var, training=False, eps=norm.eps)
        return norm(embed.float())

    def predict(self, embed: torch.Tensor | dict[str, torch.Tensor], side: str = "video") -> dict[str, torch.Tensor]:
        """Logits per type from `embed`: one tensor that every head reads, or {"shared"/"encoder": tensor} by input."""
        features = embed if isinstance(embed, dict) else {used: embed for used in self.used_inputs}
        normed = {used: self.normalised(features[used], side, used) for used in self.used_inputs}
        return {kind: head(normed[self.inputs[kind]]) for kind, head in self.heads.items()}

    def bce(self, embed: torch.Tensor | dict[str, torch.Tensor], targets: dict[str, torch.Tensor],
            side: str = "video") -> torch.Tensor:
        """Multi-label BCE per type, times the type's weight (clop.skp_type_weights), averaged over the types;
        within a type averaged over labels ("mean") or summed over them ("sum", clop.skp_reduction), then
        averaged over clips."""
        logits = self.predict(embed, side)
        per_type = [F.binary_cross_entropy_with_logits(logits[k].float(), targets[k], reduction="none")
                    for k in self.types]
        per_type = [b.mean() if self.reduction == "mean" else b.sum(1).mean() for b in per_type]
        return sum(self.type_weights[k] * b for k, b in zip(self.types, per_type)) / len(self.types)

    @classmethod
    def prepare_context(cls, cfg, context, cache) -> None:
        if cfg.clop.skp_targets == "video":  # the batch must carry each clip's captions' knowledge
            context.knowledge = replace(context.knowledge, video_knowledge=True)

    def targets(self, batch: dict) -> dict[str, torch.Tensor]:
        """{type: (B, size)} 0/1 labels of each clip: its caption's knowledge, or with skp_targets="video" the
        union over the knowledge of all captions of its record (`batch["video_knowledge"]`)."""
        if not self.video_targets:
            return self.vocab.encode_batch(batch["knowledge"])
        if "video_knowledge" not in batch:
            raise KeyError("clop.skp_targets=video needs batch['video_knowledge'] (KnowledgeLookup.video_knowledge)")
        per_clip = [{k: v.amax(0) for k, v in self.vocab.encode_batch(knowledges or [knowledge]).items()}
                    for knowledge, knowledges in zip(batch["knowledge"], batch["video_knowledge"])]
        return {kind: torch.stack([t[kind] for t in per_clip]) for kind in per_clip[0]}

    def forward(self, batch: dict, outputs, model) -> dict[str, torch.Tensor]:
        device = outputs.video.embed.device
        targets = {k: v.to(device) for k, v in self.targets(batch).items()}
        video = {"shared": outputs.video.embed, "encoder": outputs.video.encoder.pooled}
        out = {"video_bce": self.bce(video, targets)}
        loss = out["video_bce"]
        if self.from_text:
            out["text_bce"] = self.bce(outputs.text.embed, targets, side="text")
            loss = loss + out["text_bce"]
        if self.similarity_weight > 0:
            # Video-video cosine similarity should follow the captions' knowledge overlap (off-diagonal pairs).
            labels = multi_hot(batch["knowledge"], self.vocab, self.types).to(device)
            all_video = all_gather_with_grad(outputs.video.embed)
            all_labels = all_gather_no_grad(labels)
            with full_precision(device.type):
                sim = outputs.video.embed.float() @ all_video.float().t()
            knowledge_sim = jaccard(labels, all_labels)
            off_diagonal = (torch.eye(len(labels), all_video.shape[0], device=device,
                                      dtype=torch.bool).roll(rank() * len(labels), dims=1) == 0)
            out["similarity"] = F.mse_loss(sim[off_diagonal], knowledge_sim[off_diagonal])
            loss = loss + self.similarity_weight * out["similarity"]
        out["loss"] = loss
        return out


# ----------------------------------------------------------------------------- KCL objective
SWAPS = "clop_kcl/swapped_captions"  # the request key of the swapped captions (objectives/passes.py)


class KnowledgeContrastiveObjective(nn.Module):
    """The video-text InfoNCE with knowledge-guided negatives (replaces `contrastive` in a recipe).

    v->t denominator of video i: the global batch's captions, each negative j weighted by
    1 + kcl_weight_strength * Jaccard(knowledge_i, knowledge_j) (sampling, re-weighting form), plus up to
    kcl_negatives_per_caption swapped captions of its own caption (construction), weighted by
    kcl_negative_weight.

    The swapped captions go through the text encoder with gradient (`kcl_negatives_train_text`), which cuts
    both ways: it teaches the text side the swapped words ("rotates" is not "bounces"), and it lets the text
    side learn to spot a constructed caption without the video, since some swaps read wrong as text. The
    hard-negative benchmark's twins are built the same way, so that shortcut scores there too; its `blind`
    control (the pairs against the mean test video) shows how much of a gain is text-side.
    [extension] `kcl_shortcut_penalty` > 0 adds `text_shortcut_penalty`: against the other clips' videos a
    caption and its swaps must score alike on average, so the text side keeps what tells the swapped word apart
    for the clip's own video and loses what tells a constructed caption from a real one.
    Uniform swaps make a frequent label (e.g. "stay") rarely the negative and so mostly the truth, which a model
    can learn as a preference; `kcl_swap_sampling: frequency` draws labels as captions use them.
    What each of these measured on the structured corpus is in docs/findings.md, CLOP.
    """

    needs_knowledge = True

    def __init__(self, cfg, model, context):
        super().__init__()
        self.cfg, self.vocab, self.tokenizer = cfg.clop, context.vocab, context.tokenizer
        # Each swapped caption is tokenised once and its ids kept: the same captions recur every epoch.
        self.tokens = TokenCache(self.tokenizer) if self.tokenizer is not None else None

    @classmethod
    def knowledge_swaps(cls, cfg) -> SwapSettings | None:
        """The swapped captions construction reads from `batch["swaps"]` (built by `structvl knowledge`)."""
        if not cfg.clop.kcl_construct:
            return None
        return SwapSettings.make(cfg.clop.kcl_swap_types, per_type=max(2, cfg.clop.kcl_negatives_per_caption // 2),
                                 seed=cfg.train.seed, exclude=cfg.knowledge.exclude,
                                 sampling=cfg.clop.kcl_swap_sampling)

    @classmethod
    def batch_sampler(cls, cfg, dataset, context, world_size: int, rank: int):
        """KCL's knowledge-grouped batches (`clop.kcl_batch_sampler`): a sampler for a map-style dataset, a
        grouping stage for a streaming one (`KnowledgeGrouping`); None for the engine's own order."""
        if not cfg.clop.kcl_batch_sampler:
            return None
        if isinstance(dataset, IterableDataset):
            return KnowledgeGrouping(context.knowledge, context.vocab, list(cfg.clop.kcl_types),
                                     group_size=cfg.clop.kcl_sampler_groups, buffer=cfg.data.shuffle_buffer)
        return build_knowledge_sampler(dataset, context.knowledge, context.vocab, list(cfg.clop.kcl_types),
                                       world_size, rank, seed=cfg.train.seed, group_size=cfg.clop.kcl_sampler_groups)

    def _weights(self, batch: dict, device) -> torch.Tensor:
        labels = multi_hot(batch["knowledge"], self.vocab, list(self.cfg.kcl_types)).to(device)
        all_labels = all_gather_no_grad(labels)
        return 1.0 + self.cfg.kcl_weight_strength * jaccard(labels, all_labels)

    def _pick(self, batch: dict) -> tuple[list[str], list[int]]:
        """The swapped negatives drawn for this batch: their texts, in caption order, and how many each caption got."""
        k = self.cfg.kcl_negatives_per_caption
        if "swaps" not in batch:
            raise KeyError("clop.kcl_construct needs batch['swaps'] (the run's KnowledgeLookup with a SwapContext)")
        # Python's `random` is in every checkpoint's RNG state, so a resumed run draws the same negatives.
        picked = [random.sample(list(swaps), min(k, len(swaps))) for swaps in batch["swaps"]]
        return [text for row in picked for text, _ in row], [len(row) for row in picked]

    def requests(self, batch: dict, model) -> dict:
        """The swapped captions, to be encoded with the batch's captions (objectives/passes.py)."""
        if not self.cfg.kcl_construct:
            return {}
        texts, counts = self._pick(batch)
        tokens = {k: v.to(batch["input_ids"].device) for k, v in self.tokens(texts).items()}
        return {SWAPS: TextInput(tokens["input_ids"], tokens["attention_mask"],
                                 grad=self.cfg.kcl_negatives_train_text, meta=counts)}

    def _constructed(self, batch: dict, outputs, model, device) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(B, K, E) embeddings of each caption's swapped negatives, and the (B, K) mask of real ones."""
        encoded = getattr(outputs, "extra", {}).get(SWAPS)
        if encoded is not None:  # drawn and encoded with the batch's captions
            embed, counts = encoded.output.embed, encoded.input.meta
        else:
            texts, counts = self._pick(batch)
            if not texts:
                return None
            tokens = self.tokens(texts)
            with torch.set_grad_enabled(torch.is_grad_enabled() and self.cfg.kcl_negatives_train_text):
                embed = model.encode_text(tokens["input_ids"].to(device), tokens["attention_mask"].to(device)).embed
        if not sum(counts):
            return None
        k = self.cfg.kcl_negatives_per_caption
        rows = torch.tensor([i for i, n in enumerate(counts) for _ in range(n)], device=device)
        cols = torch.tensor([j for n in counts for j in range(n)], device=device)
        out = embed.new_zeros(len(counts), k, embed.shape[1]).index_put((rows, cols), embed)
        mask = torch.zeros(len(counts), k, dtype=torch.bool, device=device).index_put(
            (rows, cols), torch.ones(len(rows), dtype=torch.bool, device=device))
        return out, mask

    def forward(self, batch: dict, outputs, model) -> dict[str, torch.Tensor]:
        video, text = outputs.video.embed, outputs.text.embed
        weights = self._weights(batch, video.device) if self.cfg.kcl_negative_weighting else None
        extra = self._constructed(batch, outputs, model, video.device) if self.cfg.kcl_construct else None
        out = info_nce(video, text, model.logit_scale, video_negative_weights=weights,
                       extra_text_negatives=None if extra is None else extra[0],
                       extra_negative_mask=None if extra is None else extra[1],
                       extra_negative_weight=self.cfg.kcl_negative_weight)
        if extra is not None and self.cfg.kcl_shortcut_penalty > 0:
            penalty = text_shortcut_penalty(video, text, extra[0], extra[1], model.logit_scale.detach())
            out["shortcut_penalty"] = penalty
            out["loss"] = out["loss"] + self.cfg.kcl_shortcut_penalty * penalty
        if extra is not None:
            with torch.no_grad():  # how often the true caption already beats its swapped twins
                true_score = (video * text).sum(-1, keepdim=True)
                swapped_score = torch.einsum("be,bke->bk", video, extra[0])
                wins = (true_score > swapped_score) & extra[1]
                out["swap_accuracy"] = wins.sum() / extra[1].sum().clamp(min=1)
        return out


def text_shortcut_penalty(video: torch.Tensor, text: torch.Tensor, swapped: torch.Tensor, mask: torch.Tensor,
                          scale: torch.Tensor) -> torch.Tensor:
    """Mean squared logit gap between a caption and each of its swaps, averaged over the *other* clips' videos.

    video, text: (B, E) paired embeddings; swapped: (B, K, E) caption i's swapped negatives, mask (B, K).
    A swap changes one element of caption i, so a clip j != i has no reason to prefer either: gap_ik =
    scale * mean_{j != i} v_j . (t_i - s_ik) should be 0. A text encoder that learned to spot constructed
    captions without the video (the shortcut in the class docstring) makes it positive for every clip. Videos
    enter without gradient: the penalty only asks the text side to drop what it can tell without them.
    The other clips are this rank's (an unbiased estimate of the mean; no gather needed).
    """
    batch = video.shape[0]
    if batch < 2:
        return video.new_zeros(())
    video = video.detach().float()
    others = (video.sum(0, keepdim=True) - video) / (batch - 1)  # (B, E): mean of the other clips' videos
    with full_precision(video.device.type):  # fp32 logits (runtime/precision.py says why)
        gap = scale * torch.einsum("be,bke->bk", others, text.float().unsqueeze(1) - swapped.float())
    return (gap.square() * mask).sum() / mask.sum().clamp(min=1)
