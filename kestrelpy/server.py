"""Server: owns the listening sockets, the connections, the heartbeat, signals and graceful shutdown.

Order of a run: load the app, let the startup guard warn about binds it expects to fail, bind every
endpoint, run lifespan startup, then start accepting. On SIGINT/SIGTERM: stop accepting, close idle
connections, let in-flight requests finish within the graceful timeout, then run lifespan shutdown.
A second signal closes everything at once.

A supervised worker's listeners can change while it serves (change_listeners, for a SIGHUP reload whose
only changes are endpoints): a listener that stays is never touched; one that is removed stops accepting
and its connections are drained as for a graceful shutdown; one whose settings changed is drained the
same way and served again, on the same listening socket, with its new settings. A single server process
does the same on SIGHUP when it was handed `reread` and the configuration read again changed only
endpoints (config_reload.py); any other change takes a restart, which it says.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import socket
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import anyio

from kestrelpy import platform
from kestrelpy.asgi import ASGIApp
from kestrelpy.config import Config, TlsOptions
from kestrelpy.endpoints import Endpoint, listener_endpoint
from kestrelpy.errors import ConfigError, KestrelpyError
from kestrelpy.heartbeat import Heartbeat
from kestrelpy.importer import load_app
from kestrelpy.lifespan import Lifespan
from kestrelpy.metrics import exposition, otel
from kestrelpy.metrics.listener import METRICS_BACKLOG, MetricsConnection
from kestrelpy.metrics.recorder import Metrics, Snapshot
from kestrelpy.protocols.http11 import HttpConnection, tls_connection_class
from kestrelpy.protocols.websocket import MissingLibrary, WebSocketUpgrade, upgrade_handler
from kestrelpy.sockets import bind_endpoints, close_sockets, listen_url, socket_address
from kestrelpy.state import ServerState
from kestrelpy.tls import ServerTls, TlsListeners

logger = logging.getLogger("kestrelpy.error")

UpgradeHandler = WebSocketUpgrade | MissingLibrary | None  # what takes `Upgrade: websocket` (None: --ws none)


def connection_class(http: str) -> type[HttpConnection]:
    """The parser adapter for `--http` (auto = httptools, or h11 where httptools is not installed)."""
    if http in ("auto", "httptools"):
        try:
            from kestrelpy.protocols.http11_httptools import HttptoolsConnection
        except ImportError:
            if http == "httptools":
                raise KestrelpyError("--http httptools was asked for, but httptools is not installed") from None
        else:
            return HttptoolsConnection
    from kestrelpy.protocols.http11_h11 import H11Connection

    return H11Connection


def http2_service(config: Config) -> Any:
    """What serves HTTP/2 (protocols/http2.py), or None with --no-http2 or without the h2 package."""
    if not config.http2_limits.http2:
        return None
    try:
        from kestrelpy.protocols.http2 import Http2Service
    except ImportError:
        logger.info("HTTP/2 is off: the h2 package is not installed (pip install 'kestrelpy[http2]')")
        return None
    return Http2Service(config.http2_limits, config.server_header, config.headers)


def listener_protocols(endpoint: Endpoint | None, http2: bool) -> tuple[str, ...]:
    """The protocols one listener speaks, by their ALPN names in order of preference (RFC 7301): what its
    endpoint asks for (`protocols`, Kestrel's), with HTTP/2 only while it is served (--http2 and the h2
    package). HTTP/2 is negotiated by ALPN on TLS and recognised by its preface in cleartext."""
    wanted = endpoint.protocols if endpoint is not None else "http1+http2"
    if wanted == "http2":
        if not http2:
            where = endpoint.display() if endpoint is not None else "an endpoint"
            raise ConfigError(
                f"{where} serves only HTTP/2 (protocols = http2), but HTTP/2 is off: "
                "install it with pip install 'kestrelpy[http2]' and drop --no-http2, or choose http1+http2"
            )
        return ("h2",)
    return ("h2", "http/1.1") if http2 and wanted == "http1+http2" else ("http/1.1",)


def listener_class(cls: type[HttpConnection], protocols: tuple[str, ...], http2: Any) -> type[HttpConnection]:
    """`cls` for a listener speaking `protocols`: a subclass whose connections HTTP/2 may take over."""
    if "h2" not in protocols or http2 is None:
        return cls
    namespace = {"__slots__": (), "http2": http2, "http1": "http/1.1" in protocols}
    return cast("type[HttpConnection]", type(cls.__name__, (cls,), namespace))


def own_class(cls: type[HttpConnection]) -> type[HttpConnection]:
    """A subclass of `cls` for one listener alone: retiring that listener can then reach the connections it
    accepted that are not made yet (a TLS handshake still under way) without touching any other's."""
    return cast("type[HttpConnection]", type(cls.__name__, (cls,), {"__slots__": ()}))


