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
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kestrelpy.config import flag_name, options, sni_name_problem
from kestrelpy.endpoints import (
    CLIENT_CERTIFICATE_MODES,
    PROTOCOL_CHOICES,
    CertificateFiles,
    Endpoint,
    EndpointTls,
    display_url,
    parse_url,
)
from kestrelpy.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - the same parser, before it joined the standard library
    import tomli as tomllib

CONFIG_FILE = "kestrelpy.toml"
PYPROJECT = "pyproject.toml"
PYPROJECT_TABLE = "tool.kestrelpy"
APP_KEY = "app"
ENDPOINTS_KEY = "endpoints"
DEFAULTS_KEY = "endpoint_defaults"
# The keys of one [endpoints.NAME] table; those after `protocols` only mean something on an https:// one.
ENDPOINT_KEYS = ("url", "protocols", "certificate", "sni", "client_certificate_mode")
HTTPS_ONLY_KEYS = ("certificate", "sni", "client_certificate_mode")
CERTIFICATE_KEYS = ("path", "key_path", "password_env")
# [endpoint_defaults] sets what every endpoint inherits: the server-wide option each key stands for.
DEFAULT_KEYS = {"protocols": "protocols", "client_certificate_mode": "ssl_cert_reqs"}
_ENDPOINT_NAME = re.compile(r"[A-Za-z0-9_-]+")
_VARIABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

Option = tuple[type, "dataclasses.Field[Any]"]


@dataclass(frozen=True)
class FileValues:
    """The options one file sets: `values` by key, already parsed; `lines` says where each key is."""

    path: str
    values: dict[str, Any] = field(default_factory=dict)
    lines: dict[str, int] = field(default_factory=dict)
    endpoints: tuple[Endpoint, ...] = ()  # the [endpoints.NAME] tables, in file order
    # `PATH:LINE` of a dotted key (endpoints.web.certificate), for what is checked after reading
    locate: Callable[..., str] | None = field(default=None, compare=False, repr=False)

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
    locate = _Locator(text, path, ("tool", "kestrelpy") if pyproject else ())
    endpoints: tuple[Endpoint, ...] = ()
    for key, value in table.items():
        result.lines[key] = _line_of(text, key, start)
        where = result.where(key)
        if key == APP_KEY:
            if not isinstance(value, str) or not value.strip():
                raise ConfigError(f'{where}: app must be a string, as in app = "module:attribute"')
            result.values[key] = value.strip()
        elif key == ENDPOINTS_KEY:
            endpoints = _endpoints(value, locate)
        elif key == DEFAULTS_KEY:
            _endpoint_defaults(value, locate, result, known)
        elif key in known:
            result.values[key] = _value(key, known[key][1], value, where)
        else:
            raise ConfigError(_unknown_key(key, where, [APP_KEY, ENDPOINTS_KEY, DEFAULTS_KEY, *known]))
    return dataclasses.replace(result, endpoints=endpoints, locate=locate)


# -- [endpoints.NAME] and [endpoint_defaults] ------------------------------------------------------------


class _Locator:
    """`PATH:LINE` of a key given by its dotted path (endpoints.web.certificate.path), found in the text:
    tomllib keeps no positions. A table header naming the whole path wins; otherwise the key is searched for
    after where its parent was found (as `key =`, a dotted `key.`, or inside an inline table)."""

    def __init__(self, text: str, path: str, prefix: tuple[str, ...]) -> None:
        self.text = text
        self.path = path
        self.prefix = prefix

    def __call__(self, *keys: str) -> str:
        line = self.line(*keys)
        return f"{self.path}:{line}" if line else self.path

    def line(self, *keys: str) -> int:
        offset = self._offset((*self.prefix, *keys))
        return self.text.count("\n", 0, offset) + 1 if offset >= 0 else 0

    def _offset(self, keys: tuple[str, ...]) -> int:
        if not keys:
            return 0
        dotted = r"\s*\.\s*".join(rf"[\"']?{re.escape(k)}[\"']?" for k in keys)
        header = re.search(rf"^[ \t]*\[+[ \t]*{dotted}[ \t]*\]", self.text, re.M)
        if header is not None:
            return header.start()
        parent = self._offset(keys[:-1])
        if parent < 0:
            return -1
        # `key =` or `key.` at the start of the text, or after a space, `{` or `,` (an inline table) or `.`
        # (a dotted key)
        key = re.compile(rf"""(?<![^{{,.\s])["']?{re.escape(keys[-1])}["']?[ \t]*[=.]""")
        found = key.search(self.text, parent)
        return found.start() if found else -1


