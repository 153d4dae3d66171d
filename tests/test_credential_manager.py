"""Encrypted credentials: round trip, wrong key, tampering, permissions, atomic writes, key
rotation, secrecy in logs and exceptions, and the command line."""
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

import credential_manager as cm_mod
import logging_setup
from credential_manager import (CredentialError, CredentialFormatError,
                                CredentialKeyMismatchError, CredentialKeyMissingError,
                                CredentialManager, CredentialPermissionError)

ROOT = Path(__file__).resolve().parent.parent
SECRETS = {"app_key": "AK-very-secret-key-1234", "app_secret": "AS-very-secret-value-5678"}
TOKEN = {"creation_timestamp": 1732460000,
         "token": {"access_token": "AT-access-token-abcdef", "refresh_token": "RT-refresh-xyz987",
                   "expires_at": 1732461800, "token_type": "Bearer", "scope": ["api"],
                   "id_token": {"nested": ["list", {"deep": "DT-deep-secret-value"}]}}}


def mode(path) -> int:
    return os.stat(path).st_mode & 0o777


def run_cli(*args, stdin=""):
    return subprocess.run([sys.executable, "credential_manager.py", *args], cwd=ROOT, input=stdin,
                          capture_output=True, text=True, timeout=60)


def test_round_trip_and_layout(trading_home):
    cm = CredentialManager()
    assert cm.load_credentials("schwab") is None
    path = cm.store_credentials("schwab", SECRETS)
    assert path == trading_home / ".schwab_config.enc"
    assert cm.load_credentials("schwab") == SECRETS
    cm.store_credentials("schwab_token", TOKEN)                   # nested dicts round-trip
    loaded = cm.load_credentials("schwab_token")
    assert loaded == TOKEN and isinstance(loaded, dict)
    assert loaded["token"]["id_token"]["nested"][1]["deep"] == "DT-deep-secret-value"
    cm.store_credentials("reddit", {"client_id": "cid"})
    assert cm.services() == ["reddit", "schwab", "schwab_token"]
    assert (trading_home / ".reddit_config.enc").exists()
    for secret in ("AK-very-secret-key-1234", "AS-very-secret-value-5678"):
        assert secret.encode() not in path.read_bytes()           # encrypted at rest
    key = Path(os.environ["TRADING_CONFIG_DIR"]) / "credentials.key"
    assert mode(key) == 0o600 and mode(key.parent) == 0o700 and mode(path) == 0o600
    assert not str(key).startswith(str(ROOT)) and not str(key).startswith(str(trading_home))


def test_repr_masks_secrets():
    cm = CredentialManager()
    cm.store_credentials("schwab_token", TOKEN)
    loaded = cm.load_credentials("schwab_token")
    text = repr(loaded) + str(loaded) + repr(loaded["token"]) + repr(cm)
    for value in ("AT-access-token-abcdef", "RT-refresh-xyz987", "DT-deep-secret-value"):
        assert value not in text
    assert "***" in text


def test_invalid_service_names():
    cm = CredentialManager()
    for bad in ("../etc", "a/b", "", ".hidden", "x" * 100):
        with pytest.raises(CredentialError, match="Invalid service name"):
            cm.store_credentials(bad, {"a": "b"})
    with pytest.raises(CredentialError, match="must be a dict"):
        cm.store_credentials("schwab", "secret-string")


def test_wrong_key_says_key_changed(monkeypatch):
    cm = CredentialManager()
    cm.store_credentials("schwab", SECRETS)
    cm.key_path.write_bytes(Fernet.generate_key())          # a reinstall made a new key
    with pytest.raises(CredentialKeyMismatchError) as info:
        cm.load_credentials("schwab")
    text = str(info.value)
    assert "not the key this file was encrypted with" in text and "reinstall" in text
    assert "python credential_manager.py set schwab" in text and ".schwab_config.enc" in text
    assert info.value.__cause__ is None and info.value.__suppress_context__  # no InvalidToken chain
    # the one-liner a person runs prints a clear line, not an InvalidToken traceback
    monkeypatch.setenv("TRADING_CREDENTIAL_KEY", Fernet.generate_key().decode())
    with pytest.raises(CredentialKeyMismatchError, match="TRADING_CREDENTIAL_KEY"):
        cm.load_credentials("schwab")


