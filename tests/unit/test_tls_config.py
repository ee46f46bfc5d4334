"""TLS options and endpoints: validation, which endpoints are TLS, which socket belongs to which endpoint,
and the pure parts of the TLS extension (RFC 4514 names, cipher suite numbers, context loading errors)."""

from __future__ import annotations

import datetime
import os
import shutil
from pathlib import Path

import pytest
import trustme
from cryptography.hazmat.primitives import serialization

from kestrelpy.cli import build_parser, config_from
from kestrelpy.config import Config, TlsOptions
from kestrelpy.endpoints import Endpoint, FdEndpoint, TcpEndpoint, UnixEndpoint, listener_endpoint, parse_url
from kestrelpy.errors import ConfigError
from kestrelpy.tls import (
    ServerTls,
    build_context,
    build_tls,
    certificate_expiry,
    cipher_suite_numbers,
    rfc4514_name,
    select_name,
)

CERT = "/srv/cert.pem"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"ssl_keyfile": "k.pem"}, "--ssl-keyfile needs --ssl-certfile"),
        ({"ssl_keyfile_password": "x"}, "--ssl-keyfile-password needs --ssl-certfile"),
        ({"ssl_certfile": CERT, "ssl_cert_reqs": "required"}, "--ssl-cert-reqs required needs --ssl-ca-certs"),
        ({"ssl_certfile": CERT, "ssl_cert_reqs": "optional"}, "--ssl-cert-reqs optional needs --ssl-ca-certs"),
        ({"ssl_certfile": CERT, "ssl_cert_reqs": "sometimes"}, "--ssl-cert-reqs must be one of"),
        ({"ssl_certfile": CERT, "ssl_min_version": "1.1"}, "--ssl-min-version must be one of 1.2, 1.3"),
        ({"ssl_certfile": CERT, "tls_handshake_timeout": 0}, "--timeout-tls-handshake must be greater than 0"),
    ],
)
def test_tls_options_are_validated(options: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        TlsOptions(**options)  # type: ignore[arg-type]


def test_ca_certificates_without_any_certificate_are_refused() -> None:
    with pytest.raises(ConfigError, match="--ssl-ca-certs needs --ssl-certfile"):
        Config(app="a:b", tls=TlsOptions(ssl_ca_certs="ca.pem"))


def test_https_endpoint_without_a_certificate_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"https://127\.0\.0\.1:8443 is a TLS endpoint but no certificate"):
        Config(app="a:b", urls="https://127.0.0.1:8443")


def test_tls_and_plain_on_free_ports_of_one_address_are_refused() -> None:
    with pytest.raises(ConfigError, match="both ask for a free port"):
        Config(app="a:b", tls=TlsOptions(ssl_certfile=CERT), urls="https://127.0.0.1:0;http://127.0.0.1:0")
    Config(app="a:b", tls=TlsOptions(ssl_certfile=CERT), urls="https://127.0.0.1:0;http://[::1]:0")


def test_a_certificate_makes_endpoints_without_a_scheme_tls() -> None:
    config = Config(
        app="a:b",
        port=8443,
        binds=("unix:/run/app.sock", "http://127.0.0.1:8080"),
        urls="https://localhost",
        tls=TlsOptions(ssl_certfile=CERT),
    )
    assert config.endpoints() == [
        TcpEndpoint("127.0.0.1", 8443, tls=True),
        UnixEndpoint("/run/app.sock", tls=True),
        TcpEndpoint("127.0.0.1", 8080, tls=False),
        TcpEndpoint("localhost", 443, tls=True),
    ]
    assert Config(app="a:b", port=8443).endpoints() == [TcpEndpoint("127.0.0.1", 8443)]


def test_https_urls() -> None:
    assert parse_url("https://+:5001") == TcpEndpoint("*", 5001, tls=True)
    assert parse_url("https://[::1]") == TcpEndpoint("::1", 443, tls=True)
    assert parse_url("https://unix:/run/s.sock") == UnixEndpoint("/run/s.sock", tls=True)


