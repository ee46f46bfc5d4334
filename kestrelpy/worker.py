"""A supervised worker: runs a Server on the sockets its supervisor hands it and reports over its channel.

The supervisor (supervisor.py, where the channel's lines are described) starts worker processes but
never imports the server: the CLI gives it `run_worker` as the code each worker runs. This module is
the one place where the two meet, so the imports point one way: cli -> worker -> server, supervisor.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import traceback
from collections import deque

from kestrelpy import platform
from kestrelpy.errors import BindError, KestrelpyError
from kestrelpy.metrics import snapshot as metrics_snapshot
from kestrelpy.metrics.recorder import Snapshot
from kestrelpy.server import Server
from kestrelpy.sockets import bind_reuse_port, close_sockets
from kestrelpy.supervisor import ListenerChange, WorkerSpec, decode_listener_change, open_handed

logger = logging.getLogger("kestrelpy.error")

MIB = 1024 * 1024
MAX_PASSED = 64  # descriptors one read of the channel takes (a ListenerChange's new sockets)


class ChannelWriter:
    """Lines to the supervisor on the non-blocking channel. What the socket does not take at once waits
    for the next line, so a line (a metrics snapshot is a few KiB) is never cut by another."""

    def __init__(self, channel: socket.socket) -> None:
        self._channel = channel
        self._pending = b""

    def send_line(self, line: str) -> None:
        self._pending += line.encode("utf-8") + b"\n"
        try:
            sent = self._channel.send(self._pending)
        except BlockingIOError:
            return
        except OSError:  # the supervisor is gone or not reading; nothing useful to do
            sent = len(self._pending)
        self._pending = self._pending[sent:]

    def send_snapshot(self, snapshot: Snapshot | None) -> None:
        """Totals, not changes: one the supervisor has not taken yet is simply superseded, never queued."""
        if snapshot is not None and not self._pending:
            self.send_line(metrics_snapshot.PREFIX + metrics_snapshot.encode(snapshot))

    def finish(self, timeout: float) -> None:
        """Wait (at most `timeout` seconds) until the supervisor's side holds every line: used on exit."""
        if not self._pending:
            return
        try:
            self._channel.settimeout(timeout)
            self._channel.sendall(self._pending)
        except OSError:
            pass
        self._pending = b""


