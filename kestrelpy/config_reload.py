"""SIGHUP in the supervisor: read the configuration again and serve what it says now (Kestrel's
reloadOnChange for its Endpoints section).

The new configuration comes from the same flags, environment and config file as at start (`reread`, given
by the command line). Then each endpoint is compared with the running ones by where it listens (its
address, port, socket path or descriptor):

    the same address, the same settings   unchanged: its listening sockets are kept as they are, and so
                                          are the workers' listeners and connections on them
    the same address, other settings      changed: its sockets are kept (a second bind of the address
                                          would fail) and are served with the new settings; connections
                                          made with the old ones are drained
    an address not listened on before     added: bound now, in the supervisor, before any worker changes
    an address no longer named            removed: no longer listened on; its connections are drained

An endpoint's settings are those of its table (url, protocols, certificate, sni, client certificate mode)
and the --ssl-* options a TLS endpoint takes the rest from. What the supervisor does next depends on what
else changed (`Reloaded.how`):

    only endpoints           "listeners": every running worker is told over its channel which listeners to
                             open, stop and serve anew; no worker is replaced
    only the worker count    "count": workers are started or stopped; no worker is replaced
    anything else            "replace": the workers are replaced one at a time, each new one starting with
                             the new configuration (also when nothing changed at all: the app is imported
                             afresh)

The worker count goes with any of them. The supervisor's copies of a removed endpoint's sockets are
closed once the reload is committed (`commit`); a replacement that cannot start abandons it (`abandon`:
the sockets bound for it are closed, the running configuration and sockets stay).

A new configuration that cannot be used (a file that does not parse, a bad value, a certificate that does
not load, an address that cannot be bound) is logged as an error and changes nothing: the running
configuration stays, and the workers are not replaced. Under --reuse-port each worker binds its own
listeners, so there endpoints cannot change without a restart.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields

from kestrelpy.config import Config
from kestrelpy.endpoints import Endpoint, FdEndpoint, TcpEndpoint, listener_endpoint
from kestrelpy.errors import ConfigError, KestrelpyError
from kestrelpy.sockets import bind_endpoints, close_sockets

logger = logging.getLogger("kestrelpy.error")

# Options a running supervisor cannot take up: they decide how it runs, not what the workers do.
FIXED = ("reuse_port", "reload", "loop")


# The Config fields that say where and how to listen: a reload that changes only these (and `workers`)
# changes the workers' listeners in place.
ENDPOINT_FIELDS = (
    "host",
    "port",
    "binds",
    "urls",
    "uds",
    "uds_mode",
    "inherited",
    "named_endpoints",
    "protocols",
    "tls",
)
COUNT_FIELDS = ("workers",)


@dataclass(eq=False)
class Reloaded:
    """What a reload changes: the configuration and listening sockets the workers get from now on."""

    config: Config
    sockets: list[socket.socket]  # every listening socket of the new configuration (kept, then added)
    added: list[socket.socket]  # bound for this reload
    removed: list[socket.socket]  # the supervisor's copies of the removed endpoints' sockets
    stopped: tuple[object, ...]  # their addresses
    changed: tuple[object, ...]  # addresses of the kept sockets whose endpoint has new settings
    settings: tuple[str, ...]  # the other settings that changed (ENDPOINT_FIELDS and workers left out)
    count_changed: bool

    @property
    def endpoints_changed(self) -> bool:
        return bool(self.added or self.stopped or self.changed)

    @property
    def how(self) -> str:
        """listeners | count | replace (see the module's docstring)."""
        if self.settings or not (self.endpoints_changed or self.count_changed):
            return "replace"
        return "listeners" if self.endpoints_changed else "count"

    def endpoint_settings(self) -> dict[str, object]:
        """The new values of ENDPOINT_FIELDS: what a running worker needs to serve the new endpoints."""
        return {name: getattr(self.config, name) for name in ENDPOINT_FIELDS}

    def commit(self) -> None:
        """The reload stands: the removed endpoints' sockets are closed (the workers close their own)."""
        close_sockets(self.removed)
        self.removed = []

    def abandon(self) -> None:
        """The reload is given up: what was bound for it is closed."""
        close_sockets(self.added)
        self.added = []


def where(endpoint: Endpoint) -> tuple[object, ...]:
    """Where an endpoint listens: two endpoints with the same answer need the same sockets."""
    if isinstance(endpoint, TcpEndpoint):
        return ("tcp", endpoint.host.lower(), endpoint.port)
    if isinstance(endpoint, FdEndpoint):
        return ("fd", endpoint.fd)
    return ("unix", endpoint.path)


def served_as(config: Config, endpoint: Endpoint) -> tuple[object, ...]:
    """Everything that decides how an endpoint's connections are served: the endpoint itself (its table,
    protocols, TLS or not) and, for TLS, the settings its context is built from."""
    return (endpoint, config.tls.for_endpoint(endpoint) if endpoint.tls else None)


def other_settings(running: Config, config: Config) -> tuple[str, ...]:
    """The names of the settings that differ, other than the endpoints' and the worker count."""
    skip = {*ENDPOINT_FIELDS, *COUNT_FIELDS}
    return tuple(
        f.name for f in fields(Config) if f.name not in skip and getattr(running, f.name) != getattr(config, f.name)
    )


def reload_config(running: Config, sockets: Sequence[socket.socket], reread: Callable[[], Config]) -> Reloaded | None:
    """The configuration read again and the sockets it listens on (kept, or bound now); None when it cannot
    be used, which is logged. Nothing is closed here: see Reloaded.commit and Reloaded.abandon."""
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
    before = {where(e): served_as(running, e) for e in old}
    changed_places = {where(e) for e in endpoints if where(e) in before and before[where(e)] != served_as(config, e)}
    changed = tuple(
        sock.getsockname() for place, group in by_where.items() if place in changed_places for sock in group
    )
    _log_changes(running, config)
    return Reloaded(
        config,
        kept + bound,
        bound,
        removed,
        tuple(sock.getsockname() for sock in removed),
        changed,
        other_settings(running, config),
        config.workers != running.workers,
    )


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


def _log_changes(running: Config, config: Config) -> None:
    before = {where(e): e for e in running.endpoints()}
    after = {where(e): e for e in config.endpoints()}
    kept = [(before[p], e) for p, e in after.items() if p in before]
    changed = [new.display() for old, new in kept if served_as(running, old) != served_as(config, new)]
    parts = []
    for label, names in (
        ("added", [e.display() for p, e in after.items() if p not in before]),
        ("removed", [e.display() for p, e in before.items() if p not in after]),
        ("changed", changed),
    ):
        if names:
            parts.append(f"{label} {', '.join(names)}")
    parts.append(f"{len(kept) - len(changed)} unchanged")
    logger.info("Configuration read again: endpoints %s", "; ".join(parts))
