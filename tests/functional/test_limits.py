"""Limits over real sockets, on both parsers and both loops: each one answered with its status, the
connection closed, and a request sent after the refused one never reaching the app."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest

from kestrelpy.config import Limits
from tests.support.manual_clock import ManualClock
from tests.support.waiting import wait_until

Start = Callable[..., Any]

DATE_VALUE = re.compile(rb"(?im)^(date: )[^\r\n]*")
CHUNKED_HEAD = b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
AFTER = b"GET /after HTTP/1.1\r\nHost: t\r\n\r\n"  # appended after a refused request: must never run


def recording_app(calls: list[str], bodies: list[dict[str, Any]] | None = None) -> Any:
    """Records each request's path (and, when asked, every receive() message), answers 200 "ok"."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        calls.append(scope["path"])
        if bodies is not None:
            while True:
                message = await receive()
                bodies.append(message)
                if message["type"] == "http.disconnect" or not message.get("more_body"):
                    break
            if bodies[-1]["type"] == "http.disconnect":
                return
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})

    return app


def refused(client: Any, status: int) -> None:
    """The next response is `status` with `connection: close`, and the server then closes."""
    response = client.read_response()
    assert response.status == status, response
    assert response.header("connection") == "close"
    assert response.header("content-length") == str(len(response.body))
    assert client.wait_closed()


def headers_of(count: int, size: int = 10) -> bytes:
    return b"".join(b"X-H%d: %s\r\n" % (i, b"v" * size) for i in range(count))


# -- request head ----------------------------------------------------------------------------------


def test_long_request_line_gets_414(running_server: Start, raw_client: Start) -> None:
    calls: list[str] = []
    live = running_server(recording_app(calls), limits=Limits(max_request_line_size=1024))
    client = raw_client(live.port)
    client.send(b"GET /" + b"a" * 1100 + b" HTTP/1.1\r\nHost: t\r\n\r\n" + AFTER)
    refused(client, 414)
    assert calls == []


def test_request_line_at_the_limit_is_served(running_server: Start, raw_client: Start) -> None:
    calls: list[str] = []
    live = running_server(recording_app(calls), limits=Limits(max_request_line_size=1024))
    client = raw_client(live.port)
    path = b"/" + b"a" * (1024 - len(b"GET  HTTP/1.1") - 1)  # the line is exactly 1024 bytes
    line = b"GET " + path + b" HTTP/1.1"
    assert len(line) == 1024
    # Padding headers make the read large enough that the exact measurement runs.
    client.send(line + b"\r\nHost: t\r\n" + headers_of(20, 100) + b"\r\n")
    assert client.read_response().status == 200
    assert calls == [path.decode()]


def test_endless_request_line_gets_414_before_it_ends(running_server: Start, raw_client: Start) -> None:
    calls: list[str] = []
    live = running_server(recording_app(calls), limits=Limits(max_request_line_size=1024))
    client = raw_client(live.port)
    client.send(b"GET /" + b"a" * 600)
    assert client.nothing_within(0.2)
    client.send(b"a" * 600)  # no line end yet: refused before the line is complete
    refused(client, 414)
    assert calls == []


def test_large_header_section_gets_431(running_server: Start, raw_client: Start) -> None:
    calls: list[str] = []
    live = running_server(recording_app(calls), limits=Limits(max_request_headers_size=4096))
    client = raw_client(live.port)
    client.send(b"GET / HTTP/1.1\r\nHost: t\r\n" + headers_of(10, 500) + b"\r\n" + AFTER)
    refused(client, 431)
    assert calls == []


def test_header_section_at_the_limit_is_served(running_server: Start, raw_client: Start) -> None:
    calls: list[str] = []
    live = running_server(recording_app(calls), limits=Limits(max_request_headers_size=4096))
    client = raw_client(live.port)
    # host: t -> 4 + 1 + 4 = 9 bytes; x-big: value -> 5 + len + 4; together exactly 4096.
    value = b"v" * (4096 - 9 - 9)
    client.send(b"GET / HTTP/1.1\r\nHost: t\r\nX-Big: " + value + b"\r\n\r\n")
    assert client.read_response().status == 200
    client.send(b"GET / HTTP/1.1\r\nHost: t\r\nX-Big: " + value + b"v\r\n\r\n")
    refused(client, 431)
    assert calls == ["/"]


