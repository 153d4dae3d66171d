"""P&L accounting against a real PaperBroker in the test's TRADING_HOME: every figure is
recomputed by hand from the fill prices (reference price +/- PAPER_SLIPPAGE_BPS)."""
import json
from datetime import date

import pytest

import constants as C
import pnl
import state_db
from broker_base import slippage_price
from paper_broker import PaperBroker
from settings import TradingSettings

D1, D2, D3 = date(2025, 3, 3), date(2025, 3, 4), date(2025, 3, 5)


def order(side, qty, symbol, key):
    return {"symbol": symbol, "side": side, "quantity": qty, "order_type": "MARKET",
            "limit_price": None, "client_key": key}


def buy(p):
    return slippage_price(p, "BUY")


def sell(p):
    return slippage_price(p, "SELL")


@pytest.fixture
def three_sessions():
    """Long AAPL in two lots, short MSFT; then sell 15 AAPL and cover MSFT on day 3."""
    conn = state_db.connect()
    b = PaperBroker(conn=conn, prices={"AAPL": 100.0, "MSFT": 50.0}, as_of=D1)
    b.place_order(order("BUY", 10, "AAPL", "d1-aapl"))
    b.place_order(order("SELL_SHORT", 20, "MSFT", "d1-msft"))
    first = pnl.record_equity(conn, D1, b)
    b.set_prices({"AAPL": 110.0, "MSFT": 45.0}, as_of=D2)
    b.accrue_borrow_fees(as_of=D2)
    b.place_order(order("BUY", 10, "AAPL", "d2-aapl"))
    second = pnl.record_equity(conn, D2, b)
    b.set_prices({"AAPL": 120.0, "MSFT": 40.0}, as_of=D3)
    b.accrue_borrow_fees(as_of=D3)
    b.place_order(order("SELL", 15, "AAPL", "d3-aapl"))
    b.place_order(order("BUY_TO_COVER", 20, "MSFT", "d3-msft"))
    third = pnl.record_equity(conn, D3, b)
    return conn, b, (first, second, third)


def test_fifo_round_trips_and_realised_pnl_match_hand_computation(three_sessions):
    conn, b, _ = three_sessions
    h = pnl.history(conn, "paper")
    assert h["fill_count"] == 5
    trips = h["round_trips"]
    assert [(t["symbol"], t["side"], t["quantity"]) for t in trips] == [
        ("AAPL", "long", 10), ("AAPL", "long", 5), ("MSFT", "short", 20)]
    assert trips[0]["pnl"] == pytest.approx((sell(120) - buy(100)) * 10)
    assert trips[1]["pnl"] == pytest.approx((sell(120) - buy(110)) * 5)
    assert trips[2]["pnl"] == pytest.approx((sell(50) - buy(40)) * 20)
    assert trips[0]["entry_date"] == "2025-03-03" and trips[0]["exit_date"] == "2025-03-05"
    assert trips[0]["holding_days"] == 2 and trips[1]["holding_days"] == 1
    # the broker charges each fee rounded to the micro-dollar
    fees = round(20 * 45 * C.DEFAULT_BORROW_RATE / 360, 6) + round(20 * 40 * C.DEFAULT_BORROW_RATE / 360, 6)
    assert h["borrow_fees"] == pytest.approx(fees)
    trading = sum(t["pnl"] for t in trips)
    assert h["realised_pnl"] == pytest.approx(trading - fees)
    assert h["open_lots"]["AAPL"] == [pytest.approx({"quantity": 5, "price": buy(110), "cost": buy(110),
                                                     "entry_date": "2025-03-04"})]
    assert h["win_rate"] == 1.0


def test_status_positions_unrealised_day_pnl_and_equity_identity(three_sessions):
    conn, b, (first, second, third) = three_sessions
    st = pnl.status_dict(b, conn, D3)
    [aapl] = st["positions"]
    assert (aapl["symbol"], aapl["quantity"], aapl["price"]) == ("AAPL", 5, 120.0)
    assert aapl["avg_cost"] == pytest.approx(buy(110))
    assert aapl["unrealised_pnl"] == pytest.approx((120 - buy(110)) * 5)
    assert st["unrealised_pnl"] == pytest.approx(aapl["unrealised_pnl"])
    # the paper account's identity: equity = starting cash + realised + unrealised
    assert st["equity"] == pytest.approx(C.INITIAL_PAPER_CASH + st["realised_pnl"] + st["unrealised_pnl"])
    assert st["equity"] == pytest.approx(b.get_account_balance()["equity"])
    # day P&L against the equity recorded for day 2
    assert st["day_pnl_since"] == "2025-03-04"
    assert st["day_pnl"] == pytest.approx(third["equity"] - second["equity"])
    assert st["realised_today"] == pytest.approx(st["realised_trading"])
    # day 1: no earlier session recorded
    assert first["day_pnl"] is None
    # day 2 by hand: long 10 @ 110 against cost buy(100), short 20 @ 45 against sell(50)
    assert second["unrealised_pnl"] == pytest.approx((110 - buy(100)) * 10 + (sell(50) - 45) * 20
                                                     + (110 - buy(110)) * 10)


