"""HTTP/2 (RFC 9113) on the h2 state machine: one connection, many streams, one RequestCycle per stream.

h2 reads and writes frames and HPACK; this module decides what they mean for the server. Each request
stream runs the same RequestCycle (protocols/cycle.py) as an HTTP/1.1 request: Http2Stream is its Stream,
turning the cycle's calls into HEADERS and DATA frames. What is decided here:

- Negotiation: a TLS connection whose ALPN chose "h2", or a cleartext connection that opened with the
  preface (RFC 9113 section 3.3, prior knowledge), is handed over by the HTTP/1.1 connection through
  `Http2Service.take_over` before anything of it is read as HTTP/1.1 (see http11.py).
- Flow control, both ways. Request body: a stream's receive window is handed back (WINDOW_UPDATE) only as
  the app reads its body, so a slow app stops its client without buffering more than the window; body
  the app will never read (it has answered) is handed back at once, so other streams keep the connection
  window. Response body: `send` waits while the stream's data is held back by the peer's windows or by
  the transport; the DATA of the streams with something to send leaves in turns of at most QUANTUM
  bytes, so one large response does not hold up the others.
- Limits: the HTTP/1.1 head limits (header count and size, 414 for a long :path), the body size (413)
  and the data rates apply per stream, with the same rejection names; a refused stream gets its answer
  and an RST_STREAM (NO_ERROR) for what it still wanted to send (RFC 9113 section 8.1).
- Defences, each a connection error (GOAWAY ENHANCE_YOUR_CALM) once a budget per heartbeat is spent:
  streams opened while the apps of too many are still running (rapid reset, CVE-2023-44487: a stream
  the client resets keeps counting until its app ends, as in Kestrel); SETTINGS, PING, empty DATA,
  PRIORITY and WINDOW_UPDATE floods. A header block is counted as it arrives and cut off at the header
  size limit (the CONTINUATION flood, CVE-2024-27316: h2 alone would buffer up to 64 frames of any
  size), and HPACK counts the decoded size against the same limit (HPACK bombs).
- Timeouts: the keep-alive timeout while no stream is open, the request-headers timeout while a header
  block is incomplete, a keep-alive PING when asked for, and each stream's TimeoutControl for the body
  and response data rates.
- Shutdown: GOAWAY naming the last stream accepted; those streams finish, then the connection closes.
  A client's GOAWAY (NO_ERROR) is honoured the same way: h2 would send nothing after it, so the frame
  buffer keeps that frame from h2 and the connection acts on it.

    connection states: open -> (shutdown) GOAWAY sent -> streams done -> closed
                       open -> (connection error) GOAWAY with the error sent -> closed
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections import deque
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, cast

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.frame_buffer
import h2.settings
import hpack
from h2.errors import ErrorCodes
from hyperframe.frame import ContinuationFrame, GoAwayFrame, HeadersFrame

from kestrelpy.access_log import AccessEntry
from kestrelpy.asgi import split_target
from kestrelpy.metrics.recorder import KEEP_ALIVE_TIMEOUT, MIN_RESPONSE_DATA_RATE, error_type
from kestrelpy.protocols.cycle import RequestCycle, forwarded_cycle
from kestrelpy.protocols.flow import LOST_TRANSPORT, FlowControl
from kestrelpy.protocols.http11 import HTTP2_PREFACE, HttpConnection, address, server_address, start_task
from kestrelpy.protocols.rejection import RequestRejection
from kestrelpy.protocols.request_head import content_length, head_refusal, over_head_limits, scan_headers
from kestrelpy.protocols.timeouts import TimeoutControl, TimeoutReason
from kestrelpy.protocols.writer import HeaderError, check_status, header_line

if TYPE_CHECKING:
    from kestrelpy.config import Http2Limits
    from kestrelpy.proxy import TrustedPeers
    from kestrelpy.state import ServerState

logger = logging.getLogger("kestrelpy.error")

QUANTUM = 16 * 1024  # DATA bytes one stream sends before the next stream with data has its turn
FLUSH_AFTER = 64 * 1024  # DATA bytes framed before they are handed to the transport mid-turn
# Frames a client may send per heartbeat that cost the server work without moving a request along.
SETTINGS_BUDGET = 100
PING_BUDGET = 1000
EMPTY_DATA_BUDGET = 1000
PRIORITY_BUDGET = 1000
WINDOW_UPDATE_BUDGET = 1000  # on top of two per DATA frame sent (one for the stream, one for the connection)

# RFC 9113 section 8.2.2: fields that mean something only to one HTTP/1.1 connection are not sent.
_CONNECTION_SPECIFIC = frozenset((b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"))
_PLAIN_TEXT = (b"content-type", b"text/plain; charset=utf-8")
_STATUS = {status: str(status).encode() for status in range(100, 600)}


def _status_value(status: int) -> bytes:
    check_status(status)  # (as HTTP/1.1's status line: an app error)
    return str(status).encode()


# hpack counts 32 bytes per field on top of name and value (RFC 7541 section 4.1), the head limits 4 (`: `
# and CRLF): the decoder's limit leaves room for the difference, and the head limits then count exactly.
_HPACK_FIELD_OVERHEAD = 28


# The checks of RFC 9113 sections 8.2 and 8.3 on a received header block, made here in the one pass that
# reads it (h2's own are a chain of generators over every field, most of the cost of a request's headers).
# A field name is one or more visible ASCII characters but uppercase letters and ':' (section 8.2.1)...
_VALID_NAME = re.compile(rb"[!-9;-@\[-~]+").fullmatch
# ... a value has no NUL, CR or LF, and neither starts nor ends with SP or HTAB (section 8.2.1).
_VALID_VALUE = re.compile(rb"(?:[^\0\r\n\t ](?:[^\0\r\n]*[^\0\r\n\t ])?)?").fullmatch
# The request pseudo-header fields (section 8.3.1), as bits; :protocol is not offered (RFC 8441 is not).
_METHOD, _SCHEME, _AUTHORITY, _PATH, _REGULAR = 1, 2, 4, 8, 16
_PSEUDO = {b":method": _METHOD, b":scheme": _SCHEME, b":authority": _AUTHORITY, b":path": _PATH}
# Fields the request pass looks at: connection-specific ones make a request malformed (section 8.2.2),
# and so does TE with any value but "trailers"; cookies are joined again; Host stands beside :authority.
_FORBIDDEN, _TE, _COOKIE, _HOST = range(4)
_SPECIAL = {**dict.fromkeys(_CONNECTION_SPECIFIC, _FORBIDDEN), b"te": _TE, b"cookie": _COOKIE, b"host": _HOST}


def _valid_value(valid: set[tuple[bytes, bytes]], field: tuple[bytes, bytes]) -> bool:
    """Whether the field's value is well-formed; a field found so (its name checked first) is remembered."""
    value = field[1]
    if value and _VALID_VALUE(value) is None:
        return False
    if len(valid) < VALID_FIELDS:
        valid.add(field)
    return True


