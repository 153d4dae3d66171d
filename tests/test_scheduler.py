"""The schedule follows the NYSE day in New York time whatever the machine's time zone: the
dry run says what is due and why; real runs happen at most once per session, catch up within a
window, never overlap, and a failed or missed job raises an alert (sent to a local webhook)."""
import sqlite3
import subprocess
import sys
import time
from datetime import datetime

import pytest

import alerts
import config
import constants as C
import scheduler
from alert_servers import WebhookServer
from conftest import ROOT, entry_env, run_entry
from scheduler import Job


def dry_run(now, home, tz="UTC"):
    done = run_entry(["scheduler.py", "--dry-run", "--now", now], home, {"TZ": tz})
    assert done.returncode == 0, done.stderr
    lines = [l for l in done.stdout.splitlines() if not l.startswith("#")]
    assert len(lines) == len(scheduler.JOBS)
    assert all(l.startswith("DUE ") or l.startswith("not due ") for l in lines), lines
    return {l.split()[1] if l.startswith("DUE") else l.split()[2]: l for l in lines}


def decide(now):
    """The same decisions in-process (no history): {job: (due, why)}."""
    return {d.job.name: (d.due, d.why) for d in scheduler.evaluate(scheduler.parse_now(now))}


@pytest.mark.parametrize("tz", ["UTC", "Asia/Tokyo"])
def test_done_when_cycle_holiday_and_early_close_in_utc_and_tokyo(trading_home, tz):
    """The issue's "done when", through the CLI with the machine's zone set to UTC / Tokyo."""
    lines = dry_run("2026-11-24T09:40-05:00", trading_home, tz)
    assert lines["trading_cycle"].startswith("DUE"), lines
    assert "open 09:30" in lines["trading_cycle"] and lines["data_update"].startswith("not due")
    holiday = dry_run("2026-11-26T09:40-05:00", trading_home, tz)       # Thanksgiving
    assert not [l for l in holiday.values() if l.startswith("DUE")], holiday
    assert "Thu 2026-11-26 is not an NYSE session" in holiday["trading_cycle"]
    after = dry_run("2026-11-27T13:20-05:00", trading_home, tz)         # 13:00 early close
    assert after["data_update"].startswith("DUE") and "close 13:00" in after["data_update"]
    assert not (trading_home / "state").exists() and not (trading_home / "logs").exists()


def test_cycle_due_after_the_open_in_any_offset():
    for now in ("2026-11-24T09:40-05:00", "2026-11-24T14:40Z", "2026-11-24T23:40+09:00",
                "2026-07-14T09:40-04:00"):                           # winter, summer time
        due = decide(now)
        assert due["trading_cycle"][0], (now, due)
        assert not due["data_update"][0]
    early = decide("2026-11-24T09:20-05:00")                            # before the open
    assert not early["trading_cycle"][0] and early["health_check"][0]
    late = decide("2026-11-24T11:40-05:00")                             # catch-up window over
    assert not late["trading_cycle"][0] and "window ended 2026-11-24 11:35 EST" in late["trading_cycle"][1]


@pytest.mark.parametrize("now", ["2026-11-26T09:40-05:00", "2026-11-26T17:00-05:00",
                                 "2026-12-25T09:40-05:00", "2026-11-28T10:00-05:00",
                                 "2026-11-29T16:30-05:00"])
def test_nothing_due_on_a_holiday_or_weekend(now):
    assert not [job for job, (due, _) in decide(now).items() if due]


def test_after_close_jobs_follow_the_early_close():
    before = decide("2026-11-27T12:55-05:00")["data_update"]
    assert not before[0] and "close 13:00" in before[1] and "due 13:15" in before[1]
    assert decide("2026-11-27T13:20-05:00")["data_update"][0]
    # the day after Thanksgiving is the week's last session: the weekly jobs follow the early close
    weekly = decide("2026-11-27T14:20-05:00")
    assert weekly["retrain"][0] and weekly["walk_forward"][0]
    assert not decide("2026-11-24T17:20-05:00")["retrain"][0]            # Tuesday: not weekly
    # on a normal day the update waits for 16:00 + 15 min
    assert not decide("2026-11-24T13:20-05:00")["data_update"][0]
    assert decide("2026-11-24T16:20-05:00")["data_update"][0]


