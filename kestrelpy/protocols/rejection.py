"""Why a request was refused before it reached the app, and what to answer.

Both parser adapters report malformed input as one of these reasons, so a bad request gets the same
status and body whichever parser read it (the idea of Kestrel's RequestRejectionReason).
"""

from __future__ import annotations

from enum import Enum, unique


@unique  # one member per cause: equal values would silently make two causes one
class RequestRejection(Enum):
    """A named cause with the status it is answered with and a short plain-text explanation."""

    MALFORMED_REQUEST = (400, "Invalid HTTP request.")
    MISSING_HOST = (400, "An HTTP/1.1 request must carry a Host header.")
    MULTIPLE_HOST = (400, "An HTTP/1.1 request must carry only one Host header.")
    INVALID_TARGET = (400, "Invalid request target.")
    INVALID_HOST = (400, "Invalid Host header.")
    MULTIPLE_CONTENT_TYPE = (400, "A request must carry only one Content-Type header.")
    TRANSFER_ENCODING_IN_HTTP10 = (400, "An HTTP/1.0 request must not carry Transfer-Encoding.")
    FORBIDDEN_TRAILER = (400, "A field that is not allowed in a trailer section was sent in one.")
    HEADERS_TOO_LARGE = (431, "Request header fields too large.")
    TOO_MANY_HEADERS = (431, "Too many request header fields.")
    REQUEST_LINE_TOO_LONG = (414, "Request line too long.")
    BODY_TOO_LARGE = (413, "Request body too large.")
    REQUEST_HEADERS_TIMEOUT = (408, "The request head did not arrive in time.")
    REQUEST_BODY_TIMEOUT = (408, "The request body did not arrive in time.")
    TOO_MANY_CONNECTIONS = (503, "Too many open connections; try again later.")
    UNSUPPORTED_HTTP_VERSION = (505, "HTTP version not supported.")

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        self.message = message
