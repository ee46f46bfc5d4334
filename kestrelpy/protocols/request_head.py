"""What the HTTP/1.1 connection checks in a request head, as pure functions of the parsed head.

Both parser adapters hand the shared connection the same (method, target, version, header list); these
functions read it the same way whichever parser produced it, so a head is refused with the same answer
on both paths. Nothing here touches a transport.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from kestrelpy.protocols.rejection import RequestRejection

if TYPE_CHECKING:
    from kestrelpy.state import ServerState

# Request headers the connection itself looks at; the rest go to the app untouched. The forwarded ones
# are only noticed: a request from a trusted peer that carries one has its scope rewritten (proxy.py),
# and one that carries none pays nothing more for it than this lookup, which every field pays anyway.
_HOST, _CONTENT_LENGTH, _TRANSFER_ENCODING, _CONNECTION, _EXPECT, _TE, _CONTENT_TYPE, _FORWARDED = range(8)
_REQUEST_HEADERS = {
    b"host": _HOST,
    b"content-length": _CONTENT_LENGTH,
    b"transfer-encoding": _TRANSFER_ENCODING,
    b"connection": _CONNECTION,
    b"expect": _EXPECT,
    b"te": _TE,
    b"content-type": _CONTENT_TYPE,
    b"forwarded": _FORWARDED,
    b"x-forwarded-for": _FORWARDED,
    b"x-forwarded-proto": _FORWARDED,
    b"x-forwarded-host": _FORWARDED,
}


# RFC 9110 section 7.2: Host is uri-host [":" port]; uri-host is an IP-literal in brackets or a reg-name
# (RFC 3986 section 3.2.2: unreserved, pct-encoded and sub-delims characters). No userinfo, path or space.
_VALID_HOST = re.compile(rb"(?:\[[0-9A-Fa-f:.]+(?:%25[0-9A-Za-z._~%-]+)?\]|[0-9A-Za-z._~!$&'()*+,;=%-]*)(?::[0-9]*)?")
KNOWN_HOSTS_MAX = 256  # valid Host values remembered per server, so the check runs once per value
_INVALID_HOST = 1 << 16  # what an invalid Host value adds to the count of Host fields


def _host_weight(known_hosts: set[bytes], value: bytes) -> int:
    """1 for a valid Host value (remembered, so the next check is a set lookup), _INVALID_HOST otherwise."""
    if _VALID_HOST.fullmatch(value.rstrip(b" \t")) is None:  # llhttp leaves trailing OWS in values
        return _INVALID_HOST
    if len(known_hosts) < KNOWN_HOSTS_MAX:
        known_hosts.add(value)
    return 1


def _connection_tokens(value: bytes) -> set[bytes]:
    return {token.strip().lower() for token in value.split(b",")}


def is_http11(version: bytes) -> bool | None:
    """Whether a request is answered as HTTP/1.1 (True) or 1.0 (False); None for a version we refuse.
    A later HTTP/1 minor version is answered as 1.1, the highest we speak (RFC 9110 section 2.5)."""
    if version == b"1.0":
        return False
    return True if version[:2] == b"1." else None


def version_rejection(version: bytes) -> RequestRejection:
    # llhttp reports a request line without a version as 0.9, which h11 refuses as malformed.
    return RequestRejection.MALFORMED_REQUEST if version == b"0.9" else RequestRejection.UNSUPPORTED_HTTP_VERSION


def scan_headers(
    known_hosts: set[bytes], headers: list[tuple[bytes, bytes]], http11: bool
) -> tuple[bool, bool, bool, bool, int, int, bytes | None, bool, int, bool]:
    """One pass over the header fields the connection itself looks at. Returns (keep_alive,
    expect_continue, trailers accepted, upgrade asked, Host weight, Transfer-Encoding weight, the
    (first) Content-Length value or None, body declared empty, Content-Type count, a forwarded field
    present); the weights count fields, with a large step for a bad value. The length is handed back
    as found, so a body limit needs no second pass over the fields (see content_length)."""
    keep_alive = http11
    expect_continue = trailers = upgrade = forwarded = False
    hosts = codings = content_types = 0
    length: bytes | None = None
    empty_body = True
    for name, value in headers:
        kind = _REQUEST_HEADERS.get(name)
        if kind is None:
            continue
        if kind == _HOST:
            hosts += 1 if value in known_hosts else _host_weight(known_hosts, value)
        elif kind == _CONTENT_LENGTH:
            if length is None:
                length = value
            empty_body = empty_body and value.strip() == b"0"
        elif kind == _TRANSFER_ENCODING:
            # Only `chunked` is implemented; llhttp accepts "gzip, chunked", which h11 refuses.
            codings += 1 if value.strip().lower() == b"chunked" else 2
        elif kind == _CONNECTION:
            tokens = _connection_tokens(value)
            upgrade = upgrade or b"upgrade" in tokens
            if b"close" in tokens:
                keep_alive = False
            elif b"keep-alive" in tokens and not http11:
                keep_alive = True
        elif kind == _EXPECT:
            expect_continue = http11 and value.lower() == b"100-continue"
        elif kind == _CONTENT_TYPE:
            content_types += 1
        elif kind == _FORWARDED:
            forwarded = True
        else:
            trailers = b"trailers" in _connection_tokens(value)
    return keep_alive, expect_continue, trailers, upgrade, hosts, codings, length, empty_body, content_types, forwarded


def head_refusal(
    method: bytes, target: bytes, http11: bool, hosts: int, codings: int, length: bytes | None, content_types: int
) -> RequestRejection | None:
    """What a head is refused for on its framing, its Host or its semantics, if anything (the same
    answer whichever parser read it); `length` is scan_headers' Content-Length value."""
    if codings > 1 or (codings and length is not None):
        # RFC 9112 section 6.1 allows refusing Content-Length with Transfer-Encoding (a smuggling
        # vector); h11 would read such a body as chunked and keep the connection open.
        return RequestRejection.MALFORMED_REQUEST
    if hosts != 1 and (hosts or http11):
        # RFC 9112 section 3.2: 400 for a 1.1 request without Host and for any request with several;
        # RFC 9110 section 7.2: and for a Host value that is not uri-host [":" port].
        if hosts == 0:
            return RequestRejection.MISSING_HOST
        return RequestRejection.INVALID_HOST if hosts == _INVALID_HOST else RequestRejection.MULTIPLE_HOST
    if codings and not http11:
        # RFC 9112 section 6.1: an HTTP/1.0 message with Transfer-Encoding MUST be treated as having
        # faulty framing (a 1.0 client cannot have sent it: something on the way did), then closed.
        return RequestRejection.TRANSFER_ENCODING_IN_HTTP10
    if target == b"*" and method != b"OPTIONS":
        # RFC 9112 section 3.2.4: the asterisk-form is only for a server-wide OPTIONS request.
        return RequestRejection.INVALID_TARGET
    if content_types > 1:
        # RFC 9110 section 5.3: a field that is not a list must not repeat; two media types leave the
        # content's format ambiguous (and an app or proxy may pick either one).
        return RequestRejection.MULTIPLE_CONTENT_TYPE
    return None


