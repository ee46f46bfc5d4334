"""Timeouts and minimum data rates driven by the heartbeat with an injected clock: no sleeping, exact
adapters are fed bytes in memory through the shared connection."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from kestrelpy import heartbeat
from kestrelpy.asgi import Receive, Scope, Send
from kestrelpy.config import Config, Limits
from kestrelpy.errors import ConfigError
from kestrelpy.protocols import timeouts
from kestrelpy.server import connection_class
from kestrelpy.state import ServerState
from tests.support.memory_transport import MemoryTransport


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def never_called(scope: Scope, receive: Receive, send: Send) -> None:
    raise AssertionError("the app must not be called")


def connect(http: str, limits: Limits) -> tuple[Any, MemoryTransport, Clock]:
    loop = asyncio.new_event_loop()
    clock = Clock()
    config = Config(app=never_called, http=http, limits=limits, access_log=False)
    state = ServerState(config, never_called, loop, access_log=False, clock=clock)
    conn = connection_class(http)(state)
    transport = MemoryTransport()
    conn.connection_made(transport)
    loop.close()  # nothing here runs on it: the app is never started
    return conn, transport, clock


@pytest.mark.parametrize("http", ["httptools", "h11"])
def test_request_headers_timeout_counts_from_the_first_tick_that_sees_the_head(http: str) -> None:
    conn, transport, clock = connect(http, Limits(request_headers_timeout=10, keep_alive_timeout=5))
    conn.data_received(b"GET / HTTP/1.1\r\nHost: t\r\n")
    conn.on_tick(clock.now)  # the head is seen: its clock starts
    clock.now += 10.0
    conn.on_tick(clock.now)  # exactly at the limit: still waiting
    assert not transport.closed and transport.out == b""
    clock.now += 0.5
    conn.on_tick(clock.now)
    assert transport.out.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
    assert transport.closed


@pytest.mark.parametrize("http", ["httptools", "h11"])
def test_keep_alive_timeout_applies_before_the_first_byte(http: str) -> None:
    conn, transport, clock = connect(http, Limits(request_headers_timeout=10, keep_alive_timeout=5))
    clock.now += 5.0
    conn.on_tick(clock.now)
    assert not transport.closed
    clock.now += 0.5
    conn.on_tick(clock.now)
    assert transport.is_closing() and transport.out == b""  # closed silently, no 408


@pytest.mark.parametrize("http", ["httptools", "h11"])
def test_a_slow_head_is_not_cut_by_the_keep_alive_timeout(http: str) -> None:
    conn, transport, clock = connect(http, Limits(request_headers_timeout=10, keep_alive_timeout=1))
    conn.data_received(b"GET / HTT")
    for _ in range(9):
        clock.now += 1.0
        conn.on_tick(clock.now)
    assert not transport.closed


@pytest.mark.parametrize("http", ["httptools", "h11"])
def test_concurrency_limit_refuses_without_reading(http: str) -> None:
    conn, _, _ = connect(http, Limits(max_concurrent_connections=1))
    second = connection_class(http)(conn.state)
    transport = MemoryTransport()
    second.connection_made(transport)
    assert transport.out.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
    assert b"\r\nconnection: close\r\n" in transport.out
    assert transport.closed  # the write side was shut
    second.data_received(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")  # dropped, never parsed
    assert transport.out.count(b"HTTP/1.1") == 1


# -- minimum data rates ------------------------------------------------------------------------------

BODY_RATE = Limits(min_request_body_rate=100, min_request_body_grace=2, keep_alive_timeout=1000)
RESPONSE_RATE = Limits(min_response_rate=1000, min_response_grace=2, keep_alive_timeout=1000)
POST_HEAD = b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 100000\r\n\r\n"


class BodyReader:
    """An app that reads the body and records every message; between reads it waits on `go` when told."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self.pause_after: int | None = None  # after this many messages, wait for `go` before reading on
        self.go = asyncio.Event()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        while True:
            if len(self.messages) == self.pause_after:
                await self.go.wait()
            message = await receive()
            self.messages.append(message)
            if message["type"] == "http.disconnect" or not message.get("more_body"):
                break


class Served:
    """A connection on a loop that is stepped by hand, with an app that may run."""

    def __init__(self, http: str, limits: Limits, app: Any) -> None:
        self.loop = asyncio.new_event_loop()
        self.clock = Clock()
        config = Config(app=app, http=http, limits=limits, access_log=False)
        state = ServerState(config, app, self.loop, access_log=False, clock=self.clock)
        self.conn = connection_class(http)(state)
        self.transport = MemoryTransport()
        self.conn.connection_made(self.transport)

    def settle(self) -> None:
        """Let the app run until it waits on something."""
        for _ in range(5):
            self.loop.run_until_complete(asyncio.sleep(0))

    def tick(self, seconds: float = 1.0) -> None:
        self.clock.now += seconds
        self.conn.on_tick(self.clock.now)
        self.settle()

    def close(self) -> None:
        self.conn.cancel_app()
        self.settle()
        self.loop.close()


