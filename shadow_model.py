"""The shadow model: a newly trained model proves itself on live sessions before it trades.

What happens when (the docs, DEPLOYMENT.md "Retraining and the shadow model", say the same):

* ``python train_model.py`` (by hand or the weekly scheduled retrain): a model that passes
  validation (``model_training``: skill significant against no change) does NOT replace the live
  model when one is installed. It becomes the SHADOW model: its files go to ``models/shadow/``
  (``MODEL_SHADOW_DIR``) and a row of table ``shadow_models`` says so (status ``shadowing``;
  audited ``model_shadow``/``started``). A newer shadow supersedes an older one. The live model,
  and its go-live evidence (backtest, walk-forward, paper sessions, all keyed by its checksum),
  are untouched: live trading goes on. The first model of a home (nothing installed) is installed
  directly: nothing trades yet and its evidence starts from zero either way.
* Every cycle (``trading_cycle``, not a replay) also runs the shadow on the same features and
  records both predictions per (session, symbol) in table ``shadow_predictions``
  (``record_cycle``), without trading on them; the outcome (the next session's close minus the
  session's close) is filled in once that close is in the processed data (``fill_outcomes``).
* At the START of a cycle, before the live model is loaded (``promote_if_due``): once the shadow
  has ``SHADOW_MIN_SESSIONS`` sessions with outcomes it is judged (``evaluate``), in the model's
  scale-free target space, with the Diebold-Mariano test of ``skill_stats`` (losses averaged per
  session, Newey-West variance):

    - REJECTED when the live model beats it significantly (one-sided DM p-value below
      ``SHADOW_ALPHA``) or when its MSE over those sessions is above the live model's by more than
      ``PROMOTION_TOLERANCE``: one WARNING line naming the statistic, audit
      ``model_shadow``/``rejected``, alert ``shadow_rejected``; its files stay in models/shadow/
      until the next training replaces them.
    - otherwise PROMOTED: installed as the live model (the old one backed up to models/backups/),
      audit ``model_promotion``/``promoted_from_shadow``, alert ``model_promoted``. In LIVE mode
      only when the shadow's own go-live gate is open (the gate the cycle passes as
      ``gate_check``): until then it stays a shadow (``waiting for its go-live evidence``) and the
      live model keeps trading, so no retrain ever stops live trading by itself. The promoted
      model's paper sessions count from its first cycle (in paper mode).
  The comparison for the first model (no live prediction: the ``live_prediction`` column NULL)
  is against predicting no change (0).
* ``python train_model.py --force [--reason ...]`` installs the new model as the live one at
  once (audited ``model_promotion``/``forced`` with the reason); an existing shadow is then
  superseded.
"""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

import alerts
import config
import constants as C
import model_management as mm
import skill_stats
import state_db
from fileutil import atomic_write_text, atomic_write_with, fsync_dir

log = logging.getLogger("model")

SHADOWING, PROMOTED, REJECTED, SUPERSEDED = "shadowing", "promoted", "rejected", "superseded"

_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS shadow_models (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        checksum TEXT NOT NULL,
        version TEXT NOT NULL,
        created_at TEXT NOT NULL,
        live_checksum TEXT,
        status TEXT NOT NULL,
        decided_at TEXT,
        reason TEXT,
        verdict TEXT
    )""",
    """CREATE TABLE IF NOT EXISTS shadow_predictions (
        session TEXT NOT NULL,
        symbol TEXT NOT NULL,
        shadow_checksum TEXT NOT NULL,
        live_checksum TEXT,
        close REAL NOT NULL,
        volatility REAL NOT NULL,
        live_prediction REAL,
        shadow_prediction REAL NOT NULL,
        actual_diff REAL,
        recorded_at TEXT NOT NULL,
        PRIMARY KEY (session, symbol, shadow_checksum)
    )""",
]


def ensure_schema(conn) -> None:
    """Create ``shadow_models`` and ``shadow_predictions`` when missing."""
    state_db.ensure_schema(conn, _SCHEMA)


def shadow_path() -> Path:
    """The shadow model's file (its metadata beside it, ``model_management.metadata_path``)."""
    return config.path(C.MODEL_SHADOW_DIR) / C.MODEL_FILE


