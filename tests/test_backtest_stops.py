"""The backtest engine's protective stops and price collars (issue 22 points 1-2), and the proof
that the paper broker driven session by session books the SAME fills over the gap day (point 5)."""
from datetime import date, timedelta

import numpy as np
import pandas as pd
import pytest

import constants as C
import gap_day as g
import market_calendar
import order_prices as op
import sample_data
import state_db
import backtest_metrics as bm
from backtest_engine import LivePolicy, buy_and_hold, market_from_frames, run_engine
from paper_broker import PaperBroker
from settings import TradingSettings

COSTS = TradingSettings.from_constants()


class Script:
    """A policy that sends the orders written for each decision day; ``unless_held`` orders are
    sent only while the symbol is flat (a re-planned entry)."""

    name = "script"

    def __init__(self, orders: dict):
        self.orders = orders
        self.halts: list = []

    def on_close(self, day, equity):
        pass

    def decide(self, day, symbols, pos, cash, equity, price, signal, score, vol):
        out = []
        for o in self.orders.get(day, []):
            i = symbols.index(o["symbol"])
            if o.get("unless_held") and pos[i] != 0:
                continue
            out.append({"symbol": o["symbol"], "side": o["side"], "quantity": o["quantity"],
                        "price": float(price[i])})
        return out


def frame(symbol: str, bars: list[tuple[float, float, float, float]], start=date(2026, 3, 2)) -> pd.DataFrame:
    """(open, high, low, close) per weekday from ``start``."""
    days, d = [], start
    while len(days) < len(bars):
        if d.weekday() < 5:
            days.append(d)
        d += timedelta(days=1)
    return pd.DataFrame([{"Date": pd.Timestamp(day), "Symbol": symbol, "Open": o, "High": h, "Low": lo, "Close": c}
                         for day, (o, h, lo, c) in zip(days, bars)])


def replay(prices: pd.DataFrame, script: dict):
    market = market_from_frames(prices)
    return market, run_engine(market, Script(script), settings=COSTS, initial_cash=100_000.0, fill="next_open")


def quiet(n: int, price: float = 100.0) -> list[tuple[float, float, float, float]]:
    return [(price, price * 1.004, price * 0.996, price)] * n


def day_of(prices: pd.DataFrame, k: int) -> date:
    return sorted(prices["Date"].unique())[k].date()


@pytest.fixture
def stops_on(monkeypatch):
    g.use_tunables(monkeypatch, ORDER_TYPE="market")


# ------------------------------------------------------------------ the engine's own rules
def test_a_long_stop_fills_at_its_price_inside_a_later_bar(stops_on):
    bars = quiet(3) + [(100.0, 100.5, 99.0, 99.5), (99.0, 99.5, 96.0, 97.0), (97.0, 97.5, 96.5, 97.0)]
    p = frame("AAA", bars)
    _, res = replay(p, {day_of(p, 2): [{"symbol": "AAA", "side": "BUY", "quantity": 10}]})
    entry, stop = res.trades[0], res.trades[1]
    want = op.stop_price("long", entry["fill_price"], op.daily_volatility([100.0] * 3))
    assert want == 98.04                         # the 2 % floor below the entry (100.05 with slippage)
    assert (stop["side"], stop["quantity"], stop["fill_price"], stop["date"]) == ("SELL", 10, want, str(day_of(p, 4)))
    assert stop["reason"].startswith("protective stop") and res.final_positions == {}


def test_no_fill_when_the_bar_does_not_reach_the_stop_and_defaults_off_change_nothing(monkeypatch):
    bars = quiet(3) + [(100.0, 100.5, 98.5, 99.0), (70.0, 71.0, 69.0, 70.0)]
    p = frame("AAA", bars)
    script = {day_of(p, 2): [{"symbol": "AAA", "side": "BUY", "quantity": 10}]}
    _, off = replay(p, script)                                   # PROTECTIVE_STOPS False: no stop at all
    assert [t["side"] for t in off.trades] == ["BUY"] and off.final_positions == {"AAA": 10}
    g.use_tunables(monkeypatch, ORDER_TYPE="market")
    _, on = replay(p.iloc[:4], script)                          # 98.5 does not reach 98.04
    assert [t["side"] for t in on.trades] == ["BUY"] and on.final_positions == {"AAA": 10}
    _, gap = replay(p, script)                                  # the 30 % gap: at the open
    assert gap.trades[-1]["fill_price"] == 70.0 and "gapped through" in gap.trades[-1]["reason"]


