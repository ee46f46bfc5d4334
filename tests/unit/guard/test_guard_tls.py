"""The certificate rules: certificates made by trustme at test time, fed to the probe through FixtureIO."""

from __future__ import annotations

import datetime
import sys
from pathlib import Path
from typing import Any

import pytest

trustme = pytest.importorskip("trustme")

from cryptography.hazmat.primitives.serialization import (  # noqa: E402
    BestAvailableEncryption,
    Encoding,
    PrivateFormat,
    load_pem_private_key,
)

from kestrelpy.config import TlsOptions  # noqa: E402
from kestrelpy.endpoints import Endpoint, TcpEndpoint  # noqa: E402
from kestrelpy.guard import FixtureIO, RecordingIO, check, predict  # noqa: E402
from kestrelpy.guard.facts import TlsFile  # noqa: E402
from kestrelpy.guard.system import SystemIO  # noqa: E402
from kestrelpy.guard.tlsprobe import collect_tls  # noqa: E402
from kestrelpy.guard.tlsrules import covers, tls_findings  # noqa: E402
from kestrelpy.guard.verdict import Finding  # noqa: E402

CERT, KEY = "/srv/tls/fullchain.pem", "/srv/tls/privkey.pem"
LOCAL = TcpEndpoint("localhost", 8443, tls=True)
NOW = datetime.datetime.now(datetime.timezone.utc)


def _findings(
    cert: str,
    key: str,
    *,
    password: str = "",
    endpoints: tuple[Endpoint, ...] = (LOCAL,),
    access: dict[str, TlsFile] | None = None,
) -> list[Finding]:
    io = FixtureIO(files={CERT: cert, KEY: key}, access=access)
    options = TlsOptions(ssl_certfile=CERT, ssl_keyfile=KEY, ssl_keyfile_password=password)
    return tls_findings(endpoints, collect_tls(io, options), 1000, "web")


def _codes(findings: list[Finding]) -> list[str]:
    return [f.code for f in findings]


def _leaf(ca: Any, *names: str, **kwargs: datetime.datetime) -> tuple[str, str]:
    issued = ca.issue_cert(*(names or ("localhost",)), **kwargs)
    chain = "".join(blob.bytes().decode() for blob in issued.cert_chain_pems)
    return chain, issued.private_key_pem.bytes().decode()


def test_a_good_certificate_has_no_findings() -> None:
    cert, key = _leaf(trustme.CA())
    assert _findings(cert, key) == []


def test_missing_file() -> None:
    cert, _ = _leaf(trustme.CA())
    io = FixtureIO(files={CERT: cert})
    facts = collect_tls(io, TlsOptions(ssl_certfile=CERT, ssl_keyfile=KEY))
    findings = tls_findings([LOCAL], facts)
    assert _codes(findings) == ["KP-TLS-FILE-MISSING"]
    assert findings[0].severity == "error"
    assert f"--ssl-keyfile {KEY} does not exist" in findings[0].summary


def test_unreadable_key_names_owner_mode_and_the_fixes() -> None:
    cert, key = _leaf(trustme.CA())
    root_only = TlsFile(KEY, "", True, False, 0, 0, 0o600, "root", "root")
    findings = _findings(cert, key, access={KEY: root_only})
    assert _codes(findings) == ["KP-TLS-FILE-UNREADABLE"]
    text = findings[0].render()
    assert "belongs to root:root with mode 0600" in text
    assert f"setfacl -m u:web:r {KEY}" in text
    assert "chmod 0640" in text and "ssl-cert" in text
    behind_a_closed_directory = TlsFile(KEY, "", None, False)
    blocked = _findings(cert, key, access={KEY: behind_a_closed_directory})
    assert _codes(blocked) == ["KP-TLS-FILE-UNREADABLE"]
    assert "a directory on its path" in blocked[0].summary and "setfacl -m u:web:x" in blocked[0].render()


def test_expired_and_not_yet_valid_and_expiring() -> None:
    ca = trustme.CA()
    day = datetime.timedelta(days=1)
    expired = _findings(*_leaf(ca, not_before=NOW - 30 * day, not_after=NOW - 2 * day))
    assert _codes(expired) == ["KP-TLS-EXPIRED"]
    assert expired[0].severity == "error" and "2 day(s) ago" in expired[0].summary
    future = _findings(*_leaf(ca, not_before=NOW + 3 * day, not_after=NOW + 90 * day))
    assert _codes(future) == ["KP-TLS-NOT-YET-VALID"]
    soon = _findings(*_leaf(ca, not_before=NOW - day, not_after=NOW + 5 * day + datetime.timedelta(hours=1)))
    assert _codes(soon) == ["KP-TLS-EXPIRING"]
    assert soon[0].severity == "warning" and "in 5 day(s)" in soon[0].summary


def test_key_of_another_certificate() -> None:
    ca = trustme.CA()
    cert, _ = _leaf(ca)
    _, other_key = _leaf(ca)
    assert _codes(_findings(cert, other_key)) == ["KP-TLS-KEY-MISMATCH"]


def _encrypted(key_pem: str, password: bytes) -> str:
    key = load_pem_private_key(key_pem.encode(), None)
    return key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, BestAvailableEncryption(password)).decode()


