"""The embedded SQLite database that holds state which must survive a crash.

One file (``state/trading_state.db`` under ``TRADING_HOME``), WAL mode, a busy timeout so that
overlapping cron runs wait instead of failing. Each module owns its tables: it declares their
``CREATE TABLE IF NOT EXISTS`` statements and calls ``ensure_schema`` before first use.
Writes go through ``transaction()`` (``BEGIN IMMEDIATE``): all of it or none of it.
"""
import json
import logging
import sqlite3
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import config
import constants as C
from errors import storage_error

log = logging.getLogger("state")

_KV_SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL,
    updated_at TEXT NOT NULL
)"""


def db_path(replay: bool = False):
    """The state database's path (``replay``: the throwaway replay database), its folder created."""
    target = config.state_db_file(replay)
    try:
        return config.ensure_parent(target)
    except OSError as exc:
        raise (storage_error(exc, target.parent, "create") or exc) from None


def _translated(exc: BaseException, path):
    """A read-only or full disk as a one-line StorageError naming the database; else ``exc``."""
    return storage_error(exc, path or config.path(C.STATE_DB_FILE)) or exc


# --------------------------------------------------------------------------- storage faults
# Every connection this module opens is a ``FaultTranslatingConnection``: a storage fault met by
# any statement on it, wherever the caller is (a module's ensure_schema, a read, a COMMIT), is
# raised as ``errors.DatabaseStorageError`` (a StorageError that is also a
# sqlite3.OperationalError) naming the database file and the fix: a full disk, a read-only file
# system, a database locked by another process or one that is damaged. Anything else (a
# constraint, a syntax error) is raised unchanged.
class _FaultTranslatingCursor(sqlite3.Cursor):
    def _fault(self, exc: sqlite3.Error) -> BaseException:
        if getattr(self.connection, "read_only", False) and "readonly database" in str(exc):
            return exc              # a write on a read-only connection (connect_readonly): the caller's case
        return _translated(exc, getattr(self.connection, "database_file", None))

    def execute(self, sql, parameters=(), /):
        try:
            return super().execute(sql, parameters)
        except sqlite3.Error as exc:
            raise self._fault(exc) from None

    def executemany(self, sql, seq_of_parameters, /):
        try:
            return super().executemany(sql, seq_of_parameters)
        except sqlite3.Error as exc:
            raise self._fault(exc) from None

    def executescript(self, sql_script, /):
        try:
            return super().executescript(sql_script)
        except sqlite3.Error as exc:
            raise self._fault(exc) from None

    def fetchone(self):
        try:
            return super().fetchone()
        except sqlite3.Error as exc:
            raise self._fault(exc) from None

    def fetchmany(self, size=None):
        try:
            return super().fetchmany(self.arraysize if size is None else size)
        except sqlite3.Error as exc:
            raise self._fault(exc) from None

    def fetchall(self):
        try:
            return super().fetchall()
        except sqlite3.Error as exc:
            raise self._fault(exc) from None

    def __next__(self):
        try:
            return super().__next__()
        except sqlite3.Error as exc:
            raise self._fault(exc) from None


class FaultTranslatingConnection(sqlite3.Connection):
    """A sqlite3 connection whose storage faults are one-line errors naming its file (pass it as
    ``sqlite3.connect(..., factory=FaultTranslatingConnection)``)."""

    def __init__(self, database, *args, **kwargs):
        super().__init__(database, *args, **kwargs)
        name = str(database)
        self.read_only = name.startswith("file:") and "mode=ro" in name
        if name.startswith("file:"):                      # a URI: file:<path>?mode=ro
            name = name[len("file:"):].split("?", 1)[0]
        self.database_file = name

    def cursor(self, factory=_FaultTranslatingCursor):
        return super().cursor(factory)

    def execute(self, sql, parameters=(), /):
        return self.cursor().execute(sql, parameters)

    def executemany(self, sql, seq_of_parameters, /):
        return self.cursor().executemany(sql, seq_of_parameters)

    def executescript(self, sql_script, /):
        return self.cursor().executescript(sql_script)

    def commit(self):
        try:
            super().commit()
        except sqlite3.Error as exc:
            raise _translated(exc, self.database_file) from None


def connect_readonly(path=None) -> sqlite3.Connection | None:
    """A read-only connection to an existing database (default: the real state DB, never the
    replay one); None when the file does not exist yet. Creates nothing, writes nothing."""
    path = path or config.path(C.STATE_DB_FILE)
    if not path.exists():
        return None
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30.0, isolation_level=None,
                               factory=FaultTranslatingConnection)
    except sqlite3.Error as exc:
        raise (storage_error(exc, path, "read") or exc) from None
    conn.row_factory = sqlite3.Row
    return conn


REPLAY_AS_OF_KEY = "replay_as_of"
CREATED_KEY = "database_created"        # when this database file was created (kill_switch.require_continuity)


def prepare_replay(as_of) -> Path:
    """The throwaway replay database for a replay of session ``as_of``, ready; returns its path
    (the replay's caller connects to it: ``connect(prepare_replay(as_of))``). The replay account
    carries over between replays that move forward in time; a replay of an earlier session than
    the last one starts a fresh account (the file is deleted)."""
    day = str(as_of)[:10]
    path = db_path(replay=True)
    if path.exists():
        conn = connect(path)
        last = kv_get(conn, REPLAY_AS_OF_KEY)
        conn.close()
        if last and last > day:
            log.warning("Replay of %s is earlier than the replay account's last session %s: the replay "
                        "account starts over (its positions, cash and history from earlier replays are "
                        "discarded; the real paper account is untouched)", day, last)
            for suffix in ("", "-wal", "-shm"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)
    conn = connect(path)
    with transaction(conn):
        kv_set(conn, REPLAY_AS_OF_KEY, day)
    conn.close()
    return path


