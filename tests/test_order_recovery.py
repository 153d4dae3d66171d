"""Exactly-once orders without a broker client id, through schwab-py's real client against the
in-process fake Schwab (``schwab_fake``) and through the real paper broker.

A crash is a ``Crash`` (a BaseException, like a kill: no handler of ours catches it) raised from
the fake Schwab's transport at the named moment; the rerun is a fresh ``OrderExecutor`` with a new
database connection and a new ``SchwabAPI`` (a new process remembers nothing but the database).
The fake's clock is skewed from ours by ``clock_skew_s`` (Schwab minus ours): its ``enteredTime``,
its HTTP ``Date`` and the windows of its order queries all use it."""
import json
import sqlite3
from datetime import date

import httpx
import pytest

import constants as C
import kill_switch
import state_db
from broker_base import OrderStatusUnknownError
from broker_gateway import BrokerGateway, CircuitBreaker
from errors import UserFacingError
from fake_broker import FakeBroker
from kill_switch import KillSwitchSet
from order_book import INTENDED, SENDING, SUBMITTED, OrderBook
from paper_broker import PaperBroker
from schwab_broker import SchwabAPI
from schwab_fake import api, cm, fake  # noqa: F401  (fixtures)
from order_recovery import AmbiguousOrderError, OrderRecovery
from trading_execution import OrderExecutor, client_key, flatten_key
from audit_recorder import Recorder

DAY = "2025-10-06"
SKEWS = [-30, -2, 0, 0.5, 1, 2, 30]


class Crash(BaseException):
    """The process dies here (nothing of ours catches a BaseException that is not ours)."""


def new_process(broker):
    """What a rerun starts with: a new connection and broker object, the same database."""
    return OrderExecutor(broker=broker, conn=state_db.connect(), audit=Recorder(), sleep=lambda s: None)


def buy(symbol="AAPL", qty=10, side="BUY"):
    return {"symbol": symbol, "side": side, "quantity": qty, "order_type": "MARKET", "price": 100.0}


def is_post(r):
    return r.method == "POST" and r.url.path.endswith("/orders")


def is_list(r):
    return r.method == "GET" and r.url.path.endswith("/orders")


def posts(fake):
    return [r for r in fake.requests if is_post(r)]


def matching(fake, symbol="AAPL", side="BUY", qty=10):
    return [oid for oid, o in fake.orders.items()
            if o["orderLegCollection"][0]["instrument"]["symbol"] == symbol
            and o["orderLegCollection"][0]["instruction"] == side and o["quantity"] == qty]


def manual_order(fake, symbol="AAPL", side="BUY", qty=10):
    """Someone places the same order by hand on Schwab's web site."""
    return fake.add_order(quantity=qty, remainingQuantity=qty, orderLegCollection=[
        {"instruction": side, "quantity": qty, "instrument": {"symbol": symbol, "assetType": "EQUITY"}}])


def row(key):
    conn = state_db.connect()
    return dict(conn.execute("SELECT * FROM orders WHERE client_key = ?", (key,)).fetchone())


KEY = client_key(DAY, "AAPL", "BUY")


def crash_on(fake, kind):
    """Install the crash ``kind``: ``intent`` dies on the snapshot request (before SENDING),
    ``request`` dies before Schwab stores the order, ``accepted`` after Schwab stored it."""
    def hook(request):
        if kind == "intent" and is_list(request):
            fake.hook = None
            raise Crash("killed before SENDING")
        if is_post(request):
            fake.hook = None
            if kind == "accepted":
                fake.place(json.loads(request.content))
            raise Crash(f"killed ({kind})")
        return None
    fake.hook = hook


