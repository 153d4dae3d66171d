"""The front door of the trading system: ``python live_trading.py [command]``.

``run`` (the default; cron runs it) is one trading cycle (``trading_cycle.run_cycle``). The
operator's commands: ``status``, ``history``, ``halt --reason``, ``resume --reason``, ``flatten``,
``gate [--override --reason [--no-backtest]]``, ``reconcile [--accept ID --reason]``, ``signals``, ``serve``, ``init`` (a new home on
purpose), ``start-over --confirm START-OVER --reason`` (a fresh state database on purpose);
``--as-of DATE`` replays a paper cycle as of a past session in a throwaway replay account (``run``
and ``signals`` only); ``--replay`` shows that account (``status`` and ``history`` only). Every
command but ``init`` refuses a ``TRADING_HOME`` without project state (``config.require_home``). Options are accepted before or
after the command. The runbook's one-liner ``from live_trading import get_latest_signal`` keeps
working (re-exported from trading_cycle).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from contextlib import closing
from datetime import date, datetime

import pandas as pd

import alerts
import clock
import clock_sanity
import config
import constants as C
from portfolio import money
import golive
import kill_switch
import market_calendar
import pnl
import reconcile_breaks
import shadow_model
import state_db
import status_page
import tunables
from errors import StorageError, failure_level, install_excepthook, is_user_facing, one_line
from logging_setup import setup_logging
from risk_management import RiskManager
from reconcile import Reconciler
from trading_api import get_broker
from trading_cycle import (EXIT_CONFIG, EXIT_FAIL, EXIT_GATE, EXIT_OK, LAST_CYCLE_KEY,
                           audit_logger, cycle_lock, get_latest_signal, get_model, load_features,
                           lock_holder, print_positions, run_cycle, sync_prices)
from broker_base import BrokerError
from order_book import OrderBook
from broker_gateway import describe_breaker
from trading_execution import CircuitBreaker, OrderExecutor, flatten_not_flat_line

log = logging.getLogger("trading")

EXIT_CODES = f"""exit codes:
  {EXIT_OK}  success, or nothing to do (kill switch on, market closed, another run holds the lock)
  {EXIT_FAIL}  failure (the reason is on stderr and in logs/trading_YYYYMMDD.log)
  {EXIT_CONFIG}  configuration error or a mistyped command
  {EXIT_GATE}  live trading refused by the go-live gate (python live_trading.py gate)
  flatten: {EXIT_OK} only when the broker reports no open position afterwards; {EXIT_FAIL} when positions
     remain open (listed on stderr with the closing orders still working at the broker, never cancelled)"""


def _json(obj) -> None:
    print(json.dumps(obj, indent=2, sort_keys=True, default=str))


# ----------------------------------------------------------------------------- status and history
def _account_db(replay: bool):
    """The real state database's path, or with ``replay`` the throwaway ``--as-of`` replay one,
    which must exist (``--replay`` never shows, nor creates, anything else)."""
    if replay and not config.state_db_file(replay=True).exists():
        raise config.ConfigUsageError(f"no replay account in {config.home()} yet: run a replay first "
                                 f"(python live_trading.py --as-of YYYY-MM-DD)")
    return state_db.db_path(replay)


def _status_data(replay: bool) -> dict:
    """The status of the real account, or with ``replay`` of the throwaway ``--as-of`` replay one."""
    with closing(state_db.connect(_account_db(replay))) as conn:
        return _status_of(conn, replay)


def _status_of(conn, replay: bool) -> dict:
    rs = RiskManager(conn=conn).status()
    data = {"mode": config.trading_mode(), "home": str(config.home()), "replay_account": replay,
            "kill_switch": kill_switch.get(conn), "circuit_breaker": CircuitBreaker(conn).status(),
            "risk": {"peak": (rs.get("peak") or {}).get("equity"), "drawdown": rs.get("drawdown"),
                     "halted": bool(rs.get("halted")), "halt_reason": rs.get("reason")},
            "last_cycle": state_db.kv_get(conn, LAST_CYCLE_KEY),
            "reconciliation": reconcile_breaks.status(conn), "data_source_label": config.data_source_banner(),
            "state_problem": None, "stops": _stops_of(conn), "shadow": _shadow_status(conn, replay)}
    if not replay:
        try:                           # a lost or replaced state database: say so before the account
            kill_switch.require_continuity(conn)
        except kill_switch.StateContinuityError as exc:
            data["state_problem"] = str(exc)
    try:
        data["account"] = pnl.status_dict(get_broker(conn=conn), conn)
    except Exception as exc:
        data["account"] = None
        data["account_error"] = f"{type(exc).__name__}: {exc}"
        data["storage_fault"] = isinstance(exc, StorageError)     # status then exits 1
    return data


def _stops_of(conn) -> dict:
    """The protective stops of the order book: resting at the broker, and the ones that fired."""
    book = OrderBook(conn, create=False)
    keep = ("client_key", "symbol", "side", "quantity", "stop_price", "broker_order_id", "status",
            "filled_quantity", "avg_fill_price", "updated_at")
    return {"resting": [{k: r[k] for k in keep} for r in book.resting_stops()],
            "fired": [{k: r[k] for k in keep} for r in book.fired_stops(10)]}


def _print_stops(stops: dict) -> None:
    resting, fired = stops["resting"], stops["fired"]
    print(f"protective stops: {len(resting)} resting at the broker"
          + (f", {len(fired)} fired" if fired else ""))
    for r in resting:
        print(f"  resting {r['side']:12} {r['quantity']:6d} {r['symbol']:6} stop {r['stop_price'] or 0:10.2f}  "
              f"GTC, broker id {r['broker_order_id']} ({r['status']})")
    for r in fired:
        print(f"  FIRED   {r['side']:12} {r['filled_quantity']:6d} {r['symbol']:6} stop {r['stop_price'] or 0:10.2f}  "
              f"filled at {r['avg_fill_price'] or 0:.2f} ({r['updated_at'][:19]}), broker id {r['broker_order_id']}")


def cmd_status(as_json: bool, replay: bool) -> int:
    data = _status_data(replay)
    if as_json:
        _json(data)
        return EXIT_OK
    switch = data["kill_switch"]
    if data["state_problem"]:
        print(f"STATE DATABASE:  {data['state_problem']}")
    if data["data_source_label"]:
        print(f"prices:          {data['data_source_label']}")
    print(f"mode:            {data['mode']}{'  (replay account)' if replay else ''}   (home {data['home']})")
    print(f"kill switch:     {'ON: ' + switch['reason'] + ' (by ' + switch['by'] + ' at ' + switch['at'] + ')' if switch else 'off'}")
    br = data["circuit_breaker"]
    print(f"circuit breaker: {describe_breaker(br)}")
    risk = data["risk"]
    peak = "none recorded yet" if risk["peak"] is None else money(risk["peak"])
    print(f"risk:            peak {peak}, drawdown {100 * (risk['drawdown'] or 0):.2f}%, "
          f"halted: {'YES: ' + str(risk['halt_reason']) if risk['halted'] else 'no'}")
    recon = data["reconciliation"]
    breaks = recon["open_breaks"]
    last_recon = recon["last_run"]
    print(f"reconciliation:  {len(breaks)} open break{'s' if len(breaks) != 1 else ''}"
          f"{' (new entries blocked)' if breaks else ''}; last run "
          f"{last_recon['at'] + ' (' + last_recon['mode'] + ')' if last_recon else 'never'}")
    for b in breaks:
        print(f"  RECONCILIATION BREAK {reconcile_breaks.describe(b)} (found {b['found_at']}): "
              f"{reconcile_breaks.ACCEPT_COMMAND.format(id=b['id'])}")
    last = data["last_cycle"]
    if last:
        print(f"last cycle:      {last['cycle_date']} ({last['mode']}{', replay' if last['replay'] else ''}) "
              f"finished {last['finished_at']}: {last['signals']} signals, {last['orders_sent']} orders sent, "
              f"{last['orders_failed']} failed, equity {money(last['equity'])}")
    else:
        print("last cycle:      none yet")
    if data["stops"]["resting"] or data["stops"]["fired"]:
        _print_stops(data["stops"])
    _print_shadow(data["shadow"])
    acct = data["account"]
    if acct is None:
        print(f"account:         unavailable ({data['account_error']})")
        return EXIT_FAIL if data.get("storage_fault") else EXIT_OK
    day = f"{money(acct['day_pnl'], signed=True)} since {acct['day_pnl_since']}" if acct["day_pnl"] is not None else "n/a (no earlier session recorded)"
    print(f"equity:          {money(acct['equity'])}   cash {money(acct['cash'])}   positions {money(acct['positions_value'])}")
    print(f"P&L:             realised {money(acct['realised_pnl'], signed=True)} ({acct['round_trips']} round "
          f"trips), unrealised {money(acct['unrealised_pnl'], signed=True)}, day {day}")
    print(f"\npositions ({len(acct['positions'])}):")
    if acct["positions"]:
        print(f"  {'symbol':6} {'qty':>7} {'avg cost':>10} {'price':>10} {'value':>13} {'unrealised':>12}")
    for p in acct["positions"]:
        print(f"  {p['symbol']:6} {p['quantity']:+7d} {p['avg_cost']:10.2f} {p['price']:10.2f} "
              f"{p['market_value']:13,.2f} {p['unrealised_pnl']:+12,.2f}")
    return EXIT_OK


def _shadow_status(conn, replay: bool) -> dict | None:
    """The shadow model's progress (``shadow_model.progress``, JSON-able), None when none shadows
    (or for the replay account: shadows run only beside the real cycles)."""
    return None if replay else shadow_model.as_json(shadow_model.progress(conn))


def _print_shadow(shadow: dict | None) -> None:
    print(f"shadow model:    {shadow_model.progress_line(shadow) if shadow else 'none'}")


def cmd_history(as_json: bool, limit: int | None, replay: bool) -> int:
    with closing(state_db.connect(_account_db(replay))) as conn:
        data = pnl.history(conn, mode=config.trading_mode(), limit=limit)
    if as_json:
        _json(data)
        return EXIT_OK
    if config.data_source_banner():
        print(config.data_source_banner())
    print(f"round trips ({data['round_trip_count']}; realised {money(data['realised_pnl'], signed=True)}"
          + (f", win rate {100 * data['win_rate']:.0f}%" if data["win_rate"] is not None else "") + "):")
    for t in data["round_trips"]:
        print(f"  {t['symbol']:6} {t['side']:5} {t['quantity']:6d}  {t['entry_date'][:10]} @ {t['entry_price']:9.2f}"
              f" -> {t['exit_date'][:10]} @ {t['exit_price']:9.2f}  P&L {t['pnl']:+10,.2f}")
    print(f"\nfills ({data['fill_count']}):")
    for f in data["fills"]:
        print(f"  {str(f['trade_date'])[:19]}  {f['side']:12} {f['quantity']:6d} {f['symbol']:6} @ {f['price']:9.2f}")
    return EXIT_OK


# ----------------------------------------------------------------------------- halt, resume, flatten
def cmd_halt(reason: str, by: str | None = None) -> int:
    """``by``: who (default ``config.operator()``; the phone bot passes the Telegram sender)."""
    value = kill_switch.halt(reason, by=by)
    if len(value.get("reasons") or []) > 1:
        print(f"already HALTED since {value['at']} ({value['reason']}, by {value['by']}); your reason was "
              f"added ({len(value['reasons'])} reasons). Clear with: python live_trading.py resume --reason \"...\"")
    else:
        print(f"HALTED: {value['reason']} (by {value['by']} at {value['at']}; home {config.home()}). "
              f"Clear with: python live_trading.py resume --reason \"...\"")
    print(_halt_stops_line())
    return EXIT_OK


def _halt_stops_line() -> str:
    """What a halt does with the protective stops: nothing; they keep protecting the positions."""
    try:
        with closing(state_db.connect()) as conn:
            n = len(OrderBook(conn, create=False).resting_stops())
    except Exception:             # the halt is set; this line is only information
        n = None
    count = "" if n is None else f" ({n})"
    return (f"resting stops stay at the broker{count}: a halt sends and cancels nothing; "
            f"`python live_trading.py flatten` cancels them after closing the positions")


def cmd_resume(reason: str, by: str | None = None) -> int:
    old = kill_switch.clear(reason, by=by)
    if old is None:
        print("nothing to resume: the kill switch is not set")
        return EXIT_OK
    print(f"RESUMED: kill switch cleared (it was: {old['reason']}). Cycles trade again.")
    return EXIT_OK


def cmd_reconcile(accept: int | None, reason: str | None, as_json: bool) -> int:
    """Reconcile with the broker now (under the cycle lock), or accept break ``accept``."""
    mode = config.trading_mode()
    if accept is not None:
        executor = OrderExecutor(audit=audit_logger())
        done = Reconciler(executor.book, executor.gateway, executor.audit, executor.external).accept(
            accept, reason or "")
        print(f"reconciliation break #{done['id']} accepted by {done['accepted_by']}: {done['reason']}")
        rebuild_status_page()
        return EXIT_OK
    if reason:
        raise config.ConfigError("--reason goes with --accept ID: nothing done")
    with cycle_lock(wait_s=C.FLATTEN_LOCK_WAIT_S, what="reconcile") as held:
        if not held:
            print(f"reconcile NOT done: the cycle lock is held by {lock_holder()}; the cycle reconciles "
                  f"at its end", file=sys.stderr)
            return EXIT_FAIL
        executor = OrderExecutor(audit=audit_logger())
        result = Reconciler(executor.book, executor.gateway, executor.audit, executor.external).run(mode)
    rebuild_status_page()
    if as_json:
        _json(result)
        return EXIT_OK
    if result["first"]:
        print(f"reconciliation ({mode}): first run, the broker's cash and positions recorded as the starting point")
    for t in result["explained"]:
        print(f"  {t['kind']:15} {t['type']:21} {t.get('symbol') or '':6} cash {float(t['cash']):+12,.2f}  "
              f"{t.get('description') or ''}")
    for b in result["breaks"]:
        print(f"RECONCILIATION BREAK {reconcile_breaks.describe(b)}: "
              f"{reconcile_breaks.ACCEPT_COMMAND.format(id=b['id'])}")
    print(f"reconciliation ({mode}): {len(result['explained'])} new transactions, {len(result['breaks'])} new "
          f"breaks, {result['open_breaks']} open")
    return EXIT_OK


def cmd_flatten(confirm: str | None, keep_trading: bool, wait_s: float, by: str | None = None) -> int:
    """Stop trading (the kill switch, unless --keep-trading), wait for a running cycle to
    finish, then cancel open orders and close every position through the broker. The closing
    orders' client keys are stable for the day, so a rerun never closes twice."""
    if confirm != "FLATTEN":
        if not sys.stdin.isatty():
            print("flatten needs a typed confirmation: run it in a terminal, or pass --confirm FLATTEN",
                  file=sys.stderr)
            return EXIT_CONFIG
        if input("Close EVERY position at market and cancel every open order? Type FLATTEN: ").strip() != "FLATTEN":
            print("not confirmed: nothing done")
            return EXIT_OK
    if not keep_trading:
        kill_switch.halt("flatten: close every position", by=by)
    with cycle_lock(wait_s=wait_s, what="flatten") as held:
        if not held:
            print(f"flatten NOT done: the cycle lock is still held after {wait_s:.0f} s by {lock_holder()}. "
                  f"{'The kill switch is set, so it sends nothing more; ' if not keep_trading else ''}"
                  f"run flatten again when it has finished (or stop that process).", file=sys.stderr)
            return EXIT_FAIL
        return _flatten_locked()


