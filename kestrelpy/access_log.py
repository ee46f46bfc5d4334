"""Access log lines: the presets and `--access-log-format` templates, compiled once at config time.

Pure formatting: the protocols hand over an `AccessEntry` once a response is complete (or cut short, or
a request was refused) and log the string `AccessFormat.render` returns. Every value that comes from the
client is escaped, so a crafted path or header cannot forge log lines or smuggle terminal escapes
(CVE-2020-7694 class):

- `default` keeps the server's own line and its `unicode_escape` escaping;
- `common`, `combined` and templates escape as nginx does: bytes below 0x20, from 0x7f, `"` and `\\`
  become `\\xHH`;
- `json` leaves it to `json.dumps`, which writes one line of ASCII.
"""

from __future__ import annotations

import json
import logging
import re
import string
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

PRESETS = ("default", "common", "combined", "json")

# What a template may name; `header:NAME` and `response_header:NAME` take a field name after the colon.
FIELDS = {
    "client": "the client's address",
    "client_port": "the client's port",
    "method": "the request method",
    "path": "the raw request path",
    "query": "the query string",
    "request": "the request line: METHOD TARGET PROTOCOL",
    "protocol": "HTTP/1.1 or HTTP/1.0",
    "status": "the response status",
    "bytes": "response body bytes sent",
    "duration_ms": "milliseconds from the request head's arrival",
    "time": "local time, as in the Common Log Format",
    "time_iso": "local time, ISO 8601",
    "referer": "the Referer request header",
    "user_agent": "the User-Agent request header",
    "rejected": "why the request was refused, or -",
    "aborted": "why the response was cut short, or -",
    "header": "header:NAME, a request header",
    "response_header": "response_header:NAME, a response header",
}
_NAMED = ("header", "response_header")

# The status logged for a request whose client left before any response began (nginx's convention).
CLIENT_CLOSED = 499

_Headers = Sequence[tuple[bytes, bytes]]


class AccessEntry:
    """One finished exchange, as the protocol saw it. Built only when the access log is on."""

    __slots__ = ("aborted", "bytes", "duration", "rejected", "response_headers", "scope", "status", "websocket")

    def __init__(
        self,
        scope: Mapping[str, Any] | None,
        status: int,
        nbytes: int,
        duration: float,
        *,
        rejected: str | None = None,
        aborted: str | None = None,
        response_headers: _Headers = (),
        websocket: bool = False,
        client: tuple[str, int] | None = None,
    ) -> None:
        # A refused request has no scope: only its client is known.
        self.scope: Mapping[str, Any] = scope if scope is not None else {"client": client}
        self.status = status or CLIENT_CLOSED
        self.bytes = nbytes
        self.duration = duration  # seconds
        self.rejected = rejected
        self.aborted = aborted
        self.response_headers = response_headers
        self.websocket = websocket


# -- escaping ------------------------------------------------------------------------------------------

_UNSAFE = re.compile(r'[\x00-\x1f\x7f-\U0010ffff"\\]')


