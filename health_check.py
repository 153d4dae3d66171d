"""Every check a person would run from the runbook, one line each (``./run_health_check.sh``).

Exit code: 0 healthy, 1 warnings, 2 failures. Each line is ``OK|WARN|FAIL  check: detail``,
with the fix on WARN and FAIL lines; ``--json`` prints the same as one JSON object. Nothing here
trades, downloads or changes state; with failures it sends the ``health_check_failed`` alert
(when an alert channel is configured).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sqlite3
import sys
from datetime import datetime

import pandas as pd

import alerts
from audit_logging import CYCLE_END, CYCLE_START, AuditLogger
import clock
import clock_sanity
import config
import constants as C
from credential_manager import CredentialManager
import cron_install
import data_collection
import drift_monitor
import shadow_model
import fileutil
import golive
import kill_switch
import trading_cycle
import market_calendar
import model_management
import scheduler
import schwab_broker
import state_db
import status_page
import tunables
from risk_management import RiskManager
from broker_gateway import describe_breaker
from trading_execution import CircuitBreaker
from errors import install_excepthook, mount_point

OK, WARN, FAIL = "OK", "WARN", "FAIL"


def check_python():
    v = sys.version_info
    if v[:2] == (3, 12):
        return OK, f"Python {v.major}.{v.minor}.{v.micro}"
    if v[:2] == (3, 11):
        return OK, f"Python {v.major}.{v.minor}.{v.micro} (supported; 3.12 is the target)"
    return FAIL, f"Python {v.major}.{v.minor}: unsupported (use 3.12: rm -rf .venv && make venv)"


def check_mode():
    mode = config.trading_mode()
    config.data_source()
    return OK, f"TRADING_MODE={mode}" + (" (real orders go to Schwab)" if mode == "live" else " (no real orders)")


def check_home():
    """TRADING_HOME holds project state (``config.home_problem``): a mistyped path is named with
    the set-up command, never created."""
    problem = config.home_problem()
    if problem:
        return FAIL, problem
    return OK, f"TRADING_HOME={config.home()}"


def _no_state():
    """True when no cycle has run yet here: the checks below then read nothing (and create
    nothing: a health check changes no state)."""
    return not config.path(C.STATE_DB_FILE).exists()


def check_kill_switch():
    if _no_state():
        return OK, "kill switch off (no state database yet: no cycle has run here)"
    switch = kill_switch.get()
    if switch:
        return WARN, (f"kill switch ON since {switch['at']} ({switch['reason']}): no trading; "
                      f"clear with python live_trading.py resume")
    return OK, "kill switch off"


def check_universe():
    symbols = data_collection.load_universe()
    return OK, f"selected_stocks.txt: {len(symbols)} symbols"


def check_data():
    df = data_collection.load_processed()
    last = df["Date"].max()
    if config.data_source() == "csv":        # the files' newest date is no proof of freshness
        reference = market_calendar.last_completed_session()
    else:
        reference = data_collection.reference_session()
    behind = market_calendar.sessions_between(last, reference)
    detail = f"processed_stock_data.csv: {len(df)} rows, {df['Symbol'].nunique()} symbols, through {last.date()}, zero NaN"
    refused = [r for r in data_collection.read_refused() if r.get("kind") == "absurd_move"]
    if refused:
        return WARN, (f"{detail}; refused by the last update, not traded: "
                      + "; ".join(str(r.get("line", r.get("symbol"))) for r in refused))
    if behind > C.DATA_MAX_AGE_SESSIONS:
        return WARN, f"{detail}; {behind} sessions behind {reference.date()}: run ./run_daily_data_update.sh"
    stale = data_collection.stale_symbols(df, data_collection.load_universe(), last)
    if stale:
        return WARN, (f"{detail}; stale or missing symbols (no new orders, a held one stops the cycle): "
                      f"{data_collection.describe_stale(stale)}: run ./run_daily_data_update.sh, or remove "
                      f"delisted symbols from selected_stocks.txt")
    return OK, detail


def check_model():
    checksum, meta = model_management.verify_model()
    metrics = (meta.get("metrics") or {}).get("test") or {}
    skill = metrics.get("skill")
    detail = f"{C.MODEL_FILE} verified (SHA-256 {checksum[:12]}…)"
    if skill is not None:
        detail += f", test skill {skill:+.4f}, directional_accuracy {metrics.get('directional_accuracy', 0):.3f}"
        if skill <= 0:
            return WARN, detail + ": the model does not beat predicting no change; retrain (python train_model.py)"
    return OK, detail


def check_audit():
    valid, error = AuditLogger().verify_chain()
    if not valid:
        return FAIL, f"audit trail: {error} (see docs/RUNBOOK.md, 'Audit Log Tampering Detected')"
    return OK, "audit trail: hash chain valid"


def check_credentials():
    home = config.home()
    files = sorted(home.glob(".*_config.enc"))
    bad = [problem for f in files
           if (problem := fileutil.private_file_problem(f, follow_symlinks=False, shown=f.name))]
    if bad:
        return FAIL, f"credential files too open or not yours: {'; '.join(bad)}"
    mode = config.trading_mode()
    names = [f.name for f in files]
    if mode == "live" and ".schwab_config.enc" not in names:
        return FAIL, "live mode without Schwab credentials: python credential_manager.py set schwab"
    return OK, f"credential files: {', '.join(names) if names else 'none (paper mode needs none)'}"


def check_token():
    if config.trading_mode() != "live":
        return OK, "Schwab token: not needed in paper mode"
    age = schwab_broker.token_age_of(CredentialManager().load_credentials(schwab_broker.SCHWAB_TOKEN_SERVICE))
    if age.state == schwab_broker.TOKEN_MISSING:
        return FAIL, f"no Schwab token: run {schwab_broker.LOGIN_COMMAND}"
    schwab_broker.alert_if_expiring(age)
    if age.state == schwab_broker.TOKEN_EXPIRED:
        return FAIL, (f"Schwab token {age.age_days:.1f} days old (expired at {C.TOKEN_MAX_AGE_DAYS:.0f}): "
                      f"{schwab_broker.LOGIN_COMMAND}")
    if age.state == schwab_broker.TOKEN_RENEW:
        return WARN, (f"Schwab token {age.age_days:.1f} days old: renew before day {C.TOKEN_MAX_AGE_DAYS:.0f} "
                      f"with {schwab_broker.LOGIN_COMMAND}")
    return OK, f"Schwab token {age.age_days:.1f} days old"


def check_breaker():
    if _no_state():
        return OK, "circuit breaker closed (no state yet)"
    st = CircuitBreaker().status()
    if st["state"] != "closed":
        return WARN, (f"Circuit breaker {describe_breaker(st)}; "
                      f"it retries after {C.CIRCUIT_BREAKER_RECOVERY_S:.0f} s")
    return OK, "circuit breaker closed"


def check_risk():
    if _no_state():
        return OK, "no drawdown or daily-loss halt (no state yet)"
    halted, reason = RiskManager().is_halted()
    if halted:
        return WARN, f"trading halted: {reason}"
    return OK, "no drawdown or daily-loss halt"


def check_gate():
    if config.trading_mode() != "live":
        return OK, "go-live gate: not needed in paper mode"
    model = trading_cycle.get_model()
    st = golive.gate_status(model.checksum, metadata=model.metadata)
    if not st["passed"]:
        return FAIL, ("go-live gate closed (backtest " + ("ok" if st["backtest"] else "missing") +
                      ", walk-forward " + ("ok" if st["walk_forward"] else "missing") +
                      f", paper sessions {st['paper_sessions']}/{st['paper_sessions_needed']}): "
                      "python live_trading.py gate")
    return OK, "go-live gate open"


def check_shadow():
    """The shadow model's progress (sessions recorded / needed, DM statistic and p-value, verdict
    so far); WARN when it is doing worse than the live model or waits for its go-live evidence."""
    conn = None if _no_state() else state_db.connect_readonly()
    if conn is None:
        return OK, "no shadow model (no state database yet)"
    try:
        p = shadow_model.progress(conn)
    finally:
        conn.close()
    if p is None:
        return OK, "no shadow model"
    line = shadow_model.progress_line(p)
    if "WORSE" in line or p.get("waiting"):
        return WARN, f"{line} (python live_trading.py status)"
    return OK, line


def check_errors_today():
    path = config.path(C.LOG_DIR) / C.ERRORS_LOG_NAME
    if not path.exists():
        return OK, "errors.log: none"
    today = datetime.now().strftime("%Y-%m-%d")
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.startswith(today)]
    if lines:
        return WARN, f"errors.log: {len(lines)} ERROR/CRITICAL lines today; last: {lines[-1][:160]}"
    return OK, "errors.log: nothing today"


def check_drift_alerts():
    last = drift_monitor.last_alert_line()
    if last is None:
        return OK, f"no DRIFT ALERT in the last {C.DRIFT_ALERT_LOG_DAYS} trading logs"
    level = FAIL if "CRITICAL" in last else WARN
    return level, f"last drift alert: {last[:200]} (retrain: python train_model.py)"


def check_disk():
    where = config.home()
    while not where.exists():
        where = where.parent
    free = shutil.disk_usage(where).free / 1024 ** 3
    if free < 1:
        return FAIL, f"{free:.2f} GB free under {config.home()}: free space on {mount_point(where)} now"
    return OK, f"{free:.1f} GB free"


def check_storage():
    """Can the system write where it must (logs, audit trail, state)? Read-only file system or
    no permission is a failure: nothing, not even ``halt``, can be recorded. Writes nothing."""
    home = config.home()
    for relative in (C.LOG_DIR, os.path.dirname(C.AUDIT_LOG_FILE), os.path.dirname(C.STATE_DB_FILE)):
        where = home / relative
        while not where.exists() and where != where.parent:
            where = where.parent
        mount = mount_point(where)
        try:
            read_only = bool(os.statvfs(where).f_flag & os.ST_RDONLY)
        except OSError:
            read_only = False
        if read_only:
            return FAIL, (f"{home / relative} is on a read-only file system ({mount}): remount "
                          f"{mount} read-write (or set TRADING_HOME to a writable folder)")
        if not os.access(where, os.W_OK):
            return FAIL, f"{where} is not writable by uid {os.geteuid()}: make {where} writable"
    return OK, f"{home}: logs, audit trail and state writable"


def _last_clock_refusal(limit: int = 20_000) -> dict | None:
    """The ``clock_check`` refusal of the newest cycle, from the audit trail (None when that
    cycle passed its clock check or no cycle ran)."""
    for n, rec in enumerate(AuditLogger().records_backwards()):
        if n >= limit or rec.get("action") == CYCLE_START:
            return None
        if rec.get("action") == "clock_check" and rec.get("status") == "refused":
            return rec.get("details") if isinstance(rec.get("details"), dict) else {}
    return None


def check_clock(now: datetime | None = None):
    """This machine's clock against what the last cycle recorded: the end of the last cycle (by
    this same clock; the clock must not be before it) and the broker's clock then (Schwab's
    ``Date``: the skew); a cycle refused on the clock is a failure. FAIL beyond
    ``CLOCK_MAX_SKEW_S`` (the next cycle refuses to trade), WARN beyond half of it. Reads only."""
    ours = now or clock.machine_now()
    limit = C.CLOCK_MAX_SKEW_S
    fix = clock_sanity.NTP_SET
    refusal = None if not config.path(C.AUDIT_LOG_FILE).exists() else _last_clock_refusal()
    if refusal is not None:
        return FAIL, f"the last cycle was refused on the clock: {refusal.get('problem') or 'see the audit trail'}"
    conn = None if _no_state() else state_db.connect_readonly()
    try:
        last = (state_db.kv_get(conn, trading_cycle.LAST_CYCLE_KEY) if conn is not None else None) or {}
    except sqlite3.Error:                  # no kv table yet: nothing recorded
        last = {}
    finally:
        if conn is not None:
            conn.close()
    detail = f"machine clock {clock_sanity.stamp(ours)}"
    if not last.get("finished_at"):
        return OK, f"{detail}; no cycle recorded yet to compare it with"
    finished = datetime.fromisoformat(last["finished_at"])
    back = (finished - ours).total_seconds()
    if back > limit:
        return FAIL, (f"{detail} is {clock_sanity.span(back)} BEFORE the end of the last cycle "
                      f"({clock_sanity.stamp(finished)}, by this same clock): the next cycle refuses to trade; {fix}")
    detail += f"; last cycle ended {clock_sanity.stamp(finished)}"
    skew = last.get("broker_skew_s")
    if skew is None:
        return OK, detail + " (the paper broker has no clock of its own)"
    detail += f"; the broker's clock was {clock_sanity.span(skew)} {'ahead of' if skew >= 0 else 'behind'} ours then"
    if abs(skew) > limit:
        return FAIL, f"{detail} (limit CLOCK_MAX_SKEW_S = {limit:g} s): the next cycle refuses to trade; {fix}"
    if abs(skew) > limit / 2:
        return WARN, f"{detail}, over half the limit (CLOCK_MAX_SKEW_S = {limit:g} s): {fix}"
    return OK, detail


def _last_live_cycle(limit: int = 20_000) -> dict | None:
    """The newest cycle that was not an ``--as-of`` replay and did not stop at once because the
    market was closed (someone ran ``python live_trading.py`` by hand after hours: it changed
    nothing, so it does not hide the session's real cycle), from the audit trail:
    {"started_at": UTC datetime, "end": cycle_end status or None (still running / killed),
    "closed_runs": how many market-closed runs came after it}."""
    end, closed_runs = None, 0
    for n, rec in enumerate(AuditLogger().records_backwards()):
        if n >= limit:
            break
        if rec.get("action") == CYCLE_END:
            end = rec.get("status")
        elif rec.get("action") == CYCLE_START:
            details = rec.get("details") if isinstance(rec.get("details"), dict) else {}
            if details.get("as_of") is None and end == "market_closed":
                closed_runs += 1
            elif details.get("as_of") is None:
                return {"started_at": datetime.fromisoformat(rec["timestamp"]), "end": end,
                        "closed_runs": closed_runs}
            end = None
    return None


def _scheduler_first_run():
    conn = scheduler.readonly_conn()
    try:
        return scheduler.first_run_at(conn)
    finally:
        if conn is not None:
            conn.close()


_CYCLE_END_WHY = {"completed": None, "kill_switch": "the kill switch stopped it", "gate_refused": "the go-live gate refused "
                  "live trading (python live_trading.py gate)", "failed": "orders failed",
                  "error": "it failed (tail -30 \"${TRADING_HOME:-.}\"/logs/errors.log)", None:
                  "it never finished (killed?)"}


def check_last_cycle(now: datetime | None = None):
    """Did the last non-replay cycle run on the last session whose cycle window has passed,
    and if not, why (holiday, kill switch, the scheduler started later, nothing scheduled)."""
    now = now or clock.now()
    job = next(j for j in scheduler.JOBS if j.name == scheduler.TRADING_CYCLE)
    past, _ = scheduler.slots(job, now)
    ended = [s for s in past if s.until <= now]
    today = now.astimezone(scheduler.NY).date()
    holiday = "" if market_calendar.is_session(pd.Timestamp(today)) else \
        f"today {today:%a %Y-%m-%d} is not an NYSE session; "
    if not ended:
        return OK, holiday + "no cycle window has ended in the last days"
    expected = ended[-1]
    session = f"{expected.session:%Y-%m-%d}"
    last = _last_live_cycle()
    ran_day = last and last["started_at"].astimezone(scheduler.NY).date()
    if last and ran_day >= expected.session.date():
        why = _CYCLE_END_WHY.get(last["end"], f"it ended {last['end']}")
        detail = f"{holiday}last cycle {ran_day} (session {session}): {last['end'] or 'unfinished'}"
        if last["closed_runs"]:
            detail += (f" ({last['closed_runs']} later run{'s' if last['closed_runs'] > 1 else ''} outside "
                       f"market hours did nothing)")
        if why is None:
            return OK, detail
        return (FAIL if last["end"] == "error" else WARN), f"{detail}: {why}"
    before = f"last cycle {ran_day}" if last else "no trading cycle has run here"
    switch = None if _no_state() else kill_switch.get()
    if switch:
        return WARN, (f"{holiday}{before}, none on session {session}: kill switch ON "
                      f"({kill_switch.describe(switch)}); python live_trading.py resume")
    first = _scheduler_first_run()
    if first is not None and first > expected.due_at:
        return OK, f"{holiday}{before}; the scheduler started {scheduler.ny(first)}, after session {session}'s cycle"
    return WARN, (f"{holiday}{before}, none on session {session} (due {scheduler.ny(expected.due_at)}): "
                  f"python scheduler.py status; ./install_cron.sh")


def missed_summary(decisions) -> str:
    """Each job with missed windows once, the trading cycle first, then the schedule's order:
    ``trading_cycle 5 sessions (last 2026-12-04), health_check 5, data_update 4``."""
    counts = {d.job.name: (len(d.missed), max(s.session for s in d.missed)) for d in decisions if d.missed}
    order = sorted(counts, key=lambda name: (name != scheduler.TRADING_CYCLE, [j.name for j in scheduler.JOBS].index(name)))
    parts = []
    for i, name in enumerate(order):
        n, last = counts[name]
        parts.append(f"{name} {n} session{'s' if n != 1 else ''} (last {last:%Y-%m-%d})" if i == 0 else f"{name} {n}")
    return ", ".join(parts)


def check_schedule(now: datetime | None = None):
    """The cron block is installed and the scheduler ran every job window that has passed."""
    now = now or clock.now()
    if not cron_install.installed():
        return WARN, "schedule not installed: nothing runs by itself; ./install_cron.sh"
    first = _scheduler_first_run()
    if first is None:
        return WARN, (f"schedule installed, but the scheduler has never run (cron every "
                      f"{C.SCHEDULE_INTERVAL_MIN} min): check cron is running, then tail "
                      f"\"${{TRADING_HOME:-.}}\"/logs/cron_trading.log")
    conn = scheduler.readonly_conn()
    decisions, latest = scheduler.evaluate(now, conn, first), None
    try:
        latest = conn.execute("SELECT job, period, status, started_at FROM schedule_runs ORDER BY "
                              "started_at DESC LIMIT 1").fetchone() if conn is not None else None
    except sqlite3.Error:                 # no job has run yet: no table
        pass
    finally:
        if conn is not None:
            conn.close()
    missed = missed_summary(decisions)
    last = (f"last job {latest['job']} {latest['period']} {latest['status']} at "
            f"{scheduler.ny(datetime.fromisoformat(latest['started_at']))}"
            if latest and latest["started_at"] else "no job run yet")
    if missed:
        return WARN, (f"schedule installed but not running: missed {missed}; {last}: "
                      f"check cron, then python scheduler.py status")
    return OK, f"schedule installed, running since {scheduler.ny(first)}; {last}"


def check_alerts():
    st = alerts.channel_status()
    if not st["channels"]:
        return WARN, f"no alert channel ({st['source']}): python alerts.py add URL, then python alerts.py test"
    last = st["last_test"]
    detail = f"{st['channels']} alert channel(s) ({st['source']})"
    if not last:
        return WARN, f"{detail}, never tested: python alerts.py test"
    if not last.get("ok"):
        return WARN, (f"{detail}; last test FAILED at {last['at']} ({last['failed']}/{last['channels']} "
                      f"failed): python alerts.py list, then python alerts.py test")
    return OK, f"{detail}; last test OK at {last['at']}"


CHECKS = [("python", check_python), ("mode", check_mode), ("home", check_home), ("storage", check_storage),
          ("kill switch", check_kill_switch),
          ("universe", check_universe), ("data", check_data), ("model", check_model),
          ("audit", check_audit), ("credentials", check_credentials), ("token", check_token),
          ("breaker", check_breaker), ("risk", check_risk), ("gate", check_gate),
          ("shadow", check_shadow),
          ("drift", check_drift_alerts), ("errors", check_errors_today), ("disk", check_disk),
          ("last cycle", check_last_cycle), ("clock", check_clock), ("schedule", check_schedule), ("alerts", check_alerts)]
RESULTS = {0: "healthy", 1: "warnings", 2: "FAILURES"}


def results() -> list[dict]:
    """Every check: [{"name", "level", "detail"}]; a check that raises is a FAIL naming the error.
    A TRADING_HOME that does not exist (a typo) gets only the checks up to ``home``: the others
    would be about nothing, and none may create it."""
    out = []
    names = [name for name, _ in CHECKS]
    checks = CHECKS if config.home().is_dir() else CHECKS[:names.index("home") + 1]
    for name, check in checks:
        try:
            level, detail = check()
        except Exception as exc:
            level, detail = FAIL, f"{type(exc).__name__}: {exc}"
        out.append({"name": name, "level": level, "detail": detail})
    return out


def _alert_failures(checks: list[dict]) -> None:
    """The ``health_check_failed`` alert, only when a channel is configured (so that a home
    without one gets no state database from a health check)."""
    failed = [f"{c['name']}: {c['detail']}" for c in checks if c["level"] == FAIL]
    try:
        configured = bool(alerts.configured_urls()[0])
    except Exception:
        configured = False
    if failed and configured:
        alerts.send_alert("health_check_failed", "; ".join(failed)[:1500],
                          key=alerts.session_key("health_check"))


def run(as_json: bool = False) -> int:
    try:
        config.trading_mode()
        config.data_source()
        tunables.apply()                       # constants.py, settings.toml, TRADING_SET_*: checked
    except config.ConfigError as exc:          # nothing else is meaningful with a bad setting
        checks = [{"name": "settings" if isinstance(exc, tunables.SettingsError) else "mode", "level": FAIL,
                   "detail": str(exc)}]
    else:
        checks = results()
    worst = max({OK: 0, WARN: 1, FAIL: 2}[c["level"]] for c in checks)
    if as_json:
        print(json.dumps({"result": RESULTS[worst], "exit_code": worst, "home": str(config.home()),
                          "checked_at": state_db.utcnow(), "checks": checks}, indent=2))
    else:
        for c in checks:
            print(f"{c['level']:4}  {c['name']}: {c['detail']}")
        print(RESULTS[worst])
    if config.home_problem():                 # not a home: write nothing there (no alert record, no page)
        return worst
    if len(checks) > 1:
        _alert_failures(checks)
    if len(checks) > 1:                        # reports/status.html shows these lines; a view, never fatal
        try:
            status_page.build_status_page(health=[(c["level"], c["name"], c["detail"]) for c in checks])
        except Exception as exc:
            print(f"warning: status page not rebuilt: {type(exc).__name__}: {exc}", file=sys.stderr)
    return worst


def main(argv=None) -> int:
    install_excepthook()
    parser = argparse.ArgumentParser(
        prog="run_health_check.sh", description="Every check a person would run from the runbook, "
        "one line each (OK / WARN / FAIL, with the fix). Changes nothing.",
        epilog="Exit code: 0 healthy, 1 warnings, 2 failures.")
    parser.add_argument("--json", action="store_true", help="print the checks as one JSON object")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.CRITICAL)   # one line per check; details are in the logs
    return run(as_json=args.json)


if __name__ == "__main__":
    sys.exit(main())
