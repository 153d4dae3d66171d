"""The data pipeline: yfinance's real parsing fed offline, validation, causal features, atomic
and never-worse writes, the universe file, the shell entry point."""
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import config
import constants as C
import data_collection as dc
import sample_data
from yahoo_fake import FakeYahoo, session_for
from conftest import run_command

ROOT = Path(__file__).resolve().parent.parent
END = "2025-10-31"


def fetch(fake, symbols, start="2025-03-03", **kw):
    kw.setdefault("backoff_s", 0.05)
    return dc.fetch_yfinance(symbols, start, END, session=session_for(fake), **kw)


# ------------------------------------------------------------------ yfinance, offline
def test_healthy_download_parsed_by_yfinance():
    raw, errors = fetch(FakeYahoo(), ["AAPL", "MSFT"], start="2025-01-02")
    assert errors == {}
    assert sorted(raw["Symbol"].unique()) == ["AAPL", "MSFT"]
    want = sample_data.generate_prices(["AAPL"], end=END)
    want = want[want["Date"] >= "2025-01-02"].reset_index(drop=True)
    got = raw[raw["Symbol"] == "AAPL"].sort_values("Date").reset_index(drop=True)
    assert list(got["Date"]) == list(want["Date"])
    np.testing.assert_allclose(got["Close"], want["Close"], rtol=1e-6)
    np.testing.assert_allclose(got["Open"], want["Open"], rtol=1e-6)


def test_delisted_symbol_among_healthy_ones(caplog):
    raw, errors = fetch(FakeYahoo({"GONE": "delisted"}), ["AAPL", "GONE", "JPM"], start="2025-02-03")
    assert set(raw["Symbol"]) == {"AAPL", "JPM"}
    assert "GONE" in errors
    clean, problems = dc.validate_prices(raw, ["AAPL", "GONE", "JPM"], reference=END)
    assert set(clean["Symbol"]) == {"AAPL", "JPM"}
    [gone] = [p for p in problems if p.symbol == "GONE"]
    assert gone.kind == "no_data" and gone.fatal
    assert "remove it from selected_stocks.txt" in gone.fix


def test_rate_limited_symbol_is_retried_with_backoff(caplog):
    fake = FakeYahoo({"RATE": "ratelimit"}, ratelimit_times=3)
    with caplog.at_level(logging.WARNING, logger="data"):
        raw, errors = fetch(fake, ["AAPL", "RATE"], start="2025-04-01")
    assert errors == {}
    assert set(raw["Symbol"]) == {"AAPL", "RATE"}
    assert "rate limited by Yahoo on RATE" in caplog.text


def test_permanently_rate_limited_symbol_gives_up_and_keeps_the_rest(caplog):
    fake = FakeYahoo({"SLOW": "ratelimit"})
    raw, errors = fetch(fake, ["MSFT", "SLOW"], start="2025-05-01", retries=2)
    assert set(raw["Symbol"]) == {"MSFT"}
    assert dc._is_rate_limit(errors["SLOW"]), errors


def test_all_failed_download_fails_the_job(trading_home, monkeypatch):
    (trading_home / "selected_stocks.txt").write_text("DEAD1\nDEAD2\n")
    fake = FakeYahoo({"DEAD1": "delisted", "DEAD2": "delisted"})
    monkeypatch.setenv("DATA_SOURCE", "yfinance")
    real = dc.fetch_yfinance
    monkeypatch.setattr(dc, "fetch_yfinance", lambda s, a, b: real(s, a, b, session=session_for(fake)))
    with pytest.raises(dc.DataError, match="no data for any of the 2 symbols.*unreachable"):
        dc.update(force=True)
    assert not (trading_home / C.PROCESSED_DATA_FILE).exists()


def test_yfinance_chatter_is_one_summary_line_not_a_line_per_symbol(caplog):
    """Issue 23: offline, ~35 yfinance lines (a line per symbol and retry, at ERROR, into
    errors.log) buried the update's own diagnosis. They stay out of our logs: one summary line."""
    symbols = [f"DEAD{i}" for i in range(6)]
    with caplog.at_level(logging.DEBUG):
        raw, errors = fetch(FakeYahoo({s: "delisted" for s in symbols}), symbols)
    assert set(errors) == set(symbols)
    assert not [r for r in caplog.records if r.name.startswith("yfinance")], caplog.text
    [summary] = [r for r in caplog.records if "yfinance logged" in r.getMessage()]
    assert summary.levelno == logging.INFO and summary.name == "data"


