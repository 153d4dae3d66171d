"""A fake Schwab Trader API over real HTTP on 127.0.0.1, for crash tests of the live path.

The server runs in a background thread of the test process and keeps every order, fill, position
and the cash in the ``FakeSchwabServer`` object, so its state survives a client that is killed
(``kill -9``, a failpoint's ``os._exit``) in the middle of a request. The client is schwab-py's
real ``Client`` in a subprocess, routed here by ``tests/schwab_shim.py``.

Routes (the ones schwab-py calls for us; JSON shapes as in tests/test_trading_api.py):

    POST   /v1/oauth/token                               refresh_token / authorization_code
    GET    /trader/v1/accounts/accountNumbers
    GET    /trader/v1/accounts[?fields=positions]
    GET    /trader/v1/accounts/{hash}[?fields=positions]  balances (+ positions), from the fills
    POST   /trader/v1/accounts/{hash}/orders              201 + Location .../orders/{id}
    GET    /trader/v1/accounts/{hash}/orders              fromEnteredTime/toEnteredTime (required),
                                                          status, maxResults; newest first
    GET    /trader/v1/accounts/{hash}/orders/{id}         counts a poll (see ``fill_after_polls``)
    DELETE /trader/v1/accounts/{hash}/orders/{id}         cancel
    GET    /trader/v1/orders                              every account's orders (same filters)
    GET    /marketdata/v1/quotes?symbols=A,B              from ``prices``
    (orders: MARKET and LIMIT DAY, STOP DAY or GOOD_TILL_CANCEL with ``stopPrice``; a STOP rests,
    never filled by polls, until ``advance_session(bars)`` moves the market one session)
    GET    /trader/v1/accounts/{hash}/transactions        startDate/endDate (required), types:
                                                          TRADE from every fill, and what a test
                                                          added (``add_dividend``, ``add_split``,
                                                          ``add_journal``, ``add_fee``, ``add_interest``)

The broker's clock is ``time.time() + clock_skew_s``: it stamps ``enteredTime``/``closeTime``,
the HTTP ``Date`` header, and is the clock that ``fromEnteredTime``/``toEnteredTime`` are compared
with (at whole seconds, as the client sees ``enteredTime``; a ``fromEnteredTime`` more than 60 days
before it is refused with 400, as at Schwab). A clock a day or weeks away from ours (a machine
restored from a snapshot, a dead RTC) is ``clock_skew_s`` = +/- that many seconds.

Nothing here reaches the network; the server binds 127.0.0.1 on a free port.
"""
from __future__ import annotations

import base64
import email.utils
import json
import re
import socket
import sys
import threading
import time
from collections import Counter
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

SCHWAB_BASE = "https://api.schwabapi.com"
APP_KEY = "APPKEY-test-0123456789"
APP_SECRET = "APPSECRET-test-abcdef"
ACCESS = "ACCESS-TOKEN-1111"
REFRESH = "REFRESH-TOKEN-2222"
ACCOUNT_NUMBER = "87654321"
ACCOUNT_HASH = "ABCDEF0123456789HASH"

SIDES = ("BUY", "SELL", "SELL_SHORT", "BUY_TO_COVER")


def store_credentials(cm, age_days: float = 1.0, expires_in: float = 1800.0,
                      account_hash: str | None = None) -> None:
    """Store, through the credential manager ``cm``, the app key/secret (service ``schwab``) and
    a login token (``schwab_token``) created ``age_days`` ago whose access token expires in
    ``expires_in`` s (negative: already expired, so the first call refreshes it)."""
    creds = {"app_key": APP_KEY, "app_secret": APP_SECRET}
    if account_hash:
        creds["account_hash"] = account_hash
    cm.store_credentials("schwab", creds)
    cm.store_credentials("schwab_token", {
        "creation_timestamp": int(time.time() - age_days * 86400),
        "token": {"access_token": ACCESS, "refresh_token": REFRESH, "token_type": "Bearer",
                  "expires_in": 1800, "scope": "api", "expires_at": int(time.time() + expires_in)}})
OPEN = ("AWAITING_PARENT_ORDER", "AWAITING_CONDITION", "AWAITING_STOP_CONDITION",
        "AWAITING_MANUAL_REVIEW", "ACCEPTED", "AWAITING_UR_OUT", "PENDING_ACTIVATION", "QUEUED",
        "WORKING", "PENDING_CANCEL", "PENDING_REPLACE", "NEW", "AWAITING_RELEASE_TIME",
        "PENDING_ACKNOWLEDGEMENT", "PENDING_RECALL")
_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S+0000"


def _parse_query_time(text: str) -> datetime:
    """``fromEnteredTime`` as schwab-py sends it (``...Z``), with or without milliseconds."""
    text = text.strip()
    for fmt in ("%Y-%m-%dT%H:%M:%S.%fZ", "%Y-%m-%dT%H:%M:%SZ", "%Y-%m-%dT%H:%M:%S%z",
                "%Y-%m-%dT%H:%M:%S.%f%z"):
        try:
            value = datetime.strptime(text, fmt)
        except ValueError:
            continue
        return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    raise ValueError(f"bad time {text!r}")


