"""The recorded Reddit sentiment (tables ``reddit_collections`` and ``reddit_sentiment`` of the state
database) and the optional model inputs built from it, point in time.

* A collection (``reddit_sentiment.py collect``) is stamped with the UTC time it read Reddit
  (``collected_at``) and belongs to the session whose close is the first one after that time
  (``session_of``): a collection at 15:30 New York on a session day belongs to that day, one at
  17:00 to the next session. Reddit's history cannot be back-filled (Pushshift is gone; the API
  lists only the newest items), so the record starts the day the collector first runs.
* One row per universe symbol and collection (zero mentions included): mentions (a symbol counted
  once per post or comment), the mean VADER compound score of the texts that mention it, and how
  many of them were positive / negative. A second collection in the same session REPLACES the first
  one, whole, in one transaction (never two rows for a session, never half of one).
* ``sentiment_features`` joins the model inputs ``SENTIMENT_COLUMNS`` onto the feature rows: the row
  of session ``d`` sees only the collection of session ``d`` (made before ``d``'s close, so before
  any decision that uses row ``d``: the live cycle at the next open, the backtest's next-open fill).
  ``reddit_mention_z``: log(1 + mentions) against the symbol's ``REDDIT_MENTION_Z_WINDOW`` earlier
  collections (0 with fewer than ``REDDIT_MENTION_Z_MIN`` of them, or no spread), clipped to +-5;
  ``reddit_compound``: the mean compound score (0 when nothing mentioned the symbol). A session
  with no collection gets the neutral values 0 and 0.
"""
from __future__ import annotations

import sqlite3

import numpy as np
import pandas as pd

import constants as C
import market_calendar
import state_db

