"""Performance of a backtest: return and risk metrics of an equity curve, drawdowns, round trips,
trade statistics and monthly returns (the empyrical library's conventions; ``conventions()`` says
them in words for the report). ``analyse`` gives the strategy's and the benchmark's figures.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

import constants as C
from backtest_engine import EngineResult, Market
from broker_base import signed_quantity
from skill_stats import sharpe_ratio


def daily_returns(equity: pd.Series) -> pd.Series:
    """Daily simple returns of the equity curve (first day dropped)."""
    return equity.pct_change().iloc[1:]


def performance_metrics(equity: pd.Series, risk_free: float | None = None,
                        periods: int | None = None) -> dict:
    """Return and risk metrics of an equity curve (one value per session close).

    Conventions (the same as empyrical): daily simple returns r_t = E_t / E_{t-1} - 1;
    ``periods`` (252) sessions a year; the daily risk-free rate is ``risk_free / periods``.
    total_return = E_T / E_0 - 1; cagr = (1 + total_return) ** (periods / N) - 1 with N the number
    of returns; annual_volatility = std(r, ddof=1) * sqrt(periods); sharpe = mean(r - rf) /
    std(r - rf, ddof=1) * sqrt(periods); sortino = mean(r - rf) * periods /
    (sqrt(mean(min(r - rf, 0) ** 2)) * sqrt(periods)); max_drawdown = min(E_t / max_{s<=t} E_s - 1)
    (a negative fraction, the starting equity counts as a peak); calmar = cagr / |max_drawdown|.
    Undefined values (no variation, no drawdown) are None. ``risk_free`` and ``periods``
    default to RISK_FREE_RATE and TRADING_DAYS_PER_YEAR."""
    risk_free = C.RISK_FREE_RATE if risk_free is None else risk_free
    periods = C.TRADING_DAYS_PER_YEAR if periods is None else periods
    eq = equity.astype(float)
    r = daily_returns(eq).to_numpy(float)
    n = len(r)
    out = {"days": int(len(eq)), "returns": n}
    if n < 1 or not np.isfinite(eq.iloc[0]) or eq.iloc[0] <= 0:
        return {**out, "total_return": None, "cagr": None, "annual_volatility": None, "sharpe": None,
                "sortino": None, "max_drawdown": None, "calmar": None, "max_drawdown_duration_days": None}
    total = float(eq.iloc[-1] / eq.iloc[0] - 1.0)
    cum = np.cumprod(1.0 + r)                          # growth of 1, like empyrical
    total_compound = float(cum[-1] - 1.0)
    cagr = float((1.0 + total_compound) ** (periods / n) - 1.0) if cum[-1] > 0 else -1.0
    rf = risk_free / periods
    adj = r - rf
    sharpe = sharpe_ratio(r, risk_free, periods)
    with np.errstate(divide="ignore", invalid="ignore"):
        vol = float(np.std(r, ddof=1) * math.sqrt(periods)) if n >= 2 else float("nan")
        downside = math.sqrt(float(np.mean(np.minimum(adj, 0.0) ** 2))) * math.sqrt(periods)
        sortino = float(np.mean(adj) * periods / downside) if n >= 2 else float("nan")
    path = np.concatenate([[1.0], cum])
    peak = np.maximum.accumulate(path)
    dd = path / peak - 1.0
    max_dd = float(dd.min())
    calmar = float(cagr / abs(max_dd)) if max_dd < 0 else float("nan")
    dur = drawdown_duration(pd.Series(eq.to_numpy(float), index=eq.index))
    return {**out, "total_return": total, "cagr": cagr, "annual_volatility": _clean(vol),
            "sharpe": sharpe, "sortino": _clean(sortino), "max_drawdown": max_dd,
            "calmar": _clean(calmar), **dur}


def drawdown_duration(equity: pd.Series) -> dict:
    """The longest time spent below a previous peak (peak to recovery, or to the end if it has
    not recovered), in sessions and calendar days, and the dates of the deepest drawdown."""
    e = equity.to_numpy(float)
    idx = equity.index
    peak = np.maximum.accumulate(e)
    under = e < peak - 1e-12 * np.abs(peak)
    best_len, best_start, best_end, run_start = 0, None, None, None
    for t in range(len(e)):
        if under[t]:
            if run_start is None:
                run_start = t - 1                   # the peak day
            length = t - run_start
            if length > best_len:
                best_len, best_start, best_end = length, run_start, t
        else:
            if run_start is not None:
                length = t - run_start
                if length > best_len:
                    best_len, best_start, best_end = length, run_start, t
            run_start = None
    dd = e / peak - 1.0
    trough = int(np.argmin(dd)) if len(e) else 0
    peak_at = int(np.argmax(e[:trough + 1])) if len(e) else 0
    rec = np.flatnonzero(e[trough:] >= peak[trough] - 1e-12 * abs(peak[trough]))
    out = {"max_drawdown_duration_sessions": int(best_len),
           "max_drawdown_duration_days": (int((idx[best_end] - idx[best_start]).days) if best_len else 0),
           "longest_drawdown_start": str(idx[best_start].date()) if best_len else None,
           "longest_drawdown_end": str(idx[best_end].date()) if best_len else None,
           "max_drawdown_peak": str(idx[peak_at].date()) if len(e) and dd[trough] < 0 else None,
           "max_drawdown_trough": str(idx[trough].date()) if len(e) and dd[trough] < 0 else None,
           "max_drawdown_recovered": (str(idx[trough + rec[0]].date()) if len(e) and dd[trough] < 0
                                      and len(rec) else None)}
    return out


def _clean(x):
    return None if x is None or not np.isfinite(x) else float(x)


def round_trips(result: EngineResult, close_last: dict[str, float] | None = None) -> list[dict]:
    """Trades as round trips: a position from flat back to flat. P&L = every cash flow of the
    symbol in between (fills at their fill prices, commissions, borrow fees). A position still
    open at the end is valued at the last close and flagged ``open``."""
    events = [(t["seq"], 0, t) for t in result.trades] + [(b["seq"], 1, b) for b in result.borrow_events]
    events.sort(key=lambda e: e[0])
    state: dict[str, dict] = {}
    trips: list[dict] = []
    for _, kind, ev in events:
        sym = ev["symbol"]
        st = state.get(sym)
        if kind == 1:
            if st:
                st["borrow"] += ev["fee"]
                st["flows"] -= ev["fee"]
            continue
        signed = signed_quantity(ev["side"], ev["quantity"])
        if st is None:
            st = state[sym] = {"symbol": sym, "direction": "long" if signed > 0 else "short",
                               "entry_date": ev["date"], "pos": 0, "flows": 0.0, "commission": 0.0,
                               "slippage": 0.0, "borrow": 0.0, "entry_value": 0.0, "fills": 0}
        st["pos"] += signed
        st["flows"] += -signed * ev["fill_price"] - ev["commission"]
        st["commission"] += ev["commission"]
        st["slippage"] += ev["slippage_cost"]
        st["fills"] += 1
        if (signed > 0) == (st["direction"] == "long"):
            st["entry_value"] += abs(signed) * ev["fill_price"]
        if st["pos"] == 0:
            trips.append(_trip(st, ev["date"], False))
            del state[sym]
    last = close_last or {}
    last_day = str(result.dates[-1].date()) if len(result.dates) else None
    for sym, st in state.items():
        px = last.get(sym, float("nan"))
        st["flows"] += st["pos"] * px
        trips.append(_trip(st, last_day, True))
    trips.sort(key=lambda t: (t["entry_date"], t["symbol"]))
    return trips


def _trip(st: dict, exit_date, still_open: bool) -> dict:
    pnl = float(st["flows"])
    return {"symbol": st["symbol"], "direction": st["direction"], "entry_date": st["entry_date"],
            "exit_date": exit_date, "open": still_open, "fills": st["fills"], "pnl": pnl,
            "return_on_entry": pnl / st["entry_value"] if st["entry_value"] else None,
            "commission": st["commission"], "slippage": st["slippage"], "borrow_fees": st["borrow"]}


def trade_metrics(result: EngineResult, trips: list[dict]) -> dict:
    """Trade statistics. ``trades`` counts closed round trips only (flat -> position -> flat):
    the go-live criterion ``GOLIVE_MIN_TRADES`` counts these; ``open_trades`` are positions still
    open at the end (their P&L, valued at the last close, is in the P&L statistics);
    ``fills`` counts executed orders. Win rate, profit factor and average trade are over the
    closed round trips (the population ``trades`` counts); ``open_pnl`` is the open ones' P&L."""
    closed = [t for t in trips if not t["open"]]
    pnl = np.array([t["pnl"] for t in closed], float)
    wins, losses = pnl[pnl > 0], pnl[pnl < 0]
    eq = result.equity
    years = max(len(eq) - 1, 1) / C.TRADING_DAYS_PER_YEAR
    traded = float(sum(t["notional"] for t in result.trades))
    mean_eq = float(np.mean(eq)) if len(eq) else float("nan")
    with np.errstate(divide="ignore", invalid="ignore"):
        gross_frac = np.where(eq > 0, result.gross / eq, np.nan)
    comm = float(result.daily_commission.sum())
    slip = float(result.daily_slippage.sum())
    borrow = float(result.daily_borrow.sum())
    return {
        "trades": int(sum(1 for t in trips if not t["open"])),
        "closed_trades": int(sum(1 for t in trips if not t["open"])),
        "open_trades": int(sum(1 for t in trips if t["open"])),
        "open_pnl": float(sum(t["pnl"] for t in trips if t["open"])),
        "fills": int(len(result.trades)),
        "win_rate": float(len(wins) / len(pnl)) if len(pnl) else None,
        "profit_factor": (float(wins.sum() / -losses.sum()) if len(losses) and losses.sum() < 0
                          else (None if not len(wins) else float("inf"))),
        "average_trade": float(pnl.mean()) if len(pnl) else None,
        "average_trade_return": (float(np.mean([t["return_on_entry"] for t in closed
                                                if t["return_on_entry"] is not None]))
                                 if any(t["return_on_entry"] is not None for t in closed) else None),
        "exposure": float(np.nanmean(gross_frac)) if len(eq) else None,
        "time_in_market": float(np.mean(result.n_positions > 0)) if len(eq) else None,
        "turnover": float(traded / mean_eq / years) if mean_eq > 0 else None,
        "traded_value": traded,
        "costs_paid": comm + slip + borrow,
        "commission_paid": comm,
        "slippage_paid": slip,
        "borrow_fees_paid": borrow,
        "risk_rejections": int(result.rejections),
        "cancelled_orders": int(len(result.cancelled)),
        "stop_fills": sum(1 for t in result.trades if t.get("stop_price") is not None),   # PROTECTIVE_STOPS
        "halts": len(result.halts),
    }


