"""Protective stops held at the broker (issue 22 point 1): one GTC stop order per position.

With ``PROTECTIVE_STOPS`` on, ``ProtectiveStops.sync`` (the cycle runs it after its fills, and
``flatten`` after its closes) makes the broker hold exactly one working stop per position of the
whole size: a sell STOP under a long, a buy-to-cover STOP over a short, priced by
``order_prices.stop_price`` from the position's average price and the ``STOP_VOL_WINDOW``-session
volatility of the closes the cycle has (``order_prices.daily_volatility``). A position whose size
changed gets its stop replaced (the old one cancelled first, then the new one placed); a position
closed by us gets its stop cancelled; a second stop for one position is cancelled.

Stops are rows of the order book (``kind`` = ``stop``, keys ``stop-YYYY-MM-DD-SYMBOL-SIDE[-n]``)
and go through the executor's exactly-once ``submit`` (intent, snapshot, ``SENDING``, place,
broker id): after a crash, ``reconcile`` settles a stop like any order, and the next ``sync``
places what is missing, so no position stays unprotected and none gets two stops.

A stop that fires is ours by its broker order id: its row is filled when the executor refreshes it
(``fired``: ``PROTECTIVE STOP FILLED`` at WARNING, audit ``stop_filled``, alert ``stop_filled``);
the external-activity check and the reconciliation explain its fill like any fill of ours.

``ProtectiveStops`` receives its collaborators in its constructor: the order book, the broker
gateway, the audit trail, the executor's ``submit`` and ``refresh``.
"""
from __future__ import annotations

import logging
from typing import Any, Callable

import alerts
import constants as C
import order_prices
import state_db
from broker_base import BUY_TO_COVER, CANCELED, GTC, SELL, STOP, BrokerError
from broker_gateway import BrokerGateway
from errors import UserFacingError
from kill_switch import KillSwitchSet
from order_book import INTENDED, SENDING, STOP_KIND, TERMINAL, UNKNOWN_AT_BROKER, OrderBook, Record, stop_key

log = logging.getLogger("execution")


def stop_side(quantity: int) -> str:
    """The side of the stop that protects a position of ``quantity`` shares (signed)."""
    return SELL if quantity > 0 else BUY_TO_COVER


def describe_stop(r: Record) -> str:
    """``SELL 100 GAPX STOP 95.10 GTC (broker id 1000000002, SUBMITTED)``."""
    price = f" {r['stop_price']:.2f}" if r.get("stop_price") else ""
    return (f"{r['side']} {r['quantity']} {r['symbol']} STOP{price} GTC (broker id "
            f"{r['broker_order_id'] or '-'}, {r['status']})")


