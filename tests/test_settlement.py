"""Issue 22 point 4: a cash account buys with settled cash only (T+1 by the NYSE calendar),
refuses an order that would be a good-faith violation, and refuses shorts outright; the account
type comes from the broker (Schwab's ``securitiesAccount.type`` through schwab-py against the fake
Schwab on 127.0.0.1; the paper broker's ``PAPER_ACCOUNT_TYPE``, default MARGIN)."""
from __future__ import annotations

from datetime import date

import pytest

import constants as C
import settlement
import state_db
from audit_recorder import Recorder
from broker_base import OrderRejectedError
from paper_broker import PaperBroker
from portfolio import apply_fill
from risk_management import RiskManager
from short_rules import short_entry_problem
from schwab_env import fake_schwab, schwab_home, schwab_routed, store_schwab_credentials  # noqa: F401
from trading_cycle import build_portfolio

TODAY = date(2026, 11, 24)          # the suite's pinned clock (conftest)


def order(side, qty, symbol="AAPL", price=100.0) -> dict:
    return {"symbol": symbol, "side": side, "quantity": qty, "price": price}


def test_t_plus_one_by_the_nyse_calendar():
    assert settlement.settles_on(date(2026, 11, 24)) == date(2026, 11, 25)
    assert settlement.settles_on(date(2026, 11, 25)) == date(2026, 11, 27)     # Thanksgiving skipped
    assert settlement.settles_on(date(2026, 11, 27)) == date(2026, 11, 30)     # the weekend skipped


def test_schwab_settled_cash_fields():
    assert settlement.schwab_settled_cash({"cashAvailableForTrading": 20_000.0, "unsettledCash": 15_000.0}) \
        == (5_000.0, 15_000.0)
    assert settlement.schwab_settled_cash({"cashBalance": 700.0}) == (700.0, 0.0)
    assert settlement.schwab_settled_cash({"cashAvailableForTrading": 10.0, "unsettledCash": 50.0})[0] == 0.0


# ------------------------------------------------------------------ paper
@pytest.fixture
def paper_cash(monkeypatch):
    monkeypatch.setattr(C, "PAPER_ACCOUNT_TYPE", "CASH")
    conn = state_db.connect()
    return PaperBroker(conn=conn, prices={"AAPL": 100.0, "MSFT": 50.0}, as_of=TODAY)


def portfolio(broker, as_of=TODAY):
    return build_portfolio(broker, ["AAPL", "MSFT"], {"AAPL": 100.0, "MSFT": 50.0}, as_of)


def test_paper_default_is_margin_and_unchanged():
    broker = PaperBroker(conn=state_db.connect(), prices={"AAPL": 100.0}, as_of=TODAY)
    balance = broker.get_account_balance()
    assert balance["account_type"] == "MARGIN" and "settled_cash" not in balance
    pf = portfolio(broker)
    assert pf.account_type == "MARGIN"
    assert settlement.order_problem("AAPL", "SELL_SHORT", 10, 100.0, pf) is None


