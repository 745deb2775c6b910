"""`structvl knowledge`: a corpus's captions parsed into the cache, counted, and CLOP's swaps built, in one pass
that any number of processes or machines can share (`--shard i/n`).

The pass for shard i of n (n = 1: the whole corpus), `knowledge_pass`:

1. map: parse every caption of the shard's videos that the cache lacks, with K worker processes (parse.py),
   then count the shard (`counts.CorpusCounts`, read back from the cache) and store the part.
2. reduce: once the parts of all n shards are in the cache, sum them. That is cheap (counts, not captions) and
   deterministic, so any shard that finds all parts does it; a shard that finds some missing waits up to
   `wait` seconds for them and otherwise stops, to finish when run again. The sum becomes the corpus's
   label table (a training run reads its top-K vocabulary from it by an index scan: `vocab_from_cache`), its
   counts (for the swap context) and its summary, written last: its presence says the corpus is counted.
3. swaps, when `SwapSettings` are given: the `SwapContext` of the corpus counts, the vocabulary the run
   will use and the settings, then the swaps of the captions the shard owns, proposed, parsed (K
   processes) and validated, into the cache.

Shards are cut by video (a hash of the video id), so every video's captions are counted together, as the
paraphrase evidence needs; a caption that videos of several shards share is parsed by each (the same row)
but counted and swapped only by the shard of its first video in the annotation file. The cut depends only
on the ids, so shards can run at the same time (one cache: see `KnowledgeCache` on concurrent writers), one
after another, or again after a crash: finished work is found in the cache and skipped.

A corpus is named by `corpus_fingerprint`: a hash of its annotation file's bytes and format, so a changed
file is a new corpus.
"""

from __future__ import annotations

import hashlib
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from tqdm.auto import tqdm

from structvl.data.formats import read_annotations
from structvl.data.knowledge.cache import KnowledgeCache
from structvl.data.knowledge.counts import CorpusCounts
from structvl.data.knowledge.parse import parse_rows
from structvl.data.knowledge.record import KNOWLEDGE_TYPES
from structvl.data.knowledge.swaps import SwapContext, SwapSettings, build_swaps
from structvl.data.knowledge.vocab import DEFAULT_TOP_K, KnowledgeVocab
from structvl.data.records import VideoRecord

COUNT_CHUNK = 2048  # videos whose knowledge is read back from the cache at once while counting
SWAP_CHUNK = 4096  # source captions whose swaps are built at once
FLUSH_ROWS = 2048  # parsed rows written per transaction


def corpus_fingerprint(fmt: str, path: str | Path, cache: KnowledgeCache | None = None) -> str:
    """A corpus's name in the cache: the sha1 of its format and its annotation file's bytes (of every file
    under it, for a directory). Reading is I/O-bound (about a second per GB), no parsing.

    With `cache`, the digest is remembered there with the file's size and modification time, and a file whose
    size and time have not changed is not read again: a training run's start-up then costs a `stat`, whatever
    the corpus's size."""
    path = Path(path)
    if cache is not None and path.is_file():
        stat, name = path.stat(), f"fingerprint/{fmt}/{path.resolve()}"
        remembered = cache.get_meta(name)
        if remembered is not None and remembered[:2] == [stat.st_size, stat.st_mtime_ns]:
            return remembered[2]
        digest = corpus_fingerprint(fmt, path)
        cache.put_meta(name, [stat.st_size, stat.st_mtime_ns, digest])
        return digest
    digest = hashlib.sha1(f"{fmt}\0".encode())
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        digest.update(str(file.relative_to(path) if path.is_dir() else "").encode() + b"\0")
        with open(file, "rb") as f:
            while block := f.read(1 << 20):
                digest.update(block)
    return digest.hexdigest()[:16]


def shard_of(video_id: str, shards: int) -> int:
    return int.from_bytes(hashlib.sha1(str(video_id).encode("utf-8")).digest()[:8], "little") % shards


def parse_shard(spec: str) -> tuple[int, int]:
    """"i/n" -> (i, n), with 0 <= i < n."""
    try:
        index, count = (int(x) for x in spec.split("/"))
    except ValueError:
        raise ValueError(f"--shard must look like i/n (e.g. 0/8), got {spec!r}") from None
    if not 0 <= index < count:
        raise ValueError(f"--shard {spec}: need 0 <= i < n")
    return index, count


