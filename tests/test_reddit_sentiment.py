"""Reddit sentiment: the real PRAW client against a fake Reddit API on 127.0.0.1
(tests/fake_reddit_server.py), VADER's shipped lexicon, the state database; the features joined
point in time and only when REDDIT_SENTIMENT is on; the daily job only when asked for."""
from __future__ import annotations

import io
import os
import sqlite3
from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd
import pytest

import constants as C
import credential_manager
import data_collection
import reddit_sentiment as rs
import scheduler
import sentiment_store
import state_db
import walk_forward_runs
from conftest import FIXED_NOW, run_entry
from fake_reddit_server import CLIENT_ID, CLIENT_SECRET, USER_AGENT, FakeReddit

NOW = FIXED_NOW.astimezone(timezone.utc)          # Tue 2026-11-24 11:00 New York: session 2026-11-24


@pytest.fixture
def reddit(monkeypatch, trading_home, universe_file):
    """The fake Reddit with two subreddits, PRAW pointed at it, the credentials stored."""
    with FakeReddit() as fake:
        fake.subreddit("stocks")
        fake.subreddit("investing")
        monkeypatch.setattr(C, "REDDIT_OAUTH_URL", fake.url)
        monkeypatch.setattr(C, "REDDIT_URL", fake.url)
        monkeypatch.setattr(C, "REDDIT_SUBREDDITS", "stocks investing")
        monkeypatch.setattr(C, "REDDIT_TIMEOUT_S", 0.3)
        credential_manager.CredentialManager().store_credentials(
            "reddit", {"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET, "user_agent": USER_AGENT})
        yield fake


def _ago(hours: float) -> float:
    return (NOW - timedelta(hours=hours)).timestamp()


def _rows(conn) -> dict:
    return {r["symbol"]: dict(r) for r in conn.execute("SELECT * FROM reddit_sentiment")}


def test_collect_records_counts_scores_and_the_stamp(reddit):
    reddit.add_post("stocks", "$AAPL is a great buy, love it", _ago(1), "AAPL AAPL $aapl again")  # once
    reddit.add_post("stocks", "MSFT earnings were terrible, awful guidance", _ago(2))
    reddit.add_post("stocks", "I think ALL of DD on CEO YOLO is fine", _ago(3))     # blacklist: nothing
    reddit.add_post("stocks", "AAPL from two days ago", _ago(48))                    # outside the lookback
    reddit.add_comment("investing", "AAPL and MSFT both fine I guess", _ago(4))      # both, once each
    reddit.add_comment("investing", "aapl in lower case is not a ticker", _ago(4))  # bare lower case: no
    reddit.add_comment("investing", "JPMorgan JPM is horrible, worst bank ever", _ago(5))
    conn = state_db.connect()
    done = rs.collect(conn=conn, now=NOW)
    assert done["session"] == "2026-11-24" and done["posts"] == 3 and done["comments"] == 3
    rows = _rows(conn)
    assert set(rows) == {"AAPL", "MSFT", "JPM"}                 # every universe symbol, zero mentions too
    assert rows["AAPL"]["mentions"] == 2 and rows["MSFT"]["mentions"] == 2 and rows["JPM"]["mentions"] == 1
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
    vader = SentimentIntensityAnalyzer()
    post = "$AAPL is a great buy, love it\nAAPL AAPL $aapl again"
    both = "AAPL and MSFT both fine I guess"
    expected = (vader.polarity_scores(post)["compound"] + vader.polarity_scores(both)["compound"]) / 2
    assert rows["AAPL"]["compound_mean"] == pytest.approx(expected)
    assert vader.polarity_scores(post)["compound"] > 0.5 and rows["AAPL"]["positive"] >= 1
    assert rows["JPM"]["negative"] == 1 and rows["JPM"]["compound_mean"] < -0.5
    col = conn.execute("SELECT * FROM reddit_collections").fetchone()
    assert col["collected_at"] == "2026-11-24T16:00:00+00:00" and col["session"] == "2026-11-24"
    assert col["subreddits"] == "stocks investing"
    # the real client asked for a token with the app's credentials, then the listings
    paths = [p for _, p, _ in reddit.requests]
    assert paths[0] == "/api/v1/access_token" and "/r/stocks/new" in paths and "/r/investing/comments/" in paths


def test_ticker_extraction_blacklist_and_once_per_text(monkeypatch):
    universe = ["AAPL", "ALL", "DD", "BRK.B", "F"]
    assert rs.extract_tickers("ALL in on DD, YOLO. F", universe) == {"F"}            # blacklisted bare words
    assert rs.extract_tickers("$ALL and $dd are tickers", universe) == {"ALL", "DD"}   # a cashtag is explicit
    assert rs.extract_tickers("BRK.B vs AAPLX vs xAAPL", universe) == {"BRK.B"}
    monkeypatch.setattr(C, "REDDIT_TICKER_BLACKLIST", "F")
    assert rs.extract_tickers("ALL F", universe) == {"ALL"}                          # tunable
    rows = {r["symbol"]: r for r in rs.score_items(["AAPL AAPL $AAPL aapl", "nothing"], universe)}
    assert rows["AAPL"]["mentions"] == 1 and rows["ALL"]["mentions"] == 0 and rows["ALL"]["compound_mean"] is None


def test_a_rerun_in_the_same_session_replaces_it_and_the_next_session_is_new(reddit):
    reddit.add_post("stocks", "AAPL up", _ago(1))
    conn = state_db.connect()
    rs.collect(conn=conn, now=NOW)
    reddit.add_post("stocks", "AAPL again, and MSFT", NOW.timestamp() + 60)
    rs.collect(conn=conn, now=NOW + timedelta(minutes=5))
    assert conn.execute("SELECT COUNT(*) FROM reddit_collections").fetchone()[0] == 1
    assert conn.execute("SELECT COUNT(*) FROM reddit_sentiment").fetchone()[0] == 3
    rows = _rows(conn)
    assert rows["AAPL"]["mentions"] == 2 and rows["MSFT"]["mentions"] == 1
    # after the close (16:00 New York = 21:00 UTC) a collection belongs to the next session
    after_close = datetime(2026, 11, 24, 21, 30, tzinfo=timezone.utc)
    rs.collect(conn=conn, now=after_close)
    sessions = [r[0] for r in conn.execute("SELECT session FROM reddit_collections ORDER BY session")]
    assert sessions == ["2026-11-24", "2026-11-25"]


def test_wrong_credentials_give_one_line_and_write_nothing(reddit, trading_home):
    credential_manager.CredentialManager().store_credentials(
        "reddit", {"client_id": CLIENT_ID, "client_secret": "wrong", "user_agent": USER_AGENT})
    reddit.add_post("stocks", "AAPL", _ago(1))
    with pytest.raises(rs.SentimentError, match="HTTP 401.*reddit_sentiment.py setup"):
        rs.collect(now=NOW)
    conn = state_db.connect()
    assert sentiment_store.collections(conn).empty


def test_a_timeout_gives_one_line_and_keeps_the_earlier_record_whole(reddit):
    reddit.add_post("stocks", "AAPL", _ago(1))
    conn = state_db.connect()
    rs.collect(conn=conn, now=NOW)
    before = sentiment_store.read(conn)
    reddit.add_post("stocks", "MSFT", _ago(0.5))
    reddit.delay_s = 1.0                    # > REDDIT_TIMEOUT_S 0.3; PRAW retries twice, then gives up
    with pytest.raises(rs.SentimentError, match="did not answer at r/stocks.*REDDIT_TIMEOUT_S"):
        rs.collect(conn=conn, now=NOW + timedelta(minutes=10))
    pd.testing.assert_frame_equal(sentiment_store.read(conn), before)      # the rerun replaced nothing
    assert len(sentiment_store.collections(conn)) == 1 and int(before["mentions"].sum()) == 1


@pytest.mark.parametrize("status, words", [(429, "rate limit"), (404, "does not exist")])
def test_rate_limit_and_unknown_subreddit_name_the_fix(reddit, status, words):
    reddit.status = status
    with pytest.raises(rs.SentimentError, match=words):
        rs.collect(now=NOW)


def test_the_command_line_one_line_errors_and_success(reddit, trading_home):
    env = {"TRADING_SET_REDDIT_OAUTH_URL": reddit.url, "TRADING_SET_REDDIT_URL": reddit.url,
           "TRADING_SET_REDDIT_SUBREDDITS": "stocks", "TRADING_CONFIG_DIR": os.environ["TRADING_CONFIG_DIR"]}
    reddit.add_post("stocks", "$MSFT strong buy", _ago(1))
    done = run_entry(["reddit_sentiment.py", "collect"], trading_home, env)
    assert done.returncode == 0, done.stderr
    assert "recorded for session 2026-11-24" in done.stdout and "1 of 3 symbols" in done.stdout
    shown = io.StringIO()                                  # `show`, in-process (a third process costs ~8 s)
    assert rs.show(out=shown) == 0
    assert "MSFT" in shown.getvalue() and "mentions     1" in shown.getvalue() and "1 collection(s)" in shown.getvalue()
    (trading_home / ".reddit_config.enc").unlink()
    failed = run_entry(["reddit_sentiment.py", "collect"], trading_home, env)
    assert failed.returncode == 1
    lines = failed.stderr.strip().splitlines()
    assert len(lines) == 1 and "no Reddit credentials" in lines[0] and "reddit_sentiment.py setup" in lines[0]
    assert "Traceback" not in failed.stderr


# ----------------------------------------------------------------------------- features
def _features(dates, symbols=("AAPL", "MSFT")):
    return pd.DataFrame([{"Date": pd.Timestamp(d), "Symbol": s, "log_return": 0.0} for s in symbols for d in dates])


def _record(conn, session, collected_at, mentions: dict, compound: dict):
    sentiment_store.record(conn, {"session": session, "collected_at": collected_at, "subreddits": "stocks",
                                  "lookback_hours": 24, "posts": 1, "comments": 1},
                           [{"symbol": s, "mentions": m, "compound_mean": compound.get(s), "positive": 0,
                             "negative": 0} for s, m in mentions.items()])


def test_features_are_point_in_time_and_neutral_without_a_collection(monkeypatch):
    monkeypatch.setattr(C, "REDDIT_MENTION_Z_MIN", 2)
    conn = state_db.connect()
    state_db.ensure_schema(conn, sentiment_store.SCHEMA)
    days = pd.bdate_range("2026-11-02", periods=6)
    for i, d in enumerate(days[:5]):
        _record(conn, d.strftime("%Y-%m-%d"), f"{d.date()}T19:30:00+00:00", {"AAPL": 1 + i % 2, "MSFT": 0},
                {"AAPL": 0.1 * i})
    out = sentiment_store.sentiment_features(_features(days), sentiment_store.read(conn))
    aapl = out[out["Symbol"] == "AAPL"].set_index("Date")
    z, comp = C.SENTIMENT_COLUMNS
    assert list(aapl[comp].round(6)) == [0.0, 0.1, 0.2, 0.3, 0.4, 0.0]     # day 6: no collection -> neutral
    assert list(aapl[z][:2]) == [0.0, 0.0]                             # too few earlier collections
    assert aapl[z].iloc[2] < 0 < aapl[z].iloc[3]                        # 1 mention after 1,2 ; 2 after 1,2,1
    msft = out[out["Symbol"] == "MSFT"]
    assert (msft[comp] == 0).all() and (msft[z] == 0).all()
    # a later collection never changes an earlier row (point in time)
    _record(conn, days[5].strftime("%Y-%m-%d"), f"{days[5].date()}T19:30:00+00:00", {"AAPL": 50}, {"AAPL": -0.9})
    again = sentiment_store.sentiment_features(_features(days), sentiment_store.read(conn))
    pd.testing.assert_frame_equal(again.iloc[:5], out.iloc[:5])
    assert again[again["Symbol"] == "AAPL"][comp].iloc[5] == pytest.approx(-0.9)


def test_session_of_a_collection_is_the_first_close_after_it():
    ny = FIXED_NOW.tzinfo
    assert str(sentiment_store.session_of(datetime(2026, 11, 24, 15, 30, tzinfo=ny)).date()) == "2026-11-24"
    assert str(sentiment_store.session_of(datetime(2026, 11, 24, 16, 0, tzinfo=ny)).date()) == "2026-11-25"
    # Thanksgiving 2026-11-26 is a holiday; the 27th closes at 13:00
    assert str(sentiment_store.session_of(datetime(2026, 11, 25, 18, 0, tzinfo=ny)).date()) == "2026-11-27"
    assert str(sentiment_store.session_of(datetime(2026, 11, 27, 13, 30, tzinfo=ny)).date()) == "2026-11-30"


def test_the_model_sees_sentiment_only_when_enabled(monkeypatch, trading_home):
    path = trading_home / "processed.csv"
    base = data_collection.RAW_COLUMNS + data_collection.FEATURE_COLUMNS
    frame = pd.DataFrame([{c: 1.0 for c in base} | {"Date": "2026-11-23", "Symbol": "AAPL"}])
    frame[base].to_csv(path, index=False)
    conn = state_db.connect()
    state_db.ensure_schema(conn, sentiment_store.SCHEMA)
    _record(conn, "2026-11-23", "2026-11-23T19:30:00+00:00", {"AAPL": 3}, {"AAPL": 0.5})
    conn.close()
    assert C.REDDIT_SENTIMENT is False                                   # off by default
    off = data_collection.load_processed(path)
    assert not set(C.SENTIMENT_COLUMNS) & set(off.columns)
    assert data_collection.feature_columns() == list(C.FEATURE_COLUMNS) == data_collection.frame_columns(off)
    fingerprint_off = walk_forward_runs.config_fingerprint(walk_forward_runs.model_configuration(
        {"window": 5, "units": 2, "dense_units": 2, "layers": 1, "epochs": 1, "patience": 1}))
    monkeypatch.setattr(C, "REDDIT_SENTIMENT", True)
    on = data_collection.load_processed(path)
    assert on[C.SENTIMENT_COLUMNS[1]].iloc[0] == pytest.approx(0.5)
    assert data_collection.frame_columns(on) == list(C.FEATURE_COLUMNS) + list(C.SENTIMENT_COLUMNS)
    fingerprint_on = walk_forward_runs.config_fingerprint(walk_forward_runs.model_configuration(
        {"window": 5, "units": 2, "dense_units": 2, "layers": 1, "epochs": 1, "patience": 1}))
    assert fingerprint_on != fingerprint_off                            # another configuration: a trial of its own
    assert "REDDIT_SENTIMENT" in C.STRATEGY_TUNABLES


def test_the_daily_job_exists_only_when_asked_for(monkeypatch):
    names = lambda: [j.name for j in scheduler.JOBS]                     # noqa: E731
    assert scheduler.REDDIT_JOB not in names()
    monkeypatch.setattr(C, "REDDIT_COLLECT", True)
    assert scheduler.REDDIT_JOB in names()
    monkeypatch.setattr(C, "REDDIT_COLLECT", False)
    monkeypatch.setattr(C, "REDDIT_SENTIMENT", True)
    job = [j for j in scheduler.JOBS if j.name == scheduler.REDDIT_JOB][0]
    assert job.command == ("python", "reddit_sentiment.py", "collect") and job.anchor == "close"
    assert job.offset_min == -C.REDDIT_COLLECT_BEFORE_CLOSE_MIN
    due = {d.job.name: d.due for d in scheduler.evaluate(datetime(2026, 11, 24, 15, 35, tzinfo=FIXED_NOW.tzinfo))}
    assert due[scheduler.REDDIT_JOB] is True


def test_missing_tables_read_as_nothing(tmp_path):
    conn = sqlite3.connect(tmp_path / "x.db")
    assert sentiment_store.read(conn).empty and sentiment_store.collections(conn).empty
    out = sentiment_store.sentiment_features(_features(["2026-11-23"]), sentiment_store.read(conn))
    assert np.all(out[list(C.SENTIMENT_COLUMNS)].to_numpy() == 0)


# ----------------------------------------------------------------------------- the walk-forward comparison
@pytest.mark.timeout(1800)
def test_compare_sentiment_runs_both_arms_on_the_recorded_period_as_two_trials(home, ray_local, capsys):
    import walk_forward as wf
    (home / "selected_stocks.txt").write_text("AAPL\nMSFT\nJPM\n")
    every = sorted(pd.unique(data_collection.load_processed()["Date"]))
    sessions = every[-C.HOLDOUT_SESSIONS - 40:-C.HOLDOUT_SESSIONS]            # recorded before the sealed holdout
    conn = state_db.connect()
    state_db.ensure_schema(conn, sentiment_store.SCHEMA)
    rng = np.random.default_rng(7)
    for d in sessions:
        day = pd.Timestamp(d)
        _record(conn, day.strftime("%Y-%m-%d"), f"{day.date()}T19:30:00+00:00",
                {s: int(rng.integers(0, 9)) for s in ("AAPL", "MSFT", "JPM")},
                {s: float(rng.uniform(-1, 1)) for s in ("AAPL", "MSFT", "JPM")})
    out = io.StringIO()
    result = wf.compare_sentiment(profile="tiny", workers=2, charts=False, out=out)
    assert C.REDDIT_SENTIMENT is False                                       # restored after the comparison
    first = pd.Timestamp(sessions[0]).strftime("%Y-%m-%d")
    assert result["first_recorded_session"] == first and result["recorded_sessions"] == 40
    for arm, columns in (("without", list(C.FEATURE_COLUMNS)),
                         ("with", list(C.FEATURE_COLUMNS) + list(C.SENTIMENT_COLUMNS))):
        report = result[arm]
        assert report["start"] == first                                      # out of sample = the recorded period
        assert report["inputs"]["model_config"]["feature_columns"] == columns
        assert report["inputs"]["model_config"]["tunables"]["REDDIT_SENTIMENT"] is (arm == "with")
    text = out.getvalue()
    assert "without sentiment: skill vs no change" in text and "with    sentiment: skill vs no change" in text
    rows = conn.execute("SELECT config_fingerprint FROM walk_forward_runs").fetchall()
    fingerprints = {r[0] for r in rows}
    assert len(rows) == 2 and len(fingerprints) == 2                         # two recorded runs, two configurations
    assert walk_forward_runs.count_trials(["AAPL", "JPM", "MSFT"], "0" * 64, conn=conn) == 3
    assert result["with"]["overall"]["n_trials"] == 2                         # the second arm counts the first


def test_setup_stores_the_reddit_slot_of_the_credential_manager(trading_home, universe_file, monkeypatch, capsys):
    monkeypatch.setattr("sys.stdin", io.StringIO(f"client_id={CLIENT_ID}\nclient_secret={CLIENT_SECRET}\n"
                                                 f"user_agent={USER_AGENT}\n"))
    assert rs.main(["setup"]) == 0
    path = trading_home / ".reddit_config.enc"
    assert path.exists() and (path.stat().st_mode & 0o777) == 0o600
    assert rs.load_credentials()["client_secret"] == CLIENT_SECRET
    assert CLIENT_SECRET not in path.read_text()                            # encrypted at rest
    monkeypatch.setattr("sys.stdin", io.StringIO("client_idd=x\n"))               # a typo: nothing stored
    assert rs.main(["setup"]) == 1 and "reddit has no field client_idd" in capsys.readouterr().err
    assert rs.load_credentials()["client_id"] == CLIENT_ID


@pytest.mark.timeout(900)
def test_a_model_trained_with_sentiment_lists_it_and_predicts_only_with_it(home, monkeypatch):
    """Training (model_training.train) and live inference (TradingModel.predict on load_processed)
    see the sentiment columns only when REDDIT_SENTIMENT is on; the model records them."""
    import model_management as mm
    import model_training
    conn = state_db.connect()
    state_db.ensure_schema(conn, sentiment_store.SCHEMA)
    last = sorted(pd.unique(data_collection.load_processed()["Date"]))[-30:]
    for i, d in enumerate(last):
        day = pd.Timestamp(d)
        _record(conn, day.strftime("%Y-%m-%d"), f"{day.date()}T19:30:00+00:00",
                {s: i % 4 for s in data_collection.load_universe()}, {"AAPL": 0.3})
    monkeypatch.setattr(C, "REDDIT_SENTIMENT", True)
    target = home / "sentiment_model.h5"
    done = model_training.train(model_training.TrainConfig(profile="tiny", epochs=2, force=True, model_file=target,
                                                           verbose=0))
    assert done["metadata"]["feature_columns"] == list(C.FEATURE_COLUMNS) + list(C.SENTIMENT_COLUMNS)
    model = mm.load_model(target)
    predictions = model.predict(data_collection.load_processed(), last_only=True)
    assert len(predictions) == len(data_collection.load_universe())
    monkeypatch.setattr(C, "REDDIT_SENTIMENT", False)
    with pytest.raises(mm.ModelInputError, match="reddit_mention_z"):
        model.predict(data_collection.load_processed(), last_only=True)
