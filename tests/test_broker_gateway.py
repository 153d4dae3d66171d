"""broker_gateway: the one retry rule, the circuit breaker, and the exactly-once send loop using
that same rule. In-process, a fake broker (tests/fake_broker.py); our own code runs for real."""
import logging

import pytest

import state_db
from audit_recorder import Recorder
from broker_base import OrderRejectedError, OrderStatusUnknownError, TransientBrokerError
from broker_gateway import BrokerGateway, CircuitBreaker, CircuitOpenError
from fake_broker import FakeBroker
from trading_execution import OrderExecutor


class Clock:
    def __init__(self, t=1000.0):
        self.t = t

    def __call__(self):
        return self.t


def gateway(broker=None, *, retries=3, backoff_s=1.0, failures=5, recovery_s=60.0, clock=None):
    waits = []
    breaker = CircuitBreaker(state_db.connect(), failures=failures, recovery_s=recovery_s,
                             clock=clock or Clock())
    gw = BrokerGateway(breaker, broker or FakeBroker(), sleep=waits.append, retries=retries,
                       backoff_s=backoff_s)
    return gw, waits


def flaky(errors, result="ok"):
    """attempt(n) raising ``errors`` in turn, then returning ``result``; records each n."""
    seen = []

    def attempt(n):
        seen.append(n)
        if errors:
            raise errors.pop(0)
        return result
    return attempt, seen


# ------------------------------------------------------------------ the retry rule
def test_transient_errors_are_retried_with_doubling_backoff(caplog):
    gw, waits = gateway(retries=3, backoff_s=0.5)
    attempt, seen = flaky([TransientBrokerError("busy"), TransientBrokerError("busy")])
    with caplog.at_level(logging.WARNING, logger="execution"):
        assert gw.retrying("list orders", attempt) == "ok"
    assert seen == [1, 2, 3] and waits == [0.5, 1.0]
    assert "list orders failed (busy); retry 1 of 3 in 0.5 s" in caplog.text
    assert "list orders failed (busy); retry 2 of 3 in 1.0 s" in caplog.text


def test_the_last_transient_error_is_raised_after_all_retries():
    gw, waits = gateway(retries=2, backoff_s=1.0)
    attempt, seen = flaky([TransientBrokerError(f"e{i}") for i in range(5)])
    with pytest.raises(TransientBrokerError, match="e2"):
        gw.retrying("x", attempt)
    assert seen == [1, 2, 3] and waits == [1.0, 2.0]


def test_other_errors_are_never_retried():
    gw, waits = gateway()
    attempt, seen = flaky([OrderRejectedError("no")])
    with pytest.raises(OrderRejectedError):
        gw.retrying("x", attempt)
    assert seen == [1] and waits == []


def test_before_retry_runs_between_attempts_and_can_stop_them():
    gw, waits = gateway(retries=3)
    calls = []

    class Stop(Exception):
        pass

    def before(exc):
        calls.append(str(exc))
        if len(calls) == 2:
            raise Stop
    attempt, seen = flaky([TransientBrokerError("a"), TransientBrokerError("b"), TransientBrokerError("c")])
    with pytest.raises(Stop):
        gw.retrying("x", attempt, before_retry=before)
    assert calls == ["a", "b"] and seen == [1, 2] and len(waits) == 2


def test_ambiguous_note_only_for_ambiguous_errors(caplog):
    gw, _ = gateway()
    attempt, _ = flaky([OrderStatusUnknownError("lost"), TransientBrokerError("busy")])
    with caplog.at_level(logging.WARNING, logger="execution"):
        gw.retrying("place k", attempt, ambiguous_note=" after looking")
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert lines[0].endswith(" after looking") and not lines[1].endswith(" after looking")


# ------------------------------------------------------------------ the breaker
def test_breaker_opens_after_n_failures_and_then_sends_nothing():
    broker = FakeBroker()
    gw, _ = gateway(broker, retries=0, failures=3)
    broker.fail("get_positions", *[TransientBrokerError("down")] * 3)
    for _ in range(3):
        with pytest.raises(TransientBrokerError):
            gw.positions()
    assert gw.breaker.status()["state"] == "open" and gw.breaker.status()["failures"] == 3
    with pytest.raises(CircuitOpenError, match="positions not sent"):
        gw.positions()
    assert broker.calls["get_positions"] == 3                  # the 4th never reached the broker