def test_a_short_stop_is_mirrored_with_the_high(stops_on):
    bars = quiet(3) + [(100.0, 100.5, 99.5, 100.0), (101.0, 103.0, 100.5, 102.0)]
    p = frame("AAA", bars)
    _, res = replay(p, {day_of(p, 2): [{"symbol": "AAA", "side": "SELL_SHORT", "quantity": 10}]})
    short, cover = res.trades
    want = op.stop_price("short", short["fill_price"], 0.0)
    assert cover["side"] == "BUY_TO_COVER" and cover["fill_price"] == want and want > short["fill_price"]


def test_the_stop_is_replaced_when_the_size_changes_and_removed_when_closed(stops_on, monkeypatch):
    monkeypatch.setattr(C, "STOP_VOL_MULTIPLE", 0.01)          # the 2 % floor decides
    bars = quiet(3) + [(100.0, 100.4, 99.6, 100.0), (110.0, 110.4, 109.6, 110.0), (108.0, 108.1, 101.0, 101.5),
                       (90.0, 90.5, 89.0, 90.0)]
    p = frame("AAA", bars)
    buy = {"symbol": "AAA", "side": "BUY", "quantity": 10}
    _, res = replay(p, {day_of(p, 2): [buy], day_of(p, 3): [{**buy, "quantity": 5}]})
    # the first stop (98.04, 10 shares) would not fill at 101.0; the one replaced after the
    # 110 fill (2 % below the new average price, for all 15 shares) does
    first, add = res.trades[0], res.trades[1]
    avg = round((10 * first["fill_price"] + 5 * add["fill_price"]) / 15, 6)
    assert [(t["side"], t["quantity"]) for t in res.trades] == [("BUY", 10), ("BUY", 5), ("SELL", 15)]
    assert res.trades[2]["stop_price"] == op.stop_price("long", avg, 0.0) == res.trades[2]["fill_price"]
    assert res.trades[2]["date"] == str(day_of(p, 5)) and res.final_positions == {}
    _, closed = replay(p, {day_of(p, 2): [buy], day_of(p, 3): [{**buy, "side": "SELL"}]})
    assert [(t["side"], t["quantity"]) for t in closed.trades] == [("BUY", 10), ("SELL", 10)]   # no stop left


def test_a_collared_entry_fills_inside_the_collar_and_misses_beyond_it(monkeypatch):
    g.use_tunables(monkeypatch, ORDER_TYPE="limit_collar", PROTECTIVE_STOPS=False)
    bars = quiet(3) + [(100.3, 100.6, 100.0, 100.0), (103.0, 103.5, 102.5, 103.0)]
    p = frame("AAA", bars)
    script = {day_of(p, 2): [{"symbol": "AAA", "side": "BUY", "quantity": 10}],
              day_of(p, 3): [{"symbol": "AAA", "side": "SELL", "quantity": 10}]}
    _, res = replay(p, script)
    buy = res.trades[0]
    assert buy["limit_price"] == op.collar_limit("buy", 100.0) and buy["fill_price"] <= buy["limit_price"]
    assert buy["fill_price"] == pytest.approx(100.3 * 1.0005)          # the slipped open, inside the limit
    assert res.trades[1]["side"] == "SELL" and res.cancelled == []     # a sell's gap up is inside its collar
    bars_up = quiet(3) + [(101.0, 101.5, 100.5, 101.0)]
    _, up = replay(frame("AAA", bars_up), {day_of(p, 2): [{"symbol": "AAA", "side": "BUY", "quantity": 10}]})
    assert up.trades == [] and "beyond the price collar" in up.cancelled[0]["reason"]
    assert up.cancelled[0]["limit_price"] == 100.5
    bars_down = quiet(3) + [(100.0, 100.4, 99.6, 100.0), (98.0, 98.5, 97.5, 98.0)]
    _, down = replay(frame("AAA", bars_down), script)                  # the sell meets a 2 % gap down
    assert [t["side"] for t in down.trades] == ["BUY"] and down.cancelled[0]["side"] == "SELL"
    assert down.final_positions == {"AAA": 10}


