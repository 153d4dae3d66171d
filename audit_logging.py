"""The hash-chained audit trail: ``logs/audit/audit_log.jsonl`` (under ``TRADING_HOME``).

Every record is one line of canonical JSON (keys sorted, no spaces)::

    {"action":"order_submitted","details":{...},"hash":"<64 hex>","prev_hash":"<64 hex>",
     "seq":42,"status":"success","timestamp":"2025-01-02T14:31:05.123456Z"}

so ``tail -3 logs/audit/audit_log.jsonl | jq '.action, .status, .details'`` reads well.

Integrity
---------
* ``hash`` = HMAC-SHA256(audit key, canonical JSON of the record without ``hash``). The record
  covers ``prev_hash`` (the previous record's ``hash``; 64 zeros for seq 1) and ``seq`` (1, 2, 3,
  ... across every file, rotated ones included). Someone who can edit the log but cannot read the
  key cannot produce a record that verifies: a plain SHA-256 chain would only catch accidents,
  because anyone can recompute it after an edit.
* The key (``audit_hmac.key``, 32 random bytes in hex, mode 0600) and a small *checkpoint*
  (last ``seq`` and ``hash``, itself HMAC-signed) live in ``config.config_dir()``, outside
  ``logs/`` and outside the project, next to the credential key. The checkpoint is rewritten on
  every append, so cutting records off the end of the log (which leaves a valid chain) is caught.
  The checkpoint and the *trail id* that names it live in ``audit_checkpoint.py``; a copy
  appended to while the original is still in use gets a trail id of its own (a fork, with an
  ``audit_trail_forked`` record).
* Appends are safe across processes: ``flock`` on ``logs/audit/.audit_log.lock``, re-read the last
  record, one ``os.write`` of the whole line with ``O_APPEND``, ``fsync``, update the checkpoint,
  unlock. No fork in the chain, no lost record.
* A crash in the middle of a write leaves a *torn* last line (no newline). ``verify_chain`` reports
  it as such (not as tampering); the next append moves the fragment to
  ``audit_log.jsonl.torn-<time>`` and continues the chain from the last complete record, writing an
  ``audit_torn_line_recovered`` record first.
* Rotation (``python audit_logging.py rotate``, from cron at midnight) renames the live file to
  ``audit_log.YYYYMMDD.jsonl`` (the UTC date of its last record; ``-2``, ``-3``... when taken) and
  the chain continues in a new live file. ``verify_chain`` walks every file in name order; a
  missing, truncated or reordered file is an error that names it.
* Verifying (``verify``, ``verify_chain``) is done by an ``audit_verify.TrailVerifier`` that
  ``AuditLogger`` builds from the trail's files (``audit_verify.TrailFiles``), its key
  (``audit_checkpoint.AuditKey``) and its checkpoint (``audit_checkpoint.TrailCheckpoint``).

Command line::

    python audit_logging.py verify          # prints the verdict; exit 0 valid, 1 not
    python audit_logging.py tail [-n N]     # recent records, readably
    python audit_logging.py rotate          # rotate the live file (cron, outside trading hours)
    python audit_logging.py repair          # move a torn last line aside (an append does it too)
    python audit_logging.py reset-checkpoint   # re-anchor the checkpoint after an investigation

See docs/SECURITY.md for what each message means and what to do.
"""
from __future__ import annotations

import argparse
import fcntl
import json
import logging
import os
import sys
from collections import deque
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import alerts
import config
from errors import install_excepthook, storage_error
import constants as C
import fileutil
import logging_setup
from failpoints import failpoint
from audit_checkpoint import (GENESIS_HASH, RUNBOOK_AUDIT_SECTION, AuditChainError, AuditError,
                              AuditKey, AuditKeyMissingError, AuditTrailInvalidError, BadCheckpoint,
                              TrailCheckpoint, canonical_json)
from audit_checkpoint import display as _display
from audit_checkpoint import mac as _mac, utc_timestamp as _utc_timestamp
from audit_verify import (KEY_CONFIGURATION_KINDS, TrailFiles, TrailVerifier, VerifyReport, check_line,
                          split_lines)

log = logging.getLogger("audit")


