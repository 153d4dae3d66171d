"""Control from the phone: a Telegram bot that answers the operator's commands.

Plain HTTPS long polling of the Bot API (``getUpdates`` with ``offset`` and ``timeout``,
``sendMessage``) through httpx; the base URL is ``constants.TELEGRAM_API_URL`` (a local fake in
the tests). Commands, each running the same function as the command line:

==========================  ===========================================================
``/status``                 ``python live_trading.py status``
``/signals``                ``python live_trading.py signals`` (nothing traded)
``/halt <reason>``          ``python live_trading.py halt --reason`` (the sender is recorded)
``/resume <reason>``        ``python live_trading.py resume --reason``
``/flatten``                replies with a one-time code; ``/flatten <code>`` within
                            ``TELEGRAM_FLATTEN_CODE_MIN`` minutes, from the same chat, runs
                            ``python live_trading.py flatten --confirm FLATTEN``; a code works once
``/health``                 ``./run_health_check.sh``
==========================  ===========================================================

Only the chat ids of the credentials are obeyed; a message from any other chat does nothing, gets
no answer and is audited as ``refused``. Every command is audited (``telegram_command``) with the
chat id and user name of its sender.

Exactly once: an update is first recorded in the state database (table ``telegram_updates``)
together with the new ``getUpdates`` offset, in one transaction; then it is marked ``running``,
executed and marked ``done``. A restart never takes an update twice (its id is below the stored
offset, or its row exists); an update left ``running`` by a crash is finished as follows:
``/halt`` only when the kill switch does not already hold its reason (marked with the update id),
``/flatten <code>`` again (the closing orders' client keys make a rerun send nothing twice),
``/resume`` never (the reply says so: a resume is never replayed over a newer halt), read-only
commands again. Flatten codes live in the table ``telegram_flatten_codes`` (single use, expiry).
Late commands (Telegram keeps updates a day while no poller runs): a ``/resume`` read more than
``TELEGRAM_RESUME_MAX_AGE_MIN`` after it was sent is not run (it could clear a newer halt); a late
``/halt`` still stops; a late ``/flatten <code>`` finds its code expired.

Command line::

    python telegram_control.py setup          # bot token and chat ids, stored encrypted (service telegram)
    python telegram_control.py poll --once    # one long-poll round (cron: every minute)
    python telegram_control.py serve          # poll until stopped (a systemd service)

The credentials (``bot_token``, ``chat_ids``) are shared with the alerts: when they are set up,
alerts also go to those chats (``alerts.telegram_url``). See docs/RUNBOOK.md ("From the phone"),
docs/DEPLOYMENT.md and docs/SECURITY.md.
"""
from __future__ import annotations

import argparse
import contextlib
import getpass
import io
import logging
import re
import secrets
import sqlite3
import sys
import time
from datetime import datetime, timedelta

import httpx

import alerts
import clock
import config
import constants as C
import failpoints
import fileutil
import health_check
import kill_switch
import live_trading
import logging_setup
import state_db
from audit_logging import AuditLogger
from credential_manager import CredentialError, CredentialManager
from errors import (UsageError, UserFacingError, command_failed, failure_level, install_excepthook,
                    is_user_facing, one_line)

log = logging.getLogger("telegram")

OFFSET_KEY = "telegram_update_offset"
AUDIT_ACTION = "telegram_command"
COMMANDS = ("status", "signals", "halt", "resume", "flatten", "health", "help")
HELP = ("Commands: /status, /signals, /halt <reason>, /resume <reason>, /flatten (then /flatten <code>), "
        "/health")
SCHEMA = (
    """CREATE TABLE IF NOT EXISTS telegram_updates (
        update_id INTEGER PRIMARY KEY, chat_id INTEGER, username TEXT, command TEXT, args TEXT,
        sent_at INTEGER, status TEXT NOT NULL, received_at TEXT NOT NULL, done_at TEXT, reply TEXT,
        replied INTEGER NOT NULL DEFAULT 0)""",
    """CREATE TABLE IF NOT EXISTS telegram_flatten_codes (
        code TEXT PRIMARY KEY, chat_id INTEGER NOT NULL, created_at TEXT NOT NULL,
        expires_at TEXT NOT NULL, used_by INTEGER)""",
)
EXIT_OK, EXIT_FAIL, EXIT_CONFIG = 0, 1, 2


class TelegramError(UserFacingError):
    """The Bot API could not be reached or refused a call (the token is never in the message)."""


class TelegramNotSetUp(UserFacingError):
    """No bot token or no chat id stored."""


