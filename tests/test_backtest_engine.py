"""Backtest engine: hand-computed cases, the paper broker's own ledger, no look-ahead, the candidate
pruning against a full RiskManager call, and the fills against a plain reference replay of the
live rules (the DB-backed RiskManager, every signal, no caching)."""
import math

import numpy as np
import pandas as pd
import pytest

import backtest_engine as E
import backtest_metrics as M
import constants as C
import market_calendar
import risk_management as rm
import sample_data
import state_db
import trading_api
from broker_base import BUY_SIDES
from settings import TradingSettings

INITIAL = 100_000.0
LIVE = TradingSettings.from_constants()      # the limits and costs of constants.py


# ----------------------------------------------------------------------------- helpers
def make_market(open_, close, signal=None, score=None, vol=None, start="2024-01-02", symbols=None):
    open_ = np.atleast_2d(np.asarray(open_, float))
    close = np.atleast_2d(np.asarray(close, float))
    if open_.shape[0] == 1 and close.shape[0] == 1 and open_.shape[1] > 1 and symbols is None:
        open_, close = open_.T, close.T                       # one symbol given as a flat list
    n, m = close.shape
    dates = market_calendar.sessions(start, pd.Timestamp(start) + pd.Timedelta(days=3 * n + 10))[:n]
    symbols = symbols or [f"S{i}" for i in range(m)]
    sig = np.zeros((n, m), np.int8) if signal is None else np.asarray(signal, np.int8).reshape(n, m)
    sc = np.where(sig > 0, 1.2, np.where(sig < 0, -1.2, 0.0)) if score is None else np.asarray(score, float).reshape(n, m)
    vo = np.full((n, m), 0.02) if vol is None else np.asarray(vol, float).reshape(n, m)
    return E.Market(pd.DatetimeIndex(dates), list(symbols), open_, close, sig, sc, vo)


def sample_market(symbols=("AAA", "BBB", "CCC", "DDD"), start="2023-01-03", end="2023-12-29", gain=0.9):
    """Sample prices and a causal AR-style signal: today's return over its 20-day volatility."""
    dates = market_calendar.sessions(start, end)
    prices = pd.concat([sample_data.simulate_symbol(s, dates) for s in symbols], ignore_index=True)
    close = prices.pivot(index="Date", columns="Symbol", values="Close")
    logret = np.log(close).diff()
    vol = logret.rolling(20).std()
    sig = pd.DataFrame({"score": (gain * logret / vol).stack(), "volatility_20": vol.stack()}).reset_index().dropna()
    sig["signal"] = np.where(sig["score"] >= C.SIGNAL_THRESHOLD, "BUY",
                             np.where(sig["score"] <= -C.SIGNAL_THRESHOLD, "SELL", "HOLD"))
    return prices, sig


def random_walk(n, start=100.0, step=0.003, seed=0):
    rng = np.random.default_rng(seed)
    close = start * np.exp(np.cumsum(rng.normal(0, step, n)))
    open_ = np.concatenate([[start], close[:-1]]) * np.exp(rng.normal(0, step / 3, n))
    return open_, close


def frictionless_equity(result, market):
    """Equity had every fill been at its reference price with no fee: initial cash minus what
    the shares cost at the reference prices plus what they are worth at the last close."""
    cash = result.initial_cash
    pos = {}
    for t in result.trades:
        signed = t["quantity"] if t["side"] in BUY_SIDES else -t["quantity"]
        cash -= signed * t["reference_price"]
        pos[t["symbol"]] = pos.get(t["symbol"], 0) + signed
    last = pd.DataFrame(market.close, columns=market.symbols).ffill().iloc[-1]
    return cash + sum(q * last[s] for s, q in pos.items())


