"""The probability of backtest overfitting (PBO) by combinatorially symmetric cross-validation
(CSCV; Bailey, Borwein, Lopez de Prado & Zhu, "The probability of backtest overfitting", Journal
of Computational Finance 20(4), 2017). Pure NumPy; every step is written out below.

Input: a matrix ``M`` of T daily out-of-sample returns (rows, the same sessions) of N trials
(columns: every configuration, seed or window tried on the same history, as the trial registry
records them). The rows are cut into ``S`` (even, ``PBO_BLOCKS``) contiguous blocks of equal length
(the oldest rows that do not fill a block are dropped). For each of the C(S, S/2) ways to choose
S/2 blocks as the in-sample half (the other S/2 are the out-of-sample half):

1. every trial's Sharpe ratio (mean / standard deviation of its returns, per day) on each half;
2. n* = the trial with the best in-sample Sharpe (ties: the first);
3. its relative rank out of sample, w = rank / (N + 1) (rank 1 = the worst of the N, ties
   averaged), and the logit  lambda = ln(w / (1 - w));

PBO = the share of splits with lambda <= 0: how often the configuration that looked best
in sample is at or below the median out of sample. Near 0 when one trial truly dominates; near
0.5 or above when the trials are noise (the best in sample is no better than a coin out of it).

The go-live gate applies a ceiling, ``PBO_MAX``, once the universe has at least
``PBO_MIN_TRIALS`` trials (fewer: too few to say).
"""
from __future__ import annotations

import math
from itertools import combinations

import numpy as np

import constants as C
import skill_stats
import trial_registry


def _sharpe(total, total_sq, n) -> np.ndarray:
    """Per-period Sharpe from sums (rows: splits, columns: trials); 0 where the returns do not vary."""
    mean = total / n
    var = np.maximum(total_sq / n - mean ** 2, 0.0) * n / max(n - 1, 1)
    sd = np.sqrt(var)
    out = np.zeros_like(mean)
    ok = sd > 1e-15
    out[ok] = mean[ok] / sd[ok]
    return out


def _ranks(values: np.ndarray, pick: np.ndarray) -> np.ndarray:
    """1-based ascending rank of values[i, pick[i]] within row i (ties averaged)."""
    chosen = values[np.arange(len(values)), pick][:, None]
    below = np.sum(values < chosen, axis=1)
    equal = np.sum(values == chosen, axis=1)
    return below + (equal + 1) / 2.0


