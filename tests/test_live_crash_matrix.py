"""The crash matrix of the Schwab path, with real processes: a live cycle (``TRADING_MODE=live``,
schwab-py's real client through tests/schwab_shim.py against the fake Schwab on 127.0.0.1) dies
at a failpoint (``os._exit(99)``, like ``kill -9``) or is killed while its order request is in
flight; a new process reruns the cycle. Each case asserts 0 duplicate orders at Schwab, 0 foreign
(manual) orders adopted, every posted order linked to one row of ours, positions equal to an
uninterrupted run's, and a trail that verifies. An order whose answer was lost (Schwab carries no
client id) is never adopted silently: the rerun stops for a person, who resolves it as
docs/RUNBOOK.md says (``crash_harness.settle_lost_answer``). The state database locked right
after Schwab accepted an order: the run says "sent and accepted ... do NOT re-enter it by hand"
and the next run adopts it (the full suite only: it waits out the 30 s busy timeout).

The fake broker's clock is skewed from ours (broker minus ours) by -30 ... +30 s; a lost order is
still WORKING when the rerun looks (``fill_after_polls`` = 2: the rerun's listing sees it open).
The normal suite runs every crash point at -2 s (our clock ahead) and +30 s at
``after_place_order``, plus the in-flight, refused, dropped and manual-order cases; ``make faults`` (FAULTS=full) runs every crash
point at every skew."""
from __future__ import annotations

import inspect

import pandas as pd
import pytest

import constants as C
import paper_broker
from conftest import run_entry

from crash_harness import (FULL, Timed, assert_live_exactly_once, assert_one_stop_per_position, db, fresh_home,
                           kill_switch_value, live_reference, live_server, live_setup, our_rows, run_cycle_live,
                           settle_lost_answer, start_cycle_live)
from schwab_env import run_live

CRASH_POINTS = ["after_signals", "after_record_intent", "after_sending_mark", "after_place_order",
                "after_submit_all", "after_fills", "before_cycle_end"]
SKEWS = [-30, -2, 0, 0.5, 1, 2, 30]
FIRST_ORDER_POINTS = {"after_record_intent", "after_sending_mark", "after_place_order"}
# with PROTECTIVE_STOPS on: between the entries' fills and their stops, and around a stop's send
STOP_POINTS = ["before_stops", "stop_after_record_intent", "stop_after_sending_mark", "stop_after_place_order",
               "after_stops"]
STOP_POINTS_SHORT = ["before_stops", "stop_after_place_order"]


def _cases():
    if FULL:
        return [(p, s) for p in CRASH_POINTS for s in SKEWS]
    # the normal suite (CI time): every point with our clock 2 s AHEAD of the broker's (-2, the
    # direction in which the old clock comparison duplicated orders) and the other extreme at the
    # point where it did; tests/test_order_recovery.py runs every skew in-process, `make faults` all
    return [(p, -2) for p in CRASH_POINTS] + [("after_place_order", 30)]


@pytest.fixture(scope="module")
def reference(trained, tmp_path_factory):
    return live_reference(trained, tmp_path_factory.mktemp("live-reference") / "home")


@pytest.fixture
def live(trained, tmp_path):
    """A home ready for a live cycle (gate open, credentials) and its setup."""
    home = fresh_home(trained, tmp_path / "live")
    return home, live_setup(home, trained)


@pytest.mark.parametrize("point,skew", _cases(), ids=[f"{p}-skew{s:+g}" for p, s in _cases()])
def test_crash_at_failpoint_then_rerun(live, reference, point, skew):
    home, setup = live
    server = live_server(setup, skew)
    try:
        crashed = run_cycle_live(home, setup, server, {"TRADING_FAILPOINT": point})
        assert crashed.returncode == 99, crashed.stderr[-3000:]
        posted = len(server.posted_orders())
        if point in ("after_signals", "after_record_intent", "after_sending_mark"):
            assert posted == 0                                   # died before the first request
        elif point == "after_place_order":
            assert posted == 1 and not any(r["broker_order_id"] for r in our_rows(home))
        else:
            assert posted == reference["orders"]
        if point in FIRST_ORDER_POINTS:
            want = {"after_record_intent": "INTENDED"}.get(point, "SENDING")
            assert [r["status"] for r in our_rows(home)] == [want]
        rerun = run_cycle_live(home, setup, server)
        assert "was interrupted" in rerun.stderr             # every point is after cycle_start
        if point == "after_place_order":                     # the lone match: a person decides
            assert rerun.returncode == 1 and "ORDER AMBIGUOUS" in rerun.stderr, rerun.stderr[-3000:]
            assert len(server.posted_orders()) == 1          # nothing more was sent
        rerun = settle_lost_answer(home, setup, server, rerun)
        assert rerun.returncode == 0, rerun.stderr[-3000:]
        assert len(server.posted_orders()) == reference["orders"]
        assert kill_switch_value(home) is None
        assert_live_exactly_once(home, server, reference)
        assert all(r["status"] == "FILLED" for r in our_rows(home))
    finally:
        server.stop()


