"""Walk-forward evaluation with retraining: ``./run_backtest.sh --walk-forward`` (or
``python walk_forward.py``). Exit 0: the evidence passes; 1: it does not; 2: an error.

What it does, in order:

1. Reads the production data (``processed_stock_data.csv``) for the universe
   (``selected_stocks.txt``) and plans folds over its sessions: an expanding training window of
   at least ``WALK_FORWARD_MIN_TRAIN_SESSIONS``; a retrain every
   ``WALK_FORWARD_RETRAIN_SESSIONS`` (a quarter). Fold k trains on every session before its
   first test session and predicts only its own test sessions (up to the next retrain).
2. Each fold is a Ray task running the production training code: ``model_training.build_dataset``
   (scaler fitted on the fold's training period, its last ``VALIDATION_FRACTION`` kept for early
   stopping) and ``model_training.fit_network``, then ``model_management.make_windows`` for the
   fold's test sessions. By default Ray starts in-process with the machine's cores (nothing to
   set up); ``RAY_ADDRESS`` runs the folds on an existing cluster; ``--workers N`` caps the
   parallelism. Every fold runs in a Ray worker with one TensorFlow thread and the same seed,
   so the result is the same whatever the number of workers.
3. The stitched out-of-sample predictions are scored by ``signals.score_predictions`` and
   replayed by the backtest engine with the live rules (``backtest.run_engine`` with
   ``LivePolicy``, next-open fills, the paper broker's costs), beside the equal-weight
   buy-and-hold of the same symbols.
4. ``skill_stats.evaluate_evidence`` gives the verdict (see its docstring for the statistics):
   forecast skill significant against "no change" AND against the training-mean constant, the
   strategy's Sharpe above buy-and-hold's, and the deflated Sharpe of its daily excess over
   buy-and-hold at least ``SKILL_MIN_DSR``, counting every configuration tried on this universe.
5. ``reports/walkforward_<timestamp>.json`` and ``.html`` (and ``reports/latest_walkforward.*``),
   and one row in the state database (``walk_forward_runs``) tied to its inputs: the data file's
   SHA-256, the universe, the period, the costs, the model configuration and its fingerprint,
   the seed and the verdict (``walk_forward_runs.py``, which also says which run counts for
   the go-live gate).
6. Every run, ``--no-record`` too, is a counted trial of the trial registry
   (``trial_registry.py``, beside the audit trail): the deflated Sharpe's N is the number of
   trials on the universe, and the PBO over their daily returns (``overfitting.py``) is a
   condition once ``PBO_MIN_TRIALS`` exist. The newest ``HOLDOUT_SESSIONS`` sessions are sealed
   (``split_holdout``) from every walk-forward and sweep.

Commands: ``walk_forward.py sweep [--grid ...]`` walks a grid of configurations forward (their
folds as Ray tasks), each a trial, and prints them by out-of-sample skill with the DSR and PBO;
``walk_forward.py holdout`` opens the sealed holdout once per configuration for the final check.
"""
from __future__ import annotations

import argparse
import html
import itertools
import json
import logging
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

import config
import data_collection
import evidence_binding
from errors import UsageError, UserFacingError, command_failed, install_excepthook
import constants as C
import corporate_actions
import model_management as mm
import model_training
import overfitting
import sentiment_store
import skill_stats
import state_db
import trial_registry
import tunables
import walk_forward_runs as runs
from backtest_engine import LivePolicy, buy_and_hold, market_from_frames, run_engine
from backtest_metrics import performance_metrics
from backtest_report import make_charts, write_report_files
from fileutil import file_sha256
from logging_setup import setup_logging
from settings import TradingSettings
from signals import build_signals

log = logging.getLogger("walkforward")

EXIT_PASS, EXIT_FAIL, EXIT_ERROR = 0, 1, 2
class WalkForwardError(UserFacingError):
    """A problem that stops the walk-forward; one line naming the fix (exit 2)."""


class WalkForwardUsageError(WalkForwardError, UsageError):
    """An option a person typed that cannot work (a profile, fold sizes): WARNING, not errors.log."""


# =========================================================================== configuration

def profile_params(profile: str = "default") -> dict:
    if profile not in model_training.PROFILES:
        raise WalkForwardUsageError(f"unknown training profile {profile!r}: use one of "
                                    f"{', '.join(sorted(model_training.PROFILES))}")
    return dict(model_training.PROFILES[profile])


# =========================================================================== folds

def plan_folds(sessions, min_train: int | None = None, retrain: int | None = None) -> list[dict]:
    """Fold k: train on sessions[:start_k], predict sessions[start_k:start_k + retrain]
    (defaults: WALK_FORWARD_MIN_TRAIN_SESSIONS and WALK_FORWARD_RETRAIN_SESSIONS)."""
    min_train = C.WALK_FORWARD_MIN_TRAIN_SESSIONS if min_train is None else min_train
    retrain = C.WALK_FORWARD_RETRAIN_SESSIONS if retrain is None else retrain
    sessions = pd.DatetimeIndex(sorted(pd.unique(pd.DatetimeIndex(sessions))))
    if min_train < 2 or retrain < 1:
        raise WalkForwardUsageError("--min-train must be at least 2 sessions and --retrain at least 1")
    if len(sessions) <= min_train:
        raise WalkForwardError(f"only {len(sessions)} sessions of data, and the first fold needs {min_train} to "
                               f"train on plus at least one to predict: add history (HISTORY_START, "
                               f"./run_daily_data_update.sh --force) or lower --min-train")
    folds = []
    for k, start in enumerate(range(min_train, len(sessions), retrain)):
        end = min(start + retrain, len(sessions)) - 1
        folds.append({"fold": k, "train_start": sessions[0], "train_end": sessions[start - 1],
                      "test_start": sessions[start], "test_end": sessions[end],
                      "train_sessions": start, "test_sessions": end - start + 1})
    return folds


def _single_thread_tf():
    """One TensorFlow thread per fold: the same arithmetic in every worker (determinism) and no
    oversubscription when folds run side by side."""
    tf, _ = model_training.import_keras()
    try:
        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:                  # already initialised in this process: settings kept
        pass