@dataclass(eq=False)
class Listener:
    """One listening socket being served."""

    sock: socket.socket  # as handed to the loop, which closes it when the listener closes
    served: asyncio.AbstractServer
    tls: ServerTls | None
    cls: type[HttpConnection]  # made for this listener (own_class)
    name: object = field(init=False)  # the socket's address: what a reload names it by

    def __post_init__(self) -> None:
        self.name = self.sock.getsockname()

    def url(self) -> str:
        url = listen_url(self.sock)
        return "https" + url[4:] if self.tls else url

    def accepted(self, local: object) -> bool:
        """Whether a connection whose local address is `local` came through this listener."""
        name = self.name
        if not isinstance(name, tuple) or not isinstance(local, tuple):
            return local == name
        if len(local) != len(name) or local[1] != name[1]:  # another family, another port
            return False
        try:
            return local[0] == name[0] or ipaddress.ip_address(name[0]).is_unspecified
        except ValueError:
            return False


@dataclass(eq=False)
class Serving:
    """What serve() sets up once, kept while it runs so listeners can be opened later (change_listeners)."""

    state: ServerState
    loop: asyncio.AbstractEventLoop
    protocol: type[HttpConnection]  # the parser adapter
    http2: Any  # http2_service(), None when HTTP/2 is off
    listeners: list[Listener] = field(default_factory=list)
    watched: set[ServerTls] = field(default_factory=set)  # the certificates whose files are watched


