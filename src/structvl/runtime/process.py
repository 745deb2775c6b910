"""Process-level settings made through the C library: a process that dies with the one that started it
(`die_with_parent`) and a heap that gives freed tensors back to the system (`return_freed_memory`). Linux/glibc
only; elsewhere both change nothing."""

from __future__ import annotations

import ctypes
import signal
import sys

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
M_MMAP_THRESHOLD = -3  # <malloc.h>


def _libc():
    return ctypes.CDLL(None, use_errno=True)


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
    if threshold_kib <= 0 or not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = _libc().mallopt
    except AttributeError:  # another C library (musl has no mallopt)
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, int(threshold_kib) * 1024))
