"""The on-disk knowledge cache (sqlite) and `knowledge_for`, which parses only what is missing.

Tables (all in `<cache_dir>/knowledge.sqlite`):

    knowledge  one row per caption: its knowledge as JSON, keyed by the sha1 of its text
    meta       named JSON blobs (zlib): a corpus's counts (whole, and per shard of `structvl knowledge
               --shard i/n` until they are reduced), a corpus's summary, CLOP's swap contexts
    labels     a counted corpus's label counts, one row per (type, label), indexed by count, so a training run
               reads its top-K vocabulary without loading the counts of every label
    swaps      CLOP's validated swapped captions, one row per (caption, swap context)

Rows derived from knowledge (meta, labels, swaps) are keyed by the cache's `version` too, so a new
extractor or spaCy model never meets counts or swaps of the old one.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import random
import sqlite3
import sys
import time
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from tqdm.auto import tqdm

from structvl.data.knowledge.parse import caption_key, parse_rows
from structvl.data.knowledge.record import CaptionKnowledge
from structvl.data.knowledge.rules import EXTRACTOR_VERSION, PIPELINE

if TYPE_CHECKING:
    from spacy.language import Language

PROGRESS_MIN_CAPTIONS = 2000  # below this, parsing takes about a second: no progress bar
__all__ = ["KnowledgeCache", "caption_key", "default_cache_version", "knowledge_for"]
T = TypeVar("T")
# Retries of a busy database sleep this long at first, doubling up to the cap; a private generator jitters them
# (so processes that collided do not retry in step) without touching the global `random` state a seed fixes.
RETRY_FIRST_SLEEP, RETRY_MAX_SLEEP = 0.01, 1.0
_jitter = random.Random()


def default_cache_version() -> str:
    """Extraction rules + parsing model: a change to either makes cached knowledge stale."""
    try:
        model_version = importlib.metadata.version(PIPELINE)
    except importlib.metadata.PackageNotFoundError:
        model_version = "unknown"
    return f"{EXTRACTOR_VERSION}:{PIPELINE}-{model_version}"


_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS knowledge (key TEXT PRIMARY KEY, version TEXT NOT NULL, data TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, data BLOB NOT NULL)",
    ("CREATE TABLE IF NOT EXISTS labels (corpus TEXT NOT NULL, type TEXT NOT NULL, label TEXT NOT NULL, "
     "count INTEGER NOT NULL, PRIMARY KEY (corpus, type, label))"),
    "CREATE INDEX IF NOT EXISTS labels_by_count ON labels (corpus, type, count DESC, label)",
    ("CREATE TABLE IF NOT EXISTS swaps (key TEXT NOT NULL, context TEXT NOT NULL, data TEXT NOT NULL, "
     "PRIMARY KEY (key, context))"),
)
_SCHEMA_NAMES = {"knowledge", "meta", "labels", "labels_by_count", "swaps"}


def _busy(error: sqlite3.OperationalError) -> bool:
    """Whether `error` says another connection holds the lock (worth waiting for), not that the file is
    read-only, corrupt or missing a table."""
    code = getattr(error, "sqlite_errorcode", None)  # Python >= 3.11
    if code is not None:
        return code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
    return str(error).startswith(("database is locked", "database table is locked", "database is busy"))


class KnowledgeCache:
    """Knowledge of every caption ever parsed, in `<cache_dir>/knowledge.sqlite`, so a corpus is parsed once.

    One row per caption, keyed by the sha1 of its exact text, holding the knowledge as JSON and the `version`
    it was extracted with; a row of another version counts as missing (and is overwritten when re-parsed), so
    changing the rules or the spaCy model invalidates the cache by itself.

    Concurrency: the database is switched to WAL mode once, by whichever process creates it, so any number of
    processes read while one writes. Every write (`put_many`, `put_rows`, ...) is one short transaction that
    starts with BEGIN IMMEDIATE, taking the write lock before it reads anything. Every connection waits up to
    `timeout` seconds for a lock (sqlite's busy timeout); where sqlite answers "database is locked" at once
    instead of waiting (switching a new file to WAL while another process is creating it, a reader meeting
    the last writer's cleanup of the WAL), the statement or whole transaction is retried with growing sleeps
    until `timeout` has passed. So the shards of `structvl knowledge --shard i/n` and training loader workers
    can all write to one cache. WAL needs the processes on one host (shared memory): for shards on several
    machines give each its own `--cache` and merge them with `merge_from` (`structvl knowledge --merge`).

    Picklable: the connection is re-opened lazily in each process (sqlite connections must not cross a fork).
    """

    FILENAME = "knowledge.sqlite"
    _QUERY_CHUNK = 500  # keys per SELECT ... IN (...), below SQLite's bound-parameter limit

    def __init__(self, cache_dir: str | Path, version: str | None = None, timeout: float = 600.0):
        self.cache_dir = Path(cache_dir)
        self.path = self.cache_dir / self.FILENAME
        self.version = version if version is not None else default_cache_version()
        self.timeout = timeout
        self._connection: sqlite3.Connection | None = None
        self._connection_pid: int | None = None
        self._connect()  # fail early on an unwritable directory

    def _connect(self) -> sqlite3.Connection:
        if self._connection is None or self._connection_pid != os.getpid():
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            # isolation_level=None: no implicit transactions; the writes below open their own (BEGIN IMMEDIATE).
            connection = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None)
            self._retry(lambda: _use_wal(connection))
            connection.execute("PRAGMA synchronous=NORMAL")  # safe with WAL; a crash loses at most the last commit
            tables = {name for name, in self._retry(lambda: connection.execute(
                "SELECT name FROM sqlite_master").fetchall())}
            if not _SCHEMA_NAMES <= tables:  # checked first, so a read-only cache that has them still opens
                self._retry(lambda: _transaction(connection, lambda c: [c.execute(s) for s in _SCHEMA]))
            self._connection, self._connection_pid = connection, os.getpid()
        return self._connection

    def _retry(self, attempt: Callable[[], T]) -> T:
        """attempt(), again after a sleep each time sqlite answers busy, until `timeout` seconds have passed."""
        deadline = time.monotonic() + self.timeout
        sleep = RETRY_FIRST_SLEEP
        while True:
            try:
                return attempt()
            except sqlite3.OperationalError as e:
                if not _busy(e) or time.monotonic() + sleep > deadline:
                    raise
            time.sleep(sleep * _jitter.uniform(0.5, 1.5))
            sleep = min(2 * sleep, RETRY_MAX_SLEEP)

    def _read(self, query: str, params: Sequence = ()) -> list[tuple]:
        """Every row of one query (fetched whole, so no read transaction stays open), retried while busy."""
        connection = self._connect()
        return self._retry(lambda: connection.execute(query, params).fetchall())

    def _write(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """work(connection) as one write transaction, all of it or none of it, retried whole while busy (every
        write here replaces rows, so running it again gives the same result)."""
        connection = self._connect()
        return self._retry(lambda: _transaction(connection, work))

    def _select_in(self, query: str, keys: Sequence[str], *params) -> Iterable[tuple]:
        """Rows of `query` (ending in "IN ({})") for `keys`, a chunk of keys per statement."""
        for i in range(0, len(keys), self._QUERY_CHUNK):
            chunk = keys[i:i + self._QUERY_CHUNK]
            yield from self._read(query.format(",".join("?" * len(chunk))), [*params, *chunk])

    # ------------------------------------------------------------ knowledge rows
    def get_many(self, captions: Iterable[str]) -> dict[str, CaptionKnowledge]:
        """The cached knowledge of those `captions` that are cached with this version."""
        by_key = {caption_key(c): c for c in captions}
        found: dict[str, CaptionKnowledge] = {}
        for key, data in self._select_in("SELECT key, data FROM knowledge WHERE version = ? AND key IN ({})",
                                         list(by_key), self.version):
            knowledge = CaptionKnowledge.from_dict(json.loads(data))
            if knowledge.caption == by_key[key]:  # guards against a (practically impossible) sha1 collision
                found[knowledge.caption] = knowledge
        return found

    def missing(self, captions: Iterable[str]) -> list[str]:
        """Those `captions` (unique, in order) with no row of this version; reads keys only, no knowledge."""
        by_key = {caption_key(c): c for c in captions}
        present = {key for key, in self._select_in("SELECT key FROM knowledge WHERE version = ? AND key IN ({})",
                                                   list(by_key), self.version)}
        return [caption for key, caption in by_key.items() if key not in present]

    def put_many(self, knowledges: Iterable[CaptionKnowledge]) -> None:
        self.put_rows((caption_key(k.caption), k.caption, json.dumps(k.to_dict(), ensure_ascii=False))
                      for k in knowledges)

    def put_rows(self, rows: Iterable[tuple[str, str, str]]) -> None:
        """Write (key, caption, knowledge JSON) rows, as `parse.parse_rows` makes them, in one transaction."""
        data = [(key, self.version, text) for key, _, text in rows]
        self._write(lambda c: c.executemany("INSERT OR REPLACE INTO knowledge (key, version, data) VALUES (?, ?, ?)",
                                            data))

    def __len__(self) -> int:
        return self._read("SELECT COUNT(*) FROM knowledge WHERE version = ?", [self.version])[0][0]

    # ------------------------------------------------------------ named blobs, corpus counts, labels
    def put_meta(self, name: str, value) -> None:
        blob = zlib.compress(json.dumps(value, ensure_ascii=False, sort_keys=True).encode("utf-8"))
        self._write(lambda c: c.execute("INSERT OR REPLACE INTO meta (name, data) VALUES (?, ?)",
                                        [self._name(name), blob]))

    def get_meta(self, name: str):
        rows = self._read("SELECT data FROM meta WHERE name = ?", [self._name(name)])
        return json.loads(zlib.decompress(rows[0][0]).decode("utf-8")) if rows else None

    def meta_names(self, prefix: str) -> list[str]:
        """Names of this version's blobs that start with `prefix`."""
        full = self._name(prefix)
        rows = self._read("SELECT name FROM meta WHERE substr(name, 1, ?) = ?", [len(full), full])
        return sorted(name[len(self._name("")):] for name, in rows)

    def _name(self, name: str) -> str:
        return f"{self.version}/{name}"

    def put_label_counts(self, corpus: str, counts: Mapping[str, Mapping[str, int]]) -> None:
        """Replace `corpus`'s label counts ({type: {label: captions}})."""
        corpus = self._name(corpus)
        rows = [(corpus, kind, label, n) for kind, labels in counts.items() for label, n in labels.items()]

        def replace(connection: sqlite3.Connection) -> None:
            connection.execute("DELETE FROM labels WHERE corpus = ?", [corpus])
            connection.executemany("INSERT INTO labels (corpus, type, label, count) VALUES (?, ?, ?, ?)", rows)

        self._write(replace)

    def top_labels(self, corpus: str, kind: str, limit: int, min_count: int = 1,
                   exclude: Iterable[str] = ()) -> list[tuple[str, int]]:
        """`corpus`'s `limit` most frequent `kind` labels counted in >= min_count captions, not in `exclude`,
        ties alphabetical (KnowledgeVocab.build's order): an index scan of `limit` rows, whatever the corpus."""
        exclude = set(exclude)
        rows = self._read(
            "SELECT label, count FROM labels WHERE corpus = ? AND type = ? AND count >= ? "
            "ORDER BY count DESC, label LIMIT ?", [self._name(corpus), kind, min_count, limit + len(exclude)])
        return [(label, n) for label, n in rows if label not in exclude][:limit]

    # ------------------------------------------------------------ swaps
    def put_swaps(self, context: str, swaps: Mapping[str, Sequence]) -> None:
        """Write {caption: [(swapped caption, type), ...]} under swap context `context`."""
        rows = [(caption_key(caption), self._name(context), json.dumps([caption, list(map(list, rows))],
                                                                       ensure_ascii=False))
                for caption, rows in swaps.items()]
        self._write(lambda c: c.executemany("INSERT OR REPLACE INTO swaps (key, context, data) VALUES (?, ?, ?)",
                                            rows))

    def get_swaps(self, context: str, captions: Iterable[str]) -> dict[str, list[tuple[str, str]]]:
        """{caption: [(swapped caption, type), ...]} of those `captions` with swaps under `context`."""
        by_key = {caption_key(c): c for c in captions}
        found = {}
        for key, data in self._select_in("SELECT key, data FROM swaps WHERE context = ? AND key IN ({})",
                                         list(by_key), self._name(context)):
            caption, rows = json.loads(data)
            if caption == by_key[key]:
                found[caption] = [tuple(row) for row in rows]
        return found

    # ------------------------------------------------------------ merging caches of several machines
    def merge_from(self, other: str | Path) -> int:
        """Copy every row of the cache in directory `other` into this one (its rows win); returns the knowledge
        rows copied. For shards parsed on machines that do not share a disk with working file locks."""
        source = Path(other) / self.FILENAME
        if not source.is_file():
            raise FileNotFoundError(f"no knowledge cache in {other} ({source} does not exist)")

        def copy(connection: sqlite3.Connection) -> int:
            before = connection.total_changes
            connection.execute("INSERT OR REPLACE INTO knowledge SELECT * FROM other.knowledge")
            copied = connection.total_changes - before
            for table in ("meta", "labels", "swaps"):
                connection.execute(f"INSERT OR REPLACE INTO {table} SELECT * FROM other.{table}")
            return copied

        connection = self._connect()
        connection.execute("ATTACH DATABASE ? AS other", [str(source)])
        try:
            return self._write(copy)
        finally:
            connection.execute("DETACH DATABASE other")

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


def _use_wal(connection: sqlite3.Connection) -> None:
    """Switch the database to WAL unless it is already (the mode is stored in the file: set once, by its maker)."""
    if connection.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
        connection.execute("PRAGMA journal_mode=WAL")


def _transaction(connection: sqlite3.Connection, work: Callable[[sqlite3.Connection], T]) -> T:
    """work(connection) between BEGIN IMMEDIATE and COMMIT; rolled back if anything in it fails."""
    connection.execute("BEGIN IMMEDIATE")
    try:
        result = work(connection)
        connection.execute("COMMIT")
    except BaseException:
        if connection.in_transaction:
            connection.execute("ROLLBACK")
        raise
    return result


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
        pending: list[tuple[str, str, str]] = []
        with tqdm(total=len(missing), desc="parsing captions", unit="caption", disable=not show_progress,
                  file=sys.stderr) as bar:
            for rows in parse_rows(missing, n_process=n_process, batch_size=batch_size, nlp=nlp):
                for key, caption, data in rows:
                    known[caption] = CaptionKnowledge.from_dict(json.loads(data))
                pending.extend(rows)
                bar.update(len(rows))
                if len(pending) >= flush_every:
                    _flush(cache, pending)
            _flush(cache, pending)
    return [known[c] for c in captions]


def _flush(cache: KnowledgeCache | None, pending: list[tuple[str, str, str]]) -> None:
    if cache is not None and pending:
        cache.put_rows(pending)
    pending.clear()
