"""Every check a person would run from the runbook, one line each (``./run_health_check.sh``).

Exit code: 0 healthy, 1 warnings, 2 failures. Each line is ``OK|WARN|FAIL  check: detail``,
with the fix on WARN and FAIL lines. Nothing here trades, downloads or changes state.
"""
from __future__ import annotations

import logging
import os
import shutil
import sys
from datetime import datetime

from audit_logging import AuditLogger
import config
import constants as C
import data_collection
import fileutil
import golive
import kill_switch
import live_trading
import market_calendar
import model_management
import schwab_broker
import status_page
from risk_management import RiskManager
from trading_execution import CircuitBreaker
from errors import mount_point

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
    from credential_manager import CredentialManager
    age = schwab_broker.token_age_of(CredentialManager().load_credentials(schwab_broker.SCHWAB_TOKEN_SERVICE))
    if age.state == schwab_broker.TOKEN_MISSING:
        return FAIL, f"no Schwab token: run {schwab_broker.LOGIN_COMMAND}"
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
        return WARN, (f"Circuit breaker {st['state']} after {st['failures']} failures (last: {st['last_error']}); "
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
    st = golive.gate_status(live_trading.get_model().checksum)
    if not st["passed"]:
        return FAIL, ("go-live gate closed (backtest " + ("ok" if st["backtest"] else "missing") +
                      f", paper sessions {st['paper_sessions']}/{st['paper_sessions_needed']}): "
                      "python live_trading.py gate")
    return OK, "go-live gate open"


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
    logs = sorted(config.path(C.LOG_DIR).glob("trading_*.log"))[-7:]
    last = None
    for path in logs:
        for line in path.read_text(errors="replace").splitlines():
            if "DRIFT ALERT" in line:
                last = line
    if last is None:
        return OK, "no DRIFT ALERT in the last 7 trading logs"
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


CHECKS = [("python", check_python), ("mode", check_mode), ("storage", check_storage),
          ("kill switch", check_kill_switch),
          ("universe", check_universe), ("data", check_data), ("model", check_model),
          ("audit", check_audit), ("credentials", check_credentials), ("token", check_token),
          ("breaker", check_breaker), ("risk", check_risk), ("gate", check_gate),
          ("drift", check_drift_alerts), ("errors", check_errors_today), ("disk", check_disk)]


def run() -> int:
    try:
        config.trading_mode()
        config.data_source()
    except config.ConfigError as exc:          # nothing else is meaningful with a bad setting
        print(f"FAIL  mode: {exc}")
        print("FAILURES")
        return 2
    worst, lines = 0, []
    for name, check in CHECKS:
        try:
            level, detail = check()
        except Exception as exc:
            level, detail = FAIL, f"{type(exc).__name__}: {exc}"
        worst = max(worst, {OK: 0, WARN: 1, FAIL: 2}[level])
        print(f"{level:4}  {name}: {detail}")
        lines.append((level, name, detail))
    print({0: "healthy", 1: "warnings", 2: "FAILURES"}[worst])
    try:                                       # reports/status.html shows these lines; a view, never fatal
        status_page.build_status_page(health=lines)
    except Exception as exc:
        print(f"warning: status page not rebuilt: {type(exc).__name__}: {exc}", file=sys.stderr)
    return worst


if __name__ == "__main__":
    logging.basicConfig(level=logging.CRITICAL)   # one line per check; details are in the logs
    sys.exit(run())
