"""Order planning: from signals and the account to approved orders.

The one sequence the live cycle (``live_trading``) and the backtest (``backtest_engine.LivePolicy``)
both run, so that "the backtest runs the live rules" holds by construction:

1. forced buy-ins -- ``RiskManager.forced_buyins``: shorts that must close now (recall, hard to
   borrow, ex-dividend near);
2. drift hold -- with a CRITICAL drift alert every signal becomes HOLD: held positions are kept,
   nothing new opens;
3. targets -- ``RiskManager.target_positions`` for the symbols without a forced buy-in;
4. orders -- the forced buy-ins, then ``orders_for_targets`` (risk-reducing orders first);
5. pre-trade checks -- ``RiskManager.check_orders``: each order approved or rejected with a reason.

The rules themselves live in ``risk_management``; this module only fixes their order. Every
limit comes from the risk manager's ``settings`` (a ``settings.TradingSettings``): the live cycle
and the backtest pass theirs to the risk manager, so one plan never mixes two sets of limits.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from signals import HOLD


@dataclass
class Plan:
    """What ``plan_orders`` decided. ``orders`` = every order wanted (forced buy-ins first);
    ``approved`` the ones that passed the pre-trade check; ``rejected`` (order, reason) pairs."""
    forced: list[dict]
    targets: dict[str, int]
    orders: list[dict]
    approved: list[dict] = field(default_factory=list)
    rejected: list[tuple[dict, str]] = field(default_factory=list)


def drift_hold(signals: list[dict]) -> list[dict]:
    """Every signal as HOLD (a CRITICAL drift alert: keep what is held, open nothing)."""
    return [dict(s, signal=HOLD) for s in signals]


def _targets(risk, signals, portfolio, forced_symbols: set, hold: bool) -> dict[str, int]:
    if hold:
        signals = drift_hold(signals)
    targets = risk.target_positions([s for s in signals if s["symbol"] not in forced_symbols], portfolio)
    for symbol in forced_symbols:            # a forced buy-in closes the short: no other order
        targets.pop(symbol, None)
    return targets


def plan_orders(risk, signals: list[dict], portfolio, *, hold: bool = False, widen=None) -> Plan:
    """Forced buy-ins, drift hold, targets, orders and pre-trade checks for one decision.

    ``risk``: a ``risk_management.RiskManager`` (its ``settings`` are the limits); ``signals``: ``{symbol, signal, score, price,
    volatility}`` dicts; ``portfolio``: a ``risk_management.Portfolio``; ``hold``: the drift hold.
    ``widen`` is for a caller that passes a pruned candidate list (the backtest): called with the
    targets, it returns a longer signal list to compute the targets again with, or None when the
    targets are already what every signal would give."""
    forced = risk.forced_buyins(portfolio)
    forced_symbols = {o["symbol"] for o in forced}
    targets = _targets(risk, signals, portfolio, forced_symbols, hold)
    while widen is not None:
        more = widen(targets)
        if more is None:
            break
        targets = _targets(risk, more, portfolio, forced_symbols, hold)
    plan = Plan(forced, targets, forced + risk.orders_for_targets(targets, portfolio))
    for order, ok, reason in risk.check_orders(plan.orders, portfolio):
        if ok:
            plan.approved.append(order)
        else:
            plan.rejected.append((order, reason))
    return plan
