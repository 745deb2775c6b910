"""Peak memory of a whole job: every process it starts (loader workers, each demo run's own process), together.

    python benchmarks/peak_memory.py [--interval 0.5] [--trace FILE] -- structvl demo --out runs/demo

Runs the command and samples its process tree from /proc (Linux) every `interval` seconds. Prints the peak of
the summed PSS (proportional set size: a page shared by n processes counts 1/n in each, so the sum is what the
job takes from the machine; summed RSS counts copy-on-write pages of forked workers again in every worker) and
the largest single process's RSS, and exits with the command's exit code. `--trace FILE` also writes every
sample (seconds since start, summed PSS and largest RSS in MiB, processes), to see which phase holds the peak.
A sampler can miss a spike shorter than its interval; /usr/bin/time's "maximum resident set size" is exact but
covers one process only.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path


def children(pid: int) -> list[int]:
    """pid and its descendants, read from /proc/<pid>/task/*/children."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                todo += [int(c) for c in (task / "children").read_text().split()]
            except OSError:  # the process ended while we read it
                pass
    return out


def memory_kib(pid: int) -> tuple[int, int]:
    """(PSS, RSS) of one process in KiB; (0, 0) if it is gone."""
    values = {}
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("Pss", "Rss"):
                values[key] = int(rest.split()[0])
    except (OSError, ValueError, IndexError):
        return 0, 0
    return values.get("Pss", 0), values.get("Rss", 0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between samples")
    parser.add_argument("--trace", type=Path, help="write every sample to this file (tab-separated)")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the job, after --")
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("name the command to measure after --")
    if not Path("/proc/self/smaps_rollup").exists():
        print("peak_memory.py: /proc/<pid>/smaps_rollup is not readable here (Linux 4.14+ only)", file=sys.stderr)
        return 2
    trace = args.trace.open("w") if args.trace else None
    if trace:
        print("seconds\tpss_mib\tlargest_rss_mib\tprocesses", file=trace, flush=True)
    proc = subprocess.Popen(command)
    peak_pss = peak_rss = processes = 0
    start = time.perf_counter()
    while proc.poll() is None:
        tree = children(proc.pid)
        sizes = [memory_kib(p) for p in tree]
        pss = sum(s[0] for s in sizes)
        largest = max(s[1] for s in sizes)
        alive = sum(1 for s in sizes if s[0])
        if pss > peak_pss:
            peak_pss, processes = pss, alive
        peak_rss = max(peak_rss, largest)
        if trace:
            print(f"{time.perf_counter() - start:.1f}\t{pss // 1024}\t{largest // 1024}\t{alive}", file=trace,
                  flush=True)
        time.sleep(args.interval)
    gib = 1024 ** 2
    print(f"peak_memory: peak summed PSS {peak_pss / gib:.2f} GiB ({processes} processes at the peak), "
          f"largest single RSS {peak_rss / gib:.2f} GiB, {time.perf_counter() - start:.0f} s, "
          f"exit {proc.returncode}: {' '.join(command)}", flush=True)
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
