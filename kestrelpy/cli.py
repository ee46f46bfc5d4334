"""The `kestrelpy` command. Flags are generated from the Config fields; CLI beats KESTRELPY_* beats defaults.

This is the only place that reads argv or the environment, and the only place that turns a
KestrelpyError into a message and an exit code.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, MutableMapping, Sequence
from typing import Any

from kestrelpy import __version__
from kestrelpy.config import NESTED, Config, env_name, flag_name, options
from kestrelpy.endpoints import SYSTEMD_VARIABLES, FdEndpoint, systemd_endpoints
from kestrelpy.errors import ConfigError, KestrelpyError

EPILOG = """\
Every flag can also be set through the environment: --timeout-keep-alive is KESTRELPY_TIMEOUT_KEEP_ALIVE,
and so on (several --header values go one per line in KESTRELPY_HEADER).

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
    parser.add_argument("app", metavar="APP", help="The ASGI application, as module:attribute.")
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


def config_from(args: argparse.Namespace, environ: Mapping[str, str]) -> Config:
    """Merge CLI arguments over KESTRELPY_* variables over the declared defaults."""
    values: dict[type, dict[str, Any]] = {owner: {} for owner in (Config, *NESTED.values())}
    for owner, f in options():
        meta = f.metadata
        parse = meta["parse"] or str
        if meta["repeatable"]:
            if f.name in vars(args):
                items, source = getattr(args, f.name), flag_name(f)
            elif env_name(f) in environ:
                items, source = environ[env_name(f)].splitlines(), env_name(f)
            else:
                continue
            try:
                values[owner][f.name] = tuple(parse(item) for item in items if item.strip())
            except ValueError as exc:
                raise ConfigError(f"{source}: {exc}") from None
            continue
        if f.name in vars(args):
            raw = getattr(args, f.name)
            if isinstance(raw, bool):
                values[owner][f.name] = raw
                continue
            text, source = str(raw), flag_name(f)
        elif env_name(f) in environ:
            text, source = environ[env_name(f)], env_name(f)
        else:
            continue
        try:
            value = parse(text)
        except ValueError as exc:
            raise ConfigError(f"{source}: {exc}") from None
        values[owner][f.name] = value
    if "workers" not in values[Config] and environ.get("WEB_CONCURRENCY", "").strip():
        try:  # the convention Heroku started and uvicorn and gunicorn honour
            values[Config]["workers"] = int(environ["WEB_CONCURRENCY"])
        except ValueError:
            raise ConfigError(f"WEB_CONCURRENCY: expected a number, got {environ['WEB_CONCURRENCY']!r}") from None
    nested = {name: owner(**values[owner]) for name, owner in NESTED.items()}
    return Config(app=args.app, **nested, **values[Config])


def take_systemd_sockets(environ: MutableMapping[str, str]) -> tuple[FdEndpoint, ...]:
    """Sockets passed by systemd socket activation, if LISTEN_PID names us; the variables are then
    removed so that child processes do not mistake them for their own."""
    found = systemd_endpoints(environ, os.getpid())
    if found:
        for name in SYSTEMD_VARIABLES:
            environ.pop(name, None)
    return found


def serve(config: Config) -> None:
    """Run `config` to completion: one server in this process, or, for several workers, --reload or a
    recycling limit, a supervisor whose worker processes each run `worker.run_worker`."""
    if config.multiprocess:
        from kestrelpy.supervisor import run_supervisor
        from kestrelpy.worker import run_worker

        run_supervisor(config, run_worker)
    else:
        from kestrelpy.server import run_server

        run_server(config)


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["check"]:
        from kestrelpy.guard.command import run_check

        return int(run_check(args_list[1:]))
    parser = build_parser()
    args = parser.parse_args(args_list)
    try:
        config = config_from(args, os.environ)
        config = config.replace(inherited=take_systemd_sockets(os.environ))
        from kestrelpy import logs

        logs.configure(config.log_level, access_log=config.access_log, access_log_format=config.access_log_format)
        serve(config)
    except KestrelpyError as exc:
        print(f"kestrelpy: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    return 0
