"""The schedule: which jobs are due now, from the NYSE calendar and New York time.

Cron (any flavour, any machine time zone) starts ``./run_scheduled.sh`` every few minutes; this
module decides from exchange-calendars and America/New_York time which jobs are due this
session and runs each at most once per session (weekly jobs once per week):

==============  ==============================  ===========================================
job             due                             command
==============  ==============================  ===========================================
health_check    open - 60 min                   ./run_health_check.sh
trading_cycle   open + 5 min                    python live_trading.py
data_update     close + 15 min (13:00 closes    ./run_daily_data_update.sh
                too)
audit_rotate    close + 45 min                  python audit_logging.py rotate
log_retention   close + 50 min                  python log_retention.py
retrain         week's last close + 60 min      python train_model.py
walk_forward    week's last close + 75 min      ./run_backtest.sh --walk-forward
sentiment       close - 30 min, only with       python reddit_sentiment.py collect
                REDDIT_SENTIMENT or
                REDDIT_COLLECT on
==============  ==============================  ===========================================

(offsets and catch-up windows: constants.py, "schedule and alerts"). A job whose time has come
runs if its catch-up window has not passed (downtime); after that it is recorded as missed and
an alert is sent, as for a job that fails (non-zero exit or timeout). A failed trading cycle is
run again (``CYCLE_RERUNS`` times at most, each ``CYCLE_RERUN_SPACING_MIN`` after the failed run
ended, only while its window is open, never after exit 2 or 3: a configuration error or the
go-live gate, which a rerun cannot fix); when the scheduler gives up it sends the
``cycle_gave_up`` alert. A rerun is an ordinary cycle: the exactly-once order machinery
(``order_recovery.py``) finds the orders of the failed run and sends none twice. Runs are
recorded in the SQLite table ``schedule_runs`` (one row per job and session or week: the
at-most-once rule; ``attempts`` counts the reruns, ``gave_up_at`` says no rerun follows).
One scheduler run at a time holds ``state/locks/scheduler.lock``, so two jobs never overlap;
a run that finds the lock taken does nothing.

Command line::

    python scheduler.py                       # run the jobs due now (what cron runs)
    python scheduler.py --dry-run [--now T]   # DUE / not due, job, why; changes nothing
    python scheduler.py status                # last run of every job, next due time
"""
from __future__ import annotations

import argparse
import fcntl
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import pandas as pd

import alerts
import clock
import config
import constants as C
import logging_setup
import market_calendar
import state_db
import tunables
from errors import UserFacingError, install_excepthook

log = logging.getLogger("scheduler")
NY = ZoneInfo(market_calendar.TIMEZONE)
FIRST_RUN_KEY = "scheduler_first_run"
WEEKLY_NOTE = " (after the week's last session)"


class SchedulerError(UserFacingError):
    """A scheduler argument or state a person has to fix."""


@dataclass(frozen=True)
class Job:
    name: str
    command: tuple[str, ...]    # from the project directory; "python" is this interpreter
    anchor: str                 # "open" or "close" of the session
    offset_min: float           # minutes after the anchor (negative: before)
    catchup_min: float          # the job may still start this long after it was due
    weekly: bool = False        # only after the last session of an ISO week, once per week
    timeout_min: float = field(default_factory=lambda: C.JOB_TIMEOUT_MIN)
    failed_alert: str = "scheduled_job_failed"   # alerts.ALERT_KINDS key when it fails
    missed_alert: str = "scheduled_job_failed"   # ... when its window passes unrun
    reruns: int = 0             # a failed run is run again at most this often, within its window
    rerun_spacing_min: float = 0.0   # ... each this long after the failed run ended
    final_codes: tuple[int, ...] = ()   # exit codes a rerun cannot fix: never rerun
    gave_up_alert: str = ""     # alerts.ALERT_KINDS key when a rerun job fails for good (default failed_alert)


TRADING_CYCLE = "trading_cycle"            # the job that trades: named first wherever jobs are listed
REDDIT_JOB = "sentiment"            # only when REDDIT_SENTIMENT or REDDIT_COLLECT is on


