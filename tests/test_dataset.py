"""The video-text dataset, collator, skip ledger and loader: content, determinism across workers, bad files."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from structvl.data.dataset import SkipLedger, VideoTextCollator, VideoTextDataset, build_dataloader
from structvl.data.records import VideoRecord
from structvl.data.transforms import VideoTransform

from helpers import frame_index_of, write_video

# With this normalisation the output is the raw pixel value, so frame_index_of works on dataset output.
IDENTITY = {"mean": (0.0, 0.0, 0.0), "std": (1 / 255, 1 / 255, 1 / 255)}
LOADER_TIMEOUT = 30  # seconds; a worker stuck on a bad file fails the test instead of hanging it


def fake_tokenizer(texts: list[str]) -> dict:
    """Characters as ids, right-padded with 0: enough to check padding and order."""
    length = max([len(t) for t in texts] + [1])
    ids = torch.zeros(len(texts), length, dtype=torch.long)
    for row, text in enumerate(texts):
        ids[row, : len(text)] = torch.tensor([ord(c) for c in text], dtype=torch.long)
    return {"input_ids": ids, "attention_mask": (ids != 0).long()}


def indices_of(video: torch.Tensor) -> list[int]:
    """Frame indices encoded in an IDENTITY-normalised (T, C, H, W) clip."""
    return [frame_index_of(frame.permute(1, 2, 0).numpy()) for frame in video]


@pytest.fixture
def corpus(tmp_path):
    """Four 24-frame clips at 8 fps with two or three captions each."""
    records = []
    for i in range(4):
        write_video(tmp_path / f"v{i}.mp4", num_frames=24, size=(48, 64), fps=8, keyint=4)
        captions = [f"clip {i} caption {c}" for c in range(2 + i % 2)]
        records.append(VideoRecord(video_id=f"v{i}", video=f"v{i}.mp4", captions=captions))
    return tmp_path, records


def make_dataset(root, records, train=True, **kwargs) -> VideoTextDataset:
    transform = VideoTransform(32, train=train, **IDENTITY)
    options = {"num_frames": 4, "sampling": "random_segment" if train else "uniform", "transform": transform}
    return VideoTextDataset(records, root, **{**options, **kwargs})


def test_item_contents(corpus):
    root, records = corpus
    item = make_dataset(root, records, train=False, caption_mode="first")[2]
    assert item["video"].shape == (4, 3, 32, 32) and item["video"].dtype == torch.float32
    assert item["frame_mask"].dtype == torch.bool and item["frame_mask"].all()
    assert (item["caption"], item["index"], item["record_index"], item["video_id"]) == \
        ("clip 2 caption 0", 2, 2, "v2")
    assert indices_of(item["video"]) == [3, 9, 15, 21]  # uniform centres of 4 segments of 24 frames


def test_window_is_used(corpus):
    root, records = corpus
    records[0].start, records[0].end = 1.0, 2.0  # frames 8..15
    for epoch in range(5):
        dataset = make_dataset(root, records[:1])
        dataset.set_epoch(epoch)
        assert all(8 <= i <= 15 for i in indices_of(dataset[0]["video"]))


def test_fps_sampling_masks_frames_past_the_window(corpus):
    root, records = corpus
    records[0].start, records[0].end = 1.0, 2.5  # frames 8..19 at 8 fps; 8 frames at 4 fps need 16
    item = make_dataset(root, records[:1], train=False, num_frames=8, sampling="fps", target_fps=4.0)[0]
    assert item["frame_mask"].tolist() == [True] * 6 + [False] * 2
    assert indices_of(item["video"]) == [8, 10, 12, 14, 16, 18, 18, 18]


def test_frames_do_not_depend_on_caption_mode(corpus):
    root, records = corpus
    a = make_dataset(root, records, caption_mode="random")[1]["video"]
    b = make_dataset(root, records, caption_mode="first")[1]["video"]
    assert torch.equal(a, b)


def test_caption_modes(corpus):
    root, records = corpus
    expand = make_dataset(root, records, caption_mode="expand")
    assert len(expand) == sum(len(r.captions) for r in records) == 10
    assert [expand[i]["caption"] for i in range(3)] == ["clip 0 caption 0", "clip 0 caption 1", "clip 1 caption 0"]
    assert expand[2]["record_index"] == 1

    random = make_dataset(root, records, caption_mode="random")
    assert len(random) == 4
    seen = set()
    for epoch in range(12):
        random.set_epoch(epoch)
        caption = random[1]["caption"]
        assert caption == random[1]["caption"]  # fixed within an epoch
        seen.add(caption)
    assert seen == set(records[1].captions)


def test_record_without_captions(corpus):
    root, records = corpus
    qa = VideoRecord(video_id="q", video="v0.mp4", question="what colour?", answer="red")
    dataset = make_dataset(root, [qa], caption_mode="expand")
    assert len(dataset) == 1 and dataset[0]["caption"] == ""


def test_epochs_change_frames_and_crops(corpus):
    root, records = corpus
    dataset = make_dataset(root, records)
    first = dataset[0]["video"]
    assert torch.equal(first, dataset[0]["video"])
    dataset.set_epoch(1)
    assert not torch.equal(first, dataset[0]["video"])


def batches(loader, epochs=(0,)) -> list[dict]:
    out = []
    for epoch in epochs:
        loader.dataset.set_epoch(epoch)
        out.extend(loader)
    return out


def test_worker_count_does_not_change_batches(corpus):
    root, records = corpus
    collator = VideoTextCollator(fake_tokenizer)
    runs = {}
    for workers in (0, 2):
        dataset = make_dataset(root, records, caption_mode="random", seed=3)
        loader = build_dataloader(dataset, collator, batch_size=3, shuffle=True, num_workers=workers, seed=11,
                                  drop_last=False, timeout=LOADER_TIMEOUT)
        # Two epochs through the same (persistent) workers: the second must see set_epoch(1).
        runs[workers] = batches(loader, epochs=(0, 1))
    assert len(runs[0]) == len(runs[2]) == 4
    for a, b in zip(runs[0], runs[2]):
        assert a["caption"] == b["caption"] and a["video_id"] == b["video_id"]
        for key in ("video", "frame_mask", "index", "record_index", "input_ids", "attention_mask"):
            assert torch.equal(a[key], b[key]), key
    # ...and epoch 1 really drew new frames and crops (batches 0-1 are epoch 0, batches 2-3 epoch 1).
    clips = [{int(i): v for b in runs[2][e:e + 2] for i, v in zip(b["index"], b["video"])} for e in (0, 2)]
    assert all(not torch.equal(clips[0][i], clips[1][i]) for i in range(4))


def test_collator_pads_and_stacks(corpus):
    root, records = corpus
    dataset = make_dataset(root, records, train=False, caption_mode="first")
    batch = VideoTextCollator(fake_tokenizer)([dataset[0], dataset[3]])
    assert batch["video"].shape == (2, 4, 3, 32, 32) and batch["frame_mask"].shape == (2, 4)
    assert batch["index"].tolist() == [0, 3] and batch["record_index"].tolist() == [0, 3]
    assert batch["caption"] == ["clip 0 caption 0", "clip 3 caption 0"] and batch["video_id"] == ["v0", "v3"]
    assert batch["input_ids"].shape == (2, 16) and batch["skipped"] == []


@pytest.fixture
def gauntlet(corpus):
    """Two good clips among five unusable files, one of each kind."""
    root, records = corpus
    good = (root / "v0.mp4").read_bytes()
    (root / "empty.mp4").write_bytes(b"")
    (root / "truncated.mp4").write_bytes(good[: len(good) // 2])
    (root / "random.mp4").write_bytes(np.random.default_rng(0).bytes(3000))
    (root / "text.avi").write_text("this is not a video\n" * 20)
    bad = ["empty.mp4", "truncated.mp4", "random.mp4", "missing.mp4", "text.avi"]
    records = [records[0]] + [VideoRecord(video_id=name, video=name, captions=["x"]) for name in bad] + [records[1]]
    return root, records, {str(root / name) for name in bad}


@pytest.mark.parametrize("backend", ["pyav", "decord"])
def test_bad_files_are_skipped_counted_and_logged_once(gauntlet, backend, caplog):
    root, records, bad_paths = gauntlet
    dataset = make_dataset(root, records, backend=backend)
    loader = build_dataloader(dataset, VideoTextCollator(fake_tokenizer), batch_size=2, shuffle=False,
                              num_workers=2, seed=0, drop_last=False, timeout=LOADER_TIMEOUT)
    ledger = SkipLedger()
    kept = []
    with caplog.at_level(logging.WARNING, logger="structvl.data"):
        for batch in batches(loader, epochs=(0, 1)):
            ledger.update(batch["skipped"])
            for path, reason in batch["skipped"]:
                assert path in bad_paths and reason
            if batch["video"] is None:  # [random, missing] is a batch with nothing left
                assert len(batch["skipped"]) == 2
                continue
            kept.extend(batch["video_id"])
            for clip in batch["video"]:  # what is returned is real video, not a zero stand-in
                assert clip.abs().amax() > 0
                assert all(0 <= i < 24 for i in indices_of(clip))
    assert kept == ["v0", "v1"] * 2
    summary = ledger.summary()
    assert summary["total"] == 10 and summary["unique_paths"] == 5
    assert sum(summary["per_reason"].values()) == 10
    assert any("not found" in r for r in summary["per_reason"]) and any("0 bytes" in r for r in summary["per_reason"])
    warnings = [r.getMessage() for r in caplog.records if r.name == "structvl.data"]
    assert len(warnings) == 5 and all(any(p in w for p in bad_paths) for w in warnings)
    assert "skipped 10 clips from 5 unreadable videos" in ledger.report()


def test_all_skipped_batch_has_no_video():
    batch = VideoTextCollator(fake_tokenizer)([{"skipped": True, "path": "a.mp4", "reason": "file not found",
                                                "index": 0}])
    assert batch["video"] is None and batch["skipped"] == [("a.mp4", "file not found")]


def test_ledger_without_skips():
    ledger = SkipLedger()
    ledger.update([])
    assert ledger.summary() == {"total": 0, "per_reason": {}, "unique_paths": 0}
    assert ledger.report() == "no videos skipped"


@pytest.mark.parametrize("kwargs,message", [({"sampling": "dense"}, "unknown sampling"),
                                            ({"caption_mode": "all"}, "unknown caption_mode"),
                                            ({"backend": "opencv"}, "unknown video backend"),
                                            ({"sampling": "fps"}, "target_fps")])
def test_invalid_options(corpus, kwargs, message):
    root, records = corpus
    with pytest.raises(ValueError, match=message):
        make_dataset(root, records, **kwargs)
