"""The daily data pipeline: universe -> download -> validate -> features -> processed CSV.

Run by ``./run_daily_data_update.sh [--force]`` (cron) or ``python data_collection.py``.

1. ``load_universe`` reads ``selected_stocks.txt`` (one ticker a line, ``#`` comments).
2. Prices come from yfinance in one batched call under an overall deadline, with retry and
   backoff for rate-limited symbols (``DATA_SOURCE=yfinance``), or from the deterministic offline
   generator in ``sample_data.py`` (``DATA_SOURCE=sample``), or from your own ``<SYMBOL>.csv``
   files (``DATA_SOURCE=csv``, ``csv_source.py``). Raw prices are kept in
   ``data/raw_prices.csv`` so the next run fetches only the missing days; ``--force`` refetches.
3. ``validate_prices`` finds, per symbol, what yfinance does not raise: no data (delisted,
   unknown, rate-limited), stale last bars, gaps against the NYSE sessions, non-positive or
   absurd prices. Each problem is logged with the symbol and the fix; healthy symbols carry on.
4. ``build_features`` is THE feature function: training, live inference and backtests all call
   it. Features are causal: a row depends only on its symbol's rows up to its date. With
   ``REDDIT_SENTIMENT`` on, ``load_processed`` (what training, the live cycle, the backtest and the
   walk-forward read) adds the recorded Reddit sentiment, point in time (``sentiment_store.py``),
   and ``feature_columns`` names the model inputs.
5. ``processed_stock_data.csv`` is written atomically, with zero NaN, and never replaced by a
   worse file (fewer symbols, older data) unless ``--force``.
"""
from __future__ import annotations

import argparse
import json
import logging
import re
import sys
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

import alerts
import config
import corporate_actions
import csv_source
from errors import DataError, UserFacingError, install_excepthook
import constants as C
import market_calendar
from fileutil import atomic_write_text, atomic_write_with
from logging_setup import setup_logging
import sample_data
import sentiment_store

log = logging.getLogger("data")

PRICE_COLUMNS = list(C.PRICE_COLUMNS)
RAW_COLUMNS = list(C.RAW_COLUMNS)
FEATURE_COLUMNS = list(C.FEATURE_COLUMNS)
ACTION_SOURCE_COLUMNS = ["Dividends", "Stock Splits"]      # yfinance's names (CSV files may carry them too)
TICKER_RE = re.compile(r"^[A-Z][A-Z0-9]{0,5}([.-][A-Z]{1,2})?$")


@dataclass
class Problem:
    symbol: str
    kind: str        # no_data, stale, gaps, bad_price, absurd_move, too_short, nan_rows, duplicates, ...
    message: str
    fix: str
    fatal: bool = True   # True: the symbol is dropped; False: repaired and kept (a warning)

    def __str__(self) -> str:
        return f"{self.symbol}: {self.message} -- fix: {self.fix}"


# ----------------------------------------------------------------------------- universe
def load_universe(path=None) -> list[str]:
    """Tickers from ``selected_stocks.txt``; an invalid line is an error naming its number."""
    if path is None:
        path = config.path(C.UNIVERSE_FILE)
        if not path.exists():                   # a fresh TRADING_HOME uses the project's list
            path = config.PROJECT_DIR / C.UNIVERSE_FILE
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path} not found: create it with one ticker a line (e.g. AAPL)")
    symbols: list[str] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        ticker = text.upper()
        if not TICKER_RE.match(ticker):
            raise DataError(f"{path.name} line {number}: {text!r} is not a valid ticker "
                            f"(one symbol a line, like AAPL or BRK-B; '#' starts a comment)")
        if ticker in symbols:
            log.warning("%s line %d: %s is listed twice; using it once", path.name, number, ticker)
            continue
        symbols.append(ticker)
    if not symbols:
        raise DataError(f"{path} lists no ticker: add one symbol a line")
    return symbols


# ----------------------------------------------------------------------------- downloading
class _YFErrorCapture(logging.Handler):
    """yfinance reports per-ticker failures only through its logger: collect them."""

    LINE = re.compile(r"^\[(?P<syms>[^\]]*)\]:\s*(?P<err>.*)$", re.S)

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.errors: dict[str, str] = {}
        self.lines = 0                  # what yfinance logged (kept out of our logs: one line each
        self.first = ""                 # per symbol and retry buried the diagnosis)

    def emit(self, record):
        try:
            message = record.getMessage()
        except Exception:
            return
        if record.levelno >= logging.WARNING:
            self.lines += 1
            self.first = self.first or " ".join(message.split())[:300]
        match = self.LINE.match(message.strip())
        if not match:
            return
        for sym in re.findall(r"'([^']+)'", match.group("syms")):
            self.errors[sym.upper()] = match.group("err").strip()


def _is_rate_limit(message: str) -> bool:
    return bool(re.search(r"rate.?limit|too many requests|YFRateLimitError|\b429\b", message, re.I))