# ------------------------------------------------------------------ the crash matrix (Schwab path)
@pytest.mark.parametrize("skew", SKEWS)
@pytest.mark.parametrize("kind", ["intent", "request", "accepted"])
def test_crash_then_rerun_sends_exactly_once(api, fake, cm, skew, kind):
    fake.clock_skew_s = skew
    crash_on(fake, kind)
    with pytest.raises(Crash):
        new_process(api).submit(buy(), DAY, "live")
    assert row(KEY)["status"] == ("INTENDED" if kind == "intent" else "SENDING")
    rerun = new_process(SchwabAPI(cm))
    if kind == "accepted":
        # Schwab carries no client id: the lone new match could be ours or a person's twin; a
        # person decides (resolve), nothing is sent again, nothing is adopted silently
        with pytest.raises(AmbiguousOrderError, match="could be ours or the same order entered by a person"):
            rerun.submit(buy(), DAY, "live")
        assert len(posts(fake)) == 1 and kill_switch.get() and row(KEY)["broker_order_id"] is None
        assert rerun.audit.has("order_reconciled", "ambiguous") and not rerun.audit.has("order_reconciled", "adopted")
        ours = matching(fake)[0]
        rerun.resolve(KEY, str(ours), "test: the API order is ours")
        kill_switch.clear("resolved", audit=Recorder())
    record = new_process(SchwabAPI(cm)).submit(buy(), DAY, "live") if kind == "accepted" else \
        rerun.submit(buy(), DAY, "live")
    ids = matching(fake)
    assert len(ids) == 1, f"{len(ids)} orders at Schwab"                       # 0 duplicates
    assert record["status"] == "SUBMITTED" and record["broker_order_id"] == str(ids[0])
    assert fake.orders[ids[0]]["status"] == "WORKING"                          # lost order still working
    assert len(posts(fake)) == (1 if kind == "accepted" else 1 + (kind == "request"))
    assert rerun.audit.has("order_reconciled", "resolved_adopted") == (kind == "accepted")
    assert kill_switch.get() is None


@pytest.mark.parametrize("skew", SKEWS)
def test_timeout_in_flight_goes_to_a_person_never_resent(api, fake, skew):
    """Schwab stored it, we never heard: the lone match is ours or a person's twin (Schwab carries
    no client id), so nothing is resent and nothing adopted silently: a person resolves it."""
    fake.clock_skew_s = skew

    def hook(request):
        if is_post(request):
            fake.hook = None
            fake.place(json.loads(request.content))                    # Schwab took it ...
            raise httpx.ReadTimeout("read timed out", request=request)  # ... we never heard
        return None
    fake.hook = hook
    ex = new_process(api)
    with pytest.raises(AmbiguousOrderError, match="could be ours or the same order entered by a person") as raised:
        ex.submit(buy(), DAY, "live")
    assert f"broker order {matching(fake)[0]}" in str(raised.value) and "resolve" in str(raised.value)
    assert len(matching(fake)) == 1 and len(posts(fake)) == 1
    assert row(KEY)["status"] == "SENDING" and row(KEY)["broker_order_id"] is None and kill_switch.get()
    assert not ex.audit.has("order_reconciled", "adopted")


@pytest.mark.parametrize("skew", SKEWS)
def test_request_that_never_reached_schwab_is_sent_once(api, fake, skew):
    fake.clock_skew_s = skew
    state = {"left": 2}

    def hook(request):
        if is_post(request) and state["left"]:
            state["left"] -= 1
            raise httpx.ConnectError("connection refused", request=request)
        return None
    fake.hook = hook
    record = new_process(api).submit(buy(), DAY, "live")
    assert len(matching(fake)) == 1 and len(posts(fake)) == 3
    assert record["broker_order_id"] == str(matching(fake)[0])


@pytest.mark.parametrize("skew", SKEWS)
def test_ambiguous_5xx_that_did_not_land_is_retried_once(api, fake, skew):
    fake.clock_skew_s = skew
    state = {"left": 1}

    def hook(request):
        if is_post(request) and state["left"]:
            state["left"] -= 1
            return httpx.Response(502, json={"message": "bad gateway"})
        return None
    fake.hook = hook
    ex = new_process(api)
    record = ex.submit(buy(), DAY, "live")
    assert len(matching(fake)) == 1 and len(posts(fake)) == 2 and record["status"] == "SUBMITTED"
    assert ex.audit.has("order_reconciled", "not_landed")


