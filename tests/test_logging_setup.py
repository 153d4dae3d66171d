"""One logging setup: the day's file, errors.log, greppable lines, secrets redacted."""
import logging

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
