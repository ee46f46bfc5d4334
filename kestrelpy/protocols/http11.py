"""HttpConnection: everything about an HTTP/1.1 connection except reading the bytes.

A parser adapter subclasses this and calls four hooks: `on_request_head`, `on_request_body`,
`on_request_complete` and `on_reject`. Keep-alive, pipelining, flow control, timeouts, the Host rule and
the rejection answers live here once, so both parsers behave alike. This module never imports a parser.

Pipelining (RFC 9112 section 9.3.2): requests that arrive while a response is in progress are queued
and reading pauses; the next request reaches the app only after the previous response is complete,
so responses leave in order.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import socket
import sys
from collections import deque
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from kestrelpy.asgi import ASGI_VERSION, HTTP_SPEC_VERSION, decode_path, split_target
from kestrelpy.protocols.cycle import BODY_BUFFER_HIGH_WATER, RequestCycle
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


# Request headers the connection itself looks at; the rest go to the app untouched.
_HOST, _CONTENT_LENGTH, _TRANSFER_ENCODING, _CONNECTION, _EXPECT, _TE = range(6)
_REQUEST_HEADERS = {
    b"host": _HOST,
    b"content-length": _CONTENT_LENGTH,
    b"transfer-encoding": _TRANSFER_ENCODING,
    b"connection": _CONNECTION,
    b"expect": _EXPECT,
    b"te": _TE,
}


def _connection_tokens(value: bytes) -> set[bytes]:
    return {token.strip().lower() for token in value.split(b",")}


class HttpConnection(asyncio.Protocol):
    """The parser-independent half of an HTTP/1.1 connection."""

    __slots__ = (
        "_batch",
        "_batch_size",
        "_pending_rejection",
        "_pipeline",
        "_reading",
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
        self._pipeline: deque[RequestCycle] = deque()
        self._pending_rejection: RequestRejection | None = None
        self._batch: list[bytes] | None = None  # writes held back while one read is being parsed
        self._batch_size = 0
        self.rejected = False
        self.closing = False
        self.fresh = True  # no response sent yet: its first request may still be on the way
        self.idle_since = 0.0

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
        self.idle_since = self.state.clock()
        self.state.connections.add(self)
        if self.state.shutting_down or self.state.draining:
            # accepted in the same batch as the last ones before the drain, or during --shutdown-delay
            self.closing = True  # answer its request with `connection: close` (see shutdown())

    def connection_lost(self, exc: Exception | None) -> None:
        self.state.connection_closed(self)
        self.flow.connection_lost()
        if self.cycle is not None:
            self.cycle.on_disconnect()
        for cycle in self._pipeline:
            cycle.on_disconnect()
        self._pipeline.clear()

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
        http11 = http_version == b"1.1"
        if not http11 and http_version != b"1.0":
            # llhttp reports a request line without a version as 0.9, which h11 refuses as malformed.
            self.on_reject(
                RequestRejection.MALFORMED_REQUEST
                if http_version == b"0.9"
                else RequestRejection.UNSUPPORTED_HTTP_VERSION
            )
            return
        keep_alive = http11
        expect_continue = trailers = False
        hosts = codings = 0
        has_length = False
        empty_body = True
        for name, value in headers:
            kind = _REQUEST_HEADERS.get(name)
            if kind is None:
                continue
            if kind == _HOST:
                hosts += 1
            elif kind == _CONTENT_LENGTH:
                has_length = True
                empty_body = empty_body and value.strip() == b"0"
            elif kind == _TRANSFER_ENCODING:
                # Only `chunked` is implemented; llhttp accepts "gzip, chunked", which h11 refuses.
                codings += 1 if value.strip().lower() == b"chunked" else 2
            elif kind == _CONNECTION:
                tokens = _connection_tokens(value)
                if b"close" in tokens:
                    keep_alive = False
                elif b"keep-alive" in tokens and not http11:
                    keep_alive = True
            elif kind == _EXPECT:
                expect_continue = http11 and value.lower() == b"100-continue"
            else:
                trailers = b"trailers" in _connection_tokens(value)
        if http11 and hosts != 1:
            # RFC 9112 section 3.2: a 1.1 request without exactly one Host is answered with 400.
            self.on_reject(RequestRejection.MISSING_HOST if hosts == 0 else RequestRejection.MULTIPLE_HOST)
            return
        if codings > 1 or (codings and has_length):
            # RFC 9112 section 6.1 allows refusing Content-Length with Transfer-Encoding (a smuggling
            # vector); h11 would read such a body as chunked and keep the connection open.
            self.on_reject(RequestRejection.MALFORMED_REQUEST)
            return
        parts = split_target(target)
        if parts is None:
            # Same answer as a target the parser itself refuses (llhttp rejects "foo", h11 passes it on).
            self.on_reject(RequestRejection.MALFORMED_REQUEST)
            return
        raw_path, query = parts
        state = self.state
        scope: dict[str, Any] = {
            "type": "http",
            "asgi": {"version": ASGI_VERSION, "spec_version": HTTP_SPEC_VERSION},
            "http_version": "1.1" if http11 else "1.0",
            "server": self.server,
            "client": self.client,
            "scheme": self.scheme,
            "method": method.decode("ascii"),
            "root_path": state.root_path,
            "path": state.root_path + decode_path(raw_path),
            "raw_path": state.root_path_bytes + raw_path,
            "query_string": query,
            "headers": headers,
            "state": state.lifespan_state.copy(),
        }
        if trailers:
            scope["extensions"] = {"http.response.trailers": {}}
        if codings:
            empty_body = False
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
            self._pipeline.append(cycle)
            self.flow.pause_reading()

    def on_request_body(self, data: bytes) -> None:
        if self._reading is not None and not self.rejected:
            self._reading.feed_body(data)

    def on_request_complete(self) -> None:
        if self._reading is not None and not self.rejected:
            self._reading.finish_body()
            self._reading = None

    def on_reject(self, reason: RequestRejection) -> None:
        """Malformed input: stop reading, answer once the responses ahead of it are out, then close."""
        if self.rejected:
            return
        self.rejected = True
        self.flow.pause_reading()
        logger.debug("Rejected request from %s: %s", self.client, reason.name)
        reading, self._reading = self._reading, None
        if reading is not None:
            # The bad bytes were inside this request's body: the app sees the client go away.
            if reading in self._pipeline:
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
            self._send_rejection()

    # -- used by the request cycle ---------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        """Parse, and send what the apps answered during this read in one write: pipelined responses
        that complete at once leave in a single segment instead of one syscall each."""
        batch: list[bytes] = []
        self._batch = batch
        self._batch_size = 0
        try:
            self.feed(data)
        finally:
            self._batch = None
            if batch:
                self.write(batch[0] if len(batch) == 1 else b"".join(batch))

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

    def _send_rejection(self) -> None:
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
        self.close()

    def on_tick(self, now: float) -> None:
        """Heartbeat: close a keep-alive connection that has been idle too long."""
        if (
            self.cycle is None
            and not self._pipeline
            and now - self.idle_since > (SHUTDOWN_GRACE if self.closing else self.state.keep_alive_timeout)
            and not self.transport.is_closing()
        ):
            self.close()

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


def _address(info: Any) -> tuple[str, int] | None:
    if isinstance(info, tuple) and len(info) >= 2:
        return str(info[0]), int(info[1])
    return None