@pytest.fixture
def served() -> Any:
    opened: list[Served] = []

    def start(http: str, limits: Limits, app: Any = never_called) -> Served:
        opened.append(Served(http, limits, app))
        return opened[-1]

    yield start
    for item in opened:
        item.close()


@pytest.mark.parametrize("http", ["httptools", "h11"])
def test_body_rate_applies_once_the_grace_period_has_passed(http: str, served: Any) -> None:
    app = BodyReader()
    s = served(http, BODY_RATE, app)
    s.conn.data_received(POST_HEAD + b"x" * 10)
    s.settle()  # the app has the 10 bytes and waits for more
    s.tick()
    s.tick()  # 2 s of waiting: within the grace period, whatever the rate
    assert s.transport.out == b"" and not s.transport.closed
    s.tick()  # 3 s: 10 bytes / 3 s is below 100 B/s
    assert s.transport.out.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
    assert b"\r\nconnection: close\r\n" in s.transport.out
    assert s.transport.closed
    assert app.messages[-1] == {"type": "http.disconnect"}


@pytest.mark.parametrize("http", ["httptools", "h11"])
def test_body_rate_exactly_at_the_minimum_is_enough(http: str, served: Any) -> None:
    app = BodyReader()
    s = served(http, BODY_RATE, app)
    s.conn.data_received(POST_HEAD + b"x" * 300)
    s.settle()
    for _ in range(3):
        s.tick()  # at 3 s: 300 bytes / 3 s = 100 B/s, the minimum itself
    assert not s.transport.closed
    s.tick()  # 300 bytes / 4 s
    assert s.transport.out.startswith(b"HTTP/1.1 408 ")


@pytest.mark.parametrize("http", ["httptools", "h11"])
def test_body_rate_is_an_average_since_the_body_started(http: str, served: Any) -> None:
    app = BodyReader()
    s = served(http, BODY_RATE, app)
    s.conn.data_received(POST_HEAD + b"x" * 1000)  # a fast start...
    s.settle()
    for _ in range(9):
        s.tick()  # ...carries a silence of 9 s: 1000 / 9 s is still above 100 B/s
    assert not s.transport.closed
    s.tick()
    s.tick()  # 1000 / 11 s is not
    assert s.transport.out.startswith(b"HTTP/1.1 408 ")


@pytest.mark.parametrize("http", ["httptools", "h11"])
def test_body_rate_clock_stops_while_the_app_is_busy(http: str, served: Any) -> None:
    app = BodyReader()
    app.pause_after = 1  # after the first chunk the app works on something else
    s = served(http, BODY_RATE, app)
    s.conn.data_received(POST_HEAD + b"x" * 10)
    s.settle()
    assert len(app.messages) == 1
    for _ in range(60):
        s.tick()  # a minute of the app not asking: the slow app is not the client's fault
    assert s.transport.out == b"" and not s.transport.closed
    app.go.set()
    s.settle()  # the app asks again: from now on the client's rate counts, with the first beat's
    s.tick()
    s.tick()
    assert not s.transport.closed  # (the beat in which the app stopped asking counted too)
    s.tick()
    assert s.transport.out.startswith(b"HTTP/1.1 408 ")


@pytest.mark.parametrize("http", ["httptools", "h11"])
def test_body_rate_clock_stops_while_reading_is_paused_for_backpressure(http: str, served: Any) -> None:
    app = BodyReader()
    app.pause_after = 0  # the app does not read at first: the buffered body passes the high-water mark
    s = served(http, Limits(min_request_body_rate=10_000, min_request_body_grace=2, keep_alive_timeout=1000), app)
    s.conn.data_received(POST_HEAD + b"x" * 70_000)  # 7 s worth at 10 000 B/s
    s.settle()
    assert not s.transport.reading  # the server stopped reading: the client cannot send anyway
    for _ in range(60):
        s.tick()
    assert s.transport.out == b"" and not s.transport.closed
    app.go.set()
    s.settle()  # the app takes the buffered body, reading resumes, and the app waits for more
    assert s.transport.reading and sum(len(m.get("body", b"")) for m in app.messages) == 70_000
    for _ in range(7):
        s.tick()
    assert not s.transport.closed  # 70 000 bytes / 7 s of waiting
    s.tick()
    assert s.transport.out.startswith(b"HTTP/1.1 408 ")