def _take(flag) -> tuple[bool, object]:
    """A fault flag: True/False or a count of the next requests it applies to."""
    if flag is True:
        return True, False
    if isinstance(flag, int) and not isinstance(flag, bool) and flag > 0:
        return True, flag - 1
    return False, flag


class _QuietServer(ThreadingHTTPServer):
    """A client killed mid-request (the crash tests' ``kill -9``) resets its connection: that is
    the test working, not an error worth a traceback on stderr."""

    def handle_error(self, request, client_address):
        if not isinstance(sys.exc_info()[1], (ConnectionResetError, BrokenPipeError)):
            super().handle_error(request, client_address)


class FakeSchwabServer:
    """State and knobs of the fake broker (every attribute may be changed while it runs).

    clock_skew_s      broker clock minus ours, seconds (negative: the broker is behind).
    prices            {symbol: price}: quotes, fills and the market value of positions.
    fill_after_polls  a MARKET order stays WORKING until its ``fill_after_polls``-th GET of that
                      one order, which answers FILLED at ``prices[symbol]``; 0 fills on arrival;
                      None never fills by itself (use ``fill``). Order lists never count as polls.
    drop_next_post    store the order, then close the connection without an answer
                      (the client gets a transport error: "accepted, answer lost").
    refuse_next_post  close the connection without storing the order (it never reached Schwab).
    kill_client_on_post  store the order, set ``post_stored`` and hold the answer until
                      ``release_post`` is set (or ``hold_timeout_s``): the test kills the client.
    post_delay_s      seconds to wait (after storing) before answering any POST.
    The three fault flags take True (the next POST) or a count of POSTs; they are consumed.
    HTTP errors by kind of request (``KINDS``; the n-th counts every request of that kind,
    retries included; the answer is sent before the request touches any state):
    ``fail_nth(kind, n, status=500)``     the n-th request of ``kind`` answers ``status``, once
    ``fail_alternate(kinds, status=500)`` every request of those kinds whose previous one of its
                      kind was answered normally answers ``status``: each call fails once, its retry works
    ``fail_always(kind, status)``         every request of ``kind`` answers ``status``
    ``injected``      [(kind, n, status)] of every error answered so far; ``kind_counts`` per kind.
    ``meta[order_id]["stored_at"]`` is ``time.time()`` (our clock, unskewed) when an order was stored.
    """

    def __init__(self, clock_skew_s: float = 0.0, prices: dict | None = None, cash: float = 100_000.0,
                 fill_after_polls: int | None = 1, account_type: str = "MARGIN"):
        self.clock_skew_s = float(clock_skew_s)
        self.prices = {k.upper(): float(v) for k, v in (prices or {}).items()}
        self.cash = float(cash)
        self.fill_after_polls = fill_after_polls
        self.account_type = account_type
        self.unsettled_cash = 0.0       # a CASH account's unsettledCash (counted in cashAvailableForTrading)
        self.drop_next_post: bool | int = False
        self.refuse_next_post: bool | int = False
        self.kill_client_on_post: bool | int = False
        self.post_delay_s = 0.0
        self.hold_timeout_s = 30.0
        self.post_stored = threading.Event()       # set each time a POSTed order is stored
        self.release_post = threading.Event()      # lets a held (kill_client_on_post) answer go
        self.lock = threading.RLock()
        self.orders: dict[int, dict] = {}          # orderId -> Schwab order JSON
        self.meta: dict[int, dict] = {}            # orderId -> {"source", "polls", "fault", "body"}
        self.positions: dict[str, dict] = {}       # symbol -> {"quantity" (signed), "avg_price"}
        self.requests: list[dict] = []             # {"method", "path", "query", "at"} (broker clock)
        self.next_id = 1_000_000_001
        self.access_tokens = {ACCESS}
        self.refresh_token = REFRESH
        self.token_refreshes = 0
        self.kind_counts: Counter = Counter()     # requests per kind (KINDS), injected errors included
        self.injected: list[tuple[str, int, int]] = []
        self._fail_nth: dict[tuple[str, int], int] = {}
        self._fail_alternate: dict[str, int] = {}
        self._fail_always: dict[str, int] = {}
        self._failed_last: dict[str, bool] = {}
        self.extra_transactions: list[dict] = []  # Schwab-shaped, added by tests (see "transactions")
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.previews: list[dict] = []             # previewOrder bodies received
        self.preview_rejects: dict[str, str] = {}  # symbol -> the reject message its preview answers

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> "FakeSchwabServer":
        server = self

        class Handler(_Handler):
            fake = server
        self._httpd = _QuietServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="fake-schwab", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.release_post.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        """What FAKE_SCHWAB_URL is set to for the shim."""
        return f"http://127.0.0.1:{self.port}"

    # ------------------------------------------------------------------ the broker's clock
    def now(self) -> datetime:
        return datetime.fromtimestamp(time.time() + self.clock_skew_s, timezone.utc)

    # ------------------------------------------------------------------ test controls
    def set_price(self, symbol: str, price: float) -> None:
        with self.lock:
            self.prices[symbol.upper()] = float(price)

    def place_manual_order(self, symbol: str, side: str, quantity: int, order_type: str = "MARKET",
                           price: float | None = None) -> int:
        """An order a person placed on the web site: the same shape as ours, no link to our records."""
        leg = {"instruction": side.upper(), "quantity": int(quantity),
               "instrument": {"symbol": symbol.upper(), "assetType": "EQUITY"}}
        body = {"orderType": order_type.upper(), "session": "NORMAL", "duration": "DAY",
                "orderStrategyType": "SINGLE", "orderLegCollection": [leg]}
        if price is not None:
            body["price"] = f"{price:.2f}"
        return self._store(body, source="manual")

    def fill(self, order_id: int, price: float | None = None, quantity: int | None = None) -> dict:
        """Fill (all, or ``quantity`` more shares of) an open order at ``price`` (default: prices)."""
        with self.lock:
            order = self.orders[int(order_id)]
            if order["status"] not in OPEN:
                raise ValueError(f"order {order_id} is {order['status']}, not open")
            leg = order["orderLegCollection"][0]
            symbol = leg["instrument"]["symbol"]
            price = float(self.prices[symbol] if price is None else price)
            qty = int(order["remainingQuantity"] if quantity is None else quantity)
            qty = min(qty, int(order["remainingQuantity"]))
            self._execute(order, symbol, leg["instruction"], qty, price)
            return json.loads(json.dumps(order))

    def cancel(self, order_id: int) -> None:
        with self.lock:
            order = self.orders[int(order_id)]
            if order["status"] in OPEN:
                order.update(status="CANCELED", remainingQuantity=0, cancelable=False, editable=False,
                             closeTime=self.now().strftime(_TIME_FORMAT))

    def advance_session(self, bars: dict) -> list[dict]:
        """The market moves one session: ``bars`` = {symbol: {"open", "high", "low", "close"}}.
        Every resting order of a symbol with a bar is tried against it, by the same rules as the
        paper broker and the backtest (``order_prices``): a STOP (GTC) fills at its stop price, or
        at the open when the open gaps through it (``stop_fill``); a LIMIT fills at the open when
        the open is inside its limit (``collar_fill``), else stays WORKING. Then ``prices`` become
        the closes. Returns copies of the orders filled."""
        import order_prices       # the project's one home of these rules (tests run from the repo)
        filled = []
        with self.lock:
            for order_id in sorted(self.orders):
                order = self.orders[order_id]
                leg = order["orderLegCollection"][0]
                symbol, side = leg["instrument"]["symbol"], leg["instruction"]
                bar = bars.get(symbol)
                if bar is None or order["status"] not in OPEN:
                    continue
                price = None
                if order["orderType"] == "STOP":
                    price = order_prices.stop_fill("long" if side == "SELL" else "short", float(order["stopPrice"]),
                                                   float(bar["open"]), float(bar["low"]), float(bar["high"]))
                elif order["orderType"] == "LIMIT":
                    price = order_prices.collar_fill("buy" if side in ("BUY", "BUY_TO_COVER") else "sell",
                                                     float(order["price"]), float(bar["open"]))
                if price is not None:
                    self._execute(order, symbol, side, int(order["remainingQuantity"]), price)
                    filled.append(json.loads(json.dumps(order)))
            for symbol, bar in bars.items():
                self.prices[symbol.upper()] = float(bar["close"])
        return filled

    def open_orders(self, order_type: str | None = None) -> list[dict]:
        """Copies of the orders still open (of ``order_type``, e.g. "STOP"), oldest first."""
        return [o for o in self.all_orders() if o["status"] in OPEN
                and (order_type is None or o["orderType"] == order_type)]

    def reject_preview(self, symbol: str, message: str) -> None:
        """The preview of an order for ``symbol`` answers a reject with ``message``."""
        with self.lock:
            self.preview_rejects[symbol.upper()] = message

    def fail_nth(self, kind: str, n: int, status: int = 500) -> None:
        """The ``n``-th request of ``kind`` (counted from the server's start) answers ``status``."""
        assert kind in KINDS, kind
        with self.lock:
            self._fail_nth[(kind, int(n))] = int(status)

    def fail_alternate(self, kinds=None, status: int = 500) -> None:
        """Each call of these kinds (default: every kind but the token endpoint) fails once:
        a request answers ``status`` unless the previous one of its kind did."""
        with self.lock:
            for kind in (kinds or [k for k in KINDS if k != "token"]):
                assert kind in KINDS, kind
                self._fail_alternate[kind] = int(status)

    def fail_always(self, kind: str, status: int) -> None:
        assert kind in KINDS, kind
        with self.lock:
            self._fail_always[kind] = int(status)

    def clear_failures(self) -> None:
        with self.lock:
            self._fail_nth.clear()
            self._fail_alternate.clear()
            self._fail_always.clear()

    def _injected_status(self, kind: str | None) -> int | None:
        """Count this request of ``kind``; the status to answer instead, or None."""
        if kind is None:
            return None
        with self.lock:
            self.kind_counts[kind] += 1
            n = self.kind_counts[kind]
            status = self._fail_nth.pop((kind, n), None)
            if status is None:
                status = self._fail_always.get(kind)
            if status is None and kind in self._fail_alternate and not self._failed_last.get(kind):
                status = self._fail_alternate[kind]
            self._failed_last[kind] = status is not None
            if status is not None:
                self.injected.append((kind, n, status))
            return status

    # ------------------------------------------------------------------ introspection
    def all_orders(self, source: str | None = None) -> list[dict]:
        """Copies of every order, oldest first; ``source`` "api" (posted) or "manual"."""
        with self.lock:
            ids = sorted(i for i in self.orders if source is None or self.meta[i]["source"] == source)
            return [json.loads(json.dumps(self.orders[i])) for i in ids]

    def posted_orders(self) -> list[dict]:
        """Orders that arrived by POST (including dropped and held answers), oldest first."""
        return self.all_orders("api")

    def order_counts(self, source: str | None = "api") -> Counter:
        """How many orders per (symbol, side, quantity); by default only those POSTed by clients."""
        counts = Counter()
        for order in self.all_orders(source):
            leg = order["orderLegCollection"][0]
            counts[(leg["instrument"]["symbol"], leg["instruction"], int(order["quantity"]))] += 1
        return counts

    def duplicates(self, source: str | None = "api") -> dict:
        """(symbol, side, quantity) posted more than once -> count."""
        return {k: n for k, n in self.order_counts(source).items() if n > 1}

    def position_quantities(self) -> dict:
        """{symbol: signed shares} of every open position."""
        with self.lock:
            return {s: p["quantity"] for s, p in self.positions.items() if p["quantity"]}

    def equity(self) -> float:
        with self.lock:
            return self.cash + sum(p["quantity"] * self.prices.get(s, p["avg_price"])
                                   for s, p in self.positions.items())

    def wait_for_post(self, timeout: float = 30.0) -> bool:
        """Wait until a POSTed order is stored (then clear the event for the next one)."""
        got = self.post_stored.wait(timeout)
        self.post_stored.clear()
        return got

    # ------------------------------------------------------------------ order book
    def _store(self, body: dict, source: str, fault: str | None = None) -> int:
        with self.lock:
            order_id = self.next_id
            self.next_id += 1
            leg = dict(body["orderLegCollection"][0])
            qty = int(leg["quantity"])
            side = leg["instruction"]
            leg.update(orderLegType="EQUITY", legId=1, quantity=qty,
                       positionEffect="CLOSING" if side in ("SELL", "BUY_TO_COVER") else "OPENING")
            leg["instrument"] = dict(leg["instrument"], symbol=leg["instrument"]["symbol"].upper())
            order = {"session": body.get("session", "NORMAL"), "duration": body.get("duration", "DAY"),
                     "orderType": body["orderType"], "complexOrderStrategyType": "NONE",
                     "quantity": qty, "filledQuantity": 0, "remainingQuantity": qty,
                     "requestedDestination": "AUTO", "destinationLinkName": "AutoRoute",
                     "orderLegCollection": [leg], "orderStrategyType": body.get("orderStrategyType", "SINGLE"),
                     "orderId": order_id, "cancelable": True, "editable": True, "status": "WORKING",
                     "enteredTime": self.now().strftime(_TIME_FORMAT), "accountNumber": int(ACCOUNT_NUMBER)}
            if body.get("price") is not None:
                order["price"] = float(body["price"])
            if body.get("stopPrice") is not None:
                order["stopPrice"] = float(body["stopPrice"])
            self.orders[order_id] = order
            self.meta[order_id] = {"source": source, "polls": 0, "fault": fault, "body": body,
                                   "stored_at": time.time()}      # our clock (time.time()), unskewed
            if source == "api" and self.fill_after_polls == 0 and order["orderType"] != "STOP":
                self._auto_fill(order)                  # a STOP rests until advance_session
            return order_id

    def _auto_fill(self, order: dict) -> None:
        leg = order["orderLegCollection"][0]
        symbol = leg["instrument"]["symbol"]
        if symbol not in self.prices:
            order.update(status="REJECTED", remainingQuantity=0, cancelable=False,
                         statusDescription=f"fake Schwab has no price for {symbol}",
                         closeTime=self.now().strftime(_TIME_FORMAT))
            return
        price = self.prices[symbol]
        if order["orderType"] == "LIMIT":
            limit = float(order["price"])
            buying = leg["instruction"] in ("BUY", "BUY_TO_COVER")
            if (buying and price > limit) or (not buying and price < limit):
                return                                  # not marketable: stays working
        self._execute(order, symbol, leg["instruction"], int(order["remainingQuantity"]), price)

    def _execute(self, order: dict, symbol: str, side: str, qty: int, price: float) -> None:
        if qty <= 0:
            return
        stamp = self.now().strftime(_TIME_FORMAT)
        filled = int(order["filledQuantity"]) + qty
        remaining = int(order["quantity"]) - filled
        order.update(filledQuantity=filled, remainingQuantity=remaining)
        order.setdefault("orderActivityCollection", []).append({
            "activityType": "EXECUTION", "activityId": order["orderId"] * 10 + len(order.get("orderActivityCollection", [])),
            "executionType": "FILL", "quantity": qty, "orderRemainingQuantity": remaining,
            "executionLegs": [{"legId": 1, "quantity": qty, "mismarkedQuantity": 0, "price": price,
                               "time": stamp}]})
        if remaining == 0:
            order.update(status="FILLED", cancelable=False, editable=False, closeTime=stamp)
        signed = qty if side in ("BUY", "BUY_TO_COVER") else -qty
        self.cash -= signed * price
        pos = self.positions.setdefault(symbol, {"quantity": 0, "avg_price": 0.0})
        old = pos["quantity"]
        new = old + signed
        if old == 0 or (old > 0) == (signed > 0):       # opening or adding: average the price
            pos["avg_price"] = (abs(old) * pos["avg_price"] + qty * price) / abs(new)
        elif new == 0:
            pos["avg_price"] = 0.0
        elif (new > 0) != (old > 0):                    # crossed through zero
            pos["avg_price"] = price
        pos["quantity"] = new

    def _poll(self, order_id: int) -> None:
        """A GET of one order: counts towards ``fill_after_polls``."""
        order = self.orders[order_id]
        meta = self.meta[order_id]
        meta["polls"] += 1
        if (meta["source"] == "api" and order["status"] in OPEN and self.fill_after_polls is not None
                and meta["polls"] >= self.fill_after_polls and order["orderType"] != "STOP"):
            self._auto_fill(order)

    # ------------------------------------------------------------------ JSON answers
    def account_json(self, with_positions: bool) -> dict:
        with self.lock:
            long_value = sum(p["quantity"] * self.prices.get(s, p["avg_price"])
                             for s, p in self.positions.items() if p["quantity"] > 0)
            short_value = sum(p["quantity"] * self.prices.get(s, p["avg_price"])
                              for s, p in self.positions.items() if p["quantity"] < 0)
            equity = self.cash + long_value + short_value
            if self.account_type == "MARGIN":
                balances = {"liquidationValue": round(equity, 2), "cashBalance": round(self.cash, 2),
                            "equity": round(equity, 2), "longMarketValue": round(long_value, 2),
                            "shortMarketValue": round(short_value, 2),
                            "availableFunds": round(max(equity - long_value + short_value, 0.0), 2),
                            "buyingPower": round(max(2 * equity - long_value + short_value, 0.0), 2)}
            else:
                balances = {"liquidationValue": round(equity, 2), "cashBalance": round(self.cash, 2),
                            "cashAvailableForTrading": round(max(self.cash, 0.0), 2),
                            "unsettledCash": round(self.unsettled_cash, 2),
                            "longMarketValue": round(long_value, 2)}
            account = {"type": self.account_type, "accountNumber": ACCOUNT_NUMBER, "roundTrips": 0,
                       "isDayTrader": False, "currentBalances": balances,
                       "initialBalances": dict(balances)}
            if with_positions:
                rows = []
                for symbol, p in sorted(self.positions.items()):
                    qty = p["quantity"]
                    if not qty:
                        continue
                    price = self.prices.get(symbol, p["avg_price"])
                    row = {"longQuantity": float(max(qty, 0)), "shortQuantity": float(max(-qty, 0)),
                           "averagePrice": p["avg_price"], "marketValue": round(qty * price, 2),
                           "instrument": {"symbol": symbol, "assetType": "EQUITY"}}
                    row["averageLongPrice" if qty > 0 else "averageShortPrice"] = p["avg_price"]
                    rows.append(row)
                account["positions"] = rows
            return {"securitiesAccount": account,
                    "aggregatedBalance": {"liquidationValue": balances["liquidationValue"],
                                          "currentLiquidationValue": balances["liquidationValue"]}}

    def quote_json(self, symbol: str) -> dict:
        price = self.prices[symbol]
        return {"assetMainType": "EQUITY", "symbol": symbol, "realtime": True,
                "quote": {"lastPrice": price, "bidPrice": round(price - 0.01, 2),
                          "askPrice": round(price + 0.01, 2), "closePrice": price, "mark": price},
                "fundamental": {},
                "reference": {"isShortable": True, "isHardToBorrow": False, "htbRate": 0.0}}

    def orders_json(self, query: dict, account_hash: str | None) -> tuple[int, object]:
        """The order list: both times required (as at Schwab), compared with the broker's clock."""
        try:
            since = _parse_query_time(query["fromEnteredTime"][0])
            until = _parse_query_time(query["toEnteredTime"][0])
        except (KeyError, ValueError) as exc:
            return 400, {"message": f"fromEnteredTime and toEnteredTime are required ({exc})"}
        if since < self.now() - timedelta(days=60):           # Schwab keeps 60 days, by its clock
            return 400, {"message": "fromEnteredTime must be within 60 days from today's date"}
        status = (query.get("status") or [None])[0]
        limit = int((query.get("maxResults") or ["3000"])[0])
        out = []
        with self.lock:
            for order_id in sorted(self.orders, reverse=True):            # newest first
                order = self.orders[order_id]
                entered = datetime.strptime(order["enteredTime"], _TIME_FORMAT).replace(tzinfo=timezone.utc)
                if not since <= entered <= until:
                    continue
                if status and order["status"] != status:
                    continue
                out.append(json.loads(json.dumps(order)))
        return 200, out[:limit]

    # ------------------------------------------------------------------ transactions (reconciliation)
    # Schwab's shape: activityId, time, type, status, orderId (TRADE), netAmount, description,
    # transferItems [{instrument {symbol, assetType}, amount (shares, signed), cost, price, feeType}].
    def _cash_item(self, amount: float, fee_type: str | None = None) -> dict:
        item = {"instrument": {"assetType": "CURRENCY", "symbol": "CURRENCY_USD",
                               "description": "USD currency"}, "amount": 0.0, "cost": round(amount, 2)}
        if fee_type:
            item["feeType"] = fee_type
        return item

    def _add_transaction(self, type_: str, net: float, description: str, items: list[dict]) -> dict:
        with self.lock:
            self.next_id += 1
            txn = {"activityId": 5_000_000_000 + self.next_id, "time": self.now().strftime(_TIME_FORMAT),
                   "accountNumber": ACCOUNT_NUMBER, "type": type_, "status": "VALID", "subAccount": "CASH",
                   "tradeDate": self.now().strftime(_TIME_FORMAT), "netAmount": round(net, 2),
                   "description": description, "transferItems": items}
            self.cash += round(net, 2)
            self.extra_transactions.append(txn)
            return txn

    def add_dividend(self, symbol: str, amount: float) -> dict:
        """A cash dividend on ``symbol`` (negative: a short pays it), credited to the cash."""
        symbol = symbol.upper()
        return self._add_transaction("DIVIDEND_OR_INTEREST", amount, f"ORDINARY DIVIDEND~{symbol}", [
            {"instrument": {"assetType": "EQUITY", "symbol": symbol}, "amount": 0.0, "cost": 0.0},
            self._cash_item(amount)])

    def add_interest(self, amount: float) -> dict:
        return self._add_transaction("DIVIDEND_OR_INTEREST", amount, "CREDIT INTEREST",
                                     [self._cash_item(amount)])

    def add_split(self, symbol: str, ratio: float) -> dict:
        """A forward split: the held quantity times ``ratio``, the new shares delivered."""
        symbol = symbol.upper()
        with self.lock:
            pos = self.positions[symbol]
            new = int(pos["quantity"] * ratio)
            delta = new - pos["quantity"]
            pos.update(quantity=new, avg_price=pos["avg_price"] / ratio)
            if symbol in self.prices:
                self.prices[symbol] = self.prices[symbol] / ratio
        return self._add_transaction("RECEIVE_AND_DELIVER", 0.0, f"STOCK SPLIT {ratio:g} FOR 1", [
            {"instrument": {"assetType": "EQUITY", "symbol": symbol}, "amount": float(delta), "cost": 0.0}])

    def add_journal(self, amount: float, description: str = "JOURNAL") -> dict:
        return self._add_transaction("JOURNAL", amount, description, [self._cash_item(amount)])

    def add_fee(self, amount: float, fee_type: str = "MISCELLANEOUS_FEE") -> dict:
        """A fee charged to the cash (``amount`` positive: the fee)."""
        return self._add_transaction("JOURNAL", -amount, "ADR FEE", [self._cash_item(-amount, fee_type)])

    def adjust_cash(self, amount: float) -> None:
        """Change the cash with no transaction at all (a change nothing explains)."""
        with self.lock:
            self.cash += amount

    def trade_transactions(self) -> list[dict]:
        """One TRADE transaction per execution of every order (ours and manual ones)."""
        out = []
        with self.lock:
            for order_id in sorted(self.orders):
                order = self.orders[order_id]
                leg = order["orderLegCollection"][0]
                symbol, side = leg["instrument"]["symbol"], leg["instruction"]
                for activity in order.get("orderActivityCollection") or []:
                    for ex in activity.get("executionLegs") or []:
                        qty, price = int(ex["quantity"]), float(ex["price"])
                        signed = qty if side in ("BUY", "BUY_TO_COVER") else -qty
                        out.append({
                            "activityId": int(activity["activityId"]), "time": ex["time"],
                            "accountNumber": ACCOUNT_NUMBER, "type": "TRADE", "status": "VALID",
                            "subAccount": "MARGIN", "tradeDate": ex["time"], "orderId": order_id,
                            "netAmount": round(-signed * price, 2), "description": f"{side} {symbol}",
                            "transferItems": [{"instrument": {"assetType": "EQUITY", "symbol": symbol},
                                               "amount": float(signed), "cost": round(-signed * price, 2),
                                               "price": price,
                                               "positionEffect": leg.get("positionEffect", "OPENING")}]})
        return out

    def transactions_json(self, query: dict) -> tuple[int, object]:
        try:
            since = _parse_query_time(query["startDate"][0])
            until = _parse_query_time(query["endDate"][0])
        except (KeyError, ValueError) as exc:
            return 400, {"message": f"startDate and endDate are required ({exc})"}
        types = set(",".join(query.get("types", [])).split(",")) - {""}
        out = []
        with self.lock:
            for txn in self.trade_transactions() + list(self.extra_transactions):
                at = datetime.strptime(txn["time"], _TIME_FORMAT).replace(tzinfo=timezone.utc)
                if since <= at <= until and (not types or txn["type"] in types):
                    out.append(json.loads(json.dumps(txn)))
        return 200, out