def test_flipped_bit_is_refused():
    cm = CredentialManager()
    path = cm.store_credentials("schwab", SECRETS)
    raw = bytearray(path.read_bytes())
    raw[60] ^= 0x01
    path.write_bytes(bytes(raw))
    os.chmod(path, 0o600)
    with pytest.raises(CredentialKeyMismatchError, match="altered"):
        cm.load_credentials("schwab")


def test_missing_key_never_falls_back_to_plaintext():
    cm = CredentialManager()
    cm.store_credentials("schwab", SECRETS)
    cm.key_path.unlink()
    with pytest.raises(CredentialKeyMissingError, match="credentials.key is missing"):
        cm.load_credentials("schwab")
    plain = cm.home / ".plain_config.enc"
    plain.write_text('{"service": "plain", "data": {"a": "b"}}')
    os.chmod(plain, 0o600)
    with pytest.raises(CredentialKeyMissingError):
        cm.load_credentials("plain")


def test_renamed_file_for_another_service_is_refused():
    cm = CredentialManager()
    cm.store_credentials("reddit", {"client_id": "abc12345"})
    os.rename(cm.path_for("reddit"), cm.path_for("schwab"))
    with pytest.raises(CredentialFormatError, match="holds the credentials of 'reddit'"):
        cm.load_credentials("schwab")


def test_environment_key(monkeypatch):
    key = Fernet.generate_key().decode()
    monkeypatch.setenv("TRADING_CREDENTIAL_KEY", key)
    cm = CredentialManager()
    cm.store_credentials("schwab", SECRETS)
    assert not cm.key_path.exists()                        # no key file when injected
    assert cm.load_credentials("schwab") == SECRETS
    monkeypatch.setenv("TRADING_CREDENTIAL_KEY", "not-a-key")
    with pytest.raises(CredentialError, match="not a valid Fernet key"):
        cm.load_credentials("schwab")


@pytest.mark.parametrize("bad_mode", [0o644, 0o640, 0o604, 0o660])
def test_group_or_world_accessible_file_refused(bad_mode):
    cm = CredentialManager()
    path = cm.store_credentials("schwab", SECRETS)
    os.chmod(path, bad_mode)
    with pytest.raises(CredentialPermissionError) as info:
        cm.load_credentials("schwab")
    assert f"chmod 600 {path}" in str(info.value) and f"{bad_mode:04o}" in str(info.value)
    os.chmod(path, 0o600)
    assert cm.load_credentials("schwab") == SECRETS


def test_symlink_refused(tmp_path):
    cm = CredentialManager()
    path = cm.store_credentials("schwab", SECRETS)
    real = tmp_path / "elsewhere.enc"
    os.rename(path, real)
    path.symlink_to(real)
    with pytest.raises(CredentialPermissionError, match="symlink"):
        cm.load_credentials("schwab")
    with pytest.raises(CredentialPermissionError, match="symlink"):
        cm.store_credentials("schwab", SECRETS)


def test_file_owned_by_someone_else_refused(monkeypatch):
    cm = CredentialManager()
    cm.store_credentials("schwab", SECRETS)
    real = os.geteuid()
    monkeypatch.setattr(cm_mod.os, "geteuid", lambda: real + 1)
    with pytest.raises(CredentialPermissionError, match="owned by uid"):
        cm.load_credentials("schwab")


def test_new_file_is_0600_under_umask_000():
    old = os.umask(0)
    try:
        cm = CredentialManager()
        path = cm.store_credentials("schwab", SECRETS)
        assert mode(path) == 0o600
        assert mode(cm.key_path) == 0o600 and mode(cm.key_dir) == 0o700
        cm.store_credentials("schwab", {"app_key": "new"})      # rewrite keeps 0600
        assert mode(path) == 0o600
    finally:
        os.umask(old)