def test_no_healthy_symbol_fails_the_job(trading_home, monkeypatch):
    (trading_home / "selected_stocks.txt").write_text("STALE\nGONE\n")
    fake = FakeYahoo({"GONE": "delisted"}, end="2025-06-30")        # STALE ends in June
    monkeypatch.setenv("DATA_SOURCE", "yfinance")
    real = dc.fetch_yfinance
    monkeypatch.setattr(dc, "fetch_yfinance", lambda s, a, b: real(s, "2025-01-02", b, session=session_for(fake)))
    monkeypatch.setattr(dc, "reference_session", lambda: pd.Timestamp("2025-10-31"))
    with pytest.raises(dc.DataError, match="no healthy symbol"):
        dc.update(force=True)
    assert not (trading_home / C.PROCESSED_DATA_FILE).exists()


def test_download_that_never_answers_hits_the_deadline():
    fake = FakeYahoo({"HANG": "hang"}, hang_s=6)
    started = time.monotonic()
    with pytest.raises(dc.DataError, match="did not finish within 1 s"):
        fetch(fake, ["HANG"], start="2025-06-02", deadline_s=1.0)
    assert time.monotonic() - started < 3


# ------------------------------------------------------------------ features
@pytest.fixture(scope="module")
def raw_sample():
    return sample_data.generate_prices(["AAPL", "MSFT", "NVDA"], start="2023-01-03", end="2024-06-28")


@pytest.mark.parametrize("cut", ["2023-02-15", "2023-07-03", "2024-01-02", "2024-06-27"])
def test_build_features_is_causal(raw_sample, cut):
    full = dc.build_features(raw_sample)
    part = dc.build_features(raw_sample[raw_sample["Date"] <= cut])
    expect = full[full["Date"] <= cut].reset_index(drop=True)
    pd.testing.assert_frame_equal(part, expect, check_exact=True)


def test_build_features_changes_nothing_in_the_past_when_the_future_changes(raw_sample):
    changed = raw_sample.copy()
    later = changed["Date"] > "2024-01-02"
    changed.loc[later, ["Open", "High", "Low", "Close"]] *= 3.0
    a, b = dc.build_features(raw_sample), dc.build_features(changed)
    a, b = a[a["Date"] <= "2024-01-02"], b[b["Date"] <= "2024-01-02"]
    pd.testing.assert_frame_equal(a, b, check_exact=True)


def test_build_features_values_and_no_nan(raw_sample):
    feats = dc.build_features(raw_sample)
    assert not feats.isna().any().any()
    assert list(feats.columns) == dc.RAW_COLUMNS + dc.FEATURE_COLUMNS
    sym = raw_sample[raw_sample["Symbol"] == "MSFT"].reset_index(drop=True)
    row = feats[feats["Symbol"] == "MSFT"].iloc[5]
    i = int(sym.index[sym["Date"] == row["Date"]][0])
    closes = sym["Close"].to_numpy()
    lr = np.log(closes[1:] / closes[:-1])
    assert row["log_return"] == pytest.approx(lr[i - 1])
    assert row["volatility_20"] == pytest.approx(lr[i - 20:i].std(ddof=1))
    assert row["sma_ratio_20"] == pytest.approx(closes[i] / closes[i - 19:i + 1].mean() - 1)
    assert row["gap"] == pytest.approx(np.log(sym["Open"][i] / closes[i - 1]))
    # the first 20 rows of each symbol are the warm-up
    assert (feats.groupby("Symbol").size()
            == raw_sample.groupby("Symbol").size() - C.FEATURE_VOL_WINDOW).all()


def test_build_features_rejects_missing_columns():
    with pytest.raises(dc.DataError, match="missing"):
        dc.build_features(pd.DataFrame({"Date": [], "Symbol": []}))


# ------------------------------------------------------------------ validation
def _one(symbol="AAPL", start="2024-01-02", end="2024-12-31"):
    return sample_data.generate_prices([symbol], start=start, end=end)


def test_validation_nan_rows_dropped_and_reported():
    raw = _one()
    raw.loc[10, "Close"] = np.nan
    clean, problems = dc.validate_prices(raw, ["AAPL"], reference="2024-12-31")
    assert len(clean) == len(raw) - 1
    assert any(p.kind == "nan_rows" and not p.fatal for p in problems)


def test_validation_duplicate_dates():
    raw = _one()
    raw = pd.concat([raw, raw.iloc[[30]]], ignore_index=True)
    clean, problems = dc.validate_prices(raw, ["AAPL"], reference="2024-12-31")
    assert not clean.duplicated(["Symbol", "Date"]).any()
    assert any(p.kind == "duplicates" for p in problems)


def test_validation_gaps_against_nyse_sessions():
    raw = _one()
    raw = raw.drop(index=range(50, 60)).reset_index(drop=True)      # 10 sessions missing
    clean, problems = dc.validate_prices(raw, ["AAPL"], reference="2024-12-31")
    [gap] = [p for p in problems if p.kind == "gaps"]
    assert gap.fatal and "10 of" in gap.message and clean.empty


