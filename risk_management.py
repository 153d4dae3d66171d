"""Risk management: what may be traded, how much, and when trading must stop opening positions.

Read top to bottom:

1. **Data shapes** -- ``Portfolio`` (the account as the risk checks see it) and the order dict
   ``{"symbol", "side", "quantity", "price"}`` live in ``portfolio.py``.
2. **Sizing** -- ``size_position`` (whole shares from equity, signal strength and volatility),
   ``target_positions`` (signals -> target signed shares) and ``orders_for_targets`` (current ->
   target as orders). The live cycle and the backtest both use these: one implementation.
3. **Pre-trade check** -- ``RiskManager.pre_trade_check(order, portfolio) -> (approved, reason)``.
   Orders that only reduce risk (SELL of a long, BUY_TO_COVER of a short) pass every limit; only
   the sanity of their quantity is checked. Orders that open or add risk (BUY, SELL_SHORT) must pass
   every limit in constants.py ("risk limits" and "shorts" sections).
4. **Halts** -- ``RiskManager.update_equity(equity, as_of)`` keeps the equity peak and the day's
   starting equity in the state DB. Past ``MAX_DRAWDOWN`` from the peak it logs
   ``MAX DRAWDOWN REACHED`` and sets a persistent halt that only a person clears, with
   ``python risk_management.py reset-drawdown --reason "..."`` (audited). Past ``DAILY_LOSS_LIMIT``
   of the day's starting equity it logs ``DAILY LOSS LIMIT REACHED`` and halts until the next day.
   A halt blocks opening orders, never reducing or closing ones.
5. **Shorts** (``short_rules.ShortRules``, which the RiskManager holds as ``shorts``) --
   ``RiskManager.forced_buyins(portfolio)`` closes shorts the broker recalled (``BROKER RECALL``),
   that became hard to borrow (``HARD TO BORROW``, ``borrow rate``) or whose ex-dividend date is
   near, logging ``Forced buy-in triggered``. Repeated forced buy-ins put a symbol on the
   persistent do-not-short list.
6. **CLI** -- ``python risk_management.py status | reset-drawdown | reset-daily-loss | do-not-short``.

Every limit comes from the ``settings.TradingSettings`` the RiskManager is given (default: built
from ``constants.py``); the sizing functions take one too.

State lives in the state DB (``state/trading_state.db`` under TRADING_HOME, or any connection the
caller passes, such as the backtest's ``state_db.connect(":memory:")``):

* kv keys ``risk_equity_peak`` ``{"equity", "date"}``, ``risk_last_equity`` ``{"equity", "date"}``,
  ``risk_day_start`` ``{"equity", "date"}``, ``risk_drawdown_halt`` ``{...} | null``,
  ``risk_daily_halt`` ``{..., "date"} | null``;
* table ``risk_forced_buyins`` (one row per forced buy-in) and table ``risk_do_not_short``.
"""
from __future__ import annotations

import argparse
import logging
import math
import numbers
import sys

import numpy as np

import alerts
import clock
import config
import constants as C
import logging_setup
import reconcile_breaks
import settlement
import state_db
from audit_logging import AuditLogger
from broker_base import BUY, BUY_TO_COVER, SELL, SELL_SHORT, SIDES
from errors import install_excepthook
from portfolio import EPS as _EPS, Portfolio, apply_fill, fill_into, make_order, price_of
from portfolio import finite as _finite, money as _money, pct as _pct, to_date as _to_date
from settings import TradingSettings, default_settings
from short_rules import Audit, ShortRules, audit_event, short_entry_problem
from signals import BUY as SIGNAL_BUY, HOLD as SIGNAL_HOLD, SELL as SIGNAL_SELL

log = logging.getLogger("risk")


KEY_PEAK = "risk_equity_peak"
KEY_LAST = "risk_last_equity"
KEY_DAY_START = "risk_day_start"
KEY_DRAWDOWN_HALT = "risk_drawdown_halt"
KEY_DAILY_HALT = "risk_daily_halt"

# =========================================================================== data shapes

class NullAudit:
    """An audit object that records nothing (the backtest's choice)."""

    def log_event(self, action: str, status: str, details: dict) -> dict:
        return {}


# =========================================================================== small helpers

def _whole_shares(q) -> int | None:
    """The quantity as an int when it is a positive whole number, else None."""
    if type(q) is int:                            # the common case
        return q if q > 0 else None
    if isinstance(q, bool) or q is None:
        return None
    if isinstance(q, numbers.Integral):
        return int(q) if q > 0 else None
    if isinstance(q, numbers.Real) and math.isfinite(q) and float(q).is_integer() and q > 0:
        return int(q)
    return None


def _within(value: float, limit: float) -> bool:
    return value <= limit + _EPS * max(1.0, abs(limit))


def _sign(x: int) -> int:
    return (x > 0) - (x < 0)


# =========================================================================== sizing

