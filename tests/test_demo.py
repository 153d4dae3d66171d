"""``make demo`` end to end (scripts/demo.sh, in a temporary DEMO_HOME): it starts clean, labels the
sample prices as synthetic wherever they show, and the exports it prints at the end make
``python audit_logging.py verify`` and ``./run_health_check.sh`` work when pasted into a shell.
About two minutes (data, a tiny model, a backtest, ten replayed cycles)."""
import re
import subprocess
from pathlib import Path

import pytest
from conftest import entry_env, run_command

ROOT = Path(__file__).resolve().parent.parent
LABEL = "SYNTHETIC sample prices, not market data"


@pytest.mark.skipif(not (ROOT / ".venv" / "bin" / "activate").exists(),
                    reason="the demo runs .venv/bin/python: run make venv-dev first")
def test_demo_starts_clean_labels_synthetic_prices_and_prints_working_exports(tmp_path):
    home = tmp_path / "demo_home"
    home.mkdir()
    (home / ".made_by_make_demo").write_text("")                            # an earlier demo's folder
    (home / "STALE_FROM_AN_EARLIER_RUN").write_text("x")
    unset = {name: None for name in ("TRADING_HOME", "TRADING_CONFIG_DIR", "DATA_SOURCE", "VIRTUAL_ENV")}
    env = entry_env(env_extra=unset)                          # a user's shell: none of the demo's variables
    done = run_command(["bash", "scripts/demo.sh"], env_extra={**unset, "DEMO_HOME": home}, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    assert not (home / "STALE_FROM_AN_EARLIER_RUN").exists()                  # started clean
    step1 = out[out.index("1/6 data"):out.index("2/6 model")]
    assert LABEL in step1                                                      # data update output
    backtest_page = (home / "reports" / "latest_backtest.html").read_text()
    assert LABEL in backtest_page                                              # backtest report header
    # issue 23: the walk-forward runs first, so the backtest report shows its folds
    assert "No walk-forward report" not in backtest_page and "latest_walkforward.html" in backtest_page
    assert "unavailable" not in (home / "reports" / "status.html").read_text()  # issue 23: no "no such table"
    assert "SYNTHETIC" in (home / "reports" / "latest_walkforward.html").read_text()
    assert LABEL in (home / "reports" / "status.html").read_text()            # status page
    walk = out[out.index("3/6 walk-forward"):out.index("4/6 backtest")]
    verdict = re.search(r"^   Verdict: (PASS|FAIL)$", walk, re.M)
    assert verdict, walk                                                       # the verdict, whatever it is
    assert f"walk-forward {verdict.group(1)}: " in walk                        # and what it means, one line
    assert len(re.findall(r"^   +fold +\d+ ", walk, re.M)) == 4          # before the sealed holdout
    step5 = out[out.index("6/6"):]
    assert f"prices:          DATA_SOURCE=sample: {LABEL}" in step5             # status --replay
    assert "(replay account)" in step5 and "fills (" in step5
    assert "healthy" in step5 or "warnings" in step5

    export = next(line.strip() for line in out.splitlines() if line.strip().startswith("export TRADING_HOME="))
    names = set(re.findall(r"(\w+)=", export))
    assert {"TRADING_HOME", "TRADING_CONFIG_DIR", "DATA_SOURCE"} <= names
    assert ". .venv/bin/activate" in out
    # what a user pastes into a fresh shell (no variable of the demo set), from the project folder
    script = f"{export}\n. .venv/bin/activate\npython audit_logging.py verify\necho verify=$?\n" \
             "./run_health_check.sh\necho health=$?\npython live_trading.py status --replay\necho status=$?\n"
    pasted = subprocess.run(["bash", "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    text = pasted.stdout
    assert "verify=0" in text and "Audit trail OK" in text, text + pasted.stderr
    health = int(re.search(r"health=(\d+)", text).group(1))
    assert health in (0, 1), text
    assert f"storage: {home}" in text                                          # the demo's home, not the project's
    assert "status=0" in text and LABEL in text and "(replay account)" in text


def test_demo_refuses_to_wipe_a_folder_it_did_not_make(tmp_path):
    home = tmp_path / "precious"
    home.mkdir()
    (home / "keep.txt").write_text("mine")
    done = run_command(["bash", "scripts/demo.sh"], env_extra={"DEMO_HOME": home}, timeout=60)
    assert done.returncode == 1 and "was not made by make demo" in done.stderr
    assert (home / "keep.txt").read_text() == "mine"
