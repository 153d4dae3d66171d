"""Issue 19 (reliability audit, points 3, 4, 7, 13), in-process on the Schwab path: schwab-py's
real client against the fake Schwab (``schwab_fake``), the real order book, gateway, recovery
and audit trail.

* flatten is honest: no fill -> not flat, the positions still open named, its closing orders
  kept working at Schwab (never cancelled);
* after Schwab accepted an order, no line says it was not sent: the state database locked right
  after the answer -> "sent and accepted by the broker as ID; not yet recorded: the next run
  adopts it; do NOT re-enter it by hand", and the next run does adopt it (by the id the audit
  trail kept), sending nothing;
* an order of ours Schwab does not know (404) becomes UNKNOWN_AT_BROKER, named with the resolve
  command; the other orders are still refreshed, filled and cancelled in the same run; resolve
  accepts it (audited);
* an identical order a person enters while our lost request could have landed is never adopted
  silently, and our fill timeout never cancels it."""
import sqlite3
import threading
import time

import httpx
import pytest

import kill_switch
import state_db
import trading_cycle
import trading_execution
from audit_logging import AuditLogger
from order_book import UNKNOWN_AT_BROKER
from order_recovery import AmbiguousOrderError, OrderNotRecordedError
from schwab_broker import SchwabAPI
from schwab_fake import api, cm, fake  # noqa: F401  (fixtures)
from test_order_recovery import DAY, KEY, buy, is_post, manual_order, matching, new_process, posts, row
from trading_execution import OrderExecutor, client_key, flatten_key, flatten_not_flat_line


def deletes(fake, order_id=None):
    return [r for r in fake.requests if r.method == "DELETE"
            and (order_id is None or r.url.path.endswith(f"/orders/{order_id}"))]


def gets_of(fake, order_id):
    return [r for r in fake.requests if r.method == "GET" and r.url.path.endswith(f"/orders/{order_id}")]


def position(symbol, qty):
    return {"instrument": {"symbol": symbol, "assetType": "EQUITY"}, "longQuantity": max(qty, 0),
            "shortQuantity": max(-qty, 0), "averageLongPrice": 100.0, "marketValue": 100.0 * qty}


# ------------------------------------------------------------------ 3. flatten is honest
def test_flatten_without_fills_is_not_flat_and_keeps_its_closing_orders_working(api, fake, cm):
    """After hours or a halted stock: Schwab fills nothing within the wait. flatten says which
    positions are still open and which closing orders still work; it cancels none of them."""
    fake.positions = [position("AAPL", 10), position("MSFT", -4)]
    done = new_process(api).flatten(DAY, "live", timeout_s=0)
    assert done["flat"] is False and done["open_positions"] == {"AAPL": 10, "MSFT": -4}
    closing = sorted(int(r["broker_order_id"]) for r in done["working"])
    assert len(closing) == 2 and len(posts(fake)) == 2
    assert all(fake.orders[i]["status"] == "WORKING" for i in closing)        # kept working
    assert deletes(fake) == []                                                 # nothing cancelled
    line = flatten_not_flat_line(done)
    assert "NOT FLAT" in line and "AAPL +10" in line and "MSFT -4" in line and "\n" not in line
    assert "kept, NOT cancelled" in line and all(str(i) in line for i in closing)
    assert flatten_key(DAY, "AAPL", "SELL") in line and flatten_key(DAY, "MSFT", "BUY_TO_COVER") in line
    # a rerun keeps them: neither cancelled nor sent again
    again = new_process(SchwabAPI(cm)).flatten(DAY, "live", timeout_s=0)
    assert again["flat"] is False and len(posts(fake)) == 2 and deletes(fake) == []
    # once Schwab filled them and reports no position, flatten says flat
    for i in closing:
        fake.orders[i].update(status="FILLED", filledQuantity=fake.orders[i]["quantity"], remainingQuantity=0)
    fake.positions = []
    final = new_process(SchwabAPI(cm)).flatten(DAY, "live", timeout_s=0)
    assert final["flat"] is True and final["open_positions"] == {} and len(posts(fake)) == 2


