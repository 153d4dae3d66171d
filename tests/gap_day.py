"""The synthetic gap day of issue 22 point 5, shared by the paper, backtest and Schwab-fake tests.

Two symbols over ``DATES`` (25 weekdays, 2026-10-05 .. 2026-11-06):

- ``SYMBOL`` (GAPX): a quiet zig-zag (about 0.8 % daily moves), an entry decided at the close of
  ``DECIDED`` (a BUY of ``QUANTITY``), filled at the open of ``ENTRY_DAY``; the protective stop is
  placed after that fill; the open of ``GAP_DAY`` gaps 8 % down (``GAP``), through the stop, so the
  stop fills at that open (``order_prices.stop_fill``).
- ``COLLAR_SYMBOL`` (COLX): the same history; a BUY decided at the close of ``DECIDED`` meets an
  open 3 % above that close on ``ENTRY_DAY`` (beyond the 50 bps collar: no fill, the order expires);
  re-planned at the close of ``ENTRY_DAY``, it fills at the open of ``GAP_DAY`` (0.1 % above).

The expected numbers come from ``order_prices`` at call time, under ``TUNABLES`` (apply them with
``use_tunables(monkeypatch)``); the stop's reference is the position's average price (the entry's
fill price), its volatility ``daily_volatility`` of the closes known when the stop is placed
(``stop_volatility``: through ENTRY_DAY for paper and the backtest, DECIDED for a stop placed on
the morning of ENTRY_DAY); either way the 8 % gap goes through it and it fills at GAP_DAY's open.
"""
from __future__ import annotations

from datetime import date, timedelta

import pandas as pd

import constants as C
import order_prices as op
from broker_base import BUY, slippage_price

SYMBOL = "GAPX"
COLLAR_SYMBOL = "COLX"
QUANTITY = 100
GAP = 0.08                    # the open of GAP_DAY is 8 % below ENTRY_DAY's close
COLLAR_GAP = 0.03             # COLX's open on ENTRY_DAY is 3 % above DECIDED's close

# the tunables of the scenario (set them with use_tunables; ORDER_TYPE is left to the test)
TUNABLES = {"PROTECTIVE_STOPS": True, "STOP_VOL_MULTIPLE": 3.0, "STOP_VOL_WINDOW": 20,
            "STOP_MIN_DISTANCE": 0.02, "PRICE_COLLAR_BPS": 50.0, "PRICE_TICK": 0.01}


def _weekdays(start: date, n: int) -> list[date]:
    out, d = [], start
    while len(out) < n:
        if d.weekday() < 5:
            out.append(d)
        d += timedelta(days=1)
    return out


DATES: list[date] = _weekdays(date(2026, 10, 5), 25)
DECIDED, ENTRY_DAY, GAP_DAY, AFTER_DAY = DATES[21], DATES[22], DATES[23], DATES[24]


def _bar(open_: float, close: float) -> dict[str, float]:
    o, c = round(open_, 2), round(close, 2)
    return {"open": o, "high": round(max(o, c) * 1.002, 2), "low": round(min(o, c) * 0.998, 2), "close": c}


def _series(symbol: str) -> dict[date, dict[str, float]]:
    bars: dict[date, dict[str, float]] = {}
    prev = 100.0
    for k, d in enumerate(DATES):
        if symbol == SYMBOL and d == GAP_DAY:
            o = prev * (1 - GAP)
            bar = _bar(o, o * 1.005)
            bar["low"], bar["high"] = round(o * 0.99, 2), round(o * 1.01, 2)
        elif symbol == COLLAR_SYMBOL and d == ENTRY_DAY:
            bar = _bar(prev * (1 + COLLAR_GAP), prev * (1 + COLLAR_GAP) * 1.001)
        elif symbol == COLLAR_SYMBOL and d == GAP_DAY:
            bar = _bar(prev * 1.001, prev * 1.002)
        else:
            bar = _bar(prev, 100.0 * (1.004 if k % 2 else 0.996))
        bars[d] = bar
        prev = bar["close"]
    return bars


BARS: dict[str, dict[date, dict[str, float]]] = {s: _series(s) for s in (SYMBOL, COLLAR_SYMBOL)}


def use_tunables(monkeypatch, **extra) -> None:
    """Set ``TUNABLES`` (and ``extra``, e.g. ORDER_TYPE="limit_collar") on ``constants``."""
    for name, value in {**TUNABLES, **extra}.items():
        monkeypatch.setattr(C, name, value)


def closes(symbol: str, through: date) -> list[float]:
    """The closes of ``symbol`` up to and including ``through``."""
    return [b["close"] for d, b in BARS[symbol].items() if d <= through]


def closes_on(day: date) -> dict[str, float]:
    return {s: BARS[s][day]["close"] for s in BARS}


def opens_on(day: date) -> dict[date, dict[str, float]]:
    """``set_prices``' ``opens`` argument for session ``day``."""
    return {day: {s: BARS[s][day]["open"] for s in BARS}}


def bars_on(day: date) -> dict[date, dict[str, dict[str, float]]]:
    """``PaperBroker.set_prices``' ``bars`` argument for session ``day`` (open, high, low)."""
    return {day: {s: {k: BARS[s][day][k] for k in ("open", "high", "low")} for s in BARS}}


def prices_frame() -> pd.DataFrame:
    """The long frame (Date, Symbol, Open, High, Low, Close) ``backtest_engine.market_from_frames`` takes."""
    return pd.DataFrame([{"Date": pd.Timestamp(d), "Symbol": s, "Open": b["open"], "High": b["high"],
                          "Low": b["low"], "Close": b["close"]}
                         for s in BARS for d, b in BARS[s].items()])


def entry_fill(slippage_bps: float | None = None) -> float:
    """GAPX's entry fill: a market BUY at ENTRY_DAY's open with the paper slippage."""
    bps = C.PAPER_SLIPPAGE_BPS if slippage_bps is None else slippage_bps
    return slippage_price(BARS[SYMBOL][ENTRY_DAY]["open"], BUY, bps)


def stop_volatility(through: date | None = None) -> float:
    """``daily_volatility`` of GAPX's closes known when the stop is placed: up to ``through``
    (default ENTRY_DAY: the paper cycle and the backtest place it after the close of the session
    whose open filled the entry; a Schwab test that places it on the morning of ENTRY_DAY passes
    ``through=DECIDED``)."""
    return op.daily_volatility(closes(SYMBOL, ENTRY_DAY if through is None else through))


def expected_stop_price(entry: float | None = None, through: date | None = None) -> float:
    """The protective stop of the GAPX long entered at ``entry`` (its average price; default
    ``entry_fill()``) with the volatility of the closes up to ``through`` (``stop_volatility``)."""
    return op.stop_price("long", entry_fill() if entry is None else entry, stop_volatility(through))


def expected_stop_fill(stop: float | None = None) -> float:
    """Where the stop fills on GAP_DAY: the open (it gaps through the stop)."""
    bar = BARS[SYMBOL][GAP_DAY]
    fill = op.stop_fill("long", expected_stop_price() if stop is None else stop, bar["open"], bar["low"], bar["high"])
    assert fill is not None and fill == bar["open"], "the gap day must gap through the stop"
    return fill