def test_equity_curve_one_row_per_session_upserted(three_sessions):
    conn, b, (first, second, third) = three_sessions
    curve = pnl.equity_curve(conn, "paper")
    assert [r["session_date"] for r in curve] == ["2025-03-03", "2025-03-04", "2025-03-05"]
    assert curve[-1]["equity"] == pytest.approx(third["equity"])
    assert curve[-1]["cash"] + curve[-1]["positions_value"] == pytest.approx(curve[-1]["equity"])
    assert curve[-1]["positions"][0]["symbol"] == "AAPL"
    # a second record for the same session replaces its row
    b.set_prices({"AAPL": 130.0, "MSFT": 40.0}, as_of=D3)
    pnl.record_equity(conn, D3, b)
    curve = pnl.equity_curve(conn, "paper")
    assert len(curve) == 3
    assert curve[-1]["unrealised"] == pytest.approx((130 - buy(110)) * 5)
    assert json.loads(json.dumps(pnl.history(conn, "paper")))["round_trip_count"] == 3


def test_commissions_are_in_cost_and_the_identity_still_holds():
    conn = state_db.connect()
    costs = TradingSettings.from_constants().replace(commission_per_share=0.01, min_commission=1.0)
    b = PaperBroker(conn=conn, prices={"AAPL": 100.0}, as_of=D1, settings=costs)
    b.place_order(order("BUY", 300, "AAPL", "a"))            # commission 3.00
    b.set_prices({"AAPL": 101.0}, as_of=D2)
    b.place_order(order("SELL", 50, "AAPL", "b"))            # commission 1.00 (minimum)
    st = pnl.status_dict(b, conn, D2)
    [trip] = pnl.history(conn, "paper")["round_trips"]
    assert trip["pnl"] == pytest.approx((sell(101) - buy(100)) * 50 - 3.0 * 50 / 300 - 1.0)
    assert trip["commission"] == pytest.approx(3.0 * 50 / 300 + 1.0)
    assert st["positions"][0]["avg_cost"] == pytest.approx(buy(100) + 0.01)
    assert st["equity"] == pytest.approx(C.INITIAL_PAPER_CASH + st["realised_pnl"] + st["unrealised_pnl"])


def test_reversal_in_one_fill_closes_then_opens():
    closed, lots = pnl.match_fifo([
        {"symbol": "X", "side": "BUY", "quantity": 10, "price": 10.0, "commission": 0, "trade_date": "2025-01-02"},
        {"symbol": "X", "side": "SELL", "quantity": 25, "price": 12.0, "commission": 0, "trade_date": "2025-01-03"},
        {"symbol": "X", "side": "BUY", "quantity": 5, "price": 11.0, "commission": 0, "trade_date": "2025-01-06"},
    ])
    assert [(t["side"], t["quantity"], t["pnl"]) for t in closed] == [("long", 10, 20.0), ("short", 5, 5.0)]
    assert lots["X"][0]["quantity"] == -10 and lots["X"][0]["price"] == 12.0


def test_live_fills_come_from_the_orders_table():
    import trading_execution as TE
    conn = state_db.connect()
    ex = TE.OrderExecutor(conn=conn)
    for key, side, qty, px, day in [("k1", "BUY", 10, 50.0, "2025-03-03"), ("k2", "SELL", 4, 55.0, "2025-03-04"),
                                    ("k3", "BUY", 7, 1.0, "2025-03-04")]:
        ex.record_intent({"symbol": "ABC", "side": side, "quantity": qty, "client_key": key}, day, "live")
        if key != "k3":      # k3 was never filled
            ex.book.update(key, status="FILLED", filled_quantity=qty, avg_fill_price=px, broker_order_id=key,
                           submitted_at=f"{day}T15:00:00+00:00")
    ex.record_intent({"symbol": "ABC", "side": "BUY", "quantity": 3, "client_key": "p"}, "2025-03-03", "paper")
    h = pnl.history(conn, "live")
    assert [f["order_id"] for f in h["fills"]] == ["k1", "k2"]
    [trip] = h["round_trips"]
    assert trip["pnl"] == pytest.approx(20.0) and h["realised_pnl"] == pytest.approx(20.0)
    assert h["open_lots"]["ABC"][0]["quantity"] == 6


def test_empty_database_gives_empty_history():
    conn = state_db.connect()
    h = pnl.history(conn, "paper")
    assert h["fills"] == [] and h["round_trips"] == [] and h["realised_pnl"] == 0
    assert pnl.equity_curve(conn, "paper") == []


def test_drawdown_series():
    assert pnl.drawdown_series([100, 110, 99, 121]) == pytest.approx([0, 0, -0.1, 0])
