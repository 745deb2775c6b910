"""Process-level settings made through the C library: a process that dies with the one that started it
(`die_with_parent`), a heap that gives freed tensors back to the system as they are freed
(`return_freed_memory`) or at a phase's end (`trim_heap`), loader workers that share the process's pages
(`worker_start_method`), and the memory allocator a process starts with (`allocator_env`, `allocator_in_use`).
Linux/glibc only; elsewhere they change nothing."""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import os
import signal
import sys
from contextlib import contextmanager
from pathlib import Path

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
M_MMAP_THRESHOLD = -3  # <malloc.h>


def _libc():
    return ctypes.CDLL(None, use_errno=True)


def _glibc_malloc(name: str):
    """glibc's malloc function `name` (mallopt, malloc_trim) on Linux; None elsewhere, under another C library
    (musl has neither) or in a process started with another allocator (tcmalloc's mallopt is a no-op that
    reports success)."""
    if not sys.platform.startswith("linux") or allocator_in_use() != "glibc":
        return None
    return getattr(_libc(), name, None)


def die_with_parent(worker_id: int = 0) -> None:
    """A loader worker's `worker_init_fn` (and the first call of a demo's run process): on Linux, have the kernel
    SIGKILL this process when the one that started it exits. A worker whose parent is killed (SIGKILL, the
    out-of-memory killer, a second Ctrl-C during shutdown) can otherwise block for ever flushing its result queue
    to a pipe nobody reads, holding the memory it shares with the dead parent: an interrupted `structvl demo` left
    such a worker holding 6 GB. (Linux sends it when the *thread* that started the process exits; every loader
    here is iterated from the main thread.) Elsewhere a no-op."""
    if sys.platform.startswith("linux"):
        _libc().prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)


def return_freed_memory(threshold_kib: int) -> bool:
    """Have glibc's malloc serve every allocation of at least `threshold_kib` KiB from pages of its own (mmap),
    which go back to the system the moment the tensor is freed; 0 leaves malloc as it is. Returns whether it
    was set (False: 0, or not glibc).

    Why: glibc starts that threshold at 128 KiB but raises it to the size of each mmapped block freed, up to
    32 MiB. After a training step's first backward frees its activations, nearly every later tensor comes from
    the heap instead, and a heap gives memory back only from its top: the process keeps what its largest step
    freed, fragmented, and a step's new tensors often do not fit the holes. Fixing the threshold (mallopt turns
    the adjustment off) keeps the resident set at what is live, for a page fault per fresh page
    (docs/findings.md, "Memory of one step"; `benchmarks/step_memory.py` measures both)."""
    mallopt = _glibc_malloc("mallopt") if threshold_kib > 0 else None
    return mallopt is not None and bool(mallopt(M_MMAP_THRESHOLD, int(threshold_kib) * 1024))


def trim_heap() -> bool:
    """Collect unreachable objects, then give every free page of the heap back to the system: glibc's
    `malloc_trim(0)` (which also releases free pages between live chunks, not only the heap's top), tcmalloc's
    `MallocExtension_ReleaseFreeMemory()`, or jemalloc's purge of every arena, whichever allocator this process
    runs with. Returns whether it was done.

    Why: a phase that ends (training, one evaluation task) leaves the heap at the size of its largest step,
    fragmented; the next phase would otherwise run on top of it. Called between phases, not between steps: every
    page given back is faulted in again when the heap grows back, which slows a training step measurably
    (docs/findings.md, "Memory of the whole demo")."""
    gc.collect()
    allocator = allocator_in_use()
    if allocator == "tcmalloc":  # gperftools' C API: every free page of its page heap back to the system
        release = getattr(_libc(), "MallocExtension_ReleaseFreeMemory", None)
        if release is not None:
            release()
        return release is not None
    if allocator == "jemalloc":  # purge every arena's unused dirty pages (4096: MALLCTL_ARENAS_ALL)
        mallctl = getattr(_libc(), "mallctl", None)
        return mallctl is not None and mallctl(b"arena.4096.purge", None, None, None, 0) == 0
    if allocator != "glibc":  # "system": not Linux
        return False
    malloc_trim = getattr(_libc(), "malloc_trim", None)  # the allocator is known: no second read of the maps
    return malloc_trim is not None and bool(malloc_trim(0))


