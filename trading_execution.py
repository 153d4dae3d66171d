"""Order execution: market hours, exactly-once submission, retries, fills, the kill switch, the
circuit breaker, flatten, and the broker activity that is not ours.

* ``OrderExecutor()`` constructs without network or credentials; the broker is created on first
  use (``trading_api.get_broker()``: the paper broker unless ``TRADING_MODE=live``); the errors
  it reacts to are ``broker_base``'s.
* ``is_market_open(dt)``: the NYSE regular session from exchange-calendars (holidays, 13:00
  early closes). A naive ``dt`` is the machine's local time; an aware one is converted.
* Exactly once without a broker client id (Schwab takes none). Every intended order gets a
  deterministic client key (cycle date, symbol, side) and a row in ``orders`` (``INTENDED``)
  before anything is sent. Right before the request, in one transaction, the row becomes
  ``SENDING`` with a ``snapshot``: the ids of the broker's orders entered since ``since`` (now
  minus ``ORDER_SNAPSHOT_LOOKBACK_S``), plus the broker's own clock at that answer. Then the
  order is placed and the row becomes ``SUBMITTED`` with the broker's id.
  Recovery (a rerun of ``submit``, ``reconcile()`` at cycle start, the retry after an ambiguous
  transient error) never compares our clock with the broker's:
    - ``INTENDED``: never sent. Nothing is adopted for it; ``submit`` sends it.
    - ``SENDING``: the broker's orders since the SAME ``since`` are listed; candidates are the
      orders absent from the snapshot with the same symbol, side, quantity and order type that no
      other row of ours is linked to (a broker that carries client keys, the paper broker, also
      rules out orders with another key and picks the one with ours). Exactly one: adopted
      (audited) - unless it was entered more than ``ORDER_ADOPT_MAX_DELAY_S`` after the snapshot
      by the broker's own clock, which only a person can judge. None: it did not land; back to
      ``INTENDED`` and sent again with a fresh snapshot. More than one (or the late one):
      nothing is sent, the kill switch is set, CRITICAL with the commands to resolve it by hand
      (``AmbiguousOrderError``).
* The kill switch (``kill_switch.py``) is read in the transaction that marks an order
  ``SENDING`` (so nothing is sent after a halt commits) and between fill polls. Set mid-cycle:
  ``KillSwitchSet`` is raised, nothing more is sent and, by default
  (``HALT_CANCELS_UNFILLED``), the cycle's unfilled orders are cancelled (audited).
* Retries with exponential backoff for transient errors only (timeouts, 429, 5xx). After an
  ambiguous one (the request may have arrived) the snapshot rule decides before any resend.
  Rejections are never retried.
* Unfilled orders are cancelled after ``ORDER_FILL_TIMEOUT_S``; partial fills are tracked.
* ``flatten(session_date, mode)``: cancels open orders and closes every position through
  ``submit`` with keys ``flatten-YYYY-MM-DD-SYMBOL-SIDE``, so a rerun never closes twice.
* ``external_activity(mode)`` (after ``reconcile``) reports broker orders no row of ours is
  linked to, and position differences our fills since the last ``record_positions`` do not
  explain: a WARNING and an audit record each; nothing is adopted, cancelled or traded against.
* ``CircuitBreaker``: shared by every process through the state database. ``5`` consecutive
  failures open it ("Circuit breaker OPEN"), nothing is sent while open, after ``60`` s one trial
  call goes through ("Circuit breaker half-open"), and a success closes it ("Circuit breaker
  closed").

Command line (the operator's tools when recovery halts for a person)::

    python trading_execution.py orders [--hours H]     # the broker's recent orders, ours marked
    python trading_execution.py resolve KEY --order-id ID --reason "..."   # this one is ours
    python trading_execution.py resolve KEY --not-sent --reason "..."      # none of them is ours
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from datetime import datetime, timedelta, timezone

import config
import alerts
import constants as C
import kill_switch
import logging_setup
import market_calendar
import state_db
from audit_logging import AuditLogger
from broker_base import (BUY_SIDES, CANCELED, FINAL_STATUSES, MARKET, NEW, OPEN_STATUSES,
                         PARTIALLY_FILLED, WORKING, BrokerError, OrderRejectedError,
                         TransientBrokerError)
from errors import UserFacingError, install_excepthook
from failpoints import failpoint
from kill_switch import KillSwitchSet
from trading_api import get_broker

log = logging.getLogger("execution")

TERMINAL = FINAL_STATUSES          # an order record in one of these states is done
INTENDED, SENDING, SUBMITTED = "INTENDED", "SENDING", "SUBMITTED"
FLATTEN_PREFIX = "flatten-"
EXTERNAL_REPORTED_KEY = "external_orders_reported"
UTC = timezone.utc

_SCHEMA = [
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
        snapshot TEXT
    )""",
    "CREATE INDEX IF NOT EXISTS orders_by_cycle ON orders(cycle_date)",
    "CREATE INDEX IF NOT EXISTS orders_by_broker_id ON orders(broker_order_id)",
    """CREATE TABLE IF NOT EXISTS circuit_breaker (
        name TEXT PRIMARY KEY,
        state TEXT NOT NULL,
        failures INTEGER NOT NULL,
        opened_at REAL,
        trial_started_at REAL,
        last_error TEXT,
        updated_at TEXT NOT NULL
    )""",
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
# columns added after the first release: (table, column, declaration)
_ADDED_COLUMNS = [("orders", "snapshot", "TEXT")]


def ensure_schema(conn) -> None:
    """Create the tables, and add the columns newer than an existing database (one transaction,
    so two processes migrating at once do not collide)."""
    state_db.ensure_schema(conn, _SCHEMA[:1])
    missing = [c for c in _ADDED_COLUMNS
               if c[1] not in {r["name"] for r in conn.execute(f"PRAGMA table_info({c[0]})")}]
    if missing:
        with state_db.transaction(conn):
            for table, column, decl in missing:
                if column not in {r["name"] for r in conn.execute(f"PRAGMA table_info({table})")}:
                    conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {decl}")
                    log.info("state database: added column %s.%s", table, column)
    state_db.ensure_schema(conn, _SCHEMA[1:])


