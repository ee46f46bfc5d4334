"""The OS seam for the event loop, listening-socket options and signals. Imports on every OS."""

from __future__ import annotations

import asyncio
import os
import select
import signal
import socket
import sys
import threading
from collections.abc import Callable
from typing import Any

IS_WINDOWS = sys.platform == "win32"


def uvloop_available() -> bool:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


def loop_factory(kind: str) -> Callable[[], asyncio.AbstractEventLoop]:
    """`auto` takes uvloop where it is installed (never on Windows), asyncio otherwise."""
    if kind == "uvloop" or (kind == "auto" and not IS_WINDOWS and uvloop_available()):
        import uvloop

        return uvloop.new_event_loop
    return asyncio.new_event_loop


def loop_name(loop: asyncio.AbstractEventLoop) -> str:
    return "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"


def configure_listener(sock: socket.socket) -> None:
    """Address-reuse options for a listening socket.

    POSIX: SO_REUSEADDR lets a restarted server bind over connections still in TIME_WAIT; it never
    lets two live listeners share a port. Windows: SO_REUSEADDR *would* let another process take a live
    port, so SO_EXCLUSIVEADDRUSE is set instead.
    """
    if IS_WINDOWS:
        exclusive = getattr(socket, "SO_EXCLUSIVEADDRUSE", None)
        if exclusive is not None:
            sock.setsockopt(socket.SOL_SOCKET, exclusive, 1)
    elif sock.family != getattr(socket, "AF_UNIX", None):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)


SHUTDOWN_SIGNALS = (signal.SIGINT, signal.SIGTERM) if not IS_WINDOWS else (signal.SIGINT, signal.SIGBREAK)  # type: ignore[attr-defined]


def install_shutdown_handlers(loop: asyncio.AbstractEventLoop, on_signal: Callable[[int], None]) -> Callable[[], None]:
    """Route SIGINT/SIGTERM (SIGBREAK on Windows) to `on_signal`; returns a function that restores them.

    Only the main thread may own signals: embedded servers running elsewhere get no handlers.
    """
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    if not IS_WINDOWS:
        for sig in SHUTDOWN_SIGNALS:
            loop.add_signal_handler(sig, on_signal, sig)

        def restore() -> None:
            for sig in SHUTDOWN_SIGNALS:
                loop.remove_signal_handler(sig)

        return restore
    previous = {sig: signal.getsignal(sig) for sig in SHUTDOWN_SIGNALS}
    for sig in SHUTDOWN_SIGNALS:
        signal.signal(sig, lambda signum, frame: loop.call_soon_threadsafe(on_signal, signum))

    def restore_windows() -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    return restore_windows


def install_reload_handler(loop: asyncio.AbstractEventLoop, on_reload: Callable[[], None]) -> Callable[[], None]:
    """Route SIGHUP to `on_reload` in a single server process; returns a function that restores it. Windows
    has no SIGHUP, and only the main thread may own signals: elsewhere nothing is installed."""
    if IS_WINDOWS or threading.current_thread() is not threading.main_thread():
        return lambda: None
    loop.add_signal_handler(signal.SIGHUP, on_reload)

    def restore() -> None:
        loop.remove_signal_handler(signal.SIGHUP)

    return restore


# -- multi-process mode ------------------------------------------------------------------------------

CAN_FORK = hasattr(os, "fork") and not IS_WINDOWS
# A running worker is handed a new socket as a descriptor over its Unix-socket channel (SCM_RIGHTS) on POSIX;
# on Windows, with socket.share() as a spawned one is (export_socket).
PASSES_DESCRIPTORS = hasattr(socket, "send_fds") and not IS_WINDOWS


REUSE_PORT_BALANCES = sys.platform.startswith("linux") and hasattr(socket, "SO_REUSEPORT")


def enable_reuse_port(sock: socket.socket) -> None:
    """SO_REUSEPORT, used only where the kernel load-balances a group of listeners (Linux 3.9+); on macOS
    and the BSDs the newest socket would take every connection, so --reuse-port is refused there."""
    if not REUSE_PORT_BALANCES:
        raise OSError(f"SO_REUSEPORT does not balance connections on {sys.platform}")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)


def supervisor_signals() -> dict[int, str]:
    """The signals a supervisor handles, by role; a role whose signal this OS lacks is left out.

    `stop`: drain and exit (SIGINT, SIGTERM; SIGBREAK on Windows). `roll`: replace every worker (SIGHUP).
    `add`/`remove`: one worker more or fewer (SIGTTIN/SIGTTOU). `child`: a worker exited (SIGCHLD),
    handled only so the supervisor wakes at once.
    """
    roles: dict[int, str] = {}
    for role, names in (
        ("stop", ("SIGINT", "SIGTERM", "SIGBREAK")),
        ("roll", ("SIGHUP",)),
        ("add", ("SIGTTIN",)),
        ("remove", ("SIGTTOU",)),
        ("child", ("SIGCHLD",)),
    ):
        for name in names:
            number = getattr(signal, name, None)
            if number is not None:
                roles[int(number)] = role
    return roles


