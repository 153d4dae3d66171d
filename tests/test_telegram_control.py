"""Control from the phone: the real client code (httpx, long polling) against a fake Telegram Bot
API on 127.0.0.1 (tests/fake_telegram_server.py). Each command, a chat not listed, the flatten
codes (wrong, expired, reused, another chat's), exactly once across a crash, and the bot token
never in a log, the audit trail or the output."""
from datetime import datetime, timedelta

import pytest

import alerts
import constants as C
import kill_switch
import live_trading
import logging_setup
import state_db
import telegram_control as tc
from alert_servers import free_port
from audit_logging import AuditLogger
from conftest import FIXED_NOW, run_entry
from credential_manager import CredentialManager
from fake_telegram_server import FakeTelegram

TOKEN = "123456789:AAE-fake-bot-token-for-tests-only"
ANN, BOB, EVE = 111, 222, 999          # ANN and BOB listed; EVE is not


@pytest.fixture
def fake():
    with FakeTelegram(TOKEN) as server:
        yield server


@pytest.fixture
def bot_home(trading_home, monkeypatch):
    """A home where something has run (init), the bot's credentials stored, alerts to a port
    nobody listens on (never the real Telegram)."""
    monkeypatch.setenv("TRADING_ALERT_URLS", f"json://127.0.0.1:{free_port()}/")
    assert live_trading.main(["init"]) == 0
    CredentialManager().store_credentials("telegram", {"bot_token": TOKEN, "chat_ids": f"{ANN} {BOB}"})
    logging_setup.setup_logging("trading", console=False)
    return trading_home


def make_bot(fake, conn=None) -> tc.ControlBot:
    token, chats = tc.credentials()
    return tc.ControlBot(tc.BotAPI(token, base_url=fake.url), chats, conn or state_db.connect())


def audit_records(action=tc.AUDIT_ACTION) -> list[dict]:
    return [r for r in AuditLogger().tail(1000) if r["action"] == action]


def test_status_halt_resume_from_a_listed_chat_are_done_and_audited_with_the_sender(fake, bot_home):
    bot = make_bot(fake)
    fake.push("/status", ANN, "ann")
    fake.push("/halt lunch break", ANN, "ann")
    assert bot.poll_once(0) == 2
    status, halted = fake.replies(ANN)
    assert "kill switch:     off" in status and "mode:" in status
    assert halted.startswith("HALTED: lunch break")
    switch = kill_switch.get()
    assert switch["by"] == "telegram:@ann (chat 111)" and switch["reason"].startswith("lunch break")

    fake.push("/resume back at the desk", BOB, None)
    bot.poll_once(0)
    assert fake.replies(BOB)[-1].startswith("RESUMED")
    assert kill_switch.get() is None
    cleared = [r for r in AuditLogger().tail(1000) if r["action"] == "kill_switch" and r["status"] == "cleared"]
    assert cleared[-1]["details"]["by"] == "telegram:chat 222"

    done = [r["details"] for r in audit_records() if r["status"] == "done"]
    assert [(d["command"], d["chat_id"], d["username"]) for d in done] == [
        ("/status", ANN, "ann"), ("/halt", ANN, "ann"), ("/resume", BOB, None)]
    assert AuditLogger().verify_chain() == (True, None)


def test_health_and_help_and_an_unknown_command(fake, bot_home):
    bot = make_bot(fake)
    fake.push("/health", ANN)
    fake.push("/help", ANN)
    fake.push("/sell_everything", ANN)
    bot.poll_once(0)
    health, helptext, unknown = fake.replies(ANN)
    assert "kill switch" in health and health.splitlines()[-1] in ("healthy", "warnings", "FAILURES")
    assert "/flatten" in helptext and "/halt <reason>" in helptext
    assert unknown.startswith("unknown command /sell_everything")


def test_halt_and_resume_need_a_reason(fake, bot_home):
    bot = make_bot(fake)
    fake.push("/halt", ANN)
    bot.poll_once(0)
    assert "needs a reason" in fake.replies(ANN)[-1]
    assert kill_switch.get() is None
    # a typing mistake is not an errors.log line
    errors_log = bot_home / "logs" / "errors.log"
    assert not errors_log.exists() or "needs a reason" not in errors_log.read_text()


