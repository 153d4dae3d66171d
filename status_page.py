"""The operator's status page, ``reports/status.html``: one self-contained HTML file (inline CSS
and SVG, no script, nothing loaded from the network) that reads well on a phone.

``build_status_page(home=None, health=None, schedule=None, drift=None) -> Path`` gathers
everything read-only (the state database is opened read-only and never created; the audit log's
last lines are read) and writes the page atomically. Each section says "no data yet" when its
piece is missing, and "unavailable: <why>" when reading it failed, so one broken piece never
hides the rest.

Sections (each an element with a stable ``id``; figures carry ``data-*`` attributes with the
raw numbers so tests and scripts can read them): mode, kill switch, health lines, equity and
drawdown curves (inline SVG from the ``equity_curve`` table), money (equity, cash, realised,
unrealised and day P&L), positions with P&L, recent round trips, recent orders (the
``orders`` table), audit records, latest signals with their scores against SIGNAL_THRESHOLD
(drift_monitor's ``predictions`` table), drift, circuit breaker, risk (drawdown, halts),
go-live gate, schedule (lines given by the caller).

``serve(port)`` serves that one file read-only on 127.0.0.1 (``python live_trading.py serve``).
"""
from __future__ import annotations

import argparse
import html
import json
import logging
import os
import sqlite3
from datetime import datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import broker_gateway
import config
import constants as C
from portfolio import money
import golive
import drift_monitor
import shadow_model
import pnl
import reconcile_breaks
import state_db
from order_book import OrderBook
from fileutil import atomic_write_text
from model_management import calculate_model_checksum
from risk_management import RiskManager

log = logging.getLogger("status_page")

E = html.escape
NO_DATA = "no data yet"


# ----------------------------------------------------------------------------- formatting
def _money(x) -> str:
    return "n/a" if x is None else money(x)


def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.2f}%"


def _sign_class(x) -> str:
    if x is None or x == 0:
        return ""
    return "pos" if x > 0 else "neg"


def _num_attr(x) -> str:
    return "" if x is None else repr(float(x))


def _section(sid: str, title: str, body: str, extra: str = "") -> str:
    return f'<section id="{sid}"{extra}><h2>{E(title)}</h2>{body}</section>\n'


def _table(headers: list[str], rows: list[str], tid: str) -> str:
    head = "".join(f"<th>{E(h)}</th>" for h in headers)
    return f'<div class="scroll"><table id="{tid}"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table></div>'


def _nodata(why: str = NO_DATA) -> str:
    return f'<p class="nodata">{E(why)}</p>'


# ----------------------------------------------------------------------------- SVG charts
def svg_line_chart(values: list[float], labels: list[str], chart_id: str, fill: bool = False,
                   fmt=_money, width: int = 640, height: int = 200) -> str:
    """An inline SVG line (or filled area) chart of ``values``; first/last labels and min/max."""
    if not values:
        return _nodata()
    pad_l, pad_r, pad_t, pad_b = 4, 4, 6, 4
    lo, hi = min(values), max(values)
    if fill:
        hi = max(hi, 0.0)
    span = (hi - lo) or (abs(hi) or 1.0)
    n = len(values)

    def xy(i, v):
        x = pad_l + (width - pad_l - pad_r) * (i / (n - 1) if n > 1 else 0.5)
        y = pad_t + (height - pad_t - pad_b) * (hi - v) / span
        return f"{x:.1f},{y:.1f}"
    points = " ".join(xy(i, v) for i, v in enumerate(values))
    if fill:
        base = pad_t + (height - pad_t - pad_b) * (hi - 0.0) / span
        first_x, last_x = xy(0, values[0]).split(",")[0], xy(n - 1, values[-1]).split(",")[0]
        shape = (f'<polygon class="area" points="{first_x},{base:.1f} {points} {last_x},{base:.1f}"/>')
    else:
        shape = f'<polyline class="line" points="{points}"/>'
    dot = "" if n > 1 else f'<circle class="dot" cx="{xy(0, values[0]).split(",")[0]}" cy="{xy(0, values[0]).split(",")[1]}" r="3"/>'
    svg = (f'<svg id="{chart_id}" class="chart" viewBox="0 0 {width} {height}" preserveAspectRatio="none" '
           f'role="img" aria-label="{E(chart_id)}" data-points="{n}" data-last="{values[-1]!r}" '
           f'data-min="{lo!r}" data-max="{max(values)!r}">'
           f'<line class="axis" x1="0" y1="{height - pad_b}" x2="{width}" y2="{height - pad_b}"/>{shape}{dot}</svg>')
    caption = (f'<div class="caption"><span>{E(labels[0])}</span><span>high {E(fmt(max(values)))} &middot; '
               f'low {E(fmt(min(values)))} &middot; last {E(fmt(values[-1]))}</span><span>{E(labels[-1])}</span></div>')
    return svg + caption


