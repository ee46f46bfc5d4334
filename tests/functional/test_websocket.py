"""WebSocket over real sockets: the ASGI websocket spec, handshake errors, limits, keep-alive, flow control
and shutdown, on both parsers and both loops (they reach the same upgrade hand-off).

The `websockets` asyncio client plays a well-behaved peer; a raw socket plays the others (malformed
handshakes, a peer that never answers pings, one that vanishes, one that never reads).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

pytest.importorskip("websockets")

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from kestrelpy.config import Limits
from kestrelpy.errors import ConfigError
from tests.support.gate import Gate
from tests.support.manual_clock import ManualClock
from tests.support.raw_client import RawClient
from tests.support.waiting import WAIT, wait_until

Start = Callable[..., Any]
Message = dict[str, Any]

KEY = "dGhlIHNhbXBsZSBub25jZQ=="  # RFC 6455 section 1.3's sample key
TEXT, BINARY, CLOSE, PING, PONG = 0x1, 0x2, 0x8, 0x9, 0xA


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run a client coroutine on its own loop, bounded in time."""
    return asyncio.run(asyncio.wait_for(coro, WAIT))


def ws_connect(live: Any, path: str = "/", **kwargs: Any) -> Any:
    kwargs.setdefault("open_timeout", WAIT)
    kwargs.setdefault("close_timeout", WAIT)
    return connect(f"ws://127.0.0.1:{live.port}{path}", **kwargs)


class Recorder:
    """What an app saw, written from the server thread and read from the test thread."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.scopes: list[dict[str, Any]] = []
        self.done = threading.Event()

    def disconnect(self) -> Message | None:
        return next((m for m in self.messages if m["type"] == "websocket.disconnect"), None)


def echo_app(seen: Recorder, **accept: Any) -> Any:
    """Accepts, echoes every message, records everything it receives; answers plain HTTP with 200."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
            await send({"type": "http.response.body", "body": b"ok"})
        if scope["type"] != "websocket":
            return
        seen.scopes.append(scope)
        try:
            seen.messages.append(await receive())
            await send({"type": "websocket.accept", **accept})
            while True:
                message = await receive()
                seen.messages.append(message)
                if message["type"] == "websocket.disconnect":
                    return
                await send({"type": "websocket.send", "bytes": message.get("bytes"), "text": message.get("text")})
        finally:
            seen.done.set()

    return app


# -- raw frames --------------------------------------------------------------------------------------


def frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    """A masked client frame (RFC 6455 section 5.2)."""
    mask = os.urandom(4)
    size = len(payload)
    head = bytes([(0x80 if fin else 0) | opcode])
    if size < 126:
        head += bytes([0x80 | size])
    elif size < 65536:
        head += bytes([0x80 | 126]) + struct.pack("!H", size)
    else:
        head += bytes([0x80 | 127]) + struct.pack("!Q", size)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def read_frame(client: RawClient) -> tuple[int, bytes]:
    """(opcode, payload) of the next server frame."""
    first, second = client._exactly(2)
    size = second & 0x7F
    if size == 126:
        size = struct.unpack("!H", client._exactly(2))[0]
    elif size == 127:
        size = struct.unpack("!Q", client._exactly(8))[0]
    return first & 0x0F, client._exactly(size)


def close_code(payload: bytes) -> int:
    return int(struct.unpack("!H", payload[:2])[0])


def handshake_bytes(path: str = "/", headers: str = "") -> bytes:
    return (
        f"GET {path} HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n{headers}\r\n"
    ).encode("latin-1")


def raw_open(raw_client: Start, live: Any, **kwargs: Any) -> RawClient:
    """A raw socket that has completed the handshake (no extensions, so frames are plain)."""
    client: RawClient = raw_client(live.port, **kwargs)
    client.send(handshake_bytes())
    response = client.read_response()
    assert response.status == 101, response
    return client


# -- the ASGI websocket cycle ------------------------------------------------------------------------