def test_flatten_command_exits_1_naming_what_is_still_open_at_schwab(api, fake, monkeypatch, capsys):
    """``python live_trading.py flatten --confirm FLATTEN`` (its main, live mode, schwab-py against
    the fake): nothing fills within the wait -> exit 1, the open position and the working closing
    order on stderr; the order is still working at Schwab."""
    import constants
    import live_trading
    monkeypatch.setenv("TRADING_MODE", "live")
    monkeypatch.setattr(constants, "ORDER_FILL_TIMEOUT_S", 0.0)      # the wait: no need for 120 s here
    fake.positions = [position("AAPL", 10)]
    assert live_trading.main(["init"]) == 0                           # a home (flatten refuses a typo)
    assert live_trading.main(["flatten", "--confirm", "FLATTEN"]) == 1
    err = capsys.readouterr().err
    closing = next(iter(fake.orders))
    assert "flatten NOT FLAT: positions still open: AAPL +10" in err and f"broker id {closing}" in err
    assert fake.orders[closing]["status"] == "WORKING" and deletes(fake) == []
    trail = [(r["action"], r["status"]) for r in AuditLogger().tail(10)]
    assert ("flatten", "not_flat") in trail and ("flatten", "done") not in trail


# ------------------------------------------------------------------ 4. messages that are true
_real_sleep = time.sleep


