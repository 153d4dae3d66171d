"""Encrypted credentials: ``<TRADING_HOME>/.<service>_config.enc`` (``.schwab_config.enc``,
``.reddit_config.enc``, ``.schwab_token_config.enc`` for the Schwab OAuth token, ...).

* Each file is a Fernet token (AES-128-CBC + HMAC-SHA256, from ``cryptography``) of
  ``{"service": ..., "data": {...}}``: authenticated, so a wrong key, a flipped bit or a file
  renamed to another service is refused, never half-read. Any JSON dict round-trips, nested ones
  included (the Schwab token is one).
* The key is ``$TRADING_CREDENTIAL_KEY`` when set (servers that inject secrets), else
  ``config.config_dir()/credentials.key`` (directory 0700, file 0600), outside the project, so a
  copy of the project folder holds no usable secret. The key file is created on the first store;
  a missing key never falls back to plaintext.
* Files are written atomically (temp file, fsync, rename) with mode 0600 whatever the umask.
  Loading refuses, as ssh does for private keys, a file that is a symlink, is owned by someone
  else, or is accessible by group or others; the error names the file and the fix.
* Every loaded or stored value is registered with ``logging_setup.register_secret``, so it never
  reaches a log line; exception messages name files and services, never values; the dicts
  returned mask their values in ``repr()``.

Command line::

    python credential_manager.py set SERVICE [--merge]   # prompts (no echo); stdin key=value lines when piped
    python credential_manager.py list                    # services, file modes, where the key is
    python credential_manager.py check                   # can every file be decrypted? exit 0/1
    python credential_manager.py rotate-key              # new key, every file re-encrypted
    python credential_manager.py generate-key            # print a new key for TRADING_CREDENTIAL_KEY

See docs/SECURITY.md.
"""
from __future__ import annotations

import argparse
import getpass
import json
import logging
import os
import re
import stat
import sys
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

import config
from errors import UsageError, UserFacingError, failure_level, install_excepthook
import constants as C
import fileutil
import logging_setup

log = logging.getLogger("credentials")

_SERVICE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
_FILE = re.compile(r"^\.(?P<service>[A-Za-z0-9][A-Za-z0-9_-]{0,63})_config\.enc$")
# The fields of the known services (CONTRACT: credential services): (required, optional). `set`
# refuses any other field name for them and stores nothing without the required ones; `check`
# reports a stored file that lacks one. Other services take free key=value fields.
SERVICE_FIELDS = {
    "schwab": (("app_key", "app_secret"), ("account_hash", "callback_url")),
    "schwab_token": (("creation_timestamp", "token"), ()),
    "reddit": (("client_id", "client_secret", "user_agent"), ()),
    "telegram": (("bot_token", "chat_ids"), ()),    # telegram_control.py setup; chat_ids "111 -222"
}
KNOWN_FIELDS = {s: req for s, (req, _) in SERVICE_FIELDS.items() if s != "schwab_token"}   # `set` prompts


def missing_fields(service: str, data: dict) -> list[str]:
    """The required fields of a known service that ``data`` lacks or leaves empty."""
    required = SERVICE_FIELDS.get(service, ((), ()))[0]
    return [f for f in required if data.get(f) in (None, "")]


def _hint(value) -> str:
    """A value as ``set`` reports it: its length and, for long ones, its last two characters."""
    text = value if isinstance(value, str) else json.dumps(value)
    return f"{len(text)} characters" + (f", ends ...{text[-2:]}" if len(text) >= 12 else "")


# --------------------------------------------------------------------------- exceptions
class CredentialError(UserFacingError):
    """Base class: a credential file or key cannot be used. The message names the file and
    the fix, and never contains a secret."""


class CredentialUsageError(CredentialError, UsageError):
    """What a person typed is not a valid service or field (logged at WARNING, not errors.log)."""


class CredentialPermissionError(CredentialError):
    """A credential or key file is a symlink, owned by someone else, or group/world accessible."""


class CredentialKeyMissingError(CredentialError):
    """Credentials exist but the key to decrypt them is not here."""


class CredentialKeyMismatchError(CredentialError):
    """The key does not decrypt the file (key changed after a reinstall, or the file altered)."""


class CredentialFormatError(CredentialError):
    """A file decrypts but does not hold what this manager writes (or holds another service)."""


# --------------------------------------------------------------------------- helpers
class SecretDict(dict):
    """A plain dict whose ``repr``/``str`` masks every value (nested dicts too)."""

    def __repr__(self):
        return repr(_masked(self))

    __str__ = __repr__


