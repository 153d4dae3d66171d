"""The trading settings: the risk limits and the cost model as one frozen value.

``TradingSettings.from_constants()`` builds it from ``constants.py``, which stays the only place
that declares these tunables and their defaults (each field names its constant). Whoever needs a
limit or a cost receives a ``TradingSettings``: the risk manager, the short rules, the paper
broker, the live cycle, order planning, the backtest engine, the backtest and the walk-forward.
A backtest, a sweep or a test that wants other limits passes another one, e.g.
``TradingSettings.from_constants().replace(max_positions=3)``; nothing patches a module global.

The rules that use the values live elsewhere: limits, sizing and halts in ``risk_management.py``,
the short rules in ``short_rules.py``, the cost formulas in ``broker_base.py``.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import constants as C


@dataclass(frozen=True)
class TradingSettings:
    """Risk limits (``risk_management``, ``short_rules``) and the cost model (``broker_base``).
    Units as in ``constants.py``; every field's constant is its upper-case name, except the
    cost fields, named after ``PAPER_*`` / ``DEFAULT_BORROW_RATE`` (see ``from_constants``)."""

    # risk: limits, sizing and halts
    max_position_pct: float            # MAX_POSITION_PCT, fraction of equity
    max_gross_exposure: float          # MAX_GROSS_EXPOSURE, fraction of equity
    max_positions: int                 # MAX_POSITIONS, count
    max_order_value: float             # MAX_ORDER_VALUE, USD
    price_sanity_pct: float            # PRICE_SANITY_PCT, fraction
    risk_per_trade: float              # RISK_PER_TRADE, fraction of equity per daily sigma
    max_size_scale: float              # MAX_SIZE_SCALE, multiple
    rebalance_band: float              # REBALANCE_BAND, fraction of the position
    max_drawdown: float                # MAX_DRAWDOWN, fraction from the peak
    daily_loss_limit: float            # DAILY_LOSS_LIMIT, fraction of the day's start
    # risk: shorts
    allow_shorts: bool                 # ALLOW_SHORTS
    max_borrow_rate: float             # MAX_BORROW_RATE, annual fraction
    require_borrow_data: bool          # REQUIRE_BORROW_DATA
    ex_dividend_window_days: int       # EX_DIVIDEND_WINDOW_DAYS, days
    forced_buyin_limit: int            # FORCED_BUYIN_LIMIT, count
    forced_buyin_lookback_days: int    # FORCED_BUYIN_LOOKBACK_DAYS, days
    # the cost model (paper broker and backtest)
    slippage_bps: float                # PAPER_SLIPPAGE_BPS, basis points
    commission_per_share: float        # PAPER_COMMISSION_PER_SHARE, USD per share
    min_commission: float              # PAPER_MIN_COMMISSION, USD per order
    borrow_rate: float                 # DEFAULT_BORROW_RATE, annual fraction (a short without a quoted rate)
    borrow_day_count: int              # BORROW_DAY_COUNT, days per year (ACT/360)
    short_margin_req: float            # PAPER_SHORT_MARGIN_REQ, multiple of the short market value

    @classmethod
    def from_constants(cls) -> "TradingSettings":
        """The settings as ``constants.py`` declares them (the live system's)."""
        return cls(
            max_position_pct=C.MAX_POSITION_PCT, max_gross_exposure=C.MAX_GROSS_EXPOSURE,
            max_positions=C.MAX_POSITIONS, max_order_value=C.MAX_ORDER_VALUE,
            price_sanity_pct=C.PRICE_SANITY_PCT, risk_per_trade=C.RISK_PER_TRADE,
            max_size_scale=C.MAX_SIZE_SCALE, rebalance_band=C.REBALANCE_BAND,
            max_drawdown=C.MAX_DRAWDOWN, daily_loss_limit=C.DAILY_LOSS_LIMIT,
            allow_shorts=C.ALLOW_SHORTS, max_borrow_rate=C.MAX_BORROW_RATE,
            require_borrow_data=C.REQUIRE_BORROW_DATA,
            ex_dividend_window_days=C.EX_DIVIDEND_WINDOW_DAYS,
            forced_buyin_limit=C.FORCED_BUYIN_LIMIT,
            forced_buyin_lookback_days=C.FORCED_BUYIN_LOOKBACK_DAYS,
            slippage_bps=C.PAPER_SLIPPAGE_BPS, commission_per_share=C.PAPER_COMMISSION_PER_SHARE,
            min_commission=C.PAPER_MIN_COMMISSION, borrow_rate=C.DEFAULT_BORROW_RATE,
            borrow_day_count=C.BORROW_DAY_COUNT, short_margin_req=C.PAPER_SHORT_MARGIN_REQ)

    def replace(self, **changes) -> "TradingSettings":
        """A copy with ``changes`` (field names); an unknown name is a TypeError naming it."""
        return dataclasses.replace(self, **changes)

    def with_zero_costs(self) -> "TradingSettings":
        """The same limits with no slippage, commission or borrow fee (tests of the accounting)."""
        return self.replace(slippage_bps=0.0, commission_per_share=0.0, min_commission=0.0,
                            borrow_rate=0.0)

    def risk_limits(self) -> dict:
        """The risk limits by their constant's name (``{"MAX_POSITIONS": 10, ...}``), as a report
        records them; two settings with equal ``risk_limits()`` trade alike."""
        return {f.name.upper(): getattr(self, f.name) for f in dataclasses.fields(self)
                if f.name not in _COST_FIELDS}

    def cost_model(self) -> dict:
        """The cost model as recorded with a backtest or walk-forward run."""
        return {"slippage_bps": float(self.slippage_bps),
                "commission_per_share": float(self.commission_per_share),
                "min_commission": float(self.min_commission), "borrow_rate": float(self.borrow_rate),
                "borrow_day_count": self.borrow_day_count}

    def costs_not_below(self, other: "TradingSettings") -> bool:
        """Whether every cost here is at least ``other``'s (a run with lower costs than the paper
        broker's does not count as evidence for the go-live gate)."""
        return (self.slippage_bps >= other.slippage_bps - 1e-12
                and self.commission_per_share >= other.commission_per_share - 1e-12
                and self.min_commission >= other.min_commission - 1e-12
                and self.borrow_rate >= other.borrow_rate - 1e-12)


_COST_FIELDS = frozenset({"slippage_bps", "commission_per_share", "min_commission", "borrow_rate",
                          "borrow_day_count", "short_margin_req"})


def default_settings() -> TradingSettings:
    """``TradingSettings.from_constants()``: what a caller that passes no settings gets."""
    return TradingSettings.from_constants()
