"""From a predicted next-day price difference to a trading signal: one rule for the live cycle
and the backtest.

score = predicted_diff / (Close * volatility_20)

i.e. the predicted move in units of the symbol's recent daily volatility (the standard
deviation of its last 20 daily log returns), so one threshold fits a calm $900 stock and a
jumpy $20 one. ``score >= SIGNAL_THRESHOLD`` is BUY, ``score <= -SIGNAL_THRESHOLD`` is SELL,
anything between is HOLD.

``check_predictions`` stops a cycle on nonsensical output (NaN, all predictions equal, absurd
magnitudes), as the runbook's "Model Predictions Are Nonsensical" diagnosis expects.
"""
import numpy as np
import pandas as pd

from errors import UserFacingError
import constants as C

BUY, SELL, HOLD = "BUY", "SELL", "HOLD"


class NonsensicalPredictionError(UserFacingError):
    """The model's output cannot be traded on; the message says what is wrong and the fix."""


def score_predictions(pred: pd.DataFrame, threshold: float | None = None) -> pd.DataFrame:
    """Add ``score`` and ``signal`` to a frame with Close, volatility_20 and predicted_diff."""
    threshold = C.SIGNAL_THRESHOLD if threshold is None else threshold
    out = pred.copy()
    denom = out["Close"].to_numpy(float) * out["volatility_20"].to_numpy(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        score = np.where(denom > 0, out["predicted_diff"].to_numpy(float) / denom, np.nan)
    out["score"] = score
    out["signal"] = np.where(score >= threshold, BUY, np.where(score <= -threshold, SELL, HOLD))
    return out


def check_predictions(scored: pd.DataFrame) -> None:
    """Raise ``NonsensicalPredictionError`` for NaN, identical or absurd predictions."""
    fix = ("check the data (NaN count in processed_stock_data.csv), verify the model "
           "(python model_management.py verify) and retrain if needed (python train_model.py)")
    if scored.empty:
        raise NonsensicalPredictionError(f"the model produced no prediction: {fix}")
    values = scored["predicted_diff"].to_numpy(float)
    bad = ~np.isfinite(values) | ~np.isfinite(scored["score"].to_numpy(float))
    if bad.any():
        names = ", ".join(scored.loc[bad, "Symbol"].astype(str).unique()[:10])
        raise NonsensicalPredictionError(f"NaN or infinite prediction for {names}: {fix}")
    if len(values) >= 3 and np.ptp(values / scored["Close"].to_numpy(float)) < 1e-9:
        raise NonsensicalPredictionError(
            f"all {len(values)} predictions are the same ({values[0]:.6g}): the model is "
            f"degenerate: {fix}")
    move = np.abs(values) / scored["Close"].to_numpy(float)
    absurd = (np.abs(scored["score"].to_numpy(float)) > C.MAX_ABS_SCORE) | (move > C.MAX_PRED_MOVE)
    if absurd.any():
        row = scored.loc[absurd].iloc[0]
        raise NonsensicalPredictionError(
            f"absurd prediction for {row['Symbol']}: {row['predicted_diff']:+.4g} USD on a "
            f"{row['Close']:.2f} close (score {row['score']:+.2f}, limit {C.MAX_ABS_SCORE}): {fix}")


def build_signals(model, features: pd.DataFrame) -> tuple[pd.DataFrame, list[dict]]:
    """The backtest's and the walk-forward's signals: predictions for every row with a full
    window, scored exactly like the live cycle (``score_predictions``), and each day checked with
    ``check_predictions``: on a day the live cycle would have stopped (NaN, identical or absurd predictions) every
    signal becomes HOLD (positions kept, no order). Returns (scored, [{date, reason}])."""
    pred = model.predict(features, last_only=False)
    scored = score_predictions(pred)
    bad = []
    for day, group in scored.groupby("Date", sort=True):
        try:
            check_predictions(group)
        except NonsensicalPredictionError as exc:
            reason = " ".join(str(exc).split())[:300]
            bad.append({"date": str(pd.Timestamp(day).date()), "reason": reason})
    if bad:
        days = pd.to_datetime([b["date"] for b in bad])
        scored.loc[scored["Date"].isin(days), "signal"] = HOLD
    return scored, bad
