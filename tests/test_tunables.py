"""The settings file (issue 23): every tunable declared with its kind, unit and range in
constants.py, checked at every start whatever its source (constants.py, settings.toml,
TRADING_SET_<NAME>), unknown names refused with the nearest one, the effective values applied to
every read (``live_trading.py config`` shows where each came from, secrets hidden), and a strategy
setting in settings.toml changing what the strategy trades (the signals) and making walk-forward
evidence stale (tests/test_walk_forward_runs.py)."""
import ast
import json

import pytest

import constants as C
import tunables
import walk_forward_runs as runs
from conftest import ROOT, run_entry

META = {"window": 10, "architecture": {"lstm_units": 8, "dense_units": 8, "lstm_layers": 1},
        "training": {"epochs_max": 10, "patience": 3}}


@pytest.fixture
def clean():
    """Whatever a test applies is undone (the defaults again) when it ends."""
    yield
    for name in list(tunables._applied):
        before, after = tunables._applied[name]
        if getattr(C, name) is after:
            setattr(C, name, before)
    tunables._applied.clear()
    tunables._last.clear()


def _constant_names() -> set[str]:
    return {n for n in vars(C) if n.isupper() and not n.startswith("_")} - {
        "STRATEGY_TUNABLES", "OPERATIONAL_TUNABLES", "TUNABLE_SPECS"}


# ------------------------------------------------------------------------- the declarations
def test_every_constant_has_one_spec_in_one_table():
    declared = [n for group in C.TUNABLE_SPECS.values() for n in group]
    assert len(declared) == len(set(declared)), "a constant is declared in two tables"
    missing = _constant_names() - set(declared)
    assert not missing, (f"constants.py: declare {sorted(missing)} in TUNABLE_SPECS (kind, unit, allowed) "
                         f"under its topic's table")
    assert not set(declared) - _constant_names(), "TUNABLE_SPECS names a constant that does not exist"
    for spec in tunables.specs().values():
        assert spec.kind in tunables._KINDS, spec
        spec.bounds()                                  # every interval parses
        if spec.kind in ("int", "float"):
            assert spec.allowed, f"{spec.name}: a number needs its allowed range"


def test_the_declared_defaults_pass(monkeypatch):
    effective = tunables.load(environ={})
    assert set(effective.sources.values()) == {tunables.DEFAULT}
    assert effective.values["SIGNAL_THRESHOLD"] == C.SIGNAL_THRESHOLD