class WriteLock:
    """Another process holds the state database's write lock for ``seconds`` (a real SQLite lock)."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.taken = threading.Event()
        self.thread = threading.Thread(target=self._hold, daemon=True)

    def _hold(self):
        conn = sqlite3.connect(state_db.db_path(), isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
        self.taken.set()
        # A real sleep, bound at import (tests may replace time.sleep). Not an Event's timed wait:
        # under libfaketime (make test-days) a lock's timed wait that must run out never returns.
        _real_sleep(self.seconds)
        conn.execute("ROLLBACK")
        conn.close()

    def start(self):
        self.thread.start()
        assert self.taken.wait(10)

    def join(self):
        self.thread.join(30)


def test_database_locked_right_after_schwab_accepted_says_sent_and_the_next_run_adopts_it(api, fake, cm, caplog):
    conn = state_db.connect()
    ex = OrderExecutor(broker=api, conn=conn, audit=AuditLogger(), sleep=lambda s: None)
    ex.book.record_intent(buy("NVDA", 2), DAY, "live")       # the schema exists before the lock
    conn.execute("PRAGMA busy_timeout=200")                 # this run gives up on the lock quickly
    lock = WriteLock(1.5)

    def hook(request):
        if is_post(request):                                 # Schwab stores it and answers 201 ...
            fake.hook = None
            lock.start()                                     # ... and the database is locked now
        return None
    fake.hook = hook
    caplog.set_level("INFO")
    keys, failures = trading_cycle._send(ex, [buy("NVDA", 2)], DAY, "live")
    lock.join()
    assert keys == [] and failures == 1
    order_id = str(matching(fake, "NVDA", "BUY", 2)[0])
    lines = [r.getMessage() for r in caplog.records]
    said = [m for m in lines if "sent and accepted by the broker as " + order_id in m]
    assert said and all("not yet recorded" in m and "the next run adopts it; do NOT re-enter it by hand" in m
                        for m in said)
    assert not [m for m in lines if "not sent" in m and "Alert" not in m], "a line says the order was not sent"
    key = client_key(DAY, "NVDA", "BUY")
    assert row(key)["status"] == "SENDING" and row(key)["broker_order_id"] is None
    # the next run adopts it, certainly ours (the broker's own answer, kept in the audit trail),
    # sends nothing, and sets no kill switch
    rerun = OrderExecutor(broker=SchwabAPI(cm), conn=state_db.connect(), audit=AuditLogger(), sleep=lambda s: None)
    record = rerun.submit(buy("NVDA", 2), DAY, "live")
    assert record["status"] == "SUBMITTED" and record["broker_order_id"] == order_id
    assert len(posts(fake)) == 1 and kill_switch.get() is None
    trail = [(r["action"], r["status"]) for r in AuditLogger().tail(50)]
    assert ("order_submit", "accepted_not_recorded") in trail and ("order_reconciled", "adopted") in trail
    assert AuditLogger().verify_chain()[0]


def test_order_not_recorded_error_never_says_not_sent():
    record = {"client_key": "k", "side": "BUY", "quantity": 2, "symbol": "NVDA", "order_type": "MARKET"}
    for error in (OrderNotRecordedError(record, "77", sqlite3.OperationalError("database is locked")),
                  OrderNotRecordedError(record, "77", OSError("disk full"), recorded=True),
                  OrderNotRecordedError(record, "77", OSError("x"), adoptable=False)):
        text = str(error)
        assert "sent and accepted by the broker as 77" in text and "do NOT re-enter it by hand" in text
        assert "not sent" not in text and "\n" not in text


# ------------------------------------------------------------------ 7. every broker answer handled
def test_order_unknown_at_schwab_is_named_for_a_person_and_the_others_are_still_managed(api, fake, cm, caplog,
                                                                                        monkeypatch, capsys):
    ex = new_process(api)
    aapl = ex.submit(buy("AAPL"), DAY, "live")
    msft = ex.submit(buy("MSFT", 5), DAY, "live")
    jpm = ex.submit(buy("JPM", 3), DAY, "live")
    lost = int(aapl["broker_order_id"])
    del fake.orders[lost]                                            # Schwab answers 404 for it
    fake.orders[int(msft["broker_order_id"])].update(status="FILLED", filledQuantity=5, remainingQuantity=0)
    rerun = new_process(SchwabAPI(cm))
    done = rerun.reconcile()                                         # no exception: the cycle goes on
    assert {r["client_key"]: r["status"] for r in done} == {
        KEY: UNKNOWN_AT_BROKER, msft["client_key"]: "FILLED", jpm["client_key"]: "SUBMITTED"}
    line = next(r.getMessage() for r in caplog.records if "UNKNOWN_AT_BROKER" in r.getMessage())
    assert "\n" not in line and f"python trading_execution.py resolve {KEY}" in line and str(lost) in line
    assert rerun.audit.has("order_reconciled", "unknown_at_broker")
    # the same run still manages the others: JPM is cancelled at the fill timeout, AAPL never asked again
    polled = len(gets_of(fake, lost))
    rerun.wait_for_fills([KEY, jpm["client_key"]], timeout_s=0)
    assert fake.orders[int(jpm["broker_order_id"])]["status"] == "CANCELED"
    assert row(jpm["client_key"])["status"] == "CANCELED"
    assert len(gets_of(fake, lost)) == polled and deletes(fake, lost) == []
    assert row(KEY)["status"] == UNKNOWN_AT_BROKER
    # the next cycle: one line again, no request about it, nothing blocked
    caplog.clear()
    assert new_process(SchwabAPI(cm)).reconcile() == []
    assert any("UNKNOWN_AT_BROKER" in r.getMessage() for r in caplog.records)
    assert len(gets_of(fake, lost)) == polled
    # the operator resolves it with the command the line names (audited)
    monkeypatch.setenv("TRADING_MODE", "live")
    assert trading_execution.main(["orders"]) == 0
    assert f"resolve {KEY}" in capsys.readouterr().out
    assert trading_execution.main(["resolve", KEY, "--not-sent", "--reason", "ticket 9: not at Schwab"]) == 0
    assert row(KEY)["status"] == "CANCELED" and "not at the broker" in row(KEY)["error"]
    trail = [(r["action"], r["status"], r["details"]) for r in AuditLogger().tail(20)]
    assert any(a == "order_reconciled" and s == "resolved_not_sent" and d["was"] == UNKNOWN_AT_BROKER
               for a, s, d in trail)


def test_resolve_accepts_an_unknown_order_with_the_id_schwab_knows(api, fake, cm):
    ex = new_process(api)
    aapl = ex.submit(buy("AAPL"), DAY, "live")
    real = fake.orders.pop(int(aapl["broker_order_id"]))
    real["orderId"] = 9999
    fake.orders[9999] = real                                       # Schwab knows it under another id
    new_process(SchwabAPI(cm)).reconcile()
    assert row(KEY)["status"] == UNKNOWN_AT_BROKER
    person = new_process(SchwabAPI(cm))
    record = person.resolve(KEY, "9999", "ticket 10: Schwab's id")
    assert record["status"] == "SUBMITTED" and record["broker_order_id"] == "9999"
    assert person.audit.has("order_reconciled", "resolved_adopted")


# ------------------------------------------------------------------ 13. the operator's identical order
def test_operators_identical_order_after_a_lost_post_is_never_adopted_nor_cancelled(api, fake, caplog):
    """Our POST fails with a 502 and never lands; within seconds a person enters the same order
    by hand. It could be ours or theirs: a person decides (one line naming resolve); our fill
    timeout and a halt's cancel never touch it."""
    state = {}

    def hook(request):
        if is_post(request):
            fake.hook = None
            state["manual"] = manual_order(fake)
            return httpx.Response(502, json={"message": "bad gateway"})
        return None
    fake.hook = hook
    ex = new_process(api)
    with pytest.raises(AmbiguousOrderError) as raised:
        ex.submit(buy(), DAY, "live")
    text = str(raised.value)
    assert "\n" not in text and "could be ours or the same order entered by a person" in text
    assert f"resolve {KEY}" in text and str(state["manual"]) in text
    assert len(posts(fake)) == 1 and row(KEY)["status"] == "SENDING" and row(KEY)["broker_order_id"] is None
    assert kill_switch.get() and not ex.audit.has("order_reconciled", "adopted")
    ex.wait_for_fills([KEY], timeout_s=0)
    ex.cancel_unfilled(DAY, "timeout")
    assert fake.orders[state["manual"]]["status"] == "WORKING" and deletes(fake) == []


