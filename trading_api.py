"""The brokers: one interface, two implementations.

``SchwabAPI`` trades a real Charles Schwab account through schwab-py; ``PaperBroker`` simulates an
account in the SQLite state database. Both offer exactly the same methods and dict shapes, and
``get_broker()`` picks one from ``TRADING_MODE`` (``paper`` unless someone asks for ``live``).

Interface (both brokers)::

    get_account_balance() -> {"equity", "cash", "buying_power"}            # floats, USD
    get_positions() -> {symbol: {"quantity", "avg_price", "market_value", "recalled"}}
                       # quantity: signed int, negative = short
    get_quotes(symbols) -> {symbol: {"last", "bid", "ask", "borrow_rate", "hard_to_borrow",
                                     "shortable", "ex_dividend_date"}}
    place_order(order) -> order id (str)
        order = {"symbol", "side": BUY|SELL|SELL_SHORT|BUY_TO_COVER, "quantity": int > 0,
                 "order_type": MARKET|LIMIT, "limit_price": float|None, "client_key": str}
    get_order(order_id) -> {"order_id", "symbol", "side", "quantity", "status", "filled_quantity",
                            "remaining_quantity", "avg_fill_price", "entered_time", ...}
        status: NEW, WORKING, FILLED, PARTIALLY_FILLED, CANCELED, REJECTED, EXPIRED
        entered_time: timezone-aware UTC datetime (or None when the broker gave none)
    cancel_order(order_id); get_open_orders() -> [order]; get_orders_since(dt) -> [order]

Errors (all derive from ``BrokerError``): ``TransientBrokerError`` (timeouts, network, HTTP 408/429/5xx:
retry with backoff), ``OrderRejectedError`` (400/422 on an order, or a REJECTED order: never retry),
``OrderNotFoundError``, ``OrderStatusUnknownError`` (an order may or may not have reached Schwab: look
before placing it again), ``AuthenticationError`` (401/403, missing credentials) and its subclass
``TokenExpiredError`` (the 7-day Schwab login ran out: ``python trading_api.py login``).
Messages never contain keys or tokens.

The cost rules ``slippage_price``, ``commission_for`` and ``borrow_fee`` live here once; the paper
broker and the backtest both call them.

Command line (diagnosis and the one-time login)::

    python trading_api.py login                 # interactive Schwab login (once a week at most)
    python trading_api.py token-age             # exit 0 fresh, 1 renew soon, 2 expired/missing
    python trading_api.py balance|positions|orders [--paper]
    python trading_api.py quotes SYM [SYM ...] [--paper]
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import re
import sys
import time
import uuid
import warnings
from collections import deque
from datetime import date, datetime, timedelta, timezone
from decimal import ROUND_HALF_UP, Decimal

import httpx

import config
from errors import UserFacingError, install_excepthook
import constants as C
import logging_setup
import state_db

log = logging.getLogger("broker")

SIDES = ("BUY", "SELL", "SELL_SHORT", "BUY_TO_COVER")
BUY_SIDES = ("BUY", "BUY_TO_COVER")          # pay the offer: slippage makes the price higher
ORDER_TYPES = ("MARKET", "LIMIT")
STATUSES = ("NEW", "WORKING", "FILLED", "PARTIALLY_FILLED", "CANCELED", "REJECTED", "EXPIRED")
OPEN_STATUSES = ("NEW", "WORKING", "PARTIALLY_FILLED")

LOGIN_COMMAND = "python trading_api.py login"
SET_CREDENTIALS_COMMAND = (
    "`python credential_manager.py set schwab` (or python -c \"from credential_manager import "
    "CredentialManager; CredentialManager().store_credentials('schwab', {'app_key': 'YOUR_KEY', "
    "'app_secret': 'YOUR_SECRET'})\")")
SCHWAB_SERVICE = "schwab"
SCHWAB_TOKEN_SERVICE = "schwab_token"
_UTC = timezone.utc


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


# =========================================================================== cost rules (shared with the backtest)
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


def borrow_fee(quantity: int, price: float, annual_rate: float, days: int) -> float:
    """Borrow cost of a short position: ``|quantity| * price * annual_rate * days / 360``.

    Convention (US securities lending): the rate is an annual fraction, days are calendar days
    (a short held over a weekend pays 3 days), the day count is ACT/360
    (``constants.BORROW_DAY_COUNT``), valued at the given (latest) price."""
    if not days or days <= 0 or not annual_rate or annual_rate <= 0:
        return 0.0
    return abs(int(quantity)) * float(price) * float(annual_rate) * int(days) / C.BORROW_DAY_COUNT


def format_price(price: float) -> str:
    """A limit price as Schwab wants it: a string, 2 decimals from $1, 4 decimals below."""
    value = Decimal(str(price))
    places = Decimal("0.01") if value >= 1 else Decimal("0.0001")
    return str(value.quantize(places, rounding=ROUND_HALF_UP))


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
    order_type = str(order.get("order_type") or "MARKET").strip().upper()
    if order_type not in ORDER_TYPES:
        raise OrderRejectedError(f"invalid order_type {order.get('order_type')!r}: use MARKET or LIMIT")
    limit_price = None
    if order_type == "LIMIT":
        raw = order.get("limit_price")
        try:
            limit_price = float(raw)
        except (TypeError, ValueError):
            raise OrderRejectedError(f"a LIMIT order needs a limit_price, got {raw!r}") from None
        if not math.isfinite(limit_price) or limit_price <= 0:
            raise OrderRejectedError(f"limit_price must be positive, got {raw!r}")
    client_key = str(order.get("client_key") or "").strip() or uuid.uuid4().hex
    return {"symbol": symbol, "side": side, "quantity": quantity, "order_type": order_type,
            "limit_price": limit_price, "client_key": client_key}


# =========================================================================== small helpers
def _num(value) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def _first_num(mapping: dict, *keys) -> float | None:
    for key in keys:
        value = _num(mapping.get(key))
        if value is not None:
            return value
    return None


def parse_time(value) -> datetime | None:
    """Schwab's ``2024-03-20T14:30:00+0000`` (or ISO with ``Z``/``+00:00``) -> aware UTC datetime."""
    if value in (None, ""):
        return None
    if isinstance(value, datetime):
        return value.astimezone(_UTC) if value.tzinfo else value.replace(tzinfo=_UTC)
    text = str(value).strip().replace("Z", "+00:00")
    if re.search(r"[+-]\d{4}$", text):
        text = text[:-2] + ":" + text[-2:]
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed.astimezone(_UTC) if parsed.tzinfo else parsed.replace(tzinfo=_UTC)


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
            return datetime.fromtimestamp(value / 1000.0, tz=_UTC).date()
        except (OverflowError, OSError, ValueError):
            return None
    try:
        return date.fromisoformat(str(value).strip()[:10])
    except ValueError:
        return None


def _to_utc(dt) -> datetime:
    if isinstance(dt, datetime):
        return dt.astimezone(_UTC)          # a naive datetime is the machine's local time
    if isinstance(dt, date):
        return datetime(dt.year, dt.month, dt.day).astimezone(_UTC)
    raise TypeError(f"expected a datetime, got {type(dt).__name__}")


def _as_date(value) -> date:
    if value is None:
        return date.today()
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    return date.fromisoformat(str(value)[:10])


def _mask(identifier) -> str:
    text = str(identifier or "")
    return "****" + text[-4:] if text else "(unknown)"


def _short_text(text: str, limit: int = 300) -> str:
    text = logging_setup.redact(" ".join(str(text).split()))
    return text if len(text) <= limit else text[:limit] + "..."


