"""Multi-process mode: one supervisor process, N workers serving the same listening sockets.

The supervisor runs the startup guard and binds every endpoint once; then it starts workers that all
serve those sockets (forked on POSIX; spawned on Windows, where each socket is handed over with
`socket.share`/`fromshare`). The kernel keeps one accept queue per socket, so a worker that stops
accepting never loses a connection while another one still accepts, and a connection that arrives
while no worker is accepting waits in the backlog. That is what makes a rolling replacement lossless.

Each worker has one end of a socketpair, its *channel*, and writes one line per event:

    ready              lifespan startup is done and the worker is accepting
    ping               once a second from its event loop; silence means the loop is blocked
    recycle REASON     past --limit-max-requests or --limit-worker-memory: please replace me
    fatal CODE MSG     startup failed in a way that another attempt will not fix (MSG is JSON)
    metrics JSON       with --metrics-bind: the worker's metrics totals, with each ping and on exit
                       (kestrelpy/metrics/snapshot.py; the supervisor serves their sum)

    listeners-changed  it serves the endpoints a `listeners` line described
    listeners-failed MSG  it could not (MSG is JSON); the supervisor replaces it

The supervisor writes `stop` (drain, as SIGTERM does), `force` (close everything now) or, after a SIGHUP
that changed only endpoints, `listeners PAYLOAD`: a ListenerChange (which listeners to open, stop and
serve with new settings), pickled and in base64; the sockets to open travel with it as descriptors
(SCM_RIGHTS) on POSIX and as `socket.share()` blobs inside it on Windows. End of file on the channel
tells a worker its supervisor is gone, and it drains and exits. The worker's side of
all this is worker.py, which the supervisor is handed as a `WorkerMain`: it never imports the server.

A worker's life, as the supervisor sees it:

    state      event                                   next
    starting   `ready`                                 serving
    serving    `recycle`, SIGHUP roll, `listeners-failed`  retiring   (a replacement is started)
    retiring   its replacement is `ready`              stopping   (`stop` is sent)
    any        SIGINT/SIGTERM, SIGTTOU, reload         stopping
    stopping   exit, or killed past its deadline       gone
    any        exit                                    gone       (replaced with backoff if unexpected)
    serving,   no ping for --timeout-worker-healthcheck killed, then gone and replaced
    retiring
    starting   no `ready` within --timeout-worker-startup killed, then gone and replaced

A worker that exits before `ready` with `fatal` stops the whole server with that exit code (3 for a
failed lifespan startup), except under --reload, where the supervisor waits for the next change, and
except the first replacement of a SIGHUP: if it exits (or is killed) before `ready`, the reload is
abandoned, and the running workers keep serving the configuration they have.
Five unexpected exits within ten seconds is a crash loop and stops the server (exit code 1).
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import pickle
import random
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from types import FrameType
from typing import TYPE_CHECKING, Any, Protocol

from kestrelpy import platform
from kestrelpy.config import Config
from kestrelpy.errors import BindError, ConfigError, KestrelpyError
from kestrelpy.metrics import exposition
from kestrelpy.metrics.listener import METRICS_BACKLOG, SelectListener
from kestrelpy.metrics.snapshot import Aggregate
from kestrelpy.sockets import bind_endpoints, bind_reuse_port, close_sockets, listen_url

if TYPE_CHECKING:
    from kestrelpy.config_reload import Reloaded

logger = logging.getLogger("kestrelpy.error")

CRASH_LIMIT = 5  # unexpected exits ...
CRASH_WINDOW = 10.0  # ... within this many seconds stop the server
BACKOFF_FIRST = 0.1  # seconds before replacing a crashed worker, doubled per recent crash
BACKOFF_MAX = 5.0
STOP_MARGIN = 5.0  # seconds past --timeout-graceful-shutdown before a stopping worker is killed
SEND_TIMEOUT = 2.0  # seconds a worker's channel may take a `listeners` line before the worker is replaced


class WorkerStartupError(KestrelpyError):
    """A worker could not start; carries the worker's own exit code and message."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class CrashLoopError(KestrelpyError):
    exit_code = 1


# -- what a worker is given ----------------------------------------------------------------------


