"""The trading cycle end to end on the sample data, crash safety by fault injection, the lock,
the kill switch, the go-live gate and the runbook's one-liners."""
import json
import os
import shutil
import sqlite3
import sys
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

import constants as C
from conftest import run_command, run_entry

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable


def run(args, home, env_extra=None, timeout=180, input=None):
    return run_entry(args, home, env_extra, timeout, input)


@pytest.fixture
def cli(capsys, home, monkeypatch):
    """``python live_trading.py ARGS`` for the operator commands (gate, status, halt, resume,
    flatten --confirm, signals): its ``main`` in this process, in the test's TRADING_HOME, with
    the exit code and output a finished process gives. Each process start costs about 1.5 s of
    CPU; the cycles, the locks, the crashes, stdin, ``--replay`` and a startup error run as
    processes (``run``)."""
    import live_trading
    monkeypatch.setenv("TRADING_CONFIG_DIR", str(home / "keys"))      # the keys run_entry's processes use

    def call(*args):
        assert "--replay" not in args        # it would point this process's state database at the replay file
        capsys.readouterr()
        try:
            code = live_trading.main(list(args))
        except SystemExit as exc:            # argparse: --help is 0, a usage error 2
            code = exc.code
        out = capsys.readouterr()
        return SimpleNamespace(returncode=code, stdout=out.out, stderr=out.err)
    return call


def db(home, replay=False):
    """The real state database, or (replay=True) the throwaway one of --as-of replays."""
    conn = sqlite3.connect(home / (C.REPLAY_STATE_DB_FILE if replay else C.STATE_DB_FILE))
    conn.row_factory = sqlite3.Row
    return conn


def audit_records(home):
    path = home / C.AUDIT_LOG_FILE
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def assert_consistent(home):
    """Every order once at the broker, our records agree with it, positions = sum of fills
    (in the replay account: these cycles are --as-of replays)."""
    conn = db(home, replay=True)
    paper = [dict(r) for r in conn.execute("SELECT * FROM paper_orders")]
    keys = [o["client_key"] for o in paper]
    assert len(keys) == len(set(keys)), "an order was sent twice"
    ours = {r["client_key"]: dict(r) for r in conn.execute("SELECT * FROM orders")}
    for o in paper:
        assert o["client_key"] in ours
        assert ours[o["client_key"]]["broker_order_id"] == o["order_id"]
        # a paper market order pending the next session's open is WORKING there, SUBMITTED here
        assert ours[o["client_key"]]["status"] == ("SUBMITTED" if o["status"] == "WORKING" else o["status"])
    net = {}
    for o in paper:
        sign = 1 if o["side"] in ("BUY", "BUY_TO_COVER") else -1
        net[o["symbol"]] = net.get(o["symbol"], 0) + sign * int(o["filled_quantity"])
    positions = {r["symbol"]: r["quantity"] for r in conn.execute("SELECT * FROM paper_positions") if r["quantity"]}
    assert positions == {s: q for s, q in net.items() if q}
    verify = run(["audit_logging.py", "verify"], home)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    return paper


