"""audit_verify on its own: a TrailVerifier built from its collaborators (the trail's files, its
key, its checkpoint), fed trails written here record by record, in process. Every verdict and
"Hash chain broken" message a person reads is checked; AuditLogger only composes a verifier."""
import json

import pytest

from audit_checkpoint import GENESIS_HASH, AuditKey, TrailCheckpoint, canonical_json, mac
from audit_logging import AuditLogger
from audit_verify import TrailFiles, TrailVerifier, check_line, split_lines


@pytest.fixture
def parts(tmp_path):
    """(verifier, key bytes, live file, checkpoint) of a trail in ``tmp_path/audit``."""
    live = tmp_path / "audit" / "audit_log.jsonl"
    live.parent.mkdir()
    checkpoint = TrailCheckpoint(live, tmp_path / "keys" / "checkpoint.json")   # fixed: no trail id
    key = AuditKey(tmp_path / "keys" / "audit_hmac.key", live.parent, checkpoint)
    secret = key.load(create=True)
    return TrailVerifier(TrailFiles(live), key, checkpoint), secret, live, checkpoint


def records(secret, n, start=1, prev=GENESIS_HASH, action="order_submitted"):
    """``n`` records chained from ``prev``, seq ``start`` on."""
    out = []
    for seq in range(start, start + n):
        rec = {"seq": seq, "timestamp": f"2025-01-02T14:31:{seq % 60:02d}.000000Z", "action": action,
               "status": "success", "details": {"qty": seq}, "prev_hash": prev}
        rec["hash"] = mac(secret, canonical_json(rec).encode())
        prev = rec["hash"]
        out.append(rec)
    return out


def write(path, recs, tail=b""):
    path.write_bytes(b"".join((canonical_json(r) + "\n").encode() for r in recs) + tail)


def trail(parts, n=5, checkpoint=True):
    verifier, secret, live, cp = parts
    recs = records(secret, n)
    write(live, recs)
    if checkpoint:
        cp.write(secret, recs[-1]["seq"], recs[-1]["hash"], None)
    return recs


# --------------------------------------------------------------------------- good trails
def test_empty_trail_is_valid(parts):
    report = parts[0].verify()
    assert (report.valid, report.kind, report.records) == (True, "ok", 0)


def test_good_trail_with_its_checkpoint(parts):
    recs = trail(parts, 5)
    report = parts[0].verify()
    assert (report.valid, report.kind, report.records, report.last_seq) == (True, "ok", 5, 5)
    assert report.last_hash == recs[-1]["hash"] and len(report.files) == 1
    assert parts[0].verify_chain() == (True, None)


def test_a_reformatted_record_still_verifies(parts):
    verifier, secret, live, cp = parts
    recs = trail(parts, 3)
    lines = live.read_text().splitlines()
    lines[1] = json.dumps(recs[1], indent=None, separators=(", ", ": "))     # spaces, other layout
    live.write_text("\n".join(lines) + "\n")
    assert verifier.verify_chain() == (True, None)


# --------------------------------------------------------------------------- tampering
def test_an_edited_record_is_named_by_file_and_line(parts):
    verifier, secret, live, cp = parts
    recs = trail(parts, 5)
    recs[2]["details"]["qty"] = 999
    write(live, recs)
    valid, error = verifier.verify_chain()
    assert not valid
    assert error.startswith("Hash chain broken: ") and "line 3" in error
    assert "content does not match its hash" in error
    assert verifier.verify().records == 2                   # the two records before it verify


def test_a_deleted_record_is_named(parts):
    verifier, secret, live, cp = parts
    recs = trail(parts, 5)
    write(live, recs[:2] + recs[3:])
    report = verifier.verify()
    assert report.kind == "tampered"
    assert "seq 3 missing after" in report.error and "(record deleted)" in report.error


def test_swapped_and_duplicated_records(parts):
    verifier, secret, live, cp = parts
    recs = trail(parts, 5)
    write(live, [recs[0], recs[2], recs[1], recs[3], recs[4]])
    assert "out of order, seq 2 comes later (line 3)" in verifier.verify().error
    write(live, [recs[0], recs[1], recs[1], recs[2], recs[3], recs[4]])
    assert "duplicate of the record on" in verifier.verify().error


def test_a_missing_start_of_the_trail(parts):
    verifier, secret, live, cp = parts
    recs = trail(parts, 5)
    write(live, recs[2:])
    assert "the trail starts at seq 3, records 1..2 are missing" in verifier.verify().error


def test_a_blank_line_and_a_forged_line(parts):
    verifier, secret, live, cp = parts
    recs = trail(parts, 3)
    live.write_text(live.read_text().replace(canonical_json(recs[1]), ""))
    assert "line 2: is empty" in verifier.verify().error
    forged = records(b"k" * 32, 3)                           # chained right, signed with another key
    write(live, forged)
    assert "line 1: content does not match its hash" in verifier.verify().error


# --------------------------------------------------------------------------- the checkpoint
def test_records_cut_off_the_end_are_caught_by_the_checkpoint(parts):
    verifier, secret, live, cp = parts
    recs = trail(parts, 5)
    write(live, recs[:3])                                  # a valid chain, two records short
    report = verifier.verify()
    assert report.kind == "tampered" and report.records == 3
    assert "the trail was truncated: it ends at seq 3" in report.error
    assert "records 4..5 were removed" in report.error
    assert verifier.verify(use_checkpoint=False).valid     # the chain itself is fine


