"""The backtest report: charts (matplotlib, as base64 PNG), the trader's tables
(``add_trade_tables``: round trips with why each closed, per symbol, long/short, best and worst
trade, expectancy, holding time, yearly totals, the latest walk-forward's folds), the HTML page
and the JSON file under ``reports/`` (``backtest_<timestamp>.*`` and ``latest_backtest.*``,
written atomically), and ``fmt``, the one number format of the report and the console summary.
"""
from __future__ import annotations

import base64
import html
import io
import json
import logging
import math
import os
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

import config
import constants as C
import report_tables as rt
from backtest_metrics import monthly_returns
from fileutil import fsync_dir, write_temp_bytes
from fileutil import finite_json, json_default
from portfolio import money

log = logging.getLogger("backtest")


def fmt(value, kind: str) -> str:
    """A metric as text: kind ``pct``, ``int``, ``usd`` or ``num``; None and NaN are ``n/a``."""
    if value is None:
        return "n/a"
    if isinstance(value, float) and not math.isfinite(value):
        return "inf" if value > 0 else "n/a"
    if kind == "pct":
        return f"{value * 100:.2f}%"
    if kind == "int":
        return f"{int(value)}"
    if kind == "usd":
        return money(value)
    return f"{value:.3f}"



def _pyplot():
    # matplotlib is imported late: heavy, and only a written report needs it
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=96, bbox_inches="tight")
    _pyplot().close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def make_charts(equity: pd.Series, benchmark: pd.Series) -> dict[str, str]:
    """The three pictures as base64 PNG: equity vs benchmark, drawdown, monthly returns."""
    plt = _pyplot()

    charts = {}
    fig, ax = plt.subplots(figsize=(10, 4))
    ax.plot(equity.index, equity.to_numpy(), label="strategy", color="#1f77b4", lw=1.4)
    ax.plot(benchmark.index, benchmark.to_numpy(), label="equal-weight buy & hold", color="#7f7f7f", lw=1.1)
    ax.set_ylabel("equity (USD)")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left")
    ax.set_title("Equity")
    charts["equity"] = _png(fig)

    fig, ax = plt.subplots(figsize=(10, 2.6))
    for series, label, color in ((equity, "strategy", "#d62728"), (benchmark, "benchmark", "#7f7f7f")):
        dd = series / series.cummax() - 1.0
        ax.fill_between(dd.index, dd.to_numpy() * 100, 0, alpha=0.35 if label == "strategy" else 0.15,
                        color=color, label=label, step="post")
    ax.axhline(-C.GOLIVE_MAX_DRAWDOWN * 100, color="black", ls="--", lw=0.8, label="go-live limit")
    ax.set_ylabel("drawdown (%)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left")
    ax.set_title("Drawdown")
    charts["drawdown"] = _png(fig)

    mr = monthly_returns(equity)
    years = sorted({p.year for p in mr.index})
    grid = np.full((len(years), 12), np.nan)
    for p, v in mr.items():
        grid[years.index(p.year), p.month - 1] = v * 100
    fig, ax = plt.subplots(figsize=(10, 0.5 + 0.45 * max(len(years), 1)))
    lim = max(np.nanmax(np.abs(grid)) if np.isfinite(grid).any() else 1.0, 0.5)
    im = ax.imshow(grid, cmap="RdYlGn", vmin=-lim, vmax=lim, aspect="auto")
    ax.set_xticks(range(12), ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct",
                              "Nov", "Dec"])
    ax.set_yticks(range(len(years)), [str(y) for y in years])
    for (r, c), v in np.ndenumerate(grid):
        if np.isfinite(v):
            ax.text(c, r, f"{v:.1f}", ha="center", va="center", fontsize=8)
    fig.colorbar(im, ax=ax, label="%")
    ax.set_title("Monthly returns of the strategy (%)")
    charts["monthly"] = _png(fig)
    return charts


def _daily_equity(report: dict) -> pd.Series:
    daily = report.get("daily") or []
    return pd.Series([d["equity"] for d in daily], index=pd.DatetimeIndex([d["date"] for d in daily]),
                     dtype=float)


