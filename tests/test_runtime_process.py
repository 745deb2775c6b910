"""runtime/process.py: a process that dies with its parent, a heap that gives freed tensors back, loader workers
that fork, the allocator a process starts with."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from structvl.runtime import process
from structvl.runtime.process import allocator_env, allocator_in_use, choose_allocator, find_allocator, preloaded

STUCK_WORKER = """
import os, sys, time
import torch
from torch.utils.data import DataLoader, Dataset
from structvl.runtime.process import die_with_parent

class Stuck(Dataset):  # the first item at once, then each takes a minute (a decoder stuck on a file)
    def __len__(self):
        return 100

    def __getitem__(self, i):
        open(os.path.join(sys.argv[1], f"worker-{os.getpid()}"), "w").close()
        if i > 0:
            time.sleep(60)
        return torch.zeros(4)

loader = iter(DataLoader(Stuck(), batch_size=1, num_workers=1, worker_init_fn=die_with_parent))
next(loader)
print("ready", flush=True)
time.sleep(120)
"""


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/status").read_text().split("State:")[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_loader_worker_dies_with_its_parent(tmp_path):
    """A worker busy in __getitem__ when its parent is killed would go on (torch's own check runs between
    items): `die_with_parent` has the kernel kill it with the parent."""
    parent = subprocess.Popen([sys.executable, "-c", STUCK_WORKER, str(tmp_path)], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert parent.stdout.readline().strip() == "ready"
        (marker,) = tmp_path.glob("worker-*")
        worker = int(marker.name.split("-")[1])
        assert _running(worker)
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
        deadline = time.monotonic() + 10  # the worker's item takes 60 s: without the fix it would still run
        while _running(worker) and time.monotonic() < deadline:
            time.sleep(0.05)
        alive = _running(worker)
        if alive:
            os.kill(worker, signal.SIGKILL)
        assert not alive
    finally:
        parent.kill()


# Frees 256 MiB of 512 KiB tensors interleaved with small live ones, after a 1 MiB tensor came and went (which
# raises glibc's adjustable threshold above 512 KiB); prints how much of it the resident set kept (MiB).
FRAGMENTED_HEAP = """
import sys
import torch
from structvl.runtime.process import return_freed_memory

def rss_mib():
    return int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20

print(return_freed_memory(int(sys.argv[1])))
torch.ones(2**18)  # 1 MiB, freed at once
big, small = [], []
for _ in range(512):
    big.append(torch.ones(2**17))  # 512 KiB, touched
    small.append(torch.ones(16))  # lives on, between the big ones
before = rss_mib()
del big
print(before - rss_mib())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_return_freed_memory_gives_a_fragmented_heap_back():
    def kept_and_returned(threshold_kib: int) -> tuple[bool, float]:
        out = subprocess.run([sys.executable, "-c", FRAGMENTED_HEAP, str(threshold_kib)], capture_output=True,
                             text=True, check=True).stdout.split()
        return out[0] == "True", float(out[1])

    set_, returned = kept_and_returned(128)
    assert set_ and returned > 0.9 * 256
    # glibc as it is (0 leaves it): the freed blocks stay in the heap behind the small live ones
    set_, returned = kept_and_returned(0)
    assert not set_ and returned < 0.25 * 256


# The same fragmented heap with malloc as it is; then trim_heap; prints the allocator and what each step gave back
# (MiB).
TRIMMED_HEAP = FRAGMENTED_HEAP.replace("print(return_freed_memory(int(sys.argv[1])))\n", "").replace(
    "print(before - rss_mib())", """freed = before - rss_mib()
from structvl.runtime.process import allocator_in_use, trim_heap
print(allocator_in_use(), freed, trim_heap(), before - rss_mib())""")


@pytest.mark.parametrize("allocator", ["glibc", "tcmalloc", "jemalloc"])
def test_trim_heap_gives_back_what_freed_tensors_left_between_live_ones(allocator):
    if not sys.platform.startswith("linux") or (allocator != "glibc" and find_allocator(allocator) is None):
        pytest.skip(f"{allocator} is not installed")
    out = subprocess.run([sys.executable, "-c", TRIMMED_HEAP], env=allocator_env(allocator), capture_output=True,
                         text=True, check=True).stdout.split()
    used, freed_alone, released, after_trim = out[0], float(out[1]), out[2] == "True", float(out[3])
    assert used == allocator
    if allocator != "jemalloc":  # jemalloc gives most back by itself; glibc and tcmalloc keep it (the control)
        assert freed_alone < 0.25 * 256
    assert released and after_trim > 0.9 * 256


