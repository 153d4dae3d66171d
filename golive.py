"""The go-live gate: when may the current model trade real money?

Live trading needs, for the model with a given checksum (``gate_status``):

1. a passing out-of-sample backtest on record (``passing_backtest_for``): a run of
   ``./run_backtest.sh`` that was not ``--in-sample``, passed the criteria (``Criteria``,
   ``evaluate_criteria``; thresholds in constants.py, ``GOLIVE_*``) and used criteria no looser
   and costs no lower than the defaults (``gate_eligible``). The backtest writes these rows with
   ``record_run`` (table ``backtest_runs``);
2. a passing walk-forward (``./run_backtest.sh --walk-forward``) of the model's configuration on
   the whole universe and the production data (``walk_forward_runs.gate_walk_forward`` says what counts:
   the data file changes every session, so a run counts on the same bytes or, on the production
   file, for ``GOLIVE_WALK_FORWARD_MAX_AGE_DAYS``);
3. ``GOLIVE_MIN_PAPER_SESSIONS`` paper-trading sessions with that model, replays not counted
   (``record_paper_session`` after every successful paper cycle, table ``paper_sessions``);

or an override a person set by hand (``set_override``; kv key ``golive_override``, audited by
the caller): it waives the paper sessions; with ``--no-backtest`` the backtest and the
walk-forward too. Used by the live cycle (``live_trading``), the backtest and the health check; the
state lives in the state database (``state_db``).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field


import config
import constants as C
from errors import UserFacingError
import evidence_binding
import model_management
import overfitting
import state_db
import trial_registry
import walk_forward_runs
from fileutil import json_default

GATE_OVERRIDE_KEY = "golive_override"

_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS backtest_runs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        created_at TEXT NOT NULL,
        model_checksum TEXT,
        in_sample INTEGER NOT NULL,
        passed INTEGER NOT NULL,
        gate_eligible INTEGER NOT NULL,
        start_date TEXT,
        end_date TEXT,
        report_path TEXT,
        parameters TEXT NOT NULL,
        metrics TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS backtest_runs_checksum ON backtest_runs(model_checksum, id)",
    """CREATE TABLE IF NOT EXISTS paper_sessions (
        session_date TEXT NOT NULL,
        model_checksum TEXT NOT NULL,
        replay INTEGER NOT NULL,
        orders INTEGER NOT NULL,
        equity REAL,
        created_at TEXT NOT NULL,
        PRIMARY KEY (session_date, model_checksum, replay)
    )""",
]


def ensure_schema(conn) -> None:
    """Create the gate's tables (``backtest_runs``, ``paper_sessions``) when missing."""
    state_db.ensure_schema(conn, _SCHEMA)


def _opened(conn=None):
    """``with _opened(conn) as c:`` the caller's connection, else a new one closed at the end;
    the gate's tables ensured (``state_db.opened``)."""
    return state_db.opened(conn, _SCHEMA)


# =========================================================================== criteria

@dataclass
class Criteria:
    min_total_return: float = field(default_factory=lambda: C.GOLIVE_MIN_TOTAL_RETURN)   # total return must exceed
    min_sharpe: float = field(default_factory=lambda: C.GOLIVE_MIN_SHARPE)               # Sharpe must be at least
    max_drawdown: float = field(default_factory=lambda: C.GOLIVE_MAX_DRAWDOWN)           # |max drawdown| must be at most
    min_trades: int = field(default_factory=lambda: C.GOLIVE_MIN_TRADES)                 # closed round trips, at least

    def not_looser_than_defaults(self) -> bool:
        return (self.min_total_return >= C.GOLIVE_MIN_TOTAL_RETURN and self.min_sharpe >= C.GOLIVE_MIN_SHARPE
                and self.max_drawdown <= C.GOLIVE_MAX_DRAWDOWN and self.min_trades >= C.GOLIVE_MIN_TRADES)


