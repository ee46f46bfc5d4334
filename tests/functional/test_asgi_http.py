"""The ASGI HTTP interface as an app sees it: the scope, receive, send, disconnects, streaming, trailers."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import pytest

from tests.support.waiting import WAIT

Start = Callable[..., Any]


def recording_app(scopes: list[dict[str, Any]]) -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        scopes.append(scope)
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})

    return app


# -- the scope -----------------------------------------------------------------------------------------


def test_http_scope_has_every_key_with_the_right_types(running_server: Start, raw_client: Start) -> None:
    scopes: list[dict[str, Any]] = []
    live = running_server(recording_app(scopes))
    client = raw_client(live.port)
    client.send(
        b"GET /caf%C3%A9/a%20b/%2Fx?q=%20caf%C3%A9&b=2 HTTP/1.1\r\n"
        b"Host: example.test\r\nX-Custom: First\r\nAccept: */*\r\nx-custom: Second\r\n\r\n"
    )
    assert client.read_response().status == 200
    scope = scopes[0]
    assert scope["type"] == "http"
    assert scope["asgi"] == {"version": "3.0", "spec_version": "2.4"}
    assert scope["http_version"] == "1.1"
    assert scope["method"] == "GET"
    assert scope["scheme"] == "http"
    assert scope["path"] == "/café/a b//x"
    assert scope["raw_path"] == b"/caf%C3%A9/a%20b/%2Fx"
    assert scope["query_string"] == b"q=%20caf%C3%A9&b=2"
    assert scope["root_path"] == ""
    headers = [(bytes(name), bytes(value)) for name, value in scope["headers"]]
    assert headers == [
        (b"host", b"example.test"),
        (b"x-custom", b"First"),
        (b"accept", b"*/*"),
        (b"x-custom", b"Second"),
    ]
    assert all(type(name) is bytes and type(value) is bytes for name, value in scope["headers"])
    assert scope["client"] == ("127.0.0.1", client.local_port)
    assert type(scope["client"][1]) is int
    assert scope["server"] == ("127.0.0.1", live.port)
    assert isinstance(scope["state"], dict)
    assert "extensions" not in scope or "http.response.trailers" not in scope["extensions"]


def test_connections_to_one_address_share_the_server_tuple(running_server: Start, raw_client: Start) -> None:
    """One `server` object for every connection of a listener: a tuple per connection would be one more
    cache line touched per request, out of the caches once there are many busy connections."""
    scopes: list[dict[str, Any]] = []
    live = running_server(recording_app(scopes))
    for _ in range(2):
        client = raw_client(live.port)
        client.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        assert client.read_response().status == 200
    assert scopes[0]["client"] != scopes[1]["client"]
    assert scopes[0]["server"] == ("127.0.0.1", live.port)
    assert scopes[0]["server"] is scopes[1]["server"]


def test_http10_scope_and_methods(running_server: Start, raw_client: Start) -> None:
    scopes: list[dict[str, Any]] = []
    live = running_server(recording_app(scopes))
    client = raw_client(live.port)
    client.send(b"DELETE /x HTTP/1.0\r\n\r\n")
    assert client.read_response().status == 200
    client = raw_client(live.port)
    client.send(b"OPTIONS * HTTP/1.1\r\nHost: t\r\n\r\n")
    assert client.read_response().status == 200
    assert (scopes[0]["http_version"], scopes[0]["method"], scopes[0]["path"]) == ("1.0", "DELETE", "/x")
    assert (scopes[1]["method"], scopes[1]["path"]) == ("OPTIONS", "*")


def test_root_path_prefixes_path_and_raw_path(running_server: Start, raw_client: Start) -> None:
    scopes: list[dict[str, Any]] = []
    live = running_server(recording_app(scopes), root_path="/api")
    client = raw_client(live.port)
    assert client.request("GET", "/users/%C3%A9?x=1").status == 200
    scope = scopes[0]
    assert scope["root_path"] == "/api"
    assert scope["path"] == "/api/users/é"
    assert scope["raw_path"] == b"/api/users/%C3%A9"
    assert scope["query_string"] == b"x=1"


# -- receive -------------------------------------------------------------------------------------------


def test_bodyless_request_gives_one_empty_message(running_server: Start, raw_client: Start) -> None:
    messages: dict[str, list[dict[str, Any]]] = {}
    returned = threading.Event()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        seen = messages.setdefault(scope["path"], [])
        seen.append(dict(await receive()))
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"0")]})
        await send({"type": "http.response.body"})
        # After the response, receive answers with a disconnect rather than hanging.
        seen.append(dict(await asyncio.wait_for(receive(), WAIT)))
        returned.set()

    live = running_server(app)
    client = raw_client(live.port)
    assert client.request("GET", "/a").status == 200
    assert returned.wait(WAIT)
    assert messages["/a"] == [{"type": "http.request", "body": b"", "more_body": False}, {"type": "http.disconnect"}]


def test_disconnect_is_delivered_when_the_client_goes_away(running_server: Start, raw_client: Start) -> None:
    received: list[dict[str, Any]] = []
    got_body = threading.Event()
    done = threading.Event()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        received.append(await receive())
        got_body.set()
        received.append(await receive())  # waits until the client leaves
        done.set()

    live = running_server(app)
    client = raw_client(live.port)
    client.send(client.request_bytes("POST", "/", body=b"data"))
    assert got_body.wait(WAIT)
    client.close()
    assert done.wait(WAIT)
    assert received == [
        {"type": "http.request", "body": b"data", "more_body": False},
        {"type": "http.disconnect"},
    ]


def test_disconnect_while_the_app_streams_and_send_raises_oserror(running_server: Start, raw_client: Start) -> None:
    outcome: dict[str, Any] = {}
    done = threading.Event()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await receive()
        disconnect: asyncio.Future[Any] = asyncio.ensure_future(receive())
        await send({"type": "http.response.start", "status": 200})
        sent = 0
        try:
            try:
                while not disconnect.done():
                    await send({"type": "http.response.body", "body": b"x" * 1024, "more_body": True})
                    sent += 1
                    await asyncio.sleep(0.001)
            except OSError:
                pass  # send may notice the client leaving before the pending receive does
            outcome["message"] = await asyncio.wait_for(disconnect, WAIT)
            await send({"type": "http.response.body", "body": b"more", "more_body": True})
        except BaseException as exc:
            outcome["error"] = exc
        finally:
            outcome["sent"] = sent
            done.set()

    live = running_server(app)
    client = raw_client(live.port)
    client.send(client.request_bytes())
    response_head = b""
    while b"\r\n\r\n" not in response_head:
        assert client._fill()
        response_head = bytes(client.buffer)
    assert response_head.startswith(b"HTTP/1.1 200 OK")
    client.close()
    assert done.wait(WAIT)
    assert outcome["message"] == {"type": "http.disconnect"}
    assert isinstance(outcome["error"], OSError)
    assert outcome["sent"] >= 1


def test_send_raises_oserror_after_the_client_left(running_server: Start, raw_client: Start) -> None:
    outcome: list[BaseException | None] = []
    got_request = threading.Event()
    done = threading.Event()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        got_request.set()
        assert (await receive())["type"] == "http.request"
        assert (await receive())["type"] == "http.disconnect"
        try:
            await send({"type": "http.response.start", "status": 200})
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)
        done.set()

    live = running_server(app)
    client = raw_client(live.port)
    client.send(client.request_bytes())
    assert got_request.wait(WAIT)
    client.close()
    assert done.wait(WAIT)
    assert isinstance(outcome[0], OSError)


# -- send: streaming and trailers ----------------------------------------------------------------------


def test_streamed_parts_reach_the_client_before_the_app_finishes(running_server: Start, raw_client: Start) -> None:
    gate = threading.Event()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"first", "more_body": True})
        await asyncio.to_thread(gate.wait, WAIT)
        await send({"type": "http.response.body", "body": b"second", "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    live = running_server(app)
    client = raw_client(live.port)
    client.send(client.request_bytes())
    while b"5\r\nfirst\r\n" not in client.buffer:
        assert client._fill(), "the first part never arrived"
    assert not gate.is_set()
    gate.set()
    response = client.read_response()
    assert response.chunks == [b"first", b"second"]
    assert response.complete


def _trailer_app(seen: list[dict[str, Any]]) -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        seen.append(scope)
        offered = "http.response.trailers" in scope.get("extensions", {})
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"trailer", b"x-checksum")] if offered else [],
                "trailers": offered,
            }
        )
        await send({"type": "http.response.body", "body": b"abc", "more_body": True})
        await send({"type": "http.response.body", "body": b"def"})
        if offered:
            await send(
                {"type": "http.response.trailers", "headers": [(b"X-Checksum", b"abcdef")], "more_trailers": True}
            )
            await send({"type": "http.response.trailers", "headers": [(b"x-other", b"1")]})

    return app


def test_trailers_are_sent_when_the_request_had_te_trailers(running_server: Start, raw_client: Start) -> None:
    seen: list[dict[str, Any]] = []
    live = running_server(_trailer_app(seen))
    client = raw_client(live.port)
    response = client.request("GET", "/", headers="TE: trailers\r\n")
    assert seen[0]["extensions"]["http.response.trailers"] == {}
    assert response.chunked
    assert response.body == b"abcdef"
    assert response.trailers == [("x-checksum", "abcdef"), ("x-other", "1")]
    # Without TE: trailers the extension is not offered and the response ends normally.
    plain = client.request("GET", "/")
    assert "http.response.trailers" not in seen[1].get("extensions", {})
    assert (plain.body, plain.trailers) == (b"abcdef", [])


@pytest.mark.parametrize("te", ["trailers", "gzip, trailers"])
def test_trailers_with_a_single_body_message(running_server: Start, raw_client: Start, te: str) -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "trailers": True})
        await send({"type": "http.response.body", "body": b"whole"})
        await send({"type": "http.response.trailers", "headers": [(b"x-done", b"yes")]})

    live = running_server(app)
    client = raw_client(live.port)
    response = client.request("GET", "/", headers=f"TE: {te}\r\n")
    assert (response.body, response.trailers) == (b"whole", [("x-done", "yes")])
    assert client.request("GET", "/", headers="TE: trailers\r\n").body == b"whole"
