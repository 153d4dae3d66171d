"""Prices from your own files (``DATA_SOURCE=csv``): one ``<SYMBOL>.csv`` per selected symbol.

The files live in ``TRADING_CSV_DIR`` (default ``$TRADING_HOME/data/csv``) and carry the columns
``Date, Open, High, Low, Close, Volume`` -- the format of Yahoo's and Stooq's daily downloads --
with the prices AS TRADED (not split-adjusted). The whole history of each file is used (no fixed
start date). Header names are matched case-insensitively; optional ``Dividends`` (cash per share
on its ex-date, 0 = none) and ``Stock Splits`` (new shares per old share: ``2`` or ``2:1``, 0 =
none) columns -- yfinance's names -- record the corporate actions; other extra columns (``Adj
Close``...) are ignored. The actions may instead (or also) be listed in ``corporate_actions.csv``
in the same folder: ``Symbol, Date, Dividends, Stock Splits[, Pay Date]``. ``BRK-B.csv`` serves
the ticker ``BRK-B``. Dates are ``YYYY-MM-DD`` (a time part is dropped).

``read_prices`` returns the same long frame the yfinance path returns, so the rest of the
pipeline is shared: ``data_collection.validate_prices`` (stale bars, gaps, absurd prices...),
``build_features`` and the processed file. A problem a person must fix raises
``CsvSourceError`` (a ``DataError``) with one line naming the file and the fix, before anything
is written: a missing folder or file, a missing column, a value that is not a number or a date.
Empty or ``null``/``NaN`` price cells (Yahoo writes ``null`` on some days) are not fatal: the
rows are dropped with one warning naming the file and the first line, the way the yfinance path
drops rows with missing prices; the session-gap rule then judges what is left.

The data should reach the last completed session: ``last_date`` gives the newest date in the
files, which ``data_collection.reference_session`` uses as the reference for the stale-bar and
gap rules (capped at the last completed NYSE session), so historical files can be evaluated and
backtested; the live cycle's own data-age check still refuses to trade on old data.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

import config
import constants as C
import corporate_actions
from errors import DataError

log = logging.getLogger("data")

PRICE_COLUMNS = list(C.PRICE_COLUMNS)
RAW_COLUMNS = list(C.RAW_COLUMNS)
NEEDED = ["Date"] + PRICE_COLUMNS
FORMAT_HINT = "Date,Open,High,Low,Close,Volume (a Yahoo or Stooq daily download)"
NULL_TEXT = {"", "null", "nan", "na", "n/a", "none", "-"}
ACTION_COLUMNS = ["Dividends", "Stock Splits"]          # yfinance's names
ACTIONS_HINT = "Symbol,Date,Dividends,Stock Splits[,Pay Date] (Stock Splits: 2 or 2:1 for a 2-for-1 split, 0 = none)"


class CsvSourceError(DataError):
    """A CSV price file that cannot be used; the message names the file and the fix."""


def file_for(symbol: str, directory: Path | None = None) -> Path:
    return (directory or config.csv_dir()) / f"{symbol}.csv"


def _check_dir(directory: Path) -> None:
    if not directory.is_dir():
        raise CsvSourceError(f"CSV folder {directory} not found (DATA_SOURCE=csv): create it and put one "
                             f"<SYMBOL>.csv per symbol of selected_stocks.txt in it, or set TRADING_CSV_DIR "
                             f"to the folder that holds them")


def read_symbol(symbol: str, directory: Path | None = None, warn: bool = True) -> pd.DataFrame:
    """One symbol's file as long-format rows (Date, Symbol, Open, High, Low, Close, Volume)."""
    directory = Path(directory) if directory else config.csv_dir()
    path = file_for(symbol, directory)
    if not path.is_file():
        raise CsvSourceError(f"{path} not found: save {symbol}'s daily prices there as {FORMAT_HINT}, "
                             f"or remove {symbol} from selected_stocks.txt")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as exc:
        reason = " ".join(str(exc).split())[:160]
        raise CsvSourceError(f"{path} cannot be read as CSV ({reason}): replace it with a file in the "
                             f"format {FORMAT_HINT}") from None
    by_lower = {str(c).strip().lower(): c for c in frame.columns}
    missing = [c for c in NEEDED if c.lower() not in by_lower]
    if missing:
        found = ", ".join(str(c) for c in frame.columns) or "none"
        raise CsvSourceError(f"{path} lacks the column(s) {', '.join(missing)} (found: {found}): the header "
                             f"must be {FORMAT_HINT}; names are case-insensitive, extra columns are allowed")
    extra = [c for c in ACTION_COLUMNS if c.lower() in by_lower]
    frame = frame[[by_lower[c.lower()] for c in NEEDED + extra]]
    frame.columns = NEEDED + extra
    if frame.empty:
        raise CsvSourceError(f"{path} has a header but no rows: save {symbol}'s full daily history there")
    text = frame.apply(lambda col: col.str.strip())
    dates = pd.to_datetime(text["Date"].str.slice(0, 10), format="%Y-%m-%d", errors="coerce")
    bad_date = dates.isna().to_numpy()
    if bad_date.any():
        i = int(np.argmax(bad_date))
        raise CsvSourceError(f"{path} line {i + 2}: Date {text['Date'].iloc[i]!r} is not a date: write dates "
                             f"as YYYY-MM-DD (the Yahoo/Stooq download format)")
    values = {}
    null_rows = np.zeros(len(text), dtype=bool)
    for col in PRICE_COLUMNS:
        raw = text[col]
        is_null = raw.str.lower().isin(NULL_TEXT).to_numpy()
        number = pd.to_numeric(raw.where(~is_null, None), errors="coerce")
        bad = number.isna().to_numpy() & ~is_null
        if bad.any():
            i = int(np.argmax(bad))
            raise CsvSourceError(f"{path} line {i + 2}: {col} {raw.iloc[i]!r} is not a number: fix or delete "
                                 f"that line (numbers use '.' as the decimal point, no thousands separator)")
        if col != "Volume":
            null_rows |= is_null
        values[col] = number.to_numpy(float)
    for col in extra:
        values[col] = _action_values(path, text[col], col)
    out = pd.DataFrame({"Date": dates.dt.normalize(), "Symbol": symbol, **values})
    if null_rows.any() and warn:
        first = int(np.argmax(null_rows))
        log.warning("%s: %d rows with an empty or null price (first at line %d) dropped -- fix: none needed "
                    "if they are holidays; otherwise download the file again", path, int(null_rows.sum()),
                    first + 2)
    if null_rows.any():
        out = out[~null_rows]
    return out[RAW_COLUMNS + extra].reset_index(drop=True)


