"""`structvl data check`: missing, empty and corrupt videos are found and explained; the JSON CLI output."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from structvl.data.check import check_dataset, format_report
from structvl.data.formats.jsonl import write_jsonl
from structvl.data.records import VideoRecord

from helpers import write_video


@pytest.fixture
def broken_dataset(tmp_path):
    """Two good clips (one with two captions), one missing, one zero-byte and one corrupt file, and one
    annotation line whose caption is blank."""
    videos = tmp_path / "videos"
    write_video(videos / "good_a.mp4", num_frames=16, size=(48, 64), fps=8)
    write_video(videos / "good_b.mp4", num_frames=24, size=(32, 48), fps=12)
    (videos / "empty.mp4").write_bytes(b"")
    # An mp4 signature followed by junk: it exists and is non-empty, but no decoder can open it.
    (videos / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypisom" + bytes(range(256)) * 8)
    records = [
        VideoRecord("good_a", "good_a.mp4", captions=["a red cube slides left"]),
        VideoRecord("good_a", "good_a.mp4", captions=["a cube moves"]),
        VideoRecord("good_b", "good_b.mp4", captions=["a blue ball bounces"]),
        VideoRecord("good_b", "good_b.mp4", captions=["   "]),  # skipped by the reader, reported as an issue
        VideoRecord("gone", "gone.mp4", captions=["never downloaded"]),
        VideoRecord("empty", "empty.mp4", captions=["download interrupted"]),
        VideoRecord("corrupt", "corrupt.mp4", captions=["bit rot"]),
    ]
    annotations = tmp_path / "train.jsonl"
    write_jsonl(records, annotations)
    return annotations, videos


def test_report_finds_missing_empty_and_corrupt_videos(broken_dataset):
    annotations, videos = broken_dataset
    report = check_dataset("jsonl", annotations, videos, workers=2)
    assert report["records"] == 6 and report["videos"] == 5
    assert report["captions_per_video"] == {"min": 1, "mean": pytest.approx(6 / 5), "max": 2}
    assert report["missing"] == [{"path": str(videos / "gone.mp4"), "reason": "file not found"}]
    corrupt = {entry["path"]: entry["reason"] for entry in report["corrupt"]}
    assert set(corrupt) == {str(videos / "empty.mp4"), str(videos / "corrupt.mp4")}
    assert corrupt[str(videos / "empty.mp4")] == "empty file (0 bytes)"
    assert corrupt[str(videos / "corrupt.mp4")]  # the decoder's explanation, whatever FFmpeg's words
    assert [(i["line"], i["reason"]) for i in report["annotation_issues"]] == [(4, "empty caption")]
    stats = report["stats"]  # over the two readable clips only
    assert (stats["width"]["min"], stats["width"]["max"]) == (48, 64)
    assert (stats["height"]["min"], stats["height"]["max"]) == (32, 48)
    assert (stats["fps"]["min"], stats["fps"]["max"]) == (pytest.approx(8), pytest.approx(12))
    assert stats["duration"]["max"] == pytest.approx(2.0, abs=0.15)  # 16 frames at 8 fps and 24 at 12 fps
    assert report["ok"] is False

    text = format_report(report)
    assert "5 unique: 2 readable, 1 missing, 2 corrupt" in text
    assert f"{videos / 'gone.mp4'}: file not found" in text
    assert f"{videos / 'corrupt.mp4'}: {corrupt[str(videos / 'corrupt.mp4')]}" in text
    assert text.rstrip().endswith("FAILED: 3 of 5 videos missing or unreadable")


def test_clean_dataset_is_ok(tmp_path):
    write_video(tmp_path / "a.mp4")
    annotations = tmp_path / "val.jsonl"
    write_jsonl([VideoRecord("a", "a.mp4", captions=["a clip"])], annotations)
    report = check_dataset("jsonl", annotations, tmp_path, workers=1)
    assert report["ok"] is True and report["missing"] == report["corrupt"] == []
    assert format_report(report).rstrip().endswith("OK")


def test_cli_prints_json_and_fails(broken_dataset):
    annotations, videos = broken_dataset
    result = subprocess.run(
        [sys.executable, "-m", "structvl", "data", "check", str(annotations), "--format", "jsonl",
         "--videos", str(videos), "--json"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stderr
    report = json.loads(result.stdout)
    assert {"records", "videos", "missing", "corrupt", "ok"} <= set(report)
    assert (report["records"], report["videos"], len(report["missing"]), len(report["corrupt"]), report["ok"]) == (
        6, 5, 1, 2, False)