def test_full_paper_cycle(home, trained):
    done = run(["live_trading.py", "--as-of", trained["trade_day"]], home)
    assert done.returncode == 0, done.stderr[-3000:]
    log = next((home / "logs").glob("trading_*.log")).read_text()
    assert log.count("Prediction:") == 10
    assert "signal" in log
    paper = assert_consistent(home)
    assert paper, "the chosen day has BUY/SELL signals, so orders must have been sent"
    # decided from the trade day's close: pending until the next session's open (accepted, not
    # waited for 120 s nor cancelled)
    assert all(o["status"] == "WORKING" for o in paper)
    assert "fills it at the next session's open" in log and "cancelling the rest" not in log
    actions = [r["action"] for r in audit_records(home)]
    for needed in ("cycle_start", "order_submit", "cycle_end"):
        assert needed in actions
    assert "orders:" in done.stdout and "positions" in done.stdout
    conn = db(home, replay=True)
    stored = conn.execute("SELECT COUNT(*) FROM predictions WHERE date = ?", (trained["trade_day"],)).fetchone()[0]
    assert stored == 10
    # a rerun of the same day sends nothing new
    again = run(["live_trading.py", "--as-of", trained["trade_day"]], home)
    assert again.returncode == 0
    assert len(assert_consistent(home)) == len(paper)
    # the next session's cycle: the orders fill at that session's open, with the backtest's slippage
    import market_calendar
    from broker_base import slippage_price
    nxt = str(market_calendar.next_session(trained["trade_day"]).date())
    follow = run(["live_trading.py", "--as-of", nxt], home)
    assert follow.returncode == 0, follow.stderr[-3000:]
    after = {o["client_key"]: o for o in assert_consistent(home)}
    df = pd.read_csv(home / C.PROCESSED_DATA_FILE)
    opens = df[df["Date"] == nxt].set_index("Symbol")["Open"].to_dict()
    for o in paper:
        filled = after[o["client_key"]]
        assert filled["status"] == "FILLED"
        assert filled["avg_fill_price"] == pytest.approx(slippage_price(opens[o["symbol"]], o["side"]), abs=1e-6)
    assert "order_fill" in [r["action"] for r in audit_records(home)]
    assert "EXTERNAL POSITION" not in follow.stderr + next((home / "logs").glob("trading_*.log")).read_text()


@pytest.mark.parametrize("point", ["after_signals", "after_record_intent", "after_place_order",
                                   "after_submit_all", "after_fills", "before_cycle_end"])
def test_crash_at_each_step_then_rerun(home, trained, point):
    crashed = run(["live_trading.py", "--as-of", trained["trade_day"]], home, {"TRADING_FAILPOINT": point})
    assert crashed.returncode == 99, crashed.stderr[-2000:]
    rerun = run(["live_trading.py", "--as-of", trained["trade_day"]], home)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    paper = assert_consistent(home)
    assert paper and all(o["status"] == "WORKING" for o in paper)      # pending the next open
    if point == "after_place_order":
        assert "reached the broker" in rerun.stderr      # adopted, not sent again


def test_second_cycle_exits_cleanly_while_one_runs(home, trained, monkeypatch):
    import live_trading
    with live_trading.cycle_lock() as held:
        assert held
        other = run(["live_trading.py", "--as-of", trained["trade_day"]], home)
    assert other.returncode == 0
    assert "holds the cycle lock" in other.stderr
    assert not (home / C.STATE_DB_FILE).exists() or not db(home).execute(
        "SELECT name FROM sqlite_master WHERE name='paper_orders'").fetchone()


def test_kill_switch_blocks_every_run_until_resumed(home, trained, cli):
    assert cli("init").returncode == 0            # set up, never run: halt needs a home where something ran
    assert cli("halt", "--reason", "drawdown investigation").returncode == 0
    blocked = run(["live_trading.py", "--as-of", trained["trade_day"]], home)
    assert blocked.returncode == 0 and "Kill switch is ON" in blocked.stderr
    assert not db(home).execute("SELECT name FROM sqlite_master WHERE name='paper_orders'").fetchone()
    status = cli("status")
    assert status.returncode == 0, status.stderr[-2000:]
    assert "kill switch:     ON: drawdown investigation" in status.stdout
    assert cli("resume", "--reason", "fixed").returncode == 0
    ok = run(["live_trading.py", "--as-of", trained["trade_day"]], home)
    assert ok.returncode == 0 and assert_consistent(home)
    actions = [(r["action"], r["status"]) for r in audit_records(home)]
    assert ("kill_switch", "set") in actions and ("kill_switch", "cleared") in actions


