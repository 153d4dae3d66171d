"""Backtest the current model with the live cycle's own rules; decide whether it may go live.

Run by ``./run_backtest.sh [options]`` (or ``python backtest.py``). Exit code 0: the go-live
criteria in ``constants.py`` pass; 1: they do not; 2: an error (missing model or data, bad
option), printed as one line that names the fix.

This module is the CLI and the orchestration; the work is done, in order, by:

1. ``data_collection.load_processed`` -- the features ``build_features`` wrote.
2. ``model_management.load_model`` -> ``TradingModel.predict(features)`` (the NumPy inference
   path) for every row with a full window; ``signals.score_predictions`` turns each prediction
   into score and BUY / SELL / HOLD exactly as the live cycle does (``signals.build_signals``).
3. ``backtest_engine.run_engine`` replays the sessions with ``LivePolicy``: after each close
   ``RiskManager.update_equity`` (halts), then ``order_planning.plan_orders`` -- the live cycle's
   forced buy-ins, targets, orders and pre-trade checks -- and fills at the next open with the
   paper broker's costs. ``buy_and_hold`` is the equal-weight benchmark.
4. ``backtest_metrics.analyse`` (metrics of the strategy and the benchmark), the go-live verdict
   (``golive.evaluate_criteria``), ``backtest_report.write_reports``
   (``reports/backtest_<timestamp>.json`` and ``.html`` plus ``reports/latest_backtest.*``), and
   one row in the state database (``golive.record_run``; the gate reads it with
   ``golive.passing_backtest_for``).
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

import config
import constants as C
import corporate_actions
import data_collection
import evidence_binding
import model_management
import signals as sig
import trial_registry
import walk_forward
import walk_forward_runs
from backtest_engine import (FILL_MODES, BacktestError, EngineResult, LivePolicy, Market, buy_and_hold,
                             market_from_frames, run_engine)
from backtest_metrics import analyse, conventions
from backtest_report import add_trade_tables, fmt, make_charts, write_reports
from errors import UsageError, command_failed, install_excepthook, squeeze
from evidence_binding import in_sample_end, out_of_sample_start  # noqa: F401  (backtest.out_of_sample_start)
from fileutil import file_sha256
from golive import Criteria, evaluate_criteria, record_run
from logging_setup import setup_logging
from settings import TradingSettings

log = logging.getLogger("backtest")

EXIT_PASS, EXIT_FAIL, EXIT_ERROR = 0, 1, 2


# =========================================================================== model, data, signals

class BacktestUsageError(BacktestError, UsageError):
    """--start/--end that do not fit the model or the data: a typed mistake (WARNING, not errors.log)."""


def _load_model(path=None):
    model_path = Path(path) if path else config.path(C.MODEL_FILE)
    if not model_path.exists():
        raise BacktestError(f"no trained model at {model_path}: run python train_model.py "
                            f"(or python train_model.py --profile tiny for a quick one)")
    try:
        return model_management.load_model(model_path) if path else model_management.load_model()
    except BacktestError:
        raise
    except Exception as exc:
        raise BacktestError(f"the model at {model_path} cannot be loaded ({type(exc).__name__}: "
                            f"{squeeze(exc)}): retrain with python train_model.py") from None


# =========================================================================== the whole backtest

@dataclass
class Options:
    start: str | None = None
    end: str | None = None
    symbols: list[str] | None = None
    initial_cash: float = field(default_factory=lambda: C.INITIAL_PAPER_CASH)
    settings: TradingSettings = field(default_factory=TradingSettings.from_constants)   # limits and costs
    criteria: Criteria = field(default_factory=Criteria)
    in_sample: bool = False
    fill: str = field(default_factory=lambda: C.BACKTEST_FILL)
    model_path: str | None = None
    data_path: str | None = None
    reports_dir: str | None = None
    record: bool = True
    progress: bool = False


def run_backtest(opts: Options) -> dict:
    """The whole backtest for the CLI; returns the report dict (also written to disk)."""
    t0 = time.perf_counter()
    inputs = _load_inputs(opts)
    period = _choose_period(opts, inputs)
    t_load = time.perf_counter()
    scored, nonsense = _score_period(inputs, period)
    t_pred = time.perf_counter()
    market, result = _replay(opts, inputs.features, scored, period)
    t_engine = time.perf_counter()
    verdict = _judge(opts, market, result)
    report = _report(opts, inputs, period, nonsense, market, result, verdict,
                     timings={"load": round(t_load - t0, 3), "inference": round(t_pred - t_load, 3),
                              "engine": round(t_engine - t_pred, 3)})
    _write_and_record(report, opts, result, verdict.benchmark)
    report["timings_s"]["total"] = round(time.perf_counter() - t0, 3)
    return report


@dataclass
class _Inputs:
    """What the backtest reads: the model (its checksum and training metadata), its processed
    features for the chosen symbols, and the warnings collected for the report."""
    model: Any
    checksum: str | None
    metadata: dict
    features: pd.DataFrame
    warnings: list[str]
    universe: list[str] = field(default_factory=list)


@dataclass
class _Period:
    """The sessions replayed, and the first out-of-sample session of the model (None when its
    metadata names no split)."""
    sessions: pd.DatetimeIndex
    oos_start: pd.Timestamp | None


@dataclass
class _Verdict:
    """The equal-weight benchmark, the metrics of both, the go-live criteria rows, whether they
    all pass, and whether the run may count for going live."""
    benchmark: pd.Series
    analysis: dict
    criteria_rows: list[dict]
    passed: bool
    gate_eligible: bool


def _load_inputs(opts: Options) -> _Inputs:
    """Load the model and the processed features, and keep the rows of the symbols to test
    (``--symbols``, else the universe); a missing model or data file is a ``BacktestError``."""
    model = _load_model(opts.model_path)
    checksum = getattr(model, "checksum", None)
    metadata = dict(getattr(model, "metadata", None) or {})
    try:
        features = data_collection.load_processed(opts.data_path)
    except data_collection.DataError as exc:
        raise BacktestError(squeeze(exc)) from None
    warnings: list[str] = []
    symbols = _choose_symbols(opts.symbols, features, warnings)
    if opts.fill == "next_open":
        synthetic = data_collection.synthetic_open_problem(features[features["Symbol"].isin(symbols)],
                                                           opts.data_path or config.path(C.PROCESSED_DATA_FILE))
        if synthetic:
            raise BacktestError(synthetic)
    try:
        universe = data_collection.load_universe()
    except data_collection.DataError as exc:
        raise BacktestError(squeeze(exc)) from None
    return _Inputs(model, checksum, metadata, features[features["Symbol"].isin(symbols)], warnings, universe)


def _choose_period(opts: Options, inputs: _Inputs) -> _Period:
    """The sessions from ``--start`` (default: the model's first out-of-sample session, or the
    first session with ``--in-sample``) to ``--end`` (default: the last). Refuses a start inside
    the model's training/validation data without ``--in-sample``, metadata that names no split,
    and a period of fewer than 2 sessions."""
    all_dates = pd.DatetimeIndex(np.unique(inputs.features["Date"].to_numpy()))
    oos_start = out_of_sample_start(inputs.metadata, all_dates)
    if oos_start is None and not opts.in_sample:
        raise BacktestError("the model's metadata does not say where its training and validation data end, so "
                            "an out-of-sample period cannot be chosen: retrain with python train_model.py "
                            "(or run with --in-sample to backtest anyway)")
    if opts.start:
        start = pd.Timestamp(opts.start)
    elif opts.in_sample or oos_start is None:        # (None only with --in-sample: refused above)
        start = all_dates.min()
    else:
        start = oos_start
    end = pd.Timestamp(opts.end) if opts.end else all_dates.max()
    if not opts.in_sample and oos_start is not None and start < oos_start:
        ends = in_sample_end(inputs.metadata)
        raise BacktestUsageError(f"--start {start.date()} is inside the model's training/validation data"
                                 + (f" (it ends {ends.date()})" if ends is not None else "")
                                 + f"; out-of-sample data starts {oos_start.date()}: use a later --start, "
                                 "or add --in-sample to run an in-sample backtest")
    if end < start:
        raise BacktestUsageError(f"the period is empty ({start.date()} .. {end.date()}): check --start/--end")
    period = all_dates[(all_dates >= start) & (all_dates <= end)]
    if len(period) < 2:
        where = (f"the data ends {all_dates.max().date()} and the out-of-sample period starts "
                 f"{oos_start.date()}" if oos_start is not None else "the data is too short")
        raise BacktestError(f"fewer than 2 sessions to backtest ({where}): update the data with "
                            "./run_daily_data_update.sh, or use --in-sample")
    return _Period(period, oos_start)


def _score_period(inputs: _Inputs, period: _Period) -> tuple[pd.DataFrame, list[dict]]:
    """The model's signals for the period, as the live cycle scores them (from data up to the
    period's last session only), and the period's days with nonsensical predictions (logged and
    added to the warnings: the live cycle would have stopped, so no orders on those days)."""
    first, last = period.sessions[0], period.sessions[-1]
    features = inputs.features
    scored, nonsense = sig.build_signals(inputs.model, features[features["Date"] <= last])
    scored = scored[(scored["Date"] >= first) & (scored["Date"] <= last)]
    nonsense = [b for b in nonsense if first <= pd.Timestamp(b["date"]) <= last]
    if nonsense:
        text = (f"{len(nonsense)} sessions with nonsensical predictions (the live cycle would stop): no orders "
                f"on those days; first {nonsense[0]['date']}: {nonsense[0]['reason']}")
        log.warning("%s", text)
        inputs.warnings.append(text)
    return scored, nonsense


def _replay(opts: Options, features: pd.DataFrame, scored: pd.DataFrame,
            period: _Period) -> tuple[Market, EngineResult]:
    """The period's prices and signals as the engine's arrays, replayed with the live rules
    (``LivePolicy``) and the options' settings, cash and fill mode; a progress bar if asked."""
    first, last = period.sessions[0], period.sessions[-1]
    prices = features.loc[(features["Date"] >= first) & (features["Date"] <= last),
                          ["Date", "Symbol", "Open", "Close"]
                          + [c for c in ("High", "Low", "AdjFactor") if c in features.columns]]
    market = market_from_frames(prices, scored, actions=corporate_actions.read_store())
    bar = _ProgressBar("backtest") if opts.progress else None
    result = run_engine(market, LivePolicy(settings=opts.settings), settings=opts.settings,
                        initial_cash=opts.initial_cash, fill=opts.fill,
                        progress=bar.update if bar else None)
    if bar:
        bar.close()
    return market, result


