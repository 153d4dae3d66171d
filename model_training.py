"""The one training routine of the LSTM (TensorFlow/Keras): the production training of
``python train_model.py`` (its command line) and each fold of the walk-forward
(``walk_forward.py``) run this code.

* ``PROFILES`` / ``TrainConfig``: what one training run is (the network's shape, epochs and
  patience; the seed, the data and model files, ``--force``, a shuffled-targets control run).
* ``build_dataset``: windows (``model_management.make_windows``, the code live trading and
  backtests use), targets, the chronological train / validation / test split by session date
  (``VALIDATION_FRACTION``, ``TEST_FRACTION``) and the scaler fitted on the training period only.
* ``fit_network``: THE fit, seeded and deterministic, early stopping on the validation period.
* ``train``: one production run, in named steps: data, fit, metrics, the NumPy parity check and
  the metadata, the promotion decision (validation skill positive against no change and the
  training mean, significant against no change by a Diebold-Mariano test at ``PROMOTION_ALPHA``,
  validation MSE not worse than the current model's, or ``force``), install: the first model of a
  home (or ``force``) as the live model, any later one as the SHADOW model (``shadow_model``: it
  trades only once it has proved itself on live sessions); a model that fails is kept in
  models/candidates/, never used.

TensorFlow is imported late (``import_keras``): importing it takes seconds and only training
needs it.
"""
from __future__ import annotations

import io
import logging
import os
import platform
import sys
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

import config
import constants as C
import audit_logging
import model_management as mm
import shadow_model
import skill_stats
from data_collection import frame_columns, load_processed
from errors import UserFacingError
import fileutil
from fileutil import file_sha256
from lstm_inference import load_network

log = logging.getLogger("train")


class TrainingError(UserFacingError):
    """Training cannot proceed; the message names the problem and the fix."""


class _Profiles(Mapping):
    """The training profiles by name, read from constants.py at each use (so the effective
    settings, settings.toml included, are what a profile holds): ``PROFILES["tiny"]``."""

    def _all(self) -> dict:
        return {
            "default": {"window": C.WINDOW_LENGTH, "units": C.LSTM_UNITS, "dense_units": C.DENSE_UNITS,
                        "layers": C.LSTM_LAYERS, "epochs": C.TRAIN_EPOCHS, "patience": C.TRAIN_PATIENCE},
            "tiny": {"window": C.TINY_WINDOW, "units": C.TINY_UNITS, "dense_units": C.TINY_DENSE_UNITS,
                     "layers": 1, "epochs": C.TINY_EPOCHS, "patience": C.TINY_PATIENCE},
        }

    def __getitem__(self, name: str) -> dict:
        return self._all()[name]

    def __iter__(self):
        return iter(("default", "tiny"))

    def __len__(self) -> int:
        return 2


PROFILES = _Profiles()


# ----------------------------------------------------------------------------- data
def drop_short_symbols(features, window: int):
    """Skip (and name) symbols with too few rows to train on."""
    need = max(C.MIN_SYMBOL_ROWS, window + 2)
    counts = features.groupby("Symbol").size()
    short = counts[counts < need]
    for sym, n in short.items():
        log.warning("skipping %s: only %d feature rows (need %d, MIN_SYMBOL_ROWS)", sym, n, need)
    kept = features[~features["Symbol"].isin(short.index)]
    if kept.empty:
        raise TrainingError(f"no symbol has at least {need} feature rows (too little history for the "
                            f"window of {window}): run ./run_daily_data_update.sh --force or use a "
                            "smaller --window")
    return kept, sorted(short.index.astype(str))


