"""Evidence bound to what will trade: which backtest and walk-forward runs may count for the
go-live gate, and why one no longer does.

Both legs of the measured evidence (``./run_backtest.sh`` and ``./run_backtest.sh
--walk-forward``) record a *binding*: the production data they were measured on, the universe
and their evaluation window. The gate (``golive.gate_status``) counts a run only when all three
still match the production ones now, and otherwise says which changed (``mismatches``):

* **data**: ``data_sha256`` is the SHA-256 of the universe's price rows (Date, Symbol, OHLCV)
  of the production file (``processed_stock_data.csv`` under TRADING_HOME) up to the window's
  last session (``window_sha256``). The daily update appends sessions without changing it; a
  replaced file (a synthetic one put at the production path and taken away again) or rewritten
  history does: "data changed". The whole file's hash is recorded beside it for the audit.
* **universe**: ``selected_stocks.txt`` now, against the run's symbols: "universe changed".
* **window**: one rule per leg, nothing to choose (``fixed_window``): the backtest replays
  everything after the model's training cut (its first out-of-sample session,
  ``out_of_sample_start``) up to the data's last session; the walk-forward evaluates the whole
  history up to the data's last session. A run counts while its window starts where the rule
  starts today and ends no more than ``GOLIVE_WALK_FORWARD_MAX_AGE_DAYS`` calendar days before
  the production data's last session (the weekly runs keep it fresh): else "window changed".

A run made with ``--data`` other than the production file, ``--symbols`` (a subset), or
``--start``/``--end`` other than the fixed window is still reported and recorded, marked NOT
gate evidence with the reason (``run_exceptions``), and the gate never counts it.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

import config
import constants as C
import data_collection
from fileutil import file_sha256

KINDS = ("backtest", "walk_forward")
_HASH_COLUMNS = ["Date", "Symbol", "Open", "High", "Low", "Close", "Volume"]


# =========================================================================== the model's split

def _meta_date(meta: dict, *names):
    """The first date found under any of ``names`` in the metadata (nested dicts searched)."""
    stack = [meta]
    while stack:
        cur = stack.pop(0)
        if not isinstance(cur, dict):
            continue
        for name in names:
            if name in cur and cur[name]:
                try:
                    return pd.Timestamp(str(cur[name])[:10])
                except (ValueError, TypeError):
                    pass
        stack.extend(v for v in cur.values() if isinstance(v, dict))
    return None


def in_sample_end(metadata: dict) -> pd.Timestamp | None:
    """The last date of the data the model was trained or validated on (``splits.validation_end``
    in the metadata train_model.py writes)."""
    return _meta_date(metadata or {}, "validation_end", "train_end")


def out_of_sample_start(metadata: dict, dates) -> pd.Timestamp | None:
    """The first session of the model's held-out test period (``splits.test_start``) or, for
    metadata without it, the second session after ``validation_end`` (the last validation sample
    was scored against the next session's close). Decisions from that close on use nothing the
    model was fitted or selected on. None when the metadata names no split."""
    dates = pd.DatetimeIndex(dates)
    test_start = _meta_date(metadata or {}, "test_start")
    if test_start is not None:
        after = dates[dates >= test_start]
        return after.min() if len(after) else test_start
    end = in_sample_end(metadata)
    if end is None:
        return None
    after = dates[dates > end]
    return after[1] if len(after) > 1 else end + pd.Timedelta(days=3)


# =========================================================================== hashes and windows

def production_path() -> Path:
    return config.path(C.PROCESSED_DATA_FILE)


def window_sha256(features: pd.DataFrame, universe, end) -> str:
    """SHA-256 of the universe's price rows (Date, Symbol, OHLCV; sorted, 10 significant
    digits) up to ``end`` inclusive: what a run measured, unchanged by sessions appended later."""
    f = features[features["Symbol"].astype(str).isin(set(universe)) & (features["Date"] <= pd.Timestamp(end))]
    f = f[[c for c in _HASH_COLUMNS if c in f.columns]].sort_values(["Symbol", "Date"], kind="mergesort")
    text = f.to_csv(index=False, float_format="%.10g", date_format="%Y-%m-%d")
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _sessions(features: pd.DataFrame, universe) -> pd.DatetimeIndex:
    f = features[features["Symbol"].astype(str).isin(set(universe))]
    return pd.DatetimeIndex(np.unique(f["Date"].to_numpy()))


def fixed_window(kind: str, sessions, metadata: dict | None = None) -> tuple[pd.Timestamp | None, pd.Timestamp | None]:
    """(first, last) session of the leg's evaluation window by its one rule (module docstring):
    ``backtest``: the model's first out-of-sample session .. the last session; ``walk_forward``:
    the first .. the last session before the sealed holdout (the newest HOLDOUT_SESSIONS). (None, None) without sessions; a None start for a backtest
    whose model names no split."""
    sessions = pd.DatetimeIndex(sessions)
    if kind not in KINDS:
        raise ValueError(f"unknown evidence kind {kind!r}")
    if not len(sessions):
        return None, None
    if kind == "walk_forward":        # up to the sealed holdout (HOLDOUT_SESSIONS, walk_forward.split_holdout)
        sealed = max(int(C.HOLDOUT_SESSIONS), 0)
        if len(sessions) <= sealed:
            return None, None
        return sessions[0], sessions[-sealed - 1]
    return out_of_sample_start(metadata or {}, sessions), sessions[-1]


def same_file(a, b) -> bool:
    try:
        return Path(a).resolve() == Path(b).resolve()
    except (OSError, TypeError, ValueError):
        return False


def run_exceptions(kind: str, data_path, symbols, universe, start, end, rule: tuple) -> list[str]:
    """Why a run is NOT gate evidence (empty: it may count): data other than the production
    file, a subset (or another set) of the universe, a window other than the fixed one."""
    why = []
    if data_path is not None and not same_file(data_path, production_path()):
        why.append(f"--data {data_path} is not the production file {production_path()}")
    if sorted(symbols) != sorted(universe):
        why.append(f"--symbols: {len(symbols)} symbols, not the universe's {len(universe)} ({C.UNIVERSE_FILE})")
    rule_start, rule_end = rule
    if kind == "backtest" and rule_start is not None and pd.Timestamp(start) != pd.Timestamp(rule_start):
        why.append(f"--start {pd.Timestamp(start).date()} is not the fixed window's start "
                   f"{pd.Timestamp(rule_start).date()} (the model's first out-of-sample session)")
    if rule_end is not None and pd.Timestamp(end) != pd.Timestamp(rule_end):
        why.append(f"--end {pd.Timestamp(end).date()} is not the fixed window's end {pd.Timestamp(rule_end).date()} "
                   "(the data's last session; for a walk-forward the last before the sealed holdout)")
    return why


def binding(kind: str, features: pd.DataFrame, data_path, symbols, universe, start, end,
            metadata: dict | None = None) -> dict:
    """What a run records (the report's ``evidence``): the data it used (the path, the file's
    SHA-256 and ``window_sha256`` up to ``end``), its symbols, its window, the fixed window's
    rule, and ``gate_evidence`` with the reasons when it is not (``run_exceptions``)."""
    path = Path(data_path) if data_path else production_path()
    rule = fixed_window(kind, _sessions(features, symbols), metadata)
    why = run_exceptions(kind, path, symbols, universe, start, end, rule)
    try:
        file_sha = file_sha256(path)
    except OSError:
        file_sha = None
    return {"kind": kind, "data_path": str(path), "data_file_sha256": file_sha,
            "data_sha256": window_sha256(features, symbols, end), "universe": sorted(symbols),
            "start": str(pd.Timestamp(start).date()), "end": str(pd.Timestamp(end).date()),
            "gate_evidence": not why, "not_evidence": why}


def not_evidence_line(evidence: dict | None) -> str | None:
    """The one line a run prints when it does not count for the gate, else None."""
    if not evidence or evidence.get("gate_evidence"):
        return None
    return "NOT gate evidence: " + "; ".join(evidence.get("not_evidence") or ["see the report"])


# =========================================================================== the production now

@dataclass
class Production:
    """The production data, universe and sessions now (what the gate compares runs with)."""
    path: Path
    universe: list[str]
    file_sha256: str | None = None
    features: pd.DataFrame | None = None
    sessions: pd.DatetimeIndex = field(default_factory=lambda: pd.DatetimeIndex([]))
    error: str | None = None
    _hashes: dict = field(default_factory=dict)

    @classmethod
    def load(cls, universe=None, data_path=None) -> Production:
        path = Path(data_path) if data_path else production_path()
        try:
            symbols = sorted(universe if universe is not None else data_collection.load_universe())
        except data_collection.DataError as exc:
            return cls(path=path, universe=[], error=f"the universe cannot be read ({' '.join(str(exc).split())})")
        out = cls(path=path, universe=symbols)
        try:
            out.file_sha256 = file_sha256(path)
            out.features = data_collection.load_processed(path)
            out.sessions = _sessions(out.features, symbols)
        except (OSError, data_collection.DataError) as exc:
            out.error = f"the production data {path} cannot be read ({' '.join(str(exc).split())[:200]})"
        return out

    def window_sha256(self, end) -> str | None:
        if self.features is None:
            return None
        key = str(pd.Timestamp(end).date())
        if key not in self._hashes:
            self._hashes[key] = window_sha256(self.features, self.universe, end)
        return self._hashes[key]


def mismatches(kind: str, evidence: dict | None, production: Production, metadata: dict | None = None,
               max_lag_days: int | None = None) -> list[str]:
    """Why a recorded run's evidence does not match the production data, universe and window now
    (empty: it counts), each starting with "data changed", "universe changed", "window changed" or
    "not gate evidence". ``max_lag_days`` defaults to GOLIVE_WALK_FORWARD_MAX_AGE_DAYS."""
    max_lag = C.GOLIVE_WALK_FORWARD_MAX_AGE_DAYS if max_lag_days is None else max_lag_days
    if not evidence:
        return ["not gate evidence: recorded without its data hash, universe and window (before evidence "
                "binding): run it again"]
    why = []
    if evidence.get("not_evidence"):
        why.append("not gate evidence: " + "; ".join(evidence["not_evidence"]))
    if production.error:
        return why + [f"data changed: {production.error}"]
    if sorted(evidence.get("universe") or []) != production.universe:
        run_u, now_u = set(evidence.get("universe") or []), set(production.universe)
        diff = ", ".join([f"+{s}" for s in sorted(now_u - run_u)] + [f"-{s}" for s in sorted(run_u - now_u)])
        why.append(f"universe changed: {C.UNIVERSE_FILE} now has {len(now_u)} symbols, the run had "
                   f"{len(run_u)} ({diff})")
    start, end = pd.Timestamp(evidence["start"]), pd.Timestamp(evidence["end"])
    rule_start, rule_end = fixed_window(kind, production.sessions, metadata)
    if rule_end is None:
        return why + ["data changed: the production data has no session for the universe"]
    if kind == "backtest" and rule_start is not None and start != rule_start:
        why.append(f"window changed: the run starts {start.date()}, the fixed window now starts "
                   f"{rule_start.date()} (the model's first out-of-sample session)")
    if kind == "walk_forward" and rule_start is not None and start != rule_start:
        why.append(f"window changed: the run's data starts {start.date()}, the production data now starts "
                   f"{rule_start.date()}")
    lag = (rule_end - end).days
    if end > rule_end or end not in production.sessions:
        why.append(f"window changed: the run ends {end.date()}, not a session of the production data "
                   f"(its fixed window ends {rule_end.date()})")
    elif lag > max_lag:
        why.append(f"window changed: the run ends {end.date()}, the fixed window now ends {rule_end.date()} "
                   f"({lag} days later; at most {max_lag}, GOLIVE_WALK_FORWARD_MAX_AGE_DAYS): run it again")
    elif not why or all(not w.startswith("universe changed") for w in why):
        now = production.window_sha256(end)
        if now != evidence.get("data_sha256"):
            why.append(f"data changed: the production rows up to {end.date()} hash {str(now)[:12]}, the run's "
                       f"{str(evidence.get('data_sha256'))[:12]} (the file was replaced or its history rewritten; "
                       f"run on {evidence.get('data_path')})")
    return why
