"""The walk-forward evidence fingerprint: one declared group of strategy tunables in constants.py,
every constant classified, and changing any strategy tunable makes old evidence stale (fast, no
training: a recorded run and the gate's own lookup)."""
import pytest

import constants as C
import evidence_fixture
import golive
import state_db
import walk_forward_runs as runs

META = {"window": C.TINY_WINDOW, "sha256": "ab" * 32, "feature_columns": list(C.FEATURE_COLUMNS),
        "architecture": {"lstm_units": C.TINY_UNITS, "dense_units": C.TINY_DENSE_UNITS, "lstm_layers": 1},
        "training": {"epochs_max": C.TINY_EPOCHS, "patience": C.TINY_PATIENCE,
                     "batch_size": C.TRAIN_BATCH_SIZE, "learning_rate": C.TRAIN_LEARNING_RATE}}
UNIVERSE = ["AAA", "BBB"]


def _constant_names() -> set[str]:
    return {n for n in vars(C) if n.isupper() and not n.startswith("_")} - {"STRATEGY_TUNABLES",
                                                                            "OPERATIONAL_TUNABLES",
                                                                            "TUNABLE_SPECS"}


def _changed(value):
    """A different value of the same kind."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value * 1.5 + 0.01
    if isinstance(value, str):
        return value + "_changed"
    if isinstance(value, tuple):
        return value + ("changed",)
    if value is None:
        return 1
    raise AssertionError(f"no changed value for {value!r}")


def test_every_constant_is_classified_once():
    strategy, operational = set(C.STRATEGY_TUNABLES), set(C.OPERATIONAL_TUNABLES)
    assert len(strategy) == len(C.STRATEGY_TUNABLES) and len(operational) == len(C.OPERATIONAL_TUNABLES)
    assert not strategy & operational, f"in both groups: {sorted(strategy & operational)}"
    unclassified = _constant_names() - strategy - operational
    assert not unclassified, (f"constants.py: add {sorted(unclassified)} to STRATEGY_TUNABLES (changes what the "
                              f"strategy trades or costs) or OPERATIONAL_TUNABLES")
    assert not (strategy | operational) - _constant_names(), "a group names a constant that does not exist"


def test_the_rules_the_review_found_missing_are_strategy():
    for name in ("MAX_BORROW_RATE", "REQUIRE_BORROW_DATA", "EX_DIVIDEND_WINDOW_DAYS", "MAX_DAILY_MOVE",
                 "MAX_PRICE", "PAPER_SLIPPAGE_BPS", "PAPER_COMMISSION_PER_SHARE", "DEFAULT_BORROW_RATE",
                 "SIGNAL_THRESHOLD", "MAX_POSITION_PCT", "FEATURE_COLUMNS", "BACKTEST_FILL"):
        assert name in C.STRATEGY_TUNABLES, name
    for name in ("LOG_RETENTION_DAYS", "ALERT_QUIET_PERIOD_MIN", "ORDER_RETRIES", "TRAIN_SEED"):
        assert name in C.OPERATIONAL_TUNABLES, name


@pytest.mark.parametrize("name", C.STRATEGY_TUNABLES)
def test_a_changed_strategy_tunable_changes_the_fingerprint(name):
    base = runs.config_fingerprint(runs.model_configuration_from_metadata(META))
    changed = {name: _changed(getattr(C, name))}
    assert runs.config_fingerprint(runs.model_configuration_from_metadata(META, changed)) != base
    assert runs.config_fingerprint(runs.model_configuration(
        {"window": 10, "units": 8, "dense_units": 8, "layers": 1, "epochs": 3, "patience": 1}, changed)) != \
        runs.config_fingerprint(runs.model_configuration(
            {"window": 10, "units": 8, "dense_units": 8, "layers": 1, "epochs": 3, "patience": 1}))


def test_an_unknown_override_is_refused():
    with pytest.raises(KeyError, match="LOG_RETENTION_DAYS"):
        runs.strategy_tunables({"LOG_RETENTION_DAYS": 1})


@pytest.fixture
def recorded(trading_home, monkeypatch):
    """A passing, gate-eligible walk-forward of META's configuration on a production data file
    (40 sessions, the newest 5 the sealed holdout)."""
    monkeypatch.setattr(C, "HOLDOUT_SESSIONS", 5)
    data = evidence_fixture.write_processed(trading_home / C.PROCESSED_DATA_FILE, UNIVERSE, sessions=40)
    conn = state_db.connect()
    evidence_fixture.record_walk_forward(META, UNIVERSE, data, conn=conn)
    yield conn, data
    conn.close()


def _counts(conn, data) -> bool:
    """Does the recorded walk-forward count for the go-live gate of META's model today?"""
    status = golive.gate_status(META["sha256"], conn, metadata=META, universe=UNIVERSE, data_path=data)
    return status["walk_forward"] is not None


def test_changing_any_strategy_tunable_makes_the_evidence_stale(recorded, monkeypatch):
    conn, data = recorded
    assert _counts(conn, data)
    for name in C.STRATEGY_TUNABLES:
        with monkeypatch.context() as m:
            m.setattr(C, name, _changed(getattr(C, name)))
            assert not _counts(conn, data), f"{name} changed and the old walk-forward still counts"
        assert _counts(conn, data), name


@pytest.mark.parametrize("name", ["LOG_RETENTION_DAYS", "ALERT_QUIET_PERIOD_MIN", "STATUS_RECENT_ORDERS",
                                  "ORDER_POLL_INTERVAL_S"])
def test_changing_an_operational_tunable_keeps_the_evidence(recorded, monkeypatch, name):
    conn, data = recorded
    monkeypatch.setattr(C, name, _changed(getattr(C, name)))
    assert _counts(conn, data)


def test_a_strategy_setting_in_settings_toml_makes_the_evidence_stale(recorded, trading_home):
    """The fingerprint is of the effective values: settings.toml's (applied at start) included."""
    import tunables
    conn, data = recorded
    settings = trading_home / "settings.toml"
    try:
        settings.write_text("[risk]\nMAX_POSITIONS = 3\n")
        tunables.apply(environ={})
        assert C.MAX_POSITIONS == 3
        assert not _counts(conn, data), "MAX_POSITIONS changed in settings.toml and the old walk-forward still counts"
        settings.write_text("[alerts]\nALERT_QUIET_PERIOD_MIN = 30\n")
        tunables.apply(environ={})
        assert _counts(conn, data), "an operational setting must keep the evidence"
    finally:
        settings.unlink(missing_ok=True)
        tunables.apply(environ={})
    assert _counts(conn, data) and C.ALERT_QUIET_PERIOD_MIN == 240
