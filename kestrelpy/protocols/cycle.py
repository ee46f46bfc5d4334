"""RequestCycle: the one ASGI `receive`/`send` implementation for an HTTP request, whatever carries it.

The cycle knows ASGI and nothing of wire framing. It reaches the protocol that carries its request
through the small `Stream` interface below. HTTP/1.1 implements it in the connection itself, which
answers one request at a time (protocols/http11_output.py frames the response: Content-Length or
chunked, `connection: close`); an HTTP/2 stream implements it with HEADERS and DATA frames and its
flow-control windows. Everything the protocols must agree on is decided here, once:

- the ASGI message order, `http.disconnect` when the client leaves or the response is complete, and
  `ClientDisconnected` from `send` once the client has gone (ASGI HTTP spec 2.4);
- the request body: buffered up to BODY_BUFFER_HIGH_WATER, then the stream is asked to stop reading
  until the app catches up; the app waiting for body bytes is what the minimum body rate times;
- `Expect: 100-continue`: the interim answer goes out only when the app asks for the body;
- response trailers, only when the request announced it accepts them (`te: trailers`);
- the error policy: an exception (or a return without a complete response) before anything of the
  response is on the wire is answered with a 500; after that the stream is aborted (HTTP/1.1: reset
  the connection; HTTP/2: RST_STREAM), so the client can tell a response cut short from a whole one.

    Stream: what the cycle asks of the protocol carrying its request
      start_response(status, headers, trailers)   validate and hold the head; nothing is sent yet
      send_body(body, more_body)                  the first call sends the held head with it, so a whole
                                                  body in one message is framed with its length
      send_trailers(headers, more_trailers)       after the last body message, when trailers were announced
      fail_response(status, body)                 replace a held head with an error answer and send it
      response_on_wire                            whether any of the response has been sent
      send_continue()                             the interim 100 (Continue) answer
      pause_reading() / resume_reading_for(cycle) request-body backpressure (HTTP/2: window updates)
      complete_response(cycle)                    the response is whole: keep-alive, the next request;
                                                  returns the clock if it read it (the metrics' end)
      abort()                                     cut the response short
      flow                                        send-side backpressure: `write_paused`, `await drain()`
      timeouts                                    a TimeoutControl: timing the app's waits for body bytes
      state                                       the ServerState (access log switch, format, clock)
      request_table                               the metrics' series of its connection's scheme and HTTP
                                                  version, from Metrics.request_table once per connection;
                                                  None when off

The access log has one line per request, written when the response is complete or cut short, so it can
say the status, the body bytes sent and how long the exchange took. With the log off, a request pays for
one attribute test per response message; with it on, one clock read at the start and one at the end.
"""

from __future__ import annotations

import asyncio
import logging
from bisect import bisect_left
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from kestrelpy.access_log import AccessEntry
from kestrelpy.asgi import ASGIApp, Message, Scope
from kestrelpy.metrics.instruments import REQUEST_BOUNDS
from kestrelpy.protocols.timeouts import TIMING_ON, TIMING_STOPPING
from kestrelpy.proxy import rewrite_scope

if TYPE_CHECKING:
    from kestrelpy.metrics.recorder import RequestTable
    from kestrelpy.protocols.flow import FlowControl
    from kestrelpy.protocols.timeouts import TimeoutControl
    from kestrelpy.proxy import TrustedPeers
    from kestrelpy.state import ServerState

logger = logging.getLogger("kestrelpy.error")
access_logger = logging.getLogger("kestrelpy.access")

# Buffered request body above which the stream stops reading until the app catches up.
BODY_BUFFER_HIGH_WATER = 64 * 1024

_DISCONNECT: dict[str, Any] = {"type": "http.disconnect"}
_ERROR_500_BODY = b"Internal Server Error"


class Stream(Protocol):
    """What a RequestCycle needs from the protocol that carries its request (see the module docstring)."""

    @property
    def state(self) -> ServerState: ...
    @property
    def flow(self) -> FlowControl: ...
    @property
    def timeouts(self) -> TimeoutControl: ...
    @property
    def response_on_wire(self) -> bool: ...
    @property
    def request_table(self) -> RequestTable | None: ...

    def start_response(self, status: int, headers: Iterable[tuple[bytes, bytes]], trailers: bool) -> None: ...
    def send_body(self, body: bytes, more_body: bool) -> None: ...
    def send_trailers(self, headers: Iterable[tuple[bytes, bytes]], more_trailers: bool) -> None: ...
    def fail_response(self, status: int, body: bytes) -> None: ...
    def send_continue(self) -> None: ...
    def pause_reading(self) -> None: ...
    def resume_reading_for(self, cycle: RequestCycle) -> None: ...
    def complete_response(self, cycle: RequestCycle) -> float | None: ...
    def abort(self) -> None: ...


