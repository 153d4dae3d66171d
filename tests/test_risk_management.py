"""Tests of risk_management: every pre-trade rule at its boundary, sizing, targets and orders,
the persistent drawdown halt and its audited reset (through the CLI), the daily loss halt, the
short rules and every forced buy-in path with the exact words people grep for."""
import json
import logging
import os
import sys
from datetime import date, timedelta
from pathlib import Path

import pytest

import constants as C
import risk_management as R
import state_db
from broker_base import BUY, BUY_TO_COVER, SELL, SELL_SHORT
from risk_management import Portfolio, RiskManager
from conftest import run_command
from settings import TradingSettings

ROOT = Path(__file__).resolve().parent.parent
PYTHON = str(ROOT / ".venv" / "bin" / "python") if (ROOT / ".venv" / "bin" / "python").exists() \
    else sys.executable
TODAY = date(2025, 3, 10)
GOOD_QUOTE = {"borrow_rate": 0.01, "hard_to_borrow": False, "shortable": True, "ex_dividend_date": None}
LIVE = TradingSettings.from_constants()       # the limits of constants.py


class RecordingAudit:
    """Test double for audit_logging.AuditLogger: records every event."""

    def __init__(self, fail=False):
        self.events = []
        self.fail = fail

    def log_event(self, action, status, details):
        if self.fail:
            raise OSError("audit trail not writable")
        record = {"action": action, "status": status, "details": details}
        self.events.append(record)
        return record

    def actions(self):
        return [e["action"] for e in self.events]


@pytest.fixture
def audit():
    return RecordingAudit()


@pytest.fixture
def rm(audit):
    return RiskManager(audit=audit)


def limited(audit, **limits):
    """A risk manager with other limits (TradingSettings fields), passed, not patched."""
    return RiskManager(audit=audit, settings=LIVE.replace(**limits))


def portfolio(**kw):
    """A $100,000 account, no positions, prices 100 for AAA..EEE, good borrow data."""
    symbols = ["AAA", "BBB", "CCC", "DDD", "EEE"] + [f"S{i}" for i in range(12)]
    base = dict(equity=100_000.0, cash=100_000.0, buying_power=100_000.0, positions={},
                prices={s: 100.0 for s in symbols}, last_close={s: 100.0 for s in symbols},
                quotes={s: dict(GOOD_QUOTE) for s in symbols}, recalled=set(), as_of=TODAY)
    base.update(kw)
    return Portfolio(**base)


def order(symbol="AAA", side=BUY, quantity=10, price=100.0):
    return {"symbol": symbol, "side": side, "quantity": quantity, "price": price}


def halt_drawdown(rm):
    """Equity slides 16 % over five days, under the daily loss limit each day: drawdown halt only."""
    for days_ago, equity in ((4, 100_000), (3, 96_000), (2, 92_000), (1, 88_000)):
        assert not rm.update_equity(equity, TODAY - timedelta(days=days_ago))["halted"]
    status = rm.update_equity(84_000, TODAY)
    assert status["drawdown_halt"] and not status["daily_halt"]


# =========================================================================== the runbook's test

class TestRiskManager:
    def test_pre_trade_check(self, rm):
        """Run by the incident runbook: one approved order and several rejected ones."""
        pf = portfolio(positions={"BBB": 50})
        ok, reason = rm.pre_trade_check(order("AAA", BUY, 50, 100.0), pf)
        assert ok, reason
        assert reason.startswith("approved")

        ok, reason = rm.pre_trade_check(order("AAA", BUY, 101, 100.0), pf)
        assert not ok and "MAX_POSITION_PCT" in reason and "$10,100.00" in reason

        ok, reason = rm.pre_trade_check(order("AAA", BUY, 10, 150.0), pf)
        assert not ok and "PRICE_SANITY_PCT" in reason and "last close $100.00" in reason

        ok, reason = rm.pre_trade_check(order("AAA", BUY, 0, 100.0), pf)
        assert not ok and "quantity" in reason

        ok, reason = rm.pre_trade_check(order("AAA", BUY, 10, 100.0), portfolio(buying_power=500.0))
        assert not ok and "buying power" in reason

        pf.quotes["CCC"]["borrow_rate"] = 0.35
        ok, reason = rm.pre_trade_check(order("CCC", SELL_SHORT, 10, 100.0), pf)
        assert not ok and "HARD TO BORROW" in reason and "borrow rate 35.00%" in reason

        ok, reason = rm.pre_trade_check(order("BBB", SELL, 50, 100.0), pf)
        assert ok, reason

    def test_real_audit_logger_records_forced_buyin(self, trading_home):
        """The real AuditLogger (audit_logging.py) receives risk events."""
        audit_logging = pytest.importorskip("audit_logging")
        rm = RiskManager(audit=audit_logging.AuditLogger())
        pf = portfolio(positions={"AAA": -20}, recalled={"AAA"})
        assert rm.forced_buyins(pf)[0]["side"] == BUY_TO_COVER
        lines = (trading_home / C.AUDIT_LOG_FILE).read_text().splitlines()
        assert any(json.loads(line)["action"] == "forced_buyin" for line in lines)
        valid, error = audit_logging.AuditLogger().verify_chain()
        assert valid, error


