"""Endpoints of the config file served by real `kestrelpy` processes: each https endpoint presents its own
certificate (and its own SNI certificates), one without a certificate presents the server-wide one, and a
plain endpoint beside them stays plain, in one process and under a supervisor with two workers. Clients
are the ssl module and curl; certificates are made by trustme for each run."""

from __future__ import annotations

import shutil
import signal
import socket
import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import trustme
from cryptography.hazmat.primitives import serialization

from tests.support.process_log import Running, kestrelpy_in
from tests.support.tls_client import tls_get
from tests.support.waiting import WAIT, wait_until

APP = """\
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": scope["scheme"].encode()})
"""


@dataclass
class Pair:
    cert: Path
    key: Path

    def der(self) -> bytes:
        return ssl.PEM_cert_to_DER_cert(self.cert.read_text())


def write_pair(ca: trustme.CA, where: Path, *names: str) -> Pair:
    where.mkdir(parents=True, exist_ok=True)
    leaf = ca.issue_cert(*names)
    leaf.cert_chain_pems[0].write_to_path(str(where / "tls.crt"))
    leaf.private_key_pem.write_to_path(str(where / "tls.key"))
    return Pair(where / "tls.crt", where / "tls.key")


@pytest.fixture
def ca(tmp_path: Path) -> trustme.CA:
    authority = trustme.CA()
    authority.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    return authority


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start(tmp_path: Path, toml: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    (tmp_path / "epapp.py").write_text(APP)
    (tmp_path / "kestrelpy.toml").write_text(f'app = "epapp:app"\napp_dir = "{tmp_path}"\n{toml}')
    return kestrelpy_in(tmp_path, *args, env=env, stdout=subprocess.DEVNULL)


def presented(port: int, ca_file: Path, server_name: str | None = None) -> tuple[bytes, bytes]:
    """A new TLS connection verified against the CA: (the certificate presented as DER, the response body)."""
    context = ssl.create_default_context(cafile=str(ca_file))
    context.check_hostname = False
    der, data = tls_get(port, context, server_name)
    return der, data.partition(b"\r\n\r\n")[2]


def stop(proc: subprocess.Popen[str], server: Running) -> str:
    proc.send_signal(signal.SIGTERM)
    code, log = server.finish(WAIT)
    assert code == 0, log
    assert "Traceback" not in log
    return log


@pytest.mark.parametrize("workers", ["1", "2"])
def test_each_https_endpoint_presents_its_own_certificate(
    ca: trustme.CA, tmp_path: Path, procs: list[subprocess.Popen[str]], workers: str
) -> None:
    other_ca = trustme.CA()
    other_ca.cert_pem.write_to_path(str(tmp_path / "other-ca.pem"))
    server_wide = write_pair(ca, tmp_path / "default", "127.0.0.1")
    public = write_pair(ca, tmp_path / "public", "127.0.0.1")
    admin = write_pair(other_ca, tmp_path / "admin", "127.0.0.1")
    api = write_pair(ca, tmp_path / "api", "api.example.com")
    ports = {name: free_port() for name in ("public", "admin", "shared", "plain")}
    proc = start(
        tmp_path,
        f"""workers = {workers}
ssl_certfile = "{server_wide.cert}"
ssl_keyfile = "{server_wide.key}"

[endpoints.public]
url = "https://127.0.0.1:{ports["public"]}"
certificate = {{ path = "{public.cert}", key_path = "{public.key}" }}
sni."api.example.com" = {{ path = "{api.cert}", key_path = "{api.key}" }}

[endpoints.admin]
url = "https://127.0.0.1:{ports["admin"]}"
certificate = {{ path = "{admin.cert}", key_path = "{admin.key}" }}

[endpoints.shared]
url = "https://127.0.0.1:{ports["shared"]}"

[endpoints.plain]
url = "http://127.0.0.1:{ports["plain"]}"
""",
    )
    procs.append(proc)
    server = Running(proc)
    server.expect(rf"Listening on http://127\.0\.0\.1:{ports['plain']}")
    for name in ("public", "admin", "shared"):
        server.expect(rf"Listening on https://127\.0\.0\.1:{ports[name]}")
    for _ in range(4):  # new connections, which two workers share between them
        assert presented(ports["public"], tmp_path / "ca.pem") == (public.der(), b"https")
        assert presented(ports["public"], tmp_path / "ca.pem", "api.example.com") == (api.der(), b"https")
        assert presented(ports["admin"], tmp_path / "other-ca.pem") == (admin.der(), b"https")
        assert presented(ports["shared"], tmp_path / "ca.pem") == (server_wide.der(), b"https")
    assert httpx.get(f"http://127.0.0.1:{ports['plain']}/").text == "http"
    if shutil.which("curl") is not None:
        curl = subprocess.run(
            ["curl", "-sS", "--cacert", str(tmp_path / "other-ca.pem"), f"https://127.0.0.1:{ports['admin']}/"],
            capture_output=True,
            text=True,
            timeout=WAIT,
        )
        assert (curl.returncode, curl.stdout) == (0, "https"), curl.stderr
        refused = subprocess.run(  # the admin certificate is not from the public CA
            ["curl", "-sS", "--cacert", str(tmp_path / "ca.pem"), f"https://127.0.0.1:{ports['admin']}/"],
            capture_output=True,
            text=True,
            timeout=WAIT,
        )
        assert refused.returncode == 60, refused.stderr  # CURLE_PEER_FAILED_VERIFICATION
    stop(proc, server)


def test_an_endpoint_certificate_with_an_encrypted_key_takes_its_password_from_password_env(
    ca: trustme.CA, tmp_path: Path, procs: list[subprocess.Popen[str]]
) -> None:
    pair = write_pair(ca, tmp_path / "locked", "127.0.0.1")
    key = serialization.load_pem_private_key(pair.key.read_bytes(), None)
    pair.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"open sesame"),
        )
    )
    port = free_port()
    toml = f"""[endpoints.locked]
url = "https://127.0.0.1:{port}"
certificate = {{ path = "{pair.cert}", key_path = "{pair.key}", password_env = "LOCKED_KEY_PASSWORD" }}
"""
    proc = start(tmp_path, toml, env={"LOCKED_KEY_PASSWORD": "open sesame"})
    procs.append(proc)
    server = Running(proc)
    server.expect(rf"Listening on https://127\.0\.0\.1:{port}")
    assert presented(port, tmp_path / "ca.pem") == (pair.der(), b"https")
    log = stop(proc, server)
    assert "open sesame" not in log

    wrong = start(tmp_path, toml, env={"LOCKED_KEY_PASSWORD": "wrong"})
    _, err = wrong.communicate(timeout=WAIT)
    assert wrong.returncode == 2
    assert "KP-TLS-KEY-PASSWORD" in err and "[endpoints.locked]" in err
    assert "1. Check the variable that password_env names in [endpoints.locked]:" in err


