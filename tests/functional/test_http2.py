"""HTTP/2 over real sockets: prior knowledge in cleartext (h2c) and ALPN on TLS, one ASGI cycle per stream,
flow control both ways, trailers, the error policy, graceful shutdown; clients: the h2 library driven frame
by frame (H2Client below), httpx with http2 and curl."""

from __future__ import annotations

import asyncio
import functools
import json
import shutil
import socket
import ssl
import subprocess
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.settings
import hpack
import httpx
import pytest
import trustme
from h2.errors import ErrorCodes
from hyperframe.frame import DataFrame, Frame, GoAwayFrame, HeadersFrame, PingFrame, RstStreamFrame

from kestrelpy.config import Http2Limits, Limits, TlsOptions
from tests.support.gate import Gate
from tests.support.live_server import LiveServer
from tests.support.raw_client import RawClient
from tests.support.waiting import WAIT, wait_until

ServeApp = Callable[..., LiveServer]


class H2Client:
    """The h2 library as a client over a real socket: requests and frames sent as the test says, events
    read until the test has what it waits for."""

    def __init__(
        self,
        port: int,
        context: ssl.SSLContext | None = None,
        settings: dict[int, int] | None = None,
        preface: bool = True,
    ) -> None:
        sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # each frame leaves when it is sent
        if context is not None:
            sock = context.wrap_socket(sock, server_hostname="127.0.0.1")
        self.sock = sock
        config = h2.config.H2Configuration(client_side=True, header_encoding=None)
        self.h2 = h2.connection.H2Connection(config)
        self.events: list[h2.events.Event] = []
        self.closed = False
        self.acknowledge = True  # hand back the window of DATA as it is read
        self.after_goaway = b""  # what arrived once h2 stopped reading (it reads nothing after a GOAWAY)
        if preface:
            self.h2.initiate_connection()
            if settings:
                self.h2.update_settings(settings)
            self.flush()
            # The server's SETTINGS (and its connection window) first, as a client learns its limits.
            self.until(lambda e: isinstance(e, h2.events.RemoteSettingsChanged))

    def flush(self) -> None:
        data = self.h2.data_to_send()
        if data:
            self.sock.sendall(data)

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def request(
        self,
        path: str = "/",
        method: str = "GET",
        body: bytes | None = None,
        headers: Iterable[tuple[bytes, bytes]] = (),
        end: bool = True,
        stream_id: int | None = None,
        flush: bool = True,
    ) -> int:
        sid = stream_id if stream_id is not None else self.h2.get_next_available_stream_id()
        head = [
            (b":method", method.encode()),
            (b":scheme", b"http"),
            (b":authority", b"example.test:8443"),
            (b":path", path.encode()),
            *headers,
        ]
        self.h2.send_headers(sid, head, end_stream=end and body is None)
        if body is not None:
            self.send_body(sid, body, end)
        if flush:
            self.flush()
        return sid

    def send_body(self, sid: int, body: bytes, end: bool) -> None:
        """DATA frames of at most the largest size the server takes (the windows are the caller's concern)."""
        size = self.h2.max_outbound_frame_size
        for start in range(0, len(body), size):
            self.h2.send_data(sid, body[start : start + size], end_stream=end and start + size >= len(body))
        if not body:
            self.h2.send_data(sid, b"", end_stream=end)
        self.flush()

    def read(self) -> list[h2.events.Event]:
        """One read's events (empty once the server has closed)."""
        try:
            data = self.sock.recv(65536)
        except (ConnectionResetError, ssl.SSLError):
            data = b""
        if not data:
            self.closed = True
            return []
        if self.after_goaway or any(isinstance(e, h2.events.ConnectionTerminated) for e in self.events):
            self.after_goaway += data
            return [h2.events.Event()]  # (something was read)
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError:
            events = []
        for event in events:
            if self.acknowledge and isinstance(event, h2.events.DataReceived) and event.flow_controlled_length:
                self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        self.flush()
        self.events.extend(events)
        return events

    def until(self, done: Callable[[h2.events.Event], bool]) -> h2.events.Event | None:
        """Read until an event satisfies `done` (it is returned) or the server closes (None)."""
        for event in self.events:
            if done(event):
                return event
        while not self.closed:
            for event in self.read():
                if done(event):
                    return event
        return None

    def goaway(self) -> h2.events.ConnectionTerminated | None:
        event = self.until(lambda e: isinstance(e, h2.events.ConnectionTerminated))
        return event  # type: ignore[return-value]

    def response(self, sid: int) -> tuple[int, dict[bytes, bytes], bytes]:
        """Status, headers and body of stream `sid` once it has ended; raises if it was reset with an error
        (RST_STREAM NO_ERROR after a complete response only says the rest of the request is not needed)."""
        self.until(lambda e: _ends(e, sid))
        status, headers, body = 0, {}, b""
        for event in self.events:
            if getattr(event, "stream_id", None) != sid:
                continue
            if isinstance(event, h2.events.ResponseReceived):
                headers = dict(event.headers or ())
                status = int(headers[b":status"])
            elif isinstance(event, h2.events.DataReceived):
                body += event.data or b""
            elif isinstance(event, h2.events.StreamReset) and event.error_code != ErrorCodes.NO_ERROR:
                raise AssertionError(f"stream {sid} reset with {event.error_code!r}")
        return status, headers, body

    def close(self) -> None:
        self.sock.close()


