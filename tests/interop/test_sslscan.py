"""A real TLS scanner (sslscan, its XML report) against `kestrelpy --ssl-certfile ...`: the protocols and
cipher suites an outside client can actually get, not what the context was asked for.

Defaults: TLS 1.2 and 1.3 only (SSLv2, SSLv3, TLS 1.0 and 1.1 refused) and no weak cipher suite (NULL,
EXPORT, RC4, DES or 3DES, anonymous key exchange, MD5 MACs). With --ssl-min-version 1.3: TLS 1.3 only.
"""

from __future__ import annotations

import subprocess
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme

from tests.support.interop import Process, kestrelpy, listening_urls, require_tool
from tests.support.waiting import WAIT

# What makes a cipher suite weak, matched against OpenSSL's and IANA's names alike.
WEAK_MARKS = ("NULL", "EXP", "RC4", "DES", "ADH", "AECDH", "ANON", "MD5")


@dataclass
class Scan:
    protocols: dict[str, bool]  # "SSLv2", "SSLv3", "TLSv1.0", ... -> accepted
    ciphers: list[tuple[str, str]]  # (protocol, cipher suite name) the server accepted

    @property
    def accepted(self) -> set[str]:
        return {name for name, enabled in self.protocols.items() if enabled}

    def weak_ciphers(self) -> list[tuple[str, str]]:
        return [(version, name) for version, name in self.ciphers if any(m in name.upper() for m in WEAK_MARKS)]


def parse(report: str) -> Scan:
    """sslscan's --xml=- report: <protocol type="tls" version="1.2" enabled="1"/> and <cipher .../>."""
    test = ET.fromstring(report).find("ssltest")
    assert test is not None, report
    protocols = {
        f"{'SSLv' if p.get('type') == 'ssl' else 'TLSv'}{p.get('version')}": p.get("enabled") == "1"
        for p in test.iter("protocol")
    }
    assert len(protocols) == 6, f"sslscan did not report on every protocol:\n{report}"
    ciphers = [(c.get("sslversion", ""), c.get("cipher", "")) for c in test.iter("cipher")]
    return Scan(protocols, ciphers)


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    where = tmp_path_factory.mktemp("sslscan-certs")
    issued = trustme.CA().issue_cert("127.0.0.1")
    issued.cert_chain_pems[0].write_to_path(str(where / "cert.pem"))
    issued.private_key_pem.write_to_path(str(where / "key.pem"))
    return where / "cert.pem", where / "key.pem"


@pytest.fixture
def scan(certificate: tuple[Path, Path]) -> Iterator[Callable[..., Scan]]:
    """`scan(*kestrelpy_args)`: start kestrelpy on an https:// port with those options, run sslscan on it."""
    sslscan = require_tool("sslscan", "sslscan")
    started: list[Process] = []

    def run(*args: str) -> Scan:
        cert, key = certificate
        server = kestrelpy(
            "--urls", "https://127.0.0.1:0", "--ssl-certfile", str(cert), "--ssl-keyfile", str(key), *args
        )
        started.append(server)
        port = listening_urls(server)[0].rsplit(":", 1)[1]
        result = subprocess.run(
            [sslscan, "--no-colour", "--no-heartbleed", "--no-groups", "--xml=-", f"127.0.0.1:{port}"],
            capture_output=True,
            text=True,
            timeout=WAIT * 6,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        return parse(result.stdout[result.stdout.index("<?xml") :])

    yield run
    for server in started:
        assert server.stop() == 0, server.output
        assert "Traceback" not in server.output, server.output
        server.__exit__()


def test_defaults_accept_only_tls12_and_tls13_with_strong_ciphers(scan: Callable[..., Scan]) -> None:
    result = scan()
    assert result.accepted == {"TLSv1.2", "TLSv1.3"}, result.protocols
    assert result.ciphers, "sslscan found no cipher suite at all"
    assert result.weak_ciphers() == []


def test_minimum_version_13_accepts_only_tls13(scan: Callable[..., Scan]) -> None:
    result = scan("--ssl-min-version", "1.3")
    assert result.accepted == {"TLSv1.3"}, result.protocols
    assert {version for version, _ in result.ciphers} == {"TLSv1.3"}
    assert result.weak_ciphers() == []


def test_the_scan_sees_weak_ciphers_when_they_are_asked_for(scan: Callable[..., Scan]) -> None:
    """The weak-cipher check can fail: an operator's cipher string that lets anonymous suites in shows."""
    result = scan("--ssl-ciphers", "ALL:aNULL:@SECLEVEL=0")
    assert any("ADH" in name or "AECDH" in name for _, name in result.weak_ciphers()), result.ciphers
