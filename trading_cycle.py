"""One trading cycle (cron runs ``python live_trading.py``, whose ``run`` calls ``run_cycle``) and the signals.

A cycle, in order; every step is logged and audited:

 1. take the cycle lock (an overlapping run exits 0 saying another run holds it); a replay
    (``--as-of``) then switches to its throwaway account (``state_db.prepare_replay``)
 2. verify the audit trail (``audit_logging.require_valid_trail``: a damaged trail stops the
    cycle) and record in it a previous cycle that was interrupted
 3. honour the kill switch (``kill_switch``; ``python live_trading.py halt --reason ...``), also
    as the audit trail records it: a state database that lost a halt, or that is newer than the
    account history in the trail (deleted, replaced), stops the cycle
    (``kill_switch.require_continuity``; ``python live_trading.py start-over`` begins anew on purpose)
 4. live mode only: the go-live gate (``golive.gate_status``: a passing backtest, a passing
    walk-forward of its configuration on the production data and universe, and paper sessions)
 5. the clock (``clock_sanity``): the broker's own clock must agree with ours within
    ``CLOCK_MAX_SKEW_S`` (Schwab's HTTP ``Date``; the paper broker has none): ``CLOCK SKEW``
    stops the cycle. Then the market calendar (a closed market is "nothing to do"); not in a
    replay, the clock must not be behind the last cycle (its end, the session it traded) or the
    processed data: ``CLOCK BACKWARDS`` / ``CLOCK BEHIND`` stop the cycle, before any order
 6. check data freshness, then compute signals with the verified model (``get_latest_signal``)
 7. reconcile earlier orders with the broker by the snapshot rule (``OrderExecutor.reconcile``;
    an ambiguous one stops everything for a person) and report broker activity that is not ours
 8. the account: drawdown and daily-loss limits (``RiskManager.update_equity``); the per-symbol
    data guard (a stale symbol gets no order; a held stale symbol stops the cycle); model drift
 9. plan the orders (``order_planning.plan_orders``, the same code the backtest runs): forced
    buy-ins of shorts, the drift hold, target positions, orders, pre-trade risk checks
10. send orders exactly once (``OrderExecutor``; the kill switch is read before each one and
    between fill polls), wait for fills, reconcile the broker's transactions (``reconcile``: an
    unexplained change is a break that blocks new entries), record positions, the equity curve, audit

Exit codes: 0 success or nothing to do (kill switch on, market closed, another run holds the
lock), 1 failure, 2 configuration error, 3 live trading refused by the go-live gate.
"""
from __future__ import annotations

import fcntl
import logging
import os
import time
from contextlib import closing, contextmanager
from dataclasses import dataclass
from datetime import date, datetime

import pandas as pd

import alerts
import clock
import clock_sanity
import config
import constants as C
import corporate_actions
import order_prices
from portfolio import money
import drift_monitor
import golive
import kill_switch
import market_calendar
import pnl
import settlement
import shadow_model
import state_db
from audit_logging import CYCLE_END, CYCLE_START, AuditLogger, interrupted_cycle, require_valid_trail
from clock_sanity import ClockError
from data_collection import load_processed, load_universe, stale_symbols
from errors import UserFacingError, storage_error
from failpoints import failpoint
from golive import gate_status
from logging_setup import ensure_logging
from model_management import load_model
from broker_base import BUY_SIDES, LIMIT, MARKET
from order_book import FLATTEN_PREFIX, OrderBook
from order_planning import Plan, plan_orders
from order_recovery import AmbiguousOrderError, OrderNotRecordedError
from reconcile import Reconciler
from risk_management import Portfolio, RiskManager
from settings import TradingSettings
from signals import BUY, HOLD, SELL, check_predictions, score_predictions
from kill_switch import KillSwitchSet
from trading_api import get_broker
from trading_execution import OrderExecutor

log = logging.getLogger("trading")

EXIT_OK, EXIT_FAIL, EXIT_CONFIG, EXIT_GATE = 0, 1, 2, 3
LAST_CYCLE_KEY = "last_cycle"

class CycleError(UserFacingError):
    """A step of the cycle failed; the message names what and the fix."""


def audit_logger():
    return AuditLogger()


# ----------------------------------------------------------------------------- signals
def get_model():
    """The installed model, verified (its checksum is checked on load). The caller owns what it
    loaded: a cycle loads it once and hands it to each step (``get_latest_signal(model=...)``)."""
    return load_model(config.path(C.MODEL_FILE))


def load_features(as_of=None) -> pd.DataFrame:
    features = load_processed()
    if as_of is not None:
        features = features[features["Date"] <= pd.Timestamp(as_of)]
    return features