def _import_schwab():
    """schwab-py, imported quietly (authlib warns about its httpx fallback on import)."""
    with warnings.catch_warnings():
        import authlib.deprecate  # noqa: F401  (it installs an "always" filter on import)
        warnings.simplefilter("ignore")
        import schwab  # noqa: F401
        import schwab.auth
        import schwab.orders.equities
        import schwab.utils
        from authlib.integrations.base_client.errors import OAuthError
    return schwab, OAuthError


def _credential_manager():
    try:
        from credential_manager import CredentialManager
    except ImportError as exc:
        raise AuthenticationError(
            f"credential_manager.py cannot be imported ({exc.__class__.__name__}): the Schwab "
            f"credentials live in the credential store; reinstall the project") from None
    return CredentialManager()


def _load_service(cm, service: str):
    try:
        return cm.load_credentials(service)
    except Exception as exc:        # decryption failure, unreadable file, ...
        raise AuthenticationError(
            f"cannot read the '{service}' entry of the credential store ({exc.__class__.__name__}: "
            f"{_short_text(exc, 160)}); if the encryption key changed, store the credentials again "
            f"with {SET_CREDENTIALS_COMMAND} and run `{LOGIN_COMMAND}`") from None


def check_token_age(creation_timestamp, now: float | None = None) -> float:
    """Age of a Schwab login token in days. Warns from ``TOKEN_WARN_AGE_DAYS``; raises
    ``TokenExpiredError`` from ``TOKEN_MAX_AGE_DAYS`` (the refresh token dies at 7 days and
    refreshing does not renew it)."""
    try:
        created = float(creation_timestamp)
    except (TypeError, ValueError):
        raise AuthenticationError(
            f"the stored Schwab token has no valid creation time: run `{LOGIN_COMMAND}`") from None
    age_days = ((time.time() if now is None else now) - created) / 86_400.0
    expires = datetime.fromtimestamp(created + C.TOKEN_MAX_AGE_DAYS * 86_400.0).strftime("%Y-%m-%d %H:%M")
    if age_days >= C.TOKEN_MAX_AGE_DAYS:
        raise TokenExpiredError(
            f"the Schwab login token is {age_days:.1f} days old and expired at {expires} "
            f"(Schwab logins last {C.TOKEN_MAX_AGE_DAYS:g} days): run `{LOGIN_COMMAND}`")
    if age_days >= C.TOKEN_WARN_AGE_DAYS:
        log.warning("Schwab login token is %.1f days old and expires at %s: run `%s` before then",
                    age_days, expires, LOGIN_COMMAND)
    return age_days


def _register_token_secrets(token) -> None:
    if not isinstance(token, dict):
        return
    inner = token.get("token", token)
    if isinstance(inner, dict):
        for key in ("access_token", "refresh_token", "id_token"):
            logging_setup.register_secret(inner.get(key))


# Schwab order statuses -> ours. Anything unknown counts as WORKING: it may still be live.
_SCHWAB_STATUS = {
    "AWAITING_PARENT_ORDER": "NEW", "AWAITING_CONDITION": "NEW", "AWAITING_STOP_CONDITION": "NEW",
    "AWAITING_MANUAL_REVIEW": "NEW", "ACCEPTED": "NEW", "AWAITING_UR_OUT": "NEW",
    "PENDING_ACTIVATION": "NEW", "QUEUED": "NEW", "NEW": "NEW", "AWAITING_RELEASE_TIME": "NEW",
    "PENDING_ACKNOWLEDGEMENT": "NEW",
    "WORKING": "WORKING", "PENDING_CANCEL": "WORKING", "PENDING_REPLACE": "WORKING",
    "PENDING_RECALL": "WORKING", "UNKNOWN": "WORKING",
    "FILLED": "FILLED", "CANCELED": "CANCELED", "REPLACED": "CANCELED",
    "REJECTED": "REJECTED", "EXPIRED": "EXPIRED",
}


def map_schwab_status(status, filled: int = 0, remaining: int = 0) -> str:
    """Our status for a Schwab order. Schwab has no PARTIALLY_FILLED: a live order with
    ``filledQuantity > 0`` and ``remainingQuantity > 0`` is one."""
    ours = _SCHWAB_STATUS.get(str(status or "UNKNOWN").upper(), "WORKING")
    if ours in ("NEW", "WORKING") and filled > 0 and remaining > 0:
        return "PARTIALLY_FILLED"
    return ours


def parse_schwab_order(raw: dict) -> dict:
    """Our order dict from a Schwab order object."""
    legs = raw.get("orderLegCollection") or [{}]
    leg = legs[0] or {}
    instrument = leg.get("instrument") or {}
    quantity = int(round(_first_num(raw, "quantity") or _first_num(leg, "quantity") or 0))
    filled = int(round(_num(raw.get("filledQuantity")) or 0))
    remaining = _num(raw.get("remainingQuantity"))
    remaining = int(round(remaining)) if remaining is not None else max(quantity - filled, 0)
    total_qty = total_value = 0.0
    for activity in raw.get("orderActivityCollection") or []:
        if str(activity.get("activityType", "EXECUTION")).upper() != "EXECUTION":
            continue
        for execution in activity.get("executionLegs") or []:
            q, p = _num(execution.get("quantity")), _num(execution.get("price"))
            if q and p:
                total_qty += q
                total_value += q * p
    return {
        "order_id": str(raw.get("orderId", "")),
        "symbol": str(instrument.get("symbol", "")).upper(),
        "side": str(leg.get("instruction", "")).upper(),
        "quantity": quantity,
        "order_type": str(raw.get("orderType", "")).upper(),
        "limit_price": _num(raw.get("price")),
        "status": map_schwab_status(raw.get("status"), filled, remaining),
        "broker_status": raw.get("status"),
        "filled_quantity": filled,
        "remaining_quantity": remaining,
        "avg_fill_price": round(total_value / total_qty, 6) if total_qty else None,
        "entered_time": parse_time(raw.get("enteredTime")),
        "client_key": None,
        "reject_reason": raw.get("statusDescription"),
    }