def _open_real_paper_positions(home, day):
    """Positions in the real paper account (not a replay), bought through the paper broker."""
    import state_db
    from paper_broker import PaperBroker
    df = pd.read_csv(home / C.PROCESSED_DATA_FILE)
    closes = df[df["Date"] == day].set_index("Symbol")["Close"].to_dict()
    broker = PaperBroker(conn=state_db.connect(home / C.STATE_DB_FILE), prices=closes, as_of=day)
    for sym in sorted(closes)[:2]:
        broker.place_order({"symbol": sym, "side": "BUY", "quantity": 10, "order_type": "MARKET",
                            "client_key": f"test-{sym}"})


def _next_session_prices(home):
    """What the next cycle's sync_prices does once the data has the session after the last one:
    that session's closes and opens to the real paper account."""
    import market_calendar
    import state_db
    from paper_broker import PaperBroker
    df = pd.read_csv(home / C.PROCESSED_DATA_FILE)
    last = df["Date"].max()
    nxt = market_calendar.next_session(last).date()
    closes = df[df["Date"] == last].set_index("Symbol")["Close"].to_dict()
    PaperBroker(conn=state_db.connect(home / C.STATE_DB_FILE), fill="next_open").set_prices(
        closes, as_of=nxt, opens={nxt: {s: p * 1.01 for s, p in closes.items()}})


def test_flatten_closes_everything_after_confirmation(home, trained, cli):
    import market_calendar
    assert run(["live_trading.py", "--as-of", trained["trade_day"]], home).returncode == 0
    nxt = str(market_calendar.next_session(trained["trade_day"]).date())
    assert run(["live_trading.py", "--as-of", nxt], home).returncode == 0     # the first day's orders fill
    replay_open = db(home, replay=True).execute(
        "SELECT COUNT(*) FROM paper_positions WHERE quantity != 0").fetchone()[0]
    assert replay_open > 0
    _open_real_paper_positions(home, trained["trade_day"])
    assert db(home).execute("SELECT COUNT(*) FROM paper_positions WHERE quantity != 0").fetchone()[0] == 2
    refused = run(["live_trading.py", "flatten"], home, input="")
    assert refused.returncode == 2 and "confirmation" in refused.stderr
    done = cli("flatten", "--confirm", "FLATTEN")
    # paper: the closing orders are accepted and fill at the next session's open; until then the
    # account is NOT flat: exit 1, the positions and the working closing orders named
    assert done.returncode == 1, done.stdout + done.stderr[-2000:]
    assert "next session's open" in done.stdout
    assert "flatten NOT FLAT: positions still open" in done.stderr and "kept, NOT cancelled" in done.stderr
    assert ("flatten", "not_flat") in [(r["action"], r["status"]) for r in audit_records(home)]
    assert db(home).execute("SELECT COUNT(*) FROM paper_orders WHERE side = 'SELL' AND status = 'WORKING'"
                            ).fetchone()[0] == 2
    _next_session_prices(home)
    assert db(home).execute("SELECT COUNT(*) FROM paper_positions WHERE quantity != 0").fetchone()[0] == 0
    # the replay account is a different account: flatten never touches it
    assert db(home, replay=True).execute(
        "SELECT COUNT(*) FROM paper_positions WHERE quantity != 0").fetchone()[0] == replay_open
    status = cli("status")
    assert status.returncode == 0, status.stderr[-2000:]
    assert "kill switch:     ON: flatten" in status.stdout and "positions (0)" in status.stdout
    again = cli("flatten", "--confirm", "FLATTEN")    # a rerun closes nothing twice; now flat: exit 0
    assert again.returncode == 0, again.stdout + again.stderr[-2000:]
    assert ("flatten", "done") in [(r["action"], r["status"]) for r in audit_records(home)]
    sells = db(home).execute("SELECT COUNT(*) FROM paper_orders WHERE side = 'SELL'").fetchone()[0]
    assert sells == 2
    replay_status = run(["live_trading.py", "status", "--replay"], home)
    assert "last cycle:      " + nxt in replay_status.stdout


