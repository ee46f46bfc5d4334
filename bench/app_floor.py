#!/usr/bin/env python
"""The least a request can cost a server that runs its ASGI app as an asyncio task: the app alone.

Runs `bench.apps.plaintext` as kestrelpy runs an app on Python 3.12+ (`start_task`: an eager task, so
`asyncio.current_task()` is right for anyio and sniffio) with a `send` that does nothing and no parsing,
scope building, framing or socket I/O at all, and prints µs per run. Whatever a server does besides
comes on top of this figure, which is why it bounds the ratio any such server can reach.

    python bench/app_floor.py                  # 200,000 runs, three repeats, on uvloop
    python bench/app_floor.py --runs 50000 --asyncio
"""

from __future__ import annotations

import argparse
import asyncio
import contextvars
import sys
import time
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

sys.path.append(str(Path(__file__).resolve().parent.parent))
from bench.apps import plaintext
from kestrelpy.protocols.http11 import start_task

SCOPE: dict[str, Any] = {
    "type": "http",
    "asgi": {"version": "3.0", "spec_version": "2.4"},
    "http_version": "1.1",
    "method": "GET",
    "path": "/",
    "headers": [],
    "state": {},
}


async def receive() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


async def send(message: MutableMapping[str, Any]) -> None:
    pass


async def measure(runs: int, repeats: int) -> list[float]:
    if not hasattr(asyncio, "eager_task_factory"):  # Python 3.12 and later
        raise SystemExit("needs Python 3.12 or later (eager tasks)")
    loop = asyncio.get_running_loop()
    figures = []
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(runs):
            start_task(plaintext(SCOPE, receive, send), loop, contextvars.copy_context())
        figures.append((time.perf_counter() - started) / runs * 1e6)
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--asyncio", action="store_true", help="the standard event loop instead of uvloop")
    args = parser.parse_args()
    if args.asyncio:
        figures = asyncio.run(measure(args.runs, args.repeats))
    else:
        import uvloop

        figures = uvloop.run(measure(args.runs, args.repeats))
    print(" ".join(f"{f:.2f}" for f in figures), "µs per app run (eager task, a send that does nothing)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
