"""Our own order lint: the order shapes Schwab refuses in production, refused before any send.

One home for these rules; the executor runs ``lint_problem`` on every order (both brokers, paper
too) before the send loop, on the spec it sends (``symbol``, ``side``, ``quantity``,
``order_type``, ``limit_price``, optionally ``stop_price``, ``session``, ``duration``). A
refusal is one line that names the rule (``order lint [<rule>]: ...``).

Rules (from peers' live rejections, docs/BROKERS.md "Order lint and preview"):

* ``session``: NORMAL, AM, PM or SEAMLESS; SEAMLESS never with MARKET (HTTP 400 at Schwab); no
  overnight session (Schwab's API rejects it); AM/PM (extended hours) only with LIMIT.
* ``duration``: DAY, GOOD_TILL_CANCEL, FILL_OR_KILL or IMMEDIATE_OR_CANCEL; a MARKET order is DAY
  only (GTC and the others only with a price: LIMIT, STOP, STOP_LIMIT).
* ``quantity``: whole shares, positive (Schwab takes no fractional quantity).
* ``price``: LIMIT and STOP_LIMIT need ``limit_price``, STOP and STOP_LIMIT ``stop_price``; a MARKET
  order has none; every price on its tick: $0.01 at or above $1, $0.0001 below.
"""
from __future__ import annotations

import math
from decimal import Decimal, InvalidOperation

from broker_base import OrderRejectedError

MARKET, LIMIT, STOP, STOP_LIMIT = "MARKET", "LIMIT", "STOP", "STOP_LIMIT"
ORDER_TYPES = (MARKET, LIMIT, STOP, STOP_LIMIT)
SESSIONS = ("NORMAL", "AM", "PM", "SEAMLESS")
EXTENDED_SESSIONS = ("AM", "PM")
OVERNIGHT = ("OVERNIGHT", "NIGHT", "24_HOUR", "EXTO")    # names seen for the session Schwab refuses
DURATIONS = ("DAY", "GOOD_TILL_CANCEL", "FILL_OR_KILL", "IMMEDIATE_OR_CANCEL")
PRICED = {LIMIT: ("limit_price",), STOP: ("stop_price",), STOP_LIMIT: ("limit_price", "stop_price")}
TICK_BREAK = Decimal("1")          # a price at or above this is in cents
TICK_ABOVE = Decimal("0.01")
TICK_BELOW = Decimal("0.0001")


class OrderLintError(OrderRejectedError):
    """An order refused by our lint before it was sent (one line naming the rule)."""

    def __init__(self, rule: str, message: str):
        super().__init__(f"order lint [{rule}]: {message}")
        self.rule = rule


def tick_for(price: float) -> Decimal:
    """The price increment: $0.01 at or above $1, $0.0001 below."""
    return TICK_ABOVE if Decimal(str(price)) >= TICK_BREAK else TICK_BELOW


def to_tick(price: float) -> float:
    """``price`` rounded to the nearest tick (for prices we compute, e.g. a collar's limit or a
    stop's trigger), so that the lint's tick rule passes."""
    tick = tick_for(price)
    return float((Decimal(str(price)) / tick).quantize(Decimal("1"), rounding="ROUND_HALF_UP") * tick)


def _price_problem(name: str, value, what: str) -> str | None:
    try:
        price = float(value)
    except (TypeError, ValueError):
        return f"{what}: a {name} is required, got {value!r}"
    if not math.isfinite(price) or price <= 0:
        return f"{what}: {name} must be a positive number, got {value!r}"
    tick = tick_for(price)
    try:
        off_tick = Decimal(str(price)) % tick != 0
    except InvalidOperation:
        off_tick = True
    if off_tick:
        return f"{what}: {name} {price} is not on the ${tick} tick (prices >= $1 in cents, below $1 in $0.0001)"
    return None


def lint_problem(spec: dict) -> tuple[str, str] | None:
    """(rule, message) for the first rule ``spec`` breaks, or None when it is a shape Schwab takes."""
    order_type = str(spec.get("order_type") or MARKET).upper()
    session = str(spec.get("session") or "NORMAL").upper()
    duration = str(spec.get("duration") or "DAY").upper()
    quantity = spec.get("quantity")
    what = f"{spec.get('side')} {quantity} {spec.get('symbol')} {order_type}"
    if order_type not in ORDER_TYPES:
        return "order_type", f"{what}: order type {order_type} is not one of {', '.join(ORDER_TYPES)}"
    if session in OVERNIGHT:
        return "session", f"{what}: the overnight session is refused by Schwab's API; use NORMAL"
    if session not in SESSIONS:
        return "session", f"{what}: session {session} is not one of {', '.join(SESSIONS)}"
    if session == "SEAMLESS" and order_type == MARKET:
        return "session", f"{what}: SEAMLESS with a MARKET order is refused by Schwab (HTTP 400); use NORMAL"
    if session in EXTENDED_SESSIONS and order_type != LIMIT:
        return "session", f"{what}: the {session} session takes LIMIT orders only"
    if duration not in DURATIONS:
        return "duration", f"{what}: duration {duration} is not one of {', '.join(DURATIONS)}"
    if order_type == MARKET and duration != "DAY":
        return "duration", f"{what}: a MARKET order is DAY only ({duration} needs a priced order)"
    if isinstance(quantity, bool) or not isinstance(quantity, (int, float)) or (
            isinstance(quantity, float) and (not math.isfinite(quantity) or quantity != int(quantity))):
        return "quantity", f"{what}: Schwab takes whole shares only, got {quantity!r}"
    if quantity <= 0:
        return "quantity", f"{what}: quantity must be positive, got {quantity!r}"
    for name in PRICED.get(order_type, ()):
        problem = _price_problem(name, spec.get(name), what)
        if problem:
            return "price", problem
    if order_type == MARKET and spec.get("limit_price") is not None:
        return "price", f"{what}: a MARKET order carries no limit_price"
    return None


def check(spec: dict) -> None:
    """``OrderLintError`` naming the rule when ``spec`` breaks one."""
    problem = lint_problem(spec)
    if problem:
        raise OrderLintError(*problem)