def test_bad_now_and_help(trading_home):
    done = run_entry(["scheduler.py", "--dry-run", "--now", "2026-11-24T09:40"], trading_home)
    assert done.returncode != 0 and "has no UTC offset" in done.stderr
    assert "Traceback" not in done.stderr
    helped = run_entry(["scheduler.py", "--help"], trading_home)
    assert helped.returncode == 0 and "trading_cycle" in helped.stdout
    assert not (trading_home / "state").exists() and not (trading_home / "logs").exists()


# --------------------------------------------------------------------------- real runs
def _ny(text):
    return datetime.fromisoformat(text)


def _marker_job(name, marker, anchor="open", offset=5, catchup=120, code=0, sleep=0.0):
    script = (f"import time, sys; open({str(marker)!r}, 'a').write(f'{{time.time()}} start\\n'); "
              f"time.sleep({sleep}); open({str(marker)!r}, 'a').write(f'{{time.time()}} end\\n'); "
              f"sys.exit({code})")
    return Job(name, ("python", "-c", script), anchor, offset, catchup,
               failed_alert="cycle_failed", missed_alert="cycle_missed")


def _rows():
    conn = sqlite3.connect(config.path("state/trading_state.db"))
    conn.row_factory = sqlite3.Row
    return {(r["job"], r["period"]): dict(r) for r in conn.execute("SELECT * FROM schedule_runs")}


def test_at_most_once_per_session_and_catch_up(trading_home, monkeypatch):
    marker = trading_home / "cycle.txt"
    jobs = (_marker_job("trading_cycle", marker),)
    with WebhookServer() as hook:
        monkeypatch.setenv("TRADING_ALERT_URLS", hook.url)
        assert scheduler.run_due(_ny("2026-11-23T08:00-05:00"), jobs) == 0       # before: nothing
        assert not marker.exists()
        assert scheduler.run_due(_ny("2026-11-23T09:40-05:00"), jobs) == 0
        assert scheduler.run_due(_ny("2026-11-23T09:45-05:00"), jobs) == 0       # same session
        assert marker.read_text().count("start") == 1
        row = _rows()[("trading_cycle", "2026-11-23")]
        assert row["status"] == "ok" and row["exit_code"] == 0 and row["duration_s"] > 0
        # downtime: the next day's cycle still runs at 11:00 (within its window) ...
        assert scheduler.run_due(_ny("2026-11-24T11:00-05:00"), jobs) == 0
        assert marker.read_text().count("start") == 2
        # ... but not after it: the 25th's is recorded as missed and alerted, once
        assert scheduler.run_due(_ny("2026-11-25T12:00-05:00"), jobs) == 0
        assert scheduler.run_due(_ny("2026-11-25T12:05-05:00"), jobs) == 0
        assert marker.read_text().count("start") == 2
        assert _rows()[("trading_cycle", "2026-11-25")]["status"] == "missed"
        assert scheduler.last_runs()["trading_cycle"]["period"] == "2026-11-25"
        assert len(hook.received) == 1
        assert "Trading cycle did not run" in hook.received[0]["title"]
        assert "trading_cycle did not run for 2026-11-25" in hook.received[0]["message"]
    status = run_entry(["scheduler.py", "status", "--now", "2026-11-25T12:05-05:00"], trading_home)
    assert "trading_cycle  2026-11-25  missed" in status.stdout, status.stdout


def test_failed_job_recorded_and_alerted(trading_home, monkeypatch):
    jobs = (_marker_job("trading_cycle", trading_home / "m.txt", code=3),)
    with WebhookServer() as hook:
        monkeypatch.setenv("TRADING_ALERT_URLS", hook.url)
        assert scheduler.run_due(_ny("2026-11-23T09:40-05:00"), jobs) == 1
        assert scheduler.run_due(_ny("2026-11-23T09:45-05:00"), jobs) == 0      # not retried
    row = _rows()[("trading_cycle", "2026-11-23")]
    assert row["status"] == "failed" and row["exit_code"] == 3
    assert len(hook.received) == 1 and "Trading cycle failed" in hook.received[0]["title"]
    assert "exited 3" in hook.received[0]["message"]