def get_latest_signal(as_of=None, features: pd.DataFrame | None = None, record: bool = True, model=None,
                      conn=None) -> list[dict]:
    """Signals for every selected symbol from the latest data (up to ``as_of``).

    Each item: symbol, date (of the data used), close, predicted_diff (next-day price difference
    in USD), score (predicted_diff / (close * volatility_20): the move in units of recent daily
    volatility), signal (BUY if score >= SIGNAL_THRESHOLD, SELL if <= -SIGNAL_THRESHOLD, else
    HOLD), volatility. Logs one ``Prediction:`` line per symbol; stores every prediction for the
    drift monitor. Nonsensical output (NaN, all equal, absurd) raises
    ``signals.NonsensicalPredictionError``. ``model``: the loaded model (default: the installed
    one, loaded now); ``conn``: the state database the predictions go to (default: the real one)."""
    ensure_logging("trading")
    model = model if model is not None else get_model()
    features = load_features(as_of) if features is None else features
    universe = load_universe()
    missing = sorted(set(universe) - set(features["Symbol"]))
    if missing:
        log.warning("no data for %s in processed_stock_data.csv: no signal (run "
                    "./run_daily_data_update.sh; see logs/data_update_*.log)", ", ".join(missing))
    features = features[features["Symbol"].isin(universe)]
    tail = features.sort_values(["Symbol", "Date"]).groupby("Symbol", sort=False).tail(model.window + 5)
    scored = score_predictions(model.predict(tail, last_only=True))
    check_predictions(scored)
    for r in scored.itertuples(index=False):
        log.info("Prediction: %s date=%s close=%.2f predicted_diff=%+.4f score=%+.3f signal=%s",
                 r.Symbol, pd.Timestamp(r.Date).date(), r.Close, r.predicted_diff, r.score, r.signal)
    counts = scored["signal"].value_counts().to_dict()
    log.info("signal summary: %d BUY, %d SELL, %d HOLD (threshold |score| >= %.2f)",
             counts.get(BUY, 0), counts.get(SELL, 0), counts.get(HOLD, 0), C.SIGNAL_THRESHOLD)
    if record:
        drift_monitor.record_predictions(scored, model.checksum, conn)
    return [{"symbol": r.Symbol, "date": str(pd.Timestamp(r.Date).date()), "close": float(r.Close),
             "predicted_diff": float(r.predicted_diff), "score": float(r.score), "signal": r.signal,
             "volatility": float(r.volatility_20), "price": float(r.Close)}
            for r in scored.itertuples(index=False)]


# ----------------------------------------------------------------------------- the cycle
def lock_path():
    return config.ensure_parent(config.path(C.LOCK_DIR) / "live_trading.lock")


def lock_holder() -> str:
    """Who holds the cycle lock: ``pid <n> (<command>) since <time>``, from the lock file."""
    try:
        text = lock_path().read_text().strip()
    except OSError:
        return "unknown"
    return text or "unknown"


@contextmanager
def cycle_lock(wait_s: float = 0.0, what: str = "cycle"):
    """Only one cycle (or flatten) at a time: yields True when this process holds the lock,
    False when another holds it after waiting up to ``wait_s`` seconds."""
    path = config.path(C.LOCK_DIR) / "live_trading.lock"
    try:
        fh = open(lock_path(), "a+b", buffering=0)     # unbuffered: a failed write is not retried on close
    except OSError as exc:
        raise (storage_error(exc, path, "open the cycle lock") or exc) from None
    deadline = time.monotonic() + wait_s
    try:
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    yield False
                    return
                time.sleep(0.2)
        try:                               # who holds it, for `flatten` and the next run to name
            fh.truncate(0)
            fh.write(f"pid {os.getpid()} ({what}) since {datetime.now().isoformat(timespec='seconds')}\n".encode())
        except OSError as exc:
            fcntl.flock(fh, fcntl.LOCK_UN)
            raise (storage_error(exc, path, "write the cycle lock") or exc) from None
        try:
            yield True
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
    finally:
        fh.close()


def build_portfolio(broker, symbols, closes: dict, as_of):
    balance = broker.get_account_balance()
    positions = broker.get_positions()
    quote_symbols = sorted(set(symbols) | set(positions))
    quotes = broker.get_quotes(quote_symbols) if quote_symbols else {}
    prices = {}
    for sym in quote_symbols:
        last = (quotes.get(sym) or {}).get("last")
        prices[sym] = float(last) if last else float(closes.get(sym) or 0.0)
    return Portfolio(
        equity=float(balance["equity"]), cash=float(balance["cash"]),
        buying_power=balance.get("buying_power"),
        positions={s: int(p["quantity"]) for s, p in positions.items() if int(p["quantity"]) != 0},
        prices=prices, last_close={s: float(c) for s, c in closes.items()}, quotes=quotes,
        recalled={s for s, p in positions.items() if p.get("recalled")}, as_of=as_of,
        account_type=settlement.account_type_of(balance), settled_cash=balance.get("settled_cash"),
        unsettled_buys={s: date.fromisoformat(str(d)) for s, d in (balance.get("unsettled_buys") or {}).items()})


