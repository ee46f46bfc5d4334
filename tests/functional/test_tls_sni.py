"""Certificates chosen by server name (SNI) and certificates replaced on disk while the server runs, over
real sockets: certificates made by trustme for each run, clients that ask for a name (the ssl module,
curl --resolve) and compare the certificate they are served, and the ASGI TLS extension's `server_cert`."""

from __future__ import annotations

import datetime
import json
import logging
import os
import shutil
import signal
import ssl
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trustme

from kestrelpy.config import TlsOptions
from tests.support.live_server import LiveServer
from tests.support.process_log import wait_for_log_line
from tests.support.tls_client import tls_get
from tests.support.waiting import WAIT, wait_until


@dataclass
class Pair:
    cert: Path
    key: Path

    def pem(self) -> str:
        return self.cert.read_text()


def write_pair(ca: trustme.CA, where: Path, *names: str, **issue: Any) -> Pair:
    where.mkdir(parents=True, exist_ok=True)
    leaf = ca.issue_cert(*names, **issue)
    leaf.cert_chain_pems[0].write_to_path(str(where / "tls.crt"))
    leaf.private_key_pem.write_to_path(str(where / "tls.key"))
    return Pair(where / "tls.crt", where / "tls.key")


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def ca_file(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path


async def server_cert_app(scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
    """Answers with the ASGI TLS extension's server_cert."""
    if scope["type"] != "http":
        return
    body = json.dumps(scope["extensions"]["tls"]["server_cert"]).encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})


@dataclass
class Served:
    cert: str  # the certificate the handshake presented, as PEM
    extension: str  # what the app saw as server_cert


def fetch(live: LiveServer, ca_file: Path, server_name: str | None, check_hostname: bool = True) -> Served:
    """One connection asking for `server_name` (None: no SNI), verified against the CA; one request on it."""
    context = ssl.create_default_context(cafile=str(ca_file))
    context.check_hostname = check_hostname and server_name is not None
    der, data = tls_get(live.port, context, server_name)
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    return Served(ssl.DER_cert_to_PEM_cert(der), json.loads(body))


def same_cert(pem_a: str, pem_b: str) -> bool:
    return ssl.PEM_cert_to_DER_cert(pem_a) == ssl.PEM_cert_to_DER_cert(pem_b)


def assert_served(served: Served, pair: Pair) -> None:
    assert same_cert(served.cert, pair.pem()), "another certificate was presented"
    assert same_cert(served.extension, pair.pem()), "server_cert is not the certificate presented"


# -- SNI --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sni_pairs(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Pair]:
    where = tmp_path_factory.mktemp("sni")
    return {
        "default": write_pair(ca, where / "default", "127.0.0.1", "localhost"),
        "exact": write_pair(ca, where / "exact", "app.example.com"),
        "wild": write_pair(ca, where / "wild", "*.example.com", "*.b.example.com"),
        "longer": write_pair(ca, where / "longer", "*.eu.example.com"),
        "any": write_pair(ca, where / "any", "other.test"),
    }


def sni_options(pairs: dict[str, Pair], *, catch_all: bool = False, **changes: Any) -> TlsOptions:
    given = [("App.Example.COM", "exact"), ("*.example.com", "wild"), ("*.eu.example.com", "longer")]
    if catch_all:
        given.append(("*", "any"))
    return TlsOptions(
        ssl_certfile=str(pairs["default"].cert),
        ssl_keyfile=str(pairs["default"].key),
        ssl_sni=tuple((name, str(pairs[key].cert), str(pairs[key].key)) for name, key in given),
        **changes,
    )


# (name the client asks for, certificate it must get, whether that certificate names it) under sni_options().
NAME_CASES = [
    ("app.example.com", "exact", True),  # the exact name wins over the wildcard that also matches
    ("APP.example.com", "exact", True),  # names compare case-insensitively
    ("www.example.com", "wild", True),
    ("www.eu.example.com", "longer", True),  # the longer wildcard, not *.example.com
    ("unknown.test", "default", False),  # a name nothing matches gets --ssl-certfile
    ("a.b.example.com", "wild", True),  # any depth, as in Kestrel (this certificate names *.b.example.com)
    ("a.www.eu.example.com", "longer", False),  # the longest wildcard that matches, at any depth
    ("example.com", "default", False),
]


def test_the_certificate_served_follows_the_name_asked_for(
    running_server: Callable[..., LiveServer], ca_file: Path, sni_pairs: dict[str, Pair]
) -> None:
    live = running_server(server_cert_app, tls=sni_options(sni_pairs))
    for server_name, expected, verifies in NAME_CASES:
        served = fetch(live, ca_file, server_name, check_hostname=verifies)
        assert same_cert(served.cert, sni_pairs[expected].pem()), (server_name, expected)
        assert same_cert(served.extension, sni_pairs[expected].pem()), (server_name, "server_cert")


