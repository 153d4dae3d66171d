"""Benchmark: the whole walk-forward (``./run_backtest.sh --walk-forward``) on the default universe
over the sample history with the tiny training profile, with 1 worker and with all local cores.

Each run is a fresh process exactly as a user starts it (Ray starts in-process, TensorFlow is
imported in each worker), in a temporary TRADING_HOME with the sample data. Prints the wall time
of each, the speedup, the mean time per fold, and whether both runs gave the same verdict and
statistics (they must: the result does not depend on the number of workers).

Targets (issue 11): the whole walk-forward under 5 minutes on 2 cores; speedup with 2 workers at
least 1.6x. Environment: BENCH_WF_PROFILE (tiny), BENCH_WF_WORKERS (all cores).
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROFILE = os.environ.get("BENCH_WF_PROFILE", "tiny")
WORKERS = int(os.environ.get("BENCH_WF_WORKERS", os.cpu_count() or 2))


def run(home: Path, workers: int) -> tuple[float, dict, int]:
    env = dict(os.environ, TRADING_HOME=str(home), DATA_SOURCE="sample", TF_CPP_MIN_LOG_LEVEL="3")
    env.pop("RAY_ADDRESS", None)
    t0 = time.perf_counter()
    done = subprocess.run([str(ROOT / "run_backtest.sh"), "--walk-forward", "--profile", PROFILE,
                           "--workers", str(workers), "--no-record", "--no-progress"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=3600)
    wall = time.perf_counter() - t0
    if done.returncode not in (0, 1):
        sys.exit(f"walk-forward failed (exit {done.returncode}): {done.stderr[-1500:]}")
    report = json.loads((home / "reports" / "latest_walkforward.json").read_text())
    return wall, report, done.returncode


def main() -> int:
    home = Path(tempfile.mkdtemp(prefix="bench-wf-"))
    try:
        shutil.copy(ROOT / "selected_stocks.txt", home / "selected_stocks.txt")
        env = dict(os.environ, TRADING_HOME=str(home), DATA_SOURCE="sample")
        subprocess.run([sys.executable, str(ROOT / "data_collection.py"), "--force"], cwd=ROOT, env=env,
                       check=True, capture_output=True)
        print(f"cores: {os.cpu_count()}; profile {PROFILE}; sample data, default universe")
        results = {}
        for workers in (1, WORKERS):
            wall, report, code = run(home, workers)
            results[workers] = (wall, report)
            folds = report["folds"]
            print(f"{workers} worker(s): {wall:6.1f} s wall ({len(folds)} folds, mean {sum(f['seconds'] for f in folds) / len(folds):.1f} s "
                  f"per fold in its worker, folds phase {report['timings_s']['folds']:.1f} s), verdict "
                  f"{'PASS' if report['passed'] else 'FAIL'} (exit {code})")
        (w1, r1), (wn, rn) = results[1], results[WORKERS]
        same = json.dumps(r1["overall"], sort_keys=True) == json.dumps(rn["overall"], sort_keys=True) and \
            json.dumps([{k: v for k, v in f.items() if k != "seconds"} for f in r1["folds"]], sort_keys=True) == \
            json.dumps([{k: v for k, v in f.items() if k != "seconds"} for f in rn["folds"]], sort_keys=True)
        print(f"speedup with {WORKERS} workers: {w1 / wn:.2f}x (target >= 1.6x with 2); whole run with {WORKERS} "
              f"workers {wn:.0f} s (target < 300 s on 2 cores); identical results: {same}")
        return 0 if same else 1
    finally:
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
