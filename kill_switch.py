"""The kill switch: one flag in the state database that stops every order from being sent.

It lives under the ``kill_switch`` key of the state database's ``kv`` table, as
``{"reason", "by", "at", "reasons": [{"reason", "by", "at"}, ...]}``: ``reason``, ``by`` and
``at`` are those of the FIRST halt (the one that explains the stop); every later halt is appended
to ``reasons``, never overwrites it. Setting and clearing are audited.

Who reads it:
* the trading cycle at its start (``python live_trading.py halt --reason ...`` stops every run);
* ``trading_execution.OrderExecutor`` right before every submission (in the same database
  transaction that marks the order ``SENDING``, so an order is either marked before the halt
  committed, or not sent at all) and between fill polls (a halt mid-cycle cancels the cycle's
  unfilled orders by default, ``constants.HALT_CANCELS_UNFILLED``).

Who sets it: the operator (``halt``), ``flatten`` (first thing it does), and the executor itself
when it cannot decide whether an order reached the broker (``AmbiguousOrderError``).

API: ``get(conn=None)`` -> value or None; ``is_set(conn=None)``; ``halt(reason, ...)`` -> value;
``clear(reason="", ...)`` -> the value that was cleared, or None when nothing was halted;
``check(conn, what)`` raises ``KillSwitchSet``; ``config.operator()`` -> ``user@host``.
"""
from __future__ import annotations

import argparse
import logging

import config
import constants as C
import alerts
import state_db
from audit_logging import AuditLogger
from errors import UserFacingError

log = logging.getLogger("trading")

KEY = "kill_switch"
RESUME_COMMAND = 'python live_trading.py resume --reason "..."'


class KillSwitchSet(UserFacingError):
    """The kill switch is on: nothing more is sent. ``switch`` is its value."""

    def __init__(self, message: str, switch: dict | None = None):
        super().__init__(message)
        self.switch = switch or {}


def _conn(conn):
    return conn if conn is not None else state_db.connect()


def _audit(audit, action: str, status: str, details: dict) -> None:
    """Audit a switch change. The switch itself is already written: a failing audit trail must not
    undo a stop, so the failure is logged CRITICAL (naming the error) instead of raised."""
    try:
        (audit if audit is not None else AuditLogger()).log_event(action, status, details)
    except Exception as exc:
        log.critical("the kill switch change (%s %s) is in the state database but could not be "
                     "written to the audit trail: %s: %s", action, status, type(exc).__name__, exc)


def get(conn=None) -> dict | None:
    """The switch's value, or None when trading is allowed."""
    return state_db.kv_get(_conn(conn), KEY)


def is_set(conn=None) -> bool:
    return get(conn) is not None


def describe(switch: dict) -> str:
    """One line: first reason, who, when, and how many later halts."""
    more = len(switch.get("reasons") or []) - 1
    return (f"set by {switch.get('by')} at {switch.get('at')}: {switch.get('reason')}"
            + (f" (+{more} later halt{'s' if more > 1 else ''})" if more > 0 else ""))


def halt(reason: str, conn=None, by: str | None = None, audit=None) -> dict:
    """Set the switch. Already set: the first reason stays, this one is appended to ``reasons``."""
    conn = _conn(conn)
    entry = {"reason": str(reason), "by": by or config.operator(), "at": state_db.utcnow()}
    with state_db.transaction(conn):
        old = state_db.kv_get(conn, KEY)
        if old:
            value = dict(old)
            value["reasons"] = list(old.get("reasons") or
                                    [{k: old.get(k) for k in ("reason", "by", "at")}]) + [entry]
        else:
            value = dict(entry, reasons=[entry])
        state_db.kv_set(conn, KEY, value)
    if old:
        log.warning("Kill switch already ON (%s); added reason from %s: %s", describe(old),
                     entry["by"], reason)
        _audit(audit, "kill_switch", "reason_added", entry)
    else:
        log.warning("Kill switch SET by %s: %s. No order is sent until `python live_trading.py "
                     "resume`.", entry["by"], reason)
        _audit(audit, "kill_switch", "set", entry)
        alerts.send_alert("kill_switch_set", f"set by {entry['by']}: {reason}", key=entry["at"],
                          replay=state_db.is_replay(conn))
    return value


def clear(reason: str = "", conn=None, by: str | None = None, audit=None) -> dict | None:
    """Clear the switch. Returns what was cleared, or None when nothing was halted."""
    conn = _conn(conn)
    by = by or config.operator()
    with state_db.transaction(conn):
        old = state_db.kv_get(conn, KEY)
        if old is not None:
            state_db.kv_delete(conn, KEY)
    if old is None:
        log.warning("Kill switch was not set: nothing to resume (%s)", by)
        _audit(audit, "kill_switch", "clear_noop", {"by": by, "reason": reason})
        return None
    log.warning("Kill switch cleared by %s%s (it was %s)", by, f": {reason}" if reason else "",
                describe(old))
    _audit(audit, "kill_switch", "cleared", {"by": by, "reason": reason, "was": old})
    return old


def check(conn=None, what: str = "order") -> None:
    """Raise ``KillSwitchSet`` when the switch is on."""
    switch = get(conn)
    if switch:
        raise KillSwitchSet(f"kill switch is ON ({describe(switch)}): {what} not sent; clear it "
                            f"with `{RESUME_COMMAND}`", switch)


def main(argv=None) -> int:
    argparse.ArgumentParser(
        prog="kill_switch.py",
        description="Say whether the kill switch is set (changes nothing). Set and clear it with "
                    "`python live_trading.py halt --reason \"...\"` and `python live_trading.py resume "
                    "--reason \"...\"`.").parse_args(argv)
    switch = None if not config.path(C.STATE_DB_FILE).exists() else get()
    print(f"kill switch ON: {describe(switch)}" if switch else "kill switch off")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