def test_a_client_without_a_name_gets_the_default_certificate(
    serve_app: Callable[..., LiveServer], ca_file: Path, sni_pairs: dict[str, Pair]
) -> None:
    live = serve_app(server_cert_app, tls=sni_options(sni_pairs, catch_all=True))
    assert_served(fetch(live, ca_file, None), sni_pairs["default"])


def test_star_serves_the_names_nothing_else_matches(
    serve_app: Callable[..., LiveServer], ca_file: Path, sni_pairs: dict[str, Pair]
) -> None:
    live = serve_app(server_cert_app, tls=sni_options(sni_pairs, catch_all=True))
    assert_served(fetch(live, ca_file, "unknown.test", check_hostname=False), sni_pairs["any"])
    assert_served(fetch(live, ca_file, "app.example.com"), sni_pairs["exact"])


def test_curl_resolving_a_name_to_the_server_verifies_its_certificate(
    serve_app: Callable[..., LiveServer], ca_file: Path, sni_pairs: dict[str, Pair]
) -> None:
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    live = serve_app(server_cert_app, tls=sni_options(sni_pairs))
    for name, expected in (("app.example.com", "exact"), ("img.eu.example.com", "longer")):
        result = subprocess.run(
            [
                "curl",
                "-sS",
                "--max-time",
                "10",
                "--cacert",
                str(ca_file),
                "--resolve",
                f"{name}:{live.port}:127.0.0.1",
                f"https://{name}:{live.port}/",
            ],
            capture_output=True,
            text=True,
            timeout=WAIT,
            check=False,
        )
        assert result.returncode == 0, result.stderr  # curl checks the certificate names `name`
        assert same_cert(json.loads(result.stdout), sni_pairs[expected].pem())


# -- rotation ---------------------------------------------------------------------------------------


class SecretMount:
    """A directory laid out as Kubernetes mounts a secret: `..<stamp>/` holds the files, `..data` points at
    the current one, and `tls.crt`/`tls.key` point through `..data`. An update swaps `..data` in one rename."""

    def __init__(self, root: Path, ca: trustme.CA) -> None:
        self.root = root
        self.ca = ca
        root.mkdir()
        self.cert = root / "tls.crt"
        self.key = root / "tls.key"

    def publish(self, stamp: str, *names: str, key_from: Pair | None = None, **issue: Any) -> Pair:
        """A new certificate for `names` (with the key of `key_from` instead of its own, when given)."""
        pair = write_pair(self.ca, self.root / f"..{stamp}", *names, **issue)
        if key_from is not None:
            shutil.copyfile(key_from.key, pair.key)
        swap = self.root / "..data_tmp"
        swap.symlink_to(f"..{stamp}")
        os.replace(swap, self.root / "..data")
        for link in (self.cert, self.key):
            if not link.is_symlink():
                link.symlink_to(f"..data/{link.name}")
        return pair


ROTATION_POLL = 0.05  # --ssl-watch-interval in these tests
SETTLE = 0.5  # ten polls: time enough for a change that is not taken to be logged more than once


def rotation_errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR and r.name.startswith("kestrelpy")]


def serves(live: LiveServer, ca_file: Path, pair: Pair, server_name: str | None = None) -> bool:
    served = fetch(live, ca_file, server_name, check_hostname=False)
    return same_cert(served.cert, pair.pem()) and same_cert(served.extension, pair.pem())


def test_a_swapped_secret_is_served_to_new_connections(
    running_server: Callable[..., LiveServer], ca: trustme.CA, ca_file: Path, tmp_path: Path
) -> None:
    mount = SecretMount(tmp_path / "secret", ca)
    first = mount.publish("2026_a", "127.0.0.1")
    options = TlsOptions(ssl_certfile=str(mount.cert), ssl_keyfile=str(mount.key), ssl_watch_interval=ROTATION_POLL)
    live = running_server(server_cert_app, tls=options)
    assert serves(live, ca_file, first)
    second = mount.publish("2026_b", "127.0.0.1", common_name="second")
    assert wait_until(lambda: serves(live, ca_file, second), timeout=2.0)


def test_a_swapped_sni_secret_is_served_to_its_name(
    serve_app: Callable[..., LiveServer], ca: trustme.CA, ca_file: Path, tmp_path: Path
) -> None:
    default = write_pair(ca, tmp_path / "default", "127.0.0.1")
    mount = SecretMount(tmp_path / "secret", ca)
    first = mount.publish("2026_a", "api.example.com")
    options = TlsOptions(
        ssl_certfile=str(default.cert),
        ssl_keyfile=str(default.key),
        ssl_sni=(("api.example.com", str(mount.cert), str(mount.key)),),
        ssl_watch_interval=ROTATION_POLL,
    )
    live = serve_app(server_cert_app, tls=options)
    assert serves(live, ca_file, first, "api.example.com")
    second = mount.publish("2026_b", "api.example.com", common_name="second")
    assert wait_until(lambda: serves(live, ca_file, second, "api.example.com"), timeout=2.0)
    assert serves(live, ca_file, default)  # the other certificates are left as they were