class ClientDisconnected(OSError):
    """Raised by `send` once the client has gone (ASGI HTTP spec 2.4)."""


class RequestCycle:
    """One request and its response. Created by the protocol when a request head arrives."""

    # Whether the metrics count it under its scope's scheme and HTTP version rather than its stream's
    counted_by_scope: ClassVar[bool] = False

    __slots__ = (
        "_body",
        "_body_waiter",
        "_bytes_sent",
        "_completed_at",
        "_final_delivered",
        "_log_started",
        "_response_headers",
        "_stream",
        "_trailers_expected",
        "body_complete",
        "body_received",
        "disconnected",
        "expect_continue",
        "response_complete",
        "response_started",
        "scope",
        "status",
        "task",
    )

    def __init__(self, stream: Stream, scope: Scope, expect_continue: bool) -> None:
        self._stream = stream
        self.scope = scope
        self.expect_continue = expect_continue
        self.task: asyncio.Task[None] | None = None
        # request body: the chunk as the parser handed it over while there is one (most bodies come in
        # one read), a bytearray once more arrive before the app takes them
        self._body: bytes | bytearray = b""
        self._body_waiter: asyncio.Future[None] | None = None
        self.body_complete = False
        self.body_received = 0  # body bytes so far, for the minimum data rate
        self._final_delivered = False
        self.disconnected = False
        # response
        self.response_started = False
        self.response_complete = False
        self._completed_at: float | None = None  # by the stream's clock, when it read it (see _complete)
        self.status = 0
        self._trailers_expected = False
        # access log: when the head arrived (None: the log is off), what the response sent
        state = stream.state
        self._log_started: float | None = None
        if state.access_log:
            self._log_started = state.clock()
            self._bytes_sent = 0
            self._response_headers: list[tuple[bytes, bytes]] = []

    # -- fed by the protocol ---------------------------------------------------------------------

    def feed_body(self, data: bytes | bytearray) -> None:  # h11 hands over bytearray slices
        if self.response_complete:
            return  # the app is done with this request; the rest of its body is dropped
        body = self._body
        if not body:
            body = self._body = data  # no copy: receive() hands this very object to the app
        elif type(body) is bytearray:
            body += data
        else:
            body = self._body = bytearray(body) + data  # a second chunk: appends are cheap from now on
        self.body_received += len(data)
        if len(body) > BODY_BUFFER_HIGH_WATER:
            self._stream.pause_reading()
        if self._body_waiter is not None:
            self._wake()

    def finish_body(self) -> None:
        self.body_complete = True
        if self._body_waiter is not None:
            self._wake()

    def on_disconnect(self) -> None:
        self.disconnected = True
        if self._body_waiter is not None:
            self._wake()

    def _wake(self) -> None:
        """Wake the app waiting in receive(). Callers test `_body_waiter` first: most of the time
        nobody waits, and the test costs less than the call."""
        waiter = self._body_waiter
        if waiter is not None:
            self._body_waiter = None
            if not waiter.done():
                waiter.set_result(None)

    # -- the ASGI callables ----------------------------------------------------------------------

    async def run(self, app: ASGIApp) -> None:
        metrics = self._stream.state.metrics
        started = 0.0
        if metrics is not None:
            clock = metrics.clock  # called from a local: `metrics.clock()` is an unspecialised lookup
            started = clock()
        failure: BaseException | None = None
        try:
            await app(self.scope, self.receive, self.send)
        except GeneratorExit:
            raise  # the task is being garbage-collected (it leaked): nothing is left to answer
        except BaseException as exc:
            failure = exc
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
            if self._log_started is not None and not self.response_complete:
                self._log_access(self._abort_reason(failure))
        # (Not counted when the task ends by GeneratorExit, KeyboardInterrupt or SystemExit: no process
        # that would report it goes on.)
        if metrics is not None:
            # Its end is the clock the stream read as the response completed, when it read it.
            elapsed = (self._completed_at or clock()) - started
            # A whole response whose series exists is counted here: a call would cost as much again
            # (the rest, and what the fast path means: kestrelpy/metrics/recorder.py, Metrics.index).
            table = self._stream.request_table
            if table is not None and self.response_complete:
                if self.counted_by_scope:  # (rare: see ScopeCountedCycle; an empty table finds nothing)
                    table = metrics.request_table(self.scope["scheme"], self.scope["http_version"]) or {}
                try:
                    series = table[self.scope["method"]][self.status]
                except LookupError:
                    series = None
                if series is not None:
                    if elapsed <= 0.005:
                        series[0] += 1.0
                    elif elapsed <= 0.01:
                        series[1] += 1.0
                    elif elapsed <= 0.025:
                        series[2] += 1.0
                    else:
                        series[bisect_left(REQUEST_BOUNDS, elapsed)] += 1.0
                    series[15] += elapsed
                    return
            metrics.request_done(self, elapsed, "" if self.response_complete else self._abort_reason(failure).lower())

    def _on_app_error(self, exc: BaseException) -> None:
        if self.disconnected:
            # The client left; the app noticing it is not an error worth a traceback.
            logger.debug("ASGI app ended after the client disconnected: %r", exc)
            return
        if isinstance(exc, asyncio.CancelledError):
            self._stream.abort()
            return
        logger.error("Exception in ASGI application", exc_info=exc)
        self._fail()

    def _fail(self) -> None:
        """Answer 500 if nothing of the response was sent yet; otherwise cut it short."""
        if self.response_complete:
            return
        stream = self._stream
        if self.response_started and stream.response_on_wire:
            stream.abort()
            return
        # Nothing reached the wire yet (a held head is discarded): a clean 500 is still possible.
        self.response_started = True
        self._trailers_expected = False
        self.status = 500
        if self._log_started is not None:
            self._bytes_sent = len(_ERROR_500_BODY)  # the app's bytes, if any, never left
            self._log_access(None)
        stream.fail_response(500, _ERROR_500_BODY)
        self._complete()

    async def receive(self) -> Message:
        if self.expect_continue:
            # RFC 9110 section 10.1.1: the interim answer goes out once the app wants the body.
            self.expect_continue = False
            if not self.body_complete and not self._body and not self.disconnected:
                self._stream.send_continue()
        while True:
            if self.response_complete:
                return _DISCONNECT
            body = self._body
            if body or (self.body_complete and not self._final_delivered):
                self._body = b""
                if type(body) is not bytes:  # ASGI hands the app bytes (HTTP spec, http.request)
                    body = bytes(body)
                more_body = not self.body_complete
                if more_body:
                    self._stream.resume_reading_for(self)
                else:
                    self._final_delivered = True
                return {"type": "http.request", "body": body, "more_body": more_body}
            if self.disconnected:
                return _DISCONNECT
            # Wait for more body, its end, the client leaving, or the response completing.
            timeouts = None
            if not self.body_complete:
                self._stream.resume_reading_for(self)
                timeouts = self._stream.timeouts
                # The server now waits on the client: its rate counts (an attribute, not a call: this is the
                # path of every request whose body comes after its head).
                timeouts.read_timing = TIMING_ON
            self._body_waiter = asyncio.get_running_loop().create_future()
            try:
                await self._body_waiter
            finally:
                if timeouts is not None:
                    timeouts.read_timing = TIMING_STOPPING

    async def send(self, message: Message) -> None:
        if self.disconnected:
            raise ClientDisconnected("the client has disconnected")
        stream = self._stream
        flow = stream.flow
        if flow.write_paused:
            await flow.drain()
            if self.disconnected:
                raise ClientDisconnected("the client has disconnected")
        kind = message["type"]
        if not self.response_started:
            if kind != "http.response.start":
                raise RuntimeError(f"Expected 'http.response.start' first, got {kind!r}.")
            status = message["status"]
            if type(status) is not int:  # (an IntEnum such as HTTPStatus; a call less for a plain int)
                status = int(status)
            trailers = message.get("trailers", False)
            if trailers:  # only for a request that said it accepts them (te: trailers)
                trailers = "http.response.trailers" in self.scope.get("extensions", ())
            headers = message.get("headers", ())
            if self._log_started is not None and stream.state.access_format.wants_response_headers:
                headers = self._response_headers = list(headers)
            stream.start_response(status, headers, trailers)
            self.status = status
            self.response_started = True
            self._trailers_expected = trailers
        elif self.response_complete:
            raise RuntimeError(f"Cannot send {kind!r}: the response is already complete.")
        elif kind == "http.response.body":
            more_body = message.get("more_body", False)
            body = message.get("body", b"")
            if self._log_started is not None:
                self._bytes_sent += len(body)
                if not more_body and not self._trailers_expected:
                    self._log_access(None)
            stream.send_body(body, more_body)
            if not more_body and not self._trailers_expected:  # otherwise the trailers message completes it
                # _complete(), inlined: this is every response's last message
                self.response_complete = True
                if self._body_waiter is not None:
                    self._wake()
                self._completed_at = stream.complete_response(self)
        elif kind == "http.response.trailers" and self._trailers_expected:
            more_trailers = message.get("more_trailers", False)
            if self._log_started is not None and not more_trailers:
                self._log_access(None)
            stream.send_trailers(message.get("headers", ()), more_trailers)
            if not more_trailers:
                self._complete()
        else:
            raise RuntimeError(f"Unexpected ASGI message {kind!r} during the response.")

    def _complete(self) -> None:
        self.response_complete = True
        if self._body_waiter is not None:
            self._wake()
        self._completed_at = self._stream.complete_response(self)

    def _abort_reason(self, failure: BaseException | None) -> str:
        """Why the response was never completed, for the access log."""
        if self.disconnected:
            return "CLIENT_GONE"
        if isinstance(failure, asyncio.CancelledError):
            return "CANCELLED"
        return "APP_ERROR"  # it raised, or returned, with its response started and unfinished

    def _log_access(self, aborted: str | None) -> None:
        """One line for this exchange, in the configured format (kestrelpy/access_log.py). Written just
        before the response's last bytes go out, so a client that has read a response finds its line."""
        if not access_logger.isEnabledFor(logging.INFO):
            return
        state = self._stream.state
        started = self._log_started
        assert started is not None
        self._log_started = None  # one line per request
        # A HEAD response has no body on the wire, whatever the app passed to `send`.
        sent = 0 if self.scope["method"] == "HEAD" else self._bytes_sent
        state.access_format.write(
            AccessEntry(
                self.scope,
                self.status,
                sent,
                state.clock() - started,
                aborted=aborted,
                response_headers=self._response_headers,
            )
        )


