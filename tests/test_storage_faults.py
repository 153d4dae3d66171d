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
from errors import DatabaseStorageError, StorageError, as_user_facing, storage_error
from conftest import entry_env, run_entry

FULL = os.environ.get("FAULTS", "").strip().lower() == "full"

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
    # the real interpreter, not the fork server's python (tests/fork_runner.py): the server lives
    # outside the private mount namespace these commands run in, so its children would not see the
    # read-only or full file system
    return entry_env(home, {"TRADING_PYTHON": sys.executable, "TESTS_FORK_SERVER": "0"})


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


def _full(home: Path, size: str = "4m", free_kb: int = 0) -> str:
    """A tmpfs over the home holding a copy of it, then filled to the last byte (and, with
    ``free_kb``, that much freed again: a nearly full disk)."""
    h = shlex.quote(str(home))
    return (f"{_on_tmpfs(home, size)}; {_fill(home)}"
            + (f"; truncate -s -{free_kb}K {h}/filler" if free_kb else ""))


def _on_tmpfs(home: Path, size: str) -> str:
    """A tmpfs of ``size`` over the home holding a copy of it."""
    h = shlex.quote(str(home))
    s = shlex.quote(str(home) + ".src")
    return f"cp -a {h} {s}; mount -t tmpfs -o size={size} tmpfs {h}; cp -a {s}/. {h}/"


