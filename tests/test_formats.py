"""Annotation readers: the real benchmark files parse exactly (README counts, spot-checked rows), small files
written here in the official layouts of benchmarks without public files, error and skip rules, writers."""

from __future__ import annotations

import json
import logging

import pytest

from structvl.cli import ANNOTATION_FORMATS
from structvl.data.formats import annotation_readers, read_annotations
from structvl.data.formats.classification import read_class_list
from structvl.data.formats.jsonl import write_jsonl
from structvl.data.formats.localization import write_localization_json
from structvl.data.formats.msvd import read_msvd_mapping
from structvl.data.formats.qa import write_mcqa_csv, write_openqa_json
from structvl.data.records import AnnotationError, VideoRecord


def test_every_cli_format_has_a_reader():
    assert list(annotation_readers()) == ANNOTATION_FORMATS


def test_unknown_format_and_unknown_option_are_named(tmp_path):
    with pytest.raises(ValueError, match="'nope'"):
        read_annotations("nope", tmp_path / "x")
    with pytest.raises(ValueError, match=r"'spilt'.*split, video_ids_file"):
        read_annotations("msrvtt", tmp_path / "x.json", spilt="test")


# ---------------------------------------------------------------- real files
def test_msrvtt_1ka_test_csv(realdata):
    records = read_annotations("msrvtt", realdata / "msrvtt" / "MSRVTT_JSFUSION_test.csv")
    assert len(records) == 1000 and len({r.video_id for r in records}) == 1000
    first, last = records[0], records[-1]
    assert (first.video_id, first.video, first.captions) == (
        "video9770", "video9770.mp4", ["a person is connecting something to system"])
    assert first.meta == {"key": "ret0", "vid_key": "msr9770"}
    assert (last.video_id, last.captions) == ("video9871", ["bearded guy in grey tshirt talking to the camera"])


def test_msvd_mapping_keeps_dash_ids_and_last_line_without_newline(realdata):
    path = realdata / "msvd" / "youtube_mapping.txt"
    raw = path.read_bytes()
    assert b"\r\n" in raw and not raw.endswith(b"\n")  # the quirks this test is about are really in the file
    mapping = read_msvd_mapping(path)
    assert len(mapping) == 1970
    assert list(mapping.items())[0] == ("-4wsuPCjDBc_5_15", "vid1")
    assert mapping["zzit5b_-ukg_5_20"] == "vid1970"  # last line: no CR, no newline
    assert sum(clip.startswith("-") for clip in mapping) == 46

    records = read_annotations("msvd", path)
    assert len(records) == 1970 and all(r.captions == [] for r in records)
    last = records[-1]
    assert (last.video_id, last.video) == ("vid1970", "zzit5b_-ukg_5_20.avi")
    assert last.meta["youtube_id"] == "zzit5b_-ukg" and (last.meta["source_start"], last.meta["source_end"]) == (5, 20)


@pytest.mark.parametrize("split, rows, videos", [("val", 4996, 570), ("test", 8564, 1000)])
def test_nextqa(realdata, split, rows, videos):
    folder = realdata / "nextqa"
    records = read_annotations("nextqa", folder / f"{split}.csv")
    assert len(records) == rows and len({r.video_id for r in records}) == videos
    video_map = json.loads((folder / "map_vid_vidorID.json").read_text())
    assert len(video_map) == 10000
    assert all(r.video == video_map[r.video_id] + ".mp4" for r in records)
    if split == "val":
        first = records[0]
        assert (first.video_id, first.video) == ("4010069381", "1106/4010069381.mp4")
        assert first.question == "how do the two man play the instrument"
        assert first.candidates == ["roll the handle", "tap their feet", "strum the string", "hit with sticks",
                                    "pat with hand"]
        assert first.answer == 0
        assert first.meta == {"qid": "6", "type": "CH", "frame_count": 369, "width": 640, "height": 480}


