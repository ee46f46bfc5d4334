#!/usr/bin/env python
"""The HTTP/2 table: h2load against kestrelpy, hypercorn and granian, over h2c and over TLS.

Each server runs one worker on the same raw ASGI apps as bench/run.py (plaintext GET, 1 KiB POST echo).
h2load opens 64 connections with 10 concurrent streams each (`-c 64 -m 10`) for a warm-up and then a
measured run; h2c is prior knowledge (the preface on a cleartext connection), TLS negotiates h2 by ALPN
with a certificate made for the run, and a run that did not speak h2 fails. Servers are interleaved
inside each round, pinned to one CPU and h2load to another as bench/run.py does; the report gives medians
over rounds and the median of the per-round ratios to hypercorn. A second table gives each server's
resident memory per connection holding 100 open streams (requests whose body has not ended).

    python bench/run.py --http2 --quick
    python bench/run.py --http2 --rounds 3 --duration 10 --markdown bench/out/http2.md
    python bench/http2.py --servers hypercorn,granian --transports h2c
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import os
import platform
import re
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import h2.config
import h2.connection
import h2.events
import h2.exceptions

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.append(str(REPO_ROOT))
from bench.idle_memory import settled_rss  # noqa: E402  (VmRSS of the tree once it stops moving)
from bench.run import (  # noqa: E402  (the runner's servers, certificate, pinning and /proc accounting)
    ECHO_PROBE_BODY,
    HOST,
    READY_TIMEOUT_S,
    SERVERS,
    WORKLOADS,
    RunningServer,
    Server,
    TlsFiles,
    choose_cpus,
    client_context,
    cpu_model,
    fmt_number,
    log,
    make_certificate,
    median_ratio,
    package_version,
    pinned,
    raise_open_file_limit,
    shorten,
    start_server,
    stop_server,
    tree_cpu_seconds,
    tree_peak_rss_kib,
)

BASELINE = "hypercorn"
SERVER_NAMES = ("kestrelpy", "hypercorn", "granian")
TRANSPORTS = ("h2c", "tls")
H2_WORKLOADS = ("plaintext", "echo")
CONNECTIONS = 64
STREAMS_PER_CONNECTION = 10
ECHO_BODY = b"x" * 1024
H2LOAD_GRACE_S = 30.0
MEMORY_CONNECTIONS = 20
MEMORY_STREAMS = 100


def kestrelpy_has_http2() -> bool:
    return importlib.util.find_spec("kestrelpy.protocols.http2") is not None


def unavailable(server: str) -> str | None:
    """Why a server cannot be in the table, or None."""
    if server == "kestrelpy" and not kestrelpy_has_http2():
        return "kestrelpy serves no HTTP/2 yet (no kestrelpy.protocols.http2)"
    return None


# --------------------------------------------------------------------------- an h2 probe


def h2_connect(port: int, tls: bool, timeout: float = 5.0) -> socket.socket:
    """A connection speaking h2: prior knowledge in cleartext, ALPN h2 over TLS (refused otherwise)."""
    sock = socket.create_connection((HOST, port), timeout=timeout)
    if not tls:
        return sock
    context = client_context()
    context.set_alpn_protocols(["h2"])
    wrapped = context.wrap_socket(sock, server_hostname=HOST)
    if wrapped.selected_alpn_protocol() != "h2":
        wrapped.close()
        raise ConnectionError(f"ALPN chose {wrapped.selected_alpn_protocol()!r}, not h2")
    return wrapped


def h2_request(port: int, tls: bool, body: bytes | None) -> tuple[int, bytes]:
    """One GET (or POST of `body`) over a fresh h2 connection: (status, response body)."""
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    with h2_connect(port, tls) as sock:
        conn.initiate_connection()
        headers = [(":method", "GET" if body is None else "POST"), (":scheme", "https" if tls else "http")]
        headers += [(":path", "/"), (":authority", f"{HOST}:{port}")]
        conn.send_headers(1, headers, end_stream=body is None)
        if body is not None:
            conn.send_data(1, body, end_stream=True)
        sock.sendall(conn.data_to_send())
        status, received = 0, bytearray()
        while data := sock.recv(65536):
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    status = int(dict(event.headers)[b":status"])
                elif isinstance(event, h2.events.DataReceived):
                    received += event.data
                    conn.acknowledge_received_data(event.flow_controlled_length, 1)
                elif isinstance(event, h2.events.StreamEnded | h2.events.StreamReset | h2.events.ConnectionTerminated):
                    return status, bytes(received)
            sock.sendall(conn.data_to_send())
    raise ConnectionError("the server closed the connection before answering")


def probe_problem(port: int, tls: bool, workload: str) -> str | None:
    """Why one real h2 request does not get the workload's answer, or None."""
    expected = b"Hello, world!" if workload == "plaintext" else ECHO_PROBE_BODY
    status, body = h2_request(port, tls, None if workload == "plaintext" else ECHO_PROBE_BODY)
    if status != 200:
        return f"status {status}"
    return None if body == expected else f"unexpected body {body[:60]!r}"


