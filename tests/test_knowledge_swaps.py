"""CLOP's knowledge-guided construction (structvl.data.knowledge.swaps): swapped captions differ from
their source in exactly one knowledge element, never in a paraphrase, an undescribed noun or an excluded label."""

from __future__ import annotations

from structvl.data.knowledge.cache import KnowledgeCache
from structvl.data.knowledge.rules import extract_knowledge
from structvl.data.knowledge.swaps import (
    build_swapped_negatives,
    described_objects,
    differs_in_one_element,
    knowledge_elements,
    paraphrase_pairs,
)
from structvl.data.knowledge.vocab import KnowledgeVocab

from helpers import SHAPE_CAPTIONS


def _changed_span(a: str, b: str) -> tuple[str, str]:
    """The differing middle of two strings (common prefix and suffix removed)."""
    i = 0
    while i < min(len(a), len(b)) and a[i] == b[i]:
        i += 1
    j = 0
    while j < min(len(a), len(b)) - i and a[-1 - j] == b[-1 - j]:
        j += 1
    return a[i:len(a) - j], b[i:len(b) - j]


def test_swapped_captions_change_exactly_one_element(parsed, tmp_path):
    vocab = KnowledgeVocab.build(parsed, top_k=20)
    with KnowledgeCache(tmp_path / "cache") as cache:
        negatives = build_swapped_negatives(parsed, vocab, cache, ["object", "attribute", "action"], per_type=2)
    produced = [(src, neg, kind) for src, rows in negatives.items() for neg, kind in rows]
    assert {kind for *_, kind in produced} == {"object", "attribute", "action"}
    reparsed = {k.caption: k for k in extract_knowledge([neg for _, neg, _ in produced])}
    source = {k.caption: k for k in parsed}
    for src, neg, kind in produced:
        old_text, new_text = _changed_span(src, neg)
        assert old_text and new_text and len(old_text.split()) <= 3, (src, neg)  # one contiguous span replaced
        a, b = knowledge_elements(source[src]), knowledge_elements(reparsed[neg])
        changed = {t for t in a if a[t] != b[t] and t != "relation"}
        # an object swap also renames that object's attributes ("red|circle" -> "red|star")
        assert changed == {kind} or (kind == "object" and changed == {"object", "attribute"}), (src, neg, a, b)
        assert len(b[kind] - a[kind]) == 1 and len(a[kind] - b[kind]) <= 1, (src, neg)


def test_differs_in_one_element_rejects_two_changes(parsed):
    src = parsed[0]  # "a small red circle moves to the left"
    one, two = extract_knowledge(["a small blue circle moves to the left", "a big blue circle moves to the left"])
    assert differs_in_one_element(src, one, "attribute", "red", "blue")
    assert not differs_in_one_element(src, two, "attribute", "red", "blue")
    assert not differs_in_one_element(src, src, "attribute", "red", "blue")  # nothing changed


def test_paraphrase_pairs_need_alternation_across_captions_of_one_video():
    videos = [[f"a big {c} circle spins", f"a large {c} circle spins"] for c in
              ("red", "blue", "green", "cyan", "white", "black")]
    videos += [["a big red square and a small blue star spin"]]
    caps = [c for v in videos for c in v]
    knowledge = {k.caption: k for k in extract_knowledge(caps)}
    pairs = paraphrase_pairs(videos, knowledge)
    assert ("attribute", "big", "large") in pairs and ("attribute", "large", "big") in pairs
    assert ("attribute", "big", "small") not in pairs and not any(p[0] == "object" for p in pairs)


def test_paraphrases_are_found_when_two_objects_use_both_words_in_one_caption():
    # Two large objects: one caption says "a big square and a large circle", the other swaps the words.
    # Unbound labels "big" and "large" are then always used together; bound to their noun they alternate.
    videos = [[f"a big {c} square and a large {d} circle spin", f"a large {c} square and a big {d} circle spin"]
              for c, d in [("red", "blue"), ("blue", "green"), ("green", "cyan"), ("cyan", "white"),
                           ("white", "black"), ("black", "red")]]
    knowledge = {k.caption: k for k in extract_knowledge([c for v in videos for c in v])}
    assert ("attribute", "big", "large") in paraphrase_pairs(videos, knowledge)


def test_relation_paraphrases_are_found_on_the_predicate_a_swap_replaces(tmp_path):
    # Six videos say "beneath" in one caption and "below" in the other, about the same two objects.
    videos = [[f"a {c} star is beneath a square", f"a {c} star is below a square"]
              for c in ("red", "blue", "green", "cyan", "white", "black")]
    videos += [["a red star is above a square"]]
    # Two squares described from either side: "above" and "below" alternate, yet are not paraphrases.
    videos += [[f"a {c} square is above a white square", f"the white square is below the {c} square"]
               for c in ("red", "blue", "green", "cyan", "black", "orange")]
    knowledges = extract_knowledge([c for v in videos for c in v])
    assert {e["label"] for e in knowledges[0].element_spans if e["type"] == "relation"} == {"star|beneath|square"}
    pairs = paraphrase_pairs(videos, {k.caption: k for k in knowledges})
    assert ("relation", "beneath", "below") in pairs and ("relation", "below", "beneath") in pairs
    assert ("relation", "beneath", "above") not in pairs and ("relation", "above", "below") not in pairs
    # and the construction then never swaps one for the other
    vocab = KnowledgeVocab.build(knowledges, top_k={"object": 20, "attribute": 20, "action": 20, "relation": 20},
                                 min_count=1)
    with KnowledgeCache(tmp_path / "cache") as cache:
        negatives = build_swapped_negatives(knowledges, vocab, cache, ["relation"], per_type=6,
                                            videos_captions=videos)
    swaps = negatives["a red star is beneath a square"]
    assert ("a red star is above a square", "relation") in swaps
    assert not any("below" in caption for caption, _ in swaps)