def _judge(opts: Options, market: Market, result: EngineResult) -> _Verdict:
    """The benchmark, the metrics and the go-live criteria. The run counts for going live only
    out of sample, with criteria, costs and risk limits no looser than ``constants.py``'s."""
    benchmark = buy_and_hold(market, opts.initial_cash, opts.settings, opts.fill)
    analysis = analyse(result, market, benchmark)
    criteria_rows = evaluate_criteria(analysis["strategy"], opts.criteria)
    live = TradingSettings.from_constants()
    gate_eligible = (not opts.in_sample and opts.criteria.not_looser_than_defaults()
                     and opts.settings.costs_not_below(live)
                     and opts.settings.risk_limits() == live.risk_limits())
    return _Verdict(benchmark, analysis, criteria_rows, all(c["passed"] for c in criteria_rows), gate_eligible)


def _report(opts: Options, inputs: _Inputs, period: _Period, nonsense: list[dict], market: Market,
            result: EngineResult, verdict: _Verdict, timings: dict) -> dict:
    """The report dict: title, verdict, parameters, metrics, warnings, halts, the daily series,
    every fill and round trip, and the timings so far."""
    first, last = period.sessions[0], period.sessions[-1]
    title = ("IN-SAMPLE backtest" if opts.in_sample else "Out-of-sample backtest") + \
        f" {first.date()} .. {last.date()}"
    evidence = evidence_binding.binding("backtest", inputs.features, opts.data_path, market.symbols,
                                       inputs.universe, first, last, inputs.metadata)
    gate_eligible = verdict.gate_eligible and evidence["gate_evidence"]
    parameters = _parameters(opts, inputs.metadata, period, market, result, gate_eligible)
    parameters["evidence"] = evidence
    analysis = verdict.analysis
    return {
        "title": title, "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model_checksum": inputs.checksum, "in_sample": opts.in_sample, "passed": verdict.passed,
        "gate_eligible": gate_eligible, "start": parameters["start"], "end": parameters["end"],
        "parameters": parameters, "criteria": verdict.criteria_rows,
        "metrics": {"strategy": analysis["strategy"], "benchmark": analysis["benchmark"]},
        "conventions": conventions(), "warnings": inputs.warnings, "halts": result.halts,
        "nonsensical_prediction_days": nonsense,
        "rejection_samples": result.rejection_samples, "cancelled_orders": result.cancelled,
        "final_positions": result.final_positions,
        "daily": _daily_rows(result, verdict.benchmark),
        "trades": result.trades, "round_trips": analysis["round_trips"],
        "timings_s": timings,
    }