# --------------------------------------------------------------------------- the logger
class AuditLogger:
    """Append to and verify the hash-chained audit trail.

    ``path`` defaults to ``<TRADING_HOME>/logs/audit/audit_log.jsonl``; the key and checkpoint
    default to ``config.config_dir()``. All paths are fixed when the object is created. It holds
    the trail's files (``trail``), key (``key``), checkpoint (``checkpoint``) and the
    ``audit_verify.TrailVerifier`` built from them (``verifier``).
    """

    def __init__(self, path=None, *, key_path=None, checkpoint_path=None):
        self.path = Path(path).expanduser().absolute() if path else config.path(C.AUDIT_LOG_FILE)
        self.directory = self.path.parent
        self.lock_path = self.directory / C.AUDIT_LOCK_FILE
        self.key_path = Path(key_path) if key_path else config.config_dir() / C.AUDIT_KEY_FILE
        self.checkpoint = TrailCheckpoint(self.path,
                                          Path(checkpoint_path) if checkpoint_path else None)
        self.legacy_checkpoint_path = self.checkpoint.legacy_path
        self.trail = TrailFiles(self.path)
        self.key = AuditKey(self.key_path, self.directory, self.checkpoint)
        self.verifier = TrailVerifier(self.trail, self.key, self.checkpoint)

    # ----------------------------------------------------------------- verifying (TrailVerifier)
    def verify_chain(self) -> tuple[bool, str | None]:
        """``(True, None)`` when every file verifies and matches the checkpoint; otherwise
        ``(False, message)`` naming the first bad record (file and line) and what is wrong."""
        return self.verifier.verify_chain()

    def verify(self, use_checkpoint: bool = True) -> VerifyReport:
        """The whole trail's ``VerifyReport`` (``audit_verify.TrailVerifier.verify``)."""
        return self.verifier.verify(use_checkpoint)

    # ----------------------------------------------------------------- checkpoint (audit_checkpoint)
    def trail_id(self) -> str | None:
        """The trail's id, None when the trail has none yet (new, or from before ids)."""
        return self.checkpoint.trail_id()

    @property
    def checkpoint_path(self) -> Path:
        return self.checkpoint.path

    @property
    def id_path(self) -> Path:
        return self.checkpoint.id_path

    def _ensure_trail_id(self, key: bytes) -> None:
        self.checkpoint.ensure_trail_id(
            key, lambda: self._last_record_quiet(key),
            lambda other, seq: AuditLogger(other, key_path=self.key_path)._hash_at(key, seq))

    def _last_record_quiet(self, key: bytes):
        fd = os.open(self.path, os.O_RDONLY) if self.path.exists() else None
        if fd is None:
            return None
        try:
            return self._last_record(key, fd)[0]
        finally:
            os.close(fd)

    def __repr__(self):
        return f"AuditLogger(path={str(self.path)!r})"

    # ----------------------------------------------------------------- files
    def files(self) -> list[Path]:
        """Every file of the trail in chain order: rotated files by name, then the live file."""
        return self.trail.files()

    # ----------------------------------------------------------------- key
    def _load_key(self, create: bool) -> bytes:
        return self.key.load(create)

    def _key_missing_text(self, records: int | None = None) -> str:
        return self.key.missing_text(records)

    def _trail_exists(self) -> bool:
        return any(p.stat().st_size > 0 for p in self.files()) or self.checkpoint_path.exists()

    # ----------------------------------------------------------------- reading records
    @staticmethod
    def _read_end(fd: int, size: int) -> tuple[bytes, int]:
        """The end of a file holding at least its last two newlines (or the whole file), and
        the offset it starts at."""
        chunk = 1 << 16
        while True:
            start = max(0, size - chunk)
            data = os.pread(fd, size - start, start)
            if start == 0 or data.count(b"\n") >= 2:
                return data, start
            chunk *= 4

    def _last_line(self, fd: int, path: Path):
        """``(last complete line, torn fragment, offset of the fragment)`` of one file."""
        size = os.fstat(fd).st_size
        if size == 0:
            return None, b"", 0
        data, start = self._read_end(fd, size)
        torn, torn_at = b"", size
        if not data.endswith(b"\n"):
            if path != self.path:
                raise AuditChainError(
                    f"Hash chain broken: the rotated file {_display(path)} ends in an incomplete "
                    f"line; restore it from backup (see docs/SECURITY.md)")
            cut = data.rfind(b"\n") + 1                # 0 when the file is only a fragment
            torn, torn_at = data[cut:], start + cut
            data = data[:cut]
            if not data:
                return None, torn, torn_at
        begin = data.rfind(b"\n", 0, len(data) - 1) + 1
        return data[begin:-1], torn, torn_at

    def _last_record(self, key: bytes, live_fd: int):
        """``(record, torn, torn_at)``: the last complete record of the trail (None when it is
        empty), the live file's torn fragment (b'' when none) and the offset where it starts.
        The record's hash is checked: nothing is ever chained to a forged record."""
        line, torn, torn_at = self._last_line(live_fd, self.path)
        path = self.path
        if line is None:                                # live file empty: the newest rotated one
            for path in reversed(self.files()[:-1] if self.path.exists() else self.files()):
                fd = os.open(path, os.O_RDONLY)
                try:
                    line, _, _ = self._last_line(fd, path)
                finally:
                    os.close(fd)
                if line is not None:
                    break
        if line is None:
            return None, torn, torn_at
        obj, problem = check_line(key, line)
        if problem:
            raise AuditChainError(
                f"Hash chain broken: the last record of {_display(path)} {problem}; refusing to "
                f"chain new records to it. Run `python audit_logging.py verify` and see "
                f"docs/SECURITY.md")
        return obj, torn, torn_at

    def _hash_at(self, key: bytes, seq: int) -> str | None:
        """The hash of the authentic record ``seq``, searching the newest files first."""
        for path in reversed(self.files()):
            for line in reversed(split_lines(path.read_bytes())[0]):
                obj, problem = check_line(key, line)
                if problem is None and obj["seq"] == seq:
                    return obj["hash"]
                if problem is None and obj["seq"] < seq:
                    return None
        return None

    # ----------------------------------------------------------------- appending
    @contextmanager
    def _transaction(self):
        """Hold the trail's lock; yield the live file opened for append (and reading)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        lock = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            fd = self._open_live()
            try:
                yield fd
            finally:
                os.close(fd)
        finally:
            os.close(lock)                              # closing releases the flock

    def _open_live(self) -> int:
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o640)
        return fd

    def _key_for_append(self) -> bytes:
        if self.key.loaded is None and not self.key_path.exists() and self._trail_exists():
            raise AuditKeyMissingError(self._key_missing_text())
        return self._load_key(create=True)

    def _write_line(self, key: bytes, fd: int, last, action: str, status: str,
                    details: dict) -> dict:
        """Append the record that follows ``last`` (None: the first record) in one write."""
        record = {"seq": (last["seq"] if last else 0) + 1, "timestamp": _utc_timestamp(),
                  "action": action, "status": status, "details": details,
                  "prev_hash": last["hash"] if last else GENESIS_HASH}
        record["hash"] = _mac(key, canonical_json(record).encode())
        data = (canonical_json(record) + "\n").encode()
        written = os.write(fd, data)
        while written < len(data):           # only on a short write (disk full, signal)
            written += os.write(fd, data[written:])
        os.fsync(fd)
        return record

    def _recover_torn(self, key: bytes, fd: int, torn: bytes, torn_at: int, last) -> dict:
        """Move a torn last line aside, cut it off the live file and record the recovery."""
        lineno = os.pread(fd, torn_at, 0).count(b"\n") + 1
        saved = self.path.with_name(
            f"{self.path.name}.torn-{datetime.now(timezone.utc):%Y%m%dT%H%M%S%fZ}")
        fileutil.atomic_write_bytes(saved, torn, mode=0o600)
        os.ftruncate(fd, torn_at)
        os.fsync(fd)
        log.warning("Torn last line in %s line %d (%d bytes, a crash interrupted an append) "
                    "moved to %s; the chain continues from seq %d",
                    _display(self.path), lineno, len(torn), saved.name, last["seq"] if last else 0)
        return self._write_line(key, fd, last, "audit_torn_line_recovered", "warning",
                                {"file": _display(self.path), "line": lineno, "bytes": len(torn),
                                 "saved_to": saved.name})

    def log_event(self, action: str, status: str, details: dict | None = None) -> dict:
        """Append one record and return it (with ``seq``, ``timestamp``, ``prev_hash``, ``hash``).

        ``details`` is copied into JSON-safe form; fields named like secrets are masked.
        Raises AuditKeyMissingError, AuditKeyError or AuditChainError when the trail cannot be
        extended safely.
        """
        if not isinstance(action, str) or not action:
            raise ValueError("action must be a non-empty string")
        if not isinstance(status, str) or not status:
            raise ValueError("status must be a non-empty string")
        if details is None:
            details = {}
        if not isinstance(details, dict):
            raise ValueError(f"details must be a dict, not {type(details).__name__}")
        details = logging_setup.json_safe(details)
        try:
            key = self._key_for_append()
            with self._transaction() as fd:
                last, alarm = self._prepare(key, fd)
                record = self._write_line(key, fd, last, action, status, details)
                failpoint("audit_after_line")
                self.checkpoint.write(key, record["seq"], record["hash"], alarm)
        except OSError as exc:
            raise (storage_error(exc, self.path, "append to the audit trail") or exc) from None
        return record

    def _prepare(self, key: bytes, fd: int):
        """Under the lock: the last record (after repairing a torn line and recording a fork)
        and the alarm to keep in the checkpoint."""
        self._ensure_trail_id(key)
        last, torn, torn_at = self._last_record(key, fd)
        kept, new_alarm = self.checkpoint.alarm(key, last, lambda seq: self._hash_at(key, seq))
        if last is None and not self.checkpoint.path.exists():
            # a new trail: anchor the checkpoint at seq 0 before its first line, so that a crash
            # between that line and the checkpoint update reads as the usual "one record past the
            # checkpoint", never as a deleted checkpoint
            self.checkpoint.write(key, 0, GENESIS_HASH, None)
        if new_alarm and not kept:
            log.critical("Hash chain broken: %s", new_alarm)
        if torn:
            last = self._recover_torn(key, fd, torn, torn_at, last)
        if self.checkpoint.fork_note:
            last = self._write_line(key, fd, last, "audit_trail_forked", "warning",
                                    dict(self.checkpoint.fork_note, trail_id=self.trail_id()))
            self.checkpoint.fork_note = None
        return last, kept or new_alarm

    # ----------------------------------------------------------------- maintenance
    def repair(self) -> dict | None:
        """Move a torn last line aside now (an append does the same); the recovery record, or
        None when there was nothing to repair."""
        key = self._key_for_append()
        with self._transaction() as fd:
            _, torn, _ = self._last_record(key, fd)
            if not torn:
                return None
            record, alarm = self._prepare(key, fd)
            self.checkpoint.write(key, record["seq"], record["hash"], alarm)
            return record

    def rotate(self, when: datetime | None = None) -> Path | None:
        """Rename the live file to ``<stem>.YYYYMMDD<suffix>`` (the UTC date of its last record,
        or of ``when``) and continue the chain in a new live file that starts with an
        ``audit_log_rotated`` record. Returns the rotated file, or None when the live file is
        empty or absent. Safe while others append (same lock)."""
        if not self.path.exists() or self.path.stat().st_size == 0:
            return None
        key = self._key_for_append()
        with self._transaction() as fd:
            if os.fstat(fd).st_size == 0:
                return None
            last, alarm = self._prepare(key, fd)
            first = os.pread(fd, 1 << 16, 0).split(b"\n", 1)[0]
            first_seq = json.loads(first).get("seq") if first.strip() else None
            day = (when or datetime.strptime(last["timestamp"][:10], "%Y-%m-%d")).strftime("%Y%m%d")
            target = self.trail.rotation_target(day)
            os.rename(self.path, target)
            fileutil.fsync_dir(self.directory)
            new_fd = self._open_live()
            try:
                record = self._write_line(key, new_fd, last, "audit_log_rotated", "success",
                                          {"rotated_to": target.name, "first_seq": first_seq,
                                           "last_seq": last["seq"]})
            finally:
                os.close(new_fd)
            self.checkpoint.write(key, record["seq"], record["hash"], alarm)
        log.info("Rotated %s to %s (seq %s-%s)", _display(self.path), target.name, first_seq,
                 last["seq"])
        return target

    def reset_checkpoint(self, reason: str = "") -> dict:
        """After an investigation: check the chain ignoring the checkpoint, then anchor a fresh
        checkpoint (no alarm) at its end, recording the reset in the trail itself."""
        report = self.verify(use_checkpoint=False)
        if not report.valid and report.kind != "torn":
            raise AuditChainError(f"The chain itself does not verify, so the checkpoint is not "
                                  f"reset: {report.error}")
        key = self._load_key(create=False) if report.records else self._key_for_append()
        try:
            old = self.checkpoint.read(key)
            previous = {"seq": old.seq, "hash": old.hash, "alarm": old.alarm} if old else None
        except BadCheckpoint as exc:
            previous = {"error": str(exc)}
        with self._transaction() as fd:
            if self.checkpoint.fixed_path is None and self.trail_id() is None:
                self.checkpoint.new_trail_id(key, None, replace=False)
            last, torn, torn_at = self._last_record(key, fd)
            if torn:
                last = self._recover_torn(key, fd, torn, torn_at, last)
            record = self._write_line(key, fd, last, "audit_checkpoint_reset", "warning",
                                      logging_setup.json_safe({"previous_checkpoint": previous,
                                                               "reason": reason}))
            self.checkpoint.write(key, record["seq"], record["hash"], None)
            if self.checkpoint_path != self.legacy_checkpoint_path:
                self.legacy_checkpoint_path.unlink(missing_ok=True)
        log.warning("Audit checkpoint reset at seq %d (previous: %s)", record["seq"], previous)
        return record

    # ----------------------------------------------------------------- reading for people
    def records_backwards(self):
        """Complete records from the newest back (not verified; see ``verify``); a line that
        is not JSON is skipped."""
        for path in reversed(self.files()):
            lines, _ = split_lines(path.read_bytes())
            for line in reversed(lines):
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue
                if isinstance(rec, dict):
                    yield rec

    def tail(self, n: int = 10) -> list[dict]:
        """The last ``n`` complete records, oldest first (not verified; see ``verify``)."""
        out: deque = deque(maxlen=n)
        for path in reversed(self.files()):
            lines, _ = split_lines(path.read_bytes())
            chunk = []
            for line in lines[-n:]:
                try:
                    chunk.append(json.loads(line))
                except ValueError:
                    chunk.append({"action": "<not JSON>", "raw": line[:200].decode("utf-8", "replace")})
            for rec in reversed(chunk):
                if len(out) == n:
                    break
                out.appendleft(rec)
            if len(out) == n:
                break
        return list(out)


# --------------------------------------------------------------------------- guards for the cycle
def _alert_severity(kind: str) -> str | None:
    """A key that is missing or not this trail's is a configuration slip (a different
    TRADING_CONFIG_DIR), not a security breach: same-day, not the kind's immediate severity."""
    return alerts.SAME_DAY if kind in KEY_CONFIGURATION_KINDS else None