# =========================================================================== one test per rule

def test_quantity_and_side_sanity(rm):
    pf = portfolio(positions={"AAA": 10, "BBB": -10})
    for bad in (0, -5, 1.5, float("nan"), None, True, "10"):
        ok, reason = rm.pre_trade_check(order("CCC", BUY, bad), pf)
        assert not ok and "whole number" in reason, bad
    assert rm.pre_trade_check(order("CCC", BUY, 10.0), pf)[0]          # 10.0 is whole
    assert not rm.pre_trade_check(order("CCC", "BUY_SOME", 10), pf)[0]
    assert not rm.pre_trade_check(order("", BUY, 10), pf)[0]
    assert not rm.pre_trade_check("not an order", pf)[0]
    # reducing orders may not exceed the position, nor exist without one
    assert rm.pre_trade_check(order("AAA", SELL, 10), pf)[0]
    ok, reason = rm.pre_trade_check(order("AAA", SELL, 11), pf)
    assert not ok and "exceeds the long position of 10" in reason
    assert not rm.pre_trade_check(order("CCC", SELL, 1), pf)[0]
    assert rm.pre_trade_check(order("BBB", BUY_TO_COVER, 10), pf)[0]
    ok, reason = rm.pre_trade_check(order("BBB", BUY_TO_COVER, 11), pf)
    assert not ok and "exceeds the short position of 10" in reason
    assert not rm.pre_trade_check(order("AAA", BUY_TO_COVER, 1), pf)[0]
    # opening in the opposite direction of a position must go through a close first
    assert "BUY_TO_COVER" in rm.pre_trade_check(order("BBB", BUY, 1), pf)[1]
    assert "SELL the long first" in rm.pre_trade_check(order("AAA", SELL_SHORT, 1), pf)[1]


def test_opening_order_needs_a_positive_price_and_equity(rm):
    for bad in (0.0, -1.0, float("nan"), None):
        ok, reason = rm.pre_trade_check(order(price=bad), portfolio())
        assert not ok and "price" in reason
    ok, reason = rm.pre_trade_check(order(), portfolio(equity=0.0))
    assert not ok and "equity" in reason


def test_cash_or_buying_power(rm):
    ok, _ = rm.pre_trade_check(order("AAA", BUY, 50, 100.0), portfolio(buying_power=5_000.0))
    assert ok                                                        # exactly the buying power
    ok, reason = rm.pre_trade_check(order("AAA", BUY, 51, 100.0), portfolio(buying_power=5_000.0))
    assert not ok and "exceeds available buying power $5,000.00" in reason
    # a cash account (no buying power): cash is the limit
    assert rm.pre_trade_check(order("AAA", BUY, 30, 100.0), portfolio(buying_power=None, cash=3_000.0))[0]
    ok, reason = rm.pre_trade_check(order("AAA", BUY, 31, 100.0), portfolio(buying_power=None, cash=3_000.0))
    assert not ok and "available cash $3,000.00" in reason
    ok, reason = rm.pre_trade_check(order("AAA", SELL_SHORT, 31, 100.0), portfolio(buying_power=3_000.0))
    assert not ok and "shorts need margin" in reason


def test_max_position_pct(rm):
    assert rm.pre_trade_check(order("AAA", BUY, 100, 100.0), portfolio())[0]      # 10.00 %
    ok, reason = rm.pre_trade_check(order("AAA", BUY, 101, 100.0), portfolio())
    assert not ok and "MAX_POSITION_PCT 10.00%" in reason
    pf = portfolio(positions={"AAA": 60})                           # counts the position after the order
    assert rm.pre_trade_check(order("AAA", BUY, 40, 100.0), pf)[0]
    assert not rm.pre_trade_check(order("AAA", BUY, 41, 100.0), pf)[0]
    pf = portfolio(positions={"AAA": -60})
    assert rm.pre_trade_check(order("AAA", SELL_SHORT, 40, 100.0), pf)[0]
    assert not rm.pre_trade_check(order("AAA", SELL_SHORT, 41, 100.0), pf)[0]


