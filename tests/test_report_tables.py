"""report_tables: the backtest report's trader tables, on hand-made trips and fills whose
figures are worked out by hand below."""
import re
from html.parser import HTMLParser

import pandas as pd
import pytest

import constants as C
import report_tables as R


def fill(seq, day, symbol, side, qty, price, pos_after, decided=None, **extra):
    return {"seq": seq, "date": day, "decided": decided or day, "symbol": symbol, "side": side,
            "quantity": qty, "fill_price": price, "commission": 0.0, "slippage_cost": 0.0,
            "position_after": pos_after, "notional": qty * price, **extra}


def trip(symbol, direction, entry, exit_, pnl, still_open=False, roe=None):
    return {"symbol": symbol, "direction": direction, "entry_date": entry, "exit_date": exit_,
            "open": still_open, "fills": 2, "pnl": pnl, "return_on_entry": roe, "commission": 0.0,
            "slippage": 0.0, "borrow_fees": 0.0}


TRADES = [
    fill(1, "2024-01-02", "AAA", "BUY", 10, 100.0, 10),
    fill(2, "2024-01-03", "AAA", "BUY", 10, 110.0, 20),
    fill(3, "2024-01-10", "AAA", "SELL", 20, 120.0, 0, decided="2024-01-09"),
    fill(4, "2024-01-10", "AAA", "SELL_SHORT", 5, 120.0, -5, decided="2024-01-09"),
    fill(5, "2024-02-01", "AAA", "BUY_TO_COVER", 5, 130.0, 0, decided="2024-01-31"),
    fill(6, "2024-02-05", "BBB", "SELL_SHORT", 100, 10.0, -100),
    fill(7, "2024-02-20", "BBB", "BUY_TO_COVER", 100, 9.0, 0, decided="2024-02-16"),
    fill(8, "2024-03-01", "CCC", "BUY", 3, 50.0, 3),
]
TRIPS = [
    trip("AAA", "long", "2024-01-02", "2024-01-10", 300.0, roe=300 / 2100),   # (120-100)*10 + (120-110)*10
    trip("AAA", "short", "2024-01-10", "2024-02-01", -50.0),                  # (120-130)*5
    trip("BBB", "short", "2024-02-05", "2024-02-20", 100.0),                  # (10-9)*100
    trip("CCC", "long", "2024-03-01", "2024-03-29", 6.0, still_open=True),
]
HALTS = [{"date": "2024-02-16", "halt": "max_drawdown", "equity": 90000.0}]


@pytest.fixture
def enriched():
    return R.enrich_round_trips(TRIPS, TRADES, HALTS)


def test_enriched_trips_prices_durations_and_why_closed(enriched):
    a_long, a_short, b_short, c_open = enriched
    assert a_long["entry_price"] == pytest.approx(105.0)            # (10*100 + 10*110) / 20
    assert a_long["exit_price"] == pytest.approx(120.0)
    assert a_long["quantity"] == 20 and a_long["duration_days"] == 8
    assert a_long["why_closed"] == "signal reversed"                # a short opened the same session
    assert a_short["entry_price"] == 120.0 and a_short["exit_price"] == 130.0
    assert a_short["why_closed"] == "target went to zero (signal or risk sizing)"
    assert b_short["why_closed"] == "risk halt"                     # decided on the halt's day
    assert b_short["duration_days"] == 15
    assert c_open["exit_price"] is None and c_open["why_closed"].startswith("still open")


def test_a_recorded_reason_wins():
    trades = [fill(1, "2024-01-02", "X", "SELL_SHORT", 5, 10.0, -5),
              fill(2, "2024-01-05", "X", "BUY_TO_COVER", 5, 11.0, 0, reason="forced buy-in: recall")]
    [t] = R.enrich_round_trips([trip("X", "short", "2024-01-02", "2024-01-05", -5.0)], trades)
    assert t["why_closed"] == "forced buy-in: recall"