@pytest.mark.parametrize("task, rows", [("action", 2274), ("transition", 6232), ("frameqa", 13691), ("count", 3554)])
def test_tgifqa_counts(realdata, task, rows):
    records = read_annotations("tgifqa", realdata / "tgif_qa" / f"Test_{task}_question.csv")
    assert len(records) == rows


def test_tgifqa_rows(realdata):
    folder = realdata / "tgif_qa"
    action = read_annotations("tgifqa", folder / "Test_action_question.csv", video_ext=".mp4")[0]
    assert (action.video, action.question) == ("tumblr_nk172bbdPI1u1lr18o1_250.mp4",
                                               "What does the butterfly do 10 or more than 10 times ?")
    assert action.candidates[action.answer] == "flap wings"
    assert action.meta == {"task": "multiple_choice", "vid_id": "ACTION4", "key": "26"}
    # Line 1678 quotes an option csv-style: "respond ""no""".
    transition = read_annotations("tgifqa", folder / "Test_transition_question.csv")
    quoted = next(r for r in transition if r.meta["vid_id"] == "TRANS15831")
    assert quoted.candidates[4] == 'respond "no"' and quoted.answer == 0
    frame = read_annotations("tgifqa", folder / "Test_frameqa_question.csv")[0]
    assert (frame.answer, frame.candidates, frame.meta["answer_type"]) == ("cookie", None, 0)
    assert frame.meta["description"] == "a chocolate cookie is being placed in a white ice cream cone ."
    count = read_annotations("tgifqa", folder / "Test_count_question.csv")[0]
    assert (count.video_id, count.answer, count.meta["task"]) == ("tumblr_nezfs4uELd1u1a7cmo1_250", "3", "count")


@pytest.mark.parametrize("split, rows, videos", [("val", 4180, 1094), ("test", 4021, 1037)])
def test_didemo_counts(realdata, split, rows, videos):
    path = realdata / "didemo" / f"{split}_data.json"
    records = read_annotations("didemo", path)
    assert len(records) == rows and len({r.video for r in records}) == videos
    assert len(read_annotations("didemo", path, paragraph=True)) == videos


def test_didemo_consensus_and_paragraph(realdata):
    path = realdata / "didemo" / "val_data.json"
    records = read_annotations("didemo", path)
    first = records[0]  # times [[1, 1], [1, 1], [1, 1], [0, 0]]: segment 1 = [5 s, 10 s]
    assert (first.video, first.start, first.end) == ("35034348999@N01_6060447507_dc1a90b8ef.mov", 5.0, 10.0)
    assert first.meta["annotation_id"] == 49152 and len(first.meta["times"]) == 4
    tie = records[25]  # [[3, 4], [3, 3], [3, 4], [3, 3]]: a tie, the pair given first wins
    assert tie.meta["annotation_id"] == 45063 and (tie.start, tie.end) == (15.0, 25.0)
    # In the file: "camera stops panning right" (20-25 s) comes before two descriptions of 15-25 s.
    paragraphs = read_annotations("didemo", path, paragraph=True)
    para = next(p for p in paragraphs if p.video == "86091119@N00_13912142554_c451140af5.mp4")
    assert para.captions == ["the bush on the right waves in the wind. the city is no longer visible "
                             "camera stops panning right"]


def test_activitynetqa_joins_answers(realdata):
    records = read_annotations("activitynetqa", realdata / "activitynet_qa" / "test_q.json")
    assert len(records) == 8000 and len({r.video_id for r in records}) == 800
    assert all(r.answer is not None for r in records)
    first = records[0]
    assert (first.video_id, first.video, first.question, first.answer) == (
        "v_1QIUV7WYKXg", "v_1QIUV7WYKXg.mp4", "is the athlete wearing trousers", "no")
    assert first.meta == {"question_id": "v_1QIUV7WYKXg_3", "answer_type": 3}
    assert records[36].question == "is the person in white trouser a woman"  # the file has a trailing space


