"""Verifying the hash-chained audit trail: every record of every file, the chain across
files, and the signed checkpoint (used by ``audit_logging.AuditLogger``).

* ``verify()`` reads every file of the trail in chain order (rotated files by name, then the
  live file) and returns a ``VerifyReport``: ``ok``, ``tampered`` (a record edited, removed,
  reordered, duplicated; a file missing, truncated or reordered), ``torn`` (a crash interrupted
  an append: not tampering), ``key_missing``, ``key_error`` or ``checkpoint``. The message names
  the first bad record (file and line) and what is wrong.
* ``verify_chain()`` is the same verdict as ``(valid, error)``.
* ``_check_line`` authenticates one record (its HMAC); appending uses it too, so that nothing
  is ever chained to a forged record.

``TrailVerifier`` is mixed into ``AuditLogger``, which provides the trail's files (``files()``,
``path``, ``directory``), its key (``_load_key``, ``_key_missing_text``) and its checkpoint
(``checkpoint``, ``checkpoint_path``, ``trail_id()``).
"""
from __future__ import annotations

import hashlib
import hmac
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from audit_checkpoint import (GENESIS_HASH, AuditChainError, AuditKeyError, AuditKeyMissingError,
                              BadCheckpoint, canonical_json)
from audit_checkpoint import display as _display
from audit_checkpoint import mac as _mac

_HASH_KEY = b',"hash":"'         # how the top-level hash member appears in a canonical line


def _mac_function(key: bytes):
    """``_mac`` for one key, reusing the keyed state (about a third faster per record)."""
    base = hmac.new(key, digestmod=hashlib.sha256)

    def mac(body: bytes) -> str:
        h = base.copy()
        h.update(body)
        return h.hexdigest()
    return mac


# The end of a canonical record after its hash member: only the top-level prev_hash can be
# followed by exactly this up to the end of the line (strings cannot hold an unescaped quote).
_TAIL = re.compile(rb',"prev_hash":"([0-9a-f]{64})","seq":([0-9]+),"status":"(?:[^"\\]|\\.)*",'
                   rb'"timestamp":"[^"\\]*"}\Z', re.S)


@dataclass
class VerifyReport:
    """What ``AuditLogger.verify`` found. ``kind`` is one of ``ok``, ``tampered``, ``torn``,
    ``key_missing``, ``key_error``, ``checkpoint``."""
    valid: bool
    error: str | None = None
    kind: str = "ok"
    records: int = 0
    files: list = field(default_factory=list)
    last_seq: int = 0
    last_hash: str = GENESIS_HASH

    def as_tuple(self):
        return self.valid, self.error


