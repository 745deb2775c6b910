"""Evaluation items derived from a clip's ground truth: one-factor hard negatives, multiple-choice QA and
open-ended QA. Pure functions of a scene and its caption; `corpus.py` writes them in benchmark formats.

Hard negatives are the heart of the structured evaluation: each one re-renders the true caption's exact
wording (`captions.Wording`) with one fact of one object changed (its shape, colour, size or action) or with
the stated relation's predicate changed, and is kept only if it is false of the scene. "False" is checked
against the scene itself, not just against the caption: "a red circle and a blue square" with the square's
colour changed to red is still a false caption only if the clip has no red square.
"""

from __future__ import annotations

from itertools import permutations

import numpy as np

from structvl.lab.synth.captions import MAX_PIECES, SceneFacts, Wording, realise, word_pieces
from structvl.lab.synth.scene import Scene, relation_holds
from structvl.lab.synth.vocab import ACTIONS, COLOURS, DIRECTIONS, RELATIONS, SHAPES, SIZES, actions_for

FACTORS = ("shape", "colour", "size", "action", "relation")
MC_CHOICES = 5


def facts_hold(facts: SceneFacts, scene: Scene) -> bool:
    """Whether a caption asserting `facts` can be read as true of the scene.

    True if some one-to-one assignment of the described objects to the scene's objects matches every shape,
    colour, size and action, and the stated relation holds under that assignment even loosely (mean
    positions on the right side): a relation that is merely not clear-cut does not make a caption false.
    """
    if len(facts.objects) != len(scene.objects):
        return False
    for assignment in permutations(range(len(scene.objects))):
        if not all(f.shape == o.shape and f.colour == o.colour and f.size == o.size and f.action == o.action
                   for f, o in zip(facts.objects, (scene.objects[j] for j in assignment))):
            continue
        if facts.relation is None:
            return True
        subject, predicate, obj = facts.relation
        if relation_holds(scene, assignment[subject], predicate, assignment[obj], strict=False):
            return True
    return False


def _drawable(facts: SceneFacts) -> bool:
    """Whether the generator could have drawn these objects: every action visible on its shape and no two
    objects sharing colour and shape (which would also leave "the red circle" without a unique referent)."""
    compositions = [(o.colour, o.shape) for o in facts.objects]
    return (len(set(compositions)) == len(compositions)
            and all(o.action in actions_for(o.shape) for o in facts.objects))


def _variants(facts: SceneFacts, factor: str) -> list[tuple[SceneFacts, str, str]]:
    """Every copy of the facts with `factor` changed once, over all objects (or the relation), restricted
    to scenes the generator could have drawn (never a rotating circle, say); each with the changed value
    before and after ("moving left", "staying still")."""
    if factor == "relation":
        if facts.relation is None:
            return []
        return [(facts.with_predicate(p), facts.relation[1], p) for p in RELATIONS if p != facts.relation[1]]
    values = {"shape": SHAPES, "colour": COLOURS, "size": SIZES, "action": ACTIONS}[factor]
    out = [(facts.with_object(i, **{factor: v}), getattr(obj, factor), v)
           for i, obj in enumerate(facts.objects) for v in values if v != getattr(obj, factor)]
    return [(changed, old, new) for changed, old, new in out if _drawable(changed)]


def hard_negatives(scene: Scene, facts: SceneFacts,
                   wording: Wording) -> tuple[dict[str, list[str]], dict[str, list[list[str]]]]:
    """Per factor, the captions that say what the true caption says with that one factor changed, each
    false of the scene, and beside them what each one changed ([old value, new value]). A factor with no
    valid change (no relation stated, say) gets empty lists.

    A negative must also fit the caption length budget whenever the true caption does: a text encoder that
    truncates it might cut off exactly the changed words and score a copy of the truth.
    """
    true_caption, _ = realise(facts, wording)
    budget = max(MAX_PIECES, word_pieces(true_caption))
    negatives: dict[str, list[str]] = {}
    changes: dict[str, list[list[str]]] = {}
    for factor in FACTORS:
        captions: list[str] = []
        changes[factor] = []
        if factor != "relation" or wording.relation is not None:
            for changed, old, new in _variants(facts, factor):
                caption, _ = realise(changed, wording)
                if (caption != true_caption and caption not in captions and word_pieces(caption) <= budget
                        and not facts_hold(changed, scene)):
                    captions.append(caption)
                    changes[factor].append([old, new])
        negatives[factor] = captions
    return negatives, changes


def multiple_choice(rng: np.random.Generator, true_caption: str,
                    negatives: dict[str, list[str]]) -> tuple[list[str], int]:
    """MC_CHOICES candidates: the true caption and one-factor distractors spread over as many factors as
    possible, in random order. Returns (candidates, index of the true caption)."""
    pools = {f: list(rng.permutation(c)) for f, c in negatives.items() if c}
    factors = [str(f) for f in rng.permutation(sorted(pools))]
    distractors: list[str] = []
    while len(distractors) < MC_CHOICES - 1 and any(pools.values()):
        for factor in factors:
            if pools[factor] and len(distractors) < MC_CHOICES - 1:
                distractors.append(str(pools[factor].pop()))
    if len(distractors) < MC_CHOICES - 1:
        raise ValueError(f"only {len(distractors)} distractors for {true_caption!r}")
    candidates = distractors + [true_caption]
    order = rng.permutation(len(candidates))
    candidates = [candidates[j] for j in order]
    return candidates, candidates.index(true_caption)


# ----------------------------------------------------------------------------- open-ended QA
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five")


def _describe(obj, attributes: tuple[str, ...]) -> str:
    """'the small red square', 'the red object', 'the object that is rotating', ... (canonical words)."""
    words = [getattr(obj, a) for a in ("size", "colour", "shape") if a in attributes]
    noun = words.pop() if "shape" in attributes else "object"
    head = " ".join(["the", *words, noun])
    return f"{head} that is {obj.action}" if "action" in attributes else head


def _unique_reference(facts: SceneFacts, i: int, candidates: tuple[tuple[str, ...], ...]) -> str | None:
    """The first description among `candidates` that fits object i and no other object; None if none does."""
    target = facts.objects[i]
    for attributes in candidates:
        if sum(all(getattr(o, a) == getattr(target, a) for a in attributes) for o in facts.objects) == 1:
            return _describe(target, attributes)
    return None


def open_questions(facts: SceneFacts) -> list[tuple[str, str]]:
    """(question, one-word answer) pairs, asked only about objects a description picks out uniquely, so
    every answer is the only right one: colour, shape, size, action (or direction of motion) and count."""
    qa = [("how many objects are there?", NUMBER_WORDS[len(facts.objects)])]
    for i, obj in enumerate(facts.objects):
        ref = _unique_reference(facts, i, (("shape",), ("size", "shape"), ("action",), ("size", "action")))
        if ref:
            qa.append((f"what colour is {ref}?", obj.colour))
        ref = _unique_reference(facts, i, (("colour",), ("size", "colour"), ("action",), ("colour", "action")))
        if ref:
            qa.append((f"what shape is {ref}?", obj.shape))
        ref = _unique_reference(facts, i, (("shape",), ("colour", "shape")))
        if ref:
            qa.append((f"what size is {ref}?", obj.size))
        ref = _unique_reference(facts, i, (("shape",), ("colour", "shape"), ("size", "colour", "shape")))
        if ref and obj.action in DIRECTIONS:
            qa.append((f"which direction is {ref} moving?", DIRECTIONS[obj.action]))
        elif ref and obj.action != "staying still":
            qa.append((f"what is {ref} doing?", obj.action))
    return qa
