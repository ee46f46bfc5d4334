"""HTTP/1.1 requests read with h11 (pure Python). h11 only reads here; responses are written by the
shared writer, so this path answers exactly as the httptools one does.

h11 expects to take part in the response before it reads the next request. Since it never sees our
responses, each request gets a fresh `h11.Connection`, seeded with the bytes that followed the previous
request (`trailing_data`, public API), which is what makes pipelining work.
"""

from __future__ import annotations

import h11

from kestrelpy.protocols.http11 import HttpConnection
from kestrelpy.protocols.rejection import RequestRejection
from kestrelpy.state import ServerState

# Large enough for any head the shared limits allow; h11 answers 431 beyond it.
MAX_HEAD_BYTES = 64 * 1024


def _new_reader() -> h11.Connection:
    return h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)


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
    __slots__ = ("_reader",)

    def __init__(self, state: ServerState) -> None:
        super().__init__(state)
        self._reader = _new_reader()

    def feed(self, data: bytes) -> None:
        if self.rejected:
            return
        self._reader.receive_data(data)
        self._drain_events()

    def _drain_events(self) -> None:
        while not self.rejected:
            reader = self._reader
            try:
                event = reader.next_event()
            except h11.RemoteProtocolError as exc:
                self.on_reject(_rejection_for(exc))
                return
            event_type = type(event)
            if event_type is h11.Data:
                self.on_request_body(event.data)  # type: ignore[union-attr]
            elif event_type is h11.Request:
                self.on_request_head(
                    event.method,  # type: ignore[union-attr]
                    event.target,  # type: ignore[union-attr]
                    event.http_version,  # type: ignore[union-attr]
                    list(event.headers),  # type: ignore[union-attr]
                )
            elif event_type is h11.EndOfMessage:
                self.on_request_complete()
                self._next_reader(reader)
            else:  # NEED_DATA, PAUSED or ConnectionClosed: wait for bytes (or the close)
                return

    def _next_reader(self, reader: h11.Connection) -> None:
        leftover, closed = reader.trailing_data
        self._reader = _new_reader()
        if leftover:
            self._reader.receive_data(leftover)
        if closed:
            self._reader.receive_data(b"")
