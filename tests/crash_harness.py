"""Shared pieces of the subprocess crash tests (tests/test_live_crash_matrix.py,
tests/test_kill9_harness.py, tests/test_halt_race.py).

Every run is a real process: a live cycle is ``python tests/schwab_shim.py -c <cycle_code>``
(schwab-py's real client against the fake Schwab on 127.0.0.1), a paper cycle is
``python live_trading.py --as-of DAY`` (a replay in the throwaway replay account). A crash is a
failpoint (``os._exit(99)``) or a ``kill -9`` of that process; the rerun is a new process that
knows only the home's state database.

``FAULTS=full`` (``make faults``) runs the whole cross product and ``KILL9_TRIALS`` (default 3)
trials per broker; without it the normal suite runs a representative subset.
"""
from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import constants as C
from conftest import TRAINED_FILES, entry_env, run_entry
from fake_schwab_server import FakeSchwabServer
from schwab_env import cycle_code, live_cycle_setup, run_live, start_live

ROOT = Path(__file__).resolve().parent.parent
FULL = os.environ.get("FAULTS", "").strip().lower() == "full"
FILL_AFTER_POLLS = 2        # a lost order is still WORKING when the rerun lists the orders


def env_context(home):
    """Environment of the test process pointed at ``home`` (helpers of schwab_env write through it)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("TRADING_HOME", str(home))
    mp.setenv("TRADING_CONFIG_DIR", str(Path(home) / "keys"))
    mp.setenv("DATA_SOURCE", "sample")
    mp.delenv("TRADING_MODE", raising=False)
    return mp


def fresh_home(trained, parent: Path) -> Path:
    """A new TRADING_HOME with the session's sample data and tiny model."""
    home = parent
    home.mkdir(parents=True, exist_ok=True)
    for name in TRAINED_FILES:
        dst = home / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(trained["home"] / name, dst)
    return home


def live_server(setup: dict, skew: float = 0.0, fill_after_polls=FILL_AFTER_POLLS) -> FakeSchwabServer:
    server = FakeSchwabServer(clock_skew_s=skew, prices=setup["closes"], fill_after_polls=fill_after_polls)
    return server.start()


def run_cycle_live(home, setup, server, env_extra=None, timeout=300):
    return run_live(home, ["-c", cycle_code(setup["now"])], server, env_extra, timeout=timeout)


def start_cycle_live(home, setup, server, env_extra=None):
    return start_live(home, ["-c", cycle_code(setup["now"])], server, env_extra)


def db(home, replay=False):
    conn = sqlite3.connect(Path(home) / (C.REPLAY_STATE_DB_FILE if replay else C.STATE_DB_FILE))
    conn.row_factory = sqlite3.Row
    return conn


def our_rows(home, mode="live", replay=False) -> list[dict]:
    conn = db(home, replay)
    try:
        return [dict(r) for r in conn.execute("SELECT * FROM orders WHERE mode = ?", (mode,))]
    finally:
        conn.close()


def kill_switch_value(home):
    conn = db(home)
    try:
        row = conn.execute("SELECT value FROM kv WHERE key = 'kill_switch'").fetchone()
    finally:
        conn.close()
    return json.loads(row[0]) if row and row[0] else None


def verify_audit(home) -> None:
    done = run_entry(["audit_logging.py", "verify"], home)
    assert done.returncode == 0, f"audit trail does not verify: {done.stdout}{done.stderr}"


def net_fills(orders: list[dict]) -> dict:
    """{symbol: signed shares} the fake's orders filled."""
    net = {}
    for o in orders:
        leg = o["orderLegCollection"][0]
        sign = 1 if leg["instruction"] in ("BUY", "BUY_TO_COVER") else -1
        sym = leg["instrument"]["symbol"]
        net[sym] = net.get(sym, 0) + sign * int(o["filledQuantity"])
    return {s: q for s, q in net.items() if q}


