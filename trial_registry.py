"""The trial registry: every evaluation run on the history, counted, in a database of its own
beside the audit trail (``logs/audit/trial_registry.db`` under ``TRADING_HOME``,
``TRIAL_REGISTRY_FILE``), so that a new state database (``live_trading.py start-over``, a
deleted ``state/``) does not reset the count.

Every walk-forward (``walk_forward.py``, ``--no-record`` too), every configuration of a sweep
(``walk_forward.py sweep``), every opening of the sealed holdout (``walk_forward.py holdout``)
and every out-of-sample backtest (``backtest.py``) adds one row of ``trials``: its kind, the
configuration fingerprint (``walk_forward_runs.config_fingerprint``), the seed, its settings
(fold sizes, window, threshold, period, ...), whether it was ``--no-record``, the data file's
SHA-256 and path, whether that is the production file, the universe, its Sharpe ratio and
deflated Sharpe, its verdict, and its out-of-sample daily returns (strategy and buy-and-hold)
for the probability of backtest overfitting (``overfitting.pbo_cscv``).

``count_trials`` is the deflated Sharpe ratio's N: every trial on this universe on the
production data, whatever its seed, window, fold settings or ``--no-record``. ``holdout_openings``
records each opening of the sealed holdout (one per configuration: ``holdout_opening`` finds it).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

import config
import constants as C
import state_db
from fileutil import file_sha256

KINDS = ("walk_forward", "sweep", "holdout", "backtest")
SERIES_KINDS = ("walk_forward", "sweep")       # trials whose series share the walk-forward's period (PBO)

SCHEMA = [
    """CREATE TABLE IF NOT EXISTS trials (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        created_at TEXT NOT NULL,
        kind TEXT NOT NULL,
        config_fingerprint TEXT NOT NULL,
        seed INTEGER,
        settings TEXT NOT NULL,
        recorded INTEGER NOT NULL,
        data_sha256 TEXT,
        data_path TEXT,
        production INTEGER NOT NULL,
        universe TEXT NOT NULL,
        start_date TEXT,
        end_date TEXT,
        sharpe REAL,
        dsr REAL,
        passed INTEGER,
        returns TEXT
    )""",
    "CREATE INDEX IF NOT EXISTS trials_universe ON trials(universe, production, id)",
    """CREATE TABLE IF NOT EXISTS holdout_openings (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        created_at TEXT NOT NULL,
        config_fingerprint TEXT NOT NULL,
        universe TEXT NOT NULL,
        data_sha256 TEXT,
        holdout_start TEXT,
        holdout_end TEXT,
        trial_id INTEGER NOT NULL,
        passed INTEGER NOT NULL,
        result TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS holdout_openings_key ON holdout_openings(config_fingerprint, universe, id)",
]


def registry_path() -> Path:
    """``TRIAL_REGISTRY_FILE`` under TRADING_HOME: beside the audit trail, not in ``state/``."""
    return config.path(C.TRIAL_REGISTRY_FILE)


def opened(conn=None):
    """``with opened(conn) as c:`` the caller's registry connection, else one opened on
    ``registry_path()`` (its folder created) and closed at the end; the tables ensured."""
    if conn is None:
        registry_path().parent.mkdir(parents=True, exist_ok=True)
    return state_db.opened(conn, SCHEMA, path=registry_path())


def universe_key(symbols) -> str:
    return json.dumps(sorted(str(s) for s in symbols))


def is_production(data_path, data_sha256: str | None = None) -> bool:
    """Was this data the production file: its path, or the very bytes it holds now."""
    production = config.path(C.PROCESSED_DATA_FILE)
    if data_path and Path(data_path).resolve() == production.resolve():
        return True
    if data_sha256 and production.exists():
        try:
            return file_sha256(production) == data_sha256
        except OSError:
            return False
    return False


def daily_series(equity, benchmark) -> dict:
    """{"dates", "strategy", "benchmark"}: the daily simple returns of two equity curves (pandas
    Series on the same session index), the first session dropped."""
    dates = [str(d.date()) if hasattr(d, "date") else str(d) for d in list(equity.index)[1:]]
    e, b = np.asarray(equity, np.float64), np.asarray(benchmark, np.float64)
    return {"dates": dates, "strategy": (e[1:] / e[:-1] - 1.0).tolist(), "benchmark": (b[1:] / b[:-1] - 1.0).tolist()}


