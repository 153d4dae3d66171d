"""train_model.py: end-to-end training on the offline sample, skill vs a shuffled control,
determinism, chronology, promotion, CLI exit codes."""
import json
import os
import shutil
from types import SimpleNamespace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import constants as C
import data_collection
import model_management as mm
import sample_data
import model_training
import train_model
from conftest import run_entry

ROOT = Path(__file__).resolve().parent.parent
SYMBOLS = ["AAPL", "MSFT", "GOOGL", "AMZN", "NVDA", "META", "JPM", "JNJ", "V", "PG"]
ENV_KEYS = ("TRADING_HOME", "DATA_SOURCE", "TRADING_CONFIG_DIR")


def sample_features(symbols=SYMBOLS):
    return data_collection.build_features(sample_data.generate_prices(symbols))


def _with_home(home: Path, func):
    saved = {k: os.environ.get(k) for k in ENV_KEYS}
    os.environ.update(TRADING_HOME=str(home), DATA_SOURCE="sample",
                      TRADING_CONFIG_DIR=str(home / "keys"))
    try:
        return func()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def train_in(home: Path, features=None, **kwargs):
    """Write the processed CSV into ``home`` and train a tiny model there."""
    home.mkdir(parents=True, exist_ok=True)
    features = sample_features() if features is None else features
    features.to_csv(home / C.PROCESSED_DATA_FILE, index=False, date_format="%Y-%m-%d")
    kwargs.setdefault("profile", "tiny")
    kwargs.setdefault("verbose", 0)
    return _with_home(home, lambda: model_training.train(model_training.TrainConfig(
        home / C.PROCESSED_DATA_FILE, model_file=home / C.MODEL_FILE, **kwargs)))


def copy_home(src: Path, dst: Path) -> Path:
    for name in (C.PROCESSED_DATA_FILE, C.MODEL_FILE, C.MODEL_METADATA_FILE):
        shutil.copy2(src / name, dst / name)
    return dst


@pytest.fixture(scope="module")
def shared(trained):
    """The session's tiny model (conftest's ``trained``: ``train_model.py --profile tiny`` on the
    10-symbol sample in a fresh home), its metadata and what training returned (from the metadata)."""
    home = trained["home"]
    metadata = json.loads((home / C.MODEL_METADATA_FILE).read_text())
    promotion = metadata["promotion"]
    return {"home": home, "metadata": metadata,
            "result": {"promoted": promotion["promoted"], "reason": promotion["reason"],
                       "metrics": metadata["metrics"]}}


# ----------------------------------------------------------------------------- end to end
def test_training_produces_verified_model_and_metadata(shared):
    home, meta = shared["home"], shared["metadata"]
    model = mm.load_model(home / C.MODEL_FILE)
    assert model.checksum == meta["sha256"] == mm.calculate_model_checksum(home / C.MODEL_FILE)
    assert model.window == C.TINY_WINDOW and model.feature_columns == list(C.FEATURE_COLUMNS)
    for key in ("feature_columns", "window", "scaler", "data", "splits", "metrics", "versions",
                "sha256", "created_at", "seed", "architecture", "target"):
        assert key in meta, key
    for period in ("validation", "test"):
        m = meta["metrics"][period]
        for key in ("directional_accuracy", "MSE", "skill", "n"):
            assert m[key] is not None
        assert set(m["baseline"]) >= {"MSE", "directional_accuracy"}
    assert "vol-scaled" in meta["metrics"]["space"]
    assert meta["versions"]["tensorflow"] and meta["versions"]["h5py"]
    assert model.metrics == meta["metrics"]["test"]
    s = meta["splits"]
    assert s["train_end"] < s["validation_start"] <= s["validation_end"] < s["test_start"] <= s["test_end"]
    assert len(meta["scaler"]["feature_mean"]) == len(C.FEATURE_COLUMNS)


def test_sample_model_has_skill_on_test_period(shared):
    t = shared["result"]["metrics"]["test"]
    assert t["skill"] > 0.005, t                       # lower MSE than predicting no change
    assert t["MSE"] < t["baseline"]["MSE"]
    assert t["directional_accuracy"] > 0.52, t


def test_sample_model_is_promoted_on_validation_skill(shared):
    """The tiny model on the sample data (make demo's) has positive validation skill against both
    no change and the training-mean constant, so it is promoted without --force."""
    r = shared["result"]
    v = r["metrics"]["validation"]
    assert r["promoted"], r["reason"]
    assert v["skill"] > 0 and v["skill_vs_training_mean"] > 0, v
    assert shared["metadata"]["promotion"]["selected_on"] == "validation"


