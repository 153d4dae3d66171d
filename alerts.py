"""Alerts through apprise: one library for e-mail, Slack, Discord, Telegram, ntfy, JSON webhooks.

Channels are apprise URLs (``mailto://...``, ``json://host/path``, ``ntfys://topic``, ...), stored
encrypted by the credential manager under the service ``alerts``, or given space-separated in
``$TRADING_ALERT_URLS`` (containers, tests), which is then used instead of the stored ones.

Every alert has a kind from ``ALERT_KINDS``: what happened, its severity from the runbook's
escalation table (immediate / same day / next day) and the first command to run; the body says
all three. The same alert (kind + key) is not sent again within ``ALERT_QUIET_PERIOD_MIN``.
A channel that fails is logged at WARNING (its URL masked) and never raises: an alert can never
break a trading cycle.

Library use (what other modules call)::

    import alerts
    alerts.send_alert("max_drawdown", "equity 14.9 % below peak", key="2026-11-27")

Command line::

    python alerts.py add URL        # store a channel (encrypted)
    python alerts.py list           # channels, secrets masked, and the last test
    python alerts.py remove URL     # URL as added, or its number from `list`
    python alerts.py test           # a test alert through every channel; exit 1 if any failed
    python alerts.py send MESSAGE [--severity S] [--kind K]   # what ./send_alert.sh runs
"""
from __future__ import annotations

import argparse
import hashlib
import logging
import os
import socket
import sqlite3
import sys
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import apprise

import clock
import config
import constants as C
import logging_setup
import state_db
from credential_manager import CredentialError, CredentialManager
from errors import UserFacingError, install_excepthook

log = logging.getLogger("alerts")

IMMEDIATE, SAME_DAY, NEXT_DAY = "immediate", "same day", "next day"
SEVERITIES = {                  # the runbook's escalation table
    IMMEDIATE: "act now: money loss, security breach, system compromise",
    SAME_DAY: "act today: critical drift, repeated failures, data corruption",
    NEXT_DAY: "act by tomorrow: medium drift, performance issues, minor bugs",
}
_NOTIFY_TYPE = {IMMEDIATE: apprise.NotifyType.FAILURE, SAME_DAY: apprise.NotifyType.WARNING,
                NEXT_DAY: apprise.NotifyType.INFO}


@dataclass(frozen=True)
class AlertKind:
    title: str        # what happened, in a few words
    severity: str     # one of SEVERITIES
    command: str      # the first command to run (from the project directory)