def _jobs() -> tuple[Job, ...]:
    """The schedule from the effective tunables (read at each use, so settings.toml applies)."""
    return (
        Job("health_check", ("./run_health_check.sh",), "open", -C.HEALTH_CHECK_BEFORE_OPEN_MIN,
            C.HEALTH_CHECK_CATCHUP_MIN, failed_alert="health_check_failed"),
        Job(TRADING_CYCLE, ("python", "live_trading.py"), "open", C.CYCLE_AFTER_OPEN_MIN,
            C.CYCLE_CATCHUP_MIN, failed_alert="cycle_failed", missed_alert="cycle_missed",
            reruns=C.CYCLE_RERUNS, rerun_spacing_min=C.CYCLE_RERUN_SPACING_MIN,
            final_codes=(2, 3),                 # live_trading.py: configuration error, go-live gate refused
            gave_up_alert="cycle_gave_up"),
        Job("data_update", ("./run_daily_data_update.sh",), "close", C.DATA_UPDATE_AFTER_CLOSE_MIN,
            C.AFTER_CLOSE_CATCHUP_MIN, failed_alert="data_update_failed",
            missed_alert="data_update_missed"),
        Job("audit_rotate", ("python", "audit_logging.py", "rotate"), "close",
            C.AUDIT_ROTATE_AFTER_CLOSE_MIN, C.AFTER_CLOSE_CATCHUP_MIN),
        Job("log_retention", ("python", "log_retention.py"), "close",
            C.LOG_RETENTION_AFTER_CLOSE_MIN, C.AFTER_CLOSE_CATCHUP_MIN),
        Job("retrain", ("python", "train_model.py"), "close", C.RETRAIN_AFTER_CLOSE_MIN,
            C.WEEKLY_CATCHUP_MIN, weekly=True, timeout_min=C.LONG_JOB_TIMEOUT_MIN),
        Job("walk_forward", ("./run_backtest.sh", "--walk-forward"), "close",
            C.WALK_FORWARD_AFTER_CLOSE_MIN, C.WEEKLY_CATCHUP_MIN, weekly=True,
            timeout_min=C.LONG_JOB_TIMEOUT_MIN),
    ) + ((Job(REDDIT_JOB, ("python", "reddit_sentiment.py", "collect"), "close",
              -C.REDDIT_COLLECT_BEFORE_CLOSE_MIN, C.REDDIT_COLLECT_CATCHUP_MIN),)
         if C.REDDIT_SENTIMENT or C.REDDIT_COLLECT else ())


class _Schedule(Sequence):
    """``JOBS``: every job of the schedule, built from constants.py at each use."""

    def __getitem__(self, index):
        return _jobs()[index]

    def __iter__(self):
        return iter(_jobs())

    def __len__(self) -> int:
        return len(_jobs())


JOBS: Sequence[Job] = _Schedule()


_SCHEMA = ["""
CREATE TABLE IF NOT EXISTS schedule_runs (
    job TEXT NOT NULL,
    period TEXT NOT NULL,          -- session date YYYY-MM-DD, or YYYY-Www for weekly jobs
    due_at TEXT NOT NULL,          -- UTC ISO time the job became due
    started_at TEXT,               -- UTC ISO
    finished_at TEXT,              -- UTC ISO
    status TEXT NOT NULL,          -- running | ok | failed | missed | interrupted
    exit_code INTEGER,
    duration_s REAL,
    detail TEXT,
    attempts INTEGER NOT NULL DEFAULT 1,   -- runs of this period: 1 + reruns
    gave_up_at TEXT,               -- UTC ISO: a failed run that is not run again (alerted)
    PRIMARY KEY (job, period)
)"""]
# columns newer than the table: (name, declaration, statement run once when it is added)
_ADDED_COLUMNS = [
    ("attempts", "INTEGER NOT NULL DEFAULT 1", None),
    # failures recorded before reruns existed were final: they are not run again nor alerted again
    ("gave_up_at", "TEXT", "UPDATE schedule_runs SET gave_up_at = COALESCE(finished_at, due_at) "
                           "WHERE status = 'failed'"),
]


def ensure_schema(conn) -> None:
    """The table, and the columns newer than an existing database (one transaction)."""
    state_db.ensure_schema(conn, _SCHEMA)
    with state_db.transaction(conn):
        have = {r[1] for r in conn.execute("PRAGMA table_info(schedule_runs)")}
        for column, decl, then in _ADDED_COLUMNS:
            if column not in have:
                conn.execute(f"ALTER TABLE schedule_runs ADD COLUMN {column} {decl}")
                if then:
                    conn.execute(then)


