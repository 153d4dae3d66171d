"""The backtest engine: replay the sessions day by day with the live cycle's rules and costs.

``market_from_frames`` builds the arrays (``Market``, indexed [day, symbol]); ``run_engine``
replays them. After each close it marks the book to market, lets the policy record the equity
(``LivePolicy``: ``RiskManager.update_equity``, the drawdown and daily-loss halts) and decide
tomorrow's orders (``LivePolicy``: ``order_planning.plan_orders``, the live cycle's own sequence on
the Portfolio the live cycle would see after that close). Approved orders fill at the next
session's open (``constants.BACKTEST_FILL``) at the paper broker's ``slippage_price``, pay its
``commission_for`` and shorts accrue its ``borrow_fee`` (calendar days, ACT/360, before a cover and
at each close). The signal of day t uses data up to day t's close only; its order fills on day t+1.
``buy_and_hold`` is the equal-weight benchmark of the same symbols.

The risk limits and the cost model come from one ``settings.TradingSettings`` (default: built from
``constants.py``): ``run_engine(market, settings=TradingSettings.from_constants().replace(...))``
replays with other limits or costs without touching a global.
"""
from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass, field
from datetime import date

import numpy as np
import pandas as pd

import constants as C
import corporate_actions
import order_prices
import risk_management as rm
import state_db
from errors import UserFacingError
from order_planning import plan_orders
from broker_base import (BUY, BUY_TO_COVER, SELL, SELL_SHORT, borrow_fee, commission_for,
                         paper_buying_power, signed_quantity, slippage_price)
from settings import TradingSettings, default_settings
from short_rules import ShortRules, hard_to_borrow
from signals import BUY as BUY_SIGNAL, SELL as SELL_SIGNAL

FILL_MODES = ("next_open", "next_close")


class BacktestError(UserFacingError):
    """A problem that stops the backtest; the message is one line naming the fix (exit 2)."""



# =========================================================================== the cost model
# broker_base's formulas with the settings' values: the paper broker's own fills.

def fill_price(settings: TradingSettings, reference: float, side: str) -> float:
    return slippage_price(reference, side, settings.slippage_bps)


def commission(settings: TradingSettings, quantity: int) -> float:
    return commission_for(quantity, settings.commission_per_share, settings.min_commission)


def borrow(settings: TradingSettings, quantity: int, price: float, days: int) -> float:
    # the paper broker rounds each accrual to 6 decimals; so do we (same ledger)
    return round(borrow_fee(quantity, price, settings.borrow_rate, days, settings.borrow_day_count), 6)


# =========================================================================== market arrays

@dataclass
class Market:
    """Everything the engine reads, as arrays indexed [day, symbol].

    ``signal[t]`` / ``score[t]`` / ``volatility[t]`` are what the live cycle would compute after
    day t's close (from data up to that close); ``open``/``close`` are day t's prices (NaN where
    the symbol has no bar); ``high``/``low`` its range (the protective stops read them; where the
    data has no High/Low they are max/min(open, close))."""
    dates: pd.DatetimeIndex
    symbols: list[str]
    open: np.ndarray
    close: np.ndarray
    signal: np.ndarray          # int8: 1 BUY, -1 SELL, 0 HOLD
    score: np.ndarray
    volatility: np.ndarray
    actions: pd.DataFrame | None = None     # corporate actions (corporate_actions frame); prices as traded
    factor: np.ndarray | None = None        # [day, symbol] adjusted / as-traded price (1 = none)
    high: np.ndarray | None = None          # [day, symbol] the session's high (None: max(open, close))
    low: np.ndarray | None = None           # [day, symbol] the session's low (None: min(open, close))

    @property
    def shape(self) -> tuple[int, int]:
        return self.close.shape


