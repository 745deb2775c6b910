"""Gauntlet, data and checkpoints lost (issue 29): kills in the save window, full disks, broken `latest`
pointers and checkpoints, a run directory that holds another run, a corpus generated with other arguments.

Each test injects the fault and asserts the exact outcome (refused with the flag named, resumed from the right
step) and that nothing was lost: every file of the checkpoints (and corpora, and runs) present before the
fault is still there bit for bit (sha256), or, for the checkpoint being written, either its old or its new
complete copy is.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

import structvl.engine.checkpoint as ck
from structvl.config import load_config
from structvl.engine.checkpoint import (
    CheckpointError,
    CheckpointWriteError,
    find_resumable,
    latest_checkpoint,
    save_checkpoint,
)
from structvl.engine.pretrain import run_pretraining
from structvl.lab.synth.corpus import CorpusConflict, generate_corpus, structured_corpus

from helpers import TINY

pytestmark = pytest.mark.usefixtures("one_thread")


def hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(root).rglob("*")) if p.is_file()}


def only(files: dict[str, str], prefix: str) -> dict[str, str]:
    return {k: v for k, v in files.items() if k.startswith(prefix)}


def leftovers(run: Path) -> list[str]:
    return sorted(p.name for p in (run / "checkpoints").iterdir() if p.name.startswith(".") or p.name.endswith(".tmp"))


# ----------------------------------------------------------------------------- the save window
def save(run: Path, step: int, value: float, keep: int = 5) -> Path:
    """A checkpoint whose every tensor holds `value` (so a loaded copy tells which save it came from)."""
    module = {"model.w": torch.full((64,), value), "head.b": torch.full((8,), value)}
    state = {"step": step, "value": value, "optimizer": {"state": {0: {"exp_avg": torch.full((64,), value)}}}}
    return save_checkpoint(run, step, module, state, keep=keep)


def loaded(run: Path) -> tuple[int, float]:
    _, module, state = find_resumable(run)
    assert float(module["model.w"][0]) == state["value"]  # weights and state from the same save
    return state["step"], state["value"]


def kill_during(run: Path, step: int, value: float, fault, keep: int = 5) -> int:
    """Save in a forked child that `fault` (called there first) kills with os._exit(137) at some point of the
    save, as kill -9 would: no cleanup code runs. Returns the child's exit code."""
    pid = os.fork()
    if pid == 0:  # the child: install the fault, save, and if the fault never fired exit 0
        try:
            fault()
            save(run, step, value, keep)
        finally:
            os._exit(0)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def die():
    os._exit(137)


def kill_at_call(owner, name, nth=1, after=False, when=lambda *a, **k: True, truncate=False):
    """Replace owner.name by a wrapper that dies on its nth matching call (before it runs, or after)."""
    original, seen = getattr(owner, name), [0]

    def wrapper(*args, **kwargs):
        if when(*args, **kwargs):
            seen[0] += 1
            if seen[0] == nth:
                if not after:
                    die()
                original(*args, **kwargs)
                if truncate:  # a half-written file: cut it in two
                    path = Path(args[1])
                    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
                die()
        return original(*args, **kwargs)

    return lambda: setattr(owner, name, wrapper)


KILLS = {
    "half-written model.safetensors": lambda: kill_at_call(ck, "save_file", after=True, truncate=True)(),
    "after state.pt, before the manifest": lambda: kill_at_call(torch, "save", after=True)(),
    "complete temporary copy, nothing renamed": lambda: kill_at_call(os, "replace")(),
    "old copy moved aside, new not in place": lambda: kill_at_call(
        os, "replace", when=lambda s, d: ".tmp_step" in str(s) and not Path(d).name.startswith("."))(),
    "new copy in place, latest not yet updated": lambda: kill_at_call(
        os, "replace", when=lambda s, d: Path(d).name == "latest")(),
    "latest updated, old copy not yet deleted": lambda: kill_at_call(
        shutil, "rmtree", when=lambda p, **k: ".replaced_" in str(p))(),
    "pruning: renamed to .trash_, not deleted": lambda: kill_at_call(
        shutil, "rmtree", when=lambda p, **k: ".trash_" in str(p))(),
}


