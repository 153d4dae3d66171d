"""``kill -9`` at a random moment, both brokers: a cycle process is killed (SIGKILL) at a random
time after it logs ``cycle start``, then rerun to completion in a new process. After each trial:
0 duplicate orders, the audit trail verifies (``python audit_logging.py verify``), our records
agree with the broker, positions equal the sum of the fills and the uninterrupted run's.

* paper: ``python live_trading.py --as-of DAY`` (a replay, in the throwaway replay account);
* Schwab: a live cycle through schwab-py's real client against the fake Schwab.

``KILL9_TRIALS`` trials per broker (default 2; ``make faults`` runs 30), delays drawn from
``random.Random(KILL9_SEED)`` (default 20251006) so a failing trial can be replayed."""
from __future__ import annotations

import os
import random
import subprocess

import pytest

from crash_harness import (FULL, Timed, assert_live_exactly_once, assert_one_stop_per_position, fresh_home,
                           live_reference, live_server, live_setup, our_rows, paper_positions, paper_reference,
                           run_cycle_live, settle_lost_answer, start_cycle_live, start_paper_replay)
from test_live_trading import assert_consistent

TRIALS = int(os.environ.get("KILL9_TRIALS", "2"))
SEED = int(os.environ.get("KILL9_SEED", "20251006"))


def _delays(reference: dict, salt: str) -> list[float]:
    """Seconds after ``cycle start`` at which each trial kills: spread over the rest of an
    uninterrupted cycle (and a little past it: some trials kill a process that already ended)."""
    rng = random.Random(f"{SEED}-{salt}")
    span = max(1.0, reference["duration_s"] - reference["cycle_start_s"])
    return [rng.uniform(0.0, span * 1.05) for _ in range(TRIALS)]


def _kill_at(timed: Timed, delay: float) -> bool:
    """SIGKILL ``delay`` s after the process logged ``cycle start``; True when it was still running."""
    assert timed.saw("cycle start") is not None, timed.stderr[-3000:]
    try:
        timed.wait(delay)
        return False                            # it finished first
    except subprocess.TimeoutExpired:
        pass
    timed.proc.kill()
    timed.wait(30)
    return True


@pytest.fixture(scope="module")
def paper_ref(trained, tmp_path_factory):
    return paper_reference(trained, tmp_path_factory.mktemp("paper-reference") / "home")


@pytest.fixture(scope="module")
def live_ref(trained, tmp_path_factory):
    return live_reference(trained, tmp_path_factory.mktemp("live-reference") / "home")


def test_paper_random_kill9(trained, tmp_path, paper_ref):
    killed = 0
    for n, delay in enumerate(_delays(paper_ref, "paper")):
        home = fresh_home(trained, tmp_path / f"trial{n}")
        killed += _kill_at(Timed(start_paper_replay(home, trained["trade_day"])), delay)
        rerun = Timed(start_paper_replay(home, trained["trade_day"]))
        assert rerun.wait() == 0, f"trial {n} (kill at +{delay:.2f} s): {rerun.stderr[-3000:]}"
        assert_consistent(home)                       # once each, records = broker, positions = fills
        assert paper_positions(home) == paper_ref["positions"], f"trial {n} (kill at +{delay:.2f} s)"
    print(f"paper kill -9: {TRIALS} trials, {killed} killed mid-run")


def test_schwab_random_kill9(trained, tmp_path, live_ref):
    killed = 0
    for n, delay in enumerate(_delays(live_ref, "schwab")):
        home = fresh_home(trained, tmp_path / f"trial{n}")
        setup = live_setup(home, trained)
        server = live_server(setup, skew=random.Random(f"{SEED}-{n}").choice([-30, -2, 0, 0.5, 1, 2, 30]))
        try:
            killed += _kill_at(Timed(start_cycle_live(home, setup, server)), delay)
            server.release_post.set()
            rerun = settle_lost_answer(home, setup, server, run_cycle_live(home, setup, server))
            assert rerun.returncode == 0, f"trial {n} (kill at +{delay:.2f} s): {rerun.stderr[-3000:]}"
            assert_live_exactly_once(home, server, live_ref)
            assert all(r["status"] == "FILLED" for r in our_rows(home))
        finally:
            server.stop()
    print(f"Schwab kill -9: {TRIALS} trials, {killed} killed mid-run")


@pytest.fixture(scope="module")
def live_stops_ref(trained, tmp_path_factory):
    return live_reference(trained, tmp_path_factory.mktemp("live-stops-reference") / "home", stops=True)


def test_schwab_random_kill9_with_protective_stops(trained, tmp_path, live_stops_ref):
    """PROTECTIVE_STOPS on: killed at a random moment (the entries, their fills, the stops), rerun:
    no order twice, positions the uninterrupted run's, and exactly one working stop of its size
    per position. ``KILL9_TRIALS`` trials under ``make faults``, one in the normal suite."""
    killed = 0
    trials = _delays(live_stops_ref, "schwab-stops")[:None if FULL else 1]
    for n, delay in enumerate(trials):
        home = fresh_home(trained, tmp_path / f"trial{n}")
        setup = live_setup(home, trained, stops=True)
        server = live_server(setup, skew=random.Random(f"{SEED}-stops-{n}").choice([-30, -2, 0, 0.5, 1, 2, 30]))
        try:
            killed += _kill_at(Timed(start_cycle_live(home, setup, server)), delay)
            server.release_post.set()
            rerun = settle_lost_answer(home, setup, server, run_cycle_live(home, setup, server))
            assert rerun.returncode == 0, f"trial {n} (kill at +{delay:.2f} s): {rerun.stderr[-3000:]}"
            assert_live_exactly_once(home, server, live_stops_ref)
            assert_one_stop_per_position(home, server)
            assert all(r["status"] == ("SUBMITTED" if r["kind"] == "stop" else "FILLED") for r in our_rows(home))
        finally:
            server.stop()
    print(f"Schwab kill -9 with stops: {len(trials)} trials, {killed} killed mid-run")
