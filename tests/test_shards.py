"""Webdataset shards: writing, reading with the map-style dataset's items, rank/worker splitting, skipping."""

from __future__ import annotations

import json
import tarfile

import pytest
import torch
from torch.utils.data import DataLoader

from structvl.data.dataset import SkipLedger, VideoTextCollator, VideoTextDataset
from structvl.data.records import VideoRecord
from structvl.data.shards import ShardedVideoTextDataset, write_shards
from structvl.data.transforms import VideoTransform
from structvl.data.video import VideoDecodeError, open_video, open_video_bytes

from helpers import write_video

IDENTITY = {"mean": (0.0, 0.0, 0.0), "std": (1 / 255, 1 / 255, 1 / 255)}
LOADER_TIMEOUT = 30


def fake_tokenizer(texts: list[str]) -> dict:
    length = max([len(t) for t in texts] + [1])
    ids = torch.zeros(len(texts), length, dtype=torch.long)
    for row, text in enumerate(texts):
        ids[row, : len(text)] = torch.tensor([ord(c) for c in text], dtype=torch.long)
    return {"input_ids": ids, "attention_mask": (ids != 0).long()}


def make_records(root, n=10):
    records = []
    for i in range(n):
        write_video(root / "videos" / f"v{i}.mp4", num_frames=12, size=(32, 40), fps=8, keyint=4)
        records.append(VideoRecord(video_id=f"vid.{i}", video=f"v{i}.mp4",
                                   captions=[f"clip {i} caption {c}" for c in range(1 + i % 2)]))
    return records


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """10 good clips in shards 0-2 (4, 4, 2 samples), plus a 4th shard holding one corrupt sample and one
    good clip (clip 0 again under another key) - 4 shards, so 2 ranks x 2 workers each get one."""
    root = tmp_path_factory.mktemp("shards")
    records = make_records(root)
    missing: list = []
    urls = write_shards(records + [VideoRecord(video_id="gone", video="gone.mp4")], root / "videos",
                        str(root / "out" / "train-%06d.tar"), max_count=4, missing=missing)
    assert len(urls) == 3 and [m["video_id"] for m in missing] == ["gone"]
    import webdataset as wds

    bad = str(root / "out" / "train-000003.tar")
    with wds.TarWriter(bad) as writer:
        writer.write({"__key__": "corrupt_one", "mp4": b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 50,
                      "json": json.dumps({"video_id": "corrupt", "video": "c.mp4", "captions": ["bad"]}).encode()})
        writer.write({"__key__": "good_again", "mp4": (root / "videos" / "v0.mp4").read_bytes(),
                      "json": json.dumps(records[0].to_dict()).encode(), "record_index": b"0"})
    return root, records, urls + [bad]


def make_dataset(urls, **kwargs) -> ShardedVideoTextDataset:
    options = {"num_frames": 4, "transform": VideoTransform(24, train=True, **IDENTITY)}
    return ShardedVideoTextDataset(urls, **{**options, **kwargs})


def read_all(dataset, num_workers=2, batch_size=2, ledger=None):
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers,
                        collate_fn=VideoTextCollator(fake_tokenizer), timeout=LOADER_TIMEOUT if num_workers else 0)
    items = []
    for batch in loader:
        if ledger is not None:
            ledger.update(batch["skipped"])
        if batch["video"] is None:
            continue
        for j, video_id in enumerate(batch["video_id"]):
            items.append((video_id, batch["caption"][j], int(batch["record_index"][j]), batch["video"][j]))
    return items


def test_write_shards_layout(shards):
    root, records, urls = shards
    with tarfile.open(urls[0]) as tar:
        names = tar.getnames()
    assert sorted(names[:3]) == ["000000000_vid_0.json", "000000000_vid_0.mp4", "000000000_vid_0.record_index"]
    with tarfile.open(urls[0]) as tar:
        meta = json.load(tar.extractfile("000000001_vid_1.json"))
    assert meta == records[1].to_dict()
    with pytest.raises(ValueError, match="placeholder"):
        write_shards(records, root / "videos", str(root / "no-pattern.tar"))


def test_open_video_bytes_matches_file(shards):
    root, _, _ = shards
    path = root / "videos" / "v3.mp4"
    with open_video(path) as a, open_video_bytes(path.read_bytes(), "v3.mp4") as b:
        assert (a.num_frames, a.fps) == (b.num_frames, b.fps)
        assert (a.get_frames([0, 5, 11]) == b.get_frames([0, 5, 11])).all()
    for data in (b"", b"not a video at all" * 10):
        with pytest.raises(VideoDecodeError):
            open_video_bytes(data, "x.mp4").get_frames([0])


