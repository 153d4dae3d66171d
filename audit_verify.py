"""Verifying the hash-chained audit trail: every record of every file, the chain across
files, and the signed checkpoint (used by ``audit_logging.AuditLogger``).

* ``verify()`` reads every file of the trail in chain order (rotated files by name, then the
  live file) and returns a ``VerifyReport``: ``ok``, ``tampered`` (a record edited, removed,
  reordered, duplicated; a file missing, truncated or reordered), ``torn`` (a crash interrupted
  an append: not tampering), ``key_missing``, ``key_mismatch`` (no record verifies with the
  key found: another trail's key, a configuration slip, not tampering), ``key_error`` or ``checkpoint``. The message names
  the first bad record (file and line) and what is wrong.
* ``verify_chain()`` is the same verdict as ``(valid, error)``.
* ``check_line`` authenticates one record (its HMAC); appending uses it too, so that nothing
  is ever chained to a forged record.

``TrailVerifier(trail, key, checkpoint)`` receives what it reads: the trail's files
(``TrailFiles``: the live file and the rotated ones, in chain order), its key
(``audit_checkpoint.AuditKey``) and its checkpoint (``audit_checkpoint.TrailCheckpoint``).
``audit_logging.AuditLogger`` builds one and answers ``verify`` / ``verify_chain`` through it.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from audit_checkpoint import (GENESIS_HASH, AuditChainError, AuditKey, AuditKeyError,
                              AuditKeyMissingError, BadCheckpoint, Checkpoint, TrailCheckpoint,
                              canonical_json)
from audit_checkpoint import display as _display
from audit_checkpoint import mac as _mac

_HASH_KEY = b',"hash":"'         # how the top-level hash member appears in a canonical line
# rotated files: <stem>.YYYYMMDD<suffix>, then -2, -3 ... for a second one the same day
_ROTATED = re.compile(r"^(?P<stem>.+)\.(?P<date>\d{8})(?:-(?P<n>\d+))?(?P<suffix>\.[^.]+)$")


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
    ``key_missing``, ``key_mismatch``, ``key_error``, ``checkpoint``."""
    valid: bool
    error: str | None = None
    kind: str = "ok"
    records: int = 0
    files: list = field(default_factory=list)
    last_seq: int = 0
    last_hash: str = GENESIS_HASH

    def as_tuple(self):
        return self.valid, self.error


# --------------------------------------------------------------------------- one record
def check_line(key: bytes, line: bytes):
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


def split_lines(data: bytes):
    """Complete lines and the torn fragment after the last newline (b'' when none)."""
    lines = data.split(b"\n")
    return lines[:-1], lines[-1]


def _parse_lines(lines: list, key: bytes):
    """``([(lineno, seq, prev_hash, hash)], first problem or None)`` for the complete lines of
    one file: each authenticated, stopping at the first that is not a good record."""
    rows: list = []
    append, mac, tail_re = rows.append, _mac_function(key), _TAIL
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
            return rows, (lineno, "is empty (a line was blanked or removed)")
        obj, bad = check_line(key, line)          # reformatted line, or a bad one
        if bad:
            return rows, (lineno, bad)
        append((lineno, obj["seq"], obj["prev_hash"], obj["hash"]))
    return rows, None


# --------------------------------------------------------------------------- the trail's files
class TrailFiles:
    """The files of the trail whose live file is ``path``: rotated ones beside it
    (``<stem>.YYYYMMDD<suffix>``, ``-2``, ``-3`` ... when a day has more), then the live one."""

    def __init__(self, path: Path):
        self.path = path
        self.directory = path.parent

    def files(self) -> list[Path]:
        """Every file of the trail in chain order: rotated files by name, then the live file."""
        rotated = []
        stem, suffix = self.path.stem, self.path.suffix
        if self.directory.is_dir():
            for entry in self.directory.iterdir():
                m = _ROTATED.match(entry.name)
                if m and m["stem"] == stem and m["suffix"] == suffix and entry.is_file():
                    rotated.append(((m["date"], int(m["n"] or 1)), entry))
        ordered = [p for _, p in sorted(rotated)]
        if self.path.exists():
            ordered.append(self.path)
        return ordered

    def rotation_target(self, day: str) -> Path:
        """The name the live file takes when rotated on ``day`` (YYYYMMDD): the first free one."""
        target = self.directory / f"{self.path.stem}.{day}{self.path.suffix}"
        n = 1
        while target.exists():
            n += 1
            target = self.directory / f"{self.path.stem}.{day}-{n}{self.path.suffix}"
        return target


# --------------------------------------------------------------------------- the verifier
KEY_CONFIGURATION_KINDS = ("key_missing", "key_mismatch")   # where the key is looked up, not tampering


def _no_record_verifies(parsed: list) -> bool:
    """Not one line of any file authenticates with the key. With no checkpoint of this trail
    beside the key either, the key directory is another trail's (a different
    TRADING_CONFIG_DIR), not an edit: the right directory holds the trail's checkpoint."""
    return bool(parsed) and all(not rows for _, rows, _ in parsed) and any(
        problem and "does not match its hash" in problem[1] for _, _, problem in parsed)


