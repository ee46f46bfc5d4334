"""A gate an app waits at until the test opens it: an app that is slow for exactly as long as the test
wants, without the test sleeping."""

from __future__ import annotations

import asyncio
import threading

from tests.support.waiting import WAIT


class Gate:
    """`await gate.wait()` in the app (on the server's loop); `reached` and `open()` in the test thread."""

    def __init__(self) -> None:
        self.reached = threading.Event()  # set once the app waits at the gate
        self._opened = threading.Event()

    def open(self) -> None:
        self._opened.set()

    async def wait(self) -> None:
        self.reached.set()
        if not await asyncio.to_thread(self._opened.wait, WAIT):
            raise AssertionError(f"the gate was not opened within {WAIT}s")
