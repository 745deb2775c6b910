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
../shared/spec/methods.md, "CLOP"), and every choice is an option of `ClopConfig` in structvl/config.py.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from structvl.data.knowledge import CaptionKnowledge, KnowledgeVocab, knowledge_for
from structvl.runtime.distributed import all_gather_with_grad
from structvl.runtime.nonfinite import NonFiniteTally, pessimistic_order
from structvl.runtime.precision import autocast_dtype
from structvl.engine.sampler import ResumableDistributedSampler
from structvl.objectives.contrastive import info_nce


# ----------------------------------------------------------------------------- knowledge similarity
def multi_hot(knowledges: list[CaptionKnowledge], vocab: KnowledgeVocab, types: list[str]) -> torch.Tensor:
    """(B, sum of vocabulary sizes) 0/1 matrix of each caption's in-vocabulary knowledge labels."""
    targets = vocab.encode_batch(knowledges)
    return torch.cat([targets[kind] for kind in types], dim=1)


def jaccard(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise Jaccard overlap (A, B) of the label sets in multi-hot rows; 0 where both sets are empty."""
    inter = a @ b.t()
    union = a.sum(1, keepdim=True) + b.sum(1) - inter
    return inter / union.clamp(min=1.0)


# ----------------------------------------------------------------------------- SKP
class KnowledgePredictionObjective(nn.Module):
    """Predict the caption's knowledge labels from the shared-space video embedding (multi-label BCE).

    Predicting from the *shared* embedding (the one retrieval uses) is what makes videos with the same
    knowledge move together there; a head on a deeper feature would leave the retrieval space untouched.
    That is also its cost: action labels strong enough to teach the encoder motion (weight 4) bend the shared
    space to them and t2v retrieval falls (R@1 46.0 vs 63.5). `clop.skp_input=encoder` puts the heads on the
    encoder's pooled feature instead; the motion they teach then reaches retrieval only through the contrastive
    terms. On the action labels at weight 4 beside the plain InfoNCE (the demo's `clop_motion_skp`) that is
    the best CLOP variant measured: hard negatives 81.0 vs 70.3 and t2v R@1 70.8 vs 62.2 (3 seeds, 400 steps;
    docs/findings.md, stop 18). With KCL added (`clop_motion`) both were lower, 79.2 and 59.7, because its
    sampler grouped batches by action; grouped by attributes (`clop_motion_sampling`, stop 20) they are 81.1 and 74.2.
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
        self.knowledge, self.videos_captions = context.knowledge, context.videos_captions
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
        if cfg.clop.skp_prior_init and context.knowledge:
            self.init_biases_to_prior(list(context.knowledge.values()))

    @torch.no_grad()
    def init_biases_to_prior(self, knowledges: list[CaptionKnowledge]) -> None:
        """Each output bias := log(p / (1 - p)), p the label's share of `knowledges` (the training captions), so
        the heads start at the label prior and the first gradient on the video embedding tells clips apart
        instead of pushing them all the same way (clop.skp_prior_init; the RetinaNet prior initialisation)."""
        counts = {kind: torch.zeros(self.vocab.size(kind)) for kind in self.types}
        for start in range(0, len(knowledges), 4096):  # chunked: a web-scale corpus has millions of captions
            for kind, hot in self.vocab.encode_batch(knowledges[start:start + 4096]).items():
                if kind in counts:
                    counts[kind] += hot.sum(0)
        for kind in self.types:
            p = (counts[kind] / max(1, len(knowledges))).clamp(1e-4, 1 - 1e-4)
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

    def targets(self, batch: dict) -> dict[str, torch.Tensor]:
        """{type: (B, size)} 0/1 labels of each clip: its caption's knowledge, or with skp_targets="video" the
        union over all training captions of its video."""
        if not self.video_targets:
            return self.vocab.encode_batch(batch["knowledge"])
        per_clip = []
        for video_id, knowledge in zip(batch["video_id"], batch["knowledge"]):
            captions = self.videos_captions.get(video_id, [])
            knowledges = [self.knowledge[c] for c in captions if c in self.knowledge] or [knowledge]
            per_clip.append({k: v.amax(0) for k, v in self.vocab.encode_batch(knowledges).items()})
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
            all_labels = torch.cat(_gather_no_grad(labels))
            sim = outputs.video.embed @ all_video.t()
            knowledge_sim = jaccard(labels, all_labels)
            off_diagonal = (torch.eye(len(labels), all_video.shape[0], device=device,
                                      dtype=torch.bool).roll(_rank() * len(labels), dims=1) == 0)
            out["similarity"] = F.mse_loss(sim[off_diagonal].float(), knowledge_sim[off_diagonal])
            loss = loss + self.similarity_weight * out["similarity"]
        out["loss"] = loss
        return out

    @torch.no_grad()
    def evaluate(self, model, cfg, tokenizer, device) -> dict[str, float]:
        """SKP mAP on the test split: average precision of each in-vocabulary label that occurs in the test
        captions, ranking the test videos by the predicted probability; chance = a random ranking."""
        from pathlib import Path

        from structvl.data.formats import read_annotations
        from structvl.data.knowledge import KnowledgeCache
        from structvl.tasks.evaluate import eval_loader
        from structvl.tasks.retrieval import embed_videos

        root = Path(cfg.data.root)
        records = read_annotations(cfg.data.format, root / cfg.eval.split)
        autocast = autocast_dtype(cfg.train.precision, device)
        video_root = Path(cfg.data.videos) if cfg.data.videos else root
        was_training = self.training
        self.eval()
        video_embed = {}
        for used in self.used_inputs:
            video_embed[used], kept = embed_videos(model, eval_loader(records, cfg, video_root, tokenizer), device,
                                                   autocast, pooled=used == "encoder")
        with KnowledgeCache(Path(cfg.knowledge.cache_dir or root / "knowledge_cache")) as cache:
            # a test video's knowledge: the labels of all of its captions
            per_caption = knowledge_for([c for i in kept for c in records[i].captions], cache)
        per_video, position = [], 0
        for i in kept:
            n = len(records[i].captions)
            merged = self.vocab.encode_batch(per_caption[position:position + n])
            per_video.append({k: v.amax(0) for k, v in merged.items()})
            position += n
        scores = self.predict({used: e.to(device).float() for used, e in video_embed.items()})
        self.train(was_training)
        metrics, all_ap, all_chance = {}, [], []
        tally = NonFiniteTally("clop")
        for kind in self.types:
            tally.add(scores[kind])
            target = torch.stack([v[kind] for v in per_video])
            ap, chance = average_precision(scores[kind].float().cpu(), target)
            metrics[f"clop/skp_mAP/{kind}"] = 100.0 * float(np.mean(ap)) if ap else float("nan")
            all_ap += ap
            all_chance += chance
        metrics["clop/skp_mAP"] = 100.0 * float(np.mean(all_ap)) if all_ap else float("nan")
        metrics["clop/skp_mAP_chance"] = 100.0 * float(np.mean(all_chance)) if all_chance else float("nan")
        return tally.report(metrics)


def average_precision(scores: torch.Tensor, targets: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per column (label) with at least one positive: AP of ranking rows by score (mean of the precision at
    each positive's rank), and the label's prevalence (the expected AP of a random ranking, for chance)."""
    aps, prevalences = [], []
    for j in range(targets.shape[1]):
        positives = targets[:, j] > 0
        if not positives.any():
            continue
        order = pessimistic_order(scores[:, j], positives)  # a non-finite score ranks as the worst
        hits = positives[order].float()
        precision_at_hit = hits.cumsum(0) / torch.arange(1, len(hits) + 1)
        aps.append(float((precision_at_hit * hits).sum() / hits.sum()))
        prevalences.append(float(hits.mean()))
    return aps, prevalences


# ----------------------------------------------------------------------------- KCL (ii): construction
def _tag_class(tag: str) -> str:
    """Proper-noun tags are spaCy's frequent misreading of shape nouns ("cross"): match them as common nouns."""
    return {"NNP": "NN", "NNPS": "NNS"}.get(tag, tag)


def _span_tag(knowledge: CaptionKnowledge, start: int) -> str:
    word = next((w for w in knowledge.words if w["start"] == start), None)
    return _tag_class(word["tag"]) if word else ""


def _label(element: dict) -> str:
    """The swappable part of an element: relations swap their predicate, keeping subject and object."""
    return element["label"].split("|")[1] if element["type"] == "relation" else element["label"]


def surface_forms(knowledges: list[CaptionKnowledge]) -> dict[tuple[str, str, str], list[str]]:
    """(type, label, tag of the first word) -> the caption texts that express it, most frequent first.

    Replacements are taken from how the corpus itself words each element ("slides to the left of", "is
    spinning"), in the same inflection as the text they replace, so swapped captions stay grammatical
    without an inflection grammar."""
    counts: dict[tuple[str, str, str], Counter] = defaultdict(Counter)
    for k in knowledges:
        for element in k.element_spans:
            if len(element["spans"]) != 1:
                continue
            start, end = element["spans"][0]
            counts[(element["type"], _label(element), _span_tag(k, start))][k.caption[start:end]] += 1
    return {key: [text for text, _ in c.most_common()] for key, c in counts.items()}


def paraphrase_pairs(videos_captions: list[list[str]], knowledge: dict[str, CaptionKnowledge],
                     min_videos: int = 5, ratio: float = 5.0) -> set[tuple[str, str, str]]:
    """(type, a, b) label pairs the corpus uses as *paraphrases* of each other ("big"/"large",
    "disk"/"circle"): swapping one for the other would make a false negative.

    Evidence from videos with several captions (MSR-VTT has 20): a and b alternate when one caption of a
    video says a, another says b, and no caption of it says both. Attributes are compared on the same noun
    ("big|square" vs "large|square"): a caption of two objects may well say "a big square and a large
    circle", so unbound attribute labels would look used together. Relations are compared by their predicate,
    the part a swap replaces, on the same subject and object ("beneath" vs "below" in "triangle|beneath|cross"
    and "triangle|below|cross"); compared as whole triples they never matched a swap, and "the triangle is
    beneath the cross" got "... below the cross" as a negative. Relations between two objects of the same
    name give no evidence: "the white triangle is above the orange triangle" and "the orange triangle is
    below the white triangle" are both "triangle|...|triangle", and would make "above" and "below" look like
    paraphrases. Pairs that alternate in at least
    `min_videos` videos and `ratio` times more often than they appear together in one caption are taken
    as paraphrases. A corpus with one caption per video gives no evidence and no pairs.
    """
    def items(k: CaptionKnowledge) -> set[tuple[str, str, str]]:  # (type, label, what it must share to compare)
        out = set()
        for kind, elements in knowledge_elements(k).items():
            for element in elements:
                if kind == "attribute":
                    label, _, noun = element.partition("|")
                elif kind == "relation":
                    subject, label, obj = element.split("|")
                    if subject == obj:
                        continue
                    noun = f"{subject}|{obj}"
                else:
                    label, noun = element, ""
                out.add((kind, label, noun))
        return out

    def comparable(a, b) -> bool:
        return a[0] == b[0] and a[2] == b[2] and a[1] < b[1]

    together, alternate = Counter(), Counter()
    for captions in videos_captions:
        sets = [items(knowledge[c]) for c in captions if c in knowledge]
        if len(sets) < 2:
            continue
        in_one = set().union(*[{(a[0], a[1], b[1]) for a in s for b in s if comparable(a, b)} for s in sets])
        union = set().union(*sets)
        for pair in {(a[0], a[1], b[1]) for a in union for b in union if comparable(a, b)}:
            (together if pair in in_one else alternate)[pair] += 1
    pairs = set()
    for (kind, a, b), n in alternate.items():
        if n >= min_videos and n >= ratio * together[(kind, a, b)]:
            pairs.update({(kind, a, b), (kind, b, a)})
    return pairs


def described_objects(knowledges: list[CaptionKnowledge], min_count: int = 2) -> set[str]:
    """Object labels the corpus describes with an attribute in at least `min_count` captions ("a red
    circle", "a black background"): things that can be swapped for one another. Nouns never described
    ("in this video", "staying in place") are parts of the phrasing, not of the scene; swapping them makes
    nonsense ("staying in circle") rather than a hard negative."""
    counts = Counter(noun for k in knowledges for noun in {noun for _, noun in k.attributes})
    return {noun for noun, n in counts.items() if n >= min_count}


def co_modifiers(knowledges: list[CaptionKnowledge]) -> set[tuple[str, str]]:
    """Attribute pairs seen modifying the same noun somewhere in the corpus ("big" + "blue"). An attribute
    swap that puts two never-combined modifiers on one noun ("big little disk") is rejected."""
    pairs = set()
    for k in knowledges:
        by_noun = defaultdict(set)
        for e in k.element_spans:
            if e["type"] == "attribute":
                by_noun[tuple(e["noun_span"])].add(e["label"])
        for labels in by_noun.values():
            pairs.update((a, b) for a in labels for b in labels if a != b)
    return pairs


def propose_swaps(knowledge: CaptionKnowledge, forms: dict, labels_by_type: dict[str, list[str]],
                  types: list[str], per_type: int, rng: random.Random,
                  paraphrases: set = frozenset(), combinable: set | None = None,
                  swappable_objects: set | None = None,
                  excluded: set = frozenset(),
                  label_weights: dict[str, dict[str, float]] | None = None) -> list[tuple[str, str, str, str]]:
    """Candidate hard negatives: (caption, type, old label, new label), each with one element's text
    replaced by a surface form of another label of the same type and inflection; objects only among
    `swappable_objects` (all when None); no (type, label) in `excluded`. The new label is drawn uniformly,
    or in proportion to `label_weights[type][label]` when given. Unvalidated."""
    def swappable(kind: str, label: str) -> bool:  # the same rule for the element replaced and its replacement
        return ((kind, label) not in excluded
                and (kind != "object" or swappable_objects is None or label in swappable_objects))

    out = []
    by_type = defaultdict(list)
    for element in knowledge.element_spans:
        if element["type"] in types and len(element["spans"]) == 1 and swappable(element["type"], element["label"]):
            by_type[element["type"]].append(element)
    for kind, elements in by_type.items():
        for _ in range(per_type):
            element = rng.choice(elements)
            start, end = element["spans"][0]
            tag, old = _span_tag(knowledge, start), _label(element)
            others = set()
            if kind == "attribute":  # the other modifiers of the same noun
                others = {e["label"] for e in knowledge.element_spans if e["type"] == "attribute"
                          and e["noun_span"] == element["noun_span"] and e is not element}
            choices = [label for label in labels_by_type[kind] if label != old and (kind, label, tag) in forms
                       and (kind, old, label) not in paraphrases
                       and swappable(kind, label)
                       and (combinable is None or all((label, o) in combinable for o in others))]
            if not choices:
                continue
            weights = None if label_weights is None else [label_weights[kind].get(label, 0.0) for label in choices]
            if weights is None or sum(weights) <= 0:  # a vocabulary saved without counts falls back to uniform
                new = rng.choice(choices)
            else:
                new = rng.choices(choices, weights=weights)[0]
            text = forms[(kind, new, tag)][0]
            caption = knowledge.caption[:start] + text + knowledge.caption[end:]
            if caption != knowledge.caption:
                out.append((caption, kind, old, new))
    return out


def knowledge_elements(k: CaptionKnowledge) -> dict[str, set[str]]:
    """A caption's knowledge as sets per type, attributes bound to their noun ("red|circle"): "a red star and
    a blue circle" -> "a red star and a red circle" changes an element even though "red" was there."""
    elements = {kind: set(labels) for kind, labels in k.labels().items()}
    elements["attribute"] = {f"{attribute}|{noun}" for attribute, noun in k.attributes}
    return elements


def differs_in_one_element(source: CaptionKnowledge, swapped: CaptionKnowledge, kind: str, old: str,
                           new: str) -> bool:
    """Whether the parse of a swapped caption states the source's knowledge with exactly `old` -> `new` of
    type `kind` (an object swap may rename that object inside attributes and relations; nothing else may
    change)."""
    a, b = knowledge_elements(source), knowledge_elements(swapped)

    def renamed(element: str, t: str) -> str:
        parts = element.split("|")
        if kind == "object":  # the object's attributes and relations follow it
            parts = [new if (p == old and (t == "relation" and i != 1 or t == "attribute" and i == 1)) else p
                     for i, p in enumerate(parts)]
        elif kind == "relation" and t == "relation":
            parts[1] = new if parts[1] == old else parts[1]
        elif kind == "attribute" and t == "attribute":
            parts[0] = new if parts[0] == old else parts[0]
        elif kind == "action" and t == "action":
            parts = [new] if element == old else parts
        elif kind == "action" and t == "relation" and (parts[1] + " ").startswith(old + " "):
            parts[1] = new + parts[1][len(old):]  # "slide left of" -> "move left of"
        return "|".join(parts)

    for t in a:
        added, removed = b[t] - a[t], a[t] - b[t]
        if t == kind and t == "object":
            if added != {new} or not removed <= {old}:
                return False
        elif t == kind or (kind == "object" and t in ("attribute", "relation")) or (
                kind == "action" and t == "relation"):
            # each changed element is a renamed source element, and the swapped type changed exactly once
            if not added <= {renamed(e, t) for e in a[t]} or len(b[t]) != len(a[t]):
                return False
            if t == kind and len(added) != 1:
                return False
        elif added or removed:
            return False
    return True


def build_swapped_negatives(knowledges: list[CaptionKnowledge], vocab: KnowledgeVocab, cache, types: list[str],
                            per_type: int, seed: int = 0,
                            videos_captions: list[list[str]] | None = None,
                            exclude: dict | None = None,
                            sampling: str = "uniform") -> dict[str, list[tuple[str, str]]]:
    """caption -> [(swapped caption, type)], every one parsed with spaCy and kept only when it differs from
    its source in exactly one knowledge element (see `differs_in_one_element`). Replacements that the
    corpus treats as paraphrases (`paraphrase_pairs`, from videos with several captions), modifiers never
    combined (`co_modifiers`) and nouns the corpus never describes (`described_objects`) are not proposed.
    sampling: "uniform" over the vocabulary, or "frequency" - each label as often as the captions use it,
    so that no label is rarer among the negatives than among the positives.
    Run once per corpus: the parses land in the knowledge cache."""
    forms = surface_forms(knowledges)
    by_caption = {k.caption: k for k in knowledges}
    paraphrases = paraphrase_pairs(videos_captions or [], by_caption)
    combinable = co_modifiers(knowledges)
    swappable_objects = described_objects(knowledges)
    labels_by_type = {kind: [_label({"type": kind, "label": label}) for label in vocab.labels(kind)]
                      for kind in types}
    labels_by_type = {kind: list(dict.fromkeys(labels)) for kind, labels in labels_by_type.items()}
    label_weights = None
    if sampling == "frequency":  # a relation's swappable part is its predicate: pool its labels' counts
        label_weights = {kind: defaultdict(float) for kind in types}
        for kind in types:
            for label, count in zip(vocab.labels(kind), vocab.counts(kind)):
                label_weights[kind][_label({"type": kind, "label": label})] += count
    rng = random.Random(seed)
    excluded = {(kind, label) for kind, labels in (exclude or {}).items() for label in labels}
    proposals = {k.caption: propose_swaps(k, forms, labels_by_type, types, per_type, rng, paraphrases, combinable,
                                          swappable_objects, excluded, label_weights) for k in knowledges}
    parsed = knowledge_for([c for props in proposals.values() for c, *_ in props], cache)
    parsed_by_caption = {k.caption: k for k in parsed}
    source = {k.caption: k for k in knowledges}
    negatives: dict[str, list[tuple[str, str]]] = {}
    for caption, props in proposals.items():
        kept = list(dict.fromkeys((c, kind) for c, kind, old, new in props
                                  if differs_in_one_element(source[caption], parsed_by_caption[c], kind, old, new)))
        negatives[caption] = kept
    return negatives


# ----------------------------------------------------------------------------- KCL objective
class KnowledgeContrastiveObjective(nn.Module):
    """The video-text InfoNCE with knowledge-guided negatives (replaces `contrastive` in a recipe).

    v->t denominator of video i: the global batch's captions, each negative j weighted by
    1 + kcl_weight_strength * Jaccard(knowledge_i, knowledge_j) (sampling, re-weighting form), plus up to
    kcl_negatives_per_caption swapped captions of its own caption (construction), weighted by
    kcl_negative_weight.

    The swapped captions go through the text encoder with gradient (`kcl_negatives_train_text`), which cuts
    both ways, measured on the structured corpus (structvl.lab.diagnostics.kcl_negative_accuracy, seed 0):
    - it teaches the text side that "rotates" is not "bounces": without it (negatives encoded without
      gradient, so only the video side learns from them) the benchmark's action hard negatives fall from 56.9
      to 51.1 at 150 steps (baseline 48.9);
    - it also lets the text side learn to spot a constructed caption without the video: at 1,000 steps the
      true caption beats its action swaps for *another* clip's video 66% of the time (baseline 49%). Part of
      the action vocabulary are light verbs ("get" bigger, "become", "can be seen"), whose swaps read wrong
      as text ("a big blue square is getting"), and "stay"/"remain" swap for each other although they say
      the same thing. `knowledge.exclude: {action: [get, become, see]}` keeps the light verbs out, but changes
      nothing measurable (150 steps, 3 seeds: overall 72.2±0.8 either way, action 57.6±1.0 vs 56.8±1.8,
      R@1 56.3±3.2 vs 56.0±2.3), so it is not the default.
    The shortcut carries over to the benchmark, whose twins are built the same way: against the mean test
    video, CLOP's captions beat their action twins 57.9% of the time at 400 steps (baseline 45.9%), so most of
    its hard-negative gain is text-side. `kcl_shortcut_penalty` > 0 adds `text_shortcut_penalty`: against the
    other clips' videos a caption and its swaps must score alike on average, so the text side keeps what tells
    "rotates" from "bounces" for the clip's own video and loses what tells a constructed caption from a real
    one. At 1 (400 steps, 3 seeds) the blind score falls to 45.6 and action accuracy stays (61.5 vs 60.7): the
    gain now depends on the clip, at a retrieval cost (v2t R@1 53.3 vs 58.7 default, 62.2 baseline). With
    the swaps restricted to actions (the demo's `clop_grounded` recipe) the cost goes: hard negatives 75.5 vs
    74.2 default and 70.2 baseline, R@1 level with the baseline both ways at 400 steps (t2v trails at 150).
    But the clip's *motion* is not what wins the action pairs: scored against the clip frozen to one frame
    (`hard_negative/static/action`; 400 steps, lr 5e-4, 2 seeds) `clop_grounded` keeps 58.5 of its 60.9
    (baseline 46.6 of 49.7), and the gain is a preference for "staying still" over any motion, which the
    benchmark's unbalanced pairs reward (`hard_negative/balanced/action`: 51.9 vs the baseline's 52.2;
    structvl.lab.diagnostics.hard_negative_pairs).
    Uniform swaps teach that preference: a frequent label such as "stay" is rarely swapped in, so it is far
    more often the truth than the negative; `kcl_swap_sampling: frequency` draws labels as captions use them.
    """

    needs_knowledge = True

    def __init__(self, cfg, model, context):
        super().__init__()
        self.cfg, self.vocab, self.tokenizer = cfg.clop, context.vocab, context.tokenizer
        self.negatives = context.extras.get("clop_swapped_negatives", {})
        if cfg.clop.kcl_construct and not self.negatives:
            raise ValueError("clop_kcl with kcl_construct needs the swapped captions from prepare_context")

    @classmethod
    def prepare_context(cls, cfg, context, cache) -> None:
        if cfg.clop.kcl_construct:
            context.extras["clop_swapped_negatives"] = build_swapped_negatives(
                list(context.knowledge.values()), context.vocab, cache, list(cfg.clop.kcl_swap_types),
                per_type=max(2, cfg.clop.kcl_negatives_per_caption // 2), seed=cfg.train.seed,
                videos_captions=list(context.videos_captions.values()),
                exclude=cfg.knowledge.exclude, sampling=cfg.clop.kcl_swap_sampling)

    def _weights(self, batch: dict, device) -> torch.Tensor:
        labels = multi_hot(batch["knowledge"], self.vocab, list(self.cfg.kcl_types)).to(device)
        all_labels = torch.cat(_gather_no_grad(labels))
        return 1.0 + self.cfg.kcl_weight_strength * jaccard(labels, all_labels)

    def _constructed(self, batch: dict, model, device) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(B, K, E) embeddings of each caption's swapped negatives, and the (B, K) mask of real ones."""
        k = self.cfg.kcl_negatives_per_caption
        # Python's `random` is in every checkpoint's RNG state, so a resumed run draws the same negatives.
        picked = [random.sample(self.negatives.get(c, []), min(k, len(self.negatives.get(c, []))))
                  for c in batch["caption"]]
        texts = [text for row in picked for text, _ in row]
        if not texts:
            return None
        tokens = self.tokenizer(texts)
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.cfg.kcl_negatives_train_text):
            embed = model.encode_text(tokens["input_ids"].to(device), tokens["attention_mask"].to(device)).embed
        out = embed.new_zeros(len(picked), k, embed.shape[1])
        mask = torch.zeros(len(picked), k, dtype=torch.bool, device=device)
        position = 0
        for i, row in enumerate(picked):
            out[i, :len(row)] = embed[position:position + len(row)]
            mask[i, :len(row)] = True
            position += len(row)
        return out, mask

    def forward(self, batch: dict, outputs, model) -> dict[str, torch.Tensor]:
        video, text = outputs.video.embed, outputs.text.embed
        weights = self._weights(batch, video.device) if self.cfg.kcl_negative_weighting else None
        extra = self._constructed(batch, model, video.device) if self.cfg.kcl_construct else None
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
    gap = scale * torch.einsum("be,bke->bk", others, text.float().unsqueeze(1) - swapped.float())
    return (gap.square() * mask).sum() / mask.sum().clamp(min=1)


# ----------------------------------------------------------------------------- KCL (i): batch sampler
class KnowledgeGroupedSampler(ResumableDistributedSampler):
    """Epochs in which clips that share knowledge meet in the same global batch, as each other's negatives.

    Each epoch: a seeded permutation; walking it, every not-yet-used clip anchors a group, filled with the
    `group_size - 1` unused clips of highest knowledge overlap among `pool` random unused candidates.
    Groups are laid end to end; rank r takes every world-th index (as DistributedSampler), so a group's
    clips are spread over the ranks of the same step: with negatives gathered from all ranks they still
    meet. Every clip is used once per epoch; `set_position` resumes mid-epoch like the parent class.
    """

    def __init__(self, item_labels: np.ndarray, num_replicas: int = 1, rank: int = 0, seed: int = 0,
                 group_size: int = 4, pool: int = 64):
        super().__init__(len(item_labels), num_replicas, rank, shuffle=True, seed=seed, drop_last=True)
        self.labels = item_labels.astype(np.float32)
        self.group_size, self.pool = group_size, pool

    def indices(self) -> list[int]:
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(self.num_items)
        used = np.zeros(self.num_items, dtype=bool)
        sizes = self.labels.sum(1)
        grouped: list[int] = []
        for anchor in order:
            if used[anchor]:
                continue
            used[anchor] = True
            grouped.append(int(anchor))
            free = np.flatnonzero(~used)
            if len(free) == 0:
                break
            candidates = rng.choice(free, size=min(self.pool, len(free)), replace=False)
            inter = self.labels[candidates] @ self.labels[anchor]
            overlap = inter / np.maximum(sizes[candidates] + sizes[anchor] - inter, 1.0)
            chosen = candidates[np.argsort(-overlap, kind="stable")[: self.group_size - 1]]
            used[chosen] = True
            grouped.extend(int(i) for i in chosen)
        total = self.per_rank * self.num_replicas
        return grouped[:total][self.rank:total:self.num_replicas]


def build_knowledge_sampler(cfg, dataset, context, world_size: int, rank: int) -> KnowledgeGroupedSampler:
    """The KCL sampler for a map-style VideoTextDataset: a clip's labels are the union over its captions."""
    types = list(cfg.clop.kcl_types)
    rows = []
    for record_index, _ in dataset.items:
        captions = dataset.records[record_index].captions
        knowledges = [context.knowledge[c] for c in captions if c in context.knowledge]
        rows.append(multi_hot(knowledges, context.vocab, types).amax(0) if knowledges else
                    torch.zeros(sum(context.vocab.size(t) for t in types)))
    return KnowledgeGroupedSampler(torch.stack(rows).numpy(), world_size, rank, seed=cfg.train.seed,
                                   group_size=cfg.clop.kcl_sampler_groups)


# ----------------------------------------------------------------------------- helpers
def _rank() -> int:
    from structvl.runtime.distributed import rank
    return rank()


def _gather_no_grad(x: torch.Tensor) -> list[torch.Tensor]:
    import torch.distributed as dist
    if not (dist.is_available() and dist.is_initialized()):
        return [x]
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return parts
