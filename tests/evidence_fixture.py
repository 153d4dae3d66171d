"""Small production data files and recorded runs bound to them (evidence_binding), for the gate's
tests: no training, no engine. ``write_processed`` writes a valid processed file (sample prices
through ``data_collection.build_features``); ``record_walk_forward`` / ``record_backtest`` record
a run whose evidence binding is computed from a data file exactly as walk_forward.py and
backtest.py compute it."""
from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import constants as C  # noqa: E402
import data_collection  # noqa: E402
import evidence_binding  # noqa: E402
import golive  # noqa: E402
import market_calendar  # noqa: E402
import sample_data  # noqa: E402
import walk_forward_runs as runs  # noqa: E402

END = "2026-11-20"          # the last session of the data (the fixed clock's Friday before)


def write_processed(path, symbols, sessions: int = 80, seed: int = 0, end: str = END) -> Path:
    """A processed file of ``symbols`` whose last session is ``end``; another ``seed`` gives other
    prices (a "synthetic file" put at the production path)."""
    dates = market_calendar.sessions("2025-06-01", end)[-sessions:]
    raw = pd.concat([sample_data.simulate_symbol(s, dates, seed=seed) for s in symbols], ignore_index=True)
    features = data_collection.build_features(raw)
    path = Path(path)
    features.to_csv(path, index=False, date_format="%Y-%m-%d")
    return path


def walk_forward_report(meta: dict, universe, data_path, passed: bool = True, symbols=None) -> dict:
    """A walk-forward report as walk_forward.run records it, its evidence bound to ``data_path``
    (NOT gate evidence unless it is the production file under TRADING_HOME)."""
    features = data_collection.load_processed(data_path)
    wanted = sorted(symbols or universe)
    everything = features[features["Symbol"].isin(wanted)]
    # as walk_forward.run: the folds stop before the sealed holdout (HOLDOUT_SESSIONS)
    _, last = evidence_binding.fixed_window("walk_forward", pd.DatetimeIndex(sorted(everything["Date"].unique())))
    features = everything[everything["Date"] <= last]
    evidence = evidence_binding.binding("walk_forward", everything, data_path, wanted, sorted(universe),
                                        features["Date"].min(), features["Date"].max())
    cfg = runs.model_configuration_from_metadata(meta)
    conditions = [{"name": "skill_vs_no_change", "passed": passed, "statistic": "DM p-value",
                   "value": 0.01 if passed else 0.31, "rule": "<", "threshold": 0.05, "text": "..."}]
    return {"inputs": {"config_fingerprint": runs.config_fingerprint(cfg), "data_sha256": evidence["data_file_sha256"],
                       "data_path": str(data_path), "universe": wanted, "costs": {}, "model_config": cfg, "seed": 42},
            "start": str(features["Date"].min().date()), "end": str(features["Date"].max().date()), "workers": 1,
            "passed": passed, "gate_eligible": evidence["gate_evidence"], "evidence": evidence,
            "overall": {"conditions": conditions, "passed": passed, "n_trials": 1,
                        "dm_vs_no_change": {"skill": 0.01, "p_value": 0.01 if passed else 0.31},
                        "dm_vs_training_mean": {"skill": 0.01, "p_value": 0.01}, "directional_accuracy": 0.55,
                        "strategy": {"total_return": 0.2}, "benchmark": {"total_return": 0.1},
                        "sharpe_strategy": 1.2, "sharpe_benchmark": 0.8, "psr_excess": 0.99,
                        "dsr_excess": 0.97, "predictions": 1000},
            "folds": []}


def record_walk_forward(meta: dict, universe, data_path, conn=None, **kw) -> int:
    return runs.record_run(walk_forward_report(meta, universe, data_path, **kw), conn=conn)


def record_backtest(checksum: str, meta: dict, universe, data_path, conn=None, start=None, end=None,
                    passed: bool = True) -> int:
    """A passing out-of-sample backtest of the model on ``data_path`` bound as backtest.py binds it
    (``start``/``end``: as if given with --start/--end)."""
    features = data_collection.load_processed(data_path)
    features = features[features["Symbol"].isin(universe)]
    sessions = pd.DatetimeIndex(sorted(features["Date"].unique()))
    rule_start, rule_end = evidence_binding.fixed_window("backtest", sessions, meta)
    first = pd.Timestamp(start) if start else rule_start
    last = pd.Timestamp(end) if end else rule_end
    evidence = evidence_binding.binding("backtest", features, data_path, sorted(universe), sorted(universe),
                                        first, last, meta)
    return golive.record_run({"model_checksum": checksum, "in_sample": False, "passed": passed,
                              "gate_eligible": evidence["gate_evidence"], "start": str(first.date()),
                              "end": str(last.date()), "parameters": {"evidence": evidence},
                              "metrics": {"total_return": 0.1, "sharpe": 1.0}}, "/r.json", conn)


def meta_with_split(meta: dict, data_path, oos_sessions: int = 30) -> dict:
    """``meta`` with a training split whose out-of-sample part is the last ``oos_sessions``."""
    features = data_collection.load_processed(data_path)
    sessions = pd.DatetimeIndex(sorted(features["Date"].unique()))
    return {**meta, "splits": {"validation_end": str(sessions[-oos_sessions - 2].date()),
                               "test_start": str(sessions[-oos_sessions].date())}}


__all__ = ["C", "END", "write_processed", "record_walk_forward", "record_backtest", "meta_with_split"]
