"""The OS seam for the event loop, listening-socket options and signals. Imports on every OS."""

from __future__ import annotations

import asyncio
import signal
import socket
import sys
import threading
from collections.abc import Callable

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


def install_shutdown_handlers(
    loop: asyncio.AbstractEventLoop, on_signal: Callable[[int], None]
) -> Callable[[], None]:
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