ReuseGroup = tuple[int, tuple[Any, ...], "bool | None"]  # family, address, IPV6_V6ONLY

# A worker's whole life: serve `sockets` as `spec` says, report over `channel`; returns the exit code.
# The supervisor is handed one (worker.run_worker) rather than importing the server itself.
WorkerMain = Callable[["WorkerSpec", list[socket.socket], socket.socket], int]


@dataclass(frozen=True)
class WorkerSpec:
    """What one worker needs besides its sockets; built by the supervisor, so jitter differs per worker."""

    config: Config
    main: WorkerMain  # what the worker runs (worker.run_worker); travels with the spec to a spawned worker
    max_requests: int = 0  # 0: no limit
    ping_interval: float = 1.0
    reuse_groups: tuple[ReuseGroup, ...] = ()  # --reuse-port: the worker binds its own listener in each


def spawned_worker_main() -> None:
    """Entry point of a spawned worker: read the hand-over from stdin, open the sockets, serve."""
    payload = pickle.loads(sys.stdin.buffer.read())
    spec: WorkerSpec = payload["spec"]
    from kestrelpy import logs

    logs.configure_for(spec.config)
    sockets = [platform.import_socket(item) for item in payload["sockets"]]
    channel = platform.import_socket(payload["channel"])
    sys.exit(spec.main(spec, sockets, channel))


# -- changing a running worker's listeners ---------------------------------------------------------

Exported = tuple[str, Any]  # a socket as hand_over() describes it to one worker


@dataclass(frozen=True)
class ListenerChange:
    """What a worker is told by a SIGHUP that changed only endpoints (config_reload.py)."""

    settings: dict[str, Any]  # the new values of the Config fields that say where and how to listen
    stop: tuple[object, ...] = ()  # addresses (getsockname()) of the listeners to stop; drained
    change: tuple[object, ...] = ()  # addresses of the listeners to serve with new settings; drained, reopened
    add: tuple[Exported, ...] = ()  # the sockets to listen on as well


def hand_over(
    sockets: Sequence[socket.socket], pid: int, *, share: bool = not platform.PASSES_DESCRIPTORS
) -> tuple[tuple[Exported, ...], list[int]]:
    """How `sockets` reach the running worker `pid`: as descriptors sent with the line (("passed", i), the
    i-th of them) or, with `share` (Windows), as socket.share() blobs inside it."""
    if share:
        return tuple(platform.export_socket(sock, pid) for sock in sockets), []
    return tuple(("passed", i) for i in range(len(sockets))), [sock.fileno() for sock in sockets]


def encode_listener_change(change: ListenerChange) -> bytes:
    """The channel line for `change` (base64 keeps it one line of ASCII, which no other command matches)."""
    return b"listeners " + base64.b64encode(pickle.dumps(change)) + b"\n"


def decode_listener_change(payload: str) -> ListenerChange:
    """The worker's side of encode_listener_change (what follows `listeners `); ValueError if it is not one."""
    try:
        change = pickle.loads(base64.b64decode(payload, validate=True))
    except (binascii.Error, pickle.UnpicklingError, EOFError, AttributeError, ImportError, TypeError) as exc:
        raise ValueError(f"not a listener change: {exc}") from None
    if not isinstance(change, ListenerChange):
        raise ValueError("not a listener change")
    return change


def open_handed(
    exported: Sequence[Exported],
    passed: Sequence[int],
    opener: Callable[[Exported], socket.socket] = platform.import_socket,
) -> list[socket.socket]:
    """The sockets of a ListenerChange, in the worker: `passed` are the descriptors that came with its line."""
    return [socket.socket(fileno=passed[int(i)]) if kind == "passed" else opener((kind, i)) for kind, i in exported]


# -- starting a worker ----------------------------------------------------------------------------


class WorkerProcess(Protocol):
    pid: int

    def poll(self) -> int | None: ...

    def kill(self) -> None: ...


class ForkedProcess:
    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._code: int | None = None

    def poll(self) -> int | None:
        if self._code is None:
            self._code = platform.wait_status(self.pid)
        return self._code

    def kill(self) -> None:
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


class SpawnedProcess:
    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc
        self.pid = proc.pid

    def poll(self) -> int | None:
        return self.proc.poll()

    def kill(self) -> None:
        try:
            self.proc.kill()
        except OSError:
            pass