def test_trip_stats_by_hand(enriched):
    s = R.trip_stats(enriched)                     # closed round trips only: CCC is still open
    assert s["trades"] == 3 and s["wins"] == 2 and s["losses"] == 1
    assert s["population"] == "closed round trips"
    assert s["open_trades"] == 1 and s["open_pnl"] == pytest.approx(6.0)
    assert s["win_rate"] == pytest.approx(2 / 3)
    assert s["total_pnl"] == pytest.approx(350.0)
    assert s["expectancy"] == pytest.approx(350.0 / 3)
    # expectancy = win rate * average win - loss rate * average loss
    assert s["expectancy"] == pytest.approx(2 / 3 * s["average_win"] - 1 / 3 * 50.0)
    assert s["average_loss"] == -50.0
    assert s["best"]["pnl"] == 300.0 and s["best"]["symbol"] == "AAA"
    assert s["worst"]["pnl"] == -50.0 and s["worst"]["side"] == "short"
    assert s["average_holding_days"] == pytest.approx((8 + 22 + 15) / 3)
    assert R.trip_stats([])["expectancy"] is None
    every = R.trip_stats(enriched, include_open=True)
    assert every["trades"] == 4 and every["expectancy"] == pytest.approx(89.0)


def test_headline_figures_state_their_population(enriched):
    """Issue 23: the headline said "Round trips 40" while its win rate and expectancy were over
    50 trades, 10 of them still open. Every figure is over the closed trips and says so."""
    import backtest_metrics
    import numpy as np
    from types import SimpleNamespace
    zeros = np.zeros(3)
    result = SimpleNamespace(equity=np.array([1000.0, 1010.0, 1020.0]), gross=zeros, trades=[],
                             daily_commission=zeros, daily_slippage=zeros, daily_borrow=zeros,
                             n_positions=zeros, rejections=0, cancelled=[], halts=[])
    m = backtest_metrics.trade_metrics(result, TRIPS)
    assert m["trades"] == 3 and m["open_trades"] == 1 and m["open_pnl"] == pytest.approx(6.0)
    assert m["win_rate"] == pytest.approx(2 / 3)                      # not 3 of 4
    assert m["average_trade"] == pytest.approx(350.0 / 3)
    report = {"passed": False, "start": "2024-01-02", "end": "2024-03-29",
              "metrics": {"strategy": {"days": 60, **m}, "benchmark": {}}}
    html = R.summary_block(report, R.trip_stats(enriched))
    assert "Closed round trips</span><b class=\"\">3 (+1 still open)</b>" in html
    assert "Win rate (3 closed)" in html and "Expectancy (3 closed)" in html
    stats = R.stats_block(R.trip_stats(enriched))
    assert "Expectancy per trade (3 closed round trips)" in stats
    assert "Still open at the end (not in the figures above)" in stats


def test_per_symbol_and_long_short(enriched):
    by_sym = {r["symbol"]: r for r in R.grouped_stats(enriched, "symbol")}
    assert by_sym["AAA"]["trades"] == 2 and by_sym["AAA"]["total_pnl"] == pytest.approx(250.0)
    assert by_sym["BBB"]["win_rate"] == 1.0
    sides = {r["direction"]: r for r in R.grouped_stats(enriched, "direction")}
    assert sides["long"]["total_pnl"] == pytest.approx(300.0)       # CCC's open trip is not closed
    assert sides["short"]["total_pnl"] == pytest.approx(50.0)
    html = R.per_symbol_table(enriched) + R.long_short_table(enriched)
    assert 'data-key="AAA" data-total="250.0" data-trades="2"' in html
    assert 'id="long-short"' in html


class _Cells(HTMLParser):
    """Text of every <td> per table row, for checking what a reader sees."""
    def __init__(self):
        super().__init__()
        self.rows, self._row, self._in = [], None, False

    def handle_starttag(self, tag, attrs):
        if tag == "tr":
            self._row = []
        elif tag == "td":
            self._in = True
            self._row.append("")

    def handle_endtag(self, tag):
        if tag == "tr" and self._row:
            self.rows.append(self._row)
        elif tag == "td":
            self._in = False

    def handle_data(self, data):
        if self._in:
            self._row[-1] += data


