"""Reddit sentiment, recorded forward once a day: ``python reddit_sentiment.py collect``.

Reads, with PRAW (the real client, a read-only "script" app, credentials from
``.reddit_config.enc``: ``python reddit_sentiment.py setup``), the newest posts
(``REDDIT_POSTS_PER_SUBREDDIT``) and comments (``REDDIT_COMMENTS_PER_SUBREDDIT``) of each subreddit
of ``REDDIT_SUBREDDITS`` created in the last ``REDDIT_LOOKBACK_HOURS``; finds the universe's tickers
in each text (``$AAPL`` anywhere, case-insensitive; a bare ``AAPL`` in upper case unless it is a
word of ``REDDIT_TICKER_BLACKLIST``), counts a symbol once per post or comment, scores each text
that names a symbol with VADER (``vaderSentiment``, its lexicon ships in the wheel: no download),
and records per symbol the mentions, the mean compound score and the positive / negative counts in
the state database (``sentiment_store.py``), stamped with the collection time (UTC) and its session.

Reddit's history cannot be back-filled: the API lists only the newest ~1000 items of a listing
and Pushshift is no longer public, so the record starts the first day this runs. A second
``collect`` in the same session replaces that session's record whole (one transaction).

Errors (no credentials, HTTP 401, a timeout, the rate limit, an unknown subreddit) print one line
naming the fix, exit 1 and record nothing. Exit 0: recorded; 1: failed; 2: bad usage.

    python reddit_sentiment.py collect      # what the scheduler runs (REDDIT_COLLECT or REDDIT_SENTIMENT)
    python reddit_sentiment.py setup        # store client_id, client_secret, user_agent (encrypted)
    python reddit_sentiment.py show         # the latest collection, per symbol
"""
from __future__ import annotations

import argparse
import logging
import re
import sys
from datetime import datetime, timedelta, timezone

import praw
import prawcore
from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

import clock
import config
import constants as C
import credential_manager
import data_collection
import sentiment_store
import state_db
from errors import UserFacingError, command_failed, install_excepthook
from logging_setup import setup_logging

log = logging.getLogger("sentiment")

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
SETUP = "python reddit_sentiment.py setup"
_CASHTAG = re.compile(r"\$([A-Za-z]{1,5}(?:\.[A-Za-z])?)\b")
_BARE = re.compile(r"(?<![\w$])([A-Z]{1,5}(?:\.[A-Z])?)(?![\w])")


class SentimentError(UserFacingError):
    """The collection failed; the message names the fix. Nothing was recorded."""


# --------------------------------------------------------------------------- text
def blacklist() -> frozenset[str]:
    return frozenset(C.REDDIT_TICKER_BLACKLIST.upper().split())


def subreddits() -> list[str]:
    return [s.strip().removeprefix("r/") for s in C.REDDIT_SUBREDDITS.split() if s.strip()]


def extract_tickers(text: str, universe) -> set[str]:
    """The universe's symbols named in ``text``, each once: ``$AAPL`` (any case) always, a bare
    upper-case ``AAPL`` unless it is a blacklisted word."""
    wanted = {str(s).upper() for s in universe}
    found = {m.upper() for m in _CASHTAG.findall(text or "")}
    banned = blacklist()
    found |= {m for m in _BARE.findall(text or "") if m not in banned}
    return found & wanted


def score_items(items, universe, analyzer=None) -> list[dict]:
    """Per universe symbol: mentions, mean compound, positive, negative, from ``items`` (texts)."""
    analyzer = analyzer or SentimentIntensityAnalyzer()
    threshold = C.REDDIT_VADER_THRESHOLD
    acc = {s: [] for s in sorted({str(u).upper() for u in universe})}
    for text in items:
        named = extract_tickers(text, acc)
        if not named:
            continue
        compound = float(analyzer.polarity_scores(text)["compound"])
        for symbol in named:
            acc[symbol].append(compound)
    return [{"symbol": s, "mentions": len(v), "compound_mean": (sum(v) / len(v)) if v else None,
             "positive": sum(1 for x in v if x >= threshold), "negative": sum(1 for x in v if x <= -threshold)}
            for s, v in acc.items()]


# --------------------------------------------------------------------------- Reddit
class TimeoutRequestor(prawcore.Requestor):
    """prawcore's requestor with ``REDDIT_TIMEOUT_S`` on every request. PRAW 8 never passes its own
    ``timeout`` setting on: prawcore's ``Session.request`` sends ``prawcore.const.TIMEOUT`` (16 s,
    or ``$PRAWCORE_TIMEOUT`` read at import) with each API call, which wins over the requestor's."""

    def request(self, *args, timeout=None, **kwargs):
        return super().request(*args, timeout=self.timeout, **kwargs)


