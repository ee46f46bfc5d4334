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
import logging
import socket
from collections import deque
from typing import TYPE_CHECKING, Any

from kestrelpy.asgi import ASGI_VERSION, HTTP_SPEC_VERSION, decode_path, split_target
from kestrelpy.protocols.cycle import BODY_BUFFER_HIGH_WATER, RequestCycle
from kestrelpy.protocols.flow import FlowControl
from kestrelpy.protocols.rejection import RequestRejection
from kestrelpy.protocols.writer import status_line

if TYPE_CHECKING:
    from kestrelpy.state import ServerState

logger = logging.getLogger("kestrelpy.error")


def _connection_tokens(value: bytes) -> set[bytes]:
    return {token.strip().lower() for token in value.split(b",")}


class HttpConnection(asyncio.Protocol):
    """The parser-independent half of an HTTP/1.1 connection."""

    __slots__ = (
        "_pending_rejection",
        "_pipeline",
        "_reading",
        "client",
        "closing",
        "cycle",
        "flow",
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
        self.server: tuple[str, int] | None = None
        self.client: tuple[str, int] | None = None
        self.scheme = "http"
        self.cycle: RequestCycle | None = None  # the request the app is answering
        self._reading: RequestCycle | None = None  # the request whose body is arriving
        self._pipeline: deque[RequestCycle] = deque()
        self._pending_rejection: RequestRejection | None = None
        self.rejected = False
        self.closing = False
        self.idle_since = 0.0

    # -- transport events ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not subclasses
        self.flow = FlowControl(self.transport)
        self.server = _address(transport.get_extra_info("sockname"))
        self.client = _address(transport.get_extra_info("peername"))
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        self.idle_since = self.state.clock()
        self.state.connections.add(self)
        if self.state.shutting_down:
            self.closing = True
            transport.close()

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
        keep_alive = http11
        expect_continue = trailers = False
        hosts = 0
        for name, value in headers:
            if name == b"host":
                hosts += 1
            elif name == b"connection":
                tokens = _connection_tokens(value)
                if b"close" in tokens:
                    keep_alive = False
                elif b"keep-alive" in tokens and not http11:
                    keep_alive = True
            elif name == b"expect":
                expect_continue = http11 and value.lower() == b"100-continue"
            elif name == b"te":
                trailers = b"trailers" in _connection_tokens(value)
        if http11 and hosts != 1:
            # RFC 9112 section 3.2: a 1.1 request without exactly one Host is answered with 400.
            self.on_reject(RequestRejection.MISSING_HOST if hosts == 0 else RequestRejection.MULTIPLE_HOST)
            return
        parts = split_target(target)
        if parts is None:
            self.on_reject(RequestRejection.INVALID_TARGET)
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
        cycle = RequestCycle(
            self,
            scope,
            keep_alive=keep_alive and not self.closing,
            expect_continue=expect_continue,
            http11=http11,
        )
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

    def write(self, data: bytes) -> None:
        if not self.transport.is_closing():
            self.transport.write(data)

    def abort(self) -> None:
        self.transport.abort()

    def resume_reading_for(self, cycle: RequestCycle) -> None:
        """The app wants more body: resume reading unless queued requests still hold it paused."""
        if cycle is self._reading and not self._pipeline and not self.rejected:
            self.flow.resume_reading()

    def on_response_complete(self, cycle: RequestCycle) -> None:
        self.cycle = None
        if self.transport.is_closing():
            return
        if not cycle.keep_alive:
            self.transport.close()
            return
        if self._pipeline:
            self._start(self._pipeline.popleft())
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
        cycle.task = self.state.loop.create_task(cycle.run(self.state.app))

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
        self.transport.close()

    def on_tick(self, now: float) -> None:
        """Heartbeat: close a keep-alive connection that has been idle too long."""
        if (
            self.cycle is None
            and not self._pipeline
            and now - self.idle_since > self.state.keep_alive_timeout
            and not self.transport.is_closing()
        ):
            self.transport.close()

    def shutdown(self) -> None:
        """Graceful shutdown: idle connections close now, busy ones after their current response."""
        self.closing = True
        if self.cycle is None and not self._pipeline:
            self.transport.close()
        elif self.cycle is not None and not self.cycle.response_started:
            self.cycle.keep_alive = False

    def cancel_app(self) -> None:
        if self.cycle is not None and self.cycle.task is not None:
            self.cycle.task.cancel()


def _address(info: Any) -> tuple[str, int] | None:
    if isinstance(info, tuple) and len(info) >= 2:
        return str(info[0]), int(info[1])
    return None
