"""Protective stops and price collars on the Schwab path (issue 22 points 1, 2 and 5): schwab-py's
real client in this process against the fake Schwab on 127.0.0.1 (``schwab_routed``).

The gap day (tests/gap_day.py, shared with the paper and backtest tests): a long of GAPX holds its
GTC stop at the broker; the next session opens 8 % lower, through the stop; the fake fills the
stop at that open (``order_prices.stop_fill``, the rule the paper broker and the backtest use);
the next cycle reconciles it as ours: no external activity, no reconciliation break, the order
book holds the fill, ``status`` shows it, the alert fired, and no new stop is placed."""
from __future__ import annotations

import json

import pytest

import constants as C
import gap_day as G
import live_trading
import order_prices
import state_db
import trading_cycle
from audit_recorder import Recorder
from credential_manager import CredentialManager
from order_book import STOP_KIND
from reconcile import Reconciler
from schwab_broker import SchwabAPI
from schwab_env import fake_schwab, schwab_home, schwab_routed, store_schwab_credentials  # noqa: F401
from trading_execution import OrderExecutor

SYM = G.SYMBOL


@pytest.fixture
def alerts_sent(monkeypatch):
    sent = []
    monkeypatch.setattr("alerts.send_alert", lambda kind, message, **kw: sent.append((kind, message)) or True)
    return sent


@pytest.fixture
def live(schwab_routed, schwab_home, monkeypatch, alerts_sent):
    """(fake, new_executor): a fresh executor per call is a new run on the same state database."""
    G.use_tunables(monkeypatch)
    fake = schwab_routed
    fake.fill_after_polls = 0                        # a MARKET order fills on arrival at ``prices``
    store_schwab_credentials(schwab_home)
    conn = state_db.connect()

    def new_executor():
        api = SchwabAPI(CredentialManager(home=schwab_home, key_dir=schwab_home / "keys"))
        return OrderExecutor(conn=conn, audit=Recorder(), broker=api, sleep=lambda s: None)
    return fake, new_executor


def _buy(executor, qty, day, side="BUY", symbol=SYM):
    """Submit a market order and wait for its fill (the cycle's send and fill wait)."""
    record = executor.submit({"symbol": symbol, "side": side, "quantity": qty, "order_type": "MARKET",
                              "price": 100.0}, day, "live")
    return executor.wait_for_fills([record["client_key"]])[0]


def _stops_at(fake):
    return fake.open_orders("STOP")


def _posted_stop_bodies(fake):
    return [m["body"] for m in fake.meta.values() if m["body"].get("orderType") == "STOP"]


def _closes():
    return {SYM: G.closes(SYM, G.DECIDED)}


def test_the_gap_day_stop_fills_at_the_open_and_the_next_cycle_reconciles_it_as_ours(live, alerts_sent, capsys):
    fake, new_executor = live
    entry = G.BARS[SYM][G.ENTRY_DAY]["open"]
    fake.set_price(SYM, entry)
    day1 = str(G.ENTRY_DAY)

    # cycle 1: the entry fills, then ONE GTC stop for the whole position rests at the broker
    ex = new_executor()
    recon = Reconciler(ex.book, ex.gateway, ex.audit, ex.external)
    assert recon.run("live")["first"]
    assert _buy(ex, G.QUANTITY, day1)["status"] == "FILLED"
    placed = ex.protect(day1, "live", _closes())
    assert len(placed["placed"]) == 1 and placed["failed"] == []
    stops = _stops_at(fake)
    assert len(stops) == 1
    stop = stops[0]
    want = G.expected_stop_price(entry, through=G.DECIDED)   # placed on the morning of ENTRY_DAY
    assert stop["orderType"] == "STOP" and stop["duration"] == "GOOD_TILL_CANCEL" and stop["session"] == "NORMAL"
    assert stop["stopPrice"] == pytest.approx(want)
    assert stop["orderLegCollection"][0]["instruction"] == "SELL" and stop["quantity"] == G.QUANTITY
    body = _posted_stop_bodies(fake)[0]                     # what schwab-py's builder sent
    assert body["stopPrice"] == order_prices.price_text(want) and isinstance(body["stopPrice"], str)
    row = ex.book.get(placed["placed"][0])
    assert row["kind"] == STOP_KIND and row["status"] == "SUBMITTED" and row["broker_order_id"] == str(stop["orderId"])
    assert ex.audit.has("stop_placed", "submitted")
    # a rerun the same session keeps it: never two stops
    assert new_executor().protect(day1, "live", _closes())["placed"] == []
    assert len(_stops_at(fake)) == 1 and len(_posted_stop_bodies(fake)) == 1
    ex.record_positions(day1, "live")
    assert recon.run("live")["breaks"] == []
    # a halt (the kill switch's cancel of the cycle's unfilled orders) leaves the stop resting
    assert ex.cancel_unfilled(day1) == []
    assert len(_stops_at(fake)) == 1

    # the gap day: the open is 8 % below the last close, through the stop: filled at the open
    filled = fake.advance_session({SYM: G.BARS[SYM][G.GAP_DAY]})
    assert [o["orderId"] for o in filled] == [stop["orderId"]]
    assert fake.position_quantities() == {}
    gap_open = G.expected_stop_fill(want)

    # cycle 2: recovery refreshes our stop: FILLED, ours by its broker id
    ex2 = new_executor()
    ex2.reconcile()
    row = ex2.book.get(row["client_key"])
    assert row["status"] == "FILLED" and row["filled_quantity"] == G.QUANTITY
    assert row["avg_fill_price"] == pytest.approx(gap_open)
    assert ex2.audit.has("stop_filled", "filled")
    assert [k for k, _ in alerts_sent] == ["stop_filled"] and "PROTECTIVE STOP FILLED" in alerts_sent[0][1]
    report = ex2.external_activity("live")
    assert report["orders"] == [] and report["positions"] == []
    assert not ex2.audit.has("external_order", "found") and not ex2.audit.has("external_position", "found")
    done = Reconciler(ex2.book, ex2.gateway, ex2.audit, ex2.external).run("live")
    assert done["breaks"] == []
    assert [t["kind"] for t in done["explained"]] == ["our_fill"]
    # no new stop for the closed position
    again = ex2.protect(str(G.GAP_DAY), "live", _closes())
    assert again["placed"] == [] and _stops_at(fake) == [] and len(_posted_stop_bodies(fake)) == 1
    # status: the fired stop, none resting
    stops_status = live_trading._status_data(False)["stops"]
    assert stops_status["resting"] == []
    assert [(s["symbol"], s["filled_quantity"]) for s in stops_status["fired"]] == [(SYM, G.QUANTITY)]
    capsys.readouterr()
    live_trading.cmd_status(False, False)
    out = capsys.readouterr().out
    assert "protective stops: 0 resting at the broker, 1 fired" in out
    assert "FIRED   SELL" in out and f"{SYM}" in out and f"filled at {gap_open:.2f}" in out


