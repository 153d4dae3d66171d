"""./install_cron.sh edits a crontab FILE here (TRADING_CRONTAB_FILE), never the user's crontab:
the project's block between markers is installed, replaced, printed and removed idempotently,
and every other line stays as it was."""
import os
import re
import shlex
from zoneinfo import ZoneInfo

import pytest

import constants as C
import cron_install
from conftest import ROOT, run_command

OTHER = ("MAILTO=me@example.com\n# my backups\n0 3 * * * /usr/local/bin/backup --all\n"
         "@reboot echo hi\n")


@pytest.fixture
def tab(tmp_path, monkeypatch):
    path = tmp_path / "crontab.txt"
    path.write_text(OTHER)
    monkeypatch.setenv("TRADING_CRONTAB_FILE", str(path))
    return path


def install(*args, tz="UTC", **env):
    assert os.environ.get("TRADING_CRONTAB_FILE"), "tests must never touch the real crontab"
    # the installing shell's own interpreter (not the fork server's python, tests/fork_runner.py): the
    # crontab line keeps TRADING_PYTHON
    return run_command(["./install_cron.sh", *args], env_extra={"TZ": tz, "TRADING_NOW": None,
                                                                "TRADING_PYTHON": os.environ["TRADING_PYTHON"], **env},
                       timeout=120)


def test_install_is_idempotent_and_leaves_other_lines(tab, trading_home):
    done = install()
    assert done.returncode == 0, done.stderr
    text = tab.read_text()
    assert text.startswith(OTHER)
    ours = text[len(OTHER):].strip().splitlines()
    assert ours[0] == cron_install.BEGIN and ours[-1] == cron_install.END
    jobs = [l for l in ours if not l.startswith("#")]
    assert len(jobs) == 1
    line = jobs[0]
    assert line.startswith("*/5 * * * 1-6 ")              # UTC is ahead of New York
    assert f"cd {ROOT} && TRADING_HOME={trading_home} " in line and " ./run_scheduled.sh" in line
    assert line.endswith(f">> {trading_home}/logs/cron_trading.log 2>&1")
    assert not [l for l in text.splitlines() if l.startswith("CRON_TZ")]
    assert cron_install.installed()
    again = install()
    assert again.returncode == 0 and "Already installed" in again.stdout
    assert tab.read_text() == text
    tab.write_text(text + "# added later by hand\n*/10 * * * * echo mine\n")
    install()
    after = tab.read_text()
    assert after.count(cron_install.BEGIN) == 1 and "echo mine" in after and OTHER in after
    removed = install("--remove")
    assert removed.returncode == 0 and "Removed" in removed.stdout
    assert tab.read_text() == OTHER + "# added later by hand\n*/10 * * * * echo mine\n"
    assert "Nothing to remove" in install("--remove").stdout
    assert not cron_install.installed()


def test_print_changes_nothing_and_new_york_machine_uses_weekdays(tab):
    printed = install("--print", tz="America/New_York")
    assert printed.returncode == 0 and "*/5 * * * 1-5 " in printed.stdout
    assert tab.read_text() == OTHER


def test_unterminated_block_is_refused(tab):
    tab.write_text(OTHER + cron_install.BEGIN + "\n*/5 * * * * x\n")
    done = install()
    assert done.returncode == 1 and "without '# END" in done.stderr and "Traceback" not in done.stderr
    assert tab.read_text() == OTHER + cron_install.BEGIN + "\n*/5 * * * * x\n"


@pytest.mark.parametrize("tz, days", [("America/New_York", "1-5"), ("UTC", "1-6"),
                                      ("Asia/Tokyo", "1-6"), ("Europe/Berlin", "1-6"),
                                      ("Pacific/Honolulu", "0-5"), ("America/Bogota", "0-5")])
def test_cron_days_cover_new_york_weekdays(tz, days):
    assert cron_install.cron_days(ZoneInfo(tz), 2026) == days


def cron_env(line: str) -> dict:
    """The NAME=value words between ``cd ... &&`` and ``./run_scheduled.sh`` of the cron line."""
    words = shlex.split(line.split("&&", 1)[1].split("./run_scheduled.sh")[0])
    return dict(w.split("=", 1) for w in words)