def _flatten_clock(executor, audit) -> None:
    """The cycle's clock check (``clock_sanity``: the broker's clock against ours, ours against the
    last cycle's end), run by flatten before its first order; flatten goes on with a wrong clock
    (closing positions only reduces risk, and an emergency command must work) but says so: one
    line naming both times and the NTP fix (stderr and the log), the audit record ``clock_check``
    ``flatten_goes_on`` and the ``clock_wrong`` alert. Asking the broker's clock first also
    makes every order window of flatten reach past it (``clock_sanity.window_start/window_end``)."""
    ours = clock.machine_now()
    try:
        theirs = executor.gateway.call("broker clock check", executor.broker.broker_time)
    except BrokerError as exc:                  # the closing orders say more if it is down
        log.warning("flatten: the broker's clock was not checked: %s", exc)
        theirs = None
    last = state_db.kv_get(executor.conn, LAST_CYCLE_KEY) or {}
    finished = last.get("finished_at")
    problem = (clock_sanity.skew_problem(ours, theirs, executor.broker.name.capitalize(),
                                         outcome=clock_sanity.FLATTEN_GOES_ON, fix=clock_sanity.FLATTEN_FIX)
               or clock_sanity.backwards_problem(ours, datetime.fromisoformat(finished) if finished else None,
                                                 outcome=clock_sanity.FLATTEN_GOES_ON,
                                                 fix=clock_sanity.FLATTEN_FIX))
    if problem is None:
        return
    print(problem, file=sys.stderr)
    log.error("%s", problem)
    audit.log_event("clock_check", "flatten_goes_on", {
        "ours": ours.isoformat(), "broker": theirs.isoformat() if theirs else None,
        "last_cycle_finished_at": finished, "problem": problem})
    alerts.send_alert("clock_wrong", f"flatten: {problem}", key=alerts.session_key("flatten"))