def worker_start_method() -> str | None:
    """The start method for a training loader's workers: "fork" on Linux, so that a worker shares the process's
    pages (imports, dataset, tokenizer) instead of importing everything again, even in a process that was itself
    started by `spawn` (the demo's run process, whose default start method spawn then becomes; measured in
    docs/findings.md, "Memory of the whole demo"). None elsewhere: the platform's default (macOS forks
    unsafely). The trainer's loader starts its workers before the first step, when the process holds little it
    will write to again; a worker forked from a process that has grown keeps the pages the process later
    rewrites, so evaluation loaders keep the default."""
    return "fork" if sys.platform.startswith("linux") else None


# The allocators a process can start with in place of glibc's malloc, and the library names that provide each
# (gperftools' minimal tcmalloc first: Debian's libtcmalloc-minimal4, without the heap profiler).
ALLOCATORS = {"tcmalloc": ("tcmalloc_minimal", "tcmalloc"), "jemalloc": ("jemalloc",)}


def find_allocator(name: str) -> str | None:
    """The installed library (e.g. "libtcmalloc_minimal.so.4", as the dynamic loader finds it) of allocator
    `name` (a key of ALLOCATORS); None where it is not installed or not on Linux."""
    if not sys.platform.startswith("linux"):
        return None
    return next(filter(None, map(ctypes.util.find_library, ALLOCATORS[name])), None)


def allocator_env(name: str, env: dict[str, str] | None = None) -> dict[str, str]:
    """`env` (default: this process's environment) for a process that starts with allocator `name` ("glibc"
    or a key of ALLOCATORS): its library first in LD_PRELOAD, or, for glibc, every allocator of ALLOCATORS
    taken out of it. An allocator replaces malloc only from a process's start, so it is chosen by whoever
    starts the process (the demo for its run processes; `LD_PRELOAD=libtcmalloc_minimal.so.4 structvl pretrain
    ...` for a user's run); loader workers forked from that process keep it. Raises ValueError when `name` is
    not installed.

    Why: glibc keeps the memory a training step frees, fragmented, and a run's resident set grows over its
    steps; tcmalloc reuses it (docs/findings.md, "Allocators"; `benchmarks/step_memory.py --allocators`)."""
    env = dict(os.environ if env is None else env)
    kept = [entry for entry in env.get("LD_PRELOAD", "").replace(":", " ").split()
            if not any(lib in Path(entry).name for libs in ALLOCATORS.values() for lib in libs)]
    if name != "glibc":
        library = find_allocator(name)
        if library is None:
            raise ValueError(f"allocator {name!r} is not installed")
        kept.insert(0, library)
    if kept:
        env["LD_PRELOAD"] = " ".join(kept)
    else:
        env.pop("LD_PRELOAD", None)
    return env


def choose_allocator(name: str) -> str:
    """"auto": tcmalloc where it is installed, else glibc; any other name as it is, once checked: ValueError
    (one line, naming what is allowed) for a name that is neither "glibc" nor an installed key of ALLOCATORS."""
    if name == "auto":
        return "tcmalloc" if find_allocator("tcmalloc") else "glibc"
    if name != "glibc" and (name not in ALLOCATORS or find_allocator(name) is None):
        installed = [n for n in ALLOCATORS if find_allocator(n)]
        raise ValueError(f"{name!r} is not installed (allowed: auto, glibc{''.join(', ' + n for n in installed)}; "
                         "Debian packages libtcmalloc-minimal4 and libjemalloc2 install the others)")
    return name


@contextmanager
def preloaded(name: str):
    """Within it, processes this one starts (multiprocessing's spawn, subprocess) start with allocator `name`
    (`allocator_env` made this process's environment, then restored)."""
    before = os.environ.get("LD_PRELOAD")
    after = allocator_env(name).get("LD_PRELOAD")
    try:
        _set_preload(after)
        yield
    finally:
        _set_preload(before)


def _set_preload(value: str | None) -> None:
    if value is None:
        os.environ.pop("LD_PRELOAD", None)
    else:
        os.environ["LD_PRELOAD"] = value


def allocator_in_use() -> str:
    """The allocator this process runs with: a key of ALLOCATORS when its library is mapped (preloaded),
    "glibc" on Linux otherwise, "system" elsewhere."""
    maps = Path("/proc/self/maps")
    if not maps.exists():
        return "system"
    text = maps.read_text()
    return next((name for name, libs in ALLOCATORS.items() if any(f"lib{lib}." in text for lib in libs)), "glibc")