def parse_frames(data: bytes) -> list[Frame]:
    frames = []
    while len(data) >= 9:
        frame, length = Frame.parse_frame_header(memoryview(data[:9]))
        frame.parse_body(memoryview(data[9 : 9 + length]))
        frames.append(frame)
        data = data[9 + length :]
    return frames


def _ends(event: h2.events.Event, sid: int) -> bool:
    return getattr(event, "stream_id", None) == sid and isinstance(
        event, (h2.events.StreamEnded, h2.events.StreamReset)
    )


async def echo_app(scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
    """Answers with the scope's main keys and the request body's length, as JSON."""
    if scope["type"] != "http":
        return
    size = 0
    while True:
        message = await receive()
        size += len(message.get("body", b""))
        if not message.get("more_body"):
            break
    answer = {
        "http_version": scope["http_version"],
        "scheme": scope["scheme"],
        "method": scope["method"],
        "path": scope["path"],
        "query": scope["query_string"].decode(),
        "headers": [[n.decode(), v.decode()] for n, v in scope["headers"]],
        "tls": "tls" in scope.get("extensions", {}),
        "size": size,
    }
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": json.dumps(answer).encode()})


@pytest.fixture
def h2_client() -> Iterable[Callable[..., H2Client]]:
    clients: list[H2Client] = []

    def connect(port: int, **kwargs: Any) -> H2Client:
        client = H2Client(port, **kwargs)
        clients.append(client)
        return client

    yield connect
    for client in clients:
        client.close()


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    where = tmp_path_factory.mktemp("h2certs")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    ca.cert_pem.write_to_path(str(where / "ca.pem"))
    cert.cert_chain_pems[0].write_to_path(str(where / "cert.pem"))
    cert.private_key_pem.write_to_path(str(where / "key.pem"))
    return where / "ca.pem", where / "cert.pem", where / "key.pem"


def tls_options(files: tuple[Path, Path, Path]) -> TlsOptions:
    return TlsOptions(ssl_certfile=str(files[1]), ssl_keyfile=str(files[2]))


def client_context(files: tuple[Path, Path, Path], alpn: list[str]) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(files[0]))
    context.set_alpn_protocols(alpn)
    return context


# -- negotiation ---------------------------------------------------------------------------------------


def test_prior_knowledge_request_runs_one_asgi_cycle_with_http2_scope(running_server, h2_client) -> None:
    live = running_server(echo_app)
    client = h2_client(live.port)
    sid = client.request("/a%20b/c?x=1&y=2", method="POST", body=b"hello", headers=[(b"x-one", b"1")])
    status, headers, body = client.response(sid)
    assert status == 200
    assert headers[b"content-length"] == str(len(body)).encode()
    answer = json.loads(body)
    assert answer["http_version"] == "2"
    assert answer["scheme"] == "http"
    assert (answer["method"], answer["path"], answer["query"]) == ("POST", "/a b/c", "x=1&y=2")
    assert answer["headers"][0] == ["host", "example.test:8443"]  # :authority becomes the host header
    assert ["x-one", "1"] in answer["headers"]
    assert not any(name.startswith(":") for name, _ in answer["headers"])
    assert answer["size"] == 5


def test_prior_knowledge_preface_split_over_reads_is_still_http2(running_server, h2_client) -> None:
    live = running_server(echo_app)
    client = h2_client(live.port, preface=False)
    client.h2.initiate_connection()
    opening = client.h2.data_to_send()  # the preface and a SETTINGS frame
    for piece in (opening[:3], opening[3:16], opening[16:]):
        client.send_raw(piece)
        assert wait_until(live.has_read_everything)
    sid = client.request("/split")
    status, _headers, body = client.response(sid)
    assert status == 200 and json.loads(body)["path"] == "/split"


def test_cleartext_http11_still_served_beside_prior_knowledge(running_server) -> None:
    live = running_server(echo_app)
    response = httpx.get(live.url + "/one", timeout=WAIT)
    assert response.http_version == "HTTP/1.1" and response.json()["http_version"] == "1.1"
    with httpx.Client(http1=False, http2=True, timeout=WAIT) as client:
        response = client.get(live.url + "/two?q")
    assert response.http_version == "HTTP/2"
    assert response.json()["path"] == "/two" and response.json()["query"] == "q"