def _flatten_locked() -> int:
    mode = config.trading_mode()
    audit = audit_logger()
    executor = OrderExecutor(audit=audit)
    _flatten_clock(executor, audit)
    try:
        features = load_features()
        # stamped with the session of the closes, as in the cycle: the paper broker then fills
        # the closing orders at the following session's open
        sync_prices(executor.broker, features, as_of=features["Date"].max().date())
    except Exception as exc:
        log.warning("broker prices not refreshed from processed_stock_data.csv: %s", exc)
    done = executor.flatten(clock.today(), mode)
    for o in done["orders"]:
        print(f"  {o['side']:12} {o['quantity']:6d} {o['symbol']:6} {o['status']}")
    print(f"flatten: cancelled {done['cancelled']} open orders, {len(done['orders'])} closing orders")
    if done["stops_cancelled"] or done["stops_kept"]:
        print(f"flatten: protective stops cancelled after the positions were closed: "
              f"{len(done['stops_cancelled'])}" + (f"; kept for positions still open: {len(done['stops_kept'])} "
                                                   f"({', '.join(done['stops_kept'])})" if done["stops_kept"] else ""))
    if executor.broker.fills_at_next_open and any(o["status"] == "SUBMITTED" for o in done["orders"]):
        print("paper: the closing orders fill at the next session's open (as a market order after the close would)")
    print_positions(executor.gateway)
    if not done["flat"]:          # exit 1: the broker still reports open positions
        print(flatten_not_flat_line(done, executor.broker.fills_at_next_open), file=sys.stderr)
        return EXIT_FAIL
    return EXIT_OK


