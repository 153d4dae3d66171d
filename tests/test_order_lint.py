"""Issue 22 point 3: our order lint (``order_lint.py``) refuses the shapes Schwab refuses, on
every broker, before the send; Schwab's preview endpoint (schwab-py's real ``preview_order``,
against the fake Schwab on 127.0.0.1) refuses an order before it is placed, through the gateway's
retry rule; the row says why and the audit trail records it."""
from __future__ import annotations

import pytest

import order_lint
import state_db
from audit_recorder import Recorder
from order_lint import OrderLintError
from paper_broker import PaperBroker
from schwab_env import fake_schwab, schwab_home, schwab_routed, store_schwab_credentials  # noqa: F401
from trading_execution import OrderExecutor


def spec(**over) -> dict:
    base = {"symbol": "AAPL", "side": "BUY", "quantity": 10, "order_type": "MARKET", "limit_price": None,
            "client_key": "k"}
    base.update(over)
    return base


@pytest.mark.parametrize("over,rule,words", [
    ({"session": "SEAMLESS"}, "session", "SEAMLESS with a MARKET"),
    ({"session": "OVERNIGHT"}, "session", "overnight"),
    ({"session": "AM"}, "session", "LIMIT orders only"),
    ({"duration": "GOOD_TILL_CANCEL"}, "duration", "DAY only"),
    ({"duration": "FOREVER", "order_type": "LIMIT", "limit_price": 10.0}, "duration", "not one of"),
    ({"quantity": 1.5}, "quantity", "whole shares"),
    ({"quantity": 0}, "quantity", "positive"),
    ({"order_type": "LIMIT", "limit_price": None}, "price", "limit_price is required"),
    ({"order_type": "STOP"}, "price", "stop_price is required"),
    ({"order_type": "STOP_LIMIT", "limit_price": 10.0}, "price", "stop_price is required"),
    ({"order_type": "LIMIT", "limit_price": 12.345}, "price", "$0.01 tick"),
    ({"order_type": "LIMIT", "limit_price": 0.12345}, "price", "$0.0001 tick"),
    ({"order_type": "STOP", "stop_price": 99.999}, "price", "$0.01 tick"),
    ({"limit_price": 10.0}, "price", "MARKET order carries no limit_price"),
])
def test_each_bad_shape_is_refused_naming_its_rule(over, rule, words):
    with pytest.raises(OrderLintError) as err:
        order_lint.check(spec(**over))
    line = str(err.value)
    assert err.value.rule == rule
    assert line.startswith(f"order lint [{rule}]: BUY") and words in line and "\n" not in line


@pytest.mark.parametrize("over", [
    {}, {"order_type": "LIMIT", "limit_price": 12.34}, {"order_type": "LIMIT", "limit_price": 0.1234},
    {"order_type": "LIMIT", "limit_price": 1.0}, {"order_type": "LIMIT", "limit_price": 12.3, "session": "SEAMLESS"},
    {"order_type": "LIMIT", "limit_price": 12.3, "session": "AM", "duration": "GOOD_TILL_CANCEL"},
    {"order_type": "STOP", "stop_price": 95.5, "duration": "GOOD_TILL_CANCEL"},
    {"order_type": "STOP_LIMIT", "stop_price": 95.5, "limit_price": 95.0}, {"quantity": 10.0},
])
def test_shapes_schwab_takes_pass(over):
    assert order_lint.lint_problem(spec(**over)) is None


def test_tick_boundary():
    assert str(order_lint.tick_for(1.0)) == "0.01" and str(order_lint.tick_for(0.9999)) == "0.0001"
    assert order_lint.to_tick(101.23456) == 101.23 and order_lint.to_tick(0.123456) == 0.1235
    assert order_lint.lint_problem(spec(order_type="LIMIT", limit_price=order_lint.to_tick(100 * 1.0037))) is None


# ------------------------------------------------------------------ the executor, paper broker
def paper_executor() -> tuple[OrderExecutor, PaperBroker, Recorder]:
    conn = state_db.connect()
    broker = PaperBroker(conn=conn, prices={"AAPL": 100.0})
    audit = Recorder()
    return OrderExecutor(broker=broker, conn=conn, audit=audit, sleep=lambda s: None), broker, audit


def test_paper_order_off_tick_is_refused_before_the_broker(caplog):
    ex, broker, audit = paper_executor()
    record = ex.submit({"symbol": "AAPL", "side": "BUY", "quantity": 5, "order_type": "LIMIT",
                        "limit_price": 100.005, "price": 100.0}, "2026-11-24")
    assert record["status"] == "REJECTED"
    assert "refused before sending (lint): order lint [price]" in record["error"]
    assert broker.get_open_orders() == [] and broker.get_positions() == {}
    assert not broker.conn.execute("SELECT 1 FROM paper_orders").fetchall()    # nothing reached the broker
    assert any(s == "refused" and d["stage"] == "lint" for _, s, d in audit.events)
    lines = [r.getMessage() for r in caplog.records if "refused before sending" in r.getMessage()]
    assert len(lines) == 1 and "order lint [price]" in lines[0]


def test_paper_order_on_tick_is_sent():
    ex, broker, _ = paper_executor()
    record = ex.submit({"symbol": "AAPL", "side": "BUY", "quantity": 5, "order_type": "LIMIT",
                        "limit_price": 100.5, "price": 100.0}, "2026-11-24")
    assert record["status"] == "SUBMITTED" and broker.get_order(record["broker_order_id"])