def train_fold(features: pd.DataFrame, fold: dict, prof: dict, seed: int, settings_overrides=None) -> dict:
    """Train on the fold's training sessions with the production code; predict its test sessions.
    ``settings_overrides``: the driver's ``tunables.applied_overrides()``, applied first (a Ray
    worker is a process of its own: settings.toml and TRADING_SET_* must reach it too).

    Returns {fold fields, predictions: DataFrame(Date, Symbol, Close, volatility_20, predicted_diff,
    y_pred, y_true, train_mean), train_mean, epochs_run, seconds, ...}."""
    t0 = time.perf_counter()
    if settings_overrides is not None:
        tunables.apply_values(settings_overrides)
    _single_thread_tf()
    window = int(prof["window"])
    columns = data_collection.frame_columns(features)     # + SENTIMENT_COLUMNS when the driver loaded them
    train_part = features[features["Date"] <= fold["train_end"]]
    train_part, skipped = model_training.drop_short_symbols(train_part, window)
    ds = model_training.build_dataset(train_part, window, columns, seed=seed,
                                   validation_fraction=C.VALIDATION_FRACTION, test_fraction=0.0)
    net, history = model_training.fit_network(ds, prof, seed, verbose=0)
    train_y = ds["y"][ds["train_mask"]]
    train_mean = float(np.mean(train_y))
    known = set(train_part["Symbol"].unique())
    upto = features[(features["Date"] <= fold["test_end"]) & features["Symbol"].isin(known)]
    sorted_upto = mm.sort_features(upto)
    y_all = mm.compute_targets(sorted_upto)
    ends = mm.window_ends(sorted_upto["Symbol"].to_numpy(), window)
    in_test = (sorted_upto["Date"].to_numpy()[ends] >= np.datetime64(fold["test_start"]))
    X, rows = mm.make_windows(upto, window, columns, ds["scaler"])
    X, rows = X[in_test], rows[in_test].reset_index(drop=True)
    z = net.predict(X, batch_size=4096, verbose=0)[:, 0] if len(X) else np.zeros(0)
    y_pred = mm.unscale_target(z, ds["scaler"])
    out = rows[["Date", "Symbol", "Close", "volatility_20"]].copy()
    out["predicted_diff"] = mm.y_to_diff(y_pred, out["Close"], out["volatility_20"])
    out["y_pred"] = y_pred
    out["y_true"] = y_all[ends][in_test]
    out["train_mean"] = train_mean
    out["fold"] = fold["fold"]
    val_losses = history.history.get("val_loss", [])
    return {**fold, "predictions": out, "train_mean": train_mean, "skipped_symbols": skipped,
            "epochs_run": len(val_losses), "n_train": int(ds["train_mask"].sum()),
            "n_validation": int(ds["validation_mask"].sum()), "seconds": time.perf_counter() - t0}


# =========================================================================== Ray

def _ray_init(workers: int | None):
    """Connect to RAY_ADDRESS when set, else start a local in-process instance with ``workers``
    (default: all) CPUs. Returns (ray, workers)."""
    import ray                              # heavy optional dependency (~1 s import, 80 MB)
    if ray.is_initialized():
        return ray, workers or int(ray.available_resources().get("CPU", 1))
    env = {"PYTHONPATH": os.pathsep.join([str(config.PROJECT_DIR)] + [p for p in os.environ.get(
           "PYTHONPATH", "").split(os.pathsep) if p]), "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONHASHSEED": "0"}
    address = os.environ.get(C.ENV_RAY_ADDRESS, "").strip()
    if address:
        runtime_env = {"working_dir": str(config.PROJECT_DIR), "env_vars": env,
                       "excludes": [".venv", ".git", "logs", "reports", "state", "models", "data", ".demo_home",
                                    "*.h5", "*.csv", "__pycache__"]}
        ray.init(address=address, runtime_env=runtime_env, log_to_driver=False, logging_level=logging.ERROR)
        total = int(ray.cluster_resources().get("CPU", 1))
        return ray, min(workers, total) if workers else total
    n = workers or os.cpu_count() or 1
    ray.init(num_cpus=n, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR,
             configure_logging=True, runtime_env={"env_vars": env})
    return ray, n


class FoldProgress:
    """A progress bar over folds on stderr (a terminal), else nothing."""

    def __init__(self, total: int, enabled: bool):
        self.total, self.enabled, self.t0 = total, enabled, time.perf_counter()
        self.update(0)

    def update(self, done: int) -> None:
        if not self.enabled:
            return
        width = 30
        fill = int(width * done / max(self.total, 1))
        sys.stderr.write(f"\rwalk-forward [{'#' * fill}{'.' * (width - fill)}] {done}/{self.total} folds "
                         f"{time.perf_counter() - self.t0:6.1f}s")
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")
            sys.stderr.flush()


def run_folds(features: pd.DataFrame, folds: list[dict], prof: dict, seed: int, workers: int | None = None,
              progress: bool = False) -> tuple[list[dict], int]:
    """Every fold as a Ray task (at most ``workers`` at a time, longest first); results in fold order."""
    overrides = tunables.applied_overrides()
    results, n_workers = run_tasks(features, [(f["fold"], f, prof, overrides) for f in folds], seed, workers,
                                   progress)
    return [results[f["fold"]] for f in folds], n_workers


def run_tasks(features: pd.DataFrame, tasks: list[tuple], seed: int, workers: int | None = None,
              progress: bool = False) -> tuple[dict, int]:
    """Train folds as Ray tasks: ``tasks`` are (key, fold, profile, settings overrides); at most
    ``workers`` at a time, the longest (largest training window) first. Returns ({key: the
    fold's result}, workers). Each task is deterministic (one TensorFlow thread, the same seed),
    so the results do not depend on the number of workers."""
    ray, n_workers = _ray_init(workers)
    task = ray.remote(num_cpus=1, max_retries=1)(train_fold)
    data_ref = ray.put(features)
    bar = FoldProgress(len(tasks), progress)
    # the longest folds (largest training windows) first: the last one no longer sets the wall time alone
    pending, results = {}, {}
    queue = sorted(tasks, key=lambda t: (-t[1]["train_sessions"], str(t[0])))
    try:
        while queue or pending:
            while queue and len(pending) < n_workers:
                key, fold, prof, overrides = queue.pop(0)
                pending[task.remote(data_ref, fold, prof, seed, overrides)] = key
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                k = pending.pop(ref)
                results[k] = ray.get(ref)
                log.info("fold %s: trained on %s .. %s, predicted %s .. %s (%.1f s)", k,
                         results[k]["train_start"].date(), results[k]["train_end"].date(),
                         results[k]["test_start"].date(), results[k]["test_end"].date(), results[k]["seconds"])
            bar.update(len(results))
    finally:
        bar.close()
    return results, n_workers


# =========================================================================== evaluation

class _Stitched:
    """The stitched out-of-sample predictions, shaped like a model for signals.build_signals."""

    def __init__(self, predictions: pd.DataFrame):
        self.predictions = predictions

    def predict(self, features, last_only=False):
        return self.predictions[mm.OUTPUT_COLUMNS].copy()


def _period_stats(dates, equity: pd.Series, benchmark: pd.Series, preds: pd.DataFrame, n_trials: int) -> dict:
    ok = np.isfinite(preds["y_true"].to_numpy(float))
    p = preds[ok]
    ev = skill_stats.evaluate_evidence(p["y_true"].to_numpy(float), p["y_pred"].to_numpy(float),
                                       p["train_mean"].to_numpy(float), p["Date"].to_numpy(), equity.to_numpy(),
                                       benchmark.to_numpy(), n_trials=n_trials)
    s, b = performance_metrics(equity), performance_metrics(benchmark)
    ev["strategy"] = {k: s.get(k) for k in ("total_return", "cagr", "sharpe", "max_drawdown", "annual_volatility")}
    ev["benchmark"] = {k: b.get(k) for k in ("total_return", "cagr", "sharpe", "max_drawdown", "annual_volatility")}
    ev["predictions"] = int(len(p))
    return ev


