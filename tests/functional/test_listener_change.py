"""Server.change_listeners, the in-place half of a SIGHUP reload, on a real server and real sockets: a
listener whose certificate changed serves new connections with the new one on the same socket and drains
the ones made before, even one whose TLS handshake was still under way; a listener that did not change
keeps its keep-alive connections untouched. Each protocol is drained as a graceful shutdown drains it: an
HTTP/2 connection gets GOAWAY, finishes its streams in flight and refuses new ones (the h2 library as the
client, over TLS with ALPN and in cleartext with prior knowledge); a WebSocket session is closed with 1012
(the `websockets` client); HTTP/2 connections and WebSocket sessions of the other listeners carry on."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import h2.events
import pytest
import trustme
from h2.errors import ErrorCodes
from hyperframe.frame import DataFrame, HeadersFrame, RstStreamFrame

from kestrelpy import platform
from kestrelpy.config import Config, TlsOptions
from tests.functional.test_http2 import H2Client, parse_frames
from tests.functional.test_http2 import h2_client as h2_client  # the fixture
from tests.functional.test_http2_defences import head_block
from tests.support.gate import Gate
from tests.support.live_server import LiveServer
from tests.support.manual_clock import ManualClock
from tests.support.waiting import WAIT, wait_until

websockets_client = pytest.importorskip("websockets.sync.client")
ConnectionClosed = pytest.importorskip("websockets.exceptions").ConnectionClosed


async def hello(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


def exchange(sock: socket.socket) -> bytes:
    """One keep-alive GET on `sock`; the response head (the body is two bytes)."""
    sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
    data = b""
    while b"\r\n\r\nok" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed after {data!r}"
        data += chunk
    return data.partition(b"\r\n\r\n")[0].lower()


@pytest.fixture
def certificates(tmp_path: Path) -> Iterator[tuple[ssl.SSLContext, dict[str, Path]]]:
    ca = trustme.CA()
    client = ssl.create_default_context()
    ca.configure_trust(client)
    client.check_hostname = False
    files = {}
    for name in ("first", "second"):
        files[name] = tmp_path / f"{name}.pem"
        ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(files[name]))
    yield client, files


def test_a_changed_certificate_drains_the_old_connections_and_leaves_the_other_listener_alone(
    serve_app: Callable[..., LiveServer], loop_kind: str, certificates: tuple[ssl.SSLContext, dict[str, Path]]
) -> None:
    client, files = certificates
    plain, secure = socket.create_server(("127.0.0.1", 0)), socket.create_server(("127.0.0.1", 0))
    probe = secure.dup()  # the loop may take the socket object over; a duplicate still reads its queue
    address = secure.getsockname()
    urls = f"http://127.0.0.1:{plain.getsockname()[1]};https://127.0.0.1:{address[1]}"
    live = serve_app(
        hello, loop_kind=loop_kind, sockets=[plain, secure], urls=urls, tls=TlsOptions(ssl_certfile=str(files["first"]))
    )
    server = live.server
    assert server is not None
    with (
        probe,
        socket.create_connection(plain.getsockname(), timeout=WAIT) as kept,
        socket.create_connection(address, timeout=WAIT) as raw,
    ):
        assert exchange(kept).startswith(b"http/1.1 200")
        assert wait_until(lambda: platform.listen_queue_length(probe) == 0)  # `raw` is accepted, not handshaken
        apply_change(live, server.config.replace(tls=TlsOptions(ssl_certfile=str(files["second"]))), change=[address])

        with client.wrap_socket(raw) as pending:  # accepted before the change: the old certificate, drained
            assert pending.getpeercert(binary_form=True) == certificate(files["first"])
            assert b"connection: close" in exchange(pending)
            assert pending.recv(1) == b""
        with socket.create_connection(address, timeout=WAIT) as fresh_raw, client.wrap_socket(fresh_raw) as fresh:
            assert fresh.getpeercert(binary_form=True) == certificate(files["second"])
            assert b"connection: close" not in exchange(fresh)
        for _ in range(3):  # the unchanged listener's connection: served on as before
            head = exchange(kept)
            assert head.startswith(b"http/1.1 200") and b"connection: close" not in head
    assert sorted(port for _, port in server.addresses) == sorted([plain.getsockname()[1], address[1]])


def certificate(path: Path) -> bytes:
    pem = path.read_text()
    start = pem.index("-----BEGIN CERTIFICATE-----")
    end = pem.index("-----END CERTIFICATE-----") + len("-----END CERTIFICATE-----")
    return ssl.PEM_cert_to_DER_cert(pem[start:end])


def apply_change(live: LiveServer, config: Config, **listeners: list[Any]) -> None:
    """Server.change_listeners(config, **listeners) on the server's loop, as a reload does; returns once done."""
    assert live.server is not None and live.loop is not None
    change = live.server.change_listeners(config, **listeners)
    asyncio.run_coroutine_threadsafe(change, live.loop).result(WAIT)


