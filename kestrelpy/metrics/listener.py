"""The metrics listener (--metrics-bind): `GET /metrics` answered with the exposition, one request per
connection. Any other path is 404, any other method on it 405; it never reaches the app.

One pure function decides the answer; two small carriers move the bytes: an asyncio protocol for a
single server (on its own loop, beside the app's listeners) and a select() one for the supervisor,
whose main loop is already a select() over its workers' channels. A client gets READ_TIMEOUT seconds
to send its request head.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable, Collection

from kestrelpy.metrics.exposition import CONTENT_TYPE

METRICS_BACKLOG = 64
MAX_HEAD = 8 * 1024
READ_TIMEOUT = 10.0
MAX_CLIENTS = 64  # scrapes at once on the supervisor's listener; more are closed unanswered

_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 431: "Too Large"}

Render = Callable[[], str]


def answer(head: bytes, render: Render) -> bytes:
    """The whole response to one request head."""
    parts = head.split(b"\n", 1)[0].rstrip(b"\r").split(b" ")
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
        return _response(400, b"Bad request.\n")
    method, path = parts[0], parts[1].split(b"?", 1)[0]
    if path != b"/metrics":
        return _response(404, b"Not found: the metrics are at /metrics.\n")
    if method not in (b"GET", b"HEAD"):
        return _response(405, b"Only GET and HEAD.\n", b"allow: GET, HEAD\r\n")
    return _response(200, render().encode(), content_type=CONTENT_TYPE, head_only=method == b"HEAD")


def reply_to(buffer: bytes | bytearray, render: Render) -> bytes | None:
    """The response once `buffer` holds a whole request head (or too much of one); None until then."""
    if b"\r\n\r\n" in buffer or b"\n\n" in buffer:
        return answer(bytes(buffer), render)
    if len(buffer) > MAX_HEAD:
        return _response(431, b"Request head too large.\n")
    return None


def _response(
    status: int,
    body: bytes,
    extra: bytes = b"",
    *,
    content_type: str = "text/plain; charset=utf-8",
    head_only: bool = False,
) -> bytes:
    head = (
        f"HTTP/1.1 {status} {_REASONS[status]}\r\ncontent-type: {content_type}\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n"
    ).encode()
    return head + extra + b"\r\n" + (b"" if head_only else body)


class MetricsConnection(asyncio.Protocol):
    """One scrape on a single server's listener."""

    def __init__(self, render: Render) -> None:
        self._render = render
        self._buffer = bytearray()
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # uvloop's transports are not subclasses
        self._timer = asyncio.get_running_loop().call_later(READ_TIMEOUT, transport.abort)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        reply = reply_to(self._buffer, self._render)
        if reply is not None and self._transport is not None:
            self._buffer.clear()
            self._transport.write(reply)
            self._transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()


class SelectListener:
    """The supervisor's listener: `sockets()` go into its select(), `serve(ready)` handles what is ready."""

    def __init__(self, sock: socket.socket, render: Render, clock: Callable[[], float] = time.monotonic) -> None:
        sock.setblocking(False)
        self._sock = sock
        self._render = render
        self._clock = clock
        self._clients: dict[socket.socket, tuple[bytearray, float]] = {}

    def sockets(self) -> list[socket.socket]:
        return [self._sock, *self._clients]

    def serve(self, ready: Collection[object]) -> None:
        now = self._clock()
        if self._sock in ready:
            self._accept(now)
        for client, (buffer, since) in list(self._clients.items()):
            if client in ready:
                self._read(client, buffer)
            elif now - since > READ_TIMEOUT:
                self._drop(client)

    def _accept(self, now: float) -> None:
        while True:
            try:
                client, _ = self._sock.accept()
            except OSError:  # BlockingIOError: nobody else is waiting
                return
            if len(self._clients) >= MAX_CLIENTS:
                client.close()
                continue
            client.setblocking(False)
            self._clients[client] = (bytearray(), now)

    def _read(self, client: socket.socket, buffer: bytearray) -> None:
        try:
            data = client.recv(4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._drop(client)
            return
        buffer += data
        reply = reply_to(buffer, self._render)
        if reply is None:
            return
        try:
            client.settimeout(2.0)  # the answer is small: the socket buffer takes it at once
            client.sendall(reply)
        except OSError:
            pass
        self._drop(client)

    def _drop(self, client: socket.socket) -> None:
        self._clients.pop(client, None)
        client.close()

    def close(self) -> None:
        for client in list(self._clients):
            self._drop(client)
        self._sock.close()