def _import_time_reads(path) -> list[str]:
    """``C.NAME`` evaluated when the module is imported: module and class bodies, default
    arguments, decorators (a lambda's body runs later)."""
    fixed = {n for n, s in tunables.specs().items() if s.kind == "fixed"}
    found = []

    def walk(node):
        if isinstance(node, ast.Lambda):
            return
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "C"
                and node.attr in tunables.specs() and node.attr not in fixed):
            found.append(f"{path.name}:{node.lineno}: C.{node.attr}")
        for child in ast.iter_child_nodes(node):
            walk(child)

    def body(stmts):
        for st in stmts:
            if isinstance(st, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for d in st.args.defaults + [d for d in st.args.kw_defaults if d] + st.decorator_list:
                    walk(d)
            elif isinstance(st, ast.ClassDef):
                for d in st.decorator_list + st.bases:
                    walk(d)
                body(st.body)
            elif isinstance(st, ast.If) and "__name__" in ast.dump(st.test):
                continue
            else:
                walk(st)
    body(ast.parse(path.read_text()).body)
    return found


def test_no_module_reads_a_settable_tunable_at_import():
    """settings.toml is applied at start, after the imports: a value captured at import (a
    default argument, a module-level table) would ignore it."""
    found = [hit for p in sorted(ROOT.glob("*.py")) if p.name not in ("constants.py", "tunables.py")
             for hit in _import_time_reads(p)]
    assert not found, ("read these at call time (x=None, then C.X; or field(default_factory=lambda: C.X)): "
                       + ", ".join(found))


# ------------------------------------------------------------------------- the checks
@pytest.mark.parametrize("name, value, words", [
    ("MAX_DRAWDOWN", 15, ["constants.py", "MAX_DRAWDOWN = 15 ", "out of range", "0 < MAX_DRAWDOWN < 1", "0.15"]),
    ("SIGNAL_THRESHOLD", "0.5", ["constants.py", 'SIGNAL_THRESHOLD = "0.5"', "not a number",
                                 "SIGNAL_THRESHOLD <= 10", "no quotes"]),
    ("MAX_POSITIONS", 2.5, ["MAX_POSITIONS = 2.5", "not a whole number"]),
    ("ALLOW_SHORTS", "yes", ["ALLOW_SHORTS", "not true/false"]),
    ("PAPER_FILL", "open", ["PAPER_FILL", '"next_open", "close"']),
    ("HISTORY_START", "2018-13-01", ["HISTORY_START", "not a date"]),
    ("MODEL_FILE", 5, ["MODEL_FILE", "not text", 'put back MODEL_FILE = "lstm_price_difference_model.h5"']),
    ("FEATURE_COLUMNS", ["a"], ["FEATURE_COLUMNS", "put back"]),
])
def test_a_bad_value_edited_into_constants_py_is_one_line(monkeypatch, name, value, words):
    monkeypatch.setattr(C, name, value)
    with pytest.raises(tunables.SettingsError) as err:
        tunables.load(environ={})
    text = str(err.value)
    assert "\n" not in text
    for word in words:
        assert word in text, text


def test_relations_between_tunables_are_checked(monkeypatch):
    monkeypatch.setattr(C, "DRIFT_LOW", 0.5)
    with pytest.raises(tunables.SettingsError, match="DRIFT_LOW < DRIFT_MEDIUM"):
        tunables.load(environ={})


def test_environment_values_are_parsed_by_kind_and_checked():
    env = {"TRADING_SET_ALLOW_SHORTS": "false", "TRADING_SET_MAX_POSITIONS": "4",
           "TRADING_SET_SIGNAL_THRESHOLD": "0.55", "TRADING_SET_SKILL_HAC_LAG": "none"}
    eff = tunables.load(environ=env)
    assert eff.values["ALLOW_SHORTS"] is False and eff.values["MAX_POSITIONS"] == 4
    assert eff.values["SIGNAL_THRESHOLD"] == 0.55 and eff.sources["SIGNAL_THRESHOLD"] == tunables.ENVIRONMENT
    with pytest.raises(tunables.SettingsError, match=r"environment TRADING_SET_MAX_DRAWDOWN: MAX_DRAWDOWN = 15 "):
        tunables.load(environ={"TRADING_SET_MAX_DRAWDOWN": "15"})
    with pytest.raises(tunables.SettingsError, match="did you mean TRADING_SET_MAX_DRAWDOWN"):
        tunables.load(environ={"TRADING_SET_MAX_DRAWDAWN": "0.1"})
    for fixed in ("LOG_FORMAT", "STATE_DB_FILE", "LOCK_DIR", "DEFAULT_DATA_SOURCE", "STATUS_SERVE_HOST"):
        with pytest.raises(tunables.SettingsError, match="cannot be set"):
            tunables.load(environ={f"TRADING_SET_{fixed}": "x"})


def test_file_sources_layout_and_precedence(trading_home):
    (trading_home / "settings.toml").write_text(
        'MAX_POSITIONS = 3\n[signals]\nSIGNAL_THRESHOLD = 0.5\n[risk]\nMAX_DRAWDOWN = 0.1\n'
        '[data]\nHISTORY_START = 2019-01-02\n[costs]\nPAPER_SLIPPAGE_BPS = 7\n')
    eff = tunables.load(environ={"TRADING_SET_MAX_DRAWDOWN": "0.12"})
    assert eff.values["MAX_POSITIONS"] == 3 and eff.sources["MAX_POSITIONS"] == tunables.FILE   # a bare key
    assert eff.values["SIGNAL_THRESHOLD"] == 0.5 and eff.sources["SIGNAL_THRESHOLD"] == tunables.FILE
    assert eff.values["MAX_DRAWDOWN"] == 0.12 and eff.sources["MAX_DRAWDOWN"] == tunables.ENVIRONMENT
    assert eff.values["HISTORY_START"] == "2019-01-02"                 # a TOML date is text
    assert isinstance(eff.values["PAPER_SLIPPAGE_BPS"], float)       # 7 -> 7.0: one fingerprint
    assert eff.sources["MAX_ORDER_VALUE"] == tunables.DEFAULT


@pytest.mark.parametrize("text, words", [
    ("[risk]\nMAX_DRAWDOWNN = 0.1\n", ["unknown setting MAX_DRAWDOWNN", "did you mean MAX_DRAWDOWN?"]),
    ("signal_threshold = 0.5\n", ["unknown setting signal_threshold", "did you mean SIGNAL_THRESHOLD?"]),
    ("[riks]\nMAX_DRAWDOWN = 0.1\n", ["unknown table [riks]", "did you mean [risk]?"]),
    ("[risk]\nSIGNAL_THRESHOLD = 0.5\n", ["SIGNAL_THRESHOLD belongs in [signals], not [risk]"]),
    ("[signals\n", ["not valid TOML"]),
])
def test_file_mistakes_are_named(trading_home, text, words):
    (trading_home / "settings.toml").write_text(text)
    with pytest.raises(tunables.SettingsError) as err:
        tunables.load(environ={})
    for word in words:
        assert word in str(err.value), str(err.value)


def test_apply_sets_the_effective_values_and_a_second_apply_undoes_them(trading_home, clean):
    settings = trading_home / "settings.toml"
    settings.write_text("[signals]\nSIGNAL_THRESHOLD = 0.5\n")
    default = C.SIGNAL_THRESHOLD
    tunables.apply(environ={})
    assert C.SIGNAL_THRESHOLD == 0.5 and tunables.applied_overrides() == {"SIGNAL_THRESHOLD": 0.5}
    settings.unlink()
    tunables.apply(environ={})
    assert C.SIGNAL_THRESHOLD == default and tunables.applied_overrides() == {}
    tunables.apply_values({"SIGNAL_THRESHOLD": 0.65})               # a walk-forward worker
    assert C.SIGNAL_THRESHOLD == 0.65
    with pytest.raises(tunables.SettingsError, match="MAX_DRAWDOWN = 15"):
        tunables.apply_values({"MAX_DRAWDOWN": 15})


def test_a_strategy_setting_in_the_file_changes_the_walk_forward_fingerprint(trading_home, clean):
    before = runs.config_fingerprint(runs.model_configuration_from_metadata(META))
    (trading_home / "settings.toml").write_text("[log_retention]\nLOG_RETENTION_DAYS = 30\n")
    tunables.apply(environ={})
    assert runs.config_fingerprint(runs.model_configuration_from_metadata(META)) == before   # operational
    (trading_home / "settings.toml").write_text("[signals]\nSIGNAL_THRESHOLD = 0.5\n")
    tunables.apply(environ={})
    assert runs.config_fingerprint(runs.model_configuration_from_metadata(META)) != before   # strategy
    (trading_home / "settings.toml").write_text("[signals]\nSIGNAL_THRESHOLD = 0.6\n")     # = the default
    tunables.apply(environ={})
    assert runs.config_fingerprint(runs.model_configuration_from_metadata(META)) == before


# ------------------------------------------------------------------------- through the entry points
BAD_FILES = [
    ("[risk]\nMAX_DRAWDOWN = 15\n", ["MAX_DRAWDOWN = 15 ", "0 < MAX_DRAWDOWN < 1", "0.15"]),
    ('[signals]\nSIGNAL_THRESHOLD = "0.5"\n', ['SIGNAL_THRESHOLD = "0.5"', "not a number", "no quotes"]),
    ("[risk]\nMAX_DRAWDONW = 0.1\n", ["unknown setting MAX_DRAWDONW", "did you mean MAX_DRAWDOWN?"]),
]


def _one_error_line(done, words):
    assert done.returncode != 0, done.stdout + done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    errors = [line for line in done.stderr.splitlines() if "ERROR" in line or "FAIL" in line]
    assert len(errors) == 1, done.stderr
    for word in words:
        assert word in errors[0], errors[0]


@pytest.mark.parametrize("text, words", BAD_FILES, ids=["percent", "quoted", "typo"])
def test_a_bad_settings_file_stops_signals_with_one_line(trading_home, text, words):
    (trading_home / "settings.toml").write_text(text)
    done = run_entry(["live_trading.py", "signals"], trading_home)
    _one_error_line(done, words)


@pytest.mark.parametrize("args", [
    ["train_model.py", "--profile", "tiny"], ["backtest.py"], ["walk_forward.py"], ["data_collection.py"],
    ["scheduler.py", "--dry-run"], ["cron_install.py", "--print"], ["model_management.py", "list"],
    ["live_trading.py"], ["log_retention.py", "--dry-run"],
], ids=lambda a: a[0])
def test_every_entry_point_checks_the_settings_at_start(trading_home, args):
    (trading_home / "settings.toml").write_text(BAD_FILES[0][0])
    done = run_entry(args, trading_home, timeout=120)
    _one_error_line(done, BAD_FILES[0][1])
    assert not (trading_home / C.MODEL_FILE).exists() and not (trading_home / C.PROCESSED_DATA_FILE).exists()


def test_the_health_check_fails_on_a_bad_setting(trading_home):
    (trading_home / "settings.toml").write_text(BAD_FILES[0][0])
    done = run_entry(["health_check.py"], trading_home)
    assert done.returncode == 2 and "FAIL  settings:" in done.stdout and "MAX_DRAWDOWN = 15" in done.stdout


def test_the_environment_source_is_checked_through_an_entry_point(trading_home):
    (trading_home / C.UNIVERSE_FILE).write_text("AAPL\n")               # a home (config.require_home)
    done = run_entry(["live_trading.py", "signals"], trading_home, env_extra={"TRADING_SET_SIGNAL_THRESHOLD": "abc"})
    _one_error_line(done, ["TRADING_SET_SIGNAL_THRESHOLD", 'SIGNAL_THRESHOLD = "abc"', "not a number"])


def test_config_shows_each_value_and_its_source_and_never_a_secret(trading_home):
    (trading_home / "settings.toml").write_text("[signals]\nSIGNAL_THRESHOLD = 0.55\n")
    secret_key, secret_url = "c2VjcmV0LWtleS1zaG91bGQtbm90LXNob3c=", "tgram://123456:SECRETTOKEN/987"
    env = {"TRADING_SET_MAX_POSITIONS": "4", "TRADING_CREDENTIAL_KEY": secret_key, "TRADING_ALERT_URLS": secret_url}
    done = run_entry(["live_trading.py", "config"], trading_home, env_extra=env)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    line = next(ln for ln in lines if ln.startswith("SIGNAL_THRESHOLD ="))
    assert "0.55" in line and "# file, default 0.6" in line
    line = next(ln for ln in lines if ln.startswith("MAX_POSITIONS ="))
    assert "= 4 " in line and "environment TRADING_SET_MAX_POSITIONS, default 10" in line
    assert next(ln for ln in lines if ln.startswith("MAX_DRAWDOWN =")).split("#")[1].strip().startswith("default")
    assert "[risk]" in lines and "[signals]" in lines
    for secret in (secret_key, "SECRETTOKEN"):
        assert secret not in done.stdout + done.stderr
    assert any(ln.startswith("# TRADING_CREDENTIAL_KEY = ***") for ln in lines)
    as_json = run_entry(["live_trading.py", "config", "--json"], trading_home, env_extra=env)
    data = json.loads(as_json.stdout)
    assert data["settings"]["SIGNAL_THRESHOLD"] == {**data["settings"]["SIGNAL_THRESHOLD"], "value": 0.55,
                                                    "source": "file", "default": 0.6, "group": "signals"}
    assert data["settings"]["MAX_POSITIONS"]["source"] == "environment"
    assert secret_key not in as_json.stdout and "SECRETTOKEN" not in as_json.stdout


def _signals(cli_main, capsys) -> list[str]:
    capsys.readouterr()
    assert cli_main(["signals"]) == 0
    return [line.split()[-1] for line in capsys.readouterr().out.splitlines() if line.strip()]


def test_a_threshold_in_the_settings_file_changes_the_signals(home, capsys, monkeypatch, clean):
    """The override reaches the strategy: SIGNAL_THRESHOLD at its highest allowed value holds
    every symbol; at a very low one, the same model and data trade."""
    import live_trading
    monkeypatch.setenv("TRADING_CONFIG_DIR", str(home / "keys"))
    (home / "settings.toml").write_text("[signals]\nSIGNAL_THRESHOLD = 10\n")
    high = _signals(live_trading.main, capsys)
    assert C.SIGNAL_THRESHOLD == 10.0
    (home / "settings.toml").write_text("[signals]\nSIGNAL_THRESHOLD = 0.001\n")
    low = _signals(live_trading.main, capsys)
    assert len(high) == len(low) == 10
    assert set(high) == {"HOLD"} and set(low) - {"HOLD"}, (high, low)