def test_crash_before_rename_keeps_the_old_file(monkeypatch):
    cm = CredentialManager()
    path = cm.store_credentials("schwab", SECRETS)
    before = path.read_bytes()

    def crash(*args, **kwargs):
        raise OSError("simulated crash before rename")
    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="simulated crash"):
        cm.store_credentials("schwab", {"app_key": "NEW", "app_secret": "NEW"})
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert cm.load_credentials("schwab") == SECRETS
    assert [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")] == []


def test_key_rotation():
    cm = CredentialManager()
    cm.store_credentials("schwab", SECRETS)
    cm.store_credentials("schwab_token", TOKEN)
    old_key = cm.key_path.read_bytes()
    old_file = cm.path_for("schwab").read_bytes()
    assert sorted(cm.rotate_key()) == ["schwab", "schwab_token"]
    assert cm.key_path.read_bytes() != old_key and not cm.next_key_path.exists()
    assert cm.path_for("schwab").read_bytes() != old_file
    assert cm.load_credentials("schwab") == SECRETS
    assert cm.load_credentials("schwab_token") == TOKEN
    assert mode(cm.key_path) == 0o600 and mode(cm.path_for("schwab")) == 0o600
    # the old key no longer opens the files
    with pytest.raises(Exception):
        Fernet(old_key.strip()).decrypt(cm.path_for("schwab").read_bytes().strip())


def test_interrupted_rotation_is_finished_by_running_it_again(monkeypatch):
    cm = CredentialManager()
    cm.store_credentials("a", {"x": "value-a"})
    cm.store_credentials("b", {"x": "value-b"})
    calls = {"n": 0}
    real_replace = os.replace

    def flaky(src, dst, *a, **k):
        calls["n"] += 1
        if calls["n"] == 3:                    # next-key written, file a done, crash on file b
            raise OSError("power loss")
        return real_replace(src, dst, *a, **k)
    monkeypatch.setattr(os, "replace", flaky)
    with pytest.raises(OSError):
        cm.rotate_key()
    monkeypatch.undo()
    assert cm.next_key_path.exists()
    assert cm.load_credentials("a") == {"x": "value-a"}    # both keys decrypt meanwhile
    assert cm.load_credentials("b") == {"x": "value-b"}
    with pytest.raises(CredentialError, match="rotation was interrupted"):
        cm.store_credentials("c", {"x": "y"})
    cm.rotate_key()
    assert not cm.next_key_path.exists()
    assert cm.check() == {"a": None, "b": None}


def test_rotation_with_environment_keys(monkeypatch):
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    monkeypatch.setenv("TRADING_CREDENTIAL_KEY", old)
    cm = CredentialManager()
    cm.store_credentials("schwab", SECRETS)
    with pytest.raises(CredentialError, match="TRADING_CREDENTIAL_KEY_NEW"):
        cm.rotate_key()
    monkeypatch.setenv("TRADING_CREDENTIAL_KEY_NEW", new)
    cm.rotate_key()
    monkeypatch.setenv("TRADING_CREDENTIAL_KEY", new)
    monkeypatch.delenv("TRADING_CREDENTIAL_KEY_NEW")
    assert cm.load_credentials("schwab") == SECRETS


def test_runbook_one_liners():
    load = ("from credential_manager import CredentialManager; cm = CredentialManager(); "
            "creds = cm.load_credentials('schwab'); print('Loaded:', bool(creds))")
    out = subprocess.run([sys.executable, "-c", load], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout == "Loaded: False\n" and out.stderr == ""
    store = ("from credential_manager import CredentialManager; cm = CredentialManager(); "
             "cm.store_credentials('schwab', {'app_key': 'YOUR_KEY', 'app_secret': 'YOUR_SECRET'})")
    assert subprocess.run([sys.executable, "-c", store], cwd=ROOT).returncode == 0
    out = subprocess.run([sys.executable, "-c", load], cwd=ROOT, capture_output=True, text=True)
    assert out.stdout == "Loaded: True\n"


def test_cli_set_list_check():
    res = run_cli("set", "schwab", stdin=f"# from the Schwab portal\napp_key={SECRETS['app_key']}\n"
                                         f"app_secret={SECRETS['app_secret']}\n")
    assert res.returncode == 0, res.stderr
    assert "Stored 2 field(s) for schwab" in res.stdout
    assert CredentialManager().load_credentials("schwab") == SECRETS
    res = run_cli("set", "schwab", "--merge", stdin="app_secret=rotated-secret-0000\n")
    assert res.returncode == 0
    assert CredentialManager().load_credentials("schwab") == {
        "app_key": SECRETS["app_key"], "app_secret": "rotated-secret-0000"}
    res = run_cli("list")
    assert res.returncode == 0
    assert "schwab" in res.stdout and "-rw-------" in res.stdout and "(0600)" in res.stdout
    res = run_cli("check")
    assert res.returncode == 0 and "schwab: OK" in res.stdout
    os.chmod(CredentialManager().path_for("schwab"), 0o644)
    res = run_cli("check")
    assert res.returncode == 1 and "chmod 600" in res.stdout
    assert "UNSAFE" in run_cli("list").stdout
    os.chmod(CredentialManager().path_for("schwab"), 0o600)
    res = run_cli("rotate-key")
    assert res.returncode == 0 and "re-encrypted: schwab" in res.stdout
    assert run_cli("check").returncode == 0
    assert run_cli("set", "schwab", stdin="no equals sign here\n").returncode == 1
    key = run_cli("generate-key").stdout.strip()
    Fernet(key.encode())


def test_no_secret_in_logs_or_exception_texts(trading_home, caplog):
    """A full run of every path: no secret value in any log file, captured record, CLI output or
    exception text."""
    caplog.set_level(logging.DEBUG)
    logging_setup.setup_logging("trading", level=logging.DEBUG, console=False)
    values = [*SECRETS.values(), "AT-access-token-abcdef", "RT-refresh-xyz987",
              "DT-deep-secret-value", "cli-secret-value-42"]
    texts = []
    cm = CredentialManager()
    cm.store_credentials("schwab", SECRETS)
    cm.store_credentials("schwab_token", TOKEN)
    creds = cm.load_credentials("schwab")
    token = cm.load_credentials("schwab_token")
    log = logging.getLogger("trading_api")
    log.info("using %s and token %s", creds, token)
    log.info("raw values leaked by a careless caller: %s %s", creds["app_key"],
             token["token"]["refresh_token"])
    try:
        raise RuntimeError(f"HTTP 401 for app_key={creds['app_key']}")
    except RuntimeError:
        log.exception("Schwab call failed")
    for action in (lambda: cm.key_path.write_bytes(Fernet.generate_key()),
                   lambda: os.chmod(cm.path_for("schwab"), 0o644)):
        action()
        try:
            cm.load_credentials("schwab")
        except CredentialError as exc:
            texts.append(str(exc) + repr(exc))
            logging.getLogger("credentials").error("%s", exc)
    res = run_cli("set", "other", stdin="password=cli-secret-value-42\n")
    texts += [res.stdout, res.stderr, run_cli("list").stdout, run_cli("check").stdout]
    for handler in logging.getLogger().handlers:
        handler.flush()
    logs = [p.read_text() for p in (trading_home / "logs").rglob("*") if p.is_file()]
    assert logs, "the run wrote log files"
    assert any("Stored credentials for schwab" in text for text in logs)
    own = [r.getMessage() for r in caplog.records if r.name == "credentials"]   # unredacted
    assert own
    for value in values:
        assert value not in "\n".join(logs + texts + own), f"secret {value[:4]}... leaked"


def test_cli_set_refuses_a_typo_and_keeps_stored_fields():
    res = run_cli("set", "schwab", stdin=f"app_key={SECRETS['app_key']}\napp_secret={SECRETS['app_secret']}\n")
    assert res.returncode == 0, res.stderr
    res = run_cli("set", "schwab", stdin="app_sercet=typo-value-123456\n")          # typo'd field name
    assert res.returncode == 1
    assert "app_sercet" in res.stderr and "app_key, app_secret, account_hash, callback_url" in res.stderr
    assert "typo-value" not in res.stderr + res.stdout
    assert CredentialManager().load_credentials("schwab") == SECRETS                 # nothing dropped

    res = run_cli("set", "schwab", stdin="app_secret=rotated-secret-000099\n")       # one field, no --merge
    assert res.returncode == 0, res.stderr
    assert "app_secret: changed (21 characters, ends ...99)" in res.stdout
    assert "app_key: kept" in res.stdout and "rotated-secret" not in res.stdout
    assert CredentialManager().load_credentials("schwab") == {
        "app_key": SECRETS["app_key"], "app_secret": "rotated-secret-000099"}

    res = run_cli("set", "schwab", "--replace", stdin="app_key=only-the-key-here\n")   # required field missing
    assert res.returncode == 1 and "needs app_secret" in res.stderr
    assert CredentialManager().load_credentials("schwab")["app_secret"] == "rotated-secret-000099"


def test_cli_check_exits_1_when_a_service_lacks_a_required_field():
    CredentialManager().store_credentials("schwab", {"app_key": "K-only"})
    res = run_cli("check")
    assert res.returncode == 1
    assert "schwab: FAILED" in res.stdout and "lacks app_secret" in res.stdout
    CredentialManager().store_credentials("schwab", {"app_key": "K", "app_secret": "S"})
    CredentialManager().store_credentials("schwab_token", TOKEN)
    res = run_cli("check")
    assert res.returncode == 0, res.stdout
    assert "schwab: OK" in res.stdout and "schwab_token: OK" in res.stdout
    assert "Exit codes" in run_cli("--help").stdout