def evaluate_criteria(metrics: dict, criteria: Criteria | None = None) -> list[dict]:
    """One row per go-live criterion: name, value, rule, threshold, passed."""
    c = criteria or Criteria()
    tr, sh, dd, nt = (metrics.get("total_return"), metrics.get("sharpe"), metrics.get("max_drawdown"),
                      metrics.get("trades"))

    def row(name, value, rule, threshold, ok, fmt):
        return {"name": name, "value": value, "rule": rule, "threshold": threshold,
                "passed": bool(ok), "format": fmt}
    return [
        row("total_return", tr, ">", c.min_total_return, tr is not None and tr > c.min_total_return, "pct"),
        row("sharpe", sh, ">=", c.min_sharpe, sh is not None and sh >= c.min_sharpe, "num"),
        row("max_drawdown", None if dd is None else abs(dd), "<=", c.max_drawdown,
            dd is not None and abs(dd) <= c.max_drawdown + 1e-12, "pct"),
        row("trades", nt, ">=", c.min_trades, nt is not None and nt >= c.min_trades, "int"),
    ]


# =========================================================================== recorded backtest runs

def record_run(summary: dict, report_path, conn=None) -> int:
    """Insert one row in ``backtest_runs``; returns its id."""
    with _opened(conn) as c, state_db.transaction(c):
        cur = c.execute(
            "INSERT INTO backtest_runs(created_at, model_checksum, in_sample, passed, gate_eligible, "
            "start_date, end_date, report_path, parameters, metrics) VALUES (?,?,?,?,?,?,?,?,?,?)",
            (state_db.utcnow(), summary.get("model_checksum"), int(bool(summary["in_sample"])),
             int(bool(summary["passed"])), int(bool(summary["gate_eligible"])), summary.get("start"),
             summary.get("end"), str(report_path) if report_path else None,
             json.dumps(summary.get("parameters", {}), default=str),
             json.dumps(summary.get("metrics", {}), default=json_default)))
        return int(cur.lastrowid)


def passing_backtest_for(checksum: str, conn=None) -> dict | None:
    """The newest backtest of the model with this checksum that counts for going live, or None.

    Counts: out of sample (never ``--in-sample``), passed its criteria, and ``gate_eligible``:
    its criteria were not looser than constants.py's and its costs not below the paper broker's.
    Returns the row as a dict (``metrics`` and ``parameters`` parsed)."""
    if not checksum:
        return None
    with _opened(conn) as c:
        row = c.execute("SELECT * FROM backtest_runs WHERE model_checksum = ? AND in_sample = 0 AND "
                        "passed = 1 AND gate_eligible = 1 ORDER BY id DESC LIMIT 1", (checksum,)).fetchone()
    out = state_db.row_dict(row, ("metrics", "parameters"), ("in_sample", "passed", "gate_eligible"))
    if out is not None:
        out["report"] = out.get("report_path")
    return out


# =========================================================================== paper sessions

def record_paper_session(conn, session_date, checksum: str, replay: bool, orders: int, equity: float) -> None:
    """Count one paper session of the model (call inside the caller's transaction)."""
    ensure_schema(conn)
    conn.execute("INSERT OR REPLACE INTO paper_sessions VALUES (?,?,?,?,?,?)",
                 (str(session_date), checksum, int(replay), int(orders), float(equity), state_db.utcnow()))


def paper_session_count(checksum: str, conn=None) -> int:
    """Distinct paper-trading session dates of the model, replays not counted."""
    with _opened(conn) as c:
        row = c.execute("SELECT COUNT(DISTINCT session_date) AS n FROM paper_sessions "
                        "WHERE model_checksum = ? AND replay = 0", (checksum,)).fetchone()
    return int(row["n"])


# =========================================================================== override and status

class GateError(UserFacingError):
    """The go-live gate refuses an operator's request; the message says what is missing."""


def _metadata(checksum: str, metadata: dict | None) -> dict:
    if metadata is None:
        metadata = model_management.read_metadata(config.path(C.MODEL_FILE))
    if metadata.get("sha256") and metadata["sha256"] != checksum:
        raise model_management.ModelError("the installed model's metadata is for another model")
    return metadata


def _production(universe, data_path) -> evidence_binding.Production:
    """The production data, universe and sessions the runs are compared with (``evidence_binding``)."""
    return evidence_binding.Production.load(universe, data_path)


