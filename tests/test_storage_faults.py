"""Storage faults: a read-only TRADING_HOME and a full disk. Every command the operator types
prints one line naming the path or the disk and the fix, exits non-zero (the health check: 2),
and shows no traceback; ``audit_logging.py verify``, which only reads, still gives its verdict.

The faults are real file systems in a private mount namespace (``unshare -m``, as root): a
read-only bind mount of the home, and a small tmpfs filled up. Without root or ``unshare``
the tests are skipped, saying so. Also: a failing COMMIT is rolled back (state_db), and the
errno translation names the disk and the fix."""
import errno
import os
import shlex
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

import state_db
from errors import StorageError, storage_error
from conftest import entry_env

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable


def _namespace_problem() -> str | None:
    if os.geteuid() != 0:
        return "needs root to mount in a private mount namespace (unshare -m); running as uid %d" % os.geteuid()
    if not shutil.which("unshare") or not shutil.which("mount"):
        return "unshare or mount not installed"
    done = subprocess.run(["unshare", "-m", "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /mnt"],
                          capture_output=True, text=True)
    if done.returncode != 0:
        return f"cannot mount in a private mount namespace here: {done.stderr.strip()[:200]}"
    return None


_PROBLEM = _namespace_problem()
needs_namespace = pytest.mark.skipif(_PROBLEM is not None, reason=str(_PROBLEM))


def _env(home: Path) -> dict:
    return entry_env(home)


def _run(args, home):
    done = subprocess.run(args, cwd=ROOT, env=_env(home), capture_output=True, text=True, timeout=180)
    return done


@pytest.fixture(scope="module")
def used_home(tmp_path_factory) -> Path:
    """A home that has been used: state database, audit trail, logs (built once)."""
    home = tmp_path_factory.mktemp("used") / "home"
    home.mkdir()
    for args in (["live_trading.py", "init"], ["live_trading.py", "halt", "--reason", "setup"],
                 ["live_trading.py", "resume", "--reason", "setup done"]):
        done = _run([PY, *args], home)
        assert done.returncode == 0, done.stderr[-2000:]
    assert (home / "state/trading_state.db").exists()
    assert (home / "logs/audit/audit_log.jsonl").exists()
    return home


def _prepared_home(tmp_path, used_home) -> Path:
    """This test's copy of the used home (the audit key directory inside it travels along)."""
    home = tmp_path / "used_home"
    shutil.copytree(used_home, home)
    return home


def _in_namespace(setup: str, command, home):
    """Run ``command`` after the shell ``setup`` in a private mount namespace (mounts vanish
    with it)."""
    script = f"set -e; {setup}; exec \"$@\""
    return _run(["unshare", "-m", "sh", "-c", script, "sh", *command], home)


def _readonly(home: Path) -> str:
    h = shlex.quote(str(home))
    return f"mount --bind {h} {h}; mount -o remount,bind,ro {h}"


def _full(home: Path, size: str = "4m") -> str:
    """A tmpfs over the home holding a copy of it, then filled to the last byte."""
    h = shlex.quote(str(home))
    s = shlex.quote(str(home) + ".src")
    return (f"cp -a {h} {s}; mount -t tmpfs -o size={size} tmpfs {h}; cp -a {s}/. {h}/; "
            f"(dd if=/dev/zero of={h}/filler bs=64k 2>/dev/null || true); "
            f"(dd if=/dev/zero of={h}/filler2 bs=1k 2>/dev/null || true); "
            f"(dd if=/dev/zero of={h}/filler3 bs=1 2>/dev/null || true)")


def _one_line_fault(done, *words):
    """No traceback, non-zero exit, and one line carrying every word (the path and the fix)."""
    out = done.stdout + done.stderr
    assert "Traceback" not in out, out[-3000:]
    assert done.returncode != 0, out[-3000:]
    hits = [line for line in out.splitlines() if all(w in line for w in words)]
    assert hits, f"no line with {words}:\n{out[-3000:]}"
    return out


COMMANDS = {
    "halt": [PY, "live_trading.py", "halt", "--reason", "R"],
    "status": [PY, "live_trading.py", "status"],
    "resume": [PY, "live_trading.py", "resume", "--reason", "drill over"],
    "health": ["./run_health_check.sh"],
    "data update": ["./run_daily_data_update.sh"],
}
CYCLE = pytest.param([PY, "live_trading.py"], id="cycle")


