"""NYSE sessions and hours from the exchange-calendars library (holidays and 13:00 early closes
included); nothing here is a hand-written list."""
from datetime import datetime
from functools import lru_cache

import clock
import exchange_calendars as xc
import pandas as pd

EXCHANGE = "XNYS"
TIMEZONE = "America/New_York"


@lru_cache(maxsize=1)
def calendar():
    return xc.get_calendar(EXCHANGE, start="2000-01-01")


def to_utc(dt) -> pd.Timestamp:
    """A naive datetime is the machine's local time; an aware one is converted."""
    ts = pd.Timestamp(dt)
    if ts.tzinfo is None:
        local = datetime.fromtimestamp(ts.to_pydatetime().timestamp()).astimezone().tzinfo
        ts = ts.tz_localize(local)
    return ts.tz_convert("UTC")


def is_open(dt) -> bool:
    """True while the NYSE regular session is open at ``dt``."""
    ts = to_utc(dt).floor("min")
    cal = calendar()
    if ts < cal.first_minute or ts > cal.last_minute:
        raise ValueError(f"{dt} is outside the calendar's range "
                         f"({cal.first_session.date()} .. {cal.last_session.date()})")
    return bool(cal.is_open_on_minute(ts))


def sessions(start, end) -> pd.DatetimeIndex:
    """NYSE sessions from ``start`` to ``end`` inclusive, as tz-naive midnight timestamps."""
    cal = calendar()
    start = max(pd.Timestamp(start).normalize(), cal.first_session)
    end = min(pd.Timestamp(end).normalize(), cal.last_session)
    if end < start:
        return pd.DatetimeIndex([])
    return pd.DatetimeIndex(cal.sessions_in_range(start, end)).tz_localize(None)


def is_session(day) -> bool:
    return bool(calendar().is_session(pd.Timestamp(day).normalize()))


def last_completed_session(now=None) -> pd.Timestamp:
    """The latest session whose close is at or before ``now`` (default: the current time)."""
    ts = to_utc(now if now is not None else clock.now())
    cal = calendar()
    local_day = ts.tz_convert(TIMEZONE).normalize().tz_localize(None)
    for session in reversed(cal.sessions_in_range(local_day - pd.Timedelta(days=15), local_day)):
        if cal.session_close(session) <= ts:
            return pd.Timestamp(session)
    raise ValueError(f"no completed NYSE session in the 15 days before {ts}")


def sessions_between(earlier, later) -> int:
    """Number of sessions after ``earlier`` up to and including ``later``."""
    if pd.Timestamp(later) <= pd.Timestamp(earlier):
        return 0
    return len(sessions(pd.Timestamp(earlier) + pd.Timedelta(days=1), later))


def next_session(day) -> pd.Timestamp:
    return pd.Timestamp(calendar().date_to_session(pd.Timestamp(day).normalize() + pd.Timedelta(days=1), "next"))


def session_close(day) -> pd.Timestamp:
    return calendar().session_close(pd.Timestamp(day).normalize())
