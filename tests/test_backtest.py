"""Backtest: hand-computed cases, metrics against empyrical, no look-ahead, the paper broker's own
ledger, the candidate pruning against a full RiskManager call, exit codes and the go-live lookup."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import backtest as bt
import constants as C
import market_calendar
import sample_data
import state_db

ROOT = Path(__file__).resolve().parent.parent
INITIAL = 100_000.0


# ----------------------------------------------------------------------------- helpers
def make_market(open_, close, signal=None, score=None, vol=None, start="2024-01-02", symbols=None):
    open_ = np.atleast_2d(np.asarray(open_, float))
    close = np.atleast_2d(np.asarray(close, float))
    if open_.shape[0] == 1 and close.shape[0] == 1 and open_.shape[1] > 1 and symbols is None:
        open_, close = open_.T, close.T                       # one symbol given as a flat list
    n, m = close.shape
    dates = market_calendar.sessions(start, pd.Timestamp(start) + pd.Timedelta(days=3 * n + 10))[:n]
    symbols = symbols or [f"S{i}" for i in range(m)]
    sig = np.zeros((n, m), np.int8) if signal is None else np.asarray(signal, np.int8).reshape(n, m)
    sc = np.where(sig > 0, 1.2, np.where(sig < 0, -1.2, 0.0)) if score is None else np.asarray(score, float).reshape(n, m)
    vo = np.full((n, m), 0.02) if vol is None else np.asarray(vol, float).reshape(n, m)
    return bt.Market(pd.DatetimeIndex(dates), list(symbols), open_, close, sig, sc, vo)


def sample_market(symbols=("AAA", "BBB", "CCC", "DDD"), start="2023-01-03", end="2023-12-29", gain=0.9):
    """Sample prices and a causal AR-style signal: today's return over its 20-day volatility."""
    dates = market_calendar.sessions(start, end)
    prices = pd.concat([sample_data.simulate_symbol(s, dates) for s in symbols], ignore_index=True)
    close = prices.pivot(index="Date", columns="Symbol", values="Close")
    logret = np.log(close).diff()
    vol = logret.rolling(20).std()
    sig = pd.DataFrame({"score": (gain * logret / vol).stack(), "volatility_20": vol.stack()}).reset_index().dropna()
    sig["signal"] = np.where(sig["score"] >= C.SIGNAL_THRESHOLD, "BUY",
                             np.where(sig["score"] <= -C.SIGNAL_THRESHOLD, "SELL", "HOLD"))
    return prices, sig


def random_walk(n, start=100.0, step=0.003, seed=0):
    rng = np.random.default_rng(seed)
    close = start * np.exp(np.cumsum(rng.normal(0, step, n)))
    open_ = np.concatenate([[start], close[:-1]]) * np.exp(rng.normal(0, step / 3, n))
    return open_, close


def frictionless_equity(result, market):
    """Equity had every fill been at its reference price with no fee: initial cash minus what
    the shares cost at the reference prices plus what they are worth at the last close."""
    cash = result.initial_cash
    pos = {}
    for t in result.trades:
        signed = t["quantity"] if t["side"] in bt.BUY_SIDES else -t["quantity"]
        cash -= signed * t["reference_price"]
        pos[t["symbol"]] = pos.get(t["symbol"], 0) + signed
    last = pd.DataFrame(market.close, columns=market.symbols).ffill().iloc[-1]
    return cash + sum(q * last[s] for s, q in pos.items())


# ----------------------------------------------------------------------------- hand-computed cases
def test_flat_signals_give_zero_return_and_no_costs():
    prices, _ = sample_market(end="2023-04-28")
    market = bt.market_from_frames(prices, None)
    result = bt.run_engine(market, costs=bt.Costs(slippage_bps=10, commission_per_share=0.01, min_commission=1))
    assert result.trades == [] and result.borrow_events == []
    assert np.all(result.equity == INITIAL)
    analysis = bt.analyse(result, market, bt.buy_and_hold(market))
    s = analysis["strategy"]
    assert s["total_return"] == 0.0 and s["cagr"] == 0.0 and s["max_drawdown"] == 0.0
    assert s["costs_paid"] == 0.0 and s["trades"] == 0 and s["fills"] == 0
    assert s["exposure"] == 0.0 and s["turnover"] == 0.0


