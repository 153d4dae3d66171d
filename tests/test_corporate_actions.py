"""Corporate actions (issue 20): raw prices plus actions, adjusted on demand; a split told from a bad
tick; positions that follow splits and dividends, equal in the paper broker and the backtest; and
the whole pipeline on real 2014 prices through AAPL's 7-for-1 split (tests/data/split_history)."""
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import backtest
import constants as C
import corporate_actions as ca
import data_collection as dc
import health_check
import market_calendar
import model_training
import pnl
import sample_data
import state_db
import walk_forward as wf
from backtest_engine import FixedTargetPolicy, market_from_frames, run_engine
from broker_base import BUY
from paper_broker import PaperBroker
from settings import default_settings
from yahoo_fake import FakeYahoo, session_for

FIXTURE = Path(__file__).parent / "data" / "split_history"
SPLIT_DAY = pd.Timestamp("2014-06-09")


def _raw(closes, start="2024-01-02", symbol="XYZ"):
    dates = market_calendar.sessions(start, "2026-01-01")[:len(closes)]
    c = np.asarray(closes, float)
    return pd.DataFrame({"Date": dates, "Symbol": symbol, "Open": c, "High": c * 1.01, "Low": c * 0.99,
                         "Close": c, "Volume": 1000.0})


def _actions(rows):
    return ca.normalize(pd.DataFrame(rows, columns=["Date", "Symbol", "Dividend", "Split"]))


def _fixture_raw(symbol="AAPL"):
    frame = pd.read_csv(FIXTURE / f"{symbol}.csv", parse_dates=["Date"])
    frame.insert(1, "Symbol", symbol)
    return frame


# ----------------------------------------------------------------------------- adjusting
def test_adjust_divides_out_a_split_and_a_dividend_and_leaves_the_latest_bar():
    raw = _raw([100, 100, 50, 50, 49])                    # 2:1 on day 3, then a 1.00 dividend on day 5
    days = raw["Date"]
    actions = _actions([[days[2], "XYZ", 0.0, 2.0], [days[4], "XYZ", 1.0, 1.0]])
    adj = ca.adjust(raw, actions)
    assert adj["Close"].iloc[-1] == 49 and adj["AdjFactor"].iloc[-1] == 1.0
    assert adj["Close"].iloc[1] == pytest.approx(50 * (1 - 1 / 50))        # split and dividend divided out
    assert adj["Volume"].iloc[0] == 2000.0                                  # volumes in the new share units
    assert np.abs(np.diff(np.log(adj["Close"].to_numpy()))).max() < 0.03    # continuous


def test_a_split_is_adjusted_a_bad_tick_is_refused_naming_symbol_date_and_fix():
    raw = _raw(list(np.linspace(100, 110, 80)) + list(np.linspace(55, 56, 40)))    # x0.5 on day 81
    day = raw["Date"].iloc[80]
    clean, problems = dc.validate_prices(raw, ["XYZ"], reference=raw["Date"].max())
    assert clean.empty and problems[0].kind == "absurd_move" and len(problems) == 1
    line = str(problems[0])
    assert line.startswith("XYZ:") and str(day.date()) in line and "record it" in line and "\n" not in line
    clean, problems = dc.validate_prices(raw, ["XYZ"], reference=raw["Date"].max(),
                                         actions=_actions([[day, "XYZ", 0.0, 2.0]]))
    assert not [p for p in problems if p.fatal] and len(clean) == len(raw)
    up = _raw(list(np.full(80, 100.0)) + list(np.full(40, 150.0)))       # x1.5 in a day, no action
    clean, problems = dc.validate_prices(up, ["XYZ"], reference=up["Date"].max())
    assert clean.empty and "x1.50" in str(problems[0])


