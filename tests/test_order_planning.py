"""order_planning.plan_orders: the one sequence the live cycle and the backtest run (forced buy-ins,
drift hold, targets, orders, pre-trade checks), on the real RiskManager."""
from datetime import date

import risk_management as rm
import state_db
from order_planning import plan_orders

DAY = date(2025, 3, 4)


def risk():
    return rm.RiskManager(conn=state_db.connect(":memory:"), audit=rm.NullAudit())


def portfolio(**kw):
    prices = {"AAA": 100.0, "BBB": 50.0, "CCC": 20.0}
    base = dict(equity=100_000.0, cash=100_000.0, buying_power=100_000.0, positions={"CCC": -200},
                prices=prices, last_close=prices,
                quotes={s: {"borrow_rate": 0.01, "shortable": True, "hard_to_borrow": False} for s in prices},
                recalled=set(), as_of=DAY)
    base.update(kw)
    return rm.Portfolio(**base)


SIGNALS = [{"symbol": "AAA", "signal": "BUY", "score": 1.2, "price": 100.0, "volatility": 0.02},
           {"symbol": "BBB", "signal": "BUY", "score": 0.9, "price": 50.0, "volatility": 0.02},
           {"symbol": "CCC", "signal": "SELL", "score": -1.5, "price": 20.0, "volatility": 0.02}]


def test_plain_plan_opens_the_buys_and_keeps_the_short():
    plan = plan_orders(risk(), SIGNALS, portfolio())
    assert plan.forced == [] and plan.rejected == [] and plan.approved == plan.orders
    assert plan.targets == {"AAA": 100, "BBB": 200, "CCC": -500}          # sized by risk_management
    assert [(o["symbol"], o["side"], o["quantity"]) for o in plan.approved] == \
        [("AAA", "BUY", 100), ("BBB", "BUY", 200), ("CCC", "SELL_SHORT", 300)]


def test_a_recalled_short_is_bought_in_first_and_gets_no_other_order():
    plan = plan_orders(risk(), SIGNALS, portfolio(recalled={"CCC"}))
    assert [(o["symbol"], o["side"], o["quantity"]) for o in plan.forced] == [("CCC", "BUY_TO_COVER", 200)]
    assert plan.orders[0] is plan.forced[0] and plan.approved[0] is plan.forced[0]
    assert "CCC" not in plan.targets
    assert [o for o in plan.orders if o["symbol"] == "CCC"] == plan.forced


def test_drift_hold_opens_nothing_and_keeps_what_is_held():
    plan = plan_orders(risk(), SIGNALS, portfolio(), hold=True)
    assert plan.orders == [] and plan.approved == []
    assert plan.targets == {"CCC": -200, "AAA": 0, "BBB": 0}


def test_rejected_orders_come_back_with_the_reason():
    plan = plan_orders(risk(), SIGNALS, portfolio(buying_power=6_000.0))
    assert [(o["symbol"], o["side"]) for o in plan.approved] == [("CCC", "SELL_SHORT")]   # 6 000 USD
    rejected = [(o["symbol"], reason) for o, reason in plan.rejected]
    assert [s for s, _ in rejected] == ["AAA", "BBB"]
    assert all("buying power" in reason for _, reason in rejected)


def test_while_halted_nothing_opening_is_planned():
    r = risk()
    r.update_equity(100_000.0, DAY)
    r.update_equity(70_000.0, DAY)                      # a drawdown halt
    plan = plan_orders(r, SIGNALS, portfolio(equity=70_000.0))
    assert plan.orders == [] and plan.targets == {"CCC": -200, "AAA": 0, "BBB": 0}


def test_widen_recomputes_the_targets_with_the_longer_list():
    calls = []

    def widen(targets):
        calls.append(dict(targets))
        return SIGNALS if len(calls) == 1 else None
    plan = plan_orders(risk(), SIGNALS[:1], portfolio(), widen=widen)
    assert len(calls) == 2 and "BBB" not in calls[0] and plan.targets.get("BBB", 0) > 0