Z_CLIP = 5.0          # |reddit_mention_z| never exceeds this (one burst must not dominate the scaler)

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS reddit_collections (
    session TEXT PRIMARY KEY,          -- YYYY-MM-DD: the session whose close follows the collection
    collected_at TEXT NOT NULL,        -- UTC ISO time Reddit was read
    subreddits TEXT NOT NULL,          -- the subreddits read, separated by spaces
    lookback_hours REAL NOT NULL,      -- items created this long before collected_at counted
    posts INTEGER NOT NULL,            -- posts read inside the lookback
    comments INTEGER NOT NULL          -- comments read inside the lookback
)""",
    """CREATE TABLE IF NOT EXISTS reddit_sentiment (
    session TEXT NOT NULL REFERENCES reddit_collections(session) ON DELETE CASCADE,
    symbol TEXT NOT NULL,
    mentions INTEGER NOT NULL,         -- posts and comments naming the symbol (each counted once)
    compound_mean REAL,                -- mean VADER compound of those texts; NULL when none
    positive INTEGER NOT NULL,         -- of those, compound >= REDDIT_VADER_THRESHOLD
    negative INTEGER NOT NULL,         -- of those, compound <= -REDDIT_VADER_THRESHOLD
    PRIMARY KEY (session, symbol)
)""",
)


def session_of(collected_at) -> pd.Timestamp:
    """The session a collection made at ``collected_at`` (aware) belongs to: the first session whose
    close is after it."""
    return market_calendar.next_session(market_calendar.last_completed_session(collected_at))


def record(conn: sqlite3.Connection, collection: dict, rows: list[dict]) -> None:
    """Write one collection and its per-symbol rows in one transaction, replacing any earlier
    collection of the same session (all of it, or none of it)."""
    state_db.ensure_schema(conn, SCHEMA)
    with state_db.transaction(conn):
        conn.execute("DELETE FROM reddit_sentiment WHERE session = ?", (collection["session"],))
        conn.execute("DELETE FROM reddit_collections WHERE session = ?", (collection["session"],))
        conn.execute("INSERT INTO reddit_collections(session, collected_at, subreddits, lookback_hours, posts, "
                     "comments) VALUES(?, ?, ?, ?, ?, ?)",
                     (collection["session"], collection["collected_at"], collection["subreddits"],
                      float(collection["lookback_hours"]), int(collection["posts"]), int(collection["comments"])))
        conn.executemany("INSERT INTO reddit_sentiment(session, symbol, mentions, compound_mean, positive, negative) "
                         "VALUES(?, ?, ?, ?, ?, ?)",
                         [(collection["session"], r["symbol"], int(r["mentions"]), r["compound_mean"],
                           int(r["positive"]), int(r["negative"])) for r in rows])


def collections(conn: sqlite3.Connection | None) -> pd.DataFrame:
    """Every recorded collection, oldest first (an empty frame without a database or table)."""
    cols = ["session", "collected_at", "subreddits", "lookback_hours", "posts", "comments"]
    if conn is None or not _has_tables(conn):
        return pd.DataFrame(columns=cols)
    return pd.read_sql_query(f"SELECT {', '.join(cols)} FROM reddit_collections ORDER BY session", conn)


def read(conn: sqlite3.Connection | None) -> pd.DataFrame:
    """Every recorded per-symbol row with its collection time, oldest session first."""
    cols = ["session", "symbol", "mentions", "compound_mean", "positive", "negative", "collected_at"]
    if conn is None or not _has_tables(conn):
        return pd.DataFrame(columns=cols)
    return pd.read_sql_query(
        "SELECT s.session, s.symbol, s.mentions, s.compound_mean, s.positive, s.negative, c.collected_at "
        "FROM reddit_sentiment s JOIN reddit_collections c USING (session) ORDER BY s.session, s.symbol", conn)


def _has_tables(conn: sqlite3.Connection) -> bool:
    return conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'reddit_sentiment'").fetchone() \
        is not None


def _mention_z(mentions: np.ndarray) -> np.ndarray:
    """The z-score of log(1 + mentions) of each collection against the ones before it (one symbol,
    oldest first)."""
    x = np.log1p(np.asarray(mentions, float))
    out = np.zeros(len(x))
    for i in range(len(x)):
        past = x[max(0, i - C.REDDIT_MENTION_Z_WINDOW):i]
        if len(past) < C.REDDIT_MENTION_Z_MIN:
            continue
        sd = past.std(ddof=1)
        if sd > 1e-12:
            out[i] = np.clip((x[i] - past.mean()) / sd, -Z_CLIP, Z_CLIP)
    return out


def sentiment_features(features: pd.DataFrame, records: pd.DataFrame) -> pd.DataFrame:
    """``features`` (rows of Symbol and Date) with ``SENTIMENT_COLUMNS`` added from ``records``
    (``read``): the row of session d takes the collection of session d, neutral 0 without one."""
    out = features.copy()
    z_col, compound_col = C.SENTIMENT_COLUMNS
    if records is None or records.empty:
        out[z_col], out[compound_col] = 0.0, 0.0
        return out
    rec = records.sort_values(["symbol", "session"], kind="mergesort").reset_index(drop=True)
    rec["z"] = np.concatenate([_mention_z(g["mentions"].to_numpy()) for _, g in rec.groupby("symbol", sort=True)])
    rec["compound"] = pd.to_numeric(rec["compound_mean"], errors="coerce").fillna(0.0)
    joined = pd.DataFrame({"Symbol": rec["symbol"].astype(str), "Date": pd.to_datetime(rec["session"]),
                           z_col: rec["z"].astype(float), compound_col: rec["compound"].astype(float)})
    dates = pd.to_datetime(out["Date"]).dt.normalize()
    keyed = pd.DataFrame({"Symbol": out["Symbol"].astype(str).to_numpy(), "Date": dates.to_numpy()})
    merged = keyed.merge(joined, on=["Symbol", "Date"], how="left", validate="many_to_one")
    out[z_col] = merged[z_col].fillna(0.0).to_numpy()
    out[compound_col] = merged[compound_col].fillna(0.0).to_numpy()
    return out


def features_from_db(features: pd.DataFrame, path=None) -> pd.DataFrame:
    """``sentiment_features`` with the records of the state database (read only; none yet: neutral)."""
    conn = state_db.connect_readonly(path)
    try:
        return sentiment_features(features, read(conn))
    finally:
        if conn is not None:
            conn.close()
