"""The real host behind the guard's I/O seam: `SystemIO`, kept small because every server start loads it.

Only the standard library modules a server has already imported are used at import time; anything
heavier (subprocess for external commands, ctypes for the Windows IP Helper API, the fact classes) loads
inside the method that needs it. runner.py holds the seam's description (`HostIO`) and the recorded and
recording implementations.
"""

from __future__ import annotations

import os
import socket
import struct
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kestrelpy.guard.facts import NetnsOwner, TlsFile
    from kestrelpy.guard.fdinfo import FdInfo

COMMAND_TIMEOUT = 2.0  # seconds; no probe may wait longer than this for one external command

# ioctl_ns(2): NS_GET_USERNS = _IO(0xb7, 0x1); returns an fd for the user namespace owning a namespace.
NS_GET_USERNS = 0xB701
# TCP_TABLE_CLASS.TCP_TABLE_OWNER_PID_LISTENER and ERROR_INSUFFICIENT_BUFFER (Windows iphlpapi.h, winerror.h)
_TCP_TABLE_OWNER_PID_LISTENER = 3
_ERROR_INSUFFICIENT_BUFFER = 122
WINDOWS_AF_INET6 = 23
# linux/in.h: bind() checks the address but leaves the port unallocated until connect() or listen().
_IP_BIND_ADDRESS_NO_PORT = 24
_WSAEADDRNOTAVAIL = 10049
# Spellings of "every address" and the two loopbacks every host has: local without a system call.
_LOCAL_WITHOUT_ASKING = frozenset({"", "*", "+", "0.0.0.0", "::", "127.0.0.1", "::1", "localhost"})


class CommandResult:
    """What an external command printed (stdout only) and how it ended.

    A plain value class: a dataclass or NamedTuple here would cost more at every server start than the
    screen's whole run."""

    __slots__ = ("returncode", "stdout", "timed_out")

    def __init__(self, returncode: int, stdout: str, timed_out: bool = False) -> None:
        self.returncode = returncode
        self.stdout = stdout
        self.timed_out = timed_out

    def _key(self) -> tuple[int, str, bool]:
        return (self.returncode, self.stdout, self.timed_out)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CommandResult) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return f"CommandResult(returncode={self.returncode!r}, stdout={self.stdout!r}, timed_out={self.timed_out!r})"


