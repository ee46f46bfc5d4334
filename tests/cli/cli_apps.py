"""Apps the CLI tests start in a real `kestrelpy` process (imported with --app-dir)."""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any


async def hello(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


async def slow(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Answers after the number of seconds in the query string (default 1)."""
    if scope["type"] != "http":
        return
    delay = float(scope["query_string"] or b"1")
    print("slow request started", file=sys.stderr, flush=True)
    await asyncio.sleep(delay)
    body = b"finished after %.1f" % delay
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % len(body))]})
    await send({"type": "http.response.body", "body": body})


async def failing_startup(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        await receive()
        await send({"type": "lifespan.startup.failed", "message": "database unreachable"})
        return
    await hello(scope, receive, send)


async def recording_lifespan(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Appends 'startup'/'shutdown' to the file named by KESTRELPY_TEST_MARKER."""
    if scope["type"] == "lifespan":
        marker = os.environ["KESTRELPY_TEST_MARKER"]
        while True:
            message = await receive()
            event = message["type"].split(".")[1]
            with open(marker, "a") as f:
                f.write(event + "\n")
            await send({"type": f"lifespan.{event}.complete"})
            if event == "shutdown":
                return
    await hello(scope, receive, send)


def make_app() -> Any:
    return hello
