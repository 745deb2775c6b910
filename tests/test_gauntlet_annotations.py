"""Gauntlet (issue 29), bad annotation content: empty captions, clip windows that are not numbers, reversed or
past their video's end, annotation files with nothing usable, and paths that leave the video root. Each is
injected into an otherwise good dataset; the outcome asserted is exact: skipped and counted with its reason
(never trained on, never a crashed loader worker), or refused with the setting that allows it named.
"""

from __future__ import annotations

import json
import math
import os

import pytest
import torch
import webdataset as wds

from structvl.cli import main
from structvl.config import ConfigError, load_config
from structvl.data.check import check_dataset
from structvl.data.dataset import SkipLedger, VideoTextCollator, VideoTextDataset, build_dataloader
from structvl.data.formats import read_annotations
from structvl.data.records import AnnotationError, VideoRecord
from structvl.data.shards import ShardedVideoTextDataset, write_shards
from structvl.data.transforms import VideoTransform
from structvl.engine.pretrain import build_train_data

from helpers import write_video

GOOD = "a red square slides left"


def tokens(texts: list[str]) -> dict:
    ids = torch.ones(len(texts), 4, dtype=torch.long)
    return {"input_ids": ids, "attention_mask": ids}


@pytest.fixture
def root(tmp_path):
    """A video root holding good.mp4 (16 frames at 8 fps: 2 s) and an annotation file of one good record."""
    videos = tmp_path / "videos"
    write_video(videos / "good.mp4", num_frames=16, fps=8)
    return tmp_path


def good_line(**extra) -> str:
    return json.dumps({"video": "good.mp4", "caption": GOOD, **extra})


def dataset_of(records, video_root, **kwargs) -> VideoTextDataset:
    return VideoTextDataset(records, video_root, num_frames=4, transform=VideoTransform(32, train=True),
                            require_captions=True, **kwargs)


def run_loader(dataset, workers: int = 1) -> tuple[list[str], SkipLedger]:
    """Every caption the loader yields over one epoch (in worker processes), and the ledger of skips."""
    loader = build_dataloader(dataset, VideoTextCollator(tokens), batch_size=2, shuffle=False, num_workers=workers,
                              seed=0, drop_last=False, timeout=60)
    captions, ledger = [], SkipLedger()
    for batch in loader:
        ledger.update(batch["skipped"])
        captions += batch["caption"] if batch["video"] is not None else []
    return captions, ledger


# ---------------------------------------------------------------- empty captions
EMPTY_CAPTION_LINES = {
    "empty string": ('{"video": "good.mp4", "caption": ""}', "reader"),
    "whitespace": ('{"video": "good.mp4", "caption": " \\t "}', "reader"),
    "all captions empty": ('{"video": "good.mp4", "captions": ["", "  "]}', "reader"),
    "empty list": ('{"video": "good.mp4", "captions": []}', "dataset"),
    "no caption key": ('{"video": "good.mp4"}', "dataset"),
    "empty captions beside a label": ('{"video": "good.mp4", "captions": [""], "label": "slide"}', "dataset"),
}


@pytest.mark.parametrize("name", EMPTY_CAPTION_LINES)
def test_empty_caption_is_dropped_counted_and_never_trained_on(root, name):
    line, where = EMPTY_CAPTION_LINES[name]
    (root / "train.jsonl").write_text(good_line() + "\n" + line + "\n")
    issues: list = []
    records = read_annotations("jsonl", root / "train.jsonl", issues)
    dataset = dataset_of(records, root / "videos")
    if where == "reader":  # the reader skips it with its line and reason
        assert len(records) == 1 and [i["line"] for i in issues] == [2] * len(issues) and issues
        assert all(i["reason"] == "empty caption" for i in issues)
    else:  # the record has no caption to pair with its clip: the dataset leaves it out and counts it
        assert len(records) == 2 and dict(dataset.dropped) == {"no caption": 1}
    assert len(dataset) == 1
    captions, ledger = run_loader(dataset)
    assert captions == [GOOD] and ledger.total == 0


