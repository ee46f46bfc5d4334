"""HTTP/1.1 requests read with h11 (pure Python). h11 only reads here; responses are written by the
shared writer, so this path answers exactly as the httptools one does.

h11 expects to take part in the response before it reads the next request. Since it never sees our
responses, each request gets a fresh `h11.Connection`, seeded with the bytes that followed the previous
request (`trailing_data`, public API), which is what makes pipelining work.

h11 is more tolerant than llhttp in places RFC 9112 leaves open (bare LF, obs-fold, unknown methods,
control bytes in values, repeated Content-Length). Each head is screened before h11 reads it, so this
path refuses what the httptools path refuses, with the same answer, and about as early.
"""

from __future__ import annotations

import re

import h11

from kestrelpy.protocols.http11 import HttpConnection
from kestrelpy.protocols.rejection import RequestRejection
from kestrelpy.protocols.screen import ChunkScreen, strict_head
from kestrelpy.state import ServerState

# h11's own bound on an incomplete head, above the shared limit: the shared connection counts head
# bytes per read and refuses first (with the same answer as on the httptools path); this slack covers
# the one read it may count late.
READ_SLACK = 1024 * 1024
_SPACE_RUN = re.compile(rb" {2,}")


def _new_reader(max_head: int) -> h11.Connection:
    return h11.Connection(h11.SERVER, max_incomplete_event_size=max_head)


def _rejection_for(exc: h11.RemoteProtocolError) -> RequestRejection:
    if exc.error_status_hint == 431:
        return RequestRejection.HEADERS_TOO_LARGE
    if exc.error_status_hint == 505:
        return RequestRejection.UNSUPPORTED_HTTP_VERSION
    # h11 checks Host itself; name the same reasons the shared check gives on the other path.
    # Match h11's exact messages: others may quote a request line that happens to contain "Host".
    message = str(exc)
    if message == "Found multiple Host: headers":
        return RequestRejection.MULTIPLE_HOST
    if message == "Missing mandatory Host: header":
        return RequestRejection.MISSING_HOST
    return RequestRejection.MALFORMED_REQUEST


class H11Connection(HttpConnection):
    __slots__ = ("_chunks", "_delivered", "_head_checked", "_max_head", "_reader")

    def __init__(self, state: ServerState) -> None:
        super().__init__(state)
        self._max_head = state.max_head_size + READ_SLACK
        self._reader = _new_reader(self._max_head)
        self._head_checked = False
        self._chunks: ChunkScreen | None = None  # while a chunked body is being read
        self._delivered = 0  # chunk data bytes handed on so far

    def feed(self, data: bytes) -> None:
        if self.ignore_input:
            return
        chunks = self._chunks
        if chunks is not None:
            chunks.feed(data)
        self._reader.receive_data(data)
        self._drain_events()

    def _drain_events(self) -> None:
        while not self.ignore_input:
            reader = self._reader
            if not self._head_checked:
                if not self._screen_head():
                    return
                reader = self._reader
            try:
                event = reader.next_event()
            except h11.RemoteProtocolError as exc:
                # Trailer fields read before the error count first, as llhttp hands them on before it stops.
                if self._chunks is None or not self._count_trailers(self._chunks):
                    self.on_reject(_rejection_for(exc))
                return
            event_type = type(event)
            chunks = self._chunks
            if chunks is not None:
                if chunks.failed and self._stop_at_bad_chunk(chunks, event):
                    return
                if event_type is h11.Data:
                    self._delivered += len(event.data)  # type: ignore[union-attr]
            if event_type is h11.Data:
                self.on_request_body(event.data)  # type: ignore[union-attr]
            elif event_type is h11.Request:
                headers = list(event.headers)  # type: ignore[union-attr]
                self.on_request_head(
                    event.method,  # type: ignore[union-attr]
                    event.target,  # type: ignore[union-attr]
                    event.http_version,  # type: ignore[union-attr]
                    headers,
                )
                if not self.ignore_input and (b"transfer-encoding", b"chunked") in headers:
                    # (the shared connection has refused any other coding)
                    chunks = self._chunks = ChunkScreen()
                    self._delivered = 0
                    chunks.feed(reader.trailing_data[0])
            elif event_type is h11.EndOfMessage:
                if chunks is not None and self._count_trailers(chunks):
                    return
                self.on_request_complete()
                self._next_reader(reader)
            else:  # NEED_DATA, PAUSED or ConnectionClosed: wait for bytes (or the close)
                if chunks is not None:
                    self._count_trailers(chunks)  # the body before them has been handed on by now
                return

    def _count_trailers(self, chunks: ChunkScreen) -> bool:
        """Count the trailer fields the screen has read so far against the limits; True once refused."""
        trailers = chunks.trailers
        while trailers and not self.ignore_input:
            name, value = trailers.pop(0)
            self.on_request_trailer(name, value)
        return self.ignore_input

    def _stop_at_bad_chunk(self, chunks: ChunkScreen, event: object) -> bool:
        """The chunk framing went wrong further on: pass on the body bytes before that point, then refuse.
        True when the request has been refused."""
        allowed = chunks.data_seen - self._delivered
        if type(event) is h11.Data:
            data = event.data
            if len(data) < allowed:
                return False  # (counted by the caller)
            if allowed > 0:
                self.on_request_body(data[:allowed])
        # Trailer fields llhttp would have handed on before the bad byte are counted (and maybe refused) first.
        if not self._count_trailers(chunks):
            self.on_reject(RequestRejection.MALFORMED_REQUEST)
        return True

    def _screen_head(self) -> bool:
        """Check the head being read against what llhttp accepts. False when there is nothing to read
        yet (h11 would only say so, at some cost) or once the head has been refused."""
        buffered, closed = self._reader.trailing_data
        if not buffered:
            return False
        if buffered[:1] in (b"\r", b"\n"):
            # llhttp skips CR and LF before a request line (RFC 9112 section 2.2 lets a server ignore
            # empty lines there); h11 refuses a lone CR. Start the reader again without them.
            buffered = buffered.lstrip(b"\r\n")
            self._restart_reader(buffered, closed)
            if not buffered:
                return False
        line_end = buffered.find(b"\r\n")
        if line_end > 0 and buffered.find(b"  ", 0, line_end) >= 0:
            # llhttp reads runs of spaces between method, target and version as one (RFC 9112 section 3
            # lets a server parse on whitespace boundaries); h11 refuses them. Read them as llhttp does.
            buffered = _SPACE_RUN.sub(b" ", buffered[:line_end]) + buffered[line_end:]
            self._restart_reader(buffered, closed)
        end = buffered.find(b"\r\n\r\n")
        if end >= 0:
            self._head_checked = True
            head = buffered[: end + 2]
        else:
            head = buffered[:-1] if buffered.endswith(b"\r") else buffered
        if strict_head(head, complete=end >= 0):
            return True
        if self.http2 is not None and self.switch_to_http2(buffered):  # the screen refuses the preface's PRI
            return False
        self.on_reject(RequestRejection.MALFORMED_REQUEST)
        return False

    def _restart_reader(self, buffered: bytes, closed: bool) -> None:
        """Read the current head again from `buffered`, as the peer should have sent it."""
        self._reader = _new_reader(self._max_head)
        if buffered:
            self._reader.receive_data(buffered)
        if closed:
            self._reader.receive_data(b"")

    def _next_reader(self, reader: h11.Connection) -> None:
        leftover, closed = reader.trailing_data
        self._reader = _new_reader(self._max_head)
        self._head_checked = False
        self._chunks = None
        if leftover:
            self._reader.receive_data(leftover)
        if closed:
            self._reader.receive_data(b"")