# --------------------------------------------------------------------------- time and slots
@dataclass(frozen=True)
class Slot:
    """One occasion of a job: the session (or week) it belongs to and its window."""
    job: Job
    session: pd.Timestamp       # the NYSE session (tz-naive date)
    period: str                 # at-most-once key
    due_at: datetime            # UTC
    until: datetime             # UTC: last moment it may start (catch-up window end)
    anchor_at: datetime         # UTC: the open or close it hangs on


def ny(dt: datetime) -> str:
    return dt.astimezone(NY).strftime("%Y-%m-%d %H:%M %Z")


def parse_now(text: str | None) -> datetime:
    """``--now``: an ISO time with an offset (2026-11-27T09:40-05:00); default the clock."""
    if not text:
        return clock.now()
    try:
        value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise SchedulerError(f"--now {text!r} is not an ISO time: use e.g. "
                             f"2026-11-27T09:40-05:00") from None
    if value.tzinfo is None:
        raise SchedulerError(f"--now {text!r} has no UTC offset, so its moment is ambiguous: "
                             f"add one, e.g. {text}-05:00 (New York winter) or {text}Z")
    return value.astimezone(timezone.utc)


def _week(session: pd.Timestamp) -> str:
    year, week, _ = session.isocalendar()
    return f"{year}-W{week:02d}"


def _slot(job: Job, session: pd.Timestamp) -> Slot | None:
    cal = market_calendar.calendar()
    if job.weekly and _week(market_calendar.next_session(session)) == _week(session):
        return None                                   # not the week's last session
    anchor = cal.session_open(session) if job.anchor == "open" else cal.session_close(session)
    anchor_at = anchor.to_pydatetime().astimezone(timezone.utc)
    due_at = anchor_at + timedelta(minutes=job.offset_min)
    return Slot(job, session, _week(session) if job.weekly else session.strftime("%Y-%m-%d"),
                due_at, due_at + timedelta(minutes=job.catchup_min), anchor_at)


def slots(job: Job, now: datetime, lookback_days: float | None = None):
    """(past, upcoming): the job's slots due from ``lookback_days`` (default
    SCHEDULE_MISSED_LOOKBACK_DAYS) before ``now`` up to ``now``, oldest first, and the next one
    after ``now`` (or None)."""
    lookback_days = C.SCHEDULE_MISSED_LOOKBACK_DAYS if lookback_days is None else lookback_days
    day = pd.Timestamp(now.astimezone(NY).date())
    start = day - pd.Timedelta(days=lookback_days + 2)
    past, upcoming = [], None
    for session in market_calendar.sessions(start, day + pd.Timedelta(days=14)):
        slot = _slot(job, session)
        if slot is None:
            continue
        if slot.due_at <= now:
            if slot.due_at >= now - timedelta(days=lookback_days):
                past.append(slot)
        elif upcoming is None:
            upcoming = slot
    return past, upcoming


# --------------------------------------------------------------------------- decisions
@dataclass
class Decision:
    job: Job
    due: bool
    why: str
    slot: Slot | None = None                 # the slot to run when due
    missed: list | None = None               # slots whose window passed unrun (alert)
    attempt: int = 1                         # the run of the slot this is (2: its first rerun)


def _runs(conn) -> dict:
    if conn is None:
        return {}
    try:
        rows = conn.execute("SELECT * FROM schedule_runs").fetchall()
    except sqlite3.Error:
        return {}
    return {(r["job"], r["period"]): dict(r) for r in rows}


def rerun_at(job: Job, slot: Slot, row: dict) -> datetime | None:
    """When the failed run ``row`` of ``slot`` is run again: ``rerun_spacing_min`` after it
    ended, if ``job`` has reruns left, its exit code is not one of ``final_codes`` and one
    scheduler interval is left before the window ends; None: it is not run again."""
    if (row.get("status") != "failed" or row.get("gave_up_at") or not row.get("finished_at")
            or (row.get("attempts") or 1) > job.reruns or row.get("exit_code") in job.final_codes):
        return None
    at = datetime.fromisoformat(row["finished_at"]) + timedelta(minutes=job.rerun_spacing_min)
    if at + timedelta(minutes=C.SCHEDULE_INTERVAL_MIN) > slot.until:
        return None
    return at


def _window(slot: Slot) -> str:
    anchor = f"{slot.job.anchor} {slot.anchor_at.astimezone(NY):%H:%M}"
    return (f"session {slot.session:%Y-%m-%d} ({anchor}): due {slot.due_at.astimezone(NY):%H:%M}, "
            f"may start until {ny(slot.until)}")


