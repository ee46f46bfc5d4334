#!/usr/bin/env python
"""WebSocket echo throughput: many small text messages over many connections, messages per second.

Every server serves bench.apps:ws_echo, pinned to one CPU; the client (this script with --client, on
uvloop, pinned to the other CPU) opens the connections, completes the handshake without offering
compression, and keeps `--window` masked text messages in flight on each connection: each echo that
comes back sends the next message. The client does no WebSocket parsing (it counts the bytes of the
unmasked echo frames it expects), so it costs far less per message than any of the servers. Servers are
interleaved within each round; the report gives medians over rounds, the median of the per-round ratios
to uvicorn (websockets implementation) and the server's CPU time per message.

    python bench/ws_echo.py                               # kestrelpy, uvicorn, granian; 3 rounds of 5 s
    python bench/ws_echo.py --servers kestrelpy,uvicorn --rounds 1 --duration 2
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import cast

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.append(str(REPO_ROOT))
from bench.run import (  # noqa: E402
    HOST,
    choose_cpus,
    free_port,
    granian_args,
    kestrelpy_args,
    log,
    parse_list,
    pinned,
    terminate,
    tree_cpu_seconds,
    uvicorn_args,
)

APP = "bench.apps:ws_echo"
READY_TIMEOUT_S = 15.0
CLIENT_GRACE_S = 30.0
MASK = b"\x37\xfa\x21\x3d"


def kestrelpy_ws(port: int) -> list[str]:
    return [*kestrelpy_args(None)(APP, port), "--ws-ping-interval", "0", "--no-ws-per-message-deflate"]


def uvicorn_ws(port: int) -> list[str]:
    return [*uvicorn_args("httptools")(APP, port), "--ws", "websockets", "--ws-ping-interval", "0"]


def granian_ws(port: int) -> list[str]:
    return granian_args(APP, port)


SERVERS: dict[str, Callable[[int], list[str]]] = {
    "kestrelpy": kestrelpy_ws,
    "uvicorn": uvicorn_ws,
    "granian": granian_ws,
}
BASELINE = "uvicorn"


# --------------------------------------------------------------------------- the client


def text_frame(payload: bytes) -> bytes:
    """One masked, final text frame (RFC 6455 section 5.2), for payloads up to 125 bytes."""
    masked = bytes(b ^ MASK[i % 4] for i, b in enumerate(payload))
    return bytes((0x81, 0x80 | len(payload))) + MASK + masked


class EchoClient(asyncio.Protocol):
    """One connection: the handshake, then `window` messages in flight, counted as their echoes return."""

    def __init__(self, port: int, frame: bytes, echo_size: int, window: int, opened: asyncio.Future[None]) -> None:
        self.port = port
        self.frame = frame
        self.echo_size = echo_size
        self.window = window
        self.opened = opened
        self.transport: asyncio.Transport | None = None
        self.head = b""
        self.pending = 0  # bytes of echo frames received but not yet counted
        self.echoed = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = writer = cast("asyncio.Transport", transport)  # (uvloop's are not subclasses)
        key = base64.b64encode(os.urandom(16))
        writer.write(
            b"GET / HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n" % (HOST.encode(), self.port, key)
        )

    def data_received(self, data: bytes) -> None:
        if self.opened.done():
            pending = self.pending + len(data)
            replies, self.pending = divmod(pending, self.echo_size)
            if replies:
                self.echoed += replies
                assert self.transport is not None
                self.transport.write(self.frame * replies)
            return
        self.head += data
        end = self.head.find(b"\r\n\r\n")
        if end < 0:
            return
        if not self.head.startswith(b"HTTP/1.1 101"):
            self.opened.set_exception(RuntimeError(f"handshake refused: {self.head[:40]!r}"))
            return
        self.opened.set_result(None)
        self.pending = len(self.head) - end - 4
        assert self.transport is not None
        self.transport.write(self.frame * self.window)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(ConnectionError("closed during the handshake"))


async def client_main(port: int, connections: int, size: int, window: int, warmup: float, duration: float) -> None:
    loop = asyncio.get_running_loop()
    payload = b"x" * size
    frame, echo_size = text_frame(payload), 2 + size
    clients: list[EchoClient] = []
    for _ in range(connections):
        opened: asyncio.Future[None] = loop.create_future()
        client = EchoClient(port, frame, echo_size, window, opened)
        await loop.create_connection(lambda c=client: c, HOST, port)  # type: ignore[misc]
        await opened
        clients.append(client)
    await asyncio.sleep(warmup)
    before = sum(c.echoed for c in clients)
    print("measuring", flush=True)
    started = time.monotonic()
    await asyncio.sleep(duration)
    messages = sum(c.echoed for c in clients) - before
    elapsed = time.monotonic() - started
    print(json.dumps({"messages": messages, "seconds": elapsed}), flush=True)
    for client in clients:
        if client.transport is not None:
            client.transport.abort()


# --------------------------------------------------------------------------- the runner


@dataclass
class Sample:
    server: str
    messages_per_s: float
    cpu_us_per_message: float


def wait_for_port(process: subprocess.Popen[bytes], port: int) -> None:
    import socket

    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"server exited with code {process.returncode}")
        try:
            socket.create_connection((HOST, port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"server not listening on {port} after {READY_TIMEOUT_S:.0f} s")


def measure(name: str, args: argparse.Namespace, server_cpu: int | None, client_cpu: int | None) -> Sample:
    port = free_port()
    with tempfile.TemporaryFile() as server_log:
        server = subprocess.Popen(
            pinned(server_cpu, [sys.executable, *SERVERS[name](port)]),
            cwd=REPO_ROOT,
            stdin=subprocess.DEVNULL,
            stdout=server_log,
            stderr=server_log,
        )
        try:
            wait_for_port(server, port)
            client_argv = [
                sys.executable, str(Path(__file__).resolve()), "--client", str(port),
                "--connections", str(args.connections), "--size", str(args.size), "--window", str(args.window),
                "--warmup", str(args.warmup), "--duration", str(args.duration),
            ]  # fmt: skip
            client = subprocess.Popen(pinned(client_cpu, client_argv), stdout=subprocess.PIPE, text=True)
            assert client.stdout is not None
            first = client.stdout.readline()
            cpu_before = tree_cpu_seconds(server.pid)
            result = client.stdout.readline()
            cpu_after = tree_cpu_seconds(server.pid)
            client.wait(CLIENT_GRACE_S)
            if first.strip() != "measuring" or not result:
                server_log.seek(0)
                raise SystemExit(f"{name}: the client failed; server said: {server_log.read()[-500:]!r}")
        finally:
            terminate(server)
    got = json.loads(result)
    messages = max(1, int(got["messages"]))
    return Sample(name, messages / float(got["seconds"]), (cpu_after - cpu_before) * 1e6 / messages)


def report(samples: list[list[Sample]], names: Sequence[str], args: argparse.Namespace) -> str:
    lines = [
        f"WebSocket echo: {args.connections} connections, {args.size}-byte text messages, {args.window} in flight"
        f" per connection, {len(samples)} round(s) of {args.duration:g} s after {args.warmup:g} s",
        "",
        "| server | messages/s | vs uvicorn | server CPU µs/message |",
        "| --- | ---: | ---: | ---: |",
    ]
    for name in names:
        rates = [s.messages_per_s for rnd in samples for s in rnd if s.server == name]
        cpus = [s.cpu_us_per_message for rnd in samples for s in rnd if s.server == name]
        ratios = [
            a.messages_per_s / b.messages_per_s
            for rnd in samples
            for a in rnd
            for b in rnd
            if a.server == name and b.server == BASELINE
        ]
        ratio = f"{statistics.median(ratios):.2f}" if ratios else "n/a"
        lines.append(f"| {name} | {statistics.median(rates):,.0f} | {ratio} | {statistics.median(cpus):.1f} |")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--servers", default="all", type=lambda v: parse_list(v, list(SERVERS), "server"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=5.0, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds of load before measuring")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--size", type=int, default=32, help="message payload bytes (at most 125)")
    parser.add_argument("--window", type=int, default=1, help="messages in flight per connection")
    parser.add_argument("--client", type=int, metavar="PORT", help=argparse.SUPPRESS)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not 0 < args.size <= 125:
        raise SystemExit("--size must be 1 to 125 bytes")
    if args.client is not None:
        import uvloop

        uvloop.run(client_main(args.client, args.connections, args.size, args.window, args.warmup, args.duration))
        return 0
    server_cpu, client_cpu = choose_cpus()
    samples: list[list[Sample]] = []
    for round_no in range(1, args.rounds + 1):
        current: list[Sample] = []
        for name in args.servers:
            sample = measure(name, args, server_cpu, client_cpu)
            rate, cpu = sample.messages_per_s, sample.cpu_us_per_message
            log(f"round {round_no} {name:<10} {rate:,.0f} msg/s, {cpu:.1f} µs CPU/msg")
            current.append(sample)
        samples.append(current)
    print(report(samples, args.servers, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