def _fill(home: Path) -> str:
    """Fill the file system of ``home`` to the last byte (``filler*`` files in it)."""
    h = shlex.quote(str(home))
    return (f"(dd if=/dev/zero of={h}/filler bs=64k 2>/dev/null || true); "
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



# ----------------------------------------------------------------------------- a nearly full disk
@needs_namespace
@pytest.mark.parametrize("free_kb", [64, 256])
@pytest.mark.parametrize("name", ["cycle", "status"])
def test_nearly_full_disk(tmp_path, used_home, name, free_kb):
    """64-256 KiB free: SQLite opens the database and fails on the first table a module
    creates (ensure_schema). Either the command has room enough, or it says so in one line."""
    home = _prepared_home(tmp_path, used_home)
    command = [PY, "live_trading.py"] + (["status"] if name == "status" else [])
    done = _in_namespace(_full(home, free_kb=free_kb), command, home)
    out = done.stdout + done.stderr
    assert "Traceback" not in out and "--- Logging error ---" not in out, out[-3000:]
    if "disk is full" in out:
        _one_line_fault(done, str(home), "disk is full", "free space on")
    if name == "status" and free_kb == 64:             # seen: the first CREATE TABLE fails here
        assert done.returncode != 0 and "disk is full" in out, out[-3000:]


# ----------------------------------------------------------------------------- damaged or locked database
NOT_A_DATABASE = b"this is not a database\n" * 300

DB_COMMANDS = {
    "cycle": [PY, "live_trading.py"],
    "status": [PY, "live_trading.py", "status"],
    "halt": [PY, "live_trading.py", "halt", "--reason", "R"],
    "scheduler": [PY, "scheduler.py"],
    "risk": [PY, "risk_management.py", "status"],
    "health": ["./run_health_check.sh"],
}


@pytest.mark.parametrize("name", sorted(DB_COMMANDS))
def test_damaged_database_is_refused_in_one_line(tmp_path, used_home, name):
    """A state database overwritten with garbage: every command refuses it in one line that
    names the file and the fix; the file is left exactly as it was (evidence)."""
    home = _prepared_home(tmp_path, used_home)
    db = home / "state" / "trading_state.db"
    for suffix in ("-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    db.write_bytes(NOT_A_DATABASE)
    done = _run(DB_COMMANDS[name], home)
    _one_line_fault(done, str(db), "not a valid SQLite database", "restore it from backup")
    if name == "health":
        assert done.returncode == 2
    assert db.read_bytes() == NOT_A_DATABASE


def test_locked_database_is_one_line_naming_it(tmp_path):
    """Another process holds the write lock past the busy timeout: the write is refused as a
    StorageError (also a sqlite3.OperationalError) naming the file and the fix; nothing is
    written, the connection is usable afterwards."""
    path = tmp_path / "state.db"
    holder = state_db.connect(path)
    waiter = state_db.connect(path)
    waiter.execute("PRAGMA busy_timeout=50")
    holder.execute("BEGIN IMMEDIATE")
    with pytest.raises(DatabaseStorageError) as info:
        with state_db.transaction(waiter):
            state_db.kv_set(waiter, "x", 1)
    text = str(info.value)
    assert isinstance(info.value, sqlite3.OperationalError) and info.value.kind == "locked"
    assert str(path) in text and "locked by another process" in text and "fuser" in text
    assert "\n" not in text
    holder.execute("ROLLBACK")
    assert not waiter.in_transaction and state_db.kv_get(waiter, "x") is None


def test_ensure_schema_and_reads_translate_too(tmp_path):
    """Not only connect and transaction: a module's ensure_schema and a plain read on a
    connection from state_db say which file and what to do."""
    path = tmp_path / "state.db"
    conn = state_db.connect(path)
    holder = state_db.connect(path)
    conn.execute("PRAGMA busy_timeout=50")
    holder.execute("BEGIN IMMEDIATE")
    holder.execute("CREATE TABLE t (x)")
    with pytest.raises(StorageError, match="locked"):
        state_db.ensure_schema(conn, ["CREATE TABLE IF NOT EXISTS other (y)"])
    holder.execute("ROLLBACK")
    path.with_name("bad.db").write_bytes(NOT_A_DATABASE)
    with pytest.raises(StorageError, match="not a valid SQLite database") as info:
        state_db.connect(path.with_name("bad.db"))
    assert str(path.with_name("bad.db")) in str(info.value)
    with pytest.raises(StorageError, match="not a valid SQLite database"):
        state_db.connect_readonly(path.with_name("bad.db")).execute("SELECT * FROM kv").fetchall()


def test_other_database_errors_are_not_translated(tmp_path):
    conn = state_db.connect(tmp_path / "t.db")
    with pytest.raises(sqlite3.OperationalError) as info:
        conn.execute("SELECT * FROM no_such_table")
    assert not isinstance(info.value, StorageError)
    ro = state_db.connect_readonly(tmp_path / "t.db")
    with pytest.raises(sqlite3.OperationalError) as info:      # a write on a read-only connection
        ro.execute("CREATE TABLE x (y)")
    assert not isinstance(info.value, StorageError)


@pytest.mark.skipif(not FULL, reason="waits out the 30 s busy timeout: runs under make faults (FAULTS=full)")
def test_locked_database_through_halt(tmp_path, used_home):
    home = _prepared_home(tmp_path, used_home)
    holder = sqlite3.connect(home / "state" / "trading_state.db", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        done = _run([PY, "live_trading.py", "halt", "--reason", "R"], home)
    finally:
        holder.execute("ROLLBACK")
    _one_line_fault(done, str(home / "state" / "trading_state.db"), "locked by another process")


def test_home_under_a_file_is_one_line(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(StorageError) as info:
        state_db.connect(blocker / "state" / "trading_state.db")
    assert f"{blocker} is a file, not a folder" in str(info.value)


def test_untranslated_os_errors_become_one_line_at_the_entry_point(tmp_path):
    """What no layer translated (a library writing a file) is translated by the entry point's
    last word (command_failed, the excepthook); anything else is left alone."""
    exc = OSError(errno.ENOSPC, "No space left on device")
    exc.filename, exc.filename2 = str(tmp_path / "src"), str(tmp_path / "dst")
    err = as_user_facing(exc)
    assert isinstance(err, StorageError) and "free space on" in str(err) and str(tmp_path) in str(err)
    other = ValueError("x")
    assert as_user_facing(other) is other
    hook = subprocess.run([PY, "-c", "import errors, errno; errors.install_excepthook(); "
                                     "raise OSError(errno.EROFS, 'Read-only file system', '/x/y')"],
                          cwd=ROOT, capture_output=True, text=True)
    assert hook.returncode == 1 and "Traceback" not in hook.stderr
    assert hook.stderr.count("\n") == 1 and "/x/y" in hook.stderr and "remount" in hook.stderr


# ----------------------------------------------------------------------------- training on a full disk
def test_temp_model_files_of_a_dead_writer_are_removed(tmp_path):
    import fileutil
    dead = tmp_path / ".lstm_price_difference_model.999999999.abc.tmp.h5"     # no such pid
    alive = tmp_path / f".lstm_price_difference_model.{os.getpid()}.abc.tmp.h5"
    other = tmp_path / "lstm_price_difference_model.h5"
    for p in (dead, alive, other):
        p.write_text("x")
    removed = fileutil.remove_stale_temps(tmp_path, ".lstm_price_difference_model.", ".tmp.h5")
    assert removed == [dead] and alive.exists() and other.exists()


@needs_namespace
def test_temp_file_on_a_full_disk_is_one_line_and_removed(tmp_path):
    """The model is written from memory with ordinary writes: a full disk is a StorageError
    naming the file, and no temp file is left (HDF5 writing to the disk itself crashed)."""
    target = tmp_path / "models"
    target.mkdir()
    code = ("import fileutil, os, sys\n"
            "try:\n"
            "    fileutil.write_temp_bytes(sys.argv[1], b'x' * (3 << 20), '.m.', '.tmp.h5')\n"
            "except Exception as exc:\n"
            "    print(type(exc).__name__, exc)\n"
            "print('left', sorted(os.listdir(sys.argv[1])))\n")
    t = shlex.quote(str(target))
    done = _run(["unshare", "-m", "sh", "-c", f"mount -t tmpfs -o size=1m tmpfs {t}; exec \"$@\"",
                 "sh", PY, "-c", code, str(target)], tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "StorageError" in done.stdout and "disk is full" in done.stdout and str(target) in done.stdout
    assert "left []" in done.stdout


@needs_namespace
@pytest.mark.skipif(not FULL, reason="trains a model (about a minute): runs under make faults (FAULTS=full)")
def test_training_on_a_nearly_full_disk(trading_home, trained):
    home = trading_home
    for name in ("processed_stock_data.csv", "lstm_price_difference_model.h5",
                 "lstm_price_difference_model.json"):
        shutil.copy2(trained["home"] / name, home / name)
    done = _in_namespace(_full(home, size="8m", free_kb=16),
                         [PY, "train_model.py", "--profile", "tiny", "--force"], home)
    out = done.stdout + done.stderr
    assert done.returncode == 1 and "Traceback" not in out and "Segmentation" not in out, out[-3000:]
    _one_line_fault(done, str(home), "disk is full", "free space on")


# ----------------------------------------------------------------------------- the disk fills during a cycle
_FILL_AFTER_READS = """
import subprocess, sys
import live_trading, trading_cycle
def fill_the_disk(name):    # after the cycle's reads (data, model, signals): its next writes meet a full disk
    if name == 'after_signals':
        subprocess.run(['sh', '-c', sys.argv[1]], check=True)
trading_cycle.failpoint = fill_the_disk
sys.exit(live_trading.main(['--as-of', sys.argv[2]]))
"""
_DUMP = """
import json, sqlite3, sys
conn = sqlite3.connect(sys.argv[1])
conn.row_factory = sqlite3.Row
tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
rows = lambda sql: [dict(r) for r in conn.execute(sql)] if sql.split(' FROM ')[1].split()[0] in tables else []
print(json.dumps({"integrity": conn.execute("PRAGMA integrity_check").fetchone()[0],
                  "ours": rows("SELECT client_key, symbol, side, status, broker_order_id FROM orders"),
                  "paper": rows("SELECT client_key, order_id, symbol, side, quantity FROM paper_orders")}))
"""


@needs_namespace
def test_disk_fills_after_the_cycles_reads(tmp_path, trained):
    """The disk fills once the cycle has read its data and model and computed its signals: its
    next write (the account, the order intent, the audit trail) fails. One line naming the file
    and the fix, exit non-zero, nothing half-written (the database passes its integrity check,
    the audit trail verifies, no order row without its broker order); after space is freed the
    rerun trades, and no order exists twice."""
    import json
    from crash_harness import fresh_home
    home = fresh_home(trained, tmp_path / "home")
    day = trained["trade_day"]
    replay_db = shlex.quote(str(home / "state/replay_state.db"))
    out = tmp_path / "out"
    out.mkdir()
    o = shlex.quote(str(out))

    def step(name, command):
        return f"{command} > {o}/{name}.out 2> {o}/{name}.err; echo $? > {o}/{name}.rc"
    py = shlex.quote(PY)
    script = "; ".join([
        _on_tmpfs(home, "64m"), "set +e",
        step("cycle", f"{py} -c {shlex.quote(_FILL_AFTER_READS)} {shlex.quote(_fill(home))} {day}"),
        step("verify1", f"{py} audit_logging.py verify"),
        step("dump1", f"{py} -c {shlex.quote(_DUMP)} {replay_db}"),
        f"rm -f {shlex.quote(str(home))}/filler*",
        step("rerun", f"{py} live_trading.py --as-of {day}"),
        step("verify2", f"{py} audit_logging.py verify"),
        step("dump2", f"{py} -c {shlex.quote(_DUMP)} {replay_db}"),
        "true"])
    done = _run(["unshare", "-m", "sh", "-c", script], home)
    assert done.returncode == 0, done.stderr[-3000:]

    def result(name):
        return int((out / f"{name}.rc").read_text()), (out / f"{name}.out").read_text(), (out / f"{name}.err").read_text()
    rc, stdout, stderr = result("cycle")
    text = stdout + stderr
    assert rc not in (0, 99) and "Traceback" not in text, text[-3000:]
    last = stderr.strip().splitlines()[-1]               # the cycle's last word (the lines above: its log)
    assert "disk is full" in last and "free space on" in last and str(home) in last, text[-3000:]
    assert "replay_state.db" in last or "audit" in last, last          # a real write of the cycle failed
    for verify in ("verify1", "verify2"):
        assert result(verify)[0] == 0, result(verify)
    before = json.loads(result("dump1")[1])
    assert before["integrity"] == "ok"
    assert all(r["status"] not in ("SENDING",) for r in before["ours"]), before
    sent = {r["client_key"] for r in before["paper"]}
    assert all(r["broker_order_id"] for r in before["ours"] if r["client_key"] in sent), before
    rc, stdout, stderr = result("rerun")
    assert rc == 0, (stdout + stderr)[-3000:]
    after = json.loads(result("dump2")[1])
    assert after["integrity"] == "ok" and after["paper"], after
    keys = [r["client_key"] for r in after["paper"]]
    orders = [(r["symbol"], r["side"]) for r in after["paper"]]
    assert len(set(keys)) == len(keys) and len(set(orders)) == len(orders), after    # no order twice
    assert {r["client_key"] for r in after["ours"] if r["broker_order_id"]} == set(keys)


def _and_leftovers(command, home: Path) -> list[str]:
    """``command`` run by sh, then the temp files left in the home listed (``LEFT <path>``) and
    whether the processed data file exists (``PROCESSED yes|no``), and the reports (``REPORT
    <name>``); exits with the command's code."""
    h = shlex.quote(str(home))
    return ["sh", "-c", " ".join(shlex.quote(str(c)) for c in command)
            + f"; rc=$?; find {h} -name '*.tmp*' -printf 'LEFT %p\\n'; "
              f"[ -e {h}/processed_stock_data.csv ] && echo PROCESSED yes || echo PROCESSED no; "
              f"ls {h}/reports 2>/dev/null | sed 's/^/REPORT /'; exit $rc"]


@needs_namespace
@pytest.mark.parametrize("free_kb", [64, 256])
def test_data_update_on_a_nearly_full_disk(tmp_path, used_home, free_kb):
    """The data update (./run_daily_data_update.sh) with 64-256 KiB free: one line naming the file
    and the fix, exit non-zero, no temp file left, no processed data file half-written."""
    home = _prepared_home(tmp_path, used_home)
    done = _in_namespace(_full(home, free_kb=free_kb), _and_leftovers(["./run_daily_data_update.sh", "--force"], home),
                         home)
    out = _one_line_fault(done, str(home), "disk is full", "free space on")
    assert "LEFT " not in out and "PROCESSED no" in out, out[-3000:]


@needs_namespace
@pytest.mark.parametrize("free_kb", [64] + ([256] if FULL else []))
def test_walk_forward_on_a_nearly_full_disk(tmp_path, trained, free_kb):
    """walk_forward.py with 64 KiB free (its run record fails before any fold) and, under
    ``make faults``, 256 KiB (the folds run, then the report pages do not fit): one line naming
    the file and the fix, exit 2, no temp file, no report without its page."""
    from crash_harness import fresh_home
    home = fresh_home(trained, tmp_path / "home")
    command = [PY, "walk_forward.py", "--profile", "tiny", "--retrain", "252", "--workers", "1"]
    done = _in_namespace(_full(home, size="10m", free_kb=free_kb), _and_leftovers(command, home), home)
    out = _one_line_fault(done, str(home), "disk is full", "free space on")
    assert done.returncode == 2 and "LEFT " not in out, out[-3000:]
    assert not [line for line in out.splitlines() if line.startswith("REPORT ")], out[-3000:]