def test_echo_text_and_bytes_with_the_full_scope(running_server: Start) -> None:
    seen = Recorder()
    live = running_server(echo_app(seen), root_path="/mount")

    async def talk() -> list[Any]:
        async with ws_connect(live, "/chat/r%C3%A9m?room=1") as ws:
            await ws.send("héllo")
            text = await ws.recv()
            await ws.send(b"\x00\xff")
            data = await ws.recv()
            return [text, data]

    assert run(talk()) == ["héllo", b"\x00\xff"]
    assert seen.done.wait(WAIT)
    scope = seen.scopes[0]
    assert scope["type"] == "websocket"
    assert scope["asgi"] == {"version": "3.0", "spec_version": "2.4"}
    assert scope["http_version"] == "1.1"
    assert scope["scheme"] == "ws"
    assert scope["path"] == "/mount/chat/rém"
    assert scope["raw_path"] == b"/mount/chat/r%C3%A9m"
    assert scope["query_string"] == b"room=1"
    assert scope["root_path"] == "/mount"
    assert (b"sec-websocket-key", scope_header(scope, b"sec-websocket-key")) in scope["headers"]
    assert all(name == name.lower() for name, _ in scope["headers"])
    assert scope["client"][0] == "127.0.0.1" and scope["server"] == ("127.0.0.1", live.port)
    assert scope["subprotocols"] == []
    assert scope["state"] == {}
    assert scope["extensions"] == {"websocket.http.response": {}}
    assert seen.messages[0] == {"type": "websocket.connect"}
    assert seen.messages[1] == {"type": "websocket.receive", "text": "héllo"}
    assert seen.messages[2] == {"type": "websocket.receive", "bytes": b"\x00\xff"}


def scope_header(scope: dict[str, Any], name: bytes) -> bytes:
    return next(value for key, value in scope["headers"] if key == name)


def test_forwarded_headers_from_a_trusted_proxy_reach_the_scope(running_server: Start) -> None:
    seen = Recorder()
    live = running_server(echo_app(seen))  # loopback peers are trusted by default
    forwarded = {"X-Forwarded-Proto": "https", "X-Forwarded-For": "203.0.113.9"}

    async def talk() -> None:
        async with ws_connect(live, additional_headers=forwarded) as ws:
            await ws.send("x")
            await ws.recv()

    run(talk())
    assert seen.scopes[0]["scheme"] == "wss"
    assert seen.scopes[0]["client"][0] == "203.0.113.9"


def test_lifespan_state_is_copied_into_the_scope(serve_app: Start) -> None:
    seen = Recorder()
    echo = echo_app(seen)

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await receive()
            scope["state"]["pool"] = "ready"
            await send({"type": "lifespan.startup.complete"})
            await receive()
            await send({"type": "lifespan.shutdown.complete"})
            return
        scope["state"]["mutated"] = True  # a copy: the next connection must not see this
        await echo(scope, receive, send)

    live = serve_app(app, lifespan="on")

    async def twice() -> None:
        for _ in range(2):
            async with ws_connect(live) as ws:
                await ws.send("x")
                await ws.recv()

    run(twice())
    assert wait_until(lambda: len(seen.scopes) == 2)
    assert seen.scopes[1]["state"] == {"pool": "ready", "mutated": True}
    assert seen.scopes[0]["state"] is not seen.scopes[1]["state"]


def test_subprotocol_and_accept_headers(running_server: Start) -> None:
    seen = Recorder()
    live = running_server(echo_app(seen, subprotocol="v2", headers=[(b"x-room", b"lobby")]))

    async def talk() -> tuple[Any, Any]:
        async with ws_connect(live, subprotocols=["v1", "v2"]) as ws:
            return ws.subprotocol, ws.response.headers.get("x-room")

    assert run(talk()) == ("v2", "lobby")
    assert seen.scopes[0]["subprotocols"] == ["v1", "v2"]