def test_jobs_run_one_after_another_and_never_two_schedulers_at_once(trading_home):
    a, b = trading_home / "a.txt", trading_home / "b.txt"
    jobs = (_marker_job("data_update", a, "close", 15, 360, sleep=1.5),
            _marker_job("audit_rotate", b, "close", 20, 360))
    assert scheduler.run_due(_ny("2026-11-23T16:40-05:00"), jobs) == 0
    a_end = float(a.read_text().split()[2])
    b_start = float(b.read_text().split()[0])
    assert b_start >= a_end                                            # in order, not overlapping

    # a long job holds the lock; another scheduler run (in-process and the CLI) does nothing
    slow, other = trading_home / "slow.txt", trading_home / "other.txt"
    code = ("import sys, scheduler; from datetime import datetime; sys.path.insert(0, 'tests');"
            "from test_scheduler import _marker_job;"
            f"sys.exit(scheduler.run_due(datetime.fromisoformat('2026-11-24T09:40-05:00'),"
            f"(_marker_job('trading_cycle', {str(slow)!r}, sleep=8),)))")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=entry_env())
    try:
        deadline = time.time() + 60
        while not slow.exists() and time.time() < deadline:
            time.sleep(0.1)
        assert scheduler.lock_held()
        assert scheduler.run_due(_ny("2026-11-24T09:40-05:00"),
                                 (_marker_job("health_check", other, offset=-60),)) == 0
        assert not other.exists()
        assert "lock: HELD" in scheduler.status_lines()[0]
        assert proc.wait(timeout=60) == 0
    finally:
        proc.kill()
    assert not scheduler.lock_held()
    assert scheduler.run_due(_ny("2026-11-24T09:45-05:00"),
                             (_marker_job("health_check", other, offset=-60),)) == 0
    assert other.exists()


def test_interrupted_run_is_marked_and_alerted(trading_home, monkeypatch):
    import state_db
    conn = state_db.connect()
    state_db.ensure_schema(conn, scheduler._SCHEMA)
    conn.execute("INSERT INTO schedule_runs(job, period, due_at, started_at, status) VALUES "
                 "('data_update', '2026-11-23', '2026-11-23T21:15:00+00:00', "
                 "'2026-11-23T21:15:00+00:00', 'running')")
    conn.close()
    with WebhookServer() as hook:
        monkeypatch.setenv("TRADING_ALERT_URLS", hook.url)
        scheduler.run_due(_ny("2026-11-24T08:00-05:00"), ())
    assert _rows()[("data_update", "2026-11-23")]["status"] == "interrupted"
    assert "Daily data update failed" in hook.received[0]["title"]