ALERT_KINDS: dict[str, AlertKind] = {
    "max_drawdown": AlertKind("Max drawdown reached: no new positions", IMMEDIATE,
                              "python risk_management.py status"),
    "circuit_breaker_open": AlertKind("Circuit breaker opened: broker calls stopped", SAME_DAY,
                                      "grep \"Circuit breaker\" logs/*.log | tail"),
    "drift_high": AlertKind("Model drift HIGH: retrain within 24 hours", SAME_DAY,
                            "python train_model.py"),
    "drift_critical": AlertKind("Model drift CRITICAL: trading stops", SAME_DAY,
                                "python live_trading.py status"),
    "audit_verification_failed": AlertKind("Audit trail verification failed", IMMEDIATE,
                                           "python audit_logging.py verify"),
    "kill_switch_set": AlertKind("Kill switch set: every run stops trading", SAME_DAY,
                                 "python live_trading.py status"),
    "manual_reconciliation": AlertKind("Trading halted for manual reconciliation", IMMEDIATE,
                                       "python trading_execution.py orders"),
    "order_not_recorded": AlertKind("Order SENT and accepted, not yet recorded: do NOT re-enter it",
                                    IMMEDIATE, "python trading_execution.py orders"),
    "order_unknown_at_broker": AlertKind("An order of ours is unknown to the broker: resolve it", SAME_DAY,
                                         "python trading_execution.py orders"),
    "stop_filled": AlertKind("A protective stop of ours filled at the broker: the position is closed", SAME_DAY,
                             "python live_trading.py status"),
    "collar_unfilled": AlertKind("A collared order did not fill inside its collar: cancelled", SAME_DAY,
                                 "python live_trading.py status"),
    "token_expiring": AlertKind("Schwab login token expires within a day", SAME_DAY,
                                "python trading_api.py token-age"),
    "data_update_failed": AlertKind("Daily data update failed", SAME_DAY,
                                    "python scheduler.py status"),
    "data_update_missed": AlertKind("Daily data update did not run", SAME_DAY,
                                    "python scheduler.py status"),
    "reconcile_break": AlertKind("Reconciliation break: new entries blocked", SAME_DAY,
                                 "python live_trading.py status"),
    "cycle_failed": AlertKind("Trading cycle failed", SAME_DAY,
                              "tail -30 logs/errors.log"),
    "cycle_gave_up": AlertKind("Trading cycle failed and the scheduler stopped rerunning it", SAME_DAY,
                               "python scheduler.py status"),
    "cycle_missed": AlertKind("Trading cycle did not run", SAME_DAY,
                              "python scheduler.py status"),
    "live_gate_refused": AlertKind("Live trading refused by the go-live gate", SAME_DAY,
                                   "python live_trading.py gate"),
    "clock_wrong": AlertKind("Machine clock wrong: the cycle stopped before any order", SAME_DAY,
                             "timedatectl status"),
    "order_rejections": AlertKind("Order rejections over the threshold", SAME_DAY,
                                  "grep -i \"reject\" logs/trading_$(date +%Y%m%d).log"),
    "health_check_failed": AlertKind("Health check reported problems", SAME_DAY,
                                     "./run_health_check.sh"),
    "scheduled_job_failed": AlertKind("A scheduled job failed or did not run", NEXT_DAY,
                                      "python scheduler.py status"),
    "model_promoted": AlertKind("Shadow model promoted: a new live model, its go-live evidence starts", SAME_DAY,
                                "python live_trading.py status"),
    "shadow_rejected": AlertKind("Shadow model rejected: the live model stays", NEXT_DAY,
                                 "python live_trading.py status"),
    "manual": AlertKind("Message from the trading system", SAME_DAY,
                        "./run_health_check.sh"),
    "test": AlertKind("Test alert", NEXT_DAY, "python alerts.py list"),
}

_SCHEMA = ["""
CREATE TABLE IF NOT EXISTS alerts_sent (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    sent_at TEXT NOT NULL,            -- UTC ISO time
    kind TEXT NOT NULL,
    key TEXT NOT NULL,
    severity TEXT NOT NULL,
    delivered INTEGER NOT NULL,       -- channels that accepted it
    failed INTEGER NOT NULL,          -- channels that did not
    suppressed INTEGER NOT NULL DEFAULT 0,   -- 1: a repeat within the quiet period, not sent
    message TEXT NOT NULL
)""", "CREATE INDEX IF NOT EXISTS alerts_sent_kind_key ON alerts_sent(kind, key, sent_at)"]
LAST_TEST_KEY = "alerts_last_test"       # kv: {"at", "ok", "channels", "failed"}


class AlertConfigError(UserFacingError):
    """An alert channel or alert kind that cannot be used; the message names the fix."""


# --------------------------------------------------------------------------- channels
def _channel(url: str):
    """apprise's plugin object for ``url``, or None when apprise does not understand it."""
    try:
        return apprise.Apprise.instantiate(url)
    except Exception:       # apprise raises assorted errors on odd URLs: treat as invalid
        return None


def mask(url: str) -> str:
    """The URL with its secrets hidden, for lists and logs (``logging_setup.redact_url``: the one
    rule; scheme and host name kept, credentials, path and query values ``***``)."""
    return logging_setup.redact_url(url)


def _register_secrets(url: str) -> None:
    """Keep every secret-looking part of a channel URL out of the logs (apprise logs too),
    whatever its length (``logging_setup.register_url_secrets``)."""
    logging_setup.register_url_secrets(url)


