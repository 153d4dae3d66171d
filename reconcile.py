"""The daily reconciliation with the broker: every change of cash and quantity since the last
reconciliation explained from the broker's transactions, the rest a break a person accepts.

``Reconciler(book, gateway, audit, external).run(mode)`` (after each cycle, once orders are
managed, and ``python live_trading.py reconcile``):

1. reads the broker's transactions since the last run (``get_transactions``, through the
   gateway's retry rule; ``RECONCILE_LOOKBACK_DAYS`` before the last run, transactions already
   seen skipped) and its cash and positions;
2. classifies each new transaction (``classify``): ``our_fill`` (a TRADE of an order in our
   orders table, by ``external_activity.ExternalActivity.is_ours``), ``dividend``, ``interest``,
   ``split``, ``fee``, ``journal`` (cash or shares moved in or out), ``external_trade`` (a TRADE
   that is not ours), ``unexplained`` (anything else that moves cash or shares), ``memo`` (moves
   nothing);
3. moves its book (cash and positions as of the last run) by every new transaction and compares
   it with what the broker reports now: a cash difference above ``RECONCILE_CASH_TOLERANCE`` or
   any quantity difference is a break too.

Breaks (``external_trade``, ``unexplained``, ``cash_difference``, ``quantity_difference``) go to
``reconcile_breaks`` (table ``reconcile_breaks``): logged ``RECONCILIATION BREAK`` at ERROR,
audited (``reconcile_break`` found), alerted (``reconcile_break``); they block new entries until
a person accepts them (``reconcile_breaks.accept``; an accepted difference moves the book by it).
The first run records the book and the transactions then listed as already reflected.
State in the state database: ``reconcile_book`` (per mode), ``reconcile_transactions`` (every
transaction seen and its kind).
"""
from __future__ import annotations

import json
import logging
import sqlite3
from datetime import datetime, timedelta

import alerts

import clock_sanity
import constants as C
import reconcile_breaks
import state_db
from broker_base import parse_time
from broker_gateway import BrokerGateway
from external_activity import ExternalActivity
from order_book import OrderBook
from portfolio import money

log = logging.getLogger("execution")

OUR_FILL, EXTERNAL_TRADE, DIVIDEND, INTEREST, SPLIT, FEE, JOURNAL, UNEXPLAINED, MEMO = (
    "our_fill", "external_trade", "dividend", "interest", "split", "fee", "journal", "unexplained", "memo")
BREAK_KINDS = frozenset({EXTERNAL_TRADE, UNEXPLAINED})     # a transaction of these kinds is a break
CASH_DIFFERENCE, QUANTITY_DIFFERENCE = "cash_difference", "quantity_difference"
# Schwab's transaction types that move cash in or out of the account (schwab-py
# Client.Transactions.TransactionType): a deposit, a withdrawal or a journal between accounts
CASH_MOVES = frozenset({"JOURNAL", "ACH_RECEIPT", "ACH_DISBURSEMENT", "CASH_RECEIPT",
                        "CASH_DISBURSEMENT", "ELECTRONIC_FUND", "WIRE_IN", "WIRE_OUT"})

SCHEMA = [
    """CREATE TABLE IF NOT EXISTS reconcile_book (
        mode TEXT PRIMARY KEY,
        cash REAL NOT NULL,
        positions TEXT NOT NULL,
        reconciled_at TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS reconcile_transactions (
        mode TEXT NOT NULL,
        transaction_id TEXT NOT NULL,
        type TEXT NOT NULL,
        kind TEXT NOT NULL,
        symbol TEXT,
        quantity TEXT NOT NULL,
        cash REAL NOT NULL,
        at TEXT,
        seen_at TEXT NOT NULL,
        PRIMARY KEY (mode, transaction_id))""",
]


def ensure_schema(conn: sqlite3.Connection) -> None:
    state_db.ensure_schema(conn, SCHEMA)
    reconcile_breaks.ensure_schema(conn)


def classify(txn: dict, is_ours) -> str:
    """The kind of one broker transaction (``broker_base`` shape: ``type``, ``description``,
    ``order_id``, ``quantity`` {symbol: signed shares}, ``cash``, ``fee``). ``is_ours(order_id)``:
    whether a TRADE's order is in our orders table."""
    kind = str(txn.get("type") or "").upper()
    text = str(txn.get("description") or "").upper()
    moves_shares = any(int(round(q)) for q in (txn.get("quantity") or {}).values())
    moves_cash = abs(float(txn.get("cash") or 0.0)) > 0.0
    if kind == "TRADE":
        return OUR_FILL if is_ours(txn.get("order_id")) else EXTERNAL_TRADE
    if kind == "DIVIDEND_OR_INTEREST":
        return INTEREST if "INTEREST" in text or not txn.get("symbol") else DIVIDEND
    if kind == "RECEIVE_AND_DELIVER":
        return SPLIT if "SPLIT" in text else UNEXPLAINED
    if not moves_shares and moves_cash and (txn.get("fee") or " FEE" in f" {text}"):
        return FEE
    if kind in CASH_MOVES and not moves_shares:
        return JOURNAL
    if not moves_shares and not moves_cash:
        return MEMO
    return UNEXPLAINED


