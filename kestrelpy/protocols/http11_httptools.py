"""HTTP/1.1 requests read with httptools (llhttp): its callbacks become HttpConnection's hooks."""

from __future__ import annotations

import httptools

from kestrelpy.protocols.http11 import HTTP2_PREFACE, HTTP_11, HttpConnection
from kestrelpy.protocols.rejection import RequestRejection
from kestrelpy.protocols.screen import CHUNK_LINE_MAX
from kestrelpy.state import ServerState

# What llhttp says when a chunked body's trailer section carries Content-Length (at its colon) or
# Transfer-Encoding (at its value): fields forbidden in trailers, refused as the shared connection
# refuses the others (RFC 9110 section 6.5.1), and as the h11 path refuses these (screen.ChunkScreen).
_FRAMING_IN_TRAILERS = (
    "Content-Length can't be present with Transfer-Encoding",
    "Invalid `Transfer-Encoding` header value",
    "Empty Transfer-Encoding",
)


def _rejection_for(exc: httptools.HttpParserError, in_trailers: bool) -> RequestRejection:
    message = str(exc)
    # Only llhttp's "Invalid HTTP version"; "Expected CRLF after version" is plain malformed input.
    if message.lower().startswith("invalid http version"):
        return RequestRejection.UNSUPPORTED_HTTP_VERSION
    if in_trailers and message in _FRAMING_IN_TRAILERS:
        return RequestRejection.FORBIDDEN_TRAILER
    return RequestRejection.MALFORMED_REQUEST


_VERSIONS = {"1.0": b"1.0"}  # (and 1.1: HTTP_11)


_LENIENCIES = hasattr(httptools.HttpRequestParser, "set_dangerous_leniencies")  # not in every release


def _new_parser(conn: HttptoolsConnection) -> httptools.HttpRequestParser:
    parser = httptools.HttpRequestParser(conn)
    # llhttp refuses versions other than 0.9, 1.0, 1.1 and 2.0 outright; let it report them, so the
    # shared connection answers them as h11's path does (a later 1.x as 1.1, other majors with 505).
    if _LENIENCIES:
        parser.set_dangerous_leniencies(lenient_version=True)
    return parser


# What a closed connection keeps in place of its parser (see HttptoolsConnection.connection_lost).
_DETACHED_PARSER = httptools.HttpRequestParser(object())


class _Trailers(list):  # type: ignore[type-arg]
    """Where trailer fields go: each is counted against the limits by the connection, then dropped."""

    __slots__ = ("_conn",)

    def __init__(self, conn: HttpConnection) -> None:
        super().__init__()
        self._conn = conn

    def append(self, item: tuple[bytes, bytes]) -> None:
        name, value = item
        if len(name) + len(value) + 2 > CHUNK_LINE_MAX:  # `name:value` CR at the least
            # The h11 path refuses a trailer line this long as it arrives (screen.ChunkScreen): so here.
            self._conn.on_reject(RequestRejection.MALFORMED_REQUEST)
        else:
            self._conn.on_request_trailer(name, value)


class HttptoolsConnection(HttpConnection):
    __slots__ = ("_after_chunk", "_headers", "_parser", "_trailer_bytes", "_trailer_max", "_trailers", "_url")

    def __init__(self, state: ServerState) -> None:
        super().__init__(state)
        self._parser = _new_parser(self)
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._trailers: list[tuple[bytes, bytes]] = _Trailers(self)
        # A chunk header with no data after it is the last one: what follows is the trailer section,
        # which llhttp buffers until each field is complete. Whole reads of it are counted, so that a
        # field that never ends is refused as on the h11 path (its line bound), one read late at most.
        # It stays set once the message is complete (no callback per request resets it): it counts only
        # while a request is being read, and the next head resets it.
        self._after_chunk = False
        self._trailer_bytes = 0
        self._trailer_max = state.max_headers_size + CHUNK_LINE_MAX

    def feed(self, data: bytes) -> None:
        # (the previous read, if counted, was all trailer section)
        if self._after_chunk and self._reading is not None:
            if self._trailer_bytes > self._trailer_max:
                self.on_reject(RequestRejection.MALFORMED_REQUEST)
                return
            self._trailer_bytes += len(data)  # counts only if this read ends inside the trailer section too
        while not self.ignore_input:
            try:
                self._parser.feed_data(data)
                return
            except httptools.HttpParserUpgrade as exc:
                # llhttp stops after a request asking to switch protocols. Upgrades are not
                # offered here, so the request is answered as plain HTTP and parsing goes on
                # with a fresh parser from where the old one stopped.
                offset = exc.args[0] if exc.args and isinstance(exc.args[0], int) else len(data)
                self._parser = _new_parser(self)
                self._url = b""
                self._headers = []
                data = data[offset:]
                if not data:
                    return
            except httptools.HttpParserError as exc:
                if self.http2 is not None and str(exc).startswith("Pause on PRI") and self._switch_with(data):
                    return
                # (a zero-size chunk header leaves _after_chunk set through the trailer section)
                self.on_reject(_rejection_for(exc, self._after_chunk and self._reading is not None))
                return

    def _switch_with(self, data: bytes) -> bool:
        """llhttp stopped at a `PRI * HTTP/2.0` head: the HTTP/2 preface, if the reads before this one (which
        llhttp took as the start of that head) were its first bytes."""
        before = self._head_bytes - len(data)
        if not 0 <= before <= len(HTTP2_PREFACE):
            return False
        return self.switch_to_http2(HTTP2_PREFACE[:before] + data)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        # The parser holds this connection's callbacks and the trailer list holds the connection: left in
        # place, they keep a closed connection (and, over TLS, the loop's SSL objects) until the garbage
        # collector runs. Without them reference counting frees it as soon as the loop lets go.
        self._parser = _DETACHED_PARSER
        self._headers = self._trailers = []

    # llhttp callbacks. There is no on_message_begin (a call per request): a request head's field list is
    # made with the first piece of its target, which comes first, and the target is reset once the head
    # has been handed over. (Made when the previous message completed, the list would sit unused until
    # this connection's next request: with many busy connections, one more cache line gone cold.)

    def on_url(self, url: bytes) -> None:
        if self._url:  # the target came in pieces (over several reads)
            self._url += url
        else:
            self._headers = []
            self._url = url

    def on_header(self, name: bytes, value: bytes) -> None:
        # llhttp drops the whitespace before a value but keeps the whitespace after it; RFC 9110
        # section 5.5 says neither is part of the value (h11 strips both).
        self._headers.append((name.lower(), value.rstrip(b" \t")))

    def on_headers_complete(self) -> None:
        parser = self._parser
        version = parser.get_http_version()
        self._after_chunk = False  # (left set by the previous request's chunked body, if it had one)
        headers = self._headers
        # llhttp reports a chunked body's trailer fields through on_header too: they must not land in
        # the list the app holds as scope["headers"]. They are counted, then dropped, as on the h11 path.
        self._headers = self._trailers
        url, self._url = self._url, b""
        http_version = HTTP_11 if version == "1.1" else _VERSIONS.get(version) or version.encode("ascii")
        self.on_request_head(parser.get_method(), url, http_version, headers)

    def on_chunk_header(self) -> None:
        self._after_chunk = True
        self._trailer_bytes = 0

    def on_body(self, body: bytes) -> None:
        self._after_chunk = False
        self.on_request_body(body)

    # (No method of its own: a call less per request. _after_chunk is reset by the next head.)
    on_message_complete = HttpConnection.on_request_complete
