"""skill_stats: Diebold-Mariano with Newey-West variance, PSR/DSR, the verdict's conditions --
checked against hand computations and independent implementations."""
import math

import numpy as np
import pytest
from scipy import stats

import skill_stats as ss


def test_newey_west_by_hand():
    x = np.array([1.0, -2.0, 0.5, 3.0, -1.0, 0.0, 2.0])
    u = x - x.mean()
    n = len(x)
    g = [sum(u[t] * u[t - k] for t in range(k, n)) / n for k in range(3)]
    expected = g[0] + 2 * (1 - 1 / 3) * g[1] + 2 * (1 - 2 / 3) * g[2]
    assert ss.newey_west_variance(x, lag=2) == pytest.approx(expected, rel=1e-12)
    assert ss.newey_west_variance(x, lag=0) == pytest.approx(np.var(x), rel=1e-12)


def test_newey_west_matches_arch_bartlett_kernel():
    from arch.covariance.kernel import Bartlett
    rng = np.random.default_rng(3)
    e = rng.standard_normal(800)
    x = np.convolve(e, [1.0, 0.6, 0.3], mode="valid")            # MA(2): autocorrelated
    theirs = float(np.asarray(Bartlett(x, bandwidth=6, center=True).cov.long_run).squeeze())
    assert ss.newey_west_variance(x, lag=6) == pytest.approx(theirs, rel=1e-10)


def test_newey_west_lag_rule():
    assert ss.newey_west_lag(100) == 4
    assert ss.newey_west_lag(1000) == int(math.floor(4 * 10 ** (2 / 9)))


def test_diebold_mariano_by_hand():
    y = np.array([0.5, -1.0, 0.2, 1.5, -0.3, 0.8, -0.6, 0.1, 0.9, -1.2])
    f = np.array([0.3, -0.5, 0.0, 1.0, 0.1, 0.4, -0.2, 0.3, 0.5, -0.7])
    d = y ** 2 - (y - f) ** 2
    n, lag = len(d), 2
    u = d - d.mean()
    lrv = sum(u * u) / n + sum(2 * (1 - k / (lag + 1)) * sum(u[k:] * u[:-k]) / n for k in (1, 2))
    dm = d.mean() / math.sqrt(lrv / n) * math.sqrt((n - 1) / n)
    got = ss.diebold_mariano(y, f, 0.0, lag=lag)
    assert got["statistic"] == pytest.approx(dm, rel=1e-12)
    assert got["p_value"] == pytest.approx(stats.t.sf(dm, n - 1), rel=1e-12)
    assert got["skill"] == pytest.approx(1 - np.mean((y - f) ** 2) / np.mean(y ** 2))


def test_diebold_mariano_panel_averages_per_date():
    rng = np.random.default_rng(1)
    dates = np.repeat(np.arange(300), 4)
    y = rng.standard_normal(1200)
    f = 0.1 * rng.standard_normal(1200)
    per_day = ss.daily_mean(y ** 2 - (y - f) ** 2, dates)
    assert len(per_day) == 300
    a = ss.diebold_mariano(y, f, 0.0, dates)
    assert a["n"] == 300
    assert a["mean_loss_differential"] == pytest.approx(per_day.mean())


def test_diebold_mariano_detects_real_skill_and_not_noise():
    rng = np.random.default_rng(7)
    signal = rng.standard_normal(2000)
    y = 0.3 * signal + rng.standard_normal(2000)
    assert ss.diebold_mariano(y, 0.3 * signal, 0.0)["p_value"] < 1e-6
    assert ss.diebold_mariano(y, rng.standard_normal(2000) * 0.3, 0.0)["p_value"] > 0.5
    rejections = sum(ss.diebold_mariano(rng.standard_normal(500), 0.0, 0.0)["p_value"] < 0.05
                     for _ in range(20))
    assert rejections == 0                  # identical forecasts: no evidence at all
    p = [ss.diebold_mariano(rng.standard_normal(400), 0.05 * rng.standard_normal(400), 0.0)["p_value"]
         for _ in range(200)]
    assert np.mean(np.array(p) < 0.05) <= 0.05


