"""HowTo100M-style ASR segments (structvl.data.formats.pretrain.read_howto100m): caption.json's
{video_id: {start, end, text}} becomes one clip record per segment, with its window; damage is skipped or named."""

from __future__ import annotations

import json

import pytest

from structvl.data.formats import read_annotations
from structvl.data.records import AnnotationError

CAPTIONS = {
    "vid_A": {"start": [0.0, 3.5, 9], "end": [3.5, 9.0, 12.25],
              "text": ["so first we take the flour", "  and add two eggs ", "then we whisk it"]},
    "vid-B": {"start": [1, 4, 6], "end": [4, 4, 8], "text": ["hello everyone", "um", "   "]},
}


def write(tmp_path, data) -> str:
    path = tmp_path / "caption.json"
    path.write_text(json.dumps(data))
    return path


def test_each_segment_is_a_clip_record_with_its_window(tmp_path):
    issues: list = []
    records = read_annotations("howto100m", write(tmp_path, CAPTIONS), issues)
    assert [(r.video_id, r.video, r.captions, r.start, r.end) for r in records] == [
        ("vid_A", "vid_A.mp4", ["so first we take the flour"], 0.0, 3.5),
        ("vid_A", "vid_A.mp4", ["and add two eggs"], 3.5, 9.0),
        ("vid_A", "vid_A.mp4", ["then we whisk it"], 9.0, 12.25),
        ("vid-B", "vid-B.mp4", ["hello everyone"], 1.0, 4.0),
    ]
    assert [r.meta["segment"] for r in records] == [0, 1, 2, 0]
    # the empty window (4 to 4) and the blank text are skipped and reported, not trained on
    assert sorted(i["reason"] for i in issues) == ["video 'vid-B' segment 1: empty window (4.0 to 4.0)",
                                                   "video 'vid-B' segment 2: empty caption"]
    webm = read_annotations("howto100m", write(tmp_path, CAPTIONS), video_ext="webm")
    assert webm[0].video == "vid_A.webm"


@pytest.mark.parametrize("data,message", [
    ([1, 2], "top level"),
    ({"v": {"start": [0], "end": [1]}}, "video 'v': missing list 'text'"),
    ({"v": {"start": [0, 1], "end": [1], "text": ["a", "b"]}}, "differ in length"),
    ({"v": {"start": ["zero"], "end": [1], "text": ["a"]}}, "'start' is not a number"),
    ({"v": "not an object"}, "video 'v'"),
])
def test_structural_problems_name_the_video(tmp_path, data, message):
    with pytest.raises(AnnotationError, match=message):
        read_annotations("howto100m", write(tmp_path, data))


def test_knowledge_command_reads_asr_captions(tmp_path, capsys):
    from structvl.cli import main

    path = write(tmp_path, CAPTIONS)
    with pytest.raises(SystemExit) as exit_info:
        main(["knowledge", str(path), "--format", "howto100m"])
    assert exit_info.value.code == 0
    assert "4 records, 4 captions (4 unique); parsed 4" in capsys.readouterr().out
