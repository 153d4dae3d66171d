"""./run_health_check.sh: one line per check, exit 0 healthy / 1 warnings / 2 failures."""
import os
import re

import constants as C
from conftest import run_entry


def check(home, env=None):
    done = run_entry(["health_check.py"], home, env)
    lines = {m.group(2): line for line in done.stdout.splitlines()
             if (m := re.match(r"^(OK|WARN|FAIL)\s+([a-z ]+):", line))}
    return done.returncode, lines, done.stdout


def test_healthy_home(home):
    rc, lines, out = check(home)
    assert rc == 0, out
    assert out.strip().endswith("healthy")
    assert lines["model"].startswith("OK") and "verified" in lines["model"]
    assert lines["data"].startswith("OK") and "zero NaN" in lines["data"]


def test_kill_switch_is_a_warning(home, trained):
    assert run_entry(["live_trading.py", "halt", "--reason", "maintenance"], home).returncode == 0
    rc, lines, out = check(home)
    assert rc == 1, out
    assert lines["kill switch"].startswith("WARN") and "maintenance" in lines["kill switch"]


def test_corrupted_model_and_open_credentials_are_failures(home):
    with open(home / C.MODEL_FILE, "r+b") as fh:
        fh.seek(1000)
        fh.write(b"\xff\xfe tampered")
    run_entry(["-c", "from credential_manager import CredentialManager; "
                     "CredentialManager().store_credentials('schwab', {'app_key': 'k', 'app_secret': 's'})"], home)
    os.chmod(home / ".schwab_config.enc", 0o644)
    rc, lines, out = check(home)
    assert rc == 2, out
    assert lines["model"].startswith("FAIL") and "restore" in lines["model"]
    assert lines["credentials"].startswith("FAIL") and "chmod 600 .schwab_config.enc" in lines["credentials"]


def test_live_mode_without_credentials_or_gate_fails(home):
    rc, lines, out = check(home, {"TRADING_MODE": "live"})
    assert rc == 2
    assert "python credential_manager.py set schwab" in lines["credentials"]
    assert lines["gate"].startswith("FAIL") and "python live_trading.py gate" in lines["gate"]


def test_empty_home_reports_missing_data_and_model_and_creates_nothing(trading_home):
    rc, lines, out = check(trading_home)
    assert rc == 2
    assert "run_daily_data_update.sh" in lines["data"] and "train_model.py" in lines["model"]
    assert not (trading_home / "state").exists()