def stored_urls(manager: CredentialManager | None = None) -> list[str]:
    data = (manager or CredentialManager()).load_credentials(C.ALERT_CREDENTIAL_SERVICE) or {}
    return [str(u) for u in data.get("urls", [])]


def parse_chat_ids(value) -> list[int]:
    """The chat ids of the ``telegram`` credentials (``"111 -222"``, ``"111,222"`` or a list) as
    ints; a value that is not a chat id raises ``AlertConfigError`` naming the fix."""
    items = value if isinstance(value, list) else str(value or "").replace(",", " ").split()
    try:
        return [int(str(item).strip()) for item in items]
    except ValueError:
        raise AlertConfigError("the telegram credentials' chat_ids must be numbers (e.g. "
                               "\"123456789 -100987654\"): run python telegram_control.py setup") from None


def telegram_credentials(manager: CredentialManager | None = None) -> tuple[str, list[int]] | None:
    """(bot token, chat ids) of the credential service ``telegram`` (``python telegram_control.py
    setup``), shared by the control bot and the alerts' Telegram channel; None when not set up.
    The token is registered as a secret: it never reaches a log line."""
    data = (manager or CredentialManager()).load_credentials(C.TELEGRAM_CREDENTIAL_SERVICE)
    if not data or not data.get("bot_token"):
        return None
    token = str(data["bot_token"]).strip()
    logging_setup.register_secret(token)
    return token, parse_chat_ids(data.get("chat_ids"))


def telegram_url(manager: CredentialManager | None = None) -> str | None:
    """The alerts' Telegram channel (``tgram://TOKEN/CHAT/...``) built from the control bot's
    credentials, or None when they are not set up (or list no chat)."""
    creds = telegram_credentials(manager)
    if creds is None or not creds[1]:
        return None
    token, chats = creds
    return f"tgram://{token}/" + "/".join(str(c) for c in chats)


def configured_urls() -> tuple[list[str], str]:
    """(urls, source): ``$TRADING_ALERT_URLS`` when set, else the stored channels and the
    Telegram channel of the ``telegram`` credentials (when set up)."""
    env = os.environ.get(C.ENV_ALERT_URLS, "").split()
    if env:
        urls, source = env, f"${C.ENV_ALERT_URLS}"
    else:
        manager = CredentialManager()
        urls, source = stored_urls(manager), "stored (python alerts.py add URL)"
        try:
            tgram = telegram_url(manager)
        except (AlertConfigError, CredentialError) as exc:     # the other channels still work
            log.warning("Telegram alert channel not used: %s", exc)
            tgram = None
        if tgram and tgram not in urls:
            urls.append(tgram)
            source += " + telegram (python telegram_control.py setup)"
    for url in urls:
        _register_secrets(url)
    return urls, source


def add_channel(url: str) -> int:
    """Store ``url`` (validated by apprise) with the others; returns how many are stored."""
    url = url.strip()
    if _channel(url) is None:
        raise AlertConfigError(f"{mask(url)} is not an apprise URL apprise can use; see "
                               f"https://github.com/caronc/apprise/wiki for the forms "
                               f"(e.g. mailto://user:pass@smtp.example.com, json://host/path)")
    _register_secrets(url)
    manager = CredentialManager()
    urls = stored_urls(manager)
    if url not in urls:
        urls.append(url)
        manager.store_credentials(C.ALERT_CREDENTIAL_SERVICE, {"urls": urls})
        log.info("Alert channel added: %s", mask(url))
    return len(urls)