def test_max_gross_exposure(audit):
    rm = limited(audit, max_gross_exposure=0.30)
    pf = portfolio(positions={"AAA": 100, "BBB": -100, "CCC": 50})   # $25,000 gross
    assert rm.pre_trade_check(order("DDD", BUY, 50, 100.0), pf)[0]  # exactly $30,000
    ok, reason = rm.pre_trade_check(order("DDD", BUY, 51, 100.0), pf)
    assert not ok and "MAX_GROSS_EXPOSURE 30.00%" in reason and "$30,100.00" in reason


def test_max_positions(rm):
    nine = {f"S{i}": 10 for i in range(C.MAX_POSITIONS - 1)}
    assert rm.pre_trade_check(order("AAA", BUY, 10), portfolio(positions=nine))[0]
    ten = {f"S{i}": 10 for i in range(C.MAX_POSITIONS)}
    ok, reason = rm.pre_trade_check(order("AAA", BUY, 10), portfolio(positions=ten))
    assert not ok and f"MAX_POSITIONS is {C.MAX_POSITIONS}" in reason
    assert rm.pre_trade_check(order("S0", BUY, 10), portfolio(positions=ten))[0]   # adding is fine


def test_max_order_value(rm):
    pf = portfolio(equity=1_000_000.0, cash=1_000_000.0, buying_power=1_000_000.0)
    assert rm.pre_trade_check(order("AAA", BUY, 250, 100.0), pf)[0]                # $25,000
    ok, reason = rm.pre_trade_check(order("AAA", BUY, 251, 100.0), pf)
    assert not ok and "MAX_ORDER_VALUE $25,000.00" in reason


def test_price_sanity(rm):
    pf = portfolio()
    assert rm.pre_trade_check(order("AAA", BUY, 10, 110.0), pf)[0]                 # +10 %
    assert rm.pre_trade_check(order("AAA", BUY, 10, 90.0), pf)[0]                  # -10 %
    ok, reason = rm.pre_trade_check(order("AAA", BUY, 10, 110.02), pf)
    assert not ok and "PRICE_SANITY_PCT" in reason
    assert not rm.pre_trade_check(order("AAA", BUY, 10, 89.9), pf)[0]
    pf.last_close.pop("AAA")
    ok, reason = rm.pre_trade_check(order("AAA", BUY, 10, 100.0), pf)
    assert not ok and "no last close" in reason


def test_reducing_orders_pass_every_limit(audit):
    rm = limited(audit, max_order_value=1.0)
    halt_drawdown(rm)
    pf = portfolio(positions={"AAA": 5000, "BBB": -5000}, buying_power=0.0, cash=0.0)
    pf.last_close.clear()
    pf.quotes["BBB"]["borrow_rate"] = 0.9
    assert rm.pre_trade_check(order("AAA", SELL, 5000, 500.0), pf)[0]
    assert rm.pre_trade_check(order("BBB", BUY_TO_COVER, 5000, 5.0), pf)[0]


# =========================================================================== short rules

def test_short_allowed_with_good_borrow_data(rm):
    ok, reason = rm.pre_trade_check(order("AAA", SELL_SHORT, 50), portfolio())
    assert ok, reason


def test_short_borrow_rate_limit(rm, caplog):
    pf = portfolio()
    pf.quotes["AAA"]["borrow_rate"] = C.MAX_BORROW_RATE                 # at the limit: allowed
    assert rm.pre_trade_check(order("AAA", SELL_SHORT, 10), pf)[0]
    pf.quotes["AAA"]["borrow_rate"] = 0.2001
    caplog.set_level(logging.WARNING, logger="risk")
    ok, reason = rm.pre_trade_check(order("AAA", SELL_SHORT, 10), pf)
    assert not ok
    assert "HARD TO BORROW" in reason and "borrow rate 20.01%" in reason and "MAX_BORROW_RATE" in reason
    assert any("HARD TO BORROW" in r.message and "borrow rate" in r.message for r in caplog.records)


def test_short_hard_to_borrow_flag_and_not_shortable(rm):
    pf = portfolio()
    pf.quotes["AAA"]["hard_to_borrow"] = True
    ok, reason = rm.pre_trade_check(order("AAA", SELL_SHORT, 10), pf)
    assert not ok and "HARD TO BORROW" in reason and "borrow rate" in reason
    pf.quotes["BBB"]["shortable"] = False
    ok, reason = rm.pre_trade_check(order("BBB", SELL_SHORT, 10), pf)
    assert not ok and "not shortable" in reason


def test_short_needs_borrow_data(rm):
    pf = portfolio()
    pf.quotes.pop("AAA")
    ok, reason = rm.pre_trade_check(order("AAA", SELL_SHORT, 10), pf)
    assert not ok and "no borrow data" in reason
    pf.quotes["AAA"] = {"borrow_rate": None, "hard_to_borrow": None, "shortable": True}
    assert rm.pre_trade_check(order("AAA", SELL_SHORT, 10), pf)[0]