# (kill point, same step again?) -> (the hidden entries the kill leaves, whether the new copy is the one found)
AFTER_KILL = {
    ("half-written model.safetensors", False): ([".tmp_step_00000006"], False),
    ("half-written model.safetensors", True): ([".tmp_step_00000004"], False),
    ("after state.pt, before the manifest", False): ([".tmp_step_00000006"], False),
    ("after state.pt, before the manifest", True): ([".tmp_step_00000004"], False),
    ("complete temporary copy, nothing renamed", False): ([".tmp_step_00000006"], False),
    ("complete temporary copy, nothing renamed", True): ([".tmp_step_00000004"], False),
    ("old copy moved aside, new not in place", True): ([".replaced_step_00000004", ".tmp_step_00000004"], False),
    ("new copy in place, latest not yet updated", False): (["latest.tmp"], False),  # `latest` still names step 4
    ("new copy in place, latest not yet updated", True): ([".replaced_step_00000004", "latest.tmp"], True),
    ("latest updated, old copy not yet deleted", True): ([".replaced_step_00000004"], True),
    ("pruning: renamed to .trash_, not deleted", False): ([".trash_step_00000004"], True),
    ("pruning: renamed to .trash_, not deleted", True): ([".trash_step_00000002"], True),
}


@pytest.mark.parametrize("point, same_step", list(AFTER_KILL), ids=[f"{p} ({'same' if s else 'new'} step)"
                                                                    for p, s in AFTER_KILL])
def test_a_kill_anywhere_in_the_save_window_loses_nothing_but_that_save(tmp_path, point, same_step):
    run = tmp_path / "run"
    save(run, 2, 2.0)
    save(run, 4, 4.0)
    before = hashes(run / "checkpoints")
    step, value = (4, 40.0) if same_step else (6, 6.0)
    keep = 1 if point.startswith("pruning") else 5
    assert kill_during(run, step, value, KILLS[point], keep=keep) == 137  # the kill did land in the window
    hidden, new_found = AFTER_KILL[point, same_step]
    assert leftovers(run) == hidden
    found = latest_checkpoint(run)
    assert found is not None and ck.is_complete(found)
    assert loaded(run) == ((step, value) if new_found else (4, 4.0))
    in_place = ck.is_complete(run / "checkpoints" / f"step_{step:08d}") and not same_step
    assert in_place == (not same_step and (point.startswith("new copy in place") or point.startswith("pruning")))
    now = hashes(run / "checkpoints")
    if keep == 5:
        assert only(now, "step_00000002/") == only(before, "step_00000002/")
    if not new_found:  # the old copy is the one found: bit for bit what it was, where the kill left it
        kept = only(before, "step_00000004/")
        assert {k: now.get(k) or now.get(k.replace("step_", ".replaced_step_")) for k in kept} == kept
    # the next save cleans up after the killed one and everything loads
    save(run, 8, 8.0, keep=keep)
    assert leftovers(run) == [] and loaded(run) == (8, 8.0)
    if keep == 5:
        assert only(hashes(run / "checkpoints"), "step_00000002/") == only(before, "step_00000002/")
        second = ck.complete_checkpoints(run / "checkpoints")[1]  # the newest but step 8
        assert second.name == ("step_00000006" if in_place else "step_00000004")


# ----------------------------------------------------------------------------- a write that fails
def raise_enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


ck_save_file, path_write = ck.save_file, Path.write_text  # the originals, for the faults that pass some calls on
FAILURES = {
    "model.safetensors": lambda mp: mp.setattr(ck, "save_file", raise_enospc),
    "objectives.safetensors": lambda mp: mp.setattr(
        ck, "save_file", lambda t, path: raise_enospc() if "objectives" in path else ck_save_file(t, path)),
    "state.pt": lambda mp: mp.setattr(torch, "save", raise_enospc),
    "checkpoint.json": lambda mp: mp.setattr(
        Path, "write_text", lambda self, *a, **k: raise_enospc() if self.name == ck.MANIFEST else path_write(self, *a, **k)),
    "latest": lambda mp: mp.setattr(
        Path, "write_text", lambda self, *a, **k: raise_enospc() if self.name == "latest.tmp" else path_write(self, *a, **k)),
}


