"""`structvl index`: a faiss index over an embedding directory, chosen by the collection's size.

The choice follows autofaiss's shape (exact for small collections, inverted lists beyond, product quantization
only when the vectors do not fit the memory budget), with one change measured in benchmarks/search.py:
autofaiss prefers an HNSW graph whenever memory allows it; here an inverted-file index over the float16
vectors as stored (`SQfp16`) is preferred, because on 2 CPU cores it builds several times faster at 1M vectors
and still meets the latency targets (docs/findings.md, "search"). `choose_index_key`:

    N < flat_threshold (10,000)     "Flat": exact inner product (no training; an exact scan is cheap)
    vectors fit max_memory          "IVF{nlist},SQfp16", nlist the power of two nearest 8 sqrt(N), its coarse
                                    quantizer an HNSW graph from 2^16 lists on. SQfp16 keeps each vector exactly
                                    as extracted, so a visited vector scores as in exact search: the only
                                    approximation is which lists are visited (nprobe).
    otherwise                       "IVF{nlist},PQ{m}x8np", the largest code of m bytes that fits (no OPQ
                                    rotation: its training costs minutes on 2 cores; recall is reported)

8 sqrt(N) lists is twice autofaiss's 4 sqrt(N): with fewer lists than the collection has clusters, a list mixes
clusters and a query's neighbours spread over many lists, so the probes needed for recall 0.99 (and the latency)
grow. k-means on 39 points a list (faiss's minimum) and 10 iterations is most of the build. Measured at 1M
vectors in docs/findings.md, "Search".

The search parameter (nprobe, or efSearch for an HNSW index given by --index-key) is the smallest power of two
whose recall@10 against exact search reaches `target_recall` on half of the queries; recall@10 is then measured
on the other half, which played no part in the choice. Queries are the collection's caption embeddings (what
text search asks), or, without captions, a sample of its video embeddings, each with its own row left out of
both result lists. index.json beside the index records the key, the parameters, both recalls, the query
source, build time and memory; ids.npy maps faiss ids to entries of the embedding directory.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from pathlib import Path

import faiss
import numpy as np

from structvl.config import ConfigError
from structvl.search.store import EmbeddingStore, atomic_write_bytes, file_sha256

FLAT_THRESHOLD = 10_000
DEFAULT_MAX_MEMORY = 16 * 2**30
RECALL_K = 10
TRAIN_POINTS_PER_LIST = 39  # k-means training sample per list: faiss's minimum (its cost grows with lists x points)
ADD_BLOCK = 65_536  # vectors converted to float32 and added at a time (bounds the peak memory of a build)


def ivf_lists(n: int) -> int:
    """The power of two nearest 8 sqrt(n), at least 256 lists, and at most n / 39 (faiss's k-means wants 39
    training points per centroid)."""
    nlist = 2 ** round(math.log2(8 * math.sqrt(max(n, 1))))
    return int(max(min(nlist, 2 ** int(math.log2(max(n // 39, 1)))), 1 if n < 256 * 39 else 256))


def choose_index_key(n: int, dim: int, max_memory: int = DEFAULT_MAX_MEMORY,
                     flat_threshold: int = FLAT_THRESHOLD) -> str:
    if n < flat_threshold:
        return "Flat"
    nlist = ivf_lists(n)
    quantizer = f"IVF{nlist}_HNSW32" if nlist >= 2**16 else f"IVF{nlist}"
    if n * (2 * dim + 8) <= max_memory:  # float16 codes + 8-byte ids in the inverted lists
        return f"{quantizer},SQfp16"
    for m in (128, 96, 64, 48, 32, 24, 16, 8, 4):
        if m < dim and dim % m == 0 and n * (m + 8) <= max_memory:
            return f"{quantizer},PQ{m}x8np"  # np: no polysemous training (slow, and only for Hamming filtering)
    raise ConfigError(f"--max-memory {max_memory / 2**30:.2f} GiB: too small for {n} vectors of dimension {dim} "
                      f"(the smallest product-quantized index needs {n * 12 / 2**30:.2f} GiB)")


def _ivf(index):
    """The inverted-file part of `index`, or None."""
    try:
        return faiss.extract_index_ivf(index)
    except RuntimeError:
        return None


def parameter_candidates(index) -> list[str]:
    """Search-parameter strings for faiss.ParameterSpace, from the cheapest to the most exact."""
    ivf = _ivf(index)
    if ivf is not None:
        hnsw_quantizer = isinstance(ivf.quantizer, faiss.IndexHNSW)
        return [f"nprobe={p}" + (f",quantizer_efSearch={max(64, 2 * p)}" if hnsw_quantizer else "")
                for p in (2**i for i in range(int(math.log2(ivf.nlist)) + 1))]
    if isinstance(index, faiss.IndexHNSW):
        return [f"efSearch={2**i}" for i in range(4, 13)]
    return [""]


def set_parameters(index, parameters: str) -> None:
    if parameters:
        faiss.ParameterSpace().set_index_parameters(index, parameters)


def exact_topk(vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    flat = faiss.IndexFlatIP(vectors.shape[1])
    for start in range(0, len(vectors), ADD_BLOCK):
        flat.add(np.ascontiguousarray(vectors[start:start + ADD_BLOCK], dtype=np.float32))
    return flat.search(queries, k)[1]


def recall_at_k(found: np.ndarray, truth: np.ndarray, k: int = RECALL_K) -> float:
    """Mean share of each query's exact top-k that the approximate top-k holds."""
    return float(np.mean([len(set(f[:k]) & set(t[:k])) / k for f, t in zip(found, truth)]))


