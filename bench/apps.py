"""Raw ASGI 3 apps used by the benchmark runner.

No framework on purpose: the numbers should reflect the server, not routing
or serialisation layers. Every app answers any method so that the runner's
readiness probe (a plain GET) works against all of them.
"""

from __future__ import annotations

import json as _json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

PLAINTEXT_BODY = b"Hello, world!"
JSON_DOCUMENT = {"message": "Hello, world!", "id": 1, "ok": True}


async def _handle_lifespan(receive: Receive, send: Send) -> None:
    """Acknowledge startup and shutdown so servers that require lifespan are happy."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def _send_body(send: Send, body: bytes, content_type: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", content_type),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _read_body(receive: Receive) -> bytes:
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


async def plaintext(scope: Scope, receive: Receive, send: Send) -> None:
    """GET -> 200 "Hello, world!" as text/plain."""
    if scope["type"] == "lifespan":
        await _handle_lifespan(receive, send)
        return
    await _send_body(send, PLAINTEXT_BODY, b"text/plain")


async def json(scope: Scope, receive: Receive, send: Send) -> None:
    """GET -> small JSON document, serialised per request like a real handler would."""
    if scope["type"] == "lifespan":
        await _handle_lifespan(receive, send)
        return
    await _send_body(send, _json.dumps(JSON_DOCUMENT).encode(), b"application/json")


async def echo(scope: Scope, receive: Receive, send: Send) -> None:
    """POST -> the full request body echoed back (any method is accepted)."""
    if scope["type"] == "lifespan":
        await _handle_lifespan(receive, send)
        return
    body = await _read_body(receive)
    await _send_body(send, body, b"application/octet-stream")


async def ws_echo(scope: Scope, receive: Receive, send: Send) -> None:
    """WebSocket: every message sent back as it came (text as text, bytes as bytes)."""
    if scope["type"] == "lifespan":
        await _handle_lifespan(receive, send)
        return
    if scope["type"] != "websocket":
        await _send_body(send, PLAINTEXT_BODY, b"text/plain")
        return
    message = await receive()  # websocket.connect
    await send({"type": "websocket.accept"})
    while True:
        message = await receive()
        if message["type"] != "websocket.receive":
            return
        if message.get("text") is not None:
            await send({"type": "websocket.send", "text": message["text"]})
        else:
            await send({"type": "websocket.send", "bytes": message["bytes"]})
