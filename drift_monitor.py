"""Model drift: every prediction is stored, joined later with what really happened, and compared
with the model's own test-period figures from training.

Stored per prediction (table ``predictions``): signal date, symbol, model checksum, close,
volatility_20, predicted next-day difference, score, signal. Once the next session's close is
known the outcome is measured in the same scale-free space training used
(y = diff / ``model_management.target_scale``, i.e. close * max(volatility_20, TARGET_VOL_FLOOR)),
with training's own metric functions:

* ``MSE`` ratio = MSE(model) / MSE(predicting no change)   (1 - skill)
* ``directional_accuracy`` = share of days the predicted sign was right

(both from ``model_management.compute_metrics``, the function training's figures come from).

Degradation is the worse of the MSE ratio's rise and the directional accuracy's fall, relative to
the training test period, over the last ``DRIFT_LOOKBACK_DAYS`` with at least
``DRIFT_MIN_SAMPLES`` outcomes. Severity (constants.py): LOW from 15 %, MEDIUM from 25 %, HIGH
from 40 %, CRITICAL from 60 %. A ``DRIFT ALERT`` line is logged with the severity; at CRITICAL
the trading cycle opens no new positions (the runbook: stop trading, retrain immediately).
"""
from __future__ import annotations

import argparse
import logging

import pandas as pd

import alerts
import config
import constants as C
from model_management import compute_metrics, target_scale
import state_db

log = logging.getLogger("drift")

SEVERITIES = ("CRITICAL", "HIGH", "MEDIUM", "LOW")   # worst first; each from DRIFT_<name> in constants.py
ACTIONS = {"LOW": "monitor closely", "MEDIUM": "schedule retraining within 1 week (python train_model.py)",
           "HIGH": "retrain within 24 hours (python train_model.py, then ./run_backtest.sh)",
           "CRITICAL": "trading stops opening positions: retrain now (python train_model.py), backtest, then resume"}

_SCHEMA = ["""CREATE TABLE IF NOT EXISTS predictions (
    date TEXT NOT NULL,
    symbol TEXT NOT NULL,
    model_checksum TEXT NOT NULL,
    close REAL NOT NULL,
    volatility REAL NOT NULL,
    predicted_diff REAL NOT NULL,
    score REAL,
    signal TEXT,
    created_at TEXT NOT NULL,
    PRIMARY KEY (date, symbol, model_checksum)
)"""]


def record_predictions(scored: pd.DataFrame, checksum: str, conn=None) -> int:
    """Store one row per (date, symbol, model); a rerun of the same day replaces its rows."""
    now = state_db.utcnow()
    rows = [(str(pd.Timestamp(r.Date).date()), r.Symbol, checksum, float(r.Close), float(r.volatility_20),
             float(r.predicted_diff), float(r.score), str(r.signal), now)
            for r in scored.itertuples(index=False)]
    with state_db.opened(conn, _SCHEMA) as c, state_db.transaction(c):
        c.executemany("INSERT OR REPLACE INTO predictions VALUES (?,?,?,?,?,?,?,?,?)", rows)
    return len(rows)


def realised(features: pd.DataFrame, checksum: str, conn=None, as_of=None) -> pd.DataFrame:
    """Stored predictions of this model joined with the next session's close."""
    with state_db.opened(conn, _SCHEMA) as c:
        preds = pd.read_sql_query("SELECT * FROM predictions WHERE model_checksum = ?", c, params=(checksum,))
    if preds.empty:
        return preds
    prices = features[["Date", "Symbol", "Close"]].sort_values(["Symbol", "Date"]).copy()
    if as_of is not None:
        prices = prices[prices["Date"] <= pd.Timestamp(as_of)]
    prices["next_close"] = prices.groupby("Symbol")["Close"].shift(-1)
    prices["date"] = prices["Date"].dt.strftime("%Y-%m-%d")
    joined = preds.merge(prices[["date", "Symbol", "next_close"]], left_on=["date", "symbol"],
                         right_on=["date", "Symbol"], how="inner").dropna(subset=["next_close"])
    scale = target_scale(joined["close"], joined["volatility"])
    joined["y_true"] = (joined["next_close"] - joined["close"]) / scale
    joined["y_pred"] = joined["predicted_diff"] / scale
    return joined


def _or_nan(value: float | None) -> float:
    return float("nan") if value is None else value


def severity_for(degradation: float) -> str | None:
    for name in SEVERITIES:
        if degradation >= getattr(C, f"DRIFT_{name}"):
            return name
    return None