def decode_output(data: bytes) -> str:
    """Command output as text: UTF-8 when it is, else the console code page, never an exception."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        encoding = "oem" if sys.platform == "win32" else "latin-1"
        text = data.decode(encoding, errors="replace")
    return text.replace("\r\n", "\n")


class SystemIO:
    """The real host."""

    def __init__(self, platform: str | None = None) -> None:
        self._platform = platform or sys.platform

    @property
    def platform(self) -> str:
        return self._platform

    def read_text(self, path: str) -> str | None:
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                return f.read()
        except OSError:
            return None

    def list_dir(self, path: str) -> list[str] | None:
        try:
            return os.listdir(path)
        except OSError:
            return None

    def readlink(self, path: str) -> str | None:
        try:
            return os.readlink(path)
        except OSError:
            return None

    def run(self, argv: Sequence[str], timeout: float = COMMAND_TIMEOUT) -> CommandResult | None:
        import subprocess

        try:
            done = subprocess.run(
                list(argv),
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=min(timeout, COMMAND_TIMEOUT),
                check=False,
            )
        except FileNotFoundError:
            return None
        except subprocess.TimeoutExpired as exc:
            out = exc.stdout if isinstance(exc.stdout, bytes) else b""
            return CommandResult(-1, decode_output(out), timed_out=True)
        except OSError:
            return None
        return CommandResult(done.returncode, decode_output(done.stdout))

    def env(self, name: str) -> str | None:
        return os.environ.get(name)

    def euid(self) -> int | None:
        geteuid = getattr(os, "geteuid", None)
        return int(geteuid()) if geteuid is not None else None

    def user_name(self, uid: int) -> str | None:
        try:
            import pwd
        except ImportError:
            return None
        try:
            return pwd.getpwuid(uid).pw_name
        except KeyError:
            return None

    def netns_owner(self) -> NetnsOwner:
        try:
            import fcntl
        except ImportError:
            return "unknown"
        try:
            fd = os.open("/proc/self/ns/net", os.O_RDONLY)
        except OSError:
            return "unknown"
        try:
            owner_fd = fcntl.ioctl(fd, NS_GET_USERNS)
        except PermissionError:
            # ioctl_ns(2): EPERM means the owning user namespace lies outside ours, so our
            # capabilities, however complete, do not count for binds in this network namespace.
            return "outside"
        except OSError:
            return "unknown"
        finally:
            os.close(fd)
        os.close(owner_fd)
        return "own"

    def resolve(self, host: str) -> tuple[str, ...]:
        try:
            infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        except (OSError, UnicodeError):
            return ()
        seen: list[str] = []
        for _family, _type, _proto, _name, sockaddr in infos:
            addr = str(sockaddr[0]).split("%", 1)[0]
            if addr not in seen:
                seen.append(addr)
        return tuple(seen)

    def inspect_fd(self, fd: int) -> FdInfo:
        from kestrelpy.guard.fdinfo import FdInfo

        try:
            dup = os.dup(fd)
        except OSError:
            return FdInfo(fd, is_socket=False)
        try:
            sock = socket.socket(fileno=dup)
        except OSError:
            os.close(dup)
            return FdInfo(fd, is_socket=False)
        try:
            accept_opt = getattr(socket, "SO_ACCEPTCONN", None)
            listening = bool(sock.getsockopt(socket.SOL_SOCKET, accept_opt)) if accept_opt else False
            family = {socket.AF_INET: 4, socket.AF_INET6: 6}.get(sock.family)
            address: str | None = None
            port: int | None = None
            if family is not None:
                name = sock.getsockname()
                address, port = str(name[0]), int(name[1])
            return FdInfo(fd, True, listening, family, address, port)
        except OSError:
            return FdInfo(fd, is_socket=False)
        finally:
            sock.close()  # closes our duplicate only; the inherited descriptor stays open

    def clock_ticks(self) -> int:
        try:
            return int(os.sysconf("SC_CLK_TCK"))
        except (AttributeError, ValueError, OSError):
            return 100

    def byteorder(self) -> str:
        return sys.byteorder

    def tcp_table(self, family: int) -> bytes | None:
        if self._platform != "win32":
            return None
        return _get_extended_tcp_table(WINDOWS_AF_INET6 if family == 6 else 2)

    def sock_diag(self, family: int, states: int) -> bytes | None:
        if not self._platform.startswith("linux"):
            return None
        return _sock_diag_dump(family, states)

    def address_is_local(self, host: str) -> bool | None:
        """A trial bind of a throwaway TCP socket to (address, 0), closed at once: it takes no port (on
        Linux not even an ephemeral one) and sends nothing. Only "address not available" means False;
        any other refusal says nothing about the address, so the answer is None."""
        if host.lower() in _LOCAL_WITHOUT_ASKING:
            return True
        passive = socket.AI_PASSIVE
        try:  # an IP literal, with its zone id turned into a scope id; no name service asked
            infos = socket.getaddrinfo(host, 0, type=socket.SOCK_STREAM, flags=passive | socket.AI_NUMERICHOST)
        except socket.gaierror:
            if ":" in host or "%" in host:
                return None  # an IP literal whose zone id names no interface: the real bind fails to resolve it
            try:  # a name: every address it resolves to
                infos = socket.getaddrinfo(host, 0, type=socket.SOCK_STREAM, flags=passive)
            except (OSError, UnicodeError):
                return None
        except (OSError, UnicodeError):
            return None
        answers = {_trial_bind(family, sockaddr) for family, _t, _p, _n, sockaddr in infos}
        if False in answers:
            return False
        return True if answers == {True} else None

    def file_access(self, path: str, role: str) -> TlsFile:
        """stat(2) for the owner and mode, access(2) with the effective ids for the answer the kernel will
        give the server's open() (ACLs and root included)."""
        from kestrelpy.guard.facts import TlsFile

        try:
            info = os.stat(path)
        except FileNotFoundError:
            return TlsFile(path, role, exists=False, readable=False)
        except OSError:  # EACCES on a directory of the path: it may exist, but cannot be reached
            return TlsFile(path, role, exists=None, readable=False)
        effective = os.access in os.supports_effective_ids
        readable = os.access(path, os.R_OK, effective_ids=effective)
        owner = self.user_name(info.st_uid)
        try:
            import grp

            group: str | None = grp.getgrgid(info.st_gid).gr_name
        except (ImportError, KeyError):
            group = None
        return TlsFile(path, role, True, readable, info.st_uid, info.st_gid, info.st_mode & 0o7777, owner, group)