class ScopeCountedCycle(RequestCycle):
    """A request whose scheme or HTTP version is not its stream's (HTTP/1.0 on an HTTP/1.1 connection,
    a scheme rewritten from forwarded fields): the metrics find its series by its scope, a lookup the
    other requests are spared (Metrics.request_table)."""

    __slots__ = ()
    counted_by_scope = True


def forwarded_cycle(stream: Stream, scope: Scope, expect_continue: bool, trusted: TrustedPeers) -> RequestCycle:
    """The cycle of a request from a trusted peer that carries a forwarded field, its scope rewritten
    (kestrelpy/proxy.py) before the app sees it."""
    scheme = scope["scheme"]
    failed = rewrite_or_fail(scope, trusted)
    if failed is not None:
        return _FailedCycle(stream, scope, expect_continue, failed)
    # (most proxied requests keep their connection's scheme: only one whose proto changed it is counted
    # by its scope, at the cost of a lookup)
    cycle_class = RequestCycle if scope["scheme"] == scheme else ScopeCountedCycle
    return cycle_class(stream, scope, expect_continue)


def rewrite_or_fail(scope: Scope, trusted: TrustedPeers) -> RaisingApp | None:
    """Rewrite the scope from its forwarded fields; if that raises, the RaisingApp to run instead of the
    app: the request is answered as an app that raises is (logged, then a 500), and the app never sees
    the scope unrewritten."""
    try:
        rewrite_scope(scope, trusted)
    except Exception as exc:
        return RaisingApp(exc)
    return None


class RaisingApp:
    """An app that raises `error`: what runs instead of the app for a request that cannot be handed to
    it, so the failure takes the app error's path (the log, the 500, the access log, the metrics)."""

    __slots__ = ("error",)

    def __init__(self, error: Exception) -> None:
        self.error = error

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        raise self.error


class _FailedCycle(ScopeCountedCycle):
    """A request whose app is replaced by a RaisingApp (see forwarded_cycle)."""

    __slots__ = ("_app",)

    def __init__(self, stream: Stream, scope: Scope, expect_continue: bool, app: RaisingApp) -> None:
        super().__init__(stream, scope, expect_continue)
        self._app = app

    async def run(self, app: ASGIApp) -> None:
        await super().run(self._app)
