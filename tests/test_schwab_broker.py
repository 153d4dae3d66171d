"""SchwabAPI through schwab-py's real request building, token refresh and write-back, against the
fake Schwab of ``schwab_fake`` (nothing reaches the network; no live order can be sent); the
Schwab token age rule and its users."""
import json
import logging
import re
import time
from datetime import date, datetime, timedelta, timezone

import httpx
import pytest

import constants as C
import schwab_broker as S
from broker_base import (AuthenticationError, OrderNotFoundError, OrderRejectedError,
                         OrderStatusUnknownError, TokenExpiredError, TransientBrokerError)
from schwab_broker import SchwabAPI
from schwab_fake import (ACCESS, APP_KEY, APP_SECRET, BASE, HASH, REFRESH,  # noqa: F401  (fixtures)
                         api, assert_no_secrets, cm, fake, order, store)


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
    assert S.map_schwab_status("QUEUED") == "NEW"
    assert S.map_schwab_status("ACCEPTED") == "NEW"
    assert S.map_schwab_status("PENDING_CANCEL") == "WORKING"
    assert S.map_schwab_status("REPLACED") == "CANCELED"
    assert S.map_schwab_status("EXPIRED") == "EXPIRED"
    assert S.map_schwab_status("SOMETHING_NEW") == "WORKING"
    assert S.map_schwab_status("QUEUED", 5, 5) == "PARTIALLY_FILLED"
    assert S.map_schwab_status("FILLED", 10, 0) == "FILLED"


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


def test_order_500_is_ambiguous_and_not_guessed(api, fake):
    api.account_hash  # noqa: B018  (resolve the account first)
    fake.hook = lambda r: httpx.Response(503, json={"message": "busy"}) if r.method == "POST" else None
    with pytest.raises(TransientBrokerError) as info:
        api.place_order(order(key="x"))
    assert info.value.ambiguous            # a 5xx may have placed it: the executor looks, not the broker
    assert not any(r.method == "GET" and r.url.path.endswith("/orders") for r in fake.requests)


def test_order_timeout_after_schwab_took_it_is_left_to_the_executor(api, fake):
    """Schwab has no client order id: the broker object never picks "the" order from the list
    (a manual order would look the same); it says the outcome is unknown."""
    api.account_hash  # noqa: B018

    def hook(request):
        if request.method == "POST":
            body = json.loads(request.content)
            fake.add_order(orderLegCollection=body["orderLegCollection"], quantity=3, remainingQuantity=3)
            raise httpx.ReadTimeout("timed out", request=request)
        return None
    fake.hook = hook
    with pytest.raises(TransientBrokerError) as info:
        api.place_order(order("BUY", 3, key="t-1"))
    assert info.value.ambiguous and len(fake.orders) == 1
    assert [r.method for r in fake.requests if r.url.path.endswith("/orders")] == ["POST"]


def test_201_without_order_id_is_status_unknown(api, fake):
    api.account_hash  # noqa: B018
    fake.hook = lambda r: httpx.Response(201) if r.method == "POST" else None
    with pytest.raises(OrderStatusUnknownError, match="before placing it again"):
        api.place_order(order())


def test_order_queries_end_after_our_clock_and_record_schwab_time(api, fake):
    """A Schwab clock ahead of ours still lists every order; Schwab's own time (HTTP Date) is kept."""
    fake.clock_skew_s = 600.0                 # Schwab 10 minutes ahead
    fake.add_order()
    assert len(api.get_orders_since(datetime.now(timezone.utc) - timedelta(hours=1))) == 1
    query = [r for r in fake.requests if r.method == "GET" and r.url.path.endswith("/orders")][-1]
    to = datetime.strptime(query.url.params["toEnteredTime"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
    assert to - datetime.now(timezone.utc) > timedelta(hours=23)
    assert abs((api.server_time - datetime.now(timezone.utc)).total_seconds() - 600) < 3


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


def test_token_age_rule():
    now = 1_700_000_000.0
    day = 86_400.0
    assert S.token_age_of(None).state == S.TOKEN_MISSING
    assert S.token_age_of({"token": {}}).state == S.TOKEN_MISSING
    fresh = S.token_age_of({"creation_timestamp": now - 1 * day, "token": {}}, now=now)
    assert fresh.state == S.TOKEN_FRESH and fresh.age_days == pytest.approx(1.0)
    assert fresh.expires == datetime.fromtimestamp(now - day + C.TOKEN_MAX_AGE_DAYS * day)
    assert S.token_age_of(now - C.TOKEN_WARN_AGE_DAYS * day, now=now).state == S.TOKEN_RENEW
    assert S.token_age_of(now - C.TOKEN_MAX_AGE_DAYS * day, now=now).state == S.TOKEN_EXPIRED
    with pytest.raises(AuthenticationError, match=r"no valid creation time.*trading_api\.py login"):
        S.token_age_of({"creation_timestamp": "yesterday"})
    with pytest.raises(TokenExpiredError):
        S.check_token_age(now - 7.5 * day, now=now)
    assert S.check_token_age(now - 2 * day, now=now) == pytest.approx(2.0)


@pytest.mark.parametrize("age_days, level, words", [
    (None, "FAIL", "no Schwab token"), (1.0, "OK", "1.0 days old"),
    (6.5, "WARN", "renew before day 7"), (7.5, "FAIL", "expired at 7")])
def test_health_check_reads_the_same_token_rule(cm, monkeypatch, age_days, level, words):
    import health_check
    monkeypatch.setenv("TRADING_MODE", "live")
    if age_days is not None:
        store(cm, age_days=age_days)
    got_level, detail = health_check.check_token()
    assert got_level == level and words in detail
    if level != "OK":
        assert "python trading_api.py login" in detail


def test_missing_credentials_message(cm):
    with pytest.raises(AuthenticationError, match="not configured") as err:
        SchwabAPI(cm)
    assert "store_credentials('schwab'" in str(err.value)
    assert "trading_api.py login" in str(err.value)


def test_missing_token_message(cm):
    cm.store_credentials("schwab", {"app_key": APP_KEY, "app_secret": APP_SECRET})
    with pytest.raises(AuthenticationError, match=r"python trading_api\.py login"):
        SchwabAPI(cm)


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


def test_quotes_with_borrow_and_dividend_fields(api, fake, fixed_now):
    future = (fixed_now.date() + timedelta(days=2)).isoformat()
    past = (fixed_now.date() - timedelta(days=80)).isoformat()
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


def test_price_format():
    assert S.format_price(10) == "10.00"
    assert S.format_price(10.005) == "10.01"
    assert S.format_price(0.12345) == "0.1235"
    assert S.format_price(0.9999) == "0.9999"