def require_valid_trail(logger: logging.Logger | None = None,
                        audit: AuditLogger | None = None) -> VerifyReport:
    """Verify the whole trail before trading; return the report when trading may go on.

    Raises ``AuditTrailInvalidError`` (one line, naming ``python audit_logging.py verify`` and
    the runbook section) when it is not valid: a damaged or edited record anywhere, a missing
    or inconsistent checkpoint (removal of records cannot be ruled out), a missing or unusable
    key. A torn last line (a crash interrupted an append: not tampering) is accepted with a
    WARNING, because the next append moves it aside. The refusal is logged CRITICAL on
    ``logger`` (default: the ``audit`` logger). About 0.7 s for 100,000 records
    (bench/audit_append.py), so it can run before every cycle."""
    logger = logger or log
    audit = audit or AuditLogger()
    try:
        report = audit.verify()
    except OSError as exc:
        raise (storage_error(exc, audit.directory, "read") or exc) from None
    if report.valid:
        return report
    if report.kind == "torn":
        logger.warning("Audit trail: %s", report.error)
        return report
    message = (f"AUDIT TRAIL NOT VALID ({report.kind}): trading refused. {report.error} -- "
               f"Check with `python audit_logging.py verify` and follow {RUNBOOK_AUDIT_SECTION}")
    logger.critical("%s", message)
    alerts.send_alert("audit_verification_failed", f"{report.kind}: {report.error}; trading refused",
                      severity=_alert_severity(report.kind), key=f"{report.kind}:{report.error}"[:200])
    raise AuditTrailInvalidError(message)