# ----------------------------------------------------------------------------- yfinance, offline
def test_yfinance_actions_through_its_real_parsing_store_prices_as_traded(trading_home, monkeypatch):
    """Yahoo serves split-adjusted prices plus an events block; the update asks for
    auto_adjust=False and actions, undoes the served splits (the store keeps prices as traded, so
    a later split never rescales it), records the split and the dividend, and the features see no jump."""
    split_day, div_day = "2025-06-02", "2025-08-01"
    fake = FakeYahoo(events={"AAPL": {"splits": {split_day: 4.0}, "dividends": {div_day: 0.25}}})
    (trading_home / "selected_stocks.txt").write_text("AAPL\nMSFT\n")
    monkeypatch.setenv("DATA_SOURCE", "yfinance")
    real = dc.fetch_yfinance
    monkeypatch.setattr(dc, "fetch_yfinance",
                        lambda s, a, b: real(s, "2024-01-02", "2025-10-31", session=session_for(fake)))
    monkeypatch.setattr(dc, "reference_session", lambda: pd.Timestamp("2025-10-31"))
    dc.update(force=True)
    served = sample_data.generate_prices(["AAPL"], end="2025-10-31").set_index("Date")["Close"]
    stored = dc.read_raw_prices()
    aapl = stored[stored["Symbol"] == "AAPL"].set_index("Date")["Close"]
    before = pd.Timestamp("2025-05-30")
    assert aapl[before] == pytest.approx(served[before] * 4, rel=1e-4)           # as traded before the split
    assert aapl[pd.Timestamp(split_day)] == pytest.approx(served[pd.Timestamp(split_day)], rel=1e-4)
    actions = ca.read_store()
    assert actions[["Symbol", "Dividend", "Split"]].values.tolist() == [["AAPL", 0.0, 4.0], ["AAPL", 0.25, 1.0]]
    feats = dc.load_processed().query("Symbol == 'AAPL'").set_index("Date")
    assert abs(feats.loc[pd.Timestamp(split_day), "log_return"]) < 0.1
    assert any("events=div" in u or "events=div%2Csplits" in u or "splits" in u for u in fake.requests)


# ----------------------------------------------------------------------------- positions
def test_position_events_split_cash_in_lieu_and_short_dividend():
    row = {"Date": pd.Timestamp("2024-03-01"), "Dividend": 0.0, "Split": 1.5, "PayDate": pd.NaT}
    (ev,) = ca.position_events("XYZ", 5, 30.0, row, prev_close=30.0)
    assert (ev.kind, ev.quantity_change, ev.new_avg_price) == ("SPLIT", 2, 20.0)   # 7.5 -> 7 shares
    assert ev.cash_change == pytest.approx(0.5 * 20.0)                              # half a share at 20
    (short,) = ca.position_events("XYZ", -5, 30.0, row, prev_close=30.0)
    assert short.quantity_change == -2 and short.cash_change == pytest.approx(-10.0)
    div = {"Date": pd.Timestamp("2024-03-01"), "Dividend": 0.5, "Split": 1.0, "PayDate": pd.Timestamp("2024-03-20")}
    (d,) = ca.position_events("XYZ", -100, 30.0, div, prev_close=30.0)
    assert d.cash_change == -50.0 and str(d.pay_date) == "2024-03-20"