def _hex(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else match.group().encode("unicode_escape").decode("ascii")


def escape(text: str) -> str:
    """nginx's escaping of logged variables: control bytes, non-ASCII, `"` and `\\` as `\\xHH`."""
    return _UNSAFE.sub(_hex, text)


def _unicode_escape(text: str) -> str:
    return text.encode("unicode_escape").decode("ascii")


# -- what an entry says ----------------------------------------------------------------------------------


def _latin1(value: object) -> str:
    return value.decode("latin-1") if isinstance(value, bytes) else str(value)


def _header(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> str | None:
    for key, value in headers:
        if key.lower() == name:
            return value.decode("latin-1")
    return None


def _request_header(entry: AccessEntry, name: bytes) -> str | None:
    headers = entry.scope.get("headers")
    return _header(headers, name) if isinstance(headers, list) else None


def _client(entry: AccessEntry) -> tuple[str, str]:
    client = entry.scope.get("client")
    if isinstance(client, tuple) and len(client) == 2:
        return str(client[0]), str(client[1])
    return "-", "-"


def _method(entry: AccessEntry) -> str | None:
    method = entry.scope.get("method")
    return None if method is None else str(method)


def _path(entry: AccessEntry) -> str | None:
    raw = entry.scope.get("raw_path")
    return None if raw is None else _latin1(raw)


def _query(entry: AccessEntry) -> str:
    return _latin1(entry.scope.get("query_string") or b"")


def _protocol(entry: AccessEntry) -> str | None:
    version = entry.scope.get("http_version")
    return None if version is None else f"HTTP/{version}"


def _target(entry: AccessEntry) -> str | None:
    path = _path(entry)
    if path is None:
        return None
    query = _query(entry)
    return f"{path}?{query}" if query else path


def _request_line(entry: AccessEntry) -> str | None:
    method, target, protocol = _method(entry), _target(entry), _protocol(entry)
    if method is None or target is None:
        return None  # refused before its request line was read whole
    return f"{method} {target} {protocol}"


_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def clf_time(now: float) -> str:
    """`10/Oct/2000:13:55:36 -0700`: nginx's $time_local, English month names whatever the locale.
    Formatted once a second: every line of that second shares it."""
    second = int(now)
    cached = _clf_cache.get(second)
    if cached is None:
        cached = _format_clf(second)
        _clf_cache.clear()
        _clf_cache[second] = cached
    return cached


_clf_cache: dict[int, str] = {}


def _format_clf(now: float) -> str:
    t = time.localtime(now)
    offset = t.tm_gmtoff or 0
    sign = "-" if offset < 0 else "+"
    hours, minutes = divmod(abs(offset) // 60, 60)
    return (
        f"{t.tm_mday:02d}/{_MONTHS[t.tm_mon - 1]}/{t.tm_year}:{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}"
        f" {sign}{hours:02d}{minutes:02d}"
    )


def iso_time(now: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(now))


def _duration_ms(entry: AccessEntry) -> str:
    return f"{entry.duration * 1000:.3f}"


# -- the presets -----------------------------------------------------------------------------------------


def _default(entry: AccessEntry) -> str:
    """The server's own line: `host:port - "GET /p?q HTTP/1.1" 200`, plus why when refused or cut short."""
    client = entry.scope.get("client")
    who = f"{client[0]}:{client[1]}" if isinstance(client, tuple) else "-"
    if entry.websocket:
        line = f'{who} - "WebSocket {_unicode_escape(_target(entry) or "-")}" {entry.status}'
    else:
        request = _request_line(entry)
        line = f'{who} - "{_unicode_escape(request) if request else "-"}" {entry.status}'
    if entry.rejected:
        line += f" rejected: {entry.rejected}"
    if entry.aborted:
        line += f" aborted: {entry.aborted}"
    return line


def _common(entry: AccessEntry) -> str:
    """`$remote_addr - $remote_user [$time_local] "$request" $status $body_bytes_sent`"""
    request = _request_line(entry)
    return (
        f'{escape(_client(entry)[0])} - - [{clf_time(time.time())}] "{escape(request) if request else "-"}"'
        f" {entry.status} {entry.bytes}"
    )


def _quoted_header(entry: AccessEntry, name: bytes) -> str:
    value = _request_header(entry, name)
    return escape(value) if value else "-"  # nginx writes "-" for an empty variable


def _combined(entry: AccessEntry) -> str:
    """common + `"$http_referer" "$http_user_agent"`"""
    referer = _quoted_header(entry, b"referer")
    agent = _quoted_header(entry, b"user-agent")
    return f'{_common(entry)} "{referer}" "{agent}"'


def _json(entry: AccessEntry) -> str:
    record: dict[str, object] = {
        "time": iso_time(time.time()),
        "client": _client(entry)[0],
        "method": _method(entry),
        "path": _path(entry),
        "query": _query(entry),
        "protocol": _protocol(entry),
        "status": entry.status,
        "bytes": entry.bytes,
        "duration_ms": round(entry.duration * 1000, 3),
        "referer": _request_header(entry, b"referer"),
        "user_agent": _request_header(entry, b"user-agent"),
    }
    if entry.websocket:
        record["websocket"] = True
    if entry.rejected:
        record["rejected"] = entry.rejected
    if entry.aborted:
        record["aborted"] = entry.aborted
    return json.dumps(record)  # ensure_ascii: control characters become \uXXXX, the line stays one


_PRESETS: dict[str, Callable[[AccessEntry], str]] = {
    "default": _default,
    "common": _common,
    "combined": _combined,
    "json": _json,
}


# -- templates -------------------------------------------------------------------------------------------

_Part = Callable[[AccessEntry], str]


def _or_dash(value: str | None) -> str:
    return escape(value) if value else "-"


_SIMPLE: dict[str, _Part] = {
    "client": lambda e: escape(_client(e)[0]),
    "client_port": lambda e: _client(e)[1],
    "method": lambda e: _or_dash(_method(e)),
    "path": lambda e: _or_dash(_path(e)),
    "query": lambda e: _or_dash(_query(e)),
    "request": lambda e: _or_dash(_request_line(e)),
    "protocol": lambda e: _or_dash(_protocol(e)),
    "status": lambda e: str(e.status),
    "bytes": lambda e: str(e.bytes),
    "duration_ms": _duration_ms,
    "time": lambda e: clf_time(time.time()),
    "time_iso": lambda e: iso_time(time.time()),
    "referer": lambda e: _or_dash(_request_header(e, b"referer")),
    "user_agent": lambda e: _or_dash(_request_header(e, b"user-agent")),
    "rejected": lambda e: e.rejected or "-",
    "aborted": lambda e: e.aborted or "-",
}


def _literal(text: str) -> _Part:
    return lambda e: text


def _named_part(kind: str, name: str) -> _Part:
    key = name.strip().lower().encode("latin-1")
    if kind == "header":
        return lambda e: _or_dash(_request_header(e, key))
    return lambda e: _or_dash(_header(e.response_headers, key))


def _field_list() -> str:
    return ", ".join(f"{{{name}}}" if name not in _NAMED else f"{{{name}:NAME}}" for name in FIELDS)


def _template_part(field: str, spec: str, conversion: str | None) -> _Part:
    if conversion is not None:
        raise ValueError(f"{{{field}!{conversion}}}: conversions are not supported")
    if field in _NAMED:
        if not spec.strip():
            raise ValueError(f"{{{field}:NAME}} needs a header name")
        try:
            return _named_part(field, spec)
        except UnicodeEncodeError:
            raise ValueError(f"{{{field}:{spec}}}: a header name is ASCII") from None
    part = _SIMPLE.get(field)
    if part is None or spec:
        raise ValueError(f"unknown field {{{field}{':' + spec if spec else ''}}}; the fields are: {_field_list()}")
    return part


def _compile_template(template: str) -> tuple[list[_Part], bool]:
    parts: list[_Part] = []
    wants_response_headers = False
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:  # an unmatched brace
        raise ValueError(f"{exc}; write {{{{ and }}}} for literal braces") from None
    for literal, field, spec, conversion in parsed:
        if literal:
            parts.append(_literal(literal))
        if field is None:
            continue
        if not field:
            raise ValueError(f"an empty {{}} names no field; the fields are: {_field_list()}")
        parts.append(_template_part(field, spec or "", conversion))
        wants_response_headers = wants_response_headers or field == "response_header"
    if not any(field for _, field, _, _ in parsed):
        raise ValueError(f"a template names at least one field, or is one of {', '.join(PRESETS)}")
    return parts, wants_response_headers


_logger = logging.getLogger("kestrelpy.access")


@dataclass(frozen=True, slots=True)
class AccessFormat:
    """A compiled format: `render(entry)` gives the line; `wants_response_headers` says whether the
    protocol must keep the response headers for it (only a template naming one does)."""

    spec: str
    render: Callable[[AccessEntry], str]
    wants_response_headers: bool = False

    def write(self, entry: AccessEntry) -> None:
        """One line on the `kestrelpy.access` logger (the one place every protocol writes its lines)."""
        if _logger.isEnabledFor(logging.INFO):
            _logger.info(self.render(entry))


def compile_format(spec: str) -> AccessFormat:
    """A preset name or a template; ValueError naming the fields when the template is wrong."""
    preset = _PRESETS.get(spec)
    if preset is not None:
        return AccessFormat(spec, preset)
    parts, wants_response_headers = _compile_template(spec)

    def render(entry: AccessEntry) -> str:
        return "".join([part(entry) for part in parts])

    return AccessFormat(spec, render, wants_response_headers)
