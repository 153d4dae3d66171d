"""Order execution: market hours, idempotent submission, retries, fills, the circuit breaker.

* ``OrderExecutor()`` constructs without network or credentials; the broker is created on first
  use (``trading_api.get_broker()``: the paper broker unless ``TRADING_MODE=live``); the errors
  it reacts to are ``broker_base``'s.
* ``is_market_open(dt)``: the NYSE regular session from exchange-calendars (holidays, 13:00
  early closes). A naive ``dt`` is the machine's local time; an aware one is converted.
* Idempotency: every intended order gets a deterministic client key (cycle date, symbol, side),
  recorded in the state database BEFORE it is sent. A rerun after a crash finds the key: an
  order that reached the broker is adopted (matched by client key or by symbol, side,
  quantity and time), never sent twice.
* Retries with exponential backoff for transient errors only (timeouts, 429, 5xx). A timed-out
  submission is reconciled with the broker before it is retried, since the order may have
  arrived. Rejections are never retried.
* Unfilled orders are cancelled after ``ORDER_FILL_TIMEOUT_S``; partial fills are tracked.
* ``CircuitBreaker``: shared by every process through the state database. ``5`` consecutive
  failures open it ("Circuit breaker OPEN"), nothing is sent while open, after ``60`` s one trial
  call goes through ("Circuit breaker half-open"), and a success closes it ("Circuit breaker
  closed").
"""
from __future__ import annotations

import logging
import time
from datetime import datetime, timezone

import constants as C
import market_calendar
import state_db
from audit_logging import AuditLogger
from broker_base import (FINAL_STATUSES, NEW, PARTIALLY_FILLED, WORKING, OrderRejectedError,
                         TransientBrokerError)
from errors import UserFacingError
from failpoints import failpoint
from trading_api import get_broker

log = logging.getLogger("execution")

TERMINAL = FINAL_STATUSES          # an order record in one of these states is done

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
        updated_at TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS orders_by_cycle ON orders(cycle_date)",
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
        state_db.ensure_schema(self.conn, _SCHEMA)
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
            if row["state"] == "half_open" or (row["state"] == "closed" and row["failures"] >= self.threshold):
                row.update(state="open", opened_at=self.clock(), trial_started_at=None)
                log.error("Circuit breaker OPEN after %d consecutive failures (last: %s); nothing is "
                          "sent for %.0f s, then one trial call", row["failures"], error, self.recovery_s)
            self._save(row)

    def reset(self) -> None:
        with state_db.transaction(self.conn):
            self._save({"state": "closed", "failures": 0, "opened_at": None, "trial_started_at": None,
                        "last_error": None})
        log.warning("Circuit breaker closed: reset by an operator")


# ----------------------------------------------------------------------------- executor
def client_key(cycle_date, symbol: str, side: str) -> str:
    """Deterministic key of one intended order: the same cycle, symbol and side -> the same key."""
    return f"{str(cycle_date)[:10]}:{symbol}:{side}"


