"""Backtest the current model with the live cycle's own rules; decide whether it may go live.

Run by ``./run_backtest.sh [options]`` (or ``python backtest.py``). Exit code 0: the go-live
criteria in ``constants.py`` pass; 1: they do not; 2: an error (missing model or data, bad
option), printed as one line that names the fix.

What runs, in order (every rule is the live cycle's code, imported, never copied):

1. ``data_collection.load_processed`` -- the features ``build_features`` wrote.
2. ``model_management.load_model`` -> ``TradingModel.predict(features)`` (the NumPy inference
   path) for every row with a full window; ``signals.score_predictions`` turns each prediction
   into score and BUY / SELL / HOLD exactly as the live cycle does.
3. The engine (``run_engine``) replays the sessions. After each close it marks the book to
   market, calls ``RiskManager.update_equity`` (drawdown and daily-loss halts), builds the
   ``Portfolio`` the live cycle would see and calls ``RiskManager.target_positions``,
   ``orders_for_targets`` and ``check_orders`` (the pre-trade check). Approved orders fill at the
   next session's open (``constants.BACKTEST_FILL``) at ``trading_api.slippage_price``, pay
   ``trading_api.commission_for`` and shorts accrue ``trading_api.borrow_fee`` the way the paper
   broker accrues it (calendar days, ACT/360, before a cover and at each close).
   The signal of day t uses data up to day t's close only; its order fills on day t+1.
4. Metrics for the strategy and an equal-weight buy-and-hold benchmark of the same symbols,
   the go-live verdict, ``reports/backtest_<timestamp>.json`` and ``.html`` (plus
   ``reports/latest_backtest.*``), and one row in the state database (``backtest_runs``).

``passing_backtest_for(checksum)`` answers the go-live gate: the newest out-of-sample run of that
model that passed the criteria in constants.py (with costs and thresholds no looser than the
defaults), or None.

The engine works on arrays indexed [day, symbol]; decisions call the RiskManager once per day
with only the symbols that can change (held ones with a signal, and the strongest new
candidates -- provably the same targets as passing every symbol, see ``LivePolicy``).
"""
from __future__ import annotations

import argparse
import base64
import html
import io
import json
import logging
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

import config
from errors import UserFacingError, install_excepthook
import constants as C

log = logging.getLogger("backtest")

EXIT_PASS, EXIT_FAIL, EXIT_ERROR = 0, 1, 2
FILL_MODES = ("next_open", "next_close")
SIGNAL_CODES = {"BUY": 1, "SELL": -1, "HOLD": 0}
BUY_SIDES = ("BUY", "BUY_TO_COVER")

_RUNS_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS backtest_runs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        created_at TEXT NOT NULL,
        model_checksum TEXT,
        in_sample INTEGER NOT NULL,
        passed INTEGER NOT NULL,
        gate_eligible INTEGER NOT NULL,
        start_date TEXT,
        end_date TEXT,
        report_path TEXT,
        parameters TEXT NOT NULL,
        metrics TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS backtest_runs_checksum ON backtest_runs(model_checksum, id)",
]


class BacktestError(UserFacingError):
    """A problem that stops the backtest; the message is one line naming the fix (exit 2)."""


# =========================================================================== costs (trading_api)

_TRADING_API = None


def _ta():
    """trading_api, imported on first use (it pulls in httpx; the engine needs only its pure
    cost functions)."""
    global _TRADING_API
    if _TRADING_API is None:
        import trading_api
        _TRADING_API = trading_api
    return _TRADING_API


@dataclass
class Costs:
    """The paper broker's cost model with optional overrides (None = the broker's default)."""
    slippage_bps: float | None = None          # trading_api.slippage_price (default PAPER_SLIPPAGE_BPS)
    commission_per_share: float | None = None  # trading_api.commission_for (default PAPER_COMMISSION_PER_SHARE)
    min_commission: float | None = None        # default PAPER_MIN_COMMISSION
    borrow_rate: float = C.DEFAULT_BORROW_RATE  # annual borrow rate of every short (paper default)

    @classmethod
    def zero(cls) -> "Costs":
        return cls(slippage_bps=0.0, commission_per_share=0.0, min_commission=0.0, borrow_rate=0.0)

    def effective(self) -> dict:
        return {"slippage_bps": C.PAPER_SLIPPAGE_BPS if self.slippage_bps is None else float(self.slippage_bps),
                "commission_per_share": (C.PAPER_COMMISSION_PER_SHARE if self.commission_per_share is None
                                         else float(self.commission_per_share)),
                "min_commission": C.PAPER_MIN_COMMISSION if self.min_commission is None else float(self.min_commission),
                "borrow_rate": float(self.borrow_rate),
                "borrow_day_count": C.BORROW_DAY_COUNT}

    def fill_price(self, reference: float, side: str) -> float:
        return _ta().slippage_price(reference, side, self.slippage_bps)

    def commission(self, quantity: int) -> float:
        return _ta().commission_for(quantity, self.commission_per_share, self.min_commission)

    def borrow(self, quantity: int, price: float, days: int) -> float:
        # the paper broker rounds each accrual to 6 decimals; so do we (same ledger)
        return round(_ta().borrow_fee(quantity, price, self.borrow_rate, days), 6)

    def not_below_defaults(self) -> bool:
        eff = self.effective()
        return (eff["slippage_bps"] >= C.PAPER_SLIPPAGE_BPS - 1e-12
                and eff["commission_per_share"] >= C.PAPER_COMMISSION_PER_SHARE - 1e-12
                and eff["min_commission"] >= C.PAPER_MIN_COMMISSION - 1e-12
                and eff["borrow_rate"] >= C.DEFAULT_BORROW_RATE - 1e-12)


# =========================================================================== market arrays

@dataclass
class Market:
    """Everything the engine reads, as arrays indexed [day, symbol].

    ``signal[t]`` / ``score[t]`` / ``volatility[t]`` are what the live cycle would compute after
    day t's close (from data up to that close); ``open``/``close`` are day t's prices (NaN where
    the symbol has no bar)."""
    dates: pd.DatetimeIndex
    symbols: list[str]
    open: np.ndarray
    close: np.ndarray
    signal: np.ndarray          # int8: 1 BUY, -1 SELL, 0 HOLD
    score: np.ndarray
    volatility: np.ndarray

    @property
    def shape(self) -> tuple[int, int]:
        return self.close.shape


def market_from_frames(prices: pd.DataFrame, signals: pd.DataFrame | None = None,
                       start=None, end=None) -> Market:
    """Build the arrays from long frames.

    ``prices``: Date, Symbol, Open, Close (extra columns ignored) -- the sessions of the test.
    ``signals``: Date, Symbol, signal ("BUY"/"SELL"/"HOLD" as signals.py writes them), score and
    volatility_20 (or volatility);
    typically ``signals.score_predictions(model.predict(features))``. Rows outside the price
    dates are ignored; a (day, symbol) without a signal row is HOLD."""
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
    di, dates = pd.factorize(pdates.dt.normalize(), sort=True)
    si, syms = pd.factorize(p["Symbol"].astype(str), sort=True)
    dates, symbols = pd.DatetimeIndex(dates), [str(x) for x in syms]
    n, m = len(dates), len(symbols)
    open_ = np.full((n, m), np.nan)
    close = np.full((n, m), np.nan)
    open_[di, si] = p["Open"].to_numpy(float)
    close[di, si] = p["Close"].to_numpy(float)
    signal = np.zeros((n, m), dtype=np.int8)
    score = np.full((n, m), np.nan)
    vol = np.full((n, m), np.nan)
    if signals is not None and len(signals):
        s = signals
        sdi = dates.get_indexer(pd.to_datetime(s["Date"]).dt.normalize())
        ssi = pd.Index(symbols).get_indexer(s["Symbol"].astype(str))
        ok = (sdi >= 0) & (ssi >= 0)
        sdi, ssi = sdi[ok], ssi[ok]
        col = s["signal"]
        codes = np.where(col.eq("BUY").to_numpy(bool), 1, np.where(col.eq("SELL").to_numpy(bool), -1, 0))
        signal[sdi, ssi] = codes.astype(np.int8)[ok]
        score[sdi, ssi] = s["score"].to_numpy(float)[ok]
        vcol = "volatility_20" if "volatility_20" in s.columns else "volatility"
        vol[sdi, ssi] = s[vcol].to_numpy(float)[ok]
    signal[~np.isfinite(close)] = 0                 # no bar that day: the cycle has nothing to act on
    return Market(dates, symbols, open_, close, signal, score, vol)


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