def test_paper_broker_and_backtest_engine_apply_the_real_split_alike(trading_home, monkeypatch):
    monkeypatch.setattr(C, "BACKTEST_CASH_INTEREST", False)      # the paper account earns no interest on cash
    """100 AAPL bought on 2014-05-30, held through the 7-for-1 split and the August dividend:
    the paper broker (session by session) and the engine end with the same shares, cash and
    equity, and neither shows a jump on the split day."""
    raw = _fixture_raw()
    raw = raw[(raw["Date"] >= "2014-05-29") & (raw["Date"] <= "2014-08-15")].reset_index(drop=True)
    actions = ca.normalize(pd.DataFrame({"Date": raw["Date"], "Symbol": "AAPL", "Dividend": raw["Dividends"],
                                         "Split": raw["Stock Splits"]}))
    prices = raw[["Date", "Symbol", "Open", "Close"]].assign(AdjFactor=ca.factors(raw, actions)[0])
    prices[["Open", "Close"]] = prices[["Open", "Close"]].mul(prices["AdjFactor"], axis=0)   # as processed
    market = market_from_frames(prices, actions=actions)
    split_i = int(np.flatnonzero(market.dates == SPLIT_DAY)[0])
    targets = np.where(np.arange(len(market.dates)) < split_i, 100, 700).reshape(-1, 1)
    settings = default_settings()
    result = run_engine(market, FixedTargetPolicy(targets), settings=settings, initial_cash=100_000.0,
                        fill="next_close")
    assert result.final_positions == {"AAPL": 700}
    assert [e["kind"] for e in result.action_events] == ["SPLIT", "DIVIDEND"]

    conn = state_db.connect()
    broker = PaperBroker(conn=conn, settings=settings, fill="close")
    conn.execute("UPDATE paper_account SET cash = 100000 WHERE id = 1")
    paper_equity = []
    for k, row in raw.iterrows():
        day = row["Date"].date()
        broker.apply_corporate_actions(actions, through=day)
        broker.set_prices({"AAPL": row["Close"]}, as_of=day)
        if k == 1:                                   # the engine's order decided on day 0 fills at day 1's close
            broker.place_order({"symbol": "AAPL", "side": BUY, "quantity": 100, "order_type": "MARKET"})
        paper_equity.append(broker.get_account_balance()["equity"])
    assert broker.get_positions()["AAPL"]["quantity"] == 700
    assert broker.get_positions()["AAPL"]["avg_price"] == pytest.approx(result.trades[0]["fill_price"] / 7, rel=1e-6)
    np.testing.assert_allclose(paper_equity, result.equity, atol=0.02)
    events = broker.corporate_action_events()
    assert [(e["kind"], e["symbol"], e["quantity_change"], e["cash_change"]) for e in events] == [
        ("SPLIT", "AAPL", 600, 0.0), ("DIVIDEND", "AAPL", 0, 700 * 0.47)]
    jump = abs(result.equity[split_i] / result.equity[split_i - 1] - 1)
    assert jump < 0.03                                # AAPL moved 2.2 % on the day; 100 shares x 645 -> x 93.7 would be -85 %
    status = pnl.status_dict(broker, conn, "2014-08-15")
    assert status["corporate_actions_cash"] == pytest.approx(329.0)
    assert status["positions"][0]["cost_basis"] == "fifo" and status["positions"][0]["quantity"] == 700
    assert status["equity"] == pytest.approx(100_000 + status["realised_pnl"] + status["unrealised_pnl"], abs=0.02)


# ----------------------------------------------------------------------------- real history, end to end
@pytest.fixture
def real_csv_home(trading_home, monkeypatch):
    folder = trading_home / "data" / "csv"
    folder.mkdir(parents=True)
    for sym in ("AAPL", "MSFT"):
        shutil.copy(FIXTURE / f"{sym}.csv", folder / f"{sym}.csv")
    (trading_home / "selected_stocks.txt").write_text("AAPL\nMSFT\n")
    monkeypatch.setenv("DATA_SOURCE", "csv")
    return trading_home