@pytest.mark.parametrize("same_step", [False, True], ids=["new step", "same step again"])
@pytest.mark.parametrize("failing", list(FAILURES))
def test_a_failed_write_leaves_no_temporary_copy_and_the_earlier_checkpoints_intact(tmp_path, monkeypatch, failing,
                                                                                 same_step):
    run = tmp_path / "run"
    save(run, 2, 2.0)
    save(run, 4, 4.0)
    before = hashes(run / "checkpoints")
    FAILURES[failing](monkeypatch)
    step = 4 if same_step else 6
    with pytest.raises(CheckpointWriteError, match=rf"could not write checkpoint step_0000000{step} .*No space left.*"
                                                   r"MiB free\); the checkpoints written before are intact "
                                                   r"\(latest complete: step_00000004\)"):
        save(run, step, 40.0 if same_step else 6.0)
    monkeypatch.undo()
    assert leftovers(run) == []
    now = hashes(run / "checkpoints")
    if failing == "latest":  # the new copy got in place before `latest` failed: complete, and `latest` unchanged
        assert (run / "checkpoints" / "latest").read_text() == "step_00000004"
        assert loaded(run) == (4, 4.0 if not same_step else 40.0)
        assert only(now, "step_00000002/") == only(before, "step_00000002/")
    else:
        assert now == before and loaded(run) == (4, 4.0)


def test_a_really_full_disk(tmp_path):
    """The same on a 1 MiB tmpfs that fills up (needs root; skipped elsewhere)."""
    mount = tmp_path / "small"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
                                           capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        run = mount / "run"
        save_checkpoint(run, 1, {"model.w": torch.ones(1000)}, {"step": 1, "value": 1.0})
        before = hashes(run / "checkpoints")
        for big in ({"model.w": torch.ones(400_000)}, {"model.w": torch.ones(10), "head": torch.ones(400_000)}):
            with pytest.raises(CheckpointWriteError, match="could not write checkpoint step_00000002"):
                save_checkpoint(run, 2, big, {"step": 2, "value": 2.0})  # 1.6 MB: model, then objectives full
            assert leftovers(run) == [] and hashes(run / "checkpoints") == before
        with pytest.raises(CheckpointWriteError, match="could not write checkpoint step_00000002 .*RuntimeError"):
            save_checkpoint(run, 2, {"model.w": torch.ones(10)}, {"step": 2, "big": torch.ones(400_000)})  # state.pt
        assert leftovers(run) == [] and hashes(run / "checkpoints") == before
        assert shutil.disk_usage(mount).free > 900_000  # the failed writer's blocks are released at once
        assert find_resumable(run)[2]["step"] == 1
        # room enough again: the failed writer's blocks were released, not held by its exception (checkpoint.py)
        save_checkpoint(run, 2, {"model.w": torch.ones(1000)}, {"step": 2, "value": 2.0})
        assert find_resumable(run)[2]["step"] == 2
    finally:  # lazily: a failed writer's file may still be open until its exception is collected
        subprocess.run(["umount", "--lazy", str(mount)], check=True)


# ----------------------------------------------------------------------------- pruning
def test_pruning_never_deletes_the_new_checkpoint_nor_a_later_step(tmp_path):
    """The reported loss: another run's later steps sorted after the new one, which pruning then deleted."""
    run = tmp_path / "run"
    for step in (100, 200):
        save(run, step, float(step))
    before = hashes(run / "checkpoints")
    save(run, 2, 2.0, keep=2)
    save(run, 4, 4.0, keep=2)
    save(run, 6, 6.0, keep=2)
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert names == ["latest", "step_00000004", "step_00000006", "step_00000100", "step_00000200"]
    assert (run / "checkpoints" / "latest").read_text() == "step_00000006" and loaded(run) == (6, 6.0)
    now = hashes(run / "checkpoints")
    assert {k: now[k] for k in before if k != "latest"} == {k: v for k, v in before.items() if k != "latest"}


# ----------------------------------------------------------------------------- resume: latest or checkpoints broken
def cfg(root, *extra):
    return load_config("demo", TINY + [f"data.root={root}", "train.precision=fp32", "train.checkpoint_every=2",
                                       "train.keep_checkpoints=10", *extra])


@pytest.fixture(scope="module")
def six_steps(tiny_corpus, tmp_path_factory):
    """A run with checkpoints at steps 2, 4 and 6."""
    run = tmp_path_factory.mktemp("six") / "run"
    run_pretraining(cfg(tiny_corpus, "train.max_steps=6"), run)
    return run


def break_latest_missing(c):
    (c / "latest").unlink()