@pytest.mark.parametrize("skew", SKEWS)
def test_manual_order_is_never_adopted_for_an_intent(api, fake, cm, skew):
    """Crash between recording the intent and SENDING; a person places the same order by hand;
    the rerun sends ours (it was never sent) and leaves the manual one alone."""
    fake.clock_skew_s = skew
    crash_on(fake, "intent")
    with pytest.raises(Crash):
        new_process(api).submit(buy(), DAY, "live")
    manual = manual_order(fake)
    record = new_process(SchwabAPI(cm)).submit(buy(), DAY, "live")
    assert len(posts(fake)) == 1 and len(matching(fake)) == 2
    assert record["broker_order_id"] != str(manual)                  # 0 adopted foreign orders
    assert fake.orders[manual]["status"] == "WORKING"


@pytest.mark.parametrize("skew", SKEWS)
def test_landed_order_plus_manual_one_halts_for_a_person(api, fake, cm, skew, caplog):
    fake.clock_skew_s = skew
    crash_on(fake, "accepted")
    with pytest.raises(Crash):
        new_process(api).submit(buy(), DAY, "live")
    ours = matching(fake)[0]
    manual = manual_order(fake)
    rerun = new_process(SchwabAPI(cm))
    with pytest.raises(AmbiguousOrderError, match="nothing sent, kill switch set"):
        rerun.submit(buy(), DAY, "live")
    assert len(posts(fake)) == 1 and len(matching(fake)) == 2                 # nothing sent
    assert row(KEY)["status"] == "SENDING" and row(KEY)["broker_order_id"] is None  # nothing adopted
    switch = kill_switch.get()
    assert switch and KEY in switch["reason"]
    assert rerun.audit.has("order_reconciled", "ambiguous")
    for command in ("python trading_execution.py orders", f"python trading_execution.py resolve {KEY}",
                    "python live_trading.py resume"):
        assert command in caplog.text
    # the next cycle's reconcile does not guess either
    with pytest.raises(AmbiguousOrderError):
        new_process(SchwabAPI(cm)).reconcile()
    # a person resolves it: ours is the one Schwab shows as entered by the API
    person = new_process(SchwabAPI(cm))
    record = person.resolve(KEY, str(ours), "checked on schwab.com")
    assert record["status"] == "SUBMITTED" and record["broker_order_id"] == str(ours)
    assert person.audit.has("order_reconciled", "resolved_adopted")
    kill_switch.clear("resolved", audit=Recorder())
    assert new_process(SchwabAPI(cm)).submit(buy(), DAY, "live")["broker_order_id"] == str(ours)
    assert len(posts(fake)) == 1
    assert str(manual) not in {row(KEY)["broker_order_id"]}


@pytest.mark.parametrize("skew", SKEWS)
@pytest.mark.parametrize("kind", ["request", "accepted"])
def test_same_order_placed_by_hand_earlier_is_in_the_snapshot_never_a_candidate(api, fake, cm, skew, kind):
    """A person bought the same 10 AAPL by hand an hour ago (Schwab's clock): it is in our snapshot,
    so the rerun neither adopts it (ours did not land) nor calls it a second candidate (ours did)."""
    fake.clock_skew_s = skew - 3600
    manual = manual_order(fake)
    fake.clock_skew_s = skew
    crash_on(fake, kind)
    with pytest.raises(Crash):
        new_process(api).submit(buy(), DAY, "live")
    if kind == "accepted":    # ours is the only candidate (the manual one is in the snapshot): a person confirms it
        with pytest.raises(AmbiguousOrderError, match=r"candidates: \d+\)") as raised:
            new_process(SchwabAPI(cm)).submit(buy(), DAY, "live")
        assert str(manual) not in str(raised.value).split("candidates:")[1]
        assert len(matching(fake)) == 2 and len(posts(fake)) == 1 and row(KEY)["broker_order_id"] is None
        return
    record = new_process(SchwabAPI(cm)).submit(buy(), DAY, "live")
    assert len(matching(fake)) == 2 and record["broker_order_id"] != str(manual)
    assert len(posts(fake)) == 2 and kill_switch.get() is None


