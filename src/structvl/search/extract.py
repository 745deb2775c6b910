"""`structvl extract`: embed a video collection with a trained run, in chunks that survive a crash.

Collection (`--data`): an annotation file in any supported format (videos relative to `--videos`, default
the file's folder), a structured-corpus directory (its evaluation split, as `structvl eval --data DIR` reads
it), or any other directory (every video file under it, found as `structvl data prepare` finds them).

Entries. Each record becomes one entry (its annotated window, or the whole video); with `segment` seconds, a
longer window is cut into segments of that length every `stride` seconds (the last one ending at the end), so a
long video is found by the moment a query describes, and `search` prints the segment's times.

Embedding, as the evaluation protocols do it. With one view (the default) an entry is embedded exactly as
`structvl eval --task retrieval` embeds a clip: the run's `eval:` frames and sampling, centre crop, through
`eval_loader` and `embed_videos`, so an exact index ranks as the evaluation does. With `temporal_views` x
`spatial_crops` > 1 (multi-view testing of the downstream protocols, `tasks.features.ClipViews`), the views'
embeddings are averaged and re-normalised. Captions, where the collection has them, are embedded with the
run's text tower too (once per record).

Resumable: entries are split into chunks of `chunk_size`, each written whole (see `store.py`); a second run
with the same arguments embeds only the chunks still missing. Unreadable videos, and the rare non-finite
embedding, are skipped, listed in the chunk and counted in the summary, never stored.
"""

from __future__ import annotations

import logging
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm

from structvl.config import ConfigError
from structvl.data.formats import read_annotations
from structvl.data.prepare import find_videos
from structvl.data.records import AnnotationError, VideoRecord
from structvl.data.text import Tokenizer
from structvl.data.video import VideoDecodeError, open_video
from structvl.engine.checkpoint import latest_checkpoint
from structvl.runtime.precision import autocast, autocast_dtype, dtype_name
from structvl.runtime.process import die_with_parent
from structvl.search.store import DTYPES, EmbeddingStore, file_sha256
from structvl.tasks.downstream import pick_device
from structvl.tasks.eval_data import eval_annotations
from structvl.tasks.evaluate import eval_loader, load_run_model
from structvl.tasks.features import ClipViews, collate_views
from structvl.tasks.retrieval import embed_texts, embed_videos

log = logging.getLogger("structvl.search")


@dataclass
class ExtractOptions:
    segment: float | None = None  # seconds per entry for long windows (None: one entry per record)
    stride: float | None = None  # seconds between segment starts (default: segment, i.e. no overlap)
    temporal_views: int = 1  # multi-view testing: shifted frame sets per entry, embeddings averaged
    spatial_crops: int = 1  # ... and crops along the longer side
    chunk_size: int = 4096  # entries per chunk (rounded up to whole batches): the unit of resumption
    batch_size: int | None = None  # clips per forward pass (default: the run's eval.batch_size)
    workers: int | None = None  # loader worker processes (default: the run's data.num_workers)
    dtype: str = "float16"  # storage dtype; float32 keeps exact search bit-faithful to `structvl eval`

    def check(self) -> None:
        for key in ("temporal_views", "spatial_crops", "chunk_size"):
            if getattr(self, key) < 1:
                raise ConfigError(f"--{key.replace('_', '-')} {getattr(self, key)}: must be at least 1")
        for key in ("segment", "stride"):
            value = getattr(self, key)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ConfigError(f"--{key} {value}: must be a positive number of seconds")
        if self.stride is not None and self.segment is None:
            raise ConfigError("--stride needs --segment")
        if self.dtype not in DTYPES:
            raise ConfigError(f"--dtype {self.dtype!r}: expected one of {list(DTYPES)}")


def read_collection(data: str | Path, fmt: str | None, videos: str | Path | None, cfg) -> tuple[list, Path, str]:
    """(records, video root, what kind of source) for `--data` (see the module docstring)."""
    data = Path(data)
    if not data.exists():
        raise ConfigError(f"--data {data}: no such file or directory")
    if data.is_dir() and (data / "corpus.json").exists():
        records, root, kind = read_annotations(cfg.data.format, data / eval_annotations(cfg)), data, "corpus"
    elif data.is_dir():  # the directory is the video root (--videos is for annotation files)
        root, kind = data, "directory"
        records = [VideoRecord(video_id=str(p.relative_to(data)), video=str(p.relative_to(data)))
                   for p in find_videos(data)]
    else:
        records, root, kind = read_annotations(fmt or "jsonl", data), Path(videos) if videos else data.parent, fmt
    if not records:
        raise AnnotationError(f"--data {data}: empty collection (no {'video files' if kind == 'directory' else 'records'})")
    return records, root, kind or "jsonl"


