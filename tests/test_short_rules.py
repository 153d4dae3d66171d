"""short_rules on its own: the hard-to-borrow rule (the one home the paper broker and the backtest
use too), the ex-dividend window, the new-short rules in their order, and ShortRules built from
its collaborators (a state-DB connection, an audit recorder, the settings), in process. The log
words people grep for (BROKER RECALL, HARD TO BORROW, borrow rate, Forced buy-in triggered) are
checked, and every limit comes from the settings passed, never from a patched global."""
import logging
from datetime import date, timedelta

import pytest

import backtest_engine as E
import state_db
from broker_base import BUY_TO_COVER
from paper_broker import PaperBroker
from portfolio import Portfolio
from risk_management import RiskManager
from settings import TradingSettings
from short_rules import ShortRules, ex_dividend_near, hard_to_borrow, short_entry_problem

LIVE = TradingSettings.from_constants()
TODAY = date(2025, 3, 10)
GOOD = {"borrow_rate": 0.01, "hard_to_borrow": False, "shortable": True, "ex_dividend_date": None}


class Recorder:
    """An audit that records every event (or fails, like an unwritable trail)."""

    def __init__(self, fail=False):
        self.events, self.fail = [], fail

    def log_event(self, action, status, details):
        if self.fail:
            raise OSError("audit trail not writable")
        self.events.append((action, status, details))
        return {}


def shorts(settings=LIVE, audit=None, **kw):
    return ShortRules(state_db.connect(":memory:"), audit if audit is not None else Recorder(), settings, **kw)


def account(positions=None, quotes=None, recalled=(), as_of=TODAY):
    symbols = ["AAA", "BBB", "CCC"]
    q = {s: dict(GOOD) for s in symbols}
    for s, changes in (quotes or {}).items():
        q[s].update(changes)
    return Portfolio(equity=100_000.0, cash=100_000.0, positions=dict(positions or {}),
                     prices={s: 100.0 for s in symbols}, last_close={s: 100.0 for s in symbols},
                     quotes=q, recalled=set(recalled), as_of=as_of)


# --------------------------------------------------------------------------- hard to borrow
def test_hard_to_borrow_at_and_above_the_limit():
    assert hard_to_borrow({"borrow_rate": LIVE.max_borrow_rate}) is None           # at the limit: fine
    text = hard_to_borrow({"borrow_rate": 0.25})
    assert text == "borrow rate 25.00% is above the limit 20.00% (MAX_BORROW_RATE)"
    assert hard_to_borrow({"borrow_rate": 0.01, "hard_to_borrow": True}) == \
        "flagged hard to borrow by the broker (borrow rate 1.00%)"
    assert hard_to_borrow({"hard_to_borrow": True}).endswith("(borrow rate unknown)")
    assert hard_to_borrow(None) is None and hard_to_borrow({"borrow_rate": float("nan")}) is None


def test_hard_to_borrow_limit_comes_from_the_settings():
    looser = LIVE.replace(max_borrow_rate=0.30)
    assert hard_to_borrow({"borrow_rate": 0.25}, looser) is None
    assert "above the limit 30.00%" in hard_to_borrow({"borrow_rate": 0.31}, looser)


def test_the_paper_broker_and_the_backtest_flag_with_the_same_rule():
    high = 0.25                                                   # above 20 %, below 30 %
    broker = PaperBroker(conn=state_db.connect(":memory:"), prices={"AAA": 10.0}, as_of=TODAY)
    broker.set_borrow_rate("AAA", high)
    assert broker.get_quotes(["AAA"])["AAA"]["hard_to_borrow"] is True
    looser = LIVE.replace(max_borrow_rate=0.30)
    broker = PaperBroker(conn=state_db.connect(":memory:"), prices={"AAA": 10.0}, as_of=TODAY, settings=looser)
    broker.set_borrow_rate("AAA", high)
    assert broker.get_quotes(["AAA"])["AAA"]["hard_to_borrow"] is False
    assert E.LivePolicy(settings=LIVE.replace(borrow_rate=high))._quote["hard_to_borrow"] is True
    assert E.LivePolicy(settings=looser.replace(borrow_rate=high))._quote["hard_to_borrow"] is False


def test_ex_dividend_window():
    near = {"ex_dividend_date": TODAY + timedelta(days=LIVE.ex_dividend_window_days)}
    assert ex_dividend_near(near, TODAY) == (True, near["ex_dividend_date"])
    far = {"ex_dividend_date": TODAY + timedelta(days=LIVE.ex_dividend_window_days + 1)}
    assert ex_dividend_near(far, TODAY)[0] is False
    assert ex_dividend_near(far, TODAY, LIVE.replace(ex_dividend_window_days=30))[0] is True
    assert ex_dividend_near({"ex_dividend_date": TODAY - timedelta(days=1)}, TODAY)[0] is False
    assert ex_dividend_near({}, TODAY) == (False, None)


# --------------------------------------------------------------------------- a new short
def test_short_entry_problems_in_their_order():
    pf = account()
    assert short_entry_problem("AAA", pf) is None
    assert short_entry_problem("AAA", pf, settings=LIVE.replace(allow_shorts=False)) == \
        "shorts are disabled (ALLOW_SHORTS=False)"
    assert "on the do-not-short list" in short_entry_problem("AAA", pf, {"AAA": {}})
    assert short_entry_problem("AAA", account(recalled={"AAA"})).startswith("BROKER RECALL")
    assert short_entry_problem("AAA", account(quotes={"AAA": {"borrow_rate": 0.5}})).startswith(
        "HARD TO BORROW: AAA borrow rate 50.00%")
    assert short_entry_problem("AAA", account(quotes={"AAA": {"shortable": False}})) == \
        "AAA is not shortable at the broker"
    unknown = account(quotes={"AAA": {"borrow_rate": None, "hard_to_borrow": None, "shortable": None}})
    assert "no borrow data for AAA" in short_entry_problem("AAA", unknown)
    assert short_entry_problem("AAA", unknown, settings=LIVE.replace(require_borrow_data=False)) is None
    exdiv = account(quotes={"AAA": {"ex_dividend_date": TODAY + timedelta(days=1)}})
    assert "(EX_DIVIDEND_WINDOW_DAYS)" in short_entry_problem("AAA", exdiv)