def wait_until_h2_ready(running: RunningServer, workload: str) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    problem: str | None = "never accepted a connection"
    while time.monotonic() < deadline:
        code = running.process.poll()
        if code is not None:
            raise StartError(f"exited with code {code}: {running.last_log_line()}")
        try:
            problem = probe_problem(running.port, running.tls, workload)
        except (OSError, h2.exceptions.ProtocolError) as exc:
            problem = f"{type(exc).__name__}: {exc}"
        if problem is None:
            return
        time.sleep(0.1)
    raise StartError(f"no h2 answer after {READY_TIMEOUT_S:.0f}s ({problem})")


class StartError(Exception):
    pass


# --------------------------------------------------------------------------- h2load


@dataclass
class H2loadResult:
    protocol: str
    requests_per_s: float
    succeeded: int
    failed: int  # failed + errored + timed out
    mean_ms: float
    max_ms: float


H2LOAD_FINISHED = re.compile(r"finished in [\d.]+\w+, ([\d.]+) req/s")
H2LOAD_REQUESTS = re.compile(
    r"requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout"
)
H2LOAD_PROTOCOL = re.compile(r"Application protocol: (\S+)")
H2LOAD_REQUEST_TIME = re.compile(r"time for request:\s+([\d.]+)(\w+)\s+([\d.]+)(\w+)\s+([\d.]+)(\w+)")
TO_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


class H2loadError(Exception):
    pass


def parse_h2load(output: str) -> H2loadResult:
    finished = H2LOAD_FINISHED.search(output)
    requests = H2LOAD_REQUESTS.search(output)
    protocol = H2LOAD_PROTOCOL.search(output)
    timing = H2LOAD_REQUEST_TIME.search(output)
    if not (finished and requests and protocol and timing):
        raise H2loadError(f"unexpected h2load output: {shorten(output.strip()[-300:], 300)}")
    succeeded, failed, errored, timeouts = (int(v) for v in requests.groups())
    max_ms = float(timing.group(3)) * TO_MS[timing.group(4)]
    mean_ms = float(timing.group(5)) * TO_MS[timing.group(6)]
    return H2loadResult(
        protocol.group(1), float(finished.group(1)), succeeded, failed + errored + timeouts, mean_ms, max_ms
    )


