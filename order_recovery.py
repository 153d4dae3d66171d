"""Exactly once without a broker client id (Schwab takes none): the snapshot rule, recovery of
an order whose fate is unknown, and a person's resolution of an ambiguous one.

* Every intended order gets a deterministic client key (cycle date, symbol, side) and a row in
  ``orders`` (``INTENDED``) before anything is sent. Right before the request, in one
  transaction, the row becomes ``SENDING`` with a ``snapshot``: the ids of the broker's orders
  entered since ``since`` (``ORDER_SNAPSHOT_LOOKBACK_S`` before the earlier of our clock and the
  broker's: ``clock_sanity.window_start``), plus the broker's own clock at that answer. Then the order is placed and the row becomes ``SUBMITTED`` with the broker's id.
* Recovery (a rerun of ``submit``, ``reconcile()`` at cycle start, the retry after an ambiguous
  transient error) never compares our clock with the broker's:
    - ``INTENDED``: never sent. Nothing is adopted for it; ``submit`` sends it.
    - ``SENDING``: the broker's orders since the SAME ``since`` are listed (up to past the latest
      of both clocks and the recorded send time, ``sent_at``: ``clock_sanity.window_end``); candidates are the
      orders absent from the snapshot with the same symbol, side, quantity and order type that no
      other row of ours is linked to (a broker that carries client keys, the paper broker, also
      rules out orders with another key and picks the one with ours). A candidate is adopted
      (audited) only with certainty: it carries our client key (paper), or its id is the one the
      broker's own answer gave us (recorded in the audit trail as ``accepted_not_recorded`` when
      the state database could not take it: ``OrderNotRecordedError``). None: it did not land;
      back to ``INTENDED`` and sent again with a fresh snapshot. Any other candidate could be ours
      or an identical order a person entered meanwhile (Schwab carries no client id), so it is
      never adopted silently: nothing is sent, the kill switch is set, CRITICAL with the commands
      to resolve it by hand (``AmbiguousOrderError``); so our fill timeout never cancels an order
      we are not sure we sent.
* A row whose broker id the broker does not know (HTTP 404) becomes ``UNKNOWN_AT_BROKER``
  (``mark_unknown``): one ERROR line naming ``resolve``, never polled or cancelled again; every
  other order is still managed.
* ``broker_orders`` and ``resolve`` are the operator's tools when recovery halts for a person
  (``python trading_execution.py orders`` / ``resolve``, the command line of the executor).

``OrderRecovery`` receives its collaborators in its constructor: the order book
(``order_book.OrderBook``, the ``orders`` table), the broker gateway
(``broker_gateway.BrokerGateway``: every broker call through the breaker and the retry rule),
the audit trail, and ``refresh`` (the executor's: ask the broker for an order's state and store
it). ``trading_execution.OrderExecutor`` builds one and delegates to it.
"""
from __future__ import annotations

import json
import logging
import sqlite3
from datetime import datetime, timedelta, timezone

from typing import Any, Callable, NoReturn

import alerts
import clock_sanity
import config
import constants as C
import kill_switch
import state_db
from broker_base import CANCELED
from broker_gateway import BrokerGateway
from errors import StorageError, UserFacingError
from order_book import INTENDED, SENDING, SUBMITTED, UNKNOWN_AT_BROKER, OrderBook, Record

log = logging.getLogger("execution")

UTC = timezone.utc
__all__ = ["INTENDED", "SENDING", "SUBMITTED", "UNKNOWN_AT_BROKER", "AmbiguousOrderError", "OrderNotRecordedError",
           "OrderRecovery", "describe", "ACCEPTED_NOT_RECORDED"]

ACCEPTED_NOT_RECORDED = "accepted_not_recorded"   # audit status: the broker's answer named the id, the database did not take it


def describe(record) -> str:
    """``BUY 10 AAPL MARKET``: one order row, for log lines and messages."""
    return f"{record['side']} {record['quantity']} {record['symbol']} {record['order_type']}"


def unknown_line(record) -> str:
    """The one line about a row the broker does not know (``UNKNOWN_AT_BROKER``), with the fix."""
    key = record["client_key"]
    return (f"order {key} ({describe(record)}) is UNKNOWN_AT_BROKER: the broker answered \"no such "
            f"order\" for its id {record['broker_order_id']}; check `python trading_execution.py orders` "
            f"and Schwab's order status page, then `python trading_execution.py resolve {key} --order-id "
            f"ID --reason \"...\"` (the broker knows it as ID) or `--not-sent --reason \"...\"` (it is "
            f"not at the broker: our row is closed)")