# --------------------------------------------------------------------------- the Bot API
class BotAPI:
    """The two Bot API methods the bot uses, over plain HTTPS (httpx)."""

    def __init__(self, token: str, base_url: str | None = None, client: httpx.Client | None = None):
        logging_setup.register_secret(token)
        self._token = token
        self.base_url = (base_url or C.TELEGRAM_API_URL).rstrip("/")
        self._client = client or httpx.Client()

    def __repr__(self):
        return f"BotAPI({self.base_url})"

    def call(self, method: str, timeout_s: float = 0, **params):
        """``result`` of ``method``; a transport error or ``ok: false`` raises ``TelegramError``."""
        url = f"{self.base_url}/bot{self._token}/{method}"
        try:
            response = self._client.post(url, json=params, timeout=timeout_s + 15)
            data = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise TelegramError(f"the Telegram Bot API at {self.base_url} did not answer {method} "
                                f"({type(exc).__name__}: {logging_setup.redact(str(exc))}); check the "
                                f"network, or TELEGRAM_API_URL") from None
        if not isinstance(data, dict) or not data.get("ok"):
            description = data.get("description") if isinstance(data, dict) else None
            fix = ("the bot token is wrong or revoked: run python telegram_control.py setup"
                   if response.status_code == 401 else "see the description")
            raise TelegramError(f"the Telegram Bot API refused {method} (HTTP {response.status_code}: "
                                f"{logging_setup.redact(str(description))}); {fix}")
        return data.get("result")

    def get_updates(self, offset: int, timeout_s: float) -> list[dict]:
        return self.call("getUpdates", timeout_s=timeout_s, offset=offset, timeout=int(timeout_s),
                         allowed_updates=["message"]) or []

    def send_message(self, chat_id: int, text: str) -> None:
        self.call("sendMessage", chat_id=chat_id, text=text[:C.TELEGRAM_MESSAGE_LIMIT])

    def get_me(self) -> dict:
        return self.call("getMe") or {}

    def close(self) -> None:
        self._client.close()


# --------------------------------------------------------------------------- parsing
def parse_command(text: str) -> tuple[str, str]:
    """(command, rest) of ``/halt@MyBot lunch break`` -> ("halt", "lunch break"); ("", "") when
    the text is not a command."""
    text = (text or "").strip()
    if not text.startswith("/"):
        return "", ""
    head, _, rest = text.partition(" ")
    return head[1:].split("@", 1)[0].lower(), rest.strip()


def sender(chat_id: int, username: str | None) -> str:
    """Who, as the kill switch and the audit trail record it."""
    return f"telegram:@{username} (chat {chat_id})" if username else f"telegram:chat {chat_id}"


