"""The shared broker rules: the cost model (slippage, commission, borrow fee, paper buying power),
order validation, and the one interface both brokers offer (``simulated``, ``set_prices``)."""
import pytest

import broker_base as B
import constants as C
from errors import UserFacingError
from broker_base import (OrderRejectedError, borrow_fee, commission_for, paper_buying_power,
                         slippage_price, validate_order)
from schwab_fake import api, cm, fake  # noqa: F401  (fixtures)


# ------------------------------------------------------------------ cost model
def test_slippage_price_direction():
    assert slippage_price(100.0, "BUY", 5) == pytest.approx(100.05)
    assert slippage_price(100.0, "BUY_TO_COVER", 5) == pytest.approx(100.05)
    assert slippage_price(100.0, "SELL", 5) == pytest.approx(99.95)
    assert slippage_price(100.0, "SELL_SHORT", 5) == pytest.approx(99.95)
    assert slippage_price(100.0, "BUY", 0) == 100.0
    with pytest.raises(ValueError):
        slippage_price(100.0, "HOLD", 5)


def test_commission_for():
    assert commission_for(100, 0.01, 1.0) == pytest.approx(1.0)
    assert commission_for(1000, 0.01, 1.0) == pytest.approx(10.0)
    assert commission_for(0, 0.01, 1.0) == 0.0
    assert commission_for(10) == max(10 * C.PAPER_COMMISSION_PER_SHARE, C.PAPER_MIN_COMMISSION)


def test_borrow_fee_act_360():
    assert borrow_fee(100, 50.0, 0.036, 1) == pytest.approx(100 * 50 * 0.036 / 360)
    assert borrow_fee(-100, 50.0, 0.036, 3) == pytest.approx(1.5)
    assert borrow_fee(100, 50.0, 0.036, 0) == 0.0
    assert borrow_fee(100, 50.0, 0.0, 5) == 0.0


def test_paper_buying_power():
    assert paper_buying_power(10_000.0, 0.0) == 10_000.0
    assert paper_buying_power(15_000.0, 5_000.0) == pytest.approx(15_000 - C.PAPER_SHORT_MARGIN_REQ * 5_000)
    # a margin deficit is reported as 0, and kept signed for the order checks
    assert paper_buying_power(1_000.0, 5_000.0) == 0.0
    assert paper_buying_power(1_000.0, 5_000.0, allow_negative=True) == pytest.approx(
        1_000 - C.PAPER_SHORT_MARGIN_REQ * 5_000)


# ------------------------------------------------------------------ orders
def test_validate_order_normalizes():
    o = validate_order({"symbol": " brk.b ", "side": "sell_short", "quantity": 5.0,
                        "order_type": "limit", "limit_price": "12.5"})
    assert (o["symbol"], o["side"], o["quantity"], o["order_type"], o["limit_price"]) == (
        "BRK.B", B.SELL_SHORT, 5, B.LIMIT, 12.5)
    assert o["client_key"]                                  # generated when none is given
    assert validate_order({"symbol": "AAPL", "side": "BUY", "quantity": 1})["order_type"] == B.MARKET
    with pytest.raises(OrderRejectedError, match="use one of BUY, SELL, SELL_SHORT, BUY_TO_COVER"):
        validate_order({"symbol": "AAPL", "side": "HOLD", "quantity": 1})


def test_errors_are_user_facing_and_ordered():
    assert issubclass(B.BrokerError, UserFacingError)
    assert issubclass(B.TokenExpiredError, B.AuthenticationError)
    assert issubclass(B.OrderStatusUnknownError, B.TransientBrokerError)
    assert B.OrderStatusUnknownError("x").ambiguous is True
    assert B.OPEN_STATUSES.isdisjoint(B.FINAL_STATUSES)


# ------------------------------------------------------------------ one interface
def test_both_brokers_take_prices_and_say_whether_they_simulate(api, fake):
    from paper_broker import PaperBroker
    paper = PaperBroker()
    assert paper.simulated is True and api.simulated is False
    paper.set_prices({"AAPL": 100.0}, as_of="2025-03-03")
    assert paper.get_quotes(["AAPL"])["AAPL"]["last"] == 100.0
    sent = len(fake.requests)
    assert api.set_prices({"AAPL": 100.0}, as_of="2025-03-03") is None   # Schwab prices itself
    assert len(fake.requests) == sent                                     # and nothing is sent
