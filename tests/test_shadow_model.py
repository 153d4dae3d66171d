"""The shadow model (issue 21 point 4): a retrained model runs beside the live one on live
sessions and is promoted only when a Diebold-Mariano test shows it is not worse; a worse one is
never promoted; the live model's go-live evidence is untouched meanwhile."""
import json
import shutil
from contextlib import closing
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import h5py
import numpy as np
import pandas as pd
import pytest

import constants as C
import golive
import health_check
import live_trading
import market_calendar
import model_management as mm
import model_training
import shadow_model
import state_db
import status_page
from audit_logging import AuditLogger


def audit_records(home: Path) -> list[dict]:
    path = home / C.AUDIT_LOG_FILE
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def variant(src: Path, dst_dir: Path, shift: float, created: str) -> tuple[Path, dict]:
    """A copy of the model at ``src`` whose output bias is moved by ``shift`` (in the network's
    standardized target units): the same network, its forecasts worse by a known amount. Its
    metadata is the original's with the new checksum."""
    dst_dir.mkdir(parents=True, exist_ok=True)
    dst = dst_dir / C.MODEL_FILE
    shutil.copy2(src, dst)
    with h5py.File(dst, "r+") as fh:
        names: list[str] = []
        fh["model_weights"].visit(names.append)
        bias = [n for n in names if "predicted_z" in n and n.rsplit("/", 1)[-1].startswith("bias")
                and isinstance(fh["model_weights"][n], h5py.Dataset)]
        assert len(bias) == 1, names
        ds = fh["model_weights"][bias[0]]
        ds[...] = ds[...] + shift
    meta = json.loads(mm.metadata_path(src).read_text())
    meta.update(sha256=mm.calculate_model_checksum(dst), created_at=created)
    (dst_dir / C.MODEL_METADATA_FILE).write_text(json.dumps(meta))
    return dst, meta


def install_live(path: Path, meta: dict, home: Path) -> str:
    shutil.copy2(path, home / C.MODEL_FILE)
    (home / C.MODEL_METADATA_FILE).write_text(json.dumps(meta))
    return mm.verify_model()[0]


def sessions_before(day: str, n: int) -> list[pd.Timestamp]:
    days = market_calendar.sessions(pd.Timestamp(day) - pd.Timedelta(days=3 * n + 10), day)
    return [pd.Timestamp(d) for d in list(days)[-n:]]


def record_days(conn, features: pd.DataFrame, live, days) -> None:
    """What each cycle does for the shadow, on each of ``days``: the live model's predictions
    (as the cycle's signals) and the shadow's beside them."""
    for day in days:
        feats = features[features["Date"] <= day]
        pred = live.predict(feats, last_only=True)
        signals = [{"symbol": r.Symbol, "date": str(pd.Timestamp(r.Date).date()), "predicted_diff": r.predicted_diff}
                   for r in pred.itertuples(index=False)]
        shadow_model.record_cycle(conn, feats, signals, live.checksum)


