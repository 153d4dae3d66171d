"""Broker activity that is not ours: orders someone else placed and position changes our
fills do not explain. Reported, never adopted, cancelled or traded against.

* ``report(mode)`` (``OrderExecutor.external_activity``, after ``reconcile``) lists the broker's
  orders of the snapshot window and every open one that no row of ours is linked to (by broker id, or by client key
  where the broker has one): ``EXTERNAL ORDER`` at WARNING and an ``external_order`` audit
  record each, when new or still open.
* ``record_positions(cycle_date, mode)`` at the end of a cycle stores the broker's positions and
  what each unfinished order of ours had filled (table ``position_records``); the next
  ``report`` compares the broker's quantities with that baseline plus our fills since:
  ``EXTERNAL POSITION CHANGE`` at WARNING and an ``external_position`` audit record each.

``ExternalActivity`` receives its collaborators in its constructor: the order book
(``order_book.OrderBook``, the ``orders`` table), the broker gateway
(``broker_gateway.BrokerGateway``), the audit trail and ``refresh`` (the executor's: ask the
broker for an order's state and store it). ``trading_execution.OrderExecutor`` builds one and
delegates ``external_activity`` and ``record_positions`` to it.
"""
from __future__ import annotations

import json
import logging
from datetime import timezone

import sqlite3
from typing import Any, Callable

import clock_sanity
import constants as C
import state_db
from broker_base import OPEN_STATUSES, signed_quantity
from broker_gateway import BrokerGateway
from order_book import OrderBook

log = logging.getLogger("execution")

EXTERNAL_REPORTED_KEY = "external_orders_reported"
UTC = timezone.utc

SCHEMA = [
    # the broker's positions at the end of the last cycle, per mode, with what our orders had filled
    """CREATE TABLE IF NOT EXISTS position_records (
        mode TEXT PRIMARY KEY,
        cycle_date TEXT NOT NULL,
        recorded_at TEXT NOT NULL,
        positions TEXT NOT NULL,
        fills TEXT NOT NULL,
        order_rowid INTEGER NOT NULL
    )""",
]


def ensure_schema(conn: sqlite3.Connection) -> None:
    state_db.ensure_schema(conn, SCHEMA)


