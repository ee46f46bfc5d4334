"""Config validation and the CLI/environment merge, all pure."""

from __future__ import annotations

import dataclasses

import pytest

from kestrelpy.cli import build_parser, config_from
from kestrelpy.config import Config, Limits, env_name, flag_name, options
from kestrelpy.errors import ConfigError

# Flags a uvicorn user expects to find under the same name.
UVICORN_FLAGS = [
    "--host",
    "--port",
    "--http",
    "--loop",
    "--lifespan",
    "--log-level",
    "--access-log",
    "--no-access-log",
    "--timeout-keep-alive",
    "--timeout-graceful-shutdown",
    "--root-path",
    "--factory",
    "--app-dir",
    "--header",
    "--server-header",
    "--no-server-header",
    "--date-header",
    "--no-date-header",
    "--backlog",
]


def parse(argv: list[str], env: dict[str, str] | None = None) -> Config:
    return config_from(build_parser().parse_args(argv), env or {})


def test_help_documents_every_uvicorn_named_flag() -> None:
    text = build_parser().format_help()
    for flag in UVICORN_FLAGS:
        assert flag in text, flag


def test_defaults_match_the_dataclass() -> None:
    config = parse(["app:app"])
    assert config == Config(app="app:app")
    assert config.port == 8000 and config.backlog == 2048 and config.limits.keep_alive_timeout == 5.0


def test_cli_beats_environment_beats_default() -> None:
    env = {"KESTRELPY_PORT": "9001", "KESTRELPY_TIMEOUT_KEEP_ALIVE": "7.5", "KESTRELPY_ACCESS_LOG": "false"}
    from_env = parse(["app:app"], env)
    assert from_env.port == 9001
    assert from_env.limits.keep_alive_timeout == 7.5
    assert from_env.access_log is False
    from_cli = parse(["app:app", "--port", "9002", "--access-log"], env)
    assert from_cli.port == 9002
    assert from_cli.access_log is True
    assert from_cli.limits.keep_alive_timeout == 7.5


def test_repeated_headers_and_header_env() -> None:
    config = parse(["app:app", "--header", "X-A: 1", "--header", "X-B:two"])
    assert config.headers == (("X-A", "1"), ("X-B", "two"))
    assert parse(["app:app"], {"KESTRELPY_HEADER": "X-A: 1\nX-B: 2"}).headers == (("X-A", "1"), ("X-B", "2"))


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        (["--port", "70000"], {}, "--port"),
        (["--port", "x"], {}, "--port"),
        (["--backlog", "0"], {}, "--backlog"),
        (["--timeout-keep-alive", "0"], {}, "--timeout-keep-alive"),
        (["--timeout-request-headers", "0"], {}, "--timeout-request-headers"),
        (["--limit-request-line", "10"], {}, "--limit-request-line"),
        (["--limit-request-headers", "10"], {}, "--limit-request-headers"),
        (["--limit-request-header-count", "0"], {}, "--limit-request-header-count"),
        (["--limit-request-body", "-1"], {}, "--limit-request-body"),
        (["--limit-keep-alive-requests", "-1"], {}, "--limit-keep-alive-requests"),
        (["--limit-concurrency", "-1"], {}, "--limit-concurrency"),
        ([], {"KESTRELPY_LIMIT_REQUEST_BODY": "lots"}, "KESTRELPY_LIMIT_REQUEST_BODY"),
        (["--header", "novalue"], {}, "--header"),
        ([], {"KESTRELPY_PORT": "nope"}, "KESTRELPY_PORT"),
        ([], {"KESTRELPY_ACCESS_LOG": "maybe"}, "KESTRELPY_ACCESS_LOG"),
    ],
)
def test_invalid_values_name_their_source(argv: list[str], env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse(["app:app", *argv], env)


def test_header_with_line_break_is_refused_at_construction() -> None:
    with pytest.raises(ConfigError):
        Config(app="a:b", headers=(("X-A", "1\r\nSet-Cookie: x"),))


def test_every_option_has_one_flag_and_one_env_name() -> None:
    flags = [flag_name(f) for _, f in options()]
    envs = [env_name(f) for _, f in options()]
    assert len(flags) == len(set(flags))
    assert len(envs) == len(set(envs))
    assert all(e.startswith("KESTRELPY_") for e in envs)


def test_config_is_frozen() -> None:
    config = Config(app="a:b")
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.port = 1  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        Limits().keep_alive_timeout = 1  # type: ignore[misc]


def test_limits_defaults_and_their_flags() -> None:
    limits = parse(["app:app"]).limits
    assert (limits.request_headers_timeout, limits.max_request_line_size, limits.max_request_headers_size) == (
        10.0,
        8192,
        32768,
    )
    assert (limits.max_request_header_count, limits.max_request_body_size) == (100, 30_000_000)
    assert (limits.max_requests_per_connection, limits.max_concurrent_connections) == (0, 0)
    argv = ["--limit-request-body", "0", "--limit-concurrency", "50", "--limit-keep-alive-requests", "1000"]
    env = {"KESTRELPY_TIMEOUT_REQUEST_HEADERS": "2.5", "KESTRELPY_LIMIT_REQUEST_HEADER_COUNT": "20"}
    limits = parse(["app:app", *argv], env).limits
    assert limits.max_request_body_size == 0
    assert limits.max_concurrent_connections == 50
    assert limits.max_requests_per_connection == 1000
    assert limits.request_headers_timeout == 2.5
    assert limits.max_request_header_count == 20


def test_every_limit_documents_where_its_default_comes_from() -> None:
    text = build_parser().format_help()
    for owner, f in options():
        if owner is Limits:
            assert flag_name(f) in text
            assert any(source in f.metadata["help"] for source in ("Kestrel", "uvicorn", "nginx", "Apache")), f.name
