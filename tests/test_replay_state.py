"""--as-of replays use a throwaway state database: the real paper account never sees them."""
from datetime import date

import pytest

import config
import constants as C
import state_db
from paper_broker import PaperBroker


def order(side, qty, symbol, key):
    return {"symbol": symbol, "side": side, "quantity": qty, "order_type": "MARKET", "limit_price": None,
            "client_key": key}


def replay_broker(session, **kw) -> PaperBroker:
    """A paper broker on the replay database of ``session`` (the value a replay passes down)."""
    return PaperBroker(conn=state_db.connect(state_db.prepare_replay(session)), **kw)


def test_replay_account_is_separate_from_the_real_one():
    real = PaperBroker(prices={"AAPL": 100.0}, as_of=date(2025, 3, 3))
    real.place_order(order("BUY", 10, "AAPL", "real"))
    real_cash = real.get_account_balance()["cash"]

    assert state_db.prepare_replay("2024-03-04") == config.path(C.REPLAY_STATE_DB_FILE)
    assert config.state_db_file() == config.path(C.STATE_DB_FILE)     # nothing process-wide changed
    replay = replay_broker("2024-03-04", prices={"AAPL": 50.0}, as_of=date(2024, 3, 4))
    assert replay.get_positions() == {} and replay.get_account_balance()["cash"] == C.INITIAL_PAPER_CASH
    replay.place_order(order("SELL_SHORT", 30, "AAPL", "replay"))

    again = PaperBroker()
    assert again.get_positions()["AAPL"]["quantity"] == 10
    assert again.get_account_balance()["cash"] == pytest.approx(real_cash)
    assert again.last_borrow_accrual() is None        # no year-old short was ever charged here
    assert config.path(C.REPLAY_STATE_DB_FILE).exists()


def test_replay_continues_forward_and_starts_fresh_when_going_back():
    replay_broker("2024-03-04", prices={"AAPL": 50.0}, as_of=date(2024, 3, 4)).place_order(
        order("BUY", 5, "AAPL", "a"))
    assert replay_broker("2024-03-05").get_positions()["AAPL"]["quantity"] == 5   # forward: the same account
    assert replay_broker("2024-01-02").get_positions() == {}    # back in time: a fresh account
    assert PaperBroker().get_positions() == {}                  # the real account never saw them


def test_readonly_connection_never_creates_the_database():
    assert state_db.connect_readonly() is None
    assert not config.path(C.STATE_DB_FILE).exists()
    state_db.connect().close()
    conn = state_db.connect_readonly()
    with pytest.raises(Exception):
        conn.execute("CREATE TABLE x (y)")