def _day_numbers(dates: pd.Series) -> tuple[np.ndarray, np.dtype] | None:
    """Whole days since the epoch of a naive datetime64 column (what ``.dt.normalize()`` keeps),
    and its dtype; None for anything else (time zones, strings), which takes the pandas path."""
    if not (isinstance(dates.dtype, np.dtype) and dates.dtype.kind == "M"):
        return None
    unit = np.datetime_data(dates.dtype)[0]
    ticks = int(np.timedelta64(1, "D") // np.timedelta64(1, unit))
    return dates.to_numpy().view("i8") // ticks, dates.dtype


def _runs_factorize(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``pd.factorize(values, sort=True)`` for a column stored in runs (price rows come symbol by
    symbol): only the first value of each run is hashed, then the codes are repeated."""
    if len(values) == 0:
        return pd.factorize(values, sort=True)
    starts = np.flatnonzero(np.concatenate(([True], values[1:] != values[:-1])))
    codes, uniques = pd.factorize(values[starts], sort=True)
    return np.repeat(codes, np.diff(np.append(starts, len(values)))), uniques


def market_from_frames(prices: pd.DataFrame, signals: pd.DataFrame | None = None,
                       start=None, end=None, actions: pd.DataFrame | None = None) -> Market:
    """Build the arrays from long frames.

    ``prices``: Date, Symbol, Open, Close, and High, Low when the data has them (the protective
    stops' bar; without them a session spans its open and close) -- the sessions of the test.
    ``signals``: Date, Symbol, signal ("BUY"/"SELL"/"HOLD" as signals.py writes them), score and
    volatility_20 (or volatility);
    typically ``signals.score_predictions(model.predict(features))``. Rows outside the price
    dates are ignored; a (day, symbol) without a signal row is HOLD. Dates count by the calendar
    day (a time of day is dropped). ``actions`` (splits and dividends, ``corporate_actions``): when
    given and ``prices`` carries ``AdjFactor`` (the processed file's adjusted / as-traded ratio),
    the engine trades the prices as traded and applies the actions to the book, as the paper
    broker does; otherwise it trades the prices given."""
    p = prices
    pdates = pd.to_datetime(p["Date"])
    keep = np.ones(len(p), dtype=bool)
    if start is not None:
        keep &= (pdates >= pd.Timestamp(start)).to_numpy()
    if end is not None:
        keep &= (pdates <= pd.Timestamp(end)).to_numpy()
    if not keep.all():
        p, pdates = p[keep], pdates[keep]
    if p.empty:
        raise BacktestError("no price rows in the backtest period: widen --start/--end or update the data "
                            "(./run_daily_data_update.sh)")
    sym_col = p["Symbol"] if pd.api.types.is_string_dtype(p["Symbol"].dtype) else p["Symbol"].astype(str)
    si, syms = _runs_factorize(sym_col.to_numpy(dtype=object))
    symbols = [str(x) for x in syms]
    fast = _day_numbers(pdates)
    if fast is not None:
        # a day-number lookup table instead of hashing every timestamp: the sessions span a few
        # thousand calendar days (the span is bounded; a wider one takes the pandas path)
        days, dtype = fast
        lo, hi = int(days.min()), int(days.max())
        fast = hi - lo <= C.BACKTEST_MAX_DAY_SPAN
    if fast:
        present = np.zeros(hi - lo + 1, dtype=bool)
        present[days - lo] = True
        lookup = np.where(present, np.cumsum(present) - 1, -1)       # calendar day -> session, or -1
        di = lookup[days - lo]
        dates = pd.DatetimeIndex((np.flatnonzero(present) + lo).astype("datetime64[D]").astype(dtype))
    else:
        di, dates = pd.factorize(pdates.dt.normalize(), sort=True)
        dates = pd.DatetimeIndex(dates)
    n, m = len(dates), len(symbols)
    # every array is filled through its flat view with one flat index (several times faster
    # than a two-axis scatter); cell [d, s] is element d * m + s
    open_ = np.full((n, m), np.nan)
    close = np.full((n, m), np.nan)
    cell = di * m + si
    factor = None
    if actions is not None and "AdjFactor" in p.columns:
        factor = np.ones((n, m))
        factor.reshape(-1)[cell] = p["AdjFactor"].to_numpy(float)
    open_.reshape(-1)[cell] = p["Open"].to_numpy(float) / (1.0 if factor is None else factor.reshape(-1)[cell])
    close.reshape(-1)[cell] = p["Close"].to_numpy(float) / (1.0 if factor is None else factor.reshape(-1)[cell])
    high = low = None
    if "High" in p.columns and "Low" in p.columns:
        high, low = np.full((n, m), np.nan), np.full((n, m), np.nan)
        high.reshape(-1)[cell] = p["High"].to_numpy(float) / (1.0 if factor is None else factor.reshape(-1)[cell])
        low.reshape(-1)[cell] = p["Low"].to_numpy(float) / (1.0 if factor is None else factor.reshape(-1)[cell])
    signal = np.zeros((n, m), dtype=np.int8)
    score = np.full((n, m), np.nan)
    vol = np.full((n, m), np.nan)
    if signals is not None and len(signals):
        s = signals
        sdates = pd.to_datetime(s["Date"])
        sfast = _day_numbers(sdates) if fast else None
        if sfast is not None and sfast[1] == dtype:
            sdays = sfast[0] - lo
            if sdays.min() >= 0 and sdays.max() <= hi - lo:
                sdi = lookup[sdays]
            else:
                sdi = np.where((sdays >= 0) & (sdays <= hi - lo), lookup[np.clip(sdays, 0, hi - lo)], -1)
        else:
            sdi = dates.get_indexer(sdates.dt.normalize())
        ssi = pd.Index(symbols).get_indexer(s["Symbol"].astype(str))
        ok = (sdi >= 0) & (ssi >= 0)
        cell = sdi[ok] * m + ssi[ok]
        col = s["signal"].to_numpy(dtype=object)
        codes = (col == BUY_SIGNAL).astype(np.int8) - (col == SELL_SIGNAL).astype(np.int8)
        signal.reshape(-1)[cell] = codes[ok]
        score.reshape(-1)[cell] = s["score"].to_numpy(float)[ok]
        vcol = "volatility_20" if "volatility_20" in s.columns else "volatility"
        vol.reshape(-1)[cell] = s[vcol].to_numpy(float)[ok]
    signal[~np.isfinite(close)] = 0                 # no bar that day: the cycle has nothing to act on
    used = None
    if factor is not None and actions is not None:
        used = corporate_actions.normalize(actions)
        used = used[used["Symbol"].isin(symbols)].reset_index(drop=True)
    return Market(dates, symbols, open_, close, signal, score, vol, actions=used,
                  factor=factor if used is not None else None, high=high, low=low)


# =========================================================================== policies

class _Quiet:
    """Silence the risk logger while the engine replays history: thousands of simulated
    rejections would flood the trading log, and a simulated ``MAX DRAWDOWN REACHED`` in the real
    logs would mislead whoever greps them during an incident. The engine records halts and
    rejections itself and puts them in the report."""

    def __init__(self, names=("risk", "broker")):
        self.loggers = [logging.getLogger(n) for n in names]

    def __enter__(self):
        self.saved = [lg.disabled for lg in self.loggers]
        for lg in self.loggers:
            lg.disabled = True
        return self

    def __exit__(self, *exc):
        for lg, saved in zip(self.loggers, self.saved):
            lg.disabled = saved
        return False


class ReplayRisk(rm.RiskManager):
    """The live ``RiskManager`` for a replay: its halt state in a plain dict instead of the state
    DB (the do-not-short list and forced buy-ins in a private in-memory database, the list read
    again only after it changed), no audit, and the halt state read once a day (only
    ``update_equity`` and the resets write it). Every rule is the RiskManager's own."""

    def __init__(self, settings: TradingSettings | None = None):
        settings = settings or default_settings()
        conn, audit = state_db.connect(":memory:"), rm.NullAudit()
        super().__init__(conn=conn, audit=audit, settings=settings,
                         shorts=ShortRules(conn, audit, settings, remember_list=True))
        self._state: dict = {}
        self._halt = None                     # (as_of, is_halted(as_of))

    def _kv_get(self, key):
        return self._state.get(key)

    def _kv_set(self, key, value):
        self._state[key] = value
        self._halt = None                     # any write may change the halt state: read it again

    def _kv_delete(self, key):
        self._state.pop(key, None)
        self._halt = None

    def _kv_transaction(self):
        return contextlib.nullcontext()

    def is_halted(self, as_of=None):
        if self._halt is None or self._halt[0] != as_of:
            self._halt = (as_of, super().is_halted(as_of))
        return self._halt[1]


class LivePolicy:
    """The live cycle's decisions: ``order_planning.plan_orders`` (forced buy-ins, targets,
    orders, pre-trade checks) with a ``ReplayRisk``.

    Per day: ``update_equity`` (halts), then the plan on the Portfolio the live cycle would see
    after the close (prices = last close = that close; buying power as the paper broker computes
    it; borrow data as the paper broker quotes it: ``borrow_rate``, shortable, no recall, no known
    ex-dividend date). No drift hold: the replay has no drift monitor.

    Only symbols that can change are passed (``prune=True``): held symbols with a BUY/SELL
    signal, and unheld BUY/SELL symbols in the order ``target_positions`` takes them (|score|
    descending, then symbol), first as many as there are free slots (``MAX_POSITIONS`` minus
    the held positions; ranked only when some are taken). HOLD and missing signals
    keep a position in ``target_positions``, so dropping them changes nothing. New positions are
    granted in that order; the symbols left out could not have received one when every slot is
    taken, when the gross exposure left is below each of their prices, or while trading is
    halted (targets then only move toward flat). Otherwise the candidate list is widened (x4, at least to MAX_POSITIONS)
    and the targets computed again, up to all candidates. ``prune=False`` passes every BUY/SELL
    symbol; the tests check both give the same fills."""

    name = "live"

    def __init__(self, risk=None, settings: TradingSettings | None = None, prune: bool = True):
        self.prune = prune
        self.settings = settings or (risk.settings if risk is not None else default_settings())
        self.risk = risk if risk is not None else ReplayRisk(self.settings)
        self.halts: list[dict] = []
        self.rejections = 0
        self.rejection_samples: list[dict] = []
        self.widened = 0
        self._halted_on = None
        self._index = None                   # (symbols, {symbol: column}, symbols as an array) of the replay
        rate = float(self.settings.borrow_rate)
        self._quote = {"borrow_rate": rate, "shortable": True, "ex_dividend_date": None,
                       "hard_to_borrow": hard_to_borrow({"borrow_rate": rate}, self.settings) is not None}

    def _complete(self, targets: dict, prices: dict, equity: float, rest_prices: np.ndarray) -> bool:
        """True when no candidate left out could have received a position
        (``risk_management.room_for_new_positions``): no slot is free, or the gross exposure left
        is below the price of each of them (a new position is cut to room // price shares)."""
        slots, room = rm.room_for_new_positions(targets, prices.get, equity, self.settings)
        return bool(slots <= 0 or len(rest_prices) == 0 or room < float(np.min(rest_prices)) * (1.0 - 1e-9))

    def on_close(self, day: date, equity: float) -> None:
        out = self.risk.update_equity(equity, day)
        self._halted_on = day if out.get("halted") else None
        for name in out.get("new_halts", []):
            self.halts.append({"date": day.isoformat(), "halt": name, "equity": round(equity, 2),
                               "drawdown": out.get("drawdown"), "daily_loss": out.get("daily_loss")})

    def decide(self, day: date, symbols: list[str], pos: np.ndarray, cash: float, equity: float,
               price: np.ndarray, signal: np.ndarray, score: np.ndarray, vol: np.ndarray) -> list[dict]:
        held_i = np.flatnonzero(pos)
        active = signal != 0
        held_active = held_i[active[held_i]].tolist()
        unheld = np.flatnonzero(active & (pos == 0))
        if self.prune and len(unheld) and self._halted_on == day:
            unheld = unheld[:0]          # while halted a target only moves toward flat: nothing new opens
        if not held_active and len(unheld) == 0:
            return []
        held, pos_h, price_h = held_i.tolist(), pos[held_i].tolist(), price[held_i].tolist()
        short_mv = float(sum(-q * p for q, p in zip(pos_h, price_h) if q < 0))
        prices: dict[str, float] = {}
        quotes: dict[str, dict] = {}
        sigs: list[dict] = []
        pf = rm.Portfolio(equity=equity, cash=cash, buying_power=paper_buying_power(cash, short_mv, margin_req=self.settings.short_margin_req),
                          positions={symbols[i]: int(q) for i, q in zip(held, pos_h)}, prices=prices,
                          last_close=prices, quotes=quotes, recalled=set(), as_of=day)

        def add(idx: list[int]) -> list[dict]:
            """The signals of ``idx`` appended, with their prices and borrow quotes (``item``: a
            Python number, as ``tolist`` gives, without building arrays for a handful of symbols)."""
            for i in idx:
                name, px = symbols[i], price.item(i)
                prices[name] = px
                if signal.item(i) < 0 or pos.item(i) < 0:
                    quotes[name] = self._quote
                sigs.append({"symbol": name, "signal": BUY_SIGNAL if signal.item(i) > 0 else SELL_SIGNAL,
                             "score": score.item(i), "price": px, "volatility": vol.item(i)})
            return sigs

        for i, q, p in zip(held, pos_h, price_h):     # every held position is priced, and quoted when short
            prices[symbols[i]] = p
            if q < 0:
                quotes[symbols[i]] = self._quote
        # only the free slots can open before a held position closes (then the list is widened):
        # the first candidates in the order target_positions grants them (new_position_order)
        if self._index is None or self._index[0] is not symbols:
            self._index = (symbols, {s: i for i, s in enumerate(symbols)}, np.asarray(symbols, dtype=str))
        take = (max(rm.room_for_new_positions(pf.positions, prices.get, equity, self.settings)[0], 0)
                if self.prune else len(unheld))
        ranked: list = []                    # [unheld in that order, as a list], sorted on first use

        def rank() -> list[int]:
            nonlocal unheld
            if not ranked:
                if len(unheld) > 1:
                    unheld = unheld[rm.new_position_order(score[unheld], self._index[2][unheld])]
                ranked.append(unheld.tolist())
            return ranked[0]

        add(held_active + (rank()[:take] if take else []))

        def widen(targets: dict):
            nonlocal take
            if not self.prune or take >= len(unheld) or self._complete(targets, prices, equity,
                                                                       price[unheld[take:]]):
                return None
            self.widened += 1
            take, before = max(take * 4, self.settings.max_positions), take
            return add(rank()[before:take])

        plan = plan_orders(self.risk, sigs, pf, widen=widen)
        for order, reason in plan.rejected:
            self.rejections += 1
            if len(self.rejection_samples) < 20:
                self.rejection_samples.append({"date": day.isoformat(), "order": dict(order), "reason": reason})
        index = self._index[1]
        for order in plan.approved:
            if order["side"] in (SELL, BUY_TO_COVER) and not order.get("reason"):
                order["reason"] = self._close_reason(day, order, signal[index[order["symbol"]]])
        return plan.approved

    def _close_reason(self, day: date, order: dict, signal: float) -> str:
        """Why a reducing order was sent (the round-trip table's "why closed"): a halt, a signal
        against the position, or the risk sizing shrinking it."""
        if self._halted_on == day:
            return "risk halt (trading halted: positions only move toward flat)"
        against = signal < 0 if order["side"] == SELL else signal > 0
        if against:
            return "SELL signal" if order["side"] == SELL else "BUY signal (short covered)"
        return "resized by risk limits"


class FixedTargetPolicy:
    """Orders toward given target shares (``targets[day, symbol]``, signed ints) through
    ``risk_management.orders_for_targets``, with NO risk checks or halts: for tests of the
    accounting and for what-if analysis only. The CLI always uses ``LivePolicy``."""

    name = "fixed_targets"

    def __init__(self, targets: np.ndarray):
        self.targets = np.asarray(targets)
        self.halts: list[dict] = []
        self.rejections = 0
        self.rejection_samples: list[dict] = []
        self.widened = 0
        self._d = -1

    def on_close(self, day: date, equity: float) -> None:
        self._d += 1

    def decide(self, day, symbols, pos, cash, equity, price, signal, score, vol) -> list[dict]:
        want = self.targets[self._d]
        idx = np.flatnonzero(want != pos)
        if len(idx) == 0:
            return []
        held = np.flatnonzero(pos != 0)
        pf = rm.Portfolio(equity=equity, cash=cash, positions={symbols[i]: int(pos[i]) for i in held},
                          prices={symbols[i]: float(price[i]) for i in np.union1d(idx, held)}, as_of=day)
        return rm.orders_for_targets({symbols[i]: int(want[i]) for i in idx}, pf)


# =========================================================================== the engine

@dataclass
class EngineResult:
    dates: pd.DatetimeIndex
    symbols: list[str]
    initial_cash: float
    equity: np.ndarray                 # at each close, after fills and borrow fees
    cash: np.ndarray
    long_value: np.ndarray
    short_value: np.ndarray            # positive number
    n_positions: np.ndarray
    trades: list[dict]                 # every fill
    borrow_events: list[dict]          # every borrow-fee accrual {date, symbol, quantity, price, days, fee}
    daily_commission: np.ndarray
    daily_slippage: np.ndarray
    daily_borrow: np.ndarray
    final_positions: dict[str, int]
    halts: list[dict]
    rejections: int
    rejection_samples: list[dict]
    cancelled: list[dict]              # orders that could not fill (no price on the fill day)
    fill: str
    policy: str
    widened: int = 0
    action_events: list = field(default_factory=list)   # every split / dividend applied to the book

    @property
    def gross(self) -> np.ndarray:
        return self.long_value + self.short_value

    def equity_series(self) -> pd.Series:
        return pd.Series(self.equity, index=self.dates, name="equity")


def run_engine(market: Market, policy=None, settings: TradingSettings | None = None,
               initial_cash: float | None = None, fill: str | None = None,
               progress=None) -> EngineResult:
    """Replay ``market`` day by day. No information from the future: the decision after day t's
    close sees only row t of the arrays (and the book), and fills happen on day t+1
    (``fill='next_open'``: at its open; ``'next_close'``: at its close). The last day's signals
    are not filled (there is no next session). ``settings``: the risk limits and costs (default:
    the policy's, else ``constants.py``); ``policy`` defaults to a ``LivePolicy`` with them.
    ``initial_cash`` and ``fill`` default to INITIAL_PAPER_CASH and BACKTEST_FILL."""
    initial_cash = C.INITIAL_PAPER_CASH if initial_cash is None else initial_cash
    fill = C.BACKTEST_FILL if fill is None else fill
    _check_fill_mode(fill)
    settings = settings or getattr(policy, "settings", None) or default_settings()
    policy = policy if policy is not None else LivePolicy(settings=settings)
    r = _start_replay(market, settings, initial_cash, fill)
    n = len(r.pydates)
    pending: list[dict] = []
    decided_iso: str | None = None          # the session the pending orders were decided on
    with _Quiet():
        for d in range(n):
            _apply_actions(r, d)                          # splits and dividends before the day's fills
            if r.stops_on:
                _fill_stops(r, d)                         # resting protective stops, before other fills
            _fill_orders(r, d, pending, decided_iso)      # yesterday's approved orders fill today
            pending = []
            _pay_cash_interest(r, d)                      # last close's free cash earns the risk-free rate
            eq = _close_the_day(r, d)                     # borrow fees to today's close, mark to market
            policy.on_close(r.pydates[d], eq)             # the cycle after the close: halts, then
            if d < n - 1:                                 # tomorrow's orders (none after the last day)
                pending = policy.decide(r.pydates[d], r.symbols, r.pos, r.cash, eq, r.close_ff[d],
                                        market.signal[d], market.score[d], market.volatility[d])
                decided_iso = r.iso[d]
            if progress is not None:
                progress(d + 1, n)
    return _result(r, market, policy, initial_cash, fill)


@dataclass(slots=True)
class _Replay:
    """The replay's state passed between the steps of a day: the inputs as the loop reads them,
    the book (cash, signed shares, the date each short's borrow is paid up to), what was recorded
    (fills, borrow accruals, cancelled orders; one counter ``seq`` orders fills and accruals) and
    the daily series that become the ``EngineResult``. Slots: the per-fill steps read it often."""
    settings: TradingSettings
    symbols: list[str]
    sym_idx: dict[str, int]                 # symbol -> column
    pydates: list[date]
    iso: list[str]                          # the sessions as YYYY-MM-DD
    fill_px: np.ndarray                     # [day, symbol] the price an order fills at (open or close)
    close_ff: np.ndarray                    # [day, symbol] the last known close (marks to market)
    cash: float
    pos: np.ndarray                         # signed shares (whole numbers, stored as float)
    accrued_to: dict[int, date]             # short symbol index -> date its borrow is paid up to
    equity: np.ndarray
    cash_arr: np.ndarray
    long_v: np.ndarray
    short_v: np.ndarray
    npos: np.ndarray
    d_comm: np.ndarray
    d_slip: np.ndarray
    d_borrow: np.ndarray
    trades: list[dict]
    borrow_events: list[dict]
    cancelled: list[dict]
    seq: int = 0
    actions_by_day: dict = field(default_factory=dict)     # session index -> [(symbol index, action row)]
    dividends_due: list = field(default_factory=list)      # [(pay date, symbol, cash)] not yet paid
    action_events: list = field(default_factory=list)      # every applied split / dividend
    stops_on: bool = False                  # PROTECTIVE_STOPS at the start of the replay
    collar: bool = False                    # ORDER_TYPE = limit_collar at the start of the replay
    open_px: np.ndarray | None = None       # [day, symbol] opens (collars and stops)
    high: np.ndarray | None = None          # [day, symbol] the bar's high (stops)
    low: np.ndarray | None = None           # [day, symbol] the bar's low (stops)
    stops: dict = field(default_factory=dict)   # symbol index -> {"side", "stop", "quantity", "placed"}
    avg: dict = field(default_factory=dict)     # symbol index -> the position's average price (stops' reference)
    stopped_today: set = field(default_factory=set)    # symbol indexes a stop closed today


def _check_fill_mode(fill: str) -> None:
    """Refuse a fill mode the engine does not know, naming the ones it does."""
    if fill not in FILL_MODES:
        raise BacktestError(f"fill mode {fill!r} is not supported: use one of {', '.join(FILL_MODES)} "
                            "(constants.BACKTEST_FILL or --fill)")


def _start_replay(market: Market, settings: TradingSettings, initial_cash: float, fill: str) -> _Replay:
    """The state before the first session: all cash, no positions, empty records and series."""
    n, m = market.shape
    pydates = [d.date() for d in market.dates]
    stops_on = bool(C.PROTECTIVE_STOPS)
    return _Replay(
        actions_by_day=_actions_by_day(market),
        settings=settings, symbols=market.symbols, sym_idx={s: i for i, s in enumerate(market.symbols)},
        pydates=pydates, iso=[d.isoformat() for d in pydates],
        fill_px=market.open if fill == "next_open" else market.close,
        close_ff=pd.DataFrame(market.close).ffill().to_numpy(),      # mark to market at the last known close
        cash=float(initial_cash), pos=np.zeros(m), accrued_to={},
        equity=np.zeros(n), cash_arr=np.zeros(n), long_v=np.zeros(n), short_v=np.zeros(n),
        npos=np.zeros(n, dtype=int), d_comm=np.zeros(n), d_slip=np.zeros(n), d_borrow=np.zeros(n),
        trades=[], borrow_events=[], cancelled=[],
        stops_on=stops_on, collar=order_prices.uses_collar(), open_px=market.open,
        high=None if not stops_on else market.high if market.high is not None else np.fmax(market.open, market.close),
        low=None if not stops_on else market.low if market.low is not None else np.fmin(market.open, market.close))


def _actions_by_day(market: Market) -> dict:
    """Session index -> [(symbol index, action row)]: each action lands on the first session on or
    after its ex-date (none on the first session: nothing is held yet)."""
    out: dict = {}
    if market.actions is None or not len(market.actions):
        return out
    idx = {s: i for i, s in enumerate(market.symbols)}
    days = market.dates.searchsorted(pd.DatetimeIndex(market.actions["Date"]))
    for k, (_, row) in enumerate(market.actions.iterrows()):
        if 0 < days[k] < len(market.dates):
            out.setdefault(int(days[k]), []).append((idx[row["Symbol"]], row))
    return out


def _apply_actions(r: _Replay, d: int) -> None:
    """Step 0 of day ``d``, before its fills: the corporate actions whose ex-date is today change
    the book through ``corporate_actions.position_events`` (the paper broker's rule): a split
    multiplies the shares (cash in lieu of a fraction), a dividend is owed to a long and by a
    short and paid on its pay date (today when none is known)."""
    today = r.pydates[d]
    for i, row in r.actions_by_day.get(d, []):
        qty = int(r.pos[i])
        prev = r.close_ff[d - 1, i]
        for ev in corporate_actions.position_events(r.symbols[i], qty, 0.0, row,
                                                    float(prev) if math.isfinite(prev) else None):
            r.pos[i] = r.pos[i] + ev.quantity_change
            if ev.kind == corporate_actions.SPLIT:
                r.cash += ev.cash_change
                _split_stop(r, i, float(row["Split"]))
            else:
                r.dividends_due.append((ev.pay_date, ev.symbol, ev.cash_change))
            r.action_events.append({"date": r.iso[d], "kind": ev.kind, "symbol": ev.symbol,
                                    "quantity_change": ev.quantity_change, "cash_change": ev.cash_change,
                                    "pay_date": ev.pay_date.isoformat(), "note": ev.note})
            if r.pos[i] >= 0:
                r.accrued_to.pop(i, None)
    if r.dividends_due:
        due = [x for x in r.dividends_due if x[0] <= today]
        r.dividends_due = [x for x in r.dividends_due if x[0] > today]
        r.cash += sum(cash for _, _, cash in due)


def _split_stop(r: _Replay, i: int, ratio: float) -> None:
    """A split of symbol ``i``: its average price divided, its resting stop moved by
    ``order_prices.split_stop`` for the new quantity (the paper broker does the same), or dropped
    when the split left no shares."""
    if not r.stops_on:
        return
    qty = int(r.pos.item(i))
    if i in r.avg:
        r.avg[i] = round(r.avg[i] / ratio, 6)
    if i in r.stops:
        if qty == 0:
            del r.stops[i]
            return
        st = r.stops[i]
        st["stop"] = order_prices.split_stop(st["side"], st["stop"], ratio)
        st["quantity"] = abs(qty)


def _fill_orders(r: _Replay, d: int, orders: list[dict], decided_iso: str | None) -> None:
    """Step 1 of day ``d``: fill the orders decided on session ``decided_iso`` in the order given
    (risk-reducing ones first) at today's fill price with the paper broker's slippage and
    commission; a cover first pays the borrow up to today. An order without a price today is
    cancelled. Records each fill and the day's commission, slippage and borrow totals (summed in
    fill order)."""
    comm_d = slip_d = borrow_d = 0.0
    fill_row = r.fill_px[d]
    pos, accrued_to, settings, iso_d, cash = r.pos, r.accrued_to, r.settings, r.iso[d], r.cash
    filled: set[int] = set()                # symbols whose position changed today (their stops)
    for order in orders:
        sym = order["symbol"]
        i = r.sym_idx[sym]
        ref = fill_row.item(i)
        side, qty = order["side"], int(order["quantity"])
        if not math.isfinite(ref) or ref <= 0:
            r.cancelled.append({"date": iso_d, "decided": decided_iso,
                                **order, "reason": "no price on the fill day"})
            continue
        if i in r.stopped_today and ((side == SELL and pos.item(i) < qty)
                                     or (side == BUY_TO_COVER and -pos.item(i) < qty)):
            # the paper broker refuses to close more than is held: the stop closed it this morning
            r.cancelled.append({"date": iso_d, "decided": decided_iso, **order,
                                "reason": "the position was closed by its protective stop"})
            continue
        limit = None
        if r.collar:
            limit, miss = _collar(r, d, i, side)
            if miss:
                r.cancelled.append({"date": iso_d, "decided": decided_iso, **order, "limit_price": limit,
                                    "reason": miss})
                continue
        if side == BUY_TO_COVER:                # the broker charges the borrow up to the cover
            fee = _accrue_borrow(r, i, d, ref)
            cash -= fee
            borrow_d += fee
        price = fill_price(settings, ref, side)
        if limit is not None:                   # never beyond the collar's limit
            price = order_prices.within_limit("buy" if side in (BUY, BUY_TO_COVER) else "sell", price, limit)
        paid = commission(settings, qty)
        signed = signed_quantity(side, qty)
        cash -= signed * price + paid
        before = pos.item(i)
        after = before + signed
        pos[i] = after
        if r.stops_on:                          # the position's average price, as the paper broker keeps it
            if after == 0:
                r.avg.pop(i, None)
            elif side in (BUY, SELL_SHORT):
                r.avg[i] = round((abs(before) * r.avg.get(i, 0.0) + qty * price) / abs(after), 6)
        if side == SELL_SHORT and i not in accrued_to:
            accrued_to[i] = r.pydates[d]
        if after >= 0:
            accrued_to.pop(i, None)
        slip = (price - ref) * signed           # what the fill cost against the reference price
        comm_d += paid
        slip_d += slip
        r.seq += 1
        trade = {"seq": r.seq, "date": iso_d, "decided": decided_iso,
                 "symbol": sym, "side": side, "quantity": qty,
                 "decision_price": float(order.get("price", float("nan"))),
                 "reference_price": ref, "fill_price": price, "notional": qty * price,
                 "commission": paid, "slippage_cost": slip, "position_after": int(after)}
        if order.get("reason"):
            trade["reason"] = order["reason"]
        if limit is not None:
            trade["limit_price"] = limit
        r.trades.append(trade)
        filled.add(i)
    r.cash = cash
    r.d_comm[d] += comm_d
    r.d_slip[d] += slip_d
    r.d_borrow[d] += borrow_d
    if r.stops_on:
        for i in sorted(filled):
            _place_stop(r, d, i)


def _collar(r: _Replay, d: int, i: int, side: str) -> tuple[float, str | None]:
    """The collared limit of an order of symbol ``i`` decided at the close before day ``d``
    (``order_prices.collar_limit`` of that close) and, when day ``d``'s open is beyond it
    (``order_prices.collar_fill``), why it does not fill (else None)."""
    action = "buy" if side in (BUY, BUY_TO_COVER) else "sell"
    decision = r.close_ff.item(d - 1, i)
    limit = order_prices.collar_limit(action, decision)
    open_ = r.open_px.item(d, i) if r.open_px is not None else float("nan")
    if math.isfinite(open_) and order_prices.collar_fill(action, limit, open_) is not None:
        return limit, None
    return limit, (f"not filled: the open {open_:.4f} is beyond the price collar's limit {limit:.4f} "
                   f"(decision close {decision:.4f}, PRICE_COLLAR_BPS); re-planned by the next session's signals")


def _place_stop(r: _Replay, d: int, i: int) -> None:
    """After day ``d``'s fills changed symbol ``i``: its protective stop for the whole position
    at ``order_prices.stop_price`` from the position's average price and the ``daily_volatility``
    of the closes known when it is placed (up to day d's close: the paper cycle places it after
    the close of the session whose open filled the entry; ``protective_stops`` of the live cycle
    takes the same two inputs); replaced when the size changed, removed when the position is
    closed. It is checked from day d+1 (``_fill_stops``)."""
    qty = int(r.pos.item(i))
    if qty == 0:
        r.stops.pop(i, None)
        return
    side = "long" if qty > 0 else "short"
    reference = r.avg.get(i) or r.close_ff.item(d, i)
    lo = max(0, d - int(C.STOP_VOL_WINDOW))
    vol = order_prices.daily_volatility(r.close_ff[lo:d + 1, i].tolist())
    r.stops[i] = {"side": side, "stop": order_prices.stop_price(side, reference, vol), "quantity": abs(qty),
                  "placed": d, "reference": reference}


def _fill_stops(r: _Replay, d: int) -> None:
    """Step 0b of day ``d``, before its other fills: each resting stop placed before today that
    today's bar triggers (``order_prices.stop_fill``: the stop price, or the open when the open
    gaps through it) closes the whole position at that price (no slippage: the paper broker's
    rule), with the commission (and, for a short, the borrow up to today). Recorded as a trade
    with its reason."""
    r.stopped_today = set()
    for i, st in list(r.stops.items()):
        if st["placed"] >= d:
            continue
        open_ = r.open_px.item(d, i) if r.open_px is not None else float("nan")
        if not math.isfinite(open_) or open_ <= 0:
            continue
        low, high = r.low.item(d, i), r.high.item(d, i)    # type: ignore[union-attr]
        low = min(low, open_) if math.isfinite(low) else open_
        high = max(high, open_) if math.isfinite(high) else open_
        price = order_prices.stop_fill(st["side"], st["stop"], open_, low, high)
        if price is None:
            continue
        qty = abs(int(r.pos.item(i)))
        side = SELL if st["side"] == "long" else BUY_TO_COVER
        if side == BUY_TO_COVER:
            fee = _accrue_borrow(r, i, d, price)
            r.cash -= fee
            r.d_borrow[d] += fee
        paid = commission(r.settings, qty)
        signed = signed_quantity(side, qty)
        r.cash -= signed * price + paid
        r.pos[i] = 0
        r.accrued_to.pop(i, None)
        r.avg.pop(i, None)
        r.d_comm[d] += paid
        del r.stops[i]
        r.stopped_today.add(i)
        how = "(the open gapped through it: filled at the open)" if price == open_ and price != st["stop"] \
            else "(reached in the session)"
        r.seq += 1
        r.trades.append({"seq": r.seq, "date": r.iso[d], "decided": None, "symbol": r.symbols[i],
                         "side": side, "quantity": qty, "decision_price": float("nan"),
                         "reference_price": price, "fill_price": price, "notional": qty * price,
                         "commission": paid, "slippage_cost": 0.0, "position_after": 0,
                         "stop_price": st["stop"],
                         "reason": f"protective stop {st['stop']:.2f} {how}"})


def _accrue_borrow(r: _Replay, i: int, d: int, price: float) -> float:
    """The borrow fee of short ``i`` from the date it is paid up to until day ``d`` at ``price``
    (0 when it is not short or already paid up); records the accrual and moves the paid-up date.
    The caller takes the fee from the cash."""
    accrued_to, today = r.accrued_to, r.pydates[d]
    start = accrued_to.get(i)
    if start is None:
        return 0.0
    days = (today - start).days
    if days <= 0:
        return 0.0
    qty = int(-r.pos[i])
    fee = borrow(r.settings, qty, price, days)
    accrued_to[i] = today
    r.seq += 1
    r.borrow_events.append({"seq": r.seq, "date": r.iso[d], "symbol": r.symbols[i],
                            "quantity": qty, "price": price, "days": days, "fee": fee})
    return fee


def _pay_cash_interest(r: _Replay, d: int) -> None:
    """Issue 21: every Sharpe subtracts RISK_FREE_RATE, so idle cash earns it: the free cash at
    the previous close (cash less the short positions' value: short proceeds earn nothing) is
    paid RISK_FREE_RATE / TRADING_DAYS_PER_YEAR for the session (``BACKTEST_CASH_INTEREST``)."""
    if d == 0 or not C.BACKTEST_CASH_INTEREST:
        return
    free = float(r.cash_arr[d - 1] - r.short_v[d - 1])
    if free > 0:
        r.cash += free * C.RISK_FREE_RATE / C.TRADING_DAYS_PER_YEAR


def _close_the_day(r: _Replay, d: int) -> float:
    """Steps 2 and 3 of day ``d``, after the close: every short accrues its borrow to today at
    today's close, then the book is marked to market at the last known closes. Records the day's
    equity, cash, long and short value and position count; returns the equity."""
    held = np.flatnonzero(r.pos)
    held_pos = r.pos[held]
    shorts = held[held_pos < 0]
    if len(shorts):
        fees, cash = float(r.d_borrow[d]), r.cash
        for i, px in zip(shorts.tolist(), r.close_ff[d, shorts].tolist()):
            fee = _accrue_borrow(r, i, d, px)
            cash -= fee
            fees += fee
        r.d_borrow[d], r.cash = fees, cash
    values = held_pos * r.close_ff[d, held]
    lv = float(values[values > 0].sum())
    sv = float(-values[values < 0].sum())
    eq = r.cash + lv - sv
    r.equity[d], r.cash_arr[d], r.long_v[d], r.short_v[d] = eq, r.cash, lv, sv
    r.npos[d] = len(held)
    return eq


def _result(r: _Replay, market: Market, policy, initial_cash: float, fill: str) -> EngineResult:
    """The ``EngineResult`` of a finished replay, with the policy's halts, rejections and widenings."""
    return EngineResult(
        dates=market.dates, symbols=list(r.symbols), initial_cash=float(initial_cash), equity=r.equity,
        cash=r.cash_arr, long_value=r.long_v, short_value=r.short_v, n_positions=r.npos, trades=r.trades,
        borrow_events=r.borrow_events, daily_commission=r.d_comm, daily_slippage=r.d_slip,
        daily_borrow=r.d_borrow,
        final_positions={r.symbols[i]: int(r.pos[i]) for i in np.flatnonzero(r.pos != 0)},
        halts=list(getattr(policy, "halts", [])), rejections=int(getattr(policy, "rejections", 0)),
        rejection_samples=list(getattr(policy, "rejection_samples", [])), cancelled=r.cancelled,
        fill=fill, policy=getattr(policy, "name", type(policy).__name__),
        widened=int(getattr(policy, "widened", 0)), action_events=r.action_events)


# =========================================================================== benchmark

def buy_and_hold(market: Market, initial_cash: float | None = None,
                 settings: TradingSettings | None = None, fill: str | None = None) -> pd.Series:
    """Equal-weight buy-and-hold of the same symbols: on the strategy's first fill day (day 2 of
    the period) the cash is split equally among the symbols with a price, bought in fractional
    shares at that day's fill price with the same slippage and commission, and held to the end
    (valued at the last known close; no rebalancing). Day 1 is cash, like the strategy's."""
    settings = settings or default_settings()
    initial_cash = C.INITIAL_PAPER_CASH if initial_cash is None else initial_cash
    fill = C.BACKTEST_FILL if fill is None else fill
    n, m = market.shape
    eq = np.full(n, float(initial_cash))
    if n < 2:
        return pd.Series(eq, index=market.dates, name="benchmark")
    fill_px = (market.open if fill == "next_open" else market.close)[1]
    ok = np.flatnonzero(np.isfinite(fill_px) & (fill_px > 0))
    if len(ok) == 0:
        return pd.Series(eq, index=market.dates, name="benchmark")
    budget = initial_cash / len(ok)
    shares = np.zeros(m)
    cash = float(initial_cash)
    for i in ok:
        price = fill_price(settings, float(fill_px[i]), BUY)
        q = budget / price
        fee = commission(settings, int(math.floor(q)))
        q = (budget - fee) / price
        shares[i] = q
        cash -= q * price + fee
    close_ff = pd.DataFrame(market.close).ffill().to_numpy()
    if market.factor is not None:        # held through splits and dividends: the adjusted series' growth
        close_ff = close_ff * market.factor / market.factor[1]
    eq[1:] = cash + np.nansum(close_ff[1:] * shares, axis=1)
    return pd.Series(eq, index=market.dates, name="benchmark")

