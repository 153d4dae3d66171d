"""Order execution: market hours, exactly-once submission, retries, fills, the kill switch, the
circuit breaker and flatten.

* ``OrderExecutor()`` constructs without network or credentials; the broker is created on first
  use (``trading_api.get_broker()``: the paper broker unless ``TRADING_MODE=live``); the errors
  it reacts to are ``broker_base``'s.
* ``is_market_open(dt)``: the NYSE regular session from exchange-calendars (holidays, 13:00
  early closes). A naive ``dt`` is the machine's local time; an aware one is converted.
* Exactly once (``order_recovery.py``, mixed in): every intended order gets a deterministic
  client key and a row in ``orders`` (``INTENDED``) before anything is sent; right before the
  request the row becomes ``SENDING`` with a snapshot of the broker's recent orders, then
  ``SUBMITTED`` with the broker's id. A row whose fate is unknown is settled by the snapshot
  rule: adopted, sent again, or left to a person (``AmbiguousOrderError``, kill switch set).
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
* ``external_activity(mode)`` and ``record_positions`` (``external_activity.py``, mixed in):
  broker orders and position changes that are not ours, reported, never traded against.
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
import logging
import sys
import time
from datetime import datetime, timezone

import alerts
import constants as C
import external_activity
import kill_switch
import logging_setup
import market_calendar
import state_db
from audit_logging import AuditLogger
from broker_base import (FINAL_STATUSES, MARKET, NEW, PARTIALLY_FILLED, WORKING, BrokerError,
                         OrderRejectedError, TransientBrokerError)
from errors import UserFacingError, install_excepthook
from external_activity import ExternalActivity
from failpoints import failpoint
from kill_switch import KillSwitchSet
from order_recovery import INTENDED, SENDING, SUBMITTED, OrderRecovery, describe
from trading_api import get_broker

log = logging.getLogger("execution")

TERMINAL = FINAL_STATUSES          # an order record in one of these states is done
FLATTEN_PREFIX = "flatten-"

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
    state_db.ensure_schema(conn, _SCHEMA[1:] + external_activity.SCHEMA)


class CircuitOpenError(UserFacingError):
    """The circuit breaker is open: nothing is sent to the broker until it recovers."""


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
                              f"{row['failures']} consecutive failures (last: {error[:200]})", key=self.name,
                              replay=state_db.is_replay(self.conn))

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


class OrderExecutor(OrderRecovery, ExternalActivity):
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

    def _recent_and_open_orders(self, since) -> dict[str, dict]:
        """{broker id: order} for the broker's orders entered since ``since`` and every open one."""
        listed = {str(o["order_id"]): o for o in self._call("list orders", self.broker.get_orders_since, since)}
        for o in self._call("list open orders", self.broker.get_open_orders):
            listed.setdefault(str(o["order_id"]), o)
        return listed

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
        print(f"our order {r['client_key']} is {r['status']} ({describe(r)})"
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
