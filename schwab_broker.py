"""A real Charles Schwab account through schwab-py: ``SchwabAPI``, the Schwab login token's age
rule, and the translation of Schwab's orders and statuses into the broker interface of
``broker_base``.

The token rule lives here once: ``token_age_of(token)`` says how old the stored login is and
whether it is fresh, due for renewal (from ``TOKEN_WARN_AGE_DAYS``) or expired (from
``TOKEN_MAX_AGE_DAYS``: the refresh token dies at 7 days and refreshing does not renew it).
``SchwabAPI`` refuses an expired login (``check_token_age``), ``python trading_api.py token-age``
prints it and the health check reports it.
"""
from __future__ import annotations

import logging
import time
import warnings
from collections import deque
from datetime import date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, NamedTuple

import alerts
import clock
import clock_sanity
import constants as C
import logging_setup
import order_prices
import settlement
from broker_base import (BUY, BUY_TO_COVER, DAY, LIMIT, MARKET, OPEN_STATUSES, SELL, SELL_SHORT, STOP, UTC,
                         AuthenticationError, BrokerError, OrderNotFoundError,
                         OrderRejectedError, OrderStatusUnknownError, TokenExpiredError,
                         TransientBrokerError, num, parse_date, parse_time, to_utc, validate_order)
from credential_manager import CredentialManager

if TYPE_CHECKING:
    import httpx

log = logging.getLogger("broker")

LOGIN_COMMAND = "python trading_api.py login"
SET_CREDENTIALS_COMMAND = (
    "`python credential_manager.py set schwab` (or python -c \"from credential_manager import "
    "CredentialManager; CredentialManager().store_credentials('schwab', {'app_key': 'YOUR_KEY', "
    "'app_secret': 'YOUR_SECRET'})\")")
SCHWAB_SERVICE = "schwab"
SCHWAB_TOKEN_SERVICE = "schwab_token"


# =========================================================================== small helpers
def _first_num(mapping: dict, *keys) -> float | None:
    for key in keys:
        value = num(mapping.get(key))
        if value is not None:
            return value
    return None


def _mask(identifier) -> str:
    text = str(identifier or "")
    return "****" + text[-4:] if text else "(unknown)"


def _short_text(text: str, limit: int = 300) -> str:
    text = logging_setup.redact(" ".join(str(text).split()))
    return text if len(text) <= limit else text[:limit] + "..."


def _server_time(resp) -> datetime | None:
    """The broker's own clock at an answer: its HTTP ``Date`` header (1 s resolution), or None."""
    try:
        return parsedate_to_datetime(resp.headers.get("Date") or "").astimezone(UTC)
    except (TypeError, ValueError, AttributeError):
        return None


def format_price(price: float) -> str:
    """A limit price as Schwab wants it: a string, 2 decimals from $1, 4 decimals below."""
    value = Decimal(str(price))
    places = Decimal("0.01") if value >= 1 else Decimal("0.0001")
    return str(value.quantize(places, rounding=ROUND_HALF_UP))


def import_schwab():
    """``(schwab, OAuthError, httpx)``: schwab-py, authlib's login error and httpx (schwab-py's
    HTTP client), imported quietly (authlib warns about its httpx fallback on import)."""
    # Late: schwab-py, authlib and httpx take about a second to import; only a live account and the
    # login need them, not the paper broker, the executor or the health check.
    with warnings.catch_warnings():
        import authlib.deprecate  # noqa: F401  (it installs an "always" filter on import)
        warnings.simplefilter("ignore")
        import httpx
        import schwab  # noqa: F401
        import schwab.auth
        import schwab.orders.common
        import schwab.orders.equities
        import schwab.orders.generic
        import schwab.utils
        from authlib.integrations.base_client.errors import OAuthError
    return schwab, OAuthError, httpx


def load_service(cm, service: str):
    """One entry of the credential store, or ``AuthenticationError`` naming the fix."""
    try:
        return cm.load_credentials(service)
    except Exception as exc:        # decryption failure, unreadable file, ...
        raise AuthenticationError(
            f"cannot read the '{service}' entry of the credential store ({exc.__class__.__name__}: "
            f"{_short_text(exc, 160)}); if the encryption key changed, store the credentials again "
            f"with {SET_CREDENTIALS_COMMAND} and run `{LOGIN_COMMAND}`") from None