def test_upgrade_h2c_request_is_answered_as_http11(running_server) -> None:
    live = running_server(echo_app)
    with socket.create_connection(("127.0.0.1", live.port), timeout=WAIT) as sock:
        sock.sendall(
            b"GET /up HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
            b"HTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n"
        )
        reply = b""
        while b"\r\n\r\n" not in reply or not reply.endswith(b"}"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 200 ")
    assert b'"http_version": "1.1"' in reply


def test_no_http2_flag_leaves_the_preface_to_http11(serve_app, h2_client) -> None:
    live = serve_app(echo_app, http2_limits=Http2Limits(http2=False))
    client = h2_client(live.port)
    client.request("/")
    client.until(lambda e: False)  # the server answers the preface as a bad HTTP/1.1 request and closes
    assert client.closed
    assert not any(isinstance(e, h2.events.ResponseReceived) for e in client.events)


def test_tls_alpn_offers_h2_first_and_http11_still_works(serve_app, tls_files, loop_kind) -> None:
    live = serve_app(echo_app, loop_kind=loop_kind, tls=tls_options(tls_files))
    context = ssl.create_default_context(cafile=str(tls_files[0]))
    url = f"https://127.0.0.1:{live.port}/tls"
    with httpx.Client(http2=True, verify=context, timeout=WAIT) as client:
        response = client.get(url)
    assert response.http_version == "HTTP/2"
    assert response.json()["scheme"] == "https" and response.json()["tls"] is True
    with httpx.Client(http2=False, verify=context, timeout=WAIT) as client:
        response = client.get(url)
    assert response.http_version == "HTTP/1.1" and response.json()["http_version"] == "1.1"


def test_tls_without_http2_does_not_offer_it(serve_app, tls_files) -> None:
    live = serve_app(echo_app, tls=tls_options(tls_files), http2_limits=Http2Limits(http2=False))
    context = client_context(tls_files, ["h2", "http/1.1"])
    with (
        socket.create_connection(("127.0.0.1", live.port), timeout=WAIT) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as sock,
    ):
        assert sock.selected_alpn_protocol() == "http/1.1"


def test_http1_only_endpoint_answers_the_preface_as_http11(serve_app) -> None:
    live = serve_app(echo_app, protocols="http1")
    client = RawClient(live.port)
    client.send(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
    assert client.read_until_close().startswith(b"HTTP/1.1 400 ")


def test_http1_only_tls_endpoint_does_not_offer_h2(serve_app, tls_files) -> None:
    live = serve_app(echo_app, tls=tls_options(tls_files), protocols="http1")
    context = client_context(tls_files, ["h2", "http/1.1"])
    with (
        socket.create_connection(("127.0.0.1", live.port), timeout=WAIT) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as sock,
    ):
        assert sock.selected_alpn_protocol() == "http/1.1"


@pytest.mark.parametrize("tls", [False, True], ids=["h2c", "tls"])
def test_http2_only_endpoint_serves_http2_and_refuses_http11(serve_app, tls_files, h2_client, tls) -> None:
    secure = {"tls": tls_options(tls_files)} if tls else {}
    live = serve_app(echo_app, protocols="http2", **secure)
    context = client_context(tls_files, ["h2"]) if tls else None
    client = h2_client(live.port, context=context)
    status, _headers, _body = client.response(client.request("/only"))
    assert status == 200
    if tls:  # ALPN offers h2 alone: a client asking only for HTTP/1.1 agrees on nothing
        with (
            socket.create_connection(("127.0.0.1", live.port), timeout=WAIT) as raw,
            client_context(tls_files, ["http/1.1"]).wrap_socket(raw, server_hostname="127.0.0.1") as sock,
        ):
            assert sock.selected_alpn_protocol() in (None, "h2")
        return
    plain = RawClient(live.port)
    plain.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    answer = plain.read_until_close()
    assert answer and not answer.startswith(b"HTTP/1.1")  # HTTP/2 answers a missing preface with GOAWAY and closes


def test_raw_h2_client_over_tls_alpn(serve_app, tls_files, h2_client) -> None:
    live = serve_app(echo_app, tls=tls_options(tls_files))
    client = h2_client(live.port, context=client_context(tls_files, ["h2"]))
    assert isinstance(client.sock, ssl.SSLSocket) and client.sock.selected_alpn_protocol() == "h2"
    sid = client.request("/raw", method="PUT", body=b"x" * 100_000)
    status, _headers, body = client.response(sid)
    assert status == 200
    assert json.loads(body)["size"] == 100_000


def test_alpn_still_offers_h2_after_sni_switches_the_certificate(serve_app, tls_files, tmp_path) -> None:
    ca = trustme.CA()
    other = ca.issue_cert("other.test")
    other.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "other.pem"))
    ca.cert_pem.write_to_path(str(tmp_path / "other-ca.pem"))
    options = TlsOptions(
        ssl_certfile=str(tls_files[1]),
        ssl_keyfile=str(tls_files[2]),
        ssl_sni=(("other.test", str(tmp_path / "other.pem"), ""),),
    )
    live = serve_app(echo_app, tls=options)
    context = ssl.create_default_context(cafile=str(tmp_path / "other-ca.pem"))
    context.set_alpn_protocols(["h2", "http/1.1"])
    with (
        socket.create_connection(("127.0.0.1", live.port), timeout=WAIT) as raw,
        context.wrap_socket(raw, server_hostname="other.test") as sock,
    ):
        assert sock.selected_alpn_protocol() == "h2"


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_http2_over_tls_and_prior_knowledge(serve_app, tls_files) -> None:
    plain = serve_app(echo_app)
    secure = serve_app(echo_app, tls=tls_options(tls_files))
    for args in (
        ["--http2-prior-knowledge", f"http://127.0.0.1:{plain.port}/curl?c=1"],
        ["--http2", "--cacert", str(tls_files[0]), f"https://127.0.0.1:{secure.port}/curl?c=1"],
    ):
        result = subprocess.run(
            ["curl", "-sS", "-w", "\n%{http_version}", "--data-binary", "abc", *args],
            capture_output=True,
            text=True,
            timeout=WAIT,
            check=True,
        )
        body, version = result.stdout.rsplit("\n", 1)
        assert version == "2", result
        answer = json.loads(body)
        assert answer["http_version"] == "2" and answer["path"] == "/curl" and answer["size"] == 3


# -- the ASGI cycle per stream --------------------------------------------------------------------------


def test_concurrent_streams_each_run_their_own_cycle(running_server, h2_client) -> None:
    live = running_server(echo_app)
    client = h2_client(live.port)
    sids = [client.request(f"/s{i}", method="POST", body=b"y" * i) for i in range(1, 11)]
    for i, sid in enumerate(sids, start=1):
        status, _headers, body = client.response(sid)
        assert status == 200 and json.loads(body)["path"] == f"/s{i}" and json.loads(body)["size"] == i


