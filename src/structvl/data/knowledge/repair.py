"""Repairs of en_core_web_sm's commonest misparses of short captions, applied in place before the rules run.

See the "Known limitations" part of `rules.py`'s docstring for what each repair fixes and how often it fires.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from structvl.data.knowledge.grammar import (
    DIRECTION_DEPS,
    DIRECTION_WORDS,
    NOUN_POS,
    PLURAL_MARKERS,
    SINGULAR_DETERMINERS,
    is_position_phrase,
)

if TYPE_CHECKING:
    from spacy.tokens import Doc, Token


def repair_verbs_tagged_as_nouns(doc: Doc) -> None:
    """Fix en_core_web_sm's commonest misparse of short captions, in place.

    "a red circle slides to the left" comes out as one noun phrase "a red circle slides" (ROOT `slides`, a
    plural NOUN, with `circle` as its compound), "a red circle moves left" as `moves` the subject of a verb
    `left`, and "a large blue square moves up" with `square` an adjective. For each word `_misread_subject`
    accepts, the word becomes the verb (VERB, VBZ; the noun lemma of an -s form is the verb's lemma:
    slides -> slide), the word before it its subject noun, the determiners and adjectives in front of the
    subject are re-attached to it, and a direction word parsed as a verb ("left") becomes an adverb of the verb.
    """
    for word in doc:
        subject = _misread_subject(word)
        if subject is None:
            continue
        if word.dep_ == "nsubj":  # "a red circle moves left": `left` was the root verb and `moves` its subject
            direction = word.head
            word.head, word.dep_ = word, "ROOT"
            for child in list(direction.children):
                child.head = word
            direction.head = word
        word.pos_, word.tag_ = "VERB", "VBZ"
        subject.head, subject.dep_ = word, "nsubj"
        if subject.pos_ not in NOUN_POS:
            subject.pos_, subject.tag_ = "NOUN", "NN"
        for child in list(word.children):
            if child.i < subject.i:
                child.head = subject
            elif child.pos_ == "VERB" and child.lower_ in DIRECTION_WORDS:  # "moves left" with `left` a verb
                child.pos_, child.tag_, child.dep_ = "ADV", "RB", "advmod"


def repair_directions_tagged_as_verbs(doc: Doc) -> None:
    """'is heading *left*': spaCy often reads a direction right after a motion verb as the verb 'leave' (VBN),
    sometimes with the motion verb as its auxiliary, or hangs it on another word (an adjectival clause of the
    subject, the next preposition). Make it an adverb of the verb before it, so it completes that action
    ('head left') in place of a 'leave' that never happened."""
    for word in doc[1:]:
        verb = doc[word.i - 1]
        if (word.lower_ not in DIRECTION_WORDS or not verb.tag_.startswith("VB")
                or verb.lemma_.lower() in ("be", "have", "do") or word.dep_ == "prep"):
            continue
        if word.head.i == verb.i and word.pos_ != "VERB" and word.dep_ in DIRECTION_DEPS | {"prt"}:
            continue  # already read right
        if any(c.dep_ in ("nsubj", "nsubjpass", "aux", "auxpass", "dobj", "pobj") and c.i != verb.i
               for c in word.children):
            continue  # a real verb 'leave' ("the man has left the room")
        if verb.head.i == word.i:  # "moving left" read as auxiliary 'moving' + verb 'left': the verb takes its place
            verb.head = verb if word.head.i == word.i else word.head
            verb.dep_, verb.pos_ = word.dep_, "VERB"
        for child in list(word.children):  # "heading left *on a striped background*": the heading is there
            if child.i != verb.i:
                child.head = verb
        word.head, word.pos_, word.tag_, word.dep_, word.lemma_ = verb, "ADV", "RB", "advmod", word.lower_


def repair_absolute_with(doc: Doc) -> None:
    """'... flickers with the circle on the right of the ring': the position phrase right after the object of
    "with" says where that object is, but spaCy often hangs it on the verb (making the flickering thing the
    one on the right). Hang it on the object of "with"."""
    for word in doc:
        if word.lower_ != "with" or word.dep_ != "prep":
            continue
        for noun in (c for c in word.children if c.dep_ == "pobj" and c.pos_ in NOUN_POS):
            following = doc[noun.i + 1] if noun.i + 1 < len(doc) else None
            if following is not None and following.head.i != noun.i and is_position_phrase(following):
                following.head = noun


def _misread_subject(word: Token) -> Token | None:
    """If `word` is a present-tense verb that spaCy read as a plural noun, the word before it (its subject).

    Evidence, beyond the shape "<noun or adjective> <word ending in -s>":
    * a particle or direction after it ("moves up"), or a singular determiner on it ("*a* ... moves"):
      a plural noun cannot take either, so the subject may be a word spaCy made an adjective ("square");
    * or a noun right before it, in a phrase with a determiner or a proper-noun subject and without plural
      markers, while the sentence has no other verb with an open subject slot (verbs of their own clauses,
      with their own subject, do not count). This one misreads verbless captions such as "the car keys on
      the table" (car + "key").
    """
    if word.i == 0 or not word.lower_.endswith("s"):
        return None
    # A plural noun, or a verb that spaCy gave a compound instead of a subject ("hexagon spins").
    looks_nominal = word.tag_ in ("NNS", "NNPS") or (
        word.pos_ == "VERB" and any(c.dep_ == "compound" for c in word.children))
    if not looks_nominal:
        return None
    head = word.head
    heads_a_clause = (word.dep_ == "ROOT" or (word.dep_ == "conj" and head.pos_ == "VERB")
                      or (word.dep_ == "nsubj" and head.dep_ == "ROOT" and head.pos_ == "VERB"
                          and head.lower_ in DIRECTION_WORDS))  # "moves left" with `left` the root verb
    if not heads_a_clause:
        return None
    subject = word.doc[word.i - 1]
    if subject.head.i != word.i or any(c.dep_ in ("nsubj", "nsubjpass") and c.i != subject.i for c in word.children):
        return None
    noun_subject = subject.pos_ in NOUN_POS and subject.dep_ in ("compound", "nsubj")
    adjective_subject = subject.pos_ == "ADJ" and subject.dep_ == "amod"
    verbal_dependent = any(
        c.i > word.i and (c.dep_ == "prt" or (c.lower_ in DIRECTION_WORDS and c.dep_ in DIRECTION_DEPS | {"acl"}))
        for c in word.children) or word.dep_ == "nsubj"
    singular_determiner = any(c.dep_ == "det" and c.lower_ in SINGULAR_DETERMINERS and c.i < subject.i
                              for c in word.children)
    if (verbal_dependent or singular_determiner) and (noun_subject or adjective_subject):
        return subject
    # Without such evidence, a bare compound ("disney movie video clips") is much likelier a noun phrase than a
    # clause, so ask for a determiner or a proper-noun subject ("putin talks"), and for no plural marker.
    introduced = subject.pos_ == "PROPN" or any(c.dep_ == "det" for t in (word, subject) for c in t.children)
    plural = any(c.dep_ == "nummod" or c.lower_ in PLURAL_MARKERS for c in word.children)
    if (noun_subject and introduced and not plural
            and not any(_is_open_predicate(t) for t in word.sent if t.i != word.i and t.i != head.i)):
        return subject
    return None


def _is_open_predicate(token: Token) -> bool:
    """A verb that could be the caption's main verb: not a direction word, and without a subject of its own."""
    return (token.pos_ in ("VERB", "AUX") and token.lower_ not in DIRECTION_WORDS
            and not any(c.dep_ in ("nsubj", "nsubjpass", "expl") for c in token.children))