def register_token_secrets(token) -> None:
    """Keep the token's secrets out of every log line."""
    if not isinstance(token, dict):
        return
    inner = token.get("token", token)
    if isinstance(inner, dict):
        for key in ("access_token", "refresh_token", "id_token"):
            logging_setup.register_secret(inner.get(key))


# =========================================================================== the login token's age
TOKEN_MISSING, TOKEN_FRESH, TOKEN_RENEW, TOKEN_EXPIRED = "missing", "fresh", "renew", "expired"


class TokenAge(NamedTuple):
    """How old the stored Schwab login is. ``state``: ``missing`` (no token or no creation
    time), ``fresh``, ``renew`` (from TOKEN_WARN_AGE_DAYS) or ``expired`` (from
    TOKEN_MAX_AGE_DAYS). ``expires`` is the local time the login dies."""
    state: str
    age_days: float | None = None
    expires: datetime | None = None


def token_age_of(token, now: float | None = None) -> TokenAge:
    """The age of a stored login token ``{'creation_timestamp': epoch, 'token': {...}}``; a bare
    creation timestamp is accepted too. ``AuthenticationError`` when the creation time is not a
    number."""
    if isinstance(token, dict):
        if "creation_timestamp" not in token:
            return TokenAge(TOKEN_MISSING)
        token = token["creation_timestamp"]
    if token is None:
        return TokenAge(TOKEN_MISSING)
    try:
        created = float(token)
    except (TypeError, ValueError):
        raise AuthenticationError(
            f"the stored Schwab token has no valid creation time: run `{LOGIN_COMMAND}`") from None
    age_days = ((time.time() if now is None else now) - created) / 86_400.0
    expires = datetime.fromtimestamp(created + C.TOKEN_MAX_AGE_DAYS * 86_400.0)
    state = (TOKEN_EXPIRED if age_days >= C.TOKEN_MAX_AGE_DAYS
             else TOKEN_RENEW if age_days >= C.TOKEN_WARN_AGE_DAYS else TOKEN_FRESH)
    return TokenAge(state, age_days, expires)


def alert_if_expiring(age: TokenAge) -> bool:
    """Send the ``token_expiring`` alert when the login dies within ``ALERT_TOKEN_EXPIRY_HOURS``
    (or has died); once per login (the quiet period's key is its expiry time). True when due."""
    if age.state == TOKEN_MISSING:
        return False
    hours_left = (C.TOKEN_MAX_AGE_DAYS - age.age_days) * 24.0
    if hours_left > C.ALERT_TOKEN_EXPIRY_HOURS:
        return False
    alerts.send_alert("token_expiring", (
        f"the Schwab login token is {age.age_days:.1f} days old and "
        + (f"expired at {age.expires:%Y-%m-%d %H:%M}" if hours_left <= 0 else
           f"expires at {age.expires:%Y-%m-%d %H:%M} (in {hours_left:.0f} h)")
        + f": run `{LOGIN_COMMAND}`"), key=f"{age.expires:%Y-%m-%dT%H:%M}")
    return True


def check_token_age(creation_timestamp, now: float | None = None) -> float:
    """Age of a Schwab login token in days. Warns from ``TOKEN_WARN_AGE_DAYS``; raises
    ``TokenExpiredError`` from ``TOKEN_MAX_AGE_DAYS``; alerts within a day of the end."""
    age = token_age_of(creation_timestamp, now)
    if age.state == TOKEN_MISSING or age.expires is None:
        raise AuthenticationError(
            f"no Schwab login token is stored: log in once (interactive) with `{LOGIN_COMMAND}`")
    alert_if_expiring(age)
    expires = age.expires.strftime("%Y-%m-%d %H:%M")
    if age.state == TOKEN_EXPIRED:
        raise TokenExpiredError(
            f"the Schwab login token is {age.age_days:.1f} days old and expired at {expires} "
            f"(Schwab logins last {C.TOKEN_MAX_AGE_DAYS:g} days): run `{LOGIN_COMMAND}`")
    if age.state == TOKEN_RENEW:
        log.warning("Schwab login token is %.1f days old and expires at %s: run `%s` before then",
                    age.age_days, expires, LOGIN_COMMAND)
    return age.age_days


