"""The one base class for errors meant for a person, and the hook that prints them as one line.

An error that derives from ``UserFacingError`` names the thing that is wrong and the fix in its
message. When nothing catches it, ``install_excepthook`` makes Python print
``ERROR: <Class>: <message>`` on one line instead of a traceback. Entry points install the hook
explicitly in ``main``; the project's virtual environment also installs it at interpreter start
(``lstm_trader.pth``, written by ``make``), so the runbook's ``python -c`` one-liners read the
same way. Importing this module changes nothing.
"""
import errno as _errno
import logging
import os as _os
import sqlite3
import sys

import constants as C


class UserFacingError(RuntimeError):
    """An error whose message is written for the operator: what is wrong and what to do."""

    user_facing = True   # the marker the hook looks for


class UsageError(UserFacingError):
    """A mistake in what a person typed (an unknown name, a missing option): logged at WARNING,
    so it neither lands in logs/errors.log nor keeps the health check at WARN all day; the
    command still exits non-zero. Other errors may carry ``usage = True`` too."""

    usage = True


def failure_level(exc: BaseException) -> int:
    """WARNING for a person's typing mistake (``usage``), ERROR for everything else."""
    return logging.WARNING if getattr(exc, "usage", False) else logging.ERROR


class DataError(UserFacingError):
    """A data problem that stops the pipeline (``data_collection``, ``csv_source``); the message
    names the thing and the fix."""


def is_user_facing(exc: BaseException) -> bool:
    return bool(getattr(exc, "user_facing", False))


def one_line(exc: BaseException) -> str:
    """``ERROR: <Class>: <message>``, the form every person-facing error is printed in."""
    return f"ERROR: {type(exc).__name__}: {exc}"


def squeeze(exc: BaseException, limit: int = 300) -> str:
    """An exception's message on one line, at most ``limit`` characters (for a summary line)."""
    return " ".join(str(exc).split())[:limit]


def command_failed(log: logging.Logger, what: str, exc: BaseException) -> None:
    """An entry point's last word on an exception it caught: a person-facing one is logged and
    printed as its own line; anything else is logged with its traceback (errors.log) and
    printed as one line that points there."""
    exc = as_user_facing(exc)
    if is_user_facing(exc):
        log.log(failure_level(exc), "%s FAILED: %s", what, exc)
        print(f"ERROR: {exc}", file=sys.stderr)
    else:
        log.exception("%s FAILED with an unexpected error", what)
        print(f"ERROR: {what} failed ({type(exc).__name__}: {squeeze(exc)}); see logs/errors.log",
              file=sys.stderr)


def _hook(exc_type, exc, tb):
    exc = as_user_facing(exc)
    if is_user_facing(exc):
        print(one_line(exc), file=sys.stderr)
        return
    sys.__excepthook__(exc_type, exc, tb)


def install_excepthook() -> None:
    """Print uncaught person-facing errors as one line (called by every entry point's main)."""
    sys.excepthook = _hook


# --------------------------------------------------------------------------- storage faults
# A read-only TRADING_HOME or a full disk shows up as an OSError (errno EROFS, ENOSPC, EACCES,
# EDQUOT) from the file system, or as a sqlite3 error whose text says so; a database held by
# another process or damaged shows up as a sqlite3 error only ("database is locked", "file is
# not a database", "database disk image is malformed"). Every layer that writes (logging_setup,
# state_db, fileutil, audit_logging) turns one into a StorageError: one line naming the path,
# the disk and the fix. ``storage_error`` is the one translation; ``as_user_facing`` applies it
# to whatever reaches an entry point's last word (``command_failed``, the excepthook).
_ENOSPC_TEXT = ("database or disk is full", "no space left on device", "disk quota exceeded")
_READONLY_TEXT = ("attempt to write a readonly database", "read-only file system",
                  "readonly database")
_LOCKED_TEXT = ("database is locked", "database table is locked", "database schema is locked")
_CORRUPT_TEXT = ("file is not a database", "database disk image is malformed",
                 "malformed database schema", "file is encrypted or is not a database")