class WorkerRun:
    """Runs a Server on inherited sockets inside a worker and reports to the supervisor over the channel."""

    def __init__(self, spec: WorkerSpec, sockets: list[socket.socket], channel: socket.socket) -> None:
        self.spec = spec
        self.sockets = sockets
        self.channel = channel
        self.out = ChannelWriter(channel)
        self._passed: deque[int] = deque()  # descriptors received with the channel's lines, not yet taken
        self._changes: asyncio.Queue[tuple[ListenerChange, list[socket.socket]]] = asyncio.Queue()

    async def run(self) -> int:
        self.channel.setblocking(False)
        sockets = list(self.sockets)
        try:
            for family, address, v6only in self.spec.reuse_groups:
                sockets.append(bind_reuse_port(family, address, self.spec.config.backlog, v6only=v6only, listen=True))
        except OSError as exc:
            message = f"Worker [{os.getpid()}] cannot listen on its own SO_REUSEPORT socket: {exc}"
            self.out.send_line(f"fatal {BindError.exit_code} {json.dumps(message)}")
            return BindError.exit_code
        server = Server(self.spec.config)
        server.handle_signals = False
        server.linger_on_shutdown = True  # a rolling replacement must not drop a keep-alive client's request
        server.serve_metrics = False  # the supervisor serves the sum of every worker's

        serve = asyncio.ensure_future(server.serve(sockets))

        def on_terminate() -> None:
            if not server.started.is_set():
                serve.cancel()  # nothing in flight yet, and startup may never finish
            elif not server.shutdown_requested:
                logger.info("Worker [%d] received SIGTERM; draining", os.getpid())
                server.request_shutdown()

        restore_signals = platform.install_worker_signal_handlers(asyncio.get_running_loop(), on_terminate)
        started = asyncio.ensure_future(server.started.wait())
        listen = asyncio.ensure_future(self._listen(server, serve))
        changes = asyncio.ensure_future(self._apply_changes(server))
        ping: asyncio.Future[None] | None = None
        try:
            await asyncio.wait({serve, started}, return_when=asyncio.FIRST_COMPLETED)
            if not serve.done():
                self.out.send_line("ready")
                ping = asyncio.ensure_future(self._ping(server))
            try:
                await serve
            except asyncio.CancelledError:
                if not serve.cancelled() or started.done():
                    raise
                return 1  # stopped while starting: SIGTERM, or the supervisor vanished (see _listen)
            except KestrelpyError as exc:
                if started.done():
                    raise
                self.out.send_line(f"fatal {exc.exit_code} {json.dumps(str(exc))}")
                return exc.exit_code
            return 0
        finally:
            restore_signals()
            for task in (started, listen, changes, ping):
                if task is not None:
                    task.cancel()
            while not self._changes.empty():
                close_sockets(self._changes.get_nowait()[1])
            if self.spec.config.metrics_bind:
                self.out.send_snapshot(server.metrics_snapshot())  # its last counts, before it exits
            self.out.finish(1.0)

    async def _listen(self, server: Server, serve: asyncio.Future[None]) -> None:
        pending = b""
        while True:
            data = await self._receive()
            *lines, pending = (pending + data).split(b"\n")
            for line in lines:
                if not self._obey(line.decode("ascii", "replace"), server, serve):
                    return
            if not data:  # the supervisor died: drain and leave rather than serve unsupervised
                self._obey("", server, serve)
                return

    def _obey(self, line: str, server: Server, serve: asyncio.Future[None]) -> bool:
        """Act on one line from the supervisor ("" for end of file); False when nothing more is to be read."""
        command, _, rest = line.partition(" ")
        if not server.started.is_set() and command in ("", "stop", "force"):
            # Nothing is in flight yet, and an import or lifespan startup may never finish: leave now.
            gone = "lost its supervisor" if not command else "was asked to stop"
            logger.warning("Worker [%d] %s while starting; leaving", os.getpid(), gone)
            serve.cancel()
            return False
        if not command:
            if not server.shutdown_requested:
                logger.warning("Worker [%d] lost its supervisor; shutting down", os.getpid())
                server.request_shutdown()
            return False
        if command == "force":
            server.request_shutdown()
            server.request_shutdown()
        elif command == "stop" and not server.shutdown_requested:
            server.request_shutdown()
        elif command == "listeners":
            self._take_change(rest)
        return True

    def _take_change(self, payload: str) -> None:
        """Queue a ListenerChange with its sockets (the descriptors that came with its line, in order)."""
        try:
            change = decode_listener_change(payload)
        except ValueError as exc:
            self.out.send_line(f"listeners-failed {json.dumps(str(exc))}")
            return
        passed = [self._passed.popleft() for kind, _ in change.add if kind == "passed" and self._passed]
        try:
            sockets = open_handed(change.add, passed)
        except (OSError, IndexError, ValueError) as exc:
            for fd in passed:
                os.close(fd)
            self.out.send_line(f"listeners-failed {json.dumps(f'cannot open the new sockets: {exc}')}")
            return
        self._changes.put_nowait((change, sockets))

    async def _apply_changes(self, server: Server) -> None:
        """Serve each ListenerChange in turn, once the server serves (one may come while it starts)."""
        await server.started.wait()
        while True:
            change, sockets = await self._changes.get()
            try:
                config = server.config.replace(**change.settings)
                await server.change_listeners(config, add=sockets, stop=change.stop, change=change.change)
            except (KestrelpyError, OSError) as exc:
                close_sockets(sockets)
                logger.error("Worker [%d] cannot serve the new endpoints: %s", os.getpid(), exc)
                self.out.send_line(f"listeners-failed {json.dumps(str(exc))}")
            else:
                self.out.send_line("listeners-changed")

    async def _receive(self) -> bytes:
        """What the supervisor wrote next (b"" at end of file); descriptors sent with it join `_passed`."""
        loop = asyncio.get_running_loop()
        if not platform.PASSES_DESCRIPTORS:
            try:
                return await loop.sock_recv(self.channel, 4096)
            except OSError:
                return b""
        while True:
            try:
                data, fds, flags, _ = socket.recv_fds(self.channel, 65536, MAX_PASSED)
            except BlockingIOError:
                await self._readable(loop)
                continue
            except OSError:
                return b""
            if flags & getattr(socket, "MSG_CTRUNC", 0):
                logger.error("Worker [%d] lost descriptors its supervisor sent (too many at once)", os.getpid())
            self._passed.extend(fds)
            return data

    async def _readable(self, loop: asyncio.AbstractEventLoop) -> None:
        readable = loop.create_future()
        fd = self.channel.fileno()

        def wake() -> None:
            if not readable.done():
                readable.set_result(None)

        loop.add_reader(fd, wake)
        try:
            await readable
        finally:
            loop.remove_reader(fd)

    async def _ping(self, server: Server) -> None:
        spec = self.spec
        memory_limit = int(spec.config.limit_worker_memory * MIB)
        asked = False
        while True:
            self.out.send_line("ping")
            if spec.config.metrics_bind:  # (--metrics-otel alone publishes from here, not through the supervisor)
                self.out.send_snapshot(server.metrics_snapshot())
            if not asked:
                reason = None
                served = server.requests_served
                if spec.max_requests and served >= spec.max_requests:
                    reason = f"served {served} requests (limit {spec.max_requests})"
                elif memory_limit:
                    rss = platform.resident_memory()
                    if rss is not None and rss > memory_limit:
                        reason = f"uses {rss / MIB:.0f} MiB (limit {spec.config.limit_worker_memory:g} MiB)"
                if reason is not None:
                    logger.info("Worker [%d] %s; asking to be replaced", os.getpid(), reason)
                    self.out.send_line(f"recycle {reason}")
                    asked = True
            await asyncio.sleep(spec.ping_interval)


def run_worker(spec: WorkerSpec, sockets: list[socket.socket], channel: socket.socket) -> int:
    """A worker's whole life on a fresh event loop; returns its exit code. This is the `WorkerMain` the
    CLI hands the supervisor (a module-level function, so that it pickles for a spawned worker)."""
    factory = platform.loop_factory(spec.config.loop)
    loop = factory()
    try:
        asyncio.set_event_loop(loop)
        return loop.run_until_complete(WorkerRun(spec, sockets, channel).run())
    except KeyboardInterrupt:
        return 130
    except BaseException:
        traceback.print_exc()
        return 1
    finally:
        asyncio.set_event_loop(None)
        loop.close()