def test_short_ex_dividend_window(rm):
    pf = portfolio()
    for days, allowed in ((-1, True), (0, False), (C.EX_DIVIDEND_WINDOW_DAYS, False),
                          (C.EX_DIVIDEND_WINDOW_DAYS + 1, True)):
        pf.quotes["AAA"]["ex_dividend_date"] = TODAY + timedelta(days=days)
        ok, reason = rm.pre_trade_check(order("AAA", SELL_SHORT, 10), pf)
        assert ok is allowed, (days, reason)
        if not allowed:
            assert "ex-dividend" in reason and "EX_DIVIDEND_WINDOW_DAYS" in reason
    pf.quotes["AAA"]["ex_dividend_date"] = (TODAY + timedelta(days=2)).isoformat()   # strings too
    assert not rm.pre_trade_check(order("AAA", SELL_SHORT, 10), pf)[0]


def test_short_do_not_short_list_and_recall(rm, audit):
    assert rm.add_do_not_short("aaa", "testing")
    assert not rm.add_do_not_short("AAA", "again")
    assert audit.events[-1]["action"] == "do_not_short" and audit.events[-1]["status"] == "added"
    ok, reason = rm.pre_trade_check(order("AAA", SELL_SHORT, 10), portfolio())
    assert not ok and "do-not-short list" in reason
    assert RiskManager(audit=audit).do_not_short().keys() == {"AAA"}           # persisted
    assert rm.remove_do_not_short("AAA", "reviewed")
    assert audit.events[-1]["status"] == "removed"
    assert rm.pre_trade_check(order("AAA", SELL_SHORT, 10), portfolio())[0]
    ok, reason = rm.pre_trade_check(order("AAA", SELL_SHORT, 10), portfolio(recalled={"AAA"}))
    assert not ok and "BROKER RECALL" in reason


def test_short_allow_shorts_false(audit):
    rm = limited(audit, allow_shorts=False)
    ok, reason = rm.pre_trade_check(order("AAA", SELL_SHORT, 10), portfolio())
    assert not ok and "ALLOW_SHORTS" in reason
    sig = [{"symbol": "AAA", "signal": "SELL", "score": -1.0, "price": 100.0, "volatility": 0.02}]
    assert rm.target_positions(sig, portfolio())["AAA"] == 0


# =========================================================================== sizing

def test_size_position():
    # $100k * 1 % / 0.4 daily sigma = $2,500 at |score| = threshold: 25 shares of $100
    assert R.size_position(100_000, 100.0, C.SIGNAL_THRESHOLD, 0.4) == 25
    assert R.size_position(100_000, 100.0, -2 * C.SIGNAL_THRESHOLD, 0.4) == 50     # 2x, either sign
    assert R.size_position(100_000, 100.0, 10 * C.SIGNAL_THRESHOLD, 0.4) == 50     # capped at 2x
    assert R.size_position(100_000, 33.0, C.SIGNAL_THRESHOLD, 0.4) == 75           # floor(2500/33)
    assert isinstance(R.size_position(100_000, 33.0, 1.0, 0.4), int)
    # capped by MAX_POSITION_PCT ($10,000) and by MAX_ORDER_VALUE ($25,000)
    assert R.size_position(100_000, 100.0, 1.0, 0.01) == 100
    assert R.size_position(10_000_000, 100.0, 1.0, 0.01) == 250
    # zero for a weak signal or bad inputs
    assert R.size_position(100_000, 100.0, C.SIGNAL_THRESHOLD * 0.99, 0.02) == 0
    for args in ((100_000, 100.0, float("nan"), 0.02), (100_000, 100.0, 1.0, 0.0),
                 (100_000, 100.0, 1.0, float("nan")), (100_000, 0.0, 1.0, 0.02),
                 (-5.0, 100.0, 1.0, 0.02), (100_000, float("inf"), 1.0, 0.02),
                 (100_000, 100.0, 1.0, -0.02), (100_000, 100.0, None, 0.02),
                 (100_000, 200_000.0, 1.0, 0.02)):
        assert R.size_position(*args) == 0, args


# =========================================================================== targets and orders

def sig(symbol, signal, score=1.0, volatility=0.01, price=100.0):
    return {"symbol": symbol, "signal": signal, "score": score, "price": price, "volatility": volatility}


