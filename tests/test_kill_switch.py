"""kill_switch.py: the first reason stays, later halts are appended, clear says whether anything
was halted, every change is audited, and the value keeps the shape live_trading reads."""
import state_db
import kill_switch
from audit_recorder import Recorder


class BrokenAudit:
    def log_event(self, *args):
        raise OSError(30, "Read-only file system")


def test_halt_keeps_the_first_reason_and_appends_later_ones(trading_home):
    audit = Recorder()
    first = kill_switch.halt("drawdown", audit=audit, by="ops@a")
    assert {k: first[k] for k in ("reason", "by")} == {"reason": "drawdown", "by": "ops@a"} and first["at"]
    second = kill_switch.halt("ambiguous order", conn=state_db.connect(), audit=audit, by="bot")
    assert second["reason"] == "drawdown" and second["by"] == "ops@a"
    assert [r["reason"] for r in second["reasons"]] == ["drawdown", "ambiguous order"]
    assert kill_switch.get() == second and kill_switch.is_set()
    assert [(a, s) for a, s, _ in audit.events] == [("kill_switch", "set"), ("kill_switch", "reason_added")]
    assert "+1 later halt" in kill_switch.describe(second)


def test_clear_reports_whether_anything_was_halted(trading_home):
    audit = Recorder()
    assert kill_switch.clear("nothing to do", audit=audit) is None
    kill_switch.halt("x", audit=audit)
    cleared = kill_switch.clear("fixed", audit=audit)
    assert cleared["reason"] == "x" and kill_switch.get() is None
    assert [s for _, s, _ in audit.events] == ["clear_noop", "set", "cleared"]


def test_check_raises_with_the_resume_command(trading_home):
    kill_switch.check()                                    # off: nothing happens
    kill_switch.halt("stop", audit=Recorder())
    try:
        kill_switch.check(what="order X")
    except kill_switch.KillSwitchSet as exc:
        assert "order X not sent" in str(exc) and "live_trading.py resume" in str(exc)
        assert exc.switch["reason"] == "stop"
    else:
        raise AssertionError("KillSwitchSet not raised")


def test_a_broken_audit_trail_does_not_undo_the_stop(trading_home, caplog):
    kill_switch.halt("disk trouble", audit=BrokenAudit())
    assert kill_switch.get()["reason"] == "disk trouble"
    assert "could not be written to the audit trail" in caplog.text and "Read-only" in caplog.text