def _call_with_deadline(func, deadline_s: float):
    """Run ``func`` in a daemon thread; give up after ``deadline_s`` seconds (yfinance can hang
    about 130 s per ticker on a network that drops packets)."""
    box: dict = {}

    def target():
        try:
            box["value"] = func()
        except BaseException as exc:       # re-raised in the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=target, name="yfinance-download", daemon=True)
    thread.start()
    thread.join(max(deadline_s, 0.0))
    if thread.is_alive():
        raise DataError(f"download did not finish within {deadline_s:.0f} s (DOWNLOAD_DEADLINE_S): "
                        f"check the network (curl -I https://query1.finance.yahoo.com) and rerun")
    if "error" in box:
        raise box["error"]
    return box.get("value")


def _yf_frame_to_long(frame: pd.DataFrame | None) -> pd.DataFrame:
    """yfinance's (Price, Ticker) MultiIndex frame -> long format, all-NaN rows dropped."""
    if frame is None or frame.empty:
        return pd.DataFrame(columns=RAW_COLUMNS)
    if not isinstance(frame.columns, pd.MultiIndex):
        raise DataError("unexpected yfinance frame layout (no (Price, Ticker) columns): "
                        "pip install --upgrade yfinance, or report the version in use")
    long = frame.stack(level=1, future_stack=True)
    long.index.names = ["Date", "Symbol"]
    long = long.reset_index()
    missing = [c for c in PRICE_COLUMNS if c not in long.columns]
    if missing:
        raise DataError(f"yfinance returned no {missing} columns")
    long = long[RAW_COLUMNS + [c for c in ACTION_SOURCE_COLUMNS if c in long.columns]]
    long["Date"] = pd.to_datetime(long["Date"]).dt.tz_localize(None).dt.normalize()
    long["Symbol"] = long["Symbol"].astype(str).str.upper()
    return long.dropna(subset=["Open", "High", "Low", "Close"], how="all").reset_index(drop=True)


def fetch_yfinance(symbols, start, end, session=None, deadline_s=None, retries=None,
                   backoff_s=None) -> tuple[pd.DataFrame, dict[str, str]]:
    """Daily OHLCV for ``symbols`` in [start, end] (inclusive) from Yahoo, in one batched call.

    Returns (long frame, {symbol: error}) for symbols that came back empty. Rate-limited symbols
    are retried with exponential backoff, all within one overall deadline."""
    import yfinance as yf   # late: a slow import, needed only when downloading (never for the sample data)

    warnings.filterwarnings("ignore", module="yfinance")     # its pandas deprecation chatter
    deadline_s = C.DOWNLOAD_DEADLINE_S if deadline_s is None else deadline_s
    retries = C.DOWNLOAD_RETRIES if retries is None else retries
    backoff_s = C.DOWNLOAD_BACKOFF_S if backoff_s is None else backoff_s
    cache_dir = config.path("data/yfinance_cache")
    cache_dir.mkdir(parents=True, exist_ok=True)
    try:
        yf.set_tz_cache_location(str(cache_dir))
    except Exception:                       # already set in this process: harmless
        pass
    stop_at = time.monotonic() + deadline_s
    pending = list(symbols)
    frames, errors = [], {}
    attempt = 0
    while pending:
        capture = _YFErrorCapture()
        yf_logger = logging.getLogger("yfinance")
        yf_logger.addHandler(capture)
        propagate, yf_logger.propagate = yf_logger.propagate, False
        try:
            end_exclusive = (pd.Timestamp(end) + pd.Timedelta(days=1)).strftime("%Y-%m-%d")
            frame = _call_with_deadline(
                lambda: yf.download(pending, start=pd.Timestamp(start).strftime("%Y-%m-%d"),
                                    end=end_exclusive, interval="1d", auto_adjust=False, actions=True,
                                    threads=True, progress=False, timeout=C.DOWNLOAD_TIMEOUT_S,
                                    session=session, multi_level_index=True, group_by="column"),
                stop_at - time.monotonic())
        finally:
            yf_logger.removeHandler(capture)
            yf_logger.propagate = propagate
        if capture.lines:
            log.info("yfinance logged %d warning/error line(s) (summarised below); the first: %s",
                     capture.lines, capture.first)
        long = _yf_frame_to_long(frame)
        got = set(long["Symbol"].unique())
        frames.append(long)
        failed = [s for s in pending if s not in got]
        for sym in failed:
            errors[sym] = capture.errors.get(sym, "no rows returned")
        for sym in got:
            errors.pop(sym, None)
        limited = [s for s in failed if _is_rate_limit(errors[s])]
        attempt += 1
        if not limited or attempt > retries:
            break
        wait = backoff_s * 2 ** (attempt - 1)
        if time.monotonic() + wait >= stop_at:
            log.warning("rate limited on %s; no time left before the deadline for another try",
                        ", ".join(limited))
            break
        log.warning("rate limited by Yahoo on %s; retrying in %.0f s (attempt %d of %d)",
                    ", ".join(limited), wait, attempt, retries)
        time.sleep(wait)
        pending = limited
    raw = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=RAW_COLUMNS)
    return _as_traded(raw), errors