def remove_channel(which: str) -> str:
    """Remove a stored channel given as its URL or its number in ``list``; returns it masked."""
    manager = CredentialManager()
    urls = stored_urls(manager)
    if which in urls:
        url = which
    elif which.isdigit() and 1 <= int(which) <= len(urls):
        url = urls[int(which) - 1]
    else:
        raise AlertConfigError(f"no stored alert channel {mask(which) if '://' in which else which!r}; "
                               f"see the numbers in: python alerts.py list")
    urls.remove(url)
    if urls:
        manager.store_credentials(C.ALERT_CREDENTIAL_SERVICE, {"urls": urls})
    else:
        manager.delete_credentials(C.ALERT_CREDENTIAL_SERVICE)
    log.info("Alert channel removed: %s", mask(url))
    return mask(url)


# --------------------------------------------------------------------------- sending
def format_alert(kind: str, message: str, severity: str | None = None,
                 command: str | None = None) -> tuple[str, str, str]:
    """(title, body, severity) of an alert: what happened, its severity, the first command."""
    spec = ALERT_KINDS.get(kind)
    if spec is None:
        raise AlertConfigError(f"unknown alert kind {kind!r}: use one of {', '.join(ALERT_KINDS)}")
    severity = severity or spec.severity
    if severity not in SEVERITIES:
        raise AlertConfigError(f"unknown severity {severity!r}: use one of {', '.join(SEVERITIES)}")
    now = datetime.now(timezone.utc)
    title = f"[trading {severity.upper()}] {spec.title}"
    body = "\n".join([
        f"What happened: {message.strip() or spec.title}",
        f"Severity: {severity} ({SEVERITIES[severity]})",
        f"First command: {command or spec.command}   (from {config.PROJECT_DIR})",
        f"Alert: {kind}; host {socket.gethostname()}; TRADING_HOME {config.home()}; mode "
        f"{os.environ.get(C.ENV_TRADING_MODE, '').strip() or C.DEFAULT_TRADING_MODE}",
        f"Time: {now.astimezone(ZoneInfo('America/New_York')):%Y-%m-%d %H:%M %Z} "
        f"({now:%H:%M} UTC)",
    ])
    return title, body, severity


def _notify_each(urls: list[str], title: str, body: str, severity: str) -> tuple[int, int]:
    """Send to every channel separately; (delivered, failed). Never raises."""
    delivered = failed = 0
    for url in urls:
        try:
            sender = apprise.Apprise()
            ok = sender.add(url) and bool(sender.notify(title=title, body=body,
                                                        notify_type=_NOTIFY_TYPE[severity]))
        except Exception as exc:          # a plugin bug must not break the caller
            log.warning("Alert channel %s raised %s", mask(url), type(exc).__name__)
            ok = False
        if ok:
            delivered += 1
        else:
            failed += 1
            log.warning("Alert channel %s did not accept the alert %r (check the URL, the "
                        "server, then: python alerts.py test)", mask(url), title)
    return delivered, failed


def _db():
    conn = state_db.connect()
    state_db.ensure_schema(conn, _SCHEMA)
    return conn


def _recently_sent(conn, kind: str, key: str, quiet_min: float) -> bool:
    since = (datetime.now(timezone.utc) - timedelta(minutes=quiet_min)).isoformat(timespec="seconds")
    row = conn.execute("SELECT 1 FROM alerts_sent WHERE kind = ? AND key = ? AND sent_at >= ? "
                       "AND delivered > 0 AND suppressed = 0 LIMIT 1", (kind, key, since)).fetchone()
    return row is not None


