"""The audit trail's signed checkpoint and its trail id (used by ``audit_logging.py``).

The checkpoint (last ``seq`` and ``hash``, HMAC-signed with the audit key) lives in
``config.config_dir()``, outside ``logs/``, and is rewritten on every append, so cutting records
off the end of the log (which leaves a valid chain) is caught. It belongs to the trail, not to
its path: a random *trail id* kept beside the log (``logs/audit/audit_trail_id``) names the
checkpoint file, and the signed checkpoint repeats it. A moved or copied ``TRADING_HOME``
verifies as before; two homes sharing one key directory keep separate checkpoints. Trails from
before the id existed have a checkpoint named after a digest of the log's absolute path; the
first append migrates it. A copy appended to while its original is still in use gets a trail id
of its own (a fork).

This module also holds what the trail and its checkpoint share: the audit errors, the canonical
JSON that is signed, the MAC and the key (``AuditKey``).
"""
from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import config
import constants as C
import fileutil
from errors import UserFacingError

log = logging.getLogger("audit")

GENESIS_HASH = "0" * 64          # prev_hash of seq 1
CP_SLOT = 4096                   # bytes per checkpoint slot (two slots)
_TRAIL_ID = re.compile(r"^[0-9a-f]{16,64}$")

RUNBOOK_AUDIT_SECTION = "docs/RUNBOOK.md, section 'Audit Log Tampering Detected'"


# --------------------------------------------------------------------------- exceptions
class AuditError(UserFacingError):
    """Base class of every audit-trail error."""


class AuditKeyMissingError(AuditError):
    """The HMAC key is gone while a trail (or its checkpoint) exists: nothing can be verified or
    appended until the key is restored. Not evidence of tampering by itself."""


class AuditKeyError(AuditError):
    """The HMAC key file exists but is unusable (bad permissions, wrong format)."""


class AuditChainError(AuditError):
    """The last record of the trail does not verify, so a new record cannot be chained to it."""


class AuditTrailInvalidError(AuditError):
    """The trail does not verify (tampered, checkpoint missing or inconsistent, key missing):
    nothing may trade on it until a person has looked (``require_valid_trail``)."""