# =========================================================================== Schwab's orders
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
    filled = int(round(num(raw.get("filledQuantity")) or 0))
    remaining = num(raw.get("remainingQuantity"))
    remaining = int(round(remaining)) if remaining is not None else max(quantity - filled, 0)
    total_qty = total_value = 0.0
    for activity in raw.get("orderActivityCollection") or []:
        if str(activity.get("activityType", "EXECUTION")).upper() != "EXECUTION":
            continue
        for execution in activity.get("executionLegs") or []:
            q, p = num(execution.get("quantity")), num(execution.get("price"))
            if q and p:
                total_qty += q
                total_value += q * p
    return {
        "order_id": str(raw.get("orderId", "")),
        "symbol": str(instrument.get("symbol", "")).upper(),
        "side": str(leg.get("instruction", "")).upper(),
        "quantity": quantity,
        "order_type": str(raw.get("orderType", "")).upper(),
        "limit_price": num(raw.get("price")),
        "stop_price": num(raw.get("stopPrice")),
        "duration": raw.get("duration"),
        "status": map_schwab_status(raw.get("status"), filled, remaining),
        "broker_status": raw.get("status"),
        "filled_quantity": filled,
        "remaining_quantity": remaining,
        "avg_fill_price": round(total_value / total_qty, 6) if total_qty else None,
        "entered_time": parse_time(raw.get("enteredTime")),
        "client_key": None,
        "reject_reason": raw.get("statusDescription"),
    }


def parse_schwab_transaction(raw: dict) -> dict:
    """Our transaction dict (``broker_base``: id, type, time, order_id, symbol, quantity, cash,
    fee, description) from a Schwab transaction: ``activityId``, ``type`` (TRADE,
    DIVIDEND_OR_INTEREST, RECEIVE_AND_DELIVER, JOURNAL, ...), ``time``, ``orderId``, ``netAmount``,
    ``description`` and ``transferItems`` (each ``instrument`` {symbol, assetType}, ``amount``:
    shares for a security, signed; ``cost``; ``feeType`` on a fee item)."""
    quantity: dict[str, float] = {}
    symbols: list[str] = []
    fees = other_cash = 0
    for item in raw.get("transferItems") or []:
        instrument = item.get("instrument") or {}
        asset = str(instrument.get("assetType") or "").upper()
        symbol = str(instrument.get("symbol") or "").upper()
        if asset == "CURRENCY" or symbol.startswith("CURRENCY_"):
            if item.get("feeType"):
                fees += 1
            elif num(item.get("amount")) or num(item.get("cost")):
                other_cash += 1
            continue
        if asset == "OPTION" or not symbol:
            continue
        symbols.append(symbol)
        shares = num(item.get("amount")) or 0.0
        if shares:
            quantity[symbol] = quantity.get(symbol, 0.0) + shares
    description = str(raw.get("description") or "")
    if not symbols and "~" in description:          # "ORDINARY DIVIDEND~AAPL"
        symbols.append(description.rsplit("~", 1)[1].strip().upper())
    order_id = raw.get("orderId")
    return {"id": str(raw.get("activityId") if raw.get("activityId") is not None else raw.get("id", "")),
            "type": str(raw.get("type") or "").upper(),
            "time": parse_time(raw.get("time") or raw.get("tradeDate")),
            "order_id": str(order_id) if order_id not in (None, "", 0) else None,
            "symbol": symbols[0] if symbols else None,
            "quantity": {s: round(q, 6) for s, q in quantity.items()},
            "cash": num(raw.get("netAmount")) or 0.0,
            "fee": bool(fees) and not other_cash and not quantity,
            "description": description}