# ----------------------------------------------------------------------------- gathering (read-only)
def _safe(what: str, fn, *args):
    """(value, None) or (None, "unavailable: ...") - one failing piece never stops the page."""
    try:
        return fn(*args), None
    except sqlite3.OperationalError as exc:
        if "readonly" in str(exc) or "no such table" in str(exc):   # nothing of that kind ran yet
            return None, None
        log.warning("status page: %s unavailable: %s", what, exc)
        return None, f"unavailable: OperationalError: {exc}"
    except Exception as exc:
        log.warning("status page: %s unavailable: %s: %s", what, type(exc).__name__, exc)
        return None, f"unavailable: {type(exc).__name__}: {exc}"


def tail_lines(path: Path, n: int, block: int = 65536) -> list[str]:
    """The last ``n`` lines of a text file without reading all of it."""
    if not path.exists():
        return []
    with open(path, "rb") as fh:
        fh.seek(0, os.SEEK_END)
        size = fh.tell()
        data = b""
        pos = size
        while pos > 0 and data.count(b"\n") <= n:
            step = min(block, pos)
            pos -= step
            fh.seek(pos)
            data = fh.read(step) + data
    return [ln for ln in data.decode("utf-8", errors="replace").splitlines() if ln.strip()][-n:]


def _kv(conn, key):
    return state_db.kv_get(conn, key)


def _latest_predictions(conn) -> list[dict]:
    row = conn.execute("SELECT date, model_checksum FROM predictions ORDER BY date DESC, created_at DESC "
                       "LIMIT 1").fetchone()
    if row is None:
        return []
    rows = conn.execute("SELECT * FROM predictions WHERE date = ? AND model_checksum = ? ORDER BY symbol",
                        (row["date"], row["model_checksum"])).fetchall()
    return [dict(r) for r in rows]


def _recent_orders(conn, n: int) -> list[dict]:
    return OrderBook(conn, create=False).recent(n)


def _breaker(conn) -> dict | None:
    return broker_gateway.read_breaker(conn)


def _risk(conn) -> dict:
    return RiskManager(conn=conn).status()


def _gate(conn) -> dict | None:
    model = config.path(C.MODEL_FILE)
    if not model.exists():
        return None
    return golive.gate_status(calculate_model_checksum(model), conn)


def _shadow(conn) -> dict | None:
    return shadow_model.as_json(shadow_model.progress(conn))


def _render_shadow(data) -> str:
    """The shadow model's progress: sessions recorded / needed, DM statistic and p-value, verdict."""
    shadow = data.get("shadow")
    text = shadow_model.progress_line(shadow) if shadow else (data.get("shadow_error") or "none")
    verdict = (shadow or {}).get("verdict", "")
    return (f'<li id="shadow" data-sessions="{(shadow or {}).get("sessions", "")}" data-needed="'
            f'{(shadow or {}).get("needed", "")}" data-verdict="{E(str(verdict))}">shadow model: {E(text)}</li>')


