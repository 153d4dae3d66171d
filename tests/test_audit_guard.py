"""The audit guard a cycle runs before trading, the checkpoint that follows the trail (not its
path), and the record of an interrupted previous cycle."""
import hashlib
import json
import shutil

import pytest

import config
import constants as C
from audit_logging import (AuditLogger, AuditTrailInvalidError, interrupted_cycle,
                           require_valid_trail)


def _trail(n=5):
    al = AuditLogger()
    for i in range(n):
        al.log_event("order_submit", "submitted", {"client_key": f"k{i}", "i": i})
    return al


def _refused(**kwargs):
    with pytest.raises(AuditTrailInvalidError) as info:
        require_valid_trail(**kwargs)
    text = str(info.value)
    assert "python audit_logging.py verify" in text
    assert "docs/RUNBOOK.md" in text and "Audit Log Tampering Detected" in text
    assert "\n" not in text
    return text


def test_valid_trail_passes_and_returns_the_report():
    _trail(4)
    report = require_valid_trail()
    assert report.valid and report.records == 4


def test_damaged_line_in_the_middle_is_refused(caplog):
    al = _trail(6)
    lines = al.path.read_bytes().split(b"\n")
    lines[2] = lines[2].replace(b'"i":2', b'"i":7')
    al.path.write_bytes(b"\n".join(lines))
    with caplog.at_level("CRITICAL"):
        text = _refused()
    assert "line 3" in text and "tampered" in text
    assert any("AUDIT TRAIL NOT VALID" in r.message for r in caplog.records if r.levelname == "CRITICAL")


def test_missing_checkpoint_is_refused():
    al = _trail(3)
    al.checkpoint_path.unlink()
    text = _refused()
    assert "removal of records from its end cannot be ruled out" in text
    # an append does not paper over it: the alarm stays until a person resets the checkpoint
    AuditLogger().log_event("cycle_start", "started", {})
    _refused()
    AuditLogger().reset_checkpoint("investigated")
    assert require_valid_trail().valid


def test_torn_last_line_is_not_tampering():
    al = _trail(3)
    with open(al.path, "ab") as fh:
        fh.write(b'{"action":"cycle_st')
    report = require_valid_trail()
    assert report.kind == "torn"


def test_checkpoint_is_named_by_the_trail_id_not_the_path():
    al = _trail(2)
    tid = (al.directory / C.AUDIT_TRAIL_ID_FILE).read_text().strip()
    assert al.checkpoint_path.name == C.AUDIT_CHECKPOINT_FILE.format(tag=tid)
    assert str(config.home()) not in al.checkpoint_path.name


def test_moved_home_verifies_as_before(tmp_path, monkeypatch, trading_home):
    _trail(5)
    moved = tmp_path / "elsewhere" / "home"
    moved.parent.mkdir()
    shutil.move(str(trading_home), str(moved))
    monkeypatch.setenv("TRADING_HOME", str(moved))
    assert require_valid_trail().records == 5
    AuditLogger().log_event("after_move", "success", {})
    assert require_valid_trail().records == 6
    # removing records is still detected in the moved home
    al = AuditLogger()
    lines = al.path.read_bytes().split(b"\n")
    al.path.write_bytes(b"\n".join(lines[:-3] + [b""]))
    assert "truncated" in _refused()


def test_two_homes_sharing_one_key_directory_keep_separate_checkpoints(tmp_path, monkeypatch):
    homes = [tmp_path / "a", tmp_path / "b"]
    paths = []
    for n, home in enumerate(homes, 2):
        monkeypatch.setenv("TRADING_HOME", str(home))
        paths.append(_trail(n).checkpoint_path)
    assert paths[0] != paths[1] and paths[0].parent == paths[1].parent
    for n, home in enumerate(homes, 2):
        monkeypatch.setenv("TRADING_HOME", str(home))
        assert require_valid_trail().records == n
    # cutting the end of one is caught, the other is untouched
    monkeypatch.setenv("TRADING_HOME", str(homes[1]))
    al = AuditLogger()
    al.path.write_bytes(b"\n".join(al.path.read_bytes().split(b"\n")[:-2] + [b""]))
    _refused()
    monkeypatch.setenv("TRADING_HOME", str(homes[0]))
    assert require_valid_trail().records == 2