def test_lone_match_entered_long_after_the_snapshot_is_left_to_a_person(api, fake, cm):
    """Ours never reached Schwab; ten minutes later (Schwab's clock) a person places the same order:
    the only candidate is far later than any request of ours could have arrived: not adopted."""
    crash_on(fake, "request")
    with pytest.raises(Crash):
        new_process(api).submit(buy(), DAY, "live")
    fake.clock_skew_s += C.ORDER_ADOPT_MAX_DELAY_S + 60
    manual_order(fake)
    with pytest.raises(AmbiguousOrderError, match="may be someone else's"):
        new_process(SchwabAPI(cm)).submit(buy(), DAY, "live")
    assert len(posts(fake)) == 1 and row(KEY)["broker_order_id"] is None and kill_switch.get()


def test_order_linked_to_another_record_is_not_a_candidate(api, fake, cm):
    """Two of our own orders with the same symbol, side and quantity (two keys): the rerun of the
    second never takes the first one's order."""
    ex = new_process(api)
    first = ex.submit(dict(buy(), client_key="first"), DAY, "live")
    crash_on(fake, "request")
    with pytest.raises(Crash):
        new_process(SchwabAPI(cm)).submit(dict(buy(), client_key="second"), DAY, "live")
    # the first one went in after the second's snapshot? no: simulate it by dropping it from the snapshot
    conn = state_db.connect()
    snap = json.loads(row("second")["snapshot"])
    snap["order_ids"] = [i for i in snap["order_ids"] if i != first["broker_order_id"]]
    with state_db.transaction(conn):
        conn.execute("UPDATE orders SET snapshot = ? WHERE client_key = 'second'", (json.dumps(snap),))
    second = new_process(SchwabAPI(cm)).submit(dict(buy(), client_key="second"), DAY, "live")
    assert second["broker_order_id"] != first["broker_order_id"] and len(matching(fake)) == 2


def test_reconcile_settles_sending_rows_at_cycle_start(api, fake, cm):
    crash_on(fake, "accepted")
    with pytest.raises(Crash):
        new_process(api).submit(buy(), DAY, "live")
    crash_on(fake, "request")
    with pytest.raises(Crash):
        new_process(SchwabAPI(cm)).submit(buy("MSFT", 5), DAY, "live")
    with pytest.raises(AmbiguousOrderError, match=KEY):      # AAPL's lone match: a person decides
        new_process(SchwabAPI(cm)).reconcile()
    assert row(KEY)["status"] == "SENDING" and row(KEY)["broker_order_id"] is None
    msft = row(client_key(DAY, "MSFT", "BUY"))                 # every row was handled before the raise
    assert msft["status"] == "INTENDED" and msft["broker_order_id"] is None      # sent when wanted
    assert len(posts(fake)) == 2


# ------------------------------------------------------------------ the paper broker, same code path
class CrashingPaper(PaperBroker):
    """The real paper broker, killed right after it stored (and filled) the order."""
    crash = True

    def place_order(self, order):
        order_id = super().place_order(order)
        if self.crash:
            raise Crash("killed after the paper broker took the order")
        return order_id


