"""docs/RUNBOOK.md is tested: every command of its ```bash blocks runs, from the project directory,
in a home prepared by the demo pipeline (data update, tiny training, a backtest, a replayed cycle)
with TRADING_HOME different from the project directory. Each must exit 0 (or a documented
"nothing found / warnings" code, below) and find what it looks for: every file a command names
under "${TRADING_HOME:-.}" exists, so a grep on a missing file cannot pass as "nothing found".
Commands marked `# live-only`, `# destructive` or `# long` are only syntax-checked (`bash -n`)."""
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

import alerts
import fork_runner
from alert_servers import WebhookServer
from conftest import ROOT, entry_env, project_state, run_entry

DOC = ROOT / "docs" / "RUNBOOK.md"
MARKER = re.compile(r"#\s*(live-only|destructive|long)\b")
HOME_PATH = re.compile(r'"\$\{TRADING_HOME:-\.\}"(/(?:\$\([^)]*\)|[^\s|;)&>\'"])+)')
TRAILING_COMMENT = re.compile(r"\s+#[^\"'\n]*$")
# documented non-zero exits that are not failures: grep's "no line matched" (on files that exist),
# the health check's "warnings", the backtest's and the gate's "criteria not met"
ALLOWED = [(re.compile(r"\bgrep\b"), {0, 1}), (re.compile(r"run_health_check\.sh"), {0, 1}),
           (re.compile(r"run_backtest\.sh"), {0, 1}), (re.compile(r"live_trading\.py gate"), {0, 1})]


def commands() -> list[tuple[int, str]]:
    """(line number, command) of every command in the doc's ```bash blocks; a line ending in a
    backslash continues on the next; blank and comment-only lines are skipped."""
    out, block, pending, start = [], False, "", 0
    for number, line in enumerate(DOC.read_text().splitlines(), 1):
        stripped = line.strip()
        if stripped.startswith("```"):
            block = stripped == "```bash" if not block else False
            continue
        if not block or (not pending and (not stripped or stripped.startswith("#"))):
            continue
        if not pending:
            start = number
        pending += stripped if not pending else "\n" + line
        if stripped.endswith("\\"):
            continue
        out.append((start, pending))
        pending = ""
    return out


def _split():
    run, syntax = [], []
    for number, cmd in commands():
        (syntax if MARKER.search(cmd) else run).append((number, cmd))
    return run, syntax


def test_the_doc_has_commands_of_every_kind():
    run, syntax = _split()
    assert len(run) >= 60 and len(syntax) >= 8, (len(run), len(syntax))
    text = DOC.read_text()
    for heading in ("## Monitoring & Alerts", "## Escalation"):
        assert heading in text
    for needed in ("python alerts.py test", "python alerts.py list", "./send_alert.sh",
                   "./run_health_check.sh --json", "python scheduler.py status",
                   "python scheduler.py --dry-run"):
        assert any(needed in cmd for _, cmd in run), needed


def test_no_command_assumes_the_home_is_the_project_directory():
    """Log and data paths in commands go through "${TRADING_HOME:-.}"."""
    bare = re.compile(r"(?<![\w/\"}.])(logs/|processed_stock_data\.csv|\*\.enc|\.schwab_config\.enc)")
    bad = [(n, c) for n, c in commands()
           if bare.search(re.sub(r"config\.path\('[^']*'\)", "", c))]
    assert not bad, bad


def test_marked_commands_are_valid_bash():
    _, syntax = _split()
    for number, cmd in syntax:
        done = subprocess.run(["bash", "-n", "-c", cmd], capture_output=True, text=True)
        assert done.returncode == 0, f"line {number}: {cmd}\n{done.stderr}"


def test_escalation_table_matches_the_alert_kinds():
    section = DOC.read_text().split("## Escalation", 1)[1].split("\n## ", 1)[0]
    listed = {}
    for row in section.splitlines():
        m = re.match(r"\|\s*\*\*(immediate|same day|next day)\*\*\s*\|", row)
        if m:
            for kind in re.findall(r"`([a-z_]+)`", row.rsplit("|", 2)[-2]):
                listed[kind] = m.group(1)
    assert listed == {k: v.severity for k, v in alerts.ALERT_KINDS.items()}


