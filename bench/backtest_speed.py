"""Benchmark: the backtest engine alone, and the whole backtest with inference.

1. Engine: 500 symbols x 10 years of synthetic daily prices (``sample_data.simulate_symbol``) and
   synthetic predictions (today's return over its 20-day volatility x 0.8: about 40 % of
   symbol-days are BUY or SELL, a book that trades every day), through
   ``backtest_engine.market_from_frames`` + ``backtest_engine.run_engine`` with the live rules
   (``LivePolicy``: ``order_planning.plan_orders`` on the live ``RiskManager``) and the paper
   broker's costs. Target: at most 0.8 s. For scale it also times the same engine without the
   rules (``FixedTargetPolicy`` replaying the live run's own positions: the same fills, no
   decisions), best of BENCH_REPEAT (3) runs each, so a busy machine shows in both figures.
2. Full run: ``python backtest.py`` as the cron user runs it (a fresh process: imports, model load,
   data load, NumPy inference, engine, benchmark, charts, reports, state DB) for the default
   universe over the last 5 years of the sample data, in a temporary TRADING_HOME with a tiny
   model trained there first (``train_model.py --profile tiny``; its time is not counted).
   ``--in-sample`` is passed because 5 years reach into the model's training data. Target: under 15 s.

Environment: BENCH_SYMBOLS (500), BENCH_YEARS (10), BENCH_REPEAT (3), BENCH_SKIP_FULL=1 to run only
part 1.
"""
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

import backtest_engine as engine  # noqa: E402
import backtest_metrics as metrics  # noqa: E402
import market_calendar  # noqa: E402
import sample_data  # noqa: E402

N_SYMBOLS = int(os.environ.get("BENCH_SYMBOLS", 500))
YEARS = int(os.environ.get("BENCH_YEARS", 10))
REPEAT = int(os.environ.get("BENCH_REPEAT", 3))


