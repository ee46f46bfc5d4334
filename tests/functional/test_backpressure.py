"""Flow control both ways: a slow app bounds what the server reads, a slow client bounds what it buffers."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from tests.support.waiting import WAIT

MiB = 1024 * 1024

Start = Callable[..., Any]


def test_10_mib_upload_is_streamed_in_bounded_pieces(running_server: Start, raw_client: Start) -> None:
    upload = os.urandom(10 * MiB)
    sizes: list[int] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        digest = hashlib.sha256()
        # A slow start: a server that kept reading would have the whole upload buffered by now.
        await asyncio.sleep(0.2)
        while True:
            message = await receive()
            sizes.append(len(message["body"]))
            digest.update(message["body"])
            if not message["more_body"]:
                break
        answer = digest.hexdigest().encode()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"64")]})
        await send({"type": "http.response.body", "body": answer})

    live = running_server(app)
    client = raw_client(live.port)
    sender = threading.Thread(
        target=client.send, args=(client.request_bytes("POST", "/upload", body=upload),), daemon=True
    )
    sender.start()
    response = client.read_response()
    sender.join(WAIT)
    assert response.body == hashlib.sha256(upload).hexdigest().encode()
    assert sum(sizes) == len(upload)
    # Never more than the server's read bound plus one socket read was held for the app.
    assert max(sizes) <= MiB, f"the server buffered {max(sizes)} bytes of body at once"
    assert len(sizes) >= 10


def test_10_mib_chunked_upload_is_streamed_in_bounded_pieces(running_server: Start, raw_client: Start) -> None:
    piece = b"z" * (256 * 1024)
    pieces = 40  # 10 MiB
    sizes: list[int] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await asyncio.sleep(0.2)
        while True:
            message = await receive()
            sizes.append(len(message["body"]))
            if not message["more_body"]:
                break
        await send({"type": "http.response.start", "status": 204})
        await send({"type": "http.response.body"})

    live = running_server(app)
    client = raw_client(live.port)

    def send_all() -> None:
        client.send(b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(pieces):
            client.send(b"%x\r\n%s\r\n" % (len(piece), piece))
        client.send(b"0\r\n\r\n")

    sender = threading.Thread(target=send_all, daemon=True)
    sender.start()
    assert client.read_response().status == 204
    sender.join(WAIT)
    assert sum(sizes) == pieces * len(piece)
    assert max(sizes) <= MiB


def test_a_client_that_stops_reading_makes_send_wait(running_server: Start, raw_client: Start) -> None:
    part = b"y" * (64 * 1024)
    total_parts = 1024  # 64 MiB if nothing held the app back
    progress = {"sent": 0, "blocked_since": 0.0}

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        length = str(len(part) * total_parts).encode()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", length)]})
        for i in range(total_parts):
            progress["blocked_since"] = time.monotonic()
            await send({"type": "http.response.body", "body": part, "more_body": i < total_parts - 1})
            progress["blocked_since"] = 0.0
            progress["sent"] += len(part)

    live = running_server(app)
    client = raw_client(live.port, rcvbuf=64 * 1024)
    client.send(client.request_bytes())
    # Wait until one send has been waiting for a while: the app is held back by the unread socket.
    deadline = time.monotonic() + WAIT
    while True:
        since = progress["blocked_since"]
        if since and time.monotonic() - since > 0.3:
            break
        sent = progress["sent"]
        assert sent < len(part) * total_parts and time.monotonic() < deadline, (
            f"send never waited; {sent} bytes went out"
        )
        time.sleep(0.02)
    assert progress["sent"] < 16 * MiB, f"{progress['sent']} bytes were accepted from the app"
    buffered = live.call(lambda: sum(conn.transport.get_write_buffer_size() for conn in live.server._state.connections))
    assert buffered <= 2 * MiB, f"the transport holds {buffered} bytes"
    # Reading resumes the app, and every byte arrives.
    client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024 * 1024)
    response = client.read_response()
    assert len(response.body) == len(part) * total_parts
    assert response.complete