def test_always_long_one_symbol_with_zero_costs_equals_buy_and_hold_from_first_fill():
    open_, close = random_walk(60, seed=1)
    open_[1] = 100.0                                      # 100 000 USD buys exactly 1000 shares
    market = make_market(open_, close, signal=np.ones(60))
    targets = np.full((60, 1), 1000)
    result = bt.run_engine(market, bt.FixedTargetPolicy(targets), costs=bt.Costs.zero())
    assert [(t["date"], t["side"], t["quantity"]) for t in result.trades] == \
        [(str(market.dates[1].date()), "BUY", 1000)]
    assert result.trades[0]["fill_price"] == 100.0
    np.testing.assert_allclose(result.equity[1:], 1000 * close[1:], rtol=0, atol=1e-8)
    metrics = bt.performance_metrics(result.equity_series())
    assert metrics["total_return"] == pytest.approx(close[-1] / open_[1] - 1, abs=1e-12)
    bench = bt.buy_and_hold(market, costs=bt.Costs.zero())          # one symbol: the same thing
    np.testing.assert_allclose(bench.to_numpy(), result.equity, rtol=1e-12)


def test_always_long_with_the_live_risk_rules_holds_one_position_like_buy_and_hold():
    n = 40
    open_, close = random_walk(n, step=0.002, seed=2)     # drifts less than the 10 % rebalance band
    market = make_market(open_, close, signal=np.ones(n))
    result = bt.run_engine(market, costs=bt.Costs.zero())
    shares = math.floor(C.MAX_POSITION_PCT * INITIAL / close[0] + 1e-9)   # capped by MAX_POSITION_PCT
    assert [(t["side"], t["quantity"]) for t in result.trades] == [("BUY", shares)]
    assert result.trades[0]["date"] == str(market.dates[1].date())        # decided day 0, filled day 1
    fill = result.trades[0]["fill_price"]
    assert fill == pytest.approx(open_[1], abs=1e-6)       # the broker's price has 6 decimals
    expected = INITIAL + shares * (close[1:] - fill)
    np.testing.assert_allclose(result.equity[1:], expected, rtol=0, atol=1e-8)
    assert result.equity[0] == INITIAL


def test_costs_reduce_return_by_exactly_what_the_trade_list_says():
    open_, close = random_walk(30, seed=3)
    o2, c2 = random_walk(30, start=50.0, seed=4)
    market = make_market(np.c_[open_, o2], np.c_[close, c2])
    targets = np.zeros((30, 2), int)
    targets[2:10, 0] = 300
    targets[10:20, 0] = -200                               # a flip: SELL 300 then SELL_SHORT 200
    targets[5:25, 1] = -400
    targets[12:25, 1] = -150
    costs = bt.Costs(slippage_bps=10, commission_per_share=0.01, min_commission=1.0, borrow_rate=0.03)
    costly = bt.run_engine(market, bt.FixedTargetPolicy(targets), costs=costs)
    free = bt.run_engine(market, bt.FixedTargetPolicy(targets), costs=bt.Costs.zero())
    assert [(t["date"], t["side"], t["quantity"]) for t in costly.trades] == \
        [(t["date"], t["side"], t["quantity"]) for t in free.trades]
    paid = (sum(t["commission"] for t in costly.trades) + sum(t["slippage_cost"] for t in costly.trades)
            + sum(b["fee"] for b in costly.borrow_events))
    assert paid > 0 and len(costly.borrow_events) > 0
    # the zero-cost run still rounds fills to the broker's 6 decimals: that residue is its own
    # "slippage" column, below a cent in all
    paid_free = sum(t["commission"] + t["slippage_cost"] for t in free.trades)
    assert abs(paid_free) < 0.01
    assert free.equity[-1] - costly.equity[-1] == pytest.approx(paid - paid_free, abs=1e-6)
    # and day by day: the cumulative daily cost columns explain the whole gap
    gap = free.equity - costly.equity
    daily = np.cumsum(costly.daily_commission + costly.daily_slippage + costly.daily_borrow
                      - free.daily_commission - free.daily_slippage)
    np.testing.assert_allclose(gap, daily, atol=1e-6)
    # the metrics report the same costs
    s = bt.analyse(costly, market, bt.buy_and_hold(market))["strategy"]
    assert s["costs_paid"] == pytest.approx(paid, abs=1e-6)
    assert sum(t["pnl"] for t in bt.round_trips(costly, {"S0": close[-1], "S1": c2[-1]})) == \
        pytest.approx(costly.equity[-1] - INITIAL, abs=1e-6)


