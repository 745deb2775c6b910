"""Command-line argument types that refuse a bad value while the arguments are parsed, before any work.

Each is an argparse `type=`: it returns the parsed value or raises `argparse.ArgumentTypeError`, which the
parser (`OneLineParser`) prints as one line naming the argument, the value and what is allowed, with exit
code 2. Numbers follow the same rules as config keys (`structvl.config_checks.Number`). Output paths are
probed without leaving anything behind: a directory that exists must be a directory, one that does not must
be creatable, and either must take a file (an unnamed temporary file, removed at once).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from structvl.config_checks import Number


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line on stderr (no usage block), exit code 2."""

    def error(self, message: str):
        print(f"{self.prog}: error: {' '.join(message.split())}", file=sys.stderr)
        sys.exit(2)


def number(lo: float | None = None, hi: float | None = None, integer: bool = True, lo_open: bool = False):
    """An int (or float) argument within [lo, hi] (lo excluded with `lo_open`)."""
    rule = Number(lo, hi, lo_open=lo_open, integer=integer)

    def parse(text: str):
        try:
            value = int(text) if integer else float(text)
        except ValueError:
            value = text
        if rule.problem(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not allowed; expected {rule.allowed()}")
        return value

    parse.__name__ = "integer" if integer else "number"
    return parse


def existing_file(text: str) -> str:
    path = Path(text)
    if not path.exists():
        raise argparse.ArgumentTypeError(f"{text!r} does not exist")
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"{text!r} is a directory; expected a file")
    return text


def existing_dir(text: str) -> str:
    path = Path(text)
    if not path.exists():
        raise argparse.ArgumentTypeError(f"{text!r} does not exist")
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is a file; expected a directory")
    return text


def existing_path(text: str) -> str:
    if not Path(text).exists():
        raise argparse.ArgumentTypeError(f"{text!r} does not exist")
    return text


def _probe_writable(text: str, directory: Path) -> None:
    """`directory` (or its nearest existing ancestor, where it would be created) must take a new file."""
    probe = directory
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} cannot be created: {probe} is a file")
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as e:
        raise argparse.ArgumentTypeError(f"{text!r} is not writable: {probe}: {e.strerror or e}") from None


def output_dir(text: str) -> str:
    """A directory to write into: an existing directory, or a path where one can be created."""
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is a file; expected a directory to write into")
    _probe_writable(text, path.absolute())
    return text


def output_file(text: str) -> str:
    """A file to write: not a directory, in a directory that exists (or can be created) and is writable."""
    path = Path(text)
    if path.is_dir() or text.endswith(os.sep):
        raise argparse.ArgumentTypeError(f"{text!r} is a directory; expected a file path")
    _probe_writable(text, path.absolute().parent)
    return text


def shard_pattern(text: str) -> str:
    """A shard path pattern with one printf placeholder ("shards/train-%06d.tar"), in a writable place."""
    try:
        first = text % 0
    except (TypeError, ValueError):
        first = text
    if first == text:
        raise argparse.ArgumentTypeError(f"{text!r} has no shard-number placeholder; expected e.g. "
                                         "'shards/train-%06d.tar'")
    return output_file(first) and text