def test_psr_known_value_for_normal_returns():
    r = np.random.default_rng(0).normal(0.001, 0.01, 1000)
    sr = r.mean() / r.std(ddof=1)
    g3, g4 = stats.skew(r), stats.kurtosis(r, fisher=False)
    expected = stats.norm.cdf(sr * math.sqrt(999) / math.sqrt(1 - g3 * sr + (g4 - 1) / 4 * sr ** 2))
    assert ss.probabilistic_sharpe_ratio(r) == pytest.approx(expected, rel=1e-12)


def test_psr_monotonic():
    base = np.random.default_rng(2).standard_t(5, 750) * 0.01
    shifted = [ss.probabilistic_sharpe_ratio(base + m) for m in (-0.001, 0.0, 0.0005, 0.001, 0.002)]
    assert all(a < b for a, b in zip(shifted, shifted[1:]))
    by_bench = [ss.probabilistic_sharpe_ratio(base + 0.001, s) for s in (-0.05, 0.0, 0.05, 0.1)]
    assert all(a > b for a, b in zip(by_bench, by_bench[1:]))
    head = base[:200] - base[:200].mean()
    short, long_ = head + 0.001, np.tile(head, 4) + 0.001          # same Sharpe, 4x the sessions
    assert ss.probabilistic_sharpe_ratio(long_) > ss.probabilistic_sharpe_ratio(short) > 0.5
    assert ss.probabilistic_sharpe_ratio(np.zeros(100)) is None


def test_dsr_equals_psr_for_one_trial_and_falls_with_trials():
    r = np.random.default_rng(4).normal(0.0008, 0.01, 1000)
    assert ss.deflated_sharpe_ratio(r, 1) == pytest.approx(ss.probabilistic_sharpe_ratio(r))
    dsr = [ss.deflated_sharpe_ratio(r, n) for n in (1, 2, 5, 20, 100)]
    assert all(a > b for a, b in zip(dsr, dsr[1:]))
    # SR0 for N tries matches the expected maximum of N standard normals (times the SR std)
    sims = np.random.default_rng(5).standard_normal((20000, 20)).max(axis=1).mean()
    assert ss.expected_max_sharpe(20, 1.0) == pytest.approx(sims, rel=0.03)


def test_sharpe_uses_the_risk_free_rate():
    r = np.random.default_rng(6).normal(0.0005, 0.01, 500)
    assert ss.sharpe_ratio(r, 0.0) > ss.sharpe_ratio(r, 0.05)
    assert ss.sharpe_ratio(r, 0.0) == pytest.approx(r.mean() / r.std(ddof=1) * math.sqrt(252))


def test_verdict_needs_every_condition():
    rng = np.random.default_rng(8)
    dates = np.repeat(np.arange(500), 5)
    x = rng.standard_normal(2500)
    y = 0.4 * x + rng.standard_normal(2500)
    bench = 100_000 * np.cumprod(np.r_[1.0, 1 + rng.normal(0.0003, 0.008, 499)])
    good = bench * np.cumprod(np.r_[1.0, 1 + rng.normal(0.001, 0.002, 499)])
    ok = ss.evaluate_evidence(y, 0.4 * x, 0.0, dates, good, bench)
    assert ok["passed"], ok["conditions"]
    no_skill = ss.evaluate_evidence(y, 0.4 * rng.standard_normal(2500), 0.0, dates, good, bench)
    assert not no_skill["passed"]
    assert [c["passed"] for c in no_skill["conditions"]][:2] == [False, False]
    loses = ss.evaluate_evidence(y, 0.4 * x, 0.0, dates, bench * 0.9 ** np.linspace(0, 1, 500), bench)
    assert not loses["passed"]
    many_tries = ss.evaluate_evidence(y, 0.4 * x, 0.0, dates, good, bench, n_trials=10 ** 6)
    assert many_tries["dsr_excess"] < ok["dsr_excess"]


def test_a_flat_strategy_has_no_sharpe_and_says_why():
    """Issue 21: a flat equity curve with float noise gave a Sharpe of -9.3e16 (std 1e-20)."""
    equity = np.full(300, 100_000.0) + np.tile([0.0, 1e-11], 150)
    r = ss.returns_from_equity(equity)
    assert 0 < np.std(r) < 1e-12
    assert ss.sharpe_ratio(r) is None and "do not vary" in ss.flat_reason(r)
    assert ss.flat_reason(np.random.default_rng(1).normal(0, 0.01, 50)) is None
    assert ss.probabilistic_sharpe_ratio(r) is None


