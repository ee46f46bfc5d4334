"""Minimum data rates over real sockets, on both parsers and both loops: a request body that arrives too
slowly gets 408 (or an abort once the response has started), a client that reads the response too
slowly is cut off, and neither a slow app nor a client that keeps up with the minimum is ever cut."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

from kestrelpy.config import Limits
from tests.support.waiting import WAIT, wait_until

Start = Callable[..., Any]

KiB = 1024
MiB = 1024 * KiB

# Small values so that each test takes a few seconds; the grace period must exceed the 1 s heartbeat.
BODY_RATE = Limits(min_request_body_rate=1000, min_request_body_grace=1.5)
PART = b"y" * (64 * KiB)


def body_reader(messages: list[dict[str, Any]], *, delay: float = 0.0) -> Any:
    """Reads the whole body (after `delay`), recording each message, and answers with its length."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await asyncio.sleep(delay)
        size = 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] == "http.disconnect":
                return
            size += len(message["body"])
            if not message["more_body"]:
                break
        answer = str(size).encode()
        length = b"%d" % len(answer)
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", length)]})
        await send({"type": "http.response.body", "body": answer})

    return app


def streamer(progress: dict[str, Any], parts: int) -> Any:
    """Streams `parts` x 64 KiB, recording how much `send` accepted and how the stream ended."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        length = b"%d" % (len(PART) * parts)
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", length)]})
        try:
            for i in range(parts):
                await send({"type": "http.response.body", "body": PART, "more_body": i < parts - 1})
                progress["sent"] += len(PART)
        except OSError as exc:  # the ASGI spec's disconnect error for send
            progress["error"] = exc
        progress["done"].set()

    return app


# -- request body --------------------------------------------------------------------------------------


def test_stalled_body_gets_408_after_the_grace_period(running_server: Start, raw_client: Start) -> None:
    messages: list[dict[str, Any]] = []
    live = running_server(body_reader(messages), limits=BODY_RATE)
    client = raw_client(live.port)
    client.send(b"POST /up HTTP/1.1\r\nHost: t\r\nContent-Length: 100000\r\n\r\n" + b"x" * 10)
    response = client.read_response()  # nothing more is sent: the server has to end it
    assert response.status == 408
    assert response.header("connection") == "close"
    assert client.wait_closed()
    assert messages[0] == {"type": "http.request", "body": b"x" * 10, "more_body": True}
    assert messages[-1] == {"type": "http.disconnect"}


def test_dribbled_body_gets_408_even_though_bytes_keep_coming(running_server: Start, raw_client: Start) -> None:
    messages: list[dict[str, Any]] = []
    live = running_server(body_reader(messages), limits=BODY_RATE)
    client = raw_client(live.port)
    client.send(b"POST /up HTTP/1.1\r\nHost: t\r\nContent-Length: 100000\r\n\r\n")
    started = time.monotonic()
    while not client.eof and time.monotonic() - started < WAIT:
        try:
            client.send(b"x" * 10)  # 100 B/s: every read resets no timer, the average stays too low
        except (BrokenPipeError, ConnectionResetError):
            break
        if not client.nothing_within(0.1):
            break
    response = client.read_response()
    assert response.status == 408
    assert messages[-1] == {"type": "http.disconnect"}


def test_body_at_an_adequate_rate_is_served(running_server: Start, raw_client: Start) -> None:
    messages: list[dict[str, Any]] = []
    live = running_server(body_reader(messages), limits=BODY_RATE)
    client = raw_client(live.port)
    total = 15_000  # 3 s at 5000 B/s: five times the minimum, well past the grace period
    client.send(b"POST /up HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % total)
    for _ in range(30):
        client.send(b"x" * (total // 30))
        time.sleep(0.1)
    response = client.read_response()
    assert response.status == 200 and response.body == b"%d" % total


def test_slow_app_is_not_held_against_the_client(running_server: Start, raw_client: Start) -> None:
    """The client waits for 100 Continue, which goes out only when the app first asks for the body, 3 s
    after the request arrived: that time is the app's, not the client's, and the request is served."""
    messages: list[dict[str, Any]] = []
    live = running_server(body_reader(messages, delay=3.0), limits=BODY_RATE)
    client = raw_client(live.port)
    client.send(b"POST /up HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\nExpect: 100-continue\r\n\r\n")
    interim = client.read_response()
    assert interim.status == 100
    client.send(b"x" * 100)
    response = client.read_response()
    assert response.status == 200 and response.body == b"100"


def test_body_too_slow_after_the_response_started_aborts(running_server: Start, raw_client: Start) -> None:
    messages: list[dict[str, Any]] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"10")]})
        await send({"type": "http.response.body", "body": b"early", "more_body": True})
        while True:
            messages.append(await receive())
            if messages[-1]["type"] == "http.disconnect":
                return

    live = running_server(app, limits=BODY_RATE)
    client = raw_client(live.port)
    client.send(b"POST /up HTTP/1.1\r\nHost: t\r\nContent-Length: 100000\r\n\r\n")
    response = client.read_response()
    assert response.status == 200
    assert not response.complete and response.body == b"early"  # cut short: no 408 inside the body
    assert wait_until(lambda: messages[-1:] == [{"type": "http.disconnect"}])


# -- response ------------------------------------------------------------------------------------------

# At 4 MiB/s the few MiB that socket buffers take before the peer's silence shows are worth a second or two.
RESPONSE_RATE = Limits(min_response_rate=4 * MiB, min_response_grace=1.5)


def test_client_that_stops_reading_is_cut_off(running_server: Start, raw_client: Start) -> None:
    progress: dict[str, Any] = {"sent": 0, "error": None, "done": threading.Event()}
    parts = 1024  # 64 MiB
    live = running_server(streamer(progress, parts), limits=RESPONSE_RATE)
    client = raw_client(live.port, rcvbuf=64 * KiB)
    client.send(client.request_bytes())
    assert progress["done"].wait(WAIT), "the stream was neither finished nor cut off"
    assert isinstance(progress["error"], OSError)  # the app's send raised once the connection was cut
    assert progress["sent"] < 16 * MiB  # it was held back by the unread socket meanwhile
    response = client.read_response()
    assert response.status == 200 and not response.complete  # the client can tell it was cut short
    assert wait_until(lambda: not live.connections())


def test_client_reading_faster_than_the_minimum_gets_everything(running_server: Start, raw_client: Start) -> None:
    progress: dict[str, Any] = {"sent": 0, "error": None, "done": threading.Event()}
    parts = 192  # 12 MiB, read at 8 MiB/s: twice the minimum, for longer than the grace period
    live = running_server(streamer(progress, parts), limits=RESPONSE_RATE)
    client = raw_client(live.port, rcvbuf=64 * KiB)
    client.send(client.request_bytes())
    started = time.monotonic()
    received = 0
    while True:
        data = client.sock.recv(64 * KiB)
        if not data:
            break
        received += len(data)
        ahead = received / (8 * MiB) - (time.monotonic() - started)
        if ahead > 0:
            time.sleep(ahead)  # no faster than 8 MiB/s
        if received >= len(PART) * parts + 100:  # the whole body and its head
            break
    assert progress["done"].wait(WAIT)
    assert progress["error"] is None
    assert progress["sent"] == len(PART) * parts
    assert received > len(PART) * parts