def evaluate(features: pd.DataFrame, fold_results: list[dict], settings: TradingSettings | None = None,
             initial_cash: float | None = None, n_trials: int = 1) -> dict:
    """Stitch the folds' predictions, replay them with the live rules (the limits and costs of
    ``settings``, default ``constants.py``), compute every statistic."""
    initial_cash = C.INITIAL_PAPER_CASH if initial_cash is None else initial_cash
    settings = settings or TradingSettings.from_constants()
    preds = pd.concat([r["predictions"] for r in fold_results], ignore_index=True)
    preds = preds.sort_values(["Date", "Symbol"], kind="mergesort").reset_index(drop=True)
    first, last = fold_results[0]["test_start"], fold_results[-1]["test_end"]
    scored, nonsense = build_signals(_Stitched(preds), features)
    prices = features.loc[(features["Date"] >= first) & (features["Date"] <= last),
                          ["Date", "Symbol", "Open", "Close"] + [c for c in ("AdjFactor",) if c in features.columns]]
    market = market_from_frames(prices, scored, actions=corporate_actions.read_store())
    result = run_engine(market, LivePolicy(settings=settings), settings=settings, initial_cash=initial_cash)
    equity = result.equity_series()
    bench = buy_and_hold(market, initial_cash, settings)
    overall = _period_stats(market.dates, equity, bench, preds, n_trials)
    overall["trades_filled"] = len(result.trades)
    overall["halts"] = result.halts
    per_fold = []
    for r in fold_results:
        span = (equity.index >= r["test_start"]) & (equity.index <= r["test_end"])
        # the fold's curve starts at the close before its first session (its first return counts)
        idx = np.flatnonzero(span)
        lo = max(idx[0] - 1, 0)
        eq_f, b_f = equity.iloc[lo:idx[-1] + 1], bench.iloc[lo:idx[-1] + 1]
        st = _period_stats(None, eq_f, b_f, r["predictions"], n_trials)
        per_fold.append({"fold": r["fold"], "train_start": str(r["train_start"].date()),
                         "train_end": str(r["train_end"].date()), "test_start": str(r["test_start"].date()),
                         "test_end": str(r["test_end"].date()), "train_sessions": r["train_sessions"],
                         "test_sessions": r["test_sessions"], "epochs_run": r["epochs_run"],
                         "seconds": round(r["seconds"], 2), "train_mean": r["train_mean"],
                         "skipped_symbols": r["skipped_symbols"], **runs.slim(st)})
    return {"overall": overall, "folds": per_fold, "equity": equity, "benchmark": bench,
            "nonsensical_prediction_days": nonsense, "symbols": market.symbols,
            "start": str(market.dates[0].date()), "end": str(market.dates[-1].date())}


# =========================================================================== reports

def _pct(x):
    return "n/a" if x is None else f"{x * 100:.2f}%"


def _num(x, spec=".3f"):
    return "n/a" if x is None else format(x, spec)


def _trials_row(trials: dict | None) -> str:
    """The PBO row of the report (overfitting.trial_evidence), with its threshold."""
    if not trials:
        return ""
    when = "applies" if trials["pbo_applies"] else "not yet applied"
    return (f"<tr><td>probability of backtest overfitting (CSCV)</td><td>{_num(trials['pbo'])} over "
            f"{trials['pbo_trials']} trial(s), {trials['pbo_splits']} splits (needs &lt;= {trials['pbo_max']}; "
            f"{when} from {trials['pbo_min_trials']} trials)</td></tr>")