class LivePolicy:
    """The live cycle's decisions: ``RiskManager`` with an in-memory state DB and no audit.

    Per day: ``update_equity`` (halts), then ``target_positions`` -> ``orders_for_targets`` ->
    ``check_orders`` on the Portfolio the live cycle would see after the close (prices = last
    close = that close; buying power as the paper broker computes it; borrow data as the paper
    broker quotes it: ``borrow_rate``, shortable, no recall, no known ex-dividend date).

    Only symbols that can change are passed (``prune=True``): held symbols with a BUY/SELL
    signal, and unheld BUY/SELL symbols in the order ``target_positions`` takes them (|score|
    descending, then symbol), first the ``MAX_POSITIONS`` strongest. HOLD and missing signals
    keep a position in ``target_positions``, so dropping them changes nothing. New positions are
    granted in that order; the symbols left out could not have received one when every slot is
    taken, when the gross exposure left is below each of their prices, or while trading is
    halted (targets then only move toward flat). Otherwise the candidate list is widened (x4)
    and the call repeated, up to all candidates. ``prune=False`` passes every BUY/SELL symbol;
    the tests check both give the same fills."""

    name = "live"

    def __init__(self, risk=None, costs: Costs | None = None, prune: bool = True):
        import risk_management as rm
        self.prune = prune
        import state_db
        self.rm = rm
        self.risk = risk if risk is not None else rm.RiskManager(conn=state_db.connect(":memory:"),
                                                                 audit=rm.NullAudit())
        self.costs = costs or Costs()
        self.halts: list[dict] = []
        self.rejections = 0
        self.rejection_samples: list[dict] = []
        self.widened = 0
        self._halted_on = None

    @staticmethod
    def _complete(targets: dict, prices: dict, equity: float, rest_prices: np.ndarray) -> bool:
        """True when no candidate left out could have received a position: every slot is taken
        (MAX_POSITIONS), or the gross exposure left is below the price of each of them (the
        strongest-first loop in target_positions cuts a new position to room // price shares)."""
        if sum(1 for q in targets.values() if q != 0) >= C.MAX_POSITIONS:
            return True
        gross = sum(abs(q) * prices[s] for s, q in targets.items() if q)
        room = C.MAX_GROSS_EXPOSURE * max(equity, 0.0) - gross
        return bool(len(rest_prices) == 0 or room < float(np.min(rest_prices)) * (1.0 - 1e-9))

    def on_close(self, day: date, equity: float) -> None:
        out = self.risk.update_equity(equity, day)
        self._halted_on = day if out.get("halted") else None
        for name in out.get("new_halts", []):
            self.halts.append({"date": day.isoformat(), "halt": name, "equity": round(equity, 2),
                               "drawdown": out.get("drawdown"), "daily_loss": out.get("daily_loss")})

    def _quote(self):
        rate = float(self.costs.borrow_rate)
        return {"borrow_rate": rate, "hard_to_borrow": rate > C.MAX_BORROW_RATE, "shortable": True,
                "ex_dividend_date": None}

    def decide(self, day: date, symbols: list[str], pos: np.ndarray, cash: float, equity: float,
               price: np.ndarray, signal: np.ndarray, score: np.ndarray, vol: np.ndarray) -> list[dict]:
        held = np.flatnonzero(pos != 0)
        active = signal != 0
        held_active = held[active[held]].tolist()
        unheld = np.flatnonzero(active & (pos == 0))
        if self.prune and len(unheld) and self._halted_on == day:
            unheld = unheld[:0]          # while halted a target only moves toward flat: nothing new opens
        if not held_active and len(unheld) == 0:
            return []
        if len(unheld) > 1:
            key = np.abs(score[unheld])
            key[~np.isfinite(key)] = 0.0
            unheld = unheld[np.lexsort((unheld, -key))]
        held = held.tolist()
        shorts = [i for i in held if pos[i] < 0]
        short_mv = float(sum(-pos[i] * price[i] for i in shorts))
        bp = max(cash - C.PAPER_SHORT_MARGIN_REQ * short_mv, 0.0)
        positions = {symbols[i]: int(pos[i]) for i in held}
        quote = self._quote()
        take = C.MAX_POSITIONS if self.prune else len(unheld)
        unheld_l = unheld.tolist()
        while True:
            chosen = held_active + unheld_l[:take]
            involved = set(held)
            involved.update(chosen)
            inv = list(involved)
            prices = dict(zip([symbols[i] for i in inv], price[inv].tolist()))
            ch = np.asarray(chosen, dtype=np.intp)
            ch_sig, ch_pos = signal[ch].tolist(), pos[ch].tolist()
            names = [symbols[i] for i in chosen]
            quotes = {nm: quote for nm, sg, ps in zip(names, ch_sig, ch_pos) if sg < 0 or ps < 0}
            pf = self.rm.Portfolio(equity=equity, cash=cash, buying_power=bp, positions=positions,
                                   prices=prices, last_close=prices, quotes=quotes, recalled=set(),
                                   as_of=day)
            sigs = [{"symbol": nm, "signal": "BUY" if sg > 0 else "SELL", "score": sc, "price": px,
                     "volatility": vo}
                    for nm, sg, sc, px, vo in zip(names, ch_sig, score[ch].tolist(), price[ch].tolist(),
                                                  vol[ch].tolist())]
            targets = self.risk.target_positions(sigs, pf)
            if not self.prune or take >= len(unheld_l) or self._complete(targets, prices, equity,
                                                                         price[unheld[take:]]):
                break
            take *= 4
            self.widened += 1
        orders = self.risk.orders_for_targets(targets, pf)
        approved = []
        for order, ok, reason in self.risk.check_orders(orders, pf):
            if ok:
                approved.append(order)
            else:
                self.rejections += 1
                if len(self.rejection_samples) < 20:
                    self.rejection_samples.append({"date": day.isoformat(), "order": dict(order),
                                                   "reason": reason})
        return approved


class FixedTargetPolicy:
    """Orders toward given target shares (``targets[day, symbol]``, signed ints) through
    ``risk_management.orders_for_targets``, with NO risk checks or halts: for tests of the
    accounting and for what-if analysis only. The CLI always uses ``LivePolicy``."""

    name = "fixed_targets"

    def __init__(self, targets: np.ndarray):
        import risk_management as rm
        self.rm = rm
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
        pf = self.rm.Portfolio(equity=equity, cash=cash, positions={symbols[i]: int(pos[i]) for i in held},
                               prices={symbols[i]: float(price[i]) for i in np.union1d(idx, held)},
                               as_of=day)
        return self.rm.orders_for_targets({symbols[i]: int(want[i]) for i in idx}, pf)


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

    @property
    def gross(self) -> np.ndarray:
        return self.long_value + self.short_value

    def equity_series(self) -> pd.Series:
        return pd.Series(self.equity, index=self.dates, name="equity")


