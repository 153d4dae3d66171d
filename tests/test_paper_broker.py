"""PaperBroker: fills, costs, shorts and borrow fees, idempotency, rejections, persistence."""
from datetime import date, datetime, timedelta, timezone

import pytest

import constants as C
import state_db
from broker_base import OrderNotFoundError, OrderRejectedError
from paper_broker import PaperBroker
from settings import TradingSettings

MON = date(2025, 3, 3)
LIVE = TradingSettings.from_constants()       # the cost model of constants.py


def order(side, qty, symbol="AAPL", order_type="MARKET", limit=None, key=None):
    return {"symbol": symbol, "side": side, "quantity": qty, "order_type": order_type,
            "limit_price": limit, "client_key": key or f"{symbol}-{side}-{qty}-{order_type}-{limit}"}


def make_broker(**costs):
    """The test account; ``costs`` change the cost model (TradingSettings fields)."""
    return PaperBroker(prices={"AAPL": 100.0, "MSFT": 50.0, "PENNY": 0.5}, as_of=MON,
                       settings=LIVE.replace(**costs))


@pytest.fixture
def broker():
    return make_broker()


# ------------------------------------------------------------------ fills
def test_starting_account(broker):
    assert broker.get_account_balance()["equity"] == C.INITIAL_PAPER_CASH
    assert broker.get_account_balance()["cash"] == C.INITIAL_PAPER_CASH
    assert broker.get_positions() == {}


def test_market_buy_and_sell_with_slippage_and_commission():
    broker = make_broker(slippage_bps=10.0, commission_per_share=0.01, min_commission=1.0)
    buy_id = broker.place_order(order("BUY", 100))
    got = broker.get_order(buy_id)
    assert got["status"] == "FILLED" and got["filled_quantity"] == 100 and got["remaining_quantity"] == 0
    assert got["avg_fill_price"] == pytest.approx(100.10)
    assert got["entered_time"].tzinfo is not None
    cash = C.INITIAL_PAPER_CASH - 100 * 100.10 - 1.0
    balance = broker.get_account_balance()
    assert balance["cash"] == pytest.approx(cash)
    assert balance["equity"] == pytest.approx(cash + 100 * 100.0)
    assert broker.get_positions()["AAPL"] == {"quantity": 100, "avg_price": pytest.approx(100.10),
                                              "market_value": pytest.approx(10000.0), "recalled": False}
    broker.set_prices({"AAPL": 110.0}, MON)
    broker.place_order(order("SELL", 40))
    cash += 40 * 110.0 * (1 - 0.001) - 1.0
    assert broker.get_account_balance()["cash"] == pytest.approx(cash)
    assert broker.get_positions()["AAPL"]["quantity"] == 60
    assert broker.get_positions()["AAPL"]["avg_price"] == pytest.approx(100.10)
    broker.place_order(order("SELL", 60))
    assert "AAPL" not in broker.get_positions()


def test_limit_orders_fill_when_marketable_else_work(broker):
    marketable = broker.place_order(order("BUY", 10, order_type="LIMIT", limit=101.0))
    assert broker.get_order(marketable)["status"] == "FILLED"
    assert broker.get_order(marketable)["avg_fill_price"] <= 101.0
    capped = broker.place_order(order("BUY", 1, order_type="LIMIT", limit=100.0, key="capped"))
    assert broker.get_order(capped)["avg_fill_price"] == pytest.approx(100.0)   # slippage capped by limit
    resting = broker.place_order(order("BUY", 10, order_type="LIMIT", limit=95.0, key="rest"))
    assert broker.get_order(resting)["status"] == "WORKING"
    assert [o["order_id"] for o in broker.get_open_orders()] == [resting]
    broker.set_prices({"AAPL": 94.0}, MON)                       # same day: now marketable
    filled = broker.get_order(resting)
    assert filled["status"] == "FILLED" and filled["avg_fill_price"] <= 95.0
    sell = broker.place_order(order("SELL", 5, order_type="LIMIT", limit=120.0, key="sell-rest"))
    assert broker.get_order(sell)["status"] == "WORKING"
    broker.set_prices({"AAPL": 96.0}, MON + timedelta(days=1))   # next day: DAY order expired
    assert broker.get_order(sell)["status"] == "EXPIRED"
    assert broker.get_open_orders() == []