def test_breaker_half_open_trial_closes_it():
    broker, clock = FakeBroker(), Clock()
    gw, _ = gateway(broker, retries=0, failures=1, recovery_s=60, clock=clock)
    broker.fail("get_open_orders", TransientBrokerError("down"))
    with pytest.raises(TransientBrokerError):
        gw.open_orders()
    with pytest.raises(CircuitOpenError):
        gw.open_orders()
    clock.t += 61
    assert gw.open_orders() == []                              # the trial call
    assert gw.breaker.status()["state"] == "closed"


def test_retries_count_as_failures_of_the_breaker():
    broker = FakeBroker()
    gw, waits = gateway(broker, retries=3, failures=2)
    broker.fail("get_positions", *[TransientBrokerError("down")] * 4)
    with pytest.raises(CircuitOpenError):                      # the 3rd attempt is refused
        gw.positions()
    assert broker.calls["get_positions"] == 2 and len(waits) == 2


def test_a_rejection_is_an_answer_not_a_failure():
    broker = FakeBroker()
    gw, _ = gateway(broker, retries=0, failures=2)
    broker.fail("place_order", TransientBrokerError("down"), OrderRejectedError("bad"))
    with pytest.raises(TransientBrokerError):
        gw.call_once("place", broker.place_order, {"symbol": "A", "side": "BUY", "quantity": 1})
    with pytest.raises(OrderRejectedError):
        gw.call_once("place", broker.place_order, {"symbol": "A", "side": "BUY", "quantity": 1})
    assert gw.breaker.status() == {**gw.breaker.status(), "state": "closed", "failures": 0}


def test_the_broker_is_made_on_first_use_only():
    made = []
    gw = BrokerGateway(CircuitBreaker(state_db.connect()), make_broker=lambda: made.append(1) or FakeBroker())
    assert made == []
    assert gw.broker is gw.broker and made == [1]
    with pytest.raises(ValueError):
        BrokerGateway(gw.breaker)


# ------------------------------------------------------------------ the send loop uses the same rule
def test_send_loop_retries_by_the_gateways_rule():
    broker = FakeBroker()
    gw, waits = gateway(broker, retries=2, backoff_s=0.25)
    ex = OrderExecutor(conn=state_db.connect(), audit=Recorder(), gateway=gw)
    broker.fail("place_order", *[TransientBrokerError("busy")] * 3)
    with pytest.raises(TransientBrokerError):
        ex.submit({"symbol": "AAPL", "side": "BUY", "quantity": 1, "price": 1.0}, "2025-10-06")
    assert broker.calls["place_order"] == 3 and waits == [0.25, 0.5]
    assert ex.book.get("2025-10-06:AAPL:BUY")["status"] == "INTENDED"   # certainly not sent
    broker.fail("place_order", TransientBrokerError("busy"))
    record = ex.submit({"symbol": "AAPL", "side": "BUY", "quantity": 1, "price": 1.0}, "2025-10-06")
    assert record["status"] == "SUBMITTED" and broker.calls["place_order"] == 5 and len(broker.orders) == 1


# ------------------------------------------------------------------ every call of the cycle, per kind
def test_retrying_stops_at_the_deadline(caplog):
    t = {"now": 0.0}
    gw = BrokerGateway(CircuitBreaker(state_db.connect()), FakeBroker(), retries=5, backoff_s=10.0,
                       deadline_s=25.0, clock=lambda: t["now"], sleep=lambda s: t.__setitem__("now", t["now"] + s))
    attempt, seen = flaky([TransientBrokerError(f"e{i}") for i in range(9)])
    with caplog.at_level(logging.WARNING, logger="execution"), pytest.raises(TransientBrokerError, match="e1"):
        gw.retrying("quotes", attempt)
    assert seen == [1, 2] and t["now"] == 10.0          # waits 10, then 20 more would end at 30 > 25
    assert "no retry: the next would start more than 25 s after the first attempt" in caplog.text


