"""Issue 19 point 11, the commands beyond live_trading.py: every command that is not a set-up
command (``python live_trading.py init``, ``./run_daily_data_update.sh``, ``train_model.py``)
refuses a TRADING_HOME that holds no project state in one line naming the path and
``python live_trading.py init``, exits non-zero and creates nothing at the mistyped path; the
health check says so as a FAIL line instead of creating the home."""
from __future__ import annotations

import pytest

import config
from conftest import run_command, run_entry

COMMANDS = [["backtest.py"], ["backtest.py", "--walk-forward"], ["walk_forward.py"], ["status_page.py"],
            ["drift_monitor.py"], ["model_management.py", "verify"], ["model_management.py", "list"],
            ["log_retention.py"]]


@pytest.mark.parametrize("args", COMMANDS, ids=" ".join)
def test_a_mistyped_home_is_refused_in_one_line_creating_nothing(tmp_path, args):
    typo = tmp_path / "hoem"
    done = run_entry(args, typo, {"TRADING_CONFIG_DIR": tmp_path / "keys"})
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and str(typo) in lines[0] and "does not exist" in lines[0], done.stderr
    assert config.INIT_COMMAND in lines[0] and "Traceback" not in done.stderr
    assert not typo.exists()


@pytest.mark.parametrize("script", ["./run_health_check.sh", "./run_backtest.sh"])
def test_the_scripts_on_a_mistyped_home(tmp_path, script):
    typo = tmp_path / "hoem"
    done = run_command([script], typo, {"TRADING_CONFIG_DIR": tmp_path / "keys"})
    assert done.returncode == 2, done.stdout + done.stderr
    assert str(typo) in done.stdout + done.stderr and config.INIT_COMMAND in done.stdout + done.stderr
    assert not typo.exists()


def test_health_check_names_a_home_that_does_not_exist(tmp_path):
    typo = tmp_path / "hoem"
    done = run_entry(["health_check.py"], typo, {"TRADING_CONFIG_DIR": tmp_path / "keys"})
    assert done.returncode == 2
    home_lines = [line for line in done.stdout.splitlines() if line.startswith("FAIL  home:")]
    assert len(home_lines) == 1 and "does not exist" in home_lines[0] and config.INIT_COMMAND in home_lines[0]
    assert "model:" not in done.stdout and "Traceback" not in done.stderr       # nothing about nothing
    assert not typo.exists()


def test_health_check_on_an_empty_folder_names_init_and_writes_nothing(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    done = run_entry(["health_check.py"], empty, {"TRADING_CONFIG_DIR": tmp_path / "keys"})
    assert done.returncode == 2
    assert any(line.startswith("FAIL  home:") and "holds no project state" in line for line in done.stdout.splitlines())
    assert list(empty.iterdir()) == []


def test_a_home_is_accepted(trading_home):
    (trading_home / "selected_stocks.txt").write_text("AAPL\n")
    done = run_entry(["drift_monitor.py"])
    assert done.returncode == 0 and "DRIFT" in done.stdout, done.stderr
    done = run_entry(["health_check.py"])
    assert any(line.startswith("OK    home:") for line in done.stdout.splitlines()), done.stdout