def size_position(equity: float, price: float, score: float, volatility: float,
                  settings: TradingSettings | None = None) -> int:
    """Whole shares for one position.

    Risk ``RISK_PER_TRADE`` of equity per daily sigma (``volatility`` is the daily standard
    deviation of returns, a fraction such as 0.02), scaled by ``|score| / SIGNAL_THRESHOLD``
    capped at ``MAX_SIZE_SCALE``; the value is then capped by ``MAX_POSITION_PCT`` of equity and by
    ``MAX_ORDER_VALUE``. Returns 0 for a score below the threshold and for any bad input (NaN,
    infinite, zero or negative equity, price or volatility). Limits from ``settings`` (default:
    ``constants.py``).
    """
    if not (_finite(equity) and _finite(price) and _finite(score) and _finite(volatility)):
        return 0
    equity, price, score, volatility = float(equity), float(price), float(score), float(volatility)
    if equity <= 0 or price <= 0 or volatility <= 0:
        return 0
    scale = abs(score) / C.SIGNAL_THRESHOLD
    if scale < 1.0 - _EPS:
        return 0
    limits = settings or default_settings()
    scale = min(scale, limits.max_size_scale)
    value = equity * limits.risk_per_trade * scale / volatility
    value = min(value, limits.max_position_pct * equity, limits.max_order_value)
    return max(0, int(math.floor(value / price + _EPS)))


def _halt_clamp(current: int, target: int) -> int:
    """While halted, a target may only move toward flat (reduce or close), never open or add."""
    if target == current:
        return target
    if _sign(target) == _sign(current) and abs(target) <= abs(current):
        return target
    if _sign(target) != _sign(current) and current != 0:
        return 0                                  # closing part of a flip is allowed
    return current


def new_position_order(scores, symbols) -> np.ndarray:
    """THE order in which candidates get a new position (``_build_targets``, and the backtest's
    candidate pruning): strongest |score| first (a score that is not a finite number counts as
    0), ties by symbol. Returns the candidates' indices in that order."""
    strength = np.abs(np.asarray(scores, dtype=np.float64))
    strength[~np.isfinite(strength)] = 0.0
    return np.lexsort((np.asarray(symbols, dtype=str), -strength))


def room_for_new_positions(targets: dict[str, int], price, equity: float,
                           limits: TradingSettings) -> tuple[int, float]:
    """What is left for new positions after ``targets``: (free slots under ``max_positions``,
    gross exposure left under ``max_gross_exposure`` of equity, in USD). ``price(symbol)``: the
    price a target is valued at. A new position is granted only into a free slot, cut to the room
    left (``_build_targets``); the backtest's pruning stops widening its candidates when none is
    left."""
    slots = limits.max_positions - sum(1 for q in targets.values() if q != 0)
    gross = sum(abs(q) * (price(s) or 0.0) for s, q in targets.items() if q)
    return slots, limits.max_gross_exposure * max(equity, 0.0) - gross