def reset_signals_in_worker() -> None:
    """In a forked worker: forget the supervisor's handlers and wake-up fd before the worker's loop starts.

    SIGHUP/SIGTTIN/SIGTTOU are ignored: a terminal hang-up or a signal sent to the whole process group
    is the supervisor's business, not each worker's.
    """
    signal.set_wakeup_fd(-1)
    for name in ("SIGINT", "SIGTERM", "SIGCHLD"):
        number = getattr(signal, name, None)
        if number is not None:
            signal.signal(number, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for name in ("SIGHUP", "SIGTTIN", "SIGTTOU"):
        number = getattr(signal, name, None)
        if number is not None:
            signal.signal(number, signal.SIG_IGN)


def install_worker_signal_handlers(
    loop: asyncio.AbstractEventLoop, on_terminate: Callable[[], None]
) -> Callable[[], None]:
    """Signals in a supervised worker: SIGTERM asks for a graceful drain (never a forced one: only the
    supervisor escalates), and SIGINT/SIGBREAK are ignored. A Ctrl+C reaches every process of the
    terminal's group; the supervisor alone decides what it means, so a second Ctrl+C forces the
    shutdown once rather than the first one racing the supervisor's own request."""
    ignored = [getattr(signal, name) for name in ("SIGINT", "SIGBREAK") if hasattr(signal, name)]
    previous = {sig: signal.getsignal(sig) for sig in ignored}
    for sig in ignored:
        signal.signal(sig, signal.SIG_IGN)
    if IS_WINDOWS or threading.current_thread() is not threading.main_thread():
        terminate = None
    else:
        terminate = signal.SIGTERM
        loop.add_signal_handler(terminate, on_terminate)

    def restore() -> None:
        if terminate is not None:
            loop.remove_signal_handler(terminate)
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    return restore


def wait_status(pid: int) -> int | None:
    """A forked child's exit code (negative: the signal that killed it), or None while it runs."""
    try:
        done, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return -1
    if done == 0:
        return None
    return os.waitstatus_to_exitcode(status)


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"was killed by {name}"
    return f"exited with code {code}"


# Poll events that mean the peer has closed or reset the connection (POLLRDHUP is Linux's: elsewhere
# only a reset is seen). POLLIN is not asked for, so unread data does not hide a hang-up.
_HANG_UP = getattr(select, "POLLRDHUP", 0) | getattr(select, "POLLHUP", 0) | getattr(select, "POLLERR", 0)


def peer_hung_up(fd: int) -> bool:
    """True once the peer of this connected socket has closed or reset it, even when unread data is
    still queued: a connection that is not reading cannot learn it any other way until it writes."""
    if not _HANG_UP or fd < 0:  # Windows has no poll()
        return False
    poller = select.poll()
    poller.register(fd, _HANG_UP)
    return bool(poller.poll(0))


_TCP_INFO = getattr(socket, "TCP_INFO", None) if sys.platform.startswith("linux") else None


def listen_queue_length(sock: socket.socket) -> int | None:
    """Connections the kernel has accepted on this listening TCP socket that no process has taken yet,
    or None where that cannot be read. Linux: TCP_INFO on a listener reports its accept queue's current
    length in tcpi_unacked (the 32-bit field after four others, at byte 24)."""
    if _TCP_INFO is None or sock.family not in (socket.AF_INET, socket.AF_INET6) or sock.fileno() < 0:
        return None
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, 32)
    except OSError:
        return None
    return int.from_bytes(info[24:28], sys.byteorder) if len(info) >= 28 else None


def resident_memory() -> int | None:
    """This process's resident set size in bytes, or None where it cannot be read cheaply.

    Linux reads /proc/self/statm (current RSS). Other POSIX systems fall back to getrusage's peak RSS,
    which can only overstate the current size, so a worker is never kept past the limit.
    """
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        pass
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def export_socket(sock: socket.socket, pid: int) -> tuple[str, Any]:
    """Describe `sock` so a spawned child process `pid` can open it: Windows duplicates it with
    `socket.share`; POSIX passes the descriptor itself (the spawner lists it in `pass_fds`)."""
    if IS_WINDOWS:
        share: Callable[[int], bytes] = getattr(sock, "share")  # noqa: B009  (Windows only)
        return ("share", share(pid))
    return ("fd", sock.fileno())


def import_socket(exported: tuple[str, Any]) -> socket.socket:
    """The child's side of `export_socket`."""
    kind, value = exported
    if kind == "share":
        fromshare: Callable[[bytes], socket.socket] = getattr(socket, "fromshare")  # noqa: B009  (Windows only)
        return fromshare(value)
    if kind == "fd":
        return socket.socket(fileno=int(value))
    raise ValueError(f"unknown socket hand-over {kind!r}")
