"""`structvl search`: a text query -> the run's text tower -> the index's top-k entries.

A `Searcher` holds everything a query needs: the faiss index with its tuned parameter, the entry list of the
embedding directory it was built from, and the model of the checkpoint that made the embeddings (the same
weights, checked by hash: a query must land in the space the videos were embedded in). Queries are embedded
with `embed_texts` under the run's precision, exactly as `structvl eval` embeds captions.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import faiss
import numpy as np
import torch

from structvl.config import ConfigError
from structvl.data.text import Tokenizer
from structvl.engine.checkpoint import latest_checkpoint
from structvl.runtime.precision import autocast_dtype
from structvl.search.index import set_parameters
from structvl.search.store import EmbeddingStore, file_sha256
from structvl.tasks.evaluate import load_run_model
from structvl.tasks.retrieval import embed_texts

MAX_QUERY_CHARS = 300  # longer text is no caption; it also bounds what one web request can make the model do
MAX_K = 1000


def check_k(k: int) -> int:
    if not 1 <= k <= MAX_K:
        raise ConfigError(f"-k {k}: must be between 1 and {MAX_K}")
    return k


def check_query(text: str, tokenizer: Tokenizer | None = None) -> str:
    """The query, stripped; a ConfigError naming the problem if it is empty, too long, or (given the run's
    tokenizer) longer than the text tower reads (it would be cut silently otherwise)."""
    query = text.strip()
    if not query:
        raise ConfigError("query: empty; describe what the video shows")
    if len(query) > MAX_QUERY_CHARS:
        raise ConfigError(f"query: {len(query)} characters; at most {MAX_QUERY_CHARS} are allowed")
    if tokenizer is None:
        return query
    tokens, offsets = tokenizer.encode_with_offsets([query])
    read_up_to = max(end for _, end in offsets[0])
    if tokens["input_ids"].shape[1] >= tokenizer.max_length and read_up_to < len(query):
        raise ConfigError(f"query: longer than the run's text tower reads ({tokenizer.max_length} tokens, "
                          f"model.text.max_length); it would stop after {query[:read_up_to]!r}")
    return query


class Searcher:
    """Text search over one index directory (see index.py), with its model loaded once."""

    def __init__(self, index_dir: str | Path, device: torch.device = torch.device("cpu")):
        self.index_dir = Path(index_dir)
        if not (self.index_dir / "index.json").exists():
            raise ConfigError(f"{self.index_dir}: not an index directory (no index.json); make one with "
                              f"`structvl index EMBEDDINGS --out {self.index_dir}`")
        self.info = json.loads((self.index_dir / "index.json").read_text(encoding="utf-8"))
        self.store = EmbeddingStore(self.info["request"]["embeddings"])
        manifest = self.store.manifest()
        if file_sha256(self.store.root / "manifest.json") != self.info["request"]["manifest_sha256"]:
            raise ConfigError(f"{self.store.root}: the embeddings changed after {self.index_dir} was built; index "
                              f"them again")
        checkpoint = Path(manifest["checkpoint"])
        ckpt = latest_checkpoint(checkpoint)
        if ckpt is None or file_sha256(ckpt / "model.safetensors") != manifest["weights_sha256"]:
            raise ConfigError(f"checkpoint {checkpoint}: missing or changed since the embeddings were extracted; "
                              f"extract them again")
        model, cfg, _ = load_run_model(checkpoint)
        self.model, self.cfg, self.device = model.to(device).eval(), cfg, device
        self.tokenizer = Tokenizer(cfg.model.text.max_length)
        self.autocast = autocast_dtype(cfg.train.precision, device)
        self.index = faiss.read_index(str(self.index_dir / "index.faiss"))
        set_parameters(self.index, self.info["parameters"])
        self.ids = np.load(self.index_dir / "ids.npy")
        self.entries = self.store.entries()
        self.video_root = Path(manifest["video_root"])
        self._lock = threading.Lock()  # one query batch at a time through the model and the index

    def encode(self, queries: list[str]) -> np.ndarray:
        """(Q, E) float32 embeddings of already checked queries."""
        embed = embed_texts(self.model, self.tokenizer, queries, self.device, autocast_dtype=self.autocast)
        return np.ascontiguousarray(embed.numpy(), dtype=np.float32)

    def search(self, queries: list[str], k: int = 10) -> list[list[dict]]:
        """For each query, its top-k entries (best first): rank, score, entry index, id, video, start, end,
        captions, and segment (for segments of long videos)."""
        check_k(k)
        queries = [check_query(q, self.tokenizer) for q in queries]
        with self._lock:
            scores, rows = self.index.search(self.encode(queries), min(k, self.index.ntotal))
        results = []
        for score_row, id_row in zip(scores, rows):
            hits = []
            for score, row in zip(score_row.tolist(), id_row.tolist()):
                if row < 0:  # fewer than k vectors in the lists visited
                    continue
                entry = int(self.ids[row])
                hits.append({"rank": len(hits) + 1, "score": round(float(score), 4), "entry": entry,
                             **{key: self.entries[entry].get(key) for key in ("id", "video", "start", "end",
                                                                             "captions", "segment")}})
            results.append(hits)
        return results


def format_hits(query: str, hits: list[dict]) -> str:
    lines = [f"query: {query}", f"{'rank':>4}  {'score':>7}  {'video':<40}  {'segment':<15}  caption"]
    for hit in hits:
        window = "" if hit["start"] is None else f"{hit['start']:.1f}-{hit['end']:.1f} s"
        caption = hit["captions"][0] if hit["captions"] else ""
        lines.append(f"{hit['rank']:>4}  {hit['score']:>7.4f}  {hit['video']:<40}  {window:<15}  {caption}")
    return "\n".join(lines)


def search_from_cli(args) -> int:
    check_k(args.k)
    for query in args.queries:  # the checks that need no model, before it is loaded
        check_query(query)
    searcher = Searcher(args.index)
    results = searcher.search(args.queries, args.k)
    if args.json:
        print(json.dumps([{"query": q, "results": hits} for q, hits in zip(args.queries, results)], indent=2))
    else:
        print("\n\n".join(format_hits(q, hits) for q, hits in zip(args.queries, results)))
    return 0
