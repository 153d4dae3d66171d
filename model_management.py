"""The trained model: integrity, versions, preprocessing and fast inference.

* ``calculate_model_checksum(path)``: SHA-256 of the model file (the runbook's one-liner).
* ``load_model(path=None, verify=True) -> TradingModel``: verifies the file against the checksum
  in its metadata (``lstm_price_difference_model.json``) *before* reading any weight, then
  evaluates the LSTM with NumPy (``lstm_inference``), never TensorFlow: a cold prediction takes
  well under a second instead of 4-5 s.
* ``make_windows`` / ``fit_scaler`` / ``compute_targets``: THE preprocessing, used by
  ``train_model.py`` for training and by ``TradingModel.predict`` for live trading and backtests,
  with the scaler parameters stored in the metadata: training and inference cannot disagree.
* ``target_scale``: THE scale of the target (Close * max(volatility_20, TARGET_VOL_FLOOR)), used
  by the targets, by ``predict`` and by the drift monitor's outcomes.
* ``directional_accuracy`` / ``skill`` / ``compute_metrics``: THE model metrics, used by
  training (test and validation figures), by the drift monitor (live figures) and by the
  walk-forward's statistics (``skill_stats``: the skill of the Diebold-Mariano tests).
* Versions: ``python model_management.py list | verify | restore [VERSION] | prune --keep N``.

This module never imports TensorFlow: the network is evaluated with NumPy (``lstm_inference``).
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

import config
from errors import UserFacingError, failure_level, install_excepthook, storage_error
import constants as C
from fileutil import atomic_write_text, atomic_write_with, file_sha256, fsync_dir
from lstm_inference import InferenceError, load_network
from logging_setup import setup_logging

log = logging.getLogger("model")

FIX = ("restore the last good model with `python model_management.py restore` "
       "or retrain with `python train_model.py`")
METADATA_FORMAT = 1


def missing_fix() -> str:
    """What to do about a missing model: on a first install (no backup to restore) train one;
    else restore the last good model or retrain (``FIX``)."""
    root = config.path(C.MODEL_BACKUP_DIR)
    has_backup = root.is_dir() and any(d.is_dir() and not d.name.startswith(".") for d in root.iterdir())
    if has_backup:
        return FIX
    return ("train one with `python train_model.py` (after ./run_daily_data_update.sh; a first "
            "install: no earlier model is kept)")
OUTPUT_COLUMNS = ["Date", "Symbol", "Close", "volatility_20", "predicted_diff"]
TARGET_DEFINITION = ("y[t] = (Close[t+1] - Close[t]) / (Close[t] * max(volatility_20[t], "
                     "TARGET_VOL_FLOOR)): the next-day price difference in units of the day's "
                     "expected move; the network predicts z = (y - target_mean) / target_std")
METRIC_SPACE = ("MSE and skill are computed on y (the vol-scaled next-day difference, unclipped), "
                "comparable across symbols and prices; skill = 1 - MSE / MSE(predict no change, y=0)")


class ModelError(UserFacingError):
    """A model problem; the message names the file and the fix."""




class ModelNotFoundError(ModelError, FileNotFoundError):
    """The model file or its metadata is missing."""


class BackupNotFoundError(ModelNotFoundError):
    """``restore NAME`` with a name that is not a backup: a typing mistake (``usage``)."""

    usage = True


class ModelIntegrityError(ModelError):
    """The model file does not match its metadata (corrupted, swapped) or cannot be read."""


class ModelInputError(ModelError, ValueError):
    """The features handed to predict cannot be used (missing columns, NaN, duplicates)."""


# ----------------------------------------------------------------------------- paths, checksums
def model_path(path=None) -> Path:
    return Path(path) if path is not None else config.path(C.MODEL_FILE)


def metadata_path(model_file=None) -> Path:
    p = model_path(model_file)
    if p.name == C.MODEL_FILE:
        return p.with_name(C.MODEL_METADATA_FILE)
    return p.with_suffix(".json")


def _resolve_existing(path) -> Path:
    p = Path(path)
    if not p.is_absolute() and not p.exists():
        candidate = config.path(str(p))          # relative to TRADING_HOME when not in the cwd
        if candidate.exists():
            return candidate
    return p


def calculate_model_checksum(path) -> str:
    """SHA-256 (hex) of a model file. Raises ModelNotFoundError when it does not exist."""
    p = _resolve_existing(path)
    if not p.is_file():
        raise ModelNotFoundError(f"model file {p} not found: {missing_fix()}")
    return file_sha256(p)


def read_metadata(model_file=None) -> dict:
    meta = metadata_path(model_file)
    if not meta.is_file():
        raise ModelNotFoundError(f"model metadata {meta} not found (a model without metadata cannot "
                                 f"be verified and is never used): {FIX}")
    try:
        data = json.loads(meta.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelIntegrityError(f"model metadata {meta} is unreadable ({exc}): {FIX}") from None
    needed = ["sha256", "feature_columns", "window", "scaler"]
    missing = [k for k in needed if k not in data]
    if missing:
        raise ModelIntegrityError(f"model metadata {meta} lacks {missing}: {FIX}")
    return data


def verify_model(path=None) -> tuple[str, dict]:
    """Check the model file against its metadata. Returns (checksum, metadata)."""
    p = model_path(path)
    if not p.is_file():
        raise ModelNotFoundError(f"model file {p} not found: {missing_fix()}")
    metadata = read_metadata(p)
    actual = calculate_model_checksum(p)
    expected = str(metadata.get("sha256", ""))
    if actual != expected:
        raise ModelIntegrityError(
            f"model file {p} fails its integrity check: SHA-256 is {actual} but its metadata "
            f"{metadata_path(p).name} expects {expected} (corrupted or swapped file); trading "
            f"will not use it: {FIX}")
    return actual, metadata


# ----------------------------------------------------------------------------- preprocessing
def sort_features(features):
    """Rows sorted by Symbol then Date (the order every window is built in)."""
    needed = ["Date", "Symbol", "Close"]
    missing = [c for c in needed if c not in features.columns]
    if missing:
        raise ModelInputError(f"features lack columns {missing}: pass the output of "
                              "data_collection.build_features")
    df = features.copy()
    df["Date"] = pd.to_datetime(df["Date"])
    df = df.sort_values(["Symbol", "Date"], kind="mergesort").reset_index(drop=True)
    if df.duplicated(["Symbol", "Date"]).any():
        raise ModelInputError("features have duplicate (Symbol, Date) rows")
    return df


def target_scale(close, vol) -> np.ndarray:
    """USD per unit of the target y: Close * max(volatility_20, TARGET_VOL_FLOOR). A price
    difference divided by this is in the model's scale-free space (training's targets, the
    predictions, the drift monitor's outcomes)."""
    return np.asarray(close, np.float64) * np.maximum(np.asarray(vol, np.float64), C.TARGET_VOL_FLOOR)


