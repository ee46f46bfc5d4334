"""The response framing decision and header validation, as pure functions."""

from __future__ import annotations

import pytest

from kestrelpy.protocols.writer import (
    Framing,
    HeaderError,
    body_framing,
    chunk,
    status_line,
    validate_header,
)


@pytest.mark.parametrize(
    ("status", "has_length", "http11", "expected"),
    [
        (200, True, True, Framing.CONTENT_LENGTH),
        (200, False, True, Framing.CHUNKED),
        (200, False, False, Framing.UNTIL_CLOSE),
        (200, True, False, Framing.CONTENT_LENGTH),
        (204, False, True, Framing.NONE),
        (304, True, True, Framing.NONE),
        (101, False, True, Framing.NONE),
        (500, False, True, Framing.CHUNKED),
    ],
)
def test_body_framing_table(status: int, has_length: bool, http11: bool, expected: Framing) -> None:
    framing = body_framing(status=status, head_request=False, has_content_length=has_length, http11=http11)
    assert framing is expected


def test_head_keeps_get_framing() -> None:
    for has_length in (True, False):
        as_get = body_framing(status=200, head_request=False, has_content_length=has_length, http11=True)
        as_head = body_framing(status=200, head_request=True, has_content_length=has_length, http11=True)
        assert as_get is as_head


@pytest.mark.parametrize(
    ("name", "value"),
    [
        (b"x-a", b"1\r\nset-cookie: evil"),
        (b"x-a", b"1\nx"),
        (b"x-a", b"1\x00"),
        (b"x a", b"1"),
        (b"x-a\r\n", b"1"),
        (b"", b"1"),
        (b"x:a", b"1"),
    ],
)
def test_header_splitting_is_refused(name: bytes, value: bytes) -> None:
    with pytest.raises(HeaderError):
        validate_header(name, value)


def test_ordinary_headers_pass() -> None:
    validate_header(b"content-type", b"text/plain; charset=utf-8")
    validate_header(b"x-custom_1.2", b"tab\tis fine")


def test_status_lines_and_chunks() -> None:
    assert status_line(200) == b"HTTP/1.1 200 OK\r\n"
    assert status_line(599) == b"HTTP/1.1 599 \r\n"
    assert chunk(b"hello") == b"5\r\nhello\r\n"
    assert chunk(b"x" * 26) == b"1a\r\n" + b"x" * 26 + b"\r\n"