def test_the_stop_is_replaced_when_the_size_changes_and_cancelled_when_we_close(live, alerts_sent):
    fake, new_executor = live
    fake.set_price(SYM, 100.0)
    ex = new_executor()
    day = "2026-11-24"
    _buy(ex, 100, day)
    first = ex.protect(day, "live", _closes())["placed"][0]
    # the next session adds 50: the old stop is cancelled first, then one stop for 150
    ex2 = new_executor()
    _buy(ex2, 50, "2026-11-25")
    done = ex2.protect("2026-11-25", "live", _closes())
    assert done["cancelled"] == [first] and len(done["placed"]) == 1
    working = _stops_at(fake)
    assert [(o["quantity"], o["orderLegCollection"][0]["instruction"]) for o in working] == [(150, "SELL")]
    assert ex2.book.get(first)["status"] == "CANCELED"
    cancel_at = next(i for i, r in enumerate(fake.requests) if r["method"] == "DELETE")
    post_at = max(i for i, r in enumerate(fake.requests) if r["method"] == "POST" and r["path"].endswith("/orders"))
    assert cancel_at < post_at                                  # cancel the old, then place the new
    # we close the position: its stop is cancelled, none is placed
    ex3 = new_executor()
    _buy(ex3, 150, "2026-11-26", side="SELL")
    done = ex3.protect("2026-11-26", "live", _closes())
    assert done["placed"] == [] and len(done["cancelled"]) == 1 and _stops_at(fake) == []
    assert "stop_filled" not in [k for k, _ in alerts_sent]
    # a stop at the broker for a position that is gone, and a second stop: both cancelled
    _buy(ex3, 10, "2026-11-27", side="SELL_SHORT")
    ex3.protect("2026-11-27", "live", _closes())
    short_stop = _stops_at(fake)
    assert [(o["quantity"], o["orderLegCollection"][0]["instruction"]) for o in short_stop] == [(10, "BUY_TO_COVER")]
    assert short_stop[0]["stopPrice"] > 100.0


def test_flatten_cancels_the_stops_after_the_positions_are_closed(live, alerts_sent, capsys):
    fake, new_executor = live
    fake.set_price(SYM, 100.0)
    ex = new_executor()
    _buy(ex, 100, "2026-11-24")
    ex.protect("2026-11-24", "live", _closes())
    stop_id = _stops_at(fake)[0]["orderId"]
    # a halt keeps the stop and says so
    live_trading.cmd_halt("drill: stops stay")
    assert "resting stops stay at the broker (1)" in capsys.readouterr().out
    assert fake.orders[stop_id]["status"] == "WORKING"
    done = new_executor().flatten("2026-11-24", "live", timeout_s=0)
    assert done["flat"] and len(done["stops_cancelled"]) == 1 and done["stops_kept"] == []
    assert fake.orders[stop_id]["status"] == "CANCELED" and fake.position_quantities() == {}
    close_post = max(i for i, r in enumerate(fake.requests) if r["method"] == "POST" and r["path"].endswith("/orders"))
    stop_cancel = next(i for i, r in enumerate(fake.requests)
                       if r["method"] == "DELETE" and r["path"].endswith(f"/orders/{stop_id}"))
    assert close_post < stop_cancel                              # the stop went AFTER the close


