"""Log retention: rotate the ever-growing logs, delete old daily logs; never touch the audit trail.

* ``logs/errors.log`` and ``logs/cron_trading.log`` are rotated (renamed to
  ``errors_YYYYMMDD.log`` / ``cron_trading_YYYYMMDD.log``, the date of the rotation) when their
  first timestamped line is ``LOG_ROTATE_AGE_DAYS`` old or they exceed ``LOG_ROTATE_MAX_BYTES``.
  A process still writing to the old file keeps writing to the renamed one: nothing is lost.
* Daily logs in ``logs/`` named ``<name>_YYYYMMDD.log`` (trading, data_update, scheduler and the
  rotated files above) are deleted once their date is more than ``LOG_RETENTION_DAYS`` old.
* The audit trail (``logs/audit/``) is rotated by ``python audit_logging.py rotate`` (its own
  scheduler job) and never pruned: nothing here looks below ``logs/``.

Command line (the scheduler's ``log_retention`` job)::

    python log_retention.py [--days N] [--dry-run]
"""
from __future__ import annotations

import argparse
import logging
import re
import sys
from datetime import date, datetime, timedelta
from pathlib import Path

import config
import constants as C
import fileutil
import logging_setup
from errors import install_excepthook

log = logging.getLogger("log_retention")

ROTATED_LOGS = (C.ERRORS_LOG_NAME, "cron_trading.log")     # grow forever unless rotated
DAILY = re.compile(r"^(?P<stem>[A-Za-z][A-Za-z0-9_]*?)_(?P<date>\d{8})(?:-\d+)?\.log$")
_STAMP = re.compile(r"^(\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2})")


def _first_stamp(path: Path, max_lines: int = 200) -> datetime | None:
    with open(path, "r", encoding="utf-8", errors="replace") as fh:
        for _, line in zip(range(max_lines), fh):
            m = _STAMP.match(line)
            if m:
                return datetime.strptime(m.group(1), C.LOG_DATE_FORMAT)
    return None


def _rotated_name(path: Path, today: date) -> Path:
    stem = path.stem
    target = path.with_name(f"{stem}_{today:%Y%m%d}.log")
    n = 2
    while target.exists():
        target = path.with_name(f"{stem}_{today:%Y%m%d}-{n}.log")
        n += 1
    return target


def rotate_logs(now: datetime | None = None, age_days: float | None = None,
                max_bytes: int | None = None, dry_run: bool = False) -> list[Path]:
    """Rotate errors.log and cron_trading.log when old (``age_days``, default LOG_ROTATE_AGE_DAYS)
    or large (``max_bytes``, default LOG_ROTATE_MAX_BYTES); returns the new file names."""
    age_days = C.LOG_ROTATE_AGE_DAYS if age_days is None else age_days
    max_bytes = C.LOG_ROTATE_MAX_BYTES if max_bytes is None else max_bytes
    now = now or datetime.now()
    logs = config.path(C.LOG_DIR)
    done = []
    for name in ROTATED_LOGS:
        path = logs / name
        if not path.is_file() or path.stat().st_size == 0:
            continue
        first = _first_stamp(path)
        old = first is not None and now - first >= timedelta(days=age_days)
        if not old and path.stat().st_size <= max_bytes:
            continue
        target = _rotated_name(path, now.date())
        if not dry_run:
            path.rename(target)
            fileutil.fsync_dir(logs)
            log.info("Rotated %s to %s (%s)", name, target.name,
                     f"first line {first:%Y-%m-%d}" if old else f"{path.name} over {max_bytes} bytes")
        done.append(target)
    return done


def prune_logs(days: float | None = None, today: date | None = None,
               dry_run: bool = False) -> list[Path]:
    """Delete ``logs/<name>_YYYYMMDD.log`` files dated more than ``days`` ago; returns them.
    Only the top of ``logs/`` is read: the audit trail below it is never pruned."""
    today = today or datetime.now().date()
    days = C.LOG_RETENTION_DAYS if days is None else days         # the effective setting
    cutoff = today - timedelta(days=days)
    logs = config.path(C.LOG_DIR)
    if not logs.is_dir():
        return []
    gone = []
    for path in sorted(logs.iterdir()):
        m = DAILY.match(path.name)
        if not m or not path.is_file() or path.is_symlink():
            continue
        try:
            day = datetime.strptime(m["date"], "%Y%m%d").date()
        except ValueError:
            continue
        if day < cutoff:
            if not dry_run:
                path.unlink()
            gone.append(path)
    if gone and not dry_run:
        fileutil.fsync_dir(logs)
        log.info("Deleted %d log file(s) older than %g days (before %s): %s", len(gone), days,
                 cutoff, ", ".join(p.name for p in gone[:10]) + (" ..." if len(gone) > 10 else ""))
    return gone


def main(argv=None) -> int:
    install_excepthook()
    parser = argparse.ArgumentParser(
        prog="log_retention.py",
        description="Rotate errors.log and cron_trading.log, delete daily logs older than the "
                    "retention period. The audit trail is never pruned.")
    parser.add_argument("--days", type=float, default=None,
                        help=f"keep this many days of logs (default {C.LOG_RETENTION_DAYS}, "
                             f"LOG_RETENTION_DAYS in constants.py or settings.toml)")
    parser.add_argument("--dry-run", action="store_true", help="print what would change")
    args = parser.parse_args(argv)
    if args.days is not None and args.days < 1:
        parser.error(f"--days {args.days:g} would delete today's logs: give 1 or more")
    if config.refuse_without_home():          # a mistyped TRADING_HOME: one line, nothing created
        return 2
    logging_setup.setup_logging("scheduler", console=False)
    days = C.LOG_RETENTION_DAYS if args.days is None else args.days     # after the settings apply
    rotated = rotate_logs(dry_run=args.dry_run)
    pruned = prune_logs(days, dry_run=args.dry_run)
    verb = "would " if args.dry_run else ""
    for path in rotated:
        print(f"{verb}rotate -> {path.name}")
    for path in pruned:
        print(f"{verb}delete {path.name}")
    print(f"{len(rotated)} rotated, {len(pruned)} deleted (keeping {days:g} days)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