def _parameters(opts: Options, metadata: dict, period: _Period, market: Market, result: EngineResult,
                gate_eligible: bool) -> dict:
    """What the run was made with: period, symbols, cash, fill, costs, criteria, risk limits,
    model and data source (the report's "parameters")."""
    oos_start = period.oos_start
    return {
        "start": str(period.sessions[0].date()), "end": str(period.sessions[-1].date()),
        "symbols": market.symbols,
        "initial_cash": opts.initial_cash, "fill": opts.fill, "in_sample": opts.in_sample,
        "out_of_sample_start": str(oos_start.date()) if oos_start is not None else None,
        "model_in_sample_end": str(model_end.date()) if (model_end := in_sample_end(metadata)) is not None else None,
        "costs": opts.settings.cost_model(), "criteria": asdict(opts.criteria),
        "signal_threshold": C.SIGNAL_THRESHOLD, "trading_days_per_year": C.TRADING_DAYS_PER_YEAR,
        "risk_free_rate": C.RISK_FREE_RATE, "policy": result.policy,
        "risk_limits": {k: opts.settings.risk_limits()[k] for k in (
            "MAX_POSITION_PCT", "MAX_GROSS_EXPOSURE", "MAX_POSITIONS", "MAX_ORDER_VALUE", "RISK_PER_TRADE",
            "MAX_DRAWDOWN", "DAILY_LOSS_LIMIT", "ALLOW_SHORTS", "MAX_SIZE_SCALE", "REBALANCE_BAND")},
        "model_path": str(Path(opts.model_path) if opts.model_path else config.path(C.MODEL_FILE)),
        "model_metadata": metadata, "gate_eligible": gate_eligible,
        "data_source": _data_source(), "data_source_label": config.data_source_banner(),
    }