def break_latest_dangling(c):
    (c / "latest").write_text("step_00000009")


def break_latest_garbage(c):
    (c / "latest").write_bytes(b"\xff\xfe\x00junk")


def break_step6_half_deleted(c):  # the old same-step save's window: rmtree got as far as state.pt
    (c / "step_00000006" / "state.pt").unlink()


def break_step6_truncated(c):
    f = c / "step_00000006" / "model.safetensors"
    f.write_bytes(f.read_bytes()[:100])


def break_step6_corrupt_same_size(c):  # sizes match its manifest, the header does not parse
    f = c / "step_00000006" / "model.safetensors"
    f.write_bytes(b"\x00" * f.stat().st_size)


def break_step6_legacy_half(c):  # a directory without manifest that lost state.pt
    (c / "step_00000006" / ck.MANIFEST).unlink()
    (c / "step_00000006" / "state.pt").unlink()


BREAKS = {  # -> (step resumed from, what the log says)
    "latest missing": (break_latest_missing, 6, "is missing or unreadable; using step_00000006"),
    "latest names a missing step": (break_latest_dangling, 6, "names step_00000009, which is missing or incomplete"),
    "latest unreadable": (break_latest_garbage, 6, "using step_00000006"),
    "newest half-deleted": (break_step6_half_deleted, 4, "names step_00000006, which is missing or incomplete"),
    "newest truncated": (break_step6_truncated, 4, "using step_00000004, the newest complete checkpoint"),
    "newest corrupt, sizes intact": (break_step6_corrupt_same_size, 4, "step_00000006 does not load"),
    "newest legacy directory without state.pt": (break_step6_legacy_half, 4, "using step_00000004"),
}


@pytest.mark.parametrize("name", list(BREAKS))
def test_resume_falls_back_to_the_newest_complete_checkpoint_and_says_so(six_steps, tiny_corpus, tmp_path, caplog,
                                                                         name):
    breaker, expected_step, said = BREAKS[name]
    run = tmp_path / "run"
    shutil.copytree(six_steps, run)
    breaker(run / "checkpoints")
    before = hashes(run / "checkpoints")
    with caplog.at_level(logging.INFO, logger="structvl"):
        run_pretraining(cfg(tiny_corpus, "train.max_steps=8"), run, resume=True)
    assert said in caplog.text
    assert f"at step {expected_step} " in caplog.text  # pretrain: "resumed RUN at step N (epoch E)"
    now = hashes(run / "checkpoints")
    for step in (2, 4):  # the good ones, bit for bit
        assert only(now, f"step_0000000{step}/") == only(before, f"step_0000000{step}/")
    assert find_resumable(run)[2]["step"] == 8 and leftovers(run) == []


@pytest.mark.parametrize("damage", ["truncated", "corrupt, sizes intact"])
def test_resume_with_no_loadable_checkpoint_is_one_line_and_loses_nothing(six_steps, tiny_corpus, tmp_path, capsys,
                                                                          damage):
    from structvl.cli import main

    run = tmp_path / "run"
    shutil.copytree(six_steps, run)
    for step in (2, 4, 6):
        f = run / "checkpoints" / f"step_{step:08d}" / "model.safetensors"
        f.write_bytes(f.read_bytes()[:100] if damage == "truncated" else b"\x00" * f.stat().st_size)
    before = hashes(run)
    with pytest.raises(CheckpointError, match="no checkpoint in .* can be loaded"):
        find_resumable(run)
    with pytest.raises(SystemExit) as done:
        main(["pretrain", "--config", "demo", "--out", str(run), "--resume", *TINY, f"data.root={tiny_corpus}",
              "--max-steps", "8"])
    err = capsys.readouterr().err
    assert done.value.code == 1 and "Traceback" not in err
    (line,) = [x for x in err.splitlines() if x.startswith("structvl pretrain:")]
    assert line.startswith(f"structvl pretrain: stopped: --resume: no checkpoint in {run / 'checkpoints'}")
    if damage == "truncated":  # no complete checkpoint: refused before anything is written
        assert "is complete; nothing was changed" in line and hashes(run) == before
    else:  # complete but unreadable: found on loading them, each named; the checkpoints never touched
        assert "step_00000006: " in line and "step_00000002: " in line
        assert only(hashes(run), "checkpoints/") == only(before, "checkpoints/")