def evaluate(now: datetime, conn=None, first_run: datetime | None = None,
             jobs=JOBS) -> list[Decision]:
    """What each job should do at ``now`` given the recorded runs (``conn`` may be None)."""
    runs = _runs(conn)
    first_run = first_run or now
    today = pd.Timestamp(now.astimezone(NY).date())
    no_session = "" if market_calendar.is_session(today) else \
        f"{today:%a %Y-%m-%d} is not an NYSE session; "
    decisions = []
    for job in jobs:
        past, upcoming = slots(job, now)
        nxt = f"next: {_window(upcoming)}" if upcoming else "no upcoming session in range"
        missed = [s for s in past if s.until <= now and (job.name, s.period) not in runs
                  and s.due_at >= first_run]
        current = past[-1] if past else None
        if current is not None and now < current.until:
            done = runs.get((job.name, current.period))
            if done is None:
                decisions.append(Decision(job, True, _window(current), current, missed))
                continue
            when = done["finished_at"] or done["started_at"] or done["due_at"]
            again = rerun_at(job, current, done)
            attempt = (done.get("attempts") or 1) + 1
            rerun = (f"rerun {attempt - 1} of {job.reruns} after exit {done['exit_code']} at "
                     f"{ny(datetime.fromisoformat(when))}")
            if again is not None and now >= again:
                decisions.append(Decision(job, True, f"{rerun}; {_window(current)}", current, missed,
                                          attempt))
                continue
            if again is not None:
                why = f"{rerun}: due {ny(again)}; {_window(current)}"
            else:
                why = (f"already ran for {current.period}: {done['status']} (exit "
                       f"{done['exit_code']}) at {ny(datetime.fromisoformat(when))}"
                       f"{', run ' + str(attempt - 1) + ' times' if attempt > 2 else ''}; {nxt}")
        elif current is not None and (job.name, current.period) not in runs:
            before = " (before the scheduler's first run)" if current.due_at < first_run else ""
            why = f"missed {current.period}: window ended {ny(current.until)}{before}; {nxt}"
        else:
            why = nxt
        decisions.append(Decision(job, False, no_session + why, None, missed))
    return decisions


def format_decisions(decisions) -> str:
    return "\n".join(f"{'DUE' if d.due else 'not due':<8}{d.job.name:<15}{d.why}"
                     for d in decisions)


# --------------------------------------------------------------------------- running
def readonly_conn():
    path = config.path(C.STATE_DB_FILE)
    if not path.exists():
        return None
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30.0)
        conn.row_factory = sqlite3.Row
        return conn
    except sqlite3.Error:
        return None


def first_run_at(conn) -> datetime | None:
    try:
        value = state_db.kv_get(conn, FIRST_RUN_KEY) if conn is not None else None
    except sqlite3.Error:
        return None
    return datetime.fromisoformat(value) if value else None


class Lock:
    """``state/locks/scheduler.lock`` (fcntl.flock, released when the process ends)."""

    def __init__(self, path: Path | None = None):
        self.path = path or config.ensure_parent(config.path(C.SCHEDULER_LOCK_FILE))
        self.fd = None

    def acquire(self) -> bool:
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            self.fd = None
            return False
        os.ftruncate(self.fd, 0)
        os.write(self.fd, f"{os.getpid()}\n".encode())
        return True

    def release(self) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


def lock_held() -> bool:
    path = config.path(C.SCHEDULER_LOCK_FILE)
    if not path.exists():
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def _argv(command) -> list[str]:
    if command[0] == "python":
        return [sys.executable, *command[1:]]
    if command[0].startswith("./"):
        return [str(config.PROJECT_DIR / command[0][2:]), *command[1:]]
    return list(command)


def run_command(job: Job) -> tuple[int, float, str]:
    """Run the job's command from the project directory; (exit code, seconds, detail).
    Its output goes to ours (cron's log). A timeout kills its whole process group."""
    argv = _argv(job.command)
    log.info("Starting %s: %s", job.name, " ".join(job.command))
    started = time.monotonic()
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        proc = subprocess.Popen(argv, cwd=config.PROJECT_DIR, start_new_session=True)
    except OSError as exc:
        return 127, time.monotonic() - started, f"cannot start: {exc.strerror}"
    try:
        code = proc.wait(timeout=job.timeout_min * 60)
        detail = ""
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        code, detail = -1, f"killed after the {job.timeout_min:g} min timeout"
    return code, time.monotonic() - started, detail


