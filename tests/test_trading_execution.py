"""OrderExecutor through schwab-py's real request code (fake Schwab behind an httpx transport):
retries, ambiguous timeouts, rejections, fills and cancels, the circuit breaker across processes,
and the NYSE calendar."""
import os
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import httpx
import pytest

import constants as C
import state_db
from broker_base import TransientBrokerError
from schwab_fake import api, cm, fake  # noqa: F401  (fixtures)
from order_recovery import AmbiguousOrderError
from trading_execution import CircuitBreaker, CircuitOpenError, OrderExecutor, client_key
from audit_recorder import Recorder
from conftest import run_entry

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def executor(api):
    ex = OrderExecutor(broker=api, conn=state_db.connect(), audit=Recorder(), sleep=lambda s: None)
    return ex


def buy(symbol="AAPL", qty=10):
    return {"symbol": symbol, "side": "BUY", "quantity": qty, "order_type": "MARKET", "price": 100.0}


def posts(fake):
    return [r for r in fake.requests if r.method == "POST" and r.url.path.endswith("/orders")]


def test_client_key_is_deterministic():
    assert client_key("2025-10-06", "AAPL", "BUY") == client_key("2025-10-06 00:00:00", "AAPL", "BUY")
    assert client_key("2025-10-06", "AAPL", "BUY") != client_key("2025-10-07", "AAPL", "BUY")


def test_transient_5xx_is_retried_and_sent_once(executor, fake):
    failures = {"left": 2}

    def hook(request):
        if request.method == "POST" and request.url.path.endswith("/orders") and failures["left"]:
            failures["left"] -= 1
            return httpx.Response(503, json={"message": "busy"})
        return None
    fake.hook = hook
    record = executor.submit(buy(), "2025-10-06")
    assert record["status"] == "SUBMITTED" and record["broker_order_id"]
    assert len(fake.orders) == 1 and len(posts(fake)) == 3
    assert executor.breaker.status()["state"] == "closed"


def test_timeout_after_schwab_took_the_order_is_not_resent(executor, fake):
    state = {"first": True}

    def hook(request):
        if request.method == "POST" and request.url.path.endswith("/orders") and state["first"]:
            state["first"] = False
            fake.add_order(quantity=10, remainingQuantity=10)      # Schwab got it ...
            raise httpx.ReadTimeout("read timed out", request=request)  # ... but we never heard
        return None
    fake.hook = hook
    # the lone match could be ours or a person's twin (Schwab carries no client id): a person decides
    with pytest.raises(AmbiguousOrderError, match="could be ours"):
        executor.submit(buy(), "2025-10-06")
    assert len(fake.orders) == 1 and len(posts(fake)) == 1
    record = executor.resolve("2025-10-06:AAPL:BUY", str(next(iter(fake.orders))), "test: ours")
    assert record["broker_order_id"] == str(next(iter(fake.orders)))
    assert executor.submit(buy(), "2025-10-06")["broker_order_id"] == record["broker_order_id"]
    assert len(posts(fake)) == 1


def test_rejection_is_not_retried(executor, fake):
    fake.hook = lambda r: (httpx.Response(400, json={"message": "insufficient funds"})
                           if r.method == "POST" and r.url.path.endswith("/orders") else None)
    record = executor.submit(buy(), "2025-10-06")
    assert record["status"] == "REJECTED" and "insufficient funds" in record["error"]
    assert len(posts(fake)) == 1
    assert executor.breaker.status()["failures"] == 0
    again = executor.submit(buy(), "2025-10-06")               # a rerun does not resend it
    assert again["status"] == "REJECTED" and len(posts(fake)) == 1


def test_rerun_never_submits_twice(executor, fake):
    first = executor.submit(buy(), "2025-10-06")
    second = executor.submit(buy(), "2025-10-06")
    assert first["broker_order_id"] == second["broker_order_id"] and len(fake.orders) == 1


def test_fill_partial_fill_and_cancel_on_timeout(executor, fake):
    record = executor.submit(buy(qty=10), "2025-10-06")
    oid = int(record["broker_order_id"])
    fake.orders[oid].update(status="WORKING", filledQuantity=4, remainingQuantity=6,
                            orderActivityCollection=[{"executionLegs": [{"quantity": 4, "price": 101.5}]}])
    [final] = executor.wait_for_fills([record["client_key"]], timeout_s=0, poll_s=0)
    assert final["status"] == "CANCELED" and final["filled_quantity"] == 4
    assert any(r.method == "DELETE" for r in fake.requests)
    other = executor.submit(buy("MSFT", 5), "2025-10-06")
    fake.orders[int(other["broker_order_id"])].update(status="FILLED", filledQuantity=5, remainingQuantity=0)
    [done] = executor.wait_for_fills([other["client_key"]], timeout_s=5, poll_s=0)
    assert done["status"] == "FILLED" and done["filled_quantity"] == 5
    assert ("order_fill", "filled") in [(a, s) for a, s, _ in executor.audit.events]


