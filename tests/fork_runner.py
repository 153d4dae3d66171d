"""``run(cmd, cwd, env, timeout, input)``: ``subprocess.run(cmd, capture_output=True, text=True)``,
through the fork server (tests/entry_server.py) when the command is ``python SCRIPT.py ...`` or
``python -c CODE`` and nothing in its environment changes how the interpreter itself starts.

The child is still a process of its own with the command's environment, working directory, exit
status and output; only the interpreter's start-up and the big third-party imports are shared.
Everything else (another program, faketime's LD_PRELOAD, another PYTHONPATH or PYTHONHASHSEED,
``TESTS_FORK_SERVER=0``) runs as a plain subprocess. One server per test process, started on
first use, ended with it.
"""
from __future__ import annotations

import atexit
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

SERVER = Path(__file__).with_name("entry_server.py")
# variables the interpreter reads when it starts (beyond the ones it reads as it runs)
START_VARIABLES = ("LD_PRELOAD", "FAKETIME", "FAKETIME_DONT_FAKE_MONOTONIC", "PYTHONPATH", "PYTHONHASHSEED",
                   "PYTHONIOENCODING", "PYTHONWARNINGS", "PYTHONDEVMODE", "PYTHONOPTIMIZE", "PYTHONSAFEPATH",
                   "PYTHONUTF8", "PYTHONHOME", "PYTHONNOUSERSITE", "PYTHONSTARTUP", "PYTHONTRACEMALLOC",
                   "PYTHONFAULTHANDLER", "PYTHONMALLOC", "LC_ALL", "LC_CTYPE", "LANG", "OPENBLAS_NUM_THREADS",
                   "OMP_NUM_THREADS", "MKL_NUM_THREADS")

_lock = threading.Lock()
_server: dict = {}


def _start() -> str | None:
    """The socket path of this process's server, started on first use (None: not available)."""
    with _lock:
        if _server.get("pid") == os.getpid():
            return _server["path"] if _server["proc"].poll() is None else None
        folder = tempfile.mkdtemp(prefix="forksrv-")
        path = os.path.join(folder, "s")
        proc = subprocess.Popen([sys.executable, str(SERVER), path], stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, env=dict(os.environ),
                                cwd=str(SERVER.parent))
        ready = proc.stdout.readline() if proc.stdout else b""
        _server.update(pid=os.getpid(), path=path, proc=proc, env=dict(os.environ))
        if ready.strip() != b"ready":
            proc.kill()
            return None
        atexit.register(_stop, proc)
        return path


SHIM = """#!{exe} -IS
# `python` for shell scripts run by the tests (run_*.sh, the demo, the runbook's commands): hands
# `python SCRIPT.py ...` / `python -c CODE` to the fork server (tests/entry_server.py) with this
# process's own stdin, stdout, stderr, directory and environment, forwards SIGTERM/SIGINT/SIGHUP to
# the child and ends as it ended; anything else runs the real interpreter. Written by tests/fork_runner.py.
import os, sys
REAL, SOCKET, BASE, START = {exe!r}, {path!r}, {base!r}, {start!r}
args = sys.argv[1:]
def real():
    os.execv(REAL, [REAL, *args])
runnable = len(args) >= 1 and ((args[0] == "-c" and len(args) >= 2) or (args[0].endswith(".py") and not args[0].startswith("-")))
if not runnable or os.environ.get("TESTS_FORK_SERVER", "1") == "0" or any(os.environ.get(k) != BASE.get(k) for k in START):
    real()
import json, signal, socket, struct
conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
try:
    conn.connect(SOCKET)
except OSError:
    real()
request = json.dumps({{"argv": args, "cwd": os.getcwd(), "env": dict(os.environ)}}).encode()
socket.send_fds(conn, [struct.pack("!I", len(request))], [0, 1, 2])
conn.sendall(request)
def read4():
    data = b""
    while len(data) < 4:
        chunk = conn.recv(4 - len(data))
        if not chunk:
            sys.exit("fork server: no answer")
        data += chunk
    return struct.unpack("!i", data)[0]
pid = read4()
for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
    signal.signal(sig, lambda s, f: os.kill(pid, s))
code = os.waitstatus_to_exitcode(read4())
if code < 0:
    signal.signal(-code, signal.SIG_DFL)
    os.kill(os.getpid(), -code)
sys.exit(code)
"""


def python_shim() -> str | None:
    """A ``python`` for shell scripts (TRADING_PYTHON, PATH) that goes through this process's fork
    server, or None when the server is not available (then use sys.executable)."""
    if os.environ.get("TESTS_FORK_SERVER", "1") == "0":
        return None
    path = _start()
    if path is None:
        return None
    shim = Path(path).with_name("python")
    if not shim.exists():
        base = {name: _server["env"].get(name) for name in START_VARIABLES}
        shim.write_text(SHIM.format(exe=sys.executable, path=path, base=base, start=START_VARIABLES))
        shim.chmod(0o755)
    return str(shim)


def _stop(proc: subprocess.Popen) -> None:
    proc.kill()
    proc.wait()          # reaped, so the CPU time of its children counts in this process's (time, bench)


def _eligible(cmd: list[str], env: dict) -> bool:
    if os.environ.get("TESTS_FORK_SERVER", "1") == "0" or len(cmd) < 2 or cmd[0] != sys.executable:
        return False
    if not (cmd[1] == "-c" and len(cmd) >= 3) and not (cmd[1].endswith(".py") and not cmd[1].startswith("-")):
        return False
    base = _server.get("env") or os.environ
    return all(env.get(name) == base.get(name) for name in START_VARIABLES)


def _text(data: bytes) -> str:
    return data.decode("utf-8", errors="replace").replace("\r\n", "\n").replace("\r", "\n")


def run(cmd, cwd, env: dict, timeout: float | None = None, input: str | None = None) -> subprocess.CompletedProcess:
    cmd = [str(c) for c in cmd]
    path = _start() if _eligible(cmd, env) else None
    if path is None:
        return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, input=input)
    with tempfile.TemporaryFile() as stdin, tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        if input is not None:
            stdin.write(input.encode())
            stdin.seek(0)
        request = json.dumps({"argv": cmd[1:], "cwd": str(cwd), "env": env}).encode()
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.connect(path)
            socket.send_fds(conn, [struct.pack("!I", len(request))], [stdin.fileno(), out.fileno(), err.fileno()])
            conn.sendall(request)
            (pid,) = struct.unpack("!i", _read(conn, 4, None))
            try:
                (status,) = struct.unpack("!i", _read(conn, 4, timeout))
            except TimeoutError:
                os.kill(pid, signal.SIGKILL)
                _read(conn, 4, None)
                out.seek(0)
                err.seek(0)
                raise subprocess.TimeoutExpired(cmd, timeout, _text(out.read()), _text(err.read())) from None
        out.seek(0)
        err.seek(0)
        return subprocess.CompletedProcess(cmd, os.waitstatus_to_exitcode(status), _text(out.read()),
                                           _text(err.read()))


def _read(conn: socket.socket, size: int, timeout: float | None) -> bytes:
    conn.settimeout(timeout)
    data = b""
    while len(data) < size:
        try:
            chunk = conn.recv(size - len(data))
        except socket.timeout:
            raise TimeoutError from None
        if not chunk:
            raise ConnectionError("the fork server ended without an answer")
        data += chunk
    return data