def run_h2load(
    port: int, tls: bool, workload: str, duration_s: int, warmup_s: int, cpu: int | None, scratch: Path
) -> H2loadResult:
    url = f"{'https' if tls else 'http'}://{HOST}:{port}/"
    argv = ["h2load", "-t", "1", "-c", str(CONNECTIONS), "-m", str(STREAMS_PER_CONNECTION)]
    argv += ["-D", str(duration_s), f"--warm-up-time={warmup_s}"] if warmup_s else ["-D", str(duration_s)]
    if workload == "echo":
        body = scratch / "echo-1k.bin"
        body.write_bytes(ECHO_BODY)
        argv += ["-d", str(body), "-H", "content-type: application/octet-stream"]
    try:
        done = subprocess.run(
            pinned(cpu, [*argv, url]), capture_output=True, text=True, timeout=duration_s + warmup_s + H2LOAD_GRACE_S
        )
    except subprocess.TimeoutExpired as exc:
        raise H2loadError(f"h2load did not finish within {duration_s + warmup_s + H2LOAD_GRACE_S:.0f}s") from exc
    if done.returncode != 0:
        raise H2loadError(f"h2load exited {done.returncode}: {shorten(done.stderr or done.stdout, 300)}")
    result = parse_h2load(done.stdout)
    expected = "h2" if tls else "h2c"
    if result.protocol != expected:
        raise H2loadError(f"h2load spoke {result.protocol}, not {expected}")
    return result


# --------------------------------------------------------------------------- one measurement


@dataclass
class H2Measurement:
    server: str
    transport: str
    workload: str
    round: int
    error: str | None = None
    requests_per_s: float = 0.0
    cpu_us_per_request: float = 0.0
    mean_ms: float = 0.0
    max_ms: float = 0.0
    failed: int = 0
    peak_rss_kib: int = 0

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class H2Settings:
    rounds: int
    duration_s: int
    warmup_s: int
    server_cpu: int | None
    client_cpu: int | None


def launch(server: Server, workload: str, cpu: int | None, scratch: Path, tls: TlsFiles | None) -> RunningServer:
    return start_server(server, WORKLOADS[workload], cpu, scratch, tls)


def measure(
    server: Server, transport: str, workload: str, round_no: int, settings: H2Settings, scratch: Path, tls: TlsFiles
) -> H2Measurement:
    result = H2Measurement(server.name, transport, workload, round_no)
    running = launch(server, workload, settings.server_cpu, scratch, tls if transport == "tls" else None)
    try:
        wait_until_h2_ready(running, workload)
        cpu_before = tree_cpu_seconds(running.process.pid)
        load = run_h2load(
            running.port, running.tls, workload, settings.duration_s, settings.warmup_s, settings.client_cpu, scratch
        )
        cpu_used = tree_cpu_seconds(running.process.pid) - cpu_before
        result.peak_rss_kib = tree_peak_rss_kib(running.process.pid)
        requests = load.requests_per_s * settings.duration_s
        result.requests_per_s, result.mean_ms, result.max_ms = load.requests_per_s, load.mean_ms, load.max_ms
        result.failed = load.failed
        # The CPU window includes h2load's warm-up: count its requests too, at the measured rate.
        result.cpu_us_per_request = cpu_used * 1e6 / (requests + load.requests_per_s * settings.warmup_s or 1)
        if load.succeeded == 0:
            result.error = "no request succeeded"
        elif running.process.poll() is not None:
            result.error = f"server died during the run: {running.last_log_line()}"
    except (StartError, H2loadError, OSError) as exc:
        result.error = str(exc)
    finally:
        stop_server(running)
    if result.error:
        copy = running.keep_log(f"http2-{server.name}-{transport}-{workload}-r{round_no}")
        result.error += f" (server log: {copy.relative_to(REPO_ROOT)})"
    return result


# --------------------------------------------------------------------------- memory with open streams


@dataclass
class MemoryMeasurement:
    server: str
    transport: str
    round: int
    error: str | None = None
    kib_per_connection: float = 0.0
    streams_open: int = 0


