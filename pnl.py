"""P&L accounting for the paper and the live account: fills, FIFO round trips, realised,
unrealised and day P&L, and an equity curve stored per session.

Where the fills come from:

* paper: the paper broker's ``paper_fills`` table (every fill with its price and commission) and
  the borrow fees in ``paper_ledger`` (``kind = 'borrow_fee'``);
* live: the ``orders`` table (``order_book.OrderBook.live_fills``, ``mode = 'live'``): one fill per order at
  its ``avg_fill_price`` for its ``filled_quantity`` (Schwab's commissions and borrow fees are
  not in our records: they count as zero here and show in the broker's cash).

Rules (one place):

* Lots are matched first in, first out per symbol. A buy against a short (or a sell against a
  long) closes the oldest lots first; what is left over opens a new lot the other way.
* A lot's cost includes its entry commission (long: price + commission per share; short: the
  net proceeds per share); an exit's commission comes off its proceeds. So
  ``realised = sum over closed lots of (exit net - entry cost) x shares - borrow fees`` and
  ``unrealised = sum over open lots of (mark - cost) x shares`` (signed for shorts), and for the
  paper account ``equity = INITIAL_PAPER_CASH + realised + unrealised`` exactly.
* Day P&L = equity now - equity recorded for the previous session in ``equity_curve``.

``record_equity(conn, session_date, broker)`` upserts one row per (mode, session) in the table
``equity_curve`` (equity, cash, positions value, realised, unrealised, and the positions as
JSON for the status page); the cycle calls it after its fills.
"""
from __future__ import annotations

import json
import math
import sqlite3
from collections import deque
from datetime import date

import clock
import config
import constants as C
import state_db
from broker_base import BUY_SIDES
from order_book import OrderBook


_SCHEMA = ["""CREATE TABLE IF NOT EXISTS equity_curve (
    mode TEXT NOT NULL,
    session_date TEXT NOT NULL,
    equity REAL NOT NULL,
    cash REAL NOT NULL,
    positions_value REAL NOT NULL,
    realised REAL NOT NULL,
    unrealised REAL NOT NULL,
    positions TEXT NOT NULL,
    recorded_at TEXT NOT NULL,
    PRIMARY KEY (mode, session_date)
)"""]


def _has_table(conn: sqlite3.Connection, name: str) -> bool:
    return conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
                        (name,)).fetchone() is not None


def _mode(mode: str | None) -> str:
    return (mode or config.trading_mode()).lower()


def broker_mode(broker) -> str:
    """``paper`` for the paper broker, ``live`` for Schwab."""
    return "paper" if broker.simulated else "live"


# ----------------------------------------------------------------------------- fills
def fills(conn: sqlite3.Connection, mode: str | None = None) -> list[dict]:
    """Every fill of the account, oldest first: order_id, symbol, side, quantity, price,
    commission, trade_date, filled_at."""
    mode = _mode(mode)
    if mode == "paper":
        if not _has_table(conn, "paper_fills"):
            return []
        rows = conn.execute("SELECT order_id, symbol, side, quantity, price, commission, trade_date, "
                            "filled_at FROM paper_fills ORDER BY id").fetchall()
        return [dict(r) for r in rows]
    return OrderBook(conn, create=False).live_fills()


def borrow_fees(conn: sqlite3.Connection, mode: str | None = None) -> list[dict]:
    """Borrow fees charged (paper ledger): trade_date, symbol, fee (positive). Live: none known."""
    if _mode(mode) != "paper" or not _has_table(conn, "paper_ledger"):
        return []
    rows = conn.execute("SELECT trade_date, symbol, -amount AS fee FROM paper_ledger "
                        "WHERE kind = 'borrow_fee' ORDER BY id").fetchall()
    return [dict(r) for r in rows]


def action_events(conn: sqlite3.Connection, mode: str | None = None) -> list[dict]:
    """The splits and dividends applied to the paper account (``paper_corporate_actions``):
    kind, symbol, ex_date, per_share (split ratio or dividend), quantity_before, quantity_change,
    cash_change, cash_applied_on. Live: none known here (the broker's statement has them)."""
    if _mode(mode) != "paper" or not _has_table(conn, "paper_corporate_actions"):
        return []
    return [dict(r) for r in conn.execute("SELECT * FROM paper_corporate_actions ORDER BY ex_date, id")]


def actions_cash(events: list[dict]) -> float:
    """The cash the applied actions moved (dividends paid or charged, cash in lieu of fractions)."""
    return round(sum(float(e["cash_change"]) for e in events if e.get("cash_applied_on")), 6)


# ----------------------------------------------------------------------------- FIFO matching
def _split_lots(queue: deque, ratio: float) -> None:
    """A split on the open lots of a symbol: quantities x ratio (whole shares, the fraction is the
    cash in lieu the account received), prices / ratio -- the same cost in the new share units."""
    for lot in queue:
        exact = lot["quantity"] * ratio
        lot["quantity"] = int(math.floor(exact + 1e-9)) if exact > 0 else -int(math.floor(-exact + 1e-9))
        lot["price"] /= ratio
        lot["cost"] /= ratio
    while queue and queue[-1]["quantity"] == 0:
        queue.pop()