def send_alert(kind: str, message: str, severity: str | None = None, command: str | None = None,
               key: str = "", quiet_minutes: float | None = None, replay: bool = False) -> bool:
    """Send one alert through every configured channel. Never raises.

    ``kind`` is a key of ``ALERT_KINDS`` (it gives the title, the severity and the first command;
    ``severity``/``command`` override them). ``key`` tells alerts of one kind apart for the quiet
    period (a session date, a symbol): the same kind + key is not sent again within
    ``quiet_minutes`` (default ``ALERT_QUIET_PERIOD_MIN``). Returns True when every channel
    accepted it or it was a suppressed repeat, False when a channel failed or none is configured.
    ``replay``: the alert comes from an ``--as-of`` replay (a drill in a throwaway account): it
    is logged, not sent (callers holding the replay's connection pass ``state_db.is_replay(conn)``).
    """
    try:
        title, body, severity = format_alert(kind, message, severity, command)
    except AlertConfigError as exc:
        log.warning("Alert not sent: %s", exc)
        return False
    if replay:                     # an --as-of replay is a drill in a throwaway account
        log.info("Replay: alert %s not sent (%s)", kind, message)
        return True
    quiet = C.ALERT_QUIET_PERIOD_MIN if quiet_minutes is None else quiet_minutes
    log.warning("ALERT %s [%s]: %s", kind, severity, message)
    try:
        conn = _db()
    except (sqlite3.Error, OSError) as exc:
        log.warning("Alert history unavailable (%s); sending without the quiet period", exc)
        conn = None
    try:
        if conn is not None and quiet > 0 and _recently_sent(conn, kind, key, quiet):
            log.info("Alert %s (%s) already sent within %s min; not repeated", kind, key or "-", quiet)
            _record(conn, kind, key, severity, 0, 0, message, suppressed=True)
            return True
        try:
            urls, _ = configured_urls()
        except (CredentialError, OSError) as exc:
            log.warning("Alert channels cannot be read: %s", exc)
            urls = []
        if not urls:
            log.warning("No alert channel configured: the alert above reached only this log. "
                        "Add one: python alerts.py add URL (or set %s)", C.ENV_ALERT_URLS)
            delivered, failed = 0, 0
        else:
            delivered, failed = _notify_each(urls, title, body, severity)
        if conn is not None:
            _record(conn, kind, key, severity, delivered, failed, message)
        return bool(urls) and failed == 0
    except Exception as exc:              # never break the caller (a cycle, the scheduler)
        log.warning("Alert %s not sent: %s", kind, type(exc).__name__)
        return False
    finally:
        if conn is not None:
            conn.close()


def session_key(job: str, now: datetime | None = None) -> str:
    """The quiet-period key of a scheduled job's alert for today's New York session,
    ``job:YYYY-MM-DD``, the key the scheduler uses for the same job's failure: one alert, not two."""
    now = now or clock.now()
    return f"{job}:{now.astimezone(ZoneInfo('America/New_York')):%Y-%m-%d}"


def _record(conn, kind, key, severity, delivered, failed, message, suppressed=False) -> None:
    try:
        with state_db.transaction(conn):
            conn.execute("INSERT INTO alerts_sent(sent_at, kind, key, severity, delivered, failed, "
                         "suppressed, message) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                         (state_db.utcnow(), kind, key, severity, delivered, failed,
                          int(suppressed), logging_setup.redact(message)[:2000]))
    except sqlite3.Error as exc:
        log.warning("Alert history not recorded: %s", exc)


def test_channels() -> dict:
    """A test alert through every configured channel, the result kept in SQLite (kv
    ``alerts_last_test``). Returns {"at", "ok", "channels", "failed", "source"}."""
    urls, source = configured_urls()
    title, body, severity = format_alert("test", "Test alert from `python alerts.py test`: "
                                                 "this channel works.")
    delivered, failed = _notify_each(urls, title, body, severity) if urls else (0, 0)
    result = {"at": state_db.utcnow(), "ok": bool(urls) and failed == 0, "channels": len(urls),
              "failed": failed, "source": source}
    conn = _db()
    try:
        with state_db.transaction(conn):
            state_db.kv_set(conn, LAST_TEST_KEY, result)
    finally:
        conn.close()
    _record_quietly("test", "", severity, delivered, failed, "alerts.py test")
    return result


def _record_quietly(*args) -> None:
    conn = _db()
    try:
        _record(conn, *args)
    finally:
        conn.close()


