"""What every broker shares: the order vocabulary, the errors, order validation and the cost model.

The one home of these rules. ``schwab_broker.SchwabAPI`` and ``paper_broker.PaperBroker``
implement the interface below; the order executor, the risk manager and the backtest import the
vocabulary, the errors and the cost model from here (``trading_api`` is only the front door).

Interface (both brokers)::

    simulated: bool                   # True for the paper broker
    get_account_balance() -> {"equity", "cash", "buying_power"}            # floats, USD
    get_positions() -> {symbol: {"quantity", "avg_price", "market_value", "recalled"}}
                       # quantity: signed int, negative = short
    get_quotes(symbols) -> {symbol: {"last", "bid", "ask", "borrow_rate", "hard_to_borrow",
                                     "shortable", "ex_dividend_date"}}
    set_prices(prices, as_of=None, opens=None, bars=None)   # closes of session as_of, {date: {sym: open}}
                                      # and {date: {sym: {"open", "high", "low"}}} of recent sessions (paper:
                                      # market orders fill at the next open, resting stops in the bar; Schwab: no-op)
                                      # the paper broker also takes bars={date: {sym: {"open", "high",
                                      # "low"}}}: the bars its resting STOP orders are checked against
    place_order(order) -> order id (str)
        order = {"symbol", "side": BUY|SELL|SELL_SHORT|BUY_TO_COVER, "quantity": int > 0,
                 "order_type": MARKET|LIMIT|STOP, "limit_price": float|None (LIMIT),
                 "stop_price": float|None (STOP), "duration": DAY|GTC (default DAY), "client_key": str}
    get_order(order_id) -> {"order_id", "symbol", "side", "quantity", "status", "filled_quantity",
                            "remaining_quantity", "avg_fill_price", "entered_time", ...}
        status: NEW, WORKING, FILLED, PARTIALLY_FILLED, CANCELED, REJECTED, EXPIRED
        entered_time: timezone-aware UTC datetime (or None when the broker gave none)
    cancel_order(order_id); get_open_orders() -> [order]; get_orders_since(dt, reach=None) -> [order]
        get_orders_since lists every order entered at or after dt by the BROKER's clock; the same
        dt twice gives the same window (the executor's snapshot rule depends on it); the window
        reaches past the broker's own clock and ``reach`` (a recorded send time), not only ours
    server_time: datetime | None      # the broker's own clock at its latest answer (Schwab: HTTP
                                      # Date header); recorded in snapshots
    broker_time() -> datetime | None  # the broker's own clock now (Schwab: asks it); None when it
                                      # has none of its own (paper); compared with ours by the
                                      # cycle before any order (clock_sanity)
    get_transactions(start, end) -> [transaction]   # cash and share movements of the account
        transaction = {"id": str, "type": Schwab's type (TRADE, DIVIDEND_OR_INTEREST,
                       RECEIVE_AND_DELIVER, JOURNAL, ...), "time": aware UTC datetime | None,
                       "order_id": str | None (TRADE), "symbol": str | None,
                       "quantity": {symbol: signed shares change}, "cash": float (net, USD),
                       "fee": bool (only fees move cash), "description": str}
    fills_at_next_open: bool          # True when a market order waits for the next session's open
                                      # (the paper broker's PAPER_FILL = "next_open"; Schwab: False)
    client_key in an order dict: the key it was placed with where the broker keeps one (paper),
                                 None where it cannot (Schwab takes no client order id)

``Broker`` (at the end of this module) declares this interface for type checkers; code that uses a
broker calls these names directly and never asks which broker it has.

Errors (all derive from ``BrokerError``, itself a ``errors.UserFacingError``):
``TransientBrokerError`` (timeouts, network, HTTP 408/429/5xx: retry with backoff),
``OrderRejectedError`` (400/422 on an order, or a REJECTED order: never retry),
``OrderNotFoundError``, ``OrderStatusUnknownError`` (an order may or may not have reached the
broker: look before placing it again), ``AuthenticationError`` (401/403, missing credentials) and
its subclass ``TokenExpiredError`` (the 7-day Schwab login ran out: ``python trading_api.py login``).
Messages never contain keys or tokens.

Cost model (the paper broker and the backtest both call these): ``slippage_price``,
``commission_for``, ``borrow_fee`` and ``paper_buying_power``. Their parameters come from a
``settings.TradingSettings`` (the callers pass its values); left out, they default to
``constants.py``.
"""
from __future__ import annotations