# --------------------------------------------------------------------------- forced buy-ins
def test_forced_buyins_log_the_words_people_grep_for(caplog):
    caplog.set_level(logging.INFO, logger="risk")
    audit = Recorder()
    rules = shorts(audit=audit)
    pf = account(positions={"AAA": -40, "BBB": -10, "CCC": 20},
                 quotes={"BBB": {"borrow_rate": 0.35}}, recalled={"AAA"})
    orders = rules.forced_buyins(pf)
    assert [(o["symbol"], o["side"], o["quantity"]) for o in orders] == \
        [("AAA", BUY_TO_COVER, 40), ("BBB", BUY_TO_COVER, 10)]
    assert orders[0]["reason"] == "forced buy-in: broker recall"
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "BROKER RECALL: broker recalled the borrowed shares of AAA (short 40)" in text
    assert "HARD TO BORROW: BBB borrow rate 35.00% is above the limit" in text
    assert "Forced buy-in triggered: AAA reason broker recall; BUY_TO_COVER 40" in text
    assert [e[:2] for e in audit.events] == [("forced_buyin", "triggered")] * 2
    assert [b["symbol"] for b in rules.recent_forced_buyins()] == ["BBB", "AAA"]


def test_a_repeated_buyin_the_same_day_counts_once_and_the_limit_lists_the_symbol():
    audit = Recorder()
    rules = shorts(audit=audit)
    pf = account(positions={"AAA": -40}, recalled={"AAA"})
    rules.forced_buyins(pf)
    rules.forced_buyins(pf)                                   # the same day again: not counted
    assert len(rules.recent_forced_buyins()) == 1 and "AAA" not in rules.do_not_short()
    pf.as_of = TODAY + timedelta(days=1)
    rules.forced_buyins(pf)                                   # the second within the lookback
    listed = rules.do_not_short()
    assert listed["AAA"]["source"] == "auto" and "FORCED_BUYIN_LIMIT 2" in listed["AAA"]["reason"]
    assert ("do_not_short", "added") in [e[:2] for e in audit.events]


def test_buyin_limit_and_lookback_come_from_the_settings():
    rules = shorts(LIVE.replace(forced_buyin_limit=1))
    rules.forced_buyins(account(positions={"AAA": -5}, recalled={"AAA"}))
    assert "AAA" in rules.do_not_short()
    rules = shorts(LIVE.replace(forced_buyin_lookback_days=1))
    rules.forced_buyins(account(positions={"AAA": -5}, recalled={"AAA"}))
    rules.forced_buyins(account(positions={"AAA": -5}, recalled={"AAA"}, as_of=TODAY + timedelta(days=2)))
    assert "AAA" not in rules.do_not_short()                 # the first one is outside 1 day


# --------------------------------------------------------------------------- the do-not-short list
def test_a_manual_add_needs_its_audit_record():
    rules = shorts(audit=Recorder(fail=True))
    with pytest.raises(OSError):
        rules.add_do_not_short("AAA", "by hand")
    assert rules.do_not_short() == {}


def test_add_and_remove_are_audited():
    audit = Recorder()
    rules = shorts(audit=audit)
    assert rules.add_do_not_short(" aaa ", "earnings") is True
    assert rules.add_do_not_short("AAA", "again") is False
    assert rules.do_not_short()["AAA"]["reason"] == "earnings"
    assert rules.remove_do_not_short("AAA", "reviewed") is True
    assert rules.remove_do_not_short("AAA") is False
    assert [e[:2] for e in audit.events] == [("do_not_short", "added"), ("do_not_short", "removed")]


def test_a_remembered_list_is_read_again_after_a_change():
    rules = shorts(remember_list=True)
    assert rules.do_not_short() == {}
    rules.conn.execute("INSERT INTO risk_do_not_short VALUES ('ZZZ', 'x', 'manual', 'now')")
    assert rules.do_not_short() == {}                        # remembered: nobody else writes it
    rules.add_do_not_short("AAA", "x", source="auto")
    assert set(rules.do_not_short()) == {"AAA", "ZZZ"}
    assert set(shorts().do_not_short()) == set()             # a fresh database


# --------------------------------------------------------------------------- composed, not mixed in
def test_the_risk_manager_holds_short_rules_with_its_settings():
    tight = LIVE.replace(allow_shorts=False)
    rm = RiskManager(conn=state_db.connect(":memory:"), audit=Recorder(), settings=tight)
    assert not isinstance(rm, ShortRules) and isinstance(rm.shorts, ShortRules)
    assert rm.shorts.settings is tight and rm.shorts.conn is rm.conn
    given = shorts()
    assert RiskManager(shorts=given).shorts is given and RiskManager(shorts=given).settings is LIVE
    ok, reason = rm.pre_trade_check({"symbol": "AAA", "side": "SELL_SHORT", "quantity": 10, "price": 100.0},
                                    account())
    assert not ok and "ALLOW_SHORTS=False" in reason
