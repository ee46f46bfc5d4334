"""Server.change_listeners, the in-place half of a SIGHUP reload, on a real server and real sockets: a
listener whose certificate changed serves new connections with the new one on the same socket and drains
the ones made before, even one whose TLS handshake was still under way; a listener that did not change
keeps its keep-alive connections untouched."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from kestrelpy import platform
from kestrelpy.config import TlsOptions
from tests.support.live_server import LiveServer
from tests.support.waiting import WAIT, wait_until


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
    server, loop = live.server, live.loop
    assert server is not None and loop is not None
    with (
        probe,
        socket.create_connection(plain.getsockname(), timeout=WAIT) as kept,
        socket.create_connection(address, timeout=WAIT) as raw,
    ):
        assert exchange(kept).startswith(b"http/1.1 200")
        assert wait_until(lambda: platform.listen_queue_length(probe) == 0)  # `raw` is accepted, not handshaken
        changed = server.config.replace(tls=TlsOptions(ssl_certfile=str(files["second"])))
        asyncio.run_coroutine_threadsafe(server.change_listeners(changed, change=[address]), loop).result(WAIT)

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