def reddit_client(credentials: dict) -> praw.Reddit:
    """The PRAW client, read only (application-only OAuth), for ``REDDIT_OAUTH_URL`` / ``REDDIT_URL``."""
    reddit = praw.Reddit(client_id=credentials["client_id"], client_secret=credentials["client_secret"],
                         user_agent=credentials["user_agent"], oauth_url=C.REDDIT_OAUTH_URL,
                         reddit_url=C.REDDIT_URL, check_for_updates=False, requestor_class=TimeoutRequestor,
                         requestor_kwargs={"timeout": float(C.REDDIT_TIMEOUT_S)})
    reddit.read_only = True
    return reddit


def _fault(exc: Exception, where: str) -> SentimentError:
    """One line naming the fix for what PRAW / prawcore raised."""
    status = getattr(getattr(exc, "response", None), "status_code", None)
    if isinstance(exc, prawcore.OAuthException) or (status == 401):
        return SentimentError(f"Reddit refused the credentials in .reddit_config.enc (HTTP 401 at {where}): "
                              f"check client_id and client_secret of your 'script' app at "
                              f"https://www.reddit.com/prefs/apps and store them again: {SETUP}")
    if isinstance(exc, prawcore.TooManyRequests):
        return SentimentError(f"Reddit's rate limit was hit (HTTP 429 at {where}; about 100 requests a minute "
                              f"per client id): run again later, or lower REDDIT_POSTS_PER_SUBREDDIT, "
                              f"REDDIT_COMMENTS_PER_SUBREDDIT or the number of REDDIT_SUBREDDITS")
    if isinstance(exc, (prawcore.NotFound, prawcore.Redirect)):
        return SentimentError(f"{where} does not exist on Reddit: fix REDDIT_SUBREDDITS in settings.toml")
    if isinstance(exc, prawcore.Forbidden):
        return SentimentError(f"Reddit refused {where} (HTTP 403: private, quarantined or banned): remove it "
                              f"from REDDIT_SUBREDDITS in settings.toml")
    if isinstance(exc, prawcore.RequestException):
        cause = type(getattr(exc, "original_exception", exc)).__name__
        return SentimentError(f"Reddit did not answer at {where} ({cause}, after PRAW's retries, "
                              f"REDDIT_TIMEOUT_S={C.REDDIT_TIMEOUT_S:g} s): check the network, or raise "
                              f"REDDIT_TIMEOUT_S; run again later")
    if isinstance(exc, prawcore.ServerError):
        return SentimentError(f"Reddit's servers failed (HTTP {status} at {where}): run again later")
    return SentimentError(f"Reddit answered {where} with {type(exc).__name__} (HTTP {status}): run again later")


def read_texts(reddit: praw.Reddit, now: datetime) -> tuple[list[str], int, int]:
    """(texts, posts, comments) of every subreddit created in the lookback before ``now``; each
    post or comment once (by id), whatever the listings it came from."""
    since = (now - timedelta(hours=float(C.REDDIT_LOOKBACK_HOURS))).timestamp()
    until = now.timestamp()
    seen: set[str] = set()
    texts: list[str] = []
    posts = comments = 0
    for name in subreddits():
        where = f"r/{name}"
        try:
            sub = reddit.subreddit(name)
            for post in sub.new(limit=int(C.REDDIT_POSTS_PER_SUBREDDIT)):
                if post.id in seen or not since < float(post.created_utc) <= until:
                    continue
                seen.add(post.id)
                texts.append(f"{post.title or ''}\n{post.selftext or ''}")
                posts += 1
            for comment in sub.comments(limit=int(C.REDDIT_COMMENTS_PER_SUBREDDIT)):
                if comment.id in seen or not since < float(comment.created_utc) <= until:
                    continue
                seen.add(comment.id)
                texts.append(comment.body or "")
                comments += 1
        except (prawcore.PrawcoreException, praw.exceptions.PRAWException) as exc:
            raise _fault(exc, where) from None
    return texts, posts, comments


def load_credentials(manager=None) -> dict:
    manager = manager or credential_manager.CredentialManager()
    creds = manager.load_credentials(C.REDDIT_CREDENTIAL_SERVICE)
    if creds is None:
        raise SentimentError(f"no Reddit credentials ({manager.path_for(C.REDDIT_CREDENTIAL_SERVICE).name} "
                             f"not found in {manager.home}): create a 'script' app at "
                             f"https://www.reddit.com/prefs/apps, then run {SETUP}")
    missing = credential_manager.missing_fields(C.REDDIT_CREDENTIAL_SERVICE, creds)
    if missing:
        raise SentimentError(f".reddit_config.enc lacks {', '.join(missing)}: run {SETUP}")
    return creds