def test_paper_crash_after_accept_is_adopted_by_its_client_key_despite_a_manual_twin():
    broker = CrashingPaper(prices={"AAPL": 100.0}, as_of=DAY)
    with pytest.raises(Crash):
        new_process(broker).submit(buy(), DAY, "paper")
    assert row(KEY)["status"] == "SENDING"
    PaperBroker().place_order(dict(buy(), client_key="by-hand"))     # the same order, by hand
    ex = new_process(PaperBroker())
    record = ex.submit(buy(), DAY, "paper")
    conn = state_db.connect()
    paper = [dict(r) for r in conn.execute("SELECT * FROM paper_orders ORDER BY seq")]
    assert [p["client_key"] for p in paper] == [KEY, "by-hand"]
    assert record["broker_order_id"] == paper[0]["order_id"] and ex.audit.has("order_reconciled", "adopted")
    assert kill_switch.get() is None


# ------------------------------------------------------------------ a stop that stops
def test_halt_between_two_submissions_stops_the_second_paper():
    ex = new_process(PaperBroker(prices={"AAPL": 100.0, "MSFT": 50.0}, as_of=DAY))
    ex.submit(buy(), DAY, "paper")
    kill_switch.halt("operator", conn=state_db.connect(), audit=Recorder())   # another process
    with pytest.raises(KillSwitchSet):
        ex.submit(buy("MSFT", 5), DAY, "paper")
    conn = state_db.connect()
    assert conn.execute("SELECT COUNT(*) FROM paper_orders").fetchone()[0] == 1
    assert row(client_key(DAY, "MSFT", "BUY"))["status"] == "INTENDED"
    assert ex.halted and ex.audit.has("order_submit", "halted")


def test_halt_committed_while_the_snapshot_is_taken_stops_the_order(api, fake):
    """The switch is read in the transaction that marks SENDING: a halt that lands after the early
    check but before that transaction still stops the order."""
    ex = new_process(api)
    first = ex.submit(buy(), DAY, "live")

    def hook(request):
        if is_list(request):
            fake.hook = None
            kill_switch.halt("halt from another terminal", conn=state_db.connect(), audit=Recorder())
        return None
    fake.hook = hook
    with pytest.raises(KillSwitchSet):
        ex.submit(buy("MSFT", 5), DAY, "live")
    assert len(posts(fake)) == 1
    # by default the cycle's unfilled orders are cancelled
    assert fake.orders[int(first["broker_order_id"])]["status"] == "CANCELED"
    assert row(KEY)["status"] == "CANCELED" and ex.audit.has("order_cancel", "kill_switch")


def test_halt_during_fill_polling_cancels_unfilled_paper():
    broker = PaperBroker(prices={"AAPL": 100.0}, as_of=DAY)
    polls = []

    def sleep(_):
        polls.append(1)
        if len(polls) == 2:
            kill_switch.halt("stop now", conn=state_db.connect(), audit=Recorder())
    ex = OrderExecutor(broker=broker, conn=state_db.connect(), audit=Recorder(), sleep=sleep)
    limit = dict(buy(), order_type="LIMIT", limit_price=90.0)          # not marketable: WORKING
    record = ex.submit(limit, DAY, "paper")
    [final] = ex.wait_for_fills([record["client_key"]], timeout_s=60, poll_s=0)
    assert len(polls) == 2 and final["status"] == "CANCELED"
    assert broker.get_order(record["broker_order_id"])["status"] == "CANCELED"
    assert ex.halted["reason"] == "stop now" and ex.audit.has("order_cancel", "kill_switch")


def test_halt_during_fill_polling_cancels_unfilled_schwab(api, fake):
    ex = OrderExecutor(broker=api, conn=state_db.connect(), audit=Recorder(),
                       sleep=lambda s: kill_switch.halt("stop", conn=state_db.connect(), audit=Recorder()))
    record = ex.submit(buy(), DAY, "live")
    [final] = ex.wait_for_fills([record["client_key"]], timeout_s=60, poll_s=0)
    assert final["status"] == "CANCELED"
    assert [r.method for r in fake.requests].count("DELETE") == 1


