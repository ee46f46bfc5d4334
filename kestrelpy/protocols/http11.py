"""HttpConnection: everything about an HTTP/1.1 connection except reading the bytes.

A parser adapter subclasses this and calls four hooks: `on_request_head`, `on_request_body`,
`on_request_complete` and `on_reject`. Keep-alive, pipelining, flow control, timeouts, the Host rule and
the rejection answers live here once, so both parsers behave alike. This module never imports a parser.

The adapters' invariant: any byte sequence either yields well-formed hook calls (a head, then body
chunks, then completion, per request) or ends in exactly one `on_reject` with a RequestRejection;
nothing else escapes `feed`, and nothing after a rejection is parsed. tests/unit/test_parser_agreement.py
checks it, and that both adapters give the same answer, on generated and mutated requests.

Pipelining (RFC 9112 section 9.3.2): requests that arrive while a response is in progress are queued
and reading pauses; the next request reaches the app only after the previous response is complete,
so responses leave in order.

Limits (config.Limits) are enforced here and only here, so both parsers refuse the same input with
the same answer:
- head size: while a request head is incomplete, the bytes read for it are counted per read (nothing
  is counted once a head is complete, so an ordinary request costs one comparison per read); an
  incomplete head whose request line passes the line limit gets 414, one larger than line and header
  limits together gets 431. A complete head is measured exactly (request line; header fields counted
  as `name: value\r\n`; their number) when the reads that carried it were large enough to matter.
  A head that starts in the middle of a read (after a pipelined request) is counted from the next
  read on, so the check may run up to one read late, never early.
- request-headers timeout: the heartbeat answers 408 when a head has been incomplete for longer than
  the limit; before its first byte the keep-alive timeout applies instead (as in Kestrel).
- body size: 413 before the body is read when Content-Length is too large, mid-stream for a chunked
  body (the app, if it was already running, sees http.disconnect).
- requests per connection: the last one is answered with `connection: close`.
- concurrent connections: one over the limit gets 503 and is closed once it has sent its request or
  after a short grace, so the client reads the answer rather than a reset.
- trailer fields of a chunked body count against the header count and size limits together with the
  head's fields (as in Kestrel): over them, 431 as for the head. They are counted as each one completes.
  Fields that must not be trailers (FORBIDDEN_TRAILERS) are refused with 400 first.
- minimum data rates (Kestrel's MinRequestBodyDataRate and MinResponseDataRate), both checked by the
  heartbeat from byte counters kept on the way:
  - request body: the seconds the app spends waiting in receive() for body bytes are summed, one beat
    at a time (a beat longer than the interval counts as one: a starved server is not the client's
    fault); once that sum passes the grace period, an average rate (body bytes / sum) below the minimum
    gets 408 and close, or an abort once the response has started; the app sees http.disconnect.
    While the app is busy, or reading is paused because it is behind, nothing is counted.
  - response: each beat, the bytes written since the last one push a deadline out by bytes / rate,
    and to at least `grace` from now; while the transport's buffer is over its high-water mark (the
    peer is not reading), a deadline passed aborts the connection. A reader that keeps up with the
    minimum keeps the deadline ahead of the clock, however long the response.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import re
import socket
import sys
from collections import deque
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from kestrelpy.asgi import ASGI_VERSION, HTTP_SPEC_VERSION, decode_path, split_target
from kestrelpy.platform import peer_hung_up
from kestrelpy.protocols.cycle import BODY_BUFFER_HIGH_WATER, TIMING_OFF, TIMING_STOPPING, RequestCycle
from kestrelpy.protocols.flow import FlowControl
from kestrelpy.protocols.rejection import RequestRejection
from kestrelpy.protocols.writer import status_line

if TYPE_CHECKING:
    from kestrelpy.state import ServerState

logger = logging.getLogger("kestrelpy.error")

if sys.version_info >= (3, 12):

    def start_task(
        coro: Coroutine[Any, Any, None], loop: asyncio.AbstractEventLoop, context: contextvars.Context
    ) -> asyncio.Task[None]:
        """Run the app at once, up to its first real suspension: an app that answers without waiting
        (most requests) finishes inside this call, with no task scheduled on the loop. The task is
        still a real asyncio.Task, current while the app runs, so anyio and friends work as usual."""
        return asyncio.Task(coro, loop=loop, eager_start=True, context=context)

else:

    def start_task(
        coro: Coroutine[Any, Any, None], loop: asyncio.AbstractEventLoop, context: contextvars.Context
    ) -> asyncio.Task[None]:
        # Before 3.12 a task cannot start eagerly and still be the current task, which anyio needs.
        # (3.10's create_task takes no context: the task copies the one it is created in.)
        return context.run(loop.create_task, coro)

# Output held back during one read before it is handed to the transport anyway.
BATCH_LIMIT = 64 * 1024

SHUTDOWN_GRACE = 1.0  # seconds a new, silent connection may still send its first request during a drain

# The heartbeat's interval (heartbeat.INTERVAL): the most one beat adds to a data-rate measurement.
TICK = 1.0


# Request headers the connection itself looks at; the rest go to the app untouched.
_HOST, _CONTENT_LENGTH, _TRANSFER_ENCODING, _CONNECTION, _EXPECT, _TE, _CONTENT_TYPE = range(7)
_REQUEST_HEADERS = {
    b"host": _HOST,
    b"content-length": _CONTENT_LENGTH,
    b"transfer-encoding": _TRANSFER_ENCODING,
    b"connection": _CONNECTION,
    b"expect": _EXPECT,
    b"te": _TE,
    b"content-type": _CONTENT_TYPE,
}


def _head_refusal(
    method: bytes, target: bytes, http11: bool, codings: int, content_types: int
) -> RequestRejection | None:
    """What a head that both parsers read is refused for on its semantics, if anything."""
    if codings and not http11:
        # RFC 9112 section 6.1: an HTTP/1.0 message with Transfer-Encoding MUST be treated as having
        # faulty framing (a 1.0 client cannot have sent it: something on the way did), then closed.
        return RequestRejection.TRANSFER_ENCODING_IN_HTTP10
    if target == b"*" and method != b"OPTIONS":
        # RFC 9112 section 3.2.4: the asterisk-form is only for a server-wide OPTIONS request.
        return RequestRejection.INVALID_TARGET
    if content_types > 1:
        # RFC 9110 section 5.3: a field that is not a list must not repeat; two media types leave the
        # content's format ambiguous (and an app or proxy may pick either one).
        return RequestRejection.MULTIPLE_CONTENT_TYPE
    return None


# Fields a request's trailer section must not carry: RFC 9110 section 6.5.1 keeps out of trailers what
# has to be known before the content is processed, in these categories (RFC 7230 section 4.1.2 named
# the examples):
# - message framing (RFC 9112 section 6): Content-Length, Transfer-Encoding;
# - routing: Host (RFC 9110 section 7.2), Max-Forwards (section 7.6.2);
# - request modifiers, the controls (RFC 9110 sections 10.1.1, 10.1.4, 14.2; RFC 9111 sections 5.2,
#   5.4) and the conditionals (RFC 9110 section 13.1): Expect, TE, Range, Cache-Control, Pragma, If-*;
# - authentication (RFC 9110 section 11, RFC 6265): Authorization, Proxy-Authorization, Cookie, and
#   their response counterparts WWW-Authenticate, Proxy-Authenticate, Set-Cookie;
# - how to process the content: Content-Type, Content-Encoding, Content-Range, Trailer (section 6.6.2);
# - connection management (RFC 9110 sections 7.6.1 and 7.8), which acts on this connection before the
#   next request: Connection, Keep-Alive, Proxy-Connection, Upgrade.
# Response control data (Age, Expires, Location, Vary...) has no meaning in a request at all, and is left
# alone like any other field: trailers never reach the app (ASGI has no request trailers).
FORBIDDEN_TRAILERS = frozenset(
    (
        b"content-length", b"transfer-encoding", b"host", b"max-forwards", b"expect", b"te", b"range",
        b"cache-control", b"pragma", b"if-match", b"if-none-match", b"if-modified-since",
        b"if-unmodified-since", b"if-range", b"authorization", b"proxy-authorization", b"cookie",
        b"www-authenticate", b"proxy-authenticate", b"set-cookie", b"content-type", b"content-encoding",
        b"content-range", b"trailer", b"connection", b"keep-alive", b"proxy-connection", b"upgrade",
    )
)


# RFC 9110 section 7.2: Host is uri-host [":" port]; uri-host is an IP-literal in brackets or a reg-name
# (RFC 3986 section 3.2.2: unreserved, pct-encoded and sub-delims characters). No userinfo, path or space.
_VALID_HOST = re.compile(rb"(?:\[[0-9A-Fa-f:.]+(?:%25[0-9A-Za-z._~%-]+)?\]|[0-9A-Za-z._~!$&'()*+,;=%-]*)(?::[0-9]*)?")
KNOWN_HOSTS_MAX = 256  # valid Host values remembered per server, so the check runs once per value
_INVALID_HOST = 1 << 16  # what an invalid Host value adds to the count of Host fields


def _host_weight(state: ServerState, value: bytes) -> int:
    """1 for a valid Host value (remembered, so the next check is a set lookup), _INVALID_HOST otherwise."""
    if _VALID_HOST.fullmatch(value.rstrip(b" \t")) is None:  # llhttp leaves trailing OWS in values
        return _INVALID_HOST
    if len(state.known_hosts) < KNOWN_HOSTS_MAX:
        state.known_hosts.add(value)
    return 1


_METHOD_NAMES = {name.encode(): name for name in ("GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH")}


def _connection_tokens(value: bytes) -> set[bytes]:
    return {token.strip().lower() for token in value.split(b",")}


class HttpConnection(asyncio.Protocol):
    """The parser-independent half of an HTTP/1.1 connection."""

    __slots__ = (
        "_batch",
        "_batch_size",
        "_body_budget",
        "_bytes_out",
        "_head_bytes",
        "_head_since",
        "_last_tick",
        "_line_bytes",
        "_pending_rejection",
        "_pipeline",
        "_read_size",
        "_reading",
        "_requests_left",
        "_trailer_room",
        "_write_deadline",
        "client",
        "closing",
        "cycle",
        "flow",
        "fresh",
        "idle_since",
        "rejected",
        "scheme",
        "server",
        "state",
        "transport",
    )

    def __init__(self, state: ServerState) -> None:
        self.state = state
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.flow: FlowControl = None  # type: ignore[assignment]
        self.server: tuple[str, int | None] | None = None  # (path, None) on a Unix socket, as ASGI says
        self.client: tuple[str, int] | None = None
        self.scheme = "http"
        self.cycle: RequestCycle | None = None  # the request the app is answering
        self._reading: RequestCycle | None = None  # the request whose body is arriving
        # Requests read ahead of their turn; made on the first one, since most connections never pipeline
        # and an empty deque is a fifth of an idle connection's memory.
        self._pipeline: deque[RequestCycle] | None = None
        self._pending_rejection: RequestRejection | None = None
        self._batch: list[bytes] | None = None  # writes held back while one read is being parsed
        self._batch_size = 0
        self.rejected = False
        self.closing = False
        self.fresh = True  # no response sent yet: its first request may still be on the way
        self.idle_since = 0.0
        # Bytes read so far of an incomplete request head; -1 while a request's body is being read.
        self._head_bytes = 0
        self._read_size = 0  # the size of the read being parsed
        self._line_bytes = 0  # bytes of the request line so far, -1 once its end has been seen
        # When the heartbeat first saw the incomplete head; a mark older than the last response belongs
        # to an earlier head (so nothing needs resetting per request).
        self._head_since: float | None = None
        self._body_budget = -1  # bytes of chunked body still allowed, -1 when not counted
        self._requests_left = state.max_requests_per_connection  # 0 = unlimited
        # Header fields and bytes a chunked body's trailers may still use: (request, count, bytes).
        self._trailer_room: tuple[RequestCycle, int, int] | None = None
        self._bytes_out = 0  # written since the last heartbeat, for the minimum response rate
        self._write_deadline = 0.0  # when what was written should have been read by a peer at the minimum rate
        self._last_tick = 0.0

    # -- transport events ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not subclasses
        self.flow = FlowControl(self.transport)
        sockname = transport.get_extra_info("sockname")
        self.server = (sockname, None) if isinstance(sockname, str) and sockname else _address(sockname)
        self.client = _address(transport.get_extra_info("peername"))
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        state = self.state
        self.idle_since = self._last_tick = state.clock()
        over_limit = 0 < state.max_connections <= len(state.connections) - state.upgraded  # (see websocket.py)
        state.connections.add(self)
        if over_limit:
            self._refuse()
        elif state.shutting_down or state.draining:
            # accepted in the same batch as the last ones before the drain, or during --shutdown-delay
            self.closing = True  # answer its request with `connection: close` (see shutdown())

    def connection_lost(self, exc: Exception | None) -> None:
        self.state.connection_closed(self)
        self.flow.connection_lost()
        if self.cycle is not None:
            self.cycle.on_disconnect()
        pipeline, self._pipeline = self._pipeline, None
        for cycle in pipeline or ():
            cycle.on_disconnect()

    def pause_writing(self) -> None:
        self.flow.pause_writing()

    def resume_writing(self) -> None:
        self.flow.resume_writing()

    # -- hooks for the parser adapters -----------------------------------------------------------

    def on_request_head(
        self, method: bytes, target: bytes, http_version: bytes, headers: list[tuple[bytes, bytes]]
    ) -> None:
        """A complete request head. Header names arrive lower-cased, in order."""
        if self.rejected:
            return
        state = self.state
        bound = self._head_bytes  # an upper bound on this head's size
        if bound <= 0:  # the head began inside the current read
            bound = self._read_size
        self._head_bytes = -1
        if bound > state.small_head:
            too_large = _over_head_limits(state, method, target, headers)
            if too_large is not None:
                self.on_reject(too_large)
                return
        http11 = http_version == b"1.1"
        if not http11 and http_version != b"1.0":
            if http_version[:2] == b"1.":
                # A later HTTP/1 minor version is answered as 1.1, the highest we speak (RFC 9110 section 2.5).
                http11 = True
            else:
                # llhttp reports a request line without a version as 0.9, which h11 refuses as malformed.
                self.on_reject(
                    RequestRejection.MALFORMED_REQUEST
                    if http_version == b"0.9"
                    else RequestRejection.UNSUPPORTED_HTTP_VERSION
                )
                return
        keep_alive = http11
        expect_continue = trailers = upgrade = False
        hosts = codings = content_types = 0
        has_length = False
        empty_body = True
        for name, value in headers:
            kind = _REQUEST_HEADERS.get(name)
            if kind is None:
                continue
            if kind == _HOST:
                hosts += 1 if value in state.known_hosts else _host_weight(state, value)
            elif kind == _CONTENT_LENGTH:
                has_length = True
                empty_body = empty_body and value.strip() == b"0"
            elif kind == _TRANSFER_ENCODING:
                # Only `chunked` is implemented; llhttp accepts "gzip, chunked", which h11 refuses.
                codings += 1 if value.strip().lower() == b"chunked" else 2
            elif kind == _CONNECTION:
                tokens = _connection_tokens(value)
                upgrade = upgrade or b"upgrade" in tokens
                if b"close" in tokens:
                    keep_alive = False
                elif b"keep-alive" in tokens and not http11:
                    keep_alive = True
            elif kind == _EXPECT:
                expect_continue = http11 and value.lower() == b"100-continue"
            elif kind == _CONTENT_TYPE:
                content_types += 1
            else:
                trailers = b"trailers" in _connection_tokens(value)
        if codings > 1 or (codings and has_length):
            # RFC 9112 section 6.1 allows refusing Content-Length with Transfer-Encoding (a smuggling
            # vector); h11 would read such a body as chunked and keep the connection open.
            self.on_reject(RequestRejection.MALFORMED_REQUEST)
            return
        if hosts != 1 and (hosts or http11):
            # RFC 9112 section 3.2: 400 for a 1.1 request without Host and for any request with several;
            # RFC 9110 section 7.2: and for a Host value that is not uri-host [":" port].
            self.on_reject(
                RequestRejection.MISSING_HOST
                if hosts == 0
                else RequestRejection.INVALID_HOST
                if hosts == _INVALID_HOST
                else RequestRejection.MULTIPLE_HOST
            )
            return
        refusal = _head_refusal(method, target, http11, codings, content_types)
        if refusal is not None:
            self.on_reject(refusal)
            return
        if codings:
            empty_body = False
        if not empty_body and state.max_body_size:
            if codings:  # a chunked body is counted as it arrives
                self._body_budget = state.max_body_size
            elif _declared_length(headers) > state.max_body_size:
                # Refused before a byte of the body is read, as Kestrel does.
                self.on_reject(RequestRejection.BODY_TOO_LARGE)
                return
            else:  # the parser holds a Content-Length body to its length
                self._body_budget = -1
        parts = split_target(target)
        if parts is None:
            # Same answer as a target the parser itself refuses (llhttp rejects "foo", h11 passes it on).
            self.on_reject(RequestRejection.MALFORMED_REQUEST)
            return
        raw_path, query = parts
        if upgrade and method == b"GET" and http11 and empty_body and self.cycle is None and not self._pipeline:
            self._flush_batch()  # responses ahead of it leave before its answer
            if state.upgrade is not None and state.upgrade(self, raw_path, query, headers):
                return  # taken over (or refused) by the upgrade hand-off: protocols/websocket.py
        scope: dict[str, Any] = {
            "type": "http",
            "asgi": {"version": ASGI_VERSION, "spec_version": HTTP_SPEC_VERSION},
            "http_version": "1.1" if http11 else "1.0",
            "server": self.server,
            "client": self.client,
            "scheme": self.scheme,
            "method": _METHOD_NAMES.get(method) or method.decode("ascii"),
            "root_path": state.root_path,
            "path": state.root_path + decode_path(raw_path),
            "raw_path": state.root_path_bytes + raw_path,
            "query_string": query,
            "headers": headers,
            "state": state.lifespan_state.copy(),
        }
        if trailers:
            scope["extensions"] = {"http.response.trailers": {}}
        left = self._requests_left
        if left:
            self._requests_left = left - 1
            if left == 1:
                keep_alive = False  # the last request this connection serves: it says `connection: close`
        cycle = RequestCycle(
            self,
            scope,
            keep_alive=keep_alive and not self.closing,
            expect_continue=expect_continue,
            http11=http11,
        )
        if empty_body:
            # RFC 9112 section 6.3: no Content-Length and no Transfer-Encoding means no body. Marking it
            # now lets an app that answers at once keep the connection alive.
            cycle.body_complete = True
        self._reading = cycle
        if self.cycle is None:
            self._start(cycle)
        else:
            if self._pipeline is None:
                self._pipeline = deque()
            self._pipeline.append(cycle)
            self.flow.pause_reading()

    def on_request_body(self, data: bytes | bytearray) -> None:
        reading = self._reading
        if reading is not None and not self.rejected:
            budget = self._body_budget
            if budget >= 0:
                budget -= len(data)
                self._body_budget = budget
                if budget < 0:
                    self.on_reject(RequestRejection.BODY_TOO_LARGE)
                    return
            reading.feed_body(data)

    def on_request_trailer(self, name: bytes, value: bytes) -> None:
        """One trailer field of a chunked body. It is dropped (ASGI has no request trailers), but it
        counts against the head's limits: Kestrel counts trailers and header fields together. A field
        that must not be a trailer is refused (before the limits, as llhttp refuses two of them itself)."""
        reading = self._reading
        if reading is None or self.rejected:
            return
        if name in FORBIDDEN_TRAILERS:
            self.on_reject(RequestRejection.FORBIDDEN_TRAILER)
            return
        room = self._trailer_room
        if room is None or room[0] is not reading:  # the first trailer field of this request
            head = reading.scope["headers"]
            state = self.state
            room = (
                reading,
                state.max_header_count - len(head),
                state.max_headers_size - sum(len(n) + len(v) + 4 for n, v in head),
            )
        count, size = room[1] - 1, room[2] - (len(name) + len(value) + 4)
        self._trailer_room = (reading, count, size)
        if count < 0:
            self.on_reject(RequestRejection.TOO_MANY_HEADERS)
        elif size < 0:
            self.on_reject(RequestRejection.HEADERS_TOO_LARGE)

    def on_request_complete(self) -> None:
        self._head_bytes = 0  # the next head may begin in what is left of this read
        if self._reading is not None and not self.rejected:
            self._reading.finish_body()
            self._reading = None

    def on_reject(self, reason: RequestRejection) -> None:
        """Malformed input: stop reading, answer once the responses ahead of it are out, then close."""
        if self.rejected:
            return
        self.rejected = True
        self._head_bytes = -1
        self.flow.pause_reading()
        logger.debug("Rejected request from %s: %s", self.client, reason.name)
        reading, self._reading = self._reading, None
        if reading is not None:
            # The bad bytes were inside this request's body: the app sees the client go away.
            if self._pipeline and reading in self._pipeline:
                self._pipeline.remove(reading)
            reading.on_disconnect()
            if reading is self.cycle:
                if reading.response_started:
                    self.abort()
                    return
                reading.response_complete = True
                self.cycle = None
        self._pending_rejection = reason
        if self.cycle is None:
            self._send_rejection(at_once=reading is None)

    # -- used by the request cycle ---------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        """Parse, and send what the apps answered during this read in one write: pipelined responses
        that complete at once leave in a single segment instead of one syscall each."""
        size = len(data)
        self._read_size = size
        head = self._head_bytes
        if head >= 0:  # waiting for a head: count the read towards it (the hooks reset the count)
            self._head_bytes = head + size
        batch: list[bytes] = []
        self._batch = batch
        self._batch_size = 0
        try:
            self.feed(data)
        finally:
            self._batch = None
            if batch:
                transport = self.transport  # what write() would do with no batch open, without the call
                if not transport.is_closing():
                    transport.write(batch[0] if len(batch) == 1 else b"".join(batch))
                    self._bytes_out += self._batch_size
        if self._head_bytes > 0:  # a head is still incomplete after this read
            self._check_incomplete_head(data)

    def _check_incomplete_head(self, data: bytes) -> None:
        head = self._head_bytes
        state = self.state
        if head == len(data):  # this read began the head: so did its request line
            self._line_bytes = 0
        line = self._line_bytes
        if line >= 0:
            end = data.find(b"\n")
            if end >= 0:
                self._line_bytes = -1  # complete: measured exactly once the head is
            else:
                line += len(data)
                self._line_bytes = line
                if line > state.max_line_size:
                    self.on_reject(RequestRejection.REQUEST_LINE_TOO_LONG)
                    return
        if head > state.max_head_size:
            self.on_reject(RequestRejection.HEADERS_TOO_LARGE)

    def feed(self, data: bytes) -> None:
        """The parser adapter's part: turn bytes into hook calls."""
        raise NotImplementedError

    def write(self, data: bytes) -> None:
        batch = self._batch
        if batch is not None:
            batch.append(data)
            self._batch_size += len(data)
            if self._batch_size > BATCH_LIMIT:
                # Large output goes to the transport now, so its high-water mark can pause the app.
                self._flush_batch()
        elif not self.transport.is_closing():
            self.transport.write(data)
            self._bytes_out += len(data)

    def _flush_batch(self) -> None:
        batch = self._batch
        if batch:
            self._batch = None
            self.write(b"".join(batch))
            batch.clear()
            self._batch = batch
            self._batch_size = 0

    def close(self) -> None:
        """Close after everything written so far has been sent."""
        self._flush_batch()
        self.transport.close()

    def abort(self) -> None:
        """Reset the connection; what was written before goes out first, as far as the socket takes it."""
        self._flush_batch()
        self.transport.abort()

    def resume_reading_for(self, cycle: RequestCycle) -> None:
        """The app wants more body: resume reading unless queued requests still hold it paused."""
        if cycle is self._reading and not self._pipeline and not self.rejected:
            self.flow.resume_reading()

    def on_response_complete(self, cycle: RequestCycle) -> None:
        self.cycle = None
        self.fresh = False
        self.state.requests_served += 1
        if self.transport.is_closing():
            return
        if not cycle.keep_alive:
            # Nothing after this response is read: a request pipelined behind it must not reach the app.
            self.rejected = True
            self.close()
            return
        if self._pipeline:
            # Not from here: this runs inside the finished app's `send`, and the next app must start
            # on its own, not nested in (and sharing a stack with) the previous one.
            self.state.loop.call_soon(self._start_queued)
        elif self._pending_rejection is not None:
            self._send_rejection()
        else:
            self.idle_since = self.state.clock()
            reading = self._reading
            if reading is None or len(reading._body) <= BODY_BUFFER_HIGH_WATER:
                self.flow.resume_reading()

    # -- lifecycle -------------------------------------------------------------------------------

    def _start(self, cycle: RequestCycle) -> None:
        self.cycle = cycle
        state = self.state
        # Each request runs in a fresh copy of the server's context: context variables an app sets
        # never leak into the next request on the same connection.
        cycle.task = start_task(cycle.run(state.app), state.loop, state.base_context.copy())

    def _start_queued(self) -> None:
        if self.cycle is None and self._pipeline and not self.transport.is_closing():
            self._start(self._pipeline.popleft())

    def _refuse(self) -> None:
        """Over the connection limit: answer 503 at once and never parse what the client sends.

        Reading goes on (the bytes are dropped) and only the write side is shut, so the close that
        follows does not reset the connection under the answer; the client's close, or the heartbeat
        after SHUTDOWN_GRACE, ends it.
        """
        self.rejected = True
        self.closing = True
        self._head_bytes = -1
        self._pending_rejection = RequestRejection.TOO_MANY_CONNECTIONS
        logger.debug("Refused a connection from %s: over --limit-concurrency", self.client)
        self._send_rejection()

    def _send_rejection(self, at_once: bool = True) -> None:
        """Answer the pending rejection, then shut the write side and linger: what the client still
        sends is read and dropped until it closes or the heartbeat closes after SHUTDOWN_GRACE. Closing
        with unread input would send a reset instead of a FIN, and a reset can destroy the answer in
        the client's receive buffer before it is read (a client still uploading would never see its
        408 or 413)."""
        reason = self._pending_rejection
        assert reason is not None
        body = reason.message.encode()
        state = self.state
        self.write(
            b"".join(
                (
                    status_line(reason.status),
                    state.server_line,
                    state.date_line if state.date_header else b"",
                    state.extra_header_lines,
                    b"content-type: text/plain; charset=utf-8\r\n",
                    b"content-length: %d\r\nconnection: close\r\n\r\n" % len(body),
                    body,
                )
            )
        )
        if self.transport.can_write_eof():
            self.closing = True
            self.idle_since = state.clock()
            if at_once:
                self._linger()
            else:  # one loop turn later, as a close would be: the app just told of the disconnect runs first
                state.loop.call_soon(self._linger)
        else:
            self.close()

    def _linger(self) -> None:
        transport = self.transport
        if transport.is_closing():
            return
        self._flush_batch()  # the answer goes out before the FIN
        transport.write_eof()
        self.flow.resume_reading()

    def on_tick(self, now: float) -> None:
        """Heartbeat: close a keep-alive connection idle too long; answer 408 to a head that is late;
        hold the request body and the response to their minimum data rates."""
        gap = now - self._last_tick
        self._last_tick = now
        state = self.state
        if state.min_response_rate and self._response_too_slow(now, gap):
            logger.debug("Aborted %s: the response was read slower than --limit-min-response-rate", self.client)
            self.rejected = True
            self.abort()
            return
        cycle = self.cycle
        if cycle is not None:
            if cycle.read_timing and state.min_body_rate and self._body_too_slow(cycle, gap):
                logger.debug("Request body from %s slower than --limit-min-request-body-rate", self.client)
                self.on_reject(RequestRejection.REQUEST_BODY_TIMEOUT)
            elif self.flow.read_paused and cycle is not self._reading and not self.transport.is_closing():
                self._check_hang_up()
            return
        if self._pipeline or self.transport.is_closing():
            return
        if self._head_bytes > 0:  # a request head has begun: the request-headers timeout applies
            since = self._head_since
            if since is None or since < self.idle_since:  # first seen (or an earlier head's mark)
                self._head_since = now
            elif now - since > self.state.request_headers_timeout:
                self.on_reject(RequestRejection.REQUEST_HEADERS_TIMEOUT)
        elif now - self.idle_since > (SHUTDOWN_GRACE if self.closing else self.state.keep_alive_timeout):
            self.close()

    def _body_too_slow(self, cycle: RequestCycle, gap: float) -> bool:
        """Count one beat of the app waiting for body bytes; True when, past the grace period, the body's
        average rate is below the minimum (Kestrel's CheckForReadDataRateTimeout)."""
        elapsed = cycle.read_elapsed + min(gap, TICK)  # a late beat counts as one: the server was starved
        cycle.read_elapsed = elapsed
        if cycle.read_timing == TIMING_STOPPING:  # the wait ended since the last beat, which still counted
            cycle.read_timing = TIMING_OFF
        state = self.state
        return elapsed > state.min_body_grace and cycle.body_received / elapsed < state.min_body_rate

    def _response_too_slow(self, now: float, gap: float) -> bool:
        """Move the write deadline by what was written since the last beat; True when the peer holds
        output back past it (Kestrel's BytesWrittenToBuffer and CheckForWriteDataRateTimeout)."""
        state = self.state
        deadline = self._write_deadline
        if gap > TICK:  # time the server was starved of is not held against the peer
            deadline += gap - TICK
        written = self._bytes_out
        if written:
            self._bytes_out = 0
            needed = written / state.min_response_rate
            deadline = max(now + max(state.min_response_grace, needed), deadline + needed)
        self._write_deadline = deadline
        return self.flow.write_paused and now > deadline

    def _check_hang_up(self) -> None:
        """Reading is paused behind a queued request (or a rejection) and the running app cannot resume
        it, so a client that leaves would go unnoticed until the app writes: an app waiting in receive()
        for http.disconnect would wait forever. Ask the socket instead (one poll a second)."""
        sock = self.transport.get_extra_info("socket")
        if sock is not None and peer_hung_up(sock.fileno()):
            logger.debug("Client %s left while its requests were queued", self.client)
            self.abort()

    def shutdown(self) -> None:
        """Graceful shutdown: idle connections close now, busy ones after their current response.

        A connection that has not had a response yet was accepted moments ago and its request may be
        on the wire: it gets that request answered (with `connection: close`), or is closed by the
        heartbeat once it has been silent for SHUTDOWN_GRACE. Closing it at once would drop a request
        that a draining worker of a rolling restart had already accepted. With `linger_on_shutdown`
        (supervised workers) idle keep-alive connections are treated the same way, so a client that
        sends on one just as the drain starts gets an answer rather than a closed connection.
        """
        self.closing = True
        if self.cycle is None and not self._pipeline and not self.fresh and not self.state.linger_on_shutdown:
            self.close()
        elif self.cycle is not None and not self.cycle.response_started:
            self.cycle.keep_alive = False

    def cancel_app(self) -> None:
        if self.cycle is not None and self.cycle.task is not None:
            self.cycle.task.cancel()


def _over_head_limits(
    state: ServerState, method: bytes, target: bytes, headers: list[tuple[bytes, bytes]]
) -> RequestRejection | None:
    """The head limit a complete head breaks, if any; sizes are counted the same whichever parser read it."""
    if len(method) + len(target) + 10 > state.max_line_size:  # METHOD SP target SP HTTP/x.y
        return RequestRejection.REQUEST_LINE_TOO_LONG
    if len(headers) > state.max_header_count:
        return RequestRejection.TOO_MANY_HEADERS
    if sum(len(name) + len(value) + 4 for name, value in headers) > state.max_headers_size:
        return RequestRejection.HEADERS_TOO_LARGE
    return None


def _declared_length(headers: list[tuple[bytes, bytes]]) -> int:
    """The Content-Length value (the parsers have already refused malformed or conflicting ones)."""
    for name, value in headers:
        if name == b"content-length":
            try:
                return int(value.split(b",")[0])
            except ValueError:
                return 0
    return 0


def _address(info: Any) -> tuple[str, int] | None:
    if isinstance(info, tuple) and len(info) >= 2:
        return str(info[0]), int(info[1])
    return None