_KIND_ERRNO = {"full": _errno.ENOSPC, "readonly": _errno.EROFS, "denied": _errno.EACCES,
               "locked": _errno.EBUSY, "corrupt": _errno.EIO, "unopenable": _errno.ENOENT,
               "notdir": _errno.ENOTDIR}


class StorageError(UserFacingError, OSError):
    """A file the system must write cannot be written: read-only file system, full disk or
    missing permission; or the state database is locked by another process or damaged. The
    message names the path, the mount point and the fix. It is also an ``OSError``, so code
    that already handles ``OSError`` keeps doing so."""
    kind: str | None = None        # "full", "readonly", "denied", "locked", "corrupt", ... (storage_error)
    path: str | None = None        # the file that could not be written
    mount: str | None = None       # its mount point


class DatabaseStorageError(StorageError, sqlite3.OperationalError):
    """A StorageError raised by SQLite: also a ``sqlite3.OperationalError``, so code that already
    handles ``sqlite3.Error`` (a best-effort read, say) keeps doing so."""


def _ancestor(p: str, found) -> str:
    """``p`` or its nearest ancestor for which ``found(path)`` is true (the root at the latest)."""
    while not found(p):
        parent = _os.path.dirname(p)
        if parent == p:
            break
        p = parent
    return p


def _existing(path) -> str:
    """``path`` or its nearest existing ancestor."""
    return _ancestor(_os.path.abspath(str(path)), _os.path.exists)


