#!/usr/bin/env python
"""Memory per idle keep-alive connection: resident bytes a server holds for each open, quiet client.

For every server and round: start the server on `bench.apps:plaintext` with its keep-alive timeout
raised (so nothing closes during the measurement), warm it up, read the resident memory of its
process tree (VmRSS from /proc, summed over the server and any workers), open N connections that
each complete one GET and then stay open and silent, let the server settle, read the memory again,
and check that every connection is still open. The figure is (after - before) / N. Servers are
interleaved inside each round; the report gives the median over rounds.

    python bench/idle_memory.py                          # 10,000 connections, 3 rounds, all servers
    python bench/idle_memory.py --connections 2000 --rounds 1 --servers kestrelpy,uvicorn
    python bench/idle_memory.py --json bench/out/idle-memory.json

The script raises its open-file limit to the hard limit (the servers inherit it) and spreads the
client sockets over several source addresses (127.0.0.x) when the ephemeral port range is short.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import math
import os
import platform
import resource
import select
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.append(str(REPO_ROOT))
from bench.run import process_tree, read_stat_fields, terminate  # noqa: E402  (the runner's /proc readers)

HOST = "127.0.0.1"
APP = "bench.apps:plaintext"
KEEP_ALIVE_S = 120  # every server keeps an idle connection open at least this long
READY_TIMEOUT_S = 15.0
CONNECT_CONCURRENCY = 64  # handshakes in flight at once: well inside every server's backlog
CONNECTION_TIMEOUT_S = 20.0  # for one connection to connect and read its answer
OPEN_ALL_TIMEOUT_S = 180.0  # for all of them; the rest count as failures
WARMUP_CONNECTIONS = 200  # opened, used once and closed before the baseline reading
SETTLE_S = 2.0  # quiet time before a memory reading
STABLE_FRACTION = 0.005  # a reading is final once it moves less than this between two samples
SAMPLE_EVERY_S = 0.5
MAX_SAMPLES = 20
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)  # Linux
REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: idle-memory\r\n\r\n"
EXPECTED_BODY = b"Hello, world!"


# --------------------------------------------------------------------------- servers


# Runs the kestrelpy CLI from another checkout (--tree); the cwd stays the repository root for bench.apps.
CLI_IN_TREE = "import sys; sys.path.insert(0, {tree!r}); from kestrelpy.cli import main; sys.exit(main(sys.argv[1:]))"
KESTRELPY_TREE: Path | None = None  # set by --tree


def python_server(*args: str) -> Callable[[int, int], list[str]]:
    """argv for `python -m ...`, given the port and the number of connections to hold."""

    def build(port: int, connections: int) -> list[str]:
        values = {"port": port, "host": HOST, "app": APP, "ka": KEEP_ALIVE_S, "conns": connections + 1024}
        module, *rest = (a.format(**values) for a in args)
        if module == "kestrelpy" and KESTRELPY_TREE is not None:
            return [sys.executable, "-c", CLI_IN_TREE.format(tree=str(KESTRELPY_TREE)), *rest]
        return [sys.executable, "-m", module, *rest]

    return build


# Argument templates after `python -m`; {port}, {host}, {app}, {ka} and {conns} are filled in per run.
KESTRELPY = [
    "kestrelpy", "{app}", "--host", "{host}", "--port", "{port}", "--no-access-log",
    "--timeout-keep-alive", "{ka}",
]  # fmt: skip
UVICORN = [
    "uvicorn", "{app}", "--host", "{host}", "--port", "{port}", "--no-access-log", "--loop", "uvloop",
    "--timeout-keep-alive", "{ka}", "--backlog", "2048",
]  # fmt: skip
HYPERCORN = [
    "hypercorn", "{app}", "--bind", "{host}:{port}", "--worker-class", "uvloop", "--keep-alive", "{ka}",
    "--backlog", "2048",
]  # fmt: skip
# Granian has no idle keep-alive timeout; its header-read timeout (at most 60 s) bounds the run instead.
# Its --backpressure (default: the backlog, 2048) caps the connections it serves at once; the others
# wait unaccepted, so it is raised above the number of connections.
GRANIAN = [
    "granian", "--interface", "asgi", "--host", "{host}", "--port", "{port}", "--workers", "1",
    "--loop", "uvloop", "--no-access-log", "--backlog", "2048", "--http1-header-read-timeout", "60000",
    "--backpressure", "{conns}", "{app}",
]  # fmt: skip

SERVERS: dict[str, Callable[[int, int], list[str]]] = {
    "kestrelpy": python_server(*KESTRELPY, "--http", "httptools"),
    "kestrelpy-h11": python_server(*KESTRELPY, "--http", "h11"),
    "uvicorn": python_server(*UVICORN, "--http", "httptools"),
    "uvicorn-h11": python_server(*UVICORN, "--http", "h11"),
    "hypercorn": python_server(*HYPERCORN),
    "granian": python_server(*GRANIAN),
}


# --------------------------------------------------------------------------- /proc


def tree_rss_bytes(root: int) -> int:
    total = 0
    for pid in process_tree(root):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
    return total


def settled_rss(root: int) -> int:
    """VmRSS of the tree once it stops moving (the server may still be finishing work after a burst)."""
    time.sleep(SETTLE_S)
    previous = tree_rss_bytes(root)
    for _ in range(MAX_SAMPLES):
        time.sleep(SAMPLE_EVERY_S)
        current = tree_rss_bytes(root)
        if abs(current - previous) <= STABLE_FRACTION * previous:
            return current
        previous = current
    return previous


# --------------------------------------------------------------------------- server lifecycle


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def answers(port: int) -> bool:
    conn = http.client.HTTPConnection(HOST, port, timeout=2)
    try:
        conn.request("GET", "/")
        response = conn.getresponse()
        return response.status == 200 and response.read() == EXPECTED_BODY
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


def start(name: str, port: int, connections: int, log_path: Path) -> subprocess.Popen[bytes]:
    argv = SERVERS[name](port, connections)
    with log_path.open("wb") as log:
        process = subprocess.Popen(argv, cwd=REPO_ROOT, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited with code {process.returncode}; see {log_path}")
        if answers(port):
            return process
        time.sleep(0.05)
    stop(process)
    raise RuntimeError(f"{name} did not answer within {READY_TIMEOUT_S:.0f} s; see {log_path}")


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM by PID, SIGKILL after a timeout, then any worker that outlived its parent."""
    family = process_tree(process.pid)
    terminate(process)
    for pid in family[1:]:
        if read_stat_fields(pid) is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


