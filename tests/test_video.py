"""Video reading: metadata, seek correctness against a full decode, backend agreement, containers, bad files."""

from __future__ import annotations

import av
import numpy as np
import pytest
import torch

from structvl.data.video import VideoDecodeError, open_video, probe_video

from helpers import frame_index_of, write_video

BACKENDS = ["pyav", "decord"]


def has_encoder(name: str) -> bool:
    try:
        av.codec.Codec(name, "w")
    except Exception:
        return False
    return True


def decode_all(path) -> np.ndarray:
    """Every frame in stream order, decoded sequentially: the reference for seeking readers."""
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


@pytest.mark.parametrize("backend", BACKENDS)
def test_metadata(make_video, backend):
    path = make_video("clip.mp4", num_frames=20, size=(48, 64), fps=8)
    with open_video(path, backend) as reader:
        assert (reader.num_frames, reader.fps, reader.width, reader.height) == (20, 8.0, 64, 48)
        assert reader.duration == pytest.approx(2.5)
        assert reader.codec == "h264"


@pytest.mark.parametrize("backend", BACKENDS)
def test_seeking_matches_sequential_decode(make_video, backend):
    # Keyframes every 4 frames: fetching a frame means seeking to a keyframe and decoding forward, so an
    # off-by-one in the pts -> index mapping or a stale decoder after a seek shows up as a wrong frame.
    path = make_video("gop4.mp4", num_frames=48, keyint=4)
    reference = decode_all(path)
    rng = np.random.default_rng(0)
    index_sets = [[0], [47], [47, 0], [5, 5, 5], [3, 40, 3, 7, 46, 46, 1]]
    index_sets += [rng.integers(0, 48, rng.integers(1, 12)).tolist() for _ in range(20)]
    with open_video(path, backend) as reader:  # one reader for all sets: seeks back and forth
        for indices in index_sets:
            frames = reader.get_frames(indices)
            assert frames.dtype == np.uint8 and frames.shape == (len(indices), 48, 64, 3)
            np.testing.assert_array_equal(frames, reference[indices], err_msg=f"indices {indices}")


def test_pyav_seeks_instead_of_decoding_everything(make_video):
    path = make_video("long.mp4", num_frames=96, keyint=8)
    with open_video(path) as reader:
        reader.get_frames([90])
        assert reader.frames_decoded <= 16  # from the keyframe before 90, not from frame 0
    with open_video(path) as reader:
        reader.get_frames([2, 50, 93])
        assert reader.frames_decoded < 60



@pytest.mark.parametrize("name", ["long.mp4", "long.mkv"])
def test_pyav_decodes_on_within_a_gop_instead_of_seeking_back_to_its_keyframe(make_video, name):
    # Frames 2, 13 and 26 of the first 32-frame GOP: one run from its keyframe (27 frames), not a seek back to
    # frame 0 for 13 (3 + 14 + 13: a gap of 11 frames looked longer than the GOP decoded so far); the demuxer's
    # index (every frame in mp4, the keyframes in mkv) says where a seek lands. Then frame 40, in the next GOP: a
    # seek to its keyframe (9 frames). The frames are the right ones either way (write_video's index wraps at 32).
    path = make_video(name, num_frames=64, keyint=32)
    with open_video(path) as reader:
        frames = reader.get_frames([2, 13, 26])
        assert reader.frames_decoded <= 27, reader.frames_decoded
        frames = np.concatenate([frames, reader.get_frames([40])])
        assert reader.frames_decoded <= 27 + 9, reader.frames_decoded
    assert [frame_index_of(f) for f in frames] == [2, 13, 26, 40 % 32]

def test_backends_agree(make_video):
    path = make_video("clip.mp4", num_frames=24, keyint=6)
    indices = [23, 0, 11, 11, 5]
    with open_video(path, "pyav") as a, open_video(path, "decord") as b:
        np.testing.assert_allclose(a.get_frames(indices).astype(int), b.get_frames(indices).astype(int), atol=2)


@pytest.mark.parametrize("name,codec", [("clip.webm", "libvpx-vp9"), ("clip.mkv", "libx264"),
                                        ("clip.avi", "mpeg4")])
@pytest.mark.parametrize("backend", BACKENDS)
def test_containers(tmp_path, name, codec, backend):
    if not has_encoder(codec):
        pytest.skip(f"this PyAV build has no {codec} encoder")
    path = tmp_path / name
    write_video(path, num_frames=24, fps=8, codec=codec, keyint=4)
    indices = [20, 3, 3, 17, 0, 23]
    with open_video(path, backend) as reader:
        assert reader.num_frames == 24  # webm/mkv carry no count: measured from the last timestamps
        assert reader.fps == pytest.approx(8.0)
        frames = reader.get_frames(indices)
    # Compared with a sequential decode rather than frame_index_of: mpeg4 at this size is too noisy for it.
    np.testing.assert_array_equal(frames, decode_all(path)[indices])


