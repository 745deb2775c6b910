"""Training reads knowledge from the cache (structvl.data.knowledge.cache, .lookup): a caption the cache lacks
is parsed in the loader worker, written back and counted; so are missing swaps; a counted corpus starts a run
without parsing anything, and an uncounted large one is refused in one line."""

from __future__ import annotations

import json

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from structvl.config import ConfigError, load_config
from structvl.data.dataset import SkipLedger, VideoTextCollator
from structvl.data.knowledge.cache import KnowledgeCache
from structvl.data.knowledge.corpus import corpus_fingerprint, knowledge_pass, vocab_from_cache
from structvl.data.knowledge.counts import CorpusCounts
from structvl.data.knowledge.lookup import KnowledgeLookup
from structvl.data.knowledge.swaps import SwapContext, SwapSettings
from structvl.data.knowledge.vocab import KnowledgeVocab
from structvl.data.records import VideoRecord
from structvl.data.text import Tokenizer
from structvl.engine import pretrain

from helpers import SHAPE_CAPTIONS, TINY


class CaptionItems(Dataset):
    """Dataset items as VideoTextDataset makes them, without decoding a video."""

    def __init__(self, captions):
        self.captions = captions

    def __len__(self):
        return len(self.captions)

    def __getitem__(self, i):
        return {"video": torch.zeros(2, 3, 8, 8), "frame_mask": torch.ones(2, dtype=torch.bool),
                "caption": self.captions[i], "index": i, "record_index": i, "video_id": f"v{i}",
                "video_captions": [self.captions[i]]}


def read_epoch(loader, ledger):
    knowledge = {}
    for batch in loader:
        ledger.update_batch(batch)
        knowledge.update((k.caption, k) for k in batch["knowledge"])
        assert [k.caption for k in batch["knowledge"]] == batch["caption"]
    return knowledge


def test_a_missing_caption_is_parsed_in_the_loader_worker_written_back_and_counted(tmp_path, parsed):
    cache = KnowledgeCache(tmp_path)
    cache.put_many(parsed[:5])
    collator = VideoTextCollator(Tokenizer(max_length=24), KnowledgeLookup(cache))
    loader = DataLoader(CaptionItems(SHAPE_CAPTIONS), batch_size=4, num_workers=1, collate_fn=collator, timeout=120)
    ledger = SkipLedger()
    knowledge = read_epoch(loader, ledger)
    assert ledger.knowledge_parsed == 3 and "knowledge cache lacked 3 captions" in ledger.report()
    assert {c: k.to_dict() for c, k in knowledge.items()} == {k.caption: k.to_dict() for k in parsed}
    assert len(KnowledgeCache(tmp_path)) == 8  # the worker wrote them back: the next epoch parses nothing
    read_epoch(loader, ledger)
    assert ledger.knowledge_parsed == 3


def test_missing_swaps_are_built_in_the_loader_and_counted(tmp_path, parsed):
    cache = KnowledgeCache(tmp_path)
    cache.put_many(parsed)
    vocab = KnowledgeVocab.build(parsed, top_k=20)
    context = SwapContext.build(CorpusCounts.of(parsed), vocab, SwapSettings.make(["attribute", "object"], 2))
    lookup = KnowledgeLookup(cache, swaps=context)
    cache.put_swaps(context.id, {SHAPE_CAPTIONS[0]: [("a small blue circle moves to the left", "attribute")]})
    fields = lookup.batch_fields([{"caption": c} for c in SHAPE_CAPTIONS[:3]])
    assert fields["swaps_built"] == 2 and fields["knowledge_parsed"] == 0
    assert fields["swaps"][0] == [("a small blue circle moves to the left", "attribute")]  # read, not rebuilt
    assert all(fields["swaps"][1:]) and all(kind in ("attribute", "object") for row in fields["swaps"] for _, kind in row)
    assert lookup.batch_fields([{"caption": c} for c in SHAPE_CAPTIONS[:3]])["swaps_built"] == 0


def write_corpus(root):
    records = [VideoRecord(video_id=f"v{i}", video=f"v{i}.mp4", captions=[c]) for i, c in enumerate(SHAPE_CAPTIONS)]
    root.mkdir(parents=True, exist_ok=True)
    (root / "train.jsonl").write_text("".join(json.dumps(r.to_dict()) + "\n" for r in records))
    return records


def clop_cfg(root, *extra):
    return load_config("clop", TINY + [f"data.root={root}", "knowledge.min_count=1", *extra])


def test_a_counted_corpus_starts_a_run_without_parsing(tmp_path, monkeypatch, parsed):
    records = write_corpus(tmp_path / "data")
    cfg = clop_cfg(tmp_path / "data")
    swaps = pretrain.OBJECTIVES["clop_kcl"].knowledge_swaps(cfg)
    with KnowledgeCache(tmp_path / "data" / "knowledge_cache") as cache:
        knowledge_pass(records, cache, corpus_fingerprint("jsonl", tmp_path / "data" / "train.jsonl"), swaps=swaps,
                       top_k=dict(cfg.knowledge.top_k), min_count=1)

    def no_parsing(*args, **kwargs):
        raise AssertionError("start-up parsed captions")

    monkeypatch.setattr(pretrain, "knowledge_pass", no_parsing)
    monkeypatch.setattr(pretrain, "train_records", no_parsing)
    context = pretrain.build_objective_context(cfg, Tokenizer(max_length=24), tmp_path / "run", is_main=True)
    assert context.vocab == KnowledgeVocab.build(parsed, top_k=dict(cfg.knowledge.top_k), min_count=1)
    assert context.vocab.total == len(SHAPE_CAPTIONS)
    assert KnowledgeVocab.load(tmp_path / "run" / "knowledge_vocab.json") == context.vocab
    assert isinstance(context.knowledge, KnowledgeLookup) and context.knowledge.swaps is not None
    # the swaps the pass built are the ones a batch reads: none is built again
    assert context.knowledge.batch_fields([{"caption": c} for c in SHAPE_CAPTIONS])["swaps_built"] == 0


def test_an_uncounted_corpus_above_the_limit_is_refused_in_one_line(tmp_path):
    write_corpus(tmp_path / "data")
    cfg = clop_cfg(tmp_path / "data", "knowledge.startup_parse_limit=5")
    with pytest.raises(ConfigError, match="knowledge.startup_parse_limit.*structvl knowledge") as error:
        pretrain.build_objective_context(cfg, Tokenizer(max_length=24), tmp_path / "run", is_main=True)
    assert "\n" not in str(error.value)
    # below the limit the main rank counts it here, and the vocabulary comes from those counts
    cfg = clop_cfg(tmp_path / "data")
    context = pretrain.build_objective_context(cfg, Tokenizer(max_length=24), tmp_path / "run", is_main=True)
    corpus = corpus_fingerprint("jsonl", tmp_path / "data" / "train.jsonl")
    assert context.vocab == vocab_from_cache(KnowledgeCache(tmp_path / "data" / "knowledge_cache"), corpus,
                                             dict(cfg.knowledge.top_k), 1)