def render_html(report: dict, charts: dict | None = None) -> str:
    e = html.escape
    o = report["overall"]
    verdict = "PASS" if report["passed"] else "FAIL"
    color = "#1a7f37" if report["passed"] else "#cf222e"
    conds = "".join(f"<tr><td>{e(c['name'])}</td><td>{e(c['text'])}</td><td style='color:"
                    f"{'#1a7f37' if c['passed'] else '#cf222e'}'><b>{'PASS' if c['passed'] else 'FAIL'}</b></td></tr>"
                    for c in o["conditions"])
    fold_rows = "".join(
        f"<tr><td>{f['fold']}</td><td>{e(f['train_end'])}</td><td>{e(f['test_start'])} .. {e(f['test_end'])}</td>"
        f"<td>{_num(f['skill_vs_no_change'], '+.4f')}</td><td>{_num(f['dm_p_vs_no_change'])}</td>"
        f"<td>{_num(f['skill_vs_training_mean'], '+.4f')}</td><td>{_num(f['dm_p_vs_training_mean'])}</td>"
        f"<td>{_pct(f['directional_accuracy'])}</td><td>{_pct(f['strategy_return'])}</td>"
        f"<td>{_pct(f['benchmark_return'])}</td><td>{_num(f['strategy_sharpe'], '.2f')}</td>"
        f"<td>{_num(f['benchmark_sharpe'], '.2f')}</td><td>{_num(f['psr_excess'])}</td></tr>"
        for f in report["folds"])
    s, b = o["strategy"], o["benchmark"]
    imgs = "".join(f"<h2>{e(name.title())}</h2><img alt='{e(name)}' src='data:image/png;base64,{png}'>"
                   for name, png in (charts or {}).items() if name in ("equity", "drawdown"))
    inputs = report["inputs"]
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{e(report['title'])}</title>
<style>
body{{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px;color:#222;max-width:1200px}}
table{{border-collapse:collapse;margin:8px 0 18px}} td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}
td:first-child,th:first-child{{text-align:left}} th{{background:#f3f3f3}} img{{max-width:100%}}
.verdict{{font-size:1.4em;color:{color}}} .small{{font-size:0.85em;color:#555}}
</style></head><body>
<h1>{e(report['title'])}</h1>
{f'<p id="data-source" style="background:#fff3cd;border:1px solid #e0b000;padding:4px 8px"><b>'
 f'{e(report["data_source_label"])}</b></p>' if report.get("data_source_label") else ""}
<p class="verdict"><b>Walk-forward verdict: {verdict}</b> {'' if report['gate_eligible'] else
 '(does not count for the go-live gate: a subset of the universe, a shorter period or lower costs)'}</p>
<p>{len(report['folds'])} folds, retrain every {inputs['retrain_sessions']} sessions after at least
{inputs['min_train_sessions']}; {len(inputs['universe'])} symbols; out of sample {e(report['start'])} ..
{e(report['end'])}; profile {e(inputs['profile'])}, seed {inputs['seed']}; {report['workers']} workers,
{report['timings_s']['folds']:.1f} s of folds. Data SHA-256 <code>{e(inputs['data_sha256'])}</code>;
configuration <code>{e(inputs['config_fingerprint'][:16])}</code>.</p>
<h2>Conditions (all must pass)</h2>
<table><tr><th>condition</th><th>measured</th><th>verdict</th></tr>{conds}</table>
<h2>Overall, out of sample</h2>
<table><tr><th></th><th>strategy (live rules)</th><th>equal-weight buy &amp; hold</th></tr>
<tr><td>Total return</td><td>{_pct(s['total_return'])}</td><td>{_pct(b['total_return'])}</td></tr>
<tr><td>CAGR</td><td>{_pct(s['cagr'])}</td><td>{_pct(b['cagr'])}</td></tr>
<tr><td>Sharpe (risk-free {o['risk_free_rate']:.2%})</td><td>{_num(o['sharpe_strategy'], '.2f')}</td>
<td>{_num(o['sharpe_benchmark'], '.2f')}</td></tr>
<tr><td>Max drawdown</td><td>{_pct(s['max_drawdown'])}</td><td>{_pct(b['max_drawdown'])}</td></tr></table>
<table><tr><th>forecast</th><th>value</th></tr>
<tr><td>skill vs no change (DM p)</td><td>{_num(o['dm_vs_no_change']['skill'], '+.4f')}
({_num(o['dm_vs_no_change']['p_value'], '.4f')})</td></tr>
<tr><td>skill vs training-mean constant (DM p)</td><td>{_num(o['dm_vs_training_mean']['skill'], '+.4f')}
({_num(o['dm_vs_training_mean']['p_value'], '.4f')})</td></tr>
<tr><td>directional accuracy</td><td>{_pct(o['directional_accuracy'])}</td></tr>
<tr><td>PSR / DSR of the daily excess over buy &amp; hold</td><td>{_num(o['psr_excess'])} /
{_num(o['dsr_excess'])} ({o['n_trials']} trial(s) on this universe; needs >= {o['min_dsr']})</td></tr>
{_trials_row(o.get('trials'))}</table>
<h2>Per fold</h2>
<table><tr><th>fold</th><th>trained to</th><th>predicts</th><th>skill vs 0</th><th>DM p</th>
<th>skill vs mean</th><th>DM p</th><th>dir. acc.</th><th>strategy</th><th>buy &amp; hold</th>
<th>Sharpe</th><th>B&amp;H Sharpe</th><th>PSR excess</th></tr>{fold_rows}</table>
{imgs}
<p class="small">{e(skill_stats.__doc__.strip().splitlines()[0])} Statistics: see skill_stats.py and
docs/MODEL.md. Full data: {e(report.get('json_name', ''))}</p>
</body></html>
"""


def write_reports(report: dict, charts: dict | None = None, reports_dir=None) -> tuple[Path, Path]:
    return write_report_files(
        "walkforward", report,
        lambda r: json.dumps(runs.jsonable(r), indent=1, allow_nan=False, default=str),
        lambda r: render_html(r, charts), reports_dir)


# =========================================================================== the whole run

def load_inputs(data_path=None, symbols=None) -> tuple[Path, pd.DataFrame, list[str], list[str]]:
    """(data path, features of the chosen symbols, the universe, the chosen symbols)."""
    path = Path(data_path) if data_path else config.path(C.PROCESSED_DATA_FILE)
    try:
        features = data_collection.load_processed(path)
        universe = data_collection.load_universe()
    except data_collection.DataError as exc:
        raise WalkForwardError(" ".join(str(exc).split())) from None
    wanted = sorted({s.strip().upper() for s in symbols if s.strip()}) if symbols else sorted(universe)
    missing = [s for s in wanted if s not in set(features["Symbol"].astype(str))]
    if missing:
        raise WalkForwardError(f"no data for {', '.join(missing)} in {path.name}: run ./run_daily_data_update.sh "
                               f"(or leave them out with --symbols)")
    return path, features[features["Symbol"].isin(wanted)].reset_index(drop=True), sorted(universe), wanted


def split_holdout(features: pd.DataFrame, sessions: int | None = None) -> tuple[pd.DataFrame, pd.DatetimeIndex]:
    """(the features without the sealed holdout, the holdout's sessions): the newest
    ``HOLDOUT_SESSIONS`` sessions are kept out of every walk-forward and sweep; only
    ``walk_forward.py holdout`` opens them, once per configuration."""
    n = C.HOLDOUT_SESSIONS if sessions is None else int(sessions)
    dates = pd.DatetimeIndex(sorted(pd.unique(pd.DatetimeIndex(features["Date"]))))
    if n <= 0:
        return features, dates[:0]
    if len(dates) <= n:
        raise WalkForwardError(f"only {len(dates)} sessions of data and the sealed holdout takes the newest {n} "
                               f"(HOLDOUT_SESSIONS): add history (HISTORY_START, ./run_daily_data_update.sh --force)")
    sealed = dates[-n:]
    return features[features["Date"] < sealed[0]].reset_index(drop=True), sealed


def _holdout_inputs(sealed) -> dict:
    return {"sessions": int(len(sealed)), "start": str(sealed[0].date()) if len(sealed) else None,
            "end": str(sealed[-1].date()) if len(sealed) else None}


def _record_trial(kind: str, report: dict, ev: dict, settings: dict, record: bool) -> int:
    """The run as one trial of the registry (``--no-record`` runs too)."""
    inputs = report["inputs"]
    return trial_registry.record_trial(
        kind, config_fingerprint=inputs["config_fingerprint"], universe=inputs["universe"], seed=inputs["seed"],
        settings=settings, recorded=record, data_sha256=inputs["data_sha256"], data_path=inputs["data_path"],
        start=report["start"], end=report["end"], sharpe=ev["overall"].get("sharpe_strategy"),
        dsr=ev["overall"].get("dsr_excess"), passed=report["passed"],
        series=trial_registry.daily_series(ev["equity"], ev["benchmark"]))


def _judge_trials(ev: dict, universe) -> dict:
    """The trial count, DSR and PBO of this (not yet recorded) run among the universe's trials,
    and the PBO condition added to the verdict (``overfitting.trial_evidence``)."""
    series = trial_registry.daily_series(ev["equity"], ev["benchmark"])
    trials = overfitting.trial_evidence(universe, series, pending=True)
    o = ev["overall"]
    o["trials"] = trials
    o["conditions"].append({"name": "pbo", "passed": trials["pbo_passed"], "text": trials["pbo_text"]})
    o["passed"] = all(c["passed"] for c in o["conditions"])
    return trials


def run(profile: str = "default", seed: int | None = None, workers: int | None = None, data_path=None,
        symbols=None, min_train: int | None = None,
        retrain: int | None = None, settings: TradingSettings | None = None, record: bool = True,
        progress: bool = False, reports_dir=None, charts: bool = True) -> dict:
    """The whole walk-forward; returns the report (also written to disk and recorded). ``seed``,
    ``min_train`` and ``retrain`` default to TRAIN_SEED, WALK_FORWARD_MIN_TRAIN_SESSIONS and
    WALK_FORWARD_RETRAIN_SESSIONS (the effective settings). The newest HOLDOUT_SESSIONS sessions
    are sealed (``split_holdout``). Whatever ``record`` says, the run is a trial of the registry
    (``trial_registry``): ``record=False`` only keeps it out of ``walk_forward_runs``."""
    seed = C.TRAIN_SEED if seed is None else seed
    min_train = C.WALK_FORWARD_MIN_TRAIN_SESSIONS if min_train is None else min_train
    retrain = C.WALK_FORWARD_RETRAIN_SESSIONS if retrain is None else retrain
    t0 = time.perf_counter()
    settings = settings or TradingSettings.from_constants()
    prof = profile_params(profile)
    path, features, universe, wanted = load_inputs(data_path, symbols)
    if C.BACKTEST_FILL == "next_open" and (synthetic := data_collection.synthetic_open_problem(features, path)):
        raise WalkForwardError(synthetic)
    everything = features
    features, sealed = split_holdout(everything)
    folds = plan_folds(features["Date"], min_train, retrain)
    model_config = runs.model_configuration(prof)
    fingerprint = runs.config_fingerprint(model_config)
    data_sha = file_sha256(path)
    n_trials = overfitting.pending_trials(wanted)
    log.info("walk-forward started: %d symbols, %d folds (min train %d, retrain every %d sessions), profile %s, "
             "seed %d, %d session(s) sealed as the holdout", len(wanted), len(folds), min_train, retrain, profile,
             seed, len(sealed))
    fold_results, n_workers = run_folds(features, folds, prof, seed, workers, progress)
    t_folds = time.perf_counter()
    ev = evaluate(features, fold_results, settings, n_trials=n_trials)
    _judge_trials(ev, wanted)
    live = TradingSettings.from_constants()
    # bound to the production data, universe and fixed window (evidence_binding): else NOT gate evidence
    evidence = evidence_binding.binding("walk_forward", everything, path if data_path else None, wanted, universe,
                                        features["Date"].min(), features["Date"].max())
    gate_eligible = (evidence["gate_evidence"] and min_train <= C.WALK_FORWARD_MIN_TRAIN_SESSIONS
                     and settings.costs_not_below(live) and settings.risk_limits() == live.risk_limits())
    report = {
        "title": f"Walk-forward {ev['start']} .. {ev['end']} ({len(folds)} folds)",
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "passed": bool(ev["overall"]["passed"]), "gate_eligible": bool(gate_eligible),
        "start": ev["start"], "end": ev["end"], "workers": n_workers,
        "data_source_label": config.data_source_banner(),
        "inputs": {"data_path": str(path), "data_sha256": data_sha, "universe": wanted, "profile": profile,
                   "model_config": model_config, "config_fingerprint": fingerprint, "seed": seed,
                   "costs": settings.cost_model(), "min_train_sessions": min_train, "retrain_sessions": retrain,
                   "initial_cash": C.INITIAL_PAPER_CASH, "holdout": _holdout_inputs(sealed)},
        "evidence": evidence, "overall": ev["overall"], "folds": ev["folds"],
        "nonsensical_prediction_days": ev["nonsensical_prediction_days"],
        "daily": [{"date": str(d.date()), "equity": float(a), "benchmark": float(b)}
                  for d, a, b in zip(ev["equity"].index, ev["equity"].to_numpy(), ev["benchmark"].to_numpy())],
        "timings_s": {"folds": round(t_folds - t0, 2)},
    }
    report["trial_id"] = _record_trial("walk_forward", report, ev, {
        "profile": profile, "min_train": min_train, "retrain": retrain, "holdout_sessions": len(sealed),
        "symbols": wanted, "workers": n_workers}, record)
    pictures = None
    if charts:
        pictures = make_charts(ev["equity"], ev["benchmark"])
    json_path, html_path = write_reports(report, pictures, reports_dir)
    report["report_json"], report["report_html"] = str(json_path), str(html_path)
    if record:
        report["run_id"] = runs.record_run(report)
    report["timings_s"]["total"] = round(time.perf_counter() - t0, 2)
    return report


def compare_sentiment(profile: str = "default", seed: int | None = None, workers: int | None = None,
                      min_train: int | None = None, retrain: int | None = None, progress: bool = False,
                      reports_dir=None, charts: bool = True, out=None) -> dict:
    """``--compare-sentiment``: the walk-forward on the production data without, then with, the Reddit
    sentiment features (``REDDIT_SENTIMENT`` off / on, as settings.toml would set it), out of sample on
    the recorded period before the sealed holdout (``min_train`` defaults to the sessions before the first collection; sessions
    with no collection see neutral sentiment). Each arm is a whole run, recorded by ``run`` like any
    other: two configurations (``REDDIT_SENTIMENT`` is a strategy tunable), two counted trials. Prints
    both skills; returns {"without": report, "with": report, ...}."""
    out = out or sys.stdout
    conn = state_db.connect_readonly()
    try:
        recorded = sentiment_store.collections(conn)
    finally:
        if conn is not None:
            conn.close()
    if recorded.empty:
        raise WalkForwardError("no Reddit sentiment recorded yet: run python reddit_sentiment.py collect every session "
                               "(REDDIT_COLLECT = true lets the scheduler do it); history cannot be back-filled")
    first = pd.Timestamp(recorded["session"].iloc[0])
    try:
        sessions = pd.DatetimeIndex(pd.unique(data_collection.load_processed(sentiment=False)["Date"]))
    except data_collection.DataError as exc:
        raise WalkForwardError(" ".join(str(exc).split())) from None
    sealed = max(int(C.HOLDOUT_SESSIONS), 0)          # the newest sessions stay sealed here too (split_holdout)
    open_sessions = sessions.sort_values()[:len(sessions) - sealed] if sealed else sessions
    recorded_sessions = int((open_sessions >= first).sum())
    if recorded_sessions == 0 and (sessions >= first).any():
        raise WalkForwardError(f"the sentiment record starts {first.date()}, inside the sealed holdout (the newest "
                               f"{sealed} sessions, HOLDOUT_SESSIONS, which only python walk_forward.py holdout opens): "
                               f"keep collecting until the record reaches back before it, then compare")
    if recorded_sessions == 0:
        raise WalkForwardError(f"the sentiment record starts {first.date()}, after the data's last session "
                               f"{sessions.max().date()}: keep collecting and updating the data, then compare")
    min_train = int((sessions < first).sum()) if min_train is None else min_train
    base = tunables.applied_overrides()
    reports = {}
    try:
        for arm, flag in (("without", False), ("with", True)):
            tunables.apply_values({**base, "REDDIT_SENTIMENT": flag})
            reports[arm] = run(profile=profile, seed=seed, workers=workers, min_train=min_train, retrain=retrain,
                               progress=progress, reports_dir=reports_dir, charts=charts)
    finally:
        tunables.apply_values(base)
    print(f"Reddit sentiment compared out of sample on {reports['with']['start']} .. {reports['with']['end']} "
          f"({recorded_sessions} sessions since the first collection {first.date()}, {len(recorded)} collections; "
          f"trained on at least {min_train} sessions):", file=out)
    for arm in ("without", "with"):
        o = reports[arm]["overall"]
        print(f"  {arm:<7} sentiment: skill vs no change {_num(o['dm_vs_no_change']['skill'], '+.4f')} "
              f"(DM p {_num(o['dm_vs_no_change']['p_value'], '.4f')}), vs training mean "
              f"{_num(o['dm_vs_training_mean']['skill'], '+.4f')} (DM p {_num(o['dm_vs_training_mean']['p_value'], '.4f')}), "
              f"DSR {_num(o['dsr_excess'])} of {o['n_trials']} trial(s), verdict {'PASS' if reports[arm]['passed'] else 'FAIL'}"
              f"; run {reports[arm].get('run_id')}, {reports[arm]['report_html']}", file=out)
    return {"first_recorded_session": str(first.date()), "recorded_sessions": recorded_sessions,
            "collections": len(recorded), "min_train": min_train, **reports}


def print_summary(report: dict, out=None) -> None:
    out = out or sys.stdout
    o = report["overall"]
    print(f"{report['title']}: {len(report['inputs']['universe'])} symbols, {report['workers']} workers, "
          f"{report['timings_s']['total']:.1f} s", file=out)
    if report.get("data_source_label"):
        print(f"  {report['data_source_label']}", file=out)
    for f in report["folds"]:
        print(f"  fold {f['fold']:>2} {f['test_start']} .. {f['test_end']}: skill {_num(f['skill_vs_no_change'], '+.4f')} "
              f"(vs mean {_num(f['skill_vs_training_mean'], '+.4f')}), directional_accuracy "
              f"{_num(f['directional_accuracy'], '.3f')}, strategy {_pct(f['strategy_return'])} vs buy & hold "
              f"{_pct(f['benchmark_return'])}", file=out)
    for c in o["conditions"]:
        print(f"  {'PASS' if c['passed'] else 'FAIL'}  {c['text']}", file=out)
    if o.get("trials"):
        for line in overfitting.trial_lines(o["trials"], "  "):
            print(line, file=out)
    binding_note = evidence_binding.not_evidence_line(report.get("evidence"))
    if binding_note:
        print(f"  {binding_note}", file=out)
    note = "" if report["gate_eligible"] else " (does not count for the go-live gate)"
    print(f"Verdict: {'PASS' if report['passed'] else 'FAIL'}{note}", file=out)
    print(f"Report: {report['report_html']}", file=out)


# =========================================================================== sweep

GRID_KEYS = {"retrain": int, "window": int, "threshold": float, "profile": str}


def parse_grid(spec: str) -> list[dict]:
    """The configurations of a sweep from ``key=v1,v2;key=v1`` (every combination, in the order
    written) or JSON (a list of configurations, or {key: [values]}). Keys: retrain (sessions
    between retrains), window (the model's input window), threshold (SIGNAL_THRESHOLD), profile."""
    text = (spec or "").strip()
    fix = ("write it as key=v1,v2;key=v1 (keys: " + ", ".join(GRID_KEYS) + "), e.g. "
           "--grid 'retrain=63,126;threshold=0.5,0.7'")
    if not text:
        raise WalkForwardUsageError(f"the sweep grid is empty: {fix}")
    if text[0] in "[{":
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise WalkForwardUsageError(f"the sweep grid is not valid JSON ({exc}): {fix}") from None
        if isinstance(data, dict):
            axes = [(k, v if isinstance(v, list) else [v]) for k, v in data.items()]
            raw = [dict(zip([k for k, _ in axes], combo)) for combo in itertools.product(*[v for _, v in axes])]
        elif isinstance(data, list) and all(isinstance(x, dict) for x in data):
            raw = data
        else:
            raise WalkForwardUsageError(f"the sweep grid must be a JSON object or a list of objects: {fix}")
    else:
        axes = []
        for part in text.split(";"):
            if not part.strip():
                continue
            key, eq, values = part.partition("=")
            if not eq:
                raise WalkForwardUsageError(f"the sweep grid's part {part.strip()!r} has no '=': {fix}")
            axes.append((key.strip().lower(), [v.strip() for v in values.split(",") if v.strip()]))
        raw = [dict(zip([k for k, _ in axes], combo)) for combo in itertools.product(*[v for _, v in axes])]
    configs = []
    for cfg in raw:
        clean = {}
        for key, value in cfg.items():
            if key not in GRID_KEYS:
                raise WalkForwardUsageError(f"the sweep grid names {key!r}, which is not a sweep key: {fix}")
            try:
                clean[key] = GRID_KEYS[key](value)
            except (TypeError, ValueError):
                raise WalkForwardUsageError(f"the sweep grid's {key} {value!r} is not a {GRID_KEYS[key].__name__}: "
                                            f"{fix}") from None
        if "profile" in clean:
            profile_params(clean["profile"])
        if clean not in configs:
            configs.append(clean)
    if not configs:
        raise WalkForwardUsageError(f"the sweep grid has no configuration: {fix}")
    return configs


def sweep(grid: str | None = None, profile: str = "default", seed: int | None = None, workers: int | None = None,
          data_path=None, min_train: int | None = None, progress: bool = False) -> dict:
    """Every configuration of ``grid`` (default ``SWEEP_GRID``; ``parse_grid``) walked forward on
    the history without the sealed holdout: the folds of all configurations as Ray tasks
    (``run_tasks``; a fold shared by several configurations, e.g. two thresholds, is trained
    once), each configuration evaluated with the live rules and recorded as a trial. Returns
    {"rows" (sorted by out-of-sample skill vs no change, best first), "n_trials", "pbo" (of
    the set), "trials" (the universe's trial evidence), ...}. The same whatever the workers."""
    seed = C.TRAIN_SEED if seed is None else seed
    min_train = C.WALK_FORWARD_MIN_TRAIN_SESSIONS if min_train is None else min_train
    t0 = time.perf_counter()
    configs = parse_grid(C.SWEEP_GRID if grid is None else grid)
    path, features, _, wanted = load_inputs(data_path)
    features, sealed = split_holdout(features)
    data_sha = file_sha256(path)
    base = tunables.applied_overrides()
    plans, tasks = [], {}
    for cfg in configs:
        prof = profile_params(cfg.get("profile", profile))
        if "window" in cfg:
            prof["window"] = cfg["window"]
        strategy = {"SIGNAL_THRESHOLD": cfg["threshold"]} if "threshold" in cfg else {}
        retrain = cfg.get("retrain", C.WALK_FORWARD_RETRAIN_SESSIONS)
        folds = plan_folds(features["Date"], min_train, retrain)
        keys = []
        for f in folds:
            key = json.dumps([prof, str(f["test_start"].date()), str(f["test_end"].date())], sort_keys=True)
            tasks.setdefault(key, (key, f, prof, base))
            keys.append(key)
        plans.append({"config": cfg, "prof": prof, "strategy": strategy, "retrain": retrain, "folds": folds,
                      "keys": keys})
    log.info("sweep started: %d configurations, %d distinct folds, %d symbols, %d session(s) sealed as the holdout",
             len(plans), len(tasks), len(wanted), len(sealed))
    results, n_workers = run_tasks(features, list(tasks.values()), seed, workers, progress)
    rows = []
    for plan in plans:
        fold_results = [{**results[k], "fold": f["fold"]} for k, f in zip(plan["keys"], plan["folds"])]
        model_config = runs.model_configuration(plan["prof"], plan["strategy"])
        fingerprint = runs.config_fingerprint(model_config)
        tunables.apply_values({**base, **plan["strategy"]})       # the configuration's threshold, then back
        try:
            ev = evaluate(features, fold_results, n_trials=overfitting.pending_trials(wanted))
            threshold = C.SIGNAL_THRESHOLD
        finally:
            tunables.apply_values(base)
        _judge_trials(ev, wanted)
        o = ev["overall"]
        rep = {"inputs": {"config_fingerprint": fingerprint, "universe": wanted, "seed": seed,
                          "data_sha256": data_sha, "data_path": str(path)},
               "start": ev["start"], "end": ev["end"], "passed": bool(o["passed"])}
        settings = {"profile": plan["config"].get("profile", profile), "window": int(plan["prof"]["window"]),
                    "threshold": threshold, "retrain": plan["retrain"], "min_train": min_train,
                    "holdout_sessions": len(sealed), "symbols": wanted, "sweep": plan["config"]}
        trial_id = _record_trial("sweep", rep, ev, settings, True)
        rows.append({"config": settings, "fingerprint": fingerprint, "trial_id": trial_id,
                     "skill_vs_no_change": o["dm_vs_no_change"]["skill"],
                     "skill_vs_training_mean": o["dm_vs_training_mean"]["skill"],
                     "sharpe": o["sharpe_strategy"], "benchmark_sharpe": o["sharpe_benchmark"],
                     "passed": bool(o["passed"]), "start": ev["start"], "end": ev["end"],
                     "returns": trial_registry.daily_series(ev["equity"], ev["benchmark"])})
    universe_trials = overfitting.trial_evidence(wanted)
    n_trials, n_dsr = universe_trials["n_trials"], universe_trials["dsr_trials"]
    for r in rows:
        r["dsr"] = skill_stats.deflated_sharpe_ratio(overfitting.hedged_returns(r["returns"]), n_dsr)
    _, matrix, _ = trial_registry.excess_matrix(rows, rows[0]["returns"])
    set_pbo = overfitting.pbo_cscv(matrix)
    order = sorted(range(len(rows)), key=lambda i: (-(rows[i]["skill_vs_no_change"]
                                                      if rows[i]["skill_vs_no_change"] is not None else -np.inf), i))
    return {"rows": [rows[i] for i in order], "n_trials": n_trials, "dsr_trials": n_dsr, "pbo": set_pbo,
            "trials": universe_trials, "workers": n_workers, "universe": wanted,
            "holdout": _holdout_inputs(sealed), "seconds": round(time.perf_counter() - t0, 2)}


def print_sweep(result: dict, out=None) -> None:
    out = out or sys.stdout
    rows = result["rows"]
    hold = result["holdout"]
    print(f"Sweep: {len(rows)} configurations on {len(result['universe'])} symbols, out of sample {rows[0]['start']} .. "
          f"{rows[0]['end']} ({hold['sessions']} newest sessions sealed as the holdout), {result['workers']} workers, "
          f"{result['seconds']:.1f} s", file=out)
    print(f"  {'rank':>4} {'retrain':>7} {'window':>6} {'threshold':>9} {'profile':<8} {'skill':>8} {'vs mean':>8} "
          f"{'Sharpe':>7} {'B&H':>6} {'DSR':>6} verdict  trial", file=out)
    for k, r in enumerate(rows, 1):
        c = r["config"]
        print(f"  {k:>4} {c['retrain']:>7} {c['window']:>6} {c['threshold']:>9.2f} {c['profile']:<8} "
              f"{_num(r['skill_vs_no_change'], '+.4f'):>8} {_num(r['skill_vs_training_mean'], '+.4f'):>8} "
              f"{_num(r['sharpe'], '.2f'):>7} {_num(r['benchmark_sharpe'], '.2f'):>6} {_num(r['dsr'], '.3f'):>6} "
              f"{'PASS' if r['passed'] else 'FAIL':<8} {r['trial_id']}", file=out)
    pbo = result["pbo"]
    print(f"  DSR deflated for {result['dsr_trials']} of the {result['n_trials']} trials on this universe (needs >= "
          f"{C.SKILL_MIN_DSR}); PBO of this set "
          f"{_num(pbo['pbo'], '.3f')} over {pbo['n_trials']} configurations, {pbo['splits']} CSCV splits "
          f"(needs <= {C.PBO_MAX} once {C.PBO_MIN_TRIALS} trials)", file=out)
    for line in overfitting.trial_lines(result["trials"], "  "):
        print(line, file=out)
    print("  Each configuration is a recorded trial. Walk the chosen one forward (./run_backtest.sh --walk-forward) "
          "for the gate, then open the holdout once: python walk_forward.py holdout", file=out)


# =========================================================================== the sealed holdout

def open_holdout(profile: str = "default", seed: int | None = None, workers: int | None = None, data_path=None,
                 progress: bool = False) -> dict:
    """The final check: train on every session before the sealed holdout, predict the holdout,
    judge it like a walk-forward. Once per configuration (the profile's model configuration
    and the strategy tunables): a second call for the same configuration returns the recorded
    result ({"already_opened": True, ...}) without training; another configuration is a new
    trial, and the result says how many configurations opened it before."""
    seed = C.TRAIN_SEED if seed is None else seed
    prof = profile_params(profile)
    path, features, _, wanted = load_inputs(data_path)
    _, sealed = split_holdout(features)
    if not len(sealed):
        raise WalkForwardUsageError("HOLDOUT_SESSIONS is 0: there is no sealed holdout to open (set it, e.g. 252)")
    model_config = runs.model_configuration(prof)
    fingerprint = runs.config_fingerprint(model_config)
    earlier = trial_registry.holdout_opening(fingerprint, wanted)
    others = sorted({o["config_fingerprint"] for o in trial_registry.holdout_openings(wanted)} - {fingerprint})
    if earlier:
        return {"already_opened": True, "opening": earlier, "config_fingerprint": fingerprint,
                "other_configurations": others, "passed": bool(earlier["passed"])}
    sessions = pd.DatetimeIndex(sorted(pd.unique(pd.DatetimeIndex(features["Date"]))))
    fold = plan_folds(sessions, len(sessions) - len(sealed), len(sealed))[0]
    n_trials = overfitting.pending_trials(wanted)
    results, n_workers = run_folds(features, [fold], prof, seed, workers, progress)
    ev = evaluate(features, results, n_trials=n_trials)
    o = ev["overall"]
    rep = {"inputs": {"config_fingerprint": fingerprint, "universe": wanted, "seed": seed,
                      "data_sha256": file_sha256(path), "data_path": str(path)},
           "start": ev["start"], "end": ev["end"], "passed": bool(o["passed"])}
    trial_id = _record_trial("holdout", rep, ev, {"profile": profile, "holdout_sessions": len(sealed),
                                                  "symbols": wanted}, True)
    result = {"start": ev["start"], "end": ev["end"], "conditions": o["conditions"], **runs.slim(o),
              "n_trials": n_trials, "seed": seed, "profile": profile}
    opening_id = trial_registry.record_holdout_opening(fingerprint, wanted, rep["inputs"]["data_sha256"], sealed[0].date(),
                                                       sealed[-1].date(), trial_id, o["passed"], runs.jsonable(result))
    return {"already_opened": False, "opening": trial_registry.holdout_opening(fingerprint, wanted),
            "opening_id": opening_id, "config_fingerprint": fingerprint, "other_configurations": others,
            "passed": bool(o["passed"]), "trial_id": trial_id, "workers": n_workers}


def print_holdout(result: dict, out=None) -> None:
    out = out or sys.stdout
    op = result["opening"]
    res = op["result"]
    if result["already_opened"]:
        print(f"HOLDOUT ALREADY OPENED for configuration {result['config_fingerprint'][:16]} on {op['created_at']} "
              f"(trial {op['trial_id']}): the recorded result is shown, nothing was re-run (a second look is no "
              f"longer a sealed test)", file=out)
    else:
        if result["other_configurations"]:
            print(f"NEW TRIAL: the holdout was already opened for {len(result['other_configurations'])} other "
                  f"configuration(s); this opening is counted as one more trial", file=out)
        print(f"Holdout opened for configuration {result['config_fingerprint'][:16]} (trial {result['trial_id']}); "
              f"recorded in the trial registry", file=out)
    print(f"Holdout {op['holdout_start']} .. {op['holdout_end']} (trained on every session before it, profile "
          f"{res.get('profile')}, seed {res.get('seed')}):", file=out)
    for c in res.get("conditions", []):
        print(f"  {'PASS' if c['passed'] else 'FAIL'}  {c['text']}", file=out)
    print(f"Holdout verdict: {'PASS' if op['passed'] else 'FAIL'}", file=out)


def _parser(command: str = "run") -> argparse.ArgumentParser:
    progs = {"run": "run_backtest.sh --walk-forward", "sweep": "walk_forward.py sweep",
             "holdout": "walk_forward.py holdout"}
    descriptions = {
        "run": "Walk-forward evaluation with retraining (folds on Ray; RAY_ADDRESS for a cluster). The newest "
               "HOLDOUT_SESSIONS sessions are sealed (see 'holdout'). Every run is a counted trial of the trial "
               "registry (logs/audit/trial_registry.db). Commands: 'sweep' (a grid of configurations on Ray), "
               "'holdout' (open the sealed holdout once per configuration); 'walk_forward.py sweep --help'. "
               "Exit 0: the evidence passes; 1: it does not; 2: error.",
        "sweep": "Walk every configuration of a grid forward (its folds as Ray tasks; RAY_ADDRESS for a cluster), "
                 "the sealed holdout left out; each configuration is recorded as a trial; prints a table sorted by "
                 "out-of-sample skill with the DSR at the universe's trial count and the PBO of the set. "
                 "Exit 0: done; 2: error.",
        "holdout": "Open the sealed holdout (the newest HOLDOUT_SESSIONS sessions) for the final check of this "
                   "configuration: train on every session before it, judge the holdout. Once per configuration: "
                   "again for the same one prints the recorded result; another configuration is a new trial. "
                   "Exit 0: passes; 1: does not; 2: error."}
    p = argparse.ArgumentParser(prog=progs[command], description=descriptions[command])
    p.add_argument("--profile", choices=sorted(model_training.PROFILES),
                   default=os.environ.get(C.ENV_TRAIN_PROFILE, "").strip().lower() or "default",
                   help="training profile of every fold (default: TRAIN_PROFILE or 'default')")
    p.add_argument("--workers", type=int, default=None, help="folds run at once (default: every local core, "
                                                             "or the cluster's CPUs with RAY_ADDRESS)")
    p.add_argument("--seed", type=int, default=None, help="training seed (default TRAIN_SEED)")
    p.add_argument("--data", help="processed data file (default: processed_stock_data.csv under TRADING_HOME; "
                                  "another file is NOT gate evidence)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar even on a terminal")
    if command == "holdout":
        return p
    p.add_argument("--min-train", type=int, default=None,
                   help="sessions of the first training window (default WALK_FORWARD_MIN_TRAIN_SESSIONS)")
    if command == "sweep":
        p.add_argument("--grid", default=None,
                       help="the configurations: key=v1,v2;key=v1 (keys: retrain, window, threshold, profile) or "
                            "JSON; default SWEEP_GRID")
        return p
    p.add_argument("--symbols", help="comma-separated subset (NOT gate evidence)")
    p.add_argument("--retrain", type=int, default=None,
                   help="sessions between retrains (default WALK_FORWARD_RETRAIN_SESSIONS)")
    p.add_argument("--no-record", action="store_true",
                   help="do not record the run in the state database's walk-forward runs (it cannot count for the "
                        "gate); it is still a counted trial in the trial registry")
    p.add_argument("--compare-sentiment", action="store_true",
                   help="run it without and with the Reddit sentiment features, out of sample on the recorded "
                        "period; both runs are recorded (two trials); exit 0 once both ran")
    return p


COMMANDS = ("sweep", "holdout")


def main(argv=None) -> int:
    install_excepthook()
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv.pop(0) if argv and argv[0] in COMMANDS else "run"
    args = _parser(command).parse_args(argv)
    if config.refuse_without_home():          # a mistyped TRADING_HOME: one line, nothing created
        return EXIT_ERROR
    try:
        setup_logging("trading", console=False)
    except (config.ConfigError, OSError) as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return EXIT_ERROR
    if args.workers is not None and args.workers < 1:
        print("ERROR: --workers must be at least 1", file=sys.stderr)
        return EXIT_ERROR
    if getattr(args, "compare_sentiment", False):
        if args.data or args.symbols or args.no_record:
            print("ERROR: --compare-sentiment runs on the production data and universe and is always recorded: "
                  "leave out --data, --symbols and --no-record", file=sys.stderr)
            return EXIT_ERROR
        try:
            compare_sentiment(profile=args.profile, seed=args.seed, workers=args.workers, min_train=args.min_train,
                              retrain=args.retrain, progress=(not args.no_progress) and sys.stderr.isatty())
        except Exception as exc:
            command_failed(log, "walk-forward sentiment comparison", exc)
            return EXIT_ERROR
        return EXIT_PASS
    progress = (not args.no_progress) and sys.stderr.isatty()
    try:
        if command == "sweep":
            result = sweep(grid=args.grid, profile=args.profile, seed=args.seed, workers=args.workers,
                           data_path=args.data, min_train=args.min_train, progress=progress)
        elif command == "holdout":
            result = open_holdout(profile=args.profile, seed=args.seed, workers=args.workers, data_path=args.data,
                                  progress=progress)
        else:
            result = run(profile=args.profile, seed=args.seed, workers=args.workers, data_path=args.data,
                         symbols=args.symbols.split(",") if args.symbols else None, min_train=args.min_train,
                         retrain=args.retrain, record=not args.no_record, progress=progress)
    except Exception as exc:
        command_failed(log, f"walk-forward {command}" if command != "run" else "walk-forward", exc)
        return EXIT_ERROR
    if command == "sweep":
        print_sweep(result)
        log.info("walk-forward sweep: %d configurations recorded as trials (%d on this universe)",
                 len(result["rows"]), result["n_trials"])
        return EXIT_PASS
    if command == "holdout":
        print_holdout(result)
        log.info("holdout %s for configuration %s: %s", "already opened" if result["already_opened"] else "opened",
                 result["config_fingerprint"][:16], "PASS" if result["passed"] else "FAIL")
        return EXIT_PASS if result["passed"] else EXIT_FAIL
    report = result
    print_summary(report)
    log.info("walk-forward %s: %s; report %s", "PASSED" if report["passed"] else "FAILED", report["title"],
             report["report_json"])
    return EXIT_PASS if report["passed"] else EXIT_FAIL


if __name__ == "__main__":
    sys.exit(main())
