"""Response serialisation: status line, header validation, and body framing chosen by one pure function.

The framing rules follow RFC 9112 section 6 (message body length) and RFC 9110 section 6.4.1
(responses to HEAD, 1xx, 204 and 304 carry no content). `body_framing()` decides once per response;
the body writers below only count and frame bytes.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from enum import Enum
from http import HTTPStatus

# RFC 9110 section 5.1: field-name = token; section 5.5: field values exclude CR, LF and NUL.
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_FORBIDDEN_IN_VALUE = re.compile(rb"[\x00\r\n]")


class HeaderError(ValueError):
    """The application gave a header that cannot be sent safely."""


class Framing(Enum):
    NONE = "none"  # no body may follow (HEAD, 1xx, 204, 304)
    CONTENT_LENGTH = "content-length"
    CHUNKED = "chunked"
    UNTIL_CLOSE = "until-close"  # HTTP/1.0 peer, unknown length: the close marks the end


# The framings as globals, for the hot path: `Framing.NONE` costs a full attribute lookup on the Enum class.
NO_BODY, BY_LENGTH, BY_CHUNKS, BY_CLOSE = Framing.NONE, Framing.CONTENT_LENGTH, Framing.CHUNKED, Framing.UNTIL_CLOSE


def body_framing(status: int, head_request: bool, has_content_length: bool, http11: bool) -> Framing:
    """How the response body is delimited on the wire (called once per response: positional arguments
    cost less than keywords).

    HEAD keeps GET's header framing (RFC 9110 section 9.3.2) but the writer sends no body bytes; the
    caller handles that, so this function answers as for GET except that no body is written.
    """
    if status < 200 or status == 204 or status == 304:  # (comparisons: `in` a tuple costs more)
        return NO_BODY
    if has_content_length:
        return BY_LENGTH
    if http11:
        return BY_CHUNKS
    return BY_CLOSE


_STATUS_LINES: dict[int, bytes] = {}


def status_line(status: int) -> bytes:
    """`HTTP/1.1 200 OK\\r\\n`, built once per status code. Raises ValueError for a status that is not
    three digits (RFC 9112 section 4), which the app's `send` passes on: answered as an app error."""
    line = _STATUS_LINES.get(status)
    if line is None:
        check_status(status)
        try:
            phrase = HTTPStatus(status).phrase
        except ValueError:
            phrase = ""
        line = _STATUS_LINES[status] = b"HTTP/1.1 %d %s\r\n" % (status, phrase.encode("ascii"))
    return line


def check_status(status: int) -> None:
    if not 100 <= status <= 999:
        raise ValueError(f"Invalid HTTP status code {status!r}: a status code is three digits (100 to 999).")


def validate_header(name: bytes, value: bytes) -> None:
    """Refuse a header that could split the response (CVE-2020-7695 class)."""
    if not _TOKEN.fullmatch(name):
        raise HeaderError(f"invalid response header name {name!r}")
    if _FORBIDDEN_IN_VALUE.search(value):
        raise HeaderError(f"invalid response header value for {name!r}: CR, LF and NUL are not allowed")


# Apps send the same few headers over and over: remember the pairs already checked, with the
# lower-cased name and the encoded line, so the common case is one dict lookup. Bounded, since
# values can vary freely.
_CHECKED: dict[tuple[bytes, bytes], tuple[bytes, bytes]] = {}
_CHECKED_MAX = 4096


def checked_line(name: bytes, value: bytes) -> tuple[bytes, bytes]:
    """(lower-cased name, `name: value\r\n`) for a header that is safe to send, checked every time (for
    callers that keep their own cache); raises HeaderError."""
    name, value = bytes(name), bytes(value)
    validate_header(name, value)
    lowered = name.lower()
    return lowered, b"%s: %s\r\n" % (lowered, value)


def header_line(name: bytes, value: bytes) -> tuple[bytes, bytes]:
    """(lower-cased name, `name: value\r\n`) for a header that is safe to send; raises HeaderError."""
    try:
        known = _CHECKED.get((name, value))
    except TypeError:  # bytearray and other unhashable buffers: check every time
        return checked_line(name, value)
    if known is None:
        known = checked_line(name, value)
        if len(_CHECKED) >= _CHECKED_MAX:
            _CHECKED.clear()
        _CHECKED[(bytes(name), bytes(value))] = known  # (a read-only memoryview is hashable: keep bytes)
    return known


def encode_headers(headers: Iterable[tuple[bytes, bytes]]) -> bytes:
    """Header lines for already-validated pairs."""
    return b"".join([b"%s: %s\r\n" % (name, value) for name, value in headers])


def chunk(data: bytes) -> bytes:
    """One chunk of a chunked body (RFC 9112 section 7.1)."""
    return b"%x\r\n%s\r\n" % (len(data), data)


LAST_CHUNK = b"0\r\n\r\n"
CONTINUE_100 = b"HTTP/1.1 100 Continue\r\n\r\n"