def gather(health=None, schedule=None, drift=None) -> dict:
    """Everything the page shows, as plain data (also handy for ``status --json``)."""
    data = {"generated_at": datetime.now().astimezone().isoformat(timespec="seconds"),
            "home": str(config.home()), "health": health, "schedule": schedule,
            "data_source_label": config.data_source_banner(),
            "replay_exists": config.state_db_file(replay=True).exists()}
    data["mode"], data["mode_error"] = _safe("mode", config.trading_mode)
    mode = data["mode"] or C.DEFAULT_TRADING_MODE
    audit_path = config.path(C.AUDIT_LOG_FILE)
    lines, data["audit_error"] = _safe("audit", tail_lines, audit_path, C.STATUS_RECENT_AUDIT)
    audit = []
    for line in lines or []:
        try:
            audit.append(json.loads(line))
        except ValueError:
            audit.append({"timestamp": "?", "action": "unreadable line", "status": "", "details": line[:200]})
    data["audit"] = audit
    if drift is None:
        drift, _ = _safe("drift", _drift)
    data["drift"] = drift
    conn = state_db.connect_readonly()
    data["db"] = conn is not None
    if conn is None:
        return data
    try:
        data["kill_switch"], data["kill_switch_error"] = _safe("kill switch", _kv, conn, "kill_switch")
        data["last_cycle"], _ = _safe("last cycle", _kv, conn, "last_cycle")
        data["curve"], data["curve_error"] = _safe("equity curve", pnl.equity_curve, conn, mode)
        data["history"], data["history_error"] = _safe("history", pnl.history, conn, mode)
        data["orders"], data["orders_error"] = _safe("orders", _recent_orders, conn, C.STATUS_RECENT_ORDERS)
        data["signals"], data["signals_error"] = _safe("signals", _latest_predictions, conn)
        data["breaker"], data["breaker_error"] = _safe("breaker", _breaker, conn)
        data["risk"], data["risk_error"] = _safe("risk", _risk, conn)
        data["gate"], data["gate_error"] = _safe("gate", _gate, conn)
        data["reconciliation"], data["reconciliation_error"] = _safe(
            "reconciliation", reconcile_breaks.status, conn)
        data["shadow"], data["shadow_error"] = _safe("shadow model", _shadow, conn)
    finally:
        conn.close()
    return data


# ----------------------------------------------------------------------------- rendering
CSS = """
.synthetic{background:#fff3cd;border:1px solid #e0b000;padding:4px 8px;margin:6px 0}
*{box-sizing:border-box}
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:0;padding:12px;color:#1f2328;
background:#f6f8fa;font-size:15px;line-height:1.4}
header{display:flex;flex-wrap:wrap;gap:8px;align-items:baseline;justify-content:space-between}
h1{font-size:1.3em;margin:4px 0} h2{font-size:1.05em;margin:0 0 8px}
main{display:grid;grid-template-columns:repeat(auto-fit,minmax(min(100%,420px),1fr));gap:12px}
section{background:#fff;border:1px solid #d0d7de;border-radius:8px;padding:10px 12px;min-width:0}
section.wide{grid-column:1/-1}
.scroll{overflow-x:auto;max-width:100%}
table{border-collapse:collapse;width:100%;font-size:.92em}
td,th{border-bottom:1px solid #eaeef2;padding:3px 6px;text-align:right;white-space:nowrap}
td:first-child,th:first-child{text-align:left} th{background:#f6f8fa}
.pos{color:#1a7f37} .neg{color:#cf222e} .nodata{color:#656d76;font-style:italic}
.badge{display:inline-block;padding:2px 8px;border-radius:10px;font-weight:600}
.OK,.off,.closed,.paper{background:#dafbe1;color:#1a7f37} .WARN,.half_open{background:#fff8c5;color:#9a6700}
.FAIL,.ON,.open,.live{background:#ffebe9;color:#cf222e}
.figures{display:grid;grid-template-columns:repeat(auto-fit,minmax(140px,1fr));gap:8px}
.fig{border:1px solid #eaeef2;border-radius:6px;padding:6px 8px} .fig b{display:block;font-size:1.15em}
.fig span{color:#656d76;font-size:.85em}
svg.chart{width:100%;height:180px;display:block} svg .line{fill:none;stroke:#0969da;stroke-width:2;vector-effect:non-scaling-stroke}
svg .area{fill:#ffebe9;stroke:#cf222e;stroke-width:1;vector-effect:non-scaling-stroke} svg .axis{stroke:#d0d7de}
svg .dot{fill:#0969da}
.caption{display:flex;flex-wrap:wrap;justify-content:space-between;gap:4px;color:#656d76;font-size:.85em}
.bar{position:relative;height:10px;background:#eaeef2;border-radius:5px;min-width:80px}
.bar i{position:absolute;top:0;bottom:0;border-radius:5px} .bar .thr{position:absolute;top:-2px;bottom:-2px;width:2px;background:#1f2328}
ul{margin:0;padding-left:18px} li{margin:2px 0;overflow-wrap:anywhere}
code{overflow-wrap:anywhere} footer{color:#656d76;font-size:.85em;margin-top:10px}
@media (max-width:600px){body{padding:6px;font-size:14px} td,th{padding:2px 4px}}
"""


