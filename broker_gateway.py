"""The broker gateway: every call to the broker goes through here, so there is one retry rule and
one circuit breaker.

* The retry rule (``BrokerGateway.retrying``): a transient broker error (timeouts, connection
  errors, 429, 5xx; ``broker_base.TransientBrokerError``) is retried ``ORDER_RETRIES`` times,
  waiting ``ORDER_BACKOFF_S`` and doubling each time, as long as the wait still ends within
  ``BROKER_RETRY_DEADLINE_S`` of the first attempt; the last one, and every other error (a
  rejection, an open breaker, a refused login), is raised at once. ``call`` uses it for calls
  that are safe to repeat: creating the broker (Schwab's account lookup), the account, positions,
  quotes, order lists, order status and cancels; the executor's exactly-once send loop uses it
  too, with a step of its own between two attempts (the snapshot rule after an ambiguous failure,
  the kill switch).
* The gateway answers the broker's read calls under the broker's own names
  (``get_account_balance``, ``get_positions``, ``get_quotes``, ``simulated``), so code that reads
  an account (the cycle's portfolio, ``pnl.record_equity``, printing positions) is handed the
  gateway instead of the broker and every read it makes is retried.
* ``CircuitBreaker``: shared by every process through the state database (table
  ``circuit_breaker``, read by others with ``read_breaker``). It counts consecutive failures per
  kind of call (``KINDS``: reads, order submissions, cancels): a success resets only the count of
  its own kind, so order submissions that keep failing open it even when reads between them
  succeed. ``CIRCUIT_BREAKER_FAILURES`` consecutive failures of one kind open it ("Circuit
  breaker OPEN"), nothing of any kind is sent while open, after ``CIRCUIT_BREAKER_RECOVERY_S`` one
  trial call goes through ("Circuit breaker half-open"), and a success closes it ("Circuit breaker
  closed"); a kind still at the threshold opens it again at its next failure. A rejection counts
  as an answer (a success for the breaker).
* The broker is created on first use (``make_broker``), so building a gateway touches no network
  or credentials.
"""
from __future__ import annotations

import json
import logging
import sqlite3
import time
from datetime import datetime
from typing import Any, Callable, TypeVar

import alerts
import constants as C
import state_db
from broker_base import Broker, OrderNotFoundError, OrderRejectedError, TransientBrokerError
from errors import UserFacingError

log = logging.getLogger("execution")

T = TypeVar("T")

# the kinds of broker call the breaker counts apart
READ, SUBMIT, CANCEL = "read", "submit", "cancel"
KINDS = {READ: "reads (account, positions, quotes, order lists, order status)",
         SUBMIT: "order submissions", CANCEL: "order cancels"}

SCHEMA = [
    """CREATE TABLE IF NOT EXISTS circuit_breaker (
        name TEXT PRIMARY KEY,
        state TEXT NOT NULL,
        failures INTEGER NOT NULL,
        opened_at REAL,
        trial_started_at REAL,
        last_error TEXT,
        updated_at TEXT NOT NULL,
        kind_failures TEXT
    )""",
]
# columns newer than the table: (name, declaration)
_ADDED_COLUMNS = [("kind_failures", "TEXT")]      # JSON {kind: consecutive failures}


def ensure_schema(conn: sqlite3.Connection) -> None:
    """Create the table, and add the columns newer than an existing database."""
    state_db.ensure_schema(conn, SCHEMA)
    have = {r[1] for r in conn.execute("PRAGMA table_info(circuit_breaker)")}
    missing = [c for c in _ADDED_COLUMNS if c[0] not in have]
    if missing:
        with state_db.transaction(conn):
            have = {r[1] for r in conn.execute("PRAGMA table_info(circuit_breaker)")}
            for column, decl in missing:
                if column not in have:
                    conn.execute(f"ALTER TABLE circuit_breaker ADD COLUMN {column} {decl}")
                    log.info("state database: added column circuit_breaker.%s", column)


class CircuitOpenError(UserFacingError):
    """The circuit breaker is open: nothing is sent to the broker until it recovers."""


# ----------------------------------------------------------------------------- circuit breaker
_CLOSED = {"state": "closed", "failures": 0, "opened_at": None, "trial_started_at": None, "last_error": None,
           "kind_failures": {}}