def engine_bench() -> float:
    dates = market_calendar.sessions(f"{2024 - YEARS + 1}-01-02", "2024-12-31")
    t0 = time.perf_counter()
    prices = pd.concat([sample_data.simulate_symbol(f"S{i:03d}", dates) for i in range(N_SYMBOLS)],
                       ignore_index=True)
    # A predictor with the skill the sample data allows (its returns are AR(1), phi = 0.2): the
    # score is today's return in units of the 20-day volatility, scaled so that about 40 % of
    # symbol-days are BUY or SELL -- a busy book that trades every day and never halts.
    close = prices.pivot(index="Date", columns="Symbol", values="Close")
    logret = np.log(close).diff()
    vol = logret.rolling(20).std()
    score_w = (0.8 * logret / vol)
    signals = pd.DataFrame({"score": score_w.stack(), "volatility_20": vol.stack()}).reset_index()
    signals = signals.dropna()
    signals["signal"] = np.where(signals["score"] >= 0.6, "BUY",
                                 np.where(signals["score"] <= -0.6, "SELL", "HOLD"))
    active = (signals["signal"] != "HOLD").mean()
    print(f"generated {len(prices):,} price rows and predictions ({N_SYMBOLS} symbols x {len(dates)} "
          f"sessions, {active:.0%} BUY/SELL) in {time.perf_counter() - t0:.1f} s (not timed)")

    best, cpu, result = float("inf"), float("inf"), None
    for _ in range(REPEAT):
        c0, t0 = time.process_time(), time.perf_counter()
        market = engine.market_from_frames(prices, signals)
        c1, t1 = time.process_time(), time.perf_counter()
        result = engine.run_engine(market)
        c2, t2 = time.process_time(), time.perf_counter()
        if c2 - c0 < cpu:
            cpu, cpu_arrays, cpu_replay = c2 - c0, c1 - c0, c2 - c1
        if t2 - t0 < best:
            best, arrays, replay = t2 - t0, t1 - t0, t2 - t1
    bench = engine.buy_and_hold(market)
    t3 = time.perf_counter()
    analysis = metrics.analyse(result, market, bench)
    t4 = time.perf_counter()
    s = analysis["strategy"]
    # what the replay decided, to compare across changes of the engine: the fills must not move
    fills_sha = hashlib.sha256(json.dumps(result.trades, sort_keys=True, default=str).encode()).hexdigest()
    print(f"engine with the live rules, best of {REPEAT}: wall {best:.2f} s (arrays {arrays:.2f} + replay "
          f"{replay:.2f}); CPU {cpu:.2f} s (arrays {cpu_arrays:.2f} + replay {cpu_replay:.2f}); "
          f"metrics {t4 - t3:.2f} s")
    print(f"  {len(result.trades):,} fills (sha256 {fills_sha[:16]}), {s['trades']:,} round trips, final equity "
          f"{result.equity[-1]:,.2f}, total return {s['total_return']:.1%}, {result.rejections:,} risk "
          f"rejections, {len(result.halts)} halts, candidate list widened {result.widened} times")
    # the same fills without the rules: the live run's end-of-day positions as fixed targets
    held = np.zeros(market.shape, dtype=np.int64)
    index = {sym: i for i, sym in enumerate(market.symbols)}
    day_of = {str(d.date()): k for k, d in enumerate(market.dates)}
    for t in result.trades:
        held[day_of[t["date"]]:, index[t["symbol"]]] = t["position_after"]
    targets = np.vstack([held[1:], held[-1:]])          # decided after day t's close, filled on day t+1
    bare, bare_cpu = float("inf"), float("inf")
    for _ in range(REPEAT):
        c0, t0 = time.process_time(), time.perf_counter()
        engine.run_engine(engine.market_from_frames(prices, signals), engine.FixedTargetPolicy(targets))
        bare, bare_cpu = min(bare, time.perf_counter() - t0), min(bare_cpu, time.process_time() - c0)
    print(f"engine without the rules (same book, fixed targets): {bare:.2f} s (CPU {bare_cpu:.2f} s); "
          f"the rules cost {best - bare:.2f} s ({best / bare:.1f}x)")
    print(f"target engine with the live rules <= 0.8 s -> {'PASS' if best <= 0.8 else 'MISS'} ({best:.2f} s wall; "
          f"CPU {cpu:.2f} s {'PASS' if cpu <= 0.8 else 'MISS'}: on a busy machine judge by CPU)")
    return best


def full_bench() -> float | None:
    py = sys.executable
    with tempfile.TemporaryDirectory() as home:
        env = dict(os.environ, TRADING_HOME=home, DATA_SOURCE="sample", TF_CPP_MIN_LOG_LEVEL="3",
                   TRADING_CONFIG_DIR=str(Path(home) / "keys"))
        t0 = time.perf_counter()
        for cmd in ([py, "data_collection.py", "--force"], [py, "train_model.py", "--profile", "tiny"]):
            r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
            if r.returncode != 0:
                print(f"full run skipped: {' '.join(cmd[1:])} failed (rc {r.returncode}):\n"
                      f"{(r.stderr or r.stdout)[-800:]}")
                return None
        print(f"setup (sample data + tiny model, not timed): {time.perf_counter() - t0:.1f} s")
        end = pd.Timestamp(sample_data.C.SAMPLE_END)
        start = (end - pd.DateOffset(years=5)).strftime("%Y-%m-%d")
        cmd = [py, "backtest.py", "--in-sample", "--start", start, "--no-progress", "--no-record"]
        t0 = time.perf_counter()
        r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        print(r.stdout.strip())
        if r.returncode not in (0, 1):
            print(f"full run failed (rc {r.returncode}): {r.stderr[-800:]}")
            return None
        rep = json.loads((Path(home) / "reports" / "latest_backtest.json").read_text())
        print(f"full run: {wall:.2f} s wall for the process ({len(rep['parameters']['symbols'])} symbols, "
              f"{rep['start']} .. {rep['end']}); inside: {rep['timings_s']}")
        print(f"target full run < 15 s -> {'PASS' if wall < 15 else 'MISS'} ({wall:.2f} s)")
        return wall


if __name__ == "__main__":
    engine_bench()
    if os.environ.get("BENCH_SKIP_FULL") != "1":
        full_bench()