def test_halt_can_leave_orders_working_when_told(api, fake):
    ex = OrderExecutor(broker=api, conn=state_db.connect(), audit=Recorder(), cancel_on_halt=False,
                       sleep=lambda s: kill_switch.halt("stop", conn=state_db.connect(), audit=Recorder()))
    record = ex.submit(buy(), DAY, "live")
    [final] = ex.wait_for_fills([record["client_key"]], timeout_s=60, poll_s=0)
    assert final["status"] == "SUBMITTED" and "DELETE" not in [r.method for r in fake.requests]


# ------------------------------------------------------------------ flatten
def test_flatten_closes_under_the_kill_switch_and_a_rerun_closes_nothing_twice():
    broker = PaperBroker(prices={"AAPL": 100.0, "MSFT": 50.0}, as_of=DAY)
    ex = new_process(broker)
    ex.submit(buy(), DAY, "paper")
    ex.submit(buy("MSFT", 4, "SELL_SHORT"), DAY, "paper")
    kill_switch.halt("flatten", audit=Recorder())
    done = ex.flatten(date(2025, 10, 7), "paper", timeout_s=0)
    assert broker.get_positions() == {}
    assert sorted(r["client_key"] for r in done["orders"]) == [
        flatten_key("2025-10-07", "AAPL", "SELL"), flatten_key("2025-10-07", "MSFT", "BUY_TO_COVER")]
    assert kill_switch.get() is not None                     # the switch stays on after flatten
    again = new_process(PaperBroker()).flatten("2025-10-07", "paper", timeout_s=0)
    assert again["orders"] == [] and state_db.connect().execute(
        "SELECT COUNT(*) FROM paper_orders").fetchone()[0] == 4


def test_flatten_rerun_keeps_its_working_order_and_retries_only_after_it_ended(api, fake, cm):
    fake.positions = [{"instrument": {"symbol": "AAPL", "assetType": "EQUITY"}, "longQuantity": 10,
                       "shortQuantity": 0, "averageLongPrice": 100.0, "marketValue": 1000.0}]
    manual = manual_order(fake, "MSFT", "BUY", 3)               # someone's open order: flatten cancels all
    first = new_process(api).flatten(DAY, "live", wait=False)
    assert len(posts(fake)) == 1 and first["cancelled"] == 1 and fake.orders[manual]["status"] == "CANCELED"
    ours = int(first["orders"][0]["broker_order_id"])
    again = new_process(SchwabAPI(cm)).flatten(DAY, "live", wait=False)      # the position is still open
    assert len(posts(fake)) == 1 and again["cancelled"] == 0              # neither resent nor cancelled
    assert fake.orders[ours]["status"] == "WORKING"
    fake.orders[ours]["status"] = "CANCELED"                               # it ended unfilled
    third = new_process(SchwabAPI(cm)).flatten(DAY, "live", wait=False)
    assert len(posts(fake)) == 2 and third["orders"][0]["client_key"] == flatten_key(DAY, "AAPL", "SELL", 2)


# ------------------------------------------------------------------ external orders and positions
def test_external_orders_and_positions_are_reported_never_adopted():
    broker = PaperBroker(prices={"AAPL": 100.0, "MSFT": 50.0}, as_of=DAY)
    ex = new_process(broker)
    ex.submit(buy(), DAY, "paper")
    ex.record_positions(DAY, "paper")
    assert ex.external_activity("paper") == {"orders": [], "positions": [],
                                             "baseline": ex.external_activity("paper")["baseline"]}
    ex.submit(buy("AAPL", 5, "SELL"), "2025-10-07", "paper")             # ours: explained
    broker.place_order({"symbol": "MSFT", "side": "BUY", "quantity": 7, "client_key": "by-hand"})
    found = new_process(PaperBroker()).external_activity("paper")
    assert [(o["symbol"], o["quantity"]) for o in found["orders"]] == [("MSFT", 7)]
    assert found["positions"] == [{"symbol": "MSFT", "expected": 0, "actual": 7, "difference": 7}]
    later = new_process(PaperBroker())
    second = later.external_activity("paper")
    assert second["orders"] == []                     # filled and reported once
    assert second["positions"] and later.audit.has("external_position", "found")
    conn = state_db.connect()
    assert conn.execute("SELECT COUNT(*) FROM orders WHERE broker_order_id = "
                        "(SELECT order_id FROM paper_orders WHERE client_key = 'by-hand')").fetchone()[0] == 0


