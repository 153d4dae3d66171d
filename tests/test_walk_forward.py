"""walk_forward.py: fold plan, no look-ahead, determinism across worker counts (Ray), the CLI's
reports, exit codes and the recorded run the gate reads."""
import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

import constants as C
import data_collection as dc
import fileutil
import sample_data
import walk_forward as wf
import walk_forward_runs as runs
from conftest import run_entry

TINY = {**wf.profile_params("tiny"), "epochs": 2, "patience": 1}


def test_plan_folds_expanding_window_no_overlap_full_coverage():
    sessions = pd.bdate_range("2020-01-01", periods=700)
    folds = wf.plan_folds(sessions, min_train=504, retrain=63)
    assert [f["train_sessions"] for f in folds] == [504, 567, 630, 693]
    assert folds[-1]["test_sessions"] == 700 - 693
    for a, b in zip(folds, folds[1:]):
        assert a["test_end"] < b["test_start"] and b["train_end"] == a["test_end"]
    for f in folds:
        assert f["train_end"] < f["test_start"] and f["train_start"] == sessions[0]
    assert sum(f["test_sessions"] for f in folds) == 700 - 504
    with pytest.raises(wf.WalkForwardError, match="--min-train"):
        wf.plan_folds(sessions[:400], min_train=504)


def test_fingerprint_is_the_same_from_the_profile_and_from_an_installed_models_metadata():
    prof = wf.profile_params("tiny")
    meta = {"window": prof["window"], "feature_columns": list(C.FEATURE_COLUMNS),
            "architecture": {"lstm_units": prof["units"], "dense_units": prof["dense_units"], "lstm_layers": 1},
            "training": {"epochs_max": prof["epochs"], "patience": prof["patience"],
                         "batch_size": C.TRAIN_BATCH_SIZE, "learning_rate": C.TRAIN_LEARNING_RATE}}
    a = runs.config_fingerprint(runs.model_configuration(prof))
    assert a == runs.config_fingerprint(runs.model_configuration_from_metadata(meta))
    assert a != runs.config_fingerprint(runs.model_configuration(wf.profile_params("default")))


@pytest.fixture(scope="module")
def small_features():
    dates = pd.bdate_range("2019-01-02", periods=420)
    raw = pd.concat([sample_data.simulate_symbol(s, dates) for s in ("AAA", "BBB", "CCC")], ignore_index=True)
    return dc.build_features(raw)


@pytest.mark.timeout(1800)
def test_a_fold_never_sees_the_future_and_predicts_only_its_sessions(small_features, ray_local):
    folds = wf.plan_folds(small_features["Date"], min_train=340, retrain=30)[:1]
    fold = folds[0]
    base = wf.train_fold(small_features, fold, TINY, 7)
    p = base["predictions"]
    assert p["Date"].min() == fold["test_start"] and p["Date"].max() == fold["test_end"]
    assert p["Symbol"].nunique() == 3
    # wreck every price after the fold: nothing of the fold changes
    later = small_features.copy()
    after = later["Date"] > fold["test_end"]
    later.loc[after, ["Open", "Close", "log_return", "volatility_20"]] *= 3.0
    again = wf.train_fold(later, fold, TINY, 7)["predictions"]
    np.testing.assert_allclose(again["y_pred"], p["y_pred"], rtol=0, atol=0)
    # wreck the test period after its 5th session: the first 5 sessions' predictions are unchanged
    cut = np.sort(p["Date"].unique())[4]
    mid = small_features.copy()
    mid.loc[mid["Date"] > cut, ["Open", "Close", "log_return", "gap", "volatility_20"]] *= 2.0
    changed = wf.train_fold(mid, fold, TINY, 7)["predictions"]
    early = p["Date"] <= cut
    np.testing.assert_array_equal(changed.loc[early.to_numpy(), "y_pred"].to_numpy(), p.loc[early, "y_pred"].to_numpy())
    assert not np.allclose(changed.loc[~early.to_numpy(), "y_pred"], p.loc[~early, "y_pred"])


@pytest.mark.timeout(1800)
def test_same_result_whatever_the_number_of_workers(small_features, ray_local):
    folds = wf.plan_folds(small_features["Date"], min_train=360, retrain=20)
    one, _ = wf.run_folds(small_features, folds, TINY, 11, workers=1)
    two, n = wf.run_folds(small_features, folds, TINY, 11, workers=2)
    assert n == 2 and len(one) == len(two) == len(folds) == 2
    for a, b in zip(one, two):
        pd.testing.assert_frame_equal(a["predictions"], b["predictions"], check_exact=True)