def _build_targets(signals, portfolio: Portfolio, halted: bool, do_not_short,
                   limits: TradingSettings) -> dict[str, int]:
    current = {s: int(q) for s, q in portfolio.positions.items() if int(q) != 0}
    targets = dict(current)                       # symbols without a signal keep their position
    wanted: list[tuple[float | None, str, int]] = []
    px: dict[str, float] = {}                     # the price each target is valued at
    for sig in signals:
        symbol = sig["symbol"]
        action = str(sig.get("signal", SIGNAL_HOLD)).upper()
        cur = current.get(symbol, 0)
        if action == SIGNAL_HOLD:
            targets[symbol] = cur
            continue
        price = sig.get("price")
        if not _finite(price) or float(price) <= 0:
            price = price_of(portfolio, symbol)
        if price is not None:
            px[symbol] = float(price)
        shares = size_position(portfolio.equity, price, sig.get("score"), sig.get("volatility"), limits)
        if action == SIGNAL_BUY:
            target = shares
        elif action == SIGNAL_SELL:
            problem = short_entry_problem(symbol, portfolio, do_not_short, limits)
            if problem:
                log.info("No short target for %s: %s", symbol, problem)
                target = 0
            else:
                target = -shares
        else:
            log.warning("Unknown signal %r for %s: keeping the current position", action, symbol)
            target = cur
        if cur != 0 and target != 0 and _sign(cur) == _sign(target) \
                and abs(target - cur) < limits.rebalance_band * abs(cur):
            target = cur                          # a small resize is not worth the trade
        if halted:
            target = _halt_clamp(cur, target)
        if cur == 0 and target != 0:
            score = sig.get("score")
            wanted.append((float(score) if _finite(score) else None, symbol, target))
        else:
            targets[symbol] = target

    # New positions, strongest signals first (new_position_order), while slots and gross
    # exposure remain (room_for_new_positions).
    def valued_at(s):
        return px.get(s) or price_of(portfolio, s)
    order = new_position_order([w[0] for w in wanted], [w[1] for w in wanted]) if wanted else []
    for k in order:
        _, symbol, target = wanted[k]
        targets[symbol] = 0                       # not open yet: the room is what the others leave
        slots, room = room_for_new_positions(targets, valued_at, portfolio.equity, limits)
        if slots <= 0:
            log.info("No new position in %s: %d positions already (MAX_POSITIONS)", symbol,
                     limits.max_positions - slots)
            continue
        price = px.get(symbol) or 0.0
        if price > 0 and abs(target) * price > room:
            fitted = int(max(room, 0.0) // price)
            log.info("New position in %s cut from %d to %d shares by MAX_GROSS_EXPOSURE",
                     symbol, abs(target), fitted)
            target = _sign(target) * fitted
        targets[symbol] = target
    return targets


def orders_for_targets(targets: dict[str, int], portfolio: Portfolio) -> list[dict]:
    """Orders that move each symbol from its current signed position to its target.

    Risk-reducing orders (SELL, BUY_TO_COVER) come first, for every symbol, so they free buying
    power before opening orders (BUY, SELL_SHORT). A long -> short flip is SELL then SELL_SHORT; a
    short -> long flip is BUY_TO_COVER then BUY. The price is the latest price (or last close).
    """
    reducing, opening = [], []
    for symbol in sorted(targets):
        cur = int(portfolio.positions.get(symbol, 0))
        tgt = int(targets[symbol])
        if tgt == cur:
            continue
        price = price_of(portfolio, symbol)
        if price is None:
            log.error("No price for %s: cannot build orders toward target %d", symbol, tgt)
            continue
        if cur > 0 and tgt < cur:
            reducing.append(make_order(symbol, SELL, cur - max(tgt, 0), price))
        if cur < 0 and tgt > cur:
            reducing.append(make_order(symbol, BUY_TO_COVER, min(tgt, 0) - cur, price))
        if tgt > 0 and tgt > cur:
            opening.append(make_order(symbol, BUY, tgt - max(cur, 0), price))
        if tgt < 0 and tgt < cur:
            opening.append(make_order(symbol, SELL_SHORT, min(cur, 0) - tgt, price))
    return reducing + opening


# =========================================================================== pre-trade check steps
# (the ones that need no limit; RiskManager._check runs them with the rest)

def _parse_order(order) -> tuple[str, str, int] | str:
    """``(symbol, side, whole quantity)`` of a well-formed order, else why it is not one."""
    if not isinstance(order, dict):
        return f"order must be a dict, got {type(order).__name__}"
    symbol, side = order.get("symbol"), order.get("side")
    if not isinstance(symbol, str) or not symbol.strip():
        return f"order has no symbol: {order!r}"
    if side not in SIDES:
        return f"unknown side {side!r} for {symbol} (expected one of {', '.join(SIDES)})"
    qty = _whole_shares(order.get("quantity"))
    if qty is None:
        return (f"quantity {order.get('quantity')!r} for {side} {symbol} is not a positive "
                f"whole number of shares")
    return symbol, side, qty


def _check_reducing(symbol: str, side: str, qty: int, held: int) -> tuple[bool, str]:
    """A SELL of a long or a BUY_TO_COVER of a short: it must not exceed the position."""
    if side == SELL:
        if held <= 0:
            return False, (f"SELL {qty} {symbol}: no long position to sell (held {held}); "
                           f"use SELL_SHORT to open a short")
        if qty > held:
            return False, (f"SELL {qty} {symbol} exceeds the long position of {held} shares "
                           f"(a flip is SELL {held} then SELL_SHORT)")
        return True, f"approved: SELL {qty} {symbol} reduces a long of {held}"
    if held >= 0:
        return False, f"BUY_TO_COVER {qty} {symbol}: no short position to cover (held {held})"
    if qty > -held:
        return False, (f"BUY_TO_COVER {qty} {symbol} exceeds the short position of {-held} "
                       f"shares (a flip is BUY_TO_COVER {-held} then BUY)")
    return True, f"approved: BUY_TO_COVER {qty} {symbol} reduces a short of {-held}"


def _opening_problem(symbol: str, side: str, qty: int, held: int, price, pf: Portfolio) -> str | None:
    """An opening order against the wrong side of a position, a bad price or no equity."""
    if side == BUY and held < 0:
        return f"BUY {qty} {symbol} while short {-held}: cover first with BUY_TO_COVER"
    if side == SELL_SHORT and held > 0:
        return f"SELL_SHORT {qty} {symbol} while long {held}: SELL the long first"
    if not _finite(price) or float(price) <= 0:
        return f"{side} {qty} {symbol}: price {price!r} is not a positive number"
    if not _finite(pf.equity) or pf.equity <= 0:
        return f"{side} {qty} {symbol}: account equity {pf.equity!r} is not positive"
    return None


def _funds_problem(symbol: str, qty: int, side: str, value: float, pf: Portfolio) -> str | None:
    """The order's value against the buying power (or the cash when the broker gives none)."""
    if pf.buying_power is not None and _finite(pf.buying_power):
        available, what = float(pf.buying_power), "buying power"
    else:
        available, what = float(pf.cash), "cash"
    if _within(value, available):
        return None
    if side == BUY:
        return f"BUY {qty} {symbol}: order value {_money(value)} exceeds available {what} {_money(available)}"
    return (f"SELL_SHORT {qty} {symbol}: order value {_money(value)} exceeds available "
            f"{what} {_money(available)} (shorts need margin)")


# =========================================================================== the risk manager

class RiskManager:
    """Pre-trade checks, sizing, halts and forced buy-ins.

    ``conn``: a state-DB connection (default: ``state_db.connect()`` under TRADING_HOME, opened on
    first use). ``audit``: anything with ``log_event(action, status, details)`` (default: an
    ``audit_logging.AuditLogger`` created on first use; the backtest passes ``NullAudit()``).
    ``settings``: the limits (default: ``TradingSettings.from_constants()``). ``shorts``: the
    ``short_rules.ShortRules`` to use (default: one on ``conn`` and ``audit`` with ``settings``,
    made on first use).
    """

    def __init__(self, conn=None, audit: Audit | None = None, settings: TradingSettings | None = None,
                 shorts: ShortRules | None = None):
        self._conn = conn
        self._audit = audit
        self.settings = settings or (shorts.settings if shorts is not None else default_settings())
        self._shorts = shorts

    # ------------------------------------------------------------------ collaborators
    @property
    def conn(self):
        if self._conn is None:
            self._conn = state_db.connect()
        return self._conn

    @property
    def audit(self) -> Audit:
        if self._audit is None:
            self._audit = AuditLogger()
        return self._audit

    @property
    def shorts(self) -> ShortRules:
        """The do-not-short list and forced buy-ins (``short_rules.ShortRules``)."""
        if self._shorts is None:
            self._shorts = ShortRules(self.conn, self.audit, self.settings)
        return self._shorts

    def _audit_event(self, action: str, status: str, details: dict, required: bool = False) -> None:
        """Audit an event (``short_rules.audit_event``: a failure is logged; with ``required`` it
        is raised, so the caller's transaction rolls back and nothing happens unrecorded)."""
        audit_event(self.audit, action, status, details, required)

    # ------------------------------------------------------------------ short rules (ShortRules)
    def do_not_short(self) -> dict[str, dict]:
        """The do-not-short list: {symbol: {"reason", "source", "added_at"}}."""
        return self.shorts.do_not_short()

    def add_do_not_short(self, symbol: str, reason: str, source: str = "manual") -> bool:
        """Put ``symbol`` on the do-not-short list (audited); False when it was already there."""
        return self.shorts.add_do_not_short(symbol, reason, source)

    def remove_do_not_short(self, symbol: str, reason: str = "") -> bool:
        """Take ``symbol`` off the do-not-short list (audited); False when it was not there."""
        return self.shorts.remove_do_not_short(symbol, reason)

    def forced_buyins(self, portfolio: Portfolio) -> list[dict]:
        """BUY_TO_COVER orders for every short that must close now (``ShortRules.forced_buyins``)."""
        return self.shorts.forced_buyins(portfolio)

    def recent_forced_buyins(self, limit: int = 20) -> list[dict]:
        return self.shorts.recent_forced_buyins(limit)

    # ------------------------------------------------------------------ halt state
    # The halt state (kv keys KEY_*) is read and written only through these four methods: the
    # state DB by default; a replay (backtest_engine.ReplayRisk) keeps it in a dict instead.
    def _kv_get(self, key: str):
        return state_db.kv_get(self.conn, key)

    def _kv_set(self, key: str, value) -> None:
        state_db.kv_set(self.conn, key, value)

    def _kv_delete(self, key: str) -> None:
        state_db.kv_delete(self.conn, key)

    def _kv_transaction(self):
        return state_db.transaction(self.conn)

    # ------------------------------------------------------------------ halts
    def is_halted(self, as_of=None) -> tuple[bool, str]:
        """(True, reason) while opening trades are halted: a drawdown halt (until reset by a
        person) or a daily loss halt on ``as_of`` (default: today; the backtest passes its date)."""
        as_of = _to_date(as_of) or clock.today()
        dd = self._kv_get(KEY_DRAWDOWN_HALT)
        if dd:
            return True, (f"MAX DRAWDOWN REACHED on {dd['date']}: drawdown {_pct(dd['drawdown'])} from "
                          f"peak {_money(dd['peak'])} (limit {_pct(dd['limit'])}); reset with: "
                          f"python risk_management.py reset-drawdown --reason \"...\"")
        daily = self._kv_get(KEY_DAILY_HALT)
        if daily and daily.get("date") == as_of.isoformat():
            return True, (f"DAILY LOSS LIMIT REACHED on {daily['date']}: loss {_pct(daily['loss'])} "
                          f"from the day's start {_money(daily['day_start'])} "
                          f"(limit {_pct(daily['limit'])}); clears on the next day")
        block = reconcile_breaks.entry_block(self.conn)    # an open reconciliation break
        if block:
            return True, block
        return False, ""

    def update_equity(self, equity: float, as_of=None) -> dict:
        """Record the account equity at ``as_of`` (default today); set halts when a limit is hit.

        The peak is the highest equity recorded (re-based by a drawdown reset). The day's starting
        equity is the last equity recorded on an earlier day (the previous close), or the first
        equity of the day when there is none. Returns::

            {"as_of", "equity", "peak", "drawdown", "day_start_equity", "daily_loss",
             "drawdown_halt": bool, "daily_halt": bool, "halted": bool, "reason": str,
             "new_halts": [names set by this call]}
        """
        if not _finite(equity):
            raise ValueError(f"equity must be a finite number, got {equity!r}")
        equity = float(equity)
        as_of = _to_date(as_of) or clock.today()
        day = as_of.isoformat()
        new_halts, events = [], []
        with self._kv_transaction():
            peak = self._kv_get(KEY_PEAK)
            if peak is None or equity > peak["equity"]:
                peak = {"equity": equity, "date": day}
                self._kv_set(KEY_PEAK, peak)
            last = self._kv_get(KEY_LAST)
            day_start = self._kv_get(KEY_DAY_START)
            if day_start is None or day_start["date"] != day:
                base = last["equity"] if last and last["date"] < day else equity
                day_start = {"equity": base, "date": day}
                self._kv_set(KEY_DAY_START, day_start)
            self._kv_set(KEY_LAST, {"equity": equity, "date": day})

            p = peak["equity"]
            drawdown = (p - equity) / p if p > 0 else 0.0
            ds = day_start["equity"]
            daily_loss = (ds - equity) / ds if ds > 0 else 0.0

            dd_halt = self._kv_get(KEY_DRAWDOWN_HALT)
            if dd_halt is None and drawdown >= self.settings.max_drawdown - _EPS:
                dd_halt = {"date": day, "equity": equity, "peak": p, "peak_date": peak["date"],
                           "drawdown": drawdown, "limit": self.settings.max_drawdown,
                           "set_at": state_db.utcnow()}
                self._kv_set(KEY_DRAWDOWN_HALT, dd_halt)
                new_halts.append("max_drawdown")
                events.append(("max_drawdown", dd_halt))
            daily_halt = self._kv_get(KEY_DAILY_HALT)
            if daily_halt and daily_halt.get("date") != day:
                self._kv_delete(KEY_DAILY_HALT)
                log.info("Daily loss halt of %s cleared: new day %s", daily_halt.get("date"), day)
                daily_halt = None
            if daily_halt is None and daily_loss >= self.settings.daily_loss_limit - _EPS:
                daily_halt = {"date": day, "equity": equity, "day_start": ds, "loss": daily_loss,
                              "limit": self.settings.daily_loss_limit, "set_at": state_db.utcnow()}
                self._kv_set(KEY_DAILY_HALT, daily_halt)
                new_halts.append("daily_loss")
                events.append(("daily_loss", daily_halt))

        for name, details in events:
            if name == "max_drawdown":
                log.critical("MAX DRAWDOWN REACHED: drawdown %s from peak %s (limit %s); equity %s. "
                             "Opening trades halted until a person runs: python risk_management.py "
                             "reset-drawdown --reason \"...\"", _pct(details["drawdown"]),
                             _money(details["peak"]), _pct(details["limit"]), _money(equity))
                if not isinstance(self._audit, NullAudit):   # not a backtest's or a scratch account
                    alerts.send_alert("max_drawdown", f"drawdown {_pct(details['drawdown'])} from peak "
                                      f"{_money(details['peak'])} (limit {_pct(details['limit'])}), "
                                      f"equity {_money(equity)} on {day}: opening trades halted "
                                      f"until reset", key=day, replay=state_db.is_replay(self.conn))
            else:
                log.critical("DAILY LOSS LIMIT REACHED: loss %s from the day's start %s (limit %s); "
                             "equity %s. Opening trades halted for %s", _pct(details["loss"]),
                             _money(details["day_start"]), _pct(details["limit"]), _money(equity), day)
            self._audit_event("risk_halt", "halted", {"halt": name, **details})

        halted, reason = self.is_halted(as_of)
        if halted and not new_halts:
            log.warning("Opening trades remain halted: %s", reason)
        return {"as_of": day, "equity": equity, "peak": p, "drawdown": drawdown,
                "day_start_equity": ds, "daily_loss": daily_loss,
                "drawdown_halt": dd_halt is not None, "daily_halt": daily_halt is not None,
                "halted": halted, "reason": reason, "new_halts": new_halts}

    def reset_drawdown(self, reason: str, equity: float | None = None, by: str | None = None,
                       force: bool = False) -> dict:
        """Clear the drawdown halt (a person's decision, audited) and re-base the peak to the
        current equity (``equity``, else the last recorded one). Raises ValueError without a
        reason, and when no drawdown halt is set unless ``force`` (moving the peak while nothing
        is halted loosens the limit). The audit record is written first: if it cannot be
        written, nothing changes."""
        reason = (reason or "").strip()
        if not reason:
            raise ValueError("a reason is required to reset the drawdown halt")
        if equity is not None and (not _finite(equity) or float(equity) <= 0):
            raise ValueError(f"equity must be a positive number, got {equity!r}")
        by = by or config.operator()
        halt = self._kv_get(KEY_DRAWDOWN_HALT)
        old_peak = self._kv_get(KEY_PEAK)
        if halt is None and not force:
            peak = _money(old_peak["equity"]) if old_peak else "none recorded"
            raise ValueError(f"nothing to reset: no max-drawdown halt is set (equity peak {peak}); add --force "
                             "to re-base the peak anyway")
        last = self._kv_get(KEY_LAST)
        if equity is not None:
            new_peak = {"equity": float(equity), "date": clock.today().isoformat()}
        elif last:
            new_peak = {"equity": last["equity"], "date": last["date"]}
        else:
            new_peak = None                       # the next recorded equity becomes the peak
        base = new_peak["equity"] if new_peak else None
        details = {"halt": "max_drawdown", "reason": reason, "by": by, "was_halted": halt is not None,
                   "previous_halt": halt, "old_peak": old_peak, "new_peak": new_peak}
        self._audit_event("risk_halt_reset", "reset", details, required=True)
        with self._kv_transaction():
            if new_peak is not None:
                self._kv_set(KEY_PEAK, new_peak)
            else:
                self._kv_delete(KEY_PEAK)
            self._kv_delete(KEY_DRAWDOWN_HALT)
        log.warning("Drawdown halt reset by %s (%s); peak re-based to %s; was halted: %s",
                    by, reason, _money(base) if base is not None else "next recorded equity",
                    halt is not None)
        return details

    def reset_daily_loss(self, reason: str, by: str | None = None) -> dict:
        """Clear today's daily loss halt before the day ends (a person's decision, audited first)."""
        reason = (reason or "").strip()
        if not reason:
            raise ValueError("a reason is required to reset the daily loss halt")
        by = by or config.operator()
        halt = self._kv_get(KEY_DAILY_HALT)
        details = {"halt": "daily_loss", "reason": reason, "by": by,
                   "was_halted": halt is not None, "previous_halt": halt}
        self._audit_event("risk_halt_reset", "reset", details, required=True)
        with self._kv_transaction():
            self._kv_delete(KEY_DAILY_HALT)
        log.warning("Daily loss halt reset by %s (%s); was halted: %s", by, reason, halt is not None)
        return details

    # ------------------------------------------------------------------ pre-trade check
    def pre_trade_check(self, order: dict, portfolio: Portfolio) -> tuple[bool, str]:
        """(approved, reason) for one order against the portfolio before it is sent.

        Every order: a known side, a symbol, a positive whole quantity, then a cash account's rules
        (``settlement.order_problem``: no shorts, buys from settled cash, no good-faith violation). Reducing orders (SELL of a
        long, BUY_TO_COVER of a short) must not exceed the position; nothing else is checked.
        Opening orders (BUY, SELL_SHORT) must also pass, in this order: a positive price, no halt,
        the short rules (SELL_SHORT), price sanity against the last close, MAX_ORDER_VALUE,
        cash/buying power, MAX_POSITION_PCT, MAX_POSITIONS and MAX_GROSS_EXPOSURE.
        """
        approved, reason = self._check(order, portfolio)
        if not approved:
            log.warning("Order rejected by risk check: %s", reason)
        return approved, reason

    def check_orders(self, orders: list[dict], portfolio: Portfolio) -> list[tuple[dict, bool, str]]:
        """Check a batch in sequence: each approved order is applied to a projected portfolio
        before the next is checked (so a flip's SELL_SHORT sees the long already sold)."""
        results = []
        projected = portfolio
        for order in orders:
            ok, reason = self.pre_trade_check(order, projected)
            results.append((order, ok, reason))
            if ok:
                if projected is portfolio:
                    projected = apply_fill(portfolio, order)      # one copy for the batch ...
                else:
                    fill_into(projected, order)                   # ... then moved in place
        return results

    def _check(self, order: dict, pf: Portfolio) -> tuple[bool, str]:
        """The pre-trade check, one named step a line; the first problem found is the reason."""
        parsed = _parse_order(order)
        if isinstance(parsed, str):
            return False, parsed
        symbol, side, qty = parsed
        held = int(pf.positions.get(symbol, 0))
        problem = settlement.order_problem(symbol, side, qty, order.get("price"), pf)   # a cash account's rules
        if problem:
            return False, problem
        if side in (SELL, BUY_TO_COVER):                  # risk-reducing: quantity sanity only
            return _check_reducing(symbol, side, qty, held)
        problem = _opening_problem(symbol, side, qty, held, order.get("price"), pf)
        if problem:
            return False, problem
        head = f"{side} {qty} {symbol}"                    # how every later reason starts
        price, equity = float(order["price"]), float(pf.equity)
        value = qty * price
        new_qty = held + (qty if side == BUY else -qty)
        position_value = abs(new_qty) * price
        problem = (self._halt_problem(head, pf)
                   or self._short_problem(symbol, qty, side, pf)
                   or self._price_sanity_problem(head, symbol, price, pf)
                   or self._order_value_problem(head, value)
                   or _funds_problem(symbol, qty, side, value, pf)
                   or self._position_problem(head, position_value, equity)
                   or self._position_count_problem(head, held, pf))
        if problem:
            return False, problem
        gross, problem = self._gross_exposure(head, symbol, position_value, equity, pf)
        if problem:
            return False, problem
        return True, (f"approved: {side} {qty} {symbol} @ {_money(price)} ({_money(value)}) within all "
                      f"limits; position {_pct(position_value / equity)}, gross {_pct(gross / equity)} of equity")

    # The steps of an opening order's check: each returns the rejection reason, or None.
    def _halt_problem(self, head: str, pf: Portfolio) -> str | None:
        halted, why = self.is_halted(pf.as_of)
        return f"{head} blocked, opening trades halted: {why}" if halted else None

    def _short_problem(self, symbol: str, qty: int, side: str, pf: Portfolio) -> str | None:
        if side != SELL_SHORT:
            return None
        problem = short_entry_problem(symbol, pf, self.do_not_short(), self.settings)
        return f"SELL_SHORT {qty} {symbol} rejected: {problem}" if problem else None

    def _price_sanity_problem(self, head: str, symbol: str, price: float, pf: Portfolio) -> str | None:
        last = pf.last_close.get(symbol)
        if last is None or not _finite(last) or float(last) <= 0:
            return f"{head}: no last close to check the price {_money(price)} against"
        limit = self.settings.price_sanity_pct
        deviation = abs(price - float(last)) / float(last)
        if not _within(deviation, limit):
            return (f"{head}: price {_money(price)} is {_pct(deviation)} from the "
                    f"last close {_money(float(last))} (PRICE_SANITY_PCT limit {_pct(limit)})")
        return None

    def _order_value_problem(self, head: str, value: float) -> str | None:
        limit = self.settings.max_order_value
        if not _within(value, limit):
            return f"{head}: order value {_money(value)} exceeds MAX_ORDER_VALUE {_money(limit)}"
        return None

    def _position_problem(self, head: str, position_value: float, equity: float) -> str | None:
        pct_limit = self.settings.max_position_pct
        limit = pct_limit * equity
        if not _within(position_value, limit):
            return (f"{head}: position after the order {_money(position_value)} "
                    f"({_pct(position_value / equity)} of equity {_money(equity)}) exceeds "
                    f"MAX_POSITION_PCT {_pct(pct_limit)} = {_money(limit)}")
        return None

    def _position_count_problem(self, head: str, held: int, pf: Portfolio) -> str | None:
        if held != 0:
            return None                                   # adds to an open position
        open_count = sum(1 for q in pf.positions.values() if int(q) != 0)
        limit = self.settings.max_positions
        if open_count >= limit:
            return f"{head}: would open position {open_count + 1}; MAX_POSITIONS is {limit}"
        return None

    def _gross_exposure(self, head: str, symbol: str, position_value: float, equity: float,
                        pf: Portfolio) -> tuple[float, str | None]:
        """The gross exposure after the order, and why it is too high (or None)."""
        gross = position_value
        latest = pf.prices
        for s, q in pf.positions.items():
            if s == symbol or int(q) == 0:
                continue
            p = latest.get(s)
            if not (type(p) is float and 0.0 < p < math.inf):   # else what price_of finds (checked per order)
                p = price_of(pf, s)
                if p is None:
                    return gross, f"{head}: no price for held position {s}; cannot compute exposure"
            gross += abs(int(q)) * p
        pct_limit = self.settings.max_gross_exposure
        gross_limit = pct_limit * equity
        if not _within(gross, gross_limit):
            return gross, (f"{head}: gross exposure after the order {_money(gross)} "
                           f"({_pct(gross / equity)} of equity) exceeds MAX_GROSS_EXPOSURE "
                           f"{_pct(pct_limit)} = {_money(gross_limit)}")
        return gross, None

    # ------------------------------------------------------------------ targets
    def target_positions(self, signals: list[dict], portfolio: Portfolio) -> dict[str, int]:
        """Target signed shares per symbol from signals ``{symbol, signal, score, price,
        volatility}``: BUY -> long of ``size_position`` shares; SELL -> short of that size when
        shorts are allowed and a new short passes the short rules, else flat; HOLD -> keep. Held
        symbols without a signal are kept. A same-side change within REBALANCE_BAND is not traded.
        While halted a target only moves toward flat. New positions are taken strongest |score|
        first while MAX_POSITIONS and MAX_GROSS_EXPOSURE allow."""
        halted, why = self.is_halted(portfolio.as_of)
        if halted:
            log.warning("Targets limited to reducing/closing: %s", why)
        return _build_targets(signals, portfolio, halted, self.do_not_short(), self.settings)

    def orders_for_targets(self, targets: dict[str, int], portfolio: Portfolio) -> list[dict]:
        return orders_for_targets(targets, portfolio)

    def size_position(self, equity: float, price: float, score: float, volatility: float) -> int:
        """``size_position`` with this manager's limits."""
        return size_position(equity, price, score, volatility, self.settings)

    # ------------------------------------------------------------------ status
    def status(self, as_of=None) -> dict:
        """Everything the ``status`` command prints, as a dict."""
        peak = self._kv_get(KEY_PEAK)
        last = self._kv_get(KEY_LAST)
        day_start = self._kv_get(KEY_DAY_START)
        drawdown = None
        if peak and last and peak["equity"] > 0:
            drawdown = (peak["equity"] - last["equity"]) / peak["equity"]
        halted, reason = self.is_halted(as_of)
        return {"peak": peak, "last_equity": last, "day_start": day_start, "drawdown": drawdown,
                "drawdown_halt": self._kv_get(KEY_DRAWDOWN_HALT),
                "daily_halt": self._kv_get(KEY_DAILY_HALT),
                "halted": halted, "reason": reason, "do_not_short": self.do_not_short(),
                "recent_forced_buyins": self.recent_forced_buyins(10)}


# =========================================================================== CLI

def _print_status(rm: RiskManager) -> None:
    s = rm.status()
    peak, last = s["peak"], s["last_equity"]
    print(f"Equity peak:        {_money(peak['equity']) + ' on ' + peak['date'] if peak else 'none recorded'}")
    print(f"Last equity:        {_money(last['equity']) + ' on ' + last['date'] if last else 'none recorded'}")
    dd = s["drawdown"]
    print(f"Current drawdown:   {_pct(dd) if dd is not None else 'n/a'} (limit {_pct(rm.settings.max_drawdown)}, MAX_DRAWDOWN)")
    ds = s["day_start"]
    if ds and last and ds["equity"] > 0 and ds["date"] == last["date"]:
        print(f"Day's loss:         {_pct((ds['equity'] - last['equity']) / ds['equity'])} of "
              f"{_money(ds['equity'])} on {ds['date']} (limit {_pct(rm.settings.daily_loss_limit)}, DAILY_LOSS_LIMIT)")
    dd_halt = s["drawdown_halt"]
    print("Drawdown halt:      " + (f"SET on {dd_halt['date']} (drawdown {_pct(dd_halt['drawdown'])} from peak "
                                    f"{_money(dd_halt['peak'])}); reset: python risk_management.py "
                                    f"reset-drawdown --reason \"...\"" if dd_halt else "none"))
    daily = s["daily_halt"]
    if daily and daily.get("date") == clock.today().isoformat():
        print(f"Daily loss halt:    SET for {daily['date']} (loss {_pct(daily['loss'])}); clears tomorrow")
    else:
        print("Daily loss halt:    none" + (f" (last one {daily['date']}, expired)" if daily else ""))
    print(f"Opening trades:     {'HALTED: ' + s['reason'] if s['halted'] else 'allowed'}")
    dns = s["do_not_short"]
    print(f"Do-not-short list:  {', '.join(dns) if dns else 'empty'}")
    for sym, info in dns.items():
        print(f"  {sym}: {info['reason']} ({info['source']}, {info['added_at']})")
    if s["recent_forced_buyins"]:
        print("Recent forced buy-ins:")
        for b in s["recent_forced_buyins"]:
            print(f"  {b['as_of']} {b['symbol']} {b['quantity']} shares: {b['reasons']}")


def main(argv=None) -> int:
    install_excepthook()
    parser = argparse.ArgumentParser(prog="risk_management.py", description=(
        "Risk state: halts (max drawdown, daily loss) and the do-not-short list."),
        epilog="Exit codes: 0 done; 1 refused (e.g. reset-drawdown with nothing halted) or failed; 2 bad usage.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("status", help="print the equity peak, drawdown, halts and do-not-short list")
    p = sub.add_parser("reset-drawdown", help="clear the max-drawdown halt (audited); re-bases the peak")
    p.add_argument("--reason", required=True, help="why trading may resume (recorded in the audit trail)")
    p.add_argument("--equity", type=float, default=None,
                   help="current account equity to re-base the peak to (default: the last recorded)")
    p.add_argument("--force", action="store_true",
                   help="re-base the peak even when no drawdown halt is set (refused otherwise)")
    p = sub.add_parser("reset-daily-loss", help="clear today's daily loss halt (audited)")
    p.add_argument("--reason", required=True)
    p = sub.add_parser("do-not-short", help="list, add or remove symbols that must never be shorted")
    p.add_argument("action", choices=("list", "add", "remove"))
    p.add_argument("symbol", nargs="?")
    p.add_argument("--reason", default="", help="why (recorded in the audit trail)")
    args = parser.parse_args(argv)
    config.require_home()                         # a mistyped TRADING_HOME: one line, nothing created
    logging_setup.setup_logging("trading")
    rm = RiskManager()
    try:
        if args.command == "status":
            _print_status(rm)
        elif args.command == "reset-drawdown":
            d = rm.reset_drawdown(args.reason, equity=args.equity, force=args.force)
            new_peak = d["new_peak"]
            print(f"Drawdown halt cleared (was set: {d['was_halted']}). Peak re-based to "
                  f"{_money(new_peak['equity']) if new_peak else 'the next recorded equity'}.")
        elif args.command == "reset-daily-loss":
            d = rm.reset_daily_loss(args.reason)
            print(f"Daily loss halt cleared (was set: {d['was_halted']}).")
        elif args.command == "do-not-short":
            if args.action == "list":
                dns = rm.do_not_short()
                if not dns:
                    print("Do-not-short list is empty")
                for sym, info in dns.items():
                    print(f"{sym}\t{info['source']}\t{info['added_at']}\t{info['reason']}")
            else:
                if not args.symbol:
                    parser.error(f"do-not-short {args.action} needs a SYMBOL")
                sym = args.symbol.upper()
                if args.action == "add":
                    added = rm.add_do_not_short(sym, args.reason or "added by hand")
                    print(f"{sym} {'added to' if added else 'was already on'} the do-not-short list")
                else:
                    removed = rm.remove_do_not_short(sym, args.reason or "removed by hand")
                    print(f"{sym} {'removed from' if removed else 'was not on'} the do-not-short list")
    except ValueError as exc:
        log.warning("risk_management %s refused: %s", args.command, exc)
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:                      # e.g. the audit trail cannot be written
        log.error("risk_management %s failed: %s: %s", args.command, type(exc).__name__, exc)
        print(f"error: {args.command} not done: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
