"""`kestrelpy check`: run the startup guard alone, without starting a server.

    kestrelpy check [--config FILE] [--host H] [--port P] [--bind ADDRESS ...] [--urls URLS] [--uds PATH]
                    [--reuse-port] [--ssl-certfile PATH] [--ssl-keyfile PATH] [--ssl-keyfile-password PASSWORD]
                    [--json] [--dump-facts DIR]

The endpoints are read exactly as the server reads them, so `check` looks at the sockets `kestrelpy` itself
would open: run as `kestrelpy check`, the flags given are merged with the KESTRELPY_* variables and the
config file (--config, else ./kestrelpy.toml or [tool.kestrelpy]), its [endpoints] tables included, by the
command line's own rules (`configure`, passed in by kestrelpy/cli.py). With a certificate (and https://
URLs, or endpoints without a scheme, which it makes TLS as the server does) each TLS endpoint's certificate
and key are checked too; the password may also come from KESTRELPY_SSL_KEYFILE_PASSWORD.

Exit status 0 when nothing blocks the binds, 1 when a bind would fail, 2 for unusable arguments.
`--json` prints the facts and findings; `--dump-facts DIR` writes every raw probe input (the /proc text and
command output the guard read) so it can be attached to a bug report and replayed as a test fixture.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import TextIO

from kestrelpy.config import TlsOptions
from kestrelpy.endpoints import DEFAULT_HOST, DEFAULT_PORT, Endpoint, configured_endpoints
from kestrelpy.errors import ConfigError
from kestrelpy.guard import check
from kestrelpy.guard import messages as m
from kestrelpy.guard.runner import HostIO, RecordingIO, default_io

# What `configure` gives back for the options `check` was given: the endpoints, the TLS settings and
# whether SO_REUSEPORT will be used, as the server would have them.
Target = tuple[list[Endpoint], TlsOptions | None, bool]
Configure = Callable[[argparse.Namespace], Target]


def build_parser(*, defaults: bool = True) -> argparse.ArgumentParser:
    """The check's flags; with `defaults=False`, an option not given is absent from the result (so the
    command line's merge can tell a flag given from a default)."""
    parser = argparse.ArgumentParser(
        prog="kestrelpy check",
        description="Explain, without starting a server, why listening would fail and how to fix it.",
        argument_default=None if defaults else argparse.SUPPRESS,
    )
    parser.add_argument(
        "--config",
        metavar="FILE",
        default=None if defaults else argparse.SUPPRESS,
        help="the config file the server would read [default: ./kestrelpy.toml, else [tool.kestrelpy] in "
        "./pyproject.toml]",
    )
    parser.add_argument(
        "--host", default=_given(DEFAULT_HOST, defaults), help=f"address to check [default: {DEFAULT_HOST}]"
    )
    parser.add_argument(
        "--port", default=_given(DEFAULT_PORT, defaults), type=int, help=f"port to check [default: {DEFAULT_PORT}]"
    )
    parser.add_argument(
        "--bind",
        action="append",
        default=_given([], defaults),
        metavar="ADDRESS",
        help="HOST:PORT, [IPV6]:PORT, unix:PATH, fd://N or a URL, as the server takes it; repeatable",
    )
    parser.add_argument("--urls", default=_given("", defaults), help="URLs separated by ';', as the server takes them")
    parser.add_argument("--uds", default=_given("", defaults), metavar="PATH", help="a unix domain socket path")
    parser.add_argument(
        "--reuse-port",
        action="store_true",
        default=_given(False, defaults),
        help="check as if SO_REUSEPORT will be used",
    )
    parser.add_argument(
        "--ssl-certfile", default=_given("", defaults), metavar="PATH", help="PEM certificate (chain) to check"
    )
    parser.add_argument(
        "--ssl-keyfile", default=_given("", defaults), metavar="PATH", help="its private key, if not in the certfile"
    )
    parser.add_argument(
        "--ssl-keyfile-password",
        default=_given(os.environ.get("KESTRELPY_SSL_KEYFILE_PASSWORD", ""), defaults),
        metavar="PASSWORD",
        help="password of an encrypted key [default: KESTRELPY_SSL_KEYFILE_PASSWORD]",
    )
    parser.add_argument("--json", action="store_true", default=False, help="print facts and findings as JSON")
    parser.add_argument("--dump-facts", metavar="DIR", default=None, help="write the raw probe inputs to DIR")
    return parser


def _given(default: object, defaults: bool) -> object:
    return default if defaults else argparse.SUPPRESS


def endpoints_from(args: argparse.Namespace) -> list[Endpoint]:
    return configured_endpoints(
        host=args.host, port=args.port, binds=args.bind, urls=args.urls, uds=args.uds, tls=bool(args.ssl_certfile)
    )


def tls_from(args: argparse.Namespace) -> TlsOptions | None:
    if not args.ssl_certfile:
        return None
    return TlsOptions(
        ssl_certfile=args.ssl_certfile, ssl_keyfile=args.ssl_keyfile, ssl_keyfile_password=args.ssl_keyfile_password
    )


def run_check(
    argv: Sequence[str],
    stdout: TextIO = sys.stdout,
    *,
    probe: HostIO | None = None,
    configure: Configure | None = None,
) -> int:
    """`kestrelpy check ARGV`. `configure` turns the flags given (a namespace holding only those) into what
    the server would use; without it, the flags alone say (no environment, no config file)."""
    try:
        args = build_parser().parse_args(list(argv))
        given = build_parser(defaults=False).parse_args(list(argv))
    except SystemExit as exc:  # --help or a usage error; argparse has printed it
        return int(exc.code or 0)
    try:
        if configure is None:
            endpoints, tls, reuse_port = endpoints_from(args), tls_from(args), args.reuse_port
        else:
            endpoints, tls, reuse_port = configure(given)
    except ConfigError as exc:
        print(f"kestrelpy check: error: {exc}", file=sys.stderr)
        return 2
    io: HostIO = probe or default_io()
    recorder = RecordingIO(io) if args.dump_facts else None
    report = check(endpoints, probe=recorder or io, reuse_port=reuse_port, tls=tls)
    written = recorder.dump(args.dump_facts) if recorder is not None and args.dump_facts else []
    status = 1 if report.blocking else 0

    if args.json:
        document = {
            "ok": status == 0,
            "endpoints": [e.display() for e in endpoints],
            "findings": [f.to_dict() for f in report.findings],
            "facts": report.facts.to_dict(),
        }
        if recorder is not None:
            document["dumped"] = {"directory": args.dump_facts, "files": written}
        stdout.write(json.dumps(document, indent=2, default=str) + "\n")
        return status

    blocks = [f.render() for f in report.findings]
    if blocks:
        stdout.write("\n\n".join(blocks) + "\n\n")
        errors = sum(f.severity == "error" for f in report.findings)
        warnings = sum(f.severity == "warning" for f in report.findings)
        stdout.write(m.CHECK_SUMMARY.format(errors=errors, warnings=warnings) + "\n")
    if not report.blocking:
        clear = m.CHECK_CLEAR_NOTES if blocks else m.CHECK_CLEAR
        stdout.write(clear.format(endpoints=", ".join(e.display() for e in endpoints)) + "\n")
    if recorder is not None:
        stdout.write(m.CHECK_DUMPED.format(count=len(written), directory=args.dump_facts) + "\n")
    return status
