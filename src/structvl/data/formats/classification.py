"""Action-recognition lists: Kinetics csv, UCF101 split lists with classInd.txt, HMDB51 split directories, and
plain class-name lists (`read_class_list`)."""

from __future__ import annotations

import re
from pathlib import Path

from structvl.data.formats.common import field_value, read_table, require, text_lines, to_number
from structvl.data.records import AnnotationError, VideoRecord


def read_kinetics(path: Path, issues: list, *, layout: str = "label") -> list[VideoRecord]:
    """Kinetics csv `label,youtube_id,time_start,time_end,split`.

    The clip is `{label}/{youtube_id}_{time_start:06d}_{time_end:06d}.mp4` (layout="label", the layout of
    the common download scripts) or the same name without the label folder (layout="flat"). Test lists
    without labels are read with the flat layout and label None.
    """
    if layout not in ("label", "flat"):
        raise ValueError(f"kinetics layout must be 'label' or 'flat', got {layout!r}")
    _, rows = read_table(path, issues, required=("youtube_id", "time_start", "time_end"))
    records = []
    for line, row in rows:
        where = f"line {line}"
        youtube_id = field_value(row, "youtube_id", path, where)
        start, end = (to_number(field_value(row, k, path, where), int, path, where, k)
                      for k in ("time_start", "time_end"))
        label = row.get("label", "").strip() or None
        clip = f"{youtube_id}_{start:06d}_{end:06d}"
        # time_start/time_end place the clip in its YouTube source; the downloaded file is already trimmed.
        meta = {"youtube_id": youtube_id, "source_start": start, "source_end": end,
                **({"split": row["split"]} if row.get("split") else {})}
        video = f"{label}/{clip}.mp4" if layout == "label" and label else f"{clip}.mp4"
        records.append(VideoRecord(video_id=clip, video=video, label=label, meta=meta))
    return records


def read_class_list(path: str | Path) -> list[str]:
    """Class names, one per line (Kinetics-style label files); blank lines are ignored."""
    return [text.strip() for _, text in text_lines(Path(path), None) if text.strip()]


def read_ucf101(path: Path, issues: list, *, class_index: str | Path | None = None) -> list[VideoRecord]:
    """A UCF101 split list: trainlistNN.txt ('ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1') or
    testlistNN.txt (no number: the class is the folder). Class names come from classInd.txt ('1 ApplyEyeMakeup'),
    looked up beside the split file unless `class_index` names it. meta["label_index"] is 0-based."""
    index_path = Path(class_index) if class_index is not None else path.parent / "classInd.txt"
    classes: dict[int, str] = {}
    for line, text in text_lines(index_path, None):
        if text.strip():
            number, _, name = text.strip().partition(" ")
            classes[to_number(number, int, index_path, f"line {line}", "class number")] = name.strip()
    label_index = {name: number - 1 for number, name in classes.items()}
    records = []
    for line, text in text_lines(path, issues):
        parts = text.split()
        if not parts:
            continue
        where = f"line {line}"
        require(len(parts) <= 2, path, where, f"expected '<class>/<video> [class number]', got {text!r}")
        video, folder = parts[0], parts[0].split("/")[0]
        if len(parts) == 2:
            number = to_number(parts[1], int, path, where, "class number")
            require(number in classes, path, where, f"class number {number} is not in {index_path.name}")
            label = classes[number]
            require(label == folder, path, where, f"class number {number} is {label!r}, but the folder is {folder!r}")
        else:
            require(folder in label_index, path, where, f"class folder {folder!r} is not in {index_path.name}")
            label = folder
        records.append(VideoRecord(video_id=Path(video).stem, video=video, label=label,
                                   meta={"label_index": label_index[label]}))
    return records


_HMDB_SPLIT_FILE = re.compile(r"^(?P<label>.+)_test_split(?P<split>\d)\.txt$")
HMDB_SUBSETS = {"1": "train", "2": "test"}  # the split files' codes; 0 = not used in this split


def read_hmdb51(path: Path, issues: list, *, split_id: int = 1, subset: str | None = None) -> list[VideoRecord]:
    """HMDB51: `path` is the directory of `<class>_test_split<k>.txt` files ('video.avi 1' per line).

    split_id: which of the three official splits (1-3). subset: "train" (code 1), "test" (code 2), or None
    for both (videos coded 0 are unused in that split and never read). The video is `{class}/{video}`;
    meta["label_index"] follows the sorted class names.
    """
    if split_id not in (1, 2, 3):
        raise ValueError(f"hmdb51 split_id must be 1, 2 or 3, got {split_id!r}")
    if subset not in (None, "train", "test"):
        raise ValueError(f"hmdb51 subset must be 'train', 'test' or None, got {subset!r}")
    if not path.is_dir():
        raise AnnotationError(f"{path}: hmdb51 reads a directory of <class>_test_split<k>.txt files")
    split_files = {}
    for file in path.iterdir():
        match = _HMDB_SPLIT_FILE.match(file.name)
        if match and int(match["split"]) == split_id:
            split_files[match["label"]] = file
    if not split_files:
        raise AnnotationError(f"{path}: no *_test_split{split_id}.txt files")
    records = []
    for label_index, label in enumerate(sorted(split_files)):
        file = split_files[label]
        for line, text in text_lines(file, issues):
            parts = text.split()
            if not parts:
                continue
            require(len(parts) == 2 and parts[1] in ("0", "1", "2"), file, f"line {line}",
                    f"expected '<video> <0|1|2>', got {text!r}")
            video, code = parts
            if code in HMDB_SUBSETS and subset in (None, HMDB_SUBSETS[code]):
                records.append(VideoRecord(video_id=Path(video).stem, video=f"{label}/{video}", label=label,
                                           meta={"label_index": label_index, "subset": HMDB_SUBSETS[code]}))
    return records
