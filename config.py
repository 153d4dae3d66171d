"""Environment-driven settings and the one root for all state (``TRADING_HOME``).

Every path the system reads or writes is resolved here, at call time, so a test or the demo can
point ``TRADING_HOME`` at its own folder and never touch a user's real data, model or logs.
"""
import getpass
import os
import socket
import sys
from pathlib import Path

from errors import UsageError, UserFacingError, one_line
import constants as C

PROJECT_DIR = Path(__file__).resolve().parent


class ConfigError(UserFacingError):
    """A setting has a value the system refuses to guess about."""


class ConfigUsageError(ConfigError, UsageError):
    """A ConfigError caused by what a person typed (an option that does not apply, a date that is
    not a session): logged at WARNING, never an errors.log line (``errors.failure_level``)."""


def home() -> Path:
    """The root of all state: ``$TRADING_HOME`` or the project directory."""
    value = os.environ.get(C.ENV_TRADING_HOME, "").strip()
    return Path(value).expanduser().resolve() if value else PROJECT_DIR


def path(relative: str) -> Path:
    """A path under ``TRADING_HOME`` (``relative`` is one of the file names in constants.py)."""
    return home() / relative


INIT_COMMAND = "python live_trading.py init"


def home_problem(has_run: bool = False) -> str | None:
    """None when ``TRADING_HOME`` holds project state (one of ``constants.HOME_STATE_FILES`` or a
    credential file;
    with ``has_run``: a state database or an audit trail, i.e. something has run there), else
    the one line naming the path and how to create a home. Looks, creates nothing."""
    root = home()

    def holds(names) -> bool:
        return root.is_dir() and any((root / name).exists() for name in names)
    credentials = root.is_dir() and any(root.glob(C.CREDENTIAL_FILE_TEMPLATE.format(service="*")))
    if holds((C.STATE_DB_FILE, C.AUDIT_LOG_FILE)) or (not has_run and (holds(C.HOME_STATE_FILES) or credentials)):
        return None
    what = ("it does not exist" if not root.is_dir()
            else "it holds no project state" if not (holds(C.HOME_STATE_FILES) or credentials)
            else "nothing has run there yet (no state database, no audit trail)")
    return (f"TRADING_HOME={root}: {what}; nothing done. Check the path (a typo?); to create a "
            f"new home there on purpose run `{INIT_COMMAND}` (or ./run_daily_data_update.sh)")


def require_home(has_run: bool = False) -> None:
    """Raise ``ConfigError`` (``home_problem``) unless TRADING_HOME holds project state: the
    rule every command but the set-up ones applies before it creates anything (entry points
    call it right after parsing their arguments)."""
    trading_mode()                  # a bad TRADING_MODE or DATA_SOURCE is named first
    data_source()
    problem = home_problem(has_run)
    if problem:
        raise ConfigError(problem)


def refuse_without_home(has_run: bool = False) -> bool:
    """``require_home`` for an entry point that returns its exit code: True after printing the
    one line (stderr) when TRADING_HOME is not a home, so that ``main`` returns at once, before
    it sets up logging or writes anything."""
    try:
        require_home(has_run)
    except ConfigError as exc:
        print(one_line(exc), file=sys.stderr)
        return True
    return False


def state_db_file(replay: bool = False) -> Path:
    """The state database: the real one, or with ``replay`` the throwaway one of ``--as-of``
    replays (``state_db.prepare_replay``), so a replay never touches the real paper account,
    orders, risk peak or last-cycle record. Replay is a value the caller passes, never a
    process-wide setting."""
    return path(C.REPLAY_STATE_DB_FILE if replay else C.STATE_DB_FILE)


def ensure_parent(p: Path) -> Path:
    p.parent.mkdir(parents=True, exist_ok=True)
    return p


def trading_mode() -> str:
    """``paper`` (default, also when unset or empty) or ``live``; anything else is an error."""
    value = os.environ.get(C.ENV_TRADING_MODE, "").strip().lower()
    if not value:
        return C.DEFAULT_TRADING_MODE
    if value not in C.TRADING_MODES:
        raise ConfigError(
            f"TRADING_MODE={os.environ[C.ENV_TRADING_MODE]!r} is not valid: use 'paper' or 'live' "
            f"(or unset it for paper trading)")
    return value


def data_source() -> str:
    """``yfinance`` (default), ``sample`` (the bundled offline generator) or ``csv`` (your files)."""
    value = os.environ.get(C.ENV_DATA_SOURCE, "").strip().lower()
    if not value:
        return C.DEFAULT_DATA_SOURCE
    if value not in C.DATA_SOURCES:
        raise ConfigError(
            f"DATA_SOURCE={os.environ[C.ENV_DATA_SOURCE]!r} is not valid: use 'yfinance', 'sample' or 'csv'")
    return value


def data_source_banner() -> str | None:
    """``DATA_SOURCE=sample: SYNTHETIC sample prices, not market data`` when the prices are the
    bundled generator's (shown on every page and command that shows prices), else None. A bad
    DATA_SOURCE gives None here: the commands that read prices report it."""
    try:
        source = data_source()
    except ConfigError:
        return None
    return f"{C.ENV_DATA_SOURCE}=sample: {C.SAMPLE_LABEL}" if source == "sample" else None


def csv_dir() -> Path:
    """Where ``DATA_SOURCE=csv`` reads ``<SYMBOL>.csv``: ``$TRADING_CSV_DIR`` or
    ``$TRADING_HOME/data/csv``."""
    value = os.environ.get(C.ENV_CSV_DIR, "").strip()
    return Path(value).expanduser().resolve() if value else path(C.CSV_DIR)


def config_dir() -> Path:
    """Where secrets' keys live (outside the project and logs): ``$TRADING_CONFIG_DIR`` or
    ``~/.config/lstm-trader``."""
    value = os.environ.get(C.ENV_CONFIG_DIR, "").strip()
    if value:
        return Path(value).expanduser().resolve()
    base = os.environ.get(C.ENV_XDG_CONFIG_HOME, "").strip() or str(Path.home() / ".config")
    return Path(base) / C.APP_NAME


def config_dir_source() -> str:
    """How ``config_dir()`` was chosen, for messages about a key not found where expected."""
    value = os.environ.get(C.ENV_CONFIG_DIR, "").strip()
    return f"{C.ENV_CONFIG_DIR}={value}" if value else f"{C.ENV_CONFIG_DIR} unset: the default"


def operator() -> str:
    """``user@host`` of whoever runs this process (recorded with every halt, resume, reset and
    do-not-short change)."""
    try:
        return f"{getpass.getuser()}@{socket.gethostname()}"
    except Exception:            # no user name in a minimal container: still record something
        return "unknown"
