"""Every test runs in its own TRADING_HOME and key directory: no test can touch a user's data,
model, logs, credentials or state, and none reaches the network."""
import fcntl
import json
import logging
import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

import fork_runner

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ["PYTHONHASHSEED"] = os.environ.get("PYTHONHASHSEED", "0")
# shell entry points (run_*.sh, scripts/demo.sh) run on the interpreter running the suite (3.12 or 3.11)
os.environ["TRADING_PYTHON"] = sys.executable


# the slowest files (about a minute or more each), started first so that xdist's workers finish
# together instead of one running the last long file alone. `make test` passes xdist's
# --no-loadscope-reorder: by default xdist starts the files with the most tests first, which put
# the demo and the runbook (one long test each) at the very end
SLOWEST_FIRST = ["test_demo.py", "test_runbook.py", "test_walk_forward.py", "test_live_crash_matrix.py",
                 "test_live_trading.py", "test_train_model.py", "test_fake_schwab_server.py",
                 "test_kill9_harness.py"]


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))     # stable: the rest keep their order


@pytest.fixture(scope="session", autouse=True)
def yfinance_cache(tmp_path_factory):
    """yfinance keeps its time-zone cache in one SQLite file per process: give the test run
    its own, so it never shares (or locks) the user's cache."""
    import yfinance as yf
    yf.set_tz_cache_location(str(tmp_path_factory.mktemp("yfinance-cache")))


@pytest.fixture(autouse=True)
def redaction_registry(monkeypatch):
    """What a test registers for log redaction (logging_setup: secrets, alert-URL parts of any
    length) is forgotten after it: a short token registered by one test must not redact another
    test's log lines."""
    import logging_setup
    for name in ("_SECRETS", "_TOKENS", "_URL_SCHEMES"):
        monkeypatch.setattr(logging_setup, name, set(getattr(logging_setup, name)))
    monkeypatch.setattr(logging_setup, "_token_pattern", logging_setup._token_pattern)


# The suite's fixed clock: a Tuesday, NYSE open (11:00 New York). Every test and every command it
# runs reads "what day and time is it" from clock.now(), pinned here through TRADING_NOW, so the
# suite gives the same result on a Saturday, a holiday or after the close (`make test-days`).
# A test that needs another moment sets TRADING_NOW itself or passes `now` to the function.
FIXED_NOW = datetime(2026, 11, 24, 11, 0, tzinfo=ZoneInfo("America/New_York"))


@pytest.fixture
def fixed_now() -> datetime:
    """The suite's pinned "now" (TRADING_NOW), aware."""
    return FIXED_NOW


