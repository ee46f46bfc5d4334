"""HTTP/1.1 requests read with httptools (llhttp): its callbacks become HttpConnection's hooks."""

from __future__ import annotations

import httptools

from kestrelpy.protocols.http11 import HttpConnection
from kestrelpy.protocols.rejection import RequestRejection
from kestrelpy.state import ServerState


def _rejection_for(exc: httptools.HttpParserError) -> RequestRejection:
    # Only llhttp's "Invalid HTTP version"; "Expected CRLF after version" is plain malformed input.
    if str(exc).lower().startswith("invalid http version"):
        return RequestRejection.UNSUPPORTED_HTTP_VERSION
    return RequestRejection.MALFORMED_REQUEST


_VERSIONS = {"1.1": b"1.1", "1.0": b"1.0"}


class HttptoolsConnection(HttpConnection):
    __slots__ = ("_headers", "_parser", "_url")

    def __init__(self, state: ServerState) -> None:
        super().__init__(state)
        self._parser = httptools.HttpRequestParser(self)
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []

    def feed(self, data: bytes) -> None:
        while not self.rejected:
            try:
                self._parser.feed_data(data)
                return
            except httptools.HttpParserUpgrade as exc:
                # llhttp stops after a request asking to switch protocols. Upgrades are not
                # offered here, so the request is answered as plain HTTP and parsing goes on
                # with a fresh parser from where the old one stopped.
                offset = exc.args[0] if exc.args and isinstance(exc.args[0], int) else len(data)
                self._parser = httptools.HttpRequestParser(self)
                data = data[offset:]
                if not data:
                    return
            except httptools.HttpParserError as exc:
                self.on_reject(_rejection_for(exc))
                return

    # llhttp callbacks

    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = []

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        parser = self._parser
        version = parser.get_http_version()
        self.on_request_head(
            parser.get_method(), self._url, _VERSIONS.get(version) or version.encode("ascii"), self._headers
        )

    def on_body(self, body: bytes) -> None:
        self.on_request_body(body)

    def on_message_complete(self) -> None:
        self.on_request_complete()