Starter = Callable[[WorkerSpec, list[socket.socket], Iterable[int]], tuple[WorkerProcess, socket.socket]]


def fork_worker(
    spec: WorkerSpec, sockets: list[socket.socket], close_in_child: Iterable[int]
) -> tuple[WorkerProcess, socket.socket]:
    """Fork a worker that inherits `sockets`; returns the process and the supervisor's end of its channel."""
    ours, theirs = socket.socketpair()
    close_fds = list(close_in_child)
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the worker
        code = 1
        try:
            platform.reset_signals_in_worker()
            ours.close()
            for fd in close_fds:
                try:
                    os.close(fd)
                except OSError:
                    pass
            code = spec.main(spec, sockets, theirs)
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    theirs.close()
    return ForkedProcess(pid), ours


def spawn_worker(
    spec: WorkerSpec, sockets: list[socket.socket], close_in_child: Iterable[int]
) -> tuple[WorkerProcess, socket.socket]:
    """Start a worker as a new interpreter (Windows, or anywhere fork is unwanted) and hand it the sockets."""
    if not isinstance(spec.config.app, str):
        raise ConfigError("several workers on this platform need the app as 'module:attribute', not an object")
    ours, theirs = socket.socketpair()
    handed = [*sockets, theirs]
    proc = subprocess.Popen(
        [sys.executable, "-c", "from kestrelpy.supervisor import spawned_worker_main; spawned_worker_main()"],
        stdin=subprocess.PIPE,
        pass_fds=() if platform.IS_WINDOWS else [s.fileno() for s in handed],
    )
    assert proc.stdin is not None
    payload = {
        "spec": spec,
        "sockets": [platform.export_socket(s, proc.pid) for s in sockets],
        "channel": platform.export_socket(theirs, proc.pid),
    }
    try:
        proc.stdin.write(pickle.dumps(payload))
        proc.stdin.close()
    except OSError:
        pass  # it died already; the supervisor sees the exit
    theirs.close()
    return SpawnedProcess(proc), ours


def default_starter() -> Starter:
    return fork_worker if platform.CAN_FORK else spawn_worker


# -- the supervisor side --------------------------------------------------------------------------


@dataclass(eq=False)
class Worker:
    process: WorkerProcess
    channel: socket.socket | None
    started_at: float
    last_seen: float
    state: str = "starting"  # starting | serving | retiring | stopping
    fatal: tuple[int, str] | None = None
    stop_deadline: float = 0.0
    killed_because: str = ""  # why the supervisor killed it: its exit is then expected, and replaced
    pending: bytes = b""

    @property
    def pid(self) -> int:
        return self.process.pid


@dataclass(eq=False)
class _Trial:
    """A SIGHUP's worker replacement until its first new worker serves: what to go back to if it cannot."""

    config: Config
    sockets: list[socket.socket]
    target: int
    reloaded: Reloaded | None  # None: the configuration was not read again
    first: Worker | None = None  # the first worker started with the new configuration
    started: list[Worker] = field(default_factory=list)  # every worker started with it so far


@dataclass
class _Watch:
    """Files changed under --reload, handed from the watcher thread to the supervisor's loop."""

    changes: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


