"""Is this machine's clock fit to trade on, and the broker order windows that survive one that is not.

A trading cycle (``trading_cycle``) asks here before any order and stops with ``ClockError`` (one
line naming both times and the fix; nothing is sent) when:

* **skew**: our clock (``clock.machine_now``) and the broker's own (``Broker.broker_time()``:
  Schwab's HTTP ``Date``; the paper broker runs on ours and has none) differ by more than
  ``CLOCK_MAX_SKEW_S`` (``skew_problem``);
* **backwards**: our clock is more than ``CLOCK_MAX_SKEW_S`` before the end of the last cycle,
  recorded by the same clock (``backwards_problem``: a VM restored from a snapshot, a dead RTC);
* **behind**: the session the clock says to trade on is earlier than the last session this mode
  traded, or than the last session of the processed data (``session_problem``).

The order windows of the snapshot rule (``order_recovery``) and of the broker's order queries
(``schwab_broker``) never rest on our clock alone: ``window_start`` reaches back on both our clock
and the broker's, ``window_end`` reaches past the latest of our clock, the broker's and the
recorded send time. An order the broker stamped by a clock a day or more ahead of ours is still
listed, so a rerun after a crash adopts it instead of sending it again.
"""
from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

import clock
import constants as C
from errors import UserFacingError

UTC = timezone.utc
NTP_SET = ("set the machine's clock by NTP (`timedatectl status` must say 'System clock synchronized: "
           "yes'; `sudo timedatectl set-ntp true`, or with chrony `chronyc tracking` and `sudo chronyc "
           "makestep`; see docs/BROKERS.md \"Clock check\")")
NTP_FIX = f"{NTP_SET}, then rerun"
NOT_SENT = "no order was sent"        # what a cycle refused on the clock did (the default outcome)
# flatten goes on with a wrong clock (closing positions reduces risk; an emergency command must work)
FLATTEN_GOES_ON = ("flatten goes on anyway (closing positions only reduces risk; its order windows follow "
                   "the broker's clock)")
FLATTEN_FIX = f"{NTP_SET} before the next cycle, which refuses to trade until it is fixed"


class ClockError(UserFacingError):
    """This machine's clock is not fit to trade on: nothing was sent; the message names both
    times and the fix. ``alert_kind``: the alert the cycle sends for it (``alerts.ALERT_KINDS``)."""
    alert_kind = "clock_wrong"


def stamp(at: datetime) -> str:
    """``2026-11-24 16:00:00 UTC``: a time in a clock message."""
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def span(seconds: float) -> str:
    """``45 s``, ``12.5 min``, ``25.0 h``, ``16.0 days``: a clock difference for a person."""
    seconds = abs(float(seconds))
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    if seconds < 2 * 86_400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86_400:.1f} days"


# ----------------------------------------------------------------------------- the checks
def skew_problem(ours: datetime, broker: datetime | None, broker_name: str = "the broker",
                 limit_s: float | None = None, outcome: str = NOT_SENT, fix: str = NTP_FIX) -> str | None:
    """The refusal line when ``broker``'s clock and ``ours`` differ by more than ``limit_s``
    (default ``CLOCK_MAX_SKEW_S``), else None (also when the broker has no clock of its own).
    ``outcome``/``fix``: what the command did and what to do (``flatten`` goes on: ``FLATTEN_GOES_ON``)."""
    if broker is None:
        return None
    limit = C.CLOCK_MAX_SKEW_S if limit_s is None else float(limit_s)
    skew = (broker - ours).total_seconds()
    if abs(skew) <= limit:
        return None
    return (f"CLOCK SKEW: this machine's clock says {stamp(ours)} but {broker_name}'s says {stamp(broker)} "
            f"({broker_name} is {span(skew)} {'ahead of' if skew > 0 else 'behind'} us; the limit is "
            f"CLOCK_MAX_SKEW_S = {limit:g} s): {outcome}; {fix}")


def backwards_problem(ours: datetime, last_end: datetime | None, limit_s: float | None = None,
                      outcome: str = NOT_SENT, fix: str = NTP_FIX) -> str | None:
    """The refusal line when ``ours`` is more than ``limit_s`` (default ``CLOCK_MAX_SKEW_S``)
    before ``last_end``, the end of the last cycle by the same clock, else None."""
    if last_end is None:
        return None
    limit = C.CLOCK_MAX_SKEW_S if limit_s is None else float(limit_s)
    back = (last_end - ours).total_seconds()
    if back <= limit:
        return None
    return (f"CLOCK BACKWARDS: this machine's clock says {stamp(ours)} but the last cycle finished at "
            f"{stamp(last_end)} by this same clock ({span(back)} later): {outcome}; {fix}")


def session_problem(session: date, now: datetime, last_traded: date | None = None,
                    last_data: date | None = None, pinned: bool = False) -> str | None:
    """The refusal line when ``session`` (the one the clock says to trade on at ``now``) is
    earlier than ``last_traded`` (the last session this mode traded) or ``last_data`` (the last
    session in the processed data), else None. ``pinned``: ``now`` comes from TRADING_NOW."""
    behind = [(what, day) for what, day in (("the last cycle traded the session of", last_traded),
                                            ("the processed data already reaches", last_data))
              if day is not None and day > session]
    if not behind:
        return None
    what, day = max(behind, key=lambda item: item[1])
    fix = (f"TRADING_NOW={now.isoformat()} pins the clock: unset it" if pinned else NTP_FIX)
    return (f"CLOCK BEHIND: the clock says {now.isoformat(timespec='seconds')}, so the session to trade "
            f"on would be {session}, but {what} {day}: no order was sent; {fix} (to replay an earlier "
            f"day on paper, use `python live_trading.py --as-of DAY`)")


# ----------------------------------------------------------------------------- order windows
def latest(*times: datetime | None) -> datetime:
    """The latest of our clock (``clock.machine_now``) and the given times (None ignored)."""
    return max([clock.machine_now(), *(t for t in times if t is not None)])


def window_start(broker_time: datetime | None, lookback_s: float) -> datetime:
    """The start of a broker order window that reaches ``lookback_s`` back on our clock AND on
    the broker's (``broker_time``: its clock at its latest answer): whichever is behind, an order
    the broker stamped in the last ``lookback_s`` by its own clock is inside."""
    earliest = min([clock.machine_now(), *([broker_time] if broker_time is not None else [])])
    return earliest - timedelta(seconds=lookback_s)


def window_end(*times: datetime | None) -> datetime:
    """The end of a broker order query: ``SCHWAB_ORDER_QUERY_AHEAD_S`` after the latest of our
    clock and ``times`` (the broker's clock at its latest answer, the recorded send time)."""
    return latest(*times) + timedelta(seconds=C.SCHWAB_ORDER_QUERY_AHEAD_S)
