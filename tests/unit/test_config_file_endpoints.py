"""[endpoints.NAME] and [endpoint_defaults] in the config file: the endpoints they make, what they inherit,
how the command line replaces them, and the exact message for each mistake (file, line, key, suggestion)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kestrelpy import config_file
from kestrelpy.cli import build_parser, replaced_endpoints_note, resolve
from kestrelpy.config import Config, TlsOptions
from kestrelpy.endpoints import CertificateFiles, EndpointTls, TcpEndpoint, UnixEndpoint
from kestrelpy.errors import ConfigError

TWO_ENDPOINTS = """\
app = "main:app"
ssl_ca_certs = "ca.pem"

[endpoint_defaults]
protocols = "http1+http2"

[endpoints.web]
url = "http://127.0.0.1:8080"

[endpoints.admin]
url = "https://[::1]:8443"
protocols = "http1"
client_certificate_mode = "required"
certificate = { path = "admin.pem", key_path = "admin.key", password_env = "ADMIN_PASSWORD" }

[endpoints.admin.sni."*.example.com"]
path = "wild.pem"
key_path = "wild.key"

[endpoints.socket]
url = "http://unix:/run/app.sock"
"""


def write(tmp_path: Path, text: str) -> config_file.FileValues:
    path = tmp_path / "kestrelpy.toml"
    path.write_text(text, encoding="utf-8")
    return config_file.read(path)


def resolved(file: config_file.FileValues, *argv: str, environ: dict[str, str] | None = None) -> Config:
    return resolve(build_parser().parse_args(list(argv)), environ or {}, file)[0]


def error_of(tmp_path: Path, text: str, *argv: str, environ: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as caught:
        resolved(write(tmp_path, text), *argv, environ=environ)
    return str(caught.value).replace(str(tmp_path / "kestrelpy.toml"), "FILE")


def test_tables_become_named_endpoints_with_their_settings(tmp_path: Path) -> None:
    config = resolved(write(tmp_path, TWO_ENDPOINTS), environ={"ADMIN_PASSWORD": "s3cret"})
    web, admin, socket = config.endpoints()
    assert web == TcpEndpoint("127.0.0.1", 8080, name="web", protocols="http1+http2")
    assert socket == UnixEndpoint("/run/app.sock", name="socket", protocols="http1+http2")
    assert admin == TcpEndpoint(
        "::1",
        8443,
        tls=True,
        name="admin",
        protocols="http1",
        settings=EndpointTls(
            certificate=CertificateFiles("admin.pem", "admin.key", "ADMIN_PASSWORD", password="s3cret"),
            sni=(("*.example.com", CertificateFiles("wild.pem", "wild.key")),),
            client_certificate_mode="required",
        ),
    )
    assert admin.display() == "[::1]:8443 ([endpoints.admin])"


def test_an_endpoint_with_its_own_certificate_gets_its_own_tls_settings(tmp_path: Path) -> None:
    config = resolved(write(tmp_path, TWO_ENDPOINTS), environ={"ADMIN_PASSWORD": "s3cret"})
    admin = config.endpoints()[1]
    own = config.tls.for_endpoint(admin)
    assert (own.ssl_certfile, own.ssl_keyfile, own.ssl_keyfile_password) == ("admin.pem", "admin.key", "s3cret")
    assert own.ssl_sni == (("*.example.com", "wild.pem", "wild.key"),)
    assert (own.ssl_cert_reqs, own.ssl_ca_certs, own.origin) == ("required", "ca.pem", "endpoints.admin")
    plain = TcpEndpoint("127.0.0.1", 8443, tls=True)
    assert config.tls.for_endpoint(plain) is config.tls  # endpoints without settings share the --ssl-* ones


def test_endpoint_defaults_set_the_server_wide_options_which_flags_still_beat(tmp_path: Path) -> None:
    file = write(tmp_path, TWO_ENDPOINTS)
    args = build_parser().parse_args(["--protocols", "http2"])
    config, sources = resolve(args, {"ADMIN_PASSWORD": "x"}, file)
    assert [e.protocols for e in config.endpoints()] == ["http2", "http1", "http2"]  # admin chose its own
    assert sources["protocols"] == ("cli", "--protocols")
    assert resolve(build_parser().parse_args([]), {"ADMIN_PASSWORD": "x"}, file)[1]["protocols"] == (
        "file",
        f"{file.path}:5",
    )


def test_the_default_address_is_not_added_beside_the_tables(tmp_path: Path) -> None:
    config = resolved(write(tmp_path, '[endpoints.only]\nurl = "http://127.0.0.1:9000"\n'))
    assert [e.display() for e in config.endpoints()] == ["127.0.0.1:9000 ([endpoints.only])"]


def test_addresses_in_the_file_are_served_beside_the_tables(tmp_path: Path) -> None:
    config = resolved(write(tmp_path, 'bind = ["127.0.0.1:7000"]\n[endpoints.web]\nurl = "http://127.0.0.1:9000"\n'))
    assert [e.display() for e in config.endpoints()] == ["127.0.0.1:7000", "127.0.0.1:9000 ([endpoints.web])"]


@pytest.mark.parametrize(
    ("argv", "environ", "given"),
    [
        (["--urls", "http://127.0.0.1:7001"], {}, "--urls"),
        (["--port", "7001"], {}, "--port"),
        ([], {"KESTRELPY_BIND": "127.0.0.1:7001"}, "KESTRELPY_BIND"),
    ],
)
def test_endpoints_from_the_command_line_or_environment_replace_the_tables(
    tmp_path: Path, argv: list[str], environ: dict[str, str], given: str
) -> None:
    file = write(tmp_path, TWO_ENDPOINTS.replace('ssl_ca_certs = "ca.pem"\n', ""))
    config, sources = resolve(build_parser().parse_args(argv), {"ADMIN_PASSWORD": "x", **environ}, file)
    assert [e.display() for e in config.endpoints()] == ["127.0.0.1:7001"]
    assert replaced_endpoints_note(file, sources) == (
        f"Not listening on [endpoints.web], [endpoints.admin], [endpoints.socket] from {file.path}: {given} "
        "names the endpoints instead"
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            '[endpoints.web]\nurll = "http://127.0.0.1:80"\n',
            "FILE:2: unknown key `urll` in [endpoints.web]; did you mean `url`?",
        ),
        (
            '[endpoints.web]\nurl = "http://127.0.0.1:80"\ncolour = "red"\n',
            "FILE:3: unknown key `colour` in [endpoints.web] (it takes url, protocols, certificate, sni, "
            "client_certificate_mode)",
        ),
        (
            '[endpoints.web]\nprotocols = "http1"\n',
            'FILE:1: [endpoints.web] has no url; give one, as in url = "https://0.0.0.0:8443"',
        ),
        ("[endpoints.web]\nurl = 8080\n", "FILE:2: endpoints.web.url must be a string, not an integer (8080)"),
        (
            '[endpoints.web]\nurl = "http://127.0.0.1:70000"\n',
            "FILE:2: endpoints.web.url 'http://127.0.0.1:70000': the port must be between 0 and 65535, not 70000",
        ),
        (
            '[endpoints.web]\nurl = "ftp://127.0.0.1:21"\n',
            "FILE:2: endpoints.web.url 'ftp://127.0.0.1:21': the scheme must be http or https, not ftp",
        ),
        (
            '[endpoints.web]\nurl = "https://127.0.0.1:443"\nprotocols = "Http1AndHttp2"\n',
            "FILE:3: endpoints.web.protocols must be one of http1, http2, http1+http2, not 'Http1AndHttp2'; "
            "did you mean `http1+http2`?",
        ),
        (
            '[endpoints.web]\nurl = "https://127.0.0.1:443"\nclient_certificate_mode = "require"\n',
            "FILE:3: endpoints.web.client_certificate_mode must be one of none, optional, required, not 'require'; "
            "did you mean `required`?",
        ),
        (
            '[endpoints.web]\nurl = "https://127.0.0.1:443"\ncertificate = { path = "c", kye_path = "k" }\n',
            "FILE:3: unknown key `kye_path` in endpoints.web.certificate; did you mean `key_path`?",
        ),
        (
            '[endpoints.web]\nurl = "https://127.0.0.1:443"\n\n[endpoints.web.certificate]\nkey_path = "k"\n',
            'FILE:4: endpoints.web.certificate has no path; give the PEM file, as in { path = "cert.pem", '
            'key_path = "key.pem" }',
        ),
        (
            '[endpoints.web]\nurl = "https://127.0.0.1:443"\ncertificate = "cert.pem"\n',
            'FILE:3: endpoints.web.certificate must be a table, as in { path = "cert.pem", key_path = "key.pem" }, '
            "not a string ('cert.pem')",
        ),
        (
            '[endpoints.web]\nurl = "https://127.0.0.1:443"\ncertificate = { path = "c", password_env = "MY-PW" }\n',
            "FILE:3: endpoints.web.certificate.password_env must name an environment variable (letters, digits and "
            "_), not 'MY-PW'",
        ),
        (
            '[endpoints.web]\nurl = "https://127.0.0.1:443"\ncertificate = { path = "c" }\n'
            '[endpoints.web.sni."bad name"]\npath = "b"\n',
            "FILE:4: endpoints.web.sni: 'bad name' is not a server name: give a host name (app.example.com), a "
            "wildcard of one label (*.example.com) or * (any other name)",
        ),
        (
            '[endpoint_defaults]\nprotocol = "http2"\n',
            "FILE:2: unknown key `protocol` in [endpoint_defaults]; did you mean `protocols`?",
        ),
        (
            'protocols = "http1"\n[endpoint_defaults]\nprotocols = "http2"\n',
            "FILE:3: [endpoint_defaults] protocols and protocols set the same thing; keep one of them",
        ),
        (
            'endpoints = "web"\n',
            'FILE:1: endpoints must be tables, one per endpoint: [endpoints.NAME] with url = "https://0.0.0.0:8443"',
        ),
        ('endpoint = "x"\n', "FILE:1: unknown key `endpoint`; did you mean `endpoints`?"),
    ],
)
def test_mistakes_name_the_file_line_and_key(tmp_path: Path, text: str, message: str) -> None:
    assert error_of(tmp_path, text) == message


@pytest.mark.parametrize(
    "key", ['certificate = { path = "c" }', 'client_certificate_mode = "none"', 'sni."a.example" = { path = "a" }']
)
def test_https_only_keys_on_an_http_endpoint_are_an_error(tmp_path: Path, key: str) -> None:
    name = key.split(" ")[0].split(".")[0]
    text = f'[endpoints.web]\nurl = "http://127.0.0.1:8080"\n{key}\n'
    assert error_of(tmp_path, text) == (
        f"FILE:3: the non-HTTPS endpoint [endpoints.web] (http://127.0.0.1:8080) sets {name}, which only an "
        f"https:// endpoint uses; make its url https:// or remove {name}"
    )


def test_consistency_errors_name_the_table(tmp_path: Path) -> None:
    assert error_of(tmp_path, 'app = "a:b"\n[endpoints.secure]\nurl = "https://127.0.0.1:8443"\n') == (
        "FILE:2: [endpoints.secure] (https://127.0.0.1:8443) has no certificate: give it certificate = "
        "{ path = ..., key_path = ... }, or set ssl_certfile for every https endpoint"
    )
    text = (
        '[endpoints.secure]\nurl = "https://127.0.0.1:8443"\nclient_certificate_mode = "optional"\n'
        'certificate = { path = "c" }\n'
    )
    assert error_of(tmp_path, text) == (
        "FILE:1: [endpoints.secure] (https://127.0.0.1:8443) sets client_certificate_mode = 'optional', which "
        "needs ssl_ca_certs (the CAs client certificates are verified against)"
    )
    text = '[endpoints.a]\nurl = "http://127.0.0.1:8080"\n[endpoints.b]\nurl = "http://127.0.0.1:8080"\n'
    assert error_of(tmp_path, text) == (
        "FILE:1: 127.0.0.1:8080 ([endpoints.a]) and 127.0.0.1:8080 ([endpoints.b]) are the same address; listen "
        "on it once"
    )


def test_a_password_variable_that_is_not_set_is_named(tmp_path: Path) -> None:
    text = '[endpoints.s]\nurl = "https://127.0.0.1:8443"\ncertificate = { path = "c", password_env = "S_PW" }\n'
    assert error_of(tmp_path, text) == (
        "FILE:3: endpoints.s.certificate.password_env names S_PW, which is not set in the environment"
    )


def test_the_sni_tables_of_pyproject_are_located_too(tmp_path: Path) -> None:
    path = tmp_path / "pyproject.toml"
    path.write_text('[project]\nname = "x"\n\n[tool.kestrelpy.endpoints.web]\nurl = "http://127.0.0.1:80"\ncert = 1\n')
    with pytest.raises(ConfigError, match=r"pyproject\.toml:6: unknown key `cert` in \[endpoints\.web\]"):
        config_file.read(path)


def test_an_endpoint_without_a_certificate_uses_the_server_wide_one(tmp_path: Path) -> None:
    file = write(tmp_path, '[endpoints.s]\nurl = "https://127.0.0.1:8443"\n')
    config = resolved(file, "--ssl-certfile", "server.pem")
    (endpoint,) = config.endpoints()
    assert endpoint.settings is None and config.tls.for_endpoint(endpoint) == TlsOptions(ssl_certfile="server.pem")


ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("doc", ["README.md", "docs/config-file.md", "docs/tls.md"])
def test_the_endpoint_examples_of_the_docs_are_valid_files(doc: str) -> None:
    text = (ROOT / doc).read_text(encoding="utf-8")
    blocks = [b.split("\n", 1)[1].split("```", 1)[0] for b in text.split("```toml")[1:]]
    examples = [b for b in blocks if "[endpoints." in b]
    assert examples, f"{doc} has no [endpoints] example"
    for example in examples:
        file = config_file.parse(example, doc)
        config = resolve(build_parser().parse_args([]), {"API_KEY_PASSWORD": "x", "ADMIN_KEY_PASSWORD": "x"}, file)[0]
        assert config.named_endpoints


def test_dotted_keys_are_located_too(tmp_path: Path) -> None:
    text = 'app = "a:b"\nendpoints.web.url = "http://127.0.0.1:80"\nendpoints.web.colour = "red"\n'
    assert error_of(tmp_path, text) == (
        "FILE:3: unknown key `colour` in [endpoints.web] (it takes url, protocols, certificate, sni, "
        "client_certificate_mode)"
    )
