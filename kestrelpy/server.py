"""Server: owns the listening sockets, the connections, the heartbeat, signals and graceful shutdown.

Order of a run: load the app, let the startup guard warn about binds it expects to fail, bind every
endpoint, run lifespan startup, then start accepting. On SIGINT/SIGTERM: stop accepting, close idle
connections, let in-flight requests finish within the graceful timeout, then run lifespan shutdown.
A second signal closes everything at once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Callable, Sequence
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
from kestrelpy.proxy import ProxyHeadersMiddleware, parse_trusted
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
        tls = None
        if any(e.tls for e in endpoints):
            tls = TlsListeners(config.tls, endpoints, alpn=lambda e: listener_protocols(e, http2_on))
        if sockets is not None:
            await self._serve_sockets(app, upgrade, http2, sockets, tls)
            return
        sockets = bind_endpoints(endpoints, config.backlog)
        try:
            await self._serve_sockets(app, upgrade, http2, sockets, tls)
        finally:
            close_sockets(sockets)

    async def _serve_sockets(
        self,
        app: ASGIApp,
        upgrade: UpgradeHandler,
        http2: Any,
        sockets: list[socket.socket],
        tls: TlsListeners | None,
    ) -> None:
        config = self.config
        if config.proxy_headers:
            app = ProxyHeadersMiddleware(app, parse_trusted(config.forwarded_allow_ips))
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
        if tls is not None:
            tls.start_watching(loop)  # each process watches its certificate files for itself
        protocol = connection_class(config.http)
        endpoints = self.endpoints()
        secure = self._tls_sockets(sockets, tls)
        # One connection class per (TLS, protocols) pair: a TLS class describes its own ServerTls.
        classes: dict[tuple[int, tuple[str, ...]], type[HttpConnection]] = {}
        listeners = []
        for sock, served in zip(sockets, secure, strict=True):
            protocols = listener_protocols(listener_endpoint(sock.getsockname(), endpoints), http2 is not None)
            key = (id(served), protocols)
            if key not in classes:
                base = tls_connection_class(protocol, served.describe) if served is not None else protocol
                classes[key] = listener_class(base, protocols, http2)
            listeners.append(await _listen(loop, sock, served, classes[key], state, config.backlog))
        self.addresses = [socket_address(sock) for sock in sockets]
        logger.info(
            "Started server process [%d] (%s, %s)",
            os.getpid(),
            platform.loop_name(loop),
            protocol.__name__.replace("Connection", "").lower(),
        )
        for sock, served in zip(sockets, secure, strict=True):
            url = listen_url(sock)
            logger.info("Listening on %s (press CTRL+C to quit)", "https" + url[4:] if served else url)
        restore_signals = (
            platform.install_shutdown_handlers(loop, self._on_signal) if self.handle_signals else lambda: None
        )
        self.started.set()
        try:
            await self._shutdown_requested.wait()
            await self._drain(listeners, state)
        finally:
            restore_signals()
            heartbeat.stop()
            if metrics_listener is not None:
                metrics_listener.close()
            if tls is not None:
                tls.stop_watching()

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

    def _tls_sockets(self, sockets: list[socket.socket], tls: TlsListeners | None) -> list[ServerTls | None]:
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
    the protocol; this object, which takes part in no reference cycle, is then freed at once, and the
    metrics' weak reference to it counts the failure (a connection object, with its parser, would wait
    for the garbage collector)."""

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


def run_server(config: Config, loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None) -> None:
    """Run one server in this process to completion, on a new event loop of the configured kind.
    (Several workers, --reload or a recycling limit need the supervisor instead: see cli.serve.)"""
    factory = loop_factory or platform.loop_factory(config.loop)
    server = Server(config)
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