# ----------------------------------------------------------------------------- the market arrays
def reference_market(prices, signals, start=None, end=None):
    """The arrays built the plain pandas way: pivot tables on the calendar day, reindexed."""
    p = prices.assign(Date=pd.to_datetime(prices["Date"]), Symbol=prices["Symbol"].astype(str))
    if start is not None:
        p = p[p["Date"] >= pd.Timestamp(start)]
    if end is not None:
        p = p[p["Date"] <= pd.Timestamp(end)]
    p = p.assign(Date=p["Date"].dt.normalize())
    open_ = p.pivot(index="Date", columns="Symbol", values="Open").sort_index().sort_index(axis=1)
    close = p.pivot(index="Date", columns="Symbol", values="Close").reindex_like(open_)
    s = signals.assign(Date=pd.to_datetime(signals["Date"]).dt.normalize(), Symbol=signals["Symbol"].astype(str),
                       code=signals["signal"].map({"BUY": 1, "SELL": -1, "HOLD": 0}))
    vcol = "volatility_20" if "volatility_20" in s.columns else "volatility"

    def grid(col):
        return s.pivot(index="Date", columns="Symbol", values=col).reindex(index=open_.index, columns=open_.columns)
    signal = grid("code").fillna(0).to_numpy().astype(np.int8)
    signal[close.isna().to_numpy()] = 0
    return (open_.index, list(open_.columns), open_.to_numpy(), close.to_numpy(), signal,
            grid("score").to_numpy(), grid(vcol).to_numpy())


@pytest.mark.parametrize("case", ["stored", "no_extra_rows", "shuffled", "string_dates", "period"])
def test_market_arrays_equal_a_plain_pandas_pivot(case):
    """market_from_frames (day lookup table, symbols hashed once per run of rows) builds the
    same arrays as pivot tables: rows in any order, missing bars, signals for days and symbols
    outside the prices, a time of day on the signal dates, ISO-string dates, a --start/--end."""
    prices, sig = sample_market(symbols=("MMM", "AAA", "ZZZ", "BBB", "CCC"), end="2023-06-30")
    prices = prices.drop(index=prices.index[7::13])                     # missing bars
    extra = pd.DataFrame({"Date": [pd.Timestamp("2022-12-30"), pd.Timestamp("2023-03-01"), pd.Timestamp("2023-03-04")],
                          "Symbol": ["AAA", "QQQ", "BBB"], "score": [1.0, 1.0, -1.0],
                          "volatility_20": [0.02, 0.02, 0.02], "signal": ["BUY", "BUY", "SELL"]})
    if case != "no_extra_rows":
        sig = pd.concat([sig, extra], ignore_index=True)
    sig["Date"] = sig["Date"] + pd.Timedelta(hours=16)                   # a time of day: the calendar day counts
    start = end = None
    if case == "shuffled":
        prices = prices.sample(frac=1.0, random_state=3)
        sig = sig.sample(frac=1.0, random_state=4)
    if case == "string_dates":
        prices = prices.assign(Date=prices["Date"].dt.strftime("%Y-%m-%d"))
        sig = sig.rename(columns={"volatility_20": "volatility"})
    if case == "period":
        start, end = "2023-02-01", "2023-05-31"
    market = E.market_from_frames(prices, sig, start=start, end=end)
    dates, symbols, open_, close, signal, score, vol = reference_market(prices, sig, start, end)
    assert market.dates.equals(dates) and market.dates.dtype == dates.dtype
    assert market.symbols == symbols == sorted(symbols)
    for ours, ref in ((market.open, open_), (market.close, close), (market.signal, signal),
                      (market.score, score), (market.volatility, vol)):
        assert ours.dtype == ref.dtype
        np.testing.assert_array_equal(ours, ref)
    assert np.isnan(market.close).any() and (market.signal != 0).sum() > 50


# ----------------------------------------------------------------------------- hand-computed cases
@pytest.fixture(autouse=True)
def _no_cash_interest(monkeypatch):
    """The ledger identities below are exact without interest on cash (BACKTEST_CASH_INTEREST,
    tested on its own in test_idle_cash_earns_the_risk_free_rate_the_sharpe_subtracts)."""
    monkeypatch.setattr(C, "BACKTEST_CASH_INTEREST", False)


def test_idle_cash_earns_the_risk_free_rate_the_sharpe_subtracts(monkeypatch):
    """Issue 21: the Sharpe subtracted a 2 % risk-free rate while the engine paid no interest, so
    a flat strategy had a negative Sharpe (-9.3e16 with float noise). Now idle cash earns exactly
    that rate: a flat strategy's excess returns are zero and its Sharpe is None, not -1e16."""
    import skill_stats
    monkeypatch.setattr(C, "BACKTEST_CASH_INTEREST", True)
    prices, _ = sample_market(end="2023-04-28")
    market = E.market_from_frames(prices, None)
    result = E.run_engine(market, settings=LIVE)
    n = len(result.equity)
    daily = C.RISK_FREE_RATE / C.TRADING_DAYS_PER_YEAR
    assert result.equity[-1] == pytest.approx(INITIAL * (1 + daily) ** (n - 1), rel=1e-12)
    r = skill_stats.returns_from_equity(result.equity)
    assert np.allclose(r, daily, rtol=0, atol=1e-15)
    assert skill_stats.sharpe_ratio(r) is None and "do not vary" in skill_stats.flat_reason(r - daily)
    monkeypatch.setattr(C, "RISK_FREE_RATE", 0.0)
    assert np.all(E.run_engine(market, settings=LIVE).equity == INITIAL)