def match_fifo(fill_list: list[dict], events: list[dict] | None = None) -> tuple[list[dict], dict[str, list[dict]]]:
    """(closed trades, open lots by symbol) from fills in time order; ``events`` (``action_events``):
    a split scales the open lots before the fills of its ex-date.

    A closed trade: symbol, side (long/short), quantity, entry_date, entry_price, exit_date,
    exit_price, commission, pnl, return_pct, holding_days (calendar). An open lot: quantity
    (signed), price, cost (per share, commission included), entry_date."""
    lots: dict[str, deque] = {}
    closed: list[dict] = []
    splits = sorted((e for e in (events or []) if e["kind"] == "SPLIT"), key=lambda e: e["ex_date"])
    for f in [*fill_list, None]:
        while splits and (f is None or splits[0]["ex_date"] <= str(f["trade_date"])[:10]):
            e = splits.pop(0)
            _split_lots(lots.get(e["symbol"], deque()), float(e["per_share"]))
        if f is None:
            break
        qty = int(f["quantity"])
        if qty <= 0:
            continue
        sym, price = f["symbol"], float(f["price"])
        comm_per_share = float(f.get("commission") or 0.0) / qty
        sign = 1 if f["side"] in BUY_SIDES else -1
        queue = lots.setdefault(sym, deque())
        left = qty
        while left and queue and (queue[0]["quantity"] > 0) != (sign > 0):
            lot = queue[0]
            take = min(left, abs(lot["quantity"]))
            long_lot = lot["quantity"] > 0
            exit_net = price - comm_per_share if long_lot else price + comm_per_share
            pnl = (exit_net - lot["cost"]) * take if long_lot else (lot["cost"] - exit_net) * take
            closed.append({
                "symbol": sym, "side": "long" if long_lot else "short", "quantity": take,
                "entry_date": lot["entry_date"], "entry_price": lot["price"],
                "exit_date": f["trade_date"], "exit_price": price,
                "commission": round((abs(lot["cost"] - lot["price"]) + comm_per_share) * take, 6),
                "pnl": round(pnl, 6),
                "return_pct": round(pnl / (lot["price"] * take), 6) if lot["price"] else None,
                "holding_days": (date.fromisoformat(f["trade_date"][:10])
                                 - date.fromisoformat(lot["entry_date"][:10])).days,
                "exit_order_id": f.get("order_id")})
            left -= take
            lot["quantity"] -= take if long_lot else -take
            if lot["quantity"] == 0:
                queue.popleft()
        if left:
            cost = price + comm_per_share if sign > 0 else price - comm_per_share
            queue.append({"quantity": sign * left, "price": price, "cost": cost,
                          "entry_date": f["trade_date"]})
    return closed, {s: list(q) for s, q in lots.items() if q}


# ----------------------------------------------------------------------------- positions and totals
def positions_pnl(positions: dict, open_lots: dict[str, list[dict]]) -> list[dict]:
    """Each broker position with its current price and unrealised P&L. ``positions`` is the
    broker's ``get_positions()`` ({symbol: {quantity, avg_price, market_value, ...}}). The cost
    comes from the open FIFO lots when they account for the whole position, else from the
    broker's average price (a position opened outside this system)."""
    out = []
    for sym, p in sorted(positions.items()):
        qty = int(p.get("quantity") or 0)
        if qty == 0:
            continue
        value = float(p.get("market_value") or 0.0)
        price = value / qty
        lots = open_lots.get(sym, [])
        if sum(lot["quantity"] for lot in lots) == qty:
            cost_total = sum(lot["quantity"] * lot["cost"] for lot in lots)
            basis = "fifo"
        else:
            cost_total = qty * float(p.get("avg_price") or price)
            basis = "broker"
        unrealised = value - cost_total
        out.append({"symbol": sym, "quantity": qty, "side": "long" if qty > 0 else "short",
                    "avg_cost": round(cost_total / qty, 6), "price": round(price, 6),
                    "market_value": round(value, 6), "unrealised_pnl": round(unrealised, 6),
                    "unrealised_pct": round(unrealised / abs(cost_total), 6) if cost_total else None,
                    "cost_basis": basis, "recalled": bool(p.get("recalled"))})
    return out


def realised_totals(closed: list[dict], fees: list[dict], events: list[dict] | None = None) -> dict:
    """Realised P&L: closed round trips, minus borrow fees, plus the cash corporate actions moved
    (dividends received or paid on shorts, cash in lieu of fractional shares)."""
    trading = sum(t["pnl"] for t in closed)
    borrow = sum(float(f["fee"]) for f in fees)
    actions = actions_cash(events or [])
    return {"realised_trading": round(trading, 6), "borrow_fees": round(borrow, 6),
            "corporate_actions_cash": actions, "realised_pnl": round(trading - borrow + actions, 6)}


