"""The TOML configuration file: its text turned into option values, each with the line it came from.

Every option declared in kestrelpy/config.py has one key, its flag without the leading `--` and with `_`
for `-` (`--timeout-keep-alive` is `timeout_keep_alive`), so the file, the flags and the KESTRELPY_*
variables cannot drift apart. Values are checked with the options' own parsers; the ranges are checked
when the Config is built, as for a flag. Nothing here reads argv or the environment.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kestrelpy.config import flag_name, options
from kestrelpy.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - the same parser, before it joined the standard library
    import tomli as tomllib

CONFIG_FILE = "kestrelpy.toml"
PYPROJECT = "pyproject.toml"
PYPROJECT_TABLE = "tool.kestrelpy"
APP_KEY = "app"

Option = tuple[type, "dataclasses.Field[Any]"]


@dataclass(frozen=True)
class FileValues:
    """The options one file sets: `values` by key, already parsed; `lines` says where each key is."""

    path: str
    values: dict[str, Any] = field(default_factory=dict)
    lines: dict[str, int] = field(default_factory=dict)

    def where(self, key: str) -> str:
        line = self.lines.get(key)
        return f"{self.path}:{line}" if line else self.path


def config_key(f: dataclasses.Field[Any]) -> str:
    """The key of an option in the file: its flag without `--`, with `_` for `-`."""
    return flag_name(f)[2:].replace("-", "_")


def keys() -> dict[str, Option]:
    """Every key a file may set but `app`, with the dataclass and field it sets."""
    return {config_key(f): (owner, f) for owner, f in options()}


def discover(directory: Path) -> Path | None:
    """The file read when --config is not given: kestrelpy.toml, else a pyproject.toml with [tool.kestrelpy]."""
    own = directory / CONFIG_FILE
    if own.is_file():
        return own
    pyproject = directory / PYPROJECT
    if pyproject.is_file() and f"[{PYPROJECT_TABLE}]" in pyproject.read_text(encoding="utf-8", errors="replace"):
        return pyproject
    return None


def read(path: Path) -> FileValues:
    """Read and check `path` (kestrelpy.toml or, by its name, a pyproject.toml's [tool.kestrelpy] table)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read the config file {path}: {exc.strerror or exc}") from None
    return parse(text, str(path), pyproject=path.name == PYPROJECT)


def parse(text: str, path: str, *, pyproject: bool = False) -> FileValues:
    """Check the TOML `text` of the file `path` and parse its values; ConfigError names file and line."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(_syntax_error(path, exc)) from None
    table: Any = document
    start = 0
    if pyproject:
        table = document.get("tool", {}).get("kestrelpy", {})
        start = max(text.find(f"[{PYPROJECT_TABLE}]"), 0)
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: [{PYPROJECT_TABLE}] must be a table")
    known = keys()
    result = FileValues(path)
    for key, value in table.items():
        result.lines[key] = _line_of(text, key, start)
        where = result.where(key)
        if key == APP_KEY:
            if not isinstance(value, str) or not value.strip():
                raise ConfigError(f'{where}: app must be a string, as in app = "module:attribute"')
            result.values[key] = value.strip()
        elif key in known:
            result.values[key] = _value(key, known[key][1], value, where)
        else:
            raise ConfigError(_unknown_key(key, where, [APP_KEY, *known]))
    return result


def _syntax_error(path: str, exc: Exception) -> str:
    message = str(exc)
    found = re.search(r"\s*\(at line (\d+), column (\d+)\)", message)
    if found is None:
        return f"{path}: not valid TOML: {message}"
    return f"{path}:{found[1]}:{found[2]}: not valid TOML: {message[: found.start()]}"


def _line_of(text: str, key: str, start: int) -> int:
    """The line of `key = ` (or a `[key]` table) at or after offset `start`, found by a text search: tomllib
    keeps no positions. 0 when not found (a quoted or dotted key spelled otherwise)."""
    pattern = re.compile(
        rf"""^[ \t]*(?:["']?{re.escape(key)}["']?[ \t]*[=.]|\[+[ \t]*{re.escape(key)}[ \t]*[\].])""", re.M
    )
    found = pattern.search(text, start) or pattern.search(text)
    return text.count("\n", 0, found.start()) + 1 if found else 0


def _unknown_key(key: str, where: str, known: list[str]) -> str:
    message = f"{where}: unknown key `{key}`"
    close = difflib.get_close_matches(key.replace("-", "_").lower(), known, n=1, cutoff=0.6)
    if close:
        message += f"; did you mean `{close[0]}`?"
    else:
        message += " (every key is a flag without its leading --, with _ for -: see docs/flags.md)"
    return message


def _value(key: str, f: dataclasses.Field[Any], value: Any, where: str) -> Any:
    """`value` as the option holds it, parsed by the option's own parser (the same as for its flag)."""
    meta = f.metadata
    parse = meta["parse"] or str
    try:
        if meta["repeatable"]:
            items = [value] if isinstance(value, str) else value
            if not isinstance(items, list) or not all(isinstance(item, str) for item in items):
                raise ConfigError(f"{where}: {key} must be an array of strings, not {_describe(value)}")
            return tuple(parse(item) for item in items)
        expected = _expected_type(f.default)
        if expected is bool:
            if not isinstance(value, bool):
                raise ConfigError(f"{where}: {key} must be true or false, not {_describe(value)}")
            return value
        if isinstance(value, bool) or not isinstance(value, expected):
            raise ConfigError(f"{where}: {key} must be {_NAMES[expected]}, not {_describe(value)}")
        if meta["choices"] and value not in meta["choices"]:
            raise ConfigError(f"{where}: {key} must be one of {', '.join(meta['choices'])}, not {value!r}")
        return parse(str(value))
    except ValueError as exc:
        raise ConfigError(f"{where}: {key}: {exc}") from None


_NAMES: dict[Any, str] = {
    int: "an integer",
    (int, float): "a number",
    str: "a string",
    (str, int): "a string (or an integer)",
}


def _expected_type(default: Any) -> Any:
    """The TOML types an option accepts, from the type of its default."""
    if isinstance(default, bool):
        return bool
    if isinstance(default, int):
        return int
    if isinstance(default, float):
        return (int, float)
    if default is None:  # --uds-mode: 660 or "660", read as octal either way
        return (str, int)
    return str


def _describe(value: Any) -> str:
    kind = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "an array"}
    name = "a table" if isinstance(value, dict) else kind.get(type(value), type(value).__name__)
    return f"{name} ({value!r})" if not isinstance(value, (dict, list)) else name


def file_form(key: str, value: Any) -> Any:
    """An effective value as the file would spell it (the inverse of `_value`), for `kestrelpy config`."""
    if key == "uds_mode" and isinstance(value, int):
        return format(value, "o")
    if isinstance(value, tuple):
        return [_item_form(key, item) for item in value]
    return value


def _item_form(key: str, item: Any) -> Any:
    if not isinstance(item, tuple):
        return item
    if key == "ssl_sni":
        name, certfile, keyfile = item
        return f"{name}={certfile}:{keyfile}" if keyfile else f"{name}={certfile}"
    return ":".join(item)