def test_cancel_working_order(broker):
    resting = broker.place_order(order("BUY", 10, order_type="LIMIT", limit=90.0))
    broker.cancel_order(resting)
    assert broker.get_order(resting)["status"] == "CANCELED"
    broker.cancel_order(resting)                                  # idempotent
    filled = broker.place_order(order("BUY", 1))
    with pytest.raises(OrderRejectedError):
        broker.cancel_order(filled)
    with pytest.raises(OrderNotFoundError):
        broker.cancel_order("PAPER-999999")
    with pytest.raises(OrderNotFoundError):
        broker.get_order("nope")


# ------------------------------------------------------------------ shorts
def test_short_cover_and_borrow_fees():
    broker = make_broker(slippage_bps=0.0)
    broker.set_borrow_rate("MSFT", 0.036)
    broker.place_order(order("SELL_SHORT", 100, "MSFT"))
    assert broker.get_positions()["MSFT"]["quantity"] == -100
    assert broker.get_positions()["MSFT"]["market_value"] == pytest.approx(-5000.0)
    balance = broker.get_account_balance()
    assert balance["cash"] == pytest.approx(C.INITIAL_PAPER_CASH + 5000.0)
    assert balance["equity"] == pytest.approx(C.INITIAL_PAPER_CASH)
    assert balance["buying_power"] == pytest.approx(C.INITIAL_PAPER_CASH + 5000 - 1.5 * 5000)
    # Monday to Friday: 4 calendar days, then Friday to Monday: 3
    fri = MON + timedelta(days=4)
    broker.set_prices({"MSFT": 50.0}, fri)
    assert broker.accrue_borrow_fees(fri) == {"MSFT": pytest.approx(100 * 50 * 0.036 * 4 / 360)}
    assert broker.accrue_borrow_fees(fri) == {}                  # same day: nothing more
    next_mon = fri + timedelta(days=3)
    broker.set_prices({"MSFT": 40.0}, next_mon)
    assert broker.accrue_borrow_fees(next_mon)["MSFT"] == pytest.approx(100 * 40 * 0.036 * 3 / 360)
    assert broker.last_borrow_accrual() == next_mon
    fees = 100 * 50 * 0.036 * 4 / 360 + 100 * 40 * 0.036 * 3 / 360
    tue = next_mon + timedelta(days=1)
    broker.set_prices({"MSFT": 40.0}, tue)
    broker.place_order(order("BUY_TO_COVER", 100, "MSFT"))       # the last day is charged on cover
    fees += 100 * 40 * 0.036 * 1 / 360
    assert "MSFT" not in broker.get_positions()
    assert broker.get_account_balance()["cash"] == pytest.approx(
        C.INITIAL_PAPER_CASH + 5000.0 - 4000.0 - fees)


def test_default_borrow_rate_and_quotes(broker):
    quotes = broker.get_quotes(["AAPL", "UNKNOWN"])
    assert set(quotes) == {"AAPL"}
    assert quotes["AAPL"]["borrow_rate"] == C.DEFAULT_BORROW_RATE
    assert quotes["AAPL"]["hard_to_borrow"] is False and quotes["AAPL"]["shortable"] is True
    assert quotes["AAPL"]["bid"] < quotes["AAPL"]["last"] < quotes["AAPL"]["ask"]
    broker.set_borrow_rate("AAPL", 0.35)
    broker.set_ex_dividend("AAPL", MON + timedelta(days=2))
    broker.set_recall("AAPL", True)
    quote = broker.get_quotes("AAPL")["AAPL"]
    assert quote["borrow_rate"] == 0.35 and quote["hard_to_borrow"] is True
    assert quote["ex_dividend_date"] == MON + timedelta(days=2)
    assert quote["shortable"] is False


