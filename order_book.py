"""The order book: our record of every order, the table ``orders`` of the state database.

The one module that reads or writes that table (the executor, recovery, the external-activity
check, P&L and the status page all go through ``OrderBook``), and the home of the order's
idempotency key:

* ``client_key(cycle_date, symbol, side)``: the deterministic key of one intended order (the same
  cycle, symbol and side give the same key, so a rerun finds the row instead of sending again);
  ``flatten_key(session_date, symbol, side, attempt)`` the key of a closing order of ``flatten``.
* A row's life around the send: ``INTENDED`` (written before anything is sent), ``SENDING`` (with
  the snapshot of the broker's recent orders, in the transaction that reads the kill switch),
  ``SUBMITTED`` (with the broker's id), then the broker's statuses (``broker_base``).
* ``UNKNOWN_AT_BROKER``: the broker answered "no such order" (HTTP 404) for the id we hold. Not
  final (a person decides with ``python trading_execution.py resolve``); the order path neither
  polls nor cancels it (``NOT_POLLED``), so every other order is still managed.

Every write is one transaction (``state_db.transaction``). The book never talks to the broker.
"""
from __future__ import annotations

import json
import logging
import sqlite3
from typing import Any, Callable

import state_db
from broker_base import DAY, FINAL_STATUSES, MARKET, OPENING_SIDES

log = logging.getLogger("execution")

INTENDED, SENDING, SUBMITTED = "INTENDED", "SENDING", "SUBMITTED"   # our row around the send
UNKNOWN_AT_BROKER = "UNKNOWN_AT_BROKER"   # the broker does not know our id (404): a person resolves it
TERMINAL = FINAL_STATUSES          # an order record in one of these states is done
NOT_POLLED = TERMINAL | {UNKNOWN_AT_BROKER}   # the order path neither asks the broker about these nor cancels them
FLATTEN_PREFIX = "flatten-"
STOP_PREFIX = "stop-"
RETRY_SUFFIX = ":retry"      # the one retry per session of a collared order the fill timeout cancelled
# what a row is for (column ``kind``): a cycle's entry or exit, a closing order of ``flatten``, or
# a protective stop resting at the broker (issue 22: one GTC stop per position, ``protective_stops.py``)
ENTRY, EXIT, FLATTEN, STOP_KIND = "entry", "exit", "flatten", "stop"
KINDS = (ENTRY, EXIT, FLATTEN, STOP_KIND)

SCHEMA = [
    """CREATE TABLE IF NOT EXISTS orders (
        client_key TEXT PRIMARY KEY,
        cycle_date TEXT NOT NULL,
        mode TEXT NOT NULL,
        symbol TEXT NOT NULL,
        side TEXT NOT NULL,
        quantity INTEGER NOT NULL,
        order_type TEXT NOT NULL,
        limit_price REAL,
        reference_price REAL,
        reason TEXT,
        status TEXT NOT NULL,
        broker_order_id TEXT,
        filled_quantity INTEGER NOT NULL DEFAULT 0,
        avg_fill_price REAL,
        error TEXT,
        created_at TEXT NOT NULL,
        submitted_at TEXT,
        updated_at TEXT NOT NULL,
        snapshot TEXT,
        kind TEXT,
        stop_price REAL,
        duration TEXT
    )""",
    "CREATE INDEX IF NOT EXISTS orders_by_cycle ON orders(cycle_date)",
    "CREATE INDEX IF NOT EXISTS orders_by_broker_id ON orders(broker_order_id)",
]
# columns added after the first release: (column, declaration)
_ADDED_COLUMNS = [("snapshot", "TEXT"), ("kind", "TEXT"), ("stop_price", "REAL"), ("duration", "TEXT")]
# rows written before ``kind`` existed get it from their key and side (the migration runs it once)
_BACKFILL_KIND = (f"UPDATE orders SET kind = CASE WHEN client_key LIKE '{FLATTEN_PREFIX}%' THEN '{FLATTEN}' "
                  f"WHEN side IN ({', '.join(repr(s) for s in sorted(OPENING_SIDES))}) THEN '{ENTRY}' "
                  f"ELSE '{EXIT}' END WHERE kind IS NULL")

Record = dict[str, Any]


def client_key(cycle_date, symbol: str, side: str) -> str:
    """Deterministic key of one intended order: the same cycle, symbol and side -> the same key."""
    return f"{str(cycle_date)[:10]}:{symbol}:{side}"


def flatten_key(session_date, symbol: str, side: str, attempt: int = 1) -> str:
    """Key of a closing order of ``flatten``: stable per session date, symbol and side, so a rerun
    finds it; ``attempt`` > 1 only after the earlier one ended (cancelled, rejected) unfilled."""
    base = f"{FLATTEN_PREFIX}{str(session_date)[:10]}-{symbol}-{side}"
    return base if attempt == 1 else f"{base}-{attempt}"


