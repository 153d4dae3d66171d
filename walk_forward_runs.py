"""The recorded walk-forward runs: what the go-live gate asks of them, and nothing heavy.

A walk-forward run (``walk_forward.py``) is recorded as one row of ``walk_forward_runs`` in the
state database, tied to its inputs: the data file's SHA-256 and path, the universe, the period,
the costs, the model configuration and its fingerprint (``config_fingerprint`` of
``model_configuration``: the architecture, the training settings and every tunable that changes
what the strategy trades or what it costs, ``constants.STRATEGY_TUNABLES``; not the seed nor the
data), the seed and the verdict. ``gate_walk_forward`` says which run counts for the
go-live gate (``golive.py``); ``count_trials`` counts the trials run on a universe (the deflated
Sharpe ratio's number of trials), from the trial registry (``trial_registry.py``).

This module is what the live side (``golive``, and through it ``live_trading`` and the health
check) imports; it does not load the training code, the backtest engine or the statistics."""
from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Mapping
from datetime import datetime, timezone

import numpy as np
import pandas as pd

import constants as C
import data_collection
import state_db
import trial_registry

RUNS_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS walk_forward_runs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        created_at TEXT NOT NULL,
        config_fingerprint TEXT NOT NULL,
        data_sha256 TEXT NOT NULL,
        data_path TEXT,
        universe TEXT NOT NULL,
        start_date TEXT,
        end_date TEXT,
        costs TEXT NOT NULL,
        model_config TEXT NOT NULL,
        seed INTEGER NOT NULL,
        workers INTEGER,
        passed INTEGER NOT NULL,
        gate_eligible INTEGER NOT NULL,
        report_path TEXT,
        summary TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS walk_forward_runs_key ON walk_forward_runs(config_fingerprint, data_sha256, id)",
]


# =========================================================================== configuration

def strategy_tunables(overrides: Mapping | None = None) -> dict:
    """{name: value} of every tunable in ``constants.STRATEGY_TUNABLES`` (the one declared group of
    what changes what the strategy trades or what it costs), from constants.py, with ``overrides``
    (name -> value; each name must be in the group) in their place."""
    values = {name: getattr(C, name) for name in C.STRATEGY_TUNABLES}
    unknown = sorted(set(overrides or {}) - set(values))
    if unknown:
        raise KeyError(f"not strategy tunables (constants.STRATEGY_TUNABLES): {', '.join(unknown)}")
    values.update(overrides or {})
    return values


def model_configuration(prof: dict, tunables: Mapping | None = None) -> dict:
    """Everything that defines the model and the trading rules (not the seed, not the data): the
    profile ``prof`` and ``strategy_tunables(tunables)``."""
    return {"window": int(prof["window"]), "lstm_units": int(prof["units"]),
            "dense_units": int(prof["dense_units"]), "lstm_layers": int(prof["layers"]),
            "epochs_max": int(prof["epochs"]), "patience": int(prof["patience"]),
            "batch_size": C.TRAIN_BATCH_SIZE, "learning_rate": C.TRAIN_LEARNING_RATE,
            "feature_columns": data_collection.feature_columns(), "target_clip": C.TARGET_CLIP,
            "feature_clip": C.FEATURE_CLIP, "vol_floor": C.TARGET_VOL_FLOOR,
            "validation_fraction": C.VALIDATION_FRACTION,
            "tunables": strategy_tunables(tunables)}


def model_configuration_from_metadata(metadata: dict, tunables: Mapping | None = None) -> dict:
    """The configuration of an installed model (its metadata as train_model.py writes it), in
    the form ``model_configuration`` gives: for the gate, with ``config_fingerprint``. The
    strategy tunables are today's (``strategy_tunables(tunables)``): when one changed since a
    walk-forward ran, its fingerprint differs and the run no longer counts."""
    arch, training = metadata.get("architecture", {}), metadata.get("training", {})
    prof = {"window": metadata["window"], "units": arch.get("lstm_units"), "dense_units": arch.get("dense_units"),
            "layers": arch.get("lstm_layers"), "epochs": training.get("epochs_max"),
            "patience": training.get("patience")}
    out = model_configuration(prof, tunables)
    out["batch_size"] = training.get("batch_size", out["batch_size"])
    out["learning_rate"] = training.get("learning_rate", out["learning_rate"])
    out["feature_columns"] = list(metadata.get("feature_columns", out["feature_columns"]))
    return out


def config_fingerprint(model_config: dict) -> str:
    """SHA-256 of the configuration's canonical JSON."""
    text = json.dumps(model_config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def universe_key(symbols) -> str:
    return json.dumps(sorted(str(s) for s in symbols))


# =========================================================================== state database

def _opened(conn=None):
    """``with _opened(conn) as c:`` the caller's connection, else a new one closed at the end
    (``state_db.opened``); the table ensured."""
    return state_db.opened(conn, RUNS_SCHEMA)


def record_run(report: dict, conn=None) -> int:
    """One row in ``walk_forward_runs``; returns its id."""
    inputs = report["inputs"]
    with _opened(conn) as c, state_db.transaction(c):
        cur = c.execute(
            "INSERT INTO walk_forward_runs(created_at, config_fingerprint, data_sha256, data_path, universe, "
            "start_date, end_date, costs, model_config, seed, workers, passed, gate_eligible, report_path, "
            "summary) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (state_db.utcnow(), inputs["config_fingerprint"], inputs["data_sha256"], inputs["data_path"],
             universe_key(inputs["universe"]), report["start"], report["end"], json.dumps(inputs["costs"]),
             json.dumps(inputs["model_config"], default=str), int(inputs["seed"]), int(report["workers"]),
             int(bool(report["passed"])), int(bool(report["gate_eligible"])), report.get("report_json"),
             json.dumps(jsonable(summary(report)), allow_nan=False)))
        return int(cur.lastrowid)