@pytest.mark.parametrize("fault", ["key of another certificate", "expired", "not PEM"])
def test_a_broken_new_secret_keeps_the_old_certificate_and_is_logged_once(
    serve_app: Callable[..., LiveServer],
    ca: trustme.CA,
    ca_file: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    fault: str,
) -> None:
    mount = SecretMount(tmp_path / "secret", ca)
    first = mount.publish("2026_a", "127.0.0.1")
    options = TlsOptions(ssl_certfile=str(mount.cert), ssl_keyfile=str(mount.key), ssl_watch_interval=ROTATION_POLL)
    live = serve_app(server_cert_app, tls=options)
    caplog.set_level(logging.INFO, logger="kestrelpy")
    if fault == "key of another certificate":
        mount.publish("2026_b", "127.0.0.1", key_from=write_pair(ca, tmp_path / "other", "127.0.0.1"))
    elif fault == "expired":
        now = datetime.datetime.now(datetime.timezone.utc)
        mount.publish("2026_b", "127.0.0.1", not_before=now - datetime.timedelta(days=2), not_after=now)
    else:
        broken = mount.publish("2026_b", "127.0.0.1")
        broken.cert.write_text("not a certificate\n")
    assert wait_until(lambda: len(rotation_errors(caplog)) > 0, timeout=2.0)
    wait_until(lambda: False, timeout=SETTLE)  # more polls see the same broken files
    assert serves(live, ca_file, first)
    errors = rotation_errors(caplog)
    assert len(errors) == 1, errors
    assert str(mount.cert) in errors[0]
    assert "keeping the old one" in errors[0]
    # Fixed: the next good certificate is taken.
    third = mount.publish("2026_c", "127.0.0.1", common_name="third")
    assert wait_until(lambda: serves(live, ca_file, third), timeout=2.0)


PID_APP = """\
import os


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": str(os.getpid()).encode()})
"""


def served_by(port: int, ca_file: Path) -> tuple[int, str]:
    """(the worker's pid, the certificate it presented) for one new connection."""
    context = ssl.create_default_context(cafile=str(ca_file))
    context.check_hostname = False
    der, data = tls_get(port, context, None)
    return int(data.partition(b"\r\n\r\n")[2]), ssl.DER_cert_to_PEM_cert(der)


def certificates_by_worker(port: int, ca_file: Path, workers: int, tries: int = 400) -> dict[int, set[str]]:
    """New connections until `workers` different workers have answered (or `tries` ran out): what each served."""
    seen: dict[int, set[str]] = {}
    for _ in range(tries):
        pid, pem = served_by(port, ca_file)
        seen.setdefault(pid, set()).add(ssl.PEM_cert_to_DER_cert(pem).hex())
        if len(seen) == workers:
            break
    return seen


def test_every_worker_serves_a_swapped_secret(ca: trustme.CA, ca_file: Path, tmp_path: Path) -> None:
    """Each supervised worker watches the files itself: after the swap, whichever worker answers a new
    connection presents the new certificate."""
    mount = SecretMount(tmp_path / "secret", ca)
    first = mount.publish("2026_a", "127.0.0.1")
    (tmp_path / "pidapp.py").write_text(PID_APP)
    argv = [
        sys.executable,
        "-m",
        "kestrelpy",
        "pidapp:app",
        "--app-dir",
        str(tmp_path),
        "--urls",
        "https://127.0.0.1:0",
    ]
    argv += ["--ssl-certfile", str(mount.cert), "--ssl-keyfile", str(mount.key), "--workers", "2"]
    argv += ["--ssl-watch-interval", "0.1", "--no-access-log"]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        port = int(wait_for_log_line(proc, r"Listening on https://127\.0\.0\.1:(\d+)"))
        before = certificates_by_worker(port, ca_file, workers=2)
        assert len(before) == 2, "the two workers did not both answer"
        old = {ssl.PEM_cert_to_DER_cert(first.pem()).hex()}
        assert all(served == old for served in before.values())
        second = mount.publish("2026_b", "127.0.0.1", common_name="second")
        new = {ssl.PEM_cert_to_DER_cert(second.pem()).hex()}

        def both_switched() -> bool:
            after = certificates_by_worker(port, ca_file, workers=2)
            return set(after) == set(before) and all(served == new for served in after.values())

        assert wait_until(both_switched, timeout=WAIT)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=WAIT)
    assert proc.returncode == 0
    assert b"Traceback" not in err