def display_url(address: tuple[str, int]) -> str:
    host, port = address
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class Server:
    """One server process. `await serve()` runs until `request_shutdown()` or a shutdown signal."""

    def __init__(
        self,
        config: Config,
        *,
        clock: Callable[[], float] = time.monotonic,
        heartbeat: Callable[[ServerState, asyncio.AbstractEventLoop], Heartbeat] = Heartbeat,
    ) -> None:
        self.config = config
        # Time seams: the monotonic clock every timeout reads, and what builds the heartbeat that beats them.
        self._clock = clock
        self._heartbeat = heartbeat
        self.started = asyncio.Event()
        self.addresses: list[tuple[str, int]] = []
        self._shutdown_requested = asyncio.Event()
        self._state: ServerState | None = None
        self._delay_over = asyncio.Event()
        self.handle_signals = True  # a supervised worker leaves SIGINT/SIGTERM to the supervisor's protocol
        self.linger_on_shutdown = False  # a supervised worker answers a last request on idle keep-alives
        self.serve_metrics = True  # a supervised worker leaves --metrics-bind to the supervisor
        self.metrics_address: tuple[str, int] | None = None  # where --metrics-bind listens, once it does
        self._serving: Serving | None = None
        self.reread: Callable[[], Config] | None = None  # SIGHUP reads the configuration again with it (POSIX)
        self._owned: list[socket.socket] = []  # the sockets serve() bound itself, and closes at the end
        self._reloading: asyncio.Future[None] | None = None

    def endpoints(self) -> list[Endpoint]:
        """Every endpoint the config names: --host/--port, --bind, --urls, --uds and inherited sockets."""
        return self.config.endpoints()

    @property
    def requests_served(self) -> int:
        """Responses completed so far (a supervised worker recycles itself on --limit-max-requests)."""
        return self._state.requests_served if self._state is not None else 0

    def metrics_snapshot(self) -> Snapshot | None:
        """This process's metrics now (None when they are off or it is not serving yet)."""
        state = self._state
        if state is None or state.metrics is None:
            return None
        return state.metrics.snapshot(upgraded=state.upgraded)

    @property
    def shutdown_requested(self) -> bool:
        return self._shutdown_requested.is_set()

    def request_shutdown(self) -> None:
        """Begin a graceful shutdown; asked a second time, close every connection at once."""
        if self._shutdown_requested.is_set():
            self._delay_over.set()
            self._force_close()
        self._shutdown_requested.set()

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        """Serve until shutdown. `sockets`, when given, are already bound and listening (a supervisor's
        or an inherited set): the guard and the bind step are skipped and the caller keeps ownership."""
        config = self.config
        app = load_app(config.app, factory=config.factory, app_dir=config.app_dir)
        # A parser or WebSocket library asked for but not installed is refused here, before any bind
        # or lifespan startup, with one message rather than a traceback from inside the task group.
        connection_class(config.http)
        if config.metrics_otel:
            otel.check_installed()
        upgrade = upgrade_handler(config)  # built here once; ServerState is handed it
        endpoints = self.endpoints()
        # Built in every process that serves (each worker too), and before any bind: a certificate that
        # cannot be loaded is one message, not a half-started server.
        if sockets is None:  # the guard first, so a bad certificate is explained rather than only named
            _warn_predicted_failures(endpoints, config.tls)
        http2 = http2_service(config)  # built here once, like `upgrade`
        http2_on = http2 is not None
        for endpoint in endpoints:
            listener_protocols(endpoint, http2_on)  # an HTTP/2-only endpoint without HTTP/2 stops here
        tls = self._tls_listeners(endpoints, http2_on)
        if sockets is not None:
            await self._serve_sockets(app, upgrade, http2, sockets, tls)
            return
        self._owned = bind_endpoints(endpoints, config.backlog)
        try:
            await self._serve_sockets(app, upgrade, http2, list(self._owned), tls)
        finally:
            close_sockets(self._owned)

    async def _serve_sockets(
        self,
        app: ASGIApp,
        upgrade: UpgradeHandler,
        http2: Any,
        sockets: list[socket.socket],
        tls: TlsListeners | None,
    ) -> None:
        config = self.config
        loop = asyncio.get_running_loop()
        lifespan = Lifespan(app, config.lifespan)
        startup_error: KestrelpyError | None = None
        async with anyio.create_task_group() as tasks:
            if lifespan.enabled:
                tasks.start_soon(lifespan.main)
                try:
                    await lifespan.startup()
                except KestrelpyError as exc:
                    startup_error = exc
            if startup_error is None:
                await self._run_until_shutdown(app, upgrade, http2, sockets, lifespan, loop, tls)
                if lifespan.enabled:
                    await lifespan.shutdown()
            tasks.cancel_scope.cancel()
        if startup_error is not None:
            raise startup_error

    async def _run_until_shutdown(
        self,
        app: ASGIApp,
        upgrade: UpgradeHandler,
        http2: Any,  # what serves HTTP/2 (http2_service), None when it is off
        sockets: list[socket.socket],
        lifespan: Lifespan,
        loop: asyncio.AbstractEventLoop,
        tls: TlsListeners | None,
    ) -> None:
        config = self.config
        state = ServerState(config, app, loop, access_log=config.access_log, upgrade=upgrade, clock=self._clock)
        state.lifespan_state = lifespan.state
        state.linger_on_shutdown = self.linger_on_shutdown
        self._state = state
        metrics_listener = await self._metrics_listener(loop, state, sockets)  # first: it may fail to bind
        heartbeat = self._heartbeat(state, loop)
        heartbeat.start()
        protocol = connection_class(config.http)
        serving = self._serving = Serving(state, loop, protocol, http2)
        try:
            await self._open_listeners(sockets, tls)
            # The handlers before the lines that say the server is up: whoever reads them (a test, a
            # process manager) may signal at once, and SIGTERM would otherwise kill rather than drain.
            restore_signals = (
                platform.install_shutdown_handlers(loop, self._on_signal) if self.handle_signals else lambda: None
            )
            reloads = self.handle_signals and self.reread is not None and bool(self._owned)
            restore_reload = platform.install_reload_handler(loop, self._on_reload) if reloads else lambda: None
            logger.info(
                "Started server process [%d] (%s, %s)",
                os.getpid(),
                platform.loop_name(loop),
                protocol.__name__.replace("Connection", "").lower(),
            )
            for listener in serving.listeners:
                logger.info("Listening on %s (press CTRL+C to quit)", listener.url())
            self.started.set()
            try:
                await self._shutdown_requested.wait()
                restore_reload()
                if self._reloading is not None:
                    await self._reloading
                await self._drain([listener.served for listener in serving.listeners], state)
            finally:
                restore_reload()
                restore_signals()
        finally:
            heartbeat.stop()
            if metrics_listener is not None:
                metrics_listener.close()
            for served in serving.watched:
                served.stop_watching()

    def _tls_listeners(self, endpoints: Sequence[Endpoint], http2_on: bool) -> TlsListeners | None:
        """The TLS of `endpoints` (None when none is TLS): built in every process that serves them."""
        if not any(e.tls for e in endpoints):
            return None
        return TlsListeners(self.config.tls, endpoints, alpn=lambda e: listener_protocols(e, http2_on))

    async def _open_listeners(self, sockets: Sequence[socket.socket], tls: TlsListeners | None) -> None:
        """Serve `sockets` (listening already), each with the settings of the endpoint its address belongs to."""
        serving = self._serving
        assert serving is not None
        state, http2, protocol = serving.state, serving.http2, serving.protocol
        endpoints = self.endpoints()
        # One connection class per (TLS, protocols) pair: a TLS class describes its own ServerTls.
        classes: dict[tuple[int, tuple[str, ...]], type[HttpConnection]] = {}
        for sock, served in zip(sockets, self._tls_sockets(sockets, tls), strict=True):
            protocols = listener_protocols(listener_endpoint(sock.getsockname(), endpoints), http2 is not None)
            key = (id(served), protocols)
            if key not in classes:
                base = tls_connection_class(protocol, served.describe) if served is not None else protocol
                classes[key] = listener_class(base, protocols, http2)
            cls = own_class(classes[key])
            accepting = await _listen(serving.loop, sock, served, cls, state, self.config.backlog)
            serving.listeners.append(Listener(sock, accepting, served, cls))
            if served is not None and served not in serving.watched:
                served.start_watching(serving.loop)  # each process watches its certificate files for itself
                serving.watched.add(served)
        self.addresses = [socket_address(listener.sock) for listener in serving.listeners]

    async def change_listeners(
        self,
        config: Config,
        *,
        add: Sequence[socket.socket] = (),
        stop: Collection[object] = (),
        change: Collection[object] = (),
    ) -> None:
        """Serve `config`, which differs from the running configuration only in its endpoints: listen on
        `add` (listening sockets), stop listening on the listeners whose address is in `stop`, and serve those
        in `change` with their new settings on the same socket. Connections of a stopped or changed listener
        are drained (see _retire); every other listener and its connections stay as they are. A certificate
        that does not load raises ConfigError before anything has changed."""
        serving = self._serving
        if serving is None or self.shutdown_requested:
            raise KestrelpyError("the server is not serving")
        running = self.config
        reopened = [listener.sock.dup() for listener in serving.listeners if listener.name in change]
        try:
            self.config = config
            new = [*reopened, *add]
            named = [listener_endpoint(sock.getsockname(), self.endpoints()) for sock in new]
            tls = self._tls_listeners([e for e in named if e is not None], serving.http2 is not None)
        except BaseException:
            self.config = running
            close_sockets(reopened)
            raise
        drained = {}
        for listener in [item for item in serving.listeners if item.name in stop or item.name in change]:
            url = listener.url()
            count = self._retire(listener)
            if listener.name in stop:
                logger.info("Stopped listening on %s; draining its %d connection(s)", url, count)
            else:
                drained[listener.name] = count
        await self._open_listeners(new, tls)
        for listener in serving.listeners[len(serving.listeners) - len(new) :]:
            if listener.name in drained:
                logger.info(
                    "Serving %s with its new settings; draining %d connection(s) made with the old ones",
                    listener.url(),
                    drained[listener.name],
                )
            else:
                logger.info("Listening on %s", listener.url())

    def _on_reload(self) -> None:
        if self._reloading is not None and not self._reloading.done():
            logger.warning("SIGHUP received while the last one is being applied; ignored")
            return
        self._reloading = asyncio.ensure_future(self.reload())
        self._reloading.add_done_callback(_log_failure)

    async def reload(self) -> None:
        """SIGHUP in a single server process: the configuration read again with `reread` and, when only its
        endpoints changed, served in place (change_listeners). Anything else takes a restart: it is said,
        and the running configuration stays, as it does when the new one cannot be used."""
        from kestrelpy.config_reload import reload_config

        assert self.reread is not None
        reloaded = reload_config(self.config, self._owned, self.reread)
        if reloaded is None:
            return
        if reloaded.how != "listeners":
            reloaded.abandon()
            changed = [*reloaded.settings, *(["workers"] if reloaded.count_changed else [])]
            if changed:
                logger.error(
                    "Not reloading the configuration, the running one stays: %s changed, which a single server "
                    "process takes up only when restarted",
                    ", ".join(changed),
                )
            return
        try:
            await self.change_listeners(
                reloaded.config, add=reloaded.added, stop=reloaded.stopped, change=reloaded.changed
            )
        except KestrelpyError as exc:
            reloaded.abandon()
            logger.error("Not reloading the configuration, the running one stays: %s", exc)
            return
        reloaded.commit()
        assert self._serving is not None
        self._owned = [listener.sock for listener in self._serving.listeners]  # a changed one's is a new duplicate

    def _retire(self, listener: Listener) -> int:
        """Stop accepting on `listener` and drain what it accepted, as a graceful shutdown drains every
        connection: idle ones close, busy ones after their current response (with `Connection: close`),
        and whatever is left after --timeout-graceful-shutdown is closed. Returns how many it drains."""
        serving = self._serving
        assert serving is not None
        state = serving.state
        serving.listeners.remove(listener)
        listener.served.close()
        draining = [conn for conn in state.connections if listener.accepted(_local_address(conn))]
        for conn in draining:
            conn.shutdown()
        # Accepted before the listener closed but made only later (a TLS handshake was under way), or turned
        # to HTTP/2 only later (its cleartext preface came after the drain began): drained too.
        listener.cls.connection_made = _drained_on_arrival(listener.cls, draining)  # type: ignore[method-assign,assignment]
        listener.cls.switch_to_http2 = _drained_on_switch(listener.cls, draining)  # type: ignore[method-assign,assignment]

        def close_what_is_left() -> None:
            for conn in draining:
                if conn in state.connections:
                    conn.cancel_app()
                    conn.abort()

        serving.loop.call_later(self.config.timeout_graceful_shutdown, close_what_is_left)
        in_use = {item.tls for item in serving.listeners}
        for served in serving.watched - in_use:
            served.stop_watching()
            serving.watched.discard(served)
        self.addresses = [socket_address(item.sock) for item in serving.listeners]
        return len(draining)

    async def _metrics_listener(
        self, loop: asyncio.AbstractEventLoop, state: ServerState, sockets: list[socket.socket]
    ) -> asyncio.AbstractServer | None:
        """--metrics-bind in a single server: a listener of its own beside the app's, on the same loop."""
        endpoint = self.config.metrics_endpoint()
        metrics = state.metrics
        if endpoint is None or metrics is None or not self.serve_metrics:
            return None

        def render() -> str:
            queued = sum(platform.listen_queue_length(sock) or 0 for sock in sockets)
            return exposition.render(metrics.snapshot(upgraded=state.upgraded, queued=queued))

        (sock,) = bind_endpoints([endpoint], METRICS_BACKLOG)
        try:
            listener = await loop.create_server(lambda: MetricsConnection(render), sock=sock)
        except BaseException:
            close_sockets([sock])
            raise
        self.metrics_address = socket_address(sock)
        logger.info("Metrics at %s/metrics", listen_url(sock))
        return listener

    def _tls_sockets(self, sockets: Sequence[socket.socket], tls: TlsListeners | None) -> list[ServerTls | None]:
        """The TLS each socket is served with (None: plain), told from the endpoint its address belongs to
        (as a worker must)."""
        if tls is None:
            return [None] * len(sockets)
        endpoints = self.endpoints()
        return [tls.for_endpoint(listener_endpoint(sock.getsockname(), endpoints)) for sock in sockets]

    def _on_signal(self, signum: int) -> None:
        forced = self._shutdown_requested.is_set()
        logger.info("Shutting down (signal %d)%s", signum, ", closing every connection now" if forced else "")
        self.request_shutdown()

    async def _drain(self, listeners: Sequence[asyncio.AbstractServer], state: ServerState) -> None:
        delay = self.config.shutdown_delay
        if delay > 0 and not self._delay_over.is_set():
            # Keep accepting and serving while the orchestrator takes us out of rotation; every
            # response meanwhile carries Connection: close so clients move to other instances.
            logger.info("Serving %ss more before closing the listeners (--shutdown-delay)", delay)
            state.draining = True  # connections made from now on close after their first response
            for conn in list(state.connections):
                conn.closing = True
            with anyio.move_on_after(delay):
                await self._delay_over.wait()
        state.shutting_down = True
        for listener in listeners:
            listener.close()
        for conn in list(state.connections):
            conn.shutdown()
        if state.connections:
            logger.info("Waiting for %d connection(s) to finish", len(state.connections))
        with anyio.move_on_after(self.config.timeout_graceful_shutdown):
            # A connection accepted in the same loop pass as the listeners closed is only registered a
            # moment later: wait for it too, or it would be cut off as if the deadline had passed.
            await asyncio.sleep(0)
            while state.connections:
                await state.wait_all_closed()
                await asyncio.sleep(0)
        if state.connections:
            logger.warning(
                "Graceful shutdown timed out after %ss; closing %d connection(s)",
                self.config.timeout_graceful_shutdown,
                len(state.connections),
            )
            self._force_close()
            with anyio.move_on_after(1):
                await state.wait_all_closed()
        for listener in listeners:
            with anyio.move_on_after(1):
                await listener.wait_closed()

    def _force_close(self) -> None:
        state = self._state
        if state is None:
            return
        for conn in list(state.connections):
            conn.cancel_app()
            conn.abort()


