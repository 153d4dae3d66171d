"""external_activity.ExternalActivity built from its collaborators (order book, gateway, audit,
refresh): orders and position changes that are not ours are reported, never adopted.
In-process with a fake broker (tests/fake_broker.py)."""
import logging

import pytest

import state_db
from audit_recorder import Recorder
from external_activity import ExternalActivity
from fake_broker import FakeBroker
from trading_execution import OrderExecutor

DAY = "2025-10-06"


@pytest.fixture
def broker():
    return FakeBroker()


@pytest.fixture
def executor(broker):
    return OrderExecutor(broker=broker, conn=state_db.connect(), audit=Recorder(), sleep=lambda s: None)


def activity(executor):
    """A fresh ExternalActivity on the executor's book and gateway (what a new process builds)."""
    return ExternalActivity(executor.book, executor.gateway, Recorder(), executor.refresh)


def buy(symbol="AAPL", qty=10):
    return {"symbol": symbol, "side": "BUY", "quantity": qty, "price": 100.0}


def test_someone_elses_order_is_reported_ours_is_not(executor, broker, caplog):
    ours = executor.submit(buy(), DAY, "live")
    theirs = broker.add_order("MSFT", "SELL", 3)
    ext = activity(executor)
    with caplog.at_level(logging.WARNING, logger="execution"):
        found = ext.report("live")
    assert [o["order_id"] for o in found["orders"]] == [theirs]
    assert ours["broker_order_id"] != theirs
    assert f"EXTERNAL ORDER at the broker, not ours: id {theirs} SELL 3 MSFT" in caplog.text
    assert ext.audit.has("external_order", "found")
    assert broker.orders[theirs]["status"] == "WORKING"            # never cancelled
    assert executor.book.linked_keys() == {ours["broker_order_id"]: ours["client_key"]}   # never adopted


def test_an_open_one_is_reported_every_time_a_finished_one_once(executor, broker):
    working = broker.add_order("MSFT", "SELL", 3)
    done = broker.add_order("JPM", "BUY", 1, status="FILLED")
    assert {o["order_id"] for o in activity(executor).report("live")["orders"]} == {working, done}
    assert [o["order_id"] for o in activity(executor).report("live")["orders"]] == [working]


def test_a_broker_that_keeps_client_keys_recognises_ours_by_key():
    broker = FakeBroker(keeps_client_key=True)
    ex = OrderExecutor(broker=broker, conn=state_db.connect(), audit=Recorder(), sleep=lambda s: None)
    ex.book.record_intent(buy(), DAY, "paper")
    broker.add_order("AAPL", "BUY", 10, client_key="2025-10-06:AAPL:BUY")   # ours, link lost
    assert activity(ex).report("paper")["orders"] == []


def test_no_baseline_no_position_check(executor, broker):
    broker.positions["AAPL"] = 5
    found = activity(executor).report("live")
    assert found["positions"] == [] and found["baseline"] is None


def test_position_change_not_explained_by_our_fills(executor, broker, caplog):
    first = executor.submit(buy("AAPL", 10), DAY, "live")
    broker.fill(first["broker_order_id"], 100.0, quantity=4)          # partly filled at the close
    activity(executor).record_positions(DAY, "live")
    broker.fill(first["broker_order_id"], 100.0, quantity=10)         # the rest fills later: ours
    second = executor.submit(buy("MSFT", 2), "2025-10-07", "live")    # a new order of ours, filled
    broker.fill(second["broker_order_id"])
    broker.positions["JPM"] = -7                                      # someone else's trade
    broker.positions["AAPL"] += 1
    ext = activity(executor)
    with caplog.at_level(logging.WARNING, logger="execution"):
        found = ext.report("live")
    # AAPL: 4 at the baseline, +6 of ours since, +1 not ours; MSFT: ours, explained
    assert found["positions"] == [
        {"symbol": "AAPL", "expected": 10, "actual": 11, "difference": 1},
        {"symbol": "JPM", "expected": 0, "actual": -7, "difference": -7}]
    assert "EXTERNAL POSITION CHANGE JPM: the broker holds -7, our records explain +0" in caplog.text
    assert ext.audit.has("external_position", "found") and found["baseline"]


def test_record_positions_stores_the_baseline(executor, broker):
    broker.positions.update({"AAPL": 3, "MSFT": 0})
    assert activity(executor).record_positions(DAY, "live") == {"AAPL": 3}
    row = executor.conn.execute("SELECT * FROM position_records WHERE mode = 'live'").fetchone()
    assert row["cycle_date"] == DAY and row["order_rowid"] == executor.book.last_rowid()
    assert activity(executor).report("live")["positions"] == []