def run_engine(market: Market, policy=None, costs: Costs | None = None,
               initial_cash: float = C.INITIAL_PAPER_CASH, fill: str = C.BACKTEST_FILL,
               progress=None) -> EngineResult:
    """Replay ``market`` day by day. No information from the future: the decision after day t's
    close sees only row t of the arrays (and the book), and fills happen on day t+1
    (``fill='next_open'``: at its open; ``'next_close'``: at its close). The last day's signals
    are not filled (there is no next session)."""
    if fill not in FILL_MODES:
        raise BacktestError(f"fill mode {fill!r} is not supported: use one of {', '.join(FILL_MODES)} "
                            "(constants.BACKTEST_FILL or --fill)")
    costs = costs or Costs()
    policy = policy if policy is not None else LivePolicy(costs=costs)
    n, m = market.shape
    symbols = market.symbols
    fill_px = market.open if fill == "next_open" else market.close
    close_ff = pd.DataFrame(market.close).ffill().to_numpy()      # mark to market at the last known close
    pydates = [d.date() for d in market.dates]
    iso = [d.isoformat() for d in pydates]
    sym_idx = {s: i for i, s in enumerate(symbols)}
    seq = [0]                               # one counter orders fills and borrow accruals

    pos = np.zeros(m)                       # signed shares (whole numbers, stored as float)
    accrued_to: dict[int, date] = {}        # short symbol index -> date its borrow is paid up to
    cash = float(initial_cash)
    equity = np.zeros(n)
    cash_arr = np.zeros(n)
    long_v = np.zeros(n)
    short_v = np.zeros(n)
    npos = np.zeros(n, dtype=int)
    d_comm = np.zeros(n)
    d_slip = np.zeros(n)
    d_borrow = np.zeros(n)
    trades: list[dict] = []
    borrow_events: list[dict] = []
    cancelled: list[dict] = []
    pending: list[dict] = []
    decided_on, decided_iso = None, None

    def accrue(i: int, day_i: int, price: float) -> float:
        start = accrued_to.get(i)
        if start is None:
            return 0.0
        days = (pydates[day_i] - start).days
        if days <= 0:
            return 0.0
        qty = int(-pos[i])
        fee = costs.borrow(qty, price, days)
        accrued_to[i] = pydates[day_i]
        seq[0] += 1
        borrow_events.append({"seq": seq[0], "date": iso[day_i], "symbol": symbols[i],
                              "quantity": qty, "price": price, "days": days, "fee": fee})
        return fee

    with _Quiet():
        for d in range(n):
            # 1. yesterday's approved orders fill today (risk-reducing ones first, as ordered)
            for order in pending:
                sym = order["symbol"]
                i = sym_idx[sym]
                ref = fill_px[d, i]
                side, qty = order["side"], int(order["quantity"])
                if not np.isfinite(ref) or ref <= 0:
                    cancelled.append({"date": iso[d], "decided": decided_on.isoformat(),
                                      **order, "reason": "no price on the fill day"})
                    continue
                ref = float(ref)
                if side == "BUY_TO_COVER":              # the broker charges the borrow up to the cover
                    fee = accrue(i, d, ref)
                    cash -= fee
                    d_borrow[d] += fee
                price = costs.fill_price(ref, side)
                commission = costs.commission(qty)
                signed = qty if side in BUY_SIDES else -qty
                cash -= signed * price + commission
                before = pos[i]
                pos[i] = before + signed
                if side == "SELL_SHORT" and i not in accrued_to:
                    accrued_to[i] = pydates[d]
                if pos[i] >= 0:
                    accrued_to.pop(i, None)
                slip = (price - ref) * signed           # what the fill cost against the reference price
                d_comm[d] += commission
                d_slip[d] += slip
                seq[0] += 1
                trades.append({"seq": seq[0], "date": iso[d], "decided": decided_iso,
                               "symbol": sym, "side": side, "quantity": qty,
                               "decision_price": float(order.get("price", float("nan"))),
                               "reference_price": ref, "fill_price": price, "notional": qty * price,
                               "commission": commission, "slippage_cost": slip,
                               "position_after": int(pos[i])})
            pending = []
            # 2. close: borrow fees accrue to today on every short, at today's close
            shorts = np.flatnonzero(pos < 0)
            for i in shorts:
                px = close_ff[d, i]
                fee = accrue(int(i), d, float(px))
                cash -= fee
                d_borrow[d] += fee
            # 3. mark to market
            held = pos != 0
            values = pos[held] * close_ff[d, held]
            lv = float(values[values > 0].sum())
            sv = float(-values[values < 0].sum())
            eq = cash + lv - sv
            equity[d], cash_arr[d], long_v[d], short_v[d] = eq, cash, lv, sv
            npos[d] = int(held.sum())
            # 4. the cycle after the close: halts, then tomorrow's orders
            policy.on_close(pydates[d], eq)
            if d < n - 1:
                pending = policy.decide(pydates[d], symbols, pos, cash, eq, close_ff[d],
                                        market.signal[d], market.score[d], market.volatility[d])
                decided_on, decided_iso = pydates[d], iso[d]
            if progress is not None:
                progress(d + 1, n)

    return EngineResult(
        dates=market.dates, symbols=list(symbols), initial_cash=float(initial_cash), equity=equity,
        cash=cash_arr, long_value=long_v, short_value=short_v, n_positions=npos, trades=trades,
        borrow_events=borrow_events, daily_commission=d_comm, daily_slippage=d_slip,
        daily_borrow=d_borrow,
        final_positions={symbols[i]: int(pos[i]) for i in np.flatnonzero(pos != 0)},
        halts=list(getattr(policy, "halts", [])), rejections=int(getattr(policy, "rejections", 0)),
        rejection_samples=list(getattr(policy, "rejection_samples", [])), cancelled=cancelled,
        fill=fill, policy=getattr(policy, "name", type(policy).__name__),
        widened=int(getattr(policy, "widened", 0)))


# =========================================================================== benchmark

def buy_and_hold(market: Market, initial_cash: float = C.INITIAL_PAPER_CASH, costs: Costs | None = None,
                 fill: str = C.BACKTEST_FILL) -> pd.Series:
    """Equal-weight buy-and-hold of the same symbols: on the strategy's first fill day (day 2 of
    the period) the cash is split equally among the symbols with a price, bought in fractional
    shares at that day's fill price with the same slippage and commission, and held to the end
    (valued at the last known close; no rebalancing). Day 1 is cash, like the strategy's."""
    costs = costs or Costs()
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
        price = costs.fill_price(float(fill_px[i]), "BUY")
        q = budget / price
        commission = costs.commission(int(math.floor(q)))
        q = (budget - commission) / price
        shares[i] = q
        cash -= q * price + commission
    close_ff = pd.DataFrame(market.close).ffill().to_numpy()
    eq[1:] = cash + np.nansum(close_ff[1:] * shares, axis=1)
    return pd.Series(eq, index=market.dates, name="benchmark")


# =========================================================================== metrics

def daily_returns(equity: pd.Series) -> pd.Series:
    """Daily simple returns of the equity curve (first day dropped)."""
    return equity.pct_change().iloc[1:]


def performance_metrics(equity: pd.Series, risk_free: float = C.RISK_FREE_RATE,
                        periods: int = C.TRADING_DAYS_PER_YEAR) -> dict:
    """Return and risk metrics of an equity curve (one value per session close).

    Conventions (the same as empyrical): daily simple returns r_t = E_t / E_{t-1} - 1;
    ``periods`` (252) sessions a year; the daily risk-free rate is ``risk_free / periods``.
    total_return = E_T / E_0 - 1; cagr = (1 + total_return) ** (periods / N) - 1 with N the number
    of returns; annual_volatility = std(r, ddof=1) * sqrt(periods); sharpe = mean(r - rf) /
    std(r - rf, ddof=1) * sqrt(periods); sortino = mean(r - rf) * periods /
    (sqrt(mean(min(r - rf, 0) ** 2)) * sqrt(periods)); max_drawdown = min(E_t / max_{s<=t} E_s - 1)
    (a negative fraction, the starting equity counts as a peak); calmar = cagr / |max_drawdown|.
    Undefined values (no variation, no drawdown) are None."""
    eq = equity.astype(float)
    r = daily_returns(eq).to_numpy(float)
    n = len(r)
    out = {"days": int(len(eq)), "returns": n}
    if n < 1 or not np.isfinite(eq.iloc[0]) or eq.iloc[0] <= 0:
        return {**out, "total_return": None, "cagr": None, "annual_volatility": None, "sharpe": None,
                "sortino": None, "max_drawdown": None, "calmar": None, "max_drawdown_duration_days": None}
    total = float(eq.iloc[-1] / eq.iloc[0] - 1.0)
    cum = np.cumprod(1.0 + r)                          # growth of 1, like empyrical
    total_compound = float(cum[-1] - 1.0)
    cagr = float((1.0 + total_compound) ** (periods / n) - 1.0) if cum[-1] > 0 else -1.0
    rf = risk_free / periods
    adj = r - rf
    std = float(np.std(adj, ddof=1)) if n >= 2 else float("nan")
    if n >= 2 and np.max(adj) == np.min(adj):
        std = 0.0
    with np.errstate(divide="ignore", invalid="ignore"):
        sharpe = float(np.mean(adj) / std * math.sqrt(periods)) if n >= 2 else float("nan")
        vol = float(np.std(r, ddof=1) * math.sqrt(periods)) if n >= 2 else float("nan")
        downside = math.sqrt(float(np.mean(np.minimum(adj, 0.0) ** 2))) * math.sqrt(periods)
        sortino = float(np.mean(adj) * periods / downside) if n >= 2 else float("nan")
    path = np.concatenate([[1.0], cum])
    peak = np.maximum.accumulate(path)
    dd = path / peak - 1.0
    max_dd = float(dd.min())
    calmar = float(cagr / abs(max_dd)) if max_dd < 0 else float("nan")
    dur = drawdown_duration(pd.Series(eq.to_numpy(float), index=eq.index))
    return {**out, "total_return": total, "cagr": cagr, "annual_volatility": _clean(vol),
            "sharpe": _clean(sharpe), "sortino": _clean(sortino), "max_drawdown": max_dd,
            "calmar": _clean(calmar), **dur}