# ---------------------------------------------------------------- official layouts, written here
def test_msrvtt_data_json_split_and_train_list(tmp_path):
    data = {
        "info": {"year": 2016},
        "videos": [
            {"category": 9, "url": "https://www.youtube.com/watch?v=9lZi22qLlEo", "video_id": "video0",
             "start time": 137.72, "end time": 149.44, "split": "train", "id": 0},
            {"category": 16, "url": "u1", "video_id": "video1", "start time": 184.33, "end time": 206.89,
             "split": "train", "id": 1},
            {"category": 9, "url": "u2", "video_id": "video7010", "start time": 1.0, "end time": 11.0,
             "split": "test", "id": 7010},
        ],
        "sentences": [
            {"caption": "a car is shown", "video_id": "video0", "sen_id": 0},
            {"caption": "a man drives", "video_id": "video1", "sen_id": 1},
            {"caption": "a cartoon plays", "video_id": "video0", "sen_id": 2},
            {"caption": "  ", "video_id": "video0", "sen_id": 3},
            {"caption": "a man and a woman talk", "video_id": "video7010", "sen_id": 4},
        ],
    }
    path = tmp_path / "MSRVTT_data.json"
    path.write_text(json.dumps(data))
    issues = []
    records = read_annotations("msrvtt", path, issues)
    assert [r.video_id for r in records] == ["video0", "video1", "video7010"]
    assert records[0].captions == ["a car is shown", "a cartoon plays"] and records[0].video == "video0.mp4"
    assert records[0].meta["split"] == "train" and records[0].meta["source_start"] == 137.72
    assert len(issues) == 1 and "sentences[3]" in issues[0]["reason"]
    assert [r.video_id for r in read_annotations("msrvtt", path, split="test")] == ["video7010"]
    train_list = tmp_path / "train_list_jsfusion.txt"
    train_list.write_bytes(b"video1\r\nvideo7010")
    assert [r.video_id for r in read_annotations("msrvtt", path, video_ids_file=train_list)] == ["video1", "video7010"]
    with pytest.raises(ValueError, match="validate"):
        read_annotations("msrvtt", path, split="val")


def test_webvid_csv_ignores_unknown_columns(tmp_path):
    path = tmp_path / "results_2M_val.csv"
    path.write_text("videoid,name,page_dir,duration,contentUrl,extra\n"
                    '31353427,"Aerial shot of a lake, at dusk",006001_006050,PT00H00M11S,https://x/1.mp4,?\n'
                    "1018460473,Beach waves,1018460473_p,PT01H02M03S,https://x/2.mp4,?\n")
    records = read_annotations("webvid", path)
    assert records[0].captions == ["Aerial shot of a lake, at dusk"]
    assert (records[0].video, records[0].duration) == ("006001_006050/31353427.mp4", 11.0)
    assert records[1].duration == 3723.0 and records[1].meta == {"url": "https://x/2.mp4"}


def test_msvd_captions_text_and_json(tmp_path):
    mapping = tmp_path / "youtube_mapping.txt"
    mapping.write_bytes(b"-4wsuPCjDBc_5_15 vid1\r\nzzit5b_-ukg_5_20 vid2\r\nabc_1_2 vid3")
    text = tmp_path / "AllVideoDescriptions.txt"
    text.write_text("# Each line: VideoID Description\n#\n"
                    "-4wsuPCjDBc_5_15 a squirrel is eating a peanut\n"
                    "-4wsuPCjDBc_5_15 a chipmunk eats\n"
                    "zzit5b_-ukg_5_20 a man plays guitar\n"
                    "unknown_1_2 not in the mapping\n")
    issues = []
    records = read_annotations("msvd", mapping, issues, captions=text)
    assert [(r.video_id, r.captions) for r in records] == [
        ("vid1", ["a squirrel is eating a peanut", "a chipmunk eats"]), ("vid2", ["a man plays guitar"])]
    assert {i["reason"] for i in issues} == {"clip 'unknown_1_2' is not in the youtube mapping",
                                             "abc_1_2 (vid3): no captions in AllVideoDescriptions.txt"}
    as_json = tmp_path / "captions.json"
    as_json.write_text(json.dumps({"vid1": ["a squirrel"], "zzit5b_-ukg_5_20": ["a guitar"], "abc_1_2": ["x"]}))
    records = read_annotations("msvd", mapping, captions=as_json, video_ext=".mp4")
    assert [(r.video, r.captions) for r in records] == [
        ("-4wsuPCjDBc_5_15.mp4", ["a squirrel"]), ("zzit5b_-ukg_5_20.mp4", ["a guitar"]), ("abc_1_2.mp4", ["x"])]