def _has_tables(conn) -> bool:
    return conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'shadow_models'").fetchone() is not None


# ----------------------------------------------------------------------------- install
def install_shadow(candidate_h5, metadata: dict, live_checksum: str | None, audit, conn=None) -> dict:
    """Make ``candidate_h5`` (with its ``metadata``) the shadow model: files into models/shadow/
    (atomically), any earlier shadow superseded, a ``shadow_models`` row, audited. Returns the row."""
    candidate_h5 = Path(candidate_h5)
    checksum = mm.calculate_model_checksum(candidate_h5)
    if checksum != metadata.get("sha256"):
        raise mm.ModelIntegrityError(f"candidate {candidate_h5} has SHA-256 {checksum}, its metadata says "
                                     f"{metadata.get('sha256')}: not installed as the shadow model")
    target = shadow_path()
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_with(target, lambda tmp: shutil.copyfile(candidate_h5, tmp))
    atomic_write_text(mm.metadata_path(target), json.dumps(metadata, indent=2, sort_keys=True) + "\n")
    fsync_dir(target.parent)
    version = mm.version_name(metadata, checksum)
    with state_db.opened(conn, _SCHEMA) as c, state_db.transaction(c):
        c.execute("UPDATE shadow_models SET status = ?, decided_at = ?, reason = ? WHERE status = ?",
                  (SUPERSEDED, state_db.utcnow(), f"superseded by {version}", SHADOWING))
        c.execute("INSERT INTO shadow_models(checksum, version, created_at, live_checksum, status) "
                  "VALUES (?,?,?,?,?)", (checksum, version, state_db.utcnow(), live_checksum, SHADOWING))
        row = current(c)
    audit.log_event("model_shadow", "started", {"model_checksum": checksum, "version": version,
                                                "live_checksum": live_checksum,
                                                "sessions_needed": C.SHADOW_MIN_SESSIONS})
    log.info("model %s is the SHADOW model (%s): it runs beside the live model for %d sessions "
             "before it may be promoted; the live model keeps trading", version, target, C.SHADOW_MIN_SESSIONS)
    assert row is not None
    return row


def supersede(reason: str, conn=None) -> None:
    """End any shadow without a verdict (a forced or first install replaced the live model)."""
    with state_db.opened(conn, _SCHEMA) as c, state_db.transaction(c):
        c.execute("UPDATE shadow_models SET status = ?, decided_at = ?, reason = ? WHERE status = ?",
                  (SUPERSEDED, state_db.utcnow(), reason, SHADOWING))


def current(conn) -> dict | None:
    """The shadowing model's ``shadow_models`` row, or None."""
    if not _has_tables(conn):
        return None
    row = conn.execute("SELECT * FROM shadow_models WHERE status = ? ORDER BY id DESC LIMIT 1",
                       (SHADOWING,)).fetchone()
    return state_db.row_dict(row, ("verdict",))


def last_decision(conn) -> dict | None:
    """The newest shadow that was promoted or rejected, or None."""
    if not _has_tables(conn):
        return None
    row = conn.execute("SELECT * FROM shadow_models WHERE status IN (?, ?) ORDER BY id DESC LIMIT 1",
                       (PROMOTED, REJECTED)).fetchone()
    return state_db.row_dict(row, ("verdict",))


def load_shadow(row: dict):
    """The shadow model's ``TradingModel`` (verified); its checksum must be the row's."""
    model = mm.load_model(shadow_path())
    if model.checksum != row["checksum"]:
        raise mm.ModelIntegrityError(f"{shadow_path()} is {model.checksum[:12]}, the shadow record says "
                                     f"{row['checksum'][:12]}: retrain with python train_model.py")
    return model