def test_flat_signals_give_zero_return_and_no_costs():
    prices, _ = sample_market(end="2023-04-28")
    market = E.market_from_frames(prices, None)
    result = E.run_engine(market, settings=LIVE.replace(slippage_bps=10, commission_per_share=0.01, min_commission=1))
    assert result.trades == [] and result.borrow_events == []
    assert np.all(result.equity == INITIAL)
    analysis = M.analyse(result, market, E.buy_and_hold(market))
    s = analysis["strategy"]
    assert s["total_return"] == 0.0 and s["cagr"] == 0.0 and s["max_drawdown"] == 0.0
    assert s["costs_paid"] == 0.0 and s["trades"] == 0 and s["fills"] == 0
    assert s["exposure"] == 0.0 and s["turnover"] == 0.0


def test_always_long_one_symbol_with_zero_costs_equals_buy_and_hold_from_first_fill():
    open_, close = random_walk(60, seed=1)
    open_[1] = 100.0                                      # 100 000 USD buys exactly 1000 shares
    market = make_market(open_, close, signal=np.ones(60))
    targets = np.full((60, 1), 1000)
    result = E.run_engine(market, E.FixedTargetPolicy(targets), settings=LIVE.with_zero_costs())
    assert [(t["date"], t["side"], t["quantity"]) for t in result.trades] == \
        [(str(market.dates[1].date()), "BUY", 1000)]
    assert result.trades[0]["fill_price"] == 100.0
    np.testing.assert_allclose(result.equity[1:], 1000 * close[1:], rtol=0, atol=1e-8)
    metrics = M.performance_metrics(result.equity_series())
    assert metrics["total_return"] == pytest.approx(close[-1] / open_[1] - 1, abs=1e-12)
    bench = E.buy_and_hold(market, settings=LIVE.with_zero_costs())          # one symbol: the same thing
    np.testing.assert_allclose(bench.to_numpy(), result.equity, rtol=1e-12)


def test_always_long_with_the_live_risk_rules_holds_one_position_like_buy_and_hold():
    n = 40
    open_, close = random_walk(n, step=0.002, seed=2)     # drifts less than the 10 % rebalance band
    market = make_market(open_, close, signal=np.ones(n))
    result = E.run_engine(market, settings=LIVE.with_zero_costs())
    shares = math.floor(C.MAX_POSITION_PCT * INITIAL / close[0] + 1e-9)   # capped by MAX_POSITION_PCT
    assert [(t["side"], t["quantity"]) for t in result.trades] == [("BUY", shares)]
    assert result.trades[0]["date"] == str(market.dates[1].date())        # decided day 0, filled day 1
    fill = result.trades[0]["fill_price"]
    assert fill == pytest.approx(open_[1], abs=1e-6)       # the broker's price has 6 decimals
    expected = INITIAL + shares * (close[1:] - fill)
    np.testing.assert_allclose(result.equity[1:], expected, rtol=0, atol=1e-8)
    assert result.equity[0] == INITIAL