def _render_health(health) -> str:
    if not health:
        return _nodata("no health check lines given (run ./run_health_check.sh)")
    items = []
    for item in health:
        if isinstance(item, dict):
            level, name, detail = item.get("level", ""), item.get("name", ""), item.get("detail", "")
        else:
            level, name, detail = (list(item) + ["", "", ""])[:3]
        items.append(f'<li data-level="{E(str(level))}" data-check="{E(str(name))}"><span class="badge '
                     f'{E(str(level))}">{E(str(level))}</span> {E(str(name))}: {E(str(detail))}</li>')
    return f'<ul id="health-lines">{"".join(items)}</ul>'


def _render_money(data) -> str:
    curve = data.get("curve") or []
    hist = data.get("history") or {}
    if not curve and not hist.get("fills"):
        return _nodata(data.get("curve_error") or NO_DATA + " (the first cycle records the equity)")
    last = curve[-1] if curve else None
    prev = curve[-2] if len(curve) > 1 else None
    day = (last["equity"] - prev["equity"]) if last and prev else None
    figures = [("equity", "equity", last and last["equity"]), ("cash", "cash", last and last["cash"]),
               ("positions-value", "positions value", last and last["positions_value"]),
               ("realised", "realised P&L", last and last["realised"]),
               ("unrealised", "unrealised P&L", last and last["unrealised"]),
               ("day-pnl", "day P&L" + (f" (since {prev['session_date']})" if prev else ""), day)]
    cells = "".join(
        f'<div class="fig" id="{fid}" data-value="{_num_attr(v)}"><span>{E(label)}</span>'
        f'<b class="{_sign_class(v) if fid in ("realised", "unrealised", "day-pnl") else ""}">{_money(v)}</b></div>'
        for fid, label, v in figures)
    note = (f'<p>as of session <b id="equity-session">{E(last["session_date"])}</b>; '
            f'{hist.get("round_trip_count", 0)} round trips, win rate {_pct(hist.get("win_rate"))}, '
            f'borrow fees {_money(hist.get("borrow_fees"))}</p>' if last else "")
    return f'<div class="figures">{cells}</div>{note}'


def _render_curves(data) -> str:
    curve = data.get("curve") or []
    if not curve:
        return _nodata(data.get("curve_error") or NO_DATA)
    eq = [r["equity"] for r in curve]
    labels = [r["session_date"] for r in curve]
    dd = pnl.drawdown_series(eq)
    return ("<h3>Equity</h3>" + svg_line_chart(eq, labels, "equity-chart")
            + f'<h3>Drawdown (now <span id="drawdown-now" data-value="{dd[-1]!r}">{_pct(dd[-1])}</span>, '
              f'worst <span id="drawdown-worst" data-value="{min(dd)!r}">{_pct(min(dd))}</span>)</h3>'
            + svg_line_chart(dd, labels, "drawdown-chart", fill=True, fmt=_pct))