def _alert_missed(conn, job: Job, missed: list, now: datetime) -> None:
    with state_db.transaction(conn):
        for slot in missed:
            conn.execute("INSERT OR IGNORE INTO schedule_runs(job, period, due_at, status, detail) "
                         "VALUES (?, ?, ?, 'missed', ?)",
                         (job.name, slot.period, slot.due_at.isoformat(),
                          f"window {ny(slot.due_at)} .. {ny(slot.until)} passed unrun"))
    periods = ", ".join(s.period for s in missed)
    log.warning("%s missed its window for %s (the scheduler did not run then)", job.name, periods)
    alerts.send_alert(job.missed_alert,
                      f"{job.name} did not run for {periods}: its window "
                      f"({ny(missed[-1].due_at)} .. {ny(missed[-1].until)}) passed while the "
                      f"scheduler was not running (machine down, cron not installed, or the lock "
                      f"held by a long job). Noticed at {ny(now)}.",
                      key=f"{job.name}:{missed[-1].period}")


def _mark_interrupted(conn) -> None:
    """Rows left 'running' by a scheduler that died (we hold the lock, so none is running)."""
    rows = conn.execute("SELECT job, period FROM schedule_runs WHERE status = 'running'").fetchall()
    for row in rows:
        with state_db.transaction(conn):
            conn.execute("UPDATE schedule_runs SET status = 'interrupted', finished_at = ?, "
                         "detail = 'the scheduler stopped while it ran' WHERE job = ? AND period = ?",
                         (state_db.utcnow(), row["job"], row["period"]))
        job = next((j for j in JOBS if j.name == row["job"]), None)
        log.warning("%s for %s was interrupted (the scheduler stopped while it ran)",
                    row["job"], row["period"])
        alerts.send_alert(job.failed_alert if job else "scheduled_job_failed",
                          f"{row['job']} for {row['period']} was interrupted: the scheduler "
                          f"stopped while it ran (reboot, kill, out of memory). Run it by hand "
                          f"if it is still needed.", key=f"{row['job']}:{row['period']}")


def run_due(now: datetime | None = None, jobs=JOBS) -> int:
    """Run every job due at ``now`` (default: the clock), one after another, under the lock.
    Returns 0 when every job run succeeded (or none was due), 1 when one failed."""
    fixed_now = now is not None
    lock = Lock()
    if not lock.acquire():
        log.info("Another scheduler run holds %s (a job is running); nothing to do",
                 C.SCHEDULER_LOCK_FILE)
        return 0
    conn = state_db.connect()
    try:
        ensure_schema(conn)
        now = now or clock.now()
        first_run = first_run_at(conn)
        if first_run is None:
            first_run = now
            with state_db.transaction(conn):
                state_db.kv_set(conn, FIRST_RUN_KEY, now.isoformat(timespec="seconds"))
        _mark_interrupted(conn)
        _give_up_passed(conn, jobs, now)
        decisions = evaluate(now, conn, first_run, jobs)
        for d in decisions:
            if d.missed:
                _alert_missed(conn, d.job, d.missed, now)
        failures = 0
        due = sorted(((d.job, d.slot, d.attempt) for d in decisions if d.due and d.slot is not None),
                     key=lambda due: due[1].due_at)
        for job, slot, attempt in due:
            current = now if fixed_now else clock.now()
            if current >= slot.until:                  # an earlier job ran past this window
                if attempt > 1:
                    _give_up(conn, job, slot.period, f"its window ended {ny(slot.until)} before the rerun")
                else:
                    _alert_missed(conn, job, [slot], current)
                continue
            failures += _run_slot(conn, job, slot, attempt, current)
        return 1 if failures else 0
    finally:
        conn.close()
        lock.release()


