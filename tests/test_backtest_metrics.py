"""Backtest metrics against empyrical and by hand."""
import numpy as np
import pandas as pd
import pytest

import empyrical
import backtest_engine as E
import backtest_metrics as M
from test_backtest_engine import INITIAL, sample_market


# ----------------------------------------------------------------------------- metrics vs empyrical
@pytest.mark.parametrize("case", ["strategy", "random", "risk_free"])
def test_metrics_equal_empyrical(case, monkeypatch):
    rf = 0.0
    if case == "strategy":
        prices, sig = sample_market()
        market = E.market_from_frames(prices, sig)
        equity = E.run_engine(market).equity_series()
    else:
        rng = np.random.default_rng(11)
        r = rng.normal(0.0004, 0.012, 700)
        r[0] = -0.02                                       # a loss on day one: the start is a peak
        idx = pd.bdate_range("2020-01-01", periods=701)
        equity = pd.Series(INITIAL * np.concatenate([[1.0], np.cumprod(1 + r)]), index=idx)
        rf = 0.03 if case == "risk_free" else 0.0
    m = M.performance_metrics(equity, risk_free=rf)
    r = equity.pct_change().iloc[1:]
    daily_rf = rf / 252
    ours_theirs = {
        "sharpe": empyrical.sharpe_ratio(r, risk_free=daily_rf, annualization=252),
        "sortino": empyrical.sortino_ratio(r, required_return=daily_rf, annualization=252),
        "max_drawdown": empyrical.max_drawdown(r),
        "cagr": empyrical.annual_return(r, annualization=252),
        "annual_volatility": empyrical.annual_volatility(r, annualization=252),
        "calmar": empyrical.calmar_ratio(r, annualization=252),
    }
    for name, theirs in ours_theirs.items():
        assert m[name] == pytest.approx(float(theirs), rel=1e-9, abs=1e-9), name
    assert m["total_return"] == pytest.approx(float(empyrical.cum_returns_final(r)), abs=1e-9)


def test_drawdown_duration_by_hand():
    eq = pd.Series([100, 110, 99, 105, 111, 108, 109], index=pd.bdate_range("2024-01-01", periods=7), dtype=float)
    d = M.drawdown_duration(eq)
    assert d["max_drawdown_duration_sessions"] == 3          # peak 110 (day 1) -> recovered day 4
    assert d["max_drawdown_peak"] == "2024-01-02" and d["max_drawdown_trough"] == "2024-01-03"
    assert d["max_drawdown_recovered"] == "2024-01-05"
    assert M.performance_metrics(eq)["max_drawdown"] == pytest.approx(99 / 110 - 1)


