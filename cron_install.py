"""The project's crontab block: one line, every few minutes, running ./run_scheduled.sh.

The block sits between two marker comments; installing replaces the block (idempotent),
``--remove`` deletes it, ``--print`` shows it, and every other line of the crontab is left as it
was. The crontab is read and written with python-crontab: the user's own crontab, or the file
named by ``$TRADING_CRONTAB_FILE`` (tests; never the real crontab there).

No ``CRON_TZ``: Debian's and Ubuntu's cron ignore it. The line runs in the machine's time zone
on every weekday of New York (a machine ahead of New York also on Saturday, one behind it on
Sunday), and the scheduler decides from the NYSE calendar in New York time what is due.

Command line (``./install_cron.sh`` runs it)::

    ./install_cron.sh            # install or update the block
    ./install_cron.sh --print    # print the block that would be installed (exit 0; a variable
                                 # that would make installing refuse is left out, noted on stderr)
    ./install_cron.sh --remove   # remove the block
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

from crontab import CronItem, CronTab

import config
import constants as C
import market_calendar
import tunables
from errors import UserFacingError, install_excepthook

BEGIN = f"# BEGIN {C.CRON_MARKER} (managed by ./install_cron.sh; edit there, not here)"
END = f"# END {C.CRON_MARKER}"


class CronInstallError(UserFacingError):
    """The crontab cannot be read or written; the message says what to do."""


def cron_days(tz=None, year: int | None = None) -> str:
    """The day-of-week field covering New York's Monday to Friday in the machine's time zone:
    "1-5" on New York time, "1-6" ahead of it (UTC, Tokyo), "0-5" behind it (Hawaii)."""
    ny = ZoneInfo(market_calendar.TIMEZONE)
    year = year or datetime.now().year
    ahead = behind = False
    start = datetime(year, 1, 1, 12, tzinfo=timezone.utc)
    for week in range(53):                       # both sides of every DST change
        moment = start + timedelta(weeks=week)
        local = moment.astimezone(tz) if tz else moment.astimezone()
        diff = local.utcoffset() - moment.astimezone(ny).utcoffset()
        ahead |= diff > timedelta(0)
        behind |= diff < timedelta(0)
    return {(False, False): "1-5", (True, False): "1-6", (False, True): "0-5"}.get(
        (ahead, behind), "0-6")


# Every environment variable the system reads (constants.ENV_*), by what cron gets of it. Cron
# starts jobs with almost no environment, so a variable set only in the installing shell would be
# silently missing under cron (another key directory: "audit trail NOT VALID"). Each one is:
CARRIED = (              # written into the line with the value it has now (paths made absolute)
    C.ENV_TRADING_HOME, C.ENV_TRADING_MODE, C.ENV_DATA_SOURCE, C.ENV_CONFIG_DIR, C.ENV_XDG_CONFIG_HOME,
    C.ENV_CSV_DIR, C.ENV_TRAIN_PROFILE, C.ENV_RAY_ADDRESS, C.ENV_PYTHON)
REFUSED = {              # set now: installing is refused (a secret, or no place in a schedule)
    C.ENV_CREDENTIAL_KEY: "is a secret and would sit in the crontab in clear: let cron's jobs read the "
                          "key file instead (unset it, then python credential_manager.py status)",
    C.ENV_ALERT_URLS: "holds the channels' secrets and would sit in the crontab in clear: store them "
                      "with python alerts.py add URL, then unset it",
    C.ENV_TRADING_NOW: "pins the clock (tests, drills): every scheduled run would think it is that "
                       "moment; unset it",
}
CARRIED_PREFIXES = (     # every variable with this prefix is carried too (TRADING_SET_<NAME>: a tunable's override)
    C.ENV_SETTING_PREFIX,)
NOT_FOR_CRON = (         # read only by a command a person runs, never by a scheduled job
    C.ENV_CREDENTIAL_KEY_NEW, C.ENV_CRONTAB_FILE, C.ENV_FAILPOINT)


def _value(name: str) -> str:
    """What ``name`` is worth now, as cron must see it: paths absolute, the mode normalised."""
    if name == C.ENV_TRADING_HOME:
        return str(config.home())
    if name == C.ENV_TRADING_MODE:
        return config.trading_mode()
    if name == C.ENV_DATA_SOURCE:
        return config.data_source()
    if name == C.ENV_CONFIG_DIR:
        return str(config.config_dir())
    if name in (C.ENV_CSV_DIR, C.ENV_XDG_CONFIG_HOME, C.ENV_PYTHON):
        return str(Path(os.environ[name].strip()).expanduser().absolute())
    return os.environ[name].strip()


def refused_variables() -> list[str]:
    """One problem per REFUSED variable set in this shell: "NAME why" (empty when none is set)."""
    return [f"{name} {why}" for name, why in REFUSED.items() if os.environ.get(name, "").strip()]


def carried_environment() -> list[tuple[str, str]]:
    """``[(name, value)]`` for every CARRIED variable set in this shell (a REFUSED one never is),
    then every variable with a CARRIED_PREFIXES prefix (a setting's override), sorted."""
    carried = [(name, _value(name)) for name in CARRIED if os.environ.get(name, "").strip()]
    return carried + sorted((name, value.strip()) for name, value in os.environ.items()
                            if name.startswith(CARRIED_PREFIXES) and value.strip())


def cron_environment() -> list[tuple[str, str]]:
    """``carried_environment()``, so cron runs with exactly this environment;
    ``CronInstallError`` when a REFUSED variable is set."""
    refused = refused_variables()
    if refused:
        raise CronInstallError("not installed: cron would not run with this shell's environment: "
                               + "; ".join(refused))
    return carried_environment()


def cron_line(check: bool = True) -> str:
    """The one crontab line: every SCHEDULE_INTERVAL_MIN minutes on New York's weekdays, with
    every variable of this shell that the system reads (``cron_environment``; with
    ``check=False``, for ``--print``, the refused variables are left out instead of refused)."""
    pairs = cron_environment() if check else carried_environment()
    env = "".join(f"{name}={shlex.quote(value)} " for name, value in pairs)
    log_file = config.path(C.LOG_DIR) / "cron_trading.log"
    command = (f"cd {shlex.quote(str(config.PROJECT_DIR))} && {env}./run_scheduled.sh "
               f">> {shlex.quote(str(log_file))} 2>&1")
    item = CronItem(command=command)
    item.setall(f"*/{C.SCHEDULE_INTERVAL_MIN} * * * {cron_days()}")
    if not item.is_valid():
        raise CronInstallError(f"internal error: the cron line {item.render()!r} is not valid")
    return item.render()


def block(check: bool = True) -> list[str]:
    return [BEGIN, "# New York time is worked out by scheduler.py (no CRON_TZ: Debian's cron "
                   "ignores it); see docs/DEPLOYMENT.md", cron_line(check), END]


def _open() -> CronTab:
    target = os.environ.get(C.ENV_CRONTAB_FILE, "").strip()
    try:
        if target:
            path = Path(target)
            return CronTab(tabfile=str(path)) if path.exists() else CronTab(tab="")
        return CronTab(user=True)
    except (OSError, IOError) as exc:
        raise CronInstallError(f"cannot read the crontab ({exc}); is cron installed? "
                               f"(apt-get install cron)") from None


def _save(text: str) -> str:
    """Write ``text`` as the crontab (the file of $TRADING_CRONTAB_FILE, else the user's)."""
    target = os.environ.get(C.ENV_CRONTAB_FILE, "").strip()
    tab = CronTab(tab=text)
    try:
        if target:
            tab.write(target)
            return target
        tab.write_to_user(user=True)
        return "your crontab (crontab -l)"
    except (OSError, IOError) as exc:
        raise CronInstallError(f"cannot write the crontab ({exc}); is cron installed? "
                               f"(apt-get install cron)") from None


def without_block(lines: list[str]) -> list[str]:
    """Every line outside the project's BEGIN/END markers (an unterminated block is an error)."""
    out, inside = [], False
    for line in lines:
        stripped = line.strip()
        if stripped.startswith(f"# BEGIN {C.CRON_MARKER}"):
            inside = True
            if out and not out[-1].strip():      # the blank line install put before the block
                out.pop()
        elif inside and stripped == END:
            inside = False
        elif not inside:
            out.append(line)
    if inside:
        raise CronInstallError(f"the crontab has '# BEGIN {C.CRON_MARKER}' without '{END}'; "
                               f"fix it by hand with crontab -e, then run ./install_cron.sh again")
    return out


def current_lines() -> list[str]:
    text = _open().render()
    return text.splitlines()


def installed() -> bool:
    """For the health check: is the project's block in the crontab (or $TRADING_CRONTAB_FILE)?"""
    try:
        return any(line.strip() == END for line in current_lines())
    except CronInstallError:
        return False


def install() -> tuple[str, bool]:
    """Install or replace the block; (where, changed)."""
    lines = current_lines()
    kept = without_block(lines)
    while kept and not kept[-1].strip():
        kept.pop()
    new = kept + ([""] if kept else []) + block()
    changed = new != lines
    config.path(C.LOG_DIR).mkdir(parents=True, exist_ok=True)
    where = _save("\n".join(new) + "\n") if changed else "crontab (unchanged)"
    return where, changed


def remove() -> tuple[str, bool]:
    lines = current_lines()
    kept = without_block(lines)
    if kept == lines:
        return "crontab (no block to remove)", False
    while kept and not kept[-1].strip():
        kept.pop()
    return _save("\n".join(kept) + ("\n" if kept else "")), True


def main(argv=None) -> int:
    install_excepthook()
    parser = argparse.ArgumentParser(
        prog="install_cron.sh",
        description="Install, print or remove the project's crontab block (one line running "
                    "./run_scheduled.sh every few minutes); other crontab lines are untouched.",
        epilog=f"${C.ENV_CRONTAB_FILE}=FILE edits FILE instead of your crontab. Every variable the "
               f"system reads that is set in this shell ({', '.join(CARRIED)}) is written into the "
               f"line, so cron runs with this environment; installing is refused while "
               f"{', '.join(REFUSED)} is set (--print then leaves it out and notes it on stderr).")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--print", action="store_true", help="print the block; change nothing")
    group.add_argument("--remove", action="store_true", help="remove the block")
    args = parser.parse_args(argv)
    config.trading_mode(), config.data_source()
    tunables.apply()              # the schedule's times are tunables (settings.toml)
    if args.print:                # installs nothing: the block, and what installing would refuse
        print("\n".join(block(check=False)))
        refused = refused_variables()
        if refused:
            print("note: installing would refuse: " + "; ".join(refused), file=sys.stderr)
        return 0
    if args.remove:
        where, changed = remove()
        print(f"Removed the schedule from {where}" if changed else f"Nothing to remove: {where}")
        return 0
    where, changed = install()
    print(("Installed the schedule in " if changed else "Already installed: ") + where)
    print("\n".join(block()))
    if config.trading_mode() == "live":
        print("NOTE: TRADING_MODE=live is in the line: scheduled cycles send real orders.")
    print("Check it: python scheduler.py --dry-run   and   python alerts.py test")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except CronInstallError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