def pbo_cscv(returns, blocks: int | None = None) -> dict:
    """PBO of the trials in ``returns`` (T rows x N columns, see the module docstring) with
    ``blocks`` even blocks (default ``PBO_BLOCKS``). Returns {"pbo", "n_trials", "blocks",
    "splits", "rows", "logits", "median_logit", "best_in_sample"}; "pbo" is None when there are
    fewer than two trials or fewer than two rows a block."""
    blocks = C.PBO_BLOCKS if blocks is None else int(blocks)
    if blocks < 2 or blocks % 2:
        raise ValueError(f"the number of CSCV blocks must be even and at least 2 (got {blocks})")
    m = np.asarray(returns, np.float64)
    if m.ndim != 2:
        raise ValueError("returns must be a matrix: rows are sessions, columns are trials")
    m = np.where(np.isfinite(m), m, 0.0)
    t, n = m.shape
    length = t // blocks
    out = {"pbo": None, "n_trials": int(n), "blocks": blocks, "splits": 0, "rows": int(length * blocks),
           "logits": [], "median_logit": None, "best_in_sample": None}
    if n < 2 or length < 2:
        return out
    m = m[t - length * blocks:]                     # the newest rows fill whole blocks
    shaped = m.reshape(blocks, length, n)
    sums, sums_sq = shaped.sum(axis=1), (shaped ** 2).sum(axis=1)          # blocks x trials
    combos = np.array(list(combinations(range(blocks), blocks // 2)), dtype=np.int64)
    in_mask = np.zeros((len(combos), blocks), dtype=bool)
    in_mask[np.arange(len(combos))[:, None], combos] = True
    w_in = in_mask.astype(np.float64)
    w_out = 1.0 - w_in
    rows_half = length * (blocks // 2)
    sr_in = _sharpe(w_in @ sums, w_in @ sums_sq, rows_half)
    sr_out = _sharpe(w_out @ sums, w_out @ sums_sq, rows_half)
    best = np.argmax(sr_in, axis=1)
    omega = _ranks(sr_out, best) / (n + 1.0)
    logits = np.log(omega / (1.0 - omega))
    out.update(pbo=float(np.mean(logits <= 0.0)), splits=int(len(combos)), logits=logits.tolist(),
               median_logit=float(np.median(logits)),
               best_in_sample=int(np.bincount(best, minlength=n).argmax()))
    return out


def pbo_verdict(pbo: float | None, n_trials: int, max_pbo: float | None = None,
                min_trials: int | None = None) -> dict:
    """Does the PBO pass the gate's ceiling? {"applies", "passed", "text", "max", "min_trials"}:
    the ceiling ``PBO_MAX`` applies once ``n_trials`` >= ``PBO_MIN_TRIALS``; below that it passes
    (too few trials to measure) and says so."""
    max_pbo = C.PBO_MAX if max_pbo is None else max_pbo
    min_trials = C.PBO_MIN_TRIALS if min_trials is None else min_trials
    applies = n_trials >= min_trials
    shown = "n/a" if pbo is None or (isinstance(pbo, float) and math.isnan(pbo)) else f"{pbo:.3f}"
    if not applies:
        return {"applies": False, "passed": True, "max": max_pbo, "min_trials": min_trials,
                "text": f"probability of backtest overfitting {shown} over {n_trials} trial(s); the ceiling "
                        f"<= {max_pbo} applies from {min_trials} trials"}
    ok = pbo is not None and pbo <= max_pbo
    return {"applies": True, "passed": bool(ok), "max": max_pbo, "min_trials": min_trials,
            "text": f"probability of backtest overfitting (CSCV) {shown} over {n_trials} trials; needs "
                    f"<= {max_pbo}"}


# =========================================================================== the trials of a universe

def hedged_returns(series: dict | None) -> np.ndarray:
    """The beta-hedged daily return of the strategy over buy-and-hold (alpha + residual of
    ``skill_stats.alpha_test``, the risk-adjusted series the verdict's alpha is judged on) from a
    registry series dict."""
    if not series:
        return np.zeros(0)
    a = np.asarray([np.nan if x is None else x for x in series["strategy"]], np.float64)
    b = np.asarray([np.nan if x is None else x for x in series["benchmark"]], np.float64)
    return np.asarray(skill_stats.alpha_test(a, b)["active"], np.float64)


def pending_trials(universe, conn=None) -> int:
    """The DSR's N for a run about to be recorded on this universe: every recorded trial on it
    and the production data (``trial_registry.count_trials``), plus this run."""
    return trial_registry.count_trials(universe, conn=conn) + 1


def trial_evidence(universe, series: dict | None = None, pending: bool = False, conn=None) -> dict:
    """The trial count, the deflated Sharpe and the PBO of a universe's trials (the walk-forward
    report, the sweep, ``gate`` and ``gate --json`` all print this).

    ``series``: the daily returns of the run being judged (a registry series dict; default: the
    newest walk-forward or sweep trial's); ``pending``: that run is not recorded yet (it counts as
    one more trial and joins the PBO matrix). N = ``trial_registry.count_trials`` (+1 when
    pending); DSR = ``skill_stats.deflated_sharpe_ratio`` of the run's beta-hedged daily return
    over buy-and-hold (``hedged_returns``: risk-adjusted, as the verdict judges the strategy by its
    alpha, not by out-earning a 100 %-long benchmark) with that N (needs >= ``SKILL_MIN_DSR``); PBO = ``pbo_cscv`` of the trials with
    out-of-sample series on the run's sessions (``trial_registry.excess_matrix``), its ceiling
    ``PBO_MAX`` applied from ``PBO_MIN_TRIALS`` trials (``pbo_verdict``)."""
    n_trials = trial_registry.count_trials(universe, conn=conn) + (1 if pending else 0)
    rows = trial_registry.trials(universe, kinds=trial_registry.SERIES_KINDS, conn=conn)
    reference = series if series is not None else (rows[-1]["returns"] if rows else None)
    pool = rows + ([{"returns": series}] if pending and series is not None else [])
    _, matrix, _ = trial_registry.excess_matrix(pool, reference) if reference else ([], np.zeros((0, 0)), [])
    pbo = pbo_cscv(matrix) if matrix.shape[1] else {"pbo": None, "splits": 0, "blocks": C.PBO_BLOCKS}
    hedged = hedged_returns(reference)
    dsr = skill_stats.deflated_sharpe_ratio(hedged, max(n_trials, 1)) if len(hedged) else None
    verdict = pbo_verdict(pbo["pbo"], int(matrix.shape[1]))
    min_dsr = C.SKILL_MIN_DSR
    dsr_ok = dsr is not None and dsr >= min_dsr
    return {"n_trials": int(n_trials), "dsr_trials": max(int(n_trials), 1), "dsr": dsr, "min_dsr": min_dsr, "dsr_passed": bool(dsr_ok),
            "pbo": pbo["pbo"], "pbo_trials": int(matrix.shape[1]), "pbo_splits": int(pbo["splits"]),
            "pbo_blocks": int(pbo["blocks"]), "pbo_max": verdict["max"], "pbo_min_trials": verdict["min_trials"],
            "pbo_applies": verdict["applies"], "pbo_passed": verdict["passed"], "pbo_text": verdict["text"],
            "passed": bool(verdict["passed"] and (dsr_ok or reference is None))}


def trial_lines(ev: dict, indent: str = "") -> list[str]:
    """The trial count, DSR and PBO, each with the threshold it must meet (one line each)."""
    dsr = "n/a" if ev["dsr"] is None else f"{ev['dsr']:.3f}"
    pbo = "n/a" if ev["pbo"] is None else f"{ev['pbo']:.3f}"
    when = ("applies" if ev["pbo_applies"] else "not yet applied") + f" from {ev['pbo_min_trials']} trials"
    return [f"{indent}trials:         {ev['n_trials']} on this universe and the production data (every walk-forward, "
            f"sweep configuration, holdout opening and backtest)",
            f"{indent}DSR:            {dsr} deflated for {ev['dsr_trials']} trial(s) "
            f"({'PASS' if ev['dsr_passed'] else 'FAIL'}; needs >= {ev['min_dsr']})",
            f"{indent}PBO:            {pbo} over {ev['pbo_trials']} trial(s) with out-of-sample returns, "
            f"{ev['pbo_splits']} CSCV splits of {ev['pbo_blocks']} blocks "
            f"({'PASS' if ev['pbo_passed'] else 'FAIL'}; needs <= {ev['pbo_max']}, {when})"]