CYCLE_START, CYCLE_END, CYCLE_INTERRUPTED = "cycle_start", "cycle_end", "cycle_interrupted"


def interrupted_cycle(audit: AuditLogger | None = None, exclude_seq: int | None = None) -> dict | None:
    """The previous cycle when it never finished (killed, power lost), else None.

    Call it at cycle start, under the cycle lock (so no cycle is running), before or after this
    cycle's own ``cycle_start`` (pass its ``seq`` as ``exclude_seq`` when after). The newest
    record among ``cycle_start``, ``cycle_end`` and ``cycle_interrupted`` decides: a
    ``cycle_start`` means the cycle it opened never wrote its ``cycle_end``. Returns what the
    cycle should append (add the broker findings to ``details`` first)::

        {"action": CYCLE_INTERRUPTED, "status": "warning",
         "details": {"interrupted_cycle_seq": 812, "started_at": "...", "mode": "paper",
                     "as_of": None, "last_record": {"seq": 815, "action": "order_submit", ...},
                     "records_after_start": 3, "order_records": [{"seq": 814, ...}, ...]}}

    then ``audit.log_event(r["action"], r["status"], r["details"])``. Records are read as they
    are (``require_valid_trail`` is what checks them)."""
    audit = audit or AuditLogger()
    after = []                              # records newer than the unfinished cycle_start
    for rec in audit.records_backwards():
        if exclude_seq is not None and rec.get("seq") == exclude_seq:
            continue
        action = rec.get("action")
        if action in (CYCLE_END, CYCLE_INTERRUPTED):
            return None
        if action == CYCLE_START:
            details = rec.get("details") if isinstance(rec.get("details"), dict) else {}
            after.reverse()
            last = after[-1] if after else rec
            orders = [{"seq": r.get("seq"), "action": r.get("action"), "status": r.get("status"),
                       "client_key": (r.get("details") or {}).get("client_key")
                       if isinstance(r.get("details"), dict) else None}
                      for r in after if str(r.get("action", "")).startswith("order")]
            return {"action": CYCLE_INTERRUPTED, "status": "warning", "details": {
                "interrupted_cycle_seq": rec.get("seq"), "started_at": rec.get("timestamp"),
                "mode": details.get("mode"), "as_of": details.get("as_of"),
                "last_record": {k: last.get(k) for k in ("seq", "timestamp", "action", "status")},
                "records_after_start": len(after), "order_records": orders}}
        after.append(rec)
    return None


