"""The statistics of the go-live evidence: is the forecast skilful, and does trading on it beat
simply holding the stocks? Pure NumPy/SciPy; every formula is written out below.

Forecast skill: Diebold-Mariano test with Newey-West (HAC) variance
---------------------------------------------------------------------
Forecasts and outcomes live in the model's target space ``y`` (the next-day price difference in
units of the day's expected move, ``model_management.TARGET_DEFINITION``). For a baseline
forecast ``b`` and the model's forecast ``f`` the squared-error loss differential of each
(symbol, day) is ``(y - b)^2 - (y - f)^2`` (positive: the model did better). Days are the unit of
time: the differential is averaged across the symbols of each session, giving one series
``d_1..d_T`` (cross-sectional correlation between symbols is then inside each ``d_t`` and does not
inflate the evidence). With ``dbar`` the mean of ``d`` and ``gamma_k`` its autocovariances
(divisor T), the Newey-West long-run variance is

    S = gamma_0 + 2 * sum_{k=1..L} (1 - k / (L + 1)) * gamma_k,     L = floor(4 * (T / 100) ** (2/9))

(Bartlett weights, Newey & West 1994's automatic lag; ``SKILL_HAC_LAG`` overrides it).
``DM = dbar / sqrt(S / T)``, multiplied by Harvey-Leybourne-Newbold's small-sample factor
``sqrt((T - 1) / T)`` (one-step forecasts) and compared with Student's t with T - 1 degrees of
freedom, one-sided: p = P(t > DM). Skill is significant when p < ``SKILL_ALPHA`` (0.05).
The two baselines are "no change" (b = 0) and the constant equal to the mean of the training
period's targets (what the model would predict if it learnt only the drift). Reported beside each
test: skill = 1 - MSE(model) / MSE(baseline).

Trading: Sharpe, probabilistic and deflated Sharpe of the excess over buy-and-hold
-------------------------------------------------------------------------------
Daily simple returns r_t of the strategy's equity and b_t of the equal-weight buy-and-hold of the
same symbols over the same sessions. Annualised Sharpe = mean(r - rf) / std(r - rf, ddof 1) *
sqrt(252) with rf = ``RISK_FREE_RATE`` / 252 (``constants.RISK_FREE_RATE``, the one risk-free
rate of the project). The excess series is e_t = r_t - b_t (the risk-free rate cancels in it).
Its per-day Sharpe ``SR = mean(e) / std(e)`` with skewness g3 and (non-excess) kurtosis g4 of e
gives Bailey & Lopez de Prado's probabilistic Sharpe ratio, the probability that the true SR
exceeds ``SR*`` (0: beating buy-and-hold at all):

    PSR(SR*) = Phi( (SR - SR*) * sqrt(T - 1) / sqrt(1 - g3 * SR + (g4 - 1) / 4 * SR^2) )

and the deflated Sharpe ratio, PSR against the best SR expected from N zero-skill tries:

    SR0 = sqrt(V) * ((1 - g) * Phi^-1(1 - 1/N) + g * Phi^-1(1 - 1/(N e))),   g = 0.5772 (Euler)
    DSR = PSR(SR0)        (N = 1: SR0 = 0 and DSR = PSR)

N is the number of distinct configurations tried on this universe (the walk-forward runs table
counts them); V is the variance of the SR estimate across those tries, by default the
estimator's own sampling variance under no skill, 1 / (T - 1).

The verdict (``evaluate_evidence``) passes only when all of these hold: skill significant against
no change, skill significant against the training-mean constant, DSR >= ``SKILL_MIN_DSR`` (0.95),
and the strategy's Sharpe above buy-and-hold's (so a strategy whose risk-adjusted return does not
beat holding the same stocks never passes, whatever its excess return).
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import stats

import constants as C
from model_management import skill_from_mse

EULER_GAMMA = 0.5772156649015329


# =========================================================================== HAC and Diebold-Mariano

def newey_west_lag(n: int) -> int:
    """Newey & West (1994): floor(4 * (n / 100) ** (2 / 9)), or ``SKILL_HAC_LAG`` when set."""
    if C.SKILL_HAC_LAG is not None:
        return int(C.SKILL_HAC_LAG)
    return int(math.floor(4.0 * (max(n, 1) / 100.0) ** (2.0 / 9.0)))


def newey_west_variance(x, lag: int | None = None) -> float:
    """Long-run variance of ``x`` with Bartlett weights (see the module docstring)."""
    x = np.asarray(x, np.float64)
    n = len(x)
    if n < 2:
        return float("nan")
    lag = newey_west_lag(n) if lag is None else int(lag)
    lag = max(0, min(lag, n - 1))
    u = x - x.mean()
    s = float(u @ u) / n
    for k in range(1, lag + 1):
        s += 2.0 * (1.0 - k / (lag + 1.0)) * float(u[k:] @ u[:-k]) / n
    return s


def daily_mean(values, dates) -> np.ndarray:
    """The mean of ``values`` for each distinct date, in date order."""
    values = np.asarray(values, np.float64)
    codes, uniques = _factorize(dates)
    sums = np.bincount(codes, weights=values, minlength=len(uniques))
    counts = np.bincount(codes, minlength=len(uniques))
    return sums / np.maximum(counts, 1)


def _factorize(dates):
    arr = np.asarray(dates)
    uniques, codes = np.unique(arr, return_inverse=True)
    return codes.ravel(), uniques


def diebold_mariano(y_true, forecast, baseline, dates=None, lag: int | None = None) -> dict:
    """One-sided DM test that ``forecast`` has lower squared error than ``baseline``.

    ``baseline``: an array or a scalar (0.0 for "no change"). With ``dates`` the loss
    differential is averaged per date first (one observation a session). Returns
    {statistic, p_value, mean_loss_differential, n, lag, skill, mse, mse_baseline}."""
    y = np.asarray(y_true, np.float64)
    f = np.asarray(forecast, np.float64)
    b = np.broadcast_to(np.asarray(baseline, np.float64), y.shape)
    loss_f, loss_b = (y - f) ** 2, (y - b) ** 2
    d = loss_b - loss_f
    if dates is not None:
        d = daily_mean(d, dates)
    n = len(d)
    mse, mse_b = float(loss_f.mean()) if len(y) else float("nan"), float(loss_b.mean()) if len(y) else float("nan")
    out = {"n": int(n), "lag": None, "statistic": None, "p_value": 1.0,
           "mean_loss_differential": float(d.mean()) if n else None, "mse": mse, "mse_baseline": mse_b,
           "skill": skill_from_mse(mse, mse_b) if n else None}
    if n < 3:
        return out
    lag = newey_west_lag(n) if lag is None else int(lag)
    var = newey_west_variance(d, lag)
    out["lag"] = int(min(max(lag, 0), n - 1))
    if not np.isfinite(var) or var <= 1e-300:
        return out
    dm = float(d.mean() / math.sqrt(var / n)) * math.sqrt((n - 1) / n)
    out["statistic"] = dm
    out["p_value"] = float(stats.t.sf(dm, df=n - 1))
    return out


def directional_accuracy(y_true, forecast) -> float | None:
    """Share of moves (y != 0) whose sign the forecast got right (a zero forecast is wrong)."""
    y = np.asarray(y_true, np.float64)
    f = np.asarray(forecast, np.float64)
    moved = y != 0
    if not moved.any():
        return None
    return float(np.mean(np.sign(f[moved]) == np.sign(y[moved])))


# =========================================================================== Sharpe family

def returns_from_equity(equity) -> np.ndarray:
    e = np.asarray(equity, np.float64)
    return e[1:] / e[:-1] - 1.0


# daily returns whose standard deviation is below this are "flat" (no Sharpe): float noise in a
# constant equity curve would otherwise give a Sharpe of -1e16 (a numerical tolerance, not a tunable)
FLAT_STD = 1e-10


def flat_reason(returns) -> str | None:
    """Why ``sharpe_ratio`` of these daily returns is None ("fewer than two returns", "the
    returns do not vary ..."), or None when it has a value."""
    r = np.asarray(returns, np.float64)
    if len(r) < 2:
        return "fewer than two daily returns"
    if not np.all(np.isfinite(r)):
        return "non-finite daily returns"
    if not float(np.std(r, ddof=1)) > FLAT_STD:
        return f"the daily returns do not vary (std below {FLAT_STD:g}: a flat strategy has no Sharpe)"
    return None


def sharpe_ratio(returns, risk_free: float | None = None,
                 periods: int | None = None) -> float | None:
    """THE Sharpe ratio (the backtest's, the walk-forward's, the go-live gate's): annualised, of
    daily simple returns, with the annual risk-free rate ``risk_free``: mean(r - rf) / std(r - rf,
    ddof 1) * sqrt(periods), rf = risk_free / periods. None with fewer than two returns or no
    variation (std below ``FLAT_STD``: ``flat_reason`` says which). ``risk_free`` and ``periods``
    default to RISK_FREE_RATE and TRADING_DAYS_PER_YEAR."""
    risk_free = C.RISK_FREE_RATE if risk_free is None else risk_free
    periods = C.TRADING_DAYS_PER_YEAR if periods is None else periods
    r = np.asarray(returns, np.float64) - risk_free / periods
    if flat_reason(r) is not None:
        return None
    sd = float(np.std(r, ddof=1))
    return float(np.mean(r) / sd * math.sqrt(periods))


def probabilistic_sharpe_ratio(returns, sr_benchmark: float = 0.0) -> float | None:
    """PSR: probability that the true per-period Sharpe of ``returns`` exceeds ``sr_benchmark``
    (per period, not annualised). None when the returns do not vary."""
    r = np.asarray(returns, np.float64)
    n = len(r)
    if n < 3:
        return None
    sd = float(np.std(r, ddof=1))
    if not sd > FLAT_STD:
        return None
    sr = float(np.mean(r) / sd)
    g3 = float(stats.skew(r, bias=True))
    g4 = float(stats.kurtosis(r, fisher=False, bias=True))
    denom = 1.0 - g3 * sr + (g4 - 1.0) / 4.0 * sr ** 2
    if not denom > 0:
        denom = 1e-12
    return float(stats.norm.cdf((sr - sr_benchmark) * math.sqrt(n - 1) / math.sqrt(denom)))


def expected_max_sharpe(n_trials: int, sr_variance: float) -> float:
    """SR0: the largest per-period Sharpe expected from ``n_trials`` zero-skill tries."""
    n_trials = int(n_trials)
    if n_trials <= 1:
        return 0.0
    z1 = stats.norm.ppf(1.0 - 1.0 / n_trials)
    z2 = stats.norm.ppf(1.0 - 1.0 / (n_trials * math.e))
    return float(math.sqrt(max(sr_variance, 0.0)) * ((1.0 - EULER_GAMMA) * z1 + EULER_GAMMA * z2))


def deflated_sharpe_ratio(returns, n_trials: int = 1, sr_variance: float | None = None) -> float | None:
    """DSR = PSR(SR0) with SR0 from ``n_trials`` tries (``sr_variance`` default 1 / (T - 1))."""
    r = np.asarray(returns, np.float64)
    if len(r) < 3:
        return None
    var = 1.0 / (len(r) - 1) if sr_variance is None else float(sr_variance)
    return probabilistic_sharpe_ratio(r, expected_max_sharpe(n_trials, var))


# =========================================================================== forecast-horizon and alpha tests

def hac_mean_test(x, lag: int | None = None) -> dict:
    """One-sided test that the mean of the series ``x`` is above 0, with the Newey-West variance:
    t = mean / sqrt(S / n), p = P(t_{n-1} > t). {mean, t, p_value, n, lag}; p 1.0 when it cannot
    be computed (fewer than 3 values, no variation)."""
    x = np.asarray(x, np.float64)
    x = x[np.isfinite(x)]
    n = len(x)
    out = {"mean": float(x.mean()) if n else None, "t": None, "p_value": 1.0, "n": int(n), "lag": None}
    if n < 3:
        return out
    lag = newey_west_lag(n) if lag is None else int(lag)
    out["lag"] = int(min(max(lag, 0), n - 1))
    var = newey_west_variance(x, lag)
    if not np.isfinite(var) or var <= FLAT_STD ** 2:
        return out
    t = float(x.mean() / math.sqrt(var / n))
    out.update(t=t, p_value=float(stats.t.sf(t, df=n - 1)))
    return out


def signal_next_day_returns(y_true, forecast, dates, baseline=0.0) -> np.ndarray:
    """The signal's own return at the forecast's horizon: each (symbol, session) holds the sign of
    its forecast for the next session only, on the move beyond ``baseline`` (the training period's
    mean, the drift: ``sign(forecast) * (y_true - baseline)``, in the target's units, the next
    day's move in units of the day's expected move), averaged across the symbols of each session
    (one value a session, date order). Not the strategy's holding period (held until an opposite
    signal), so it judges the forecast at the horizon it was made for; a long bias that only
    collects the drift earns nothing here."""
    y = np.asarray(y_true, np.float64)
    f = np.asarray(forecast, np.float64)
    b = np.broadcast_to(np.asarray(baseline, np.float64), y.shape)
    return daily_mean(np.sign(f) * (y - b), dates)


def alpha_test(strategy_returns, benchmark_returns, risk_free: float | None = None,
               lag: int | None = None) -> dict[str, Any]:
    """The strategy's alpha over the benchmark: OLS of (r - rf) on (b - rf) with a constant, the
    constant's Newey-West (HAC, Bartlett) standard error, one-sided p = P(t_{n-2} > t).

    With X = [1, b - rf], residuals u and g_t = X_t u_t: S = G_0 + sum_{k<=L} (1 - k/(L+1)) (G_k +
    G_k'), G_k = sum_t g_t g_{t-k}' / n, Q = X'X / n, Var = Q^-1 S Q^-1 / n. Returns {alpha (daily),
    alpha_annual, beta, t, p_value, n, lag, active} (``active``: alpha + residual, the
    beta-hedged daily return the deflated Sharpe is computed on)."""
    risk_free = C.RISK_FREE_RATE if risk_free is None else risk_free
    rf = risk_free / C.TRADING_DAYS_PER_YEAR
    y = np.asarray(strategy_returns, np.float64) - rf
    x = np.asarray(benchmark_returns, np.float64) - rf
    ok = np.isfinite(y) & np.isfinite(x)
    y, x = y[ok], x[ok]
    n = len(y)
    out: dict[str, Any] = {"alpha": None, "alpha_annual": None, "beta": None, "t": None, "p_value": 1.0,
                           "n": int(n), "lag": None, "active": np.zeros(0)}
    if n < 4:
        return out
    X = np.column_stack([np.ones(n), x]) if float(np.std(x)) > FLAT_STD else np.ones((n, 1))
    coef, *_ = np.linalg.lstsq(X, y, rcond=None)
    u = y - X @ coef
    alpha, beta = float(coef[0]), (float(coef[1]) if X.shape[1] > 1 else 0.0)
    lag = newey_west_lag(n) if lag is None else int(lag)
    lag = int(min(max(lag, 0), n - 1))
    g = X * u[:, None]
    S = g.T @ g / n
    for k in range(1, lag + 1):
        gk = g[k:].T @ g[:-k] / n
        S += (1.0 - k / (lag + 1.0)) * (gk + gk.T)
    Qi = np.linalg.pinv(X.T @ X / n)
    var = float((Qi @ S @ Qi)[0, 0] / n)
    out.update(alpha=alpha, alpha_annual=alpha * C.TRADING_DAYS_PER_YEAR, beta=beta, lag=lag,
               active=y - beta * x)
    if not np.isfinite(var) or var <= FLAT_STD ** 2:
        return out
    t = alpha / math.sqrt(var)
    out.update(t=t, p_value=float(stats.t.sf(t, df=max(n - X.shape[1], 1))))
    return out


# =========================================================================== the verdict

def evaluate_evidence(y_true, forecast, train_mean, dates, strategy_equity, benchmark_equity,
                      n_trials: int = 1, alpha: float | None = None, min_dsr: float | None = None,
                      risk_free: float | None = None) -> dict:
    """Every statistic of the verdict and the verdict itself (see the module docstring).

    ``y_true``/``forecast``/``dates``: one entry per (symbol, session) predicted out of sample, in
    target units; ``train_mean``: the constant baseline (a number, or one per entry when each
    walk-forward fold has its own training mean); the equity curves: one value per session
    close of the evaluated period (strategy and equal-weight buy-and-hold). ``alpha``,
    ``min_dsr`` and ``risk_free`` default to SKILL_ALPHA, SKILL_MIN_DSR and RISK_FREE_RATE."""
    alpha_level = C.SKILL_ALPHA if alpha is None else alpha
    min_dsr = C.SKILL_MIN_DSR if min_dsr is None else min_dsr
    risk_free = C.RISK_FREE_RATE if risk_free is None else risk_free
    dm0 = diebold_mariano(y_true, forecast, 0.0, dates)
    dmc = diebold_mariano(y_true, forecast, np.asarray(train_mean, np.float64), dates)
    next_day = signal_next_day_returns(y_true, forecast, dates, np.asarray(train_mean, np.float64))
    nxt = hac_mean_test(next_day)
    dsr_next = deflated_sharpe_ratio(next_day, n_trials)
    rs, rb = returns_from_equity(strategy_equity), returns_from_equity(benchmark_equity)
    excess = rs - rb
    sh_s, sh_b = sharpe_ratio(rs, risk_free), sharpe_ratio(rb, risk_free)
    reg = alpha_test(rs, rb, risk_free)
    active = np.asarray(reg.pop("active"), np.float64)
    psr = probabilistic_sharpe_ratio(excess)
    dsr = deflated_sharpe_ratio(excess, n_trials)
    dsr_active = deflated_sharpe_ratio(active, n_trials)
    sd = float(np.std(excess, ddof=1)) if len(excess) > 1 else 0.0
    flat = flat_reason(rs)
    conditions = [
        {"name": "skill_vs_no_change", "passed": dm0["p_value"] < alpha_level,
         "statistic": "DM p-value", "value": dm0["p_value"], "rule": "<", "threshold": alpha_level,
         "text": f"forecast beats 'no change' (skill {_f(dm0['skill'], '+.4f')}, DM p = "
                 f"{_f(dm0['p_value'], '.4f')}; needs p < {alpha_level})"},
        {"name": "skill_vs_training_mean", "passed": dmc["p_value"] < alpha_level,
         "statistic": "DM p-value vs the training mean", "value": dmc["p_value"], "rule": "<",
         "threshold": alpha_level,
         "text": f"forecast beats the training-mean constant (skill {_f(dmc['skill'], '+.4f')}, DM p = "
                 f"{_f(dmc['p_value'], '.4f')}; needs p < {alpha_level})"},
        {"name": "signal_next_day", "passed": nxt["p_value"] < alpha_level,
         "statistic": "next-day signal return HAC p-value", "value": nxt["p_value"], "rule": "<",
         "threshold": alpha_level,
         "text": f"the signal's own next-day returns are positive (mean {_f(nxt['mean'], '+.4f')} expected "
                 f"moves a day, HAC t {_f(nxt['t'], '.2f')}, p = {_f(nxt['p_value'], '.4f')}; needs p < "
                 f"{alpha_level})"},
        {"name": "signal_dsr", "passed": dsr_next is not None and dsr_next >= min_dsr,
         "statistic": "deflated Sharpe of the next-day signal returns", "value": dsr_next, "rule": ">=",
         "threshold": min_dsr,
         "text": f"the next-day signal returns survive the configurations tried: deflated Sharpe "
                 f"{_f(dsr_next, '.3f')} over {n_trials} configuration(s); needs >= {min_dsr}"},
        {"name": "alpha_vs_buy_and_hold", "passed": reg["p_value"] < alpha_level,
         "statistic": "alpha HAC p-value", "value": reg["p_value"], "rule": "<", "threshold": alpha_level,
         "text": (f"strategy alpha over equal-weight buy-and-hold {_f(reg['alpha_annual'], '+.2%')} a year "
                  f"(beta {_f(reg['beta'], '.2f')}, HAC t {_f(reg['t'], '.2f')}, p = "
                  f"{_f(reg['p_value'], '.4f')}; risk-free {risk_free:.2%}); needs p < {alpha_level}"
                  + (f" [{flat}]" if flat else ""))},
    ]
    return {
        "passed": all(c["passed"] for c in conditions), "conditions": conditions,
        "dm_vs_no_change": dm0, "dm_vs_training_mean": dmc, "train_mean": float(np.mean(train_mean)),
        "directional_accuracy": directional_accuracy(y_true, forecast), "signal_next_day": nxt,
        "alpha": reg, "dsr_alpha": dsr_active, "dsr_next_day": dsr_next,
        "sharpe_strategy": sh_s, "sharpe_benchmark": sh_b, "sharpe_note": flat,
        "excess_mean_daily": float(np.mean(excess)) if len(excess) else None,
        "excess_sharpe_annual": (float(np.mean(excess) / sd * math.sqrt(C.TRADING_DAYS_PER_YEAR))
                                 if sd > FLAT_STD else None),
        "psr_excess": psr, "dsr_excess": dsr, "n_trials": int(n_trials), "alpha_level": alpha_level,
        "min_dsr": min_dsr, "risk_free_rate": risk_free,
    }


def _f(value, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)