def drawdown_duration(equity: pd.Series) -> dict:
    """The longest time spent below a previous peak (peak to recovery, or to the end if it has
    not recovered), in sessions and calendar days, and the dates of the deepest drawdown."""
    e = equity.to_numpy(float)
    idx = equity.index
    peak = np.maximum.accumulate(e)
    under = e < peak - 1e-12 * np.abs(peak)
    best_len, best_start, best_end, run_start = 0, None, None, None
    for t in range(len(e)):
        if under[t]:
            if run_start is None:
                run_start = t - 1                   # the peak day
            length = t - run_start
            if length > best_len:
                best_len, best_start, best_end = length, run_start, t
        else:
            if run_start is not None:
                length = t - run_start
                if length > best_len:
                    best_len, best_start, best_end = length, run_start, t
            run_start = None
    dd = e / peak - 1.0
    trough = int(np.argmin(dd)) if len(e) else 0
    peak_at = int(np.argmax(e[:trough + 1])) if len(e) else 0
    rec = np.flatnonzero(e[trough:] >= peak[trough] - 1e-12 * abs(peak[trough]))
    out = {"max_drawdown_duration_sessions": int(best_len),
           "max_drawdown_duration_days": (int((idx[best_end] - idx[best_start]).days) if best_len else 0),
           "longest_drawdown_start": str(idx[best_start].date()) if best_len else None,
           "longest_drawdown_end": str(idx[best_end].date()) if best_len else None,
           "max_drawdown_peak": str(idx[peak_at].date()) if len(e) and dd[trough] < 0 else None,
           "max_drawdown_trough": str(idx[trough].date()) if len(e) and dd[trough] < 0 else None,
           "max_drawdown_recovered": (str(idx[trough + rec[0]].date()) if len(e) and dd[trough] < 0
                                      and len(rec) else None)}
    return out


def _clean(x):
    return None if x is None or not np.isfinite(x) else float(x)


def round_trips(result: EngineResult, close_last: dict[str, float] | None = None) -> list[dict]:
    """Trades as round trips: a position from flat back to flat. P&L = every cash flow of the
    symbol in between (fills at their fill prices, commissions, borrow fees). A position still
    open at the end is valued at the last close and flagged ``open``."""
    events = [(t["seq"], 0, t) for t in result.trades] + [(b["seq"], 1, b) for b in result.borrow_events]
    events.sort(key=lambda e: e[0])
    state: dict[str, dict] = {}
    trips: list[dict] = []
    for _, kind, ev in events:
        sym = ev["symbol"]
        st = state.get(sym)
        if kind == 1:
            if st:
                st["borrow"] += ev["fee"]
                st["flows"] -= ev["fee"]
            continue
        signed = ev["quantity"] if ev["side"] in BUY_SIDES else -ev["quantity"]
        if st is None:
            st = state[sym] = {"symbol": sym, "direction": "long" if signed > 0 else "short",
                               "entry_date": ev["date"], "pos": 0, "flows": 0.0, "commission": 0.0,
                               "slippage": 0.0, "borrow": 0.0, "entry_value": 0.0, "fills": 0}
        st["pos"] += signed
        st["flows"] += -signed * ev["fill_price"] - ev["commission"]
        st["commission"] += ev["commission"]
        st["slippage"] += ev["slippage_cost"]
        st["fills"] += 1
        if (signed > 0) == (st["direction"] == "long"):
            st["entry_value"] += abs(signed) * ev["fill_price"]
        if st["pos"] == 0:
            trips.append(_trip(st, ev["date"], False))
            del state[sym]
    last = close_last or {}
    last_day = str(result.dates[-1].date()) if len(result.dates) else None
    for sym, st in state.items():
        px = last.get(sym, float("nan"))
        st["flows"] += st["pos"] * px
        trips.append(_trip(st, last_day, True))
    trips.sort(key=lambda t: (t["entry_date"], t["symbol"]))
    return trips


def _trip(st: dict, exit_date, still_open: bool) -> dict:
    pnl = float(st["flows"])
    return {"symbol": st["symbol"], "direction": st["direction"], "entry_date": st["entry_date"],
            "exit_date": exit_date, "open": still_open, "fills": st["fills"], "pnl": pnl,
            "return_on_entry": pnl / st["entry_value"] if st["entry_value"] else None,
            "commission": st["commission"], "slippage": st["slippage"], "borrow_fees": st["borrow"]}


def trade_metrics(result: EngineResult, trips: list[dict]) -> dict:
    """Trade statistics. ``trades`` counts round trips (flat -> position -> flat; one still open
    at the end counts, valued at the last close); ``fills`` counts executed orders."""
    pnl = np.array([t["pnl"] for t in trips], float)
    wins, losses = pnl[pnl > 0], pnl[pnl < 0]
    eq = result.equity
    years = max(len(eq) - 1, 1) / C.TRADING_DAYS_PER_YEAR
    traded = float(sum(t["notional"] for t in result.trades))
    mean_eq = float(np.mean(eq)) if len(eq) else float("nan")
    with np.errstate(divide="ignore", invalid="ignore"):
        gross_frac = np.where(eq > 0, result.gross / eq, np.nan)
    comm = float(result.daily_commission.sum())
    slip = float(result.daily_slippage.sum())
    borrow = float(result.daily_borrow.sum())
    return {
        "trades": int(len(trips)),
        "closed_trades": int(sum(1 for t in trips if not t["open"])),
        "fills": int(len(result.trades)),
        "win_rate": float(len(wins) / len(pnl)) if len(pnl) else None,
        "profit_factor": (float(wins.sum() / -losses.sum()) if len(losses) and losses.sum() < 0
                          else (None if not len(wins) else float("inf"))),
        "average_trade": float(pnl.mean()) if len(pnl) else None,
        "average_trade_return": (float(np.mean([t["return_on_entry"] for t in trips
                                                if t["return_on_entry"] is not None]))
                                 if any(t["return_on_entry"] is not None for t in trips) else None),
        "exposure": float(np.nanmean(gross_frac)) if len(eq) else None,
        "time_in_market": float(np.mean(result.n_positions > 0)) if len(eq) else None,
        "turnover": float(traded / mean_eq / years) if mean_eq > 0 else None,
        "traded_value": traded,
        "costs_paid": comm + slip + borrow,
        "commission_paid": comm,
        "slippage_paid": slip,
        "borrow_fees_paid": borrow,
        "risk_rejections": int(result.rejections),
        "cancelled_orders": int(len(result.cancelled)),
        "halts": len(result.halts),
    }


def monthly_returns(equity: pd.Series) -> pd.Series:
    """Calendar-month returns: last equity of the month over the last equity of the month before
    (the first month over the starting equity)."""
    month_end = equity.groupby([equity.index.year, equity.index.month]).last()
    prev = month_end.shift(1)
    prev.iloc[0] = equity.iloc[0]
    out = month_end / prev - 1.0
    out.index = pd.PeriodIndex([pd.Period(year=y, month=mo, freq="M") for y, mo in out.index])
    return out


CONVENTIONS = (
    f"Daily simple returns of the equity at each close; {C.TRADING_DAYS_PER_YEAR} sessions a year; "
    f"risk-free rate {C.RISK_FREE_RATE:.2%} a year ({C.RISK_FREE_RATE:.2%}/{C.TRADING_DAYS_PER_YEAR} a day). "
    "CAGR = (1 + total return)^(252/N) - 1 with N daily returns; annualised volatility = daily "
    "std (ddof 1) x sqrt(252); Sharpe = mean(r - rf) / std(r - rf) x sqrt(252); Sortino = "
    "mean(r - rf) x 252 / (sqrt(mean(min(r - rf, 0)^2)) x sqrt(252)); max drawdown = deepest fall "
    "from a running peak of the equity (the start counts as a peak); Calmar = CAGR / |max drawdown|; "
    "drawdown duration = longest stretch below a previous peak, peak to recovery (or to the end). "
    "Trades are round trips (flat -> position -> flat; a position open at the end is valued at the "
    "last close); win rate, profit factor (gross wins / gross losses) and average trade are over "
    "round trips, net of commission, slippage and borrow fees. Exposure = mean gross position "
    "value / equity; time in market = share of sessions with a position; turnover = traded value "
    "/ mean equity per year. These are the empyrical library's conventions (tests compare them).")


# =========================================================================== go-live criteria

@dataclass
class Criteria:
    min_total_return: float = C.GOLIVE_MIN_TOTAL_RETURN   # total return must exceed
    min_sharpe: float = C.GOLIVE_MIN_SHARPE               # Sharpe must be at least
    max_drawdown: float = C.GOLIVE_MAX_DRAWDOWN           # |max drawdown| must be at most
    min_trades: int = C.GOLIVE_MIN_TRADES                 # round trips, at least

    def not_looser_than_defaults(self) -> bool:
        return (self.min_total_return >= C.GOLIVE_MIN_TOTAL_RETURN and self.min_sharpe >= C.GOLIVE_MIN_SHARPE
                and self.max_drawdown <= C.GOLIVE_MAX_DRAWDOWN and self.min_trades >= C.GOLIVE_MIN_TRADES)