def test_real_after_close_jobs_run_from_the_cli(trading_home):
    """The CLI runs the real commands: at 16:52 on a Tuesday the data update (sample data),
    the audit rotation and the log retention are due; each is recorded with its exit code."""
    assert run_entry(["live_trading.py", "init"], trading_home).returncode == 0      # the home cron runs in
    (trading_home / "logs").mkdir(exist_ok=True)
    (trading_home / "logs" / "trading_20200101.log").write_text("old\n")
    done = run_entry(["scheduler.py", "--now", "2026-11-24T16:52-05:00"], trading_home, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    rows = _rows()
    for job in ("data_update", "audit_rotate", "log_retention"):
        assert rows[(job, "2026-11-24")]["status"] == "ok", rows
        assert rows[(job, "2026-11-24")]["exit_code"] == 0
    assert (trading_home / "processed_stock_data.csv").exists()
    assert not (trading_home / "logs" / "trading_20200101.log").exists()
    assert ("trading_cycle", "2026-11-24") not in rows                     # not its time
    again = run_entry(["scheduler.py", "--dry-run", "--now", "2026-11-24T16:57-05:00"], trading_home)
    assert "not due data_update    already ran for 2026-11-24: ok" in again.stdout, again.stdout


# --------------------------------------------------------------------------- reruns of a failed cycle
def _flaky_job(marker, fail_first, reruns=3, spacing=10, code=1, catchup=120):
    """A trading-cycle-like job that exits ``code`` on its first ``fail_first`` runs, then 0."""
    script = (f"import sys; p = {str(marker)!r}; open(p, 'a').write('run\\n'); "
              f"n = open(p).read().count('run'); sys.exit({code} if n <= {fail_first} else 0)")
    return Job("trading_cycle", ("python", "-c", script), "open", 5, catchup, failed_alert="cycle_failed",
               missed_alert="cycle_missed", reruns=reruns, rerun_spacing_min=spacing, final_codes=(2, 3),
               gave_up_alert="cycle_gave_up")


def test_a_failed_cycle_is_rerun_in_its_window_after_the_spacing(trading_home, monkeypatch):
    marker = trading_home / "runs.txt"
    jobs = (_flaky_job(marker, fail_first=2),)
    with WebhookServer() as hook:
        monkeypatch.setenv("TRADING_ALERT_URLS", hook.url)
        assert scheduler.run_due(_ny("2026-11-23T09:40-05:00"), jobs) == 1          # run 1 fails
        row = _rows()[("trading_cycle", "2026-11-23")]
        assert row["status"] == "failed" and row["attempts"] == 1 and row["gave_up_at"] is None
        dry = scheduler.evaluate(_ny("2026-11-23T09:45-05:00"), scheduler.readonly_conn(), jobs=jobs)[0]
        assert not dry.due and "rerun 1 of 3 after exit 1" in dry.why and "due 2026-11-23 09:50" in dry.why
        assert scheduler.run_due(_ny("2026-11-23T09:45-05:00"), jobs) == 0          # spacing: not yet
        assert marker.read_text().count("run") == 1
        assert scheduler.run_due(_ny("2026-11-23T09:51-05:00"), jobs) == 1          # rerun 1 fails
        assert scheduler.run_due(_ny("2026-11-23T10:02-05:00"), jobs) == 0          # rerun 2 works
        assert scheduler.run_due(_ny("2026-11-23T10:20-05:00"), jobs) == 0          # done: no more
        assert marker.read_text().count("run") == 3
        row = _rows()[("trading_cycle", "2026-11-23")]
        assert row["status"] == "ok" and row["attempts"] == 3 and row["gave_up_at"] is None
        assert not [a for a in hook.received if "stopped rerunning" in a["title"]]   # never gave up
    status = run_entry(["scheduler.py", "status", "--now", "2026-11-23T10:20-05:00"], trading_home)
    assert "3 runs" in status.stdout, status.stdout


def test_reruns_are_bounded_and_the_give_up_is_alerted_once(trading_home, monkeypatch):
    marker = trading_home / "runs.txt"
    jobs = (_flaky_job(marker, fail_first=99, reruns=2),)
    with WebhookServer() as hook:
        monkeypatch.setenv("TRADING_ALERT_URLS", hook.url)
        for at in ("09:40", "09:51", "10:02", "10:13", "10:24"):
            scheduler.run_due(_ny(f"2026-11-23T{at}-05:00"), jobs)
        assert marker.read_text().count("run") == 3                                # 1 + 2 reruns
        row = _rows()[("trading_cycle", "2026-11-23")]
        assert row["status"] == "failed" and row["attempts"] == 3 and row["gave_up_at"]
        gave_up = [a for a in hook.received if "stopped rerunning" in a["title"]]
        assert len(gave_up) == 1 and "failed 3 times" in gave_up[0]["message"]
        assert "no rerun left (2)" in gave_up[0]["message"]


@pytest.mark.parametrize("code", [2, 3])
def test_a_failure_a_rerun_cannot_fix_is_not_rerun(trading_home, monkeypatch, code):
    marker = trading_home / "runs.txt"
    jobs = (_flaky_job(marker, fail_first=1, code=code),)
    with WebhookServer() as hook:
        monkeypatch.setenv("TRADING_ALERT_URLS", hook.url)
        assert scheduler.run_due(_ny("2026-11-23T09:40-05:00"), jobs) == 1
        assert scheduler.run_due(_ny("2026-11-23T10:00-05:00"), jobs) == 0
        assert marker.read_text().count("run") == 1
        assert [a for a in hook.received if "stopped rerunning" in a["title"]]
        assert f"exit {code} is not one a rerun can fix" in hook.received[-1]["message"]


def test_no_rerun_after_the_window_and_a_pending_one_is_given_up(trading_home, monkeypatch):
    marker = trading_home / "runs.txt"
    jobs = (_flaky_job(marker, fail_first=99),)
    with WebhookServer() as hook:
        monkeypatch.setenv("TRADING_ALERT_URLS", hook.url)
        # too late for a rerun: the window (until 11:35) leaves no spacing + one interval
        assert scheduler.run_due(_ny("2026-11-23T11:25-05:00"), jobs) == 1
        assert _rows()[("trading_cycle", "2026-11-23")]["gave_up_at"]
        assert "no time for a rerun" in hook.received[-1]["message"]
        # the next day: the run fails, the scheduler is down until the window ended: given up then
        assert scheduler.run_due(_ny("2026-11-24T09:40-05:00"), jobs) == 1
        assert scheduler.run_due(_ny("2026-11-24T12:00-05:00"), jobs) == 0
        assert marker.read_text().count("run") == 2
        assert _rows()[("trading_cycle", "2026-11-24")]["gave_up_at"]
        assert "window ended" in hook.received[-1]["message"]
        assert len([a for a in hook.received if "stopped rerunning" in a["title"]]) == 2


def test_failures_recorded_before_reruns_existed_are_not_rerun(trading_home):
    """An older database: its schedule_runs has no attempts/gave_up_at; a failed row is final."""
    import state_db
    conn = state_db.connect()
    conn.execute("""CREATE TABLE schedule_runs (job TEXT NOT NULL, period TEXT NOT NULL, due_at TEXT NOT NULL,
        started_at TEXT, finished_at TEXT, status TEXT NOT NULL, exit_code INTEGER, duration_s REAL,
        detail TEXT, PRIMARY KEY (job, period))""")
    conn.execute("INSERT INTO schedule_runs VALUES ('trading_cycle', '2026-11-23', '2026-11-23T14:35:00+00:00', "
                 "'2026-11-23T14:40:00+00:00', '2026-11-23T14:41:00+00:00', 'failed', 1, 60, '')")
    conn.commit()
    conn.close()
    marker = trading_home / "runs.txt"
    assert scheduler.run_due(_ny("2026-11-23T10:00-05:00"), (_flaky_job(marker, fail_first=0),)) == 0
    assert not marker.exists()
    row = _rows()[("trading_cycle", "2026-11-23")]
    assert row["attempts"] == 1 and row["gave_up_at"] == "2026-11-23T14:41:00+00:00"


def test_the_trading_cycle_job_reruns_by_the_constants():
    job = next(j for j in scheduler.JOBS if j.name == scheduler.TRADING_CYCLE)
    assert job.reruns == C.CYCLE_RERUNS >= 1 and job.rerun_spacing_min == C.CYCLE_RERUN_SPACING_MIN
    assert job.final_codes == (2, 3) and job.gave_up_alert in alerts.ALERT_KINDS
    assert all(j.reruns == 0 for j in scheduler.JOBS if j.name != job.name)   # JOBS is rebuilt at each use


def test_a_scheduled_run_on_a_home_without_project_state_does_nothing(tmp_path):
    """Issue 19: cron on a mistyped TRADING_HOME used to build a new home there (the data update)
    and trade its fresh account; now the run refuses in one line and creates nothing."""
    typo = tmp_path / "tradnig_home"
    done = run_entry(["scheduler.py", "--now", "2026-11-24T16:52-05:00"], typo)
    assert done.returncode != 0 and f"TRADING_HOME={typo}" in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and not typo.exists()
