"""./install_cron.sh edits a crontab FILE here (TRADING_CRONTAB_FILE), never the user's crontab:
the project's block between markers is installed, replaced, printed and removed idempotently,
and every other line stays as it was."""
import os
from zoneinfo import ZoneInfo

import pytest

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


def install(*args, tz="UTC"):
    assert os.environ.get("TRADING_CRONTAB_FILE"), "tests must never touch the real crontab"
    return run_command(["./install_cron.sh", *args], env_extra={"TZ": tz}, timeout=120)


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
    assert f"cd {ROOT} && TRADING_HOME={trading_home} ./run_scheduled.sh" in line
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
