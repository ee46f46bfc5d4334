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
  the limit; before its first byte the keep-alive timeout applies instead (as in Kestrel). Both run on
  the connection's TimeoutControl (protocols/timeouts.py), as do the minimum data rates.
- body size: 413 before the body is read when Content-Length is too large, mid-stream for a chunked
  body (the app, if it was already running, sees http.disconnect).
- requests per connection: the last one is answered with `connection: close`.
- concurrent connections: one over the limit gets 503 and is closed once it has sent its request or
  after a short grace, so the client reads the answer rather than a reset.
- trailer fields of a chunked body count against the header count and size limits together with the
  head's fields (as in Kestrel): over them, 431 as for the head. They are counted as each one completes.
  Fields that must not be trailers (request_head.FORBIDDEN_TRAILERS) are refused with 400 first.
- minimum data rates (Kestrel's MinRequestBodyDataRate and MinResponseDataRate): counted on the way,
  checked by the heartbeat through the TimeoutControl; too slow a body gets 408 (or an abort once the
  response has started), too slow a reader an abort.

HTTP/2 is chosen before anything is read as HTTP/1.1 (RFC 9113 section 3): on TLS, by ALPN when the
handshake is complete; in cleartext, by the preface a prior-knowledge client opens with. That preface is
not looked for on every read: it is malformed HTTP/1.1 (llhttp stops at its `PRI` method, the h11 path's
screen refuses the method), so only a first request that fails to parse is checked for it, by
`switch_to_http2`, and an ordinary request pays nothing. `http2` (a class attribute, set on a listener's
subclass by server.listener_class) is what takes such a connection over; None serves HTTP/1.1 only.

The connection is also the Stream (see cycle.py) of the response it is sending: Http1Output frames it.
`ignore_input` marks a connection that parses nothing more: after a refusal, after its last response,
once handed to another protocol (WebSocket), or aborted.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import sys
from collections import deque
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, cast

from kestrelpy.access_log import AccessEntry
from kestrelpy.asgi import ASGI_VERSION, HTTP_SPEC_VERSION, decode_path, decoded_path, split_target
from kestrelpy.metrics.recorder import KEEP_ALIVE_TIMEOUT, MIN_RESPONSE_DATA_RATE, RequestTable
from kestrelpy.platform import peer_hung_up
from kestrelpy.protocols.cycle import BODY_BUFFER_HIGH_WATER, RequestCycle, ScopeCountedCycle, forwarded_cycle
from kestrelpy.protocols.flow import LOST_TRANSPORT, FlowControl
from kestrelpy.protocols.http11_output import Http1Output, closing_response
from kestrelpy.protocols.rejection import RequestRejection
from kestrelpy.protocols.request_head import (
    FORBIDDEN_TRAILERS,
    content_length,
    head_refusal,
    is_http11,
    over_head_limits,
    scan_headers,
    version_rejection,
)
from kestrelpy.protocols.timeouts import TIMING_OFF, TimeoutControl, TimeoutReason

if TYPE_CHECKING:
    from kestrelpy.proxy import TrustedPeers
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


# The version an adapter may pass for HTTP/1.1: this very object is recognised by identity, which costs
# less than comparing bytes (any other equal bytes are recognised too).
HTTP_11 = b"1.1"

# RFC 9113 section 3.4: what an HTTP/2 client sends first.
HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# Output held back during one read before it is handed to the transport anyway.
BATCH_LIMIT = 64 * 1024


_KEEP_ALIVE = TimeoutReason.KEEP_ALIVE  # (a global: an Enum member is a full attribute lookup)

_METHOD_NAMES = {name.encode(): name for name in ("GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH")}


class Http2Handoff(Protocol):
    """What takes a connection over for HTTP/2 (protocols/http2.py's Http2Service)."""

    def take_over(self, conn: HttpConnection, received: bytes) -> None: ...
    def refuse_over_limit(self, conn: HttpConnection) -> None: ...


class HttpConnection(Http1Output):
    """The parser-independent half of an HTTP/1.1 connection."""

    # What serves HTTP/2 on this listener's connections (None: HTTP/1.1 only).
    http2: ClassVar[Http2Handoff | None] = None
    # False on an HTTP/2-only listener (an endpoint's `protocols = "http2"`): HTTP/2 takes every connection.
    http1: ClassVar[bool] = True

    __slots__ = (
        "_batch",
        "_batch_size",
        "_body_budget",
        "_bytes_out",
        "_head_bytes",
        "_held",
        "_line_bytes",
        "_pending_rejection",
        "_pipeline",
        "_read_size",
        "_reading",
        "_requests_left",
        "_trailer_room",
        "client",
        "closing",
        "cycle",
        "flow",
        "forwarded",
        "fresh",
        "ignore_input",
        "request_table",
        "scheme",
        "server",
        "state",
        "timeouts",
        "tls_extension",  # the ASGI TLS extension; set on TLS connections only (TlsConnection)
        "transport",
    )

    def __init__(self, state: ServerState) -> None:
        self.state = state
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.flow: FlowControl = None  # type: ignore[assignment]
        self.timeouts: TimeoutControl = None  # type: ignore[assignment]
        self.server: tuple[str, int | None] | None = None  # (path, None) on a Unix socket, as ASGI says
        self.client: tuple[str, int] | None = None
        self.forwarded: TrustedPeers | None = None  # whether the peer may set forwarded headers (connection_made)
        self.scheme = "http"
        self.request_table: RequestTable | None = None  # the metrics' series for this scheme (Stream)
        self.cycle: RequestCycle | None = None  # the request the app is answering
        self._reading: RequestCycle | None = None  # the request whose body is arriving
        self._held: RequestCycle | None = None  # started, its app not yet run: see _start
        # Requests read ahead of their turn, with what their responses' framing depends on (see _start).
        # Made on the first one, since most connections never pipeline and an empty deque is a fifth of
        # an idle connection's memory.
        self._pipeline: deque[tuple[RequestCycle, bool, bool, bool]] | None = None
        self._pending_rejection: RequestRejection | None = None
        self._batch: list[bytes] | None = None  # writes held back while one read is being parsed
        self._batch_size = 0
        self.ignore_input = False  # nothing more is parsed (see the module docstring)
        self.closing = False
        self.fresh = True  # no response sent yet: its first request may still be on the way
        # Bytes read so far of an incomplete request head; -1 while a request's body is being read.
        self._head_bytes = 0
        self._read_size = 0  # the size of the read being parsed
        self._line_bytes = 0  # bytes of the request line so far, -1 once its end has been seen
        self._body_budget = -1  # bytes of chunked body still allowed, -1 when not counted
        self._requests_left = state.max_requests_per_connection  # 0 = unlimited
        # Header fields and bytes a chunked body's trailers may still use: (request, count, bytes).
        self._trailer_room: tuple[RequestCycle, int, int] | None = None
        self._bytes_out = 0  # written since the last heartbeat, for the minimum response rate
        self._init_output()

    # -- transport events ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not subclasses
        self.flow = FlowControl(self.transport)
        self.server = server_address(transport.get_extra_info("sockname"))
        self.client = address(transport.get_extra_info("peername"))
        # No TCP_NODELAY here: asyncio and uvloop set it on every TCP transport they make, and asking for
        # the socket costs uvloop a wrapper object per connection.
        state = self.state
        verdicts = state.forwarded_verdicts
        if verdicts is not None:  # decided once: every request of the connection comes from this peer
            client = self.client
            self.forwarded = verdicts[client[0] if client else None]
        now = state.clock()
        self.timeouts = timeouts = TimeoutControl(state.timeout_durations, state.data_rates, now)
        timeouts.set_timeout(TimeoutReason.KEEP_ALIVE, now)  # before the first byte, as in Kestrel
        over_limit = 0 < state.max_connections <= len(state.connections) - state.upgraded  # (see websocket.py)
        state.connections.add(self)
        if state.metrics is not None:
            state.metrics.connection_opened(self, now, over_limit)
            self.request_table = state.metrics.request_table(self.scheme, "1.1")
        if over_limit:
            if self.http2 is not None and self.scheme == "http":
                self.http2.refuse_over_limit(self)  # (the first bytes say whose refusal: HTTP/2's or a 503)
            else:
                self._refuse()
            return
        if state.shutting_down or state.draining:
            # accepted in the same batch as the last ones before the drain, or during --shutdown-delay
            self.closing = True  # answer its request with `connection: close` (see shutdown())
        if not self.http1 and self.http2 is not None:
            self.http2.take_over(self, b"")

    def connection_lost(self, exc: Exception | None) -> None:
        self.state.connection_closed(self, self._pending_rejection)
        self.flow.connection_lost()
        self.transport = LOST_TRANSPORT  # (see LostTransport)
        # A request whose app answered and closed inside the read that carried its head (eagerly, on
        # 3.12) is still `_reading`: dropped here, or connection and request keep each other alive.
        self._reading = None
        if self.cycle is not None:
            self.cycle.on_disconnect()
        pipeline, self._pipeline = self._pipeline, None
        for queued in pipeline or ():
            queued[0].on_disconnect()

    def pause_writing(self) -> None:
        self.flow.pause_writing()

    def resume_writing(self) -> None:
        self.flow.resume_writing()

    # -- hooks for the parser adapters -----------------------------------------------------------

    def on_request_head(
        self, method: bytes, target: bytes, http_version: bytes, headers: list[tuple[bytes, bytes]]
    ) -> None:
        """A complete request head. Header names arrive lower-cased, in order."""
        if self.ignore_input:
            return
        state = self.state
        bound = self._head_bytes  # an upper bound on this head's size
        if bound <= 0:  # the head began inside the current read
            bound = self._read_size
        self._head_bytes = -1
        # A bound within both the line and the header-size limits needs only the fields counted (a read
        # that carries a small body with its head lands here). Fields are measured as `name: value\r\n`,
        # up to two bytes more than a client may send for one (`name:value\n`): hence the margin.
        if bound > state.small_head:
            fields = len(headers)
            if (
                bound > state.max_line_size
                or bound + 2 * fields > state.max_headers_size
                or fields > state.max_header_count
            ):
                too_large = over_head_limits(state, method, target, headers)
                if too_large is not None:
                    self.on_reject(too_large)
                    return
        http11 = http_version is HTTP_11 or http_version == b"1.1" or is_http11(http_version)
        if http11 is None:
            self.on_reject(version_rejection(http_version))
            return
        keep_alive, expect_continue, trailers, upgrade, hosts, codings, length, empty_body, content_types, forwarded = (
            scan_headers(state.known_hosts, headers, http11)
        )
        origin_form = target[:1] == b"/"  # nearly every request's target: `*` and the others are tested below
        if codings or hosts != 1 or content_types > 1 or (not origin_form and target == b"*"):  # (ordinary: none)
            refusal = head_refusal(method, target, http11, hosts, codings, length, content_types)
            if refusal is not None:
                self.on_reject(refusal)
                return
            empty_body = empty_body and not codings
        if not empty_body and state.max_body_size:
            if codings:  # a chunked body is counted as it arrives
                self._body_budget = state.max_body_size
            else:  # the parser holds a Content-Length body to its length
                self._body_budget = -1
                if length is not None and content_length(length) > state.max_body_size:
                    self.on_reject(RequestRejection.BODY_TOO_LARGE)  # before a byte of it is read, as Kestrel
                    return
        if origin_form:  # split_target's first case, without the call
            raw_path, _, query = target.partition(b"?")
        else:
            parts = split_target(target)
            if parts is None:
                # Same answer as a target the parser itself refuses (llhttp rejects "foo", h11 passes it on).
                self.on_reject(RequestRejection.MALFORMED_REQUEST)
                return
            raw_path, query = parts
        if upgrade and method == b"GET" and http11 and empty_body and self.cycle is None and not self._pipeline:
            self._flush_batch()  # responses ahead of it leave before its answer
            trusted = self.forwarded if forwarded else None  # the verdict, when there is something to believe
            if state.upgrade is not None and state.upgrade(self, raw_path, query, headers, trusted):
                return  # taken over (or refused) by the upgrade hand-off: protocols/websocket.py
        scope = self._scope(method, raw_path, query, headers, http11, trailers)
        if forwarded and self.forwarded is not None:  # a forwarded field, from a peer that may set one
            cycle = forwarded_cycle(self, scope, expect_continue, self.forwarded)
        else:
            # (an HTTP/1.0 request is counted by its scope's version: see ScopeCountedCycle)
            cycle = (RequestCycle if http11 else ScopeCountedCycle)(self, scope, expect_continue)
        if empty_body:
            # RFC 9112 section 6.3: no Content-Length and no Transfer-Encoding means no body. Marking it
            # now lets an app that answers at once keep the connection alive.
            cycle.body_complete = True
        # Start the request now, or queue it behind the one being answered (reading pauses meanwhile).
        left = self._requests_left
        if left:
            self._requests_left = left - 1
            if left == 1:
                keep_alive = False  # the last request this connection serves: it says `connection: close`
        keep_alive = keep_alive and not self.closing
        self._reading = cycle
        head_request = scope["method"] == "HEAD"  # (a str comparison costs less than a bytes one)
        if self.cycle is None:
            self._start(cycle, keep_alive, http11, head_request)
        else:
            self._queue(cycle, keep_alive, http11, head_request)

    def _scope(
        self,
        method: bytes,
        raw_path: bytes,
        query: bytes,
        headers: list[tuple[bytes, bytes]],
        http11: bool,
        trailers: bool,
    ) -> dict[str, Any]:
        state = self.state
        # A copy of the server's scope, its keys in order and those every request shares filled in: a
        # dict copied and its other keys set cost about half of what a dict display of them all costs.
        scope = state.http_scope.copy()
        scope["asgi"] = {"version": ASGI_VERSION, "spec_version": HTTP_SPEC_VERSION}
        if not http11:
            scope["http_version"] = "1.0"
        scope["server"] = self.server
        scope["client"] = self.client
        scope["scheme"] = self.scheme
        scope["method"] = _METHOD_NAMES.get(method) or method.decode("ascii")
        scope["path"] = state.root_path + (decoded_path(raw_path) or decode_path(raw_path))
        scope["raw_path"] = state.root_path_bytes + raw_path if state.root_path_bytes else raw_path
        scope["query_string"] = query
        scope["headers"] = headers
        scope["state"] = state.lifespan_state.copy() if state.lifespan_state else {}  # (the same, without a call)
        if trailers:
            scope["extensions"] = {"http.response.trailers": {}}
        return scope

    def _queue(self, cycle: RequestCycle, keep_alive: bool, http11: bool, head_request: bool) -> None:
        """Queue a request behind the one being answered; reading pauses meanwhile."""
        if self._pipeline is None:
            self._pipeline = deque()
        self._pipeline.append((cycle, keep_alive, http11, head_request))
        self.flow.pause_reading()

    def on_request_body(self, data: bytes | bytearray) -> None:
        reading = self._reading
        if reading is not None and not self.ignore_input:
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
        if reading is None or self.ignore_input:
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
        reading = self._reading
        if reading is not None and not self.ignore_input:
            if not reading.body_complete:  # (a request without a body was marked complete at its head)
                reading.finish_body()
                if reading is self._held:  # its whole body came in this read: the app finds it there
                    self._run_held()
            self._reading = None

    def on_reject(self, reason: RequestRejection) -> None:
        """Malformed input: stop reading, answer once the responses ahead of it are out, then close."""
        if self._held is not None:
            # A request refused inside the read that brought its head (its body broke a limit): its app
            # runs first, as if it had started at the head, and then hears that the client is gone.
            self._run_held()
        if self.ignore_input:
            return
        self.ignore_input = True
        self._head_bytes = -1
        self.flow.pause_reading()
        logger.debug("Rejected request from %s: %s", self.client, reason.name)
        reading, self._reading = self._reading, None
        if reading is not None:
            # The bad bytes were inside this request's body: the app sees the client go away.
            pipeline = self._pipeline
            if pipeline and pipeline[-1][0] is reading:  # (only the newest request can be reading)
                pipeline.pop()
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
            if self._held is not None:  # the body goes on in a later read: the app takes what came in this one
                self._run_held()
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

    def switch_to_http2(self, received: bytes) -> bool:
        """Called by a parser adapter when a request does not parse: True when `received` (everything read
        on the connection so far, or as much as the parser has shown of it) is the start of the HTTP/2
        preface on a connection that has had no request yet, and HTTP/2 has taken the connection over."""
        http2 = self.http2
        if http2 is None or not self.fresh or self.cycle is not None or self._reading is not None:
            return False
        if self.ignore_input or self.scheme != "http" or not received:
            return False
        if not (received.startswith(HTTP2_PREFACE) or HTTP2_PREFACE.startswith(received)):
            return False
        http2.take_over(self, received)
        return True

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

    # -- the Stream interface for the response being sent (framing: Http1Output) ----------------

    def pause_reading(self) -> None:
        self.flow.pause_reading()

    def resume_reading_for(self, cycle: RequestCycle) -> None:
        """The app wants more body: resume reading unless queued requests still hold it paused."""
        if cycle is self._reading and not self._pipeline and not self.ignore_input:
            self.flow.resume_reading()

    def complete_response(self, cycle: RequestCycle) -> float | None:
        self.cycle = None
        self.fresh = False
        self.state.requests_served += 1
        if self.transport.is_closing():
            return None
        if not self.keep_alive:
            # Nothing after this response is read: a request pipelined behind it must not reach the app.
            self.ignore_input = True
            self.close()
            return None
        if self._pipeline:
            # Not from here: this runs inside the finished app's `send`, and the next app must start
            # on its own, not nested in (and sharing a stack with) the previous one.
            self.state.loop.call_soon(self._start_queued)
        elif self._pending_rejection is not None:
            self._send_rejection()
        else:
            now = self.state.clock()
            timeouts = self.timeouts
            timeouts.reason = _KEEP_ALIVE  # timeouts.set_timeout(KEEP_ALIVE, now), without the call
            timeouts.since = now
            flow = self.flow
            if flow.read_paused:
                reading = self._reading
                if reading is None or len(reading._body) <= BODY_BUFFER_HIGH_WATER:
                    flow.resume_reading()
            return now  # the request's end, for the metrics: one clock read for both
        return None

    # -- lifecycle -------------------------------------------------------------------------------

    def _start(self, cycle: RequestCycle, keep_alive: bool, http11: bool, head_request: bool) -> None:
        self.cycle = cycle
        # what the response's framing depends on (Http1Output)
        self._http11 = http11
        self.keep_alive = keep_alive
        self._head_request = head_request
        # timeouts.start_request(), without the call: no connection timeout runs, the body rate starts anew
        timeouts = self.timeouts
        timeouts.reason = None
        timeouts.read_timing = TIMING_OFF
        timeouts.read_elapsed = 0.0
        if not cycle.body_complete and self._batch is not None:
            # Inside a read, the body bytes that came with this head are parsed only after this hook
            # returns. An app started now (eagerly, on 3.12) would find no body yet, wait for it and be
            # woken on the next loop turn; held until the read is parsed (or the request complete) it
            # takes the body at once and answers inside this read.
            self._held = cycle
            return
        state = self.state
        # Each request runs in a fresh copy of the server's context: context variables an app sets
        # never leak into the next request on the same connection.
        cycle.task = start_task(cycle.run(state.app), state.loop, state.base_context.copy())

    def _run_held(self) -> None:
        """Run the app of the request held by _start (as _start would have, inlined there for GET)."""
        cycle = self._held
        assert cycle is not None
        self._held = None
        state = self.state
        cycle.task = start_task(cycle.run(state.app), state.loop, state.base_context.copy())

    def _start_queued(self) -> None:
        if self.cycle is None and self._pipeline and not self.transport.is_closing():
            self._start(*self._pipeline.popleft())

    def _refuse(self) -> None:
        """Over the connection limit: answer 503 at once and never parse what the client sends.

        Reading goes on (the bytes are dropped) and only the write side is shut, so the close that
        follows does not reset the connection under the answer; the client's close, or the heartbeat
        after the LINGER timeout, ends it.
        """
        self.ignore_input = True
        self.closing = True
        self._head_bytes = -1
        self._pending_rejection = RequestRejection.TOO_MANY_CONNECTIONS
        logger.debug("Refused a connection from %s: over --limit-concurrency", self.client)
        self._send_rejection()

    def _send_rejection(self, at_once: bool = True) -> None:
        """Answer the pending rejection, then shut the write side and linger: what the client still
        sends is read and dropped until it closes or the LINGER timeout closes it. Closing with unread
        input would send a reset instead of a FIN, and a reset can destroy the answer in the client's
        receive buffer before it is read (a client still uploading would never see its 408 or 413)."""
        reason = self._pending_rejection
        assert reason is not None
        state = self.state
        body = reason.message.encode()
        if state.access_log:
            self._log_rejection(reason, len(body))
        self.write(closing_response(state, reason.status, (), body))
        if self.transport.can_write_eof():
            self.closing = True
            self.timeouts.set_timeout(TimeoutReason.LINGER, state.clock())
            if at_once:
                self._linger()
            else:  # one loop turn later, as a close would be: the app just told of the disconnect runs first
                state.loop.call_soon(self._linger)
        else:
            self.close()

    def _log_rejection(self, reason: RequestRejection, sent: int) -> None:
        """A refused request is logged too, with the cause, though no app saw it: the head may not have
        been read whole, so only the client is known for sure."""
        self.state.access_format.write(
            AccessEntry(None, reason.status, sent, 0.0, rejected=reason.name, client=self.client)
        )

    def _linger(self) -> None:
        transport = self.transport
        if transport.is_closing():
            return
        self._flush_batch()  # the answer goes out before the FIN
        transport.write_eof()
        self.flow.resume_reading()

    # -- the heartbeat ---------------------------------------------------------------------------

    def on_tick(self, now: float) -> None:
        """Heartbeat: hold the request body and the response to their minimum data rates; close a
        keep-alive connection idle too long; answer 408 to a head that is late."""
        timeouts = self.timeouts
        cycle = self.cycle
        written, self._bytes_out = self._bytes_out, 0
        too_slow = timeouts.check_rates(
            now, cycle.body_received if cycle is not None else 0, written, self.flow.write_paused
        )
        if too_slow is not None:
            self._on_timeout(too_slow)
            return
        if cycle is not None:  # a request is being answered: no connection timeout runs
            if self.flow.read_paused and cycle is not self._reading and not self.transport.is_closing():
                self._check_hang_up()
            return
        if self._pipeline or self.transport.is_closing():
            return
        if self._head_bytes > 0:  # a request head has begun: the request-headers timeout applies
            if timeouts.reason is not TimeoutReason.REQUEST_HEADERS:
                timeouts.set_timeout(TimeoutReason.REQUEST_HEADERS, now)  # first seen: its clock starts
                return
        elif self.closing:
            timeouts.change_reason(TimeoutReason.LINGER)  # a drain shortens the wait for the next request
        expired = timeouts.expired(now)
        if expired is not None:
            self._on_timeout(expired)

    def _on_timeout(self, reason: TimeoutReason) -> None:
        if reason is TimeoutReason.REQUEST_HEADERS:
            self.on_reject(RequestRejection.REQUEST_HEADERS_TIMEOUT)
        elif reason is TimeoutReason.READ_DATA_RATE:
            logger.debug("Request body from %s slower than --limit-min-request-body-rate", self.client)
            self.on_reject(RequestRejection.REQUEST_BODY_TIMEOUT)
        elif reason is TimeoutReason.WRITE_DATA_RATE:
            logger.debug("Aborted %s: the response was read slower than --limit-min-response-rate", self.client)
            self._ending(MIN_RESPONSE_DATA_RATE)
            self.ignore_input = True
            self.abort()
        else:  # KEEP_ALIVE, LINGER: nothing is owed to the peer
            if reason is TimeoutReason.KEEP_ALIVE:
                self._ending(KEEP_ALIVE_TIMEOUT)
            self.close()

    def _ending(self, why: str) -> None:
        """The metrics' error.type of the close that follows (LINGER, a drain's, is no error)."""
        if self.state.metrics is not None:
            self.state.metrics.connection_ending(self, why)

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
        heartbeat once it has been silent for the LINGER timeout. Closing it at once would drop a request
        that a draining worker of a rolling restart had already accepted. With `linger_on_shutdown`
        (supervised workers) idle keep-alive connections are treated the same way, so a client that
        sends on one just as the drain starts gets an answer rather than a closed connection.
        """
        self.closing = True
        if self.cycle is None and not self._pipeline and not self.fresh and not self.state.linger_on_shutdown:
            self.close()
        elif self.cycle is not None and not self.cycle.response_started:
            self.keep_alive = False

    def tls_scope_extension(self) -> dict[str, Any] | None:
        """The ASGI TLS extension of this connection; None on a plain one."""
        return None

    @property
    def active_cycles(self) -> tuple[RequestCycle, ...]:
        """The requests whose app is running (the metrics' http.server.active_requests): one at most."""
        return () if self.cycle is None else (self.cycle,)

    def cancel_app(self) -> None:
        if self.cycle is not None and self.cycle.task is not None:
            self.cycle.task.cancel()


def address(info: Any) -> tuple[str, int] | None:
    if isinstance(info, tuple) and len(info) >= 2:
        return str(info[0]), int(info[1])
    return None


# The scope's `server` tuples handed out so far, one per local address. A request's scope holds its
# connection's tuple (a reference count written on the way in and out): with a tuple per connection
# and many busy connections, that was one more cache line per request that had left the CPU's caches.
_SERVER_ADDRESSES: dict[tuple[str, int | None], tuple[str, int | None]] = {}
_SERVER_ADDRESSES_MAX = 256  # local addresses are few; past this many (a bind to many IPs) no more are shared


def server_address(sockname: Any) -> tuple[str, int | None] | None:
    """The ASGI `server` of a connection: (host, port), or (path, None) on a Unix socket; connections
    to the same local address share one tuple."""
    here: tuple[str, int | None] | None = (
        (sockname, None) if isinstance(sockname, str) and sockname else address(sockname)
    )
    if here is None:
        return None
    shared = _SERVER_ADDRESSES.get(here)
    if shared is None:
        if len(_SERVER_ADDRESSES) >= _SERVER_ADDRESSES_MAX:
            return here
        shared = _SERVER_ADDRESSES[here] = here
    return shared


class TlsConnection(HttpConnection):
    """What a TLS listener adds to a parser adapter (see tls_connection_class): scheme `https`, and the
    ASGI TLS extension in every request's scope, computed once per connection, on its first request (a
    connection that never sends one does not pay for it)."""

    __slots__ = ()

    @staticmethod
    def describe_tls(ssl_object: Any) -> dict[str, Any]:
        """The extension for one connection; tls_connection_class supplies it."""
        raise NotImplementedError

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # asyncio and uvloop call this once the handshake is complete.
        self.scheme = "https"
        self.tls_extension: dict[str, Any] | None = None  # described on the first request (see below)
        http2 = self.http2
        if http2 is not None:
            ssl_object = transport.get_extra_info("ssl_object")
            if ssl_object is not None and ssl_object.selected_alpn_protocol() == "h2":
                self.transport = transport  # type: ignore[assignment]
                http2.take_over(self, b"")  # (which describes the TLS session once, for every stream)
                return
        super().connection_made(transport)

    def tls_scope_extension(self) -> dict[str, Any] | None:
        tls = self.tls_extension
        if tls is None:
            tls = self.tls_extension = self.describe_tls(self.transport.get_extra_info("ssl_object"))
        return tls

    def _scope(
        self,
        method: bytes,
        raw_path: bytes,
        query: bytes,
        headers: list[tuple[bytes, bytes]],
        http11: bool,
        trailers: bool,
    ) -> dict[str, Any]:
        scope = super()._scope(method, raw_path, query, headers, http11, trailers)
        tls = self.tls_extension
        if tls is None:  # the connection's first request (a call less for every later one)
            tls = self.tls_scope_extension()
        extensions = scope.get("extensions")
        if extensions is None:
            scope["extensions"] = {"tls": tls}
        else:
            extensions["tls"] = tls
        return scope


def tls_connection_class(cls: type[HttpConnection], describe: Callable[[Any], dict[str, Any]]) -> type[HttpConnection]:
    """`cls` (a parser adapter) for a TLS listener, whose connections `describe(ssl_object)` once. A plain
    listener keeps `cls` itself, so a plain request's scope costs nothing more than before."""
    namespace = {"__slots__": (), "describe_tls": staticmethod(describe)}
    return cast("type[HttpConnection]", type("Tls" + cls.__name__, (TlsConnection, cls), namespace))
