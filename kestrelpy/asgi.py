"""ASGI types and the per-request scope builder."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import unquote_to_bytes, urlsplit

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

ASGI_VERSION = "3.0"
HTTP_SPEC_VERSION = "2.4"
LIFESPAN_SPEC_VERSION = "2.0"


def split_target(target: bytes) -> tuple[bytes, bytes] | None:
    """(raw path, query) of a request target, or None when it is not a form RFC 9112 section 3.2 allows.

    Absolute-form (`http://host/p?q`, used towards proxies) gives the app only its path and query.
    """
    if target[:1] == b"/":
        path, _, query = target.partition(b"?")
        return path, query
    if target == b"*":
        return target, b""
    try:
        parts = urlsplit(target.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        return None
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        return None
    return (parts.path or "/").encode("ascii"), parts.query.encode("ascii")


# Most traffic asks for a handful of paths: remember recent decodings (bounded; cleared when full).
_DECODED: dict[bytes, str] = {}
_DECODED_MAX = 1024
# The hot path looks a path up itself and calls decode_path only when it is missing.
decoded_path = _DECODED.get


def decode_path(raw_path: bytes) -> str:
    """The percent-decoded UTF-8 path the ASGI `path` key carries."""
    path = _DECODED.get(raw_path)
    if path is None:
        if b"%" in raw_path:
            path = unquote_to_bytes(raw_path).decode("utf-8", "replace")
        else:
            path = raw_path.decode("utf-8", "replace")
        if len(_DECODED) >= _DECODED_MAX:
            _DECODED.clear()
        _DECODED[raw_path] = path
    return path