# ----------------------------------------------------------------------------- a new home, starting over
def cmd_init() -> int:
    """Create a new home on purpose: the folder and its state database (audited). A home where
    something has run already is left alone (start over with ``start-over`` instead)."""
    if config.state_db_file().exists():
        print(f"{config.home()} is a home already (its state database exists): nothing done")
        return EXIT_OK
    if config.home_problem(has_run=True) is None:          # an audit trail, but no state database
        print(f"{config.home()} has an audit trail but no state database: nothing done. If the "
              f"database was lost, restore it from a backup, or start over on purpose with "
              f"`{kill_switch.START_OVER_COMMAND}`", file=sys.stderr)
        return EXIT_FAIL
    state_db.connect().close()
    audit_logger().log_event("home_created", "done", {"home": str(config.home()), "by": config.operator()})
    print(f"new home {config.home()}: state database {config.state_db_file()} created. Next: "
          f"./run_daily_data_update.sh and python train_model.py")
    return EXIT_OK


def cmd_start_over(confirm: str | None, reason: str | None) -> int:
    """Begin a fresh state database on purpose, audited (kill_switch.start_over), under the
    cycle lock; the old database is moved aside, never deleted."""
    if confirm != "START-OVER" or not (reason or "").strip():
        print("start-over replaces the state database (orders, paper account, breaker, risk peak, paper "
              "sessions, gate override) with a fresh one: pass --confirm START-OVER --reason \"...\"",
              file=sys.stderr)
        return EXIT_CONFIG
    with cycle_lock(what="start-over") as held:
        if not held:
            print(f"start-over NOT done: a cycle or flatten holds the cycle lock ({lock_holder()}); "
                  f"run it again when that has finished", file=sys.stderr)
            return EXIT_FAIL
        done = kill_switch.start_over(reason, audit=audit_logger())
    print(f"STARTED OVER: fresh state database {done['database']}"
          + (f" (the old one moved to {done['moved_to']})" if done["moved_to"] else "")
          + ("; the kill switch stays ON: clear it with " + kill_switch.RESUME_COMMAND
             if done["kill_switch_carried"] else ""))
    if config.trading_mode() == "live":
        print("live: the Schwab account is untouched; its positions show as not ours "
              "(EXTERNAL POSITION CHANGE) until you manage them")
    return EXIT_OK