def test_response_trailers_when_the_request_accepts_them(serve_app, h2_client) -> None:
    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": [], "trailers": True})
        await send({"type": "http.response.body", "body": b"data", "more_body": False})
        await send({"type": "http.response.trailers", "headers": [(b"grpc-status", b"0")]})

    live = serve_app(app)
    client = h2_client(live.port)
    sid = client.request("/", headers=[(b"te", b"trailers")])
    status, _headers, body = client.response(sid)
    assert (status, body) == (200, b"data")
    trailers = [e for e in client.events if isinstance(e, h2.events.TrailersReceived)]
    assert trailers and dict(trailers[0].headers or ()) == {b"grpc-status": b"0"}


def test_app_failing_before_its_response_gets_500(serve_app, h2_client) -> None:
    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        raise RuntimeError("boom")

    live = serve_app(app)
    client = h2_client(live.port)
    sid = client.request("/")
    status, _headers, body = client.response(sid)
    assert status == 500 and body == b"Internal Server Error"
    again = client.request("/")  # the connection goes on
    assert client.response(again)[0] == 500


def test_app_failing_after_its_response_started_resets_the_stream(serve_app, h2_client) -> None:
    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"part", "more_body": True})
        raise RuntimeError("boom")

    live = serve_app(app)
    client = h2_client(live.port)
    sid = client.request("/")
    event = client.until(lambda e: _ends(e, sid))
    assert isinstance(event, h2.events.StreamReset) and event.error_code == ErrorCodes.INTERNAL_ERROR


def test_rst_stream_tells_the_app_the_client_left(serve_app, h2_client) -> None:
    seen: list[str] = []
    gate = Gate()

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        gate.reached.set()
        seen.append((await receive())["type"])

    live = serve_app(app)
    client = h2_client(live.port)
    sid = client.request("/", method="POST", body=b"", end=False)
    assert gate.reached.wait(WAIT)
    client.h2.reset_stream(sid, ErrorCodes.CANCEL)
    client.flush()
    assert wait_until(lambda: seen == ["http.disconnect"])


def test_connection_loss_tells_every_stream_app(serve_app, h2_client) -> None:
    seen: list[str] = []

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        seen.append((await receive())["type"])
        seen.append((await receive())["type"])

    live = serve_app(app)
    client = h2_client(live.port)
    for _ in range(3):
        client.request("/", method="POST", body=b"a", end=False)
    assert wait_until(lambda: seen.count("http.request") == 3)
    client.close()
    assert wait_until(lambda: seen.count("http.disconnect") == 3)


def test_expect_continue_gets_an_interim_100_when_the_app_reads(serve_app, h2_client) -> None:
    live = serve_app(echo_app)
    client = h2_client(live.port)
    sid = client.request("/", method="POST", headers=[(b"expect", b"100-continue")], end=False)
    event = client.until(lambda e: isinstance(e, h2.events.InformationalResponseReceived))
    assert event is not None and dict(event.headers or ())[b":status"] == b"100"
    client.send_body(sid, b"body", True)
    status, _headers, body = client.response(sid)
    assert status == 200 and json.loads(body)["size"] == 4


def test_head_response_has_the_length_and_no_body(serve_app, h2_client) -> None:
    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"twelve bytes"})

    live = serve_app(app)
    client = h2_client(live.port)
    status, headers, body = client.response(client.request("/", method="HEAD"))
    assert (status, headers[b"content-length"], body) == (200, b"12", b"")


# -- flow control ---------------------------------------------------------------------------------------


def test_a_body_in_the_same_read_as_its_head_is_there_when_the_app_first_asks(serve_app, h2_client) -> None:
    """HEADERS and DATA that arrive together: the app's first receive() returns the body without waiting
    (the app starts once the read's frames are handled, not between the HEADERS and the DATA)."""

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        turned: list[bool] = []
        asyncio.get_running_loop().call_soon(turned.append, True)  # runs if receive() lets the loop turn
        message = await receive()
        answer = b"after a wait" if turned else b"at once"
        assert message["body"] == b"x" * 1024
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": answer})

    live = serve_app(app, loop_kind="uvloop")
    client = h2_client(live.port)
    assert client.response(client.request("/", method="POST", body=b"x" * 1024))[2] == b"at once"


def test_request_body_window_opens_only_as_the_app_reads(serve_app, h2_client) -> None:
    gate = Gate()
    sizes: list[int] = []

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        await gate.wait()
        total = 0
        while True:
            message = await receive()
            total += len(message["body"])
            if not message["more_body"]:
                break
        sizes.append(total)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"%d" % total})

    window = 100_000
    live = serve_app(app, http2_limits=Http2Limits(http2_initial_stream_window_size=window))
    client = h2_client(live.port)
    sid = client.request("/", method="POST", end=False)
    assert gate.reached.wait(WAIT)
    # Spend the whole stream window.
    assert client.h2.local_flow_control_window(sid) == window
    client.send_body(sid, b"z" * window, False)
    wait_until(live.has_read_everything)
    client.sock.settimeout(0.3)
    try:
        client.read()
    except TimeoutError:
        pass
    client.sock.settimeout(WAIT)
    assert client.h2.local_flow_control_window(sid) == 0  # the app has read nothing: no window back
    gate.open()
    assert client.until(lambda e: isinstance(e, h2.events.WindowUpdated) and e.stream_id == sid)
    client.send_body(sid, b"z" * 1000, True)
    status, _headers, body = client.response(sid)
    assert (status, body) == (200, b"%d" % (window + 1000))


