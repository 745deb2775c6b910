"""The knowledge of one caption, and the names of the knowledge types.

All spans are character offsets into the caption exactly as given, so `caption[start:end]` is the element's
text and the tokenizer's offsets line up with them. See `rules.py` for how each field is extracted.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields

KNOWLEDGE_TYPES = ("object", "attribute", "action", "relation")
RELATION_SEPARATOR = "|"


@dataclass
class CaptionKnowledge:
    """Everything extracted from one caption. Plain lists and dicts, so it round-trips through JSON.

    caption: the caption, exactly as given; every span below indexes into it.
    noun_phrases: [{"text", "start", "end", "root"}]: spaCy noun chunks headed by a noun (the S-ViLM phrases);
        root is the head noun's object label, e.g. {"text": "a red tomato", "start": 11, "end": 23, "root": "tomato"}.
    objects: object labels in caption order, without repeats.
    attributes: [attribute, object] pairs, e.g. ["red", "tomato"].
    actions: action labels, e.g. "pick up".
    relations: [subject, predicate, object] triples, e.g. ["circle", "move left of", "square"].
    words: one {"text", "start", "end", "pos", "tag", "lemma"} per word (spaCy's token annotations; pos is the
        universal tag: NOUN, PROPN, VERB, AUX, ADV, ...), for Clover's whole-word masking.
    element_spans: one entry per occurrence of a knowledge element:
        {"type": "object" | "attribute" | "action" | "relation", "label": the vocabulary label,
         "spans": [[start, end], ...]}: the caption text that expresses the element, one span per contiguous
        run of words (an action "turn off" in "turns the light off" has two). To make a hard negative, write the
        replacement over the first span and delete the others. Attributes add "noun_span" (the noun they
        modify); relations add "subject_span" and "object_span" (their spans are the predicate's words).
    """

    caption: str
    noun_phrases: list[dict] = field(default_factory=list)
    objects: list[str] = field(default_factory=list)
    attributes: list[list[str]] = field(default_factory=list)
    actions: list[str] = field(default_factory=list)
    relations: list[list[str]] = field(default_factory=list)
    words: list[dict] = field(default_factory=list)
    element_spans: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping) -> CaptionKnowledge:
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})

    def labels(self) -> dict[str, list[str]]:
        """The caption's vocabulary labels per knowledge type (see the module docstring)."""
        return {
            "object": list(self.objects),
            "attribute": list(dict.fromkeys(attribute for attribute, _ in self.attributes)),
            "action": list(self.actions),
            "relation": [RELATION_SEPARATOR.join(triple) for triple in self.relations],
        }
