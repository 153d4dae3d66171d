"""SchwabAPI through schwab-py's real request building, token refresh and write-back.

authlib's OAuth2Client is subclassed with an ``httpx.MockTransport`` whose handler is a fake Schwab
(accounts, orders, quotes, the OAuth token endpoint) and installed as ``schwab.auth.OAuth2Client``.
Nothing here reaches the network and no live order can be sent. The credential store is the real
credential manager, in the test's own TRADING_HOME / key directory (see conftest)."""
import json
import logging
import os
import re
import subprocess
import sys
import time
from datetime import date, datetime, timedelta, timezone
from urllib.parse import parse_qs

import httpx
import pytest

import constants as C
import trading_api as T
from trading_api import (AuthenticationError, OrderNotFoundError, OrderRejectedError,
                         OrderStatusUnknownError, SchwabAPI, TokenExpiredError, TransientBrokerError)

schwab, _ = T._import_schwab()
from authlib.integrations.httpx_client import OAuth2Client as _AuthlibOAuth2Client  # noqa: E402

APP_KEY = "APPKEY-test-0123456789"
APP_SECRET = "APPSECRET-test-abcdef"
ACCESS = "ACCESS-TOKEN-1111"
REFRESH = "REFRESH-TOKEN-2222"
ACCOUNT_NUMBER = "87654321"
HASH = "ABCDEF0123456789HASH"
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

    # -- helpers
    def posted_orders(self):
        return [json.loads(r.content) for r in self.requests
                if r.method == "POST" and r.url.path.endswith("/orders")]

    def add_order(self, **fields):
        order_id = self.next_id
        self.next_id += 1
        order = {"orderId": order_id, "status": "WORKING", "quantity": 10, "filledQuantity": 0,
                 "remainingQuantity": 10, "orderType": "MARKET",
                 "enteredTime": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S+0000"),
                 "orderLegCollection": [{"instruction": "BUY", "quantity": 10,
                                         "instrument": {"symbol": "AAPL", "assetType": "EQUITY"}}]}
        order.update(fields)
        self.orders[order_id] = order
        return order_id

    # -- the transport
    def handler(self, request: httpx.Request) -> httpx.Response:
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
                body = json.loads(request.content)
                leg = body["orderLegCollection"][0]
                order_id = self.add_order(
                    quantity=leg["quantity"], remainingQuantity=leg["quantity"],
                    orderType=body["orderType"], price=body.get("price"),
                    orderLegCollection=[leg], status="WORKING")
                return httpx.Response(201, headers={
                    "Location": f"{BASE}/trader/v1/accounts/{HASH}/orders/{order_id}"})
            return httpx.Response(200, json=list(self.orders.values()))
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
    monkeypatch.setattr(T.time, "sleep", lambda s: None)
    return fake


@pytest.fixture
def cm():
    from credential_manager import CredentialManager
    return CredentialManager()


def store(cm, age_days=1.0, expires_in=1800.0, account_hash=None):
    creds = {"app_key": APP_KEY, "app_secret": APP_SECRET}
    if account_hash:
        creds["account_hash"] = account_hash
    cm.store_credentials("schwab", creds)
    cm.store_credentials("schwab_token", {
        "creation_timestamp": int(time.time() - age_days * 86400),
        "token": {"access_token": ACCESS, "refresh_token": REFRESH, "token_type": "Bearer",
                  "expires_in": 1800, "scope": "api", "expires_at": int(time.time() + expires_in)}})


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


# ------------------------------------------------------------------ orders
@pytest.mark.parametrize("side", ["BUY", "SELL", "SELL_SHORT", "BUY_TO_COVER"])
@pytest.mark.parametrize("order_type,limit,price_text", [
    ("MARKET", None, None), ("LIMIT", 123.456, "123.46"), ("LIMIT", 0.56789, "0.5679"),
    ("LIMIT", 1.0, "1.00")])
def test_orders_of_every_kind_build_the_schwab_body(api, fake, side, order_type, limit, price_text):
    order_id = api.place_order(order(side, 7, order_type, limit, symbol="msft"))
    assert order_id == str(fake.next_id - 1)
    body = fake.posted_orders()[-1]
    expected = {"session": "NORMAL", "duration": "DAY", "orderType": order_type,
                "orderStrategyType": "SINGLE",
                "orderLegCollection": [{"instruction": side, "quantity": 7,
                                        "instrument": {"assetType": "EQUITY", "symbol": "MSFT"}}]}
    if price_text:
        expected["price"] = price_text
    assert body == expected
    post = [r for r in fake.requests if r.method == "POST"][-1]
    assert str(post.url) == f"{BASE}/trader/v1/accounts/{HASH}/orders"
    assert post.headers["Authorization"] == f"Bearer {ACCESS}"