def assert_live_exactly_once(home, server: FakeSchwabServer, reference: dict | None) -> None:
    """0 duplicate orders, every posted order linked to exactly one row of ours, no row of ours
    linked to an order we did not post (a manual one), positions = our fills (= the
    uninterrupted run's, when ``reference`` is given), the audit trail verifies."""
    assert server.duplicates() == {}, f"duplicate orders at Schwab: {server.duplicates()}"
    posted = {str(o["orderId"]) for o in server.posted_orders()}
    manual = {str(o["orderId"]) for o in server.all_orders("manual")}
    linked = [str(r["broker_order_id"]) for r in our_rows(home) if r["broker_order_id"]]
    assert len(linked) == len(set(linked)), "two rows of ours linked to one broker order"
    assert not set(linked) & manual, "a manual (foreign) order was adopted as ours"
    assert set(linked) == posted, f"posted {sorted(posted)} but our rows link {sorted(linked)}"
    positions = server.position_quantities()
    assert positions == net_fills(server.posted_orders())
    if reference is not None:
        assert positions == reference["positions"], (positions, reference["positions"])
    verify_audit(home)


def resolve_as_a_person(home, server: FakeSchwabServer, key: str, order_id,
                        reason: str = "test: the API order is ours") -> None:
    """docs/RUNBOOK.md "Order recovery halted for a person", steps 3 and 4: ``resolve KEY
    --order-id ID`` (audited), then ``resume``."""
    resolved = run_live(home, ["trading_execution.py", "resolve", key, "--order-id", str(order_id),
                               "--reason", reason], server)
    assert resolved.returncode == 0, resolved.stdout + resolved.stderr
    resumed = run_live(home, ["live_trading.py", "resume", "--reason", f"resolved {key}"], server)
    assert resumed.returncode == 0, resumed.stderr


def settle_lost_answer(home, setup, server: FakeSchwabServer, done):
    """A live run that found a lone candidate for an order whose answer was lost (Schwab carries
    no client id, so it could be ours or a person's twin) stops for a person: exit 1, ``ORDER
    AMBIGUOUS``, kill switch set, nothing more sent. The test knows which posted order is ours
    (the API posted it, no row links it): it resolves as a person would, resumes and reruns.
    Returns the last run (``done`` itself when nothing stopped)."""
    if done.returncode == 0 or "ORDER AMBIGUOUS" not in done.stderr:
        return done
    assert done.returncode == 1 and "could be ours or the same order entered by a person" in done.stderr
    assert kill_switch_value(home) is not None
    pending = [r for r in our_rows(home) if r["status"] == "SENDING"]
    linked = {str(r["broker_order_id"]) for r in our_rows(home) if r["broker_order_id"]}
    unlinked = [str(o["orderId"]) for o in server.posted_orders() if str(o["orderId"]) not in linked]
    assert len(pending) == 1 and len(unlinked) == 1, (pending, unlinked)
    resolve_as_a_person(home, server, pending[0]["client_key"], unlinked[0])
    return run_cycle_live(home, setup, server)