KILL_SWITCH_ACTION, START_OVER_ACTION = "kill_switch", "state_start_over"
KILL_SWITCH_ON = ("set", "reason_added")         # statuses of a kill_switch record that leave it on
KILL_SWITCH_OFF = ("cleared",)


def _is_account_history(rec: dict) -> bool:
    """An order sent, filled, cancelled or reconciled, or a flatten: the account has a history."""
    action = str(rec.get("action", ""))
    return action.startswith("order_") or action == "flatten"


def account_trail(audit: AuditLogger | None = None) -> dict:
    """What the trail says about the real account, read from the newest record back (so a deleted
    or replaced state database cannot erase it)::

        {"kill_switch": the details of the newest ``kill_switch set/reason_added`` record when no
                        ``kill_switch cleared`` came after it, else None,
         "history": the newest order or flatten record after the last start-over, else None,
         "start_over": the newest ``state_start_over`` record when no such order record came
                       after it, else None}

    Records of an ``--as-of`` replay's throwaway account (``details.replay``) are left out."""
    audit = audit or AuditLogger()
    found: dict = {"kill_switch": None, "history": None, "start_over": None}
    switch_known = False
    for rec in audit.records_backwards():
        details = rec.get("details") if isinstance(rec.get("details"), dict) else {}
        if details.get("replay"):
            continue
        action, status = rec.get("action"), rec.get("status")
        if not switch_known and action == KILL_SWITCH_ACTION and status in KILL_SWITCH_ON + KILL_SWITCH_OFF:
            switch_known = True
            found["kill_switch"] = dict(details, at=details.get("at") or rec.get("timestamp")) \
                if status in KILL_SWITCH_ON else None
        if found["start_over"] is None and found["history"] is None and _is_account_history(rec):
            found["history"] = rec
        if found["start_over"] is None and action == START_OVER_ACTION:
            found["start_over"] = rec
        if switch_known and (found["start_over"] is not None or found["history"] is not None):
            break                              # what is older no longer matters
    return found


