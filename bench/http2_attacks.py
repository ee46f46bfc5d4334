#!/usr/bin/env python
"""Figures for the HTTP/2 attacks: an ordinary client's p99 during each attack and the server's memory growth.

The attacks are tests/functional/test_http2_attacks.py's (tests/support/h2_attackers.py), each repeated
on new connections for a few seconds while an ordinary h2 client times its GETs on a connection of its
own. Unlike the tests, the server is a kestrelpy process of its own (one worker, the tests' attack app),
so the RSS growth is the server's alone and the attackers do not share its interpreter. One server per
transport, with the limits the tests set: keep-alive 60 s, minimum response rate 4096 B/s after 1.5 s,
minimum request body rate 1000 B/s after 1.5 s.

    python bench/http2_attacks.py                        # every attack, h2c and TLS: a Markdown table
    python bench/http2_attacks.py --transports h2c --attacks rapid-reset,ping
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import trustme

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.append(str(REPO_ROOT))
from tests.support.h2_attackers import (  # noqa: E402
    H2Target,
    Observed,
    client_tls_context,
    continuation_flood,
    control_flood,
    error_name,
    hpack_bomb,
    ordinary_client,
    rapid_reset,
    repeated,
    slow_body_beside_normal_streams,
    stream_id_exhaustion,
    zero_window_reader,
)

ATTACK_S = 3.0  # an attack the server cuts off quickly is repeated on new connections this long
READY_TIMEOUT_S = 20.0
SERVER_FLAGS = (
    "--timeout-keep-alive", "60",
    "--limit-min-response-rate", "4096", "--limit-min-response-grace", "1.5",
    "--limit-min-request-body-rate", "1000", "--limit-min-request-body-grace", "1.5",
)  # fmt: skip
APP = "tests.functional.test_http2_attacks:app"


@dataclass(frozen=True)
class Figures:
    attack: str
    transport: str
    requests: int  # the ordinary client's (or, for the slow body, the streams' beside it)
    failures: int
    p99_ms: float
    rss_growth_kib: int  # the server's peak VmRSS above its level when the attack started, the largest run
    outcome: str  # what the attacker saw, from its last connection


def outcome(observed: Observed) -> str:
    if observed.goaway_code is not None:
        return f"GOAWAY {error_name(observed.goaway_code)}"
    if observed.rst_codes:
        return "RST_STREAM " + ", ".join(sorted(error_name(code) for code in observed.rst_codes))
    if observed.closed:
        return "closed"
    return "held back (server stopped reading)" if observed.stalled else "none"


def attacks(target: H2Target, pid: int) -> dict[str, Callable[[], list[Observed]]]:
    """Each attack as the tests run it: the quick ones repeated for ATTACK_S, the slow ones once."""
    floods = {
        f"{kind} flood": (lambda kind=kind: repeated(lambda: control_flood(target, kind, server_pid=pid), ATTACK_S))
        for kind in ("settings", "ping", "empty-data", "window-update")
    }
    return {
        "rapid reset": lambda: repeated(lambda: rapid_reset(target, server_pid=pid), ATTACK_S),
        "CONTINUATION flood": lambda: repeated(lambda: continuation_flood(target, server_pid=pid), ATTACK_S),
        "HPACK bomb": lambda: repeated(lambda: hpack_bomb(target, server_pid=pid), ATTACK_S),
        **floods,
        "zero-window reader": lambda: [zero_window_reader(target, server_pid=pid)],
        "stream id jump to 2^31-1": lambda: [stream_id_exhaustion(target, server_pid=pid)],
    }


def measure(name: str, transport: str, run: Callable[[], list[Observed]], target: H2Target) -> Figures:
    with ordinary_client(target) as ordinary:
        observed = run()
    growth = max(o.server_rss_growth or 0 for o in observed)
    return Figures(
        name, transport, len(ordinary.latencies), len(ordinary.failures), ordinary.p99() * 1000, growth // 1024,
        outcome(observed[-1]),
    )  # fmt: skip


def measure_slow_body(transport: str, target: H2Target, pid: int) -> Figures:
    result = slow_body_beside_normal_streams(target, server_pid=pid)
    slow = result.slow
    ended = "408" if slow.statuses.get(1) == 408 else outcome(slow)
    return Figures(
        "slow request body (streams beside it)", transport, len(result.latencies), len(result.failures),
        result.p99() * 1000, (slow.server_rss_growth or 0) // 1024, f"slow stream ended: {ended}",
    )  # fmt: skip


@contextlib.contextmanager
def server(transport: str, work: Path) -> Iterator[tuple[H2Target, int]]:
    """A kestrelpy process on an ephemeral port: its target and pid."""
    argv = [sys.executable, "-m", "kestrelpy", APP, "--no-access-log", *SERVER_FLAGS]
    context = None
    if transport == "tls":
        ca = trustme.CA()
        issued = ca.issue_cert("127.0.0.1")
        ca.cert_pem.write_to_path(str(work / "ca.pem"))
        issued.cert_chain_pems[0].write_to_path(str(work / "cert.pem"))
        issued.private_key_pem.write_to_path(str(work / "key.pem"))
        argv += ["--urls", "https://127.0.0.1:0", "--ssl-certfile", str(work / "cert.pem")]
        argv += ["--ssl-keyfile", str(work / "key.pem")]
        context = client_tls_context(str(work / "ca.pem"))
    else:
        argv += ["--urls", "http://127.0.0.1:0"]
    log = (work / f"server-{transport}.log").open("w+")
    process = subprocess.Popen(argv, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, text=True)
    try:
        yield H2Target("127.0.0.1", wait_for_port(log, process), context), process.pid
    finally:
        process.terminate()
        process.wait(30)
        log.close()


def wait_for_port(log: object, process: subprocess.Popen[str]) -> int:
    deadline = time.monotonic() + READY_TIMEOUT_S
    path = Path(log.name)  # type: ignore[attr-defined]
    while time.monotonic() < deadline:
        found = re.search(r"Listening on https?://127\.0\.0\.1:(\d+)", path.read_text())
        if found:
            return int(found.group(1))
        if process.poll() is not None:
            raise SystemExit(f"the server exited: {path.read_text()[-2000:]}")
        time.sleep(0.1)
    raise SystemExit(f"the server did not listen within {READY_TIMEOUT_S:.0f} s: {path.read_text()[-2000:]}")


def table(rows: list[Figures]) -> str:
    lines = [
        "| attack | transport | ordinary requests | p99 | server RSS growth | what the attacker got |",
        "| --- | --- | ---: | ---: | ---: | --- |",
    ]
    for row in rows:
        failed = f" ({row.failures} failed)" if row.failures else ""
        lines.append(
            f"| {row.attack} | {row.transport} | {row.requests}{failed} | {row.p99_ms:.1f} ms"
            f" | {row.rss_growth_kib:,} KiB | {row.outcome} |"
        )
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--transports", default="h2c,tls", help="h2c, tls or both (default)")
    parser.add_argument("--attacks", default="", help="comma-separated substrings of attack names (default: all)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    wanted = [w for w in args.attacks.split(",") if w]
    rows: list[Figures] = []
    started = dt.datetime.now(dt.timezone.utc)
    for transport in args.transports.split(","):
        with tempfile.TemporaryDirectory() as work, server(transport, Path(work)) as (target, pid):
            for name, run in attacks(target, pid).items():
                if wanted and not any(w.lower() in name.lower() for w in wanted):
                    continue
                rows.append(measure(name, transport, run, target))
                print(f"{rows[-1]}", file=sys.stderr, flush=True)
            if not wanted or any(w in "slow request body" for w in wanted):
                rows.append(measure_slow_body(transport, target, pid))
                print(f"{rows[-1]}", file=sys.stderr, flush=True)
    print(f"{started:%Y-%m-%d %H:%M} UTC, `python bench/http2_attacks.py {' '.join(argv or sys.argv[1:])}`".rstrip())
    print()
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