def test_validation_weekend_row_dropped():
    raw = _one()
    extra = raw.iloc[[5]].assign(Date=pd.Timestamp("2024-01-06"))    # a Saturday
    clean, problems = dc.validate_prices(pd.concat([raw, extra]), ["AAPL"], reference="2024-12-31")
    assert pd.Timestamp("2024-01-06") not in set(clean["Date"])
    assert any(p.kind == "non_session" for p in problems)


def test_validation_non_positive_price():
    raw = _one()
    raw.loc[40, "Low"] = 0.0
    clean, problems = dc.validate_prices(raw, ["AAPL"], reference="2024-12-31")
    assert clean.empty and problems[0].kind == "bad_price"


def test_validation_absurd_move():
    raw = _one()
    raw.loc[100:, ["Open", "High", "Low", "Close"]] *= 4       # an unadjusted split
    clean, problems = dc.validate_prices(raw, ["AAPL"], reference="2024-12-31")
    assert clean.empty and problems[0].kind == "absurd_move" and "--force" in problems[0].fix


def test_validation_stale_symbol_keeps_its_history_up_to_its_last_day():
    """Issue 21: a delisted symbol was removed from its whole history (survivorship by
    construction). Its rows up to its last bar are kept; the problem is a warning naming it."""
    raw = _one(end="2024-11-29")
    clean, problems = dc.validate_prices(raw, ["AAPL"], reference="2024-12-31")
    assert len(clean) == len(raw) and clean["Date"].max() == pd.Timestamp("2024-11-29")
    assert problems[0].kind == "stale" and problems[0].fatal is False and "kept" in problems[0].message


def test_a_delisted_symbol_stays_in_the_processed_history(trading_home, monkeypatch):
    """End to end through the update: the symbol whose prices stop is in processed_stock_data.csv
    up to its last day, listed as stale, not as dropped."""
    import sample_data
    real = sample_data.generate_prices

    def delisting(symbols, *args, **kwargs):
        frame = real(symbols, *args, **kwargs)
        last = sorted(frame["Date"].unique())[-30]
        return frame[(frame["Symbol"] != symbols[0]) | (frame["Date"] <= last)].reset_index(drop=True)
    monkeypatch.setattr(sample_data, "generate_prices", delisting)
    summary = dc.update(force=True)
    gone = dc.load_universe()[0]
    df = dc.load_processed()
    assert gone in set(df["Symbol"]) and gone not in summary["dropped"]
    assert df[df["Symbol"] == gone]["Date"].max() < df["Date"].max()
    assert gone in dc.stale_symbols(df, dc.load_universe(), df["Date"].max())


def test_validation_healthy_passes_untouched():
    raw = _one()
    clean, problems = dc.validate_prices(raw, ["AAPL"], reference="2024-12-31")
    assert problems == [] and len(clean) == len(raw)


def test_truncated_csv_on_disk_is_a_clear_error(trading_home):
    dc.update(force=True)
    path = trading_home / C.PROCESSED_DATA_FILE
    text = path.read_text()
    path.write_text(text[: len(text) - 40])               # cut mid-line
    with pytest.raises(dc.DataError, match="run_daily_data_update.sh --force"):
        dc.load_processed()


def test_missing_and_empty_processed_file(trading_home):
    with pytest.raises(dc.DataError, match="not found"):
        dc.load_processed()
    (trading_home / C.PROCESSED_DATA_FILE).write_text("")
    with pytest.raises(dc.DataError, match="empty"):
        dc.load_processed()


# ------------------------------------------------------------------ writing the file
def test_update_writes_zero_nan_file_and_is_incremental(trading_home, monkeypatch):
    summary = dc.update(force=True)
    assert summary["symbols"] == sorted(dc.load_universe())
    df = dc.load_processed()
    assert df.isna().sum().sum() == 0
    assert summary["last_date"] == "2025-10-31"
    calls = []
    real = dc.fetch_prices
    monkeypatch.setattr(dc, "fetch_prices", lambda s, a, b: calls.append(a) or real(s, a, b))
    os.utime(trading_home / C.PROCESSED_DATA_FILE, (0, 0))     # old: not skipped as fresh
    dc.update()
    assert calls and calls[0] >= pd.Timestamp("2025-10-20")        # only the missing days


def test_fresh_file_is_skipped_unless_forced(trading_home):
    dc.update(force=True)
    assert dc.update()["skipped"] is True
    assert dc.update(force=True)["skipped"] is False


