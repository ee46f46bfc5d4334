"""Forwarded headers: who is trusted, which hop becomes the client, and that spoofing changes nothing."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from kestrelpy.asgi import Scope
from kestrelpy.proxy import (
    Forwarded,
    PeerVerdicts,
    ProxyHeadersMiddleware,
    apply_forwarded,
    forwarded_info,
    parse_node,
    parse_trusted,
    rewrite_forwarded,
)

LOOPBACK = parse_trusted("127.0.0.0/8,::1,unix")


def scope(client: tuple[str, int] | None, *headers: tuple[str, str], kind: str = "http") -> dict[str, Any]:
    return {
        "type": kind,
        "scheme": "http" if kind == "http" else "ws",
        "client": client,
        "server": ("127.0.0.1", 8000),
        "headers": [(b"host", b"backend:8000")] + [(n.encode(), v.encode()) for n, v in headers],
    }


def host_of(s: Scope) -> bytes:
    return next(v for n, v in s["headers"] if n == b"host")


def test_trusted_parsing() -> None:
    trusted = parse_trusted(" 10.0.0.0/8, 192.168.1.5 ,2001:db8::/32, unix ")
    assert trusted.trusts("10.1.2.3") and trusted.trusts("192.168.1.5") and trusted.trusts("2001:db8::7")
    assert not trusted.trusts("192.168.1.6") and not trusted.trusts("8.8.8.8")
    assert trusted.trusts(None)  # a Unix-socket peer has no address
    assert trusted.trusts("::ffff:10.0.0.1")  # IPv4 seen through a dual-stack socket
    assert parse_trusted("*").trusts("8.8.8.8")
    assert not parse_trusted("127.0.0.1").trusts(None)
    with pytest.raises(ValueError, match="not an IP"):
        parse_trusted("10.0.0.0/8,nonsense")


@pytest.mark.parametrize(
    ("text", "node"),
    [
        ("203.0.113.7", ("203.0.113.7", 0)),
        ("203.0.113.7:4711", ("203.0.113.7", 4711)),
        ("[2001:db8::1]:4711", ("2001:db8::1", 4711)),
        ("2001:db8::1", ("2001:db8::1", 0)),
        ("[2001:db8::1]", ("2001:db8::1", 0)),
        ("unknown", None),
        ("_hidden", None),
        ("", None),
        ("1.2.3.4:99999", ("1.2.3.4", 0)),
        ("1.2.3.4:\u00b2", ("1.2.3.4", 0)),  # a digit to isdigit(), not to int()
        ("1.2.3.4:" + "9" * 5000, ("1.2.3.4", 0)),  # int() refuses more than 4,300 digits
        ("1.2.3.4:00080", ("1.2.3.4", 80)),
    ],
)
def test_parse_node(text: str, node: tuple[str, int] | None) -> None:
    assert parse_node(text) == node


def test_x_forwarded_from_a_trusted_proxy() -> None:
    s = apply_forwarded(
        scope(
            ("127.0.0.1", 5000),
            ("x-forwarded-for", "203.0.113.7"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "example.com"),
        ),
        LOOPBACK,
    )
    assert s["client"] == ("203.0.113.7", 0)
    assert s["scheme"] == "https"
    assert host_of(s) == b"example.com"


def test_rightmost_untrusted_hop_is_the_client() -> None:
    # client-supplied junk, the real client, then two proxies of ours
    trusted = parse_trusted("127.0.0.1,10.0.0.0/8")
    s = apply_forwarded(
        scope(("127.0.0.1", 1), ("x-forwarded-for", "6.6.6.6, 203.0.113.7"), ("x-forwarded-for", "10.0.0.2")),
        trusted,
    )
    assert s["client"] == ("203.0.113.7", 0)


def test_every_hop_trusted_gives_the_leftmost() -> None:
    s = apply_forwarded(scope(("127.0.0.1", 1), ("x-forwarded-for", "127.0.0.5, 127.0.0.6")), LOOPBACK)
    assert s["client"] == ("127.0.0.5", 0)


def test_spoofed_headers_from_an_untrusted_peer_change_nothing() -> None:
    original = scope(
        ("198.51.100.9", 40000),
        ("x-forwarded-for", "1.1.1.1"),
        ("x-forwarded-proto", "https"),
        ("x-forwarded-host", "evil.example"),
        ("forwarded", "for=2.2.2.2;proto=https;host=evil.example"),
    )
    assert apply_forwarded(original, LOOPBACK) is original
    assert original["client"] == ("198.51.100.9", 40000) and original["scheme"] == "http"


def test_unix_socket_peer_is_trusted_only_with_unix() -> None:
    headers = (("x-forwarded-for", "203.0.113.7"), ("x-forwarded-proto", "https"))
    assert apply_forwarded(scope(None, *headers), LOOPBACK)["client"] == ("203.0.113.7", 0)
    untouched = scope(None, *headers)
    assert apply_forwarded(untouched, parse_trusted("127.0.0.1")) is untouched


def test_rfc7239_forwarded() -> None:
    s = apply_forwarded(
        scope(
            ("::1", 1),
            ("forwarded", 'for="[2001:db8:cafe::17]:4711";proto=https;host="api.example.com"'),
        ),
        LOOPBACK,
    )
    assert s["client"] == ("2001:db8:cafe::17", 4711)
    assert s["scheme"] == "https"
    assert host_of(s) == b"api.example.com"


def test_rfc7239_chain_and_precedence_over_x_forwarded() -> None:
    trusted = parse_trusted("127.0.0.1,10.0.0.0/8")
    s = apply_forwarded(
        scope(
            ("127.0.0.1", 1),
            ("forwarded", "for=6.6.6.6;proto=http, for=198.51.100.1;proto=https"),
            ("forwarded", "For=10.0.0.3"),
            ("x-forwarded-for", "9.9.9.9"),
        ),
        trusted,
    )
    assert s["client"] == ("198.51.100.1", 0)
    assert s["scheme"] == "https"


def test_rfc7239_obfuscated_client_stops_the_walk() -> None:
    info = forwarded_info([(b"forwarded", b"for=_hidden, for=127.0.0.1")], LOOPBACK)
    assert info == Forwarded(None, None, None)


def test_forwarded_quoted_commas_and_semicolons() -> None:
    info = forwarded_info([(b"forwarded", b'for="1.2.3.4";host="a,b;c", for=5.6.7.8')], parse_trusted("*"))
    # every hop trusted: the leftmost is the client; the bad host value is ignored
    assert info is not None and info.client == ("1.2.3.4", 0) and info.host is None


def test_proto_list_lines_up_with_the_for_list() -> None:
    trusted = parse_trusted("127.0.0.1,10.0.0.2")
    s = apply_forwarded(
        scope(("127.0.0.1", 1), ("x-forwarded-for", "203.0.113.7, 10.0.0.2"), ("x-forwarded-proto", "https, http")),
        trusted,
    )
    assert s["client"] == ("203.0.113.7", 0) and s["scheme"] == "https"


def test_invalid_values_are_ignored() -> None:
    s = apply_forwarded(
        scope(
            ("127.0.0.1", 1),
            ("x-forwarded-for", "not-an-ip"),
            ("x-forwarded-proto", "javascript"),
            ("x-forwarded-host", "a b"),
        ),
        LOOPBACK,
    )
    assert s["client"] == ("127.0.0.1", 1) and s["scheme"] == "http" and host_of(s) == b"backend:8000"


def test_websocket_scheme() -> None:
    s = apply_forwarded(scope(("127.0.0.1", 1), ("x-forwarded-proto", "https"), kind="websocket"), LOOPBACK)
    assert s["scheme"] == "wss"


def test_no_headers_no_copy() -> None:
    original = scope(("127.0.0.1", 1))
    assert apply_forwarded(original, LOOPBACK) is original


def test_rewrite_only_when_a_forwarded_header_is_there() -> None:
    plain = scope(("127.0.0.1", 1), ("x-request-id", "1"))
    headers = plain["headers"]
    rewrite_forwarded(plain, LOOPBACK)
    assert plain["client"] == ("127.0.0.1", 1) and plain["headers"] is headers
    forwarded = scope(("127.0.0.1", 1), ("x-forwarded-host", "shop.example"), ("x-forwarded-for", "203.0.113.7"))
    rewrite_forwarded(forwarded, LOOPBACK)  # the peer's trust is the caller's verdict
    assert forwarded["client"] == ("203.0.113.7", 0) and host_of(forwarded) == b"shop.example"


def test_peer_verdicts_are_remembered_and_bounded() -> None:
    verdicts = PeerVerdicts(parse_trusted("10.0.0.0/8,unix"))
    assert verdicts.for_client(("10.1.2.3", 5)) is verdicts.trusted
    assert verdicts.for_client(("192.0.2.1", 5)) is None
    assert verdicts.for_client(None) is verdicts.trusted  # a Unix-socket peer
    assert dict(verdicts) == {"10.1.2.3": verdicts.trusted, "192.0.2.1": None, None: verdicts.trusted}
    for i in range(5000):
        verdicts.for_client((f"192.0.{i // 256}.{i % 256}", 1))
    assert len(verdicts) == 4096
    assert verdicts.for_client(("10.9.9.9", 1)) is verdicts.trusted  # decided still, not remembered
    assert "10.9.9.9" not in verdicts


def test_middleware_rewrites_http_and_passes_lifespan() -> None:
    asyncio.run(_middleware_run())


async def _middleware_run() -> None:
    seen: list[dict[str, Any]] = []

    async def app(s: Any, receive: Any, send: Any) -> None:
        seen.append(s)

    middleware = ProxyHeadersMiddleware(app)
    await middleware(scope(("127.0.0.1", 1), ("x-forwarded-for", "203.0.113.7")), None, None)  # type: ignore[arg-type]
    lifespan = {"type": "lifespan"}
    await middleware(lifespan, None, None)  # type: ignore[arg-type]
    assert seen[0]["client"] == ("203.0.113.7", 0)
    assert seen[1] is lifespan


def test_config_flags() -> None:
    from kestrelpy.cli import build_parser, config_from
    from kestrelpy.config import Config
    from kestrelpy.errors import ConfigError

    default = Config(app="a:b")
    assert default.proxy_headers is True and parse_trusted(default.forwarded_allow_ips) == LOOPBACK
    parsed = config_from(
        build_parser().parse_args(["a:b", "--no-proxy-headers", "--shutdown-delay", "2.5"]),
        {"KESTRELPY_FORWARDED_ALLOW_IPS": "10.0.0.0/8,unix"},
    )
    assert (parsed.proxy_headers, parsed.shutdown_delay, parsed.forwarded_allow_ips) == (False, 2.5, "10.0.0.0/8,unix")
    with pytest.raises(ConfigError, match="--forwarded-allow-ips"):
        Config(app="a:b", forwarded_allow_ips="10.0.0.0/8,localhost")
    with pytest.raises(ConfigError, match="--shutdown-delay"):
        Config(app="a:b", shutdown_delay=-1)