def test_costs_reduce_return_by_exactly_what_the_trade_list_says():
    open_, close = random_walk(30, seed=3)
    o2, c2 = random_walk(30, start=50.0, seed=4)
    market = make_market(np.c_[open_, o2], np.c_[close, c2])
    targets = np.zeros((30, 2), int)
    targets[2:10, 0] = 300
    targets[10:20, 0] = -200                               # a flip: SELL 300 then SELL_SHORT 200
    targets[5:25, 1] = -400
    targets[12:25, 1] = -150
    costs = LIVE.replace(slippage_bps=10, commission_per_share=0.01, min_commission=1.0, borrow_rate=0.03)
    costly = E.run_engine(market, E.FixedTargetPolicy(targets), settings=costs)
    free = E.run_engine(market, E.FixedTargetPolicy(targets), settings=LIVE.with_zero_costs())
    assert [(t["date"], t["side"], t["quantity"]) for t in costly.trades] == \
        [(t["date"], t["side"], t["quantity"]) for t in free.trades]
    paid = (sum(t["commission"] for t in costly.trades) + sum(t["slippage_cost"] for t in costly.trades)
            + sum(b["fee"] for b in costly.borrow_events))
    assert paid > 0 and len(costly.borrow_events) > 0
    # the zero-cost run still rounds fills to the broker's 6 decimals: that residue is its own
    # "slippage" column, below a cent in all
    paid_free = sum(t["commission"] + t["slippage_cost"] for t in free.trades)
    assert abs(paid_free) < 0.01
    assert free.equity[-1] - costly.equity[-1] == pytest.approx(paid - paid_free, abs=1e-6)
    # and day by day: the cumulative daily cost columns explain the whole gap
    gap = free.equity - costly.equity
    daily = np.cumsum(costly.daily_commission + costly.daily_slippage + costly.daily_borrow
                      - free.daily_commission - free.daily_slippage)
    np.testing.assert_allclose(gap, daily, atol=1e-6)
    # the metrics report the same costs
    s = M.analyse(costly, market, E.buy_and_hold(market))["strategy"]
    assert s["costs_paid"] == pytest.approx(paid, abs=1e-6)
    assert sum(t["pnl"] for t in M.round_trips(costly, {"S0": close[-1], "S1": c2[-1]})) == \
        pytest.approx(costly.equity[-1] - INITIAL, abs=1e-6)


def test_costs_identity_with_the_live_risk_rules():
    prices, sig = sample_market()
    market = E.market_from_frames(prices, sig)
    costs = LIVE.replace(slippage_bps=8, commission_per_share=0.005, min_commission=1.0, borrow_rate=0.04)
    result = E.run_engine(market, settings=costs)
    assert len(result.trades) > 50 and any(t["side"] == "SELL_SHORT" for t in result.trades)
    paid = (sum(t["commission"] + t["slippage_cost"] for t in result.trades)
            + sum(b["fee"] for b in result.borrow_events))
    assert frictionless_equity(result, market) - result.equity[-1] == pytest.approx(paid, abs=1e-6)
    for t in result.trades:                               # fills: the broker's slippage on the next open
        assert t["date"] > t["decided"]
        ref = market.open[list(market.dates).index(pd.Timestamp(t["date"])), market.symbols.index(t["symbol"])]
        assert t["reference_price"] == ref
        up = t["side"] in BUY_SIDES
        assert t["fill_price"] == pytest.approx(ref * (1 + 8e-4 if up else 1 - 8e-4), abs=1e-6)
        assert t["commission"] == max(t["quantity"] * 0.005, 1.0)


def test_short_position_gains_when_price_falls_and_pays_borrow_fees():
    n = 16
    close = 100.0 * 0.996 ** np.arange(1, n + 1)           # falls 0.4 % a day: 6 % in all
    open_ = np.concatenate([[100.0], close[:-1]])
    market = make_market(open_, close, signal=-np.ones(n))
    rate = 0.05
    result = E.run_engine(market, settings=LIVE.replace(slippage_bps=0, commission_per_share=0, min_commission=0,
                                                     borrow_rate=rate))
    shares = math.floor(C.MAX_POSITION_PCT * INITIAL / close[0] + 1e-9)
    assert [(t["side"], t["quantity"]) for t in result.trades] == [("SELL_SHORT", shares)]
    fill = result.trades[0]["fill_price"]
    assert fill == pytest.approx(open_[1], abs=1e-6)
    # borrow: ACT/360 on the close, calendar days since the last accrual (3 over a weekend)
    dates = [d.date() for d in market.dates]
    fees = [round(shares * close[d] * rate * (dates[d] - dates[d - 1]).days / 360, 6) for d in range(2, n)]
    assert any((dates[d] - dates[d - 1]).days == 3 for d in range(2, n))
    assert [b["fee"] for b in result.borrow_events] == pytest.approx(fees, abs=1e-9)
    assert result.equity[-1] == pytest.approx(INITIAL + shares * (fill - close[-1]) - sum(fees), abs=1e-6)
    assert result.equity[-1] > INITIAL
    s = M.analyse(result, market, E.buy_and_hold(market))["strategy"]
    assert s["borrow_fees_paid"] == pytest.approx(sum(fees), abs=1e-9) and s["borrow_fees_paid"] > 0
    assert s["total_return"] > 0


