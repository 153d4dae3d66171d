"""Order execution: market hours, exactly-once submission, retries, fills, the kill switch, the
circuit breaker and flatten.

* ``OrderExecutor()`` constructs without network or credentials; the broker is created on first
  use (``trading_api.get_broker()``: the paper broker unless ``TRADING_MODE=live``); the errors
  it reacts to are ``broker_base``'s.
* It is composed of collaborators, each built on first use and each with its own module: the
  order book (``order_book.OrderBook``: the ``orders`` table and the client keys), the broker
  gateway (``broker_gateway.BrokerGateway``: the circuit breaker and the one retry rule),
  ``order_recovery.OrderRecovery`` and ``external_activity.ExternalActivity``; tests and callers
  may pass ``broker`` (or ``make_broker``, called on first use), ``conn``, ``audit``, ``breaker``,
  ``sleep`` or a whole ``gateway``.
* ``is_market_open(dt)``: the NYSE regular session from exchange-calendars (holidays, 13:00
  early closes). A naive ``dt`` is the machine's local time; an aware one is converted.
* Exactly once (``order_recovery.py``): every intended order gets a deterministic
  client key and a row in ``orders`` (``INTENDED``) before anything is sent; right before the
  request the row becomes ``SENDING`` with a snapshot of the broker's recent orders, then
  ``SUBMITTED`` with the broker's id. A row whose fate is unknown is settled by the snapshot
  rule: adopted, sent again, or left to a person (``AmbiguousOrderError``, kill switch set).
* The kill switch (``kill_switch.py``) is read in the transaction that marks an order
  ``SENDING`` (so nothing is sent after a halt commits) and between fill polls. Set mid-cycle:
  ``KillSwitchSet`` is raised, nothing more is sent and, by default
  (``HALT_CANCELS_UNFILLED``), the cycle's unfilled orders are cancelled (audited).
* Before the send loop (``_lint_and_preview``): our order lint (``order_lint.py``, every broker)
  and the broker's preview (Schwab's previewOrder, through the gateway's retry rule); a refusal
  leaves the row ``REJECTED`` with ``refused before sending (lint|preview): ...``, one line, an
  audit record ``refused``; nothing is sent.
* Retries with exponential backoff for transient errors only (timeouts, 429, 5xx), by the
  gateway's one retry rule, the send loop included. After an ambiguous one (the request may have
  arrived) the snapshot rule decides before any resend. Rejections are never retried.
* Unfilled orders are cancelled after ``ORDER_FILL_TIMEOUT_S``; partial fills are tracked. Only
  our own orders are ever cancelled by that timeout: rows linked by our POST's answer or adopted
  with certainty; an order of ours the broker does not know (404) becomes ``UNKNOWN_AT_BROKER``
  for a person (``resolve``) and the others are still managed.
* After the broker accepted an order, no message says it was not sent: a failing write after its
  answer raises ``OrderNotRecordedError`` ("sent and accepted by the broker as ID; not yet
  recorded: the next run adopts it; do NOT re-enter it by hand"), the id kept in the audit trail.
* ``flatten(session_date, mode)``: cancels open orders and closes every position through
  ``submit`` with keys ``flatten-YYYY-MM-DD-SYMBOL-SIDE``, so a rerun never closes twice. Its
  closing orders are never cancelled at the timeout; the result says whether the broker reports
  the account flat (``flat``), which positions are still open and which closing orders still work.
* Protective stops (``protective_stops.py``, ``PROTECTIVE_STOPS``): ``protect`` keeps one GTC stop
  per position at the broker, sent through ``submit`` like any order (``kind`` stop); a halt never
  cancels them (``cancel_unfilled`` skips them), ``flatten`` cancels them after the closes; a
  refresh that finds one filled records it as ours (``stop_filled``).
* Collars (``ORDER_TYPE = "limit_collar"``): the cycle sends LIMIT DAY orders; ``retry_collared``
  reports one the fill timeout cancelled and retries it once per session (key ``KEY:retry``).
* ``external_activity(mode)`` and ``record_positions`` (``external_activity.py``): broker orders
  and position changes that are not ours, reported, never traded against.
* ``CircuitBreaker`` (``broker_gateway.py``, importable from here): shared by every process
  through the state database. ``5`` consecutive
  failures open it ("Circuit breaker OPEN"), nothing is sent while open, after ``60`` s one trial
  call goes through ("Circuit breaker half-open"), and a success closes it ("Circuit breaker
  closed").

Command line (the operator's tools when recovery halts for a person)::

    python trading_execution.py orders [--hours H]     # the broker's recent orders, ours marked
    python trading_execution.py resolve KEY --order-id ID --reason "..."   # this one is ours
    python trading_execution.py resolve KEY --not-sent --reason "..."      # none of them is ours
    (KEY is SENDING and ambiguous, or UNKNOWN_AT_BROKER: the broker does not know its id)
"""
from __future__ import annotations