def test_activitynet_captions(tmp_path):
    path = tmp_path / "val_1.json"
    path.write_text(json.dumps({
        "v_uqiMw7tQ1Cc": {"duration": 55.15, "timestamps": [[0.28, 55.15], [13.79, 54.32]],
                          "sentences": ["A weight lifting tutorial is given.", "  The coach helps the guy."]},
        "v_bXdq2zI1Ms0": {"duration": 73.1, "timestamps": [[0, 10.23]], "sentences": ["Three men are standing."]},
    }))
    records = read_annotations("activitynet", path)
    assert len(records) == 3
    second = records[1]
    assert (second.video_id, second.video, second.start, second.end, second.duration) == (
        "v_uqiMw7tQ1Cc", "v_uqiMw7tQ1Cc.mp4", 13.79, 54.32, 55.15)
    assert second.captions == ["The coach helps the guy."]
    paragraphs = read_annotations("activitynet", path, paragraph=True)
    assert [p.captions for p in paragraphs] == [
        ["A weight lifting tutorial is given. The coach helps the guy."], ["Three men are standing."]]
    assert paragraphs[0].start is None and paragraphs[0].duration == 55.15


def test_kinetics_layouts_and_class_list(tmp_path):
    path = tmp_path / "validate.csv"
    path.write_text("label,youtube_id,time_start,time_end,split\n"
                    "abseiling,0wR5jVB-WPk,417,427,validate\n"
                    "air drumming,--nQbRBEz2s,104,114,validate\n")
    records = read_annotations("kinetics", path)
    assert records[0].video == "abseiling/0wR5jVB-WPk_000417_000427.mp4" and records[0].label == "abseiling"
    assert records[1].video_id == "--nQbRBEz2s_000104_000114"
    assert read_annotations("kinetics", path, layout="flat")[1].video == "--nQbRBEz2s_000104_000114.mp4"
    labels = tmp_path / "kinetics_400_labels.txt"
    labels.write_bytes(b"\xef\xbb\xbfabseiling\r\nair drumming\r\n\r\n")
    assert read_class_list(labels) == ["abseiling", "air drumming"]


def test_ucf101_train_and_test_lists(tmp_path):
    (tmp_path / "classInd.txt").write_bytes(b"1 ApplyEyeMakeup\r\n2 ApplyLipstick\r\n37 HandstandPushups\r\n")
    (tmp_path / "trainlist01.txt").write_bytes(b"ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1\r\n"
                                               b"HandstandPushups/v_HandStandPushups_g08_c01.avi 37\r\n")
    (tmp_path / "testlist01.txt").write_bytes(b"ApplyLipstick/v_ApplyLipstick_g01_c01.avi\r\n")
    train = read_annotations("ucf101", tmp_path / "trainlist01.txt")
    assert [(r.video_id, r.label, r.meta["label_index"]) for r in train] == [
        ("v_ApplyEyeMakeup_g08_c01", "ApplyEyeMakeup", 0), ("v_HandStandPushups_g08_c01", "HandstandPushups", 36)]
    test = read_annotations("ucf101", tmp_path / "testlist01.txt")
    assert (test[0].video, test[0].label) == ("ApplyLipstick/v_ApplyLipstick_g01_c01.avi", "ApplyLipstick")
    (tmp_path / "bad.txt").write_text("ApplyLipstick/v_ApplyLipstick_g01_c01.avi 1\n")
    with pytest.raises(AnnotationError, match=r"bad.txt line 1: .*'ApplyEyeMakeup'"):
        read_annotations("ucf101", tmp_path / "bad.txt")


