"""Drift: stored predictions joined with what happened, compared with the training figures."""
import logging
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

import data_collection
import drift_monitor
import sample_data
import state_db


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
    df["signal"] = "HOLD"
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