def compute_targets(sorted_features) -> np.ndarray:
    """y for each row of a ``sort_features`` frame (NaN on each symbol's last row):
    the next-day price difference divided by ``target_scale``."""
    close = sorted_features["Close"].to_numpy(np.float64)
    sym = sorted_features["Symbol"].to_numpy()
    nxt = np.roll(close, -1)
    same = np.roll(sym, -1) == sym
    same[-1:] = False
    diff = np.where(same, nxt - close, np.nan)
    return diff / target_scale(close, sorted_features["volatility_20"].to_numpy())


def y_to_diff(y, close, vol) -> np.ndarray:
    """A target-space value back to a price difference (USD)."""
    return np.asarray(y, np.float64) * target_scale(close, vol)


def fit_scaler(sorted_features, feature_columns, fit_rows: np.ndarray, y_fit: np.ndarray) -> dict:
    """Means and standard deviations of the inputs over ``fit_rows`` (a boolean mask: the
    training period only) and of the training targets ``y_fit``."""
    values = sorted_features.loc[fit_rows, list(feature_columns)].to_numpy(np.float64)
    if len(values) < 2:
        raise ModelInputError("too few training rows to fit the scaler")
    mean = values.mean(axis=0)
    std = values.std(axis=0)
    std = np.where(std > 1e-12, std, 1.0)
    y = np.clip(np.asarray(y_fit, np.float64), -C.TARGET_CLIP, C.TARGET_CLIP)
    y_std = float(y.std()) if y.std() > 1e-12 else 1.0
    return {
        "feature_columns": list(feature_columns),
        "feature_mean": [float(v) for v in mean],
        "feature_std": [float(v) for v in std],
        "feature_clip": C.FEATURE_CLIP,
        "target_mean": float(y.mean()),
        "target_std": y_std,
        "target_clip": C.TARGET_CLIP,
        "vol_floor": C.TARGET_VOL_FLOOR,
        "target_definition": TARGET_DEFINITION,
    }


