"""--metrics-bind in a single server: real requests on loopback, then a scrape of the metrics listener read
with prometheus_client's parser. (Several workers: tests/supervisor/test_metrics_workers.py.)"""

from __future__ import annotations

import dataclasses
import gc
import socket
import ssl
import threading
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import trustme

from kestrelpy.config import Limits, TlsOptions
from kestrelpy.platform import listen_queue_length
from tests.functional.test_data_rates import RESPONSE_RATE, held_back, streamer
from tests.support.live_server import LiveServer
from tests.support.manual_clock import ManualClock
from tests.support.raw_client import RawClient
from tests.support.scrape import check_histograms, request, scrape, scrape_until
from tests.support.waiting import WAIT, wait_until

REQUESTS = "http_server_request_duration_seconds_count"
CONNECTIONS = "kestrel_connection_duration_seconds_count"


async def app(scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
    """Reads the whole body, then answers `app`: 404 on /missing, an exception on /fail."""
    if scope["type"] != "http":
        return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    if scope["path"] == "/fail":
        raise RuntimeError("the app failed on purpose")
    status = 404 if scope["path"] == "/missing" else 200
    await send({"type": "http.response.start", "status": status, "headers": [(b"content-length", b"3")]})
    await send({"type": "http.response.body", "body": b"app"})


def metrics_port(live: LiveServer) -> int:
    assert live.server is not None and live.server.metrics_address is not None
    return live.server.metrics_address[1]


def get(port: int, path: str = "/", version: str = "1.1", method: str = "GET") -> None:
    client = RawClient(port)
    try:
        client.send(f"{method} {path} HTTP/{version}\r\nHost: t\r\nConnection: close\r\n\r\n".encode())
        assert client.read_response(head_request=method == "HEAD").status in (200, 404, 500)
        assert client.wait_closed()
    finally:
        client.close()


def test_a_scrape_counts_every_request_by_method_status_and_version(running_server: Callable[..., LiveServer]) -> None:
    live = running_server(app, metrics_bind="127.0.0.1:0")
    keep_alive = RawClient(live.port)
    for _ in range(3):
        keep_alive.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        assert keep_alive.read_response().status == 200
    keep_alive.close()
    for _ in range(2):
        client = RawClient(live.port)
        client.send(b"POST /up HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello")
        assert client.read_response().status == 200
        client.close()
    get(live.port, "/missing", method="HEAD")
    get(live.port, "/", version="1.0")

    port = metrics_port(live)
    result = scrape_until(port, CONNECTIONS, 5)  # one keep-alive connection, four others
    assert result.status == 200
    assert "content-type: text/plain; version=0.0.4; charset=utf-8" in result.headers
    labels = {"url_scheme": "http", "network_protocol_version": "1.1", "http_response_status_code": "200"}
    assert result.value(REQUESTS, http_request_method="GET", **labels) == 3
    assert result.value(REQUESTS, http_request_method="POST", **labels) == 2
    assert (
        result.value(
            REQUESTS,
            http_request_method="HEAD",
            url_scheme="http",
            network_protocol_version="1.1",
            http_response_status_code="404",
        )
        == 1
    )
    assert result.value(REQUESTS, **{**labels, "http_request_method": "GET", "network_protocol_version": "1.0"}) == 1
    assert result.total(REQUESTS) == 7
    assert result.total("http_server_request_duration_seconds_sum") > 0
    assert check_histograms(result) == 5  # four request series, one connection series
    assert result.total("http_server_active_requests") == 0
    assert result.value("kestrel_active_connections") == 0
    assert result.value("kestrel_rejected_connections_total") == 0


def test_each_request_is_counted_by_its_own_version_and_forwarded_scheme(
    running_server: Callable[..., LiveServer],
) -> None:
    # One keep-alive connection from a trusted peer (loopback) whose requests take turns: HTTP/1.1, HTTP/1.0,
    # HTTP/1.1 with X-Forwarded-Proto, and with X-Forwarded-For alone. A connection looks its scheme's and
    # version's series up once; the others must still land under their own (each twice, so the second
    # finds its series made).
    live = running_server(app, metrics_bind="127.0.0.1:0")
    client = RawClient(live.port)
    heads = (
        b"GET / HTTP/1.1\r\nHost: t\r\n\r\n",
        b"GET / HTTP/1.0\r\nHost: t\r\nConnection: keep-alive\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: t\r\nX-Forwarded-Proto: https\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: t\r\nX-Forwarded-For: 203.0.113.9\r\n\r\n",  # forwarded, scheme kept
    )
    for _ in range(2):
        for head in heads:
            client.send(head)
            assert client.read_response().status == 200
    client.close()
    result = scrape_until(metrics_port(live), CONNECTIONS, 1)
    labels = {"http_request_method": "GET", "http_response_status_code": "200"}
    assert result.value(REQUESTS, url_scheme="http", network_protocol_version="1.1", **labels) == 4
    assert result.value(REQUESTS, url_scheme="http", network_protocol_version="1.0", **labels) == 2
    assert result.value(REQUESTS, url_scheme="https", network_protocol_version="1.1", **labels) == 2
    assert result.total(REQUESTS) == 8


def test_active_gauges_count_a_request_in_progress_and_return_to_zero(serve_app: Callable[..., LiveServer]) -> None:
    live = serve_app(app, metrics_bind="127.0.0.1:0")
    port = metrics_port(live)
    client = RawClient(live.port)
    client.send(b"PUT /slow HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\n\r\n")  # the app waits for the body
    during = scrape_until(port, "http_server_active_requests", 1, http_request_method="PUT")
    assert during.value("kestrel_active_connections") == 1
    assert during.total(REQUESTS) == 0
    client.send(b"body")
    assert client.read_response().status == 200
    client.close()
    after = scrape_until(port, "kestrel_active_connections", 0)
    assert after.value("http_server_active_requests", http_request_method="PUT", url_scheme="http") == 0
    assert after.total(REQUESTS, http_request_method="PUT") == 1


def test_a_connection_over_the_limit_is_counted_as_rejected_with_its_error_type(
    serve_app: Callable[..., LiveServer],
) -> None:
    live = serve_app(app, metrics_bind="127.0.0.1:0", limits=Limits(max_concurrent_connections=1))
    port = metrics_port(live)
    holder = RawClient(live.port)
    holder.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
    assert holder.read_response().status == 200
    refused = RawClient(live.port)
    refused.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
    assert refused.read_response().status == 503
    refused.close()
    result = scrape_until(port, CONNECTIONS, 1, error_type="max_concurrent_connections_exceeded")
    assert result.value("kestrel_rejected_connections_total") == 1
    assert result.value("kestrel_active_connections") == 1  # the one holding the only place
    assert result.total(REQUESTS) == 1  # the refused request never reached the app
    holder.close()
    assert scrape_until(port, "kestrel_active_connections", 0).value(CONNECTIONS) == 1  # no error.type


def test_errors_carry_an_error_type_on_requests_and_connections(serve_app: Callable[..., LiveServer]) -> None:
    live = serve_app(app, metrics_bind="127.0.0.1:0")
    port = metrics_port(live)
    get(live.port, "/fail")  # answered 500 by the server
    garbage = RawClient(live.port)
    garbage.send(b"NOT HTTP AT ALL\r\n\r\n")
    assert garbage.read_response().status == 400
    garbage.close()
    result = scrape_until(port, CONNECTIONS, 1, error_type="malformed_request")
    assert result.total(REQUESTS, http_response_status_code="500", error_type="500") == 1
    assert result.total(REQUESTS) == 1


def test_the_metrics_listener_answers_only_get_metrics_and_the_app_port_never_shows_them(
    serve_app: Callable[..., LiveServer],
) -> None:
    live = serve_app(app, metrics_bind="127.0.0.1:0")
    port = metrics_port(live)
    assert port != live.port
    assert scrape(port, "/").status == 404
    assert scrape(port, "/metrics/x").status == 404
    assert scrape(port, "/metrics?name[]=x").status == 200
    status, head, _ = request(port, b"POST /metrics HTTP/1.1\r\nHost: m\r\nContent-Length: 0\r\n\r\n")
    assert status == 405 and "allow: GET, HEAD" in head
    status, head, body = request(port, b"HEAD /metrics HTTP/1.1\r\nHost: m\r\n\r\n")
    assert status == 200 and body == "" and "content-length: 0" not in head
    response = httpx.get(f"{live.url}/metrics", timeout=WAIT)
    assert response.text == "app"  # the app's port is the app's


def test_metrics_are_off_unless_asked_for(serve_app: Callable[..., LiveServer]) -> None:
    live = serve_app(app)
    assert live.server is not None and live.server.metrics_address is None
    assert live.call(lambda: live.server._state.metrics if live.server and live.server._state else None) is None


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[TlsOptions, ssl.SSLContext]:
    where = tmp_path_factory.mktemp("metrics-certs")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert.cert_chain_pems[0].write_to_path(str(where / "cert.pem"))
    cert.private_key_pem.write_to_path(str(where / "key.pem"))
    client = ssl.create_default_context()
    ca.configure_trust(client)
    return TlsOptions(ssl_certfile=str(where / "cert.pem"), ssl_keyfile=str(where / "key.pem")), client


@pytest.mark.parametrize("loop_kind", ["asyncio", "uvloop"])
def test_tls_handshakes_are_timed_and_a_failed_one_is_counted(
    serve_app: Callable[..., LiveServer], tls_files: tuple[TlsOptions, ssl.SSLContext], loop_kind: str
) -> None:
    options, client = tls_files
    # A failed handshake is counted as the loop lets go of it, or once older than the handshake timeout.
    options = dataclasses.replace(options, tls_handshake_timeout=1.0)
    live = serve_app(app, loop_kind=loop_kind, tls=options, metrics_bind="127.0.0.1:0")
    port = metrics_port(live)
    with httpx.Client(verify=client, timeout=WAIT) as http:
        assert http.get(f"https://127.0.0.1:{live.port}/").text == "app"
    with socket.create_connection(("127.0.0.1", live.port), timeout=WAIT) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")  # plain HTTP where a ClientHello belongs
        sock.recv(1024)
    handshakes = "kestrel_tls_handshake_duration_seconds_count"
    result = scrape_until(port, handshakes, 1, error_type="tls_handshake_failed")
    assert result.value(handshakes, tls_protocol_version="1.3") == 1
    assert result.value("kestrel_active_tls_handshakes") == 0
    assert result.total(REQUESTS, url_scheme="https") == 1


def test_an_idle_tls_connection_is_an_active_handshake(
    serve_app: Callable[..., LiveServer], tls_files: tuple[TlsOptions, ssl.SSLContext], loop_kind: str
) -> None:
    options, _ = tls_files
    live = serve_app(app, tls=options, metrics_bind="127.0.0.1:0", loop_kind=loop_kind)
    port = metrics_port(live)
    with socket.create_connection(("127.0.0.1", live.port), timeout=WAIT):  # says nothing
        scrape_until(port, "kestrel_active_tls_handshakes", 1)
    if loop_kind == "asyncio":
        # asyncio keeps a failed handshake's protocol in a reference cycle (the accept coroutine's frame,
        # through the exception stored in its waiter): counted once the collector has run after the failure.
        assert wait_until(lambda: gc.collect() >= 0 and scrape(port).total("kestrel_active_tls_handshakes") == 0)
    scrape_until(port, "kestrel_active_tls_handshakes", 0)


def test_the_listen_queue_length_is_what_waits_to_be_accepted() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        clients = [socket.create_connection(listener.getsockname(), timeout=WAIT) for _ in range(3)]
        try:
            assert wait_until(lambda: listen_queue_length(listener) == 3)
            conn, _ = listener.accept()
            conn.close()
            assert listen_queue_length(listener) == 2
        finally:
            for client in clients:
                client.close()


def test_a_websocket_is_an_upgraded_connection_while_it_is_open(serve_app: Callable[..., LiveServer]) -> None:
    from websockets.sync.client import connect

    async def ws_app(scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        if scope["type"] == "websocket":
            await receive()
            await send({"type": "websocket.accept"})
            while (await receive())["type"] != "websocket.disconnect":
                pass

    live = serve_app(ws_app, metrics_bind="127.0.0.1:0")
    port = metrics_port(live)
    with connect(f"ws://127.0.0.1:{live.port}/", open_timeout=WAIT):
        during = scrape_until(port, "kestrel_upgraded_connections", 1)
        assert during.value("kestrel_active_connections") == 1
    after = scrape_until(port, "kestrel_upgraded_connections", 0)
    assert after.value("kestrel_active_connections") == 0
    assert after.value(CONNECTIONS) == 1  # one connection, counted once across the hand-off


def test_http2_streams_are_requests_of_version_2_on_one_connection(serve_app: Callable[..., LiveServer]) -> None:
    live = serve_app(app, metrics_bind="127.0.0.1:0")
    port = metrics_port(live)
    with httpx.Client(http1=False, http2=True, timeout=WAIT) as client:  # prior knowledge (h2c)
        for path in ("/", "/", "/missing"):
            response = client.get(f"http://127.0.0.1:{live.port}{path}")
            assert response.http_version == "HTTP/2"
        during = scrape(port)
        assert during.value("kestrel_active_connections") == 1
    result = scrape_until(port, CONNECTIONS, 1)
    labels = {"http_request_method": "GET", "url_scheme": "http", "network_protocol_version": "2"}
    assert result.value(REQUESTS, http_response_status_code="200", **labels) == 2
    assert result.value(REQUESTS, http_response_status_code="404", **labels) == 1
    assert result.value("kestrel_active_connections") == 0
    assert result.total("http_server_active_requests") == 0


def test_a_tls_connection_is_timed_from_its_accept_with_its_handshake(
    serve_app: Callable[..., LiveServer], tls_files: tuple[TlsOptions, ssl.SSLContext], manual_clock: ManualClock
) -> None:
    options, client = tls_files
    live = serve_app(app, tls=options, metrics_bind="127.0.0.1:0")
    port = metrics_port(live)
    with socket.create_connection(("127.0.0.1", live.port), timeout=WAIT) as raw:
        scrape_until(port, "kestrel_active_tls_handshakes", 1)  # accepted: its time has begun
        manual_clock.beat(3.0)  # before the client says hello
        with client.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            tls.sendall(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            while tls.recv(1024):
                pass
    result = scrape_until(port, CONNECTIONS, 1)
    assert result.value("kestrel_connection_duration_seconds_sum") == 3.0  # the handshake included


def test_a_keep_alive_timeout_is_the_connections_error_type(
    running_server: Callable[..., LiveServer], manual_clock: ManualClock
) -> None:
    live = running_server(app, metrics_bind="127.0.0.1:0", keep_alive_timeout=5)
    client = RawClient(live.port)
    client.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
    assert client.read_response().status == 200
    manual_clock.beat(6.0)
    assert client.wait_closed()
    client.close()
    result = scrape_until(metrics_port(live), CONNECTIONS, 1, error_type="keep_alive_timeout")
    assert result.total(CONNECTIONS) == 1


def test_an_http2_connections_keep_alive_timeout_is_its_error_type(
    running_server: Callable[..., LiveServer], manual_clock: ManualClock
) -> None:
    from tests.functional.test_http2 import H2Client

    live = running_server(app, metrics_bind="127.0.0.1:0", keep_alive_timeout=5)
    client = H2Client(live.port)  # cleartext, by prior knowledge
    try:
        assert client.response(client.request("/"))[0] == 200
        manual_clock.beat(6.0)
        goaway = client.goaway()
        assert goaway is not None and goaway.additional_data == b"idle"
    finally:
        client.close()
    result = scrape_until(metrics_port(live), CONNECTIONS, 1, error_type="keep_alive_timeout")
    assert result.total(CONNECTIONS) == 1


def test_a_client_reading_too_slowly_is_the_connections_error_type(
    running_server: Callable[..., LiveServer], raw_client: Callable[..., RawClient], manual_clock: ManualClock
) -> None:
    progress: dict[str, Any] = {"sent": 0, "error": None, "done": threading.Event()}
    live = running_server(streamer(progress, 1024), metrics_bind="127.0.0.1:0", limits=RESPONSE_RATE)
    client = raw_client(live.port, rcvbuf=64 * 1024)
    client.send(client.request_bytes())
    assert wait_until(lambda: held_back(live)), "the unread socket never held the app's sends back"
    while not progress["done"].is_set() and manual_clock.beats < 6:
        manual_clock.beat()
    assert progress["done"].wait(WAIT) and isinstance(progress["error"], OSError)  # cut off
    result = scrape_until(metrics_port(live), CONNECTIONS, 1, error_type="min_response_data_rate")
    assert result.total(CONNECTIONS) == 1