def test_alpha_test_recovers_alpha_and_beta_with_a_hac_t_statistic():
    rng = np.random.default_rng(11)
    b = rng.normal(0.0004, 0.01, 1000)
    r = 0.5 * b + 0.0008 + rng.normal(0, 0.003, 1000)            # beta 0.5, alpha 8 bp a day
    out = ss.alpha_test(r, b, risk_free=0.0)
    assert out["beta"] == pytest.approx(0.5, abs=0.05) and out["alpha"] == pytest.approx(0.0008, abs=0.0003)
    assert out["t"] > 5 and out["p_value"] < 1e-5
    # no alpha: a levered benchmark beats it on raw return but not on alpha
    null = ss.alpha_test(1.5 * b + rng.normal(0, 0.003, 1000), b, risk_free=0.0)
    assert null["p_value"] > 0.05
    # the HAC standard error grows with positively autocorrelated residuals
    u = np.convolve(rng.normal(0, 0.003, 1100), np.ones(10) / 10 ** 0.5, "valid")[:1000]
    iid = ss.alpha_test(0.5 * b + 0.0002 + rng.normal(0, 0.003, 1000), b, 0.0)
    ac = ss.alpha_test(0.5 * b + 0.0002 + u, b, 0.0)
    assert abs(ac["t"]) < abs(iid["t"]) * 1.5 and ac["lag"] >= 1
    assert ss.alpha_test(r[:3], b[:3])["p_value"] == 1.0


def test_the_null_alpha_and_next_day_tests_reject_about_alpha_of_the_time():
    rng = np.random.default_rng(12)
    p_alpha = [ss.alpha_test(rng.normal(0, 0.01, 400), rng.normal(0, 0.01, 400), 0.0)["p_value"] for _ in range(300)]
    p_next = [ss.hac_mean_test(rng.standard_normal(400))["p_value"] for _ in range(300)]
    assert 0.01 <= np.mean(np.array(p_alpha) < 0.05) <= 0.10
    assert 0.01 <= np.mean(np.array(p_next) < 0.05) <= 0.10


def test_the_signal_is_judged_at_its_own_horizon():
    """sign(forecast) x next-day outcome, one value a session: a forecast right on the next day
    is skilful even if the strategy's holding period would hide it."""
    dates = np.repeat(np.arange(300), 4)
    rng = np.random.default_rng(13)
    y = rng.standard_normal(1200)
    h = ss.signal_next_day_returns(y, y + rng.standard_normal(1200) * 2, dates)
    assert len(h) == 300 and ss.hac_mean_test(h)["p_value"] < 1e-6
    h0 = ss.signal_next_day_returns(y, rng.standard_normal(1200), dates)
    assert ss.hac_mean_test(h0)["p_value"] > 0.01


def test_every_verdict_condition_names_its_statistic_and_threshold():
    rng = np.random.default_rng(8)
    dates = np.repeat(np.arange(500), 5)
    y = rng.standard_normal(2500)
    bench = 100_000 * np.cumprod(np.r_[1.0, 1 + rng.normal(0.0003, 0.008, 499)])
    ev = ss.evaluate_evidence(y, rng.standard_normal(2500), 0.0, dates, bench, bench)
    names = [c["name"] for c in ev["conditions"]]
    assert names == ["skill_vs_no_change", "skill_vs_training_mean", "signal_next_day", "signal_dsr",
                     "alpha_vs_buy_and_hold"]
    for c in ev["conditions"]:
        assert c["statistic"] and c["rule"] in ("<", ">=") and c["threshold"] is not None
    assert not ev["passed"] and ev["alpha"]["beta"] == pytest.approx(1.0)


def test_ten_configurations_tried_deflate_the_next_day_signal():
    rng = np.random.default_rng(14)
    dates = np.repeat(np.arange(400), 4)
    x = rng.standard_normal(1600)
    y = 0.06 * x + rng.standard_normal(1600)
    bench = 100_000 * np.cumprod(np.r_[1.0, 1 + rng.normal(0.0003, 0.008, 399)])
    one = ss.evaluate_evidence(y, x, 0.0, dates, bench, bench, n_trials=1)
    ten = ss.evaluate_evidence(y, x, 0.0, dates, bench, bench, n_trials=10)
    assert ten["dsr_next_day"] < one["dsr_next_day"]
    assert ten["dsr_next_day"] == pytest.approx(ss.deflated_sharpe_ratio(
        ss.signal_next_day_returns(y, x, dates), n_trials=10))