def _backtest_evidence(checksum: str, conn, metadata: dict | None, production) -> dict:
    """The backtest condition: the newest passing out-of-sample, gate-eligible backtest of this
    model whose evidence matches the production data, universe and fixed window now
    (``evidence_binding.mismatches``) in ``run``; the newest passing one in ``latest`` with
    ``stale``, the reasons it does not count."""
    out = {"run": None, "latest": None, "stale": []}
    if not checksum:
        return out
    with _opened(conn) as c:
        rows = c.execute("SELECT * FROM backtest_runs WHERE model_checksum = ? AND in_sample = 0 AND passed = 1 "
                         "ORDER BY id DESC", (checksum,)).fetchall()
    try:
        meta = _metadata(checksum, metadata)
    except (UserFacingError, OSError, KeyError, ValueError):
        meta = {}
    for raw in rows:
        row = state_db.row_dict(raw, ("metrics", "parameters"), ("in_sample", "passed", "gate_eligible")) or {}
        row["report"] = row.get("report_path")
        params = row.get("parameters")
        why = evidence_binding.mismatches("backtest", params.get("evidence") if isinstance(params, dict) else None,
                                          production, meta)
        if not row["gate_eligible"] and not why:
            why = ["not gate evidence: looser criteria, lower costs or other risk limits than constants.py"]
        row["stale"] = why
        if out["latest"] is None:
            out["latest"], out["stale"] = row, why
        if not why:
            out["run"] = row
            break
    return out


def _walk_forward_evidence(checksum: str, conn, metadata: dict | None, universe, data_path,
                           production=None) -> dict:
    """The walk-forward condition for the model with this checksum (``walk_forward_runs.gate_walk_forward``):
    its configuration from the model's metadata; a run counts when its evidence matches the
    production data, universe and fixed window now (``evidence_binding.mismatches``)."""
    out = {"run": None, "latest": None, "config_fingerprint": None, "universe": None, "data_sha256": None,
           "error": None, "stale": [], "max_age_days": C.GOLIVE_WALK_FORWARD_MAX_AGE_DAYS}
    try:
        metadata = _metadata(checksum, metadata)
        fingerprint = walk_forward_runs.config_fingerprint(walk_forward_runs.model_configuration_from_metadata(metadata))
        if production is None:
            production = _production(universe, data_path)
    except (UserFacingError, OSError, KeyError, ValueError) as exc:
        out["error"] = f"the current model's configuration or the universe cannot be read ({exc})"
        return out
    out.update(config_fingerprint=fingerprint, universe=production.universe, data_sha256=production.file_sha256,
               data_path=str(production.path))

    def stale(row: dict) -> list[str]:
        summ = row.get("summary")
        recorded = summ.get("evidence") if isinstance(summ, dict) else None
        why = evidence_binding.mismatches("walk_forward", recorded, production, metadata)
        if not row["gate_eligible"] and not why:
            why = ["not gate evidence: a longer --min-train than WALK_FORWARD_MIN_TRAIN_SESSIONS, lower costs or "
                   "other risk limits than constants.py"]
        return why
    out["run"], out["latest"] = walk_forward_runs.gate_walk_forward(fingerprint, stale, conn=conn)
    newest = out["latest"]
    if isinstance(newest, dict) and out["run"] is None:
        out["stale"] = newest.get("stale") or []
    return out


def set_override(checksum: str, reason: str, by: str, audit, conn=None, no_backtest: bool = False,
                 metadata: dict | None = None) -> dict:
    """Open the gate by hand for this model (audited first, then stored). The override waives
    the paper sessions only; the measured evidence (a passing backtest and a passing walk-forward)
    must be on record unless ``no_backtest`` says explicitly that it is waived too (both: the
    flag means "without the measured evidence", for drills and emergencies)."""
    with _opened(conn) as c:
        return _set_override(c, checksum, reason, by, audit, no_backtest, metadata)


