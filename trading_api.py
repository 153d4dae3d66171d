"""The front door to the brokers: ``get_broker()``, the broker command line, and the names the
runbook types (``from trading_api import SchwabAPI; SchwabAPI().get_account_balance()``).

The brokers themselves live in their own modules:

* ``broker_base.py``: the order vocabulary, the ``BrokerError`` tree, ``validate_order`` and the
  cost model (slippage, commission, borrow fee, paper buying power); the interface both brokers
  implement is described there.
* ``schwab_broker.py``: ``SchwabAPI``, a real Schwab account through schwab-py, and the Schwab
  login token's age rule.
* ``paper_broker.py``: ``PaperBroker``, a simulated account in the state database.

``get_broker()`` picks one from ``TRADING_MODE`` (``paper`` unless someone asks for ``live``).

Command line (diagnosis and the one-time login)::

    python trading_api.py login                 # interactive Schwab login (once a week at most)
    python trading_api.py token-age             # exit 0 fresh, 1 renew soon, 2 expired/missing
    python trading_api.py balance|positions|orders [--paper]
    python trading_api.py quotes SYM [SYM ...] [--paper]
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from datetime import datetime, timedelta

import config
import constants as C
import logging_setup
from audit_logging import AuditLogger
from broker_base import BrokerError
from credential_manager import CredentialManager
from errors import install_excepthook
from paper_broker import PaperBroker
from settings import TradingSettings
from schwab_broker import (LOGIN_COMMAND, SCHWAB_SERVICE, SCHWAB_TOKEN_SERVICE, SET_CREDENTIALS_COMMAND,
                           TOKEN_EXPIRED, TOKEN_MISSING, TOKEN_RENEW, SchwabAPI, import_schwab,
                           load_service, register_token_secrets, token_age_of)
# The backtest still reaches the cost model through this module; it moves to broker_base (issue 9).

__all__ = ["SchwabAPI", "PaperBroker", "get_broker", "main"]

log = logging.getLogger("broker")


# =========================================================================== factory
def get_broker(mode: str | None = None, settings: TradingSettings | None = None, conn=None):
    """``PaperBroker`` when TRADING_MODE is paper (the default), ``SchwabAPI`` when it is live.
    ``settings``: the paper broker's cost model (default: ``constants.py``); ``conn``: the state
    database the paper account lives in (default: the real one; an ``--as-of`` replay passes its
    throwaway database)."""
    mode = (mode or config.trading_mode()).lower()
    if mode != "live":
        return PaperBroker(conn=conn, fill=C.PAPER_FILL, settings=settings)
    api = SchwabAPI()
    account = api.masked_account()
    log.warning("LIVE TRADING: orders go to Schwab account %s (TRADING_MODE=live)", account)
    try:
        AuditLogger().log_event("live_trading_enabled", "WARNING", {"broker": "schwab", "account": account})
    except Exception as exc:      # the audit trail is optional here; never block on it
        log.debug("audit of live mode skipped: %s", exc.__class__.__name__)
    return api


# =========================================================================== command line
def _print_json(obj) -> None:
    print(json.dumps(obj, indent=2, sort_keys=True, default=str))


def _cmd_login() -> int:
    cm = CredentialManager()
    creds = load_service(cm, SCHWAB_SERVICE)
    if not creds or not creds.get("app_key") or not creds.get("app_secret"):
        print(f"Schwab credentials are not configured. Store them first:\n  {SET_CREDENTIALS_COMMAND}",
              file=sys.stderr)
        return 1
    callback = creds.get("callback_url") or C.SCHWAB_CALLBACK_URL
    logging_setup.register_secret(creds["app_key"])
    logging_setup.register_secret(creds["app_secret"])
    schwab, _, _ = import_schwab()

    def write(token, *args, **kwargs):
        register_token_secrets(token)
        cm.store_credentials(SCHWAB_TOKEN_SERVICE, token)

    print(f"Schwab login with callback URL {callback} (must match the app on developer.schwab.com).")
    try:
        schwab.auth.client_from_manual_flow(str(creds["app_key"]), str(creds["app_secret"]), callback,
                                            "(encrypted credential store)", token_write_func=write)
    except (KeyboardInterrupt, EOFError):
        raise
    except Exception as exc:     # schwab-py, oauthlib and httpx raise many kinds: one line each
        why = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else "no detail"
        log.error("Schwab login failed (%s: %s). Nothing was stored. Check that the app key and secret "
                  "are right (python credential_manager.py set schwab), that the app's callback URL on "
                  "developer.schwab.com is exactly %s, and paste the whole address the browser ends on "
                  "(it starts with %s) within 30 seconds; then run `%s` again.",
                  type(exc).__name__, why, callback, callback, LOGIN_COMMAND)
        return 1
    expires = datetime.now() + timedelta(days=C.TOKEN_MAX_AGE_DAYS)
    print(f"Login saved in the credential store. It lasts {C.TOKEN_MAX_AGE_DAYS:g} days: log in again "
          f"before {expires:%Y-%m-%d %H:%M}.")
    api = SchwabAPI(cm)
    print(f"Account: {api.masked_account()}  balance: {api.get_account_balance()}")
    return 0


def _cmd_token_age() -> int:
    age = token_age_of(load_service(CredentialManager(), SCHWAB_TOKEN_SERVICE))
    if age.state == TOKEN_MISSING:
        print(f"No Schwab login token stored: run `{LOGIN_COMMAND}`")
        return 2
    print(f"Schwab login token age: {age.age_days:.2f} days (expires {age.expires:%Y-%m-%d %H:%M})")
    if age.state == TOKEN_EXPIRED:
        print(f"EXPIRED: run `{LOGIN_COMMAND}`")
        return 2
    if age.state == TOKEN_RENEW:
        print(f"Renew soon: run `{LOGIN_COMMAND}`")
        return 1
    return 0


def main(argv=None) -> int:
    install_excepthook()
    parser = argparse.ArgumentParser(
        prog="trading_api.py", description="Broker diagnosis and Schwab login.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"login: a one-time interactive Schwab login. Store the app key and secret first "
               f"(python credential_manager.py set schwab).\nIt prints a Schwab address: open it in a browser, log in, "
               f"and paste back the address the browser ends on;\nit starts with the callback URL "
               f"(the 'callback_url' stored with the credentials, default {C.SCHWAB_CALLBACK_URL}),\n"
               f"which must be exactly the callback registered with your app on developer.schwab.com.\n"
               f"The token goes encrypted into the credential store (service "
               f"'{SCHWAB_TOKEN_SERVICE}', {C.CREDENTIAL_FILE_TEMPLATE.format(service=SCHWAB_TOKEN_SERVICE)} "
               f"in TRADING_HOME,\nkey in TRADING_CONFIG_DIR). It lasts {C.TOKEN_MAX_AGE_DAYS:g} days "
               f"(Schwab's rule; refreshing does not extend it):\ncycles warn from day "
               f"{C.TOKEN_WARN_AGE_DAYS:g} and refuse from day {C.TOKEN_MAX_AGE_DAYS:g}; `token-age` "
               f"tells how old it is (exit 0 fresh, 1 renew soon, 2 expired or missing).")
    parser.add_argument("command", choices=["login", "token-age", "balance", "positions", "quotes", "orders"])
    parser.add_argument("symbols", nargs="*", help="symbols for `quotes`")
    parser.add_argument("--paper", action="store_true", help="ask the paper broker instead of Schwab")
    args = parser.parse_args(argv)
    if args.command not in ("login", "token-age"):    # the login is set-up: it may start a home
        config.require_home()
    logging_setup.setup_logging("trading")
    try:
        if args.command == "login":
            return _cmd_login()
        if args.command == "token-age":
            return _cmd_token_age()
        broker = PaperBroker(fill=C.PAPER_FILL) if args.paper else SchwabAPI()
        if args.command == "balance":
            _print_json(broker.get_account_balance())
        elif args.command == "positions":
            _print_json(broker.get_positions())
        elif args.command == "orders":
            _print_json(broker.get_open_orders())
        else:
            if not args.symbols:
                parser.error("quotes needs at least one symbol")
            _print_json(broker.get_quotes(args.symbols))
        return 0
    except BrokerError as exc:
        print(f"ERROR ({exc.__class__.__name__}): {exc}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, EOFError):
        print("aborted", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
