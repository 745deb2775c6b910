"""Parsing captions on several cores: each worker process runs `nlp.pipe(chunk, batch_size=B)` *and* the
extraction rules, and sends back the knowledge as JSON text.

Why not spaCy's own `nlp.pipe(..., n_process=K)`: its workers send every parsed `Doc` back to the parent
through a pipe (`Doc.to_bytes`, then `from_bytes`), and the extraction rules (`rules.knowledge_from_doc`)
would still run one caption at a time in the parent. Serialising a Doc costs about as much as the rules, so
the parent becomes the bottleneck and a second process adds little (benchmarks/knowledge.py prints both).
Here the parent only receives a few short JSON strings per caption and writes them to the cache, so the
work that grows with the corpus runs in the K workers. Each worker loads the pipeline once; under the
"fork" start method (Linux) it inherits the parent's copy when the parent loaded it first.

Order is kept: rows come back in the order the captions went in, whatever K is, and every caption's
knowledge is the same whatever K and B are (spaCy's CPU parse of a sentence does not depend on its batch).
"""

from __future__ import annotations

import collections
import hashlib
import itertools
import json
import multiprocessing
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from structvl.data.knowledge.rules import knowledge_from_doc, load_nlp

if TYPE_CHECKING:
    from spacy.language import Language

CHUNK_BATCHES = 4  # captions per task sent to a worker: this many spaCy batches (large enough to amortise the IPC)


def caption_key(caption: str) -> str:
    """The cache key of a caption: the sha1 of its exact text."""
    return hashlib.sha1(caption.encode("utf-8")).hexdigest()


def _rows(captions: list[str], batch_size: int, nlp: Language | None) -> list[tuple[str, str, str]]:
    nlp = nlp if nlp is not None else load_nlp()
    return [(caption_key(doc.text), doc.text, json.dumps(knowledge_from_doc(doc).to_dict(), ensure_ascii=False))
            for doc in nlp.pipe(captions, batch_size=batch_size)]


def _worker_rows(task: tuple[list[str], int]) -> list[tuple[str, str, str]]:
    captions, batch_size = task
    return _rows(captions, batch_size, None)


def _chunks(captions: Iterable[str], size: int) -> Iterator[list[str]]:
    iterator = iter(captions)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


def parse_rows(captions: Iterable[str], n_process: int = 1, batch_size: int = 256,
               nlp: Language | None = None) -> Iterator[list[tuple[str, str, str]]]:
    """(cache key, caption, knowledge JSON) rows for `captions`, in order, a chunk at a time.

    n_process: worker processes (1 parses here, with `nlp` when given). batch_size: spaCy's batch size.
    The captions are read lazily, so a generator over a corpus never sits in memory whole.
    """
    if n_process < 1:
        raise ValueError(f"n_process must be >= 1, got {n_process}")
    chunks = _chunks(captions, batch_size * CHUNK_BATCHES)
    if n_process == 1:
        for chunk in chunks:
            yield _rows(chunk, batch_size, nlp)
        return
    load_nlp()  # once here: forked workers inherit it instead of each loading the model
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    with context.Pool(n_process) as pool:
        # At most 2 x n_process chunks in flight, collected in submission order (Pool.imap would drain the
        # whole caption generator into its task queue at once).
        in_flight: collections.deque = collections.deque()
        for chunk in chunks:
            in_flight.append(pool.apply_async(_worker_rows, ((chunk, batch_size),)))
            if len(in_flight) >= 2 * n_process:
                yield in_flight.popleft().get()
        while in_flight:
            yield in_flight.popleft().get()