@pytest.mark.parametrize("http", ["httptools", "h11"])
def test_body_rate_zero_turns_the_check_off(http: str, served: Any) -> None:
    app = BodyReader()
    s = served(http, Limits(min_request_body_rate=0, keep_alive_timeout=1000), app)
    s.conn.data_received(POST_HEAD)
    s.settle()
    for _ in range(100):
        s.tick()
    assert not s.transport.closed


@pytest.mark.parametrize("http", ["httptools", "h11"])
def test_body_rate_after_the_response_started_aborts(http: str, served: Any) -> None:
    messages: list[dict[str, Any]] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200})
        await send({"type": "http.response.body", "body": b"early", "more_body": True})
        while True:
            messages.append(await receive())
            if messages[-1]["type"] == "http.disconnect":
                return

    s = served(http, BODY_RATE, app)
    s.conn.data_received(POST_HEAD)
    s.settle()
    head = bytes(s.transport.out)
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    for _ in range(3):
        s.tick()
    assert s.transport.closed
    assert bytes(s.transport.out) == head  # no second status line inside the body
    assert messages == [{"type": "http.disconnect"}]


def wrote(s: Served, size: int) -> None:
    s.conn.write(b"x" * size)


@pytest.mark.parametrize("http", ["httptools", "h11"])
def test_response_rate_deadline_grows_with_what_was_written(http: str, served: Any) -> None:
    s = served(http, RESPONSE_RATE)
    wrote(s, 10_000)  # 10 s worth at 1000 B/s
    s.conn.pause_writing()  # the peer stopped reading
    s.tick()  # the deadline: this beat + 10 s
    for _ in range(10):
        s.tick()
    assert not s.transport.closed  # exactly at the deadline
    s.tick(0.5)
    assert s.transport.closed  # aborted


@pytest.mark.parametrize("http", ["httptools", "h11"])
def test_response_rate_gives_a_small_write_the_grace_period(http: str, served: Any) -> None:
    s = served(http, RESPONSE_RATE)
    wrote(s, 100)
    s.conn.pause_writing()
    s.tick()
    s.tick()
    s.tick()  # 2 s after the beat that saw the write
    assert not s.transport.closed
    s.tick(0.5)
    assert s.transport.closed


@pytest.mark.parametrize("http", ["httptools", "h11"])
def test_response_rate_counts_only_while_output_is_held_up(http: str, served: Any) -> None:
    s = served(http, RESPONSE_RATE)
    wrote(s, 100)
    for _ in range(100):
        s.tick()  # long past the deadline, but the transport took everything: nothing to hold against anyone
    assert not s.transport.closed
    s.conn.pause_writing()
    s.tick()
    assert s.transport.closed  # held up, and the deadline long gone


@pytest.mark.parametrize("http", ["httptools", "h11"])
def test_response_rate_a_reader_keeping_up_with_the_minimum_is_never_cut(http: str, served: Any) -> None:
    s = served(http, RESPONSE_RATE)
    s.conn.pause_writing()
    for _ in range(100):
        wrote(s, 1000)  # each beat, the peer takes one second's worth at the minimum rate
        s.tick()
    assert not s.transport.closed
    s.tick()
    s.tick()
    assert not s.transport.closed  # the grace period of the last write
    s.tick()
    assert s.transport.closed  # once it stops, it is cut


@pytest.mark.parametrize("http", ["httptools", "h11"])
def test_response_rate_does_not_count_a_starved_server_against_the_peer(http: str, served: Any) -> None:
    s = served(http, RESPONSE_RATE)
    wrote(s, 100)
    s.conn.pause_writing()
    s.tick()  # the deadline: 2 s from here
    s.tick(30)  # the loop was blocked for 30 s: 29 of them are not the peer's
    s.tick()  # 2 s of the peer's own time since the write
    assert not s.transport.closed
    s.tick(0.5)
    assert s.transport.closed


def test_rate_limits_validate_their_grace_period() -> None:
    with pytest.raises(ConfigError, match="--limit-min-request-body-grace must be greater than 1"):
        Limits(min_request_body_grace=1)
    with pytest.raises(ConfigError, match="--limit-min-response-grace must be greater than 1"):
        Limits(min_response_grace=0.5)
    with pytest.raises(ConfigError, match="--limit-min-response-rate must not be negative"):
        Limits(min_response_rate=-1)


def test_rate_beats_are_the_heartbeats_interval() -> None:
    assert timeouts.TICK == heartbeat.INTERVAL