def test_open_external_order_is_reported_every_cycle(api, fake):
    manual_order(fake, "MSFT", "SELL", 2)
    for _ in range(2):
        ex = new_process(api)
        assert [o["symbol"] for o in ex.external_activity("live")["orders"]] == ["MSFT"]
        assert ex.audit.has("external_order", "found")


# ------------------------------------------------------------------ schema migration and the CLI
def test_existing_orders_table_gains_the_snapshot_column(trading_home):
    path = state_db.db_path()
    old = sqlite3.connect(path)
    old.execute("""CREATE TABLE orders (client_key TEXT PRIMARY KEY, cycle_date TEXT NOT NULL,
        mode TEXT NOT NULL, symbol TEXT NOT NULL, side TEXT NOT NULL, quantity INTEGER NOT NULL,
        order_type TEXT NOT NULL, limit_price REAL, reference_price REAL, reason TEXT,
        status TEXT NOT NULL, broker_order_id TEXT, filled_quantity INTEGER NOT NULL DEFAULT 0,
        avg_fill_price REAL, error TEXT, created_at TEXT NOT NULL, submitted_at TEXT,
        updated_at TEXT NOT NULL)""")
    old.execute("INSERT INTO orders(client_key, cycle_date, mode, symbol, side, quantity, order_type, "
                "status, created_at, updated_at) VALUES ('k', ?, 'paper', 'AAPL', 'BUY', 1, 'MARKET', "
                "'FILLED', 'x', 'x')", (DAY,))
    old.commit()
    old.close()
    ex = OrderExecutor(broker=PaperBroker(), conn=state_db.connect())
    assert ex.book.get("k")["status"] == "FILLED" and "snapshot" in ex.book.get("k")


def test_cli_lists_orders_ours_marked(api, fake, cm, monkeypatch, capsys):
    import trading_execution
    monkeypatch.setenv("TRADING_MODE", "live")
    new_process(api).submit(buy(), DAY, "live")
    manual_order(fake, "MSFT", "SELL", 2)
    assert trading_execution.main(["orders"]) == 0
    out = capsys.readouterr().out
    assert KEY in out and "NOT OURS" in out and "MSFT" in out


# ------------------------------------------------------------------ OrderRecovery from its collaborators
# In-process with a fake broker (tests/fake_broker.py): the book, the gateway and recovery are real.
def recovery_parts(broker):
    """(book, recovery, executor) sharing one connection, gateway and audit, as the executor builds them."""
    conn = state_db.connect()
    gateway = BrokerGateway(CircuitBreaker(conn), broker, sleep=lambda s: None)
    ex = OrderExecutor(conn=conn, audit=Recorder(), gateway=gateway)
    book = OrderBook(conn)
    return book, OrderRecovery(book, gateway, ex.audit, ex.refresh), ex


def sending_row(book, recovery, symbol="AAPL", qty=10):
    """A row left SENDING by a crash, with the snapshot taken right before the request."""
    key, _ = book.record_intent(buy(symbol, qty), DAY, "live")
    book.mark_sending(key, recovery.snapshot())
    return book.get(key)


def test_recovery_adopts_the_one_order_that_landed_with_our_client_key():
    broker = FakeBroker(keeps_client_key=True)
    broker.add_order("AAPL", "BUY", 10)                      # before the snapshot: not ours
    book, recovery, _ = recovery_parts(broker)
    row_ = sending_row(book, recovery)
    landed = broker.add_order("AAPL", "BUY", 10, client_key=row_["client_key"])   # arrived, answer lost
    broker.add_order("AAPL", "BUY", 5)                       # another quantity: not a candidate
    record = recovery.settle_sending(row_, "rerun")
    assert record["status"] == SUBMITTED and record["broker_order_id"] == landed
    assert recovery.audit.has("order_reconciled", "adopted") and broker.calls["place_order"] == 0