def run_cycle(as_of=None, now=None, settings: TradingSettings | None = None) -> int:
    """One trading cycle; returns the exit code. ``settings``: the risk limits and the paper
    broker's costs (default: ``TradingSettings.from_constants()``)."""
    mode = config.trading_mode()
    replay = as_of is not None
    if replay and mode != "paper":
        raise CycleError("--as-of replays are paper-only: unset TRADING_MODE or set it to paper")
    with cycle_lock() as held:
        if not held:
            log.warning("another run holds the cycle lock (%s: %s): exiting without trading",
                        lock_path(), lock_holder())
            return EXIT_OK
        path = None                                 # the real state database
        if replay:
            # the operator's kill switch lives in the real database; the replay then runs in its
            # own throwaway account (state_db.prepare_replay), never the real paper account
            with closing(state_db.connect()) as real:
                kill_switch.require_continuity(real)     # a halt the trail holds stops replays too
                if _kill_switch_stops(real, audit_logger()):
                    return EXIT_OK
            path = state_db.prepare_replay(as_of)
        try:
            with closing(state_db.connect(path)) as conn:
                code = _cycle(conn, mode, as_of, now, settings or TradingSettings.from_constants())
        except Exception as exc:
            try:                       # the trail shows that the cycle ended, and why
                audit_logger().log_event(CYCLE_END, "error", {"error": f"{type(exc).__name__}: {exc}"})
            except Exception as audit_exc:
                log.error("audit of the failed cycle failed too: %s", audit_exc)
            # a refusal with its own alert kind (ClockError: clock_wrong) sends that one instead
            alerts.send_alert(getattr(exc, "alert_kind", "cycle_failed"),
                              f"{mode} cycle failed: {type(exc).__name__}: {exc}",
                              key=alerts.session_key("trading_cycle"), replay=replay)
            raise
    if code == EXIT_FAIL and not replay:          # a replay is a drill: no alert
        alerts.send_alert("cycle_failed", f"{mode} cycle finished with failed orders (each order line in "
                          f"logs/trading_YYYYMMDD.log says whether it was sent)",
                          key=alerts.session_key("trading_cycle"))
    return code


def _cycle(conn, mode: str, as_of, now, settings: TradingSettings) -> int:
    """Steps 2-10 of the module docstring, one named step a line, on the state database ``conn``
    (a replay's throwaway one for ``--as-of``); returns the exit code."""
    audit, replay = audit_logger(), as_of is not None
    require_valid_trail(audit=audit)                 # never trade onto a trail verify calls damaged
    _record_interrupted_cycle(audit, conn)
    _log_cycle_start(audit, mode, as_of)
    if not replay:                      # fail closed: the state database matches the trail
        kill_switch.require_continuity(conn, audit)
    if _kill_switch_stops(conn, audit):
        return EXIT_OK
    _decide_shadow(conn, audit, mode, replay)                # the one moment a shadow may be promoted
    model = get_model()
    if mode == "live" and not _gate_allows(model, conn, audit):
        return EXIT_GATE
    at = now or _cycle_clock(mode)
    executor = OrderExecutor(conn=conn, audit=audit,       # the broker made on first use, retried
                             make_broker=lambda: get_broker(mode, settings=settings, conn=conn))
    _clock_agrees_with_broker(executor, audit)               # before the clock decides anything
    if not replay:                                           # a replay picks its day on purpose
        _clock_not_backwards(conn, audit)
    data_day = _data_day(as_of, at, audit)
    if data_day is None:
        return EXIT_OK                                       # the market is closed: nothing to do
    processed = load_processed()
    if not replay:
        _session_not_behind(conn, audit, mode, at, data_day, processed)
    features, cycle_date = _fresh_features(data_day, processed)
    signals = get_latest_signal(features=features, model=model, conn=conn)
    _record_shadow(conn, features, signals, model, replay)   # the shadow's predictions, never traded
    failpoint("after_signals")
    sync_prices(executor.broker, features, as_of=cycle_date, accrue_borrow=True)
    executor.reconcile()                                     # AmbiguousOrderError: a person decides
    executor.external_activity(mode)                         # WARNING + audit for what is not ours
    risk = RiskManager(conn=conn, audit=audit, settings=settings)
    portfolio = _account(risk, executor.gateway, signals, cycle_date)     # reads retried
    tradable = _stale_guard(features, cycle_date, signals, portfolio, audit)
    hold = _drift_hold(features, model, conn, data_day)
    plan = _plan(risk, tradable, portfolio, hold, audit)
    closes = {s["symbol"]: float(s["close"]) for s in signals}
    keys, failures = _send(executor, plan.approved, cycle_date, mode, closes)
    final = _wait_for_fills(executor, keys)
    final += _retry_collared(executor, keys, cycle_date, mode)
    failures += _protect(executor, features, cycle_date, mode)
    _alert_rejections(executor, cycle_date)
    _reconcile(executor, mode, replay)                       # broker transactions explained, or breaks
    run = CycleRun(mode=mode, replay=replay, cycle_date=cycle_date, signals=signals, plan=plan,
                   keys=keys, failures=failures, session=data_day.date())
    equity = _close_cycle(conn, audit, risk, executor, model, run)
    log.info("cycle done: %d signals, %d orders wanted, %d approved, %d sent, %d failed; equity $%.2f",
             len(signals), len(plan.orders), len(plan.approved), len(keys), failures, equity)
    _print_cycle(signals, final, executor.gateway)
    return EXIT_FAIL if failures else EXIT_OK


