"""DATA_SOURCE=csv: one <SYMBOL>.csv per symbol (Yahoo/Stooq download format) -> the same
validated, processed file as the other sources; every unusable file is one line naming it."""
import logging

import numpy as np
import pandas as pd
import pytest

import config
import csv_source
import data_collection as dc
import sample_data
from conftest import run_entry

SYMBOLS = ["AAPL", "MSFT", "JPM"]


def write_yahoo(directory, symbol, frame=None, header=None, extra=True):
    """A Yahoo-style download: Date,Open,High,Low,Close,Adj Close,Volume."""
    directory.mkdir(parents=True, exist_ok=True)
    df = frame if frame is not None else sample_data.generate_prices([symbol])
    out = pd.DataFrame({"Date": pd.to_datetime(df["Date"]).dt.strftime("%Y-%m-%d"),
                        "Open": df["Open"], "High": df["High"], "Low": df["Low"], "Close": df["Close"]})
    if extra:
        out["Adj Close"] = df["Close"] * 0.98
    out["Volume"] = df["Volume"].astype("int64")
    if header:
        out.columns = header
    path = directory / f"{symbol}.csv"
    out.to_csv(path, index=False)
    return path


@pytest.fixture
def csv_home(trading_home, universe_file, monkeypatch):
    monkeypatch.setenv("DATA_SOURCE", "csv")
    folder = trading_home / "data" / "csv"
    for sym in SYMBOLS:
        write_yahoo(folder, sym)
    return folder


def test_config_accepts_csv_and_default_folder(trading_home, monkeypatch):
    monkeypatch.setenv("DATA_SOURCE", "CSV")
    assert config.data_source() == "csv"
    assert config.csv_dir() == trading_home / "data" / "csv"
    monkeypatch.setenv("TRADING_CSV_DIR", str(trading_home / "mine"))
    assert config.csv_dir() == trading_home / "mine"
    monkeypatch.setenv("DATA_SOURCE", "excel")
    with pytest.raises(config.ConfigError, match="'csv'"):
        config.data_source()


def test_csv_gives_the_same_processed_file_as_the_same_prices_from_another_source(csv_home, trading_home,
                                                                                   monkeypatch):
    summary = dc.update(force=True)
    assert summary["source"] == "csv" and summary["symbols"] == sorted(SYMBOLS)
    from_csv = dc.load_processed()
    monkeypatch.setenv("DATA_SOURCE", "sample")
    dc.update(force=True)
    from_sample = dc.load_processed()
    assert len(from_csv) == len(from_sample) > 1000
    pd.testing.assert_frame_equal(from_csv.reset_index(drop=True), from_sample.reset_index(drop=True),
                                  check_exact=False, rtol=1e-9)


def test_header_case_insensitive_extra_columns_and_stooq_layout(trading_home, universe_file, monkeypatch):
    folder = trading_home / "stooq"
    monkeypatch.setenv("TRADING_CSV_DIR", str(folder))
    monkeypatch.setenv("DATA_SOURCE", "csv")
    write_yahoo(folder, "AAPL", header=["date", "OPEN", "High", "low", "Close", "Adj Close", "VOLUME"])
    write_yahoo(folder, "MSFT", extra=False)                          # Stooq: no Adj Close
    write_yahoo(folder, "JPM")
    raw, errors = csv_source.read_prices(SYMBOLS)
    assert errors == {} and sorted(raw["Symbol"].unique()) == sorted(SYMBOLS)
    assert list(raw.columns) == dc.RAW_COLUMNS
    sample = sample_data.generate_prices(["AAPL"])
    got = raw[raw.Symbol == "AAPL"]
    np.testing.assert_allclose(got["Close"].to_numpy(), sample["Close"].to_numpy())   # not Adj Close


def test_missing_folder_is_one_line_naming_it(trading_home, universe_file, monkeypatch):
    monkeypatch.setenv("DATA_SOURCE", "csv")
    with pytest.raises(dc.DataError) as err:
        dc.update(force=True)
    text = str(err.value)
    assert "\n" not in text and str(trading_home / "data" / "csv") in text and "TRADING_CSV_DIR" in text


