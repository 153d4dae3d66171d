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


