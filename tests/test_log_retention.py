"""Daily logs and the rotated errors/cron logs are pruned after LOG_RETENTION_DAYS; errors.log and
cron_trading.log are rotated; the audit trail is never touched."""
from datetime import date, datetime, timedelta

import constants as C
import log_retention
import scheduler
from conftest import run_entry


def _logs(home):
    logs = home / "logs"
    (logs / "audit").mkdir(parents=True)
    today = date.today()
    old = today - timedelta(days=C.LOG_RETENTION_DAYS + 1)
    recent = today - timedelta(days=C.LOG_RETENTION_DAYS - 1)
    files = {
        "old_trading": logs / f"trading_{old:%Y%m%d}.log",
        "old_update": logs / f"data_update_{old:%Y%m%d}.log",
        "old_errors": logs / f"errors_{old:%Y%m%d}.log",
        "recent_trading": logs / f"trading_{recent:%Y%m%d}.log",
        "today": logs / f"scheduler_{today:%Y%m%d}.log",
        "audit_old": logs / "audit" / f"audit_log.{old:%Y%m%d}.jsonl",
        "audit_live": logs / "audit" / "audit_log.jsonl",
        "notes": logs / "notes.txt",
    }
    for path in files.values():
        path.write_text("x\n")
    stamp = (datetime.now() - timedelta(days=C.LOG_ROTATE_AGE_DAYS + 1)).strftime(C.LOG_DATE_FORMAT)
    (logs / "errors.log").write_text(f"{stamp} ERROR [x] old fault\n")
    (logs / "cron_trading.log").write_text(f"{datetime.now():{C.LOG_DATE_FORMAT}} INFO [x] new\n")
    return files


def test_prune_and_rotate_never_the_audit_trail(trading_home):
    (trading_home / "selected_stocks.txt").write_text("AAPL\n")      # a home (config.require_home)
    files = _logs(trading_home)
    done = run_entry(["log_retention.py"], trading_home)
    assert done.returncode == 0, done.stderr
    for name in ("old_trading", "old_update", "old_errors"):
        assert not files[name].exists(), name
    for name in ("recent_trading", "today", "audit_old", "audit_live", "notes"):
        assert files[name].exists(), name
    rotated = trading_home / "logs" / f"errors_{date.today():%Y%m%d}.log"
    assert "old fault" in rotated.read_text()                  # rotated, nothing lost
    live = trading_home / "logs" / "errors.log"
    assert not live.exists() or "old fault" not in live.read_text()
    assert (trading_home / "logs" / "cron_trading.log").exists()   # young and small: kept
    assert "3 deleted" in done.stdout and "1 rotated" in done.stdout


def test_dry_run_and_size_rotation(trading_home):
    files = _logs(trading_home)
    assert log_retention.prune_logs(dry_run=True)
    assert files["old_trading"].exists()
    big = trading_home / "logs" / "cron_trading.log"
    assert log_retention.rotate_logs(max_bytes=5) and not big.exists()
    again = log_retention.rotate_logs(max_bytes=5)       # errors.log rotated too: nothing left
    assert again == []


def test_scheduler_runs_retention_and_audit_rotation_daily():
    commands = {job.name: job.command for job in scheduler.JOBS}
    assert commands["log_retention"] == ("python", "log_retention.py")
    assert commands["audit_rotate"] == ("python", "audit_logging.py", "rotate")
    assert not {j.name for j in scheduler.JOBS if j.weekly} & {"log_retention", "audit_rotate"}
