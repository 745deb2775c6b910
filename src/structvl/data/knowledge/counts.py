"""`CorpusCounts`: everything the vocabulary and CLOP's swaps need to know about a whole corpus, as sums.

The label vocabulary (top-K labels by caption count) and the swap rules (how the corpus words each element,
which labels it uses as paraphrases, which modifiers it combines, which nouns it describes) are corpus-level
statistics. All of them are counts or sets, so they add up: each shard of `structvl knowledge --shard i/n`
counts its own part, and the reduce step is `merge`. Two rules make the sum equal to one process's count:

* a caption is counted once, by the shard of the first video (in annotation order) that has it, even when
  several videos share it (`add_caption`);
* paraphrase evidence is per video (two captions of one video that use different words for one thing), and
  shards are cut by video, so every video's captions are counted together (`add_video`).

Ties are broken by text, never by insertion order, so the merged result does not depend on the shard count.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping

from structvl.data.knowledge.record import KNOWLEDGE_TYPES, CaptionKnowledge


def swappable_label(element: Mapping) -> str:
    """The swappable part of an element: relations swap their predicate, keeping subject and object."""
    return element["label"].split("|")[1] if element["type"] == "relation" else element["label"]


def _tag_class(tag: str) -> str:
    """Proper-noun tags are spaCy's frequent misreading of shape nouns ("cross"): match them as common nouns."""
    return {"NNP": "NN", "NNPS": "NNS"}.get(tag, tag)


def span_tag(knowledge: CaptionKnowledge, start: int) -> str:
    """The (class of the) part-of-speech tag of the word starting at character `start`, or ""."""
    word = next((w for w in knowledge.words if w["start"] == start), None)
    return _tag_class(word["tag"]) if word else ""


def knowledge_elements(k: CaptionKnowledge) -> dict[str, set[str]]:
    """A caption's knowledge as sets per type, attributes bound to their noun ("red|circle"): "a red star and
    a blue circle" -> "a red star and a red circle" changes an element even though "red" was there."""
    elements = {kind: set(labels) for kind, labels in k.labels().items()}
    elements["attribute"] = {f"{attribute}|{noun}" for attribute, noun in k.attributes}
    return elements


def _comparable_items(k: CaptionKnowledge) -> set[tuple[str, str, str]]:
    """(type, label, what it must share to be compared) of a caption; see `video_paraphrase_evidence`."""
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


def video_paraphrase_evidence(knowledges: list[CaptionKnowledge]) -> tuple[set, set]:
    """(pairs used together in one caption, pairs that alternate) among one video's captions; a pair is
    (type, a, b) with a < b. See `swaps.paraphrase_pairs` for the rules. Fewer than 2 captions: no evidence."""
    sets = [_comparable_items(k) for k in knowledges]
    if len(sets) < 2:
        return set(), set()

    def pairs(items) -> set:
        return {(a[0], a[1], b[1]) for a in items for b in items if a[0] == b[0] and a[2] == b[2] and a[1] < b[1]}

    in_one = set().union(*[pairs(s) for s in sets])
    every = pairs(set().union(*sets))
    return every & in_one, every - in_one