def test_tighter_limits_through_the_settings_change_the_replay():
    """Other risk limits reach every rule of the replay through the settings object alone (no
    global is touched): fewer, smaller positions; the constants' own run is unchanged after."""
    symbols = tuple(f"T{i:02d}" for i in range(8))
    prices, sig = sample_market(symbols=symbols, end="2023-03-31")
    market = E.market_from_frames(prices, sig)
    before = E.run_engine(market)
    tight = LIVE.replace(max_positions=2, max_position_pct=0.03)
    limited = E.run_engine(market, settings=tight)
    assert before.n_positions.max() > 2 and limited.n_positions.max() <= 2
    opening = [t for t in limited.trades if t["side"] in ("BUY", "SELL_SHORT")]
    assert opening and all(t["quantity"] * t["decision_price"] <= 0.03 * INITIAL * 1.2 for t in opening)
    assert limited.trades != before.trades and not np.array_equal(limited.equity, before.equity)
    assert C.MAX_POSITIONS == LIVE.max_positions > 2                 # nothing global changed
    again = E.run_engine(market)
    assert again.trades == before.trades
    # the policy's settings are the engine's when none are given
    assert E.run_engine(market, E.LivePolicy(settings=tight)).trades == limited.trades


def test_engine_ledger_matches_the_paper_broker():
    """Replay the engine's fills through the real PaperBroker: same cash, positions and equity."""
    prices, sig = sample_market(symbols=("AAA", "BBB", "CCC"), end="2023-05-31")
    market = E.market_from_frames(prices, sig)
    result = E.run_engine(market)                        # the paper broker's default costs
    assert any(t["side"] == "BUY_TO_COVER" for t in result.trades)
    broker = trading_api.PaperBroker(conn=state_db.connect(":memory:"))
    by_day = {}
    for t in result.trades:
        by_day.setdefault(t["date"], []).append(t)
    held = set()
    for d, day in enumerate(market.dates):
        key = str(day.date())
        todays = by_day.get(key, [])
        if todays:
            broker.set_prices({t["symbol"]: t["reference_price"] for t in todays}, as_of=key)
            for t in todays:
                broker.place_order({"symbol": t["symbol"], "side": t["side"], "quantity": t["quantity"],
                                    "order_type": "MARKET"})
                held.add(t["symbol"])
        closes = {s: float(market.close[d, market.symbols.index(s)]) for s in held}
        if closes:
            broker.set_prices(closes, as_of=key)
        broker.accrue_borrow_fees(as_of=key)
        assert broker.get_account_balance()["equity"] == pytest.approx(result.equity[d], abs=1e-4), key
    positions = {s: p["quantity"] for s, p in broker.get_positions().items()}
    assert positions == result.final_positions


def test_next_close_fill_mode_fills_at_the_next_close():
    open_, close = random_walk(10, seed=9)
    market = make_market(open_, close)
    targets = np.zeros((10, 1), int)
    targets[3:] = 50
    result = E.run_engine(market, E.FixedTargetPolicy(targets), settings=LIVE.with_zero_costs(), fill="next_close")
    (t,) = result.trades
    assert t["decided"] == str(market.dates[3].date()) and t["date"] == str(market.dates[4].date())
    assert t["reference_price"] == close[4]
    with pytest.raises(E.BacktestError):
        E.run_engine(market, E.FixedTargetPolicy(targets), fill="same_close")


# ----------------------------------------------------------------------------- no look-ahead
@pytest.mark.parametrize("cut", [60, 150])
def test_changing_prices_after_day_t_changes_nothing_up_to_day_t(cut):
    prices, sig = sample_market()
    market = E.market_from_frames(prices, sig)
    base = E.run_engine(market)
    rng = np.random.default_rng(cut)
    later = slice(cut + 1, None)
    shock = np.exp(rng.normal(0, 0.2, market.close[later].shape))
    changed = E.Market(market.dates, market.symbols, market.open.copy(), market.close.copy(),
                        market.signal.copy(), market.score.copy(), market.volatility.copy())
    changed.open[later] *= shock
    changed.close[later] *= shock[::-1]
    changed.signal[later] = -changed.signal[later]
    changed.score[later] = -changed.score[later]
    other = E.run_engine(changed)
    assert np.array_equal(base.equity[:cut + 1], other.equity[:cut + 1])
    day = str(market.dates[cut].date())
    assert [t for t in base.trades if t["date"] <= day] == [t for t in other.trades if t["date"] <= day]
    assert not np.array_equal(base.equity, other.equity)
    m1 = M.performance_metrics(base.equity_series().iloc[:cut + 1])
    m2 = M.performance_metrics(other.equity_series().iloc[:cut + 1])
    assert m1 == m2


