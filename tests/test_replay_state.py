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


@pytest.fixture(autouse=True)
def real_db_afterwards():
    yield
    config.set_replay(False)


def test_replay_account_is_separate_from_the_real_one():
    real = PaperBroker(prices={"AAPL": 100.0}, as_of=date(2025, 3, 3))
    real.place_order(order("BUY", 10, "AAPL", "real"))
    real_cash = real.get_account_balance()["cash"]

    state_db.prepare_replay("2024-03-04")
    assert config.state_db_file() == config.path(C.REPLAY_STATE_DB_FILE)
    replay = PaperBroker(prices={"AAPL": 50.0}, as_of=date(2024, 3, 4))
    assert replay.get_positions() == {} and replay.get_account_balance()["cash"] == C.INITIAL_PAPER_CASH
    replay.place_order(order("SELL_SHORT", 30, "AAPL", "replay"))

    config.set_replay(False)
    again = PaperBroker()
    assert again.get_positions()["AAPL"]["quantity"] == 10
    assert again.get_account_balance()["cash"] == pytest.approx(real_cash)
    assert again.last_borrow_accrual() is None        # no year-old short was ever charged here
    assert config.path(C.REPLAY_STATE_DB_FILE).exists()


def test_replay_continues_forward_and_starts_fresh_when_going_back():
    state_db.prepare_replay("2024-03-04")
    PaperBroker(prices={"AAPL": 50.0}, as_of=date(2024, 3, 4)).place_order(order("BUY", 5, "AAPL", "a"))
    state_db.prepare_replay("2024-03-05")                       # forward: the same replay account
    assert PaperBroker().get_positions()["AAPL"]["quantity"] == 5
    state_db.prepare_replay("2024-01-02")                       # back in time: a fresh account
    assert PaperBroker().get_positions() == {}


def test_readonly_connection_never_creates_the_database():
    assert state_db.connect_readonly() is None
    assert not config.path(C.STATE_DB_FILE).exists()
    state_db.connect().close()
    conn = state_db.connect_readonly()
    with pytest.raises(Exception):
        conn.execute("CREATE TABLE x (y)")