def _render_positions(data) -> str:
    curve = data.get("curve") or []
    if not curve:
        return _nodata()
    positions = curve[-1]["positions"]
    if not positions:
        return f'<p id="positions-flat">flat: no open positions (session {E(curve[-1]["session_date"])})</p>'
    rows = [f'<tr data-symbol="{E(p["symbol"])}" data-quantity="{p["quantity"]}" data-price="{p["price"]!r}" '
            f'data-unrealised="{p["unrealised_pnl"]!r}"><td>{E(p["symbol"])}{" (recalled)" if p.get("recalled") else ""}</td>'
            f'<td>{p["quantity"]:+d}</td><td>{p["avg_cost"]:,.2f}</td><td>{p["price"]:,.2f}</td>'
            f'<td>{_money(p["market_value"])}</td><td class="{_sign_class(p["unrealised_pnl"])}">{_money(p["unrealised_pnl"])}</td>'
            f'<td>{_pct(p.get("unrealised_pct"))}</td></tr>' for p in positions]
    return (_table(["symbol", "qty", "avg cost", "price", "value", "unrealised", "%"], rows, "positions-table")
            + f'<p>prices of session {E(curve[-1]["session_date"])}</p>')


def _render_trips(data) -> str:
    hist = data.get("history") or {}
    trips = (hist.get("round_trips") or [])[-C.STATUS_RECENT_TRIPS:]
    if not trips:
        return _nodata(data.get("history_error") or NO_DATA + " (no position closed yet)")
    rows = [f'<tr data-symbol="{E(t["symbol"])}" data-pnl="{t["pnl"]!r}"><td>{E(t["symbol"])}</td><td>{E(t["side"])}</td>'
            f'<td>{t["quantity"]}</td><td>{E(t["entry_date"])} @ {t["entry_price"]:,.2f}</td>'
            f'<td>{E(t["exit_date"])} @ {t["exit_price"]:,.2f}</td><td>{t["holding_days"]} d</td>'
            f'<td class="{_sign_class(t["pnl"])}">{_money(t["pnl"])}</td></tr>' for t in reversed(trips)]
    return _table(["symbol", "side", "qty", "entry", "exit", "held", "P&L"], rows, "trips-table")


def _render_orders(data) -> str:
    orders = data.get("orders")
    if not orders:
        return _nodata(data.get("orders_error") or NO_DATA)
    rows = []
    for o in orders:
        px = f'{o["avg_fill_price"]:,.2f}' if o.get("avg_fill_price") else "-"
        rows.append(f'<tr data-key="{E(o["client_key"])}" data-status="{E(o["status"])}"><td>{E(o["cycle_date"])}</td>'
                    f'<td>{E(o["symbol"])}</td><td>{E(o["side"])}</td><td>{o["filled_quantity"]}/{o["quantity"]}</td>'
                    f'<td>{px}</td><td>{E(o["status"])}</td><td>{E(o["mode"])}</td>'
                    f'<td>{E((o.get("error") or o.get("reason") or "")[:80])}</td></tr>')
    return _table(["date", "symbol", "side", "filled", "price", "status", "mode", "note"], rows, "orders-table")


def _render_audit(data) -> str:
    audit = data.get("audit")
    if not audit:
        return _nodata(data.get("audit_error") or NO_DATA)
    items = []
    for r in reversed(audit):
        details = r.get("details")
        text = details if isinstance(details, str) else json.dumps(details, default=str)
        items.append(f'<li data-action="{E(str(r.get("action")))}"><code>{E(str(r.get("timestamp", ""))[:19])}</code> '
                     f'<b>{E(str(r.get("action")))}</b> {E(str(r.get("status")))} '
                     f'<span class="small">{E(text[:160])}</span></li>')
    return f'<ul id="audit-list">{"".join(items)}</ul>'