import argparse
import logging
import sqlite3
import sys
import time
from datetime import datetime, timezone
from typing import Any, Callable, NoReturn

import alerts
import broker_gateway
import config
import constants as C
import external_activity
import kill_switch
import logging_setup
import market_calendar
import order_book
import order_lint
import state_db
from audit_logging import AuditLogger
from broker_base import (BUY_TO_COVER, CANCELED, EXPIRED, LIMIT, MARKET, NEW, PARTIALLY_FILLED, REJECTED, WORKING,
                         Broker, BrokerError, OrderNotFoundError, OrderRejectedError, SELL, TransientBrokerError)
from broker_gateway import BrokerGateway, CircuitBreaker, CircuitOpenError
from errors import StorageError, UserFacingError, install_excepthook
from external_activity import ExternalActivity
from failpoints import failpoint
from kill_switch import KillSwitchSet
from order_book import (ENTRY, EXIT, FLATTEN_PREFIX, INTENDED, NOT_POLLED, RETRY_SUFFIX, SENDING, STOP_KIND,
                        SUBMITTED, TERMINAL, UNKNOWN_AT_BROKER, OrderBook, Record, client_key, flatten_key)
from order_lint import OrderLintError
from order_recovery import ACCEPTED_NOT_RECORDED, OrderNotRecordedError, OrderRecovery, describe, unknown_line
from protective_stops import ProtectiveStops
from trading_api import get_broker

log = logging.getLogger("execution")

# names other modules and the runbook import from here
__all__ = ["OrderExecutor", "HaltCheck", "CircuitBreaker", "CircuitOpenError", "client_key", "flatten_key",
           "FLATTEN_PREFIX", "TERMINAL", "ensure_schema", "flatten_not_flat_line", "main"]


def ensure_schema(conn: sqlite3.Connection) -> None:
    """Create the tables of the order path (each declared by the module that owns it)."""
    order_book.ensure_schema(conn)
    broker_gateway.ensure_schema(conn)
    external_activity.ensure_schema(conn)


class HaltCheck:
    """The kill switch as the order path reads it: before an order is sent (in the transaction
    that marks it ``SENDING``) and between fill polls. ``flatten`` runs under the switch: its
    orders go out with ``ignore=True`` (``submit(..., ignore_halt=True)``)."""

    def __init__(self, conn: sqlite3.Connection, *, ignore: bool = False):
        self.conn = conn
        self.ignore = ignore

    def check(self, what: str) -> None:
        """``KillSwitchSet`` when the switch is on (never when ignored)."""
        if not self.ignore:
            kill_switch.check(self.conn, what)

    def current(self) -> dict | None:
        """The switch's value, or None (always None when ignored)."""
        return None if self.ignore else kill_switch.get(self.conn)


class _FoundAtBroker(Exception):
    """Ends the send loop: recovery found the order at the broker (``record``, adopted)."""

    def __init__(self, record: Record):
        super().__init__(record["client_key"])
        self.record = record


class _NotSent(Exception):
    """Ends the send loop: the snapshot or the recovery call before an attempt failed (``error``)."""

    def __init__(self, error: Exception):
        super().__init__(str(error))
        self.error = error


def _stop_failpoint(name: str, order: dict) -> None:
    """The crash points of a protective stop's send (``stop_after_record_intent``,
    ``stop_after_sending_mark``, ``stop_after_place_order``): the entry's own points come first."""
    if order.get("kind") == STOP_KIND or str(order.get("order_type") or "").upper() == "STOP":
        failpoint(f"stop_{name}")