def test_swaps_leave_undescribed_nouns_alone(parsed, tmp_path):
    # "video" is never described by an attribute: not swapped, and never put in place of a shape.
    captions = SHAPE_CAPTIONS + ["in this video a small red circle moves to the left",
                           "in this video a big blue square is rotating"]
    knowledges = extract_knowledge(captions)
    assert "video" not in described_objects(knowledges) and "circle" in described_objects(knowledges)
    vocab = KnowledgeVocab.build(knowledges, top_k={"object": 20, "attribute": 20, "action": 20, "relation": 20},
                                 min_count=1)
    with KnowledgeCache(tmp_path / "cache") as cache:
        negatives = build_swapped_negatives(knowledges, vocab, cache, ["object"], per_type=6)
    swapped = [n for kind_negatives in negatives.values() for n, _ in kind_negatives]
    assert swapped and all("video" in n for n in swapped if n.startswith("in this"))
    assert not any("this video" not in n and n.startswith("in this") for n in swapped)
    assert not any("video" in n for c, ns in negatives.items() if "video" not in c for n, _ in ns)


def test_excluded_labels_leave_the_vocabulary_and_are_never_swapped(tmp_path):
    # "starts spinning": the parser's action "start" is an aspect verb, not what the object does; as a swap
    # ("a big blue square starts") it makes a caption that reads wrong without looking at any video.
    captions = SHAPE_CAPTIONS + ["a big red star starts spinning", "a small blue circle starts bouncing",
                           "a small green triangle is rotating", "a big yellow star is bouncing"]
    knowledges = extract_knowledge(captions)
    full_vocab = KnowledgeVocab.build(knowledges, top_k=20)
    assert "start" in full_vocab.labels("action")
    vocab = KnowledgeVocab.build(knowledges, top_k=20, exclude={"action": ["start"]})
    assert "start" not in vocab.labels("action") and "rotate" in vocab.labels("action")

    def gets_inserted(negatives):
        return [n for c, rows in negatives.items() for n, _ in rows if "starts" in n and "starts" not in c]

    def gets_replaced(negatives):
        return [n for c, rows in negatives.items() for n, _ in rows if "starts" in c and "starts" not in n]

    with KnowledgeCache(tmp_path / "cache") as cache:  # full_vocab still holds "start": the swaps must skip it
        kept = build_swapped_negatives(knowledges, full_vocab, cache, ["action"], per_type=8)
        excluded = build_swapped_negatives(knowledges, full_vocab, cache, ["action"], per_type=8,
                                           exclude={"action": ["start"]})
    assert gets_inserted(kept)  # without the exclusion: "a ... starts" in place of another action
    assert not gets_inserted(excluded) and not gets_replaced(excluded)
    assert sum(map(len, excluded.values())) > 0


def test_frequency_sampling_swaps_in_labels_as_often_as_captions_use_them(tmp_path):
    # "stay" is 16 of the 20 mentions other than "bounce": uniform sampling puts it in about a third of a
    # bouncing caption's swaps (one of stay/spin/hop), frequency sampling in about 80%.
    colours, shapes = ["red", "blue", "green", "yellow"], ["square", "star", "triangle", "diamond"]
    still = [f"a small {c} {s} is staying still" for c in colours for s in shapes]
    bouncing = [f"a big {c} {s} is bouncing" for c in colours + ["purple", "white"] for s in shapes]
    captions = still + bouncing + ["a big red cross is spinning", "a big blue cross is spinning",
                                   "a big red cross is hopping", "a big blue cross is hopping"]
    knowledges = extract_knowledge(captions)
    vocab = KnowledgeVocab.build(knowledges, top_k=20, min_count=1)
    assert set(vocab.labels("action")) == {"stay", "bounce", "spin", "hop"}

    def share_made_still(sampling: str, vocab: KnowledgeVocab) -> float:
        with KnowledgeCache(tmp_path / "cache") as cache:
            negatives = build_swapped_negatives(knowledges, vocab, cache, ["action"], per_type=1,
                                                sampling=sampling)
        swaps = [n for c in bouncing for n, _ in negatives[c]]
        assert len(swaps) == len(bouncing)  # one valid swap per caption
        return sum(n.endswith("is staying") for n in swaps) / len(swaps)  # the span swapped is the verb

    assert share_made_still("uniform", vocab) < 0.5
    assert share_made_still("frequency", vocab) > 0.65
    # a vocabulary without counts (labels only) has no frequencies to follow: frequency sampling draws uniformly
    uncounted = KnowledgeVocab({kind: vocab.labels(kind) for kind in ("object", "attribute", "action", "relation")})
    assert share_made_still("frequency", uncounted) < 0.5
