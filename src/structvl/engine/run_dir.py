"""A run directory holds one run: starting another there is refused unless the caller says what to do.

Writing a new run into a directory that holds another one overwrote its config, appended to its metrics log
and - the old run's later step numbers sorting after the new ones - pruned the new checkpoint at once. So:

* a directory that holds none of a run's files (`RUN_FILES`) is used as it is;
* `resume=True` continues the run in it (from its newest loadable checkpoint, `checkpoint.find_resumable`;
  when it has checkpoints but none is complete, `CheckpointError` at once, before anything is written);
* `overwrite=True` moves the old run aside, renamed to `<dir>.replaced-<n>` beside it, and starts anew there.
  Nothing is deleted: a run's checkpoints can cost GPU-days, and a rename on the same filesystem is instant
  and free, so deleting it is left to the user, who is told where it went;
* otherwise `ConfigError`, naming the directory, what it holds and both flags, before any work starts.

`run_info.json` records which code made the run (`runtime.provenance.code_fingerprint`: package version and
source hash) when it starts, and which code resumed it when that was other code; `same_code` tells a caller that
reuses finished runs (`structvl demo`) whether the current code made it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from omegaconf import OmegaConf

from structvl.config import ConfigError, RunConfig, resolved_yaml
from structvl.engine.checkpoint import CheckpointError, has_checkpoints, latest_checkpoint
from structvl.runtime.provenance import code_fingerprint

log = logging.getLogger("structvl")

# What `structvl pretrain` writes into its run directory; any of them there means the directory holds a run.
RUN_FILES = ("config.yaml", "checkpoints", "metrics.jsonl", "metrics.json", "tensorboard", "knowledge_vocab.json",
             "run_info.json")
RUN_INFO = "run_info.json"


def run_files(run_dir: Path) -> list[str]:
    """The run files already in `run_dir` (empty when it is absent or holds no run)."""
    run_dir = Path(run_dir)
    return [name for name in RUN_FILES if (run_dir / name).exists()]


def check_run_dir(run_dir: Path, resume: bool = False, overwrite: bool = False,
                  flags: tuple[str, str] = ("--resume", "--overwrite")) -> str:
    """What starting a run in `run_dir` does: "new" (nothing there), "resume" or "replace" (move the old run
    aside); raises ConfigError when it holds a run and neither `resume` nor `overwrite` is set. Reads only,
    so every rank can call it before the main one changes anything. `flags`: how the caller spells the two
    options, for the message."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"run directory {run_dir}: is a file, not a directory")
    found = run_files(run_dir)
    if not found:
        return "new"
    if resume:
        if has_checkpoints(run_dir) and latest_checkpoint(run_dir, quiet=True) is None:
            raise CheckpointError(f"--resume: no checkpoint in {run_dir / 'checkpoints'} is complete; nothing "
                                  "was changed")
        return "resume"
    if overwrite:
        return "replace"
    raise ConfigError(f"run directory {run_dir} already holds a run ({', '.join(found)}); pass {flags[0]} to "
                      f"continue it, or {flags[1]} to move it aside (to {aside_path(run_dir)}) and start anew")


def aside_path(run_dir: Path) -> Path:
    """The first free `<dir>.replaced-<n>` beside `run_dir`."""
    run_dir = Path(run_dir).resolve()
    n = 1
    while run_dir.with_name(f"{run_dir.name}.replaced-{n}").exists():
        n += 1
    return run_dir.with_name(f"{run_dir.name}.replaced-{n}")


def prepare_run_dir(run_dir: Path, action: str) -> Path | None:
    """Carry out `check_run_dir`'s decision (main rank only): create the directory, moving an old run aside
    first for "replace". Returns where the old run went, if it moved."""
    run_dir = Path(run_dir)
    moved = None
    if action == "replace":
        moved = aside_path(run_dir)
        run_dir.resolve().rename(moved)
        log.warning("the run that was in %s is now in %s (delete it yourself once it is no longer needed)",
                    run_dir, moved)
    run_dir.mkdir(parents=True, exist_ok=True)
    return moved


def same_config(cfg: RunConfig, run_dir: Path) -> bool:
    """Whether `run_dir` holds a run whose saved config.yaml is `cfg` (fully resolved)."""
    path = Path(run_dir) / "config.yaml"
    return path.exists() and OmegaConf.create(resolved_yaml(cfg)) == OmegaConf.load(path)


def record_code(run_dir: Path, resumed: bool = False) -> dict:
    """Record the current code in `run_dir/run_info.json` (main rank): {"code": fingerprint} for a new run; a
    resumed run made by other code also lists the resuming code under "resumed_by". Returns the record."""
    path = Path(run_dir) / RUN_INFO
    current = code_fingerprint()
    info = json.loads(path.read_text(encoding="utf-8")) if resumed and path.exists() else {}
    if "code" not in info:
        info["code"] = current
    elif current != info["code"] and current not in info.setdefault("resumed_by", []):
        info["resumed_by"].append(current)
    path.write_text(json.dumps(info, indent=2), encoding="utf-8")
    return info


def same_code(run_dir: Path) -> bool:
    """Whether the current code made the run in `run_dir`, alone: its run_info.json names this package version
    and source hash and no other code resumed it (a run without the record was made by older code)."""
    path = Path(run_dir) / RUN_INFO
    if not path.exists():
        return False
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False
    return info.get("code") == code_fingerprint() and not info.get("resumed_by")
