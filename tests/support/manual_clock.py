"""A clock that moves only when the test moves it, and a heartbeat that beats only when the test says.

The server reads the time through ServerState's `clock` and sweeps its connections from Heartbeat.tick()
(timeouts, minimum data rates, WebSocket pings). A server built around a ManualClock (see the
`manual_clock` fixture) keeps its real sockets, but each of its seconds passes at once: `beat()` moves
the clock on and runs one beat on the server's loop, so a test steps through a timing rule beat by beat
instead of sleeping through it, and knows exactly which beat must have acted.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import Future
from typing import Any

from kestrelpy.heartbeat import Heartbeat
from tests.support.waiting import WAIT


class ManualHeartbeat(Heartbeat):
    """A Heartbeat without its timer: every beat after the first is one the test asks for."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.server_loop = asyncio.get_running_loop()  # the server builds its heartbeat on its own loop

    def tick(self) -> None:
        super().tick()
        self.stop()  # cancels the timer that beat just set


class ManualClock:
    """Monotonic time for the servers built around it; starts at an arbitrary instant and moves by `beat`."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now
        self.beats = 0
        self._heartbeats: list[ManualHeartbeat] = []

    def __call__(self) -> float:
        return self.now

    def heartbeat(self, *args: Any, **kwargs: Any) -> Heartbeat:
        """Builds the Heartbeat a server asks for: one that beats on `beat()` only."""
        heartbeat = ManualHeartbeat(*args, **kwargs)
        self._heartbeats.append(heartbeat)
        return heartbeat

    def beat(self, seconds: float = 1.0) -> None:
        """On the server's loop, between two of its callbacks, move the clock on by `seconds` and run one
        heartbeat; return once that has run (what the beat wrote has been handed to the transport).

        Time moves on the loop, not in the test thread, so nothing the server is doing at that moment
        (a write, then reading the clock) can straddle it."""
        running = [heartbeat for heartbeat in self._heartbeats if not heartbeat.server_loop.is_closed()]
        assert len(running) == 1, f"{len(running)} servers are running on this clock, not one"
        [heartbeat] = running
        done: Future[None] = Future()

        def run() -> None:
            try:
                self.now += seconds
                self.beats += 1
                heartbeat.tick()
            except BaseException as exc:
                done.set_exception(exc)
            else:
                done.set_result(None)

        heartbeat.server_loop.call_soon_threadsafe(run)
        done.result(WAIT)
