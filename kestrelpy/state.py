"""ServerState: what every connection of one server shares, built once from the Config."""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from kestrelpy.access_log import compile_format
from kestrelpy.asgi import ASGIApp
from kestrelpy.config import Config
from kestrelpy.metrics.recorder import Metrics
from kestrelpy.protocols.timeouts import DataRates, timeout_durations
from kestrelpy.protocols.writer import encode_headers, status_line
from kestrelpy.proxy import PeerVerdicts, parse_trusted

if TYPE_CHECKING:
    from kestrelpy.protocols.http2 import Http2Connection
    from kestrelpy.protocols.http11 import HttpConnection
    from kestrelpy.protocols.rejection import RequestRejection
    from kestrelpy.protocols.websocket import MissingLibrary, WebSocketConnection, WebSocketUpgrade

SERVER_NAME = b"kestrelpy"


class ServerState:
    """Shared, mostly read-only state: the app, precomputed header bytes, live connections, the clock."""

    __slots__ = (
        "_all_closed",
        "access_format",
        "access_log",
        "app",
        "base_context",
        "clock",
        "connections",
        "data_rates",
        "date_header",
        "date_line",
        "draining",
        "extra_header_lines",
        "forwarded_verdicts",
        "http_scope",
        "known_hosts",
        "lifespan_state",
        "linger_on_shutdown",
        "loop",
        "max_body_size",
        "max_connections",
        "max_head_size",
        "max_header_count",
        "max_headers_size",
        "max_line_size",
        "max_requests_per_connection",
        "metrics",
        "requests_served",
        "response_starts",
        "root_path",
        "root_path_bytes",
        "server_line",
        "shutting_down",
        "small_head",
        "timeout_durations",
        "upgrade",
        "upgraded",
    )

    def __init__(
        self,
        config: Config,
        app: ASGIApp,
        loop: asyncio.AbstractEventLoop,
        *,
        access_log: bool,
        clock: Callable[[], float] = time.monotonic,
        upgrade: WebSocketUpgrade | MissingLibrary | None = None,
    ) -> None:
        self.app = app
        self.base_context = contextvars.copy_context()  # each request runs in a copy of this
        self.loop = loop
        self.clock = clock
        self.access_log = access_log
        self.access_format = compile_format(config.access_log_format)  # validated by Config already
        self.connections: set[HttpConnection | Http2Connection | WebSocketConnection] = set()
        self.lifespan_state: dict[str, Any] = {}
        self.known_hosts: set[bytes] = set()  # Host values already found valid (see HttpConnection)
        # Which peers may set forwarded headers, asked once per connection (None: --no-proxy-headers).
        self.forwarded_verdicts = (
            PeerVerdicts(parse_trusted(config.forwarded_allow_ips)) if config.proxy_headers else None
        )
        self.root_path = config.root_path
        self.root_path_bytes = config.root_path.encode("utf-8")
        # What an HTTP/1.1 request's scope starts from (a copy, the rest set per request; see
        # HttpConnection._scope): every key in the order the scope lists them.
        self.http_scope: dict[str, Any] = dict.fromkeys(
            (
                "type", "asgi", "http_version", "server", "client", "scheme", "method", "root_path", "path",
                "raw_path", "query_string", "headers", "state",
            )
        )  # fmt: skip
        self.http_scope.update(type="http", http_version="1.1", root_path=config.root_path)
        limits = config.limits
        self.max_line_size = limits.max_request_line_size
        self.max_headers_size = limits.max_request_headers_size
        self.max_header_count = limits.max_request_header_count
        # An incomplete head larger than this cannot be within both the line and the header limits.
        self.max_head_size = limits.max_request_line_size + limits.max_request_headers_size
        # A head no larger than this is within every head limit (a header field takes at least 3 bytes),
        # so the exact count is skipped for it: the common case costs one comparison.
        self.small_head = min(
            limits.max_request_line_size, limits.max_request_headers_size, 3 * limits.max_request_header_count
        )
        self.max_body_size = limits.max_request_body_size  # 0 = unlimited
        self.max_requests_per_connection = limits.max_requests_per_connection  # 0 = unlimited
        self.max_connections = limits.max_concurrent_connections  # 0 = unlimited
        # The minimum data rates (bytes/s, 0 = off) and what each TimeoutControl waits for how long.
        self.data_rates = DataRates(
            limits.min_request_body_rate,
            limits.min_request_body_grace,
            limits.min_response_rate,
            limits.min_response_grace,
        )
        self.timeout_durations = timeout_durations(
            limits.keep_alive_timeout, limits.request_headers_timeout, config.ws_ping_timeout
        )
        # What takes `Upgrade: websocket` requests, built by the server for --ws (None: they are plain
        # HTTP), and how many connections it holds: those stop counting towards max_connections, as
        # Kestrel's upgraded connections do.
        self.upgrade = upgrade
        self.upgraded = 0
        self.server_line = b"server: %s\r\n" % SERVER_NAME if config.server_header else b""
        self.date_header = config.date_header
        self.date_line = b""  # kept by the heartbeat (set_date_line); empty with --no-date-header
        # response_start() per status, until the Date changes (the HTTP/1.1 output looks a status up itself)
        self.response_starts: dict[int, bytes] = {}
        self.extra_header_lines = encode_headers(
            (name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in config.headers
        )
        self.shutting_down = False
        self.linger_on_shutdown = False  # see HttpConnection.shutdown()
        self.draining = False  # inside --shutdown-delay: still accepting, every response closes
        self.requests_served = 0  # read by a supervised worker for --limit-max-requests
        # The counters behind --metrics-bind / --metrics-otel (kestrelpy/metrics/recorder.py says who calls
        # what); None when metrics are off, so each hook costs the protocols one attribute test.
        handshake_timeout = config.tls.tls_handshake_timeout
        self.metrics: Metrics | None = Metrics(clock, handshake_timeout) if config.metrics_bind else None
        if config.metrics_otel:
            from kestrelpy.metrics.otel import OtelMetrics

            self.metrics = OtelMetrics(clock, handshake_timeout, upgraded=lambda: self.upgraded)
        self._all_closed: asyncio.Event | None = None

    def set_date_line(self, line: bytes) -> None:
        """The Date header line for this second (the heartbeat's); nothing when the header is off."""
        if self.date_header:
            self.date_line = line
            self.response_starts.clear()

    def response_start(self, status: int, own_server: bool = False, own_date: bool = False) -> bytes:
        """The lines every response head begins with: the status line, Server and Date (unless the app
        sends its own), then the --header lines. The usual form is built once per status and second."""
        if own_server or own_date:
            return b"".join(
                (
                    status_line(status),
                    b"" if own_server else self.server_line,
                    b"" if own_date else self.date_line,
                    self.extra_header_lines,
                )
            )
        start = self.response_starts.get(status)
        if start is None:
            start = status_line(status) + self.server_line + self.date_line + self.extra_header_lines
            if len(self.response_starts) < 64:
                self.response_starts[status] = start
        return start

    def connection_closed(
        self,
        conn: HttpConnection | Http2Connection | WebSocketConnection,
        why: RequestRejection | str | None = None,
    ) -> None:
        """Every protocol calls this once its connection is gone; `why` is what ended it, when that was
        a rejection or an error (for the metrics' error.type)."""
        self.connections.discard(conn)
        if self.metrics is not None:
            self.metrics.connection_closed(conn, why)
        if not self.connections and self._all_closed is not None:
            self._all_closed.set()

    async def wait_all_closed(self) -> None:
        if self.connections:
            self._all_closed = asyncio.Event()
            await self._all_closed.wait()
