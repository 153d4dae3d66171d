"""Alerts through apprise, against real servers on 127.0.0.1: an SMTP server (aiosmtpd), an HTTP
server receiving the webhook JSON, and a channel that is down."""
import logging
import sqlite3

import pytest

import alerts
import config
from conftest import run_command, run_entry
from alert_servers import SMTPServer, WebhookServer, free_port


def _logs(home) -> str:
    return "".join(p.read_text() for p in (home / "logs").glob("*.log"))


def test_alerts_test_reaches_smtp_and_webhook(trading_home):
    with SMTPServer() as smtp, WebhookServer() as hook:
        urls = f"{smtp.url} {hook.url}"
        done = run_entry(["alerts.py", "test"], trading_home, {"TRADING_ALERT_URLS": urls})
        assert done.returncode == 0, done.stdout + done.stderr
        assert "OK: 2/2 channel(s) reached" in done.stdout
        assert len(smtp.messages) == 1 and len(hook.received) == 1
        subject, body, rcpt = smtp.messages[0]
        assert "Test alert" in subject and "NEXT DAY" in subject
        assert "Severity: next day" in body and "First command: python alerts.py list" in body
        assert rcpt == ["ops@example.com"]
        payload = hook.received[0]
        assert "Test alert" in payload["title"]
        assert "What happened: Test alert" in payload["message"]
    # the result and its time are recorded for the health check
    listed = run_entry(["alerts.py", "list"], trading_home, {"TRADING_ALERT_URLS": urls})
    assert "last test: OK at " in listed.stdout, listed.stdout


def test_channel_down_is_logged_never_raises_and_test_exits_1(trading_home):
    dead = f"json://ops:hunter2secret@127.0.0.1:{free_port()}/hook"
    with WebhookServer() as hook:
        env = {"TRADING_ALERT_URLS": f"{hook.url} {dead}"}
        done = run_entry(["alerts.py", "test"], trading_home, env)
        assert done.returncode == 1, done.stdout + done.stderr
        assert "FAILED: 1/2 channel(s) reached" in done.stdout
        assert "Traceback" not in done.stderr
        assert len(hook.received) == 1                 # the working channel still got it
        listed = run_entry(["alerts.py", "list"], trading_home, env)
        assert "last test: FAILED" in listed.stdout
    text = _logs(trading_home)
    assert "WARNING [alerts] Alert channel json://***:***@127.0.0.1" in text
    assert "hunter2secret" not in text and "hunter2secret" not in listed.stdout


def test_send_alert_body_severity_command_and_quiet_period(trading_home, monkeypatch, caplog):
    with WebhookServer() as hook:
        monkeypatch.setenv("TRADING_ALERT_URLS", hook.url)
        assert alerts.send_alert("max_drawdown", "equity 15.2 % below its peak", key="2026-11-27")
        assert alerts.send_alert("max_drawdown", "equity 15.9 % below its peak", key="2026-11-27")
        assert len(hook.received) == 1                 # the repeat is suppressed
        assert alerts.send_alert("max_drawdown", "again, next session", key="2026-11-30")
        assert alerts.send_alert("cycle_failed", "exit 1", command="tail -5 logs/errors.log")
        assert len(hook.received) == 3
    first = hook.received[0]
    assert "Max drawdown reached" in first["title"] and "IMMEDIATE" in first["title"]
    assert "What happened: equity 15.2 % below its peak" in first["message"]
    assert "Severity: immediate" in first["message"]
    assert "First command: python risk_management.py status" in first["message"]
    assert "First command: tail -5 logs/errors.log" in hook.received[2]["message"]
    conn = sqlite3.connect(config.path("state/trading_state.db"))
    rows = conn.execute("SELECT kind, key, delivered, suppressed FROM alerts_sent ORDER BY id").fetchall()
    assert rows == [("max_drawdown", "2026-11-27", 1, 0), ("max_drawdown", "2026-11-27", 0, 1),
                    ("max_drawdown", "2026-11-30", 1, 0), ("cycle_failed", "", 1, 0)]


