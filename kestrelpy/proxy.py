"""Forwarded headers from a trusted reverse proxy: pure functions, the server's per-peer verdicts, and
an ASGI middleware for apps composed by hand.

A proxy in front of kestrelpy connects from its own address, so the app would see the proxy as the
client and `http` as the scheme. When the connecting peer is trusted (`--forwarded-allow-ips`:
IP addresses, CIDR networks, `unix` for Unix-socket peers, `*` for anyone), the scope is rewritten from
RFC 7239 `Forwarded` or, when that is absent, from `X-Forwarded-For`, `X-Forwarded-Proto` and
`X-Forwarded-Host`.

Which hop becomes the client: the address list is read right to left (each proxy appends the address
it received the connection from); trusted proxies are skipped and the first untrusted address is the
client. Everything left of it was written by the client itself and is never believed. A request from
an untrusted peer is passed through unchanged, whatever headers it carries.

The server applies this itself, without a middleware layer: each connection takes its peer's verdict
once, when it is made (PeerVerdicts, a dict of verdicts per address), and notices a forwarded field in
the pass over the request's fields it makes anyway (protocols/request_head.py, scan_headers). Where it
builds the scope of a request that carries one, from a trusted peer, it calls rewrite_scope. A request
without a forwarded field pays nothing for them, whoever its peer.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from kestrelpy.asgi import ASGIApp, Receive, Scope, Send

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
DEFAULT_TRUSTED = "127.0.0.0/8,::1,unix"
UNIX = "unix"


@dataclass(frozen=True, slots=True)
class TrustedPeers:
    """Who may set forwarded headers: networks, plus the `unix` and `*` keywords."""

    networks: tuple[IPNetwork, ...] = ()
    unix: bool = False
    everyone: bool = False

    def trusts(self, host: str | None) -> bool:
        """`host` is a peer address as the scope's `client` has it; None or a non-IP means a Unix peer."""
        if self.everyone:
            return True
        ip = _ip(host) if host else None
        if ip is None:
            return self.unix and not host_is_ip_like(host)
        return any(ip in net for net in self.networks)


def host_is_ip_like(host: str | None) -> bool:
    return bool(host) and _ip(host) is not None


