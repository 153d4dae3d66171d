"""Drift: stored predictions joined with what happened, compared with the training figures."""
import logging
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

import data_collection
import drift_monitor
import model_management as mm
import sample_data
import state_db
from signals import HOLD


@pytest.fixture
def features():
    raw = sample_data.generate_prices(["AAPL", "MSFT", "JPM"], start="2025-01-02", end="2025-10-31")
    return data_collection.build_features(raw)


def store(features, checksum, quality):
    """Predictions over the last 40 sessions: ``quality`` 1 = the realised move scaled down
    (right direction), -1 = the opposite direction."""
    df = features.sort_values(["Symbol", "Date"]).copy()
    df["next"] = df.groupby("Symbol")["Close"].shift(-1)
    df = df.dropna(subset=["next"])
    df = df[df["Date"] >= df["Date"].max() - pd.Timedelta(days=40)]
    rng = np.random.default_rng(0)
    actual = df["next"] - df["Close"]
    df["predicted_diff"] = quality * 0.5 * actual + rng.normal(0, 0.05, len(df)) * df["Close"] * df["volatility_20"]
    df["score"] = df["predicted_diff"] / (df["Close"] * df["volatility_20"])
    df["signal"] = HOLD
    return drift_monitor.record_predictions(df, checksum, state_db.connect())


def model(skill=0.05, accuracy=0.58):
    return SimpleNamespace(checksum="c" * 64, metrics={"skill": skill, "directional_accuracy": accuracy})


def test_no_outcomes_yet_is_not_judged(features):
    assert drift_monitor.evaluate(features, model(), state_db.connect()) is None


def test_healthy_model_raises_no_alert(features, caplog):
    assert store(features, "c" * 64, 1) > drift_monitor.C.DRIFT_MIN_SAMPLES
    with caplog.at_level(logging.INFO, logger="drift"):
        result = drift_monitor.evaluate(features, model(), state_db.connect())
    assert result["severity"] is None and result["directional_accuracy"] > 0.8
    assert "directional_accuracy" in caplog.text and "MSE" in caplog.text
    assert "DRIFT ALERT" not in caplog.text


def test_broken_model_raises_critical_alert(features, caplog):
    store(features, "c" * 64, -1)
    result = drift_monitor.evaluate(features, model(), state_db.connect())
    assert result["severity"] == "CRITICAL"
    assert "DRIFT ALERT CRITICAL" in caplog.text and "retrain" in caplog.text


@pytest.mark.parametrize("degradation, severity", [(0.10, None), (0.15, "LOW"), (0.30, "MEDIUM"),
                                                   (0.45, "HIGH"), (0.70, "CRITICAL")])
def test_severity_levels(degradation, severity):
    assert drift_monitor.severity_for(degradation) == severity


def test_predictions_of_another_model_are_ignored(features):
    store(features, "d" * 64, -1)
    assert drift_monitor.evaluate(features, model(), state_db.connect()) is None


def test_training_period_predictions_show_no_degradation_even_under_the_vol_floor(features):
    """Drift judged on the very rows and predictions training measured its test figures on
    reports zero degradation: outcomes are scaled exactly as training's targets are, including
    rows whose volatility_20 is under TARGET_VOL_FLOOR."""
    df = mm.sort_features(features)
    df = df[df["Date"] > df["Date"].max() - pd.Timedelta(days=drift_monitor.C.DRIFT_LOOKBACK_DAYS)]
    df = df.reset_index(drop=True)
    calm = (np.arange(len(df)) % 3) == 0                  # a third of the rows: under the floor
    floor = drift_monitor.C.TARGET_VOL_FLOOR
    df["volatility_20"] = np.where(calm, floor / 4, floor * 2)   # both kinds weigh alike in y
    y = mm.compute_targets(df)                             # training's targets
    rng = np.random.default_rng(1)
    # the model is right on ordinary days and wrong on the calm ones, so that weighting the calm
    # rows differently (another scale) would change the MSE ratio
    y_hat = np.where(calm, -0.5 * y, 0.5 * y) + rng.normal(0, 0.1, len(df))
    judged = np.isfinite(y)
    assert judged.sum() > drift_monitor.C.DRIFT_MIN_SAMPLES and (calm & judged).sum() > 10
    trained = mm.compute_metrics(y[judged], y_hat[judged])   # what training saves as test metrics
    scored = df[judged].assign(predicted_diff=mm.y_to_diff(y_hat[judged], df["Close"][judged],
                                                           df["volatility_20"][judged]),
                               score=0.0, signal=HOLD)
    drift_monitor.record_predictions(scored, "e" * 64, state_db.connect())
    reference = SimpleNamespace(checksum="e" * 64, metrics=trained)
    result = drift_monitor.evaluate(features, reference, state_db.connect())
    assert result["samples"] == judged.sum()
    assert result["mse_ratio"] == pytest.approx(1.0 - trained["skill"], rel=1e-9)
    assert result["directional_accuracy"] == pytest.approx(trained["directional_accuracy"])
    assert result["degradation"] == pytest.approx(0.0, abs=1e-9) and result["severity"] is None