def _run_slot(conn, job: Job, slot: Slot, attempt: int = 1, now: datetime | None = None) -> int:
    """Claim ``slot`` (at most once per period, across processes; a rerun claims the failed row
    of the run before it), run ``job``, record how it ended and, when it is not run again, alert
    on failure; 1 when it failed, 0 when it succeeded or another run has it. ``now``: the
    scheduler's clock at the start (the times recorded are on it; default ``clock.now()``)."""
    now = now or clock.now()
    started_at = now.astimezone(timezone.utc).isoformat(timespec="seconds")
    with state_db.transaction(conn):
        if attempt == 1:
            claimed = conn.execute(
                "INSERT OR IGNORE INTO schedule_runs(job, period, due_at, started_at, status) "
                "VALUES (?, ?, ?, ?, 'running')",
                (job.name, slot.period, slot.due_at.isoformat(), started_at)
            ).rowcount
        else:
            claimed = conn.execute(
                "UPDATE schedule_runs SET status = 'running', attempts = ?, started_at = ?, finished_at = NULL,"
                " exit_code = NULL, duration_s = NULL, detail = NULL WHERE job = ? AND period = ? AND"
                " status = 'failed' AND attempts = ? AND gave_up_at IS NULL",
                (attempt, started_at, job.name, slot.period, attempt - 1)).rowcount
    if not claimed:
        return 0
    if attempt > 1:
        log.warning("%s for %s: rerun %d of %d after the failed run", job.name, slot.period, attempt - 1,
                    job.reruns)
    code, seconds, detail = run_command(job)
    status = "ok" if code == 0 else "failed"
    with state_db.transaction(conn):
        conn.execute("UPDATE schedule_runs SET finished_at = ?, status = ?, exit_code = ?, "
                     "duration_s = ?, detail = ? WHERE job = ? AND period = ?",
                     ((now + timedelta(seconds=seconds)).astimezone(timezone.utc).isoformat(timespec="seconds"),
                      status, code, round(seconds, 3), detail, job.name, slot.period))
    if code == 0:
        log.info("%s for %s done in %.1f s", job.name, slot.period, seconds)
        return 0
    log.error("%s for %s failed: exit %s after %.1f s %s", job.name, slot.period, code, seconds, detail)
    row = dict(conn.execute("SELECT * FROM schedule_runs WHERE job = ? AND period = ?",
                            (job.name, slot.period)).fetchone())
    again = rerun_at(job, slot, row)
    if again is not None:
        log.warning("%s for %s will be run again at %s or the next scheduler run after (rerun %d of %d; "
                    "window until %s)", job.name, slot.period, ny(again), attempt, job.reruns, ny(slot.until))
        return 1
    if job.reruns:
        why = (f"exit {code} is not one a rerun can fix" if code in job.final_codes else
               f"no rerun left ({job.reruns})" if attempt > job.reruns else
               f"no time for a rerun before its window ends {ny(slot.until)}")
        _give_up(conn, job, slot.period, why)
        return 1
    _mark_given_up(conn, job.name, slot.period)
    alerts.send_alert(job.failed_alert,
                      f"{job.name} for {slot.period} failed: `{' '.join(job.command)}` "
                      f"exited {code} after {seconds:.0f} s{'; ' + detail if detail else ''}. "
                      f"Its output is in logs/cron_trading.log.",
                      key=f"{job.name}:{slot.period}")
    return 1


def _mark_given_up(conn, job: str, period: str) -> bool:
    """Record that the failed run of ``job`` for ``period`` is not run again; False when it
    already was."""
    with state_db.transaction(conn):
        return conn.execute("UPDATE schedule_runs SET gave_up_at = ? WHERE job = ? AND period = ? AND "
                            "status = 'failed' AND gave_up_at IS NULL",
                            (state_db.utcnow(), job, period)).rowcount > 0


def _give_up(conn, job: Job, period: str, why: str) -> None:
    """A job with reruns failed for good this period: recorded once, alerted once."""
    if not _mark_given_up(conn, job.name, period):
        return
    row = conn.execute("SELECT * FROM schedule_runs WHERE job = ? AND period = ?", (job.name, period)).fetchone()
    runs, code = row["attempts"], row["exit_code"]
    log.error("%s for %s: giving up after %d run%s (last exit %s): %s", job.name, period, runs,
              "s" if runs != 1 else "", code, why)
    alerts.send_alert(job.gave_up_alert or job.failed_alert,
                      f"{job.name} for {period} failed {runs} time{'s' if runs != 1 else ''} "
                      f"(last: `{' '.join(job.command)}` exited {code}) and is not run again: {why}. "
                      f"Its output is in logs/cron_trading.log.", key=f"{job.name}:{period}")


