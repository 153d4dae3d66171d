"""`--help` of every entry point prints its usage and does nothing else: run in an empty home,
each exits 0 with usage text and creates nothing (no logs/, no state/, no incident file)."""
import sys
from pathlib import Path

import pytest
from conftest import project_state, run_command

ROOT = Path(__file__).resolve().parent.parent
SHELL = sorted(p.name for p in ROOT.glob("run_*.sh")) + ["install_cron.sh", "send_alert.sh"]
# a python CLI that a shell script above execs is covered by the script (same code, same argv)
WRAPPED = {"health_check.py", "backtest.py", "data_collection.py", "scheduler.py", "cron_install.py"}
PYTHON = sorted(p.name for p in ROOT.glob("*.py")
                if 'if __name__ == "__main__":' in p.read_text() and p.name not in WRAPPED)
# subcommands that act: their --help must not (halt must not halt, test must not send)
SUBCOMMANDS = [["live_trading.py", "halt"], ["alerts.py", "test"], ["audit_logging.py", "verify"],
               ["walk_forward.py", "sweep"], ["walk_forward.py", "holdout"]]


def test_the_lists_cover_the_entry_points():
    assert {"run_incident_capture.sh", "run_health_check.sh", "run_scheduled.sh",
            "run_backtest.sh", "run_daily_data_update.sh"} <= set(SHELL)
    assert {"live_trading.py", "alerts.py", "train_model.py", "audit_logging.py", "log_retention.py",
            "risk_management.py", "credential_manager.py",
            "status_page.py", "drift_monitor.py", "kill_switch.py"} <= set(PYTHON)   # issue 23: silent before
    scripts = " ".join((ROOT / s).read_text() for s in SHELL)
    for name in WRAPPED:
        assert f"$PROJECT_DIR/{name}" in scripts, name


@pytest.mark.parametrize("command", [[f"./{s}"] for s in SHELL] + [[sys.executable, p] for p in PYTHON]
                         + [[sys.executable, *c] for c in SUBCOMMANDS],
                         ids=lambda c: " ".join(Path(x).name for x in c))
def test_help_prints_usage_and_creates_nothing(tmp_path, command):
    home = tmp_path / "empty_home"
    home.mkdir()
    before = project_state()
    done = run_command([*command, "--help"], home, {"TRADING_CONFIG_DIR": tmp_path / "keys",
                                                    "TRADING_CRONTAB_FILE": tmp_path / "crontab"}, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "usage:" in done.stdout.lower(), done.stdout
    assert "Traceback" not in done.stdout + done.stderr
    assert list(home.iterdir()) == [], list(home.iterdir())          # no logs/, state/, incident file
    assert not (tmp_path / "keys").exists() and not (tmp_path / "crontab").exists()
    assert project_state() == before                                  # nothing written in the project folder
