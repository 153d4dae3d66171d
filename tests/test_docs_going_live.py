"""docs/DEPLOYMENT.md's "Going live" steps (issue 23 g): the walk-forward is one of them, and no
step puts an ``export`` into the crontab (cron does not run it): the schedule is reinstalled with
TRADING_MODE=live ./install_cron.sh."""
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def going_live() -> str:
    text = (ROOT / "docs/DEPLOYMENT.md").read_text()
    return text.split("## Going live", 1)[1].split("\n## ", 1)[0]


def test_going_live_names_every_gate_requirement_and_the_live_install():
    steps = going_live()
    assert "./run_backtest.sh --walk-forward" in steps
    assert "python live_trading.py gate" in steps and "./run_backtest.sh" in steps
    assert "TRADING_MODE=live ./install_cron.sh" in steps


def test_no_doc_puts_an_export_in_the_crontab():
    for doc in [*(ROOT / "docs").glob("*.md"), ROOT / "README.md"]:
        for line in doc.read_text().splitlines():
            assert not ("export TRADING_MODE=live" in line and "crontab" in line), f"{doc.name}: {line}"
