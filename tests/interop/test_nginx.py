"""kestrelpy behind a real nginx, running deploy/nginx.conf, over a TCP and over a Unix-socket upstream.

The test starts nginx itself on loopback ports with a config generated from deploy/nginx.conf (only the
listen addresses and the upstream address are replaced; TLS is added on a second port so the scheme
check has something to see). The client connects from 127.0.0.2, which kestrelpy does not trust, so
a forged X-Forwarded-For from it must not win.

kestrelpy gets its listening socket from the test (fd://N), as systemd socket activation would give
it: that is what lets kestrelpy restart behind nginx without one 502.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support.interop import (
    ROOT,
    Process,
    free_port,
    kestrelpy,
    listening_urls,
    require_tool,
    wait_until_accepting,
    wrap,
)
from tests.support.waiting import wait_until

# One worker runs them all, so each nginx + kestrelpy stack (a module-scoped fixture) starts once.
pytestmark = pytest.mark.xdist_group("nginx")

DEPLOY_CONF = ROOT / "deploy" / "nginx.conf"
CLIENT_IP = "127.0.0.2"  # a loopback address kestrelpy is told not to trust
TRUSTED = "127.0.0.1,unix"  # nginx reaches kestrelpy from 127.0.0.1 or over the Unix socket


def derive_config(conf: str, *, upstream: str, port: int, tls: tuple[int, Path, Path] | None) -> str:
    """deploy/nginx.conf with loopback listen addresses and the test's upstream; fails if its shape changed."""
    upstream_lines = re.compile(r"^[ \t]*#?[ \t]*server (?:127\.0\.0\.1:8000|unix:\S+);.*\n", re.M)
    assert len(upstream_lines.findall(conf)) == 2, "deploy/nginx.conf should show a TCP and a Unix upstream"
    conf = upstream_lines.sub("", conf)
    conf = conf.replace("upstream kestrelpy {\n", f"upstream kestrelpy {{\n    server {upstream};\n", 1)
    listen = f"    listen 127.0.0.1:{port};\n"
    if tls is not None:
        tls_port, cert, key = tls
        listen += f"    listen 127.0.0.1:{tls_port} ssl;\n    ssl_certificate {cert};\n    ssl_certificate_key {key};\n"
    for line, replacement in (("    listen 80;\n", listen), ("    listen [::]:80;\n", "")):
        assert line in conf, f"deploy/nginx.conf no longer has {line.strip()!r}"
        conf = conf.replace(line, replacement, 1)
    return conf


def self_signed(work: Path) -> tuple[Path, Path] | None:
    openssl = shutil.which("openssl")
    if openssl is None:
        return None
    cert, key = work / "cert.pem", work / "key.pem"
    subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key


@dataclass
class Stack:
    kind: str
    work: Path
    listener: socket.socket
    port: int  # nginx, plain HTTP
    tls_port: int | None
    server: Process
    history: list[Process] = field(default_factory=list)

    def start_kestrelpy(self) -> Process:
        fd = self.listener.fileno()
        server = kestrelpy("--bind", f"fd://{fd}", "--forwarded-allow-ips", TRUSTED, "--no-access-log", pass_fds=(fd,))
        listening_urls(server)
        self.history.append(server)
        return server

    def connection(self, timeout: float = 20) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout, source_address=(CLIENT_IP, 0))

    def kestrelpy_connections(self) -> set[str]:
        """Inodes of the connections kestrelpy has accepted (server side), from /proc/net."""
        if self.kind == "unix":
            path = self.listener.getsockname()
            rows = Path("/proc/net/unix").read_text().splitlines()[1:]
            return {r.split()[6] for r in rows if r.split()[-1] == path and r.split()[5] == "03"}
        port = f"{self.listener.getsockname()[1]:04X}"
        found = set()
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            for row in Path(table).read_text().splitlines()[1:]:
                cols = row.split()
                if cols[1].endswith(f":{port}") and cols[3] == "01":
                    found.add(cols[9])
        return found