def _daily_rows(result: EngineResult, benchmark: pd.Series) -> list[dict]:
    """One row a session: equity, benchmark, drawdown, cash, long and short value, positions and
    the day's commission, slippage and borrow fees."""
    equity = result.equity_series()
    dd = equity / equity.cummax() - 1.0
    return [{"date": str(d.date()), "equity": float(e), "benchmark": float(b), "drawdown": float(x),
             "cash": float(c), "long_value": float(lv), "short_value": float(sv),
             "positions": int(k), "commission": float(cm), "slippage": float(sl), "borrow": float(bo)}
            for d, e, b, x, c, lv, sv, k, cm, sl, bo in zip(
                result.dates, result.equity, benchmark.to_numpy(), dd.to_numpy(), result.cash,
                result.long_value, result.short_value, result.n_positions, result.daily_commission,
                result.daily_slippage, result.daily_borrow)]


def _write_and_record(report: dict, opts: Options, result: EngineResult, benchmark: pd.Series) -> None:
    """Add the trade tables, write ``reports/backtest_<timestamp>.json``/``.html`` and the
    ``latest_backtest.*`` copies (their paths go into the report), then record the run in the
    state database unless ``--no-record`` (its id goes into the report as ``run_id``)."""
    add_trade_tables(report, opts.reports_dir)
    charts = make_charts(result.equity_series(), benchmark)
    json_path, html_path = write_reports(report, charts, opts.reports_dir)
    report["report_json"], report["report_html"] = str(json_path), str(html_path)
    if opts.record:
        report["run_id"] = record_run({**report, "metrics": report["metrics"]}, json_path)
    report["trial_id"] = _record_trial(report, opts)