def test_send_waits_while_the_peer_window_is_closed(serve_app, h2_client) -> None:
    progress: list[int] = []

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for i in range(20):
            await send({"type": "http.response.body", "body": b"x" * 10_000, "more_body": True})
            progress.append(i)
        await send({"type": "http.response.body", "body": b""})

    live = serve_app(app)
    client = h2_client(live.port, settings={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 15_000})
    client.acknowledge = False  # read what the window allows without handing any of it back
    sid = client.request("/")
    client.until(lambda e: isinstance(e, h2.events.DataReceived))
    assert wait_until(lambda: len(progress) >= 1)
    client.sock.settimeout(0.3)
    try:
        while client.read():
            pass
    except TimeoutError:
        pass
    client.sock.settimeout(WAIT)
    assert len(progress) <= 2  # the app waits in send() while the window is shut
    received = sum(len(e.data or b"") for e in client.events if isinstance(e, h2.events.DataReceived))
    assert received == 15_000
    client.acknowledge = True
    client.h2.acknowledge_received_data(received, sid)
    client.flush()
    status, _headers, body = client.response(sid)
    assert status == 200 and len(body) == 200_000 and len(progress) == 20


def test_large_responses_on_two_streams_interleave(serve_app, h2_client) -> None:
    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"x" * 500_000})

    live = serve_app(app)
    client = h2_client(live.port, settings={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 2**20})
    client.h2.increment_flow_control_window(2**24)
    client.flush()
    first, second = client.h2.get_next_available_stream_id(), client.h2.get_next_available_stream_id() + 2
    for sid, path in ((first, b"/a"), (second, b"/b")):  # in one write: both apps start in the same read
        head = [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"x"), (b":path", path)]
        client.h2.send_headers(sid, head, end_stream=True)
    client.flush()
    client.response(first)
    client.response(second)
    order = [e.stream_id for e in client.events if isinstance(e, h2.events.DataReceived)]
    assert order.index(second) < len(order) - 1 - order[::-1].index(first)  # b began before a ended


# -- limits per stream ---------------------------------------------------------------------------------


def test_too_many_header_fields_get_431_on_that_stream_only(serve_app, h2_client) -> None:
    live = serve_app(echo_app, limits=Limits(max_request_header_count=10))
    client = h2_client(live.port)
    bad = client.request("/", headers=[(b"x-h%d" % i, b"v") for i in range(20)])
    good = client.request("/")
    assert client.response(bad)[0] == 431
    assert client.response(good)[0] == 200


def test_head_size_and_path_limits_hold_per_stream(serve_app, h2_client) -> None:
    """The HTTP/1.1 head limits per stream: header bytes over --limit-request-headers get 431, a :path longer
    than --limit-request-line 414, and a head just within both is served."""
    live = serve_app(echo_app, limits=Limits(max_request_headers_size=2000, max_request_line_size=1000))
    client = h2_client(live.port)
    fields = [(b"x-h%d" % i, b"v" * 300) for i in range(5)]
    assert client.response(client.request("/", headers=fields))[0] == 200  # 1,500 bytes and the host field
    assert client.response(client.request("/", headers=[*fields, (b"x-more", b"v" * 500)]))[0] == 431
    assert client.response(client.request("/" + "p" * 980))[0] == 200
    assert client.response(client.request("/" + "p" * 990))[0] == 414


def test_declared_body_over_the_limit_gets_413(serve_app, h2_client) -> None:
    live = serve_app(echo_app, limits=Limits(max_request_body_size=1000))
    client = h2_client(live.port)
    sid = client.request("/", method="POST", headers=[(b"content-length", b"5000")], end=False)
    status, _headers, body = client.response(sid)
    assert status == 413 and body == b"Request body too large."


def test_streamed_body_over_the_limit_gets_413(serve_app, h2_client) -> None:
    live = serve_app(echo_app, limits=Limits(max_request_body_size=1000))
    client = h2_client(live.port)
    sid = client.request("/", method="POST", body=b"q" * 2000, end=False)
    status, _headers, _body = client.response(sid)
    assert status == 413


def test_each_stream_gets_an_access_log_line(serve_app, h2_client, caplog) -> None:
    live = serve_app(echo_app, access_log=True)
    client = h2_client(live.port)
    with caplog.at_level("INFO", logger="kestrelpy.access"):
        for sid in [client.request("/log1"), client.request("/log2")]:
            client.response(sid)
        assert wait_until(lambda: sum("HTTP/2" in r.getMessage() for r in caplog.records) == 2)
    lines = [r.getMessage() for r in caplog.records if r.name == "kestrelpy.access"]
    assert any('"GET /log1 HTTP/2" 200' in line for line in lines)


def test_http2_connections_count_towards_the_connection_limit(serve_app, h2_client) -> None:
    """An h2c connection over the limit is refused the HTTP/2 way once its preface arrives (GOAWAY
    REFUSED_STREAM, as over TLS), even when the preface comes in pieces; an HTTP/1.1 one still gets 503."""
    live = serve_app(echo_app, limits=Limits(max_concurrent_connections=1))
    first = h2_client(live.port)
    assert first.response(first.request("/"))[0] == 200
    second = h2_client(live.port)
    event = second.goaway()
    assert event is not None and event.error_code == ErrorCodes.REFUSED_STREAM
    third = h2_client(live.port, preface=False)
    third.h2.initiate_connection()
    opening = third.h2.data_to_send()
    for piece in (opening[:3], opening[3:20], opening[20:]):
        third.send_raw(piece)
    event = third.goaway()
    assert event is not None and event.error_code == ErrorCodes.REFUSED_STREAM
    with socket.create_connection(("127.0.0.1", live.port), timeout=WAIT) as plain:
        plain.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert plain.recv(100).startswith(b"HTTP/1.1 503 ")
    assert first.response(first.request("/"))[0] == 200  # the open one is unaffected