def test_costs_identity_with_the_live_risk_rules():
    prices, sig = sample_market()
    market = bt.market_from_frames(prices, sig)
    costs = bt.Costs(slippage_bps=8, commission_per_share=0.005, min_commission=1.0, borrow_rate=0.04)
    result = bt.run_engine(market, costs=costs)
    assert len(result.trades) > 50 and any(t["side"] == "SELL_SHORT" for t in result.trades)
    paid = (sum(t["commission"] + t["slippage_cost"] for t in result.trades)
            + sum(b["fee"] for b in result.borrow_events))
    assert frictionless_equity(result, market) - result.equity[-1] == pytest.approx(paid, abs=1e-6)
    for t in result.trades:                               # fills: the broker's slippage on the next open
        assert t["date"] > t["decided"]
        ref = market.open[list(market.dates).index(pd.Timestamp(t["date"])), market.symbols.index(t["symbol"])]
        assert t["reference_price"] == ref
        up = t["side"] in bt.BUY_SIDES
        assert t["fill_price"] == pytest.approx(ref * (1 + 8e-4 if up else 1 - 8e-4), abs=1e-6)
        assert t["commission"] == max(t["quantity"] * 0.005, 1.0)


def test_short_position_gains_when_price_falls_and_pays_borrow_fees():
    n = 16
    close = 100.0 * 0.996 ** np.arange(1, n + 1)           # falls 0.4 % a day: 6 % in all
    open_ = np.concatenate([[100.0], close[:-1]])
    market = make_market(open_, close, signal=-np.ones(n))
    rate = 0.05
    result = bt.run_engine(market, costs=bt.Costs(slippage_bps=0, commission_per_share=0, min_commission=0,
                                                     borrow_rate=rate))
    shares = math.floor(C.MAX_POSITION_PCT * INITIAL / close[0] + 1e-9)
    assert [(t["side"], t["quantity"]) for t in result.trades] == [("SELL_SHORT", shares)]
    fill = result.trades[0]["fill_price"]
    assert fill == pytest.approx(open_[1], abs=1e-6)
    # borrow: ACT/360 on the close, calendar days since the last accrual (3 over a weekend)
    dates = [d.date() for d in market.dates]
    fees = [round(shares * close[d] * rate * (dates[d] - dates[d - 1]).days / 360, 6) for d in range(2, n)]
    assert any((dates[d] - dates[d - 1]).days == 3 for d in range(2, n))
    assert [b["fee"] for b in result.borrow_events] == pytest.approx(fees, abs=1e-9)
    assert result.equity[-1] == pytest.approx(INITIAL + shares * (fill - close[-1]) - sum(fees), abs=1e-6)
    assert result.equity[-1] > INITIAL
    s = bt.analyse(result, market, bt.buy_and_hold(market))["strategy"]
    assert s["borrow_fees_paid"] == pytest.approx(sum(fees), abs=1e-9) and s["borrow_fees_paid"] > 0
    assert s["total_return"] > 0