def test_copied_home_in_use_beside_the_original_forks(tmp_path, monkeypatch, trading_home):
    _trail(3)
    copy = tmp_path / "copy"
    shutil.copytree(trading_home, copy)
    AuditLogger().log_event("original_goes_on", "success", {})      # original: seq 4
    monkeypatch.setenv("TRADING_HOME", str(copy))
    rec = AuditLogger().log_event("copy_goes_on", "success", {})    # copy forks at seq 3
    assert rec["seq"] == 5
    forked = AuditLogger().tail(2)[0]
    assert forked["action"] == "audit_trail_forked"
    assert require_valid_trail().records == 5
    monkeypatch.setenv("TRADING_HOME", str(trading_home))
    AuditLogger().log_event("original_again", "success", {})
    assert require_valid_trail().records == 5
    ids = {(h / C.AUDIT_TRAIL_ID_FILE).read_text() for h in (trading_home / "logs/audit", copy / "logs/audit")}
    assert len(ids) == 2


def _make_legacy(al: AuditLogger):
    """Turn a trail into one written before trail ids: checkpoint named after the log's path."""
    tid = (al.directory / C.AUDIT_TRAIL_ID_FILE).read_text().strip()
    key = al._load_key(create=False)
    cp = al.checkpoint.read(key)
    (al.directory / C.AUDIT_TRAIL_ID_FILE).unlink()
    legacy = AuditLogger()
    assert legacy.trail_id() is None
    legacy.checkpoint.write(key, cp.seq, cp.hash, None)          # no id: legacy name, no "trail"
    (config.config_dir() / C.AUDIT_CHECKPOINT_FILE.format(tag=tid)).unlink()
    tag = hashlib.sha256(str(al.path).encode()).hexdigest()[:16]
    assert legacy.checkpoint_path.name == C.AUDIT_CHECKPOINT_FILE.format(tag=tag)
    data = json.loads(legacy.checkpoint_path.read_bytes()[:4096])
    assert "trail" not in data
    return legacy.checkpoint_path


def test_existing_path_named_checkpoint_is_migrated(tmp_path, monkeypatch, trading_home):
    legacy_path = _make_legacy(_trail(4))
    assert require_valid_trail().records == 4                 # read-only verify uses the old name
    AuditLogger().log_event("after_upgrade", "success", {})  # the first append migrates it
    assert not legacy_path.exists()
    al = AuditLogger()
    assert al.trail_id() and al.checkpoint_path.exists()
    assert require_valid_trail().records == 5
    moved = tmp_path / "moved"
    shutil.move(str(trading_home), str(moved))
    monkeypatch.setenv("TRADING_HOME", str(moved))
    assert require_valid_trail().records == 5


def test_migration_still_detects_removed_records():
    al = _trail(5)
    _make_legacy(al)
    al.path.write_bytes(b"\n".join(al.path.read_bytes().split(b"\n")[:-3] + [b""]))
    assert "truncated" in _refused()
    AuditLogger().log_event("after_upgrade", "success", {})
    assert "truncat" in _refused()


def test_edited_trail_id_is_refused():
    al = _trail(2)
    (al.directory / C.AUDIT_TRAIL_ID_FILE).write_text("0123456789abcdef\n")
    _refused()


# ----------------------------------------------------------------------------- interrupted cycle
def test_no_interruption_after_a_finished_cycle():
    al = AuditLogger()
    assert interrupted_cycle() is None                     # empty trail
    al.log_event("cycle_start", "started", {"mode": "paper", "as_of": None})
    al.log_event("cycle_end", "completed", {})
    al.log_event("kill_switch", "set", {"reason": "x"})
    assert interrupted_cycle() is None


def test_killed_cycle_is_found_and_what_to_write_is_returned():
    al = AuditLogger()
    al.log_event("cycle_start", "started", {"mode": "paper", "as_of": None})
    al.log_event("cycle_end", "completed", {})
    start = al.log_event("cycle_start", "started", {"mode": "paper", "as_of": None})
    al.log_event("order_submit", "attempt", {"client_key": "2025-01-02:AAPL:BUY"})
    sent = al.log_event("order_submit", "submitted", {"client_key": "2025-01-02:AAPL:BUY"})
    found = interrupted_cycle()
    assert found["action"] == "cycle_interrupted"
    d = found["details"]
    assert d["interrupted_cycle_seq"] == start["seq"] and d["mode"] == "paper"
    assert d["last_record"]["seq"] == sent["seq"] and d["records_after_start"] == 2
    assert [o["client_key"] for o in d["order_records"]] == ["2025-01-02:AAPL:BUY"] * 2
    # the next cycle, having written its own cycle_start, still finds it with exclude_seq
    this = al.log_event("cycle_start", "started", {"mode": "paper", "as_of": None})
    assert interrupted_cycle(exclude_seq=this["seq"])["details"]["interrupted_cycle_seq"] == start["seq"]
    al.log_event(found["action"], found["status"], dict(d, broker={"open_orders": []}))
    assert interrupted_cycle(exclude_seq=this["seq"]) is None   # recorded once, not every cycle
    assert require_valid_trail().valid