def test_killed_while_the_order_request_is_in_flight(live, reference):
    """Schwab stored the order; the client is ``kill -9``ed before it hears the answer."""
    home, setup = live
    server = live_server(setup, skew=2)
    server.kill_client_on_post = True
    try:
        proc = start_cycle_live(home, setup, server)
        assert server.wait_for_post(240), "the cycle never posted an order"
        proc.kill()
        proc.wait(30)
        server.release_post.set()
        assert len(server.posted_orders()) == 1
        assert [r["status"] for r in our_rows(home)] == ["SENDING"]
        rerun = run_cycle_live(home, setup, server)
        assert rerun.returncode == 1 and "ORDER AMBIGUOUS" in rerun.stderr, rerun.stderr[-3000:]
        rerun = settle_lost_answer(home, setup, server, rerun)
        assert rerun.returncode == 0, rerun.stderr[-3000:]
        assert_live_exactly_once(home, server, reference)
    finally:
        server.stop()


@pytest.mark.parametrize("fault", ["drop_next_post", "refuse_next_post"])
def test_answer_lost_or_request_never_arrived(live, reference, fault):
    """drop: Schwab stored it, the connection closed without an answer (the retry finds the lone
    match, which could be a person's twin: a person decides, nothing is resent); refuse: it never
    reached Schwab (the retry finds nothing and sends it once)."""
    home, setup = live
    server = live_server(setup, skew=2)
    setattr(server, fault, True)
    try:
        done = run_cycle_live(home, setup, server)
        assert (done.returncode == 1 and "ORDER AMBIGUOUS" in done.stderr) == (fault == "drop_next_post")
        assert ("did not reach the broker" in done.stderr) == (fault == "refuse_next_post")
        done = settle_lost_answer(home, setup, server, done)
        assert done.returncode == 0, done.stderr[-3000:]
        assert_live_exactly_once(home, server, reference)
    finally:
        server.stop()


def _first_row(home):
    rows = our_rows(home)
    assert len(rows) == 1
    return rows[0]


def _manual_like(server, row):
    return server.place_manual_order(row["symbol"], row["side"], row["quantity"])


def test_manual_order_after_a_crash_before_sending_is_never_adopted(live, reference):
    """Ours was INTENDED (never sent) when the process died; someone places the same order by
    hand; the rerun sends ours and leaves the manual one alone (reported as not ours)."""
    home, setup = live
    server = live_server(setup, skew=2)
    try:
        crashed = run_cycle_live(home, setup, server, {"TRADING_FAILPOINT": "after_record_intent"})
        assert crashed.returncode == 99, crashed.stderr[-3000:]
        manual = _manual_like(server, _first_row(home))
        rerun = run_cycle_live(home, setup, server)
        assert rerun.returncode == 0, rerun.stderr[-3000:]
        assert f"EXTERNAL ORDER at the broker, not ours: id {manual}" in rerun.stderr
        assert server.orders[manual]["status"] == "WORKING"          # not cancelled, not traded
        assert_live_exactly_once(home, server, reference)
    finally:
        server.stop()


