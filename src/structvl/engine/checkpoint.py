"""Checkpoints that survive crashes, never unpickle arbitrary objects, and are never lost.

A checkpoint is a directory `step_000123/` holding
  model.safetensors   the model weights (safetensors: no code execution on load)
  state.pt            optimizer, scheduler, grad scaler, step, epoch, data position, every RNG state,
                      saved with plain tensors/containers only and loaded with `weights_only=True`
  checkpoint.json     the size of every other file, written last: a directory with it and those sizes is complete.
The rules, each against a way a checkpoint was lost before:
* The directory is written under a temporary name (`.tmp_step_*`) and renamed into place; `latest` (a text
  file naming the newest directory) is replaced atomically last. A write that fails (disk full) removes its
  temporary directory and raises `CheckpointWriteError`; one killed mid-write leaves it, and the next save
  removes it, so stale copies never fill the disk.
* Saving a step that already exists moves the old copy aside (`.replaced_step_*`) only once the new one is
  complete, renames the new one in, and deletes the old copy last; if a kill lands between the two renames,
  the old copy is still found (and put back by the next save).
* Weights or optimizer state that hold a NaN or inf are never written (`NonFiniteCheckpointError`).
* Pruning (`keep`) only removes complete checkpoints older than the one just written (renamed to `.trash_*`
  first, so a half-deleted directory never looks like a checkpoint); a newer step directory is left alone.
* `latest_checkpoint` falls back to the newest complete `step_*` when `latest` is missing or names an
  incomplete directory, and says so; `find_resumable` also skips checkpoints whose files fail to load and
  raises `CheckpointError` when checkpoints exist but none loads, so a resume never silently starts at 0.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from structvl.config import ConfigError, load_config
from structvl.models.video_text import build_model
from structvl.runtime.errors import RunStopped
from structvl.runtime.nonfinite import all_finite, nonfinite_names

log = logging.getLogger("structvl")

MANIFEST = "checkpoint.json"
_STEP = re.compile(r"^(?:\.replaced_)?step_(\d+)$")


class CheckpointError(RunStopped):
    """No checkpoint of a run can be loaded, though some exist."""


class CheckpointWriteError(RunStopped):
    """A checkpoint could not be written (e.g. the disk is full); the earlier ones are intact."""


class NonFiniteCheckpointError(RunStopped):
    """Refused to save weights or optimizer state holding a NaN or inf."""


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def rng_state() -> dict:
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"key": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "gauss": float(np_state[4])},
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _tensors_for_saving(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # safetensors refuses tensors that share storage (tied weights); clone to be safe and contiguous.
    return {k: v.detach().cpu().contiguous().clone() for k, v in state.items()}


def _tensors_in(obj):
    """Every tensor inside nested dicts / lists / tuples (an optimizer's state)."""
    if torch.is_tensor(obj):
        yield obj
    elif isinstance(obj, dict):
        for value in obj.values():
            yield from _tensors_in(value)
    elif isinstance(obj, (list, tuple)):
        for value in obj:
            yield from _tensors_in(value)


def check_finite(step: int, module_state: dict[str, torch.Tensor], train_state: dict, root: Path) -> None:
    """Raise NonFiniteCheckpointError when a weight or an optimizer state tensor holds a NaN or inf."""
    if all_finite(module_state.values()) and all_finite(_tensors_in(train_state.get("optimizer", {}))):
        return
    names = nonfinite_names(module_state) or ["the optimizer state"]
    kept = latest_checkpoint(root.parent, quiet=True)
    raise NonFiniteCheckpointError(
        f"refusing to save step {step}: {', '.join(names)} hold NaN or inf values; the last checkpoint "
        f"({kept.name if kept else 'none'}) is kept as it was")


def save_checkpoint(run_dir: Path, step: int, module_state: dict[str, torch.Tensor], train_state: dict,
                    keep: int = 2) -> Path:
    """Write `run_dir/checkpoints/step_XXXXXXXX/` atomically and point `latest` at it; prune to `keep`.

    `module_state` is the PretrainingModule's full state dict: keys under "model." go to model.safetensors
    (prefix stripped: what evaluation and fine-tuning load), the objectives' own parameters (prediction
    heads, ...) to objectives.safetensors (what `--resume` needs besides the model). See the module docstring
    for what a crash or a failed write at any point leaves.
    """
    root = Path(run_dir) / "checkpoints"
    check_finite(step, module_state, train_state, root)
    root.mkdir(parents=True, exist_ok=True)
    _clean_leftovers(root)
    final = root / f"step_{step:08d}"
    tmp, aside = root / f".tmp_{final.name}", root / f".replaced_{final.name}"
    failure = None
    try:
        tmp.mkdir()
        model_part = {k[len("model."):]: v for k, v in module_state.items() if k.startswith("model.")}
        other_part = {k: v for k, v in module_state.items() if not k.startswith("model.")}
        save_file(_tensors_for_saving(model_part), str(tmp / "model.safetensors"))
        if other_part:
            save_file(_tensors_for_saving(other_part), str(tmp / "objectives.safetensors"))
        torch.save(train_state, tmp / "state.pt")
        sizes = {p.name: p.stat().st_size for p in sorted(tmp.iterdir())}
        (tmp / MANIFEST).write_text(json.dumps({"step": step, "files": sizes}), encoding="utf-8")
        if final.exists():  # the same step again (resuming a finished run): the old copy goes aside first
            os.replace(final, aside)
        os.replace(tmp, final)
        _atomic_write_text(root / "latest", final.name)
    except (OSError, SafetensorError, RuntimeError) as e:  # what a full or failing disk raises from each writer
        # Only its text is kept: the exception's frames hold the failed writer's open file (torch.save's on a
        # full disk), whose deleted blocks would stay allocated, the disk as full for the next attempt, for as
        # long as the exception lives; dropped here, the file closes when this block ends.
        failure = f"{type(e).__name__}: {_first_line(e)}"
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if aside.exists():  # the old copy of this step: redundant once the new one is in place, else it goes back
            if is_complete(final):
                shutil.rmtree(aside, ignore_errors=True)
            else:
                os.replace(aside, final)
    if failure is not None:
        kept = latest_checkpoint(run_dir, quiet=True)
        raise CheckpointWriteError(
            f"could not write checkpoint {final.name} in {root} ({failure}; "
            f"{shutil.disk_usage(root).free / 2**20:.0f} MiB free); the checkpoints written before are intact "
            f"(latest complete: {kept.name if kept else 'none'})")
    if keep > 0:
        older = [c for c in complete_checkpoints(root) if _step_of(c) < step and not c.name.startswith(".")]
        for old in older[keep - 1:]:
            _remove(old)
    return final


def _first_line(error: BaseException) -> str:
    return (str(error).splitlines() or [repr(error)])[0]


def _step_of(path: Path) -> int:
    return int(_STEP.match(path.name).group(1))


def _remove(path: Path) -> None:
    """Delete a directory so that a kill half-way never leaves something that looks like a checkpoint."""
    trash = path.with_name(f".trash_{path.name}")
    os.replace(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


def _clean_leftovers(root: Path) -> None:
    """What a killed save or prune left: temporary and trashed directories go; an old copy moved aside whose
    replacement never arrived goes back in place."""
    for path in root.glob(".tmp_step_*"):
        shutil.rmtree(path, ignore_errors=True)
    for path in root.glob(".trash_*"):
        shutil.rmtree(path, ignore_errors=True)
    for path in root.glob(".replaced_step_*"):
        final = root / path.name[len(".replaced_"):]
        if is_complete(final):
            shutil.rmtree(path, ignore_errors=True)
        else:
            if final.exists():
                _remove(final)
            os.replace(path, final)


def is_complete(ckpt: Path) -> bool:
    """Whether a checkpoint directory holds every file its manifest lists, at the listed sizes. Directories
    written before manifests existed count as complete when model.safetensors and state.pt are both there."""
    ckpt = Path(ckpt)
    try:
        manifest = json.loads((ckpt / MANIFEST).read_text(encoding="utf-8"))
        return all((ckpt / name).stat().st_size == size for name, size in manifest["files"].items())
    except FileNotFoundError:
        if (ckpt / MANIFEST).exists():
            return False  # a listed file is missing
        return all((ckpt / name).is_file() and (ckpt / name).stat().st_size > 0
                   for name in ("model.safetensors", "state.pt"))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def complete_checkpoints(root: Path) -> list[Path]:
    """The complete checkpoint directories under `root` (a run's checkpoints/), newest step first; an old copy
    moved aside by an interrupted same-step save counts when its step has no complete directory."""
    found: dict[int, Path] = {}
    for path in sorted(Path(root).glob("*step_*")):
        match = _STEP.match(path.name)
        if not match or not path.is_dir() or not is_complete(path):
            continue
        step = int(match.group(1))
        if step not in found or path.name.startswith("step_"):
            found[step] = path
    return [found[step] for step in sorted(found, reverse=True)]


def has_checkpoints(run_dir: Path) -> bool:
    """Whether the run directory holds anything that is or was meant to be a checkpoint."""
    root = Path(run_dir) / "checkpoints"
    return (root / "latest").exists() or any(_STEP.match(p.name) for p in root.glob("*step_*"))


def latest_checkpoint(run_dir: Path, quiet: bool = False) -> Path | None:
    """The newest complete checkpoint directory of a run (or the directory itself if it is one): the one
    `latest` names, else - saying so unless `quiet` - the newest complete `step_*`."""
    run_dir = Path(run_dir)
    if (run_dir / "model.safetensors").exists():
        return run_dir
    return next(iter(_candidates(run_dir, quiet)), None)


def _candidates(run_dir: Path, quiet: bool = False) -> list[Path]:
    """Complete checkpoints in the order to try them: the one `latest` names, then newest step first."""
    root = Path(run_dir) / "checkpoints"
    complete = complete_checkpoints(root)
    pointer = root / "latest"
    try:
        named = root / pointer.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        named = None
    if named is not None and named in complete:
        return [named] + [c for c in complete if c != named]
    if complete and not quiet:
        why = (f"names {named.name}, which is missing or incomplete" if named is not None
               else "is missing or unreadable")
        log.warning("%s %s; using %s, the newest complete checkpoint", pointer, why, complete[0].name)
    return complete


def find_resumable(run_dir: Path) -> tuple[Path, dict[str, torch.Tensor], dict] | None:
    """(checkpoint, module state, train state) of the newest checkpoint that loads, trying `latest` first and
    saying which failed; None when the run has no checkpoint at all. Raises CheckpointError when checkpoints
    exist but none of them loads: a resume never silently starts from step 0."""
    failed = []
    for ckpt in _candidates(run_dir):
        try:
            module_state, train_state = load_module_state(ckpt), load_train_state(ckpt)
        except Exception as e:  # noqa: BLE001 - any unreadable file (safetensors, pickle, zip) means: try the next
            log.warning("checkpoint %s does not load (%s); trying an older one", ckpt, _first_line(e))
            failed.append(f"{ckpt.name}: {_first_line(e)}")
            continue
        if failed:
            log.warning("resuming from %s, the newest checkpoint that loads", ckpt.name)
        return ckpt, module_state, train_state
    if failed or has_checkpoints(run_dir):
        detail = "; ".join(failed) or "every step_* directory is incomplete"
        raise CheckpointError(f"--resume: no checkpoint in {Path(run_dir) / 'checkpoints'} can be loaded "
                              f"({detail}); nothing was changed")
    return None


def load_model_weights(model: torch.nn.Module, ckpt_dir: Path, strict: bool = True) -> None:
    """Load model.safetensors into a VideoTextModel (evaluation, fine-tuning)."""
    state = load_file(str(Path(ckpt_dir) / "model.safetensors"))
    model.load_state_dict(state, strict=strict)


def load_module_state(ckpt_dir: Path) -> dict[str, torch.Tensor]:
    """The PretrainingModule's full state dict back from model.safetensors + objectives.safetensors."""
    ckpt_dir = Path(ckpt_dir)
    state = {f"model.{k}": v for k, v in load_file(str(ckpt_dir / "model.safetensors")).items()}
    if (ckpt_dir / "objectives.safetensors").exists():
        state.update(load_file(str(ckpt_dir / "objectives.safetensors")))
    return state


def load_train_state(ckpt_dir: Path) -> dict:
    return torch.load(Path(ckpt_dir) / "state.pt", map_location="cpu", weights_only=True)


def load_run_model(checkpoint: str | Path):
    """(model, config, run directory) of a saved run: the model rebuilt from the run's config.yaml with the newest
    checkpoint's weights. `checkpoint`: a run directory or one of its `step_*` directories."""
    path = Path(checkpoint)
    run_dir = path if (path / "config.yaml").exists() else path.parent.parent
    ckpt = latest_checkpoint(path)
    if ckpt is None or not (run_dir / "config.yaml").exists():
        raise ConfigError(f"--checkpoint {path}: no run (a checkpoint with a config.yaml) found there")
    # The run's weights replace the init checkpoints, which need not be on disk any more.
    cfg = load_config(run_dir / "config.yaml", check_init=False)
    model = build_model(cfg.model, load_pretrained=False)
    load_model_weights(model, ckpt)
    return model, cfg, run_dir