import math
import re
import uuid
from datetime import date, datetime, timezone
from typing import Any, Protocol

import constants as C
from errors import UserFacingError

# =========================================================================== order vocabulary
BUY, SELL, SELL_SHORT, BUY_TO_COVER = "BUY", "SELL", "SELL_SHORT", "BUY_TO_COVER"
SIDES = (BUY, SELL, SELL_SHORT, BUY_TO_COVER)          # a tuple: messages list them in this order
BUY_SIDES = frozenset({BUY, BUY_TO_COVER})             # pay the offer: slippage makes the price higher
OPENING_SIDES = frozenset({BUY, SELL_SHORT})           # add risk (open or extend a position)

MARKET, LIMIT, STOP = "MARKET", "LIMIT", "STOP"
ORDER_TYPES = (MARKET, LIMIT, STOP)                    # STOP: a protective stop (issue 22), GTC at the broker
DAY, GTC = "DAY", "GOOD_TILL_CANCEL"                   # an order's duration (Schwab's names)
DURATIONS = (DAY, GTC)

NEW, WORKING, PARTIALLY_FILLED = "NEW", "WORKING", "PARTIALLY_FILLED"
FILLED, CANCELED, REJECTED, EXPIRED = "FILLED", "CANCELED", "REJECTED", "EXPIRED"
OPEN_STATUSES = frozenset({NEW, WORKING, PARTIALLY_FILLED})      # the broker may still fill it
FINAL_STATUSES = frozenset({FILLED, CANCELED, REJECTED, EXPIRED})  # nothing more will happen

UTC = timezone.utc


# =========================================================================== errors
class BrokerError(UserFacingError):
    """Anything a broker call can fail with. ``status_code`` is the HTTP status when there was one."""

    def __init__(self, message: str, status_code: int | None = None):
        super().__init__(message)
        self.status_code = status_code


class TransientBrokerError(BrokerError):
    """Timeout, network failure, HTTP 408/429/5xx: the caller may retry with backoff.
    ``ambiguous`` is True when the request may have reached the broker (a read timeout, a 5xx)."""

    def __init__(self, message: str, status_code: int | None = None, ambiguous: bool = False):
        super().__init__(message, status_code)
        self.ambiguous = ambiguous


class OrderRejectedError(BrokerError):
    """The broker refused the order (HTTP 400/422, status REJECTED, or a paper-broker rule).
    Never retried: the same order would be refused again."""


class OrderNotFoundError(BrokerError):
    """No order with this id."""


class OrderStatusUnknownError(TransientBrokerError):
    """An order request failed in a way that leaves open whether the broker has it. A retry must
    first look at ``get_orders_since()`` (or the Schwab web site) for it; never re-send blindly.
    Always ``ambiguous``."""

    def __init__(self, message: str, status_code: int | None = None):
        super().__init__(message, status_code, ambiguous=True)


class AuthenticationError(BrokerError):
    """Credentials missing, refused (401/403) or unreadable. The message names the fix."""


class TokenExpiredError(AuthenticationError):
    """The Schwab login (refresh token, 7 days) has expired or was revoked:
    run ``python trading_api.py login``."""


# =========================================================================== cost model (shared with the backtest)
def signed_quantity(side: str, quantity) -> int:
    """The position change of a fill: + for BUY / BUY_TO_COVER, - for SELL / SELL_SHORT."""
    return int(quantity) if side in BUY_SIDES else -int(quantity)


