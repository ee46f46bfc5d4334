#!/usr/bin/env python
"""Resident memory after many TLS handshakes: does a server keep anything per closed TLS connection?

For every server and round: start it over HTTPS on `bench.apps:plaintext` with a self-signed certificate
made for the run (as `bench/run.py --tls` does), complete a warm-up of handshakes, read the resident
memory of its process tree (VmRSS from /proc, summed over the server and any workers, once it stops
moving), then complete N more connections that each do a full handshake (no session resumption), send
one `Connection: close` GET and read the whole answer, reading the memory again halfway and at the end.
The figure is the growth in KiB; a leak shows as growth that goes on rising from the halfway reading
to the end. Servers are interleaved inside each round; the report gives the median over rounds.

    python bench/tls_handshakes.py                                  # 10,000 handshakes, 1 round
    python bench/tls_handshakes.py --servers kestrelpy,kestrelpy-asyncio --handshakes 20000 --rounds 2
"""

from __future__ import annotations

import argparse
import socket
import ssl
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.append(str(REPO_ROOT))
from bench.idle_memory import settled_rss  # noqa: E402  (VmRSS of the tree once it stops moving)
from bench.run import (  # noqa: E402  (the runner's servers, certificate and lifecycle)
    HOST,
    SERVERS,
    WORKLOADS,
    RunningServer,
    Server,
    ServerStartError,
    TlsFiles,
    client_context,
    kestrelpy_args,
    make_certificate,
    start_server,
    stop_server,
    uvicorn_args,
    uvicorn_style_tls,
    wait_until_ready,
)

WARMUP_HANDSHAKES = 500
CLIENT_THREADS = 4  # the ssl module releases the GIL during a handshake, so a few threads keep the server busy
CONNECTION_TIMEOUT_S = 10.0
REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
EXPECTED_BODY = b"Hello, world!"


def kestrelpy_on_asyncio(app: str, port: int) -> list[str]:
    return [*kestrelpy_args(None)(app, port), "--loop", "asyncio"]


def uvicorn_on_asyncio(app: str, port: int) -> list[str]:
    return [*uvicorn_args("httptools")(app, port), "--loop", "asyncio"]  # the last --loop wins


# kestrelpy and uvicorn on both loops, since an SSL leak in one loop's TLS transport need not be in the other.
HANDSHAKE_SERVERS: dict[str, Server] = {
    "kestrelpy": SERVERS["kestrelpy"],
    "kestrelpy-asyncio": Server("kestrelpy-asyncio", "kestrelpy", kestrelpy_on_asyncio, tls_args=uvicorn_style_tls),
    "uvicorn": SERVERS["uvicorn"],
    "uvicorn-asyncio": Server("uvicorn-asyncio", "uvicorn", uvicorn_on_asyncio, tls_args=uvicorn_style_tls),
    "granian": SERVERS["granian"],
}


# --------------------------------------------------------------------------- the client


def one_exchange(port: int, context: ssl.SSLContext) -> bool:
    """A new TCP connection, a full TLS handshake, one GET with Connection: close, the whole answer."""
    with (
        socket.create_connection((HOST, port), timeout=CONNECTION_TIMEOUT_S) as raw,
        context.wrap_socket(raw, server_hostname=HOST) as tls,
    ):
        tls.sendall(REQUEST)
        answer = bytearray()
        while chunk := tls.recv(65536):
            answer += chunk
    return answer.startswith(b"HTTP/1.1 200") and answer.endswith(EXPECTED_BODY)


