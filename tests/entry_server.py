"""A fork server for the tests' project commands: ``python SCRIPT.py args`` and ``python -c CODE``
without paying the interpreter's and the big libraries' start-up each time.

Most of the suite's time went into starting Python and importing pandas, numpy,
exchange_calendars and apprise again in every subprocess (about 1.5 s of CPU each, several
hundred times). This server imports those third-party libraries once (never a project module,
never TensorFlow, schwab-py or anything that reads the environment when imported) and forks a
child per command. The child is a real process of its own, as with ``subprocess.run``: it gets
the command's own stdin/stdout/stderr (passed as file descriptors), working directory,
environment, ``sys.argv`` and ``sys.path[0]``, imports every project module fresh, runs the
script as ``__main__`` with runpy (as ``tests/schwab_shim.py`` does), runs its ``atexit``
handlers and exits with the program's status; a failpoint's ``os._exit(99)`` or a signal ends it
exactly as it would end ``python SCRIPT.py``.

Protocol (one connection per command, a Unix socket): the client sends a 4-byte length, a JSON
request ``{"argv": [...], "cwd": str, "env": {...}}`` and three descriptors (stdin, stdout,
stderr); the server answers the child's pid (4 bytes) and, when it has ended, its wait status
(4 bytes, signed). ``tests/conftest.py`` (``run_command``) decides which commands go here and
falls back to a plain subprocess for everything else (LD_PRELOAD/faketime, other PYTHON*
variables, ``TESTS_FORK_SERVER=0``).

    python tests/entry_server.py SOCKET_PATH
"""
from __future__ import annotations

import atexit
import io
import json
import os
import random
import runpy
import signal
import socket
import struct
import sys
import threading
import time
import types
import warnings

# third-party libraries only: nothing that reads the environment or the clock when imported
PRELOAD = ("numpy", "pandas", "exchange_calendars", "apprise", "httpx", "cryptography.fernet", "filelock")


def _preload() -> None:
    for name in PRELOAD:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                __import__(name)
        except ImportError:
            pass


def _stream(fd: int, mode: str, unbuffered: bool):
    """A fresh sys.std* over descriptor ``fd``, buffered as a new interpreter would make it."""
    raw = io.FileIO(fd, mode, closefd=False)
    if mode == "rb":
        return io.TextIOWrapper(io.BufferedReader(raw), encoding="utf-8", errors="strict")
    binary = raw if unbuffered else io.BufferedWriter(raw)
    errors = "backslashreplace" if fd == 2 else "strict"
    return io.TextIOWrapper(binary, encoding="utf-8", errors=errors, write_through=unbuffered,  # type: ignore[arg-type]
                            line_buffering=(fd == 2 and not unbuffered))


def _exit_code(exc: SystemExit) -> int:
    code = exc.code
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


def _run_child(request: dict, fds: list[int]) -> None:
    """In the forked child: become the command, run it, exit. Never returns."""
    code = 1
    try:
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGCHLD, signal.SIGHUP):
            signal.signal(sig, signal.default_int_handler if sig == signal.SIGINT else signal.SIG_DFL)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        time.tzset()
        unbuffered = bool(os.environ.get("PYTHONUNBUFFERED"))
        sys.stdin, sys.stdout, sys.stderr = (_stream(0, "rb", False), _stream(1, "wb", unbuffered),
                                             _stream(2, "wb", unbuffered))
        sys.__stdin__, sys.__stdout__, sys.__stderr__ = sys.stdin, sys.stdout, sys.stderr
        random.seed()
        try:
            import numpy
            numpy.random.seed(None)
        except ImportError:
            pass
        argv = request["argv"]
        try:
            if argv[0] == "-c":
                sys.argv = ["-c", *argv[2:]]
                sys.path[0] = ""
                main = types.ModuleType("__main__")
                main.__dict__["__builtins__"] = __builtins__
                sys.modules["__main__"] = main
                exec(compile(argv[1], "<string>", "exec"), main.__dict__)
            else:
                script = os.path.abspath(argv[0])
                sys.argv = list(argv)
                sys.path[0] = os.path.dirname(script)
                runpy.run_path(script, run_name="__main__")
            code = 0
        except SystemExit as exc:
            code = _exit_code(exc)
        except BaseException:                       # what the interpreter does with an uncaught one
            sys.excepthook(*sys.exc_info())
            code = 1
        try:
            threading._shutdown()                   # type: ignore[attr-defined]  (join non-daemon threads)
        except Exception:
            pass
        atexit._run_exitfuncs()
    except BaseException:
        code = 1
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        os._exit(code)


def _receive(conn: socket.socket) -> tuple[dict, list[int]]:
    head, fds, _flags, _addr = socket.recv_fds(conn, 4, 3)
    (size,) = struct.unpack("!I", head)
    body = b""
    while len(body) < size:
        chunk = conn.recv(size - len(body))
        if not chunk:
            raise ConnectionError("request cut short")
        body += chunk
    return json.loads(body), list(fds)


OPEN: set = set()          # the listening socket and every connection still answered: closed in a child


def _serve_one(conn: socket.socket) -> None:
    try:
        request, fds = _receive(conn)
    except (OSError, ValueError):
        conn.close()
        return
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        for other in (conn, *OPEN):
            other.close()
        _run_child(request, fds)
    OPEN.add(conn)
    for fd in fds:
        os.close(fd)

    def wait_and_answer():
        try:
            conn.sendall(struct.pack("!i", pid))
        except OSError:
            pass
        _, status = os.waitpid(pid, 0)
        try:
            conn.sendall(struct.pack("!i", status))
        except OSError:
            pass
        OPEN.discard(conn)
        conn.close()
    threading.Thread(target=wait_and_answer, daemon=True).start()


def _exit_with_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(0)


def main(path: str) -> None:
    _preload()
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(16)
    OPEN.add(server)
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True).start()
    print("ready", flush=True)
    while True:
        conn, _ = server.accept()
        _serve_one(conn)


if __name__ == "__main__":
    main(sys.argv[1])