def test_target_positions(rm, caplog):
    pf = portfolio(positions={"DDD": 30, "EEE": -20})
    pf.quotes["CCC"]["borrow_rate"] = 0.5
    caplog.set_level(logging.INFO, logger="risk")
    targets = rm.target_positions(
        [sig("AAA", "BUY"), sig("BBB", "SELL", -1.0), sig("CCC", "SELL", -1.0), sig("DDD", "HOLD")], pf)
    assert targets["AAA"] == 100                 # capped by MAX_POSITION_PCT
    assert targets["BBB"] == -100
    assert targets["CCC"] == 0                   # hard to borrow: flat instead of short
    assert targets["DDD"] == 30                  # HOLD keeps
    assert targets["EEE"] == -20                 # no signal keeps
    assert any("HARD TO BORROW" in r.message and "borrow rate" in r.message for r in caplog.records)


def test_target_rebalance_band_and_flip(rm):
    pf = portfolio(positions={"AAA": 95, "BBB": 50, "CCC": 100})
    targets = rm.target_positions([sig("AAA", "BUY"), sig("BBB", "BUY"), sig("CCC", "SELL", -1.0)], pf)
    assert targets["AAA"] == 95                  # 100 is within REBALANCE_BAND of 95: no trade
    assert targets["BBB"] == 100
    assert targets["CCC"] == -100                # long -> short flip


def test_target_max_positions_strongest_first(rm):
    held = {f"S{i}": 10 for i in range(C.MAX_POSITIONS - 1)}
    pf = portfolio(positions=held)
    targets = rm.target_positions([sig("AAA", "BUY", 0.7), sig("BBB", "BUY", 1.5)], pf)
    assert targets["BBB"] == 100 and targets["AAA"] == 0


def test_target_while_halted_only_reduces(rm):
    halt_drawdown(rm)
    pf = portfolio(positions={"AAA": 50, "BBB": 50, "CCC": -50})
    targets = rm.target_positions([sig("AAA", "BUY"), sig("BBB", "SELL", -1.0), sig("CCC", "BUY"),
                                   sig("DDD", "BUY")], pf)
    assert targets == {**targets, "AAA": 50, "BBB": 0, "CCC": 0, "DDD": 0}


def test_orders_for_targets_all_transitions():
    pf = portfolio(positions={"AAA": 50, "BBB": 50, "CCC": -50, "DDD": -50, "S1": 10, "S2": -10})
    targets = {"AAA": 80, "BBB": -30, "CCC": -80, "DDD": 20, "EEE": 40, "S0": -40, "S1": 0, "S2": -4}
    orders = R.orders_for_targets(targets, pf)
    got = [(o["symbol"], o["side"], o["quantity"]) for o in orders]
    assert got == [
        ("BBB", SELL, 50), ("DDD", BUY_TO_COVER, 50), ("S1", SELL, 10), ("S2", BUY_TO_COVER, 6),
        ("AAA", BUY, 30), ("BBB", SELL_SHORT, 30), ("CCC", SELL_SHORT, 30), ("DDD", BUY, 20),
        ("EEE", BUY, 40), ("S0", SELL_SHORT, 40)]
    assert all(o["price"] == 100.0 and isinstance(o["quantity"], int) for o in orders)
    assert R.orders_for_targets({"AAA": 50}, pf) == []


def test_check_orders_applies_each_fill(rm):
    pf = portfolio(positions={"AAA": 50})
    orders = R.orders_for_targets({"AAA": -50}, pf)
    assert [o["side"] for o in orders] == [SELL, SELL_SHORT]
    assert not rm.pre_trade_check(orders[1], pf)[0]              # against the unfilled portfolio
    results = rm.check_orders(orders, pf)
    assert [ok for _, ok, _ in results] == [True, True], results


def test_check_orders_equals_checking_one_by_one_on_fresh_copies(rm):
    """check_orders copies the portfolio once and moves the copy in place; the result must be what
    the plain sequence gives (pre_trade_check, then apply_fill making a new portfolio after each
    approved order), and the caller's portfolio must be left as it was."""
    pf = portfolio(equity=50_000.0, cash=20_000.0, buying_power=12_000.0,
                   positions={"AAA": 40, "BBB": -30, "S0": 10, "S1": 5, "S2": -5, "S3": 8, "S4": 3, "S5": 2,
                              "S6": 1, "S7": 1})
    pf.prices["S8"] = 250.0
    pf.last_close["S8"] = 240.0
    before = (dict(pf.positions), dict(pf.prices), pf.cash, pf.buying_power)
    orders = R.orders_for_targets({"AAA": -60, "BBB": 45, "CCC": 90, "DDD": -70, "S0": 0, "S8": 30, "EEE": 500}, pf)
    orders.insert(3, order("S9", BUY, 0))                              # a bad one in the middle
    results = rm.check_orders(orders, pf)
    expected, projected = [], pf
    for o in orders:
        ok, reason = rm.pre_trade_check(o, projected)
        expected.append((o, ok, reason))
        if ok:
            projected = R.apply_fill(projected, o)
    assert results == expected
    assert {ok for _, ok, _ in results} == {True, False}               # some pass, some are rejected
    assert (dict(pf.positions), dict(pf.prices), pf.cash, pf.buying_power) == before


