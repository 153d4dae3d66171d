"""The daily reconciliation with the broker (reconcile.py): every change of cash and quantity
explained from the broker's transactions, the rest a break that blocks new entries (exits
allowed) until a person accepts it (audited). On the Schwab path through schwab-py's real
``get_transactions`` against the fake server, and on paper."""
from __future__ import annotations

import json

import pytest

import live_trading
import reconcile_breaks
import state_db
import status_page
from audit_recorder import Recorder
from credential_manager import CredentialManager
from paper_broker import PaperBroker
from portfolio import Portfolio
from reconcile import Reconciler, classify
from risk_management import RiskManager
from schwab_broker import SchwabAPI, parse_schwab_transaction
from schwab_env import fake_schwab, schwab_home, schwab_routed, store_schwab_credentials  # noqa: F401
from trading_execution import OrderExecutor


def _reconciler(executor) -> Reconciler:
    return Reconciler(executor.book, executor.gateway, executor.audit, executor.external)


def _order(symbol, side, quantity, price):
    return {"symbol": symbol, "side": side, "quantity": quantity, "price": price, "order_type": "MARKET"}


def _portfolio(fixed_now, positions, prices):
    return Portfolio(equity=100_000.0, cash=100_000.0, buying_power=100_000.0, positions=dict(positions),
                     prices=dict(prices), last_close=dict(prices), as_of=fixed_now.date())


def _entries_blocked_exits_allowed(conn, fixed_now, held_symbol, held, price):
    risk = RiskManager(conn=conn, audit=Recorder())
    pf = _portfolio(fixed_now, {held_symbol: held}, {held_symbol: price, "GOOG": 100.0})
    ok, why = risk.pre_trade_check(_order("GOOG", "BUY", 1, 100.0), pf)
    assert not ok and "RECONCILIATION BREAK" in why and "python live_trading.py reconcile --accept" in why
    ok, why = risk.pre_trade_check(_order(held_symbol, "SELL", 1, price), pf)
    assert ok, why
    return risk


# ------------------------------------------------------------------ Schwab (schwab-py -> fake server)
def test_schwab_day_explained_then_external_trade_and_cash_change_are_breaks(schwab_routed, schwab_home,
                                                                              fixed_now, monkeypatch):
    fake = schwab_routed
    fake.fill_after_polls = 0                     # our orders fill on arrival
    fake.set_price("AAPL", 100.0)
    fake.set_price("MSFT", 50.0)
    store_schwab_credentials(schwab_home)
    sent = []
    monkeypatch.setattr("alerts.send_alert", lambda kind, message, **kw: sent.append((kind, message)) or True)
    conn = state_db.connect()
    api = SchwabAPI(CredentialManager(home=schwab_home, key_dir=schwab_home / "keys"))
    executor = OrderExecutor(conn=conn, audit=Recorder(), broker=api, sleep=lambda s: None)
    recon = _reconciler(executor)
    assert recon.run("live")["first"]

    # a day: our fill, a dividend, a 2:1 split, a journal, a fee and interest, all explained
    record = executor.submit(_order("AAPL", "BUY", 10, 100.0), "2026-11-24", "live")
    assert record["broker_order_id"]
    fake.add_dividend("AAPL", 2.40)
    fake.add_split("AAPL", 2)
    fake.add_journal(1_000.0)
    fake.add_fee(1.25)
    fake.add_interest(0.31)
    day = recon.run("live")
    kinds = sorted(t["kind"] for t in day["explained"])
    assert kinds == ["dividend", "fee", "interest", "journal", "our_fill", "split"], day["explained"]
    assert day["breaks"] == [] and reconcile_breaks.open_breaks(conn) == []
    assert RiskManager(conn=conn, audit=Recorder()).is_halted() == (False, "")
    assert sent == []
    # transactions already seen are not explained twice
    assert recon.run("live")["explained"] == []

    # an operator's trade on the web site and a cash change nothing explains: two breaks
    manual = fake.place_manual_order("MSFT", "BUY", 5)
    fake.fill(manual)
    fake.adjust_cash(-7.0)
    found = recon.run("live")["breaks"]
    assert sorted(b["kind"] for b in found) == ["cash_difference", "external_trade"], found
    assert {b["symbol"] for b in found if b["kind"] == "external_trade"} == {"MSFT"}
    assert [b["cash"] for b in found if b["kind"] == "cash_difference"] == [pytest.approx(-7.0)]
    assert executor.audit.has("reconcile_break", "found")
    assert [k for k, _ in sent] == ["reconcile_break", "reconcile_break"]

    # new entries blocked, exits allowed; status and status --json list the breaks
    _entries_blocked_exits_allowed(conn, fixed_now, "AAPL", 20, 50.0)
    listed = live_trading._status_data(False)["reconciliation"]["open_breaks"]
    assert sorted(b["id"] for b in listed) == sorted(b["id"] for b in found)

    # accepted by a person (a reason is required), audited; entries allowed again
    with pytest.raises(reconcile_breaks.ReconcileError, match="reason is required"):
        recon.accept(found[0]["id"], "  ")
    for b in found:
        done = recon.accept(b["id"], "checked at schwab.com: my own trade / wire fee")
        assert done["reason"].startswith("checked")
    accepted = [e for e in executor.audit.events if e[0] == "reconcile_break" and e[1] == "accepted"]
    assert len(accepted) == 2 and all(e[2]["reason"] for e in accepted)
    with pytest.raises(reconcile_breaks.ReconcileError, match="already accepted"):
        recon.accept(found[0]["id"], "again")
    assert RiskManager(conn=conn, audit=Recorder()).is_halted() == (False, "")
    # the accepted cash difference moved the book: the next run finds nothing new
    assert recon.run("live")["breaks"] == []


