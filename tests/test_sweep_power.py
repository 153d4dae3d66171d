"""Issue 21 point 6: the sample's AR 0.3, traded on its true conditional expectation, still
passes the gate's walk-forward leg after a 10-configuration sweep is recorded in the trial
registry: the verdict with the DSR deflated for the recorded trials, and the trial evidence the
gate applies (DSR at the trial count, PBO under its ceiling). No TensorFlow: the scores
are generated as in gate_sim.py; the 10 configurations are 10 signal thresholds.

Seeds: ``SWEEP_POWER_SEEDS`` (default 2 here; ``make gate-properties`` runs 12). At least 80 % of
the seeds whose single-configuration verdict passes must still pass after the sweep (the verdict,
and the trial evidence: its DSR is on the beta-hedged return, as the verdict judges the alpha),
and at least one must pass alone. Measured 2026-12-06 with 12 seeds: 11 pass alone, 10 still
pass after the sweep (seed 2008: trial DSR 0.78).
"""
import os

import numpy as np
import pytest

import backtest_engine as engine
import config
import constants as C
import data_collection as dc
import gate_sim
import model_management as mm
import overfitting
import signals
import skill_stats
import trial_registry as R

SEEDS = [2002, 2006, 2007, 2009, 2000, 2001, 2003, 2004, 2005, 2008, 2010, 2011][
    :int(os.environ.get("SWEEP_POWER_SEEDS", "2"))]
THRESHOLDS = [0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2]


def _frames(seed: int):
    raw = gate_sim._sample(seed, C.SAMPLE_AR_COEF, gate_sim.FULL)
    f = mm.sort_features(dc.build_features(raw))
    y = mm.compute_targets(f)
    score = C.SAMPLE_AR_COEF * f["log_return"].to_numpy() / f["volatility_20"].to_numpy()
    sessions = np.sort(f["Date"].unique())
    test = (f["Date"] >= sessions[gate_sim.TRAIN_SESSIONS]).to_numpy()
    frame = f.loc[test, ["Date", "Symbol", "Open", "Close", "volatility_20"]].copy()
    frame["predicted_diff"] = score[test] * frame["Close"] * frame["volatility_20"]
    return f, y, score, test, frame


def _replay(frame, threshold):
    before = C.SIGNAL_THRESHOLD
    C.SIGNAL_THRESHOLD = threshold            # restored below: the sweep's configuration, in this process only
    try:
        scored = signals.score_predictions(frame)
        market = engine.market_from_frames(frame, scored)
        equity = engine.run_engine(market, engine.LivePolicy()).equity_series()
        return equity, engine.buy_and_hold(market)
    finally:
        C.SIGNAL_THRESHOLD = before


def _verdict(f, y, score, test, frame, equity, bench, n_trials):
    ok = np.isfinite(y[test])
    return skill_stats.evaluate_evidence(y[test][ok], score[test][ok], float(np.nanmean(y[~test])),
                                         frame["Date"].to_numpy()[ok], equity.to_numpy(), bench.to_numpy(),
                                         n_trials=n_trials)


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """Per seed: the AR 0.3 configuration alone, and after 10 configurations recorded as trials
    (each seed in a home of its own: its own trial registry)."""
    out = {}
    before = os.environ.get("TRADING_HOME")
    try:
        for seed in SEEDS:
            home = tmp_path_factory.mktemp(f"sweep{seed}")
            os.environ["TRADING_HOME"] = str(home)
            production = config.path(C.PROCESSED_DATA_FILE)
            f, y, score, test, frame = _frames(seed)
            universe = sorted(frame["Symbol"].unique())
            equity, bench = _replay(frame, C.SIGNAL_THRESHOLD)
            alone = _verdict(f, y, score, test, frame, equity, bench, 1)
            for k, threshold in enumerate(THRESHOLDS):
                eq, b = _replay(frame, threshold)
                R.record_trial("sweep", config_fingerprint=f"{k:064d}", universe=universe, seed=seed,
                               settings={"threshold": threshold}, recorded=True, data_sha256=None,
                               data_path=production, series=R.daily_series(eq, b))
            n = overfitting.pending_trials(universe)
            after = _verdict(f, y, score, test, frame, equity, bench, n)
            trials = overfitting.trial_evidence(universe, R.daily_series(equity, bench), pending=True)
            print(f"seed {seed}: alone {'PASS' if alone['passed'] else 'FAIL'} (DSR {alone['dsr_excess']:.3f}); "
                  f"after the sweep: DSR at {n} trials {after['dsr_excess']:.3f}, verdict "
                  f"{'PASS' if after['passed'] else 'FAIL'}; PBO {trials['pbo']:.3f}")
            out[seed] = {"alone": alone, "after": after, "trials": trials, "n": n}
    finally:
        if before is None:
            os.environ.pop("TRADING_HOME", None)
        else:
            os.environ["TRADING_HOME"] = before
    return out


@pytest.mark.timeout(3600)
@pytest.mark.parametrize("seed", SEEDS)
def test_a_sweep_around_a_real_edge_is_counted_and_not_overfit(swept, seed):
    """The gate's trial leg: 11 trials counted, the PBO measured and under its ceiling (the
    edge is real: the configuration best in sample stays good out of sample)."""
    r = swept[seed]
    assert r["n"] == r["trials"]["n_trials"] == 11
    assert r["trials"]["pbo_applies"] and r["trials"]["pbo"] is not None
    assert r["trials"]["pbo_passed"] and r["trials"]["pbo"] <= 0.1, r["trials"]["pbo"]


@pytest.mark.timeout(3600)
def test_ar03_still_passes_the_walk_forward_leg_after_a_10_configuration_sweep(swept):
    passing = [s for s, r in swept.items() if r["alone"]["passed"]]
    assert passing, "no seed passes even alone: choose seeds where the configuration passes by itself"
    after = [s for s in passing if swept[s]["after"]["passed"] and swept[s]["trials"]["passed"]]
    lost = {s: (swept[s]["after"]["passed"], swept[s]["trials"]["dsr"]) for s in passing if s not in after}
    # the positive control's power (issue 21 point 0: at least 80 % of seeds), now after 10 more trials
    assert len(after) >= 0.8 * len(passing), (f"{len(after)} of {len(passing)} passing seeds survive the sweep; "
                                             f"lost (verdict, trial DSR): {lost}")