def _record_trial(report: dict, opts: Options) -> int:
    """Every backtest (``--no-record`` too) is a counted trial of the trial registry."""
    metadata = report["parameters"].get("model_metadata") or {}
    try:
        fingerprint = walk_forward_runs.config_fingerprint(
            walk_forward_runs.model_configuration_from_metadata(metadata))
    except (KeyError, TypeError, ValueError):
        fingerprint = f"model:{report.get('model_checksum')}"
    path = Path(opts.data_path) if opts.data_path else config.path(C.PROCESSED_DATA_FILE)
    try:
        sha = file_sha256(path)
    except OSError:
        sha = None
    s = report["metrics"]["strategy"]
    return trial_registry.record_trial(
        "backtest", config_fingerprint=fingerprint, universe=report["parameters"]["symbols"], seed=None,
        settings={"start": report["start"], "end": report["end"], "in_sample": opts.in_sample, "fill": opts.fill,
                  "model_checksum": report.get("model_checksum")},
        recorded=opts.record, data_sha256=sha, data_path=path, start=report["start"], end=report["end"],
        sharpe=s.get("sharpe"), passed=report["passed"])


def _data_source() -> str | None:
    try:
        return config.data_source()
    except config.ConfigError:
        return None


def _choose_symbols(requested, features: pd.DataFrame, warnings: list | None = None) -> list[str]:
    present = set(features["Symbol"].astype(str).unique())
    if requested:
        wanted = [s.strip().upper() for s in requested if s.strip()]
        missing = [s for s in wanted if s not in present]
        if missing:
            raise BacktestError(f"no data for {', '.join(missing)} in {C.PROCESSED_DATA_FILE}: add them to "
                                f"{C.UNIVERSE_FILE} and run ./run_daily_data_update.sh, or drop them from --symbols")
        return sorted(set(wanted))
    try:
        universe = data_collection.load_universe()
    except data_collection.DataError as exc:
        raise BacktestError(squeeze(exc)) from None
    chosen = [s for s in universe if s in present]
    missing = [s for s in universe if s not in present]
    if missing:
        text = (f"no processed data for {', '.join(missing)} (dropped by the data update?): backtesting the "
                f"other {len(chosen)} symbols")
        log.warning("%s", text)
        if warnings is not None:
            warnings.append(text)
    if not chosen:
        raise BacktestError(f"none of the symbols in {C.UNIVERSE_FILE} has data in {C.PROCESSED_DATA_FILE}: "
                            "run ./run_daily_data_update.sh --force")
    return sorted(chosen)


class _ProgressBar:
    """A one-line progress bar on stderr (only created when stderr is a terminal)."""

    def __init__(self, label: str, width: int = 40):
        self.label, self.width, self.last = label, width, -1
        self.t0 = time.perf_counter()

    def update(self, done: int, total: int) -> None:
        pct = int(100 * done / max(total, 1))
        if pct == self.last and done != total:
            return
        self.last = pct
        fill = int(self.width * done / max(total, 1))
        sys.stderr.write(f"\r{self.label} [{'#' * fill}{'.' * (self.width - fill)}] {pct:3d}% "
                         f"{done}/{total} sessions {time.perf_counter() - self.t0:5.1f}s")
        sys.stderr.flush()

    def close(self) -> None:
        sys.stderr.write("\n")
        sys.stderr.flush()


# =========================================================================== CLI

def _settings(args) -> TradingSettings:
    """The live settings with the cost options given on the command line."""
    given = {"slippage_bps": args.slippage, "commission_per_share": args.commission,
             "min_commission": args.min_commission, "borrow_rate": args.borrow_rate}
    return TradingSettings.from_constants().replace(
        **{name: float(value) for name, value in given.items() if value is not None})


# options whose default is a tunable: filled in after start-up applied the settings (settings.toml)
_OPTION_DEFAULTS = {"initial_cash": "INITIAL_PAPER_CASH", "fill": "BACKTEST_FILL",
                    "min_total_return": "GOLIVE_MIN_TOTAL_RETURN", "min_sharpe": "GOLIVE_MIN_SHARPE",
                    "max_drawdown": "GOLIVE_MAX_DRAWDOWN", "min_trades": "GOLIVE_MIN_TRADES"}