def evaluate_criteria(metrics: dict, criteria: Criteria | None = None) -> list[dict]:
    """One row per go-live criterion: name, value, rule, threshold, passed."""
    c = criteria or Criteria()
    tr, sh, dd, nt = (metrics.get("total_return"), metrics.get("sharpe"), metrics.get("max_drawdown"),
                      metrics.get("trades"))

    def row(name, value, rule, threshold, ok, fmt):
        return {"name": name, "value": value, "rule": rule, "threshold": threshold,
                "passed": bool(ok), "format": fmt}
    return [
        row("total_return", tr, ">", c.min_total_return, tr is not None and tr > c.min_total_return, "pct"),
        row("sharpe", sh, ">=", c.min_sharpe, sh is not None and sh >= c.min_sharpe, "num"),
        row("max_drawdown", None if dd is None else abs(dd), "<=", c.max_drawdown,
            dd is not None and abs(dd) <= c.max_drawdown + 1e-12, "pct"),
        row("trades", nt, ">=", c.min_trades, nt is not None and nt >= c.min_trades, "int"),
    ]


def _fmt(value, kind: str) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float) and not math.isfinite(value):
        return "inf" if value > 0 else "n/a"
    if kind == "pct":
        return f"{value * 100:.2f}%"
    if kind == "int":
        return f"{int(value)}"
    if kind == "usd":
        return f"${value:,.2f}"
    return f"{value:.3f}"


# =========================================================================== model, data, signals

def _load_model(path=None):
    try:
        import model_management
    except ImportError:
        raise BacktestError("model_management.py is missing: the backtest needs it to load the model") from None
    model_path = Path(path) if path else config.path(C.MODEL_FILE)
    if not model_path.exists():
        raise BacktestError(f"no trained model at {model_path}: run python train_model.py "
                            f"(or python train_model.py --profile tiny for a quick one)")
    try:
        return model_management.load_model(model_path) if path else model_management.load_model()
    except BacktestError:
        raise
    except Exception as exc:
        raise BacktestError(f"the model at {model_path} cannot be loaded ({type(exc).__name__}: "
                            f"{_one_line(exc)}): retrain with python train_model.py") from None


def _one_line(exc) -> str:
    return " ".join(str(exc).split())[:300]


def _meta_date(meta: dict, *names):
    """The first date found under any of ``names`` in the metadata (nested dicts searched)."""
    stack = [meta]
    while stack:
        cur = stack.pop(0)
        if not isinstance(cur, dict):
            continue
        for name in names:
            if name in cur and cur[name]:
                try:
                    return pd.Timestamp(str(cur[name])[:10])
                except (ValueError, TypeError):
                    pass
        stack.extend(v for v in cur.values() if isinstance(v, dict))
    return None


def in_sample_end(metadata: dict) -> pd.Timestamp | None:
    """The last date of the data the model was trained or validated on (``splits.validation_end``
    in the metadata train_model.py writes)."""
    return _meta_date(metadata or {}, "validation_end", "train_end")


def out_of_sample_start(metadata: dict, dates) -> pd.Timestamp | None:
    """The first session of the model's held-out test period (``splits.test_start``) or, for
    metadata without it, the second session after ``validation_end`` (the last validation sample
    was scored against the next session's close). Decisions from that close on use nothing the
    model was fitted or selected on. None when the metadata names no split."""
    dates = pd.DatetimeIndex(dates)
    test_start = _meta_date(metadata or {}, "test_start")
    if test_start is not None:
        after = dates[dates >= test_start]
        return after.min() if len(after) else test_start
    end = in_sample_end(metadata)
    if end is None:
        return None
    after = dates[dates > end]
    return after[1] if len(after) > 1 else end + pd.Timedelta(days=3)


def build_signals(model, features: pd.DataFrame) -> tuple[pd.DataFrame, list[dict]]:
    """Predictions for every row with a full window, scored exactly like the live cycle
    (``signals.score_predictions``), and each day checked with ``signals.check_predictions``:
    on a day the live cycle would have stopped (NaN, identical or absurd predictions) every
    signal becomes HOLD (positions kept, no order). Returns (scored, [{date, reason}])."""
    import signals as sig
    pred = model.predict(features, last_only=False)
    scored = sig.score_predictions(pred)
    bad = []
    for day, group in scored.groupby("Date", sort=True):
        try:
            sig.check_predictions(group)
        except sig.NonsensicalPredictionError as exc:
            bad.append({"date": str(pd.Timestamp(day).date()), "reason": _one_line(exc)})
    if bad:
        days = pd.to_datetime([b["date"] for b in bad])
        scored.loc[scored["Date"].isin(days), "signal"] = sig.HOLD
    return scored, bad


# =========================================================================== state database

def _conn(conn=None):
    import state_db
    c = conn if conn is not None else state_db.connect()
    state_db.ensure_schema(c, _RUNS_SCHEMA)
    return c


def record_run(summary: dict, report_path, conn=None) -> int:
    """Insert one row in ``backtest_runs``; returns its id."""
    import state_db
    c = _conn(conn)
    try:
        with state_db.transaction(c):
            cur = c.execute(
                "INSERT INTO backtest_runs(created_at, model_checksum, in_sample, passed, gate_eligible, "
                "start_date, end_date, report_path, parameters, metrics) VALUES (?,?,?,?,?,?,?,?,?,?)",
                (state_db.utcnow(), summary.get("model_checksum"), int(bool(summary["in_sample"])),
                 int(bool(summary["passed"])), int(bool(summary["gate_eligible"])), summary.get("start"),
                 summary.get("end"), str(report_path) if report_path else None,
                 json.dumps(summary.get("parameters", {}), default=str),
                 json.dumps(summary.get("metrics", {}), default=_json_default)))
            return int(cur.lastrowid)
    finally:
        if conn is None:
            c.close()


def passing_backtest_for(checksum: str, conn=None) -> dict | None:
    """The newest backtest of the model with this checksum that counts for going live, or None.

    Counts: out of sample (never ``--in-sample``), passed its criteria, and ``gate_eligible``:
    its criteria were not looser than constants.py's and its costs not below the paper broker's.
    Returns the row as a dict (``metrics`` and ``parameters`` parsed)."""
    if not checksum:
        return None
    c = _conn(conn)
    try:
        row = c.execute("SELECT * FROM backtest_runs WHERE model_checksum = ? AND in_sample = 0 AND "
                        "passed = 1 AND gate_eligible = 1 ORDER BY id DESC LIMIT 1", (checksum,)).fetchone()
    finally:
        if conn is None:
            c.close()
    if row is None:
        return None
    out = dict(row)
    for key in ("metrics", "parameters"):
        try:
            out[key] = json.loads(out[key])
        except (TypeError, ValueError):
            pass
    out["in_sample"], out["passed"], out["gate_eligible"] = (bool(out["in_sample"]), bool(out["passed"]),
                                                             bool(out["gate_eligible"]))
    out["report"] = out.get("report_path")
    return out


# =========================================================================== reports

def _json_default(obj):
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return None if not np.isfinite(obj) else float(obj)
    if isinstance(obj, (pd.Timestamp, datetime, date)):
        return obj.isoformat()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def _finite_json(obj):
    """Replace NaN/inf floats (not valid JSON) by None, recursively."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite_json(v) for v in obj]
    return obj


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=96, bbox_inches="tight")
    import matplotlib.pyplot as plt
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def make_charts(equity: pd.Series, benchmark: pd.Series) -> dict[str, str]:
    """The three pictures as base64 PNG: equity vs benchmark, drawdown, monthly returns."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    charts = {}
    fig, ax = plt.subplots(figsize=(10, 4))
    ax.plot(equity.index, equity.to_numpy(), label="strategy", color="#1f77b4", lw=1.4)
    ax.plot(benchmark.index, benchmark.to_numpy(), label="equal-weight buy & hold", color="#7f7f7f", lw=1.1)
    ax.set_ylabel("equity (USD)")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left")
    ax.set_title("Equity")
    charts["equity"] = _png(fig)

    fig, ax = plt.subplots(figsize=(10, 2.6))
    for series, label, color in ((equity, "strategy", "#d62728"), (benchmark, "benchmark", "#7f7f7f")):
        dd = series / series.cummax() - 1.0
        ax.fill_between(dd.index, dd.to_numpy() * 100, 0, alpha=0.35 if label == "strategy" else 0.15,
                        color=color, label=label, step="post")
    ax.axhline(-C.GOLIVE_MAX_DRAWDOWN * 100, color="black", ls="--", lw=0.8, label="go-live limit")
    ax.set_ylabel("drawdown (%)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left")
    ax.set_title("Drawdown")
    charts["drawdown"] = _png(fig)

    mr = monthly_returns(equity)
    years = sorted({p.year for p in mr.index})
    grid = np.full((len(years), 12), np.nan)
    for p, v in mr.items():
        grid[years.index(p.year), p.month - 1] = v * 100
    fig, ax = plt.subplots(figsize=(10, 0.5 + 0.45 * max(len(years), 1)))
    lim = max(np.nanmax(np.abs(grid)) if np.isfinite(grid).any() else 1.0, 0.5)
    im = ax.imshow(grid, cmap="RdYlGn", vmin=-lim, vmax=lim, aspect="auto")
    ax.set_xticks(range(12), ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct",
                              "Nov", "Dec"])
    ax.set_yticks(range(len(years)), [str(y) for y in years])
    for (r, c), v in np.ndenumerate(grid):
        if np.isfinite(v):
            ax.text(c, r, f"{v:.1f}", ha="center", va="center", fontsize=8)
    fig.colorbar(im, ax=ax, label="%")
    ax.set_title("Monthly returns of the strategy (%)")
    charts["monthly"] = _png(fig)
    return charts


