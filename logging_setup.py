"""The one logging setup every entry point calls.

``setup_logging("trading")`` sends every component's records to
``logs/trading_YYYYMMDD.log`` (``"data_update"`` -> ``logs/data_update_YYYYMMDD.log``), every
ERROR and CRITICAL also to ``logs/errors.log``, and INFO and up to stderr (which cron captures in
``logs/cron_trading.log``). Lines are plain and greppable: ``time LEVEL [component] message``.

A redaction step runs on every formatted line (exception text included): values registered with
``register_secret`` and the values of fields named in ``SECRET_FIELD_NAMES`` (a key, token or
password; the audit trail masks the same fields) are replaced by ``***``. Secrets never reach a
log file.

URLs that carry credentials (alert channels: ``mailto://user:password@host``,
``tgram://BOTTOKEN/CHATID``, ``discord://ID/TOKEN``, ``json://host/path?token=...``) follow ONE
rule: ``redact_url`` is how such a URL is shown (scheme and host name kept, everything else
``***``), and ``register_url_secrets`` registers every part of it that may be a secret, whatever
its length, so that the part is redacted wherever it appears later (a library's own log line,
an exception text). A part shorter than 8 characters is redacted only where it stands alone
(not inside a longer word), so a 3-character chat id does not eat every word that contains it.

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
from urllib.parse import unquote

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


# --------------------------------------------------------------------------- URLs with secrets
_URL_SCHEMES: set[str] = set()             # schemes of registered URLs: every such URL is shown redacted
_TOKENS: set[str] = set()                  # short URL parts: redacted where they stand alone
_token_pattern: re.Pattern | None = None
_SUBSTRING_MIN = 8                         # a URL part this long is redacted anywhere (characters)
_URL = re.compile(r"(?i)(?<![A-Za-z0-9+.-])([a-z][a-z0-9+.-]{0,31})://[^\s'\"<>]+")
_USERINFO = re.compile(r"(?i)(?<![A-Za-z0-9+.-])([a-z][a-z0-9+.-]{0,31}://)([^/\s@'\"<>?#]+)@")
_SECRET_QUERY = re.compile(r"(?i)pass|pwd|token|key|secret|auth|sig|cred|session|code|user|hook|id$")


def _split_url(url: str):
    """(scheme, userinfo or None, hostport, path, query, fragment) of ``url``, without
    validation (a Telegram bot token ``123:ABC`` where a host should be is no port)."""
    scheme, _, rest = url.partition("://")
    rest, _, fragment = rest.partition("#")
    rest, _, query = rest.partition("?")
    netloc, slash, path = rest.partition("/")
    userinfo, at, hostport = netloc.rpartition("@")
    return scheme, (userinfo if at else None), hostport, slash + path, query, fragment


def _is_host_name(hostport: str) -> bool:
    """Is this the host[:port] of a server (a name with a dot, an IP address, localhost), not a
    token standing where a host would be (``tgram://BOTTOKEN``, ``discord://WEBHOOK_ID``)?"""
    if hostport.startswith("["):                    # [IPv6]:port
        return True
    host, _, port = hostport.partition(":")
    return (not port or port.isdigit()) and ("." in host or host.lower() == "localhost")


def url_secret_parts(url: str) -> list[str]:
    """Every part of ``url`` that may be a secret, whatever its length: the user and password,
    the host when it is a token (``tgram://BOTTOKEN/...``) and each of its ``:`` pieces, every
    path segment, the values of query fields named like secrets (or headers, ``+Name=``) and
    the fragment. Each also in its %-decoded form."""
    _, userinfo, hostport, path, query, fragment = _split_url(url)
    parts = []
    if userinfo is not None:
        user, _, password = userinfo.partition(":")
        parts += [user, password]
    if not _is_host_name(hostport):
        parts += [hostport, *hostport.split(":")]
    parts += path.split("/")
    for field in query.split("&"):
        name, _, value = field.partition("=")
        if name[:1] in "+-:" or _SECRET_QUERY.search(name):
            parts.append(value)
    parts.append(fragment)
    out = []
    for part in parts:
        for form in (part, unquote(part)):
            if form and form not in out:
                out.append(form)
    return out


def redact_url(url: str) -> str:
    """THE way a URL that may hold secrets is shown (alert channels in lists and logs): scheme,
    host name and port kept; user, password, a token in the host's place, the path, every query
    value and the fragment shown as ``***``: ``json://***:***@127.0.0.1:8080/***?token=***``."""
    url = str(url).strip()
    if "://" not in url:
        return "<unreadable URL>"
    scheme, userinfo, hostport, path, query, fragment = _split_url(url)
    out = f"{scheme}://"
    if userinfo is not None:
        out += "***:***@" if ":" in userinfo else "***@"
    out += hostport if _is_host_name(hostport) else ("***" if hostport else "")
    if path.strip("/"):
        out += "/***"
    if query:
        out += "?" + "&".join(f"{field.split('=', 1)[0]}=***" for field in query.split("&") if field)
    if fragment:
        out += "#***"
    return out


def register_url_secrets(url) -> None:
    """Never print ``url`` or any part of it that may be a secret (``url_secret_parts``) in a
    log line from now on; URLs of its scheme are shown as ``redact_url`` shows them."""
    global _token_pattern
    if not url:
        return
    url = str(url).strip()
    register_secret(url)
    if "://" in url:
        _URL_SCHEMES.add(url.split("://", 1)[0].lower())
    for part in url_secret_parts(url):
        if len(part) >= _SUBSTRING_MIN:
            _SECRETS.add(part)
        _TOKENS.add(part)
    if not _TOKENS:                # a URL with no secret part (json://127.0.0.1:8080/): an empty
        return                     # pattern would match everywhere and star every gap
    alternatives = "|".join(re.escape(t) for t in sorted(_TOKENS, key=len, reverse=True))
    _token_pattern = re.compile(rf"(?<![A-Za-z0-9])(?:{alternatives})(?![A-Za-z0-9])")


def _redact_urls(text: str) -> str:
    text = _USERINFO.sub(lambda m: m.group(1) + ("***:***@" if ":" in m.group(2) else "***@"), text)
    if _URL_SCHEMES:
        text = _URL.sub(lambda m: redact_url(m.group(0)) if m.group(1).lower() in _URL_SCHEMES
                        else m.group(0), text)
    return text


def redact(text: str) -> str:
    text = _redact_urls(text)
    for pattern in _PATTERNS:
        text = pattern.sub(lambda m: m.group(1) + "***", text)
    for secret in sorted(_SECRETS, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, "***")
    if _token_pattern is not None:
        text = _token_pattern.sub("***", text)
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
    """Every line's message, exception text and stack redacted (``redact``); the time, level and
    component are left as they are (a short redacted token must not eat the time)."""

    def format(self, record: logging.LogRecord) -> str:
        shown = logging.makeLogRecord(record.__dict__)
        shown.msg, shown.args = redact(record.getMessage()), None
        exc_text = record.exc_text or (self.formatException(record.exc_info) if record.exc_info else "")
        shown.exc_info, shown.exc_text = None, (redact(exc_text) or None)
        shown.stack_info = redact(record.stack_info) if record.stack_info else None
        return super().format(shown)


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
