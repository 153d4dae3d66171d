"""overfitting.py: the probability of backtest overfitting by CSCV (Bailey, Borwein, Lopez de
Prado & Zhu 2017) and the gate's ceiling. Pure NumPy, no training."""
import numpy as np
import pytest

import constants as C
import overfitting as O


def _noise(seed: int, n_trials: int = 10, rows: int = 640, sd: float = 0.01) -> np.ndarray:
    return np.random.default_rng(seed).normal(0.0, sd, size=(rows, n_trials))


def test_one_trial_that_truly_dominates_has_a_pbo_near_zero():
    m = _noise(1)
    m[:, 3] += 0.004                        # a daily Sharpe of 0.4: it is the best in every half
    out = O.pbo_cscv(m, blocks=16)
    assert out["splits"] == 12870 and out["n_trials"] == 10 and out["rows"] == 640
    assert out["pbo"] <= 0.02, out["pbo"]
    assert out["best_in_sample"] == 3 and out["median_logit"] > 1.0


def test_pure_noise_trials_overfit_about_half_the_time():
    pbos = [O.pbo_cscv(_noise(seed), blocks=10)["pbo"] for seed in range(10, 22)]
    print("PBO of pure-noise trials:", [round(p, 2) for p in pbos])
    assert 0.4 <= float(np.mean(pbos)) <= 0.8, pbos
    assert max(pbos) > 0.5                  # noise often looks worse than a coin out of sample


def test_a_noise_set_with_a_dominant_trial_is_told_apart_from_pure_noise():
    noise = np.mean([O.pbo_cscv(_noise(s, 6), blocks=8)["pbo"] for s in range(5)])
    edge = []
    for s in range(5):
        m = _noise(s, 6)
        m[:, 0] += 0.003
        edge.append(O.pbo_cscv(m, blocks=8)["pbo"])
    assert float(np.mean(edge)) < 0.1 < noise


def test_deterministic_and_symmetric():
    m = _noise(7, 5, 400)
    a, b = O.pbo_cscv(m, blocks=8), O.pbo_cscv(m.copy(), blocks=8)
    assert a == b
    # the trials' order does not change the PBO (ties aside, the ranks are the same)
    c = O.pbo_cscv(m[:, ::-1], blocks=8)
    assert c["pbo"] == pytest.approx(a["pbo"])
    # every split and its complement are both evaluated: C(8, 4) = 70
    assert a["splits"] == 70 and len(a["logits"]) == 70


def test_too_little_to_measure_and_bad_blocks():
    assert O.pbo_cscv(_noise(1, 1, 100), blocks=4)["pbo"] is None          # one trial
    assert O.pbo_cscv(_noise(1, 3, 7), blocks=4)["pbo"] is None            # fewer than 2 rows a block
    with pytest.raises(ValueError, match="even"):
        O.pbo_cscv(_noise(1, 3, 100), blocks=5)
    assert O.pbo_cscv(_noise(1, 3, 100))["blocks"] == C.PBO_BLOCKS          # the tunable by default


def test_the_ceiling_applies_only_from_the_minimum_number_of_trials(monkeypatch):
    monkeypatch.setattr(C, "PBO_MAX", 0.4)
    monkeypatch.setattr(C, "PBO_MIN_TRIALS", 5)
    few = O.pbo_verdict(0.9, 4)
    assert few["applies"] is False and few["passed"] is True and "from 5 trials" in few["text"]
    high = O.pbo_verdict(0.41, 5)
    assert high["applies"] and not high["passed"] and "needs <= 0.4" in high["text"]
    assert O.pbo_verdict(0.4, 9)["passed"]
    assert not O.pbo_verdict(None, 9)["passed"]                 # cannot be measured: not a pass
