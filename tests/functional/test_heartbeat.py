"""The heartbeat outlives a connection whose check raises: that connection is logged once and aborted,
every other one is still swept, the Date line still moves on, and a late beat is reported.

Real loopback connections to a listener on a loop stepped by this thread; the server's monotonic clock
and wall clock are injected, so beats are driven by moving them and calling `Heartbeat.tick()`, except in
the last test, which lets the loop run the beats on its own timer.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from kestrelpy.config import Config, Limits
from kestrelpy.heartbeat import INTERVAL, Heartbeat
from kestrelpy.protocols.http11_h11 import H11Connection
from kestrelpy.state import ServerState

WAIT = 10.0
KEEP_ALIVE = 5.0


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class ListHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def at(self, level: int) -> list[logging.LogRecord]:
        return [r for r in self.records if r.levelno == level]


class BrokenTick(H11Connection):
    """A connection whose heartbeat check raises, as a bug in on_tick would; it counts its aborts."""

    def __init__(self, state: ServerState) -> None:
        super().__init__(state)
        self.aborts = 0

    def on_tick(self, now: float) -> None:
        raise RuntimeError("on_tick bug")

    def abort(self) -> None:
        self.aborts += 1
        super().abort()


class BrokenAbort(BrokenTick):
    """Its abort raises too: the heartbeat must still stop ticking it."""

    def abort(self) -> None:
        self.aborts += 1
        raise RuntimeError("abort bug")


async def hello(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


class Served:
    """A listener on 127.0.0.1 with its ServerState and Heartbeat, on a loop this thread steps."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.clock = Clock(100.0)
        self.wallclock = Clock(1_700_000_000.0)
        config = Config(app=hello, http="h11", limits=Limits(keep_alive_timeout=KEEP_ALIVE), access_log=False)
        self.state = ServerState(config, hello, self.loop, access_log=False, clock=self.clock)
        self.heartbeat = Heartbeat(self.state, self.loop, wallclock=self.wallclock)
        self._kinds: deque[type[H11Connection]] = deque()
        self.accepted: list[H11Connection] = []
        self.clients: list[socket.socket] = []
        self.listener = self.loop.run_until_complete(self.loop.create_server(self._accept, "127.0.0.1", 0))
        self.port = self.listener.sockets[0].getsockname()[1]

    def _accept(self) -> H11Connection:
        conn = self._kinds.popleft()(self.state)
        self.accepted.append(conn)
        return conn

    def connect(self, kind: type[H11Connection] = H11Connection) -> tuple[socket.socket, H11Connection]:
        """A real client connection, once the server has it on its books."""
        self._kinds.append(kind)
        client = socket.create_connection(("127.0.0.1", self.port), timeout=WAIT)
        client.setblocking(False)
        self.clients.append(client)
        count = len(self.accepted) + 1
        self.run_until(lambda: len(self.accepted) == count and self.accepted[-1] in self.state.connections)
        return client, self.accepted[-1]

    def run_until(self, done: Callable[[], bool], timeout: float = WAIT) -> None:
        async def poll() -> None:
            deadline = time.monotonic() + timeout
            while not done():
                assert time.monotonic() < deadline, "timed out"
                await asyncio.sleep(0.005)

        self.loop.run_until_complete(poll())

    def settle(self) -> None:
        """A few loop turns: closes and aborts reach the sockets and connection_lost runs."""
        self.loop.run_until_complete(asyncio.sleep(0.05))

    def beat(self, seconds: float = INTERVAL) -> None:
        self.clock.now += seconds
        self.wallclock.now += seconds
        self.heartbeat.tick()

    def exchange(self, client: socket.socket, request: bytes) -> bytes:
        client.sendall(request)
        received = bytearray()

        def complete() -> bool:
            try:
                received.extend(client.recv(65536))
            except BlockingIOError:
                pass
            return received.endswith(b"\r\n\r\nok")

        self.run_until(complete)
        return bytes(received)

    def close(self) -> None:
        self.heartbeat.stop()
        self.listener.close()
        for conn in self.accepted:
            if conn.transport is not None:
                conn.transport.abort()
        self.settle()
        for client in self.clients:
            client.close()
        self.loop.close()


def closed(client: socket.socket) -> bool:
    """True once the server has closed or reset the connection; False while it is open and quiet."""
    try:
        return client.recv(1) == b""
    except BlockingIOError:
        return False
    except ConnectionResetError:
        return True


@pytest.fixture
def served() -> Iterator[Served]:
    s = Served()
    yield s
    s.close()


