"""Every entry point refuses a TRADING_MODE or DATA_SOURCE it does not know, at startup, with
one line naming the variable: no silent default."""
import sys
from pathlib import Path

import pytest
from conftest import run_command

ROOT = Path(__file__).resolve().parent.parent
COMMANDS = [
    ["./run_daily_data_update.sh"], ["./run_backtest.sh"], ["./run_health_check.sh"],
    [sys.executable, "live_trading.py", "status"], [sys.executable, "train_model.py"],
    [sys.executable, "risk_management.py", "status"], [sys.executable, "trading_api.py", "balance"],
    [sys.executable, "model_management.py", "list"], [sys.executable, "audit_logging.py", "verify"],
    [sys.executable, "credential_manager.py", "list"],
    [sys.executable, "scheduler.py", "--dry-run"], [sys.executable, "alerts.py", "list"],
    ["./install_cron.sh", "--print"], ["./send_alert.sh", "x"], [sys.executable, "log_retention.py"],
]


@pytest.mark.parametrize("variable, value", [("TRADING_MODE", "liev"), ("DATA_SOURCE", "yahoo")])
@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(Path(x).name for x in c))
def test_bad_environment_is_a_startup_error(trading_home, command, variable, value):
    done = run_command(command, env_extra={variable: value}, timeout=120)
    assert done.returncode != 0
    out = done.stdout + done.stderr
    assert variable in out and value in out, out[-1000:]
    assert "Traceback" not in out
    assert not (trading_home / "state").exists()          # nothing ran
