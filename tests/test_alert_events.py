"""Each alert is sent where its event happens: the real event is triggered (a drawdown in a real
cycle, the breaker opening, the kill switch, a failing cycle, a failing data update, a failing
verify) with $TRADING_ALERT_URLS pointing at a webhook server on 127.0.0.1, and the alert that
arrives carries its severity and first command. A channel that is down never breaks a cycle."""
import os
from datetime import datetime
from zoneinfo import ZoneInfo

import pandas as pd

import alerts
import constants as C
from alert_servers import WebhookServer, free_port
from conftest import run_entry


def _one(hook, kind):
    """The single alert of ``kind`` the webhook received (title from ALERT_KINDS)."""
    spec = alerts.ALERT_KINDS[kind]
    got = [p for p in hook.received if spec.title in p["title"]]
    assert len(got) == 1, [p["title"] for p in hook.received]
    payload = got[0]
    assert f"[trading {spec.severity.upper()}]" in payload["title"]
    assert f"Severity: {spec.severity}" in payload["message"]
    assert f"First command: {spec.command}" in payload["message"]
    return payload


def test_max_drawdown_in_a_real_cycle_alerts_and_a_down_channel_does_not_break_it(home, trained, monkeypatch):
    import live_trading
    import market_calendar
    from risk_management import RiskManager

    day = trained["trade_day"]
    df = pd.read_csv(home / C.PROCESSED_DATA_FILE)
    df[df["Date"] <= day].to_csv(home / C.PROCESSED_DATA_FILE, index=False)
    RiskManager().update_equity(10_000_000.0, as_of=pd.Timestamp(day) - pd.Timedelta(days=30))
    now = datetime.combine(market_calendar.next_session(day).date(), datetime.min.time()) \
        .replace(hour=10, tzinfo=ZoneInfo("America/New_York"))
    dead = f"json://127.0.0.1:{free_port()}/hook"
    with WebhookServer() as hook:
        monkeypatch.setenv("TRADING_ALERT_URLS", f"{dead} {hook.url}")
        assert live_trading.run_cycle(now=now) == 0          # the dead channel broke nothing
        payload = _one(hook, "max_drawdown")
    assert "opening trades halted" in payload["message"]
    logs = "".join(p.read_text() for p in (home / "logs").glob("trading_*.log"))
    assert "MAX DRAWDOWN REACHED" in logs and "did not accept the alert" in logs


def test_circuit_breaker_opening_alerts_once(trading_home, monkeypatch):
    from trading_execution import CircuitBreaker
    with WebhookServer() as hook:
        monkeypatch.setenv("TRADING_ALERT_URLS", hook.url)
        breaker = CircuitBreaker(failures=2, recovery_s=0.0)
        breaker.record_failure("HTTP 503")
        assert hook.received == []                       # not open yet
        breaker.record_failure("HTTP 503")
        assert breaker.status()["state"] == "open"
        breaker.allow()                                  # half-open, the trial fails: open again
        breaker.record_failure("HTTP 503")               # within the quiet period: not repeated
        payload = _one(hook, "circuit_breaker_open")
    assert "2 consecutive failures" in payload["message"] and "HTTP 503" in payload["message"]


def test_kill_switch_halt_alerts_and_operator_commands_leave_errors_log_empty(trading_home):
    with WebhookServer() as hook:
        env = {"TRADING_ALERT_URLS": hook.url}
        assert run_entry(["live_trading.py", "init"], trading_home, env).returncode == 0     # a new home, on purpose
        done = run_entry(["live_trading.py", "halt", "--reason", "drill at 6am"], trading_home, env)
        assert done.returncode == 0, done.stderr
        payload = _one(hook, "kill_switch_set")
        assert "drill at 6am" in payload["message"]
        done = run_entry(["live_trading.py", "resume", "--reason", "drill over"], trading_home, env)
        assert done.returncode == 0, done.stderr
        typo = run_entry(["live_trading.py", "hatl", "--reason", "x"], trading_home, env)
        assert typo.returncode != 0 and "invalid choice" in typo.stderr
    errors_log = trading_home / "logs" / "errors.log"
    assert not errors_log.exists() or errors_log.read_text() == ""
    trading_log = "".join(p.read_text() for p in (trading_home / "logs").glob("trading_*.log"))
    assert "Kill switch SET" in trading_log and "Kill switch cleared" in trading_log


def test_failed_cycle_alerts_with_the_scheduler_key(trading_home):
    """No model: the cycle fails; its alert uses the scheduler's key, so a scheduled run's own
    failure alert for the same session is a suppressed repeat, not a second message."""
    assert run_entry(["live_trading.py", "init"], trading_home).returncode == 0       # a home, no model
    with WebhookServer() as hook:
        done = run_entry(["live_trading.py"], trading_home, {"TRADING_ALERT_URLS": hook.url})
        assert done.returncode == 1
        payload = _one(hook, "cycle_failed")
        assert alerts.send_alert("cycle_failed", "from the scheduler",
                                 key=alerts.session_key("trading_cycle")) is True
        assert len(hook.received) == 1
    assert "paper cycle failed" in payload["message"]


def test_failed_data_update_alerts(trading_home):
    (trading_home / "selected_stocks.txt").write_text("NOSUCH1\nNOSUCH2\n")
    with WebhookServer() as hook:
        done = run_entry(["data_collection.py", "--force"], trading_home,
                         {"TRADING_ALERT_URLS": hook.url})
        assert done.returncode == 1
        _one(hook, "data_update_failed")


def test_audit_verify_failure_alerts(trading_home):
    from audit_logging import AuditLogger
    audit = AuditLogger()
    for n in range(3):
        audit.log_event("test", "ok", {"n": n})
    path = trading_home / C.AUDIT_LOG_FILE
    path.write_text(path.read_text().replace('"n": 1', '"n": 7').replace('"n":1', '"n":7'))
    with WebhookServer() as hook:
        done = run_entry(["audit_logging.py", "verify"], trading_home,      # the key this trail was written with
                         {"TRADING_ALERT_URLS": hook.url, "TRADING_CONFIG_DIR": os.environ["TRADING_CONFIG_DIR"]})
        assert done.returncode == 1 and "NOT VALID (tampered)" in done.stdout, done.stdout
        _one(hook, "audit_verification_failed")


def test_replays_send_no_alert(trading_home, monkeypatch):
    import kill_switch
    import state_db
    with WebhookServer() as hook:
        monkeypatch.setenv("TRADING_ALERT_URLS", hook.url)
        assert alerts.send_alert("cycle_failed", "in a replay", replay=True) is True
        # a component given the replay's database knows it is a replay (no process-wide flag)
        conn = state_db.connect(state_db.prepare_replay("2024-03-04"))
        assert state_db.is_replay(conn) and not state_db.is_replay(state_db.connect())
        kill_switch.halt("drill", conn, by="test")
        conn.close()
        assert hook.received == []