def _record_interrupted_cycle(audit, conn) -> None:
    """The previous cycle started and never ended (killed, power cut): say so in the trail,
    with the orders it left at the broker's stage, before this cycle starts."""
    found = interrupted_cycle(audit=audit)
    if found:
        details = dict(found["details"])
        details["open_orders"] = OrderBook(conn).open_orders()
        log.warning("the previous cycle (started %s) was interrupted; %d of its orders are not final",
                    details.get("started_at"), len(details["open_orders"]))
        audit.log_event(found["action"], found["status"], details)


def _log_cycle_start(audit, mode: str, as_of) -> None:
    log.info("cycle start: mode=%s%s home=%s", mode, f" as-of {as_of}" if as_of is not None else "", config.home())
    audit.log_event(CYCLE_START, "started", {"mode": mode, "as_of": str(as_of) if as_of is not None else None})


def _kill_switch_stops(conn, audit) -> bool:
    switch = kill_switch.get(conn)
    if switch:
        log.warning("Kill switch is ON (set by %s at %s: %s): no trading. Clear it with "
                    "`python live_trading.py resume`.", switch["by"], switch["at"], switch["reason"])
        audit.log_event(CYCLE_END, "kill_switch", switch)
    return bool(switch)


def _gate_allows(model, conn, audit) -> bool:
    """Live mode: the go-live gate (golive.gate_status) must be open for this model."""
    gate = gate_status(model.checksum, conn, metadata=model.metadata)
    if not gate["passed"]:
        why = golive.refusal_reasons(gate)
        log.critical("LIVE TRADING REFUSED by the go-live gate: %s. See `python live_trading.py gate`.",
                     "; ".join(why))
        audit.log_event("golive_gate", "refused", {"model_checksum": model.checksum, "reasons": why})
        audit.log_event(CYCLE_END, "gate_refused", {"reasons": why})
        alerts.send_alert("live_gate_refused", "live cycle refused: " + "; ".join(why),
                          key=model.checksum[:12])
        return False
    if gate["override"]:
        log.warning("go-live gate OVERRIDDEN by %s: %s", gate["override"]["by"], gate["override"]["reason"])
    return True


def _decide_shadow(conn, audit, mode: str, replay: bool) -> None:
    """Start of a cycle, before the live model is loaded (not in a replay): a shadow model with
    its SHADOW_MIN_SESSIONS sessions is promoted or rejected (``shadow_model.promote_if_due``); in
    live mode it is promoted only once its own go-live gate is open. A fault here is one ERROR
    line: the live model trades as before."""
    if replay:
        return

    def gate_check(checksum: str, metadata: dict):
        status = gate_status(checksum, conn, metadata=metadata)
        return status["passed"], golive.refusal_reasons(status)
    try:
        shadow_model.promote_if_due(conn, audit, mode, gate_check=gate_check)
    except Exception as exc:                 # the shadow never stops the live model's cycle
        log.error("SHADOW MODEL NOT DECIDED (%s: %s); the live model trades as before: check with "
                  "python live_trading.py status", type(exc).__name__, exc)


def _record_shadow(conn, features, signals, model, replay: bool) -> None:
    """Run the shadow model (if any) on the cycle's features and record its predictions beside
    the live model's (``shadow_model.record_cycle``); not in a replay. Never trades; a fault is
    one ERROR line and the cycle goes on."""
    if replay:
        return
    try:
        shadow_model.record_cycle(conn, features, signals, model.checksum)
    except Exception as exc:                 # the shadow never stops the live model's cycle
        log.error("SHADOW PREDICTIONS NOT RECORDED (%s: %s); the live model trades as before",
                  type(exc).__name__, exc)


