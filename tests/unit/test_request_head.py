"""The request-head checks as pure functions: what scan_headers hands back for the body limit."""

from __future__ import annotations

import pytest

from kestrelpy.protocols.request_head import content_length, scan_headers


def test_scan_keeps_the_first_content_length_value_for_the_body_limit() -> None:
    headers = [(b"host", b"a"), (b"content-length", b"12"), (b"content-type", b"text/plain")]
    keep_alive, _, _, _, hosts, codings, length, empty_body, content_types, forwarded = scan_headers(
        set(), headers, True
    )
    assert (keep_alive, hosts, codings, length, empty_body, content_types) == (True, 1, 0, b"12", False, 1)
    assert not forwarded
    assert scan_headers(set(), [(b"host", b"a")], True)[6] is None  # no Content-Length: no value
    both = [(b"host", b"a"), (b"content-length", b"0"), (b"content-length", b"7")]
    assert scan_headers(set(), both, True)[6] == b"0"  # the first, as the limit has always read it


@pytest.mark.parametrize("name", [b"forwarded", b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host"])
def test_scan_notices_a_forwarded_field_among_the_others(name: bytes) -> None:
    headers = [(b"host", b"a"), (name, b"for=192.0.2.1"), (b"te", b"trailers"), (b"accept", b"*/*")]
    scanned = scan_headers(set(), headers, True)
    assert scanned[9] is True
    assert scanned[2] is True  # (the fields after it are still read)
    assert scan_headers(set(), [(b"host", b"a"), (b"x-forwarded", b"1"), (b"forwarded-for", b"2")], True)[9] is False


def test_content_length_reads_a_list_of_equal_values_and_never_raises() -> None:
    assert content_length(b"1024") == 1024
    assert content_length(b"5, 5") == 5  # h11 passes repeated equal values on as one list
    assert content_length(b"x") == 0  # (the parsers refuse such a value before the limit is checked)