def test_endless_header_section_gets_431_before_it_ends(running_server: Start, raw_client: Start) -> None:
    calls: list[str] = []
    limits = Limits(max_request_line_size=1024, max_request_headers_size=4096)
    live = running_server(recording_app(calls), limits=limits)
    client = raw_client(live.port)
    client.send(b"GET / HTTP/1.1\r\nHost: t\r\n")
    for _ in range(20):  # 20 x 500 bytes of header lines, never the blank line that ends the head
        client.send(headers_of(1, 490))
        if client.eof or not client.nothing_within(0.02):
            break
    refused(client, 431)
    assert calls == []


def test_too_many_headers_gets_431(running_server: Start, raw_client: Start) -> None:
    calls: list[str] = []
    live = running_server(recording_app(calls), limits=Limits(max_request_header_count=10))
    client = raw_client(live.port)
    client.send(b"GET /ten HTTP/1.1\r\nHost: t\r\n" + headers_of(9) + b"\r\n")  # 10 fields: allowed
    assert client.read_response().status == 200
    client.send(b"GET / HTTP/1.1\r\nHost: t\r\n" + headers_of(10) + b"\r\n" + AFTER)  # 11 fields
    refused(client, 431)
    assert calls == ["/ten"]


def test_default_limits_refuse_a_huge_head(running_server: Start, raw_client: Start) -> None:
    """With the defaults (8 KiB line, 32 KiB of fields), a 100 KiB head is refused while still arriving."""
    calls: list[str] = []
    live = running_server(recording_app(calls))
    client = raw_client(live.port)
    client.send(b"GET / HTTP/1.1\r\nHost: t\r\n")
    try:
        for _ in range(100):
            client.send(headers_of(1, 1000))
    except (BrokenPipeError, ConnectionResetError):
        pass  # refused and closed while we were still sending
    response = client.read_response()
    assert response.status == 431
    assert client.wait_closed()
    assert calls == []


def test_request_headers_timeout_gets_408(running_server: Start, raw_client: Start, manual_clock: ManualClock) -> None:
    calls: list[str] = []
    # The keep-alive timeout is longer, so it is the head's own timeout that answers.
    limits = Limits(request_headers_timeout=1.5, keep_alive_timeout=30)
    live = running_server(recording_app(calls), limits=limits)
    client = raw_client(live.port)
    assert client.request().status == 200
    manual_clock.beat()
    manual_clock.beat()  # idle for longer than the head's timeout: it counts from the head's first byte
    client.send(b"GET /slow HTTP/1.1\r\nHost: t\r\n")
    assert wait_until(live.has_read_everything)
    manual_clock.beat()  # the first beat to see the head starts its clock
    manual_clock.beat()
    assert client.nothing_within(0.1)  # 1 s: within the 1.5 s
    manual_clock.beat()  # 2 s: over
    refused(client, 408)
    assert calls == ["/"]


def test_head_arriving_within_the_timeout_is_served(
    running_server: Start, raw_client: Start, manual_clock: ManualClock
) -> None:
    calls: list[str] = []
    live = running_server(recording_app(calls), limits=Limits(request_headers_timeout=3, keep_alive_timeout=30))
    client = raw_client(live.port)
    client.send(b"GET / HTTP/1.1\r\n")
    assert wait_until(live.has_read_everything)
    for _ in range(3):  # seen by the first beat, 2 s old at the third: within the 3 s
        manual_clock.beat()
    client.send(b"Host: t\r\n\r\n")
    assert client.read_response().status == 200
    assert calls == ["/"]


# -- request body ----------------------------------------------------------------------------------


