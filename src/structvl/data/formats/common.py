"""The file helpers every annotation reader shares, so each follows the package's rules the same way (see
`structvl.data.formats`): line-by-line decoding, csv/tsv tables with their header checked, whole JSON
documents, one-line `AnnotationError`s naming file and place, skipped items reported in `issues`, and atomic
writes for the writers.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from structvl.data.records import AnnotationError, VideoRecord

# A reader takes the annotation path, the list it appends skipped-item issues to, and keyword options.
Reader = Callable[..., list[VideoRecord]]


def skip_item(issues: list | None, path: Path, line: int | None, reason: str) -> None:
    """Record a skipped item; with `issues=None` (a strict caller) it is an error instead."""
    if issues is None:
        raise AnnotationError(f"{path}{f' line {line}' if line else ''}: {reason}")
    issues.append({"file": str(path), "line": line, "reason": reason})


def text_lines(path: Path, issues: list | None) -> Iterator[tuple[int, str]]:
    """(1-based line number, text without its line end) for every line of a text file.

    Each line is decoded on its own: a line that is not valid UTF-8 is skipped via `skip_item`.
    Splitting the raw bytes at b"\\n" is safe because no multi-byte UTF-8 sequence contains that byte.
    """
    data = path.read_bytes()
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8):]
    lines = data.split(b"\n")
    if lines[-1] == b"":  # the file ends with a newline (many do not: then the last piece is a real line)
        lines.pop()
    for number, raw in enumerate(lines, 1):
        try:
            yield number, raw.removesuffix(b"\r").decode("utf-8")
        except UnicodeDecodeError as e:
            skip_item(issues, path, number, f"not valid UTF-8 (byte {e.start}: {raw[e.start:e.start + 1]!r})")


class _LineFeed:
    """Feeds decoded lines to `csv.reader` and remembers the physical line number it is at."""

    def __init__(self, path: Path, issues: list | None):
        self.line = 0
        self._lines = text_lines(path, issues)

    def __iter__(self) -> Iterator[str]:
        for number, text in self._lines:
            self.line = number
            yield text + "\n"  # csv needs the line end to keep newlines inside quoted fields


def read_table(path: Path, issues: list | None, required: tuple[str, ...] = (),
               delimiter: str = ",") -> tuple[list[str], Iterator[tuple[int, dict[str, str]]]]:
    """The header of a csv/tsv file and an iterator of (line number, {column: value}) rows.

    Checks the header holds every `required` column, and each row the header's number of fields (trailing
    empty fields are tolerated). Blank lines are skipped. Quoted fields are unquoted the way
    csv does it (a few TGIF-QA options are quoted, with doubled inner quotes).
    """
    feed = _LineFeed(path, issues)
    reader = csv.reader(feed, delimiter=delimiter)
    header = next((row for row in reader if any(f.strip() for f in row)), None)
    if header is None:
        raise AnnotationError(f"{path}: empty file (expected a header line)")
    header = [name.strip() for name in header]
    for name in required:
        if name not in header:
            raise AnnotationError(f"{path} line {feed.line}: missing required column {name!r} "
                                  f"(header: {', '.join(header)})")

    def rows() -> Iterator[tuple[int, dict[str, str]]]:
        for fields in reader:
            if not any(f.strip() for f in fields):
                continue
            while len(fields) > len(header) and not fields[-1].strip():
                fields.pop()
            if len(fields) != len(header):
                raise AnnotationError(f"{path} line {feed.line}: {len(fields)} fields, but the header has "
                                      f"{len(header)}")
            yield feed.line, dict(zip(header, fields, strict=True))

    return header, rows()


def load_json(path: Path) -> Any:
    """A whole JSON document. Invalid UTF-8 or JSON is an AnnotationError naming the line."""
    data = path.read_bytes()
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8):]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise AnnotationError(f"{path} line {line}: not valid UTF-8 (a JSON document must be UTF-8 throughout)") \
            from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise AnnotationError(f"{path} line {e.lineno}: invalid JSON ({e.msg})") from None


def require(condition: bool, path: Path, where: str, problem: str) -> None:
    """Raise an AnnotationError '<file> <where>: <problem>' unless `condition` holds."""
    if not condition:
        raise AnnotationError(f"{path} {where}: {problem}")


def field_value(item: dict, key: str, path: Path, where: str) -> Any:
    """item[key] for a required key (or column) whose value must not be empty."""
    value = item.get(key)
    require(value is not None and value != "", path, where, f"missing required field {key!r}")
    return value


def to_number(value: Any, kind: type, path: Path, where: str, name: str) -> Any:
    """int(value) or float(value), with a message naming the field when it is not a number."""
    try:
        if isinstance(value, bool) or (kind is int and isinstance(value, float) and not value.is_integer()):
            raise ValueError
        return kind(value)
    except (TypeError, ValueError):
        raise AnnotationError(f"{path} {where}: {name!r} is not a{'n integer' if kind is int else ' number'}: "
                              f"{value!r}") from None


def clean_caption(text: Any, issues: list | None, path: Path, line: int | None, where: str = "") -> str | None:
    """The caption stripped of outer whitespace, or None (and a skipped-item issue) when nothing is left."""
    if not isinstance(text, str):
        raise AnnotationError(f"{path} {where or f'line {line}'}: caption is not a string: {text!r}")
    text = text.strip()
    if not text:
        skip_item(issues, path, line, f"{where + ': ' if where else ''}empty caption")
        return None
    return text


@contextlib.contextmanager
def atomic_text_writer(path: str | Path, newline: str | None = None) -> Iterator[Any]:
    """A text file handle whose content replaces `path` only once the block finishes without error.

    Writes to a temporary file beside `path` and `os.replace`s it, so readers never see half a file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with open(fd, "w", encoding="utf-8", newline=newline) as f:
            yield f
        # mkstemp creates 0600 files; give the result the permissions a plain open() would (umask).
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
