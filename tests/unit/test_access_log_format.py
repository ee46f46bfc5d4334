"""The access log formats as pure functions, and the logging setup that writes them."""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Iterator

import pytest

from kestrelpy import logs
from kestrelpy.access_log import AccessEntry, clf_time, compile_format, escape


def entry(**scope: object) -> AccessEntry:
    base: dict[str, object] = {
        "client": ("192.0.2.1", 4242),
        "method": "GET",
        "raw_path": b"/p",
        "query_string": b"",
        "http_version": "1.1",
        "headers": [(b"host", b"t")],
    }
    return AccessEntry({**base, **scope}, 200, 5, 0.0125)


def test_escape_writes_unsafe_bytes_as_nginx_does() -> None:
    assert escape('a"b\\c\r\n\x1b\x7f\x85\xff') == "a\\x22b\\x5cc\\x0d\\x0a\\x1b\\x7f\\x85\\xff"
    assert escape("/plain/path?q=1") == "/plain/path?q=1"


def test_clf_time_is_english_whatever_the_locale() -> None:
    assert re.fullmatch(r"\d{2}/[A-Z][a-z]{2}/\d{4}:\d{2}:\d{2}:\d{2} [+-]\d{4}", clf_time(time.time()))
    assert clf_time(0.0).split("/")[1] in ("Dec", "Jan")


def test_default_line_is_unchanged() -> None:
    line = compile_format("default").render(entry(query_string=b"x=1"))
    assert line == '192.0.2.1:4242 - "GET /p?x=1 HTTP/1.1" 200'


def test_template_renders_fields_and_literal_braces() -> None:
    fmt = compile_format("{{{client}:{client_port}}} {request} {duration_ms}ms {header:Host} {rejected}")
    assert fmt.render(entry()) == "{192.0.2.1:4242} GET /p HTTP/1.1 12.500ms t -"
    assert not fmt.wants_response_headers
    assert compile_format("{response_header:etag}").wants_response_headers


def test_a_refused_request_has_only_its_client() -> None:
    refused = AccessEntry(None, 431, 33, 0.0, rejected="HEADERS_TOO_LARGE", client=("192.0.2.1", 1))
    assert compile_format("{method} {path} {status} {rejected}").render(refused) == "- - 431 HEADERS_TOO_LARGE"
    record = json.loads(compile_format("json").render(refused))
    assert (record["method"], record["path"], record["rejected"]) == (None, None, "HEADERS_TOO_LARGE")


@pytest.fixture
def restore_logging() -> Iterator[None]:
    saved = [
        (log, log.handlers[:], log.level, log.propagate)
        for log in (logging.getLogger("kestrelpy"), logging.getLogger("kestrelpy.access"))
    ]
    yield
    for log, handlers, level, propagate in saved:
        log.handlers[:] = handlers
        log.setLevel(level)
        log.propagate = propagate


@pytest.mark.usefixtures("restore_logging")
@pytest.mark.parametrize(("fmt", "prefix"), [("default", "INFO     "), ("json", "")])
def test_only_the_default_line_carries_the_level(capsys: pytest.CaptureFixture[str], fmt: str, prefix: str) -> None:
    logs.configure("info", access_log=True, access_log_format=fmt)
    logging.getLogger("kestrelpy.access").info('{"status": 200}')
    assert capsys.readouterr().out == prefix + '{"status": 200}\n'