# ----------------------------------------------------------------------------- a run directory that holds a run
def pretrain_cli(out: Path, corpus: Path, *flags: str) -> list[str]:
    return ["pretrain", "--config", "demo", "--out", str(out), *flags, *TINY, f"data.root={corpus}",
            "train.precision=fp32", "train.checkpoint_every=2", "train.keep_checkpoints=10"]


def test_a_run_directory_holding_another_run_is_refused_before_any_work(six_steps, tiny_corpus, tmp_path, capsys):
    from structvl.cli import main

    run = tmp_path / "run"
    shutil.copytree(six_steps, run)
    before = hashes(run)
    with pytest.raises(SystemExit) as done:
        main(pretrain_cli(run, tiny_corpus, "--max-steps", "2"))
    err = capsys.readouterr().err
    assert done.value.code == 2 and "Traceback" not in err
    (line,) = err.strip().splitlines()
    assert line.startswith(f"structvl pretrain: error: run directory {run} already holds a run (config.yaml, "
                           "checkpoints, metrics.jsonl")
    assert "pass --resume to continue it, or --overwrite to move it aside" in line
    assert hashes(run) == before  # config, metrics log and checkpoints untouched


def test_overwrite_moves_the_other_run_aside_bit_for_bit(six_steps, tiny_corpus, tmp_path, capsys):
    from structvl.cli import main

    run = tmp_path / "run"
    shutil.copytree(six_steps, run)
    before = hashes(run)
    with pytest.raises(SystemExit) as done:
        main(pretrain_cli(run, tiny_corpus, "--overwrite", "--max-steps", "2"))
    assert done.value.code == 0
    assert hashes(tmp_path / "run.replaced-1") == before  # the other run, whole
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["latest", "step_00000002"]
    assert find_resumable(run)[2]["step"] == 2
    with pytest.raises(SystemExit):  # a second overwrite picks the next free name
        main(pretrain_cli(run, tiny_corpus, "--overwrite", "--max-steps", "2"))
    assert (tmp_path / "run.replaced-2" / "checkpoints" / "step_00000002").is_dir()
    assert hashes(tmp_path / "run.replaced-1") == before


def test_resume_continues_the_run_in_the_directory(six_steps, tiny_corpus, tmp_path, caplog):
    run = tmp_path / "run"
    shutil.copytree(six_steps, run)
    before = hashes(run / "checkpoints")
    with caplog.at_level(logging.INFO, logger="structvl"):
        run_pretraining(cfg(tiny_corpus, "train.max_steps=8"), run, resume=True)
    assert "at step 6 " in caplog.text
    now = hashes(run / "checkpoints")
    assert {k: now[k] for k in before if k != "latest"} == {k: v for k, v in before.items() if k != "latest"}
    assert find_resumable(run)[2]["step"] == 8


def test_resuming_a_finished_run_resaves_its_last_step_safely(six_steps, tiny_corpus, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(six_steps, run)
    run_pretraining(cfg(tiny_corpus, "train.max_steps=6"), run, resume=True)
    assert leftovers(run) == [] and find_resumable(run)[2]["step"] == 6
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "latest", "step_00000002", "step_00000004", "step_00000006"]


def test_the_demo_resumes_only_a_run_of_its_own_config(six_steps, tiny_corpus):
    """The demo passes resume=same_config(...), overwrite=True: its own unfinished run continues, a run of
    another config is moved aside (the --overwrite path above)."""
    from structvl.engine.run_dir import same_config

    assert same_config(cfg(tiny_corpus, "train.max_steps=6"), six_steps)
    assert not same_config(cfg(tiny_corpus, "train.max_steps=7"), six_steps)
    assert not same_config(cfg(tiny_corpus, "train.max_steps=6"), six_steps / "nothing-here")


def test_out_that_is_a_file_is_refused(tiny_corpus, tmp_path, capsys):
    from structvl.cli import main

    out = tmp_path / "file"
    out.write_text("mine")
    with pytest.raises(SystemExit) as done:
        main(pretrain_cli(out, tiny_corpus, "--max-steps", "1"))
    assert done.value.code == 2 and "is a file; expected a directory" in capsys.readouterr().err
    assert out.read_text() == "mine"


# ----------------------------------------------------------------------------- a corpus with other arguments
SMALL = dict(num_clips=6, num_untrimmed=0, size=32, num_frames=4, workers=1, progress=False)


