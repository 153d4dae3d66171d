"""One gate trial: prices, scores, the backtest engine with the live rules, the verdict statistics.

Used by tests/test_gate_properties.py (and its long version, ``make gate-properties``). A trial
is (case, seed):

* data ``sample0``: ``sample_data.simulate_symbol`` with ``phi = 0`` (no predictable component),
  fresh prices for every seed; ``sample03``: the documented ``SAMPLE_AR_COEF`` (0.3);
  ``real``: the S&P 500 and NASDAQ daily series shipped in ``arch.data`` (1999-2018), a window
  starting at a seeded random session.
* scores ``sym``: N(0, 1) noise; ``long``: N(0.5, 1) noise (a long bias); ``info``: the true
  conditional expectation of the next move in the sample data, ``phi * log_return /
  volatility_20`` (score units: the day's expected move, as signals.py defines them).

The first ``TRAIN_SESSIONS`` sessions play the training period (their mean target is the
constant baseline); the rest is evaluated: signals.score_predictions -> backtest.run_engine with
LivePolicy (next-open fills, paper costs) -> buy_and_hold -> skill_stats.evaluate_evidence.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import backtest_engine as backtest  # noqa: E402  (the engine and its live-rules policy)
import constants as C  # noqa: E402
import data_collection as dc  # noqa: E402
import market_calendar  # noqa: E402
import model_management as mm  # noqa: E402
import sample_data  # noqa: E402
import signals  # noqa: E402
import skill_stats  # noqa: E402

TRAIN_SESSIONS = 120
SMALL = {"symbols": 4, "sessions": 520}           # null cases: 200+ seeds must stay fast
FULL = {"symbols": 10, "sessions": None}          # the informative case: the whole sample history


def _sample(seed: int, phi: float, size: dict) -> pd.DataFrame:
    dates = market_calendar.sessions(C.SAMPLE_START, C.SAMPLE_END)
    if size["sessions"]:
        dates = dates[:size["sessions"]]
    return pd.concat([sample_data.simulate_symbol(f"S{i:02d}", dates, seed=seed, phi=phi)
                      for i in range(size["symbols"])], ignore_index=True)


_REAL = None


def _real(seed: int, sessions: int = SMALL["sessions"]) -> pd.DataFrame:
    global _REAL
    if _REAL is None:
        from arch.data import nasdaq, sp500
        frames = []
        for name, mod in (("SPX", sp500), ("NDX", nasdaq)):
            d = mod.load().reset_index()
            frames.append(pd.DataFrame({"Date": pd.to_datetime(d["Date"]), "Symbol": name, "Open": d["Open"],
                                        "High": d["High"], "Low": d["Low"], "Close": d["Close"],
                                        "Volume": d["Volume"].astype(float)}))
        _REAL = pd.concat(frames, ignore_index=True)
    dates = np.sort(_REAL["Date"].unique())
    start = np.random.default_rng([seed, 7]).integers(0, len(dates) - sessions)
    span = dates[start:start + sessions]
    return _REAL[_REAL["Date"].isin(span)].reset_index(drop=True)


def trial(data: str, scores: str, seed: int, n_trials: int = 1) -> dict:
    """One trial; ``n_trials``: the configurations the deflated Sharpe counts (10: a 10-configuration sweep)."""
    if data == "real":
        raw = _real(seed)
    else:
        raw = _sample(seed, 0.0 if data == "sample0" else C.SAMPLE_AR_COEF, FULL if scores == "info" else SMALL)
    f = mm.sort_features(dc.build_features(raw))
    y = mm.compute_targets(f)
    rng = np.random.default_rng([seed, 1])
    if scores == "sym":
        score = rng.standard_normal(len(f))
    elif scores == "long":
        score = rng.standard_normal(len(f)) + 0.5
    else:
        score = C.SAMPLE_AR_COEF * f["log_return"].to_numpy() / f["volatility_20"].to_numpy()
    sessions = np.sort(f["Date"].unique())
    test = (f["Date"] >= sessions[TRAIN_SESSIONS]).to_numpy()
    frame = f.loc[test, ["Date", "Symbol", "Open", "Close", "volatility_20"]].copy()
    frame["predicted_diff"] = score[test] * frame["Close"] * frame["volatility_20"]
    scored = signals.score_predictions(frame)
    market = backtest.market_from_frames(frame, scored)
    result = backtest.run_engine(market, backtest.LivePolicy())
    bench = backtest.buy_and_hold(market)
    ok = np.isfinite(y[test])
    ev = skill_stats.evaluate_evidence(y[test][ok], score[test][ok], float(np.nanmean(y[~test])),
                                       frame["Date"].to_numpy()[ok], result.equity, bench.to_numpy(),
                                       n_trials=n_trials)
    trading = [c["passed"] for c in ev["conditions"] if c["name"] in ("alpha_vs_buy_and_hold",)]
    return {"data": data, "scores": scores, "seed": seed, "n_trials": n_trials, "passed": ev["passed"],
            "trading_passed": all(trading), "conditions": {c["name"]: c["passed"] for c in ev["conditions"]},
            "sharpe_strategy": ev["sharpe_strategy"], "sharpe_benchmark": ev["sharpe_benchmark"],
            "psr_excess": ev["psr_excess"], "dsr_excess": ev["dsr_excess"],
            "alpha_p": ev["alpha"]["p_value"], "alpha_t": ev["alpha"]["t"], "dsr_alpha": ev["dsr_alpha"],
            "dsr_next_day": ev["dsr_next_day"]}


def trial_args(args) -> dict:
    return trial(*args)


def run_many(cases, workers: int | None = None) -> list[dict]:
    """Trials in parallel processes (spawned: no inherited TensorFlow or Ray state)."""
    import multiprocessing as mp
    import os
    from concurrent.futures import ProcessPoolExecutor
    workers = workers or os.cpu_count() or 1
    if workers == 1 or len(cases) < 4:
        return [trial(*c) for c in cases]
    with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
        return list(pool.map(trial_args, cases, chunksize=4))