def invalid_field(name: bytes, value: bytes) -> bool:
    """Whether a regular field (not a pseudo-header) makes its message malformed (RFC 9113 section 8.2)."""
    if _VALID_NAME(name) is None or (value and _VALID_VALUE(value) is None):
        return True
    kind = _SPECIAL.get(name)
    return kind == _FORBIDDEN or (kind == _TE and value.lower() != b"trailers")


VALID_FIELDS = 64  # fields a connection remembers as well-formed, so a repeated one is checked once


def read_request_fields(
    fields: Iterable[tuple[bytes, bytes]], field_limit: int, valid: set[tuple[bytes, bytes]]
) -> tuple[bytes, bytes | None, list[tuple[bytes, bytes]], bool, int] | str:
    """One pass over a request's decoded header block: why it is malformed (RFC 9113 sections 8.2, 8.3),
    or (method, :path, the fields the app sees, whether one is longer than `field_limit`, a bound on the
    size the head limits count: every field's name and value and 4 bytes, as HTTP/1.1 counts). The app sees
    :authority as the first field, Host, and cookie fields joined into one (section 8.2.3). :path is None
    for a CONNECT request. `valid` holds fields whose name and value were found well-formed (it grows
    up to VALID_FIELDS)."""
    seen = 0
    method = path = authority = host = None
    headers: list[tuple[bytes, bytes]] = []
    cookies: list[bytes] = []
    too_large = False
    bound = 0
    for field in fields:
        name, value = field
        size = len(name) + len(value)
        if size > field_limit:
            too_large = True
        bound += size + 4
        known = field in valid
        if name[:1] == b":":
            bit = _PSEUDO.get(name, 0)
            if not bit or seen & (bit | _REGULAR) or not (known or _valid_value(valid, field)):
                return f"pseudo-header field {name!r} unknown, repeated, after a regular field or invalid"
            seen |= bit
            if bit == _METHOD:
                method = value
            elif bit == _PATH:
                path = value
            elif bit == _AUTHORITY:
                authority = value
            continue
        seen |= _REGULAR
        if not known and (_VALID_NAME(name) is None or not _valid_value(valid, field)):
            return f"field {name!r} has an invalid name or value"
        kind = _SPECIAL.get(name)
        if kind is None:
            headers.append((name, value))
        elif kind == _COOKIE:
            cookies.append(value)
        elif kind == _HOST:
            if host is not None:
                return "more than one Host field"
            host = value
        elif kind == _FORBIDDEN or value.lower() != b"trailers":
            return f"field {name!r} is connection-specific"
        else:
            headers.append((name, value))
    if method is None:
        return "no :method"
    if method == b"CONNECT":
        if seen & (_SCHEME | _PATH):
            return "CONNECT with :scheme or :path"  # (section 8.5)
    elif seen & (_SCHEME | _PATH) != _SCHEME | _PATH or not path:
        return "no :scheme, or no :path or an empty one"
    if authority is not None:
        if host is not None and host != authority:
            return ":authority and Host differ"
        headers.insert(0, (b"host", authority))
    elif host is not None:
        headers.insert(0, (b"host", host))
    else:
        return "neither :authority nor Host"
    if cookies:
        headers.append((b"cookie", b"; ".join(cookies)))
    return method, path, headers, too_large, bound  # (the app's fields are never more: see the caller)


class HeaderBlockBuffer(h2.frame_buffer.FrameBuffer):
    """h2's frame buffer, counting the bytes of a header block as its frames arrive: a block larger than
    `limit` is a connection error before it is buffered (h2 alone bounds only the number of CONTINUATION
    frames, 64, which at the largest frame size is a gigabyte). `started` says a block is incomplete."""

    def __init__(self, limit: int) -> None:
        super().__init__(server=True)
        self.limit = limit
        self.block_bytes = 0
        self.goaway: GoAwayFrame | None = None  # the client's, kept from h2 (see _update_header_buffer)

    @property
    def started(self) -> bool:
        return bool(self._headers_buffer)

    def _update_header_buffer(self, f: Any) -> Any:
        if isinstance(f, (HeadersFrame, ContinuationFrame)) and (self._headers_buffer or "END_HEADERS" not in f.flags):
            self.block_bytes = (self.block_bytes if self._headers_buffer else 0) + len(f.data)
            if self.block_bytes > self.limit:
                raise h2.exceptions.DenialOfServiceError("header block larger than the request header limit")
        frame = super()._update_header_buffer(f)
        if type(frame) is GoAwayFrame:
            # h2 sends nothing more once it has received a GOAWAY, but RFC 9113 section 6.8 lets the streams
            # the client opened finish: the connection reads it here instead (see Http2Connection.data_received).
            self.goaway = frame
            return None
        return frame


class ResponseHeaderEncoder(hpack.Encoder):
    """hpack's encoder, remembering the blocks it made while its dynamic table stays as it was.

    A response head whose fields are all in the table already (after the first response, most are: the
    same content-type, server and date, often the same length) encodes to index references only, and
    changes nothing in the table: the same head then encodes to the same bytes until an entry is added or
    the table is resized, which forgets every block remembered. Heads are lists of plain 2-tuples (this
    module makes them so), so equal lists mean equal encodings."""

    BLOCKS = 32  # heads remembered at once

    def __init__(self) -> None:
        super().__init__()
        self._blocks: dict[tuple[tuple[bytes, bytes], ...], bytes] = {}
        self._newest: tuple[bytes, bytes] | None = None  # the table's newest entry when those were made

    def encode(self, headers: Any, huffman: bool = True) -> bytes:
        table = self.header_table
        entries = table.dynamic_entries
        newest = entries[0] if entries else None
        key = tuple(headers)
        blocks = self._blocks
        resized = table.resized  # (the block then starts with the size update, said once)
        if newest is not self._newest or resized or len(blocks) >= self.BLOCKS:
            blocks.clear()
            self._newest = newest
        else:
            block = blocks.get(key)
            if block is not None:
                return block
        block = super().encode(key, huffman)
        if not resized and (entries[0] if entries else None) is newest:  # the table is as it was
            blocks[key] = block
        return block