class Sessions:
    """What the app below saw: the close code each WebSocket session's app was told of (written on the
    server's loop, read from the test thread), and a gate the HTTP request to /slow waits at."""

    def __init__(self) -> None:
        self.gate = Gate()
        self.disconnects: list[int] = []

    def serve(
        self, serve_app: Callable[..., LiveServer], loop_kind: str, sockets: list[socket.socket], **config: Any
    ) -> LiveServer:
        """The app below served on `sockets`, whose connections are never idle for long enough to be closed
        during a test: the only GOAWAY or close a client sees is the drain's."""
        return serve_app(self.app, loop_kind=loop_kind, sockets=sockets, keep_alive_timeout=60 * WAIT, **config)

    async def app(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """HTTP: the path back as the body (/slow once the gate opens); WebSocket: every message echoed."""
        if scope["type"] == "http":
            if scope["path"] == "/slow":
                await self.gate.wait()
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": scope["path"].encode()})
        elif scope["type"] == "websocket":
            await receive()
            await send({"type": "websocket.accept"})
            while (message := await receive())["type"] != "websocket.disconnect":
                await send({"type": "websocket.send", "text": message.get("text")})
            self.disconnects.append(message["code"])


def listening(count: int) -> tuple[list[socket.socket], list[tuple[str, int]]]:
    """`count` listening sockets on loopback ports, and their addresses."""
    sockets = [socket.create_server(("127.0.0.1", 0)) for _ in range(count)]
    return sockets, [sock.getsockname() for sock in sockets]


def endpoint_urls(*addresses: tuple[str, int], scheme: str = "http") -> str:
    return ";".join(f"{scheme}://127.0.0.1:{port}" for _, port in addresses)


@contextmanager
def open_session(address: tuple[str, int]) -> Iterator[Any]:
    """A WebSocket session (the `websockets` client) on `address`, shown to echo."""
    with websockets_client.connect(f"ws://127.0.0.1:{address[1]}/", open_timeout=WAIT, close_timeout=WAIT) as session:
        assert echoes(session)
        yield session


def echoes(session: Any) -> bool:
    session.send("still here")
    return bool(session.recv(timeout=WAIT) == "still here")


def closed_with(session: Any) -> int | None:
    """The close code the server ends `session` with (None: the session is still open after WAIT)."""
    try:
        session.recv(timeout=WAIT)
    except ConnectionClosed:
        return int(session.close_code)
    except TimeoutError:
        return None
    raise AssertionError("a message arrived where a close was expected")


def drained_after(client: H2Client, sid: int, gate: Gate) -> list[Any]:
    """Asserts `client` got GOAWAY NO_ERROR naming `sid` as its last stream; then opens a stream after it and
    lets `sid` finish; returns the frames that followed the GOAWAY, until the server closed."""
    goaway = client.goaway()
    assert goaway is not None and (goaway.error_code, goaway.last_stream_id) == (ErrorCodes.NO_ERROR, sid)
    late = HeadersFrame(sid + 2, flags=("END_HEADERS", "END_STREAM"))  # h2 sends nothing after a GOAWAY
    late.data = head_block(b"/late")
    client.send_raw(late.serialize())
    gate.open()
    client.until(lambda e: False)  # h2 reads nothing after a GOAWAY: the frames are parsed here
    assert client.closed
    return parse_frames(client.after_goaway)


def test_a_changed_certificate_drains_an_http2_connection_and_finishes_its_stream_in_flight(
    serve_app: Callable[..., LiveServer],
    loop_kind: str,
    certificates: tuple[ssl.SSLContext, dict[str, Path]],
    h2_client: Callable[..., H2Client],
) -> None:
    context, files = certificates
    context.set_alpn_protocols(["h2"])
    sessions = Sessions()
    sockets, [address] = listening(1)
    first, second = (TlsOptions(ssl_certfile=str(files[name])) for name in ("first", "second"))
    live = sessions.serve(serve_app, loop_kind, sockets, urls=endpoint_urls(address, scheme="https"), tls=first)
    old = h2_client(address[1], context=context)
    assert isinstance(old.sock, ssl.SSLSocket) and old.sock.getpeercert(binary_form=True) == certificate(files["first"])
    sid = old.request("/slow")
    assert sessions.gate.reached.wait(WAIT)

    apply_change(live, live.config.replace(tls=second), change=[address])

    frames = drained_after(old, sid, sessions.gate)
    assert any(isinstance(f, DataFrame) and f.stream_id == sid and f.data == b"/slow" for f in frames)
    assert any(isinstance(f, DataFrame) and f.stream_id == sid and "END_STREAM" in f.flags for f in frames)
    late = [f.error_code for f in frames if isinstance(f, RstStreamFrame) and f.stream_id == sid + 2]
    assert late == [ErrorCodes.REFUSED_STREAM]
    new = h2_client(address[1], context=context)
    assert isinstance(new.sock, ssl.SSLSocket) and new.sock.selected_alpn_protocol() == "h2"
    assert new.sock.getpeercert(binary_form=True) == certificate(files["second"])
    assert new.response(new.request("/new"))[::2] == (200, b"/new")
    assert not any(isinstance(e, h2.events.ConnectionTerminated) for e in new.events)


def test_a_removed_listener_closes_its_websocket_session_as_a_graceful_shutdown_does(
    serve_app: Callable[..., LiveServer], loop_kind: str
) -> None:
    sessions = Sessions()
    sockets, [kept, removed] = listening(2)
    live = sessions.serve(serve_app, loop_kind, sockets, urls=endpoint_urls(kept, removed))
    with open_session(removed) as session:
        apply_change(live, live.config.replace(urls=endpoint_urls(kept)), stop=[removed])
        assert closed_with(session) == 1012  # service restart, as on a graceful shutdown (docs/websocket.md)
    assert wait_until(lambda: sessions.disconnects == [1012])  # the app was told, and finished
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(removed, timeout=WAIT).close()


def test_an_unchanged_listener_keeps_its_http2_connection_and_websocket_session(
    serve_app: Callable[..., LiveServer], loop_kind: str, h2_client: Callable[..., H2Client]
) -> None:
    sessions = Sessions()
    sockets, [kept, removed] = listening(2)
    live = sessions.serve(serve_app, loop_kind, sockets, urls=endpoint_urls(kept, removed))
    stays, goes = h2_client(kept[1]), h2_client(removed[1])  # HTTP/2 in cleartext, by prior knowledge
    assert stays.response(stays.request("/before"))[::2] == (200, b"/before")
    with open_session(kept) as session, open_session(removed) as leaving:
        apply_change(live, live.config.replace(urls=endpoint_urls(kept)), stop=[removed])

        assert goes.goaway() is not None and closed_with(leaving) == 1012  # the removed listener's: drained
        for path in ("/after", "/and-after"):  # the kept listener's: served on, over the same connections
            assert stays.response(stays.request(path))[::2] == (200, path.encode())
            assert echoes(session)
        assert not any(isinstance(e, h2.events.ConnectionTerminated) for e in stays.events)
    assert wait_until(lambda: sorted(sessions.disconnects) == [1000, 1012])


def test_a_cleartext_connection_that_turns_to_http2_after_the_drain_began_is_drained(
    serve_app: Callable[..., LiveServer],
    loop_kind: str,
    h2_client: Callable[..., H2Client],
    manual_clock: ManualClock,
) -> None:
    """Drained while it had said nothing yet, then the HTTP/2 preface (prior knowledge) within the LINGER
    timeout (the manual clock does not move): GOAWAY naming no stream, and the connection closes, as a
    graceful shutdown ends an HTTP/2 connection with no stream."""
    sessions = Sessions()
    sockets, [kept, removed] = listening(2)
    live = sessions.serve(serve_app, loop_kind, sockets, urls=endpoint_urls(kept, removed))
    late = h2_client(removed[1], preface=False)
    assert wait_until(lambda: len(live.connections()) == 1)  # accepted, and served as HTTP/1.1 so far
    apply_change(live, live.config.replace(urls=endpoint_urls(kept)), stop=[removed])
    late.h2.initiate_connection()
    late.flush()
    goaway = late.goaway()
    assert goaway is not None and (goaway.error_code, goaway.last_stream_id) == (ErrorCodes.NO_ERROR, 0)
    late.until(lambda e: False)
    assert late.closed  # the server's side is shut; it reads what is still coming until the client closes
    late.sock.close()
    assert wait_until(lambda: live.connections() == [])
