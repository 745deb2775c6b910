"""The on-disk knowledge cache (sqlite, one row per caption) and `knowledge_for`, which parses only what is missing."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import sqlite3
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from tqdm.auto import tqdm

from structvl.data.knowledge.record import CaptionKnowledge
from structvl.data.knowledge.rules import EXTRACTOR_VERSION, PIPELINE, iter_knowledge

if TYPE_CHECKING:
    from spacy.language import Language

PROGRESS_MIN_CAPTIONS = 2000  # below this, parsing takes about a second: no progress bar


def default_cache_version() -> str:
    """Extraction rules + parsing model: a change to either makes cached knowledge stale."""
    try:
        model_version = importlib.metadata.version(PIPELINE)
    except importlib.metadata.PackageNotFoundError:
        model_version = "unknown"
    return f"{EXTRACTOR_VERSION}:{PIPELINE}-{model_version}"


def caption_key(caption: str) -> str:
    return hashlib.sha1(caption.encode("utf-8")).hexdigest()


class KnowledgeCache:
    """Knowledge of every caption ever parsed, in `<cache_dir>/knowledge.sqlite`, so a corpus is parsed once.

    One row per caption, keyed by the sha1 of its exact text, holding the knowledge as JSON and the `version`
    it was extracted with; a row of another version counts as missing (and is overwritten when re-parsed), so
    changing the rules or the spaCy model invalidates the cache by itself. The database is in WAL mode: any
    number of processes may read while one writes, and each `put_many` is a single transaction.

    Picklable: the connection is re-opened lazily in each process (sqlite connections must not cross a fork).
    """

    FILENAME = "knowledge.sqlite"
    _QUERY_CHUNK = 500  # keys per SELECT ... IN (...), below SQLite's bound-parameter limit

    def __init__(self, cache_dir: str | Path, version: str | None = None):
        self.cache_dir = Path(cache_dir)
        self.path = self.cache_dir / self.FILENAME
        self.version = version if version is not None else default_cache_version()
        self._connection: sqlite3.Connection | None = None
        self._connection_pid: int | None = None
        self._connect()  # fail early on an unwritable directory

    def _connect(self) -> sqlite3.Connection:
        if self._connection is None or self._connection_pid != os.getpid():
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            connection = sqlite3.connect(self.path, timeout=60)
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=NORMAL")  # safe with WAL; a crash loses at most the last commit
            connection.execute("CREATE TABLE IF NOT EXISTS knowledge "
                               "(key TEXT PRIMARY KEY, version TEXT NOT NULL, data TEXT NOT NULL)")
            connection.commit()
            self._connection, self._connection_pid = connection, os.getpid()
        return self._connection

    def get_many(self, captions: Iterable[str]) -> dict[str, CaptionKnowledge]:
        """The cached knowledge of those `captions` that are cached with this version."""
        by_key = {caption_key(c): c for c in captions}
        keys = list(by_key)
        found: dict[str, CaptionKnowledge] = {}
        connection = self._connect()
        for i in range(0, len(keys), self._QUERY_CHUNK):
            chunk = keys[i:i + self._QUERY_CHUNK]
            rows = connection.execute(
                f"SELECT key, data FROM knowledge WHERE version = ? AND key IN ({','.join('?' * len(chunk))})",
                [self.version, *chunk])
            for key, data in rows:
                knowledge = CaptionKnowledge.from_dict(json.loads(data))
                if knowledge.caption == by_key[key]:  # guards against a (practically impossible) sha1 collision
                    found[knowledge.caption] = knowledge
        return found

    def put_many(self, knowledges: Iterable[CaptionKnowledge]) -> None:
        rows = [(caption_key(k.caption), self.version, json.dumps(k.to_dict(), ensure_ascii=False))
                for k in knowledges]
        connection = self._connect()
        with connection:  # one transaction: all rows or none
            connection.executemany("INSERT OR REPLACE INTO knowledge (key, version, data) VALUES (?, ?, ?)", rows)

    def __len__(self) -> int:
        return self._connect().execute("SELECT COUNT(*) FROM knowledge WHERE version = ?",
                                       [self.version]).fetchone()[0]

    def close(self) -> None:
        if self._connection is not None and self._connection_pid == os.getpid():
            self._connection.close()
        self._connection = self._connection_pid = None

    def __enter__(self) -> KnowledgeCache:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_connection": None, "_connection_pid": None}

    def __repr__(self) -> str:
        return f"KnowledgeCache('{self.cache_dir}', version='{self.version}')"


def knowledge_for(captions: Sequence[str], cache: KnowledgeCache | None = None, *, batch_size: int = 256,
                  n_process: int = 1, nlp: Language | None = None, progress: bool | None = None,
                  flush_every: int = 2048) -> list[CaptionKnowledge]:
    """The knowledge of every caption, in order, parsing only those not in `cache` yet (each unique caption once).

    Newly parsed captions are written to the cache every `flush_every` captions, so an interrupted run
    resumes where it stopped. `progress`: show a tqdm bar (default: when at least
    PROGRESS_MIN_CAPTIONS captions need parsing). Repeated captions share one CaptionKnowledge object.
    """
    unique_captions = list(dict.fromkeys(captions))
    known = cache.get_many(unique_captions) if cache is not None else {}
    missing = [c for c in unique_captions if c not in known]
    if missing:
        show_progress = progress if progress is not None else len(missing) >= PROGRESS_MIN_CAPTIONS
        pending: list[CaptionKnowledge] = []
        with tqdm(total=len(missing), desc="parsing captions", unit="caption", disable=not show_progress,
                  file=sys.stderr) as bar:
            for knowledge in iter_knowledge(missing, batch_size=batch_size, n_process=n_process, nlp=nlp):
                known[knowledge.caption] = knowledge
                pending.append(knowledge)
                if len(pending) >= flush_every:
                    _flush(cache, pending)
                    bar.update(flush_every)
            bar.update(len(pending))
            _flush(cache, pending)
    return [known[c] for c in captions]


def _flush(cache: KnowledgeCache | None, pending: list[CaptionKnowledge]) -> None:
    if cache is not None and pending:
        cache.put_many(pending)
    pending.clear()
