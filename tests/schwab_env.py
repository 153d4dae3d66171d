"""Fixtures and helpers for running the live (Schwab) path in subprocesses against the fake Schwab.

Use from a test module with ``from schwab_env import fake_schwab, schwab_home, run_live, ...``
(the fixtures are plain pytest fixtures; importing them makes them available to that module).

    fake_schwab                 a running FakeSchwabServer (tests/fake_schwab_server.py), stopped after
    schwab_routed               fake_schwab, with schwab-py in the test process routed to it
    schwab_home                 this test's TRADING_HOME with Schwab credentials and a fresh token
    store_schwab_credentials(home, age_days=1.0, expires_in=1800.0, account_hash=None)
    run_live(home, args, server, env_extra=None, timeout=300, input=None) -> CompletedProcess
    start_live(home, args, server, env_extra=None) -> Popen    (for kill -9 at a moment of choice)
    cycle_code(now) -> str      ``-c`` code running one live cycle at a given market time
    live_cycle_setup(home, trained) -> dict   gate open, data cut to the trade day, prices, `now`

Credentials live in ``home`` and the key in ``home/keys`` (the layout conftest.run_entry uses).
"""
from __future__ import annotations

import subprocess
import sys
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

import fork_runner
from conftest import entry_env
from fake_schwab_server import FakeSchwabServer, store_credentials

ROOT = Path(__file__).resolve().parent.parent
SHIM = Path(__file__).resolve().parent / "schwab_shim.py"


@pytest.fixture
def fake_schwab():
    server = FakeSchwabServer().start()
    yield server
    server.stop()


@pytest.fixture
def schwab_routed(fake_schwab, monkeypatch):
    """In this test process, schwab-py talks to ``fake_schwab`` (restored afterwards): for fast
    in-process checks; crash tests use ``run_live``/``start_live`` instead."""
    from schwab_shim import routed_client_class
    routed = routed_client_class(fake_schwab.url)
    import schwab.auth
    monkeypatch.setattr(schwab.auth, "OAuth2Client", routed)
    return fake_schwab


def keys_dir(home) -> Path:
    return Path(home) / "keys"


def store_schwab_credentials(home, age_days: float = 1.0, expires_in: float = 1800.0,
                             account_hash: str | None = None) -> None:
    """App key/secret (service ``schwab``) and a login token (``schwab_token``) created
    ``age_days`` ago whose access token expires in ``expires_in`` s (negative: already expired,
    so the first call refreshes it at the fake's token endpoint)."""
    from credential_manager import CredentialManager
    store_credentials(CredentialManager(home=Path(home), key_dir=keys_dir(home)), age_days,
                      expires_in, account_hash)


@pytest.fixture
def schwab_home(trading_home):
    """The test's TRADING_HOME (from conftest) with Schwab credentials stored in it."""
    store_schwab_credentials(trading_home)
    return trading_home


def live_env(home, server: FakeSchwabServer | None, env_extra: dict | None = None) -> dict:
    return entry_env(home, {"TRADING_MODE": "live", "PYTHONUNBUFFERED": "1", "TRADING_CREDENTIAL_KEY": None,
                            "FAKE_SCHWAB_URL": server.url if server is not None else None, **(env_extra or {})})


def run_live(home, args, server: FakeSchwabServer | None, env_extra: dict | None = None,
             timeout: float = 300, input: str | None = None) -> subprocess.CompletedProcess:
    """``python tests/schwab_shim.py *args`` in ``home``, TRADING_MODE=live, schwab-py routed to
    ``server`` (None: every Schwab request fails to connect). ``args`` start with a script
    (``live_trading.py``), ``-m module`` or ``-c code``. ``env_extra`` wins over the defaults
    (e.g. ``{"TRADING_FAILPOINT": "after_place_order"}``)."""
    return fork_runner.run([sys.executable, str(SHIM), *args], ROOT, live_env(home, server, env_extra), timeout, input)


def start_live(home, args, server: FakeSchwabServer | None, env_extra: dict | None = None) -> subprocess.Popen:
    """The same as ``run_live`` without waiting: the caller may ``proc.kill()`` (SIGKILL) it."""
    return subprocess.Popen([sys.executable, str(SHIM), *args], cwd=ROOT, env=live_env(home, server, env_extra),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def cycle_code(now: datetime) -> str:
    """``-c`` code for one live cycle as ``python live_trading.py`` runs it, with ``now`` given
    (the CLI has no way to set it; see the report to the lead: a TRADING_NOW would replace this)."""
    return ("import sys; from datetime import datetime; import config, live_trading; "
            "from errors import install_excepthook; from logging_setup import setup_logging; "
            "install_excepthook(); config.trading_mode(); setup_logging('trading'); "
            f"sys.exit(live_trading.run_cycle(now=datetime.fromisoformat({now.isoformat()!r})))")


def market_open_after(day) -> datetime:
    """10:00 New York time on the session after ``day``."""
    import market_calendar
    session = market_calendar.next_session(day).date()
    return datetime.combine(session, datetime.min.time()).replace(hour=10, tzinfo=ZoneInfo("America/New_York"))


def live_cycle_setup(home, trained) -> dict:
    """Make ``home`` (the ``home`` fixture: sample data, tiny model) ready for a live cycle on
    the session after the trained trade day: processed data cut to that day, a passing backtest
    a passing walk-forward and 5 paper sessions on record (gate open), Schwab credentials stored. Returns ``now``
    (10:00 ET next session), ``closes`` {symbol: close of the trade day} for the fake's prices."""
    import pandas as pd

    import constants as C
    import model_management
    from test_live_trading import _record_paper_sessions, _record_passing_backtest, _record_walk_forward
    day = trained["trade_day"]
    df = pd.read_csv(home / C.PROCESSED_DATA_FILE)
    df[df["Date"] <= day].to_csv(home / C.PROCESSED_DATA_FILE, index=False)
    closes = {s: float(p) for s, p in df[df["Date"] == day].set_index("Symbol")["Close"].items()}
    checksum = model_management.calculate_model_checksum(home / C.MODEL_FILE)
    _record_passing_backtest(home, checksum)
    _record_walk_forward(home)              # on the data as cut above: the same bytes
    _record_paper_sessions(home, checksum, C.GOLIVE_MIN_PAPER_SESSIONS)
    store_schwab_credentials(home)
    return {"now": market_open_after(day), "closes": closes, "day": day}