# --------------------------------------------------------------------------- shared helpers
def canonical_json(obj) -> str:
    """The one serialisation that is hashed and written: sorted keys, no spaces, UTF-8."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False)


def mac(key: bytes, body: bytes) -> str:
    return hmac.digest(key, body, "sha256").hex()


def utc_timestamp() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def display(path: Path) -> str:
    """A path as a person reads it: relative to TRADING_HOME when inside it."""
    try:
        return str(path.relative_to(config.home()))
    except ValueError:
        return str(path)


def ensure_config_dir() -> Path:
    directory = config.config_dir()
    if not directory.exists():
        directory.mkdir(parents=True, mode=0o700, exist_ok=True)
        os.chmod(directory, 0o700)
    return directory


_HEX = re.compile(r"^[0-9a-f]{64}$")


def load_key(key_path: Path) -> bytes:
    """The audit HMAC key (32 random bytes in hex, mode 0600), created when absent."""
    if not key_path.exists():
        ensure_config_dir()
        fileutil.create_exclusive(key_path, (secrets.token_hex(32) + "\n").encode())
        log.info("Created the audit HMAC key %s (mode 0600)", key_path)
    problem = fileutil.private_file_problem(key_path)
    if problem:
        raise AuditKeyError(f"Audit key {problem} (whoever can read or replace the key can "
                            f"forge the trail)")
    text = key_path.read_text().strip()
    if not _HEX.match(text):
        raise AuditKeyError(f"Audit key {key_path} is not 64 hex digits: the file is "
                            f"damaged. Restore it from your backup of {key_path.parent}")
    return bytes.fromhex(text)


class AuditKey:
    """The trail's HMAC key file at ``path``, read once. ``trail_dir`` and ``checkpoint`` (a
    ``TrailCheckpoint``) only word the message when the key is missing."""

    def __init__(self, path: Path, trail_dir: Path, checkpoint: "TrailCheckpoint"):
        self.path = path
        self.trail_dir = trail_dir
        self.checkpoint = checkpoint
        self.loaded: bytes | None = None

    def load(self, create: bool) -> bytes:
        """The key; ``create=False`` raises ``AuditKeyMissingError`` when the file is absent
        (a reader never creates a key), ``create=True`` makes one (the first append)."""
        if self.loaded is None:
            if not create and not self.path.exists():
                raise AuditKeyMissingError(self.missing_text())
            self.loaded = load_key(self.path)
        return self.loaded

    def missing_text(self, records: int | None = None) -> str:
        what = f"the {records} records of" if records else "the audit trail in"
        return (f"Audit key missing: key file not found at {self.path} ({config.config_dir_source()}), so "
                f"{what} {display(self.trail_dir)} cannot be verified or extended. This is not "
                f"evidence of tampering. If the cron jobs or another shell use another "
                f"{C.ENV_CONFIG_DIR}, use the same value here (./install_cron.sh writes it into the "
                f"cron line); otherwise restore the key (and {self.checkpoint.path.name}) from the "
                f"backup of {self.path.parent}; do not create a new key, or every record will fail "
                f"verification.")

    def mismatch_text(self) -> str:
        return (f"Audit key does not match: the key file at {self.path} ({config.config_dir_source()}) is not "
                f"the key {display(self.trail_dir)} was written with: not one record verifies "
                f"with it. This is a configuration slip, not evidence of tampering: run with the "
                f"{C.ENV_CONFIG_DIR} the trail was written under (the one in the cron line, "
                f"./install_cron.sh --print), or restore that directory from backup.")


@dataclass
class Checkpoint:
    seq: int
    hash: str
    alarm: str | None = None
    updated: str = ""
    gen: int = 0          # write counter: the slot with the highest one is current
    slot: int = 0
    log: str = ""         # the log file that last wrote it


class BadCheckpoint(Exception):
    pass


# --------------------------------------------------------------------------- the checkpoint
class TrailCheckpoint:
    """The checkpoint and trail id of the audit log at ``log_path``.

    ``fixed_path`` pins the checkpoint file (no trail id then). The chain itself is read by the
    caller, who passes what is needed (the last record, a hash lookup) as arguments.
    """

    def __init__(self, log_path: Path, fixed_path: Path | None = None):
        self.log_path = log_path
        self.id_path = log_path.parent / C.AUDIT_TRAIL_ID_FILE
        self._directory = config.config_dir()
        self.fixed_path = fixed_path
        legacy_tag = hashlib.sha256(str(log_path).encode()).hexdigest()[:16]
        self.legacy_path = self._directory / C.AUDIT_CHECKPOINT_FILE.format(tag=legacy_tag)
        self._trail_id: str | None = None
        self.fork_note: dict | None = None
        self._owner_checked = False     # this process saw the checkpoint written by this log

    # ----------------------------------------------------------------- trail id
    def trail_id(self) -> str | None:
        """The trail's id, None when the trail has none yet (new, or from before ids)."""
        if self._trail_id is None:
            try:
                text = self.id_path.read_text().strip()
            except (FileNotFoundError, NotADirectoryError):
                return None
            if not _TRAIL_ID.match(text):
                raise AuditChainError(f"Hash chain broken: the trail id file {display(self.id_path)} "
                                      f"holds {text[:40]!r}, not a trail id: it was edited. Restore "
                                      f"it from backup (see {RUNBOOK_AUDIT_SECTION})")
            self._trail_id = text
        return self._trail_id

    @property
    def path(self) -> Path:
        if self.fixed_path is not None:
            return self.fixed_path
        tid = self.trail_id()
        if tid is None:
            return self.legacy_path
        return self._directory / C.AUDIT_CHECKPOINT_FILE.format(tag=tid)

    def new_trail_id(self, key: bytes, migrate_from: Checkpoint | None, replace: bool) -> str:
        """Under the lock: give the trail a new id (carrying ``migrate_from`` over to the new
        checkpoint) and return it."""
        tid = secrets.token_hex(C.AUDIT_TRAIL_ID_BYTES)
        self._trail_id = tid
        if migrate_from is not None:
            self.write(key, migrate_from.seq, migrate_from.hash, migrate_from.alarm)
        if replace:
            fileutil.atomic_write_text(self.id_path, tid + "\n", mode=0o640)
        elif not fileutil.create_exclusive(self.id_path, (tid + "\n").encode(), mode=0o640):
            self._trail_id = None                       # someone else was first: theirs counts
            return self.trail_id()
        return tid

    def ensure_trail_id(self, key: bytes, last_record: Callable[[], dict | None],
                        hash_in: Callable[[Path, int], str | None]) -> None:
        """Under the lock, before an append: make sure the trail has an id, migrating a
        path-named checkpoint and forking a copy that is appended to while its original (the
        trail the checkpoint names as its last writer) is still there. ``last_record()`` is the
        trail's last record; ``hash_in(log, seq)`` the hash of record ``seq`` in another log."""
        if self.fixed_path is not None or self._owner_checked:
            return
        if self.trail_id() is None:
            legacy = None
            if self.legacy_path.exists():
                try:
                    legacy = self.read(key, self.legacy_path)
                except BadCheckpoint:
                    legacy = None                       # left in place: verify names it
            tid = self.new_trail_id(key, legacy, replace=False)
            if legacy is not None:
                self.legacy_path.unlink(missing_ok=True)
                log.info("Audit checkpoint migrated to trail id %s (%s)", tid, self.path.name)
            return
        try:
            cp = self.read(key)
        except BadCheckpoint:
            return
        if cp is None or not cp.log or cp.log == str(self.log_path):
            self._owner_checked = cp is not None
            return
        other = Path(cp.log)
        try:
            same = (other.parent / C.AUDIT_TRAIL_ID_FILE).read_text().strip() == self.trail_id()
        except OSError:
            same = False
        if not same:
            return                                      # moved: the checkpoint follows
        old = self.trail_id()
        carried = Checkpoint(cp.seq, cp.hash, cp.alarm)
        last = last_record()
        if last and last["seq"] < cp.seq and hash_in(other, last["seq"]) == last["hash"]:
            # copied before the original wrote its newer records: they are in the original
            carried = Checkpoint(last["seq"], last["hash"], cp.alarm)
        self.new_trail_id(key, carried, replace=True)
        self.fork_note = {"previous_trail_id": old, "original": cp.log, "at_seq": cp.seq}
        log.warning("This audit trail (%s) is a copy of %s, which is still in use: it continues "
                    "as trail %s with a checkpoint of its own", self.log_path, cp.log,
                    self._trail_id)

    # ----------------------------------------------------------------- the signed slots
    # Two fixed-size slots, written alternately in place (pwrite): a crash while writing one slot
    # leaves the other, one record behind, intact. The log line is fsynced on every append; the
    # checkpoint only with constants.AUDIT_CHECKPOINT_FSYNC (it halves the append rate). Without
    # it a power failure can leave the checkpoint a few records behind, which appends and
    # verify accept as long as the record it names is in the chain with its hash.
    # Each write carries a counter (``gen``); the valid slot with the highest one is current.
    def read(self, key: bytes, path: Path | None = None) -> Checkpoint | None:
        """The newest valid slot (highest ``gen``), None when there is no checkpoint."""
        path = path or self.path
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None
        best, damaged = None, False
        for index, slot in enumerate((raw[:CP_SLOT], raw[CP_SLOT:2 * CP_SLOT])):
            if not slot.strip():
                continue
            try:
                data = json.loads(slot)
                claimed = str(data.pop("mac"))
                ok = hmac.compare_digest(mac(key, canonical_json(data).encode()), claimed)
            except (ValueError, KeyError, AttributeError, TypeError):
                ok = False
            if not ok:
                damaged = True
                continue
            trail = data.get("trail")
            if trail is not None and self.fixed_path is None and trail != self.trail_id():
                raise BadCheckpoint(f"checkpoint {path} belongs to trail {trail}, not to this "
                                    f"trail ({self.trail_id()})")
            if trail is None and data.get("log") != str(self.log_path):
                raise BadCheckpoint(f"checkpoint {path} belongs to "
                                    f"{data.get('log')}, not to {self.log_path}")
            if best is None or int(data["gen"]) > best.gen:
                best = Checkpoint(int(data["seq"]), str(data["hash"]), data.get("alarm"),
                                  str(data.get("updated", "")), int(data["gen"]), index,
                                  str(data.get("log") or ""))
        if best is None and damaged:
            raise BadCheckpoint(f"checkpoint {path} fails its MAC check "
                                f"(edited, or written with another key)")
        return best

    def write(self, key: bytes, seq: int, hash_: str, alarm: str | None) -> None:
        if alarm and len(alarm) > 2000:
            alarm = alarm[:2000] + "..."
        try:
            current = self.read(key)
        except BadCheckpoint:
            current = None
        gen = current.gen + 1 if current else 1
        slot_index = 1 - current.slot if current else 0      # never overwrite the newest slot
        data = {"log": str(self.log_path), "seq": seq, "hash": hash_, "alarm": alarm,
                "updated": utc_timestamp(), "gen": gen}
        if self._trail_id is not None and self.fixed_path is None:
            data["trail"] = self._trail_id
        data["mac"] = mac(key, canonical_json(data).encode())
        text = canonical_json(data).encode()
        if len(text) >= CP_SLOT:
            raise AuditError(f"checkpoint record too long ({len(text)} bytes)")
        slot = text.ljust(CP_SLOT - 1) + b"\n"
        path = self.path
        if not path.exists():
            ensure_config_dir()
            fileutil.create_exclusive(path, b" " * (2 * CP_SLOT - 1) + b"\n")
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW)
        try:
            os.pwrite(fd, slot, slot_index * CP_SLOT)
            if C.AUDIT_CHECKPOINT_FSYNC:
                os.fdatasync(fd)
        finally:
            os.close(fd)

    def alarm(self, key: bytes, last: dict | None,
              hash_at: Callable[[int], str | None]) -> tuple[str | None, str | None]:
        """(sticky alarm kept from the checkpoint, new alarm) for the trail ending at ``last``;
        ``hash_at(seq)`` is the hash of the trail's authentic record ``seq``."""
        seq = last["seq"] if last else 0
        hash_ = last["hash"] if last else GENESIS_HASH
        when = utc_timestamp()
        try:
            cp = self.read(key)
        except BadCheckpoint as exc:
            return None, f"at {when} the {exc}"
        if cp is None:
            if seq == 0:
                return None, None
            return None, (f"at {when} the checkpoint was missing while the trail held records up "
                          f"to seq {seq}: removal of records from its end cannot be ruled out")
        if cp.seq == seq and hmac.compare_digest(cp.hash, hash_):
            return cp.alarm, None
        if last and cp.seq == seq - 1 and hmac.compare_digest(cp.hash, last["prev_hash"]):
            return cp.alarm, None           # a crash between the write and the checkpoint update
        if 0 < cp.seq < seq - 1 and hash_at(cp.seq) == cp.hash:
            return cp.alarm, None           # checkpoint updates lost in a power failure (rare)
        if seq < cp.seq:
            new = (f"at {when} the trail ended at seq {seq} but the checkpoint recorded seq "
                   f"{cp.seq} (updated {cp.updated}): records {seq + 1}..{cp.seq} were removed "
                   f"from its end (truncation), and new records were appended after seq {seq}")
        elif seq == cp.seq:
            new = (f"at {when} record seq {seq} no longer has the hash the checkpoint recorded "
                   f"(updated {cp.updated}): the end of the trail was replaced")
        else:
            new = (f"at {when} the trail ended at seq {seq}, {seq - cp.seq} records past the "
                   f"checkpoint (seq {cp.seq}): records were appended without updating it")
        return cp.alarm, new