def test_collared_order_beyond_its_collar_is_cancelled_reported_and_retried_once(live, alerts_sent, monkeypatch):
    fake, new_executor = live
    monkeypatch.setattr(C, "ORDER_TYPE", "limit_collar")
    monkeypatch.setattr(C, "ORDER_FILL_TIMEOUT_S", 0.0)
    monkeypatch.setattr(C, "PROTECTIVE_STOPS", False)
    close = 100.0
    fake.set_price(SYM, close * 1.03)                 # the market is 3 % above the close: beyond 50 bps
    ex = new_executor()
    day = "2026-11-24"
    approved = [{"symbol": SYM, "side": "BUY", "quantity": 10, "price": close}]
    keys, failures = trading_cycle._send(ex, approved, day, "live", {SYM: close})
    assert failures == 0 and len(keys) == 1
    sent = fake.posted_orders()[0]
    assert sent["orderType"] == "LIMIT" and sent["duration"] == "DAY"
    assert sent["price"] == pytest.approx(order_prices.collar_limit("buy", close))
    trading_cycle._wait_for_fills(ex, keys)
    assert ex.book.get(keys[0])["status"] == "CANCELED"
    trading_cycle._retry_collared(ex, keys, day, "live")
    posted = fake.posted_orders()
    assert len(posted) == 2 and all(o["status"] == "CANCELED" for o in posted)   # the retry did not fill either
    assert ex.book.get(keys[0] + ":retry")["status"] == "CANCELED"
    assert [k for k, _ in alerts_sent] == ["collar_unfilled", "collar_unfilled"]
    assert "retried once as" in alerts_sent[0][1] and "one retry of the session" in alerts_sent[1][1]
    assert ex.audit.has("collar_unfilled", "retrying") and ex.audit.has("collar_unfilled", "retry_failed")
    # a rerun of the cycle the same session never sends a third
    ex2 = new_executor()
    keys2, _ = trading_cycle._send(ex2, approved, day, "live", {SYM: close})
    trading_cycle._retry_collared(ex2, keys2, day, "live")
    assert len(fake.posted_orders()) == 2
    # inside the collar it fills as a LIMIT at the market
    fake.set_price(SYM, close * 1.001)
    keys3, _ = trading_cycle._send(ex2, approved, "2026-11-25", "live", {SYM: close})
    final = trading_cycle._wait_for_fills(ex2, keys3)
    assert final[0]["status"] == "FILLED"


def test_collar_off_sends_market_orders(live):
    fake, new_executor = live
    fake.set_price(SYM, 100.0)
    keys, _ = trading_cycle._send(new_executor(), [{"symbol": SYM, "side": "BUY", "quantity": 1, "price": 100.0}],
                                  "2026-11-24", "live", {SYM: 100.0})
    assert fake.posted_orders()[0]["orderType"] == "MARKET" and keys


def test_stops_off_places_none(live, monkeypatch):
    fake, new_executor = live
    monkeypatch.setattr(C, "PROTECTIVE_STOPS", False)
    fake.set_price(SYM, 100.0)
    ex = new_executor()
    _buy(ex, 10, "2026-11-24")
    assert ex.protect("2026-11-24", "live", _closes())["placed"] == [] and _stops_at(fake) == []


def test_order_book_migration_adds_kind_and_backfills_it(tmp_path):
    import sqlite3
    import order_book
    conn = sqlite3.connect(tmp_path / "old.db")
    conn.row_factory = sqlite3.Row
    conn.execute(order_book.SCHEMA[0].replace("snapshot TEXT,\n        kind TEXT,\n        stop_price REAL,\n"
                                              "        duration TEXT", "snapshot TEXT"))
    for key, side in (("2026-11-20:AAPL:BUY", "BUY"), ("2026-11-20:MSFT:SELL", "SELL"),
                      ("flatten-2026-11-21-AAPL-SELL", "SELL")):
        conn.execute("INSERT INTO orders(client_key, cycle_date, mode, symbol, side, quantity, order_type, status,"
                     " created_at, updated_at) VALUES(?, '2026-11-20', 'live', 'X', ?, 1, 'MARKET', 'FILLED', 't', 't')",
                     (key, side))
    conn.commit()
    order_book.ensure_schema(conn)
    kinds = {r["client_key"]: r["kind"] for r in conn.execute("SELECT client_key, kind FROM orders")}
    assert kinds == {"2026-11-20:AAPL:BUY": "entry", "2026-11-20:MSFT:SELL": "exit",
                     "flatten-2026-11-21-AAPL-SELL": "flatten"}
    assert json.dumps(order_book.OrderBook(conn).resting_stops()) == "[]"
