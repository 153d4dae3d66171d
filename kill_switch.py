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

Fail closed: every set and clear is also in the audit trail, which deleting the state database
does not erase (``audit_logging.account_trail``). ``require_continuity(conn, audit)``, run by
every cycle before it trades, refuses (``StateContinuityError``, naming the recovery command) a
state database that does not hold a halt the trail says is on, or that was created after the
account history the trail records (deleted, replaced: a cycle would trade a fresh account).
Starting over is explicit and audited: ``start_over`` (``python live_trading.py start-over``).
"""
from __future__ import annotations

import argparse
import logging
from datetime import datetime

import config
import constants as C
import alerts
import state_db
from audit_logging import START_OVER_ACTION, AuditLogger, account_trail
from errors import UserFacingError

log = logging.getLogger("trading")

KEY = "kill_switch"
RESUME_COMMAND = 'python live_trading.py resume --reason "..."'
START_OVER_COMMAND = 'python live_trading.py start-over --confirm START-OVER --reason "..."'


class KillSwitchSet(UserFacingError):
    """The kill switch is on: nothing more is sent. ``switch`` is its value."""

    def __init__(self, message: str, switch: dict | None = None):
        super().__init__(message)
        self.switch = switch or {}


class StateContinuityError(UserFacingError):
    """The state database does not match what the audit trail records (a halt, an account
    history): it was deleted, replaced or restored from an older copy. Nothing is traded."""


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
        _audit(audit, "kill_switch", "reason_added", _replay_marked(entry, conn))
    else:
        log.warning("Kill switch SET by %s: %s. No order is sent until `python live_trading.py "
                     "resume`.", entry["by"], reason)
        _audit(audit, "kill_switch", "set", _replay_marked(entry, conn))
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
    replay = state_db.is_replay(conn)
    if old is None and not replay:
        # the trail may still say ON (a state database deleted or restored since the halt, or
        # the audit of an earlier resume failed): clearing it there is what a resume means
        old = _trail(audit)["kill_switch"]
        if old is not None:
            old = dict(old, note="held by the audit trail only, not by the state database")
    if old is None:
        log.warning("Kill switch was not set: nothing to resume (%s)", by)
        _audit(audit, "kill_switch", "clear_noop", _replay_marked({"by": by, "reason": reason}, conn))
        return None
    log.warning("Kill switch cleared by %s%s (it was %s)", by, f": {reason}" if reason else "",
                describe(old))
    _audit(audit, "kill_switch", "cleared", _replay_marked({"by": by, "reason": reason, "was": old}, conn))
    return old


def _trail(audit) -> dict:
    """``audit_logging.account_trail`` of ``audit`` (a test's recorder: of the home's trail)."""
    return account_trail(audit if isinstance(audit, AuditLogger) else None)


def _replay_marked(details: dict, conn) -> dict:
    """An --as-of replay's switch is marked in the trail: it is not the real account's."""
    return dict(details, replay=True) if state_db.is_replay(conn) else details


def check(conn=None, what: str = "order") -> None:
    """Raise ``KillSwitchSet`` when the switch is on."""
    switch = get(conn)
    if switch:
        raise KillSwitchSet(f"kill switch is ON ({describe(switch)}): {what} not sent; clear it "
                            f"with `{RESUME_COMMAND}`", switch)


# ----------------------------------------------------------------------------- fail closed
def _when(text) -> datetime | None:
    try:
        return datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        return None


def require_continuity(conn, audit=None) -> None:
    """Raise ``StateContinuityError`` (one line naming the recovery command) when the real state
    database ``conn`` does not hold the halt the audit trail says is on, or is newer than the
    account history the trail records since the last start-over. A cycle calls it before it
    trades; a database created before the stamp existed (``state_db.created_at`` None) counts
    as old."""
    trail = _trail(audit)
    path = config.state_db_file()
    created = state_db.created_at(conn)
    history = trail["history"]
    newer = bool(history and created and (_when(history.get("timestamp")) or created) < created)
    new_db = (f"the state database {path} was created at {created:%Y-%m-%d %H:%M:%S} UTC, after the "
              f"account history in the audit trail (last: {history.get('action')} "
              f"{history.get('status')} at {history.get('timestamp')}): it was deleted or replaced"
              if newer and created and history else "")
    switch = trail["kill_switch"]
    if switch and not get(conn):
        raise StateContinuityError(
            f"trading refused: the audit trail says the kill switch is ON ({describe(switch)}) but the "
            f"state database {path} does not hold it"
            + (f"; {new_db}" if new_db else " (deleted, replaced or restored from an older copy?)")
            + ". Restore the state database from a backup, or "
            + (f"start over on purpose with `{START_OVER_COMMAND}` (the halt stays on until "
               f"`{RESUME_COMMAND}`)" if new_db else f"clear the halt on purpose with `{RESUME_COMMAND}`"))
    if new_db:
        raise StateContinuityError(
            f"trading refused: {new_db}, and a cycle would trade a fresh account. Restore the state "
            f"database from a backup, or start over on purpose with `{START_OVER_COMMAND}`")


def start_over(reason: str, by: str | None = None, audit=None) -> dict:
    """Begin a fresh state database on purpose (orders, paper account, breaker, risk peak, paper
    sessions, gate override: all start empty): the current one, if any, is moved aside (never
    deleted), a new one is created, a halt the trail says is on is carried over into it (a
    start-over never resumes trading), and the start-over is recorded in the audit trail
    (``state_start_over``), after which ``require_continuity`` accepts the new database.
    Call it with no cycle running (the caller holds the cycle lock). Returns the details recorded."""
    audit = audit if audit is not None else AuditLogger()
    by = by or config.operator()
    switch = _trail(audit)["kill_switch"]
    moved = state_db.move_aside("start-over")
    conn = state_db.connect()
    try:
        if switch:
            with state_db.transaction(conn):
                state_db.kv_set(conn, KEY, {k: v for k, v in switch.items() if k != "replay"})
        created = state_db.created_at(conn)
    finally:
        conn.close()
    details = {"by": by, "reason": str(reason), "database": str(config.state_db_file()),
               "moved_to": str(moved) if moved else None,
               "created_at": created.isoformat() if created else None,
               "kill_switch_carried": switch}
    audit.log_event(START_OVER_ACTION, "done", details)
    log.warning("State database started over by %s: %s (the old one moved to %s)%s", by, reason, moved,
                "; the kill switch stays ON" if switch else "")
    return details


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