def split_dates(dates, validation_fraction=None, test_fraction=None):
    """(validation_start, test_start) by session dates, shared by all symbols (fractions default
    to VALIDATION_FRACTION and TEST_FRACTION)."""
    validation_fraction = C.VALIDATION_FRACTION if validation_fraction is None else validation_fraction
    test_fraction = C.TEST_FRACTION if test_fraction is None else test_fraction
    sessions = np.sort(np.unique(np.asarray(dates, dtype="datetime64[ns]")))
    n = len(sessions)
    n_test = max(int(round(n * test_fraction)), 1)
    n_val = max(int(round(n * validation_fraction)), 1)
    if n - n_test - n_val < 2:
        raise TrainingError(f"only {n} sessions: too little history to split into train, validation "
                            "and test periods")
    return sessions[n - n_test - n_val], sessions[n - n_test]


def build_dataset(features, window: int, feature_columns, shuffle_targets: bool = False,
                  seed: int | None = None, validation_fraction: float | None = None,
                  test_fraction: float | None = None) -> dict:
    """Windows, targets, masks and the scaler (fitted on the training period only).

    A sample is the window ending at row t with target y[t] (uses Close[t+1]). It belongs to
    train when Date[t+1] < validation_start (so no validation price leaks into training), to
    validation when t >= validation_start and Date[t+1] < test_start, to test when t >= test_start.
    ``seed`` and the fractions default to TRAIN_SEED, VALIDATION_FRACTION and TEST_FRACTION."""
    seed = C.TRAIN_SEED if seed is None else seed
    validation_fraction = C.VALIDATION_FRACTION if validation_fraction is None else validation_fraction
    test_fraction = C.TEST_FRACTION if test_fraction is None else test_fraction
    df = mm.sort_features(features)
    y = mm.compute_targets(df)
    nxt = df.groupby("Symbol", sort=False)["Date"].shift(-1).to_numpy()
    dates = df["Date"].to_numpy()
    val_start, test_start = split_dates(dates, validation_fraction, test_fraction)
    has_y = np.isfinite(y)
    train_rows = has_y & (nxt < val_start)
    val_rows = has_y & (dates >= val_start) & (nxt < test_start)
    test_rows = has_y & (dates >= test_start)
    fit_rows = train_rows                              # the scaler sees the training period only
    y_fit = y[fit_rows]
    if shuffle_targets:                                # control experiment: break the x -> y link
        rng = np.random.default_rng(seed)
        y = y.copy()
        for mask in (train_rows, val_rows):            # the test period keeps the true outcomes
            y[mask] = rng.permutation(y[mask])
        y_fit = y[fit_rows]
    scaler = mm.fit_scaler(df, feature_columns, fit_rows, y_fit)
    X, rows = mm.make_windows(df, window, feature_columns, scaler)
    # map window ends back to df rows (make_windows keeps the same sort order)
    ends = mm.window_ends(df["Symbol"].to_numpy(), window)
    out = {"df": df, "scaler": scaler, "X": X, "rows": rows, "y": y[ends],
           "validation_start": val_start, "test_start": test_start}
    for name, mask in (("train", train_rows), ("validation", val_rows), ("test", test_rows)):
        out[f"{name}_mask"] = mask[ends]
    if (out["train_mask"].sum() < 10 or out["validation_mask"].sum() < 1
            or (test_fraction > 0 and out["test_mask"].sum() < 1)):
        raise TrainingError(f"too little history for a window of {window}: "
                            f"{int(out['train_mask'].sum())} training, {int(out['validation_mask'].sum())} "
                            f"validation and {int(out['test_mask'].sum())} test samples")
    return out


# ----------------------------------------------------------------------------- model
def import_keras():
    """(tensorflow, keras), imported now (late: importing TensorFlow takes seconds; only training
    needs it)."""
    # The one place TensorFlow is imported, so its start-up noise is silenced once, here, before
    # the import: the C++ runtime's lines (absl's "All log messages before absl::InitializeLog()",
    # cpu_feature_guard, and the "NodeDef mentions attribute use_unbounded_threadpool" E0000 note
    # that Keras's data pipeline prints twice, once per dataset) only read TF_CPP_MIN_LOG_LEVEL
    # when the library loads. A person's own setting is kept. Real errors still show: a failing
    # training raises a Python exception (one line, errors.log), never only a C++ log line, and
    # Python-side TensorFlow/absl errors stay at ERROR.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf   # late: importing TensorFlow takes seconds; only training needs it
    import keras
    from absl import logging as absl_logging   # late: comes with TensorFlow
    absl_logging.set_verbosity(absl_logging.ERROR)
    tf.get_logger().setLevel(logging.ERROR)
    return tf, keras