def scale_values(values: np.ndarray, scaler: dict) -> np.ndarray:
    mean = np.asarray(scaler["feature_mean"], np.float64)
    std = np.asarray(scaler["feature_std"], np.float64)
    clip = float(scaler.get("feature_clip", C.FEATURE_CLIP))
    return np.clip((np.asarray(values, np.float64) - mean) / std, -clip, clip).astype(np.float32)


def scale_target(y, scaler: dict) -> np.ndarray:
    y = np.clip(np.asarray(y, np.float64), -scaler["target_clip"], scaler["target_clip"])
    return ((y - scaler["target_mean"]) / scaler["target_std"]).astype(np.float32)


def unscale_target(z, scaler: dict) -> np.ndarray:
    return np.asarray(z, np.float64) * scaler["target_std"] + scaler["target_mean"]


def window_ends(symbols: np.ndarray, window: int, last_only: bool = False) -> np.ndarray:
    """Indices of the rows (sorted by symbol then date) that end a full window of their symbol."""
    n = len(symbols)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    change = np.ones(n, dtype=bool)
    change[1:] = symbols[1:] != symbols[:-1]
    starts = np.flatnonzero(change)
    run_start = np.repeat(starts, np.diff(np.append(starts, n)))
    pos = np.arange(n) - run_start
    ok = pos >= window - 1
    if last_only:
        last = np.zeros(n, dtype=bool)
        last[np.append(starts[1:] - 1, n - 1)] = True
        ok &= last
    return np.flatnonzero(ok)


def windows_from_values(scaled: np.ndarray, ends: np.ndarray, window: int) -> np.ndarray:
    """(len(ends), window, features) float32: the ``window`` rows up to each end, in order."""
    if len(ends) == 0:
        return np.zeros((0, window, scaled.shape[1]), np.float32)
    idx = ends[:, None] + np.arange(-window + 1, 1)[None, :]
    return scaled[idx]


def make_windows(features, window: int, feature_columns, scaler: dict, last_only: bool = False):
    """THE windowing + scaling used by training and inference.

    ``features``: output of ``build_features`` (any symbols and dates). Returns ``(X, rows)``:
    X float32 (n, window, len(feature_columns)) standardized with ``scaler``; rows: the frame's
    rows (sorted by Symbol, Date) that end each window, index reset."""
    feature_columns = list(feature_columns)
    missing = [c for c in feature_columns + ["volatility_20"] if c not in features.columns]
    if missing:
        raise ModelInputError(f"features lack columns {missing}: pass the output of "
                              "data_collection.build_features (the model was trained on "
                              f"{feature_columns})")
    df = sort_features(features)
    values = df[feature_columns].to_numpy(np.float64)
    bad = ~np.isfinite(values).all(axis=1) | ~np.isfinite(df["Close"].to_numpy(np.float64))
    if bad.any():
        first = df.loc[bad].iloc[0]
        raise ModelInputError(f"features contain {int(bad.sum())} rows with NaN/inf (first "
                              f"{first['Symbol']} {first['Date'].date()}): rebuild the data with "
                              "./run_daily_data_update.sh --force")
    ends = window_ends(df["Symbol"].to_numpy(), window, last_only)
    X = windows_from_values(scale_values(values, scaler), ends, window)
    return X, df.iloc[ends].reset_index(drop=True)


# ----------------------------------------------------------------------------- metrics
def directional_accuracy(y_true, y_pred) -> float | None:
    """Share of the days the price moved on which ``y_pred`` had the sign of ``y_true`` (None
    when it never moved). ``y_pred`` may be a scalar: a constant direction."""
    y_true = np.asarray(y_true, np.float64)
    y_pred = np.broadcast_to(np.asarray(y_pred, np.float64), y_true.shape)
    moved = y_true != 0
    if not moved.any():
        return None
    return float(np.mean(np.sign(y_pred[moved]) == np.sign(y_true[moved])))