def test_a_rewritten_end_is_caught_by_the_checkpoint(parts):
    verifier, secret, live, cp = parts
    recs = trail(parts, 5)
    write(live, recs[:3] + records(secret, 2, start=4, prev=recs[2]["hash"], action="rewritten"))
    assert "record seq 5 does not have the hash the checkpoint recorded" in verifier.verify().error


def test_a_missing_checkpoint_and_a_bad_one(parts):
    verifier, secret, live, cp = parts
    trail(parts, 4, checkpoint=False)
    report = verifier.verify()
    assert report.kind == "checkpoint" and report.records == 4
    assert report.error.startswith("Checkpoint missing: ") and "the trail has 4 records" in report.error
    cp.path.parent.mkdir(exist_ok=True)
    cp.path.write_text("not a checkpoint")
    report = verifier.verify()
    assert report.kind == "checkpoint" and report.error.startswith("Hash chain broken: the ")


def test_the_log_deleted_after_the_checkpoint(parts):
    verifier, secret, live, cp = parts
    trail(parts, 3)
    live.unlink()
    report = verifier.verify()
    assert report.kind == "tampered" and "is missing" in report.error and "the log was deleted" in report.error


def test_an_alarm_left_by_an_append(parts):
    verifier, secret, live, cp = parts
    recs = trail(parts, 3)
    cp.write(secret, 3, recs[-1]["hash"], "the checkpoint was ahead")
    report = verifier.verify()
    assert report.kind == "tampered" and "the checkpoint was ahead" in report.error


# --------------------------------------------------------------------------- torn lines, keys
def test_a_torn_last_line_is_not_tampering(parts):
    verifier, secret, live, cp = parts
    recs = trail(parts, 3)
    write(live, recs, tail=b'{"seq":4,"tim')
    report = verifier.verify()
    assert (report.valid, report.kind, report.records, report.last_seq) == (False, "torn", 3, 3)
    assert report.error.startswith("Torn last line: ") and "line 4 is incomplete (13 bytes" in report.error


def test_a_missing_key(parts, tmp_path):
    verifier, secret, live, cp = parts
    trail(parts, 3)
    gone = AuditKey(tmp_path / "elsewhere" / "audit_hmac.key", live.parent, cp)
    report = TrailVerifier(TrailFiles(live), gone, cp).verify()
    assert report.kind == "key_missing" and "the 3 records of" in report.error
    assert "This is not evidence of tampering" in report.error


# --------------------------------------------------------------------------- rotated files
def test_rotated_files_in_chain_order_and_out_of_order(parts):
    verifier, secret, live, cp = parts
    recs = records(secret, 6)
    first, second = live.with_name("audit_log.20250102.jsonl"), live.with_name("audit_log.20250102-2.jsonl")
    write(first, recs[:2])
    write(second, recs[2:4])
    write(live, recs[4:])
    cp.write(secret, 6, recs[-1]["hash"], None)
    assert TrailFiles(live).files() == [first, second, live]
    report = verifier.verify()
    assert report.valid and report.records == 6 and len(report.files) == 3
    write(first, recs[2:4])
    write(second, recs[:2])                                 # contents swapped between the files
    assert "rotated files out of order" in verifier.verify().error
    write(first, recs[:2], tail=b'{"seq"')                  # a rotated file may not be torn
    write(second, recs[2:4])
    assert "is incomplete (no newline) in a rotated file" in verifier.verify().error


def test_rotation_target_takes_the_first_free_name(parts):
    live = parts[2]
    files = TrailFiles(live)
    assert files.rotation_target("20250102").name == "audit_log.20250102.jsonl"
    live.with_name("audit_log.20250102.jsonl").write_text("")
    assert files.rotation_target("20250102").name == "audit_log.20250102-2.jsonl"


# --------------------------------------------------------------------------- one record
def test_check_line_and_split_lines():
    secret = b"s" * 32
    rec = records(secret, 1)[0]
    line = canonical_json(rec).encode()
    assert check_line(secret, line) == (rec, None)
    assert check_line(secret, b"{not json")[1].startswith("not valid JSON")
    assert check_line(secret, b"[1, 2]") == (None, "not a JSON object")
    assert check_line(secret, b'{"seq": 1}') == (None, "has no 'hash' field")
    assert "does not match its hash" in check_line(b"x" * 32, line)[1]
    assert split_lines(b"a\nb\nc") == ([b"a", b"b"], b"c")
    assert split_lines(b"a\n") == ([b"a"], b"")


# --------------------------------------------------------------------------- composed, not mixed in
def test_audit_logger_composes_a_verifier():
    al = AuditLogger()
    assert not isinstance(al, TrailVerifier) and isinstance(al.verifier, TrailVerifier)
    assert al.verifier.trail.path == al.path and al.verifier.checkpoint is al.checkpoint
    al.log_event("order_submitted", "success", {"qty": 1})
    assert al.verify_chain() == (True, None) == al.verifier.verify_chain()