def build_network(window: int, n_features: int, units: int, dense_units: int, layers: int,
                  learning_rate: float):
    _, keras = import_keras()
    stack = [keras.Input((window, n_features), name="features")]
    for i in range(layers):
        stack.append(keras.layers.LSTM(units, return_sequences=i < layers - 1, name=f"lstm_{i + 1}"))
    if dense_units:
        stack.append(keras.layers.Dense(dense_units, activation="relu", name="dense_1"))
    stack.append(keras.layers.Dense(1, name="predicted_z"))
    model = keras.Sequential(stack, name="lstm_price_difference")
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss="mse")
    return model


def fit_network(ds: dict, prof: dict, seed: int | None = None, verbose=0):
    """THE fit: a fresh network of profile ``prof`` trained on ``ds``'s training samples with
    early stopping on its validation samples, seeded and deterministic. Returns (network,
    history). ``train`` and the walk-forward (walk_forward.py) both call it."""
    tf, keras = import_keras()
    seed = C.TRAIN_SEED if seed is None else seed
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()
    tr, va = ds["train_mask"], ds["validation_mask"]
    z = mm.scale_target(ds["y"], ds["scaler"])
    X = ds["X"]
    net = build_network(prof["window"], X.shape[2], prof["units"], prof["dense_units"],
                        prof["layers"], C.TRAIN_LEARNING_RATE)
    stopper = keras.callbacks.EarlyStopping(monitor="val_loss", patience=prof["patience"],
                                            restore_best_weights=True)
    history = net.fit(X[tr], z[tr], validation_data=(X[va], z[va]), epochs=prof["epochs"],
                      batch_size=C.TRAIN_BATCH_SIZE, shuffle=True, verbose=verbose,
                      callbacks=[stopper, _epoch_logger(keras, prof["epochs"])])
    return net, history