# ----------------------------------------------------------------------------- the rule (synthetic rows)
def _rows(conn, checksum: str, y, shadow, live, per_session: int = 4):
    shadow_model.ensure_schema(conn)
    n = len(y)
    days = [str(d.date()) for d in pd.bdate_range("2026-01-05", periods=n // per_session + 1)]
    with state_db.transaction(conn):
        for i in range(n):
            conn.execute("INSERT INTO shadow_predictions(session, symbol, shadow_checksum, live_checksum, close, "
                         "volatility, live_prediction, shadow_prediction, actual_diff, recorded_at) "
                         "VALUES (?,?,?,?,?,?,?,?,?,?)",
                         (days[i // per_session], f"S{i % per_session}", checksum, None if live is None else "L",
                          100.0, 0.02, None if live is None else float(live[i] * 2.0), float(shadow[i] * 2.0),
                          float(y[i] * 2.0), "t"))


def test_the_rule_worse_is_rejected_better_promoted_first_model_against_no_change(trading_home, monkeypatch):
    """In the target space (close 100 * vol 0.02 = 2 USD a unit): a shadow with more error than
    the live model is rejected, naming the statistic; one as good or better is promoted; with no
    live prediction the baseline is no change."""
    monkeypatch.setattr(C, "SHADOW_MIN_SESSIONS", 20)
    rng = np.random.default_rng(7)
    y = rng.normal(size=100)
    signal = 0.4 * y + rng.normal(scale=0.3, size=100)          # a forecast with real skill
    with closing(state_db.connect()) as conn:
        _rows(conn, "worse", y, signal + rng.normal(scale=0.8, size=100), signal)
        _rows(conn, "better", y, signal, signal + rng.normal(scale=0.8, size=100))
        _rows(conn, "first_good", y, signal, None)
        _rows(conn, "first_bad", y, -signal, None)
        _rows(conn, "short", y[:40], signal[:40], None)
        worse = shadow_model.evaluate(conn, "worse")
        better = shadow_model.evaluate(conn, "better")
        good = shadow_model.evaluate(conn, "first_good")
        bad = shadow_model.evaluate(conn, "first_bad")
        short = shadow_model.evaluate(conn, "short")
    assert worse["sessions"] == 25 and worse["verdict"] == "reject", worse
    assert worse["statistic"] < 0 and worse["p_worse"] < C.SHADOW_ALPHA
    assert "the live model beats it: DM statistic" in worse["why"] and "SHADOW_ALPHA" in worse["why"]
    assert better["verdict"] == "promote" and better["statistic"] > 0, better
    assert good["baseline"] == "no change" and good["verdict"] == "promote", good
    assert bad["baseline"] == "no change" and bad["verdict"] == "reject" and "no change beats it" in bad["why"]
    assert short["verdict"] == "pending" and short["sessions"] == 10 and "10 of 20 sessions" in short["why"]


def test_not_significantly_worse_but_higher_mse_is_still_rejected(trading_home, monkeypatch):
    monkeypatch.setattr(C, "SHADOW_MIN_SESSIONS", 5)
    rng = np.random.default_rng(3)
    y = rng.normal(size=24)
    live = 0.3 * y
    shadow = live + rng.normal(scale=0.3, size=24)             # a little worse, within the noise
    with closing(state_db.connect()) as conn:
        _rows(conn, "s", y, shadow, live)
        out = shadow_model.evaluate(conn, "s")
    assert out["mse_shadow"] > out["mse_live"] and out["p_worse"] >= C.SHADOW_ALPHA    # not significant
    assert out["verdict"] == "reject" and "PROMOTION_TOLERANCE" in out["why"], out


def test_validation_skill_must_be_significant():
    rule = model_training.validation_skill_problem
    ok = {"skill": 0.01, "skill_vs_training_mean": 0.02}
    assert rule({**ok, "dm_vs_no_change": {"statistic": 2.5, "p_value": 0.01, "n": 200}}) is None
    why = rule({**ok, "dm_vs_no_change": {"statistic": 0.81, "p_value": 0.21, "n": 200}})
    assert why == ("validation skill against no change is not significant: Diebold-Mariano statistic +0.810, "
                   "p-value 0.2100 >= PROMOTION_ALPHA 0.05 (200 sessions)")
    assert "not significant" in rule({**ok, "dm_vs_no_change": {"statistic": None, "p_value": 1.0, "n": 2}})


# ----------------------------------------------------------------------------- with the trained model
@pytest.fixture
def worse_copy(home, tmp_path):
    """The session's model and a copy of it whose forecasts are shifted (worse)."""
    path, meta = variant(home / C.MODEL_FILE, tmp_path / "worse", 1.0, "2026-11-20T00:00:00+00:00")
    return path, meta


def test_a_better_shadow_is_promoted_after_its_sessions_and_live_mode_waits_for_its_gate(
        home, trained, worse_copy, monkeypatch):
    """Live: the worse copy; shadow: the session's model. Pending before SHADOW_MIN_SESSIONS; in
    live mode a passing shadow waits while its own go-live gate is closed; then promoted,
    installed, audited and alerted (alert log line)."""
    monkeypatch.setattr(C, "SHADOW_MIN_SESSIONS", 6)
    good = mm.load_model(home / C.MODEL_FILE)
    live_sum = install_live(*worse_copy, home)
    features = pd.read_csv(home / C.PROCESSED_DATA_FILE, parse_dates=["Date"])
    audit = AuditLogger()
    with closing(state_db.connect()) as conn:
        shadow_meta = json.loads((trained["home"] / C.MODEL_METADATA_FILE).read_text())
        shadow_model.install_shadow(trained["home"] / C.MODEL_FILE, shadow_meta, live_sum, audit, conn)
        live = mm.load_model()
        days = sessions_before(trained["last_day"], 8)
        record_days(conn, features, live, days[:4])
        assert shadow_model.promote_if_due(conn, audit, "paper") is None        # 3 of 6 sessions: pending
        record_days(conn, features, live, days[4:])
        p = shadow_model.progress(conn)
        assert p["sessions"] == 7 and p["needed"] == 6 and p["baseline"] == "the live model"
        rows = conn.execute("SELECT * FROM shadow_predictions").fetchall()
        assert rows and all(r["live_prediction"] is not None and r["live_checksum"] == live_sum for r in rows)
        waiting = shadow_model.promote_if_due(conn, audit, "live",
                                              gate_check=lambda c, m: (False, ["no passing backtest"]))
        assert waiting["decision"] == "waiting" and mm.verify_model()[0] == live_sum
        assert "waiting for its go-live evidence: no passing backtest" in shadow_model.progress_line(
            shadow_model.progress(conn))
        done = shadow_model.promote_if_due(conn, audit, "paper")
        assert done["decision"] == "promoted" and done["statistic"] > 0, done
        assert shadow_model.current(conn) is None and shadow_model.last_decision(conn)["status"] == "promoted"
    assert mm.verify_model()[0] == good.checksum                                 # the shadow is live now
    assert [b["checksum"] for b in mm.list_backups()] == [live_sum]              # the old one backed up
    promoted = [r for r in audit_records(home) if (r["action"], r["status"]) == ("model_promotion",
                                                                                   "promoted_from_shadow")]
    assert len(promoted) == 1 and promoted[0]["details"]["replaces"] == live_sum


def test_cycles_record_the_shadow_and_never_promote_a_worse_one(home, trained, worse_copy, monkeypatch, capsys):
    """Real paper cycles (in-process), one a session: each records the shadow's predictions
    beside the live model's without trading on them; once SHADOW_MIN_SESSIONS have outcomes, the
    cycle's start rejects the worse shadow (one WARNING line, audit, the live model stays);
    status, status --json, the status page and the health check show the progress."""
    monkeypatch.setattr(C, "SHADOW_MIN_SESSIONS", 3)
    live_sum = mm.verify_model()[0]
    with closing(state_db.connect()) as conn:
        shadow_model.install_shadow(worse_copy[0], worse_copy[1], live_sum, AuditLogger(), conn)
    full = pd.read_csv(home / C.PROCESSED_DATA_FILE)
    days = sessions_before(trained["last_day"], 5)
    for i, day in enumerate(days):
        full[pd.to_datetime(full["Date"]) <= day].to_csv(home / C.PROCESSED_DATA_FILE, index=False)
        now = datetime.combine(market_calendar.next_session(day).date(),
                               datetime.min.time()).replace(hour=10, tzinfo=ZoneInfo("America/New_York"))
        assert live_trading.run_cycle(now=now) == 0
        if i == 2:                                   # mid-way: the progress everywhere
            capsys.readouterr()
            assert live_trading.cmd_status(False, False) == 0
            line = [x for x in capsys.readouterr().out.splitlines() if x.startswith("shadow model:")]
            assert len(line) == 1 and "2/3 sessions" in line[0] and "DM statistic" in line[0], line
            assert live_trading.cmd_status(True, False) == 0
            js = json.loads(capsys.readouterr().out)["shadow"]
            assert js["sessions"] == 2 and js["needed"] == 3 and js["checksum"] == worse_copy[1]["sha256"]
            level, detail = health_check.check_shadow()
            assert "2/3 sessions" in detail and level in (health_check.OK, health_check.WARN)
            page = status_page.render(status_page.gather())
            assert 'id="shadow" data-sessions="2" data-needed="3"' in page
    with closing(state_db.connect()) as conn:
        rows = [dict(r) for r in conn.execute("SELECT * FROM shadow_predictions ORDER BY session")]
        drift_models = {r[0] for r in conn.execute("SELECT DISTINCT model_checksum FROM predictions")}
        decided = shadow_model.last_decision(conn)
    assert {r["session"] for r in rows} == {str(d.date()) for d in days[:4]}   # the 5th cycle decided first
    assert all(r["live_checksum"] == live_sum and r["live_prediction"] != r["shadow_prediction"] for r in rows)
    assert all(r["actual_diff"] is not None for r in rows if r["session"] < str(days[3].date()))
    assert drift_models == {live_sum}                # the shadow's predictions never reach the signals
    assert decided["status"] == "rejected" and decided["checksum"] == worse_copy[1]["sha256"]
    assert mm.verify_model()[0] == live_sum          # never promoted
    rejected = [r for r in audit_records(home) if (r["action"], r["status"]) == ("model_shadow", "rejected")]
    assert len(rejected) == 1 and ("beats it" in rejected[0]["details"]["why"] or "MSE" in rejected[0]["details"]["why"])
    log = "\n".join(p.read_text() for p in (home / "logs").glob("trading_*.log"))
    assert "REJECTED" in log and "the live model stays" in log


# ----------------------------------------------------------------------------- training: shadow, evidence, --force
def test_a_retrain_goes_to_shadow_keeps_the_live_evidence_and_force_is_audited(home, monkeypatch):
    """Reproduces issue 21's finding (the weekly retrain, once promoted, reset the go-live
    evidence: paper sessions 62 -> 0, backtest MISSING): now a retrain that passes validation is
    the shadow model, the live model and its evidence unchanged. ``--force`` installs at once,
    audited with its reason."""
    monkeypatch.setattr(C, "PROMOTION_TOLERANCE", 10.0)      # whatever the seed's MSE: it passes validation
    live_sum = mm.verify_model()[0]
    with closing(state_db.connect()) as conn, state_db.transaction(conn):
        for day in market_calendar.sessions("2026-08-03", "2026-10-30")[:62]:
            golive.record_paper_session(conn, pd.Timestamp(day).date(), live_sum, False, 1, 1e5)
    before = golive.gate_status(live_sum)
    assert before["paper_sessions"] == 62
    cfg = dict(profile="tiny", verbose=0, seed=5, model_file=home / C.MODEL_FILE, data_path=home / C.PROCESSED_DATA_FILE)
    result = model_training.train(model_training.TrainConfig(**cfg))
    assert result["stage"] == "shadow", result["reason"]
    assert mm.verify_model()[0] == live_sum                                       # the live model trades on
    after = golive.gate_status(live_sum)
    assert after["paper_sessions"] == 62 and after["conditions"] == before["conditions"]
    shadow_sum = result["metadata"]["sha256"]
    assert mm.calculate_model_checksum(shadow_model.shadow_path()) == shadow_sum != live_sum
    with closing(state_db.connect()) as conn:
        assert shadow_model.current(conn)["checksum"] == shadow_sum
    assert result["metadata"]["promotion"]["dm_vs_no_change"]["p_value"] < C.PROMOTION_ALPHA
    assert result["metadata"]["promotion"]["dm_vs_current"]["statistic"] is not None
    forced = model_training.train(model_training.TrainConfig(**cfg, epochs=1, force=True, reason="drill: replace now"))
    assert forced["stage"] == "live" and mm.verify_model()[0] == forced["metadata"]["sha256"]
    with closing(state_db.connect()) as conn:
        assert shadow_model.current(conn) is None                                 # superseded
    rec = [r for r in audit_records(home) if (r["action"], r["status"]) == ("model_promotion", "forced")]
    assert len(rec) == 1 and rec[0]["details"]["reason"] == "drill: replace now" and rec[0]["details"]["skips_shadow"]
    started = [r for r in audit_records(home) if (r["action"], r["status"]) == ("model_shadow", "started")]
    assert [r["details"]["model_checksum"] for r in started] == [shadow_sum]
