"""Listening sockets: the only place kestrelpy creates them.

Every endpoint is bound and set listening before the app's startup code runs, so a failed bind never
runs it; connections that arrive before startup completes wait in the kernel's backlog. If any bind
fails, every socket already bound is closed and the startup guard explains the real error.
"""

from __future__ import annotations

import socket
from collections.abc import Sequence

from kestrelpy import platform
from kestrelpy.endpoints import Endpoint, FdEndpoint, TcpEndpoint, UnixEndpoint
from kestrelpy.errors import BindError, ConfigError


def bind_endpoints(endpoints: Sequence[Endpoint], backlog: int) -> list[socket.socket]:
    bound: list[socket.socket] = []
    for endpoint in endpoints:
        try:
            bound.append(bind_endpoint(endpoint, backlog))
        except OSError as exc:
            for sock in bound:
                sock.close()
            raise _bind_error(exc, endpoint) from None
    return bound


def bind_endpoint(endpoint: Endpoint, backlog: int) -> socket.socket:
    if isinstance(endpoint, TcpEndpoint):
        return _bind_tcp(endpoint, backlog)
    if isinstance(endpoint, UnixEndpoint):
        raise ConfigError("Unix socket endpoints are not supported yet")
    if isinstance(endpoint, FdEndpoint):
        raise ConfigError("inherited file descriptor endpoints are not supported yet")
    raise ConfigError(f"unknown endpoint {endpoint!r}")


def _bind_tcp(endpoint: TcpEndpoint, backlog: int) -> socket.socket:
    infos = socket.getaddrinfo(
        endpoint.host, endpoint.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        platform.configure_listener(sock)
        sock.bind(address)
        sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def _bind_error(exc: OSError, endpoint: Endpoint) -> BindError:
    from kestrelpy import guard  # the guard's probes load only when a bind has failed

    finding = guard.explain(exc, endpoint)
    return BindError(finding.render(), [finding])


def socket_address(sock: socket.socket) -> tuple[str, int]:
    host, port = sock.getsockname()[:2]
    return str(host), int(port)
