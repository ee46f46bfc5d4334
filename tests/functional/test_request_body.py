"""The request body as the app receives it: a body that came with its head is there at the first
receive(), in one message, whichever parser read it; one that comes later is waited for."""

from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import Callable
from typing import Any

import pytest

from tests.support.waiting import WAIT

Start = Callable[..., Any]


def body_app(seen: list[tuple[bool, dict[str, Any]]], asking: threading.Event | None = None) -> Any:
    """Records, for each receive(), whether the loop ran while the app waited for it (a callback queued
    just before the call has run), and the message; echoes the body. Sets `asking` before the first call."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        chunks = []
        if asking is not None:
            asking.set()
        while True:
            ran: list[bool] = []
            asyncio.get_running_loop().call_soon(ran.append, True)
            message = await receive()
            seen.append((bool(ran), message))
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        body = b"".join(chunks)
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % len(body))]})
        await send({"type": "http.response.body", "body": body})

    return app


def post(body: bytes) -> bytes:
    return b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)


@pytest.mark.skipif(sys.version_info < (3, 12), reason="apps start eagerly (inside the read) from 3.12 on")
@pytest.mark.parametrize("size", [1024, 16 * 1024])
def test_a_body_in_the_same_read_as_its_head_is_handed_over_without_waiting(
    running_server: Start, raw_client: Start, size: int
) -> None:
    seen: list[tuple[bool, dict[str, Any]]] = []
    live = running_server(body_app(seen))
    client = raw_client(live.port)
    body = b"[" + b"1," * (size // 2 - 1) + b"1]"
    for _ in range(3):  # on one connection: each request's head and body in one segment
        client.send(post(body) + body)
        response = client.read_response()
        assert response.status == 200
        assert response.body == body
    assert seen == [(False, {"type": "http.request", "body": body, "more_body": False})] * 3
    assert all(type(message["body"]) is bytes for _, message in seen)  # (h11 hands over bytearrays)


def test_a_body_after_its_head_is_waited_for_and_arrives_whole(running_server: Start, raw_client: Start) -> None:
    seen: list[tuple[bool, dict[str, Any]]] = []
    asking = threading.Event()
    live = running_server(body_app(seen, asking))
    client = raw_client(live.port)
    body = b'{"name": "kestrel"}'
    client.send(post(body))
    assert asking.wait(WAIT)
    client.send(body)
    response = client.read_response()
    assert response.status == 200
    assert response.body == body
    assert b"".join(m.get("body", b"") for _, m in seen) == body
    assert seen[0][0]  # the app did wait for it
    assert seen[-1][1]["more_body"] is False
