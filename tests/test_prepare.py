"""`data prepare`: re-encoding to a lower resolution and frame rate, resumability, failures, source safety."""

from __future__ import annotations

import hashlib

import av
import pytest

from structvl.data.prepare import output_size, partial_path, prepare_videos
from structvl.data.video import open_video, probe_video

from helpers import frame_index_of, write_video


def snapshot(directory) -> dict:
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.fixture
def sources(tmp_path):
    src = tmp_path / "raw"
    write_video(src / "a.mp4", num_frames=32, size=(96, 128), fps=16, keyint=32)
    write_video(src / "nested" / "b.mkv", num_frames=32, size=(128, 96), fps=16, keyint=32)
    return src


def test_reencodes_smaller_and_slower_with_dense_keyframes(sources, tmp_path):
    out = tmp_path / "prepared"
    before = snapshot(sources)
    summary = prepare_videos(sources, out, short_side=48, fps=8, workers=2)
    assert (summary["done"], summary["skipped_existing"], summary["failed"]) == (2, 0, [])
    assert snapshot(sources) == before  # the source tree is untouched

    a, b = probe_video(out / "a.mp4"), probe_video(out / "nested" / "b.mp4")
    assert (a["width"], a["height"], b["width"], b["height"]) == (64, 48, 48, 64)
    for info in (a, b):
        assert info["codec"] == "h264" and info["fps"] == 8.0 and info["num_frames"] == 16
        assert info["duration"] == pytest.approx(2.0)
    # Frame rate halved by dropping every other frame, timing kept: output frame k is source frame 2k.
    with open_video(out / "a.mp4") as reader:
        assert [frame_index_of(f) for f in reader.get_frames(range(16))] == list(range(0, 32, 2))
    with av.open(str(out / "a.mp4")) as container:
        keyframes = [i for i, f in enumerate(container.decode(video=0)) if f.key_frame]
    assert keyframes[:2] == [0, 8]  # one keyframe per second at 8 fps


def test_second_run_skips_finished_files(sources, tmp_path):
    out = tmp_path / "prepared"
    prepare_videos(sources, out, short_side=48, fps=8, workers=1)
    finished = snapshot(out)
    summary = prepare_videos(sources, out, short_side=48, fps=8, workers=2)
    assert (summary["done"], summary["skipped_existing"]) == (0, 2)
    assert snapshot(out) == finished


def test_leftover_partial_file_is_redone(sources, tmp_path):
    # A run killed mid-file leaves only the hidden .part file; the final name appears on completion.
    out = tmp_path / "prepared"
    part = partial_path(out / "a.mp4")
    part.parent.mkdir(parents=True)
    part.write_bytes(b"half an mp4")
    summary = prepare_videos(sources, out, short_side=48, fps=8, workers=1)
    assert summary["done"] == 2 and not part.exists()
    assert probe_video(out / "a.mp4")["num_frames"] == 16


def test_corrupt_sources_are_reported(sources, tmp_path):
    (sources / "broken.mp4").write_bytes(b"\x00" * 2000)
    (sources / "empty.avi").write_bytes(b"")
    summary = prepare_videos(sources, tmp_path / "prepared", short_side=48, fps=8, workers=2)
    assert summary["done"] == 2
    failed = {f["path"].rsplit("/", 1)[-1]: f["reason"] for f in summary["failed"]}
    assert set(failed) == {"broken.mp4", "empty.avi"} and "0 bytes" in failed["empty.avi"]
    assert not (tmp_path / "prepared" / "broken.mp4").exists()


def test_name_collisions_are_reported_not_overwritten(sources, tmp_path):
    write_video(sources / "a.webm", num_frames=8, codec="libvpx-vp9")  # would also become a.mp4
    summary = prepare_videos(sources, tmp_path / "prepared", short_side=48, fps=8, workers=1)
    assert summary["done"] == 2
    assert [f["path"].rsplit("/", 1)[-1] for f in summary["failed"]] == ["a.webm"]


def test_refuses_to_write_inside_the_source(sources):
    with pytest.raises(ValueError, match="outside the source"):
        prepare_videos(sources, sources / "prepared")
    with pytest.raises(ValueError, match="outside the source"):
        prepare_videos(sources, sources)


def test_output_size_keeps_aspect_and_never_upscales():
    assert output_size(1920, 1080, 256) == (456, 256)
    assert output_size(1080, 1920, 256) == (256, 456)
    assert output_size(320, 240, 256) == (320, 240)
    assert output_size(333, 201, 100) == (166, 100)  # even dimensions for yuv420p