def skill_from_mse(mse, mse_baseline) -> float | None:
    """THE forecast skill: 1 - MSE(forecast) / MSE(baseline); positive when the forecast beats the
    baseline, 0 when it is as good. None when undefined (no samples, or a baseline without error)."""
    if mse is None or mse_baseline is None or not math.isfinite(mse) or not mse_baseline > 0:
        return None
    return 1.0 - float(mse) / float(mse_baseline)


def skill(y_true, y_pred, baseline=0.0) -> float | None:
    """``skill_from_mse`` of ``y_pred`` against the ``baseline`` forecast (a scalar or an array;
    0.0: predicting no change, the training mean: the constant forecast)."""
    y_true = np.asarray(y_true, np.float64)
    if not len(y_true):
        return None
    y_pred = np.asarray(y_pred, np.float64)
    base = np.broadcast_to(np.asarray(baseline, np.float64), y_true.shape)
    return skill_from_mse(float(np.mean((y_true - y_pred) ** 2)), float(np.mean((y_true - base) ** 2)))


def compute_metrics(y_true, y_pred, baseline_direction: float = 1.0) -> dict:
    """directional_accuracy, MSE and skill of ``y_pred`` against ``y_true`` (both in the
    vol-scaled target space), and the same figures for the naive baseline that predicts no
    change (its direction: ``baseline_direction``, the training period's majority sign)."""
    y_true = np.asarray(y_true, np.float64)
    y_pred = np.asarray(y_pred, np.float64)
    n = int(len(y_true))
    if n == 0:
        return {"n": 0, "MSE": None, "directional_accuracy": None, "skill": None, "baseline": {}}
    return {
        "n": n, "MSE": float(np.mean((y_true - y_pred) ** 2)),
        "directional_accuracy": directional_accuracy(y_true, y_pred),
        "skill": skill(y_true, y_pred),
        "baseline": {"name": "no change", "MSE": float(np.mean(y_true ** 2)),
                     "directional_accuracy": directional_accuracy(y_true, baseline_direction),
                     "skill": 0.0},
    }


def format_metrics(name: str, m: dict) -> str:
    if not m or not m.get("n"):
        return f"{name}: no samples"
    b = m["baseline"]
    return (f"{name}: MSE={m['MSE']:.4f} (no-change baseline MSE={b['MSE']:.4f}) "
            f"skill={m['skill']:+.4f} directional_accuracy={m['directional_accuracy']:.4f} "
            f"(baseline directional_accuracy={b['directional_accuracy']:.4f}) n={m['n']}")


# ----------------------------------------------------------------------------- the model
class TradingModel:
    """A verified model ready to predict. Never holds TensorFlow."""

    def __init__(self, path: Path, metadata: dict, checksum: str, network):
        self.path = Path(path)
        self.metadata = metadata
        self.checksum = checksum
        self.network = network
        self.window = int(metadata["window"])
        self.feature_columns = list(metadata["feature_columns"])
        self.scaler = metadata["scaler"]
        if network.n_features != len(self.feature_columns):
            raise ModelIntegrityError(f"{path}: the network takes {network.n_features} features but "
                                      f"its metadata lists {len(self.feature_columns)}: {FIX}")
        if network.window not in (None, self.window):
            raise ModelIntegrityError(f"{path}: the network's window is {network.window} but its "
                                      f"metadata says {self.window}: {FIX}")

    @property
    def metrics(self) -> dict:
        """Test-period metrics saved at training (the drift monitor's reference)."""
        return self.metadata.get("metrics", {}).get("test", {})

    @property
    def version(self) -> str:
        return version_name(self.metadata, self.checksum)

    def predict_scaled(self, X: np.ndarray) -> np.ndarray:
        """Network output (the standardized target z) for windows from ``make_windows``."""
        return self.network.predict(X)[:, 0]

    def predict(self, features, last_only: bool = False):
        """Predicted next-day price difference (USD) for every row of ``features`` (output of
        build_features, any symbols and dates) that has a full window of history; with
        ``last_only`` only each symbol's last row. One vectorized pass."""
        X, rows = make_windows(features, self.window, self.feature_columns, self.scaler, last_only)
        present = set(features["Symbol"].astype(str).unique()) if len(features) else set()
        short = sorted(present - set(rows["Symbol"].astype(str)))
        if short:
            log.warning("no prediction for %s: fewer than %d rows of features (the model's window)",
                        ", ".join(short), self.window)
        z = self.predict_scaled(X) if len(X) else np.zeros(0)
        y = unscale_target(z, self.scaler)
        out = pd.DataFrame({
            "Date": rows["Date"].to_numpy(), "Symbol": rows["Symbol"].to_numpy(),
            "Close": rows["Close"].to_numpy(np.float64),
            "volatility_20": rows["volatility_20"].to_numpy(np.float64),
        })
        out["predicted_diff"] = y_to_diff(y, out["Close"], out["volatility_20"])
        return out[OUTPUT_COLUMNS]