def test_tls_http2_connection_over_the_limit_gets_goaway_refused(serve_app, tls_files, h2_client) -> None:
    live = serve_app(echo_app, tls=tls_options(tls_files), limits=Limits(max_concurrent_connections=1))
    first = h2_client(live.port, context=client_context(tls_files, ["h2"]))
    assert first.response(first.request("/"))[0] == 200
    second = h2_client(live.port, context=client_context(tls_files, ["h2"]))
    event = second.goaway()
    assert event is not None and event.error_code == ErrorCodes.REFUSED_STREAM


# -- shutdown ------------------------------------------------------------------------------------------


def test_graceful_shutdown_sends_goaway_and_finishes_streams_in_flight(serve_app, h2_client) -> None:
    live, client, gate, sid = stream_in_flight(serve_app, h2_client)
    live.request_shutdown()
    event = client.goaway()
    assert event is not None and event.error_code == ErrorCodes.NO_ERROR and event.last_stream_id == sid
    late = HeadersFrame(sid + 2, flags=("END_HEADERS", "END_STREAM"))  # opened after the GOAWAY: refused
    fields = [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"x"), (b":path", b"/late")]
    late.data = hpack.Encoder().encode(fields)
    client.send_raw(late.serialize())
    gate.open()
    client.until(lambda e: False)  # h2 reads no frames after a GOAWAY: the rest is parsed here
    assert client.closed
    frames = parse_frames(client.after_goaway)
    assert any(isinstance(f, DataFrame) and f.stream_id == sid and f.data == b"finished" for f in frames)
    refused = [f for f in frames if isinstance(f, RstStreamFrame) and f.stream_id == sid + 2]
    assert refused and refused[0].error_code == ErrorCodes.REFUSED_STREAM
    assert live.join()


def test_a_connection_that_turns_to_http2_after_shutdown_began_gets_goaway(serve_app, h2_client) -> None:
    """Accepted before the drain, its preface (prior knowledge) only after: drained as HTTP/2 (GOAWAY naming
    no stream), not served as a fresh connection that the shutdown has already passed by (whose only end would
    be the forced close at the graceful timeout: the keep-alive timeout's GOAWAY is kept out of reach)."""
    live = serve_app(echo_app, keep_alive_timeout=60.0, timeout_graceful_shutdown=3.0)
    late = h2_client(live.port, preface=False)
    assert wait_until(lambda: len(live.connections()) == 1)
    live.request_shutdown()
    assert wait_until(
        lambda: live.server is not None and live.server._state is not None and live.server._state.shutting_down
    )
    late.h2.initiate_connection()
    late.flush()
    goaway = late.goaway()
    assert goaway is not None and (goaway.error_code, goaway.last_stream_id) == (ErrorCodes.NO_ERROR, 0)
    late.sock.close()
    assert live.join()


def answering(record: Callable[[dict[str, Any]], object], status: int, body: bytes) -> Callable[..., Any]:
    """An app that hands each request's scope to `record` and answers `status` with `body`."""

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        record(scope)
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": body})

    return app


def unchecked(client: H2Client) -> H2Client:
    """The client sends header blocks as they are written (h2 would refuse or fix the malformed ones)."""
    client.h2.config.validate_outbound_headers = False
    client.h2.config.normalize_outbound_headers = False
    return client


def test_cookie_fields_reach_the_app_as_one_header(serve_app, h2_client) -> None:
    """RFC 9113 section 8.2.3: a client may split the cookie into several fields; the app gets one."""
    seen: list[list[tuple[bytes, bytes]]] = []
    live = serve_app(answering(lambda scope: seen.append(scope["headers"]), 204, b""))
    client = h2_client(live.port)
    cookies = [(b"cookie", b"a=1"), (b"accept", b"*/*"), (b"cookie", b"b=2")]
    assert client.response(client.request("/", headers=cookies))[0] == 204
    assert [v for n, v in seen[0] if n == b"cookie"] == [b"a=1; b=2"]