def test_recovery_sends_again_what_did_not_land():
    broker = FakeBroker()
    book, recovery, ex = recovery_parts(broker)
    row_ = sending_row(book, recovery)
    assert recovery.settle_sending(row_, "reconcile")["status"] == INTENDED
    assert recovery.audit.has("order_reconciled", "not_landed")
    record = ex.submit(buy(), DAY, "live")                   # the rerun sends it, once
    assert record["status"] == SUBMITTED and broker.calls["place_order"] == 1 and len(broker.orders) == 1


def test_recovery_halts_for_a_person_when_two_orders_match():
    broker = FakeBroker()
    book, recovery, _ = recovery_parts(broker)
    row_ = sending_row(book, recovery)
    ids = [broker.add_order("AAPL", "BUY", 10), broker.add_order("AAPL", "BUY", 10)]
    with pytest.raises(AmbiguousOrderError, match="2 broker orders entered since its snapshot match it"):
        recovery.settle_sending(row_, "reconcile")
    assert kill_switch.get() and recovery.halted == kill_switch.get()
    assert book.get(row_["client_key"])["status"] == SENDING and ids[0] in book.get(row_["client_key"])["error"]
    assert broker.calls["place_order"] == 0


def test_send_loop_row_is_sending_at_the_request_and_an_ambiguous_failure_is_adopted():
    broker = FakeBroker(keeps_client_key=True)
    book, _, ex = recovery_parts(broker)
    at_request = []

    def lost_answer(order):              # the broker takes the order, the answer never comes
        at_request.append(OrderBook(state_db.connect()).get(order["client_key"])["status"])
        broker.add_order(order["symbol"], order["side"], order["quantity"], client_key=order["client_key"])
        return OrderStatusUnknownError("lost")
    broker.fail("place_order", lost_answer)
    record = ex.submit(buy(), DAY, "live")
    assert at_request == [SENDING]
    assert record["status"] == SUBMITTED and len(broker.orders) == 1 and broker.calls["place_order"] == 1
    assert ex.audit.has("order_reconciled", "adopted")


def test_reconcile_leaves_intended_settles_sending_refreshes_the_rest():
    broker = FakeBroker()
    book, recovery, ex = recovery_parts(broker)
    intended, _ = book.record_intent(buy("MSFT"), DAY, "live")
    sending = sending_row(book, recovery, "JPM")["client_key"]
    submitted = ex.submit(buy("AAPL"), DAY, "live")
    broker.fill(submitted["broker_order_id"], 101.0)
    done = recovery.reconcile()
    assert [r["client_key"] for r in done] == [submitted["client_key"]] and done[0]["status"] == "FILLED"
    assert book.get(intended)["status"] == INTENDED and book.get(sending)["status"] == INTENDED


def test_resolve_by_hand():
    broker = FakeBroker()
    book, recovery, _ = recovery_parts(broker)
    row_ = sending_row(book, recovery)
    wrong = broker.add_order("AAPL", "BUY", 3)
    with pytest.raises(UserFacingError, match="pick the matching id"):
        recovery.resolve(row_["client_key"], wrong, "ticket 1")
    ours = broker.add_order("AAPL", "BUY", 10)
    record = recovery.resolve(row_["client_key"], ours, "ticket 1")
    assert record["status"] == SUBMITTED and record["broker_order_id"] == ours
    assert recovery.audit.has("order_reconciled", "resolved_adopted")
    with pytest.raises(UserFacingError, match="nothing to resolve"):
        recovery.resolve(row_["client_key"], None, "again")
    other = sending_row(book, recovery, "MSFT")
    assert recovery.resolve(other["client_key"], None, "none is ours")["status"] == "CANCELED"
