"""HTTPS endpoints over real sockets: certificates made by trustme for each run, clients that verify them
(httpx, curl, openssl s_client), client certificates, the ASGI TLS extension, handshake faults."""

from __future__ import annotations

import gc
import json
import logging
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme
from cryptography import x509

from kestrelpy.config import TlsOptions
from kestrelpy.protocols.http11 import HttpConnection
from tests.support.live_server import LiveServer
from tests.support.process_log import wait_for_log_line
from tests.support.waiting import WAIT, wait_until

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Certs:
    ca: Path  # the CA that issued both certificates, as PEM
    cert: Path  # the server certificate (127.0.0.1, ::1, localhost)
    key: Path
    client: Path  # a client certificate with its key, in one PEM file
    client_name: str  # its subject, RFC 4514

    def options(self, **changes: Any) -> TlsOptions:
        return TlsOptions(ssl_certfile=str(self.cert), ssl_keyfile=str(self.key), **changes)

    def client_context(self, with_certificate: bool = False) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca))
        if with_certificate:
            context.load_cert_chain(str(self.client))
        return context


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    where = tmp_path_factory.mktemp("certs")
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "::1", "localhost")
    client = ca.issue_cert("client.example", common_name="alice, the tester", organization_name="Example Org")
    ca.cert_pem.write_to_path(str(where / "ca.pem"))
    server.cert_chain_pems[0].write_to_path(str(where / "cert.pem"))
    server.private_key_pem.write_to_path(str(where / "key.pem"))
    client.private_key_and_cert_chain_pem.write_to_path(str(where / "client.pem"))
    name = x509.load_pem_x509_certificate(client.cert_chain_pems[0].bytes()).subject.rfc4514_string()
    return Certs(where / "ca.pem", where / "cert.pem", where / "key.pem", where / "client.pem", name)


async def scope_app(scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
    """Answers with the scope's scheme and extensions as JSON."""
    if scope["type"] != "http":
        return
    body = json.dumps({"scheme": scope["scheme"], "extensions": scope.get("extensions", {})}).encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})


