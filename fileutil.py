"""Files: atomic writes and the private-file rule.

Atomic writes: temp file in the same folder, fsync, rename, fsync the folder. A crash at any
point leaves either the old file or the new one, never a half-written file.

``private_file_problem``: THE rule for a file holding a secret (a credential file, the
credential key, the audit HMAC key): a regular file, owned by the effective user, with no
group or other access (as ssh demands of private keys).

A read-only file system, a full disk or a missing permission raises ``errors.StorageError``
(one line naming the file, the disk and the fix; also an ``OSError``), and the old file stays.
"""
import fcntl
import glob
import hashlib
import math
import numbers
import os
import stat
import tempfile
from contextlib import contextmanager
from datetime import date, datetime
from pathlib import Path

from errors import storage_error


def atomic_write_bytes(target, data: bytes, mode: int = 0o644) -> Path:
    def write(tmp):
        with open(tmp, "wb") as fh:
            fh.write(data)
    return atomic_write_with(target, write, mode)


def atomic_write_text(target, text: str, mode: int = 0o644) -> Path:
    return atomic_write_bytes(target, text.encode("utf-8"), mode)


def atomic_write_with(target, writer, mode: int = 0o644) -> Path:
    """Atomically create ``target`` by calling ``writer(tmp_path)``, which writes the file itself
    (for libraries that want a path: pandas, h5py). The temp file is created 0600 (mkstemp), so
    nobody can read it before it gets ``mode`` just ahead of the rename."""
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as exc:
        raise (storage_error(exc, target) or exc) from None
    os.close(fd)
    try:
        writer(tmp)
        os.chmod(tmp, mode)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(exc, OSError):
            raise (storage_error(exc, target) or exc) from None
        raise
    fsync_dir(target.parent)
    return target


def write_temp_bytes(directory, data: bytes, prefix: str, suffix: str = ".tmp") -> Path:
    """A new temp file in ``directory`` holding ``data``, fsynced (0600, named
    ``<prefix><pid>.<random><suffix>`` so ``remove_stale_temps`` can tell a dead writer's file);
    the caller renames it into place or removes it. On any failure nothing is left behind and a
    storage fault is a StorageError naming the file."""
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f"{prefix}{os.getpid()}.", suffix=suffix, dir=directory)
    except OSError as exc:
        raise (storage_error(exc, directory / f"{prefix}{suffix}") or exc) from None
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]    # a short write: the next one says why (ENOSPC)
        os.fsync(fd)
    except BaseException as exc:
        os.close(fd)
        os.unlink(tmp)
        if isinstance(exc, OSError):
            raise (storage_error(exc, tmp) or exc) from None
        raise
    os.close(fd)
    return Path(tmp)


def remove_stale_temps(directory, prefix: str, suffix: str = ".tmp") -> list[Path]:
    """Remove the ``write_temp_bytes`` files in ``directory`` whose writer process is gone (a
    crash, a kill -9 left them); a live process's file is left alone. Returns those removed."""
    removed = []
    for path in Path(directory).glob(f"{glob.escape(prefix)}*{glob.escape(suffix)}"):
        pid = path.name[len(prefix):].split(".", 1)[0]
        if not pid.isdigit() or _alive(int(pid)):
            continue
        try:
            path.unlink()
            removed.append(path)
        except OSError:
            pass
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def create_exclusive(path, data: bytes, mode: int = 0o600) -> bool:
    """Create ``path`` with ``data`` unless it exists; True if this call created it.
    Written to a temp file and hard-linked into place: a reader never sees a partial file, and
    two processes racing to create it (a key, say) end up agreeing on one content."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except OSError as exc:
        raise (storage_error(exc, path) or exc) from None
    try:
        os.fchmod(fd, mode)
        written = os.write(fd, data)
        while written < len(data):          # a short write: the next one says why (ENOSPC)
            written += os.write(fd, data[written:])
        os.fsync(fd)
    except OSError as exc:
        os.close(fd)
        os.unlink(tmp)
        raise (storage_error(exc, path) or exc) from None
    os.close(fd)
    try:
        os.link(tmp, path)
        created = True
    except FileExistsError:
        created = False
    finally:
        os.unlink(tmp)
    fsync_dir(path.parent)
    return created


@contextmanager
def process_lock(path, what: str):
    """Hold an exclusive ``flock`` on ``path`` (created with its folder) without waiting: yields
    None when this process holds it, else who holds it (``pid N (what) since T``, from the file)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(path, "a+b", buffering=0)
    except OSError as exc:
        raise (storage_error(exc, path, "open the lock") or exc) from None
    try:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield path.read_text(errors="replace").strip() or "another process"
            return
        fh.truncate(0)
        fh.write(f"pid {os.getpid()} ({what}) since {datetime.now().isoformat(timespec='seconds')}\n".encode())
        try:
            yield None
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
    finally:
        fh.close()


def file_sha256(path) -> str:
    """THE file digest: SHA-256 (hex) of the file's bytes, read in 1 MiB blocks (the model's
    checksum, the data file's hash of a walk-forward or a training run). OSError when unreadable."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fsync_dir(directory) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def private_file_problem(path, *, fd: int | None = None, follow_symlinks: bool = True,
                         shown: str | None = None) -> str | None:
    """What makes ``path`` unfit to hold a secret, as ``"<path> <problem>; fix: <command>"``,
    or None when it is a regular file owned by the effective user (``geteuid``) with no group
    or other access. ``fd``: check an open descriptor instead (no race with a rename);
    ``follow_symlinks=False``: a symlink is itself a problem; ``shown``: how the path is
    written in the message (default: as given)."""
    shown = str(path) if shown is None else shown
    if fd is not None:
        st = os.fstat(fd)
    else:
        st = os.stat(path) if follow_symlinks else os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        return (f"{shown} is a symlink; fix: replace it with the real file: "
                f"cp --remove-destination \"$(readlink -f {shown})\" {shown} && chmod 600 {shown}")
    if not stat.S_ISREG(st.st_mode):
        return f"{shown} is not a regular file; fix: remove it and store the secret again"
    if st.st_uid != os.geteuid():
        return (f"{shown} is owned by uid {st.st_uid}, not by you (uid {os.geteuid()}); "
                f"fix: chown $(id -u) {shown} && chmod 600 {shown}")
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        return f"{shown} is accessible by group or others (mode {mode:04o}); fix: chmod 600 {shown}"
    return None


# ----------------------------------------------------------------------------- JSON for report files
def json_default(obj):
    """``json.dumps(default=...)`` for NumPy numbers, dates and paths (NaN/inf become None).
    NumPy's integers and floats register as ``numbers.Integral``/``numbers.Real`` and a pandas
    Timestamp is a ``datetime``: no import of either here (every entry point imports this module)."""
    if isinstance(obj, numbers.Integral):
        return int(obj)
    if isinstance(obj, numbers.Real):
        value = float(obj)
        return value if math.isfinite(value) else None
    if isinstance(obj, (datetime, date)):
        return obj.isoformat()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def finite_json(obj):
    """Replace NaN/inf floats (not valid JSON) by None, recursively."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_json(v) for v in obj]
    return obj
