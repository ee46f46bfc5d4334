"""Default response headers, the keep-alive idle timeout and graceful shutdown, on real sockets."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
import pytest

from tests.support.gate import Gate
from tests.support.manual_clock import ManualClock
from tests.support.waiting import WAIT

Start = Callable[..., Any]


async def hello_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    headers = [(b"content-type", b"text/plain")]
    if scope["path"] == "/own-server":
        headers += [(b"server", b"app-server/1"), (b"date", b"Mon, 01 Jan 2024 00:00:00 GMT")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": b"hello"})


# -- headers -------------------------------------------------------------------------------------------


def test_date_and_server_headers_by_default(running_server: Start, raw_client: Start) -> None:
    live = running_server(hello_app)
    response = raw_client(live.port).request()
    assert response.all("server") == ["kestrelpy"]
    dates = response.all("date")
    assert len(dates) == 1
    sent = parsedate_to_datetime(dates[0])
    assert dates[0].endswith(" GMT")
    assert abs(sent.timestamp() - time.time()) < 5


def test_app_server_and_date_headers_replace_the_defaults(running_server: Start, raw_client: Start) -> None:
    live = running_server(hello_app)
    response = raw_client(live.port).request("GET", "/own-server")
    assert response.all("server") == ["app-server/1"]
    assert response.all("date") == ["Mon, 01 Jan 2024 00:00:00 GMT"]


def test_server_and_date_headers_can_be_switched_off(running_server: Start, raw_client: Start) -> None:
    live = running_server(hello_app, server_header=False, date_header=False)
    response = raw_client(live.port).request()
    assert response.status == 200
    assert "server" not in response.names()
    assert "date" not in response.names()
    # The switches apply to the server's own answers too.
    client = raw_client(live.port)
    client.send(b"NOT HTTP\r\n\r\n")
    rejected = client.read_response()
    assert rejected.status == 400
    assert "server" not in rejected.names() and "date" not in rejected.names()


def test_extra_headers_go_on_every_response(running_server: Start, raw_client: Start) -> None:
    async def crash(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == "/crash":
            raise RuntimeError("boom")
        await hello_app(scope, receive, send)

    live = running_server(crash, headers=(("X-Frame-Options", "DENY"), ("X-Served-By", "node 1")))
    for path in ("/", "/crash"):
        response = raw_client(live.port).request("GET", path)
        assert response.header("x-frame-options") == "DENY"
        assert response.header("x-served-by") == "node 1"
    client = raw_client(live.port)
    client.send(b"\x00\x01\x02\r\n\r\n")
    assert client.read_response().header("x-served-by") == "node 1"


# -- keep-alive idle timeout ---------------------------------------------------------------------------


def test_idle_keep_alive_connection_is_closed_after_the_timeout(
    running_server: Start, raw_client: Start, manual_clock: ManualClock
) -> None:
    live = running_server(hello_app, keep_alive_timeout=1.5)
    client = raw_client(live.port)
    assert client.request().status == 200
    manual_clock.beat()
    assert client.nothing_within(0.1)  # idle for 1 s: within the timeout
    manual_clock.beat()  # 2 s: the first beat past the timeout closes it
    assert client.wait_closed(WAIT), "the idle connection was never closed"
    assert client.buffer == b""  # closed without sending anything


@pytest.mark.parametrize("parser", ["httptools"])  # parser-independent: one parser suffices
def test_connection_in_use_is_not_closed_by_the_idle_timeout(
    running_server: Start, raw_client: Start, manual_clock: ManualClock
) -> None:
    gate = Gate()

    async def slow(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await gate.wait()
        await hello_app(scope, receive, send)

    live = running_server(slow, keep_alive_timeout=0.5)
    client = raw_client(live.port)
    client.send(client.request_bytes())
    assert gate.reached.wait(WAIT)
    for _ in range(3):
        manual_clock.beat()  # the app takes longer than the idle timeout: the connection is busy, not idle
    assert client.nothing_within(0.1)
    gate.open()
    assert client.read_response().body == b"hello"


# -- graceful shutdown ---------------------------------------------------------------------------------


def test_graceful_shutdown_lets_an_in_flight_request_finish(running_server: Start, raw_client: Start) -> None:
    gate, called = threading.Event(), threading.Event()

    async def slow(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] == "/slow":
            called.set()
            await asyncio.to_thread(gate.wait, WAIT)
        await hello_app(scope, receive, send)

    live = running_server(slow)
    busy = raw_client(live.port)
    idle = raw_client(live.port)
    assert idle.request().status == 200
    busy.send(busy.request_bytes("GET", "/slow"))
    assert called.wait(WAIT)

    live.request_shutdown()
    # The idle keep-alive connection closes at once; the busy one stays open.
    assert idle.wait_closed(0.5), "the idle connection was not closed at once"
    assert busy.nothing_within(0.1)
    # No new connections are accepted.
    with pytest.raises(OSError):
        late = socket.create_connection(("127.0.0.1", live.port), timeout=2)
        try:
            late.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            if not late.recv(1):
                raise ConnectionResetError("closed without an answer")
        finally:
            late.close()
    assert live.running

    gate.set()
    response = busy.read_response()
    assert (response.status, response.body) == (200, b"hello")
    assert response.header("connection") == "close"
    assert busy.wait_closed()
    assert live.join(WAIT), "serve() did not return after the last request finished"
    assert live.error is None


def test_second_shutdown_request_closes_busy_connections_at_once(running_server: Start, raw_client: Start) -> None:
    called = threading.Event()
    cancelled = threading.Event()

    async def stuck(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        called.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    live = running_server(stuck)
    client = raw_client(live.port)
    client.send(client.request_bytes())
    assert called.wait(WAIT)
    live.request_shutdown()
    assert client.nothing_within(0.2)
    live.request_shutdown()
    assert client.wait_closed(WAIT)
    assert cancelled.wait(WAIT)
    assert live.join(WAIT)


def test_graceful_shutdown_timeout_closes_what_is_left(running_server: Start, raw_client: Start) -> None:
    called = threading.Event()

    async def stuck(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        called.set()
        await asyncio.sleep(3600)

    live = running_server(stuck, timeout_graceful_shutdown=0.5)
    client = raw_client(live.port)
    client.send(client.request_bytes())
    assert called.wait(WAIT)
    began = time.monotonic()
    live.request_shutdown()
    assert client.wait_closed(WAIT)
    assert live.join(WAIT)
    assert 0.4 <= time.monotonic() - began < 5


def test_httpx_keep_alive_pool_reuses_one_connection(running_server: Start) -> None:
    peers: set[tuple[str, int]] = set()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        peers.add(scope["client"])
        await hello_app(scope, receive, send)

    live = running_server(app)
    with httpx.Client(base_url=live.url) as client:
        for _ in range(5):
            assert client.get("/").text == "hello"
    assert len(peers) == 1
