"""A forwarded-header rewrite that raises is answered as an app that raises is: a 500 (HTTP/1.1, HTTP/2,
the WebSocket handshake), logged, and the app never sees the request with the proxy's address; other
requests on the same HTTP/2 connection go on. The failure comes from the server's own trust verdicts
(ServerState.forwarded_verdicts), replaced by ones that raise on one hop address."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from kestrelpy.proxy import PeerVerdicts, TrustedPeers, parse_trusted
from tests.functional.test_asgi_http import recording_app
from tests.support.live_server import LiveServer
from tests.support.waiting import WAIT

Start = Callable[..., Any]

FAILING_HOP = "198.51.100.66"
THROUGH_FAILING_HOP = f"203.0.113.7, {FAILING_HOP}"  # read right to left: the failing hop is asked first


@dataclass(frozen=True)
class FailingTrust(TrustedPeers):
    """Trusts what the defaults trust, and raises when asked about FAILING_HOP."""

    def trusts(self, host: str | None) -> bool:
        if host == FAILING_HOP:
            raise RuntimeError("trust check failed")
        return TrustedPeers.trusts(self, host)


def with_failing_trust(live: LiveServer) -> None:
    def install() -> None:
        state = live.server._state if live.server is not None else None
        assert state is not None
        defaults = parse_trusted("127.0.0.0/8,::1,unix")
        state.forwarded_verdicts = PeerVerdicts(FailingTrust(defaults.networks, unix=True))

    live.call(install)


def traceback_logged(caplog: pytest.LogCaptureFixture) -> bool:
    return any(
        r.name == "kestrelpy.error" and r.exc_info and "trust check failed" in str(r.exc_info[1])
        for r in caplog.records
    )


def test_http11_answers_500_and_never_calls_the_app(
    running_server: Start, raw_client: Start, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="kestrelpy")
    seen: list[dict[str, Any]] = []
    live = running_server(recording_app(seen))
    with_failing_trust(live)
    client = raw_client(live.port)
    response = client.request(headers=f"X-Forwarded-For: {THROUGH_FAILING_HOP}\r\n")
    assert (response.status, response.body) == (500, b"Internal Server Error")
    assert response.header("connection") == "close"  # as for an app error before its response
    assert client.wait_closed()
    assert seen == []
    assert traceback_logged(caplog)
    assert raw_client(live.port).request(headers="X-Forwarded-For: 203.0.113.7\r\n").status == 200
    assert seen[0]["client"] == ("203.0.113.7", 0)


def test_http2_answers_500_on_that_stream_and_serves_the_next(
    running_server: Start, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="kestrelpy")
    seen: list[dict[str, Any]] = []
    live = running_server(recording_app(seen))
    with_failing_trust(live)
    with httpx.Client(http1=False, http2=True, timeout=WAIT) as h2c:
        failed = h2c.get(live.url + "/", headers={"x-forwarded-for": THROUGH_FAILING_HOP})
        served = h2c.get(live.url + "/", headers={"x-forwarded-proto": "https"})
    assert failed.http_version == "HTTP/2"
    assert (failed.status_code, failed.content) == (500, b"Internal Server Error")
    assert served.status_code == 200
    assert [scope["scheme"] for scope in seen] == ["https"]
    assert traceback_logged(caplog)


def test_a_websocket_handshake_is_answered_500(
    running_server: Start, raw_client: Start, caplog: pytest.LogCaptureFixture
) -> None:
    pytest.importorskip("websockets")
    from tests.functional.test_websocket import Recorder, echo_app, handshake_bytes

    caplog.set_level(logging.ERROR, logger="kestrelpy")
    recorder = Recorder()
    live = running_server(echo_app(recorder))
    with_failing_trust(live)
    client = raw_client(live.port)
    client.send(handshake_bytes(headers=f"X-Forwarded-For: {THROUGH_FAILING_HOP}\r\n"))
    response = client.read_response()
    assert response.status == 500
    assert response.header("connection") == "close"
    assert client.wait_closed()
    assert recorder.scopes == []
    assert traceback_logged(caplog)