def test_flatten_waits_for_the_cycle_lock_and_names_the_holder(home, trained, cli):
    import live_trading
    assert cli("init").returncode == 0
    with live_trading.cycle_lock(what="cycle") as held:
        assert held
        done = run(["live_trading.py", "flatten", "--confirm", "FLATTEN", "--wait", "1"], home)
    assert done.returncode == 1 and "cycle lock is still held" in done.stderr and f"pid {os.getpid()}" in done.stderr
    # the kill switch went on first: nothing trades until a person resumes
    assert "kill switch:     ON" in cli("status").stdout


def test_operator_commands_behave(home, trained, cli):
    assert cli("init").returncode == 0
    nothing = cli("resume", "--reason", "no halt")
    assert nothing.returncode == 0 and "nothing to resume" in nothing.stdout
    assert cli("resume").returncode == 2                 # --reason required
    helped = cli("status", "--help")
    assert helped.returncode == 0 and "exit codes" in helped.stdout
    as_json = cli("status", "--json")
    data = json.loads(as_json.stdout)
    assert data["mode"] == "paper" and data["account"]["equity"] == pytest.approx(C.INITIAL_PAPER_CASH)
    assert as_json.stderr == ""                                                     # results once, on stdout
    after = cli("signals", "--as-of", trained["trade_day"], "--json")
    before = cli("--as-of", trained["trade_day"], "--json", "signals")
    assert json.loads(after.stdout) == json.loads(before.stdout) and len(json.loads(after.stdout)) == 10
    bad = cli("--as-of", "1700-01-01", "signals")
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "--as-of" in bad.stderr
    piped = run_command(["bash", "-c", f"{PY} live_trading.py history | head -1"], home)
    assert "Traceback" not in piped.stderr and "BrokenPipe" not in piped.stderr


def test_live_mode_refused_by_gate_without_backtest_and_paper_sessions(home, trained, cli):
    done = run(["live_trading.py"], home, {"TRADING_MODE": "live"})
    assert done.returncode == 3, done.stderr[-2000:]
    assert "LIVE TRADING REFUSED" in done.stderr and "no passing out-of-sample backtest" in done.stderr
    assert "golive_gate" in [r["action"] for r in audit_records(home)]
    gate = cli("gate")
    assert gate.returncode == 1 and "REFUSED" in gate.stdout and "0 of 5" in gate.stdout


def _record_passing_backtest(home, checksum, eligible=True, in_sample=False):
    """A passing backtest of the installed model bound to the production data, universe and fixed
    window (evidence_binding), as ./run_backtest.sh records it."""
    import data_collection
    import evidence_binding
    import golive
    import model_management
    meta = model_management.read_metadata(home / C.MODEL_FILE)
    features = data_collection.load_processed(home / C.PROCESSED_DATA_FILE)
    universe = sorted(data_collection.load_universe())
    start, end = evidence_binding.fixed_window("backtest", sorted(features["Date"].unique()), meta)
    evidence = evidence_binding.binding("backtest", features, None, universe, universe, start, end, meta)
    golive.record_run({"model_checksum": checksum, "in_sample": in_sample, "passed": True,
                       "gate_eligible": eligible, "start": str(start.date()), "end": str(end.date()),
                       "parameters": {"evidence": evidence}},
                      home / "reports" / "backtest_x.html")


