"""Listening sockets: the only place kestrelpy creates them.

Every endpoint is bound and set listening before the app's startup code runs, so a failed bind never
runs it; connections that arrive before startup completes wait in the kernel's backlog. If any bind
fails, every socket already bound is closed and the startup guard explains the real error.

What each endpoint becomes:
- `localhost:P`: 127.0.0.1:P and [::1]:P (the same port when P is 0). A family the host lacks is
  skipped; any other failure, such as the port being taken on either address, fails the bind.
- `*:P`, `+:P`, `[::]:P`: one dual-stack [::]:P socket (IPV6_V6ONLY off), or 0.0.0.0:P where IPv6 is
  absent.
- an IP literal (IPv6 may carry a `%zone`) or a name: one socket on the first address it resolves to.
- `unix:PATH`: a stale socket file left by a dead server is replaced; a live one, or any other kind of
  file, is left alone and the bind fails. The file is removed again by `close_sockets`.
- `fd://N` and systemd sockets: adopted after checking they are listening stream sockets.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import stat
import weakref
from collections.abc import Callable, Iterable, Sequence

from kestrelpy import platform
from kestrelpy.endpoints import Endpoint, FdEndpoint, TcpEndpoint, UnixEndpoint
from kestrelpy.errors import BindError, ConfigError, KestrelpyError

# Families a host may simply not have: such a localhost half is skipped instead of failing the bind.
_FAMILY_MISSING = frozenset({errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL, errno.EPROTONOSUPPORT})
_AF_UNIX = getattr(socket, "AF_UNIX", None)

SocketFactory = Callable[[int, int], socket.socket]

# Socket files this process created, by socket: (path, st_dev, st_ino), so that shutdown removes the
# file only while it is still ours (a newer server may already have replaced it).
_created_files: weakref.WeakKeyDictionary[socket.socket, tuple[str, int, int]] = weakref.WeakKeyDictionary()


def bind_endpoints(
    endpoints: Sequence[Endpoint], backlog: int, *, new_socket: SocketFactory = socket.socket
) -> list[socket.socket]:
    """Bind and listen on every endpoint (some give two sockets); all or nothing.

    `new_socket(family, type)` creates the TCP sockets: the seam tests use to play a host without IPv6."""
    bound: list[socket.socket] = []
    for endpoint in endpoints:
        try:
            bound.extend(bind_endpoint(endpoint, backlog, new_socket=new_socket))
        except OSError as exc:
            close_sockets(bound)
            raise _bind_error(exc, endpoint) from None
        except KestrelpyError:
            close_sockets(bound)
            raise
    return bound


def bind_endpoint(
    endpoint: Endpoint, backlog: int, *, new_socket: SocketFactory = socket.socket
) -> list[socket.socket]:
    if isinstance(endpoint, TcpEndpoint):
        if endpoint.is_localhost:
            return _bind_localhost(endpoint.port, backlog, new_socket)
        if endpoint.any_address:
            return [_bind_any(endpoint.port, backlog, new_socket)]
        return [_bind_tcp(endpoint.host, endpoint.port, backlog, new_socket)]
    if isinstance(endpoint, UnixEndpoint):
        return [_bind_unix(endpoint, backlog)]
    if isinstance(endpoint, FdEndpoint):
        return [adopt_fd(endpoint)]
    raise ConfigError(f"unknown endpoint {endpoint!r}")


def close_sockets(sockets: Iterable[socket.socket]) -> None:
    """Close listening sockets and remove the Unix socket files this process created for them."""
    for sock in sockets:
        created = _created_files.pop(sock, None)
        sock.close()
        if created is not None:
            _remove_if_ours(*created)


def _remove_if_ours(path: str, dev: int, ino: int) -> None:
    try:
        info = os.lstat(path)
        if (info.st_dev, info.st_ino) == (dev, ino) and stat.S_ISSOCK(info.st_mode):
            os.unlink(path)
    except OSError:
        pass


# -- TCP ------------------------------------------------------------------------------------------


def _listen_on(
    family: int,
    address: tuple[object, ...],
    backlog: int,
    *,
    v6only: bool | None = None,
    new_socket: SocketFactory = socket.socket,
    reuse_port: bool = False,
    listen: bool = True,
) -> socket.socket:
    sock = new_socket(family, socket.SOCK_STREAM)
    try:
        platform.configure_listener(sock)
        if reuse_port:
            platform.enable_reuse_port(sock)
        if family == socket.AF_INET6 and v6only is not None:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1 if v6only else 0)
        sock.bind(address)
        if listen:
            sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def _bind_tcp(host: str, port: int, backlog: int, new_socket: SocketFactory) -> socket.socket:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, _kind, _proto, _, address = infos[0]
    v6only = True if family == socket.AF_INET6 else None
    return _listen_on(family, address, backlog, v6only=v6only, new_socket=new_socket)


def _bind_any(port: int, backlog: int, new_socket: SocketFactory) -> socket.socket:
    """Every address: dual-stack [::] where the OS allows it, else 0.0.0.0."""
    if socket.has_ipv6:
        try:
            return _listen_on(socket.AF_INET6, ("::", port), backlog, v6only=False, new_socket=new_socket)
        except OSError as exc:
            if exc.errno not in _FAMILY_MISSING:
                raise
    return _listen_on(socket.AF_INET, ("0.0.0.0", port), backlog, new_socket=new_socket)


def _bind_localhost(port: int, backlog: int, new_socket: SocketFactory) -> list[socket.socket]:
    """127.0.0.1 and ::1 on one port. A missing family is skipped; a taken port is an error."""
    sockets: list[socket.socket] = []
    missing: OSError | None = None
    try:
        for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
            if family == socket.AF_INET6 and not socket.has_ipv6:
                continue
            address: tuple[object, ...] = (host, port) if family == socket.AF_INET else (host, port, 0, 0)
            try:
                v6only = True if family == socket.AF_INET6 else None
                sock = _listen_on(family, address, backlog, v6only=v6only, new_socket=new_socket)
            except OSError as exc:
                if exc.errno not in _FAMILY_MISSING:
                    raise
                missing = missing or exc
                continue
            sockets.append(sock)
            if port == 0:
                port = sock.getsockname()[1]  # the second loopback gets the port the kernel chose
    except BaseException:
        close_sockets(sockets)
        raise
    if not sockets:
        assert missing is not None
        raise missing
    return sockets


# -- Unix domain sockets --------------------------------------------------------------------------


def _bind_unix(endpoint: UnixEndpoint, backlog: int) -> socket.socket:
    if _AF_UNIX is None:
        raise ConfigError(f"{endpoint.display()}: Unix domain sockets are not available on this system")
    path = endpoint.path
    _clear_stale_socket(path)
    sock = socket.socket(_AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        info = os.lstat(path)
        _created_files[sock] = (path, info.st_dev, info.st_ino)
        if endpoint.mode is not None:
            os.chmod(path, endpoint.mode)
        sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        close_sockets([sock])
        raise
    return sock


def _clear_stale_socket(path: str) -> None:
    """Remove a socket file nobody listens on. A live socket raises EADDRINUSE (the guard explains it);
    anything that is not a socket is never touched."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(info.st_mode):
        kind = "directory" if stat.S_ISDIR(info.st_mode) else "file that is not a socket"
        raise BindError(
            f"Cannot listen on unix:{path}: a {kind} is in the way.\n"
            f"  kestrelpy only ever replaces a stale socket file; it will not delete this. "
            f"Move it away or choose another path."
        )
    probe = socket.socket(_AF_UNIX, socket.SOCK_STREAM)  # type: ignore[arg-type]
    try:
        probe.settimeout(1.0)
        probe.connect(path)
    except ConnectionRefusedError:
        pass  # nobody listens: a server died without cleaning up
    except OSError:
        return  # cannot tell; let bind() report what it finds
    else:
        raise OSError(errno.EADDRINUSE, "another server is listening on this socket", path)
    finally:
        probe.close()
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