class RequestHeaderDecoder(hpack.Decoder):
    """hpack's decoder, remembering the fields of the small blocks it decoded while its dynamic table stays as
    it was: a client that repeats a request (the same path, the same fields) sends the same index references,
    which mean the same fields until the table changes. Any change to the table, or to the limits the
    decoder applies, forgets every block. The lists it returns are shared: h2 copies them into its events."""

    BLOCKS = 32  # blocks remembered at once
    LARGEST = 512  # bytes of the largest block remembered

    def __init__(self) -> None:
        self._blocks: dict[bytes, list[hpack.HeaderTuple]] = {}
        super().__init__()

    # (h2 sets these as the client acknowledges SETTINGS; a block decoded under other limits is forgotten)
    @property
    def max_header_list_size(self) -> int:
        return self._max_header_list_size

    @max_header_list_size.setter
    def max_header_list_size(self, value: int) -> None:
        self._max_header_list_size = value
        self._blocks.clear()

    @property
    def max_allowed_table_size(self) -> int:
        return self._max_allowed_table_size

    @max_allowed_table_size.setter
    def max_allowed_table_size(self, value: int) -> None:
        self._max_allowed_table_size = value
        self._blocks.clear()

    def decode(self, data: bytes, raw: bool = False) -> list[hpack.HeaderTuple]:
        blocks = self._blocks
        if raw:
            fields = blocks.get(data)
            if fields is not None:
                return fields
        table = self.header_table
        entries = table.dynamic_entries
        newest = entries[0] if entries else None
        size = table.maxsize
        fields = cast("list[hpack.HeaderTuple]", super().decode(data, raw))
        if (entries[0] if entries else None) is not newest or table.maxsize != size:
            blocks.clear()  # the table changed: the blocks remembered may mean something else now
        elif raw and len(data) <= self.LARGEST:
            if len(blocks) >= self.BLOCKS:
                blocks.clear()
            blocks[data] = fields
        return fields


# h2 turns all it is given into events before any is handled. A read (up to 256 KiB on uvloop) is handed
# over in slices, so a flood is cut off after the slice that spends its budget, not after the whole read:
# thousands of frames parsed in one go would hold the loop, and every other connection, for seconds.
READ_SLICE = 16 * 1024


class Http2Service:
    """What serves HTTP/2 for one server: its settings, and the hand-off from an accepted connection."""

    __slots__ = ("extra_headers", "limits", "server_header")

    def __init__(self, limits: Http2Limits, server_header: bool, extra_headers: Iterable[tuple[str, str]]) -> None:
        self.limits = limits
        self.server_header = server_header
        self.extra_headers = [(n.lower().encode("latin-1"), v.encode("latin-1")) for n, v in extra_headers]

    def take_over(self, conn: HttpConnection, received: bytes) -> None:
        """Serve `conn`'s transport as HTTP/2 from now on; `received` is what was read of it so far."""
        transport = conn.transport
        tls = conn.tls_scope_extension()  # described once, for every stream; read while conn has its transport
        state = conn.state
        state.connections.discard(conn)
        conn.ignore_input = True
        conn.transport = LOST_TRANSPORT
        h2conn = Http2Connection(state, self, conn.scheme, tls)
        if state.metrics is not None:  # one connection to the metrics, from its accept on
            state.metrics.connection_upgraded(conn, h2conn)
        transport.set_protocol(h2conn)
        h2conn.connection_made(transport)
        if received:
            h2conn.data_received(received)
        if state.shutting_down:  # it became HTTP/2 only after the drain began (--shutdown-delay is over)
            h2conn.shutdown()

    def refuse_over_limit(self, conn: HttpConnection) -> None:
        """A cleartext connection over --limit-concurrency: refused the HTTP/2 way (GOAWAY REFUSED_STREAM) if
        it opens with the preface, else with HTTP/1.1's 503, once its first bytes say which (an HTTP/1.1
        client sends first, so it waits for nothing). An HTTP/2-only listener refuses it as HTTP/2 at once."""
        if not conn.http1:
            self.take_over(conn, b"")
            return
        conn.closing = True  # a client that sends nothing is closed after the LINGER timeout
        conn.transport.set_protocol(OverLimitSniffer(self, conn))


class OverLimitSniffer(asyncio.Protocol):
    """The protocol of a cleartext connection over the connection limit until its first bytes arrive (see
    Http2Service.refuse_over_limit). Only such connections pass here: the HTTP/1.1 path pays nothing."""

    __slots__ = ("_conn", "_received", "_service")

    def __init__(self, service: Http2Service, conn: HttpConnection) -> None:
        self._service = service
        self._conn = conn
        self._received = b""

    def data_received(self, data: bytes) -> None:
        received = self._received + data
        conn = self._conn
        if received.startswith(HTTP2_PREFACE):
            self._service.take_over(conn, received)  # (which finds the connection over the limit and refuses it)
        elif HTTP2_PREFACE.startswith(received):
            self._received = received  # the preface so far
        else:
            conn.transport.set_protocol(conn)
            conn._refuse()  # what was read is dropped: a refused request is never parsed

    def eof_received(self) -> bool:
        return False  # (the transport closes)

    def connection_lost(self, exc: Exception | None) -> None:
        self._conn.connection_lost(exc)


