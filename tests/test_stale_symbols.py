"""Per-symbol data guards (issue 10, finding 4), end to end through ``live_trading.py --as-of``:
a symbol whose data ends before the session traded on gets no new order (a WARNING naming it);
a position held in such a symbol stops the cycle before any order (exit 1, the error names the
position and the way out, and it is alert-worthy); the health check lists the stale symbols."""
import json
import sqlite3
import subprocess
import sys

import pandas as pd

import constants as C
from conftest import ROOT, run_entry

STALE_BY = 5          # sessions the stale symbol's data ends before the session traded on


def _non_hold_by_date(home) -> dict[str, set[str]]:
    """Each session's symbols with a BUY/SELL signal, from the trained model's predictions over
    the whole sample (each symbol's prediction depends only on its own past rows)."""
    code = ("import json, model_management as m, data_collection as d, signals as s;"
            "p=s.score_predictions(m.load_model().predict(d.load_processed()));"
            "p=p[p.signal!='HOLD'];"
            "print(json.dumps({str(k.date()): sorted(g.Symbol) for k, g in p.groupby('Date')}))")
    env = {"TRADING_HOME": str(home), "DATA_SOURCE": "sample", "TF_CPP_MIN_LOG_LEVEL": "3",
           "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=180)
    assert out.returncode == 0, out.stderr[-2000:]
    return {d: set(s) for d, s in json.loads(out.stdout.strip().splitlines()[-1]).items()}


def _pick(home):
    """A session D0 (with two sessions after it) where at least two symbols other than Y trade,
    and a symbol Y whose signal on its last bar, STALE_BY sessions before D0, is BUY or SELL:
    without the guard Y would be traded on week-old data."""
    signals = _non_hold_by_date(home)
    sessions = sorted(str(d.date()) for d in pd.read_csv(home / C.PROCESSED_DATA_FILE,
                                                         parse_dates=["Date"])["Date"].unique())
    for i in range(len(sessions) - 3, STALE_BY, -1):
        day, stale_day = sessions[i], sessions[i - STALE_BY]
        for sym in sorted(signals.get(stale_day, ())):
            if len(signals.get(day, set()) - {sym}) >= 2:
                return sym, stale_day, sessions[i:i + 3]
    raise AssertionError("the sample has no session fit for this test")


def _cut(home, symbol, last_day):
    path = home / C.PROCESSED_DATA_FILE
    df = pd.read_csv(path)
    df[(df["Symbol"] != symbol) | (df["Date"] <= last_day)].to_csv(path, index=False)


def _replay_db(home):
    conn = sqlite3.connect(home / C.REPLAY_STATE_DB_FILE)
    conn.row_factory = sqlite3.Row
    return conn


def _audit(home, action):
    lines = (home / C.AUDIT_LOG_FILE).read_text().splitlines()
    return [r for r in map(json.loads, filter(None, lines)) if r["action"] == action]


def test_stale_symbol_gets_no_order_and_a_held_stale_or_missing_one_stops_the_cycle(home, trained):
    stale, stale_last, (day0, day1, day2) = _pick(home)
    _cut(home, stale, stale_last)

    # day 0: the stale symbol has a BUY/SELL signal from its week-old bar, yet gets no order
    done = run_entry(["live_trading.py", "--as-of", day0], home)
    assert done.returncode == 0, done.stderr[-3000:]
    log = next((home / "logs").glob("trading_*.log")).read_text()
    assert f"{stale}: last bar {stale_last}, older than the session traded on ({day0}): no new order" in log
    assert f"Prediction: {stale} date={stale_last}" in log      # it did get a signal, from old data
    orders = [dict(r) for r in _replay_db(home).execute("SELECT symbol FROM paper_orders")]
    assert orders, "other symbols had signals on day 0, so orders must have been sent"
    assert stale not in {o["symbol"] for o in orders}
    guard = _audit(home, "data_guard")
    assert guard and guard[-1]["details"]["stale"] == {stale: stale_last} and guard[-1]["details"]["held"] == {}

    # day 1: day 0's orders fill at day 1's open, so the account now holds positions
    done = run_entry(["live_trading.py", "--as-of", day1], home)
    assert done.returncode == 0, done.stderr[-3000:]
    held = {r["symbol"]: r["quantity"] for r in _replay_db(home).execute(
        "SELECT symbol, quantity FROM paper_positions WHERE quantity != 0")}
    assert held and stale not in held
    symbol = sorted(held)[0]

    # day 2: a held symbol's data stops at day 1: the cycle refuses to trade at all
    _cut(home, symbol, day1)
    sent_before = _replay_db(home).execute("SELECT COUNT(*) FROM paper_orders").fetchone()[0]
    done = run_entry(["live_trading.py", "--as-of", day2], home)
    assert done.returncode == 1, done.stdout[-2000:] + done.stderr[-2000:]
    error = done.stderr.strip().splitlines()[-1]
    assert "open positions in symbols without current data" in error
    assert f"{symbol} {held[symbol]:+d} shares (last bar {day1})" in error
    assert "flatten" in error and "run_daily_data_update.sh" in error
    assert _replay_db(home).execute("SELECT COUNT(*) FROM paper_orders").fetchone()[0] == sent_before
    # the cycle_failed alert (a replay is a drill: logged, not sent to the channels)
    log = "".join(p.read_text() for p in (home / "logs").glob("trading_*.log"))
    assert any(line for line in log.splitlines() if "alert cycle_failed not sent" in line
               and "without current data" in line and symbol in line)
    guard = _audit(home, "data_guard")[-1]["details"]
    assert guard["held"] == {symbol: held[symbol]} and set(guard["stale"]) == {stale, symbol}
    assert ("cycle_end", "error") == (_audit(home, "cycle_end")[-1]["action"], _audit(home, "cycle_end")[-1]["status"])

    # the health check lists both stale symbols, with the fix
    done = run_entry(["health_check.py", "--json"], home)
    report = json.loads(done.stdout)
    data = next(c for c in report["checks"] if c["name"] == "data")
    assert data["level"] == "WARN", data
    assert f"{stale} (last bar {stale_last})" in data["detail"] and f"{symbol} (last bar {day1})" in data["detail"]
    assert "run_daily_data_update.sh" in data["detail"]

    # the held symbol's rows gone entirely (dropped from the processed file): named with 'no data'
    path = home / C.PROCESSED_DATA_FILE
    df = pd.read_csv(path)
    df[df["Symbol"] != symbol].to_csv(path, index=False)
    done = run_entry(["live_trading.py", "--as-of", day2], home)
    assert done.returncode == 1, done.stderr[-2000:]
    assert f"{symbol} {held[symbol]:+d} shares (no data)" in done.stderr.strip().splitlines()[-1]
    assert _replay_db(home).execute("SELECT COUNT(*) FROM paper_orders").fetchone()[0] == sent_before