def _epoch_logger(keras, epochs: int):
    class EpochLogger(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            logs = logs or {}
            log.info("epoch %d/%d loss=%.5f val_loss=%.5f", epoch + 1, epochs,
                     logs.get("loss", float("nan")), logs.get("val_loss", float("nan")))
    return EpochLogger()


MODEL_TEMP_PREFIX = f".{Path(C.MODEL_FILE).stem}."     # temp model files: <prefix><pid>.<random>.tmp.h5
MODEL_TEMP_SUFFIX = ".tmp.h5"


def h5_bytes(model) -> bytes:
    """The model as the bytes of a Keras HDF5 file (what ``model.save('x.h5')`` writes), built in
    memory: HDF5 writing straight to a file that fills the disk crashes the process
    (segmentation fault) and leaves a half-written file; written from memory, a full disk is
    an ordinary OSError."""
    from keras.src.legacy.saving import legacy_h5_format   # late: part of Keras (TensorFlow)
    buf = io.BytesIO()
    absl = logging.getLogger("absl")
    level = absl.level
    absl.setLevel(logging.ERROR)                       # the "HDF5 is legacy" notice
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with h5py.File(buf, "w") as fh:
                legacy_h5_format.save_model_to_hdf5(model, fh)
    finally:
        absl.setLevel(level)
    return buf.getvalue()


def save_h5(model, directory: Path) -> Path:
    """The model in a new temp file in ``directory`` whose name ends with .h5; the caller renames
    it into place (or removes it). A full or read-only disk raises ``errors.StorageError``
    naming the file and the fix, and leaves no temp file; temp files of a training that crashed
    earlier are removed first."""
    data = h5_bytes(model)
    fileutil.remove_stale_temps(directory, MODEL_TEMP_PREFIX, MODEL_TEMP_SUFFIX)
    return fileutil.write_temp_bytes(directory, data, MODEL_TEMP_PREFIX, MODEL_TEMP_SUFFIX)


def versions() -> dict:
    tf, keras = import_keras()
    return {"python": platform.python_version(), "numpy": np.__version__, "pandas": pd.__version__,
            "tensorflow": tf.__version__, "keras": keras.__version__, "h5py": h5py.__version__}


# ----------------------------------------------------------------------------- comparison
def evaluate_current(features, ds: dict, path: Path, period: str = "validation") -> tuple[float | None, str]:
    """MSE of the current model on the new ``period`` (``validation``: model selection never
    looks at the test period), or (None, why not). With the new model's predictions in
    ``ds["pred_y"]`` (``_metrics``), ``ds["dm_vs_current"]`` gets the Diebold-Mariano test of the
    new model against the current one on the same samples (``skill_stats.diebold_mariano``)."""
    if not path.is_file():
        return None, "no current model"
    try:
        current = mm.load_model(path)
    except mm.ModelError as exc:
        return None, f"the current model cannot be used ({exc})"
    missing = [c for c in current.feature_columns if c not in features.columns]
    if missing:
        return None, f"the current model needs features {missing} that the data lacks"
    test_rows = ds["rows"][ds[f"{period}_mask"]]
    test_y = ds["y"][ds[f"{period}_mask"]]
    new_y = ds["pred_y"][ds[f"{period}_mask"]] if "pred_y" in ds else np.full(len(test_y), np.nan)
    try:
        pred = current.predict(features[features["Symbol"].isin(test_rows["Symbol"].unique())])
    except mm.ModelError as exc:
        return None, f"the current model cannot predict on the new data ({exc})"
    key = test_rows[["Symbol", "Date"]].assign(y=test_y, new=new_y)
    merged = key.merge(pred, on=["Symbol", "Date"], how="inner")
    if len(merged) < 0.9 * len(key):
        return None, (f"the current model (window {current.window}) covers only {len(merged)} of "
                      f"{len(key)} {period} samples")
    y_old = merged["predicted_diff"].to_numpy() / (merged["Close"].to_numpy() *
                                                   np.maximum(merged["volatility_20"].to_numpy(),
                                                              C.TARGET_VOL_FLOOR))
    if np.isfinite(merged["new"].to_numpy()).all():
        dm = skill_stats.diebold_mariano(merged["y"].to_numpy(), merged["new"].to_numpy(), y_old,
                                         dates=merged["Date"].to_numpy())
        ds["dm_vs_current"] = {"statistic": dm["statistic"], "p_value": dm["p_value"], "n": dm["n"]}
    return float(np.mean((merged["y"].to_numpy() - y_old) ** 2)), f"current model {current.version}"


# ----------------------------------------------------------------------------- training
@dataclass(frozen=True)
class TrainConfig:
    """One training run. ``profile`` (``PROFILES``) gives the network; ``epochs``, ``units``,
    ``window``, ``layers``, ``dense_units`` override it when given. ``data_path``: the processed
    CSV (default ``processed_stock_data.csv``); ``model_file``: where the model goes (default
    ``lstm_price_difference_model.h5``); ``force``: install whatever was trained as the live model at
    once (audited, with ``reason``);
    ``shuffle_targets``: the control run (never promoted without ``force``); ``verbose``: Keras's
    progress (default: on a terminal only)."""
    data_path: str | Path | None = None
    profile: str = "default"
    epochs: int | None = None
    units: int | None = None
    window: int | None = None
    layers: int | None = None
    dense_units: int | None = None
    seed: int = field(default_factory=lambda: C.TRAIN_SEED)
    force: bool = False
    reason: str | None = None
    shuffle_targets: bool = False
    model_file: str | Path | None = None
    verbose: int | None = None

    def network(self) -> dict:
        """The profile with the overrides: window, units, dense_units, layers, epochs, patience."""
        if self.profile not in PROFILES:
            raise TrainingError(f"unknown training profile {self.profile!r}: use one of {', '.join(sorted(PROFILES))}")
        prof = dict(PROFILES[self.profile])
        for key in ("epochs", "units", "window", "layers", "dense_units"):
            if getattr(self, key) is not None:
                prof[key] = int(getattr(self, key))
        if prof["window"] < 1 or prof["units"] < 1 or prof["epochs"] < 1 or prof["layers"] < 1:
            raise TrainingError("--window, --units, --epochs and --layers must be at least 1")
        return prof


def train(cfg: TrainConfig) -> dict:
    """Train, evaluate and (maybe) promote. Returns a summary dict (``promoted``: passed
    validation or forced, ``stage``: ``live`` / ``shadow`` / ``candidate``, ``reason``,
    ``metrics``, ``metadata``, ``path`` (where the model went), ``previous_validation_MSE``,
    ``no_validation_skill``).
    Raises DataError / TrainingError on bad input."""
    started = time.monotonic()
    prof = cfg.network()
    target = mm.model_path(cfg.model_file)
    data_file = Path(cfg.data_path) if cfg.data_path else config.path(C.PROCESSED_DATA_FILE)
    features, skipped, ds = _dataset(cfg, prof, data_file)
    verbose = cfg.verbose if cfg.verbose is not None else (1 if sys.stdout.isatty() else 0)
    net, history = fit_network(ds, prof, cfg.seed, verbose)
    metrics, keras_z = _metrics(net, ds)
    no_skill = validation_skill_problem(metrics["validation"])
    tmp = save_h5(net, target.parent)
    try:
        gap = _parity(tmp, ds, keras_z)
        checksum = mm.calculate_model_checksum(tmp)
        metadata = _metadata(cfg, prof, net, history, ds, features, skipped, data_file, metrics, checksum,
                             round(time.monotonic() - started, 1), gap)
        old_mse, about = evaluate_current(features, ds, target, "validation")
        promote, reason = _promotion(cfg, metrics, no_skill, old_mse, about, checksum)
        live_checksum = _installed_checksum(target)
        stage = ("live" if cfg.force or live_checksum is None else "shadow") if promote else "candidate"
        metadata["promotion"] = {"promoted": promote, "reason": reason, "previous_validation_MSE": old_mse,
                                 "selected_on": "validation", "no_validation_skill": no_skill, "stage": stage,
                                 "dm_vs_no_change": metrics["validation"].get("dm_vs_no_change"),
                                 "dm_vs_current": ds.get("dm_vs_current")}
        path = _install(stage, tmp, metadata, target, live_checksum, reason)
    finally:
        if tmp.exists():
            tmp.unlink()
    return {"promoted": promote, "reason": reason, "metrics": metrics, "metadata": metadata, "stage": stage,
            "path": str(path), "previous_validation_MSE": old_mse, "no_validation_skill": no_skill}


def _installed_checksum(target: Path) -> str | None:
    """The live model's checksum, or None when none is installed or it fails verification (then
    nothing trades on it and a new model is installed directly)."""
    try:
        return mm.verify_model(target)[0]
    except mm.ModelError:
        return None


def _install(stage: str, tmp: Path, metadata: dict, target: Path, live_checksum: str | None, reason: str) -> Path:
    """Step 7: ``live``: the model replaces the installed one (first model, or ``--force``; any
    shadow is superseded); ``shadow``: it becomes the shadow model (``shadow_model``), the live model
    and its go-live evidence untouched; ``candidate``: kept in models/candidates/, never used."""
    if stage == "live":
        mm.install_model(tmp, metadata, target, reason="replaced by a newly trained model")
        shadow_model.supersede(f"the live model was replaced by {metadata['sha256'][:12]} ({reason})")
        log.info("saved %s (SHA-256 %s, %d parameters); %s", target, metadata["sha256"],
                 metadata["architecture"]["params"], reason)
        return target
    if stage == "shadow":
        shadow_model.install_shadow(tmp, metadata, live_checksum, audit_logging.AuditLogger())
        log.info("%s; it is the SHADOW model (%s) and trades only after %d sessions beside the live model "
                 "(live model %s and its go-live evidence unchanged)", reason, shadow_model.shadow_path(),
                 C.SHADOW_MIN_SESSIONS, live_checksum[:12] if live_checksum else "-")
        return shadow_model.shadow_path()
    kept = mm.keep_candidate(tmp, metadata)
    log.warning("%s; the new model is kept as a candidate in %s (never used)", reason, kept)
    return kept


def _dataset(cfg: TrainConfig, prof: dict, data_file: Path):
    """Step 1: the features (short symbols skipped) and the dataset; one log line says what."""
    features = load_processed(data_file)
    features, skipped = drop_short_symbols(features, prof["window"])
    ds = build_dataset(features, prof["window"], frame_columns(features), cfg.shuffle_targets, cfg.seed)
    tr, va, te = ds["train_mask"], ds["validation_mask"], ds["test_mask"]
    log.info("data %s: %d symbols, %s .. %s; train %d, validation %d (from %s), test %d (from %s) "
             "samples; window %d%s", data_file.name, features["Symbol"].nunique(),
             features["Date"].min().date(), features["Date"].max().date(), tr.sum(), va.sum(),
             str(ds["validation_start"])[:10], te.sum(), str(ds["test_start"])[:10], prof["window"],
             "; SHUFFLED TARGETS (control run)" if cfg.shuffle_targets else "")
    return features, skipped, ds


def _metrics(net, ds: dict) -> tuple[dict, np.ndarray]:
    """Step 3: validation and test metrics (``model_management.compute_metrics``, skill against
    the training mean); returns (metrics, Keras's scaled output on validation + test)."""
    va, te, tr = ds["validation_mask"], ds["test_mask"], ds["train_mask"]
    keras_z = net.predict(ds["X"][va | te], batch_size=4096, verbose=0)[:, 0]
    pred_y = np.full(len(ds["X"]), np.nan)
    pred_y[va | te] = mm.unscale_target(keras_z, ds["scaler"])
    train_y = ds["y"][tr]
    direction = 1.0 if np.mean(train_y > 0) >= np.mean(train_y < 0) else -1.0
    metrics = {"space": mm.METRIC_SPACE,
               "validation": mm.compute_metrics(ds["y"][va], pred_y[va], direction),
               "test": mm.compute_metrics(ds["y"][te], pred_y[te], direction)}
    train_mean = float(np.mean(train_y)) if len(train_y) else 0.0
    for name, mask in (("validation", va), ("test", te)):
        metrics[name]["skill_vs_training_mean"] = skill_vs_constant(ds["y"][mask], pred_y[mask], train_mean)
        log.info("%s; skill vs the training mean %s", mm.format_metrics(f"{name} metrics", metrics[name]),
                 fmt_skill(metrics[name]["skill_vs_training_mean"]))
    dates = ds["rows"]["Date"].to_numpy()
    dm = skill_stats.diebold_mariano(ds["y"][va], pred_y[va], 0.0, dates=dates[va])
    metrics["validation"]["dm_vs_no_change"] = {"statistic": dm["statistic"], "p_value": dm["p_value"], "n": dm["n"]}
    ds["pred_y"] = pred_y                              # the current model's DM test (evaluate_current)
    metrics["training_mean"] = train_mean
    skill = metrics["test"]["skill"]
    if skill is not None and skill <= 0:
        log.warning("the model does not beat predicting no change on the test period (skill %.4f)", skill)
    return metrics, keras_z


def _parity(tmp: Path, ds: dict, keras_z: np.ndarray) -> float:
    """Step 4: the file live trading will read must give the predictions just evaluated
    (NumPy path against Keras within INFERENCE_PARITY_TOL); returns the largest gap."""
    va, te = ds["validation_mask"], ds["test_mask"]
    fast_z = load_network(tmp).predict(ds["X"][va | te])[:, 0]
    gap = float(np.max(np.abs(fast_z - keras_z))) if len(fast_z) else 0.0
    if not gap <= C.INFERENCE_PARITY_TOL:
        raise TrainingError(f"the NumPy inference path differs from Keras by {gap:.2e} "
                            f"(tolerance {C.INFERENCE_PARITY_TOL}): model not saved; report this")
    return gap


def _metadata(cfg: TrainConfig, prof: dict, net, history, ds: dict, features, skipped, data_file: Path,
              metrics: dict, checksum: str, seconds: float, gap: float) -> dict:
    """Step 5: the model's metadata (``lstm_price_difference_model.json``)."""
    tr, va, te = ds["train_mask"], ds["validation_mask"], ds["test_mask"]
    val_losses = history.history.get("val_loss", [])
    feature_columns = list(ds["scaler"]["feature_columns"])   # FEATURE_COLUMNS (+ SENTIMENT_COLUMNS)
    try:
        data_sha = file_sha256(data_file)
    except OSError:
        data_sha = None
    return {
        "format_version": mm.METADATA_FORMAT,
        "model_file": C.MODEL_FILE,
        "sha256": checksum,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "seed": cfg.seed,
        "profile": cfg.profile,
        "shuffled_targets": bool(cfg.shuffle_targets),
        "feature_columns": feature_columns,
        "window": prof["window"],
        "target": {"definition": mm.TARGET_DEFINITION, "output": "predicted_diff = "
                   "(z * target_std + target_mean) * Close * max(volatility_20, vol_floor), USD"},
        "scaler": ds["scaler"],
        "architecture": {"type": "Sequential", "lstm_layers": prof["layers"],
                         "lstm_units": prof["units"], "dense_units": prof["dense_units"],
                         "layers": [l.__class__.__name__ for l in net.layers], "params": int(net.count_params()),
                         "input_shape": [prof["window"], len(feature_columns)]},
        "training": {"epochs_max": prof["epochs"], "epochs_run": len(val_losses),
                     "best_epoch": int(np.argmin(val_losses)) + 1 if val_losses else 0,
                     "patience": prof["patience"],
                     "batch_size": C.TRAIN_BATCH_SIZE, "learning_rate": C.TRAIN_LEARNING_RATE,
                     "loss": [float(v) for v in history.history.get("loss", [])],
                     "val_loss": [float(v) for v in val_losses],
                     "seconds": seconds, "parity_max_abs": gap},
        "data": {"path": str(data_file), "sha256": data_sha,
                 "symbols": sorted(features["Symbol"].astype(str).unique()),
                 "skipped_symbols": skipped, "rows": int(len(features)),
                 "first_date": str(features["Date"].min().date()),
                 "last_date": str(features["Date"].max().date())},
        "splits": {"method": "chronological by session date, shared by all symbols",
                   "validation_fraction": C.VALIDATION_FRACTION, "test_fraction": C.TEST_FRACTION,
                   "train_start": str(ds["rows"]["Date"][tr].min().date()),
                   "train_end": str(ds["rows"]["Date"][tr].max().date()),
                   "validation_start": str(ds["validation_start"])[:10],
                   "validation_end": str(ds["rows"]["Date"][va].max().date()),
                   "test_start": str(ds["test_start"])[:10],
                   "test_end": str(ds["rows"]["Date"][te].max().date()),
                   "n_train": int(tr.sum()), "n_validation": int(va.sum()), "n_test": int(te.sum())},
        "metrics": metrics,
        "versions": versions(),
    }


def _promotion(cfg: TrainConfig, metrics: dict, no_skill: str | None, old_mse: float | None, about: str,
               checksum: str) -> tuple[bool, str]:
    """Step 6: (promote?, why). Model selection looks at the validation period only."""
    new_mse = metrics["validation"]["MSE"]
    if cfg.force:
        _audit_forced(checksum, metrics, no_skill, about, cfg.reason)
        return True, "--force" + (f" (without validation skill: {no_skill})" if no_skill else "")
    if cfg.shuffle_targets:
        return False, "not promoted: a shuffled-targets control run (use --force to install it)"
    if no_skill:
        kept = "no model is installed" if about == "no current model" else f"kept the {about}"
        return False, f"not promoted: {no_skill}; {kept} (use --force to install it anyway, audited)"
    if old_mse is None:
        return True, f"promoted: {about}"
    if new_mse <= old_mse * (1 + C.PROMOTION_TOLERANCE):
        return True, (f"promoted: validation MSE {new_mse:.5f} <= {old_mse:.5f} of the "
                      f"{about} on the same validation period")
    return False, (f"kept the {about}: its validation MSE {old_mse:.5f} beats the new "
                   f"model's {new_mse:.5f} on the same validation period (use --force "
                   "to replace it anyway)")


def skill_vs_constant(y_true, y_pred, constant: float) -> float | None:
    """Skill against always predicting ``constant`` (here the training period's mean target):
    ``model_management.skill``."""
    return mm.skill(y_true, y_pred, constant)


def fmt_skill(x) -> str:
    """A skill as ``+0.0123``, or ``n/a``."""
    return "n/a" if x is None else f"{x:+.4f}"


def validation_skill_problem(m: dict) -> str | None:
    """Why a model's validation metrics forbid promotion (skill not positive against predicting no
    change and against the training-mean constant; or, given ``dm_vs_no_change``, its skill
    against no change not significant: one-sided Diebold-Mariano p-value not below
    ``PROMOTION_ALPHA``), or None. One phrase naming the statistic that failed."""
    bad = []
    if m.get("skill") is None or not m["skill"] > 0:
        bad.append(f"against no change {fmt_skill(m.get('skill'))}")
    if m.get("skill_vs_training_mean") is None or not m["skill_vs_training_mean"] > 0:
        bad.append(f"against the training mean {fmt_skill(m.get('skill_vs_training_mean'))}")
    if bad:
        return "validation skill is not positive " + " and ".join(bad)
    dm = m.get("dm_vs_no_change")
    if dm is not None and not (dm.get("statistic") is not None and dm["p_value"] < C.PROMOTION_ALPHA):
        stat = "n/a" if dm.get("statistic") is None else f"{dm['statistic']:+.3f}"
        return (f"validation skill against no change is not significant: Diebold-Mariano statistic {stat}, "
                f"p-value {dm['p_value']:.4f} >= PROMOTION_ALPHA {C.PROMOTION_ALPHA} ({dm.get('n')} sessions)")
    return None


def _audit_forced(checksum: str, metrics: dict, no_skill: str | None, about: str, reason: str | None) -> None:
    """--force installs whatever was trained, as the live model at once (no shadow): one audit
    record says who forced what, the reason given (``--reason``), and why it would not have been
    promoted."""
    v = metrics["validation"]
    audit_logging.AuditLogger().log_event("model_promotion", "forced", {
        "model_checksum": checksum, "no_validation_skill": no_skill, "replaces": about,
        "reason": reason or "(none given: python train_model.py --force --reason \"...\")",
        "skips_shadow": True,
        "validation_skill": v.get("skill"), "validation_skill_vs_training_mean": v.get("skill_vs_training_mean"),
        "by": os.environ.get("USER") or os.environ.get("LOGNAME") or "unknown"})
