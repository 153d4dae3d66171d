"""Every test runs in its own TRADING_HOME and key directory: no test can touch a user's data,
model, logs, credentials or state, and none reaches the network."""
import logging
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ["PYTHONHASHSEED"] = os.environ.get("PYTHONHASHSEED", "0")


@pytest.fixture(scope="session", autouse=True)
def yfinance_cache(tmp_path_factory):
    """yfinance keeps its time-zone cache in one SQLite file per process: give the test run
    its own, so it never shares (or locks) the user's cache."""
    import yfinance as yf
    yf.set_tz_cache_location(str(tmp_path_factory.mktemp("yfinance-cache")))


@pytest.fixture(autouse=True)
def trading_home(tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("TRADING_HOME", str(home))
    monkeypatch.setenv("TRADING_CONFIG_DIR", str(tmp_path / "keys"))
    monkeypatch.setenv("DATA_SOURCE", "sample")
    monkeypatch.delenv("TRADING_MODE", raising=False)
    monkeypatch.delenv("TRADING_CREDENTIAL_KEY", raising=False)
    yield home
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_trading_managed", False):
            root.removeHandler(handler)
            handler.close()


@pytest.fixture
def universe_file(trading_home):
    """A small universe written into the test's TRADING_HOME."""
    path = trading_home / "selected_stocks.txt"
    path.write_text("# test universe\nAAPL\nMSFT\n\nJPM\n")
    return path