def test_hmdb51_split_directory(tmp_path):
    splits = tmp_path / "testTrainMulti_7030_splits"
    splits.mkdir()
    (splits / "brush_hair_test_split1.txt").write_text(
        "April_09_brush_my_teeth_brush_hair_h_nm_np1_ba_goo_0.avi 1 \nBlonde_brush_hair_f_nm_np2_le_goo_0.avi 2 \n"
        "Brushing_Hair_f_nm_np1_ba_goo_0.avi 0 \n")
    (splits / "brush_hair_test_split2.txt").write_text("Blonde_brush_hair_f_nm_np2_le_goo_0.avi 1 \n")
    (splits / "cartwheel_test_split1.txt").write_text("Cartwheel_f_cm_np1_ba_med_0.avi 2 \n")
    train = read_annotations("hmdb51", splits, subset="train")
    assert [(r.video, r.label) for r in train] == [
        ("brush_hair/April_09_brush_my_teeth_brush_hair_h_nm_np1_ba_goo_0.avi", "brush_hair")]
    test = read_annotations("hmdb51", splits, subset="test")
    assert [(r.video_id, r.meta["label_index"]) for r in test] == [
        ("Blonde_brush_hair_f_nm_np2_le_goo_0", 0), ("Cartwheel_f_cm_np1_ba_med_0", 1)]
    assert len(read_annotations("hmdb51", splits)) == 3  # both subsets; code 0 (unused) never
    assert [r.meta["subset"] for r in read_annotations("hmdb51", splits, split_id=2)] == ["train"]


def test_msrvtt_mc_and_writer_round_trip(tmp_path):
    path = tmp_path / "MSR_MC_test.csv"
    path.write_text("key\tvid_key\tvideo_id\ta1\ta2\ta3\ta4\ta5\tanswer\n"
                    "mc0\tmsr7010\tvideo7010\ta man talks\ta dog runs\tcooking\ta car\tsinging\t0\n"
                    "mc1\tmsr7011\tvideo7011\ta\tb\tc\td\te\t4\n")
    records = read_annotations("mcqa", path)
    assert (records[0].video, records[0].candidates[records[0].answer]) == ("video7010.mp4", "a man talks")
    assert records[1].answer == 4 and records[1].meta == {"key": "mc1", "vid_key": "msr7011"}
    with pytest.raises(AnnotationError, match=r"line 2: answer 0 is outside options 1..5"):
        read_annotations("mcqa", path, answer_base=1)
    one_based = tmp_path / "one_based.csv"
    write_mcqa_csv(records, one_based, answer_base=1)
    assert read_annotations("mcqa", one_based, answer_base=1) == records
    copy = tmp_path / "copy.csv"
    write_mcqa_csv(records, copy)
    assert copy.read_text() == path.read_text()
    assert read_annotations("mcqa", copy) == records


def test_open_ended_qa_msrvtt_msvd_and_writer(tmp_path):
    msrvtt = tmp_path / "test_qa.json"
    msrvtt.write_text(json.dumps([
        {"answer": "man", "id": 0, "question": "what is a man doing?", "video_id": 7010},
        {"answer": "dog", "id": 1, "question": "who runs?", "video": "video7011"},
    ]))
    records = read_annotations("openqa", msrvtt)
    assert [(r.video_id, r.video, r.answer) for r in records] == [
        ("video7010", "video7010.mp4", "man"), ("video7011", "video7011.mp4", "dog")]
    assert records[0].question == "what is a man doing?" and records[0].meta == {"qid": 0}

    mapping = tmp_path / "youtube_mapping.txt"
    mapping.write_bytes(b"-4wsuPCjDBc_5_15 vid1\r\nzzit5b_-ukg_5_20 vid2")
    msvd = tmp_path / "msvd_test_qa.json"
    msvd.write_text(json.dumps([{"answer": "squirrel", "id": 5, "question": "what eats?", "video_id": 2}]))
    assert read_annotations("openqa", msvd, dataset="msvd")[0].video == "vid2.avi"
    record = read_annotations("openqa", msvd, msvd_mapping=mapping)[0]
    assert (record.video_id, record.video) == ("vid2", "zzit5b_-ukg_5_20.avi")

    synthetic = [VideoRecord("clip_3", "clips/clip_3.mp4", question="what colour is the cube?", answer="red")]
    write_openqa_json(synthetic, tmp_path / "out.json")
    back = read_annotations("openqa", tmp_path / "out.json")[0]
    assert (back.video_id, back.video, back.question, back.answer) == (
        "clip_3", "clips/clip_3.mp4", "what colour is the cube?", "red")