def _drop_self(ids: np.ndarray, self_ids: np.ndarray | None, k: int) -> np.ndarray:
    if self_ids is None:
        return ids[:, :k]
    return np.stack([row[row != own][:k] for row, own in zip(ids, self_ids)])


def build_index(vectors: np.ndarray, queries: np.ndarray, query_rows: np.ndarray | None = None,
                index_key: str | None = None, target_recall: float = 0.99, max_memory: int = DEFAULT_MAX_MEMORY,
                seed: int = 0) -> tuple[faiss.Index, dict]:
    """Index `vectors` (N, d; L2-normalised, any float dtype) for inner-product search and tune it on `queries`.
    query_rows: for queries taken from `vectors`, their rows (left out of both result lists). Returns the index
    and the facts index.json records."""
    n, dim = vectors.shape
    key = index_key or choose_index_key(n, dim, max_memory)
    rng = np.random.default_rng(seed)
    started = time.perf_counter()
    try:
        index = faiss.index_factory(dim, key, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as e:
        raise ConfigError(f"--index-key {key!r}: not a faiss index factory string ({str(e).splitlines()[0]})") from None
    if not index.is_trained:
        ivf = _ivf(index)
        if ivf is not None:
            ivf.cp.niter = 10  # k-means iterations (faiss's default is 25): the build's longest part
        size = min(n, TRAIN_POINTS_PER_LIST * ivf.nlist if ivf is not None else 100_000)
        sample = np.sort(rng.choice(n, size=size, replace=False))
        index.train(np.ascontiguousarray(vectors[sample], dtype=np.float32))
    for start in range(0, n, ADD_BLOCK):
        index.add(np.ascontiguousarray(vectors[start:start + ADD_BLOCK], dtype=np.float32))
    build_seconds = time.perf_counter() - started

    queries = np.ascontiguousarray(queries, dtype=np.float32)
    extra = 0 if query_rows is None else 1
    k = min(RECALL_K, n - extra)
    truth = _drop_self(exact_topk(vectors, queries, k + extra), query_rows, k)
    half = len(queries) // 2
    # Half the queries choose the parameter, the other half measure it (one query: it does both).
    tune, held_out = (np.arange(half), np.arange(half, len(queries))) if half else (np.arange(1), np.arange(1))
    own = (lambda rows: None) if query_rows is None else (lambda rows: query_rows[rows])
    chosen, tune_recall = "", 1.0
    for parameters in parameter_candidates(index):
        set_parameters(index, parameters)
        chosen = parameters
        tune_recall = recall_at_k(_drop_self(index.search(queries[tune], k + extra)[1], own(tune), k), truth[tune], k)
        if tune_recall >= target_recall:
            break
    set_parameters(index, chosen)
    started = time.perf_counter()
    found = index.search(queries[held_out], k + extra)[1]
    ms_per_query = 1000 * (time.perf_counter() - started) / len(held_out)
    info = {
        "index_key": key, "parameters": chosen, "vectors": int(n), "dim": int(dim), "metric": "inner_product",
        "target_recall@10": target_recall, "tuning_recall@10": round(tune_recall, 4),
        "recall@10": round(recall_at_k(_drop_self(found, own(held_out), k), truth[held_out], k), 4),
        "recall_k": k, "recall_queries": int(len(held_out)), "tuning_queries": int(len(tune)),
        "ms_per_query_batch": round(ms_per_query, 4), "build_seconds": round(build_seconds, 2),
        "memory_bytes": int(faiss.serialize_index(index).nbytes), "threads": faiss.omp_get_max_threads(),
    }
    return index, info


def recall_queries(store: EmbeddingStore, vectors: np.ndarray, count: int, seed: int):
    """(queries, their rows in `vectors` or None, source name): caption embeddings when there are enough,
    else a random sample of the video embeddings."""
    rng = np.random.default_rng(seed)
    text, _ = store.load("text")
    if len(text) >= min(count, 100):
        pick = np.sort(rng.choice(len(text), size=min(count, len(text)), replace=False))
        return text[pick], None, "captions"
    rows = np.sort(rng.choice(len(vectors), size=min(count, len(vectors)), replace=False))
    return vectors[rows], rows, "videos (own row left out)"


def index_embeddings(embeddings: str | Path, out: str | Path, index_key: str | None = None,
                     target_recall: float = 0.99, max_memory: int = DEFAULT_MAX_MEMORY, queries: int = 1000,
                     seed: int = 0) -> dict:
    """Build `out/` (index.faiss, ids.npy, index.json) from the embedding directory `embeddings`."""
    if not 0 < target_recall <= 1:
        raise ConfigError(f"--target-recall {target_recall}: must be in (0, 1]")
    if queries < 2:
        raise ConfigError(f"--queries {queries}: must be at least 2 (half tune the index, half measure it)")
    store = EmbeddingStore(embeddings)
    manifest_sha = file_sha256(store.root / "manifest.json") if (store.root / "manifest.json").exists() else None
    store.manifest()  # a ConfigError if this is not an embedding directory
    out = Path(out)
    request = {"embeddings": str(store.root.resolve()), "manifest_sha256": manifest_sha, "index_key": index_key,
               "target_recall": target_recall, "max_memory": max_memory, "queries": queries, "seed": seed}
    if (out / "index.json").exists():
        info = json.loads((out / "index.json").read_text(encoding="utf-8"))
        if info.get("request") == request and store.missing_chunks() == [] and info.get("chunks") == store.num_chunks():
            return {**info, "up_to_date": True}
        raise ConfigError(f"--out {out}: holds an index built from other embeddings or options; choose another "
                          f"--out (nothing is overwritten)")
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"--out {out}: exists and is not an index directory; choose another --out")
    vectors, ids = store.load("video")
    if len(vectors) == 0:
        raise ConfigError(f"{store.root}: no embedded videos to index (all {len(store.skipped())} were skipped)")
    query_vectors, query_rows, source = recall_queries(store, vectors, queries, seed)
    index, info = build_index(vectors, query_vectors, query_rows, index_key, target_recall, max_memory, seed)
    info.update({"query_source": source, "request": request, "chunks": store.num_chunks()})
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    faiss.write_index(index, str(tmp / "index.faiss"))
    np.save(tmp / "ids.npy", ids)
    atomic_write_bytes(tmp / "index.json", json.dumps(info, indent=2).encode("utf-8"))
    if out.exists():
        out.rmdir()  # empty (checked above)
    os.replace(tmp, out)
    return info
