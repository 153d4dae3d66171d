"""Transient broker errors on the Schwab path (issue 19, points 5 and 8): schwab-py's real client
against the fake Schwab on 127.0.0.1 (tests/fake_schwab_server.py), our code unchanged.

* One HTTP 500 at each broker call of a live cycle (the account lookup of ``get_broker``, the
  account, positions, quotes, order lists, order POSTs, order status): each is retried by the
  gateway's one rule and the cycle ends as an undisturbed one does, with exactly its orders.
  The normal suite runs every call failing once in one cycle, plus two single 500s;
  ``make faults`` (FAULTS=full) runs a 500 at every n-th request of every kind, one cycle each.
* Every order POST answers 429: the circuit breaker counts order submissions apart from the
  reads between them, opens after ``CIRCUIT_BREAKER_FAILURES`` POSTs and no further POST is made;
  the status views show it.
"""
from __future__ import annotations

import pytest

import constants as C
import health_check
import live_trading
import state_db
import status_page
from audit_recorder import Recorder
from broker_base import TransientBrokerError
from broker_gateway import SUBMIT, CircuitOpenError, read_breaker
from credential_manager import CredentialManager
from crash_harness import (FULL, assert_live_exactly_once, fresh_home, live_server, live_setup,
                           our_rows, run_cycle_live)
from schwab_broker import SchwabAPI
from schwab_env import fake_schwab, schwab_home, schwab_routed, store_schwab_credentials  # noqa: F401
from trading_execution import OrderExecutor

# The retry rule unchanged, its first backoff shortened through the settings' environment override
# (the real 1 s, doubling, made one cycle with a 500 at every call take about 30 s).
QUICK_RETRY = {"TRADING_SET_ORDER_BACKOFF_S": "0.05"}

# the kinds of request one live cycle makes (fake_schwab_server.KINDS)
CYCLE_KINDS = {"transactions", "order_preview", "account_numbers", "account", "account_positions", "quotes",
               "orders_list", "order_post", "order_get"}


@pytest.fixture(scope="module")
def reference(trained, tmp_path_factory):
    """An undisturbed live cycle: its positions, order count and requests per kind."""
    home = fresh_home(trained, tmp_path_factory.mktemp("retry-reference") / "home")
    setup = live_setup(home, trained)
    server = live_server(setup)
    try:
        done = run_cycle_live(home, setup, server)
        assert done.returncode == 0, done.stderr[-3000:]
        assert server.posted_orders(), "the reference cycle sent no order: pick another trade day"
        return {"positions": server.position_quantities(), "orders": len(server.posted_orders()),
                "kinds": dict(server.kind_counts)}
    finally:
        server.stop()


@pytest.fixture
def live(trained, tmp_path):
    home = fresh_home(trained, tmp_path / "live")
    return home, live_setup(home, trained)


def _assert_like_the_reference(home, server, reference, done):
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(server.posted_orders()) == reference["orders"]
    assert_live_exactly_once(home, server, reference)
    assert all(r["status"] == "FILLED" for r in our_rows(home))


def test_one_http_500_at_every_broker_call_of_the_cycle(live, reference):
    """Every request of the cycle is first answered 500; its retry works."""
    home, setup = live
    server = live_server(setup)
    server.fail_alternate()
    try:
        done = run_cycle_live(home, setup, server, QUICK_RETRY)
        _assert_like_the_reference(home, server, reference, done)
        failed = {}
        for kind, _, status in server.injected:
            assert status == 500
            failed[kind] = failed.get(kind, 0) + 1
        assert CYCLE_KINDS <= set(failed), failed
        for kind, n in failed.items():          # each call failed exactly once, then answered
            assert server.kind_counts[kind] == 2 * n, (kind, n, server.kind_counts[kind])
        assert "connect to the broker (account lookup) failed" in done.stderr
        assert "quotes failed" in done.stderr and "account balance failed" in done.stderr
        assert "Circuit breaker OPEN" not in done.stderr
    finally:
        server.stop()


def _nth_cases():
    if FULL:
        return [(k, n) for k in sorted(CYCLE_KINDS) for n in range(1, 9)]
    return [("account_numbers", 1)]          # the account lookup of get_broker (the audit's case)


@pytest.mark.parametrize("kind,n", _nth_cases(), ids=[f"{k}-{n}" for k, n in _nth_cases()])
def test_one_http_500_at_the_nth_request_of_a_kind(live, reference, kind, n):
    if n > reference["kinds"].get(kind, 0):
        pytest.skip(f"the cycle makes {reference['kinds'].get(kind, 0)} {kind} requests")
    home, setup = live
    server = live_server(setup)
    server.fail_nth(kind, n)
    try:
        done = run_cycle_live(home, setup, server, QUICK_RETRY)
        assert server.injected == [(kind, n, 500)]
        _assert_like_the_reference(home, server, reference, done)
    finally:
        server.stop()