def test_localization_subset_and_writer_round_trip(tmp_path):
    path = tmp_path / "activity_net.v1-3.min.json"
    path.write_text(json.dumps({"version": "VERSION 1.3", "taxonomy": [], "database": {
        "sJFgo9H6zNo": {"subset": "validation", "duration": 139.042, "resolution": "640x360",
                        "url": "https://www.youtube.com/watch?v=sJFgo9H6zNo",
                        "annotations": [{"segment": [0.0, 48.20], "label": "Fun sliding down"},
                                        {"segment": [52.5, 90.1], "label": "Fun sliding down"}]},
        "V1PZ3R1S0Jg": {"subset": "testing", "duration": 75.0, "resolution": "", "url": "", "annotations": []},
    }}))
    records = read_annotations("localization", path)
    assert [r.video for r in records] == ["v_sJFgo9H6zNo.mp4", "v_V1PZ3R1S0Jg.mp4"]
    val = read_annotations("localization", path, subset="validation")
    assert len(val) == 1 and val[0].duration == 139.042
    assert val[0].segments[1] == {"start": 52.5, "end": 90.1, "label": "Fun sliding down"}
    thumos = read_annotations("localization", path, video_prefix="")[0]
    assert thumos.video == "sJFgo9H6zNo.mp4"

    out = tmp_path / "written.json"
    write_localization_json(records, out, subset_of=lambda r: r.meta["subset"])
    again = read_annotations("localization", out)
    assert [(r.video_id, r.video, r.segments, r.duration, r.meta.get("subset")) for r in again] == [
        (r.video_id, r.video, r.segments, r.duration, r.meta.get("subset")) for r in records]
    assert json.loads(out.read_text())["taxonomy"][0]["nodeName"] == "Fun sliding down"


# ---------------------------------------------------------------- native jsonl
def test_jsonl_defaults_aliases_and_round_trip(tmp_path):
    path = tmp_path / "train.jsonl"
    # BOM, CRLF, no final newline; a `caption` alias; no video_id; an unknown key.
    path.write_bytes(b'\xef\xbb\xbf{"video": "clips/a.mp4", "caption": "a red cube", "speaker": 1}\r\n'
                     b'{"video_id": "b", "video": "b.mp4", "captions": ["x", "y"], "start": 1, "end": 2.5}')
    records = read_annotations("jsonl", path)
    assert (records[0].video_id, records[0].captions) == ("a", ["a red cube"])
    assert (records[1].start, records[1].end) == (1.0, 2.5)

    rich = records + [VideoRecord("q", "q.mp4", question="which?", candidates=["a", "b"], answer=0,
                                  segments=[{"start": 0.0, "end": 1.0, "label": "jump"}], duration=3.0,
                                  meta={"qid": 7})]
    out = tmp_path / "out" / "all.jsonl"
    write_jsonl(rich, out)
    assert read_annotations("jsonl", out) == rich
    assert [p.name for p in out.parent.iterdir()] == ["all.jsonl"]  # the temporary file was renamed away