def _masked(value):
    if isinstance(value, dict):
        return {k: _masked(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_masked(v) for v in value]
    return "***"


def _wrap(value):
    if isinstance(value, dict):
        return SecretDict({k: _wrap(v) for k, v in value.items()})
    if isinstance(value, list):
        return [_wrap(v) for v in value]
    return value


def _register(value) -> None:
    """Register every string value as a secret for log redaction."""
    if isinstance(value, dict):
        for v in value.values():
            _register(v)
    elif isinstance(value, list):
        for v in value:
            _register(v)
    elif isinstance(value, str):
        logging_setup.register_secret(value)     # ignores values under 4 characters


def check_private_file(path: Path, fd: int | None = None, what: str = "Credential file") -> None:
    """Refuse a file that breaks the private-file rule (``fileutil.private_file_problem``)."""
    problem = fileutil.private_file_problem(path, fd=fd)
    if problem:
        raise CredentialPermissionError(f"{what} {problem} (refusing to use it)")


def _open_private(path: Path, what: str) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        if os.path.islink(path):             # a link could point anywhere: refused, never followed
            raise CredentialPermissionError(
                f"{what} {fileutil.private_file_problem(path, follow_symlinks=False)}") from None
        raise CredentialError(f"{what} {path} cannot be read: {exc.strerror}") from None
    try:
        check_private_file(path, fd, what)
        with os.fdopen(fd, "rb", closefd=False) as fh:
            return fh.read()
    finally:
        os.close(fd)


def _valid_key(text: str, source: str) -> bytes:
    key = text.strip().encode()
    try:
        Fernet(key)
    except (ValueError, TypeError):
        raise CredentialError(f"The credential key from {source} is not a valid Fernet key "
                              f"(44 url-safe base64 characters). Generate one with: "
                              f"python credential_manager.py generate-key") from None
    return key


# --------------------------------------------------------------------------- the manager
class CredentialManager:
    """Store and load per-service credentials, encrypted at rest.

    ``home`` defaults to ``TRADING_HOME``; ``key_dir`` to ``config.config_dir()``.
    """

    def __init__(self, home=None, key_dir=None):
        self.home = Path(home) if home else config.home()
        self.key_dir = Path(key_dir) if key_dir else config.config_dir()
        self.key_path = self.key_dir / C.CREDENTIAL_KEY_FILE
        self.next_key_path = self.key_dir / C.CREDENTIAL_NEXT_KEY_FILE

    def __repr__(self):
        return f"CredentialManager(home={str(self.home)!r}, key={self.key_source()!r})"

    # ----------------------------------------------------------------- paths
    def path_for(self, service: str) -> Path:
        if not isinstance(service, str) or not _SERVICE.match(service):
            raise CredentialUsageError(f"Invalid service name {service!r}: use letters, digits, '_' "
                                  f"or '-' (e.g. schwab, reddit, schwab_token)")
        return self.home / C.CREDENTIAL_FILE_TEMPLATE.format(service=service)

    def services(self) -> list[str]:
        """Every service with a credential file, sorted."""
        if not self.home.is_dir():
            return []
        found = [m["service"] for p in self.home.iterdir() if (m := _FILE.match(p.name))]
        return sorted(found)

    def key_source(self) -> str:
        if os.environ.get(C.ENV_CREDENTIAL_KEY, "").strip():
            return f"${C.ENV_CREDENTIAL_KEY}"
        return str(self.key_path)

    # ----------------------------------------------------------------- keys
    def _env_key(self) -> bytes | None:
        value = os.environ.get(C.ENV_CREDENTIAL_KEY, "").strip()
        return _valid_key(value, f"${C.ENV_CREDENTIAL_KEY}") if value else None

    def _file_key(self, path: Path) -> bytes | None:
        if not path.exists() and not path.is_symlink():
            return None
        check_private_file(path, what="Credential key")   # follows links: keys may sit on secret mounts
        return _valid_key(path.read_text(), str(path))

    def _keys(self) -> list[bytes]:
        """Keys that may decrypt, newest first (a half-finished rotation's next key first)."""
        env = self._env_key()
        if env is not None:
            return [env]
        keys = [k for k in (self._file_key(self.next_key_path), self._file_key(self.key_path)) if k]
        return keys

    def _key_for_store(self) -> bytes:
        env = self._env_key()
        if env is not None:
            return env
        nxt = self._file_key(self.next_key_path)
        if nxt is not None:
            raise CredentialError(f"A key rotation was interrupted ({self.next_key_path} exists). "
                                  f"Finish it first: python credential_manager.py rotate-key")
        key = self._file_key(self.key_path)
        if key is not None:
            return key
        self._ensure_key_dir()
        if fileutil.create_exclusive(self.key_path, Fernet.generate_key() + b"\n"):
            log.info("Created the credential key %s (mode 0600); back it up with the key "
                     "directory", self.key_path)
        return self._file_key(self.key_path)

    def _ensure_key_dir(self) -> None:
        if not self.key_dir.exists():
            self.key_dir.mkdir(parents=True, mode=0o700, exist_ok=True)
            os.chmod(self.key_dir, 0o700)

    # ----------------------------------------------------------------- store / load
    def _encrypt(self, key: bytes, service: str, data: dict) -> bytes:
        try:
            plain = json.dumps({"service": service, "data": data}, ensure_ascii=False,
                               allow_nan=False).encode()
        except (TypeError, ValueError) as exc:
            raise CredentialError(f"Credentials for {service!r} must be a JSON dict "
                                  f"(strings, numbers, lists, dicts): {type(exc).__name__}") from None
        return Fernet(key).encrypt(plain)

    def store_credentials(self, service: str, data: dict) -> Path:
        """Encrypt ``data`` (a JSON-serialisable dict) into ``.<service>_config.enc`` (0600,
        atomic). Creates the key on first use. Returns the file's path."""
        path = self.path_for(service)
        if not isinstance(data, dict):
            raise CredentialError(f"Credentials for {service!r} must be a dict, "
                                  f"not {type(data).__name__}")
        _register(data)
        token = self._encrypt(self._key_for_store(), service, data)
        if path.is_symlink():
            raise CredentialPermissionError(f"Credential file {path} is a symlink; refusing to "
                                            f"write through it. Fix: rm {path} and store again")
        fileutil.atomic_write_bytes(path, token + b"\n", mode=0o600)
        log.info("Stored credentials for %s in %s (mode 0600, %d fields)", service, path.name,
                 len(data))
        return path

    def load_credentials(self, service: str) -> dict | None:
        """The stored dict, or None when ``service`` is not configured (no file).

        Raises CredentialPermissionError, CredentialKeyMissingError, CredentialKeyMismatchError
        or CredentialFormatError, each naming the file and the fix.
        """
        path = self.path_for(service)
        if not path.exists() and not path.is_symlink():
            log.debug("No credentials for %s (%s does not exist)", service, path.name)
            return None
        token = _open_private(path, "Credential file")
        data = self._decrypt(path, service, token)
        _register(data)
        log.debug("Loaded credentials for %s", service)
        return _wrap(data)

    def _decrypt(self, path: Path, service: str, token: bytes, keys=None) -> dict:
        keys = self._keys() if keys is None else keys
        if not keys:
            raise CredentialKeyMissingError(
                f"Cannot decrypt {path}: no credential key ({self.key_path} is missing: key file "
                f"not found there, {config.config_dir_source()}; and ${C.ENV_CREDENTIAL_KEY} is not "
                f"set). If another shell or the cron jobs use another {C.ENV_CONFIG_DIR}, use the "
                f"same value here. Otherwise restore the key file from your backup of "
                f"{self.key_dir}, or re-store the credentials (a new key is created): "
                f"python credential_manager.py set {service}")
        try:
            plain = MultiFernet([Fernet(k) for k in keys]).decrypt(token.strip())
        except InvalidToken:
            raise CredentialKeyMismatchError(
                f"Cannot decrypt {path}: the encryption key ({self.key_source()}, "
                f"{config.config_dir_source()}) is not the key "
                f"this file was encrypted with, or the file was altered. This happens when the "
                f"key changed after a reinstall. Restore the old key from your backup of "
                f"{self.key_dir}, or re-store the credentials: "
                f"python credential_manager.py set {service}") from None
        try:
            payload = json.loads(plain)
            stored_for, data = payload["service"], payload["data"]
        except (ValueError, KeyError, TypeError):
            raise CredentialFormatError(f"{path} decrypts but does not hold credentials in this "
                                        f"manager's format; re-store them: "
                                        f"python credential_manager.py set {service}") from None
        if stored_for != service or not isinstance(data, dict):
            raise CredentialFormatError(
                f"{path} holds the credentials of {stored_for!r}, not {service!r} (a file was "
                f"renamed or copied); re-store them: python credential_manager.py set {service}")
        return data

    def delete_credentials(self, service: str) -> bool:
        path = self.path_for(service)
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        fileutil.fsync_dir(path.parent)
        log.info("Deleted credentials for %s", service)
        return True

    # ----------------------------------------------------------------- maintenance
    def check(self) -> dict[str, str | None]:
        """{service: None if it decrypts and has the fields its service needs, else the error
        message} for every stored file."""
        result = {}
        for service in self.services():
            try:
                data = self.load_credentials(service) or {}
                missing = missing_fields(service, data)
                result[service] = (f"{self.path_for(service).name} lacks {', '.join(missing)}: run python "
                                   f"credential_manager.py set {service}" if missing else None)
            except (CredentialError, OSError, ValueError) as exc:
                result[service] = str(exc)
        return result

    def rotate_key(self) -> list[str]:
        """Re-encrypt every file with a new key; returns the services re-encrypted.

        Key file mode: the new key goes to ``credentials.key.next`` first, every file is
        re-encrypted atomically, then the new key replaces the old one. An interrupted rotation
        is finished by running it again (both keys decrypt meanwhile). Environment mode: set
        ``TRADING_CREDENTIAL_KEY_NEW`` to a new key (``generate-key``), run this, then make the
        new key the value of ``TRADING_CREDENTIAL_KEY``.
        """
        env_old = self._env_key()
        if env_old is not None:
            text = os.environ.get(C.ENV_CREDENTIAL_KEY_NEW, "").strip()
            if not text:
                raise CredentialError(
                    f"The key comes from ${C.ENV_CREDENTIAL_KEY}. Generate a new one "
                    f"(python credential_manager.py generate-key), export it as "
                    f"${C.ENV_CREDENTIAL_KEY_NEW}, run rotate-key, then set "
                    f"${C.ENV_CREDENTIAL_KEY} to the new key in your secrets manager")
            new = _valid_key(text, f"${C.ENV_CREDENTIAL_KEY_NEW}")
            old_keys = [new, env_old]
        else:
            old = self._file_key(self.key_path)
            new = self._file_key(self.next_key_path)
            old_keys = [k for k in (new, old) if k]
            if not old_keys and self.services():
                raise CredentialKeyMissingError(
                    f"No credential key ({self.key_path} is missing): the stored files cannot be "
                    f"re-encrypted. Restore the key from backup, or re-store each service")
        # Decrypt everything first: if any file fails, nothing is changed.
        plain = {}
        for service in self.services():
            path = self.path_for(service)
            plain[service] = self._decrypt(path, service, _open_private(path, "Credential file"),
                                           old_keys)
        if env_old is None and new is None:
            self._ensure_key_dir()
            new = Fernet.generate_key()
            fileutil.atomic_write_bytes(self.next_key_path, new + b"\n", mode=0o600)
        for service, data in plain.items():
            _register(data)
            fileutil.atomic_write_bytes(self.path_for(service),
                                        self._encrypt(new, service, data) + b"\n", mode=0o600)
        if env_old is None:
            os.replace(self.next_key_path, self.key_path)
            fileutil.fsync_dir(self.key_dir)
        log.info("Credential key rotated; re-encrypted %d file(s): %s", len(plain),
                 ", ".join(plain) or "none")
        return list(plain)


# --------------------------------------------------------------------------- command line
def _read_fields(service: str) -> dict:
    """Fields for ``set``: prompted without echo on a terminal, else ``key=value`` lines on stdin
    (blank lines and ``#`` comments ignored)."""
    data = {}
    if sys.stdin.isatty():
        fields = KNOWN_FIELDS.get(service)
        if fields:
            for name in fields:
                value = getpass.getpass(f"{name}: ")
                if value:
                    data[name] = value
        else:
            print(f"Enter the fields of {service!r}; an empty name ends the list.")
            while True:
                name = input("field name: ").strip()
                if not name:
                    break
                data[name] = getpass.getpass(f"{name} (hidden): ")
        return data
    for number, raw in enumerate(sys.stdin.read().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if "=" not in line:
            raise CredentialUsageError(f"stdin line {number}: expected key=value (the value is not "
                                  f"shown here)")
        name, value = line.split("=", 1)
        data[name.strip()] = value.strip()
    return data


def _set(manager: CredentialManager, service: str, replace: bool = False) -> int:
    """``set SERVICE``: the given fields over the stored ones (``replace``: instead of them).
    A field name the service does not have, or a required field left out, stores nothing."""
    manager.path_for(service)
    given = _read_fields(service)
    if not given:
        print("No fields given; nothing stored.", file=sys.stderr)
        return 1
    if service in SERVICE_FIELDS:
        required, optional = SERVICE_FIELDS[service]
        unknown = sorted(k for k in given if k not in required + optional)
        if unknown:
            raise CredentialUsageError(f"{service} has no field {', '.join(unknown)} (a typo?): its fields are "
                                  f"{', '.join(required + optional)}; nothing stored")
    if replace:
        try:
            stored = manager.load_credentials(service) or {}
        except CredentialError:               # unreadable (e.g. the key changed): replaced anyway
            stored = {}
        data = dict(given)
    else:
        stored = manager.load_credentials(service) or {}
        data = {**stored, **given}
    missing = missing_fields(service, data)
    if missing:
        raise CredentialUsageError(f"{service} needs {', '.join(missing)} as well: give "
                              f"{'them' if len(missing) > 1 else 'it'} too; nothing stored")
    path = manager.store_credentials(service, data)
    for name in sorted(data):
        if name not in stored:
            print(f"  {name}: added ({_hint(data[name])})")
        elif name in given and given[name] != stored[name]:
            print(f"  {name}: changed ({_hint(data[name])})")
        elif name in given:
            print(f"  {name}: unchanged")
        else:
            print(f"  {name}: kept")
    dropped = sorted(set(stored) - set(data))
    for name in dropped:
        print(f"  {name}: removed")
    log.info("Credentials for %s stored: fields %s", service, ", ".join(sorted(data)))
    print(f"Stored {len(data)} field(s) for {service} in {path} (mode 0600)")
    return 0


def main(argv=None) -> int:
    install_excepthook()
    parser = argparse.ArgumentParser(prog="credential_manager.py",
                                     description="Encrypted credentials for the trading system",
                                     epilog="Exit codes: 0 done (check: every file OK); 1 refused or a "
                                            "check failed; 2 bad usage.")
    sub = parser.add_subparsers(dest="command", required=True)
    p_set = sub.add_parser("set", help="store a service's credentials (prompts, or stdin "
                                       "key=value lines)")
    p_set.add_argument("service")
    p_set.add_argument("--merge", action="store_true",
                       help="keep stored fields that are not given again (the default; kept for old scripts)")
    p_set.add_argument("--replace", action="store_true",
                       help="drop the stored fields that are not given again")
    sub.add_parser("list", help="stored services and their file modes")
    sub.add_parser("check", help="can every file be decrypted?")
    sub.add_parser("rotate-key", help="new key; re-encrypt every file")
    sub.add_parser("generate-key", help="print a new key for TRADING_CREDENTIAL_KEY")
    args = parser.parse_args(argv)
    logging_setup.setup_logging("trading", console=False)
    manager = CredentialManager()
    try:
        if args.command == "set":
            return _set(manager, args.service, replace=args.replace)
        if args.command == "list":
            print(f"key: {manager.key_source()}")
            services = manager.services()
            if not services:
                print(f"no credentials stored in {manager.home}")
            for service in services:
                path = manager.path_for(service)
                st = os.lstat(path)
                mode = stat.S_IMODE(st.st_mode)
                problem = fileutil.private_file_problem(path, follow_symlinks=False, shown=path.name)
                note = f"  <- UNSAFE: {problem}" if problem else ""
                print(f"{service:<20} {stat.filemode(st.st_mode)} ({mode:04o})  {path.name}{note}")
            return 0
        if args.command == "check":
            results = manager.check()
            if not results:
                print(f"no credentials stored in {manager.home}")
                return 0
            for service, error in results.items():
                print(f"{service}: OK" if error is None else f"{service}: FAILED: {error}")
            return 0 if all(e is None for e in results.values()) else 1
        if args.command == "rotate-key":
            done = manager.rotate_key()
            print(f"Key rotated; re-encrypted: {', '.join(done) or 'no files'}")
            if os.environ.get(C.ENV_CREDENTIAL_KEY, "").strip():
                print(f"Now set ${C.ENV_CREDENTIAL_KEY} to the value of "
                      f"${C.ENV_CREDENTIAL_KEY_NEW} in your secrets manager.")
            return 0
        if args.command == "generate-key":
            print(Fernet.generate_key().decode())
            return 0
    except CredentialError as exc:
        print(f"error: {exc}", file=sys.stderr)
        log.log(failure_level(exc), "%s", exc)      # a typed mistake (a field name): WARNING
        return 1
    except (KeyboardInterrupt, EOFError):
        print("\ncancelled; nothing stored", file=sys.stderr)
        return 1
    return 2


if __name__ == "__main__":
    sys.exit(main())