def _record_walk_forward(home, passed=True, eligible=True, universe=None, config_fingerprint=None,
                         data_path=None, data_sha256=None, created_at=None):
    """One walk_forward_runs row; by default a passing one for the installed model's configuration
    on the whole universe and the production data file (as ./run_backtest.sh --walk-forward records)."""
    import data_collection
    import fileutil
    import model_management
    import walk_forward_runs
    meta = model_management.read_metadata(home / C.MODEL_FILE)
    cfg = walk_forward_runs.model_configuration_from_metadata(meta)
    path = data_path or (home / C.PROCESSED_DATA_FILE)
    report = {"inputs": {"config_fingerprint": config_fingerprint or walk_forward_runs.config_fingerprint(cfg),
                         "data_sha256": data_sha256 or fileutil.file_sha256(home / C.PROCESSED_DATA_FILE),
                         "data_path": str(path),
                         "universe": sorted(universe if universe is not None else data_collection.load_universe()),
                         "costs": {}, "model_config": cfg, "seed": 42},
              "start": "2023-01-03", "end": "2025-10-31", "workers": 2, "passed": passed, "gate_eligible": eligible,
              "report_json": str(home / "reports" / "walkforward_x.json"),
              "overall": {"conditions": [], "passed": passed, "n_trials": 1, "dm_vs_no_change": {"skill": 0.01,
                          "p_value": 0.01}, "dm_vs_training_mean": {"skill": 0.01, "p_value": 0.01},
                          "directional_accuracy": 0.55, "strategy": {"total_return": 0.2},
                          "benchmark": {"total_return": 0.1}, "sharpe_strategy": 1.2, "sharpe_benchmark": 0.8,
                          "psr_excess": 0.99, "dsr_excess": 0.97, "predictions": 1000},
              "folds": []}
    import evidence_binding
    features = data_collection.load_processed(path if Path(path).exists() else home / C.PROCESSED_DATA_FILE)
    features = features[features["Symbol"].isin(report["inputs"]["universe"])]
    _, last = evidence_binding.fixed_window("walk_forward", pd.DatetimeIndex(sorted(features["Date"].unique())))
    report["evidence"] = evidence_binding.binding("walk_forward", features, path, report["inputs"]["universe"],
                                                  sorted(data_collection.load_universe()), features["Date"].min(),
                                                  last)     # the folds stop before the sealed holdout
    run_id = walk_forward_runs.record_run(report)
    if created_at:
        import state_db
        conn = state_db.connect()
        conn.execute("UPDATE walk_forward_runs SET created_at = ? WHERE id = ?", (created_at, run_id))
        conn.commit()
        conn.close()
    return run_id


def _record_paper_sessions(home, checksum, n, replay=0):
    import golive
    import state_db
    conn = state_db.connect()
    golive.ensure_schema(conn)
    for day in pd.bdate_range("2025-11-03", periods=n):
        conn.execute("INSERT OR IGNORE INTO paper_sessions VALUES (?,?,?,?,?,?)",
                     (str(day.date()), checksum, replay, 1, 100000.0, "2025-11-03T00:00:00+00:00"))
    conn.close()


def test_gate_opens_only_when_both_conditions_hold(home, trained, cli):
    import model_management
    checksum = model_management.calculate_model_checksum(home / C.MODEL_FILE)
    _record_passing_backtest(home, checksum, eligible=False)          # loosened criteria: no
    _record_passing_backtest(home, checksum, in_sample=True)          # in-sample: no
    _record_paper_sessions(home, checksum, 9, replay=1)               # replays: no
    _record_paper_sessions(home, "other-model", 9)                   # another model: no
    assert cli("gate").returncode == 1
    _record_passing_backtest(home, checksum)
    _record_walk_forward(home)
    _record_paper_sessions(home, checksum, 4)
    gate = cli("gate")
    assert gate.returncode == 1 and "4 of 5" in gate.stdout and "PASS (" in gate.stdout
    _record_paper_sessions(home, checksum, 5)
    gate = cli("gate")
    assert gate.returncode == 0 and "ALLOWED" in gate.stdout
    live = run(["live_trading.py"], home, {"TRADING_MODE": "live"})
    assert live.returncode != 3 and "LIVE TRADING REFUSED" not in live.stderr


def _gate(home):
    import golive
    import model_management
    checksum = model_management.calculate_model_checksum(home / C.MODEL_FILE)
    return golive.gate_status(checksum)