def test_recall_flag_on_positions_and_blocks_new_shorts(broker):
    broker.place_order(order("SELL_SHORT", 10))
    broker.set_recall("AAPL", True)
    assert broker.get_positions()["AAPL"]["recalled"] is True
    with pytest.raises(OrderRejectedError, match="recalled"):
        broker.place_order(order("SELL_SHORT", 5, key="more"))
    broker.place_order(order("BUY_TO_COVER", 10))
    broker.set_recall("AAPL", False)
    assert broker.get_positions() == {}


# ------------------------------------------------------------------ rejections
@pytest.mark.parametrize("bad,reason", [
    (order("BUY", 10, symbol="ZZZZ"), "no reference price"),
    (order("BUY", 0), "positive"),
    (order("BUY", -5), "positive"),
    (order("BUY", 2.5), "whole number"),
    (order("BUY", 10_000), "insufficient cash"),
    (order("SELL", 1), "held"),
    (order("BUY_TO_COVER", 1), "short position"),
    (order("BUY", 1, order_type="LIMIT", limit=None), "limit_price"),
    (order("BUY", 1, order_type="LIMIT", limit=-1), "limit_price"),
    (order("SELL_SHORT", 10_000), "margin"),
    (dict(order("BUY", 1), side="HOLD"), "side"),
])
def test_rejections(broker, bad, reason):
    with pytest.raises(OrderRejectedError, match=reason):
        broker.place_order(bad)
    assert broker.get_positions() == {}
    assert broker.get_account_balance()["cash"] == C.INITIAL_PAPER_CASH


def test_direction_rules(broker):
    broker.place_order(order("BUY", 10))
    with pytest.raises(OrderRejectedError, match="SELL it before shorting"):
        broker.place_order(order("SELL_SHORT", 5))
    with pytest.raises(OrderRejectedError, match="held"):
        broker.place_order(order("SELL", 11))
    broker.place_order(order("SELL_SHORT", 5, "MSFT"))
    with pytest.raises(OrderRejectedError, match="BUY_TO_COVER"):
        broker.place_order(order("BUY", 5, "MSFT"))
    with pytest.raises(OrderRejectedError, match="short position is 5"):
        broker.place_order(order("BUY_TO_COVER", 6, "MSFT"))


def test_rejected_order_is_recorded_and_repeats(broker):
    with pytest.raises(OrderRejectedError):
        broker.place_order(order("SELL", 3, key="bad-sell"))
    [rejected] = broker.get_orders_since(datetime.now(timezone.utc) - timedelta(minutes=1))
    assert rejected["status"] == "REJECTED" and "held" in rejected["reject_reason"]
    with pytest.raises(OrderRejectedError):
        broker.place_order(order("SELL", 3, key="bad-sell"))
    assert len(broker.get_orders_since(datetime.now(timezone.utc) - timedelta(minutes=1))) == 1


# ------------------------------------------------------------------ idempotency and persistence
def test_client_key_is_idempotent(broker):
    first = broker.place_order(order("BUY", 10, key="cycle-1-AAPL"))
    again = broker.place_order(order("BUY", 10, key="cycle-1-AAPL"))
    assert first == again
    assert broker.get_positions()["AAPL"]["quantity"] == 10
    assert len(broker.get_orders_since(datetime.now() - timedelta(minutes=5))) == 1


def test_state_persists_across_instances(broker):
    order_id = broker.place_order(order("BUY", 10, key="persist"))
    broker.place_order(order("SELL_SHORT", 20, "MSFT"))
    broker.set_borrow_rate("MSFT", 0.05)
    before = broker.get_account_balance()
    broker.conn.close()
    fresh = PaperBroker()                                  # same TRADING_HOME, new connection
    assert fresh.get_account_balance() == before
    assert fresh.get_positions()["AAPL"]["quantity"] == 10
    assert fresh.get_positions()["MSFT"]["quantity"] == -20
    assert fresh.get_order(order_id)["status"] == "FILLED"
    assert fresh.place_order(order("BUY", 10, key="persist")) == order_id
    assert fresh.get_quotes(["MSFT"])["MSFT"]["borrow_rate"] == 0.05
    assert state_db.db_path().exists()