def summary(report: dict) -> dict:
    o = report["overall"]
    return {"conditions": o["conditions"], **slim(o), "n_trials": o["n_trials"], "folds": len(report["folds"]),
            "trial_id": report.get("trial_id"), "evidence": report.get("evidence")}


def passing_walk_forward_for(config_fingerprint: str, data_sha256: str, universe, conn=None) -> dict | None:
    """The newest walk-forward that passed for this model configuration on this data file and this
    universe (the whole universe, the full out-of-sample period, costs not below the paper
    broker's: ``gate_eligible``), or None. The row as a dict, JSON fields parsed."""
    if not config_fingerprint or not data_sha256:
        return None
    with _opened(conn) as c:
        row = c.execute("SELECT * FROM walk_forward_runs WHERE config_fingerprint = ? AND data_sha256 = ? AND "
                        "universe = ? AND passed = 1 AND gate_eligible = 1 ORDER BY id DESC LIMIT 1",
                        (config_fingerprint, data_sha256, universe_key(universe))).fetchone()
    return state_db.row_dict(row, ("universe", "costs", "model_config", "summary"),
                             ("passed", "gate_eligible"))


def gate_walk_forward(config_fingerprint: str, stale_reasons: Callable[[dict], list[str]],
                      now: datetime | None = None, conn=None) -> tuple[dict | None, dict | None]:
    """(the run that counts for the go-live gate or None, the newest run of this configuration
    whatever its result or None).

    A run counts when it passed, is ``gate_eligible`` and ``stale_reasons(row)`` is empty: the
    caller (``golive``) compares the run's evidence binding with the production data, universe
    and fixed window now (``evidence_binding.mismatches``: "data changed", "universe changed",
    "window changed", "not gate evidence"). Each row examined carries its reasons in ``stale``
    and its ``age_days``. The newest run is examined too, so the gate can say why it does not
    count."""
    if not config_fingerprint:
        return None, None
    with _opened(conn) as c:
        rows = [dict(r) for r in c.execute(
            "SELECT * FROM walk_forward_runs WHERE config_fingerprint = ? ORDER BY id DESC",
            (config_fingerprint,)).fetchall()]
    now = now or datetime.now(timezone.utc)
    passing = None
    for i, row in enumerate(rows):
        for key in ("universe", "costs", "model_config", "summary"):
            try:
                row[key] = json.loads(row[key])
            except (TypeError, ValueError):
                pass
        row["passed"], row["gate_eligible"] = bool(row["passed"]), bool(row["gate_eligible"])
        created = datetime.fromisoformat(row["created_at"])
        created = created if created.tzinfo else created.replace(tzinfo=timezone.utc)
        row["age_days"] = round((now - created).total_seconds() / 86400.0, 2)
        if i == 0 or row["passed"]:
            row["stale"] = stale_reasons(row)
        if row["passed"] and row["gate_eligible"] and not row["stale"]:
            passing = row
            break
    return passing, (rows[0] if rows else None)


def count_trials(universe, fingerprint: str | None = None, conn=None) -> int:
    """The deflated Sharpe ratio's N for a run about to be recorded on this universe: every
    trial of the registry on it and the production data (``trial_registry.count_trials``:
    distinct runs, whatever their seed, window, fold settings or ``--no-record``; the registry
    lives beside the audit trail, so a new state database does not reset it), plus this one.
    ``fingerprint`` and ``conn`` (the state database) are kept for the callers; the count does
    not depend on them."""
    return trial_registry.count_trials(universe) + 1


def slim(ev: dict) -> dict:
    return {"passed": ev["passed"], "skill_vs_no_change": ev["dm_vs_no_change"]["skill"],
            "dm_p_vs_no_change": ev["dm_vs_no_change"]["p_value"],
            "skill_vs_training_mean": ev["dm_vs_training_mean"]["skill"],
            "dm_p_vs_training_mean": ev["dm_vs_training_mean"]["p_value"],
            "directional_accuracy": ev["directional_accuracy"], "strategy_return": ev["strategy"]["total_return"],
            "benchmark_return": ev["benchmark"]["total_return"], "strategy_sharpe": ev["sharpe_strategy"],
            "benchmark_sharpe": ev["sharpe_benchmark"], "psr_excess": ev["psr_excess"], "dsr_excess": ev["dsr_excess"],
            "predictions": ev["predictions"],
            "next_day_p": (ev.get("signal_next_day") or {}).get("p_value"),
            "alpha_annual": (ev.get("alpha") or {}).get("alpha_annual"),
            "alpha_p": (ev.get("alpha") or {}).get("p_value"), "dsr_alpha": ev.get("dsr_alpha")}


def jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, (np.bool_,)):
        return bool(obj)
    if isinstance(obj, (pd.Timestamp, datetime)):
        return obj.isoformat()
    return obj