class ProtectiveStops:
    """One working GTC stop per position at the broker (see the module docstring)."""

    def __init__(self, book: OrderBook, gateway: BrokerGateway, audit, submit: Callable[..., Record],
                 refresh: Callable[[str], Any], settle: Callable[[Record, str], Record]):
        self.book = book
        self.gateway = gateway
        self.audit = audit
        self.submit = submit
        self.refresh = refresh
        self.settle = settle

    # -- what the cycle and flatten call
    def sync(self, session_date, mode: str, closes: dict[str, list[float]] | None = None, *,
             closed: set[str] | None = None) -> dict:
        """Make the broker hold one working stop of the whole size per position (nothing placed
        when ``PROTECTIVE_STOPS`` is off). ``closed`` (``flatten``, after its closes): place none,
        cancel the stops of flat positions and of the symbols in ``closed`` (a closing order
        certain to fill first: the paper broker's next open), keep the others. Returns
        ``{"placed": [keys], "cancelled": [keys], "kept": [keys], "failed": [(symbol, error)]}``."""
        only_flat, ignore_halt = closed is not None, closed is not None
        done: dict[str, list] = {"placed": [], "cancelled": [], "kept": [], "failed": []}
        if not C.PROTECTIVE_STOPS and not self.book.stops():
            return done
        day = str(session_date)[:10]
        self._bring_up_to_date()
        positions = {s: p for s, p in self.gateway.positions().items() if int(p["quantity"])}
        rows: dict[str, list[Record]] = {}
        for r in self.book.stops():
            rows.setdefault(r["symbol"], []).append(r)
        for symbol in sorted(set(positions) | set(rows)):
            qty = int(positions[symbol]["quantity"]) if symbol in positions and symbol not in (closed or ()) else 0
            try:
                self._sync_symbol(day, mode, symbol, qty, positions.get(symbol) or {}, rows.get(symbol, []),
                                  (closes or {}).get(symbol) or [], done, only_flat, ignore_halt)
            except KillSwitchSet:
                raise
            except (BrokerError, UserFacingError) as exc:
                log.error("protective stop for %s %+d not in place: %s; the next run places it", symbol, qty, exc)
                done["failed"].append((symbol, str(exc)))
        return done

    def _bring_up_to_date(self) -> None:
        """Settle a stop row left SENDING by a crash (the snapshot rule) and refresh the others, so
        a stop that fired is seen (and recorded) before the positions are read."""
        for r in self.book.stops():
            if r["status"] == SENDING:
                self.settle(r, "protective stops")
            elif r["broker_order_id"] and r["status"] not in TERMINAL | {UNKNOWN_AT_BROKER}:
                self.refresh(r["client_key"])

    def _sync_symbol(self, day: str, mode: str, symbol: str, qty: int, position: dict, rows: list[Record],
                     closes: list[float], done: dict, only_flat: bool, ignore_halt: bool) -> None:
        side = stop_side(qty)
        keep: Record | None = None
        for r in rows:
            if r["status"] == UNKNOWN_AT_BROKER:      # a person resolves it; never a second stop meanwhile
                log.error("protective stop %s of %s is UNKNOWN_AT_BROKER: no other stop is placed for %s "
                          "until it is resolved (python trading_execution.py orders)", r["client_key"], symbol, symbol)
                keep = keep or r
                continue
            if qty and keep is None and r["side"] == side and int(r["quantity"]) == abs(qty):
                keep = r
                continue
            if only_flat and qty:
                done["kept"].append(r["client_key"])   # flatten: a position still open keeps its stop
                continue
            why = "position closed" if not qty else (
                f"position is {qty:+d}, the stop covers {r['quantity']} ({r['side']})" if keep is None
                else "a second stop for the position")
            self._retire(r, why)
            done["cancelled"].append(r["client_key"])
        if not qty or only_flat or not C.PROTECTIVE_STOPS:
            return
        if any(self.book.get(r["client_key"])["status"] not in TERMINAL for r in rows if r is not keep):
            raise UserFacingError(f"an earlier stop of {symbol} is still working after its cancel: no new stop "
                                  f"placed (never two stops)")
        if keep is not None and keep["status"] != INTENDED:
            done["kept"].append(keep["client_key"])
            return
        order = keep or self._new_stop(day, symbol, qty, position, closes)
        record = self.submit(dict(order, kind=STOP_KIND), day, mode, ignore_halt=ignore_halt)
        if record.get("broker_order_id"):
            log.info("protective stop for %s %+d resting at the broker: %s", symbol, qty, describe_stop(record))
            self.audit.log_event("stop_placed", record["status"].lower(), {
                "client_key": record["client_key"], "order_id": record["broker_order_id"], "symbol": symbol,
                "side": record["side"], "quantity": record["quantity"], "stop_price": record["stop_price"]})
            done["placed"].append(record["client_key"])
        else:
            raise UserFacingError(f"stop {record['client_key']} is {record['status']}: {record.get('error') or ''}")

    def _new_stop(self, day: str, symbol: str, qty: int, position: dict, closes: list[float]) -> dict:
        reference = float(position.get("avg_price") or 0.0) or (float(closes[-1]) if closes else 0.0)
        if reference <= 0:
            raise UserFacingError(f"no reference price for the stop of {symbol} (no average price, no close)")
        price = order_prices.stop_price("long" if qty > 0 else "short", reference,
                                        order_prices.daily_volatility(list(closes)))
        side = stop_side(qty)
        attempt = 1
        while self.book.get(stop_key(day, symbol, side, attempt)) is not None:
            attempt += 1
        return {"symbol": symbol, "side": side, "quantity": abs(qty), "order_type": STOP, "stop_price": price,
                "duration": GTC, "price": reference, "reason": "protective stop",
                "client_key": stop_key(day, symbol, side, attempt)}

    def _retire(self, r: Record, why: str) -> None:
        """Cancel one stop (never sent: closed in our book; at the broker: cancelled there)."""
        key = r["client_key"]
        if r["status"] == INTENDED:
            self.book.update(key, status=CANCELED, error=f"never sent: not needed ({why})"[:500])
            self.audit.log_event("stop_cancelled", "not_sent", {"client_key": key, "why": why})
            return
        log.warning("protective stop %s cancelled (%s): %s", key, why, describe_stop(r))
        try:
            self.gateway.cancel_order(r["broker_order_id"], f"cancel stop {key}")
        except BrokerError as exc:
            log.error("cancel of stop %s failed: %s (check the broker's open orders)", key, exc)
        after = self.refresh(key) or r
        self.audit.log_event("stop_cancelled", "cancelled" if after["status"] in TERMINAL else "cancel_pending", {
            "client_key": key, "order_id": r["broker_order_id"], "symbol": r["symbol"], "why": why,
            "status": after["status"]})

    # -- a stop that fired
    def fired(self, record: Record, filled_before: int) -> None:
        """The executor's refresh found our stop ``record`` (more) filled: ours by its broker id,
        recorded in the order book by that refresh; here logged, audited and alerted."""
        line = (f"PROTECTIVE STOP FILLED {record['symbol']}: our stop {record['client_key']} ({record['side']} "
                f"{record['filled_quantity']} of {record['quantity']}, stop {record['stop_price']}, broker id "
                f"{record['broker_order_id']}) filled at {record['avg_fill_price']}: the broker closed the "
                f"position; ours, not external activity")
        log.warning("%s", line)
        self.audit.log_event("stop_filled", str(record["status"]).lower(), {
            "client_key": record["client_key"], "order_id": record["broker_order_id"], "symbol": record["symbol"],
            "side": record["side"], "quantity": record["quantity"], "filled_quantity": record["filled_quantity"],
            "filled_before": filled_before, "stop_price": record["stop_price"],
            "avg_fill_price": record["avg_fill_price"]})
        alerts.send_alert("stop_filled", line, key=record["client_key"], replay=state_db.is_replay(self.book.conn))