def _set_override(c, checksum: str, reason: str, by: str, audit, no_backtest: bool, metadata: dict | None) -> dict:
    if not no_backtest:
        missing = []
        production = _production(None, None)
        if not _backtest_evidence(checksum, c, metadata, production)["run"]:
            missing.append("no passing out-of-sample backtest of this model on the production data, universe and "
                           "fixed window is on record (./run_backtest.sh)")
        if not _walk_forward_evidence(checksum, c, metadata, None, None, production)["run"]:
            missing.append("no passing walk-forward for its configuration on the production data and universe "
                           "(./run_backtest.sh --walk-forward)")
        if missing:
            raise GateError("; ".join(missing) + ": run them, or add --no-backtest to override without them")
    value = {"model_checksum": checksum, "reason": reason, "by": by, "at": state_db.utcnow(),
             "no_backtest": bool(no_backtest)}
    audit.log_event("golive_gate", "override", value)
    with state_db.transaction(c):
        state_db.kv_set(c, GATE_OVERRIDE_KEY, value)
    return value


def _period(start, end) -> str:
    """``start .. end``, or what is known of it (never "None .. None")."""
    if start and end:
        return f"{start} .. {end}"
    return f"from {start}" if start else (f"until {end}" if end else "period not recorded")


def failing_statistics(summary: dict | None) -> list[str]:
    """The statistics a walk-forward failed, each named with its value and threshold
    ("DM p-value 0.3100 >= 0.05 (needs < 0.05)"); the condition's own words for a run recorded
    before the conditions carried their statistic."""
    out = []
    for cond in (summary or {}).get("conditions") or []:
        if cond.get("passed"):
            continue
        stat, value = cond.get("statistic"), cond.get("value")
        if stat:
            shown = "n/a" if value is None else f"{value:.4g}"
            out.append(f"{stat} {shown} (needs {cond.get('rule')} {cond.get('threshold')})")
        else:
            out.append(cond.get("text") or cond.get("name") or "a condition")
    return out


def _walk_forward_state(wf: dict) -> str:
    """PASS, FAILED (the newest run of this configuration failed its statistics), STALE (a
    passing run exists but its data, universe or window no longer match the production ones, or
    it is not gate evidence), MISSING (none on record) or ERROR."""
    if wf.get("error"):
        return "ERROR"
    if wf.get("run"):
        return "PASS"
    latest = wf.get("latest")
    if latest:
        return "FAILED" if not latest["passed"] else "STALE"
    return "MISSING"


def _backtest_state(bt: dict) -> str:
    return "PASS" if bt.get("run") else ("STALE" if bt.get("latest") else "MISSING")


def headline(status: dict) -> list[str]:
    """The gate's first lines (``python live_trading.py gate``): each piece of evidence as PASS,
    FAILED, STALE (with which of data, universe, window changed) or MISSING, agreeing with the
    detail lines under them."""
    bt, bt_latest = status["backtest"], status.get("backtest_latest")
    bt_state = status.get("backtest_state") or ("PASS" if bt else "MISSING")
    if bt_state == "PASS":
        bt_line = f"PASS ({bt.get('created_at')}, {bt.get('report')})"
    elif bt_state == "STALE":
        bt_line = (f"STALE (run {bt_latest['id']}, {bt_latest['created_at']}: "
                   f"{'; '.join(status.get('backtest_stale') or [])}): run ./run_backtest.sh")
    else:
        bt_line = "MISSING: run ./run_backtest.sh (out-of-sample, must pass)"
    state = status.get("walk_forward_state") or ("PASS" if status.get("walk_forward") else "MISSING")
    run, latest = status.get("walk_forward"), status.get("walk_forward_latest") or {}
    wf_line = {
        "PASS": lambda: f"PASS (run {run['id']}, {run['created_at']})",
        "FAILED": lambda: (f"FAILED (run {latest['id']}, {latest['created_at']}: "
                           f"{'; '.join(failing_statistics(latest.get('summary'))) or 'see below'}): run "
                           f"./run_backtest.sh --walk-forward again after changing the model or data"),
        "STALE": lambda: (f"STALE (run {latest['id']}, {latest['created_at']}: "
                          f"{'; '.join(status.get('walk_forward_stale') or [])}): run ./run_backtest.sh "
                          f"--walk-forward (production data, whole universe)"),
        "ERROR": lambda: "ERROR (see below)",
    }.get(state, lambda: "MISSING: run ./run_backtest.sh --walk-forward (production data, whole universe, "
                         "must pass)")()
    return [f"backtest:       {bt_line}", f"walk-forward:   {wf_line}"] + trial_lines(status)