def load_model(path=None, verify: bool = True) -> TradingModel:
    """The current model, verified against its metadata's checksum (``verify=False`` skips the
    checksum, never the structural checks). Raises ModelNotFoundError / ModelIntegrityError."""
    p = model_path(path)
    if verify:
        checksum, metadata = verify_model(p)
    else:
        if not p.is_file():
            raise ModelNotFoundError(f"model file {p} not found: {missing_fix()}")
        metadata = read_metadata(p)
        checksum = calculate_model_checksum(p)
    try:
        network = load_network(p)
    except InferenceError as exc:
        raise ModelIntegrityError(f"model file {p} cannot be evaluated: {exc}: {FIX}") from None
    return TradingModel(p, metadata, checksum, network)


# ----------------------------------------------------------------------------- versions and backups
def backup_root() -> Path:
    return config.path(C.MODEL_BACKUP_DIR)


def version_name(metadata: dict, checksum: str) -> str:
    created = str(metadata.get("created_at", ""))
    stamp = "".join(ch for ch in created if ch.isdigit())[:14] or datetime.now(timezone.utc).strftime("%Y%m%d%H%M%S")
    return f"{stamp[:8]}T{stamp[8:14]}Z_{checksum[:8]}"


def _copy_pair_into(directory: Path, model_file: Path, meta_file: Path | None) -> Path:
    """Copy a model (and its metadata) into ``directory`` atomically (a temp dir renamed)."""
    try:
        directory.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    except OSError as exc:
        raise (storage_error(exc, directory, "copy the model into") or exc) from None
    try:
        shutil.copy2(model_file, tmp / C.MODEL_FILE)
        if meta_file is not None and meta_file.is_file():
            shutil.copy2(meta_file, tmp / C.MODEL_METADATA_FILE)
        os.replace(tmp, directory)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError):
            raise (storage_error(exc, directory, "copy the model into") or exc) from None
        raise
    fsync_dir(directory.parent)
    return directory


def backup_current(path=None, reason: str = "") -> Path | None:
    """Copy the current model and its metadata into models/backups/<version>/ (or, when it fails
    verification, into models/quarantine/ so it can never be restored by mistake)."""
    p = model_path(path)
    if not p.is_file():
        return None
    meta = metadata_path(p)
    try:
        checksum, metadata = verify_model(p)
    except ModelError as exc:
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
        dest = _copy_pair_into(config.path(C.MODEL_QUARANTINE_DIR) / stamp, p, meta)
        log.warning("the current model fails verification (%s); kept a copy in %s, not in the backups",
                    exc, dest)
        return dest
    dest = backup_root() / version_name(metadata, checksum)
    if (dest / C.MODEL_FILE).is_file() and calculate_model_checksum(dest / C.MODEL_FILE) == checksum:
        log.info("the current model is already backed up as %s", dest.name)
        return dest
    if dest.exists():
        shutil.rmtree(dest)
    _copy_pair_into(dest, p, meta)
    log.info("backed up the current model to %s%s", dest, f" ({reason})" if reason else "")
    return dest