# ------------------------------------------------------------------ paper == backtest over the gap day
def drive_paper(order_type: str) -> list[tuple]:
    """The paper broker session by session over the gap day, orders placed as the live path
    places them: the script's entries after a close (collared: a LIMIT at collar_limit of that
    close), and, as ``protective_stops.sync`` after the fills, a GTC stop for the whole of each
    position without one (stop_price from its average price and the volatility of the closes the
    cycle has, up to this session)."""
    b = PaperBroker(conn=state_db.connect(":memory:"), fill="next_open", settings=COSTS)
    for day in g.DATES:
        b.set_prices(g.closes_on(day), as_of=day, opens=g.opens_on(day), bars=g.bars_on(day))
        guarded = {o["symbol"] for o in b.get_open_orders() if o["order_type"] == "STOP"}
        for sym, p in b.get_positions().items():            # one stop per position (protective_stops.sync)
            if sym not in guarded:
                vol = op.daily_volatility(g.closes(sym, day))
                b.place_order({"symbol": sym, "side": "SELL", "quantity": p["quantity"], "order_type": "STOP",
                               "stop_price": op.stop_price("long", p["avg_price"], vol),
                               "duration": "GOOD_TILL_CANCEL", "client_key": f"stop-{sym}-{day}"})
        for o in script()[0].get(day, []):
            if o.get("unless_held") and o["symbol"] in b.get_positions():
                continue
            close = g.BARS[o["symbol"]][day]["close"]
            b.place_order({"symbol": o["symbol"], "side": o["side"], "quantity": o["quantity"],
                           "order_type": "LIMIT" if order_type == "limit_collar" else "MARKET",
                           "limit_price": op.collar_limit("buy", close) if order_type == "limit_collar" else None,
                           "client_key": f"{o['symbol']}-{day}"})
    return sorted((r["trade_date"], r["symbol"], r["side"], r["quantity"], round(r["price"], 6))
                  for r in b.conn.execute("SELECT * FROM paper_fills"))


def script() -> tuple[dict, None]:
    entries = [{"symbol": g.SYMBOL, "side": "BUY", "quantity": g.QUANTITY},
               {"symbol": g.COLLAR_SYMBOL, "side": "BUY", "quantity": g.QUANTITY}]
    return {g.DECIDED: entries,
            g.ENTRY_DAY: [{"symbol": g.COLLAR_SYMBOL, "side": "BUY", "quantity": g.QUANTITY, "unless_held": True}]}, None


@pytest.mark.parametrize("order_type", ["market", "limit_collar"])
def test_paper_and_backtest_book_the_same_fills_over_the_gap_day(monkeypatch, order_type):
    g.use_tunables(monkeypatch, ORDER_TYPE=order_type)
    paper = drive_paper(order_type)
    market = market_from_frames(g.prices_frame())
    res = run_engine(market, Script(script()[0]), settings=COSTS, fill="next_open")
    engine = sorted((t["date"], t["symbol"], t["side"], t["quantity"], round(t["fill_price"], 6)) for t in res.trades)
    assert paper == engine
    # the 8 % gap: GAPX's stop closes the long at GAP_DAY's open, the price order_prices gives
    gap = [t for t in res.trades if t["symbol"] == g.SYMBOL and t["side"] == "SELL"]
    assert len(gap) == 1 and gap[0]["date"] == str(g.GAP_DAY) and gap[0]["quantity"] == g.QUANTITY
    assert gap[0]["fill_price"] == g.expected_stop_fill() and gap[0]["stop_price"] == g.expected_stop_price()
    colx = [t for t in res.trades if t["symbol"] == g.COLLAR_SYMBOL and t["side"] == "BUY"]
    if order_type == "limit_collar":        # the 3 % gap up misses the collar; re-planned, it fills a day later
        assert [t["date"] for t in colx] == [str(g.GAP_DAY)]
        assert [c["symbol"] for c in res.cancelled] == [g.COLLAR_SYMBOL]
    else:
        assert [t["date"] for t in colx] == [str(g.ENTRY_DAY)]


# ------------------------------------------------------------------ paper == backtest over a year of sample data
class Recording(LivePolicy):
    """The live policy, keeping the orders it decided each day (to send them to the paper broker)."""

    def __init__(self, settings):
        super().__init__(settings=settings)
        self.decided: dict = {}

    def decide(self, day, *args):
        out = super().decide(day, *args)
        self.decided[day] = [dict(o) for o in out]
        return out


def sync_stops(b: PaperBroker, day, history: dict) -> None:
    """What ``protective_stops.sync`` does after the cycle's fills: one GTC stop of the whole size
    per position (average price, the volatility of the closes so far), replaced when the size or
    side changed, cancelled when the position is gone."""
    positions = {s: p for s, p in b.get_positions().items() if p["quantity"]}
    for o in [o for o in b.get_open_orders() if o["order_type"] == "STOP"]:
        p = positions.get(o["symbol"])
        if p is None or o["quantity"] != abs(p["quantity"]) or (o["side"] == "SELL") != (p["quantity"] > 0):
            b.cancel_order(o["order_id"])
    working = {o["symbol"] for o in b.get_open_orders() if o["order_type"] == "STOP"}
    for sym, p in positions.items():
        if sym in working:
            continue
        side = "long" if p["quantity"] > 0 else "short"
        b.place_order({"symbol": sym, "side": "SELL" if side == "long" else "BUY_TO_COVER",
                       "quantity": abs(p["quantity"]), "order_type": "STOP", "duration": "GOOD_TILL_CANCEL",
                       "stop_price": op.stop_price(side, p["avg_price"], op.daily_volatility(history[sym])),
                       "client_key": f"stop-{sym}-{day}"})