def test_validation_skill_rule():
    rule = model_training.validation_skill_problem
    assert rule({"skill": 0.01, "skill_vs_training_mean": 0.02}) is None
    assert "against no change -0.0010" in rule({"skill": -0.001, "skill_vs_training_mean": 0.02})
    why = rule({"skill": 0.01, "skill_vs_training_mean": 0.0})
    assert "against the training mean +0.0000" in why and "no change" not in why
    assert rule({"skill": None, "skill_vs_training_mean": None}).count("n/a") == 2
    y = np.array([1.0, -1.0, 2.0, 0.0])
    assert model_training.skill_vs_constant(y, y, 0.5) == 1.0                   # perfect forecast
    assert model_training.skill_vs_constant(y, np.full(4, 0.5), 0.5) == 0.0      # the constant itself
    assert model_training.skill_vs_constant(y, np.full(4, 3.0), 0.5) < 0


def test_fast_path_reproduces_saved_test_metrics(shared):
    """Live inference (NumPy path + stored scaler) on the test period gives the metrics that
    training saved: no scaling mismatch between training and inference."""
    home, meta = shared["home"], shared["metadata"]
    model = mm.load_model(home / C.MODEL_FILE)
    feats = pd.read_csv(home / C.PROCESSED_DATA_FILE, parse_dates=["Date"])
    pred = model.predict(feats)
    df = mm.sort_features(feats).assign(y=lambda d: mm.compute_targets(d))
    merged = pred.merge(df[["Symbol", "Date", "y"]], on=["Symbol", "Date"])
    test = merged[(merged["Date"] >= meta["splits"]["test_start"]) & merged["y"].notna()]
    y_pred = test["predicted_diff"] / (test["Close"] * test["volatility_20"].clip(lower=C.TARGET_VOL_FLOOR))
    mse = float(np.mean((test["y"] - y_pred) ** 2))
    assert len(test) == meta["metrics"]["test"]["n"]
    assert mse == pytest.approx(meta["metrics"]["test"]["MSE"], rel=1e-4)


def test_shuffled_targets_learn_nothing_and_are_not_promoted(shared, trading_home):
    copy_home(shared["home"], trading_home)
    before = mm.calculate_model_checksum(trading_home / C.MODEL_FILE)
    result = train_in(trading_home, pd.read_csv(trading_home / C.PROCESSED_DATA_FILE, parse_dates=["Date"]),
                      shuffle_targets=True)
    t = result["metrics"]["test"]
    good = shared["result"]["metrics"]["test"]
    assert t["skill"] < 0.005, t                        # no better than predicting no change
    assert t["skill"] < good["skill"] - 0.01
    assert t["directional_accuracy"] < good["directional_accuracy"] - 0.02
    assert not result["promoted"]
    assert mm.calculate_model_checksum(trading_home / C.MODEL_FILE) == before
    backups = trading_home / C.MODEL_BACKUP_DIR
    assert not backups.exists() or not list(backups.iterdir())


def test_worse_model_not_promoted_without_force(shared, trading_home):
    copy_home(shared["home"], trading_home)
    # the current (trained) model against a deliberately crippled candidate: 1 epoch, 1 unit
    before = mm.calculate_model_checksum(trading_home / C.MODEL_FILE)
    result = train_in(trading_home, pd.read_csv(trading_home / C.PROCESSED_DATA_FILE, parse_dates=["Date"]),
                      epochs=1, units=1, dense_units=0, seed=7)
    assert not result["promoted"], result["reason"]
    assert "kept the current model" in result["reason"]
    assert result["previous_validation_MSE"] is not None           # selection on validation, never test
    assert result["previous_validation_MSE"] < result["metrics"]["validation"]["MSE"]
    assert mm.calculate_model_checksum(trading_home / C.MODEL_FILE) == before
    assert model_training.PROFILES["tiny"]["window"] == C.TINY_WINDOW


def test_determinism_same_seed_same_predictions(shared, tmp_path):
    feats = pd.read_csv(shared["home"] / C.PROCESSED_DATA_FILE, parse_dates=["Date"])
    train_in(tmp_path / "again", feats)
    a = mm.load_model(shared["home"] / C.MODEL_FILE).predict(feats)
    b = mm.load_model(tmp_path / "again" / C.MODEL_FILE).predict(feats)
    np.testing.assert_array_equal(a["predicted_diff"].to_numpy(), b["predicted_diff"].to_numpy())


