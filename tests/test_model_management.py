"""model_management.py: checksums, integrity refusals, TradingModel.predict, backups, restore,
prune, and the CLI."""
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest

import constants as C
import model_management as mm
from conftest import entry_env, run_entry

ROOT = Path(__file__).resolve().parent.parent
# ``home`` (conftest): the test's TRADING_HOME with a copy of the session's trained model and data


def _variant(home: Path, name: str, created_at: str, delta: float = 0.01) -> tuple[Path, dict]:
    """Another valid model: the current one with one bias nudged, plus matching metadata."""
    dst = home / name
    shutil.copy2(home / C.MODEL_FILE, dst)
    with h5py.File(dst, "r+") as fh:
        def first_bias(n, obj):
            if isinstance(obj, h5py.Dataset) and n.endswith("bias"):
                obj[...] = obj[()] + delta
                return True
        fh["model_weights"].visititems(first_bias)
    meta = json.loads((home / C.MODEL_METADATA_FILE).read_text())
    meta["sha256"] = mm.calculate_model_checksum(dst)
    meta["created_at"] = created_at
    return dst, meta


# ----------------------------------------------------------------------------- checksums
def test_checksum_is_sha256_and_one_liner_works(home):
    expected = hashlib.sha256((home / C.MODEL_FILE).read_bytes()).hexdigest()
    assert mm.calculate_model_checksum(home / C.MODEL_FILE) == expected
    code = ("from model_management import calculate_model_checksum; "
            "print(calculate_model_checksum('lstm_price_difference_model.h5'))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=home, capture_output=True, text=True,
                          env=entry_env(env_extra={"PYTHONPATH": ROOT}), timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == expected


def test_checksum_of_missing_file_is_clear(trading_home):
    with pytest.raises(mm.ModelNotFoundError, match="not found.*train_model.py"):
        mm.calculate_model_checksum(trading_home / "nope.h5")
    with pytest.raises(FileNotFoundError):
        mm.load_model()


def test_fast_path_never_imports_tensorflow(home):
    code = ("import sys, model_management as mm; m = mm.load_model(); "
            "import pandas as pd; f = pd.read_csv('processed_stock_data.csv', parse_dates=['Date']); "
            "p = m.predict(f, last_only=True); assert len(p) == 10, p; "
            "bad = [k for k in sys.modules if k.split('.')[0] in ('tensorflow', 'keras')]; "
            "assert not bad, bad; print('ok')")
    proc = subprocess.run([sys.executable, "-c", code], cwd=home, capture_output=True, text=True,
                          env=entry_env(env_extra={"PYTHONPATH": ROOT}), timeout=60)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr


# ----------------------------------------------------------------------------- refusals
def test_corrupted_model_is_refused(home):
    path = home / C.MODEL_FILE
    good = mm.calculate_model_checksum(path)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(mm.ModelIntegrityError) as info:
        mm.load_model()
    msg = str(info.value)
    assert str(path) in msg and good in msg and mm.calculate_model_checksum(path) in msg
    assert "model_management.py restore" in msg and "train_model.py" in msg
    assert mm.main(["verify"]) == 1


def test_truncated_model_refused_even_without_checksum(home):
    path = home / C.MODEL_FILE
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(mm.ModelIntegrityError):
        mm.load_model(verify=False)


def test_model_without_metadata_is_refused(home):
    (home / C.MODEL_METADATA_FILE).unlink()
    with pytest.raises(mm.ModelNotFoundError, match="metadata.*not found"):
        mm.load_model()
    assert mm.main(["verify"]) == 1


def test_metadata_checksum_mismatch_is_refused(home):
    meta_file = home / C.MODEL_METADATA_FILE
    meta = json.loads(meta_file.read_text())
    meta["sha256"] = "0" * 64
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(mm.ModelIntegrityError, match="0{64}"):
        mm.load_model()


def test_verify_ok(home, capsys):
    assert mm.main(["verify"]) == 0
    assert "OK" in capsys.readouterr().out


# ----------------------------------------------------------------------------- predict
def test_predict_rows_columns_and_last_only(home):
    model = mm.load_model()
    feats = pd.read_csv(home / C.PROCESSED_DATA_FILE, parse_dates=["Date"])
    feats = feats[feats["Date"] >= "2025-01-01"]
    # a symbol with fewer rows than the window gets no prediction
    short = feats[feats["Symbol"] == "AAPL"].head(model.window - 1).assign(Symbol="ZZZ")
    feats = pd.concat([feats, short]).sample(frac=1.0, random_state=0)   # any order
    out = model.predict(feats)
    assert list(out.columns) == mm.OUTPUT_COLUMNS
    counts = feats.groupby("Symbol").size()
    assert len(out) == int((counts - model.window + 1).clip(lower=0).sum())
    assert "ZZZ" not in set(out["Symbol"])
    assert np.isfinite(out["predicted_diff"]).all()
    last = model.predict(feats, last_only=True)
    assert len(last) == 10 and last["Symbol"].is_unique
    full_last = out.sort_values("Date").groupby("Symbol").tail(1).set_index("Symbol")
    for _, row in last.iterrows():
        assert row["Date"] == full_last.loc[row["Symbol"], "Date"]
        assert row["predicted_diff"] == pytest.approx(full_last.loc[row["Symbol"], "predicted_diff"], rel=1e-5)
    # each symbol's last prediction needs only its last `window` rows (the cycle's cheap path)
    everything = pd.read_csv(home / C.PROCESSED_DATA_FILE, parse_dates=["Date"])
    tails = everything.sort_values("Date").groupby("Symbol").tail(model.window)
    cheap = model.predict(tails, last_only=True).set_index("Symbol")["predicted_diff"]
    full = model.predict(everything, last_only=True)
    assert len(full) == len(cheap) == everything["Symbol"].nunique()
    for _, row in full.iterrows():
        assert cheap[row["Symbol"]] == pytest.approx(row["predicted_diff"], rel=1e-5)
    assert model.metrics["MSE"] > 0 and "directional_accuracy" in model.metrics


def test_make_windows_matches_manual_slices(home):
    model = mm.load_model()
    feats = pd.read_csv(home / C.PROCESSED_DATA_FILE, parse_dates=["Date"])
    X, rows = mm.make_windows(feats, 5, model.feature_columns, model.scaler)
    sym, date = rows.loc[123, "Symbol"], rows.loc[123, "Date"]
    own = feats[feats["Symbol"] == sym].sort_values("Date")
    manual = own[own["Date"] <= date].tail(5)[model.feature_columns].to_numpy()
    expected = mm.scale_values(manual, model.scaler)
    np.testing.assert_array_equal(X[123], expected)


def test_predict_rejects_bad_features(home):
    model = mm.load_model()
    feats = pd.read_csv(home / C.PROCESSED_DATA_FILE, parse_dates=["Date"]).head(300)
    with pytest.raises(mm.ModelInputError, match="rsi_14"):
        model.predict(feats.drop(columns=["rsi_14"]))
    bad = feats.copy()
    bad.loc[3, "gap"] = np.nan
    with pytest.raises(mm.ModelInputError, match="NaN"):
        model.predict(bad)


# ----------------------------------------------------------------------------- versions
def test_install_backs_up_and_restore_and_prune(home, capsys):
    original = mm.calculate_model_checksum(home / C.MODEL_FILE)
    created = json.loads((home / C.MODEL_METADATA_FILE).read_text())["created_at"]
    v2, meta2 = _variant(home, ".cand2.h5", "2099-01-01T00:00:00+00:00")
    mm.install_model(v2, meta2)
    assert mm.load_model().checksum == meta2["sha256"]
    backups = mm.list_backups()
    assert [b["checksum"] for b in backups] == [original]
    assert backups[0]["created_at"] == created and backups[0]["test"]["MSE"] > 0
    v3, meta3 = _variant(home, ".cand3.h5", "2099-02-01T00:00:00+00:00", delta=0.02)
    mm.install_model(v3, meta3)
    assert len(mm.list_backups()) == 2

    assert mm.main(["list"]) == 0
    listing = capsys.readouterr().out
    assert original[:16] in listing and "directional_accuracy" in listing

    # restore without a version: the newest valid backup older than the current model (v2)
    chosen = mm.restore()
    assert chosen["checksum"] == meta2["sha256"]
    assert mm.load_model().checksum == meta2["sha256"]
    assert meta3["sha256"] in {b["checksum"] for b in mm.list_backups()}   # current backed up first
    # again: one step further back
    mm.restore()
    assert mm.load_model().checksum == original
    # a named version
    name3 = next(b["version"] for b in mm.list_backups() if b["checksum"] == meta3["sha256"])
    assert mm.main(["restore", name3]) == 0
    assert mm.load_model().checksum == meta3["sha256"]
    assert mm.main(["restore", "no-such-version"]) == 1

    assert mm.main(["prune", "--keep", "1"]) == 0
    remaining = mm.list_backups()
    assert len(remaining) == 1 and remaining[0]["checksum"] == meta3["sha256"]   # the newest kept


def test_restore_after_corruption_and_invalid_backup_refused(home):
    original = mm.calculate_model_checksum(home / C.MODEL_FILE)
    v2, meta2 = _variant(home, ".cand2.h5", "2099-01-01T00:00:00+00:00")
    mm.install_model(v2, meta2)                        # original -> backups
    path = home / C.MODEL_FILE
    data = bytearray(path.read_bytes())
    data[len(data) // 3] ^= 0x55                       # corrupt the current model
    path.write_bytes(bytes(data))
    assert mm.main(["verify"]) == 1
    mm.restore()                                       # newest valid backup
    assert mm.load_model().checksum == original
    quarantined = list((home / C.MODEL_QUARANTINE_DIR).iterdir())
    assert len(quarantined) == 1                       # the corrupt one kept aside, not in backups
    assert all(b["valid"] for b in mm.list_backups())
    # a corrupted backup is listed as invalid and refused by name
    backup = Path(mm.list_backups()[0]["path"]) / C.MODEL_FILE
    backup.write_bytes(b"garbage")
    item = mm.list_backups()[0]
    assert not item["valid"]
    with pytest.raises(mm.ModelIntegrityError):
        mm.restore(item["version"])


def test_install_refuses_candidate_with_wrong_checksum(home):
    v2, meta2 = _variant(home, ".cand2.h5", "2099-01-01T00:00:00+00:00")
    meta2["sha256"] = "f" * 64
    before = mm.calculate_model_checksum(home / C.MODEL_FILE)
    with pytest.raises(mm.ModelIntegrityError):
        mm.install_model(v2, meta2)
    assert mm.calculate_model_checksum(home / C.MODEL_FILE) == before


def test_cli_verify_subprocess_exit_codes(home):
    run = lambda: run_entry([ROOT / "model_management.py", "verify"], env_extra={"TRADING_HOME": home}, timeout=60)
    ok = run()
    assert ok.returncode == 0 and "OK" in ok.stdout, ok.stderr
    (home / C.MODEL_METADATA_FILE).unlink()
    bad = run()
    assert bad.returncode == 1 and "ERROR" in bad.stderr
