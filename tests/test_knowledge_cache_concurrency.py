"""Several writers on one knowledge cache (structvl.data.knowledge.cache): a cache opened while another process is
creating the file waits for it instead of failing with "database is locked", writes wait for a writer holding
the lock and keep every row, and a lock held past `timeout` is an error, never rows silently dropped.
(tests/test_knowledge_corpus.py runs whole shards on one cache in two processes.)"""

from __future__ import annotations

import json
import sqlite3
import threading
import time

import pytest

from structvl.data.knowledge.cache import KnowledgeCache

ROWS = [(f"key{i}", f"caption {i}", json.dumps({"i": i})) for i in range(50)]


def hold_lock(path, seconds: float, setup=()) -> threading.Thread:
    """Another connection takes the write lock on `path` (BEGIN IMMEDIATE) and releases it after `seconds`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    for statement in setup:
        connection.execute(statement)
    connection.execute("BEGIN IMMEDIATE")
    taken = time.monotonic()

    def release():
        time.sleep(max(0.0, seconds - (time.monotonic() - taken)))
        connection.execute("COMMIT")
        connection.close()

    thread = threading.Thread(target=release)
    thread.start()
    return thread


def stored_keys(cache: KnowledgeCache) -> set[str]:
    with sqlite3.connect(cache.path) as connection:
        return {key for key, in connection.execute("SELECT key FROM knowledge WHERE version = ?", [cache.version])}


def test_a_cache_opened_while_another_process_creates_the_file_waits_for_it(tmp_path):
    """The maker still holds the write lock of a new file in rollback mode: switching it to WAL is refused at once
    by sqlite (no busy wait), so the open is retried until the maker commits."""
    path = tmp_path / KnowledgeCache.FILENAME
    maker = hold_lock(path, 0.5, setup=["CREATE TABLE IF NOT EXISTS other (x)"])
    start = time.monotonic()
    with KnowledgeCache(tmp_path, version="v", timeout=30) as cache:
        assert time.monotonic() - start >= 0.3  # it did wait for the maker
        cache.put_rows(ROWS)
        assert cache._connect().execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    maker.join()
    assert stored_keys(cache) == {key for key, _, _ in ROWS}


def test_a_write_waits_for_the_writer_that_holds_the_lock_and_keeps_every_row(tmp_path):
    with KnowledgeCache(tmp_path, version="v", timeout=30) as cache:
        cache.put_rows(ROWS[:10])
        holder = hold_lock(cache.path, 0.5)
        cache.put_rows(ROWS[10:])
        cache.put_label_counts("corpus", {"object": {"circle": 3}})
        holder.join()
        assert cache.top_labels("corpus", "object", 5) == [("circle", 3)]
    assert stored_keys(cache) == {key for key, _, _ in ROWS}


def test_a_lock_held_past_the_timeout_is_an_error_not_a_lost_write(tmp_path):
    with KnowledgeCache(tmp_path, version="v", timeout=0.3) as cache:
        holder = hold_lock(cache.path, 2.0)
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            cache.put_rows(ROWS)
        holder.join()
        assert stored_keys(cache) == set()  # nothing half-written: the caller knows the rows are not there
        cache.put_rows(ROWS)
    assert stored_keys(cache) == {key for key, _, _ in ROWS}