def test_breaker_opens_after_five_failures_then_half_open_then_closed(api, fake, caplog):
    now = {"t": 1000.0}
    conn = state_db.connect()
    executor = OrderExecutor(broker=api, conn=conn, audit=Recorder(), sleep=lambda s: None,
                             breaker=CircuitBreaker(conn, clock=lambda: now["t"]))
    fake.hook = lambda r: httpx.Response(500, json={"message": "down"})
    with pytest.raises(TransientBrokerError):
        executor.submit(buy("AAPL"), "2025-10-06")           # 4 attempts: 4 failures
    with pytest.raises((TransientBrokerError, CircuitOpenError)):
        executor.submit(buy("MSFT"), "2025-10-06")           # the 5th failure opens it
    assert executor.breaker.status()["state"] == "open"
    assert "Circuit breaker OPEN" in caplog.text
    sent = len(fake.requests)
    with pytest.raises(CircuitOpenError):
        executor.submit(buy("JPM"), "2025-10-06")
    assert len(fake.requests) == sent                        # nothing sent while open
    now["t"] += C.CIRCUIT_BREAKER_RECOVERY_S + 1
    fake.hook = None
    record = executor.submit(buy("JPM"), "2025-10-06")        # the trial call
    assert record["status"] == "SUBMITTED"
    assert "Circuit breaker half-open" in caplog.text and "Circuit breaker closed" in caplog.text
    assert executor.breaker.status()["state"] == "closed"


def test_failed_trial_reopens(trading_home):
    now = {"t": 0.0}
    br = CircuitBreaker(clock=lambda: now["t"])
    for _ in range(C.CIRCUIT_BREAKER_FAILURES):
        br.record_failure("boom")
    now["t"] = C.CIRCUIT_BREAKER_RECOVERY_S + 1
    assert br.allow() and br.status()["state"] == "half_open"
    assert not br.allow()                                    # one trial at a time
    br.record_failure("still down")
    assert br.status()["state"] == "open" and not br.allow()


def _in_process(code, home):
    done = run_entry(["-c", "import trading_execution as t; " + code], env_extra={"TRADING_HOME": home}, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_breaker_is_shared_across_processes(trading_home):
    br = CircuitBreaker()
    for _ in range(C.CIRCUIT_BREAKER_FAILURES):
        br.record_failure("timeout")
    assert _in_process("print(t.CircuitBreaker().status()['state'])", trading_home) == "open"
    assert _in_process("print(t.CircuitBreaker().allow())", trading_home) == "False"
    time.sleep(0.6)
    assert _in_process("print(t.CircuitBreaker(recovery_s=0.5).allow())", trading_home) == "True"
    # a trial is under way in "another process": nobody else gets through
    assert _in_process("print(t.CircuitBreaker(recovery_s=30).allow())", trading_home) == "False"
    _in_process("t.CircuitBreaker().record_success()", trading_home)
    assert br.status()["state"] == "closed" and br.allow()


# ------------------------------------------------------------------ market calendar
NY = ZoneInfo("America/New_York")


@pytest.mark.parametrize("when, expected", [
    (datetime(2026, 11, 24, 10, 0, tzinfo=NY), True),          # a Tuesday morning
    (datetime(2026, 11, 24, 9, 29, tzinfo=NY), False),         # before the open
    (datetime(2026, 11, 24, 16, 0, tzinfo=NY), False),         # the close
    (datetime(2026, 11, 26, 11, 0, tzinfo=NY), False),         # Thanksgiving
    (datetime(2026, 11, 27, 12, 59, tzinfo=NY), True),         # day after: early close at 13:00
    (datetime(2026, 11, 27, 13, 1, tzinfo=NY), False),
    (datetime(2026, 12, 24, 13, 30, tzinfo=NY), False),        # Christmas Eve early close
    (datetime(2026, 12, 25, 11, 0, tzinfo=NY), False),
    (datetime(2026, 11, 28, 11, 0, tzinfo=NY), False),         # Saturday
    (datetime(2026, 3, 9, 13, 35, tzinfo=timezone.utc), True),  # after the DST change: 9:35 EDT
    (datetime(2026, 3, 6, 13, 35, tzinfo=timezone.utc), False),  # before it: 8:35 EST
    (datetime(2026, 3, 6, 14, 35, tzinfo=timezone.utc), True),
    (datetime(2026, 11, 2, 14, 35, tzinfo=timezone.utc), True),  # after the fall change: 9:35 EST
    (datetime(2026, 11, 24, 16, 0, tzinfo=ZoneInfo("Europe/London")), True),  # 11:00 ET
])
def test_is_market_open(when, expected):
    assert OrderExecutor().is_market_open(when) is expected


def test_naive_datetime_is_local_time(monkeypatch):
    monkeypatch.setenv("TZ", "Asia/Tokyo")
    time.tzset()
    try:
        # 00:30 Tokyo on Wednesday = 10:30 New York on Tuesday
        assert OrderExecutor().is_market_open(datetime(2026, 11, 25, 0, 30)) is True
        assert OrderExecutor().is_market_open(datetime(2026, 11, 24, 10, 30)) is False
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()


def test_runbook_market_open_one_liner(trading_home):
    code = ("from trading_execution import OrderExecutor; from datetime import datetime; "
            "oe = OrderExecutor(); print(f'Market open: {oe.is_market_open(datetime.now())}')")
    env = {"PATH": os.environ["PATH"], "TRADING_HOME": str(trading_home), "HOME": str(trading_home)}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() in ("Market open: True", "Market open: False")
    assert not (trading_home / "state").exists()          # no state, no credentials, no network
