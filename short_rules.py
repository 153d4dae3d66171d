"""The short-selling rules: when a new short may open, and when an open one must be bought in.

* ``hard_to_borrow(quote)`` -- THE hard-to-borrow rule (borrow rate above ``MAX_BORROW_RATE``
  or the broker's HTB flag), for new shorts and for forced buy-ins alike.
* ``ex_dividend_near(quote, as_of)`` -- the ex-dividend window (``EX_DIVIDEND_WINDOW_DAYS``).
* ``short_entry_problem(symbol, portfolio, do_not_short)`` -- why a new short is not allowed
  (shorts disabled, do-not-short list, ``BROKER RECALL``, ``HARD TO BORROW``, not shortable, no
  borrow data, ex-dividend window), used by the pre-trade check and by target generation.
* ``ShortRules`` -- the persistent part, mixed into ``risk_management.RiskManager``: the
  do-not-short list (table ``risk_do_not_short``) and forced buy-ins (table
  ``risk_forced_buyins``): ``forced_buyins(portfolio)`` closes shorts the broker recalled, that
  became hard to borrow or whose ex-dividend date is near, logging ``Forced buy-in triggered``;
  ``FORCED_BUYIN_LIMIT`` of them within ``FORCED_BUYIN_LOOKBACK_DAYS`` put the symbol on the
  do-not-short list.
"""
from __future__ import annotations

import logging
from datetime import date, timedelta

import clock
import config
import constants as C
import state_db
from broker_base import BUY_TO_COVER
from portfolio import EPS, Portfolio, finite, make_order, pct, price_of, to_date

log = logging.getLogger("risk")

