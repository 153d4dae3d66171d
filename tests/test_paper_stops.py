"""PaperBroker: resting protective stops (GTC), their fills by order_prices.stop_fill, and collared
limit orders at the next open (issue 22 points 1-2, the simulation side)."""
from datetime import date, datetime, timedelta, timezone

import pandas as pd
import pytest

import order_prices
import paper_broker
import state_db
from broker_base import OrderRejectedError
from paper_broker import PaperBroker
from settings import TradingSettings

MON = date(2025, 3, 3)
TUE, WED, THU = MON + timedelta(days=1), MON + timedelta(days=2), MON + timedelta(days=3)
COSTS = TradingSettings.from_constants().replace(slippage_bps=0.0, commission_per_share=0.0, min_commission=1.0)


def stop(side, qty, price, key, duration="GOOD_TILL_CANCEL", symbol="AAPL"):
    return {"symbol": symbol, "side": side, "quantity": qty, "order_type": "STOP", "stop_price": price,
            "duration": duration, "client_key": key}


def market(side, qty, key, symbol="AAPL"):
    return {"symbol": symbol, "side": side, "quantity": qty, "order_type": "MARKET", "client_key": key}


def bar(day, open_, low, high, symbol="AAPL"):
    return {day: {symbol: {"open": open_, "low": low, "high": high}}}


def long_broker(qty=100, fill="close"):
    """An account holding ``qty`` AAPL bought at 100 on MON (no slippage, $1 commission)."""
    b = PaperBroker(prices={"AAPL": 100.0}, as_of=MON, fill=fill, settings=COSTS)
    b.place_order(market("BUY", qty, "entry"))
    if fill == "close":
        assert b.get_positions()["AAPL"]["quantity"] == qty
    return b


def test_a_stop_rests_then_fills_at_its_price_inside_the_bar():
    b = long_broker()
    oid = b.place_order(stop("SELL", 100, 95.0, "stop-1"))
    got = b.get_order(oid)
    assert got["status"] == "WORKING" and got["stop_price"] == 95.0 and got["duration"] == "GOOD_TILL_CANCEL"
    assert [o["order_id"] for o in b.get_open_orders()] == [oid]
    b.set_prices({"AAPL": 97.0}, as_of=TUE, bars=bar(TUE, 99.0, 96.0, 100.0))     # not reached: rests
    assert b.get_order(oid)["status"] == "WORKING"
    cash = b.get_account_balance()["cash"]
    b.set_prices({"AAPL": 96.0}, as_of=WED, bars=bar(WED, 98.0, 94.0, 98.5))      # the low reaches 95
    got = b.get_order(oid)
    assert got["status"] == "FILLED" and got["avg_fill_price"] == 95.0 and got["filled_quantity"] == 100
    assert "triggered on 2025-03-05" in got["note"]
    assert b.get_positions() == {} and b.get_open_orders() == []
    assert b.get_account_balance()["cash"] == pytest.approx(cash + 100 * 95.0 - 1.0)
    trades = [t for t in b.get_transactions(datetime(2000, 1, 1, tzinfo=timezone.utc),
                                            datetime(2100, 1, 1, tzinfo=timezone.utc)) if t["order_id"] == oid]
    assert len(trades) == 1 and trades[0]["quantity"] == {"AAPL": -100}


def test_a_long_stop_fills_at_the_open_when_the_open_gaps_through_it():
    b = long_broker()
    oid = b.place_order(stop("SELL", 100, 95.0, "stop-gap"))
    b.set_prices({"AAPL": 92.0}, as_of=TUE, bars=bar(TUE, 92.0, 90.0, 93.0))      # an 8 % gap down
    got = b.get_order(oid)
    assert got["status"] == "FILLED" and got["avg_fill_price"] == 92.0 == order_prices.stop_fill(
        "long", 95.0, 92.0, 90.0, 93.0)
    assert "gapped through" in got["note"]


