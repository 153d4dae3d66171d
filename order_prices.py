"""The prices of protective stops and collared limit orders, and how a day's bar fills them.

One home for these rules (issue 22 points 1-2): the live cycle (Schwab), the paper broker and the
backtest engine all call these functions, so a stop or a collar fills the same way in the
evidence as in paper trading. Tunables are read at call time from ``constants``.

Sides: ``"long"`` / ``"short"`` for a position's stop; ``"buy"`` / ``"sell"`` for an order.
"""
from __future__ import annotations

import math
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal

import constants as C


def round_to_tick(price: float, direction: str, tick: float | None = None) -> float:
    """``price`` on the tick grid: ``"down"``, ``"up"`` or ``"nearest"`` (exact in decimal)."""
    step = Decimal(str(C.PRICE_TICK if tick is None else tick))
    units = Decimal(str(price)) / step
    if direction == "down":
        units = units.to_integral_value(rounding=ROUND_FLOOR)
    elif direction == "up":
        units = units.to_integral_value(rounding=ROUND_CEILING)
    elif direction == "nearest":
        units = units.to_integral_value()
    else:
        raise ValueError(f"round_to_tick: direction {direction!r} is not down, up or nearest")
    return float(units * step)


def price_text(price: float) -> str:
    """The price as schwab-py's builders want it: a string on the tick (a float would be truncated)."""
    return f"{Decimal(str(price)).quantize(Decimal(str(C.PRICE_TICK))):f}"


def daily_volatility(closes: list[float]) -> float:
    """Standard deviation of the last ``STOP_VOL_WINDOW`` daily simple returns (0.0 when too few)."""
    window = int(C.STOP_VOL_WINDOW)
    tail = [float(c) for c in closes[-(window + 1):] if c is not None and math.isfinite(float(c)) and float(c) > 0]
    rets = [b / a - 1.0 for a, b in zip(tail, tail[1:])]
    if len(rets) < 2:
        return 0.0
    mean = sum(rets) / len(rets)
    return math.sqrt(sum((r - mean) ** 2 for r in rets) / (len(rets) - 1))


def stop_price(side: str, reference: float, volatility: float) -> float:
    """The protective stop of a ``long`` or ``short`` position entered near ``reference``.

    Distance = max(STOP_VOL_MULTIPLE * volatility, STOP_MIN_DISTANCE) * reference, rounded away
    from the price (a long's stop down, a short's up) so the rounding never tightens it.
    """
    if reference <= 0:
        raise ValueError(f"stop_price: reference price {reference} must be positive")
    fraction = max(float(C.STOP_VOL_MULTIPLE) * max(volatility, 0.0), float(C.STOP_MIN_DISTANCE))
    ref, distance = Decimal(str(reference)), Decimal(str(reference)) * Decimal(repr(fraction))
    if side == "long":
        return max(round_to_tick(float(ref - distance), "down"), float(C.PRICE_TICK))
    if side == "short":
        return round_to_tick(float(ref + distance), "up")
    raise ValueError(f"stop_price: side {side!r} is not long or short")


def split_stop(side: str, stop: float, ratio: float) -> float:
    """A resting stop after a ``ratio``-for-1 split (price / ratio), on the tick away from the
    price (a long's stop down, a short's up), as brokers adjust open orders for splits."""
    if ratio <= 0:
        raise ValueError(f"split_stop: split ratio {ratio} must be positive")
    value = float(Decimal(str(stop)) / Decimal(str(ratio)))
    if side == "long":
        return max(round_to_tick(value, "down"), float(C.PRICE_TICK))
    if side == "short":
        return round_to_tick(value, "up")
    raise ValueError(f"split_stop: side {side!r} is not long or short")


def collar_limit(action: str, reference: float) -> float:
    """The marketable limit of a collared order: a buy pays at most reference * (1 + collar),
    a sell takes at least reference * (1 - collar), rounded on the tick toward the reference."""
    collar = Decimal(str(C.PRICE_COLLAR_BPS)) / Decimal(10_000)
    ref = Decimal(str(reference))   # in decimal: 100 * 1.005 is 100.5, not 100.49999
    if action == "buy":
        return round_to_tick(float(ref * (1 + collar)), "down")
    if action == "sell":
        return round_to_tick(float(ref * (1 - collar)), "up")
    raise ValueError(f"collar_limit: action {action!r} is not buy or sell")


def stop_fill(side: str, stop: float, open_: float, low: float, high: float) -> float | None:
    """Where a resting stop of a ``long`` / ``short`` position fills in a day's bar, or None.

    A long's stop (a sell) triggers when the low reaches it: at the stop price, or at the open
    when the open gaps through it. A short's stop (a buy) mirrors this with the high.
    """
    if side == "long":
        if open_ <= stop:
            return float(open_)
        return float(stop) if low <= stop else None
    if side == "short":
        if open_ >= stop:
            return float(open_)
        return float(stop) if high >= stop else None
    raise ValueError(f"stop_fill: side {side!r} is not long or short")


def collar_fill(action: str, limit: float, open_: float) -> float | None:
    """Where a collared limit order sent for the open fills, or None when the open gaps beyond
    the collar (the order is then cancelled at the fill timeout and reported, never chased)."""
    if action == "buy":
        return float(open_) if open_ <= limit else None
    if action == "sell":
        return float(open_) if open_ >= limit else None
    raise ValueError(f"collar_fill: action {action!r} is not buy or sell")


def within_limit(action: str, price: float, limit: float) -> float:
    """A limit order's fill price: ``price`` (the slipped open) but never beyond ``limit``
    (a buy pays at most the limit, a sell gets at least it)."""
    if action == "buy":
        return min(float(price), float(limit))
    if action == "sell":
        return max(float(price), float(limit))
    raise ValueError(f"within_limit: action {action!r} is not buy or sell")


def uses_collar() -> bool:
    """True when entries and exits go out as collared limit orders (ORDER_TYPE)."""
    return C.ORDER_TYPE == "limit_collar"