def test_app_closes_with_its_code_and_reason(running_server: Start) -> None:
    seen = Recorder()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "websocket":
            return
        await receive()
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.close", "code": 4001, "reason": "bye"})
        seen.messages.append(await receive())
        seen.done.set()

    live = running_server(app)

    async def talk() -> tuple[Any, Any]:
        async with ws_connect(live) as ws:
            with pytest.raises(ConnectionClosed):
                await ws.recv()
            assert ws.close_code is not None
            return ws.close_code, ws.close_reason

    assert run(talk()) == (4001, "bye")
    assert seen.done.wait(WAIT)
    assert seen.messages[0]["type"] == "websocket.disconnect"
    assert seen.messages[0]["code"] == 4001  # the client echoed our close


def test_client_close_code_and_reason_reach_the_app(running_server: Start) -> None:
    seen = Recorder()
    live = running_server(echo_app(seen))

    async def talk() -> None:
        async with ws_connect(live) as ws:
            await ws.close(4002, "later")

    run(talk())
    assert seen.done.wait(WAIT)
    assert seen.disconnect() == {"type": "websocket.disconnect", "code": 4002, "reason": "later"}


def test_app_returning_after_accept_closes_with_1000(running_server: Start) -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "websocket":
            await receive()
            await send({"type": "websocket.accept"})
            await send({"type": "websocket.send", "text": "last"})

    live = running_server(app)

    async def talk() -> tuple[Any, Any]:
        async with ws_connect(live) as ws:
            last = await ws.recv()
            with pytest.raises(ConnectionClosed):
                await ws.recv()
            return last, ws.close_code

    assert run(talk()) == ("last", 1000)


# -- refusing the handshake -------------------------------------------------------------------------


def test_close_before_accept_is_403(running_server: Start, raw_client: Start) -> None:
    seen = Recorder()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "websocket":
            await receive()
            await send({"type": "websocket.close"})
            seen.messages.append(await receive())
            seen.done.set()

    live = running_server(app)
    client = raw_client(live.port)
    client.send(handshake_bytes())
    response = client.read_response()
    assert response.status == 403
    assert response.header("connection") == "close"
    assert client.wait_closed()
    assert seen.done.wait(WAIT)
    assert seen.messages[0]["type"] == "websocket.disconnect"


def test_denial_response_extension(running_server: Start, raw_client: Start) -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "websocket":
            assert "websocket.http.response" in scope["extensions"]
            await receive()
            await send(
                {
                    "type": "websocket.http.response.start",
                    "status": 401,
                    "headers": [(b"www-authenticate", b"Bearer"), (b"content-type", b"text/plain")],
                }
            )
            await send({"type": "websocket.http.response.body", "body": b"log ", "more_body": True})
            await send({"type": "websocket.http.response.body", "body": b"in first"})

    live = running_server(app)
    client = raw_client(live.port)
    client.send(handshake_bytes())
    response = client.read_response()
    assert response.status == 401
    assert response.header("www-authenticate") == "Bearer"
    assert response.body == b"log in first"
    assert response.header("content-length") == "12"
    assert response.header("connection") == "close"
    assert client.wait_closed()


def test_denial_response_seen_by_the_websockets_client(running_server: Start) -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "websocket":
            await receive()
            await send({"type": "websocket.http.response.start", "status": 404, "headers": []})
            await send({"type": "websocket.http.response.body", "body": b"no such room"})

    live = running_server(app)

    async def talk() -> InvalidStatus:
        with pytest.raises(InvalidStatus) as caught:
            async with ws_connect(live):
                pass
        return caught.value

    refused = run(talk())
    assert refused.response.status_code == 404
    assert refused.response.body == b"no such room"


def test_app_error_before_accept_is_500(running_server: Start, raw_client: Start) -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "websocket":
            await receive()
            raise RuntimeError("boom")

    live = running_server(app)
    client = raw_client(live.port)
    client.send(handshake_bytes())
    response = client.read_response()
    assert response.status == 500
    assert response.header("connection") == "close"
    assert client.wait_closed()