def latest_walk_forward(reports_dir=None) -> dict | None:
    """The folds of ``reports/latest_walkforward.json`` (walk_forward.py) with its title, verdict and
    page, or None when there is none (or it cannot be read: a warning, the report goes on)."""
    out = Path(reports_dir) if reports_dir else config.path(C.REPORTS_DIR)
    path = out / "latest_walkforward.json"
    if not path.exists():
        return None
    try:
        wf = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        log.warning("walk-forward report %s cannot be read (%s): the backtest report leaves its folds out",
                    path, exc)
        return None
    return {"title": wf.get("title"), "created_at": wf.get("created_at"), "passed": wf.get("passed"),
            "html": "latest_walkforward.html", "folds": wf.get("folds") or []}


def add_trade_tables(report: dict, reports_dir=None) -> dict:
    """The trader's tables, added to ``report`` (so the JSON carries what the page shows):
    ``round_trips`` enriched (entry/exit price, quantity, duration, why closed), ``trade_stats``,
    ``per_symbol``, ``long_short``, ``monthly_returns``, ``yearly_returns``, ``walk_forward`` and
    ``short_period_note``."""
    trips = rt.enrich_round_trips(report.get("round_trips") or [], report.get("trades") or [],
                                  report.get("halts"))
    monthly = monthly_returns(_daily_equity(report)) if report.get("daily") else pd.Series(dtype=float)
    wf = latest_walk_forward(reports_dir)
    report["round_trips"] = trips
    report["trade_stats"] = rt.trip_stats(trips)
    report["per_symbol"] = rt.grouped_stats(trips, "symbol")
    report["long_short"] = rt.grouped_stats(trips, "direction")
    report["monthly_returns"] = {str(p): float(v) for p, v in monthly.items()}
    report["yearly_returns"] = {str(y): v for y, v in rt.yearly_returns(monthly).items()}
    report["walk_forward"] = wf
    report["short_period_note"] = rt.short_period_note(
        int(report["metrics"]["strategy"].get("days") or len(report.get("daily") or [])),
        int(report["metrics"]["strategy"].get("trades") or 0), (wf or {}).get("folds"))
    return report


def _monthly_series(report: dict) -> pd.Series:
    months = report.get("monthly_returns") or {}
    return pd.Series(list(months.values()), index=pd.PeriodIndex(list(months), freq="M"), dtype=float)


METRIC_ROWS = [
    ("total_return", "Total return", "pct"), ("cagr", "CAGR", "pct"),
    ("annual_volatility", "Annualised volatility", "pct"), ("sharpe", "Sharpe", "num"),
    ("sortino", "Sortino", "num"), ("calmar", "Calmar", "num"), ("max_drawdown", "Max drawdown", "pct"),
    ("max_drawdown_duration_sessions", "Longest drawdown (sessions)", "int"),
    ("max_drawdown_duration_days", "Longest drawdown (calendar days)", "int"),
    ("win_rate", "Win rate (closed round trips)", "pct"),
    ("profit_factor", "Profit factor (closed round trips)", "num"),
    ("average_trade", "Average trade (USD, closed round trips)", "usd"),
    ("average_trade_return", "Average trade return (closed round trips)", "pct"),
    ("exposure", "Exposure (gross / equity)", "pct"), ("time_in_market", "Time in market", "pct"),
    ("turnover", "Turnover (x equity a year)", "num"), ("trades", "Trades (closed round trips)", "int"),
    ("open_trades", "Still open at the end (round trips)", "int"), ("open_pnl", "Open P&L at the end (USD)", "usd"),
    ("fills", "Fills (orders executed)", "int"), ("costs_paid", "Costs paid (USD)", "usd"),
    ("commission_paid", "  commission", "usd"), ("slippage_paid", "  slippage", "usd"),
    ("borrow_fees_paid", "  borrow fees", "usd"), ("final_equity", "Final equity", "usd"),
]


