"""The embedding directory `structvl extract` writes and `structvl index` / `search` / `serve` read.

    manifest.json            what was embedded and how: the checkpoint (and a hash of its weights), the source
                             (annotation file or video directory, the video root), frames, views, segments,
                             dtype, chunk size, and a hash of entries.jsonl. A second `extract` into the same
                             directory resumes only when all of it matches; anything else is refused.
    entries.jsonl            one line per entry (a clip, or a segment of a long video), in order:
                             {"id", "video" (as the annotation names it, relative to the video root), "start",
                             "end" (seconds, null = the whole video), "captions", "record" (the source record)}
    chunks/NNNNNN.video.npy  (kept, E) video embeddings of entries [N * chunk_size, (N + 1) * chunk_size)
    chunks/NNNNNN.text.npy   (captions, E) embeddings of those entries' captions
    chunks/NNNNNN.json       written last, so its presence means the chunk is complete: "rows" (entry index of each
                             video row), "caption_entries" (entry index of each caption row), "skipped"
                             ([{"entry", "path", "reason"}]: unreadable videos and non-finite embeddings)

Every file is written under a temporary name and renamed into place: a crash leaves whole chunks or none.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path

import numpy as np

from structvl.config import ConfigError

FORMAT_VERSION = 1
DTYPES = ("float16", "float32")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def file_sha256(path: Path, block: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            digest.update(chunk)
    return digest.hexdigest()


def entries_sha256(entries: list[dict]) -> str:
    return hashlib.sha256("\n".join(json.dumps(e, sort_keys=True) for e in entries).encode()).hexdigest()


class EmbeddingStore:
    """Reader and writer of one embedding directory (see the module docstring for the layout)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.chunks_dir = self.root / "chunks"

    # ------------------------------------------------------------ writing
    def open(self, manifest: dict, entries: list[dict]) -> bool:
        """Start a new directory, or check that an existing one was made by the same extraction (then it is
        resumed: True). A different extraction into a used directory is refused, never overwritten."""
        manifest = {"format_version": FORMAT_VERSION, **manifest, "entries": len(entries),
                    "entries_sha256": entries_sha256(entries)}
        path = self.root / "manifest.json"
        if path.exists():
            old = json.loads(path.read_text(encoding="utf-8"))
            differ = [key for key in sorted(set(old) | set(manifest)) if old.get(key) != manifest.get(key)]
            if differ:
                was = ", ".join(f"{key}={old.get(key)!r}" for key in differ)
                now = ", ".join(f"{key}={manifest.get(key)!r}" for key in differ)
                raise ConfigError(f"--out {self.root}: holds embeddings made with {was}; this extraction has {now}; "
                                  f"choose another --out (nothing is overwritten)")
            return True
        if self.root.exists() and any(self.root.iterdir()):
            raise ConfigError(f"--out {self.root}: exists and is not an embedding directory; choose another --out")
        self.chunks_dir.mkdir(parents=True, exist_ok=True)
        lines = "".join(json.dumps(e) + "\n" for e in entries)
        atomic_write_bytes(self.root / "entries.jsonl", lines.encode("utf-8"))
        atomic_write_bytes(path, json.dumps(manifest, indent=2).encode("utf-8"))  # last: the directory is valid
        return False

    def chunk_done(self, chunk: int) -> bool:
        return (self.chunks_dir / f"{chunk:06d}.json").exists()

    def write_chunk(self, chunk: int, video: np.ndarray, rows: list[int], text: np.ndarray,
                    caption_entries: list[int], skipped: list[dict]) -> None:
        dtype = self.manifest()["dtype"]
        if not (np.isfinite(video).all() and np.isfinite(text).all()):
            raise ValueError(f"chunk {chunk}: non-finite embeddings reached the store")  # a bug: callers filter
        stem = self.chunks_dir / f"{chunk:06d}"
        atomic_write_bytes(stem.with_suffix(".video.npy"), npy_bytes(np.ascontiguousarray(video, dtype=dtype)))
        atomic_write_bytes(stem.with_suffix(".text.npy"), npy_bytes(np.ascontiguousarray(text, dtype=dtype)))
        meta = {"rows": rows, "caption_entries": caption_entries, "skipped": skipped}
        atomic_write_bytes(stem.with_suffix(".json"), json.dumps(meta).encode("utf-8"))

    # ------------------------------------------------------------ reading
    def manifest(self) -> dict:
        path = self.root / "manifest.json"
        if not path.exists():
            raise ConfigError(f"{self.root}: not an embedding directory (no manifest.json); make one with "
                              f"`structvl extract`")
        return json.loads(path.read_text(encoding="utf-8"))

    def entries(self) -> list[dict]:
        with open(self.root / "entries.jsonl", encoding="utf-8") as f:
            return [json.loads(line) for line in f]

    def num_chunks(self) -> int:
        m = self.manifest()
        return -(-m["entries"] // m["chunk_size"])

    def missing_chunks(self) -> list[int]:
        return [c for c in range(self.num_chunks()) if not self.chunk_done(c)]

    def _chunk_meta(self, chunk: int) -> dict:
        return json.loads((self.chunks_dir / f"{chunk:06d}.json").read_text(encoding="utf-8"))

    def load(self, kind: str = "video") -> tuple[np.ndarray, np.ndarray]:
        """All embeddings of `kind` ("video" or "text") in entry order, as stored, and the entry index of each
        row. The extraction must be complete."""
        missing = self.missing_chunks()
        if missing:
            raise ConfigError(f"{self.root}: extraction unfinished ({len(missing)} of {self.num_chunks()} chunks "
                              f"missing); run the same `structvl extract` again to finish it")
        arrays, ids = [], []
        for chunk in range(self.num_chunks()):
            meta = self._chunk_meta(chunk)
            arrays.append(np.load(self.chunks_dir / f"{chunk:06d}.{kind}.npy", allow_pickle=False))
            ids.append(np.asarray(meta["rows" if kind == "video" else "caption_entries"], dtype=np.int64))
        dim = self.manifest()["embed_dim"]
        if not arrays:
            return np.zeros((0, dim), self.manifest()["dtype"]), np.zeros(0, np.int64)
        return np.concatenate(arrays), np.concatenate(ids)

    def skipped(self) -> list[dict]:
        return [s for c in range(self.num_chunks()) if self.chunk_done(c) for s in self._chunk_meta(c)["skipped"]]
