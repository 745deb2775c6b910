"""CLOP's knowledge-guided construction: captions with exactly one knowledge element swapped for another of its
type, parsed again and kept only when the parse confirms that one element, and nothing else, changed."""

from __future__ import annotations

import random
from collections import Counter, defaultdict

from structvl.data.knowledge.cache import knowledge_for
from structvl.data.knowledge.record import CaptionKnowledge
from structvl.data.knowledge.vocab import KnowledgeVocab


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
