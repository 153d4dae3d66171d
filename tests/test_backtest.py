"""The backtest CLI end to end (exit codes, reports, the recorded run) and the model pipeline's
lack of look-ahead."""
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import backtest as bt
import backtest_engine as E
import constants as C
import data_collection
import golive as G
import model_management
import sample_data
import signals
import state_db
from conftest import TRAINED_FILES, run_entry

ROOT = Path(__file__).resolve().parent.parent


# ----------------------------------------------------------------------------- the CLI end to end
def _run(args, home, timeout=120):
    return run_entry([str(ROOT / "backtest.py"), "--no-progress", *args], home, timeout=timeout)


@pytest.fixture(scope="module")
def bt_home(trained, tmp_path_factory):
    """A copy of the session's sample data and tiny model (conftest's ``trained``) with a
    four-symbol universe, for the module: its backtests write reports and records here."""
    home = tmp_path_factory.mktemp("bt_home")
    (home / "selected_stocks.txt").write_text("AAPL\nMSFT\nJPM\nPG\n")
    for name in TRAINED_FILES:
        (home / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(trained["home"] / name, home / name)
    return home


LOOSE = ["--min-sharpe", "-100", "--min-total-return", "-1", "--max-drawdown", "1", "--min-trades", "0"]


def test_cli_exit_0_when_criteria_pass_and_writes_reports(bt_home):
    done = _run(LOOSE + ["--symbols", "aapl,MSFT,JPM", "--initial-cash", "50000", "--slippage", "7",
                         "--commission", "0.001"], bt_home)
    assert done.returncode == 0, done.stdout + done.stderr
    for name in ("total_return", "sharpe", "max_drawdown", "trades"):
        assert any(line.strip().startswith(name) and line.rstrip().endswith("PASS")
                   for line in done.stdout.splitlines()), name
    assert "Verdict: PASS" in done.stdout and "does not count for going live" in done.stdout
    reports = bt_home / "reports"
    latest = json.loads((reports / "latest_backtest.json").read_text())
    assert latest["title"].startswith("Out-of-sample") and latest["in_sample"] is False
    meta = json.loads((bt_home / "lstm_price_difference_model.json").read_text())
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
    assert page.count("data:image/png;base64,") == 2                # equity, drawdown; months are a table
    for table in ("monthly-returns", "round-trips", "per-symbol", "long-short", "trade-stats", "summary"):
        assert f'id="{table}"' in page, table
    for key in ("trade_stats", "per_symbol", "long_short", "yearly_returns", "monthly_returns", "walk_forward"):
        assert key in latest, key
    closed = [t for t in latest["round_trips"] if not t["open"]]        # the tables count closed trips
    assert sum(r["trades"] for r in latest["per_symbol"]) == len(closed)
    assert latest["trade_stats"]["trades"] == latest["metrics"]["strategy"]["trades"] == len(closed)
    assert all("why_closed" in t and "duration_days" in t for t in latest["round_trips"])
    assert "src=\"http" not in page and "<script" not in page
    assert page == (reports / stamped[-1].name.replace(".json", ".html")).read_text()
    # recorded in the state DB, but a run with looser criteria never opens the gate
    conn = state_db.connect(bt_home / C.STATE_DB_FILE)
    row = conn.execute("SELECT * FROM backtest_runs ORDER BY id DESC LIMIT 1").fetchone()
    assert row["model_checksum"] == latest["model_checksum"] and row["passed"] == 1 and row["gate_eligible"] == 0
    assert G.passing_backtest_for(latest["model_checksum"], conn) is None


def test_cli_exit_1_when_criteria_fail(bt_home):
    done = _run(["--min-trades", "1000000"], bt_home)       # stricter than constants.py: still eligible
    assert done.returncode == 1, done.stdout + done.stderr
    trades_line = next(line for line in done.stdout.splitlines() if line.strip().startswith("trades"))
    assert trades_line.rstrip().endswith("FAIL") and "Verdict: FAIL" in done.stdout
    conn = state_db.connect(bt_home / C.STATE_DB_FILE)
    row = conn.execute("SELECT * FROM backtest_runs ORDER BY id DESC LIMIT 1").fetchone()
    assert (row["in_sample"], row["passed"], row["gate_eligible"]) == (0, 0, 1)
    assert json.loads(row["metrics"])["strategy"]["trades"] < 1000000
    # issue 21: every backtest is a counted trial in the registry beside the audit trail
    registry = state_db.connect(bt_home / C.TRIAL_REGISTRY_FILE)
    trial = registry.execute("SELECT * FROM trials ORDER BY id DESC LIMIT 1").fetchone()
    assert trial["kind"] == "backtest" and trial["production"] == 1 and trial["passed"] == 0
    assert json.loads(trial["settings"])["model_checksum"] == json.loads(
        (bt_home / "reports" / "latest_backtest.json").read_text())["model_checksum"]


def test_cli_exit_2_without_model_or_data(tmp_path, bt_home):
    home = tmp_path / "empty"
    home.mkdir()
    done = _run([], home)                                      # not a home: refused, nothing created
    assert done.returncode == 2 and "python live_trading.py init" in done.stderr and list(home.iterdir()) == []
    (home / C.UNIVERSE_FILE).write_text("AAPL\n")              # a home without a model
    done = _run([], home)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ERROR:") and "train_model.py" in lines[0]
    for name in (C.MODEL_FILE, C.MODEL_METADATA_FILE):          # a model, but no data
        (home / name).write_bytes((bt_home / name).read_bytes())
    done = _run([], home)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and "run_daily_data_update.sh" in lines[0]


def test_cli_in_sample_needs_the_flag_and_says_so(bt_home, monkeypatch, capsys):
    monkeypatch.setenv("TRADING_HOME", str(bt_home))
    assert bt.main(["--no-progress", "--start", "2020-01-02"]) == 2
    assert "--in-sample" in capsys.readouterr().err
    code = bt.main(["--no-progress", "--in-sample", "--start", "2024-01-02", "--end", "2024-06-28", *LOOSE])
    assert code == 0
    latest = json.loads((bt_home / "reports" / "latest_backtest.json").read_text())
    assert latest["title"].startswith("IN-SAMPLE") and latest["in_sample"] is True
    assert (latest["start"], latest["end"]) == ("2024-01-02", "2024-06-28")
    assert "IN-SAMPLE" in (bt_home / "reports" / "latest_backtest.html").read_text()
    out = capsys.readouterr().out
    assert "IN-SAMPLE" in out


def test_model_pipeline_has_no_look_ahead(bt_home, monkeypatch):
    """build_features -> model.predict -> score_predictions -> engine: prices changed after day t
    change no signal, fill or equity up to day t."""
    monkeypatch.setenv("TRADING_HOME", str(bt_home))
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
        scored, _ = signals.build_signals(model, features)
        market = E.market_from_frames(features[["Date", "Symbol", "Open", "Close"]], scored, start="2024-09-03")
        runs.append((scored, E.run_engine(market), market))
    (s1, r1, m1), (s2, r2, m2) = runs
    early1, early2 = s1[s1["Date"] <= cut].reset_index(drop=True), s2[s2["Date"] <= cut].reset_index(drop=True)
    pd.testing.assert_frame_equal(early1, early2)
    t = int(np.flatnonzero(m1.dates == cut)[0])
    assert np.array_equal(r1.equity[:t + 1], r2.equity[:t + 1])
    day = str(cut.date())
    assert [x for x in r1.trades if x["date"] <= day] == [x for x in r2.trades if x["date"] <= day]
    assert not s1[s1["Date"] > cut].reset_index(drop=True).equals(s2[s2["Date"] > cut].reset_index(drop=True))


def test_a_backtest_off_the_production_data_or_window_is_not_gate_evidence(bt_home, monkeypatch, capsys):
    """Issue 21: the backtest leg accepted any --data file and any --start/--end window. Now it is
    recorded as NOT gate evidence, in one line saying why; the default run is bound to the
    production data (its rows' hash up to the window's end), the universe and the fixed window."""
    import evidence_binding as EB
    monkeypatch.setenv("TRADING_HOME", str(bt_home))
    copy = bt_home / "copy.csv"
    shutil.copy2(bt_home / C.PROCESSED_DATA_FILE, copy)
    sessions = sorted(pd.read_csv(copy, usecols=["Date"])["Date"].unique())
    bt.main(["--no-progress", "--data", str(copy), "--end", sessions[-3]])
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if "NOT gate evidence" in line]
    assert len(lines) == 1 and "--data" in lines[0] and f"--end {sessions[-3]}" in lines[0], out
    latest = json.loads((bt_home / "reports" / "latest_backtest.json").read_text())
    assert latest["gate_eligible"] is False and latest["parameters"]["evidence"]["gate_evidence"] is False
    bt.main(["--no-progress"])
    out = capsys.readouterr().out
    assert "NOT gate evidence" not in out
    ev = json.loads((bt_home / "reports" / "latest_backtest.json").read_text())["parameters"]["evidence"]
    features = data_collection.load_processed(bt_home / C.PROCESSED_DATA_FILE)
    assert ev["gate_evidence"] and ev["end"] == sessions[-1] and ev["universe"] == ["AAPL", "JPM", "MSFT", "PG"]
    assert ev["data_sha256"] == EB.window_sha256(features, ev["universe"], ev["end"])
    meta = json.loads((bt_home / "lstm_price_difference_model.json").read_text())
    assert ev["start"] == str(EB.fixed_window("backtest", sessions, meta)[0].date())


def test_synthetic_opens_refuse_next_open_fills_in_one_line(bt_home, tmp_path):
    data = pd.read_csv(bt_home / C.PROCESSED_DATA_FILE)
    data = data.sort_values(["Symbol", "Date"]).reset_index(drop=True)
    prev = data.groupby("Symbol")["Close"].shift(1)
    data["Open"] = prev.fillna(data["Open"])
    fake = tmp_path / "synthetic.csv"
    data.to_csv(fake, index=False)
    done = _run(["--data", str(fake)], bt_home)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert str(fake) in lines[0] and "synthetic opens" in lines[0] and "--fill next_close" in lines[0]
