"""ASGI apps the interop tests serve in a real kestrelpy process.

/whoami           JSON: client, scheme, server and Host as the app sees them; pid, uid, LISTEN_* names
/upload (POST)    JSON: the length and SHA-256 of the request body
/stream?FILE      a chunked response: "first", then (once FILE exists, at most 20 s later) "last"
anything else     "ok"
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from typing import Any


async def _respond(send: Any, body: bytes, content_type: bytes = b"application/json") -> None:
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", content_type), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return
    if scope["type"] != "http":
        return
    path = scope["path"]
    if path == "/whoami":
        headers = dict(scope["headers"])
        body = {
            "client": list(scope["client"]) if scope.get("client") else None,
            "scheme": scope["scheme"],
            "server": list(scope["server"]) if scope.get("server") else None,
            "host": headers.get(b"host", b"").decode("latin-1"),
            "pid": os.getpid(),
            "uid": os.getuid(),
            "listen_env": sorted(k for k in os.environ if k.startswith("LISTEN_")),
        }
        await _respond(send, json.dumps(body).encode())
    elif path == "/upload":
        digest = hashlib.sha256()
        length = 0
        more = True
        while more:
            message = await receive()
            chunk = message.get("body", b"")
            digest.update(chunk)
            length += len(chunk)
            more = message.get("more_body", False)
        await _respond(send, json.dumps({"length": length, "sha256": digest.hexdigest()}).encode())
    elif path == "/stream":
        gate = scope["query_string"].decode()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"first\n", "more_body": True})
        for _ in range(200):
            if os.path.exists(gate):
                break
            await asyncio.sleep(0.1)
        await send({"type": "http.response.body", "body": b"last\n"})
    else:
        await _respond(send, b"ok", b"text/plain")