def test_test_period_never_touches_scaler_or_model(shared, tmp_path):
    """Scrambling every row of the test period changes neither the scaler nor the weights."""
    feats = pd.read_csv(shared["home"] / C.PROCESSED_DATA_FILE, parse_dates=["Date"])
    test_start = pd.Timestamp(shared["metadata"]["splits"]["test_start"])
    scrambled = feats.copy()
    late = scrambled["Date"] >= test_start
    rng = np.random.default_rng(0)
    for col in list(C.FEATURE_COLUMNS):
        scrambled.loc[late, col] = rng.normal(0, 5, late.sum())
    scrambled.loc[late, "Close"] *= rng.uniform(0.5, 1.5, late.sum())
    train_in(tmp_path / "scrambled", scrambled)
    meta = json.loads((tmp_path / "scrambled" / C.MODEL_METADATA_FILE).read_text())
    assert meta["scaler"] == shared["metadata"]["scaler"]
    assert meta["splits"]["test_start"] == shared["metadata"]["splits"]["test_start"]
    early = feats[~late]
    a = mm.load_model(shared["home"] / C.MODEL_FILE).predict(early)
    b = mm.load_model(tmp_path / "scrambled" / C.MODEL_FILE).predict(early)
    np.testing.assert_array_equal(a["predicted_diff"].to_numpy(), b["predicted_diff"].to_numpy())


def test_split_masks_are_chronological_and_scaler_ignores_later_periods():
    feats = sample_features(SYMBOLS[:4])
    ds = model_training.build_dataset(feats, 10, list(C.FEATURE_COLUMNS))
    rows = ds["rows"]
    df = ds["df"]
    nxt = df.groupby("Symbol")["Date"].shift(-1)
    next_of = dict(zip(zip(df["Symbol"], df["Date"]), nxt))
    train_next = [next_of[(s, d)] for s, d in zip(rows["Symbol"][ds["train_mask"]], rows["Date"][ds["train_mask"]])]
    assert max(train_next) < ds["validation_start"]          # no validation price in a training target
    assert rows["Date"][ds["validation_mask"]].min() >= ds["validation_start"]
    assert rows["Date"][ds["test_mask"]].min() >= ds["test_start"]
    assert not (ds["train_mask"] & ds["validation_mask"]).any()
    assert not (ds["validation_mask"] & ds["test_mask"]).any()
    assert len(set(pd.to_datetime(rows["Date"][ds["test_mask"]]).dt.normalize())) > 100
    # changing the validation and test periods leaves the scaler unchanged
    later = feats["Date"] >= ds["validation_start"]
    changed = feats.copy()
    changed.loc[later, list(C.FEATURE_COLUMNS)] *= 3.0
    changed.loc[later, "Close"] *= 2.0
    assert model_training.build_dataset(changed, 10, list(C.FEATURE_COLUMNS))["scaler"] == ds["scaler"]


# ----------------------------------------------------------------------------- bad input
def test_short_symbol_is_skipped_and_named(caplog):
    feats = sample_features(SYMBOLS[:3])
    tiny = feats[feats["Symbol"] == "GOOGL"].head(C.MIN_SYMBOL_ROWS - 1)
    feats = pd.concat([feats[feats["Symbol"] != "GOOGL"], tiny])
    with caplog.at_level("WARNING", logger="train"):
        kept, skipped = model_training.drop_short_symbols(feats, 10)
    assert skipped == ["GOOGL"] and "GOOGL" not in set(kept["Symbol"])
    assert "GOOGL" in caplog.text and "skipping" in caplog.text
    with pytest.raises(model_training.TrainingError, match="too little history"):
        model_training.drop_short_symbols(tiny, 10)


def test_window_longer_than_history_is_a_clear_error():
    feats = sample_features(SYMBOLS[:1]).head(200)
    with pytest.raises(model_training.TrainingError, match="too little history|sessions"):
        model_training.build_dataset(feats, 150, list(C.FEATURE_COLUMNS))


def _run_cli(capsys, *args):
    """``python train_model.py *args`` in this process (its ``main``, in the test's TRADING_HOME):
    TensorFlow is loaded here already, a new process would spend seconds importing it again.
    tests/test_help.py and the missing-CSV test below run the script as a process."""
    capsys.readouterr()
    code = train_model.main(list(args))
    out = capsys.readouterr()
    return SimpleNamespace(returncode=code, stdout=out.out, stderr=out.err)


def test_cli_missing_csv_exits_1_with_one_error_line(trading_home):
    proc = run_entry(["train_model.py", "--profile", "tiny"], trading_home)      # a real process
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and "not found" in errors[0] and "run_daily_data_update.sh" in errors[0]


