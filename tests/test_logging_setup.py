"""One logging setup: the day's file, errors.log, greppable lines, secrets redacted."""
import logging

import pytest

import logging_setup


def test_files_levels_and_format(trading_home):
    logging_setup.setup_logging("trading", console=False)
    logging.getLogger("risk").info("Prediction: AAPL signal=BUY")
    logging.getLogger("broker").error("order failed")
    day = logging_setup.log_file("trading").read_text()
    errors = (trading_home / "logs" / "errors.log").read_text()
    assert "INFO [risk] Prediction: AAPL signal=BUY" in day
    assert "ERROR [broker] order failed" in day and "ERROR [broker] order failed" in errors
    assert "Prediction" not in errors


def test_setup_twice_does_not_duplicate_lines(trading_home):
    logging_setup.setup_logging("data_update", console=False)
    logging_setup.setup_logging("data_update", console=False)
    logging.getLogger("data").warning("once")
    assert logging_setup.log_file("data_update").read_text().count("once") == 1


def test_secrets_redacted_everywhere(trading_home):
    logging_setup.setup_logging("trading", console=False)
    logging_setup.register_secret("sup3r-s3cret-app-key")
    log = logging.getLogger("broker")
    log.info("using key sup3r-s3cret-app-key")
    log.info("token payload {'access_token': 'abc.def.ghi', 'refresh_token': 'xyz-123'}")
    log.info("header Authorization: Bearer eyJhbGciOi.payload.sig")
    try:
        raise RuntimeError("refresh failed app_secret=hunter2hunter2")
    except RuntimeError:
        log.exception("boom")
    text = logging_setup.log_file("trading").read_text()
    for secret in ("sup3r-s3cret-app-key", "abc.def.ghi", "xyz-123", "eyJhbGciOi", "hunter2hunter2"):
        assert secret not in text, secret
    assert text.count("***") >= 5


# ----------------------------------------------------------------------------- alert URLs: one rule
SHORT_URLS = {    # every secret part short (the old rule hid only parts of 16 characters or more)
    "json://usr:pw1@127.0.0.1:9/pth/tK7?token=qZ3&+Authorization=hD1&method=POST":
        ["usr", "pw1", "pth", "tK7", "qZ3", "hD1"],
    "tgram://1234:AAq/555": ["1234:AAq", "1234", "AAq", "555"],
    "discord://4321/wT0": ["4321", "wT0"],
    "slack://TA/TB/TC": ["TA", "TB", "TC"],
    "mailto://mU:mP9@example.com/?to=ops@example.com": ["mU", "mP9"],
    "ntfys://tpc": ["tpc"],
    "pover://uK@aT": ["uK", "aT"],
}


@pytest.mark.parametrize("url", sorted(SHORT_URLS))
def test_alert_url_parts_are_redacted_whatever_their_length(url):
    assert set(SHORT_URLS[url]) <= set(logging_setup.url_secret_parts(url))
    logging_setup.register_url_secrets(url)
    shown = logging_setup.redact_url(url)
    for part in SHORT_URLS[url]:
        line = f"failed {url} ({part}) url: /x/{part}?a={part} Telegram:{part}"
        if len(part) >= 8:                           # long parts: inside a longer word too
            line += f" https://api.telegram.org/bot{part}/sendMessage"
        out = logging_setup.redact(line)
        assert part not in out, (part, out)
        assert part not in shown.split("://", 1)[1].replace("example.com", "").replace("127.0.0.1:9", "")
    assert shown.startswith(url.split("://")[0] + "://")


def test_a_url_without_secret_parts_leaves_other_text_alone():
    """json://127.0.0.1:8080/ has no secret part: registering it once starred every gap of every
    later log line ("HALTED:*** lunch break")."""
    logging_setup.register_url_secrets("json://127.0.0.1:8080/")
    assert logging_setup.redact("HALTED: lunch break (by ann)") == "HALTED: lunch break (by ann)"


def test_redact_url_keeps_the_scheme_and_the_host_name_only():
    assert logging_setup.redact_url("json://u:p@127.0.0.1:8080/a/b?token=t&x=1") == \
        "json://***:***@127.0.0.1:8080/***?token=***&x=***"
    assert logging_setup.redact_url("tgram://123456789:AAHxyz/555") == "tgram://***/***"
    assert logging_setup.redact_url("mailto://u:p@smtp.example.com") == "mailto://***:***@smtp.example.com"
    assert logging_setup.redact_url("ntfys://topic") == "ntfys://***"
    assert logging_setup.redact_url("not a url") == "<unreadable URL>"


def test_short_tokens_do_not_eat_the_time_or_longer_words(trading_home):
    logging_setup.setup_logging("trading", console=False)
    logging_setup.register_url_secrets("json://127.0.0.1:9/hook/12")
    log = logging.getLogger("alerts")
    log.warning("webhook 12 failed; 4123 shares; /hook/12")
    try:
        raise RuntimeError("url: /hook/12")
    except RuntimeError:
        log.exception("boom")
    text = logging_setup.log_file("trading").read_text()
    first = text.splitlines()[0]
    assert first[:19].count(":") == 2 and first[4] == "-"           # the time is intact
    assert "webhook *** failed; 4123 shares; /***/***" in first
    assert "url: /***/***" in text and "/hook/12" not in text


def test_user_and_password_in_any_url_are_redacted():
    out = logging_setup.redact("posting to https://bob:s3@example.com/x and smtp://a@b.example")
    assert "bob" not in out and "s3@" not in out and "https://***:***@example.com/x" in out
    assert "smtp://***@b.example" in out