# ----------------------------------------------------------------------------- each cycle
def record_cycle(conn, features: pd.DataFrame, signals: list[dict], live_checksum: str | None) -> dict | None:
    """Run the shadow model (if any) on ``features`` (the cycle's own, already limited to the
    universe the live model predicted on) and store its prediction beside the live one of each
    ``signals`` item (``predicted_diff``); fill the outcomes now known. Never trades. Returns
    ``progress`` or None when there is no shadow."""
    row = current(conn)
    if row is None:
        return None
    model = load_shadow(row)
    symbols = {s["symbol"] for s in signals}
    feats = features[features["Symbol"].isin(symbols)] if symbols else features
    tail = feats.sort_values(["Symbol", "Date"]).groupby("Symbol", sort=False).tail(model.window + 5)
    pred = model.predict(tail, last_only=True)
    live = {(s["symbol"], s["date"]): s["predicted_diff"] for s in signals}
    now = state_db.utcnow()
    rows = []
    for r in pred.itertuples(index=False):
        day = str(pd.Timestamp(r.Date).date())
        live_pred = live.get((r.Symbol, day))
        if not np.isfinite(r.predicted_diff):
            continue
        rows.append((day, r.Symbol, row["checksum"], live_checksum, float(r.Close), float(r.volatility_20),
                     None if live_pred is None else float(live_pred), float(r.predicted_diff), now))
    with state_db.transaction(conn):
        conn.executemany("INSERT OR REPLACE INTO shadow_predictions(session, symbol, shadow_checksum, "
                         "live_checksum, close, volatility, live_prediction, shadow_prediction, recorded_at) "
                         "VALUES (?,?,?,?,?,?,?,?,?)", rows)
    fill_outcomes(conn, features)
    p = progress(conn)
    log.info("shadow: recorded %d predictions of shadow model %s beside the live model's (not traded); %s",
             len(rows), row["version"], progress_line(p))
    return p


def fill_outcomes(conn, features: pd.DataFrame) -> int:
    """Fill ``actual_diff`` (next session's close minus the session's close, from ``features``)
    of the rows still without one; returns how many were filled."""
    ensure_schema(conn)
    open_rows = conn.execute("SELECT session, symbol FROM shadow_predictions WHERE actual_diff IS NULL").fetchall()
    if not open_rows:
        return 0
    prices = features[["Date", "Symbol", "Close"]].sort_values(["Symbol", "Date"]).copy()
    prices["next_close"] = prices.groupby("Symbol")["Close"].shift(-1)
    prices["session"] = prices["Date"].dt.strftime("%Y-%m-%d")
    known = {(s, d): (c, n) for s, d, c, n in zip(prices["Symbol"], prices["session"], prices["Close"],
                                                    prices["next_close"]) if np.isfinite(n)}
    updates = [(float(known[(r["symbol"], r["session"])][1]), r["session"], r["symbol"])
               for r in open_rows if (r["symbol"], r["session"]) in known]
    if updates:
        with state_db.transaction(conn):
            conn.executemany("UPDATE shadow_predictions SET actual_diff = ? - close "
                             "WHERE session = ? AND symbol = ? AND actual_diff IS NULL", updates)
    return len(updates)


