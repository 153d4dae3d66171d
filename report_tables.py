"""Tables and notes for the backtest report, as a trader reads one (freqtrade, backtesting.py):
pure functions from what the backtest already computes to dicts and HTML fragments.

Inputs (the shapes backtest.py produces):

* ``trips``: ``round_trips(result, last_close)`` - symbol, direction (long/short), entry_date,
  exit_date, open, fills, pnl, return_on_entry, commission, slippage, borrow_fees;
* ``trades``: ``EngineResult.trades`` - seq, date (fill day), decided (signal day), symbol, side,
  quantity, fill_price, commission, position_after, and optionally ``reason``;
* ``halts``: ``EngineResult.halts`` - dicts with ``date`` and ``halt``;
* ``monthly``: ``monthly_returns(equity)`` - a Series of calendar-month returns (PeriodIndex);
* ``parameters``: the report's parameters dict.

Nothing here reads files or the database, so every function is unit-tested on small inputs.
"""
from __future__ import annotations

import html
import math
from collections import defaultdict

import constants as C
from broker_base import BUY, OPENING_SIDES, SELL_SHORT, signed_quantity
from portfolio import money, to_date

E = html.escape
MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")

# Full-width layout for the report page (the lead swaps it for the old max-width:1100px body).
FULL_WIDTH_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:0;padding:16px 2vw;color:#222;max-width:none}
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(min(100%,460px),1fr));gap:16px}
.summary{display:grid;grid-template-columns:repeat(auto-fit,minmax(150px,1fr));gap:8px;margin:8px 0 16px}
.summary div{border:1px solid #ddd;border-radius:6px;padding:6px 10px} .summary b{display:block;font-size:1.2em}
.scroll{overflow-x:auto} table{border-collapse:collapse;margin:8px 0 18px}
td,th{border:1px solid #ccc;padding:4px 8px;text-align:right;white-space:nowrap}
td:first-child,th:first-child{text-align:left} th{background:#f3f3f3}
.pos{color:#1a7f37} .neg{color:#cf222e} .note{background:#fff3cd;border:1px solid #e0b000;padding:8px}
dl.params{display:grid;grid-template-columns:max-content 1fr;gap:2px 12px} dl.params dt{font-weight:600}
dl.params dd{margin:0} img{max-width:100%}
"""


# ----------------------------------------------------------------------------- formatting
def _money(x) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    return money(x)


def _pct(x) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    return f"{100 * x:.2f}%"


def _cls(x) -> str:
    return "" if not x else ("pos" if x > 0 else "neg")


def _table(headers, rows, tid) -> str:
    head = "".join(f"<th>{E(h)}</th>" for h in headers)
    return (f'<div class="scroll"><table id="{tid}"><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table></div>')


# ----------------------------------------------------------------------------- round trips
def why_closed(trip: dict, closing: list[dict], same_day: list[dict], halt_dates: set[str]) -> str:
    """Why a round trip ended, from the fills that closed it: a recorded ``reason`` wins; else a
    position opened the other way in the same session is a reversal, a halt on the signal day a
    risk halt; else the target went to zero (signal or sizing)."""
    if trip.get("open"):
        return "still open at the end (valued at the last close)"
    if not closing:
        return "closed"
    last = closing[-1]
    if last.get("reason"):
        return str(last["reason"])
    opposite = SELL_SHORT if trip["direction"] == "long" else BUY
    if any(t["side"] == opposite and t["symbol"] == trip["symbol"] for t in same_day):
        return "signal reversed"
    if str(last.get("decided"))[:10] in halt_dates:
        return "risk halt"
    return "target went to zero (signal or risk sizing)"


def fill_segments(trades: list[dict]) -> dict[str, list[list[dict]]]:
    """Each symbol's fills cut into round trips (flat -> position -> flat), in order: the same
    walk as backtest.round_trips, so the n-th segment of a symbol is its n-th round trip."""
    segments: dict[str, list[list[dict]]] = defaultdict(list)
    position: dict[str, int] = defaultdict(int)
    for t in sorted(trades, key=lambda t: t.get("seq", 0)):
        sym = t["symbol"]
        if position[sym] == 0:
            segments[sym].append([])
        segments[sym][-1].append(t)
        signed = signed_quantity(t["side"], t["quantity"])
        position[sym] = int(t.get("position_after", position[sym] + signed))
    return segments


def enrich_round_trips(trips: list[dict], trades: list[dict] | None = None,
                       halts: list[dict] | None = None) -> list[dict]:
    """Each trip with quantity (largest position), entry/exit prices (share-weighted fill
    prices of the opening/closing fills), duration_days (calendar), and why_closed."""
    halt_dates = {str(h.get("date"))[:10] for h in (halts or [])}
    segments = fill_segments(trades or [])
    by_day = defaultdict(list)
    for t in trades or []:
        by_day[(t["symbol"], str(t["date"])[:10])].append(t)
    taken: dict[str, int] = defaultdict(int)

    def avg(fills):
        shares = sum(t["quantity"] for t in fills)
        return sum(t["quantity"] * t["fill_price"] for t in fills) / shares if shares else None
    out = []
    for trip in sorted(trips, key=lambda t: (str(t["entry_date"]), t["symbol"])):
        sym = trip["symbol"]
        k = taken[sym]
        taken[sym] += 1
        seg = segments[sym][k] if k < len(segments.get(sym, [])) else []
        opening = [t for t in seg if t["side"] in OPENING_SIDES]
        closing = [t for t in seg if t["side"] not in OPENING_SIDES]
        entry, exit_ = str(trip["entry_date"])[:10], str(trip.get("exit_date") or "")[:10]
        positions = [abs(int(t.get("position_after", 0))) for t in seg]
        row = dict(trip)
        row.update({
            "side": trip["direction"],
            "quantity": max(positions) if positions else None,
            "entry_price": avg(opening), "exit_price": None if trip.get("open") else avg(closing),
            "duration_days": (to_date(exit_) - to_date(entry)).days if exit_ else None,
            "why_closed": why_closed(trip, closing, by_day.get((sym, exit_), []), halt_dates)})
        out.append(row)
    return out


def round_trip_rows(trips: list[dict]) -> list[dict]:
    """The round-trip table as plain rows (what the HTML shows)."""
    return [{"symbol": t["symbol"], "side": t.get("side", t["direction"]), "entry_date": t["entry_date"],
             "entry_price": t.get("entry_price"), "exit_date": t.get("exit_date"),
             "exit_price": t.get("exit_price"), "quantity": t.get("quantity"), "pnl": t["pnl"],
             "return": t.get("return_on_entry"), "duration_days": t.get("duration_days"),
             "why_closed": t.get("why_closed", ""), "open": bool(t.get("open"))} for t in trips]


def round_trip_table(trips: list[dict], limit: int | None = None) -> str:
    """HTML table of round trips (``enrich_round_trips`` output), newest last, at most ``limit``
    (default REPORT_MAX_TRIPS_SHOWN)."""
    limit = C.REPORT_MAX_TRIPS_SHOWN if limit is None else limit
    rows = round_trip_rows(trips)
    shown = rows[-limit:]
    if not shown:
        return "<p>No round trips.</p>"

    def px(x):
        return "-" if x is None else f"{x:,.2f}"
    html_rows = [
        f'<tr data-symbol="{E(r["symbol"])}" data-pnl="{r["pnl"]!r}"><td>{E(r["symbol"])}</td><td>{E(r["side"])}</td>'
        f'<td>{E(str(r["entry_date"]))}</td><td>{px(r["entry_price"])}</td><td>{E(str(r["exit_date"] or "-"))}'
        f'{" (open)" if r["open"] else ""}</td><td>{px(r["exit_price"])}</td><td>{r["quantity"] or "-"}</td>'
        f'<td class="{_cls(r["pnl"])}">{_money(r["pnl"])}</td><td>{_pct(r["return"])}</td>'
        f'<td>{"-" if r["duration_days"] is None else str(r["duration_days"]) + " d"}</td>'
        f'<td>{E(r["why_closed"])}</td></tr>' for r in shown]
    caption = (f"<p>Last {len(shown)} of {len(rows)} round trips (all are in the JSON).</p>"
               if len(shown) < len(rows) else "")
    return caption + _table(["symbol", "side", "entry", "entry price", "exit", "exit price", "max qty",
                             "P&L", "return", "held", "why closed"], html_rows, "round-trips")


# ----------------------------------------------------------------------------- statistics
def trip_stats(trips: list[dict], include_open: bool = False) -> dict:
    """Count, wins, losses, win rate, total, expectancy (mean P&L per trip = win rate x average
    win - loss rate x average loss), average win and loss, best and worst trip, average holding
    time (calendar days; trips without an exit date are left out of it). Over the closed round
    trips unless ``include_open``; ``open_trades`` and ``open_pnl`` count the open ones apart, so
    every figure states its population."""
    still_open = [t for t in trips if t.get("open")]
    if not include_open:
        trips = [t for t in trips if not t.get("open")]
    pnl = [float(t["pnl"]) for t in trips if t["pnl"] is not None and math.isfinite(float(t["pnl"]))]
    n = len(pnl)
    wins = [p for p in pnl if p > 0]
    losses = [p for p in pnl if p < 0]
    held = [t.get("duration_days") for t in trips]
    held = [h for h in held if h is not None]
    valid = [t for t in trips if t["pnl"] is not None and math.isfinite(float(t["pnl"]))]
    best = max(valid, key=lambda t: t["pnl"]) if valid else None
    worst = min(valid, key=lambda t: t["pnl"]) if valid else None
    avg_win = sum(wins) / len(wins) if wins else None
    avg_loss = sum(losses) / len(losses) if losses else None
    return {"trades": n, "population": "all round trips" if include_open else "closed round trips",
            "open_trades": len(still_open),
            "open_pnl": sum(float(t["pnl"]) for t in still_open if t["pnl"] is not None),
            "wins": len(wins), "losses": len(losses),
            "win_rate": len(wins) / n if n else None, "total_pnl": sum(pnl) if n else 0.0,
            "expectancy": sum(pnl) / n if n else None, "average_win": avg_win, "average_loss": avg_loss,
            "payoff_ratio": (avg_win / -avg_loss) if avg_win and avg_loss else None,
            "best": _brief(best), "worst": _brief(worst),
            "average_holding_days": sum(held) / len(held) if held else None}


def _brief(trip: dict | None) -> dict | None:
    if trip is None:
        return None
    return {"symbol": trip["symbol"], "side": trip.get("side", trip.get("direction")),
            "entry_date": trip["entry_date"], "exit_date": trip.get("exit_date"), "pnl": trip["pnl"]}


def grouped_stats(trips: list[dict], key: str) -> list[dict]:
    """``trip_stats`` per value of ``key`` (``symbol`` or ``direction``), sorted by total P&L,
    best first."""
    groups = defaultdict(list)
    for t in trips:
        groups[t.get(key)].append(t)
    rows = [{key: k, **trip_stats(v)} for k, v in groups.items()]
    rows.sort(key=lambda r: -r["total_pnl"])
    return rows


def _stats_table(rows: list[dict], key: str, tid: str) -> str:
    if not rows:
        return "<p>No round trips.</p>"
    body = []
    for r in rows:
        held = "n/a" if r["average_holding_days"] is None else f'{r["average_holding_days"]:.1f} d'
        body.append(
            f'<tr data-key="{E(str(r[key]))}" data-total="{r["total_pnl"]!r}" data-trades="{r["trades"]}">'
            f'<td>{E(str(r[key]))}</td><td>{r["trades"]}</td><td>{_pct(r["win_rate"])}</td>'
            f'<td class="{_cls(r["total_pnl"])}">{_money(r["total_pnl"])}</td><td>{_money(r["expectancy"])}</td>'
            f'<td>{_money((r["best"] or {}).get("pnl"))}</td><td>{_money((r["worst"] or {}).get("pnl"))}</td>'
            f'<td>{held}</td></tr>')
    return _table([key, "closed trips", "win rate", "total P&L", "expectancy", "best", "worst",
                   "avg held"], body, tid) + "<p class=\"small\">Closed round trips only.</p>"


def per_symbol_table(trips: list[dict]) -> str:
    return _stats_table(grouped_stats(trips, "symbol"), "symbol", "per-symbol")


def long_short_table(trips: list[dict]) -> str:
    return _stats_table(grouped_stats(trips, "direction"), "direction", "long-short")


def stats_block(stats: dict) -> str:
    """Best/worst trade, expectancy, average holding time as labelled figures."""
    best, worst = stats["best"], stats["worst"]

    def trip_text(t):
        return "n/a" if not t else f'{_money(t["pnl"])} ({t["symbol"]} {t["side"]}, {t["entry_date"]} .. {t["exit_date"]})'
    n = f'{stats["trades"]} closed round trips'
    items = [("expectancy", f"Expectancy per trade ({n})", _money(stats["expectancy"]), stats["expectancy"]),
             ("average-win", f"Average win ({n})", _money(stats["average_win"]), stats["average_win"]),
             ("average-loss", f"Average loss ({n})", _money(stats["average_loss"]), stats["average_loss"]),
             ("payoff", "Payoff ratio (avg win / avg loss)",
              "n/a" if stats["payoff_ratio"] is None else f'{stats["payoff_ratio"]:.2f}', stats["payoff_ratio"]),
             ("average-holding", "Average holding time",
              "n/a" if stats["average_holding_days"] is None else f'{stats["average_holding_days"]:.1f} days',
              stats["average_holding_days"]),
             ("best-trade", f"Best trade ({n})", trip_text(best), best and best["pnl"]),
             ("worst-trade", f"Worst trade ({n})", trip_text(worst), worst and worst["pnl"])]
    if stats.get("open_trades"):
        items.append(("open-trades", "Still open at the end (not in the figures above)",
                      f'{stats["open_trades"]} round trips, {_money(stats.get("open_pnl"))} at the last close',
                      stats["open_trades"]))
    rows = [f'<tr id="{i}" data-value="{"" if v is None else repr(float(v))}"><td>{E(label)}</td><td>{E(text)}</td></tr>'
            for i, label, text, v in items]
    return _table(["trade statistic", "value"], rows, "trade-stats")


# ----------------------------------------------------------------------------- calendar returns
def yearly_returns(monthly) -> dict[int, float]:
    """Calendar-year returns compounded from the monthly returns ({year: return})."""
    out: dict[int, float] = {}
    for period, r in monthly.items():
        year = period.year
        out[year] = (1.0 + out.get(year, 0.0)) * (1.0 + float(r)) - 1.0
    return out


def _heat(r) -> str:
    if r is None or not math.isfinite(r):
        return ""
    strength = min(abs(r) / 0.10, 1.0)                  # full colour at +/-10 % a month
    rgb = (26, 127, 55) if r >= 0 else (207, 34, 46)
    return f"background:rgba({rgb[0]},{rgb[1]},{rgb[2]},{0.12 + 0.6 * strength:.2f})"


def monthly_heatmap_table(monthly) -> str:
    """Months as columns, years as rows, the year's total in the last column."""
    if monthly is None or len(monthly) == 0:
        return "<p>No monthly returns.</p>"
    grid: dict[int, dict[int, float]] = defaultdict(dict)
    for period, r in monthly.items():
        grid[period.year][period.month] = float(r)
    years = yearly_returns(monthly)
    rows = []
    for year in sorted(grid):
        cells = "".join(
            f'<td style="{_heat(grid[year].get(m))}">{_pct(grid[year][m]) if m in grid[year] else ""}</td>'
            for m in range(1, 13))
        rows.append(f'<tr data-year="{year}" data-total="{years[year]!r}"><td>{year}</td>{cells}'
                    f'<td style="{_heat(years[year])}"><b>{_pct(years[year])}</b></td></tr>')
    return _table(["year", *MONTHS, "year total"], rows, "monthly-returns")


# ----------------------------------------------------------------------------- parameters and notes
PARAM_LABELS = {
    "start": "First session", "end": "Last session", "symbols": "Symbols", "initial_cash": "Starting cash",
    "fill": "Fills", "in_sample": "In-sample run", "out_of_sample_start": "Out-of-sample data starts",
    "model_in_sample_end": "Model's training/validation data ends", "costs": "Costs",
    "criteria": "Go-live criteria", "signal_threshold": "Signal threshold (|score|)",
    "trading_days_per_year": "Sessions per year", "risk_free_rate": "Risk-free rate", "policy": "Policy",
    "risk_limits": "Risk limits", "model_path": "Model file", "model_metadata": "Model",
    "gate_eligible": "Counts for the go-live gate", "slippage_bps": "Slippage (bps)",
    "commission_per_share": "Commission per share", "min_commission": "Minimum commission",
    "min_total_return": "Total return above", "min_sharpe": "Sharpe at least", "max_drawdown": "Max drawdown at most",
    "min_trades": "Round trips at least",
}
_PCT_KEYS = {"risk_free_rate", "min_total_return", "max_drawdown", "MAX_POSITION_PCT", "MAX_GROSS_EXPOSURE",
             "RISK_PER_TRADE", "MAX_DRAWDOWN", "DAILY_LOSS_LIMIT", "REBALANCE_BAND"}
_MONEY_KEYS = {"initial_cash", "MAX_ORDER_VALUE", "commission_per_share", "min_commission"}
_MODEL_KEYS = ("created_at", "trained_at", "profile", "window", "train_end", "validation_end", "test_start",
               "checksum", "metrics")


def _value_text(key: str, value) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if key in _PCT_KEYS and isinstance(value, (int, float)):
        return _pct(float(value))
    if key in _MONEY_KEYS and isinstance(value, (int, float)):
        return _money(float(value))
    if key == "fill" and value == "next_open":
        return "next session's open (signals after a close)"
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value) if value else "none"
    if value is None:
        return "n/a"
    return str(value)


def _dl(params: dict, depth: int = 0) -> str:
    items = []
    for key, value in params.items():
        label = PARAM_LABELS.get(key, str(key).replace("_", " "))
        if isinstance(value, dict):
            if key == "model_metadata":
                value = {k: value[k] for k in _MODEL_KEYS if k in value}
                if isinstance(value.get("metrics"), dict):
                    value["metrics"] = {k: v for k, v in (value["metrics"].get("test") or value["metrics"]).items()
                                        if not isinstance(v, (dict, list))}
            inner = _dl(value, depth + 1) if value and depth < 2 else E(_value_text(key, value or None))
            items.append(f"<dt>{E(label)}</dt><dd>{inner}</dd>")
        else:
            items.append(f'<dt>{E(label)}</dt><dd data-param="{E(str(key))}">{E(_value_text(key, value))}</dd>')
    return f'<dl class="params">{"".join(items)}</dl>'


def readable_parameters(parameters: dict) -> str:
    """The run's parameters as labelled lines (percentages, dollars, lists), not raw JSON."""
    return f'<div id="parameters">{_dl(parameters or {})}</div>'


def short_period_note(sessions: int, trades: int, folds: list | None = None) -> str | None:
    """A warning when the verdict rests on one short period (no walk-forward folds and fewer
    than REPORT_SHORT_PERIOD_SESSIONS sessions) or on few round trips; None when it does not."""
    reasons = []
    if not folds and sessions < C.REPORT_SHORT_PERIOD_SESSIONS:
        reasons.append(f"one period of {sessions} sessions (under {C.REPORT_SHORT_PERIOD_SESSIONS}, about a year)")
    if trades < C.REPORT_MIN_TRADES_NOTE:
        reasons.append(f"{trades} round trips (under {C.REPORT_MIN_TRADES_NOTE})")
    if not reasons:
        return None
    return ("The verdict rests on " + " and ".join(reasons) + ": chance alone can pass or fail it. "
            "Run ./run_backtest.sh --walk-forward for folds over the whole history.")


def fold_table(folds: list[dict] | None) -> str:
    """The walk-forward folds, one row each, whatever keys they carry ('' when there are none)."""
    if not folds:
        return ""
    keys = list(dict.fromkeys(k for f in folds for k in f if not isinstance(f[k], (dict, list))))

    def cell(k, v):
        if isinstance(v, float):
            return _pct(v) if any(s in k for s in ("return", "drawdown", "rate", "accuracy")) else f"{v:.3f}"
        return E(str(v))
    rows = [f'<tr>{"".join(f"<td>{cell(k, f.get(k))}</td>" for k in keys)}</tr>' for f in folds]
    return _table(keys, rows, "folds")


def summary_block(report: dict, stats: dict | None = None) -> str:
    """A short summary for the top of the report: verdict, period, return against buy & hold,
    Sharpe, max drawdown, round trips, win rate, expectancy."""
    s = report["metrics"]["strategy"]
    b = report["metrics"]["benchmark"]
    stats = stats or {}
    n = s.get("trades")
    open_n = s.get("open_trades") or 0
    opened = f" (+{open_n} still open)" if open_n else ""
    verdict = "PASS" if report.get("passed") else "FAIL"
    items = [("summary-verdict", "Go-live verdict", verdict, None),
             ("summary-period", "Period", f'{report["start"]} .. {report["end"]} ({s.get("days")} sessions)', None),
             ("summary-return", "Total return", _pct(s.get("total_return")), s.get("total_return")),
             ("summary-benchmark", "Buy & hold", _pct(b.get("total_return")), b.get("total_return")),
             ("summary-sharpe", "Sharpe", "n/a" if s.get("sharpe") is None else f'{s["sharpe"]:.2f}', s.get("sharpe")),
             ("summary-drawdown", "Max drawdown", _pct(s.get("max_drawdown")), s.get("max_drawdown")),
             ("summary-trades", "Closed round trips", f"{n}{opened}", n),
             ("summary-winrate", f"Win rate ({n} closed)", _pct(s.get("win_rate")), s.get("win_rate")),
             ("summary-expectancy", f"Expectancy ({stats.get('trades', n)} closed)", _money(stats.get("expectancy")),
              stats.get("expectancy"))]
    cells = "".join(f'<div id="{i}" data-value="{"" if v is None else repr(float(v))}"><span>{E(label)}</span>'
                    f'<b class="{_cls(v) if i in ("summary-return", "summary-expectancy") else ""}">{E(text)}</b></div>'
                    for i, label, text, v in items)
    return f'<div class="summary" id="summary">{cells}</div>'