def test_app_returning_without_an_answer_is_500(running_server: Start, raw_client: Start) -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "websocket":
            await receive()

    live = running_server(app)
    client = raw_client(live.port)
    client.send(handshake_bytes())
    assert client.read_response().status == 500
    assert client.wait_closed()


def test_app_error_after_accept_closes_with_1011(running_server: Start) -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "websocket":
            await receive()
            await send({"type": "websocket.accept"})
            await receive()
            raise RuntimeError("boom")

    live = running_server(app)

    async def talk() -> Any:
        async with ws_connect(live) as ws:
            await ws.send("trigger")
            with pytest.raises(ConnectionClosed):
                await ws.recv()
            return ws.close_code

    assert run(talk()) == 1011


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ("Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n", 400),
        ("Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: a2V5\r\nSec-WebSocket-Version: 13\r\n", 400),
        (
            f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {KEY}\r\n"
            f"Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n",
            400,
        ),
        (f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 8\r\n", 426),
        (f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {KEY}\r\n", 426),
    ],
    ids=["no-key", "short-key", "two-keys", "version-8", "no-version"],
)
def test_bad_handshake_is_refused_and_closed(
    running_server: Start, raw_client: Start, headers: str, status: int
) -> None:
    seen = Recorder()
    live = running_server(echo_app(seen))
    client = raw_client(live.port)
    client.send(f"GET / HTTP/1.1\r\nHost: test\r\n{headers}\r\n".encode())
    response = client.read_response()
    assert response.status == status
    assert response.header("connection") == "close"
    if status == 426:
        # RFC 6455 section 4.4: name the version this server speaks.
        assert response.header("sec-websocket-version") == "13"
        assert response.header("upgrade") == "websocket"
    assert client.wait_closed()
    assert seen.scopes == []  # the app never saw it


def test_other_upgrades_and_methods_stay_plain_http(running_server: Start, raw_client: Start) -> None:
    kinds: list[str] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            return
        kinds.append(scope["type"])
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
            await send({"type": "http.response.body", "body": b"ok"})

    live = running_server(app)
    client = raw_client(live.port)
    assert client.request(headers="Upgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\n").status == 200
    upgrade = f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n"
    assert client.request("POST", headers=upgrade).status == 200
    no_connection_token = f"Upgrade: websocket\r\nSec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n"
    assert client.request(headers=no_connection_token).status == 200
    assert client.request().status == 200  # and the connection still serves HTTP
    http10 = handshake_bytes().replace(b"HTTP/1.1", b"HTTP/1.0")
    client.send(http10)
    assert client.read_response().status == 200
    assert kinds == ["http"] * 5


# -- limits ------------------------------------------------------------------------------------------


def test_message_over_max_size_closes_with_1009(running_server: Start) -> None:
    seen = Recorder()
    live = running_server(echo_app(seen), ws_max_size=1000)

    async def talk() -> Any:
        async with ws_connect(live) as ws:
            await ws.send(b"x" * 1000)
            assert await ws.recv() == b"x" * 1000  # at the limit: served
            await ws.send(b"x" * 1001)
            with pytest.raises(ConnectionClosed):
                await ws.recv()
            return ws.close_code

    assert run(talk()) == 1009
    assert seen.done.wait(WAIT)
    assert seen.disconnect() is not None and seen.disconnect()["code"] == 1009  # type: ignore[index]


def test_invalid_utf8_text_closes_with_1007(running_server: Start, raw_client: Start) -> None:
    seen = Recorder()
    live = running_server(echo_app(seen))
    client = raw_open(raw_client, live)
    client.send(frame(TEXT, b"\xff\xfe"))
    opcode, payload = read_frame(client)
    assert (opcode, close_code(payload)) == (CLOSE, 1007)
    assert client.wait_closed()
    assert seen.done.wait(WAIT)
    assert seen.disconnect() is not None and seen.disconnect()["code"] == 1007  # type: ignore[index]