def _fill_defaults(args) -> None:
    """Options not given take the effective tunable (constants.py, settings.toml, environment)."""
    for attr, name in _OPTION_DEFAULTS.items():
        if getattr(args, attr) is None:
            setattr(args, attr, getattr(C, name))


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="run_backtest.sh",
        description="Backtest the current model with the live cycle's rules and check the go-live criteria. "
                    "Exit 0: criteria pass; 1: they do not; 2: error (missing model/data, bad option).")
    p.add_argument("--start", help="first session (YYYY-MM-DD); default: the first session after the model's "
                                   "training and validation data")
    p.add_argument("--end", help="last session (YYYY-MM-DD); default: the last in the data")
    p.add_argument("--symbols", help="comma-separated symbols; default: selected_stocks.txt")
    p.add_argument("--initial-cash", type=float, default=None,
                   help=f"starting cash in USD (default {C.INITIAL_PAPER_CASH:,.0f})")
    p.add_argument("--commission", type=float, default=None,
                   help=f"commission in USD per share (default PAPER_COMMISSION_PER_SHARE={C.PAPER_COMMISSION_PER_SHARE})")
    p.add_argument("--min-commission", type=float, default=None,
                   help=f"minimum commission per order in USD (default {C.PAPER_MIN_COMMISSION})")
    p.add_argument("--slippage", type=float, default=None,
                   help=f"slippage in basis points (default PAPER_SLIPPAGE_BPS={C.PAPER_SLIPPAGE_BPS})")
    p.add_argument("--borrow-rate", type=float, default=None,
                   help=f"annual borrow rate of shorts, fraction (default DEFAULT_BORROW_RATE={C.DEFAULT_BORROW_RATE})")
    p.add_argument("--fill", choices=FILL_MODES, default=None,
                   help=f"when signals after day t's close fill (default BACKTEST_FILL={C.BACKTEST_FILL})")
    p.add_argument("--in-sample", action="store_true",
                   help="allow a period inside the model's training/validation data (report titled IN-SAMPLE; "
                        "never counts for going live)")
    p.add_argument("--min-total-return", type=float, default=None,
                   help=f"go-live: total return must exceed (default {C.GOLIVE_MIN_TOTAL_RETURN})")
    p.add_argument("--min-sharpe", type=float, default=None,
                   help=f"go-live: Sharpe at least (default {C.GOLIVE_MIN_SHARPE})")
    p.add_argument("--max-drawdown", type=float, default=None,
                   help=f"go-live: |max drawdown| at most (default {C.GOLIVE_MAX_DRAWDOWN})")
    p.add_argument("--min-trades", type=int, default=None,
                   help=f"go-live: round-trip trades at least (default {C.GOLIVE_MIN_TRADES})")
    p.add_argument("--model", help="model file (default: lstm_price_difference_model.h5 under TRADING_HOME)")
    p.add_argument("--data", help="processed data file (default: processed_stock_data.csv under TRADING_HOME)")
    p.add_argument("--no-record", action="store_true", help="do not record the run in the state database")
    p.add_argument("--no-progress", action="store_true", help="no progress bar even on a terminal")
    p.add_argument("--walk-forward", action="store_true",
                   help="walk-forward evaluation with retraining instead (walk_forward.py; its options: "
                        "--walk-forward --help); exit 0 pass, 1 fail, 2 error")
    return p


