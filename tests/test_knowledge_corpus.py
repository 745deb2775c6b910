"""`structvl knowledge` at corpus scale (structvl.data.knowledge.corpus): the pass split into shards, run one
after another, at the same time on one cache, or on two machines' caches merged, leaves exactly the cache one
process leaves (knowledge rows, label counts, CLOP's swaps); parsing on two processes gives the same rows."""

from __future__ import annotations

import json
import multiprocessing
import sqlite3

import pytest

from structvl.data.knowledge.cache import KnowledgeCache
from structvl.data.knowledge.corpus import (
    CorpusPlan,
    corpus_fingerprint,
    knowledge_pass,
    shard_of,
    vocab_from_cache,
)
from structvl.data.knowledge.counts import CorpusCounts
from structvl.data.knowledge.rules import extract_knowledge
from structvl.data.knowledge.swaps import SwapSettings
from structvl.data.knowledge.vocab import KnowledgeVocab
from structvl.data.records import VideoRecord

from helpers import SHAPE_CAPTIONS

CORPUS = "test-corpus"
SWAPS = SwapSettings.make(["object", "attribute", "action"], per_type=1, seed=1)
VOCAB = {"top_k": 20, "min_count": 1}


def make_records() -> list[VideoRecord]:
    """Videos of one to three captions: paraphrases ("big"/"large"), and one caption shared by two videos."""
    records = [VideoRecord(video_id=f"v{i}", video=f"v{i}.mp4", captions=[c]) for i, c in enumerate(SHAPE_CAPTIONS)]
    colours = ("red", "blue", "green", "yellow", "white", "black")
    records += [VideoRecord(video_id=f"p{i}", video=f"p{i}.mp4",
                            captions=[f"a big {c} circle is spinning", f"a large {c} circle is spinning"])
                for i, c in enumerate(colours)]
    records.append(VideoRecord(video_id="dup", video="dup.mp4", captions=[SHAPE_CAPTIONS[2], "a small red star falls"]))
    return records


def dump(cache: KnowledgeCache) -> dict:
    """Everything a pass leaves that does not name its shards: rows, label counts, swaps, corpus counts."""
    with sqlite3.connect(cache.path) as connection:
        tables = {table: sorted(connection.execute(f"SELECT * FROM {table}"))
                  for table in ("knowledge", "labels", "swaps")}
    counts = CorpusCounts.from_dict(cache.get_meta(f"counts/{CORPUS}")).to_dict_sorted()
    contexts = {name: cache.get_meta(name) for name in cache.meta_names("swapctx/")}
    summary = {k: v for k, v in cache.get_meta(f"corpus/{CORPUS}").items() if k != "shards"}
    return {**tables, "counts": counts, "summary": summary, "contexts": contexts}


def run_pass(cache_dir, shard=(0, 1), **kwargs) -> dict:
    with KnowledgeCache(cache_dir) as cache:
        return knowledge_pass(make_records(), cache, CORPUS, shard=shard, swaps=SWAPS, **VOCAB, **kwargs)


@pytest.fixture(scope="module")
def single(tmp_path_factory, parsed):  # `parsed` loads the spaCy model once, before any fork
    directory = tmp_path_factory.mktemp("single")
    summary = run_pass(directory)
    return directory, summary, dump(KnowledgeCache(directory))


def test_the_shards_split_the_videos(single):
    plans = [CorpusPlan(make_records(), (i, 2)) for i in range(2)]
    assert all(plan.my_videos for plan in plans)  # both shards have work: the test below means something
    assert sorted(plans[0].my_videos + plans[1].my_videos) == sorted({r.video_id for r in make_records()})
    owned = plans[0].owned + plans[1].owned  # every caption is counted by exactly one shard
    assert sorted(owned) == sorted({c for r in make_records() for c in r.captions})
    assert all(shard_of(v, 2) == i for i, plan in enumerate(plans) for v in plan.my_videos)


def test_one_process_counts_and_builds_swaps(single):
    _, summary, state = single
    assert summary["counted"] and summary["parsed"] == summary["captions"] == 21
    assert summary["swaps_built"] == summary["captions"] and state["swaps"]
    assert state["summary"] == {"captions": 21, "videos": 15}
    # the counts are those of the corpus held in memory (each caption once, each video's paraphrases)
    records = make_records()
    knowledge = {k.caption: k for k in extract_knowledge(sorted({c for r in records for c in r.captions}))}
    expected = CorpusCounts.of(knowledge.values(), [[knowledge[c] for c in r.captions] for r in records])
    assert state["counts"] == expected.to_dict_sorted()
    assert ("attribute", "big", "large") in expected.paraphrase_pairs()  # the evidence the shards must keep