class Supervisor:
    """Keeps `config.workers` workers serving; `run()` returns the exit code or raises a KestrelpyError."""

    def __init__(
        self,
        config: Config,
        worker_main: WorkerMain,
        *,
        starter: Starter | None = None,
        clock: Callable[[], float] = time.monotonic,
        reread: Callable[[], Config] | None = None,
    ) -> None:
        self.config = config
        self._reread = reread  # SIGHUP reads the configuration again with it (config_reload.py)
        self.worker_main = worker_main
        self.target = config.workers
        self._start = starter or default_starter()
        self._clock = clock
        self.workers: list[Worker] = []
        self._signals: deque[int] = deque()
        self._roles = platform.supervisor_signals()
        self._rolling: deque[Worker] = deque()
        self._trial: _Trial | None = None
        self._crashes: deque[float] = deque()
        self._respawn_at = 0.0
        self._stopping = False
        self._failure: KestrelpyError | None = None
        self._paused = False  # --reload: the app is broken; wait for a change
        self._all_serving_logged = False
        self._watch = _Watch()
        self._watch_stop = threading.Event()
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self.sockets: list[socket.socket] = []
        self._placeholders: list[socket.socket] = []  # --reuse-port: hold each port, never listen
        self._reuse_groups: tuple[ReuseGroup, ...] = ()
        self.metrics = Aggregate()  # every worker's metrics, summed (served only with --metrics-bind)
        self._metrics_listener: SelectListener | None = None

    # -- running --------------------------------------------------------------------------------

    def run(self) -> int:
        from kestrelpy import guard

        config = self.config
        if config.reuse_port and not platform.REUSE_PORT_BALANCES:
            raise ConfigError("--reuse-port needs Linux, where the kernel balances SO_REUSEPORT listeners")
        watcher = self._watcher() if config.reload else None
        endpoints = config.endpoints()
        tls = config.tls if any(e.tls for e in endpoints) else None
        findings = guard.predict(endpoints, reuse_port=config.reuse_port, tls=tls)
        blocking = guard.certificate_error(findings)
        if blocking is not None:  # as a single server does: before any bind or worker
            raise ConfigError(blocking.render())
        for finding in findings:
            logger.warning("%s", finding.render())
        self.sockets = bind_endpoints(endpoints, config.backlog)
        if config.reuse_port:
            self._hold_for_reuse_port()
        self._listen_for_metrics()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        restore = self._install_signals()
        try:
            logger.info(
                "Supervisor [%d] starting %d worker%s", os.getpid(), self.target, "" if self.target == 1 else "s"
            )
            if watcher is not None:
                watcher.start()
            while not self._finished():
                self._step()
                self._wait()
        finally:
            restore()
            self._watch_stop.set()
            for worker in self.workers:  # only left behind if the loop itself failed
                worker.process.kill()
            close_sockets(self.sockets)
            for sock in (*self._placeholders, self._wake_r, self._wake_w):
                sock.close()
            if self._metrics_listener is not None:
                self._metrics_listener.close()
            if watcher is not None:
                watcher.join(2)
        if self._failure is not None:
            raise self._failure
        logger.info("Supervisor [%d] finished", os.getpid())
        return 0

    def _hold_for_reuse_port(self) -> None:
        """Swap each TCP listener for a placeholder in an SO_REUSEPORT group: bound, so the port stays
        ours, but not listening, so the kernel hands it no connection. Each worker then binds its own
        listening socket in the group. Unix and inherited sockets stay shared."""
        shared: list[socket.socket] = []
        groups: list[ReuseGroup] = []
        try:
            for sock in self.sockets:
                family = sock.family
                if family not in (socket.AF_INET, socket.AF_INET6):
                    shared.append(sock)
                    continue
                address = sock.getsockname()
                v6only = (
                    bool(sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY))
                    if family == socket.AF_INET6
                    else None
                )
                close_sockets([sock])
                self._placeholders.append(
                    bind_reuse_port(family, address, self.config.backlog, v6only=v6only, listen=False)
                )
                groups.append((family, address, v6only))
        except OSError as exc:
            close_sockets([*self.sockets, *self._placeholders])
            raise BindError(f"Cannot prepare the SO_REUSEPORT group for --reuse-port: {exc}") from None
        self.sockets = shared
        self._reuse_groups = tuple(groups)

    def _listen_for_metrics(self) -> None:
        """--metrics-bind: the supervisor serves the whole server's metrics from its own select() loop."""
        endpoint = self.config.metrics_endpoint()
        if endpoint is None:
            return
        try:
            (sock,) = bind_endpoints([endpoint], METRICS_BACKLOG)
        except BaseException:
            close_sockets([*self.sockets, *self._placeholders])
            raise
        self._metrics_listener = SelectListener(sock, self.render_metrics, self._clock)
        logger.info("Metrics at %s/metrics", listen_url(sock))

    def render_metrics(self) -> str:
        queued = sum(platform.listen_queue_length(sock) or 0 for sock in self.sockets)
        return exposition.render(self.metrics.total(queued=queued))

    def _finished(self) -> bool:
        return self._stopping and not self.workers

    def _install_signals(self) -> Callable[[], None]:
        if threading.current_thread() is not threading.main_thread():
            return lambda: None
        assert self._wake_w is not None
        previous_fd = signal.set_wakeup_fd(self._wake_w.fileno(), warn_on_full_buffer=False)
        previous = {signum: signal.signal(signum, self._on_signal) for signum in self._roles}

        def restore() -> None:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            signal.set_wakeup_fd(previous_fd)

        return restore

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._signals.append(signum)

    def _wait(self) -> None:
        assert self._wake_r is not None
        now = self._clock()
        timeout = 0.5
        if self._respawn_at > now:
            timeout = min(timeout, self._respawn_at - now)
        readable = [self._wake_r, *(w.channel for w in self.workers if w.channel is not None)]
        if self._metrics_listener is not None:
            readable += self._metrics_listener.sockets()
        try:
            ready, _, _ = select.select(readable, [], [], max(timeout, 0.01))
        except (InterruptedError, ValueError, OSError):
            return
        if self._metrics_listener is not None:
            self._metrics_listener.serve(ready)
        if self._wake_r in ready:
            try:
                while self._wake_r.recv(4096):
                    pass
            except OSError:
                pass

    # -- one pass over everything -----------------------------------------------------------------

    def _step(self) -> None:
        now = self._clock()
        while self._signals:
            self._handle_signal(self._signals.popleft(), now)
        self._handle_changes(now)
        for worker in list(self.workers):
            self._read_channel(worker, now)
        for worker in list(self.workers):
            code = worker.process.poll()
            if code is not None:
                self._on_exit(worker, code, now)
        self._check_health(now)
        if not self._stopping:
            self._advance_roll()
            self._keep_count(now)

    def _handle_signal(self, signum: int, now: float) -> None:
        role = self._roles.get(signum)
        name = signal.Signals(signum).name
        if role == "stop":
            if self._stopping:
                logger.info("Supervisor received %s again; closing every connection now", name)
                for worker in self.workers:
                    self._tell(worker, "force")
                    worker.stop_deadline = min(worker.stop_deadline, now + STOP_MARGIN)
                return
            logger.info("Supervisor received %s; stopping %d worker(s)", name, len(self.workers))
            self._stop_all(now)
        elif role == "roll" and not self._stopping:
            self._reload(name)
        elif role == "add" and not self._stopping:
            self.target += 1
            logger.info("Supervisor received %s; now %d worker(s)", name, self.target)
        elif role == "remove" and not self._stopping:
            if self.target > 1:
                self.target -= 1
            logger.info("Supervisor received %s; now %d worker(s)", name, self.target)

    def _reload(self, name: str) -> None:
        """SIGHUP: the configuration read again (config_reload.py), then applied in the least disruptive way
        that serves all of it: listeners changed in place, workers added or stopped, or every worker replaced."""
        if self._trial is not None:
            logger.warning(
                "Supervisor received %s while the first worker of the last reload is starting; ignored", name
            )
            return
        trial = _Trial(self.config, self.sockets, self.target, None)
        if self._reread is None:
            self._replace_all(trial, f"{name} received")
            return
        from kestrelpy.config_reload import reload_config

        reloaded = reload_config(self.config, self.sockets, self._reread)
        if reloaded is None:
            return
        trial.reloaded = reloaded
        self.config, self.sockets = reloaded.config, reloaded.sockets
        if reloaded.count_changed:  # else SIGTTIN/SIGTTOU's count stays
            self.target = reloaded.config.workers
        how = reloaded.how
        if how == "replace":
            changed = ", ".join(reloaded.settings)
            self._replace_all(
                trial, f"{changed} changed" if changed else "nothing changed, so the app is imported afresh"
            )
            return
        reloaded.commit()
        if how == "listeners":
            running = [w for w in self.workers if w.state in ("starting", "serving", "retiring")]
            logger.info(
                "Only endpoints changed: changing the listeners of %d worker(s) in place; no worker is replaced",
                len(running),
            )
            for worker in running:
                self._hand_listeners(worker, reloaded)
        else:
            logger.info("Only the worker count changed: now %d worker(s); no worker is replaced", self.target)

    def _replace_all(self, trial: _Trial, why: str) -> None:
        self._trial = trial
        self._rolling = deque(w for w in self.workers if w.state in ("starting", "serving"))
        logger.info("Replacing %d worker(s) one at a time: %s", len(self._rolling), why)

    def _hand_listeners(self, worker: Worker, reloaded: Reloaded) -> None:
        """Tell a running worker which listeners to open, stop and serve anew; one that cannot be told is replaced."""
        exported, fds = hand_over(reloaded.added, worker.pid)
        change = ListenerChange(reloaded.endpoint_settings(), reloaded.stopped, reloaded.changed, exported)
        if not self._send(worker, encode_listener_change(change), fds):
            self._replace(worker, "could not be sent the new endpoints")

    def _send(self, worker: Worker, line: bytes, fds: list[int]) -> bool:
        channel = worker.channel
        if channel is None:
            return False
        try:
            channel.settimeout(SEND_TIMEOUT)
            sent = socket.send_fds(channel, [line], fds) if fds else 0  # the descriptors go with the first byte
            channel.sendall(line[sent:])
        except OSError:
            return False
        finally:
            channel.setblocking(False)
        return True

    def _replace(self, worker: Worker, why: str) -> None:
        if worker.state in ("starting", "serving"):
            worker.state = "retiring"
            logger.warning("Replacing worker [%d]: it %s", worker.pid, why)

    def _commit(self, worker: Worker | None) -> None:
        """The first worker with the new configuration serves (or none was left to replace): the reload stands."""
        trial = self._trial
        assert trial is not None
        self._trial = None
        if trial.reloaded is not None:
            trial.reloaded.commit()
        if worker is not None:
            logger.info("Worker [%d] serves the new configuration; replacing the others", worker.pid)

    def _abandon(self, worker: Worker, why: str) -> None:
        """The first worker with the new configuration did not start: go back to the running one."""
        trial = self._trial
        assert trial is not None
        self._trial = None
        self.config, self.sockets, self.target = trial.config, trial.sockets, trial.target
        if trial.reloaded is not None:
            trial.reloaded.abandon()
        for old in self._rolling:
            if old.state == "retiring":
                old.state = "serving"
        self._rolling.clear()
        now = self._clock()
        for started in trial.started:
            if started in self.workers and started.state != "stopping":
                self._stop(started, now)
        logger.error(
            "Reload abandoned: worker [%d] %s; the running workers keep serving the configuration they have",
            worker.pid,
            why,
        )

    def _stop_all(self, now: float) -> None:
        self._stopping = True
        self._rolling.clear()
        for worker in self.workers:
            if worker.state != "stopping":
                self._stop(worker, now)

    def _read_channel(self, worker: Worker, now: float) -> None:
        channel = worker.channel
        if channel is None:
            return
        data = b""
        try:
            while chunk := channel.recv(4096):
                data += chunk
            eof = True
        except BlockingIOError:
            eof = False
        except OSError:
            eof = True
        *lines, worker.pending = (worker.pending + data).split(b"\n")
        for raw in lines:
            self._on_message(worker, raw.decode("utf-8", "replace"), now)
        if eof:
            channel.close()
            worker.channel = None

    def _on_message(self, worker: Worker, line: str, now: float) -> None:
        kind, _, rest = line.partition(" ")
        worker.last_seen = now
        if kind == "ready" and worker.state == "starting":
            worker.state = "serving"
            logger.info("Worker [%d] is serving", worker.pid)
            if self._trial is not None and worker is self._trial.first:
                self._commit(worker)
            if not self._all_serving_logged and self._count("serving") >= self.target:
                self._all_serving_logged = True
                logger.info("All %d worker(s) are serving", self.target)
        elif kind == "metrics":
            self.metrics.update(worker.pid, rest)
        elif kind == "recycle" and worker.state == "serving":
            self.metrics.recycles += 1
            worker.state = "retiring"
            logger.info("Replacing worker [%d]: it %s", worker.pid, rest)
        elif kind == "listeners-changed":
            logger.info("Worker [%d] serves the new endpoints", worker.pid)
        elif kind == "listeners-failed":
            self._replace(worker, f"could not serve the new endpoints: {_message(rest)}")
        elif kind == "fatal":
            code, _, message = rest.partition(" ")
            try:
                worker.fatal = (int(code), str(json.loads(message)))
            except ValueError:
                worker.fatal = (1, message)

    def _on_exit(self, worker: Worker, code: int, now: float) -> None:
        self._read_channel(worker, now)  # the last lines may hold its fatal error, and its last metrics
        self.workers.remove(worker)
        self.metrics.worker_exited(worker.pid)
        if worker.channel is not None:
            worker.channel.close()
            worker.channel = None
        how = platform.describe_exit(code)
        trial = self._trial
        if trial is not None and worker is trial.first and not self._stopping:
            after = f"after it {worker.killed_because}" if worker.killed_because else "while starting"
            failed = worker.fatal[1] if worker.fatal else f"it {how} {after}"
            why = f"could not start with it: {failed}"
            self._abandon(worker, why)
            return
        if worker.state == "stopping" and not worker.killed_because:
            logger.info("Worker [%d] stopped (%s)", worker.pid, how)
            return
        if worker.fatal is not None:
            exit_code, message = worker.fatal
            logger.error("Worker [%d] could not start: %s", worker.pid, message)
            if self.config.reload:
                self._pause("the app failed to start")
            elif self._failure is None:
                self._failure = WorkerStartupError(message, exit_code)
                self._stop_all(now)
            return
        if self._stopping:
            logger.info("Worker [%d] %s", worker.pid, how)
            return
        self.metrics.restarts += 1
        if worker.killed_because:
            logger.warning("Worker [%d] %s after it %s; replacing it", worker.pid, how, worker.killed_because)
        else:
            logger.warning("Worker [%d] %s unexpectedly", worker.pid, how)
        self._crashes.append(now)
        while self._crashes and now - self._crashes[0] > CRASH_WINDOW:
            self._crashes.popleft()
        if len(self._crashes) >= CRASH_LIMIT:
            message = (
                f"workers exited unexpectedly {len(self._crashes)} times within {CRASH_WINDOW:g} s "
                f"(last: worker [{worker.pid}] {how}); stopping"
            )
            if self.config.reload:
                logger.error("%s", message)
                self._pause("workers keep crashing")
                self._crashes.clear()
            else:
                self._failure = CrashLoopError(message)
                self._stop_all(now)
            return
        delay = min(BACKOFF_FIRST * 2 ** (len(self._crashes) - 1), BACKOFF_MAX)
        self._respawn_at = max(self._respawn_at, now + delay)
        logger.info("Starting a replacement in %.1f s", delay)

    def _check_health(self, now: float) -> None:
        config = self.config
        silent_limit = config.timeout_worker_healthcheck
        startup_limit = config.timeout_worker_startup
        for worker in self.workers:
            if worker.state in ("serving", "retiring") and now - worker.last_seen > silent_limit:
                logger.warning(
                    "Worker [%d] has not reported for %.1f s (its event loop is blocked); killing it",
                    worker.pid,
                    now - worker.last_seen,
                )
                self._kill(worker, "stopped reporting")
            elif worker.state == "starting" and startup_limit and now - worker.started_at > startup_limit:
                logger.warning(
                    "Worker [%d] has not finished starting after %.1f s (--timeout-worker-startup); killing it",
                    worker.pid,
                    now - worker.started_at,
                )
                self._kill(worker, "did not finish starting")
            elif worker.state == "stopping" and now > worker.stop_deadline:
                logger.warning("Worker [%d] did not stop in time; killing it", worker.pid)
                worker.stop_deadline = float("inf")
                worker.process.kill()

    def _kill(self, worker: Worker, because: str) -> None:
        worker.killed_because = because
        worker.state = "stopping"
        worker.stop_deadline = float("inf")
        worker.process.kill()

    def _advance_roll(self) -> None:
        while self._rolling:
            head = self._rolling[0]
            if head not in self.workers or head.state == "stopping":
                self._rolling.popleft()
                if not self._rolling:
                    logger.info("Every worker has been replaced")
                continue
            if head.state == "serving":
                head.state = "retiring"
                logger.info("Replacing worker [%d]", head.pid)
            return
        if self._trial is not None and self._trial.first is None:
            self._commit(None)  # every worker to replace left before a replacement started

    def _keep_count(self, now: float) -> None:
        fresh = [w for w in self.workers if w.state in ("starting", "serving")]
        if self._paused or (self.config.reload and self._count("stopping")):
            return
        if len(fresh) < self.target:
            if now >= self._respawn_at:
                for _ in range(self.target - len(fresh)):  # in parallel: apps may take seconds to import
                    self._spawn(now)
            return
        starting = self._count("starting")
        serving = [w for w in fresh if w.state == "serving"]
        retiring = [w for w in self.workers if w.state == "retiring"]
        if retiring and not starting and len(serving) >= self.target:
            self._stop(retiring[0], now)  # its replacement is serving: now it may drain
        elif len(fresh) > self.target and not retiring:
            newest = max(fresh, key=lambda w: w.started_at)
            logger.info("Stopping worker [%d] (%d worker(s) wanted)", newest.pid, self.target)
            self._stop(newest, now)

    def _count(self, state: str) -> int:
        return sum(1 for w in self.workers if w.state == state)

    def _spawn(self, now: float) -> None:
        config = self.config
        max_requests = config.limit_max_requests
        if max_requests:
            max_requests += random.randint(0, config.limit_max_requests_jitter)
        spec = WorkerSpec(
            config,
            self.worker_main,
            max_requests,
            ping_interval=min(1.0, config.timeout_worker_healthcheck / 4),
            reuse_groups=self._reuse_groups,
        )
        close_in_child = [w.channel.fileno() for w in self.workers if w.channel is not None]
        assert self._wake_r is not None and self._wake_w is not None
        close_in_child += [self._wake_r.fileno(), self._wake_w.fileno(), *(s.fileno() for s in self._placeholders)]
        process, channel = self._start(spec, self.sockets, close_in_child)
        channel.setblocking(False)
        worker = Worker(process, channel, started_at=now, last_seen=now)
        self.workers.append(worker)
        if self._trial is not None:
            self._trial.started.append(worker)
            if self._trial.first is None:
                self._trial.first = worker
        logger.info("Started worker [%d]", process.pid)

    def _stop(self, worker: Worker, now: float) -> None:
        worker.state = "stopping"
        config = self.config
        worker.stop_deadline = now + config.shutdown_delay + config.timeout_graceful_shutdown + STOP_MARGIN
        logger.info("Asking worker [%d] to drain", worker.pid)
        self._tell(worker, "stop")

    def _tell(self, worker: Worker, message: str) -> None:
        if worker.channel is not None:
            try:
                worker.channel.send(message.encode("ascii") + b"\n")
            except OSError:
                pass

    # -- --reload ---------------------------------------------------------------------------------

    def _pause(self, why: str) -> None:
        self._paused = True
        logger.error("%s; waiting for a file to change", why.capitalize())

    def _handle_changes(self, now: float) -> None:
        with self._watch.lock:
            changes, self._watch.changes = self._watch.changes, []
        if not changes or self._stopping:
            return
        shown = ", ".join(sorted(set(changes))[:3]) + (" ..." if len(set(changes)) > 3 else "")
        logger.info("Detected changes in %s; restarting the workers", shown)
        self._paused = False
        self._crashes.clear()
        self._respawn_at = now
        self._rolling.clear()
        for worker in self.workers:
            if worker.state != "stopping":
                self._stop(worker, now)

    def _watcher(self) -> threading.Thread:
        from kestrelpy.reload import watch_for_changes

        config = self.config
        watch = watch_for_changes(
            config.reload_dirs or (config.app_dir,), config.reload_includes, config.reload_excludes
        )

        def on_changes(paths: list[str]) -> None:
            with self._watch.lock:
                self._watch.changes.extend(paths)
            if self._wake_w is not None:
                try:
                    self._wake_w.send(b"\0")
                except OSError:
                    pass

        return threading.Thread(target=watch, args=(on_changes, self._watch_stop), name="kestrelpy-reload", daemon=True)


def _message(encoded: str) -> str:
    """A JSON string from the channel, or the text itself if it is not one."""
    try:
        return str(json.loads(encoded))
    except ValueError:
        return encoded


def run_supervisor(config: Config, worker_main: WorkerMain, reread: Callable[[], Config] | None = None) -> int:
    return Supervisor(config, worker_main, reread=reread).run()
