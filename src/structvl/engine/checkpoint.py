"""Checkpoints that survive crashes and never unpickle arbitrary objects.

A checkpoint is a directory `step_000123/` holding
  model.safetensors   the model weights (safetensors: no code execution on load)
  state.pt            optimizer, scheduler, grad scaler, step, epoch, data position, every RNG state,
                      saved with plain tensors/containers only and loaded with `weights_only=True`.
The directory is written under a temporary name and renamed into place, and `latest` (a text file naming
the newest directory) is replaced atomically last: a crash at any point leaves the previous checkpoint
intact and `latest` pointing at a complete one.
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from structvl.config import load_config
from structvl.models.video_text import build_model


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


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


def save_checkpoint(run_dir: Path, step: int, module_state: dict[str, torch.Tensor], train_state: dict,
                    keep: int = 2) -> Path:
    """Write `run_dir/checkpoints/step_XXXXXX/` atomically and point `latest` at it; prune to `keep`.

    `module_state` is the PretrainingModule's full state dict: keys under "model." go to model.safetensors
    (prefix stripped: what evaluation and fine-tuning load), the objectives' own parameters (prediction
    heads, ...) to objectives.safetensors (what `--resume` needs besides the model).
    """
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:08d}"
    tmp = root / f".tmp_step_{step:08d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    model_part = {k[len("model."):]: v for k, v in module_state.items() if k.startswith("model.")}
    other_part = {k: v for k, v in module_state.items() if not k.startswith("model.")}
    save_file(_tensors_for_saving(model_part), str(tmp / "model.safetensors"))
    if other_part:
        save_file(_tensors_for_saving(other_part), str(tmp / "objectives.safetensors"))
    torch.save(train_state, tmp / "state.pt")
    if final.exists():  # re-saving the same step (e.g. after resume): replace the old one
        shutil.rmtree(final)
    os.replace(tmp, final)
    _atomic_write_text(root / "latest", final.name)
    if keep > 0:
        done = sorted(p for p in root.glob("step_*") if p.is_dir())
        for old in done[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint directory of a run (or the directory itself if it is one)."""
    run_dir = Path(run_dir)
    if (run_dir / "model.safetensors").exists():
        return run_dir
    pointer = run_dir / "checkpoints" / "latest"
    if pointer.exists():
        ckpt = run_dir / "checkpoints" / pointer.read_text().strip()
        if (ckpt / "model.safetensors").exists():
            return ckpt
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
        raise FileNotFoundError(f"no checkpoint with a config.yaml found at {path}")
    # The run's weights replace the init checkpoints, which need not be on disk any more.
    cfg = load_config(run_dir / "config.yaml", check_init=False)
    model = build_model(cfg.model, load_pretrained=False)
    load_model_weights(model, ckpt)
    return model, cfg, run_dir