def channel_status() -> dict:
    """For the health check: {"channels": n, "source": ..., "last_test": {...} or None}."""
    try:
        urls, source = configured_urls()
    except CredentialError as exc:
        return {"channels": 0, "source": f"unreadable: {exc}", "last_test": None}
    path = config.state_db_file()          # read only: a health check creates nothing
    last = None
    if path.exists():
        conn = state_db.connect(path)
        try:
            last = state_db.kv_get(conn, LAST_TEST_KEY)
        finally:
            conn.close()
    return {"channels": len(urls), "source": source, "last_test": last}


# --------------------------------------------------------------------------- command line
def main(argv=None) -> int:
    install_excepthook()
    parser = argparse.ArgumentParser(
        prog="alerts.py", description="Alert channels (apprise URLs, stored encrypted) and alerts.",
        epilog=f"${C.ENV_ALERT_URLS} (space-separated URLs) is used instead of the stored channels.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("add", help="store an apprise URL (encrypted)").add_argument("url")
    sub.add_parser("list", help="channels with secrets masked, and the last test")
    sub.add_parser("remove", help="remove a stored URL (the URL or its number in list)") \
        .add_argument("url")
    sub.add_parser("test", help="send a test alert through every channel; exit 1 if one failed")
    p_send = sub.add_parser("send", help="send a message (what ./send_alert.sh runs)")
    p_send.add_argument("message", nargs="+")
    p_send.add_argument("--severity", choices=list(SEVERITIES), default=None)
    p_send.add_argument("--kind", choices=list(ALERT_KINDS), default="manual")
    sub.add_parser("kinds", help="every alert kind with its severity and first command")
    args = parser.parse_args(argv)
    logging_setup.setup_logging("trading", console=False)
    try:
        if args.command == "add":
            n = add_channel(args.url)
            print(f"Stored {mask(args.url)} ({n} channel(s)); try it: python alerts.py test")
            if os.environ.get(C.ENV_ALERT_URLS, "").strip():
                print(f"Note: ${C.ENV_ALERT_URLS} is set, so it is used instead of stored channels.")
            return 0
        if args.command == "remove":
            print(f"Removed {remove_channel(args.url)}")
            return 0
        if args.command == "list":
            status = channel_status()
            urls, source = configured_urls()
            print(f"source: {source}")
            if not urls:
                print("no alert channel configured: python alerts.py add URL")
            for number, url in enumerate(urls, 1):
                print(f"{number}. {mask(url)}")
            last = status["last_test"]
            print("last test: never (python alerts.py test)" if not last else
                  f"last test: {'OK' if last['ok'] else 'FAILED'} at {last['at']} "
                  f"({last['channels'] - last['failed']}/{last['channels']} channel(s) reached)")
            return 0
        if args.command == "test":
            result = test_channels()
            if not result["channels"]:
                print("FAILED: no alert channel configured: python alerts.py add URL")
                return 1
            reached = result["channels"] - result["failed"]
            print(f"{'OK' if result['ok'] else 'FAILED'}: {reached}/{result['channels']} "
                  f"channel(s) reached ({result['source']})"
                  + ("" if result["ok"] else "; see logs/trading_YYYYMMDD.log for which"))
            return 0 if result["ok"] else 1
        if args.command == "send":
            message = " ".join(args.message)
            key = hashlib.sha256(message.encode()).hexdigest()[:16]
            if not configured_urls()[0]:
                print("Alert NOT sent: no alert channel configured: python alerts.py add URL "
                      f"(or set ${C.ENV_ALERT_URLS})", file=sys.stderr)
                log.warning("Alert not sent (no alert channel configured): %s", message)
                return 1
            ok = send_alert(args.kind, message, severity=args.severity, key=key)
            print("Alert sent" if ok else "Alert NOT delivered to every channel (see the log)")
            return 0 if ok else 1
        if args.command == "kinds":
            for kind, spec in ALERT_KINDS.items():
                print(f"{kind:<26} {spec.severity:<9} {spec.title}  ->  {spec.command}")
            return 0
    except (AlertConfigError, CredentialError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        log.warning("%s", exc)
        return 1
    return 2


if __name__ == "__main__":
    sys.exit(main())
