"""The guard's only door to the operating system.

Every probe reads the host through a `HostIO`: file text (/proc, /sys), external command output, a few
values only a system call can give (effective uid, the owner of our network namespace, an inherited
socket's state) and, on Windows, the raw TCP table from the IP Helper API. Three implementations:

* `SystemIO`    the real host, chosen by `sys.platform`; commands run with a timeout of at most 2 s;
* `FixtureIO`   recorded answers, for tests and for replaying a user's `--dump-facts` directory;
* `RecordingIO` wraps another HostIO and keeps everything it answered, then writes it out in the layout
                `FixtureIO.from_dir()` reads back.

Nothing in this module raises for a missing file or program: the answer is None and the probe decides
what that means.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import socket
import struct
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from kestrelpy.guard.facts import FdInfo, NetnsOwner

COMMAND_TIMEOUT = 2.0  # seconds; no probe may wait longer than this for one external command

# ioctl_ns(2): NS_GET_USERNS = _IO(0xb7, 0x1); returns an fd for the user namespace owning a namespace.
NS_GET_USERNS = 0xB701
# TCP_TABLE_CLASS.TCP_TABLE_OWNER_PID_LISTENER and ERROR_INSUFFICIENT_BUFFER (Windows iphlpapi.h, winerror.h)
_TCP_TABLE_OWNER_PID_LISTENER = 3
_ERROR_INSUFFICIENT_BUFFER = 122
WINDOWS_AF_INET6 = 23


@dataclass(frozen=True)
class CommandResult:
    returncode: int
    stdout: str
    timed_out: bool = False


class HostIO(Protocol):
    """What a probe may ask the host. Implementations never raise for missing things; they answer None."""

    @property
    def platform(self) -> str: ...

    def read_text(self, path: str) -> str | None: ...

    def list_dir(self, path: str) -> list[str] | None: ...

    def readlink(self, path: str) -> str | None: ...

    def run(self, argv: Sequence[str], timeout: float = COMMAND_TIMEOUT) -> CommandResult | None: ...

    def env(self, name: str) -> str | None: ...

    def euid(self) -> int | None: ...

    def user_name(self, uid: int) -> str | None: ...

    def netns_owner(self) -> NetnsOwner: ...

    def resolve(self, host: str) -> tuple[str, ...]: ...

    def inspect_fd(self, fd: int) -> FdInfo: ...

    def clock_ticks(self) -> int: ...

    def byteorder(self) -> str: ...

    def tcp_table(self, family: int) -> bytes | None: ...

    def sock_diag(self, family: int, states: int) -> bytes | None: ...


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


def command_key(argv: Sequence[str]) -> str:
    return " ".join(argv)


class FixtureIO:
    """Recorded answers. Anything not given is missing (files, commands) or a neutral default.

    A plain class rather than a dataclass: this module is imported on every server start, and generating
    dataclass methods for seventeen fields costs more than the guard's whole success path.
    """

    def __init__(
        self,
        *,
        platform: str = "linux",
        files: Mapping[str, str] | None = None,
        commands: Mapping[str, str] | None = None,  # command_key(argv) -> stdout
        command_codes: Mapping[str, int] | None = None,
        dirs: Mapping[str, list[str]] | None = None,
        links: Mapping[str, str] | None = None,
        environ: Mapping[str, str] | None = None,
        uid: int | None = 1000,
        users: Mapping[int, str] | None = None,
        owner: NetnsOwner = "own",
        hosts: Mapping[str, tuple[str, ...]] | None = None,
        fd_infos: Mapping[int, FdInfo] | None = None,
        ticks: int = 100,
        order: str = "little",
        tcp_tables: Mapping[int, bytes] | None = None,
        diag: Mapping[int, bytes] | None = None,  # family -> raw sock_diag replies
    ) -> None:
        self.platform = platform
        self.files = files
        self.commands = commands
        self.command_codes = command_codes
        self.dirs = dirs
        self.links = links
        self.environ = environ
        self.uid = uid
        self.users = users
        self.owner: NetnsOwner = owner
        self.hosts = hosts
        self.fd_infos = fd_infos
        self.ticks = ticks
        self.order = order
        self.tcp_tables = tcp_tables
        self.diag = diag
        self.ran: list[str] = []

    def read_text(self, path: str) -> str | None:
        return (self.files or {}).get(path)

    def list_dir(self, path: str) -> list[str] | None:
        entries = (self.dirs or {}).get(path)
        return list(entries) if entries is not None else None

    def readlink(self, path: str) -> str | None:
        return (self.links or {}).get(path)

    def run(self, argv: Sequence[str], timeout: float = COMMAND_TIMEOUT) -> CommandResult | None:
        key = command_key(argv)
        self.ran.append(key)
        out = (self.commands or {}).get(key)
        if out is None:
            return None
        return CommandResult((self.command_codes or {}).get(key, 0), out)

    def env(self, name: str) -> str | None:
        return (self.environ or {}).get(name)

    def euid(self) -> int | None:
        return self.uid

    def user_name(self, uid: int) -> str | None:
        return (self.users or {}).get(uid)

    def netns_owner(self) -> NetnsOwner:
        return self.owner

    def resolve(self, host: str) -> tuple[str, ...]:
        return (self.hosts or {}).get(host, ())

    def inspect_fd(self, fd: int) -> FdInfo:
        return (self.fd_infos or {}).get(fd, FdInfo(fd, is_socket=False))

    def clock_ticks(self) -> int:
        return self.ticks

    def byteorder(self) -> str:
        return self.order

    def tcp_table(self, family: int) -> bytes | None:
        return (self.tcp_tables or {}).get(family)

    def sock_diag(self, family: int, states: int) -> bytes | None:
        return (self.diag or {}).get(family)

    @classmethod
    def from_dir(cls, directory: str | os.PathLike[str]) -> FixtureIO:
        """Replay a directory written by `RecordingIO.dump()` (`kestrelpy check --dump-facts DIR`)."""
        root = Path(directory)
        manifest = json.loads((root / "manifest.json").read_text(encoding="utf-8"))

        def text(name: str) -> str:
            return (root / name).read_text(encoding="utf-8")

        return cls(
            platform=manifest["platform"],
            files={path: text(name) for path, name in manifest.get("files", {}).items()},
            commands={key: text(entry["file"]) for key, entry in manifest.get("commands", {}).items()},
            command_codes={key: entry["returncode"] for key, entry in manifest.get("commands", {}).items()},
            dirs=manifest.get("dirs"),
            links=manifest.get("links"),
            environ=manifest.get("env"),
            uid=manifest.get("euid"),
            users={int(k): v for k, v in manifest.get("users", {}).items()},
            owner=manifest.get("netns_owner", "unknown"),
            hosts={k: tuple(v) for k, v in manifest.get("hosts", {}).items()},
            fd_infos={int(k): FdInfo(**v) for k, v in manifest.get("fds", {}).items()},
            ticks=manifest.get("clock_ticks", 100),
            order=manifest.get("byteorder", "little"),
            tcp_tables={int(k): (root / v).read_bytes() for k, v in manifest.get("tcp_tables", {}).items()},
            diag={int(k): (root / v).read_bytes() for k, v in manifest.get("sock_diag", {}).items()},
        )


def _file_name(prefix: str, key: str, suffix: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9._=-]+", "_", key).strip("_")[:80] or "root"
    return f"{prefix}/{slug}{suffix}"


class RecordingIO:
    """Answers from another HostIO, remembered so they can be written out as a replayable directory."""

    def __init__(self, inner: HostIO) -> None:
        self._inner = inner
        self.files: dict[str, str] = {}
        self.commands: dict[str, CommandResult] = {}
        self.dirs: dict[str, list[str]] = {}
        self.links: dict[str, str] = {}
        self.environ: dict[str, str] = {}
        self.users: dict[int, str] = {}
        self.hosts: dict[str, tuple[str, ...]] = {}
        self.fds: dict[int, FdInfo] = {}
        self.tcp_tables: dict[int, bytes] = {}
        self.diag: dict[int, bytes] = {}
        self._euid: int | None = None
        self._owner: NetnsOwner | None = None

    @property
    def platform(self) -> str:
        return self._inner.platform

    def read_text(self, path: str) -> str | None:
        text = self._inner.read_text(path)
        if text is not None:
            self.files[path] = text
        return text

    def list_dir(self, path: str) -> list[str] | None:
        entries = self._inner.list_dir(path)
        if entries is not None:
            self.dirs[path] = entries
        return entries

    def readlink(self, path: str) -> str | None:
        target = self._inner.readlink(path)
        if target is not None:
            self.links[path] = target
        return target

    def run(self, argv: Sequence[str], timeout: float = COMMAND_TIMEOUT) -> CommandResult | None:
        result = self._inner.run(argv, timeout)
        if result is not None:
            self.commands[command_key(argv)] = result
        return result

    def env(self, name: str) -> str | None:
        value = self._inner.env(name)
        if value is not None:
            self.environ[name] = value
        return value

    def euid(self) -> int | None:
        self._euid = self._inner.euid()
        return self._euid

    def user_name(self, uid: int) -> str | None:
        name = self._inner.user_name(uid)
        if name is not None:
            self.users[uid] = name
        return name

    def netns_owner(self) -> NetnsOwner:
        self._owner = self._inner.netns_owner()
        return self._owner

    def resolve(self, host: str) -> tuple[str, ...]:
        self.hosts[host] = self._inner.resolve(host)
        return self.hosts[host]

    def inspect_fd(self, fd: int) -> FdInfo:
        self.fds[fd] = self._inner.inspect_fd(fd)
        return self.fds[fd]

    def clock_ticks(self) -> int:
        return self._inner.clock_ticks()

    def byteorder(self) -> str:
        return self._inner.byteorder()

    def tcp_table(self, family: int) -> bytes | None:
        data = self._inner.tcp_table(family)
        if data is not None:
            self.tcp_tables[family] = data
        return data

    def sock_diag(self, family: int, states: int) -> bytes | None:
        data = self._inner.sock_diag(family, states)
        if data is not None:
            self.diag[family] = data
        return data

    def dump(self, directory: str | os.PathLike[str]) -> list[str]:
        """Write every answer under `directory`; returns the relative paths written."""
        root = Path(directory)
        written: list[str] = []

        def put(name: str, data: str | bytes) -> str:
            path = root / name
            path.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(data, bytes):
                path.write_bytes(data)
            else:
                path.write_text(data, encoding="utf-8")
            written.append(name)
            return name

        files = {p: put(_file_name("files", p, ".txt"), t) for p, t in sorted(self.files.items())}
        commands = {
            key: {
                "file": put(_file_name("commands", key, ".txt"), r.stdout),
                "returncode": r.returncode,
                "timed_out": r.timed_out,
            }
            for key, r in sorted(self.commands.items())
        }
        tables = {str(f): put(f"tcp_table_v{f}.bin", data) for f, data in self.tcp_tables.items()}
        diag = {str(f): put(f"sock_diag_v{f}.bin", data) for f, data in self.diag.items()}
        manifest = {
            "platform": self.platform,
            "euid": self._euid,
            "netns_owner": self._owner or "unknown",
            "clock_ticks": self.clock_ticks(),
            "byteorder": self.byteorder(),
            "files": files,
            "commands": commands,
            "dirs": self.dirs,
            "links": self.links,
            "env": self.environ,
            "users": {str(k): v for k, v in self.users.items()},
            "hosts": {k: list(v) for k, v in self.hosts.items()},
            "fds": {str(k): dataclasses.asdict(v) for k, v in self.fds.items()},
            "tcp_tables": tables,
            "sock_diag": diag,
        }
        put("manifest.json", json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        return written


def default_io() -> HostIO:
    return SystemIO()