def test_encrypted_key_with_wrong_or_missing_password() -> None:
    cert, key = _leaf(trustme.CA())
    locked = _encrypted(key, b"right password")
    wrong = _findings(cert, locked, password="wrong password")
    assert _codes(wrong) == ["KP-TLS-KEY-PASSWORD"] and "is wrong" in wrong[0].summary
    missing = _findings(cert, locked)
    assert _codes(missing) == ["KP-TLS-KEY-PASSWORD"] and "no password was given" in missing[0].summary
    assert "KESTRELPY_SSL_KEYFILE_PASSWORD" in missing[0].render()
    assert _findings(cert, locked, password="right password") == []


def test_chain_out_of_order() -> None:
    root = trustme.CA()
    intermediate = root.create_child_ca()
    issued = intermediate.issue_cert("localhost")
    leaf_pem, inter_pem = (b.bytes().decode() for b in issued.cert_chain_pems[:2])
    key = issued.private_key_pem.bytes().decode()
    assert _findings(leaf_pem + inter_pem, key) == []
    reversed_chain = _findings(inter_pem + leaf_pem, key)
    assert _codes(reversed_chain) == ["KP-TLS-CHAIN-ORDER"]
    assert "is number 2" in reversed_chain[0].summary
    wrong_signer = _findings(leaf_pem + root.cert_pem.bytes().decode() + inter_pem, key)
    assert _codes(wrong_signer) == ["KP-TLS-CHAIN-ORDER"]
    assert "certificate 1" in wrong_signer[0].summary and "not signed by the one after it" in wrong_signer[0].summary


def test_names_that_do_not_cover_the_host() -> None:
    cert, key = _leaf(trustme.CA(), "example.org", "*.example.net", "192.0.2.7")
    findings = _findings(cert, key)
    assert _codes(findings) == ["KP-TLS-NAME-MISMATCH"]
    assert findings[0].severity == "warning"
    assert "does not name localhost" in findings[0].summary and "example.org" in findings[0].summary
    wildcards = tuple(TcpEndpoint(h, 8443, tls=True) for h in ("0.0.0.0", "::", "*", "+"))
    assert _findings(cert, key, endpoints=wildcards) == []
    covered = tuple(TcpEndpoint(h, 8443, tls=True) for h in ("EXAMPLE.org", "www.example.net", "192.0.2.7"))
    assert _findings(cert, key, endpoints=covered) == []


def test_wildcard_name_covers_one_label_only() -> None:
    cert, key = _leaf(trustme.CA(), "*.example.net")
    facts = collect_tls(FixtureIO(files={CERT: cert + key}), TlsOptions(ssl_certfile=CERT))
    assert covers(facts.certificates[0], "a.example.net")
    assert not covers(facts.certificates[0], "a.b.example.net")
    assert not covers(facts.certificates[0], "example.net")


def test_self_signed_is_a_note() -> None:
    ca = trustme.CA()
    findings = _findings(ca.cert_pem.bytes().decode(), ca.private_key_pem.bytes().decode())
    assert "KP-TLS-SELF-SIGNED" in _codes(findings)
    assert next(f for f in findings if f.code == "KP-TLS-SELF-SIGNED").severity == "info"


def test_predict_and_check_carry_the_certificate_findings() -> None:
    ca = trustme.CA()
    cert, key = _leaf(ca, not_before=NOW - datetime.timedelta(days=30), not_after=NOW - datetime.timedelta(days=1))
    io = FixtureIO(files={CERT: cert, KEY: key})
    options = TlsOptions(ssl_certfile=CERT, ssl_keyfile=KEY)
    assert "KP-TLS-EXPIRED" in _codes(predict([LOCAL], probe=io, tls=options))
    report = check([LOCAL], probe=io, tls=options)
    assert report.blocking and "KP-TLS-EXPIRED" in _codes(list(report.findings))
    assert report.facts.tls is not None and report.facts.tls.certificates
    plain = TcpEndpoint("localhost", 8080)
    # no TLS endpoint, no certificate rules
    assert not [c for c in _codes(predict([plain], probe=io, tls=options)) if c.startswith("KP-TLS-")]


def test_without_cryptography_the_ssl_module_still_tells_a_mismatch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ca = trustme.CA()
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    ca.issue_cert("localhost").cert_chain_pems[0].write_to_path(str(cert))
    ca.issue_cert("localhost").private_key_pem.write_to_path(str(key))
    monkeypatch.setitem(sys.modules, "cryptography", None)  # import fails: the ssl-only path
    facts = collect_tls(SystemIO(), TlsOptions(ssl_certfile=str(cert), ssl_keyfile=str(key)))
    assert not facts.deep and facts.certificates == ()
    assert _codes(tls_findings([LOCAL], facts)) == ["KP-TLS-KEY-MISMATCH"]


def test_dumped_facts_never_carry_the_private_key(tmp_path: Path) -> None:
    cert, key = _leaf(trustme.CA())
    recorder = RecordingIO(FixtureIO(files={CERT: cert, KEY: key + cert}))
    check([LOCAL], probe=recorder, tls=TlsOptions(ssl_certfile=CERT, ssl_keyfile=KEY))
    recorder.dump(tmp_path)
    dumped = "".join(p.read_text(encoding="utf-8") for p in tmp_path.rglob("*.txt"))
    secret = key.split("-----")[2].strip()
    assert "PRIVATE KEY-----\n(not recorded)" in dumped and "BEGIN CERTIFICATE" in dumped
    assert secret[:40] not in dumped
    replayed = FixtureIO.from_dir(tmp_path)
    assert replayed.file_access(KEY, "--ssl-keyfile").readable
