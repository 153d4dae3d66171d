"""The go-live gate's records: criteria verdicts and the lookup of a passing backtest."""
import golive as G
import state_db


def test_criteria_verdicts():
    ok = {"total_return": 0.1, "sharpe": 1.0, "max_drawdown": -0.1, "trades": 40}
    assert all(c["passed"] for c in G.evaluate_criteria(ok))
    for key, value in (("total_return", 0.0), ("sharpe", 0.49), ("max_drawdown", -0.21), ("trades", 29)):
        rows = {c["name"]: c["passed"] for c in G.evaluate_criteria({**ok, key: value})}
        assert rows[key] is False and sum(not v for v in rows.values()) == 1
    assert not all(c["passed"] for c in G.evaluate_criteria({**ok, "sharpe": None}))


def test_passing_backtest_for_counts_only_out_of_sample_eligible_passes():
    conn = state_db.connect(":memory:")
    assert G.passing_backtest_for("abc", conn) is None

    def rec(**kw):
        row = {"model_checksum": "abc", "in_sample": False, "passed": True, "gate_eligible": True,
               "start": "2025-01-02", "end": "2025-10-31", "parameters": {}, "metrics": {"sharpe": 1.0}}
        row.update(kw)
        return G.record_run(row, "/r.json", conn)

    rec(in_sample=True)
    rec(passed=False)
    rec(gate_eligible=False)
    rec(model_checksum="other")
    assert G.passing_backtest_for("abc", conn) is None
    good = rec(metrics={"sharpe": 2.0})
    rec(passed=False)                                      # a later failure does not hide it
    found = G.passing_backtest_for("abc", conn)
    assert found["id"] == good and found["metrics"] == {"sharpe": 2.0} and found["in_sample"] is False
    assert found["report"] == "/r.json"




def test_the_gate_closes_every_connection_it_opens(monkeypatch):
    """paper_session_count, gate_status and the rest open a connection only when the caller
    passes none, and close it (state_db.opened)."""
    import sqlite3

    import pytest

    opened = []
    real_connect = state_db.connect

    def recording_connect(path=None):
        conn = real_connect(path)
        opened.append(conn)
        return conn
    monkeypatch.setattr(state_db, "connect", recording_connect)
    meta = {"window": 10, "sha256": "ab" * 32, "architecture": {"lstm_units": 8, "dense_units": 8, "lstm_layers": 1},
            "training": {"epochs_max": 3, "patience": 1}}
    assert G.paper_session_count("ab" * 32) == 0
    G.record_run({"model_checksum": "x", "in_sample": False, "passed": True, "gate_eligible": True}, None)
    assert G.passing_backtest_for("x")["model_checksum"] == "x"
    status = G.gate_status("ab" * 32, metadata=meta, universe=["AAA"], data_path="/nonexistent.csv")
    assert status["passed"] is False and len(opened) >= 4
    for conn in opened:
        with pytest.raises(sqlite3.ProgrammingError):
            conn.execute("SELECT 1")
    conn = real_connect()
    assert G.paper_session_count("ab" * 32, conn) == 0
    conn.execute("SELECT 1")                      # the caller's connection stays open
    conn.close()


def test_gate_headline_agrees_with_a_failed_walk_forward_and_names_periods():
    """Issue 23: ``gate`` said the walk-forward was "MISSING" while its detail line said it FAILED,
    and printed "None .. None" for the backtest's period."""
    import walk_forward_runs as W
    conn = state_db.connect(":memory:")
    meta = {"window": 10, "sha256": "ab" * 32, "architecture": {"lstm_units": 8, "dense_units": 8, "lstm_layers": 1},
            "training": {"epochs_max": 3, "patience": 1}}
    G.record_run({"model_checksum": "ab" * 32, "in_sample": False, "passed": True, "gate_eligible": True,
                  "start": "2025-01-02", "end": "2025-10-31", "parameters": {}, "metrics": {}}, "/r.json", conn)
    fingerprint = W.config_fingerprint(W.model_configuration_from_metadata(meta))
    with W._opened(conn) as c:
        c.execute("INSERT INTO walk_forward_runs(created_at, config_fingerprint, data_sha256, data_path, universe, "
                  "start_date, end_date, costs, model_config, seed, workers, passed, gate_eligible, report_path, "
                  "summary) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                  (state_db.utcnow(), fingerprint, "00" * 32, "/nonexistent.csv", W.universe_key(["AAA"]),
                   "2020-01-02", "2025-10-31", "{}", "{}", 1, 1, 0, 1, None, "{}"))
    status = G.gate_status("ab" * 32, conn, metadata=meta, universe=["AAA"], data_path="/nonexistent.csv")
    head = G.headline(status)
    assert head[1].split()[1] == "FAILED" and "MISSING" not in head[1], head
    wf = next(c for c in status["conditions"] if c["name"] == "walk_forward")
    assert "FAILED" in wf["measured"]
    bt = next(c for c in status["conditions"] if c["name"] == "backtest")
    assert "2025-01-02 .. 2025-10-31" in bt["measured"] and "None" not in bt["measured"], bt["measured"]
    assert any("FAILED" in why for why in G.refusal_reasons(status))
    assert G.headline({**status, "walk_forward_latest": None, "walk_forward_state": "MISSING"})[1].split()[1] \
        == "MISSING:"
