"""The effective tunables: constants.py's defaults, ``settings.toml`` and ``TRADING_SET_<NAME>``,
checked, then applied onto ``constants`` once at each start.

``constants.py`` declares every tunable, its default and, in ``TUNABLE_SPECS``, what it may be
(kind, unit, allowed range) and the topic it is grouped under. Two optional sources override a
default, each by the constant's name:

* ``$TRADING_HOME/settings.toml`` (``constants.SETTINGS_FILE``): a table per topic of
  ``TUNABLE_SPECS`` (``[signals]``, ``[risk]``, ...), or a bare key at the top (names are unique,
  so a bare key is never ambiguous);
* the environment: ``TRADING_SET_<NAME>=value`` (``constants.ENV_SETTING_PREFIX``), which wins
  over the file.

``apply()`` reads both, checks every value whatever its source (constants.py included: a type, a
unit's range, a few relations such as DRIFT_LOW < DRIFT_MEDIUM), refuses an unknown name with the
nearest valid one, and sets the effective values on the ``constants`` module. It is the ONE place
that writes to ``constants``: ``logging_setup.setup_logging`` calls it (every entry point calls
that first; ``health_check``, ``cron_install`` and ``scheduler --dry-run`` call ``apply`` before
their own work), so every ``C.X`` read after start-up sees the effective value. Code reads a
tunable at call time, never at import (tests/test_tunables.py checks): a default argument is
``None`` and resolved inside. A problem is one line (``SettingsError``, a ``config.ConfigError``)
naming the source, the key, the value and what is allowed.

``python live_trading.py config`` prints the effective values and where each came from
(``describe``); secrets (the credential keys, the alert URLs) are never shown.
"""
from __future__ import annotations

import difflib
import math
import os
import re
import tomllib
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import config
import constants as C

DEFAULT, FILE, ENVIRONMENT = "default", "file", "environment"
# environment variables shown by `config` whose values are secrets (never printed)
SECRET_ENVIRONMENT = (C.ENV_CREDENTIAL_KEY, C.ENV_CREDENTIAL_KEY_NEW, C.ENV_ALERT_URLS)
# environment variables `config` lists (read by config.py and the commands; not tunables)
SHOWN_ENVIRONMENT = (C.ENV_TRADING_MODE, C.ENV_TRADING_HOME, C.ENV_DATA_SOURCE, C.ENV_CONFIG_DIR,
                     C.ENV_CSV_DIR, C.ENV_TRADING_NOW, C.ENV_TRAIN_PROFILE, C.ENV_CRONTAB_FILE,
                     C.ENV_ALERT_URLS, C.ENV_CREDENTIAL_KEY, C.ENV_CREDENTIAL_KEY_NEW)
_KINDS = ("int", "float", "bool", "choice", "date", "str", "int_or_none", "fixed")
_INTERVAL = re.compile(r"^\s*([\[(])\s*(-?inf|[-+0-9.e]+)\s*,\s*(inf|[-+0-9.e]+)\s*([\])])\s*$")
# the values of constants.py as imported, before anything was applied (the type of a fixed one)
_DECLARED = {name: getattr(C, name) for group in C.TUNABLE_SPECS.values() for name in group}
# what apply() set on constants: name -> (the value before, the value set); undone by the next apply
_applied: dict[str, tuple[object, object]] = {}


class SettingsError(config.ConfigError):
    """A tunable has a value the system refuses (wrong type, out of range, unknown name)."""