def slippage_price(reference: float, side: str, bps: float | None = None) -> float:
    """The fill price for ``reference`` after ``bps`` basis points of slippage: buys (BUY,
    BUY_TO_COVER) pay more, sells (SELL, SELL_SHORT) get less."""
    bps = C.PAPER_SLIPPAGE_BPS if bps is None else float(bps)
    side = str(side).upper()
    if side not in SIDES:
        raise ValueError(f"unknown side {side!r}: use one of {', '.join(SIDES)}")
    factor = 1.0 + bps / 10_000.0 if side in BUY_SIDES else 1.0 - bps / 10_000.0
    return round(float(reference) * factor, 6)


def commission_for(quantity: int, per_share: float | None = None,
                   minimum: float | None = None) -> float:
    """Commission of one order: ``max(|quantity| * per_share, minimum)``; 0 for no shares."""
    per_share = C.PAPER_COMMISSION_PER_SHARE if per_share is None else float(per_share)
    minimum = C.PAPER_MIN_COMMISSION if minimum is None else float(minimum)
    shares = abs(int(quantity))
    if shares == 0:
        return 0.0
    return round(max(shares * per_share, minimum), 6)


def borrow_fee(quantity: int, price: float, annual_rate: float, days: int,
               day_count: int | None = None) -> float:
    """Borrow cost of a short position: ``|quantity| * price * annual_rate * days / 360``.

    Convention (US securities lending): the rate is an annual fraction, days are calendar days
    (a short held over a weekend pays 3 days), the day count is ACT/360 (``day_count``, default
    ``constants.BORROW_DAY_COUNT``), valued at the given (latest) price."""
    if not days or days <= 0 or not annual_rate or annual_rate <= 0:
        return 0.0
    day_count = C.BORROW_DAY_COUNT if day_count is None else day_count
    return abs(int(quantity)) * float(price) * float(annual_rate) * int(days) / day_count


def paper_buying_power(cash: float, short_market_value: float, *, allow_negative: bool = False,
                       margin_req: float | None = None) -> float:
    """Buying power of a simulated margin account (the paper broker and the backtest):
    ``cash - PAPER_SHORT_MARGIN_REQ * short market value`` (Reg T 150 %), where
    ``short_market_value`` is the shorts' market value as a positive number.

    Reported as never below 0; ``allow_negative=True`` gives the signed figure (a negative one is a
    margin deficit), which the paper broker's order checks use. ``margin_req`` defaults to
    ``constants.PAPER_SHORT_MARGIN_REQ``."""
    margin_req = C.PAPER_SHORT_MARGIN_REQ if margin_req is None else float(margin_req)
    power = float(cash) - margin_req * float(short_market_value)
    return power if allow_negative else max(power, 0.0)


# =========================================================================== orders
def validate_order(order: dict) -> dict:
    """The normalized order, or ``OrderRejectedError`` naming what is wrong with it."""
    if not isinstance(order, dict):
        raise OrderRejectedError("order must be a dict with symbol, side, quantity, order_type")
    symbol = str(order.get("symbol") or "").strip().upper()
    if not re.fullmatch(r"[A-Z0-9][A-Z0-9./\-]{0,14}", symbol):
        raise OrderRejectedError(f"invalid symbol {order.get('symbol')!r}")
    side = str(order.get("side") or "").strip().upper()
    if side not in SIDES:
        raise OrderRejectedError(f"invalid side {order.get('side')!r}: use one of {', '.join(SIDES)}")
    quantity = order.get("quantity")
    if isinstance(quantity, bool) or not isinstance(quantity, (int, float)) or (
            isinstance(quantity, float) and (not math.isfinite(quantity) or quantity != int(quantity))):
        raise OrderRejectedError(f"quantity must be a whole number of shares, got {quantity!r}")
    quantity = int(quantity)
    if quantity <= 0:
        raise OrderRejectedError(f"quantity must be positive, got {quantity}")
    order_type = str(order.get("order_type") or MARKET).strip().upper()
    if order_type not in ORDER_TYPES:
        raise OrderRejectedError(f"invalid order_type {order.get('order_type')!r}: use one of {', '.join(ORDER_TYPES)}")
    limit_price = _order_price(order, "limit_price") if order_type == LIMIT else None
    stop_price = _order_price(order, "stop_price") if order_type == STOP else None
    duration = str(order.get("duration") or DAY).strip().upper()
    if duration not in DURATIONS:
        raise OrderRejectedError(f"invalid duration {order.get('duration')!r}: use one of {', '.join(DURATIONS)}")
    client_key = str(order.get("client_key") or "").strip() or uuid.uuid4().hex
    return {"symbol": symbol, "side": side, "quantity": quantity, "order_type": order_type,
            "limit_price": limit_price, "stop_price": stop_price, "duration": duration,
            "client_key": client_key}