def test_in_memory_connection_and_null_audit():
    rm = RiskManager(conn=state_db.connect(":memory:"), audit=R.NullAudit())
    halt_drawdown(rm)
    assert rm.is_halted(TODAY)[0]
    assert rm.forced_buyins(portfolio(positions={"AAA": -5}, recalled={"AAA"}))
    assert not Path(os.environ["TRADING_HOME"], C.STATE_DB_FILE).exists()


# =========================================================================== halts

def test_drawdown_halt_persists_and_blocks_opening_only(rm, audit, caplog):
    caplog.set_level(logging.INFO, logger="risk")
    rm.update_equity(100_000, TODAY - timedelta(days=10))
    rm.update_equity(120_000, TODAY - timedelta(days=5))         # new peak
    status = rm.update_equity(102_001, TODAY - timedelta(days=4))   # 14.999 %: not yet
    assert not status["drawdown_halt"] and status["peak"] == 120_000
    status = rm.update_equity(102_000, TODAY)                     # exactly 15 %: reached
    assert status["drawdown_halt"] and status["new_halts"] == ["max_drawdown"]
    crit = [r for r in caplog.records if r.levelno == logging.CRITICAL]
    assert any(r.getMessage().startswith(
        "MAX DRAWDOWN REACHED: drawdown 15.00% from peak $120,000.00 (limit 15.00%)") for r in crit)
    assert audit.events[-1]["action"] == "risk_halt" and audit.events[-1]["details"]["halt"] == "max_drawdown"

    other = RiskManager(audit=RecordingAudit())                   # same TRADING_HOME, new instance
    halted, reason = other.is_halted(TODAY + timedelta(days=30))
    assert halted and "MAX DRAWDOWN REACHED" in reason and "reset-drawdown" in reason
    assert other.update_equity(130_000, TODAY + timedelta(days=31))["halted"]   # recovery does not clear
    pf = portfolio(positions={"AAA": 50, "BBB": -50}, as_of=TODAY + timedelta(days=31))
    ok, reason = other.pre_trade_check(order("CCC", BUY, 10), pf)
    assert not ok and "halted" in reason and "MAX DRAWDOWN REACHED" in reason
    assert not other.pre_trade_check(order("CCC", SELL_SHORT, 10), pf)[0]
    assert other.pre_trade_check(order("AAA", SELL, 50), pf)[0]
    assert other.pre_trade_check(order("BBB", BUY_TO_COVER, 50), pf)[0]


def test_reset_drawdown_api_is_audited_and_rebases_peak(rm, audit):
    halt_drawdown(rm)
    with pytest.raises(ValueError):
        rm.reset_drawdown("  ")
    failing = RiskManager(audit=RecordingAudit(fail=True))
    with pytest.raises(OSError):
        failing.reset_drawdown("no audit")
    assert rm.is_halted(TODAY)[0]                                 # not reset without an audit record
    details = rm.reset_drawdown("reviewed the losses", by="tester")
    assert audit.events[-1]["action"] == "risk_halt_reset"
    assert details["new_peak"]["equity"] == 84_000 and details["was_halted"]
    assert not rm.is_halted(TODAY)[0]
    status = rm.update_equity(83_000, TODAY + timedelta(days=1))  # 1.2 % from the new peak
    assert not status["halted"] and status["peak"] == 84_000


def _cli(home, *args):
    return run_command([PYTHON, "risk_management.py", *args], env_extra={"TRADING_HOME": home}, timeout=60)


def test_reset_drawdown_cli(trading_home):
    pytest.importorskip("audit_logging")
    rm = RiskManager(audit=R.NullAudit())
    halt_drawdown(rm)
    result = _cli(trading_home, "status")
    assert result.returncode == 0, result.stderr
    assert "Drawdown halt:      SET" in result.stdout and "$100,000.00" in result.stdout

    result = _cli(trading_home, "reset-drawdown")                 # --reason is required
    assert result.returncode == 2
    assert RiskManager(audit=R.NullAudit()).is_halted(TODAY)[0]

    result = _cli(trading_home, "reset-drawdown", "--reason", "x")
    assert result.returncode == 0, result.stderr
    assert not RiskManager(audit=R.NullAudit()).is_halted(TODAY)[0]
    records = [json.loads(line) for line in
               (trading_home / C.AUDIT_LOG_FILE).read_text().splitlines() if line.strip()]
    reset = [r for r in records if r["action"] == "risk_halt_reset"]
    assert reset and reset[-1]["details"]["reason"] == "x"
    assert "Drawdown halt reset" in (trading_home / "logs").joinpath(
        f"trading_{date.today():%Y%m%d}.log").read_text()


