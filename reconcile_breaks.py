"""Reconciliation breaks: what the daily reconciliation with the broker (``reconcile.py``) could
not explain, kept in the state database until a person accepts each one.

* table ``reconcile_breaks``: one row per break (``id``, ``mode``, ``kind``: ``external_trade``,
  ``unexplained``, ``cash_difference``, ``quantity_difference``; ``symbol``, ``quantity``,
  ``cash``, ``detail``, ``found_at``; ``accepted_at``, ``accepted_by``, ``reason`` once accepted).
* ``entry_block(conn)``: the one line that blocks new entries while a break is open (the risk
  manager's halt check reads it: exits stay allowed), naming the break and the command
  ``python live_trading.py reconcile --accept ID --reason ...``.
* ``accept(conn, audit, break_id, reason)``: a person's acceptance, audited first (the audit
  record is required: no acceptance without it), in one transaction.

Light on purpose (layer 3): the risk manager, the status command and the status page read it
without loading the reconciler.
"""
from __future__ import annotations

import sqlite3

import config
import state_db
from errors import UsageError

LAST_RUN_KEY = "reconcile_last_run"       # kv: the last reconciliation (when, mode, counts)
ACCEPT_COMMAND = "python live_trading.py reconcile --accept {id} --reason \"...\""

SCHEMA = [
    """CREATE TABLE IF NOT EXISTS reconcile_breaks (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        mode TEXT NOT NULL,
        kind TEXT NOT NULL,
        symbol TEXT,
        quantity REAL NOT NULL DEFAULT 0,
        cash REAL NOT NULL DEFAULT 0,
        transaction_id TEXT,
        detail TEXT NOT NULL,
        found_at TEXT NOT NULL,
        accepted_at TEXT,
        accepted_by TEXT,
        reason TEXT)""",
]


class ReconcileError(UsageError):
    """A reconciliation command that cannot be done (unknown break, no reason, already accepted):
    a mistake in what a person typed (``errors.UsageError``)."""


def ensure_schema(conn: sqlite3.Connection) -> None:
    state_db.ensure_schema(conn, SCHEMA)


def _has_table(conn: sqlite3.Connection) -> bool:
    return conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'reconcile_breaks'"
                        ).fetchone() is not None


def open_breaks(conn: sqlite3.Connection | None) -> list[dict]:
    """Every break no person has accepted yet, oldest first (none when the table does not exist)."""
    if conn is None or not _has_table(conn):
        return []
    return [dict(r) for r in conn.execute(
        "SELECT * FROM reconcile_breaks WHERE accepted_at IS NULL ORDER BY id")]


def describe(b: dict) -> str:
    """One line for a break: ``#3 external_trade AAPL: ...``."""
    return f"#{b['id']} {b['kind']}{' ' + b['symbol'] if b.get('symbol') else ''}: {b['detail']}"


def entry_block(conn: sqlite3.Connection | None) -> str | None:
    """The reason new entries are blocked (exits are not), or None when no break is open."""
    breaks = open_breaks(conn)
    if not breaks:
        return None
    first = breaks[0]
    more = f" (and {len(breaks) - 1} more: python live_trading.py status)" if len(breaks) > 1 else ""
    return (f"RECONCILIATION BREAK {describe(first)}{more}; check it at the broker, then "
            f"{ACCEPT_COMMAND.format(id=first['id'])}")


def record(conn: sqlite3.Connection, mode: str, kind: str, detail: str, *, symbol: str | None = None,
           quantity: float = 0.0, cash: float = 0.0, transaction_id: str | None = None) -> int:
    """Insert one break (the caller's transaction); returns its id."""
    cur = conn.execute(
        "INSERT INTO reconcile_breaks(mode, kind, symbol, quantity, cash, transaction_id, detail, found_at)"
        " VALUES (?,?,?,?,?,?,?,?)",
        (mode, kind, symbol, float(quantity), float(cash), transaction_id, detail, state_db.utcnow()))
    return int(cur.lastrowid or 0)


def accept(conn: sqlite3.Connection, audit, break_id: int, reason: str, by: str | None = None,
           on_accept=None) -> dict:
    """A person accepts break ``break_id`` with ``reason`` (audited, required). ``on_accept(row)``
    runs in the same transaction (the reconciler moves its book by an accepted difference)."""
    reason = (reason or "").strip()
    if not reason:
        raise ReconcileError("a reason is required: python live_trading.py reconcile --accept ID "
                             "--reason \"what you checked at the broker\"")
    ensure_schema(conn)
    by = by or config.operator()
    with state_db.transaction(conn):
        row = conn.execute("SELECT * FROM reconcile_breaks WHERE id = ?", (int(break_id),)).fetchone()
        if row is None:
            raise ReconcileError(f"no reconciliation break #{break_id}: python live_trading.py status "
                                 f"lists the open ones")
        if row["accepted_at"]:
            raise ReconcileError(f"reconciliation break #{break_id} was already accepted by "
                                 f"{row['accepted_by']} at {row['accepted_at']}")
        b = dict(row)
        audit.log_event("reconcile_break", "accepted", {
            "id": b["id"], "mode": b["mode"], "kind": b["kind"], "symbol": b["symbol"],
            "quantity": b["quantity"], "cash": b["cash"], "detail": b["detail"], "reason": reason, "by": by})
        conn.execute("UPDATE reconcile_breaks SET accepted_at = ?, accepted_by = ?, reason = ? WHERE id = ?",
                     (state_db.utcnow(), by, reason, int(break_id)))
        if on_accept is not None:
            on_accept(b)
    return dict(b, accepted_by=by, reason=reason)


def status(conn: sqlite3.Connection | None) -> dict:
    """What ``status --json`` and the status page show: the open breaks and the last run."""
    last = None
    if conn is not None and conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'kv'").fetchone():
        last = state_db.kv_get(conn, LAST_RUN_KEY)
    return {"open_breaks": open_breaks(conn), "last_run": last}