def test_signals_from_the_phone(fake, home, monkeypatch):
    monkeypatch.setenv("TRADING_ALERT_URLS", f"json://127.0.0.1:{free_port()}/")
    assert live_trading.main(["init"]) == 0
    CredentialManager().store_credentials("telegram", {"bot_token": TOKEN, "chat_ids": str(ANN)})
    bot = make_bot(fake)
    fake.push("/signals", ANN)
    bot.poll_once(0)
    reply = fake.replies(ANN)[-1]
    assert f"BUY when score >= +{C.SIGNAL_THRESHOLD:.2f}" in reply
    lines = [line for line in reply.splitlines() if line.split()[-1] in ("BUY", "SELL", "HOLD")]
    assert len(lines) >= 2


def test_a_chat_not_listed_gets_nothing_done_and_is_audited_as_refused(fake, bot_home):
    bot = make_bot(fake)
    fake.push("/halt I am not the operator", EVE, "eve")
    fake.push("/flatten", EVE, "eve")
    assert bot.poll_once(0) == 2
    assert kill_switch.get() is None
    assert fake.replies(EVE) == []                      # not even an answer
    refused = [r["details"] for r in audit_records() if r["status"] == "refused"]
    assert [(d["command"], d["chat_id"], d["username"]) for d in refused] == [
        ("/halt", EVE, "eve"), ("/flatten", EVE, "eve")]
    conn = state_db.connect()
    assert conn.execute("SELECT COUNT(*) FROM telegram_flatten_codes").fetchone()[0] == 0


def _code(reply: str) -> str:
    return reply.strip().splitlines()[-1].split()[-1]


def test_flatten_needs_this_chats_unused_unexpired_code(fake, bot_home, monkeypatch):
    bot = make_bot(fake)
    fake.push("/flatten", ANN)
    bot.poll_once(0)
    code = _code(fake.replies(ANN)[-1])
    assert len(code) == 6 and code.isdigit()
    assert kill_switch.get() is None                    # asking for a code does nothing

    wrong = f"{(int(code) + 1) % 10 ** 6:06d}"
    fake.push(f"/flatten {wrong}", ANN)
    fake.push(f"/flatten {code}", BOB)                  # another listed chat: not its code
    bot.poll_once(0)
    assert "is not a code this chat was given" in fake.replies(ANN)[-1]
    assert "is not a code this chat was given" in fake.replies(BOB)[-1]
    assert kill_switch.get() is None

    fake.push(f"/flatten {code}", ANN)
    bot.poll_once(0)
    assert fake.replies(ANN)[-1].startswith("FLATTENED")
    assert kill_switch.get()["reason"] == "flatten: close every position"
    assert kill_switch.get()["by"] == "telegram:@ann (chat 111)"
    done = [r["details"] for r in audit_records() if r["status"] == "done" and r["details"]["command"] == "/flatten"]
    assert done[-1]["args"] == "(code given)" and code not in str(done)

    fake.push(f"/flatten {code}", ANN)                  # a code works once
    bot.poll_once(0)
    assert "was used already" in fake.replies(ANN)[-1]

    fake.push("/flatten", ANN)
    bot.poll_once(0)
    late = _code(fake.replies(ANN)[-1])
    later = FIXED_NOW + timedelta(minutes=C.TELEGRAM_FLATTEN_CODE_MIN, seconds=1)
    monkeypatch.setenv("TRADING_NOW", later.isoformat())
    fake.push(f"/flatten {late}", ANN)
    bot.poll_once(0)
    assert "has expired" in fake.replies(ANN)[-1]
    flattens = [r for r in AuditLogger().tail(1000) if r["action"] == "kill_switch" and r["status"] in ("set", "reason_added")]
    assert len(flattens) == 1                           # one flatten executed in all