def _as_traded(long: pd.DataFrame) -> pd.DataFrame:
    """Yahoo serves Open/High/Low/Close/Volume already adjusted for the splits it knows at fetch
    time (``auto_adjust=False`` only leaves dividends out): undo the splits of the fetched window,
    so the store holds the prices as traded and never changes scale when a new split appears."""
    if long.empty or "Stock Splits" not in long.columns:
        return long
    splits = split_actions(long)
    if not len(splits):
        return long
    price_f, vol_f = corporate_actions.factors(long, splits)
    out = long.copy()
    for col in ("Open", "High", "Low", "Close"):
        out[col] = out[col].to_numpy(float) / price_f
    out["Volume"] = out["Volume"].to_numpy(float) / vol_f
    return out


def split_actions(long: pd.DataFrame) -> pd.DataFrame:
    """The split rows of a long frame's ``Stock Splits`` column as an actions frame."""
    return corporate_actions.normalize(pd.DataFrame({
        "Date": long["Date"], "Symbol": long["Symbol"],
        "Split": pd.to_numeric(long["Stock Splits"], errors="coerce").fillna(0.0)}))


def actions_from_columns(long: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(prices without the action columns, the actions those columns hold): yfinance's
    ``Dividends`` / ``Stock Splits`` (0 means none), as yfinance and CSV files write them."""
    present = [c for c in ACTION_SOURCE_COLUMNS if c in long.columns]
    if not present:
        return long, corporate_actions.empty()
    actions = corporate_actions.normalize(pd.DataFrame({
        "Date": long["Date"], "Symbol": long["Symbol"],
        "Dividend": pd.to_numeric(long["Dividends"], errors="coerce") if "Dividends" in present else 0.0,
        "Split": pd.to_numeric(long["Stock Splits"], errors="coerce") if "Stock Splits" in present else 1.0}))
    return long.drop(columns=present), actions


def fetch_prices(symbols, start, end, force_source=None) -> tuple[pd.DataFrame, dict[str, str]]:
    """Prices from the configured source (``DATA_SOURCE``)."""
    source = force_source or config.data_source()
    if source == "sample":
        raw = sample_data.generate_prices(symbols)
        raw = raw[(raw["Date"] >= pd.Timestamp(start)) & (raw["Date"] <= pd.Timestamp(end))]
        return raw.reset_index(drop=True), {}
    if source == "csv":
        return csv_source.read_prices(symbols, None, end)     # the whole file's history: no fixed start
    return fetch_yfinance(symbols, start, end)


def reference_session() -> pd.Timestamp:
    """The session whose bar the data should reach: the last completed NYSE session (for the
    sample source: its last session; for csv: the newest date in the files, capped at that)."""
    if config.data_source() == "sample":
        return market_calendar.sessions(C.SAMPLE_START, C.SAMPLE_END)[-1]
    if config.data_source() == "csv":
        return min(market_calendar.last_completed_session(), csv_source.last_date(load_universe()))
    return market_calendar.last_completed_session()


# ----------------------------------------------------------------------------- validation
def validate_prices(raw: pd.DataFrame, symbols, reference=None,
                    actions: pd.DataFrame | None = None) -> tuple[pd.DataFrame, list[Problem]]:
    """Per-symbol checks of the raw (as traded) prices. Returns the healthy rows and every problem
    found (fatal ones drop their symbol, the others were repaired and are warnings). ``actions``:
    the recorded corporate actions; a jump they explain (a split) is not a problem, one they do not
    (``corporate_actions.unexplained_jumps``) refuses the symbol."""
    reference = pd.Timestamp(reference) if reference is not None else reference_session()
    problems: list[Problem] = []
    raw = raw.copy()
    raw["Date"] = pd.to_datetime(raw["Date"]).dt.normalize()
    raw["Symbol"] = raw["Symbol"].astype(str).str.upper()
    for col in PRICE_COLUMNS:
        raw[col] = pd.to_numeric(raw[col], errors="coerce")
    healthy = []
    all_sessions = market_calendar.sessions(raw["Date"].min(), reference) if len(raw) else pd.DatetimeIndex([])
    for sym in symbols:
        df = raw[raw["Symbol"] == sym].sort_values("Date")
        if df.empty or df[["Open", "High", "Low", "Close"]].isna().all().all():
            if config.data_source() == "csv":
                problems.append(Problem(sym, "no_data", f"no price row in {csv_source.file_for(sym)} up to "
                                        f"{reference.date()}", f"add {sym}'s daily prices to that file, or remove "
                                        f"{sym} from selected_stocks.txt"))
                continue
            problems.append(Problem(sym, "no_data", "no price data returned (delisted, unknown "
                                    "ticker or rate-limited)",
                                    "check the ticker on finance.yahoo.com; if it is delisted "
                                    "remove it from selected_stocks.txt, if rate-limited rerun later"))
            continue
        dupes = df["Date"].duplicated(keep="last")
        if dupes.any():
            problems.append(Problem(sym, "duplicates", f"{int(dupes.sum())} duplicate dates "
                                    f"(first {df.loc[dupes, 'Date'].iloc[0].date()}); kept the latest row",
                                    "none needed; rerun with --force if it repeats", fatal=False))
            df = df[~dupes]
        off = ~df["Date"].isin(all_sessions) & (df["Date"] <= reference)
        if off.any():
            problems.append(Problem(sym, "non_session", f"{int(off.sum())} rows on days the NYSE "
                                    f"was closed (first {df.loc[off, 'Date'].iloc[0].date()}); dropped",
                                    "none needed", fatal=False))
            df = df[~off]
        df = df[df["Date"] <= reference]
        nan_rows = df[["Open", "High", "Low", "Close"]].isna().any(axis=1)
        if nan_rows.any():
            problems.append(Problem(sym, "nan_rows", f"{int(nan_rows.sum())} rows with missing "
                                    f"prices (first {df.loc[nan_rows, 'Date'].iloc[0].date()}); dropped",
                                    "rerun ./run_daily_data_update.sh --force if it repeats", fatal=False))
            df = df[~nan_rows]
        df = df.assign(Volume=df["Volume"].fillna(0.0))
        if len(df) < C.MIN_HISTORY_ROWS:
            problems.append(Problem(sym, "too_short", f"only {len(df)} rows of history (need "
                                    f"{C.MIN_HISTORY_ROWS})", "use a symbol with a longer history "
                                    "or wait until it has one"))
            continue
        prices = df[["Open", "High", "Low", "Close"]]
        bad = (prices <= 0).any(axis=1) | (df["High"] < df["Low"]) | (df["Volume"] < 0)
        if bad.any():
            day = df.loc[bad, "Date"].iloc[0].date()
            problems.append(Problem(sym, "bad_price", f"non-positive or inconsistent price "
                                    f"(High < Low, price <= 0 or negative volume) on {day}",
                                    (f"correct that row of {csv_source.file_for(sym)}" if config.data_source() == "csv"
                                     else "rerun ./run_daily_data_update.sh --force") + "; if it persists "
                                    "remove the symbol from selected_stocks.txt"))
            continue
        too_high = (prices > C.MAX_PRICE).any(axis=1)
        if too_high.any():
            day = df.loc[too_high, "Date"].iloc[0].date()
            problems.append(Problem(sym, "absurd_move", f"absurd price on {day} (above "
                                    f"{C.MAX_PRICE:,.0f}, MAX_PRICE)", "correct that bar or rerun "
                                    "./run_daily_data_update.sh --force; if it persists remove the symbol "
                                    "from selected_stocks.txt"))
            continue
        jumps = corporate_actions.unexplained_jumps(
            df, actions[actions["Symbol"] == sym] if actions is not None and len(actions) else None)
        if jumps:
            day, ratio = jumps[0]
            problems.append(Problem(sym, "absurd_move", f"absurd price on {day.date()}: close x{ratio:.2f} in "
                                    f"one day (more than MAX_DAILY_MOVE {C.MAX_DAILY_MOVE:.0%}) with no "
                                    "recorded split; refused, not traded",
                                    _jump_fix(sym, day, ratio)))
            continue
        last = df["Date"].iloc[-1]
        behind = market_calendar.sessions_between(last, reference)
        if behind > C.STALE_AFTER_SESSIONS:
            # no survivorship by construction: a delisted (or halted) symbol keeps its history up to
            # its last bar, so backtests and walk-forwards see it; the live cycle's stale-symbol
            # guard (stale_symbols) gives it no new order, and a held one stops the cycle
            problems.append(Problem(sym, "stale", f"stale: last bar {last.date()} is {behind} "
                                    f"sessions behind {reference.date()}; its history up to that bar is kept "
                                    "(no new orders in it)",
                                    "the symbol may be halted or delisted: check it, and remove it "
                                    "from selected_stocks.txt if it no longer trades", fatal=False))
        expected = all_sessions[(all_sessions >= df["Date"].iloc[0]) & (all_sessions <= last)]
        missing = expected.difference(pd.DatetimeIndex(df["Date"]))
        if len(expected) and len(missing) / len(expected) > C.MAX_MISSING_SESSIONS_FRACTION:
            problems.append(Problem(sym, "gaps", f"{len(missing)} of {len(expected)} NYSE sessions "
                                    f"missing (first {missing[0].date()})",
                                    "rerun ./run_daily_data_update.sh --force; if it persists "
                                    "remove the symbol from selected_stocks.txt"))
            continue
        if len(missing):
            problems.append(Problem(sym, "gaps", f"{len(missing)} NYSE sessions missing "
                                    f"(first {missing[0].date()}); tolerated",
                                    "none needed", fatal=False))
        healthy.append(df)
    clean = pd.concat(healthy, ignore_index=True) if healthy else pd.DataFrame(columns=RAW_COLUMNS)
    return clean[RAW_COLUMNS].reset_index(drop=True), problems


def _jump_fix(sym: str, day, ratio: float) -> str:
    """The fix of an unexplained jump, in the words of the configured source."""
    if config.data_source() == "csv":
        path = csv_source.file_for(sym)
        return corporate_actions.jump_fix(
            sym, day, ratio, f"a 'Stock Splits' column in {path}, or a row in "
            f"{path.parent / C.CSV_ACTIONS_FILE}", f"correct that row of {path}") + "; then rerun " \
            "./run_daily_data_update.sh --force"
    return corporate_actions.jump_fix(
        sym, day, ratio, "Yahoo lists splits: rerun ./run_daily_data_update.sh --force to fetch them",
        "rerun ./run_daily_data_update.sh --force later, or remove the symbol from selected_stocks.txt")


# ----------------------------------------------------------------------------- features
def _rolling(values: np.ndarray, window: int, reducer) -> np.ndarray:
    """Each window reduced on its own (no running sums), so a value depends only on its window:
    bit-for-bit causal whatever came before or after."""
    out = np.full(values.shape[0], np.nan)
    if values.shape[0] >= window:
        view = np.lib.stride_tricks.sliding_window_view(values, window)
        out[window - 1:] = reducer(view)
    return out


def build_features(raw: pd.DataFrame) -> pd.DataFrame:
    """THE feature function (training, live inference and backtests all call it).

    ``raw``: long format with Date, Symbol, Open, High, Low, Close, Volume. Returns those
    columns plus ``FEATURE_COLUMNS``, sorted by Symbol then Date, with the warm-up rows of each
    symbol dropped (so zero NaN). Every feature is scale-free and causal: it uses only the
    symbol's rows up to that date, so ``build_features(raw[raw.Date <= d])`` equals the rows of
    ``build_features(raw)`` up to ``d``. Nothing here is fitted: scaling belongs to training.

    Features: log_return (close/prev close), gap (open/prev close), intraday_return
    (close/open), range ((high-low)/close), volatility_20 (std of the last 20 log returns),
    sma_ratio_20 (close / 20-day mean - 1), rsi_14 (14-day RSI scaled to [-0.5, 0.5]),
    volume_ratio_20 (log volume minus its 20-day mean).
    """
    missing = [c for c in RAW_COLUMNS if c not in raw.columns]
    if missing:
        raise DataError(f"build_features needs columns {RAW_COLUMNS}; missing {missing}")
    df = raw[RAW_COLUMNS].copy()
    df["Date"] = pd.to_datetime(df["Date"]).dt.normalize()
    df["Symbol"] = df["Symbol"].astype(str)
    df = df.sort_values(["Symbol", "Date"], kind="mergesort").reset_index(drop=True)
    window, rsi_window = C.FEATURE_VOL_WINDOW, C.FEATURE_RSI_WINDOW

    close = df["Close"].to_numpy(float)
    open_ = df["Open"].to_numpy(float)
    high = df["High"].to_numpy(float)
    low = df["Low"].to_numpy(float)
    volume = df["Volume"].to_numpy(float)
    pos = df.groupby("Symbol", sort=False).cumcount().to_numpy()   # row number within its symbol

    prev_close = np.roll(close, 1)
    prev_close[pos == 0] = np.nan
    with np.errstate(divide="ignore", invalid="ignore"):
        log_return = np.log(close / prev_close)
        gap = np.log(open_ / prev_close)
        intraday = np.log(close / open_)
        rng = (high - low) / close
        log_volume = np.log1p(np.maximum(volume, 0.0))

        vol = _rolling(log_return, window, lambda v: v.std(axis=1, ddof=1))
        vol[pos < window] = np.nan                           # window inside the symbol, returns defined
        sma = _rolling(close, window, lambda v: v.mean(axis=1))
        sma[pos < window - 1] = np.nan
        sma_ratio = close / sma - 1.0
        change = np.where(pos == 0, np.nan, close - prev_close)
        gains = _rolling(np.where(change > 0, change, 0.0), rsi_window, lambda v: v.mean(axis=1))
        losses = _rolling(np.where(change < 0, -change, 0.0), rsi_window, lambda v: v.mean(axis=1))
        rsi = np.where(losses > 0, 1.0 - 1.0 / (1.0 + gains / np.where(losses > 0, losses, 1.0)), 1.0) - 0.5
        rsi[pos < rsi_window] = np.nan
        vol_mean = _rolling(log_volume, window, lambda v: v.mean(axis=1))
        vol_mean[pos < window - 1] = np.nan
        volume_ratio = log_volume - vol_mean

    features = {
        "log_return": log_return, "gap": gap, "intraday_return": intraday, "range": rng,
        "volatility_20": vol, "sma_ratio_20": sma_ratio, "rsi_14": rsi,
        "volume_ratio_20": volume_ratio,
    }
    for name in FEATURE_COLUMNS:
        df[name] = features[name]
    values = df[FEATURE_COLUMNS].to_numpy()
    keep = (pos >= window) & np.isfinite(values).all(axis=1)
    return df.loc[keep].reset_index(drop=True)


def features_from_raw(raw: pd.DataFrame, actions: pd.DataFrame | None) -> pd.DataFrame:
    """``build_features`` of the raw prices adjusted for ``actions`` (``corporate_actions.adjust``):
    the processed rows, plus ``AdjFactor`` (adjusted / as-traded price; 1 on the latest bar), which
    the backtest divides out to trade the prices as they were."""
    adjusted = corporate_actions.adjust(raw, actions if actions is not None else corporate_actions.empty())
    features = build_features(adjusted)
    factor = adjusted[["Symbol", "Date", "AdjFactor"]].copy()
    factor["Date"] = pd.to_datetime(factor["Date"]).dt.normalize()
    return features.merge(factor, on=["Symbol", "Date"], how="left", validate="one_to_one")


def write_refused(problems: list[Problem], reference) -> Path:
    """The symbols the last update refused (``data/refused_symbols.json``, written atomically):
    the health check and the status read them."""
    refused = [{"symbol": p.symbol, "kind": p.kind, "line": str(p)} for p in problems if p.fatal]
    body = json.dumps({"session": str(pd.Timestamp(reference).date()), "refused": refused}, indent=1)
    return atomic_write_text(config.path(C.REFUSED_SYMBOLS_FILE), body)


def read_refused() -> list[dict]:
    """What ``write_refused`` stored; [] when no update wrote it yet or it is unreadable."""
    path = config.path(C.REFUSED_SYMBOLS_FILE)
    try:
        return list(json.loads(path.read_text(encoding="utf-8")).get("refused", []))
    except (OSError, ValueError, AttributeError):
        return []


# ----------------------------------------------------------------------------- files
def read_raw_prices(path=None) -> pd.DataFrame:
    path = Path(path) if path else config.path(C.RAW_PRICES_FILE)
    if not path.exists():
        return pd.DataFrame(columns=RAW_COLUMNS)
    try:
        df = pd.read_csv(path, parse_dates=["Date"])
    except Exception as exc:
        log.warning("raw price store %s is unreadable (%s); refetching everything", path, exc)
        return pd.DataFrame(columns=RAW_COLUMNS)
    if list(df.columns) != RAW_COLUMNS:
        log.warning("raw price store %s has unexpected columns; refetching everything", path)
        return pd.DataFrame(columns=RAW_COLUMNS)
    return df


def synthetic_open_share(frame: pd.DataFrame) -> float:
    """The share of rows (after each symbol's first) whose Open equals the previous session's
    Close: a source that fills Open from the last close (no real opening auction price)."""
    f = frame.sort_values(["Symbol", "Date"], kind="mergesort")
    same = f["Symbol"].to_numpy()[1:] == f["Symbol"].to_numpy()[:-1]
    if not same.any():
        return 0.0
    opens, prev = f["Open"].to_numpy(float)[1:][same], f["Close"].to_numpy(float)[:-1][same]
    return float(np.mean(np.isclose(opens, prev, rtol=1e-9, atol=1e-6)))


def synthetic_open_problem(frame: pd.DataFrame, path) -> str | None:
    """One line when the opens of ``frame`` (read from ``path``) look synthetic (share above
    SYNTHETIC_OPEN_MAX_SHARE): next-open fills would really happen at the decision's close."""
    share = synthetic_open_share(frame)
    if share <= C.SYNTHETIC_OPEN_MAX_SHARE:
        return None
    return (f"{path}: Open equals the previous Close on {share:.0%} of rows (synthetic opens, above "
            f"SYNTHETIC_OPEN_MAX_SHARE {C.SYNTHETIC_OPEN_MAX_SHARE:.0%}), so next-open fills would happen at the "
            f"decision's close: give the data real opening prices (the Open column of the CSV files, or "
            f"DATA_SOURCE=yahoo and ./run_daily_data_update.sh --force), or backtest with --fill next_close")


def feature_columns(sentiment: bool | None = None) -> list[str]:
    """The model's inputs: ``FEATURE_COLUMNS``, plus ``SENTIMENT_COLUMNS`` when ``sentiment``
    (default: ``REDDIT_SENTIMENT``)."""
    sentiment = C.REDDIT_SENTIMENT if sentiment is None else sentiment
    return list(C.FEATURE_COLUMNS) + (list(C.SENTIMENT_COLUMNS) if sentiment else [])


def frame_columns(features: pd.DataFrame) -> list[str]:
    """The model's inputs a features frame carries (``load_processed`` added the sentiment or not)."""
    return feature_columns(all(c in features.columns for c in C.SENTIMENT_COLUMNS))



def load_processed(path=None, sentiment: bool | None = None) -> pd.DataFrame:
    """Read and check ``processed_stock_data.csv``: every column present, zero NaN, no
    duplicate (Symbol, Date). A missing, empty, truncated or corrupt file is a ``DataError``
    naming the file and the fix. With ``sentiment`` (default: ``REDDIT_SENTIMENT``) the recorded
    Reddit sentiment is joined point in time (``sentiment_store.features_from_db``: the row of a
    session sees only the collection made before its close; neutral 0 where none was made)."""
    sentiment = C.REDDIT_SENTIMENT if sentiment is None else sentiment
    path = Path(path) if path else config.path(C.PROCESSED_DATA_FILE)
    fix = "run ./run_daily_data_update.sh --force to rebuild it"
    if not path.exists():
        raise DataError(f"{path} not found: {fix}")
    if path.stat().st_size == 0:
        raise DataError(f"{path} is empty: {fix}")
    try:
        df = pd.read_csv(path, parse_dates=["Date"])
    except Exception as exc:
        raise DataError(f"{path} cannot be read as CSV ({type(exc).__name__}: {exc}): {fix}") from None
    needed = RAW_COLUMNS + FEATURE_COLUMNS
    missing = [c for c in needed if c not in df.columns]
    if missing:
        raise DataError(f"{path} lacks columns {missing} (an older format or a damaged file): {fix}")
    if df.empty:
        raise DataError(f"{path} has no rows: {fix}")
    nan = df[needed].isna()
    if nan.any().any():
        first = int(np.argmax(nan.any(axis=1).to_numpy()))
        raise DataError(f"{path} has {int(nan.sum().sum())} missing values (first at line "
                        f"{first + 2}; a truncated or damaged file?): {fix}")
    if df.duplicated(["Symbol", "Date"]).any():
        raise DataError(f"{path} has duplicate (Symbol, Date) rows: {fix}")
    return sentiment_store.features_from_db(df) if sentiment else df


def stale_symbols(features: pd.DataFrame, universe, session) -> dict[str, str | None]:
    """The symbols of ``universe`` whose last bar is older than ``session`` (the session a
    cycle trades on): symbol -> date of its last bar, or None when it has no data at all.
    The live cycle opens nothing in them and stops when it holds one; the health check lists them."""
    session = pd.Timestamp(session).normalize()
    last = features.groupby("Symbol")["Date"].max()
    out: dict[str, str | None] = {}
    for sym in universe:
        if sym not in last.index:
            out[sym] = None
        elif pd.Timestamp(last[sym]).normalize() < session:
            out[sym] = str(pd.Timestamp(last[sym]).date())
    return out


def describe_stale(stale: dict) -> str:
    """``AAPL (last bar 2026-11-16), XYZ (no data)`` for log lines and errors."""
    return ", ".join(f"{s} ({'no data' if d is None else 'last bar ' + d})" for s, d in sorted(stale.items()))


def _csv_writer(df: pd.DataFrame):
    return lambda tmp: df.to_csv(tmp, index=False, date_format="%Y-%m-%d")


def write_processed(features: pd.DataFrame, force: bool = False, path=None, universe=None) -> Path:
    """Write the processed CSV atomically, refusing to replace a better file unless ``force``.
    Symbols of the current file that ``universe`` (selected_stocks.txt) no longer lists are not
    "lost": the person removed them."""
    path = Path(path) if path else config.path(C.PROCESSED_DATA_FILE)
    if features.empty:
        raise DataError("no feature rows to write")
    if features[RAW_COLUMNS + FEATURE_COLUMNS].isna().any().any():
        raise DataError("refusing to write processed data containing NaN (a bug in build_features)")
    if path.exists() and not force:
        try:
            old = pd.read_csv(path, usecols=["Date", "Symbol"], parse_dates=["Date"])
            old_syms, old_last = set(old["Symbol"]), old["Date"].max()
        except Exception:
            old_syms, old_last = set(), None           # an unreadable file is never "better"
        new_syms, new_last = set(features["Symbol"]), features["Date"].max()
        lost = sorted(old_syms - new_syms - ((old_syms - set(universe)) if universe is not None else set()))
        if lost:
            raise DataError(f"the new data lacks {', '.join(lost)}, present in the current {path.name}; "
                            "kept the current file (fix the symbols above, or rerun with --force "
                            "to accept fewer symbols)")
        if old_last is not None and new_last < old_last:
            raise DataError(f"the new data ends {new_last.date()}, before the current file's "
                            f"{old_last.date()}; kept the current file (rerun with --force to replace it)")
    return atomic_write_with(path, _csv_writer(features))


# ----------------------------------------------------------------------------- the job
def update(force: bool = False) -> dict:
    """One data update. Returns a summary; raises DataError when nothing usable came out."""
    symbols = load_universe()
    processed = config.path(C.PROCESSED_DATA_FILE)
    reference = reference_session()
    if not force and processed.exists():
        age_h = (time.time() - processed.stat().st_mtime) / 3600
        if age_h < C.FRESH_FILE_HOURS:
            try:
                head = pd.read_csv(processed, usecols=["Date", "Symbol"], parse_dates=["Date"])
                extra = sorted(set(head["Symbol"]) - set(symbols))
                if extra:       # the universe shrank: rebuild without them (a skip would keep them)
                    log.info("%s has %s, no longer in %s: rebuilding without %s", processed.name,
                             ", ".join(extra), C.UNIVERSE_FILE, "it" if len(extra) == 1 else "them")
                elif head["Date"].max() >= reference and set(symbols) <= set(head["Symbol"]):
                    log.info("%s is fresh (%.1f h old, reaches %s): skipping; use --force to rebuild",
                             processed.name, age_h, reference.date())
                    return {"skipped": True, "symbols": sorted(set(head["Symbol"])),
                            "rows": len(head), "last_date": str(head["Date"].max().date())}
            except Exception:
                pass

    stored = pd.DataFrame(columns=RAW_COLUMNS) if force else read_raw_prices()
    stored = stored[stored["Symbol"].isin(symbols)] if len(stored) else stored
    stored_actions = corporate_actions.empty() if force else corporate_actions.read_store()
    start = pd.Timestamp(C.HISTORY_START)
    source = config.data_source()
    if source == "csv":
        log.info("reading the whole history of %d CSV files in %s", len(symbols), config.csv_dir())
    elif len(stored) and set(symbols) <= set(stored["Symbol"]):
        last_per_symbol = stored.groupby("Symbol")["Date"].max()
        start = last_per_symbol.min() - pd.Timedelta(days=C.INCREMENTAL_OVERLAP_DAYS)
        log.info("incremental update from %s (stored history ends %s)", start.date(),
                 last_per_symbol.max().date())
    else:
        log.info("full download from %s for %d symbols", start.date(), len(symbols))
    fetched, errors = fetch_prices(symbols, start, reference)
    fetched, fetched_actions = actions_from_columns(fetched)
    if source == "csv":
        fetched_actions = pd.concat([fetched_actions, csv_source.read_actions(symbols)], ignore_index=True)
    if fetched.empty:
        sample = "; ".join(sorted({m for m in errors.values()}))[:300]
        if source == "csv":
            raise DataError(f"the CSV files in {config.csv_dir()} hold no row up to {reference.date()} for "
                            f"any of the {len(symbols)} symbols: save each symbol's daily prices there as "
                            f"{csv_source.FORMAT_HINT}; nothing was written")
        # yfinance words a network failure as "possibly delisted" for every symbol: say what it is
        raise DataError(f"the download returned no data for any of the {len(symbols)} symbols "
                        f"({sample or 'no rows'}): Yahoo is unreachable, down or rate-limiting "
                        f"this machine, not {len(symbols)} delistings. Check the network with "
                        f"curl -I https://query1.finance.yahoo.com and rerun later; nothing was written")
    for sym, message in sorted(errors.items()):
        log.warning("download failed for %s: %s", sym, message)
    if source == "csv" and len(stored):
        stored = stored[~stored["Symbol"].isin(set(fetched["Symbol"]))]      # the files are the truth
    if len(stored):
        merged = pd.concat([stored, fetched[RAW_COLUMNS]], ignore_index=True)
        merged["Date"] = pd.to_datetime(merged["Date"]).dt.normalize()
        merged = merged.drop_duplicates(["Symbol", "Date"], keep="last")
    else:
        merged = fetched[RAW_COLUMNS]
    replaced = sorted(set(fetched["Symbol"])) if source == "csv" else []
    actions = corporate_actions.merge(stored_actions, fetched_actions, replace_symbols=replaced)
    actions = actions[actions["Symbol"].isin(symbols)].reset_index(drop=True)
    clean, problems = validate_prices(merged, symbols, reference, actions)
    for problem in problems:
        (log.error if problem.fatal else log.warning)("%s", problem)
    write_refused(problems, reference)
    healthy = sorted(clean["Symbol"].unique())
    stale = {p.symbol for p in problems if p.kind == "stale"}
    if not set(healthy) - stale:             # only stale histories kept: the source is down, not delistings
        raise DataError("no healthy symbol: nothing written (see the problems above"
                        + ("; fix the CSV files named there)" if source == "csv" else
                           "; check the network with curl -I https://query1.finance.yahoo.com)"))
    corporate_actions.write_store(actions)
    atomic_write_with(config.path(C.RAW_PRICES_FILE), _csv_writer(
        merged.sort_values(["Symbol", "Date"])[RAW_COLUMNS]))
    features = features_from_raw(clean, actions)
    write_processed(features, force=force, universe=symbols)
    summary = {
        "skipped": False, "symbols": healthy,
        "dropped": sorted({p.symbol for p in problems if p.fatal}),
        "rows": len(features), "first_date": str(features["Date"].min().date()),
        "last_date": str(features["Date"].max().date()), "source": source,
        "actions": len(actions),
        "path": str(processed),
    }
    log.info("wrote %s: %d rows, %d symbols (%s), %s .. %s, zero NaN", processed.name,
             summary["rows"], len(healthy), ", ".join(healthy), summary["first_date"],
             summary["last_date"])
    if summary["dropped"]:
        log.error("dropped symbols: %s (see the reasons above)", ", ".join(summary["dropped"]))
    return summary


def main(argv=None) -> int:
    install_excepthook()
    parser = argparse.ArgumentParser(description="Download prices, validate them and rebuild "
                                     "processed_stock_data.csv.")
    parser.add_argument("--force", action="store_true",
                        help="refetch all history and rebuild even if the file is fresh or better")
    args = parser.parse_args(argv)
    try:
        config.trading_mode()
        config.data_source()
    except config.ConfigError as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return 2
    setup_logging("data_update")
    log.info("data update started (source=%s, home=%s, force=%s)", config.data_source(),
             config.home(), args.force)
    try:
        summary = update(force=args.force)
    except UserFacingError as exc:           # DataError, a read-only or full disk (StorageError)
        log.error("data update FAILED: %s", exc)
        alerts.send_alert("data_update_failed", str(exc), key=alerts.session_key("data_update"))
        return 1
    except Exception as exc:
        log.exception("data update FAILED with an unexpected error")
        alerts.send_alert("data_update_failed", f"unexpected {type(exc).__name__}: {exc}",
                          key=alerts.session_key("data_update"))
        return 1
    if summary.get("skipped"):
        print(f"up to date: {len(summary['symbols'])} symbols through {summary['last_date']} "
              "(use --force to rebuild)")
    else:
        print(f"wrote {summary['path']}: {summary['rows']} rows, {len(summary['symbols'])} symbols, "
              f"{summary['first_date']} .. {summary['last_date']}"
              + (f"; dropped {', '.join(summary['dropped'])}" if summary["dropped"] else ""))
    banner = config.data_source_banner()
    if banner:
        print(banner)
        log.warning("%s", banner)
    return 0


if __name__ == "__main__":
    sys.exit(main())