def test_orders_since_filters_by_time(broker):
    broker.place_order(order("BUY", 1, key="a"))
    later = datetime.now(timezone.utc) + timedelta(seconds=1)
    assert broker.get_orders_since(later) == []
    assert len(broker.get_orders_since(later - timedelta(minutes=1))) == 1


def test_equity_is_cash_plus_positions(broker):
    broker.place_order(order("BUY", 10))
    broker.place_order(order("SELL_SHORT", 10, "MSFT"))
    broker.set_prices({"AAPL": 120.0, "MSFT": 60.0}, MON)
    balance = broker.get_account_balance()
    assert balance["equity"] == pytest.approx(balance["cash"] + 10 * 120.0 - 10 * 60.0)


def test_penny_stock_and_invalid_price():
    broker = PaperBroker(prices={"PENNY": 0.5}, as_of=MON)
    broker.place_order(order("BUY", 1000, "PENNY"))
    assert broker.get_positions()["PENNY"]["quantity"] == 1000
    with pytest.raises(ValueError):
        broker.set_prices({"X": -1.0}, MON)
    with pytest.raises(ValueError):
        broker.set_prices({"X": float("nan")}, MON)


# ------------------------------------------------------------------ next-open fills (PAPER_FILL)
def test_market_order_pends_until_the_next_open_then_fills_there():
    b = PaperBroker(prices={"AAPL": 100.0}, as_of=MON, fill="next_open", settings=LIVE.replace(slippage_bps=10.0))
    oid = b.place_order(order("BUY", 10))
    got = b.get_order(oid)
    assert got["status"] == "WORKING" and got["pending_next_open"] and got["filled_quantity"] == 0
    assert b.get_positions() == {}
    b.set_prices({"AAPL": 100.0}, as_of=MON)                       # the same session again: still pending
    assert b.get_order(oid)["status"] == "WORKING"
    tue = MON + timedelta(days=1)
    b.set_prices({"AAPL": 120.0}, as_of=tue, opens={tue: {"AAPL": 110.0}})
    got = b.get_order(oid)
    assert got["status"] == "FILLED" and got["avg_fill_price"] == pytest.approx(110.0 * 1.001)   # the open, slipped
    assert b.get_positions()["AAPL"]["quantity"] == 10
    # a pending order whose symbol never gets an open expires instead of filling at a stale price
    oid2 = b.place_order(order("SELL", 10, key="sell-1"))
    wed = tue + timedelta(days=1)
    b.set_prices({"AAPL": 121.0}, as_of=wed, opens={wed: {"MSFT": 50.0}})
    assert b.get_order(oid2)["status"] == "EXPIRED" and b.get_positions()["AAPL"]["quantity"] == 10


@pytest.fixture
def no_cash_interest(monkeypatch):
    """The paper account earns no interest on its cash (not modelled: a broker's sweep rate varies),
    the backtest does when a risk-free rate is subtracted (BACKTEST_CASH_INTEREST): compared fill
    for fill and dollar for dollar, the backtest's interest is off."""
    monkeypatch.setattr(C, "BACKTEST_CASH_INTEREST", False)