def test_every_sample_once_across_ranks_and_workers(shards):
    root, records, urls = shards
    seen = []
    ledger = SkipLedger()
    for rank in range(2):
        dataset = make_dataset(urls, rank=rank, world_size=2, seed=3)
        seen += read_all(dataset, num_workers=2, ledger=ledger)
    ids = sorted(video_id for video_id, *_ in seen)
    assert ids == sorted([r.video_id for r in records] + ["vid.0"])  # vid.0 is in the corrupt shard too
    for video_id, caption, record_index, video in seen:
        assert caption in records[record_index].captions and records[record_index].video_id == video_id
        assert video.shape == (4, 3, 24, 24) and video.dtype == torch.float32
    # The corrupt sample was skipped with a reason, and logged once.
    assert ledger.total == 1 and len(ledger.reasons) == 1
    (path, reason), = ledger.reasons.items()
    assert path.endswith("train-000003.tar/corrupt_one") and reason


def test_items_match_map_style_dataset(shards):
    root, records, urls = shards
    sharded = next(iter(make_dataset(urls[:1], shuffle_shards=False)))
    mapped = VideoTextDataset(records, root / "videos", num_frames=4,
                              transform=VideoTransform(24, train=True, **IDENTITY))[0]
    assert set(sharded) == set(mapped)
    for key in ("video", "frame_mask"):
        assert sharded[key].shape == mapped[key].shape and sharded[key].dtype == mapped[key].dtype
    assert sharded["video_id"] == mapped["video_id"] == "vid.0" and sharded["record_index"] == 0


def test_samples_do_not_depend_on_worker_count(shards):
    _, _, urls = shards

    def by_key(num_workers):
        return {(v, c): video for v, c, _, video in read_all(make_dataset(urls[:3], seed=1), num_workers)}

    one, two = by_key(0), by_key(2)
    assert one.keys() == two.keys() and len(one) == 10
    assert all(torch.equal(one[k], two[k]) for k in one)


def test_epoch_shuffles_shard_order_deterministically(shards):
    _, _, urls = shards
    dataset = make_dataset(urls, seed=0)
    orders = [dataset.shard_order(epoch) for epoch in range(6)]
    assert all(sorted(order) == sorted(urls) for order in orders)
    assert len({tuple(order) for order in orders}) > 1
    assert orders == [make_dataset(urls, seed=0).shard_order(epoch) for epoch in range(6)]
    # Every epoch, the ranks split all shards between them.
    for epoch in range(3):
        parts = [make_dataset(urls, rank=r, world_size=2).rank_shards(epoch) for r in range(2)]
        assert sorted(parts[0] + parts[1]) == sorted(urls) and not set(parts[0]) & set(parts[1])
    # set_epoch changes what the iterator reads first.
    firsts = set()
    for epoch in range(6):
        dataset.set_epoch(epoch)
        firsts.add(dataset.worker_shards(dataset.epoch)[0])
    assert len(firsts) > 1


def test_set_position_skips_samples(shards):
    _, _, urls = shards
    full = [v for v, *_ in read_all(make_dataset(urls[:3]), num_workers=0)]
    dataset = make_dataset(urls[:3])
    dataset.set_position(0, 3)
    assert [v for v, *_ in read_all(dataset, num_workers=0)] == full[3:]
    dataset.set_epoch(1)  # the skip only applies to the epoch it was set for
    assert len(read_all(dataset, num_workers=0)) == 10


def test_invalid_configurations(shards, tmp_path):
    _, _, urls = shards
    with pytest.raises(ValueError, match="cannot be split across 3 ranks"):
        make_dataset(urls[:2], rank=0, world_size=3)
    with pytest.raises(FileNotFoundError):
        make_dataset([str(tmp_path / "nope-000000.tar")])
    with pytest.raises(ValueError, match="rank"):
        make_dataset(urls, rank=2, world_size=2)


def test_brace_pattern(shards):
    root, _, _ = shards
    dataset = make_dataset(str(root / "out" / "train-{000000..000002}.tar"))
    assert len(dataset.urls) == 3


def test_cli_writes_shards(tmp_path, capsys):
    from structvl.cli import main

    records = make_records(tmp_path, n=3)
    annotations = tmp_path / "train.jsonl"
    annotations.write_text("".join(json.dumps(r.to_dict()) + "\n" for r in records))
    with pytest.raises(SystemExit) as exit_info:
        main(["data", "shard", str(annotations), "--format", "jsonl", "--videos", str(tmp_path / "videos"),
              "--out", str(tmp_path / "shards" / "s-%03d.tar"), "--max-count", "2"])
    assert exit_info.value.code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["samples"] == 3 and len(summary["shards"]) == 2 and not summary["missing"]
    items = list(make_dataset(summary["shards"]))
    assert sorted(item["video_id"] for item in items) == ["vid.0", "vid.1", "vid.2"]
