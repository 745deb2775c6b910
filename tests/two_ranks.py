"""Run a function on 2 gloo ranks in spawned processes (the tests' stand-in for `torchrun`).

`target(rank, world, result_path)` must be a module-level function (spawn pickles it by name). It runs with
the process group initialised and destroyed around it; rank 0 writes what the test checks to `result_path`
(a file, not a Queue: tensors sent through a Queue die with the process that shared them).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import torch.multiprocessing as mp


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _init_and_run(rank: int, world: int, port: int, target, result_path: str) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        target(rank, world, result_path)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def run_on_ranks(target, result_path: Path, world: int = 2, timeout: float = 120) -> None:
    """Start `world` ranks, wait for them, and fail with their exit codes if rank 0 wrote no result."""
    ctx = mp.get_context("spawn")
    port = _free_port()
    procs = [ctx.Process(target=_init_and_run, args=(r, world, port, target, str(result_path)))
             for r in range(world)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=timeout)
    assert Path(result_path).exists(), f"rank 0 wrote no result (exit codes {[p.exitcode for p in procs]})"