def test_same_client_key_is_placed_once(api, fake):
    first = api.place_order(order(key="k-1"))
    assert api.place_order(order(key="k-1")) == first
    assert len(fake.posted_orders()) == 1


def test_invalid_orders_are_rejected_before_schwab(api, fake):
    for bad in (order(qty=0), order(qty=-3), order(qty=1.5), order(side="HOLD"),
                order(order_type="LIMIT", limit=None), order(order_type="STOP"), order(symbol="")):
        with pytest.raises(OrderRejectedError):
            api.place_order(bad)
    assert fake.posted_orders() == []


def test_rejected_order_400(api, fake):
    fake.hook = lambda r: (httpx.Response(400, json={"message": "Order rejected: insufficient funds"})
                           if r.method == "POST" else None)
    with pytest.raises(OrderRejectedError, match="insufficient funds") as err:
        api.place_order(order())
    assert err.value.status_code == 400
    assert not isinstance(err.value, TransientBrokerError)


def test_rejected_status_maps_to_rejected(api, fake):
    order_id = fake.add_order(status="REJECTED", statusDescription="No shares to borrow")
    got = api.get_order(order_id)
    assert got["status"] == "REJECTED"
    assert got["reject_reason"] == "No shares to borrow"


def test_partial_fill_status_and_average_price(api, fake):
    order_id = fake.add_order(
        status="WORKING", quantity=100, filledQuantity=40, remainingQuantity=60,
        orderLegCollection=[{"instruction": "SELL_SHORT", "quantity": 100,
                             "instrument": {"symbol": "TSLA", "assetType": "EQUITY"}}],
        orderActivityCollection=[{"activityType": "EXECUTION", "executionType": "FILL", "quantity": 40,
                                  "executionLegs": [{"legId": 1, "quantity": 10, "price": 200.0},
                                                    {"legId": 1, "quantity": 30, "price": 201.0}]}])
    got = api.get_order(order_id)
    assert got["status"] == "PARTIALLY_FILLED"
    assert (got["symbol"], got["side"], got["quantity"]) == ("TSLA", "SELL_SHORT", 100)
    assert (got["filled_quantity"], got["remaining_quantity"]) == (40, 60)
    assert got["avg_fill_price"] == pytest.approx(200.75)
    assert got["entered_time"].tzinfo is not None
    fake.orders[order_id].update(status="FILLED", filledQuantity=100, remainingQuantity=0)
    assert api.get_order(order_id)["status"] == "FILLED"
    fake.orders[order_id].update(status="CANCELED", filledQuantity=40, remainingQuantity=0)
    canceled = api.get_order(order_id)
    assert canceled["status"] == "CANCELED" and canceled["filled_quantity"] == 40


def test_status_mapping_table():
    assert T.map_schwab_status("QUEUED") == "NEW"
    assert T.map_schwab_status("ACCEPTED") == "NEW"
    assert T.map_schwab_status("PENDING_CANCEL") == "WORKING"
    assert T.map_schwab_status("REPLACED") == "CANCELED"
    assert T.map_schwab_status("EXPIRED") == "EXPIRED"
    assert T.map_schwab_status("SOMETHING_NEW") == "WORKING"
    assert T.map_schwab_status("QUEUED", 5, 5) == "PARTIALLY_FILLED"
    assert T.map_schwab_status("FILLED", 10, 0) == "FILLED"


def test_get_unknown_order_and_cancel(api, fake):
    with pytest.raises(OrderNotFoundError):
        api.get_order(999)
    order_id = api.place_order(order())
    api.cancel_order(order_id)
    assert api.get_order(order_id)["status"] == "CANCELED"
    assert any(r.method == "DELETE" for r in fake.requests)


def test_open_orders_and_orders_since(api, fake):
    old = (datetime.now(timezone.utc) - timedelta(hours=3)).strftime("%Y-%m-%dT%H:%M:%S+0000")
    fake.add_order(status="FILLED", filledQuantity=10, remainingQuantity=0, enteredTime=old)
    working = fake.add_order(status="WORKING")
    queued = fake.add_order(status="QUEUED")
    open_ids = {o["order_id"] for o in api.get_open_orders()}
    assert open_ids == {str(working), str(queued)}
    since = api.get_orders_since(datetime.now(timezone.utc) - timedelta(hours=1))
    assert {o["order_id"] for o in since} == {str(working), str(queued)}
    query = [r for r in fake.requests if r.url.path.endswith("/orders") and r.method == "GET"][-1]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", query.url.params["fromEnteredTime"])