# ------------------------------------------------------------------ the Schwab path: previewOrder
def schwab_executor(schwab_home, fake) -> tuple[OrderExecutor, Recorder]:
    from credential_manager import CredentialManager
    from trading_api import SchwabAPI
    store_schwab_credentials(schwab_home)
    api = SchwabAPI(CredentialManager(home=schwab_home, key_dir=schwab_home / "keys"))
    audit = Recorder()
    return OrderExecutor(broker=api, conn=state_db.connect(), audit=audit, sleep=lambda s: None), audit


def market_buy(symbol="AAPL", qty=5) -> dict:
    return {"symbol": symbol, "side": "BUY", "quantity": qty, "order_type": "MARKET", "price": 190.0}


def test_schwab_preview_runs_before_every_order(schwab_routed, schwab_home):
    fake = schwab_routed
    fake.prices["AAPL"] = 190.0
    ex, _ = schwab_executor(schwab_home, fake)
    record = ex.submit(market_buy(), "2026-11-24")
    assert record["status"] == "SUBMITTED"
    assert len(fake.previews) == 1 and len(fake.posted_orders()) == 1
    assert fake.previews[0]["orderLegCollection"] == [{"instruction": "BUY", "quantity": 5, "instrument": {
        "assetType": "EQUITY", "symbol": "AAPL"}}]
    kinds = [r["path"].rsplit("/", 1)[-1] for r in fake.requests if r["method"] == "POST"
             and r["path"].startswith("/trader")]
    assert kinds == ["previewOrder", "orders"]                     # the preview comes first


def test_schwab_preview_reject_refuses_the_order(schwab_routed, schwab_home, caplog):
    fake = schwab_routed
    fake.prices["AAPL"] = 190.0
    fake.reject_preview("AAPL", "Opening transactions for this security are restricted")
    ex, audit = schwab_executor(schwab_home, fake)
    record = ex.submit(market_buy(), "2026-11-24")
    assert record["status"] == "REJECTED" and record["broker_order_id"] is None
    assert "refused before sending (preview)" in record["error"]
    assert "Opening transactions for this security are restricted" in record["error"]
    assert fake.posted_orders() == [] and len(fake.previews) == 1    # previewed, never placed
    assert any(s == "refused" and d["stage"] == "preview" for _, s, d in audit.events)
    lines = [r.getMessage() for r in caplog.records if "refused before sending" in r.getMessage()]
    assert len(lines) == 1 and "BUY 5 AAPL" in lines[0] and "restricted" in lines[0]
    # a rerun of the same order does not send it either: the row is final
    assert ex.submit(market_buy(), "2026-11-24")["status"] == "REJECTED"
    assert fake.posted_orders() == []


def test_schwab_preview_500_is_retried_then_the_order_goes(schwab_routed, schwab_home):
    fake = schwab_routed
    fake.prices["AAPL"] = 190.0
    fake.fail_nth("order_preview", 1, 500)
    ex, _ = schwab_executor(schwab_home, fake)
    record = ex.submit(market_buy(), "2026-11-24")
    assert record["status"] == "SUBMITTED"
    assert fake.kind_counts["order_preview"] == 2 and len(fake.posted_orders()) == 1


def test_schwab_preview_down_sends_nothing(schwab_routed, schwab_home):
    fake = schwab_routed
    fake.prices["AAPL"] = 190.0
    fake.fail_always("order_preview", 503)
    ex, _ = schwab_executor(schwab_home, fake)
    with pytest.raises(Exception, match="preview"):
        ex.submit(market_buy(), "2026-11-24")
    assert fake.posted_orders() == []
    row = ex.book.get(next(iter(r["client_key"] for r in ex.orders_for_cycle("2026-11-24"))))
    assert row["status"] == "INTENDED"


def test_lint_refuses_on_the_schwab_path_before_any_request(schwab_routed, schwab_home):
    fake = schwab_routed
    fake.prices["AAPL"] = 190.0
    ex, _ = schwab_executor(schwab_home, fake)
    record = ex.submit({"symbol": "AAPL", "side": "BUY", "quantity": 5, "order_type": "LIMIT",
                        "limit_price": 190.001, "price": 190.0}, "2026-11-24")
    assert record["status"] == "REJECTED" and "order lint [price]" in record["error"]
    assert fake.previews == [] and fake.posted_orders() == []


def test_flatten_orders_go_when_the_preview_is_unreachable(schwab_routed, schwab_home):
    """An unreachable preview never keeps a position open: flatten's orders (sent under the kill
    switch, ``ignore_halt``) go anyway, audited; a preview reject would still refuse them."""
    fake = schwab_routed
    fake.prices["AAPL"] = 190.0
    fake.fail_always("order_preview", 503)
    ex, audit = schwab_executor(schwab_home, fake)
    record = ex.submit({"symbol": "AAPL", "side": "SELL", "quantity": 5, "order_type": "MARKET", "price": 190.0},
                       "2026-11-24", ignore_halt=True)
    assert record["status"] == "SUBMITTED" and len(fake.posted_orders()) == 1
    assert any(s == "preview_skipped" for _, s, _ in audit.events)
