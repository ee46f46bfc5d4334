"""What the server does when the application misbehaves: 500 before the response starts, abort after."""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable
from typing import Any

import pytest

from tests.support.waiting import WAIT

Start = Callable[..., Any]

DATE_VALUE = re.compile(rb"(?im)^(date: )[^\r\n]*")


def without_date_value(head: bytes) -> bytes:
    return DATE_VALUE.sub(rb"\1<date>", head)


async def crash_before_start(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    raise RuntimeError("boom before start")


def assert_is_500(response: Any) -> None:
    assert response.status == 500
    assert response.body == b"Internal Server Error"
    assert response.header("content-length") == str(len(response.body))
    assert response.header("transfer-encoding") is None
    assert response.header("server") == "kestrelpy"
    assert response.header("date")
    assert response.header("connection") == "close"


def test_exception_before_start_gives_a_500_and_logs_the_traceback(
    running_server: Start, raw_client: Start, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="kestrelpy")
    live = running_server(crash_before_start)
    client = raw_client(live.port)
    assert_is_500(client.request())
    assert client.wait_closed()
    errors = [r for r in caplog.records if r.name == "kestrelpy.error" and r.exc_info]
    exc_info = errors[0].exc_info if errors else None
    assert exc_info and "boom before start" in str(exc_info[1])


@pytest.mark.parametrize(
    "app_name", ["crash_before_start", "returns_without_start", "start_then_crash", "start_then_return", "bad_header"]
)
def test_500_is_byte_identical_on_both_parsers(
    serve_app: Start, raw_client: Start, loop_kind: str, app_name: str
) -> None:
    heads = {}
    for http in ("httptools", "h11"):
        live = serve_app(FAILING_APPS[app_name], loop_kind=loop_kind, http=http)
        client = raw_client(live.port)
        response = client.request()
        assert_is_500(response)
        heads[http] = without_date_value(response.head) + response.body
    assert heads["httptools"] == heads["h11"]


async def returns_without_start(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "http":
        await receive()


async def start_then_crash(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"x-app", b"1")]})
    raise RuntimeError("crash after start, before any body")


async def start_then_return(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": 200, "headers": [(b"x-app", b"1")]})


async def bad_header(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": 200, "headers": [(b"x-bad", b"a\r\nx-injected: 1")]})
        await send({"type": "http.response.body", "body": b"never"})


FAILING_APPS = {
    "crash_before_start": crash_before_start,
    "returns_without_start": returns_without_start,
    "start_then_crash": start_then_crash,
    "start_then_return": start_then_return,
    "bad_header": bad_header,
}


def test_app_returning_without_a_response_gets_a_500(
    running_server: Start, raw_client: Start, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="kestrelpy")
    live = running_server(returns_without_start)
    client = raw_client(live.port)
    assert_is_500(client.request())
    assert any("without starting a response" in r.getMessage() for r in caplog.records)


def test_start_without_any_body_is_replaced_by_a_500(running_server: Start, raw_client: Start) -> None:
    # Nothing of the app's response reached the wire yet (the head waits for the first body message),
    # so a clean 500 is still possible and the app's own headers are discarded.
    for app in (start_then_crash, start_then_return):
        live = running_server(app)
        response = raw_client(live.port).request()
        assert_is_500(response)
        assert response.header("x-app") is None


def _streaming_then(failure: str) -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200})
        await send({"type": "http.response.body", "body": b"partial", "more_body": True})
        if failure == "raise":
            raise RuntimeError("crash mid-body")

    return app


@pytest.mark.parametrize("failure", ["raise", "return"])
def test_failure_after_body_bytes_aborts_the_connection(running_server: Start, raw_client: Start, failure: str) -> None:
    live = running_server(_streaming_then(failure))
    client = raw_client(live.port)
    response = client.request()
    assert response.status == 200
    assert response.chunks == [b"partial"]
    # The last chunk never comes: the client can tell the body was cut short.
    assert not response.complete
    assert client.eof


def test_failure_after_body_bytes_with_content_length_is_cut_short(running_server: Start, raw_client: Start) -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"100")]})
        await send({"type": "http.response.body", "body": b"only ten b", "more_body": True})
        raise RuntimeError("crash mid-body")

    live = running_server(app)
    client = raw_client(live.port)
    response = client.request()
    assert (response.status, response.body, response.complete) == (200, b"only ten b", False)


def test_sending_after_completion_raises_in_the_app(running_server: Start, raw_client: Start) -> None:
    errors: list[BaseException] = []
    done = threading.Event()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})
        for message in (
            {"type": "http.response.body", "body": b"again"},
            {"type": "http.response.start", "status": 200},
        ):
            try:
                await send(message)
            except Exception as exc:
                errors.append(exc)
        done.set()

    live = running_server(app)
    client = raw_client(live.port)
    assert client.request().body == b"ok"
    assert done.wait(WAIT)
    assert len(errors) == 2
    assert all(isinstance(e, RuntimeError) and "already complete" in str(e) for e in errors)
    # Nothing extra reached the wire and the connection is still usable.
    done.clear()
    assert client.request().body == b"ok"


def test_body_before_start_raises_in_the_app(running_server: Start, raw_client: Start) -> None:
    errors: list[BaseException] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        try:
            await send({"type": "http.response.body", "body": b"too early"})
        except RuntimeError as exc:
            errors.append(exc)
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})

    live = running_server(app)
    assert raw_client(live.port).request().body == b"ok"
    assert len(errors) == 1 and "http.response.start" in str(errors[0])


@pytest.mark.parametrize(
    "header",
    [
        (b"x-split", b"value\r\nset-cookie: stolen=1"),
        (b"x-split", b"value\nset-cookie: stolen=1"),
        (b"x-split", b"value\rset-cookie: stolen=1"),
        (b"x-nul", b"val\x00ue"),
        (b"x-split\r\nset-cookie", b"stolen=1"),
        (b"bad name", b"v"),
        (b"x-nul\x00", b"v"),
        (b"", b"v"),
    ],
    ids=["crlf-value", "lf-value", "cr-value", "nul-value", "crlf-name", "space-name", "nul-name", "empty-name"],
)
def test_unsafe_app_headers_give_a_500_without_splitting(
    running_server: Start, raw_client: Start, caplog: pytest.LogCaptureFixture, header: tuple[bytes, bytes]
) -> None:
    caplog.set_level(logging.ERROR, logger="kestrelpy")

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": [(b"x-ok", b"1"), header]})
        await send({"type": "http.response.body", "body": b"should not be sent"})

    live = running_server(app)
    client = raw_client(live.port)
    response = client.request()
    assert_is_500(response)
    rest = client.read_until_close()
    assert b"stolen" not in response.head + rest
    assert response.header("x-ok") is None
    assert any(r.name == "kestrelpy.error" for r in caplog.records)


def test_unsafe_trailer_is_refused(running_server: Start, raw_client: Start) -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "trailers": True})
        await send({"type": "http.response.body", "body": b"abc"})
        await send({"type": "http.response.trailers", "headers": [(b"x-t", b"a\r\n\r\nHTTP/1.1 200 OK")]})

    live = running_server(app)
    client = raw_client(live.port)
    response = client.request("GET", "/", headers="TE: trailers\r\n")
    assert response.chunks == [b"abc"]
    assert not response.complete  # aborted: the body had started
    assert response.trailers == []