def test_send_alert_never_raises(trading_home, monkeypatch, caplog):
    monkeypatch.setenv("TRADING_ALERT_URLS", f"json://127.0.0.1:{free_port()}/x")
    caplog.set_level(logging.WARNING)
    assert alerts.send_alert("cycle_failed", "boom") is False          # channel down
    assert alerts.send_alert("no_such_kind", "boom") is False           # unknown kind
    monkeypatch.delenv("TRADING_ALERT_URLS")
    assert alerts.send_alert("cycle_failed", "no channel at all") is False
    assert "No alert channel configured" in caplog.text
    assert "unknown alert kind 'no_such_kind'" in caplog.text


def test_every_kind_has_a_runbook_severity_and_a_command():
    required = {"max_drawdown", "circuit_breaker_open", "drift_high", "drift_critical",
                "audit_verification_failed", "kill_switch_set", "manual_reconciliation",
                "token_expiring", "data_update_failed", "data_update_missed", "cycle_failed",
                "cycle_missed", "live_gate_refused", "order_rejections", "health_check_failed"}
    assert required <= set(alerts.ALERT_KINDS)
    for kind, spec in alerts.ALERT_KINDS.items():
        assert spec.severity in alerts.SEVERITIES, kind
        assert spec.command.split()[0] in {"python", "./run_health_check.sh", "grep", "tail", "timedatectl"}, kind


def test_stored_channels_encrypted_listed_masked_removed(trading_home):
    with WebhookServer() as hook:
        url = f"json://bot:s3cretpassword@127.0.0.1:{hook.port}/hook"
        added = run_entry(["alerts.py", "add", url], trading_home)
        assert added.returncode == 0, added.stderr
        stored = trading_home / ".alerts_config.enc"
        assert stored.exists() and (stored.stat().st_mode & 0o077) == 0
        assert b"s3cretpassword" not in stored.read_bytes() and b"127.0.0.1" not in stored.read_bytes()
        listed = run_entry(["alerts.py", "list"], trading_home)
        assert "1. json://***:***@127.0.0.1" in listed.stdout
        assert "s3cretpassword" not in listed.stdout + added.stdout
        tested = run_entry(["alerts.py", "test"], trading_home)
        assert tested.returncode == 0 and len(hook.received) == 1
        # TRADING_ALERT_URLS is used instead of the stored channel
        other = run_entry(["alerts.py", "test"], trading_home,
                          {"TRADING_ALERT_URLS": f"json://127.0.0.1:{free_port()}/x"})
        assert other.returncode == 1 and len(hook.received) == 1
    bad = run_entry(["alerts.py", "add", "nonsense://x"], trading_home)
    assert bad.returncode == 1 and "is not an apprise URL" in bad.stderr
    removed = run_entry(["alerts.py", "remove", "1"], trading_home)
    assert removed.returncode == 0 and "s3cretpassword" not in removed.stdout
    listed = run_entry(["alerts.py", "list"], trading_home)
    assert "no alert channel configured" in listed.stdout
    assert "s3cretpassword" not in _logs(trading_home)


def test_send_alert_sh_as_the_runbook_uses_it(trading_home):
    with SMTPServer() as smtp:
        done = run_command(["./send_alert.sh", "CRITICAL: Check trading system immediately"],
                           env_extra={"TRADING_ALERT_URLS": smtp.url}, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
        subject, body, _ = smtp.messages[0]
        assert "What happened: CRITICAL: Check trading system immediately" in body
        assert "Severity: same day" in body and "First command: " in body
    down = run_command(["./send_alert.sh", "--severity", "immediate", "x"],
                       env_extra={"TRADING_ALERT_URLS": f"json://127.0.0.1:{free_port()}/x"}, timeout=120)
    assert down.returncode == 1 and "Traceback" not in down.stderr
    # issue 23: no channel at all is said as such, not as "NOT delivered to every channel"
    none = run_command(["./send_alert.sh", "x"], env_extra={"TRADING_ALERT_URLS": None}, timeout=120)
    assert none.returncode == 1 and "no alert channel configured" in none.stderr, none.stdout + none.stderr
    assert "every channel" not in none.stdout + none.stderr and "python alerts.py add" in none.stderr


def test_help_does_nothing(trading_home):
    done = run_entry(["alerts.py", "--help"], trading_home)
    assert done.returncode == 0 and "add" in done.stdout and "TRADING_ALERT_URLS" in done.stdout
    assert not (trading_home / "logs").exists() and not (trading_home / "state").exists()