def _order_price(order: dict, field: str) -> float:
    """The positive finite ``field`` (limit_price / stop_price) a priced order needs."""
    raw = order.get(field)
    try:
        price = float(raw)
    except (TypeError, ValueError):
        raise OrderRejectedError(f"a {order.get('order_type')} order needs a {field}, got {raw!r}") from None
    if not math.isfinite(price) or price <= 0:
        raise OrderRejectedError(f"{field} must be positive, got {raw!r}")
    return price


# =========================================================================== values in broker answers
def num(value) -> float | None:
    """``value`` as a finite float, else None."""
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def parse_time(value) -> datetime | None:
    """Schwab's ``2024-03-20T14:30:00+0000`` (or ISO with ``Z``/``+00:00``) -> aware UTC datetime."""
    if value in (None, ""):
        return None
    if isinstance(value, datetime):
        return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
    text = str(value).strip().replace("Z", "+00:00")
    if re.search(r"[+-]\d{4}$", text):
        text = text[:-2] + ":" + text[-2:]
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed.astimezone(UTC) if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def parse_date(value) -> date | None:
    """A calendar date from Schwab's ``2025-04-28T04:00:00Z`` (the date as written: Schwab
    stamps midnight New York time), ``2025-04-28`` or epoch milliseconds."""
    if value in (None, "", 0):
        return None
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    if isinstance(value, (int, float)):
        try:
            return datetime.fromtimestamp(value / 1000.0, tz=UTC).date()
        except (OverflowError, OSError, ValueError):
            return None
    try:
        return date.fromisoformat(str(value).strip()[:10])
    except ValueError:
        return None


def to_utc(dt) -> datetime:
    """A datetime (naive = the machine's local time) or a date (local midnight) in UTC."""
    if isinstance(dt, datetime):
        return dt.astimezone(UTC)
    if isinstance(dt, date):
        return datetime(dt.year, dt.month, dt.day).astimezone(UTC)
    raise TypeError(f"expected a datetime, got {type(dt).__name__}")


# =========================================================================== the interface
class Broker(Protocol):
    """What every broker offers (see the module docstring); ``SchwabAPI`` and ``PaperBroker``."""

    name: str
    simulated: bool
    server_time: datetime | None
    fills_at_next_open: bool

    def get_account_balance(self) -> dict[str, Any]: ...
    def get_positions(self) -> dict[str, dict[str, Any]]: ...
    def get_quotes(self, symbols) -> dict[str, dict[str, Any]]: ...
    def set_prices(self, prices, as_of=None, opens=None, bars=None) -> None: ...
    def preview_order(self, order: dict) -> None: ...
    def apply_corporate_actions(self, actions, through=None) -> list[dict]: ...   # before set_prices
    def place_order(self, order: dict) -> str: ...
    def get_order(self, order_id: str) -> dict[str, Any]: ...
    def cancel_order(self, order_id: str) -> Any: ...
    def get_open_orders(self) -> list[dict[str, Any]]: ...
    def get_orders_since(self, dt, reach: datetime | None = None) -> list[dict[str, Any]]: ...
    def broker_time(self) -> datetime | None: ...
    def get_transactions(self, start: datetime, end: datetime) -> list[dict[str, Any]]: ...
