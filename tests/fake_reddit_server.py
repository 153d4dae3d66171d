"""A fake Reddit API on 127.0.0.1 for PRAW (the real client), answering what praw 8 / prawcore 4
call for a read-only "script" app:

    POST /api/v1/access_token       grant_type=client_credentials, HTTP basic auth client_id:secret
                                    -> {"access_token", "token_type", "expires_in", "scope"};
                                    wrong id or secret -> 401 (prawcore raises ResponseException)
    GET  /r/{sub}/new               a Listing of t3 (posts), ``limit`` and ``after`` paging
    GET  /r/{sub}/comments/         a Listing of t1 (comments), same paging
    an unknown subreddit            -> 404

PRAW is pointed here through its own settings (``oauth_url`` and ``reddit_url``: the tunables
``REDDIT_OAUTH_URL`` / ``REDDIT_URL``). Every response carries Reddit's ``x-ratelimit-*`` headers
(plenty remaining, so prawcore's rate limiter never sleeps). ``delay_s`` makes every listing answer
that late (a timeout); ``status`` makes every listing answer with that HTTP status (429, 500...).
A test adds posts and comments (``add_post``, ``add_comment``) with their ``created_utc``."""
from __future__ import annotations

import base64
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlsplit

CLIENT_ID = "fake-client-id-123"
CLIENT_SECRET = "fake-client-secret-456"
USER_AGENT = "lstm-trader tests (by u/nobody)"
TOKEN = "fake-bearer-token-789"


class FakeReddit:
    def __init__(self):
        self.posts: dict[str, list[dict]] = {}
        self.comments: dict[str, list[dict]] = {}
        self.requests: list[tuple[str, str, dict]] = []
        self.delay_s = 0.0
        self.status: int | None = None
        self._next = 1000
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):          # quiet
                pass

            def _answer(self, status: int, payload) -> None:
                body = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json; charset=UTF-8")
                    self.send_header("Content-Length", str(len(body)))
                    self.send_header("x-ratelimit-remaining", "99.0")
                    self.send_header("x-ratelimit-used", "1")
                    self.send_header("x-ratelimit-reset", "60")
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):   # the client gave up (a timeout test)
                    pass

            def do_POST(self):
                parts = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                form = dict(parse_qsl(self.rfile.read(length).decode())) if length else {}
                outer.requests.append(("POST", parts.path, form))
                if parts.path != "/api/v1/access_token":
                    return self._answer(404, {"message": "Not Found", "error": 404})
                auth = self.headers.get("Authorization", "")
                expected = "Basic " + base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()
                if auth != expected:
                    return self._answer(401, {"message": "Unauthorized", "error": 401})
                if form.get("grant_type") != "client_credentials":
                    return self._answer(200, {"error": "unsupported_grant_type"})
                return self._answer(200, {"access_token": TOKEN, "token_type": "bearer", "expires_in": 86400,
                                          "scope": "*"})

            def do_GET(self):
                parts = urlsplit(self.path)
                query = dict(parse_qsl(parts.query))
                outer.requests.append(("GET", parts.path, query))
                if self.headers.get("Authorization") != f"bearer {TOKEN}":
                    return self._answer(401, {"message": "Unauthorized", "error": 401})
                pieces = [p for p in parts.path.split("/") if p]
                if len(pieces) != 3 or pieces[0] != "r" or pieces[2] not in ("new", "comments"):
                    return self._answer(404, {"message": "Not Found", "error": 404})
                if outer.delay_s:
                    time.sleep(outer.delay_s)
                if outer.status:
                    return self._answer(outer.status, {"message": "fake status", "error": outer.status})
                sub = pieces[1].lower()
                store, kind = (outer.posts, "t3") if pieces[2] == "new" else (outer.comments, "t1")
                if sub not in outer.posts and sub not in outer.comments:
                    return self._answer(404, {"message": "Not Found", "error": 404, "reason": "banned"})
                items = sorted(store.get(sub, []), key=lambda d: -d["created_utc"])
                start = 0
                if query.get("after"):
                    names = [f"{kind}_{d['id']}" for d in items]
                    start = names.index(query["after"]) + 1 if query["after"] in names else len(items)
                limit = int(query.get("limit", 25))
                page = items[start:start + limit]
                after = f"{kind}_{page[-1]['id']}" if page and start + limit < len(items) else None
                return self._answer(200, {"kind": "Listing", "data": {
                    "after": after, "before": None, "dist": len(page), "modhash": None,
                    "children": [{"kind": kind, "data": d} for d in page]}})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    def _id(self) -> str:
        self._next += 1
        return f"x{self._next:x}"

    def subreddit(self, name: str) -> None:
        self.posts.setdefault(name.lower(), [])
        self.comments.setdefault(name.lower(), [])

    def add_post(self, sub: str, title: str, created_utc: float, selftext: str = "") -> str:
        self.subreddit(sub)
        pid = self._id()
        self.posts[sub.lower()].append({
            "id": pid, "name": f"t3_{pid}", "title": title, "selftext": selftext, "created_utc": float(created_utc),
            "subreddit": sub, "author": "someone", "permalink": f"/r/{sub}/comments/{pid}/x/", "url": "",
            "score": 1, "num_comments": 0, "over_18": False})
        return pid

    def add_comment(self, sub: str, body: str, created_utc: float) -> str:
        self.subreddit(sub)
        cid = self._id()
        self.comments[sub.lower()].append({
            "id": cid, "name": f"t1_{cid}", "body": body, "created_utc": float(created_utc), "subreddit": sub,
            "author": "someone", "link_id": "t3_abc", "parent_id": "t3_abc", "replies": "", "score": 1,
            "permalink": f"/r/{sub}/comments/abc/x/{cid}/"})
        return cid
