"""The one clock for "what day and time is it": the market-hours check, the scheduler, the health
check, the paper account's trade date and the risk limits' day all ask here.

``TRADING_NOW`` (an ISO time with its UTC offset, e.g. ``2026-11-24T11:00:00-05:00``) pins this
clock for tests and paper drills of a given moment; a live trading cycle refuses to run with it
(``trading_cycle``): only the machine's real clock may decide when real money trades. Durations, timeouts and record timestamps are not
"what day is it" questions: they keep using ``time.monotonic`` and ``state_db.utcnow``.

``machine_now`` is the machine's own clock, never pinned: the clock a broker's clock is compared
with (``clock_sanity``) and the one the broker's order windows start from.
"""
import os
from datetime import date, datetime, timezone

import config
import constants as C


def pinned() -> datetime | None:
    """The time ``TRADING_NOW`` pins the clock to, or None when the real clock is in use."""
    value = os.environ.get(C.ENV_TRADING_NOW, "").strip()
    if not value:
        return None
    try:
        at = datetime.fromisoformat(value)
    except ValueError:
        at = None
    if at is None or at.tzinfo is None:
        raise config.ConfigError(
            f"TRADING_NOW={value!r} is not an ISO time with its UTC offset "
            f"(e.g. 2026-11-24T11:00:00-05:00); fix it, or unset it to use the machine's clock")
    return at


def now() -> datetime:
    """The current time, aware, in the machine's time zone (or the pinned time's own zone)."""
    return pinned() or datetime.now().astimezone()


def today() -> date:
    """Today's date on the machine's clock (or the pinned time's date in its own zone)."""
    return now().date()


def machine_now() -> datetime:
    """The machine's own clock (aware, UTC), never pinned by ``TRADING_NOW``: what the broker's
    clock is compared with and what broker order windows are computed from (``clock_sanity``)."""
    return datetime.now(timezone.utc)