def test_empty_captions_of_a_record_are_never_drawn(root):
    # Records built in code may hold empty strings beside real captions; neither mode ever yields one.
    record = VideoRecord("good", "good.mp4", captions=["", GOOD, "   "])
    for mode in ("random", "expand", "first"):
        dataset = VideoTextDataset([record] * 3, root / "videos", num_frames=4, caption_mode=mode,
                                   transform=VideoTransform(32, train=True), require_captions=True)
        assert {dataset[i]["caption"] for i in range(len(dataset))} == {GOOD}, mode


def test_empty_caption_in_a_shard_is_skipped_and_counted(root):
    urls = write_shards([VideoRecord("good", "good.mp4", captions=[GOOD]), VideoRecord("bare", "good.mp4")],
                        root / "videos", str(root / "shards" / "s-%03d.tar"))
    dataset = ShardedVideoTextDataset(urls, num_frames=4, transform=VideoTransform(32, train=True),
                                      require_captions=True, shuffle_shards=False)
    captions, ledger = run_loader(dataset)
    assert captions == [GOOD] and ledger.summary()["per_reason"] == {"no caption": 1}


# ---------------------------------------------------------------- clip windows
# (start, end, reason); the video is 2 s long.
BAD_WINDOWS = {
    "start NaN": (math.nan, 1.0, "window start is not a finite number"),
    "end NaN": (0.0, math.nan, "window end is not a finite number"),
    "start inf": (math.inf, None, "window start is not a finite number"),
    "end -inf": (None, -math.inf, "window end is not a finite number"),
    "negative start": (-1.0, 1.0, "window start is negative"),
    "end before start": (1.5, 0.5, "window ends before it starts"),
    "start past the end": (5.0, 6.0, "window starts past the video's end"),
    "start at the end": (2.0, None, "window starts past the video's end"),
}
NEEDS_VIDEO = {"start past the end", "start at the end"}  # only the decoded duration shows these


@pytest.mark.parametrize("name", BAD_WINDOWS)
def test_bad_window_is_caught_by_data_check(root, name):
    start, end, reason = BAD_WINDOWS[name]
    # json writes NaN and Infinity literally, as Python's json (and so many annotation tools) do.
    (root / "train.jsonl").write_text(good_line() + "\n" + good_line(start=start, end=end) + "\n")
    report = check_dataset("jsonl", root / "train.jsonl", root / "videos")
    assert report["usable_records"] == 1 and report["ok"]  # one bad record: skipped, the rest is usable
    [issue] = report["annotation_issues"]
    assert issue["reason"].startswith(reason) if name not in NEEDS_VIDEO else reason in issue["reason"]
    assert issue["line"] == (None if name in NEEDS_VIDEO else 2)
    assert report["records"] == (2 if name in NEEDS_VIDEO else 1)


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("name", BAD_WINDOWS)
def test_bad_window_is_skipped_and_counted_by_the_dataset_never_crashing_a_worker(root, name, workers):
    start, end, reason = BAD_WINDOWS[name]
    records = [VideoRecord("good", "good.mp4", captions=[GOOD]),
               VideoRecord("bad", "good.mp4", captions=["the bad one"], start=start, end=end)]
    dataset = dataset_of(records, root / "videos")
    captions, ledger = run_loader(dataset, workers)
    assert captions == [GOOD]
    if name in NEEDS_VIDEO:  # found when the item's video is opened: a skip with its reason
        assert dict(dataset.dropped) == {} and ledger.summary()["per_reason"] == {reason: 1}
    else:  # found from the record alone: never an item
        assert dict(dataset.dropped) == {reason: 1} and len(dataset) == 1 and ledger.total == 0