def test_paper_fills_equal_the_backtest_engines_for_the_same_decisions(no_cash_interest):
    """The engine decides from day t's close and fills at t+1's open; the paper broker given the
    same orders after each close and each session's prices fills them at the same prices with the
    same commissions and ends with the same cash and positions."""
    import numpy as np
    import backtest_engine as E
    from test_backtest_engine import make_market, random_walk
    costs = LIVE.replace(slippage_bps=7.0, commission_per_share=0.01, min_commission=1.0)
    n = 30
    o1, c1 = random_walk(n, seed=11)
    o2, c2 = random_walk(n, start=50.0, seed=12)
    market = make_market(np.c_[o1, o2], np.c_[c1, c2], symbols=["AAA", "BBB"])
    targets = np.zeros((n, 2), int)
    targets[2:12, 0] = 300
    targets[12:20, 0] = 100
    targets[4:25, 1] = 200
    result = E.run_engine(market, E.FixedTargetPolicy(targets), settings=costs)
    assert len(result.trades) >= 4
    b = PaperBroker(fill="next_open", settings=costs)
    by_decided = {}
    for t in result.trades:
        by_decided.setdefault(t["decided"], []).append(t)
    for d, day in enumerate(market.dates):
        sess = day.date()
        b.set_prices({s: float(market.close[d, i]) for i, s in enumerate(market.symbols)}, as_of=sess,
                     opens={sess: {s: float(market.open[d, i]) for i, s in enumerate(market.symbols)}})
        for t in by_decided.get(sess.isoformat(), []):
            b.place_order(order(t["side"], t["quantity"], symbol=t["symbol"], key=f"{sess}-{t['seq']}"))
    fills = [dict(r) for r in b.conn.execute("SELECT * FROM paper_fills ORDER BY id")]
    assert [(f["trade_date"], f["symbol"], f["side"], f["quantity"]) for f in fills] == \
        [(t["date"], t["symbol"], t["side"], t["quantity"]) for t in result.trades]
    for f, t in zip(fills, result.trades):
        assert f["price"] == pytest.approx(t["fill_price"], abs=1e-9)
        assert f["commission"] == pytest.approx(t["commission"], abs=1e-12)
    assert b._cash() == pytest.approx(float(result.cash[-1]), abs=1e-6)
    held = {s: p["quantity"] for s, p in b.get_positions().items()}
    assert held == {s: q for s, q in result.final_positions.items() if q}
    assert b.get_account_balance()["equity"] == pytest.approx(float(result.equity[-1]), abs=1e-6)


@pytest.mark.parametrize("first, then", [(-100, 150), (120, -80)], ids=["short-to-long", "long-to-short"])
def test_a_reversal_fills_both_legs_as_the_backtest_does(first, then, no_cash_interest):
    """Issue 23: a reversal is two orders decided at one close (cover, then buy). The paper broker
    rejected the buy while the cover was still pending the next open ("held short: use
    BUY_TO_COVER"), so paper lost the new leg the backtest engine traded."""
    import numpy as np
    import backtest_engine as E
    from test_backtest_engine import make_market, random_walk
    costs = LIVE.replace(slippage_bps=5.0, commission_per_share=0.01, min_commission=1.0,
                         borrow_rate=0.0)        # borrow accrual is compared in test_short_rules
    n = 16
    o1, c1 = random_walk(n, seed=21)
    market = make_market(o1[:, None], c1[:, None], symbols=["AAA"])
    targets = np.zeros((n, 1), int)
    targets[2:8, 0] = first
    targets[8:13, 0] = then
    result = E.run_engine(market, E.FixedTargetPolicy(targets), settings=costs)
    sides = [t["side"] for t in result.trades]
    assert len(sides) == 4 and sides[1:3] == (["BUY_TO_COVER", "BUY"] if first < 0 else ["SELL", "SELL_SHORT"])
    b = PaperBroker(fill="next_open", settings=costs)
    for d, day in enumerate(market.dates):
        sess = day.date()
        b.set_prices({"AAA": float(market.close[d, 0])}, as_of=sess,
                     opens={sess: {"AAA": float(market.open[d, 0])}})
        for t in [t for t in result.trades if t["decided"] == sess.isoformat()]:
            b.place_order(order(t["side"], t["quantity"], symbol="AAA", key=f"{sess}-{t['seq']}"))
    fills = [dict(r) for r in b.conn.execute("SELECT * FROM paper_fills ORDER BY id")]
    assert [(f["trade_date"], f["side"], f["quantity"]) for f in fills] == \
        [(t["date"], t["side"], t["quantity"]) for t in result.trades]
    for f, t in zip(fills, result.trades):
        assert f["price"] == pytest.approx(t["fill_price"], abs=1e-9)
    assert b._cash() == pytest.approx(float(result.cash[-1]), abs=1e-6)
