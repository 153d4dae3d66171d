"""The one rule for protective stop prices, collared limits and their fills (issue 22 points 1-2)."""
import pytest

import constants as C
import order_prices as op


def test_round_to_tick_is_exact_and_directional():
    assert op.round_to_tick(100.129, "down") == 100.12
    assert op.round_to_tick(100.121, "up") == 100.13
    assert op.round_to_tick(100.125, "nearest") in (100.12, 100.13)
    assert op.round_to_tick(0.3, "down") == 0.3  # no float drift (0.1 * 3)
    with pytest.raises(ValueError):
        op.round_to_tick(1.0, "sideways")


def test_price_text_is_a_string_on_the_tick():
    assert op.price_text(101.5) == "101.50"
    assert op.price_text(99.999) == "100.00"


def test_daily_volatility_of_constant_moves_is_zero_and_of_swings_positive():
    assert op.daily_volatility([100.0] * 30) == 0.0
    assert op.daily_volatility([100.0]) == 0.0
    swings = [100.0 if i % 2 == 0 else 102.0 for i in range(30)]
    assert op.daily_volatility(swings) > 0.01


def test_stop_price_long_below_short_above_with_floor(monkeypatch):
    monkeypatch.setattr(C, "STOP_VOL_MULTIPLE", 3.0)
    monkeypatch.setattr(C, "STOP_MIN_DISTANCE", 0.02)
    monkeypatch.setattr(C, "PRICE_TICK", 0.01)
    # 3 * 2 % vol = 6 % away
    assert op.stop_price("long", 100.0, 0.02) == 94.0
    assert op.stop_price("short", 100.0, 0.02) == 106.0
    # tiny volatility: the 2 % floor holds
    assert op.stop_price("long", 100.0, 0.0001) == 98.0
    # rounding never tightens the stop
    assert op.stop_price("long", 33.33, 0.02) <= 33.33 * 0.94
    assert op.stop_price("short", 33.33, 0.02) >= 33.33 * 1.06
    with pytest.raises(ValueError):
        op.stop_price("flat", 100.0, 0.02)
    with pytest.raises(ValueError):
        op.stop_price("long", 0.0, 0.02)


def test_collar_limit_is_marketable_and_bounded(monkeypatch):
    monkeypatch.setattr(C, "PRICE_COLLAR_BPS", 50.0)
    assert op.collar_limit("buy", 100.0) == 100.5
    assert op.collar_limit("sell", 100.0) == 99.5
    assert op.collar_limit("buy", 33.33) <= 33.33 * 1.005
    assert op.collar_limit("sell", 33.33) >= 33.33 * 0.995


def test_stop_fill_at_stop_price_or_at_a_gapping_open():
    # long stop at 94: an 8 % gap down opens at 92 -> fills at the open, not at 94
    assert op.stop_fill("long", 94.0, open_=92.0, low=90.0, high=93.0) == 92.0
    # trades through intraday -> the stop price
    assert op.stop_fill("long", 94.0, open_=99.0, low=93.5, high=100.0) == 94.0
    # never reached -> no fill
    assert op.stop_fill("long", 94.0, open_=99.0, low=95.0, high=100.0) is None
    # short mirrors with the high
    assert op.stop_fill("short", 106.0, open_=108.0, low=105.0, high=110.0) == 108.0
    assert op.stop_fill("short", 106.0, open_=101.0, low=100.0, high=106.5) == 106.0
    assert op.stop_fill("short", 106.0, open_=101.0, low=100.0, high=105.0) is None


def test_collar_fill_none_when_open_gaps_beyond_the_collar():
    assert op.collar_fill("buy", 100.5, open_=100.2) == 100.2
    assert op.collar_fill("buy", 100.5, open_=108.0) is None
    assert op.collar_fill("sell", 99.5, open_=99.9) == 99.9
    assert op.collar_fill("sell", 99.5, open_=92.0) is None


def test_order_type_switch(monkeypatch):
    monkeypatch.setattr(C, "ORDER_TYPE", "limit_collar")
    assert op.uses_collar()
    monkeypatch.setattr(C, "ORDER_TYPE", "market")
    assert not op.uses_collar()


def test_collar_limit_is_accepted_by_schwab_py_builder():
    """The limit text goes into schwab-py's own builder unchanged (no float truncation)."""
    equities = pytest.importorskip("schwab.orders.equities")
    spec = equities.equity_buy_limit("AAPL", 10, op.price_text(op.collar_limit("buy", 187.33))).build()
    assert spec["orderType"] == "LIMIT"
    assert spec["price"] == op.price_text(op.collar_limit("buy", 187.33))


def test_split_stop_moves_the_stop_away_from_the_price(monkeypatch):
    monkeypatch.setattr(C, "PRICE_TICK", 0.01)
    assert op.split_stop("long", 95.01, 2.0) == 47.5          # 47.505 rounded down
    assert op.split_stop("short", 105.01, 2.0) == 52.51       # 52.505 rounded up
    assert op.split_stop("long", 30.0, 0.5) == 60.0           # a reverse split
    with pytest.raises(ValueError):
        op.split_stop("long", 30.0, 0.0)


def test_within_limit_never_pays_beyond_the_limit():
    assert op.within_limit("buy", 100.6, 100.5) == 100.5 and op.within_limit("buy", 100.4, 100.5) == 100.4
    assert op.within_limit("sell", 99.4, 99.5) == 99.5 and op.within_limit("sell", 99.6, 99.5) == 99.6
    with pytest.raises(ValueError):
        op.within_limit("hold", 1.0, 1.0)