class TrailVerifier:
    """Reading and verifying the trail, mixed into ``AuditLogger`` (see the module docstring)."""

    # ----------------------------------------------------------------- one record
    def _check_line(self, key: bytes, line: bytes):
        """(record, None) when the line is a record whose hash verifies, else (None, problem)."""
        try:
            obj = json.loads(line)
        except ValueError as exc:
            return None, f"not valid JSON ({getattr(exc, 'msg', exc)})"
        if not isinstance(obj, dict):
            return None, "not a JSON object"
        claimed = obj.get("hash")
        if not isinstance(claimed, str):
            return None, "has no 'hash' field"
        # Fast path: the line as written is the signed body with the hash member inserted.
        i = line.rfind(_HASH_KEY)
        if i >= 0 and line[i + 9:i + 73] == claimed.encode() and line[i + 73:i + 74] == b'"':
            if hmac.compare_digest(_mac(key, line[:i] + line[i + 74:]), claimed):
                return obj, None
        # Reformatted line (other key order, spaces): canonicalise and check again.
        body = {k: v for k, v in obj.items() if k != "hash"}
        try:
            signed = canonical_json(body).encode()
        except ValueError:
            signed = b""
        if hmac.compare_digest(_mac(key, signed), claimed):
            if not isinstance(obj.get("seq"), int) or not isinstance(obj.get("prev_hash"), str):
                return None, "has no integer 'seq' or no 'prev_hash'"
            return obj, None
        return None, ("content does not match its hash: the record was edited, or written "
                      "without the audit key")

    @staticmethod
    def _split(data: bytes):
        """Complete lines and the torn fragment after the last newline (b'' when none)."""
        lines = data.split(b"\n")
        return lines[:-1], lines[-1]

    # ----------------------------------------------------------------- the whole trail
    def verify_chain(self) -> tuple[bool, str | None]:
        """``(True, None)`` when every file verifies and matches the checkpoint; otherwise
        ``(False, message)`` naming the first bad record (file and line) and what is wrong."""
        return self.verify().as_tuple()

    def verify(self, use_checkpoint: bool = True) -> VerifyReport:
        files = self.files()
        names = [_display(p) for p in files]
        try:
            self.trail_id()
        except AuditChainError as exc:
            return VerifyReport(False, str(exc), "tampered", 0, names)
        nonempty = [p for p in files if p.stat().st_size > 0]
        has_cp = self.checkpoint_path.exists()
        if not nonempty and not has_cp:
            return VerifyReport(True, None, "ok", 0, names)
        try:
            key = self._load_key(create=False)
        except AuditKeyMissingError:
            count = sum(p.read_bytes().count(b"\n") for p in nonempty)
            return VerifyReport(False, self._key_missing_text(count), "key_missing", 0, names)
        except AuditKeyError as exc:
            return VerifyReport(False, str(exc), "key_error", 0, names)

        def broken(msg, kind="tampered", records=0):
            return VerifyReport(False, msg, kind, records, names)

        # Pass 1: parse and authenticate every line of every file.
        parsed = []          # per file: (path, [(lineno, seq, prev_hash, hash)], first problem)
        torn = None
        for path in files:
            lines, fragment = self._split(path.read_bytes())
            rows, problem = [], None
            append, check, mac, tail_re = rows.append, self._check_line, _mac_function(key), _TAIL
            for lineno, line in enumerate(lines, 1):
                # Fast path: the line is byte for byte the canonical line this module writes,
                # i.e. the signed body with the hash member just before the top-level prev_hash.
                i = line.rfind(_HASH_KEY)
                if i > 0:
                    m = tail_re.match(line, i + 74)
                    if m and line[i + 73:i + 74] == b'"':
                        claimed = line[i + 9:i + 73].decode("ascii", "replace")
                        if hmac.compare_digest(mac(line[:i] + line[i + 74:]), claimed):
                            append((lineno, int(m[2]), m[1].decode(), claimed))
                            continue
                if not line.strip():
                    problem = (lineno, "is empty (a line was blanked or removed)")
                    break
                obj, bad = check(key, line)          # reformatted line, or a bad one
                if bad:
                    problem = (lineno, bad)
                    break
                append((lineno, obj["seq"], obj["prev_hash"], obj["hash"]))
            if fragment and problem is None:
                if path == self.path:
                    torn = (path, len(lines) + 1, len(fragment))
                else:
                    problem = (len(lines) + 1, "is incomplete (no newline) in a rotated file: the "
                                               "file was truncated or damaged")
            parsed.append((path, rows, problem))

        # The checkpoint, read now so that the walk can pick up the hash of its record.
        cp, cp_problem, cp_seen = None, None, None
        if use_checkpoint:
            try:
                cp = self.checkpoint.read(key)
            except BadCheckpoint as exc:
                cp_problem = str(exc)
        cp_seq = cp.seq if cp else -1

        # Pass 2: walk the chain across files in order.
        prev = None          # (path, lineno, seq, hash)
        count = 0
        for index, (path, rows, problem) in enumerate(parsed):
            name = _display(path)
            for pos, (lineno, seq, prev_hash, hash_) in enumerate(rows):
                if prev is None:
                    if seq != 1 or prev_hash != GENESIS_HASH:
                        where = f"{name} line {lineno} (seq {seq})"
                        later = self._file_holding(parsed[index + 1:], 1)
                        if pos == 0 and later is not None:
                            return broken(f"Hash chain broken: rotated files out of order: {name} "
                                          f"starts at seq {seq} but {_display(later)}, which sorts "
                                          f"after it, holds seq 1 (files renamed or reordered)",
                                          records=count)
                        return broken(f"Hash chain broken: {where}: the trail starts at seq "
                                      f"{seq}, records 1..{seq - 1} are missing (an older rotated "
                                      f"file or the start of {name} was deleted)", records=count)
                elif seq != prev[2] + 1 or prev_hash != prev[3]:
                    return broken(self._diagnose(parsed, index, pos, prev), records=count)
                prev = (path, lineno, seq, hash_)
                count += 1
                if seq == cp_seq:
                    cp_seen = hash_
            if problem:
                lineno, what = problem
                return broken(f"Hash chain broken: {name} line {lineno}: {what}", records=count)

        last_seq, last_hash = (prev[2], prev[3]) if prev else (0, GENESIS_HASH)
        report = VerifyReport(True, None, "ok", count, names, last_seq, last_hash)

        if use_checkpoint:
            if cp_problem:
                return broken(f"Hash chain broken: the {cp_problem}", "checkpoint", count)
            if cp is None and count:
                return broken(f"Checkpoint missing: {self.checkpoint_path} does not exist but "
                              f"the trail has {count} records (last seq {last_seq}), so removal "
                              f"of records from its end cannot be ruled out. If the key directory "
                              f"was reset or the project moved, check the trail, then run: "
                              f"python audit_logging.py reset-checkpoint", "checkpoint", count)
            if cp is None:
                pass                                    # nothing complete yet: a torn first line
            elif not files and cp.seq > 0:
                return broken(f"Hash chain broken: the audit log {_display(self.path)} is missing "
                              f"(no audit file in {_display(self.directory)}) but the checkpoint "
                              f"recorded seq {cp.seq}: the log was deleted", records=0)
            elif cp.seq > last_seq:
                where = f"{_display(prev[0])} line {prev[1]}" if prev else "the start"
                live = "" if self.path.exists() else f" ({_display(self.path)} itself is missing)"
                copy = ""
                if cp.log and cp.log != str(self.path) and Path(cp.log).exists():
                    copy = (f" (the checkpoint was last written through {cp.log}: if this "
                            f"TRADING_HOME is a copy of that one, the newer records are there)")
                return broken(f"Hash chain broken: the trail was truncated: it ends at seq "
                              f"{last_seq} ({where}) but the checkpoint recorded seq {cp.seq} "
                              f"(updated {cp.updated}): records {last_seq + 1}..{cp.seq} were "
                              f"removed{live}{copy}", records=count)
            elif cp.seq > 0 and cp_seen != cp.hash:
                return broken(f"Hash chain broken: record seq {cp.seq} does not have the hash the "
                              f"checkpoint recorded (updated {cp.updated}): the end of the trail "
                              f"was removed and rewritten", records=count)
            if cp is not None and cp.alarm:
                return broken(f"Hash chain broken: an append found the trail inconsistent with "
                              f"its checkpoint: {cp.alarm}. After investigating, run: python "
                              f"audit_logging.py reset-checkpoint", records=count)
        if torn:
            path, lineno, size = torn
            return VerifyReport(
                False, f"Torn last line: {_display(path)} line {lineno} is incomplete ({size} "
                       f"bytes, no newline): a crash interrupted an append. This is not "
                       f"tampering; the {count} records before it verify. The next append (or "
                       f"`python audit_logging.py repair`) moves it aside and continues the chain.",
                "torn", count, names, last_seq, last_hash)
        return report

    @staticmethod
    def _file_holding(parsed, seq):
        for path, rows, _ in parsed:
            if any(r[1] == seq for r in rows):
                return path
        return None

    def _diagnose(self, parsed, index, pos, prev) -> str:
        """Say what is wrong where record ``pos`` of file ``index`` does not follow ``prev``."""
        path, rows, _ = parsed[index]
        lineno, seq, prev_hash, hash_ = rows[pos]
        name = _display(path)
        where = f"{name} line {lineno} (seq {seq})"
        expected = prev[2] + 1
        prev_where = f"{_display(prev[0])} line {prev[1]}"
        if pos == 0 and prev[0] != path:            # at a file boundary
            if seq > expected:
                holder = self._file_holding(parsed[index + 1:], expected)
                if holder is not None:
                    return (f"Hash chain broken: rotated files out of order: {name} starts at "
                            f"seq {seq} but seq {expected} is in {_display(holder)}, which sorts "
                            f"after it (files renamed or reordered)")
                return (f"Hash chain broken: records {expected}..{seq - 1} are in no file: "
                        f"{_display(prev[0])} ends at seq {prev[2]} and {name} starts at seq "
                        f"{seq}: a rotated file is missing (or {_display(prev[0])} was truncated)")
            if seq <= prev[2]:
                return (f"Hash chain broken: rotated files out of order or overlapping: {name} "
                        f"starts at seq {seq} but {_display(prev[0])}, which sorts before it, "
                        f"already reached seq {prev[2]} (a file renamed, copied or reordered)")
            return (f"Hash chain broken: {where}: prev_hash does not match the last record of "
                    f"{_display(prev[0])}: {name} does not continue that file (a file replaced)")
        if seq == prev[2] and hash_ == prev[3]:
            return f"Hash chain broken: {where}: duplicate of the record on {prev_where}"
        if seq == prev[2]:
            return (f"Hash chain broken: {where}: a second record with seq {seq} (after "
                    f"{prev_where}): the chain forks (records from two different histories)")
        if seq < prev[2]:
            return (f"Hash chain broken: {where}: out of order, seq {seq} after seq {prev[2]} "
                    f"({prev_where}): records swapped, moved or duplicated")
        if seq > expected:
            later = [r for r in rows[pos + 1:] if r[1] == expected]
            if later:
                return (f"Hash chain broken: {where}: out of order, seq {expected} comes later "
                        f"(line {later[0][0]}): records swapped or moved")
            missing = str(expected) if seq - 1 == expected else f"{expected}..{seq - 1}"
            return (f"Hash chain broken: {where}: seq {missing} missing after {prev_where} "
                    f"(record deleted)")
        return (f"Hash chain broken: {where}: prev_hash does not match the hash of seq {prev[2]} "
                f"({prev_where}): a record was replaced or the chain was rebuilt from here")