def _open_but_for_walk_forward(home):
    import model_management
    checksum = model_management.calculate_model_checksum(home / C.MODEL_FILE)
    _record_passing_backtest(home, checksum)
    _record_paper_sessions(home, checksum, C.GOLIVE_MIN_PAPER_SESSIONS)


def test_gate_closed_without_a_walk_forward(home, trained, cli):
    _open_but_for_walk_forward(home)
    st = _gate(home)
    assert not st["passed"] and st["backtest"] and st["walk_forward"] is None
    assert [c["name"] for c in st["conditions"] if not c["passed"]] == ["walk_forward"]
    gate = cli("gate")
    assert gate.returncode == 1 and "REFUSED" in gate.stdout and "walk-forward" in gate.stdout
    assert "./run_backtest.sh --walk-forward" in gate.stdout and "no walk-forward of this model" in gate.stdout
    as_json = json.loads(cli("gate", "--json").stdout)
    wf = next(c for c in as_json["conditions"] if c["name"] == "walk_forward")
    assert wf["passed"] is False and wf["fix"] == "./run_backtest.sh --walk-forward" and wf["threshold"]


def test_gate_closed_with_a_failing_walk_forward(home, trained, cli):
    _open_but_for_walk_forward(home)
    _record_walk_forward(home, passed=False)
    st = _gate(home)
    assert not st["passed"] and st["walk_forward"] is None and st["walk_forward_latest"]["passed"] is False
    gate = cli("gate")
    assert gate.returncode == 1 and "FAILED its statistics" in gate.stdout


def test_gate_closed_with_a_walk_forward_of_another_config_universe_or_subset(home, trained, cli):
    import data_collection
    _open_but_for_walk_forward(home)
    universe = sorted(data_collection.load_universe())
    _record_walk_forward(home, config_fingerprint="0" * 64)                  # another configuration
    _record_walk_forward(home, universe=universe[:-1])                         # another universe
    _record_walk_forward(home, eligible=False)                                 # a subset or short history
    _record_walk_forward(home, data_path=home / "elsewhere.csv", data_sha256="f" * 64)   # other data
    assert not _gate(home)["passed"]
    _record_walk_forward(home)                                                 # the matching pass
    st = _gate(home)
    assert st["passed"] and st["walk_forward"]["id"] == 5
    gate = cli("gate")
    assert gate.returncode == 0 and "ALLOWED" in gate.stdout and "walk-forward:   PASS (run 5" in gate.stdout