class OrderExecutor:
    def __init__(self, broker: Broker | None = None, conn: sqlite3.Connection | None = None, audit=None,
                 sleep: Callable[[float], Any] = time.sleep, cancel_on_halt: bool | None = None,
                 breaker: CircuitBreaker | None = None, gateway: BrokerGateway | None = None,
                 make_broker: Callable[[], Broker] = get_broker):
        self._broker = broker
        self._make_broker = make_broker
        self._conn = conn
        self._audit = audit
        self._breaker = breaker
        self._book: OrderBook | None = None
        self._gateway = gateway
        self._recovery: OrderRecovery | None = None
        self._external: ExternalActivity | None = None
        self._stops: ProtectiveStops | None = None
        self._schema_ready = False
        self.sleep = sleep
        self.cancel_on_halt = C.HALT_CANCELS_UNFILLED if cancel_on_halt is None else cancel_on_halt
        self._halted: dict | None = None

    # lazily built collaborators: constructing an executor touches no network or credentials
    @property
    def conn(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = state_db.connect()
        if not self._schema_ready:
            ensure_schema(self._conn)
            self._schema_ready = True
        return self._conn

    @property
    def audit(self):
        if self._audit is None:
            self._audit = AuditLogger()
        return self._audit

    @property
    def book(self) -> OrderBook:
        if self._book is None:
            self._book = OrderBook(self.conn)
        return self._book

    @property
    def gateway(self) -> BrokerGateway:
        if self._gateway is None:
            self._gateway = BrokerGateway(self._breaker or CircuitBreaker(self.conn), self._broker,
                                          make_broker=self._make_broker, sleep=self.sleep)
        return self._gateway

    @property
    def broker(self) -> Broker:
        return self.gateway.broker

    @property
    def breaker(self) -> CircuitBreaker:
        return self.gateway.breaker

    @property
    def recovery(self) -> OrderRecovery:
        if self._recovery is None:
            self._recovery = OrderRecovery(self.book, self.gateway, self.audit, self.refresh)
        return self._recovery

    @property
    def external(self) -> ExternalActivity:
        if self._external is None:
            self._external = ExternalActivity(self.book, self.gateway, self.audit, self.refresh)
        return self._external

    @property
    def stops(self) -> ProtectiveStops:
        if self._stops is None:
            self._stops = ProtectiveStops(self.book, self.gateway, self.audit, self.submit, self.refresh,
                                          self.recovery.settle_sending)
        return self._stops

    def protect(self, session_date, mode: str, closes: dict[str, list[float]] | None = None) -> dict:
        """One working GTC stop per position at the broker (``ProtectiveStops.sync``; nothing when
        ``PROTECTIVE_STOPS`` is off and no stop of ours rests)."""
        return self.stops.sync(session_date, mode, closes)

    @property
    def halted(self) -> dict | None:
        """The kill switch's value once this executor met it, or recovery set it."""
        if self._halted is None and self._recovery is not None:
            return self._recovery.halted
        return self._halted

    @halted.setter
    def halted(self, switch: dict | None) -> None:
        self._halted = switch

    # -- market hours
    def is_market_open(self, dt=None) -> bool:
        """True while the NYSE regular session is open at ``dt`` (default: now)."""
        return market_calendar.is_open(dt if dt is not None else datetime.now(timezone.utc))

    # -- order records (the order book) and recovery
    def record_intent(self, order: dict, cycle_date, mode: str) -> tuple[str, bool]:
        """Write the order to the database before it is sent. Returns (key, new?)."""
        return self.book.record_intent(order, cycle_date, mode)

    def orders_for_cycle(self, cycle_date) -> list[Record]:
        return self.book.for_cycle(cycle_date)

    def open_orders(self) -> list[Record]:
        return self.book.open_orders()

    def linked_keys(self) -> dict[str, str]:
        """{broker order id: our client key} for every row that has a broker id."""
        return self.book.linked_keys()

    def _get(self, key: str) -> Record:
        record = self.book.get(key)
        assert record is not None, f"order {key} vanished from the order book"
        return record

    def reconcile(self) -> list[dict]:
        """At the start of a cycle: bring every unfinished order of earlier runs up to date
        (``OrderRecovery.reconcile``)."""
        return self.recovery.reconcile()

    def broker_orders(self, hours: float | None = None) -> list[dict]:
        return self.recovery.broker_orders(hours)

    def resolve(self, key: str, order_id: str | None, reason: str) -> dict:
        return self.recovery.resolve(key, order_id, reason)

    def external_activity(self, mode: str) -> dict:
        """Broker orders and position changes that are not ours (``ExternalActivity.report``)."""
        return self.external.report(mode)

    def record_positions(self, cycle_date, mode: str) -> dict:
        return self.external.record_positions(cycle_date, mode)

    # -- submission
    def submit(self, order: dict, cycle_date, mode: str = "paper", *, ignore_halt: bool = False) -> Record:
        """Send one order exactly once. Returns its database record.

        ``KillSwitchSet`` when the kill switch is on (nothing sent; the cycle's unfilled orders
        cancelled by default); ``AmbiguousOrderError`` when recovery cannot tell which broker
        order is ours. ``ignore_halt`` is for ``flatten`` only, which runs under the switch."""
        halt = HaltCheck(self.conn, ignore=ignore_halt)
        key, _new = self.book.record_intent(order, cycle_date, mode)
        failpoint("after_record_intent")
        record = self._get(key)
        _stop_failpoint("after_record_intent", record)
        if record["status"] == SENDING:
            record = self.recovery.settle_sending(record, "rerun")
        if record["status"] != INTENDED:
            log.info("order %s already %s (broker id %s): not sent again", key, record["status"],
                     record["broker_order_id"])
            return record
        try:
            return self._send(record, halt)
        except KillSwitchSet as exc:
            self._on_halt(exc.switch or {}, cycle_date, key)
            raise

    def _on_halt(self, switch: dict, cycle_date, key: str | None = None) -> None:
        self.halted = switch
        log.warning("kill switch is ON (%s): %s", kill_switch.describe(switch),
                    f"order {key} not sent" if key else "nothing more is sent")
        self.audit.log_event("order_submit", "halted", {"client_key": key, "kill_switch": switch})
        if self.cancel_on_halt:
            self.cancel_unfilled(cycle_date, "kill_switch")

    def _send(self, record: Record, halt: HaltCheck) -> Record:
        """The send loop: each attempt marks the row SENDING with a fresh snapshot and places the
        order; the gateway's retry rule decides whether another attempt follows."""
        key = record["client_key"]
        halt.check(f"order {key}")     # before the snapshot costs a call
        spec = {"symbol": record["symbol"], "side": record["side"], "quantity": record["quantity"],
                "order_type": record["order_type"], "limit_price": record["limit_price"],
                "stop_price": record.get("stop_price"), "duration": record.get("duration") or "DAY", "client_key": key}
        refused = self._lint_and_preview(key, spec, closing=halt.ignore)
        if refused is not None:
            return refused
        try:
            order_id = self.gateway.retrying(
                f"place {key}", lambda n: self._send_attempt(spec, n, halt),
                before_retry=lambda exc: self._before_resend(key, exc, halt),
                ambiguous_note=" after looking for it at the broker")
        except _FoundAtBroker as found:
            return found.record
        except _NotSent as stop:
            self._not_sent(key, stop.error)
        except OrderRejectedError as exc:
            return self._rejected(key, exc)
        except CircuitOpenError as exc:      # refused before any request: certainly not sent
            self.book.update(key, status=INTENDED)
            self._not_sent(key, exc)
        except TransientBrokerError as exc:  # the last attempt failed too
            if not exc.ambiguous:
                self.book.update(key, status=INTENDED)
            self._not_sent(key, exc)
        return self._submitted(key, order_id)

    def _lint_and_preview(self, key: str, spec: dict, closing: bool = False) -> Record | None:
        """Before anything is sent: our lint (``order_lint.py``, every broker), then the broker's
        preview (Schwab's preview endpoint, through the gateway's retry rule). A refusal is the
        row REJECTED with why, one line and an audit record; None when the order may go. A
        preview that cannot be reached leaves the order unsent, except ``closing`` (``flatten``'s
        orders, sent under the kill switch): an unreachable preview never keeps a position open."""
        try:
            order_lint.check(spec)
        except OrderLintError as exc:
            return self._refused(key, exc, "lint")
        try:
            self.gateway.preview_order(spec, f"preview {key}")
        except OrderRejectedError as exc:
            return self._refused(key, exc, "preview")
        except (BrokerError, CircuitOpenError) as exc:    # no answer: nothing was placed, the row stays INTENDED
            if not closing:
                self._not_sent(key, exc)
            log.warning("order %s: the broker's preview could not be reached (%s); a flatten order is sent anyway",
                        key, exc)
            self.audit.log_event("order_submit", "preview_skipped", {"client_key": key, "error": str(exc)})
        return None

    def _refused(self, key: str, exc: OrderRejectedError, stage: str) -> Record:
        self.book.update(key, status=REJECTED, error=f"refused before sending ({stage}): {exc}"[:500])
        log.error("order %s refused before sending: %s", key, exc)
        self.audit.log_event("order_submit", "refused", {"client_key": key, "stage": stage, "error": str(exc)})
        return self._get(key)

    def _send_attempt(self, spec: dict, n: int, halt: HaltCheck) -> str:
        """One attempt: INTENDED -> SENDING with a fresh snapshot (the kill switch read in that
        transaction), then the request through the breaker."""
        key = spec["client_key"]
        try:
            self.book.mark_sending(key, self.recovery.snapshot(), lambda: halt.check(f"order {key}"))
        except (TransientBrokerError, CircuitOpenError) as exc:
            raise _NotSent(exc) from None
        failpoint("after_sending_mark")
        _stop_failpoint("after_sending_mark", spec)
        if n == 1:
            self.audit.log_event("order_submit", "attempt", dict(spec))
        placed: dict[str, str] = {}
        try:
            return self.gateway.place_order(spec, f"place {key}", placed)
        except Exception as exc:
            if "id" in placed:   # the broker accepted it; what failed is our bookkeeping after its answer
                raise self._accepted_not_recorded(key, placed["id"], exc) from None
            raise

    def _before_resend(self, key: str, exc: TransientBrokerError, halt: HaltCheck) -> None:
        """Between two attempts: after an ambiguous failure (it may have arrived) the snapshot
        rule decides, and an order found at the broker is adopted, not resent; after any other
        the row is INTENDED again. Then the kill switch."""
        if exc.ambiguous:
            try:
                settled = self.recovery.settle_sending(self._get(key), "retry")
            except (TransientBrokerError, CircuitOpenError) as again:
                raise _NotSent(again) from None
            if settled["status"] != INTENDED:
                raise _FoundAtBroker(settled)
        else:
            self.book.update(key, status=INTENDED)
        halt.check(f"order {key}")

    def _submitted(self, key: str, order_id: str) -> Record:
        failpoint("after_place_order")
        _stop_failpoint("after_place_order", self._get(key))
        try:
            self.book.update(key, status=SUBMITTED, broker_order_id=order_id, submitted_at=state_db.utcnow(),
                             error=None)
        except (sqlite3.Error, StorageError) as exc:
            raise self._accepted_not_recorded(key, order_id, exc) from None
        record = self._get(key)
        log.info("order %s submitted: %s %d %s (%s) -> broker id %s", key, record["side"],
                 record["quantity"], record["symbol"], record["order_type"], order_id)
        try:
            self.audit.log_event("order_submit", "submitted", {"client_key": key, "order_id": order_id,
                                                                "symbol": record["symbol"], "side": record["side"],
                                                                "quantity": record["quantity"]})
        except Exception as exc:
            error = OrderNotRecordedError(record, order_id, exc, recorded=True)
            log.error("%s", error)
            raise error from None
        return record

    def _accepted_not_recorded(self, key: str, order_id: str, cause: Exception) -> OrderNotRecordedError:
        """The broker accepted ``key`` as ``order_id`` and the state database did not take it. The
        id goes to the audit trail (a file, not the database), from which the next run adopts it
        with certainty; the message, the log line and the alert say it was sent."""
        record = self._get(key)
        try:
            self.audit.log_event("order_submit", ACCEPTED_NOT_RECORDED, {
                "client_key": key, "order_id": order_id, "symbol": record["symbol"], "side": record["side"],
                "quantity": record["quantity"], "error": f"{type(cause).__name__}: {cause}"})
            error = OrderNotRecordedError(record, order_id, cause)
        except Exception as audit_exc:
            error = OrderNotRecordedError(record, order_id, cause, adoptable=False)
            log.error("audit record of order %s (broker id %s) failed too: %s", key, order_id, audit_exc)
        log.error("%s", error)
        alerts.send_alert("order_not_recorded", str(error), key=key, replay=state_db.is_replay(self.conn))
        return error

    def _rejected(self, key: str, exc: OrderRejectedError) -> Record:
        self.book.update(key, status=REJECTED, error=str(exc)[:500])
        log.error("order %s REJECTED by the broker: %s", key, exc)
        self.audit.log_event("order_submit", "rejected", {"client_key": key, "error": str(exc)})
        return self._get(key)

    def _not_sent(self, key: str, exc: Exception) -> NoReturn:
        """The order may not have gone (status INTENDED) or may have (SENDING: the next run
        decides by the snapshot rule); either way the caller hears the error."""
        self.book.update(key, error=str(exc)[:500])
        status = self._get(key)["status"]
        log.error("order %s not sent%s: %s", key,
                  " (it may have reached the broker: the next run looks)" if status == SENDING else "", exc)
        self.audit.log_event("order_submit", "failed", {"client_key": key, "error": str(exc),
                                                        "status": status})
        raise exc

    # -- fills
    def refresh(self, key: str) -> Record | None:
        """Ask the broker for an order's state and store it."""
        record = self.book.get(key)
        if not record or not record["broker_order_id"] or record["status"] in NOT_POLLED:
            return record
        try:
            state = self.gateway.get_order(record["broker_order_id"], f"status of {key}")
        except OrderNotFoundError as exc:      # an answer: the broker does not know this id
            return self.recovery.mark_unknown(record, exc)
        status = state["status"]
        filled = int(state.get("filled_quantity") or 0)
        if status in (NEW, WORKING):        # the broker has it, still open
            status = PARTIALLY_FILLED if filled else SUBMITTED
        changed = status != record["status"] or filled != record["filled_quantity"]
        self.book.update(key, status=status, filled_quantity=filled, avg_fill_price=state.get("avg_fill_price"))
        if record.get("kind") == STOP_KIND and filled > int(record["filled_quantity"] or 0):
            self.stops.fired(self._get(key), int(record["filled_quantity"] or 0))     # ours by its broker id
        if changed and filled:
            log.info("order %s %s: %d of %d filled at %.4f", key, status, filled, record["quantity"],
                     state.get("avg_fill_price") or 0.0)
        if changed and status in TERMINAL:
            self.audit.log_event("order_fill", status.lower(), {
                "client_key": key, "order_id": record["broker_order_id"], "symbol": record["symbol"],
                "side": record["side"], "quantity": record["quantity"], "filled_quantity": filled,
                "avg_fill_price": state.get("avg_fill_price")})
        return self.book.get(key)

    def _status(self, key: str) -> str:
        record = self.refresh(key)
        assert record is not None, f"order {key} vanished from the order book"
        return record["status"]

    def wait_for_fills(self, keys, timeout_s: float | None = None, poll_s: float | None = None,
                       *, ignore_halt: bool = False, cancel_at_timeout: bool = True) -> list[Record | None]:
        """Poll until every order is terminal or the timeout passes; then cancel what is left
        (a partial fill keeps its filled part; ``cancel_at_timeout=False``, flatten's, leaves it
        working). Only our own orders are polled or cancelled: rows linked by our POST's answer
        or adopted with certainty (``order_recovery``); an ``UNKNOWN_AT_BROKER`` row is skipped.
        The kill switch is read between polls: once it is on, the unfilled ones are cancelled at
        once (unless ``cancel_on_halt`` is off) and ``self.halted`` holds its value.
        ``ignore_halt`` is for ``flatten`` only."""
        halt = HaltCheck(self.conn, ignore=ignore_halt)
        timeout_s = C.ORDER_FILL_TIMEOUT_S if timeout_s is None else timeout_s
        poll_s = C.ORDER_POLL_INTERVAL_S if poll_s is None else poll_s
        deadline = time.monotonic() + timeout_s
        pending = [k for k in keys if (self.book.get(k) or {}).get("broker_order_id")]
        while pending:
            pending = [k for k in pending if self._status(k) not in NOT_POLLED]
            pending = [k for k in pending if not self._accepted_for_next_open(k)]
            failpoint("after_fill_poll")
            if not pending:
                break
            switch = halt.current()
            if switch:
                self.halted = switch
                log.warning("kill switch is ON (%s) while %d orders wait for fills: %s",
                            kill_switch.describe(switch), len(pending),
                            "cancelling them" if self.cancel_on_halt else "left open (HALT_CANCELS_UNFILLED off)")
                if self.cancel_on_halt:
                    self._cancel_keys(pending, "kill_switch")
                return [self.book.get(k) for k in keys]
            if time.monotonic() >= deadline:
                if not cancel_at_timeout:
                    log.warning("%d orders not filled within %.0f s: left working at the broker",
                                len(pending), timeout_s)
                    break
                log.warning("%d orders not filled within %.0f s: cancelling the rest", len(pending), timeout_s)
                self._cancel_keys(pending, "timeout")
                break
            self.sleep(poll_s)
        return [self.book.get(k) for k in keys]

    def _accepted_for_next_open(self, key: str) -> bool:
        """A market (or collared limit) order at a broker that fills it at the next session's open (the paper broker,
        ``PAPER_FILL = "next_open"``) and is still unfilled is accepted, not late: waiting cannot
        fill it, and cancelling it at the timeout would undo a valid order. The next cycle's
        ``sync_prices`` fills it and its ``reconcile`` records the fill."""
        if not self.broker.fills_at_next_open:
            return False
        record = self._get(key)
        if record["status"] != SUBMITTED or record.get("order_type", MARKET) not in (MARKET, LIMIT):
            return False      # a collared LIMIT too: the paper broker tries it at the next open (collar_fill)
        log.info("order %s accepted: the paper broker fills it at the next session's open", key)
        return True

    def _cancel_keys(self, keys, why: str) -> None:
        """Cancel our orders ``keys`` at the broker (a partial fill keeps its filled part); audited."""
        for key in keys:
            record = self.book.get(key)
            if not record or not record["broker_order_id"] or record["status"] in NOT_POLLED:
                continue
            log.warning("order %s cancelled (%s): %d of %d filled", key, why, record["filled_quantity"],
                        record["quantity"])
            try:
                self.gateway.cancel_order(record["broker_order_id"], f"cancel {key}")
            except Exception as exc:
                log.error("cancel of %s failed: %s (check the broker's open orders)", key, exc)
            failpoint("after_fill_cancel")
            try:
                self.refresh(key)
            except BrokerError as exc:
                log.error("status of %s after its cancel unknown: %s", key, exc)
            self.audit.log_event("order_cancel", why, {"client_key": key, "order_id": record["broker_order_id"],
                                                       "filled_quantity": self._get(key)["filled_quantity"]})

    def cancel_unfilled(self, cycle_date, why: str = "kill_switch") -> list[str]:
        """Cancel the unfilled orders of one cycle (not ``flatten``'s, not the protective stops:
        a halt leaves the resting stops at the broker). Returns their keys."""
        keys = [r["client_key"] for r in self.book.for_cycle(cycle_date)
                if r["broker_order_id"] and r["status"] not in NOT_POLLED
                and not r["client_key"].startswith(FLATTEN_PREFIX) and r.get("kind") != STOP_KIND]
        self._cancel_keys(keys, why)
        return keys

    def cancel_all_open(self, keep=()) -> int:
        """Cancel every order the broker still has open, except the broker ids in ``keep``; our
        rows for them are refreshed. Returns how many were cancelled."""
        count = 0
        linked = self.book.linked_keys()
        for order in self.gateway.open_orders():
            oid = str(order["order_id"])
            if oid in keep:
                continue
            self.gateway.cancel_order(oid, f"cancel {oid}")
            count += 1
            self.audit.log_event("order_cancel", "flatten", {"order_id": oid, "client_key": linked.get(oid),
                                                             "symbol": order.get("symbol")})
            if oid in linked:
                self.refresh(linked[oid])
        return count

    # -- collared limit orders (ORDER_TYPE = "limit_collar")
    def retry_collared(self, keys, cycle_date, mode: str) -> list[str]:
        """The collared LIMIT orders among ``keys`` that the fill timeout cancelled unfilled (in
        whole or part): each is reported (one WARNING line, audit ``collar_unfilled``, alert
        ``collar_unfilled``) and retried ONCE per session for what is left, at the same limit,
        under its own recorded key (``KEY`` + ``RETRY_SUFFIX``): a rerun finds that row and never
        sends a third. A retry that ends unfilled too is reported and not sent again. Nothing is
        retried once the kill switch stopped the cycle. Returns the keys of the retries sent."""
        retried: list[str] = []
        for key in keys:
            r = self.book.get(key)
            if (not r or r["order_type"] != LIMIT or r.get("kind") not in (ENTRY, EXIT)
                    or r["status"] not in (CANCELED, EXPIRED) or int(r["filled_quantity"]) >= int(r["quantity"])):
                continue
            left = int(r["quantity"]) - int(r["filled_quantity"])
            again = key.endswith(RETRY_SUFFIX)
            retry_key = key + RETRY_SUFFIX
            if not again and self.book.get(retry_key) is not None:
                continue                                   # retried already (a rerun): never a third
            line = (f"COLLAR NOT FILLED {r['symbol']}: order {key} ({describe(r)} limit {r['limit_price']}) "
                    f"not filled inside its collar within {C.ORDER_FILL_TIMEOUT_S:g} s: cancelled ({left} of "
                    f"{r['quantity']} unfilled); " + (
                        "this was its one retry of the session: not sent again until the next cycle"
                        if again else ("not retried: the kill switch is on" if self.halted
                                       else f"retried once as {retry_key}")))
            log.warning("%s", line)
            self.audit.log_event("collar_unfilled", "retry_failed" if again else "retrying" if not self.halted
                                 else "halted", {"client_key": key, "symbol": r["symbol"], "side": r["side"],
                                                 "unfilled": left, "limit_price": r["limit_price"],
                                                 "retry_key": None if again else retry_key})
            alerts.send_alert("collar_unfilled", line, key=key, replay=state_db.is_replay(self.conn))
            if again or self.halted:
                continue
            record = self.submit({"symbol": r["symbol"], "side": r["side"], "quantity": left, "order_type": LIMIT,
                                  "limit_price": r["limit_price"], "price": r["reference_price"],
                                  "reason": f"retry of {key}", "kind": r["kind"], "client_key": retry_key},
                                 cycle_date, mode)
            if record.get("broker_order_id") and record["status"] not in TERMINAL:
                retried.append(retry_key)
        return retried

    # -- flatten
    def _flatten_key(self, day: str, symbol: str, side: str) -> str:
        """This session's key for closing ``symbol``: the first attempt's, or the next one when the
        earlier attempt ended without closing the position."""
        attempt = 1
        while True:
            key = flatten_key(day, symbol, side, attempt)
            record = self.book.get(key)
            if record and record["broker_order_id"] and record["status"] not in TERMINAL:
                record = self.refresh(key)
            if record is None or record["status"] not in TERMINAL:
                return key
            attempt += 1

    def flatten(self, session_date, mode: str, *, wait: bool = True, timeout_s: float | None = None) -> dict:
        """Cancel every open order at the broker (the protective stops only after the positions
        are closed) and close every position with a market order.

        The caller sets the kill switch first and holds the cycle lock; these orders are sent under
        the switch (``ignore_halt``). Keys are ``flatten-YYYY-MM-DD-SYMBOL-SIDE``: a rerun the same
        session finds its earlier closing orders (still working: kept and waited for; filled: the
        position is gone) and never closes twice. Closing orders unfilled after the wait are LEFT
        WORKING (never cancelled: they are what closes the positions). A symbol whose closing order
        fails is reported and the others are still closed.

        Returns ``{"cancelled", "orders", "open_positions", "working", "failed", "flat",
        "stops_cancelled", "stops_kept"}`` (the protective stops' keys: cancelled after their
        positions closed, kept for a position still open):
        ``open_positions`` the broker's non-zero positions after the wait ({symbol: quantity}),
        ``working`` the closing orders still open at the broker, ``failed`` [(symbol, error)],
        ``flat`` True only when the broker reports no open position."""
        day = str(session_date)[:10]
        self.audit.log_event("flatten", "started", {"session_date": day, "mode": mode})
        resting = {str(r["broker_order_id"]) for r in self.book.resting_stops()}   # cancelled AFTER the closes
        cancelled = self.cancel_all_open(keep=self.book.flatten_broker_ids(day) | resting)
        keys, failed = [], []
        for symbol, position in sorted(self.gateway.positions().items()):
            qty = int(position["quantity"])
            if qty == 0:
                continue
            side = SELL if qty > 0 else BUY_TO_COVER
            try:
                record = self._close(day, mode, symbol, side, qty, position)
            except (BrokerError, UserFacingError) as exc:
                log.error("flatten: closing order for %s %+d failed: %s", symbol, qty, exc)
                failed.append((symbol, str(exc)))
                continue
            if record.get("broker_order_id"):
                keys.append(record["client_key"])
        final = (self.wait_for_fills(keys, timeout_s, ignore_halt=True, cancel_at_timeout=False)
                 if wait and keys else [self.book.get(k) for k in keys])
        final = [r for r in final if r is not None]
        open_positions = {sym: int(p["quantity"]) for sym, p in sorted(self.gateway.positions().items())
                          if int(p["quantity"]) != 0}
        working = [r for r in final if r["status"] not in NOT_POLLED]
        # the protective stops go after the positions are closed; a closing order the paper broker
        # fills at the next open (before any stop can trigger) counts as closed
        certain = {r["symbol"] for r in working if self.broker.fills_at_next_open}
        stops = self.stops.sync(day, mode, closed=certain) if resting else {"cancelled": [], "kept": []}
        done = {"cancelled": cancelled, "orders": final, "open_positions": open_positions, "working": working,
                "failed": failed, "flat": not open_positions, "stops_cancelled": stops["cancelled"],
                "stops_kept": stops["kept"]}
        self.audit.log_event("flatten", "done" if done["flat"] else "not_flat", {
            "session_date": day, "cancelled_orders": cancelled, "close_orders": keys,
            "open_positions": open_positions, "working": [r["client_key"] for r in working],
            "failed": [sym for sym, _ in failed], "stops_cancelled": stops["cancelled"],
            "stops_kept": stops["kept"]})
        log.warning("flatten %s: cancelled %d open orders, %d closing orders", day, cancelled, len(keys))
        if not done["flat"]:
            log.error("%s", flatten_not_flat_line(done, self.broker.fills_at_next_open))
        return done

    def _close(self, day: str, mode: str, symbol: str, side: str, qty: int, position: dict) -> Record:
        """Submit (or find again) this session's closing order for one position."""
        key = self._flatten_key(day, symbol, side)
        existing = self.book.get(key)
        if existing and existing["status"] == INTENDED and existing["quantity"] != abs(qty):
            self.book.update(key, quantity=abs(qty))         # never sent: close what is held now
        order = {"symbol": symbol, "side": side, "quantity": abs(qty), "order_type": MARKET,
                 "price": position.get("avg_price"), "reason": "flatten", "client_key": key}
        return self.submit(order, day, mode, ignore_halt=True)


def flatten_not_flat_line(done: dict, fills_at_next_open: bool = False) -> str:
    """The one line ``flatten`` says when the account is not flat: the positions still open, the
    closing orders still working at the broker (kept, not cancelled), the symbols that failed,
    and what to do."""
    held = ", ".join(f"{sym} {qty:+d}" for sym, qty in done["open_positions"].items())
    working = ", ".join(f"{r['client_key']} ({r['side']} {r['quantity'] - int(r['filled_quantity'] or 0)} "
                        f"{r['symbol']}, broker id {r['broker_order_id']}, {r['status']})" for r in done["working"])
    failed = ", ".join(f"{sym}: {err}" for sym, err in done["failed"])
    line = f"flatten NOT FLAT: positions still open: {held}"
    line += f"; closing orders still working at the broker (kept, NOT cancelled): {working}" if working else \
        "; no closing order is working for them"
    if failed:
        line += f"; closing orders that failed: {failed}"
    if fills_at_next_open and working:
        line += "; paper: they fill at the next session's open"
    return line + ("; check `python live_trading.py status` and the broker; run `python live_trading.py flatten` "
                   "again to close what is left (working orders are kept, never sent twice)")


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
    for r in executor.open_orders():
        if r["status"] == UNKNOWN_AT_BROKER:
            print(unknown_line(r))


def main(argv=None) -> int:
    install_excepthook()
    parser = argparse.ArgumentParser(prog="trading_execution.py",
                                     description="The broker's orders against ours, and resolving an "
                                                 "ambiguous order by hand.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("orders", help="the broker's recent and open orders; ours marked with our key")
    p.add_argument("--hours", type=float, default=None,
                   help=f"how far back (default {C.ORDER_SNAPSHOT_LOOKBACK_S / 3600:g} h)")
    p = sub.add_parser("resolve", help="decide an ambiguous (SENDING) or UNKNOWN_AT_BROKER order: which "
                                       "broker order is ours, or none")
    p.add_argument("client_key")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--order-id", help="the broker order that is ours")
    which.add_argument("--not-sent", action="store_true",
                       help="none of them is ours (or it is not at the broker): close our row, never resent")
    p.add_argument("--reason", required=True)
    args = parser.parse_args(argv)
    config.require_home()                         # a mistyped TRADING_HOME: one line, nothing created
    logging_setup.setup_logging("trading")
    executor = OrderExecutor()
    try:
        if args.command == "orders":
            _print_orders(executor, executor.broker_orders(args.hours))
            return 0
        record = executor.resolve(args.client_key, None if args.not_sent else args.order_id, args.reason)
        print(f"order {record['client_key']}: {record['status']} (broker id {record['broker_order_id']})."
              + (" Now clear the kill switch: python live_trading.py resume --reason \"...\""
                 if kill_switch.get(executor.conn) else ""))
        return 0
    except (BrokerError, UserFacingError) as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