def test_schwab_transaction_shape_is_parsed():
    raw = {"activityId": 91, "time": "2026-11-24T15:00:00+0000", "type": "TRADE", "orderId": 1000000001,
           "netAmount": -1000.05, "description": "BUY AAPL",
           "transferItems": [
               {"instrument": {"assetType": "CURRENCY", "symbol": "CURRENCY_USD"}, "amount": 0.0,
                "cost": -0.05, "feeType": "SEC_FEE"},
               {"instrument": {"assetType": "EQUITY", "symbol": "AAPL"}, "amount": 10.0, "cost": -1000.0,
                "price": 100.0, "positionEffect": "OPENING"}]}
    t = parse_schwab_transaction(raw)
    assert t["id"] == "91" and t["order_id"] == "1000000001" and t["quantity"] == {"AAPL": 10.0}
    assert t["cash"] == -1000.05 and t["fee"] is False and t["symbol"] == "AAPL"
    assert classify(t, lambda oid: oid == "1000000001") == "our_fill"
    assert classify(t, lambda oid: False) == "external_trade"
    div = parse_schwab_transaction({"activityId": 92, "type": "DIVIDEND_OR_INTEREST", "netAmount": 3.0,
                                    "description": "ORDINARY DIVIDEND~MSFT", "transferItems": []})
    assert div["symbol"] == "MSFT" and classify(div, lambda oid: False) == "dividend"
    transfer = parse_schwab_transaction({"activityId": 93, "type": "RECEIVE_AND_DELIVER", "netAmount": 0,
                                         "description": "TRANSFER OF SECURITY", "transferItems": [
                                             {"instrument": {"assetType": "EQUITY", "symbol": "IBM"},
                                              "amount": -5.0}]})
    assert classify(transfer, lambda oid: False) == "unexplained"


# ------------------------------------------------------------------ paper
def test_paper_events_explained_and_unexplained_changes_are_breaks(fixed_now, monkeypatch):
    monkeypatch.setattr("alerts.send_alert", lambda *a, **kw: True)
    conn = state_db.connect()
    paper = PaperBroker(conn=conn, prices={"AAPL": 100.0}, as_of=fixed_now.date(), fill="close")
    executor = OrderExecutor(conn=conn, audit=Recorder(), broker=paper, sleep=lambda s: None)
    recon = _reconciler(executor)
    assert recon.run("paper")["first"]
    executor.submit(_order("AAPL", "BUY", 10, 100.0), "2026-11-24", "paper")
    paper.record_account_event("DIVIDEND", "AAPL", 0, 2.4, fixed_now.date(), "0.24/share")
    paper.record_account_event("SPLIT", "AAPL", 10, 0.0, fixed_now.date(), "2:1")
    paper.record_account_event("JOURNAL", None, 0, 500.0, fixed_now.date(), "deposit")
    paper.record_account_event("FEE", None, 0, -1.0, fixed_now.date(), "statement fee")
    day = recon.run("paper")
    assert sorted(t["kind"] for t in day["explained"]) == ["dividend", "fee", "journal", "our_fill", "split"]
    assert day["breaks"] == []

    # a change no event explains (someone edited the account)
    with state_db.transaction(conn):
        conn.execute("UPDATE paper_positions SET quantity = quantity + 3 WHERE symbol = 'AAPL'")
        conn.execute("UPDATE paper_account SET cash = cash - 50 WHERE id = 1")
    found = recon.run("paper")["breaks"]
    assert sorted((b["kind"], b.get("symbol")) for b in found) == [
        ("cash_difference", None), ("quantity_difference", "AAPL")]
    _entries_blocked_exits_allowed(conn, fixed_now, "AAPL", 23, 50.0)
    for b in found:
        recon.accept(b["id"], "paper drill")
    assert reconcile_breaks.open_breaks(conn) == []
    assert recon.run("paper")["breaks"] == []


