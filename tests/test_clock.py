"""clock.py: the one answer to "what day and time is it"; TRADING_NOW pins it (the suite's fixed
clock), a bad value is one line naming the fix, and a live cycle refuses a pinned clock."""
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

import clock
import config
import market_calendar
import trading_cycle


def test_the_suite_runs_on_its_fixed_clock(fixed_now):
    assert clock.now() == fixed_now and clock.today() == fixed_now.date()
    assert fixed_now.weekday() == 1 and market_calendar.is_open(clock.now())     # a Tuesday, NYSE open
    assert str(market_calendar.last_completed_session().date()) == "2026-11-23"


def test_unset_is_the_machines_clock(monkeypatch):
    monkeypatch.delenv("TRADING_NOW")
    before = datetime.now().astimezone()
    now = clock.now()
    assert clock.pinned() is None and now.tzinfo is not None
    assert 0 <= (now - before).total_seconds() < 5


def test_another_moment(monkeypatch):
    monkeypatch.setenv("TRADING_NOW", "2026-11-26T10:00:00-05:00")          # Thanksgiving
    assert clock.today().isoformat() == "2026-11-26"
    assert not market_calendar.is_open(clock.now())
    assert clock.now() == datetime(2026, 11, 26, 10, tzinfo=ZoneInfo("America/New_York"))


@pytest.mark.parametrize("value", ["2026-11-24T11:00:00", "tuesday", "2026-13-01T00:00:00+00:00"])
def test_a_bad_value_names_the_fix(monkeypatch, value):
    monkeypatch.setenv("TRADING_NOW", value)
    with pytest.raises(config.ConfigError) as err:
        clock.now()
    text = str(err.value)
    assert "TRADING_NOW" in text and "UTC offset" in text and "unset it" in text and "\n" not in text


def test_a_live_cycle_refuses_a_pinned_clock(monkeypatch, fixed_now):
    assert trading_cycle._cycle_clock("paper") == fixed_now
    with pytest.raises(trading_cycle.CycleError, match="TRADING_NOW=.*live cycle trades only on the machine's clock"):
        trading_cycle._cycle_clock("live")
    monkeypatch.delenv("TRADING_NOW")
    assert trading_cycle._cycle_clock("live").tzinfo is not None
