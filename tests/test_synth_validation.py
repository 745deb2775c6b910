"""The structured corpus's val split carries test's whole evaluation suite, from clips of its own, and adding it
left test's (and train's) files as they were."""

import csv
import hashlib
import json
import os

from structvl.data.formats import read_annotations
from structvl.lab.synth.layouts import EVAL_FILES

# sha256 of the files the generator wrote before val had evaluation sets (generator 1.0, the `tiny_corpus` fixture's
# arguments: num_clips=40, num_untrimmed=3, size=32, num_frames=8, seed=3). Test's and train's sets must not move.
BEFORE_VAL_SETS = {
    "test.jsonl": "6ccb16de0883e70742393fa856a0768f604dfd9274f45ea007d36e639452594a",
    "train.jsonl": "52789d180f26760e66cb9f2eda6da340d9f336b15bebbeb7c829acd50e29fd93",
    "val.jsonl": "bc28eb52512070e79809de281d5a68078eeb4cd4372251b2245d2c2e06549c97",
    "untrimmed_test.jsonl": "963a2663025ea1e2df4f06442abe5bfa0aae3c65374c7d735a41260fdbfd9ae3",
    "eval/retrieval_test.jsonl": "26b124fb4794fe7555cf77b16fc56ff6344e4a93da6ff7e69ddb61d13fa91d7f",
    "eval/hard_negatives.jsonl": "57f02058b66bccecf18a43493159f6e3d2cc3a3f559b5241523c9010bb258471",
    "eval/mc_test.csv": "68cd9882b87044d6efc6f892eb568e21051c1ca3e68836466111224b85d097d4",
    "eval/openqa_test.json": "2be8899b204085ad2dcd0a184f9afe0a808f0f10d92dc77e0952317d5d7a5d42",
    "eval/openqa_train.json": "d222fb9372f3f7b8f44f23091a325c67fecd95f57be606d308676c7808ffbb50",
    "actions/test.jsonl": "a89754debe324be4ba8511bf870fe05ba6a488128b017f237e23dd54b89bb0b8",
    "localization/activitynet13.json": "3885ac151907b7c9e445cc7711e2c53a34de6bdbe1e255ad0375c43bdb848636",
    "localization/activitynet_captions_test.json": "62dcea324dcccc737384a55e64afbde25a5ee9d1f78a9fced6cb24265570d938",
    "msrvtt/MSRVTT_JSFUSION_test.csv": "1da26e621dd40cf4d13da4e80c46747d2cbd6f9aa2c4ce8a6f6fbfdaf5de623c",
    "msrvtt/test_list.txt": "365a525f0fae1201e816d4a4d47b4de77f80cfc7e9bb555d8244b3b34edd7bc1",
}


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def split_videos(root, split: str) -> set[str]:
    """Real paths of the video files of one split's trimmed clips."""
    return {os.path.realpath(root / r.video) for r in read_annotations("jsonl", root / f"{split}.jsonl")}


def msrvtt_video(root, n) -> str:
    name = n if str(n).startswith("video") else f"video{n}"
    return os.path.realpath(root / "msrvtt" / "videos" / f"{name}.mp4")


def test_train_and_test_files_are_those_written_before_val_had_its_sets(tiny_corpus):
    changed = [name for name, digest in BEFORE_VAL_SETS.items() if sha256(tiny_corpus / name) != digest]
    assert not changed


def test_val_has_every_evaluation_set_test_has(tiny_corpus):
    counts = json.loads((tiny_corpus / "corpus.json").read_text())["eval_counts"]
    assert set(EVAL_FILES["val"]) == set(EVAL_FILES["test"])
    for kind, test_file in EVAL_FILES["test"].items():
        val_file = EVAL_FILES["val"][kind]
        assert val_file != test_file
        assert (tiny_corpus / val_file).stat().st_size > 0, val_file
    test_keys = [k for k in counts if k.endswith("_test")] + ["hard_negatives", "hard_negative_captions"]
    assert len(test_keys) == 6  # retrieval, MC, open QA, actions; hard negatives and their captions
    for test_key in test_keys:
        val_key = test_key.replace("_test", "_val") if test_key.endswith("_test") else f"{test_key}_val"
        assert counts.get(val_key, 0) > 0, (test_key, val_key)
    # recognition, localization and dense captions have val files too
    assert read_annotations("jsonl", tiny_corpus / "actions" / "val.jsonl")
    database = json.loads((tiny_corpus / "localization" / "activitynet13.json").read_text())["database"]
    assert {"validation", "testing"} <= {v["subset"] for v in database.values()}
    assert json.loads((tiny_corpus / "localization" / "activitynet_captions_val.json").read_text())


def test_val_sets_name_only_val_clips_and_share_no_video_file(tiny_corpus):
    root = tiny_corpus
    val_ids = {r.video_id for r in read_annotations("jsonl", root / "val.jsonl")}
    other_ids = {r.video_id for s in ("train", "test") for r in read_annotations("jsonl", root / f"{s}.jsonl")}
    val_files = split_videos(root, "val")
    other_files = split_videos(root, "train") | split_videos(root, "test")
    assert val_ids and not val_ids & other_ids
    assert val_files and not val_files & other_files

    names = EVAL_FILES["val"]
    retrieval = read_annotations("jsonl", root / names["retrieval"])
    assert {r.video_id for r in retrieval} == val_ids
    rows = [json.loads(line) for line in (root / names["hard_negatives"]).read_text().splitlines()]
    assert {r["video_id"] for r in rows} == val_ids
    assert {os.path.realpath(root / r["video"]) for r in rows} == val_files
    assert {msrvtt_video(root, r["msrvtt_id"]) for r in rows} == val_files
    with open(root / names["mc"], newline="") as f:
        mc = list(csv.DictReader(f, delimiter="\t"))
    assert mc and {msrvtt_video(root, r["video_id"]) for r in mc} == val_files
    qa = json.loads((root / names["openqa"]).read_text())
    assert qa and {msrvtt_video(root, q["video_id"]) for q in qa} <= val_files
    with open(root / names["retrieval_1k_a"], newline="") as f:
        assert {msrvtt_video(root, r["video_id"]) for r in csv.DictReader(f)} == val_files
    actions = read_annotations("jsonl", root / "actions" / "val.jsonl")
    assert {r.video_id for r in actions} <= val_ids
    untrimmed = {r.video for r in read_annotations("jsonl", root / "untrimmed_val.jsonl")}
    assert untrimmed and not untrimmed & {r.video for s in ("train", "test")
                                          for r in read_annotations("jsonl", root / f"untrimmed_{s}.jsonl")}