def _decode(row) -> dict[str, Any]:
    out = dict(_CLOSED)
    out.update(dict(row))
    raw = out.get("kind_failures")
    try:
        kinds = json.loads(raw) if isinstance(raw, str) else raw or {}
    except ValueError:
        kinds = {}
    out["kind_failures"] = {k: int(v) for k, v in kinds.items()} if isinstance(kinds, dict) else {}
    return out


def read_breaker(conn: sqlite3.Connection, name: str = "broker") -> dict[str, Any] | None:
    """The breaker's row as a dict (``state``, ``failures``: the highest consecutive count of one
    kind, ``kind_failures`` {kind: count}, ``last_error``, ...), or None when no broker call was
    ever counted. Read-only: for the status page, the health check and ``status``."""
    try:
        row = conn.execute("SELECT * FROM circuit_breaker WHERE name = ?", (name,)).fetchone()
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return None
        raise
    if row is None:
        return None
    if not isinstance(row, sqlite3.Row):
        names = [d[0] for d in conn.execute("SELECT * FROM circuit_breaker LIMIT 0").description]
        row = dict(zip(names, row))
    return _decode(row)


def describe_breaker(status: dict[str, Any]) -> str:
    """``open (5 consecutive failures of order submissions, last: ...)`` for one-line views."""
    kinds = {k: n for k, n in (status.get("kind_failures") or {}).items() if n}
    worst = max(kinds, key=lambda k: kinds[k]) if kinds else None
    text = f"{status['state']} ({status['failures']} consecutive failures"
    if worst is not None:
        text += f" of {KINDS.get(worst, worst)}"
    if status.get("last_error"):
        text += f", last: {status['last_error']}"
    return text + ")"


class CircuitBreaker:
    """closed -> (N consecutive failures of one kind of call) -> open -> (recovery timeout) ->
    half-open -> one trial call -> closed on success, open again on failure. State lives in the
    state database, so every process (overlapping cron runs, the CLI) sees the same breaker."""

    def __init__(self, conn: sqlite3.Connection | None = None, name: str = "broker",
                 failures: int | None = None, recovery_s: float | None = None,
                 clock: Callable[[], float] = time.time):
        self.conn = conn or state_db.connect()
        ensure_schema(self.conn)
        self.name = name
        self.threshold = C.CIRCUIT_BREAKER_FAILURES if failures is None else failures
        self.recovery_s = C.CIRCUIT_BREAKER_RECOVERY_S if recovery_s is None else recovery_s
        self.clock = clock

    def _row(self) -> dict[str, Any]:
        row = self.conn.execute("SELECT * FROM circuit_breaker WHERE name = ?", (self.name,)).fetchone()
        return _decode({}) if row is None else _decode(row)

    def _save(self, row: dict[str, Any]) -> None:
        kinds = {k: n for k, n in row["kind_failures"].items() if n}
        row["kind_failures"] = kinds
        row["failures"] = max(kinds.values(), default=0)
        self.conn.execute(
            "INSERT INTO circuit_breaker(name, state, failures, opened_at, trial_started_at, last_error, updated_at,"
            " kind_failures) VALUES(?,?,?,?,?,?,?,?) ON CONFLICT(name) DO UPDATE SET state=excluded.state,"
            " failures=excluded.failures, opened_at=excluded.opened_at,"
            " trial_started_at=excluded.trial_started_at, last_error=excluded.last_error,"
            " updated_at=excluded.updated_at, kind_failures=excluded.kind_failures",
            (self.name, row["state"], row["failures"], row["opened_at"], row["trial_started_at"],
             row["last_error"], state_db.utcnow(), json.dumps(kinds, sort_keys=True)))

    def status(self) -> dict[str, Any]:
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

    def record_success(self, kind: str = READ) -> None:
        """An answer to a call of ``kind``: its count starts again; a trial's closes the breaker
        (the other kinds keep their counts: one still at the threshold reopens it at its next
        failure)."""
        with state_db.transaction(self.conn):
            row = self._row()
            if row["state"] != "closed":
                log.warning("Circuit breaker closed: trial call succeeded, trading resumes")
            if row["state"] != "closed" or row["kind_failures"].get(kind):
                row["kind_failures"].pop(kind, None)
                row.update(state="closed", opened_at=None, trial_started_at=None)
                if not any(row["kind_failures"].values()):
                    row["last_error"] = None
                self._save(row)

    def record_failure(self, error: str, kind: str = READ) -> None:
        with state_db.transaction(self.conn):
            row = self._row()
            row["kind_failures"][kind] = row["kind_failures"].get(kind, 0) + 1
            count = row["kind_failures"][kind]
            row["last_error"] = error[:500]
            opened = row["state"] == "half_open" or (row["state"] == "closed" and count >= self.threshold)
            if opened:
                row.update(state="open", opened_at=self.clock(), trial_started_at=None)
                log.error("Circuit breaker OPEN after %d consecutive failures of %s (last: %s); nothing is "
                          "sent for %.0f s, then one trial call", count, KINDS.get(kind, kind), error,
                          self.recovery_s)
            self._save(row)
        if opened:
            alerts.send_alert("circuit_breaker_open", f"{self.name} circuit breaker opened after "
                              f"{count} consecutive failures of {KINDS.get(kind, kind)} (last: {error[:200]})",
                              key=self.name, replay=state_db.is_replay(self.conn))

    def reset(self) -> None:
        with state_db.transaction(self.conn):
            self._save(_decode({}))
        log.warning("Circuit breaker closed: reset by an operator")