@dataclass(frozen=True)
class Spec:
    """What one tunable may be: ``constants.TUNABLE_SPECS[group][name]``."""
    name: str
    group: str
    kind: str
    unit: str
    allowed: Any = None             # an interval text for numbers, the values for a choice

    def bounds(self) -> tuple[float, bool, float, bool] | None:
        """(low, low included, high, high included) of a number, else None."""
        if self.kind not in ("int", "float", "int_or_none") or not self.allowed:
            return None
        m = _INTERVAL.match(str(self.allowed))
        if not m:
            raise ValueError(f"constants.TUNABLE_SPECS: {self.name}: bad interval {self.allowed!r}")
        return float(m.group(2)), m.group(1) == "[", float(m.group(3)), m.group(4) == "]"

    def allowed_text(self) -> str:
        """What is allowed, for a person: ``0 < MAX_DRAWDOWN < 1 (fraction of the peak ...)``."""
        b = self.bounds()
        if b is not None:
            low, low_in, high, high_in = b
            parts = []
            if math.isfinite(low):
                parts.append(f"{_num(low)} {'<=' if low_in else '<'} ")
            parts.append(self.name)
            if math.isfinite(high):
                parts.append(f" {'<=' if high_in else '<'} {_num(high)}")
            what = "a whole number" if self.kind == "int" else "a number"
            if self.kind == "int_or_none":
                what = "a whole number (or leave it out for automatic)"
            return f"{what}, {''.join(parts)} ({self.unit})"
        if self.kind == "bool":
            return "true or false"
        if self.kind == "choice":
            return "one of " + ", ".join(f'"{v}"' for v in (self.allowed or ()))
        if self.kind == "date":
            return 'a date "YYYY-MM-DD"'
        if self.kind == "str":
            return f"text ({self.unit})"
        return f"fixed by the program ({self.unit}): not a setting"


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else repr(x)


def specs() -> dict[str, Spec]:
    """Every tunable's ``Spec`` by name, from ``constants.TUNABLE_SPECS``."""
    out = {}
    for group, entries in C.TUNABLE_SPECS.items():
        for name, (kind, unit, allowed) in entries.items():
            out[name] = Spec(name, group, kind, unit, allowed)
    return out


# ------------------------------------------------------------------------------ checking
def _type_word(value) -> str:
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, str):
        return "text (in quotes)"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, dict):
        return "a table"
    return type(value).__name__