def test_creating_the_broker_is_retried():
    made, waits = [], []
    broker = FakeBroker()

    def make():
        made.append(1)
        if len(made) == 1:
            raise TransientBrokerError("account lookup: HTTP 500")
        return broker
    gw = BrokerGateway(CircuitBreaker(state_db.connect()), make_broker=make, sleep=waits.append)
    assert gw.broker is broker and made == [1, 1] and waits == [1.0]


def test_account_reads_under_the_brokers_names_are_retried():
    broker = FakeBroker()
    gw, waits = gateway(broker)
    broker.fail("get_account_balance", TransientBrokerError("500"))
    broker.fail("get_quotes", TransientBrokerError("500"))
    broker.fail("get_positions", TransientBrokerError("500"))
    assert gw.get_account_balance() == broker.get_account_balance()
    assert gw.get_quotes(["AAPL"]) == broker.get_quotes(["AAPL"]) and gw.get_positions() == {}
    assert gw.simulated == broker.simulated and len(waits) == 3


def test_failures_are_counted_per_kind_so_successful_reads_do_not_hide_failing_submits():
    from broker_gateway import READ, SUBMIT
    broker = FakeBroker()
    gw, _ = gateway(broker, retries=0, failures=3)
    broker.fail("place_order", *[TransientBrokerError("HTTP 429")] * 3)
    for _ in range(3):
        assert gw.open_orders() == []                            # a read between: it works
        with pytest.raises(TransientBrokerError):
            gw.place_order({"symbol": "A", "side": "BUY", "quantity": 1}, "place k")
    st = gw.breaker.status()
    assert st["state"] == "open" and st["kind_failures"] == {SUBMIT: 3} and st["failures"] == 3
    with pytest.raises(CircuitOpenError):
        gw.open_orders()                                         # open: nothing of any kind is sent
    # a read failing between successful submits does not open it either
    gw.breaker.reset()
    broker.fail("get_open_orders", *[TransientBrokerError("500")] * 2)
    for _ in range(2):
        with pytest.raises(TransientBrokerError):
            gw.open_orders()
        gw.place_order({"symbol": "A", "side": "BUY", "quantity": 1, "client_key": f"k{_}"}, "place")
    assert gw.breaker.status()["state"] == "closed" and gw.breaker.status()["kind_failures"] == {READ: 2}


def test_a_kind_still_at_the_threshold_reopens_the_breaker_at_its_next_failure():
    from broker_gateway import SUBMIT
    broker, clock = FakeBroker(), Clock()
    gw, _ = gateway(broker, retries=0, failures=2, recovery_s=60, clock=clock)
    broker.fail("place_order", *[TransientBrokerError("HTTP 429")] * 3)
    for _ in range(2):
        with pytest.raises(TransientBrokerError):
            gw.place_order({"symbol": "A", "side": "BUY", "quantity": 1}, "place")
    clock.t += 61
    assert gw.open_orders() == []                                # the half-open trial: a read works
    assert gw.breaker.status()["state"] == "closed"
    with pytest.raises(TransientBrokerError):
        gw.place_order({"symbol": "A", "side": "BUY", "quantity": 1}, "place")
    assert gw.breaker.status()["state"] == "open"                # one POST, not two more
    assert gw.breaker.status()["kind_failures"] == {SUBMIT: 3}


def test_read_breaker_for_the_status_views(tmp_path):
    import sqlite3

    from broker_gateway import describe_breaker, read_breaker
    empty = sqlite3.connect(tmp_path / "empty.db")
    assert read_breaker(empty) is None                           # no table yet: nothing counted
    conn = state_db.connect()
    br = CircuitBreaker(conn, failures=2)
    assert read_breaker(conn) is None
    br.record_failure("place k: HTTP 429", "submit")
    br.record_failure("place k: HTTP 429", "submit")
    st = read_breaker(conn)
    assert st["state"] == "open" and st["failures"] == 2 and st["kind_failures"] == {"submit": 2}
    assert describe_breaker(st) == "open (2 consecutive failures of order submissions, last: place k: HTTP 429)"