def mount_point(path) -> str:
    """The mount point holding ``path`` (its nearest existing ancestor): the longest mount
    point in /proc/self/mounts that contains it (bind mounts included)."""
    p = _os.path.realpath(_existing(path))
    best = None
    try:
        with open("/proc/self/mounts", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                fields = line.split()
                if len(fields) < 2:
                    continue
                mount = fields[1].replace("\\040", " ")
                if (p == mount or p.startswith(mount.rstrip("/") + "/")) and (
                        best is None or len(mount) > len(best)):
                    best = mount
    except OSError:
        pass
    return best or _ancestor(p, _os.path.ismount)


def _read_only(path) -> bool:
    try:
        return bool(_os.statvfs(_existing(path)).f_flag & _os.ST_RDONLY)
    except OSError:
        return False


def _free_text(mount: str) -> str:
    try:
        st = _os.statvfs(mount)
        return f"{st.f_bavail * st.f_frsize / 1024 ** 2:.1f} MB free"
    except OSError:
        return "free space unknown"


def _not_a_folder(path) -> str | None:
    """The nearest existing ancestor of ``path`` when it is a file (so ``path`` cannot exist)."""
    existing = _existing(path)
    if existing != _os.path.abspath(str(path)) and not _os.path.isdir(existing):
        return existing
    return None


def _is_sqlite(exc: BaseException) -> bool:
    return isinstance(exc, sqlite3.Error)


def storage_fault_kind(exc: BaseException, path=None) -> str | None:
    """What refused the write, when ``exc`` is a storage fault (an OSError by errno, a sqlite3
    error by its text): ``"full"``, ``"readonly"``, ``"denied"``, ``"locked"`` (another process
    holds the database), ``"corrupt"`` (not a valid database), ``"notdir"`` (a file where a
    folder must be) or ``"unopenable"``; else None."""
    if isinstance(exc, StorageError):
        return getattr(exc, "kind", None)
    code = getattr(exc, "errno", None) if isinstance(exc, OSError) else None
    text = str(exc).lower()
    if code in (_errno.ENOSPC, _errno.EDQUOT) or any(t in text for t in _ENOSPC_TEXT):
        return "full"
    if code == _errno.EROFS or any(t in text for t in _READONLY_TEXT):
        return "readonly" if code == _errno.EROFS or path is None or _read_only(path) else "denied"
    if code in (_errno.EACCES, _errno.EPERM):
        return "readonly" if path is not None and _read_only(path) else "denied"
    if code == _errno.ENOTDIR:
        return "notdir"
    if _is_sqlite(exc) and any(t in text for t in _LOCKED_TEXT):
        return "locked"
    if _is_sqlite(exc) and any(t in text for t in _CORRUPT_TEXT):
        return "corrupt"
    if _is_sqlite(exc) and path is not None and (
            "unable to open database" in text or "disk i/o error" in text):
        if _read_only(path):
            return "readonly"
        if "disk i/o error" in text:
            return "full" if _free_bytes(path) < 1024 ** 2 else None
        if _not_a_folder(path):
            return "notdir"
        if not _os.access(_os.path.dirname(_os.path.abspath(str(path))) or ".", _os.W_OK):
            return "denied"
        return "unopenable"
    return None


def _free_bytes(path) -> int:
    try:
        st = _os.statvfs(_existing(path))
        return st.f_bavail * st.f_frsize
    except OSError:
        return 1 << 62


def _fault_text(kind: str, path, what: str, mount: str) -> str:
    folder = _os.path.dirname(_os.path.abspath(str(path)))
    if kind == "full":
        return (f"cannot {what} {path}: the disk is full ({mount}: {_free_text(mount)}). "
                f"Fix: free space on {mount}, then rerun")
    if kind == "readonly":
        return (f"cannot {what} {path}: the file system {mount} is mounted read-only. Fix: "
                f"remount {mount} read-write (or set TRADING_HOME to a writable folder), then rerun")
    if kind == "locked":
        return (f"cannot use {path}: the database is locked by another process (still busy "
                f"after waiting for it). Fix: let the other command (a trading cycle, the "
                f"scheduler, a sqlite3 shell: fuser -v {path}) finish or stop it, then rerun")
    if kind == "corrupt":
        return (f"cannot use {path}: it is not a valid SQLite database (damaged or "
                f"overwritten). Fix: stop the scheduler, move it aside "
                f"(mv {path} {path}.damaged) and restore it from backup (docs/RUNBOOK.md, "
                f"'State database locked or damaged'), then rerun")
    if kind == "notdir":
        blocker = _not_a_folder(path) or folder
        return (f"cannot {what} {path}: {blocker} is a file, not a folder. Fix: move that file "
                f"away (or set TRADING_HOME to a folder), then rerun")
    if kind == "unopenable":
        return (f"cannot {what} {path}: SQLite cannot open it. Fix: make {folder} a folder this "
                f"user can write (or set TRADING_HOME to one), then rerun")
    return (f"cannot {what} {path}: permission denied. Fix: make {folder} writable for this "
            f"user (uid {_os.geteuid()}), then rerun")


def storage_error(exc: BaseException, path, what: str = "write") -> StorageError | None:
    """The StorageError for ``exc`` raised while trying to ``what`` ``path``, or None when
    ``exc`` is not a storage fault (then re-raise it unchanged). A sqlite3 error becomes a
    ``DatabaseStorageError`` (also a ``sqlite3.OperationalError``)."""
    if isinstance(exc, StorageError):
        return exc
    kind = storage_fault_kind(exc, path)
    if kind is None:
        return None
    mount = mount_point(path)
    err = (DatabaseStorageError if _is_sqlite(exc) else StorageError)(_fault_text(kind, path, what, mount))
    err.kind = kind
    err.path = str(path)
    err.mount = mount
    err.errno = getattr(exc, "errno", None) or _KIND_ERRNO[kind]
    return err


def as_user_facing(exc: BaseException) -> BaseException:
    """``exc``, or the StorageError it stands for when it is a storage fault that no layer
    translated (an OSError from a library writing a file, say): the path is the error's own
    file name, else ``$TRADING_HOME`` (else the current folder), the likeliest place."""
    if is_user_facing(exc) or not isinstance(exc, (OSError, sqlite3.Error)):
        return exc
    path = (getattr(exc, "filename", None) or _os.environ.get(C.ENV_TRADING_HOME, "").strip()
            or _os.getcwd())
    kind = storage_fault_kind(exc, path)
    if kind is None or kind == "unopenable":
        return exc
    return storage_error(exc, path) or exc