def open_streams(port: int, tls: bool, connections: int, streams: int) -> tuple[list[socket.socket], int]:
    """`connections` connections, each with `streams` POSTs whose body never ends; returns the sockets and
    how many streams the server has not reset once their frames are out."""
    socks: list[socket.socket] = []
    conns: list[h2.connection.H2Connection] = []
    headers = [(":method", "POST"), (":scheme", "https" if tls else "http"), (":path", "/")]
    headers.append((":authority", f"{HOST}:{port}"))
    for _ in range(connections):
        sock = h2_connect(port, tls)
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        conn.initiate_connection()
        for stream_id in range(1, 2 * streams, 2):
            conn.send_headers(stream_id, headers)
        sock.sendall(conn.data_to_send())
        socks.append(sock)
        conns.append(conn)
    time.sleep(0.5)
    open_count = 0
    for sock, conn in zip(socks, conns, strict=True):
        open_count += streams - refused_streams(sock, conn)
    return socks, open_count


def refused_streams(sock: socket.socket, conn: h2.connection.H2Connection) -> int:
    """Read what the server has sent so far: how many streams it reset or answered (all, after GOAWAY)."""
    sock.setblocking(False)
    ended: set[int] = set()
    try:
        while data := sock.recv(65536):
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.StreamReset | h2.events.StreamEnded):
                    ended.add(event.stream_id)
                elif isinstance(event, h2.events.ConnectionTerminated):
                    return MEMORY_STREAMS
    except (BlockingIOError, ssl.SSLWantReadError):
        pass
    return len(ended)


def measure_memory(
    server: Server, transport: str, round_no: int, settings: H2Settings, scratch: Path, tls: TlsFiles
) -> MemoryMeasurement:
    result = MemoryMeasurement(server.name, transport, round_no)
    running = launch(server, "echo", settings.server_cpu, scratch, tls if transport == "tls" else None)
    socks: list[socket.socket] = []
    try:
        wait_until_h2_ready(running, "echo")
        before = settled_rss(running.process.pid)
        socks, result.streams_open = open_streams(running.port, running.tls, MEMORY_CONNECTIONS, MEMORY_STREAMS)
        grown = settled_rss(running.process.pid) - before
        result.kib_per_connection = grown / 1024 / MEMORY_CONNECTIONS
    except (StartError, OSError, h2.exceptions.ProtocolError) as exc:
        result.error = f"{type(exc).__name__}: {exc}"
    finally:
        for sock in socks:
            sock.close()
        stop_server(running)
    return result


# --------------------------------------------------------------------------- the report