@dataclass
class _Walk:
    """How far the chain walk got: the last good record ``(path, lineno, seq, hash)``, how many
    records verified, the hash found at the checkpoint's seq, and the first break (or None)."""
    prev: tuple | None = None
    count: int = 0
    cp_seen: str | None = None
    broken: str | None = None

    @property
    def last(self) -> tuple[int, str]:
        return (self.prev[2], self.prev[3]) if self.prev else (0, GENESIS_HASH)


class TrailVerifier:
    """Reads and verifies the trail: ``trail`` (its files), ``key`` (an ``AuditKey``) and
    ``checkpoint`` (a ``TrailCheckpoint``), each given by ``audit_logging.AuditLogger``."""

    def __init__(self, trail: TrailFiles, key: AuditKey, checkpoint: TrailCheckpoint):
        self.trail = trail
        self.key = key
        self.checkpoint = checkpoint

    def verify_chain(self) -> tuple[bool, str | None]:
        """``(True, None)`` when every file verifies and matches the checkpoint; otherwise
        ``(False, message)`` naming the first bad record (file and line) and what is wrong."""
        return self.verify().as_tuple()

    def verify(self, use_checkpoint: bool = True) -> VerifyReport:
        """Every record of every file, the chain across files, then the checkpoint (unless
        ``use_checkpoint`` is False); a torn last line is reported last, as ``torn``."""
        files = self.trail.files()
        names = [_display(p) for p in files]
        key = self._key_or_report(files, names)
        if isinstance(key, VerifyReport):
            return key
        parsed, torn = self._parse(files, key)
        cp, cp_problem = self._read_checkpoint(key) if use_checkpoint else (None, None)
        walk = _walk(parsed, cp.seq if cp else -1)
        if walk.broken and _no_record_verifies(parsed) and not self.checkpoint.path.exists():
            return VerifyReport(False, self.key.mismatch_text(), "key_mismatch", 0, names)
        if walk.broken:
            return VerifyReport(False, walk.broken, "tampered", walk.count, names)
        if use_checkpoint:
            problem = self._checkpoint_problem(files, cp, cp_problem, walk)
            if problem:
                message, kind = problem
                return VerifyReport(False, message, kind, walk.count, names)
        last_seq, last_hash = walk.last
        if torn:
            return VerifyReport(False, _torn_text(torn, walk.count), "torn", walk.count, names,
                                last_seq, last_hash)
        return VerifyReport(True, None, "ok", walk.count, names, last_seq, last_hash)

    # ----------------------------------------------------------------- the steps of verify
    def _key_or_report(self, files: list[Path], names: list[str]) -> bytes | VerifyReport:
        """The key, or the verdict when there is nothing to verify or the key cannot be read
        (a bad trail id file, an empty trail, a missing or unusable key)."""
        try:
            self.checkpoint.trail_id()
        except AuditChainError as exc:
            return VerifyReport(False, str(exc), "tampered", 0, names)
        nonempty = [p for p in files if p.stat().st_size > 0]
        if not nonempty and not self.checkpoint.path.exists():
            return VerifyReport(True, None, "ok", 0, names)
        try:
            return self.key.load(create=False)
        except AuditKeyMissingError:
            count = sum(p.read_bytes().count(b"\n") for p in nonempty)
            return VerifyReport(False, self.key.missing_text(count), "key_missing", 0, names)
        except AuditKeyError as exc:
            return VerifyReport(False, str(exc), "key_error", 0, names)

    def _parse(self, files: list[Path], key: bytes):
        """Pass 1: every line of every file parsed and authenticated. Returns ``[(path, rows,
        first problem)]`` and the live file's torn last line ``(path, lineno, bytes)`` or None."""
        parsed, torn = [], None
        for path in files:
            lines, fragment = split_lines(path.read_bytes())
            rows, problem = _parse_lines(lines, key)
            if fragment and problem is None:
                if path == self.trail.path:
                    torn = (path, len(lines) + 1, len(fragment))
                else:
                    problem = (len(lines) + 1, "is incomplete (no newline) in a rotated file: the "
                                               "file was truncated or damaged")
            parsed.append((path, rows, problem))
        return parsed, torn

    def _read_checkpoint(self, key: bytes) -> tuple[Checkpoint | None, str | None]:
        """The checkpoint (None when there is none yet) and, when it is bad, why."""
        try:
            return self.checkpoint.read(key), None
        except BadCheckpoint as exc:
            return None, str(exc)

    def _checkpoint_problem(self, files: list[Path], cp: Checkpoint | None, cp_problem: str | None,
                            walk: _Walk) -> tuple[str, str] | None:
        """Pass 3: ``(message, kind)`` when the chain does not match its checkpoint: a bad or
        missing checkpoint, a deleted log, a truncated or rewritten end, an append's alarm."""
        count = walk.count
        last_seq = walk.last[0]
        if cp_problem:
            return f"Hash chain broken: the {cp_problem}", "checkpoint"
        if cp is None and count:
            return (f"Checkpoint missing: {self.checkpoint.path} does not exist but the trail has "
                    f"{count} records (last seq {last_seq}), so removal of records from its end "
                    f"cannot be ruled out. If the key directory was reset or the project moved, "
                    f"check the trail, then run: python audit_logging.py reset-checkpoint",
                    "checkpoint")
        if cp is None:
            return None                                 # nothing complete yet: a torn first line
        live = self.trail.path
        if not files and cp.seq > 0:
            return (f"Hash chain broken: the audit log {_display(live)} is missing (no audit file "
                    f"in {_display(self.trail.directory)}) but the checkpoint recorded seq "
                    f"{cp.seq}: the log was deleted", "tampered")
        if cp.seq > last_seq:
            return self._truncated_text(cp, walk), "tampered"
        if cp.seq > 0 and walk.cp_seen != cp.hash:
            return (f"Hash chain broken: record seq {cp.seq} does not have the hash the "
                    f"checkpoint recorded (updated {cp.updated}): the end of the trail "
                    f"was removed and rewritten", "tampered")
        if cp.alarm:
            return (f"Hash chain broken: an append found the trail inconsistent with "
                    f"its checkpoint: {cp.alarm}. After investigating, run: python "
                    f"audit_logging.py reset-checkpoint", "tampered")
        return None

    def _truncated_text(self, cp: Checkpoint, walk: _Walk) -> str:
        """The chain ends before the checkpoint's seq: records were cut off its end."""
        live, prev, last_seq = self.trail.path, walk.prev, walk.last[0]
        where = f"{_display(prev[0])} line {prev[1]}" if prev else "the start"
        missing = "" if live.exists() else f" ({_display(live)} itself is missing)"
        copy = ""
        if cp.log and cp.log != str(live) and Path(cp.log).exists():
            copy = (f" (the checkpoint was last written through {cp.log}: if this "
                    f"TRADING_HOME is a copy of that one, the newer records are there)")
        return (f"Hash chain broken: the trail was truncated: it ends at seq "
                f"{last_seq} ({where}) but the checkpoint recorded seq {cp.seq} "
                f"(updated {cp.updated}): records {last_seq + 1}..{cp.seq} were "
                f"removed{missing}{copy}")


