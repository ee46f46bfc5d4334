"""Malformed requests: answered before the app sees them, then the connection closes, the same bytes on
both parsers."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest

Start = Callable[..., Any]

DATE_VALUE = re.compile(rb"(?im)^(date: )[^\r\n]*")
AFTER = b"GET /after HTTP/1.1\r\nHost: t\r\n\r\n"  # sent behind a bad request: must never reach the app

MALFORMED = {
    "garbage": b"GARBAGE\r\n\r\n",
    "binary": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",  # a TLS hello on the plain port
    "header-without-colon": b"GET / HTTP/1.1\r\nHost: t\r\nBad Header\r\n\r\n",
    "space-before-colon": b"GET / HTTP/1.1\r\nHost : t\r\n\r\n",
    "nul-in-header": b"GET / HTTP/1.1\r\nHost: t\r\nX: a\x00b\r\n\r\n",
    "missing-host": b"GET / HTTP/1.1\r\n\r\n",
    "two-hosts": b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    "content-length-and-chunked": (
        b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    ),
    "conflicting-content-lengths": b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nx",
    "negative-content-length": b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: -1\r\n\r\n",
    "unknown-transfer-coding": b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip\r\n\r\n",
    "coding-list": b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
    "relative-target": b"GET foo HTTP/1.1\r\nHost: t\r\n\r\n",
    "control-char-in-target": b"GET /a\x1b[31m HTTP/1.1\r\nHost: t\r\n\r\n",
    "space-in-target": b"GET /a b HTTP/1.1\r\nHost: t\r\n\r\n",
    "non-http-scheme": b"GET ftp://x/ HTTP/1.1\r\nHost: t\r\n\r\n",
    "http-0.9-line": b"GET /\r\n\r\n",
    "http-0.9": b"GET / HTTP/0.9\r\nHost: t\r\n\r\n",
    # Host values that are not uri-host [":" port] (RFC 9110 section 7.2).
    "host-with-space": b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n",
    "host-with-path": b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n",
    "host-with-userinfo": b"GET / HTTP/1.1\r\nHost: user@a\r\n\r\n",
    "host-unclosed-bracket": b"GET / HTTP/1.1\r\nHost: [::1\r\n\r\n",
    "host-bad-port": b"GET / HTTP/1.1\r\nHost: a:8x\r\n\r\n",
    "host-http10": b"GET / HTTP/1.0\r\nHost: a b\r\n\r\n",
}

UNSUPPORTED_VERSION = {
    "http-2.0": b"GET / HTTP/2.0\r\nHost: t\r\n\r\n",
    "http-3.0": b"GET / HTTP/3.0\r\nHost: t\r\n\r\n",
}


def make_app(calls: list[str], read_body: bool = False) -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        calls.append(scope["path"])
        more_body = read_body
        while more_body:
            message = await receive()
            more_body = message.get("more_body", False)
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})

    return app


def answers(
    serve_app: Start, raw_client: Start, loop_kind: str, wire: bytes, read_body: bool = False
) -> tuple[dict[str, bytes], list[str]]:
    """The raw bytes each parser sends back for `wire` (Date value masked) up to the close."""
    calls: list[str] = []
    out = {}
    for http in ("httptools", "h11"):
        live = serve_app(make_app(calls, read_body), loop_kind=loop_kind, http=http)
        client = raw_client(live.port)
        client.send(wire)
        out[http] = DATE_VALUE.sub(rb"\1<date>", client.read_until_close())
    return out, calls


@pytest.mark.parametrize("wire", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_request_gets_400_and_close_identically(
    serve_app: Start, raw_client: Start, loop_kind: str, wire: bytes
) -> None:
    out, calls = answers(serve_app, raw_client, loop_kind, wire)
    assert out["httptools"] == out["h11"]
    assert out["h11"].startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert b"\r\nconnection: close\r\n" in out["h11"]
    head, _, body = out["h11"].partition(b"\r\n\r\n")
    assert b"content-length: %d\r\n" % len(body) in head + b"\r\n"
    assert calls == []


@pytest.mark.parametrize("wire", UNSUPPORTED_VERSION.values(), ids=UNSUPPORTED_VERSION.keys())
def test_unsupported_version_gets_505_identically(
    serve_app: Start, raw_client: Start, loop_kind: str, wire: bytes
) -> None:
    out, calls = answers(serve_app, raw_client, loop_kind, wire)
    assert out["httptools"] == out["h11"]
    assert out["h11"].startswith(b"HTTP/1.1 505 HTTP Version Not Supported\r\n")
    assert calls == []


VALID_HOSTS = [b"", b"example.com", b"example.com:8080", b"127.0.0.1:80", b"[::1]:8000", b"[fe80::1%25eth0]"]


@pytest.mark.parametrize("host", VALID_HOSTS)
def test_valid_host_values_are_served(running_server: Start, raw_client: Start, host: bytes) -> None:
    calls: list[str] = []
    live = running_server(make_app(calls))
    client = raw_client(live.port)
    client.send(b"GET /h HTTP/1.1\r\nHost: " + host + b"\r\n\r\n")
    assert client.read_response().status == 200
    assert calls == ["/h"]


def test_later_http1_minor_version_is_served_as_1_1(serve_app: Start, raw_client: Start, loop_kind: str) -> None:
    """RFC 9110 section 2.5: a request with a higher minor version is answered as the highest we speak."""
    seen: list[str] = []
    for http in ("httptools", "h11"):

        async def app(scope: dict[str, Any], receive: Any, send: Any, name: str = http) -> None:
            if scope["type"] == "http":
                seen.append(f"{name} {scope['http_version']}")
                await send({"type": "http.response.start", "status": 204, "headers": []})
                await send({"type": "http.response.body", "body": b""})

        live = serve_app(app, loop_kind=loop_kind, http=http)
        client = raw_client(live.port)
        client.send(b"GET / HTTP/1.2\r\nHost: t\r\n\r\n")
        response = client.read_response()
        assert (response.status, response.version) == (204, "HTTP/1.1")
        assert response.header("connection") is None  # kept alive, as for 1.1
    assert seen == ["httptools 1.1", "h11 1.1"]


# RFC 9112 lets a server either tolerate or refuse these; h11 tolerates them, llhttp refuses, and so do we
# on both paths (a lenient reading next to a strict proxy is how requests get smuggled).
TOLERABLE_BUT_REFUSED = {
    # obs-fold (RFC 9112 section 5.2).
    "obs-fold": b"GET / HTTP/1.1\r\nHost: t\r\nX: a\r\n b\r\nConnection: close\r\n\r\n",
    # bare LF as a line end (RFC 9112 section 2.2), everywhere, once, or only before the final CRLF.
    "bare-lf": b"GET / HTTP/1.1\nHost: t\nConnection: close\n\n",
    "one-bare-lf": b"GET / HTTP/1.1\r\nHost: t\nX: y\r\n\r\n",
    "bare-lf-before-end": b"GET / HTTP/1.1\r\nHost: t\n\r\n",
    # repeated identical lengths (RFC 9110 section 8.6).
    "two-content-lengths": (
        b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\nContent-Length: 1\r\nConnection: close\r\n\r\nx"
    ),
    "content-length-list": b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 1,1\r\nConnection: close\r\n\r\nx",
}


@pytest.mark.parametrize("wire", TOLERABLE_BUT_REFUSED.values(), ids=TOLERABLE_BUT_REFUSED.keys())
def test_tolerable_syntax_is_refused_alike(serve_app: Start, raw_client: Start, loop_kind: str, wire: bytes) -> None:
    out, calls = answers(serve_app, raw_client, loop_kind, wire + AFTER)
    assert out["httptools"] == out["h11"]
    assert out["h11"].startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert calls == []


# Regression cases named after the advisories they come from: each is refused with 400 and a close by
# both parsers, and the request sent after it never reaches the app.
ADVISORIES = {
    # Transfer-Encoding obfuscation (llhttp): a coding list, a lookalike coding, obs-fold inside TE.
    "CVE-2022-32213-chunked-identity": (
        b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n"
    ),
    "CVE-2022-32213-xchunked": b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
    "CVE-2022-32214-bare-lf-header": b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 0\nX: y\r\n\r\n",
    "CVE-2022-32215-obs-fold-transfer-encoding": (
        b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n , identity\r\n\r\n0\r\n\r\n"
    ),
    "CVE-2022-32215-te-twice": (
        b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    ),
    # A space before Content-Length turns it into an obs-fold continuation of the header above.
    "CVE-2024-27982-space-before-content-length": b"POST / HTTP/1.1\r\nHost: t\r\n Content-Length: 3\r\n\r\nabc",
    # Content-Length spellings that some parsers read as a number.
    "content-length-plus": b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: +3\r\n\r\nabc",
    "content-length-space-inside": b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 1 2\r\n\r\nabc",
    "content-length-hex": b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 0x3\r\n\r\nabc",
    "content-length-overflow": (b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 99999999999999999999999\r\n\r\nabc"),
    # Chunk terminators other than CRLF after the data (h11 before 0.16 accepted any two bytes).
    "CVE-2025-43859-chunk-terminator": (
        b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcXX0\r\n\r\n"
    ),
    "CVE-2025-43859-lf-after-chunk": (
        b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\n0\r\n\r\n"
    ),
    "CVE-2025-43859-lf-after-size": (
        b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3\nabc\r\n0\r\n\r\n"
    ),
    # Bytes that some consumers treat as line breaks must not split a header: they are refused.
    "CVE-2026-44546-vertical-tab": b"GET / HTTP/1.1\r\nHost: t\r\nX: a\x0bHost: evil\r\n\r\n",
    "CVE-2026-44546-form-feed": b"GET / HTTP/1.1\r\nHost: t\r\nX: a\x0cHost: evil\r\n\r\n",
    "CVE-2026-44546-file-separator": b"GET / HTTP/1.1\r\nHost: t\r\nX: a\x1cHost: evil\r\n\r\n",
    "CVE-2026-44546-group-separator": b"GET / HTTP/1.1\r\nHost: t\r\nX: a\x1dHost: evil\r\n\r\n",
    "CVE-2026-44546-record-separator": b"GET / HTTP/1.1\r\nHost: t\r\nX: a\x1eHost: evil\r\n\r\n",
    "delete-in-value": b"GET / HTTP/1.1\r\nHost: t\r\nX: a\x7fb\r\n\r\n",
    "bare-cr": b"GET / HTTP/1.1\r\nHost: t\rX: y\r\n\r\n",
}


@pytest.mark.parametrize("wire", ADVISORIES.values(), ids=ADVISORIES.keys())
def test_advisory_regressions_are_refused_alike(
    serve_app: Start, raw_client: Start, loop_kind: str, wire: bytes
) -> None:
    out, calls = answers(serve_app, raw_client, loop_kind, wire + AFTER, read_body=True)
    assert out["httptools"] == out["h11"]
    assert out["h11"].startswith(b"HTTP/1.1 400 Bad Request\r\n"), out["h11"][:80]
    assert b"\r\nconnection: close\r\n" in out["h11"]
    assert "/after" not in calls


# Chunked framing h11 tolerates and llhttp refuses: the h11 path follows the chunk lines itself to
# refuse them too.
CHUNK_ODDITIES = {
    "space-after-chunk-size": b"3 \r\nabc\r\n0\r\n\r\n",
    "bare-cr-in-chunk-extension": b"3;a\rb\r\nabc\r\n0\r\n\r\n",
    "bare-lf-after-last-chunk": b"3\r\nabc\r\n0\r\n\n",
    "chunk-size-overflow": b"fffffffffffffffffff\r\nabc\r\n0\r\n\r\n",
    "space-before-extension": b"3 ;a\r\nabc\r\n0\r\n\r\n",
    "quoted-extension-name": b'3;"q"\r\nabc\r\n0\r\n\r\n',
    "obs-fold-in-trailer": b"3\r\nabc\r\n0\r\nX: a\r\n b\r\n\r\n",
    "space-before-trailer-colon": b"3\r\nabc\r\n0\r\nX : a\r\n\r\n",
    # BWS in chunk extensions (RFC 9112 section 7.1.1 allows it; RFC 9110 section 5.6.3 says a sender
    # MUST NOT generate it, and llhttp refuses it)
    "space-after-extension-semicolon": b"3; a\r\nabc\r\n0\r\n\r\n",
    "space-around-extension-equals": b"3;a = b\r\nabc\r\n0\r\n\r\n",
    "escaped-closing-quote": b'3;a="b\\"\r\nabc\r\n0\r\n\r\n',
    "text-after-quoted-extension": b'3;a="b"c\r\nabc\r\n0\r\n\r\n',
    "delete-in-quoted-extension": b'3;a="\x7f"\r\nabc\r\n0\r\n\r\n',
}


@pytest.mark.parametrize("chunks", CHUNK_ODDITIES.values(), ids=CHUNK_ODDITIES.keys())
def test_chunk_line_oddities_are_refused_alike(
    serve_app: Start, raw_client: Start, loop_kind: str, chunks: bytes
) -> None:
    calls: list[str] = []
    out = {}
    for http in ("httptools", "h11"):
        live = serve_app(make_app(calls, read_body=True), loop_kind=loop_kind, http=http, keep_alive_timeout=0.5)
        client = raw_client(live.port, timeout=2)
        client.send(b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks + AFTER)
        out[http] = DATE_VALUE.sub(rb"\1<date>", client.read_until_close())
    assert out["httptools"] == out["h11"]
    assert out["h11"].startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert "/after" not in calls


ACCEPTED_CHUNKS = {
    "extension": b"3;a=b\r\nabc\r\n0\r\n\r\n",
    "quoted-extension-value": b'3;a="b c"\r\nabc\r\n0\r\n\r\n',
    "leading-zeros": b"00000000000000003\r\nabc\r\n0\r\n\r\n",
    "extension-on-last-chunk": b"3\r\nabc\r\n0;e\r\n\r\n",
    "trailer": b"3\r\nabc\r\n0\r\nX-Sum: 1\r\n\r\n",
    "upper-case-hex": b"A\r\n0123456789\r\n0\r\n\r\n",
    # RFC 9112 section 7.1.1: chunk-ext-name [ "=" chunk-ext-val ], chunk-ext-val = token / quoted-string
    "extension-name-only": b"5;last\r\nhello\r\n0\r\n\r\n",
    "quoted-extension-with-semicolon-and-escaped-quote": b'6;a="q;uo\\"ted";b\r\nhello!\r\n0\r\n\r\n',
    "quoted-extension-with-htab-and-equals": b'3;a="x=\ty"\r\nabc\r\n0\r\n\r\n',
    "several-extensions": b'3;a;b=c;d="e \\\\ f"\r\nabc\r\n0;x="\\;"\r\n\r\n',
}


@pytest.mark.parametrize("chunks", ACCEPTED_CHUNKS.values(), ids=ACCEPTED_CHUNKS.keys())
def test_valid_chunk_lines_are_read_alike(serve_app: Start, raw_client: Start, loop_kind: str, chunks: bytes) -> None:
    calls: list[str] = []
    out: dict[str, tuple[object, ...]] = {}
    for http in ("httptools", "h11"):
        live = serve_app(make_app(calls, read_body=True), loop_kind=loop_kind, http=http)
        client = raw_client(live.port)
        client.send(b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks)
        response = client.read_response()
        out[http] = (response.status, response.body)
        client.send(client.request_bytes("GET", "/after"))  # the chunked body ended where it should
        out[http] += (client.read_response().status,)
    assert out["httptools"] == out["h11"] == (200, b"ok", 200)
    assert calls == ["/", "/after", "/", "/after"]


# Heads both parsers read and the connection refuses on their meaning: 400 and close, the app never called.
REFUSED_HEADS = {
    # RFC 9112 section 6.1: Transfer-Encoding in HTTP/1.0 means faulty framing.
    "http10-transfer-encoding": (
        b"POST / HTTP/1.0\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        b"An HTTP/1.0 request must not carry Transfer-Encoding.",
    ),
    "http10-transfer-encoding-keep-alive": (
        b"POST / HTTP/1.0\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"An HTTP/1.0 request must not carry Transfer-Encoding.",
    ),
    # RFC 9112 section 3.2.4: asterisk-form is only for OPTIONS.
    "asterisk-get": (b"GET * HTTP/1.1\r\nHost: t\r\n\r\n", b"Invalid request target."),
    "asterisk-head": (b"HEAD * HTTP/1.1\r\nHost: t\r\n\r\n", b"Invalid request target."),
    "asterisk-post": (b"POST * HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n", b"Invalid request target."),
    # RFC 9110 section 5.3: Content-Type is not a list, so it must not repeat.
    "two-content-types": (
        b"POST / HTTP/1.1\r\nHost: t\r\nContent-Type: text/plain\r\nContent-Type: application/json\r\n"
        b"Content-Length: 2\r\n\r\n{}",
        b"A request must carry only one Content-Type header.",
    ),
    "two-equal-content-types": (
        b"GET / HTTP/1.1\r\nHost: t\r\ncontent-type: a/b\r\nX: y\r\nCONTENT-TYPE: a/b\r\n\r\n",
        b"A request must carry only one Content-Type header.",
    ),
}


@pytest.mark.parametrize(("wire", "message"), REFUSED_HEADS.values(), ids=REFUSED_HEADS.keys())
def test_heads_refused_on_their_meaning_get_400_identically(
    serve_app: Start, raw_client: Start, loop_kind: str, wire: bytes, message: bytes
) -> None:
    out, calls = answers(serve_app, raw_client, loop_kind, wire + AFTER)
    assert out["httptools"] == out["h11"]
    assert out["h11"].startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert b"\r\nconnection: close\r\n" in out["h11"]
    assert out["h11"].endswith(b"\r\n\r\n" + message)
    assert calls == []


def test_options_asterisk_is_served(serve_app: Start, raw_client: Start, loop_kind: str) -> None:
    calls: list[str] = []
    for http in ("httptools", "h11"):
        client = raw_client(serve_app(make_app(calls), loop_kind=loop_kind, http=http).port)
        client.send(b"OPTIONS * HTTP/1.1\r\nHost: t\r\n\r\n")
        assert client.read_response().status == 200
    assert calls == ["*", "*"]


# RFC 9110 section 6.5.1: fields that must not be trailers (framing, routing, request modifiers,
# authentication, content format; see request_head.FORBIDDEN_TRAILERS), one or two of each kind, in any case.
FORBIDDEN_TRAILER_FIELDS = [
    b"Content-Length: 0",
    b"Transfer-Encoding: chunked",
    b"Host: evil",
    b"TE: trailers",
    b"If-Match: *",
    b"Authorization: Basic eDp5",
    b"cookie: a=b",
    b"Content-Type: text/plain",
    b"Trailer: X",
    b"Connection: close",
]


@pytest.mark.parametrize(
    "field", FORBIDDEN_TRAILER_FIELDS, ids=[f.partition(b":")[0].decode() for f in FORBIDDEN_TRAILER_FIELDS]
)
def test_forbidden_trailer_fields_are_refused_identically(
    serve_app: Start, raw_client: Start, loop_kind: str, field: bytes
) -> None:
    """400 and close on both parsers; the app, called for the head, sees the client go away instead of
    the end of the body, and the request behind it never reaches it."""
    seen: list[dict[str, Any]] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        while True:
            message = await receive()
            seen.append({"path": scope["path"], **message})
            if message["type"] == "http.disconnect" or not message.get("more_body"):
                break
        if message["type"] == "http.request":
            await send({"type": "http.response.start", "status": 204, "headers": []})
            await send({"type": "http.response.body", "body": b""})

    out = {}
    for http in ("httptools", "h11"):
        client = raw_client(serve_app(app, loop_kind=loop_kind, http=http).port)
        client.send(
            b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nX-Sum: 1\r\n"
            + field
            + b"\r\n\r\n"
            + AFTER
        )
        out[http] = DATE_VALUE.sub(rb"\1<date>", client.read_until_close())
    assert out["httptools"] == out["h11"]
    assert out["h11"].startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert b"\r\nconnection: close\r\n" in out["h11"]
    assert out["h11"].endswith(b"\r\n\r\nA field that is not allowed in a trailer section was sent in one.")
    # (the body may or may not have come before the disconnect, depending on how the reads fell)
    assert [message["type"] for message in seen].count("http.disconnect") == 2
    assert not any(message["type"] == "http.request" and not message.get("more_body") for message in seen)
    assert all(message["path"] == "/" for message in seen)


def test_next_line_byte_stays_inside_its_header_value(running_server: Start, raw_client: Start) -> None:
    """\x85 is obs-text, allowed in a value (RFC 9110 section 5.5): it reaches the app inside that one
    value and never splits it into a second header (the CVE-2026-44546 class)."""
    seen: list[list[tuple[bytes, bytes]]] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            seen.append(list(scope["headers"]))
            await send({"type": "http.response.start", "status": 204, "headers": []})
            await send({"type": "http.response.body", "body": b""})

    live = running_server(app)
    client = raw_client(live.port)
    client.send(b"GET / HTTP/1.1\r\nHost: t\r\nX: a\x85Host: evil\r\n\r\n")
    assert client.read_response().status == 204
    assert seen == [[(b"host", b"t"), (b"x", b"a\x85Host: evil")]]


def test_bad_request_after_good_ones_is_answered_in_order(running_server: Start, raw_client: Start) -> None:
    calls: list[str] = []
    live = running_server(make_app(calls))
    client = raw_client(live.port)
    client.send(
        client.request_bytes("GET", "/one") + client.request_bytes("GET", "/two") + b"GET / HTTP/1.1\r\nBad\r\n\r\n"
    )
    first, second, third = (client.read_response() for _ in range(3))
    assert (first.status, second.status, third.status) == (200, 200, 400)
    assert third.header("connection") == "close"
    assert client.wait_closed()
    assert calls == ["/one", "/two"]


@pytest.mark.parametrize(
    "chunks", [b"zz\r\n", b"3\r\nabc\r\nnot-hex\r\n", b"3\r\nabcdef\r\n"], ids=["size", "second-size", "overrun"]
)
def test_bad_chunked_body_is_answered_identically(
    serve_app: Start, raw_client: Start, loop_kind: str, chunks: bytes
) -> None:
    wire = b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks
    # The app reads the body before answering (an app that answers first may already have sent a 200
    # with `connection: close` by the time the bad chunk is parsed).
    out, _ = answers(serve_app, raw_client, loop_kind, wire, read_body=True)
    assert out["httptools"] == out["h11"]
    assert out["h11"].startswith(b"HTTP/1.1 400 Bad Request\r\n")


def test_bad_chunked_body_mid_request_disconnects_the_app(running_server: Start, raw_client: Start) -> None:
    seen: list[dict[str, Any]] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        while True:
            message = await receive()
            seen.append(message)
            if message["type"] == "http.disconnect" or not message.get("more_body"):
                break

    live = running_server(app)
    client = raw_client(live.port)
    client.send(b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\nnot-hex\r\n")
    response = client.read_response()
    assert response.status == 400
    assert client.wait_closed()
    assert seen[-1] == {"type": "http.disconnect"}
    assert b"".join(m.get("body", b"") for m in seen) in (b"", b"abc")


def test_request_trailers_never_reach_the_header_list(running_server: Start, raw_client: Start) -> None:
    """Trailer fields of a chunked request are dropped on both paths: llhttp reports them like header
    fields, and they must not be appended to the scope the app (and the proxy middleware) already read.
    (Fields that must not be trailers at all, such as Host, are refused: see above.)"""
    seen: list[list[tuple[bytes, bytes]]] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        seen.append(list(scope["headers"]))
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    live = running_server(app)
    client = raw_client(live.port)
    client.send(
        b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n"
        b"X-Forwarded-Host: evil\r\n\r\n" + client.request_bytes("GET", "/next")
    )
    assert client.read_response().status == 204
    assert client.read_response().status == 204
    assert seen == [[(b"host", b"t"), (b"transfer-encoding", b"chunked")], [(b"host", b"test")]]