def test_upgraded_connections_limit(running_server: Start, raw_client: Start) -> None:
    seen = Recorder()
    live = running_server(echo_app(seen), limits=Limits(max_upgraded_connections=2))
    first, second = raw_open(raw_client, live), raw_open(raw_client, live)
    third = raw_client(live.port)
    third.send(handshake_bytes())
    response = third.read_response()
    assert response.status == 503
    assert response.header("connection") == "close"
    assert third.wait_closed()
    assert len(seen.scopes) == 2
    # Plain HTTP is not limited by it ...
    plain = raw_client(live.port)
    assert plain.request().status == 200
    # ... and a closed WebSocket frees its place.
    first.send(frame(CLOSE, struct.pack("!H", 1000)))
    assert first.wait_closed()
    assert wait_until(lambda: live.call(lambda: live.server._state.upgraded) == 1)
    fourth = raw_open(raw_client, live)
    fourth.send(frame(TEXT, b"still here"))
    assert read_frame(fourth) == (TEXT, b"still here")
    second.close()


def test_upgraded_connections_leave_the_concurrency_count(running_server: Start, raw_client: Start) -> None:
    seen = Recorder()
    live = running_server(echo_app(seen), limits=Limits(max_concurrent_connections=1))
    ws = raw_open(raw_client, live)
    plain = raw_client(live.port)
    # As in Kestrel, an upgraded connection counts towards --limit-upgraded-connections only.
    assert plain.request().status == 200  # not 503
    ws.send(frame(TEXT, b"alive"))
    assert read_frame(ws) == (TEXT, b"alive")


# -- keep-alive pings, flow control, the client going away, shutdown ------------------------------------


def test_pings_keep_a_live_peer_and_close_a_silent_one(
    serve_app: Start, raw_client: Start, parser: str, manual_clock: ManualClock
) -> None:
    seen = Recorder()
    live = serve_app(echo_app(seen), http=parser, ws_ping_interval=1.0, ws_ping_timeout=1.0)
    client = raw_open(raw_client, live)
    manual_clock.beat()  # an interval since the handshake
    opcode, payload = read_frame(client)
    assert opcode == PING
    client.send(frame(PONG, payload))  # answered: the connection stays open
    client.send(frame(TEXT, b"after the pong"))
    assert read_frame(client) == (TEXT, b"after the pong")  # so the pong has been read too
    manual_clock.beat()
    opcode, payload = read_frame(client)
    assert opcode == PING  # the next interval's ping; this one goes unanswered
    manual_clock.beat()
    opcode, payload = read_frame(client)
    assert (opcode, close_code(payload)) == (CLOSE, 1011)
    assert client.wait_closed()
    assert seen.done.wait(WAIT)
    assert seen.disconnect() is not None and seen.disconnect()["code"] == 1011  # type: ignore[index]


def test_websockets_client_answers_pings_and_stays_open(serve_app: Start, manual_clock: ManualClock) -> None:
    seen = Recorder()
    live = serve_app(echo_app(seen), ws_ping_interval=1.0, ws_ping_timeout=1.0)

    async def talk() -> Any:
        async with ws_connect(live, ping_interval=None) as ws:
            for beat in range(4):  # several ping intervals and timeouts
                await asyncio.to_thread(manual_clock.beat)  # the server pings
                # The first echo comes after the ping, which the client has answered by then; the second
                # comes after the server has read that pong.
                for sync in ("read the ping", "sent the pong"):
                    await ws.send(f"{sync} {beat}")
                    assert await ws.recv() == f"{sync} {beat}"
            await ws.send("still open")
            return await ws.recv()

    assert run(talk()) == "still open"
    assert [m["text"] for m in seen.messages if m["type"] == "websocket.receive"][-1] == "still open"


