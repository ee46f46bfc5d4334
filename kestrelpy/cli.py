"""The `kestrelpy` command. Flags are generated from the Config fields; CLI beats KESTRELPY_* beats the
config file (kestrelpy/config_file.py) beats defaults.

This is the only place that reads argv or the environment, and the only place that turns a
KestrelpyError into a message and an exit code.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import re
import sys
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from pathlib import Path
from typing import Any

from kestrelpy import __version__, config_file
from kestrelpy.config import NESTED, Config, TlsOptions, env_name, flag_name, options
from kestrelpy.config_file import config_key
from kestrelpy.endpoints import SYSTEMD_VARIABLES, Endpoint, FdEndpoint, systemd_endpoints
from kestrelpy.errors import ConfigError, KestrelpyError

EPILOG = """\
Every flag can also be set through the environment: --timeout-keep-alive is KESTRELPY_TIMEOUT_KEEP_ALIVE,
and so on (several --header values go one per line in KESTRELPY_HEADER). Every flag is also a key of the
config file (--config, else ./kestrelpy.toml, else [tool.kestrelpy] in ./pyproject.toml): --timeout-keep-alive
is timeout_keep_alive. The command line beats the environment, which beats the file.

`kestrelpy config [--json] [FLAGS] [APP]` prints the effective configuration and where each value came from.

`kestrelpy check [--host H] [--port P]` runs the startup guard alone: it explains why a bind would fail
and how to fix it, without starting a server.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kestrelpy",
        description="Serve an ASGI application over HTTP/1.1.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        argument_default=argparse.SUPPRESS,
    )
    parser.add_argument(
        "app",
        metavar="APP",
        nargs="?",
        default=None,
        help="The ASGI application, as module:attribute (may instead be `app` in the config file).",
    )
    parser.add_argument(
        "--config",
        metavar="FILE",
        dest="config_file",
        default=None,
        help=f"TOML config file (default: ./{config_file.CONFIG_FILE}, else [{config_file.PYPROJECT_TABLE}] in "
        f"./{config_file.PYPROJECT}, when there is one).",
    )
    parser.add_argument("--version", action="version", version=f"kestrelpy {__version__}")
    for _owner, f in options():
        meta = f.metadata
        default = f.default
        help_text = f"{meta['help']} [default: {_show_default(default)}]"
        names = [flag_name(f)]
        kwargs: dict[str, Any] = {"dest": f.name, "help": help_text}
        if meta["negatable"]:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif f.type in ("bool", bool):
            kwargs["action"] = "store_true"
        elif meta["repeatable"]:
            kwargs["action"] = "append"
            kwargs["metavar"] = meta["metavar"]
        else:
            if meta["choices"]:
                kwargs["choices"] = meta["choices"]
            if meta["metavar"]:
                kwargs["metavar"] = meta["metavar"]
        parser.add_argument(*names, **kwargs)
    return parser


