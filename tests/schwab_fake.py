"""A fake Schwab for tests: schwab-py's real request building, token refresh and write-back run
against it.

authlib's OAuth2Client is subclassed with an ``httpx.MockTransport`` whose handler is a fake Schwab
(accounts, orders, quotes, the OAuth token endpoint) and installed as ``schwab.auth.OAuth2Client``
by the ``fake`` fixture. Nothing reaches the network and no live order can be sent. The credential
store is the real credential manager, in the test's own TRADING_HOME / key directory (see
conftest). Test modules import the fixtures they use: ``from schwab_fake import api, cm, fake``."""
import json
import re
import time
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from urllib.parse import parse_qs

import httpx
import pytest

from credential_manager import CredentialManager
from schwab_broker import SchwabAPI, import_schwab

schwab, _, _ = import_schwab()
from authlib.integrations.httpx_client import OAuth2Client as _AuthlibOAuth2Client  # noqa: E402

from fake_schwab_server import (ACCESS, ACCOUNT_HASH as HASH, ACCOUNT_NUMBER, APP_KEY,  # noqa: E402
                                APP_SECRET, REFRESH, store_credentials)
BASE = "https://api.schwabapi.com"


class FakeSchwab:
    """Just enough of the Schwab Trader API for schwab-py's client."""

    def __init__(self):
        self.requests: list[httpx.Request] = []
        self.access_token = ACCESS
        self.account_type = "MARGIN"
        self.positions = []
        self.orders: dict[int, dict] = {}
        self.next_id = 5001
        self.token_reply = None          # (status, json) for POST /v1/oauth/token
        self.hook = None                 # request -> Response | None (None: normal handling)
        self.quotes = {}
        self.clock_skew_s = 0.0          # Schwab's clock minus ours: enteredTime, Date, order queries

    def now(self) -> datetime:
        """Schwab's clock."""
        return datetime.now(timezone.utc) + timedelta(seconds=self.clock_skew_s)

    def place(self, body: dict) -> int:
        """Store an order as Schwab does on POST (``body`` is the JSON schwab-py sent); its id."""
        leg = body["orderLegCollection"][0]
        return self.add_order(quantity=leg["quantity"], remainingQuantity=leg["quantity"],
                              orderType=body["orderType"], price=body.get("price"),
                              orderLegCollection=[leg], status="WORKING")

    # -- helpers
    def posted_orders(self):
        return [json.loads(r.content) for r in self.requests
                if r.method == "POST" and r.url.path.endswith("/orders")]

    def add_order(self, **fields):
        order_id = self.next_id
        self.next_id += 1
        order = {"orderId": order_id, "status": "WORKING", "quantity": 10, "filledQuantity": 0,
                 "remainingQuantity": 10, "orderType": "MARKET",
                 "enteredTime": self.now().strftime("%Y-%m-%dT%H:%M:%S+0000"),
                 "orderLegCollection": [{"instruction": "BUY", "quantity": 10,
                                         "instrument": {"symbol": "AAPL", "assetType": "EQUITY"}}]}
        order.update(fields)
        self.orders[order_id] = order
        return order_id

    # -- the transport
    def handler(self, request: httpx.Request) -> httpx.Response:
        response = self._handle(request)
        response.headers.setdefault("Date", format_datetime(self.now(), usegmt=True))
        return response

    def _handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.hook is not None:
            answer = self.hook(request)
            if answer is not None:
                return answer
        path, method = request.url.path, request.method
        if path == "/v1/oauth/token" and method == "POST":
            if self.token_reply is not None:
                status, body = self.token_reply
                return httpx.Response(status, json=body)
            form = parse_qs(request.content.decode())
            assert form.get("grant_type") == ["refresh_token"]
            self.access_token = "ACCESS-TOKEN-REFRESHED"
            return httpx.Response(200, json={
                "access_token": self.access_token, "refresh_token": form["refresh_token"][0],
                "token_type": "Bearer", "expires_in": 1800, "scope": "api",
                "id_token": "ID-TOKEN-XYZ"})
        if request.headers.get("Authorization") != f"Bearer {self.access_token}":
            return httpx.Response(401, json={"message": "Unauthorized"})
        if path == "/trader/v1/accounts/accountNumbers":
            return httpx.Response(200, json=[{"accountNumber": ACCOUNT_NUMBER, "hashValue": HASH}])
        if path == f"/trader/v1/accounts/{HASH}" and method == "GET":
            return httpx.Response(200, json=self.account_json())
        if path == f"/trader/v1/accounts/{HASH}/orders":
            if method == "POST":
                order_id = self.place(json.loads(request.content))
                return httpx.Response(201, headers={
                    "Location": f"{BASE}/trader/v1/accounts/{HASH}/orders/{order_id}"})
            return httpx.Response(200, json=self.orders_between(request.url.params))
        if path == f"/trader/v1/accounts/{HASH}/previewOrder" and method == "POST":   # accepts every order
            return httpx.Response(200, json={"orderValidationResult": {"accepts": [], "rejects": []}})
        match = re.fullmatch(rf"/trader/v1/accounts/{HASH}/orders/(\d+)", path)
        if match:
            order = self.orders.get(int(match.group(1)))
            if order is None:
                return httpx.Response(404, json={"message": "Order not found"})
            if method == "DELETE":
                order["status"] = "CANCELED"
                return httpx.Response(200)
            return httpx.Response(200, json=order)
        if path == "/marketdata/v1/quotes":
            symbols = request.url.params["symbols"].split(",")
            return httpx.Response(200, json={s: self.quotes[s] for s in symbols if s in self.quotes})
        return httpx.Response(404, json={"message": f"no route {method} {path}"})

    def orders_between(self, params) -> list[dict]:
        """Orders whose enteredTime (Schwab's clock) is within fromEnteredTime..toEnteredTime, as
        Schwab filters them (both required by Schwab when either is given)."""
        def parse(text):
            return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
        low = parse(params["fromEnteredTime"]) if "fromEnteredTime" in params else None
        high = parse(params["toEnteredTime"]) if "toEnteredTime" in params else None
        out = []
        for order in self.orders.values():
            entered = datetime.strptime(order["enteredTime"], "%Y-%m-%dT%H:%M:%S+0000").replace(tzinfo=timezone.utc)
            if (low is None or entered >= low) and (high is None or entered <= high):
                out.append(order)
        return out

    def account_json(self):
        if self.account_type == "MARGIN":
            balances = {"liquidationValue": 105000.5, "cashBalance": 25000.25, "buyingPower": 80000.0,
                        "availableFunds": 40000.0, "equity": 105000.5}
        else:
            balances = {"liquidationValue": 50000.0, "cashBalance": 12000.0,
                        "cashAvailableForTrading": 11000.0}
        account = {"type": self.account_type, "accountNumber": ACCOUNT_NUMBER,
                   "currentBalances": balances}
        if self.positions:
            account["positions"] = self.positions
        return {"securitiesAccount": account,
                "aggregatedBalance": {"liquidationValue": balances["liquidationValue"]}}


@pytest.fixture
def fake(monkeypatch):
    fake = FakeSchwab()

    class MockOAuth2Client(_AuthlibOAuth2Client):
        def __init__(self, *args, **kwargs):
            kwargs["transport"] = httpx.MockTransport(fake.handler)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(schwab.auth, "OAuth2Client", MockOAuth2Client)
    monkeypatch.setattr(time, "sleep", lambda s: None)
    return fake


@pytest.fixture
def cm():
    return CredentialManager()


store = store_credentials


@pytest.fixture
def api(fake, cm):
    store(cm)
    return SchwabAPI(cm)


def order(side="BUY", qty=10, order_type="MARKET", limit=None, symbol="AAPL", key=None):
    return {"symbol": symbol, "side": side, "quantity": qty, "order_type": order_type,
            "limit_price": limit, "client_key": key or f"{side}-{qty}-{order_type}-{limit}-{time.time_ns()}"}


def assert_no_secrets(text):
    for secret in (APP_KEY, APP_SECRET, ACCESS, REFRESH, "ACCESS-TOKEN-REFRESHED"):
        assert secret not in text