# ------------------------------------------------------------------ HTTP failures
def test_401_is_authentication_error(api, fake):
    fake.access_token = "SOMETHING-ELSE"
    with pytest.raises(AuthenticationError, match="trading_api.py login") as err:
        api.get_account_balance()
    assert err.value.status_code == 401
    assert_no_secrets(str(err.value))


def test_429_is_transient(api, fake):
    fake.hook = lambda r: httpx.Response(429, json={"message": "Too many requests"})
    with pytest.raises(TransientBrokerError) as err:
        api.get_quotes(["AAPL"])
    assert err.value.status_code == 429


def test_500_is_transient(api, fake):
    fake.hook = lambda r: httpx.Response(500, text="upstream exploded")
    with pytest.raises(TransientBrokerError) as err:
        api.get_account_balance()
    assert err.value.status_code == 500


def test_timeout_is_transient(api, fake):
    def hook(request):
        raise httpx.ReadTimeout("timed out", request=request)
    fake.hook = hook
    with pytest.raises(TransientBrokerError, match="timed out"):
        api.get_positions()


def test_connect_error_is_transient(api, fake):
    def hook(request):
        raise httpx.ConnectError("connection refused", request=request)
    fake.hook = hook
    with pytest.raises(TransientBrokerError, match="cannot reach Schwab"):
        api.get_account_balance()


def test_order_500_not_at_schwab_is_retryable(api, fake):
    api.account_hash  # noqa: B018  (resolve the account first)
    fake.hook = lambda r: httpx.Response(503, json={"message": "busy"}) if r.method == "POST" else None
    with pytest.raises(TransientBrokerError):
        api.place_order(order(key="x"))
    # the broker looked for the order before saying it is safe to retry
    assert any(r.method == "GET" and r.url.path.endswith("/orders") for r in fake.requests)


def test_order_timeout_after_schwab_took_it_returns_its_id(api, fake):
    api.account_hash  # noqa: B018

    def hook(request):
        if request.method == "POST":
            body = json.loads(request.content)
            fake.add_order(orderLegCollection=body["orderLegCollection"], quantity=3, remainingQuantity=3)
            raise httpx.ReadTimeout("timed out", request=request)
        return None
    fake.hook = hook
    order_id = api.place_order(order("BUY", 3, key="t-1"))
    assert order_id == str(fake.next_id - 1)
    fake.hook = None
    assert api.place_order(order("BUY", 3, key="t-1")) == order_id   # no second POST
    assert len([r for r in fake.requests if r.method == "POST"]) == 1


def test_order_timeout_and_lookup_failure_is_status_unknown(api, fake):
    api.account_hash  # noqa: B018

    def hook(request):
        raise httpx.ReadTimeout("timed out", request=request)
    fake.hook = hook
    with pytest.raises(OrderStatusUnknownError, match="before placing it again"):
        api.place_order(order())


# ------------------------------------------------------------------ tokens
def test_access_token_refresh_writes_back_through_credential_manager(fake, cm):
    store(cm, age_days=2.0, expires_in=-60)          # access token expired: refresh first
    created = cm.load_credentials("schwab_token")["creation_timestamp"]
    api = SchwabAPI(cm)
    assert api.get_account_balance()["equity"] == pytest.approx(105000.5)
    token_posts = [r for r in fake.requests if r.url.path == "/v1/oauth/token"]
    assert len(token_posts) == 1
    saved = cm.load_credentials("schwab_token")
    assert saved["creation_timestamp"] == created          # refreshing does not renew the login
    assert saved["token"]["access_token"] == "ACCESS-TOKEN-REFRESHED"


def test_expired_refresh_token_is_token_expired_error(fake, cm, caplog):
    store(cm, age_days=3.0, expires_in=-60)
    fake.token_reply = (400, {"error": "invalid_grant",
                              "error_description": "refresh token expired"})
    api = SchwabAPI(cm)
    with caplog.at_level(logging.DEBUG):
        with pytest.raises(TokenExpiredError, match=r"python trading_api\.py login") as err:
            api.get_account_balance()
    assert isinstance(err.value, AuthenticationError)
    assert "invalid_grant" in str(err.value)
    assert_no_secrets(str(err.value))


def test_token_age_warns_at_six_days(fake, cm, caplog):
    store(cm, age_days=6.2)
    with caplog.at_level(logging.WARNING, logger="broker"):
        api = SchwabAPI(cm)
    assert api.token_age_days == pytest.approx(6.2, abs=0.01)
    assert any("6.2 days old" in r.getMessage() and "trading_api.py login" in r.getMessage()
               for r in caplog.records)