@needs_namespace
@pytest.mark.parametrize("fault", ["readonly", "full"])
@pytest.mark.parametrize("command", [CYCLE])
def test_trading_cycle_storage_fault(tmp_path, used_home, fault, command):
    home = _prepared_home(tmp_path, used_home)
    setup = _readonly(home) if fault == "readonly" else _full(home)
    done = _in_namespace(setup, command, home)
    _one_line_fault(done, str(home), "remount" if fault == "readonly" else "free space on")


@needs_namespace
@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_read_only_home(tmp_path, used_home, name):
    home = _prepared_home(tmp_path, used_home)
    done = _in_namespace(_readonly(home), COMMANDS[name], home)
    out = _one_line_fault(done, str(home), "read-only", "remount")
    if name == "halt":
        # one WARNING that logs are not written, one line saying why halt could not be recorded
        assert len([line for line in done.stderr.splitlines() if line.strip()]) <= 2, done.stderr
        assert "logs are not being written" in out
        assert "halt FAILED" in out
    if name == "health":
        assert done.returncode == 2
        assert any(line.startswith("FAIL  storage:") for line in done.stdout.splitlines())


@needs_namespace
def test_halt_sets_the_kill_switch_when_only_the_logs_are_read_only(tmp_path, used_home):
    home = _prepared_home(tmp_path, used_home)
    logs = shlex.quote(str(home / "logs"))
    done = _in_namespace(f"mount --bind {logs} {logs}; mount -o remount,bind,ro {logs}",
                         COMMANDS["halt"], home)
    out = done.stdout + done.stderr
    assert "Traceback" not in out
    assert "logs are not being written" in out
    conn = state_db.connect(home / "state/trading_state.db")
    assert (state_db.kv_get(conn, "kill_switch") or {}).get("reason") == "R", out


@needs_namespace
def test_read_only_home_verify_still_reads_the_trail(tmp_path, used_home):
    home = _prepared_home(tmp_path, used_home)
    done = _in_namespace(_readonly(home), [PY, "audit_logging.py", "verify"], home)
    out = done.stdout + done.stderr
    assert "Traceback" not in out
    assert done.returncode == 0, out
    assert "Audit trail OK" in done.stdout
    warning = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(warning) == 1 and "logs are not being written" in warning[0] and "read-only" in warning[0]


@needs_namespace
@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_full_disk(tmp_path, used_home, name):
    home = _prepared_home(tmp_path, used_home)
    done = _in_namespace(_full(home), COMMANDS[name], home)
    words = ("free space on", str(home)) if name != "health" else ("free space on", "disk")
    out = _one_line_fault(done, *words)
    if name == "health":
        assert done.returncode == 2
    else:
        assert "disk is full" in out
    assert "--- Logging error ---" not in out


@needs_namespace
def test_full_disk_verify_gives_its_verdict(tmp_path, used_home):
    home = _prepared_home(tmp_path, used_home)
    done = _in_namespace(_full(home), [PY, "audit_logging.py", "verify"], home)
    out = done.stdout + done.stderr
    assert "Traceback" not in out and "--- Logging error ---" not in out
    assert done.returncode == 0 and "Audit trail OK" in done.stdout, out


@needs_namespace
def test_full_disk_commit_is_rolled_back(tmp_path):
    """A write transaction on a full disk fails as a StorageError and leaves no transaction
    open; the database still holds what it held before."""
    home = tmp_path / "tiny"
    home.mkdir()
    code = (
        "import state_db, sqlite3, os\n"
        "conn = state_db.connect()\n"
        "with state_db.transaction(conn):\n"
        "    state_db.kv_set(conn, 'before', 1)\n"
        "open(os.environ['TRADING_HOME'] + '/filler', 'wb').close()\n"
        "try:\n"
        "    with open(os.environ['TRADING_HOME'] + '/filler', 'ab') as fh:\n"
        "        while True: fh.write(b'x' * 4096); fh.flush()\n"
        "except OSError: pass\n"
        "try:\n"
        "    with state_db.transaction(conn):\n"
        "        for i in range(2000): state_db.kv_set(conn, f'k{i}', 'y' * 2000)\n"
        "except Exception as exc:\n"
        "    print(type(exc).__name__, exc)\n"
        "print('in_transaction', conn.in_transaction)\n"
        "print('before', state_db.kv_get(conn, 'before'), 'k5', state_db.kv_get(conn, 'k5'))\n")
    h = shlex.quote(str(home))
    done = _run(["unshare", "-m", "sh", "-c", f"mount -t tmpfs -o size=2m tmpfs {h}; exec \"$@\"",
                 "sh", PY, "-c", code], home)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "StorageError" in done.stdout and "free space on" in done.stdout, done.stdout
    assert "in_transaction False" in done.stdout
    assert "before 1 k5 None" in done.stdout


