"""Properties of the walk-forward verdict (skill_stats.evaluate_evidence) with the engine and the
live rules (the heart of issue 11). No TensorFlow: scores are generated (see gate_sim.py).

* zero-skill scores (symmetric and long-biased random) pass in at most 5 % of seeds, on sample
  data with no predictable component and on real index data (arch.data: S&P 500, NASDAQ);
  the trading conditions alone (Sharpe above buy-and-hold and DSR of the excess) too, so the
  test would catch a broken trading statistic even though the skill tests already refuse;
* no run whose Sharpe does not beat equal-weight buy-and-hold ever passes;
* the sample data's documented predictability (AR 0.3), traded on its true conditional
  expectation, passes in a measured share of seeds (see GATE_INFO_MIN_RATE below).

Seeds: ``GATE_SEEDS`` (default 30 here; ``make gate-properties`` runs 200) and
``GATE_INFO_SEEDS`` (default 8; 40 in the long run). Null cases use 4 symbols x ~380 evaluated
sessions (sample) or 2 indices x ~380 sessions (real) so 200 seeds stay within minutes.
"""
import os

import numpy as np
import pytest

import gate_sim

SEEDS = int(os.environ.get("GATE_SEEDS", "30"))
INFO_SEEDS = int(os.environ.get("GATE_INFO_SEEDS", "8"))
MAX_NULL_RATE = 0.05
# Measured (make gate-properties, 40 seeds): 22 % pass (docs/MODEL.md "Walk-forward evidence");
# the long run asserts >= 10 %, the short one only the skill and Sharpe conditions.
GATE_INFO_MIN_RATE = float(os.environ.get("GATE_INFO_MIN_RATE", "0.0"))

NULL_CASES = [("sample0", "sym"), ("sample0", "long"), ("real", "sym"), ("real", "long")]


@pytest.fixture(scope="module")
def null_results():
    cases = [(d, s, seed) for d, s in NULL_CASES for seed in range(1000, 1000 + SEEDS)]
    return gate_sim.run_many(cases)


@pytest.fixture(scope="module")
def info_results():
    return gate_sim.run_many([("sample03", "info", seed) for seed in range(2000, 2000 + INFO_SEEDS)])


@pytest.mark.parametrize("data, scores", NULL_CASES)
def test_zero_skill_scores_pass_at_most_5_percent(null_results, data, scores):
    runs = [r for r in null_results if r["data"] == data and r["scores"] == scores]
    assert len(runs) == SEEDS
    rate = np.mean([r["passed"] for r in runs])
    trading_rate = np.mean([r["trading_passed"] for r in runs])
    print(f"{data}/{scores}: verdict passes {rate:.1%}, trading conditions alone {trading_rate:.1%} "
          f"of {SEEDS} seeds")
    assert rate <= MAX_NULL_RATE
    assert trading_rate <= MAX_NULL_RATE + (0.0 if SEEDS >= 200 else 1.5 / SEEDS)


def test_a_strategy_that_does_not_beat_buy_and_hold_risk_adjusted_never_passes(null_results, info_results):
    runs = null_results + info_results
    for r in runs:
        if r["passed"]:
            assert r["sharpe_strategy"] > (r["sharpe_benchmark"] if r["sharpe_benchmark"] is not None else -np.inf)
    losers = [r for r in runs if r["sharpe_benchmark"] is not None and (r["sharpe_strategy"] or -1e9)
              <= r["sharpe_benchmark"]]
    assert losers and not any(r["passed"] for r in losers)


def test_skill_and_trading_statistics_recognise_a_real_edge(info_results):
    """The true conditional expectation: the forecast tests must see the skill in every seed and
    the strategy must beat buy-and-hold's Sharpe in most; the full verdict's pass rate is
    measured and reported (it also needs the excess RETURN over buy-and-hold to be reliably
    positive, which the live rules' small positions rarely achieve: see docs/MODEL.md)."""
    skill = np.mean([r["conditions"]["skill_vs_no_change"] and r["conditions"]["skill_vs_training_mean"]
                     for r in info_results])
    sharpe = np.mean([r["conditions"]["sharpe_above_buy_and_hold"] for r in info_results])
    rate = np.mean([r["passed"] for r in info_results])
    print(f"AR(0.3) true expectation: skill significant {skill:.0%}, Sharpe above buy-and-hold {sharpe:.0%}, "
          f"verdict passes {rate:.0%} of {INFO_SEEDS} seeds")
    assert skill == 1.0
    assert sharpe > 0.5
    assert rate >= GATE_INFO_MIN_RATE