def test_shards_one_after_another_give_the_same_cache(single, tmp_path):
    first = run_pass(tmp_path, (0, 2))
    assert not first["counted"] and first["pending_shards"] == ["1/2"] and first["swaps_built"] == 0
    second = run_pass(tmp_path, (1, 2))  # finds both parts: reduces, then builds its own captions' swaps
    assert second["counted"] and second["swaps_built"] > 0
    again = run_pass(tmp_path, (0, 2))  # the rerun parses nothing and builds shard 0's swaps
    assert again["parsed"] == 0 and again["swaps_built"] == len(CorpusPlan(make_records(), (0, 2)).owned)
    assert dump(KnowledgeCache(tmp_path)) == single[2]
    assert run_pass(tmp_path, (1, 2))["swaps_built"] == 0  # finished work is found, not redone


def test_two_parsing_processes_give_the_same_rows(single, tmp_path):
    summary = run_pass(tmp_path, n_process=2, batch_size=4)
    assert summary["parsed"] == 21
    assert dump(KnowledgeCache(tmp_path)) == single[2]


def _shard_worker(args) -> dict:
    directory, index = args
    return run_pass(directory, (index, 2), wait=120)


def test_concurrent_shards_write_one_cache(single, tmp_path):
    """Two processes parse, count, reduce and build swaps into one sqlite cache at the same time (WAL + busy
    timeout): both finish, and the cache is the single process's."""
    context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
    with context.Pool(2) as pool:
        summaries = pool.map(_shard_worker, [(tmp_path, 0), (tmp_path, 1)])
    assert all(s["counted"] for s in summaries)
    assert sum(s["swaps_built"] for s in summaries) == 21
    assert dump(KnowledgeCache(tmp_path)) == single[2]


def test_caches_of_two_machines_merge_into_the_same_cache(single, tmp_path):
    run_pass(tmp_path / "a", (0, 2))
    run_pass(tmp_path / "b", (1, 2))  # another machine: it never sees shard 0's part
    with KnowledgeCache(tmp_path / "a") as cache:
        cache.merge_from(tmp_path / "b")
    run_pass(tmp_path / "a", (0, 2))
    run_pass(tmp_path / "a", (1, 2))
    assert dump(KnowledgeCache(tmp_path / "a")) == single[2]


def test_vocab_from_cache_is_the_vocab_built_from_the_captions(single):
    directory, _, _ = single
    records = make_records()
    knowledge = extract_knowledge(sorted({c for r in records for c in r.captions}))
    exclude = {"action": ["spin"]}
    for top_k in (2, {"object": 3, "attribute": 1}, 100):
        for min_count in (1, 2):
            built = KnowledgeVocab.build(knowledge, top_k=top_k, min_count=min_count, exclude=exclude)
            read = vocab_from_cache(KnowledgeCache(directory), CORPUS, top_k, min_count, exclude)
            assert read == built and read.total == len(knowledge)
    assert vocab_from_cache(KnowledgeCache(directory), "never-counted") is None


def test_corpus_fingerprint_follows_the_file(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps({"video_id": "a", "video": "a.mp4", "captions": ["a dog runs"]}) + "\n")
    first = corpus_fingerprint("jsonl", path)
    assert first == corpus_fingerprint("jsonl", path) != corpus_fingerprint("msrvtt", path)
    path.write_text(json.dumps({"video_id": "a", "video": "a.mp4", "captions": ["a cat runs"]}) + "\n")
    assert corpus_fingerprint("jsonl", path) != first


def test_knowledge_command_shards_and_reports(tmp_path, capsys):
    from structvl.cli import main

    annotations = tmp_path / "train.jsonl"
    annotations.write_text("".join(json.dumps(r.to_dict()) + "\n" for r in make_records()))
    with pytest.raises(SystemExit) as exit_info:
        main(["knowledge", str(annotations), "--shard", "0/2"])
    assert exit_info.value.code == 0
    assert "waiting for shard(s) 1/2" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["knowledge", str(annotations), "--shard", "1/2", "--processes", "2"])
    out = capsys.readouterr().out
    assert "shard 1/2" in out and "object:" in out and "circle (" in out
    with pytest.raises(SystemExit) as exit_info:
        main(["knowledge", str(annotations), "--shard", "2/2"])
    assert exit_info.value.code == 2


def test_a_remembered_fingerprint_is_not_read_again_until_the_file_changes(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps({"video_id": "a", "video": "a.mp4", "captions": ["a dog runs"]}) + "\n")
    cache = KnowledgeCache(tmp_path / "cache")
    digest = corpus_fingerprint("jsonl", path, cache)
    assert digest == corpus_fingerprint("jsonl", path)
    name = f"fingerprint/jsonl/{path.resolve()}"
    size, mtime, _ = cache.get_meta(name)
    cache.put_meta(name, [size, mtime, "remembered"])  # a start-up with the file unchanged only stats it
    assert corpus_fingerprint("jsonl", path, cache) == "remembered"
    path.write_text(json.dumps({"video_id": "a", "video": "a.mp4", "captions": ["a cat runs fast"]}) + "\n")
    assert corpus_fingerprint("jsonl", path, cache) == corpus_fingerprint("jsonl", path) != digest