def _drained_on_arrival(cls: type[HttpConnection], draining: list[Any]) -> Callable[[HttpConnection, Any], None]:
    """`cls.connection_made` for a retired listener's class: the connection is made as before, then drained
    (whatever now serves its transport: itself, or the HTTP/2 connection that took it over) and added to
    `draining`."""
    made = cast("type[HttpConnection]", cls.__mro__[1]).connection_made

    def connection_made(self: HttpConnection, transport: Any) -> None:
        made(self, transport)
        _drain_transport(self.state, transport, draining)

    return connection_made


def _drained_on_switch(cls: type[HttpConnection], draining: list[Any]) -> Callable[[HttpConnection, bytes], bool]:
    """`cls.switch_to_http2` for a retired listener's class: a cleartext connection drained while it had not
    said a word yet, whose HTTP/2 preface then arrives, is taken over as before and its HTTP/2 connection is
    drained (GOAWAY) and added to `draining`; it would otherwise escape the drain."""
    switch = cast("type[HttpConnection]", cls.__mro__[1]).switch_to_http2

    def switch_to_http2(self: HttpConnection, received: bytes) -> bool:
        transport = self.transport  # (the HTTP/2 connection has it once it took over)
        if not switch(self, received):
            return False
        _drain_transport(self.state, transport, draining)
        return True

    return switch_to_http2