def install_model(candidate_h5, metadata: dict, path=None, reason: str = "") -> Path:
    """Make ``candidate_h5`` (a file in the model's folder) the current model: the current one is
    backed up first, then the file is renamed into place and its metadata written atomically."""
    p = model_path(path)
    candidate_h5 = Path(candidate_h5)
    actual = calculate_model_checksum(candidate_h5)
    if actual != metadata.get("sha256"):
        raise ModelIntegrityError(f"candidate {candidate_h5} has SHA-256 {actual}, its metadata says "
                                  f"{metadata.get('sha256')}: not installed")
    backup_current(p, reason=reason or "replaced")
    p.parent.mkdir(parents=True, exist_ok=True)
    if candidate_h5.parent.resolve() != p.parent.resolve():
        atomic_write_with(p, lambda tmp: shutil.copyfile(candidate_h5, tmp))
    else:
        with open(candidate_h5, "rb+") as fh:           # durable before it becomes the model
            os.fsync(fh.fileno())
        os.replace(candidate_h5, p)
    atomic_write_text(metadata_path(p), json.dumps(metadata, indent=2, sort_keys=True) + "\n")
    fsync_dir(p.parent)
    return p


def keep_candidate(candidate_h5, metadata: dict) -> Path:
    """Keep a trained model that was not promoted in models/candidates/<version>/ (with its
    metadata, which says why); never loaded by trading. Only the ``MODEL_BACKUPS_KEEP`` newest
    candidates are kept. Returns its folder."""
    root = config.path(C.MODEL_CANDIDATE_DIR)
    dest = root / version_name(metadata, str(metadata.get("sha256", "")))
    try:
        dest.mkdir(parents=True, exist_ok=True)
        atomic_write_with(dest / C.MODEL_FILE, lambda tmp: shutil.copyfile(candidate_h5, tmp))
        atomic_write_text(dest / C.MODEL_METADATA_FILE, json.dumps(metadata, indent=2, sort_keys=True) + "\n")
    except OSError as exc:
        raise (storage_error(exc, dest, "keep the candidate model in") or exc) from None
    kept = sorted((d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")), key=lambda d: d.name)
    for old in kept[:max(len(kept) - C.MODEL_BACKUPS_KEEP, 0)]:
        shutil.rmtree(old, ignore_errors=True)
    return dest


def list_backups() -> list[dict]:
    """Backups, newest model first: version, path, created_at, checksum, valid, test metrics."""
    root = backup_root()
    out = []
    if not root.is_dir():
        return out
    for d in root.iterdir():
        if not d.is_dir() or d.name.startswith("."):
            continue
        item = {"version": d.name, "path": str(d), "created_at": "", "checksum": "", "valid": False,
                "problem": "", "test": {}}
        try:
            checksum, metadata = verify_model(d / C.MODEL_FILE)
            item.update(created_at=metadata.get("created_at", ""), checksum=checksum, valid=True,
                        test=metadata.get("metrics", {}).get("test", {}))
        except ModelError as exc:
            item["problem"] = str(exc).split(":")[0]
            try:
                item["checksum"] = calculate_model_checksum(d / C.MODEL_FILE)
            except ModelError:
                pass
        out.append(item)
    out.sort(key=lambda i: (i["created_at"], i["version"]), reverse=True)
    return out


def restore(version: str | None = None, path=None) -> dict:
    """Put a backup back as the current model (the current one is backed up first). Without a
    version: the newest valid backup older than the current model (or the newest valid one when
    the current model is missing or fails verification)."""
    p = model_path(path)
    backups = list_backups()
    current_sum, current_created = None, None
    try:
        current_sum, current_meta = verify_model(p)
        current_created = current_meta.get("created_at", "")
    except ModelError:
        pass
    if version:
        chosen = next((b for b in backups if b["version"] == version), None)
        if chosen is None:
            names = ", ".join(b["version"] for b in backups) or "none"
            raise BackupNotFoundError(f"no backup named {version} (backups: {names}); see "
                                     "`python model_management.py list`")
        if not chosen["valid"]:
            raise ModelIntegrityError(f"backup {version} fails verification ({chosen['problem']}); "
                                      "choose another from `python model_management.py list` or "
                                      "retrain with `python train_model.py`")
    else:
        valid = [b for b in backups if b["valid"] and b["checksum"] != current_sum]
        if current_created:
            valid = [b for b in valid if b["created_at"] < current_created]
        if not valid:
            raise ModelNotFoundError("no valid backup to restore (see `python model_management.py "
                                     "list`): retrain with `python train_model.py`")
        chosen = valid[0]
    source = Path(chosen["path"])
    metadata = read_metadata(source / C.MODEL_FILE)
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{p.stem}.", suffix=".h5", dir=p.parent)
    except OSError as exc:
        raise (storage_error(exc, p, "restore the model as") or exc) from None
    os.close(fd)
    try:
        shutil.copy2(source / C.MODEL_FILE, tmp)
        install_model(tmp, metadata, p, reason=f"before restoring {chosen['version']}")
    except BaseException as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise (storage_error(exc, p, "restore the model as") or exc) from None
        raise
    log.info("restored model %s (SHA-256 %s) as %s", chosen["version"], chosen["checksum"], p)
    return chosen


def prune(keep: int | None = None) -> list[str]:
    """Delete all but the ``keep`` newest backups (default MODEL_BACKUPS_KEEP); returns the
    removed versions."""
    keep = C.MODEL_BACKUPS_KEEP if keep is None else keep
    if keep < 0:
        raise ValueError("--keep must be 0 or more")
    removed = []
    for item in list_backups()[keep:]:
        shutil.rmtree(item["path"], ignore_errors=True)
        removed.append(item["version"])
        log.info("pruned model backup %s", item["version"])
    return removed


# ----------------------------------------------------------------------------- CLI
def _fmt(v, spec=".4f"):
    return "-" if v is None else format(v, spec)


def main(argv=None) -> int:
    install_excepthook()
    parser = argparse.ArgumentParser(description="Verify, list, restore and prune model versions.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="backups with their dates, checksums and test metrics")
    sub.add_parser("verify", help="check the current model against its metadata (exit 1 on failure)")
    r = sub.add_parser("restore", help="put a backup back (default: the previous good one)")
    r.add_argument("version", nargs="?", help="a version from `list`")
    pr = sub.add_parser("prune", help="delete old backups")
    pr.add_argument("--keep", type=int, default=None, help="backups to keep (default MODEL_BACKUPS_KEEP)")
    args = parser.parse_args(argv)
    if config.refuse_without_home():          # a mistyped TRADING_HOME: one line, nothing created
        return 2
    setup_logging("trading")
    try:
        if args.command == "verify":
            model = load_model()
            m = model.metrics
            print(f"OK {model.path}: SHA-256 {model.checksum} matches its metadata; version "
                  f"{model.version}, window {model.window}, {len(model.feature_columns)} features, "
                  f"test MSE {_fmt(m.get('MSE'))}, skill {_fmt(m.get('skill'), '+.4f')}, "
                  f"directional_accuracy {_fmt(m.get('directional_accuracy'))}")
            log.info("model verified: %s sha256=%s", model.path, model.checksum)
        elif args.command == "list":
            try:
                current = verify_model()[0]
            except ModelError:
                current = None
            backups = list_backups()
            if not backups:
                print(f"no backups in {backup_root()}")
            for b in backups:
                t = b["test"] or {}
                mark = "*" if b["checksum"] and b["checksum"] == current else " "
                status = "ok" if b["valid"] else f"INVALID ({b['problem']})"
                print(f"{mark} {b['version']}  created {b['created_at'] or '?'}  sha256 {b['checksum'][:16]}  "
                      f"test MSE {_fmt(t.get('MSE'))} skill {_fmt(t.get('skill'), '+.4f')} "
                      f"directional_accuracy {_fmt(t.get('directional_accuracy'))}  {status}")
        elif args.command == "restore":
            chosen = restore(args.version)
            print(f"restored {chosen['version']} (SHA-256 {chosen['checksum']})")
        elif args.command == "prune":
            removed = prune(args.keep)
            print(f"removed {len(removed)} backups" + (f": {', '.join(removed)}" if removed else ""))
    except (ModelError, ValueError) as exc:
        log.log(failure_level(exc), "model_management %s FAILED: %s", args.command, exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