# ----------------------------------------------------------------------------- gate, signals, serve
def cmd_gate(override: bool, reason: str | None, no_backtest: bool, as_json: bool) -> int:
    model = get_model()
    if no_backtest and not override:
        print("--no-backtest only goes with --override --reason \"...\"", file=sys.stderr)
        return EXIT_CONFIG
    if override:
        if not reason:
            print("--override needs --reason \"...\"", file=sys.stderr)
            return EXIT_CONFIG
        value = golive.set_override(model.checksum, reason, config.operator(), audit_logger(),
                                    no_backtest=no_backtest, metadata=model.metadata)
        log.warning("go-live gate OVERRIDDEN for model %s by %s%s: %s", model.checksum[:12], value["by"],
                    " (without a passing backtest and walk-forward)" if no_backtest else "", reason)
    st = golive.gate_status(model.checksum, metadata=model.metadata)
    if as_json:
        _json(st)
        return EXIT_OK if st["passed"] else EXIT_FAIL
    print(f"model:          {model.checksum}")
    print("\n".join(golive.headline(st)))
    print(f"paper sessions: {st['paper_sessions']} of {st['paper_sessions_needed']} "
          f"({'PASS' if st['paper_sessions'] >= st['paper_sessions_needed'] else 'not yet'}; replays do not count)")
    for cond in st["conditions"]:
        print(f"  {'PASS' if cond['passed'] else 'FAIL'}  {cond['name']}: measured: {cond['measured']}")
        print(f"        required: {cond['threshold']}")
        if not cond["passed"]:
            print(f"        to fix:   {cond['fix']}")
    if st["override"]:
        o = st["override"]
        print(f"override:       by {o['by']} at {o['at']}: {o['reason']}"
              + (" (backtest waived too, and the walk-forward)" if o.get("no_backtest")
                 else " (waives the paper sessions only)"))
    print(f"live trading:   {'ALLOWED' if st['passed'] else 'REFUSED: ' + '; '.join(golive.refusal_reasons(st))}")
    return EXIT_OK if st["passed"] else EXIT_FAIL