@pytest.mark.parametrize("backend", BACKENDS)
def test_truncated_file_returns_last_decodable_frame(tmp_path, backend):
    # mkv keeps its header at the front, so a cut-off file still opens, and its header duration promises
    # frames that are not there.
    full = tmp_path / "full.mkv"
    write_video(full, num_frames=32, codec="libx264", keyint=4)
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size * 3 // 4])
    decodable = decode_all(cut)
    assert 6 < len(decodable) < 32
    with open_video(cut, backend) as reader:
        # Both count the packets that are there (mkv has no count): decord indexes them, PyAV reads the last
        # timestamps, where a packet cut short still counts as a frame.
        assert len(decodable) <= reader.num_frames <= len(decodable) + (backend == "pyav")
        frames = reader.get_frames([0, 31, 5, 40])
    np.testing.assert_array_equal(frames[[0, 2]], decodable[[0, 5]])
    for frame in frames[[1, 3]]:  # beyond the data: the last real frame, never a made-up black one
        np.testing.assert_array_equal(frame, decodable[-1])


def test_out_of_range_indices_are_clamped(make_video):
    path = make_video("clip.mp4", num_frames=10)
    with open_video(path) as reader:
        assert [frame_index_of(f) for f in reader.get_frames([-3, 9, 100])] == [0, 9, 9]
        assert reader.get_frames([]).shape == (0, 48, 64, 3)


@pytest.mark.parametrize("backend", BACKENDS)
def test_probe(make_video, backend):
    info = probe_video(make_video("clip.mp4", num_frames=16, size=(32, 64), fps=4), backend)
    assert info == {"num_frames": 16, "fps": 4.0, "duration": pytest.approx(4.0), "width": 64, "height": 32,
                    "codec": "h264"}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind,reason", [("missing", "not found"), ("empty", "0 bytes"),
                                         ("random", ""), ("text", ""), ("truncated_mp4", "")])
def test_unusable_files_raise_with_reason(tmp_path, make_video, backend, kind, reason):
    path = tmp_path / ("bad.avi" if kind == "text" else "bad.mp4")
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "random":
        path.write_bytes(np.random.default_rng(0).bytes(4096))
    elif kind == "text":
        path.write_text("not a video\n" * 100)
    elif kind == "truncated_mp4":  # mp4 writes its index (moov) last: half a file has none
        good = make_video("good.mp4", num_frames=16)
        path.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(VideoDecodeError) as caught:
        probe_video(path, backend)
    assert str(path) in str(caught.value) and reason in caught.value.reason and caught.value.reason


def test_decord_narrow_frame_bug_is_a_clear_error(make_video):
    # decord 0.6 cannot convert 48-pixel-wide frames; that must be a VideoDecodeError naming the way out,
    # not a C++ stack trace (and PyAV reads the same file fine).
    path = make_video("narrow.mp4", num_frames=4, size=(32, 48))
    with pytest.raises(VideoDecodeError, match="use backend 'pyav'"):
        probe_video(path, "decord")
    assert probe_video(path, "pyav")["width"] == 48


def test_no_video_stream(tmp_path):
    path = tmp_path / "audio_only.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 8000
        for packet in stream.encode(frame):
            container.mux(packet)
        container.mux(stream.encode())
    with pytest.raises(VideoDecodeError, match="no video stream"):
        open_video(path)


def test_unknown_backend(make_video):
    with pytest.raises(ValueError, match="unknown video backend"):
        open_video(make_video(), backend="opencv")


def _reader_threads(path: str) -> tuple[int, int]:
    """(threads asked for, threads FFmpeg's codec holds after decoding) of a PyAV reader opened with the default."""
    with open_video(path, "pyav") as reader:
        reader.get_frames([0, 3])
        return reader.threads, reader._stream.codec_context.thread_count


class _ThreadsInWorker(torch.utils.data.Dataset):
    def __init__(self, path):
        self.path = str(path)

    def __len__(self) -> int:
        return 1

    def __getitem__(self, i):
        return torch.tensor(_reader_threads(self.path))


@pytest.mark.parametrize("backend", BACKENDS)
def test_decoding_threads_reach_the_decoder_and_leave_the_frames_as_they_are(make_video, backend, monkeypatch):
    path = make_video("clip.mp4", num_frames=24, size=(48, 64), fps=8)
    asked = []
    if backend == "decord":  # decord does not say how many threads it runs: record what it is asked for
        decord = pytest.importorskip("decord")
        real = decord.VideoReader
        monkeypatch.setattr(decord, "VideoReader",
                            lambda *a, **kw: asked.append(kw.get("num_threads")) or real(*a, **kw))
    frames = {}
    for threads in (1, 2, 0):
        with open_video(path, backend, threads=threads) as reader:
            frames[threads] = reader.get_frames([0, 5, 11, 23])
            if backend == "pyav" and threads:  # FFmpeg's codec holds the count asked for once it decodes
                assert reader._stream.codec_context.thread_count == threads
    assert backend == "pyav" or asked == [1, 2, 0]
    assert np.array_equal(frames[1], frames[2]) and np.array_equal(frames[1], frames[0])


def test_a_reader_in_a_loader_worker_or_of_small_frames_decodes_on_one_thread(make_video):
    # Default threads: FFmpeg's choice in the main process, one thread in a DataLoader worker (the workers are
    # the loader's parallelism) and for frames below 320x240 (a pool per file costs more than they take); FFmpeg's
    # codec then holds 1.
    large = make_video("large.mp4", num_frames=8, size=(240, 320), fps=8)
    small = make_video("small.mp4", num_frames=8, size=(48, 64), fps=8)
    assert _reader_threads(str(large))[0] == 0
    assert _reader_threads(str(small)) == (1, 1)
    loader = torch.utils.data.DataLoader(_ThreadsInWorker(large), batch_size=None, num_workers=1)
    assert next(iter(loader)).tolist() == [1, 1]