@pytest.mark.timeout(1800)
def test_cli_reports_records_and_the_gate_query(home, ray_local, capsys):
    """``backtest.py --walk-forward`` through its ``main`` in this process, on the module's Ray
    (a process of its own would import TensorFlow and start Ray once more; the demo runs
    ``./run_backtest.sh --walk-forward`` as a process, and the next test the CLI's error exit)."""
    import backtest
    (home / "selected_stocks.txt").write_text("AAPL\nMSFT\nJPM\n")   # a 3-symbol universe: a third of the training
    code = backtest.main(["--walk-forward", "--profile", "tiny", "--min-train", "1250", "--retrain", "120",
                          "--workers", "2"])
    out = capsys.readouterr()
    done = SimpleNamespace(returncode=code, stdout=out.out, stderr=out.err)
    assert done.returncode in (0, 1), done.stderr[-2000:]
    assert "Verdict:" in done.stdout and "fold" in done.stdout
    report = json.loads((home / "reports" / "latest_walkforward.json").read_text())
    page = (home / "reports" / "latest_walkforward.html").read_text()
    assert page.count("<tr>") > 5
    # issue 23: the sample data's SYNTHETIC label on the report, its JSON and the console
    assert "SYNTHETIC sample prices" in page and "SYNTHETIC sample prices" in report["data_source_label"]
    assert "SYNTHETIC sample prices" in done.stdout
    o = report["overall"]
    for key in ("dm_vs_no_change", "dm_vs_training_mean", "directional_accuracy", "psr_excess", "dsr_excess",
                "sharpe_strategy", "sharpe_benchmark"):
        assert key in o
    assert report["passed"] == (done.returncode == 0) == all(c["passed"] for c in o["conditions"])
    # issue 21: the trial count, DSR and PBO with their thresholds, and the sealed holdout; a counted trial
    assert "trials:         1 on this universe" in done.stdout and "needs <=" in done.stdout
    assert o["trials"]["n_trials"] == o["n_trials"] == 1 and "probability of backtest overfitting" in page
    assert report["inputs"]["holdout"]["sessions"] == C.HOLDOUT_SESSIONS
    assert report["end"] < report["inputs"]["holdout"]["start"]
    import trial_registry
    assert trial_registry.trial(report["trial_id"])["config_fingerprint"] == report["inputs"]["config_fingerprint"]
    assert len(report["folds"]) == 2 and report["start"] == report["folds"][0]["test_start"]
    inputs = report["inputs"]
    assert inputs["data_sha256"] == fileutil.file_sha256(home / "processed_stock_data.csv")
    assert inputs["universe"] == sorted(dc.load_universe())
    # issue 21: bound to the production rows up to its last session, the universe and the fixed window
    import evidence_binding
    ev = report["evidence"]
    features = dc.load_processed(home / "processed_stock_data.csv")
    assert ev["gate_evidence"] and ev["universe"] == inputs["universe"] and ev["not_evidence"] == []
    assert ev["data_sha256"] == evidence_binding.window_sha256(features, ev["universe"], ev["end"])
    _, last = evidence_binding.fixed_window("walk_forward", sorted(features["Date"].unique()))
    assert ev["end"] == str(last.date()) == report["end"]              # the last session before the holdout
    import state_db
    conn = state_db.connect()                     # this test's TRADING_HOME is ``home``
    row = conn.execute("SELECT * FROM walk_forward_runs ORDER BY id DESC").fetchone()
    assert row["data_sha256"] == inputs["data_sha256"] and row["passed"] == int(report["passed"])
    # --min-train 1250 evaluates less than the full out-of-sample period: recorded, never counted
    assert row["gate_eligible"] == 0 and report["gate_eligible"] is False
    fp, sha, uni = inputs["config_fingerprint"], inputs["data_sha256"], inputs["universe"]
    assert runs.passing_walk_forward_for(fp, sha, uni, conn=conn) is None
    # a passing, eligible run of the same configuration counts only on the same data and the whole universe
    runs.record_run({**report, "passed": True, "gate_eligible": True}, conn=conn)
    assert runs.passing_walk_forward_for(fp, sha, uni, conn=conn)["config_fingerprint"] == fp
    assert runs.passing_walk_forward_for(fp, "0" * 64, uni, conn=conn) is None
    assert runs.passing_walk_forward_for(fp, sha, uni[:-1], conn=conn) is None
    assert runs.passing_walk_forward_for("f" * 64, sha, uni, conn=conn) is None
    runs.record_run({**report, "passed": True, "gate_eligible": False, "inputs": {**inputs, "data_sha256": "1" * 64}},
                  conn=conn)
    assert runs.passing_walk_forward_for(fp, "1" * 64, uni, conn=conn) is None
    assert runs.count_trials(uni, "e" * 64, conn=conn) == 2


def test_cli_error_is_exit_2_and_one_line(trading_home):
    (trading_home / "selected_stocks.txt").write_text("AAPL\n")      # a home (config.require_home)
    done = run_entry(["backtest.py", "--walk-forward", "--profile", "tiny"], trading_home)
    assert done.returncode == 2
    lines = [l for l in done.stderr.splitlines() if l.startswith("ERROR")]
    assert len(lines) == 1 and "processed_stock_data.csv" in lines[0] and "run_daily_data_update" in lines[0]