# ------------------------------------------------------------------ 429 on every order POST
def _executor(home, conn):
    api = SchwabAPI(CredentialManager(home=home, key_dir=home / "keys"))
    return OrderExecutor(conn=conn, audit=Recorder(), broker=api, sleep=lambda s: None)


def _buy(symbol):
    return {"symbol": symbol, "side": "BUY", "quantity": 1, "price": 100.0, "order_type": "MARKET"}


def test_429_on_every_order_post_opens_the_breaker_and_nothing_more_is_posted(schwab_routed, schwab_home):
    fake = schwab_routed
    for symbol in ("AAPL", "MSFT", "GOOG"):
        fake.set_price(symbol, 100.0)
    fake.fail_always("order_post", 429)
    store_schwab_credentials(schwab_home)
    conn = state_db.connect()
    executor = _executor(schwab_home, conn)
    errors = []
    for symbol in ("AAPL", "MSFT", "GOOG"):
        with pytest.raises((TransientBrokerError, CircuitOpenError)) as info:
            executor.submit(_buy(symbol), "2026-11-24", "live")
        errors.append(info.value)
    # the first order: 1 + ORDER_RETRIES POSTs, each after a successful order list (its snapshot);
    # the next order's first POST is the threshold's: the breaker opens; nothing more is posted
    assert C.ORDER_RETRIES + 1 < C.CIRCUIT_BREAKER_FAILURES
    assert fake.kind_counts["order_post"] == C.CIRCUIT_BREAKER_FAILURES
    assert fake.kind_counts["orders_list"] >= C.CIRCUIT_BREAKER_FAILURES      # reads in between worked
    assert isinstance(errors[0], TransientBrokerError) and isinstance(errors[-1], CircuitOpenError)
    assert {r["status"] for r in executor.book.open_orders()} == {"INTENDED"}    # none may have gone
    breaker = read_breaker(conn)
    assert breaker["state"] == "open" and breaker["kind_failures"] == {SUBMIT: C.CIRCUIT_BREAKER_FAILURES}

    # a second run (a new process sees the same table): nothing is posted while it is open
    again = _executor(schwab_home, state_db.connect())
    with pytest.raises(CircuitOpenError):
        again.submit(_buy("AAPL"), "2026-11-24", "live")
    assert fake.kind_counts["order_post"] == C.CIRCUIT_BREAKER_FAILURES

    # the operator's views show it, naming the kind of call
    level, line = health_check.check_breaker()
    assert level == health_check.WARN and "open (5 consecutive failures of order submissions" in line
    assert status_page.gather()["breaker"]["state"] == "open"
    assert live_trading._status_data(False)["circuit_breaker"]["kind_failures"] == {SUBMIT: 5}


# ------------------------------------------------------------------ the scheduler's rerun
def test_a_scheduler_rerun_of_a_failed_live_cycle_sends_no_order_twice(live, reference, monkeypatch):
    """The scheduler runs the live cycle (schwab-py against the fake); it dies after its orders
    filled (failpoint ``after_fills``, exit 99); the scheduler's rerun in the same window is an
    ordinary cycle: it finds those orders and sends none again."""
    import scheduler
    from crash_harness import env_context
    from schwab_env import cycle_code
    home, setup = live
    server = live_server(setup)
    mp = env_context(home)
    try:
        for name, value in {"TRADING_MODE": "live", "FAKE_SCHWAB_URL": server.url, "PYTHONUNBUFFERED": "1",
                            "TRADING_FAILPOINT": "after_fills"}.items():
            monkeypatch.setenv(name, value)
        monkeypatch.delenv("TRADING_CREDENTIAL_KEY", raising=False)
        monkeypatch.delenv("TRADING_ALERT_URLS", raising=False)
        job = scheduler.Job("trading_cycle", ("python", "tests/schwab_shim.py", "-c", cycle_code(setup["now"])),
                            "open", 5, 120, failed_alert="cycle_failed", missed_alert="cycle_missed",
                            reruns=2, rerun_spacing_min=10, final_codes=(2, 3), gave_up_alert="cycle_gave_up")
        now = setup["now"]
        assert scheduler.run_due(now, (job,)) == 1                       # died after its orders
        assert len(server.posted_orders()) == reference["orders"]
        monkeypatch.delenv("TRADING_FAILPOINT")
        assert scheduler.run_due(now + scheduler.timedelta(minutes=3), (job,)) == 0   # spacing
        assert scheduler.run_due(now + scheduler.timedelta(minutes=15), (job,)) == 0  # the rerun
        conn = state_db.connect()
        row = dict(conn.execute("SELECT * FROM schedule_runs WHERE job = 'trading_cycle'").fetchone())
        conn.close()
        assert row["status"] == "ok" and row["attempts"] == 2
        assert len(server.posted_orders()) == reference["orders"]
        assert_live_exactly_once(home, server, reference)
    finally:
        server.stop()
        mp.undo()