def cmd_config(as_json: bool) -> int:
    """The effective settings and where each came from (default, file, environment); secrets
    (credential keys, alert URLs) are never shown. Start-up has already checked them."""
    effective = tunables.load()
    if as_json:
        print(json.dumps(tunables.as_json(effective), indent=2))
    else:
        print("\n".join(tunables.describe(effective)))
    return EXIT_OK


def cmd_signals(as_of, as_json: bool) -> int:
    signals = get_latest_signal(as_of=as_of, record=False)
    if as_json:
        _json(signals)
        return EXIT_OK
    # the header goes to stderr: stdout stays one line per symbol (ticker first, signal last)
    for line in signals_header():
        print(line, file=sys.stderr)
    for s in signals:
        print(f"{s['symbol']:8} {s['date']} close {s['close']:10.2f} predicted_diff {s['predicted_diff']:+9.4f} "
              f"score {s['score']:+6.2f} {s['signal']}")
    return EXIT_OK


def signals_header() -> list[str]:
    """What the columns of ``signals`` are, the threshold, and the SYNTHETIC label when it applies."""
    label = config.data_source_banner()
    return ([label] if label else []) + [
        f"symbol   date       close (USD)  predicted_diff (next-day USD)  score (diff / (close x daily vol))  "
        f"signal: BUY when score >= +{C.SIGNAL_THRESHOLD:.2f}, SELL when <= -{C.SIGNAL_THRESHOLD:.2f}, else HOLD"]