def test_manual_order_after_a_crash_after_sending_goes_to_a_person(live, reference):
    """Ours reached Schwab (crash after the request) and someone placed the same order by hand:
    two candidates. The rerun sends nothing, sets the kill switch, says what to do; the operator
    follows docs/RUNBOOK.md "Order recovery halted for a person" (orders, cancel the manual one
    at Schwab, resolve, resume); the next cycle completes with the uninterrupted run's positions."""
    home, setup = live
    server = live_server(setup, skew=2)
    try:
        crashed = run_cycle_live(home, setup, server, {"TRADING_FAILPOINT": "after_place_order"})
        assert crashed.returncode == 99, crashed.stderr[-3000:]
        row = _first_row(home)
        ours = server.posted_orders()[0]["orderId"]
        manual = _manual_like(server, row)
        halted = run_cycle_live(home, setup, server)
        assert halted.returncode == 1, halted.stderr[-3000:]
        assert "ORDER AMBIGUOUS" in halted.stderr
        assert len(server.posted_orders()) == 1                       # nothing more was sent
        assert kill_switch_value(home) is not None
        assert our_rows(home)[0]["status"] == "SENDING" and not our_rows(home)[0]["broker_order_id"]
        # a cycle run meanwhile stops at the kill switch
        again = run_cycle_live(home, setup, server)
        assert again.returncode == 0 and "Kill switch is ON" in again.stderr
        assert len(server.posted_orders()) == 1
        # the runbook's steps
        listing = run_live(home, ["trading_execution.py", "orders"], server)
        assert listing.returncode == 0, listing.stderr
        assert str(ours) in listing.stdout and str(manual) in listing.stdout
        assert f"our order {row['client_key']} is SENDING" in listing.stdout
        server.cancel(manual)                                          # at Schwab, by hand
        resolved = run_live(home, ["trading_execution.py", "resolve", row["client_key"], "--order-id",
                                   str(ours), "--reason", "test: the API order is ours"], server)
        assert resolved.returncode == 0, resolved.stderr
        wrong = run_live(home, ["trading_execution.py", "resolve", row["client_key"], "--order-id",
                                str(manual), "--reason", "again"], server)
        assert wrong.returncode == 1 and "nothing to resolve" in wrong.stderr
        resumed = run_live(home, ["live_trading.py", "resume", "--reason", "resolved"], server)
        assert resumed.returncode == 0, resumed.stderr
        final = run_cycle_live(home, setup, server)
        assert final.returncode == 0, final.stderr[-3000:]
        assert server.orders[manual]["status"] == "CANCELED"
        assert_live_exactly_once(home, server, reference)
    finally:
        server.stop()


@pytest.mark.skipif(not FULL, reason="waits out the 30 s busy timeout: make faults (FAULTS=full); "
                    "tests/test_order_truth.py proves the same in-process in the normal suite")
def test_state_database_locked_right_after_schwab_accepted(live, reference):
    """Schwab stored the first order; before its answer reaches the cycle another process takes
    the state database's write lock. The cycle says the order was SENT (never "not sent") and
    goes on; the next run adopts it by the id the audit trail kept, sending nothing twice."""
    home, setup = live
    server = live_server(setup, skew=2)
    server.kill_client_on_post = True                   # hold the first answer until we hold the lock
    try:
        cycle = Timed(start_cycle_live(home, setup, server))
        assert server.wait_for_post(240), "the cycle never posted an order"
        lock = db(home)
        lock.isolation_level = None
        lock.execute("BEGIN IMMEDIATE")
        server.release_post.set()
        said = cycle.saw("sent and accepted by the broker as", timeout=120)
        lock.execute("ROLLBACK")
        lock.close()
        assert said is not None, cycle.stderr[-3000:]
        assert cycle.wait(300) == 1, cycle.stderr[-3000:]
        assert "do NOT re-enter it by hand" in cycle.stderr and "the next run adopts it" in cycle.stderr
        assert not [line for line in cycle.stderr.splitlines() if "not sent" in line and "Alert" not in line]
        rerun = run_cycle_live(home, setup, server)
        assert rerun.returncode == 0, rerun.stderr[-3000:]
        assert "adopted, not resent" in rerun.stderr
        assert_live_exactly_once(home, server, reference)
    finally:
        server.stop()


# ----------------------------------------------------------------------------- with protective stops
@pytest.fixture(scope="module")
def stops_reference(trained, tmp_path_factory):
    return live_reference(trained, tmp_path_factory.mktemp("live-stops-reference") / "home", stops=True)