class Http2Stream:
    """One request stream: the RequestCycle's Stream (see cycle.py), written as HEADERS and DATA frames."""

    __slots__ = (
        "_bytes_left",
        "_conn",
        "_end_pending",
        "_head",
        "_head_request",
        "_out",
        "_trailers",
        "bytes_written",
        "cycle",
        "ended",
        "flow",
        "received",
        "request_ended",
        "request_table",
        "state",
        "stream_id",
        "timeouts",
        "unacked",
    )

    def __init__(self, conn: Http2Connection, stream_id: int, now: float, head_request: bool) -> None:
        self._conn = conn
        self.state = state = conn.state
        self.request_table = conn.request_table
        self.stream_id = stream_id
        self.cycle: RequestCycle | None = None
        self.timeouts = TimeoutControl(state.timeout_durations, state.data_rates, now)  # (no timeout running)
        # The app's `send` waits on this while the stream's data is held back (by a window or the transport).
        self.flow = FlowControl(LOST_TRANSPORT)
        self._head_request = head_request
        self._head: list[tuple[bytes, bytes]] | None = None  # held until the first body message
        self._bytes_left = -1  # of a declared Content-Length; -1: none declared
        self._out: memoryview | None = None  # DATA not yet sent
        self._end_pending = False  # END_STREAM goes out once _out is sent
        self._trailers: list[tuple[bytes, bytes]] | None = None  # sent with END_STREAM once _out is sent
        self.ended = False  # END_STREAM (or RST_STREAM) has been sent
        self.received = 0  # request body bytes, for the body size limit
        self.request_ended = False  # the client's END_STREAM has arrived
        self.unacked = 0  # flow-controlled bytes received and not yet handed back
        self.bytes_written = 0  # since the last heartbeat, for the response data rate

    @property
    def response_on_wire(self) -> bool:
        return self._head is None

    # -- the Stream interface ----------------------------------------------------------------------

    def start_response(self, status: int, headers: Iterable[tuple[bytes, bytes]], trailers: bool) -> None:
        conn = self._conn
        head = [(b":status", _STATUS.get(status) or _status_value(status))]
        own_server = own_date = False
        length = -1
        for raw_name, value in headers:
            name = header_line(raw_name, value)[0]
            if name in _CONNECTION_SPECIFIC:
                continue
            if name == b"content-length":
                if not bytes(value).isdigit():
                    raise HeaderError(f"invalid content-length {value!r}")
                length = int(value)
            elif name == b"server":
                own_server = True
            elif name == b"date":
                own_date = True
            head.append((name, bytes(value)))
        service = conn.service
        if not own_server and service.server_header:
            head.append((b"server", b"kestrelpy"))
        date_line = conn.state.date_line
        if not own_date and date_line:
            head.append((b"date", date_line[6:-2]))  # `date: ...\r\n`
        head.extend(service.extra_headers)
        self._head = head
        self._bytes_left = length
        self._trailers = [] if trailers else None

    def send_body(self, body: bytes, more_body: bool) -> None:
        head = self._head
        status = 200
        if head is not None:
            status = int(head[0][1])
            whole = not more_body and self._bytes_left < 0 and self._trailers is None
            if whole and status >= 200 and status not in (204, 304):
                head.append((b"content-length", b"%d" % len(body)))
                self._bytes_left = len(body)
        if self._head_request or (head is not None and (status < 200 or status in (204, 304))):
            body = b""
        elif body and self._bytes_left >= 0:
            if len(body) > self._bytes_left:
                raise RuntimeError("Response content longer than Content-Length.")
            self._bytes_left -= len(body)
        if not more_body and self._bytes_left > 0 and not self._head_request:
            raise RuntimeError("Response content shorter than Content-Length.")
        conn = self._conn
        if head is not None:
            self._head = None
            last = not more_body and self._trailers is None
            if last and body and conn.send_whole(self, head, body):
                return
            conn.send_headers(self, head, last and not body)
            if last and not body:
                return
        if body:
            self._out = memoryview(body)
        if not more_body and self._trailers is None:
            self._end_pending = True
        conn.queue(self)

    def send_trailers(self, headers: Iterable[tuple[bytes, bytes]], more_trailers: bool) -> None:
        if self._trailers is None:
            return
        for name, value in headers:
            lowered = header_line(name, value)[0]
            if lowered not in _CONNECTION_SPECIFIC:
                self._trailers.append((lowered, bytes(value)))
        if not more_trailers:
            self._end_pending = True
            self._conn.queue(self)

    def fail_response(self, status: int, body: bytes) -> None:
        self.start_response(status, (_PLAIN_TEXT,), False)
        self.send_body(body, False)

    def send_continue(self) -> None:
        self._conn.send_headers(self, [(b":status", b"100")], False)

    def pause_reading(self) -> None:
        pass  # the window is handed back only as the app reads: the client stops once it is spent

    def resume_reading_for(self, cycle: RequestCycle) -> None:
        """The app has taken every body byte buffered: hand their window back."""
        if self.unacked:
            self._conn.acknowledge(self, self.unacked)

    def complete_response(self, cycle: RequestCycle) -> float | None:
        self._conn.state.requests_served += 1
        return None

    def abort(self) -> None:
        self._conn.reset(self, ErrorCodes.INTERNAL_ERROR)

    # -- sending -----------------------------------------------------------------------------------

    @property
    def has_output(self) -> bool:
        return self._out is not None or self._end_pending

    def send_some(self, h2conn: h2.connection.H2Connection, budget: int) -> int:
        """Send DATA (and, after the last of it, END_STREAM or the trailers) within `budget` bytes and the
        windows; the bytes sent."""
        sent = 0
        out = self._out
        sid = self.stream_id
        ends_with_data = self._end_pending and not self._trailers
        while out is not None:
            size = min(budget - sent, h2conn.local_flow_control_window(sid), h2conn.max_outbound_frame_size, len(out))
            if size <= 0:
                break
            last = size == len(out)
            h2conn.send_data(sid, out[:size].tobytes(), end_stream=last and ends_with_data)
            sent += size
            self._conn.data_frames += 1
            if last:
                self._out = out = None
                if ends_with_data:
                    self._end_pending = False
                    self.ended = True
            else:
                self._out = out = out[size:]
        if self._end_pending and out is None:
            self._end_pending = False
            self.ended = True
            if self._trailers:
                h2conn.send_headers(sid, self._trailers, end_stream=True)
            else:  # (no trailers after all: an empty DATA frame ends the stream)
                h2conn.send_data(sid, b"", end_stream=True)
        self.bytes_written += sent
        return sent

    def drop_output(self) -> None:
        self._out = None
        self._end_pending = False
        self.ended = True