KINDS = ("token", "account_numbers", "account", "account_positions", "quotes", "orders_list",
         "order_post", "order_get", "order_delete", "order_preview", "transactions")


def request_kind(method: str, path: str, query: dict) -> str | None:
    """The kind of a request (``KINDS``) for the HTTP error knobs; None: not one of ours."""
    if path == "/v1/oauth/token":
        return "token"
    if path == "/trader/v1/accounts/accountNumbers":
        return "account_numbers"
    if path == "/marketdata/v1/quotes":
        return "quotes"
    if path == "/trader/v1/orders":
        return "orders_list"
    if path.endswith("/previewOrder"):
        return "order_preview"
    if re.fullmatch(r"/trader/v1/accounts/[^/]+/transactions", path):     # the reconciliation's
        return "transactions"
    match = re.fullmatch(r"/trader/v1/accounts(?:/([^/]+))?(/orders(?:/(\d+))?)?", path)
    if not match:
        return None
    _, orders_part, order_id = match.groups()
    if orders_part is None:
        return "account_positions" if "positions" in ",".join(query.get("fields", [])) else "account"
    if order_id is None:
        return "order_post" if method == "POST" else "orders_list"
    return {"GET": "order_get", "DELETE": "order_delete"}.get(method)


class _Handler(BaseHTTPRequestHandler):
    fake: FakeSchwabServer
    protocol_version = "HTTP/1.1"
    timeout = 60                      # an idle keep-alive connection ends after this

    def log_message(self, fmt, *args):            # quiet
        pass

    def date_time_string(self, timestamp=None):   # the Date header on the broker's clock
        return email.utils.formatdate(time.time() + self.fake.clock_skew_s, usegmt=True)

    # -- plumbing
    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, payload=None, headers: dict | None = None) -> None:
        data = b"" if payload is None else json.dumps(payload).encode()
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        if payload is not None:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _hang_up(self) -> None:
        """Close the connection without an answer (the client sees a transport error)."""
        self.close_connection = True
        try:
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _authorized(self) -> bool:
        auth = self.headers.get("Authorization", "")
        return auth.startswith("Bearer ") and auth[7:] in self.fake.access_tokens

    def _dispatch(self, method: str) -> None:
        fake = self.fake
        parts = urlsplit(self.path)
        path, query = parts.path, parse_qs(parts.query)
        body = self._body() if method in ("POST", "PUT") else b""
        with fake.lock:
            fake.requests.append({"method": method, "path": path, "query": query,
                                  "at": fake.now().isoformat()})
        status = fake._injected_status(request_kind(method, path, query))
        if status is not None:
            return self._send(status, {"message": f"injected HTTP {status}"})
        try:
            if path == "/v1/oauth/token" and method == "POST":
                return self._token(body)
            if not self._authorized():
                return self._send(401, {"message": "Unauthorized"})
            return self._route(method, path, query, body)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True            # the client died: the state is kept

    def _token(self, body: bytes) -> None:
        fake = self.fake
        form = parse_qs(body.decode())
        basic = self.headers.get("Authorization", "")
        expected = "Basic " + base64.b64encode(f"{APP_KEY}:{APP_SECRET}".encode()).decode()
        secret_in_form = form.get("client_secret") == [APP_SECRET]
        if basic != expected and not secret_in_form:
            return self._send(401, {"error": "invalid_client"})
        grant = (form.get("grant_type") or [""])[0]
        if grant == "refresh_token" and form.get("refresh_token") != [fake.refresh_token]:
            return self._send(400, {"error": "invalid_grant", "error_description": "bad refresh token"})
        if grant not in ("refresh_token", "authorization_code"):
            return self._send(400, {"error": "unsupported_grant_type"})
        with fake.lock:
            fake.token_refreshes += 1
            access = f"ACCESS-TOKEN-REFRESHED-{fake.token_refreshes}"
            fake.access_tokens.add(access)
        return self._send(200, {"access_token": access, "refresh_token": fake.refresh_token,
                                "token_type": "Bearer", "expires_in": 1800, "scope": "api",
                                "id_token": "ID-TOKEN-XYZ"})

    def _route(self, method: str, path: str, query: dict, body: bytes) -> None:
        fake = self.fake
        if path == "/trader/v1/accounts/accountNumbers" and method == "GET":
            return self._send(200, [{"accountNumber": ACCOUNT_NUMBER, "hashValue": ACCOUNT_HASH}])
        with_positions = "positions" in ",".join(query.get("fields", []))
        if path == "/trader/v1/accounts" and method == "GET":
            return self._send(200, [fake.account_json(with_positions)])
        if path == "/trader/v1/orders" and method == "GET":
            return self._send(*fake.orders_json(query, None))
        if path == "/marketdata/v1/quotes" and method == "GET":
            symbols = [s.strip().upper() for s in ",".join(query.get("symbols", [])).split(",") if s.strip()]
            with fake.lock:
                quotes = {s: fake.quote_json(s) for s in symbols if s in fake.prices}
            return self._send(200, quotes)
        if path.endswith("/previewOrder") and method == "POST":
            return self._preview_order(path, body)
        txn_match = re.fullmatch(r"/trader/v1/accounts/([^/]+)/transactions", path)
        if txn_match and method == "GET":           # the reconciliation's transactions
            if txn_match.group(1) != ACCOUNT_HASH:
                return self._send(400, {"message": "Invalid account hash"})
            return self._send(*fake.transactions_json(query))
        match = re.fullmatch(r"/trader/v1/accounts/([^/]+)(/orders(?:/(\d+))?)?", path)
        if not match:
            return self._send(404, {"message": f"no route {method} {path}"})
        account_hash, orders_part, order_id = match.groups()
        if account_hash != ACCOUNT_HASH:
            return self._send(400, {"message": "Invalid account hash"})
        if orders_part is None:
            if method == "GET":
                return self._send(200, fake.account_json(with_positions))
            return self._send(405, {"message": "method not allowed"})
        if order_id is None:
            if method == "GET":
                return self._send(*fake.orders_json(query, account_hash))
            if method == "POST":
                return self._post_order(body)
            return self._send(405, {"message": "method not allowed"})
        order_id = int(order_id)
        with fake.lock:
            if order_id not in fake.orders:
                answer = (404, {"message": "Order not found"})
            elif method == "GET":
                fake._poll(order_id)
                answer = (200, json.loads(json.dumps(fake.orders[order_id])))
            elif method == "DELETE":
                if fake.orders[order_id]["status"] not in OPEN:
                    answer = (400, {"message": "Order is not cancelable"})
                else:
                    fake.cancel(order_id)
                    answer = (200, None)
            else:
                answer = (405, {"message": "method not allowed"})
        return self._send(*answer)

    def _post_order(self, body: bytes) -> None:
        fake = self.fake
        try:
            spec = json.loads(body)
            legs = spec["orderLegCollection"]
            assert isinstance(legs, list) and len(legs) == 1
            leg = legs[0]
            assert leg["instruction"] in SIDES, f"instruction {leg['instruction']!r}"
            assert isinstance(leg["quantity"], int) and leg["quantity"] > 0, "quantity"
            assert leg["instrument"]["assetType"] == "EQUITY" and leg["instrument"]["symbol"], "instrument"
            assert spec["orderType"] in ("MARKET", "LIMIT", "STOP"), f"orderType {spec.get('orderType')!r}"
            assert spec["orderType"] != "LIMIT" or float(spec["price"]) > 0, "price"
            assert spec["orderType"] != "STOP" or float(spec["stopPrice"]) > 0, "stopPrice"
            assert spec.get("session") == "NORMAL", "session"
            assert spec.get("duration") in ("DAY", "GOOD_TILL_CANCEL"), "duration"
            assert spec.get("duration") == "DAY" or spec["orderType"] != "MARKET", "a MARKET order is DAY"
        except (ValueError, KeyError, TypeError, AssertionError) as exc:
            return self._send(400, {"message": f"Invalid order: {exc}"})
        with fake.lock:
            refuse, fake.refuse_next_post = _take(fake.refuse_next_post)
            if refuse:
                return self._hang_up()
            drop, fake.drop_next_post = _take(fake.drop_next_post)
            hold, fake.kill_client_on_post = (False, fake.kill_client_on_post) if drop else \
                _take(fake.kill_client_on_post)
            fault = "drop" if drop else "hold" if hold else None
            order_id = fake._store(spec, source="api", fault=fault)
            delay = fake.post_delay_s
        fake.post_stored.set()
        if drop:
            return self._hang_up()
        if hold:
            fake.release_post.wait(fake.hold_timeout_s)
        elif delay:
            time.sleep(delay)
        return self._send(201, headers={
            "Location": f"{SCHWAB_BASE}/trader/v1/accounts/{ACCOUNT_HASH}/orders/{order_id}"})

    # -- previewOrder (Schwab's preview endpoint; its own block)
    def _preview_order(self, path: str, body: bytes) -> None:
        """Schwab's preview answer: ``orderValidationResult`` with ``accepts`` / ``rejects`` (a
        reject for a symbol set by ``fake.reject_preview``); nothing is stored or placed."""
        fake = self.fake
        if path != f"/trader/v1/accounts/{ACCOUNT_HASH}/previewOrder":
            return self._send(400, {"message": "Invalid account hash"})
        try:
            spec = json.loads(body)
            leg = spec["orderLegCollection"][0]
            symbol = str(leg["instrument"]["symbol"]).upper()
        except (ValueError, KeyError, TypeError, IndexError) as exc:
            return self._send(400, {"message": f"Invalid order: {exc}"})
        with fake.lock:
            fake.previews.append(spec)
            message = fake.preview_rejects.get(symbol)
        rule = {"validationRuleName": "PREVIEW", "message": message, "activityMessage": message,
                "originalSeverity": "REJECT", "overrideName": "", "overrideSeverity": "REJECT"}
        result = {"alerts": [], "accepts": [] if message else [dict(rule, message="accepted",
                                                                        originalSeverity="ACCEPT")],
                  "rejects": [rule] if message else [], "reviews": [], "warns": []}
        return self._send(200, {"orderId": 0, "orderStrategy": dict(spec, status="ACCEPTED"),
                                "orderValidationResult": result,
                                "commissionAndFee": {"commission": {}, "fee": {}, "trueCommission": {}}})

    def do_GET(self):
        self._dispatch("GET")

    def do_POST(self):
        self._dispatch("POST")

    def do_DELETE(self):
        self._dispatch("DELETE")

    def do_PUT(self):
        self._dispatch("PUT")