# Fields a request's trailer section must not carry: RFC 9110 section 6.5.1 keeps out of trailers what
# has to be known before the content is processed, in these categories (RFC 7230 section 4.1.2 named
# the examples):
# - message framing (RFC 9112 section 6): Content-Length, Transfer-Encoding;
# - routing: Host (RFC 9110 section 7.2), Max-Forwards (section 7.6.2);
# - request modifiers, the controls (RFC 9110 sections 10.1.1, 10.1.4, 14.2; RFC 9111 sections 5.2,
#   5.4) and the conditionals (RFC 9110 section 13.1): Expect, TE, Range, Cache-Control, Pragma, If-*;
# - authentication (RFC 9110 section 11, RFC 6265): Authorization, Proxy-Authorization, Cookie, and
#   their response counterparts WWW-Authenticate, Proxy-Authenticate, Set-Cookie;
# - how to process the content: Content-Type, Content-Encoding, Content-Range, Trailer (section 6.6.2);
# - connection management (RFC 9110 sections 7.6.1 and 7.8), which acts on this connection before the
#   next request: Connection, Keep-Alive, Proxy-Connection, Upgrade.
# Response control data (Age, Expires, Location, Vary...) has no meaning in a request at all, and is left
# alone like any other field: trailers never reach the app (ASGI has no request trailers).
FORBIDDEN_TRAILERS = frozenset(
    (
        b"content-length", b"transfer-encoding", b"host", b"max-forwards", b"expect", b"te", b"range",
        b"cache-control", b"pragma", b"if-match", b"if-none-match", b"if-modified-since",
        b"if-unmodified-since", b"if-range", b"authorization", b"proxy-authorization", b"cookie",
        b"www-authenticate", b"proxy-authenticate", b"set-cookie", b"content-type", b"content-encoding",
        b"content-range", b"trailer", b"connection", b"keep-alive", b"proxy-connection", b"upgrade",
    )
)  # fmt: skip


def over_head_limits(
    state: ServerState, method: bytes, target: bytes, headers: list[tuple[bytes, bytes]]
) -> RequestRejection | None:
    """The head limit a complete head breaks, if any; sizes are counted the same whichever parser read it."""
    if len(method) + len(target) + 10 > state.max_line_size:  # METHOD SP target SP HTTP/x.y
        return RequestRejection.REQUEST_LINE_TOO_LONG
    if len(headers) > state.max_header_count:
        return RequestRejection.TOO_MANY_HEADERS
    if sum(len(name) + len(value) + 4 for name, value in headers) > state.max_headers_size:
        return RequestRejection.HEADERS_TOO_LARGE
    return None


def content_length(value: bytes) -> int:
    """A Content-Length value as a number (the parsers have already refused malformed or conflicting ones;
    h11 passes a list of equal values on as it came)."""
    try:
        return int(value.split(b",")[0])
    except ValueError:
        return 0