class Timed:
    """A started process whose stderr is read by a thread; ``saw(text)`` waits for a line."""

    def __init__(self, proc: subprocess.Popen):
        self.proc = proc
        self.started = time.monotonic()
        self.lines: list[tuple[float, str]] = []
        self.stdout = ""
        self._cond = threading.Condition()
        self._err = threading.Thread(target=self._read, daemon=True)
        self._out = threading.Thread(target=self._read_out, daemon=True)
        self._err.start()
        self._out.start()

    def _read(self):
        for line in self.proc.stderr:
            with self._cond:
                self.lines.append((time.monotonic() - self.started, line))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def _read_out(self):
        self.stdout = self.proc.stdout.read()

    def saw(self, text: str, timeout: float = 240.0) -> float | None:
        """Seconds from the start to the first stderr line containing ``text`` (None: never)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for at, line in self.lines:
                    if text in line:
                        return at
                if self.proc.poll() is not None and not self._err.is_alive():
                    return None
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(min(left, 0.5))

    def wait(self, timeout: float = 300.0) -> int:
        code = self.proc.wait(timeout)
        self._err.join(10)
        self._out.join(10)
        return code

    @property
    def stderr(self) -> str:
        return "".join(line for _, line in self.lines)


def start_paper_replay(home, day) -> subprocess.Popen:
    env = entry_env(home, {"PYTHONUNBUFFERED": "1", "FAKE_SCHWAB_URL": None})
    return subprocess.Popen([sys.executable, "live_trading.py", "--as-of", str(day)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def paper_positions(home) -> dict:
    conn = db(home, replay=True)
    try:
        return {r["symbol"]: r["quantity"] for r in conn.execute("SELECT * FROM paper_positions") if r["quantity"]}
    finally:
        conn.close()


def live_setup(home, trained, stops: bool = False) -> dict:
    """live_cycle_setup with the test process's environment pointed at ``home`` meanwhile.
    ``stops``: PROTECTIVE_STOPS on for every run in ``home`` (its settings.toml), and the gate's
    walk-forward recorded under that configuration (a strategy tunable is in its fingerprint)."""
    mp = env_context(home)
    try:
        if stops:
            (Path(home) / C.SETTINGS_FILE).write_text("PROTECTIVE_STOPS = true\n")
            mp.setattr(C, "PROTECTIVE_STOPS", True)
        return live_cycle_setup(home, trained)
    finally:
        mp.undo()


def assert_one_stop_per_position(home, server: FakeSchwabServer) -> None:
    """Every position at the fake Schwab has exactly ONE working STOP of ours, GTC, of its whole
    size on the closing side; no stop works for a flat symbol; each is a row of ours (kind stop)."""
    stops = server.open_orders("STOP")
    positions = server.position_quantities()
    held = {}
    for o in stops:
        leg = o["orderLegCollection"][0]
        sym = leg["instrument"]["symbol"]
        assert sym not in held, f"two working stops for {sym}: {stops}"
        held[sym] = (leg["instruction"], int(o["remainingQuantity"]))
        assert o["duration"] == "GOOD_TILL_CANCEL" and float(o["stopPrice"]) > 0
    want = {s: ("SELL" if q > 0 else "BUY_TO_COVER", abs(q)) for s, q in positions.items()}
    assert held == want, f"stops {held} for positions {positions}"
    rows = {str(r["broker_order_id"]): r for r in our_rows(home) if r["kind"] == "stop"}
    assert {str(o["orderId"]) for o in stops} <= set(rows), "a working stop that is not ours"


def live_reference(trained, parent: Path, stops: bool = False) -> dict:
    """An uninterrupted live cycle (its positions, timings, orders) in its own home; ``stops``:
    with PROTECTIVE_STOPS on (``orders`` then counts the stops too)."""
    home = fresh_home(trained, parent)
    setup = live_setup(home, trained, stops)
    server = live_server(setup)
    try:
        timed = Timed(start_cycle_live(home, setup, server))
        code = timed.wait()
        assert code == 0, timed.stderr[-3000:]
        start = timed.saw("cycle start", timeout=1)
        assert server.posted_orders(), "the reference cycle sent no order: pick another trade day"
        if stops:
            assert server.open_orders("STOP"), "the reference cycle placed no stop"
            assert_one_stop_per_position(home, server)
        return {"positions": server.position_quantities(), "orders": len(server.posted_orders()),
                "cycle_start_s": start, "duration_s": time.monotonic() - timed.started, "setup": setup}
    finally:
        server.stop()


def paper_reference(trained, parent: Path) -> dict:
    home = fresh_home(trained, parent)
    timed = Timed(start_paper_replay(home, trained["trade_day"]))
    code = timed.wait()
    assert code == 0, timed.stderr[-3000:]
    return {"positions": paper_positions(home), "cycle_start_s": timed.saw("cycle start", timeout=1),
            "duration_s": time.monotonic() - timed.started}
