"""Benchmark: the whole test suite as ``make test`` runs it (pytest -n 2 --dist loadfile), with its
wall time and the CPU time of every process it started.

The CPU time is that of the whole process tree: pytest, its xdist workers, every command a test
runs, and the processes those leave behind (Ray's, TensorFlow's), which this script adopts as a
Linux child subreaper so that their CPU is counted when they end. CPU time depends less on what
else the machine runs than wall time does: with 2 cores, the wall time is at least CPU / 2.

Target (issue 18): `make test` under 6 minutes on 2 cores. Environment: BENCH_SUITE_ARGS (extra
pytest arguments, e.g. a file list instead of ``tests/``), BENCH_SUITE_WORKERS (2).

    .venv/bin/python bench/test_suite.py
"""
import ctypes
import os
import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PR_SET_CHILD_SUBREAPER = 36          # linux/prctl.h
TARGET_S = 6 * 60


def adopt_orphans() -> bool:
    """Become a child subreaper: orphaned descendants are re-parented to this process (Linux)."""
    try:
        return ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def reap(timeout: float = 30.0) -> int:
    """Wait for the adopted descendants (their CPU counts only once reaped); returns how many
    were still running at the timeout."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return 0
        if pid == 0:
            if time.monotonic() > deadline:
                return len([p for p in Path("/proc").iterdir() if p.name.isdigit()
                            and _parent(p) == os.getpid()])
            time.sleep(0.2)


def _parent(proc: Path) -> int | None:
    try:
        return int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def main() -> int:
    workers = os.environ.get("BENCH_SUITE_WORKERS", "2")
    extra = shlex.split(os.environ.get("BENCH_SUITE_ARGS", "")) or ["tests/"]
    # the Makefile's `test` target, word for word but for the worker count
    cmd = [sys.executable, "-m", "pytest", *extra, "-q", "-rfE", "--durations=15", "-n", workers,
           "--dist", "loadfile", "--no-loadscope-reorder"]
    adopted = adopt_orphans()
    print("running:", " ".join(cmd), flush=True)
    t0 = time.monotonic()
    code = subprocess.run(cmd, cwd=ROOT).returncode
    wall = time.monotonic() - t0
    left = reap() if adopted else 0
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = usage.ru_utime + usage.ru_stime
    print(f"\ntest suite: wall {wall / 60:.1f} min ({wall:.0f} s), CPU {cpu:.0f} s "
          f"(user {usage.ru_utime:.0f} s, sys {usage.ru_stime:.0f} s) over {workers} workers; "
          f"pytest exit {code}")
    if not adopted:
        print("  (no child subreaper on this system: CPU of processes orphaned by the tests is not counted)")
    if left:
        print(f"  ({left} descendant processes still running after 30 s: their CPU is not counted)")
    print(f"  target: wall < {TARGET_S / 60:.0f} min on 2 cores: {'MET' if wall < TARGET_S else 'NOT MET'}"
          f" (CPU / 2 = {cpu / 2 / 60:.1f} min, the least wall time 2 cores allow)")
    return code


if __name__ == "__main__":
    sys.exit(main())
