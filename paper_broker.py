"""The paper broker: a simulated account in the SQLite state database, with the same interface as
``schwab_broker.SchwabAPI`` (see ``broker_base``) and the cost model of ``broker_base``.

The backtest replays the same cost model (``slippage_price``, ``commission_for``, ``borrow_fee``,
``paper_buying_power``) without this class; ``get_broker()`` in ``trading_api`` returns it unless
``TRADING_MODE=live``. The cost model's values (and the borrow-rate limit of its HTB flag) come
from the ``settings.TradingSettings`` it is given (default: ``constants.py``).
"""
from __future__ import annotations

import logging
import math
from datetime import date, datetime

import clock
import constants as C
import corporate_actions
import order_prices
import settlement
import state_db
from broker_base import (BUY, BUY_SIDES, BUY_TO_COVER, DAY, FINAL_STATUSES, GTC, LIMIT, MARKET, OPEN_STATUSES,
                         OPENING_SIDES, SELL, SELL_SHORT, STOP, UTC, OrderNotFoundError,
                         OrderRejectedError, borrow_fee, commission_for, num, paper_buying_power,
                         parse_date, parse_time, signed_quantity, slippage_price, to_utc, validate_order)
from portfolio import money, to_date
from settings import TradingSettings, default_settings
from short_rules import hard_to_borrow

log = logging.getLogger("broker")


def _as_date(value) -> date:
    """``portfolio.to_date``; None: today (``clock.today()``)."""
    return to_date(value) or clock.today()


