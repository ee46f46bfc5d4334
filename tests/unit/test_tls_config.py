"""TLS options and endpoints: validation, which endpoints are TLS, which socket belongs to which endpoint,
and the pure parts of the TLS extension (RFC 4514 names, cipher suite numbers, context loading errors)."""

from __future__ import annotations

from pathlib import Path

import pytest
import trustme
from cryptography.hazmat.primitives import serialization

from kestrelpy.cli import build_parser, config_from
from kestrelpy.config import Config, TlsOptions
from kestrelpy.endpoints import Endpoint, FdEndpoint, TcpEndpoint, UnixEndpoint, listener_endpoint, parse_url
from kestrelpy.errors import ConfigError
from kestrelpy.tls import build_context, build_tls, cipher_suite_numbers, rfc4514_name

CERT = "/srv/cert.pem"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"ssl_keyfile": "k.pem"}, "--ssl-keyfile needs --ssl-certfile"),
        ({"ssl_keyfile_password": "x"}, "--ssl-keyfile-password needs --ssl-certfile"),
        ({"ssl_ca_certs": "ca.pem"}, "--ssl-ca-certs needs --ssl-certfile"),
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