def _trial_bind(family: int, sockaddr: tuple[object, ...]) -> bool | None:
    import errno

    try:
        sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError:
        return None  # the family itself is missing; the real bind will say so
    try:
        if sys.platform.startswith("linux"):
            try:
                option = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", _IP_BIND_ADDRESS_NO_PORT)
                sock.setsockopt(socket.IPPROTO_IP, option, 1)
            except OSError:
                pass  # older kernels: port 0 then borrows an ephemeral port until the close below
        sock.bind((sockaddr[0], 0, *sockaddr[2:]))
    except OSError as exc:
        if exc.errno == errno.EADDRNOTAVAIL or getattr(exc, "winerror", None) == _WSAEADDRNOTAVAIL:
            return False
        return None
    finally:
        sock.close()
    return True


def _get_extended_tcp_table(af: int) -> bytes | None:
    """The raw MIB_TCP(6)TABLE_OWNER_PID listener table (windows.decode_tcp_table reads it)."""
    import ctypes

    try:
        dll = getattr(ctypes, "WinDLL")("iphlpapi.dll")  # noqa: B009 - absent from ctypes off Windows
    except (AttributeError, OSError):
        return None
    fn = dll.GetExtendedTcpTable
    fn.argtypes = [
        ctypes.c_void_p,
        ctypes.POINTER(ctypes.c_uint32),
        ctypes.c_int,
        ctypes.c_uint32,
        ctypes.c_int,
        ctypes.c_uint32,
    ]
    fn.restype = ctypes.c_uint32
    size = ctypes.c_uint32(0)
    rc = fn(None, ctypes.byref(size), 0, af, _TCP_TABLE_OWNER_PID_LISTENER, 0)
    for _ in range(4):  # the table can grow between the two calls
        buf = ctypes.create_string_buffer(max(size.value, 4))
        rc = fn(buf, ctypes.byref(size), 0, af, _TCP_TABLE_OWNER_PID_LISTENER, 0)
        if rc == 0:
            return bytes(buf.raw[: size.value])
        if rc != _ERROR_INSUFFICIENT_BUFFER:
            return None
    return None


# linux/netlink.h, linux/sock_diag.h, linux/inet_diag.h
_NETLINK_SOCK_DIAG = 4
_SOCK_DIAG_BY_FAMILY = 20
_NLM_F_REQUEST_DUMP = 0x1 | 0x300
_NLMSG_ERROR, _NLMSG_DONE = 2, 3


def _sock_diag_dump(family: int, states: int) -> bytes | None:
    """Raw NETLINK_SOCK_DIAG replies for TCP sockets of `family` (4/6) in the `states` bit mask.

    The kernel filters by state, so asking for listeners walks only the listening hash: far cheaper than
    reading /proc/net/tcp, which formats every connection on a busy host. linux.parse_sock_diag reads it.
    """
    af = socket.AF_INET6 if family == 6 else socket.AF_INET
    netlink = getattr(socket, "AF_NETLINK", None)
    if netlink is None:
        return None
    req = struct.pack("=BBBxI", af, socket.IPPROTO_TCP, 0, states) + bytes(48)  # inet_diag_req_v2
    msg = struct.pack("=IHHII", 16 + len(req), _SOCK_DIAG_BY_FAMILY, _NLM_F_REQUEST_DUMP, 1, 0) + req
    chunks: list[bytes] = []
    try:
        with socket.socket(netlink, socket.SOCK_RAW, _NETLINK_SOCK_DIAG) as sock:
            sock.settimeout(COMMAND_TIMEOUT)
            sock.sendall(msg)
            while True:
                data = sock.recv(65536)
                if not data:
                    return None
                chunks.append(data)
                offset = 0
                while offset + 16 <= len(data):
                    length, kind = struct.unpack_from("=IH", data, offset)
                    if kind == _NLMSG_ERROR:
                        return None
                    if kind == _NLMSG_DONE:
                        return b"".join(chunks)
                    offset += (length + 3) & ~3
                    if length < 16:
                        return None
    except OSError:
        return None