def _cycle_clock(mode: str):
    """The cycle's "now": the machine's clock; a pinned TRADING_NOW only in paper mode."""
    pinned = clock.pinned()
    if mode == "live" and pinned is not None:
        raise CycleError(f"TRADING_NOW={pinned.isoformat()} pins the clock: a live cycle trades only on "
                         f"the machine's clock; unset TRADING_NOW (it is for tests and paper drills)")
    return clock.now()


def _data_day(as_of, now, audit):
    """The session whose close the cycle trades on, or None when the market is closed now."""
    if as_of is not None:
        if not market_calendar.is_session(as_of):
            raise CycleError(f"--as-of {as_of} is not an NYSE session: pick a trading day")
        return pd.Timestamp(as_of)
    if not market_calendar.is_open(now):
        log.info("Market closed at %s (NYSE regular session): nothing to do", now)
        audit.log_event(CYCLE_END, "market_closed", {"at": str(now)})
        return None
    return market_calendar.last_completed_session(now)


def _refuse_clock(audit, problem: str, details: dict):
    """Stop the cycle before any order: audit ``clock_check`` refused (both times), raise the one
    line (``run_cycle`` records the cycle's end and sends the ``clock_wrong`` alert)."""
    audit.log_event("clock_check", "refused", dict(details, problem=problem))
    raise ClockError(problem)


def _clock_not_backwards(conn, audit) -> None:
    """The machine's clock must not be before the end of the last cycle, recorded by it."""
    last = state_db.kv_get(conn, LAST_CYCLE_KEY) or {}
    ours = clock.machine_now()
    finished = datetime.fromisoformat(last["finished_at"]) if last.get("finished_at") else None
    problem = clock_sanity.backwards_problem(ours, finished)
    if problem:
        _refuse_clock(audit, problem, {"ours": ours.isoformat(), "last_cycle_finished_at": last["finished_at"]})


def _session_not_behind(conn, audit, mode: str, at, data_day, processed: pd.DataFrame) -> None:
    """The session the clock says to trade on (``data_day``, at ``at``) must not be earlier than
    the last session this mode traded, nor than the last session of the processed data."""
    last = state_db.kv_get(conn, LAST_CYCLE_KEY) or {}
    traded = [str(r["cycle_date"])[:10] for r in OrderBook(conn).rows_of_mode(mode)
              if not str(r["client_key"]).startswith(FLATTEN_PREFIX)]
    if last.get("mode") == mode:
        traded.append(str(last.get("session") or last.get("cycle_date"))[:10])
    last_traded = pd.Timestamp(max(traded)).date() if traded else None
    last_data = processed["Date"].max().date() if len(processed) else None
    problem = clock_sanity.session_problem(data_day.date(), at, last_traded, last_data,
                                           pinned=at == clock.pinned())
    if problem:
        _refuse_clock(audit, problem, {"now": at.isoformat(), "session": str(data_day.date()),
                                       "last_traded_session": str(last_traded), "last_data_session": str(last_data)})


def _clock_agrees_with_broker(executor, audit) -> None:
    """The broker's own clock (``broker_time``: Schwab's HTTP Date; None for the paper broker)
    within ``CLOCK_MAX_SKEW_S`` of ours; learnt here, so the order windows of reconcile and the
    sends reach past it (``clock_sanity.window_end``)."""
    broker = executor.broker
    theirs = executor.gateway.call("broker clock check", broker.broker_time)
    if theirs is None:
        return
    ours = clock.machine_now()
    name = broker.name.capitalize()
    problem = clock_sanity.skew_problem(ours, theirs, name)
    if problem:
        _refuse_clock(audit, problem, {"ours": ours.isoformat(), "broker": theirs.isoformat(),
                                       "skew_s": round((theirs - ours).total_seconds(), 1),
                                       "limit_s": C.CLOCK_MAX_SKEW_S})
    log.info("clock check: ours %s, %s's %s (%+.0f s)", clock_sanity.stamp(ours), name,
             clock_sanity.stamp(theirs), (theirs - ours).total_seconds())


def _fresh_features(data_day, processed: pd.DataFrame | None = None):
    """The features up to ``data_day`` (from ``processed``, default the processed file) and the
    date of their last row; stale data stops the cycle."""
    features = load_features(data_day) if processed is None else processed[processed["Date"] <= data_day]
    last = features["Date"].max()
    behind = market_calendar.sessions_between(last, data_day)
    if behind > C.DATA_MAX_AGE_SESSIONS:
        raise CycleError(f"data is stale: processed_stock_data.csv ends {last.date()}, {behind} sessions "
                         f"before {data_day.date()}: run ./run_daily_data_update.sh")
    return features, last.date()


