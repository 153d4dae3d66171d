"""Settled cash in a cash account: the one rule the risk checks apply on both brokers.

* The account type comes from the broker: Schwab's ``securitiesAccount.type`` (``CASH`` or
  ``MARGIN``); the paper broker's is the tunable ``PAPER_ACCOUNT_TYPE`` (default MARGIN, so
  nothing changes for existing homes). Anything but CASH is treated as a margin account.
* US equities settle T+1: a trade on session D settles on the next NYSE session
  (``settles_on``, exchange-calendars through ``market_calendar.py``).
* In a CASH account (``order_problem``):
  - a short (SELL_SHORT) is refused outright;
  - a BUY must be paid from settled cash: one costing more than the settled cash left is refused
    (buying with unsettled proceeds and selling before they settle is a good-faith violation,
    which restricts the account for 90 days);
  - a SELL of shares that were bought with unsettled funds, before those funds settle, is the
    good-faith violation itself and is refused (the paper broker knows these lots; Schwab's API
    does not report them, so on Schwab the BUY rule is what keeps our own trades clear).
* Schwab's settled cash (``schwab_settled_cash``): in a CASH account ``cashAvailableForTrading``
  counts unsettled sale proceeds (Schwab accepts a buy beyond settled funds with the caution
  "accepted without sufficient settled funds", AC176), so settled cash is
  ``cashAvailableForTrading - unsettledCash`` (floored at 0); without ``cashAvailableForTrading``,
  ``cashBalance - unsettledCash``. If Schwab already excludes unsettled cash from
  ``cashAvailableForTrading`` this undercounts: more buys refused, never a violation.
"""
from __future__ import annotations

from datetime import date

import market_calendar
from broker_base import BUY, SELL, SELL_SHORT, num
from portfolio import EPS, Portfolio, finite, money

CASH, MARGIN = "CASH", "MARGIN"
ACCOUNT_TYPES = (CASH, MARGIN)
NO_SHORTS = "shorts are not allowed in a cash account"


def account_type_of(balance: dict) -> str:
    """CASH or MARGIN from a broker's balance (``account_type``); anything but CASH is MARGIN."""
    return CASH if str(balance.get("account_type") or "").strip().upper() == CASH else MARGIN


def settles_on(trade_day) -> date:
    """The settlement date of a trade on ``trade_day``: the next NYSE session (T+1)."""
    return market_calendar.next_session(trade_day).date()


def schwab_settled_cash(balances: dict) -> tuple[float, float]:
    """(settled cash, unsettled cash) from a Schwab CASH account's ``currentBalances``."""
    unsettled = max(num(balances.get("unsettledCash")) or 0.0, 0.0)
    available = num(balances.get("cashAvailableForTrading"))
    if available is None:
        available = num(balances.get("cashBalance")) or 0.0
    return max(available - unsettled, 0.0), unsettled


def short_problem(pf: Portfolio) -> str | None:
    """Why no short may open in this account (a cash account), or None. ``short_rules`` asks it
    too, so target generation plans no short that the check would refuse."""
    return NO_SHORTS if pf.account_type == CASH else None


def order_problem(symbol: str, side: str, qty: int, price, pf: Portfolio) -> str | None:
    """Why a cash account may not take this order (one line), or None (also for any margin account)."""
    if pf.account_type != CASH:
        return None
    head = f"{side} {qty} {symbol}"
    if side == SELL_SHORT:
        return f"{head} refused: {short_problem(pf)}"
    if side == BUY:
        settled = float(pf.settled_cash if pf.settled_cash is not None else pf.cash)
        value = qty * float(price) if finite(price) else 0.0    # a bad price is the opening check's to refuse
        if value > settled + EPS:
            return (f"{head} refused: it costs {money(value)} but the settled cash is {money(settled)}; "
                    f"buying with unsettled funds risks a good-faith violation in a cash account")
    if side == SELL:
        settle_day = pf.unsettled_buys.get(symbol)
        if settle_day is not None and pf.as_of < settle_day:
            return (f"{head} refused: good-faith violation, these shares were bought with funds that "
                    f"settle on {settle_day.isoformat()}; sell on or after that day")
    return None