@pytest.mark.parametrize("point", STOP_POINTS if FULL else STOP_POINTS_SHORT)
def test_crash_around_a_protective_stop_then_rerun(trained, tmp_path, stops_reference, point):
    """PROTECTIVE_STOPS on: the cycle dies between the entries' fills and their stops, or around
    a stop's send. After the rerun (and a person's resolve where a stop's answer was lost, as for
    any order) every position has exactly ONE working stop of its size, no order went twice, and
    the positions are the uninterrupted run's."""
    home = fresh_home(trained, tmp_path / "live")
    setup = live_setup(home, trained, stops=True)
    server = live_server(setup, skew=-2)
    try:
        crashed = run_cycle_live(home, setup, server, {"TRADING_FAILPOINT": point})
        assert crashed.returncode == 99, crashed.stderr[-3000:]
        stops_before = server.open_orders("STOP")
        if point in ("before_stops", "stop_after_record_intent", "stop_after_sending_mark"):
            assert stops_before == [] and server.position_quantities()      # held, not yet protected
        rerun = run_cycle_live(home, setup, server)
        assert "was interrupted" in rerun.stderr
        if point == "stop_after_place_order":        # the stop's answer was lost: a person decides
            assert rerun.returncode == 1 and "ORDER AMBIGUOUS" in rerun.stderr, rerun.stderr[-3000:]
            assert len(server.open_orders("STOP")) == 1                     # no second stop sent
        rerun = settle_lost_answer(home, setup, server, rerun)
        assert rerun.returncode == 0, rerun.stderr[-3000:]
        assert kill_switch_value(home) is None
        assert len(server.posted_orders()) == stops_reference["orders"]
        assert_live_exactly_once(home, server, stops_reference)
        assert_one_stop_per_position(home, server)
        again = run_cycle_live(home, setup, server)                          # and once more: nothing new
        assert again.returncode == 0, again.stderr[-3000:]
        assert len(server.posted_orders()) == stops_reference["orders"]
        assert_one_stop_per_position(home, server)
    finally:
        server.stop()


def _paper_rests_stops() -> bool:
    """The paper broker rests STOP orders once issue 22's simulation side is merged (it then fills
    them by ``order_prices.stop_fill``); until then these cases are skipped."""
    return "stop_fill" in inspect.getsource(paper_broker)


def _paper_stops(home) -> dict:
    """{symbol: (side, quantity)} of the paper account's working STOP orders; two for one symbol fail."""
    conn = db(home, replay=True)
    try:
        rows = conn.execute("SELECT symbol, side, quantity FROM paper_orders WHERE status IN ('NEW', 'WORKING') "
                            "AND order_type = 'STOP'").fetchall()
    finally:
        conn.close()
    out: dict = {}
    for r in rows:
        assert r["symbol"] not in out, f"two working paper stops for {r['symbol']}"
        out[r["symbol"]] = (r["side"], int(r["quantity"]))
    return out


@pytest.mark.skipif(not _paper_rests_stops(), reason="the paper broker does not rest STOP orders yet "
                    "(issue 22's simulation side: paper_broker.py with order_prices.stop_fill); runs after that merge")
@pytest.mark.parametrize("point", STOP_POINTS if FULL else ["before_stops", "stop_after_sending_mark"])
def test_paper_crash_around_a_protective_stop_then_rerun(trained, tmp_path, point):
    """The paper path (replays in the replay account): the session before the trade day enters
    (fills at the trade day's open); the trade day's cycle places the stops and dies at ``point``;
    the rerun leaves exactly ONE working stop of its size per paper position."""
    from crash_harness import paper_positions
    home = fresh_home(trained, tmp_path / "paper")
    (home / C.SETTINGS_FILE).write_text("PROTECTIVE_STOPS = true\n")
    days = sorted(pd.read_csv(home / C.PROCESSED_DATA_FILE)["Date"].unique())
    day2 = trained["trade_day"]
    day1 = days[days.index(day2) - 1]
    first = run_entry(["live_trading.py", "--as-of", day1], home, timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    crashed = run_entry(["live_trading.py", "--as-of", day2], home, {"TRADING_FAILPOINT": point}, timeout=300)
    if crashed.returncode == 0:
        pytest.fail(f"{day1}'s orders left no position to protect on {day2}: pick other days")
    assert crashed.returncode == 99, crashed.stderr[-3000:]
    rerun = run_entry(["live_trading.py", "--as-of", day2], home, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    positions = paper_positions(home)
    assert positions, "no paper position to protect"
    want = {s: ("SELL" if q > 0 else "BUY_TO_COVER", abs(q)) for s, q in positions.items()}
    assert _paper_stops(home) == want
