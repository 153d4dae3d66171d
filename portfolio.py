"""The account as the risk checks see it: ``Portfolio``, the order dict, and the small number
and date helpers the risk rules share (``risk_management.py``, ``short_rules.py``,
``order_planning.py``).

An order is ``{"symbol", "side", "quantity", "price"}`` (plus optional fields such as
``reason``) with side one of BUY / SELL / SELL_SHORT / BUY_TO_COVER (``broker_base``).
A cash account (``account_type`` CASH) also carries its ``settled_cash`` and the symbols bought
with unsettled funds (``unsettled_buys``); ``settlement.py`` holds the rule.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from datetime import date, datetime

from broker_base import BUY, BUY_TO_COVER, OPENING_SIDES

EPS = 1e-9                                   # tolerance for comparisons at a limit's boundary


@dataclass
class Portfolio:
    """The account as the risk checks see it.

    ``positions`` are signed shares (negative = short). ``prices`` are the latest prices and
    ``last_close`` the previous session's closes. ``quotes[symbol]`` holds broker borrow data:
    ``borrow_rate`` (annual fraction or None), ``hard_to_borrow`` / ``shortable`` (bool or None),
    ``ex_dividend_date`` (date or None). ``recalled`` are symbols whose borrowed shares the broker
    recalled. ``buying_power`` may be None (cash account): cash is used instead.
    """
    equity: float
    cash: float
    buying_power: float | None = None
    positions: dict[str, int] = field(default_factory=dict)
    prices: dict[str, float] = field(default_factory=dict)
    last_close: dict[str, float] = field(default_factory=dict)
    quotes: dict[str, dict] = field(default_factory=dict)
    recalled: set[str] = field(default_factory=set)
    as_of: date = field(default_factory=date.today)
    account_type: str = "MARGIN"       # CASH or MARGIN, from the broker (settlement.py)
    settled_cash: float | None = None  # a cash account's settled cash; None: ``cash``
    unsettled_buys: dict[str, date] = field(default_factory=dict)   # symbol -> when its buy's funds settle


def make_order(symbol: str, side: str, quantity: int, price: float, **extra) -> dict:
    order = {"symbol": symbol, "side": side, "quantity": int(quantity), "price": float(price)}
    order.update(extra)
    return order


def finite(x) -> bool:
    """A finite number (not a bool, not None, not NaN or infinite)."""
    if type(x) is float or type(x) is int:       # the common case, checked ~200,000 times a replay
        return math.isfinite(x)
    try:
        return x is not None and not isinstance(x, bool) and math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def to_date(value) -> date | None:
    """A date from a date, datetime, pandas Timestamp or ISO string; None stays None."""
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    if hasattr(value, "to_pydatetime"):
        return value.to_pydatetime().date()
    return date.fromisoformat(str(value)[:10])


def money(x: float, signed: bool = False) -> str:
    """``$1,234.50`` / ``-$1,234.50`` (the sign before the dollar sign, as traders write it);
    ``signed`` (a P&L): ``+$1,234.50`` for a gain. The one money format of every output."""
    text = f"-${-x:,.2f}" if x < 0 else f"${x:,.2f}"
    return f"+{text}" if signed and x >= 0 else text


def pct(x: float) -> str:
    return f"{x * 100:.2f}%"


def price_of(portfolio: Portfolio, symbol: str) -> float | None:
    """The latest price, else the last close, else None."""
    p = portfolio.prices.get(symbol)
    if finite(p) and float(p) > 0:
        return float(p)
    p = portfolio.last_close.get(symbol)
    if finite(p) and float(p) > 0:
        return float(p)
    return None


def apply_fill(portfolio: Portfolio, order: dict) -> Portfolio:
    """The portfolio as it would be after ``order`` fills at its price (an estimate for checking a
    batch of orders in sequence: cash and buying power move by the order value)."""
    projected = replace(portfolio, positions=dict(portfolio.positions), prices=dict(portfolio.prices))
    fill_into(projected, order)
    return projected


def fill_into(projected: Portfolio, order: dict) -> None:
    """``apply_fill`` in place, on a portfolio that is already a private copy (``apply_fill``'s
    result): a batch check copies once, then moves the copy order by order."""
    qty, price = int(order["quantity"]), float(order["price"])
    side, symbol = order["side"], order["symbol"]
    delta = qty if side in (BUY, BUY_TO_COVER) else -qty
    value = qty * price
    projected.positions[symbol] = int(projected.positions.get(symbol, 0)) + delta
    projected.cash = projected.cash - value if side in (BUY, BUY_TO_COVER) else projected.cash + value
    if side == BUY and projected.settled_cash is not None:    # a buy spends settled cash; proceeds settle later
        projected.settled_cash -= value
    bp = projected.buying_power
    if bp is not None:
        projected.buying_power = bp - value if side in OPENING_SIDES else bp + value
    projected.prices.setdefault(symbol, price)