def test_a_short_stop_mirrors_with_the_high():
    b = PaperBroker(prices={"AAPL": 100.0}, as_of=MON, fill="close", settings=COSTS)
    b.place_order(market("SELL_SHORT", 10, "short"))
    inside = b.place_order(stop("BUY_TO_COVER", 10, 105.0, "cover-stop"))
    b.set_prices({"AAPL": 104.0}, as_of=TUE, bars=bar(TUE, 101.0, 100.0, 104.9))
    assert b.get_order(inside)["status"] == "WORKING"
    b.set_prices({"AAPL": 104.0}, as_of=WED, bars=bar(WED, 102.0, 101.0, 106.0))
    assert b.get_order(inside)["avg_fill_price"] == 105.0 and b.get_positions() == {}
    b2 = PaperBroker(prices={"MSFT": 100.0}, as_of=WED, fill="close", settings=COSTS)
    b2.place_order(market("SELL_SHORT", 10, "short-2", symbol="MSFT"))
    gap = b2.place_order(stop("BUY_TO_COVER", 10, 105.0, "cover-gap", symbol="MSFT"))
    b2.set_prices({"MSFT": 108.0}, as_of=THU, bars=bar(THU, 108.0, 107.0, 109.0, symbol="MSFT"))
    assert b2.get_order(gap)["avg_fill_price"] == 108.0


def test_a_gtc_stop_survives_a_restart_and_fills_later():
    b = long_broker()
    oid = b.place_order(stop("SELL", 100, 95.0, "stop-restart"))
    again = PaperBroker(fill="close", settings=COSTS)                       # a new process, same database
    assert [o["order_id"] for o in again.get_open_orders()] == [oid]
    again.set_prices({"AAPL": 99.0}, as_of=TUE, bars=bar(TUE, 99.0, 98.0, 100.0))
    again.set_prices({"AAPL": 99.0}, as_of=WED, bars=bar(WED, 99.0, 98.0, 100.0))
    assert again.get_order(oid)["status"] == "WORKING"                      # GTC: no expiry across sessions
    third = PaperBroker(fill="next_open", settings=COSTS)
    third.set_prices({"AAPL": 94.0}, as_of=THU, bars=bar(THU, 96.0, 93.0, 96.5))
    assert third.get_order(oid)["avg_fill_price"] == 95.0


def test_a_cancelled_stop_does_not_fill_and_a_day_stop_expires():
    b = long_broker()
    oid = b.place_order(stop("SELL", 100, 95.0, "stop-cancel"))
    b.cancel_order(oid)
    assert b.get_order(oid)["status"] == "CANCELED" and b.get_open_orders() == []
    day = b.place_order(stop("SELL", 100, 90.0, "stop-day", duration="DAY"))
    b.set_prices({"AAPL": 92.0}, as_of=TUE, bars=bar(TUE, 92.0, 91.0, 93.0))    # below the cancelled stop
    assert b.get_positions()["AAPL"]["quantity"] == 100
    assert b.get_order(day)["status"] == "EXPIRED"


def test_a_stop_must_protect_a_held_position():
    b = long_broker(qty=10)
    with pytest.raises(OrderRejectedError, match="STOP order protects a position"):
        b.place_order(stop("BUY", 10, 105.0, "stop-buy"))
    with pytest.raises(OrderRejectedError, match="selling 20 AAPL but 10 are held"):
        b.place_order(stop("SELL", 20, 95.0, "stop-too-big"))


def test_without_high_and_low_the_bar_spans_the_open_and_the_close():
    b = long_broker()
    oid = b.place_order(stop("SELL", 100, 95.0, "stop-noband"))
    b.set_prices({"AAPL": 96.0}, as_of=TUE, opens={TUE: {"AAPL": 99.0}})      # 96..99: not reached
    assert b.get_order(oid)["status"] == "WORKING"
    b.set_prices({"AAPL": 94.0}, as_of=WED, opens={WED: {"AAPL": 97.0}})      # the close 94 is below 95
    assert b.get_order(oid)["avg_fill_price"] == 95.0