def render_html(report: dict, charts: dict[str, str]) -> str:
    """The report page: a short summary on top, then criteria, metrics, the trader's tables
    (``add_trade_tables`` is called here when the report does not carry them yet), charts,
    fills and readable parameters, over the full width of the window."""
    if "trade_stats" not in report:
        add_trade_tables(report)
    e = html.escape
    title = report["title"]
    verdict = "PASS" if report["passed"] else "FAIL"
    color = "#1a7f37" if report["passed"] else "#cf222e"
    crit_rows = "".join(
        f"<tr><td>{e(c['name'])}</td><td>{fmt(c['value'], c['format'])}</td><td>{e(c['rule'])} "
        f"{fmt(c['threshold'], c['format'])}</td><td style='color:{'#1a7f37' if c['passed'] else '#cf222e'}'>"
        f"<b>{'PASS' if c['passed'] else 'FAIL'}</b></td></tr>" for c in report["criteria"])
    s, b = report["metrics"]["strategy"], report["metrics"]["benchmark"]
    metric_rows = "".join(f"<tr id='metric-{k}'><td>{e(label)}</td><td>{fmt(s.get(k), f)}</td>"
                          f"<td>{fmt(b.get(k), f)}</td></tr>" for k, label, f in METRIC_ROWS)
    trades = report["trades"]
    shown = trades[-100:]
    trade_rows = "".join(
        f"<tr><td>{e(t['date'])}</td><td>{e(t['symbol'])}</td><td>{e(t['side'])}</td><td>{t['quantity']}</td>"
        f"<td>{t['fill_price']:.4f}</td><td>{t['commission']:.2f}</td><td>{t['slippage_cost']:.2f}</td>"
        f"<td>{e(t.get('reason', ''))}</td></tr>" for t in shown)
    halts = "".join(f"<li>{e(h['date'])}: {e(h['halt'])} (equity {h['equity']:,.2f})</li>"
                    for h in report.get("halts", [])) or "<li>none</li>"
    warn = ("<p class='note'>IN-SAMPLE: this run includes data the model was trained or validated on. "
            "Its numbers are optimistic and it does not count for going live.</p>" if report["in_sample"] else "")
    source = report["parameters"].get("data_source_label")
    banner = f"<p class='note' id='data-source'><b>{e(source)}</b></p>" if source else ""
    note = report.get("short_period_note")
    short = f"<p class='note' id='short-period'>{e(note)}</p>" if note else ""
    trips = report["round_trips"]
    wf = report.get("walk_forward")
    if wf:
        wf_html = (f"<h2>Walk-forward folds</h2><p>From the latest walk-forward run ({e(str(wf.get('title')))}, "
                   f"{e(str(wf.get('created_at')))}, verdict {'PASS' if wf.get('passed') else 'FAIL'}); full "
                   f"report: <a href='{e(wf['html'])}'>{e(wf['html'])}</a>.</p>{rt.fold_table(wf['folds'])}")
    else:
        wf_html = ("<h2>Walk-forward folds</h2><p>No walk-forward report existed when this report was "
                   "written: <code>./run_backtest.sh --walk-forward</code> writes one "
                   "(<a href='latest_walkforward.html'>latest_walkforward.html</a> beside this file, once "
                   "run).</p>")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{e(title)}</title>