def _endpoints(value: Any, locate: _Locator) -> tuple[Endpoint, ...]:
    """The [endpoints.NAME] tables as endpoints, each checked; errors name the file, line and key."""
    if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
        raise ConfigError(
            f"{locate(ENDPOINTS_KEY)}: endpoints must be tables, one per endpoint: "
            '[endpoints.NAME] with url = "https://0.0.0.0:8443"'
        )
    return tuple(_endpoint(name, table, locate) for name, table in value.items())


def _endpoint(name: str, table: dict[str, Any], locate: _Locator) -> Endpoint:
    here = (ENDPOINTS_KEY, name)
    if not _ENDPOINT_NAME.fullmatch(name):
        raise ConfigError(f"{locate(*here)}: the endpoint name {name!r} may hold only letters, digits, - and _")
    _check_keys(table, ENDPOINT_KEYS, f"[endpoints.{name}]", locate, here)
    if "url" not in table:
        raise ConfigError(
            f'{locate(*here)}: [endpoints.{name}] has no url; give one, as in url = "https://0.0.0.0:8443"'
        )
    url = _string(table, "url", locate, here)
    endpoint = parse_url(url, source=f"{locate(*here, 'url')}: endpoints.{name}.url {url!r}")
    if not endpoint.tls:
        for key in HTTPS_ONLY_KEYS:
            if key in table:  # Kestrel's ThrowIfContainsHttpsOnlyConfiguration: never silently unused
                raise ConfigError(
                    f"{locate(*here, key)}: the non-HTTPS endpoint [endpoints.{name}] ({url}) sets {key}, which only "
                    f"an https:// endpoint uses; make its url https:// or remove {key}"
                )
    protocols = _choice(table, "protocols", PROTOCOL_CHOICES, locate, here) if "protocols" in table else ""
    settings = None
    if any(key in table for key in HTTPS_ONLY_KEYS):
        certificate = table.get("certificate")
        mode = "client_certificate_mode"
        settings = EndpointTls(
            certificate=_certificate(certificate, locate, (*here, "certificate")) if certificate is not None else None,
            sni=_sni(table["sni"], locate, (*here, "sni")) if "sni" in table else (),
            client_certificate_mode=_choice(table, mode, CLIENT_CERTIFICATE_MODES, locate, here)
            if mode in table
            else None,
        )
    return dataclasses.replace(endpoint, name=name, protocols=protocols, settings=settings)


def _certificate(value: Any, locate: _Locator, here: tuple[str, ...]) -> CertificateFiles:
    dotted = ".".join(here[-3:] if here[-2] == "sni" else here)
    if not isinstance(value, dict):
        raise ConfigError(
            f'{locate(*here)}: {dotted} must be a table, as in {{ path = "cert.pem", key_path = "key.pem" }}, '
            f"not {_describe(value)}"
        )
    _check_keys(value, CERTIFICATE_KEYS, dotted, locate, here)
    if "path" not in value:
        raise ConfigError(
            f'{locate(*here)}: {dotted} has no path; give the PEM file, as in {{ path = "cert.pem", '
            'key_path = "key.pem" }'
        )
    files = {key: _string(value, key, locate, here) for key in CERTIFICATE_KEYS if key in value}
    variable = files.get("password_env", "")
    if variable and not _VARIABLE_NAME.fullmatch(variable):
        raise ConfigError(
            f"{locate(*here, 'password_env')}: {dotted}.password_env must name an environment variable "
            f"(letters, digits and _), not {variable!r}"
        )
    return CertificateFiles(files["path"], files.get("key_path", ""), variable)


def _sni(value: Any, locate: _Locator, here: tuple[str, ...]) -> tuple[tuple[str, CertificateFiles], ...]:
    dotted = ".".join(here)
    if not isinstance(value, dict):
        raise ConfigError(
            f'{locate(*here)}: {dotted} must be a table of server names, as in "*.example.com" = '
            f'{{ path = "wild.pem", key_path = "wild.key" }}, not {_describe(value)}'
        )
    found: dict[str, CertificateFiles] = {}
    for server_name, files in value.items():
        try:
            sni_name_problem(server_name.lower())
        except ValueError as exc:
            raise ConfigError(f"{locate(*here, server_name)}: {dotted}: {exc}") from None
        if server_name.lower() in found:
            raise ConfigError(f"{locate(*here, server_name)}: {dotted}: {server_name.lower()} is given twice")
        found[server_name.lower()] = _certificate(files, locate, (*here, server_name))
    return tuple(found.items())