def test_engine_ledger_matches_the_paper_broker():
    """Replay the engine's fills through the real PaperBroker: same cash, positions and equity."""
    import trading_api
    prices, sig = sample_market(symbols=("AAA", "BBB", "CCC"), end="2023-05-31")
    market = bt.market_from_frames(prices, sig)
    result = bt.run_engine(market)                        # the paper broker's default costs
    assert any(t["side"] == "BUY_TO_COVER" for t in result.trades)
    broker = trading_api.PaperBroker(conn=state_db.connect(":memory:"))
    by_day = {}
    for t in result.trades:
        by_day.setdefault(t["date"], []).append(t)
    held = set()
    for d, day in enumerate(market.dates):
        key = str(day.date())
        todays = by_day.get(key, [])
        if todays:
            broker.set_prices({t["symbol"]: t["reference_price"] for t in todays}, as_of=key)
            for t in todays:
                broker.place_order({"symbol": t["symbol"], "side": t["side"], "quantity": t["quantity"],
                                    "order_type": "MARKET"})
                held.add(t["symbol"])
        closes = {s: float(market.close[d, market.symbols.index(s)]) for s in held}
        if closes:
            broker.set_prices(closes, as_of=key)
        broker.accrue_borrow_fees(as_of=key)
        assert broker.get_account_balance()["equity"] == pytest.approx(result.equity[d], abs=1e-4), key
    positions = {s: p["quantity"] for s, p in broker.get_positions().items()}
    assert positions == result.final_positions


def test_next_close_fill_mode_fills_at_the_next_close():
    open_, close = random_walk(10, seed=9)
    market = make_market(open_, close)
    targets = np.zeros((10, 1), int)
    targets[3:] = 50
    result = bt.run_engine(market, bt.FixedTargetPolicy(targets), costs=bt.Costs.zero(), fill="next_close")
    (t,) = result.trades
    assert t["decided"] == str(market.dates[3].date()) and t["date"] == str(market.dates[4].date())
    assert t["reference_price"] == close[4]
    with pytest.raises(bt.BacktestError):
        bt.run_engine(market, bt.FixedTargetPolicy(targets), fill="same_close")


# ----------------------------------------------------------------------------- metrics vs empyrical
@pytest.mark.parametrize("case", ["strategy", "random", "risk_free"])
def test_metrics_equal_empyrical(case, monkeypatch):
    import empyrical
    rf = 0.0
    if case == "strategy":
        prices, sig = sample_market()
        market = bt.market_from_frames(prices, sig)
        equity = bt.run_engine(market).equity_series()
    else:
        rng = np.random.default_rng(11)
        r = rng.normal(0.0004, 0.012, 700)
        r[0] = -0.02                                       # a loss on day one: the start is a peak
        idx = pd.bdate_range("2020-01-01", periods=701)
        equity = pd.Series(INITIAL * np.concatenate([[1.0], np.cumprod(1 + r)]), index=idx)
        rf = 0.03 if case == "risk_free" else 0.0
    m = bt.performance_metrics(equity, risk_free=rf)
    r = equity.pct_change().iloc[1:]
    daily_rf = rf / 252
    ours_theirs = {
        "sharpe": empyrical.sharpe_ratio(r, risk_free=daily_rf, annualization=252),
        "sortino": empyrical.sortino_ratio(r, required_return=daily_rf, annualization=252),
        "max_drawdown": empyrical.max_drawdown(r),
        "cagr": empyrical.annual_return(r, annualization=252),
        "annual_volatility": empyrical.annual_volatility(r, annualization=252),
        "calmar": empyrical.calmar_ratio(r, annualization=252),
    }
    for name, theirs in ours_theirs.items():
        assert m[name] == pytest.approx(float(theirs), rel=1e-9, abs=1e-9), name
    assert m["total_return"] == pytest.approx(float(empyrical.cum_returns_final(r)), abs=1e-9)


def test_drawdown_duration_by_hand():
    eq = pd.Series([100, 110, 99, 105, 111, 108, 109], index=pd.bdate_range("2024-01-01", periods=7), dtype=float)
    d = bt.drawdown_duration(eq)
    assert d["max_drawdown_duration_sessions"] == 3          # peak 110 (day 1) -> recovered day 4
    assert d["max_drawdown_peak"] == "2024-01-02" and d["max_drawdown_trough"] == "2024-01-03"
    assert d["max_drawdown_recovered"] == "2024-01-05"
    assert bt.performance_metrics(eq)["max_drawdown"] == pytest.approx(99 / 110 - 1)