@pytest.mark.parametrize("name", BAD_WINDOWS)
def test_bad_window_in_a_shard_is_skipped_and_counted(root, name):
    start, end, reason = BAD_WINDOWS[name]
    urls = write_shards([VideoRecord("good", "good.mp4", captions=[GOOD]),
                         VideoRecord("bad", "good.mp4", captions=["the bad one"], start=start, end=end)],
                        root / "videos", str(root / "shards" / "s-%03d.tar"))
    dataset = ShardedVideoTextDataset(urls, num_frames=4, transform=VideoTransform(32, train=True),
                                      shuffle_shards=False)
    captions, ledger = run_loader(dataset, workers=1)
    assert captions == [GOOD] and ledger.summary()["per_reason"] == {reason: 1}


def test_activitynet_timestamps_out_of_order_or_past_the_duration_are_skipped(tmp_path):
    path = tmp_path / "train.json"
    path.write_text(json.dumps({"v_a": {"duration": 10.0, "timestamps": [[1, 3], [5, 2], [12, 14], [4, 20]],
                                        "sentences": ["one", "two", "three", "four"]}}))
    issues: list = []
    records = read_annotations("activitynet", path, issues)
    assert [(r.start, r.end) for r in records] == [(1, 3), (4, 20)]  # an end past the video is clamped later
    assert [i["reason"].split(": ")[1].split(" (")[0] for i in issues] == \
        ["window ends before it starts", "window starts past the video's end"]


# ---------------------------------------------------------------- nothing usable
NOTHING_USABLE = {
    "empty file": "",
    "blank lines": "\n\n  \n",
    "only empty captions": '{"video": "good.mp4", "caption": ""}\n{"video": "good.mp4", "caption": " "}\n',
    "only NaN windows": '{"video": "good.mp4", "caption": "x", "start": NaN}\n',
    "only windows past the end": '{"video": "good.mp4", "caption": "x", "start": 9}\n',
}


@pytest.mark.parametrize("name", NOTHING_USABLE)
def test_data_check_fails_when_nothing_is_usable(root, name, capsys):
    (root / "train.jsonl").write_text(NOTHING_USABLE[name])
    report = check_dataset("jsonl", root / "train.jsonl", root / "videos")
    assert report["usable_records"] == 0 and not report["ok"]
    with pytest.raises(SystemExit) as exit_:
        main(["data", "check", str(root / "train.jsonl"), "--format", "jsonl", "--videos", str(root / "videos")])
    assert exit_.value.code == 1
    assert capsys.readouterr().out.rstrip().endswith(f"FAILED: no usable record among {report['records']}")


@pytest.mark.parametrize("name", ["empty file", "only empty captions", "only NaN windows"])
def test_pretraining_refuses_a_file_with_nothing_usable(root, name):
    (root / "train.jsonl").write_text(NOTHING_USABLE[name])
    cfg = load_config("demo", [f"data.root={root}", "data.videos=" + str(root / "videos")])
    with pytest.raises(ConfigError, match="data.train.*no usable records"):
        build_train_data(cfg, tokenizer=tokens)


# ---------------------------------------------------------------- paths outside the video root
@pytest.fixture
def outside(root):
    """A readable video outside the root, and a symlink inside the root that leads to it."""
    elsewhere = root / "elsewhere"
    write_video(elsewhere / "secret.mp4", num_frames=16, fps=8)
    os.symlink(elsewhere / "secret.mp4", root / "videos" / "link.mp4")
    (root / "videos" / "sub").mkdir()
    return elsewhere / "secret.mp4"


ESCAPES = {  # video path as the annotation writes it -> whether the check needs the file system
    "absolute path": (lambda root, secret: str(secret), False),
    "parent": (lambda root, secret: "../elsewhere/secret.mp4", False),
    "parent inside a folder": (lambda root, secret: "sub/../../elsewhere/secret.mp4", False),
    "symlink leading out": (lambda root, secret: "link.mp4", True),
}