@pytest.fixture
def error_log() -> Iterator[ListHandler]:
    handler = ListHandler()
    logger = logging.getLogger("kestrelpy.error")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(level)


def test_a_connection_whose_check_raises_is_aborted_alone_and_logged_once(
    served: Served, error_log: ListHandler
) -> None:
    idle = [served.connect()[0] for _ in range(2)]
    broken_client, broken = served.connect(BrokenTick)
    idle.append(served.connect()[0])  # one on each side of it, whatever order the set sweeps in
    busy, _ = served.connect()
    dates = [served.state.date_line]

    served.heartbeat.start()  # the first beat: the broken check raises
    dates.append(served.state.date_line)
    assert isinstance(broken, BrokenTick) and broken.aborts == 1
    assert broken in served.state.connections  # its connection_lost comes a loop turn later...
    served.beat()  # ...so this beat meets it again: aborted again, but not logged again
    dates.append(served.state.date_line)
    assert broken.aborts == 2
    served.settle()
    assert closed(broken_client)
    assert broken not in served.state.connections

    # Every other connection is still swept: each idle one is closed once idle past the keep-alive
    # timeout, and a request on another is answered with the Date of the latest beat.
    for _ in range(int(KEEP_ALIVE) - 1):  # the last beat is 5 s after the connections came: not past it
        served.beat()
        dates.append(served.state.date_line)
        served.settle()
        assert not any(closed(client) for client in idle)
    response = served.exchange(busy, b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
    assert response.startswith(b"HTTP/1.1 200 OK\r\n")
    assert served.state.date_line in response
    served.beat()
    dates.append(served.state.date_line)
    served.settle()
    assert all(closed(client) for client in idle)
    assert not closed(busy)  # its keep-alive clock restarted with its response
    assert len(set(dates)) == len(dates)  # a new Date line every beat

    errors = error_log.at(logging.ERROR)
    assert len(errors) == 1, [r.getMessage() for r in errors]
    port = broken_client.getsockname()[1]
    assert errors[0].getMessage().startswith(f"Heartbeat check of BrokenTick from 127.0.0.1:{port} raised")
    assert errors[0].exc_info is not None and isinstance(errors[0].exc_info[1], RuntimeError)
    assert error_log.at(logging.WARNING) == []  # every beat so far came on time


def test_a_late_beat_is_reported_with_how_late_it_was(served: Served, error_log: ListHandler) -> None:
    served.heartbeat.start()
    served.beat(1.5)  # jitter: not worth a word
    assert error_log.records == []
    served.beat(3.5)  # the loop was blocked for 2.5 s more than a beat
    (warning,) = error_log.records
    assert warning.levelno == logging.WARNING
    assert warning.getMessage().startswith("Heartbeat 2.5s late (3.5s since the previous beat, due every 1s)")


def test_a_connection_whose_abort_raises_too_is_dropped(served: Served, error_log: ListHandler) -> None:
    _, broken = served.connect(BrokenAbort)
    idle, _ = served.connect()
    served.heartbeat.start()
    assert isinstance(broken, BrokenAbort) and broken.aborts == 1
    assert broken not in served.state.connections  # off the books at once: no later beat tries it
    messages = [r.getMessage() for r in error_log.at(logging.ERROR)]
    assert len(messages) == 2, messages
    assert messages[0].startswith("Heartbeat check of BrokenAbort from 127.0.0.1:")
    assert messages[1].startswith("Aborting BrokenAbort from 127.0.0.1:") and "failed too" in messages[1]
    for _ in range(int(KEEP_ALIVE) + 1):
        served.beat()
    served.settle()
    assert broken.aborts == 1 and len(error_log.at(logging.ERROR)) == 2
    assert closed(idle)


def test_the_beat_goes_on_by_itself_after_a_connection_raised(served: Served, error_log: ListHandler) -> None:
    """No direct ticks here: the loop's own timer runs every beat, as in a server."""
    served.heartbeat.start()
    _, broken = served.connect(BrokenTick)
    idle, _ = served.connect()
    assert isinstance(broken, BrokenTick)
    served.run_until(lambda: broken.aborts > 0)  # a beat from the timer met the broken check
    date = served.state.date_line
    served.wallclock.now += 60
    served.run_until(lambda: served.state.date_line != date)  # and the timer fired again after it
    served.clock.now += KEEP_ALIVE + 1
    served.run_until(lambda: closed(idle))  # still sweeping: the idle connection times out
    assert len(error_log.at(logging.ERROR)) == 1