class CircuitOpenError(UserFacingError):
    """The circuit breaker is open: nothing is sent to the broker until it recovers."""


class AmbiguousOrderError(UserFacingError):
    """Recovery cannot tell which broker order is ours: nothing was sent, the kill switch is set,
    a person decides (``python trading_execution.py orders``, then ``resolve``)."""
# ----------------------------------------------------------------------------- circuit breaker
class CircuitBreaker:
    """closed -> (N consecutive failures) -> open -> (recovery timeout) -> half-open -> one trial
    call -> closed on success, open again on failure. State lives in the state database, so
    every process (overlapping cron runs, the CLI) sees the same breaker."""

    def __init__(self, conn=None, name: str = "broker", failures: int | None = None,
                 recovery_s: float | None = None, clock=time.time):
        self.conn = conn or state_db.connect()
        ensure_schema(self.conn)
        self.name = name
        self.threshold = C.CIRCUIT_BREAKER_FAILURES if failures is None else failures
        self.recovery_s = C.CIRCUIT_BREAKER_RECOVERY_S if recovery_s is None else recovery_s
        self.clock = clock

    def _row(self):
        row = self.conn.execute("SELECT * FROM circuit_breaker WHERE name = ?", (self.name,)).fetchone()
        if row is None:
            return {"state": "closed", "failures": 0, "opened_at": None, "trial_started_at": None,
                    "last_error": None}
        return dict(row)

    def _save(self, row):
        self.conn.execute(
            "INSERT INTO circuit_breaker(name, state, failures, opened_at, trial_started_at, last_error, updated_at)"
            " VALUES(?,?,?,?,?,?,?) ON CONFLICT(name) DO UPDATE SET state=excluded.state,"
            " failures=excluded.failures, opened_at=excluded.opened_at,"
            " trial_started_at=excluded.trial_started_at, last_error=excluded.last_error,"
            " updated_at=excluded.updated_at",
            (self.name, row["state"], row["failures"], row["opened_at"], row["trial_started_at"],
             row["last_error"], state_db.utcnow()))

    def status(self) -> dict:
        return self._row()

    def allow(self) -> bool:
        """May a call go to the broker now? Moves open -> half-open after the timeout, and lets
        exactly one process make the trial call."""
        with state_db.transaction(self.conn):
            row = self._row()
            now = self.clock()
            if row["state"] == "closed":
                return True
            if row["state"] == "open":
                if now - (row["opened_at"] or 0) < self.recovery_s:
                    return False
                row.update(state="half_open", trial_started_at=now)
                self._save(row)
                log.warning("Circuit breaker half-open: %.0f s after opening, letting one trial call through",
                            now - (row["opened_at"] or now))
                return True
            # half-open: a trial is under way; a stuck trial (crashed process) is retried
            if now - (row["trial_started_at"] or 0) >= self.recovery_s:
                row.update(trial_started_at=now)
                self._save(row)
                return True
            return False

    def record_success(self) -> None:
        with state_db.transaction(self.conn):
            row = self._row()
            if row["state"] != "closed":
                log.warning("Circuit breaker closed: trial call succeeded, trading resumes")
            if row["state"] != "closed" or row["failures"]:
                row.update(state="closed", failures=0, opened_at=None, trial_started_at=None, last_error=None)
                self._save(row)

    def record_failure(self, error: str) -> None:
        with state_db.transaction(self.conn):
            row = self._row()
            row["failures"] += 1
            row["last_error"] = error[:500]
            opened = row["state"] == "half_open" or (row["state"] == "closed" and row["failures"] >= self.threshold)
            if opened:
                row.update(state="open", opened_at=self.clock(), trial_started_at=None)
                log.error("Circuit breaker OPEN after %d consecutive failures (last: %s); nothing is "
                          "sent for %.0f s, then one trial call", row["failures"], error, self.recovery_s)
            self._save(row)
        if opened:
            alerts.send_alert("circuit_breaker_open", f"{self.name} circuit breaker opened after "
                              f"{row['failures']} consecutive failures (last: {error[:200]})", key=self.name)

    def reset(self) -> None:
        with state_db.transaction(self.conn):
            self._save({"state": "closed", "failures": 0, "opened_at": None, "trial_started_at": None,
                        "last_error": None})
        log.warning("Circuit breaker closed: reset by an operator")


# ----------------------------------------------------------------------------- executor
def client_key(cycle_date, symbol: str, side: str) -> str:
    """Deterministic key of one intended order: the same cycle, symbol and side -> the same key."""
    return f"{str(cycle_date)[:10]}:{symbol}:{side}"


def flatten_key(session_date, symbol: str, side: str, attempt: int = 1) -> str:
    """Key of a closing order of ``flatten``: stable per session date, symbol and side, so a rerun
    finds it; ``attempt`` > 1 only after the earlier one ended (cancelled, rejected) unfilled."""
    base = f"{FLATTEN_PREFIX}{str(session_date)[:10]}-{symbol}-{side}"
    return base if attempt == 1 else f"{base}-{attempt}"


def _signed(side: str, quantity: int) -> int:
    return int(quantity) if side in BUY_SIDES else -int(quantity)


def _describe(record) -> str:
    return f"{record['side']} {record['quantity']} {record['symbol']} {record['order_type']}"


