"""Corporate actions: splits and cash dividends, the ONE home of how they change prices and positions.

The price store keeps what was traded (unadjusted OHLCV, ``data/raw_prices.csv``) and the actions
beside it (``data/corporate_actions.csv``: ``Date`` = ex-date, ``Symbol``, ``Dividend`` = cash per
share, ``Split`` = new shares per old share (2.0 for a 2:1 split, 0.1 for a 1:10 reverse split,
1.0 = none), ``PayDate`` = the dividend's pay date or empty). Everything else is computed:

* ``adjust`` -- the back-adjusted series that ``data_collection.build_features`` (training, live
  inference, backtests) reads: every bar before an ex-date is scaled so the series is continuous
  across the action (price x 1/split x (1 - dividend / previous close), volume x split). The
  latest bar is never changed, so a new action never leaves two scales in a store: the store holds
  raw prices, and the adjustment is redone from the whole history each time.
* ``unexplained_jumps`` -- the data-validation rule that tells a split from a bad tick: on the
  adjusted series a close-to-close move above ``MAX_DAILY_MOVE`` is not explained by a recorded
  action (a recorded split was divided out), so it is refused for that symbol.
* ``position_events`` -- what an action does to a held position, used by BOTH the paper broker
  (``PaperBroker.apply_corporate_actions``) and the backtest engine (at the start of each bar),
  so paper and backtest stay equal: a split multiplies the quantity and divides the average price
  (a fractional share is paid as cash in lieu at the post-split price: a long receives it, a
  short pays it); a cash dividend is credited to a long and charged to a short, for the quantity
  held when the ex-date opens, and paid on its pay date (on the ex-date when no pay date is known,
  which is the case for yfinance and for ``Dividends`` columns of CSV files).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd

import config
import constants as C
from errors import DataError
from fileutil import atomic_write_with

log = logging.getLogger("data")

ACTION_COLUMNS = ["Date", "Symbol", "Dividend", "Split", "PayDate"]
SPLIT = "SPLIT"
DIVIDEND = "DIVIDEND"


# =========================================================================== the actions frame

def empty() -> pd.DataFrame:
    return pd.DataFrame({"Date": pd.Series(dtype="datetime64[ns]"), "Symbol": pd.Series(dtype=object),
                         "Dividend": pd.Series(dtype=float), "Split": pd.Series(dtype=float),
                         "PayDate": pd.Series(dtype="datetime64[ns]")})


def normalize(frame: pd.DataFrame | None) -> pd.DataFrame:
    """A clean actions frame: one row per (Symbol, ex-date) with Dividend (0 = none) and Split
    (1 = none; yfinance's 0 also means none); rows with neither are dropped."""
    if frame is None or len(frame) == 0:
        return empty()
    df = frame.copy()
    for col, default in (("Dividend", 0.0), ("Split", 1.0)):
        df[col] = pd.to_numeric(df[col], errors="coerce") if col in df.columns else default
        df[col] = df[col].fillna(default)
    df.loc[df["Split"] <= 0, "Split"] = 1.0
    df["PayDate"] = pd.to_datetime(df["PayDate"], errors="coerce") if "PayDate" in df.columns else pd.NaT
    when = pd.to_datetime(df["Date"])
    if when.dt.tz is not None:
        when = when.dt.tz_localize(None)
    df["Date"] = when.dt.normalize()
    df["Symbol"] = df["Symbol"].astype(str).str.upper()
    df = df[(df["Dividend"] != 0) | (df["Split"] != 1.0)]
    df = (df.groupby(["Symbol", "Date"], as_index=False, sort=True)
          .agg({"Dividend": "sum", "Split": "prod", "PayDate": "max"}))
    return df[ACTION_COLUMNS].reset_index(drop=True)


def merge(stored: pd.DataFrame, fetched: pd.DataFrame, replace_symbols=()) -> pd.DataFrame:
    """Stored actions plus newly fetched ones; a fetched (Symbol, ex-date) replaces the stored
    row, and ``replace_symbols`` (whose whole history was refetched) keep only the fetched rows."""
    stored, fetched = normalize(stored), normalize(fetched)
    if len(replace_symbols):
        stored = stored[~stored["Symbol"].isin(list(replace_symbols))]
    both = pd.concat([stored, fetched], ignore_index=True) if len(fetched) else stored
    both = both.drop_duplicates(["Symbol", "Date"], keep="last")
    return both.sort_values(["Symbol", "Date"]).reset_index(drop=True)


def store_path() -> Path:
    return config.path(C.ACTIONS_FILE)


def read_store(path=None) -> pd.DataFrame:
    """The stored actions (``data/corporate_actions.csv``); none when the file does not exist."""
    path = Path(path) if path else store_path()
    if not path.exists():
        return empty()
    try:
        frame = pd.read_csv(path, dtype={"Symbol": str})
    except Exception as exc:
        raise DataError(f"{path} cannot be read ({type(exc).__name__}): delete it and run "
                        "./run_daily_data_update.sh --force to fetch the actions again") from None
    missing = [c for c in ("Date", "Symbol", "Dividend", "Split") if c not in frame.columns]
    if missing:
        raise DataError(f"{path} lacks the column(s) {', '.join(missing)}: delete it and run "
                        "./run_daily_data_update.sh --force")
    return normalize(frame)


def write_store(actions: pd.DataFrame, path=None) -> Path:
    path = Path(path) if path else store_path()
    frame = normalize(actions)
    return atomic_write_with(path, lambda tmp: frame.to_csv(tmp, index=False, date_format="%Y-%m-%d"))


# =========================================================================== adjusted prices

def factors(raw: pd.DataFrame, actions: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Per row of ``raw`` (Date, Symbol, Close): (price factor, volume factor) such that
    adjusted price = raw price x price factor and adjusted volume = raw volume x volume factor.
    Both are 1 on and after the last action of the symbol. A dividend's factor uses the raw close
    of the session before its ex-date."""
    price_f = np.ones(len(raw))
    vol_f = np.ones(len(raw))
    actions = normalize(actions)
    if not len(actions) or not len(raw):
        return price_f, vol_f
    dates = pd.to_datetime(raw["Date"]).dt.normalize().to_numpy()
    symbols = raw["Symbol"].astype(str).to_numpy()
    close = pd.to_numeric(raw["Close"], errors="coerce").to_numpy(float)
    for sym, acts in actions.groupby("Symbol", sort=False):
        rows = np.flatnonzero(symbols == sym)
        if not len(rows):
            continue
        rows = rows[np.argsort(dates[rows], kind="mergesort")]
        d = dates[rows]
        for ex, div, split in zip(acts["Date"].to_numpy(), acts["Dividend"].to_numpy(float),
                                  acts["Split"].to_numpy(float)):
            before = rows[d < ex]
            if not len(before):
                continue
            mult = 1.0 / split
            if div:
                prev = close[before[-1]]
                if math.isfinite(prev) and prev > div:
                    mult *= 1.0 - div / prev
            price_f[before] *= mult
            vol_f[before] *= split
    return price_f, vol_f


def adjust(raw: pd.DataFrame, actions: pd.DataFrame) -> pd.DataFrame:
    """THE adjusted series: ``raw`` (long OHLCV) back-adjusted for ``actions``, same columns plus
    ``AdjFactor`` (adjusted price / raw price; the backtest divides by it to trade raw prices)."""
    price_f, vol_f = factors(raw, actions)
    out = raw.copy()
    for col in ("Open", "High", "Low", "Close"):
        out[col] = pd.to_numeric(out[col], errors="coerce").to_numpy(float) * price_f
    out["Volume"] = pd.to_numeric(out["Volume"], errors="coerce").to_numpy(float) * vol_f
    out["AdjFactor"] = price_f
    return out


def unexplained_jumps(df: pd.DataFrame, actions: pd.DataFrame) -> list[tuple[pd.Timestamp, float]]:
    """The data rule that tells a split from a bad tick. ``df``: one symbol's raw rows sorted by
    date. Returns [(date, close / previous close)] for each day whose move on the adjusted series
    is above ``MAX_DAILY_MOVE``: a recorded split was divided out, so what is left is a bad tick
    or a split nobody recorded."""
    if len(df) < 2:
        return []
    adjusted = adjust(df, actions)["Close"].to_numpy(float)
    ratio = adjusted[1:] / adjusted[:-1]
    bad = np.flatnonzero(np.abs(ratio - 1.0) > C.MAX_DAILY_MOVE)
    dates = pd.to_datetime(df["Date"]).to_numpy()
    return [(pd.Timestamp(dates[i + 1]), float(ratio[i])) for i in bad]


def jump_fix(symbol: str, day, ratio: float, record_where: str, bad_tick_fix: str) -> str:
    """The fix a person reads for an unexplained jump (one home for the wording); the source
    says where a split is recorded and how a bad bar is corrected."""
    k = ratio if ratio >= 1 else 1.0 / ratio
    return (f"if {symbol} split on {pd.Timestamp(day).date()} (about {k:.2f}:1), record it ({record_where}); "
            f"if it is a bad tick, {bad_tick_fix}; a real move this large needs MAX_DAILY_MOVE raised")


# =========================================================================== positions

@dataclass(frozen=True)
class PositionEvent:
    """What one action does to one position. ``quantity_change`` applies on the ex-date;
    ``cash_change`` is paid on ``pay_date`` (cash in lieu of a split: on the ex-date)."""
    kind: str                   # SPLIT or DIVIDEND
    symbol: str
    ex_date: date
    pay_date: date
    quantity_before: int
    quantity_change: int
    cash_change: float
    new_avg_price: float | None     # SPLIT: the average price per new share
    note: str


def position_events(symbol: str, quantity: int, avg_price: float, action, prev_close: float | None
                    ) -> list[PositionEvent]:
    """The events one action row (Date, Dividend, Split, PayDate) causes on a position of signed
    ``quantity`` held when its ex-date opens. ``prev_close``: the raw close before the ex-date
    (prices the cash in lieu of a fractional share). Splits apply before dividends of the same
    ex-date (a dividend is quoted per new share)."""
    if not quantity:
        return []
    ex = pd.Timestamp(action["Date"]).date()
    out: list[PositionEvent] = []
    split = float(action["Split"]) if pd.notna(action["Split"]) else 1.0
    if split > 0 and split != 1.0:
        exact = quantity * split
        new_qty = int(math.floor(exact + 1e-9)) if quantity > 0 else -int(math.floor(-exact + 1e-9))
        fraction = exact - new_qty
        price_after = (prev_close / split) if prev_close else (avg_price / split)
        cash = round(fraction * price_after, 2)
        out.append(PositionEvent(SPLIT, symbol, ex, ex, quantity, new_qty - quantity, cash,
                                 avg_price / split,
                                 f"split {split:g}:1: {quantity} -> {new_qty} shares"
                                 + (f", cash in lieu of {fraction:+.4f} share(s) {cash:+.2f}" if cash else "")))
        quantity = new_qty
    dividend = float(action["Dividend"]) if pd.notna(action["Dividend"]) else 0.0
    if dividend and quantity:
        pay = action.get("PayDate") if hasattr(action, "get") else None
        pay_date = pd.Timestamp(pay).date() if pay is not None and pd.notna(pay) else ex
        cash = round(quantity * dividend, 2)
        out.append(PositionEvent(DIVIDEND, symbol, ex, pay_date, quantity, 0, cash, None,
                                 f"dividend {dividend:g}/share on {quantity} shares "
                                 f"({'credited' if cash > 0 else 'charged to the short'}), "
                                 f"paid {pay_date.isoformat()}"))
    return out


def actions_on(actions: pd.DataFrame, day) -> pd.DataFrame:
    """The actions whose ex-date is ``day``."""
    if not len(actions):
        return actions
    return actions[actions["Date"] == pd.Timestamp(day).normalize()]


def actions_between(actions: pd.DataFrame, after, through) -> pd.DataFrame:
    """The actions with ``after`` < ex-date <= ``through`` (``after`` None: from the start)."""
    if not len(actions):
        return actions
    keep = actions["Date"] <= pd.Timestamp(through).normalize()
    if after is not None:
        keep &= actions["Date"] > pd.Timestamp(after).normalize()
    return actions[keep].sort_values(["Date", "Symbol"])