def print_summary(report: dict, out=None) -> None:
    out = out or sys.stdout
    s, b = report["metrics"]["strategy"], report["metrics"]["benchmark"]
    print(f"{report['title']}  ({len(report['parameters']['symbols'])} symbols, model "
          f"{str(report.get('model_checksum'))[:12]})", file=out)
    if report["parameters"].get("data_source_label"):
        print(f"  {report['parameters']['data_source_label']}", file=out)
    print(f"  strategy:  total {fmt(s['total_return'], 'pct')}, CAGR {fmt(s['cagr'], 'pct')}, Sharpe "
          f"{fmt(s['sharpe'], 'num')}, max DD {fmt(s['max_drawdown'], 'pct')}, {s['trades']} closed round trips, costs "
          f"{fmt(s['costs_paid'], 'usd')}", file=out)
    print(f"  benchmark: total {fmt(b['total_return'], 'pct')}, CAGR {fmt(b['cagr'], 'pct')}, Sharpe "
          f"{fmt(b['sharpe'], 'num')}, max DD {fmt(b['max_drawdown'], 'pct')} (equal-weight buy & hold)", file=out)
    for h in report.get("halts", []):
        print(f"  risk halt: {h['halt']} on {h['date']} (equity {h['equity']:,.2f}); opening trades stopped "
              f"as the live cycle would", file=out)
    for w in report.get("warnings", []):
        print(f"  warning: {w}", file=out)
    st = report.get("trade_stats") or {}
    if st.get("trades"):
        still = (f"; {st['open_trades']} still open ({fmt(st['open_pnl'], 'usd')} at the last close) "
                 f"not in these figures" if st.get("open_trades") else "")
        print(f"  {st['trades']} closed round trips{still}: win rate {fmt(s.get('win_rate'), 'pct')}, "
              f"expectancy {fmt(st['expectancy'], 'usd')} a trade, best "
              f"{fmt((st['best'] or {}).get('pnl'), 'usd')}, worst {fmt((st['worst'] or {}).get('pnl'), 'usd')}, "
              f"held {fmt(st['average_holding_days'], 'num')} days on average", file=out)
    if report.get("short_period_note"):
        print(f"  note: {report['short_period_note']}", file=out)
    print("Go-live criteria:", file=out)
    for c in report["criteria"]:
        print(f"  {c['name']:<14} {fmt(c['value'], c['format']):>10}  required {c['rule']} "
              f"{fmt(c['threshold'], c['format']):<8}  {'PASS' if c['passed'] else 'FAIL'}", file=out)
    verdict = "PASS" if report["passed"] else "FAIL"
    binding_note = evidence_binding.not_evidence_line(report["parameters"].get("evidence"))
    if binding_note:
        print(f"  {binding_note}", file=out)
    note = ""
    if report["in_sample"]:
        note = " (IN-SAMPLE: does not count for going live)"
    elif binding_note:
        note = " (not gate evidence: does not count for going live)"
    elif not report["gate_eligible"]:
        note = " (looser criteria or costs than constants.py: does not count for going live)"
    print(f"Verdict: {verdict}{note}", file=out)
    print(f"Report: {report['report_html']}", file=out)


def main(argv=None) -> int:
    install_excepthook()
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--walk-forward" in argv:
        return walk_forward.main([a for a in argv if a != "--walk-forward"])
    args = _parser().parse_args(argv)
    if config.refuse_without_home():          # a mistyped TRADING_HOME: one line, nothing created
        return EXIT_ERROR
    try:
        # records go to logs/trading_YYYYMMDD.log (errors also to logs/errors.log); the console
        # gets the summary (stdout) and one ERROR line (stderr), not a copy of every log line
        setup_logging("trading", console=False)
    except config.ConfigError as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except OSError as exc:
        print(f"ERROR: cannot write logs under {config.path(C.LOG_DIR)} ({exc}): check TRADING_HOME and "
              "permissions", file=sys.stderr)
        return EXIT_ERROR
    _fill_defaults(args)
    if args.initial_cash <= 0:
        print("ERROR: --initial-cash must be positive", file=sys.stderr)
        return EXIT_ERROR
    opts = Options(
        start=args.start, end=args.end,
        symbols=args.symbols.split(",") if args.symbols else None,
        initial_cash=args.initial_cash,
        settings=_settings(args),
        criteria=Criteria(args.min_total_return, args.min_sharpe, args.max_drawdown, args.min_trades),
        in_sample=args.in_sample, fill=args.fill, model_path=args.model, data_path=args.data,
        record=not args.no_record, progress=(not args.no_progress) and sys.stderr.isatty())
    for name in ("start", "end"):
        value = getattr(args, name)
        if value:
            try:
                pd.Timestamp(value)
            except (ValueError, TypeError):
                print(f"ERROR: --{name} {value!r} is not a date: use YYYY-MM-DD", file=sys.stderr)
                return EXIT_ERROR
    log.info("backtest started (home=%s, in_sample=%s, fill=%s)", config.home(), opts.in_sample, opts.fill)
    try:
        report = run_backtest(opts)
    except Exception as exc:
        command_failed(log, "backtest", exc)
        return EXIT_ERROR
    print_summary(report)
    s = report["metrics"]["strategy"]
    log.info("backtest %s: %s; total return %.4f, Sharpe %s, max drawdown %.4f, %d trades; report %s",
             "PASSED" if report["passed"] else "FAILED", report["title"], s["total_return"],
             fmt(s["sharpe"], "num"), s["max_drawdown"], s["trades"], report["report_json"])
    return EXIT_PASS if report["passed"] else EXIT_FAIL



if __name__ == "__main__":
    sys.exit(main())