def test_a_lagging_app_does_not_time_out_a_live_peer(serve_app: Start, manual_clock: ManualClock) -> None:
    gate = Gate()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "websocket":
            return
        await receive()
        await send({"type": "websocket.accept"})
        await gate.wait()  # behind for several ping timeouts: reading pauses, the pongs wait unread
        count = 0
        while count < 100:
            message = await receive()
            count += message["type"] == "websocket.receive"
        await send({"type": "websocket.send", "text": "caught up"})

    live = serve_app(app, ws_ping_interval=1.0, ws_ping_timeout=1.0)

    def read_paused() -> bool:
        return any(getattr(c, "flow", None) and c.flow.read_paused for c in live.connections())

    async def talk() -> Any:
        async with ws_connect(live, ping_interval=None, compression=None) as ws:

            async def flood() -> None:
                for i in range(100):
                    await ws.send("x" * 100_000 + str(i))

            sending = asyncio.ensure_future(flood())
            assert await asyncio.to_thread(wait_until, read_paused)
            for _ in range(4):
                await asyncio.to_thread(manual_clock.beat)  # a ping, then three of its timeouts
            gate.open()
            await sending
            return await ws.recv()

    assert run(talk()) == "caught up"


def test_slow_app_pauses_reading(running_server: Start, raw_client: Start) -> None:
    release = threading.Event()
    received: list[str] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "websocket":
            return
        await receive()
        await send({"type": "websocket.accept"})
        while not release.is_set():
            await asyncio.sleep(0.01)
        while len(received) < 100:
            message = await receive()
            received.append(message["text"])
        await send({"type": "websocket.send", "text": "got all"})

    live = running_server(app)
    client = raw_open(raw_client, live)
    client.send(b"".join(frame(TEXT, b"%d" % i) for i in range(100)))

    def read_paused() -> bool:
        return any(getattr(c, "flow", None) and c.flow.read_paused for c in live.connections())

    assert wait_until(read_paused)  # the app is behind: the server stopped reading
    release.set()
    assert read_frame(client) == (TEXT, b"got all")
    assert received == [str(i) for i in range(100)]


def test_send_waits_while_the_client_does_not_read(running_server: Start, raw_client: Start) -> None:
    sent: list[int] = []
    chunk = b"x" * 256 * 1024

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "websocket":
            return
        await receive()
        await send({"type": "websocket.accept"})
        for i in range(64):  # 16 MiB in all
            await send({"type": "websocket.send", "bytes": chunk})
            sent.append(i)

    live = running_server(app)
    client = raw_open(raw_client, live, rcvbuf=64 * 1024)
    time.sleep(1.0)  # let the app run as far as it can
    assert len(sent) < 64
    state = live.server._state
    buffered = live.call(lambda: [c.transport.get_write_buffer_size() for c in state.connections])
    assert max(buffered) < 2 * 1024 * 1024
    total = 0
    while total < 64:
        opcode, payload = read_frame(client)
        assert (opcode, len(payload)) == (BINARY, len(chunk))
        total += 1
    assert wait_until(lambda: len(sent) == 64)


def test_vanishing_client_is_a_disconnect_and_leaves_nothing_behind(running_server: Start, raw_client: Start) -> None:
    seen = Recorder()
    live = running_server(echo_app(seen))
    client = raw_open(raw_client, live)
    client.send(frame(TEXT, b"hi"))
    assert read_frame(client) == (TEXT, b"hi")
    client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.close()  # a reset, no close frame
    assert seen.done.wait(WAIT)
    assert seen.disconnect() is not None and seen.disconnect()["code"] == 1006  # type: ignore[index]

    def leftovers() -> tuple[int, int, list[str]]:
        state = live.server._state
        tasks = [repr(t.get_coro()) for t in asyncio.all_tasks() if "WebSocket" in repr(t.get_coro())]
        return len(state.connections), state.upgraded, tasks

    assert wait_until(lambda: live.call(leftovers) == (0, 0, []))