# -- inherited sockets ----------------------------------------------------------------------------


def adopt_fd(endpoint: FdEndpoint) -> socket.socket:
    """Take over an inherited listening socket, refusing anything that is not one, with the reason."""
    fd = endpoint.fd
    sock = socket.socket(fileno=fd)  # OSError (EBADF, ENOTSOCK) goes to the guard
    try:
        families = {socket.AF_INET: "TCP/IPv4", socket.AF_INET6: "TCP/IPv6"}
        if _AF_UNIX is not None:
            families[_AF_UNIX] = "Unix"
        problem = None
        if sock.family not in families:
            problem = f"is a socket of family {sock.family!r}, not TCP or Unix"
        elif sock.type != socket.SOCK_STREAM:
            problem = f"is a {families[sock.family]} socket of type {sock.type!r}, not a stream socket"
        elif not _is_listening(sock):
            problem = f"is a {families[sock.family]} stream socket that is not listening (listen() was not called)"
        if problem is not None:
            sock.detach()  # leave the descriptor as it was: it is not ours to close
            raise BindError(
                f"Cannot serve on {endpoint.display()}: file descriptor {fd} {problem}.\n"
                "  Pass a bound, listening stream socket (systemd: ListenStream= in a .socket unit)."
            )
        sock.setblocking(False)
    except BaseException:
        if sock.fileno() != -1:
            sock.detach()
        raise
    return sock


def _is_listening(sock: socket.socket) -> bool:
    option = getattr(socket, "SO_ACCEPTCONN", None)
    if option is None:
        return True  # cannot ask (Windows); accept() will tell
    try:
        return bool(sock.getsockopt(socket.SOL_SOCKET, option))
    except OSError:
        return True


def _bind_error(exc: OSError, endpoint: Endpoint) -> BindError:
    from kestrelpy import guard  # the guard's probes load only when a bind has failed

    finding = guard.explain(exc, endpoint)
    return BindError(finding.render(), [finding])


def socket_address(sock: socket.socket) -> tuple[str, int]:
    """(host, port) of a TCP listener; (path, 0) for a Unix one."""
    name = sock.getsockname()
    if isinstance(name, (str, bytes)):
        return (name.decode() if isinstance(name, bytes) else name), 0
    host, port = name[:2]
    return str(host), int(port)


def listen_url(sock: socket.socket) -> str:
    """How the log names a listening socket: http://127.0.0.1:8000, http://[::]:8000, http://unix:/path."""
    name = sock.getsockname()
    if _AF_UNIX is not None and sock.family == _AF_UNIX:
        path = name.decode(errors="replace") if isinstance(name, bytes) else str(name)
        return f"http://unix:{path or '(unnamed)'}"
    host, port = str(name[0]), int(name[1])
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


# -- SO_REUSEPORT groups (--reuse-port) ------------------------------------------------------------


def bind_reuse_port(
    family: int, address: tuple[object, ...], backlog: int, *, v6only: bool | None, listen: bool
) -> socket.socket:
    """A TCP socket in the SO_REUSEPORT group on `address` (Linux spreads connections across the group's
    listening sockets). `listen=False` gives the supervisor's placeholder: it holds the port against
    other binds but, not listening, never receives a connection."""
    return _listen_on(family, address, backlog, v6only=v6only, reuse_port=True, listen=listen)
