"""The short-selling rules: when a new short may open, and when an open one must be bought in.

* ``hard_to_borrow(quote, settings)`` -- THE hard-to-borrow rule (borrow rate above
  ``MAX_BORROW_RATE`` or the broker's HTB flag), for new shorts and for forced buy-ins alike; the
  paper broker and the backtest set their HTB flag with it too.
* ``ex_dividend_near(quote, as_of, settings)`` -- the ex-dividend window (``EX_DIVIDEND_WINDOW_DAYS``).
* ``short_entry_problem(symbol, portfolio, do_not_short, settings)`` -- why a new short is not
  allowed (shorts disabled, do-not-short list, ``BROKER RECALL``, ``HARD TO BORROW``, not
  shortable, no borrow data, ex-dividend window), used by the pre-trade check and by target
  generation.
* ``ShortRules(conn, audit, settings)`` -- the persistent part, which ``risk_management.RiskManager``
  holds: the do-not-short list (table ``risk_do_not_short``) and forced buy-ins (table
  ``risk_forced_buyins``): ``forced_buyins(portfolio)`` closes shorts the broker recalled, that
  became hard to borrow or whose ex-dividend date is near, logging ``Forced buy-in triggered``;
  ``FORCED_BUYIN_LIMIT`` of them within ``FORCED_BUYIN_LOOKBACK_DAYS`` put the symbol on the
  do-not-short list.

Every limit comes from a ``settings.TradingSettings`` (default: built from ``constants.py``).
"""
from __future__ import annotations

import logging
from datetime import date, timedelta
from typing import Protocol

import clock
import config
import settlement
import state_db
from broker_base import BUY_TO_COVER
from portfolio import EPS, Portfolio, finite, make_order, pct, price_of, to_date
from settings import TradingSettings, default_settings

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


class Audit(Protocol):
    """What the short rules (and the risk manager) record events through: an
    ``audit_logging.AuditLogger``, or ``risk_management.NullAudit`` in a replay."""

    def log_event(self, action: str, status: str, details: dict) -> dict: ...


def audit_event(audit: Audit, action: str, status: str, details: dict, required: bool = False) -> None:
    """Audit an event. A failure is logged; with ``required`` it is raised (the caller's
    transaction then rolls back, so nothing happens unrecorded)."""
    try:
        audit.log_event(action, status, details)
    except Exception as exc:
        log.error("Audit of %s/%s failed: %s: %s", action, status, type(exc).__name__, exc)
        if required:
            raise


def ex_dividend_near(quote: dict | None, as_of,
                     settings: TradingSettings | None = None) -> tuple[bool, date | None]:
    """Whether the quote's ex-dividend date is today or within EX_DIVIDEND_WINDOW_DAYS ahead."""
    window = (settings or default_settings()).ex_dividend_window_days
    ex_div = to_date((quote or {}).get("ex_dividend_date"))
    if ex_div is None:
        return False, None
    days = (ex_div - to_date(as_of)).days
    return 0 <= days <= window, ex_div


def hard_to_borrow(quote: dict | None, settings: TradingSettings | None = None) -> str | None:
    """THE hard-to-borrow rule, for new shorts and for forced buy-ins of open ones (and the HTB
    flag of the paper broker and the backtest): why the quote's symbol is hard to borrow (a
    borrow rate above MAX_BORROW_RATE, or the broker's HTB flag), or None. The text names the
    borrow rate; callers prefix ``HARD TO BORROW: <symbol>``."""
    limit = (settings or default_settings()).max_borrow_rate
    quote = quote or {}
    rate = quote.get("borrow_rate")
    if finite(rate) and float(rate) > limit + EPS:
        return (f"borrow rate {pct(float(rate))} is above the limit {pct(limit)} "
                f"(MAX_BORROW_RATE)")
    if quote.get("hard_to_borrow") is True:
        rate_text = pct(float(rate)) if finite(rate) else "unknown"
        return f"flagged hard to borrow by the broker (borrow rate {rate_text})"
    return None


def short_entry_problem(symbol: str, portfolio: Portfolio, do_not_short=(),
                        settings: TradingSettings | None = None) -> str | None:
    """Why a new short in ``symbol`` is not allowed, or None when it is. Shared by the pre-trade
    check and target generation."""
    settings = settings or default_settings()
    if not settings.allow_shorts:
        return "shorts are disabled (ALLOW_SHORTS=False)"
    cash_account = settlement.short_problem(portfolio)
    if cash_account:
        return cash_account
    if symbol in do_not_short:
        return (f"{symbol} is on the do-not-short list "
                f"(remove with: python risk_management.py do-not-short remove {symbol})")
    if symbol in portfolio.recalled:
        return f"BROKER RECALL: the broker recalled borrowed shares of {symbol}"
    quote = portfolio.quotes.get(symbol) or {}
    htb = hard_to_borrow(quote, settings)
    if htb:
        return f"HARD TO BORROW: {symbol} {htb}"
    rate = quote.get("borrow_rate")
    if quote.get("shortable") is False:
        return f"{symbol} is not shortable at the broker"
    if settings.require_borrow_data and not finite(rate) and quote.get("hard_to_borrow") is None \
            and quote.get("shortable") is None:
        return (f"no borrow data for {symbol} (borrow rate, shortable and hard-to-borrow all "
                f"unknown; REQUIRE_BORROW_DATA=True)")
    near, ex_div = ex_dividend_near(quote, portfolio.as_of, settings)
    if near:
        return (f"{symbol} ex-dividend date {ex_div} is within {settings.ex_dividend_window_days} "
                f"days of {to_date(portfolio.as_of)} (EX_DIVIDEND_WINDOW_DAYS)")
    return None


