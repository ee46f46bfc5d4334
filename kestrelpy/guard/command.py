"""`kestrelpy check`: run the startup guard alone, without starting a server.

    kestrelpy check [--host H] [--port P] [--bind ADDRESS ...] [--urls URLS] [--uds PATH] [--reuse-port]
                    [--ssl-certfile PATH] [--ssl-keyfile PATH] [--ssl-keyfile-password PASSWORD]
                    [--json] [--dump-facts DIR]

The endpoints are read exactly as the server reads them (kestrelpy.endpoints), so `check` looks at the
sockets `kestrelpy` itself would open. With --ssl-certfile (and https:// URLs, or endpoints without a
scheme, which it makes TLS as the server does) the certificate and key are checked too; the password
may also come from KESTRELPY_SSL_KEYFILE_PASSWORD.

Exit status 0 when nothing blocks the binds, 1 when a bind would fail, 2 for unusable arguments.
`--json` prints the facts and findings; `--dump-facts DIR` writes every raw probe input (the /proc text and
command output the guard read) so it can be attached to a bug report and replayed as a test fixture.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import TextIO

from kestrelpy.config import TlsOptions
from kestrelpy.endpoints import DEFAULT_HOST, DEFAULT_PORT, Endpoint, configured_endpoints
from kestrelpy.errors import ConfigError
from kestrelpy.guard import check
from kestrelpy.guard import messages as m
from kestrelpy.guard.runner import HostIO, RecordingIO, default_io


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kestrelpy check",
        description="Explain, without starting a server, why listening would fail and how to fix it.",
    )
    parser.add_argument("--host", default=DEFAULT_HOST, help=f"address to check [default: {DEFAULT_HOST}]")
    parser.add_argument("--port", default=DEFAULT_PORT, type=int, help=f"port to check [default: {DEFAULT_PORT}]")
    parser.add_argument(
        "--bind",
        action="append",
        default=[],
        metavar="ADDRESS",
        help="HOST:PORT, [IPV6]:PORT, unix:PATH, fd://N or a URL, as the server takes it; repeatable",
    )
    parser.add_argument("--urls", default="", help="URLs separated by ';', as the server takes them")
    parser.add_argument("--uds", default="", metavar="PATH", help="a unix domain socket path")
    parser.add_argument("--reuse-port", action="store_true", help="check as if SO_REUSEPORT will be used")
    parser.add_argument("--ssl-certfile", default="", metavar="PATH", help="PEM certificate (chain) to check")
    parser.add_argument("--ssl-keyfile", default="", metavar="PATH", help="its private key, if not in the certfile")
    parser.add_argument(
        "--ssl-keyfile-password",
        default=os.environ.get("KESTRELPY_SSL_KEYFILE_PASSWORD", ""),
        metavar="PASSWORD",
        help="password of an encrypted key [default: KESTRELPY_SSL_KEYFILE_PASSWORD]",
    )
    parser.add_argument("--json", action="store_true", help="print facts and findings as JSON")
    parser.add_argument("--dump-facts", metavar="DIR", help="write the raw probe inputs to DIR")
    return parser


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


def run_check(argv: Sequence[str], stdout: TextIO = sys.stdout, *, probe: HostIO | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(list(argv))
    except SystemExit as exc:  # --help or a usage error; argparse has printed it
        return int(exc.code or 0)
    try:
        endpoints = endpoints_from(args)
    except ConfigError as exc:
        print(f"kestrelpy check: error: {exc}", file=sys.stderr)
        return 2
    io: HostIO = probe or default_io()
    recorder = RecordingIO(io) if args.dump_facts else None
    report = check(endpoints, probe=recorder or io, reuse_port=args.reuse_port, tls=tls_from(args))
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