def test_a_stop_fills_before_the_sessions_other_orders():
    """A sell decided from the close and a stop both due at the same gap open: the stop fills
    first (the backtest engine's order), the sell finds nothing to sell and is rejected."""
    b = long_broker(fill="next_open")
    b.set_prices({"AAPL": 100.0}, as_of=TUE, opens={TUE: {"AAPL": 100.0}})
    assert b.get_positions()["AAPL"]["quantity"] == 100
    oid = b.place_order(stop("SELL", 100, 95.0, "stop-first"))
    sell = b.place_order(market("SELL", 100, "exit"))
    b.set_prices({"AAPL": 91.0}, as_of=WED, bars=bar(WED, 90.0, 89.0, 92.0))
    assert b.get_order(oid)["avg_fill_price"] == 90.0
    assert b.get_order(sell)["status"] == "REJECTED" and b.get_positions() == {}


def test_a_collared_limit_fills_at_the_next_open_inside_its_limit_else_expires():
    b = PaperBroker(prices={"AAPL": 100.0}, as_of=MON, fill="next_open",
                    settings=COSTS.replace(slippage_bps=10.0))
    limit = order_prices.collar_limit("buy", 100.0)
    fills = b.place_order({"symbol": "AAPL", "side": "BUY", "quantity": 10, "order_type": "LIMIT",
                           "limit_price": limit, "client_key": "collar-1"})
    got = b.get_order(fills)
    assert got["status"] == "WORKING" and got["pending_next_open"] and got["filled_quantity"] == 0
    b.set_prices({"AAPL": 100.2}, as_of=TUE, opens={TUE: {"AAPL": 100.3}})
    assert b.get_order(fills)["avg_fill_price"] == pytest.approx(100.3 * 1.001)   # the slipped open, inside
    capped = b.place_order({"symbol": "AAPL", "side": "BUY", "quantity": 1, "order_type": "LIMIT",
                            "limit_price": 100.5, "client_key": "collar-capped"})
    b.set_prices({"AAPL": 100.5}, as_of=WED, opens={WED: {"AAPL": 100.45}})
    assert b.get_order(capped)["avg_fill_price"] == 100.5                         # never beyond the limit
    missed = b.place_order({"symbol": "AAPL", "side": "BUY", "quantity": 10, "order_type": "LIMIT",
                            "limit_price": order_prices.collar_limit("buy", 100.5), "client_key": "collar-2"})
    b.set_prices({"AAPL": 104.0}, as_of=THU, opens={THU: {"AAPL": 103.5}})      # a 3 % gap up: beyond the collar
    got = b.get_order(missed)
    assert got["status"] == "EXPIRED" and got["filled_quantity"] == 0 and "beyond the limit" in got["note"]
    assert b.get_positions()["AAPL"]["quantity"] == 11


def test_a_resting_stop_follows_a_split():
    b = long_broker()
    oid = b.place_order(stop("SELL", 100, 95.01, "stop-split"))
    actions = pd.DataFrame([{"Date": pd.Timestamp(TUE), "Symbol": "AAPL", "Split": 2.0, "Dividend": 0.0}])
    b.apply_corporate_actions(actions, through=TUE)
    got = b.get_order(oid)
    assert (got["quantity"], got["stop_price"]) == (200, order_prices.split_stop("long", 95.01, 2.0)) == (200, 47.5)
    b.set_prices({"AAPL": 49.0}, as_of=TUE, bars=bar(TUE, 50.0, 48.0, 50.5))    # no false trigger at half price
    assert b.get_order(oid)["status"] == "WORKING" and b.get_positions()["AAPL"]["quantity"] == 200


def test_an_older_paper_database_gains_the_stop_columns():
    conn = state_db.connect(":memory:")
    state_db.ensure_schema(conn, paper_broker._PAPER_SCHEMA)                # the tables before issue 22
    conn.execute("INSERT INTO paper_orders(seq, order_id, client_key, symbol, side, quantity, order_type, status, "
                 "trade_date, entered_time, updated_at) VALUES (1, 'PAPER-000001', 'old', 'AAPL', 'BUY', 1, "
                 "'MARKET', 'FILLED', '2025-03-03', '2025-03-03T15:00:00+00:00', '2025-03-03T15:00:00+00:00')")
    conn.commit()
    b = PaperBroker(conn=conn, settings=COSTS)
    assert {"stop_price", "duration", "note"} <= {r["name"] for r in conn.execute("PRAGMA table_info(paper_orders)")}
    old = b.get_order("PAPER-000001")
    assert old["duration"] == "DAY" and old["stop_price"] is None and old["status"] == "FILLED"