def _show_default(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if value == ():
        return "none"
    return str(value)


def config_from(
    args: argparse.Namespace, environ: Mapping[str, str], file: config_file.FileValues | None = None
) -> Config:
    """Merge CLI arguments over KESTRELPY_* variables over the config file over the declared defaults."""
    return resolve(args, environ, file)[0]


# Where an effective value came from: ("cli", "--port"), ("env", "KESTRELPY_PORT"), ("file", "PATH:LINE")
# or ("default", "").
Source = tuple[str, str]


def resolve(
    args: argparse.Namespace, environ: Mapping[str, str], file: config_file.FileValues | None = None
) -> tuple[Config, dict[str, Source]]:
    """The merged Config, and for each config-file key where its value came from."""
    values: dict[type, dict[str, Any]] = {owner: {} for owner in (Config, *NESTED.values())}
    sources: dict[str, Source] = {}
    for owner, f in options():
        key = config_key(f)
        found = _given(f, args, environ)
        if found is not None:
            values[owner][f.name], sources[key] = found
        elif file is not None and key in file.values:
            values[owner][f.name], sources[key] = file.values[key], ("file", file.where(key))
        else:
            sources[key] = ("default", "")
    if sources["workers"][0] in ("file", "default") and environ.get("WEB_CONCURRENCY", "").strip():
        try:  # the convention Heroku started and uvicorn and gunicorn honour
            values[Config]["workers"] = int(environ["WEB_CONCURRENCY"])
        except ValueError:
            raise ConfigError(f"WEB_CONCURRENCY: expected a number, got {environ['WEB_CONCURRENCY']!r}") from None
        sources["workers"] = ("env", "WEB_CONCURRENCY")
    app = getattr(args, "app", None)
    sources[config_file.APP_KEY] = ("cli", "APP") if app is not None else ("default", "")
    if app is None and file is not None and config_file.APP_KEY in file.values:
        app = file.values[config_file.APP_KEY]
        sources[config_file.APP_KEY] = ("file", file.where(config_file.APP_KEY))
    named = _named_endpoints(file, sources, environ)
    try:
        nested = {name: owner(**values[owner]) for name, owner in NESTED.items()}
        return Config(app=app, named_endpoints=named, **nested, **values[Config]), sources
    except ConfigError as exc:
        raise _blame_file(exc, sources, file) from None


# The options that name endpoints. Given on the command line or in the environment, they replace the config
# file's [endpoints] tables (Kestrel's PreferHostingUrls); in the file, they are served beside them.
ADDRESS_KEYS = ("host", "port", "bind", "urls", "uds")
ENDPOINTS_SOURCE = "endpoints"  # the key of `sources` that says what became of the [endpoints] tables


def _named_endpoints(
    file: config_file.FileValues | None, sources: dict[str, Source], environ: Mapping[str, str]
) -> tuple[Endpoint, ...]:
    if file is None or not file.endpoints:
        return ()
    given = [sources[key][1] for key in ADDRESS_KEYS if sources[key][0] in ("cli", "env")]
    if given:
        sources[ENDPOINTS_SOURCE] = ("replaced", ", ".join(given))
        return ()
    sources[ENDPOINTS_SOURCE] = ("file", file.path)
    return config_file.with_passwords(file, environ)


def replaced_endpoints_note(file: config_file.FileValues | None, sources: Mapping[str, Source]) -> str | None:
    """The warning to log when the command line's endpoints replaced the file's [endpoints] tables."""
    kind, by = sources.get(ENDPOINTS_SOURCE, ("", ""))
    if kind != "replaced" or file is None:
        return None
    names = ", ".join(f"[endpoints.{e.name}]" for e in file.endpoints)
    return f"Not listening on {names} from {file.path}: {by} names the endpoints instead"


def _given(
    f: dataclasses.Field[Any], args: argparse.Namespace, environ: Mapping[str, str]
) -> tuple[Any, Source] | None:
    """The option's value from the command line or, failing that, its KESTRELPY_* variable."""
    meta = f.metadata
    parse = meta["parse"] or str
    if f.name in vars(args):
        raw, source = getattr(args, f.name), ("cli", flag_name(f))
        if isinstance(raw, bool):
            return raw, source
    elif env_name(f) in environ:
        raw, source = environ[env_name(f)], ("env", env_name(f))
        if meta["repeatable"]:
            raw = raw.splitlines()
    else:
        return None
    try:
        if meta["repeatable"]:
            return tuple(parse(item) for item in raw if item.strip()), source
        return parse(str(raw)), source
    except ValueError as exc:
        raise ConfigError(f"{source[1]}: {exc}") from None


def _blame_file(
    exc: ConfigError, sources: Mapping[str, Source], file: config_file.FileValues | None = None
) -> ConfigError:
    """A range or consistency error about an option the config file set names the file, line and key; one
    about an endpoint of the file, the line of its table."""
    message = str(exc)
    table = re.search(r"\[endpoints\.([A-Za-z0-9_-]+)\]", message)
    if table is not None and file is not None and file.locate is not None:
        return ConfigError(f"{file.locate(config_file.ENDPOINTS_KEY, table[1])}: {message}")
    for _owner, f in options():
        key = config_key(f)
        kind, where = sources[key]
        if kind == "file" and re.search(rf"{re.escape(flag_name(f))}(?![\w-])", message):
            return ConfigError(f"{where}: {key}: {message}")
    return exc


def take_systemd_sockets(environ: MutableMapping[str, str]) -> tuple[FdEndpoint, ...]:
    """Sockets passed by systemd socket activation, if LISTEN_PID names us; the variables are then
    removed so that child processes do not mistake them for their own."""
    found = systemd_endpoints(environ, os.getpid())
    if found:
        for name in SYSTEMD_VARIABLES:
            environ.pop(name, None)
    return found


def serve(config: Config, reread: Callable[[], Config] | None = None) -> None:
    """Run `config` to completion: one server in this process, or, for several workers, --reload or a
    recycling limit, a supervisor whose worker processes each run `worker.run_worker` (and which reads the
    configuration again with `reread` on SIGHUP)."""
    if config.multiprocess:
        from kestrelpy.supervisor import run_supervisor
        from kestrelpy.worker import run_worker

        run_supervisor(config, run_worker, reread)
    else:
        from kestrelpy.server import run_server

        run_server(config, reread=reread)


def read_again(args: argparse.Namespace, inherited: tuple[FdEndpoint, ...]) -> Config:
    """The configuration as a start with the same command line would read it now (for SIGHUP)."""
    config = config_from(args, os.environ, load_config_file(args))
    require_app(config)
    return config.replace(inherited=inherited)


def require_app(config: Config) -> None:
    if config.app is None:
        raise ConfigError(
            'no application given: name it as APP (kestrelpy main:app) or as app = "main:app" in the config file'
        )


def load_config_file(args: argparse.Namespace) -> config_file.FileValues | None:
    """The file --config names, else the one found in the working directory, checked; None without one."""
    given = getattr(args, "config_file", None)
    path = Path(given) if given else config_file.discover(Path.cwd())
    return None if path is None else config_file.read(path)


def show_config(argv: Sequence[str]) -> int:
    """`kestrelpy config`: the effective configuration, each value with where it came from."""
    parser = build_parser()
    parser.prog = "kestrelpy config"
    parser.add_argument("--json", action="store_true", default=False, help="print JSON")
    args = parser.parse_args(argv)
    try:
        file = load_config_file(args)
        config, sources = resolve(args, os.environ, file)
    except KestrelpyError as exc:
        print(f"kestrelpy: error: {exc}", file=sys.stderr)
        return exc.exit_code
    effective = _effective_values(config)
    tables = {
        e.name: config_file.endpoint_form(dataclasses.replace(e, protocols=e.protocols or config.protocols))
        for e in config.named_endpoints
    }
    note = replaced_endpoints_note(file, sources)
    if args.json:
        report = {
            "file": file.path if file else None,
            "options": {
                key: {"value": value, "source": sources[key][0], "from": sources[key][1] or None}
                for key, value in effective.items()
            },
            "endpoints": tables,
            "endpoints_not_used": note,
        }
        print(json.dumps(report, indent=2))
        return 0
    print(f"# config file: {file.path if file else 'none'}")
    for key, value in effective.items():
        kind, origin = sources[key]
        assignment = f"{key} = {json.dumps(value)}"
        print(f"{assignment:<48} # {kind} {origin}".rstrip())
    for name, table in tables.items():
        print(f"\n[endpoints.{name}]  # file {file.locate('endpoints', name) if file and file.locate else ''}")
        for key, value in table.items():
            print(f"{key} = {_inline_toml(value)}")
    if note is not None:
        print(f"\n# {note}")
    return 0


def _inline_toml(value: Any) -> str:
    """A string or a table of them as TOML writes it inline (JSON's string escapes are TOML's too)."""
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {_inline_toml(v)}" for k, v in value.items()) + " }"
    return json.dumps(value)