# ----------------------------------------------------------------------------- no namespace needed
def test_failing_commit_is_rolled_back(tmp_path):
    """A deferred foreign key makes COMMIT itself fail: the transaction must not stay open."""
    conn = state_db.connect(tmp_path / "t.db")
    conn.execute("CREATE TABLE parent (id INTEGER PRIMARY KEY)")
    conn.execute("CREATE TABLE child (id INTEGER PRIMARY KEY, parent INTEGER REFERENCES parent(id) "
                 "DEFERRABLE INITIALLY DEFERRED)")
    with pytest.raises(sqlite3.IntegrityError):
        with state_db.transaction(conn):
            conn.execute("INSERT INTO child VALUES (1, 42)")
    assert not conn.in_transaction
    assert conn.execute("SELECT COUNT(*) FROM child").fetchone()[0] == 0
    with state_db.transaction(conn):                   # the connection is usable again
        state_db.kv_set(conn, "after", True)
    assert state_db.kv_get(conn, "after") is True


@pytest.mark.parametrize("exc, kind, words", [
    (OSError(errno.ENOSPC, "No space left on device"), "full", ["disk is full", "free space on"]),
    (sqlite3.OperationalError("database or disk is full"), "full", ["disk is full", "free space on"]),
    (OSError(errno.EROFS, "Read-only file system"), "readonly", ["read-only", "remount"]),
    (OSError(errno.EACCES, "Permission denied"), "denied", ["permission denied", "writable"]),
])
def test_storage_error_translation(tmp_path, exc, kind, words):
    err = storage_error(exc, tmp_path / "state" / "x.db")
    assert isinstance(err, StorageError) and isinstance(err, OSError)
    assert err.kind == kind
    text = str(err)
    assert str(tmp_path / "state" / "x.db") in text and "\n" not in text
    for w in words:
        assert w in text


def test_other_errors_are_not_storage_faults(tmp_path):
    assert storage_error(sqlite3.OperationalError("no such table: x"), tmp_path / "x.db") is None
    assert storage_error(OSError(errno.ENOENT, "No such file"), tmp_path / "x") is None


# ----------------------------------------------------------------------------- /dev/full: ENOSPC without root
needs_dev_full = pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full on this system")


@needs_dev_full
def test_log_file_on_a_full_disk_warns_once_and_goes_on(trading_home, capfd):
    import logging
    import logging_setup
    (trading_home / "logs").mkdir()
    os.symlink("/dev/full", logging_setup.log_file("trading"))
    logging_setup.setup_logging("trading")
    log = logging.getLogger("trading")
    for i in range(3):
        log.info("line %d", i)
    err = capfd.readouterr().err
    assert "--- Logging error ---" not in err and "Traceback" not in err
    warnings = [line for line in err.splitlines() if "logs are not being written" in line]
    assert len(warnings) == 1 and "disk is full" in warnings[0] and "free space on" in warnings[0]
    assert all(f"line {i}" in err for i in range(3))          # still on stderr


def test_log_directory_that_cannot_be_created_falls_back_to_stderr(trading_home, capfd):
    import logging
    import logging_setup
    (trading_home / "logs").write_text("a file where the folder should be")
    logging_setup.setup_logging("trading", console=False)
    logging.getLogger("trading").error("still shown")
    err = capfd.readouterr().err
    assert "Traceback" not in err
    assert "logs are not being written" in err and "still shown" in err


@needs_dev_full
def test_audit_append_on_a_full_disk_is_one_line(trading_home):
    from audit_logging import AuditLogger
    al = AuditLogger()
    al.log_event("first", "success", {})
    al.path.unlink()
    os.symlink("/dev/full", al.path)
    with pytest.raises(StorageError) as info:
        al.log_event("second", "success", {})
    text = str(info.value)
    assert "audit" in text and "disk is full" in text and "free space on" in text and "\n" not in text


@needs_dev_full
def test_atomic_write_on_a_full_disk_keeps_the_old_file(tmp_path, monkeypatch):
    import fileutil
    (tmp_path / "out").mkdir()
    target = tmp_path / "out" / "report.txt"
    target.write_text("old")

    def writer(tmp):
        with open("/dev/full", "wb") as fh:
            fh.write(b"x")
            fh.flush()
    with pytest.raises(StorageError) as info:
        fileutil.atomic_write_with(target, writer)
    assert str(target) in str(info.value) and "free space on" in str(info.value)
    assert target.read_text() == "old"
    assert [p.name for p in target.parent.iterdir()] == ["report.txt"]     # no temp file left