class Http2Connection(asyncio.Protocol):
    """One HTTP/2 connection: h2 fed with what is read, streams started, frames written, limits kept."""

    __slots__ = (
        "_app_running",
        "_budgets",
        "_frames",
        "_goaway_received",
        "_goaway_sent",
        "_held",
        "_in_read",
        "_last_heard",
        "_last_stream_id",
        "_lingering",
        "_ping_sent",
        "_ready",
        "_received",
        "_refused_while_full",
        "_send_scheduled",
        "_valid_fields",
        "_written",
        "client",
        "closing",
        "data_frames",
        "flow",
        "forwarded",
        "h2",
        "request_table",
        "scheme",
        "server",
        "service",
        "state",
        "streams",
        "timeouts",
        "tls_extension",
        "transport",
    )

    def __init__(self, state: ServerState, service: Http2Service, scheme: str, tls_extension: Any) -> None:
        self.state = state
        self.service = service
        self.scheme = scheme
        self.tls_extension = tls_extension
        # the metrics' series for this scheme, which every stream offers its RequestCycle (see cycle.py)
        self.request_table = state.metrics.request_table(scheme, "2") if state.metrics is not None else None
        self.transport: asyncio.Transport = LOST_TRANSPORT
        self.flow = FlowControl(LOST_TRANSPORT)
        self.timeouts: TimeoutControl = None  # type: ignore[assignment]
        self.server: tuple[str, int | None] | None = None
        self.client: tuple[str, int] | None = None
        self.forwarded: TrustedPeers | None = None  # whether the peer may set forwarded headers (connection_made)
        self.closing = False  # set by the server during --shutdown-delay; HTTP/2 keeps serving then
        self.streams: dict[int, Http2Stream] = {}
        self._ready: deque[Http2Stream] = deque()  # streams with DATA to send, in turn
        self._app_running = 0  # streams whose app has not returned, reset ones included
        self._held: list[tuple[Http2Stream, RequestCycle]] = []  # apps to start once this read is handled
        self._valid_fields: set[tuple[bytes, bytes]] = set()  # request fields found well-formed
        self._refused_while_full = 0  # streams refused since the last beat because too many apps run
        self._budgets = [0, 0, 0, 0, 0]  # SETTINGS, PING, empty DATA, PRIORITY, WINDOW_UPDATE since the last beat
        self.data_frames = 0  # DATA frames sent since the last beat (they earn WINDOW_UPDATE budget)
        self._in_read = False  # writes wait for the end of the read being handled
        self._send_scheduled = False  # _send_pending is due on the loop
        self._goaway_sent = False
        self._goaway_received = False  # the client's GOAWAY: its streams finish, then the connection closes
        self._lingering = False  # a connection error's GOAWAY is out; nothing more is read (see _linger)
        self._last_stream_id = 0  # the highest stream accepted
        self._received = False  # anything read since the last beat (for the keep-alive ping)
        self._ping_sent: float | None = None  # when the unanswered keep-alive PING went out
        self._last_heard = 0.0  # the beat that last found something read
        self._written = 0  # DATA bytes framed since the last beat, for the response data rate
        limits = service.limits
        config = h2.config.H2Configuration(
            client_side=False,
            header_encoding=None,
            normalize_inbound_headers=False,  # (it only joins cookie fields, which _on_request does anyway)
            validate_inbound_headers=False,  # checked in the pass that reads them (read_request_fields)
            validate_outbound_headers=False,  # validated (and lower-cased) by the stream, as for HTTP/1.1
            normalize_outbound_headers=False,
            split_outbound_cookies=False,
        )
        conn = h2.connection.H2Connection(config)
        conn.encoder = ResponseHeaderEncoder()
        conn.decoder = RequestHeaderDecoder()
        header_list = state.max_headers_size + _HPACK_FIELD_OVERHEAD * state.max_header_count
        conn.local_settings = h2.settings.Settings(
            client=False,
            initial_values={
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: limits.http2_max_concurrent_streams,
                h2.settings.SettingCodes.HEADER_TABLE_SIZE: limits.http2_header_table_size,
                h2.settings.SettingCodes.MAX_FRAME_SIZE: limits.http2_max_frame_size,
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: limits.http2_initial_stream_window_size,
                h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: header_list,
                h2.settings.SettingCodes.ENABLE_PUSH: 0,
            },
        )
        # In force before the client acknowledges them, too: the limits defend from the first frame.
        conn.decoder.max_header_list_size = header_list
        conn.decoder.max_allowed_table_size = limits.http2_header_table_size
        self._frames = conn.incoming_buffer = HeaderBlockBuffer(header_list)
        self.h2 = conn

    # -- transport events ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.flow = FlowControl(self.transport)
        self.server = server_address(transport.get_extra_info("sockname"))
        self.client = address(transport.get_extra_info("peername"))
        # (TCP_NODELAY: asyncio and uvloop set it on every TCP transport, TLS ones included)
        state = self.state
        if state.forwarded_verdicts is not None:
            self.forwarded = state.forwarded_verdicts.for_client(self.client)
        now = state.clock()
        self.timeouts = TimeoutControl(state.timeout_durations, state.data_rates, now)
        self.timeouts.set_timeout(TimeoutReason.KEEP_ALIVE, now)
        self._last_heard = now
        over_limit = 0 < state.max_connections <= len(state.connections) - state.upgraded
        state.connections.add(self)
        h2conn = self.h2
        h2conn.initiate_connection()
        window = self.service.limits.http2_initial_connection_window_size
        if window > 65535:  # RFC 9113 section 6.9.2: the connection window starts at 65535 whatever SETTINGS say
            h2conn.increment_flow_control_window(window - 65535)
        if over_limit:
            logger.debug("Refused an HTTP/2 connection from %s: over --limit-concurrency", self.client)
            self._fail_connection(ErrorCodes.REFUSED_STREAM, b"too many connections")
            return
        self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.state.connection_closed(self)
        self.flow.connection_lost()
        self.transport = LOST_TRANSPORT
        self._ready.clear()
        for stream in list(self.streams.values()):
            stream.drop_output()
            stream.flow.connection_lost()
            if stream.cycle is not None:
                stream.cycle.on_disconnect()

    @property
    def active_cycles(self) -> tuple[RequestCycle, ...]:
        """The requests whose app is running, one per open stream (the metrics' active requests)."""
        return tuple(s.cycle for s in self.streams.values() if s.cycle is not None)  # (cleared as it returns)

    def pause_writing(self) -> None:
        self.flow.pause_writing()

    def resume_writing(self) -> None:
        self.flow.resume_writing()
        self._pump()
        self._flush()

    def data_received(self, data: bytes) -> None:
        self._received = True
        if self._lingering:
            return  # after a connection error: read and dropped until the client closes (see _linger)
        self._in_read = True
        try:
            if len(data) <= READ_SLICE:
                if not self._receive(data):
                    return
            else:
                for start in range(0, len(data), READ_SLICE):
                    if not self._receive(data[start : start + READ_SLICE]):
                        return
            if self._frames.goaway is not None:
                self._on_goaway(self._frames.goaway)
            self._pump()
        finally:
            self._in_read = False
            self._flush()

    def _receive(self, data: bytes) -> bool:
        """Hand `data` to h2 and handle its events; False once the connection has ended."""
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            # h2 has queued a GOAWAY with the error's code: send it and close.
            logger.debug("HTTP/2 connection error from %s: %s", self.client, exc)
            self._close_after_error()
            return False
        try:
            for event in events:
                self._on_event(event)
                if self._lingering or self.transport.is_closing():
                    return False
            return True
        finally:
            if self._held:
                self._start_held()

    # -- events ------------------------------------------------------------------------------------

    def _on_event(self, event: h2.events.Event) -> None:
        kind = type(event)
        if kind is h2.events.RequestReceived:
            self._on_request(event)  # type: ignore[arg-type]
        elif kind is h2.events.DataReceived:
            self._on_data(event)  # type: ignore[arg-type]
        elif kind is h2.events.StreamEnded:
            stream = self.streams.get(event.stream_id)  # type: ignore[attr-defined]
            if stream is not None and not stream.request_ended:  # (a GET's came with its HEADERS, a reset ended it)
                stream.request_ended = True
                if stream.cycle is not None:
                    stream.cycle.finish_body()
        elif kind is h2.events.WindowUpdated:
            self._on_window_update(event.stream_id)  # type: ignore[attr-defined]
        elif kind is h2.events.StreamReset:
            self._on_reset(event.stream_id)  # type: ignore[attr-defined]
        elif kind is h2.events.TrailersReceived:
            self._on_request_trailers(event)  # type: ignore[arg-type]
        elif kind is h2.events.RemoteSettingsChanged:
            self._spend(0, SETTINGS_BUDGET)
            self._ready.extend(s for s in self.streams.values() if s.has_output and s not in self._ready)
        elif kind is h2.events.PingReceived:
            self._spend(1, PING_BUDGET)
        elif kind is h2.events.PingAckReceived:
            self._ping_sent = None
        elif kind is h2.events.PriorityUpdated:
            self._spend(3, PRIORITY_BUDGET)

    def _on_goaway(self, frame: GoAwayFrame) -> None:
        """The client opens no more streams (RFC 9113 section 6.8): those it has opened finish, then the
        connection closes. A GOAWAY with an error code ends the connection at once."""
        self._frames.goaway = None
        if frame.error_code != ErrorCodes.NO_ERROR:
            logger.debug("HTTP/2 GOAWAY from %s with error %s", self.client, frame.error_code)
            self._close_streams()
            self._flush()
            self.transport.close()
            return
        self._goaway_received = True
        if not self.streams:
            self._flush()
            self.transport.close()

    def _spend(self, which: int, budget: int) -> None:
        """Count one frame against its budget for this beat; over it, the connection ends."""
        spent = self._budgets[which] + 1
        self._budgets[which] = spent
        if spent > budget:
            names = ("SETTINGS", "PING", "empty DATA", "PRIORITY", "WINDOW_UPDATE")
            logger.debug("HTTP/2 %s flood from %s", names[which], self.client)
            self._fail_connection(ErrorCodes.ENHANCE_YOUR_CALM, names[which].encode() + b" flood")

    def _on_request(self, event: h2.events.RequestReceived) -> None:
        sid = event.stream_id
        state = self.state
        if self._goaway_sent or self._goaway_received:
            self._reset_id(sid, ErrorCodes.REFUSED_STREAM)  # after a GOAWAY: never served (RFC 9113 6.8)
            return
        self._last_stream_id = sid
        limit = self.service.limits.http2_max_concurrent_streams
        if self._app_running >= limit:
            # Streams the client reset still count while their apps run: opening more is rapid reset.
            self._refused_while_full += 1
            if self._refused_while_full > limit:
                logger.debug("HTTP/2 rapid reset from %s", self.client)
                self._fail_connection(ErrorCodes.ENHANCE_YOUR_CALM, b"too many streams reset while active")
                return
            self._reset_id(sid, ErrorCodes.REFUSED_STREAM)
            return
        limit = self.service.limits.http2_max_request_header_field_size
        head = read_request_fields(event.headers or (), limit, self._valid_fields)
        if isinstance(head, str):
            # RFC 9113 section 8.1.1: a malformed request is a stream error; the connection carries on.
            logger.debug("Malformed HTTP/2 request from %s: %s", self.client, head)
            self._reset_id(sid, ErrorCodes.PROTOCOL_ERROR)
            return
        method, raw_target, headers, too_large, bound = head
        stream = Http2Stream(self, sid, state.clock(), method == b"HEAD")
        stream.request_ended = event.stream_ended is not None
        self.streams[sid] = stream
        self.timeouts.cancel_timeout()
        if raw_target is None:  # CONNECT (RFC 9113 section 8.5) is not offered
            self._refuse(stream, RequestRejection.MALFORMED_REQUEST)
            return
        rejection = RequestRejection.HEADERS_TOO_LARGE if too_large else None
        # The app's fields weigh no more than the block's (Host stands for :authority, joined cookies lose their
        # names): within the size limit by that bound, the exact count is not needed.
        if rejection is None and (
            bound > state.max_headers_size
            or len(headers) > state.max_header_count
            or len(method) + len(raw_target) + 10 > state.max_line_size
        ):
            rejection = over_head_limits(state, method, raw_target, headers)
        if rejection is not None:
            self._refuse(stream, rejection)
            return
        _keep, expect_continue, trailers, _up, hosts, codings, length, _empty, content_types, forwarded = scan_headers(
            state.known_hosts, headers, True
        )
        if hosts > 1 or content_types > 1:  # (HTTP/2 needs no Host: :authority may stand for it)
            refusal = head_refusal(method, raw_target, True, hosts, codings, length, content_types)
            if refusal is not None:
                self._refuse(stream, refusal)
                return
        parts = split_target(raw_target) if raw_target != b"*" else None
        if parts is None:
            self._refuse(stream, RequestRejection.MALFORMED_REQUEST)
            return
        if state.max_body_size and length is not None and content_length(length) > state.max_body_size:
            self._refuse(stream, RequestRejection.BODY_TOO_LARGE)
            return
        scope = self._scope(method, parts[0], parts[1], headers, trailers)
        if forwarded and self.forwarded is not None:  # a forwarded field, from a peer that may set one
            cycle = forwarded_cycle(stream, scope, expect_continue, self.forwarded)
        else:
            cycle = RequestCycle(stream, scope, expect_continue)
        stream.cycle = cycle
        self._app_running += 1
        if stream.request_ended:
            cycle.body_complete = True
        else:
            # The body that came in the same read is handed over by the events after this one. An app started
            # now (eagerly, on 3.12) would find none yet, wait for it and be woken on the next loop turn;
            # started once the read's events are handled, it takes the body at once.
            self._held.append((stream, cycle))
            return
        cycle.task = start_task(self._run(stream, cycle), state.loop, state.base_context.copy())

    def _start_held(self) -> None:
        """Run the apps of the requests _on_request held until their read was handled."""
        held, self._held = self._held, []
        state = self.state
        for stream, cycle in held:
            cycle.task = start_task(self._run(stream, cycle), state.loop, state.base_context.copy())

    async def _run(self, stream: Http2Stream, cycle: RequestCycle) -> None:
        try:
            await cycle.run(self.state.app)
        finally:
            self._app_running -= 1
            stream.cycle = None
            if stream.has_output:
                pass  # the rest of its response is still on the way: _after_end forgets it
            elif not stream.ended:
                self.reset(stream, ErrorCodes.INTERNAL_ERROR)  # (a complete response has ended it)
            else:
                self._forget(stream)

    def _scope(
        self, method: bytes, raw_path: bytes, query: bytes, headers: list[tuple[bytes, bytes]], trailers: bool
    ) -> dict[str, Any]:
        """The HTTP/1.1 connection's scope (it reads the same attributes: state, server, client, scheme), with
        HTTP/2's version and, on TLS, the connection's extension."""
        scope = HttpConnection._scope(cast("HttpConnection", self), method, raw_path, query, headers, True, trailers)
        scope["http_version"] = "2"
        if self.tls_extension is not None:
            scope.setdefault("extensions", {})["tls"] = self.tls_extension
        return scope

    def _on_data(self, event: h2.events.DataReceived) -> None:
        sid = event.stream_id
        length = event.flow_controlled_length
        data = event.data
        if not data and event.stream_ended is None:
            self._spend(2, EMPTY_DATA_BUDGET)
        stream = self.streams.get(sid)
        cycle = stream.cycle if stream is not None else None
        if stream is None or cycle is None or cycle.response_complete or cycle.disconnected:
            # Nobody will read it: its window goes back at once, so other streams keep the connection's.
            if length:
                self.h2.acknowledge_received_data(length, sid)
            return
        stream.unacked += length
        stream.received += len(data)
        max_body = self.state.max_body_size
        if max_body and stream.received > max_body:
            self._refuse(stream, RequestRejection.BODY_TOO_LARGE)
            return
        if data:
            cycle.feed_body(data)
        elif length:  # all padding: nothing for the app, the window goes back now
            self.acknowledge(stream, length)

    def _on_request_trailers(self, event: h2.events.TrailersReceived) -> None:
        """Dropped (ASGI has no request trailers), but checked (RFC 9113 section 8.1: no pseudo-header
        fields, and the rules of section 8.2) and counted with the head against its limits."""
        trailers = event.headers or ()
        stream = self.streams.get(event.stream_id)
        if any(name[:1] == b":" or invalid_field(name, value) for name, value in trailers):
            logger.debug("Malformed HTTP/2 request trailers from %s", self.client)
            if stream is None:
                self._reset_id(event.stream_id, ErrorCodes.PROTOCOL_ERROR)
                return
            stream.request_ended = True  # (its END_STREAM, which follows, ends nothing now)
            if stream.cycle is not None:
                stream.cycle.on_disconnect()
            self.reset(stream, ErrorCodes.PROTOCOL_ERROR)
            return
        if stream is None or stream.cycle is None:
            return
        state = self.state
        head = stream.cycle.scope["headers"]
        fields = [*head, *trailers]
        if len(fields) > state.max_header_count:
            self._refuse(stream, RequestRejection.TOO_MANY_HEADERS)
        elif sum(len(n) + len(v) + 4 for n, v in fields) > state.max_headers_size:
            self._refuse(stream, RequestRejection.HEADERS_TOO_LARGE)

    def _on_window_update(self, sid: int) -> None:
        self._spend(4, WINDOW_UPDATE_BUDGET + 2 * self.data_frames)
        if sid == 0:
            ready = self._ready
            ready.extend(s for s in self.streams.values() if s.has_output and s not in ready)
        else:
            stream = self.streams.get(sid)
            if stream is not None and stream.has_output and stream not in self._ready:
                self._ready.append(stream)
        self._send_soon()

    def _on_reset(self, sid: int) -> None:
        stream = self.streams.get(sid)
        if stream is None:
            return
        stream.drop_output()
        stream.flow.resume_writing()  # a writer waiting for the window finds the client gone
        if stream.cycle is not None:
            stream.cycle.on_disconnect()
        else:
            self._forget(stream)

    # -- sending -----------------------------------------------------------------------------------

    def send_headers(self, stream: Http2Stream, headers: list[tuple[bytes, bytes]], end_stream: bool) -> None:
        try:
            self.h2.send_headers(stream.stream_id, headers, end_stream=end_stream)
        except h2.exceptions.StreamClosedError:
            stream.drop_output()
            return
        stream.bytes_written += 1  # (the head counts as output: the response rate's grace runs from it)
        if end_stream:
            stream.ended = True
            self._after_end(stream)
        self._send_soon()

    def send_whole(self, stream: Http2Stream, headers: list[tuple[bytes, bytes]], body: bytes) -> bool:
        """A whole response in one go, HEADERS and one DATA frame with END_STREAM, when it takes no turn
        from another stream (it fits in one frame and the window, and nothing waits before it); False
        (nothing sent) otherwise. Most responses are such: they skip the queue."""
        size = len(body)
        h2conn = self.h2
        if size > 16384 or self._ready or self.flow.write_paused:  # (16 KiB: the smallest frame size allowed)
            return False
        sid = stream.stream_id
        try:
            if size > h2conn.local_flow_control_window(sid):
                return False
            h2conn.send_headers(sid, headers)
            h2conn.send_data(sid, body, end_stream=True)
        except h2.exceptions.StreamClosedError:
            stream.drop_output()
            return True
        stream.bytes_written += size + 1  # (the head counts as output, see send_headers)
        self._written += size
        self.data_frames += 1
        stream.ended = True
        self._after_end(stream)
        self._send_soon()
        return True

    def queue(self, stream: Http2Stream) -> None:
        """The stream has DATA (or its end) to send: send what the windows allow, and hold its app's
        next `send` until the rest is out."""
        if stream.ended:
            stream.drop_output()
            return
        if stream not in self._ready:
            self._ready.append(stream)
        stream.flow.pause_writing()  # until its data is framed: the streams with data take turns
        self._send_soon()

    def _send_soon(self) -> None:
        """Frame and write what is pending at the end of this read, or else once the loop has run every app
        ready now: the streams that answer together share the windows and leave in one write."""
        if not self._in_read and not self._send_scheduled:
            self._send_scheduled = True
            self.state.loop.call_soon(self._send_pending)

    def _send_pending(self) -> None:
        self._send_scheduled = False
        self._pump()
        self._flush()

    def _pump(self) -> None:
        """Send DATA from the streams that have some, a QUANTUM at a time each, while the connection
        window and the transport take it."""
        ready = self._ready
        h2conn = self.h2
        flow = self.flow
        unflushed = 0
        while ready and not flow.write_paused:
            stream = ready.popleft()
            try:
                sent = stream.send_some(h2conn, QUANTUM)
            except h2.exceptions.StreamClosedError:
                stream.drop_output()
                sent = 0
            self._written += sent
            unflushed += sent
            if unflushed >= FLUSH_AFTER:  # the transport sees large output as it grows, and may pause it
                unflushed = 0
                self._flush()
            if stream.has_output:
                if sent:
                    ready.append(stream)  # its next turn; without a window it waits for WINDOW_UPDATE
                continue
            stream.flow.resume_writing()
            if stream.ended:
                self._after_end(stream)

    def _after_end(self, stream: Http2Stream) -> None:
        """Our END_STREAM is out: a client still sending a body it need not finish is told so
        (RFC 9113 section 8.1); a stream whose app has returned is done."""
        if not stream.request_ended:
            if stream.cycle is not None:
                stream.cycle.on_disconnect()
            self._reset_id(stream.stream_id, ErrorCodes.NO_ERROR)
        if stream.cycle is None:
            self._forget(stream)

    def acknowledge(self, stream: Http2Stream, size: int) -> None:
        stream.unacked -= size
        try:
            self.h2.acknowledge_received_data(size, stream.stream_id)
        except h2.exceptions.ProtocolError:
            return
        self._send_soon()

    def reset(self, stream: Http2Stream, code: ErrorCodes) -> None:
        stream.drop_output()
        self._reset_id(stream.stream_id, code)
        if stream.cycle is None:
            self._forget(stream)
        self._send_soon()

    def _reset_id(self, sid: int, code: ErrorCodes) -> None:
        try:
            self.h2.reset_stream(sid, code)
        except h2.exceptions.ProtocolError:
            pass  # closed already

    def _forget(self, stream: Http2Stream) -> None:
        """The stream is done: its app returned and its response ended (or was reset)."""
        if stream.unacked:
            self.acknowledge(stream, stream.unacked)
        if self.streams.pop(stream.stream_id, None) is not None and not self.streams:
            if self._goaway_received:
                self._flush()
                self.transport.close()
            elif self._goaway_sent:
                self._flush()
                self._linger()
            else:
                self.timeouts.set_timeout(TimeoutReason.KEEP_ALIVE, self.state.clock())

    def _refuse(self, stream: Http2Stream, reason: RequestRejection) -> None:
        """Answer a request the app does not see (or no longer may answer) with its rejection."""
        logger.debug("Rejected HTTP/2 request from %s: %s", self.client, reason.name)
        cycle = stream.cycle
        if cycle is not None:
            cycle.on_disconnect()
            if cycle.response_started and stream.response_on_wire:
                self.reset(stream, ErrorCodes.CANCEL)
                return
            cycle.response_started = cycle.response_complete = True  # what the app sends now is dropped
        body = reason.message.encode()
        if self.state.access_log:
            self.state.access_format.write(
                AccessEntry(None, reason.status, len(body), 0.0, rejected=reason.name, client=self.client)
            )
        stream.start_response(reason.status, (_PLAIN_TEXT,), False)
        stream.send_body(body, False)  # (the stream is forgotten once it has ended, see _after_end)

    def _flush(self) -> None:
        data = self.h2.data_to_send()
        if data:
            transport = self.transport
            if not transport.is_closing():
                transport.write(data)

    # -- connection errors and shutdown ---------------------------------------------------------

    def _fail_connection(self, code: ErrorCodes, reason: bytes) -> None:
        """A connection error of ours (RFC 9113 section 5.4.1): GOAWAY with `code`, then close."""
        try:
            self.h2.close_connection(error_code=code, additional_data=reason)
        except h2.exceptions.ProtocolError:
            pass
        self._close_after_error()

    def _close_after_error(self) -> None:
        self._close_streams()
        data = self.h2.data_to_send()
        transport = self.transport
        if not transport.is_closing() and not self._lingering:
            if data:
                transport.write(data)
            self._linger()

    def _linger(self) -> None:
        """Shut the write side after the GOAWAY and read (dropping it) what the client still sends until it
        closes, or the LINGER timeout closes it: closing with unread input would reset the connection, and
        a reset can destroy the GOAWAY in the client's receive buffer before it is read (as HTTP/1.1's
        refusals linger, see http11.py)."""
        transport = self.transport
        self._lingering = True
        if not transport.can_write_eof():
            transport.close()
            return
        transport.write_eof()
        self.flow.resume_reading()
        self.timeouts.set_timeout(TimeoutReason.LINGER, self.state.clock())

    def _close_streams(self) -> None:
        self._ready.clear()
        for stream in self.streams.values():
            stream.drop_output()
            stream.flow.resume_writing()
            if stream.cycle is not None:
                stream.cycle.on_disconnect()

    def shutdown(self) -> None:
        """Graceful shutdown: GOAWAY with the last stream accepted (RFC 9113 section 6.8); those finish,
        then the connection closes. Written as a frame of its own: h2 would refuse to send the streams'
        remaining data after a GOAWAY of its own making."""
        self.closing = True
        if self._goaway_sent or self.transport.is_closing():
            return
        self._goaway_sent = True
        frame = GoAwayFrame(0)
        frame.last_stream_id = self._last_stream_id
        frame.error_code = ErrorCodes.NO_ERROR
        self._flush()
        self.transport.write(frame.serialize())
        if not self.streams:
            self._linger()  # what the client sent meanwhile must not reset the GOAWAY away

    def cancel_app(self) -> None:
        for stream in list(self.streams.values()):
            cycle = stream.cycle
            if cycle is not None and cycle.task is not None:
                cycle.task.cancel()

    def abort(self) -> None:
        self.transport.abort()

    # -- the heartbeat ---------------------------------------------------------------------------

    def on_tick(self, now: float) -> None:
        """Heartbeat: reset the flood budgets, hold each stream to the data rates, and run the
        connection's timeouts (keep-alive, request headers, keep-alive ping)."""
        if self.transport.is_closing():
            return
        if self._lingering:
            if self.timeouts.expired(now) is not None:
                self.transport.close()
            return
        self._budgets = [0, 0, 0, 0, 0]
        self._refused_while_full = 0
        self.data_frames = 0
        written, self._written = self._written, 0
        too_slow = self.timeouts.check_rates(now, 0, written, self.flow.write_paused)
        if too_slow is not None:
            logger.debug("Aborted %s: HTTP/2 output read slower than --limit-min-response-rate", self.client)
            self._ending(MIN_RESPONSE_DATA_RATE)
            self.abort()
            return
        for stream in list(self.streams.values()):
            self._check_stream(stream, now)
        self._check_connection(now)
        self._flush()

    def _check_stream(self, stream: Http2Stream, now: float) -> None:
        cycle = stream.cycle
        written, stream.bytes_written = stream.bytes_written, 0
        blocked = stream.has_output  # held back by a window or by the transport
        too_slow = stream.timeouts.check_rates(now, cycle.body_received if cycle is not None else 0, written, blocked)
        if too_slow is TimeoutReason.READ_DATA_RATE:
            self._refuse(stream, RequestRejection.REQUEST_BODY_TIMEOUT)
        elif too_slow is TimeoutReason.WRITE_DATA_RATE:
            logger.debug("Reset a stream of %s: its response was read too slowly", self.client)
            if cycle is not None:
                cycle.on_disconnect()
            self.reset(stream, ErrorCodes.CANCEL)

    def _check_connection(self, now: float) -> None:
        timeouts = self.timeouts
        buffer = self.h2.incoming_buffer
        if isinstance(buffer, HeaderBlockBuffer) and buffer.started:
            if timeouts.reason is not TimeoutReason.REQUEST_HEADERS:
                timeouts.set_timeout(TimeoutReason.REQUEST_HEADERS, now)
        elif timeouts.reason is TimeoutReason.REQUEST_HEADERS:
            timeouts.cancel_timeout()
            if not self.streams:
                timeouts.set_timeout(TimeoutReason.KEEP_ALIVE, now)
        expired = timeouts.expired(now)
        if expired is TimeoutReason.REQUEST_HEADERS:
            logger.debug("HTTP/2 request headers from %s did not arrive in time", self.client)
            self._ending(error_type(RequestRejection.REQUEST_HEADERS_TIMEOUT))
            self._fail_connection(ErrorCodes.PROTOCOL_ERROR, b"request headers timeout")
            return
        if expired is TimeoutReason.KEEP_ALIVE:
            self._ending(KEEP_ALIVE_TIMEOUT)
            self._goaway_sent = True
            self._fail_connection(ErrorCodes.NO_ERROR, b"idle")
            return
        self._keep_alive_ping(now)

    def _ending(self, why: str) -> None:
        """The metrics' error.type of the close that follows (as HttpConnection._ending)."""
        metrics = self.state.metrics
        if metrics is not None:
            metrics.connection_ending(self, why)

    def _keep_alive_ping(self, now: float) -> None:
        limits = self.service.limits
        if not limits.http2_keep_alive_ping_delay:
            return
        if self._received:
            self._received = False
            self._ping_sent = None
            self._last_heard = now
            return
        if self._ping_sent is not None:
            if now - self._ping_sent > limits.http2_keep_alive_ping_timeout:
                logger.debug("HTTP/2 keep-alive ping to %s unanswered", self.client)
                self._fail_connection(ErrorCodes.NO_ERROR, b"keep-alive ping timeout")
        elif now - self._last_heard >= limits.http2_keep_alive_ping_delay:
            self._ping_sent = now
            self.h2.ping(b"kestrel!")