class ExternalActivity:
    """What is at the broker and not ours (see the module docstring)."""

    def __init__(self, book: OrderBook, gateway: BrokerGateway, audit, refresh: Callable[[str], Any]):
        self.book = book
        self.conn = book.conn
        self.gateway = gateway
        self.audit = audit
        self.refresh = refresh
        ensure_schema(self.conn)

    def report(self, mode: str) -> dict:
        """Broker orders and position changes that are not ours. Call it after ``reconcile()``.

        Orders: those entered within ``ORDER_SNAPSHOT_LOOKBACK_S`` or still open that no row of ours
        is linked to (by broker id, or by client key where the broker has one); reported when new
        or still open. Positions: the broker's quantity against the last ``record_positions`` plus
        our fills since. Each is logged at WARNING and audited; none is adopted, cancelled or traded
        against. Returns ``{"orders": [...], "positions": [{symbol, expected, actual, difference}],
        "baseline": recorded_at or None}``."""
        listed = self.gateway.recent_and_open_orders(
            clock_sanity.window_start(self.gateway.broker.server_time, C.ORDER_SNAPSHOT_LOOKBACK_S))
        external = [o for oid, o in listed.items() if not self.is_ours(oid, o.get("client_key"))]
        reported = set(state_db.kv_get(self.conn, EXTERNAL_REPORTED_KEY, []))
        new = [o for o in external if o["status"] in OPEN_STATUSES or str(o["order_id"]) not in reported]
        for o in new:
            log.warning("EXTERNAL ORDER at the broker, not ours: id %s %s %d %s %s (%s, entered %s): "
                        "not adopted, cancelled or traded against; ask who placed it",
                        o["order_id"], o["side"], o["quantity"], o["symbol"], o.get("order_type"),
                        o["status"], o.get("entered_time"))
            self.audit.log_event("external_order", "found", {
                "order_id": str(o["order_id"]), "symbol": o["symbol"], "side": o["side"],
                "quantity": o["quantity"], "order_type": o.get("order_type"), "status": o["status"],
                "entered_time": str(o.get("entered_time"))})
        with state_db.transaction(self.conn):
            state_db.kv_set(self.conn, EXTERNAL_REPORTED_KEY,
                            sorted(str(o["order_id"]) for o in external))
        diffs, baseline = self._position_differences(mode)
        for d in diffs:
            log.warning("EXTERNAL POSITION CHANGE %s: the broker holds %+d, our records explain %+d "
                        "(difference %+d since the end of cycle %s): not traded against; ask who "
                        "traded it", d["symbol"], d["actual"], d["expected"], d["difference"],
                        baseline["cycle_date"])
            self.audit.log_event("external_position", "found", dict(d, since=baseline["recorded_at"]))
        return {"orders": new, "positions": diffs,
                "baseline": baseline["recorded_at"] if baseline else None}

    def is_ours(self, broker_order_id, client_key: str | None = None) -> bool:
        """The one rule of what is ours: a broker order is ours when a row of the orders table is
        linked to it by broker id, or by client key where the broker has one (the order report
        and the reconciliation's TRADE transactions both ask this)."""
        if broker_order_id not in (None, "") and str(broker_order_id) in self.book.linked_keys():
            return True
        return bool(client_key) and client_key in self.book.client_keys()

    def _position_differences(self, mode: str):
        row = self.conn.execute("SELECT * FROM position_records WHERE mode = ?", (mode,)).fetchone()
        if row is None:
            log.info("no end-of-cycle positions recorded yet for %s: the position check starts "
                     "after this cycle's record_positions", mode)
            return [], None
        self._refresh_unfinished(mode)
        expected = {s: int(q) for s, q in json.loads(row["positions"]).items()}
        fills_then = json.loads(row["fills"])
        for r in self.book.rows_of_mode(mode):
            if r["rowid"] > row["order_rowid"]:
                delta = int(r["filled_quantity"])
            elif r["client_key"] in fills_then:
                delta = int(r["filled_quantity"]) - int(fills_then[r["client_key"]])
            else:
                continue
            if delta:
                expected[r["symbol"]] = expected.get(r["symbol"], 0) + signed_quantity(r["side"], delta)
        actual = {s: int(p["quantity"]) for s, p in self.gateway.positions().items()}
        diffs = [{"symbol": s, "expected": expected.get(s, 0), "actual": actual.get(s, 0),
                  "difference": actual.get(s, 0) - expected.get(s, 0)}
                 for s in sorted(set(expected) | set(actual)) if actual.get(s, 0) != expected.get(s, 0)]
        return diffs, dict(row)

    def _refresh_unfinished(self, mode: str) -> None:
        for record in self.book.open_orders():
            if record["mode"] == mode and record["broker_order_id"]:
                self.refresh(record["client_key"])

    def record_positions(self, cycle_date, mode: str) -> dict:
        """At the end of a cycle: store the broker's positions and what each unfinished order of
        ours had filled, the baseline of the next ``external_activity``."""
        self._refresh_unfinished(mode)
        positions = {s: int(p["quantity"]) for s, p in self.gateway.positions().items()
                     if int(p["quantity"])}
        fills = self.book.unfinished_fills(mode)
        with state_db.transaction(self.conn):
            top = self.book.last_rowid()           # the same transaction: rows after it are new
            self.conn.execute(
                "INSERT INTO position_records(mode, cycle_date, recorded_at, positions, fills, order_rowid)"
                " VALUES(?,?,?,?,?,?) ON CONFLICT(mode) DO UPDATE SET cycle_date = excluded.cycle_date,"
                " recorded_at = excluded.recorded_at, positions = excluded.positions,"
                " fills = excluded.fills, order_rowid = excluded.order_rowid",
                (mode, str(cycle_date)[:10], state_db.utcnow(), json.dumps(positions), json.dumps(fills), top))
        log.info("end-of-cycle positions recorded (%s): %s", mode,
                 ", ".join(f"{s} {q:+d}" for s, q in sorted(positions.items())) or "flat")
        return positions
