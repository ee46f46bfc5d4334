"""kestrelpy behind a real nginx that reaches it over TLS and verifies its certificate.

nginx proxies to https://127.0.0.1:PORT with proxy_ssl_verify on, the test's CA as the only trusted one
and a fixed upstream name (sent as SNI, checked against the certificate), on keep-alive upstream
connections. Requests through it reach the app as https with the TLS extension; a certificate from
another CA, or one for another name, makes nginx answer 502, so the verification is real.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme

from tests.support.interop import ROOT, Process, free_port, listening_urls, require_tool, wait_until_accepting, wrap
from tests.support.waiting import WAIT

# nginx stacks share one worker with tests/interop/test_nginx.py.
pytestmark = pytest.mark.xdist_group("nginx")

UPSTREAM_NAME = "app.internal"  # the name nginx expects on kestrelpy's certificate

TLS_ECHO_APP = """\
import json


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    tls = scope.get("extensions", {}).get("tls")
    body = json.dumps({"scheme": scope["scheme"], "client": scope["client"], "tls": tls}).encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})
"""


def site(port: int, ca: Path, trusted: int, rogue: int) -> str:
    """One nginx server: / to the kestrelpy with a certificate from the trusted CA, /rogue/ to one whose
    certificate another CA issued, /wrong-name/ to the first (on fresh connections) under a name its
    certificate lacks."""
    verify = (
        "        proxy_http_version 1.1;\n"
        '        proxy_set_header Connection "";\n'
        "        proxy_ssl_verify on;\n"
        f"        proxy_ssl_trusted_certificate {ca};\n"
        "        proxy_ssl_server_name on;\n"
    )
    return (
        f"    upstream trusted {{\n        server 127.0.0.1:{trusted};\n        keepalive 4;\n    }}\n"
        f"    upstream rogue {{\n        server 127.0.0.1:{rogue};\n    }}\n"
        # Its own upstream: connections kept alive for "trusted" were verified under the right name.
        f"    upstream misnamed {{\n        server 127.0.0.1:{trusted};\n    }}\n"
        "    server {\n"
        f"        listen 127.0.0.1:{port};\n"
        f"        location / {{\n{verify}        proxy_ssl_name {UPSTREAM_NAME};\n"
        "            proxy_pass https://trusted;\n        }\n"
        f"        location /rogue/ {{\n{verify}        proxy_ssl_name {UPSTREAM_NAME};\n"
        "            proxy_pass https://rogue;\n        }\n"
        f"        location /wrong-name/ {{\n{verify}        proxy_ssl_name other.internal;\n"
        "            proxy_pass https://misnamed;\n        }\n"
        "    }\n"
    )


@dataclass
class TlsStack:
    work: Path
    port: int  # nginx, plain HTTP
    cert: Path  # the trusted kestrelpy's certificate

    def get(self, path: str) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=WAIT)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    @property
    def error_log(self) -> str:
        return (self.work / "error.log").read_text(errors="replace")


def issue(ca: trustme.CA, where: Path, stem: str) -> tuple[Path, Path]:
    issued = ca.issue_cert(UPSTREAM_NAME)
    cert, key = where / f"{stem}-cert.pem", where / f"{stem}-key.pem"
    issued.cert_chain_pems[0].write_to_path(str(cert))
    issued.private_key_pem.write_to_path(str(key))
    return cert, key


def start_kestrelpy(work: Path, cert: Path, key: Path) -> Process:
    argv = [sys.executable, "-m", "kestrelpy", "tlsecho:app", "--app-dir", str(work), "--no-access-log"]
    argv += ["--urls", "https://127.0.0.1:0", "--ssl-certfile", str(cert), "--ssl-keyfile", str(key)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("LISTEN_")}
    return Process(argv, env=env, cwd=ROOT)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsStack]:
    nginx = require_tool("nginx", "nginx")
    work = tmp_path_factory.mktemp("nginx-tls")
    (work / "tlsecho.py").write_text(TLS_ECHO_APP)
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(work / "ca.pem"))
    trusted_pair = issue(ca, work, "trusted")
    rogue_pair = issue(trustme.CA(), work, "rogue")  # same name, a CA nginx does not know
    servers = [start_kestrelpy(work, *trusted_pair), start_kestrelpy(work, *rogue_pair)]
    try:
        trusted, rogue = (int(listening_urls(server)[0].rsplit(":", 1)[1]) for server in servers)
        port = free_port()
        (work / "nginx.conf").write_text(wrap(site(port, work / "ca.pem", trusted, rogue), work))
        conf = ["-p", str(work), "-e", str(work / "error.log"), "-c", str(work / "nginx.conf")]
        check = subprocess.run([nginx, "-t", *conf], capture_output=True, text=True, timeout=30, check=False)
        assert check.returncode == 0, check.stderr
        with Process([nginx, *conf]) as proxy:
            try:
                wait_until_accepting(port, proxy)
                yield TlsStack(work, port, trusted_pair[0])
            finally:
                proxy.signal(signal.SIGQUIT)
                try:
                    proxy.proc.wait(10)
                except subprocess.TimeoutExpired:
                    pass
        for server in servers:
            assert server.stop() == 0, server.output
            assert "Traceback" not in server.output, server.output
    finally:
        for server in servers:
            server.__exit__()


def test_requests_reach_the_app_over_verified_tls(stack: TlsStack) -> None:
    status, body = stack.get("/")
    assert status == 200, (body, stack.error_log)
    seen = json.loads(body)
    assert seen["scheme"] == "https"
    tls = seen["tls"]
    assert tls is not None and tls["server_cert"] == stack.cert.read_text()
    assert tls["tls_version"] in (0x0303, 0x0304)
    assert isinstance(tls["cipher_suite"], int)


def test_nginx_keeps_its_tls_connections_to_kestrelpy_alive(stack: TlsStack) -> None:
    ports = set()
    for _ in range(10):  # a new client connection each time: only nginx can keep one alive
        status, body = stack.get("/")
        assert status == 200, body
        ports.add(json.loads(body)["client"][1])
    # one nginx worker making sequential requests: one upstream connection (a spare at most)
    assert len(ports) <= 2, f"{len(ports)} upstream TLS connections for 10 requests"


def test_a_certificate_from_an_unknown_ca_is_a_502(stack: TlsStack) -> None:
    status, _ = stack.get("/rogue/")
    assert status == 502
    assert "upstream SSL certificate verify error" in stack.error_log


def test_a_certificate_for_another_name_is_a_502(stack: TlsStack) -> None:
    status, _ = stack.get("/wrong-name/")
    assert status == 502
    assert "does not match" in stack.error_log
    assert stack.get("/")[0] == 200  # the trusted route still works


def test_the_docs_snippet_is_the_tested_config() -> None:
    docs = (ROOT / "docs" / "tls.md").read_text()
    section = docs[docs.index("## Behind nginx over TLS") :]
    start = section.index("```nginx") + len("```nginx")
    snippet = section[start : section.index("```", start)]
    tested = {" ".join(line.split()) for line in site(1, Path("/ca.pem"), 2, 3).splitlines()}
    for line in snippet.splitlines():
        directive = " ".join(line.split("#")[0].split())
        # addresses, paths and the pool size are the reader's own
        if directive.endswith(";") and not directive.startswith(("server ", "proxy_ssl_trusted", "keepalive ")):
            assert directive.replace("https://kestrelpy", "https://trusted") in tested, directive
