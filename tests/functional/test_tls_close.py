"""How a TLS connection ends, seen by a client that watches the TLS records itself (an SSLObject over a
raw socket): the server's clean close carries a close_notify alert (RFC 8446 section 6.1), so the client
can tell a complete response from a truncated one; and a client that drops the TCP connection without
one, mid-request, is an ordinary disconnect for the app and for the logs. On both event loops."""

from __future__ import annotations

import logging
import socket
import ssl
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trustme

from kestrelpy.config import TlsOptions
from tests.support.live_server import LiveServer
from tests.support.waiting import WAIT


class TlsClient:
    """A TLS client over a plain socket and memory BIOs: it sees whether the peer's stream ended with a
    close_notify, with a bare TCP FIN, or with a reset, which an ssl.SSLSocket would blur."""

    def __init__(self, port: int, context: ssl.SSLContext) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.tls = context.wrap_bio(self.incoming, self.outgoing, server_hostname="127.0.0.1")
        while True:
            try:
                self.tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self._flush()
                self._fill()
        self._flush()

    def _flush(self) -> None:
        if data := self.outgoing.read():
            self.sock.sendall(data)

    def _fill(self) -> None:
        data = self.sock.recv(65536)
        if data:
            self.incoming.write(data)
        else:
            self.incoming.write_eof()

    def send(self, data: bytes) -> None:
        self.tls.write(data)
        self._flush()

    def read_to_end(self) -> tuple[bytes, str]:
        """Everything the server sends, and how its stream ended: "close_notify", "eof" (TCP FIN without
        close_notify) or "reset"."""
        received = b""
        while True:
            try:
                chunk = self.tls.read(65536)
            except ssl.SSLWantReadError:
                try:
                    self._fill()
                except ConnectionResetError:
                    return received, "reset"
                continue
            except ssl.SSLEOFError:
                return received, "eof"
            if not chunk:  # the ssl module's answer to a received close_notify
                return received, "close_notify"
            received += chunk

    def unwrap(self) -> None:
        """Answer the server's close_notify with ours; raises unless the server's was received."""
        self.tls.unwrap()
        try:
            self._flush()
        except OSError:  # the server may have closed its socket already; the alert was still answered
            pass

    def drop(self) -> None:
        """Close the TCP connection without a close_notify."""
        self.sock.close()


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[TlsOptions, Path]:
    where = tmp_path_factory.mktemp("close-certs")
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1")
    ca.cert_pem.write_to_path(str(where / "ca.pem"))
    server.cert_chain_pems[0].write_to_path(str(where / "cert.pem"))
    server.private_key_pem.write_to_path(str(where / "key.pem"))
    return TlsOptions(ssl_certfile=str(where / "cert.pem"), ssl_keyfile=str(where / "key.pem")), where / "ca.pem"


def client_context(ca: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca))
    # A stream that ends without close_notify must show as one (OpenSSL 3 reports it as SSLEOFError).
    context.options &= ~getattr(ssl, "OP_IGNORE_UNEXPECTED_EOF", 0)
    return context


async def hello_app(scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"5")]})
    await send({"type": "http.response.body", "body": b"hello"})


def test_connection_close_ends_with_close_notify(
    serve_app: Callable[..., LiveServer], loop_kind: str, tls_files: tuple[TlsOptions, Path]
) -> None:
    options, ca = tls_files
    live = serve_app(hello_app, loop_kind=loop_kind, tls=options)
    client = TlsClient(live.port, client_context(ca))
    client.send(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
    received, ending = client.read_to_end()
    assert received.startswith(b"HTTP/1.1 200") and received.endswith(b"hello")
    assert ending == "close_notify"
    client.unwrap()
    client.drop()


def test_keep_alive_timeout_ends_with_close_notify(
    serve_app: Callable[..., LiveServer], loop_kind: str, tls_files: tuple[TlsOptions, Path]
) -> None:
    options, ca = tls_files
    live = serve_app(hello_app, loop_kind=loop_kind, tls=options, keep_alive_timeout=0.5)
    client = TlsClient(live.port, client_context(ca))
    client.send(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    received, ending = client.read_to_end()  # the response, then the idle connection's close
    assert received.startswith(b"HTTP/1.1 200") and received.endswith(b"hello")
    assert ending == "close_notify"
    client.unwrap()
    client.drop()


def test_a_client_gone_without_close_notify_is_a_quiet_disconnect(
    serve_app: Callable[..., LiveServer],
    loop_kind: str,
    tls_files: tuple[TlsOptions, Path],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)  # the root logger: kestrelpy's loggers and asyncio's propagate to it
    started = threading.Event()
    messages: list[str] = []
    disconnected = threading.Event()

    async def body_app(scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        if scope["type"] != "http":
            return
        while True:
            message = await receive()
            messages.append(message["type"])
            if message["type"] == "http.disconnect":
                disconnected.set()
                return
            started.set()

    options, ca = tls_files
    live = serve_app(body_app, loop_kind=loop_kind, tls=options)
    client = TlsClient(live.port, client_context(ca))
    client.send(b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000\r\n\r\n" + b"x" * 10)
    assert started.wait(WAIT), "the app never saw the first part of the body"
    client.drop()
    assert disconnected.wait(WAIT), f"the app was not told of the disconnect: {messages}"
    assert messages[0] == "http.request" and messages[-1] == "http.disconnect"
    live.stop()
    logged = [f"{r.name}: {r.getMessage()}" for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info]
    assert logged == []


def test_asyncio_logger_is_captured(caplog: pytest.LogCaptureFixture) -> None:
    """The quiet-disconnect check above would see an asyncio error: its logger reaches caplog."""
    caplog.set_level(logging.DEBUG)
    logging.getLogger("asyncio").error("probe")
    assert [r.name for r in caplog.records] == ["asyncio"]