def test_a_lone_twin_found_by_the_rerun_after_a_lost_answer_goes_to_a_person(api, fake, cm):
    """Ours timed out in flight and never landed; the person's twin is the lone candidate: the old
    rule adopted it (and the fill timeout then cancelled it). Now nothing is adopted or sent."""
    def hook(request):
        if is_post(request):
            fake.hook = None
            raise httpx.ReadTimeout("read timed out", request=request)
        return None
    fake.hook = hook
    state = {}
    ex = new_process(api)
    ex.gateway.retries = 0                                 # give up after the first attempt
    with pytest.raises(Exception):
        ex.submit(buy(), DAY, "live")
    assert row(KEY)["status"] == "SENDING"
    state["manual"] = manual_order(fake)
    with pytest.raises(AmbiguousOrderError, match="could be ours"):
        new_process(SchwabAPI(cm)).reconcile()
    assert fake.orders[state["manual"]]["status"] == "WORKING" and deletes(fake) == []
    assert row(KEY)["broker_order_id"] is None and len(posts(fake)) == 1


def test_flatten_on_a_wrong_clock_goes_on_and_says_so(api, fake, monkeypatch, capsys):
    """Issue 19: flatten runs the cycle's clock check. Schwab's clock 25 h ahead of ours (a VM
    restored from a snapshot): flatten still closes (an emergency command that reduces risk),
    but says so in one line naming both times and the NTP fix, audits ``clock_check``
    ``flatten_goes_on``, alerts ``clock_wrong``, and its order queries reach past Schwab's clock."""
    from datetime import datetime, timedelta, timezone

    import constants
    import live_trading
    from alert_servers import WebhookServer
    monkeypatch.setenv("TRADING_MODE", "live")
    monkeypatch.setattr(constants, "ORDER_FILL_TIMEOUT_S", 0.0)
    fake.positions = [position("AAPL", 10)]
    fake.clock_skew_s = 25 * 3600.0
    assert live_trading.main(["init"]) == 0
    with WebhookServer() as hook:
        monkeypatch.setenv("TRADING_ALERT_URLS", hook.url)
        assert live_trading.main(["flatten", "--confirm", "FLATTEN"]) == 1          # sent; not flat (no fill)
        titles = [m.get("title", "") for m in hook.received]
    err = capsys.readouterr().err
    ours = datetime.now(timezone.utc)
    lines = [line for line in err.splitlines() if "CLOCK SKEW" in line]
    assert len(lines) == 1, err
    assert f"{ours:%Y-%m-%d}" in lines[0] and f"{ours + timedelta(hours=25):%Y-%m-%d}" in lines[0]
    assert "flatten goes on" in lines[0] and "timedatectl" in lines[0] and "Traceback" not in err
    assert len(posts(fake)) == 1                                      # the closing order was sent
    assert any("clock" in t.lower() for t in titles), titles
    trail = [(r["action"], r["status"]) for r in AuditLogger().tail(20)]
    assert ("clock_check", "flatten_goes_on") in trail and ("flatten", "not_flat") in trail
    ends = [datetime.strptime(r.url.params["toEnteredTime"], "%Y-%m-%dT%H:%M:%S.%fZ" if "." in
                              r.url.params["toEnteredTime"] else "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
            for r in fake.requests if r.method == "GET" and "toEnteredTime" in r.url.params]
    assert ends and all(end >= ours + timedelta(hours=25) for end in ends), ends   # Schwab's clock, not ours
    # the rerun finds its working closing order (entered 25 h "ahead") and sends nothing twice
    assert live_trading.main(["flatten", "--confirm", "FLATTEN"]) == 1
    assert len(posts(fake)) == 1 and deletes(fake) == []