# A process whose default start method is spawn (as the demo's run process is) builds a loader as the trainer
# does; each worker reports whether it sees a value the parent set at run time, which a forked worker inherits
# and a spawned one (which imports everything anew) does not.
WORKER_PROBE = """
import multiprocessing, sys
import torch
from structvl.data.dataset import build_dataloader
from structvl.runtime.process import worker_start_method


class Probe(torch.utils.data.Dataset):
    def __len__(self):
        return 2

    def __getitem__(self, i):
        return getattr(sys.modules["__main__"], "SET_AT_RUN_TIME", "absent")


def as_list(items):
    return items


if __name__ == "__main__":
    multiprocessing.set_start_method("spawn")
    SET_AT_RUN_TIME = "inherited"
    method = worker_start_method() if sys.argv[1] == "trainer" else None
    loader = build_dataloader(Probe(), as_list, batch_size=2, shuffle=False, num_workers=1, seed=0,
                              drop_last=False, start_method=method)
    print(next(iter(loader))[0])
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fork")
def test_the_trainers_loader_forks_its_workers_even_where_the_default_is_spawn(tmp_path):
    script = tmp_path / "probe.py"
    script.write_text(WORKER_PROBE)

    def seen(how: str) -> str:
        return subprocess.run([sys.executable, str(script), how], capture_output=True, text=True,
                              check=True).stdout.strip()

    assert seen("trainer") == "inherited"
    assert seen("default") == "absent"  # the control: the spawned worker imported everything anew


def test_allocator_env_puts_the_allocator_first_and_glibc_takes_every_allocator_out(monkeypatch):
    monkeypatch.setattr(process, "find_allocator", lambda name: f"lib{name}-found.so.1")
    env = {"LD_PRELOAD": "/opt/lib/libjemalloc.so.2:/x/libasan.so", "HOME": "/h"}
    assert allocator_env("tcmalloc", env) == {"LD_PRELOAD": "libtcmalloc-found.so.1 /x/libasan.so", "HOME": "/h"}
    assert allocator_env("glibc", env) == {"LD_PRELOAD": "/x/libasan.so", "HOME": "/h"}
    assert allocator_env("glibc", {"LD_PRELOAD": "libtcmalloc_minimal.so.4"}) == {}
    assert env["LD_PRELOAD"].startswith("/opt")  # the given environment is not changed


def test_choose_allocator_auto_takes_tcmalloc_only_where_installed(monkeypatch):
    monkeypatch.setattr(process, "find_allocator", lambda name: None)
    assert choose_allocator("auto") == "glibc" and choose_allocator("glibc") == "glibc"
    with pytest.raises(ValueError, match="'tcmalloc' is not installed .allowed: auto, glibc;"):
        choose_allocator("tcmalloc")
    monkeypatch.setattr(process, "find_allocator", lambda name: "lib.so" if name == "tcmalloc" else None)
    assert choose_allocator("auto") == "tcmalloc"
    with pytest.raises(ValueError, match="allowed: auto, glibc, tcmalloc;"):
        choose_allocator("jemalloc")


def report_allocator(queue) -> None:
    queue.put(allocator_in_use())


@pytest.mark.skipif(find_allocator("tcmalloc") is None, reason="libtcmalloc-minimal4 is not installed")
def test_a_process_started_within_preloaded_runs_with_that_allocator():
    context = multiprocessing.get_context("spawn")

    def started(allocator: str) -> str:
        queue = context.Queue()
        child = context.Process(target=report_allocator, args=(queue,))
        with preloaded(allocator):
            child.start()
        child.join()
        return queue.get(timeout=60)

    before = os.environ.get("LD_PRELOAD")
    assert started("tcmalloc") == "tcmalloc"
    assert os.environ.get("LD_PRELOAD") == before  # restored
    assert started("glibc") == "glibc"  # the control


@pytest.mark.skipif(find_allocator("tcmalloc") is None, reason="libtcmalloc-minimal4 is not installed")
def test_glibc_settings_say_they_were_not_made_under_another_allocator():
    probe = "from structvl.runtime.process import return_freed_memory as r; print(r(1024))"

    def made(allocator: str) -> str:
        return subprocess.run([sys.executable, "-c", probe], env=allocator_env(allocator), capture_output=True,
                              text=True, check=True).stdout.strip()

    assert made("tcmalloc") == "False"  # tcmalloc's own mallopt would have answered 1
    assert made("glibc") == "True"
