"""trial_registry.py: every evaluation run is a counted trial, in a database beside the audit
trail that a new state database does not reset; the walk-forward's N and the gate's trial count,
DSR and PBO lines (fast: no training)."""
import json
import shutil

import numpy as np
import pandas as pd
import pytest

import config
import evidence_fixture
import constants as C
import golive
import state_db
import trial_registry as R
import walk_forward as wf
import walk_forward_runs as runs

UNIVERSE = ["AAA", "BBB"]
META = {"window": C.TINY_WINDOW, "sha256": "ab" * 32, "feature_columns": list(C.FEATURE_COLUMNS),
        "architecture": {"lstm_units": C.TINY_UNITS, "dense_units": C.TINY_DENSE_UNITS, "lstm_layers": 1},
        "training": {"epochs_max": C.TINY_EPOCHS, "patience": C.TINY_PATIENCE,
                     "batch_size": C.TRAIN_BATCH_SIZE, "learning_rate": C.TRAIN_LEARNING_RATE}}


@pytest.fixture
def production(trading_home):
    data = trading_home / C.PROCESSED_DATA_FILE
    data.write_text("Date,Symbol\n2025-01-02,AAA\n")
    return data


def _series(seed: int, edge: float = 0.0, days: int = 320) -> dict:
    rng = np.random.default_rng(seed)
    dates = [str(d.date()) for d in pd.bdate_range("2024-01-02", periods=days)]
    bench = rng.normal(0.0003, 0.01, days)
    return {"dates": dates, "strategy": (bench + rng.normal(edge, 0.004, days)).tolist(), "benchmark": bench.tolist()}


def _trial(data, seed=1, kind="walk_forward", fingerprint="f" * 64, recorded=True, series=None, universe=UNIVERSE):
    return R.record_trial(kind, config_fingerprint=fingerprint, universe=universe, seed=seed,
                          settings={"min_train": 504, "retrain": 63}, recorded=recorded, data_sha256="0" * 64,
                          data_path=data, start="2024-01-02", end="2025-03-01", sharpe=0.5, dsr=0.4, passed=False,
                          series=series)


def test_the_registry_lives_beside_the_audit_trail_and_survives_a_new_state_database(production, trading_home):
    assert R.registry_path().parent == config.path(C.AUDIT_LOG_FILE).parent
    _trial(production)
    conn = state_db.connect()
    conn.close()
    assert R.count_trials(UNIVERSE) == 1
    shutil.rmtree(trading_home / "state")                     # a new state database (start-over, a wipe)
    state_db.connect().close()
    assert R.registry_path().exists() and R.count_trials(UNIVERSE) == 1
    assert runs.count_trials(UNIVERSE, "e" * 64) == 2         # the next run is the second trial


def test_every_run_counts_whatever_its_seed_settings_or_no_record(production, tmp_path):
    for seed in (1, 2, 3):
        _trial(production, seed=seed)                         # the same configuration, three seeds
    _trial(production, recorded=False)                        # --no-record
    _trial(production, kind="sweep", fingerprint="a" * 64)
    _trial(production, kind="holdout")
    _trial(production, kind="backtest")
    assert R.count_trials(UNIVERSE) == 7
    assert runs.count_trials(UNIVERSE, "f" * 64) == 8
    # another universe, and another data file than the production one, are not counted here
    _trial(production, universe=["AAA"])
    other = tmp_path / "elsewhere.csv"
    other.write_text("Date,Symbol\n")
    _trial(other)
    assert R.count_trials(UNIVERSE) == 7
    # a copy of the production bytes at another path is the production data
    copy = tmp_path / "copy.csv"
    copy.write_bytes(production.read_bytes())
    R.record_trial("walk_forward", config_fingerprint="f" * 64, universe=UNIVERSE, seed=9, settings={},
                   recorded=True, data_sha256=__import__("fileutil").file_sha256(copy), data_path=copy)
    assert R.count_trials(UNIVERSE) == 8
    with pytest.raises(ValueError, match="unknown trial kind"):
        _trial(production, kind="guess")


def test_no_record_is_still_a_trial_says_the_help(capsys):
    with pytest.raises(SystemExit):
        wf.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--no-record" in text and "still a counted trial in the trial registry" in text


def test_split_holdout_seals_the_newest_sessions(monkeypatch):
    dates = pd.bdate_range("2020-01-01", periods=300)
    frame = pd.DataFrame({"Date": np.repeat(dates, 2), "Symbol": ["A", "B"] * 300})
    monkeypatch.setattr(C, "HOLDOUT_SESSIONS", 40)
    kept, sealed = wf.split_holdout(frame)
    assert len(sealed) == 40 and sealed[0] == dates[260] and sealed[-1] == dates[-1]
    assert kept["Date"].max() == dates[259] and len(kept) == 520
    assert len(wf.split_holdout(frame, 0)[1]) == 0 and len(wf.split_holdout(frame, 0)[0]) == 600
    with pytest.raises(wf.WalkForwardError, match="HOLDOUT_SESSIONS"):
        wf.split_holdout(frame, 300)


