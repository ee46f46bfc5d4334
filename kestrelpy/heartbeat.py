"""One timer per server: refreshes the cached Date header and sweeps connection timeouts each second.

Each connection's `on_tick(now)` also checks the minimum request-body and response data rates from
the byte counters it keeps, so the per-read and per-write cost of those limits is an addition.

Kestrel's Heartbeat is the model: per-connection timers would cost a timer handle per connection and
per request, while a one-second sweep is precise enough for timeouts measured in seconds. As there, the
beat must survive anything one connection does: the next beat is scheduled before any connection is
looked at, and a connection whose check raises is logged once and aborted, alone. A beat that comes
well after its time means the event loop was blocked, and every timeout was late with it: that is logged.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from email.utils import formatdate
from typing import TYPE_CHECKING

from kestrelpy.state import ServerState

if TYPE_CHECKING:
    from kestrelpy.protocols.http2 import Http2Connection
    from kestrelpy.protocols.http11 import HttpConnection
    from kestrelpy.protocols.websocket import WebSocketConnection

    Connection = HttpConnection | Http2Connection | WebSocketConnection

INTERVAL = 1.0
LATE_AFTER = 2 * INTERVAL  # a gap this long between beats is worth a warning (jitter stays well below)

logger = logging.getLogger("kestrelpy.error")


def date_line(now: float) -> bytes:
    """`date: <IMF-fixdate>\\r\\n` (RFC 9110 section 5.6.7)."""
    return b"date: %s\r\n" % formatdate(now, usegmt=True).encode("ascii")


def describe(conn: Connection) -> str:
    """`H11Connection from 127.0.0.1:50312`: the kind of connection and its client, for a log line."""
    client = getattr(conn, "client", None)
    if client is None:
        scope = getattr(conn, "scope", None)
        client = scope.get("client") if isinstance(scope, dict) else None
    where = f"{client[0]}:{client[1]}" if client else "an unknown client"
    return f"{type(conn).__name__} from {where}"


class Heartbeat:
    __slots__ = ("_failed", "_handle", "_last_beat", "_loop", "_state", "_wallclock")

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
        self._last_beat: float | None = None  # on state.clock
        # Connections whose check raised and that are still on the books (an abort's connection_lost
        # arrives a loop turn later): already logged, so a second failure is not logged again.
        self._failed: set[Connection] = set()

    def start(self) -> None:
        self.tick()

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def tick(self) -> None:
        """One beat; tests call it directly after moving the injected clocks."""
        # First the next beat, so that nothing below can stop the timer; a direct call moves it.
        if self._handle is not None:
            self._handle.cancel()
        self._handle = self._loop.call_later(INTERVAL, self.tick)
        state = self._state
        state.set_date_line(date_line(self._wallclock()))
        now = state.clock()
        if self._last_beat is not None and now - self._last_beat > LATE_AFTER:
            self._warn_late(now - self._last_beat)
        self._last_beat = now
        if self._failed:
            self._failed.intersection_update(state.connections)  # forget the ones that have closed
        for conn in list(state.connections):
            try:
                conn.on_tick(now)
            except Exception:
                self._on_tick_failed(conn)

    def _warn_late(self, gap: float) -> None:
        logger.warning(
            "Heartbeat %.1fs late (%.1fs since the previous beat, due every %gs): the event loop was blocked, "
            "by blocking work in an app or a slow callback, and timeouts and data-rate checks ran late with it",
            gap - INTERVAL,
            gap,
            INTERVAL,
        )

    def _on_tick_failed(self, conn: Connection) -> None:
        """Log the failure (once per connection) and abort that connection alone."""
        if conn not in self._failed:
            self._failed.add(conn)
            logger.exception("Heartbeat check of %s raised; aborting that connection", describe(conn))
        try:
            conn.abort()
        except Exception:
            # Its transport is unusable: take it off the books, or every beat would try it again.
            logger.exception("Aborting %s failed too; dropping it from the server's connections", describe(conn))
            self._failed.discard(conn)
            self._state.connection_closed(conn)