# =========================================================================== Schwab
class SchwabAPI:
    """A real Schwab account through schwab-py. Construction reads the app key/secret
    (service ``schwab``) and the login token (service ``schwab_token``) from the credential
    manager, checks the token's age and never opens a browser. The account is
    ``account_hash`` from the credentials, else the first linked account."""

    name = "schwab"

    def __init__(self, credential_manager=None):
        self._cm = credential_manager if credential_manager is not None else _credential_manager()
        creds = _load_service(self._cm, SCHWAB_SERVICE)
        if not creds or not creds.get("app_key") or not creds.get("app_secret"):
            raise AuthenticationError(
                f"Schwab credentials are not configured: store the app key and secret with "
                f"{SET_CREDENTIALS_COMMAND} then log in once with `{LOGIN_COMMAND}`")
        app_key, app_secret = str(creds["app_key"]), str(creds["app_secret"])
        logging_setup.register_secret(app_key)
        logging_setup.register_secret(app_secret)
        token = _load_service(self._cm, SCHWAB_TOKEN_SERVICE)
        if not token:
            raise AuthenticationError(
                f"no Schwab login token is stored: log in once (interactive) with `{LOGIN_COMMAND}`")
        if not isinstance(token, dict) or "creation_timestamp" not in token or "token" not in token:
            raise AuthenticationError(
                f"the stored Schwab login token has an unknown format: run `{LOGIN_COMMAND}`")
        _register_token_secrets(token)
        self.token_created = float(token["creation_timestamp"])
        self.token_age_days = check_token_age(self.token_created)
        schwab, self._oauth_error = _import_schwab()
        self._schwab = schwab
        try:
            self._client = schwab.auth.client_from_access_functions(
                app_key, app_secret, token_read_func=lambda: token,
                token_write_func=self._write_token)
        except Exception as exc:
            raise AuthenticationError(
                f"cannot build the Schwab client from the stored token ({exc.__class__.__name__}): "
                f"run `{LOGIN_COMMAND}`") from None
        self._client.set_timeout(C.BROKER_HTTP_TIMEOUT_S)
        self._account_hash = str(creds["account_hash"]) if creds.get("account_hash") else None
        self._account_number = None
        self._order_times: deque[float] = deque()
        self._placed: dict[str, str] = {}          # client_key -> order id (this process)

    # ------------------------------------------------------------------ token
    def _write_token(self, wrapped, *args, **kwargs) -> None:
        """schwab-py calls this with ``{creation_timestamp, token}`` after every refresh."""
        _register_token_secrets(wrapped)
        try:
            self._cm.store_credentials(SCHWAB_TOKEN_SERVICE, wrapped)
        except Exception as exc:
            # The refresh token is unchanged by a refresh, so the stored token stays usable.
            log.error("Could not save the refreshed Schwab token (%s); the stored login still works "
                      "until it is %g days old", exc.__class__.__name__, C.TOKEN_MAX_AGE_DAYS)

    def token_age(self) -> float:
        """Age of the login token in days."""
        return (time.time() - self.token_created) / 86_400.0

    # ------------------------------------------------------------------ HTTP plumbing
    def _call(self, what: str, fn, *args, order: bool = False, lookup: bool = False, **kwargs):
        try:
            resp = fn(*args, **kwargs)
        except self._oauth_error as exc:
            error = getattr(exc, "error", None) or exc.__class__.__name__
            raise TokenExpiredError(
                f"Schwab refused the login token during {what} ({error}): the weekly login has "
                f"expired or was revoked; run `{LOGIN_COMMAND}`") from None
        except httpx.HTTPStatusError as exc:          # token endpoint answered 5xx / non-JSON
            code = exc.response.status_code
            if code >= 500 or code == 429:
                raise TransientBrokerError(
                    f"Schwab token refresh during {what} failed: HTTP {code}", code) from None
            raise AuthenticationError(
                f"Schwab token refresh during {what} failed: HTTP {code}; run `{LOGIN_COMMAND}`",
                code) from None
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise TransientBrokerError(
                f"cannot reach Schwab for {what} ({exc.__class__.__name__})") from None
        except httpx.TimeoutException as exc:
            raise TransientBrokerError(
                f"Schwab {what} timed out after {C.BROKER_HTTP_TIMEOUT_S:g} s "
                f"({exc.__class__.__name__})", ambiguous=True) from None
        except httpx.RequestError as exc:
            raise TransientBrokerError(
                f"network error during Schwab {what} ({exc.__class__.__name__})",
                ambiguous=True) from None
        self._check(resp, what, order=order, lookup=lookup)
        return resp

    @staticmethod
    def _check(resp: httpx.Response, what: str, order: bool = False, lookup: bool = False) -> None:
        """raise_for_status, with our error classes and a secret-free message."""
        code = resp.status_code
        if code < 400:
            return
        detail = ""
        try:
            body = resp.json()
            if isinstance(body, dict):
                parts = [body.get("message"), body.get("error"), body.get("error_description")]
                errors = body.get("errors")
                if isinstance(errors, list):
                    parts += [e.get("detail") or e.get("title") or e.get("message")
                              if isinstance(e, dict) else e for e in errors]
                detail = "; ".join(str(p) for p in parts if p)
        except ValueError:
            detail = resp.text or ""
        msg = f"Schwab {what} failed: HTTP {code}" + (f": {_short_text(detail)}" if detail else "")
        if code == 401:
            raise AuthenticationError(
                f"{msg} (the access token was refused; if this persists run `{LOGIN_COMMAND}`)", code)
        if code == 403:
            raise AuthenticationError(
                f"{msg} (not permitted: check the app's Trader API access and the account on "
                f"developer.schwab.com)", code)
        if code in (408, 429):
            raise TransientBrokerError(f"{msg} (rate limited or timed out: retry later)", code)
        if code >= 500:
            raise TransientBrokerError(msg, code, ambiguous=True)
        if code == 404 and lookup:
            raise OrderNotFoundError(msg, code)
        if order and code in (400, 422):
            raise OrderRejectedError(msg, code)
        raise BrokerError(msg, code)

    def _throttle(self) -> None:
        """At most MAX_ORDERS_PER_MINUTE order requests a minute (Schwab's recommendation)."""
        now = time.monotonic()
        while self._order_times and now - self._order_times[0] >= 60.0:
            self._order_times.popleft()
        if len(self._order_times) >= C.MAX_ORDERS_PER_MINUTE:
            wait = 60.0 - (now - self._order_times[0])
            log.warning("Schwab order rate limit: waiting %.1f s", wait)
            time.sleep(max(wait, 0.0))
            self._order_times.popleft()
        self._order_times.append(time.monotonic())

    # ------------------------------------------------------------------ account
    @property
    def account_hash(self) -> str:
        if not self._account_hash:
            resp = self._call("account lookup", self._client.get_account_numbers)
            accounts = resp.json() or []
            if not accounts:
                raise BrokerError("no Schwab account is linked to this login")
            first = accounts[0]
            self._account_number = first.get("accountNumber")
            logging_setup.register_secret(self._account_number)
            self._account_hash = str(first["hashValue"])
            if len(accounts) > 1:
                log.warning("Several Schwab accounts are linked; using %s (set 'account_hash' in the "
                            "'schwab' credentials to choose)", _mask(self._account_number))
        return self._account_hash

    def masked_account(self) -> str:
        """The account for log lines, masked: ``****1234``."""
        account_hash = self.account_hash          # resolves the account number too
        return _mask(self._account_number or account_hash)

    def _securities_account(self, positions: bool = False) -> dict:
        fields = [self._client.Account.Fields.POSITIONS] if positions else None
        resp = self._call("account", self._client.get_account, self.account_hash, fields=fields)
        body = resp.json() or {}
        return body.get("securitiesAccount") or {}

    def get_account_balance(self) -> dict:
        account = self._securities_account()
        balances = account.get("currentBalances") or {}
        aggregated = account.get("aggregatedBalance") or {}
        equity = _first_num(balances, "liquidationValue", "equity")
        if equity is None:
            equity = _first_num(aggregated, "liquidationValue", "currentLiquidationValue")
        if equity is None:
            raise BrokerError("Schwab balance has no liquidationValue: unexpected account response")
        cash = _first_num(balances, "cashBalance", "cashAvailableForTrading", "totalCash")
        # MARGIN accounts report buyingPower; CASH accounts only cashAvailableForTrading.
        buying_power = _first_num(balances, "buyingPower", "cashAvailableForTrading", "availableFunds")
        return {"equity": equity, "cash": cash if cash is not None else 0.0,
                "buying_power": buying_power if buying_power is not None else 0.0,
                "account_type": account.get("type")}

    def get_positions(self) -> dict:
        out: dict[str, dict] = {}
        for raw in self._securities_account(positions=True).get("positions") or []:
            instrument = raw.get("instrument") or {}
            symbol = str(instrument.get("symbol") or "").upper()
            if not symbol or str(instrument.get("assetType", "EQUITY")).upper() == "OPTION":
                continue
            qty = int(round((_num(raw.get("longQuantity")) or 0.0) - (_num(raw.get("shortQuantity")) or 0.0)))
            if qty == 0:
                continue
            avg = (_first_num(raw, "averageShortPrice", "averagePrice") if qty < 0
                   else _first_num(raw, "averageLongPrice", "averagePrice")) or 0.0
            value = _num(raw.get("marketValue")) or 0.0
            if symbol in out:           # a symbol reported on two lines: merge
                prev = out[symbol]
                qty, value = prev["quantity"] + qty, prev["market_value"] + value
            # Schwab's API does not report recalls of borrowed shares: recalled stays False.
            out[symbol] = {"quantity": qty, "avg_price": avg, "market_value": value, "recalled": False}
        return out

    # ------------------------------------------------------------------ quotes
    def get_quotes(self, symbols) -> dict:
        """Borrow data comes from the quote's ``reference`` block: ``isShortable``,
        ``isHardToBorrow`` and ``htbRate`` (divided by ``SCHWAB_HTB_RATE_DIVISOR``). Dividends from
        ``fundamental.nextDivExDate`` / ``divExDate``. Symbols Schwab does not know are left out."""
        if isinstance(symbols, str):
            symbols = [symbols]
        wanted = list(dict.fromkeys(str(s).strip().upper() for s in symbols if str(s).strip()))
        fields = [self._client.Quote.Fields.QUOTE, self._client.Quote.Fields.FUNDAMENTAL,
                  self._client.Quote.Fields.REFERENCE]
        today = date.today()
        out: dict[str, dict] = {}
        for start in range(0, len(wanted), C.SCHWAB_QUOTE_BATCH):
            batch = wanted[start:start + C.SCHWAB_QUOTE_BATCH]
            body = self._call("quotes", self._client.get_quotes, batch, fields=fields).json() or {}
            for symbol in batch:
                entry = body.get(symbol)
                if not isinstance(entry, dict) or not isinstance(entry.get("quote"), dict):
                    log.warning("Schwab returned no quote for %s", symbol)
                    continue
                out[symbol] = self._parse_quote(entry, today)
        return out

    @staticmethod
    def _parse_quote(entry: dict, today: date) -> dict:
        quote = entry.get("quote") or {}
        fundamental = entry.get("fundamental") or {}
        reference = entry.get("reference") or {}
        last = _num(quote.get("lastPrice")) or _num(quote.get("mark")) or _num(quote.get("closePrice"))
        raw_rate = _num(reference.get("htbRate"))
        htb, shortable = reference.get("isHardToBorrow"), reference.get("isShortable")
        upcoming = sorted(d for d in (parse_date(fundamental.get("nextDivExDate")),
                                      parse_date(fundamental.get("divExDate")))
                          if d is not None and d >= today)
        return {
            "last": last,
            "bid": _num(quote.get("bidPrice")),
            "ask": _num(quote.get("askPrice")),
            "borrow_rate": raw_rate / C.SCHWAB_HTB_RATE_DIVISOR if raw_rate is not None else None,
            "hard_to_borrow": bool(htb) if htb is not None else None,
            "shortable": bool(shortable) if shortable is not None else None,
            "ex_dividend_date": upcoming[0] if upcoming else None,
        }

    # ------------------------------------------------------------------ orders
    def _order_spec(self, o: dict):
        eq = self._schwab.orders.equities
        builders = {
            ("BUY", "MARKET"): eq.equity_buy_market, ("BUY", "LIMIT"): eq.equity_buy_limit,
            ("SELL", "MARKET"): eq.equity_sell_market, ("SELL", "LIMIT"): eq.equity_sell_limit,
            ("SELL_SHORT", "MARKET"): eq.equity_sell_short_market,
            ("SELL_SHORT", "LIMIT"): eq.equity_sell_short_limit,
            ("BUY_TO_COVER", "MARKET"): eq.equity_buy_to_cover_market,
            ("BUY_TO_COVER", "LIMIT"): eq.equity_buy_to_cover_limit,
        }
        builder = builders[(o["side"], o["order_type"])]
        if o["order_type"] == "LIMIT":
            return builder(o["symbol"], o["quantity"], format_price(o["limit_price"]))
        return builder(o["symbol"], o["quantity"])

    def place_order(self, order: dict) -> str:
        """Place an order; returns Schwab's order id. The same ``client_key`` twice in one process
        returns the first id. After an ambiguous failure (read timeout, 5xx) the recent orders are
        searched for it: found -> its id; certainly absent -> ``TransientBrokerError`` (safe to
        retry); the search failing too -> ``OrderStatusUnknownError`` (do not retry blindly)."""
        o = validate_order(order)
        if o["client_key"] in self._placed:
            return self._placed[o["client_key"]]
        account_hash = self.account_hash
        spec = self._order_spec(o).build()
        what = f"order {o['side']} {o['quantity']} {o['symbol']} {o['order_type']}"
        self._throttle()
        started = datetime.now(_UTC)
        try:
            resp = self._call(what, self._client.place_order, account_hash, spec, order=True)
        except TransientBrokerError as exc:
            if not exc.ambiguous:
                raise
            found = self._find_placed(o, started, exc)
            if found is None:
                raise
            self._placed[o["client_key"]] = found
            return found
        try:
            order_id = self._schwab.utils.Utils(self._client, account_hash).extract_order_id(resp)
        except ValueError as exc:
            raise OrderStatusUnknownError(
                f"Schwab answered {what} with HTTP {resp.status_code} but the order id could not be "
                f"read ({exc.__class__.__name__}): check get_orders_since() before placing it again"
            ) from None
        if order_id is None:
            raise OrderStatusUnknownError(
                f"Schwab accepted {what} (HTTP {resp.status_code}) without an order id: check "
                f"get_orders_since() before placing it again")
        order_id = str(order_id)
        self._placed[o["client_key"]] = order_id
        log.info("Schwab order %s placed: %s (client_key %s)", order_id, what, o["client_key"])
        return order_id

    def _find_placed(self, o: dict, started: datetime, error: BrokerError) -> str | None:
        known = set(self._placed.values())
        try:
            recent = self.get_orders_since(started - timedelta(seconds=120))
        except BrokerError:
            raise OrderStatusUnknownError(
                f"{error} — and the order list could not be read, so it is unknown whether "
                f"Schwab has the order {o['side']} {o['quantity']} {o['symbol']}: check "
                f"`python trading_api.py orders` or the Schwab web site before placing it again"
            ) from None
        matches = [x for x in recent
                   if x["symbol"] == o["symbol"] and x["side"] == o["side"]
                   and x["quantity"] == o["quantity"] and x["order_id"] not in known
                   and (x["entered_time"] is None or x["entered_time"] >= started - timedelta(seconds=60))]
        if not matches:
            return None
        found = max(matches, key=lambda x: x["entered_time"] or started)["order_id"]
        log.warning("Schwab order request failed (%s) but the order reached Schwab as %s", error, found)
        return found

    def get_order(self, order_id) -> dict:
        resp = self._call(f"order {order_id} status", self._client.get_order, order_id,
                          self.account_hash, lookup=True)
        return parse_schwab_order(resp.json() or {})

    def cancel_order(self, order_id) -> None:
        self._throttle()
        self._call(f"cancel of order {order_id}", self._client.cancel_order, order_id,
                   self.account_hash, order=True, lookup=True)
        log.info("Schwab order %s cancel requested", order_id)

    def get_orders_since(self, dt) -> list[dict]:
        """Every order entered at or after ``dt`` (naive = local time), oldest first. Schwab keeps
        ``SCHWAB_ORDER_LOOKBACK_DAYS`` of history in this query; an older ``dt`` is clamped."""
        since = _to_utc(dt)
        now = datetime.now(_UTC)
        floor = now - timedelta(days=C.SCHWAB_ORDER_LOOKBACK_DAYS)
        if since < floor:
            since = floor
        resp = self._call("order history", self._client.get_orders_for_account, self.account_hash,
                          from_entered_datetime=since.replace(microsecond=0),
                          to_entered_datetime=now + timedelta(minutes=5))
        body = resp.json() or []
        orders = [parse_schwab_order(raw) for raw in body if isinstance(raw, dict)]
        orders = [x for x in orders if x["entered_time"] is None or x["entered_time"] >= since]
        orders.sort(key=lambda x: x["entered_time"] or since)
        return orders

    def get_open_orders(self) -> list[dict]:
        since = datetime.now(_UTC) - timedelta(days=C.SCHWAB_ORDER_LOOKBACK_DAYS)
        return [x for x in self.get_orders_since(since) if x["status"] in OPEN_STATUSES]