def _give_up_passed(conn, jobs, now: datetime) -> None:
    """Failed runs waiting for a rerun whose window ended meanwhile (the scheduler did not run in
    time): given up, alerted."""
    for job in jobs:
        if not job.reruns:
            continue
        rows = conn.execute("SELECT period, due_at FROM schedule_runs WHERE job = ? AND status = 'failed' "
                            "AND gave_up_at IS NULL", (job.name,)).fetchall()
        for row in rows:
            until = datetime.fromisoformat(row["due_at"]) + timedelta(minutes=job.catchup_min)
            if now >= until:
                _give_up(conn, job, row["period"], f"its window ended {ny(until)} before the rerun")


def last_runs() -> dict[str, dict]:
    """For the health check: {job: its latest schedule_runs row (dict)}; read-only."""
    conn = readonly_conn()
    try:
        runs = _runs(conn)
    finally:
        if conn is not None:
            conn.close()
    latest: dict[str, dict] = {}
    for (job, _), row in sorted(runs.items(), key=lambda kv: kv[1]["due_at"]):
        latest[job] = row
    return latest


def status_lines(now: datetime | None = None) -> list[str]:
    now = now or clock.now()
    conn = readonly_conn()
    try:
        runs = _runs(conn)
        first = first_run_at(conn)
    finally:
        if conn is not None:
            conn.close()
    lines = [f"now: {ny(now)}; scheduler first run: {ny(first) if first else 'never'}; "
             f"lock: {'HELD (a job is running)' if lock_held() else 'free'}",
             f"{'job':<15}{'period':<12}{'status':<12}{'exit':>5}{'seconds':>9}  finished (New York)"]
    for job in JOBS:
        mine = sorted((r for (name, _), r in runs.items() if name == job.name),
                      key=lambda r: r["due_at"])
        if not mine:
            lines.append(f"{job.name:<15}{'-':<12}{'never run':<12}")
            continue
        r = mine[-1]
        finished = ny(datetime.fromisoformat(r["finished_at"])) if r["finished_at"] else "-"
        seconds = f"{r['duration_s']:.1f}" if r["duration_s"] is not None else "-"
        exit_code = "-" if r["exit_code"] is None else str(r["exit_code"])
        n_runs = r.get("attempts") or 1
        note = "  ".join(x for x in (r["detail"], f"{n_runs} runs" if n_runs > 1 else "",
                                     "gave up" if r.get("gave_up_at") and r["status"] == "failed" else "") if x)
        lines.append(f"{job.name:<15}{r['period']:<12}{r['status']:<12}{exit_code:>5}"
                     f"{seconds:>9}  {finished}{'  ' + note if note else ''}")
    return lines


# --------------------------------------------------------------------------- command line
def main(argv=None) -> int:
    install_excepthook()
    parser = argparse.ArgumentParser(
        prog="scheduler.py", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run the jobs due now by the NYSE calendar in New York time (what cron runs "
                    "through ./run_scheduled.sh), at most once per session, one at a time.",
        epilog="\n".join(f"  {j.name:<14} {j.anchor} {j.offset_min:+g} min"
                         f"{WEEKLY_NOTE if j.weekly else ''}: {' '.join(j.command)}"
                         for j in JOBS))
    parser.add_argument("command", nargs="?", choices=("run", "status"), default="run",
                        help="run (default): run the due jobs; status: last runs")
    parser.add_argument("--dry-run", action="store_true",
                        help="print DUE / not due, the job and why for every job; change nothing")
    parser.add_argument("--now", metavar="ISO_TIME",
                        help="pretend it is this moment (with an offset: 2026-11-27T09:40-05:00)")
    args = parser.parse_args(argv)
    config.trading_mode(), config.data_source()      # a bad TRADING_MODE stops us here, loudly
    tunables.apply()                                 # ... and a bad setting (settings.toml)
    now = parse_now(args.now) if args.now else None
    if args.command == "status":
        print("\n".join(status_lines(now)))
        return 0
    if args.dry_run:
        now = now or clock.now()
        conn = readonly_conn()
        try:
            decisions = evaluate(now, conn, first_run_at(conn))
        finally:
            if conn is not None:
                conn.close()
        print(f"# {ny(now)} (machine time zone: {time.strftime('%Z')})")
        print(format_decisions(decisions))
        return 0
    config.require_home()       # cron on a mistyped TRADING_HOME must not build a new home and trade it
    logging_setup.setup_logging("scheduler")
    return run_due(now)


if __name__ == "__main__":
    sys.exit(main())
