"""Flow control shared by every protocol: pause reading when the app lags, pause the app when writes back up."""

from __future__ import annotations

import asyncio
from typing import Any


class LostTransport:
    """Stands in for a connection's transport once the connection is lost. What still runs afterwards (an
    app writing late, a linger or a queued start on the loop) finds it closing, and the real transport,
    with TLS its SSL object and buffers, is freed as soon as the loop lets go of it, rather than whenever a
    full garbage collection reaches the connection's own reference cycles (its parser, its request)."""

    __slots__ = ()

    def is_closing(self) -> bool:
        return True

    def write(self, data: bytes) -> None:
        pass

    def write_eof(self) -> None:
        pass

    def can_write_eof(self) -> bool:
        return False

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


LOST_TRANSPORT: asyncio.Transport = LostTransport()  # type: ignore[assignment]  # the part of it that is used


class FlowControl:
    """Tracks the transport's read and write pause state.

    Reading is paused by the connection when buffered request data exceeds its bound; writing is paused
    by the transport (`pause_writing`) when its buffer passes the high-water mark, and `drain()` makes
    the app's `send` wait until it falls below the low-water mark again.
    """

    __slots__ = ("_drained", "_transport", "read_paused", "write_paused")

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self.read_paused = False
        self.write_paused = False
        self._drained: asyncio.Future[None] | None = None

    def pause_reading(self) -> None:
        if not self.read_paused:
            self.read_paused = True
            self._transport.pause_reading()

    def resume_reading(self) -> None:
        if self.read_paused:
            self.read_paused = False
            self._transport.resume_reading()

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        self._wake()

    def connection_lost(self) -> None:
        # A writer waiting on a dead transport must not wait forever; it finds the connection closed.
        self._transport = LOST_TRANSPORT
        self.write_paused = False
        self._wake()

    async def drain(self) -> None:
        if self.write_paused:
            if self._drained is None:
                self._drained = asyncio.get_running_loop().create_future()
            await self._drained

    def _wake(self) -> None:
        if self._drained is not None:
            if not self._drained.done():
                self._drained.set_result(None)
            self._drained = None