METRIC_ROWS = [
    ("total_return", "Total return", "pct"), ("cagr", "CAGR", "pct"),
    ("annual_volatility", "Annualised volatility", "pct"), ("sharpe", "Sharpe", "num"),
    ("sortino", "Sortino", "num"), ("calmar", "Calmar", "num"), ("max_drawdown", "Max drawdown", "pct"),
    ("max_drawdown_duration_sessions", "Longest drawdown (sessions)", "int"),
    ("max_drawdown_duration_days", "Longest drawdown (calendar days)", "int"),
    ("win_rate", "Win rate (round trips)", "pct"), ("profit_factor", "Profit factor", "num"),
    ("average_trade", "Average trade (USD)", "usd"), ("average_trade_return", "Average trade return", "pct"),
    ("exposure", "Exposure (gross / equity)", "pct"), ("time_in_market", "Time in market", "pct"),
    ("turnover", "Turnover (x equity a year)", "num"), ("trades", "Trades (round trips)", "int"),
    ("fills", "Fills (orders executed)", "int"), ("costs_paid", "Costs paid (USD)", "usd"),
    ("commission_paid", "  commission", "usd"), ("slippage_paid", "  slippage", "usd"),
    ("borrow_fees_paid", "  borrow fees", "usd"), ("final_equity", "Final equity", "usd"),
]


def render_html(report: dict, charts: dict[str, str]) -> str:
    e = html.escape
    title = report["title"]
    verdict = "PASS" if report["passed"] else "FAIL"
    color = "#1a7f37" if report["passed"] else "#cf222e"
    crit_rows = "".join(
        f"<tr><td>{e(c['name'])}</td><td>{_fmt(c['value'], c['format'])}</td><td>{e(c['rule'])} "
        f"{_fmt(c['threshold'], c['format'])}</td><td style='color:{'#1a7f37' if c['passed'] else '#cf222e'}'>"
        f"<b>{'PASS' if c['passed'] else 'FAIL'}</b></td></tr>" for c in report["criteria"])
    s, b = report["metrics"]["strategy"], report["metrics"]["benchmark"]
    metric_rows = "".join(f"<tr><td>{e(label)}</td><td>{_fmt(s.get(k), f)}</td><td>{_fmt(b.get(k), f)}</td></tr>"
                          for k, label, f in METRIC_ROWS)
    p = report["parameters"]
    param_rows = "".join(f"<tr><td>{e(str(k))}</td><td>{e(json.dumps(v, default=str))}</td></tr>"
                         for k, v in p.items())
    trades = report["trades"]
    shown = trades[-100:]
    trade_rows = "".join(
        f"<tr><td>{e(t['date'])}</td><td>{e(t['symbol'])}</td><td>{e(t['side'])}</td><td>{t['quantity']}</td>"
        f"<td>{t['fill_price']:.4f}</td><td>{t['commission']:.2f}</td><td>{t['slippage_cost']:.2f}</td></tr>"
        for t in shown)
    halts = "".join(f"<li>{e(h['date'])}: {e(h['halt'])} (equity {h['equity']:,.2f})</li>"
                    for h in report.get("halts", [])) or "<li>none</li>"
    warn = ("<p class='warn'>IN-SAMPLE: this run includes data the model was trained or validated on. "
            "Its numbers are optimistic and it does not count for going live.</p>" if report["in_sample"] else "")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{e(title)}</title>