def evaluate(features: pd.DataFrame, model, conn=None, as_of=None) -> dict | None:
    """Compare recent realised performance with the model's test metrics; log and return the
    result (None when there are too few outcomes to judge)."""
    joined = realised(features, model.checksum, conn, as_of)
    if joined.empty:
        log.info("Drift check: no realised predictions yet for model %s", model.checksum[:12])
        return None
    end = pd.Timestamp(joined["date"].max())
    recent = joined[pd.to_datetime(joined["date"]) > end - pd.Timedelta(days=C.DRIFT_LOOKBACK_DAYS)]
    if len(recent) < C.DRIFT_MIN_SAMPLES:
        log.info("Drift check: %d realised predictions in the last %d days (need %d): not judged yet",
                 len(recent), C.DRIFT_LOOKBACK_DAYS, C.DRIFT_MIN_SAMPLES)
        return None
    y_true, y_pred = recent["y_true"].to_numpy(), recent["y_pred"].to_numpy()
    live = compute_metrics(y_true, y_pred)            # training's metrics, on live outcomes
    mse, mse_naive = live["MSE"], live["baseline"]["MSE"] or float("nan")
    accuracy = _or_nan(live["directional_accuracy"])
    ratio_live = _or_nan(None if live["skill"] is None else 1.0 - live["skill"])
    trained = model.metrics or {}
    ratio_train = 1.0 - float(trained.get("skill", 0.0))
    acc_train = float(trained.get("directional_accuracy", 0.5))
    degradation = max((ratio_live - ratio_train) / ratio_train if ratio_train > 0 else 0.0,
                      (acc_train - accuracy) / acc_train if acc_train > 0 else 0.0)
    result = {"samples": int(len(recent)), "mse": mse, "mse_naive": mse_naive, "mse_ratio": ratio_live,
              "directional_accuracy": accuracy, "train_mse_ratio": ratio_train,
              "train_directional_accuracy": acc_train, "degradation": degradation,
              "severity": severity_for(degradation)}
    log.info("Drift check over %d outcomes: directional_accuracy %.3f (training %.3f), MSE %.4f, "
             "MSE ratio to no-change %.3f (training %.3f), degradation %.1f%%", len(recent), accuracy,
             acc_train, mse, ratio_live, ratio_train, 100 * degradation)
    if result["severity"]:
        level = {"LOW": logging.WARNING, "MEDIUM": logging.WARNING, "HIGH": logging.ERROR,
                 "CRITICAL": logging.CRITICAL}[result["severity"]]
        log.log(level, "DRIFT ALERT %s: model %s degraded %.0f%% (directional_accuracy %.3f vs %.3f, "
                "MSE ratio %.3f vs %.3f): %s", result["severity"], model.checksum[:12], 100 * degradation,
                accuracy, acc_train, ratio_live, ratio_train, ACTIONS[result["severity"]])
        if result["severity"] in ("HIGH", "CRITICAL"):
            alerts.send_alert(f"drift_{result['severity'].lower()}",
                              f"DRIFT ALERT {result['severity']}: model {model.checksum[:12]} degraded "
                              f"{100 * degradation:.0f}% over {len(recent)} outcomes (directional_accuracy "
                              f"{accuracy:.3f} vs {acc_train:.3f}): {ACTIONS[result['severity']]}",
                              key=model.checksum[:12], replay=state_db.is_replay(conn))
    return result


def last_alert_line() -> str | None:
    """The newest ``DRIFT ALERT`` line of the last DRIFT_ALERT_LOG_DAYS trading logs, or None
    (what the health check and the status page show)."""
    last = None
    for path in sorted(config.path(C.LOG_DIR).glob("trading_*.log"))[-C.DRIFT_ALERT_LOG_DAYS:]:
        for line in path.read_text(errors="replace").splitlines():
            if "DRIFT ALERT" in line:
                last = line
    return last


def main(argv=None) -> int:
    argparse.ArgumentParser(
        prog="drift_monitor.py",
        description="Print the newest DRIFT ALERT of the trading logs (changes nothing). Drift is "
                    "measured by every trading cycle; ./run_health_check.sh shows it too.").parse_args(argv)
    if config.refuse_without_home():          # a mistyped TRADING_HOME: not "no alert" about nothing
        return 2
    print(last_alert_line() or f"no DRIFT ALERT in the last {C.DRIFT_ALERT_LOG_DAYS} trading logs")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
