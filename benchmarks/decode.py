"""Data-loader throughput (clips/s): PyAV vs decord backends, 0/1/2 DataLoader workers, side by side.

Every configuration reads the same clips with the same 8 uniformly sampled frame indices. The reference is
plain decord (`decord.VideoReader(path).get_batch(indices)`: decode only, in the main process; timed first
and last, best kept); each row's ratio is its clips/s over the reference's. The "reader" rows time
`open_video(...).get_frames(...)` alone; the "loader" rows add everything training does per clip: sampling,
resize + centre crop + normalise, collation, and worker processes.

Clips: the structured synthetic corpus (`structvl.lab.synth.generate_corpus`, 64x64, 16 frames) when that
module is present, else ~200 tiny mp4s written here. Both are cached in a temporary directory and reused.

    python benchmarks/decode.py                       # ~200 clips, 3 timed passes each
    python benchmarks/decode.py --clips 500 --repeat 5
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from structvl.data.dataset import VideoTextCollator, VideoTextDataset, build_dataloader
from structvl.data.records import VideoRecord
from structvl.data.sampling import sample_frame_indices
from structvl.data.transforms import VideoTransform
from structvl.data.video import open_video

NUM_FRAMES = 8


def write_clip(path: Path, index: int, num_frames: int = 16, size: int = 64, fps: int = 8) -> None:
    """A small H.264 clip whose frame t is a flat colour (the tests' write_video, re-implemented here so the
    benchmark does not import test code)."""
    import av

    tmp = path.with_name(f".{path.name}.tmp")
    with av.open(str(tmp), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        for t in range(num_frames):
            frame = np.empty((size, size, 3), np.uint8)
            frame[..., 0], frame[..., 1], frame[..., 2] = (8 * t) % 256, (37 * index) % 256, 255 - (8 * t) % 256
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        container.mux(stream.encode())
    os.replace(tmp, path)


def benchmark_clips(data_dir: Path, count: int) -> list[Path]:
    """`count` clips under `data_dir`, generated on the first run."""
    try:
        from structvl.lab.synth import generate_corpus
    except ImportError:
        generate_corpus = None
    if generate_corpus is not None:
        root = data_dir / "synth"
        generate_corpus(root, num_clips=count, seed=0, num_untrimmed=0, workers=2, progress=False)
        clips = sorted((root / "videos").rglob("*.mp4"))[:count]
    else:
        root = data_dir / "tiny"
        root.mkdir(parents=True, exist_ok=True)
        clips = [root / f"clip{i:05d}.mp4" for i in range(count)]
        for i, path in enumerate(clips):
            if not path.exists():
                write_clip(path, i)
    if not clips:
        raise SystemExit(f"no clips found under {root}")
    return clips


def uniform_indices(num_frames: int, fps: float) -> list[int]:
    return sample_frame_indices(num_frames, fps, NUM_FRAMES, "uniform")[0].tolist()


def time_passes(repeat: int, one_pass, *args) -> float:
    """Seconds for `one_pass(*args)`, best of `repeat` after one untimed warm-up pass (file cache, worker
    start-up): the best pass is the one least disturbed by other work on the machine."""
    one_pass(*args)
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        one_pass(*args)
        best = min(best, time.perf_counter() - start)
    return best


def plain_decord(paths: list[Path]) -> None:
    import decord

    for path in paths:
        reader = decord.VideoReader(str(path))
        reader.get_batch(uniform_indices(len(reader), reader.get_avg_fps())).asnumpy()


def reader_only(paths: list[Path], backend: str) -> None:
    for path in paths:
        with open_video(path, backend) as reader:
            reader.get_frames(uniform_indices(reader.num_frames, reader.fps))


def null_tokenizer(texts: list[str]) -> dict:
    """Captions are not what is measured here."""
    ids = torch.ones(len(texts), 4, dtype=torch.long)
    return {"input_ids": ids, "attention_mask": ids}


def make_loader(paths: list[Path], backend: str, workers: int, batch_size: int, size: int):
    records = [VideoRecord(video_id=p.stem, video=str(p), captions=["a clip"]) for p in paths]
    dataset = VideoTextDataset(records, None, num_frames=NUM_FRAMES, sampling="uniform",
                               transform=VideoTransform(size, train=False), backend=backend, caption_mode="first")
    return build_dataloader(dataset, VideoTextCollator(null_tokenizer), batch_size=batch_size, shuffle=False,
                            num_workers=workers, seed=0, drop_last=False, timeout=120)


def loader_pass(loader) -> None:
    for batch in loader:
        if batch["skipped"]:
            raise RuntimeError(f"benchmark clips failed to decode: {batch['skipped'][:3]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=200, help="number of clips per pass")
    parser.add_argument("--repeat", type=int, default=3, help="timed passes per configuration (best is kept)")
    parser.add_argument("--workers", default="0,1,2", help="comma-separated DataLoader worker counts")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--size", type=int, default=64, help="output crop size of the loader's transform")
    parser.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "structvl-bench-decode",
                        help="where the benchmark clips are cached")
    args = parser.parse_args()

    try:
        import decord  # noqa: F401
    except ImportError:
        raise SystemExit("this benchmark compares against decord: pip install decord") from None
    torch.set_num_threads(1)  # loader workers run single-threaded torch too; keep the main process comparable
    paths = benchmark_clips(args.data, args.clips)
    with open_video(paths[0]) as reader:
        shape = f"{reader.width}x{reader.height}, {reader.num_frames} frames"
    print(f"{len(paths)} clips ({shape}), {NUM_FRAMES} frames uniform, best of {args.repeat} passes, "
          f"{os.cpu_count()} CPU cores, torch threads 1")

    rows = [("decord get_batch (reference)", time_passes(args.repeat, plain_decord, paths))]
    for backend in ("pyav", "decord"):
        rows.append((f"{backend} reader only", time_passes(args.repeat, reader_only, paths, backend)))
    for backend in ("pyav", "decord"):
        for workers in (int(w) for w in args.workers.split(",")):
            loader = make_loader(paths, backend, workers, args.batch_size, args.size)
            rows.append((f"{backend} loader, {workers} workers", time_passes(args.repeat, loader_pass, loader)))
            del loader  # shut its persistent workers down before the next configuration starts its own
    # The reference again, last: on a shared machine load drifts during the run; keep its better time.
    rows[0] = (rows[0][0], min(rows[0][1], time_passes(args.repeat, plain_decord, paths)))

    reference = len(paths) / rows[0][1]
    print(f"{'configuration':<32}{'clips/s':>10}{'vs decord get_batch':>22}")
    for name, seconds in rows:
        rate = len(paths) / seconds
        print(f"{name:<32}{rate:>10.1f}{rate / reference:>21.2f}x")


if __name__ == "__main__":
    main()