SCHEMA = [
    """CREATE TABLE IF NOT EXISTS risk_forced_buyins (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        symbol TEXT NOT NULL,
        as_of TEXT NOT NULL,
        quantity INTEGER NOT NULL,
        reasons TEXT NOT NULL,
        created_at TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS risk_forced_buyins_symbol ON risk_forced_buyins(symbol, as_of)",
    """CREATE TABLE IF NOT EXISTS risk_do_not_short (
        symbol TEXT PRIMARY KEY,
        reason TEXT NOT NULL,
        source TEXT NOT NULL,
        added_at TEXT NOT NULL
    )""",
]



def ex_dividend_near(quote: dict | None, as_of) -> tuple[bool, date | None]:
    """Whether the quote's ex-dividend date is today or within EX_DIVIDEND_WINDOW_DAYS ahead."""
    ex_div = to_date((quote or {}).get("ex_dividend_date"))
    if ex_div is None:
        return False, None
    days = (ex_div - to_date(as_of)).days
    return 0 <= days <= C.EX_DIVIDEND_WINDOW_DAYS, ex_div


def hard_to_borrow(quote: dict | None) -> str | None:
    """THE hard-to-borrow rule, for new shorts and for forced buy-ins of open ones: why the
    quote's symbol is hard to borrow (a borrow rate above MAX_BORROW_RATE, or the broker's HTB
    flag), or None. The text names the borrow rate; callers prefix ``HARD TO BORROW: <symbol>``."""
    quote = quote or {}
    rate = quote.get("borrow_rate")
    if finite(rate) and float(rate) > C.MAX_BORROW_RATE + EPS:
        return (f"borrow rate {pct(float(rate))} is above the limit {pct(C.MAX_BORROW_RATE)} "
                f"(MAX_BORROW_RATE)")
    if quote.get("hard_to_borrow") is True:
        rate_text = pct(float(rate)) if finite(rate) else "unknown"
        return f"flagged hard to borrow by the broker (borrow rate {rate_text})"
    return None


def short_entry_problem(symbol: str, portfolio: Portfolio, do_not_short=()) -> str | None:
    """Why a new short in ``symbol`` is not allowed, or None when it is. Shared by the pre-trade
    check and target generation."""
    if not C.ALLOW_SHORTS:
        return "shorts are disabled (ALLOW_SHORTS=False)"
    if symbol in do_not_short:
        return (f"{symbol} is on the do-not-short list "
                f"(remove with: python risk_management.py do-not-short remove {symbol})")
    if symbol in portfolio.recalled:
        return f"BROKER RECALL: the broker recalled borrowed shares of {symbol}"
    quote = portfolio.quotes.get(symbol) or {}
    htb = hard_to_borrow(quote)
    if htb:
        return f"HARD TO BORROW: {symbol} {htb}"
    rate = quote.get("borrow_rate")
    if quote.get("shortable") is False:
        return f"{symbol} is not shortable at the broker"
    if C.REQUIRE_BORROW_DATA and not finite(rate) and quote.get("hard_to_borrow") is None \
            and quote.get("shortable") is None:
        return (f"no borrow data for {symbol} (borrow rate, shortable and hard-to-borrow all "
                f"unknown; REQUIRE_BORROW_DATA=True)")
    near, ex_div = ex_dividend_near(quote, portfolio.as_of)
    if near:
        return (f"{symbol} ex-dividend date {ex_div} is within {C.EX_DIVIDEND_WINDOW_DAYS} days of "
                f"{to_date(portfolio.as_of)} (EX_DIVIDEND_WINDOW_DAYS)")
    return None


class ShortRules:
    """The do-not-short list and forced buy-ins. The host class provides ``conn`` (a state-DB
    connection with ``SCHEMA`` applied) and ``_audit_event(action, status, details, required)``."""

    # ------------------------------------------------------------------ do-not-short list
    def do_not_short(self) -> dict[str, dict]:
        """The do-not-short list: {symbol: {"reason", "source", "added_at"}}."""
        rows = self.conn.execute(
            "SELECT symbol, reason, source, added_at FROM risk_do_not_short ORDER BY symbol").fetchall()
        return {r["symbol"]: {"reason": r["reason"], "source": r["source"], "added_at": r["added_at"]}
                for r in rows}

    def add_do_not_short(self, symbol: str, reason: str, source: str = "manual") -> bool:
        """Put ``symbol`` on the do-not-short list (audited; a manual add only if the audit record
        is written). False when it was already there."""
        symbol = symbol.strip().upper()
        if symbol in self.do_not_short():
            return False
        details = {"symbol": symbol, "reason": reason, "source": source,
                   "by": config.operator() if source == "manual" else "system"}
        if source == "manual":
            self._audit_event("do_not_short", "added", details, required=True)
        with state_db.transaction(self.conn):
            added = self.conn.execute(
                "INSERT OR IGNORE INTO risk_do_not_short(symbol, reason, source, added_at) "
                "VALUES(?, ?, ?, ?)", (symbol, reason, source, state_db.utcnow())).rowcount == 1
        if added:
            if source != "manual":
                self._audit_event("do_not_short", "added", details)
            log.warning("%s added to the do-not-short list (%s): %s", symbol, source, reason)
        return added

    def remove_do_not_short(self, symbol: str, reason: str = "") -> bool:
        """Take ``symbol`` off the do-not-short list (audited first). False when it was not there."""
        symbol = symbol.strip().upper()
        if symbol not in self.do_not_short():
            return False
        self._audit_event("do_not_short", "removed", {"symbol": symbol, "reason": reason, "by": config.operator()},
                          required=True)
        with state_db.transaction(self.conn):
            self.conn.execute("DELETE FROM risk_do_not_short WHERE symbol = ?", (symbol,))
        log.warning("%s removed from the do-not-short list: %s", symbol, reason)
        return True

    # ------------------------------------------------------------------ forced buy-ins
    def forced_buyins(self, portfolio: Portfolio) -> list[dict]:
        """BUY_TO_COVER orders for every short that must be closed now: broker recall, hard to
        borrow (borrow rate above MAX_BORROW_RATE or flagged HTB), or ex-dividend date within
        EX_DIVIDEND_WINDOW_DAYS. Each is logged, audited and recorded (once per symbol and day);
        FORCED_BUYIN_LIMIT buy-ins within FORCED_BUYIN_LOOKBACK_DAYS put the symbol on the
        do-not-short list."""
        orders = []
        as_of = to_date(portfolio.as_of) or clock.today()
        for symbol in sorted(portfolio.positions):
            qty = int(portfolio.positions[symbol])
            if qty >= 0:
                continue
            quote = portfolio.quotes.get(symbol) or {}
            reasons = []
            if symbol in portfolio.recalled:
                log.warning("BROKER RECALL: broker recalled the borrowed shares of %s (short %d)",
                            symbol, -qty)
                reasons.append("broker recall")
            htb = hard_to_borrow(quote)
            if htb:
                log.warning("HARD TO BORROW: %s %s", symbol, htb)
                reasons.append(f"hard to borrow: {htb}")
            near, ex_div = ex_dividend_near(quote, as_of)
            if near:
                log.warning("Ex-dividend date of %s is %s, within %d days of %s (EX_DIVIDEND_WINDOW_DAYS)",
                            symbol, ex_div, C.EX_DIVIDEND_WINDOW_DAYS, as_of)
                reasons.append(f"ex-dividend {ex_div} within {C.EX_DIVIDEND_WINDOW_DAYS} days")
            if not reasons:
                continue
            price = price_of(portfolio, symbol)
            reason_text = "; ".join(reasons)
            order = make_order(symbol, BUY_TO_COVER, -qty, price if price is not None else 0.0,
                               reason=f"forced buy-in: {reason_text}")
            orders.append(order)
            log.warning("Forced buy-in triggered: %s reason %s; BUY_TO_COVER %d", symbol, reason_text, -qty)
            self._record_buyin(symbol, as_of, -qty, reasons, price)
        return orders

    def _record_buyin(self, symbol: str, as_of: date, quantity: int, reasons: list[str], price) -> None:
        conn = self.conn
        since = (as_of - timedelta(days=C.FORCED_BUYIN_LOOKBACK_DAYS)).isoformat()
        with state_db.transaction(conn):
            already = conn.execute("SELECT 1 FROM risk_forced_buyins WHERE symbol = ? AND as_of = ?",
                                   (symbol, as_of.isoformat())).fetchone()
            if not already:
                conn.execute("INSERT INTO risk_forced_buyins(symbol, as_of, quantity, reasons, created_at) "
                             "VALUES(?, ?, ?, ?, ?)",
                             (symbol, as_of.isoformat(), quantity, "; ".join(reasons), state_db.utcnow()))
            count = conn.execute("SELECT COUNT(*) FROM risk_forced_buyins WHERE symbol = ? AND as_of > ? "
                                 "AND as_of <= ?", (symbol, since, as_of.isoformat())).fetchone()[0]
        if already:
            log.info("Forced buy-in of %s already recorded for %s (order repeated, not counted again)",
                     symbol, as_of)
            return
        self._audit_event("forced_buyin", "triggered",
                          {"symbol": symbol, "quantity": quantity, "reasons": reasons, "price": price,
                           "as_of": as_of.isoformat(), "count_in_lookback": count})
        if count >= C.FORCED_BUYIN_LIMIT:
            self.add_do_not_short(symbol, f"{count} forced buy-ins within {C.FORCED_BUYIN_LOOKBACK_DAYS} days "
                                          f"(FORCED_BUYIN_LIMIT {C.FORCED_BUYIN_LIMIT})", source="auto")

    def recent_forced_buyins(self, limit: int = 20) -> list[dict]:
        rows = self.conn.execute("SELECT symbol, as_of, quantity, reasons FROM risk_forced_buyins "
                                 "ORDER BY id DESC LIMIT ?", (limit,)).fetchall()
        return [dict(r) for r in rows]
