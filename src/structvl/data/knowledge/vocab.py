"""`KnowledgeVocab`: the top-K labels of each knowledge type, and the multi-hot targets CLOP predicts."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import torch

from structvl.data.knowledge.record import KNOWLEDGE_TYPES, CaptionKnowledge

DEFAULT_TOP_K = 100


class KnowledgeVocab:
    """The top-K labels of each knowledge type, and the multi-hot targets CLOP predicts.

    Labels are ranked by how many captions contain them (most frequent first, ties alphabetical, so a
    vocabulary is a deterministic function of the corpus). See the module docstring for what a label is per
    type; relation labels are "subject|predicate|object".
    """

    FORMAT = "structvl.knowledge_vocab/1"

    def __init__(self, labels: Mapping[str, Sequence[str]], counts: Mapping[str, Sequence[int]] | None = None,
                 total: int | None = None):
        unknown = set(labels) - set(KNOWLEDGE_TYPES)
        if unknown:
            raise ValueError(f"unknown knowledge types {sorted(unknown)}; expected {KNOWLEDGE_TYPES}")
        self._labels = {kind: list(labels.get(kind, ())) for kind in KNOWLEDGE_TYPES}
        counts = counts or {}
        self._counts = {kind: list(counts.get(kind, [0] * len(self._labels[kind]))) for kind in KNOWLEDGE_TYPES}
        self.total = total  # captions the counts are out of (None: not recorded), e.g. for a label's prior
        self._index = {kind: {label: i for i, label in enumerate(self._labels[kind])} for kind in KNOWLEDGE_TYPES}
        for kind in KNOWLEDGE_TYPES:
            if len(self._index[kind]) != len(self._labels[kind]):
                raise ValueError(f"repeated {kind} labels in the vocabulary")
            if len(self._counts[kind]) != len(self._labels[kind]):
                raise ValueError(f"{kind}: {len(self._labels[kind])} labels but {len(self._counts[kind])} counts")

    @classmethod
    def build(cls, knowledges: Iterable[CaptionKnowledge], top_k: int | Mapping[str, int] = DEFAULT_TOP_K,
              min_count: int = 1, exclude: Mapping[str, Iterable[str]] | None = None) -> KnowledgeVocab:
        """Keep, per type, the `top_k` labels (an int for all types, or per type; missing types get
        DEFAULT_TOP_K) that occur in at least `min_count` captions and are not in `exclude[type]`."""
        exclude = {kind: set(labels) for kind, labels in (exclude or {}).items()}
        unknown = set(exclude) - set(KNOWLEDGE_TYPES)
        if unknown:
            raise ValueError(f"unknown knowledge types in exclude: {sorted(unknown)}")
        if isinstance(top_k, Mapping):
            unknown = set(top_k) - set(KNOWLEDGE_TYPES)
            if unknown:
                raise ValueError(f"unknown knowledge types in top_k: {sorted(unknown)}")
            limits = {kind: top_k.get(kind, DEFAULT_TOP_K) for kind in KNOWLEDGE_TYPES}
        else:
            limits = dict.fromkeys(KNOWLEDGE_TYPES, top_k)
        caption_counts = {kind: Counter() for kind in KNOWLEDGE_TYPES}
        total = 0
        for knowledge in knowledges:
            total += 1
            for kind, labels in knowledge.labels().items():
                caption_counts[kind].update(set(labels))
        labels, counts = {}, {}
        for kind in KNOWLEDGE_TYPES:
            ranked = sorted(caption_counts[kind].items(), key=lambda item: (-item[1], item[0]))
            kept = [(label, n) for label, n in ranked
                    if n >= min_count and label not in exclude.get(kind, ())][:limits[kind]]
            labels[kind] = [label for label, _ in kept]
            counts[kind] = [n for _, n in kept]
        return cls(labels, counts, total)

    def labels(self, kind: str) -> list[str]:
        return list(self._labels[kind])

    def counts(self, kind: str) -> list[int]:
        """Per label, the number of captions it occurred in when the vocabulary was built."""
        return list(self._counts[kind])

    def size(self, kind: str) -> int:
        return len(self._labels[kind])

    def index(self, kind: str, label: str) -> int:
        """Position of `label` in the `kind` vocabulary; KeyError when it is not in the top-K."""
        return self._index[kind][label]

    def __contains__(self, kind_and_label: tuple[str, str]) -> bool:
        kind, label = kind_and_label
        return label in self._index[kind]

    def encode(self, knowledge: CaptionKnowledge) -> dict[str, torch.Tensor]:
        """Multi-hot targets {type: FloatTensor (size(type),)}; labels outside the vocabulary are ignored."""
        targets = {kind: torch.zeros(self.size(kind)) for kind in KNOWLEDGE_TYPES}
        for kind, labels in knowledge.labels().items():
            for label in labels:
                position = self._index[kind].get(label)
                if position is not None:
                    targets[kind][position] = 1.0
        return targets

    def encode_batch(self, knowledges: Sequence[CaptionKnowledge]) -> dict[str, torch.Tensor]:
        """`encode` stacked over a batch: {type: FloatTensor (B, size(type))}."""
        encoded = [self.encode(k) for k in knowledges]
        return {kind: torch.stack([e[kind] for e in encoded]) if encoded else torch.zeros(0, self.size(kind))
                for kind in KNOWLEDGE_TYPES}

    def to_dict(self) -> dict:
        return {"format": self.FORMAT, "relation_label": "subject|predicate|object", "captions": self.total,
                "vocab": {kind: [[label, n] for label, n in zip(self._labels[kind], self._counts[kind])]
                          for kind in KNOWLEDGE_TYPES}}

    @classmethod
    def from_dict(cls, data: Mapping) -> KnowledgeVocab:
        if data.get("format") != cls.FORMAT:
            raise ValueError(f"not a knowledge vocabulary (format {data.get('format')!r}, expected {cls.FORMAT!r})")
        vocab = data["vocab"]
        return cls({kind: [label for label, _ in entries] for kind, entries in vocab.items()},
                   {kind: [n for _, n in entries] for kind, entries in vocab.items()}, data.get("captions"))

    def save(self, path: str | Path) -> None:
        """Write JSON with one [label, count] per line: easy to read, and two vocabularies diff line by line."""
        data = self.to_dict()
        types = [f"    {json.dumps(kind)}: [" + ",".join(f"\n      {json.dumps(entry, ensure_ascii=False)}"
                                                         for entry in entries) + ("\n    ]" if entries else "]")
                 for kind, entries in data["vocab"].items()]
        text = (f'{{\n  "format": {json.dumps(data["format"])},\n'
                f'  "relation_label": {json.dumps(data["relation_label"])},\n'
                f'  "captions": {json.dumps(data["captions"])},\n'
                '  "vocab": {\n' + ",\n".join(types) + "\n  }\n}\n")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> KnowledgeVocab:
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, KnowledgeVocab):
            return NotImplemented
        return self._labels == other._labels and self._counts == other._counts

    def __repr__(self) -> str:
        sizes = ", ".join(f"{kind}={self.size(kind)}" for kind in KNOWLEDGE_TYPES)
        return f"KnowledgeVocab({sizes})"


def multi_hot(knowledges: list[CaptionKnowledge], vocab: KnowledgeVocab, types: list[str]) -> torch.Tensor:
    """(B, sum of vocabulary sizes) 0/1 matrix of each caption's in-vocabulary knowledge labels."""
    targets = vocab.encode_batch(knowledges)
    return torch.cat([targets[kind] for kind in types], dim=1)
