"""One timer per server: refreshes the cached Date header and sweeps connection timeouts each second.

Each connection's `on_tick(now)` also checks the minimum request-body and response data rates from
the byte counters it keeps, so the per-read and per-write cost of those limits is an addition.

Kestrel's Heartbeat is the model: per-connection timers would cost a timer handle per connection and
per request, while a one-second sweep is precise enough for timeouts measured in seconds.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from email.utils import formatdate

from kestrelpy.state import ServerState

INTERVAL = 1.0


def date_line(now: float) -> bytes:
    """`date: <IMF-fixdate>\\r\\n` (RFC 9110 section 5.6.7)."""
    return b"date: %s\r\n" % formatdate(now, usegmt=True).encode("ascii")


class Heartbeat:
    __slots__ = ("_handle", "_loop", "_state", "_wallclock")

    def __init__(
        self,
        state: ServerState,
        loop: asyncio.AbstractEventLoop,
        wallclock: Callable[[], float] = time.time,
    ) -> None:
        self._state = state
        self._loop = loop
        self._wallclock = wallclock
        self._handle: asyncio.TimerHandle | None = None

    def start(self) -> None:
        self.tick()

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def tick(self) -> None:
        """One beat; tests call it directly after moving the injected clocks."""
        state = self._state
        state.set_date_line(date_line(self._wallclock()))
        now = state.clock()
        for conn in list(state.connections):
            conn.on_tick(now)
        self._handle = self._loop.call_later(INTERVAL, self.tick)
