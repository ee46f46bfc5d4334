"""The single frozen configuration object.

Every option is declared once, as a dataclass field whose metadata carries its CLI flag, help text and
how to parse it from a string. `cli.py` builds the argument parser and the `KESTRELPY_*` environment
reader from these fields, so a flag cannot drift from its default or its validation. No I/O happens here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from kestrelpy.errors import ConfigError

HTTP_CHOICES = ("auto", "httptools", "h11")
LOOP_CHOICES = ("auto", "uvloop", "asyncio")
LIFESPAN_CHOICES = ("auto", "on", "off")
LOG_LEVEL_CHOICES = ("critical", "error", "warning", "info", "debug", "trace")


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected a boolean (true/false), got {text!r}")


def parse_header(text: str) -> tuple[str, str]:
    """`NAME:VALUE` as given to --header."""
    name, sep, value = text.partition(":")
    if not sep or not name.strip():
        raise ValueError(f"expected NAME:VALUE, got {text!r}")
    return name.strip(), value.strip()


def option(
    default: Any,
    help: str,
    *,
    flag: str | None = None,
    parse: Callable[[str], Any] | None = None,
    choices: tuple[str, ...] | None = None,
    negatable: bool = False,
    repeatable: bool = False,
    metavar: str | None = None,
) -> Any:
    """Declare a config field once: its default, its help text and how the CLI and environment spell it.

    `flag=None` derives `--field-name` from the field name; `parse` turns a CLI/env string into the value
    (for a `repeatable` option, one item: the environment gives several items one per line).
    """
    metadata = {
        "help": help,
        "flag": flag,
        "parse": parse,
        "choices": choices,
        "negatable": negatable,
        "repeatable": repeatable,
        "metavar": metavar,
    }
    if isinstance(default, (list, dict, set)):
        raise TypeError("mutable defaults are not allowed in a frozen config")
    return field(default=default, metadata=metadata)


@dataclass(frozen=True, slots=True)
class Limits:
    """Connection limits, after Kestrel's KestrelServerLimits. Each default says where it comes from."""

    keep_alive_timeout: float = option(
        5.0,
        "Close a keep-alive connection idle for this many seconds (uvicorn and hypercorn use 5; "
        "raise it above your load balancer's idle timeout).",
        flag="--timeout-keep-alive",
        parse=float,
        metavar="SECONDS",
    )

    def __post_init__(self) -> None:
        if self.keep_alive_timeout <= 0:
            raise ConfigError("--timeout-keep-alive must be greater than 0")


@dataclass(frozen=True, slots=True)
class Config:
    """Everything the server needs to run, validated at construction."""

    app: Any = option(None, "The ASGI application as module:attribute (or the callable itself).")
    host: str = option("127.0.0.1", "Address to listen on (IPv4, IPv6 or a host name).", parse=str)
    port: int = option(8000, "TCP port to listen on; 0 picks a free port.", parse=int)
    backlog: int = option(2048, "Maximum number of connections waiting to be accepted.", parse=int)
    http: str = option("auto", "HTTP/1.1 parser (auto = httptools).", choices=HTTP_CHOICES)
    loop: str = option("auto", "Event loop (auto = uvloop where installed).", choices=LOOP_CHOICES)
    lifespan: str = option(
        "auto", "ASGI lifespan protocol (auto tolerates apps without it).", choices=LIFESPAN_CHOICES
    )
    log_level: str = option("info", "Log level.", choices=LOG_LEVEL_CHOICES)
    access_log: bool = option(True, "Log one line per request.", parse=_parse_bool, negatable=True)
    root_path: str = option("", "ASGI root_path for an app mounted below a URL prefix.", parse=str)
    factory: bool = option(
        False, "Treat APP as a factory: call it with no arguments to get the app.", parse=_parse_bool
    )
    app_dir: str = option(".", "Directory put first on sys.path before importing the app.", parse=str)
    headers: tuple[tuple[str, str], ...] = option(
        (),
        "Extra response header NAME:VALUE sent with every response; repeat for more.",
        flag="--header",
        parse=parse_header,
        repeatable=True,
        metavar="NAME:VALUE",
    )
    server_header: bool = option(True, "Send `Server: kestrelpy`.", parse=_parse_bool, negatable=True)
    date_header: bool = option(True, "Send a Date header.", parse=_parse_bool, negatable=True)
    timeout_graceful_shutdown: float = option(
        30.0,
        "On SIGINT/SIGTERM, wait this many seconds for in-flight requests before closing them.",
        parse=float,
        metavar="SECONDS",
    )
    limits: Limits = field(default_factory=Limits)

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"--port must be between 0 and 65535, not {self.port}")
        if self.backlog < 1:
            raise ConfigError("--backlog must be at least 1")
        if self.timeout_graceful_shutdown < 0:
            raise ConfigError("--timeout-graceful-shutdown must not be negative")
        for name, choices in (
            ("http", HTTP_CHOICES),
            ("loop", LOOP_CHOICES),
            ("lifespan", LIFESPAN_CHOICES),
            ("log_level", LOG_LEVEL_CHOICES),
        ):
            if getattr(self, name) not in choices:
                raise ConfigError(f"--{name.replace('_', '-')} must be one of {', '.join(choices)}")
        for name, value in self.headers:
            if not name or any(c in name + value for c in "\r\n\0"):
                raise ConfigError(f"--header {name!r} contains a line break or NUL")

    def replace(self, **changes: Any) -> Config:
        return dataclasses.replace(self, **changes)


def options() -> Iterator[tuple[type, dataclasses.Field[Any]]]:
    """Every declared option, with the dataclass that owns it (Config first, then Limits)."""
    for owner in (Config, Limits):
        for f in dataclasses.fields(owner):
            if "help" in f.metadata and f.name != "app":
                yield owner, f


def flag_name(f: dataclasses.Field[Any]) -> str:
    return str(f.metadata["flag"] or "--" + f.name.replace("_", "-"))


def env_name(f: dataclasses.Field[Any]) -> str:
    return "KESTRELPY_" + flag_name(f)[2:].replace("-", "_").upper()