# =========================================================================== paper broker
_PAPER_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS paper_account (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        cash REAL NOT NULL,
        last_borrow_accrual TEXT,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS paper_positions (
        symbol TEXT PRIMARY KEY,
        quantity INTEGER NOT NULL,
        avg_price REAL NOT NULL,
        borrow_accrued_to TEXT,
        updated_at TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS paper_orders (
        seq INTEGER PRIMARY KEY,
        order_id TEXT NOT NULL UNIQUE,
        client_key TEXT NOT NULL UNIQUE,
        symbol TEXT NOT NULL,
        side TEXT NOT NULL,
        quantity INTEGER NOT NULL,
        order_type TEXT NOT NULL,
        limit_price REAL,
        status TEXT NOT NULL,
        filled_quantity INTEGER NOT NULL DEFAULT 0,
        avg_fill_price REAL,
        reject_reason TEXT,
        trade_date TEXT NOT NULL,
        entered_time TEXT NOT NULL,
        updated_at TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS paper_fills (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        order_id TEXT NOT NULL,
        symbol TEXT NOT NULL,
        side TEXT NOT NULL,
        quantity INTEGER NOT NULL,
        reference_price REAL NOT NULL,
        price REAL NOT NULL,
        commission REAL NOT NULL,
        trade_date TEXT NOT NULL,
        filled_at TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS paper_ledger (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        at TEXT NOT NULL,
        trade_date TEXT NOT NULL,
        kind TEXT NOT NULL,
        symbol TEXT,
        amount REAL NOT NULL,
        note TEXT)""",
    """CREATE TABLE IF NOT EXISTS paper_prices (
        symbol TEXT PRIMARY KEY,
        price REAL NOT NULL,
        as_of TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS paper_borrow_rates (
        symbol TEXT PRIMARY KEY,
        rate REAL NOT NULL,
        hard_to_borrow INTEGER)""",
    """CREATE TABLE IF NOT EXISTS paper_symbol_events (
        symbol TEXT PRIMARY KEY,
        recalled INTEGER NOT NULL DEFAULT 0,
        shortable INTEGER,
        ex_dividend_date TEXT)""",
]


class _Reject(Exception):
    """A paper-broker rule refused an order (inside a transaction; turned into a REJECTED order)."""


class PaperBroker:
    """A simulated account in the state database (tables ``paper_*``), same interface as SchwabAPI.

    Prices: ``set_prices({SYM: price}, as_of)`` sets the reference prices (the latest closes);
    market orders fill at once at ``slippage_price(reference)`` plus ``commission_for``; limit
    orders fill when marketable (buy: reference <= limit, sell: reference >= limit, at the slipped
    price capped by the limit), else stay WORKING until later prices make them marketable; a
    WORKING order expires when prices for a later day arrive (DAY orders).
    Shorts: SELL_SHORT credits the proceeds, BUY_TO_COVER closes; ``accrue_borrow_fees(as_of)``
    charges ``borrow_fee`` (ACT/360, calendar days) for each short. Buying power is
    ``cash - PAPER_SHORT_MARGIN_REQ * short market value``.
    Every write is one transaction; state survives a new instance with the same TRADING_HOME."""

    name = "paper"

    def __init__(self, conn=None, prices: dict | None = None, as_of=None):
        self.conn = conn if conn is not None else state_db.connect()
        state_db.ensure_schema(self.conn, _PAPER_SCHEMA)
        now = state_db.utcnow()
        with state_db.transaction(self.conn):
            self.conn.execute(
                "INSERT OR IGNORE INTO paper_account(id, cash, last_borrow_accrual, created_at, "
                "updated_at) VALUES (1, ?, NULL, ?, ?)", (float(C.INITIAL_PAPER_CASH), now, now))
        if prices:
            self.set_prices(prices, as_of)

    # ------------------------------------------------------------------ simulation inputs
    def set_prices(self, prices: dict, as_of=None) -> None:
        """Reference prices (latest closes) for ``as_of`` (default today). Expires DAY orders from
        earlier days, then fills WORKING limit orders that became marketable."""
        day = _as_date(as_of)
        clean = {}
        for symbol, price in (prices or {}).items():
            value = _num(price)
            if value is None or value <= 0:
                raise ValueError(f"invalid price for {symbol}: {price!r}")
            clean[str(symbol).strip().upper()] = value
        rejected = []
        with state_db.transaction(self.conn):
            self.conn.executemany(
                "INSERT INTO paper_prices(symbol, price, as_of) VALUES (?, ?, ?) ON CONFLICT(symbol) "
                "DO UPDATE SET price = excluded.price, as_of = excluded.as_of",
                [(s, p, day.isoformat()) for s, p in clean.items()])
            self.conn.execute(
                "UPDATE paper_orders SET status = 'EXPIRED', updated_at = ? WHERE status IN "
                "('NEW', 'WORKING') AND trade_date < ?", (state_db.utcnow(), day.isoformat()))
            working = self.conn.execute(
                "SELECT * FROM paper_orders WHERE status = 'WORKING' ORDER BY seq").fetchall()
            for row in working:
                o = dict(row)
                try:
                    self._try_fill(o, day)
                except _Reject as exc:
                    self._set_rejected(o["order_id"], str(exc))
                    rejected.append((o["order_id"], str(exc)))
        for order_id, reason in rejected:
            log.warning("Paper order %s rejected when it became marketable: %s", order_id, reason)

    def set_borrow_rate(self, symbol: str, rate: float, hard_to_borrow: bool | None = None) -> None:
        """Annual borrow rate (fraction) for a symbol; ``hard_to_borrow`` defaults to
        ``rate > MAX_BORROW_RATE``."""
        rate = float(rate)
        if not math.isfinite(rate) or rate < 0:
            raise ValueError(f"invalid borrow rate {rate!r}")
        htb = None if hard_to_borrow is None else int(bool(hard_to_borrow))
        with state_db.transaction(self.conn):
            self.conn.execute(
                "INSERT INTO paper_borrow_rates(symbol, rate, hard_to_borrow) VALUES (?, ?, ?) "
                "ON CONFLICT(symbol) DO UPDATE SET rate = excluded.rate, "
                "hard_to_borrow = excluded.hard_to_borrow", (symbol.upper(), rate, htb))

    def _set_event(self, symbol: str, column: str, value) -> None:
        with state_db.transaction(self.conn):
            self.conn.execute("INSERT OR IGNORE INTO paper_symbol_events(symbol) VALUES (?)",
                              (symbol.upper(),))
            self.conn.execute(f"UPDATE paper_symbol_events SET {column} = ? WHERE symbol = ?",
                              (value, symbol.upper()))

    def set_recall(self, symbol: str, recalled: bool = True) -> None:
        """Simulate the lender recalling borrowed shares (positions show ``recalled``; no new shorts)."""
        self._set_event(symbol, "recalled", int(bool(recalled)))

    def set_shortable(self, symbol: str, shortable: bool | None) -> None:
        self._set_event(symbol, "shortable", None if shortable is None else int(bool(shortable)))

    def set_ex_dividend(self, symbol: str, ex_date) -> None:
        """Simulate an upcoming ex-dividend date (``None`` clears it)."""
        self._set_event(symbol, "ex_dividend_date", None if ex_date is None else _as_date(ex_date).isoformat())

    # ------------------------------------------------------------------ reads
    def _cash(self) -> float:
        return float(self.conn.execute("SELECT cash FROM paper_account WHERE id = 1").fetchone()["cash"])

    def _prices(self) -> dict:
        return {r["symbol"]: r["price"] for r in self.conn.execute("SELECT symbol, price FROM paper_prices")}

    def _position_rows(self) -> list:
        return self.conn.execute("SELECT * FROM paper_positions ORDER BY symbol").fetchall()

    def _valuation(self) -> tuple[float, float, float]:
        """(cash, long market value, short market value as a positive number)."""
        prices = self._prices()
        long_mv = short_mv = 0.0
        for row in self._position_rows():
            value = row["quantity"] * prices.get(row["symbol"], row["avg_price"])
            if value >= 0:
                long_mv += value
            else:
                short_mv -= value
        return self._cash(), long_mv, short_mv

    def get_account_balance(self) -> dict:
        cash, long_mv, short_mv = self._valuation()
        return {"equity": round(cash + long_mv - short_mv, 6), "cash": round(cash, 6),
                "buying_power": round(max(cash - C.PAPER_SHORT_MARGIN_REQ * short_mv, 0.0), 6),
                "long_market_value": round(long_mv, 6), "short_market_value": round(short_mv, 6),
                "account_type": "PAPER"}

    def get_positions(self) -> dict:
        prices = self._prices()
        recalled = {r["symbol"] for r in self.conn.execute(
            "SELECT symbol FROM paper_symbol_events WHERE recalled = 1")}
        return {row["symbol"]: {
            "quantity": int(row["quantity"]), "avg_price": float(row["avg_price"]),
            "market_value": round(row["quantity"] * prices.get(row["symbol"], row["avg_price"]), 6),
            "recalled": row["symbol"] in recalled} for row in self._position_rows()}

    def _borrow(self, symbol: str) -> tuple[float, bool | None]:
        row = self.conn.execute("SELECT rate, hard_to_borrow FROM paper_borrow_rates WHERE symbol = ?",
                                (symbol,)).fetchone()
        if row is None:
            return C.DEFAULT_BORROW_RATE, None
        return float(row["rate"]), (None if row["hard_to_borrow"] is None else bool(row["hard_to_borrow"]))

    def _events(self, symbol: str) -> dict:
        row = self.conn.execute("SELECT * FROM paper_symbol_events WHERE symbol = ?", (symbol,)).fetchone()
        if row is None:
            return {"recalled": False, "shortable": None, "ex_dividend_date": None}
        return {"recalled": bool(row["recalled"]),
                "shortable": None if row["shortable"] is None else bool(row["shortable"]),
                "ex_dividend_date": parse_date(row["ex_dividend_date"])}

    def get_quotes(self, symbols) -> dict:
        """Quotes from the reference prices: bid/ask are the slipped sell/buy prices; borrow data
        from the paper borrow table (default ``DEFAULT_BORROW_RATE``)."""
        if isinstance(symbols, str):
            symbols = [symbols]
        prices = self._prices()
        out = {}
        for symbol in dict.fromkeys(str(s).strip().upper() for s in symbols):
            if symbol not in prices:
                continue
            price = prices[symbol]
            rate, htb = self._borrow(symbol)
            events = self._events(symbol)
            shortable = events["shortable"] if events["shortable"] is not None else not events["recalled"]
            out[symbol] = {"last": price, "bid": slippage_price(price, "SELL"),
                           "ask": slippage_price(price, "BUY"), "borrow_rate": rate,
                           "hard_to_borrow": htb if htb is not None else rate > C.MAX_BORROW_RATE,
                           "shortable": shortable, "ex_dividend_date": events["ex_dividend_date"]}
        return out

    # ------------------------------------------------------------------ orders
    @staticmethod
    def _order_dict(row) -> dict:
        row = dict(row)
        filled = int(row["filled_quantity"])
        return {"order_id": row["order_id"], "symbol": row["symbol"], "side": row["side"],
                "quantity": int(row["quantity"]), "order_type": row["order_type"],
                "limit_price": row["limit_price"], "status": row["status"],
                "filled_quantity": filled,
                "remaining_quantity": 0 if row["status"] in ("FILLED", "CANCELED", "REJECTED", "EXPIRED")
                else int(row["quantity"]) - filled,
                "avg_fill_price": row["avg_fill_price"], "entered_time": parse_time(row["entered_time"]),
                "client_key": row["client_key"], "reject_reason": row["reject_reason"]}

    def place_order(self, order: dict) -> str:
        """Fill (market, or marketable limit), leave WORKING, or reject (``OrderRejectedError``,
        recorded as a REJECTED order). The same ``client_key`` again returns the first order's id
        (or raises the first rejection again)."""
        o = validate_order(order)
        with state_db.transaction(self.conn):
            row = self.conn.execute("SELECT * FROM paper_orders WHERE client_key = ?",
                                    (o["client_key"],)).fetchone()
            if row is None:
                row = self._insert_order(o)
                try:
                    self._try_fill(dict(row), None)
                except _Reject as exc:
                    self._set_rejected(row["order_id"], str(exc))
                row = self.conn.execute("SELECT * FROM paper_orders WHERE order_id = ?",
                                        (row["order_id"],)).fetchone()
            elif (row["symbol"], row["side"], row["quantity"]) != (o["symbol"], o["side"], o["quantity"]):
                log.warning("Paper client_key %s reused for a different order; returning the first",
                            o["client_key"])
        if row["status"] == "REJECTED":
            raise OrderRejectedError(f"paper order {row['side']} {row['quantity']} {row['symbol']} "
                                     f"rejected: {row['reject_reason']}")
        log.info("Paper order %s %s: %s %d %s%s", row["order_id"], row["status"], row["side"],
                 row["quantity"], row["symbol"],
                 f" at {row['avg_fill_price']:.4f}" if row["avg_fill_price"] else "")
        return row["order_id"]

    def _insert_order(self, o: dict):
        seq = self.conn.execute("SELECT COALESCE(MAX(seq), 0) + 1 AS n FROM paper_orders").fetchone()["n"]
        order_id = f"PAPER-{seq:06d}"
        price_row = self.conn.execute("SELECT as_of FROM paper_prices WHERE symbol = ?",
                                      (o["symbol"],)).fetchone()
        trade_date = price_row["as_of"] if price_row else date.today().isoformat()
        now = datetime.now(_UTC).isoformat(timespec="microseconds")
        self.conn.execute(
            "INSERT INTO paper_orders(seq, order_id, client_key, symbol, side, quantity, order_type, "
            "limit_price, status, trade_date, entered_time, updated_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'NEW', ?, ?, ?)",
            (seq, order_id, o["client_key"], o["symbol"], o["side"], o["quantity"], o["order_type"],
             o["limit_price"], trade_date, now, now))
        return self.conn.execute("SELECT * FROM paper_orders WHERE order_id = ?", (order_id,)).fetchone()

    def _set_rejected(self, order_id: str, reason: str) -> None:
        self.conn.execute("UPDATE paper_orders SET status = 'REJECTED', reject_reason = ?, "
                          "updated_at = ? WHERE order_id = ?", (reason, state_db.utcnow(), order_id))

    def _try_fill(self, o: dict, day: date | None) -> None:
        """Inside a transaction: fill ``o`` if it can be, else mark it WORKING; ``_Reject`` if a
        rule forbids it."""
        price_row = self.conn.execute("SELECT price, as_of FROM paper_prices WHERE symbol = ?",
                                      (o["symbol"],)).fetchone()
        if price_row is None:
            raise _Reject(f"no reference price for {o['symbol']} (set_prices() has not given one)")
        reference = float(price_row["price"])
        day = day or date.fromisoformat(price_row["as_of"])
        fill = slippage_price(reference, o["side"])
        if o["order_type"] == "LIMIT":
            limit = float(o["limit_price"])
            buying = o["side"] in BUY_SIDES
            marketable = reference <= limit if buying else reference >= limit
            if not marketable:
                self._check_rules(o, limit, reference)
                self.conn.execute("UPDATE paper_orders SET status = 'WORKING', updated_at = ? "
                                  "WHERE order_id = ?", (state_db.utcnow(), o["order_id"]))
                return
            fill = min(fill, limit) if buying else max(fill, limit)
        self._apply_fill(o, reference, fill, day)

    def _check_rules(self, o: dict, price: float, reference: float) -> None:
        symbol, side, qty = o["symbol"], o["side"], int(o["quantity"])
        row = self.conn.execute("SELECT quantity FROM paper_positions WHERE symbol = ?", (symbol,)).fetchone()
        held = int(row["quantity"]) if row else 0
        commission = commission_for(qty)
        cash, _, short_mv = self._valuation()
        buying_power = cash - C.PAPER_SHORT_MARGIN_REQ * short_mv
        if side == "BUY":
            if held < 0:
                raise _Reject(f"{symbol} is held short ({held}): use BUY_TO_COVER")
            cost = qty * price + commission
            if cost > buying_power + 1e-9:
                raise _Reject(f"insufficient cash: the buy needs ${cost:,.2f}, buying power is "
                              f"${max(buying_power, 0):,.2f}")
        elif side == "SELL":
            if held <= 0 or qty > held:
                raise _Reject(f"selling {qty} {symbol} but {max(held, 0)} are held (use SELL_SHORT to short)")
        elif side == "SELL_SHORT":
            if held > 0:
                raise _Reject(f"{symbol} is held long ({held}): SELL it before shorting")
            events = self._events(symbol)
            if events["recalled"]:
                raise _Reject(f"{symbol} shares were recalled by the lender: cannot short")
            if events["shortable"] is False:
                raise _Reject(f"{symbol} is not shortable")
            after = buying_power + qty * price - commission - C.PAPER_SHORT_MARGIN_REQ * qty * reference
            if after < -1e-9:
                raise _Reject(f"insufficient margin to short {qty} {symbol}: buying power "
                              f"${max(buying_power, 0):,.2f}")
        elif side == "BUY_TO_COVER":
            if held >= 0 or qty > -held:
                raise _Reject(f"covering {qty} {symbol} but the short position is {max(-held, 0)}")

    def _apply_fill(self, o: dict, reference: float, fill: float, day: date) -> None:
        self._check_rules(o, fill, reference)
        symbol, side, qty = o["symbol"], o["side"], int(o["quantity"])
        now = state_db.utcnow()
        if side == "BUY_TO_COVER":
            self._accrue_position(symbol, day)       # borrow owed up to the cover
        row = self.conn.execute("SELECT * FROM paper_positions WHERE symbol = ?", (symbol,)).fetchone()
        held = int(row["quantity"]) if row else 0
        avg = float(row["avg_price"]) if row else 0.0
        accrued_to = row["borrow_accrued_to"] if row else None
        commission = commission_for(qty)
        notional = qty * fill
        if side in BUY_SIDES:
            cash_delta = -notional - commission
            new_qty = held + qty
        else:
            cash_delta = notional - commission
            new_qty = held - qty
        if side in ("BUY", "SELL_SHORT"):               # opening or extending: new average price
            new_avg = (abs(held) * avg + qty * fill) / abs(new_qty)
        else:
            new_avg = avg
        if side == "SELL_SHORT" and accrued_to is None:
            accrued_to = day.isoformat()
        if new_qty == 0:
            self.conn.execute("DELETE FROM paper_positions WHERE symbol = ?", (symbol,))
        else:
            self.conn.execute(
                "INSERT INTO paper_positions(symbol, quantity, avg_price, borrow_accrued_to, updated_at) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT(symbol) DO UPDATE SET quantity = excluded.quantity, "
                "avg_price = excluded.avg_price, borrow_accrued_to = excluded.borrow_accrued_to, "
                "updated_at = excluded.updated_at",
                (symbol, new_qty, round(new_avg, 6), accrued_to if new_qty < 0 else None, now))
        self.conn.execute("UPDATE paper_account SET cash = cash + ?, updated_at = ? WHERE id = 1",
                          (cash_delta, now))
        self.conn.execute(
            "UPDATE paper_orders SET status = 'FILLED', filled_quantity = ?, avg_fill_price = ?, "
            "updated_at = ? WHERE order_id = ?", (qty, fill, now, o["order_id"]))
        self.conn.execute(
            "INSERT INTO paper_fills(order_id, symbol, side, quantity, reference_price, price, "
            "commission, trade_date, filled_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (o["order_id"], symbol, side, qty, reference, fill, commission, day.isoformat(), now))
        self.conn.execute(
            "INSERT INTO paper_ledger(at, trade_date, kind, symbol, amount, note) VALUES (?, ?, ?, ?, ?, ?)",
            (now, day.isoformat(), "trade", symbol, cash_delta,
             f"{side} {qty} @ {fill:.4f} (reference {reference:.4f}, commission {commission:.2f})"))

    def get_order(self, order_id) -> dict:
        row = self.conn.execute("SELECT * FROM paper_orders WHERE order_id = ?", (str(order_id),)).fetchone()
        if row is None:
            raise OrderNotFoundError(f"no paper order {order_id}")
        return self._order_dict(row)

    def cancel_order(self, order_id) -> None:
        with state_db.transaction(self.conn):
            row = self.conn.execute("SELECT status FROM paper_orders WHERE order_id = ?",
                                    (str(order_id),)).fetchone()
            if row is None:
                raise OrderNotFoundError(f"no paper order {order_id}")
            if row["status"] == "CANCELED":
                return
            if row["status"] not in OPEN_STATUSES:
                raise OrderRejectedError(f"paper order {order_id} is {row['status']}: cannot cancel")
            self.conn.execute("UPDATE paper_orders SET status = 'CANCELED', updated_at = ? "
                              "WHERE order_id = ?", (state_db.utcnow(), str(order_id)))
        log.info("Paper order %s canceled", order_id)

    def get_open_orders(self) -> list[dict]:
        return [self._order_dict(r) for r in self.conn.execute(
            "SELECT * FROM paper_orders WHERE status IN ('NEW', 'WORKING', 'PARTIALLY_FILLED') ORDER BY seq")]

    def get_orders_since(self, dt) -> list[dict]:
        since = _to_utc(dt)
        orders = [self._order_dict(r) for r in self.conn.execute("SELECT * FROM paper_orders ORDER BY seq")]
        return [o for o in orders if o["entered_time"] >= since]

    # ------------------------------------------------------------------ borrow fees
    def _accrue_position(self, symbol: str, day: date) -> float:
        """Inside a transaction: charge the borrow fee of one short from its last accrual to ``day``."""
        row = self.conn.execute("SELECT * FROM paper_positions WHERE symbol = ?", (symbol,)).fetchone()
        if row is None or row["quantity"] >= 0:
            return 0.0
        start = date.fromisoformat(row["borrow_accrued_to"]) if row["borrow_accrued_to"] else day
        days = (day - start).days
        if days <= 0:
            return 0.0
        price_row = self.conn.execute("SELECT price FROM paper_prices WHERE symbol = ?", (symbol,)).fetchone()
        price = float(price_row["price"]) if price_row else float(row["avg_price"])
        rate, _ = self._borrow(symbol)
        fee = round(borrow_fee(row["quantity"], price, rate, days), 6)
        now = state_db.utcnow()
        self.conn.execute("UPDATE paper_account SET cash = cash - ?, last_borrow_accrual = ?, "
                          "updated_at = ? WHERE id = 1", (fee, day.isoformat(), now))
        self.conn.execute("UPDATE paper_positions SET borrow_accrued_to = ?, updated_at = ? "
                          "WHERE symbol = ?", (day.isoformat(), now, symbol))
        self.conn.execute(
            "INSERT INTO paper_ledger(at, trade_date, kind, symbol, amount, note) VALUES (?, ?, ?, ?, ?, ?)",
            (now, day.isoformat(), "borrow_fee", symbol, -fee,
             f"{-row['quantity']} sh x {price:.4f} x {rate:.4%}/yr x {days} d / {C.BORROW_DAY_COUNT}"))
        log.info("Paper borrow fee %s: %d sh x $%.2f at borrow rate %.2f%%/yr for %d days = $%.2f",
                 symbol, -row["quantity"], price, rate * 100, days, fee)
        return fee

    def accrue_borrow_fees(self, as_of=None) -> dict:
        """Charge every short its borrow fee for the calendar days since its last accrual (or since
        it was opened) up to ``as_of`` (default today). Returns {symbol: fee charged}. Calling it
        twice for the same day charges nothing the second time."""
        day = _as_date(as_of)
        fees = {}
        with state_db.transaction(self.conn):
            shorts = [r["symbol"] for r in self.conn.execute(
                "SELECT symbol FROM paper_positions WHERE quantity < 0 ORDER BY symbol")]
            for symbol in shorts:
                fee = self._accrue_position(symbol, day)
                if fee:
                    fees[symbol] = fee
            self.conn.execute("UPDATE paper_account SET last_borrow_accrual = ? WHERE id = 1",
                              (day.isoformat(),))
        return fees

    def last_borrow_accrual(self) -> date | None:
        row = self.conn.execute("SELECT last_borrow_accrual FROM paper_account WHERE id = 1").fetchone()
        return parse_date(row["last_borrow_accrual"]) if row else None


# =========================================================================== factory
def get_broker(mode: str | None = None):
    """``PaperBroker`` when TRADING_MODE is paper (the default), ``SchwabAPI`` when it is live."""
    mode = (mode or config.trading_mode()).lower()
    if mode != "live":
        return PaperBroker()
    api = SchwabAPI()
    account = api.masked_account()
    log.warning("LIVE TRADING: orders go to Schwab account %s (TRADING_MODE=live)", account)
    try:
        from audit_logging import AuditLogger
        AuditLogger().log_event("live_trading_enabled", "WARNING", {"broker": "schwab", "account": account})
    except Exception as exc:      # the audit trail is optional here; never block on it
        log.debug("audit of live mode skipped: %s", exc.__class__.__name__)
    return api


# =========================================================================== command line
def _print_json(obj) -> None:
    print(json.dumps(obj, indent=2, sort_keys=True, default=str))


def _cmd_login() -> int:
    cm = _credential_manager()
    creds = _load_service(cm, SCHWAB_SERVICE)
    if not creds or not creds.get("app_key") or not creds.get("app_secret"):
        print(f"Schwab credentials are not configured. Store them first:\n  {SET_CREDENTIALS_COMMAND}",
              file=sys.stderr)
        return 1
    callback = creds.get("callback_url") or C.SCHWAB_CALLBACK_URL
    logging_setup.register_secret(creds["app_key"])
    logging_setup.register_secret(creds["app_secret"])
    schwab, _ = _import_schwab()

    def write(token, *args, **kwargs):
        _register_token_secrets(token)
        cm.store_credentials(SCHWAB_TOKEN_SERVICE, token)

    print(f"Schwab login with callback URL {callback} (must match the app on developer.schwab.com).")
    schwab.auth.client_from_manual_flow(str(creds["app_key"]), str(creds["app_secret"]), callback,
                                        "(encrypted credential store)", token_write_func=write)
    expires = datetime.now() + timedelta(days=C.TOKEN_MAX_AGE_DAYS)
    print(f"Login saved in the credential store. It lasts {C.TOKEN_MAX_AGE_DAYS:g} days: log in again "
          f"before {expires:%Y-%m-%d %H:%M}.")
    api = SchwabAPI(cm)
    print(f"Account: {api.masked_account()}  balance: {api.get_account_balance()}")
    return 0


def _cmd_token_age() -> int:
    token = _load_service(_credential_manager(), SCHWAB_TOKEN_SERVICE)
    if not token or "creation_timestamp" not in token:
        print(f"No Schwab login token stored: run `{LOGIN_COMMAND}`")
        return 2
    created = float(token["creation_timestamp"])
    age = (time.time() - created) / 86_400.0
    expires = datetime.fromtimestamp(created + C.TOKEN_MAX_AGE_DAYS * 86_400.0)
    print(f"Schwab login token age: {age:.2f} days (expires {expires:%Y-%m-%d %H:%M})")
    if age >= C.TOKEN_MAX_AGE_DAYS:
        print(f"EXPIRED: run `{LOGIN_COMMAND}`")
        return 2
    if age >= C.TOKEN_WARN_AGE_DAYS:
        print(f"Renew soon: run `{LOGIN_COMMAND}`")
        return 1
    return 0


def main(argv=None) -> int:
    install_excepthook()
    parser = argparse.ArgumentParser(prog="trading_api.py", description="Broker diagnosis and Schwab login.")
    parser.add_argument("command", choices=["login", "token-age", "balance", "positions", "quotes", "orders"])
    parser.add_argument("symbols", nargs="*", help="symbols for `quotes`")
    parser.add_argument("--paper", action="store_true", help="ask the paper broker instead of Schwab")
    args = parser.parse_args(argv)
    logging_setup.setup_logging("trading")
    try:
        if args.command == "login":
            return _cmd_login()
        if args.command == "token-age":
            return _cmd_token_age()
        broker = PaperBroker() if args.paper else SchwabAPI()
        if args.command == "balance":
            _print_json(broker.get_account_balance())
        elif args.command == "positions":
            _print_json(broker.get_positions())
        elif args.command == "orders":
            _print_json(broker.get_open_orders())
        else:
            if not args.symbols:
                parser.error("quotes needs at least one symbol")
            _print_json(broker.get_quotes(args.symbols))
        return 0
    except BrokerError as exc:
        print(f"ERROR ({exc.__class__.__name__}): {exc}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, EOFError):
        print("aborted", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
