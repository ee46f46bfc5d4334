"""The ASGI lifespan protocol around a real serving run."""

from __future__ import annotations

import asyncio
import socket
import sys
import threading
from collections.abc import Callable
from typing import Any

import pytest

from kestrelpy.errors import KestrelpyError, LifespanStartupError
from tests.support.waiting import WAIT

Start = Callable[..., Any]

# Lifespan does not depend on the HTTP parser: run it on one parser and both loops.
pytestmark = pytest.mark.parametrize("parser", ["httptools"])


class LifespanApp:
    """Records what it sees; `startup` may be "complete", "failed", or "raise"."""

    def __init__(self, startup: str = "complete") -> None:
        self.startup = startup
        self.events: list[str] = []
        self.request_states: list[dict[str, Any]] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            assert scope["asgi"]["version"] == "3.0"
            message = await receive()
            assert message["type"] == "lifespan.startup"
            self.events.append("startup")
            if self.startup == "raise":
                raise RuntimeError("database unreachable")
            if self.startup == "failed":
                await send({"type": "lifespan.startup.failed", "message": "database unreachable"})
                return
            scope["state"]["pool"] = "pool-1"
            scope["state"]["counter"] = 0
            await send({"type": "lifespan.startup.complete"})
            message = await receive()
            assert message["type"] == "lifespan.shutdown"
            self.events.append("shutdown")
            await send({"type": "lifespan.shutdown.complete"})
            return
        self.events.append("request")
        state = scope["state"]
        self.request_states.append(dict(state))
        state["counter"] = state.get("counter", 0) + 1  # must not leak into the next request
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})


def test_startup_runs_before_requests_and_shutdown_after(running_server: Start, raw_client: Start) -> None:
    app = LifespanApp()
    live = running_server(app, lifespan="on")
    assert app.events == ["startup"]
    client = raw_client(live.port)
    assert client.request().status == 200
    assert client.request().status == 200
    assert app.events == ["startup", "request", "request"]
    live.stop()
    assert app.events == ["startup", "request", "request", "shutdown"]


def test_lifespan_state_is_copied_into_every_request(running_server: Start, raw_client: Start) -> None:
    app = LifespanApp()
    live = running_server(app)
    client = raw_client(live.port)
    for _ in range(3):
        assert client.request().status == 200
    assert app.request_states == [{"pool": "pool-1", "counter": 0}] * 3


def test_shutdown_waits_for_in_flight_requests(running_server: Start, raw_client: Start) -> None:
    app = LifespanApp()
    gate, called = threading.Event(), threading.Event()

    async def slow(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            called.set()
            await asyncio.to_thread(gate.wait, WAIT)
            app.events.append("request done")
        await app(scope, receive, send)

    live = running_server(slow)
    client = raw_client(live.port)
    client.send(client.request_bytes())
    assert called.wait(WAIT)
    live.request_shutdown()
    assert client.nothing_within(0.1)
    assert "shutdown" not in app.events
    gate.set()
    assert client.read_response().status == 200
    assert live.join(WAIT)
    assert app.events == ["startup", "request done", "request", "shutdown"]


@pytest.mark.parametrize("startup", ["failed", "raise"])
def test_startup_failure_raises_from_serve_and_serves_nothing(running_server: Start, startup: str) -> None:
    app = LifespanApp(startup=startup)
    with pytest.raises(LifespanStartupError, match="database unreachable"):
        running_server(app, lifespan="on")
    assert app.events == ["startup"]  # no request ever reached the app


def test_startup_failure_message_in_auto_mode(running_server: Start) -> None:
    app = LifespanApp(startup="failed")
    with pytest.raises(LifespanStartupError, match="database unreachable") as info:
        running_server(app)
    assert info.value.exit_code == 3


def test_missing_parser_is_refused_before_lifespan_startup(
    running_server: Start, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "kestrelpy.protocols.http11_httptools", None)  # as if httptools were absent
    app = LifespanApp()
    with pytest.raises(KestrelpyError, match="httptools is not installed"):
        running_server(app, http="httptools", lifespan="on")
    assert app.events == []  # the app was never started


async def no_lifespan_raises(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        raise ValueError(f"unsupported scope type {scope['type']}")
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


async def no_lifespan_returns(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "http":
        await no_lifespan_raises(scope, receive, send)


@pytest.mark.parametrize("app", [no_lifespan_raises, no_lifespan_returns], ids=["raises", "returns"])
def test_auto_tolerates_apps_without_lifespan(running_server: Start, raw_client: Start, app: Any) -> None:
    live = running_server(app, lifespan="auto")
    assert raw_client(live.port).request().body == b"ok"
    live.stop()  # shutdown must not wait on a lifespan that never ran


def test_on_refuses_an_app_without_lifespan(running_server: Start) -> None:
    with pytest.raises(LifespanStartupError, match="unsupported scope type"):
        running_server(no_lifespan_raises, lifespan="on")


def test_off_never_sends_a_lifespan_scope(running_server: Start, raw_client: Start) -> None:
    app = LifespanApp()
    live = running_server(app, lifespan="off")
    assert raw_client(live.port).request().status == 200
    live.stop()
    assert app.events == ["request"]
    assert app.request_states == [{}]


def test_connections_wait_in_the_backlog_until_startup_completes(
    serve_app: Start, raw_client: Start, loop_kind: str, parser: str
) -> None:
    events: list[str] = []
    gate, in_startup = threading.Event(), threading.Event()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await receive()
            in_startup.set()
            await asyncio.to_thread(gate.wait, WAIT)
            events.append("startup")
            await send({"type": "lifespan.startup.complete"})
            await receive()
            await send({"type": "lifespan.shutdown.complete"})
            return
        events.append("request")
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})

    listener = socket.create_server(("127.0.0.1", 0))
    try:
        live = serve_app(app, loop_kind=loop_kind, http=parser, sockets=[listener], wait=False)
        assert in_startup.wait(WAIT)
        # The socket listens already: the connection is queued by the kernel, but nobody answers yet.
        client = raw_client(listener.getsockname()[1])
        client.send(client.request_bytes())
        assert client.nothing_within(0.3)
        assert events == []
        gate.set()
        assert live.wait_started()
        assert client.read_response().body == b"ok"
        assert events == ["startup", "request"]
        live.stop()
    finally:
        listener.close()
