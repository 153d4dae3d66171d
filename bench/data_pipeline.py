"""Benchmark: build_features for 500 symbols x 10 years of daily sample data.

Prints wall time and peak memory (resident set of the process, and the Python-level peak of
the feature step). Target: under 10 s and under 2 GB on 2 cores.
"""
import os
import resource
import sys
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pandas as pd  # noqa: E402

import data_collection  # noqa: E402
import market_calendar  # noqa: E402
import sample_data  # noqa: E402

N_SYMBOLS = int(os.environ.get("BENCH_SYMBOLS", 500))
dates = market_calendar.sessions("2015-01-02", "2024-12-31")
t0 = time.perf_counter()
raw = pd.concat([sample_data.simulate_symbol(f"S{i:03d}", dates) for i in range(N_SYMBOLS)],
                ignore_index=True)
gen_s = time.perf_counter() - t0
print(f"generated {len(raw):,} rows ({N_SYMBOLS} symbols x {len(dates)} sessions) in {gen_s:.1f} s")

tracemalloc.start()
t0 = time.perf_counter()
features = data_collection.build_features(raw)
wall = time.perf_counter() - t0
_, peak = tracemalloc.get_traced_memory()
tracemalloc.stop()
rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2
print(f"build_features: {wall:.2f} s wall, {len(features):,} rows out")
print(f"peak memory: {peak / 1024 ** 3:.2f} GB traced in build_features, {rss_gb:.2f} GB max RSS of the process")
print(f"target: < 10 s and < 2 GB -> {'PASS' if wall < 10 and rss_gb < 2 else 'MISS'}")