# ----------------------------------------------------------------------------- no look-ahead
@pytest.mark.parametrize("cut", [60, 150])
def test_changing_prices_after_day_t_changes_nothing_up_to_day_t(cut):
    prices, sig = sample_market()
    market = bt.market_from_frames(prices, sig)
    base = bt.run_engine(market)
    rng = np.random.default_rng(cut)
    later = slice(cut + 1, None)
    shock = np.exp(rng.normal(0, 0.2, market.close[later].shape))
    changed = bt.Market(market.dates, market.symbols, market.open.copy(), market.close.copy(),
                        market.signal.copy(), market.score.copy(), market.volatility.copy())
    changed.open[later] *= shock
    changed.close[later] *= shock[::-1]
    changed.signal[later] = -changed.signal[later]
    changed.score[later] = -changed.score[later]
    other = bt.run_engine(changed)
    assert np.array_equal(base.equity[:cut + 1], other.equity[:cut + 1])
    day = str(market.dates[cut].date())
    assert [t for t in base.trades if t["date"] <= day] == [t for t in other.trades if t["date"] <= day]
    assert not np.array_equal(base.equity, other.equity)
    m1 = bt.performance_metrics(base.equity_series().iloc[:cut + 1])
    m2 = bt.performance_metrics(other.equity_series().iloc[:cut + 1])
    assert m1 == m2


def test_pruned_risk_calls_equal_passing_every_symbol():
    """LivePolicy passes the RiskManager only the symbols that can change; the result must be
    the same as passing every signal (busy book, gross-exposure limit, a drawdown halt)."""
    symbols = tuple(f"X{i:02d}" for i in range(30))
    for gain, seed in ((0.9, 1), (-2.0, 2)):               # a winning book, then a losing one that halts
        prices, sig = sample_market(symbols=symbols, start="2022-01-03", end="2022-12-30", gain=gain)
        market = bt.market_from_frames(prices, sig)
        fast = bt.run_engine(market, bt.LivePolicy(prune=True))
        full = bt.run_engine(market, bt.LivePolicy(prune=False))
        assert fast.trades == full.trades
        assert np.array_equal(fast.equity, full.equity)
        assert fast.halts == full.halts
    assert full.halts, "the losing book should have hit the drawdown halt"


# ----------------------------------------------------------------------------- criteria and the gate
def test_criteria_verdicts():
    ok = {"total_return": 0.1, "sharpe": 1.0, "max_drawdown": -0.1, "trades": 40}
    assert all(c["passed"] for c in bt.evaluate_criteria(ok))
    for key, value in (("total_return", 0.0), ("sharpe", 0.49), ("max_drawdown", -0.21), ("trades", 29)):
        rows = {c["name"]: c["passed"] for c in bt.evaluate_criteria({**ok, key: value})}
        assert rows[key] is False and sum(not v for v in rows.values()) == 1
    assert not all(c["passed"] for c in bt.evaluate_criteria({**ok, "sharpe": None}))


def test_passing_backtest_for_counts_only_out_of_sample_eligible_passes():
    conn = state_db.connect(":memory:")
    assert bt.passing_backtest_for("abc", conn) is None

    def rec(**kw):
        row = {"model_checksum": "abc", "in_sample": False, "passed": True, "gate_eligible": True,
               "start": "2025-01-02", "end": "2025-10-31", "parameters": {}, "metrics": {"sharpe": 1.0}}
        row.update(kw)
        return bt.record_run(row, "/r.json", conn)

    rec(in_sample=True)
    rec(passed=False)
    rec(gate_eligible=False)
    rec(model_checksum="other")
    assert bt.passing_backtest_for("abc", conn) is None
    good = rec(metrics={"sharpe": 2.0})
    rec(passed=False)                                      # a later failure does not hide it
    found = bt.passing_backtest_for("abc", conn)
    assert found["id"] == good and found["metrics"] == {"sharpe": 2.0} and found["in_sample"] is False
    assert found["report"] == "/r.json"