def _duration(record: VideoRecord, root: Path, backend: str) -> float | None:
    if record.start is not None and record.end is not None:
        return record.end - record.start
    if record.duration is not None and record.start is None:
        return record.duration
    try:
        with open_video(record.resolve(root), backend) as reader:
            return reader.duration - (record.start or 0.0)
    except (VideoDecodeError, OSError):
        return None  # one whole-video entry, skipped with its reason when it is embedded


def plan_entries(records: list[VideoRecord], root: Path, opts: ExtractOptions, backend: str = "pyav",
                 workers: int = 2) -> list[dict]:
    """One entry per record, or per segment of a record's window when `opts.segment` is set."""
    durations = [None] * len(records)
    if opts.segment:
        with ThreadPoolExecutor(max(1, workers)) as pool:  # PyAV releases the GIL while it parses headers
            durations = list(pool.map(lambda r: _duration(r, root, backend), records))
    entries = []
    for index, (record, duration) in enumerate(zip(records, durations)):
        base = {"id": record.video_id, "video": record.video, "captions": list(record.captions), "record": index}
        if not opts.segment or duration is None or duration <= opts.segment:
            entries.append({**base, "start": record.start, "end": record.end})
            continue
        stride = opts.stride or opts.segment
        offset = record.start or 0.0
        count = math.ceil((duration - opts.segment) / stride) + 1
        for k in range(count):
            start = min(k * stride, duration - opts.segment)
            entries.append({**base, "start": round(offset + start, 3), "end": round(offset + start + opts.segment, 3),
                            "segment": k})
    return entries


def entry_record(entry: dict) -> VideoRecord:
    return VideoRecord(video_id=entry["id"], video=entry["video"], captions=entry["captions"],
                       start=entry["start"], end=entry["end"])


def _collate_views_with_reasons(samples: list[dict]) -> dict:
    batch = collate_views(samples)
    batch["skipped_at"] = [(s["index"], s["reason"]) for s in samples if s.get("skipped")]
    return batch