def test_failed_write_leaves_previous_file(tmp_path):
    out = tmp_path / "train.jsonl"
    write_jsonl([VideoRecord("a", "a.mp4", captions=["kept"])], out)
    with pytest.raises(TypeError):
        write_jsonl([VideoRecord("b", "b.mp4", meta={"bad": object()})], out)
    assert read_annotations("jsonl", out)[0].captions == ["kept"]
    assert [p.name for p in tmp_path.iterdir()] == ["train.jsonl"]


# ---------------------------------------------------------------- errors and skipped lines
def test_missing_required_column_names_file_and_column(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text("key,vid_key,video_id,caption\nret0,msr1,video1,a man\n")
    with pytest.raises(AnnotationError, match=r"train.csv line 1: missing required column 'sentence'"):
        read_annotations("msrvtt", path)


def test_missing_json_field_and_bad_number_are_named(tmp_path):
    path = tmp_path / "val_data.json"
    path.write_text(json.dumps([{"annotation_id": 3, "description": "a dog", "video": "x.mov"}]))
    with pytest.raises(AnnotationError,
                       match=r"val_data.json item 0 \(annotation_id 3\): missing required field 'times'"):
        read_annotations("didemo", path)
    path = tmp_path / "kinetics.csv"
    path.write_text("label,youtube_id,time_start,time_end\nabseiling,abc,soon,10\n")
    with pytest.raises(AnnotationError, match=r"kinetics.csv line 2: 'time_start' is not an integer"):
        read_annotations("kinetics", path)
    path = tmp_path / "broken.jsonl"
    path.write_text('{"video": "a.mp4"}\n{"video": \n')
    with pytest.raises(AnnotationError, match=r"broken.jsonl line 2: invalid JSON"):
        read_annotations("jsonl", path)


def test_non_utf8_line_and_empty_caption_are_skipped_and_reported(tmp_path, caplog):
    path = tmp_path / "MSRVTT_JSFUSION_test.csv"
    path.write_bytes(b"key,vid_key,video_id,sentence\r\n"
                     b"ret0,msr0,video0,a good caption\r\n"
                     b"ret1,msr1,video1,caf\xe9 in latin-1\r\n"
                     b"ret2,msr2,video2,   \r\n"
                     b"ret3,msr3,video3,another good one")
    issues = []
    with caplog.at_level(logging.WARNING, logger="structvl.data"):
        records = read_annotations("msrvtt", path, issues)
    assert [r.video_id for r in records] == ["video0", "video3"]
    assert [(i["file"], i["line"]) for i in issues] == [(str(path), 3), (str(path), 4)]
    assert "UTF-8" in issues[0]["reason"] and issues[1]["reason"] == "empty caption"
    warnings = [r for r in caplog.records if r.name == "structvl.data"]
    assert len(warnings) == 1 and "skipped 2 item(s)" in warnings[0].getMessage()


def test_wrong_field_count_is_named(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text("key,vid_key,video_id,sentence\nret0,msr0,video0\n")
    with pytest.raises(AnnotationError, match=r"train.csv line 2: 3 fields, but the header has 4"):
        read_annotations("msrvtt", path)


def test_qa_rows_with_empty_question_or_option_are_skipped(tmp_path):
    path = tmp_path / "Test_action_question.csv"
    path.write_bytes(b"gif_name\tquestion\ta1\ta2\ta3\ta4\ta5\tanswer\tvid_id\tkey\r\n"
                     b"g1\tWhat does the man do ?\tjump\trun\tsit\tclap\twave\t1\tACTION1\t1\r\n"
                     b"g2\t \tjump\trun\tsit\tclap\twave\t1\tACTION2\t2\r\n"
                     b"g3\tWhat does the cat do ?\tjump\t\tsit\tclap\twave\t1\tACTION3\t3\r\n")
    issues = []
    records = read_annotations("tgifqa", path, issues)
    assert [(r.video_id, r.answer) for r in records] == [("g1", 1)]
    assert [(i["line"], i["reason"]) for i in issues] == [(3, "empty question"), (4, "empty answer option a2")]
