"""Image-text pairs (structvl.data.formats.pretrain.read_image_text, structvl.data.images) as one-frame clips, from
CSV/TSV files and from webdataset shards, and `data.mix` (structvl.data.mix): every batch from one source, the
sources in the configured ratio over many batches, resumed exactly."""

from __future__ import annotations

import collections
import io
import json

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import DataLoader

from structvl.config import ConfigError, load_config
from structvl.data.dataset import VideoTextCollator, VideoTextDataset
from structvl.data.formats import read_annotations
from structvl.data.images import ImageDecodeError, decode_image, image_clip
from structvl.data.mix import MixedShards, MixSampler
from structvl.data.records import AnnotationError, VideoRecord
from structvl.data.shards import ShardedVideoTextDataset, write_shards
from structvl.data.transforms import VideoTransform

from helpers import TINY, write_video

IDENTITY = {"mean": (0.0, 0.0, 0.0), "std": (1 / 255, 1 / 255, 1 / 255)}


def image_bytes(colour, fmt="JPEG", size=(20, 16)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format=fmt)
    return buffer.getvalue()


def fake_tokenizer(texts):
    ids = torch.zeros(len(texts), 1, dtype=torch.long)
    return {"input_ids": ids, "attention_mask": ids}


# ---------------------------------------------------------------- readers
def test_open_clip_csv_in_both_separators(tmp_path):
    (tmp_path / "tab.tsv").write_text("filepath\ttitle\nimgs/a.jpg\ta red bus\nimgs/b.png\t  \nimgs/c.jpg\ta dog\n")
    issues: list = []
    records = read_annotations("imagetext", tmp_path / "tab.tsv", issues)
    assert [(r.video_id, r.video, r.captions) for r in records] == [
        ("imgs/a.jpg", "imgs/a.jpg", ["a red bus"]), ("imgs/c.jpg", "imgs/c.jpg", ["a dog"])]
    assert [i["line"] for i in issues] == [3]  # the blank caption is skipped and reported
    (tmp_path / "comma.csv").write_text('image,text\nx.jpg,"a cat, sleeping"\n')
    records = read_annotations("imagetext", tmp_path / "comma.csv", image_key="image", caption_key="text")
    assert records[0].captions == ["a cat, sleeping"] and records[0].video == "x.jpg"
    with pytest.raises(AnnotationError, match="missing required column 'title'"):
        (tmp_path / "half.csv").write_text("filepath,caption\nx.jpg,a\n")
        read_annotations("imagetext", tmp_path / "half.csv")


def test_cc3m_tsv_of_caption_and_url(tmp_path):
    (tmp_path / "cc3m.tsv").write_text("a man rides a horse\thttp://img.example/1.jpg\n"
                                       "sunset over the sea\thttps://img.example/2.jpg\n")
    records = read_annotations("imagetext", tmp_path / "cc3m.tsv")
    assert [(r.video_id, r.captions, r.video) for r in records] == [
        ("000000000", ["a man rides a horse"], "http://img.example/1.jpg"),
        ("000000001", ["sunset over the sea"], "https://img.example/2.jpg")]
    (tmp_path / "bad.tsv").write_text("just one column\n")
    with pytest.raises(AnnotationError, match="line 1"):
        read_annotations("imagetext", tmp_path / "bad.tsv")


# ---------------------------------------------------------------- one-frame clips
def test_an_image_is_one_valid_frame_repeated_into_masked_positions():
    image = decode_image(image_bytes((200, 10, 10), "PNG"))
    assert image.shape == (16, 20, 3) and image.dtype == np.uint8 and tuple(image[0, 0]) == (200, 10, 10)
    frames, valid = image_clip(image, 4)
    assert frames.shape == (4, 16, 20, 3) and (frames == image).all()
    assert valid.tolist() == [True, False, False, False]
    for data in (b"", b"not an image"):
        with pytest.raises(ImageDecodeError):
            decode_image(data)


def test_image_records_load_as_clips_and_bad_images_are_skipped(tmp_path):
    (tmp_path / "a.jpg").write_bytes(image_bytes((0, 0, 255)))
    (tmp_path / "bad.png").write_bytes(b"\x89PNG broken")
    records = [VideoRecord(video_id=name, video=name, captions=["x"]) for name in ("a.jpg", "bad.png", "gone.jpg")]
    dataset = VideoTextDataset(records, tmp_path, num_frames=4, transform=VideoTransform(8, train=True, **IDENTITY))
    item = dataset[0]
    assert item["video"].shape == (4, 3, 8, 8) and item["frame_mask"].tolist() == [True, False, False, False]
    assert dataset[1]["skipped"] and "not a readable image" in dataset[1]["reason"]
    assert dataset[2]["skipped"] and dataset[2]["reason"] == "file not found"


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """Video shards (12 clips) and image-text shards (jpg/png + txt, 12 images), in webdataset's layout."""
    root = tmp_path_factory.mktemp("mix")
    records = []
    for i in range(12):
        write_video(root / "videos" / f"v{i}.mp4", num_frames=6, size=(16, 16), fps=8)
        records.append(VideoRecord(video_id=f"vid{i}", video=f"v{i}.mp4", captions=[f"video {i}"]))
    videos = write_shards(records, root / "videos", str(root / "video-%03d.tar"), max_count=3)
    images = []
    for shard in range(4):
        images.append(str(root / f"image-{shard:03d}.tar"))
        with wds.TarWriter(images[-1]) as writer:
            for j in range(3):
                i = 3 * shard + j
                member = "png" if i % 2 else "jpg"
                writer.write({"__key__": f"img{i:04d}", member: image_bytes((20 * i, 0, 0), "PNG" if i % 2 else "JPEG"),
                              "txt": f"image {i}".encode()})
    return videos, images