def sent_at(snapshot: dict) -> datetime | None:
    """When an order was sent, as its snapshot recorded it: the later of the broker's clock at the
    snapshot and ours (``taken_at``), or None when neither is there."""
    times = [datetime.fromisoformat(t) for t in (snapshot.get("broker_time"), snapshot.get("taken_at")) if t]
    return max(times) if times else None


class AmbiguousOrderError(UserFacingError):
    """Recovery cannot tell which broker order is ours: nothing was sent, the kill switch is set,
    a person decides (``python trading_execution.py orders``, then ``resolve``)."""


class OrderNotRecordedError(UserFacingError):
    """The broker accepted the order (its answer named the id) and writing that down failed
    (say, the state database was locked). It was SENT: the message says so and that nobody may
    enter it again by hand; the next run adopts it by the id the audit trail holds."""

    def __init__(self, record: Record, order_id: str, cause: Exception, *, recorded: bool = False,
                 adoptable: bool = True):
        self.client_key, self.order_id = record["client_key"], str(order_id)
        what = f"order {record['client_key']} ({describe(record)}) sent and accepted by the broker as {order_id}"
        cause_text = f"{type(cause).__name__}: {cause}"
        if recorded:
            text = f"{what} and recorded; its audit record failed ({cause_text}); do NOT re-enter it by hand"
        elif adoptable:
            text = (f"{what}; not yet recorded ({cause_text}): the next run adopts it; do NOT re-enter "
                    f"it by hand")
        else:
            text = (f"{what}; not yet recorded ({cause_text}): the next run finds it and asks you to confirm "
                    f"it (`python trading_execution.py resolve {record['client_key']} --order-id {order_id}`); "
                    f"do NOT re-enter it by hand")
        super().__init__(text)