class CorpusPlan:
    """Which videos and captions a shard parses, counts and swaps (see the module docstring)."""

    def __init__(self, records: Sequence[VideoRecord], shard: tuple[int, int] = (0, 1)):
        self.index, self.count = shard
        self.videos: dict[str, list[str]] = {}  # video id -> its captions over all its records, in order
        first_video: dict[str, str] = {}
        for record in records:
            self.videos.setdefault(record.video_id, []).extend(record.captions)
            for caption in record.captions:
                first_video.setdefault(caption, record.video_id)
        self.unique_captions = len(first_video)
        self.my_videos = [v for v in self.videos if shard_of(v, self.count) == self.index]
        mine = set(self.my_videos)
        self.owned = [c for c, v in first_video.items() if v in mine]  # counted and swapped by this shard
        self._owner = {c: v for c, v in first_video.items() if v in mine}

    def captions(self) -> list[str]:
        """Every caption of the shard's videos, once."""
        return list(dict.fromkeys(c for v in self.my_videos for c in self.videos[v]))

    def video_chunks(self) -> Iterator[list[str]]:
        for start in range(0, len(self.my_videos), COUNT_CHUNK):
            yield self.my_videos[start:start + COUNT_CHUNK]

    def owns(self, caption: str, video_id: str) -> bool:
        return self._owner.get(caption) == video_id


def _part(corpus: str, index: int, count: int) -> str:
    return f"counts/{corpus}/{index}of{count}"


def corpus_summary(cache: KnowledgeCache, corpus: str) -> dict | None:
    """{"captions", "videos", "shards"} of a counted corpus, or None when it has not been counted (reduced)."""
    return cache.get_meta(f"corpus/{corpus}")


def vocab_from_cache(cache: KnowledgeCache, corpus: str, top_k: int | Mapping[str, int] = DEFAULT_TOP_K,
                     min_count: int = 1, exclude: Mapping | None = None) -> KnowledgeVocab | None:
    """The vocabulary `KnowledgeVocab.build` gives on the corpus's captions, read from the cache's label
    table (top_k rows per type), or None when the corpus has not been counted."""
    summary = corpus_summary(cache, corpus)
    if summary is None:
        return None
    exclude = exclude or {}
    labels, counts = {}, {}
    for kind in KNOWLEDGE_TYPES:
        limit = top_k.get(kind, DEFAULT_TOP_K) if isinstance(top_k, Mapping) else top_k
        rows = cache.top_labels(corpus, kind, limit, min_count, exclude.get(kind, ()))
        labels[kind], counts[kind] = [label for label, _ in rows], [n for _, n in rows]
    return KnowledgeVocab(labels, counts, total=summary["captions"])


def swap_context(cache: KnowledgeCache, corpus: str, vocab: KnowledgeVocab, settings: SwapSettings) -> SwapContext:
    """The swap context of a counted corpus, its vocabulary and `settings`: read from the cache, or built
    from the corpus counts (loaded once, here) and stored."""
    name = f"swapctx/{SwapContext.id_for(corpus, vocab, settings)}"
    data = cache.get_meta(name)
    if data is not None:
        return SwapContext.from_dict(data)
    counts = cache.get_meta(f"counts/{corpus}")
    if counts is None:
        raise LookupError(f"corpus {corpus} has not been counted in {cache.path}")
    context = SwapContext.build(CorpusCounts.from_dict(counts), vocab, settings, corpus)
    cache.put_meta(name, context.to_dict())
    return context


def knowledge_pass(records: Sequence[VideoRecord], cache: KnowledgeCache, corpus: str, *,
                   shard: tuple[int, int] = (0, 1), n_process: int = 1, batch_size: int = 256,
                   swaps: SwapSettings | None = None, top_k: int | Mapping[str, int] = DEFAULT_TOP_K,
                   min_count: int = 1, exclude: Mapping | None = None, wait: float = 0.0,
                   progress: bool = False) -> dict:
    """Shard `shard` of the knowledge pass over `records` (module docstring); returns what it did.

    top_k, min_count, exclude: the vocabulary the swaps replace labels with (a run's `knowledge.*` keys).
    """
    plan = CorpusPlan(records, shard)
    index, count = shard
    summary = {"shard": f"{index}/{count}", "records": len(records), "videos": len(plan.videos),
               "captions": plan.unique_captions, "shard_captions": 0, "parsed": 0, "counted": False,
               "pending_shards": [], "swaps_built": 0, "swaps_cached": 0, "swap_context": None}
    # 1. map: parse what the cache lacks
    captions = plan.captions()
    summary["shard_captions"] = len(captions)
    missing = cache.missing(captions)
    pending: list = []
    with tqdm(total=len(missing), desc=f"parsing captions (shard {index}/{count})", unit="caption",
              disable=not progress or not missing, file=sys.stderr) as bar:
        for rows in parse_rows(missing, n_process=n_process, batch_size=batch_size):
            pending.extend(rows)
            bar.update(len(rows))
            if len(pending) >= FLUSH_ROWS:
                cache.put_rows(pending)
                pending.clear()
        cache.put_rows(pending)
    summary["parsed"] = len(missing)
    # ... and count the shard, once
    if cache.get_meta(_part(corpus, index, count)) is None:
        counts = CorpusCounts()
        for videos in plan.video_chunks():
            knowledge = cache.get_many(c for v in videos for c in plan.videos[v])
            for video in videos:
                counts.add_video([knowledge[c] for c in plan.videos[video]])
                for caption in dict.fromkeys(plan.videos[video]):
                    if plan.owns(caption, video):
                        counts.add_caption(knowledge[caption])
        cache.put_meta(_part(corpus, index, count), counts.to_dict())
    # 2. reduce, once every shard is counted
    if corpus_summary(cache, corpus) is None:
        deadline = time.monotonic() + wait
        while True:
            absent = [j for j in range(count) if cache.get_meta(_part(corpus, j, count)) is None]
            if not absent or time.monotonic() >= deadline:
                break
            time.sleep(min(5.0, max(0.1, wait / 100)))
        if absent:
            summary["pending_shards"] = [f"{j}/{count}" for j in absent]
            return summary
        merged = CorpusCounts()
        for j in range(count):
            merged.merge(CorpusCounts.from_dict(cache.get_meta(_part(corpus, j, count))))
        cache.put_label_counts(corpus, merged.labels)
        cache.put_meta(f"counts/{corpus}", merged.to_dict())
        cache.put_meta(f"corpus/{corpus}", {"captions": merged.captions, "videos": merged.videos, "shards": count})
    summary["counted"] = True
    # 3. swaps of the captions this shard owns
    if swaps is not None:
        vocab = vocab_from_cache(cache, corpus, top_k, min_count, exclude)
        context = swap_context(cache, corpus, vocab, swaps)
        summary["swap_context"] = context.id
        for start in range(0, len(plan.owned), SWAP_CHUNK):
            chunk = plan.owned[start:start + SWAP_CHUNK]
            done = cache.get_swaps(context.id, chunk)
            todo = [c for c in chunk if c not in done]
            summary["swaps_cached"] += len(done)
            if todo:
                knowledge = cache.get_many(todo)
                build_swaps([knowledge[c] for c in todo], context, cache, n_process=n_process,
                            batch_size=batch_size, progress=progress)
                summary["swaps_built"] += len(todo)
    return summary