def https_get(live: LiveServer, context: ssl.SSLContext, index: int = 0) -> dict[str, Any]:
    assert live.server is not None
    host, port = live.server.addresses[index]
    with httpx.Client(verify=context, timeout=WAIT) as client:
        response = client.get(f"https://{host}:{port}/")
    assert response.status_code == 200
    result: dict[str, Any] = response.json()
    return result


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def closed_within(sock: socket.socket, seconds: float) -> bool:
    """Whether the peer closes `sock` within `seconds`, whatever it sends first (a TLS alert, say)."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            if not sock.recv(65536):
                return True
        except (ConnectionResetError, BrokenPipeError):
            return True
        except TimeoutError:
            return False
    return False


def problems(caplog: pytest.LogCaptureFixture) -> list[str]:
    """Log records a handshake failure must not cause: anything at WARNING or above, or with a traceback."""
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info]


# -- memory -----------------------------------------------------------------------------------------


def live_objects(kind: type) -> int:
    return sum(1 for obj in gc.get_objects() if isinstance(obj, kind))


def test_a_closed_tls_connection_frees_itself_and_its_ssl_state_without_waiting_for_the_gc(
    running_server: Callable[..., LiveServer], certs: Certs
) -> None:
    """A closed connection lets go of its transport (and with it the SSL object and buffers) at once. Held
    by the connection's own reference cycles, they waited for a full collection: about 3 MiB per 4,000
    handshakes on uvloop and 16 MiB on asyncio before that was fixed. The connection itself is freed by
    reference counting too, so closed connections cost the collector no work."""
    live = running_server(scope_app, tls=certs.options())
    context = certs.client_context()
    gc.collect()
    gc.disable()  # (process-wide: the server's thread too) only reference counting frees anything now
    try:
        before, connections_before = live_objects(ssl.SSLObject), live_objects(HttpConnection)
        for _ in range(30):
            with (
                socket.create_connection(("127.0.0.1", live.port), timeout=WAIT) as raw,
                context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
            ):
                tls.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                while tls.recv(65536):
                    pass
        assert wait_until(lambda: live.connections() == [])
        left = live_objects(ssl.SSLObject) - before
        connections_left = live_objects(HttpConnection) - connections_before
    finally:
        gc.enable()
    assert left <= 3, f"{left} SSL objects of closed connections are still alive"
    assert connections_left <= 3, f"{connections_left} closed connections are still alive"


# -- httpx on every parser and loop -----------------------------------------------------------------


def test_https_request_sees_scheme_and_tls_extension(running_server: Callable[..., LiveServer], certs: Certs) -> None:
    live = running_server(scope_app, tls=certs.options())
    seen = https_get(live, certs.client_context())
    assert seen["scheme"] == "https"
    tls = seen["extensions"]["tls"]
    assert tls["server_cert"] == certs.cert.read_text()
    assert tls["client_cert_chain"] == []
    assert tls["client_cert_name"] is None
    assert tls["client_cert_error"] is None
    assert tls["tls_version"] == 0x0304  # both ends default to TLS 1.3
    assert tls["cipher_suite"] in (0x1301, 0x1302, 0x1303)  # the TLS 1.3 suites OpenSSL enables


def test_tls_version_and_cipher_suite_of_a_tls12_connection(serve_app: Callable[..., LiveServer], certs: Certs) -> None:
    live = serve_app(scope_app, tls=certs.options())
    context = certs.client_context()
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers("ECDHE-ECDSA-AES128-GCM-SHA256")  # the server key is ECDSA (trustme's default)
    tls = https_get(live, context)["extensions"]["tls"]
    assert tls["tls_version"] == 0x0303
    assert tls["cipher_suite"] == 0xC02B  # TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, RFC 5289


# -- endpoints --------------------------------------------------------------------------------------


def test_plain_and_tls_endpoints_at_once(
    serve_app: Callable[..., LiveServer], certs: Certs, caplog: pytest.LogCaptureFixture
) -> None:
    plain_port = free_port()
    caplog.set_level(logging.INFO, logger="kestrelpy")
    # --host 127.0.0.1 --port 0 with a certificate is TLS; the http:// URL stays plain.
    live = serve_app(scope_app, tls=certs.options(), urls=f"http://127.0.0.1:{plain_port}")
    assert live.server is not None
    tls_port = live.server.addresses[0][1]
    assert https_get(live, certs.client_context(), 0)["scheme"] == "https"
    plain = httpx.get(f"http://127.0.0.1:{plain_port}/", timeout=WAIT).json()
    assert plain == {"scheme": "http", "extensions": {}}  # no tls extension on a plain connection
    log = caplog.text
    assert f"Listening on https://127.0.0.1:{tls_port}" in log
    assert f"Listening on http://127.0.0.1:{plain_port}" in log


@pytest.mark.parametrize("workers", ["1", "2"])
def test_curl_against_the_command_line_server(certs: Certs, tmp_path: Path, workers: str) -> None:
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    (tmp_path / "tlsapp.py").write_text(
        "async def app(scope, receive, send):\n"
        "    if scope['type'] != 'http':\n"
        "        return\n"
        "    body = scope['scheme'].encode()\n"
        "    await send({'type': 'http.response.start', 'status': 200, 'headers': []})\n"
        "    await send({'type': 'http.response.body', 'body': body})\n"
    )
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "kestrelpy",
            "tlsapp:app",
            "--app-dir",
            str(tmp_path),
            "--urls",
            "https://127.0.0.1:0",
            "--ssl-certfile",
            str(certs.cert),
            "--ssl-keyfile",
            str(certs.key),
            "--workers",
            workers,
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        port = int(wait_for_log_line(proc, r"Listening on https://127\.0\.0\.1:(\d+)"))
        result = subprocess.run(
            ["curl", "-sS", "--max-time", "10", "--cacert", str(certs.ca), f"https://127.0.0.1:{port}/"],
            capture_output=True,
            timeout=WAIT + 5,
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout == b"https"
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=WAIT)
    assert proc.returncode == 0
    assert b"Traceback" not in err


def test_websocket_over_tls_sees_wss_and_the_tls_extension(serve_app: Callable[..., LiveServer], certs: Certs) -> None:
    sync_client = pytest.importorskip("websockets.sync.client")

    async def ws_app(scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        if scope["type"] != "websocket":
            return
        await receive()
        await send({"type": "websocket.accept"})
        tls = scope["extensions"].get("tls", {})
        await send({"type": "websocket.send", "text": json.dumps([scope["scheme"], tls.get("tls_version")])})
        await send({"type": "websocket.close"})

    live = serve_app(ws_app, tls=certs.options())
    with sync_client.connect(f"wss://127.0.0.1:{live.port}/", ssl=certs.client_context(), open_timeout=WAIT) as ws:
        assert json.loads(ws.recv(timeout=WAIT)) == ["wss", 0x0304]


# -- versions ---------------------------------------------------------------------------------------


def s_client(port: int, *flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-brief", *flags],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=WAIT + 5,
    )


@pytest.fixture
def openssl() -> None:
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is not installed")


@pytest.mark.usefixtures("openssl")
def test_minimum_version_12_refuses_tls11_and_accepts_12_and_13(
    serve_app: Callable[..., LiveServer], certs: Certs
) -> None:
    live = serve_app(scope_app, tls=certs.options())
    # SECLEVEL=0 lets this client offer TLS 1.1 at all, so the refusal is the server's.
    old = s_client(live.port, "-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0")
    assert old.returncode != 0 and "Protocol version: TLSv1.1" not in old.stdout + old.stderr
    for flag, version in (("-tls1_2", "TLSv1.2"), ("-tls1_3", "TLSv1.3")):
        result = s_client(live.port, flag)
        assert result.returncode == 0, result.stderr
        assert f"Protocol version: {version}" in result.stdout + result.stderr


@pytest.mark.usefixtures("openssl")
def test_minimum_version_13_refuses_tls12(serve_app: Callable[..., LiveServer], certs: Certs) -> None:
    live = serve_app(scope_app, tls=certs.options(ssl_min_version="1.3"))
    refused = s_client(live.port, "-tls1_2")
    assert refused.returncode != 0
    assert "Protocol version: TLSv1.2" not in refused.stdout + refused.stderr
    assert s_client(live.port, "-tls1_3").returncode == 0


# -- client certificates ----------------------------------------------------------------------------


def test_required_client_certificate(serve_app: Callable[..., LiveServer], certs: Certs) -> None:
    live = serve_app(scope_app, tls=certs.options(ssl_ca_certs=str(certs.ca), ssl_cert_reqs="required"))
    tls = https_get(live, certs.client_context(with_certificate=True))["extensions"]["tls"]
    assert tls["client_cert_name"] == certs.client_name
    assert tls["client_cert_name"].startswith("CN=alice\\, the tester,")  # RFC 4514 escapes the comma
    client_pem = x509.load_pem_x509_certificate(certs.client.read_bytes())
    assert [x509.load_pem_x509_certificate(p.encode()) for p in tls["client_cert_chain"]][:1] == [client_pem]
    assert tls["client_cert_error"] is None
    with pytest.raises(httpx.TransportError):
        https_get(live, certs.client_context())  # no certificate: refused in the handshake
    assert https_get(live, certs.client_context(with_certificate=True))["scheme"] == "https"  # still serving


def test_optional_client_certificate(serve_app: Callable[..., LiveServer], certs: Certs) -> None:
    live = serve_app(scope_app, tls=certs.options(ssl_ca_certs=str(certs.ca), ssl_cert_reqs="optional"))
    assert https_get(live, certs.client_context())["extensions"]["tls"]["client_cert_name"] is None
    with_cert = https_get(live, certs.client_context(with_certificate=True))["extensions"]["tls"]
    assert with_cert["client_cert_name"] == certs.client_name


# -- faults -----------------------------------------------------------------------------------------


def test_a_silent_client_is_closed_at_the_handshake_timeout(
    serve_app: Callable[..., LiveServer], loop_kind: str, certs: Certs
) -> None:
    live = serve_app(scope_app, loop_kind=loop_kind, tls=certs.options(tls_handshake_timeout=0.5))
    with socket.create_connection(("127.0.0.1", live.port)) as silent:
        started = time.monotonic()
        # Well before the 5 s keep-alive timeout that would close a silent plain connection.
        assert closed_within(silent, 3.0)
        assert time.monotonic() - started >= 0.4


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(bytes(range(256)) * 4, id="garbage"),
        pytest.param(b"\x16\x03\x01\x00\x05\x01\x00\x00\x01\x00", id="broken-client-hello"),
    ],
)
def test_a_failed_handshake_closes_quietly_and_others_are_served(
    serve_app: Callable[..., LiveServer],
    loop_kind: str,
    certs: Certs,
    caplog: pytest.LogCaptureFixture,
    payload: bytes,
) -> None:
    caplog.set_level(logging.DEBUG)
    live = serve_app(scope_app, loop_kind=loop_kind, tls=certs.options())
    with socket.create_connection(("127.0.0.1", live.port)) as bad:
        bad.sendall(payload)
        bad.settimeout(WAIT)
        received = b""
        try:
            while chunk := bad.recv(65536):
                received += chunk
        except (ConnectionResetError, TimeoutError):
            pass
    assert not received.startswith(b"HTTP/")  # no HTTP answer on the TLS port
    assert https_get(live, certs.client_context())["scheme"] == "https"
    live.stop()
    assert problems(caplog) == []


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_plain_http_on_the_tls_port_gets_nginxs_400_and_is_closed(
    serve_app: Callable[..., LiveServer],
    loop_kind: str,
    certs: Certs,
    caplog: pytest.LogCaptureFixture,
    method: str,
) -> None:
    caplog.set_level(logging.DEBUG)
    live = serve_app(scope_app, loop_kind=loop_kind, tls=certs.options())
    with socket.create_connection(("127.0.0.1", live.port), timeout=WAIT) as plain:
        plain.sendall(f"{method} / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n\r\n".encode())
        answer = b""
        while not answer.endswith(b"HTTPS port\n") and (chunk := plain.recv(65536)):
            answer += chunk
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 400 Bad Request\r\n")
        assert b"\r\nConnection: close" in head and b"\r\nContent-Length: 46" in head
        assert body == b"The plain HTTP request was sent to HTTPS port\n"
        plain.shutdown(socket.SHUT_WR)  # as an HTTP client does after `connection: close`
        assert closed_within(plain, 2.0)  # well before the 10 s handshake timeout
    assert https_get(live, certs.client_context())["scheme"] == "https"
    live.stop()
    assert problems(caplog) == []


def test_a_refused_version_is_not_logged_as_an_error(
    serve_app: Callable[..., LiveServer], certs: Certs, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    live = serve_app(scope_app, tls=certs.options(ssl_min_version="1.3"))
    context = certs.client_context()
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises(httpx.TransportError):
        https_get(live, context)
    live.stop()
    assert problems(caplog) == []