def _conditions(bt: dict, sessions: int, wf: dict) -> list[dict]:
    """Each go-live condition in words: what was measured, the threshold, pass/fail, the fix."""
    need = C.GOLIVE_MIN_PAPER_SESSIONS
    backtest, bt_latest = bt["run"], bt["latest"]
    if backtest:
        m = backtest.get("metrics") or {}
        ev = (backtest.get("parameters") or {}).get("evidence") or {}
        measured = (f"passed on {backtest.get('created_at')} ({_period(backtest.get('start_date'), backtest.get('end_date'))}; "
                    f"data SHA-256 {str(ev.get('data_sha256'))[:12]}; report {backtest.get('report')})")
        if isinstance(m, dict) and m.get("total_return") is not None:
            measured += f"; total return {m['total_return']:.2%}, Sharpe {m.get('sharpe')}"
    elif bt_latest:
        measured = (f"newest passing backtest of this model: run {bt_latest['id']} on {bt_latest['created_at']} "
                    f"({_period(bt_latest.get('start_date'), bt_latest.get('end_date'))}) does not count: "
                    + "; ".join(bt["stale"]))
    else:
        measured = "no passing out-of-sample backtest of this model on record"
    run, latest = wf["run"], wf["latest"]
    if wf["error"]:
        wf_measured = wf["error"]
    elif run:
        summ = run.get("summary") or {}
        ev = summ.get("evidence") or {}
        wf_measured = (f"run {run['id']} passed on {run['created_at']} ({_period(run['start_date'], run['end_date'])}, "
                       f"{len(run['universe'])} symbols, data SHA-256 {str(ev.get('data_sha256'))[:12]} up to "
                       f"{ev.get('end')}); skill vs no change {summ.get('skill_vs_no_change')}, vs the training mean "
                       f"{summ.get('skill_vs_training_mean')}, next-day signal p {summ.get('next_day_p')}, alpha "
                       f"{summ.get('alpha_annual')} a year (p {summ.get('alpha_p')}), deflated Sharpe of the "
                       f"alpha {summ.get('dsr_alpha')}")
    elif latest:
        why = (f"it FAILED its statistics: {'; '.join(failing_statistics(latest.get('summary'))) or 'see its report'}"
               if not latest["passed"] else "it does not count: " + "; ".join(wf["stale"]))
        wf_measured = f"newest walk-forward of this configuration: run {latest['id']} on " \
                      f"{latest['created_at']}: {why}"
    else:
        wf_measured = "no walk-forward of this model's configuration on record"
    bound = ("on the production data (the same rows up to the run's last session), the universe of "
             f"{C.UNIVERSE_FILE} and the fixed window (ending at most {wf['max_age_days']} days before the "
             "data's last session)")
    return [
        {"name": "backtest", "passed": bool(backtest), "measured": measured,
         "threshold": "an out-of-sample backtest of this model passing the GOLIVE_* criteria with default "
                      f"criteria and costs, {bound}",
         "fix": "./run_backtest.sh"},
        {"name": "walk_forward", "passed": bool(run), "measured": wf_measured,
         "threshold": ("a passing walk-forward (forecast skill significant against no change and the training "
                       f"mean, the signal's next-day returns significant, alpha over equal-weight buy-and-hold "
                       f"significant with a HAC t-statistic and its deflated Sharpe >= {C.SKILL_MIN_DSR}) for "
                       f"this model's configuration, {bound}"),
         "fix": "./run_backtest.sh --walk-forward"},
        {"name": "paper_sessions", "passed": sessions >= need,
         "measured": f"{sessions} of {need} paper-trading sessions with this model (replays do not count)",
         "threshold": f"at least {need} paper sessions",
         "fix": "keep running the paper cycle (TRADING_MODE=paper python live_trading.py) once a session"},
    ]


