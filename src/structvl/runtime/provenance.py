"""Which code made a run: the package version and a hash of the package's source tree.

`code_fingerprint()` hashes every `.py` file of the structvl package and every `.yaml` under its `configs/`,
in sorted order of their paths relative to the package (each path and its bytes, length-prefixed, into one
sha256). A run records it in its `run_info.json` when it starts (`engine.pretrain.run_pretraining`), and a
finished run is reused (`structvl demo`) only while it matches: a table never mixes numbers made by two
versions of the code. The hash reads the files, not git, so it also sees uncommitted edits and works in an
installed copy without a repository.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import structvl

PACKAGE_ROOT = Path(structvl.__file__).resolve().parent


def source_files(root: Path | None = None) -> list[Path]:
    """The files the fingerprint covers, sorted: the package's .py files and its configs' .yaml files."""
    root = Path(root or PACKAGE_ROOT)
    files = [p for p in root.rglob("*.py") if "__pycache__" not in p.parts]
    files += list((root / "configs").rglob("*.yaml"))
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def code_fingerprint(root: Path | None = None) -> dict[str, str]:
    """{"version": the package version, "source_sha256": the hash of `source_files(root)`}."""
    root = Path(root or PACKAGE_ROOT)
    digest = hashlib.sha256()
    for path in source_files(root):
        name, data = path.relative_to(root).as_posix().encode(), path.read_bytes()
        for part in (name, data):
            digest.update(len(part).to_bytes(8, "little"))
            digest.update(part)
    return {"version": structvl.__version__, "source_sha256": digest.hexdigest()}