# --------------------------------------------------------------------------- the chain walk
def _walk(parsed: list, cp_seq: int) -> _Walk:
    """Pass 2: walk the chain across the files in order, noting the hash at ``cp_seq``; stops
    at the first record that does not follow the one before it, or at a file's problem."""
    prev = None          # (path, lineno, seq, hash)
    count = 0
    cp_seen = None
    for index, (path, rows, problem) in enumerate(parsed):
        for pos, (lineno, seq, prev_hash, hash_) in enumerate(rows):
            if prev is None:
                if seq != 1 or prev_hash != GENESIS_HASH:
                    return _Walk(prev, count, cp_seen, _bad_start(parsed, index, pos))
            elif seq != prev[2] + 1 or prev_hash != prev[3]:
                return _Walk(prev, count, cp_seen, _diagnose(parsed, index, pos, prev))
            prev = (path, lineno, seq, hash_)
            count += 1
            if seq == cp_seq:
                cp_seen = hash_
        if problem:
            lineno, what = problem
            return _Walk(prev, count, cp_seen, f"Hash chain broken: {_display(path)} line {lineno}: {what}")
    return _Walk(prev, count, cp_seen)


def _file_holding(parsed, seq):
    for path, rows, _ in parsed:
        if any(r[1] == seq for r in rows):
            return path
    return None


def _bad_start(parsed, index: int, pos: int) -> str:
    """Say what is wrong when the first record of the trail is not seq 1 after the genesis hash."""
    path, rows, _ = parsed[index]
    lineno, seq = rows[pos][0], rows[pos][1]
    name = _display(path)
    later = _file_holding(parsed[index + 1:], 1)
    if pos == 0 and later is not None:
        return (f"Hash chain broken: rotated files out of order: {name} starts at seq {seq} but "
                f"{_display(later)}, which sorts after it, holds seq 1 (files renamed or reordered)")
    return (f"Hash chain broken: {name} line {lineno} (seq {seq}): the trail starts at seq "
            f"{seq}, records 1..{seq - 1} are missing (an older rotated file or the start of "
            f"{name} was deleted)")


def _torn_text(torn: tuple, count: int) -> str:
    path, lineno, size = torn
    return (f"Torn last line: {_display(path)} line {lineno} is incomplete ({size} bytes, no "
            f"newline): a crash interrupted an append. This is not tampering; the {count} "
            f"records before it verify. The next append (or `python audit_logging.py repair`) "
            f"moves it aside and continues the chain.")


def _diagnose(parsed, index, pos, prev) -> str:
    """Say what is wrong where record ``pos`` of file ``index`` does not follow ``prev``."""
    path, rows, _ = parsed[index]
    lineno, seq, prev_hash, hash_ = rows[pos]
    name = _display(path)
    where = f"{name} line {lineno} (seq {seq})"
    expected = prev[2] + 1
    prev_where = f"{_display(prev[0])} line {prev[1]}"
    if pos == 0 and prev[0] != path:            # at a file boundary
        if seq > expected:
            holder = _file_holding(parsed[index + 1:], expected)
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