def rebuild_status_page() -> None:
    """Rebuild reports/status.html; a failure is logged, never fatal (the page is a view)."""
    try:
        status_page.build_status_page()
    except Exception as exc:
        log.warning("status page not rebuilt: %s: %s", type(exc).__name__, exc)


# ----------------------------------------------------------------------------- the command line
def _parser() -> argparse.ArgumentParser:
    # options every command accepts, before or after its name (SUPPRESS: a subcommand's copy
    # does not overwrite a value given before it)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--as-of", default=argparse.SUPPRESS,
                        help="replay a paper cycle / signals as of this past session (YYYY-MM-DD)")
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="machine-readable output (status, history, gate, signals, config)")
    common.add_argument("--replay", action="store_true", default=argparse.SUPPRESS,
                        help="status/history of the throwaway replay account instead of the real one")
    parser = argparse.ArgumentParser(
        prog="live_trading.py", parents=[common], formatter_class=argparse.RawDescriptionHelpFormatter,
        description="One trading cycle (the default), or an operator command.", epilog=EXIT_CODES)
    sub = parser.add_subparsers(dest="command", metavar="command")

    def add(name, help_):
        return sub.add_parser(name, parents=[common], help=help_, description=help_, epilog=EXIT_CODES,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    add("run", "one trading cycle (the default)")
    add("status", "mode, kill switch, breaker, drawdown, equity, P&L, positions, last cycle")
    p = add("history", "round trips and fills of the account")
    p.add_argument("--limit", type=int, help="only the newest N round trips and fills")
    p = add("halt", "set the kill switch: every run stops trading (a second halt adds its reason)")
    p.add_argument("--reason", required=True)
    p = add("resume", "clear the kill switch")
    p.add_argument("--reason", required=True, help="why it is safe to trade again (audited)")
    p = add("flatten", "stop trading, cancel open orders and close every position (asks to confirm)")
    p.add_argument("--confirm", help="type FLATTEN here to skip the prompt")
    p.add_argument("--keep-trading", action="store_true",
                   help="do not set the kill switch (cycles may open positions again)")
    p.add_argument("--wait", type=float, default=None,
                   help=f"seconds to wait for a running cycle (default {C.FLATTEN_LOCK_WAIT_S:.0f})")
    p = add("reconcile", "explain the broker's transactions since the last reconciliation (breaks block "
                         "new entries), or accept a break")
    p.add_argument("--accept", type=int, metavar="ID", help="accept the reconciliation break ID (audited)")
    p.add_argument("--reason", help="with --accept: what you checked at the broker")
    p = add("gate", "the go-live conditions for the current model")
    p.add_argument("--override", action="store_true",
                   help="waive the paper sessions (audited); needs --reason and a passing backtest")
    p.add_argument("--no-backtest", action="store_true", help="with --override: waive the backtest too")
    p.add_argument("--reason")
    add("signals", "print the latest signals (nothing is traded)")
    add("config", "print the effective settings and where each came from (constants.py, settings.toml, "
                  "environment); secrets never shown")
    add("init", "create a new home on purpose (TRADING_HOME): its folder and state database")
    p = add("start-over", "replace the state database with a fresh one on purpose (audited; the old one "
                          "is moved aside, a halt stays on)")
    p.add_argument("--confirm", help="type START-OVER here")
    p.add_argument("--reason", help="why (kept in the audit trail)")
    p = add("serve", "serve reports/status.html read-only on 127.0.0.1")
    p.add_argument("--port", type=int, default=None, help="TCP port (default STATUS_SERVE_PORT)")
    return parser


def _as_of(text: str):
    """A past NYSE session, or a one-line ConfigError."""
    try:
        day = pd.Timestamp(text).normalize()
        ok = market_calendar.is_session(day)
    except Exception:
        raise config.ConfigUsageError(f"--as-of {text!r} is not a date the NYSE calendar knows "
                                 f"(YYYY-MM-DD, within the calendar's range)") from None
    if not ok:
        raise config.ConfigUsageError(f"--as-of {text} is not an NYSE session: pick a trading day")
    return day


def _log_reaches_stderr() -> bool:
    """True when the log already printed to stderr (the cycle's console copy, or the fallback
    when log files cannot be written): the error is then not printed a second time."""
    return any(isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)
               and getattr(h, "stream", None) is sys.stderr for h in logging.getLogger().handlers)


