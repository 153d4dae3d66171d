"""Small things a newcomer tripped on (issue 23, point 4), each on the command a person types."""
from conftest import run_entry

import constants as C
import live_trading


def test_status_without_a_peak_says_so_instead_of_zero_dollars(trading_home):
    assert run_entry(["live_trading.py", "init"], trading_home).returncode == 0     # a new home, never traded
    done = run_entry(["live_trading.py", "status"], trading_home)
    assert done.returncode == 0, done.stderr
    risk = [line for line in done.stdout.splitlines() if line.startswith("risk:")][0]
    assert "peak none recorded yet" in risk and "$0.00" not in risk, risk


def test_history_and_signals_carry_the_synthetic_label_and_signals_a_header(trading_home):
    assert run_entry(["live_trading.py", "init"], trading_home).returncode == 0     # a new home, never traded
    done = run_entry(["live_trading.py", "history"], trading_home)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == f"DATA_SOURCE=sample: {C.SAMPLE_LABEL}"
    header = live_trading.signals_header()
    assert header[0] == f"DATA_SOURCE=sample: {C.SAMPLE_LABEL}"
    assert "symbol" in header[1] and "score" in header[1] and f"+{C.SIGNAL_THRESHOLD:.2f}" in header[1]


def test_first_install_is_told_to_train_not_to_restore(trading_home):
    import pytest
    import model_management as M
    with pytest.raises(M.ModelNotFoundError) as err:
        M.verify_model(trading_home / C.MODEL_FILE)
    assert "python train_model.py" in str(err.value) and "model_management.py restore" not in str(err.value)
    (trading_home / C.MODEL_BACKUP_DIR / "20261101_000000").mkdir(parents=True)     # an earlier model
    with pytest.raises(M.ModelNotFoundError, match="model_management.py restore"):
        M.verify_model(trading_home / C.MODEL_FILE)


def test_a_second_training_at_once_is_refused(trading_home):
    """Issue 23: two `python train_model.py` at once were not locked and both promoted."""
    import config
    import train_model
    from fileutil import process_lock
    with process_lock(config.path(C.LOCK_DIR) / train_model.TRAIN_LOCK_NAME, "train_model.py") as holder:
        assert holder is None
        done = run_entry(["train_model.py", "--profile", "tiny"], trading_home)
    assert done.returncode == 1 and "another training is running" in done.stderr, done.stderr
    assert "train_model.py" in done.stderr and "Traceback" not in done.stderr
    assert not (trading_home / C.MODEL_FILE).exists()


def test_a_typing_mistake_does_not_land_in_errors_log(trading_home):
    """Issue 23: a usage error (here: restoring a backup name that does not exist) was logged as
    ERROR, so errors.log had a line and the health check stayed at WARN all day."""
    (trading_home / "selected_stocks.txt").write_text("AAPL\n")      # a home (config.require_home)
    done = run_entry(["model_management.py", "restore", "no_such_backup"], trading_home)
    assert done.returncode == 1 and "no backup named no_such_backup" in done.stdout + done.stderr
    errors = trading_home / "logs" / C.ERRORS_LOG_NAME
    assert not errors.exists() or "no_such_backup" not in errors.read_text()
    import health_check
    assert health_check.check_errors_today()[0] == "OK"


def test_replaying_an_earlier_session_says_the_replay_account_starts_over(trading_home, caplog):
    import logging
    from datetime import date
    import state_db
    state_db.prepare_replay(date(2025, 3, 5))
    with caplog.at_level(logging.WARNING, logger="state"):
        state_db.prepare_replay(date(2025, 3, 6))                  # forward: carries over, silently
        assert not caplog.records
        state_db.prepare_replay(date(2025, 3, 3))                  # earlier: wiped, and said so
    text = " ".join(r.getMessage() for r in caplog.records)
    assert "2025-03-03" in text and "2025-03-06" in text and "starts over" in text


def test_scripts_name_the_environment_when_the_interpreter_lacks_the_packages(tmp_path):
    """Issue 23: without the project's environment every command was a raw ModuleNotFoundError."""
    import subprocess
    import sys
    from conftest import run_command
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp_path / "bare")], check=True)
    bare = tmp_path / "bare" / "bin" / "python"
    done = run_command(["./run_health_check.sh"], env_extra={"TRADING_PYTHON": bare}, timeout=120)
    assert done.returncode == 2 and "ModuleNotFoundError" not in done.stderr and "Traceback" not in done.stderr
    assert "lacks the project's packages" in done.stderr and "make venv" in done.stderr
    assert ". .venv/bin/activate" in done.stderr


def _no_errors_log_line(home, text: str) -> None:
    """``text`` is not in logs/errors.log, and the health check's errors line stays OK."""
    errors = home / "logs" / C.ERRORS_LOG_NAME
    assert not errors.exists() or text not in errors.read_text(), errors.read_text()
    import health_check
    assert health_check.check_errors_today()[0] == "OK"


def test_a_mistyped_credential_field_is_a_warning_not_an_errors_log_line(trading_home):
    """Issue 23 point 4: usage errors kept the health check at WARN all day (credential_manager
    logged a typo in a field name as ERROR)."""
    done = run_entry(["credential_manager.py", "set", "schwab"], trading_home,
                     input="app_kee=K\napp_secret=S\n")
    assert done.returncode == 1 and "schwab has no field app_kee (a typo?)" in done.stderr
    _no_errors_log_line(trading_home, "app_kee")
    day_log = (trading_home / "logs").glob("trading_*.log")
    assert any("app_kee" in p.read_text() for p in day_log)       # still in the day's log (WARNING)


def test_replay_without_a_replay_account_is_a_warning_not_an_errors_log_line(trading_home):
    assert run_entry(["live_trading.py", "init"], trading_home).returncode == 0
    done = run_entry(["live_trading.py", "status", "--replay"], trading_home)
    assert done.returncode == 1 and "no replay account" in done.stderr
    _no_errors_log_line(trading_home, "no replay account")


def test_a_backtest_start_inside_the_training_data_is_a_warning_not_an_errors_log_line(home, capsys):
    import backtest as bt
    assert bt.main(["--no-progress", "--start", "2020-01-02"]) == 2
    assert "--in-sample" in capsys.readouterr().err
    _no_errors_log_line(home, "inside the model's training")