def test_tls_flags_and_the_password_from_the_environment() -> None:
    args = build_parser().parse_args(
        [
            "a:b",
            "--ssl-certfile",
            CERT,
            "--ssl-cert-reqs",
            "required",
            "--ssl-ca-certs",
            "ca.pem",
            "--ssl-min-version",
            "1.3",
            "--timeout-tls-handshake",
            "3",
        ]
    )
    config = config_from(args, {"KESTRELPY_SSL_KEYFILE_PASSWORD": "secret"})
    assert config.tls == TlsOptions(
        ssl_certfile=CERT,
        ssl_keyfile_password="secret",
        ssl_ca_certs="ca.pem",
        ssl_cert_reqs="required",
        ssl_min_version="1.3",
        tls_handshake_timeout=3.0,
    )
    with pytest.raises(ConfigError, match="--ssl-keyfile needs --ssl-certfile"):
        config_from(build_parser().parse_args(["a:b", "--ssl-keyfile", "k.pem"]), {})


def test_a_socket_is_matched_to_its_endpoint_by_address() -> None:
    tls_free = TcpEndpoint("127.0.0.1", 0, tls=True)
    plain = TcpEndpoint("127.0.0.1", 8080)
    both = TcpEndpoint("localhost", 8443, tls=True)
    every = TcpEndpoint("*", 9000)
    unix = UnixEndpoint("/run/app.sock", tls=True)
    fd = FdEndpoint(3)
    endpoints: list[Endpoint] = [tls_free, plain, both, every, unix, fd]
    assert listener_endpoint(("127.0.0.1", 8080), endpoints) == plain
    assert listener_endpoint(("127.0.0.1", 41234), endpoints) == tls_free  # the port 0 asked for
    assert listener_endpoint(("::1", 8443, 0, 0), endpoints) == both
    assert listener_endpoint(("::", 9000, 0, 0), endpoints) == every
    assert listener_endpoint("/run/app.sock", endpoints) == unix
    assert listener_endpoint(("10.0.0.7", 80), endpoints) == fd  # an inherited socket
    assert listener_endpoint(("10.0.0.7", 80), [plain]) is None


def test_rfc4514_names() -> None:
    subject = ((("countryName", "DE"),), (("organizationName", "Example, Inc."),), (("commonName", "#alice "),))
    assert rfc4514_name(subject) == "CN=\\#alice\\ ,O=Example\\, Inc.,C=DE"
    multi = ((("commonName", "a"), ("userId", "7")),)
    assert rfc4514_name(multi) == "CN=a+UID=7"
    assert rfc4514_name(()) is None


def test_cipher_suite_numbers_come_from_openssl_ids() -> None:
    ciphers = [
        {"id": 0x03001302, "name": "TLS_AES_256_GCM_SHA384"},
        {"id": 0x0300C02B, "name": "ECDHE-ECDSA-AES128-GCM-SHA256"},
        {"id": 0x02010080, "name": "SSLv2-ONLY"},  # not a TLS cipher id: no number
    ]
    assert cipher_suite_numbers(ciphers) == {"TLS_AES_256_GCM_SHA384": 0x1302, "ECDHE-ECDSA-AES128-GCM-SHA256": 0xC02B}


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    where = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    leaf = ca.issue_cert("127.0.0.1")
    other = ca.issue_cert("127.0.0.2")
    leaf.cert_chain_pems[0].write_to_path(str(where / "cert.pem"))
    leaf.private_key_pem.write_to_path(str(where / "key.pem"))
    other.private_key_pem.write_to_path(str(where / "other-key.pem"))
    key = serialization.load_pem_private_key(leaf.private_key_pem.bytes(), password=None)
    encrypted = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"s3cret"),
    )
    (where / "encrypted-key.pem").write_bytes(encrypted)
    return {p.stem: p for p in where.iterdir()}


