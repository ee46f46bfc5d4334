"""Minimum data rates over real sockets, on both parsers and both loops: a request body that arrives too
slowly gets 408 (or an abort once the response has started), a client that reads the response too
slowly is cut off, and neither a slow app nor a client that keeps up with the minimum is ever cut.

The servers keep time by a manual clock: the bytes move over real sockets, and the test beats the
heartbeat once per second of the scenario, so each rule is checked at the beat where it must act.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from kestrelpy.config import Limits
from tests.support.gate import Gate
from tests.support.live_server import LiveServer
from tests.support.manual_clock import ManualClock
from tests.support.waiting import WAIT, wait_until

Start = Callable[..., Any]

KiB = 1024
MiB = 1024 * KiB

# The grace period is not a whole number of beats, so no check lands exactly on its boundary.
BODY_RATE = Limits(min_request_body_rate=1000, min_request_body_grace=1.5)
PART = b"y" * (64 * KiB)


def body_reader(messages: list[dict[str, Any]], *, gate: Gate | None = None) -> Any:
    """Reads the whole body (once through `gate`, when given), recording each message, and answers with
    its length."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        if gate is not None:
            await gate.wait()
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


def body_received(messages: list[dict[str, Any]]) -> int:
    return sum(len(message.get("body", b"")) for message in messages)


def send_and_wait_read(client: Any, data: bytes, messages: list[dict[str, Any]], body: int | None = None) -> None:
    """Send `data` (`body` bytes of it body, all unless told) and wait until the app has read that body:
    it then waits on the client again."""
    expected = body_received(messages) + (len(data) if body is None else body)
    client.send(data)
    assert wait_until(lambda: body_received(messages) == expected), f"the app read {body_received(messages)} bytes"


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


def held_back(live: LiveServer) -> bool:
    """The unread socket and the transport's buffer are full: the app's next send waits."""
    return any(conn.flow.write_paused for conn in live.connections())


# -- request body --------------------------------------------------------------------------------------

POST_100000 = b"POST /up HTTP/1.1\r\nHost: t\r\nContent-Length: 100000\r\n\r\n"


def test_stalled_body_gets_408_after_the_grace_period(
    running_server: Start, raw_client: Start, manual_clock: ManualClock
) -> None:
    messages: list[dict[str, Any]] = []
    live = running_server(body_reader(messages), limits=BODY_RATE)
    client = raw_client(live.port)
    send_and_wait_read(client, POST_100000 + b"x" * 10, messages, body=10)  # then nothing more
    manual_clock.beat()  # 1 s at 10 B/s: far too slow, but within the grace period
    assert client.nothing_within(0.1)
    manual_clock.beat()  # 2 s: past the grace period
    response = client.read_response()
    assert response.status == 408
    assert response.header("connection") == "close"
    assert client.wait_closed()
    assert messages[0] == {"type": "http.request", "body": b"x" * 10, "more_body": True}
    assert wait_until(lambda: messages[-1:] == [{"type": "http.disconnect"}])


def test_dribbled_body_gets_408_even_though_bytes_keep_coming(
    running_server: Start, raw_client: Start, manual_clock: ManualClock
) -> None:
    messages: list[dict[str, Any]] = []
    live = running_server(body_reader(messages), limits=BODY_RATE)
    client = raw_client(live.port)
    client.send(POST_100000)
    for _ in range(2):
        for _ in range(10):  # 100 B/s: every read wakes the app, yet the average stays too low
            send_and_wait_read(client, b"x" * 10, messages)
        manual_clock.beat()
    response = client.read_response()  # at the second beat, past the grace period
    assert response.status == 408
    assert wait_until(lambda: messages[-1:] == [{"type": "http.disconnect"}])