def test_paper_sale_proceeds_settle_next_session_and_buys_use_settled_cash(paper_cash):
    broker = paper_cash
    broker.place_order({"symbol": "AAPL", "side": "BUY", "quantity": 100, "order_type": "MARKET"})
    broker.place_order({"symbol": "AAPL", "side": "SELL", "quantity": 100, "order_type": "MARKET"})
    balance = broker.get_account_balance()
    assert balance["account_type"] == "CASH"
    assert balance["unsettled_cash"] == pytest.approx(100 * 100.0 * (1 - C.PAPER_SLIPPAGE_BPS / 1e4))
    assert balance["settled_cash"] == pytest.approx(balance["cash"] - balance["unsettled_cash"])
    row = broker.conn.execute("SELECT settles_on FROM paper_unsettled_proceeds").fetchone()
    assert row["settles_on"] == "2026-11-25"                                 # T+1, in the SQLite state
    pf = portfolio(broker)
    rm = RiskManager(audit=Recorder())
    big = int(balance["settled_cash"] // 50.0) + 10                        # more than settled, less than cash
    ok, reason = rm.pre_trade_check(order("BUY", big, "MSFT", 50.0), pf)
    assert not ok and "settled cash" in reason and "good-faith" in reason and "\n" not in reason
    # the next session the proceeds are settled
    unsettled_later = PaperBroker(conn=broker.conn)._unsettled(date(2026, 11, 25))
    assert unsettled_later == 0.0


def test_paper_good_faith_violation_refused(paper_cash):
    broker = paper_cash
    broker.place_order({"symbol": "AAPL", "side": "BUY", "quantity": 900, "order_type": "MARKET"})
    broker.place_order({"symbol": "AAPL", "side": "SELL", "quantity": 900, "order_type": "MARKET"})
    # an order bypassing our risk checks (an operator's) buys with the unsettled proceeds
    broker.place_order({"symbol": "MSFT", "side": "BUY", "quantity": 1_900, "order_type": "MARKET"})
    assert broker.get_account_balance()["unsettled_buys"] == {"MSFT": "2026-11-25"}
    pf = portfolio(broker)
    assert pf.unsettled_buys == {"MSFT": date(2026, 11, 25)}
    ok, reason = RiskManager(audit=Recorder()).pre_trade_check(order("SELL", 1_900, "MSFT", 50.0), pf)
    assert not ok and reason.startswith("SELL 1900 MSFT refused: good-faith violation")
    assert "2026-11-25" in reason
    # on the settlement day the sale is fine
    later = portfolio(broker, as_of=date(2026, 11, 25))
    ok, reason = RiskManager(audit=Recorder()).pre_trade_check(order("SELL", 1_900, "MSFT", 50.0), later)
    assert ok, reason


def test_paper_cash_account_refuses_shorts(paper_cash):
    broker = paper_cash
    ok, reason = RiskManager(audit=Recorder()).pre_trade_check(order("SELL_SHORT", 10), portfolio(broker))
    assert not ok and reason == "SELL_SHORT 10 AAPL refused: shorts are not allowed in a cash account"
    assert short_entry_problem("AAPL", portfolio(broker)) == settlement.NO_SHORTS     # no short is planned
    with pytest.raises(OrderRejectedError, match="cash account"):
        broker.place_order({"symbol": "AAPL", "side": "SELL_SHORT", "quantity": 10, "order_type": "MARKET"})


# ------------------------------------------------------------------ Schwab (fake server, real schwab-py)
def schwab_api(schwab_home):
    from credential_manager import CredentialManager
    from trading_api import SchwabAPI
    store_schwab_credentials(schwab_home)
    return SchwabAPI(CredentialManager(home=schwab_home, key_dir=schwab_home / "keys"))


def test_schwab_cash_account_settled_cash_and_refusals(schwab_routed, schwab_home):
    fake = schwab_routed
    fake.account_type = "CASH"
    fake.cash, fake.unsettled_cash = 20_000.0, 15_000.0
    fake.prices.update(AAPL=100.0)
    api = schwab_api(schwab_home)
    balance = api.get_account_balance()
    assert balance["account_type"] == "CASH"
    assert balance["settled_cash"] == 5_000.0 and balance["unsettled_cash"] == 15_000.0
    pf = build_portfolio(api, ["AAPL"], {"AAPL": 100.0}, TODAY)
    assert pf.account_type == "CASH" and pf.settled_cash == 5_000.0
    rm = RiskManager(audit=Recorder())
    ok, reason = rm.pre_trade_check(order("BUY", 60), pf)                 # $6,000 > $5,000 settled
    assert not ok and "settled cash is $5,000.00" in reason and "good-faith violation" in reason
    assert settlement.order_problem("AAPL", "BUY", 50, 100.0, pf) is None   # $5,000 is settled
    ok, reason = rm.pre_trade_check(order("SELL_SHORT", 10), pf)
    assert not ok and "shorts are not allowed in a cash account" in reason
    # in a batch the projected portfolio spends settled cash; a sale's proceeds do not add to it
    after = apply_fill(apply_fill(pf, order("BUY", 30)), order("SELL", 30))
    assert after.settled_cash == 2_000.0
    assert "settled cash is $2,000.00" in settlement.order_problem("AAPL", "BUY", 30, 100.0, after)


def test_schwab_margin_account_unchanged(schwab_routed, schwab_home):
    fake = schwab_routed
    fake.prices.update(AAPL=100.0)
    balance = schwab_api(schwab_home).get_account_balance()
    assert balance["account_type"] == "MARGIN" and "settled_cash" not in balance