_GET = [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"example.test"), (b":path", b"/")]
# Header blocks that make a request malformed (RFC 9113 sections 8.2 and 8.3), each named by the rule it breaks.
MALFORMED_REQUESTS: dict[str, list[tuple[bytes, bytes]]] = {
    "uppercase name": [*_GET, (b"X-Upper", b"1")],
    "space in a name": [*_GET, (b"x name", b"1")],
    "control character in a name": [*_GET, (b"x\x01", b"1")],
    "non-ASCII name": [*_GET, (b"x\xe9", b"1")],
    "colon inside a name": [*_GET, (b"x:y", b"1")],
    "empty name": [*_GET, (b"", b"1")],
    "CR LF in a value": [*_GET, (b"x-a", b"1\r\nx-b: 2")],
    "NUL in a value": [*_GET, (b"x-a", b"1\x002")],
    "leading space in a value": [*_GET, (b"x-a", b" 1")],
    "trailing tab in a value": [*_GET, (b"x-a", b"1\t")],
    "LF in a pseudo-header value": [*_GET[:3], (b":path", b"/a\nb")],
    "connection": [*_GET, (b"connection", b"keep-alive")],
    "keep-alive": [*_GET, (b"keep-alive", b"timeout=5")],
    "proxy-connection": [*_GET, (b"proxy-connection", b"keep-alive")],
    "transfer-encoding": [*_GET, (b"transfer-encoding", b"chunked")],
    "upgrade": [*_GET, (b"upgrade", b"websocket")],
    "te other than trailers": [*_GET, (b"te", b"gzip")],
    "unknown pseudo-header": [*_GET, (b":foo", b"bar")],
    "response pseudo-header": [(b":status", b"200"), *_GET],
    ":protocol (extended CONNECT is not offered)": [*_GET, (b":protocol", b"websocket")],
    "pseudo-header after a regular field": [*_GET[:3], (b"accept", b"*/*"), _GET[3]],
    "repeated :path": [*_GET, (b":path", b"/again")],
    "no :method": _GET[1:],
    "no :scheme": [_GET[0], *_GET[2:]],
    "no :path": _GET[:3],
    "empty :path": [*_GET[:3], (b":path", b"")],
    "CONNECT with :path": [(b":method", b"CONNECT"), (b":authority", b"example.test:443"), (b":path", b"/")],
    "neither :authority nor host": [_GET[0], _GET[1], _GET[3]],
    ":authority and host differ": [*_GET, (b"host", b"other.test")],
    "two host fields": [_GET[0], _GET[1], _GET[3], (b"host", b"a.test"), (b"host", b"a.test")],
}


def test_malformed_requests_get_a_stream_error_and_the_connection_carries_on(serve_app, h2_client) -> None:
    """RFC 9113 section 8.1.1: a malformed request is a stream error (RST_STREAM PROTOCOL_ERROR), the app
    never sees it, and the streams beside it are served; the same block again is refused again."""
    seen: list[str] = []
    live = serve_app(answering(lambda scope: seen.append(scope["path"]), 200, b"fine"))
    client = unchecked(h2_client(live.port))
    for rule, fields in [*MALFORMED_REQUESTS.items(), *MALFORMED_REQUESTS.items()]:
        sid = client.h2.get_next_available_stream_id()
        client.h2.send_headers(sid, fields, end_stream=True)
        client.flush()
        reset = client.until(functools.partial(_ends, sid=sid))
        assert isinstance(reset, h2.events.StreamReset), rule
        assert reset.error_code == ErrorCodes.PROTOCOL_ERROR, rule
        status, _, body = client.response(client.request(f"/after/{len(seen)}"))
        assert (status, body) == (200, b"fine"), rule
    assert seen == [f"/after/{i}" for i in range(2 * len(MALFORMED_REQUESTS))]


def test_well_formed_edges_are_served(serve_app, h2_client) -> None:
    """What sections 8.2 and 8.3 allow: te: trailers, Host instead of :authority, Host equal to :authority,
    an empty value, a tab inside one; an ordinary CONNECT is well-formed and refused with 400 (not offered)."""
    live = serve_app(echo_app)
    client = unchecked(h2_client(live.port))
    blocks = [
        [*_GET, (b"te", b"trailers")],
        [_GET[0], _GET[1], _GET[3], (b"host", b"only.test")],
        [*_GET, (b"host", b"example.test")],
        [*_GET, (b"x-empty", b""), (b"x-tab", b"a\tb")],
    ]
    for fields in blocks:
        sid = client.h2.get_next_available_stream_id()
        client.h2.send_headers(sid, fields, end_stream=True)
        client.flush()
        status, _, body = client.response(sid)
        assert status == 200, fields
        host = [v for n, v in json.loads(body)["headers"] if n == "host"]
        assert host == [dict(fields).get(b":authority", b"only.test").decode()]
    sid = client.h2.get_next_available_stream_id()
    client.h2.send_headers(sid, [(b":method", b"CONNECT"), (b":authority", b"example.test:443")], end_stream=True)
    client.flush()
    assert client.response(sid)[0] == 400


def test_malformed_trailers_reset_their_stream_only(serve_app, h2_client) -> None:
    """Request trailers are held to section 8.2 too: an uppercase name resets that stream with
    PROTOCOL_ERROR, its app is told the client left, and the connection serves the next request."""
    gone = threading.Event()

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        if scope["path"] == "/upload":
            while (message := await receive())["type"] == "http.request" and message.get("more_body"):
                pass
            if message["type"] == "http.disconnect":
                gone.set()
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"next"})

    live = serve_app(app)
    client = unchecked(h2_client(live.port))
    sid = client.request("/upload", method="POST", body=b"part", end=False)
    client.h2.send_headers(sid, [(b"X-Checksum", b"1")], end_stream=True)
    client.flush()
    reset = client.until(lambda e: _ends(e, sid))
    assert isinstance(reset, h2.events.StreamReset) and reset.error_code == ErrorCodes.PROTOCOL_ERROR
    assert gone.wait(WAIT)
    assert client.response(client.request("/next"))[2] == b"next"


def test_response_heads_decode_right_as_the_hpack_table_changes(serve_app, h2_client) -> None:
    """The server remembers the header blocks it encoded while its HPACK table is unchanged: repeated heads,
    new entries, a field larger than the table and the client resizing the table (to nothing and back)
    must all decode to what the app sent."""

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        name, _, value = scope["path"][1:].partition("/")
        headers = [(b"x-" + name.encode(), value.encode() * (5000 if name == "big" else 1))]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"ok"})

    live = serve_app(app)
    client = h2_client(live.port)

    def check(*paths: str) -> None:
        for path in paths:
            name, _, value = path[1:].partition("/")
            _, headers, body = client.response(client.request(path))
            assert headers[b"x-" + name.encode()] == value.encode() * (5000 if name == "big" else 1), path
            assert body == b"ok"

    check("/a/1", "/a/1", "/b/2", "/a/1", "/b/2", "/b/3", "/big/x", "/a/1", "/a/1")
    for size in (0, 4096, 100):
        client.h2.update_settings({h2.settings.SettingCodes.HEADER_TABLE_SIZE: size})
        client.flush()
        check("/a/1", "/a/1", "/b/2", "/a/1", "/b/4", "/a/1")