# ----------------------------------------------------------------------------- the verdict
def evaluate(conn, checksum: str) -> dict:
    """The shadow's live-session record against the live model (or no change where no live
    prediction was recorded), in the target space (``model_management.target_scale``):

    ``sessions`` (with outcomes), ``needed``, ``statistic`` (DM, > 0: the shadow did better) and
    ``p_value`` (of the shadow being better), ``p_worse`` (of the live model being better: the
    rejection test), ``mse_shadow``, ``mse_live``, ``baseline`` ("the live model" / "no change"),
    ``verdict``: ``pending`` (too few sessions), ``promote`` or ``reject``, ``why``: one phrase."""
    rows = pd.read_sql_query("SELECT * FROM shadow_predictions WHERE shadow_checksum = ? AND "
                             "actual_diff IS NOT NULL ORDER BY session, symbol", conn, params=(checksum,))
    need = int(C.SHADOW_MIN_SESSIONS)
    out = {"sessions": int(rows["session"].nunique()) if len(rows) else 0, "needed": need, "statistic": None,
           "p_value": None, "p_worse": None, "mse_shadow": None, "mse_live": None, "baseline": "the live model",
           "verdict": "pending", "why": ""}
    if rows.empty:
        out["why"] = f"0 of {need} sessions with outcomes"
        return out
    scale = mm.target_scale(rows["close"], rows["volatility"])
    y = rows["actual_diff"].to_numpy(np.float64) / scale
    shadow = rows["shadow_prediction"].to_numpy(np.float64) / scale
    live_known = rows["live_prediction"].notna().to_numpy()
    live = np.where(live_known, rows["live_prediction"].fillna(0.0).to_numpy(np.float64), 0.0) / scale
    if not live_known.any():
        out["baseline"] = "no change"
    better = skill_stats.diebold_mariano(y, shadow, live, dates=rows["session"].to_numpy())
    worse = skill_stats.diebold_mariano(y, live, shadow, dates=rows["session"].to_numpy())
    out.update(statistic=better["statistic"], p_value=better["p_value"], p_worse=worse["p_value"],
               mse_shadow=better["mse"], mse_live=better["mse_baseline"])
    if out["sessions"] < need:
        out["why"] = f"{out['sessions']} of {need} sessions with outcomes"
        return out
    limit = out["mse_live"] * (1 + C.PROMOTION_TOLERANCE)
    if worse["statistic"] is not None and worse["p_value"] < C.SHADOW_ALPHA:
        out.update(verdict="reject", why=(f"{out['baseline']} beats it: DM statistic {_f(out['statistic'], '+.3f')}"
                                          f", p-value {worse['p_value']:.4f} < SHADOW_ALPHA {C.SHADOW_ALPHA}"))
    elif not out["mse_shadow"] <= limit:
        out.update(verdict="reject", why=(f"its MSE {out['mse_shadow']:.5f} over {out['sessions']} sessions is "
                                          f"above {out['baseline']}'s {out['mse_live']:.5f} (PROMOTION_TOLERANCE "
                                          f"{C.PROMOTION_TOLERANCE})"))
    else:
        out.update(verdict="promote", why=(f"not worse than {out['baseline']} over {out['sessions']} sessions: DM "
                                           f"statistic {_f(out['statistic'], '+.3f')}, p-value of being worse "
                                           f"{worse['p_value']:.4f} >= SHADOW_ALPHA {C.SHADOW_ALPHA}, MSE "
                                           f"{out['mse_shadow']:.5f} vs {out['mse_live']:.5f}"))
    return out