def test_cli_status_and_do_not_short(trading_home):
    state_db.connect().close()                  # a home (an empty one): the CLI refuses a folder without state
    result = _cli(trading_home, "status")
    assert result.returncode == 0, result.stderr
    assert "Equity peak:        none recorded" in result.stdout and "Do-not-short list:  empty" in result.stdout
    assert _cli(trading_home, "do-not-short", "list").stdout.strip() == "Do-not-short list is empty"
    assert _cli(trading_home, "do-not-short", "add").returncode == 2           # needs a symbol
    if not Path(ROOT, "audit_logging.py").exists():
        return
    result = _cli(trading_home, "do-not-short", "add", "gme", "--reason", "squeeze risk")
    assert result.returncode == 0, result.stderr
    assert _cli(trading_home, "do-not-short", "list").stdout.startswith("GME\tmanual")
    assert "GME" in _cli(trading_home, "status").stdout
    result = _cli(trading_home, "do-not-short", "remove", "GME", "--reason", "reviewed")
    assert result.returncode == 0 and "removed from" in result.stdout
    actions = [json.loads(line)["action"] for line in
               (trading_home / C.AUDIT_LOG_FILE).read_text().splitlines() if line.strip()]
    assert actions.count("do_not_short") == 2


def test_daily_loss_limit_clears_next_day(rm, audit, caplog):
    caplog.set_level(logging.INFO, logger="risk")
    rm.update_equity(100_000, TODAY - timedelta(days=1))
    status = rm.update_equity(95_001, TODAY)                      # 4.999 %: fine
    assert not status["halted"] and status["day_start_equity"] == 100_000
    status = rm.update_equity(95_000, TODAY)                      # 5 % of the day's start: halt
    assert status["daily_halt"] and status["new_halts"] == ["daily_loss"]
    assert any("DAILY LOSS LIMIT REACHED" in r.getMessage() for r in caplog.records)
    assert audit.events[-1]["action"] == "risk_halt" and audit.events[-1]["details"]["halt"] == "daily_loss"
    assert RiskManager(audit=audit).is_halted(TODAY)[0]           # persisted for the day
    ok, reason = rm.pre_trade_check(order("AAA", BUY, 10), portfolio())
    assert not ok and "DAILY LOSS LIMIT REACHED" in reason
    assert rm.pre_trade_check(order("AAA", SELL, 10), portfolio(positions={"AAA": 10}))[0]

    tomorrow = TODAY + timedelta(days=1)
    assert not rm.is_halted(tomorrow)[0]                          # clears by itself
    assert rm.pre_trade_check(order("AAA", BUY, 10), portfolio(as_of=tomorrow))[0]
    status = rm.update_equity(94_000, tomorrow)                   # day start = yesterday's 95,000
    assert status["day_start_equity"] == 95_000 and not status["halted"]
    assert rm.reset_daily_loss("n/a")["was_halted"] is False


def test_update_equity_rejects_nan(rm):
    with pytest.raises(ValueError):
        rm.update_equity(float("nan"), TODAY)


# =========================================================================== forced buy-ins

def _buyin_messages(caplog):
    return [r.getMessage() for r in caplog.records if r.name == "risk"]


def test_forced_buyin_broker_recall(rm, audit, caplog):
    caplog.set_level(logging.INFO, logger="risk")
    pf = portfolio(positions={"AAA": -40, "BBB": 30}, recalled={"AAA", "BBB"})
    orders = rm.forced_buyins(pf)
    assert orders == [{"symbol": "AAA", "side": BUY_TO_COVER, "quantity": 40, "price": 100.0,
                       "reason": "forced buy-in: broker recall"}]
    msgs = _buyin_messages(caplog)
    assert any(m.startswith("BROKER RECALL:") and "AAA" in m for m in msgs)
    assert any(m.startswith("Forced buy-in triggered: AAA reason broker recall") for m in msgs)
    assert audit.events[-1]["action"] == "forced_buyin" and audit.events[-1]["details"]["symbol"] == "AAA"
    assert rm.recent_forced_buyins()[0]["symbol"] == "AAA"
    assert rm.pre_trade_check(orders[0], pf)[0]                   # the cover itself passes