def test_an_endpoint_certificate_replaced_on_disk_is_served_without_a_restart(
    ca: trustme.CA, tmp_path: Path, procs: list[subprocess.Popen[str]]
) -> None:
    first = write_pair(ca, tmp_path / "first", "127.0.0.1")
    second = write_pair(ca, tmp_path / "second", "127.0.0.1")
    live = tmp_path / "live"
    shutil.copytree(tmp_path / "first", live)
    port = free_port()
    proc = start(
        tmp_path,
        f"""ssl_watch_interval = 0.2
[endpoints.rotating]
url = "https://127.0.0.1:{port}"
certificate = {{ path = "{live / "tls.crt"}", key_path = "{live / "tls.key"}" }}
""",
    )
    procs.append(proc)
    server = Running(proc)
    server.expect(rf"Listening on https://127\.0\.0\.1:{port}")
    assert presented(port, tmp_path / "ca.pem")[0] == first.der()
    for name in ("tls.key", "tls.crt"):
        (live / f"{name}.new").write_bytes((tmp_path / "second" / name).read_bytes())
        (live / f"{name}.new").replace(live / name)
    server.expect(r"Serving the new certificate of \[endpoints\.rotating\] certificate")
    wait_until(lambda: presented(port, tmp_path / "ca.pem")[0] == second.der())
    stop(proc, server)