def gate_status(checksum: str, conn=None, metadata: dict | None = None, universe=None, data_path=None) -> dict:
    """Where the go-live conditions stand for a model: a passing out-of-sample backtest and a
    passing walk-forward of its configuration, each bound to the production data, universe and
    fixed window now (``evidence_binding``; else STALE, saying which changed), and
    GOLIVE_MIN_PAPER_SESSIONS paper sessions (replays not counted). An override waives the paper
    sessions; it waives the backtest and the walk-forward only when given with ``--no-backtest``.
    ``metadata`` is the model's (default: the installed model's), ``universe`` the symbols
    (default: selected_stocks.txt), ``data_path`` the production data (default:
    processed_stock_data.csv)."""
    production = _production(universe, data_path)
    with _opened(conn) as c:
        bt = _backtest_evidence(checksum, c, metadata, production)
        sessions = paper_session_count(checksum, c)
        wf = _walk_forward_evidence(checksum, c, metadata, universe, data_path, production)
        override = state_db.kv_get(c, GATE_OVERRIDE_KEY)
    override = override if override and override.get("model_checksum") == checksum else None
    conditions = _conditions(bt, sessions, wf)
    try:
        trials = trial_evidence(wf)
    except (UserFacingError, OSError) as exc:   # the registry cannot be read: the gate stays closed, saying why
        trials = {"error": f"the trial registry cannot be read ({exc})"}
    conditions += trial_conditions(trials)
    evidence = bool(bt["run"]) and bool(wf["run"])
    ok = all(x["passed"] for x in conditions)
    by_override = override is not None and (evidence or bool(override.get("no_backtest")))
    return {"model_checksum": checksum, "backtest": bt["run"], "backtest_latest": bt["latest"],
            "backtest_state": _backtest_state(bt), "backtest_stale": bt["stale"],
            "walk_forward": wf["run"], "walk_forward_latest": wf["latest"], "walk_forward_state": _walk_forward_state(wf),
            "walk_forward_stale": wf["stale"], "config_fingerprint": wf["config_fingerprint"],
            "universe": wf["universe"], "data_sha256": wf["data_sha256"], "paper_sessions": sessions,
            "paper_sessions_needed": C.GOLIVE_MIN_PAPER_SESSIONS, "override": override,
            "conditions": conditions, "trials": trials, "passed": ok or by_override}


def refusal_reasons(status: dict) -> list[str]:
    """Why ``gate_status`` is closed, one phrase per missing condition (naming the failed
    statistic, or which of data, universe and window changed)."""
    why = []
    for cond in status.get("conditions", []):
        if cond["passed"]:
            continue
        if cond["name"] == "backtest" and status.get("backtest_state") == "STALE":
            why.append("the backtest of this model is STALE (" + "; ".join(status.get("backtest_stale") or [])
                       + "): run ./run_backtest.sh")
        elif cond["name"] == "backtest":
            why.append("no passing out-of-sample backtest for this model (run ./run_backtest.sh)")
        elif cond["name"] == "walk_forward" and status.get("walk_forward_state") == "FAILED":
            latest = status.get("walk_forward_latest") or {}
            failed = "; ".join(failing_statistics(latest.get("summary"))) or "its statistics"
            why.append(f"the newest walk-forward of this model's configuration FAILED its statistics: {failed} (see "
                       "python live_trading.py gate; run ./run_backtest.sh --walk-forward after a change)")
        elif cond["name"] == "overfitting":
            why.append(overfitting_reason(status))
        elif cond["name"] == "walk_forward" and status.get("walk_forward_state") == "STALE":
            why.append("the walk-forward is STALE (" + "; ".join(status.get("walk_forward_stale") or [])
                       + "): run ./run_backtest.sh --walk-forward")
        elif cond["name"] == "walk_forward":
            why.append("no passing walk-forward for this model's configuration on the production data and "
                       "universe (run ./run_backtest.sh --walk-forward)")
        else:
            why.append(f"{status['paper_sessions']} of {status['paper_sessions_needed']} paper-trading "
                       f"sessions with this model")
    return why


# =========================================================================== trials, DSR, PBO, holdout (issue 21)

