"""The bundled offline data set (``DATA_SOURCE=sample``): SYNTHETIC prices, not market data.

The tickers are real (so the universe file and the rest of the system work unchanged) but every
price is made up by the generator below: AAPL at $27 here says nothing about Apple. The data
update, the backtest report and the status page say so wherever these prices show
(``constants.SAMPLE_LABEL``, ``config.data_source_banner``). Deterministic, realistic-looking
daily prices for demos and tests:

For each symbol (seeded by its name, so the same symbol always gets the same history), on the
NYSE sessions from ``SAMPLE_START`` to ``SAMPLE_END``:

* log returns ``r_t = mu + phi * (r_{t-1} - mu) + sigma_t * z_t`` with Student-t shocks;
* ``sigma_t`` follows a GARCH(1,1) (volatility clusters) around a per-symbol daily volatility;
* regime drifts (trends) that change every few months;
* overnight gaps: part of each day's move happens between the previous close and the open,
  with an occasional larger news gap;
* high/low around open and close, volume that rises with the size of the move.

The documented predictable component is ``phi = SAMPLE_AR_COEF`` (0.3): next-day returns are
weakly autocorrelated with today's, so a working model can beat predicting "no change"
(theoretical R^2 about phi^2 = 9 %) and a broken pipeline (shuffled targets, look-ahead
errors, scaling mismatches) cannot. Everything else is noise.
"""
from __future__ import annotations

import zlib
from functools import lru_cache

import numpy as np
import pandas as pd

import constants as C
import market_calendar


def _symbol_rng(symbol: str, seed: int) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(symbol.encode("utf-8"))])


def simulate_symbol(symbol: str, dates: pd.DatetimeIndex, seed: int | None = None,
                    phi: float | None = None) -> pd.DataFrame:
    seed = C.SAMPLE_SEED if seed is None else seed
    phi = C.SAMPLE_AR_COEF if phi is None else phi
    rng = _symbol_rng(symbol, seed)
    n = len(dates)
    start_price = float(np.exp(rng.uniform(np.log(20), np.log(900))))
    base_vol = rng.uniform(0.011, 0.024)                 # daily volatility
    omega, alpha, beta = base_vol ** 2 * 0.06, 0.08, 0.86  # GARCH(1,1), persistence 0.94
    shocks = rng.standard_t(5, size=n) / np.sqrt(5 / 3)   # unit-variance fat tails
    regime_len = rng.integers(40, 160, size=n // 40 + 2)
    regime_drift = rng.normal(0.0003, 0.0008, size=len(regime_len))
    drift = np.repeat(regime_drift, regime_len)[:n]

    returns = np.empty(n)
    var = base_vol ** 2
    prev = 0.0
    for t in range(n):
        sigma = np.sqrt(var)
        r = drift[t] + phi * (prev - drift[t]) + sigma * shocks[t]
        returns[t] = r
        var = omega + alpha * (r - drift[t]) ** 2 + beta * var
        prev = r
    close = start_price * np.exp(np.cumsum(returns))
    prev_close = np.concatenate([[start_price], close[:-1]])
    overnight_share = rng.uniform(0.2, 0.4, size=n)
    news = rng.random(n) < 0.01
    gap = returns * overnight_share + np.where(news, rng.normal(0, 2 * base_vol, n), 0.0)
    open_ = prev_close * np.exp(gap)
    wiggle = np.abs(rng.normal(0, base_vol * 0.6, size=(2, n)))
    high = np.maximum(open_, close) * np.exp(wiggle[0])
    low = np.minimum(open_, close) * np.exp(-wiggle[1])
    base_volume = rng.uniform(5e6, 6e7)
    volume = np.round(base_volume * np.exp(rng.normal(0, 0.25, n)) * (1 + 20 * np.abs(returns)))
    return pd.DataFrame({
        "Date": dates, "Symbol": symbol, "Open": open_.round(4), "High": high.round(4),
        "Low": low.round(4), "Close": close.round(4), "Volume": volume,
    })


@lru_cache(maxsize=8)
def _generate(symbols: tuple, start: str, end: str, seed: int) -> pd.DataFrame:
    dates = market_calendar.sessions(start, end)
    frames = [simulate_symbol(sym, dates, seed) for sym in symbols]
    return pd.concat(frames, ignore_index=True)


def generate_prices(symbols, start: str | None = None, end: str | None = None,
                    seed: int | None = None) -> pd.DataFrame:
    """Long-format OHLCV (Date, Symbol, Open, High, Low, Close, Volume) for ``symbols`` (period and
    seed default to SAMPLE_START, SAMPLE_END and SAMPLE_SEED)."""
    start = C.SAMPLE_START if start is None else start
    end = C.SAMPLE_END if end is None else end
    seed = C.SAMPLE_SEED if seed is None else seed
    return _generate(tuple(symbols), str(start), str(end), int(seed)).copy()