def test_body_at_an_adequate_rate_is_served(
    running_server: Start, raw_client: Start, manual_clock: ManualClock
) -> None:
    messages: list[dict[str, Any]] = []
    live = running_server(body_reader(messages), limits=BODY_RATE)
    client = raw_client(live.port)
    total = 20_000
    client.send(b"POST /up HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % total)
    for _ in range(3):  # 3 s at 5000 B/s: five times the minimum, well past the grace period
        send_and_wait_read(client, b"x" * 5000, messages)
        manual_clock.beat()
    client.send(b"x" * 5000)
    response = client.read_response()
    assert response.status == 200 and response.body == b"%d" % total


def test_slow_app_is_not_held_against_the_client(
    running_server: Start, raw_client: Start, manual_clock: ManualClock
) -> None:
    """The client waits for 100 Continue, which goes out only when the app first asks for the body, 3 s
    after the request arrived: that time is the app's, not the client's, and the request is served."""
    messages: list[dict[str, Any]] = []
    gate = Gate()
    live = running_server(body_reader(messages, gate=gate), limits=BODY_RATE)
    client = raw_client(live.port)
    client.send(b"POST /up HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\nExpect: 100-continue\r\n\r\n")
    assert gate.reached.wait(WAIT)
    for _ in range(3):
        manual_clock.beat()
    assert client.nothing_within(0.1)  # neither a 100 Continue nor a 408 yet
    gate.open()
    interim = client.read_response()
    assert interim.status == 100
    client.send(b"x" * 100)
    response = client.read_response()
    assert response.status == 200 and response.body == b"100"


def test_body_too_slow_after_the_response_started_aborts(
    running_server: Start, raw_client: Start, manual_clock: ManualClock
) -> None:
    messages: list[dict[str, Any]] = []
    reading = threading.Event()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"10")]})
        await send({"type": "http.response.body", "body": b"early", "more_body": True})
        reading.set()
        while True:
            messages.append(await receive())
            if messages[-1]["type"] == "http.disconnect":
                return

    live = running_server(app, limits=BODY_RATE)
    client = raw_client(live.port)
    client.send(POST_100000)
    assert reading.wait(WAIT)
    manual_clock.beat()
    manual_clock.beat()  # past the grace period with no body at all
    response = client.read_response()
    assert response.status == 200
    assert not response.complete and response.body == b"early"  # cut short: no 408 inside the body
    assert wait_until(lambda: messages[-1:] == [{"type": "http.disconnect"}])


# -- response ------------------------------------------------------------------------------------------

# At 4 MiB/s the few MiB that socket buffers take before the peer's silence shows are worth a second or two.
RESPONSE_RATE = Limits(min_response_rate=4 * MiB, min_response_grace=1.5)


def test_client_that_stops_reading_is_cut_off(
    running_server: Start, raw_client: Start, manual_clock: ManualClock
) -> None:
    progress: dict[str, Any] = {"sent": 0, "error": None, "done": threading.Event()}
    parts = 1024  # 64 MiB
    live = running_server(streamer(progress, parts), limits=RESPONSE_RATE)
    client = raw_client(live.port, rcvbuf=64 * KiB)
    client.send(client.request_bytes())
    assert wait_until(lambda: held_back(live)), "the unread socket never held the app's sends back"
    # What went out before the client stopped reading (under 16 MiB) buys it at most 4 s at 4 MiB/s.
    while not progress["done"].is_set() and manual_clock.beats < 6:
        manual_clock.beat()
    assert progress["done"].wait(WAIT), "the stream was neither finished nor cut off"
    assert isinstance(progress["error"], OSError)  # the app's send raised once the connection was cut
    assert progress["sent"] < 16 * MiB  # it was held back by the unread socket meanwhile
    response = client.read_response()
    assert response.status == 200 and not response.complete  # the client can tell it was cut short
    assert wait_until(lambda: not live.connections())


def test_client_reading_faster_than_the_minimum_gets_everything(
    running_server: Start, raw_client: Start, manual_clock: ManualClock
) -> None:
    progress: dict[str, Any] = {"sent": 0, "error": None, "done": threading.Event()}
    parts = 384  # 24 MiB, read at 8 MiB a second: twice the minimum, for longer than the grace period
    live = running_server(streamer(progress, parts), limits=RESPONSE_RATE)
    client = raw_client(live.port, rcvbuf=64 * KiB)
    client.send(client.request_bytes())
    received = 0
    while received < len(PART) * parts + 100:  # the whole body and its head
        data = client.sock.recv(64 * KiB)
        if not data:
            break
        received += len(data)
        if received >= (manual_clock.beats + 1) * 8 * MiB:
            manual_clock.beat()  # a second's worth read
    assert manual_clock.beats == 3
    assert progress["done"].wait(WAIT)
    assert progress["error"] is None
    assert progress["sent"] == len(PART) * parts
    assert received > len(PART) * parts
