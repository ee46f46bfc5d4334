"""RequestCycle: the one ASGI `receive`/`send` implementation for an HTTP/1.1 request.

Both parser adapters feed it through the shared connection; it never sees a parser. It owns the app
error policy: an exception (or a return without a complete response) before the response starts is
answered with a 500; after the start the connection is aborted, so the client can tell the response
was cut short rather than mistaking a truncated body for a whole one.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from kestrelpy.asgi import ASGIApp, Message, Scope
from kestrelpy.protocols.writer import (
    CONTINUE_100,
    LAST_CHUNK,
    Framing,
    HeaderError,
    body_framing,
    chunk,
    encode_headers,
    header_line,
    status_line,
    validate_header,
)

if TYPE_CHECKING:
    from kestrelpy.protocols.http11 import HttpConnection

logger = logging.getLogger("kestrelpy.error")
access_logger = logging.getLogger("kestrelpy.access")

# Buffered request body above which the connection stops reading until the app catches up.
BODY_BUFFER_HIGH_WATER = 64 * 1024

_DISCONNECT: dict[str, Any] = {"type": "http.disconnect"}

# `read_timing`: whether the request body's data rate is being measured (Kestrel's TimeoutControl).
# The app waiting in receive() turns it on; its wait ending asks for it to stop, which the next
# heartbeat does after counting that beat, so a wait shorter than a beat is still counted.
TIMING_OFF, TIMING_ON, TIMING_STOPPING = 0, 1, 2

# Response headers the writer itself looks at; every other header is passed through as it is.
_CONTENT_LENGTH, _TRANSFER_ENCODING, _CONNECTION, _SERVER, _DATE = range(5)
_SPECIAL_HEADERS = {
    b"content-length": _CONTENT_LENGTH,
    b"transfer-encoding": _TRANSFER_ENCODING,
    b"connection": _CONNECTION,
    b"server": _SERVER,
    b"date": _DATE,
}
_ERROR_500_BODY = b"Internal Server Error"


_LENGTHS: dict[bytes, int] = {}  # parsed response Content-Length values: most responses repeat a few
_LENGTHS_MAX = 1024


def _content_length(value: Any) -> int:
    """A response Content-Length value as a number: digits only (RFC 9110 section 8.6)."""
    try:
        length = _LENGTHS.get(value)
    except TypeError:  # bytearray and other unhashable buffers
        value = bytes(value)
        length = None
    if length is None:
        if not isinstance(value, bytes) or not value.isdigit():
            raise HeaderError(f"invalid content-length {value!r}")
        length = int(value)
        if len(_LENGTHS) >= _LENGTHS_MAX:
            _LENGTHS.clear()
        _LENGTHS[value] = length
    return length


class ClientDisconnected(OSError):
    """Raised by `send` once the client has gone (ASGI HTTP spec 2.4)."""


class RequestCycle:
    """One request and its response. Created by the connection when a request head arrives."""

    __slots__ = (
        "_body",
        "_body_waiter",
        "_bytes_left",
        "_conn",
        "_final_delivered",
        "_framing",
        "_pending_head",
        "_trailers_expected",
        "body_complete",
        "body_received",
        "disconnected",
        "expect_continue",
        "head_request",
        "http11",
        "keep_alive",
        "read_elapsed",
        "read_timing",
        "response_complete",
        "response_started",
        "scope",
        "status",
        "task",
    )

    def __init__(
        self,
        conn: HttpConnection,
        scope: Scope,
        *,
        keep_alive: bool,
        expect_continue: bool,
        http11: bool,
    ) -> None:
        self._conn = conn
        self.scope = scope
        self.keep_alive = keep_alive
        self.expect_continue = expect_continue
        self.http11 = http11
        self.head_request = scope["method"] == "HEAD"
        self.task: asyncio.Task[None] | None = None
        # request body
        self._body = bytearray()
        self._body_waiter: asyncio.Future[None] | None = None
        self.body_complete = False
        self.body_received = 0  # body bytes so far, for the minimum data rate
        self.read_timing = TIMING_OFF
        self.read_elapsed = 0.0  # seconds the app has waited for body bytes, counted by the heartbeat
        self._final_delivered = False
        self.disconnected = False
        # response
        self.response_started = False
        self.response_complete = False
        self.status = 0
        self._framing = Framing.NONE
        self._bytes_left = 0
        self._pending_head = b""
        self._trailers_expected = False

    # -- fed by the connection -------------------------------------------------------------------

    def feed_body(self, data: bytes | bytearray) -> None:  # h11 hands over bytearray slices
        if self.response_complete:
            return  # the app is done with this request; the rest of its body is dropped
        self._body += data
        self.body_received += len(data)
        if len(self._body) > BODY_BUFFER_HIGH_WATER:
            self._conn.flow.pause_reading()
        self._wake()

    def finish_body(self) -> None:
        self.body_complete = True
        self._wake()

    def on_disconnect(self) -> None:
        self.disconnected = True
        self._wake()

    def _wake(self) -> None:
        waiter = self._body_waiter
        if waiter is not None:
            self._body_waiter = None
            if not waiter.done():
                waiter.set_result(None)

    # -- the ASGI callables ----------------------------------------------------------------------

    async def run(self, app: ASGIApp) -> None:
        try:
            await app(self.scope, self.receive, self.send)
        except GeneratorExit:
            raise  # the task is being garbage-collected (it leaked): nothing is left to answer
        except BaseException as exc:
            self._on_app_error(exc)
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
        else:
            if not self.response_complete and not self.disconnected:
                if self.response_started:
                    logger.error("ASGI app returned without completing the response.")
                else:
                    logger.error("ASGI app returned without starting a response.")
                self._fail()
        finally:
            self.task = None

    def _on_app_error(self, exc: BaseException) -> None:
        if self.disconnected:
            # The client left; the app noticing it is not an error worth a traceback.
            logger.debug("ASGI app ended after the client disconnected: %r", exc)
            return
        if isinstance(exc, asyncio.CancelledError):
            self._conn.abort()
            return
        logger.error("Exception in ASGI application", exc_info=exc)
        self._fail()

    def _fail(self) -> None:
        """Answer 500 if nothing was sent yet; otherwise cut the connection."""
        if self.response_complete:
            return
        if self.response_started and self._pending_head == b"":
            self._conn.abort()
            return
        # Nothing reached the wire yet (a pending head is discarded): a clean 500 is still possible.
        self.response_started = False
        self.keep_alive = False
        self._start(
            {
                "type": "http.response.start",
                "status": 500,
                "headers": [(b"content-type", b"text/plain; charset=utf-8")],
            }
        )
        self._write_body(_ERROR_500_BODY, more_body=False)

    async def receive(self) -> Message:
        if self.expect_continue:
            # RFC 9110 section 10.1.1: the interim answer goes out once the app wants the body.
            self.expect_continue = False
            if not self.body_complete and not self._body and not self.disconnected:
                self._conn.write(CONTINUE_100)
        while True:
            if self.response_complete:
                return _DISCONNECT
            if self._body or (self.body_complete and not self._final_delivered):
                body = bytes(self._body)
                self._body.clear()
                more_body = not self.body_complete
                if more_body:
                    self._conn.resume_reading_for(self)
                else:
                    self._final_delivered = True
                return {"type": "http.request", "body": body, "more_body": more_body}
            if self.disconnected:
                return _DISCONNECT
            # Wait for more body, its end, the client leaving, or the response completing.
            timed = not self.body_complete
            if timed:
                self._conn.resume_reading_for(self)
                self.read_timing = TIMING_ON  # the server now waits on the client: its rate counts
            self._body_waiter = asyncio.get_running_loop().create_future()
            try:
                await self._body_waiter
            finally:
                if timed:
                    self.read_timing = TIMING_STOPPING

    async def send(self, message: Message) -> None:
        if self.disconnected:
            raise ClientDisconnected("the client has disconnected")
        flow = self._conn.flow
        if flow.write_paused:
            await flow.drain()
            if self.disconnected:
                raise ClientDisconnected("the client has disconnected")
        kind = message["type"]
        if not self.response_started:
            if kind != "http.response.start":
                raise RuntimeError(f"Expected 'http.response.start' first, got {kind!r}.")
            self._start(message)
        elif self.response_complete:
            raise RuntimeError(f"Cannot send {kind!r}: the response is already complete.")
        elif kind == "http.response.body":
            self._write_body(message.get("body", b""), message.get("more_body", False))
        elif kind == "http.response.trailers" and self._trailers_expected:
            self._write_trailers(message.get("headers", ()), message.get("more_trailers", False))
        else:
            raise RuntimeError(f"Unexpected ASGI message {kind!r} during the response.")

    # -- response writing ------------------------------------------------------------------------

    def _start(self, message: Message) -> None:
        status = int(message["status"])
        state = self._conn.state
        has_length = False
        # status line, Server, Date, --header lines, then the app's headers
        date = state.date_line if state.date_header else b""
        head = [status_line(status), state.server_line, date, state.extra_header_lines]
        for raw_name, value in message.get("headers", ()):
            name, line = header_line(raw_name, value)
            special = _SPECIAL_HEADERS.get(name)
            if special is not None:
                if special == _CONTENT_LENGTH:
                    self._bytes_left = _content_length(value)
                    has_length = True
                elif special == _TRANSFER_ENCODING:
                    continue  # framing is ours to choose
                elif special == _CONNECTION:
                    if b"close" in bytes(value).lower():
                        self.keep_alive = False
                elif special == _SERVER:
                    head[1] = b""  # the app's own Server header replaces ours
                else:
                    head[2] = b""  # likewise its Date
            head.append(line)
        self.status = status
        self.response_started = True
        if message.get("trailers", False):
            self._trailers_expected = "http.response.trailers" in self.scope.get("extensions", ())
        self._framing = Framing.CONTENT_LENGTH if has_length else Framing.NONE
        self._pending_head = b"".join(head)
        if state.access_log:
            self._log_access()

    def _finish_head(self, whole_body: bytes | None) -> bytes:
        """The head's framing lines, once the first body event shows whether the length is known."""
        has_length = self._framing == Framing.CONTENT_LENGTH
        extra = b""
        if not has_length and whole_body is not None and not self._trailers_expected:
            has_length = True
            self._bytes_left = len(whole_body)
            if self.status >= 200 and self.status not in (204, 304):
                extra = b"content-length: %d\r\n" % len(whole_body)
        framing = body_framing(
            status=self.status, head_request=self.head_request, has_content_length=has_length, http11=self.http11
        )
        self._framing = framing
        if framing is Framing.CHUNKED:
            extra += b"transfer-encoding: chunked\r\n"
        elif framing is Framing.UNTIL_CLOSE:
            self.keep_alive = False
        if not self.body_complete or self._conn.closing:
            # Unread request body or shutting down: this response ends the connection.
            self.keep_alive = False
        if not self.keep_alive:
            extra += b"connection: close\r\n"
        elif not self.http11:
            extra += b"connection: keep-alive\r\n"
        head = self._pending_head + extra + b"\r\n"
        self._pending_head = b""
        return head

    def _write_body(self, body: bytes, more_body: bool) -> None:
        out = b""
        if self._pending_head:
            out = self._finish_head(None if more_body else bytes(body))
        framing = self._framing
        send_bytes = not self.head_request and framing is not Framing.NONE
        if body and send_bytes:
            if framing is Framing.CONTENT_LENGTH:
                if len(body) > self._bytes_left:
                    self._flush(out)
                    raise RuntimeError("Response content longer than Content-Length.")
                self._bytes_left -= len(body)
                out += body
            elif framing is Framing.CHUNKED:
                out += chunk(body)
            else:
                out += body
        if more_body:
            self._flush(out)
            return
        if send_bytes and framing is Framing.CONTENT_LENGTH and self._bytes_left:
            self._flush(out)
            raise RuntimeError("Response content shorter than Content-Length.")
        if send_bytes and framing is Framing.CHUNKED:
            if self._trailers_expected:
                # The last chunk; the trailer section and its blank line follow in _write_trailers.
                self._flush(out + b"0\r\n")
                return
            out += LAST_CHUNK
        self._flush(out)
        if not self._trailers_expected:
            self._complete()  # otherwise the trailers message completes it

    def _flush(self, data: bytes) -> None:
        if data:
            self._conn.write(data)

    def _write_trailers(self, headers: Any, more_trailers: bool) -> None:
        lines = []
        for name, value in headers:
            name, value = bytes(name).lower(), bytes(value)
            validate_header(name, value)
            lines.append((name, value))
        if self._framing is Framing.CHUNKED and not self.head_request:
            self._flush(encode_headers(lines) + (b"" if more_trailers else b"\r\n"))
        if not more_trailers:
            self._complete()

    def _complete(self) -> None:
        self.response_complete = True
        self._wake()
        self._conn.on_response_complete(self)

    def _log_access(self) -> None:
        scope = self.scope
        client = scope.get("client")
        who = f"{client[0]}:{client[1]}" if client else "-"
        target = scope["raw_path"].decode("latin-1")
        if scope["query_string"]:
            target += "?" + scope["query_string"].decode("latin-1")
        # Escape control characters so a crafted path cannot forge log lines (CVE-2020-7694 class).
        target = target.encode("unicode_escape").decode("ascii")
        access_logger.info(
            '%s - "%s %s HTTP/%s" %d', who, scope["method"], target, scope["http_version"], self.status
        )