@pytest.fixture(autouse=True)
def trading_home(tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("TRADING_NOW", FIXED_NOW.isoformat())
    monkeypatch.setenv("TRADING_HOME", str(home))
    monkeypatch.setenv("TRADING_CONFIG_DIR", str(tmp_path / "keys"))
    monkeypatch.setenv("DATA_SOURCE", "sample")
    monkeypatch.setenv("TRADING_CRONTAB_FILE", str(tmp_path / "crontab"))   # never the user's crontab
    monkeypatch.delenv("TRADING_ALERT_URLS", raising=False)
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


def project_state() -> frozenset:
    """What a user's own runs leave in the project folder (a default install's home): incident
    files and everything under logs/, state/, data/, models/ (reports/ is left out: the browser
    tests keep their screenshots there). A test asserts that this did not change, never that it
    is empty, so the suite passes on a machine where the system has been used."""
    paths = list(ROOT.glob("incident_*.log"))
    for folder in ("logs", "state", "data", "models"):
        paths += [p for p in (ROOT / folder).rglob("*") if p.is_file() and p.name != ".gitkeep"]
    return frozenset((str(p.relative_to(ROOT)), p.stat().st_size, p.stat().st_mtime_ns) for p in paths)


def entry_env(home=None, env_extra=None) -> dict:
    """The environment of a project command run as a user would: the test process's own (which
    ``trading_home`` points at the test's home), with ``home`` (when given) as TRADING_HOME, its
    keys in ``home/keys`` and DATA_SOURCE=sample; paper mode, no failpoint, TensorFlow quiet.
    ``env_extra`` wins; a value of None removes that variable. The one place the tests build a
    subprocess environment."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    if home is not None:
        env.update(TRADING_HOME=str(home), DATA_SOURCE="sample", TRADING_CONFIG_DIR=str(Path(home) / "keys"))
    env.pop("TRADING_MODE", None)
    env.pop("TRADING_FAILPOINT", None)
    env.setdefault("TRADING_NOW", FIXED_NOW.isoformat())      # the suite's clock, session fixtures too
    if env.get("TRADING_PYTHON") == sys.executable:            # shell scripts' python: the fork server's
        env["TRADING_PYTHON"] = fork_runner.python_shim() or sys.executable
    for name, value in (env_extra or {}).items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = str(value)
    return env


def run_command(cmd, home=None, env_extra=None, timeout=180, input=None, cwd=ROOT):
    """Run ``cmd`` (a shell script such as ``["./send_alert.sh", "x"]``, or any program) with
    ``entry_env(home, env_extra)``, from the project folder unless ``cwd`` says otherwise."""
    return fork_runner.run(cmd, cwd, entry_env(home, env_extra), timeout, input)


def run_entry(args, home=None, env_extra=None, timeout=180, input=None, cwd=ROOT):
    """Run a project command as a user would (``python *args``), in ``home`` (a TRADING_HOME), paper mode."""
    return run_command([sys.executable, *args], home, env_extra, timeout, input, cwd)


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """Sample data (the 10-symbol universe) and a tiny trained model, built once per test run (in
    its own home) and shared by xdist's workers and every test file that needs a trained model: the first to need it builds it under a lock, the others read it. Tests
    copy its files (``home``, ``fresh_home``); none writes into it."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent                          # the run's folder, above every worker's own
    home, done_file = base / "trained", base / "trained.json"
    with open(base / "trained.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done_file.exists():
            done_file.write_text(json.dumps(_train_home(home)))
    return {**json.loads(done_file.read_text()), "home": home}


def _train_home(home: Path) -> dict:
    home.mkdir(exist_ok=True)
    done = run_entry(["data_collection.py", "--force"], home)
    assert done.returncode == 0, done.stderr
    # without --force, as in a fresh install: promoted on its validation skill (no current model);
    # tests/test_train_model.py checks that promotion on this very model
    done = run_entry(["train_model.py", "--profile", "tiny"], home, timeout=300)
    assert done.returncode == 0, done.stdout[-1000:] + done.stderr[-2000:]
    # a session whose signals include trades
    code = ("import model_management as m, data_collection as d, signals as s;"
            "p=s.score_predictions(m.load_model().predict(d.load_processed()));"
            "n=p[p.signal!='HOLD'].groupby('Date').size(); n=n[n>=2];"
            "print(str(n.index[-1].date()), str(p.Date.max().date()))")
    out = run_entry(["-c", code], home, timeout=120)
    assert out.returncode == 0, out.stderr
    trade_day, last_day = out.stdout.split()
    return {"trade_day": trade_day, "last_day": last_day}


TRAINED_FILES = ["processed_stock_data.csv", "lstm_price_difference_model.h5",
                 "lstm_price_difference_model.json", "data/raw_prices.csv"]


@pytest.fixture
def home(trained, trading_home):
    """This test's TRADING_HOME with the session's sample data and trained model in it."""
    import shutil
    for name in TRAINED_FILES:
        dst = trading_home / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(trained["home"] / name, dst)
    return trading_home


@pytest.fixture(scope="module")
def ray_local():
    """A local Ray with 2 CPUs for a module's walk-forward tests, started once a module and shut
    down after it (walk_forward's own start-up, ``_ray_init``)."""
    import ray                  # heavy and optional: only the walk-forward tests need it
    import walk_forward
    ray.shutdown()
    walk_forward._ray_init(2)
    yield ray
    ray.shutdown()