def _endpoint_defaults(value: Any, locate: _Locator, result: FileValues, known: dict[str, Option]) -> None:
    """[endpoint_defaults]: each key is the server-wide option every endpoint inherits, so it sets that
    option, which a flag or a KESTRELPY_* variable still beats."""
    here = (DEFAULTS_KEY,)
    if not isinstance(value, dict):
        raise ConfigError(f"{locate(*here)}: endpoint_defaults must be a table, not {_describe(value)}")
    _check_keys(value, tuple(DEFAULT_KEYS), f"[{DEFAULTS_KEY}]", locate, here)
    choices = {"protocols": PROTOCOL_CHOICES, "client_certificate_mode": CLIENT_CERTIFICATE_MODES}
    for key, option in DEFAULT_KEYS.items():
        if key not in value:
            continue
        if option in result.values:
            raise ConfigError(
                f"{locate(*here, key)}: [{DEFAULTS_KEY}] {key} and {option} set the same thing; keep one of them"
            )
        chosen = _choice(value, key, choices[key], locate, here)
        result.values[option] = _value(option, known[option][1], chosen, locate(*here, key))
        result.lines[option] = locate.line(*here, key)


def _check_keys(
    table: dict[str, Any], allowed: tuple[str, ...], title: str, locate: _Locator, here: tuple[str, ...]
) -> None:
    for key in table:
        if key not in allowed:
            message = f"{locate(*here, key)}: unknown key `{key}` in {title}"
            close = difflib.get_close_matches(key.replace("-", "_").lower(), allowed, n=1, cutoff=0.6)
            message += f"; did you mean `{close[0]}`?" if close else f" (it takes {', '.join(allowed)})"
            raise ConfigError(message)


def _string(table: dict[str, Any], key: str, locate: _Locator, here: tuple[str, ...]) -> str:
    value = table[key]
    if not isinstance(value, str) or not value.strip():
        what = _describe(value) if not isinstance(value, str) else "an empty string"
        raise ConfigError(f"{locate(*here, key)}: {'.'.join((*here, key))} must be a string, not {what}")
    return value.strip()


def _choice(table: dict[str, Any], key: str, choices: tuple[str, ...], locate: _Locator, here: tuple[str, ...]) -> str:
    value = _string(table, key, locate, here)
    if value in choices:
        return value
    message = f"{locate(*here, key)}: {'.'.join((*here, key))} must be one of {', '.join(choices)}, not {value!r}"
    # Kestrel spells them Http1AndHttp2 and RequireCertificate: suggest ours.
    plain = value.lower().replace("and", "+").replace("certificate", "").replace("require", "required")
    close = [plain] if plain in choices else difflib.get_close_matches(value.lower(), choices, n=1, cutoff=0.6)
    raise ConfigError(f"{message}; did you mean `{close[0]}`?" if close else message)


def with_passwords(file: FileValues, environ: Mapping[str, str]) -> tuple[Endpoint, ...]:
    """The file's endpoints with each certificate's password read from the variable its password_env
    names (in `environ`, given by the command line: nothing here reads the environment)."""
    return tuple(_endpoint_passwords(e, environ, file) for e in file.endpoints)


def _endpoint_passwords(endpoint: Endpoint, environ: Mapping[str, str], file: FileValues) -> Endpoint:
    own = endpoint.settings
    if own is None:
        return endpoint

    def filled(files: CertificateFiles, *here: str) -> CertificateFiles:
        if not files.password_env:
            return files
        if files.password_env not in environ:
            where = file.locate(*here, "password_env") if file.locate else file.path
            raise ConfigError(
                f"{where}: {'.'.join(here)}.password_env names {files.password_env}, which is not set in the "
                "environment"
            )
        return dataclasses.replace(files, password=environ[files.password_env])

    base = (ENDPOINTS_KEY, endpoint.name)
    certificate = filled(own.certificate, *base, "certificate") if own.certificate else None
    sni = tuple((name, filled(files, *base, "sni", name)) for name, files in own.sni)
    return dataclasses.replace(endpoint, settings=dataclasses.replace(own, certificate=certificate, sni=sni))


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


def endpoint_form(endpoint: Endpoint) -> dict[str, Any]:
    """An endpoint of the file as its table would spell it (no password), for `kestrelpy config`."""
    table: dict[str, Any] = {"url": display_url(endpoint), "protocols": endpoint.protocols}
    own = endpoint.settings
    if own is not None:
        if own.certificate is not None:
            table["certificate"] = _certificate_form(own.certificate)
        if own.sni:
            table["sni"] = {name: _certificate_form(files) for name, files in own.sni}
        if own.client_certificate_mode is not None:
            table["client_certificate_mode"] = own.client_certificate_mode
    return table


def _certificate_form(files: CertificateFiles) -> dict[str, str]:
    form = {"path": files.path, "key_path": files.key_path, "password_env": files.password_env}
    return {key: value for key, value in form.items() if value}