class ShortRules:
    """The do-not-short list and forced buy-ins, kept in the state database.

    ``conn``: a state-DB connection (the tables of ``SCHEMA`` are created on it); ``audit``:
    anything with ``log_event(action, status, details)``; ``settings``: the limits (default:
    ``constants.py``). ``remember_list=True`` reads the do-not-short list once and again only
    after this object changed it (a replay, whose database nobody else writes)."""

    def __init__(self, conn, audit: Audit, settings: TradingSettings | None = None,
                 remember_list: bool = False):
        self.conn = conn
        self.audit = audit
        self.settings = settings or default_settings()
        self._remember = remember_list
        self._list: dict[str, dict] | None = None
        state_db.ensure_schema(conn, SCHEMA)

    # ------------------------------------------------------------------ do-not-short list
    def do_not_short(self) -> dict[str, dict]:
        """The do-not-short list: {symbol: {"reason", "source", "added_at"}}."""
        if self._list is not None:
            return self._list
        rows = self.conn.execute(
            "SELECT symbol, reason, source, added_at FROM risk_do_not_short ORDER BY symbol").fetchall()
        listed = {r["symbol"]: {"reason": r["reason"], "source": r["source"], "added_at": r["added_at"]}
                  for r in rows}
        if self._remember:
            self._list = listed
        return listed

    def add_do_not_short(self, symbol: str, reason: str, source: str = "manual") -> bool:
        """Put ``symbol`` on the do-not-short list (audited; a manual add only if the audit record
        is written). False when it was already there."""
        symbol = symbol.strip().upper()
        if symbol in self.do_not_short():
            return False
        details = {"symbol": symbol, "reason": reason, "source": source,
                   "by": config.operator() if source == "manual" else "system"}
        if source == "manual":
            audit_event(self.audit, "do_not_short", "added", details, required=True)
        self._list = None
        with state_db.transaction(self.conn):
            added = self.conn.execute(
                "INSERT OR IGNORE INTO risk_do_not_short(symbol, reason, source, added_at) "
                "VALUES(?, ?, ?, ?)", (symbol, reason, source, state_db.utcnow())).rowcount == 1
        if added:
            if source != "manual":
                audit_event(self.audit, "do_not_short", "added", details)
            log.warning("%s added to the do-not-short list (%s): %s", symbol, source, reason)
        return added

    def remove_do_not_short(self, symbol: str, reason: str = "") -> bool:
        """Take ``symbol`` off the do-not-short list (audited first). False when it was not there."""
        symbol = symbol.strip().upper()
        if symbol not in self.do_not_short():
            return False
        audit_event(self.audit, "do_not_short", "removed",
                    {"symbol": symbol, "reason": reason, "by": config.operator()}, required=True)
        self._list = None
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
            reasons = self._buyin_reasons(symbol, -qty, portfolio, as_of)
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

    def _buyin_reasons(self, symbol: str, short: int, portfolio: Portfolio, as_of: date) -> list[str]:
        """Why the short of ``short`` shares in ``symbol`` must be bought in now (logged), or []."""
        quote = portfolio.quotes.get(symbol) or {}
        reasons = []
        if symbol in portfolio.recalled:
            log.warning("BROKER RECALL: broker recalled the borrowed shares of %s (short %d)",
                        symbol, short)
            reasons.append("broker recall")
        htb = hard_to_borrow(quote, self.settings)
        if htb:
            log.warning("HARD TO BORROW: %s %s", symbol, htb)
            reasons.append(f"hard to borrow: {htb}")
        near, ex_div = ex_dividend_near(quote, as_of, self.settings)
        if near:
            window = self.settings.ex_dividend_window_days
            log.warning("Ex-dividend date of %s is %s, within %d days of %s (EX_DIVIDEND_WINDOW_DAYS)",
                        symbol, ex_div, window, as_of)
            reasons.append(f"ex-dividend {ex_div} within {window} days")
        return reasons

    def _record_buyin(self, symbol: str, as_of: date, quantity: int, reasons: list[str], price) -> None:
        conn, limits = self.conn, self.settings
        since = (as_of - timedelta(days=limits.forced_buyin_lookback_days)).isoformat()
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
        audit_event(self.audit, "forced_buyin", "triggered",
                    {"symbol": symbol, "quantity": quantity, "reasons": reasons, "price": price,
                     "as_of": as_of.isoformat(), "count_in_lookback": count})
        if count >= limits.forced_buyin_limit:
            self.add_do_not_short(symbol, f"{count} forced buy-ins within {limits.forced_buyin_lookback_days} "
                                          f"days (FORCED_BUYIN_LIMIT {limits.forced_buyin_limit})",
                                  source="auto")

    def recent_forced_buyins(self, limit: int = 20) -> list[dict]:
        rows = self.conn.execute("SELECT symbol, as_of, quantity, reasons FROM risk_forced_buyins "
                                 "ORDER BY id DESC LIMIT ?", (limit,)).fetchall()
        return [dict(r) for r in rows]