def test_reconcile_command_lists_and_accepts(fixed_now, monkeypatch, capsys):
    monkeypatch.setattr("alerts.send_alert", lambda *a, **kw: True)
    conn = state_db.connect()
    PaperBroker(conn=conn, prices={"AAPL": 100.0}, as_of=fixed_now.date())
    assert live_trading.main(["reconcile"]) == 0
    with state_db.transaction(conn):
        conn.execute("UPDATE paper_account SET cash = cash + 12 WHERE id = 1")
    assert live_trading.main(["reconcile"]) == 0
    out = capsys.readouterr().out
    assert "RECONCILIATION BREAK #1 cash_difference" in out and "reconcile --accept 1 --reason" in out
    assert live_trading.main(["status"]) == 0
    assert "1 open break (new entries blocked)" in capsys.readouterr().out
    assert live_trading.main(["status", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [b["id"] for b in data["reconciliation"]["open_breaks"]] == [1]
    page = status_page.build_status_page().read_text()
    assert 'data-open-breaks="1"' in page and "reconcile --accept 1 --reason" in page
    assert live_trading.main(["reconcile", "--accept", "1"]) == 1           # no reason: refused
    assert "reason is required" in capsys.readouterr().err
    assert live_trading.main(["reconcile", "--accept", "1", "--reason", "interest credit checked"]) == 0
    assert reconcile_breaks.open_breaks(conn) == []


def test_paper_split_and_dividend_applied_by_the_cycle_are_explained(fixed_now, monkeypatch):
    """The corporate actions the paper broker applies itself (corporate_actions.position_events:
    a 3:2 split with cash in lieu, a dividend on its pay date) are its transactions: no break."""
    import datetime as dt

    import pandas as pd

    monkeypatch.setattr("alerts.send_alert", lambda *a, **kw: True)
    conn = state_db.connect()
    before = fixed_now.date() - dt.timedelta(days=1)
    paper = PaperBroker(conn=conn, prices={"AAPL": 100.0}, as_of=before, fill="close")
    executor = OrderExecutor(conn=conn, audit=Recorder(), broker=paper, sleep=lambda s: None)
    recon = _reconciler(executor)
    assert recon.run("paper")["first"]
    executor.submit(_order("AAPL", "BUY", 7, 100.0), before.isoformat(), "paper")
    actions = pd.DataFrame([{"Date": fixed_now.date().isoformat(), "Symbol": "AAPL", "Dividend": 0.0, "Split": 1.5,
                             "PayDate": fixed_now.date().isoformat()},
                            {"Date": fixed_now.date().isoformat(), "Symbol": "AAPL", "Dividend": 0.3, "Split": 0.0,
                             "PayDate": fixed_now.date().isoformat()}])
    applied = paper.apply_corporate_actions(actions, through=fixed_now.date())
    assert {a["kind"] for a in applied} == {"SPLIT", "DIVIDEND"}
    paper.set_prices({"AAPL": 67.0}, as_of=fixed_now.date())
    assert paper.get_positions()["AAPL"]["quantity"] == 10          # 7 x 1.5 = 10.5: 10 and cash in lieu
    day = recon.run("paper")
    assert day["breaks"] == [], day["breaks"]
    assert {"our_fill", "split", "dividend"} <= {t["kind"] for t in day["explained"]}
    assert recon.run("paper")["breaks"] == []
