"""Evidence bound to what will trade (issue 21, point 0): the backtest and the walk-forward count
for the go-live gate only on the production data, the universe and the fixed window, and the gate
says which changed. Fast: small data files, recorded runs, the gate's own lookup (no training)."""
import pandas as pd
import pytest

import constants as C
import data_collection
import evidence_binding as EB
import evidence_fixture as F
import golive
import state_db

META = {"window": C.TINY_WINDOW, "sha256": "cd" * 32, "feature_columns": list(C.FEATURE_COLUMNS),
        "architecture": {"lstm_units": C.TINY_UNITS, "dense_units": C.TINY_DENSE_UNITS, "lstm_layers": 1},
        "training": {"epochs_max": C.TINY_EPOCHS, "patience": C.TINY_PATIENCE,
                     "batch_size": C.TRAIN_BATCH_SIZE, "learning_rate": C.TRAIN_LEARNING_RATE}}
UNIVERSE = ["AAA", "BBB"]


@pytest.fixture(autouse=True)
def small_holdout(monkeypatch):
    """The sealed holdout is the newest 10 sessions of these small files (the walk-forward's fixed
    window ends before it)."""
    monkeypatch.setattr(C, "HOLDOUT_SESSIONS", 10)


@pytest.fixture
def prod(trading_home):
    """(connection, production path, model metadata with its split) in a fresh home."""
    path = F.write_processed(trading_home / C.PROCESSED_DATA_FILE, UNIVERSE, sessions=60)
    meta = F.meta_with_split(META, path)
    conn = state_db.connect()
    yield conn, path, meta
    conn.close()


def _status(conn, path, meta, universe=UNIVERSE):
    return golive.gate_status(meta["sha256"], conn, metadata=meta, universe=universe, data_path=path)


def _open_paper(conn, checksum):
    golive.ensure_schema(conn)
    for day in pd.bdate_range("2026-10-01", periods=C.GOLIVE_MIN_PAPER_SESSIONS):
        golive.record_paper_session(conn, day.date(), checksum, False, 1, 1e5)
    conn.commit()


def test_both_legs_on_the_production_data_open_the_gate(prod):
    conn, path, meta = prod
    F.record_backtest(meta["sha256"], meta, UNIVERSE, path, conn)
    F.record_walk_forward(meta, UNIVERSE, path, conn=conn)
    _open_paper(conn, meta["sha256"])
    st = _status(conn, path, meta)
    assert st["backtest_state"] == "PASS" and st["walk_forward_state"] == "PASS" and st["passed"], st["conditions"]


def test_the_audit_finding_a_synthetic_file_at_the_production_path(prod, tmp_path):
    """The audit: a synthetic file put at the production path made the walk-forward pass, and once
    the real file was back ``gate`` said ALLOWED while showing a data SHA that was no longer the
    production file's. Now both legs are STALE: "data changed", and the gate is closed."""
    conn, path, meta = prod
    real = path.read_bytes()
    F.write_processed(path, UNIVERSE, sessions=60, seed=99)          # the synthetic file, same path
    F.record_backtest(meta["sha256"], meta, UNIVERSE, path, conn)
    F.record_walk_forward(meta, UNIVERSE, path, conn=conn)
    _open_paper(conn, meta["sha256"])
    assert _status(conn, path, meta)["passed"]                       # while it IS the production file
    path.write_bytes(real)                                           # the real data back
    st = _status(conn, path, meta)
    assert not st["passed"]
    assert st["backtest_state"] == "STALE" and st["walk_forward_state"] == "STALE"
    assert any(w.startswith("data changed") for w in st["backtest_stale"]), st["backtest_stale"]
    assert any(w.startswith("data changed") for w in st["walk_forward_stale"]), st["walk_forward_stale"]
    head = "\n".join(golive.headline(st)[:2])                       # the two legs' lines
    assert "STALE" in head and "data changed" in head and "PASS" not in head, head
    assert any("data changed" in r for r in golive.refusal_reasons(st))


