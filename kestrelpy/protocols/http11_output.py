"""Http1Output: the HTTP/1.1 framing of a response, the connection's side of the cycle's Stream interface.

An HTTP/1.1 connection answers one request at a time, so, as in Kestrel (where Http1Connection is the
request's HttpProtocol), the connection itself is the stream of its current response and this class
holds that response's framing state; it is reset by `start_response`. What it decides (RFC 9112 section 6,
RFC 9110 section 6.4.1):
- Content-Length when the app declared one, or when the whole body came in one message; otherwise
  chunked on HTTP/1.1 and until-close on HTTP/1.0; no body bytes for HEAD, 1xx, 204 and 304;
- `connection: close` when the request or the app asked for it, when the request body was left unread,
  when the server is shutting down, or after a 500 the server made for a failed app;
- trailers as the chunked body's trailer section.
The head is held back until the first body message so that head and body leave in one write, and so that
an app failing before then still gets a clean 500 instead of a half-sent response.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from kestrelpy.protocols.writer import (
    BY_CHUNKS,
    BY_CLOSE,
    BY_LENGTH,
    CONTINUE_100,
    LAST_CHUNK,
    NO_BODY,
    HeaderError,
    body_framing,
    checked_line,
    chunk,
    encode_headers,
    header_line,
    validate_header,
)

if TYPE_CHECKING:
    from kestrelpy.protocols.cycle import RequestCycle
    from kestrelpy.state import ServerState

# Response headers the framing looks at; every other header is passed through as it is.
_CONTENT_LENGTH, _TRANSFER_ENCODING, _CONNECTION, _SERVER, _DATE = range(5)
_SPECIAL_HEADERS = {
    b"content-length": _CONTENT_LENGTH,
    b"transfer-encoding": _TRANSFER_ENCODING,
    b"connection": _CONNECTION,
    b"server": _SERVER,
    b"date": _DATE,
}
# What a response header means to the framing (see _framed): a Content-Length is its value (>= 0).
_PASS, _DROP, _CLOSE, _OWN_SERVER, _OWN_DATE = -1, -2, -3, -4, -5
_PLAIN_TEXT = [(b"content-type", b"text/plain; charset=utf-8")]

# (name, value) -> (its line, what it means to the framing), for pairs already checked: apps send the
# same few headers over and over, so the common case is one dict lookup per header. Bounded, since
# values can vary freely.
_FRAMED: dict[tuple[bytes, bytes], tuple[bytes, int]] = {}
_FRAMED_MAX = 4096
_framed_get = _FRAMED.get


def _framed(name: bytes, value: bytes) -> tuple[bytes, int]:
    """A response header's line and what it means to the framing (a Content-Length as its number);
    raises HeaderError for one that cannot be sent. Remembered when the pair is hashable."""
    lowered, line = checked_line(name, value)  # (not header_line: this is the HTTP/1.1 output's cache)
    special = _SPECIAL_HEADERS.get(lowered)
    if special is None:
        role = _PASS
    elif special == _CONTENT_LENGTH:
        role = _content_length(value)
    elif special == _TRANSFER_ENCODING:
        role = _DROP  # framing is ours to choose
    elif special == _CONNECTION:
        role = _CLOSE if b"close" in bytes(value).lower() else _PASS
    else:
        role = _OWN_SERVER if special == _SERVER else _OWN_DATE  # the app's own replaces ours
    known = (line, role)
    try:
        if len(_FRAMED) >= _FRAMED_MAX:
            _FRAMED.clear()
        _FRAMED[(name, value)] = known
    except TypeError:  # bytearray and other unhashable buffers: checked every time
        pass
    return known


def _content_length(value: Any) -> int:
    """A response Content-Length value as a number: digits only (RFC 9110 section 8.6)."""
    try:
        hash(value)
    except TypeError:  # bytearray and other unhashable buffers
        value = bytes(value)
    if not isinstance(value, bytes) or not value.isdigit():
        raise HeaderError(f"invalid content-length {value!r}")
    return int(value)


def closing_response(state: ServerState, status: int, headers: Iterable[tuple[bytes, bytes]], body: bytes) -> bytes:
    """A whole response after which the connection closes: refusals and WebSocket handshake answers.
    The framing headers are ours (the length below, `connection: close`); a body without a type is text."""
    lines = [state.response_start(status)]
    has_type = False
    for name, value in headers:
        lowered, line = header_line(name, value)
        if lowered in (b"content-length", b"connection", b"transfer-encoding"):
            continue
        has_type = has_type or lowered == b"content-type"
        lines.append(line)
    if body and not has_type:
        lines.append(b"content-type: text/plain; charset=utf-8\r\n")
    lines.append(b"content-length: %d\r\nconnection: close\r\n\r\n" % len(body))
    lines.append(body)
    return b"".join(lines)


class Http1Output(asyncio.Protocol):
    """Framing for the current response; the connection subclass provides the attributes declared here."""

    __slots__ = (
        "_bytes_left",
        "_framing",
        "_head_request",
        "_http11",
        "_pending_head",
        "_status",
        "_with_trailers",
        "keep_alive",
    )

    # provided by HttpConnection
    state: ServerState
    cycle: RequestCycle | None
    closing: bool

    def write(self, data: bytes) -> None:
        raise NotImplementedError

    def _init_output(self) -> None:
        self._framing = NO_BODY
        self._bytes_left = 0
        self._pending_head: list[bytes] | None = None
        self._status = 0
        self._with_trailers = False
        self._head_request = False
        self._http11 = True
        self.keep_alive = True  # whether the connection stays open after the current response

    # -- the Stream interface (see cycle.py) ------------------------------------------------------

    @property
    def response_on_wire(self) -> bool:
        """Whether the response head has been handed to the transport (after the first body message)."""
        return self._pending_head is None

    def start_response(self, status: int, headers: Iterable[tuple[bytes, bytes]], trailers: bool) -> None:
        lines = [b""]  # the response start goes first, once we know whether the app brings Server or Date
        own_server = own_date = has_length = False
        for name, value in headers:
            try:
                known = _framed_get((name, value))  # a header already checked: no call
            except TypeError:  # a bytearray
                known = None
            line, role = known if known is not None else _framed(name, value)
            if role != _PASS:
                if role >= 0:
                    self._bytes_left = role
                    has_length = True
                elif role == _DROP:
                    continue
                elif role == _CLOSE:
                    self.keep_alive = False
                elif role == _OWN_SERVER:
                    own_server = True
                else:
                    own_date = True
            lines.append(line)
        state = self.state
        # The usual start is looked up here; response_start builds it (and the app's own Server or Date).
        start = None if own_server or own_date else state.response_starts.get(status)
        lines[0] = start if start is not None else state.response_start(status, own_server, own_date)
        self._with_trailers = trailers
        self._framing = BY_LENGTH if has_length else NO_BODY
        self._pending_head = lines  # held until the first body message, and joined with it
        self._status = status

    def send_body(self, body: bytes, more_body: bool) -> None:
        head = self._pending_head
        if head is not None:
            # (a whole body's length counts its bytes; bytes() also refuses what is no body before the
            # head is decided, so that the app's error is still answered with a 500)
            self._finish_head(head, None if more_body else body if type(body) is bytes else bytes(body))
        framing = self._framing
        out = b""
        if framing is not NO_BODY and not self._head_request:
            if body:
                if framing is BY_LENGTH:
                    left = self._bytes_left - len(body)
                    if left < 0:
                        self._flush(head, b"")
                        raise RuntimeError("Response content longer than Content-Length.")
                    self._bytes_left = left
                    out = body
                elif framing is BY_CHUNKS:
                    out = chunk(body)
                else:
                    out = body
            if not more_body:
                if framing is BY_LENGTH:
                    if self._bytes_left:
                        self._flush(head, out)
                        raise RuntimeError("Response content shorter than Content-Length.")
                elif framing is BY_CHUNKS:
                    # With trailers, the last chunk only: the trailer section and its blank line follow.
                    out += b"0\r\n" if self._with_trailers else LAST_CHUNK
        if head is not None:
            head.append(out)
            self.write(b"".join(head))  # the head and the first body bytes in one piece
        elif out:
            self.write(out if type(out) is bytes else bytes(out))  # (an app may reuse its buffer)

    def send_trailers(self, headers: Iterable[tuple[bytes, bytes]], more_trailers: bool) -> None:
        lines = []
        for name, value in headers:
            name, value = bytes(name).lower(), bytes(value)
            validate_header(name, value)
            lines.append((name, value))
        if self._framing is BY_CHUNKS and not self._head_request:
            self._flush(None, encode_headers(lines) + (b"" if more_trailers else b"\r\n"))

    def send_continue(self) -> None:
        self.write(CONTINUE_100)

    def fail_response(self, status: int, body: bytes) -> None:
        """Answer `status` instead of a response that never reached the wire; the connection closes after
        it, since the failed app may have left its request body unread."""
        self.keep_alive = False
        self.start_response(status, _PLAIN_TEXT, False)
        self.send_body(body, False)

    # -- framing ---------------------------------------------------------------------------------

    def _finish_head(self, head: list[bytes], whole_body: bytes | None) -> None:
        """Add the head's framing lines and its blank line, once the first body message shows whether the
        length is known; the head is no longer held."""
        self._pending_head = None
        status = self._status
        has_length = self._framing is BY_LENGTH
        if not has_length and whole_body is not None and not self._with_trailers:
            has_length = True
            self._bytes_left = len(whole_body)
            if status >= 200 and status != 204 and status != 304:
                head.append(b"content-length: %d\r\n" % len(whole_body))
        framing = body_framing(status, self._head_request, has_length, self._http11)
        self._framing = framing
        if framing is BY_CHUNKS:
            head.append(b"transfer-encoding: chunked\r\n")
        elif framing is BY_CLOSE:
            self.keep_alive = False
        cycle = self.cycle
        if (cycle is not None and not cycle.body_complete) or self.closing:
            # Unread request body or shutting down: this response ends the connection.
            self.keep_alive = False
        if not self.keep_alive:
            head.append(b"connection: close\r\n")
        elif not self._http11:
            head.append(b"connection: keep-alive\r\n")
        head.append(b"\r\n")

    def _flush(self, head: list[bytes] | None, out: bytes) -> None:
        """Write what is ready, the held head (if any) first; before a body error, the head and the body
        that fit."""
        if head is not None:
            head.append(out)
            out = b"".join(head)
        if out:
            self.write(out if type(out) is bytes else bytes(out))