def test_grid_specs():
    assert wf.parse_grid("retrain=63,126;threshold=0.5,0.7") == [
        {"retrain": 63, "threshold": 0.5}, {"retrain": 63, "threshold": 0.7},
        {"retrain": 126, "threshold": 0.5}, {"retrain": 126, "threshold": 0.7}]
    assert wf.parse_grid('{"window": [5, 10], "profile": "tiny"}') == [{"window": 5, "profile": "tiny"},
                                                                        {"window": 10, "profile": "tiny"}]
    assert wf.parse_grid('[{"retrain": 20}, {"retrain": 20}]') == [{"retrain": 20}]
    assert len(wf.parse_grid(C.SWEEP_GRID)) >= 2
    for bad, word in (("seed=1,2", "not a sweep key"), ("retrain=x", "not a int"), ("", "empty"),
                      ("{nope", "not valid JSON"), ("profile=huge", "unknown training profile")):
        with pytest.raises(wf.WalkForwardUsageError, match=word):
            wf.parse_grid(bad)


def _gate(conn, data):
    return golive.gate_status(META["sha256"], conn, metadata=META, universe=UNIVERSE, data_path=data)


def _record_passing_run(conn, data, trial_id):
    """A passing walk-forward of META's configuration bound to the production data (as
    walk_forward.run records it: evidence_fixture), linked to its trial."""
    runs.record_run({**evidence_fixture.walk_forward_report(META, UNIVERSE, data), "trial_id": trial_id}, conn=conn)


@pytest.fixture
def priced(trading_home, monkeypatch):
    """A production data file of 60 sessions with prices (the gate binds the walk-forward to it),
    the newest 10 its sealed holdout."""
    monkeypatch.setattr(C, "HOLDOUT_SESSIONS", 10)
    return evidence_fixture.write_processed(trading_home / C.PROCESSED_DATA_FILE, UNIVERSE, sessions=60)


def test_gate_shows_trials_dsr_pbo_and_the_holdout_with_thresholds(priced, monkeypatch):
    """The counted walk-forward's DSR is recomputed at today's trial count; the PBO over the
    universe's trials has its ceiling once PBO_MIN_TRIALS trials exist; ``gate --json`` has them."""
    production = priced
    monkeypatch.setattr(C, "PBO_MIN_TRIALS", 4)
    monkeypatch.setattr(C, "PBO_BLOCKS", 8)
    conn = state_db.connect()
    good = _trial(production, series=_series(1, edge=0.0006))         # a real, modest daily edge
    _record_passing_run(conn, production, good)
    st = _gate(conn, production)
    cond = {c["name"]: c for c in st["conditions"]}
    assert cond["walk_forward"]["passed"] and cond["overfitting"]["passed"], cond["overfitting"]
    t = st["trials"]
    assert t["n_trials"] == 1 and t["dsr"] > 0.95 and t["pbo_applies"] is False
    lines = "\n".join(golive.headline(st))
    assert "trials:         1 on this universe" in lines and "needs >= 0.95" in lines
    assert "needs <= 0.5" in lines and "not yet applied from 4 trials" in lines
    assert "holdout:        sealed, not opened" in lines
    json.dumps(st, default=str)                                        # gate --json prints it
    # three noise configurations tried later: the edge still dominates (low PBO) ...
    for seed in (2, 3, 4):
        _trial(production, seed=seed, series=_series(seed))
    st = _gate(conn, production)
    assert st["trials"]["n_trials"] == 4 and st["trials"]["pbo_applies"] and st["trials"]["pbo"] < 0.2
    assert next(c for c in st["conditions"] if c["name"] == "overfitting")["passed"]
    # ... but 55 more tries deflate its Sharpe below the threshold: the same evidence no longer passes
    for seed in range(5, 60):
        _trial(production, seed=seed, series=_series(seed))
    st = _gate(conn, production)
    over = next(c for c in st["conditions"] if c["name"] == "overfitting")
    assert st["trials"]["n_trials"] == 59 and st["trials"]["dsr"] < 0.95 < t["dsr"]
    assert "59 trial(s) on this universe" in over["measured"] and "<= 0.5" in over["threshold"]
    assert not over["passed"] and st["passed"] is False
    assert any("deflated Sharpe at 59 trials is below 0.95" in w for w in golive.refusal_reasons(st))
    assert "(FAIL; needs >= 0.95)" in "\n".join(golive.headline(st))
    # the holdout opened for this configuration shows in the gate
    fp = runs.config_fingerprint(runs.model_configuration_from_metadata(META))
    R.record_holdout_opening(fp, UNIVERSE, "0" * 64, "2025-03-03", "2026-03-02", good, True, {"conditions": []})
    lines = "\n".join(golive.headline(_gate(conn, production)))
    assert "holdout:        opened for this configuration" in lines and "PASS" in lines
    conn.close()


def test_the_pbo_ceiling_closes_the_gate_on_noise(priced, monkeypatch):
    production = priced
    monkeypatch.setattr(C, "PBO_MIN_TRIALS", 4)
    monkeypatch.setattr(C, "PBO_BLOCKS", 8)
    monkeypatch.setattr(C, "PBO_MAX", 0.05)
    conn = state_db.connect()
    first = _trial(production, seed=100, series=_series(100))
    _record_passing_run(conn, production, first)
    for seed in range(101, 110):
        _trial(production, seed=seed, series=_series(seed))
    st = _gate(conn, production)
    over = next(c for c in st["conditions"] if c["name"] == "overfitting")
    assert st["trials"]["pbo"] > 0.05 and not over["passed"] and st["passed"] is False
    assert any("probability of backtest overfitting is above 0.05" in w for w in golive.refusal_reasons(st))
    conn.close()