def record_trial(kind: str, *, config_fingerprint: str, universe, seed: int | None, settings: dict,
                 recorded: bool, data_sha256: str | None, data_path, start=None, end=None,
                 sharpe: float | None = None, dsr: float | None = None, passed: bool | None = None,
                 series: dict | None = None, conn=None) -> int:
    """One trial in the registry; returns its id."""
    if kind not in KINDS:
        raise ValueError(f"unknown trial kind {kind!r}: one of {', '.join(KINDS)}")
    clean = None if series is None else json.dumps(
        {k: [None if isinstance(x, float) and not np.isfinite(x) else x for x in v] for k, v in series.items()})
    with opened(conn) as c, state_db.transaction(c):
        cur = c.execute(
            "INSERT INTO trials(created_at, kind, config_fingerprint, seed, settings, recorded, data_sha256, "
            "data_path, production, universe, start_date, end_date, sharpe, dsr, passed, returns) "
            "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (state_db.utcnow(), kind, config_fingerprint, None if seed is None else int(seed),
             json.dumps(settings, sort_keys=True, default=str), int(bool(recorded)), data_sha256,
             None if data_path is None else str(data_path), int(is_production(data_path, data_sha256)),
             universe_key(universe), None if start is None else str(start), None if end is None else str(end),
             _num(sharpe), _num(dsr), None if passed is None else int(bool(passed)), clean))
        return int(cur.lastrowid)


def _num(x):
    return float(x) if x is not None and np.isfinite(x) else None


def trials(universe, production_only: bool = True, kinds=None, conn=None) -> list[dict]:
    """The trials on this universe (oldest first), the JSON fields parsed."""
    sql = "SELECT * FROM trials WHERE universe = ?" + (" AND production = 1" if production_only else "")
    with opened(conn) as c:
        rows = [state_db.row_dict(r, ("settings", "returns"), ("recorded", "production"))
                for r in c.execute(sql + " ORDER BY id", (universe_key(universe),)).fetchall()]
    return [r for r in rows if r is not None and (kinds is None or r["kind"] in kinds)]


def trial(trial_id: int, conn=None) -> dict | None:
    """One trial by id, the JSON fields parsed; None when it is not in this registry."""
    with opened(conn) as c:
        row = c.execute("SELECT * FROM trials WHERE id = ?", (int(trial_id),)).fetchone()
    return state_db.row_dict(row, ("settings", "returns"), ("recorded", "production"))


def count_trials(universe, conn=None) -> int:
    """Every trial recorded on this universe on the production data (distinct runs: seeds, fold
    settings, windows, ``--no-record`` runs, sweeps, holdout openings and backtests all count)."""
    with opened(conn) as c:
        row = c.execute("SELECT COUNT(*) AS n FROM trials WHERE universe = ? AND production = 1",
                        (universe_key(universe),)).fetchone()
    return int(row["n"])


def excess_matrix(rows: list[dict], reference: dict | None = None, min_coverage: float = 0.5):
    """(dates, matrix T x N of daily excess returns over buy-and-hold, the rows used) for the
    PBO: the sessions of ``reference`` (a series dict; default the newest row's), each trial on
    them (a session it has no return for counts 0: no excess); trials covering less than
    ``min_coverage`` of those sessions are left out."""
    with_series = [r for r in rows if r.get("returns") and r["returns"].get("dates")]
    if not with_series:
        return [], np.zeros((0, 0)), []
    ref = reference or with_series[-1]["returns"]
    dates = list(ref["dates"])
    index = {d: i for i, d in enumerate(dates)}
    columns, used = [], []
    for r in with_series:
        s = r["returns"]
        col = np.zeros(len(dates))
        hit = 0
        for d, a, b in zip(s["dates"], s["strategy"], s["benchmark"]):
            i = index.get(d)
            if i is not None and a is not None and b is not None:
                col[i] = a - b
                hit += 1
        if dates and hit >= min_coverage * len(dates):
            columns.append(col)
            used.append(r)
    matrix = np.column_stack(columns) if columns else np.zeros((len(dates), 0))
    return dates, matrix, used


# =========================================================================== the sealed holdout

def holdout_opening(config_fingerprint: str, universe, conn=None) -> dict | None:
    """The first opening of the holdout for this configuration and universe, or None."""
    with opened(conn) as c:
        row = c.execute("SELECT * FROM holdout_openings WHERE config_fingerprint = ? AND universe = ? "
                        "ORDER BY id LIMIT 1", (config_fingerprint, universe_key(universe))).fetchone()
    return state_db.row_dict(row, ("result",), ("passed",))


def holdout_openings(universe, conn=None) -> list[dict]:
    """Every opening of the holdout on this universe, oldest first."""
    with opened(conn) as c:
        rows = c.execute("SELECT * FROM holdout_openings WHERE universe = ? ORDER BY id",
                         (universe_key(universe),)).fetchall()
    return [state_db.row_dict(r, ("result",), ("passed",)) for r in rows]


def record_holdout_opening(config_fingerprint: str, universe, data_sha256: str | None, start, end,
                           trial_id: int, passed: bool, result: dict, conn=None) -> int:
    with opened(conn) as c, state_db.transaction(c):
        cur = c.execute(
            "INSERT INTO holdout_openings(created_at, config_fingerprint, universe, data_sha256, holdout_start, "
            "holdout_end, trial_id, passed, result) VALUES (?,?,?,?,?,?,?,?,?)",
            (state_db.utcnow(), config_fingerprint, universe_key(universe), data_sha256, str(start), str(end),
             int(trial_id), int(bool(passed)), json.dumps(result, default=str)))
        return int(cur.lastrowid)