def monthly_returns(equity: pd.Series) -> pd.Series:
    """Calendar-month returns: last equity of the month over the last equity of the month before
    (the first month over the starting equity)."""
    month_end = equity.groupby([equity.index.year, equity.index.month]).last()
    prev = month_end.shift(1)
    prev.iloc[0] = equity.iloc[0]
    out = month_end / prev - 1.0
    out.index = pd.PeriodIndex([pd.Period(year=y, month=mo, freq="M") for y, mo in out.index])
    return out


def conventions() -> str:
    """The conventions of every figure, as the report states them (with the effective
    TRADING_DAYS_PER_YEAR and RISK_FREE_RATE)."""
    return (
        f"Daily simple returns of the equity at each close; {C.TRADING_DAYS_PER_YEAR} sessions a year; "
        f"risk-free rate {C.RISK_FREE_RATE:.2%} a year ({C.RISK_FREE_RATE:.2%}/{C.TRADING_DAYS_PER_YEAR} a day). "
        "CAGR = (1 + total return)^(252/N) - 1 with N daily returns; annualised volatility = daily "
        "std (ddof 1) x sqrt(252); Sharpe = mean(r - rf) / std(r - rf) x sqrt(252); Sortino = "
        "mean(r - rf) x 252 / (sqrt(mean(min(r - rf, 0)^2)) x sqrt(252)); max drawdown = deepest fall "
        "from a running peak of the equity (the start counts as a peak); Calmar = CAGR / |max drawdown|; "
        "drawdown duration = longest stretch below a previous peak, peak to recovery (or to the end). "
        "Trades are closed round trips (flat -> position -> flat); win rate, profit factor (gross wins / "
        "gross losses), average trade and expectancy are over the closed round trips only, net of "
        "commission, slippage and borrow fees; a position still open at the end is valued at the last "
        "close, counted apart (open trades, open P&L) and is in the equity figures. Exposure = mean gross position "
        "value / equity; time in market = share of sessions with a position; turnover = traded value "
        "/ mean equity per year. These are the empyrical library's conventions (tests compare them).")


def analyse(result: EngineResult, market: Market, benchmark: pd.Series) -> dict:
    equity = result.equity_series()
    last_close = {s: float(v) for s, v in zip(market.symbols, pd.DataFrame(market.close).ffill().iloc[-1])}
    trips = round_trips(result, last_close)
    strat = {**performance_metrics(equity), **trade_metrics(result, trips),
             "final_equity": float(equity.iloc[-1])}
    bench = {**performance_metrics(benchmark), "final_equity": float(benchmark.iloc[-1])}
    return {"strategy": strat, "benchmark": bench, "round_trips": trips}

