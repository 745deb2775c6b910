"""Shards read through webdataset's pipeline (structvl.data.shards): a resumed epoch continues with exactly the
batches the uninterrupted one had left, whatever the shard sizes; KCL's knowledge grouping works on shards
(batches share more knowledge than random ones); a grouping that cannot work is refused at start-up."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from structvl.config import ConfigError, load_config
from structvl.data.dataset import VideoTextCollator
from structvl.data.formats import read_annotations
from structvl.data.knowledge.cache import KnowledgeCache, knowledge_for
from structvl.data.knowledge.lookup import KnowledgeLookup
from structvl.data.knowledge.vocab import KnowledgeVocab
from structvl.data.knowledge_sampler import KnowledgeGrouping
from structvl.data.records import VideoRecord
from structvl.data.shards import SIZES_FILE, ShardedVideoTextDataset, write_shards
from structvl.data.transforms import VideoTransform

from helpers import write_video

IDENTITY = {"mean": (0.0, 0.0, 0.0), "std": (1 / 255, 1 / 255, 1 / 255)}


class FakeTokenizer:
    """One token per caption: the collator's tokenization is not what these tests look at."""

    def __call__(self, texts: list[str]) -> dict:
        ids = torch.zeros(len(texts), 1, dtype=torch.long)
        return {"input_ids": ids, "attention_mask": ids}

    def encode_with_offsets(self, texts: list[str]):
        return self(texts), [[(0, len(t))] for t in texts]


fake_tokenizer = FakeTokenizer()


@pytest.fixture(scope="module")
def uneven(tmp_path_factory):
    """14 clips in 5 shards of 4, 4, 3, 2, 1 samples: 2 workers run out at different times."""
    root = tmp_path_factory.mktemp("uneven")
    records = []
    for i in range(14):
        write_video(root / "videos" / f"v{i}.mp4", num_frames=6, size=(16, 16), fps=8)
        records.append(VideoRecord(video_id=f"vid{i}", video=f"v{i}.mp4", captions=[f"c{i}a", f"c{i}b"]))
    urls = []
    for part, (start, stop) in enumerate([(0, 4), (4, 8), (8, 11), (11, 13), (13, 14)]):
        urls += write_shards(records[start:stop], root / "videos", str(root / "out" / f"s{part}-%03d.tar"),
                             max_count=10)
    return root, urls


def dataset_of(urls, **kwargs):
    return ShardedVideoTextDataset(urls, num_frames=2, transform=VideoTransform(8, train=True, **IDENTITY),
                                   seed=5, **kwargs)


def batches(dataset, batch_size=2, num_workers=2, drop_last=True):
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, drop_last=drop_last,
                        collate_fn=VideoTextCollator(fake_tokenizer), timeout=60 if num_workers else 0)
    return [(tuple(b["video_id"]), tuple(b["caption"]), b["video"].sum().item()) for b in loader]


@pytest.mark.parametrize("shuffle_buffer,drop_last", [(0, True), (6, False)])
def test_resume_continues_with_exactly_the_remaining_batches(uneven, shuffle_buffer, drop_last):
    _, urls = uneven
    full = batches(dataset_of(urls, shuffle_buffer=shuffle_buffer), drop_last=drop_last)
    assert len({video for batch in full for video in batch[0]}) >= 12  # the epoch really is read
    for k in range(1, len(full)):
        resumed = dataset_of(urls, shuffle_buffer=shuffle_buffer)
        resumed.set_position(0, 2 * k, batch_size=2, drop_last=drop_last)
        assert batches(resumed, drop_last=drop_last) == full[k:], k


def test_resume_counts_samples_from_the_tar_headers_without_sizes_json(uneven, tmp_path):
    root, urls = uneven
    copies = []
    for url in urls:  # the same shards in a directory without sizes.json
        copy = tmp_path / url.rsplit("/", 1)[1]
        copy.write_bytes(Path(url).read_bytes())
        copies.append(str(copy))
    assert (root / "out" / SIZES_FILE).is_file() and not (tmp_path / SIZES_FILE).exists()
    sizes = json.loads((root / "out" / SIZES_FILE).read_text())
    assert sorted(sizes.values()) == [1, 2, 3, 4, 4]
    full = batches(dataset_of(copies))
    resumed = dataset_of(copies)
    resumed.set_position(0, 2 * (len(full) - 2), batch_size=2)
    assert batches(resumed) == full[-2:]