# `kestrelpy check`'s flags, by the Config field each one sets.
CHECK_FLAGS = {
    "host": "host",
    "port": "port",
    "bind": "binds",
    "urls": "urls",
    "uds": "uds",
    "reuse_port": "reuse_port",
    "ssl_certfile": "ssl_certfile",
    "ssl_keyfile": "ssl_keyfile",
    "ssl_keyfile_password": "ssl_keyfile_password",
}


def check_target(given: argparse.Namespace) -> tuple[list[Endpoint], TlsOptions | None, bool]:
    """What `kestrelpy check` looks at: the endpoints and TLS settings the server would use with the flags
    `given` (only those the user gave), the KESTRELPY_* variables and the config file, merged as for a start."""
    args = argparse.Namespace(**{CHECK_FLAGS[k]: v for k, v in vars(given).items() if k in CHECK_FLAGS})
    args.config_file = getattr(given, "config", None)
    config = config_from(args, os.environ, load_config_file(args))
    endpoints = config.endpoints()
    return endpoints, config.tls if any(e.tls for e in endpoints) else None, config.reuse_port


def _effective_values(config: Config) -> dict[str, Any]:
    """Every key with its effective value as the file would spell it; a password is not shown."""
    holders: dict[type, Any] = {Config: config, **{type(getattr(config, n)): getattr(config, n) for n in NESTED}}
    effective: dict[str, Any] = {config_file.APP_KEY: config.app if isinstance(config.app, str) else None}
    for owner, f in options():
        value = getattr(holders[owner], f.name)
        if f.name == "ssl_keyfile_password" and value:
            value = "(set, not shown)"
        effective[config_key(f)] = config_file.file_form(config_key(f), value)
    return effective


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["check"]:
        from kestrelpy.guard.command import run_check

        return int(run_check(args_list[1:], configure=check_target))
    if args_list[:1] == ["config"]:
        try:
            return show_config(args_list[1:])
        except BrokenPipeError:  # `kestrelpy config | head`: the reader has what it wanted
            # What is still buffered goes nowhere, so the flush at exit does not fail again (the way the
            # Python documentation's note on SIGPIPE does it).
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 0
    parser = build_parser()
    args = parser.parse_args(args_list)
    try:
        file = load_config_file(args)
        config, sources = resolve(args, os.environ, file)
        require_app(config)
        config = config.replace(inherited=take_systemd_sockets(os.environ))
        inherited = config.inherited
        from kestrelpy import logs

        logs.configure_for(config)
        if file is not None:
            logging.getLogger("kestrelpy.config").info("Configuration from %s", file.path)
        note = replaced_endpoints_note(file, sources)
        if note is not None:
            logging.getLogger("kestrelpy.config").warning("%s", note)
        serve(config, lambda: read_again(args, inherited))
    except KestrelpyError as exc:
        print(f"kestrelpy: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    return 0
