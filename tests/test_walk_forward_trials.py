"""walk_forward.py sweep and holdout on Ray (tiny model, tiny data): the sweep's configurations
are counted trials with the same results whatever the number of workers; the sealed holdout is
opened once per configuration, a second opening of the same one prints the recorded result and
another configuration is a new trial."""
import numpy as np
import pandas as pd
import pytest

import constants as C
import data_collection as dc
import sample_data
import trial_registry as R
import walk_forward as wf

SYMBOLS = ["AAA", "BBB", "CCC"]


@pytest.fixture
def small_home(trading_home, monkeypatch):
    """3 symbols x 420 sessions of sample prices as the production data; a 40-session holdout;
    the tiny profile with 2 epochs."""
    dates = pd.bdate_range("2019-01-02", periods=420)
    raw = pd.concat([sample_data.simulate_symbol(s, dates) for s in SYMBOLS], ignore_index=True)
    dc.write_processed(dc.build_features(raw), force=True, path=trading_home / C.PROCESSED_DATA_FILE,
                       universe=SYMBOLS)
    (trading_home / C.UNIVERSE_FILE).write_text("\n".join(SYMBOLS) + "\n")
    monkeypatch.setattr(C, "HOLDOUT_SESSIONS", 40)
    monkeypatch.setattr(C, "TINY_EPOCHS", 2)
    monkeypatch.setattr(C, "TINY_PATIENCE", 1)
    monkeypatch.setattr(C, "PBO_BLOCKS", 4)
    return trading_home


def _table(result) -> list[tuple]:
    return [(r["config"]["retrain"], r["config"]["threshold"], r["skill_vs_no_change"], r["sharpe"], r["dsr"],
             r["passed"]) for r in result["rows"]]


@pytest.mark.timeout(1800)
def test_sweep_records_every_configuration_and_is_the_same_whatever_the_workers(small_home, ray_local, capsys):
    grid = "retrain=30;threshold=0.5,0.9"
    one = wf.sweep(grid, profile="tiny", seed=3, workers=1, min_train=300)
    assert R.count_trials(SYMBOLS) == 2
    rows = R.trials(SYMBOLS)
    assert [r["kind"] for r in rows] == ["sweep", "sweep"] and rows[0]["returns"]["dates"]
    assert {r["settings"]["threshold"] for r in rows} == {0.5, 0.9}
    assert len({r["config_fingerprint"] for r in rows}) == 2          # the threshold is in the configuration
    # the holdout stayed sealed: no out-of-sample session in its 40 newest
    sealed = wf.split_holdout(dc.load_processed())[1]
    assert all(max(r["returns"]["dates"]) < str(sealed[0].date()) for r in rows)
    skills = [r["skill_vs_no_change"] for r in one["rows"]]
    assert skills == sorted(skills, reverse=True)
    wf.print_sweep(one)
    out = capsys.readouterr().out
    assert "Sweep: 2 configurations" in out and "trials on this universe (needs >=" in out and "PBO of this set" in out
    assert "trials:         2 on this universe" in out
    # a fresh registry, two workers: the same table
    R.registry_path().unlink()
    two = wf.sweep(grid, profile="tiny", seed=3, workers=2, min_train=300)
    assert two["workers"] == 2 and _table(one) == _table(two)
    for a, b in zip(one["rows"], two["rows"]):
        np.testing.assert_array_equal(a["returns"]["strategy"], b["returns"]["strategy"])


@pytest.mark.timeout(1800)
def test_the_holdout_is_opened_once_per_configuration(small_home, ray_local, capsys, monkeypatch):
    # another configuration opened it before: this opening is a new trial and says so
    R.record_holdout_opening("e" * 64, SYMBOLS, None, "2020-01-01", "2020-02-01", 0, False, {"conditions": []})
    first = wf.open_holdout(profile="tiny", seed=5, workers=1)
    assert first["already_opened"] is False and first["other_configurations"] == ["e" * 64]
    wf.print_holdout(first)
    out = capsys.readouterr().out
    assert "NEW TRIAL" in out and "Holdout verdict:" in out
    sealed = wf.split_holdout(dc.load_processed())[1]
    op = first["opening"]
    assert op["holdout_start"] == str(sealed[0].date()) and op["holdout_end"] == str(sealed[-1].date())
    trial = R.trial(first["trial_id"])
    assert trial["kind"] == "holdout" and trial["returns"]["dates"][0] >= str(sealed[0].date())
    n = R.count_trials(SYMBOLS)
    # the same configuration again: the recorded result, nothing trained, no new trial
    again = wf.open_holdout(profile="tiny", seed=6, workers=1)
    assert again["already_opened"] is True and again["opening"]["id"] == op["id"]
    assert again["passed"] == first["passed"] and R.count_trials(SYMBOLS) == n
    wf.print_holdout(again)
    assert "HOLDOUT ALREADY OPENED" in capsys.readouterr().out
    # a changed strategy tunable is another configuration: opening it would be a new trial
    monkeypatch.setattr(C, "SIGNAL_THRESHOLD", C.SIGNAL_THRESHOLD + 0.1)
    import walk_forward_runs as runs
    fp = runs.config_fingerprint(runs.model_configuration(wf.profile_params("tiny")))
    assert R.holdout_opening(fp, SYMBOLS) is None


@pytest.mark.timeout(1800)
def test_a_no_record_walk_forward_is_still_a_counted_trial(small_home, ray_local, capsys):
    import state_db
    report = wf.run(profile="tiny", seed=4, workers=1, min_train=340, retrain=40, record=False, charts=False)
    assert "run_id" not in report
    with state_db.opened(None, __import__("walk_forward_runs").RUNS_SCHEMA) as c:
        assert c.execute("SELECT COUNT(*) FROM walk_forward_runs").fetchone()[0] == 0
    rows = R.trials(SYMBOLS)
    assert len(rows) == 1 and rows[0]["kind"] == "walk_forward" and rows[0]["recorded"] is False
    assert rows[0]["settings"]["min_train"] == 340 and rows[0]["settings"]["retrain"] == 40
    assert rows[0]["id"] == report["trial_id"] and rows[0]["returns"]["dates"][-1] == report["end"]
    o = report["overall"]
    assert o["trials"]["n_trials"] == 1 and o["n_trials"] == 1
    assert any(c["name"] == "pbo" for c in o["conditions"])
    assert report["inputs"]["holdout"]["sessions"] == 40
    # the next run, another seed, is the second trial: its DSR is deflated for 2
    again = wf.run(profile="tiny", seed=5, workers=1, min_train=340, retrain=40, record=False, charts=False)
    assert again["overall"]["n_trials"] == 2 and R.count_trials(SYMBOLS) == 2
    wf.print_summary({**again, "report_html": "x", "timings_s": {"total": 1.0}})
    out = capsys.readouterr().out
    assert "trials:         2 on this universe" in out and "DSR:" in out and "PBO:" in out and "needs <=" in out