@pytest.mark.timeout(900)
def test_real_2014_history_update_train_backtest_and_walk_forward_without_a_jump(real_csv_home, capsys,
                                                                                  monkeypatch):
    home = real_csv_home
    monkeypatch.setattr(C, "MIN_SYMBOL_ROWS", 60)          # one year of two symbols: short folds
    monkeypatch.setattr(C, "SIGNAL_THRESHOLD", 0.01)       # trade on any signal, so positions cross the split
    summary = dc.update(force=True)
    assert summary["symbols"] == ["AAPL", "MSFT"] and summary["actions"] == 9
    stored = dc.read_raw_prices()
    aapl = stored[stored["Symbol"] == "AAPL"].set_index("Date")["Close"]
    assert aapl[pd.Timestamp("2014-06-06")] == 645.57 and aapl[SPLIT_DAY] == 93.7          # as traded
    actions = ca.read_store()
    assert actions[actions["Split"] != 1.0][["Symbol", "Split"]].values.tolist() == [["AAPL", 7.0]]
    feats = dc.load_processed()
    a = feats[feats["Symbol"] == "AAPL"].set_index("Date")
    assert abs(a.loc[SPLIT_DAY, "log_return"]) < 0.05                                  # no split in the features
    assert a["Close"].iloc[-1] == 110.38 and a["AdjFactor"].iloc[-1] == 1.0

    trained = model_training.train(model_training.TrainConfig(home / C.PROCESSED_DATA_FILE, profile="tiny",
                                                              epochs=2, verbose=0, force=True))
    assert trained
    code = backtest.main(["--in-sample", "--start", "2014-03-03", "--no-record", "--no-progress"])
    out = capsys.readouterr()
    assert code in (0, 1), out.err[-2000:]
    report = json.loads((home / "reports" / "latest_backtest.json").read_text())
    daily = {r["date"]: r for r in report["daily"]}
    before, on = daily["2014-06-06"], daily["2014-06-09"]
    assert abs(on["equity"] / before["equity"] - 1) < 0.03
    assert abs(on["benchmark"] / before["benchmark"] - 1) < 0.03       # buy-and-hold through the split, too
    assert before["positions"] >= 1 and before["long_value"] + before["short_value"] > 0   # held across it

    sessions = feats["Date"].drop_duplicates().sort_values()
    folds = wf.plan_folds(sessions, min_train=80, retrain=60)
    assert folds and folds[0]["test_start"] <= SPLIT_DAY
    prof = {**wf.profile_params("tiny"), "epochs": 2, "patience": 1}
    results = [wf.train_fold(feats, fold, prof, seed=C.TRAIN_SEED) for fold in folds]
    ev = wf.evaluate(feats, results)
    for curve in (ev["equity"], ev["benchmark"]):
        on = curve.index.get_loc(SPLIT_DAY)
        assert abs(curve.iloc[on] / curve.iloc[on - 1] - 1) < 0.03


def test_health_check_lists_a_refused_symbol(trading_home, universe_file, monkeypatch):
    monkeypatch.setenv("DATA_SOURCE", "csv")
    folder = trading_home / "data" / "csv"
    folder.mkdir(parents=True)
    for sym in ("AAPL", "MSFT", "JPM"):
        frame = _fixture_raw("MSFT").drop(columns=["Symbol"])
        if sym == "JPM":                      # an unrecorded 2:1 split: one day's OHLC x 0.5 onwards
            frame.loc[frame.index >= 200, ["Open", "High", "Low", "Close"]] *= 0.5
        frame.to_csv(folder / f"{sym}.csv", index=False)
    summary = dc.update(force=True)
    assert summary["dropped"] == ["JPM"]
    status, detail = health_check.check_data()
    assert status == health_check.WARN and "JPM" in detail and "refused" in detail


# ----------------------------------------------------------------------------- CSV actions and errors
def test_csv_actions_file_and_errors_name_the_csv_file_never_yahoo(real_csv_home):
    folder = real_csv_home / "data" / "csv"
    plain = _fixture_raw("AAPL").drop(columns=["Symbol", "Dividends", "Stock Splits"])
    plain.to_csv(folder / "AAPL.csv", index=False)                  # prices only: actions in the second file
    (folder / C.CSV_ACTIONS_FILE).write_text("Symbol,Date,Dividends,Stock Splits,Pay Date\n"
                                             "AAPL,2014-06-09,0,7:1,\nAAPL,2014-08-07,0.47,0,2014-08-14\n")
    summary = dc.update(force=True)
    assert summary["symbols"] == ["AAPL", "MSFT"]
    stored = ca.read_store().query("Symbol == 'AAPL'")
    assert stored["Split"].tolist() == [7.0, 1.0] and str(stored["PayDate"].iloc[1].date()) == "2014-08-14"
    (folder / C.CSV_ACTIONS_FILE).write_text("Symbol,Date,Dividends,Stock Splits\nAAPL,2014-06-09,0,seven\n")
    with pytest.raises(dc.DataError) as err:
        dc.update(force=True)
    text = str(err.value)
    assert C.CSV_ACTIONS_FILE in text and "2:1" in text and "yahoo" not in text.lower()
    (folder / C.CSV_ACTIONS_FILE).unlink()
    plain.to_csv(folder / "AAPL.csv", index=False)                  # the split no longer recorded anywhere
    summary = dc.update(force=True)
    assert summary["dropped"] == ["AAPL"]
    refused = dc.read_refused()
    assert "2014-06-09" in refused[0]["line"] and "Stock Splits" in refused[0]["line"]
    assert "yahoo" not in refused[0]["line"].lower()
