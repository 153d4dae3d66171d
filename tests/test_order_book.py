"""order_book: the ``orders`` table, its keys and the row's life INTENDED -> SENDING -> SUBMITTED.
In-process against the test's state database."""
import json
import sqlite3

import pytest

import kill_switch
import state_db
from kill_switch import KillSwitchSet
from order_book import INTENDED, SENDING, SUBMITTED, OrderBook, client_key, flatten_key

DAY = "2025-10-06"


def order(symbol="AAPL", side="BUY", qty=10, **extra):
    return {"symbol": symbol, "side": side, "quantity": qty, "price": 100.0, **extra}


@pytest.fixture
def book():
    return OrderBook(state_db.connect())


def test_keys_are_deterministic():
    assert client_key("2025-10-06 00:00:00", "AAPL", "BUY") == client_key(DAY, "AAPL", "BUY") == "2025-10-06:AAPL:BUY"
    assert client_key(DAY, "AAPL", "BUY") != client_key(DAY, "AAPL", "SELL")
    assert flatten_key(DAY, "AAPL", "SELL") == "flatten-2025-10-06-AAPL-SELL"
    assert flatten_key(DAY, "AAPL", "SELL", 2) == "flatten-2025-10-06-AAPL-SELL-2"


def test_intent_is_written_once(book):
    key, new = book.record_intent(order(), DAY, "paper")
    assert (key, new) == (client_key(DAY, "AAPL", "BUY"), True)
    row = book.get(key)
    assert row["status"] == INTENDED and row["quantity"] == 10 and row["order_type"] == "MARKET"
    assert row["reference_price"] == 100.0 and row["broker_order_id"] is None
    assert book.record_intent(order(qty=99), DAY, "paper") == (key, False)
    assert book.get(key)["quantity"] == 10                       # the first intent stays
    assert book.record_intent(order(client_key="mine"), DAY, "paper") == ("mine", True)


def test_intended_sending_submitted(book):
    key, _ = book.record_intent(order(), DAY, "live")
    book.mark_sending(key, {"since": "2025-10-06T00:00:00+00:00", "order_ids": ["1"]})
    row = book.get(key)
    assert row["status"] == SENDING and json.loads(row["snapshot"])["order_ids"] == ["1"]
    book.mark_sending(key, {"since": "later", "order_ids": []})   # SENDING again: a new snapshot
    assert json.loads(book.get(key)["snapshot"])["since"] == "later"
    book.update(key, status=SUBMITTED, broker_order_id="77")
    assert book.get(key)["status"] == SUBMITTED and book.linked_keys() == {"77": key}
    with pytest.raises(RuntimeError, match="another process has it"):
        book.mark_sending(key, {})
    assert book.get(key)["status"] == SUBMITTED


def test_the_check_runs_in_the_sending_transaction(book):
    key, _ = book.record_intent(order(), DAY, "live")
    seen = []
    book.mark_sending(key, {}, check=lambda: seen.append(book.conn.in_transaction))
    assert seen == [True]
    other, _ = book.record_intent(order("MSFT"), DAY, "live")
    kill_switch.halt("stop", book.conn, by="test")
    with pytest.raises(KillSwitchSet):
        book.mark_sending(other, {}, check=lambda: kill_switch.check(book.conn, "order"))
    assert book.get(other)["status"] == INTENDED                  # nothing changed


def test_open_orders_cycle_and_fills(book):
    a, _ = book.record_intent(order("AAPL"), DAY, "live")
    b, _ = book.record_intent(order("MSFT"), DAY, "live")
    c, _ = book.record_intent(order("JPM"), "2025-10-07", "paper")
    f, _ = book.record_intent(order("AAPL", "SELL", client_key=flatten_key(DAY, "AAPL", "SELL")), DAY, "live")
    book.update(a, status="FILLED", broker_order_id="1", filled_quantity=10, avg_fill_price=101.0,
                submitted_at="2025-10-06T15:00:00+00:00")
    book.update(b, status="PARTIALLY_FILLED", broker_order_id="2", filled_quantity=4, avg_fill_price=50.0)
    book.update(f, status=SUBMITTED, broker_order_id="9")
    assert {r["client_key"] for r in book.open_orders()} == {b, c, f}
    assert [r["client_key"] for r in book.for_cycle(DAY)] == [a, b, f]
    assert book.flatten_broker_ids(DAY) == {"9"} and book.flatten_broker_ids("2025-10-07") == set()
    assert book.unfinished_fills("live") == {b: 4, f: 0}
    assert book.client_keys() == {a, b, c, f}
    assert [r["client_key"] for r in book.rows_of_mode("paper")] == [c]
    assert book.last_rowid() == max(r["rowid"] for r in book.rows_of_mode("live") + book.rows_of_mode("paper"))
    fills = book.live_fills()
    assert [(x["order_id"], x["quantity"], x["price"]) for x in fills] == [("1", 10, 101.0), ("2", 4, 50.0)]
    assert [r["client_key"] for r in book.recent(2)] == [f, c]


def test_readers_do_not_create_the_table():
    conn = state_db.connect()
    reader = OrderBook(conn, create=False)
    assert not reader.exists() and reader.live_fills() == []
    assert not reader.exists()
    OrderBook(conn)
    assert reader.exists()


def test_an_old_table_gains_the_snapshot_column():
    path = state_db.db_path()
    old = sqlite3.connect(path)
    old.execute("CREATE TABLE orders (client_key TEXT PRIMARY KEY, cycle_date TEXT NOT NULL, mode TEXT NOT NULL,"
                " symbol TEXT NOT NULL, side TEXT NOT NULL, quantity INTEGER NOT NULL, order_type TEXT NOT NULL,"
                " limit_price REAL, reference_price REAL, reason TEXT, status TEXT NOT NULL, broker_order_id TEXT,"
                " filled_quantity INTEGER NOT NULL DEFAULT 0, avg_fill_price REAL, error TEXT,"
                " created_at TEXT NOT NULL, submitted_at TEXT, updated_at TEXT NOT NULL)")
    old.commit()
    old.close()
    book = OrderBook(state_db.connect())
    key, _ = book.record_intent(order(), DAY, "live")
    book.mark_sending(key, {"since": "x"})
    assert json.loads(book.get(key)["snapshot"]) == {"since": "x"}