def _stale_guard(features, cycle_date, signals, portfolio, audit) -> list[dict]:
    """Per-symbol data guard: a symbol whose last bar is older than the session traded on gets
    no new order (a WARNING each); a position held in such a symbol stops the cycle before any
    order, since it cannot be managed on old prices. Returns the signals that may trade."""
    stale = stale_symbols(features, load_universe(), cycle_date)
    stale.update({s: None for s in portfolio.positions
                  if s not in stale and s not in set(features["Symbol"])})
    if not stale:
        return signals
    held = {s: d for s, d in stale.items() if portfolio.positions.get(s)}
    audit.log_event("data_guard", "stale_symbols", {"session": str(cycle_date), "stale": stale,
                                                    "held": {s: portfolio.positions[s] for s in held}})
    if held:
        raise CycleError(
            "open positions in symbols without current data: "
            + ", ".join(f"{s} {portfolio.positions[s]:+d} shares ({'no data' if d is None else 'last bar ' + d})"
                        for s, d in sorted(held.items()))
            + f" (session {cycle_date}): run ./run_daily_data_update.sh; if the symbol is delisted or "
              f"halted, manage the position by hand at the broker or run `python live_trading.py flatten`")
    for sym, last in sorted(stale.items()):
        log.warning("%s: %s, older than the session traded on (%s): no new order for it. Run "
                    "./run_daily_data_update.sh, or remove it from selected_stocks.txt if it is delisted",
                    sym, "no data" if last is None else f"last bar {last}", cycle_date)
    return [s for s in signals if s["symbol"] not in stale]


def sync_prices(broker, features: pd.DataFrame, as_of=None, accrue_borrow: bool = False) -> None:
    """Give the broker every symbol's last close (a simulated broker values at them; Schwab
    ignores them) and the opens and bars (open, high, low) of the last ``PAPER_OPENS_SESSIONS``
    sessions (the paper broker fills a market order decided from a close at the next session's
    open, and a resting stop within a session's bar, as the backtest does),
    and, with ``accrue_borrow``, let it charge borrow fees up to ``as_of``. First the broker
    applies the splits and dividends recorded since its last prices (the paper broker through
    ``corporate_actions``; Schwab does it itself)."""
    broker.apply_corporate_actions(corporate_actions.read_store(), through=as_of)
    ordered = features.sort_values("Date")
    closes = ordered.groupby("Symbol")["Close"].last().to_dict()
    recent = ordered[ordered["Date"] >= ordered["Date"].drop_duplicates().nlargest(C.PAPER_OPENS_SESSIONS).min()]
    opens = {d.date(): dict(zip(g["Symbol"], g["Open"].astype(float))) for d, g in recent.groupby("Date")}
    # each session's bar, so a resting protective stop triggers on the intraday low/high as in the backtest
    bars = {d.date(): {s: {"open": float(o), "high": float(h), "low": float(lo)}
                       for s, o, h, lo in zip(g["Symbol"], g["Open"], g["High"], g["Low"])}
            for d, g in recent.groupby("Date")} if {"High", "Low"} <= set(recent.columns) else None
    broker.set_prices(closes, as_of=as_of, opens=opens, bars=bars)
    if accrue_borrow and broker.simulated:     # only a simulated broker charges borrow fees itself
        broker.accrue_borrow_fees(as_of=as_of)


def _account(risk, broker, signals, cycle_date):
    """The Portfolio the risk checks see; the equity recorded (drawdown and daily-loss halts)."""
    portfolio = build_portfolio(broker, [s["symbol"] for s in signals], {s["symbol"]: s["close"] for s in signals},
                                cycle_date)
    status = risk.update_equity(portfolio.equity, as_of=cycle_date)
    log.info("account: equity $%.2f, cash $%.2f, %d positions, drawdown %.2f%% from peak $%.2f",
             portfolio.equity, portfolio.cash, len(portfolio.positions), 100 * status["drawdown"], status["peak"])
    return portfolio


def _drift_hold(features, model, conn, data_day) -> bool:
    """True when drift is CRITICAL: the cycle then opens no new positions."""
    drift = drift_monitor.evaluate(features, model, conn, as_of=data_day)
    hold = bool(drift and drift["severity"] == "CRITICAL")
    if hold:
        log.critical("trading opens no new positions: DRIFT ALERT CRITICAL (retrain with python train_model.py)")
    return hold