def stop_key(session_date, symbol: str, side: str, attempt: int = 1) -> str:
    """Key of a protective stop placed in one session: ``stop-YYYY-MM-DD-SYMBOL-SIDE[-n]``; ``n`` > 1
    when an earlier stop of that session was replaced (the position's size changed)."""
    base = f"{STOP_PREFIX}{str(session_date)[:10]}-{symbol}-{side}"
    return base if attempt == 1 else f"{base}-{attempt}"


def kind_of(order: dict) -> str:
    """The ``kind`` of an order dict: its own, else flatten's by key, else entry (BUY, SELL_SHORT)
    or exit (SELL, BUY_TO_COVER)."""
    if order.get("kind"):
        return str(order["kind"])
    if str(order.get("client_key") or "").startswith(FLATTEN_PREFIX):
        return FLATTEN
    return ENTRY if order["side"] in OPENING_SIDES else EXIT


def ensure_schema(conn: sqlite3.Connection) -> None:
    """Create the table, and add the columns newer than an existing database (one transaction,
    so two processes migrating at once do not collide)."""
    state_db.ensure_schema(conn, SCHEMA[:1])
    if _missing_columns(conn):
        with state_db.transaction(conn):
            for column, decl in _missing_columns(conn):
                conn.execute(f"ALTER TABLE orders ADD COLUMN {column} {decl}")
                log.info("state database: added column %s.%s", "orders", column)
            conn.execute(_BACKFILL_KIND)
    state_db.ensure_schema(conn, SCHEMA[1:])


def _missing_columns(conn: sqlite3.Connection) -> list[tuple[str, str]]:
    have = {r["name"] for r in conn.execute("PRAGMA table_info(orders)")}
    return [c for c in _ADDED_COLUMNS if c[0] not in have]