def test_round_trip_table_shows_every_column(enriched):
    p = _Cells()
    p.feed(R.round_trip_table(enriched))
    assert p.rows[0] == ["AAA", "long", "2024-01-02", "105.00", "2024-01-10", "120.00", "20", "$300.00",
                         "14.29%", "8 d", "signal reversed"]
    assert p.rows[3][4] == "2024-03-29 (open)"
    assert "Last 2 of 4" in R.round_trip_table(enriched, limit=2)


def test_yearly_totals_compound_the_months_and_sit_beside_the_heatmap():
    idx = pd.PeriodIndex([pd.Period("2023-11", "M"), pd.Period("2023-12", "M"), pd.Period("2024-01", "M")])
    monthly = pd.Series([0.10, -0.05, 0.02], index=idx)
    years = R.yearly_returns(monthly)
    assert years[2023] == pytest.approx(1.10 * 0.95 - 1)
    assert years[2024] == pytest.approx(0.02)
    p = _Cells()
    p.feed(R.monthly_heatmap_table(monthly))
    assert p.rows[0][0] == "2023" and p.rows[0][11] == "10.00%" and p.rows[0][12] == "-5.00%"
    assert p.rows[0][13] == "4.50%"          # year total in the last column
    assert p.rows[1][1] == "2.00%" and p.rows[1][13] == "2.00%"


def test_readable_parameters_not_json():
    params = {"start": "2024-01-02", "symbols": ["AAA", "BBB"], "initial_cash": 100000.0,
              "fill": "next_open", "in_sample": False,
              "costs": {"slippage_bps": 5.0, "commission_per_share": 0.0},
              "criteria": {"min_sharpe": 0.5, "max_drawdown": 0.2},
              "risk_limits": {"MAX_POSITION_PCT": 0.1, "ALLOW_SHORTS": True},
              "model_metadata": {"checksum": "abc", "weights": [1, 2, 3], "metrics": {"test": {"skill": 0.01}}}}
    html = R.readable_parameters(params)
    assert "{" not in re.sub(r"<[^>]+>", "", html)          # no raw JSON left for the reader
    assert '<dd data-param="symbols">AAA, BBB</dd>' in html
    assert '<dd data-param="initial_cash">$100,000.00</dd>' in html
    assert '<dd data-param="MAX_POSITION_PCT">10.00%</dd>' in html
    assert '<dd data-param="max_drawdown">20.00%</dd>' in html
    assert '<dd data-param="ALLOW_SHORTS">yes</dd>' in html
    assert "weights" not in html and "skill" in html


def test_short_period_note():
    assert R.short_period_note(C.REPORT_SHORT_PERIOD_SESSIONS, C.REPORT_MIN_TRADES_NOTE) is None
    note = R.short_period_note(60, 100)
    assert "one period of 60 sessions" in note and "--walk-forward" in note
    assert R.short_period_note(60, 100, folds=[{"fold": 1}, {"fold": 2}]) is None
    assert "3 round trips" in R.short_period_note(1000, 3)


def test_summary_block_and_fold_table(enriched):
    report = {"passed": False, "start": "2024-01-02", "end": "2024-03-29",
              "metrics": {"strategy": {"days": 60, "total_return": 0.0356, "sharpe": 1.234, "max_drawdown": -0.08,
                                       "trades": 4, "win_rate": 0.75},
                          "benchmark": {"total_return": 0.01}}}
    html = R.summary_block(report, R.trip_stats(enriched))
    assert 'id="summary-verdict" data-value=""><span>Go-live verdict</span><b class="">FAIL</b>' in html
    assert 'id="summary-expectancy" data-value="116.66666666666667"' in html
    assert ">3.56%<" in html and ">1.23<" in html
    folds = R.fold_table([{"fold": 1, "start": "2020-01-02", "total_return": 0.05, "sharpe": 0.7}])
    assert "<td>5.00%</td>" in folds and "<td>0.700</td>" in folds
    assert R.fold_table(None) == ""
