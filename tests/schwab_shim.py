"""Run a project entry point with schwab-py routed to the fake Schwab (tests/fake_schwab_server.py).

    FAKE_SCHWAB_URL=http://127.0.0.1:PORT python tests/schwab_shim.py live_trading.py [args...]
    FAKE_SCHWAB_URL=...                    python tests/schwab_shim.py -m module [args...]
    FAKE_SCHWAB_URL=...                    python tests/schwab_shim.py -c "code" [args...]

The only change to the program is at the HTTP layer: schwab-py builds its session with authlib's
``OAuth2Client`` (an ``httpx.Client``); the shim installs a subclass as ``schwab.auth.OAuth2Client``
whose transport sends every request for https://api.schwabapi.com to FAKE_SCHWAB_URL instead
(same path, query, headers and body; the Host header still says api.schwabapi.com). schwab-py
builds the real requests, refreshes the real token and writes it back; no project module is
touched. The program then runs as ``__main__`` with runpy, so ``sys.exit``, failpoints
(``os._exit(99)``) and signals behave exactly as when it is started directly.

Without FAKE_SCHWAB_URL, or for any other host, requests fail with a connection error: a program
started through the shim can never reach the real Schwab. FAKE_SCHWAB_URL must point at
127.0.0.1 or localhost.
"""
import os
import runpy
import sys
import warnings
from urllib.parse import urlsplit

ENV_URL = "FAKE_SCHWAB_URL"
SCHWAB_HOST = "api.schwabapi.com"
USAGE = "usage: python tests/schwab_shim.py (SCRIPT.py | -m MODULE | -c CODE) [args...]"


def _target(url: str | None) -> tuple[str, int] | None:
    if not url:
        return None
    parts = urlsplit(url)
    if parts.scheme != "http" or parts.hostname not in ("127.0.0.1", "localhost") or not parts.port:
        sys.exit(f"schwab_shim: {ENV_URL}={url!r} must be http://127.0.0.1:PORT (a local fake Schwab)")
    return parts.hostname, parts.port


def routed_client_class(url: str | None = None):
    """authlib's OAuth2Client, with every request for api.schwabapi.com sent to ``url``
    (default $FAKE_SCHWAB_URL; none: every request fails to connect)."""
    import httpx
    with warnings.catch_warnings():           # authlib warns about its httpx fallback on import
        import authlib.deprecate  # noqa: F401  (it installs an "always" filter on import)
        warnings.simplefilter("ignore")
        import schwab.auth  # noqa: F401
        from authlib.integrations.httpx_client import OAuth2Client
    target = _target(url if url is not None else os.environ.get(ENV_URL))

    class FakeSchwabTransport(httpx.BaseTransport):
        """Rewrites https://api.schwabapi.com/... to the fake; refuses every other host."""

        def __init__(self, **kwargs):
            self._inner = httpx.HTTPTransport(**kwargs)

        def handle_request(self, request: httpx.Request) -> httpx.Response:
            if target is None or request.url.host != SCHWAB_HOST:
                raise httpx.ConnectError(
                    f"schwab_shim: {request.url.host} is not reachable from tests "
                    f"({ENV_URL} {'is not set' if target is None else 'routes only ' + SCHWAB_HOST})",
                    request=request)
            request.url = request.url.copy_with(scheme="http", host=target[0], port=target[1])
            return self._inner.handle_request(request)

        def close(self) -> None:
            self._inner.close()

    class RoutedOAuth2Client(OAuth2Client):
        def __init__(self, *args, **kwargs):
            kwargs["transport"] = FakeSchwabTransport()
            super().__init__(*args, **kwargs)

    return RoutedOAuth2Client


def install(url: str | None = None) -> None:
    """Route schwab-py's HTTP to the fake server, for the whole process."""
    routed = routed_client_class(url)         # imports schwab quietly first
    import schwab.auth
    schwab.auth.OAuth2Client = routed


def main(argv: list[str]) -> None:
    if not argv or argv[0] in ("-h", "--help"):
        sys.exit(USAGE)
    install()
    if argv[0] == "-m":
        if len(argv) < 2:
            sys.exit(USAGE)
        sys.argv = [argv[1], *argv[2:]]
        sys.path[0] = os.getcwd()
        runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
    elif argv[0] == "-c":
        if len(argv) < 2:
            sys.exit(USAGE)
        sys.argv = ["-c", *argv[2:]]
        sys.path[0] = ""
        code = compile(argv[1], "<string>", "exec")
        exec(code, {"__name__": "__main__", "__builtins__": __builtins__})
    else:
        script = os.path.abspath(argv[0])
        sys.argv = [argv[0], *argv[1:]]
        sys.path[0] = os.path.dirname(script)
        runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main(sys.argv[1:])