# =========================================================================== Schwab
class SchwabAPI:
    """A real Schwab account through schwab-py. Construction reads the app key/secret
    (service ``schwab``) and the login token (service ``schwab_token``) from the credential
    manager, checks the token's age and never opens a browser. The account is
    ``account_hash`` from the credentials, else the first linked account."""

    name = "schwab"          # a label for log lines; code that must tell brokers apart reads ``simulated``
    simulated = False        # real orders, real money
    fills_at_next_open = False   # Schwab fills a market order in the session (broker_base.Broker)

    def __init__(self, credential_manager=None):
        self._cm = credential_manager if credential_manager is not None else CredentialManager()
        creds = load_service(self._cm, SCHWAB_SERVICE)
        if not creds or not creds.get("app_key") or not creds.get("app_secret"):
            raise AuthenticationError(
                f"Schwab credentials are not configured: store the app key and secret with "
                f"{SET_CREDENTIALS_COMMAND} then log in once with `{LOGIN_COMMAND}`")
        app_key, app_secret = str(creds["app_key"]), str(creds["app_secret"])
        logging_setup.register_secret(app_key)
        logging_setup.register_secret(app_secret)
        token = load_service(self._cm, SCHWAB_TOKEN_SERVICE)
        if not token:
            raise AuthenticationError(
                f"no Schwab login token is stored: log in once (interactive) with `{LOGIN_COMMAND}`")
        if not isinstance(token, dict) or "creation_timestamp" not in token or "token" not in token:
            raise AuthenticationError(
                f"the stored Schwab login token has an unknown format: run `{LOGIN_COMMAND}`")
        register_token_secrets(token)
        self.token_age_days = check_token_age(token["creation_timestamp"])
        self.token_created = float(token["creation_timestamp"])
        schwab, self._oauth_error, self._httpx = import_schwab()
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
        self.server_time: datetime | None = None   # Schwab's clock at its latest answer (HTTP Date)

    # ------------------------------------------------------------------ token
    def _write_token(self, wrapped, *args, **kwargs) -> None:
        """schwab-py calls this with ``{creation_timestamp, token}`` after every refresh."""
        register_token_secrets(wrapped)
        try:
            self._cm.store_credentials(SCHWAB_TOKEN_SERVICE, wrapped)
        except Exception as exc:
            # The refresh token is unchanged by a refresh, so the stored token stays usable.
            log.error("Could not save the refreshed Schwab token (%s); the stored login still works "
                      "until it is %g days old", exc.__class__.__name__, C.TOKEN_MAX_AGE_DAYS)

    def token_age(self) -> float:
        """Age of the login token in days."""
        return token_age_of(self.token_created).age_days

    # ------------------------------------------------------------------ prices
    def set_prices(self, prices: dict, as_of=None, opens: dict | None = None, bars: dict | None = None) -> None:
        """Nothing to do: Schwab prices orders itself. Here so that the live cycle can hand the
        day's reference prices to any broker without asking which one it has."""

    def apply_corporate_actions(self, actions, through=None) -> list[dict]:
        """Nothing to do: Schwab applies splits and pays dividends to the account itself."""
        return []

    # ------------------------------------------------------------------ HTTP plumbing
    def _call(self, what: str, fn, *args, order: bool = False, lookup: bool = False, **kwargs):
        httpx = self._httpx
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
        self.server_time = _server_time(resp) or self.server_time
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
        out = {"equity": equity, "cash": cash if cash is not None else 0.0,
               "buying_power": buying_power if buying_power is not None else 0.0,
               "account_type": account.get("type")}
        if settlement.account_type_of(out) == settlement.CASH:     # which fields mean settled: settlement.py
            out["settled_cash"], out["unsettled_cash"] = settlement.schwab_settled_cash(balances)
        return out

    def get_positions(self) -> dict:
        out: dict[str, dict] = {}
        for raw in self._securities_account(positions=True).get("positions") or []:
            instrument = raw.get("instrument") or {}
            symbol = str(instrument.get("symbol") or "").upper()
            if not symbol or str(instrument.get("assetType", "EQUITY")).upper() == "OPTION":
                continue
            qty = int(round((num(raw.get("longQuantity")) or 0.0) - (num(raw.get("shortQuantity")) or 0.0)))
            if qty == 0:
                continue
            avg = (_first_num(raw, "averageShortPrice", "averagePrice") if qty < 0
                   else _first_num(raw, "averageLongPrice", "averagePrice")) or 0.0
            value = num(raw.get("marketValue")) or 0.0
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
        today = clock.today()
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
        last = num(quote.get("lastPrice")) or num(quote.get("mark")) or num(quote.get("closePrice"))
        raw_rate = num(reference.get("htbRate"))
        htb, shortable = reference.get("isHardToBorrow"), reference.get("isShortable")
        upcoming = sorted(d for d in (parse_date(fundamental.get("nextDivExDate")),
                                      parse_date(fundamental.get("divExDate")))
                          if d is not None and d >= today)
        return {
            "last": last,
            "bid": num(quote.get("bidPrice")),
            "ask": num(quote.get("askPrice")),
            "borrow_rate": raw_rate / C.SCHWAB_HTB_RATE_DIVISOR if raw_rate is not None else None,
            "hard_to_borrow": bool(htb) if htb is not None else None,
            "shortable": bool(shortable) if shortable is not None else None,
            "ex_dividend_date": upcoming[0] if upcoming else None,
        }

    # ------------------------------------------------------------------ orders
    def _order_spec(self, o: dict):
        """schwab-py's order builder for ``o``: its equities templates for MARKET and LIMIT (session
        NORMAL, duration DAY, or GOOD_TILL_CANCEL when asked); a protective STOP through the
        generic ``OrderBuilder`` (stop price on the tick, ``order_prices.price_text``)."""
        eq = self._schwab.orders.equities
        common = self._schwab.orders.common
        if o["order_type"] == STOP:
            builder = (self._schwab.orders.generic.OrderBuilder()
                       .set_order_type(common.OrderType.STOP)
                       .set_stop_price(order_prices.price_text(o["stop_price"]))
                       .set_session(common.Session.NORMAL)
                       .set_duration(common.Duration(o["duration"]))
                       .set_order_strategy_type(common.OrderStrategyType.SINGLE)
                       .add_equity_leg(common.EquityInstruction[o["side"]], o["symbol"], o["quantity"]))
            return builder
        builders = {
            (BUY, MARKET): eq.equity_buy_market, (BUY, LIMIT): eq.equity_buy_limit,
            (SELL, MARKET): eq.equity_sell_market, (SELL, LIMIT): eq.equity_sell_limit,
            (SELL_SHORT, MARKET): eq.equity_sell_short_market,
            (SELL_SHORT, LIMIT): eq.equity_sell_short_limit,
            (BUY_TO_COVER, MARKET): eq.equity_buy_to_cover_market,
            (BUY_TO_COVER, LIMIT): eq.equity_buy_to_cover_limit,
        }
        builder = builders[(o["side"], o["order_type"])]
        if o["order_type"] == "LIMIT":
            builder = builder(o["symbol"], o["quantity"], format_price(o["limit_price"]))
        else:
            builder = builder(o["symbol"], o["quantity"])
        if o["duration"] != DAY:
            builder.set_duration(common.Duration(o["duration"]))
        return builder

    def place_order(self, order: dict) -> str:
        """Place an order; returns Schwab's order id. The same ``client_key`` twice in one process
        returns the first id. Schwab takes no client order id, so after an ambiguous failure (read
        timeout, 5xx: the order may or may not be at Schwab) this does NOT guess from the order
        list: it raises ``TransientBrokerError(ambiguous=True)`` and the caller decides from the
        snapshot it took before sending (``order_recovery``'s rule)."""
        o = validate_order(order)
        if o["client_key"] in self._placed:
            return self._placed[o["client_key"]]
        account_hash = self.account_hash
        spec = self._order_spec(o).build()
        what = f"order {o['side']} {o['quantity']} {o['symbol']} {o['order_type']}"
        self._throttle()
        resp = self._call(what, self._client.place_order, account_hash, spec, order=True)
        try:
            order_id = self._schwab.utils.Utils(self._client, account_hash).extract_order_id(resp)
        except ValueError as exc:
            raise OrderStatusUnknownError(
                f"Schwab answered {what} with HTTP {resp.status_code} but the order id could not be "
                f"read ({exc.__class__.__name__}): check `python trading_execution.py orders` before "
                f"placing it again") from None
        if order_id is None:
            raise OrderStatusUnknownError(
                f"Schwab accepted {what} (HTTP {resp.status_code}) without an order id: check "
                f"`python trading_execution.py orders` before placing it again")
        order_id = str(order_id)
        self._placed[o["client_key"]] = order_id
        log.info("Schwab order %s placed: %s (client_key %s)", order_id, what, o["client_key"])
        return order_id

    def preview_order(self, order: dict) -> None:
        """Schwab's preview of ``order`` (schwab-py ``preview_order``; nothing is placed).
        ``OrderRejectedError`` when Schwab refuses it: an HTTP 400/422 or an answer whose
        ``orderValidationResult.rejects`` is not empty (its first messages in the line)."""
        o = validate_order(order)
        account_hash = self.account_hash
        spec = self._order_spec(o).build()
        what = f"preview of {o['side']} {o['quantity']} {o['symbol']} {o['order_type']}"
        resp = self._call(what, self._client.preview_order, account_hash, spec, order=True)
        try:
            body = resp.json() or {}
        except ValueError:
            body = {}
        result = body.get("orderValidationResult") if isinstance(body, dict) else None
        rejects = (result or {}).get("rejects") or []
        if rejects:
            messages = "; ".join(str(r.get("message") or r.get("activityMessage") or r.get("validationRuleName")
                                     if isinstance(r, dict) else r) for r in rejects[:3])
            raise OrderRejectedError(f"Schwab {what} refused it: {_short_text(messages)}")

    def get_order(self, order_id) -> dict:
        resp = self._call(f"order {order_id} status", self._client.get_order, order_id,
                          self.account_hash, lookup=True)
        return parse_schwab_order(resp.json() or {})

    def cancel_order(self, order_id) -> None:
        self._throttle()
        self._call(f"cancel of order {order_id}", self._client.cancel_order, order_id,
                   self.account_hash, order=True, lookup=True)
        log.info("Schwab order %s cancel requested", order_id)

    def broker_time(self) -> datetime:
        """Schwab's own clock now: the HTTP ``Date`` of a light call (the account numbers), kept as
        ``server_time``; the cycle compares it with ours before any order (``clock_sanity``)."""
        at = self._learn_time()
        if at is None:
            raise BrokerError("Schwab answered without a Date header: its clock is unknown, so this "
                              "machine's clock cannot be checked against it; retry later")
        return at

    def _learn_time(self) -> datetime | None:
        """Ask Schwab something light (the account numbers) for the ``Date`` of its answer."""
        self._call("clock check (account numbers)", self._client.get_account_numbers)
        return self.server_time

    def get_orders_since(self, dt, reach: datetime | None = None) -> list[dict]:
        """Every order entered at or after ``dt`` (naive = local time), oldest first. The window
        ends ``SCHWAB_ORDER_QUERY_AHEAD_S`` after the latest of our clock, Schwab's own (learned
        first if no answer gave it yet) and ``reach`` (the recorded send time of an order being
        recovered), never after our clock alone: an order Schwab stamped by a clock a day or more
        ahead of ours is listed. It starts at ``dt`` (the snapshot rule lists the same window twice
        and compares order ids, never times), clamped to the ``SCHWAB_ORDER_LOOKBACK_DAYS`` Schwab
        keeps, counted on the later clock."""
        if self.server_time is None:
            self._learn_time()
        since = to_utc(dt)
        newest = clock_sanity.latest(self.server_time, reach)
        floor = newest - timedelta(days=C.SCHWAB_ORDER_LOOKBACK_DAYS)
        if since < floor:
            since = floor
        until = clock_sanity.window_end(self.server_time, reach, since)
        resp = self._call("order history", self._client.get_orders_for_account, self.account_hash,
                          from_entered_datetime=since.replace(microsecond=0),
                          to_entered_datetime=until.replace(microsecond=0))
        body = resp.json() or []
        orders = [parse_schwab_order(raw) for raw in body if isinstance(raw, dict)]
        orders = [x for x in orders if x["entered_time"] is None or x["entered_time"] >= since]
        orders.sort(key=lambda x: x["entered_time"] or since)
        return orders

    def get_transactions(self, start, end) -> list[dict]:
        """The account's transactions from ``start`` to ``end`` (schwab-py ``get_transactions``,
        every ``Client.Transactions.TransactionType``), oldest first; ``start`` is clamped to the
        ``SCHWAB_ORDER_LOOKBACK_DAYS`` Schwab keeps, counted on the later of our clock and Schwab's."""
        since, until = to_utc(start), to_utc(end)
        floor = clock_sanity.latest(self.server_time) - timedelta(days=C.SCHWAB_ORDER_LOOKBACK_DAYS)
        since = max(since, floor)
        resp = self._call("transactions", self._client.get_transactions, self.account_hash,
                          start_date=since.replace(microsecond=0), end_date=until.replace(microsecond=0))
        body = resp.json() or []
        out = [parse_schwab_transaction(raw) for raw in body if isinstance(raw, dict)]
        out = [t for t in out if t["id"] and str(t.get("type")) != ""]
        out.sort(key=lambda t: (t["time"] or since, t["id"]))
        return out

    def get_open_orders(self) -> list[dict]:
        since = datetime.now(UTC) - timedelta(days=C.SCHWAB_ORDER_LOOKBACK_DAYS)
        return [x for x in self.get_orders_since(since) if x["status"] in OPEN_STATUSES]


