"""``halt`` and ``flatten`` racing a running live cycle, all real processes: the cycle
(schwab-py's real client against the fake Schwab) is sending or waiting for fills (the fake fills
nothing by itself: ``fill_after_polls=None``) when the operator types
``python live_trading.py halt --reason r`` or ``python live_trading.py flatten --confirm FLATTEN``.

Nothing reaches Schwab from the cycle after the halt committed (each order's arrival time at the
fake against the moment the halt command returned), the cycle's unfilled orders are cancelled,
and after ``flatten`` the account is flat with the kill switch on."""
from __future__ import annotations

import re
import time

from crash_harness import (Timed, fresh_home, kill_switch_value, live_server, live_setup, our_rows,
                           start_cycle_live, verify_audit)
from schwab_env import run_live, start_live
from test_live_trading import audit_records

ORDER_GET = re.compile(r"/orders/\d+$")


def _first_poll(server, proc: Timed, timeout=240.0) -> None:
    """Wait until the cycle polls one of its orders (every order of the cycle is then sent)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with server.lock:
            if any(r["method"] == "GET" and ORDER_GET.search(r["path"]) for r in server.requests):
                return
        assert proc.proc.poll() is None, f"the cycle ended before polling: {proc.stderr[-3000:]}"
        time.sleep(0.05)
    raise AssertionError("the cycle never polled an order")


def _halt(home, server, reason="race test") -> float:
    """``python live_trading.py halt``; returns our clock when it had returned (the halt is committed)."""
    done = run_live(home, ["live_trading.py", "halt", "--reason", reason], server)
    assert done.returncode == 0 and "HALTED" in done.stdout, done.stdout + done.stderr
    return time.time()


def _stored_at(server, order_id) -> float:
    return server.meta[int(order_id)]["stored_at"]


def _setup(trained, tmp_path):
    home = fresh_home(trained, tmp_path / "live")
    setup = live_setup(home, trained)
    return home, setup, live_server(setup, fill_after_polls=None)


def test_halt_while_the_cycle_is_sending(trained, tmp_path):
    """The fake holds the answer to the cycle's first order; the halt commits meanwhile. When the
    answer comes, the cycle sends nothing more and cancels that order."""
    home, setup, server = _setup(trained, tmp_path)
    server.kill_client_on_post = True            # hold the first POST's answer (the client is not killed here)
    try:
        cycle = Timed(start_cycle_live(home, setup, server))
        assert server.wait_for_post(240), cycle.stderr[-3000:]
        halted_at = _halt(home, server)
        server.release_post.set()
        assert cycle.wait(120) == 0, cycle.stderr[-3000:]
        posted = server.posted_orders()
        assert len(posted) == 1, "an order was sent after the halt"
        assert all(_stored_at(server, o["orderId"]) < halted_at for o in posted)
        rows = our_rows(home)
        assert len(rows) >= 2, "the cycle wanted a second order (else this test proves nothing)"
        sent = [r for r in rows if r["broker_order_id"]]
        assert [r["status"] for r in sent] == ["CANCELED"] and posted[0]["status"] == "CANCELED"
        assert all(r["status"] == "INTENDED" for r in rows if not r["broker_order_id"])
        assert "kill switch set during the cycle" in cycle.stderr
        assert kill_switch_value(home)["reason"] == "race test"
        verify_audit(home)
    finally:
        server.stop()


def test_halt_while_the_cycle_waits_for_fills(trained, tmp_path):
    """Every order is working; the halt is read between fill polls: the cycle cancels them all
    and ends long before its fill timeout, nothing sent after the halt."""
    home, setup, server = _setup(trained, tmp_path)
    try:
        cycle = Timed(start_cycle_live(home, setup, server))
        _first_poll(server, cycle)
        halted_at = _halt(home, server)
        assert cycle.wait(120) == 0, cycle.stderr[-3000:]
        ended = time.time() - halted_at
        assert ended < 30, f"the cycle ran {ended:.0f} s after the halt (fill timeout reached?)"
        posted = server.posted_orders()
        assert posted and all(_stored_at(server, o["orderId"]) < halted_at for o in posted)
        assert all(o["status"] == "CANCELED" for o in posted)
        assert all(r["status"] == "CANCELED" for r in our_rows(home) if r["broker_order_id"])
        assert "kill switch is ON" in cycle.stderr and "cancelling them" in cycle.stderr
        assert server.position_quantities() == {}
        verify_audit(home)
    finally:
        server.stop()


def test_flatten_while_a_cycle_runs(trained, tmp_path):
    """One of the cycle's orders has filled (a position), the others are working, when flatten
    starts: it sets the kill switch, waits for the cycle lock (the cycle cancels its working
    orders and ends), then closes the position; the account is flat and the switch stays on."""
    home, setup, server = _setup(trained, tmp_path)
    try:
        cycle = Timed(start_cycle_live(home, setup, server))
        _first_poll(server, cycle)
        first = server.posted_orders()[0]
        server.fill(first["orderId"])
        assert server.position_quantities(), "no position to flatten"
        flatten_started = time.time()
        flatten = Timed(start_live(home, ["live_trading.py", "flatten", "--confirm", "FLATTEN"], server))
        assert cycle.wait(120) == 0, cycle.stderr[-3000:]
        cycle_ended = time.time()
        server.fill_after_polls = 1                  # flatten's closing orders fill when polled
        assert flatten.wait(240) == 0, flatten.stdout + flatten.stderr[-3000:]
        switch = kill_switch_value(home)
        assert switch and switch["reason"].startswith("flatten")
        rows = our_rows(home)
        cycle_rows = [r for r in rows if not r["client_key"].startswith("flatten-")]
        close_rows = [r for r in rows if r["client_key"].startswith("flatten-")]
        assert close_rows, "flatten sent no closing order"
        # nothing of the cycle's reached Schwab after flatten set the kill switch
        assert all(_stored_at(server, r["broker_order_id"]) < flatten_started
                   for r in cycle_rows if r["broker_order_id"])
        # flatten waited for the cycle lock: in the trail, the cycle ended before flatten started
        trail = [(r["action"], r["status"]) for r in audit_records(home)]
        assert trail.index(("flatten", "started")) > max(i for i, a in enumerate(trail) if a[0] == "cycle_end")
        assert cycle_ended > flatten_started
        assert server.position_quantities() == {}
        assert not [o for o in server.posted_orders() if o["status"] in ("WORKING", "QUEUED", "ACCEPTED")]
        assert "flatten: cancelled" in flatten.stdout and "positions (0)" in flatten.stdout
        linked = [str(r["broker_order_id"]) for r in rows if r["broker_order_id"]]
        assert sorted(linked) == sorted(str(o["orderId"]) for o in server.posted_orders())
        verify_audit(home)
    finally:
        server.stop()