def test_an_update_seen_again_after_a_restart_is_not_run_twice(fake, bot_home):
    fake.push("/halt first", ANN)
    make_bot(fake).poll_once(0)
    conn = state_db.connect()
    # as if Telegram delivered the update again (the stored offset lost): a new bot process
    with state_db.transaction(conn):
        state_db.kv_delete(conn, tc.OFFSET_KEY)
    fake.updates.append({"update_id": 500_000, "message": {
        "message_id": 1, "from": {"id": ANN, "username": "ann"}, "chat": {"id": ANN}, "text": "/halt first"}})
    assert make_bot(fake, conn).poll_once(0) == 0
    assert len(kill_switch.get()["reasons"]) == 1
    assert len(fake.replies(ANN)) == 1


def _entry_env(fake, home) -> dict:
    return {"TRADING_SET_TELEGRAM_API_URL": fake.url, "TRADING_HOME": str(home),
            "TRADING_ALERT_URLS": f"json://127.0.0.1:{free_port()}/"}


def test_a_crash_after_the_halt_never_halts_twice_and_the_reply_still_goes(fake, bot_home):
    env = _entry_env(fake, bot_home)
    fake.push("/halt crash test", ANN, "ann")
    crashed = run_entry(["telegram_control.py", "poll", "--once", "--timeout", "0"],
                        env_extra=dict(env, TRADING_FAILPOINT="telegram_after_halt"))
    assert crashed.returncode == 99, crashed.stderr
    assert kill_switch.get() is not None and fake.replies(ANN) == []
    again = run_entry(["telegram_control.py", "poll", "--once", "--timeout", "0"], env_extra=env)
    assert again.returncode == 0, again.stderr
    assert len(kill_switch.get()["reasons"]) == 1          # exactly once
    assert fake.replies(ANN) == ["HALTED (already recorded before a restart): crash test"]
    again = run_entry(["telegram_control.py", "poll", "--once", "--timeout", "0"], env_extra=env)
    assert again.returncode == 0 and len(fake.replies(ANN)) == 1


def test_a_crash_during_flatten_runs_it_once_more_and_a_resume_is_never_replayed(fake, bot_home):
    env = _entry_env(fake, bot_home)
    fake.push("/resume a reason", ANN)
    conn = state_db.connect()
    bot = make_bot(fake, conn)
    bot.run_pending()
    for update in fake._get_updates({"offset": 0}):
        bot._take(update)
    # the process died with the resume marked running: a halt set since must not be cleared
    with state_db.transaction(conn):
        conn.execute("UPDATE telegram_updates SET status = 'running'")
    kill_switch.halt("set after the resume was sent")
    done = run_entry(["telegram_control.py", "poll", "--once", "--timeout", "0"], env_extra=env)
    assert done.returncode == 0, done.stderr
    assert kill_switch.get() is not None
    assert "not run again" in fake.replies(ANN)[-1]


def test_the_command_line_polls_and_setup_stores_the_shared_credentials(fake, trading_home, monkeypatch):
    env = _entry_env(fake, trading_home)
    setup = run_entry(["telegram_control.py", "setup", "--check"], env_extra=env,
                      input=f"bot_token={TOKEN}\nchat_ids={ANN}, {BOB}\n")
    assert setup.returncode == 0, setup.stderr
    assert "@fake_trader_bot" in setup.stdout and TOKEN not in setup.stdout + setup.stderr
    assert CredentialManager().load_credentials("telegram")["chat_ids"] == f"{ANN} {BOB}"
    # the alerts' Telegram channel is built from the same credentials
    monkeypatch.delenv("TRADING_ALERT_URLS", raising=False)
    urls, source = alerts.configured_urls()
    assert urls == [f"tgram://{TOKEN}/{ANN}/{BOB}"] and "telegram" in source
    assert TOKEN not in logging_setup.redact(f"sending through {urls[0]}")

    # the poller refuses a home where nothing has run (the home check), then works after init
    refused = run_entry(["telegram_control.py", "poll", "--once"], env_extra=env)
    assert refused.returncode == 2 and "live_trading.py init" in refused.stderr
    assert run_entry(["live_trading.py", "init"], env_extra=env).returncode == 0
    fake.push("/status", BOB, "bob")
    done = run_entry(["telegram_control.py", "poll", "--once", "--timeout", "1"], env_extra=env)
    assert done.returncode == 0, done.stderr
    assert "kill switch:" in fake.replies(BOB)[-1]