def build_knowledge_cli(annotations: str | Path, fmt: str = "jsonl", cache_dir: str | Path | None = None,
                        top_k: int | Mapping[str, int] = DEFAULT_TOP_K, batch_size: int = 256,
                        vocab_out: str | Path | None = None, *, n_process: int = 1, shard: str = "0/1",
                        wait: float = 0.0, min_count: int = 1, exclude: Mapping | None = None,
                        swaps: SwapSettings | None = None) -> int:
    """`structvl knowledge`: run shard `shard` of the knowledge pass over an annotation file and report it.

    The cache defaults to `<annotation dir>/.knowledge_cache`. Returns the exit status: 0, or 1 when the file
    holds no captions (e.g. a classification or QA annotation).
    """
    annotations = Path(annotations)
    records = read_annotations(fmt, annotations)
    if not any(record.captions for record in records):
        print(f"{annotations}: {len(records)} records but no captions: nothing to parse", file=sys.stderr)
        return 1
    cache_dir = Path(cache_dir) if cache_dir is not None else annotations.parent / ".knowledge_cache"
    with KnowledgeCache(cache_dir) as cache:
        corpus = corpus_fingerprint(fmt, annotations, cache)
        done = knowledge_pass(records, cache, corpus, shard=parse_shard(shard), n_process=n_process,
                              batch_size=batch_size, swaps=swaps, top_k=top_k, min_count=min_count,
                              exclude=exclude, wait=wait, progress=True)
        total = sum(len(r.captions) for r in records)
        part = f"shard {done['shard']}: {done['shard_captions']} captions, " if done["shard"] != "0/1" else ""
        print(f"{annotations}: {len(records)} records, {total} captions ({done['captions']} unique); {part}"
              f"parsed {done['parsed']}, {done['shard_captions'] - done['parsed']} were cached")
        print(f"cache: {cache.path} ({len(cache)} captions, extractor {cache.version}), corpus {corpus}")
        if not done["counted"]:
            print(f"counts: waiting for shard(s) {', '.join(done['pending_shards'])}; run this command again once "
                  "they have finished (or pass --wait SECONDS) to reduce the counts and build the swaps")
            return 0
        vocab = vocab_from_cache(cache, corpus, top_k, min_count, exclude)
        seen = vocab_from_cache(cache, corpus, sys.maxsize, 1)
    for kind in KNOWLEDGE_TYPES:
        top = ", ".join(f"{label} ({n})" for label, n in zip(vocab.labels(kind)[:10], vocab.counts(kind)[:10]))
        print(f"{kind:>9}: {vocab.size(kind)} kept of {seen.size(kind)} distinct; top: {top or '-'}")
    if swaps is not None:
        print(f"swaps (context {done['swap_context']}): built for {done['swaps_built']} captions, "
              f"{done['swaps_cached']} were cached")
    if vocab_out is not None:
        vocab.save(vocab_out)
        print(f"vocabulary written to {vocab_out}")
    return 0
