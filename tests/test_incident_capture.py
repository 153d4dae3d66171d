"""``./run_incident_capture.sh``: one file, private (0600) from its first byte, printed only once
written whole; a folder it cannot write (read-only, full, not a folder) is one ERROR line naming
the file and the fix, exit 1, nothing left behind; alert-URL secrets of any length stay out of the
logs and the capture."""
import os
import shlex
import stat

from alert_servers import free_port
from conftest import run_command, run_entry
from test_storage_faults import _full, _readonly, needs_namespace

# stands in for the Python the script runs (TRADING_PYTHON): shows the mode of the capture file
# while it is being written, and is fast
FAKE_PY = """#!/bin/sh
case "$2" in *find_spec*) exit 0;; esac      # _common.sh's check for the project's packages: all there
for f in "$TRADING_HOME"/.incident_*; do stat -c 'capture-mode %a %n' "$f"; done
echo "ran $*"
"""


def _fake_python(tmp_path):
    fake = tmp_path / "fake_python"
    fake.write_text(FAKE_PY)
    fake.chmod(0o755)
    return fake


def _one_error_line(done, *words):
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stdout == "", "printed a path it did not write: " + done.stdout
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("ERROR: cannot write the incident capture "), done.stderr
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


def test_capture_is_private_from_its_first_byte_and_names_the_user(tmp_path, trading_home):
    done = run_command(["./run_incident_capture.sh"], trading_home,
                       {"TRADING_PYTHON": _fake_python(tmp_path), "USER": None})
    assert done.returncode == 0, done.stderr
    out = done.stdout.strip()
    assert out.startswith(str(trading_home / "incident_")) and out.endswith(".log")
    text = open(out).read()
    modes = [line.split()[1] for line in text.splitlines() if line.startswith("capture-mode ")]
    assert modes and set(modes) == {"600"}, text          # while being written, too
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o600
    import pwd
    assert f" by {pwd.getpwuid(os.geteuid()).pw_name}" in text.splitlines()[0]
    assert [p.name for p in trading_home.iterdir() if p.name.startswith(".incident_")] == []


def test_a_folder_that_is_a_file_is_one_line(tmp_path, trading_home):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    done = run_command(["./run_incident_capture.sh", blocker], trading_home,
                       {"TRADING_PYTHON": _fake_python(tmp_path)})
    _one_error_line(done, str(blocker / "incident_"), "Not a directory", "Fix:")
    assert blocker.read_text() == "x"


def _in_namespace(setup, command, home, env_extra):
    script = f"set -e; {setup}; exec \"$@\""
    return run_command(["unshare", "-m", "sh", "-c", script, "sh", *command], home, env_extra)


@needs_namespace
def test_read_only_home_is_one_line_and_no_path(tmp_path, trading_home):
    done = _in_namespace(_readonly(trading_home), ["./run_incident_capture.sh"], trading_home,
                         {"TRADING_PYTHON": _fake_python(tmp_path)})
    _one_error_line(done, str(trading_home / "incident_"), "Read-only file system", "remount",
                    "./run_incident_capture.sh /tmp")
    assert list(trading_home.iterdir()) == []


@needs_namespace
def test_full_disk_is_one_line_and_no_file_left(tmp_path, trading_home):
    h = shlex.quote(str(trading_home))
    done = _in_namespace(_full(trading_home, size="1m"),
                         ["sh", "-c", f"./run_incident_capture.sh; rc=$?; ls -A {h} >&2; exit $rc"],
                         trading_home, {"TRADING_PYTHON": _fake_python(tmp_path)})
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stdout == ""
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert "No space left on device" in lines[0] and "free space on" in lines[0]
    assert not any("incident" in line for line in lines[1:]), lines     # nothing left behind


def test_short_alert_url_secrets_stay_out_of_the_logs_and_the_capture(trading_home):
    secrets = ["uQ7", "pZ9", "hK3", "tW5", "kY2", "hV4", "mQ2", "mW6"]
    dead = free_port()
    urls = (f"json://uQ7:pZ9@127.0.0.1:{dead}/hK3/tW5?token=kY2&+X-Key=hV4 "
            f"mailto://mQ2:mW6@127.0.0.1:{dead}?to=ops@example.com")
    tested = run_entry(["alerts.py", "test"], trading_home, {"TRADING_ALERT_URLS": urls}, timeout=120)
    assert tested.returncode == 1 and "0/2 channel(s) reached" in tested.stdout, tested.stdout + tested.stderr
    listed = run_entry(["alerts.py", "list"], trading_home, {"TRADING_ALERT_URLS": urls})
    assert f"json://***:***@127.0.0.1:{dead}/***?token=***&+X-Key=***" in listed.stdout, listed.stdout
    capture = run_command(["./run_incident_capture.sh"], trading_home, {"TRADING_ALERT_URLS": urls}, timeout=300)
    assert capture.returncode == 0, capture.stderr
    texts = {p.name: p.read_text() for p in (trading_home / "logs").glob("*.log")}
    texts["capture"] = open(capture.stdout.strip()).read()
    texts["output"] = tested.stdout + tested.stderr + listed.stdout + listed.stderr
    assert "Alert channel json://***:***@127.0.0.1" in "".join(texts.values())
    for name, text in texts.items():
        for secret in secrets:
            assert secret not in text, (secret, name)