def _drain_transport(state: ServerState, transport: Any, draining: list[Any]) -> None:
    """Drain whatever now serves `transport` (an HTTP/1.1 connection, or the HTTP/2 one that took it over)."""
    for arrived in [conn for conn in state.connections if getattr(conn, "transport", None) is transport]:
        arrived.shutdown()
        draining.append(arrived)


def _log_failure(task: asyncio.Future[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.error("Reloading the configuration failed", exc_info=task.exception())


def _local_address(conn: Any) -> object:
    """The local address of a connection's transport (None once it has lost its transport)."""
    try:
        return conn.transport.get_extra_info("sockname")
    except AttributeError:
        return None


async def _listen(
    loop: asyncio.AbstractEventLoop,
    sock: socket.socket,
    tls: ServerTls | None,
    protocol: type[HttpConnection],
    state: ServerState,
    backlog: int,
) -> asyncio.AbstractServer:
    """A listener on `sock`. With `tls`, its connections are served only once their handshake is complete;
    a client that does not complete it within --timeout-tls-handshake is closed by the loop."""

    metrics = state.metrics

    def factory() -> HttpConnection:
        return protocol(state)

    if tls is None:
        return await loop.create_server(factory, sock=sock, backlog=backlog)

    def metered_factory() -> asyncio.Protocol:
        return MeteredHandshake(factory, metrics) if metrics is not None else factory()

    return await loop.create_server(
        factory if metrics is None else metered_factory,
        sock=sock,
        backlog=backlog,
        ssl=tls.context,
        ssl_handshake_timeout=tls.handshake_timeout,
    )


class MeteredHandshake(asyncio.Protocol):
    """With metrics on, what a TLS listener makes for each connection it accepts: it times the handshake,
    then hands the transport to the connection `make` builds. A failed handshake is never announced to
    the protocol; this object, which takes part in no reference cycle of its own, is then freed, and the
    metrics' weak reference to it counts the failure (a connection object, with its parser, would wait
    for the garbage collector). At once on uvloop; asyncio's accept coroutine keeps it in a cycle (its
    frame, through the exception its waiter stores) until the collector's next pass."""

    __slots__ = ("__weakref__", "_make", "_metrics")

    def __init__(self, make: Callable[[], HttpConnection], metrics: Metrics) -> None:
        self._make = make
        self._metrics = metrics
        metrics.handshake_started(self)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        conn = self._make()
        self._metrics.handshake_done(self, transport.get_extra_info("ssl_object"), conn)
        transport.set_protocol(conn)
        conn.connection_made(transport)


def _warn_predicted_failures(endpoints: list[Endpoint], tls: TlsOptions | None = None) -> None:
    """One line per predicted problem. A bind expected to fail (or that may fail) is only named here: if it
    does fail, the error that follows explains it in full, so the explanation is not printed twice. Notes
    about binds that will work carry their one-sentence summary, since no error follows them. A certificate
    error stops the start here, explained in full, as a ConfigError."""
    from kestrelpy import guard

    findings = guard.predict(endpoints, tls=tls)
    blocking = guard.certificate_error(findings)
    if blocking is not None:
        raise ConfigError(blocking.render())
    for finding in findings:
        where = finding.endpoint.display() if finding.endpoint is not None else "the requested address"
        if finding.severity == "info" or finding.code.startswith("KP-TLS-"):  # no bind error will follow
            logger.warning("%s on %s: %s", finding.code, where, finding.summary)
        else:
            logger.warning("predicted: %s on %s — trying anyway", finding.code, where)


def run_server(
    config: Config,
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None,
    reread: Callable[[], Config] | None = None,
) -> None:
    """Run one server in this process to completion, on a new event loop of the configured kind; on SIGHUP
    it reads the configuration again with `reread` (see Server.reload). (Several workers, --reload or a
    recycling limit need the supervisor instead: see cli.serve.)"""
    factory = loop_factory or platform.loop_factory(config.loop)
    server = Server(config)
    server.reread = reread
    runner_cls = getattr(asyncio, "Runner", None)
    if runner_cls is not None:
        with runner_cls(loop_factory=factory) as runner:
            runner.run(server.serve())
        return
    loop = factory()  # Python 3.10: no asyncio.Runner
    try:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(server.serve())
    finally:
        asyncio.set_event_loop(None)
        loop.close()