def _ip(text: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if not text:
        return None
    text = text.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    try:
        ip = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped  # a dual-stack socket reports IPv4 peers as ::ffff:a.b.c.d
    return ip


def parse_trusted(text: str | Iterable[str]) -> TrustedPeers:
    """`--forwarded-allow-ips`: comma-separated IPs, CIDRs, `unix` and `*`. Raises ValueError."""
    items = text.split(",") if isinstance(text, str) else list(text)
    networks: list[IPNetwork] = []
    unix = everyone = False
    for raw in items:
        item = raw.strip()
        if not item:
            continue
        if item == "*":
            everyone = True
        elif item.lower() in (UNIX, "unix:"):
            unix = True
        else:
            try:
                networks.append(ipaddress.ip_network(item.strip("[]"), strict=False))
            except ValueError:
                raise ValueError(f"{item!r} is not an IP address, a CIDR network, 'unix' or '*'") from None
    return TrustedPeers(tuple(networks), unix, everyone)


@dataclass(frozen=True, slots=True)
class Forwarded:
    """What the proxy chain says about the original request; None where it says nothing usable."""

    client: tuple[str, int] | None = None
    scheme: str | None = None
    host: str | None = None


# -- header parsing -----------------------------------------------------------------------------


def _split_list(values: Iterable[str]) -> list[str]:
    """Comma-separated header values, all occurrences in order, blanks dropped."""
    return [part.strip() for value in values for part in value.split(",") if part.strip()]


def _unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        inner = value[1:-1]
        out, escaped = [], False
        for ch in inner:
            if escaped:
                out.append(ch)
                escaped = False
            elif ch == "\\":
                escaped = True
            else:
                out.append(ch)
        return "".join(out)
    return value


def _split_forwarded_elements(value: str) -> list[str]:
    """Split on commas outside quoted strings."""
    parts, current, quoted, escaped = [], [], False, False
    for ch in value:
        if escaped:
            current.append(ch)
            escaped = False
            continue
        if ch == "\\" and quoted:
            escaped = True
        elif ch == '"':
            quoted = not quoted
        elif ch == "," and not quoted:
            parts.append("".join(current))
            current = []
            continue
        current.append(ch)
    parts.append("".join(current))
    return [p.strip() for p in parts if p.strip()]


def _split_pairs(element: str) -> dict[str, str]:
    """`for=1.2.3.4;proto=https` -> {"for": "1.2.3.4", "proto": "https"} (semicolons outside quotes)."""
    pairs: dict[str, str] = {}
    current: list[str] = []
    quoted = False
    chunks: list[str] = []
    for ch in element:
        if ch == '"':
            quoted = not quoted
        if ch == ";" and not quoted:
            chunks.append("".join(current))
            current = []
            continue
        current.append(ch)
    chunks.append("".join(current))
    for chunk in chunks:
        name, sep, value = chunk.partition("=")
        if sep:
            pairs.setdefault(name.strip().lower(), _unquote(value))
    return pairs


def parse_node(value: str) -> tuple[str, int] | None:
    """A `for=` node or an X-Forwarded-For item: `1.2.3.4`, `1.2.3.4:5`, `[2001:db8::1]:5`, `2001:db8::1`.
    Obfuscated identifiers (`_hidden`) and `unknown` give None: they cannot be a client address."""
    value = value.strip()
    if not value:
        return None
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    elif value.count(":") == 1:
        host, _, port_text = value.partition(":")
    else:
        host, port_text = value, ""
    ip = _ip(host)
    if ip is None:
        return None
    # (isdigit() alone takes `²`, which int() refuses: a value decoded as latin-1 may hold one)
    # (at most five digits before int(): past 4,300 digits int() raises rather than converting)
    port = int(port_text) if len(port_text) <= 5 and port_text.isascii() and port_text.isdigit() else 0
    if port > 65535:
        port = 0
    return str(ip), port


def _scheme(value: str | None) -> str | None:
    if value is None:
        return None
    value = value.strip().lower()
    return value if value in ("http", "https") else None


def _valid_host(value: str | None) -> str | None:
    if not value:
        return None
    value = value.strip()
    if not value or any(c in value for c in " \t\r\n\0/\\@,;\"'"):
        return None
    return value


Hop = tuple[tuple[str, int] | None, dict[str, str]]


def _rightmost_untrusted(entries: Sequence[Hop], trusted: TrustedPeers) -> int:
    """The index of the hop to believe: walk right to left past trusted proxies."""
    index = len(entries) - 1
    while index > 0:
        node = entries[index][0]
        if node is None or not trusted.trusts(node[0]):
            break
        index -= 1
    return index


def from_forwarded(values: Sequence[str], trusted: TrustedPeers) -> Forwarded | None:
    """RFC 7239 `Forwarded`. None when there is no usable element."""
    elements = [_split_pairs(e) for e in _split_forwarded_elements(",".join(values))]
    if not elements:
        return None
    entries = [(parse_node(e["for"]) if "for" in e else None, e) for e in elements]
    index = _rightmost_untrusted(entries, trusted)
    node = entries[index][0]
    # proto/host describe the request as the proxy that wrote this element received it; if that element
    # does not say, the nearest trusted element to its right does.
    scheme = host = None
    for _, later in entries[index:][::-1]:
        scheme = _scheme(later.get("proto")) or scheme
        host = _valid_host(later.get("host")) or host
    return Forwarded(node, scheme, host)


def from_x_forwarded(
    for_values: Sequence[str], proto_values: Sequence[str], host_values: Sequence[str], trusted: TrustedPeers
) -> Forwarded | None:
    """`X-Forwarded-For` (+ `-Proto`, `-Host`). Proto and host lists line up with the For list when they
    have as many items; otherwise the rightmost item (the one our own proxy set) is used."""
    hops = _split_list(for_values)
    protos = _split_list(proto_values)
    hosts = _split_list(host_values)
    if not hops and not protos and not hosts:
        return None
    client: tuple[str, int] | None = None
    index = -1
    if hops:
        entries: list[Hop] = [(parse_node(h), {}) for h in hops]
        index = _rightmost_untrusted(entries, trusted)
        client = entries[index][0]
    scheme = _scheme(protos[index] if hops and len(protos) == len(hops) else (protos[-1] if protos else None))
    host = _valid_host(hosts[index] if hops and len(hosts) == len(hops) else (hosts[-1] if hosts else None))
    return Forwarded(client, scheme, host)


def forwarded_info(headers: Iterable[tuple[bytes, bytes]], trusted: TrustedPeers) -> Forwarded | None:
    """What the headers say, preferring RFC 7239 `Forwarded` over the X-Forwarded-* family."""
    forwarded: list[str] = []
    xff: list[str] = []
    xfp: list[str] = []
    xfh: list[str] = []
    for name, value in headers:
        if name == b"forwarded":
            forwarded.append(value.decode("latin-1"))
        elif name == b"x-forwarded-for":
            xff.append(value.decode("latin-1"))
        elif name == b"x-forwarded-proto":
            xfp.append(value.decode("latin-1"))
        elif name == b"x-forwarded-host":
            xfh.append(value.decode("latin-1"))
    if forwarded:
        info = from_forwarded(forwarded, trusted)
        if info is not None:
            return info
    return from_x_forwarded(xff, xfp, xfh, trusted)


def apply_forwarded(scope: Scope, trusted: TrustedPeers) -> Scope:
    """The scope as the app should see it: rewritten (in place) when the peer is trusted, else untouched."""
    client = scope.get("client")
    if trusted.trusts(client[0] if client else None):
        rewrite_scope(scope, trusted)
    return scope


_FORWARDED_NAMES = frozenset({b"forwarded", b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host"})


def rewrite_forwarded(scope: Scope, trusted: TrustedPeers) -> None:
    """For a request from a trusted peer: rewrite the scope in place if it carries a forwarded header.
    The pass over the header names is all that a request without one pays."""
    for name, _ in scope["headers"]:
        if name in _FORWARDED_NAMES:
            rewrite_scope(scope, trusted)
            return


def rewrite_scope(scope: Scope, trusted: TrustedPeers) -> None:
    """Rewrite the scope in place from its forwarded headers: for a request from a trusted peer, known
    to carry one (rewrite_forwarded looks for one first)."""
    info = forwarded_info(scope.get("headers", ()), trusted)
    if info is None:
        return
    # Rewritten in place, so the access log (which holds the same scope) names the real client too.
    if info.client is not None:
        scope["client"] = info.client
    if info.scheme is not None:
        if scope["type"] == "websocket":
            scope["scheme"] = "wss" if info.scheme == "https" else "ws"
        else:
            scope["scheme"] = info.scheme
    if info.host is not None:
        host = info.host.encode("latin-1")
        scope["headers"] = [(n, v) for n, v in scope["headers"] if n != b"host"] + [(b"host", host)]


class PeerVerdicts(dict[str | None, TrustedPeers | None]):
    """Whether a peer address (None: a Unix-socket peer) may set forwarded headers: `verdicts[peer]` is
    the TrustedPeers to read them with, or None. An address not seen yet is decided and remembered;
    bounded, since peers are few behind a proxy and many without one."""

    __slots__ = ("trusted",)

    def __init__(self, trusted: TrustedPeers) -> None:
        super().__init__()
        self.trusted = trusted

    def __missing__(self, peer: str | None) -> TrustedPeers | None:
        verdict = self.trusted if self.trusted.trusts(peer) else None
        if len(self) < 4096:
            self[peer] = verdict
        return verdict

    def for_client(self, client: tuple[str, int] | None) -> TrustedPeers | None:
        """The verdict for a scope's `client`."""
        return self[client[0] if client else None]


class ProxyHeadersMiddleware:
    """Wrap an ASGI app so http and websocket scopes see the original client, scheme and host: what the
    server does itself (see the module docstring), for an app composed by hand or served by another
    server. Per request this costs a dict lookup and, for a trusted peer, one pass over the header names."""

    __slots__ = ("_verdicts", "app", "trusted")

    def __init__(self, app: ASGIApp, trusted: TrustedPeers | str = DEFAULT_TRUSTED) -> None:
        self.app = app
        self.trusted = parse_trusted(trusted) if isinstance(trusted, str) else trusted
        self._verdicts = PeerVerdicts(self.trusted)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            trusted = self._verdicts.for_client(scope.get("client"))
            if trusted is not None:
                rewrite_forwarded(scope, trusted)
        await self.app(scope, receive, send)
