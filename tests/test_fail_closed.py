"""Issue 19 (points 6, 11, 12): the kill switch fails closed, no new home by accident, and
``--replay`` never touches the real account.

* The kill switch and the account history are also in the audit trail: a cycle that finds a
  state database without the halt the trail records, or one created after the trail's account
  history (deleted, replaced), refuses and names the recovery command; ``start-over`` is the
  explicit, audited way to begin anew (paper here, the Schwab path in the last test).
* Every command but ``init`` refuses a ``TRADING_HOME`` without project state, in one line,
  creating nothing; ``halt`` / ``flatten`` / ``resume`` need a home where something has run.
* ``--replay`` (and ``--as-of``) are refused by every command that would act on the real account.
"""
from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import pytest

import config
import constants as C
import kill_switch
import live_trading
import state_db
import trading_cycle
from audit_logging import AuditLogger, account_trail
from conftest import run_entry
from paper_broker import PaperBroker
from trading_execution import OrderExecutor


def _delete_state_db(home: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{home / C.STATE_DB_FILE}{suffix}").unlink(missing_ok=True)


def _trade_one_paper_order(conn) -> None:
    """A real paper order through the executor: the trail then holds an account history."""
    broker = PaperBroker(conn=conn, prices={"AAPL": 100.0}, as_of=date(2026, 11, 23))
    ex = OrderExecutor(broker=broker, conn=conn, audit=AuditLogger(), sleep=lambda s: None)
    record = ex.submit({"symbol": "AAPL", "side": "BUY", "quantity": 5, "order_type": "MARKET",
                        "limit_price": None, "price": 100.0}, date(2026, 11, 24), "paper")
    assert record["broker_order_id"]


def _actions(home) -> list[tuple[str, str]]:
    path = Path(home) / C.AUDIT_LOG_FILE
    return [(r["action"], r["status"]) for r in map(json.loads, path.read_text().splitlines())]


# ----------------------------------------------------------------------------- point 6: fail closed
def test_halt_then_deleted_database_refuses_the_cycle_naming_resume(trading_home):
    state_db.connect().close()
    kill_switch.halt("losing money")
    _delete_state_db(trading_home)
    with pytest.raises(kill_switch.StateContinuityError) as refused:
        trading_cycle.run_cycle()
    message = str(refused.value)
    assert "kill switch is ON" in message and "losing money" in message
    assert kill_switch.RESUME_COMMAND in message and "\n" not in message
    assert ("cycle_end", "error") in _actions(trading_home)
    # a resume clears the halt the trail holds (audited); with no account history the cycle goes on
    assert kill_switch.clear("reviewed")["reason"] == "losing money"
    assert account_trail()["kill_switch"] is None and _actions(trading_home)[-1] == ("kill_switch", "cleared")
    with state_db.connect() as conn:
        kill_switch.require_continuity(conn)


def test_deleted_database_after_trading_refuses_until_start_over(trading_home):
    conn = state_db.connect()
    _trade_one_paper_order(conn)
    kill_switch.require_continuity(conn)            # the database that traded: accepted
    conn.close()
    _delete_state_db(trading_home)
    done = run_entry(["live_trading.py"])
    assert done.returncode == 1
    assert "after the account history" in done.stderr and kill_switch.START_OVER_COMMAND in done.stderr
    assert "Traceback" not in done.stderr and "orders:" not in done.stdout
    # a resume does not let a fresh account trade: only start-over does, audited
    run_entry(["live_trading.py", "resume", "--reason", "x"])
    assert run_entry(["live_trading.py"]).returncode == 1
    refused = run_entry(["live_trading.py", "start-over", "--reason", "no confirm"])
    assert refused.returncode == 2 and "--confirm START-OVER" in refused.stderr
    done = run_entry(["live_trading.py", "start-over", "--confirm", "START-OVER", "--reason", "new paper account"])
    assert done.returncode == 0 and "STARTED OVER" in done.stdout, done.stderr
    record = [json.loads(line) for line in (trading_home / C.AUDIT_LOG_FILE).read_text().splitlines()][-1]
    assert (record["action"], record["status"]) == ("state_start_over", "done")
    assert record["details"]["reason"] == "new paper account" and record["details"]["by"]
    assert record["details"]["moved_to"] and Path(record["details"]["moved_to"]).exists()    # never deleted
    with state_db.connect() as conn:
        kill_switch.require_continuity(conn)
    assert run_entry(["audit_logging.py", "verify"]).returncode == 0


def test_start_over_keeps_a_halt_on(trading_home):
    state_db.connect().close()
    kill_switch.halt("investigating")
    _delete_state_db(trading_home)
    details = kill_switch.start_over("fresh account")
    assert details["kill_switch_carried"]["reason"] == "investigating"
    with state_db.connect() as conn:
        assert kill_switch.get(conn)["reason"] == "investigating"
        kill_switch.require_continuity(conn)        # consistent: the cycle stops at the switch, exit 0


def test_a_replay_halt_is_not_the_real_accounts(trading_home):
    conn = state_db.connect(state_db.prepare_replay("2026-11-23"))
    kill_switch.halt("ambiguous replay order", conn=conn)
    conn.close()
    assert account_trail()["kill_switch"] is None
    with state_db.connect() as real:
        kill_switch.require_continuity(real)


def test_a_database_from_before_the_stamp_counts_as_old(trading_home):
    conn = state_db.connect()
    _trade_one_paper_order(conn)
    with state_db.transaction(conn):
        state_db.kv_delete(conn, state_db.CREATED_KEY)
    assert state_db.created_at(conn) is None
    kill_switch.require_continuity(conn)
    conn.close()


# ----------------------------------------------------------------------------- point 11: no new home
@pytest.mark.parametrize("args", [["halt", "--reason", "losing money"], ["flatten", "--confirm", "FLATTEN"],
                                  ["status"], [], ["resume", "--reason", "x"], ["history"],
                                  ["start-over", "--confirm", "START-OVER", "--reason", "x"]],
                         ids=lambda a: a[0] if a else "cycle")
def test_a_mistyped_home_is_refused_in_one_line_creating_nothing(tmp_path, monkeypatch, capsys, args):
    typo = tmp_path / "hoem"
    monkeypatch.setenv("TRADING_HOME", str(typo))
    assert live_trading.main(args) == 2
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 1 and str(typo) in lines[0] and "does not exist" in lines[0]
    assert config.INIT_COMMAND in lines[0]
    assert "HALTED" not in out and "flatten:" not in out
    assert not typo.exists()


def test_a_mistyped_home_as_a_user_types_it(tmp_path):
    typo = tmp_path / "hoem"
    done = run_entry(["live_trading.py", "halt", "--reason", "losing money"], typo,
                     {"TRADING_CONFIG_DIR": tmp_path / "keys"})
    assert done.returncode == 2 and "HALTED" not in done.stdout
    assert len(done.stderr.strip().splitlines()) == 1 and str(typo) in done.stderr
    assert not typo.exists()


def test_an_empty_home_is_refused_and_init_creates_one(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    env = {"TRADING_CONFIG_DIR": tmp_path / "keys"}
    done = run_entry(["live_trading.py", "halt", "--reason", "x"], empty, env)
    assert done.returncode == 2 and "holds no project state" in done.stderr
    assert list(empty.iterdir()) == []
    created = run_entry(["live_trading.py", "init"], empty, env)
    assert created.returncode == 0 and (empty / C.STATE_DB_FILE).exists(), created.stderr
    assert ("home_created", "done") in _actions(empty)
    done = run_entry(["live_trading.py", "halt", "--reason", "before the first cycle"], empty, env)
    assert done.returncode == 0 and "HALTED" in done.stdout
    assert "already" in run_entry(["live_trading.py", "init"], empty, env).stdout


def test_halt_needs_a_home_where_something_ran(trading_home):
    (trading_home / C.UNIVERSE_FILE).write_text("AAPL\n")       # set up, never run
    done = run_entry(["live_trading.py", "halt", "--reason", "x"])
    assert done.returncode == 2 and "nothing has run there yet" in done.stderr
    assert not (trading_home / "state").exists() and not (trading_home / "logs").exists()
    assert run_entry(["live_trading.py", "status"]).returncode == 0     # a home: status works


def test_init_refuses_a_home_that_lost_its_database(trading_home):
    state_db.connect().close()
    kill_switch.halt("x")
    _delete_state_db(trading_home)
    done = run_entry(["live_trading.py", "init"])
    assert done.returncode == 1 and "start-over" in done.stderr
    assert not (trading_home / C.STATE_DB_FILE).exists()


# ----------------------------------------------------------------------------- point 12: --replay
@pytest.mark.parametrize("args", [["halt", "--reason", "x"], ["resume", "--reason", "x"],
                                  ["flatten", "--confirm", "FLATTEN"], ["gate"], ["signals"], ["serve"],
                                  ["run"], ["init"], ["start-over", "--confirm", "START-OVER", "--reason", "x"]],
                         ids=lambda a: a[0])
def test_replay_is_refused_by_every_command_that_would_act_on_the_real_account(trading_home, capsys, args):
    conn = state_db.connect()
    broker = PaperBroker(conn=conn, prices={"AAPL": 100.0}, as_of=date(2026, 11, 23))
    broker.place_order({"symbol": "AAPL", "side": "BUY", "quantity": 7, "order_type": "MARKET",
                        "limit_price": None, "client_key": "k1"})
    conn.close()
    before = _actions(trading_home) if (trading_home / C.AUDIT_LOG_FILE).exists() else []
    assert live_trading.main([*args, "--replay"]) == 2
    err = capsys.readouterr().err
    assert "does not take --replay" in err and len(err.strip().splitlines()) == 1
    with state_db.connect() as conn:
        assert PaperBroker(conn=conn).get_positions()["AAPL"]["quantity"] == 7       # the real account as it was
        assert kill_switch.get(conn) is None
    after = _actions(trading_home) if (trading_home / C.AUDIT_LOG_FILE).exists() else []
    assert after == before


@pytest.mark.parametrize("args", [["flatten", "--confirm", "FLATTEN"], ["halt", "--reason", "x"], ["status"]],
                         ids=lambda a: a[0])
def test_as_of_is_refused_where_it_would_be_ignored(trading_home, capsys, args):
    state_db.connect().close()
    assert live_trading.main([*args, "--as-of", "2026-11-23"]) == 2
    assert "does not take --as-of" in capsys.readouterr().err


def test_flatten_replay_as_a_user_types_it(trading_home):
    state_db.connect().close()
    done = run_entry(["live_trading.py", "flatten", "--replay", "--confirm", "FLATTEN"])
    assert done.returncode == 2 and "does not take --replay" in done.stderr and "positions" not in done.stdout
    with state_db.connect() as conn:
        assert kill_switch.get(conn) is None


def test_replay_status_shows_only_the_replay_account(trading_home):
    state_db.connect().close()
    done = run_entry(["live_trading.py", "status", "--replay"])
    assert done.returncode == 1 and "no replay account" in done.stderr
    assert not config.state_db_file(replay=True).exists()
    conn = state_db.connect(state_db.prepare_replay("2026-11-23"))
    PaperBroker(conn=conn, prices={"MSFT": 50.0}, as_of=date(2026, 11, 23)).place_order(
        {"symbol": "MSFT", "side": "BUY", "quantity": 3, "order_type": "MARKET", "limit_price": None,
         "client_key": "r1"})
    conn.close()
    done = run_entry(["live_trading.py", "status", "--replay", "--json"])
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["replay_account"] and [p["symbol"] for p in data["account"]["positions"]] == ["MSFT"]


# ----------------------------------------------------------------------------- the Schwab path
def test_schwab_halt_deleted_database_refuses_the_live_cycle_until_start_over(trained, tmp_path):
    """Live mode, schwab-py's real client against the fake Schwab: a cycle trades, the operator
    halts, the state database is deleted; the next cron cycle sends nothing and names the recovery
    command; after an audited start-over the halt is still on (nothing sent)."""
    from crash_harness import fresh_home, live_server, live_setup, run_cycle_live, verify_audit
    from schwab_env import run_live
    home = fresh_home(trained, tmp_path / "live")
    setup = live_setup(home, trained)
    server = live_server(setup)
    try:
        first = run_cycle_live(home, setup, server)
        assert first.returncode == 0, first.stderr[-3000:]
        sent = len(server.posted_orders())
        assert sent, "the first cycle sent no order"
        halted = run_live(home, ["live_trading.py", "halt", "--reason", "losing money"], server)
        assert halted.returncode == 0 and "HALTED" in halted.stdout, halted.stderr
        _delete_state_db(home)
        refused = run_cycle_live(home, setup, server)
        assert refused.returncode == 1
        assert "kill switch is ON" in refused.stderr and kill_switch.START_OVER_COMMAND in refused.stderr
        assert len(server.posted_orders()) == sent                   # nothing reached Schwab
        done = run_live(home, ["live_trading.py", "start-over", "--confirm", "START-OVER", "--reason",
                               "state database lost"], server)
        assert done.returncode == 0 and "kill switch stays ON" in done.stdout, done.stderr
        stopped = run_cycle_live(home, setup, server)
        assert stopped.returncode == 0 and "Kill switch is ON" in stopped.stderr, stopped.stderr[-3000:]
        assert len(server.posted_orders()) == sent
        verify_audit(home)
    finally:
        server.stop()


def test_status_names_a_lost_state_database(trading_home, capsys):
    state_db.connect().close()
    kill_switch.halt("losing money")
    _delete_state_db(trading_home)
    assert live_trading.main(["status"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("STATE DATABASE:  trading refused") and "losing money" in out