def test_a_shrunk_universe_is_seen_by_a_fresh_file_too(trading_home):
    """Issue 23: removing symbols from selected_stocks.txt was only half seen: a fresh processed
    file still holding them was skipped as fresh, so they stayed in it until the next --force."""
    dc.update(force=True)
    kept = sorted(dc.load_universe())[:3]
    (trading_home / "selected_stocks.txt").write_text("\n".join(kept) + "\n")
    summary = dc.update()                                        # not forced; the file is fresh
    assert summary["skipped"] is False and summary["symbols"] == kept
    assert sorted(dc.load_processed()["Symbol"].unique()) == kept
    assert dc.update()["skipped"] is True                        # and now it is up to date


def test_atomic_write_failure_keeps_previous_file(trading_home, monkeypatch):
    dc.update(force=True)
    path = trading_home / C.PROCESSED_DATA_FILE
    before = path.read_bytes()
    feats = dc.load_processed()

    def broken(self, *a, **k):
        Path(a[0]).write_text("Date,Symbol\n2025-01-02,AA")      # half a file, then a crash
        raise OSError("disk full")
    monkeypatch.setattr(pd.DataFrame, "to_csv", broken)
    with pytest.raises(OSError, match="disk full"):
        dc.write_processed(feats, force=True)
    assert path.read_bytes() == before
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]


def test_never_replaced_by_a_worse_file(trading_home):
    dc.update(force=True)
    feats = dc.load_processed()
    fewer = feats[feats["Symbol"] != "AAPL"]
    with pytest.raises(dc.DataError, match="lacks AAPL"):
        dc.write_processed(fewer)
    older = feats[feats["Date"] < "2025-06-02"]
    with pytest.raises(dc.DataError, match="before the current file"):
        dc.write_processed(older)
    dc.write_processed(fewer, force=True)
    assert "AAPL" not in set(dc.load_processed()["Symbol"])


# ------------------------------------------------------------------ universe
def test_universe_comments_blank_lines_and_bad_line(trading_home):
    path = trading_home / "selected_stocks.txt"
    path.write_text("# header\nAAPL  # apple\n\nbrk-b\nAAPL\n")
    assert dc.load_universe() == ["AAPL", "BRK-B"]
    path.write_text("AAPL\nMSFT\nnot a ticker!\n")
    with pytest.raises(dc.DataError, match="line 3"):
        dc.load_universe()


def test_default_universe_is_valid():
    symbols = dc.load_universe(ROOT / "selected_stocks.txt")
    assert 8 <= len(symbols) <= 15


# ------------------------------------------------------------------ configuration and the script
def test_trading_mode_is_validated(monkeypatch):
    assert config.trading_mode() == "paper"
    monkeypatch.setenv("TRADING_MODE", "LIVE")
    assert config.trading_mode() == "live"
    monkeypatch.setenv("TRADING_MODE", "papr")
    with pytest.raises(config.ConfigError, match="papr"):
        config.trading_mode()


def test_shell_script_from_another_directory(trading_home, tmp_path):
    plain = {"VIRTUAL_ENV": None, "PATH": "/usr/bin:/bin"}          # no venv activated
    done = run_command([ROOT / "run_daily_data_update.sh", "--force"], env_extra=plain, cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr
    assert (trading_home / C.PROCESSED_DATA_FILE).exists()
    logs = list((trading_home / "logs").glob("data_update_*.log"))
    assert logs and "wrote processed_stock_data.csv" in logs[0].read_text()
    # a broken universe: non-zero exit with the reason, in the log and errors.log
    (trading_home / "selected_stocks.txt").write_text("AAPL\n???\n")
    done = run_command([ROOT / "run_daily_data_update.sh"], env_extra=plain, cwd=tmp_path, timeout=120)
    assert done.returncode == 1
    assert "line 2" in (trading_home / "logs" / "errors.log").read_text()


def test_bad_trading_mode_stops_the_script(trading_home, tmp_path):
    done = run_command([ROOT / "run_daily_data_update.sh"], env_extra={"TRADING_MODE": "sometimes"}, cwd=tmp_path,
                       timeout=60)
    assert done.returncode == 2 and "TRADING_MODE" in done.stderr


def test_synthetic_opens_are_detected_and_named():
    """Issue 21: Open == previous Close (a source without real opens) was not detected, so
    next-open fills happened at the decision's close."""
    raw = _one()
    assert dc.synthetic_open_share(raw) < 0.05 and dc.synthetic_open_problem(raw, "x.csv") is None
    fake = raw.copy()
    fake.loc[1:, "Open"] = fake["Close"].to_numpy()[:-1]
    assert dc.synthetic_open_share(fake) == 1.0
    line = dc.synthetic_open_problem(fake, "/h/processed_stock_data.csv")
    assert line.startswith("/h/processed_stock_data.csv: Open equals the previous Close on 100%")
    assert "\n" not in line and "--fill next_close" in line and "SYNTHETIC_OPEN_MAX_SHARE" in line