def test_sessions_appended_by_the_daily_update_keep_the_evidence(trading_home):
    """The same history with later sessions appended (what the data update does): still counts;
    appended beyond GOLIVE_WALK_FORWARD_MAX_AGE_DAYS: "window changed"."""
    path = trading_home / C.PROCESSED_DATA_FILE
    F.write_processed(path, UNIVERSE, sessions=80)
    full = pd.read_csv(path, parse_dates=["Date"])
    sessions = sorted(full["Date"].unique())
    full[full["Date"] <= sessions[-16]].to_csv(path, index=False, date_format="%Y-%m-%d")   # the run's data
    meta = F.meta_with_split(META, path)
    conn = state_db.connect()
    F.record_backtest(meta["sha256"], meta, UNIVERSE, path, conn)
    F.record_walk_forward(meta, UNIVERSE, path, conn=conn)
    full[full["Date"] <= sessions[-13]].to_csv(path, index=False, date_format="%Y-%m-%d")   # 3 sessions later
    st = _status(conn, path, meta)
    assert st["backtest_state"] == "PASS" and st["walk_forward_state"] == "PASS", (st["backtest_stale"],
                                                                                   st["walk_forward_stale"])
    full.to_csv(path, index=False, date_format="%Y-%m-%d")                                  # 15 sessions later
    st = _status(conn, path, meta)
    assert st["backtest_state"] == "STALE" and st["walk_forward_state"] == "STALE"
    assert all(w.startswith("window changed") for w in st["backtest_stale"] + st["walk_forward_stale"])
    conn.close()


def test_a_changed_universe_makes_both_legs_stale_and_says_so(trading_home):
    path = F.write_processed(trading_home / C.PROCESSED_DATA_FILE, UNIVERSE + ["CCC"], sessions=60)
    meta = F.meta_with_split(META, path)
    conn = state_db.connect()
    F.record_backtest(meta["sha256"], meta, UNIVERSE, path, conn)
    F.record_walk_forward(meta, UNIVERSE, path, conn=conn)
    assert _status(conn, path, meta)["walk_forward_state"] == "PASS"
    st = _status(conn, path, meta, universe=UNIVERSE + ["CCC"])
    assert st["backtest_state"] == st["walk_forward_state"] == "STALE"
    assert any("universe changed" in w and "+CCC" in w for w in st["backtest_stale"])
    assert any("universe changed" in w and "+CCC" in w for w in st["walk_forward_stale"])
    conn.close()


def test_runs_off_the_fixed_window_other_data_or_a_subset_are_not_gate_evidence(prod, tmp_path):
    conn, path, meta = prod
    sessions = sorted(data_collection.load_processed(path)["Date"].unique())
    F.record_backtest(meta["sha256"], meta, UNIVERSE, path, conn, start=sessions[-20])    # a later --start
    F.record_backtest(meta["sha256"], meta, UNIVERSE, path, conn, end=sessions[-5])       # an earlier --end
    st = _status(conn, path, meta)
    assert st["backtest"] is None and st["backtest_state"] == "STALE"
    assert any(w.startswith("not gate evidence") and "--end" in w for w in st["backtest_stale"]), st["backtest_stale"]
    other = F.write_processed(tmp_path / "other.csv", UNIVERSE, sessions=60, seed=5)
    F.record_walk_forward(meta, UNIVERSE, other, conn=conn)                                # --data other.csv
    F.record_walk_forward(meta, UNIVERSE, path, conn=conn, symbols=["AAA"])                # --symbols AAA
    st = _status(conn, path, meta)
    assert st["walk_forward"] is None
    assert any("--symbols" in w for w in st["walk_forward_stale"]), st["walk_forward_stale"]
    first = st["walk_forward_latest"]["id"]
    rows = [r for r in conn.execute("SELECT id, summary FROM walk_forward_runs ORDER BY id")]
    assert any("--data" in r["summary"] and "not the production file" in r["summary"] for r in rows), first


def test_binding_says_in_one_line_why_a_run_is_not_evidence(prod, tmp_path):
    conn, path, meta = prod
    features = data_collection.load_processed(path)
    other = tmp_path / "x.csv"
    ev = EB.binding("walk_forward", features, other, UNIVERSE, UNIVERSE, features["Date"].min(), features["Date"].max())
    line = EB.not_evidence_line(ev)
    assert ev["gate_evidence"] is False and line.startswith("NOT gate evidence: --data") and "\n" not in line
    _, last = EB.fixed_window("walk_forward", sorted(features["Date"].unique()))     # before the sealed holdout
    ok = EB.binding("walk_forward", features, None, UNIVERSE, UNIVERSE, features["Date"].min(), last)
    assert ok["gate_evidence"] and EB.not_evidence_line(ok) is None
    assert ok["data_sha256"] == EB.window_sha256(features, UNIVERSE, last)


def test_a_failed_walk_forward_names_the_failing_statistic(prod):
    """Not "None .. None": the statistic, its value and the threshold."""
    conn, path, meta = prod
    F.record_walk_forward(meta, UNIVERSE, path, conn=conn, passed=False)
    st = _status(conn, path, meta)
    head = golive.headline(st)[1]
    assert "FAILED" in head and "DM p-value 0.31" in head and "< 0.05" in head, head
    assert any("DM p-value 0.31" in r for r in golive.refusal_reasons(st))
