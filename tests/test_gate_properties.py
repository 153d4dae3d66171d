"""Properties of the walk-forward verdict (skill_stats.evaluate_evidence) with the engine and the
live rules (the heart of issue 11). No TensorFlow: scores are generated (see gate_sim.py).

* zero-skill scores (symmetric and long-biased random) pass in at most 5 % of seeds, on sample
  data with no predictable component and on real index data (arch.data: S&P 500, NASDAQ);
  the trading conditions alone (Sharpe above buy-and-hold and DSR of the excess) too, so the
  test would catch a broken trading statistic even though the skill tests already refuse;
  also with the trial-count correction of a 10-configuration sweep (``n_trials=10``);
* no run without a positive alpha over equal-weight buy-and-hold ever passes;
* positive control: the sample data's documented predictability (AR 0.3), traded on its true
  conditional expectation, passes in at least 80 % of seeds (``GATE_INFO_MIN_RATE``) with the
  deflated Sharpe counting 10 configurations tried (issue 21: skill judged at the forecast's
  horizon, the signal's own next-day returns, and the strategy's alpha with a HAC t-statistic).

Seeds: ``GATE_SEEDS`` (default 10 here; ``make gate-properties`` runs 200) and
``GATE_INFO_SEEDS`` (default 6; 40 in the long run). Null cases use 4 symbols x ~380 evaluated
sessions (sample) or 2 indices x ~380 sessions (real) so 200 seeds stay within minutes.
"""
import os

import numpy as np
import pytest

import gate_sim

SEEDS = int(os.environ.get("GATE_SEEDS", "10"))
INFO_SEEDS = int(os.environ.get("GATE_INFO_SEEDS", "6"))
MAX_NULL_RATE = 0.05
# Measured (docs/MODEL.md "Properties"): 92.5 % of 40 seeds with 10 configurations counted;
# the long run (40 seeds) and the short one (6) assert the 80 % the issue asks for.
GATE_INFO_MIN_RATE = float(os.environ.get("GATE_INFO_MIN_RATE", "0.8"))
SWEEP_TRIALS = 10                # a 10-configuration sweep: the deflated Sharpe's N

NULL_CASES = [("sample0", "sym"), ("sample0", "long"), ("real", "sym"), ("real", "long")]


@pytest.fixture(scope="module")
def null_results():
    cases = [(d, s, seed, n) for d, s in NULL_CASES for seed in range(1000, 1000 + SEEDS) for n in (1, SWEEP_TRIALS)]
    return gate_sim.run_many(cases)


@pytest.fixture(scope="module")
def info_results():
    return gate_sim.run_many([("sample03", "info", seed, SWEEP_TRIALS) for seed in range(2000, 2000 + INFO_SEEDS)])


@pytest.mark.parametrize("n_trials", [1, SWEEP_TRIALS])
@pytest.mark.parametrize("data, scores", NULL_CASES)
def test_zero_skill_scores_pass_at_most_5_percent(null_results, data, scores, n_trials):
    runs = [r for r in null_results if r["data"] == data and r["scores"] == scores and r["n_trials"] == n_trials]
    assert len(runs) == SEEDS
    rate = np.mean([r["passed"] for r in runs])
    trading_rate = np.mean([r["trading_passed"] for r in runs])
    print(f"{data}/{scores}, {n_trials} configuration(s): verdict passes {rate:.1%}, the alpha test alone "
          f"{trading_rate:.1%} of {SEEDS} seeds")
    assert rate <= MAX_NULL_RATE
    assert trading_rate <= MAX_NULL_RATE + (0.0 if SEEDS >= 200 else 1.5 / SEEDS)


def test_a_strategy_without_a_positive_alpha_never_passes(null_results, info_results):
    runs = null_results + info_results
    for r in runs:
        if r["passed"]:
            assert r["alpha_t"] is not None and r["alpha_t"] > 0 and r["alpha_p"] < 0.05
    losers = [r for r in runs if r["alpha_t"] is None or r["alpha_t"] <= 0]
    assert losers and not any(r["passed"] for r in losers)


def test_positive_control_a_real_edge_passes_in_at_least_80_percent_of_seeds(info_results):
    """The true conditional expectation of the AR(0.3) sample, with the deflated Sharpe counting
    10 configurations: the forecast tests see the skill in every seed, and the whole verdict
    passes in at least GATE_INFO_MIN_RATE (80 %) of them."""
    skill = np.mean([r["conditions"]["skill_vs_no_change"] and r["conditions"]["skill_vs_training_mean"]
                     and r["conditions"]["signal_next_day"] and r["conditions"]["signal_dsr"] for r in info_results])
    alpha = np.mean([r["conditions"]["alpha_vs_buy_and_hold"] for r in info_results])
    rate = np.mean([r["passed"] for r in info_results])
    print(f"AR(0.3) true expectation, {SWEEP_TRIALS} configurations: skill significant {skill:.0%}, alpha "
          f"significant {alpha:.0%}, verdict passes {rate:.0%} of {INFO_SEEDS} seeds")
    assert skill == 1.0
    assert rate >= GATE_INFO_MIN_RATE