def collect(conn=None, manager=None, now: datetime | None = None) -> dict:
    """Read Reddit, score, record one collection (replacing this session's earlier one). Returns
    the collection (session, collected_at, posts, comments, mentioned symbols). Nothing is written
    unless everything was read."""
    now = (now or clock.now()).astimezone(timezone.utc)
    universe = data_collection.load_universe()
    creds = load_credentials(manager)
    if not subreddits():
        raise SentimentError("REDDIT_SUBREDDITS is empty: name at least one subreddit in settings.toml")
    try:
        reddit = reddit_client(creds)
    except (prawcore.PrawcoreException, praw.exceptions.PRAWException) as exc:
        raise SentimentError(f"the Reddit client cannot start ({type(exc).__name__}): check "
                             f".reddit_config.enc ({SETUP})") from None
    texts, posts, comments = read_texts(reddit, now)
    rows = score_items(texts, universe)
    session = sentiment_store.session_of(now)
    collection = {"session": session.strftime("%Y-%m-%d"), "collected_at": now.isoformat(timespec="seconds"),
                  "subreddits": " ".join(subreddits()), "lookback_hours": float(C.REDDIT_LOOKBACK_HOURS),
                  "posts": posts, "comments": comments}
    with state_db.opened(conn, sentiment_store.SCHEMA) as c:
        sentiment_store.record(c, collection, rows)
    collection["mentioned"] = sum(1 for r in rows if r["mentions"])
    collection["symbols"] = len(rows)
    log.info("Reddit sentiment recorded for session %s (collected %s): %d posts, %d comments, %d of %d symbols "
             "mentioned", collection["session"], collection["collected_at"], posts, comments,
             collection["mentioned"], len(rows))
    return collection


def show(conn=None, out=None) -> int:
    """Print the latest collection (reads only: creates nothing)."""
    out = out or sys.stdout
    c = conn if conn is not None else state_db.connect_readonly()
    try:
        cols, rows = sentiment_store.collections(c), sentiment_store.read(c)
    finally:
        if conn is None and c is not None:
            c.close()
    if cols.empty:
        print("no Reddit sentiment recorded yet: run python reddit_sentiment.py collect (history cannot be "
              "back-filled; the record starts the first day it runs)", file=out)
        return EXIT_OK
    last = cols.iloc[-1]
    print(f"{len(cols)} collection(s), {cols['session'].iloc[0]} .. {last['session']}; latest: session "
          f"{last['session']}, collected {last['collected_at']}, {last['posts']} posts, {last['comments']} "
          f"comments from {last['subreddits']}", file=out)
    latest = rows[rows["session"] == last["session"]].sort_values("mentions", ascending=False, kind="mergesort")
    for r in latest.itertuples():
        mean = "n/a" if r.compound_mean is None or r.compound_mean != r.compound_mean else f"{r.compound_mean:+.3f}"
        print(f"  {r.symbol:<8} mentions {r.mentions:>5}  compound {mean:>7}  positive {r.positive:>4}  "
              f"negative {r.negative:>4}", file=out)
    return EXIT_OK


def main(argv=None) -> int:
    install_excepthook()
    parser = argparse.ArgumentParser(prog="reddit_sentiment.py",
                                     description="Reddit mentions and VADER sentiment of the universe, recorded "
                                                 "once a day (history cannot be back-filled).",
                                     epilog="Exit codes: 0 done; 1 failed (nothing recorded); 2 bad usage.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("collect", help="read Reddit now and record this session's sentiment")
    sub.add_parser("setup", help="store the Reddit app's client_id, client_secret, user_agent (encrypted)")
    sub.add_parser("show", help="the latest collection, per symbol")
    args = parser.parse_args(argv)
    if args.command == "setup":
        return credential_manager.main(["set", C.REDDIT_CREDENTIAL_SERVICE])
    if config.refuse_without_home():          # a mistyped TRADING_HOME: one line, nothing created
        return EXIT_USAGE
    try:
        setup_logging("trading", console=False)
    except (config.ConfigError, OSError) as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return EXIT_FAILED
    try:
        if args.command == "show":
            return show()
        done = collect()
    except Exception as exc:
        command_failed(log, "Reddit sentiment collection", exc)
        return EXIT_FAILED
    print(f"Reddit sentiment recorded for session {done['session']} (collected {done['collected_at']} UTC): "
          f"{done['posts']} posts, {done['comments']} comments, {done['mentioned']} of {done['symbols']} symbols "
          f"mentioned")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