def exchanges(port: int, count: int) -> int:
    """Run `count` exchanges over a few threads; return how many failed."""
    context = client_context()

    def run(share: int) -> int:
        failed = 0
        for _ in range(share):
            try:
                failed += not one_exchange(port, context)
            except OSError:
                failed += 1
        return failed

    shares = [count // CLIENT_THREADS + (i < count % CLIENT_THREADS) for i in range(CLIENT_THREADS)]
    with ThreadPoolExecutor(CLIENT_THREADS) as pool:
        return sum(pool.map(run, shares))


# --------------------------------------------------------------------------- one measurement


@dataclass
class Measurement:
    server: str
    round: int
    handshakes: int
    error: str | None = None
    before_kib: int = 0
    half_kib: int = 0
    after_kib: int = 0
    failed: int = 0
    seconds: float = 0.0

    @property
    def growth_kib(self) -> int:
        return self.after_kib - self.before_kib

    @property
    def second_half_kib(self) -> int:
        return self.after_kib - self.half_kib


def measure(name: str, round_no: int, count: int, tls: TlsFiles, scratch: Path) -> Measurement:
    result = Measurement(name, round_no, count)
    running = start_server(HANDSHAKE_SERVERS[name], WORKLOADS["plaintext"], None, scratch, tls)
    try:
        wait_until_ready(running, WORKLOADS["plaintext"])
        record(running, count, result)
    except ServerStartError as exc:
        result.error = f"failed to start: {exc}"
    finally:
        stop_server(running)
    return result


def record(running: RunningServer, count: int, result: Measurement) -> None:
    pid = running.process.pid
    result.failed = exchanges(running.port, WARMUP_HANDSHAKES)
    result.before_kib = settled_rss(pid) // 1024
    started = time.monotonic()
    result.failed += exchanges(running.port, count // 2)
    result.half_kib = settled_rss(pid) // 1024
    result.failed += exchanges(running.port, count - count // 2)
    result.seconds = time.monotonic() - started
    result.after_kib = settled_rss(pid) // 1024
    if running.process.poll() is not None:
        result.error = f"server died during the run: {running.last_log_line()}"


# --------------------------------------------------------------------------- report


def describe(m: Measurement) -> str:
    if m.error:
        return f"FAILED: {m.error}"
    return (
        f"RSS {m.before_kib:,} -> {m.half_kib:,} -> {m.after_kib:,} KiB ({m.growth_kib:+,} KiB, second half"
        f" {m.second_half_kib:+,} KiB), {m.handshakes / m.seconds:,.0f} handshakes/s, {m.failed} failed"
    )


def report(results: list[Measurement], servers: Sequence[str], count: int) -> str:
    lines = [
        f"### RSS growth over {count:,} TLS handshakes (after {WARMUP_HANDSHAKES} warm-up handshakes)",
        "",
        "| server | RSS after warm-up KiB | growth at half KiB | growth at end KiB | second half KiB"
        " | bytes / handshake | handshakes/s | failed | rounds |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for server in servers:
        good = [m for m in results if m.server == server and not m.error]
        runs = [m for m in results if m.server == server]
        if not good:
            lines.append(f"| {server} | failed | | | | | | | 0/{len(runs)} |")
            continue
        growth = statistics.median(m.growth_kib for m in good)
        cells = [
            server,
            f"{statistics.median(m.before_kib for m in good):,.0f}",
            f"{statistics.median(m.half_kib - m.before_kib for m in good):+,.0f}",
            f"{growth:+,.0f}",
            f"{statistics.median(m.second_half_kib for m in good):+,.0f}",
            f"{growth * 1024 / count:,.0f}",
            f"{statistics.median(m.handshakes / m.seconds for m in good):,.0f}",
            str(sum(m.failed for m in good)),
            f"{len(good)}/{len(runs)}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parse_servers(value: str) -> list[str]:
    names = list(HANDSHAKE_SERVERS) if value == "all" else [v.strip() for v in value.split(",") if v.strip()]
    unknown = [n for n in names if n not in HANDSHAKE_SERVERS]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown server: {', '.join(unknown)} (known: {', '.join(HANDSHAKE_SERVERS)})"
        )
    return names


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--servers", type=parse_servers, default=list(HANDSHAKE_SERVERS), help="comma-separated, or 'all'"
    )
    parser.add_argument("--handshakes", type=int, default=10_000, help="measured handshakes (default 10,000)")
    parser.add_argument("--rounds", type=int, default=1, help="rounds of interleaved servers (default 1)")
    args = parser.parse_args(argv)
    if args.handshakes < 2 or args.rounds < 1:
        raise SystemExit("--handshakes must be at least 2 and --rounds at least 1")
    results: list[Measurement] = []
    with tempfile.TemporaryDirectory(prefix="kestrel-tls-") as tmp:
        tls = make_certificate(Path(tmp))
        for round_no in range(1, args.rounds + 1):
            for name in args.servers:
                m = measure(name, round_no, args.handshakes, tls, Path(tmp))
                results.append(m)
                print(f"round {round_no} {name:<18} {describe(m)}", file=sys.stderr, flush=True)
    print(report(results, args.servers, args.handshakes))
    return 0 if all(m.error is None and m.failed == 0 for m in results) else 1


if __name__ == "__main__":
    sys.exit(main())