def _show(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if value is None:
        return "None"
    if isinstance(value, float) and value.is_integer():
        return repr(value).removesuffix(".0")        # TRADING_SET_X=15 reads 15, as written
    return repr(value)


def _problem(spec: Spec, value, where: str, what: str, fix: str = "") -> SettingsError:
    text = f"{where}: {spec.name} = {_show(value)} {what}; allowed: {spec.allowed_text()}"
    return SettingsError(text + (f". Fix: {fix}" if fix else ""))


def check(spec: Spec, value, where: str):
    """``value`` as the program uses it (an int as float for a float, a TOML date as text), or
    a ``SettingsError`` naming ``where``, the key, the value and what is allowed."""
    kind = spec.kind
    raw = value                                   # shown in a message as it was written
    if kind == "fixed":
        declared = _DECLARED.get(spec.name, value)
        if type(value) is not type(declared):
            raise _problem(spec, value, where, f"is {_type_word(value)}, not {_type_word(declared)}",
                           f"put back {spec.name} = {_show(declared)}")
        return value
    if kind == "int_or_none" and value is None:
        return None
    if kind in ("int", "float", "int_or_none"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            fix = "write the number without quotes" if isinstance(value, str) else ""
            if isinstance(value, str):
                try:
                    float(value)
                    fix = f"write {spec.name} = {value.strip()} (no quotes)"
                except ValueError:
                    pass
            raise _problem(spec, value, where, f"is {_type_word(value)}, not a number", fix)
        if isinstance(value, float) and not math.isfinite(value):
            raise _problem(spec, value, where, "is not a finite number")
        if kind in ("int", "int_or_none"):
            if isinstance(value, float):
                if not value.is_integer():
                    raise _problem(spec, raw, where, "is not a whole number")
                value = int(value)
        else:
            value = float(value)
        low, low_in, high, high_in = spec.bounds() or (-math.inf, True, math.inf, True)
        if (value < low or (value == low and not low_in)) or (value > high or (value == high and not high_in)):
            fix = ""
            if "fraction" in spec.unit and high <= 1 < value <= 100:
                fix = f"a fraction, not a percentage: {_num(value)} % is {_num(value / 100)}"
            raise _problem(spec, raw, where, "is out of range", fix)
        return value
    if kind == "bool":
        if not isinstance(value, bool):
            raise _problem(spec, value, where, f"is {_type_word(value)}, not true/false",
                           "write true or false (no quotes)" if isinstance(value, str) else "")
        return value
    if isinstance(value, date) and kind == "date":
        value = value.isoformat()
    if not isinstance(value, str):
        raise _problem(spec, value, where, f"is {_type_word(value)}, not text")
    if kind == "choice":
        if value not in (spec.allowed or ()):
            raise _problem(spec, value, where, "is not an accepted value")
    elif kind == "date":
        try:
            ok = bool(re.fullmatch(r"\d{4}-\d{2}-\d{2}", value)) and date.fromisoformat(value) is not None
        except ValueError:
            ok = False
        if not ok:
            raise _problem(spec, value, where, "is not a date")
    elif kind == "str":
        if not value.strip() or "\n" in value:
            raise _problem(spec, value, where, "is empty or has a line break")
    return value


def _parse_environment(spec: Spec, text: str):
    """The value of ``TRADING_SET_<NAME>=text``, by the tunable's kind (checked afterwards)."""
    raw = text.strip()
    try:
        if spec.kind == "float":
            return float(raw)
        if spec.kind == "int":
            return int(raw)
        if spec.kind == "int_or_none":
            return None if raw.lower() in ("", "none") else int(raw)
    except ValueError:
        return text                                    # refused by check() as text, with its range
    if spec.kind == "bool":
        lowered = raw.lower()
        if lowered in ("true", "1", "yes", "on"):
            return True
        if lowered in ("false", "0", "no", "off"):
            return False
        return text
    return raw


def _relations(values: dict) -> list[str]:
    """Rules between tunables (each one line)."""
    problems = []
    drift = [values[n] for n in ("DRIFT_LOW", "DRIFT_MEDIUM", "DRIFT_HIGH", "DRIFT_CRITICAL")]
    if not all(a < b for a, b in zip(drift, drift[1:])):
        problems.append(f"DRIFT_LOW < DRIFT_MEDIUM < DRIFT_HIGH < DRIFT_CRITICAL must hold; they are "
                        f"{', '.join(_show(v) for v in drift)}")
    if not values["TOKEN_WARN_AGE_DAYS"] < values["TOKEN_MAX_AGE_DAYS"]:
        problems.append(f"TOKEN_WARN_AGE_DAYS ({_show(values['TOKEN_WARN_AGE_DAYS'])}) must be below "
                        f"TOKEN_MAX_AGE_DAYS ({_show(values['TOKEN_MAX_AGE_DAYS'])})")
    if not values["VALIDATION_FRACTION"] + values["TEST_FRACTION"] < 1:
        problems.append(f"VALIDATION_FRACTION + TEST_FRACTION must be below 1; they are "
                        f"{_show(values['VALIDATION_FRACTION'])} + {_show(values['TEST_FRACTION'])}")
    if not values["SAMPLE_START"] < values["SAMPLE_END"]:
        problems.append(f"SAMPLE_START ({values['SAMPLE_START']}) must be before SAMPLE_END "
                        f"({values['SAMPLE_END']})")
    if values["PBO_BLOCKS"] % 2:
        problems.append(f"PBO_BLOCKS must be even (CSCV splits the blocks in halves); it is {_show(values['PBO_BLOCKS'])}")
    return problems


# ------------------------------------------------------------------------------ loading
@dataclass(frozen=True)
class Effective:
    """The effective tunables: ``values`` and ``sources`` (default, file, environment) by name,
    the settings file looked at, and the defaults (constants.py)."""
    values: dict
    sources: dict
    defaults: dict
    settings_file: Path
    file_found: bool = False
    env_names: dict = field(default_factory=dict)     # name -> the environment variable that set it

    def overrides(self) -> dict:
        """{name: value} of the tunables set by the file or the environment."""
        return {n: self.values[n] for n, s in self.sources.items() if s != DEFAULT}


def settings_file() -> Path:
    """``$TRADING_HOME/settings.toml``."""
    return config.path(C.SETTINGS_FILE)


def _suggest(name: str, choices) -> str:
    by_upper = {c.upper(): c for c in choices}
    close = difflib.get_close_matches(name.upper(), list(by_upper), n=1, cutoff=0.6)
    return f"; did you mean {by_upper[close[0]]}?" if close else ""


def _read_file(path: Path, table: dict[str, Spec]) -> dict:
    """{name: (value, where)} from the settings file (empty when there is none)."""
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        return {}
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"{path} is not valid TOML: {exc}. Fix that line (see docs/RUNBOOK.md, "
                            f"'Changing a setting')") from None
    except OSError as exc:
        raise SettingsError(f"cannot read {path}: {exc.strerror or exc}") from None
    groups = sorted(C.TUNABLE_SPECS)
    found: dict = {}

    def take(name: str, value, section: str | None) -> None:
        where = f"{path} [{section}]" if section else str(path)
        spec = table.get(name)
        if spec is None:
            raise SettingsError(f"{where}: unknown setting {name}{_suggest(name, table)} (names as in "
                                f"constants.py; `python live_trading.py config` lists them)")
        if section is not None and spec.group != section:
            raise SettingsError(f"{where}: {name} belongs in [{spec.group}], not [{section}]")
        if spec.kind == "fixed":
            raise SettingsError(f"{where}: {name} cannot be set: {spec.allowed_text()}. Fix: remove it")
        found[name] = (value, where)

    for key, value in data.items():
        if isinstance(value, dict):
            if key not in C.TUNABLE_SPECS:
                close = difflib.get_close_matches(key.lower(), groups, n=1, cutoff=0.6)
                hint = f"; did you mean [{close[0]}]?" if close else ""
                raise SettingsError(f"{path}: unknown table [{key}]{hint} (tables: {', '.join(groups)})")
            for name, inner in value.items():
                take(name, inner, key)
        else:
            take(key, value, None)
    return found


def _read_environment(environ, table: dict[str, Spec]) -> dict:
    prefix = C.ENV_SETTING_PREFIX
    found = {}
    for var, text in sorted(environ.items()):
        if not var.startswith(prefix):
            continue
        name = var[len(prefix):]
        spec = table.get(name)
        if spec is None:
            hint = _suggest(name, table)
            raise SettingsError(f"environment {var}: unknown setting {name}"
                                f"{hint.replace('did you mean ', 'did you mean ' + prefix)}")
        if spec.kind == "fixed":
            raise SettingsError(f"environment {var}: {name} cannot be set: {spec.allowed_text()}. "
                                f"Fix: unset {var}")
        found[name] = (_parse_environment(spec, text), f"environment {var}")
    return found


def _current_defaults() -> dict:
    """constants.py's values: the module's, with whatever an earlier ``apply`` set put back."""
    values = {}
    for name in specs():
        value = getattr(C, name)
        if name in _applied and _applied[name][1] is value:
            value = _applied[name][0]
        values[name] = value
    return values


def load(environ=None) -> Effective:
    """Read and check the effective tunables (changes nothing). ``environ`` defaults to
    ``os.environ``."""
    environ = os.environ if environ is None else environ
    table = specs()
    defaults = _current_defaults()
    missing = sorted(n for n in table if not hasattr(C, n))
    if missing:
        raise SettingsError(f"constants.TUNABLE_SPECS names {', '.join(missing)}, not in constants.py")
    values, sources, env_names = {}, {}, {}
    problems = []
    for name, spec in table.items():
        try:
            values[name] = check(spec, defaults[name], "constants.py")
        except SettingsError as exc:
            problems.append(str(exc))
        sources[name] = DEFAULT
    path = settings_file()
    from_file = _read_file(path, table)
    from_env = _read_environment(environ, table)
    for source, found in ((FILE, from_file), (ENVIRONMENT, from_env)):
        for name, (value, where) in found.items():
            try:
                values[name] = check(table[name], value, where)
            except SettingsError as exc:
                problems.append(str(exc))
                continue
            sources[name] = source
            if source == ENVIRONMENT:
                env_names[name] = where.split()[-1]
    if not problems:
        problems = _relations(values)
    if problems:
        more = f" (and {len(problems) - 1} more: fix this one and run again)" if len(problems) > 1 else ""
        raise SettingsError(problems[0] + more)
    return Effective(values, sources, defaults, path, path.is_file(), env_names)


def _set(values: dict, sources: dict) -> None:
    """Undo what the last apply set, then set the overridden values on ``constants``."""
    for name, (before, after) in list(_applied.items()):
        if getattr(C, name) is after:
            setattr(C, name, before)
    _applied.clear()
    for name, value in values.items():
        if sources.get(name, DEFAULT) == DEFAULT:
            continue
        before = getattr(C, name)
        setattr(C, name, value)            # the one sanctioned write to constants (see the docstring)
        _applied[name] = (before, value)


_last: list[Effective] = []


def apply(environ=None) -> Effective:
    """Load, check and apply the effective tunables onto ``constants`` (each start of an entry
    point, through ``logging_setup.setup_logging``). Calling it again first undoes the earlier
    overrides, so a second call with another ``TRADING_HOME`` starts from the defaults."""
    effective = load(environ)
    _set(effective.values, effective.sources)
    _last[:] = [effective]
    return effective


def applied_overrides() -> dict:
    """{name: value} that the last ``apply`` in this process set (empty when none): what a worker
    process (a Ray fold) must ``apply_values`` to compute with the same tunables."""
    return _last[0].overrides() if _last else {}


def apply_values(overrides: dict) -> None:
    """Apply ``overrides`` (name -> value, as ``applied_overrides`` gave them in the driver) in a
    worker process, checked like any source."""
    table = specs()
    values, sources = {}, {}
    for name, value in overrides.items():
        if name not in table:
            raise SettingsError(f"unknown setting {name}{_suggest(name, table)}")
        values[name] = check(table[name], value, "walk-forward driver")
        sources[name] = FILE
    _set(values, sources)


# ------------------------------------------------------------------------------ showing
def _env_lines(environ) -> list[tuple[str, str, str]]:
    rows = []
    defaults = {C.ENV_TRADING_MODE: C.DEFAULT_TRADING_MODE, C.ENV_DATA_SOURCE: C.DEFAULT_DATA_SOURCE,
                C.ENV_TRADING_HOME: str(config.home()), C.ENV_CONFIG_DIR: str(config.config_dir()),
                C.ENV_CSV_DIR: str(config.csv_dir())}
    for var in SHOWN_ENVIRONMENT:
        value = environ.get(var, "")
        if value.strip():
            shown = "*** (set; secrets are never shown)" if var in SECRET_ENVIRONMENT else value
            rows.append((var, shown, ENVIRONMENT))
        else:
            rows.append((var, defaults.get(var, "(unset)"), DEFAULT))
    return rows


def describe(effective: Effective, environ=None) -> list[str]:
    """The lines of ``python live_trading.py config``: the environment, then every settable
    tunable in its settings.toml table with its value and source (fixed names are left out)."""
    environ = os.environ if environ is None else environ
    table = specs()
    found = "found" if effective.file_found else "not present"
    lines = [f"# effective settings: constants.py (default) < {effective.settings_file} ({found}) "
             f"< environment {C.ENV_SETTING_PREFIX}<NAME>",
             "# environment"]
    for var, value, source in _env_lines(environ):
        lines.append(f"# {var} = {value}    [{source}]")
    for group in C.TUNABLE_SPECS:
        names = [n for n in C.TUNABLE_SPECS[group] if table[n].kind != "fixed"]
        if not names:
            continue
        lines.append(f"[{group}]")
        for name in names:
            source = effective.sources[name]
            note = source
            if source == ENVIRONMENT:
                note = f"environment {effective.env_names.get(name, '')}".strip()
            if source != DEFAULT:
                note += f", default {_toml(effective.defaults[name])}"
            text = f"{name} = {_toml(effective.values[name])}"
            lines.append(f"{text:<48} # {note}; {table[name].unit}")
    return lines


def as_json(effective: Effective, environ=None) -> dict:
    """``config --json``: {"settings_file", "environment": {var: {value, source}}, "settings":
    {name: {value, source, default, group, unit, allowed}}} (secrets as ``***``)."""
    environ = os.environ if environ is None else environ
    table = specs()
    return {"settings_file": str(effective.settings_file), "settings_file_found": effective.file_found,
            "environment": {var: {"value": value, "source": source} for var, value, source in _env_lines(environ)},
            "settings": {name: {"value": _jsonable(effective.values[name]), "source": effective.sources[name],
                                "default": _jsonable(effective.defaults[name]), "group": spec.group,
                                "unit": spec.unit, "allowed": spec.allowed_text()}
                         for name, spec in table.items() if spec.kind != "fixed"}}


def _jsonable(value):
    return list(value) if isinstance(value, tuple) else value


def _toml(value) -> str:
    if value is None:
        return "# None (automatic)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(value)