def test_a_context_is_built_and_its_files_are_checked(files: dict[str, Path]) -> None:
    cert = str(files["cert"])
    tls = build_tls(TlsOptions(ssl_certfile=cert, ssl_keyfile=str(files["key"])))
    assert tls.server_cert == files["cert"].read_text()
    assert tls.context.minimum_version.name == "TLSv1_2"
    build_context(TlsOptions(ssl_certfile=cert, ssl_keyfile=str(files["encrypted-key"]), ssl_keyfile_password="s3cret"))
    cases = [
        (TlsOptions(ssl_certfile="/nonexistent/cert.pem"), "--ssl-certfile /nonexistent/cert.pem: no such file"),
        (TlsOptions(ssl_certfile=cert, ssl_keyfile=str(files["other-key"])), "cannot load the certificate"),
        (TlsOptions(ssl_certfile=cert, ssl_keyfile=str(files["encrypted-key"])), "the private key is encrypted"),
        (
            TlsOptions(ssl_certfile=cert, ssl_keyfile=str(files["encrypted-key"]), ssl_keyfile_password="wrong"),
            "cannot load the certificate",
        ),
        (TlsOptions(ssl_certfile=cert, ssl_keyfile=str(files["key"]), ssl_ciphers="NOPE"), "--ssl-ciphers"),
        (
            TlsOptions(
                ssl_certfile=cert,
                ssl_keyfile=str(files["key"]),
                ssl_ca_certs="/nonexistent/ca.pem",
                ssl_cert_reqs="required",
            ),
            "--ssl-ca-certs /nonexistent/ca.pem",
        ),
    ]
    for options, message in cases:
        with pytest.raises(ConfigError, match=message) as caught:
            build_context(options)
        assert "\n" not in str(caught.value) and "_ssl.c" not in str(caught.value)


# -- SNI and rotation ---------------------------------------------------------------------------------


