"""Process-level settings made through the C library: a process that dies with the one that started it
(`die_with_parent`), a heap that gives freed tensors back to the system as they are freed
(`return_freed_memory`) or at a phase's end (`trim_heap`), and loader workers that share the process's pages
(`worker_start_method`). Linux/glibc only; elsewhere they change nothing."""

from __future__ import annotations

import ctypes
import gc
import signal
import sys

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
M_MMAP_THRESHOLD = -3  # <malloc.h>


def _libc():
    return ctypes.CDLL(None, use_errno=True)


def _glibc_malloc(name: str):
    """glibc's malloc function `name` (mallopt, malloc_trim) on Linux; None elsewhere or under another C library
    (musl has neither)."""
    if not sys.platform.startswith("linux"):
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
    """Collect unreachable objects, then give every free page of the heap back to the system (glibc's
    `malloc_trim(0)`, which also releases free pages between live chunks, not only the heap's top). Returns
    whether pages were released.

    Why: a phase that ends (training, one evaluation task) leaves the heap at the size of its largest step,
    fragmented; the next phase would otherwise run on top of it. Called between phases, not between steps: every
    page given back is faulted in again when the heap grows back, which slows a training step measurably
    (docs/findings.md, "Memory of the whole demo")."""
    gc.collect()
    malloc_trim = _glibc_malloc("malloc_trim")
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