def test_a_certificate_on_an_http_endpoint_stops_the_start_with_the_exact_error(tmp_path: Path) -> None:
    proc = start(tmp_path, '[endpoints.web]\nurl = "http://127.0.0.1:8080"\ncertificate = { path = "c.pem" }\n')
    _, err = proc.communicate(timeout=WAIT)
    assert proc.returncode == 2
    assert err == (
        f"kestrelpy: error: {tmp_path / 'kestrelpy.toml'}:5: the non-HTTPS endpoint [endpoints.web] "
        "(http://127.0.0.1:8080) sets certificate, which only an https:// endpoint uses; make its url https:// "
        "or remove certificate\n"
    )


@pytest.mark.parametrize("workers", ["1", "2"])
def test_the_guard_names_the_endpoint_whose_certificate_is_missing(
    ca: trustme.CA, tmp_path: Path, workers: str
) -> None:
    good = write_pair(ca, tmp_path / "good", "127.0.0.1")
    proc = start(
        tmp_path,
        f"""workers = {workers}
[endpoints.good]
url = "https://127.0.0.1:{free_port()}"
certificate = {{ path = "{good.cert}", key_path = "{good.key}" }}

[endpoints.broken]
url = "https://127.0.0.1:{free_port()}"
certificate = {{ path = "{tmp_path / "missing.pem"}" }}
""",
    )
    _, err = proc.communicate(timeout=WAIT)
    assert proc.returncode == 2
    assert "KP-TLS-FILE-MISSING" in err
    assert f"[endpoints.broken] certificate.path {tmp_path / 'missing.pem'} does not exist." in err
    assert "([endpoints.broken]) will fail [KP-TLS-FILE-MISSING]\n" in err
    assert (
        '1. Give the path of the PEM file that exists, for example `path = "/etc/letsencrypt/live/NAME/fullchain.pem"` '
        "in the certificate of [endpoints.broken]" in err
    )
    assert "[endpoints.good]" not in err


def test_client_certificate_mode_applies_to_its_endpoint_only(
    ca: trustme.CA, tmp_path: Path, procs: list[subprocess.Popen[str]]
) -> None:
    server_pair = write_pair(ca, tmp_path / "server", "127.0.0.1")
    client_cert = ca.issue_cert("client@example.com")
    client_cert.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "client.pem"))
    ports = {"mtls": free_port(), "open": free_port()}
    proc = start(
        tmp_path,
        f"""ssl_certfile = "{server_pair.cert}"
ssl_keyfile = "{server_pair.key}"
ssl_ca_certs = "{tmp_path / "ca.pem"}"

[endpoints.mtls]
url = "https://127.0.0.1:{ports["mtls"]}"
client_certificate_mode = "required"

[endpoints.open]
url = "https://127.0.0.1:{ports["open"]}"
""",
    )
    procs.append(proc)
    server = Running(proc)
    for port in ports.values():
        server.expect(rf"Listening on https://127\.0\.0\.1:{port}")

    def get(port: int, with_certificate: bool) -> bytes:
        context = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
        if with_certificate:
            context.load_cert_chain(str(tmp_path / "client.pem"))
        return tls_get(port, context, "127.0.0.1")[1].partition(b"\r\n\r\n")[2]

    assert get(ports["mtls"], with_certificate=True) == b"https"
    try:  # TLS 1.3: the refusal may come as an alert, or as the connection closed, after the handshake
        refused = get(ports["mtls"], with_certificate=False)
    except (ssl.SSLError, ConnectionResetError):
        refused = b""
    assert refused == b""
    assert get(ports["open"], with_certificate=False) == b"https"
    stop(proc, server)
