"""Timeouts driven by the heartbeat with an injected clock: no sleeping, exact boundaries. Both parser
adapters are fed bytes in memory through the shared connection."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from memory_transport import MemoryTransport

from kestrelpy.config import Config, Limits
from kestrelpy.server import connection_class
from kestrelpy.state import ServerState


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def never_called(scope: dict[str, Any], receive: Any, send: Any) -> None:
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
    assert transport.closed and transport.out == b""  # closed silently, no 408


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