def sharded(urls, **kwargs):
    return ShardedVideoTextDataset(urls, num_frames=4, transform=VideoTransform(8, train=True, **IDENTITY), **kwargs)


def test_image_text_shards_read_as_one_frame_clips(sources):
    _, images = sources
    items = list(sharded(images))
    assert len(items) == 12 and all(item["frame_mask"].tolist() == [True, False, False, False] for item in items)
    assert sorted(item["caption"] for item in items) == sorted(f"image {i}" for i in range(12))


# ---------------------------------------------------------------- data.mix
def test_mix_sampler_keeps_the_ratio_and_one_source_per_global_batch():
    sizes, weights, batch = [300, 50], [3.0, 1.0], 4
    ranks = [MixSampler(sizes, weights, batch, num_replicas=2, rank=r, seed=7) for r in range(2)]
    counts = collections.Counter()
    for epoch in range(40):
        per_rank = []
        for sampler in ranks:
            sampler.set_epoch(epoch)
            per_rank.append(sampler.indices())
        for step in range(ranks[0].steps):
            blocks = [indices[step * batch:(step + 1) * batch] for indices in per_rank]
            sources = {int(i >= sizes[0]) for block in blocks for i in block}
            assert len(sources) == 1  # both ranks' batches of a step come from one source
            assert len(set(blocks[0]) | set(blocks[1])) == 2 * batch  # and hold different items
            counts[sources.pop()] += 1
    share = counts[0] / sum(counts.values())
    assert abs(share - 0.75) < 0.03, share
    # the small source repeats within an epoch (its weight asks for more than it has), and resume is exact
    ranks[0].set_position(3, 8)
    assert list(ranks[0]) == (ranks[0].set_epoch(3) or ranks[0].indices())[8:]


def test_mixed_shards_give_one_source_per_batch_and_resume_exactly(sources):
    videos, images = sources

    def read(position=None):
        mixed = MixedShards([sharded(videos, seed=1), sharded(images, seed=1)], [1.0, 1.0], ["video", "image"],
                            batch_size=2, seed=3)
        if position is not None:
            mixed.set_position(0, position, 2)
        loader = DataLoader(mixed, batch_size=2, num_workers=2, collate_fn=VideoTextCollator(fake_tokenizer),
                            timeout=60)
        return [(tuple(b["caption"]), int(b["frame_mask"].sum())) for b in loader]

    full = read()
    assert len(full) >= 6
    for captions, valid in full:  # a batch of images has one valid frame per clip, a batch of videos four
        assert {c.split()[0] for c in captions} == {"image" if valid == 2 else "video"}
    assert {valid for _, valid in full} == {2, 8}
    for k in range(1, 5):
        assert read(2 * k) == full[k:], k


def test_mix_config_errors_are_one_line():
    for overrides, message in [
        (["data.mix=[{train: a.jsonl, shards: b.tar}]"], r"data.mix\[0\]': give exactly one"),
        (["data.mix=[{train: a.jsonl, weight: 0}]"], r"data.mix\[0\].weight"),
        (["data.mix=[{train: a.csv, format: images}]"], r"data.mix\[0\].format"),
        (["data.mix=[{train: a.jsonl}, {shards: b.tar}]"], "mixes annotation files and shards"),
        (["data.mix=[{train: a.jsonl}]", "data.shards=b.tar"], "'data.mix' and 'data.shards'"),
    ]:
        with pytest.raises(ConfigError, match=message) as error:
            load_config("demo", overrides)
        assert "\n" not in str(error.value)
    with pytest.raises(ConfigError, match="'data.mix' and 'clop.kcl_batch_sampler'"):
        load_config("clop", ["data.mix=[{train: a.jsonl}]"])


def test_pretraining_on_a_mix_of_videos_and_images(tmp_path, one_thread):
    from structvl.engine.pretrain import run_pretraining

    root = tmp_path / "data"
    videos = []
    for i in range(8):
        write_video(root / f"v{i}.mp4", num_frames=8, size=(32, 32), fps=8)
        videos.append(VideoRecord(video_id=f"v{i}", video=f"v{i}.mp4", captions=[f"a clip number {i}"]).to_dict())
        (root / "img").mkdir(exist_ok=True)
        (root / "img" / f"i{i}.jpg").write_bytes(image_bytes((30 * i, 100, 0)))
    (root / "videos.jsonl").write_text("".join(json.dumps(v) + "\n" for v in videos))
    (root / "images.tsv").write_text("filepath\ttitle\n" + "".join(f"img/i{i}.jpg\tan image {i}\n" for i in range(8)))
    mix = "data.mix=[{train: videos.jsonl, weight: 1}, {train: images.tsv, format: imagetext, weight: 1}]"
    cfg = load_config("demo", TINY + [f"data.root={root}", "train.max_steps=4", "train.batch_size=4",
                                      "train.checkpoint_every=0", mix])
    result = run_pretraining(cfg, tmp_path / "run")
    assert np.isfinite(result.metrics["train/loss"]) and result.metrics["data/skipped"] == 0
