"""The one logging setup every entry point calls.

``setup_logging("trading")`` sends every component's records to
``logs/trading_YYYYMMDD.log`` (``"data_update"`` -> ``logs/data_update_YYYYMMDD.log``), every
ERROR and CRITICAL also to ``logs/errors.log``, and INFO and up to stderr (which cron captures in
``logs/cron_trading.log``). Lines are plain and greppable: ``time LEVEL [component] message``.

A redaction step runs on every formatted line (exception text included): values registered with
``register_secret`` and the values of fields named in ``SECRET_FIELD_NAMES`` (a key, token or
password; the audit trail masks the same fields) are replaced by ``***``. Secrets never reach a
log file.

When the log files cannot be written (read-only ``TRADING_HOME``, full disk, no permission)
logging does not stop the command: it goes on to stderr only, after one WARNING line that says
the logs are not being written, where, and the fix. The command itself (``halt``, say) still
does what it can.
"""
import logging
import math
import re
import sys
from datetime import datetime

import config
import constants as C
import tunables
from errors import storage_error

SECRET_FIELD_NAMES = ("access_token", "refresh_token", "id_token", "app_secret", "client_secret",
                      "app_key", "api_key", "apikey", "secret", "password", "passwd", "token")
_SECRET_NAME = "|".join(SECRET_FIELD_NAMES)
_SECRET_FIELD = re.compile(rf"(?i)^(?:{_SECRET_NAME})$")

_SECRETS: set[str] = set()
_PATTERNS = [
    # key=value / key: value / "key": "value" for names that hold secrets
    re.compile(rf"""(?i)(["']?\b(?:{_SECRET_NAME})\b["']?\s*[:=]\s*["']?)([^"'\s,}}&]+)"""),
    re.compile(r"(?i)(\bBearer\s+)([A-Za-z0-9._~+/=-]+)"),
    re.compile(r"(?i)(\bBasic\s+)([A-Za-z0-9+/=]{8,})"),
]
_MANAGED = "_trading_managed"


def is_secret_field(name) -> bool:
    """True for a field whose value is a secret (``SECRET_FIELD_NAMES``, any case): the log
    redaction and the audit trail mask it."""
    return bool(_SECRET_FIELD.match(str(name)))


def register_secret(value) -> None:
    """Never print this value (a key, a token) in any log line from now on."""
    if value is None:
        return
    text = str(value)
    if len(text) >= 4:
        _SECRETS.add(text)


def redact(text: str) -> str:
    for pattern in _PATTERNS:
        text = pattern.sub(lambda m: m.group(1) + "***", text)
    for secret in sorted(_SECRETS, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, "***")
    return text


def json_safe(value, key: str | None = None):
    """A JSON-safe copy of ``value`` (the audit trail's ``details``): non-finite floats and
    unknown types become strings, fields named like secrets become ``***`` and registered
    secrets are redacted."""
    if key is not None and is_secret_field(key):
        return "***"
    if isinstance(value, dict):
        return {str(k): json_safe(v, str(k)) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [json_safe(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, str):
        return redact(value)
    try:                                   # numpy scalars, Decimal, datetime, Path, ...
        item = value.item() if hasattr(value, "item") else None
        if isinstance(item, (int, float, bool)):
            return json_safe(item)
    except (TypeError, ValueError):
        pass
    return redact(str(value))


class RedactingFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


_warned_unwritable = False


def _warn_logs_not_written(exc: BaseException, path) -> None:
    """One WARNING line on stderr (per ``setup_logging``): the logs are not being written, and
    why."""
    global _warned_unwritable
    if _warned_unwritable:
        return
    _warned_unwritable = True
    problem = storage_error(exc, path) or f"cannot write {path}: {exc}"
    sys.stderr.write(f"{datetime.now():{C.LOG_DATE_FORMAT}} WARNING [logging] logs are not being "
                     f"written (stderr only from now on): {problem}\n")
    sys.stderr.flush()


class _LogFileHandler(logging.FileHandler):
    """A log file that, when a write fails for lack of space or permission, stops trying (one
    WARNING line on stderr instead of Python's traceback for every record)."""

    broken = False

    def emit(self, record):
        if not self.broken:
            super().emit(record)

    def handleError(self, record):
        exc = sys.exc_info()[1]
        if not isinstance(exc, OSError):
            return super().handleError(record)
        self.broken = True
        _warn_logs_not_written(exc, self.baseFilename)
        self.close()

    def close(self):
        try:
            super().close()
        except OSError:             # the unflushed buffer of a full disk: already reported
            self.stream = None


def log_file(kind: str, day: datetime | None = None):
    day = day or datetime.now()
    return config.path(C.LOG_DIR) / f"{kind}_{day:%Y%m%d}.log"


def setup_logging(kind: str = "trading", level: int = logging.INFO, console: bool = True) -> logging.Logger:
    """Configure the root logger for one entry point. Safe to call again (for another
    ``TRADING_HOME`` or kind): the handlers it added before are replaced, not duplicated.
    Every entry point calls it first, so a bad ``TRADING_MODE`` or ``DATA_SOURCE`` stops each
    of them at startup (``config.ConfigError``) instead of falling back to a default. It also
    applies the effective tunables (``tunables.apply``: constants.py, settings.toml,
    TRADING_SET_<NAME>, every value checked), so a bad setting stops each of them here too."""
    global _warned_unwritable
    config.trading_mode()
    config.data_source()
    tunables.apply()
    _warned_unwritable = False               # one warning per setup, should the logs fail
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, _MANAGED, False):
            root.removeHandler(handler)
            handler.close()
    logs = config.path(C.LOG_DIR)
    formatter = RedactingFormatter(C.LOG_FORMAT, C.LOG_DATE_FORMAT)

    handlers = []
    target = log_file(kind)
    try:
        logs.mkdir(parents=True, exist_ok=True)
        handlers.append(_LogFileHandler(target, encoding="utf-8"))
        target = logs / C.ERRORS_LOG_NAME
        errors = _LogFileHandler(target, encoding="utf-8")
        errors.setLevel(logging.ERROR)
        handlers.append(errors)
    except OSError as exc:                  # read-only home, full disk: go on, on stderr only
        for handler in handlers:
            handler.close()
        handlers = []
        _warn_logs_not_written(exc, target)
    if console or not handlers:
        stream = logging.StreamHandler(sys.stderr)
        stream.setLevel(logging.INFO if console else logging.WARNING)
        handlers.append(stream)
    for handler in handlers:
        handler.setFormatter(formatter)
        setattr(handler, _MANAGED, True)
        root.addHandler(handler)
    root.setLevel(level)
    for noisy in ("urllib3", "httpx", "httpcore", "peewee", "matplotlib", "h5py", "absl",
                  "tensorflow", "curl_cffi", "authlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return root


def ensure_logging(kind: str = "trading") -> None:
    """Set up logging unless an entry point already did (for library calls made from
    ``python -c`` one-liners, such as ``get_latest_signal()``)."""
    if not any(getattr(h, _MANAGED, False) for h in logging.getLogger().handlers):
        setup_logging(kind)