def _f(value, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def progress(conn) -> dict | None:
    """The current shadow's row and ``evaluate`` in one dict (keys of both, ``version`` ...),
    or None when no model is shadowing. Reads only."""
    row = current(conn)
    if row is None:
        return None
    waiting = row["reason"] if str(row.get("reason") or "").startswith("waiting") else None
    return {**row, **evaluate(conn, row["checksum"]), "waiting": waiting}


def progress_line(p: dict | None) -> str:
    """One line for ``status``, the status page and the health check."""
    if p is None:
        return "no shadow model"
    so_far = {"pending": "pending", "promote": "not worse so far", "reject": "WORSE so far"}
    verdict = "pending"
    if p["statistic"] is not None:
        worse = p["p_worse"] is not None and p["p_worse"] < C.SHADOW_ALPHA
        verdict = "WORSE so far" if worse or p["mse_shadow"] > p["mse_live"] * (1 + C.PROMOTION_TOLERANCE) \
            else "not worse so far"
    if p["sessions"] >= p["needed"]:
        verdict = so_far.get(p["verdict"], verdict)
    waiting = f"; {p['waiting']}" if p.get("waiting") else ""
    return (f"shadow model {p['version']}: {p['sessions']}/{p['needed']} sessions, DM statistic "
            f"{_f(p['statistic'], '+.3f')} (p-value {_f(p['p_value'], '.4f')}) vs {p['baseline']}: "
            f"{verdict}{waiting}")


def as_json(p: dict | None) -> dict | None:
    """``progress`` as plain JSON-able values (for ``status --json``)."""
    if p is None:
        return None
    keys = ("checksum", "version", "created_at", "live_checksum", "sessions", "needed", "statistic", "p_value",
            "p_worse", "mse_shadow", "mse_live", "baseline", "verdict", "why", "waiting")
    return {k: p.get(k) for k in keys}


# ----------------------------------------------------------------------------- promotion
def promote_if_due(conn, audit, mode: str, gate_check=None) -> dict | None:
    """The one moment a shadow is decided: the start of a cycle (not a replay). Judges the
    current shadow (``evaluate``) once it has ``SHADOW_MIN_SESSIONS`` sessions; rejects it, or
    promotes it (in live mode only when ``gate_check(checksum, metadata)`` returns
    ``(True, [])``; else it keeps shadowing and ``(False, reasons)`` is recorded in ``reason``).
    Returns the decision (``evaluate`` plus ``decision``: promoted / rejected / waiting) or None."""
    row = current(conn)
    if row is None:
        return None
    result = evaluate(conn, row["checksum"])
    if result["verdict"] == "pending":
        return None
    if result["verdict"] == "reject":
        _decide(conn, row, REJECTED, result["why"], result)
        log.warning("shadow model %s REJECTED: %s; the live model stays", row["version"], result["why"])
        audit.log_event("model_shadow", "rejected", {"model_checksum": row["checksum"], "version": row["version"],
                                                     "why": result["why"], "verdict": _plain(result)})
        alerts.send_alert("shadow_rejected", f"shadow model {row['version']} rejected: {result['why']}",
                          key=row["checksum"][:12])
        return dict(result, decision=REJECTED)
    model = load_shadow(row)
    if mode == "live" and gate_check is not None:
        passed, reasons = gate_check(model.checksum, model.metadata)
        if not passed:
            waiting = "waiting for its go-live evidence: " + "; ".join(reasons)
            with state_db.transaction(conn):
                conn.execute("UPDATE shadow_models SET reason = ? WHERE id = ?", (waiting, row["id"]))
            log.info("shadow model %s passed its live-session test but is %s; the live model keeps trading",
                     row["version"], waiting)
            return dict(result, decision="waiting", waiting=waiting)
    promote(conn, audit, row, model, result["why"], result)
    return dict(result, decision=PROMOTED)


def promote(conn, audit, row: dict, model, why: str, result: dict | None = None) -> None:
    """Install the shadow ``model`` (of ``row``) as the live model, audited and alerted."""
    old = None
    try:
        old = mm.verify_model()[0]
    except mm.ModelError:
        pass
    metadata = dict(model.metadata)
    metadata["promotion"] = dict(metadata.get("promotion") or {}, promoted=True, stage="live",
                                 reason=f"promoted from shadow: {why}")
    mm.install_model(model.path, metadata, reason=f"replaced by the shadow model {row['version']}")
    _decide(conn, row, PROMOTED, why, result)
    log.warning("shadow model %s PROMOTED to the live model: %s; its go-live evidence starts now "
                "(paper sessions from 0; run ./run_backtest.sh for live trading)", row["version"], why)
    audit.log_event("model_promotion", "promoted_from_shadow", {
        "model_checksum": row["checksum"], "version": row["version"], "replaces": old, "why": why,
        "verdict": _plain(result or {})})
    alerts.send_alert("model_promoted", f"shadow model {row['version']} is now the live model: {why}",
                      key=row["checksum"][:12])


def _decide(conn, row: dict, status: str, why: str, result) -> None:
    with state_db.transaction(conn):
        conn.execute("UPDATE shadow_models SET status = ?, decided_at = ?, reason = ?, verdict = ? WHERE id = ?",
                     (status, state_db.utcnow(), why, json.dumps(_plain(result or {})), row["id"]))


def _plain(result: dict) -> dict:
    return {k: (float(v) if isinstance(v, (np.floating,)) else v) for k, v in result.items()
            if k in ("sessions", "needed", "statistic", "p_value", "p_worse", "mse_shadow", "mse_live",
                     "baseline", "verdict", "why")}