def _plan(risk, signals, portfolio, hold: bool, audit):
    """order_planning.plan_orders, each signal's target logged and each rejection audited."""
    plan = plan_orders(risk, signals, portfolio, hold=hold)
    for s in signals:
        log.info("signal %s: %s score %+.3f -> target %+d shares (now %+d)", s["symbol"], s["signal"],
                 s["score"], plan.targets.get(s["symbol"], portfolio.positions.get(s["symbol"], 0)),
                 portfolio.positions.get(s["symbol"], 0))
    for order, reason in plan.rejected:
        audit.log_event("risk_check", "rejected", {"order": order, "reason": reason})
    return plan


def _send(executor, approved, cycle_date, mode, closes: dict | None = None) -> tuple[list[str], int]:
    """Submit every approved order exactly once: at market, or with ``ORDER_TYPE`` =
    "limit_collar" as a LIMIT DAY order at ``order_prices.collar_limit`` of the symbol's last close
    (``closes``); returns (client keys sent, failures)."""
    results, failures = [], 0
    for order in approved:
        order = _priced(order, (closes or {}).get(order["symbol"]))
        try:
            results.append(executor.submit(order, cycle_date, mode))
        except KillSwitchSet as exc:        # halted mid-cycle: nothing more is sent (not a failure)
            log.warning("kill switch set during the cycle: %s", exc)
            break
        except AmbiguousOrderError:         # the executor set the kill switch and said what to do
            failures += 1
            break
        except OrderNotRecordedError:       # SENT: the executor logged "sent and accepted ... do NOT re-enter"
            failures += 1
        except Exception as exc:
            failures += 1
            log.error("order %s %d %s not sent: %s", order["side"], order["quantity"], order["symbol"], exc)
    keys = [r["client_key"] for r in results if r and r.get("broker_order_id")]
    failpoint("after_submit_all")
    return keys, failures


def _priced(order: dict, close: float | None) -> dict:
    """The order as sent: MARKET, or collared LIMIT DAY around the last close (``order_prices``)."""
    if not order_prices.uses_collar() or not close:
        return dict(order, order_type=MARKET)
    action = "buy" if order["side"] in BUY_SIDES else "sell"
    return dict(order, order_type=LIMIT, limit_price=order_prices.collar_limit(action, float(close)),
                price=float(close))


def _retry_collared(executor, keys, cycle_date, mode) -> list[dict]:
    """Collared orders the fill timeout cancelled: reported and retried once this session
    (``OrderExecutor.retry_collared``), then waited for like the first ones."""
    if not keys or not order_prices.uses_collar():
        return []
    try:
        retried = executor.retry_collared(keys, cycle_date, mode)
    except KillSwitchSet as exc:
        log.warning("kill switch set during the cycle: %s", exc)
        return []
    if not retried:
        return []
    final = executor.wait_for_fills(retried)
    executor.retry_collared(retried, cycle_date, mode)       # a retry unfilled too: reported, not resent
    return [r for r in final if r is not None]


def _protect(executor, features: pd.DataFrame, cycle_date, mode) -> int:
    """Protective stops at the broker (``PROTECTIVE_STOPS``): one GTC stop per position, of its
    whole size, from the closes the cycle has (``ProtectiveStops.sync``). Returns the failures."""
    failpoint("before_stops")               # the entries filled, their stops not yet placed
    try:
        done = executor.protect(cycle_date, mode, _close_history(features))
    except KillSwitchSet as exc:
        log.warning("kill switch set during the cycle: no protective stop placed or replaced (%s); the "
                    "resting ones stay at the broker", exc)
        return 0
    except AmbiguousOrderError:          # the executor set the kill switch and said what to do
        return 1
    failpoint("after_stops")
    return len(done["failed"])


def _close_history(features: pd.DataFrame) -> dict[str, list[float]]:
    """{symbol: closes, oldest first}: the stop's volatility window (``order_prices.daily_volatility``)."""
    ordered = features.sort_values("Date")
    return {str(sym): [float(c) for c in g["Close"]] for sym, g in ordered.groupby("Symbol")}


def _alert_rejections(executor, cycle_date) -> None:
    """Alert when the broker rejected ``ALERT_ORDER_REJECTIONS`` or more of this cycle's orders."""
    rejected = [r for r in executor.orders_for_cycle(cycle_date) if r["status"] == "REJECTED"]
    if len(rejected) >= C.ALERT_ORDER_REJECTIONS:
        alerts.send_alert("order_rejections", f"{len(rejected)} orders of the {cycle_date} cycle "
                          f"rejected by the broker (threshold {C.ALERT_ORDER_REJECTIONS}): "
                          + "; ".join(f"{r['client_key']}: {(r['error'] or '')[:80]}" for r in rejected[:5]),
                          key=str(cycle_date), replay=state_db.is_replay(executor.conn))