@pytest.mark.parametrize("case, expect", [
    ("missing_file", "JPM.csv not found"),
    ("bad_header", "lacks the column(s) Close"),
    ("non_numeric", "line 5: High 'abc' is not a number"),
    ("bad_date", "line 3: Date '03/01/2019' is not a date"),
    ("empty", "cannot be read as CSV"),
])
def test_each_unusable_file_is_one_line_naming_the_file_and_the_fix_and_writes_nothing(csv_home, case, expect):
    target = csv_home / "JPM.csv"
    if case == "missing_file":
        target.unlink()
    elif case == "bad_header":
        text = target.read_text().splitlines()
        text[0] = "Date,Open,High,Low,Price,Adj Close,Volume"
        target.write_text("\n".join(text) + "\n")
    elif case == "non_numeric":
        lines = target.read_text().splitlines()
        parts = lines[4].split(",")
        parts[2] = "abc"
        lines[4] = ",".join(parts)
        target.write_text("\n".join(lines) + "\n")
    elif case == "bad_date":
        lines = target.read_text().splitlines()
        lines[2] = "03/01/2019," + lines[2].split(",", 1)[1]
        target.write_text("\n".join(lines) + "\n")
    elif case == "empty":
        target.write_text("")
    with pytest.raises(csv_source.CsvSourceError) as err:
        dc.update(force=True)
    text = str(err.value)
    assert expect in text and "JPM.csv" in text and "\n" not in text
    assert any(word in text for word in ("fix", "save", "replace", "write", "must", "remove"))
    assert not config.path("processed_stock_data.csv").exists()


def test_null_prices_are_dropped_with_one_warning_naming_the_file(csv_home, caplog):
    lines = (csv_home / "MSFT.csv").read_text().splitlines()
    for i in (10, 11):
        d = lines[i].split(",")[0]
        lines[i] = f"{d},null,null,null,null,null,null"
    (csv_home / "MSFT.csv").write_text("\n".join(lines) + "\n")
    with caplog.at_level(logging.WARNING, logger="data"):
        summary = dc.update(force=True)
    assert "MSFT" in summary["symbols"]
    warned = [r.getMessage() for r in caplog.records if "MSFT.csv" in r.getMessage()]
    assert len(warned) == 1 and "2 rows" in warned[0] and "line 11" in warned[0]
    assert dc.load_processed().isna().sum().sum() == 0


def test_same_validation_as_the_download_path(csv_home, caplog):
    """An absurd price in a file drops that symbol with the same problem the yfinance path reports."""
    df = sample_data.generate_prices(["JPM"])
    df.loc[500, ["Close", "High"]] = df.loc[500, "Close"] * 5
    write_yahoo(csv_home, "JPM", df)
    with caplog.at_level(logging.ERROR, logger="data"):
        summary = dc.update(force=True)
    assert summary["dropped"] == ["JPM"]
    assert "JPM: absurd price" in caplog.text


def test_reference_is_the_newest_file_date_so_history_can_be_evaluated(csv_home):
    ref = dc.reference_session()
    assert ref == pd.Timestamp(sample_data.generate_prices(["AAPL"])["Date"].max())


def test_entry_point_exit_code_and_one_error_line(trading_home):
    (trading_home / "selected_stocks.txt").write_text("AAPL\n")
    done = run_entry(["data_collection.py", "--force"], trading_home, {"DATA_SOURCE": "csv"})
    assert done.returncode == 1
    assert "CSV folder" in (done.stdout + done.stderr + "".join(
        p.read_text() for p in (trading_home / "logs").glob("*.log")))
    write_yahoo(trading_home / "data" / "csv", "AAPL")
    done = run_entry(["data_collection.py", "--force"], trading_home, {"DATA_SOURCE": "csv"})
    assert done.returncode == 0, done.stderr
    assert "1 symbols" in done.stdout