class OrderExecutor:
    def __init__(self, broker=None, conn=None, audit=None, sleep=time.sleep,
                 cancel_on_halt: bool | None = None):
        self._broker = broker
        self._conn = conn
        self._audit = audit
        self._breaker = None
        self._schema_ready = False
        self.sleep = sleep
        self.cancel_on_halt = C.HALT_CANCELS_UNFILLED if cancel_on_halt is None else cancel_on_halt
        self.halted: dict | None = None       # the kill switch's value once this executor met it

    # lazily built collaborators: constructing an executor touches no network or credentials
    @property
    def conn(self):
        if self._conn is None:
            self._conn = state_db.connect()
        if not self._schema_ready:
            ensure_schema(self._conn)
            self._schema_ready = True
        return self._conn

    @property
    def broker(self):
        if self._broker is None:
            self._broker = get_broker()
        return self._broker

    @property
    def audit(self):
        if self._audit is None:
            self._audit = AuditLogger()
        return self._audit

    @property
    def breaker(self) -> CircuitBreaker:
        if self._breaker is None:
            self._breaker = CircuitBreaker(self.conn)
        return self._breaker

    # -- market hours
    def is_market_open(self, dt=None) -> bool:
        """True while the NYSE regular session is open at ``dt`` (default: now)."""
        return market_calendar.is_open(dt if dt is not None else datetime.now(timezone.utc))

    # -- order records
    def _record(self, key):
        row = self.conn.execute("SELECT * FROM orders WHERE client_key = ?", (key,)).fetchone()
        return dict(row) if row else None

    def _update(self, key, **fields):
        fields["updated_at"] = state_db.utcnow()
        cols = ", ".join(f"{k} = ?" for k in fields)
        with state_db.transaction(self.conn):
            self.conn.execute(f"UPDATE orders SET {cols} WHERE client_key = ?", (*fields.values(), key))

    def record_intent(self, order: dict, cycle_date, mode: str) -> tuple[str, bool]:
        """Write the order to the database before it is sent. Returns (key, new?)."""
        key = order.get("client_key") or client_key(cycle_date, order["symbol"], order["side"])
        now = state_db.utcnow()
        with state_db.transaction(self.conn):
            cur = self.conn.execute(
                "INSERT OR IGNORE INTO orders(client_key, cycle_date, mode, symbol, side, quantity,"
                " order_type, limit_price, reference_price, reason, status, created_at, updated_at)"
                " VALUES(?,?,?,?,?,?,?,?,?,?,'INTENDED',?,?)",
                (key, str(cycle_date)[:10], mode, order["symbol"], order["side"], int(order["quantity"]),
                 order.get("order_type", MARKET), order.get("limit_price"), order.get("price"),
                 order.get("reason"), now, now))
        return key, cur.rowcount == 1

    def orders_for_cycle(self, cycle_date) -> list[dict]:
        rows = self.conn.execute("SELECT * FROM orders WHERE cycle_date = ? ORDER BY created_at",
                                 (str(cycle_date)[:10],)).fetchall()
        return [dict(r) for r in rows]

    def open_orders(self) -> list[dict]:
        marks = ",".join("?" * len(TERMINAL))
        rows = self.conn.execute(f"SELECT * FROM orders WHERE status NOT IN ({marks})", tuple(TERMINAL)).fetchall()
        return [dict(r) for r in rows]

    def linked_keys(self) -> dict[str, str]:
        """{broker order id: our client key} for every row that has a broker id."""
        return {str(r["broker_order_id"]): r["client_key"] for r in self.conn.execute(
            "SELECT client_key, broker_order_id FROM orders WHERE broker_order_id IS NOT NULL")}

    # -- talking to the broker through the breaker
    def _retrying(self, what: str, attempt):
        """``attempt(n)`` for n = 1, 2, ... until it succeeds: a transient broker error is retried
        ``ORDER_RETRIES`` times, waiting ``ORDER_BACKOFF_S`` and doubling each time; the last one,
        and every other error, is raised."""
        attempts = C.ORDER_RETRIES + 1
        for n in range(1, attempts):
            try:
                return attempt(n)
            except TransientBrokerError as exc:
                wait = C.ORDER_BACKOFF_S * 2 ** (n - 1)
                log.warning("%s failed (%s); retry %d of %d in %.1f s", what, exc, n, attempts - 1, wait)
                self.sleep(wait)
        return attempt(attempts)

    def _call(self, what: str, func, *args):
        """A broker call that is safe to repeat, with retries for transient errors."""
        return self._retrying(what, lambda n: self._call_once(what, func, *args))

    def _call_once(self, what, func, *args):
        """One attempt through the breaker (the caller does the retrying)."""
        if not self.breaker.allow():
            st = self.breaker.status()
            raise CircuitOpenError(f"Circuit breaker OPEN ({st['failures']} consecutive failures, last: "
                                   f"{st['last_error']}): {what} not sent")
        try:
            result = func(*args)
        except OrderRejectedError:
            self.breaker.record_success()
            raise
        except TransientBrokerError as exc:
            self.breaker.record_failure(f"{what}: {exc}")
            raise
        except Exception as exc:
            self.breaker.record_failure(f"{what}: {type(exc).__name__}: {exc}")
            raise
        self.breaker.record_success()
        return result

    # -- the snapshot rule
    def _snapshot(self) -> dict:
        """The broker's order ids entered since ``now - ORDER_SNAPSHOT_LOOKBACK_S`` (our clock
        only picks the window; recovery lists the same window again) and the broker's own clock
        at that answer, when it gave one."""
        since = datetime.now(UTC) - timedelta(seconds=C.ORDER_SNAPSHOT_LOOKBACK_S)
        orders = self._call("list orders (snapshot)", self.broker.get_orders_since, since)
        broker_time = getattr(self.broker, "server_time", None)
        return {"since": since.isoformat(), "order_ids": sorted(str(o["order_id"]) for o in orders),
                "broker_time": broker_time.isoformat() if broker_time else None,
                "taken_at": state_db.utcnow()}

    def _mark_sending(self, key: str, snapshot: dict, ignore_halt: bool) -> None:
        """INTENDED -> SENDING with the snapshot, in the transaction that reads the kill switch:
        a halt committed before it stops the order; one committed after it comes too late for
        this order only."""
        with state_db.transaction(self.conn):
            if not ignore_halt:
                kill_switch.check(self.conn, f"order {key}")
            cur = self.conn.execute(
                "UPDATE orders SET status = ?, snapshot = ?, error = NULL, updated_at = ? "
                "WHERE client_key = ? AND status IN (?, ?)",
                (SENDING, json.dumps(snapshot), state_db.utcnow(), key, INTENDED, SENDING))
            if cur.rowcount != 1:
                raise RuntimeError(f"order {key} is no longer INTENDED: another process has it")

    def _candidates(self, record: dict, orders: list[dict]) -> list[dict]:
        """Broker orders that may be ``record``'s: absent from its snapshot, same symbol, side,
        quantity and order type, linked to no other row of ours. A broker that carries client keys
        (the paper broker) narrows it further: another key is not ours, ours is."""
        snap = json.loads(record["snapshot"] or "{}")
        seen = set(snap.get("order_ids") or [])
        key = record["client_key"]
        linked = self.linked_keys()
        want = (record["symbol"], record["side"], int(record["quantity"]), str(record["order_type"]).upper())
        out = []
        for o in orders:
            oid = str(o["order_id"])
            if oid in seen or linked.get(oid, key) != key:
                continue
            if (o.get("symbol"), o.get("side"), int(o.get("quantity") or 0),
                    str(o.get("order_type") or "").upper()) != want:
                continue
            if o.get("client_key") and o["client_key"] != key:
                continue
            out.append(o)
        mine = [o for o in out if o.get("client_key") == key]
        return mine or out

    def _resolve_sending(self, record: dict) -> tuple[str, list[dict], str]:
        """Where a SENDING order is: ``("adopt", [order], why)``, ``("absent", [], why)`` or
        ``("ambiguous", candidates, why)``."""
        snap = json.loads(record["snapshot"] or "{}")
        if not snap.get("since"):
            return "ambiguous", [], "its snapshot is missing"
        since = datetime.fromisoformat(snap["since"])
        if since < datetime.now(UTC) - timedelta(days=C.SCHWAB_ORDER_LOOKBACK_DAYS):
            return "ambiguous", [], (f"its snapshot ({since:%Y-%m-%d}) is older than the "
                                     f"{C.SCHWAB_ORDER_LOOKBACK_DAYS} days the broker lists")
        orders = self._call(f"list orders (recovery of {record['client_key']})",
                            self.broker.get_orders_since, since)
        found = self._candidates(record, orders)
        if not found:
            return "absent", [], "no broker order entered since its snapshot matches it"
        if len(found) > 1:
            return "ambiguous", found, f"{len(found)} broker orders entered since its snapshot match it"
        entered, at_snapshot = found[0].get("entered_time"), snap.get("broker_time")
        if (entered is not None and at_snapshot and found[0].get("client_key") != record["client_key"]
                and entered > datetime.fromisoformat(at_snapshot) + timedelta(seconds=C.ORDER_ADOPT_MAX_DELAY_S)):
            return "ambiguous", found, (
                f"the only match was entered at {entered:%H:%M:%S}, more than "
                f"{C.ORDER_ADOPT_MAX_DELAY_S:g} s after the snapshot at {at_snapshot} (both the "
                f"broker's clock): it may be someone else's")
        return "adopt", found, "the only broker order entered since its snapshot that matches it"

    def _settle_sending(self, record: dict, context: str) -> dict:
        """Apply the snapshot rule to a SENDING row: adopt (-> SUBMITTED), absent (-> INTENDED) or
        ambiguous (kill switch, ``AmbiguousOrderError``)."""
        key = record["client_key"]
        outcome, found, why = self._resolve_sending(record)
        if outcome == "adopt":
            order_id = str(found[0]["order_id"])
            self._update(key, status=SUBMITTED, broker_order_id=order_id,
                         submitted_at=record["submitted_at"] or state_db.utcnow(), error=None)
            log.warning("order %s (%s) reached the broker before a crash or lost answer (id %s, %s): "
                        "adopted, not resent", key, _describe(record), order_id, why)
            self.audit.log_event("order_reconciled", "adopted", {
                "client_key": key, "order_id": order_id, "context": context, "rule": why})
            return self._record(key)
        if outcome == "absent":
            self._update(key, status=INTENDED)
            log.warning("order %s (%s) did not reach the broker (%s): it will be sent", key,
                        _describe(record), why)
            self.audit.log_event("order_reconciled", "not_landed", {"client_key": key, "context": context})
            return self._record(key)
        self._halt_ambiguous(record, found, why, context)

    def _halt_ambiguous(self, record: dict, found: list[dict], why: str, context: str):
        key = record["client_key"]
        ids = [str(o["order_id"]) for o in found]
        snap = json.loads(record["snapshot"] or "{}")
        reason = f"order {key} ({_describe(record)}) is ambiguous at the broker: {why}"
        self.halted = kill_switch.halt(reason, self.conn, by="trading_execution", audit=self.audit)
        alerts.send_alert("manual_reconciliation", f"{reason}; candidates {', '.join(ids) or 'none'}. "
                          f"Nothing was sent and the kill switch is set.", key=key)
        self._update(key, error=f"ambiguous: {why}; candidates {', '.join(ids) or 'none'}"[:500])
        self.audit.log_event("order_reconciled", "ambiguous", {
            "client_key": key, "candidates": ids, "rule": why, "context": context,
            "snapshot_since": snap.get("since"), "snapshot_broker_time": snap.get("broker_time")})
        pick = f"--order-id {ids[0] if len(ids) == 1 else 'ID'}"
        log.critical(
            "ORDER AMBIGUOUS: %s may have reached the broker and %s. Nothing was sent and the kill "
            "switch is set. Resolve it by hand:\n"
            "  1. python trading_execution.py orders      # the broker's orders since %s, ours marked; "
            "candidates: %s\n"
            "  2. decide which one is ours (the broker's web site shows who entered each); cancel "
            "at the broker any order you do not want\n"
            "  3. python trading_execution.py resolve %s %s --reason \"...\"   (or --not-sent when "
            "none is ours)\n"
            "  4. python live_trading.py resume --reason \"resolved %s\"",
            f"order {key} ({_describe(record)})", why, snap.get("since"), ", ".join(ids) or "none",
            key, pick, key)
        raise AmbiguousOrderError(
            f"order {key} ({_describe(record)}) is ambiguous at the broker ({why}; candidates: "
            f"{', '.join(ids) or 'none'}): nothing sent, kill switch set; see `python "
            f"trading_execution.py orders`, then `python trading_execution.py resolve {key} ...` "
            f"and `python live_trading.py resume`")

    # -- submission
    def submit(self, order: dict, cycle_date, mode: str = "paper", *, ignore_halt: bool = False) -> dict:
        """Send one order exactly once. Returns its database record.

        ``KillSwitchSet`` when the kill switch is on (nothing sent; the cycle's unfilled orders
        cancelled by default); ``AmbiguousOrderError`` when recovery cannot tell which broker
        order is ours. ``ignore_halt`` is for ``flatten`` only, which runs under the switch."""
        key, new = self.record_intent(order, cycle_date, mode)
        failpoint("after_record_intent")
        record = self._record(key)
        if record["status"] == SENDING:
            record = self._settle_sending(record, "rerun")
        if record["status"] != INTENDED:
            log.info("order %s already %s (broker id %s): not sent again", key, record["status"],
                     record["broker_order_id"])
            return record
        try:
            return self._send(record, ignore_halt)
        except KillSwitchSet as exc:
            self._on_halt(exc.switch, cycle_date, key)
            raise

    def _on_halt(self, switch: dict, cycle_date, key: str | None = None) -> None:
        self.halted = switch
        log.warning("kill switch is ON (%s): %s", kill_switch.describe(switch),
                    f"order {key} not sent" if key else "nothing more is sent")
        self.audit.log_event("order_submit", "halted", {"client_key": key, "kill_switch": switch})
        if self.cancel_on_halt:
            self.cancel_unfilled(cycle_date, "kill_switch")

    def _send(self, record: dict, ignore_halt: bool) -> dict:
        key = record["client_key"]
        if not ignore_halt:
            kill_switch.check(self.conn, f"order {key}")     # before the snapshot costs a call
        spec = {"symbol": record["symbol"], "side": record["side"], "quantity": record["quantity"],
                "order_type": record["order_type"], "limit_price": record["limit_price"], "client_key": key}
        what = f"place {key}"
        attempts = C.ORDER_RETRIES + 1
        n = 0
        while True:
            n += 1
            try:
                self._mark_sending(key, self._snapshot(), ignore_halt)
            except (TransientBrokerError, CircuitOpenError) as exc:
                return self._not_sent(key, exc)
            failpoint("after_sending_mark")
            if n == 1:
                self.audit.log_event("order_submit", "attempt", dict(spec))
            try:
                order_id = str(self._call_once(what, self.broker.place_order, spec))
                break
            except OrderRejectedError as exc:
                self._update(key, status="REJECTED", error=str(exc)[:500])
                log.error("order %s REJECTED by the broker: %s", key, exc)
                self.audit.log_event("order_submit", "rejected", {"client_key": key, "error": str(exc)})
                return self._record(key)
            except CircuitOpenError as exc:      # refused before any request: certainly not sent
                self._update(key, status=INTENDED)
                return self._not_sent(key, exc)
            except TransientBrokerError as exc:
                ambiguous = getattr(exc, "ambiguous", False)
                if n >= attempts:
                    if not ambiguous:
                        self._update(key, status=INTENDED)
                    return self._not_sent(key, exc)
                wait = C.ORDER_BACKOFF_S * 2 ** (n - 1)
                log.warning("%s failed (%s); retry %d of %d in %.1f s%s", what, exc, n, attempts - 1,
                            wait, " after looking for it at the broker" if ambiguous else "")
                self.sleep(wait)
                if ambiguous:             # it may have arrived: the snapshot rule decides
                    try:
                        settled = self._settle_sending(self._record(key), "retry")
                    except (TransientBrokerError, CircuitOpenError) as again:
                        return self._not_sent(key, again)
                    if settled["status"] != INTENDED:
                        return settled
                else:
                    self._update(key, status=INTENDED)
                if not ignore_halt:
                    kill_switch.check(self.conn, f"order {key}")
        failpoint("after_place_order")
        self._update(key, status=SUBMITTED, broker_order_id=order_id, submitted_at=state_db.utcnow(),
                     error=None)
        log.info("order %s submitted: %s %d %s (%s) -> broker id %s", key, record["side"],
                 record["quantity"], record["symbol"], record["order_type"], order_id)
        self.audit.log_event("order_submit", "submitted", {"client_key": key, "order_id": order_id,
                                                            "symbol": record["symbol"], "side": record["side"],
                                                            "quantity": record["quantity"]})
        return self._record(key)

    def _not_sent(self, key: str, exc: Exception):
        """The order may not have gone (status INTENDED) or may have (SENDING: the next run
        decides by the snapshot rule); either way the caller hears the error."""
        self._update(key, error=str(exc)[:500])
        status = self._record(key)["status"]
        log.error("order %s not sent%s: %s", key,
                  " (it may have reached the broker: the next run looks)" if status == SENDING else "", exc)
        self.audit.log_event("order_submit", "failed", {"client_key": key, "error": str(exc),
                                                        "status": status})
        raise exc

    # -- fills
    def refresh(self, key) -> dict:
        """Ask the broker for an order's state and store it."""
        record = self._record(key)
        if not record or not record["broker_order_id"] or record["status"] in TERMINAL:
            return record
        state = self._call(f"status of {key}", self.broker.get_order, record["broker_order_id"])
        status = state["status"]
        filled = int(state.get("filled_quantity") or 0)
        if status in (NEW, WORKING):        # the broker has it, still open
            status = PARTIALLY_FILLED if filled else SUBMITTED
        changed = status != record["status"] or filled != record["filled_quantity"]
        self._update(key, status=status, filled_quantity=filled, avg_fill_price=state.get("avg_fill_price"))
        if changed and filled:
            log.info("order %s %s: %d of %d filled at %.4f", key, status, filled, record["quantity"],
                     state.get("avg_fill_price") or 0.0)
        if changed and status in TERMINAL:
            self.audit.log_event("order_fill", status.lower(), {
                "client_key": key, "order_id": record["broker_order_id"], "symbol": record["symbol"],
                "side": record["side"], "quantity": record["quantity"], "filled_quantity": filled,
                "avg_fill_price": state.get("avg_fill_price")})
        return self._record(key)

    def wait_for_fills(self, keys, timeout_s: float | None = None, poll_s: float | None = None,
                       *, ignore_halt: bool = False) -> list[dict]:
        """Poll until every order is terminal or the timeout passes; then cancel what is left
        (a partial fill keeps its filled part). The kill switch is read between polls: once it is
        on, the unfilled ones are cancelled at once (unless ``cancel_on_halt`` is off) and
        ``self.halted`` holds its value."""
        timeout_s = C.ORDER_FILL_TIMEOUT_S if timeout_s is None else timeout_s
        poll_s = C.ORDER_POLL_INTERVAL_S if poll_s is None else poll_s
        deadline = time.monotonic() + timeout_s
        pending = [k for k in keys if (self._record(k) or {}).get("broker_order_id")]
        while pending:
            pending = [k for k in pending if self.refresh(k)["status"] not in TERMINAL]
            pending = [k for k in pending if not self._accepted_for_next_open(k)]
            failpoint("after_fill_poll")
            if not pending:
                break
            switch = None if ignore_halt else kill_switch.get(self.conn)
            if switch:
                self.halted = switch
                log.warning("kill switch is ON (%s) while %d orders wait for fills: %s",
                            kill_switch.describe(switch), len(pending),
                            "cancelling them" if self.cancel_on_halt else "left open (HALT_CANCELS_UNFILLED off)")
                if self.cancel_on_halt:
                    self._cancel_keys(pending, "kill_switch")
                return [self._record(k) for k in keys]
            if time.monotonic() >= deadline:
                log.warning("%d orders not filled within %.0f s: cancelling the rest", len(pending), timeout_s)
                self._cancel_keys(pending, "timeout")
                break
            self.sleep(poll_s)
        return [self._record(k) for k in keys]

    def _accepted_for_next_open(self, key) -> bool:
        """A market order at a broker that fills it at the next session's open (the paper broker,
        ``PAPER_FILL = "next_open"``) and is still unfilled is accepted, not late: waiting cannot
        fill it, and cancelling it at the timeout would undo a valid order. The next cycle's
        ``sync_prices`` fills it and its ``reconcile`` records the fill."""
        if not getattr(self.broker, "fills_at_next_open", False):
            return False
        record = self._record(key)
        if record["status"] != SUBMITTED or record.get("order_type", "MARKET") != "MARKET":
            return False
        log.info("order %s accepted: the paper broker fills it at the next session's open", key)
        return True

    def _cancel_keys(self, keys, why: str) -> None:
        """Cancel our orders ``keys`` at the broker (a partial fill keeps its filled part); audited."""
        for key in keys:
            record = self._record(key)
            if not record or not record["broker_order_id"] or record["status"] in TERMINAL:
                continue
            log.warning("order %s cancelled (%s): %d of %d filled", key, why, record["filled_quantity"],
                        record["quantity"])
            try:
                self._call(f"cancel {key}", self.broker.cancel_order, record["broker_order_id"])
            except Exception as exc:
                log.error("cancel of %s failed: %s (check the broker's open orders)", key, exc)
            failpoint("after_fill_cancel")
            try:
                self.refresh(key)
            except BrokerError as exc:
                log.error("status of %s after its cancel unknown: %s", key, exc)
            self.audit.log_event("order_cancel", why, {"client_key": key, "order_id": record["broker_order_id"],
                                                       "filled_quantity": self._record(key)["filled_quantity"]})

    def cancel_unfilled(self, cycle_date, why: str = "kill_switch") -> list[str]:
        """Cancel the unfilled orders of one cycle (not ``flatten``'s). Returns their keys."""
        keys = [r["client_key"] for r in self.orders_for_cycle(cycle_date)
                if r["broker_order_id"] and r["status"] not in TERMINAL
                and not r["client_key"].startswith(FLATTEN_PREFIX)]
        self._cancel_keys(keys, why)
        return keys

    def reconcile(self) -> list[dict]:
        """At the start of a cycle: bring every unfinished order of earlier runs up to date.
        INTENDED rows are left alone (never sent; ``submit`` sends them if the cycle still wants
        them); SENDING rows go through the snapshot rule; the rest are refreshed. Every ambiguous
        row is handled (kill switch, CRITICAL) before ``AmbiguousOrderError`` is raised."""
        done, ambiguous = [], []
        for record in self.open_orders():
            if record["status"] == INTENDED:
                continue
            if record["status"] == SENDING:
                try:
                    record = self._settle_sending(record, "reconcile")
                except AmbiguousOrderError as exc:
                    ambiguous.append(exc)
                    continue
                if record["status"] == INTENDED:
                    continue
            done.append(self.refresh(record["client_key"]))
        if ambiguous:
            raise ambiguous[0] if len(ambiguous) == 1 else AmbiguousOrderError(
                f"{len(ambiguous)} orders are ambiguous at the broker: nothing sent, kill switch set; "
                f"see the CRITICAL lines above and `python trading_execution.py orders`")
        return done

    def cancel_all_open(self, keep=()) -> int:
        """Cancel every order the broker still has open, except the broker ids in ``keep``; our
        rows for them are refreshed. Returns how many were cancelled."""
        count = 0
        linked = self.linked_keys()
        for order in self._call("list open orders", self.broker.get_open_orders):
            oid = str(order["order_id"])
            if oid in keep:
                continue
            self._call(f"cancel {oid}", self.broker.cancel_order, oid)
            count += 1
            self.audit.log_event("order_cancel", "flatten", {"order_id": oid, "client_key": linked.get(oid),
                                                             "symbol": order.get("symbol")})
            if oid in linked:
                self.refresh(linked[oid])
        return count

    # -- flatten
    def _flatten_key(self, day: str, symbol: str, side: str) -> str:
        """This session's key for closing ``symbol``: the first attempt's, or the next one when the
        earlier attempt ended without closing the position."""
        attempt = 1
        while True:
            key = flatten_key(day, symbol, side, attempt)
            record = self._record(key)
            if record and record["broker_order_id"] and record["status"] not in TERMINAL:
                record = self.refresh(key)
            if record is None or record["status"] not in TERMINAL:
                return key
            attempt += 1

    def flatten(self, session_date, mode: str, *, wait: bool = True, timeout_s: float | None = None) -> dict:
        """Cancel every open order at the broker and close every position with a market order.

        The caller sets the kill switch first and holds the cycle lock; these orders are sent under
        the switch (``ignore_halt``). Keys are ``flatten-YYYY-MM-DD-SYMBOL-SIDE``: a rerun the same
        session finds its earlier closing orders (still working: kept and waited for; filled: the
        position is gone) and never closes twice. Returns ``{"cancelled", "orders"}``."""
        day = str(session_date)[:10]
        self.audit.log_event("flatten", "started", {"session_date": day, "mode": mode})
        ours = {str(r["broker_order_id"]) for r in self.conn.execute(
            "SELECT broker_order_id FROM orders WHERE client_key LIKE ? AND broker_order_id IS NOT NULL",
            (f"{FLATTEN_PREFIX}{day}-%",))}
        cancelled = self.cancel_all_open(keep=ours)
        keys = []
        for symbol, position in sorted(self._call("positions", self.broker.get_positions).items()):
            qty = int(position["quantity"])
            if qty == 0:
                continue
            side = "SELL" if qty > 0 else "BUY_TO_COVER"
            key = self._flatten_key(day, symbol, side)
            existing = self._record(key)
            if existing and existing["status"] == INTENDED and existing["quantity"] != abs(qty):
                self._update(key, quantity=abs(qty))         # never sent: close what is held now
            order = {"symbol": symbol, "side": side, "quantity": abs(qty), "order_type": MARKET,
                     "price": position.get("avg_price"), "reason": "flatten", "client_key": key}
            record = self.submit(order, day, mode, ignore_halt=True)
            if record.get("broker_order_id"):
                keys.append(key)
        final = (self.wait_for_fills(keys, timeout_s, ignore_halt=True) if wait and keys
                 else [self._record(k) for k in keys])
        self.audit.log_event("flatten", "done", {"session_date": day, "cancelled_orders": cancelled,
                                                 "close_orders": keys})
        log.warning("flatten %s: cancelled %d open orders, %d closing orders", day, cancelled, len(keys))
        return {"cancelled": cancelled, "orders": final}

    # -- what is at the broker and not ours
    def external_activity(self, mode: str) -> dict:
        """Broker orders and position changes that are not ours. Call it after ``reconcile()``.

        Orders: those entered within ``ORDER_SNAPSHOT_LOOKBACK_S`` or still open that no row of ours
        is linked to (by broker id, or by client key where the broker has one); reported when new
        or still open. Positions: the broker's quantity against the last ``record_positions`` plus
        our fills since. Each is logged at WARNING and audited; none is adopted, cancelled or traded
        against. Returns ``{"orders": [...], "positions": [{symbol, expected, actual, difference}],
        "baseline": recorded_at or None}``."""
        since = datetime.now(UTC) - timedelta(seconds=C.ORDER_SNAPSHOT_LOOKBACK_S)
        listed = {str(o["order_id"]): o for o in self._call("list orders", self.broker.get_orders_since, since)}
        for o in self._call("list open orders", self.broker.get_open_orders):
            listed.setdefault(str(o["order_id"]), o)
        linked = self.linked_keys()
        our_keys = {r["client_key"] for r in self.conn.execute("SELECT client_key FROM orders")}
        external = [o for oid, o in listed.items()
                    if oid not in linked and not (o.get("client_key") and o["client_key"] in our_keys)]
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

    def _position_differences(self, mode: str):
        row = self.conn.execute("SELECT * FROM position_records WHERE mode = ?", (mode,)).fetchone()
        if row is None:
            log.info("no end-of-cycle positions recorded yet for %s: the position check starts "
                     "after this cycle's record_positions", mode)
            return [], None
        self._refresh_unfinished(mode)
        expected = {s: int(q) for s, q in json.loads(row["positions"]).items()}
        fills_then = json.loads(row["fills"])
        for r in self.conn.execute("SELECT rowid, * FROM orders WHERE mode = ?", (mode,)):
            if r["rowid"] > row["order_rowid"]:
                delta = int(r["filled_quantity"])
            elif r["client_key"] in fills_then:
                delta = int(r["filled_quantity"]) - int(fills_then[r["client_key"]])
            else:
                continue
            if delta:
                expected[r["symbol"]] = expected.get(r["symbol"], 0) + _signed(r["side"], delta)
        actual = {s: int(p["quantity"]) for s, p in self._call("positions", self.broker.get_positions).items()}
        diffs = [{"symbol": s, "expected": expected.get(s, 0), "actual": actual.get(s, 0),
                  "difference": actual.get(s, 0) - expected.get(s, 0)}
                 for s in sorted(set(expected) | set(actual)) if actual.get(s, 0) != expected.get(s, 0)]
        return diffs, dict(row)

    def _refresh_unfinished(self, mode: str) -> None:
        for record in self.open_orders():
            if record["mode"] == mode and record["broker_order_id"]:
                self.refresh(record["client_key"])

    def record_positions(self, cycle_date, mode: str) -> dict:
        """At the end of a cycle: store the broker's positions and what each unfinished order of
        ours had filled, the baseline of the next ``external_activity``."""
        self._refresh_unfinished(mode)
        positions = {s: int(p["quantity"]) for s, p in self._call("positions", self.broker.get_positions).items()
                     if int(p["quantity"])}
        marks = ",".join("?" * len(TERMINAL))
        fills = {r["client_key"]: int(r["filled_quantity"]) for r in self.conn.execute(
            f"SELECT client_key, filled_quantity FROM orders WHERE mode = ? AND status NOT IN ({marks})",
            (mode, *TERMINAL))}
        with state_db.transaction(self.conn):
            top = self.conn.execute("SELECT COALESCE(MAX(rowid), 0) AS n FROM orders").fetchone()["n"]
            self.conn.execute(
                "INSERT INTO position_records(mode, cycle_date, recorded_at, positions, fills, order_rowid)"
                " VALUES(?,?,?,?,?,?) ON CONFLICT(mode) DO UPDATE SET cycle_date = excluded.cycle_date,"
                " recorded_at = excluded.recorded_at, positions = excluded.positions,"
                " fills = excluded.fills, order_rowid = excluded.order_rowid",
                (mode, str(cycle_date)[:10], state_db.utcnow(), json.dumps(positions), json.dumps(fills), top))
        log.info("end-of-cycle positions recorded (%s): %s", mode,
                 ", ".join(f"{s} {q:+d}" for s, q in sorted(positions.items())) or "flat")
        return positions

    # -- the operator's resolution of an ambiguous order
    def broker_orders(self, hours: float | None = None) -> list[dict]:
        """The broker's orders of the last ``hours`` (default the snapshot window) and every open
        one, each with ``ours``: the client key of our row linked to it, or None."""
        hours = C.ORDER_SNAPSHOT_LOOKBACK_S / 3600.0 if hours is None else float(hours)
        since = datetime.now(UTC) - timedelta(hours=hours)
        listed = {str(o["order_id"]): o for o in self._call("list orders", self.broker.get_orders_since, since)}
        for o in self._call("list open orders", self.broker.get_open_orders):
            listed.setdefault(str(o["order_id"]), o)
        linked = self.linked_keys()
        return [dict(o, ours=linked.get(oid)) for oid, o in listed.items()]

    def resolve(self, key: str, order_id: str | None, reason: str) -> dict:
        """A person's decision on an ambiguous (or SENDING) row: ``order_id`` is ours (adopted), or
        None: none of the broker's orders is ours and ours was never placed (the row is closed as
        CANCELED, never sent again)."""
        record = self._record(key)
        if record is None:
            raise UserFacingError(f"no order {key!r} in the state database: check the key with "
                                  f"`python trading_execution.py orders`")
        if record["status"] not in (INTENDED, SENDING):
            raise UserFacingError(f"order {key} is {record['status']} (broker id "
                                  f"{record['broker_order_id']}): nothing to resolve")
        if order_id is None:
            self._update(key, status=CANCELED, error=f"resolved by hand: not sent ({reason})"[:500])
            self.audit.log_event("order_reconciled", "resolved_not_sent", {"client_key": key, "reason": reason,
                                                                           "by": config.operator()})
            log.warning("order %s resolved by hand: never placed, closed without sending (%s)", key, reason)
            return self._record(key)
        order_id = str(order_id)
        other = self.linked_keys().get(order_id)
        if other and other != key:
            raise UserFacingError(f"broker order {order_id} is already linked to our order {other}: "
                                  f"pick another id from `python trading_execution.py orders`")
        found = self._call(f"order {order_id}", self.broker.get_order, order_id)
        if (found["symbol"], found["side"], int(found["quantity"])) != (
                record["symbol"], record["side"], int(record["quantity"])):
            raise UserFacingError(f"broker order {order_id} is {found['side']} {found['quantity']} "
                                  f"{found['symbol']}, not {_describe(record)}: pick the matching id")
        self._update(key, status=SUBMITTED, broker_order_id=order_id, error=None,
                     submitted_at=record["submitted_at"] or state_db.utcnow())
        self.audit.log_event("order_reconciled", "resolved_adopted", {
            "client_key": key, "order_id": order_id, "reason": reason, "by": config.operator()})
        log.warning("order %s resolved by hand: broker order %s is ours (%s)", key, order_id, reason)
        return self.refresh(key)