class Reconciler:
    """The reconciliation (see the module docstring); collaborators given in the constructor."""

    def __init__(self, book: OrderBook, gateway: BrokerGateway, audit, external: ExternalActivity):
        self.book = book
        self.conn = book.conn
        self.gateway = gateway
        self.audit = audit
        self.external = external
        ensure_schema(self.conn)

    # ------------------------------------------------------------------ the book
    def _book(self, mode: str) -> dict | None:
        row = self.conn.execute("SELECT * FROM reconcile_book WHERE mode = ?", (mode,)).fetchone()
        if row is None:
            return None
        return {"cash": float(row["cash"]), "positions": {s: int(q) for s, q in json.loads(row["positions"]).items()},
                "reconciled_at": row["reconciled_at"]}

    def _save_book(self, mode: str, cash: float, positions: dict, at: str) -> None:
        self.conn.execute(
            "INSERT INTO reconcile_book(mode, cash, positions, reconciled_at) VALUES (?,?,?,?) "
            "ON CONFLICT(mode) DO UPDATE SET cash = excluded.cash, positions = excluded.positions, "
            "reconciled_at = excluded.reconciled_at",
            (mode, round(cash, 6), json.dumps({s: q for s, q in sorted(positions.items()) if q}), at))

    def _seen(self, mode: str) -> set[str]:
        return {r["transaction_id"] for r in self.conn.execute(
            "SELECT transaction_id FROM reconcile_transactions WHERE mode = ?", (mode,))}

    def _window(self, book: dict | None) -> tuple[datetime, datetime]:
        server = self.gateway.broker.server_time
        start = clock_sanity.window_start(server, 0.0)
        if book is not None:
            start = min(start, parse_time(book["reconciled_at"]) or start)
        return (start - timedelta(days=int(C.RECONCILE_LOOKBACK_DAYS)),
                clock_sanity.window_end(server))

    # ------------------------------------------------------------------ the run
    def run(self, mode: str) -> dict:
        """Reconcile once; returns ``{"mode", "first", "explained": [...], "breaks": [...],
        "open_breaks": n}`` (``breaks``: the ones found by this run)."""
        book = self._book(mode)
        start, end = self._window(book)
        transactions = self.gateway.transactions(start, end)
        balance = self.gateway.get_account_balance()
        positions = {s: int(p["quantity"]) for s, p in self.gateway.positions().items() if int(p["quantity"])}
        cash = float(balance.get("cash") or 0.0)
        now = state_db.utcnow()
        seen = self._seen(mode)
        new = [t for t in transactions if str(t["id"]) not in seen]
        explained: list[dict] = []
        found: list[dict] = []
        with state_db.transaction(self.conn):
            for t in new:
                kind = classify(t, self.external.is_ours) if book is not None else "before_first_run"
                self.conn.execute(
                    "INSERT OR IGNORE INTO reconcile_transactions(mode, transaction_id, type, kind, symbol,"
                    " quantity, cash, at, seen_at) VALUES (?,?,?,?,?,?,?,?,?)",
                    (mode, str(t["id"]), t["type"], kind, t.get("symbol"), json.dumps(t.get("quantity") or {}),
                     float(t.get("cash") or 0.0), str(t.get("time") or ""), now))
                if book is None:
                    continue
                explained.append(dict(t, kind=kind))
                if kind in BREAK_KINDS:
                    found.append(self._break(mode, kind, _transaction_line(t, kind), symbol=t.get("symbol"),
                                             quantity=_total_quantity(t), cash=float(t.get("cash") or 0.0),
                                             transaction_id=str(t["id"])))
            if book is None:
                self._save_book(mode, cash, positions, now)
            else:
                expected_cash = book["cash"] + sum(float(t.get("cash") or 0.0) for t in new)
                expected = dict(book["positions"])
                for t in new:
                    for s, q in (t.get("quantity") or {}).items():
                        expected[s] = expected.get(s, 0) + int(round(q))
                found += self._differences(mode, expected_cash, expected, cash, positions)
                # the book follows the broker's transactions; a difference moves it only when accepted
                self._save_book(mode, expected_cash, expected, now)
            summary = {"mode": mode, "at": now, "first": book is None, "transactions": len(new),
                       "breaks": len(found)}
            state_db.kv_set(self.conn, reconcile_breaks.LAST_RUN_KEY, summary)
        self._report(mode, book is None, explained, found)
        return {"mode": mode, "first": book is None, "explained": explained, "breaks": found,
                "open_breaks": len(reconcile_breaks.open_breaks(self.conn))}

    def _differences(self, mode, expected_cash, expected, cash, positions) -> list[dict]:
        out = []
        gap = cash - expected_cash
        if abs(gap) > float(C.RECONCILE_CASH_TOLERANCE):
            out.append(self._break(mode, CASH_DIFFERENCE,
                                   f"the broker reports cash {money(cash)}, its transactions explain "
                                   f"{money(expected_cash)} (difference {money(gap, signed=True)})", cash=gap))
        for s in sorted(set(expected) | set(positions)):
            diff = positions.get(s, 0) - expected.get(s, 0)
            if diff:
                out.append(self._break(mode, QUANTITY_DIFFERENCE,
                                       f"the broker holds {positions.get(s, 0):+d}, its transactions "
                                       f"explain {expected.get(s, 0):+d} (difference {diff:+d})",
                                       symbol=s, quantity=diff))
        return out

    def _break(self, mode: str, kind: str, detail: str, **fields) -> dict:
        break_id = reconcile_breaks.record(self.conn, mode, kind, detail, **fields)
        return dict(fields, id=break_id, mode=mode, kind=kind, detail=detail)

    def _report(self, mode: str, first: bool, explained: list[dict], found: list[dict]) -> None:
        if first:
            log.info("reconciliation (%s): first run, the broker's cash and positions recorded as the "
                     "starting point", mode)
            self.audit.log_event("reconcile", "baseline", {"mode": mode})
            return
        for t in explained:
            if t["kind"] not in BREAK_KINDS:
                log.info("reconciled (%s): %s", mode, _transaction_line(t, t["kind"]))
        for b in found:
            line = reconcile_breaks.describe(b)
            log.error("RECONCILIATION BREAK %s: new entries blocked until a person accepts it: %s",
                      line, reconcile_breaks.ACCEPT_COMMAND.format(id=b["id"]))
            self.audit.log_event("reconcile_break", "found", {k: b.get(k) for k in (
                "id", "mode", "kind", "symbol", "quantity", "cash", "transaction_id", "detail")})
            alerts.send_alert("reconcile_break", f"{mode}: {line}", key=f"reconcile:{b['id']}")
        kinds: dict[str, int] = {}
        for t in explained:
            kinds[t["kind"]] = kinds.get(t["kind"], 0) + 1
        self.audit.log_event("reconcile", "breaks" if found else "explained",
                             {"mode": mode, "kinds": kinds, "breaks": [b["id"] for b in found]})
        log.info("reconciliation (%s): %d transactions (%s), %d new breaks", mode, len(explained),
                 ", ".join(f"{k} {n}" for k, n in sorted(kinds.items())) or "none", len(found))

    # ------------------------------------------------------------------ a person's acceptance
    def accept(self, break_id: int, reason: str, by: str | None = None) -> dict:
        """Accept a break (``reconcile_breaks.accept``, audited); an accepted cash or quantity
        difference moves the book of its mode by that difference."""
        def move_book(b: dict) -> None:
            if b["kind"] not in (CASH_DIFFERENCE, QUANTITY_DIFFERENCE):
                return
            book = self._book(b["mode"])
            if book is None:
                return
            positions = book["positions"]
            if b["symbol"]:
                positions[b["symbol"]] = positions.get(b["symbol"], 0) + int(round(b["quantity"]))
            self._save_book(b["mode"], book["cash"] + float(b["cash"]), positions, book["reconciled_at"])
        accepted = reconcile_breaks.accept(self.conn, self.audit, break_id, reason, by, on_accept=move_book)
        log.warning("reconciliation break #%s accepted by %s: %s", accepted["id"], accepted["accepted_by"],
                    accepted["reason"])
        return accepted


def _total_quantity(t: dict) -> int:
    return sum(int(round(q)) for q in (t.get("quantity") or {}).values())


def _transaction_line(t: dict, kind: str) -> str:
    shares = ", ".join(f"{s} {int(round(q)):+d}" for s, q in sorted((t.get("quantity") or {}).items()))
    return (f"{kind} {t['type']} #{t['id']}{' order ' + str(t['order_id']) if t.get('order_id') else ''}"
            f"{' ' + shares if shares else ''} cash {float(t.get('cash') or 0.0):+,.2f}"
            f"{' (' + str(t['description']) + ')' if t.get('description') else ''}"
            f"{' at ' + str(t['time']) if t.get('time') else ''}")


