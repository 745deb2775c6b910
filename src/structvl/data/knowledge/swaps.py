"""CLOP's knowledge-guided construction: captions with exactly one knowledge element swapped for another of its
type, parsed again and kept only when the parse confirms that one element, and nothing else, changed.

What a caption's swaps depend on. Proposing them needs, besides the caption's own knowledge, corpus-level
statistics: the label vocabulary (the replacement labels), how the corpus words each label (`surface_forms`),
which labels it uses as paraphrases of one another (`paraphrase_pairs`, never swapped for each other), which
modifiers it combines (`co_modifiers`) and which nouns it describes (`described_objects`). All of them are
counts (`counts.CorpusCounts`), summed over the shards of `structvl knowledge` (the reduce step), and
`SwapContext.build` turns the sum, the vocabulary and the run's `SwapSettings` into the small, picklable
context that proposes and validates any caption's swaps - in the knowledge pass, or in a training loader
worker for a caption whose swaps are not cached. Each caption draws its proposals from a generator seeded
by (settings.seed, caption), so its swaps are the same whichever process, shard or batch builds them.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

from structvl.data.knowledge.cache import KnowledgeCache, knowledge_for
from structvl.data.knowledge.counts import CorpusCounts, knowledge_elements, span_tag, swappable_label
from structvl.data.knowledge.record import CaptionKnowledge
from structvl.data.knowledge.vocab import KnowledgeVocab

__all__ = ["SwapContext", "SwapSettings", "build_swapped_negatives", "build_swaps", "co_modifiers",
           "described_objects", "differs_in_one_element", "knowledge_elements", "paraphrase_pairs",
           "propose_swaps", "surface_forms"]


def surface_forms(knowledges: list[CaptionKnowledge]) -> dict[tuple[str, str, str], list[str]]:
    """(type, label, tag of the first word) -> the caption texts that express it, most frequent first.

    Replacements are taken from how the corpus itself words each element ("slides to the left of", "is
    spinning"), in the same inflection as the text they replace, so swapped captions stay grammatical
    without an inflection grammar."""
    return CorpusCounts.of(knowledges).surface_forms()


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
    videos = [[knowledge[c] for c in captions if c in knowledge] for captions in videos_captions]
    return CorpusCounts.of([], videos).paraphrase_pairs(min_videos, ratio)


def described_objects(knowledges: list[CaptionKnowledge], min_count: int = 2) -> set[str]:
    """Object labels the corpus describes with an attribute in at least `min_count` captions ("a red
    circle", "a black background"): things that can be swapped for one another. Nouns never described
    ("in this video", "staying in place") are parts of the phrasing, not of the scene; swapping them makes
    nonsense ("staying in circle") rather than a hard negative."""
    return CorpusCounts.of(knowledges).described_objects(min_count)


def co_modifiers(knowledges: list[CaptionKnowledge]) -> set[tuple[str, str]]:
    """Attribute pairs seen modifying the same noun somewhere in the corpus ("big" + "blue"). An attribute
    swap that puts two never-combined modifiers on one noun ("big little disk") is rejected."""
    return CorpusCounts.of(knowledges).comodifiers


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
            tag, old = span_tag(knowledge, start), swappable_label(element)
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


@dataclass(frozen=True)
class SwapSettings:
    """How a run builds its swapped captions (CLOP's `clop.kcl_swap_*` and `knowledge.exclude` keys).

    types: the knowledge types swapped; per_type: proposals per type and caption; seed: the proposals'
    seed; exclude: {type: [labels]} never replaced nor swapped in; sampling: "uniform" over the type's
    vocabulary, or "frequency" - each label as often as the captions use it, so that no label is rarer among
    the negatives than among the positives."""

    types: tuple[str, ...]
    per_type: int
    seed: int = 0
    exclude: tuple[tuple[str, str], ...] = field(default=())
    sampling: str = "uniform"

    @classmethod
    def make(cls, types, per_type: int, seed: int = 0, exclude: Mapping | None = None,
             sampling: str = "uniform") -> SwapSettings:
        pairs = tuple(sorted((kind, label) for kind, labels in (exclude or {}).items() for label in labels))
        return cls(tuple(types), int(per_type), int(seed), pairs, sampling)


class SwapContext:
    """What proposing and validating any caption's swaps needs, built once from the corpus counts.

    Small (the vocabulary's surface forms, paraphrase pairs, combinable modifiers, described nouns) and
    picklable, so loader workers hold it. `id` names it in the cache: the corpus, the vocabulary and the
    settings, so swaps are never read under a context they were not built with.
    """

    def __init__(self, settings: SwapSettings, forms: dict, labels_by_type: dict[str, list[str]],
                 paraphrases: set, combinable: set, swappable_objects: set,
                 label_weights: dict[str, dict[str, float]] | None, id: str):
        self.settings, self.forms, self.labels_by_type = settings, forms, labels_by_type
        self.paraphrases, self.combinable, self.swappable_objects = paraphrases, combinable, swappable_objects
        self.label_weights, self.id = label_weights, id
        self.excluded = set(settings.exclude)
        self._form_lists = {key: [text] for key, text in forms.items()}  # the shape propose_swaps reads

    @classmethod
    def build(cls, counts: CorpusCounts, vocab: KnowledgeVocab, settings: SwapSettings,
              corpus: str = "") -> SwapContext:
        """From a corpus's (merged) counts, the run's vocabulary and its settings; `corpus` names the corpus."""
        types = list(settings.types)
        labels_by_type = {kind: list(dict.fromkeys(swappable_label({"type": kind, "label": label})
                                                   for label in vocab.labels(kind))) for kind in types}
        replacements = {(kind, label) for kind, labels in labels_by_type.items() for label in labels}
        # Only a replacement's wording is ever used, and only its most frequent one.
        forms = {key: texts[0] for key, texts in counts.surface_forms().items() if key[:2] in replacements}
        attributes = set(labels_by_type.get("attribute", ()))
        combinable = {pair for pair in counts.comodifiers if pair[0] in attributes}
        paraphrases = {pair for pair in counts.paraphrase_pairs() if (pair[0], pair[2]) in replacements}
        label_weights = None
        if settings.sampling == "frequency":  # a relation's swappable part is its predicate: pool its labels' counts
            label_weights = {kind: defaultdict(float) for kind in types}
            for kind in types:
                for label, count in zip(vocab.labels(kind), vocab.counts(kind)):
                    label_weights[kind][swappable_label({"type": kind, "label": label})] += count
            label_weights = {kind: dict(weights) for kind, weights in label_weights.items()}
        return cls(settings, forms, labels_by_type, paraphrases, combinable, counts.described_objects(),
                   label_weights, cls.id_for(corpus, vocab, settings))

    @staticmethod
    def id_for(corpus: str, vocab: KnowledgeVocab, settings: SwapSettings) -> str:
        """The name of the context of (corpus, vocabulary, settings), known before building it."""
        identity = json.dumps({"corpus": corpus, "settings": asdict(settings),
                               "vocab": {kind: vocab.labels(kind) for kind in settings.types}}, sort_keys=True)
        return hashlib.sha1(identity.encode("utf-8")).hexdigest()[:16]

    def propose(self, knowledge: CaptionKnowledge) -> list[tuple[str, str, str, str]]:
        """Candidate swaps (caption, type, old label, new label) of one caption, unvalidated."""
        rng = random.Random(f"{self.settings.seed}\0{knowledge.caption}")
        return propose_swaps(knowledge, self._form_lists, self.labels_by_type, list(self.settings.types),
                             self.settings.per_type, rng, self.paraphrases, self.combinable,
                             self.swappable_objects, self.excluded, self.label_weights)

    def to_dict(self) -> dict:
        return {"settings": asdict(self.settings), "forms": sorted([*key, text] for key, text in self.forms.items()),
                "labels_by_type": self.labels_by_type, "paraphrases": sorted(map(list, self.paraphrases)),
                "combinable": sorted(map(list, self.combinable)), "swappable_objects": sorted(self.swappable_objects),
                "label_weights": self.label_weights, "id": self.id}

    @classmethod
    def from_dict(cls, data: Mapping) -> SwapContext:
        raw = data["settings"]
        settings = SwapSettings(tuple(raw["types"]), raw["per_type"], raw["seed"],
                                tuple(tuple(pair) for pair in raw["exclude"]), raw["sampling"])
        return cls(settings, {tuple(row[:3]): row[3] for row in data["forms"]}, data["labels_by_type"],
                   {tuple(p) for p in data["paraphrases"]}, {tuple(p) for p in data["combinable"]},
                   set(data["swappable_objects"]), data["label_weights"], data["id"])


def build_swaps(knowledges: list[CaptionKnowledge], context: SwapContext, cache: KnowledgeCache | None = None,
                n_process: int = 1, batch_size: int = 256, progress: bool | None = None,
                nlp=None) -> dict[str, list[tuple[str, str]]]:
    """caption -> [(swapped caption, type)] for `knowledges`: proposed by `context`, every proposal parsed with
    spaCy (the parses land in the knowledge cache) and kept only when it differs from its source in exactly
    one knowledge element (`differs_in_one_element`). Written to `cache` under `context.id` when given."""
    proposals = {k.caption: context.propose(k) for k in knowledges}
    parsed = knowledge_for([c for props in proposals.values() for c, *_ in props], cache, n_process=n_process,
                           batch_size=batch_size, progress=progress, nlp=nlp)
    parsed_by_caption = {k.caption: k for k in parsed}
    source = {k.caption: k for k in knowledges}
    swaps = {caption: list(dict.fromkeys((c, kind) for c, kind, old, new in props
                                         if differs_in_one_element(source[caption], parsed_by_caption[c], kind,
                                                                   old, new)))
             for caption, props in proposals.items()}
    if cache is not None:
        cache.put_swaps(context.id, swaps)
    return swaps


def build_swapped_negatives(knowledges: list[CaptionKnowledge], vocab: KnowledgeVocab, cache, types: list[str],
                            per_type: int, seed: int = 0,
                            videos_captions: list[list[str]] | None = None,
                            exclude: dict | None = None,
                            sampling: str = "uniform") -> dict[str, list[tuple[str, str]]]:
    """caption -> [(swapped caption, type)] for a corpus held in memory (`knowledges`, and the captions of each
    video for the paraphrase evidence): `CorpusCounts` of it, a `SwapContext`, then `build_swaps`.
    Replacements that the corpus treats as paraphrases (`paraphrase_pairs`), modifiers never combined
    (`co_modifiers`) and nouns the corpus never describes (`described_objects`) are not proposed."""
    by_caption = {k.caption: k for k in knowledges}
    videos = [[by_caption[c] for c in captions if c in by_caption] for captions in videos_captions or []]
    settings = SwapSettings.make(types, per_type, seed, exclude, sampling)
    context = SwapContext.build(CorpusCounts.of(knowledges, videos), vocab, settings)
    return build_swaps(knowledges, context, cache)