# ----------------------------------------------------------------------------- the gateway
class BrokerGateway:
    """The broker behind the circuit breaker and the retry rule (see the module docstring)."""

    def __init__(self, breaker: CircuitBreaker, broker: Broker | None = None, *,
                 make_broker: Callable[[], Broker] | None = None,
                 sleep: Callable[[float], Any] = time.sleep,
                 retries: int | None = None, backoff_s: float | None = None,
                 deadline_s: float | None = None, clock: Callable[[], float] = time.monotonic):
        if broker is None and make_broker is None:
            raise ValueError("BrokerGateway needs a broker or make_broker")
        self.breaker = breaker
        self._broker = broker
        self._make_broker = make_broker
        self.sleep = sleep
        self.clock = clock
        self.retries = C.ORDER_RETRIES if retries is None else retries
        self.backoff_s = C.ORDER_BACKOFF_S if backoff_s is None else backoff_s
        self.deadline_s = C.BROKER_RETRY_DEADLINE_S if deadline_s is None else deadline_s

    @property
    def broker(self) -> Broker:
        """The broker, created on first use through the retry rule and the breaker (creating
        Schwab's client looks the account up: a transient failure there is retried too)."""
        if self._broker is None:
            assert self._make_broker is not None
            self._broker = self.call("connect to the broker (account lookup)", self._make_broker)
        return self._broker

    # -- the one retry rule
    def wait_s(self, n: int) -> float:
        """The wait after the ``n``-th failed attempt: ``ORDER_BACKOFF_S`` doubled each time."""
        return self.backoff_s * 2 ** (n - 1)

    def retrying(self, what: str, attempt: Callable[[int], T], *,
                 before_retry: Callable[[TransientBrokerError], None] | None = None,
                 ambiguous_note: str = "") -> T:
        """``attempt(n)`` for n = 1, 2, ... until it returns: a transient broker error is retried
        ``retries`` times with the backoff of ``wait_s``, while the wait ends within
        ``deadline_s`` of the first attempt; the last one, and every other error, is raised.
        ``before_retry(error)`` runs after the wait, before the next attempt (it may end the
        retrying by raising); ``ambiguous_note`` ends the warning line of an ambiguous error."""
        attempts = self.retries + 1
        started = self.clock()
        for n in range(1, attempts + 1):
            try:
                return attempt(n)
            except TransientBrokerError as exc:
                if n >= attempts:
                    raise
                wait = self.wait_s(n)
                if self.clock() - started + wait > self.deadline_s:
                    log.warning("%s failed (%s); no retry: the next would start more than %.0f s after the "
                                "first attempt", what, exc, self.deadline_s)
                    raise
                note = ambiguous_note if exc.ambiguous else ""
                log.warning("%s failed (%s); retry %d of %d in %.1f s%s", what, exc, n, attempts - 1, wait, note)
                self.sleep(wait)
                if before_retry is not None:
                    before_retry(exc)
        raise AssertionError("unreachable: the last attempt returns or raises")

    # -- calls through the breaker
    def call_once(self, what: str, func: Callable[..., T], *args, kind: str = READ) -> T:
        """One attempt through the breaker (the caller does the retrying); ``kind`` (``KINDS``) is
        the count the breaker keeps it in. ``CircuitOpenError`` when the breaker refuses it: then
        nothing was sent."""
        if not self.breaker.allow():
            st = self.breaker.status()
            raise CircuitOpenError(f"Circuit breaker OPEN ({st['failures']} consecutive failures, last: "
                                   f"{st['last_error']}): {what} not sent")
        try:
            result = func(*args)
        except (OrderRejectedError, OrderNotFoundError):     # an answer, not a failure of the broker
            self.breaker.record_success(kind)
            raise
        except TransientBrokerError as exc:
            self.breaker.record_failure(f"{what}: {exc}", kind)
            raise
        except Exception as exc:
            self.breaker.record_failure(f"{what}: {type(exc).__name__}: {exc}", kind)
            raise
        self.breaker.record_success(kind)
        return result

    def call(self, what: str, func: Callable[..., T], *args, kind: str = READ) -> T:
        """A broker call that is safe to repeat, through the breaker with the retry rule."""
        return self.retrying(what, lambda n: self.call_once(what, func, *args, kind=kind))

    # -- the broker's calls the order path makes
    def place_order(self, spec: dict, what: str, accepted: dict[str, str] | None = None) -> str:
        """ONE attempt to place an order (an order is never simply resent: the executor's send
        loop decides between attempts). The broker's id goes into ``accepted["id"]`` the moment
        the broker answers, so a failure after that (our bookkeeping) is known to be after acceptance."""
        def attempt(order: dict) -> str:
            order_id = str(self.broker.place_order(order))
            if accepted is not None:
                accepted["id"] = order_id
            return order_id
        return str(self.call_once(what, attempt, spec, kind=SUBMIT))

    def preview_order(self, spec: dict, what: str) -> None:
        """The broker's preview of an order (nothing placed), safe to repeat: through the breaker
        with the retry rule. ``OrderRejectedError`` when the broker refuses it. A broker without
        a preview (a test double) has nothing to say."""
        preview = getattr(self.broker, "preview_order", None)
        if preview is not None:
            self.call(what, preview, spec)

    def get_order(self, order_id: str, what: str) -> dict:
        return self.call(what, self.broker.get_order, order_id)

    def cancel_order(self, order_id: str, what: str) -> None:
        self.call(what, self.broker.cancel_order, order_id, kind=CANCEL)

    def positions(self) -> dict[str, dict]:
        return self.call("positions", self.broker.get_positions)

    def open_orders(self) -> list[dict]:
        return self.call("list open orders", self.broker.get_open_orders)

    def orders_since(self, since: datetime, what: str = "list orders") -> list[dict]:
        return self.call(what, self.broker.get_orders_since, since)

    def transactions(self, start: datetime, end: datetime) -> list[dict]:
        """The broker's transactions between ``start`` and ``end`` (``get_transactions``), retried."""
        return self.call("list transactions", self.broker.get_transactions, start, end)

    def recent_and_open_orders(self, since: datetime) -> dict[str, dict]:
        """{broker id: order} for the broker's orders entered since ``since`` and every open one."""
        listed = {str(o["order_id"]): o for o in self.orders_since(since)}
        for o in self.open_orders():
            listed.setdefault(str(o["order_id"]), o)
        return listed

    # -- the broker's read calls under the broker's names (the gateway stands in for the broker)
    @property
    def simulated(self) -> bool:
        return self.broker.simulated

    def get_account_balance(self) -> dict:
        return self.call("account balance", self.broker.get_account_balance)

    def get_positions(self) -> dict[str, dict]:
        return self.positions()

    def get_quotes(self, symbols) -> dict[str, dict]:
        return self.call("quotes", self.broker.get_quotes, symbols)