def test_gate_walk_forward_ties_to_the_production_data(home, trained):
    """Bound to the production rows, not the file's bytes nor the run's age: a file rewritten with
    the same rows still counts, whatever the run's age; a changed row of the history makes the
    evidence STALE ("data changed"), and a pass on that rewritten history counts again."""
    from datetime import datetime, timedelta, timezone
    _open_but_for_walk_forward(home)
    old = (datetime.now(timezone.utc) - timedelta(days=C.GOLIVE_WALK_FORWARD_MAX_AGE_DAYS + 30)).isoformat()
    _record_walk_forward(home, created_at=old)
    assert _gate(home)["passed"]                                               # same rows: counts
    with open(home / C.PROCESSED_DATA_FILE, "a") as fh:                        # the same rows, other bytes
        fh.write("\n")
    assert _gate(home)["passed"]
    df = pd.read_csv(home / C.PROCESSED_DATA_FILE)
    df.loc[len(df) // 2, "Close"] *= 1.01                                      # history rewritten
    df.to_csv(home / C.PROCESSED_DATA_FILE, index=False)
    st = _gate(home)
    assert not st["passed"] and st["walk_forward_state"] == "STALE" and st["backtest_state"] == "STALE"
    assert any(w.startswith("data changed") for w in st["walk_forward_stale"]), st["walk_forward_stale"]
    assert "data changed" in next(c for c in st["conditions"] if c["name"] == "walk_forward")["measured"]
    _record_walk_forward(home)
    import model_management
    _record_passing_backtest(home, model_management.calculate_model_checksum(home / C.MODEL_FILE))
    assert _gate(home)["passed"]


def test_gate_override_is_explicit_and_audited(home, trained, cli):
    """An override waives the paper sessions only; without a passing backtest on record it
    needs the explicit --no-backtest. Both print ALLOWED and are audited."""
    import model_management
    assert cli("gate", "--override").returncode == 2     # needs a reason
    refused = cli("gate", "--override", "--reason", "operator insists")
    assert refused.returncode == 1 and "--no-backtest" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr            # one line, no traceback
    assert "ALLOWED" not in cli("gate").stdout
    checksum = model_management.calculate_model_checksum(home / C.MODEL_FILE)
    _record_passing_backtest(home, checksum)                          # 0 of 5 paper sessions
    refused = cli("gate", "--override", "--reason", "operator insists")
    assert refused.returncode == 1 and "walk-forward" in refused.stderr          # the evidence is still needed
    assert "out-of-sample backtest" not in refused.stderr
    _record_walk_forward(home)
    done = cli("gate", "--override", "--reason", "operator insists")
    assert done.returncode == 0 and "ALLOWED" in done.stdout and "operator insists" in done.stdout
    assert ("golive_gate", "override") in [(r["action"], r["status"]) for r in audit_records(home)]


def test_gate_override_without_backtest_needs_the_explicit_flag(home, trained, cli):
    done = cli("gate", "--override", "--no-backtest", "--reason", "drill")
    assert done.returncode == 0 and "ALLOWED" in done.stdout and "backtest waived" in done.stdout
    records = [r for r in audit_records(home) if (r["action"], r["status"]) == ("golive_gate", "override")]
    assert records and records[-1]["details"]["no_backtest"] is True
    assert cli("gate", "--no-backtest").returncode == 2


def test_replay_refused_in_live_mode(home, trained):
    done = run(["live_trading.py", "--as-of", trained["trade_day"]], home, {"TRADING_MODE": "live"})
    assert done.returncode == 1 and "paper-only" in done.stderr


def test_bad_trading_mode_is_a_startup_error(home):
    done = run(["live_trading.py", "status"], home, {"TRADING_MODE": "yes"})
    assert done.returncode == 2 and "TRADING_MODE" in done.stderr


def test_stale_data_stops_the_cycle(home, trained):
    df = pd.read_csv(home / C.PROCESSED_DATA_FILE)
    df[df["Date"] < "2025-10-01"].to_csv(home / C.PROCESSED_DATA_FILE, index=False)
    done = run(["live_trading.py", "--as-of", trained["last_day"]], home)
    assert done.returncode == 1 and "stale" in done.stderr and "run_daily_data_update.sh" in done.stderr
    assert ("cycle_end", "error") in [(r["action"], r["status"]) for r in audit_records(home)]


def test_corrupted_model_stops_the_cycle(home, trained):
    with open(home / C.MODEL_FILE, "r+b") as fh:
        fh.seek(2000)
        fh.write(b"\x00garbage\x00")
    done = run(["live_trading.py", "--as-of", trained["trade_day"]], home)
    assert done.returncode == 1 and "integrity" in done.stderr
    assert "integrity" in (home / "logs" / "errors.log").read_text()


def test_runbook_get_latest_signal_one_liner(home, trained):
    code = "from live_trading import get_latest_signal; s = get_latest_signal(); print(len(s), sorted(s[0]))"
    done = run(["-c", code], home)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("10 ")
    for key in ("date", "predicted_diff", "score", "signal", "symbol"):
        assert key in done.stdout
    assert "Prediction:" in next((home / "logs").glob("trading_*.log")).read_text()


def test_nonsensical_predictions_stop_the_cycle(home, trained, monkeypatch):
    import signals
    frame = pd.DataFrame({"Symbol": ["A", "B", "C"], "Close": [10.0, 20.0, 30.0],
                          "volatility_20": [0.01] * 3, "predicted_diff": [0.1, float("nan"), 0.2]})
    with pytest.raises(signals.NonsensicalPredictionError, match="NaN"):
        signals.check_predictions(signals.score_predictions(frame))
    same = frame.assign(predicted_diff=[0.1, 0.2, 0.3])
    with pytest.raises(signals.NonsensicalPredictionError, match="same"):
        signals.check_predictions(signals.score_predictions(same))
    absurd = frame.assign(predicted_diff=[0.1, 15.0, 0.2])
    with pytest.raises(signals.NonsensicalPredictionError, match="absurd"):
        signals.check_predictions(signals.score_predictions(absurd))
    fine = frame.assign(predicted_diff=[0.01, -0.02, 0.5])
    scored = signals.score_predictions(fine)
    signals.check_predictions(scored)
    assert list(scored["signal"]) == ["HOLD", "HOLD", "BUY"]


# ------------------------------------------------------------------ a live cycle against a fake Schwab
from test_trading_api import cm, fake, store  # noqa: E402,F401  (fixtures: schwab-py's real client, fake server)


def test_live_cycle_through_schwab_py(home, trained, fake, cm, monkeypatch):
    """TRADING_MODE=live, gate open, market open: orders go through schwab-py's real request
    building to a fake Schwab on an httpx transport; a rerun sends nothing twice."""
    import model_management
    import live_trading
    from datetime import datetime
    from zoneinfo import ZoneInfo
    import market_calendar

    day = trained["trade_day"]
    df = pd.read_csv(home / C.PROCESSED_DATA_FILE)
    df[df["Date"] <= day].to_csv(home / C.PROCESSED_DATA_FILE, index=False)
    closes = df[df["Date"] == day].set_index("Symbol")["Close"].to_dict()
    checksum = model_management.calculate_model_checksum(home / C.MODEL_FILE)
    _record_passing_backtest(home, checksum)
    _record_walk_forward(home)
    _record_paper_sessions(home, checksum, 5)
    store(cm)
    fake.quotes = {s: {"quote": {"lastPrice": p, "bidPrice": p - 0.01, "askPrice": p + 0.01},
                       "fundamental": {}, "reference": {"isShortable": True, "isHardToBorrow": False,
                                                        "htbRate": 0.0}} for s, p in closes.items()}
    add = fake.add_order

    def add_filled(**fields):                 # Schwab fills market orders at once here
        oid = add(**fields)
        qty = fields.get("quantity", 10)
        leg = fields["orderLegCollection"][0]
        fake.orders[oid].update(status="FILLED", filledQuantity=qty, remainingQuantity=0,
                                orderActivityCollection=[{"executionLegs": [
                                    {"quantity": qty, "price": closes[leg["instrument"]["symbol"]]}]}])
        return oid
    fake.add_order = add_filled
    monkeypatch.setenv("TRADING_MODE", "live")
    now = datetime.combine(market_calendar.next_session(day).date(),
                           datetime.min.time()).replace(hour=10, tzinfo=ZoneInfo("America/New_York"))
    assert live_trading.run_cycle(now=now) == 0
    bodies = fake.posted_orders()
    assert bodies, "the trade day has BUY/SELL signals"
    for body in bodies:
        assert body["orderType"] == "MARKET" and body["session"] == "NORMAL"
        assert body["orderLegCollection"][0]["instruction"] in ("BUY", "SELL_SHORT")
    conn = db(home)
    rows = [dict(r) for r in conn.execute("SELECT * FROM orders WHERE mode = 'live'")]
    assert len(rows) == len(bodies) and all(r["status"] == "FILLED" and r["broker_order_id"] for r in rows)
    assert ("order_fill", "filled") in [(r["action"], r["status"]) for r in audit_records(home)]
    assert live_trading.run_cycle(now=now) == 0             # the same day again
    assert len(fake.posted_orders()) == len(bodies)
