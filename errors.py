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
import sys


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


def command_failed(log: logging.Logger, what: str, exc: Exception) -> None:
    """An entry point's last word on an exception it caught: a person-facing one is logged and
    printed as its own line; anything else is logged with its traceback (errors.log) and
    printed as one line that points there."""
    if is_user_facing(exc):
        log.log(failure_level(exc), "%s FAILED: %s", what, exc)
        print(f"ERROR: {exc}", file=sys.stderr)
    else:
        log.exception("%s FAILED with an unexpected error", what)
        print(f"ERROR: {what} failed ({type(exc).__name__}: {squeeze(exc)}); see logs/errors.log",
              file=sys.stderr)


def _hook(exc_type, exc, tb):
    if getattr(exc_type, "user_facing", False):
        print(one_line(exc), file=sys.stderr)
        return
    sys.__excepthook__(exc_type, exc, tb)


def install_excepthook() -> None:
    """Print uncaught person-facing errors as one line (called by every entry point's main)."""
    sys.excepthook = _hook


# --------------------------------------------------------------------------- storage faults
# A read-only TRADING_HOME or a full disk shows up as an OSError (errno EROFS, ENOSPC, EACCES,
# EDQUOT) from the file system, or as a sqlite3.OperationalError whose text says so. Every
# layer that writes (logging_setup, state_db, fileutil, audit_logging) turns one into a
# StorageError: one line naming the path, the disk and the fix.
_ENOSPC_TEXT = ("database or disk is full", "no space left on device", "disk quota exceeded")
_READONLY_TEXT = ("attempt to write a readonly database", "read-only file system",
                  "readonly database")


class StorageError(UserFacingError, OSError):
    """A file the system must write cannot be written: read-only file system, full disk or
    missing permission. The message names the path, the mount point and the fix. It is also an
    ``OSError``, so code that already handles ``OSError`` keeps doing so."""
    kind: str | None = None        # "full", "readonly" or "denied" (set by storage_error)
    path: str | None = None        # the file that could not be written
    mount: str | None = None       # its mount point


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


def storage_fault_kind(exc: BaseException, path=None) -> str | None:
    """``"full"``, ``"readonly"`` or ``"denied"`` when ``exc`` says the storage refused a write
    (an OSError by errno, a sqlite3 error by its text), else None."""
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
    if type(exc).__name__ == "OperationalError" and path is not None and (
            "unable to open database" in text or "disk i/o error" in text):
        if _read_only(path):
            return "readonly"
        if "disk i/o error" in text:
            return "full" if _free_bytes(path) < 1024 ** 2 else None
        if not _os.access(_os.path.dirname(_os.path.abspath(str(path))) or ".", _os.W_OK):
            return "denied"
    return None


def _free_bytes(path) -> int:
    try:
        st = _os.statvfs(_existing(path))
        return st.f_bavail * st.f_frsize
    except OSError:
        return 1 << 62


def storage_error(exc: BaseException, path, what: str = "write") -> StorageError | None:
    """The StorageError for ``exc`` raised while trying to ``what`` ``path``, or None when
    ``exc`` is not a storage fault (then re-raise it unchanged)."""
    if isinstance(exc, StorageError):
        return exc
    kind = storage_fault_kind(exc, path)
    if kind is None:
        return None
    mount = mount_point(path)
    if kind == "full":
        text = (f"cannot {what} {path}: the disk is full ({mount}: {_free_text(mount)}). "
                f"Fix: free space on {mount}, then rerun")
    elif kind == "readonly":
        text = (f"cannot {what} {path}: the file system {mount} is mounted read-only. Fix: "
                f"remount {mount} read-write (or set TRADING_HOME to a writable folder), then rerun")
    else:
        text = (f"cannot {what} {path}: permission denied. Fix: make {_os.path.dirname(str(path))} "
                f"writable for this user (uid {_os.geteuid()}), then rerun")
    err = StorageError(text)
    err.kind = kind
    err.path = str(path)
    err.mount = mount
    err.errno = getattr(exc, "errno", None) or {"full": _errno.ENOSPC, "readonly": _errno.EROFS,
                                                "denied": _errno.EACCES}[kind]
    return err