@pytest.fixture
def prepared(home, trained, tmp_path):
    """The demo pipeline in a home away from the project: data update, (tiny) model, a backtest,
    a replayed cycle on a session with trades, stored (fake) Schwab app credentials."""
    assert Path(home).resolve() != ROOT
    for args in (["data_collection.py"], ["backtest.py"], ["scheduler.py", "--dry-run"],
                 ["live_trading.py", "--as-of", trained["trade_day"]],
                 ["-c", "from credential_manager import CredentialManager; CredentialManager()"
                        ".store_credentials('schwab', {'app_key': 'K', 'app_secret': 'S'})"]):
        done = run_entry(args, home, timeout=600)
        if args[0] == "scheduler.py":        # what cron's redirection of ./run_scheduled.sh keeps
            (Path(home) / "logs" / "cron_trading.log").write_text(done.stdout)
        assert done.returncode in (0, 1) if args == ["backtest.py"] else done.returncode == 0, \
            f"{args}: {done.stdout[-1500:]}{done.stderr[-1500:]}"
    return home


def _missing_files(cmd: str, env: dict) -> list[str]:
    """Paths under "${TRADING_HOME:-.}" the command names that do not exist (globs expanded)."""
    missing = []
    for path in HOME_PATH.findall(cmd):
        if "INCIDENT" in path or path.endswith("/"):        # written by the command itself
            continue
        probe = f'shopt -s nullglob; f=("${{TRADING_HOME:-.}}"{path}); [ ${{#f[@]}} -gt 0 ] && [ -e "${{f[0]}}" ]'
        if subprocess.run(["bash", "-c", probe], env=env, cwd=ROOT).returncode != 0:
            missing.append(path)
    return missing


def _python_dir() -> str:
    """The folder of the fork server's ``python`` (tests/fork_runner.py), first on PATH, or nothing."""
    shim = fork_runner.python_shim()
    return f"{Path(shim).parent}:" if shim else ""


def test_every_runbook_command_runs_in_a_prepared_home(prepared, tmp_path):
    run, _ = _split()
    env = entry_env(prepared, {"TRAIN_PROFILE": "tiny", "TRADING_CRONTAB_FILE": tmp_path / "crontab",
                               "PATH": f"{_python_dir()}{Path(sys.executable).parent}:{os.environ['PATH']}"})
    failures, before = [], project_state()
    with WebhookServer() as hook:
        env["TRADING_ALERT_URLS"] = hook.url
        seen, timings = set(), []
        for number, cmd in run:
            same = TRAILING_COMMENT.sub("", cmd).strip()     # the command without its comment
            if same in seen:                # the same command again (the runbook repeats some)
                continue
            seen.add(same)
            missing = _missing_files(cmd, env)
            if missing:
                failures.append(f"line {number}: {cmd}\n  names files that do not exist: {missing}")
                continue
            started = time.monotonic()
            done = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], cwd=ROOT, env=env,
                                  capture_output=True, text=True, timeout=600)
            timings.append((time.monotonic() - started, number, cmd.splitlines()[0][:70]))
            allowed = set().union({0}, *(codes for rx, codes in ALLOWED if rx.search(cmd)))
            if done.returncode not in allowed or "Traceback" in done.stderr:
                failures.append(f"line {number}: {cmd}\n  exit {done.returncode}\n"
                                f"  {done.stdout[-600:]}\n  {done.stderr[-600:]}")
        titles = [p["title"] for p in hook.received]
    print("slowest runbook commands:", *(f"{t:6.1f} s  line {n}: {c}" for t, n, c in
                                          sorted(timings, reverse=True)[:10]), sep="\n  ")
    assert not failures, "\n".join(failures)
    # what the commands looked for was found: the alert test and the runbook's own message arrived
    assert any("Test alert" in t for t in titles), titles
    assert any("Message from the trading system" in t for t in titles), titles
    assert list(Path(prepared).glob("incident_*.log"))                    # the capture wrote its file
    status = run_entry(["live_trading.py", "status"], prepared)
    assert "kill switch" in status.stdout.lower() and status.returncode == 0
    assert project_state() == before                # nothing written in the project folder
