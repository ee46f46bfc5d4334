"""WebSocket (RFC 6455) over the `websockets` library's sans-I/O protocol, speaking the ASGI websocket spec.

The only way in is the HTTP/1.1 connection's upgrade hand-off: when a request head asks for
`Upgrade: websocket` with `Connection: upgrade` on a GET, `WebSocketUpgrade` checks the handshake, builds
the scope and hands the transport (`transport.set_protocol`) to a `WebSocketConnection`, which runs the
app. From then on the HTTP connection is out of the picture: nothing after the request head is parsed
as HTTP again.

A connection moves through these states (the app's messages in quotes):

    HANDSHAKE --"websocket.accept"--> OPEN --"websocket.close" / peer's close / error--> CLOSING --> gone
        |--"websocket.close"----------------------> 403, closed
        |--"websocket.http.response.start/body"---> the app's response, closed
        |--app error or return--------------------> 500, closed

`websockets` frames, masks (in C), enforces the message size limit (1009), answers pings and runs the
close handshake; this module adds the ASGI side, UTF-8 checks of text messages (1007), flow control
both ways, keep-alive pings and the close timeout (both driven by the server's heartbeat, not a timer
per connection), and graceful shutdown (1012).

Upgraded connections are counted apart (`ServerState.upgraded`): like Kestrel's upgraded connections
they stop counting towards --limit-concurrency and count towards --limit-upgraded-connections instead.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import importlib.util
import logging
import os
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kestrelpy.access_log import AccessEntry
from kestrelpy.asgi import ASGI_VERSION, ASGIApp, Message, Scope, decode_path
from kestrelpy.errors import ConfigError
from kestrelpy.protocols.cycle import ClientDisconnected, rewrite_or_fail
from kestrelpy.protocols.flow import LOST_TRANSPORT
from kestrelpy.protocols.http11 import HttpConnection, start_task
from kestrelpy.protocols.http11_output import closing_response
from kestrelpy.protocols.rejection import RequestRejection
from kestrelpy.protocols.timeouts import TimeoutReason
from kestrelpy.protocols.writer import HeaderError, header_line

if TYPE_CHECKING:
    from websockets.extensions.permessage_deflate import ServerPerMessageDeflateFactory
    from websockets.frames import Frame, Opcode
    from websockets.http11 import Request
    from websockets.protocol import State
    from websockets.server import ServerProtocol

    from kestrelpy.config import Config
    from kestrelpy.protocols.flow import FlowControl
    from kestrelpy.proxy import TrustedPeers
    from kestrelpy.state import ServerState

logger = logging.getLogger("kestrelpy.error")

WEBSOCKET_SPEC_VERSION = "2.4"
# Received messages the app has not taken yet, above which reading pauses (either bound is enough).
QUEUE_HIGH_MESSAGES = 16
QUEUE_HIGH_BYTES = 1024 * 1024

_HANDSHAKE_HEADERS = frozenset(
    (
        b"host",
        b"upgrade",
        b"connection",
        b"sec-websocket-key",
        b"sec-websocket-version",
        b"sec-websocket-extensions",
        b"sec-websocket-protocol",
    )
)


# -- the pure part: is this an upgrade we take, and is its handshake valid ---------------------------


def asks_for_websocket(headers: list[tuple[bytes, bytes]]) -> bool:
    """True when an `Upgrade` field names websocket (the caller has seen `Connection: upgrade`)."""
    for name, value in headers:
        if name == b"upgrade" and b"websocket" in (token.strip().lower() for token in value.split(b",")):
            return True
    return False


@dataclass(frozen=True, slots=True)
class HandshakeError:
    """Why a WebSocket handshake is refused, and what to answer (RFC 6455 section 4.2.2 and 4.4)."""

    status: int
    headers: tuple[tuple[bytes, bytes], ...]
    message: str


_VERSION_13 = ((b"sec-websocket-version", b"13"), (b"upgrade", b"websocket"))


def handshake_error(headers: list[tuple[bytes, bytes]]) -> HandshakeError | None:
    """The answer to an invalid opening handshake, or None when it is valid.

    RFC 6455 section 4.4: a version other than 13 gets an error naming the version we speak in
    `Sec-WebSocket-Version` (426 Upgrade Required, which RFC 9110 section 15.5.22 pairs with `Upgrade`).
    Section 4.2.1: the key must be one base64 value that decodes to 16 bytes, else 400.
    """
    versions = [value.strip() for name, value in headers if name == b"sec-websocket-version"]
    if versions != [b"13"]:
        return HandshakeError(426, _VERSION_13, "Unsupported WebSocket version: this server speaks 13.")
    keys = [value.strip() for name, value in headers if name == b"sec-websocket-key"]
    if len(keys) != 1:
        return HandshakeError(400, (), "A WebSocket handshake needs exactly one Sec-WebSocket-Key.")
    try:
        raw_key = base64.b64decode(keys[0], validate=True)
    except (binascii.Error, ValueError):
        raw_key = b""
    if len(raw_key) != 16:
        return HandshakeError(400, (), "Invalid Sec-WebSocket-Key.")
    return None


def offered_subprotocols(headers: list[tuple[bytes, bytes]]) -> list[str]:
    """The subprotocols a client lists in `Sec-WebSocket-Protocol`, in order."""
    offered: list[str] = []
    for name, value in headers:
        if name == b"sec-websocket-protocol":
            offered.extend(token for token in (t.strip() for t in value.decode("latin-1").split(",")) if token)
    return offered


# -- settings and the hand-off ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WebSocketSettings:
    max_size: int  # bytes in one message; 0 = unlimited
    ping_interval: float  # seconds between keep-alive pings; 0 = none
    ping_timeout: float  # seconds a ping may go unanswered; 0 = forever
    per_message_deflate: bool
    max_upgraded: int  # open WebSockets allowed at once; 0 = unlimited


_loaded = False


def _load_library() -> None:
    """Import the library's pieces into this module's namespace, on the first upgrade (or at start for
    --ws websockets): a server that never sees a WebSocket does not pay its ~3 MiB and ~20 ms."""
    global _loaded, ServerPerMessageDeflateFactory, Frame, Opcode, Request, State, ServerProtocol
    if _loaded:
        return
    from websockets.extensions.permessage_deflate import ServerPerMessageDeflateFactory
    from websockets.frames import Frame, Opcode
    from websockets.http11 import Request
    from websockets.protocol import State
    from websockets.server import ServerProtocol

    _loaded = True


def upgrade_handler(config: Config) -> WebSocketUpgrade | MissingLibrary | None:
    """What answers `Upgrade: websocket` for `--ws`: None when WebSocket is switched off."""
    if config.ws == "none":
        return None
    installed = importlib.util.find_spec("websockets") is not None
    if config.ws == "websockets":
        try:
            if not installed:
                raise ImportError
            _load_library()
        except ImportError:
            raise ConfigError(
                "--ws websockets was asked for, but websockets is not installed (pip install 'kestrelpy[websockets]')"
            ) from None
    elif not installed:
        return MissingLibrary()
    return WebSocketUpgrade(
        WebSocketSettings(
            max_size=config.ws_max_size,
            ping_interval=config.ws_ping_interval,
            ping_timeout=config.ws_ping_timeout,
            per_message_deflate=config.ws_per_message_deflate,
            max_upgraded=config.limits.max_upgraded_connections,
        )
    )


class MissingLibrary:
    """`--ws auto` without the library: Upgrade requests are plain HTTP, and that is said once."""

    __slots__ = ("warned",)

    def __init__(self) -> None:
        self.warned = False

    def __call__(
        self,
        conn: HttpConnection,
        raw_path: bytes,
        query: bytes,
        headers: list[tuple[bytes, bytes]],
        forwarded: TrustedPeers | None,
    ) -> bool:
        if not self.warned and asks_for_websocket(headers):
            self.warned = True
            logger.warning(
                "A WebSocket upgrade request was answered as plain HTTP: the websockets library is not "
                "installed (pip install 'kestrelpy[websockets]')."
            )
        return False


class WebSocketUpgrade:
    """The hand-off: called by the HTTP connection for a GET head with `Connection: upgrade`.

    Returns False to let the request go on as plain HTTP (an upgrade to something else); True once
    the request has been taken: answered with an error, or handed to a WebSocketConnection.
    Bytes that arrived in the same read after the head are not carried over: a client sends nothing
    before it has read the 101 (RFC 6455 section 4.1), and later reads go to the new protocol.
    """

    __slots__ = ("settings",)

    def __init__(self, settings: WebSocketSettings) -> None:
        self.settings = settings

    def __call__(
        self,
        conn: HttpConnection,
        raw_path: bytes,
        query: bytes,
        headers: list[tuple[bytes, bytes]],
        forwarded: TrustedPeers | None,
    ) -> bool:
        """`forwarded`: the verdict on the peer when the head carries a forwarded field, else None."""
        if not asks_for_websocket(headers):
            return False
        state = conn.state
        if 0 < self.settings.max_upgraded <= state.upgraded:
            logger.debug("Refused a WebSocket from %s: over --limit-upgraded-connections", conn.client)
            conn.on_reject(RequestRejection.TOO_MANY_CONNECTIONS)  # 503 with `connection: close`
            return True
        conn.ignore_input = True  # nothing after this head is read as HTTP
        conn.flow.pause_reading()  # until the app accepts
        problem = handshake_error(headers)
        negotiated = None if problem is not None else self._negotiate(headers)
        if negotiated is None:
            problem = problem or HandshakeError(400, (), "Invalid WebSocket handshake.")
            conn.write(closing_response(state, problem.status, problem.headers, problem.message.encode()))
            conn.close()
            return True
        protocol, handshake = negotiated
        scope = _scope(conn, raw_path, query, headers)
        app = state.app
        if forwarded is not None:  # (a proxy's https makes it wss)
            app = rewrite_or_fail(scope, forwarded) or app
        ws = WebSocketConnection(conn, scope, protocol, handshake, self.settings)
        conn.transport.set_protocol(ws)
        conn.transport = LOST_TRANSPORT  # the HTTP connection is done with it: the WebSocket owns it now
        state.connections.discard(conn)
        state.connections.add(ws)
        state.upgraded += 1
        if state.metrics is not None:
            state.metrics.connection_upgraded(conn, ws)
        ws.start(app)
        return True

    def _negotiate(self, headers: list[tuple[bytes, bytes]]) -> tuple[ServerProtocol, list[tuple[bytes, bytes]]] | None:
        """A sans-I/O protocol that has read the handshake (only the fields it needs) and the handshake
        fields of its 101, or None when the library refuses it (a malformed Sec-WebSocket-Extensions)."""
        _load_library()
        settings = self.settings
        extensions = []
        if settings.per_message_deflate:
            # uvicorn's choice: 4 KiB windows and memLevel 5 keep a compressor near 64 KiB per connection.
            extensions.append(
                ServerPerMessageDeflateFactory(
                    server_max_window_bits=12, client_max_window_bits=12, compress_settings={"memLevel": 5}
                )
            )
        protocol = ServerProtocol(extensions=extensions, max_size=settings.max_size or None)
        head = b"".join(b"%s: %s\r\n" % (name, value) for name, value in headers if name in _HANDSHAKE_HEADERS)
        protocol.receive_data(b"GET / HTTP/1.1\r\n" + head + b"\r\n")
        events = protocol.events_received()
        if len(events) != 1 or not isinstance(events[0], Request):
            return None
        response = protocol.accept(events[0])
        if response.status_code != 101:
            return None
        protocol.send_response(response)  # OPEN from here; its own rendering of the 101 is not used
        protocol.data_to_send()
        handshake = [
            (name.lower().encode("latin-1"), value.encode("latin-1"))
            for name, value in response.headers.raw_items()
            if name.lower() != "date"
        ]
        return protocol, handshake


def _scope(conn: HttpConnection, raw_path: bytes, query: bytes, headers: list[tuple[bytes, bytes]]) -> Scope:
    state = conn.state
    return {
        "type": "websocket",
        "asgi": {"version": ASGI_VERSION, "spec_version": WEBSOCKET_SPEC_VERSION},
        "http_version": "1.1",
        "scheme": "wss" if conn.scheme == "https" else "ws",
        "server": conn.server,
        "client": conn.client,
        "root_path": state.root_path,
        "path": state.root_path + decode_path(raw_path),
        "raw_path": state.root_path_bytes + raw_path,
        "query_string": query,
        "headers": headers,
        "subprotocols": offered_subprotocols(headers),
        "state": state.lifespan_state.copy(),
        "extensions": _extensions(conn),
    }


def _extensions(conn: HttpConnection) -> dict[str, Any]:
    extensions: dict[str, Any] = {"websocket.http.response": {}}
    tls = conn.tls_scope_extension()
    if tls is not None:
        extensions["tls"] = tls
    return extensions


# -- the connection ---------------------------------------------------------------------------------


class WebSocketConnection(asyncio.Protocol):
    """One upgraded connection and its ASGI cycle; the transport's protocol after the hand-off."""

    __slots__ = (
        "_accepted_at",
        "_app_done",
        "_denial",
        "_final",
        "_fragments",
        "_fragments_text",
        "_handshake",
        "_last_ping",
        "_ping_payload",
        "_queue",
        "_queued_bytes",
        "_released",
        "_waiter",
        "accepted",
        "closing",
        "disconnected",
        "flow",
        "protocol",
        "responded",
        "scope",
        "settings",
        "state",
        "task",
        "timeouts",
        "transport",
    )

    def __init__(
        self,
        conn: HttpConnection,
        scope: Scope,
        protocol: ServerProtocol,
        handshake: list[tuple[bytes, bytes]],
        settings: WebSocketSettings,
    ) -> None:
        self.state: ServerState = conn.state
        self.transport: asyncio.Transport = conn.transport
        self.flow: FlowControl = conn.flow  # reading is paused: it resumes once the app accepts
        self.timeouts = conn.timeouts  # taken over: used for the close handshake and ping timeouts
        self.timeouts.cancel_timeout()
        self.scope = scope
        self.protocol = protocol
        self._handshake = handshake  # Upgrade, Connection, Sec-WebSocket-Accept and -Extensions for the 101
        self.settings = settings
        self.closing = conn.closing
        self.task: asyncio.Task[None] | None = None
        self.accepted = False  # the 101 went out
        self.responded = False  # the handshake was answered (101, or an HTTP response that ends it)
        self.disconnected = False  # the transport is gone
        self._released = False
        self._app_done = False
        self._denial: tuple[int, Any, bytearray] | None = None  # a denial response being gathered
        self._queue: deque[Message] = deque([{"type": "websocket.connect"}])
        self._queued_bytes = 0
        self._final: Message | None = None  # the websocket.disconnect once it is known
        self._waiter: asyncio.Future[None] | None = None
        self._fragments: list[Any] = []  # bytes-like payloads of the message being received
        self._fragments_text = False
        self._last_ping = 0.0
        self._ping_payload: bytes | None = None
        self._accepted_at = 0.0  # when the 101 went out (the server's clock)

    def start(self, app: ASGIApp) -> None:
        state = self.state
        task = start_task(self.run(app), state.loop, state.base_context.copy())
        if not self._app_done:
            self.task = task

    # -- transport events ------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        protocol = self.protocol
        protocol.receive_data(data)
        for event in protocol.events_received():
            self._on_frame(event)  # type: ignore[arg-type]  # after the handshake, only frames
        self._flush()
        if protocol.parser_exc is not None and self._final is None:
            # Bad framing, a message over --ws-max-size (1009) or bad UTF-8 in a close reason: the
            # library has sent its close frame and the end of the stream.
            sent = protocol.close_sent
            self._push_final(sent.code if sent is not None else 1006, sent.reason if sent is not None else "")

    def eof_received(self) -> bool | None:
        return None  # the transport closes; connection_lost tells the app

    def connection_lost(self, exc: Exception | None) -> None:
        self.disconnected = True
        if self.accepted:  # the session's line, once its length is known
            self._log_access(101, duration=self.state.clock() - self._accepted_at)
        self.flow.connection_lost()
        self.transport = LOST_TRANSPORT  # (see flow.LostTransport)
        self._push_final(1006, "")  # no effect when a close frame already said how it ended
        if self._app_done:
            self._release()

    def pause_writing(self) -> None:
        self.flow.pause_writing()

    def resume_writing(self) -> None:
        self.flow.resume_writing()

    # -- frames in ---------------------------------------------------------------------------------

    def _on_frame(self, frame: Frame) -> None:
        opcode = frame.opcode
        if opcode is Opcode.TEXT or opcode is Opcode.BINARY:
            self._fragments_text = opcode is Opcode.TEXT
            self._fragments = [frame.data]
        elif opcode is Opcode.CONT:
            self._fragments.append(frame.data)
        elif opcode is Opcode.PONG:
            if self._ping_payload is not None and frame.data == self._ping_payload:
                self._ping_payload = None
                if self.timeouts.reason is TimeoutReason.PING:
                    self.timeouts.cancel_timeout()
            return
        elif opcode is Opcode.CLOSE:
            close = self.protocol.close_rcvd
            self._push_final(close.code if close is not None else 1005, close.reason if close is not None else "")
            return
        else:  # PING: the library has queued the pong
            return
        if frame.fin:
            data = b"".join(self._fragments) if len(self._fragments) > 1 else self._fragments[0]
            self._fragments = []
            self._on_message(data, self._fragments_text)

    def _on_message(self, data: bytes, text: bool) -> None:
        if self._final is not None or self.protocol.close_sent is not None:
            return  # the app is past the close: the rest is dropped
        if text:
            try:
                message: Message = {"type": "websocket.receive", "text": data.decode("utf-8")}
            except UnicodeDecodeError:
                self.protocol.fail(1007, "invalid UTF-8 in a text message")
                self._push_final(1007, "")
                return
        else:
            message = {"type": "websocket.receive", "bytes": data}
        self._queue.append(message)
        self._queued_bytes += _size(message)
        if len(self._queue) >= QUEUE_HIGH_MESSAGES or self._queued_bytes >= QUEUE_HIGH_BYTES:
            self.flow.pause_reading()  # the app is behind: let TCP push back on the client
        self._wake()

    def _push_final(self, code: int, reason: str) -> None:
        """The disconnect the app will see after everything already queued; the first one counts."""
        if self._final is None:
            self._final = {"type": "websocket.disconnect", "code": code, "reason": reason}
            self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    # -- bytes out ---------------------------------------------------------------------------------

    def _flush(self) -> None:
        """Write what the library produced; its end-of-stream marker means the server closes now."""
        transport = self.transport
        for data in self.protocol.data_to_send():
            if data:
                if not transport.is_closing():
                    transport.write(data)
            else:
                transport.close()

    def _send_close(self, code: int, reason: str = "") -> None:
        if self.protocol.state is State.OPEN:
            self.protocol.send_close(code, reason)
            self.timeouts.set_timeout(TimeoutReason.CLOSE_HANDSHAKE, self.state.clock())
            self.flow.resume_reading()  # the peer's close frame has to be read
            self._flush()

    # -- the ASGI callables ------------------------------------------------------------------------

    async def run(self, app: ASGIApp) -> None:
        try:
            await app(self.scope, self.receive, self.send)
        except BaseException as exc:
            self._on_app_error(exc)
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
        else:
            if not self.responded:
                logger.error("ASGI app returned without accepting or refusing the WebSocket.")
                self._fail()
            elif self.accepted:
                self._send_close(1000)  # the app is done with it: a clean close (hypercorn does the same)
        finally:
            self._app_done = True  # (an app started eagerly may end before `task` is even assigned)
            self.task = None
            if self.disconnected:
                self._release()

    def _on_app_error(self, exc: BaseException) -> None:
        if isinstance(exc, asyncio.CancelledError):
            self.transport.abort()
        elif self.disconnected or isinstance(exc, ClientDisconnected):
            logger.debug("ASGI app ended after the WebSocket closed: %r", exc)
        else:
            logger.error("Exception in ASGI application", exc_info=exc)
            self._fail()

    def _fail(self) -> None:
        """500 while the handshake is unanswered, close 1011 once the WebSocket is open."""
        if not self.responded:
            self._respond(500, [], b"Internal Server Error")
        elif self.accepted:
            self._send_close(1011)

    async def receive(self) -> Message:
        while not self._queue:
            final = self._final
            if final is not None:
                return final
            self._waiter = self.state.loop.create_future()
            await self._waiter
        message = self._queue.popleft()
        if message["type"] == "websocket.receive":
            self._queued_bytes -= _size(message)
            caught_up = len(self._queue) < QUEUE_HIGH_MESSAGES // 2 and self._queued_bytes < QUEUE_HIGH_BYTES // 2
            if caught_up and self.flow.read_paused and self.accepted and not self.disconnected:
                self.flow.resume_reading()
        return message

    async def send(self, message: Message) -> None:
        if self.disconnected:
            raise ClientDisconnected("the WebSocket is closed")
        flow = self.flow
        if flow.write_paused:
            await flow.drain()
            if self.disconnected:
                raise ClientDisconnected("the WebSocket is closed")
        kind = message["type"]
        if self.accepted:
            if self.protocol.state is not State.OPEN:
                raise ClientDisconnected("the WebSocket is closed")
            if kind == "websocket.send":
                self._send_data(message)
            elif kind == "websocket.close":
                self._send_close(message.get("code") or 1000, message.get("reason") or "")
            else:
                raise RuntimeError(f"Expected 'websocket.send' or 'websocket.close', got {kind!r}.")
        elif self.responded:
            raise ClientDisconnected("the WebSocket handshake was refused")
        elif self._denial is not None:
            if kind != "websocket.http.response.body":
                raise RuntimeError(f"Expected 'websocket.http.response.body', got {kind!r}.")
            self._denial[2].extend(message.get("body", b""))
            if not message.get("more_body", False):
                status, headers, body = self._denial
                self._respond(status, headers, bytes(body))
        elif kind == "websocket.accept":
            self._accept(message.get("subprotocol"), message.get("headers") or ())
        elif kind == "websocket.close":
            self._respond(403, [], b"")  # the ASGI spec's answer to a WebSocket refused before accept
        elif kind == "websocket.http.response.start":
            status = int(message["status"])
            if not 100 <= status <= 599:
                raise RuntimeError(f"Invalid HTTP status {status} in a WebSocket denial response.")
            self._denial = (status, list(message.get("headers") or ()), bytearray())
        else:
            raise RuntimeError(
                f"Expected 'websocket.accept', 'websocket.close' or 'websocket.http.response.start', got {kind!r}."
            )

    def _send_data(self, message: Message) -> None:
        data = message.get("bytes")
        if data is not None:
            self.protocol.send_binary(data)
        else:
            text = message.get("text")
            if text is None:
                raise RuntimeError("A 'websocket.send' message needs 'bytes' or 'text'.")
            self.protocol.send_text(text.encode("utf-8"))
        self._flush()

    def _accept(self, subprotocol: str | None, extra: Any) -> None:
        state = self.state
        lines = [
            state.response_start(101),
        ]
        for name, value in self._handshake:
            lines.append(header_line(name, value)[1])
        if subprotocol:
            lines.append(header_line(b"sec-websocket-protocol", subprotocol.encode("latin-1"))[1])
        for name, value in extra:
            lowered, line = header_line(name, value)
            if lowered == b"sec-websocket-protocol":
                raise HeaderError("the subprotocol goes in 'subprotocol', not in the accept headers")
            lines.append(line)
        lines.append(b"\r\n")
        self.responded = self.accepted = True
        self._accepted_at = state.clock()
        if not self.transport.is_closing():
            self.transport.write(b"".join(lines))
        self._last_ping = state.clock()
        if self.closing:  # shut down while the app was deciding
            self._send_close(1012)
        else:
            self.flow.resume_reading()

    def _respond(self, status: int, headers: Any, body: bytes) -> None:
        """An HTTP answer instead of the WebSocket: the connection ends with it."""
        self.responded = True
        self._log_access(status, len(body))
        if not self.transport.is_closing():
            self.transport.write(closing_response(self.state, status, headers, body))
            self.transport.close()
        self._push_final(1006, "")

    def _log_access(self, status: int, sent: int = 0, duration: float = 0.0) -> None:
        """The handshake's answer, in the configured access log format: an HTTP answer when it is sent, a
        101 when the session ends, with the session's length (from the 101 to the close) as its duration."""
        if self.state.access_log:
            self.state.access_format.write(AccessEntry(self.scope, status, sent, duration, websocket=True))

    # -- the server's side: heartbeat, shutdown ----------------------------------------------------

    def on_tick(self, now: float) -> None:
        """Heartbeat: keep-alive pings and their timeout; cut a close handshake the peer never finishes."""
        if self.disconnected or not self.accepted:
            return
        timeouts = self.timeouts
        if timeouts.reason is TimeoutReason.CLOSE_HANDSHAKE:
            if timeouts.expired(now, at_limit=True) is not None:
                self.transport.abort()
            return
        settings = self.settings
        if not settings.ping_interval:
            return
        if self._ping_payload is None:
            if now - self._last_ping >= settings.ping_interval:
                self._ping_payload = os.urandom(4)
                self._last_ping = now
                if settings.ping_timeout:
                    timeouts.set_timeout(TimeoutReason.PING, now)
                self.protocol.send_ping(self._ping_payload)
                self._flush()
        elif self.flow.read_paused:
            # The app is behind and the pong may be waiting unread: only time spent reading counts.
            if timeouts.reason is TimeoutReason.PING:
                timeouts.set_timeout(TimeoutReason.PING, now)
        elif timeouts.expired(now, at_limit=True) is TimeoutReason.PING:
            logger.debug("WebSocket keep-alive ping to %s timed out", self.scope.get("client"))
            self.protocol.fail(1011, "keepalive ping timeout")
            self._push_final(1011, "keepalive ping timeout")
            self._flush()
            self.transport.close()

    def shutdown(self) -> None:
        """Graceful shutdown: an open WebSocket is closed with 1012 (service restart); the app is told
        through websocket.disconnect once the peer answers, and may finish. A handshake still waiting
        for the app is closed the same way right after an accept."""
        self.closing = True
        if self.accepted and not self.disconnected:
            self._send_close(1012)

    def cancel_app(self) -> None:
        if self.task is not None and not self._app_done:
            self.task.cancel()

    def abort(self) -> None:
        self.transport.abort()

    def _release(self) -> None:
        """Leave the server's books once both the transport and the app are done."""
        if not self._released:
            self._released = True
            self.state.upgraded -= 1
            self.state.connection_closed(self)


def _size(message: Message) -> int:
    """What a received message counts towards QUEUE_HIGH_BYTES (characters for text: close enough)."""
    payload = message.get("bytes")
    return len(payload if payload is not None else message["text"])