def test_declared_body_over_the_limit_gets_413_before_it_is_read(running_server: Start, raw_client: Start) -> None:
    calls: list[str] = []
    live = running_server(recording_app(calls), limits=Limits(max_request_body_size=1000))
    client = raw_client(live.port)
    client.send(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 1001\r\n\r\n")
    refused(client, 413)  # answered without waiting for the body
    assert calls == []


def test_refused_uploader_still_sending_reads_its_answer_and_a_clean_close(
    running_server: Start, raw_client: Start
) -> None:
    """After a refusal the server shuts its write side and keeps reading (and dropping) what the client
    still sends for a moment: a close with unread input would reset the connection, and a reset can
    destroy the answer before the client reads it. Here the client sends 4 MiB of the body it declared
    after the 413 was sent, far more than the socket buffers hold, without being reset."""
    calls: list[str] = []
    live = running_server(recording_app(calls), limits=Limits(max_request_body_size=1000))
    client = raw_client(live.port)
    client.send(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 10000000\r\n\r\n")
    assert client.read_response().status == 413
    client.send(b"x" * (4 * 1024 * 1024))  # raises ConnectionResetError or BrokenPipeError on a reset
    assert client.wait_closed()
    assert calls == []


def test_declared_body_at_the_limit_is_served(running_server: Start, raw_client: Start) -> None:
    calls: list[str] = []
    bodies: list[dict[str, Any]] = []
    live = running_server(recording_app(calls, bodies), limits=Limits(max_request_body_size=1000))
    client = raw_client(live.port)
    assert client.request("POST", body=b"x" * 1000).status == 200
    assert b"".join(m.get("body", b"") for m in bodies) == b"x" * 1000


def test_chunked_body_over_the_limit_gets_413_mid_stream(running_server: Start, raw_client: Start) -> None:
    calls: list[str] = []
    bodies: list[dict[str, Any]] = []
    live = running_server(recording_app(calls, bodies), limits=Limits(max_request_body_size=1000))
    client = raw_client(live.port)
    client.send(CHUNKED_HEAD.replace(b"/ ", b"/up ") + b"258\r\n" + b"x" * 600 + b"\r\n")
    client.send(b"258\r\n" + b"y" * 600 + b"\r\n0\r\n\r\n" + AFTER)
    refused(client, 413)
    assert calls == ["/up"]
    assert bodies[-1] == {"type": "http.disconnect"}
    assert len(b"".join(m.get("body", b"") for m in bodies)) <= 1000


def test_chunked_body_at_the_limit_is_served(running_server: Start, raw_client: Start) -> None:
    calls: list[str] = []
    bodies: list[dict[str, Any]] = []
    live = running_server(recording_app(calls, bodies), limits=Limits(max_request_body_size=1000))
    client = raw_client(live.port)
    client.send(CHUNKED_HEAD + b"3e8\r\n" + b"x" * 1000 + b"\r\n0\r\n\r\n")
    assert client.read_response().status == 200
    assert b"".join(m.get("body", b"") for m in bodies) == b"x" * 1000


def test_body_limit_zero_means_unlimited(running_server: Start, raw_client: Start) -> None:
    calls: list[str] = []
    bodies: list[dict[str, Any]] = []
    live = running_server(recording_app(calls, bodies), limits=Limits(max_request_body_size=0))
    client = raw_client(live.port)
    assert client.request("POST", body=b"x" * 40_000_000).status == 200  # above the 30 MB default
    assert sum(len(m.get("body", b"")) for m in bodies) == 40_000_000


# -- trailers --------------------------------------------------------------------------------------


def chunked_with_trailers(trailers: bytes, path: bytes = b"/") -> bytes:
    """A chunked POST (2 header fields) with one chunk and the given trailer section."""
    return CHUNKED_HEAD.replace(b"/ ", path + b" ") + b"5\r\nhello\r\n0\r\n" + trailers + b"\r\n"


def test_trailers_count_with_the_head_against_the_field_count(running_server: Start, raw_client: Start) -> None:
    calls: list[str] = []
    bodies: list[dict[str, Any]] = []
    live = running_server(recording_app(calls, bodies), limits=Limits(max_request_header_count=10))
    client = raw_client(live.port)
    client.send(chunked_with_trailers(headers_of(8), b"/ten"))  # 2 header fields + 8 trailer fields
    assert client.read_response().status == 200
    assert bodies[-1] == {"type": "http.request", "body": b"hello", "more_body": False}
    client.send(chunked_with_trailers(headers_of(9), b"/eleven") + AFTER)
    refused(client, 431)
    assert calls == ["/ten", "/eleven"]  # the body's app saw http.disconnect, and /after never ran
    assert bodies[-1] == {"type": "http.disconnect"}


def test_trailers_count_with_the_head_against_the_header_bytes(running_server: Start, raw_client: Start) -> None:
    calls: list[str] = []
    live = running_server(recording_app(calls, []), limits=Limits(max_request_headers_size=4096))
    client = raw_client(live.port)
    # host: t (9) + transfer-encoding: chunked (28) + x-big: value (9 + len): exactly 4096 in all.
    value = b"v" * (4096 - 9 - 28 - 9)
    client.send(chunked_with_trailers(b"X-Big: " + value + b"\r\n", b"/fits"))
    assert client.read_response().status == 200
    client.send(chunked_with_trailers(b"X-Big: " + value + b"v\r\n", b"/over") + AFTER)
    refused(client, 431)
    assert calls == ["/fits", "/over"]


def test_reads_after_a_chunked_body_count_as_its_trailers_only_while_it_is_read(
    running_server: Start, raw_client: Start
) -> None:
    """The reads that follow a chunked body's last chunk count towards its trailer section only until its
    message is complete: a long request line after it, and a request after that, are served."""
    calls: list[str] = []
    bodies: list[dict[str, Any]] = []
    limits = Limits(max_request_line_size=300_000, max_request_headers_size=1024)
    live = running_server(recording_app(calls, bodies), limits=limits)
    client = raw_client(live.port)
    client.send(CHUNKED_HEAD.replace(b"/ ", b"/chunked ") + b"5\r\nhello\r\n0\r\n")  # up to the last chunk
    wait_until(lambda: calls == ["/chunked"])
    long_path = b"/" + b"p" * 200_000  # more than a trailer section may hold (1024 + 64 KiB)
    client.send(b"\r\n" + b"GET " + long_path + b" HTTP/1.1\r\nHost: t\r\n\r\n")
    assert client.read_response().status == 200
    assert client.read_response().status == 200
    client.send(AFTER)
    assert client.read_response().status == 200
    assert calls == ["/chunked", long_path.decode(), "/after"]


# -- connections -----------------------------------------------------------------------------------


def test_last_request_of_a_connection_says_close(running_server: Start, raw_client: Start) -> None:
    calls: list[str] = []
    live = running_server(recording_app(calls), limits=Limits(max_requests_per_connection=2))
    client = raw_client(live.port)
    client.send(client.request_bytes("GET", "/one") + client.request_bytes("GET", "/two") + AFTER)
    first, second = client.read_response(), client.read_response()
    assert first.status == second.status == 200
    assert first.header("connection") is None
    assert second.header("connection") == "close"
    assert client.wait_closed()
    assert calls == ["/one", "/two"]


def test_request_pipelined_behind_connection_close_never_reaches_the_app(
    running_server: Start, raw_client: Start
) -> None:
    calls: list[str] = []
    live = running_server(recording_app(calls))
    client = raw_client(live.port)
    client.send(client.request_bytes("GET", "/last", "Connection: close\r\n") + AFTER)
    response = client.read_response()
    assert response.status == 200 and response.header("connection") == "close"
    assert client.wait_closed()
    assert calls == ["/last"]


def test_connection_over_the_limit_gets_503(
    running_server: Start, raw_client: Start, manual_clock: ManualClock
) -> None:
    calls: list[str] = []
    live = running_server(recording_app(calls), limits=Limits(max_concurrent_connections=2))
    first, second = raw_client(live.port), raw_client(live.port)
    assert first.request("GET", "/first").status == 200
    assert second.request("GET", "/second").status == 200
    third = raw_client(live.port)
    third.send(third.request_bytes("GET", "/third") + AFTER)
    refused(third, 503)
    assert calls == ["/first", "/second"]
    assert first.request("GET", "/again").status == 200  # the open ones are unaffected
    first.close()
    manual_clock.beat()
    manual_clock.beat()  # the refused connection lingers no more than a second (it never closes its end)
    assert wait_until(lambda: len(live.connections()) == 1)
    fourth = raw_client(live.port)
    assert fourth.request("GET", "/fourth").status == 200  # a slot is free again
    assert calls == ["/first", "/second", "/again", "/fourth"]


# -- both parsers answer alike ---------------------------------------------------------------------

LIMITED = Limits(
    max_request_line_size=1024,
    max_request_headers_size=4096,
    max_request_header_count=10,
    max_request_body_size=1000,
)

OVER_LIMITS = {
    "line": b"GET /" + b"a" * 1100 + b" HTTP/1.1\r\nHost: t\r\n\r\n",
    "header-bytes": b"GET / HTTP/1.1\r\nHost: t\r\n" + headers_of(8, 600) + b"\r\n",
    "header-count": b"GET / HTTP/1.1\r\nHost: t\r\n" + headers_of(10) + b"\r\n",
    "declared-body": b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 5000\r\n\r\n" + b"x" * 5000,
    "chunked-body": b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n7d0\r\n" + b"x" * 2000 + b"\r\n",
    "trailer-count": chunked_with_trailers(headers_of(9)),
    "trailer-bytes": chunked_with_trailers(headers_of(8, 600)),
}
# Heads that never end: nothing can be appended to them.
ENDLESS = {
    "endless-line": b"GET /" + b"a" * 5000,
    "endless-head": b"GET / HTTP/1.1\r\nHost: t\r\n" + headers_of(50, 200),
}


@pytest.mark.parametrize(
    "wire", [*(w + AFTER for w in OVER_LIMITS.values()), *ENDLESS.values()], ids=[*OVER_LIMITS, *ENDLESS]
)
def test_limits_are_answered_identically_by_both_parsers(
    serve_app: Start, raw_client: Start, loop_kind: str, wire: bytes
) -> None:
    calls: list[str] = []
    out = {}
    for http in ("httptools", "h11"):
        live = serve_app(recording_app(calls, []), loop_kind=loop_kind, http=http, limits=LIMITED)
        client = raw_client(live.port)
        client.send(wire)
        out[http] = DATE_VALUE.sub(rb"\1<date>", client.read_until_close())
    assert out["httptools"] == out["h11"]
    assert re.match(rb"HTTP/1\.1 4(13|14|31) ", out["h11"]), out["h11"][:100]
    assert b"\r\nconnection: close\r\n" in out["h11"]
    assert "/after" not in calls


def test_overlong_trailer_line_is_answered_identically_by_both_parsers(
    serve_app: Start, raw_client: Start, loop_kind: str
) -> None:
    """A trailer line past the chunk-line bound is malformed on both paths, before any limit is counted."""
    calls: list[str] = []
    out = {}
    for http in ("httptools", "h11"):
        live = serve_app(recording_app(calls, []), loop_kind=loop_kind, http=http)
        client = raw_client(live.port)
        client.send(chunked_with_trailers(b"X-Big: " + b"v" * 70_000 + b"\r\n") + AFTER)
        out[http] = DATE_VALUE.sub(rb"\1<date>", client.read_until_close())
    assert out["httptools"] == out["h11"]
    assert out["h11"].startswith(b"HTTP/1.1 400 ")
    assert "/after" not in calls


def test_endless_trailer_line_is_refused_before_it_ends(running_server: Start, raw_client: Start) -> None:
    """A trailer field that never ends is refused while still arriving (as malformed: past the chunk-line
    bound), not buffered without end; the app reading the body sees http.disconnect."""
    calls: list[str] = []
    bodies: list[dict[str, Any]] = []
    live = running_server(recording_app(calls, bodies))
    client = raw_client(live.port)
    client.send(CHUNKED_HEAD + b"5\r\nhello\r\n0\r\nX-Endless: ")
    sent = 0
    try:
        for _ in range(200):  # up to 3.2 MB, never the end of the line
            client.send(b"v" * 16384)
            sent += 16384
            if client.eof or not client.nothing_within(0.01):
                break
    except (BrokenPipeError, ConnectionResetError):
        pass  # refused and closed while we were still sending
    refused(client, 400)
    assert sent < 1024 * 1024, f"{sent} bytes of one trailer line were read before it was refused"
    assert bodies[-1] == {"type": "http.disconnect"}