# ---------------------------------------------------------------- CLOP's grouping on shards
@pytest.fixture(scope="module")
def corpus_shards(tiny_corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("corpus_shards")
    records = read_annotations("jsonl", tiny_corpus / "train.jsonl")
    urls = write_shards(records, tiny_corpus, str(out / "train-%03d.tar"), max_count=8)
    cache = KnowledgeCache(out / "cache")
    knowledge = knowledge_for(sorted({c for r in records for c in r.captions}), cache)
    return urls, cache, KnowledgeVocab.build(knowledge, top_k=50)


def mean_batch_overlap(urls, grouping: KnowledgeGrouping, grouped: bool, batch_size=4, epochs=3) -> float:
    """Mean Jaccard overlap of the (vocabulary) labels of two clips of one batch, over `epochs` epochs read
    with the grouping stage, or with the plain shuffle buffer of the same size."""
    overlaps = []
    for epoch in range(epochs):
        dataset = ShardedVideoTextDataset(urls, num_frames=2, transform=VideoTransform(8, train=True, **IDENTITY),
                                          seed=epoch, shuffle_buffer=64)
        if grouped:
            dataset.set_grouping(grouping)
        collator = VideoTextCollator(fake_tokenizer, grouping.knowledge)
        for batch in DataLoader(dataset, batch_size=batch_size, drop_last=True, collate_fn=collator):
            labels = [grouping.labels(k) for k in batch["knowledge"]]
            overlaps += [len(a & b) / max(1, len(a | b)) for a, b in itertools.combinations(labels, 2)]
    return sum(overlaps) / len(overlaps)


def test_knowledge_grouping_on_shards_makes_batches_share_knowledge(corpus_shards):
    urls, cache, vocab = corpus_shards
    grouping = KnowledgeGrouping(KnowledgeLookup(cache), vocab, ["object", "attribute", "action", "relation"],
                                 group_size=4, buffer=64)
    grouped, shuffled = mean_batch_overlap(urls, grouping, True), mean_batch_overlap(urls, grouping, False)
    assert grouped > shuffled + 0.05, (grouped, shuffled)


def test_grouping_attaches_knowledge_and_counts_what_it_parsed(corpus_shards, tmp_path):
    urls, _, vocab = corpus_shards
    empty = KnowledgeCache(tmp_path / "empty")  # nothing cached: the stage parses and counts every caption
    grouping = KnowledgeGrouping(KnowledgeLookup(empty), vocab, ["object"], group_size=2, buffer=64)
    dataset = ShardedVideoTextDataset(urls[:1], num_frames=2, transform=VideoTransform(8, train=True, **IDENTITY))
    dataset.set_grouping(grouping)
    items = list(dataset)
    assert len(items) == 8 and all(item["knowledge"].caption == item["caption"] for item in items)
    assert sum(item["knowledge_parsed"] for item in items) == 8
    fields = KnowledgeLookup(empty).batch_fields(items)  # the collator's lookup: nothing left to parse
    assert fields["knowledge_parsed"] == 8 and fields["knowledge"] == [item["knowledge"] for item in items]


def test_grouping_without_a_shuffle_buffer_is_a_config_error():
    keys = ["data.shards=train-{000..003}.tar", "clop.kcl_batch_sampler=true"]  # clop.yaml groups its batches
    with pytest.raises(ConfigError, match="'clop.kcl_batch_sampler' and 'data.shuffle_buffer'.*got 0"):
        load_config("clop", keys)
    assert load_config("clop", keys + ["data.shuffle_buffer=64"]).data.shuffle_buffer == 64
    assert not load_config("clop", keys[:1] + ["clop.kcl_batch_sampler=false"]).clop.kcl_batch_sampler
    assert load_config("clop", keys + ["objectives.clop_kcl=0", "objectives.contrastive=1"])  # KCL off: no grouping


def test_clop_pretrains_on_shards_with_knowledge_grouped_batches(tiny_corpus, corpus_shards, tmp_path, monkeypatch,
                                                                 one_thread):
    """The engine hands CLOP's grouping to a sharded dataset (it no longer drops it), and a run trains."""
    from structvl.engine import pretrain

    from helpers import TINY

    urls, _, _ = corpus_shards
    grouped = []
    monkeypatch.setattr(ShardedVideoTextDataset, "set_grouping",
                        lambda self, grouping: grouped.append(grouping) or setattr(self, "grouping", grouping))
    pattern = f"{urls[0].rsplit('/', 1)[0]}/train-{{000..{len(urls) - 1:03d}}}.tar"
    cfg = load_config("clop", TINY + [f"data.root={tiny_corpus}", f"data.shards={pattern}", "data.shuffle_buffer=64",
                                      "train.max_steps=3",
                                      "train.checkpoint_every=0", "knowledge.min_count=1", "clop.kcl_sampler_groups=2"])
    result = pretrain.run_pretraining(cfg, tmp_path / "run")
    assert len(grouped) == 1 and isinstance(grouped[0], KnowledgeGrouping) and grouped[0].group_size == 2
    assert torch.isfinite(torch.tensor(result.metrics["train/loss"]))
    assert result.metrics["data/knowledge_parsed"] == 0  # every training caption came from the cache
