"""`structvl knowledge`: parse every caption of an annotation file into the cache and report the vocabularies."""

from __future__ import annotations

import sys
from pathlib import Path

from structvl.data.formats import read_annotations
from structvl.data.knowledge.cache import KnowledgeCache, knowledge_for
from structvl.data.knowledge.record import KNOWLEDGE_TYPES
from structvl.data.knowledge.vocab import DEFAULT_TOP_K, KnowledgeVocab


def build_knowledge_cli(annotations: str | Path, fmt: str = "jsonl", cache_dir: str | Path | None = None,
                        top_k: int = DEFAULT_TOP_K, batch_size: int = 256, vocab_out: str | Path | None = None) -> int:
    """Parse every caption of an annotation file into the knowledge cache and report the vocabularies.

    The cache defaults to `<annotation dir>/.knowledge_cache`. Returns the exit status: 0, or 1 when the file
    holds no captions (e.g. a classification or QA annotation).
    """
    annotations = Path(annotations)
    records = read_annotations(fmt, annotations)
    captions = [caption for record in records for caption in record.captions]
    if not captions:
        print(f"{annotations}: {len(records)} records but no captions: nothing to parse", file=sys.stderr)
        return 1
    cache_dir = Path(cache_dir) if cache_dir is not None else annotations.parent / ".knowledge_cache"
    unique_count = len(set(captions))
    with KnowledgeCache(cache_dir) as cache:
        cache_size_before = len(cache)
        knowledges = knowledge_for(captions, cache, batch_size=batch_size, progress=True)
        cache_size = len(cache)
    parsed = cache_size - cache_size_before
    print(f"{annotations}: {len(records)} records, {len(captions)} captions ({unique_count} unique); "
          f"parsed {parsed}, {unique_count - parsed} were cached")
    print(f"cache: {cache.path} ({cache_size} captions, extractor {cache.version})")

    vocab = KnowledgeVocab.build(knowledges, top_k=top_k)
    seen = KnowledgeVocab.build(knowledges, top_k=sys.maxsize)
    for kind in KNOWLEDGE_TYPES:
        top = ", ".join(f"{label} ({n})" for label, n in zip(vocab.labels(kind)[:10], vocab.counts(kind)[:10]))
        print(f"{kind:>9}: {vocab.size(kind)} kept of {seen.size(kind)} distinct; top: {top or '-'}")
    if vocab_out is not None:
        vocab.save(vocab_out)
        print(f"vocabulary written to {vocab_out}")
    return 0