def test_cron_runs_with_every_variable_of_the_installing_shell(tab, trading_home, tmp_path):
    """Issue 23: TRADING_CONFIG_DIR and DATA_SOURCE were left out of the line, so cron looked for
    the audit key elsewhere and refused to trade. Every variable set now is in the line."""
    csv_dir = tmp_path / "csv"
    done = install("--print", TRADING_MODE="paper", TRADING_CSV_DIR=csv_dir, TRAIN_PROFILE="tiny",
                   RAY_ADDRESS="10.0.0.5:6379", TRADING_SET_SIGNAL_THRESHOLD="0.6")
    assert done.returncode == 0, done.stderr
    line = [l for l in done.stdout.splitlines() if "run_scheduled.sh" in l][0]
    assert cron_env(line) == {
        "TRADING_HOME": str(trading_home), "TRADING_MODE": "paper", "DATA_SOURCE": "sample",
        "TRADING_CONFIG_DIR": os.environ["TRADING_CONFIG_DIR"], "TRADING_CSV_DIR": str(csv_dir),
        "TRAIN_PROFILE": "tiny", "RAY_ADDRESS": "10.0.0.5:6379",
        "TRADING_PYTHON": os.environ["TRADING_PYTHON"],
        "TRADING_SET_SIGNAL_THRESHOLD": "0.6"}                  # a setting's override (tunables.py) too


def test_relative_key_dir_is_written_absolute(tab, trading_home, tmp_path):
    done = run_command([str(ROOT / "install_cron.sh"), "--print"], cwd=tmp_path,
                       env_extra={"TRADING_NOW": None, "TRADING_CONFIG_DIR": "keys"})
    assert done.returncode == 0, done.stderr
    line = [l for l in done.stdout.splitlines() if "run_scheduled.sh" in l][0]
    assert cron_env(line)["TRADING_CONFIG_DIR"] == str(ROOT / "keys")    # the scripts run from ROOT, as cron


@pytest.mark.parametrize("name, value, says", [
    ("TRADING_CREDENTIAL_KEY", "x" * 44, "credential_manager.py"),
    ("TRADING_ALERT_URLS", "json://127.0.0.1:9/hook", "alerts.py add"),
    ("TRADING_NOW", "2026-11-24T11:00:00-05:00", "pins the clock")])
def test_a_variable_cron_cannot_have_refuses_the_install(tab, trading_home, name, value, says):
    done = install(**{name: value})
    assert done.returncode == 1 and name in done.stderr and says in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    assert tab.read_text() == OTHER                       # nothing installed


@pytest.mark.parametrize("name, value, says", [
    ("TRADING_CREDENTIAL_KEY", "x" * 44, "credential_manager.py"),
    ("TRADING_ALERT_URLS", "json://127.0.0.1:9/hook", "alerts.py add"),
    ("TRADING_NOW", "2026-11-24T11:00:00-05:00", "pins the clock")])
def test_print_with_a_refused_variable_prints_the_block_and_notes_the_refusal(tab, trading_home,
                                                                             name, value, says):
    """--print installs nothing: it prints the block without the refused variable (exit 0) and
    says on stderr that installing would refuse; the install itself still refuses."""
    done = install("--print", **{name: value})
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == cron_install.BEGIN and lines[-1] == cron_install.END
    line = [l for l in lines if "run_scheduled.sh" in l][0]
    assert cron_env(line)["TRADING_HOME"] == str(trading_home) and name not in cron_env(line)
    assert name not in done.stdout and value not in done.stdout        # no secret, no pinned clock
    assert "installing would refuse" in done.stderr and name in done.stderr and says in done.stderr
    assert "Traceback" not in done.stderr
    assert tab.read_text() == OTHER                                     # nothing installed
    refused = install(**{name: value})
    assert refused.returncode == 1 and "not installed" in refused.stderr
    assert tab.read_text() == OTHER


def test_every_environment_variable_the_system_reads_is_classified():
    """One place lists what cron gets of each variable: every constants.ENV_* name, and no module
    reads a variable of ours by a literal name instead of its constant."""
    names = {getattr(C, n) for n in dir(C) if n.startswith("ENV_")}
    classified = [*cron_install.CARRIED, *cron_install.CARRIED_PREFIXES, *cron_install.REFUSED,
                  *cron_install.NOT_FOR_CRON]
    assert sorted(classified) == sorted(names)
    literal = re.compile(r"""os\.environ(?:\.get|\.pop|\.setdefault)?[\[(]\s*["']([A-Z_]+)["']""")
    foreign = {"USER", "LOGNAME", "PYTHONPATH", "TF_CPP_MIN_LOG_LEVEL"}      # not the system's settings
    found = {(p.name, m) for p in ROOT.glob("*.py") for m in literal.findall(p.read_text())}
    assert {(f, m) for f, m in found if m not in foreign} == set()