# ----------------------------------------------------------------------------- the CLI end to end
def _run(args, home, timeout=120):
    env = dict(os.environ, TRADING_HOME=str(home), DATA_SOURCE="sample", TF_CPP_MIN_LOG_LEVEL="3",
               TRADING_CONFIG_DIR=str(Path(home) / "keys"))
    return subprocess.run([sys.executable, str(ROOT / "backtest.py"), "--no-progress", *args], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Sample data for four symbols and a tiny model (2 epochs), built once for the module."""
    home = tmp_path_factory.mktemp("bt_home")
    (home / "selected_stocks.txt").write_text("AAPL\nMSFT\nJPM\nPG\n")
    env = dict(os.environ, TRADING_HOME=str(home), DATA_SOURCE="sample", TF_CPP_MIN_LOG_LEVEL="3",
               TRADING_CONFIG_DIR=str(home / "keys"))
    for cmd in (["data_collection.py", "--force"], ["train_model.py", "--profile", "tiny", "--epochs", "2"]):
        done = subprocess.run([sys.executable, *cmd], cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
    return home


LOOSE = ["--min-sharpe", "-100", "--min-total-return", "-1", "--max-drawdown", "1", "--min-trades", "0"]


def test_cli_exit_0_when_criteria_pass_and_writes_reports(trained):
    done = _run(LOOSE + ["--symbols", "aapl,MSFT,JPM", "--initial-cash", "50000", "--slippage", "7",
                         "--commission", "0.001"], trained)
    assert done.returncode == 0, done.stdout + done.stderr
    for name in ("total_return", "sharpe", "max_drawdown", "trades"):
        assert any(line.strip().startswith(name) and line.rstrip().endswith("PASS")
                   for line in done.stdout.splitlines()), name
    assert "Verdict: PASS" in done.stdout and "does not count for going live" in done.stdout
    reports = trained / "reports"
    latest = json.loads((reports / "latest_backtest.json").read_text())
    assert latest["title"].startswith("Out-of-sample") and latest["in_sample"] is False
    meta = json.loads((trained / "lstm_price_difference_model.json").read_text())
    assert latest["start"] >= meta["splits"]["test_start"]          # only after train + validation
    assert latest["model_checksum"] and latest["passed"] is True and latest["gate_eligible"] is False
    for key in ("parameters", "metrics", "daily", "trades", "criteria", "conventions"):
        assert key in latest
    for key in ("total_return", "cagr", "annual_volatility", "sharpe", "sortino", "calmar", "max_drawdown",
                "max_drawdown_duration_sessions", "win_rate", "profit_factor", "average_trade", "exposure",
                "turnover", "trades", "costs_paid"):
        assert key in latest["metrics"]["strategy"], key
    assert latest["metrics"]["benchmark"]["total_return"] is not None
    assert latest["parameters"]["symbols"] == ["AAPL", "JPM", "MSFT"]
    assert latest["daily"][0]["equity"] == 50000 and latest["parameters"]["costs"]["slippage_bps"] == 7
    assert latest["trades"], "the tiny model should trade in the test period"
    for t in latest["trades"]:
        up = t["side"] in ("BUY", "BUY_TO_COVER")
        assert t["fill_price"] == pytest.approx(t["reference_price"] * (1 + 7e-4 if up else 1 - 7e-4), abs=1e-6)
        assert t["commission"] == pytest.approx(t["quantity"] * 0.001)
    stamped = sorted(reports.glob("backtest_*.json"))
    assert stamped and json.loads(stamped[-1].read_text()) == latest
    page = (reports / "latest_backtest.html").read_text()
    assert page.count("data:image/png;base64,") == 3
    assert "src=\"http" not in page and "<script" not in page
    assert page == (reports / stamped[-1].name.replace(".json", ".html")).read_text()
    # recorded in the state DB, but a run with looser criteria never opens the gate
    conn = state_db.connect(trained / C.STATE_DB_FILE)
    row = conn.execute("SELECT * FROM backtest_runs ORDER BY id DESC LIMIT 1").fetchone()
    assert row["model_checksum"] == latest["model_checksum"] and row["passed"] == 1 and row["gate_eligible"] == 0
    assert bt.passing_backtest_for(latest["model_checksum"], conn) is None


def test_cli_exit_1_when_criteria_fail(trained):
    done = _run(["--min-trades", "1000000"], trained)       # stricter than constants.py: still eligible
    assert done.returncode == 1, done.stdout + done.stderr
    trades_line = next(line for line in done.stdout.splitlines() if line.strip().startswith("trades"))
    assert trades_line.rstrip().endswith("FAIL") and "Verdict: FAIL" in done.stdout
    conn = state_db.connect(trained / C.STATE_DB_FILE)
    row = conn.execute("SELECT * FROM backtest_runs ORDER BY id DESC LIMIT 1").fetchone()
    assert (row["in_sample"], row["passed"], row["gate_eligible"]) == (0, 0, 1)
    assert json.loads(row["metrics"])["strategy"]["trades"] < 1000000


def test_cli_exit_2_without_model_or_data(tmp_path, trained):
    home = tmp_path / "empty"
    home.mkdir()
    done = _run([], home)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ERROR:") and "train_model.py" in lines[0]
    for name in (C.MODEL_FILE, C.MODEL_METADATA_FILE):          # a model, but no data
        (home / name).write_bytes((trained / name).read_bytes())
    done = _run([], home)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and "run_daily_data_update.sh" in lines[0]


def test_cli_in_sample_needs_the_flag_and_says_so(trained, monkeypatch, capsys):
    monkeypatch.setenv("TRADING_HOME", str(trained))
    assert bt.main(["--no-progress", "--start", "2020-01-02"]) == 2
    assert "--in-sample" in capsys.readouterr().err
    code = bt.main(["--no-progress", "--in-sample", "--start", "2024-01-02", "--end", "2024-06-28", *LOOSE])
    assert code == 0
    latest = json.loads((trained / "reports" / "latest_backtest.json").read_text())
    assert latest["title"].startswith("IN-SAMPLE") and latest["in_sample"] is True
    assert (latest["start"], latest["end"]) == ("2024-01-02", "2024-06-28")
    assert "IN-SAMPLE" in (trained / "reports" / "latest_backtest.html").read_text()
    out = capsys.readouterr().out
    assert "IN-SAMPLE" in out


def test_model_pipeline_has_no_look_ahead(trained, monkeypatch):
    """build_features -> model.predict -> score_predictions -> engine: prices changed after day t
    change no signal, fill or equity up to day t."""
    import data_collection
    import model_management
    monkeypatch.setenv("TRADING_HOME", str(trained))
    model = model_management.load_model()
    raw = sample_data.generate_prices(["AAPL", "MSFT", "JPM", "PG"], start="2024-06-03", end="2025-03-31")
    cut = pd.Timestamp("2024-12-02")
    changed = raw.copy()
    later = changed["Date"] > cut
    factor = np.exp(np.random.default_rng(5).normal(0, 0.1, later.sum()))
    for col in ("Open", "High", "Low", "Close"):
        changed.loc[later, col] *= factor
    runs = []
    for frame in (raw, changed):
        features = data_collection.build_features(frame)
        scored, _ = bt.build_signals(model, features)
        market = bt.market_from_frames(features[["Date", "Symbol", "Open", "Close"]], scored, start="2024-09-03")
        runs.append((scored, bt.run_engine(market), market))
    (s1, r1, m1), (s2, r2, m2) = runs
    early1, early2 = s1[s1["Date"] <= cut].reset_index(drop=True), s2[s2["Date"] <= cut].reset_index(drop=True)
    pd.testing.assert_frame_equal(early1, early2)
    t = int(np.flatnonzero(m1.dates == cut)[0])
    assert np.array_equal(r1.equity[:t + 1], r2.equity[:t + 1])
    day = str(cut.date())
    assert [x for x in r1.trades if x["date"] <= day] == [x for x in r2.trades if x["date"] <= day]
    assert not s1[s1["Date"] > cut].reset_index(drop=True).equals(s2[s2["Date"] > cut].reset_index(drop=True))
