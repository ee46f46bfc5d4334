"""HTTP/1.1 message semantics on real loopback sockets, for every parser x loop.

Keep-alive, pipelining, chunked request bodies, Expect: 100-continue, HEAD, bodiless statuses, HTTP/1.0
peers, absolute-form targets and the response framing choice.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import httpx

from tests.support.waiting import WAIT

Start = Callable[..., Any]


async def echo_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Answers with the method, path and whole request body; Content-Length known up front."""
    if scope["type"] != "http":
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    payload = f"{scope['method']} {scope['path']} ".encode() + body
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(payload)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": payload})


async def stream_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Streams three parts without a Content-Length."""
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    for part in (b"one,", b"two,"):
        await send({"type": "http.response.body", "body": part, "more_body": True})
    await send({"type": "http.response.body", "body": b"three"})


# -- keep-alive and pipelining -------------------------------------------------------------------------


def test_keep_alive_serves_several_requests_on_one_connection(running_server: Start, raw_client: Start) -> None:
    live = running_server(echo_app)
    client = raw_client(live.port)
    ports = set()
    for i in range(3):
        response = client.request("GET", f"/n{i}")
        assert response.status == 200
        assert response.body == f"GET /n{i} ".encode()
        assert response.header("connection") is None  # persistent by default on 1.1
        ports.add(client.local_port)
    assert len(live.connections()) == 1
    assert not client.eof


def test_connection_close_from_client_closes_after_the_response(running_server: Start, raw_client: Start) -> None:
    live = running_server(echo_app)
    client = raw_client(live.port)
    response = client.request("GET", "/bye", headers="Connection: close\r\n")
    assert response.body == b"GET /bye "
    assert response.header("connection") == "close"
    assert client.wait_closed()


def test_ten_pipelined_requests_in_one_write(running_server: Start, raw_client: Start) -> None:
    events: list[tuple[str, int]] = []
    in_app = 0
    overlap: list[int] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        nonlocal in_app
        if scope["type"] != "http":
            return
        n = int(scope["path"].strip("/"))
        in_app += 1
        if in_app > 1:
            overlap.append(n)
        events.append(("start", n))
        await receive()
        # Earlier requests take longer: a server running them concurrently would answer out of order.
        for _ in range(10 - n):
            await asyncio.sleep(0.001)
        body = f"response {n}".encode()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"x-n", str(n).encode())]})
        await send({"type": "http.response.body", "body": body})
        events.append(("end", n))
        in_app -= 1

    live = running_server(app)
    client = raw_client(live.port)
    client.send(b"".join(client.request_bytes("GET", f"/{n}") for n in range(10)))
    responses = [client.read_response() for _ in range(10)]
    assert [r.body for r in responses] == [f"response {n}".encode() for n in range(10)]
    assert [r.header("x-n") for r in responses] == [str(n) for n in range(10)]
    # The connection is still usable afterwards; once its answer is in, request 9's app has returned too.
    assert client.request("GET", "/10").body == b"response 10"
    assert overlap == []
    assert events[:21] == [(kind, n) for n in range(10) for kind in ("start", "end")] + [("start", 10)]


def test_pipelined_requests_with_bodies_keep_their_bodies_apart(running_server: Start, raw_client: Start) -> None:
    live = running_server(echo_app)
    client = raw_client(live.port)
    wire = b"".join(client.request_bytes("POST", f"/{n}", body=b"x" * n + b"!") for n in range(5))
    wire += b"POST /c HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    client.send(wire)
    bodies = [client.read_response().body for _ in range(6)]
    assert bodies == [f"POST /{n} ".encode() + b"x" * n + b"!" for n in range(5)] + [b"POST /c abc"]


# -- request bodies ------------------------------------------------------------------------------------


def test_chunked_request_body_is_decoded(running_server: Start, raw_client: Start) -> None:
    live = running_server(echo_app)
    client = raw_client(live.port)
    client.send(
        b"POST /up HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n1;ext=1\r\n \r\nA\r\n0123456789\r\n0\r\nX-Trailer: yes\r\n\r\n"
    )
    response = client.read_response()
    assert response.body == b"POST /up hello 0123456789"
    # The connection is in a clean state for the next request.
    assert client.request("GET", "/after").body == b"GET /after "


def test_chunked_request_body_arrives_as_several_messages(running_server: Start, raw_client: Start) -> None:
    messages: list[dict[str, Any]] = []
    first_seen = threading.Event()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        while True:
            message = await receive()
            messages.append(message)
            first_seen.set()
            if not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 204})
        await send({"type": "http.response.body"})

    live = running_server(app)
    client = raw_client(live.port)
    client.send(b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n4\r\npart\r\n")
    assert first_seen.wait(WAIT)
    client.send(b"4\r\nrest\r\n0\r\n\r\n")
    assert client.read_response().status == 204
    assert all(m["type"] == "http.request" for m in messages)
    assert messages[0] == {"type": "http.request", "body": b"part", "more_body": True}
    assert b"".join(m["body"] for m in messages) == b"partrest"
    assert messages[-1]["more_body"] is False


# -- Expect: 100-continue ------------------------------------------------------------------------------


def _gated_reader(gate: threading.Event, called: threading.Event) -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        called.set()
        await asyncio.to_thread(gate.wait, WAIT)
        message = await receive()
        body = message["body"]
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % len(body))]})
        await send({"type": "http.response.body", "body": body})

    return app


def test_100_continue_is_sent_only_when_the_app_asks_for_the_body(running_server: Start, raw_client: Start) -> None:
    gate, called = threading.Event(), threading.Event()
    live = running_server(_gated_reader(gate, called))
    client = raw_client(live.port)
    client.send(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
    assert called.wait(WAIT)
    assert client.nothing_within(0.2), "100 Continue went out before the app awaited the body"
    gate.set()
    interim = client.read_response()
    assert (interim.status, interim.head) == (100, b"HTTP/1.1 100 Continue\r\n\r\n")
    client.send(b"hello")
    final = client.read_response()
    assert (final.status, final.body) == (200, b"hello")


def test_no_100_continue_when_the_app_answers_without_reading(running_server: Start, raw_client: Start) -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 413, "headers": [(b"content-length", b"0")]})
        await send({"type": "http.response.body"})

    live = running_server(app)
    client = raw_client(live.port)
    client.send(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 5000000\r\nExpect: 100-continue\r\n\r\n")
    response = client.read_response()
    assert response.status == 413
    # The unread body would be misread as the next request: the server closes instead.
    assert response.header("connection") == "close"
    assert client.wait_closed()
    assert b"100 Continue" not in client.buffer


def test_no_100_continue_for_http10(running_server: Start, raw_client: Start) -> None:
    called = threading.Event()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        called.set()
        body = (await receive())["body"]  # no await in between: the body cannot have arrived yet
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % len(body))]})
        await send({"type": "http.response.body", "body": body})

    live = running_server(app)
    client = raw_client(live.port)
    client.send(b"POST / HTTP/1.0\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
    # `called` is set in the same step that goes on to await the body, before this body can be read.
    assert called.wait(WAIT)
    client.send(b"hello")
    data = client.read_until_close()
    assert data.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"100 Continue" not in data
    assert data.endswith(b"\r\n\r\nhello")


def test_100_continue_then_keep_alive(running_server: Start, raw_client: Start) -> None:
    gate, called = threading.Event(), threading.Event()
    gate.set()
    live = running_server(_gated_reader(gate, called))
    client = raw_client(live.port)
    client.send(b"PUT / HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nExpect: 100-Continue\r\n\r\n")
    assert client.read_response().status == 100
    client.send(b"abc")
    assert client.read_response().body == b"abc"
    # A request that already sent its body gets no interim response.
    client.send(b"PUT / HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nxyz")
    response = client.read_response()
    assert (response.status, response.body) == (200, b"xyz")


# -- HEAD, bodiless statuses, framing ------------------------------------------------------------------


def _without_date(response: Any) -> list[tuple[str, str]]:
    return [(k, v) for k, v in response.headers if k != "date"]


def test_head_sends_the_get_headers_and_no_body(running_server: Start, raw_client: Start) -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        if scope["path"] == "/stream":
            await send({"type": "http.response.body", "body": b"chunk", "more_body": True})
        await send({"type": "http.response.body", "body": b"whole body"})

    live = running_server(app)
    client = raw_client(live.port)
    for path in ("/fixed", "/stream"):
        get = client.request("GET", path)
        head = client.request("HEAD", path)
        assert head.status == get.status == 200
        assert _without_date(head) == _without_date(get)
        assert head.body == b""
    # Had a HEAD response carried body bytes, this request's response would not parse.
    after = client.request("GET", "/fixed")
    assert after.body == b"whole body"
    assert get.header("transfer-encoding") == "chunked"


def test_head_with_app_content_length(running_server: Start, raw_client: Start) -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"11")]})
        await send({"type": "http.response.body", "body": b"hello world"})

    live = running_server(app)
    client = raw_client(live.port)
    head = client.request("HEAD", "/")
    assert head.header("content-length") == "11"
    assert client.request("GET", "/").body == b"hello world"


def test_204_and_304_have_no_body(running_server: Start, raw_client: Start) -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        status = int(scope["path"].strip("/"))
        await send({"type": "http.response.start", "status": status, "headers": [(b"etag", b'"v1"')]})
        # An app that wrongly supplies content: none of it may reach the wire.
        await send({"type": "http.response.body", "body": b"must not be sent"})

    live = running_server(app)
    client = raw_client(live.port)
    for status in (204, 304, 204):
        response = client.request("GET", f"/{status}")
        assert response.status == status
        assert response.header("content-length") is None
        assert response.header("transfer-encoding") is None
        assert response.header("etag") == '"v1"'
    client.send(client.request_bytes("GET", "/200"))
    data = client.read_response()
    assert data.status == 200  # nothing of the bodies was left in between
    assert data.body == b"must not be sent"


def test_content_length_framing_when_the_app_gives_one(running_server: Start, raw_client: Start) -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-length", b"6"), (b"transfer-encoding", b"chunked")],
            }
        )
        await send({"type": "http.response.body", "body": b"abc", "more_body": True})
        await send({"type": "http.response.body", "body": b"def"})

    live = running_server(app)
    client = raw_client(live.port)
    response = client.request()
    assert response.header("content-length") == "6"
    assert response.header("transfer-encoding") is None  # the app does not choose the framing
    assert response.body == b"abcdef"
    assert not response.chunked


def test_chunked_framing_when_the_length_is_unknown(running_server: Start, raw_client: Start) -> None:
    live = running_server(stream_app)
    client = raw_client(live.port)
    response = client.request()
    assert response.chunked
    assert response.header("content-length") is None
    assert response.chunks == [b"one,", b"two,", b"three"]
    assert client.request().body == b"one,two,three"  # still keep-alive


def test_single_body_message_gets_a_content_length(running_server: Start) -> None:
    live = running_server(echo_app)
    response = httpx.post(live.url + "/x", content=b"data")
    assert response.headers["content-length"] == str(len(b"POST /x data"))
    assert "transfer-encoding" not in response.headers


# -- HTTP/1.0 clients ----------------------------------------------------------------------------------


def test_http10_closes_and_never_uses_chunked(running_server: Start, raw_client: Start) -> None:
    live = running_server(stream_app)
    client = raw_client(live.port)
    client.send(b"GET / HTTP/1.0\r\n\r\n")
    data = client.read_until_close()
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK")
    assert b"transfer-encoding" not in head.lower()
    assert b"content-length" not in head.lower()
    assert b"connection: close" in head.lower()
    assert body == b"one,two,three"  # close-delimited


def test_http10_without_keep_alive_closes_even_with_a_length(running_server: Start, raw_client: Start) -> None:
    live = running_server(echo_app)
    client = raw_client(live.port)
    client.send(b"GET /a HTTP/1.0\r\n\r\n")
    response = client.read_response()
    assert response.body == b"GET /a "
    assert client.wait_closed()


def test_http10_keep_alive_when_asked(running_server: Start, raw_client: Start) -> None:
    live = running_server(echo_app)
    client = raw_client(live.port)
    client.send(b"GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    first = client.read_response()
    assert first.body == b"GET /a "
    assert first.header("connection") == "keep-alive"
    client.send(b"GET /b HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    assert client.read_response().body == b"GET /b "
    assert not client.eof


def test_http10_keep_alive_with_unknown_length_falls_back_to_close(running_server: Start, raw_client: Start) -> None:
    live = running_server(stream_app)
    client = raw_client(live.port)
    client.send(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    data = client.read_until_close()
    assert b"connection: close" in data.lower()
    assert data.endswith(b"\r\n\r\none,two,three")


# -- request targets -----------------------------------------------------------------------------------


def test_absolute_form_target_gives_only_the_path(running_server: Start, raw_client: Start) -> None:
    scopes: list[dict[str, Any]] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        scopes.append(scope)
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"0")]})
        await send({"type": "http.response.body"})

    live = running_server(app)
    client = raw_client(live.port)
    client.send(b"GET http://example.com:8080/p/q%20r?x=1&y=2 HTTP/1.1\r\nHost: example.com:8080\r\n\r\n")
    assert client.read_response().status == 200
    client.send(b"GET http://example.com HTTP/1.1\r\nHost: example.com\r\n\r\n")
    assert client.read_response().status == 200
    assert (scopes[0]["path"], scopes[0]["raw_path"], scopes[0]["query_string"]) == ("/p/q r", b"/p/q%20r", b"x=1&y=2")
    assert (scopes[1]["path"], scopes[1]["raw_path"], scopes[1]["query_string"]) == ("/", b"/", b"")
