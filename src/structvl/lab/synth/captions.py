"""The caption grammar: scene facts -> paraphrased English captions with grounded noun-phrase spans.

A caption is produced in two steps so that hard negatives can reuse the wording of a true caption:

1. `sample_wording` draws every free choice of the grammar (sentence frame, order of mention, connectives,
   verb mood, determiners, synonym picks, whether the background is mentioned, how the relation is phrased)
   into a `Wording`, which does not depend on what the objects are.
2. `realise(facts, wording)` renders the facts with those choices. Rendering a copy of the facts with one
   factor changed under the same wording gives a caption that differs in exactly that factor.

Every caption mentions every object with a full noun phrase "<det> <size> <colour> <shape>" directly
followed by its verb phrase, in MSR-VTT style (lowercase, no final period), for example

    a small red circle is moving to the left while the big violet star is spinning on a navy background
    there is a little cyan cross that is blinking and a large green square goes up with the cross above the square

A stated relation refers back to its two objects with the shortest description that is unique in the scene
("the cross", "the red square"). Verb phrases are chosen from forms that spaCy's English pipeline tags and
chunks correctly (progressive "is moving", and only the simple-present verbs it does not mistake for nouns).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

import numpy as np

from structvl.lab.synth.scene import Scene
from structvl.lab.synth.vocab import ACTIONS, BACKGROUNDS, COLOURS, CONVERSE, RELATIONS, SHAPES, SIZES

# ----------------------------------------------------------------------------- lexicon
SIZE_WORDS = {"small": ("small", "little"), "large": ("large", "big")}
COLOUR_WORDS = {colour: (colour,) for colour in COLOURS} | {"purple": ("purple", "violet")}
SHAPE_WORDS = {shape: (shape,) for shape in SHAPES} | {"circle": ("circle", "disk"),
                                                        "diamond": ("diamond", "rhombus")}
BACKGROUND_WORDS = {name: name for name in BACKGROUNDS}

# Per action: (simple present or None, participle) pairs; the progressive is "is " + participle. spaCy's small
# English model often tags a bare simple-present verb after a noun phrase as a noun ("the red square shrinks"
# -> one noun chunk), so only the simple-present forms it parsed reliably are offered; for the rest the
# grammar falls back to the progressive, which it parses almost perfectly.
ACTION_PHRASES: dict[str, tuple[tuple[str | None, str], ...]] = {
    "moving left": ((None, "moving to the left"), (None, "moving left"), (None, "sliding to the left"),
                    (None, "heading left")),
    "moving right": ((None, "moving to the right"), (None, "moving right"), (None, "sliding to the right"),
                     (None, "heading right")),
    "moving up": ((None, "moving up"), (None, "moving upward"), (None, "rising"), ("goes up", "going up")),
    "moving down": ((None, "moving down"), (None, "moving downward"), (None, "sinking"),
                    ("goes down", "going down")),
    "rotating": ((None, "rotating"), (None, "spinning"), ("turns around", "turning around")),
    "growing": (("grows", "growing"), ("expands", "expanding"), ("gets bigger", "getting bigger")),
    "shrinking": ((None, "shrinking"), (None, "becoming smaller"), ("gets smaller", "getting smaller")),
    "blinking": ((None, "blinking"), (None, "flashing"), (None, "flickering")),
    "bouncing": ((None, "bouncing"), (None, "hopping"), (None, "bouncing up and down")),
    "staying still": ((None, "staying still"), ("remains still", "remaining still"),
                      (None, "staying in place")),
}

# Bare "left of" is left out: the parser reads "the square right of the disk" as one noun phrase.
RELATION_PHRASES = {
    "left of": ("to the left of", "on the left of"),
    "right of": ("to the right of", "on the right of"),
    "above": ("above", "over"),
    "below": ("below", "under", "beneath"),
}

assert set(ACTION_PHRASES) == set(ACTIONS) and set(RELATION_PHRASES) == set(RELATIONS)
assert set(SIZE_WORDS) == set(SIZES)

# Probabilities of the grammar's choices.
OPENINGS = (("", 0.7), ("in this video ", 0.1), ("in the clip ", 0.05), ("there is ", 0.15))
MOODS = (("progressive", 0.65), ("simple", 0.2), ("seen", 0.15))  # "is moving", "goes up", "can be seen moving"
P_DEFINITE = 0.4  # "the" rather than "a"
P_BACKGROUND = 0.3  # mention the background
P_FRONTED = 0.25  # "while NP VP, NP VP" (two objects)
JOINTS_TWO = (" while ", " and ", " as ")
JOINTS_THREE = ((", ", " and "), (" while ", " and "), (" and ", " while "), (" as ", " and "))

# Captions longer than this many word pieces are redrawn: the demo's text encoder (MiniLM, BERT-uncased
# WordPiece) reads 32 positions including [CLS] and [SEP], and a truncated caption would lose its last
# object or its relation. Lexicon words that WordPiece splits cost their extra pieces.
MAX_PIECES = 30
EXTRA_PIECES = {"rhombus": 2, "cyan": 1, "checkered": 1}


def word_pieces(text: str) -> int:
    """The caption's length in BERT-uncased word pieces (exact for this grammar's words)."""
    return len(re.findall(r"\w+|[^\w\s]", text)) + sum(EXTRA_PIECES.get(w, 0) for w in text.split())


# ----------------------------------------------------------------------------- facts
@dataclass(frozen=True)
class ObjectFacts:
    shape: str
    colour: str
    size: str
    action: str


@dataclass(frozen=True)
class SceneFacts:
    """What a caption asserts about a scene: its objects, its background and at most one relation."""

    objects: tuple[ObjectFacts, ...]
    background: str
    relation: tuple[int, str, int] | None  # (subject index, predicate, object index)

    @classmethod
    def of(cls, scene: Scene) -> "SceneFacts":
        rel = scene.relation
        return cls(tuple(ObjectFacts(o.shape, o.colour, o.size, o.action) for o in scene.objects),
                   scene.background, None if rel is None else (rel.subject, rel.predicate, rel.object))

    def with_object(self, index: int, **changes: str) -> "SceneFacts":
        objects = list(self.objects)
        objects[index] = replace(objects[index], **changes)
        return replace(self, objects=tuple(objects))

    def with_predicate(self, predicate: str) -> "SceneFacts":
        subject, _, obj = self.relation
        return replace(self, relation=(subject, predicate, obj))


# ----------------------------------------------------------------------------- wording
@dataclass(frozen=True)
class Wording:
    """Every free choice behind one caption, independent of what the objects are.

    opening: "" | "in this video " | "in the clip " | "there is " (the first mention then reads
        "there is <NP> that is <V-ing>").
    order: object indices in order of mention.
    joints: the connective before each mention after the first (" while ", " and ", ", " ...).
    fronted: two objects only: "while NP VP, NP VP".
    moods: per mention, "progressive" ("is moving up"), "simple" ("goes up"; falls back to the progressive
        for phrases without a reliably parsed simple form) or "seen" ("can be seen moving up").
    determiners: per mention, "a" | "the".
    picks: per object (by object index), integers choosing among the synonyms of its size, colour, shape and
        action phrase; taken modulo the number of synonyms, so they stay valid when a fact is changed.
    background: "on" | "against" to mention the background, or None.
    relation: (connective "and" | "with", state it from the object's side?, phrase pick), or None.
    """

    opening: str
    order: tuple[int, ...]
    joints: tuple[str, ...]
    fronted: bool
    moods: tuple[str, ...]
    determiners: tuple[str, ...]
    picks: tuple[tuple[int, int, int, int], ...]
    background: str | None
    relation: tuple[str, bool, int] | None


def _choose(rng: np.random.Generator, weighted: tuple[tuple[str, float], ...]) -> str:
    options, weights = zip(*weighted)
    return options[int(rng.choice(len(options), p=np.array(weights) / sum(weights)))]


def sample_wording(rng: np.random.Generator, facts: SceneFacts) -> Wording:
    n = len(facts.objects)
    order = tuple(int(i) for i in rng.permutation(n))
    opening = _choose(rng, OPENINGS)
    if n == 1:
        joints: tuple[str, ...] = ()
    elif n == 2:
        joints = (str(rng.choice(JOINTS_TWO)),)
    else:
        joints = JOINTS_THREE[int(rng.integers(len(JOINTS_THREE)))]
    fronted = n == 2 and opening == "" and joints[0] != " and " and rng.random() < P_FRONTED
    moods = tuple(_choose(rng, MOODS) for _ in range(n))
    determiners = tuple("the" if rng.random() < P_DEFINITE else "a" for _ in range(n))
    if opening == "there is ":
        determiners = ("a",) + determiners[1:]  # "there is the ..." is not English
    picks = tuple(tuple(int(p) for p in rng.integers(0, 1 << 16, size=4)) for _ in range(n))
    background = str(rng.choice(["on", "against"])) if rng.random() < P_BACKGROUND else None
    relation = None
    if facts.relation is not None:
        # "... and A is left of B" after another "and" reads badly: use "with A left of B" there.
        connective = "with" if " and " in joints else str(rng.choice(["and", "with"]))
        relation = (connective, bool(rng.random() < 0.5), int(rng.integers(0, 1 << 16)))
    return Wording(opening, order, joints, fronted, moods, determiners, picks, background, relation)


# ----------------------------------------------------------------------------- realisation
Span = tuple[int, int, int]  # (start, end, object index): a noun phrase naming that object


class _Builder:
    """Concatenates caption pieces and records the character span of every object mention."""

    def __init__(self) -> None:
        self.text = ""
        self.spans: list[Span] = []

    def add(self, piece: str) -> None:
        self.text += piece

    def mention(self, phrase: str, obj: int) -> None:
        self.spans.append((len(self.text), len(self.text) + len(phrase), obj))
        self.text += phrase


def _pick(options: tuple[str, ...], pick: int) -> str:
    return options[pick % len(options)]


def _words(facts: SceneFacts, wording: Wording, i: int, attributes: tuple[str, ...]) -> str:
    """The object's chosen words for the given attributes, in English adjective order (size colour shape)."""
    obj, (p_size, p_colour, p_shape, _) = facts.objects[i], wording.picks[i]
    words = {"size": _pick(SIZE_WORDS[obj.size], p_size), "colour": _pick(COLOUR_WORDS[obj.colour], p_colour),
             "shape": _pick(SHAPE_WORDS[obj.shape], p_shape)}
    return " ".join(words[a] for a in ("size", "colour", "shape") if a in attributes)


def _article(determiner: str, next_word: str) -> str:
    return "an" if determiner == "a" and next_word[0] in "aeiou" else determiner


def _noun_phrase(facts: SceneFacts, wording: Wording, i: int, determiner: str) -> str:
    words = _words(facts, wording, i, ("size", "colour", "shape"))
    return f"{_article(determiner, words)} {words}"


def _verb_phrase(facts: SceneFacts, wording: Wording, i: int, mood: str) -> str:
    simple, participle = _pick(ACTION_PHRASES[facts.objects[i].action], wording.picks[i][3])
    if mood == "simple" and simple:
        return simple
    return f"can be seen {participle}" if mood == "seen" else f"is {participle}"


REFERENCE_ATTRIBUTES = (("shape",), ("colour", "shape"), ("size", "shape"), ("size", "colour", "shape"))


def reference(facts: SceneFacts, wording: Wording, i: int) -> str:
    """'the <shortest description that names only object i>', e.g. 'the cross' or 'the red square'."""
    target = facts.objects[i]
    for attributes in REFERENCE_ATTRIBUTES:
        matches = [o for o in facts.objects if all(getattr(o, a) == getattr(target, a) for a in attributes)]
        if len(matches) == 1:
            return "the " + _words(facts, wording, i, attributes)
    return "the " + _words(facts, wording, i, REFERENCE_ATTRIBUTES[-1])


def realise(facts: SceneFacts, wording: Wording) -> tuple[str, list[Span]]:
    """Render the facts with the wording's choices: (caption, spans of every object mention)."""
    b = _Builder()

    def clause(k: int) -> None:  # mention k: "<noun phrase> <verb phrase>"
        i = wording.order[k]
        b.mention(_noun_phrase(facts, wording, i, wording.determiners[k]), i)
        verb_phrase = _verb_phrase(facts, wording, i, wording.moods[k])
        if k == 0 and wording.opening == "there is ":
            participle = _pick(ACTION_PHRASES[facts.objects[i].action], wording.picks[i][3])[1]
            verb_phrase = f"that is {participle}"
        b.add(" " + verb_phrase)

    b.add(wording.opening)
    if wording.fronted:
        b.add(wording.joints[0].strip() + " ")
        clause(0)
        b.add(", ")
        clause(1)
    else:
        for k in range(len(wording.order)):
            if k:
                b.add(wording.joints[k - 1])
            clause(k)
    if wording.background:
        b.add(f" {wording.background} a {BACKGROUND_WORDS[facts.background]} background")
    if wording.relation and facts.relation:
        connective, from_object_side, pick = wording.relation
        subject, predicate, obj = facts.relation
        if from_object_side:  # "B is right of A" states the same fact as "A is left of B"
            subject, predicate, obj = obj, CONVERSE[predicate], subject
        b.add(f" {connective} ")
        b.mention(reference(facts, wording, subject), subject)
        b.add(" is " if connective == "and" else " ")
        b.add(_pick(RELATION_PHRASES[predicate], pick) + " ")
        b.mention(reference(facts, wording, obj), obj)
    return b.text, b.spans


def paraphrases(rng: np.random.Generator, facts: SceneFacts, count: int,
                max_draws: int = 200) -> list[tuple[str, list[Span], Wording]]:
    """Up to `count` distinct captions of the same facts, each within MAX_PIECES when the grammar allows
    (otherwise the shortest drawn). Fewer than `count` only if the grammar runs out of variants."""
    fitting: dict[str, tuple[list[Span], Wording]] = {}
    too_long: dict[str, tuple[list[Span], Wording]] = {}
    for _ in range(max_draws):
        wording = sample_wording(rng, facts)
        text, spans = realise(facts, wording)
        (fitting if word_pieces(text) <= MAX_PIECES else too_long).setdefault(text, (spans, wording))
        if len(fitting) == count:
            break
    chosen = list(fitting.items()) + sorted(too_long.items(), key=lambda item: word_pieces(item[0]))
    return [(text, spans, wording) for text, (spans, wording) in chosen[:count]]