class OrderExecutor:
    def __init__(self, broker=None, conn=None, audit=None, sleep=time.sleep):
        self._broker = broker
        self._conn = conn
        self._audit = audit
        self._breaker = None
        self.sleep = sleep

    # lazily built collaborators: constructing an executor touches no network or credentials
    @property
    def conn(self):
        if self._conn is None:
            self._conn = state_db.connect()
        state_db.ensure_schema(self._conn, _SCHEMA)
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
                 order.get("order_type", "MARKET"), order.get("limit_price"), order.get("price"),
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

    def _find_at_broker(self, record) -> str | None:
        """An order of ours that reached the broker without its id being stored (a crash or a
        timeout after sending): match it by client key, else by symbol, side and quantity since
        the intent was recorded."""
        since = datetime.fromisoformat(record["created_at"])
        for order in self._call_once("list orders", self.broker.get_orders_since, since):
            if order.get("client_key") == record["client_key"]:
                return str(order["order_id"])
            if (order.get("client_key") in (None, "") and order.get("symbol") == record["symbol"]
                    and order.get("side") == record["side"]
                    and int(order.get("quantity") or 0) == int(record["quantity"])):
                return str(order["order_id"])
        return None

    def submit(self, order: dict, cycle_date, mode: str = "paper") -> dict:
        """Send one order exactly once. Returns its database record."""
        key, new = self.record_intent(order, cycle_date, mode)
        record = self._record(key)
        if not new and record["status"] != "INTENDED":
            log.info("order %s already %s (broker id %s): not sent again", key, record["status"],
                     record["broker_order_id"])
            return record
        if not new:
            found = self._find_at_broker(record)
            if found:
                log.warning("order %s reached the broker before a crash (id %s): adopted, not resent",
                            key, found)
                self._update(key, status="SUBMITTED", broker_order_id=found,
                             submitted_at=record["created_at"])
                self.audit.log_event("order_reconciled", "adopted", {"client_key": key, "order_id": found})
                return self._record(key)
        failpoint("after_record_intent")
        spec = {"symbol": record["symbol"], "side": record["side"], "quantity": record["quantity"],
                "order_type": record["order_type"], "limit_price": record["limit_price"], "client_key": key}
        self.audit.log_event("order_submit", "attempt", {k: v for k, v in spec.items()})
        try:
            order_id = self._place_once(spec, record)
        except OrderRejectedError as exc:
            self._update(key, status="REJECTED", error=str(exc)[:500])
            log.error("order %s REJECTED by the broker: %s", key, exc)
            self.audit.log_event("order_submit", "rejected", {"client_key": key, "error": str(exc)})
            return self._record(key)
        except (TransientBrokerError, CircuitOpenError) as exc:
            # status stays INTENDED: the next run reconciles and, if the broker never got it, sends it
            self._update(key, error=str(exc)[:500])
            log.error("order %s not sent: %s", key, exc)
            self.audit.log_event("order_submit", "failed", {"client_key": key, "error": str(exc)})
            raise
        failpoint("after_place_order")
        self._update(key, status="SUBMITTED", broker_order_id=str(order_id), submitted_at=state_db.utcnow(),
                     error=None)
        log.info("order %s submitted: %s %d %s (%s) -> broker id %s", key, record["side"],
                 record["quantity"], record["symbol"], record["order_type"], order_id)
        self.audit.log_event("order_submit", "submitted", {"client_key": key, "order_id": str(order_id),
                                                            "symbol": record["symbol"], "side": record["side"],
                                                            "quantity": record["quantity"]})
        return self._record(key)

    def _place_once(self, spec, record) -> str:
        """place_order with retries; before each retry after a transient error, look at the
        broker's orders: a timed-out request may have arrived."""
        what = f"place {spec['client_key']}"

        def attempt(n):
            if n > 1:
                found = self._find_at_broker(record)
                if found:
                    log.warning("order %s arrived despite the error: adopted id %s", spec["client_key"], found)
                    return found
            return self._call_once(what, self.broker.place_order, spec)
        return self._retrying(what, attempt)

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
            status = PARTIALLY_FILLED if filled else "SUBMITTED"
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

    def wait_for_fills(self, keys, timeout_s: float | None = None, poll_s: float | None = None) -> list[dict]:
        """Poll until every order is terminal or the timeout passes; then cancel what is left
        (a partial fill keeps its filled part)."""
        timeout_s = C.ORDER_FILL_TIMEOUT_S if timeout_s is None else timeout_s
        poll_s = C.ORDER_POLL_INTERVAL_S if poll_s is None else poll_s
        deadline = time.monotonic() + timeout_s
        pending = [k for k in keys if (self._record(k) or {}).get("broker_order_id")]
        while pending:
            pending = [k for k in pending if self.refresh(k)["status"] not in TERMINAL]
            if not pending or time.monotonic() >= deadline:
                break
            self.sleep(poll_s)
        for key in pending:
            record = self._record(key)
            log.warning("order %s not filled within %.0f s (%d of %d filled): cancelling the rest",
                        key, timeout_s, record["filled_quantity"], record["quantity"])
            try:
                self._call(f"cancel {key}", self.broker.cancel_order, record["broker_order_id"])
            except Exception as exc:
                log.error("cancel of %s failed: %s (check the broker's open orders)", key, exc)
            self.refresh(key)
            self.audit.log_event("order_cancel", "timeout", {"client_key": key,
                                                              "filled_quantity": self._record(key)["filled_quantity"]})
        return [self._record(k) for k in keys]

    def reconcile(self) -> list[dict]:
        """At the start of a cycle: bring every unfinished order of earlier runs up to date."""
        done = []
        for record in self.open_orders():
            key = record["client_key"]
            if record["status"] == "INTENDED":
                found = self._find_at_broker(record)
                if found:
                    self._update(key, status="SUBMITTED", broker_order_id=found)
                    log.warning("reconcile: order %s had reached the broker (id %s)", key, found)
                else:
                    continue        # never sent; submit() sends it if the cycle still wants it
            done.append(self.refresh(key))
        return done

    def cancel_all_open(self) -> int:
        """Cancel every order the broker still has open (the emergency ``flatten``)."""
        count = 0
        for order in self._call("list open orders", self.broker.get_open_orders):
            self._call(f"cancel {order['order_id']}", self.broker.cancel_order, order["order_id"])
            count += 1
        return count