# --------------------------------------------------------------------------- the client


def source_addresses(connections: int) -> list[str]:
    """Enough loopback source addresses that the ephemeral ports of each cover its share twice over."""
    low, high = (int(v) for v in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    count = max(1, math.ceil(2 * connections / (high - low + 1)))
    return [f"127.0.0.{i}" for i in range(1, count + 1)]


async def open_one(port: int, source: str) -> socket.socket:
    """A connection that has sent one request and read the whole answer, left open."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        if source != HOST:
            # The port is picked at connect() from the whole 4-tuple, not reserved by bind().
            sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
            sock.bind((source, 0))
        await loop.sock_connect(sock, (HOST, port))
        await loop.sock_sendall(sock, REQUEST)
        received = b""
        while not received.endswith(EXPECTED_BODY):
            chunk = await loop.sock_recv(sock, 4096)
            if not chunk:
                raise ConnectionError("closed before the answer was complete")
            received += chunk
        return sock
    except BaseException:
        sock.close()
        raise


async def open_many(port: int, count: int, sources: Sequence[str]) -> tuple[list[socket.socket], list[str]]:
    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)

    async def guarded(index: int) -> socket.socket:
        async with gate:
            return await asyncio.wait_for(open_one(port, sources[index % len(sources)]), CONNECTION_TIMEOUT_S)

    tasks = [asyncio.ensure_future(guarded(i)) for i in range(count)]
    _, late = await asyncio.wait(tasks, timeout=OPEN_ALL_TIMEOUT_S)
    for task in late:
        task.cancel()
    await asyncio.gather(*late, return_exceptions=True)
    done = [t for t in tasks if not t.cancelled()]
    socks = [t.result() for t in done if t.exception() is None]
    errors = [f"{type(t.exception()).__name__}: {t.exception()}" for t in done if t.exception() is not None]
    if late:
        errors.insert(0, f"{len(late)} connections not open after {OPEN_ALL_TIMEOUT_S:.0f} s")
    return socks, errors


def closed_by_server(socks: Sequence[socket.socket]) -> int:
    """How many connections the server has closed (or written to) since: readable means EOF or data."""
    poller = select.poll()
    for sock in socks:
        poller.register(sock, select.POLLIN | select.POLLHUP | select.POLLERR)
    return len(poller.poll(0))


def close_all(socks: Sequence[socket.socket]) -> None:
    for sock in socks:
        sock.close()


# --------------------------------------------------------------------------- one measurement


@dataclass
class Measurement:
    server: str
    round: int
    connections: int = 0
    rss_before: int = 0
    rss_after: int = 0
    closed: int = 0  # connections the server had closed when the second reading was taken
    errors: list[str] = field(default_factory=list)

    @property
    def bytes_per_connection(self) -> float | None:
        if not self.connections or self.closed:
            return None
        return (self.rss_after - self.rss_before) / self.connections


def measure(name: str, round_no: int, count: int, sources: Sequence[str], scratch: Path) -> Measurement:
    result = Measurement(name, round_no)
    port = free_port()
    try:
        process = start(name, port, count, scratch / f"{name}-{round_no}-{port}.log")
    except RuntimeError as exc:
        result.errors.append(str(exc))
        return result
    socks: list[socket.socket] = []
    try:
        warm, _ = asyncio.run(open_many(port, WARMUP_CONNECTIONS, [HOST]))  # first-use allocations
        close_all(warm)
        result.rss_before = settled_rss(process.pid)
        socks, errors = asyncio.run(open_many(port, count, sources))
        result.errors += errors[:5]
        result.connections = len(socks)
        result.rss_after = settled_rss(process.pid)
        result.closed = closed_by_server(socks)
        if process.poll() is not None:
            result.errors.append(f"the server exited with code {process.returncode}")
    finally:
        close_all(socks)
        stop(process)
    return result


# --------------------------------------------------------------------------- driver


def raise_open_file_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, needed)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    if target < needed:
        raise SystemExit(f"the open-file limit ({target}) is below the {needed} descriptors needed")


def describe(m: Measurement) -> str:
    per = m.bytes_per_connection
    text = f"{m.connections} open, RSS {m.rss_before / 2**20:.1f} -> {m.rss_after / 2**20:.1f} MiB, " + (
        f"{per:,.0f} bytes/connection" if per is not None else "no figure"
    )
    if m.closed:
        text += f", {m.closed} closed by the server"
    if m.errors:
        text += f", errors: {'; '.join(m.errors)[:300]}"
    return text


def report(results: list[Measurement], servers: Sequence[str], count: int) -> str:
    lines = [
        f"Memory per idle keep-alive connection ({count:,} connections, Python {platform.python_version()};"
        " median over rounds)",
        "",
        "| server | bytes / connection | per round | RSS before MiB | RSS after MiB | closed | rounds |",
        "|---|---:|---|---:|---:|---:|---:|",
    ]
    for name in servers:
        runs = [m for m in results if m.server == name]
        good = [m for m in runs if m.bytes_per_connection is not None]
        if not good:
            lines.append(f"| {name} | failed | | | | | 0/{len(runs)} |")
            continue
        per = [m.bytes_per_connection for m in good if m.bytes_per_connection is not None]
        cells = [
            name,
            f"{statistics.median(per):,.0f}",
            ", ".join(f"{p:,.0f}" for p in per),
            f"{statistics.median(m.rss_before for m in good) / 2**20:.1f}",
            f"{statistics.median(m.rss_after for m in good) / 2**20:.1f}",
            str(sum(m.closed for m in runs)),
            f"{len(good)}/{len(runs)}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parse_servers(value: str) -> list[str]:
    if value == "all":
        return list(SERVERS)
    names = [v.strip() for v in value.split(",") if v.strip()]
    unknown = [n for n in names if n not in SERVERS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown server: {', '.join(unknown)} (known: {', '.join(SERVERS)})")
    return names


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=10_000, help="idle connections (default 10000)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--servers", type=parse_servers, default=list(SERVERS), help="comma-separated, or all")
    parser.add_argument("--tree", type=Path, help="run kestrelpy from this checkout instead of the installed one")
    parser.add_argument("--json", type=Path, help="also write every measurement here (keep it in bench/out/)")
    parser.add_argument("--time-limit", type=float, default=1800, help="stop starting runs after S seconds")
    args = parser.parse_args(argv)
    if args.tree is not None:
        global KESTRELPY_TREE
        KESTRELPY_TREE = args.tree.resolve()
    raise_open_file_limit(args.connections + WARMUP_CONNECTIONS + 256)
    sources = source_addresses(args.connections)
    deadline = time.monotonic() + args.time_limit
    results: list[Measurement] = []
    with tempfile.TemporaryDirectory(prefix="kestrel-idle-") as tmp:
        for round_no in range(1, args.rounds + 1):
            for name in args.servers:
                if time.monotonic() > deadline:
                    print("time limit reached; the report is partial", file=sys.stderr)
                    break
                m = measure(name, round_no, args.connections, sources, Path(tmp))
                results.append(m)
                print(f"round {round_no} {name:<14} {describe(m)}", file=sys.stderr, flush=True)
    print(report(results, args.servers, args.connections))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps([asdict(m) for m in results], indent=2))
    return 0 if results and all(m.bytes_per_connection is not None for m in results) else 1


if __name__ == "__main__":
    sys.exit(main())
