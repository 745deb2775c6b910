"""Word lists and token tests that the extraction rules (`rules.py`) and the parse repairs (`repair.py`) share."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # spaCy is imported lazily: `structvl --help` must stay instant.
    from spacy.tokens import Token

NOUN_POS = ("NOUN", "PROPN")
# Nouns that name a side or place relative to something else: "to the left of", "on top of", "in front of".
SPATIAL_NOUNS = frozenset({"left", "right", "top", "bottom", "front", "middle", "center", "centre"})
# Prepositions dropped from a spatial phrase: "to the left of", "on the left of", "at the left of" -> "left of".
SPATIAL_PREPOSITIONS_DROPPED = frozenset({"to", "on", "at"})
# Prepositions that turn "to the left" (no "of") into a direction of the motion: "slides to the left".
DIRECTION_PREPOSITIONS = frozenset({"to", "toward", "towards"})
DIRECTION_SIDES = frozenset({"left", "right"})
# Words that complete a motion verb when they follow it ("move left", "walk away", "fall down"); spaCy labels
# them prt, advmod, acomp, npadvmod, ... depending on context.
DIRECTION_WORDS = frozenset({
    "up", "down", "left", "right", "away", "around", "back", "forward", "forwards", "backward", "backwards",
    "upward", "upwards", "downward", "downwards", "sideways", "off", "out", "over", "aside",
})
DIRECTION_DEPS = frozenset({"prt", "advmod", "acomp", "npadvmod", "dobj", "oprd", "xcomp"})
# Verbs after which an adjective describes the subject: "the ball is red", "the man looks happy".
LINKING_VERBS = frozenset({"be", "become", "seem", "look", "appear", "remain", "stay", "get", "turn"})
# Linking verbs of change: their adjective is the change itself, part of the action ("gets *bigger*"), not a
# description of how the subject looks.
CHANGE_VERBS = frozenset({"become", "get", "turn", "grow"})
# Nouns that name the recording, not something in it: "in this *video*", "a *clip* of a man".
MEDIUM_NOUNS = frozenset({"video", "clip", "footage", "videoclip"})
# Verbs that, in the passive, present the subject rather than tell what it does: "a man is *seen* talking",
# "a kayak is *shown* in slow motion". The subject's action is their complement ("talking").
PRESENTATION_VERBS = frozenset({"see", "show"})
# Preposition + bare noun idioms that say how, not where: "stays *in place*", "shown *in* slow *motion*".
ADVERBIAL_IDIOMS = frozenset({"in place", "in time", "on time", "in motion"})
# Prepositions that place one thing relative to another; after "with <noun>" they make an absolute
# construction ("with the cross *under* the star") whose relation is between the noun and the star.
POSITION_PREPOSITIONS = frozenset({
    "above", "below", "under", "over", "beneath", "underneath", "behind", "beside", "near", "atop",
})
NOUN_MODIFIER_DEPS = frozenset({"amod", "nmod", "compound", "nummod"})
RELATIVE_PRONOUNS = frozenset({"who", "that", "which", "whom"})
# Words that open a multi-word preposition: "next to", "close to", "ahead of".
PREPOSITION_LEADS = frozenset({"next", "close", "ahead"})
# Determiners a plural noun cannot take: "*a* red circle slides" shows that "slides" is the verb.
SINGULAR_DETERMINERS = frozenset({"a", "an", "one", "each", "every", "another"})
PLURAL_MARKERS = frozenset({"these", "those", "some", "many", "several", "various", "all", "both", "few", "multiple"})


def of_phrases(noun: Token) -> list[Token]:
    """The "of" prepositions hanging on `noun`: a spatial noun with one names a side of something ("the left
    *of* the square"), without one a direction ("to the left")."""
    return [c for c in noun.children if c.dep_ == "prep" and c.lower_ == "of"]


def is_position_phrase(preposition: Token) -> bool:
    """'under the star', 'on the right of the ring', 'in front of the car': where something is."""
    return preposition.dep_ == "prep" and (preposition.lower_ in POSITION_PREPOSITIONS or any(
        c.dep_ == "pobj" and c.lower_ in SPATIAL_NOUNS and of_phrases(c) for c in preposition.children))


def has_position_phrase(noun: Token) -> bool:
    return any(is_position_phrase(c) for c in noun.children)