def test_the_token_never_reaches_a_log_or_the_audit_trail(fake, bot_home):
    bot = make_bot(fake)
    fake.push("/status", ANN)
    fake.push("/halt x", EVE)
    fake.push("/flatten", ANN)
    bot.poll_once(0)
    dead = tc.ControlBot(tc.BotAPI(TOKEN, base_url=f"http://127.0.0.1:{free_port()}"), [ANN], state_db.connect())
    with pytest.raises(tc.TelegramError) as err:
        dead.poll_once(0)
    assert TOKEN not in str(err.value)
    wrong = tc.BotAPI("987654321:wrong-token-also-secret", base_url=fake.url)
    with pytest.raises(tc.TelegramError, match="bot token is wrong"):
        wrong.get_updates(0, 0)
    import logging
    logging.getLogger("telegram").error("a library printed %s", f"{fake.url}/bot{TOKEN}/getUpdates")
    env = _entry_env(fake, bot_home)
    out = run_entry(["telegram_control.py", "poll", "--once", "--timeout", "0"],
                    env_extra=dict(env, TRADING_SET_TELEGRAM_API_URL=f"http://127.0.0.1:{free_port()}"))
    assert out.returncode == 1 and "did not answer getUpdates" in out.stderr
    texts = [p.read_text() for p in (bot_home / "logs").rglob("*") if p.is_file()]
    assert texts and all(TOKEN not in t and "wrong-token-also-secret" not in t for t in texts)
    assert TOKEN not in out.stdout + out.stderr
    assert any("a library printed" in t for t in texts)     # the line is there, redacted


def test_help_prints_and_does_nothing(trading_home):
    out = run_entry(["telegram_control.py", "--help"])
    assert out.returncode == 0 and "/flatten" in out.stdout
    assert not (trading_home / "state").exists()


def test_parse_command():
    assert tc.parse_command("/halt@MyBot lunch  break ") == ("halt", "lunch  break")
    assert tc.parse_command("hello") == ("", "")
    assert tc.parse_command("/STATUS") == ("status", "")
    assert datetime.fromisoformat(FIXED_NOW.isoformat()) == FIXED_NOW


def test_serve_answers_round_after_round_and_one_poller_at_a_time(fake, bot_home, capsys):
    env = _entry_env(fake, bot_home)
    fake.push("/status", ANN)
    served = run_entry(["telegram_control.py", "serve", "--rounds", "2", "--timeout", "0"], env_extra=env)
    assert served.returncode == 0, served.stderr
    assert len(fake.replies(ANN)) == 1 and "kill switch:" in fake.replies(ANN)[0]
    import config
    import fileutil
    fake.push("/halt while locked", ANN)
    with fileutil.process_lock(config.path(C.TELEGRAM_LOCK_FILE), "the other poller") as holder:
        assert holder is None
        assert tc.main(["poll", "--once", "--timeout", "0"]) == 0
    assert "another poller is running" in capsys.readouterr().out
    assert kill_switch.get() is None and len(fake.replies(ANN)) == 1


def test_a_resume_read_long_after_it_was_sent_is_not_run(fake, bot_home):
    """Telegram keeps updates a day: a /resume sent while the poller was down must not clear the
    halt someone set since; a late /halt still stops (the safe direction)."""
    bot = make_bot(fake)
    kill_switch.halt("set from a shell at 9:00")
    sent = int((FIXED_NOW - timedelta(minutes=C.TELEGRAM_RESUME_MAX_AGE_MIN + 1)).timestamp())
    fake.push("/resume all fine", ANN, date=sent)
    fake.push("/halt late but safe", ANN, date=sent)
    bot.poll_once(0)
    late_resume, late_halt = fake.replies(ANN)
    assert "is not run" in late_resume and kill_switch.get()["reason"] == "set from a shell at 9:00"
    assert late_halt.startswith("already HALTED")
    fresh = int(FIXED_NOW.timestamp())
    fake.push("/resume checked now", ANN, date=fresh)
    bot.poll_once(0)
    assert fake.replies(ANN)[-1].startswith("RESUMED") and kill_switch.get() is None
