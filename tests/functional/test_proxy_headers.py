"""Forwarded headers as the server reads them over real sockets: per request on a keep-alive connection,
over HTTP/2 and WebSocket, ignored from an untrusted peer or with --no-proxy-headers, and in the access
log. (Which hop becomes the client, and the header grammar, are unit-tested in tests/unit/test_proxy.py.)"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.support.live_server import LiveServer
from tests.support.raw_client import RawClient
from tests.support.waiting import WAIT

Start = Callable[..., Any]

FROM_PROXY = "X-Forwarded-For: 203.0.113.7\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: shop.example\r\n"
FROM_PROXY_H2 = {"x-forwarded-for": "203.0.113.7", "x-forwarded-proto": "https", "x-forwarded-host": "shop.example"}
REWRITTEN = {"client": ["203.0.113.7", 0], "scheme": "https", "host": "shop.example"}


async def what_the_app_sees(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    host = next((v.decode("latin-1") for n, v in scope["headers"] if n == b"host"), None)
    body = json.dumps({"client": list(scope["client"]), "scheme": scope["scheme"], "host": host}).encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})


def seen(client: RawClient, headers: str = "") -> dict[str, Any]:
    response = client.request("GET", "/", headers=headers)
    assert response.status == 200
    return dict(json.loads(response.body))


def test_each_request_on_a_keep_alive_connection_is_read_on_its_own(running_server: Start, raw_client: Start) -> None:
    live = running_server(what_the_app_sees)  # loopback peers are trusted by default
    client = raw_client(live.port)
    assert seen(client, FROM_PROXY) == REWRITTEN
    # The next request on the same connection says nothing: it sees the peer, not the last request's values.
    assert seen(client) == {"client": ["127.0.0.1", client.local_port], "scheme": "http", "host": "test"}
    assert seen(client, 'Forwarded: for="[2001:db8::1]:4711";proto=https\r\n') == {
        "client": ["2001:db8::1", 4711],
        "scheme": "https",
        "host": "test",
    }


@pytest.mark.parametrize(
    "config",
    [{"forwarded_allow_ips": "10.0.0.0/8,unix"}, {"proxy_headers": False}],
    ids=["untrusted-peer", "no-proxy-headers"],
)
def test_forwarded_headers_change_nothing_unless_believed(
    running_server: Start, raw_client: Start, config: dict[str, Any]
) -> None:
    live = running_server(what_the_app_sees, **config)
    client = raw_client(live.port)
    assert seen(client, FROM_PROXY) == {"client": ["127.0.0.1", client.local_port], "scheme": "http", "host": "test"}
    with httpx.Client(http1=False, http2=True, timeout=WAIT) as h2c:
        response = h2c.get(live.url + "/", headers=FROM_PROXY_H2)
    assert response.http_version == "HTTP/2"
    assert response.json()["client"][0] == "127.0.0.1" and response.json()["scheme"] == "http"


def test_http2_streams_are_rewritten_each_on_its_own(running_server: Start) -> None:
    live: LiveServer = running_server(what_the_app_sees)
    with httpx.Client(http1=False, http2=True, timeout=WAIT) as h2c:  # prior knowledge (h2c), one connection
        first = h2c.get(live.url + "/", headers=FROM_PROXY_H2)
        second = h2c.get(live.url + "/")
    assert first.http_version == "HTTP/2"
    assert first.json() == REWRITTEN
    assert second.json()["client"][0] == "127.0.0.1" and second.json()["scheme"] == "http"
    assert second.json()["host"] == f"127.0.0.1:{live.port}"


def test_the_access_log_names_the_forwarded_client(
    running_server: Start, raw_client: Start, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="kestrelpy.access")
    live = running_server(what_the_app_sees, access_log=True, access_log_format="json")
    assert seen(raw_client(live.port), FROM_PROXY) == REWRITTEN
    (line,) = [r.getMessage() for r in caplog.records if r.name == "kestrelpy.access"]
    assert json.loads(line)["client"] == "203.0.113.7"


@pytest.mark.parametrize(
    ("config", "scheme", "client"),
    [({}, "wss", "203.0.113.9"), ({"forwarded_allow_ips": "10.0.0.0/8"}, "ws", "127.0.0.1")],
    ids=["trusted-peer", "untrusted-peer"],
)
def test_a_websocket_scope_from_behind_a_proxy(
    running_server: Start, config: dict[str, Any], scheme: str, client: str
) -> None:
    pytest.importorskip("websockets")
    from tests.functional.test_websocket import Recorder, echo_app, run, ws_connect

    recorder = Recorder()
    live = running_server(echo_app(recorder), **config)

    async def talk() -> None:
        async with ws_connect(live, additional_headers={"Forwarded": "for=203.0.113.9;proto=https"}) as ws:
            await ws.send("x")
            await ws.recv()

    run(talk())
    assert recorder.scopes[0]["scheme"] == scheme
    assert recorder.scopes[0]["client"][0] == client
