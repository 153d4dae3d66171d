"""A fake Telegram Bot API on 127.0.0.1: a real HTTP server answering ``/bot<TOKEN>/<method>``
as the Bot API does (https://core.telegram.org/bots/api), for the methods the control bot
uses: ``getUpdates`` (``offset``: updates below it are confirmed and dropped for good, as
Telegram does; ``timeout``: a long poll that waits for an update; ``limit``), ``sendMessage``
and ``getMe``. Answers are ``{"ok": true, "result": ...}``; a wrong token gets 401
``{"ok": false, "error_code": 401, "description": "Unauthorized"}``.

A test pushes what a person types (``push("/halt lunch", chat_id=111, username="ann")``) and
reads the bot's replies (``sent``) and every request seen (``requests``)."""
from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlsplit


class FakeTelegram:
    def __init__(self, token: str = "123456789:AAE-fake-bot-token-for-tests-only"):
        self.token = token
        self.updates: list[dict] = []        # not yet confirmed
        self.sent: list[dict] = []           # sendMessage calls: {"chat_id", "text"}
        self.requests: list[tuple[str, dict]] = []
        self._next_update = 500_000
        self._next_message = 1
        self._cond = threading.Condition()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):          # quiet
                pass

            def _params(self) -> dict:
                params = dict(parse_qsl(urlsplit(self.path).query))
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    body = self.rfile.read(length)
                    ctype = self.headers.get("Content-Type", "")
                    if "json" in ctype:
                        params.update(json.loads(body or b"{}"))
                    else:
                        params.update(parse_qsl(body.decode()))
                return params

            def _answer(self, status: int, payload: dict) -> None:
                body = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _handle(self):
                parts = urlsplit(self.path).path.strip("/").split("/")
                if len(parts) != 2 or parts[0] != f"bot{outer.token}":
                    self._answer(401, {"ok": False, "error_code": 401, "description": "Unauthorized"})
                    return
                method, params = parts[1], self._params()
                outer.requests.append((method, params))
                handler = {"getUpdates": outer._get_updates, "sendMessage": outer._send_message,
                           "getMe": outer._get_me}.get(method)
                if handler is None:
                    self._answer(404, {"ok": False, "error_code": 404, "description": "Not Found"})
                    return
                try:
                    result = handler(params)
                except ValueError as exc:
                    self._answer(400, {"ok": False, "error_code": 400, "description": f"Bad Request: {exc}"})
                    return
                self._answer(200, {"ok": True, "result": result})

            do_GET = do_POST = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        """The base URL to use instead of https://api.telegram.org."""
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        with self._cond:
            self._cond.notify_all()
        self.server.shutdown()
        self.server.server_close()

    # ------------------------------------------------------------------ what a person does
    def push(self, text: str, chat_id: int = 111, username: str | None = "ann", date: int | None = None) -> int:
        """A message typed in chat ``chat_id`` (at ``date``, Unix time; default now); returns its update_id."""
        with self._cond:
            update_id = self._next_update
            self._next_update += 1
            sender = {"id": chat_id, "is_bot": False, "first_name": username or "someone"}
            if username:
                sender["username"] = username
            self.updates.append({"update_id": update_id, "message": {
                "message_id": self._next_message, "from": sender,
                "chat": {"id": chat_id, "type": "private"}, "date": int(time.time()) if date is None else date,
                "text": text}})
            self._next_message += 1
            self._cond.notify_all()
        return update_id

    def replies(self, chat_id: int | None = None) -> list[str]:
        return [m["text"] for m in self.sent if chat_id is None or m["chat_id"] == chat_id]

    # ------------------------------------------------------------------ the Bot API methods
    def _get_updates(self, params: dict) -> list[dict]:
        offset = int(params.get("offset") or 0)
        timeout = float(params.get("timeout") or 0)
        limit = int(params.get("limit") or 100)
        deadline = time.monotonic() + timeout
        with self._cond:
            if offset:                       # confirmed: Telegram never returns them again
                self.updates = [u for u in self.updates if u["update_id"] >= offset]
            while not self.updates and time.monotonic() < deadline:
                self._cond.wait(min(0.05, max(0.0, deadline - time.monotonic())))
            return list(self.updates[:limit])

    def _send_message(self, params: dict) -> dict:
        if "chat_id" not in params or not str(params.get("text") or "").strip():
            raise ValueError("message text is empty" if "chat_id" in params else "chat not found")
        if len(str(params["text"])) > 4096:
            raise ValueError("message is too long")
        chat_id = int(params["chat_id"])
        with self._cond:
            self.sent.append({"chat_id": chat_id, "text": str(params["text"])})
            message_id = self._next_message
            self._next_message += 1
        return {"message_id": message_id, "chat": {"id": chat_id, "type": "private"},
                "date": int(time.time()), "text": str(params["text"])}

    def _get_me(self, params: dict) -> dict:
        return {"id": int(self.token.split(":")[0]), "is_bot": True, "first_name": "trader",
                "username": "fake_trader_bot"}