# --------------------------------------------------------------------------- command line
def _format(rec: dict) -> str:
    details = rec.get("details")
    text = canonical_json(details) if details is not None else rec.get("raw", "")
    return (f"{rec.get('seq', '?'):>7}  {rec.get('timestamp', '?'):<27}  "
            f"{str(rec.get('action', '?')):<28}  {str(rec.get('status', '?')):<8}  {text}")


def main(argv=None) -> int:
    install_excepthook()
    parser = argparse.ArgumentParser(prog="audit_logging.py", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("verify", help="verify every file of the trail and the checkpoint")
    p_tail = sub.add_parser("tail", help="print recent records")
    p_tail.add_argument("-n", type=int, default=10, help="how many records (default 10)")
    sub.add_parser("rotate", help="rotate the live file (run outside trading hours)")
    sub.add_parser("repair", help="move a torn last line aside and continue the chain")
    p_reset = sub.add_parser("reset-checkpoint", help="re-anchor the checkpoint after an "
                                                      "investigation (records the reset)")
    p_reset.add_argument("--reason", default="", help="why (kept in the trail)")
    args = parser.parse_args(argv)
    config.require_home()             # a mistyped TRADING_HOME: no "OK, 0 records" about nothing
    logging_setup.setup_logging("trading", console=False)
    audit = AuditLogger()
    try:
        if args.command == "verify":
            report = audit.verify()
            if report.valid:
                print(f"Audit trail OK: {report.records} records in {len(report.files)} file(s), "
                      f"last seq {report.last_seq}")
                return 0
            print(f"AUDIT TRAIL NOT VALID ({report.kind}): {report.error}")
            alerts.send_alert("audit_verification_failed", f"python audit_logging.py verify: "
                              f"{report.kind}: {report.error}", severity=_alert_severity(report.kind),
                              key=f"{report.kind}:{report.error}"[:200])
            if report.kind == "tampered":
                log.critical("Audit verification failed: %s", report.error)
            else:
                log.error("Audit verification failed: %s", report.error)
            return 1
        if args.command == "tail":
            for rec in audit.tail(max(1, args.n)):
                print(_format(rec))
            return 0
        if args.command == "rotate":
            target = audit.rotate()
            print(f"Rotated to {_display(target)}" if target else "Nothing to rotate")
            return 0
        if args.command == "repair":
            rec = audit.repair()
            print(f"Torn line moved to {rec['details']['saved_to']}; chain continues at seq "
                  f"{rec['seq']}" if rec else "Nothing to repair: the last line is complete")
            return 0
        if args.command == "reset-checkpoint":
            rec = audit.reset_checkpoint(args.reason)
            print(f"Checkpoint reset at seq {rec['seq']}")
            return 0
    except OSError as exc:                     # read-only home, full disk: one line, no traceback
        problem = storage_error(exc, audit.directory)
        if problem is None:
            raise
        print(f"error: {problem}", file=sys.stderr)
        log.error("%s", problem)
        return 1
    except AuditError as exc:
        print(f"error: {exc}", file=sys.stderr)
        log.error("%s", exc)
        return 1
    return 2


if __name__ == "__main__":
    sys.exit(main())
