"""Request-target splitting and path decoding for the HTTP scope."""

from __future__ import annotations

import pytest

from kestrelpy.asgi import decode_path, split_target


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        (b"/", (b"/", b"")),
        (b"/a/b?x=1&y=2", (b"/a/b", b"x=1&y=2")),
        (b"/a?", (b"/a", b"")),
        (b"http://example.com/p?q=1", (b"/p", b"q=1")),
        (b"http://example.com", (b"/", b"")),
        (b"HTTPS://example.com:8443/x", (b"/x", b"")),
        (b"*", (b"*", b"")),
        (b"example.com:443", None),
        (b"ftp://example.com/x", None),
        (b"nonsense", None),
    ],
)
def test_split_target(target: bytes, expected: tuple[bytes, bytes] | None) -> None:
    assert split_target(target) == expected


def test_decode_path_is_percent_decoded_utf8() -> None:
    assert decode_path(b"/caf%C3%A9/a%20b") == "/café/a b"
    assert decode_path(b"/plain") == "/plain"
    assert decode_path(b"/%2F") == "//"
    assert decode_path(b"/bad%FF") == "/bad\ufffd"
