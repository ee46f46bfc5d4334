#!/usr/bin/env python
"""A ceiling for Python HTTP servers: uvloop plus the least Python a response can cost.

An asyncio.Protocol that answers every request (anything ending in a blank line,
`\\r\\n\\r\\n`) with the same fixed 200 response, without parsing. Bodies are not
supported, so it only makes sense for GET workloads. bench/run.py runs it as the
`raw` server; the gap between it and a real server is what parsing, ASGI and the
app cost, the gap to nginx is what uvloop and one Python callback per read cost.

    python -m bench.raw_server --port 8000
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import socket
from collections.abc import Sequence

import uvloop

BODY = b"Hello, world!"
HEAD = b"HTTP/1.1 200 OK\r\nserver: raw\r\ncontent-type: text/plain\r\ncontent-length: %d\r\n\r\n" % len(BODY)
RESPONSE = HEAD + BODY
END_OF_HEAD = b"\r\n\r\n"
MAX_PENDING = 64 * 1024  # an unterminated head longer than this is not a benchmark request


class RawProtocol(asyncio.Protocol):
    __slots__ = ("pending", "transport")

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.pending = b""  # the start of a request head split across reads

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        if self.pending:
            data = self.pending + data
        count = data.count(END_OF_HEAD)
        if count:
            tail = len(data) - data.rfind(END_OF_HEAD) - len(END_OF_HEAD)
            self.pending = data[len(data) - tail :] if tail else b""
            assert self.transport is not None
            self.transport.write(RESPONSE * count)  # one write per read, as a batching server does
        else:
            self.pending = data
        if len(self.pending) > MAX_PENDING and self.transport is not None:
            self.transport.close()


async def serve(host: str, port: int, backlog: int) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    server = await loop.create_server(RawProtocol, host, port, backlog=backlog, reuse_address=True)
    print(f"raw server listening on http://{host}:{port}", flush=True)
    await stop.wait()
    server.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--backlog", type=int, default=2048)
    args = parser.parse_args(argv)
    uvloop.run(serve(args.host, args.port, args.backlog))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