def _captured(fn, *args) -> tuple[int, str]:
    """Run a command-line function, returning its exit code and what it printed."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        code = fn(*args)
    return code, out.getvalue().strip()


def _halt_marker(update_id: int) -> str:
    return f"[telegram update {update_id}]"


# --------------------------------------------------------------------------- the bot
class ControlBot:
    """One poller: the Bot API, the chats it obeys, the state database and the audit trail."""

    def __init__(self, api: BotAPI, chat_ids, conn: sqlite3.Connection, audit: AuditLogger | None = None):
        self.api = api
        self.chat_ids = {int(c) for c in chat_ids}
        self.conn = conn
        self.audit = audit or AuditLogger()
        state_db.ensure_schema(conn, SCHEMA)

    # ------------------------------------------------------------------ one round
    def poll_once(self, timeout_s: float | None = None) -> int:
        """Finish what a crash left, take the new updates (one long poll), run them. Returns the
        number of updates taken."""
        timeout_s = C.TELEGRAM_POLL_TIMEOUT_S if timeout_s is None else timeout_s
        self.run_pending()
        offset = int(state_db.kv_get(self.conn, OFFSET_KEY, 0) or 0)
        updates = self.api.get_updates(offset, timeout_s)
        taken = sum(self._take(u) for u in sorted(updates, key=lambda u: int(u["update_id"])))
        self.run_pending()
        return taken

    def _take(self, update: dict) -> bool:
        """Record one update and move the offset past it, in one transaction; False when it was
        taken before (a restart between the two getUpdates)."""
        update_id = int(update["update_id"])
        message = update.get("message") or {}
        chat_id = (message.get("chat") or {}).get("id")
        username = (message.get("from") or {}).get("username")
        command, args = parse_command(message.get("text") or "")
        allowed = chat_id is not None and int(chat_id) in self.chat_ids
        status = "received" if allowed and command else ("refused" if not allowed else "ignored")
        with state_db.transaction(self.conn):
            offset = int(state_db.kv_get(self.conn, OFFSET_KEY, 0) or 0)
            if update_id < offset or self.conn.execute(
                    "SELECT 1 FROM telegram_updates WHERE update_id = ?", (update_id,)).fetchone():
                return False
            self.conn.execute(
                "INSERT INTO telegram_updates(update_id, chat_id, username, command, args, sent_at, status, "
                "received_at, done_at) VALUES(?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (update_id, chat_id, username, command, args, message.get("date"), status, state_db.utcnow(),
                 None if status == "received" else state_db.utcnow()))
            state_db.kv_set(self.conn, OFFSET_KEY, update_id + 1)
        details = self._details(update_id, chat_id, username, command, args)
        if status == "refused":
            log.warning("Telegram: %s from a chat not listed (%s) refused: nothing done",
                        f"/{command}" if command else "a message", sender(chat_id, username))
            self._audit("refused", details)
        elif status == "received":
            self._audit("received", details)
        return True

    def run_pending(self) -> None:
        """Run every taken update not yet done (oldest first), then send the replies not sent."""
        rows = self.conn.execute("SELECT * FROM telegram_updates WHERE status IN ('received', 'running') "
                                 "ORDER BY update_id").fetchall()
        for row in rows:
            self._run(dict(row))
        for row in self.conn.execute("SELECT update_id, chat_id, reply FROM telegram_updates WHERE "
                                     "status = 'done' AND replied = 0 ORDER BY update_id").fetchall():
            self._reply(row["update_id"], row["chat_id"], row["reply"])

    def _run(self, row: dict) -> None:
        update_id, chat_id, username = row["update_id"], row["chat_id"], row["username"]
        command, args = row["command"], row["args"] or ""
        interrupted = row["status"] == "running"
        with state_db.transaction(self.conn):
            self.conn.execute("UPDATE telegram_updates SET status = 'running' WHERE update_id = ?", (update_id,))
        who = sender(chat_id, username)
        outcome = "done"
        try:
            reply = self._execute(update_id, chat_id, who, command, args, interrupted, row.get("sent_at"))
        except Exception as exc:
            outcome = "failed"
            if is_user_facing(exc):
                log.log(failure_level(exc), "Telegram /%s from %s FAILED: %s", command, who, exc)
                reply = f"/{command} FAILED: {exc}"
            else:
                log.exception("Telegram /%s from %s FAILED with an unexpected error", command, who)
                reply = f"/{command} FAILED unexpectedly: {type(exc).__name__}: {exc} (see the trading log)"
        reply = logging_setup.redact(reply or f"/{command}: done")
        with state_db.transaction(self.conn):
            self.conn.execute("UPDATE telegram_updates SET status = 'done', done_at = ?, reply = ? "
                              "WHERE update_id = ?", (state_db.utcnow(), reply, update_id))
        shown = re.sub(r"\b\d{6}\b", "******", reply) if command == "flatten" else reply
        self._audit(outcome, dict(self._details(update_id, chat_id, username, command, args),
                                  reply=shown[:500]))
        self._reply(update_id, chat_id, reply)

    def _reply(self, update_id: int, chat_id: int, text: str) -> None:
        try:
            self.api.send_message(chat_id, text)
        except TelegramError as exc:
            log.warning("Telegram reply to update %s not sent (sent again next round): %s", update_id, exc)
            return
        with state_db.transaction(self.conn):
            self.conn.execute("UPDATE telegram_updates SET replied = 1 WHERE update_id = ?", (update_id,))

    # ------------------------------------------------------------------ the commands
    def _execute(self, update_id: int, chat_id: int, who: str, command: str, args: str,
                 interrupted: bool, sent_at: int | None = None) -> str:
        log.info("Telegram /%s from %s", command, who)
        if command in ("help", "start") or command not in COMMANDS:
            return (f"unknown command /{command}. " if command not in ("help", "start") else "") + HELP
        if command == "status":
            return _captured(live_trading.cmd_status, False, False)[1]
        if command == "signals":
            return _captured(live_trading.cmd_signals, None, False)[1]
        if command == "health":
            code, text = _captured(health_check.run, False)
            return text
        config.require_home(has_run=True)               # as the command line's halt/resume/flatten
        if command == "halt":
            if not args:
                raise UsageError("/halt needs a reason: /halt <reason>; nothing done")
            marker = _halt_marker(update_id)
            switch = kill_switch.get(self.conn) or {}
            if interrupted and any(marker in str(r.get("reason")) for r in switch.get("reasons") or []):
                return f"HALTED (already recorded before a restart): {args}"
            code, text = _captured(live_trading.cmd_halt, f"{args} {marker}", who)
            failpoints.failpoint("telegram_after_halt")
            return text
        if command == "resume":
            if not args:
                raise UsageError("/resume needs a reason: /resume <reason>; nothing done")
            age_min = (clock.now().timestamp() - sent_at) / 60 if sent_at else 0.0
            if age_min > C.TELEGRAM_RESUME_MAX_AGE_MIN:
                raise UsageError(f"this /resume was sent {age_min:.0f} minutes ago (the bot was not "
                                 f"polling); a late resume could clear a newer halt, so it is not run "
                                 f"(older than TELEGRAM_RESUME_MAX_AGE_MIN, {C.TELEGRAM_RESUME_MAX_AGE_MIN} "
                                 f"min): check /status and send /resume again")
            if interrupted:
                return ("this /resume was interrupted by a restart and is not run again (a newer halt "
                        "must not be cleared by it): check /status and send /resume again if needed")
            return _captured(live_trading.cmd_resume, args, who)[1]
        return self._flatten(update_id, chat_id, who, args)

    def _flatten(self, update_id: int, chat_id: int, who: str, code: str) -> str:
        if not code:
            code = f"{secrets.randbelow(10 ** 6):06d}"
            now = clock.now()
            expires = now + timedelta(minutes=C.TELEGRAM_FLATTEN_CODE_MIN)
            with state_db.transaction(self.conn):
                self.conn.execute("INSERT OR REPLACE INTO telegram_flatten_codes(code, chat_id, created_at, "
                                  "expires_at, used_by) VALUES(?, ?, ?, ?, NULL)",
                                  (code, chat_id, now.isoformat(), expires.isoformat()))
            return (f"/flatten stops trading, cancels every open order and closes EVERY position at "
                    f"market. To confirm, send within {C.TELEGRAM_FLATTEN_CODE_MIN} minutes:\n"
                    f"/flatten {code}")
        with state_db.transaction(self.conn):
            row = self.conn.execute("SELECT * FROM telegram_flatten_codes WHERE code = ? AND chat_id = ?",
                                    (code, chat_id)).fetchone()
            problem = None
            if row is None:
                problem = "is not a code this chat was given"
            elif row["used_by"] is not None and row["used_by"] != update_id:
                problem = "was used already (a code works once)"
            elif row["used_by"] is None and clock.now() > datetime.fromisoformat(row["expires_at"]):
                problem = f"has expired (valid {C.TELEGRAM_FLATTEN_CODE_MIN} minutes)"
            else:
                self.conn.execute("UPDATE telegram_flatten_codes SET used_by = ? WHERE code = ?",
                                  (update_id, code))
        if problem:
            raise UsageError(f"flatten code {code} {problem}: nothing done; send /flatten for a new code")
        code_, text = _captured(live_trading.cmd_flatten, "FLATTEN", False, C.FLATTEN_LOCK_WAIT_S, who)
        return ("FLATTENED: " if code_ == EXIT_OK else "flatten NOT complete: ") + "\n" + text

    # ------------------------------------------------------------------ audit
    @staticmethod
    def _details(update_id, chat_id, username, command, args) -> dict:
        shown = "(code given)" if command == "flatten" and args else args
        return {"update_id": update_id, "chat_id": chat_id, "username": username,
                "command": f"/{command}" if command else None, "args": shown}

    def _audit(self, status: str, details: dict) -> None:
        self.audit.log_event(AUDIT_ACTION, status, details)


# --------------------------------------------------------------------------- set-up and running
def credentials() -> tuple[str, list[int]]:
    """(token, chat ids) from the encrypted store, or ``TelegramNotSetUp``."""
    creds = alerts.telegram_credentials()
    if creds is None or not creds[1]:
        raise TelegramNotSetUp("the Telegram control bot is not set up (no bot token or no chat id in the "
                               "encrypted store): run python telegram_control.py setup")
    return creds


def _read_setup() -> dict:
    if sys.stdin.isatty():
        return {"bot_token": getpass.getpass("bot token (from @BotFather, hidden): ").strip(),
                "chat_ids": input("chat ids to obey (space-separated): ").strip()}
    data = {}
    for raw in sys.stdin.read().splitlines():
        name, sep, value = raw.strip().partition("=")
        if sep and name.strip() in ("bot_token", "chat_ids"):
            data[name.strip()] = value.strip()
    return data


def cmd_setup(check: bool) -> int:
    data = _read_setup()
    if not data.get("bot_token") or ":" not in data["bot_token"]:
        raise UsageError("a bot token looks like 123456789:AA... (from @BotFather); nothing stored")
    chats = alerts.parse_chat_ids(data.get("chat_ids"))
    if not chats:
        raise UsageError("give at least one chat id to obey (send /start to your bot, then read "
                         "https://api.telegram.org/bot<TOKEN>/getUpdates); nothing stored")
    logging_setup.register_secret(data["bot_token"])
    path = CredentialManager().store_credentials(
        C.TELEGRAM_CREDENTIAL_SERVICE, {"bot_token": data["bot_token"], "chat_ids": " ".join(map(str, chats))})
    log.info("Telegram control set up: %d chat(s)", len(chats))
    print(f"Stored the bot token and {len(chats)} chat id(s) in {path} (mode 0600); alerts go to "
          f"these chats too")
    if check:
        api = BotAPI(data["bot_token"])
        try:
            me = api.get_me()
        finally:
            api.close()
        print(f"the bot answers: @{me.get('username')}")
    return EXIT_OK


def _bot(conn) -> ControlBot:
    token, chats = credentials()
    return ControlBot(BotAPI(token), chats, conn)


def cmd_poll(rounds: int | None, timeout_s: float | None) -> int:
    """``rounds`` long-poll rounds (None: until stopped), under the poller lock."""
    with fileutil.process_lock(config.path(C.TELEGRAM_LOCK_FILE), "telegram_control") as holder:
        if holder is not None:
            print(f"another poller is running ({holder}): nothing done")
            return EXIT_OK
        conn = state_db.connect()
        bot = _bot(conn)
        try:
            done = 0
            while rounds is None or done < rounds:
                try:
                    bot.poll_once(timeout_s)
                except TelegramError as exc:
                    if rounds is not None:
                        raise
                    log.warning("%s; trying again in %s s", exc, C.TELEGRAM_RETRY_PAUSE_S)
                    time.sleep(C.TELEGRAM_RETRY_PAUSE_S)
                done += 1
        except KeyboardInterrupt:
            pass
        finally:
            bot.api.close()
            conn.close()
    return EXIT_OK


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="telegram_control.py", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Control from the phone: a Telegram bot answering /status, /signals, /halt <reason>, "
                    "/resume <reason>, /flatten (a one-time code) and /health from the listed chats only; "
                    "every command audited with its sender.",
        epilog="exit codes: 0 done; 1 failure (Bot API unreachable, not set up); 2 bad usage.\n"
               "See docs/RUNBOOK.md, 'From the phone'.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("setup", help="store the bot token and the chat ids to obey (encrypted; prompts, or "
                                     "stdin bot_token=... / chat_ids=... lines)")
    p.add_argument("--check", action="store_true", help="then ask the Bot API who the bot is (getMe)")
    p = sub.add_parser("poll", help="one long-poll round (--once; what cron runs every minute)")
    p.add_argument("--once", action="store_true", required=True, help="one round, then exit")
    p.add_argument("--timeout", type=float, default=None,
                   help=f"long-poll seconds (default TELEGRAM_POLL_TIMEOUT_S, {C.TELEGRAM_POLL_TIMEOUT_S})")
    p = sub.add_parser("serve", help="poll until stopped (run as a service)")
    p.add_argument("--rounds", type=int, default=None, help=argparse.SUPPRESS)   # tests
    p.add_argument("--timeout", type=float, default=None, help=argparse.SUPPRESS)
    return parser


def main(argv=None) -> int:
    install_excepthook()
    args = _parser().parse_args(argv)
    try:
        if args.command != "setup":
            config.require_home(has_run=True)      # the bot's offset and codes live in the state database
        logging_setup.setup_logging("trading", console=False)
        if args.command == "setup":
            return cmd_setup(args.check)
        if args.command == "poll":
            return cmd_poll(1, args.timeout)
        return cmd_poll(args.rounds, args.timeout)
    except (UserFacingError, CredentialError) as exc:
        log.log(failure_level(exc), "telegram_control %s FAILED: %s", args.command, exc)
        print(one_line(exc), file=sys.stderr)
        return EXIT_CONFIG if isinstance(exc, (config.ConfigError, UsageError)) else EXIT_FAIL
    except Exception as exc:                  # one line on stderr, the traceback in the log
        command_failed(log, f"telegram_control {args.command}", exc)
        return EXIT_FAIL


if __name__ == "__main__":
    sys.exit(main())