@pytest.mark.parametrize("name", ESCAPES)
def test_path_outside_the_root_is_refused_unless_allowed(root, outside, name):
    make, needs_fs = ESCAPES[name]
    records = [VideoRecord("good", "good.mp4", captions=[GOOD]), VideoRecord("out", make(root, outside),
                                                                               captions=["outside"])]
    if needs_fs:  # only opening the file shows where it leads: that item is skipped and counted
        captions, ledger = run_loader(dataset_of(records, root / "videos"))
        assert captions == [GOOD]
        [(reason, count)] = ledger.summary()["per_reason"].items()
        assert count == 1 and "outside the video root" in reason and str(outside) in reason
    else:  # the annotation alone says so: refused before any work, naming the setting that allows it
        with pytest.raises(AnnotationError, match="outside the video root.*data.allow_outside_root"):
            dataset_of(records, root / "videos")
    captions, ledger = run_loader(dataset_of(records, root / "videos", allow_outside_root=True))
    assert sorted(captions) == sorted([GOOD, "outside"]) and ledger.total == 0


@pytest.mark.parametrize("name", ESCAPES)
def test_data_check_and_shard_refuse_paths_outside_the_root(root, outside, name, capsys):
    make = ESCAPES[name][0]
    lines = [good_line(), json.dumps({"video": make(root, outside), "caption": "outside"})]
    (root / "train.jsonl").write_text("\n".join(lines) + "\n")
    report = check_dataset("jsonl", root / "train.jsonl", root / "videos")
    assert not report["ok"] and report["usable_records"] == 1 and report["corrupt"] == report["missing"] == []
    [entry] = report["outside_root"]
    assert "outside the video root" in entry["reason"]
    assert report["stats"]["duration"]["max"] == pytest.approx(2.0)  # the file outside was not opened
    assert check_dataset("jsonl", root / "train.jsonl", root / "videos", allow_outside_root=True)["ok"]
    args = ["data", "check", str(root / "train.jsonl"), "--format", "jsonl", "--videos", str(root / "videos")]
    with pytest.raises(SystemExit) as exit_:
        main(args)
    assert exit_.value.code == 1 and "1 outside the video root" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_:
        main(args + ["--allow-outside-root"])
    assert exit_.value.code == 0

    records = read_annotations("jsonl", root / "train.jsonl")
    left_out: list = []
    urls = write_shards(records, root / "videos", str(root / "s" / "s-%03d.tar"), missing=left_out)
    assert [m["video_id"] for m in left_out] == ["secret" if name != "symlink leading out" else "link"]
    assert "outside the video root" in left_out[0]["reason"]
    assert sum(1 for _ in wds.WebDataset(urls, shardshuffle=False)) == 1  # the file outside was not packed


def test_paths_that_stay_inside_the_root_are_read(root):
    # '..' that comes back, an absolute path under the root, and a root that is itself a symlink are inside.
    os.symlink(root / "videos", root / "linked_root")
    (root / "videos" / "sub").mkdir()
    for video_root, video in ((root / "videos", "sub/../good.mp4"),
                              (root / "videos", str(root / "videos" / "good.mp4")),
                              (root / "linked_root", "good.mp4")):
        captions, ledger = run_loader(dataset_of([VideoRecord("g", video, captions=[GOOD])], video_root))
        assert captions == [GOOD] and ledger.total == 0, video


def test_pretraining_refuses_a_path_outside_the_root_unless_allowed(root, outside):
    (root / "train.jsonl").write_text(good_line() + "\n" + json.dumps({"video": "../elsewhere/secret.mp4",
                                                                         "caption": "outside"}) + "\n")
    overrides = [f"data.root={root}", "data.videos=" + str(root / "videos")]
    with pytest.raises(AnnotationError, match="data.allow_outside_root"):
        build_train_data(load_config("demo", overrides), tokenizer=tokens)
    dataset, _ = build_train_data(load_config("demo", overrides + ["data.allow_outside_root=true"]), tokenizer=tokens)
    assert len(dataset) == 2