@pytest.mark.parametrize("order_type", ["market", "limit_collar"])
def test_paper_and_backtest_book_the_same_fills_over_a_year_with_stops(monkeypatch, order_type):
    g.use_tunables(monkeypatch, ORDER_TYPE=order_type, STOP_VOL_MULTIPLE=1.0)   # near stops: many fire
    dates = market_calendar.sessions("2023-01-03", "2023-08-31")
    prices = pd.concat([sample_data.simulate_symbol(s, dates) for s in ("AAA", "BBB", "CCC")], ignore_index=True)
    close = prices.pivot(index="Date", columns="Symbol", values="Close")
    logret = np.log(close).diff()
    vol = logret.rolling(20).std()
    sig = pd.DataFrame({"score": (0.9 * logret / vol).stack(), "volatility_20": vol.stack()}).reset_index().dropna()
    sig["signal"] = np.where(sig["score"] >= C.SIGNAL_THRESHOLD, "BUY",
                             np.where(sig["score"] <= -C.SIGNAL_THRESHOLD, "SELL", "HOLD"))
    market = market_from_frames(prices, sig)
    policy = Recording(COSTS)
    res = run_engine(market, policy, settings=COSTS, fill="next_open")
    stop_fills = [t for t in res.trades if str(t.get("reason", "")).startswith("protective stop")]
    assert len(stop_fills) >= 3 and any(t["side"] == "BUY_TO_COVER" for t in stop_fills)
    if order_type == "limit_collar":
        assert any("price collar" in c["reason"] for c in res.cancelled)
    b = PaperBroker(conn=state_db.connect(":memory:"), fill="next_open", settings=COSTS)
    history: dict = {s: [] for s in market.symbols}
    for d, ts in enumerate(market.dates):
        day = ts.date()
        row = {s: (market.open[d, k], market.high[d, k], market.low[d, k], market.close[d, k])  # type: ignore[index]
               for k, s in enumerate(market.symbols) if np.isfinite(market.close[d, k])}
        b.set_prices({s: v[3] for s, v in row.items()}, as_of=day,
                     bars={day: {s: {"open": v[0], "high": v[1], "low": v[2]} for s, v in row.items()}})
        b.accrue_borrow_fees(as_of=day)
        for s, v in row.items():
            history[s].append(float(v[3]))
        sync_stops(b, day, history)
        for o in policy.decided.get(day, []):
            limit = None
            if order_type == "limit_collar":
                limit = op.collar_limit("buy" if o["side"] in ("BUY", "BUY_TO_COVER") else "sell", row[o["symbol"]][3])
            b.place_order({"symbol": o["symbol"], "side": o["side"], "quantity": o["quantity"],
                           "order_type": "LIMIT" if limit else "MARKET", "limit_price": limit,
                           "client_key": f"{day}-{o['symbol']}-{o['side']}"})
    paper = sorted((r["trade_date"], r["symbol"], r["side"], r["quantity"], round(r["price"], 6))
                   for r in b.conn.execute("SELECT * FROM paper_fills"))
    engine = sorted((t["date"], t["symbol"], t["side"], t["quantity"], round(t["fill_price"], 6)) for t in res.trades)
    assert paper == engine              # 177 / 160 fills, about 40 of them stops, on this data
    summary = bm.analyse(res, market, buy_and_hold(market))["strategy"]
    assert summary["stop_fills"] == len(stop_fills) and summary["cancelled_orders"] == len(res.cancelled)


def test_without_high_and_low_a_session_spans_its_open_and_close(stops_on):
    bars = quiet(3) + [(100.0, 100.5, 99.0, 99.5), (99.0, 99.5, 97.5, 98.5)]
    p = frame("AAA", bars)
    script = {day_of(p, 2): [{"symbol": "AAA", "side": "BUY", "quantity": 10}]}
    market, with_bars = replay(p, script)
    assert market.high is not None and with_bars.trades[-1]["fill_price"] == 98.04      # the low 97.5 reaches it
    bare, without = replay(p.drop(columns=["High", "Low"]), script)
    assert bare.high is None and [t["side"] for t in without.trades] == ["BUY"]         # 98.5..99.0 does not