<style>{rt.FULL_WIDTH_CSS}
.verdict{{font-size:1.4em;color:{color}}} .small{{font-size:0.85em;color:#555}}
</style></head><body>
<h1>{e(title)}</h1>
{banner}{warn}
<p class="verdict"><b>Go-live verdict: {verdict}</b></p>
{rt.summary_block(report, report["trade_stats"])}
{short}
<p>Model checksum <code>{e(str(report.get('model_checksum')))}</code>; period {e(report['start'])} .. {e(report['end'])}
({s.get('days')} sessions, {len(report['parameters'].get('symbols', []))} symbols);
fills at {e(report['parameters'].get('fill', ''))}; generated {e(report['created_at'])}.</p>
<div class="grid">
<div><h2>Go-live criteria (constants.py)</h2>
<div class="scroll"><table id="criteria"><tr><th>criterion</th><th>value</th><th>required</th><th>verdict</th></tr>
{crit_rows}</table></div>
<h2>Trade statistics</h2>{rt.stats_block(report["trade_stats"])}</div>
<div><h2>Metrics</h2>
<div class="scroll"><table id="metrics"><tr><th>metric</th><th>strategy</th><th>equal-weight buy &amp; hold</th></tr>
{metric_rows}</table></div>
<p class="small">{e(report['conventions'])}</p></div>
</div>
<div class="grid">
<div><h2>Equity</h2><img alt="equity curve" src="data:image/png;base64,{charts['equity']}"></div>
<div><h2>Drawdown</h2><img alt="drawdown" src="data:image/png;base64,{charts['drawdown']}"></div>
</div>
<h2>Monthly and yearly returns</h2>{rt.monthly_heatmap_table(_monthly_series(report))}
{wf_html}
<div class="grid">
<div><h2>Per symbol</h2>{rt.per_symbol_table(trips)}</div>
<div><h2>Long and short</h2>{rt.long_short_table(trips)}</div>
</div>
<h2>Round trips</h2>{rt.round_trip_table(trips)}
<h2>Risk events</h2><ul>{halts}</ul>
<p>Orders rejected by the pre-trade check: {s.get('risk_rejections', 0)};
orders not filled (no price on the fill day, the open beyond the price collar, or the position already
closed by its protective stop): {s.get('cancelled_orders', 0)}; protective stops filled: {s.get('stop_fills', 0)}.</p>
<h2>Last {len(shown)} of {len(trades)} fills</h2>
<div class="scroll"><table id="fills"><tr><th>date</th><th>symbol</th><th>side</th><th>qty</th><th>fill</th>
<th>commission</th><th>slippage</th><th>why</th></tr>
{trade_rows}</table></div>
<h2>Parameters</h2>{rt.readable_parameters(report["parameters"])}
<p class="small">Full data (daily equity, every fill, round trips): {e(report.get('json_name', ''))}</p>
</body></html>
"""


def write_report_files(prefix: str, report: dict, to_json, to_html,
                       reports_dir=None) -> tuple[Path, Path]:
    """``<prefix>_<UTC timestamp>.json`` and ``.html`` (``_2``, ``_3``... when taken), then
    ``latest_<prefix>.*`` (atomic copies), in the reports folder; ``report["json_name"]`` names
    the JSON file before ``to_json(report)`` and ``to_html(report)`` render it. The backtest's and
    the walk-forward's reports are written by this one function. All four are written to temp
    files first and renamed only when every one is complete: a full disk leaves no report without
    its page, no new ``latest_`` half beside an old one, and no temp file (StorageError)."""
    out = Path(reports_dir) if reports_dir else config.path(C.REPORTS_DIR)
    out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    base, k = f"{prefix}_{stamp}", 1
    while (out / f"{base}.json").exists() or (out / f"{base}.html").exists():
        k += 1
        base = f"{prefix}_{stamp}_{k}"
    report["json_name"] = f"{base}.json"
    text, page = to_json(report), to_html(report)
    json_path, html_path = out / f"{base}.json", out / f"{base}.html"
    targets = [(json_path, text), (html_path, page), (out / f"latest_{prefix}.json", text),
               (out / f"latest_{prefix}.html", page)]
    staged: list[Path] = []
    try:
        for target, content in targets:
            staged.append(write_temp_bytes(out, content.encode("utf-8"), prefix=f".{target.name}."))
            os.chmod(staged[-1], 0o644)
    except BaseException:
        for tmp in staged:
            tmp.unlink(missing_ok=True)
        raise
    for tmp, (target, _) in zip(staged, targets):
        os.replace(tmp, target)
    fsync_dir(out)
    return json_path, html_path


def write_reports(report: dict, charts: dict[str, str], reports_dir=None) -> tuple[Path, Path]:
    """``backtest_<timestamp>.json`` and ``.html``, then ``latest_backtest.*`` (atomic copies)."""
    return write_report_files(
        "backtest", report,
        lambda r: json.dumps(finite_json(r), indent=1, default=json_default, allow_nan=False),
        lambda r: render_html(r, charts), reports_dir)