# which commands take --as-of and --replay: any other refuses them (so that, say, flatten --replay
# never acts on the real account)
OPTION_COMMANDS = {"as_of": ("run", "signals"), "replay": ("status", "history")}
# the commands that need a home where something has run (state database or audit trail): they
# never report success on a home that has never traded; `init` is the one that creates a home
HAS_RUN_COMMANDS = ("halt", "resume", "flatten", "start-over")


def _check_options(args, command: str) -> None:
    for name, commands in OPTION_COMMANDS.items():
        if getattr(args, name, None) and command not in commands:
            flag = "--" + name.replace("_", "-")
            raise config.ConfigUsageError(f"{command} does not take {flag} (only {' and '.join(commands)} do): "
                                     f"nothing done")


def main(argv=None) -> int:
    install_excepthook()
    args = _parser().parse_args(argv)
    command = args.command or "run"
    as_json = getattr(args, "json", False)
    try:
        config.trading_mode()                 # a bad environment first, then the options, then the home
        config.data_source()
        _check_options(args, command)
        if command != "init":
            config.require_home(has_run=command in HAS_RUN_COMMANDS)
        as_of = _as_of(args.as_of) if getattr(args, "as_of", None) else None
        # results go to stdout; the log's console copy only for the cycle (cron captures it)
        setup_logging("trading", console=(command == "run"))
    except config.ConfigError as exc:
        print(one_line(exc), file=sys.stderr)
        return EXIT_CONFIG
    replay = getattr(args, "replay", False)
    try:
        if command == "run":
            code = run_cycle(as_of=as_of)
            if as_of is None:
                rebuild_status_page()
            return code
        if command == "status":
            return cmd_status(as_json, replay)
        if command == "history":
            return cmd_history(as_json, args.limit, replay)
        if command == "halt":
            return cmd_halt(args.reason)
        if command == "resume":
            return cmd_resume(args.reason)
        if command == "flatten":
            return cmd_flatten(args.confirm, args.keep_trading,
                               C.FLATTEN_LOCK_WAIT_S if args.wait is None else args.wait)
        if command == "reconcile":
            return cmd_reconcile(args.accept, args.reason, as_json)
        if command == "gate":
            return cmd_gate(args.override, args.reason, args.no_backtest, as_json)
        if command == "signals":
            return cmd_signals(as_of, as_json)
        if command == "config":
            return cmd_config(as_json)
        if command == "init":
            return cmd_init()
        if command == "start-over":
            return cmd_start_over(args.confirm, args.reason)
        if command == "serve":
            rebuild_status_page()
            status_page.serve(args.port)
            return EXIT_OK
    except BrokenPipeError:
        # `status | head`: the reader went away; end quietly (stdout pointed at /dev/null so
        # the interpreter's final flush does not complain)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_FAIL
    except Exception as exc:
        if is_user_facing(exc):
            log.log(failure_level(exc), "%s FAILED: %s", command, exc)
            if command != "run" and not _log_reaches_stderr():
                print(one_line(exc), file=sys.stderr)
        else:
            log.exception("%s FAILED with an unexpected error: %s: %s", command, type(exc).__name__, exc)
            if command != "run":
                print(f"ERROR: {command} failed unexpectedly: {type(exc).__name__}: {exc} "
                      f"(details in logs/trading_{date.today():%Y%m%d}.log)", file=sys.stderr)
        return EXIT_FAIL
    return EXIT_CONFIG


if __name__ == "__main__":
    sys.exit(main())