def _render_signals(data) -> str:
    sigs = data.get("signals")
    if not sigs:
        return _nodata(data.get("signals_error") or NO_DATA)
    thr = C.SIGNAL_THRESHOLD
    scale = max(C.MAX_SIZE_SCALE * thr, max(abs(s["score"] or 0) for s in sigs))
    rows = []
    for s in sigs:
        score = s["score"] or 0.0
        width = min(abs(score) / scale, 1.0) * 50
        left = 50 if score >= 0 else 50 - width
        color = "#1a7f37" if score >= thr else "#cf222e" if score <= -thr else "#8c959f"
        bar = (f'<div class="bar"><i style="left:{left:.1f}%;width:{width:.1f}%;background:{color}"></i>'
               f'<span class="thr" style="left:{50 + 50 * thr / scale:.1f}%"></span>'
               f'<span class="thr" style="left:{50 - 50 * thr / scale:.1f}%"></span></div>')
        rows.append(f'<tr data-symbol="{E(s["symbol"])}" data-score="{score!r}" data-signal="{E(s["signal"] or "")}">'
                    f'<td>{E(s["symbol"])}</td><td>{s["close"]:,.2f}</td><td>{s["predicted_diff"]:+.3f}</td>'
                    f'<td>{score:+.2f}</td><td>{bar}</td><td><b>{E(s["signal"] or "")}</b></td></tr>')
    return (f'<p>data of <b id="signals-date">{E(sigs[0]["date"])}</b>; BUY when score &ge; '
            f'<span id="signal-threshold" data-value="{thr!r}">{thr:+.2f}</span>, SELL when &le; {-thr:+.2f}</p>'
            + _table(["symbol", "close", "pred. diff", "score", "vs threshold", "signal"], rows, "signals-table"))


def _render_state(data) -> str:
    """Kill switch, breaker, risk, drift and gate as one list of labelled lines."""
    parts = []
    if data.get("db"):
        ks = data.get("kill_switch")
        ks_text = (f'ON: {ks["reason"]} (by {ks["by"]} at {ks["at"]})' if ks else "off")
        parts.append(f'<li id="kill-switch" data-state="{"on" if ks else "off"}">kill switch: '
                     f'<span class="badge {"ON" if ks else "off"}">{E(ks_text)}</span></li>')
        br = data.get("breaker") or {"state": "closed", "failures": 0, "last_error": None}
        detail = broker_gateway.describe_breaker({**br, "last_error": str(br["last_error"])[:120]
                                                  if br.get("last_error") else None})
        parts.append(f'<li id="breaker" data-state="{E(br["state"])}">circuit breaker: <span class="badge '
                     f'{E(br["state"])}">{E(br["state"])}</span> {E(detail[len(br["state"]) + 1:])}</li>')
        rs = data.get("risk")
        if rs:
            parts.append(f'<li id="risk" data-drawdown="{_num_attr(rs.get("drawdown"))}" '
                         f'data-halted="{str(bool(rs.get("halted"))).lower()}">risk: drawdown {_pct(rs.get("drawdown"))} '
                         f'from peak {_money((rs.get("peak") or {}).get("equity"))} (limit {_pct(C.MAX_DRAWDOWN)}); '
                         f'halted: {E("YES: " + str(rs.get("reason")) if rs.get("halted") else "no")}</li>')
        else:
            parts.append(f'<li id="risk">risk: {E(data.get("risk_error") or NO_DATA)}</li>')
        gate = data.get("gate")
        if gate:
            opened = "open" if gate["passed"] else "closed"
            parts.append(f'<li id="gate" data-state="{opened}">go-live gate: <b>{opened}</b> (backtest '
                         f'{"passed" if gate["backtest"] else "missing"}, walk-forward '
                         f'{"passed" if gate.get("walk_forward") else "missing"}, paper sessions {gate["paper_sessions"]}/'
                         f'{gate["paper_sessions_needed"]}{", overridden" if gate.get("override") else ""})</li>')
        else:
            parts.append(f'<li id="gate">go-live gate: {E(data.get("gate_error") or "no model yet")}</li>')
        recon = data.get("reconciliation") or {"open_breaks": [], "last_run": None}
        breaks = recon["open_breaks"]
        last_recon = recon.get("last_run")
        items = "".join(f'<li class="break">RECONCILIATION BREAK {E(reconcile_breaks.describe(b))}: '
                        f'<code>{E(reconcile_breaks.ACCEPT_COMMAND.format(id=b["id"]))}</code></li>'
                        for b in breaks)
        parts.append(f'<li id="reconciliation" data-open-breaks="{len(breaks)}">reconciliation: '
                     f'<span class="badge {"ON" if breaks else "off"}">{len(breaks)} open break'
                     f'{"s" if len(breaks) != 1 else ""}</span>'
                     f'{" (new entries blocked)" if breaks else ""}; last run '
                     f'{E(last_recon["at"] if last_recon else "never")}'
                     f'{"<ul>" + items + "</ul>" if items else ""}</li>')
        lc = data.get("last_cycle")
        parts.append('<li id="last-cycle">last cycle: ' + (
            E(f'{lc["cycle_date"]} ({lc["mode"]}{", replay" if lc.get("replay") else ""}) finished '
              f'{lc["finished_at"]}: {lc["orders_sent"]} orders sent, {lc["orders_failed"]} failed')
            if lc else NO_DATA) + "</li>")
        parts.append(_render_shadow(data))
    else:
        parts.append(f'<li id="kill-switch" data-state="off">kill switch: off ({NO_DATA}: no state database)</li>')
    drift = data.get("drift") or {}
    parts.append(f'<li id="drift" data-level="{E(str(drift.get("level", "")))}">drift: '
                 f'{E(str(drift.get("detail") or drift.get("severity") or NO_DATA))}</li>')
    return f'<ul id="state-lines">{"".join(parts)}</ul>'