@pytest.fixture(scope="module", params=["tcp", "unix"])
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    nginx = require_tool("nginx", "nginx")
    try:
        with socket.create_connection((CLIENT_IP, 9), timeout=1):
            pass
    except ConnectionRefusedError:
        pass
    except OSError as exc:
        pytest.skip(f"{CLIENT_IP} is not usable as a client address here: {exc}")
    work = tmp_path_factory.mktemp(f"nginx-{request.param}")
    if request.param == "unix":
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(work / "kestrelpy.sock"))
        upstream = f"unix:{work / 'kestrelpy.sock'}"
    else:
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        upstream = f"127.0.0.1:{listener.getsockname()[1]}"
    listener.listen(128)
    pair = self_signed(work)
    port = free_port()
    tls = (free_port(), *pair) if pair else None
    site = derive_config(DEPLOY_CONF.read_text(), upstream=upstream, port=port, tls=tls)
    (work / "nginx.conf").write_text(wrap(site, work))
    check = subprocess.run(
        [nginx, "-t", "-p", str(work), "-e", str(work / "error.log"), "-c", str(work / "nginx.conf")],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert check.returncode == 0, check.stderr
    with Process([nginx, "-p", str(work), "-e", str(work / "error.log"), "-c", str(work / "nginx.conf")]) as proxy:
        stack = Stack(request.param, work, listener, port, tls[0] if tls else None, None)  # type: ignore[arg-type]
        try:
            stack.server = stack.start_kestrelpy()
            wait_until_accepting(port, proxy)
            yield stack
        finally:
            for server in stack.history:
                if server.proc.poll() is None:
                    server.stop()
                server.__exit__()
            proxy.signal(signal.SIGQUIT)
            try:
                proxy.proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
            listener.close()


def get_json(conn: http.client.HTTPConnection, path: str, headers: dict[str, str] | None = None) -> dict[str, object]:
    conn.request("GET", path, headers=headers or {})
    response = conn.getresponse()
    body = response.read()
    assert response.status == 200, (response.status, body)
    return json.loads(body)


def test_client_address_and_scheme_as_the_app_sees_them(stack: Stack) -> None:
    conn = stack.connection()
    seen = get_json(
        conn,
        "/whoami",
        {"Host": "shop.example", "X-Forwarded-For": "6.6.6.6", "X-Forwarded-Proto": "https"},
    )
    assert (seen["client"], seen["scheme"]) == ([CLIENT_IP, 0], "http")
    seen = get_json(conn, "/whoami", {"Forwarded": "for=6.6.6.6;proto=https;host=evil.example"})
    assert (seen["client"], seen["scheme"], seen["host"]) == ([CLIENT_IP, 0], "http", "127.0.0.1")
    seen = get_json(
        conn,
        "/whoami",
        {"Host": "shop.example", "X-Forwarded-For": "6.6.6.6", "X-Forwarded-Proto": "https"},
    )
    conn.close()
    # nginx appended the real peer (127.0.0.2) to the forged entry; only the real one is believed
    assert seen["client"] == [CLIENT_IP, 0]
    assert seen["scheme"] == "http"  # nginx overwrote the forged proto with the real one
    assert seen["host"] == "shop.example"
    if stack.tls_port is None:
        pytest.skip("openssl is missing: the https half of this check did not run")
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    tls = http.client.HTTPSConnection(
        "127.0.0.1", stack.tls_port, timeout=20, context=context, source_address=(CLIENT_IP, 0)
    )
    seen = get_json(tls, "/whoami", {"Host": "shop.example"})
    tls.close()
    assert seen["scheme"] == "https" and seen["client"] == [CLIENT_IP, 0]


def test_nginx_reuses_its_connections_to_kestrelpy(stack: Stack) -> None:
    seen: set[str] = set()
    for _ in range(20):
        conn = stack.connection()  # a new client connection each time: only nginx can keep one alive
        assert get_json(conn, "/whoami")["client"] == [CLIENT_IP, 0]
        conn.close()
        now = stack.kestrelpy_connections()
        assert now, "kestrelpy holds no connection from nginx between requests: keep-alive is off"
        seen |= now
    # one nginx worker making sequential requests: one upstream connection (a spare at most)
    assert len(seen) <= 2, f"{len(seen)} upstream connections for 20 requests"


def test_20_mib_upload(stack: Stack) -> None:
    body = os.urandom(1024 * 1024) * 20
    conn = stack.connection(timeout=60)
    conn.request("POST", "/upload", body=body, headers={"Content-Type": "application/octet-stream"})
    response = conn.getresponse()
    result = json.loads(response.read())
    conn.close()
    assert response.status == 200
    assert result == {"length": len(body), "sha256": hashlib.sha256(body).hexdigest()}


def test_streamed_response_arrives_incrementally(stack: Stack, tmp_path: Path) -> None:
    gate = tmp_path / "release"
    with socket.create_connection(("127.0.0.1", stack.port), timeout=10, source_address=(CLIENT_IP, 0)) as sock:
        sock.sendall(f"GET /stream?{gate} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        received = b""
        while b"first" not in received:  # the app holds "last" back until the gate file exists
            chunk = sock.recv(65536)
            assert chunk, received
            received += chunk
        assert b"last" not in received
        gate.touch()
        while chunk := sock.recv(65536):
            received += chunk
    assert received.startswith(b"HTTP/1.1 200") and b"last" in received


def test_restart_behind_nginx_without_a_single_502(stack: Stack) -> None:
    results: list[tuple[int, int]] = []  # (status, pid)
    errors: list[str] = []
    stop = threading.Event()

    def hammer() -> None:
        conn = stack.connection()
        while not stop.is_set():
            try:
                conn.request("GET", "/whoami")
                response = conn.getresponse()
                body = response.read()
                results.append((response.status, json.loads(body)["pid"] if response.status == 200 else 0))
            except Exception as exc:  # any failure counts
                errors.append(repr(exc))
                conn.close()
                conn = stack.connection()
        conn.close()

    old = stack.server
    threads = [threading.Thread(target=hammer) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        served_before = wait_until(lambda: sum(1 for _, pid in results if pid == old.pid) >= 20, 30)
        assert served_before, "timed out: requests served before the restart"
        assert old.stop() == 0  # like `systemctl restart`: the old process is gone before the new one starts
        new = stack.start_kestrelpy()
        stack.server = new
        served_after = wait_until(lambda: sum(1 for _, pid in results if pid == new.pid) >= 20, 30)
        assert served_after, "timed out: requests served after the restart"
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    statuses = {status for status, _ in results}
    assert errors == [] and statuses == {200}, (errors, statuses)
    assert {pid for _, pid in results} == {old.pid, new.pid}
    not_ok = sum(1 for status, _ in results if status != 200)
    print(f"restart behind nginx ({stack.kind}): {len(results)} requests, {len(errors)} failed, {not_ok} not 200")


def test_readme_nginx_snippet_is_the_tested_config() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Behind nginx") :]
    snippet = section[section.index("```nginx") + len("```nginx") : section.index("```", section.index("```nginx") + 8)]
    deployed = {" ".join(line.split("#")[0].split()) for line in DEPLOY_CONF.read_text().splitlines()}
    for line in snippet.splitlines():
        directive = " ".join(line.split("#")[0].split())
        if directive and directive.endswith(";") and not directive.startswith(("map ", "server unix:")):
            assert directive in deployed, f"README shows {directive!r}, which deploy/nginx.conf does not have"
