"""structvl.search.index: the index chosen by size, its parameter tuned to the target recall, the recall written
beside it measured honestly against exact search, and an index directory never overwritten."""

from __future__ import annotations

import json

import faiss
import numpy as np
import pytest

from structvl.cli import main
from structvl.config import ConfigError
from structvl.search.index import (
    build_index,
    choose_index_key,
    index_embeddings,
    ivf_lists,
    parameter_candidates,
    recall_at_k,
    set_parameters,
)
from structvl.search.store import EmbeddingStore


def clustered(n: int, dim: int, clusters: int, seed: int, spread: float = 0.25) -> np.ndarray:
    """L2-normalised points around `clusters` random centres (what a collection's embeddings look like)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    points = centres[rng.integers(clusters, size=n)] + spread * rng.standard_normal((n, dim)).astype(np.float32)
    return (points / np.linalg.norm(points, axis=1, keepdims=True)).astype(np.float32)


def brute_force_top(vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-(queries @ vectors.T), axis=1, kind="stable")[:, :k]


def make_store(root, vectors: np.ndarray, captions: np.ndarray | None = None, chunk_size: int = 1000,
               write_chunks: bool = True) -> EmbeddingStore:
    """An embedding directory holding `vectors` (float16), one entry each, as `structvl extract` writes it."""
    store = EmbeddingStore(root)
    entries = [{"id": f"v{i}", "video": f"v{i}.mp4", "start": None, "end": None, "captions": [], "record": i}
               for i in range(len(vectors))]
    store.open({"dtype": "float16", "chunk_size": chunk_size, "embed_dim": vectors.shape[1]}, entries)
    captions = np.zeros((0, vectors.shape[1]), np.float32) if captions is None else captions
    for chunk in range(-(-len(vectors) // chunk_size) if write_chunks else 0):
        lo, hi = chunk * chunk_size, min((chunk + 1) * chunk_size, len(vectors))
        in_chunk = [i for i in range(len(captions)) if lo <= i % len(vectors) < hi]
        store.write_chunk(chunk, vectors[lo:hi], list(range(lo, hi)), captions[in_chunk],
                          [i % len(vectors) for i in in_chunk], [])
    return store


def test_recall_at_k_counts_the_shared_neighbours():
    found = np.array([[1, 2, 3, 4], [5, 6, 7, 8]])
    truth = np.array([[4, 3, 9, 9], [5, 0, 0, 0]])
    assert recall_at_k(found, truth, k=4) == pytest.approx((2 / 4 + 1 / 4) / 2)
    assert recall_at_k(found[:, :2], truth[:, :2], k=2) == pytest.approx((0 + 1 / 2) / 2)


def test_index_chosen_by_size_and_memory():
    assert choose_index_key(9_999, 256) == "Flat"
    assert ivf_lists(1_000_000) == 8192  # the power of two nearest 8 sqrt(N)
    assert choose_index_key(1_000_000, 256) == "IVF8192,SQfp16"
    assert choose_index_key(20_000_000, 256) == "IVF32768,SQfp16"
    assert choose_index_key(300_000_000, 256) == "IVF131072_HNSW32,PQ32x8np"  # 12 GB of codes in 16 GiB
    # Over the memory budget: product quantization, the largest code that fits.
    assert choose_index_key(1_000_000, 256, max_memory=100 * 2**20) == "IVF8192,PQ64x8np"
    assert choose_index_key(1_000_000, 256, max_memory=30 * 2**20) == "IVF8192,PQ16x8np"
    with pytest.raises(ConfigError, match="--max-memory"):
        choose_index_key(1_000_000, 256, max_memory=2**20)
    assert 39 * ivf_lists(12_000) <= 12_000  # never more lists than k-means can train


def test_ivf_parameter_is_the_smallest_meeting_the_target_and_recall_is_measured_on_held_out_queries():
    vectors = clustered(20_000, 32, clusters=200, seed=0)
    queries = vectors[np.random.default_rng(1).choice(len(vectors), 400, replace=False)] + 0.05
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    index, info = build_index(vectors.astype(np.float16), queries, target_recall=0.95)
    assert info["index_key"] == choose_index_key(20_000, 32) == "IVF512,SQfp16"
    nprobe = int(info["parameters"].removeprefix("nprobe="))
    assert 1 < nprobe < 512 and info["tuning_recall@10"] >= 0.95

    exact = brute_force_top(vectors.astype(np.float16).astype(np.float32), queries, 10)
    held_out = slice(200, 400)
    assert info["recall@10"] == pytest.approx(recall_at_k(index.search(queries[held_out], 10)[1], exact[held_out]),
                                              abs=1e-4)
    assert info["recall@10"] >= 0.9
    # The choice is the smallest candidate that reaches the target: half as many lists falls short of it.
    set_parameters(index, f"nprobe={nprobe // 2}")
    assert recall_at_k(index.search(queries[:200], 10)[1], exact[:200]) < 0.95
    assert parameter_candidates(index)[0] == "nprobe=1" and parameter_candidates(index)[-1] == "nprobe=512"


def test_exact_index_for_small_collections_has_perfect_recall_without_self_matches():
    vectors = clustered(500, 16, clusters=10, seed=2)
    rows = np.arange(0, 500, 5)
    index, info = build_index(vectors, vectors[rows], query_rows=rows)
    assert isinstance(index, faiss.IndexFlat) and index.metric_type == faiss.METRIC_INNER_PRODUCT
    assert info["recall@10"] == 1.0 and info["parameters"] == "" and info["recall_queries"] == 50


def test_product_quantization_reports_its_lower_recall(tmp_path):
    vectors = clustered(10_000, 16, clusters=50, seed=3)
    store = make_store(tmp_path / "emb", vectors, chunk_size=5000)
    info = index_embeddings(store.root, tmp_path / "idx", max_memory=10_000 * 12, queries=200)
    assert info["index_key"] == "IVF256,PQ4x8np"  # 4-byte codes + 8-byte ids fit 12 bytes a vector
    assert info["query_source"] == "videos (own row left out)"
    assert 0 < info["recall@10"] < 0.99  # honest: 4-byte codes cannot rank like exact search
    assert info["memory_bytes"] < vectors.nbytes / 2


def test_index_directory_layout_reuse_and_refusal(tmp_path, capsys):
    vectors = clustered(300, 16, clusters=8, seed=4)
    captions = clustered(200, 16, clusters=8, seed=5)
    store = make_store(tmp_path / "emb", vectors, captions=captions, chunk_size=128)
    info = index_embeddings(store.root, tmp_path / "idx", queries=100)
    assert info["query_source"] == "captions" and info["recall_queries"] == 50
    saved = json.loads((tmp_path / "idx" / "index.json").read_text())
    assert saved["index_key"] == "Flat" and saved["recall@10"] == 1.0
    index = faiss.read_index(str(tmp_path / "idx" / "index.faiss"))
    ids = np.load(tmp_path / "idx" / "ids.npy")
    assert index.ntotal == 300 and ids.tolist() == list(range(300))
    # Same embeddings and options: reused. Other options: refused, nothing overwritten.
    assert index_embeddings(store.root, tmp_path / "idx", queries=100)["up_to_date"]
    before = (tmp_path / "idx" / "index.faiss").read_bytes()
    with pytest.raises(SystemExit) as exit_info:
        main(["index", str(store.root), "--out", str(tmp_path / "idx"), "--target-recall", "0.9"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "choose another --out" in err
    assert (tmp_path / "idx" / "index.faiss").read_bytes() == before


def test_unfinished_extraction_is_not_indexed(tmp_path):
    store = make_store(tmp_path / "emb", clustered(300, 16, clusters=8, seed=6), chunk_size=128, write_chunks=False)
    store.write_chunk(0, np.zeros((0, 16)), [], np.zeros((0, 16)), [], [])
    with pytest.raises(ConfigError, match="unfinished .2 of 3 chunks missing"):
        index_embeddings(store.root, tmp_path / "idx")
    assert not (tmp_path / "idx").exists()