class ChunkEmbedder:
    """Embeds entries batch by batch: one view through the evaluation loader, several through ClipViews."""

    def __init__(self, model, cfg, tokenizer, root: Path, opts: ExtractOptions, device: torch.device):
        self.model, self.cfg, self.tokenizer, self.root, self.opts = model, cfg, tokenizer, root, opts
        self.device = device
        self.autocast = autocast_dtype(cfg.train.precision, device)
        self.views = opts.temporal_views * opts.spatial_crops
        base = opts.batch_size or cfg.eval.batch_size
        self.batch_size = base if self.views == 1 else max(1, base // self.views)
        self.workers = cfg.data.num_workers if opts.workers is None else opts.workers

    def loader(self, records: list[VideoRecord]):
        if self.views == 1:
            return eval_loader(records, self.cfg, self.root, self.tokenizer, batch_size=self.batch_size,
                               num_workers=self.workers)
        dataset = ClipViews(records, self.root, self.cfg.eval.num_frames, self.cfg.model.video.image_size,
                            self.opts.temporal_views, self.opts.spatial_crops, self.cfg.data.backend)
        return DataLoader(dataset, batch_size=self.batch_size, collate_fn=_collate_views_with_reasons,
                          num_workers=self.workers, persistent_workers=False,
                          worker_init_fn=die_with_parent)

    @torch.no_grad()
    def embed_batch(self, batch: dict, first: int, count: int) -> tuple[list[int], torch.Tensor, list[tuple]]:
        """(positions of the embedded items, their (b, E) embeddings, [(position, path or None, reason)]) for a
        batch covering loader positions [first, first + count)."""
        if self.views == 1:
            if batch.get("video") is None:
                embed, kept = torch.empty(0, self.cfg.model.embed_dim), []
            else:
                embed, kept = embed_videos(self.model, [batch], self.device, self.autocast)
            missing = sorted(set(range(first, first + count)) - set(kept))  # the collator keeps the items' order
            return kept, embed, [(p, path, reason) for p, (path, reason) in zip(missing, batch["skipped"])]
        skipped = [(first + i, None, reason) for i, reason in batch["skipped_at"]]
        if batch["views"] is None:
            return [], torch.empty(0, self.cfg.model.embed_dim), skipped
        self.model.eval()
        views = batch["views"].to(self.device)
        b, v = views.shape[:2]
        with autocast(self.device, self.autocast):
            out = self.model.encode_video(views.flatten(0, 1))
        embed = F.normalize(out.embed.float().view(b, v, -1).mean(dim=1), dim=-1).cpu()
        return [first + i for i in batch["index"].tolist()], embed, skipped

    def embed_captions(self, captions: list[str]) -> torch.Tensor:
        if not captions:
            return torch.empty(0, self.cfg.model.embed_dim)
        return embed_texts(self.model, self.tokenizer, captions, self.device, autocast_dtype=self.autocast)


def _finite_rows(embed: torch.Tensor) -> torch.Tensor:
    return torch.isfinite(embed).all(dim=1) if len(embed) else torch.zeros(0, dtype=torch.bool)


def embed_missing_chunks(embedder: ChunkEmbedder, store: EmbeddingStore, entries: list[dict],
                         progress: bool = True) -> dict:
    """Embed and write every chunk the store does not hold yet; returns counts of this run's work."""
    chunk_size = store.manifest()["chunk_size"]
    todo = store.missing_chunks()
    spans = [(c, c * chunk_size, min((c + 1) * chunk_size, len(entries))) for c in todo]
    todo_entries = [i for _, lo, hi in spans for i in range(lo, hi)]
    done = {"chunks": 0, "entries": 0, "skipped": 0}
    if not todo_entries:
        return done
    batches = iter(embedder.loader([entry_record(entries[i]) for i in todo_entries]))
    bar = tqdm(total=len(todo_entries), unit="clip", desc="extract", disable=not progress)
    position = 0  # into todo_entries, i.e. the loader's dataset
    for chunk, lo, hi in spans:
        rows, parts, skipped = [], [], []
        for first in range(position, position + hi - lo, embedder.batch_size):
            count = min(embedder.batch_size, position + hi - lo - first)
            kept, embed, bad = embedder.embed_batch(next(batches), first, count)
            finite = _finite_rows(embed)
            rows += [todo_entries[p] for p, ok in zip(kept, finite.tolist()) if ok]
            parts.append(embed[finite])
            skipped += [{"entry": todo_entries[p], "path": path or str(entry_record(entries[todo_entries[p]])
                                                                          .resolve(embedder.root)), "reason": reason}
                        for p, path, reason in bad]
            skipped += [{"entry": todo_entries[p], "reason": "non-finite embedding"}
                        for p, ok in zip(kept, finite.tolist()) if not ok]
            bar.update(count)
        position += hi - lo
        captioned = [(i, c) for i in rows if entries[i].get("segment", 0) == 0 for c in entries[i]["captions"]]
        text = embedder.embed_captions([c for _, c in captioned])
        text_ok = _finite_rows(text)
        video = torch.cat(parts) if parts else torch.empty(0, embedder.cfg.model.embed_dim)
        store.write_chunk(chunk, video.numpy(), rows, text[text_ok].numpy(),
                          [i for (i, _), ok in zip(captioned, text_ok.tolist()) if ok], skipped)
        for s in skipped:
            log.warning("skipped entry %d (%s): %s", s["entry"], s.get("path", entries[s["entry"]]["video"]),
                        s["reason"])
        done["chunks"] += 1
        done["entries"] += len(rows)
        done["skipped"] += len(skipped)
    bar.close()
    return done


def extract_embeddings(checkpoint: str | Path, data: str | Path, out: str | Path, fmt: str | None = None,
                       videos: str | Path | None = None, opts: ExtractOptions | None = None,
                       progress: bool = True) -> dict:
    """Embed the collection `data` with the run at `checkpoint` into the embedding directory `out`."""
    opts = opts or ExtractOptions()
    opts.check()
    ckpt = latest_checkpoint(Path(checkpoint))
    model, cfg, run_dir = load_run_model(checkpoint)  # a ConfigError when there is no checkpoint
    records, root, kind = read_collection(data, fmt, videos, cfg)
    started = time.perf_counter()
    device = pick_device(cfg)
    model = model.to(device)
    embedder = ChunkEmbedder(model, cfg, Tokenizer(cfg.model.text.max_length), root, opts, device)
    entries = plan_entries(records, root, opts, cfg.data.backend, embedder.workers)
    chunk_size = math.ceil(opts.chunk_size / embedder.batch_size) * embedder.batch_size  # whole batches
    manifest = {
        "checkpoint": str(ckpt.resolve()), "run": str(run_dir.resolve()),
        "weights_sha256": file_sha256(ckpt / "model.safetensors"),
        "source": str(Path(data).resolve()), "source_kind": kind, "video_root": str(root.resolve()),
        "num_frames": cfg.eval.num_frames, "sampling": cfg.eval.sampling, "image_size": cfg.model.video.image_size,
        "temporal_views": opts.temporal_views, "spatial_crops": opts.spatial_crops, "segment": opts.segment,
        "stride": opts.stride, "batch_size": embedder.batch_size, "chunk_size": chunk_size, "dtype": opts.dtype,
        "precision": dtype_name(embedder.autocast), "embed_dim": cfg.model.embed_dim,
    }
    store = EmbeddingStore(out)
    resumed = store.open(manifest, entries)
    done = embed_missing_chunks(embedder, store, entries, progress)
    skipped = store.skipped()
    return {"out": str(out), "entries": len(entries), "embedded": len(entries) - len(skipped),
            "skipped": skipped, "resumed": resumed, "chunks": store.num_chunks(), "chunks_this_run": done["chunks"],
            "seconds": round(time.perf_counter() - started, 2),
            "clips_per_second": round(done["entries"] / max(time.perf_counter() - started, 1e-9), 2)}