<style>
body{{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px;color:#222;max-width:1100px}}
table{{border-collapse:collapse;margin:8px 0 18px}} td,th{{border:1px solid #ccc;padding:4px 10px;text-align:right}}
td:first-child,th:first-child{{text-align:left}} th{{background:#f3f3f3}}
.verdict{{font-size:1.4em;color:{color}}} .warn{{background:#fff3cd;border:1px solid #e0b000;padding:8px}}
img{{max-width:100%}} .small{{font-size:0.85em;color:#555}}
</style></head><body>
<h1>{e(title)}</h1>
{warn}
<p class="verdict"><b>Go-live verdict: {verdict}</b></p>
<p>Model checksum <code>{e(str(report.get('model_checksum')))}</code>; period {e(report['start'])} .. {e(report['end'])}
({report['metrics']['strategy'].get('days')} sessions, {len(report['parameters'].get('symbols', []))} symbols);
fills at {e(report['parameters'].get('fill', ''))}; generated {e(report['created_at'])}.</p>
<h2>Go-live criteria (constants.py)</h2>
<table><tr><th>criterion</th><th>value</th><th>required</th><th>verdict</th></tr>{crit_rows}</table>
<h2>Metrics</h2>
<table><tr><th>metric</th><th>strategy</th><th>equal-weight buy &amp; hold</th></tr>{metric_rows}</table>
<p class="small">{e(report['conventions'])}</p>
<h2>Equity</h2><img alt="equity curve" src="data:image/png;base64,{charts['equity']}">
<h2>Drawdown</h2><img alt="drawdown" src="data:image/png;base64,{charts['drawdown']}">
<h2>Monthly returns</h2><img alt="monthly returns" src="data:image/png;base64,{charts['monthly']}">
<h2>Risk events</h2><ul>{halts}</ul>
<p>Orders rejected by the pre-trade check: {report['metrics']['strategy'].get('risk_rejections', 0)};
orders cancelled for lack of a price: {report['metrics']['strategy'].get('cancelled_orders', 0)}.</p>
<h2>Last {len(shown)} of {len(trades)} fills</h2>
<table><tr><th>date</th><th>symbol</th><th>side</th><th>qty</th><th>fill</th><th>commission</th><th>slippage</th></tr>
{trade_rows}</table>
<h2>Parameters</h2><table>{param_rows}</table>
<p class="small">Full data (daily equity, every fill, round trips): {e(report.get('json_name', ''))}</p>
</body></html>
"""


def write_reports(report: dict, charts: dict[str, str], reports_dir=None) -> tuple[Path, Path]:
    """``backtest_<timestamp>.json`` and ``.html``, then ``latest_backtest.*`` (atomic copies)."""
    from fileutil import atomic_write_text
    out = Path(reports_dir) if reports_dir else config.path(C.REPORTS_DIR)
    out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    base, k = f"backtest_{stamp}", 1
    while (out / f"{base}.json").exists() or (out / f"{base}.html").exists():
        k += 1
        base = f"backtest_{stamp}_{k}"
    report["json_name"] = f"{base}.json"
    text = json.dumps(_finite_json(report), indent=1, default=_json_default, allow_nan=False)
    page = render_html(report, charts)
    json_path = atomic_write_text(out / f"{base}.json", text)
    html_path = atomic_write_text(out / f"{base}.html", page)
    atomic_write_text(out / "latest_backtest.json", text)
    atomic_write_text(out / "latest_backtest.html", page)
    return json_path, html_path


# =========================================================================== the whole backtest

@dataclass
class Options:
    start: str | None = None
    end: str | None = None
    symbols: list[str] | None = None
    initial_cash: float = C.INITIAL_PAPER_CASH
    costs: Costs = field(default_factory=Costs)
    criteria: Criteria = field(default_factory=Criteria)
    in_sample: bool = False
    fill: str = C.BACKTEST_FILL
    model_path: str | None = None
    data_path: str | None = None
    reports_dir: str | None = None
    record: bool = True
    progress: bool = False


def analyse(result: EngineResult, market: Market, benchmark: pd.Series) -> dict:
    equity = result.equity_series()
    last_close = {s: float(v) for s, v in zip(market.symbols, pd.DataFrame(market.close).ffill().iloc[-1])}
    trips = round_trips(result, last_close)
    strat = {**performance_metrics(equity), **trade_metrics(result, trips),
             "final_equity": float(equity.iloc[-1])}
    bench = {**performance_metrics(benchmark), "final_equity": float(benchmark.iloc[-1])}
    return {"strategy": strat, "benchmark": bench, "round_trips": trips}


def run_backtest(opts: Options) -> dict:
    """The whole backtest for the CLI; returns the report dict (also written to disk)."""
    import data_collection

    t0 = time.perf_counter()
    model = _load_model(opts.model_path)
    checksum = getattr(model, "checksum", None)
    metadata = dict(getattr(model, "metadata", None) or {})
    try:
        features = data_collection.load_processed(opts.data_path)
    except data_collection.DataError as exc:
        raise BacktestError(_one_line(exc)) from None
    warnings: list[str] = []
    symbols = _choose_symbols(opts.symbols, features, warnings)
    features = features[features["Symbol"].isin(symbols)]

    all_dates = pd.DatetimeIndex(np.unique(features["Date"].to_numpy()))
    oos_start = out_of_sample_start(metadata, all_dates)
    if oos_start is None and not opts.in_sample:
        raise BacktestError("the model's metadata does not say where its training and validation data end, so "
                            "an out-of-sample period cannot be chosen: retrain with python train_model.py "
                            "(or run with --in-sample to backtest anyway)")
    start = pd.Timestamp(opts.start) if opts.start else (oos_start if not opts.in_sample else all_dates.min())
    end = pd.Timestamp(opts.end) if opts.end else all_dates.max()
    if not opts.in_sample and start < oos_start:
        ends = in_sample_end(metadata)
        raise BacktestError(f"--start {start.date()} is inside the model's training/validation data"
                            + (f" (it ends {ends.date()})" if ends is not None else "")
                            + f"; out-of-sample data starts {oos_start.date()}: use a later --start, or add "
                            "--in-sample to run an in-sample backtest")
    if end < start:
        raise BacktestError(f"the period is empty ({start.date()} .. {end.date()}): check --start/--end")
    period = all_dates[(all_dates >= start) & (all_dates <= end)]
    if len(period) < 2:
        where = (f"the data ends {all_dates.max().date()} and the out-of-sample period starts "
                 f"{oos_start.date()}" if oos_start is not None else "the data is too short")
        raise BacktestError(f"fewer than 2 sessions to backtest ({where}): update the data with "
                            "./run_daily_data_update.sh, or use --in-sample")
    t_load = time.perf_counter()

    in_period = features[features["Date"] <= period[-1]]
    scored, nonsense = build_signals(model, in_period)
    scored = scored[(scored["Date"] >= period[0]) & (scored["Date"] <= period[-1])]
    nonsense = [b for b in nonsense if period[0] <= pd.Timestamp(b["date"]) <= period[-1]]
    if nonsense:
        text = (f"{len(nonsense)} sessions with nonsensical predictions (the live cycle would stop): no orders "
                f"on those days; first {nonsense[0]['date']}: {nonsense[0]['reason']}")
        log.warning("%s", text)
        warnings.append(text)
    t_pred = time.perf_counter()
    prices = features.loc[(features["Date"] >= period[0]) & (features["Date"] <= period[-1]),
                          ["Date", "Symbol", "Open", "Close"]]
    market = market_from_frames(prices, scored)
    bar = _ProgressBar("backtest") if opts.progress else None
    result = run_engine(market, LivePolicy(costs=opts.costs), costs=opts.costs,
                        initial_cash=opts.initial_cash, fill=opts.fill,
                        progress=bar.update if bar else None)
    if bar:
        bar.close()
    t_engine = time.perf_counter()
    benchmark = buy_and_hold(market, opts.initial_cash, opts.costs, opts.fill)
    analysis = analyse(result, market, benchmark)
    criteria_rows = evaluate_criteria(analysis["strategy"], opts.criteria)
    passed = all(c["passed"] for c in criteria_rows)
    gate_eligible = (not opts.in_sample and opts.criteria.not_looser_than_defaults()
                     and opts.costs.not_below_defaults())
    equity = result.equity_series()
    dd = equity / equity.cummax() - 1.0
    title = ("IN-SAMPLE backtest" if opts.in_sample else "Out-of-sample backtest") + \
        f" {period[0].date()} .. {period[-1].date()}"
    parameters = {
        "start": str(period[0].date()), "end": str(period[-1].date()), "symbols": market.symbols,
        "initial_cash": opts.initial_cash, "fill": opts.fill, "in_sample": opts.in_sample,
        "out_of_sample_start": str(oos_start.date()) if oos_start is not None else None,
        "model_in_sample_end": str(in_sample_end(metadata).date()) if in_sample_end(metadata) is not None else None,
        "costs": opts.costs.effective(), "criteria": asdict(opts.criteria),
        "signal_threshold": C.SIGNAL_THRESHOLD, "trading_days_per_year": C.TRADING_DAYS_PER_YEAR,
        "risk_free_rate": C.RISK_FREE_RATE, "policy": result.policy,
        "risk_limits": {k: getattr(C, k) for k in ("MAX_POSITION_PCT", "MAX_GROSS_EXPOSURE", "MAX_POSITIONS",
                                                   "MAX_ORDER_VALUE", "RISK_PER_TRADE", "MAX_DRAWDOWN",
                                                   "DAILY_LOSS_LIMIT", "ALLOW_SHORTS", "MAX_SIZE_SCALE",
                                                   "REBALANCE_BAND")},
        "model_path": str(Path(opts.model_path) if opts.model_path else config.path(C.MODEL_FILE)),
        "model_metadata": metadata, "gate_eligible": gate_eligible,
    }
    report = {
        "title": title, "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model_checksum": checksum, "in_sample": opts.in_sample, "passed": passed,
        "gate_eligible": gate_eligible, "start": parameters["start"], "end": parameters["end"],
        "parameters": parameters, "criteria": criteria_rows,
        "metrics": {"strategy": analysis["strategy"], "benchmark": analysis["benchmark"]},
        "conventions": CONVENTIONS, "warnings": warnings, "halts": result.halts,
        "nonsensical_prediction_days": nonsense,
        "rejection_samples": result.rejection_samples, "cancelled_orders": result.cancelled,
        "final_positions": result.final_positions,
        "daily": [{"date": str(d.date()), "equity": float(e), "benchmark": float(b), "drawdown": float(x),
                   "cash": float(c), "long_value": float(lv), "short_value": float(sv),
                   "positions": int(k), "commission": float(cm), "slippage": float(sl), "borrow": float(bo)}
                  for d, e, b, x, c, lv, sv, k, cm, sl, bo in zip(
                      result.dates, result.equity, benchmark.to_numpy(), dd.to_numpy(), result.cash,
                      result.long_value, result.short_value, result.n_positions, result.daily_commission,
                      result.daily_slippage, result.daily_borrow)],
        "trades": result.trades, "round_trips": analysis["round_trips"],
        "timings_s": {"load": round(t_load - t0, 3), "inference": round(t_pred - t_load, 3),
                      "engine": round(t_engine - t_pred, 3)},
    }
    charts = make_charts(equity, benchmark)
    json_path, html_path = write_reports(report, charts, opts.reports_dir)
    report["report_json"], report["report_html"] = str(json_path), str(html_path)
    if opts.record:
        report["run_id"] = record_run({**report, "metrics": report["metrics"]}, json_path)
    report["timings_s"]["total"] = round(time.perf_counter() - t0, 3)
    return report


def _choose_symbols(requested, features: pd.DataFrame, warnings: list | None = None) -> list[str]:
    import data_collection
    present = set(features["Symbol"].astype(str).unique())
    if requested:
        wanted = [s.strip().upper() for s in requested if s.strip()]
        missing = [s for s in wanted if s not in present]
        if missing:
            raise BacktestError(f"no data for {', '.join(missing)} in {C.PROCESSED_DATA_FILE}: add them to "
                                f"{C.UNIVERSE_FILE} and run ./run_daily_data_update.sh, or drop them from --symbols")
        return sorted(set(wanted))
    try:
        universe = data_collection.load_universe()
    except data_collection.DataError as exc:
        raise BacktestError(_one_line(exc)) from None
    chosen = [s for s in universe if s in present]
    missing = [s for s in universe if s not in present]
    if missing:
        text = (f"no processed data for {', '.join(missing)} (dropped by the data update?): backtesting the "
                f"other {len(chosen)} symbols")
        log.warning("%s", text)
        if warnings is not None:
            warnings.append(text)
    if not chosen:
        raise BacktestError(f"none of the symbols in {C.UNIVERSE_FILE} has data in {C.PROCESSED_DATA_FILE}: "
                            "run ./run_daily_data_update.sh --force")
    return sorted(chosen)


class _ProgressBar:
    """A one-line progress bar on stderr (only created when stderr is a terminal)."""

    def __init__(self, label: str, width: int = 40):
        self.label, self.width, self.last = label, width, -1
        self.t0 = time.perf_counter()

    def update(self, done: int, total: int) -> None:
        pct = int(100 * done / max(total, 1))
        if pct == self.last and done != total:
            return
        self.last = pct
        fill = int(self.width * done / max(total, 1))
        sys.stderr.write(f"\r{self.label} [{'#' * fill}{'.' * (self.width - fill)}] {pct:3d}% "
                         f"{done}/{total} sessions {time.perf_counter() - self.t0:5.1f}s")
        sys.stderr.flush()

    def close(self) -> None:
        sys.stderr.write("\n")
        sys.stderr.flush()


# =========================================================================== CLI

def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="run_backtest.sh",
        description="Backtest the current model with the live cycle's rules and check the go-live criteria. "
                    "Exit 0: criteria pass; 1: they do not; 2: error (missing model/data, bad option).")
    p.add_argument("--start", help="first session (YYYY-MM-DD); default: the first session after the model's "
                                   "training and validation data")
    p.add_argument("--end", help="last session (YYYY-MM-DD); default: the last in the data")
    p.add_argument("--symbols", help="comma-separated symbols; default: selected_stocks.txt")
    p.add_argument("--initial-cash", type=float, default=C.INITIAL_PAPER_CASH,
                   help=f"starting cash in USD (default {C.INITIAL_PAPER_CASH:,.0f})")
    p.add_argument("--commission", type=float, default=None,
                   help=f"commission in USD per share (default PAPER_COMMISSION_PER_SHARE={C.PAPER_COMMISSION_PER_SHARE})")
    p.add_argument("--min-commission", type=float, default=None,
                   help=f"minimum commission per order in USD (default {C.PAPER_MIN_COMMISSION})")
    p.add_argument("--slippage", type=float, default=None,
                   help=f"slippage in basis points (default PAPER_SLIPPAGE_BPS={C.PAPER_SLIPPAGE_BPS})")
    p.add_argument("--borrow-rate", type=float, default=C.DEFAULT_BORROW_RATE,
                   help=f"annual borrow rate of shorts, fraction (default DEFAULT_BORROW_RATE={C.DEFAULT_BORROW_RATE})")
    p.add_argument("--fill", choices=FILL_MODES, default=C.BACKTEST_FILL,
                   help=f"when signals after day t's close fill (default BACKTEST_FILL={C.BACKTEST_FILL})")
    p.add_argument("--in-sample", action="store_true",
                   help="allow a period inside the model's training/validation data (report titled IN-SAMPLE; "
                        "never counts for going live)")
    p.add_argument("--min-total-return", type=float, default=C.GOLIVE_MIN_TOTAL_RETURN,
                   help=f"go-live: total return must exceed (default {C.GOLIVE_MIN_TOTAL_RETURN})")
    p.add_argument("--min-sharpe", type=float, default=C.GOLIVE_MIN_SHARPE,
                   help=f"go-live: Sharpe at least (default {C.GOLIVE_MIN_SHARPE})")
    p.add_argument("--max-drawdown", type=float, default=C.GOLIVE_MAX_DRAWDOWN,
                   help=f"go-live: |max drawdown| at most (default {C.GOLIVE_MAX_DRAWDOWN})")
    p.add_argument("--min-trades", type=int, default=C.GOLIVE_MIN_TRADES,
                   help=f"go-live: round-trip trades at least (default {C.GOLIVE_MIN_TRADES})")
    p.add_argument("--model", help="model file (default: lstm_price_difference_model.h5 under TRADING_HOME)")
    p.add_argument("--data", help="processed data file (default: processed_stock_data.csv under TRADING_HOME)")
    p.add_argument("--no-record", action="store_true", help="do not record the run in the state database")
    p.add_argument("--no-progress", action="store_true", help="no progress bar even on a terminal")
    p.add_argument("--walk-forward", action="store_true",
                   help="walk-forward evaluation with retraining instead (walk_forward.py; its options: "
                        "--walk-forward --help); exit 0 pass, 1 fail, 2 error")
    return p


def print_summary(report: dict, out=None) -> None:
    out = out or sys.stdout
    s, b = report["metrics"]["strategy"], report["metrics"]["benchmark"]
    print(f"{report['title']}  ({len(report['parameters']['symbols'])} symbols, model "
          f"{str(report.get('model_checksum'))[:12]})", file=out)
    print(f"  strategy:  total {_fmt(s['total_return'], 'pct')}, CAGR {_fmt(s['cagr'], 'pct')}, Sharpe "
          f"{_fmt(s['sharpe'], 'num')}, max DD {_fmt(s['max_drawdown'], 'pct')}, {s['trades']} trades, costs "
          f"{_fmt(s['costs_paid'], 'usd')}", file=out)
    print(f"  benchmark: total {_fmt(b['total_return'], 'pct')}, CAGR {_fmt(b['cagr'], 'pct')}, Sharpe "
          f"{_fmt(b['sharpe'], 'num')}, max DD {_fmt(b['max_drawdown'], 'pct')} (equal-weight buy & hold)", file=out)
    for h in report.get("halts", []):
        print(f"  risk halt: {h['halt']} on {h['date']} (equity {h['equity']:,.2f}); opening trades stopped "
              f"as the live cycle would", file=out)
    for w in report.get("warnings", []):
        print(f"  warning: {w}", file=out)
    print("Go-live criteria:", file=out)
    for c in report["criteria"]:
        print(f"  {c['name']:<14} {_fmt(c['value'], c['format']):>10}  required {c['rule']} "
              f"{_fmt(c['threshold'], c['format']):<8}  {'PASS' if c['passed'] else 'FAIL'}", file=out)
    verdict = "PASS" if report["passed"] else "FAIL"
    note = ""
    if report["in_sample"]:
        note = " (IN-SAMPLE: does not count for going live)"
    elif not report["gate_eligible"]:
        note = " (looser criteria or costs than constants.py: does not count for going live)"
    print(f"Verdict: {verdict}{note}", file=out)
    print(f"Report: {report['report_html']}", file=out)


def main(argv=None) -> int:
    install_excepthook()
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--walk-forward" in argv:
        import walk_forward                      # imports this module: loaded on use
        return walk_forward.main([a for a in argv if a != "--walk-forward"])
    args = _parser().parse_args(argv)
    from logging_setup import setup_logging
    try:
        # records go to logs/trading_YYYYMMDD.log (errors also to logs/errors.log); the console
        # gets the summary (stdout) and one ERROR line (stderr), not a copy of every log line
        setup_logging("trading", console=False)
    except config.ConfigError as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except OSError as exc:
        print(f"ERROR: cannot write logs under {config.path(C.LOG_DIR)} ({exc}): check TRADING_HOME and "
              "permissions", file=sys.stderr)
        return EXIT_ERROR
    if args.initial_cash <= 0:
        print("ERROR: --initial-cash must be positive", file=sys.stderr)
        return EXIT_ERROR
    opts = Options(
        start=args.start, end=args.end,
        symbols=args.symbols.split(",") if args.symbols else None,
        initial_cash=args.initial_cash,
        costs=Costs(slippage_bps=args.slippage, commission_per_share=args.commission,
                    min_commission=args.min_commission, borrow_rate=args.borrow_rate),
        criteria=Criteria(args.min_total_return, args.min_sharpe, args.max_drawdown, args.min_trades),
        in_sample=args.in_sample, fill=args.fill, model_path=args.model, data_path=args.data,
        record=not args.no_record, progress=(not args.no_progress) and sys.stderr.isatty())
    for name in ("start", "end"):
        value = getattr(args, name)
        if value:
            try:
                pd.Timestamp(value)
            except (ValueError, TypeError):
                print(f"ERROR: --{name} {value!r} is not a date: use YYYY-MM-DD", file=sys.stderr)
                return EXIT_ERROR
    log.info("backtest started (home=%s, in_sample=%s, fill=%s)", config.home(), opts.in_sample, opts.fill)
    try:
        report = run_backtest(opts)
    except BacktestError as exc:
        log.error("backtest FAILED: %s", exc)
        print(f"ERROR: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except Exception as exc:
        log.exception("backtest FAILED with an unexpected error")
        print(f"ERROR: backtest failed ({type(exc).__name__}: {_one_line(exc)}); see logs/errors.log",
              file=sys.stderr)
        return EXIT_ERROR
    print_summary(report)
    s = report["metrics"]["strategy"]
    log.info("backtest %s: %s; total return %.4f, Sharpe %s, max drawdown %.4f, %d trades; report %s",
             "PASSED" if report["passed"] else "FAILED", report["title"], s["total_return"],
             _fmt(s["sharpe"], "num"), s["max_drawdown"], s["trades"], report["report_json"])
    return EXIT_PASS if report["passed"] else EXIT_FAIL


if __name__ == "__main__":
    sys.exit(main())