class OrderRecovery:
    """The snapshot rule and recovery (see the module docstring). ``halted`` holds the kill
    switch's value once recovery set it for an ambiguous order."""

    def __init__(self, book: OrderBook, gateway: BrokerGateway, audit, refresh: Callable[[str], Any]):
        self.book = book
        self.gateway = gateway
        self.audit = audit
        self.refresh = refresh
        self.halted: dict | None = None

    # -- the snapshot rule
    def snapshot(self) -> dict:
        """The broker's order ids entered since ``ORDER_SNAPSHOT_LOOKBACK_S`` before the earlier of
        our clock and the broker's (``clock_sanity.window_start``; recovery lists the same window
        again) and the broker's own clock at that answer, when it gave one."""
        broker = self.gateway.broker
        if broker.server_time is None:              # learn the broker's clock before the window
            self.gateway.call("broker clock", broker.broker_time)
        since = clock_sanity.window_start(broker.server_time, C.ORDER_SNAPSHOT_LOOKBACK_S)
        orders = self.gateway.orders_since(since, "list orders (snapshot)")
        broker_time = broker.server_time
        return {"since": since.isoformat(), "order_ids": sorted(str(o["order_id"]) for o in orders),
                "broker_time": broker_time.isoformat() if broker_time else None,
                "taken_at": state_db.utcnow()}

    def _candidates(self, record: dict, orders: list[dict]) -> list[dict]:
        """Broker orders that may be ``record``'s: absent from its snapshot, same symbol, side,
        quantity and order type, linked to no other row of ours. A broker that carries client keys
        (the paper broker) narrows it further: another key is not ours, ours is."""
        snap = json.loads(record["snapshot"] or "{}")
        seen = set(snap.get("order_ids") or [])
        key = record["client_key"]
        linked = self.book.linked_keys()
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
        broker = self.gateway.broker
        if since < clock_sanity.latest(broker.server_time) - timedelta(days=C.SCHWAB_ORDER_LOOKBACK_DAYS):
            return "ambiguous", [], (f"its snapshot ({since:%Y-%m-%d}) is older than the "
                                     f"{C.SCHWAB_ORDER_LOOKBACK_DAYS} days the broker lists")
        # the window reaches past the recorded send time as well as both clocks (clock_sanity)
        orders = self.gateway.call(f"list orders (recovery of {record['client_key']})",
                                   broker.get_orders_since, since, sent_at(snap))
        found = self._candidates(record, orders)
        if not found:
            return "absent", [], "no broker order entered since its snapshot matches it"
        answered = self._answered_id(record)
        if answered is not None and answered in {str(o["order_id"]) for o in found}:
            return "adopt", [o for o in found if str(o["order_id"]) == answered], (
                "the broker's own answer named this id (audit record accepted_not_recorded)")
        if len(found) > 1:
            return "ambiguous", found, f"{len(found)} broker orders entered since its snapshot match it"
        if found[0].get("client_key") == record["client_key"]:
            return "adopt", found, "the only broker order entered since its snapshot with our client key"
        entered, at_snapshot = found[0].get("entered_time"), snap.get("broker_time")
        if (entered is not None and at_snapshot
                and entered > datetime.fromisoformat(at_snapshot) + timedelta(seconds=C.ORDER_ADOPT_MAX_DELAY_S)):
            return "ambiguous", found, (
                f"the only match was entered at {entered:%H:%M:%S}, more than "
                f"{C.ORDER_ADOPT_MAX_DELAY_S:g} s after the snapshot at {at_snapshot} (both the "
                f"broker's clock): it may be someone else's")
        when = f" at {entered:%H:%M:%S} (broker's clock)" if entered is not None else ""
        return "ambiguous", found, (
            f"the only match, broker order {found[0]['order_id']}, was entered{when} while our request "
            f"could have landed: it could be ours or the same order entered by a person, and the broker "
            f"carries no client id, so it is not adopted without a person")

    def _answered_id(self, record: Record) -> str | None:
        """The broker id the broker's own answer gave for this row after its snapshot, when the
        database could not take it (the audit trail's ``accepted_not_recorded``), or None."""
        records = getattr(self.audit, "records_backwards", None)
        snap = json.loads(record["snapshot"] or "{}")
        if records is None or not snap.get("taken_at"):
            return None
        taken = datetime.fromisoformat(snap["taken_at"])
        for rec in records():
            try:
                if datetime.fromisoformat(str(rec.get("timestamp"))) < taken:
                    return None
            except ValueError:
                continue
            details = rec.get("details") or {}
            if (rec.get("action"), rec.get("status")) == ("order_submit", ACCEPTED_NOT_RECORDED) \
                    and details.get("client_key") == record["client_key"] and details.get("order_id"):
                return str(details["order_id"])
        return None

    def settle_sending(self, record: Record, context: str) -> Record:
        """Apply the snapshot rule to a SENDING row: adopt (-> SUBMITTED), absent (-> INTENDED) or
        ambiguous (kill switch, ``AmbiguousOrderError``)."""
        key = record["client_key"]
        outcome, found, why = self._resolve_sending(record)
        if outcome == "adopt":
            order_id = str(found[0]["order_id"])
            try:
                self.book.update(key, status=SUBMITTED, broker_order_id=order_id,
                                 submitted_at=record["submitted_at"] or state_db.utcnow(), error=None)
            except (sqlite3.Error, StorageError) as exc:     # it is at the broker: never say "not sent"
                raise OrderNotRecordedError(record, order_id, exc) from None
            log.warning("order %s (%s) reached the broker before a crash or lost answer (id %s, %s): "
                        "adopted, not resent", key, describe(record), order_id, why)
            self.audit.log_event("order_reconciled", "adopted", {
                "client_key": key, "order_id": order_id, "context": context, "rule": why})
            return self._get(key)
        if outcome == "absent":
            self.book.update(key, status=INTENDED)
            log.warning("order %s (%s) did not reach the broker (%s): it will be sent", key,
                        describe(record), why)
            self.audit.log_event("order_reconciled", "not_landed", {"client_key": key, "context": context})
            return self._get(key)
        self._halt_ambiguous(record, found, why, context)

    def _get(self, key: str) -> Record:
        record = self.book.get(key)
        assert record is not None, f"order {key} vanished from the order book"
        return record

    def _halt_ambiguous(self, record: Record, found: list[dict], why: str, context: str) -> NoReturn:
        key = record["client_key"]
        ids = [str(o["order_id"]) for o in found]
        snap = json.loads(record["snapshot"] or "{}")
        reason = f"order {key} ({describe(record)}) is ambiguous at the broker: {why}"
        self.halted = kill_switch.halt(reason, self.book.conn, by="trading_execution", audit=self.audit)
        alerts.send_alert("manual_reconciliation", f"{reason}; candidates {', '.join(ids) or 'none'}. "
                          f"Nothing was sent and the kill switch is set.", key=key,
                          replay=state_db.is_replay(self.book.conn))
        self.book.update(key, error=f"ambiguous: {why}; candidates {', '.join(ids) or 'none'}"[:500])
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
            f"order {key} ({describe(record)})", why, snap.get("since"), ", ".join(ids) or "none",
            key, pick, key)
        raise AmbiguousOrderError(
            f"order {key} ({describe(record)}) is ambiguous at the broker ({why}; candidates: "
            f"{', '.join(ids) or 'none'}): nothing sent, kill switch set; see `python "
            f"trading_execution.py orders`, then `python trading_execution.py resolve {key} ...` "
            f"and `python live_trading.py resume`")

    # -- recovery at cycle start
    def reconcile(self) -> list[dict]:
        """At the start of a cycle: bring every unfinished order of earlier runs up to date.
        INTENDED rows are left alone (never sent; ``submit`` sends them if the cycle still wants
        them); SENDING rows go through the snapshot rule; the rest are refreshed. Every ambiguous
        row is handled (kill switch, CRITICAL) before ``AmbiguousOrderError`` is raised."""
        done, ambiguous = [], []
        for record in self.book.open_orders():
            if record["status"] == INTENDED:
                continue
            if record["status"] == UNKNOWN_AT_BROKER:
                log.error("%s", unknown_line(record))
                continue
            if record["status"] == SENDING:
                try:
                    record = self.settle_sending(record, "reconcile")
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

    # -- an order of ours the broker does not know (HTTP 404)
    def mark_unknown(self, record: Record, error: Exception) -> Record:
        """The broker answered "no such order" for our row's id: the row becomes
        ``UNKNOWN_AT_BROKER`` (audited, one ERROR line naming ``resolve``, an alert); the order path
        no longer polls or cancels it, so every other order is still managed."""
        key, previous = record["client_key"], record["status"]
        self.book.update(key, status=UNKNOWN_AT_BROKER, error=f"unknown at the broker: {error}"[:500])
        record = self._get(key)
        line = unknown_line(record)
        log.error("%s", line)
        self.audit.log_event("order_reconciled", "unknown_at_broker", {
            "client_key": key, "order_id": record["broker_order_id"], "error": str(error),
            "previous_status": previous})
        alerts.send_alert("order_unknown_at_broker", line, key=key, replay=state_db.is_replay(self.book.conn))
        return record

    # -- the operator's resolution of an ambiguous order
    def broker_orders(self, hours: float | None = None) -> list[dict]:
        """The broker's orders of the last ``hours`` (default the snapshot window) and every open
        one, each with ``ours``: the client key of our row linked to it, or None."""
        hours = C.ORDER_SNAPSHOT_LOOKBACK_S / 3600.0 if hours is None else float(hours)
        listed = self.gateway.recent_and_open_orders(
            clock_sanity.window_start(self.gateway.broker.server_time, hours * 3600.0))
        linked = self.book.linked_keys()
        return [dict(o, ours=linked.get(oid)) for oid, o in listed.items()]

    def resolve(self, key: str, order_id: str | None, reason: str) -> dict:
        """A person's decision on an ambiguous (or SENDING) row: ``order_id`` is ours (adopted), or
        None: none of the broker's orders is ours and ours was never placed (the row is closed as
        CANCELED, never sent again)."""
        record = self.book.get(key)
        if record is None:
            raise UserFacingError(f"no order {key!r} in the state database: check the key with "
                                  f"`python trading_execution.py orders`")
        if record["status"] not in (INTENDED, SENDING, UNKNOWN_AT_BROKER):
            raise UserFacingError(f"order {key} is {record['status']} (broker id "
                                  f"{record['broker_order_id']}): nothing to resolve")
        was = record["status"]
        if order_id is None:
            note = "not at the broker" if was == UNKNOWN_AT_BROKER else "not sent"
            self.book.update(key, status=CANCELED, error=f"resolved by hand: {note} ({reason})"[:500])
            self.audit.log_event("order_reconciled", "resolved_not_sent", {
                "client_key": key, "reason": reason, "by": config.operator(), "was": was,
                "order_id": record["broker_order_id"]})
            log.warning("order %s resolved by hand: %s, closed without sending (%s)", key,
                        "unknown at the broker" if was == UNKNOWN_AT_BROKER else "never placed", reason)
            return self._get(key)
        order_id = str(order_id)
        other = self.book.linked_keys().get(order_id)
        if other and other != key:
            raise UserFacingError(f"broker order {order_id} is already linked to our order {other}: "
                                  f"pick another id from `python trading_execution.py orders`")
        found = self.gateway.get_order(order_id, f"order {order_id}")
        if (found["symbol"], found["side"], int(found["quantity"])) != (
                record["symbol"], record["side"], int(record["quantity"])):
            raise UserFacingError(f"broker order {order_id} is {found['side']} {found['quantity']} "
                                  f"{found['symbol']}, not {describe(record)}: pick the matching id")
        self.book.update(key, status=SUBMITTED, broker_order_id=order_id, error=None,
                         submitted_at=record["submitted_at"] or state_db.utcnow())
        self.audit.log_event("order_reconciled", "resolved_adopted", {
            "client_key": key, "order_id": order_id, "reason": reason, "by": config.operator(), "was": was,
            "previous_order_id": record["broker_order_id"]})
        log.warning("order %s resolved by hand: broker order %s is ours (%s)", key, order_id, reason)
        return self.refresh(key)
