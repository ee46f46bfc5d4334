"""SIGHUP in the supervisor: read the configuration again and serve what it says now (Kestrel's
reloadOnChange for its Endpoints section).

The new configuration comes from the same flags, environment and config file as at start (`reread`, given
by the command line). Then each endpoint is compared with the running ones by where it listens (its
address, port, socket path or descriptor):

    the same address, the same settings   unchanged: its listening sockets are kept as they are
    the same address, other settings      changed: its sockets are kept (a second bind of the address
                                          would fail) and the new workers serve it with the new settings
    an address not listened on before     added: bound now, in the supervisor, before any worker changes
    an address no longer named            removed: the supervisor closes its copy at once; the old
                                          workers keep serving it until each has drained

Then the supervisor replaces its workers one at a time, as for any SIGHUP: a replacement starts with the
new configuration, and only once it serves does an old worker drain its connections and exit. No
listening socket of an endpoint that stays is ever closed, so no connection to it is refused.

A new configuration that cannot be used (a file that does not parse, a bad value, a certificate that does
not load, an address that cannot be bound) is logged as an error and changes nothing: the running
configuration stays, and the workers are not replaced. Under --reuse-port each worker binds its own
listeners, so there endpoints cannot change without a restart.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from kestrelpy.config import Config
from kestrelpy.endpoints import Endpoint, FdEndpoint, TcpEndpoint, listener_endpoint
from kestrelpy.errors import ConfigError, KestrelpyError
from kestrelpy.sockets import bind_endpoints, close_sockets

logger = logging.getLogger("kestrelpy.error")

# Options a running supervisor cannot take up: they decide how it runs, not what the workers do.
FIXED = ("reuse_port", "reload", "loop")


@dataclass(frozen=True)
class Reloaded:
    """What a reload changes: the configuration and listening sockets the new workers get."""

    config: Config
    sockets: list[socket.socket]


def where(endpoint: Endpoint) -> tuple[object, ...]:
    """Where an endpoint listens: two endpoints with the same answer need the same sockets."""
    if isinstance(endpoint, TcpEndpoint):
        return ("tcp", endpoint.host.lower(), endpoint.port)
    if isinstance(endpoint, FdEndpoint):
        return ("fd", endpoint.fd)
    return ("unix", endpoint.path)


def reload_config(running: Config, sockets: Sequence[socket.socket], reread: Callable[[], Config]) -> Reloaded | None:
    """The configuration read again and the sockets it listens on (kept, or bound now); None when it cannot
    be used, which is logged. Sockets of removed endpoints are closed here (the workers have their own)."""
    try:
        config = reread()
        _check_fixed(running, config)
        endpoints = config.endpoints()
        _check_certificates(config, endpoints)
    except KestrelpyError as exc:
        logger.error("Not reloading the configuration, the running one stays: %s", exc)
        return None
    old = running.endpoints()
    by_where = _sockets_by_endpoint(sockets, old)
    kept_places = {where(e) for e in old}
    added = [e for e in endpoints if where(e) not in kept_places]
    try:
        bound = bind_endpoints(added, config.backlog)
    except KestrelpyError as exc:
        logger.error("Not reloading the configuration, the running one stays: %s", exc)
        return None
    wanted = {where(e) for e in endpoints}
    kept = [sock for place, group in by_where.items() if place in wanted for sock in group]
    removed = [sock for place, group in by_where.items() if place not in wanted for sock in group]
    close_sockets(removed)
    _log_changes(old, endpoints)
    return Reloaded(config, kept + bound)


def _check_fixed(running: Config, config: Config) -> None:
    for name in FIXED:
        if getattr(running, name) != getattr(config, name):
            raise ConfigError(f"--{name.replace('_', '-')} changed: that takes a restart")
    if running.reuse_port and {where(e) for e in running.endpoints()} != {where(e) for e in config.endpoints()}:
        raise ConfigError("with --reuse-port, changing the endpoints takes a restart")


def _check_certificates(config: Config, endpoints: Sequence[Endpoint]) -> None:
    """Load every certificate the new workers will serve, so a bad one is refused here rather than by each
    new worker, which would stop the server."""
    if any(e.tls for e in endpoints):
        from kestrelpy.tls import TlsListeners

        TlsListeners(config.tls, endpoints)


def _sockets_by_endpoint(
    sockets: Sequence[socket.socket], endpoints: Sequence[Endpoint]
) -> dict[tuple[object, ...], list[socket.socket]]:
    found: dict[tuple[object, ...], list[socket.socket]] = {}
    for sock in sockets:
        endpoint = listener_endpoint(sock.getsockname(), endpoints)
        place = where(endpoint) if endpoint is not None else ("unknown", sock.fileno())
        found.setdefault(place, []).append(sock)
    return found


def _log_changes(old: Sequence[Endpoint], new: Sequence[Endpoint]) -> None:
    before = {where(e): e for e in old}
    after = {where(e): e for e in new}
    parts = []
    for label, names in (
        ("added", [e.display() for p, e in after.items() if p not in before]),
        ("removed", [e.display() for p, e in before.items() if p not in after]),
        ("changed", [e.display() for p, e in after.items() if p in before and before[p] != e]),
    ):
        if names:
            parts.append(f"{label} {', '.join(names)}")
    unchanged = sum(1 for p, e in after.items() if before.get(p) == e)
    parts.append(f"{unchanged} unchanged")
    logger.info("Configuration read again: endpoints %s", "; ".join(parts))
