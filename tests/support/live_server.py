"""A real Server on a loopback port, running in a background thread with its own event loop of the chosen
kind; the test thread starts it, waits on its `started` event, reaches into its loop and stops it."""

from __future__ import annotations

import asyncio
import select
import socket
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

from kestrelpy.config import Config
from kestrelpy.platform import loop_factory
from kestrelpy.server import Server
from tests.support.manual_clock import ManualClock
from tests.support.waiting import WAIT

T = TypeVar("T")


class LiveServer:
    """A Server running in its own thread and event loop. Methods here are called from the test thread."""

    def __init__(
        self,
        config: Config,
        loop_kind: str,
        sockets: list[socket.socket] | None = None,
        clock: ManualClock | None = None,
    ) -> None:
        self.config = config
        self.clock = clock  # the server keeps time by it and beats only when the test says, if given
        self.sockets = sockets  # pre-bound listening sockets, handed to serve() (the caller closes them)
        self.loop_kind = loop_kind
        self.server: Server | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.error: BaseException | None = None
        self._new_loop = loop_factory(loop_kind)
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"kestrelpy-{loop_kind}", daemon=True)

    # The server thread.

    def _run(self) -> None:
        loop = self._new_loop()
        self.loop = loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._main())
        except BaseException as exc:
            self.error = exc
        finally:
            try:
                loop.run_until_complete(loop.shutdown_asyncgens())
            finally:
                asyncio.set_event_loop(None)
                loop.close()
                self._ready.set()  # a failed start is reported once the thread has cleaned up

    async def _main(self) -> None:
        clock = self.clock
        server = Server(self.config) if clock is None else Server(self.config, clock=clock, heartbeat=clock.heartbeat)
        self.server = server
        serving = asyncio.ensure_future(server.serve(self.sockets))
        started = asyncio.ensure_future(server.started.wait())
        await asyncio.wait({serving, started}, return_when=asyncio.FIRST_COMPLETED)
        if started.done():
            self._ready.set()
        else:
            started.cancel()
        await serving

    # The test thread.

    def start(self, wait: bool = True) -> LiveServer:
        """Start the thread; unless `wait` is false, return once `started` is set (or raise serve()'s error)."""
        self._thread.start()
        if not wait:
            return self
        if not self._ready.wait(WAIT):
            raise AssertionError(f"the server did not start within {WAIT}s")
        if self.error is not None:
            self._thread.join(WAIT)
            raise self.error
        assert self.server is not None and self.server.addresses, "started without a bound address"
        return self

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.addresses[0][1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_started(self, timeout: float = WAIT) -> bool:
        return self._ready.wait(timeout) and self.error is None

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def call(self, fn: Callable[[], T], timeout: float = WAIT) -> T:
        """Run `fn` on the server's loop (where connection objects may be touched) and return its result."""
        assert self.loop is not None
        result: Future[T] = Future()

        def run() -> None:
            try:
                result.set_result(fn())
            except BaseException as exc:
                result.set_exception(exc)

        self.loop.call_soon_threadsafe(run)
        return result.result(timeout)

    def connections(self) -> list[Any]:
        """The live connection objects (read on the server's loop)."""
        server = self.server
        assert server is not None
        return self.call(lambda: list(server._state.connections) if server._state is not None else [])

    def has_read_everything(self) -> bool:
        """True when no connection's socket holds bytes the server has not read yet. Checked on the
        server's loop, so whatever runs there afterwards (a heartbeat the test beats) sees what those
        bytes did. A connection that has paused reading, or whose peer has closed, stays unread."""
        server = self.server
        assert server is not None

        def check() -> bool:
            state = server._state
            socks = [] if state is None else [conn.transport.get_extra_info("socket") for conn in state.connections]
            readable, _, _ = select.select([sock for sock in socks if sock is not None], [], [], 0)
            return not readable

        return self.call(check)

    def request_shutdown(self) -> None:
        if self.loop is None or self.server is None:
            raise AssertionError("the server thread has not created its loop yet")
        try:
            self.loop.call_soon_threadsafe(self.server.request_shutdown)
        except RuntimeError:  # the loop has already closed: serve() returned on its own
            if self.running:
                raise

    def join(self, timeout: float = WAIT) -> bool:
        """Wait for serve() to return; True when it did."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def stop(self, timeout: float = 5.0) -> None:
        """Graceful shutdown; if that hangs, a forced one; raise if even that does not end the server."""
        if not self.running:
            return
        self.request_shutdown()
        if self.join(timeout):
            return
        self.request_shutdown()  # a second request closes every connection at once
        if not self.join(timeout):
            raise AssertionError("the server did not stop after a forced shutdown")
        raise AssertionError(f"graceful shutdown did not finish within {timeout}s")