def equity_curve(conn: sqlite3.Connection, mode: str | None = None) -> list[dict]:
    """Rows of ``equity_curve`` for a mode, oldest first (positions parsed)."""
    if not _has_table(conn, "equity_curve"):
        return []
    rows = conn.execute("SELECT * FROM equity_curve WHERE mode = ? ORDER BY session_date",
                        (_mode(mode),)).fetchall()
    out = []
    for r in rows:
        row = dict(r)
        row["positions"] = json.loads(row["positions"])
        out.append(row)
    return out


def previous_equity(conn: sqlite3.Connection, mode: str, session_date: str) -> dict | None:
    """The equity recorded for the latest session before ``session_date``."""
    if not _has_table(conn, "equity_curve"):
        return None
    row = conn.execute("SELECT session_date, equity FROM equity_curve WHERE mode = ? AND "
                       "session_date < ? ORDER BY session_date DESC LIMIT 1",
                       (mode, str(session_date)[:10])).fetchone()
    return dict(row) if row else None


def status_dict(broker, conn: sqlite3.Connection, session_date=None) -> dict:
    """Everything ``status --json`` shows about the money: equity, cash, positions value,
    realised / unrealised / day P&L and each position with its price and unrealised P&L."""
    mode = broker_mode(broker)
    session = str(session_date or clock.today())[:10]
    balance = broker.get_account_balance()
    positions = broker.get_positions()
    events = action_events(conn, mode)
    closed, open_lots = match_fifo(fills(conn, mode), events)
    rows = positions_pnl(positions, open_lots)
    totals = realised_totals(closed, borrow_fees(conn, mode), events)
    equity, cash = float(balance["equity"]), float(balance["cash"])
    prev = previous_equity(conn, mode, session)
    return {"mode": mode, "session_date": session, "equity": round(equity, 6), "cash": round(cash, 6),
            "positions_value": round(sum(r["market_value"] for r in rows), 6),
            "long_value": round(sum(r["market_value"] for r in rows if r["quantity"] > 0), 6),
            "short_value": round(-sum(r["market_value"] for r in rows if r["quantity"] < 0), 6),
            **totals,
            "unrealised_pnl": round(sum(r["unrealised_pnl"] for r in rows), 6),
            "day_pnl": round(equity - prev["equity"], 6) if prev else None,
            "day_pnl_since": prev["session_date"] if prev else None,
            "realised_today": round(sum(t["pnl"] for t in closed if t["exit_date"][:10] == session), 6),
            "round_trips": len(closed), "positions": rows}


def record_equity(conn: sqlite3.Connection, session_date, broker) -> dict:
    """Upsert the session's row of ``equity_curve`` (one per mode and session date) from the
    broker's account now; returns the status dict it was built from."""
    state_db.ensure_schema(conn, _SCHEMA)
    st = status_dict(broker, conn, session_date)
    with state_db.transaction(conn):
        conn.execute(
            "INSERT INTO equity_curve(mode, session_date, equity, cash, positions_value, realised, "
            "unrealised, positions, recorded_at) VALUES (?,?,?,?,?,?,?,?,?) "
            "ON CONFLICT(mode, session_date) DO UPDATE SET equity = excluded.equity, "
            "cash = excluded.cash, positions_value = excluded.positions_value, "
            "realised = excluded.realised, unrealised = excluded.unrealised, "
            "positions = excluded.positions, recorded_at = excluded.recorded_at",
            (st["mode"], st["session_date"], st["equity"], st["cash"], st["positions_value"],
             st["realised_pnl"], st["unrealised_pnl"], json.dumps(st["positions"]), state_db.utcnow()))
    return st


def history(conn: sqlite3.Connection, mode: str | None = None, limit: int | None = None) -> dict:
    """``history``: the account's fills and closed round trips (newest last; ``limit`` keeps the
    newest N of each) with realised totals."""
    mode = _mode(mode)
    fill_list = fills(conn, mode)
    events = action_events(conn, mode)
    closed, open_lots = match_fifo(fill_list, events)
    totals = realised_totals(closed, borrow_fees(conn, mode), events)
    wins = [t for t in closed if t["pnl"] > 0]
    tail = (lambda xs: xs[-limit:]) if limit else (lambda xs: xs)
    return {"mode": mode, "fills": tail(fill_list), "round_trips": tail(closed),
            "open_lots": open_lots, "fill_count": len(fill_list), "round_trip_count": len(closed),
            "win_rate": round(len(wins) / len(closed), 6) if closed else None, **totals}


def drawdown_series(equities: list[float]) -> list[float]:
    """Drawdown from the running peak at each point (0 or negative fractions)."""
    out, peak = [], None
    for e in equities:
        peak = e if peak is None or e > peak else peak
        out.append(e / peak - 1.0 if peak else 0.0)
    return out


def initial_capital(mode: str) -> float | None:
    """The paper account's starting cash (its P&L identity); None for live."""
    return float(C.INITIAL_PAPER_CASH) if mode == "paper" else None