def trial_evidence(wf: dict) -> dict | None:
    """The trial count, the deflated Sharpe and the PBO the gate shows and applies
    (``overfitting.trial_evidence`` on the trial registry), for the walk-forward run that counts
    (its trial's daily returns: the DSR at today's trial count, not the count it ran with), and
    whether the sealed holdout was opened for this configuration. None when the configuration
    or the universe cannot be read (the walk-forward condition says why)."""
    universe = wf.get("universe")
    if wf.get("error") or not universe:
        return None
    run = wf.get("run")
    trial_id = ((run or {}).get("summary") or {}).get("trial_id") if run else None
    trial = trial_registry.trial(trial_id) if trial_id else None
    ev = overfitting.trial_evidence(universe, trial["returns"] if trial else None)
    if run and not trial:                 # a run recorded before the registry: its own DSR, as recorded
        summ = run.get("summary") or {}
        ev["dsr"] = summ.get("dsr_excess")
        ev["dsr_passed"] = ev["dsr"] is not None and ev["dsr"] >= ev["min_dsr"]
    ev["applies_dsr"] = bool(run)
    ev["passed"] = bool(ev["pbo_passed"] and (ev["dsr_passed"] or not run))
    opening = trial_registry.holdout_opening(wf["config_fingerprint"], universe)
    ev["holdout"] = {"opened": opening is not None,
                     "openings_on_universe": len(trial_registry.holdout_openings(universe)),
                     **({k: opening[k] for k in ("created_at", "passed", "trial_id", "holdout_start", "holdout_end")}
                        if opening else {})}
    return ev


def trial_lines(status: dict) -> list[str]:
    """``gate``'s lines for the trials: the count, DSR and PBO, each with its threshold, and the holdout."""
    ev = status.get("trials")
    if not ev:
        return []
    if ev.get("error"):
        return [f"trials:         ERROR: {ev['error']}"]
    lines = overfitting.trial_lines(ev)
    if not ev.get("applies_dsr"):
        lines[1] += " (applied to the walk-forward that counts: none yet)"
    h = ev["holdout"]
    if h["opened"]:
        lines.append(f"holdout:        opened for this configuration on {h['created_at']} ({h['holdout_start']} .. "
                     f"{h['holdout_end']}, trial {h['trial_id']}): {'PASS' if h['passed'] else 'FAIL'}; "
                     f"{h['openings_on_universe']} opening(s) on this universe")
    else:
        lines.append(f"holdout:        sealed, not opened for this configuration ({h['openings_on_universe']} opening(s) "
                     f"on this universe): python walk_forward.py holdout, once, for the final check")
    return lines


def trial_conditions(ev: dict | None) -> list[dict]:
    """The gate's condition on the trials: the counted walk-forward's DSR at today's trial count
    and the PBO under its ceiling (once there are PBO_MIN_TRIALS trials)."""
    if ev is None:
        return []
    if ev.get("error"):
        return [{"name": "overfitting", "passed": False, "measured": ev["error"],
                 "threshold": "the trial registry readable (logs/audit/trial_registry.db)",
                 "fix": "make logs/audit/ writable and the disk not full, then python live_trading.py gate"}]
    dsr = "n/a" if ev["dsr"] is None else f"{ev['dsr']:.3f}"
    return [{"name": "overfitting", "passed": ev["passed"],
             "measured": (f"{ev['n_trials']} trial(s) on this universe; DSR of the counted walk-forward at that count "
                          f"{dsr}{'' if ev['applies_dsr'] else ' (no counted walk-forward yet)'}; {ev['pbo_text']}"),
             "threshold": (f"deflated Sharpe >= {ev['min_dsr']} at the universe's trial count; probability of "
                           f"backtest overfitting <= {ev['pbo_max']} once {ev['pbo_min_trials']} trials have "
                           f"out-of-sample returns"),
             "fix": ("every configuration tried lowers the DSR and can raise the PBO: stop tuning on this history; "
                     "a real edge passes at the trial count (docs/MODEL.md, 'Trials, PBO and the sealed holdout')")}]


def overfitting_reason(status: dict) -> str:
    ev = status.get("trials") or {}
    if ev.get("error"):
        return ev["error"]
    what = []
    if ev.get("applies_dsr") and not ev.get("dsr_passed"):
        what.append(f"the deflated Sharpe at {ev.get('n_trials')} trials is below {ev.get('min_dsr')}")
    if not ev.get("pbo_passed"):
        what.append(f"the probability of backtest overfitting is above {ev.get('pbo_max')}")
    return "too many tries for the evidence: " + " and ".join(what or ["see python live_trading.py gate"])
