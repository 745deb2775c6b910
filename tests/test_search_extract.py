"""structvl.search.extract (+ index and query end to end): a trained tiny run finds the clips its captions
describe, exact search ranks as `structvl eval --task retrieval`, a crashed extraction resumes, bad videos are
skipped, long videos are cut into segments, and user mistakes are one-line errors."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from conftest import write_video
from structvl.cli import main
from structvl.config import ConfigError
from structvl.data.formats import read_annotations
from structvl.data.records import VideoRecord
from structvl.data.text import Tokenizer
from structvl.runtime.precision import autocast_dtype
from structvl.search import extract as extract_module
from structvl.search.extract import ExtractOptions, extract_embeddings, plan_entries
from structvl.search.index import index_embeddings
from structvl.search.query import Searcher
from structvl.search.store import EmbeddingStore
from structvl.tasks.eval_data import eval_annotations
from structvl.tasks.evaluate import eval_loader, load_run_model
from structvl.tasks.retrieval import embed_texts, embed_videos, metrics_from_ranks, ranks_blockwise


def run_cli(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in argv])
    return exit_info.value.code


def caption_queries(entries: list[dict]) -> tuple[list[str], list[int]]:
    """Every caption of every entry, and the entry it describes."""
    pairs = [(caption, i) for i, entry in enumerate(entries) for caption in entry["captions"]]
    return [c for c, _ in pairs], [i for _, i in pairs]


def test_trained_run_finds_the_clip_of_each_caption(search_run, tmp_path, capsys):
    """extract -> index -> search over the test split (12 clips, 42 captions): each caption's own clip is in the
    top 5 for most captions (93% measured), far above a random ranking's 5/12."""
    corpus, run = search_run
    assert run_cli(["extract", "--checkpoint", run, "--data", corpus / "test.jsonl", "--out", tmp_path / "emb",
                    "--no-progress"]) == 0
    assert run_cli(["index", tmp_path / "emb", "--out", tmp_path / "idx"]) == 0
    searcher = Searcher(tmp_path / "idx")
    captions, own = caption_queries(searcher.entries)
    assert len(searcher.entries) == 12 and len(captions) == 42
    results = searcher.search(captions, k=5)
    top5 = np.mean([target in [hit["entry"] for hit in hits] for target, hits in zip(own, results)])
    assert top5 >= 0.8 and top5 > 5 / 12 + 0.3, top5
    # The command line prints the same hits for one query, best first, with scores.
    capsys.readouterr()
    assert run_cli(["search", tmp_path / "idx", captions[0], "-k", "5", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)[0]["results"]
    assert [h["entry"] for h in printed] == [h["entry"] for h in results[0]]
    assert printed == sorted(printed, key=lambda h: -h["score"])


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_exact_search_ranks_as_eval_retrieval(search_run, tmp_path, dtype):
    """The Flat index over `extract --data CORPUS` ranks every retrieval caption's clip where `structvl eval
    --task retrieval` ranks it, and gives the same metrics (float16 storage rounds the scores, not the order,
    here)."""
    corpus, run = search_run
    assert run_cli(["eval", "--task", "retrieval", "--checkpoint", run, "--data", corpus,
                    "--out", tmp_path / "m.json"]) == 0
    reference = json.loads((tmp_path / "m.json").read_text())
    assert run_cli(["extract", "--checkpoint", run, "--data", corpus, "--out", tmp_path / "emb", "--dtype", dtype,
                    "--no-progress"]) == 0
    assert run_cli(["index", tmp_path / "emb", "--out", tmp_path / "idx"]) == 0
    searcher = Searcher(tmp_path / "idx")
    assert searcher.info["index_key"] == "Flat"
    captions, own = caption_queries(searcher.entries)
    _, rows = searcher.index.search(searcher.encode(captions), searcher.index.ntotal)
    ranks = np.array([1 + searcher.ids[row].tolist().index(target) for row, target in zip(rows, own)])

    # The evaluation's own embeddings and ranks, recomputed the way `structvl eval` computes them.
    model, cfg, _ = load_run_model(run)
    tokenizer = Tokenizer(cfg.model.text.max_length)
    records = read_annotations(cfg.data.format, corpus / eval_annotations(cfg))
    autocast = autocast_dtype(cfg.train.precision, torch.device("cpu"))
    video, kept = embed_videos(model, eval_loader(records, cfg, corpus, tokenizer), torch.device("cpu"), autocast)
    text = embed_texts(model, tokenizer, captions, torch.device("cpu"), autocast_dtype=autocast)
    expected = ranks_blockwise(text, video, [[kept.index(t)] for t in own], cfg.eval.block_size)
    np.testing.assert_array_equal(ranks, expected)
    assert ranks.min() == 1 and ranks.max() > 1  # a real ranking, not all hits or all misses
    mine = metrics_from_ranks(ranks, "retrieval/t2v")
    assert mine == {k: reference[k] for k in mine}


def test_crash_mid_extract_resumes_without_recomputing(search_run, tmp_path, monkeypatch):
    """A crash while writing the third of six chunks keeps the first two; the rerun embeds only the other four
    and ends with exactly the embeddings of an uninterrupted extraction."""
    corpus, run = search_run
    opts = dict(chunk_size=4, batch_size=4)
    whole = extract_embeddings(run, corpus / "train.jsonl", tmp_path / "whole", opts=ExtractOptions(**opts),
                               progress=False)
    assert whole["chunks"] > 3

    embedded: list[int] = []  # entries sent through the model, per batch
    real_embed_batch = extract_module.ChunkEmbedder.embed_batch

    def counting_embed_batch(self, batch, first, count):
        embedded.append(count)
        return real_embed_batch(self, batch, first, count)

    real_write = EmbeddingStore.write_chunk

    def crashing_write(self, chunk, *args, **kwargs):
        if chunk == 2:
            raise RuntimeError("simulated crash")
        return real_write(self, chunk, *args, **kwargs)

    monkeypatch.setattr(extract_module.ChunkEmbedder, "embed_batch", counting_embed_batch)
    monkeypatch.setattr(EmbeddingStore, "write_chunk", crashing_write)
    with pytest.raises(RuntimeError, match="simulated crash"):
        extract_embeddings(run, corpus / "train.jsonl", tmp_path / "emb", opts=ExtractOptions(**opts), progress=False)
    store = EmbeddingStore(tmp_path / "emb")
    assert store.missing_chunks() == list(range(2, whole["chunks"]))
    kept_files = {p.name: p.stat().st_mtime_ns for p in store.chunks_dir.iterdir()}

    monkeypatch.setattr(EmbeddingStore, "write_chunk", real_write)
    embedded.clear()
    summary = extract_embeddings(run, corpus / "train.jsonl", tmp_path / "emb", opts=ExtractOptions(**opts),
                                 progress=False)
    assert summary["resumed"] and summary["chunks_this_run"] == whole["chunks"] - 2
    assert sum(embedded) == whole["entries"] - 2 * 4  # the two finished chunks were not embedded again
    assert all(p.stat().st_mtime_ns == kept_files[p.name] for p in store.chunks_dir.iterdir() if p.name in kept_files)
    for kind in ("video", "text"):
        got, got_ids = store.load(kind)
        want, want_ids = EmbeddingStore(tmp_path / "whole").load(kind)
        np.testing.assert_array_equal(got_ids, want_ids)
        np.testing.assert_array_equal(got, want)
    assert got.dtype == np.float16


def test_other_options_into_the_same_directory_are_refused(search_run, tmp_path):
    corpus, run = search_run
    extract_embeddings(run, corpus / "test.jsonl", tmp_path / "emb", progress=False)
    with pytest.raises(ConfigError, match="temporal_views"):
        extract_embeddings(run, corpus / "test.jsonl", tmp_path / "emb", opts=ExtractOptions(temporal_views=2),
                           progress=False)


def test_bad_videos_are_skipped_listed_and_not_indexed(search_run, tmp_path):
    corpus, run = search_run
    videos = tmp_path / "videos"
    videos.mkdir()
    for name in ("a.mp4", "b.mp4"):
        shutil.copy(corpus / "videos" / "test_000000.mp4", videos / name)
    (videos / "broken.mp4").write_bytes(b"not a video at all")
    summary = extract_embeddings(run, videos, tmp_path / "emb", progress=False)
    assert summary["entries"] == 3 and summary["embedded"] == 2
    assert [s["path"].endswith("broken.mp4") for s in summary["skipped"]] == [True]
    info = index_embeddings(tmp_path / "emb", tmp_path / "idx")
    assert info["vectors"] == 2
    store = EmbeddingStore(tmp_path / "emb")
    _, ids = store.load("video")
    assert sorted(store.entries()[i]["video"] for i in ids) == ["a.mp4", "b.mp4"]


def test_long_videos_are_cut_into_segments(tmp_path):
    write_video(tmp_path / "long.mp4", num_frames=32, fps=8)  # 4 s
    write_video(tmp_path / "short.mp4", num_frames=8, fps=8)  # 1 s
    records = [VideoRecord("long", "long.mp4", ["a long one"]), VideoRecord("short", "short.mp4"),
               VideoRecord("window", "long.mp4", start=1.0, end=3.0)]
    entries = plan_entries(records, tmp_path, ExtractOptions(segment=1.5))
    spans = [(e["id"], e["start"], e["end"], e.get("segment")) for e in entries]
    assert spans == [("long", 0.0, 1.5, 0), ("long", 1.5, 3.0, 1), ("long", 2.5, 4.0, 2),
                     ("short", None, None, None), ("window", 1.0, 2.5, 0), ("window", 1.5, 3.0, 1)]
    assert all(e["captions"] == ["a long one"] for e in entries[:3])  # each segment shows its video's captions
    overlapping = plan_entries(records[:1], tmp_path, ExtractOptions(segment=2.0, stride=1.0))
    assert [(e["start"], e["end"]) for e in overlapping] == [(0.0, 2.0), (1.0, 3.0), (2.0, 4.0)]


def test_segments_with_multi_view_pooling_search_with_times(search_run, tmp_path, capsys):
    """--segment with 2 temporal views x 2 crops: the ClipViews path; each segment's embedding is the normalised
    mean of its views, and `search` prints the segment times."""
    corpus, run = search_run
    videos = tmp_path / "videos"
    write_video(videos / "long.mp4", num_frames=32, size=(32, 48), fps=8)
    summary = extract_embeddings(run, videos, tmp_path / "emb", progress=False,
                                 opts=ExtractOptions(segment=2.0, temporal_views=2, spatial_crops=2))
    assert summary["entries"] == 2 and summary["embedded"] == 2
    vectors, _ = EmbeddingStore(tmp_path / "emb").load("video")
    np.testing.assert_allclose(np.linalg.norm(vectors.astype(np.float32), axis=1), 1.0, atol=2e-3)
    assert not np.allclose(vectors[0], vectors[1])  # the two halves of the clip differ
    index_embeddings(tmp_path / "emb", tmp_path / "idx")
    capsys.readouterr()
    assert run_cli(["search", tmp_path / "idx", "a red circle", "-k", "2"]) == 0
    out = capsys.readouterr().out
    assert "0.0-2.0 s" in out and "2.0-4.0 s" in out


@pytest.mark.parametrize("case", ["missing checkpoint", "empty collection", "bad k", "long query", "bad views"])
def test_user_mistakes_are_one_line_errors(search_run, tmp_path, capsys, case):
    corpus, run = search_run
    if case in ("bad k", "long query"):
        extract_embeddings(run, corpus / "test.jsonl", tmp_path / "emb", progress=False)
        index_embeddings(tmp_path / "emb", tmp_path / "idx")
    (tmp_path / "empty").mkdir()
    argv = {
        "missing checkpoint": ["extract", "--checkpoint", tmp_path / "nope", "--data", corpus, "--out", tmp_path / "e"],
        "empty collection": ["extract", "--checkpoint", run, "--data", tmp_path / "empty", "--out", tmp_path / "e"],
        "bad k": ["search", tmp_path / "idx", "a red circle", "-k", "0"],
        "long query": ["search", tmp_path / "idx", "a red circle that keeps on rolling " * 10],
        "bad views": ["extract", "--checkpoint", run, "--data", corpus, "--out", tmp_path / "e", "--temporal-views", "0"],
    }[case]
    capsys.readouterr()
    assert run_cli(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"structvl {argv[0]}: error: "), err
    assert {"missing checkpoint": "--checkpoint", "empty collection": "empty collection", "bad k": "argument -k: '0'",
            "long query": "query:", "bad views": "argument --temporal-views: '0'"}[case] in err
    assert not (tmp_path / "e").exists()  # refused before any work


def test_query_longer_than_the_text_tower_reads_is_refused(search_run, tmp_path):
    corpus, run = search_run
    extract_embeddings(run, corpus / "test.jsonl", tmp_path / "emb", progress=False)
    index_embeddings(tmp_path / "emb", tmp_path / "idx")
    searcher = Searcher(tmp_path / "idx")
    words = " ".join(["red"] * (searcher.tokenizer.max_length - 2))  # [CLS] + words + [SEP] fills it exactly
    assert len(searcher.search([words], k=3)[0]) == 3
    with pytest.raises(ConfigError, match="text tower reads"):
        searcher.search([words + " ball"], k=3)