@pytest.fixture
def seed3(tmp_path):
    root = tmp_path / "corpus"
    generate_corpus(root, seed=3, holdout_compositions=True, **SMALL)
    return root


def test_a_corpus_with_other_arguments_is_refused_naming_them(seed3):
    before = hashes(seed3)
    with pytest.raises(CorpusConflict, match=r"other arguments: seed=3 \(asked: 0\), holdout_compositions=True "
                                             r"\(asked: False\); it is left as it is: pass overwrite=True"):
        generate_corpus(seed3, seed=0, **SMALL)
    assert hashes(seed3) == before
    assert generate_corpus(seed3, seed=3, holdout_compositions=True, **SMALL)["reused"]
    assert not generate_corpus(seed3, seed=0, overwrite=True, **SMALL)["reused"]  # told to: replaced
    assert structured_corpus(seed3, {}, use_existing=True)["seed"] == 0


def test_unfinished_corpora_and_foreign_files(tmp_path):
    root = tmp_path / "c"
    root.mkdir()
    (root / ".incomplete").write_text('{"num_clips": 9, "seed": 5}')  # another call's unfinished corpus
    with pytest.raises(CorpusConflict, match=r"unfinished corpus generated with other arguments: num_clips=9 "
                                             r"\(asked: 6\), seed=5 \(asked: 0\)"):
        generate_corpus(root, seed=0, **SMALL)
    foreign = tmp_path / "mine"
    (foreign / "videos").mkdir(parents=True)
    (foreign / "videos" / "holiday.mp4").write_bytes(b"precious")
    with pytest.raises(CorpusConflict, match=r"holds videos but no corpus manifest"):
        generate_corpus(foreign, seed=0, **SMALL)
    assert (foreign / "videos" / "holiday.mp4").read_bytes() == b"precious"
    # our own unfinished write of the same arguments is simply redone: the generator is deterministic
    same = tmp_path / "same"
    generate_corpus(same, seed=0, **SMALL)
    first = hashes(same)
    (same / "corpus.json").unlink()
    args = {"num_clips": 6, "seed": 0, "holdout_compositions": False, "size": 32, "num_frames": 4, "fps": 8,
            "num_untrimmed": 0}
    import json
    (same / ".incomplete").write_text(json.dumps(args))
    assert not generate_corpus(same, seed=0, **SMALL)["reused"] and hashes(same) == first


def test_synth_and_demo_refuse_another_corpus_in_one_line(seed3, tmp_path, capsys):
    from structvl.cli import main

    before = hashes(seed3)
    with pytest.raises(SystemExit) as done:
        main(["synth", "--out", str(seed3), "--clips", "6", "--untrimmed", "0", "--size", "32", "--frames", "4"])
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert done.value.code == 2 and "seed=3 (asked: 0)" in line and line.endswith("pass --overwrite to replace it")
    with pytest.raises(SystemExit) as done:
        main(["demo", "--data", str(seed3), "--out", str(tmp_path / "demo"), "--recipes", "baseline"])
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert done.value.code == 2 and line.startswith("structvl demo: error:")
    assert "num_clips=6 (asked: 2000), seed=3 (asked: 0)" in line
    assert "pass --use-existing-data to run the demo on it, or --overwrite-data to replace it" in line
    assert hashes(seed3) == before and not (tmp_path / "demo").exists()


def test_demo_runs_on_a_corpus_generated_with_other_arguments(seed3, tmp_path, monkeypatch):
    import structvl.lab.demo as demo
    from structvl.cli import main

    class Reached(Exception):
        pass

    def fake_pretrain_and_evaluate(cfg, run_dir, **kwargs):
        raise Reached(cfg.data.root)

    monkeypatch.setattr(demo, "pretrain_and_evaluate", fake_pretrain_and_evaluate)
    # The demo runs each recipe in a spawned process, which would not see the stub: run it in this one.
    monkeypatch.setattr(demo, "isolated_run",
                        lambda config, overrides, cfg, run_dir, data, *rest: demo.recipe_run(cfg, run_dir, data))
    before = hashes(seed3)
    with pytest.raises(Reached) as reached:
        main(["demo", "--data", str(seed3), "--out", str(tmp_path / "demo"), "--recipes", "baseline",
              "--use-existing-data"])
    assert str(reached.value) == str(seed3) and hashes(seed3) == before