def test_pruned_risk_calls_equal_passing_every_symbol():
    """LivePolicy passes the RiskManager only the symbols that can change; the result must be
    the same as passing every signal (busy book, gross-exposure limit, a drawdown halt)."""
    symbols = tuple(f"X{i:02d}" for i in range(30))
    widened = 0
    # a winning book, a losing one that halts, and one that cannot short (hard to borrow): a SELL
    # signal closes a long and frees a slot, so the pruned candidate list must be widened
    for gain, borrow_rate in ((0.9, C.DEFAULT_BORROW_RATE), (-2.0, C.DEFAULT_BORROW_RATE),
                              (0.9, C.MAX_BORROW_RATE * 1.5)):
        prices, sig = sample_market(symbols=symbols, start="2022-01-03", end="2022-12-30", gain=gain)
        market = E.market_from_frames(prices, sig)
        costs = LIVE.replace(borrow_rate=borrow_rate)
        fast = E.run_engine(market, E.LivePolicy(settings=costs, prune=True), settings=costs)
        full = E.run_engine(market, E.LivePolicy(settings=costs, prune=False), settings=costs)
        assert fast.trades == full.trades
        assert np.array_equal(fast.equity, full.equity)
        assert fast.halts == full.halts and fast.rejections == full.rejections
        if gain < 0:
            assert full.halts, "the losing book should have hit the drawdown halt"
        widened += fast.widened
    assert widened > 0, "the hard-to-borrow book should have widened the candidate list"




# ----------------------------------------------------------------------------- fills against a plain reference
class ReferencePolicy:
    """The live rules applied the plain way, as the engine applied them before order planning
    was shared: a RiskManager on an in-memory state DB (halt state read from SQLite on every
    call, nothing cached), every BUY/SELL signal passed (no pruning), a Portfolio with every
    price and a borrow quote for every symbol, then target_positions -> orders_for_targets ->
    check_orders."""

    name = "reference"

    def __init__(self, borrow_rate=C.DEFAULT_BORROW_RATE):
        self.risk = rm.RiskManager(conn=state_db.connect(":memory:"), audit=rm.NullAudit())
        self.quote = {"borrow_rate": borrow_rate, "hard_to_borrow": borrow_rate > C.MAX_BORROW_RATE,
                      "shortable": True, "ex_dividend_date": None}
        self.halts, self.rejections = [], 0

    def on_close(self, day, equity):
        out = self.risk.update_equity(equity, day)
        self.halts += [{"date": day.isoformat(), "halt": name, "equity": round(equity, 2),
                        "drawdown": out["drawdown"], "daily_loss": out["daily_loss"]} for name in out["new_halts"]]

    def decide(self, day, symbols, pos, cash, equity, price, signal, score, vol):
        held = [i for i in range(len(symbols)) if pos[i] != 0]
        new = sorted((i for i in range(len(symbols)) if signal[i] != 0 and pos[i] == 0),
                     key=lambda i: (-(abs(score[i]) if np.isfinite(score[i]) else 0.0), i))
        chosen = [i for i in held if signal[i] != 0] + new       # the order target_positions takes them
        prices = {s: float(p) for s, p in zip(symbols, price) if np.isfinite(p)}
        short_mv = sum(-pos[i] * price[i] for i in held if pos[i] < 0)
        pf = rm.Portfolio(equity=equity, cash=cash, buying_power=max(cash - C.PAPER_SHORT_MARGIN_REQ * short_mv, 0.0),
                          positions={symbols[i]: int(pos[i]) for i in held}, prices=prices, last_close=prices,
                          quotes={s: self.quote for s in symbols}, recalled=set(), as_of=day)
        sigs = [{"symbol": symbols[i], "signal": "BUY" if signal[i] > 0 else "SELL", "score": float(score[i]),
                 "price": float(price[i]), "volatility": float(vol[i])} for i in chosen]
        orders = self.risk.orders_for_targets(self.risk.target_positions(sigs, pf), pf)
        checked = self.risk.check_orders(orders, pf)
        self.rejections += sum(1 for _, ok, _ in checked if not ok)
        return [o for o, ok, _ in checked if ok]