# ----------------------------------------------------------------------------- command line
def _print_orders(executor: OrderExecutor, orders: list[dict]) -> None:
    print(f"{'broker id':>14} {'entered (broker clock)':25} {'side':12} {'qty':>6} {'symbol':8} "
          f"{'type':7} {'status':17} ours")
    for o in sorted(orders, key=lambda o: str(o.get("entered_time") or "")):
        print(f"{o['order_id']:>14} {str(o.get('entered_time') or '-'):25} {o['side']:12} "
              f"{o['quantity']:6d} {o['symbol']:8} {str(o.get('order_type') or '-'):7} "
              f"{o['status']:17} {o['ours'] or 'NOT OURS'}")
    pending = [r for r in executor.open_orders() if r["status"] in (INTENDED, SENDING)]
    for r in pending:
        print(f"our order {r['client_key']} is {r['status']} ({_describe(r)})"
              + (f": {r['error']}" if r["error"] else ""))


def main(argv=None) -> int:
    install_excepthook()
    parser = argparse.ArgumentParser(prog="trading_execution.py",
                                     description="The broker's orders against ours, and resolving an "
                                                 "ambiguous order by hand.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("orders", help="the broker's recent and open orders; ours marked with our key")
    p.add_argument("--hours", type=float, default=None,
                   help=f"how far back (default {C.ORDER_SNAPSHOT_LOOKBACK_S / 3600:g} h)")
    p = sub.add_parser("resolve", help="decide an ambiguous order: which broker order is ours, or none")
    p.add_argument("client_key")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--order-id", help="the broker order that is ours")
    which.add_argument("--not-sent", action="store_true", help="none of them is ours: close it unsent")
    p.add_argument("--reason", required=True)
    args = parser.parse_args(argv)
    logging_setup.setup_logging("trading")
    executor = OrderExecutor()
    try:
        if args.command == "orders":
            _print_orders(executor, executor.broker_orders(args.hours))
            return 0
        record = executor.resolve(args.client_key, None if args.not_sent else args.order_id, args.reason)
        print(f"order {record['client_key']}: {record['status']} (broker id {record['broker_order_id']}). "
              f"Now clear the kill switch: python live_trading.py resume --reason \"...\"")
        return 0
    except (BrokerError, UserFacingError) as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