def test_forced_buyin_hard_to_borrow(rm, audit, caplog):
    caplog.set_level(logging.INFO, logger="risk")
    pf = portfolio(positions={"AAA": -40, "BBB": -10, "CCC": -10})
    pf.quotes["AAA"]["borrow_rate"] = 0.25
    pf.quotes["BBB"]["hard_to_borrow"] = True
    pf.quotes["CCC"]["borrow_rate"] = C.MAX_BORROW_RATE           # at the limit: kept
    orders = rm.forced_buyins(pf)
    assert [(o["symbol"], o["quantity"]) for o in orders] == [("AAA", 40), ("BBB", 10)]
    msgs = _buyin_messages(caplog)
    assert any(m.startswith("HARD TO BORROW:") and "AAA borrow rate 25.00%" in m for m in msgs)
    assert any("HARD TO BORROW" in m and "BBB" in m and "borrow rate" in m for m in msgs)
    assert any(m.startswith("Forced buy-in triggered: AAA reason hard to borrow: borrow rate 25.00%")
               for m in msgs)
    assert audit.actions().count("forced_buyin") == 2


def test_forced_buyin_ex_dividend(rm, caplog):
    caplog.set_level(logging.INFO, logger="risk")
    pf = portfolio(positions={"AAA": -40, "BBB": -10})
    pf.quotes["AAA"]["ex_dividend_date"] = TODAY + timedelta(days=C.EX_DIVIDEND_WINDOW_DAYS)
    pf.quotes["BBB"]["ex_dividend_date"] = TODAY + timedelta(days=C.EX_DIVIDEND_WINDOW_DAYS + 1)
    orders = rm.forced_buyins(pf)
    assert [o["symbol"] for o in orders] == ["AAA"]
    assert any(m.startswith("Forced buy-in triggered: AAA reason ex-dividend") for m in _buyin_messages(caplog))


def test_no_forced_buyin_for_healthy_shorts_and_longs(rm, audit):
    pf = portfolio(positions={"AAA": -40, "BBB": 40}, recalled={"BBB"})
    pf.quotes["BBB"]["borrow_rate"] = 0.9
    assert rm.forced_buyins(pf) == []
    assert audit.events == []


def test_do_not_short_after_repeated_buyins(rm, audit, caplog):
    caplog.set_level(logging.INFO, logger="risk")
    pf = portfolio(positions={"AAA": -40}, recalled={"AAA"})
    rm.forced_buyins(pf)
    rm.forced_buyins(pf)                                          # same day repeated: counted once
    assert "AAA" not in rm.do_not_short()
    pf.as_of = TODAY + timedelta(days=C.FORCED_BUYIN_LOOKBACK_DAYS - 1)
    rm.forced_buyins(pf)
    dns = RiskManager(audit=audit).do_not_short()
    assert dns["AAA"]["source"] == "auto" and "forced buy-ins" in dns["AAA"]["reason"]
    assert ("do_not_short", "added") in [(e["action"], e["status"]) for e in audit.events]
    ok, reason = rm.pre_trade_check(order("AAA", SELL_SHORT, 10), portfolio(as_of=pf.as_of))
    assert not ok and "do-not-short" in reason


def test_buyins_outside_lookback_do_not_count(rm):
    pf = portfolio(positions={"AAA": -40}, recalled={"AAA"})
    rm.forced_buyins(pf)
    pf.as_of = TODAY + timedelta(days=C.FORCED_BUYIN_LOOKBACK_DAYS)
    rm.forced_buyins(pf)
    assert "AAA" not in rm.do_not_short()
    assert len(rm.recent_forced_buyins()) == 2


def test_target_new_positions_cut_by_gross_exposure(audit):
    rm = limited(audit, max_gross_exposure=0.15)
    targets = rm.target_positions([sig("AAA", "BUY", 0.9), sig("BBB", "BUY", 1.2, price=50.0)], portfolio())
    assert targets["BBB"] == 200                 # strongest first: $10,000
    assert targets["AAA"] == 50                  # the $5,000 left of the $15,000 budget


def test_reset_drawdown_refuses_when_nothing_is_halted_unless_forced(trading_home):
    pytest.importorskip("audit_logging")
    rm = RiskManager(audit=R.NullAudit())
    rm.update_equity(100_000, TODAY)
    rm.update_equity(95_000, TODAY + timedelta(days=1))            # 5 % down: no halt
    with pytest.raises(ValueError, match="no max-drawdown halt"):
        rm.reset_drawdown("just because")
    assert RiskManager(audit=R.NullAudit()).status()["peak"]["equity"] == 100_000

    result = _cli(trading_home, "reset-drawdown", "--reason", "x")
    assert result.returncode == 1
    assert "nothing to reset" in result.stderr and "--force" in result.stderr
    assert "Traceback" not in result.stderr
    assert RiskManager(audit=R.NullAudit()).status()["peak"]["equity"] == 100_000   # peak not moved

    result = _cli(trading_home, "reset-drawdown", "--reason", "re-base after a deposit", "--force")
    assert result.returncode == 0, result.stderr
    assert "was set: False" in result.stdout
    assert RiskManager(audit=R.NullAudit()).status()["peak"]["equity"] == 95_000
    assert "Exit codes" in _cli(trading_home, "--help").stdout