def test_request_heads_decode_right_as_the_hpack_table_changes(serve_app, h2_client) -> None:
    """The server remembers the fields of the header blocks it decoded while its HPACK table is unchanged: a
    repeated request, new entries evicting old ones, the client shrinking the table (to nothing and back)
    must all reach the app as the client sent them."""
    live = serve_app(echo_app)
    client = h2_client(live.port)

    def check(*fields: tuple[bytes, bytes]) -> None:
        _, _, body = client.response(client.request("/", headers=fields))
        seen = [(n.encode(), v.encode()) for n, v in json.loads(body)["headers"]]
        assert seen == [(b"host", b"example.test:8443"), *fields]

    for size in (4096, 0, 200, 4096):
        client.h2.encoder.header_table_size = size  # (a size update opens the client's next block)
        check((b"x-a", b"1"))
        check((b"x-a", b"1"))
        check((b"x-a", b"2"))
        check((b"x-a", b"1"), (b"x-b", b"b" * 150))  # with 200 bytes: x-a's entries are evicted
        check((b"x-a", b"1"))
        check((b"x-a", b"2"))


def test_frames_after_an_early_answer_are_ignored_and_checked_while_the_body_is_read(serve_app, h2_client) -> None:
    """An app that answers before the request body has ended: its stream gets RST_STREAM NO_ERROR (RFC 9113
    section 8.1), and what the client sends on it afterwards is ignored, malformed trailers included
    (section 5.1). On a stream whose app still reads the body the same trailers are a PROTOCOL_ERROR."""

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        while scope["path"] == "/read" and (await receive()).get("more_body"):
            pass
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"done"})

    def bad_trailers(sid: int) -> bytes:  # a pseudo-header field in trailers (RFC 9113 section 8.1)
        frame = HeadersFrame(sid, flags=("END_HEADERS", "END_STREAM"))
        frame.data = client.h2.encoder.encode([(b":path", b"/trailer")])
        return frame.serialize()

    live = serve_app(app)
    client = h2_client(live.port)
    early = client.request("/early", method="POST", body=b"part", end=False)
    assert client.response(early)[2] == b"done"
    reset = client.until(lambda e: isinstance(e, h2.events.StreamReset) and e.stream_id == early)
    assert reset is not None and reset.error_code == ErrorCodes.NO_ERROR
    client.send_raw(bad_trailers(early))
    assert client.response(client.request("/after"))[0] == 200  # the connection is untouched
    reading = client.request("/read", method="POST", body=b"part", end=False)
    client.send_raw(bad_trailers(reading))
    failed = client.until(
        lambda e: (
            isinstance(e, (h2.events.ConnectionTerminated, h2.events.StreamReset))
            and getattr(e, "error_code", None) == ErrorCodes.PROTOCOL_ERROR
        )
    )
    assert failed is not None


def stream_in_flight(serve_app, h2_client) -> tuple[LiveServer, H2Client, Gate, int]:
    """A server whose app answers "finished" once the gate opens, and a client with one stream waiting on it."""
    gate = Gate()

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        await gate.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"finished"})

    live = serve_app(app)
    client = h2_client(live.port)
    sid = client.request("/slow")
    assert gate.reached.wait(WAIT)
    return live, client, gate, sid


def test_a_clients_goaway_lets_its_streams_in_flight_finish(serve_app, h2_client) -> None:
    """RFC 9113 section 6.8: after the client's GOAWAY NO_ERROR the response in flight is still sent, a
    stream opened after it is refused, and the connection closes once the last stream is done."""
    _live, client, gate, sid = stream_in_flight(serve_app, h2_client)
    goaway = GoAwayFrame(0)  # (written by hand: h2 would send nothing after it; last stream 0: none pushed)
    client.send_raw(goaway.serialize() + PingFrame(0, opaque_data=b"goaway!!").serialize())
    assert client.until(lambda e: isinstance(e, h2.events.PingAckReceived))  # the GOAWAY has been read
    late = client.request("/late")
    refused = client.until(lambda e: isinstance(e, h2.events.StreamReset) and e.stream_id == late)
    assert isinstance(refused, h2.events.StreamReset) and refused.error_code == ErrorCodes.REFUSED_STREAM
    gate.open()
    status, _headers, body = client.response(sid)
    assert (status, body) == (200, b"finished")
    client.until(lambda e: False)
    assert client.closed


def test_shutdown_delay_keeps_accepting_streams_on_open_connections(serve_app, h2_client) -> None:
    live = serve_app(echo_app, shutdown_delay=30.0)
    client = h2_client(live.port)
    assert client.response(client.request("/before"))[0] == 200
    live.request_shutdown()
    assert wait_until(
        lambda: live.server is not None and live.server._state is not None and live.server._state.draining
    )
    status, _headers, body = client.response(client.request("/during"))
    assert status == 200 and json.loads(body)["path"] == "/during"
    assert not any(isinstance(e, h2.events.ConnectionTerminated) for e in client.events)
