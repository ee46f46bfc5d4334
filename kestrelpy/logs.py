"""Logger names, the TRACE level and the logging setup: the defaults, `--log-format json` for the server's
own lines, and a user's `--log-config` file (logging.config.dictConfig) applied over them."""

from __future__ import annotations

import datetime
import importlib
import json
import logging
import logging.config
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kestrelpy.errors import ConfigError

if TYPE_CHECKING:
    from kestrelpy.config import Config

TRACE = 5
logging.addLevelName(TRACE, "TRACE")

LEVELS = {
    "critical": logging.CRITICAL,
    "error": logging.ERROR,
    "warning": logging.WARNING,
    "info": logging.INFO,
    "debug": logging.DEBUG,
    "trace": TRACE,
}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: `time` (ISO 8601, UTC), `level`, `logger`, `message`, and `exception` (the
    formatted traceback) when the record carries one."""

    def format(self, record: logging.LogRecord) -> str:
        moment = datetime.datetime.fromtimestamp(record.created, tz=datetime.timezone.utc)
        entry: dict[str, Any] = {
            "time": moment.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False)


def configure_for(config: Config) -> None:
    """The logging `config` asks for (its level, access log, formats and --log-config file)."""
    configure(
        config.log_level,
        access_log=config.access_log,
        access_log_format=config.access_log_format,
        log_format=config.log_format,
        log_config=config.log_config,
    )


def configure(
    level: str,
    *,
    access_log: bool,
    access_log_format: str = "default",
    log_format: str = "text",
    log_config: str = "",
) -> None:
    """stderr for server messages, stdout for the access log (as uvicorn does).

    The `default` access line keeps the level in front, like every server message; any other format
    (kestrelpy/access_log.py) is written bare, so a `combined` line is what nginx writes and a `json`
    line is one JSON object, for tools that read them. `log_format` json writes the server's own lines as
    JSON objects. A `log_config` file is applied after these defaults: what it configures replaces them, what
    it leaves out keeps them.
    """
    user = read_log_config(log_config) if log_config else None  # a bad file is reported before anything changes
    numeric = LEVELS[level]
    access_line = "%(levelname)-8s %(message)s" if access_log_format == "default" else "%(message)s"
    server_format: dict[str, Any] = (
        {"()": JsonFormatter} if log_format == "json" else {"format": "%(levelname)-8s %(message)s"}
    )
    logging.config.dictConfig(
        {
            "version": 1,
            "disable_existing_loggers": False,
            "formatters": {
                "default": server_format,
                "access": {"format": access_line},
            },
            "handlers": {
                "default": {"class": "logging.StreamHandler", "formatter": "default", "stream": sys.stderr},
                "access": {"class": "logging.StreamHandler", "formatter": "access", "stream": sys.stdout},
            },
            "loggers": {
                "kestrelpy": {"handlers": ["default"], "level": numeric, "propagate": False},
                "kestrelpy.access": {
                    "handlers": ["access"],
                    "level": numeric if access_log else logging.CRITICAL + 1,
                    "propagate": False,
                },
            },
        }
    )
    if user is not None:
        apply_log_config(user, log_config)


def read_log_config(path: str) -> dict[str, Any]:
    """The dictConfig schema in `path`: JSON (.json), TOML (.toml) or YAML (.yaml, .yml; needs PyYAML)."""
    suffix = Path(path).suffix.lower()
    if suffix not in (".json", ".toml", ".yaml", ".yml"):
        raise ConfigError(f"--log-config {path}: give a .json, .toml, .yaml or .yml file")
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"--log-config {path}: cannot read it ({exc.strerror or exc})") from None
    try:
        schema = _parse(text, suffix, path)
    except ConfigError:
        raise
    except Exception as exc:  # each parser has its own error class; all mean the same here
        kind = {".json": "JSON", ".toml": "TOML"}.get(suffix, "YAML")
        raise ConfigError(f"--log-config {path}: not valid {kind}: {exc}") from None
    if not isinstance(schema, dict):
        raise ConfigError(f"--log-config {path}: expected a table of logging settings (dictConfig), not a list")
    return schema


def _parse(text: str, suffix: str, path: str) -> Any:
    if suffix == ".json":
        return json.loads(text)
    if suffix == ".toml":
        if sys.version_info >= (3, 11):
            import tomllib
        else:  # pragma: no cover
            import tomli as tomllib
        return tomllib.loads(text)
    try:  # an optional dependency, without type stubs
        yaml = importlib.import_module("yaml")
    except ImportError:
        raise ConfigError(
            f"--log-config {path}: reading YAML needs PyYAML (pip install pyyaml); or write the file as JSON or TOML"
        ) from None
    return yaml.safe_load(text)


def apply_log_config(schema: dict[str, Any], path: str) -> None:
    """dictConfig `schema`, version 1 unless it says, keeping the loggers it does not name."""
    schema = {"version": 1, "disable_existing_loggers": False, **schema}
    try:
        logging.config.dictConfig(schema)
    except (ValueError, TypeError, AttributeError, ImportError) as exc:
        cause = f": {exc.__cause__}" if exc.__cause__ is not None else ""
        raise ConfigError(f"--log-config {path}: logging refused it: {exc}{cause}") from None
