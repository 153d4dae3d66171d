"""One home for each rule the review found copied: the money format, the side names, the file
digest, skill and Sharpe (fast, in-process)."""
import math
import re
from datetime import date
from pathlib import Path

import numpy as np
import pytest

import fileutil
import model_management as mm
import skill_stats
from paper_broker import PaperBroker
from portfolio import money

ROOT = Path(__file__).resolve().parent.parent
MODULES = sorted(p for p in ROOT.glob("*.py"))


def order(side, qty, symbol, key):
    return {"symbol": symbol, "side": side, "quantity": qty, "order_type": "MARKET", "limit_price": None,
            "client_key": key}


def test_money_puts_the_sign_before_the_dollar():
    assert money(-3367.06) == "-$3,367.06" and money(1234.5) == "$1,234.50"
    assert money(-3367.06, signed=True) == "-$3,367.06" and money(12.5, signed=True) == "+$12.50"


def test_no_module_formats_dollars_by_hand():
    """A dollar amount is written by portfolio.money only (``f"${x:,.2f}"`` printed ``$-3,367.06``)."""
    by_hand = re.compile(r"\$\{[^}{]*:[^}]*\.\d+f\}")
    found = [f"{p.name}:{n}" for p in MODULES if p.name != "portfolio.py"
             for n, line in enumerate(p.read_text().splitlines(), 1) if by_hand.search(line)]
    assert not found, f"format money with portfolio.money: {found}"


def _losing_short_account():
    broker = PaperBroker(prices={"AAPL": 100.0}, as_of=date(2025, 3, 3))
    broker.place_order(order("SELL_SHORT", 100, "AAPL", "s1"))
    broker.set_prices({"AAPL": 133.6706}, as_of=date(2025, 3, 4))
    return broker


def test_status_and_history_print_a_loss_as_minus_dollar(capsys):
    import live_trading
    broker = _losing_short_account()
    assert live_trading.cmd_status(False, False) == 0
    out = capsys.readouterr().out
    assert "$-" not in out and "unrealised -$3,372.06" in out
    broker.place_order(order("BUY_TO_COVER", 100, "AAPL", "c1"))
    assert live_trading.cmd_history(False, None, False) == 0
    out = capsys.readouterr().out
    assert "$-" not in out and "realised -$3,3" in out


def test_positions_print_a_short_value_as_minus_dollar(capsys):
    import trading_cycle
    trading_cycle.print_positions(_losing_short_account())
    out = capsys.readouterr().out
    assert "$-" not in out and "-$13,367.06" in out


def test_side_and_order_type_names_are_not_written_as_bare_strings():
    """The order vocabulary is defined in broker_base.py (and the signal one in signals.py); other
    modules use the constants."""
    bare = re.compile(r"""(?<![A-Za-z_])["'](BUY|SELL|SELL_SHORT|BUY_TO_COVER)["']""")
    homes = {"broker_base.py", "signals.py"}
    found = [f"{p.name}:{n}" for p in MODULES if p.name not in homes
             for n, line in enumerate(p.read_text().splitlines(), 1)
             if bare.search(line.split("#")[0]) and '"""' not in line and "``" not in line]
    assert not found, found


def test_one_file_digest(tmp_path):
    f = tmp_path / "x.bin"
    f.write_bytes(b"abc" * 1_000_000)
    import hashlib
    assert fileutil.file_sha256(f) == hashlib.sha256(f.read_bytes()).hexdigest()
    assert mm.calculate_model_checksum(f) == fileutil.file_sha256(f)


def test_one_skill_rule():
    y = np.array([1.0, -1.0, 2.0, 0.5])
    assert mm.skill(y, y) == 1.0 and mm.skill(y, np.zeros(4)) == 0.0
    assert mm.skill(y, y, 0.5) == 1.0 and mm.skill(y, np.full(4, 0.5), 0.5) == 0.0
    assert mm.skill(np.zeros(3), np.ones(3)) is None and mm.skill([], []) is None
    assert mm.compute_metrics(y, y * 0.5)["skill"] == pytest.approx(mm.skill(y, y * 0.5))
    dm = skill_stats.diebold_mariano(y, y * 0.5, 0.0)
    assert dm["skill"] == pytest.approx(mm.skill(y, y * 0.5))


def test_one_sharpe_rule():
    import pandas as pd
    import backtest_metrics as M
    rng = np.random.default_rng(3)
    equity = pd.Series(100_000 * np.cumprod(1 + rng.normal(0.0005, 0.01, 300)),
                       index=pd.bdate_range("2024-01-02", periods=300))
    r = equity.pct_change().iloc[1:].to_numpy()
    assert M.performance_metrics(equity)["sharpe"] == pytest.approx(skill_stats.sharpe_ratio(r), rel=1e-12)
    flat = pd.Series([100.0] * 10, index=pd.bdate_range("2024-01-02", periods=10))
    assert M.performance_metrics(flat)["sharpe"] is None and skill_stats.sharpe_ratio(np.zeros(9)) is None
    assert not math.isnan(skill_stats.sharpe_ratio(r))