def test_sni_flags_and_the_environment_one_per_line() -> None:
    args = build_parser().parse_args(
        ["a:b", "--ssl-certfile", CERT, "--ssl-sni", "App.Example.com=/a.crt:/a.key", "--ssl-sni", "*=/any.pem"]
    )
    assert config_from(args, {}).tls.ssl_sni == (("app.example.com", "/a.crt", "/a.key"), ("*", "/any.pem", ""))
    environ = {"KESTRELPY_SSL_CERTFILE": CERT, "KESTRELPY_SSL_SNI": "*.example.com=/w.crt:/w.key\nx.test=/x.pem\n"}
    config = config_from(build_parser().parse_args(["a:b"]), environ)
    assert config.tls.ssl_sni == (("*.example.com", "/w.crt", "/w.key"), ("x.test", "/x.pem", ""))


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("app.example.com", "--ssl-sni: expected NAME=CERTFILE:KEYFILE"),
        ("app.example.com=", "--ssl-sni: expected NAME=CERTFILE:KEYFILE"),
        ("=/a.crt:/a.key", "--ssl-sni: '' is not a server name"),
        ("a.*.example.com=/a.crt", "--ssl-sni: 'a.\\*.example.com' is not a server name"),
        ("*example.com=/a.crt", "is not a server name"),
        ("*.=/a.crt", "is not a server name"),
        ("app example.com=/a.crt", "is not a server name"),
        ("-app.example.com=/a.crt", "is not a server name"),
    ],
)
def test_bad_sni_values_name_the_flag(value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config_from(build_parser().parse_args(["a:b", "--ssl-certfile", CERT, f"--ssl-sni={value}"]), {})


def test_sni_options_are_validated() -> None:
    with pytest.raises(ConfigError, match="--ssl-sni needs --ssl-certfile"):
        TlsOptions(ssl_sni=(("a.test", "/a.crt", ""),))
    with pytest.raises(ConfigError, match=r"--ssl-sni a\.test is given twice"):
        TlsOptions(ssl_certfile=CERT, ssl_sni=(("a.test", "/a.crt", ""), ("A.test", "/b.crt", "")))
    with pytest.raises(ConfigError, match="--ssl-sni: 'a b' is not a server name"):
        TlsOptions(ssl_certfile=CERT, ssl_sni=(("a b", "/a.crt", ""),))
    with pytest.raises(ConfigError, match="--ssl-watch-interval must not be negative"):
        TlsOptions(ssl_certfile=CERT, ssl_watch_interval=-1)


@pytest.mark.parametrize(
    ("server_name", "expected"),
    [
        ("app.example.com", "app.example.com"),
        ("APP.Example.com.", "app.example.com"),  # case and a trailing dot do not matter
        ("www.example.com", "*.example.com"),
        ("www.eu.example.com", "*.eu.example.com"),  # the longer wildcard
        ("a.b.example.com", "*.example.com"),  # at any depth, as Kestrel matches a wildcard
        ("x.www.eu.example.com", "*.eu.example.com"),  # the longest wildcard that matches
        ("example.org", "*"),
        ("example.com", "*"),
        (None, None),  # no name sent (an IP address, say): the default certificate
        ("", None),
    ],
)
def test_sni_matching_order(server_name: str | None, expected: str | None) -> None:
    names = {None, "app.example.com", "*.example.com", "*.eu.example.com", "*"}
    assert select_name(server_name, names) == expected
    assert select_name(server_name, names - {"*"}) == (None if expected == "*" else expected)


def switches_context(tls: ServerTls) -> bool:
    """Whether the listeners' context calls back during handshakes to choose a certificate."""
    return tls.context.sni_callback is not None


def test_sni_files_that_cannot_be_loaded_name_the_flag(files: dict[str, Path]) -> None:
    cert, key = str(files["cert"]), str(files["key"])
    cases = [
        (("a.test", "/nonexistent/a.crt", ""), "--ssl-sni a.test=/nonexistent/a.crt: no such file"),
        ((("a.test", cert, str(files["other-key"]))), f"--ssl-sni a.test={cert}:.*cannot load the certificate"),
    ]
    for sni, message in cases:
        with pytest.raises(ConfigError, match=message):
            build_tls(TlsOptions(ssl_certfile=cert, ssl_keyfile=key, ssl_sni=(sni,)))
    served = build_tls(TlsOptions(ssl_certfile=cert, ssl_keyfile=key, ssl_sni=(("a.test", cert, key),)))
    assert switches_context(served)


def test_the_expiry_of_a_certificate_is_read_from_its_der() -> None:
    ca = trustme.CA()
    for not_after in (
        datetime.datetime(1999, 12, 31, 23, 59, 59, tzinfo=datetime.timezone.utc),  # UTCTime "99": 1999
        datetime.datetime(2031, 5, 17, 8, 30, 15, tzinfo=datetime.timezone.utc),  # UTCTime "31": 2031
        datetime.datetime(2051, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc),  # GeneralizedTime from 2050 on
    ):
        leaf = ca.issue_cert("a.test", not_before=not_after - datetime.timedelta(days=1), not_after=not_after)
        assert certificate_expiry(leaf.cert_chain_pems[0].bytes().decode()) == not_after.timestamp()
    assert certificate_expiry("not a certificate") is None
    assert certificate_expiry(None) is None


def test_a_poll_loads_only_changed_files(files: dict[str, Path], tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    shutil.copyfile(files["cert"], cert)
    shutil.copyfile(files["key"], key)
    tls = build_tls(TlsOptions(ssl_certfile=str(cert), ssl_keyfile=str(key)))
    assert not switches_context(tls)  # one certificate: no call into Python during handshakes
    before = tls.context_for(None)
    os.utime(cert, (0, 0))  # a new mtime, the same content
    assert tls.poll() == []
    assert tls.context_for(None) is before
    ca = trustme.CA()
    leaf = ca.issue_cert("127.0.0.1")
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    leaf.private_key_pem.write_to_path(str(key))
    assert [source.name for source in tls.poll()] == [None]
    assert tls.context_for(None) is not before
    assert switches_context(tls)  # the listeners' context now switches to the new one
    assert tls.server_cert == leaf.cert_chain_pems[0].bytes().decode()
    assert tls.context_for(None).verify_mode == before.verify_mode
    assert tls.context_for(None).minimum_version == before.minimum_version