_PAPER_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS paper_account (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        cash REAL NOT NULL,
        last_borrow_accrual TEXT,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS paper_positions (
        symbol TEXT PRIMARY KEY,
        quantity INTEGER NOT NULL,
        avg_price REAL NOT NULL,
        borrow_accrued_to TEXT,
        updated_at TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS paper_orders (
        seq INTEGER PRIMARY KEY,
        order_id TEXT NOT NULL UNIQUE,
        client_key TEXT NOT NULL UNIQUE,
        symbol TEXT NOT NULL,
        side TEXT NOT NULL,
        quantity INTEGER NOT NULL,
        order_type TEXT NOT NULL,
        limit_price REAL,
        status TEXT NOT NULL,
        filled_quantity INTEGER NOT NULL DEFAULT 0,
        avg_fill_price REAL,
        reject_reason TEXT,
        trade_date TEXT NOT NULL,
        entered_time TEXT NOT NULL,
        updated_at TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS paper_fills (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        order_id TEXT NOT NULL,
        symbol TEXT NOT NULL,
        side TEXT NOT NULL,
        quantity INTEGER NOT NULL,
        reference_price REAL NOT NULL,
        price REAL NOT NULL,
        commission REAL NOT NULL,
        trade_date TEXT NOT NULL,
        filled_at TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS paper_ledger (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        at TEXT NOT NULL,
        trade_date TEXT NOT NULL,
        kind TEXT NOT NULL,
        symbol TEXT,
        amount REAL NOT NULL,
        note TEXT)""",
    """CREATE TABLE IF NOT EXISTS paper_prices (
        symbol TEXT PRIMARY KEY,
        price REAL NOT NULL,
        as_of TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS paper_borrow_rates (
        symbol TEXT PRIMARY KEY,
        rate REAL NOT NULL,
        hard_to_borrow INTEGER)""",
    # a cash account's settlement (PAPER_ACCOUNT_TYPE = CASH; settlement.py): sale proceeds not yet
    # settled, and the symbols bought with such funds (selling them before that day: good-faith violation)
    """CREATE TABLE IF NOT EXISTS paper_unsettled_proceeds (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        order_id TEXT NOT NULL,
        symbol TEXT NOT NULL,
        amount REAL NOT NULL,
        trade_date TEXT NOT NULL,
        settles_on TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS paper_unsettled_buys (
        symbol TEXT PRIMARY KEY,
        settles_on TEXT NOT NULL)""",
    # cash/quantity events of the paper account other than fills and borrow fees (splits,
    # dividends, fees, interest, journals), written by whoever applies them in the same transaction
    # as the change of paper_positions / paper_account; listed by get_transactions
    """CREATE TABLE IF NOT EXISTS paper_account_events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        kind TEXT NOT NULL CHECK (kind IN ('SPLIT', 'DIVIDEND', 'FEE', 'INTEREST', 'JOURNAL')),
        symbol TEXT,
        quantity_change INTEGER NOT NULL DEFAULT 0,
        cash_change REAL NOT NULL DEFAULT 0,
        effective_date TEXT NOT NULL,
        note TEXT)""",
    # every split / dividend applied to the account (corporate_actions.position_events): one row per
    # cash/quantity event; cash_applied_on is NULL until the cash moved (a dividend's pay date)
    """CREATE TABLE IF NOT EXISTS paper_corporate_actions (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        kind TEXT NOT NULL CHECK (kind IN ('SPLIT', 'DIVIDEND')),
        symbol TEXT NOT NULL,
        ex_date TEXT NOT NULL,
        pay_date TEXT NOT NULL,
        per_share REAL NOT NULL,
        quantity_before INTEGER NOT NULL,
        quantity_change INTEGER NOT NULL,
        cash_change REAL NOT NULL,
        cash_applied_on TEXT,
        note TEXT NOT NULL,
        recorded_at TEXT NOT NULL,
        UNIQUE (kind, symbol, ex_date))""",
    """CREATE TABLE IF NOT EXISTS paper_symbol_events (
        symbol TEXT PRIMARY KEY,
        recalled INTEGER NOT NULL DEFAULT 0,
        shortable INTEGER,
        ex_dividend_date TEXT)""",
]


# columns newer than the first paper_orders table, added to an existing database by _migrate
# (a STOP's trigger price, DAY / GOOD_TILL_CANCEL, and why an order ended: a stop fired, an open beyond a limit)
_PAPER_ADDED_COLUMNS = [("stop_price", "REAL"), ("duration", "TEXT NOT NULL DEFAULT 'DAY'"), ("note", "TEXT")]


def _migrate(conn) -> None:
    """Add the ``_PAPER_ADDED_COLUMNS`` an existing ``paper_orders`` lacks (one transaction)."""
    def missing():
        have = {r["name"] for r in conn.execute("PRAGMA table_info(paper_orders)")}
        return [c for c in _PAPER_ADDED_COLUMNS if c[0] not in have]
    if missing():
        with state_db.transaction(conn):
            for column, decl in missing():
                conn.execute(f"ALTER TABLE paper_orders ADD COLUMN {column} {decl}")
                log.info("state database: added column %s.%s", "paper_orders", column)


class _Reject(Exception):
    """A paper-broker rule refused an order (inside a transaction; turned into a REJECTED order)."""


class PaperBroker:
    """A simulated account in the state database (tables ``paper_*``), same interface as SchwabAPI.

    Prices: ``set_prices({SYM: price}, as_of, opens, bars)`` sets the reference prices (the closes of
    session ``as_of``) and gives the opens of recent sessions (``{date: {SYM: open}}``) and,
    optionally, their bars (``{date: {SYM: {"open", "high", "low"}}}``) for the stops.
    Market orders (``fill="next_open"``: ``PAPER_FILL``, what ``trading_api.get_broker`` and so
    every cycle, replay and flatten use, as the backtest does): an order
    placed while the latest closes are those of session D was decided from D's close, so it stays
    WORKING (``pending_next_open``) until the open of the first session after D is known, then
    fills at ``slippage_price(that open)`` plus ``commission_for``, exactly the backtest engine's
    fill; a pending order whose symbol has no open in a later ``opens`` expires. With
    ``fill="close"`` (the constructor's default, for tests of the broker's mechanics) market
    orders fill at once at
    ``slippage_price(reference)`` plus ``commission_for``. Limit
    orders: with ``fill="next_open"`` they wait for the next session's open like market orders and
    fill there only inside their limit (``order_prices.collar_fill``; at the slipped open, never
    beyond the limit), else they EXPIRE with that session (a collar the open gapped through: no
    fill, never chased); with ``fill="close"`` they fill when marketable (buy: reference <= limit,
    sell: reference >= limit, at the slipped price capped by the limit), else stay WORKING until
    later prices make them marketable. A WORKING DAY order expires when prices for a later day
    arrive. STOP orders (issue 22: a SELL stop protects a long, a BUY_TO_COVER stop a short;
    ``duration`` GOOD_TILL_CANCEL rests across sessions, DAY expires with the next session) rest
    WORKING until a later session's bar (``set_prices(..., bars=...)``) triggers them by
    ``order_prices.stop_fill`` -- at the stop price, or at the open when it gaps through -- and
    then book a normal fill (commission, settlement) and show FILLED with that price and a
    ``note``; ``cancel_order`` cancels them and they survive a restart (``paper_orders``).
    Shorts: SELL_SHORT credits the proceeds, BUY_TO_COVER closes; ``accrue_borrow_fees(as_of)``
    charges ``borrow_fee`` (ACT/360, calendar days) for each short. Buying power is
    ``paper_buying_power``: ``cash - PAPER_SHORT_MARGIN_REQ * short market value``.
    Every write is one transaction; state survives a new instance with the same TRADING_HOME."""

    name = "paper"           # a label for log lines; code that must tell brokers apart reads ``simulated``
    simulated = True         # no real orders: fills are computed here

    def __init__(self, conn=None, prices: dict | None = None, as_of=None, fill: str = "close",
                 settings: TradingSettings | None = None):
        self.settings = settings or default_settings()
        self.fill = fill
        if self.fill not in ("next_open", "close"):
            raise ValueError(f"paper fill mode {self.fill!r}: use 'next_open' or 'close'")
        self.fills_at_next_open = self.fill == "next_open"   # broker_base.Broker; read by OrderExecutor.wait_for_fills
        self.conn = conn if conn is not None else state_db.connect()
        self.server_time: datetime | None = None      # the broker's clock at its latest order list
        state_db.ensure_schema(self.conn, _PAPER_SCHEMA)
        _migrate(self.conn)
        now = state_db.utcnow()
        with state_db.transaction(self.conn):
            self.conn.execute(
                "INSERT OR IGNORE INTO paper_account(id, cash, last_borrow_accrual, created_at, "
                "updated_at) VALUES (1, ?, NULL, ?, ?)", (float(C.INITIAL_PAPER_CASH), now, now))
        if prices:
            self.set_prices(prices, as_of)

    # ------------------------------------------------------------------ simulation inputs
    # ------------------------------------------------------------------ the cost model (settings)
    def _slipped(self, reference: float, side: str) -> float:
        return slippage_price(reference, side, self.settings.slippage_bps)

    def _commission(self, quantity: int) -> float:
        return commission_for(quantity, self.settings.commission_per_share, self.settings.min_commission)

    def _buying_power(self, cash: float, short_mv: float, allow_negative: bool = False) -> float:
        return paper_buying_power(cash, short_mv, allow_negative=allow_negative,
                                  margin_req=self.settings.short_margin_req)

    def set_prices(self, prices: dict, as_of=None, opens: dict | None = None, bars: dict | None = None) -> None:
        """Reference prices (the closes of session ``as_of``, default today), the opens of recent
        sessions (``{date: {SYM: open}}``) and, optionally, their bars (``bars``:
        ``{date: {SYM: {"open", "high", "low"}}}``; a bar's open counts as that session's open).
        Where a session has no high/low, its range is its open and, for session ``as_of``, its
        close (``_session_bars``): a stop inside the range of a session without bars is missed.

        Session by session (oldest first, up to ``as_of``): first the resting STOP orders placed
        before it are checked against its bar (``order_prices.stop_fill``: at the stop, or at the
        open when the open gaps through it), then the orders pending the next open whose first
        later session with an open for their symbol it is fill (market: at that open slipped;
        limit, ``PAPER_FILL`` = next_open: ``order_prices.collar_fill``, at most the limit, else
        EXPIRED: the DAY order's session is over). Then DAY orders from earlier days expire (GTC
        orders rest), and, with ``fill="close"``, WORKING limit orders that became marketable fill."""
        day = _as_date(as_of)
        clean = {}
        for symbol, price in (prices or {}).items():
            value = num(price)
            if value is None or value <= 0:
                raise ValueError(f"invalid price for {symbol}: {price!r}")
            clean[str(symbol).strip().upper()] = value
        sessions = self._session_bars(opens, bars, clean, day)
        rejected = []
        with state_db.transaction(self.conn):
            rejected += self._fill_sessions(sessions, day, opens is not None or bars is not None)
            self.conn.executemany(
                "INSERT INTO paper_prices(symbol, price, as_of) VALUES (?, ?, ?) ON CONFLICT(symbol) "
                "DO UPDATE SET price = excluded.price, as_of = excluded.as_of",
                [(s, p, day.isoformat()) for s, p in clean.items()])
            self.conn.execute(
                "UPDATE paper_orders SET status = 'EXPIRED', updated_at = ? WHERE status IN "
                "('NEW', 'WORKING') AND trade_date < ? AND duration != ? "
                "AND NOT (order_type IN ('MARKET', 'LIMIT') AND ?)",
                (state_db.utcnow(), day.isoformat(), GTC, int(self.fills_at_next_open)))
            working = [] if self.fills_at_next_open else self.conn.execute(
                "SELECT * FROM paper_orders WHERE status = 'WORKING' AND order_type = 'LIMIT' ORDER BY seq").fetchall()
            for row in working:
                o = dict(row)
                try:
                    self._try_fill(o, day)
                except _Reject as exc:
                    self._set_rejected(o["order_id"], str(exc))
                    rejected.append((o["order_id"], str(exc)))
        for order_id, reason in rejected:
            log.warning("Paper order %s rejected when it became marketable: %s", order_id, reason)

    @staticmethod
    def _session_bars(opens: dict | None, bars: dict | None, closes: dict, day: date) -> dict:
        """``{session: {SYM: (open, low, high)}}`` from ``opens`` and ``bars``: a bar without a
        high/low (or a symbol with only an open) spans its open and, on session ``day``, the close."""
        out: dict = {}
        for d, row in (opens or {}).items():
            for sym, v in (row or {}).items():
                o = num(v)
                if o is not None and o > 0:
                    out.setdefault(_as_date(d), {})[str(sym).strip().upper()] = (o, None, None)
        for d, row in (bars or {}).items():
            for sym, bar in (row or {}).items():
                bar = bar or {}
                o, lo, hi = num(bar.get("open")), num(bar.get("low")), num(bar.get("high"))
                if o is None or o <= 0:
                    continue
                out.setdefault(_as_date(d), {})[str(sym).strip().upper()] = (o, lo, hi)
        for d, row in out.items():
            for sym, (o, lo, hi) in list(row.items()):
                edge = [o] + ([closes[sym]] if d == day and sym in closes else [])
                row[sym] = (o, min(edge) if lo is None else min(lo, o), max(edge) if hi is None else max(hi, o))
        return out

    def _fill_sessions(self, sessions: dict, day: date, opens_given: bool) -> list[tuple[str, str]]:
        """Inside set_prices' transaction: for each session of ``sessions`` up to ``day``, oldest
        first, the resting stops (``_fill_stops``), then the orders pending the next open
        (``fill="next_open"``) whose decision day (``trade_date``) is before it and whose symbol
        has an open in it. An order pending with no such open expires when opens were given for a
        later day, else stays pending. Returns [(order_id, reject reason)]."""
        rejected: list[tuple[str, str]] = []
        done: set[str] = set()
        pending = [] if not self.fills_at_next_open else [dict(r) for r in self.conn.execute(
            "SELECT * FROM paper_orders WHERE status = 'WORKING' AND order_type IN ('MARKET', 'LIMIT') "
            "AND trade_date < ? ORDER BY seq", (day.isoformat(),)).fetchall()]
        for session in sorted(d for d in sessions if d <= day):
            bars = sessions[session]
            rejected += self._fill_stops(session, bars)
            for o in pending:
                if o["order_id"] in done or not (date.fromisoformat(o["trade_date"]) < session) \
                        or o["symbol"] not in bars:
                    continue
                done.add(o["order_id"])
                try:
                    self._fill_at_open(o, bars[o["symbol"]][0], session)
                except _Reject as exc:
                    self._set_rejected(o["order_id"], str(exc))
                    rejected.append((o["order_id"], str(exc)))
        for o in pending:
            decided = date.fromisoformat(o["trade_date"])
            if o["order_id"] not in done and opens_given and any(decided < d <= day for d in sessions):
                self.conn.execute("UPDATE paper_orders SET status = 'EXPIRED', updated_at = ? WHERE order_id = ?",
                                  (state_db.utcnow(), o["order_id"]))
                log.warning("Paper order %s expired: no open price for %s after %s", o["order_id"],
                            o["symbol"], decided)
        return rejected

    def _fill_at_open(self, o: dict, open_: float, session: date) -> None:
        """Fill an order pending the next open at ``session``'s open: a market order at the
        slipped open; a limit order (a collar) by ``order_prices.collar_fill`` at the slipped open
        but never beyond its limit, or, when the open is beyond the limit, EXPIRED (a DAY order:
        no fill in that session, never chased; the caller re-plans it)."""
        if o["order_type"] == LIMIT:
            limit = float(o["limit_price"])
            action = "buy" if o["side"] in BUY_SIDES else "sell"
            if order_prices.collar_fill(action, limit, open_) is None:
                note = f"open {open_:.4f} beyond the limit {limit:.4f} on {session}: not filled, expired"
                self.conn.execute("UPDATE paper_orders SET status = 'EXPIRED', note = ?, updated_at = ? "
                                  "WHERE order_id = ?", (note, state_db.utcnow(), o["order_id"]))
                log.warning("Paper order %s %s %d %s: %s", o["order_id"], o["side"], o["quantity"], o["symbol"], note)
                return
            fill = order_prices.within_limit(action, self._slipped(open_, o["side"]), limit)
            self._apply_fill(o, open_, fill, session)
            return
        self._apply_fill(o, open_, self._slipped(open_, o["side"]), session)

    def _fill_stops(self, session: date, bars: dict) -> list[tuple[str, str]]:
        """Inside set_prices' transaction: every resting STOP placed before ``session`` whose
        symbol has a bar in it and that the bar triggers (``order_prices.stop_fill``) fills at
        the stop price, or at the open when the open gaps through it (no slippage: the rule of
        the backtest engine); its order becomes FILLED with that price and a note."""
        rejected = []
        for row in self.conn.execute("SELECT * FROM paper_orders WHERE status = 'WORKING' AND order_type = 'STOP' "
                                     "AND trade_date < ? ORDER BY seq", (session.isoformat(),)).fetchall():
            o = dict(row)
            if o["symbol"] not in bars:
                continue
            open_, low, high = bars[o["symbol"]]
            side = "long" if o["side"] == SELL else "short"
            stop = float(o["stop_price"])
            price = order_prices.stop_fill(side, stop, open_, low, high)
            if price is None:
                continue
            try:
                self._apply_fill(o, stop, price, session)
            except _Reject as exc:
                self._set_rejected(o["order_id"], str(exc))
                rejected.append((o["order_id"], str(exc)))
                continue
            how = "the open gapped through it" if price == open_ and price != stop else "the bar reached it"
            self.conn.execute("UPDATE paper_orders SET note = ? WHERE order_id = ?",
                              (f"stop {stop:.4f} triggered on {session}: {how}, filled at {price:.4f}", o["order_id"]))
            log.warning("Paper stop %s %s %d %s triggered on %s at %.4f (stop %.4f)", o["order_id"], o["side"],
                        o["quantity"], o["symbol"], session, price, stop)
        return rejected

    def set_borrow_rate(self, symbol: str, rate: float, hard_to_borrow: bool | None = None) -> None:
        """Annual borrow rate (fraction) for a symbol; ``hard_to_borrow`` defaults to
        ``short_rules.hard_to_borrow`` (a rate above ``MAX_BORROW_RATE``)."""
        rate = float(rate)
        if not math.isfinite(rate) or rate < 0:
            raise ValueError(f"invalid borrow rate {rate!r}")
        htb = None if hard_to_borrow is None else int(bool(hard_to_borrow))
        with state_db.transaction(self.conn):
            self.conn.execute(
                "INSERT INTO paper_borrow_rates(symbol, rate, hard_to_borrow) VALUES (?, ?, ?) "
                "ON CONFLICT(symbol) DO UPDATE SET rate = excluded.rate, "
                "hard_to_borrow = excluded.hard_to_borrow", (symbol.upper(), rate, htb))

    def _set_event(self, symbol: str, column: str, value) -> None:
        with state_db.transaction(self.conn):
            self.conn.execute("INSERT OR IGNORE INTO paper_symbol_events(symbol) VALUES (?)",
                              (symbol.upper(),))
            self.conn.execute(f"UPDATE paper_symbol_events SET {column} = ? WHERE symbol = ?",
                              (value, symbol.upper()))

    def set_recall(self, symbol: str, recalled: bool = True) -> None:
        """Simulate the lender recalling borrowed shares (positions show ``recalled``; no new shorts)."""
        self._set_event(symbol, "recalled", int(bool(recalled)))

    def set_shortable(self, symbol: str, shortable: bool | None) -> None:
        self._set_event(symbol, "shortable", None if shortable is None else int(bool(shortable)))

    def set_ex_dividend(self, symbol: str, ex_date) -> None:
        """Simulate an upcoming ex-dividend date (``None`` clears it)."""
        self._set_event(symbol, "ex_dividend_date", None if ex_date is None else _as_date(ex_date).isoformat())

    # ------------------------------------------------------------------ reads
    def apply_corporate_actions(self, actions, through=None) -> list[dict]:
        """Apply the splits and dividends of ``actions`` (a ``corporate_actions`` frame) whose
        ex-date is after the session of the current prices and not after ``through`` (default
        today), with ``corporate_actions.position_events`` -- the backtest engine's rule: a split
        multiplies the quantity and divides the average price (cash in lieu of a fraction at the
        last close / split), a dividend is credited to a long and charged to a short on its pay date
        (the ex-date when no pay date is known). Call it BEFORE ``set_prices`` of the new session
        (the cash in lieu is priced at the close before the ex-date). Each event is a row of
        ``paper_corporate_actions`` (applied once: (kind, symbol, ex-date) is unique) and a
        ``paper_ledger`` row when cash moves; one transaction. Returns the events applied now."""
        day = _as_date(through)
        now = state_db.utcnow()
        applied: list[dict] = []
        with state_db.transaction(self.conn):
            row = self.conn.execute("SELECT MAX(as_of) AS d FROM paper_prices").fetchone()
            since = row["d"] if row is not None else None
            due = corporate_actions.actions_between(corporate_actions.normalize(actions), since, day) \
                if since is not None else corporate_actions.empty()
            prices = self._prices()
            for _, action in due.iterrows():
                symbol = str(action["Symbol"])
                pos = self.conn.execute("SELECT * FROM paper_positions WHERE symbol = ?", (symbol,)).fetchone()
                if pos is None:
                    continue
                qty, avg = int(pos["quantity"]), float(pos["avg_price"])
                for ev in corporate_actions.position_events(symbol, qty, avg, action, prices.get(symbol)):
                    cur = self.conn.execute(
                        "INSERT OR IGNORE INTO paper_corporate_actions(kind, symbol, ex_date, pay_date, per_share, "
                        "quantity_before, quantity_change, cash_change, cash_applied_on, note, recorded_at) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, NULL, ?, ?)",
                        (ev.kind, symbol, ev.ex_date.isoformat(), ev.pay_date.isoformat(),
                         float(action["Split"] if ev.kind == corporate_actions.SPLIT else action["Dividend"]),
                         ev.quantity_before,
                         ev.quantity_change, ev.cash_change, ev.note, now))
                    if not cur.rowcount:
                        continue                                    # applied before
                    if ev.kind == corporate_actions.SPLIT:
                        new_qty = ev.quantity_before + ev.quantity_change
                        if new_qty == 0:
                            self.conn.execute("DELETE FROM paper_positions WHERE symbol = ?", (symbol,))
                        else:
                            self.conn.execute("UPDATE paper_positions SET quantity = ?, avg_price = ?, "
                                              "updated_at = ? WHERE symbol = ?",
                                              (new_qty, round(float(ev.new_avg_price or 0.0), 6), now, symbol))
                        self._split_stops(symbol, float(action["Split"]), abs(new_qty), now)
                        if symbol in prices:                        # the last close in the new share units
                            self.conn.execute("UPDATE paper_prices SET price = ? WHERE symbol = ?",
                                              (prices[symbol] / float(action["Split"]), symbol))
                    applied.append({"kind": ev.kind, "symbol": symbol, "ex_date": ev.ex_date.isoformat(),
                                    "pay_date": ev.pay_date.isoformat(), "quantity_change": ev.quantity_change,
                                    "cash_change": ev.cash_change, "note": ev.note})
            for ev_row in self.conn.execute(
                    "SELECT * FROM paper_corporate_actions WHERE cash_applied_on IS NULL AND pay_date <= ?",
                    (day.isoformat(),)).fetchall():
                if ev_row["cash_change"]:
                    self.conn.execute("UPDATE paper_account SET cash = cash + ?, updated_at = ? WHERE id = 1",
                                      (ev_row["cash_change"], now))
                    self.conn.execute(
                        "INSERT INTO paper_ledger(at, trade_date, kind, symbol, amount, note) VALUES (?, ?, ?, ?, ?, ?)",
                        (now, ev_row["pay_date"], ev_row["kind"].lower(), ev_row["symbol"], ev_row["cash_change"],
                         ev_row["note"]))
                self.conn.execute("UPDATE paper_corporate_actions SET cash_applied_on = ? WHERE id = ?",
                                  (day.isoformat(), ev_row["id"]))
        for ev in applied:
            log.info("Paper account: %s %s (ex-date %s): %s", ev["kind"], ev["symbol"], ev["ex_date"], ev["note"])
        return applied

    def _split_stops(self, symbol: str, ratio: float, quantity: int, now: str) -> None:
        """Inside apply_corporate_actions' transaction: the resting stops of ``symbol`` follow a
        split (``order_prices.split_stop``, the whole new quantity), as a broker adjusts open
        orders; cancelled when the split left no shares."""
        for row in self.conn.execute("SELECT * FROM paper_orders WHERE symbol = ? AND order_type = 'STOP' "
                                     "AND status = 'WORKING'", (symbol,)).fetchall():
            if not quantity:
                self.conn.execute("UPDATE paper_orders SET status = 'CANCELED', note = ?, updated_at = ? "
                                  "WHERE order_id = ?", ("split left no shares", now, row["order_id"]))
                continue
            side = "long" if row["side"] == SELL else "short"
            self.conn.execute("UPDATE paper_orders SET stop_price = ?, quantity = ?, updated_at = ? WHERE order_id = ?",
                              (order_prices.split_stop(side, float(row["stop_price"]), ratio), quantity, now,
                               row["order_id"]))

    def corporate_action_events(self) -> list[dict]:
        """Every row of ``paper_corporate_actions`` in the order applied."""
        return [dict(r) for r in self.conn.execute("SELECT * FROM paper_corporate_actions ORDER BY id")]

    def _cash(self) -> float:
        return float(self.conn.execute("SELECT cash FROM paper_account WHERE id = 1").fetchone()["cash"])

    def _prices(self) -> dict:
        return {r["symbol"]: r["price"] for r in self.conn.execute("SELECT symbol, price FROM paper_prices")}

    def _position_rows(self) -> list:
        return self.conn.execute("SELECT * FROM paper_positions ORDER BY symbol").fetchall()

    def _valuation(self) -> tuple[float, float, float]:
        """(cash, long market value, short market value as a positive number)."""
        prices = self._prices()
        long_mv = short_mv = 0.0
        for row in self._position_rows():
            value = row["quantity"] * prices.get(row["symbol"], row["avg_price"])
            if value >= 0:
                long_mv += value
            else:
                short_mv -= value
        return self._cash(), long_mv, short_mv

    def get_account_balance(self) -> dict:
        cash, long_mv, short_mv = self._valuation()
        out = {"equity": round(cash + long_mv - short_mv, 6), "cash": round(cash, 6),
               "buying_power": round(self._buying_power(cash, short_mv), 6),
               "long_market_value": round(long_mv, 6), "short_market_value": round(short_mv, 6),
               "account_type": str(C.PAPER_ACCOUNT_TYPE)}
        if settlement.account_type_of(out) == settlement.CASH:
            today = clock.today()
            unsettled = self._unsettled(today)
            out.update(settled_cash=round(max(cash - unsettled, 0.0), 6), unsettled_cash=round(unsettled, 6),
                       unsettled_buys=self._unsettled_buys(today))
        return out

    # ------------------------------------------------------------------ a cash account's settlement
    def _unsettled(self, day: date) -> float:
        """Sale proceeds not settled on ``day`` (they settle on ``settles_on``)."""
        row = self.conn.execute("SELECT COALESCE(SUM(amount), 0) AS s FROM paper_unsettled_proceeds "
                                "WHERE settles_on > ?", (day.isoformat(),)).fetchone()
        return float(row["s"])

    def _unsettled_buys(self, day: date) -> dict[str, str]:
        return {r["symbol"]: r["settles_on"] for r in self.conn.execute(
            "SELECT symbol, settles_on FROM paper_unsettled_buys WHERE settles_on > ?", (day.isoformat(),))}

    def _settle_fill(self, o: dict, symbol: str, side: str, cash_before: float, cash_delta: float, day: date) -> None:
        """Inside the fill's transaction, in a cash account: a sale's proceeds settle T+1; a buy
        paid partly with unsettled proceeds marks the symbol until they settle."""
        if side == SELL:
            self.conn.execute("INSERT INTO paper_unsettled_proceeds(order_id, symbol, amount, trade_date, "
                              "settles_on) VALUES (?, ?, ?, ?, ?)",
                              (o["order_id"], symbol, cash_delta, day.isoformat(),
                               settlement.settles_on(day).isoformat()))
        elif side == BUY and -cash_delta > cash_before - self._unsettled(day) + 1e-9:
            last = self.conn.execute("SELECT MAX(settles_on) AS d FROM paper_unsettled_proceeds WHERE "
                                     "settles_on > ?", (day.isoformat(),)).fetchone()["d"]
            self.conn.execute("INSERT INTO paper_unsettled_buys(symbol, settles_on) VALUES (?, ?) ON CONFLICT"
                              "(symbol) DO UPDATE SET settles_on = MAX(settles_on, excluded.settles_on)",
                              (symbol, last))
            log.warning("Paper cash account: BUY %s paid with unsettled funds (settle on %s): selling it "
                        "before then is a good-faith violation", symbol, last)

    def get_positions(self) -> dict:
        prices = self._prices()
        recalled = {r["symbol"] for r in self.conn.execute(
            "SELECT symbol FROM paper_symbol_events WHERE recalled = 1")}
        return {row["symbol"]: {
            "quantity": int(row["quantity"]), "avg_price": float(row["avg_price"]),
            "market_value": round(row["quantity"] * prices.get(row["symbol"], row["avg_price"]), 6),
            "recalled": row["symbol"] in recalled} for row in self._position_rows()}

    def _borrow(self, symbol: str) -> tuple[float, bool | None]:
        row = self.conn.execute("SELECT rate, hard_to_borrow FROM paper_borrow_rates WHERE symbol = ?",
                                (symbol,)).fetchone()
        if row is None:
            return self.settings.borrow_rate, None
        return float(row["rate"]), (None if row["hard_to_borrow"] is None else bool(row["hard_to_borrow"]))

    def _events(self, symbol: str) -> dict:
        row = self.conn.execute("SELECT * FROM paper_symbol_events WHERE symbol = ?", (symbol,)).fetchone()
        if row is None:
            return {"recalled": False, "shortable": None, "ex_dividend_date": None}
        return {"recalled": bool(row["recalled"]),
                "shortable": None if row["shortable"] is None else bool(row["shortable"]),
                "ex_dividend_date": parse_date(row["ex_dividend_date"])}

    def get_quotes(self, symbols) -> dict:
        """Quotes from the reference prices: bid/ask are the slipped sell/buy prices; borrow data
        from the paper borrow table (default ``DEFAULT_BORROW_RATE``)."""
        if isinstance(symbols, str):
            symbols = [symbols]
        prices = self._prices()
        out = {}
        for symbol in dict.fromkeys(str(s).strip().upper() for s in symbols):
            if symbol not in prices:
                continue
            price = prices[symbol]
            rate, htb = self._borrow(symbol)
            events = self._events(symbol)
            shortable = events["shortable"] if events["shortable"] is not None else not events["recalled"]
            if htb is None:
                htb = hard_to_borrow({"borrow_rate": rate}, self.settings) is not None
            out[symbol] = {"last": price, "bid": self._slipped(price, SELL),
                           "ask": self._slipped(price, BUY), "borrow_rate": rate, "hard_to_borrow": htb,
                           "shortable": shortable, "ex_dividend_date": events["ex_dividend_date"]}
        return out

    # ------------------------------------------------------------------ orders
    def _order_dict(self, row) -> dict:
        row = dict(row)
        filled = int(row["filled_quantity"])
        return {"order_id": row["order_id"], "symbol": row["symbol"], "side": row["side"],
                "quantity": int(row["quantity"]), "order_type": row["order_type"],
                "limit_price": row["limit_price"], "stop_price": row.get("stop_price"),
                "duration": row.get("duration") or DAY, "status": row["status"],
                "filled_quantity": filled,
                "remaining_quantity": 0 if row["status"] in FINAL_STATUSES
                else int(row["quantity"]) - filled,
                "avg_fill_price": row["avg_fill_price"], "entered_time": parse_time(row["entered_time"]),
                "client_key": row["client_key"], "reject_reason": row["reject_reason"], "note": row.get("note"),
                "pending_next_open": row["status"] == "WORKING" and (
                    row["order_type"] == MARKET or (row["order_type"] == LIMIT and self.fills_at_next_open))}

    def place_order(self, order: dict) -> str:
        """Fill (market, or marketable limit), leave WORKING, or reject (``OrderRejectedError``,
        recorded as a REJECTED order). The same ``client_key`` again returns the first order's id
        (or raises the first rejection again)."""
        o = validate_order(order)
        with state_db.transaction(self.conn):
            row = self.conn.execute("SELECT * FROM paper_orders WHERE client_key = ?",
                                    (o["client_key"],)).fetchone()
            if row is None:
                row = self._insert_order(o)
                try:
                    self._try_fill(dict(row), None)
                except _Reject as exc:
                    self._set_rejected(row["order_id"], str(exc))
                row = self.conn.execute("SELECT * FROM paper_orders WHERE order_id = ?",
                                        (row["order_id"],)).fetchone()
            elif (row["symbol"], row["side"], row["quantity"]) != (o["symbol"], o["side"], o["quantity"]):
                log.warning("Paper client_key %s reused for a different order; returning the first",
                            o["client_key"])
        if row["status"] == "REJECTED":
            raise OrderRejectedError(f"paper order {row['side']} {row['quantity']} {row['symbol']} "
                                     f"rejected: {row['reject_reason']}")
        log.info("Paper order %s %s: %s %d %s%s", row["order_id"], row["status"], row["side"],
                 row["quantity"], row["symbol"],
                 f" at {row['avg_fill_price']:.4f}" if row["avg_fill_price"] else
                 (" (fills at the next session's open)" if row["order_type"] == MARKET else
                  f" (stop {row['stop_price']:.4f}, {row['duration']})" if row["order_type"] == STOP else ""))
        return row["order_id"]

    def preview_order(self, order: dict) -> None:
        """Nothing to preview: the paper broker's own rules run when the order is placed."""
        validate_order(order)

    def _insert_order(self, o: dict):
        seq = self.conn.execute("SELECT COALESCE(MAX(seq), 0) + 1 AS n FROM paper_orders").fetchone()["n"]
        order_id = f"PAPER-{seq:06d}"
        price_row = self.conn.execute("SELECT as_of FROM paper_prices WHERE symbol = ?",
                                      (o["symbol"],)).fetchone()
        trade_date = price_row["as_of"] if price_row else clock.today().isoformat()
        now = datetime.now(UTC).isoformat(timespec="microseconds")
        self.conn.execute(
            "INSERT INTO paper_orders(seq, order_id, client_key, symbol, side, quantity, order_type, "
            "limit_price, stop_price, duration, status, trade_date, entered_time, updated_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'NEW', ?, ?, ?)",
            (seq, order_id, o["client_key"], o["symbol"], o["side"], o["quantity"], o["order_type"],
             o["limit_price"], o.get("stop_price"), o.get("duration") or DAY, trade_date, now, now))
        return self.conn.execute("SELECT * FROM paper_orders WHERE order_id = ?", (order_id,)).fetchone()

    def _set_rejected(self, order_id: str, reason: str) -> None:
        self.conn.execute("UPDATE paper_orders SET status = 'REJECTED', reject_reason = ?, "
                          "updated_at = ? WHERE order_id = ?", (reason, state_db.utcnow(), order_id))

    def _try_fill(self, o: dict, day: date | None) -> None:
        """Inside a transaction: fill ``o`` if it can be, else mark it WORKING; ``_Reject`` if a
        rule forbids it."""
        price_row = self.conn.execute("SELECT price, as_of FROM paper_prices WHERE symbol = ?",
                                      (o["symbol"],)).fetchone()
        if price_row is None:
            raise _Reject(f"no reference price for {o['symbol']} (set_prices() has not given one)")
        reference = float(price_row["price"])
        day = day or date.fromisoformat(price_row["as_of"])
        fill = self._slipped(reference, o["side"])
        if o["order_type"] == STOP:
            # a protective stop: rests (WORKING) until a later session's bar triggers it (_fill_stops)
            if o["side"] not in (SELL, BUY_TO_COVER):
                raise _Reject(f"a STOP order protects a position: SELL (a long) or BUY_TO_COVER (a short), "
                              f"not {o['side']}")
            self._check_rules(o, float(o["stop_price"]), reference)
            self.conn.execute("UPDATE paper_orders SET status = 'WORKING', updated_at = ? "
                              "WHERE order_id = ?", (state_db.utcnow(), o["order_id"]))
            return
        if o["order_type"] == LIMIT and self.fills_at_next_open:
            # decided from the close: waits for the next session's open, fills there inside its
            # limit (order_prices.collar_fill) or expires (_fill_at_open)
            self._check_rules(o, float(o["limit_price"]), reference, projected=True)
            self.conn.execute("UPDATE paper_orders SET status = 'WORKING', updated_at = ? "
                              "WHERE order_id = ?", (state_db.utcnow(), o["order_id"]))
            return
        if o["order_type"] == LIMIT:
            limit = float(o["limit_price"])
            buying = o["side"] in BUY_SIDES
            marketable = reference <= limit if buying else reference >= limit
            if not marketable:
                self._check_rules(o, limit, reference, projected=True)
                self.conn.execute("UPDATE paper_orders SET status = 'WORKING', updated_at = ? "
                                  "WHERE order_id = ?", (state_db.utcnow(), o["order_id"]))
                return
            fill = order_prices.within_limit("buy" if buying else "sell", fill, limit)
        elif self.fills_at_next_open:
            # decided from the close of price_row's session: fills at the next session's open,
            # after the orders placed before it (a reversal's cover, then its buy, as the backtest)
            self._check_rules(o, fill, reference, projected=True)
            self.conn.execute("UPDATE paper_orders SET status = 'WORKING', updated_at = ? "
                              "WHERE order_id = ?", (state_db.utcnow(), o["order_id"]))
            return
        self._apply_fill(o, reference, fill, day)

    def _pending_before(self, o: dict) -> tuple[int, float, float]:
        """What the WORKING market orders placed before ``o`` will do when they fill (at the last
        reference prices): (shares of ``o``'s symbol, cash, short market value) changes."""
        if not self.fills_at_next_open:
            return 0, 0.0, 0.0
        prices = self._prices()
        shares, cash, short = 0, 0.0, 0.0
        for p in self.conn.execute("SELECT symbol, side, quantity FROM paper_orders WHERE status = 'WORKING' "
                                   "AND order_type IN ('MARKET', 'LIMIT') AND seq < "
                                   "(SELECT seq FROM paper_orders WHERE order_id = ?)", (o["order_id"],)):
            qty, ref = int(p["quantity"]), float(prices.get(p["symbol"], 0.0))
            buying = p["side"] in BUY_SIDES
            cash += (-1 if buying else 1) * qty * self._slipped(ref, p["side"]) - self._commission(qty)
            short += {SELL_SHORT: qty * ref, BUY_TO_COVER: -qty * ref}.get(p["side"], 0.0)
            if p["symbol"] == o["symbol"]:
                shares += qty if buying else -qty
        return shares, cash, short

    def _check_rules(self, o: dict, price: float, reference: float, projected: bool = False) -> None:
        """``_Reject`` when a rule forbids ``o`` now; ``projected``: as it will stand when ``o``
        fills, after the pending orders placed before it (``_pending_before``)."""
        symbol, side, qty = o["symbol"], o["side"], int(o["quantity"])
        row = self.conn.execute("SELECT quantity FROM paper_positions WHERE symbol = ?", (symbol,)).fetchone()
        held = int(row["quantity"]) if row else 0
        commission = self._commission(qty)
        cash, _, short_mv = self._valuation()
        if projected:
            d_held, d_cash, d_short = self._pending_before(o)
            held, cash, short_mv = held + d_held, cash + d_cash, max(short_mv + d_short, 0.0)
        buying_power = self._buying_power(cash, short_mv, allow_negative=True)
        if side == BUY:
            if held < 0:
                raise _Reject(f"{symbol} is held short ({held}): use BUY_TO_COVER")
            cost = qty * price + commission
            if cost > buying_power + 1e-9:
                raise _Reject(f"insufficient cash: the buy needs {money(cost)}, buying power is "
                              f"{money(max(buying_power, 0))}")
        elif side == SELL:
            if held <= 0 or qty > held:
                raise _Reject(f"selling {qty} {symbol} but {max(held, 0)} are held (use SELL_SHORT to short)")
        elif side == SELL_SHORT:
            if settlement.account_type_of({"account_type": C.PAPER_ACCOUNT_TYPE}) == settlement.CASH:
                raise _Reject(f"{settlement.NO_SHORTS} (SELL_SHORT {qty} {symbol})")
            if held > 0:
                raise _Reject(f"{symbol} is held long ({held}): SELL it before shorting")
            events = self._events(symbol)
            if events["recalled"]:
                raise _Reject(f"{symbol} shares were recalled by the lender: cannot short")
            if events["shortable"] is False:
                raise _Reject(f"{symbol} is not shortable")
            after = self._buying_power(cash + qty * price - commission, short_mv + qty * reference,
                                       allow_negative=True)
            if after < -1e-9:
                raise _Reject(f"insufficient margin to short {qty} {symbol}: buying power "
                              f"{money(max(buying_power, 0))}")
        elif side == BUY_TO_COVER:
            if held >= 0 or qty > -held:
                raise _Reject(f"covering {qty} {symbol} but the short position is {max(-held, 0)}")

    def _apply_fill(self, o: dict, reference: float, fill: float, day: date) -> None:
        self._check_rules(o, fill, reference)
        symbol, side, qty = o["symbol"], o["side"], int(o["quantity"])
        now = state_db.utcnow()
        if side == BUY_TO_COVER:
            self._accrue_position(symbol, day)       # borrow owed up to the cover
        row = self.conn.execute("SELECT * FROM paper_positions WHERE symbol = ?", (symbol,)).fetchone()
        held = int(row["quantity"]) if row else 0
        avg = float(row["avg_price"]) if row else 0.0
        accrued_to = row["borrow_accrued_to"] if row else None
        commission = self._commission(qty)
        notional = qty * fill
        if side in BUY_SIDES:
            cash_delta = -notional - commission
            new_qty = held + qty
        else:
            cash_delta = notional - commission
            new_qty = held - qty
        if side in OPENING_SIDES:                       # opening or extending: new average price
            new_avg = (abs(held) * avg + qty * fill) / abs(new_qty)
        else:
            new_avg = avg
        if side == SELL_SHORT and accrued_to is None:
            accrued_to = day.isoformat()
        if new_qty == 0:
            self.conn.execute("DELETE FROM paper_positions WHERE symbol = ?", (symbol,))
        else:
            self.conn.execute(
                "INSERT INTO paper_positions(symbol, quantity, avg_price, borrow_accrued_to, updated_at) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT(symbol) DO UPDATE SET quantity = excluded.quantity, "
                "avg_price = excluded.avg_price, borrow_accrued_to = excluded.borrow_accrued_to, "
                "updated_at = excluded.updated_at",
                (symbol, new_qty, round(new_avg, 6), accrued_to if new_qty < 0 else None, now))
        if settlement.account_type_of({"account_type": C.PAPER_ACCOUNT_TYPE}) == settlement.CASH:
            self._settle_fill(o, symbol, side, self._cash(), cash_delta, day)
        self.conn.execute("UPDATE paper_account SET cash = cash + ?, updated_at = ? WHERE id = 1",
                          (cash_delta, now))
        self.conn.execute(
            "UPDATE paper_orders SET status = 'FILLED', filled_quantity = ?, avg_fill_price = ?, "
            "updated_at = ? WHERE order_id = ?", (qty, fill, now, o["order_id"]))
        self.conn.execute(
            "INSERT INTO paper_fills(order_id, symbol, side, quantity, reference_price, price, "
            "commission, trade_date, filled_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (o["order_id"], symbol, side, qty, reference, fill, commission, day.isoformat(), now))
        self.conn.execute(
            "INSERT INTO paper_ledger(at, trade_date, kind, symbol, amount, note) VALUES (?, ?, ?, ?, ?, ?)",
            (now, day.isoformat(), "trade", symbol, cash_delta,
             f"{side} {qty} @ {fill:.4f} (reference {reference:.4f}, commission {commission:.2f})"))

    def get_order(self, order_id) -> dict:
        row = self.conn.execute("SELECT * FROM paper_orders WHERE order_id = ?", (str(order_id),)).fetchone()
        if row is None:
            raise OrderNotFoundError(f"no paper order {order_id}")
        return self._order_dict(row)

    def cancel_order(self, order_id) -> None:
        with state_db.transaction(self.conn):
            row = self.conn.execute("SELECT status FROM paper_orders WHERE order_id = ?",
                                    (str(order_id),)).fetchone()
            if row is None:
                raise OrderNotFoundError(f"no paper order {order_id}")
            if row["status"] == "CANCELED":
                return
            if row["status"] not in OPEN_STATUSES:
                raise OrderRejectedError(f"paper order {order_id} is {row['status']}: cannot cancel")
            self.conn.execute("UPDATE paper_orders SET status = 'CANCELED', updated_at = ? "
                              "WHERE order_id = ?", (state_db.utcnow(), str(order_id)))
        log.info("Paper order %s canceled", order_id)

    def get_open_orders(self) -> list[dict]:
        marks = ", ".join("?" * len(OPEN_STATUSES))
        return [self._order_dict(r) for r in self.conn.execute(
            f"SELECT * FROM paper_orders WHERE status IN ({marks}) ORDER BY seq", tuple(OPEN_STATUSES))]

    def broker_time(self) -> None:
        """None: the paper broker runs on this machine's clock and has none of its own to compare."""
        return None

    def get_orders_since(self, dt, reach=None) -> list[dict]:
        """Every order entered at or after ``dt``, oldest first (the window has no end, so ``reach``
        changes nothing); ``server_time`` becomes the paper broker's clock at this answer (like
        Schwab's HTTP ``Date``)."""
        since = to_utc(dt)
        self.server_time = datetime.now(UTC)
        orders = [self._order_dict(r) for r in self.conn.execute("SELECT * FROM paper_orders ORDER BY seq")]
        return [o for o in orders if o["entered_time"] >= since]

    # ------------------------------------------------------------------ transactions (reconciliation)
    # paper_account_events.kind -> (Schwab's transaction type, description) in broker_base's shape
    _EVENT_TYPES = {"SPLIT": ("RECEIVE_AND_DELIVER", "STOCK SPLIT"),
                    "DIVIDEND": ("DIVIDEND_OR_INTEREST", "DIVIDEND"),
                    "INTEREST": ("DIVIDEND_OR_INTEREST", "INTEREST"),
                    "FEE": ("JOURNAL", "FEE"), "JOURNAL": ("JOURNAL", "JOURNAL")}

    def get_transactions(self, start, end) -> list[dict]:
        """The paper account's transactions in ``broker_base``'s shape: a TRADE per fill (its cash
        with the commission), a fee per borrow-fee charge (both from ``start`` to ``end`` by the
        time they were written), and every row of ``paper_account_events`` (few; their date is the
        effective date of a simulated action, so all are listed: the reconciler skips those seen)."""
        since = to_utc(start).isoformat(timespec="seconds")
        until = to_utc(end).isoformat(timespec="seconds")
        out = []
        for r in self.conn.execute("SELECT * FROM paper_fills WHERE filled_at >= ? AND filled_at <= ? "
                                   "ORDER BY id", (since, until)):
            signed = signed_quantity(r["side"], r["quantity"])
            out.append({"id": f"fill-{r['id']}", "type": "TRADE", "time": parse_time(r["filled_at"]),
                        "order_id": str(r["order_id"]), "symbol": r["symbol"],
                        "quantity": {r["symbol"]: signed}, "fee": False,
                        "cash": round(-signed * float(r["price"]) - float(r["commission"]), 6),
                        "description": f"{r['side']} {r['quantity']} {r['symbol']} @ {r['price']:.4f}"})
        for r in self.conn.execute("SELECT * FROM paper_ledger WHERE kind = 'borrow_fee' AND at >= ? "
                                   "AND at <= ? ORDER BY id", (since, until)):
            out.append({"id": f"ledger-{r['id']}", "type": "JOURNAL", "time": parse_time(r["at"]),
                        "order_id": None, "symbol": r["symbol"], "quantity": {}, "fee": True,
                        "cash": float(r["amount"]), "description": f"BORROW FEE {r['note'] or ''}".strip()})
        for r in self.conn.execute("SELECT * FROM paper_account_events ORDER BY id"):
            kind, text = self._EVENT_TYPES.get(str(r["kind"]).upper(), ("UNKNOWN", str(r["kind"])))
            qty = int(r["quantity_change"] or 0)
            out.append({"id": f"event-{r['id']}", "type": kind, "time": None, "order_id": None,
                        "symbol": r["symbol"], "quantity": {r["symbol"]: qty} if r["symbol"] and qty else {},
                        "fee": str(r["kind"]).upper() == "FEE", "cash": float(r["cash_change"] or 0.0),
                        "description": f"{text} {r['effective_date']} {r['note'] or ''}".strip()})
        # the splits and dividends applied by apply_corporate_actions: the quantity when applied, the
        # cash (a dividend, cash in lieu) once it moved on the pay date, as two transactions so that
        # neither is marked seen before it happened
        for r in self.conn.execute("SELECT * FROM paper_corporate_actions ORDER BY id"):
            kind, text = self._EVENT_TYPES[str(r["kind"]).upper()]
            about = f"{text} {r['symbol']} ex-date {r['ex_date']}: {r['note']}"
            if int(r["quantity_change"] or 0):
                out.append({"id": f"action-{r['id']}-quantity", "type": kind, "time": None, "order_id": None,
                            "symbol": r["symbol"], "quantity": {r["symbol"]: int(r["quantity_change"])},
                            "fee": False, "cash": 0.0, "description": about})
            if r["cash_applied_on"] is not None and float(r["cash_change"] or 0.0):
                out.append({"id": f"action-{r['id']}-cash", "type": kind, "time": None, "order_id": None,
                            "symbol": r["symbol"], "quantity": {}, "fee": False,
                            "cash": float(r["cash_change"]), "description": f"{about} (paid {r['cash_applied_on']})"})
        return out

    def record_account_event(self, kind: str, symbol: str | None, quantity_change: int, cash_change: float,
                             effective_date, note: str = "") -> int:
        """Apply a cash/quantity event to the paper account and write its ``paper_account_events``
        row, in one transaction (a journal, a fee, interest; splits and dividends likewise)."""
        day = _as_date(effective_date).isoformat()
        now = state_db.utcnow()
        with state_db.transaction(self.conn):
            if symbol and quantity_change:
                row = self.conn.execute("SELECT quantity FROM paper_positions WHERE symbol = ?",
                                        (symbol,)).fetchone()
                if row is None:
                    raise ValueError(f"no paper position in {symbol} to change by {quantity_change:+d}")
                self.conn.execute("UPDATE paper_positions SET quantity = quantity + ?, updated_at = ? "
                                  "WHERE symbol = ?", (int(quantity_change), now, symbol))
            if cash_change:
                self.conn.execute("UPDATE paper_account SET cash = cash + ?, updated_at = ? WHERE id = 1",
                                  (float(cash_change), now))
            cur = self.conn.execute(
                "INSERT INTO paper_account_events(kind, symbol, quantity_change, cash_change, effective_date, note)"
                " VALUES (?,?,?,?,?,?)", (kind.upper(), symbol, int(quantity_change), float(cash_change), day, note))
        return int(cur.lastrowid or 0)

    # ------------------------------------------------------------------ borrow fees
    def _accrue_position(self, symbol: str, day: date) -> float:
        """Inside a transaction: charge the borrow fee of one short from its last accrual to ``day``."""
        row = self.conn.execute("SELECT * FROM paper_positions WHERE symbol = ?", (symbol,)).fetchone()
        if row is None or row["quantity"] >= 0:
            return 0.0
        start = date.fromisoformat(row["borrow_accrued_to"]) if row["borrow_accrued_to"] else day
        days = (day - start).days
        if days <= 0:
            return 0.0
        price_row = self.conn.execute("SELECT price FROM paper_prices WHERE symbol = ?", (symbol,)).fetchone()
        price = float(price_row["price"]) if price_row else float(row["avg_price"])
        rate, _ = self._borrow(symbol)
        day_count = self.settings.borrow_day_count
        fee = round(borrow_fee(row["quantity"], price, rate, days, day_count), 6)
        now = state_db.utcnow()
        self.conn.execute("UPDATE paper_account SET cash = cash - ?, last_borrow_accrual = ?, "
                          "updated_at = ? WHERE id = 1", (fee, day.isoformat(), now))
        self.conn.execute("UPDATE paper_positions SET borrow_accrued_to = ?, updated_at = ? "
                          "WHERE symbol = ?", (day.isoformat(), now, symbol))
        self.conn.execute(
            "INSERT INTO paper_ledger(at, trade_date, kind, symbol, amount, note) VALUES (?, ?, ?, ?, ?, ?)",
            (now, day.isoformat(), "borrow_fee", symbol, -fee,
             f"{-row['quantity']} sh x {price:.4f} x {rate:.4%}/yr x {days} d / {day_count}"))
        log.info("Paper borrow fee %s: %d sh x $%.2f at borrow rate %.2f%%/yr for %d days = $%.2f",
                 symbol, -row["quantity"], price, rate * 100, days, fee)
        return fee

    def accrue_borrow_fees(self, as_of=None) -> dict:
        """Charge every short its borrow fee for the calendar days since its last accrual (or since
        it was opened) up to ``as_of`` (default today). Returns {symbol: fee charged}. Calling it
        twice for the same day charges nothing the second time."""
        day = _as_date(as_of)
        fees = {}
        with state_db.transaction(self.conn):
            shorts = [r["symbol"] for r in self.conn.execute(
                "SELECT symbol FROM paper_positions WHERE quantity < 0 ORDER BY symbol")]
            for symbol in shorts:
                fee = self._accrue_position(symbol, day)
                if fee:
                    fees[symbol] = fee
            self.conn.execute("UPDATE paper_account SET last_borrow_accrual = ? WHERE id = 1",
                              (day.isoformat(),))
        return fees

    def last_borrow_accrual(self) -> date | None:
        row = self.conn.execute("SELECT last_borrow_accrual FROM paper_account WHERE id = 1").fetchone()
        return parse_date(row["last_borrow_accrual"]) if row else None