def _render_schedule(schedule) -> str:
    if not schedule:
        return _nodata("no schedule given")
    if isinstance(schedule, str):
        schedule = schedule.splitlines()
    return f'<ul id="schedule-lines">{"".join(f"<li>{E(str(s))}</li>" for s in schedule)}</ul>'


def render(data: dict) -> str:
    mode = data.get("mode") or "unknown"
    mode_text = mode if not data.get("mode_error") else f"error: {data['mode_error']}"
    label = data.get("data_source_label")
    banner = f'<p id="data-source" class="synthetic"><b>{E(label)}</b></p>' if label else ""
    if data.get("replay_exists"):
        banner += ('<p id="replay-note">This page shows the paper account of the scheduled cycles. '
                   'What <code>--as-of</code> replays traded (a throwaway replay account, e.g. '
                   '<code>make demo</code>\'s) is not here: <code>python live_trading.py status '
                   '--replay</code> and <code>history --replay</code> show it.</p>')
    body = "".join([
        _section("money", "Money", _render_money(data), ' class="wide"'),
        _section("state", "Switches, risk and gate", _render_state(data)),
        _section("health", "Health", _render_health(data.get("health"))),
        _section("curves", "Equity and drawdown", _render_curves(data), ' class="wide"'),
        _section("positions", "Positions", _render_positions(data)),
        _section("signals", "Latest signals", _render_signals(data)),
        _section("trips", "Recent round trips", _render_trips(data)),
        _section("orders", "Recent orders", _render_orders(data)),
        _section("audit", "Audit trail (newest first)", _render_audit(data), ' class="wide"'),
        _section("schedule", "Schedule", _render_schedule(data.get("schedule"))),
    ])
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Trading status ({E(mode)})</title>
<style>{CSS}</style></head>
<body data-generated="{E(data['generated_at'])}">
<header><h1>Trading status</h1>
<div>mode <span id="mode" class="badge {E(mode)}" data-mode="{E(mode)}">{E(mode_text)}</span>
generated <span id="generated">{E(data['generated_at'])}</span></div>{banner}</header>
<main>
{body}</main>
<footer>Read-only page built from {E(data['home'])}. Commands: <code>python live_trading.py status</code>,
<code>./run_health_check.sh</code>.</footer>
</body></html>
"""


def page_path() -> Path:
    return config.path(C.STATUS_PAGE_FILE)


def _drift() -> dict:
    """The newest DRIFT ALERT line of the trading logs (drift_monitor.last_alert_line)."""
    last = drift_monitor.last_alert_line()
    if last is None:
        return {"level": "OK", "detail": f"no DRIFT ALERT in the last {C.DRIFT_ALERT_LOG_DAYS} trading logs"}
    return {"level": "FAIL" if "CRITICAL" in last else "WARN", "detail": f"last drift alert: {last[:200]}"}


def build_status_page(home=None, health=None, schedule=None, drift=None) -> Path:
    """Gather (read-only) and write ``reports/status.html`` atomically; returns its path.
    ``home`` overrides TRADING_HOME for this call; ``health`` is a list of (level, name, detail)
    or dicts; ``schedule`` a list of lines (or text); ``drift`` a dict with ``level``/``detail``
    or ``severity`` (default: the health check's drift line)."""
    if home is not None:
        old = os.environ.get(C.ENV_TRADING_HOME)
        os.environ[C.ENV_TRADING_HOME] = str(home)
        try:
            return build_status_page(None, health, schedule, drift)
        finally:
            if old is None:
                os.environ.pop(C.ENV_TRADING_HOME, None)
            else:
                os.environ[C.ENV_TRADING_HOME] = old
    page = render(gather(health, schedule, drift))
    path = atomic_write_text(page_path(), page)
    log.info("status page written: %s", path)
    return path


# ----------------------------------------------------------------------------- serving
class _Handler(BaseHTTPRequestHandler):
    page: Path = None          # set by make_server

    def _send(self, head_only: bool) -> None:
        if self.path.split("?")[0] not in ("/", "/status.html"):
            self.send_error(HTTPStatus.NOT_FOUND, "only /status.html is served")
            return
        try:
            body = self.page.read_bytes()
        except FileNotFoundError:
            self.send_error(HTTPStatus.NOT_FOUND, "no status page yet: run a cycle or the health check")
            return
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; img-src data:")
        self.end_headers()
        if not head_only:
            self.wfile.write(body)

    def do_GET(self):
        self._send(False)

    def do_HEAD(self):
        self._send(True)

    def _refuse(self):
        self.send_error(HTTPStatus.METHOD_NOT_ALLOWED, "read-only")

    do_POST = do_PUT = do_DELETE = do_PATCH = _refuse

    def log_message(self, fmt, *args):
        log.info("serve %s %s", self.address_string(), fmt % args)


def make_server(port: int | None = None, page: Path | None = None) -> ThreadingHTTPServer:
    """An HTTP server on 127.0.0.1 serving only the status page (port 0: any free port; None:
    STATUS_SERVE_PORT)."""
    port = C.STATUS_SERVE_PORT if port is None else port
    handler = type("StatusHandler", (_Handler,), {"page": Path(page) if page else page_path()})
    return ThreadingHTTPServer((C.STATUS_SERVE_HOST, port), handler)


def serve(port: int | None = None) -> None:
    """Serve ``reports/status.html`` read-only on 127.0.0.1 until interrupted (builds it first
    when it does not exist yet)."""
    if not page_path().exists():
        build_status_page()
    server = make_server(port)
    log.info("serving %s on http://%s:%d/ (read-only; Ctrl-C stops)", page_path(), C.STATUS_SERVE_HOST,
             server.server_address[1])
    print(f"http://{C.STATUS_SERVE_HOST}:{server.server_address[1]}/  (Ctrl-C stops)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def main(argv=None) -> int:
    argparse.ArgumentParser(
        prog="status_page.py",
        description="Build the status page reports/status.html now (read-only: it changes no state) and "
                    "print its path. Every cycle and health check rebuilds it; "
                    "`python live_trading.py serve` serves it on 127.0.0.1.").parse_args(argv)
    if config.refuse_without_home():          # a mistyped TRADING_HOME: no page about nothing
        return 2
    print(build_status_page())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
