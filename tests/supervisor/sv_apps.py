"""Apps the supervisor tests run in real worker processes (imported with --app-dir)."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

_leak: list[bytes] = []


def _say(line: str) -> None:
    """One write per line: workers share stderr, and print() writes the newline separately."""
    os.write(2, (line + "\n").encode())


async def _answer(send: Any, body: bytes) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % len(body))]})
    await send({"type": "http.response.body", "body": body})


async def pid(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Answers with the worker's pid; `/block` blocks the event loop for a minute (a hung worker);
    `/slow?S` answers after S seconds."""
    if scope["type"] != "http":
        return
    if scope["path"] == "/block":
        _say(f"worker {os.getpid()} blocking its loop")
        time.sleep(60)
    elif scope["path"] == "/slow":
        _say(f"slow request started in {os.getpid()}")
        await asyncio.sleep(float(scope["query_string"] or b"1"))
    await _answer(send, str(os.getpid()).encode())


async def leaky(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Keeps 4 MiB (written, so resident) per request forever."""
    if scope["type"] != "http":
        return
    _leak.append(b"x" * (4 * 1024 * 1024))
    await _answer(send, str(os.getpid()).encode())


async def failing_startup(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        await receive()
        await send({"type": "lifespan.startup.failed", "message": "database unreachable"})
        return
    await _answer(send, b"never")


async def crashing_startup(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Dies without a word during startup, as a segfaulting extension would."""
    if scope["type"] == "lifespan":
        await receive()
        os._exit(7)
    await _answer(send, b"never")


async def stuck_startup(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Lifespan startup that never completes, as an app waiting forever on an unreachable service."""
    if scope["type"] == "lifespan":
        await receive()
        _say(f"worker {os.getpid()} stuck in startup")
        await asyncio.sleep(3600)
    await _answer(send, b"never")