def _action_values(path: Path, raw: pd.Series, col: str) -> np.ndarray:
    """A ``Dividends`` or ``Stock Splits`` column as numbers (empty = 0; a split may be ``2:1``)."""
    out = np.zeros(len(raw))
    for i, cell in enumerate(raw.tolist()):
        text = str(cell).strip()
        if text.lower() in NULL_TEXT:
            continue
        try:
            if col == "Stock Splits" and (":" in text or "/" in text):
                new, old = text.replace("/", ":").split(":", 1)
                out[i] = float(new) / float(old)
            else:
                out[i] = float(text)
        except (ValueError, ZeroDivisionError):
            raise CsvSourceError(f"{path} line {i + 2}: {col} {text!r} is not a number: write the cash "
                                 f"dividend per share, or the split as 2 or 2:1 (0 or empty = none)") from None
        if out[i] < 0:
            raise CsvSourceError(f"{path} line {i + 2}: {col} {text!r} is negative: write the cash dividend "
                                 f"per share, or the split as 2 or 2:1 (0 or empty = none)")
    return out


def read_actions(symbols, directory=None) -> pd.DataFrame:
    """The actions listed in ``corporate_actions.csv`` of the CSV folder (none when there is no
    such file) for ``symbols``, as a ``corporate_actions`` frame. Errors name the file and the fix."""
    directory = Path(directory) if directory else config.csv_dir()
    path = directory / C.CSV_ACTIONS_FILE
    if not path.is_file():
        return corporate_actions.empty()
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as exc:
        reason = " ".join(str(exc).split())[:160]
        raise CsvSourceError(f"{path} cannot be read as CSV ({reason}): write it as {ACTIONS_HINT}") from None
    by_lower = {str(c).strip().lower(): c for c in frame.columns}
    if "symbol" not in by_lower or "date" not in by_lower or not any(c.lower() in by_lower for c in ACTION_COLUMNS):
        found = ", ".join(str(c) for c in frame.columns) or "none"
        raise CsvSourceError(f"{path} lacks Symbol, Date or an action column (found: {found}): write it as "
                             f"{ACTIONS_HINT}")
    text = frame.apply(lambda col: col.str.strip())
    dates = pd.to_datetime(text[by_lower["date"]].str.slice(0, 10), format="%Y-%m-%d", errors="coerce")
    if dates.isna().any():
        i = int(np.argmax(dates.isna().to_numpy()))
        raise CsvSourceError(f"{path} line {i + 2}: Date {text[by_lower['date']].iloc[i]!r} is not a date: "
                             f"write dates as YYYY-MM-DD")
    out = pd.DataFrame({"Date": dates, "Symbol": text[by_lower["symbol"]].str.upper()})
    out["Dividend"] = (_action_values(path, text[by_lower["dividends"]], "Dividends")
                       if "dividends" in by_lower else 0.0)
    out["Split"] = (_action_values(path, text[by_lower["stock splits"]], "Stock Splits")
                    if "stock splits" in by_lower else 0.0)
    if "pay date" in by_lower:
        out["PayDate"] = pd.to_datetime(text[by_lower["pay date"]].str.slice(0, 10), format="%Y-%m-%d",
                                        errors="coerce")
    return corporate_actions.normalize(out[out["Symbol"].isin([str(s).upper() for s in symbols])])


def read_prices(symbols, start=None, end=None, directory=None, warn: bool = True) -> tuple[pd.DataFrame, dict[str, str]]:
    """Prices of ``symbols`` in [start, end] from their CSV files: (long frame, {}) -- the same
    shape ``data_collection.fetch_yfinance`` returns. Raises CsvSourceError on the first file
    that cannot be used."""
    directory = Path(directory) if directory else config.csv_dir()
    _check_dir(directory)
    frames = [read_symbol(sym, directory, warn) for sym in symbols]
    raw = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=RAW_COLUMNS)
    action_cols = [c for c in ACTION_COLUMNS if c in raw.columns]
    if action_cols:
        raw[action_cols] = raw[action_cols].fillna(0.0)
    if start is not None:
        raw = raw[raw["Date"] >= pd.Timestamp(start)]
    if end is not None:
        raw = raw[raw["Date"] <= pd.Timestamp(end)]
    return raw.reset_index(drop=True), {}


def last_date(symbols, directory=None) -> pd.Timestamp:
    """The newest date across the symbols' files (the reference for the stale-bar rule)."""
    raw, _ = read_prices(symbols, directory=directory, warn=False)
    if raw.empty:
        folder = Path(directory) if directory else config.csv_dir()
        raise CsvSourceError(f"the CSV files in {folder} hold no usable row: save each symbol's daily prices "
                             f"as {FORMAT_HINT}")
    return pd.Timestamp(raw["Date"].max())