def load_table(results: list[H2Measurement], servers: Sequence[str], transport: str, workload: str) -> list[str]:
    title = {"plaintext": "plaintext GET", "echo": "1 KiB POST echo"}[workload]
    columns = ["server", "req/s", f"vs {BASELINE} (req/s)", f"vs {BASELINE} (CPU)", "CPU µs/req", "mean ms"]
    columns += ["max ms", "peak RSS MiB", "failed requests", "rounds", "note"]
    lines = [f"### HTTP/2 {transport}, {title} (h2load -c {CONNECTIONS} -m {STREAMS_PER_CONNECTION})", ""]
    lines += ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    runs_of = {
        s: [m for m in results if (m.server, m.transport, m.workload) == (s, transport, workload)] for s in servers
    }
    base = {m.round: m for m in runs_of.get(BASELINE, []) if m.ok}
    for server in servers:
        runs = runs_of[server]
        good = [m for m in runs if m.ok]
        if not good:
            reason = unavailable(server) or (runs[0].error if runs else "") or ""
            lines.append(f"| {server} | not run | | | | | | | | 0/{len(runs)} | {shorten(reason, 120)} |")
            continue
        speed = [m.requests_per_s / base[m.round].requests_per_s for m in good if m.round in base]
        cheap = [base[m.round].cpu_us_per_request / m.cpu_us_per_request for m in good if m.round in base]
        cells = [
            server,
            fmt_number(statistics.median(m.requests_per_s for m in good)),
            median_ratio(speed),
            median_ratio(cheap),
            fmt_number(statistics.median(m.cpu_us_per_request for m in good), 1),
            fmt_number(statistics.median(m.mean_ms for m in good), 2),
            fmt_number(statistics.median(m.max_ms for m in good), 1),
            fmt_number(max(m.peak_rss_kib for m in good) / 1024, 1),
            str(sum(m.failed for m in good)),
            f"{len(good)}/{len(runs)}",
            "",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return [*lines, ""]


def memory_table(results: list[MemoryMeasurement], servers: Sequence[str], transports: Sequence[str]) -> list[str]:
    lines = [
        f"### HTTP/2 memory: {MEMORY_CONNECTIONS} connections, each with {MEMORY_STREAMS} open streams",
        "",
        "| server | transport | KiB per connection | streams the server kept open | rounds | note |",
        "|---|---|---|---|---|---|",
    ]
    for server in servers:
        for transport in transports:
            runs = [m for m in results if (m.server, m.transport) == (server, transport)]
            good = [m for m in runs if m.error is None]
            if not good:
                reason = unavailable(server) or (runs[0].error if runs else "") or ""
                lines.append(f"| {server} | {transport} | not run | | 0/{len(runs)} | {shorten(reason, 120)} |")
                continue
            kib = statistics.median(m.kib_per_connection for m in good)
            kept = min(m.streams_open for m in good)
            total = MEMORY_CONNECTIONS * MEMORY_STREAMS
            lines.append(f"| {server} | {transport} | {kib:,.0f} | {kept}/{total} | {len(good)}/{len(runs)} | |")
    return [*lines, ""]


def render(
    loads: list[H2Measurement], memory: list[MemoryMeasurement], servers: Sequence[str], transports: Sequence[str],
    workloads: Sequence[str],
) -> str:  # fmt: skip
    lines: list[str] = []
    for transport in transports:
        for workload in workloads:
            lines += load_table(loads, servers, transport, workload)
    lines += memory_table(memory, servers, transports)
    failed = [m for m in loads if not m.ok and unavailable(m.server) is None]
    failed_memory = [m for m in memory if m.error is not None and unavailable(m.server) is None]
    if failed or failed_memory:
        lines += ["### Failed runs", ""]
        lines += [
            f"- {m.server} {m.transport} {m.workload} round {m.round}: {shorten(m.error or '', 300)}" for m in failed
        ]
        lines += [
            f"- {m.server} {m.transport} memory round {m.round}: {shorten(m.error or '', 300)}" for m in failed_memory
        ]
        lines.append("")
    return "\n".join(lines)


def header(settings: H2Settings, servers: Sequence[str]) -> str:
    h2load = subprocess.run(["h2load", "--version"], capture_output=True, text=True, check=False).stdout.strip()
    versions = ", ".join(f"{name} {package_version(name)}" for name in (*servers, "h2"))
    pinning = (
        f"server on CPU {settings.server_cpu}, h2load on CPU {settings.client_cpu}"
        if settings.server_cpu is not None
        else "no CPU pinning"
    )
    return "\n".join([
        "# kestrelpy HTTP/2 benchmark",
        "",
        f"- date: {dt.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"- machine: {os.cpu_count()} CPUs, {cpu_model()}, Linux {platform.release()}",
        f"- Python {platform.python_version()}",
        f"- packages: {versions}; client: {h2load}, 1 thread, {pinning}",
        f"- {settings.rounds} round(s) of {settings.duration_s} s after a {settings.warmup_s} s warm-up; figures are"
        f" medians over rounds, ratios medians of per-round ratios to {BASELINE}",
        "",
        "",
    ])  # fmt: skip


# --------------------------------------------------------------------------- driver


def plan(
    rounds: int, servers: Sequence[str], transports: Sequence[str], workloads: Sequence[str]
) -> Iterator[tuple[int, str, str, str]]:
    """Interleave the servers inside each round, transport and workload."""
    for round_no in range(1, rounds + 1):
        for transport in transports:
            for workload in workloads:
                for server in servers:
                    yield round_no, transport, workload, server


def run_all(
    servers: Sequence[str], transports: Sequence[str], workloads: Sequence[str], settings: H2Settings, memory: bool
) -> tuple[list[H2Measurement], list[MemoryMeasurement]]:
    loads: list[H2Measurement] = []
    memories: list[MemoryMeasurement] = []
    runnable = [s for s in servers if unavailable(s) is None]
    for server in servers:
        if (reason := unavailable(server)) is not None:
            log(f"skipping {server}: {reason}")
    with tempfile.TemporaryDirectory(prefix="kestrel-h2bench-") as tmp:
        scratch = Path(tmp)
        certificate = make_certificate(scratch)
        steps = list(plan(settings.rounds, runnable, transports, workloads))
        for index, (round_no, transport, workload, server) in enumerate(steps, 1):
            m = measure(SERVERS[server], transport, workload, round_no, settings, scratch, certificate)
            loads.append(m)
            outcome = (
                f"FAILED: {m.error}"
                if m.error
                else f"{m.requests_per_s:,.0f} req/s, {m.cpu_us_per_request:.1f} µs CPU/req"
            )
            log(f"[{index}/{len(steps)}] round {round_no} {transport} {workload:<9} {server:<10} {outcome}")
        if memory:
            for round_no in range(1, settings.rounds + 1):
                for transport in transports:
                    for server in runnable:
                        mem = measure_memory(SERVERS[server], transport, round_no, settings, scratch, certificate)
                        memories.append(mem)
                        outcome = mem.error or f"{mem.kib_per_connection:,.0f} KiB/connection, {mem.streams_open} open"
                        log(f"memory round {round_no} {transport} {server:<10} {outcome}")
    return loads, memories


def names(value: str, known: Sequence[str], what: str) -> list[str]:
    chosen = [v.strip() for v in value.split(",") if v.strip()]
    unknown = [v for v in chosen if v not in known]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown {what}: {', '.join(unknown)} (known: {', '.join(known)})")
    return chosen


def list_of(known: Sequence[str], what: str) -> Callable[[str], list[str]]:
    return lambda value: names(value, known, what)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0], prog="bench/run.py --http2")
    parser.add_argument("--quick", action="store_true", help="1 round of 3 s runs: a smoke test")
    parser.add_argument("--rounds", type=int, help="rounds of interleaved runs (default 3)")
    parser.add_argument("--duration", type=int, help="seconds measured per run (default 10)")
    parser.add_argument("--warmup", type=int, default=1, help="seconds of h2load warm-up before each run (default 1)")
    for flag, known, what in (
        ("--servers", SERVER_NAMES, "server"),
        ("--transports", TRANSPORTS, "transport"),
        ("--workloads", H2_WORKLOADS, "workload"),
    ):
        parser.add_argument(
            flag,
            default=",".join(known),
            type=list_of(known, what),
            help=f"comma-separated (default and known: {','.join(known)})",
        )
    parser.add_argument("--no-memory", action="store_true", help="leave out the open-streams memory table")
    parser.add_argument("--markdown", type=Path, help="also write the tables here")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if shutil.which("h2load") is None:
        raise SystemExit("h2load is not installed (apt-get install nghttp2-client)")
    rounds = args.rounds or (1 if args.quick else 3)
    duration = args.duration or (3 if args.quick else 10)
    if rounds < 1 or duration < 1 or args.warmup < 0:
        raise SystemExit("rounds and duration must be positive; warmup must not be negative")
    server_cpu, client_cpu = choose_cpus()
    settings = H2Settings(rounds, duration, args.warmup, server_cpu, client_cpu)
    raise_open_file_limit(needed=4 * CONNECTIONS)
    loads, memory = run_all(args.servers, args.transports, args.workloads, settings, not args.no_memory)
    report = header(settings, args.servers) + render(loads, memory, args.servers, args.transports, args.workloads)
    print(report)
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(report)
        log(f"report written to {args.markdown}")
    measured = [m for m in loads if unavailable(m.server) is None]
    return 0 if measured and all(m.ok for m in measured) else 1


if __name__ == "__main__":
    sys.exit(main())