def test_token_age_refuses_at_seven_days(fake, cm):
    store(cm, age_days=7.05)
    with pytest.raises(TokenExpiredError, match=r"7\.\d days old.*python trading_api\.py login"):
        SchwabAPI(cm)
    assert fake.requests == []


def test_fresh_token_no_warning(fake, cm, caplog):
    store(cm, age_days=1.0)
    with caplog.at_level(logging.WARNING, logger="broker"):
        SchwabAPI(cm)
    assert not [r for r in caplog.records if r.name == "broker"]


def test_missing_credentials_message(cm):
    with pytest.raises(AuthenticationError, match="not configured") as err:
        SchwabAPI(cm)
    assert "store_credentials('schwab'" in str(err.value)
    assert "trading_api.py login" in str(err.value)


def test_missing_token_message(cm):
    cm.store_credentials("schwab", {"app_key": APP_KEY, "app_secret": APP_SECRET})
    with pytest.raises(AuthenticationError, match=r"python trading_api\.py login"):
        SchwabAPI(cm)


def test_runbook_one_liner_fails_with_one_clear_line(trading_home, tmp_path):
    env = dict(os.environ, TRADING_HOME=str(trading_home), TRADING_CONFIG_DIR=str(tmp_path / "keys"))
    proc = subprocess.run(
        [sys.executable, "-c",
         "from trading_api import SchwabAPI; api = SchwabAPI(); print(api.get_account_balance())"],
        cwd=T.config.PROJECT_DIR, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr                     # one line, no traceback
    assert lines[0].startswith("ERROR: AuthenticationError: Schwab credentials are not configured")
    assert "store_credentials" in lines[0] and "trading_api.py login" in lines[0]


def test_secrets_are_registered_for_redaction(api):
    from logging_setup import redact
    assert_no_secrets(redact(f"{APP_KEY} {APP_SECRET} {ACCESS} {REFRESH}"))


# ------------------------------------------------------------------ account data
def test_margin_balance(api, fake):
    assert api.get_account_balance() == {"equity": 105000.5, "cash": 25000.25,
                                         "buying_power": 80000.0, "account_type": "MARGIN"}


def test_cash_account_balance(api, fake):
    fake.account_type = "CASH"
    balance = api.get_account_balance()
    assert (balance["equity"], balance["cash"], balance["buying_power"]) == (50000.0, 12000.0, 11000.0)


def test_account_hash_from_credentials_skips_lookup(fake, cm):
    store(cm, account_hash=HASH)
    SchwabAPI(cm).get_account_balance()
    assert not any(r.url.path.endswith("accountNumbers") for r in fake.requests)


def test_positions_long_and_short(api, fake):
    fake.positions = [
        {"longQuantity": 10.0, "shortQuantity": 0.0, "averagePrice": 150.5, "averageLongPrice": 150.5,
         "marketValue": 1600.0, "instrument": {"symbol": "AAPL", "assetType": "EQUITY"}},
        {"longQuantity": 0.0, "shortQuantity": 5.0, "averagePrice": 300.0, "averageShortPrice": 300.0,
         "marketValue": -1450.0, "instrument": {"symbol": "MSFT", "assetType": "EQUITY"}},
        {"longQuantity": 1.0, "shortQuantity": 0.0, "averagePrice": 2.0, "marketValue": 250.0,
         "instrument": {"symbol": "AAPL  250117C00150000", "assetType": "OPTION"}},
    ]
    positions = api.get_positions()
    assert positions == {
        "AAPL": {"quantity": 10, "avg_price": 150.5, "market_value": 1600.0, "recalled": False},
        "MSFT": {"quantity": -5, "avg_price": 300.0, "market_value": -1450.0, "recalled": False}}
    query = [r for r in fake.requests if r.url.path == f"/trader/v1/accounts/{HASH}"][-1]
    assert query.url.params["fields"] == "positions"


def test_quotes_with_borrow_and_dividend_fields(api, fake):
    future = (date.today() + timedelta(days=2)).isoformat()
    past = (date.today() - timedelta(days=80)).isoformat()
    fake.quotes = {
        "AAPL": {"assetMainType": "EQUITY", "symbol": "AAPL",
                 "quote": {"lastPrice": 190.12, "bidPrice": 190.1, "askPrice": 190.15},
                 "fundamental": {"divExDate": f"{past}T04:00:00Z", "nextDivExDate": f"{future}T04:00:00Z"},
                 "reference": {"isHardToBorrow": False, "isShortable": True, "htbRate": 0.0}},
        "GME": {"assetMainType": "EQUITY", "symbol": "GME",
                "quote": {"lastPrice": 25.0, "bidPrice": 24.9, "askPrice": 25.1},
                "fundamental": {},
                "reference": {"isHardToBorrow": True, "isShortable": True, "htbRate": 0.35}},
        "OLD": {"quote": {"lastPrice": 5.0}, "fundamental": {"divExDate": f"{past}T04:00:00Z"}},
    }
    quotes = api.get_quotes(["aapl", "GME", "OLD", "NOPE"])
    assert set(quotes) == {"AAPL", "GME", "OLD"}
    assert quotes["AAPL"] == {"last": 190.12, "bid": 190.1, "ask": 190.15, "borrow_rate": 0.0,
                              "hard_to_borrow": False, "shortable": True,
                              "ex_dividend_date": date.fromisoformat(future)}
    assert quotes["GME"]["hard_to_borrow"] is True
    assert quotes["GME"]["borrow_rate"] == pytest.approx(0.35 / C.SCHWAB_HTB_RATE_DIVISOR)
    assert quotes["OLD"]["ex_dividend_date"] is None
    assert quotes["OLD"]["borrow_rate"] is None and quotes["OLD"]["shortable"] is None
    query = [r for r in fake.requests if r.url.path == "/marketdata/v1/quotes"][-1]
    assert query.url.params["symbols"] == "AAPL,GME,OLD,NOPE"
    assert set(query.url.params["fields"].split(",")) == {"quote", "fundamental", "reference"}


# ------------------------------------------------------------------ factory and CLI
def test_get_broker_paper_by_default():
    broker = T.get_broker()
    assert isinstance(broker, T.PaperBroker)


def test_get_broker_live_logs_loudly(fake, cm, monkeypatch, caplog):
    store(cm)
    monkeypatch.setenv("TRADING_MODE", "live")
    with caplog.at_level(logging.WARNING, logger="broker"):
        broker = T.get_broker()
    assert isinstance(broker, SchwabAPI)
    lines = [r.getMessage() for r in caplog.records if "LIVE TRADING" in r.getMessage()]
    assert lines and "****4321" in lines[0] and ACCOUNT_NUMBER not in lines[0]


def test_cli_token_age_exit_codes(cm, capsys):
    assert T.main(["token-age"]) == 2
    store(cm, age_days=1)
    assert T.main(["token-age"]) == 0
    store(cm, age_days=6.5)
    assert T.main(["token-age"]) == 1
    store(cm, age_days=7.5)
    assert T.main(["token-age"]) == 2
    assert "EXPIRED" in capsys.readouterr().out


def test_cli_balance_and_quotes(api, fake, capsys):
    fake.quotes = {"AAPL": {"quote": {"lastPrice": 1.5, "bidPrice": 1.4, "askPrice": 1.6}}}
    assert T.main(["balance"]) == 0
    assert json.loads(capsys.readouterr().out)["equity"] == 105000.5
    assert T.main(["quotes", "AAPL"]) == 0
    assert json.loads(capsys.readouterr().out)["AAPL"]["last"] == 1.5


def test_cli_reports_missing_credentials(capsys):
    assert T.main(["balance"]) == 1
    assert "not configured" in capsys.readouterr().err


def test_cli_login_manual_flow_stores_token(fake, cm, monkeypatch, capsys):
    cm.store_credentials("schwab", {"app_key": APP_KEY, "app_secret": APP_SECRET})

    def token_endpoint(request):
        if request.url.path == "/v1/oauth/token":
            form = parse_qs(request.content.decode())
            assert form["grant_type"] == ["authorization_code"] and form["code"] == ["THE-CODE"]
            return httpx.Response(200, json={"access_token": ACCESS, "refresh_token": REFRESH,
                                             "token_type": "Bearer", "expires_in": 1800})
        return None
    fake.hook = token_endpoint

    def fake_input(prompt=""):
        printed = capsys.readouterr().out
        state = re.search(r"state=([\w-]+)", printed).group(1)
        return f"https://127.0.0.1:8182/?code=THE-CODE&state={state}"
    monkeypatch.setattr("builtins.input", fake_input)
    assert T.main(["login"]) == 0
    saved = cm.load_credentials("schwab_token")
    assert saved["token"]["refresh_token"] == REFRESH
    assert abs(saved["creation_timestamp"] - time.time()) < 60
    assert "****4321" in capsys.readouterr().out


def test_price_format():
    assert T.format_price(10) == "10.00"
    assert T.format_price(10.005) == "10.01"
    assert T.format_price(0.12345) == "0.1235"
    assert T.format_price(0.9999) == "0.9999"
