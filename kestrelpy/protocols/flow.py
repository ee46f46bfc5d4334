"""Flow control shared by every protocol: pause reading when the app lags, pause the app when writes back up."""

from __future__ import annotations

import asyncio


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
