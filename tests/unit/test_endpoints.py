"""Endpoint parsing, all pure: --bind, --urls, --uds, systemd variables, and how they combine."""

from __future__ import annotations

import pytest

from kestrelpy.cli import build_parser, config_from, take_systemd_sockets
from kestrelpy.config import Config
from kestrelpy.endpoints import (
    FdEndpoint,
    TcpEndpoint,
    UnixEndpoint,
    configured_endpoints,
    parse_bind,
    parse_octal_mode,
    parse_url,
    parse_urls,
    systemd_endpoints,
)
from kestrelpy.errors import ConfigError


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:8080", TcpEndpoint("127.0.0.1", 8080)),
        ("[::1]:8080", TcpEndpoint("::1", 8080)),
        ("0.0.0.0:80", TcpEndpoint("0.0.0.0", 80)),
        (":8080", TcpEndpoint("0.0.0.0", 8080)),
        ("*:8080", TcpEndpoint("*", 8080)),
        ("+:8080", TcpEndpoint("*", 8080)),
        ("[::]:8080", TcpEndpoint("::", 8080)),
        ("localhost:5000", TcpEndpoint("localhost", 5000)),
        ("LocalHost:5000", TcpEndpoint("localhost", 5000)),
        ("example.internal:0", TcpEndpoint("example.internal", 0)),
        ("[fe80::1%eth0]:8080", TcpEndpoint("fe80::1%eth0", 8080)),
        ("unix:/run/app.sock", UnixEndpoint("/run/app.sock")),
        ("unix:relative.sock", UnixEndpoint("relative.sock")),
        ("fd://3", FdEndpoint(3)),
        ("http://localhost:5000", TcpEndpoint("localhost", 5000)),
    ],
)
def test_parse_bind(text: str, expected: object) -> None:
    assert parse_bind(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("8080", "HOST:PORT"),
        ("::1:8080", "brackets"),
        ("[::1]8080", "IPV6"),
        ("[::1]", "IPV6"),
        ("127.0.0.1:http", "must be a number"),
        ("127.0.0.1:70000", "between 0 and 65535"),
        ("unix:", "empty"),
        ("fd://x", "fd://N"),
        ("fd://1", "stdout"),
    ],
)
def test_parse_bind_rejects(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_bind(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("http://+:8080", TcpEndpoint("*", 8080)),
        ("http://*:8080/", TcpEndpoint("*", 8080)),
        ("http://localhost:5000", TcpEndpoint("localhost", 5000)),
        ("http://127.0.0.1", TcpEndpoint("127.0.0.1", 80)),
        ("HTTP://[::]:8080", TcpEndpoint("::", 8080)),
        ("http://[fe80::1%25eth0]:8080", TcpEndpoint("fe80::1%eth0", 8080)),
        ("http://[fe80::1%eth0]:8080", TcpEndpoint("fe80::1%eth0", 8080)),
        ("http://[::1]", TcpEndpoint("::1", 80)),
        ("http://unix:/run/app.sock", UnixEndpoint("/run/app.sock")),
    ],
)
def test_parse_url(text: str, expected: object) -> None:
    assert parse_url(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("ftp://host:21", "scheme must be http or https"),
        ("localhost:5000", "expected a URL"),
        ("http://:8080", "host is empty"),
        ("http://host:", "port is empty"),
        ("http://host:8080/api", "--root-path"),
        ("http://user@host:8080", "user information"),
        ("http://[::1:8080", "IPV6"),
    ],
)
def test_parse_url_rejects(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_url(text)


def test_parse_urls_kestrel_separator() -> None:
    assert parse_urls("http://+:8080;http://localhost:5000") == [
        TcpEndpoint("*", 8080),
        TcpEndpoint("localhost", 5000),
    ]
    assert parse_urls(" http://127.0.0.1:1 , http://[::1]:2 ") == [TcpEndpoint("127.0.0.1", 1), TcpEndpoint("::1", 2)]
    with pytest.raises(ConfigError):
        parse_urls(" ; ")


@pytest.mark.parametrize(("text", "mode"), [("660", 0o660), ("0660", 0o660), ("0o600", 0o600), ("7", 0o7)])
def test_octal_mode(text: str, mode: int) -> None:
    assert parse_octal_mode(text) == mode


@pytest.mark.parametrize("text", ["", "8", "rw", "99999"])
def test_octal_mode_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_octal_mode(text)


def test_host_port_alone_is_the_default_endpoint() -> None:
    assert configured_endpoints() == [TcpEndpoint("127.0.0.1", 8000)]


def test_bind_alone_replaces_the_default_host_port() -> None:
    assert configured_endpoints(binds=["unix:/run/a.sock"]) == [UnixEndpoint("/run/a.sock")]


def test_explicit_host_port_adds_to_binds_urls_and_uds() -> None:
    found = configured_endpoints(
        host="::",
        port=9000,
        binds=["127.0.0.1:1", "fd://5", "127.0.0.1:1"],
        urls="http://localhost:2",
        uds="/run/b.sock",
        uds_mode=0o660,
    )
    assert found == [
        TcpEndpoint("::", 9000),
        UnixEndpoint("/run/b.sock", 0o660),
        TcpEndpoint("127.0.0.1", 1),
        FdEndpoint(5),
        TcpEndpoint("localhost", 2),
    ]


def test_cli_and_environment_spellings() -> None:
    parser = build_parser()
    args = parser.parse_args(
        ["app:app", "--bind", "[::1]:8081", "--bind", "unix:/tmp/x.sock", "--uds-mode", "600", "--port", "8082"]
    )
    config = config_from(args, {"KESTRELPY_URLS": "http://+:8083"})
    assert config.endpoints() == [
        TcpEndpoint("127.0.0.1", 8082),
        TcpEndpoint("::1", 8081),
        UnixEndpoint("/tmp/x.sock", 0o600),
        TcpEndpoint("*", 8083),
    ]
    from_env = config_from(
        parser.parse_args(["app:app"]), {"KESTRELPY_BIND": "127.0.0.1:1\nunix:/tmp/y.sock", "KESTRELPY_UDS": "/z"}
    )
    assert from_env.endpoints() == [UnixEndpoint("/z"), TcpEndpoint("127.0.0.1", 1), UnixEndpoint("/tmp/y.sock")]


def test_bad_endpoints_fail_at_config_time() -> None:
    with pytest.raises(ConfigError, match="brackets"):
        Config(app="a:b", binds=("::1:80",))
    with pytest.raises(ConfigError, match="no certificate is configured"):
        Config(app="a:b", urls="https://*:443")
    with pytest.raises(ConfigError, match="--uds-mode"):
        config_from(build_parser().parse_args(["a:b", "--uds-mode", "rw"]), {})


def test_systemd_variables() -> None:
    env = {"LISTEN_FDS": "2", "LISTEN_PID": "42", "LISTEN_FDNAMES": "web:admin"}
    assert systemd_endpoints(env, 42) == (FdEndpoint(3, "web"), FdEndpoint(4, "admin"))
    assert systemd_endpoints({"LISTEN_FDS": "1", "LISTEN_PID": "42"}, 42) == (FdEndpoint(3),)
    assert systemd_endpoints(env, 43) == ()  # meant for another process (e.g. our parent)
    assert systemd_endpoints({"LISTEN_FDS": "x", "LISTEN_PID": "42"}, 42) == ()
    assert systemd_endpoints({}, 42) == ()


def test_systemd_variables_are_taken_once_and_removed() -> None:
    import os

    env = {"LISTEN_FDS": "1", "LISTEN_PID": str(os.getpid()), "LISTEN_FDNAMES": "http", "OTHER": "1"}
    assert take_systemd_sockets(env) == (FdEndpoint(3, "http"),)
    assert env == {"OTHER": "1"}
    foreign = {"LISTEN_FDS": "1", "LISTEN_PID": "1"}
    assert take_systemd_sockets(foreign) == ()
    assert foreign == {"LISTEN_FDS": "1", "LISTEN_PID": "1"}  # not ours: left for whoever it is for


def test_inherited_sockets_replace_the_default_endpoint() -> None:
    config = Config(app="a:b", inherited=(FdEndpoint(3, "web"),))
    assert config.endpoints() == [FdEndpoint(3, "web")]


def test_display() -> None:
    assert TcpEndpoint("::1", 80).display() == "[::1]:80"
    assert UnixEndpoint("/a").display() == "unix:/a"
    assert FdEndpoint(3, "web").display() == "fd://3 (web)"