def _wait_for_fills(executor, keys) -> list[dict]:
    final = executor.wait_for_fills(keys) if keys else []
    for record in final:
        log.info("order %s: %s %d/%d %s at %s", record["client_key"], record["status"],
                 record["filled_quantity"], record["quantity"], record["symbol"], record["avg_fill_price"])
    failpoint("after_fills")
    return final


@dataclass(frozen=True)
class CycleRun:
    """What one cycle did, as its close records it."""
    mode: str
    replay: bool
    cycle_date: object
    signals: list
    plan: Plan
    keys: list
    failures: int
    session: object = None          # the session the clock said to trade on (data_day)


def _reconcile(executor, mode: str, replay: bool) -> None:
    """The reconciliation with the broker once orders are managed (``reconcile.Reconciler``): a
    break blocks the next entries. Not in a replay (its account is a throwaway); a broker that
    cannot answer leaves it for the next run (``RECONCILIATION NOT DONE``), the cycle goes on."""
    if replay:
        return
    try:
        Reconciler(executor.book, executor.gateway, executor.audit, executor.external).run(mode)
    except UserFacingError as exc:
        log.error("RECONCILIATION NOT DONE (%s): %s; it runs again after the next cycle, or now with "
                  "`python live_trading.py reconcile`", mode, exc)
        executor.audit.log_event("reconcile", "failed", {"mode": mode, "error": str(exc)})


def _close_cycle(conn, audit, risk, executor, model, run: CycleRun) -> float:
    """Record the equity after the fills, the cycle summary and (paper, no failure, no halt) the
    paper session for the go-live gate, the broker's positions (the next cycle's baseline for
    activity that is not ours) and the equity curve; audit the cycle's end. Returns the equity."""
    broker = executor.gateway                 # the broker's reads through the retry rule
    after = broker.get_account_balance()
    equity = float(after["equity"])
    risk.update_equity(equity, as_of=run.cycle_date)
    # the broker's own clock at that answer (Schwab's Date; the paper broker has none of its own)
    theirs = None if executor.broker.simulated else executor.broker.server_time
    summary = {"cycle_date": str(run.cycle_date), "session": str(run.session or run.cycle_date)[:10], "mode": run.mode,
               "replay": run.replay,
               "signals": len(run.signals), "orders_wanted": len(run.plan.orders),
               "orders_approved": len(run.plan.approved), "orders_sent": len(run.keys),
               "orders_failed": run.failures, "equity": equity, "model": model.checksum,
               "halted": bool(executor.halted), "finished_at": state_db.utcnow(),
               # the health check's clock line compares with these (clock_sanity)
               "broker_time": theirs.isoformat() if theirs else None,
               "broker_skew_s": round((theirs - clock.machine_now()).total_seconds(), 1) if theirs else None}
    with state_db.transaction(conn):
        state_db.kv_set(conn, LAST_CYCLE_KEY, summary)
        if run.mode == "paper" and not run.failures and not executor.halted:
            golive.record_paper_session(conn, run.cycle_date, model.checksum, run.replay, len(run.keys), equity)
    executor.record_positions(run.cycle_date, run.mode)
    pnl.record_equity(conn, run.cycle_date, broker)
    failpoint("before_cycle_end")
    audit.log_event(CYCLE_END, "failed" if run.failures else "completed", summary)
    return equity


def _print_cycle(signals, orders, broker) -> None:
    print(f"{'symbol':8} {'date':10} {'close':>10} {'pred diff':>10} {'score':>7}  signal")
    for s in signals:
        print(f"{s['symbol']:8} {s['date']:10} {s['close']:10.2f} {s['predicted_diff']:+10.4f} "
              f"{s['score']:+7.2f}  {s['signal']}")
    print(f"\norders: {len(orders)}")
    for o in orders:
        price = f"{o['avg_fill_price']:.2f}" if o["avg_fill_price"] else "-"
        print(f"  {o['side']:12} {o['quantity']:6d} {o['symbol']:6} {o['status']:10} filled "
              f"{o['filled_quantity']} @ {price}")
    print_positions(broker)


def print_positions(broker) -> None:
    balance = broker.get_account_balance()
    positions = broker.get_positions()
    print(f"\npositions ({len(positions)}), equity {money(balance['equity'])}, cash {money(balance['cash'])}:")
    for sym, p in sorted(positions.items()):
        print(f"  {sym:6} {p['quantity']:+7d} @ {p.get('avg_price') or 0:10.2f}  value "
              f"{money(p.get('market_value') or 0):>13}")