def test_cli_empty_and_nan_csv_exit_1(trading_home, capsys):
    csv = trading_home / C.PROCESSED_DATA_FILE
    csv.write_text("")
    proc = _run_cli(capsys, "--profile", "tiny")
    assert proc.returncode == 1 and "empty" in proc.stderr
    feats = sample_features(SYMBOLS[:2])
    feats.loc[5, "rsi_14"] = np.nan
    feats.to_csv(csv, index=False)
    proc = _run_cli(capsys, "--profile", "tiny")
    assert proc.returncode == 1
    assert "missing values" in proc.stderr and "ERROR" in proc.stderr


def test_cli_tiny_force_replaces_and_backs_up(shared, trading_home, capsys):
    """`python train_model.py --profile tiny --force` (its main, as cron runs it): exit 0, one log line
    per epoch, metrics logged with the grepped words, the replaced model in models/backups/."""
    copy_home(shared["home"], trading_home)
    old = mm.calculate_model_checksum(trading_home / C.MODEL_FILE)
    proc = _run_cli(capsys, "--profile", "tiny", "--force", "--seed", "3")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "epoch 1/" in proc.stderr
    assert "directional_accuracy" in proc.stderr and "MSE" in proc.stderr
    new = mm.load_model(trading_home / C.MODEL_FILE, verify=True)
    assert new.checksum != old and new.metadata["seed"] == 3
    backups = _with_home(trading_home, mm.list_backups)
    assert [b["checksum"] for b in backups] == [old]
    assert (Path(backups[0]["path"]) / C.MODEL_METADATA_FILE).is_file()
    logs = list((trading_home / "logs").glob("trading_*.log"))
    assert logs and "directional_accuracy" in logs[0].read_text()


def test_no_validation_skill_is_not_promoted_exit_3_and_force_is_audited(trading_home, capsys):
    """Sample prices with no predictable component (phi = 0): the model has no validation skill,
    so it is not installed (exit 3, one ERROR line); --force installs it with an audit record."""
    import market_calendar
    dates = market_calendar.sessions(C.SAMPLE_START, C.SAMPLE_END)
    prices = pd.concat([sample_data.simulate_symbol(s, dates, phi=0.0) for s in ["AAPL", "MSFT", "JPM", "PG"]],
                       ignore_index=True)
    data_collection.build_features(prices).to_csv(trading_home / C.PROCESSED_DATA_FILE, index=False,
                                                  date_format="%Y-%m-%d")
    proc = _run_cli(capsys, "--profile", "tiny")
    assert proc.returncode == train_model.EXIT_NO_SKILL == 3, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and "model NOT PROMOTED: validation skill is not positive" in errors[0]
    assert not (trading_home / C.MODEL_FILE).exists()
    forced = _run_cli(capsys, "--profile", "tiny", "--force")
    assert forced.returncode == 0, forced.stderr[-2000:]
    assert (trading_home / C.MODEL_FILE).exists()
    records = [json.loads(line) for line in (trading_home / C.AUDIT_LOG_FILE).read_text().splitlines() if line.strip()]
    forced_rec = [r for r in records if (r["action"], r["status"]) == ("model_promotion", "forced")]
    assert len(forced_rec) == 1 and "validation skill is not positive" in forced_rec[0]["details"]["no_validation_skill"]


# TensorFlow's C++ start-up lines (issue 23 point 4: "TensorFlow noise twice when `python
# train_model.py` runs outside the scripts"): the scripts set TF_CPP_MIN_LOG_LEVEL, a plain
# `python train_model.py` did not, and the NodeDef E0000 note came once per dataset
TF_NOISE = ("absl::InitializeLog", "cpu_feature_guard", "node_def_util", "This TensorFlow binary",
            "oneDNN", "E0000 ", "W0000 ", "I0000 ")


def test_train_model_outside_the_scripts_prints_no_tensorflow_banner(home):
    quiet = {"TF_CPP_MIN_LOG_LEVEL": None}                  # as a person's shell: not set
    shown = run_entry(["train_model.py", "--help"], env_extra=quiet)
    assert shown.returncode == 0 and shown.stderr == ""
    done = run_entry(["train_model.py", "--profile", "tiny", "--force"], env_extra=quiet, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    noise = [line for line in done.stderr.splitlines() if any(n in line for n in TF_NOISE)]
    assert noise == [], noise
    assert "promoted" in done.stdout or "NOT promoted" in done.stdout