class OrderBook:
    """Every read and write of the ``orders`` table. ``create=False`` for readers that must not
    create it (P&L, the status page): their reads find no rows when it does not exist yet."""

    def __init__(self, conn: sqlite3.Connection, *, create: bool = True):
        self.conn = conn
        if create:
            ensure_schema(conn)

    def exists(self) -> bool:
        return self.conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'orders'"
                                 ).fetchone() is not None

    # -- one row
    def get(self, key: str) -> Record | None:
        row = self.conn.execute("SELECT * FROM orders WHERE client_key = ?", (key,)).fetchone()
        return dict(row) if row else None

    def update(self, key: str, **fields) -> None:
        """Set ``fields`` (and ``updated_at``) of one row, in one transaction."""
        fields["updated_at"] = state_db.utcnow()
        cols = ", ".join(f"{k} = ?" for k in fields)
        with state_db.transaction(self.conn):
            self.conn.execute(f"UPDATE orders SET {cols} WHERE client_key = ?", (*fields.values(), key))

    def record_intent(self, order: dict, cycle_date, mode: str) -> tuple[str, bool]:
        """Write the order as ``INTENDED`` before it is sent. Returns (key, new?): an existing row
        with the same key is left as it is."""
        key = order.get("client_key") or client_key(cycle_date, order["symbol"], order["side"])
        now = state_db.utcnow()
        with state_db.transaction(self.conn):
            cur = self.conn.execute(
                "INSERT OR IGNORE INTO orders(client_key, cycle_date, mode, symbol, side, quantity,"
                " order_type, limit_price, reference_price, reason, status, created_at, updated_at,"
                " kind, stop_price, duration)"
                " VALUES(?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (key, str(cycle_date)[:10], mode, order["symbol"], order["side"], int(order["quantity"]),
                 order.get("order_type", MARKET), order.get("limit_price"), order.get("price"),
                 order.get("reason"), INTENDED, now, now, kind_of(dict(order, client_key=key)),
                 order.get("stop_price"), order.get("duration") or DAY))
        return key, cur.rowcount == 1

    def mark_sending(self, key: str, snapshot: dict, check: Callable[[], None] | None = None) -> None:
        """INTENDED (or SENDING) -> SENDING with the snapshot, in one transaction that first runs
        ``check`` (the kill switch: a halt committed before it stops the order; one committed
        after it comes too late for this order only). ``RuntimeError`` when another process has
        the row."""
        with state_db.transaction(self.conn):
            if check is not None:
                check()
            cur = self.conn.execute(
                "UPDATE orders SET status = ?, snapshot = ?, error = NULL, updated_at = ? "
                "WHERE client_key = ? AND status IN (?, ?)",
                (SENDING, json.dumps(snapshot), state_db.utcnow(), key, INTENDED, SENDING))
            if cur.rowcount != 1:
                raise RuntimeError(f"order {key} is no longer INTENDED: another process has it")

    # -- many rows
    def for_cycle(self, cycle_date) -> list[Record]:
        rows = self.conn.execute("SELECT * FROM orders WHERE cycle_date = ? ORDER BY created_at",
                                 (str(cycle_date)[:10],)).fetchall()
        return [dict(r) for r in rows]

    def open_orders(self) -> list[Record]:
        """Every row not in a final status (``INTENDED`` and ``SENDING`` included)."""
        marks = ",".join("?" * len(TERMINAL))
        rows = self.conn.execute(f"SELECT * FROM orders WHERE status NOT IN ({marks})", tuple(TERMINAL)).fetchall()
        return [dict(r) for r in rows]

    def stops(self, open_only: bool = True) -> list[Record]:
        """Protective stop rows (``kind`` stop), oldest first; ``open_only``: not in a final status
        (INTENDED, SENDING and UNKNOWN_AT_BROKER included)."""
        marks = ",".join("?" * len(TERMINAL))
        where = f" AND status NOT IN ({marks})" if open_only else ""
        rows = self.conn.execute(f"SELECT * FROM orders WHERE kind = ?{where} ORDER BY created_at, rowid",
                                 (STOP_KIND, *(TERMINAL if open_only else ()))).fetchall()
        return [dict(r) for r in rows]

    def _knows_stops(self) -> bool:
        """The table exists with its ``kind`` column (a reader's database may predate both)."""
        return self.exists() and not any(c == "kind" for c, _ in _missing_columns(self.conn))

    def fired_stops(self, limit: int = 20) -> list[Record]:
        """Protective stops the broker filled (in part or whole), newest first."""
        if not self._knows_stops():
            return []
        rows = self.conn.execute("SELECT * FROM orders WHERE kind = ? AND filled_quantity > 0 "
                                 "ORDER BY updated_at DESC LIMIT ?", (STOP_KIND, limit)).fetchall()
        return [dict(r) for r in rows]

    def resting_stops(self) -> list[Record]:
        """Protective stops working at the broker (linked, not final), for the status page."""
        if not self._knows_stops():
            return []
        return [r for r in self.stops() if r["broker_order_id"] and r["status"] not in NOT_POLLED]

    def linked_keys(self) -> dict[str, str]:
        """{broker order id: our client key} for every row that has a broker id."""
        return {str(r["broker_order_id"]): r["client_key"] for r in self.conn.execute(
            "SELECT client_key, broker_order_id FROM orders WHERE broker_order_id IS NOT NULL")}

    def client_keys(self) -> set[str]:
        return {r["client_key"] for r in self.conn.execute("SELECT client_key FROM orders")}

    def flatten_broker_ids(self, session_date) -> set[str]:
        """The broker ids of ``flatten``'s closing orders of one session."""
        return {str(r["broker_order_id"]) for r in self.conn.execute(
            "SELECT broker_order_id FROM orders WHERE client_key LIKE ? AND broker_order_id IS NOT NULL",
            (f"{FLATTEN_PREFIX}{str(session_date)[:10]}-%",))}

    # -- what the external-activity check compares with the broker
    def rows_of_mode(self, mode: str) -> list[Record]:
        """Every row of ``mode`` with its ``rowid`` (the order rows were written in)."""
        return [dict(r) for r in self.conn.execute("SELECT rowid, * FROM orders WHERE mode = ?", (mode,))]

    def unfinished_fills(self, mode: str) -> dict[str, int]:
        """{client key: filled quantity} of the rows of ``mode`` not in a final status."""
        marks = ",".join("?" * len(TERMINAL))
        return {r["client_key"]: int(r["filled_quantity"]) for r in self.conn.execute(
            f"SELECT client_key, filled_quantity FROM orders WHERE mode = ? AND status NOT IN ({marks})",
            (mode, *TERMINAL))}

    def last_rowid(self) -> int:
        return int(self.conn.execute("SELECT COALESCE(MAX(rowid), 0) AS n FROM orders").fetchone()["n"])

    # -- readers: P&L and the status page
    def live_fills(self) -> list[Record]:
        """Live fills, oldest first, as ``pnl.fills`` lists them: one per order at its
        ``avg_fill_price`` for its ``filled_quantity`` (commission unknown: 0)."""
        if not self.exists():
            return []
        rows = self.conn.execute(
            "SELECT COALESCE(broker_order_id, client_key) AS order_id, symbol, side, "
            "filled_quantity AS quantity, avg_fill_price AS price, 0.0 AS commission, "
            "cycle_date AS trade_date, COALESCE(submitted_at, updated_at) AS filled_at FROM orders "
            "WHERE mode = 'live' AND filled_quantity > 0 AND avg_fill_price IS NOT NULL "
            "ORDER BY COALESCE(submitted_at, created_at), client_key").fetchall()
        return [dict(r) for r in rows]

    def recent(self, n: int) -> list[Record]:
        """The ``n`` newest rows, newest first."""
        rows = self.conn.execute("SELECT * FROM orders ORDER BY created_at DESC, client_key DESC LIMIT ?",
                                 (n,)).fetchall()
        return [dict(r) for r in rows]