def test_graceful_shutdown_closes_with_1012_and_lets_the_app_finish(serve_app: Start, parser: str) -> None:
    finished = threading.Event()
    codes: list[int] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "websocket":
            return
        await receive()
        await send({"type": "websocket.accept"})
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                codes.append(message["code"])
                break
        await asyncio.sleep(0.3)  # cleanup after the disconnect: the server waits for it
        finished.set()

    live = serve_app(app, http=parser)

    async def talk() -> Any:
        async with ws_connect(live) as ws:
            live.request_shutdown()
            with pytest.raises(ConnectionClosed):
                await ws.recv()
            return ws.close_code

    assert run(talk()) == 1012
    assert live.join(WAIT)
    assert finished.is_set()
    assert codes == [1012]


# -- switched off, or without the library ------------------------------------------------------------------


class ListHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def http_or_websocket_app(kinds: list[str]) -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            return
        kinds.append(scope["type"])
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"5")]})
            await send({"type": "http.response.body", "body": b"plain"})

    return app


def test_without_the_library_upgrades_are_plain_http_with_one_warning(
    serve_app: Start, raw_client: Start, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "websockets", None)  # as if the extra were not installed
    handler = ListHandler()
    logging.getLogger("kestrelpy.error").addHandler(handler)
    try:
        kinds: list[str] = []
        live = serve_app(http_or_websocket_app(kinds))
        for _ in range(2):
            client = raw_client(live.port)
            client.send(handshake_bytes())
            response = client.read_response()
            assert (response.status, response.body) == (200, b"plain")
    finally:
        logging.getLogger("kestrelpy.error").removeHandler(handler)
    assert kinds == ["http", "http"]
    warnings = [r.getMessage() for r in handler.records if "websockets library is not installed" in r.getMessage()]
    assert len(warnings) == 1


def test_ws_websockets_without_the_library_refuses_to_start(serve_app: Start, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "websockets", None)
    with pytest.raises(ConfigError, match="websockets is not installed"):
        serve_app(http_or_websocket_app([]), ws="websockets")


def test_ws_none_serves_upgrades_as_plain_http(serve_app: Start, raw_client: Start) -> None:
    kinds: list[str] = []
    live = serve_app(http_or_websocket_app(kinds), ws="none")
    client = raw_client(live.port)
    client.send(handshake_bytes())
    assert client.read_response().status == 200
    assert kinds == ["http"]


# -- a framework end to end ----------------------------------------------------------------------------


def test_starlette_websocket_endpoint(running_server: Start) -> None:
    from starlette.applications import Starlette
    from starlette.endpoints import WebSocketEndpoint
    from starlette.routing import WebSocketRoute
    from starlette.websockets import WebSocket

    closed: list[int] = []

    class Room(WebSocketEndpoint):
        encoding = "json"

        async def on_connect(self, websocket: WebSocket) -> None:
            await websocket.accept(subprotocol="json.v1")

        async def on_receive(self, websocket: WebSocket, data: Any) -> None:
            room = websocket.path_params["room"]
            await websocket.send_json({"room": room, "echo": data, "q": websocket.query_params.get("who")})

        async def on_disconnect(self, websocket: WebSocket, close_code: int) -> None:
            closed.append(close_code)

    live = running_server(Starlette(routes=[WebSocketRoute("/rooms/{room}", Room)]))

    async def talk() -> tuple[Any, Any]:
        ws: ClientConnection
        async with ws_connect(live, "/rooms/blue?who=ann", subprotocols=["json.v1"]) as ws:
            await ws.send('{"n": 1}')
            reply = await ws.recv()
            return ws.subprotocol, reply

    subprotocol, reply = run(talk())
    assert subprotocol == "json.v1"
    assert reply == '{"room":"blue","echo":{"n":1},"q":"ann"}'
    assert wait_until(lambda: closed == [1000])
