"""The front door: ``get_broker()``, the ``python trading_api.py`` command line and the runbook's
``from trading_api import SchwabAPI`` one-liner, against the fake Schwab of ``schwab_fake``."""
import json
import logging
import re
import time
from urllib.parse import parse_qs

import httpx
import pytest

import trading_api as T
from trading_api import SchwabAPI
# test_live_trading imports cm, fake and store from here.
from schwab_fake import (ACCESS, ACCOUNT_NUMBER, APP_KEY, APP_SECRET, REFRESH, api, cm,  # noqa: F401
                         fake, store)
from conftest import run_entry


# ------------------------------------------------------------------ factory and CLI
def test_get_broker_paper_by_default():
    broker = T.get_broker()
    assert isinstance(broker, T.PaperBroker)


def test_get_broker_live_logs_loudly(fake, cm, monkeypatch, caplog):
    store(cm)
    monkeypatch.setenv("TRADING_MODE", "live")
    with caplog.at_level(logging.WARNING, logger="broker"):
        broker = T.get_broker()
    assert isinstance(broker, SchwabAPI)
    lines = [r.getMessage() for r in caplog.records if "LIVE TRADING" in r.getMessage()]
    assert lines and "****4321" in lines[0] and ACCOUNT_NUMBER not in lines[0]


def test_cli_token_age_exit_codes(cm, capsys):
    assert T.main(["token-age"]) == 2
    store(cm, age_days=1)
    assert T.main(["token-age"]) == 0
    store(cm, age_days=6.5)
    assert T.main(["token-age"]) == 1
    store(cm, age_days=7.5)
    assert T.main(["token-age"]) == 2
    assert "EXPIRED" in capsys.readouterr().out


def test_cli_balance_and_quotes(api, fake, capsys):
    fake.quotes = {"AAPL": {"quote": {"lastPrice": 1.5, "bidPrice": 1.4, "askPrice": 1.6}}}
    assert T.main(["balance"]) == 0
    assert json.loads(capsys.readouterr().out)["equity"] == 105000.5
    assert T.main(["quotes", "AAPL"]) == 0
    assert json.loads(capsys.readouterr().out)["AAPL"]["last"] == 1.5


def test_cli_reports_missing_credentials(trading_home, capsys):
    (trading_home / "selected_stocks.txt").write_text("AAPL\n")      # a home (config.require_home)
    assert T.main(["balance"]) == 1
    assert "not configured" in capsys.readouterr().err


def test_cli_login_manual_flow_stores_token(fake, cm, monkeypatch, capsys):
    cm.store_credentials("schwab", {"app_key": APP_KEY, "app_secret": APP_SECRET})

    def token_endpoint(request):
        if request.url.path == "/v1/oauth/token":
            form = parse_qs(request.content.decode())
            assert form["grant_type"] == ["authorization_code"] and form["code"] == ["THE-CODE"]
            return httpx.Response(200, json={"access_token": ACCESS, "refresh_token": REFRESH,
                                             "token_type": "Bearer", "expires_in": 1800})
        return None
    fake.hook = token_endpoint

    def fake_input(prompt=""):
        printed = capsys.readouterr().out
        state = re.search(r"state=([\w-]+)", printed).group(1)
        return f"https://127.0.0.1:8182/?code=THE-CODE&state={state}"
    monkeypatch.setattr("builtins.input", fake_input)
    assert T.main(["login"]) == 0
    saved = cm.load_credentials("schwab_token")
    assert saved["token"]["refresh_token"] == REFRESH
    assert abs(saved["creation_timestamp"] - time.time()) < 60
    assert "****4321" in capsys.readouterr().out


@pytest.mark.parametrize("pasted", ["good", "https://127.0.0.1:8182/?error=access_denied", "nonsense"])
def test_cli_login_error_is_one_line_without_traceback(fake, cm, monkeypatch, capsys, pasted):
    """Issue 23: any login error (Schwab refuses the code, a wrong address pasted) printed a
    40-line traceback. Now one line naming the callback URL and the fix; nothing stored."""
    cm.store_credentials("schwab", {"app_key": APP_KEY, "app_secret": APP_SECRET})
    fake.hook = lambda request: (httpx.Response(401, json={"error": "invalid_client"})
                                 if request.url.path == "/v1/oauth/token" else None)

    def fake_input(prompt=""):
        state = re.search(r"state=([\w-]+)", capsys.readouterr().out).group(1)
        return f"https://127.0.0.1:8182/?code=THE-CODE&state={state}" if pasted == "good" else pasted
    monkeypatch.setattr("builtins.input", fake_input)
    assert T.main(["login"]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert "ERROR" in err and "Schwab login failed" in err and "callback URL" in err
    assert "https://127.0.0.1:8182" in err and "trading_api.py login" in err
    assert cm.load_credentials("schwab_token") is None


def test_login_help_names_callback_token_store_and_expiry():
    done = run_entry(["trading_api.py", "--help"])
    assert done.returncode == 0
    for words in ("callback", "https://127.0.0.1:8182", "schwab_token", "7 days", "token-age"):
        assert words in done.stdout, words


def test_cli_paper_balance(trading_home, capsys):
    (trading_home / "selected_stocks.txt").write_text("AAPL\n")      # a home (config.require_home)
    assert T.main(["balance", "--paper"]) == 0
    assert '"equity"' in capsys.readouterr().out


def test_runbook_one_liner_fails_with_one_clear_line(trading_home, tmp_path):
    proc = run_entry(["-c", "from trading_api import SchwabAPI; api = SchwabAPI(); print(api.get_account_balance())"],
                     env_extra={"TRADING_HOME": trading_home, "TRADING_CONFIG_DIR": tmp_path / "keys"}, timeout=60)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr                     # one line, no traceback
    assert lines[0].startswith("ERROR: AuthenticationError: Schwab credentials are not configured")
    assert "store_credentials" in lines[0] and "trading_api.py login" in lines[0]