class CorpusCounts:
    """Counts of a corpus (or of one shard of it) that the vocabulary and the swap rules are built from.

    captions, videos: how many were counted. labels[type][label]: captions naming the label (the vocabulary's
    counts). forms[(type, label, tag)][text]: how often the element is worded `text` with the first word tagged
    `tag`. described[noun]: captions giving the noun an attribute. comodifiers: attribute pairs seen on one
    noun. together / alternate[(type, a, b)]: videos whose captions use a and b in one caption / alternately.
    """

    def __init__(self):
        self.captions = 0
        self.videos = 0
        self.labels: dict[str, Counter] = {kind: Counter() for kind in KNOWLEDGE_TYPES}
        self.forms: dict[tuple[str, str, str], Counter] = defaultdict(Counter)
        self.described: Counter = Counter()
        self.comodifiers: set[tuple[str, str]] = set()
        self.together: Counter = Counter()
        self.alternate: Counter = Counter()

    @classmethod
    def of(cls, knowledges: Iterable[CaptionKnowledge],
           videos: Iterable[list[CaptionKnowledge]] = ()) -> CorpusCounts:
        """The counts of `knowledges` (each counted once) and the paraphrase evidence of `videos` (each the
        knowledge of one video's captions)."""
        counts = cls()
        for k in {k.caption: k for k in knowledges}.values():
            counts.add_caption(k)
        for video in videos:
            counts.add_video(video)
        return counts

    def add_caption(self, k: CaptionKnowledge) -> None:
        self.captions += 1
        for kind, labels in k.labels().items():
            self.labels[kind].update(set(labels))
        for element in k.element_spans:
            if len(element["spans"]) == 1:
                start, end = element["spans"][0]
                self.forms[(element["type"], swappable_label(element), span_tag(k, start))][k.caption[start:end]] += 1
        self.described.update({noun for _, noun in k.attributes})
        by_noun = defaultdict(set)
        for e in k.element_spans:
            if e["type"] == "attribute":
                by_noun[tuple(e["noun_span"])].add(e["label"])
        for labels in by_noun.values():
            self.comodifiers.update((a, b) for a in labels for b in labels if a != b)

    def add_video(self, knowledges: list[CaptionKnowledge]) -> None:
        self.videos += 1
        together, alternate = video_paraphrase_evidence(knowledges)
        self.together.update(together)
        self.alternate.update(alternate)

    def merge(self, other: CorpusCounts) -> CorpusCounts:
        """Add `other`'s counts into these (the reduce step over shards); returns self."""
        self.captions += other.captions
        self.videos += other.videos
        for kind in KNOWLEDGE_TYPES:
            self.labels[kind].update(other.labels[kind])
        for key, texts in other.forms.items():
            self.forms[key].update(texts)
        self.described.update(other.described)
        self.comodifiers |= other.comodifiers
        self.together.update(other.together)
        self.alternate.update(other.alternate)
        return self

    # ------------------------------------------------------------ what the swaps read
    def surface_forms(self) -> dict[tuple[str, str, str], list[str]]:
        """(type, label, tag) -> the texts that express it, most frequent first (ties by text)."""
        return {key: [text for text, _ in sorted(texts.items(), key=lambda item: (-item[1], item[0]))]
                for key, texts in self.forms.items()}

    def described_objects(self, min_count: int = 2) -> set[str]:
        return {noun for noun, n in self.described.items() if n >= min_count}

    def paraphrase_pairs(self, min_videos: int = 5, ratio: float = 5.0) -> set[tuple[str, str, str]]:
        pairs = set()
        for (kind, a, b), n in self.alternate.items():
            if n >= min_videos and n >= ratio * self.together[(kind, a, b)]:
                pairs.update({(kind, a, b), (kind, b, a)})
        return pairs

    # ------------------------------------------------------------ storage (JSON)
    def to_dict(self) -> dict:
        return {
            "captions": self.captions, "videos": self.videos,
            "labels": {kind: dict(c) for kind, c in self.labels.items()},
            "forms": [[*key, dict(texts)] for key, texts in self.forms.items()],
            "described": dict(self.described),
            "comodifiers": sorted(map(list, self.comodifiers)),
            "together": [[*key, n] for key, n in self.together.items()],
            "alternate": [[*key, n] for key, n in self.alternate.items()],
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> CorpusCounts:
        counts = cls()
        counts.captions, counts.videos = data["captions"], data["videos"]
        for kind, labels in data["labels"].items():
            counts.labels[kind] = Counter(labels)
        for kind, label, tag, texts in data["forms"]:
            counts.forms[(kind, label, tag)] = Counter(texts)
        counts.described = Counter(data["described"])
        counts.comodifiers = {tuple(pair) for pair in data["comodifiers"]}
        counts.together = Counter({tuple(row[:3]): row[3] for row in data["together"]})
        counts.alternate = Counter({tuple(row[:3]): row[3] for row in data["alternate"]})
        return counts

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CorpusCounts) and self.to_dict_sorted() == other.to_dict_sorted()

    def to_dict_sorted(self) -> dict:
        data = self.to_dict()
        for key in ("forms", "together", "alternate"):
            data[key] = sorted(data[key], key=lambda row: [str(x) for x in row[:3]])
        return data