@pytest.mark.parametrize("gain,borrow_rate", [(0.9, C.DEFAULT_BORROW_RATE), (-2.0, C.DEFAULT_BORROW_RATE),
                                              (0.9, C.MAX_BORROW_RATE * 1.5)])
def test_fills_equal_a_plain_replay_of_the_live_rules(gain, borrow_rate):
    """The shared order planning with the replay's in-memory risk state, daily halt check and
    candidate pruning fills exactly what the plain DB-backed RiskManager fills: a winning book,
    a losing one that hits the drawdown halt, and hard-to-borrow shorts."""
    symbols = tuple(f"R{i:02d}" for i in range(24))
    prices, sig = sample_market(symbols=symbols, start="2022-01-03", end="2022-12-30", gain=gain)
    market = E.market_from_frames(prices, sig)
    costs = LIVE.replace(borrow_rate=borrow_rate)
    ours = E.run_engine(market, E.LivePolicy(settings=costs), settings=costs)
    ref = E.run_engine(market, ReferencePolicy(borrow_rate), settings=costs)
    assert len(ref.trades) > 50
    assert [{k: v for k, v in t.items() if k != "reason"} for t in ours.trades] == ref.trades
    # the engine records why each reducing fill was sent (the report's "why closed"); opening ones have none
    assert all(t.get("reason") for t in ours.trades if t["side"] in ("SELL", "BUY_TO_COVER"))
    assert not any("reason" in t for t in ours.trades if t["side"] in ("BUY", "SELL_SHORT"))
    assert np.array_equal(ours.equity, ref.equity)
    assert ours.halts == ref.halts and ours.rejections == ref.rejections
    if gain < 0:
        assert ref.halts, "the losing book should have hit the drawdown halt"
    if borrow_rate > C.MAX_BORROW_RATE:
        assert not any(t["side"] == "SELL_SHORT" for t in ours.trades)
    else:
        assert any(t["side"] == "SELL_SHORT" for t in ours.trades)


def test_replay_risk_reads_the_halt_state_once_a_day(monkeypatch):
    """ReplayRisk keeps the halt state in memory (nothing in the kv table) and answers
    is_halted from the day's first read, until update_equity changes it."""
    risk = E.ReplayRisk()
    kv_before = [tuple(row) for row in risk.conn.execute("SELECT * FROM kv")]    # only the creation stamp
    reads = []
    original = rm.RiskManager.is_halted
    monkeypatch.setattr(rm.RiskManager, "is_halted",
                        lambda self, as_of=None: reads.append(as_of) or original(self, as_of))
    day = pd.Timestamp("2024-01-02").date()
    risk.update_equity(100_000.0, day)
    for _ in range(50):
        assert risk.is_halted(day) == (False, "")
    out = risk.update_equity(70_000.0, day)                  # 30 % below the peak: drawdown halt
    assert out["halted"] and "max_drawdown" in out["new_halts"]
    for _ in range(50):
        assert risk.is_halted(day)[0] is True
    assert len(reads) == 2                                 # once after each update_equity
    assert [row["key"] for row in risk.conn.execute("SELECT key FROM kv")] == [state_db.CREATED_KEY]
    assert [tuple(row) for row in risk.conn.execute("SELECT * FROM kv")] == kv_before   # no halt state written


def test_close_reasons_of_reducing_orders():
    from datetime import date as _date
    policy = E.LivePolicy()
    day = _date(2024, 3, 1)
    assert policy._close_reason(day, {"side": "SELL"}, -1.0) == "SELL signal"
    assert policy._close_reason(day, {"side": "BUY_TO_COVER"}, 1.0) == "BUY signal (short covered)"
    assert policy._close_reason(day, {"side": "SELL"}, 1.0) == "resized by risk limits"
    policy._halted_on = day
    assert policy._close_reason(day, {"side": "SELL"}, -1.0).startswith("risk halt")