def move_aside(why: str) -> Path | None:
    """Move the real state database (and its WAL files) aside to
    ``trading_state.db.<why>-<UTC time>``, never deleting it; returns the new path, or None when
    there was none. The caller makes sure nothing else uses it (the cycle lock)."""
    path = config.state_db_file()
    if not path.exists():
        return None
    conn = sqlite3.connect(str(path), timeout=30.0, isolation_level=None)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")     # every committed write into the main file
    finally:
        conn.close()
    target = path.with_name(f"{path.name}.{why}-{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}")
    for suffix in ("-wal", "-shm", ""):                     # the main file last: its name is the database
        source = Path(f"{path}{suffix}")
        if source.exists():
            source.rename(Path(f"{target}{suffix}"))
    return target


def is_replay(conn: sqlite3.Connection | None) -> bool:
    """Is ``conn`` a connection to the replay database? What a replay runs on is the value that
    says it is a replay: a component given the replay's connection knows it (its alerts are
    drills and are not sent)."""
    if conn is None:
        return False
    name = _database_file(conn)
    return bool(name) and Path(name).resolve() == config.state_db_file(replay=True).resolve()


def connect(path=None) -> sqlite3.Connection:
    """A new connection (one per process or thread); autocommit mode, explicit transactions.
    A database that cannot be opened for writing (read-only file system, full disk, no
    permission) raises ``errors.StorageError`` naming it and the fix."""
    target = str(path or db_path())
    conn = None
    try:
        conn = sqlite3.connect(target, timeout=30.0, isolation_level=None, factory=FaultTranslatingConnection)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA busy_timeout=30000")
        conn.execute("PRAGMA foreign_keys=ON")
        new = not conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'kv'").fetchone()
        ensure_schema(conn, [_KV_SCHEMA])
        if new:                 # a new (or emptied) database: stamped, so a cycle can tell it is new
            _stamp_created(conn)
    except (sqlite3.OperationalError, OSError) as exc:
        if conn is not None:
            conn.close()
        raise _translated(exc, target) from None
    return conn


def _stamp_created(conn: sqlite3.Connection) -> None:
    with transaction(conn):
        if kv_get(conn, CREATED_KEY) is None:
            kv_set(conn, CREATED_KEY, datetime.now(timezone.utc).isoformat(timespec="microseconds"))


def created_at(conn: sqlite3.Connection) -> datetime | None:
    """When the database was created (aware UTC); None for one created before the stamp existed."""
    value = kv_get(conn, CREATED_KEY)
    return datetime.fromisoformat(value) if value else None


def ensure_schema(conn: sqlite3.Connection, statements) -> None:
    for statement in statements:
        conn.execute(statement)


@contextmanager
def opened(conn: sqlite3.Connection | None = None, schema=(), path=None):
    """``with opened(conn, schema) as c:`` the caller's connection ``conn`` as it is, else a new
    one (``connect(path)``) that is closed when the block ends; ``schema`` (CREATE statements)
    ensured either way. The one rule for "use the caller's connection or open and close one"."""
    c = conn if conn is not None else connect(path)
    try:
        ensure_schema(c, schema)
        yield c
    finally:
        if conn is None:
            c.close()


def _database_file(conn: sqlite3.Connection) -> str | None:
    try:
        row = conn.execute("PRAGMA database_list").fetchone()
        return row[2] or None
    except sqlite3.Error:
        return None


def _rollback(conn: sqlite3.Connection) -> None:
    """Roll back whatever is open; a connection with no transaction open is left alone."""
    if conn.in_transaction:
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass        # SQLite rolls back by itself when the statement failed that way


@contextmanager
def transaction(conn: sqlite3.Connection):
    """``with transaction(conn):`` runs the block in one write transaction: all of it or none.
    A failing ``COMMIT`` (full disk, read-only file system, I/O error) is rolled back, so the
    connection never stays inside a half-finished transaction; storage faults are raised as
    ``errors.StorageError`` naming the database and the fix."""
    try:
        conn.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError as exc:
        raise _translated(exc, _database_file(conn)) from None
    try:
        yield conn
    except BaseException as exc:
        _rollback(conn)
        if isinstance(exc, (sqlite3.OperationalError, OSError)):
            translated = _translated(exc, _database_file(conn))
            if translated is not exc:
                raise translated from None
        raise
    try:
        conn.execute("COMMIT")
    except BaseException as exc:
        _rollback(conn)
        if isinstance(exc, (sqlite3.OperationalError, OSError)):
            raise _translated(exc, _database_file(conn)) from None
        raise


def row_dict(row, json_fields=(), bool_fields=()) -> dict | None:
    """A fetched row as a dict: the ``json_fields`` parsed (left as text when not JSON), the
    ``bool_fields`` (0/1 columns) as bools; None stays None."""
    if row is None:
        return None
    out = dict(row)
    for key in json_fields:
        try:
            out[key] = json.loads(out[key])
        except (TypeError, ValueError):
            pass
    for key in bool_fields:
        out[key] = bool(out[key])
    return out


def utcnow() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def kv_get(conn: sqlite3.Connection, key: str, default=None):
    row = conn.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
    return json.loads(row["value"]) if row else default


def kv_set(conn: sqlite3.Connection, key: str, value) -> None:
    """Set a key (call inside ``transaction`` when it must go with other writes)."""
    conn.execute(
        "INSERT INTO kv(key, value, updated_at) VALUES(?, ?, ?) "
        "ON CONFLICT(key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
        (key, json.dumps(value), utcnow()))


def kv_delete(conn: sqlite3.Connection, key: str) -> None:
    conn.execute("DELETE FROM kv WHERE key = ?", (key,))
