"""What the probes learned about the host, as frozen values.

Probes (linux.py, darwin.py, windows.py) turn raw text into these; the verdict (verdict.py) turns these into
findings. Nothing here performs I/O, so every rule can be exercised with hand-built facts.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from kestrelpy.guard.fdinfo import FdInfo
from kestrelpy.guard.screen import CAP_NET_BIND_SERVICE, DEFAULT_UNPRIVILEGED_PORT_START, capability_counts

__all__ = [
    "CAP_NET_BIND_SERVICE",
    "DEFAULT_UNPRIVILEGED_PORT_START",
    "SYSTEM_PID",
    "DynamicRange",
    "FdInfo",
    "HostFacts",
    "HttpSysProcess",
    "HttpSysQueue",
    "HttpSysState",
    "HttpSysUrl",
    "LinuxPrivilege",
    "Listener",
    "LsmFacts",
    "NetnsOwner",
    "PortFacts",
    "PortRange",
    "TcpState",
    "TlsCertificate",
    "TlsFacts",
    "TlsFile",
    "TlsKeyState",
    "WindowsFacts",
    "WslFacts",
]

# Windows' "System" process: http.sys and other kernel drivers own their sockets under this PID.
SYSTEM_PID = 4

TcpState = Literal["LISTEN", "TIME_WAIT", "OTHER"]
NetnsOwner = Literal["own", "outside", "unknown"]
# What loading the private key said: it belongs to a certificate of the chain ("ok"), to none ("mismatch"),
# it is encrypted and no password was given, the password was wrong, no key could be read at all, or the
# checks could not tell.
TlsKeyState = Literal["ok", "mismatch", "no_password", "wrong_password", "unloadable", "unknown"]


@dataclass(frozen=True)
class Listener:
    """One TCP socket seen on the port we care about, whatever the OS it was read from."""

    family: int  # 4 or 6
    address: str  # canonical IP text, "0.0.0.0" / "::" for the wildcard
    port: int
    state: TcpState
    uid: int | None = None
    inode: int | None = None
    pids: tuple[int, ...] = ()
    names: tuple[str, ...] = ()
    user: str | None = None
    timewait_seconds: float | None = None

    @property
    def is_wildcard(self) -> bool:
        return self.address in ("0.0.0.0", "::")


@dataclass(frozen=True)
class PortFacts:
    """Who uses one TCP port, as far as this process can see."""

    port: int
    listeners: tuple[Listener, ...] = ()
    source: str = ""  # where the rows came from, for the message ("/proc/net/tcp", "lsof", ...)
    owners_visible: bool = True  # False when the process table could not be read for every holder


@dataclass(frozen=True)
class LinuxPrivilege:
    """Everything the kernel looks at before it lets a process bind a low port."""

    threshold: int
    threshold_source: Literal["sysctl", "default"]
    euid: int
    user: str | None
    capeff: int
    capamb: int
    no_new_privs: bool
    netns_owner: NetnsOwner  # "outside": our capabilities do not count in this network namespace
    uid_map_initial: bool
    authbind: bool

    @property
    def has_bind_capability(self) -> bool:
        return bool(self.capeff >> CAP_NET_BIND_SERVICE & 1)

    @property
    def capability_counts(self) -> bool:
        """True when CAP_NET_BIND_SERVICE is effective in the user namespace owning our network namespace."""
        return capability_counts(self.capeff, self.netns_owner, self.uid_map_initial)


@dataclass(frozen=True)
class LsmFacts:
    selinux_enforcing: bool | None
    context: str | None  # /proc/self/attr/current

    @property
    def active(self) -> bool:
        if self.selinux_enforcing:
            return True
        ctx = (self.context or "").strip()
        return bool(ctx) and "unconfined" not in ctx


@dataclass(frozen=True)
class WslFacts:
    version: Literal[1, 2]
    interop: bool


@dataclass(frozen=True)
class HttpSysUrl:
    raw: str
    scheme: str
    host: str
    port: int
    path: str


@dataclass(frozen=True)
class HttpSysProcess:
    pid: int
    image: str | None = None
    services: tuple[str, ...] = ()


@dataclass(frozen=True)
class HttpSysQueue:
    """One http.sys request queue: the processes serving it and the URLs registered for it."""

    processes: tuple[HttpSysProcess, ...]
    urls: tuple[HttpSysUrl, ...]


@dataclass(frozen=True)
class HttpSysState:
    queues: tuple[HttpSysQueue, ...]
    linked: bool  # False for the session view, where URLs and processes are listed apart
    urls: tuple[HttpSysUrl, ...]  # every registered URL, linked or not


@dataclass(frozen=True)
class PortRange:
    start: int
    end: int
    administered: bool = False

    def __contains__(self, port: object) -> bool:
        return isinstance(port, int) and self.start <= port <= self.end


@dataclass(frozen=True)
class DynamicRange:
    start: int
    count: int


@dataclass(frozen=True)
class WindowsFacts:
    excluded: tuple[PortRange, ...] | None = None  # None: not probed
    dynamic: DynamicRange | None = None
    httpsys: HttpSysState | None = None
    reservations: tuple[HttpSysUrl, ...] = ()
    iplisten: tuple[str, ...] = ()
    processes: tuple[HttpSysProcess, ...] = ()  # image names of holders, from tasklist


@dataclass(frozen=True)
class TlsFile:
    """A certificate or key file as the user the server runs as sees it (stat and access(2), not a read)."""

    path: str
    role: str  # the flag naming it: "--ssl-certfile" or "--ssl-keyfile"
    exists: bool | None  # None: a directory on the way could not be searched
    readable: bool
    uid: int | None = None
    gid: int | None = None
    mode: int | None = None  # the permission bits
    owner: str | None = None
    group: str | None = None


@dataclass(frozen=True)
class TlsCertificate:
    """One certificate of --ssl-certfile, in file order. Times are seconds since the epoch (UTC)."""

    subject: str
    issuer: str
    not_before: float
    not_after: float
    dns_names: tuple[str, ...] = ()
    ip_addresses: tuple[str, ...] = ()
    is_ca: bool = False
    self_signed: bool = False
    issued_by_next: bool | None = None  # the next certificate in the file signed this one; None for the last


@dataclass(frozen=True)
class TlsFacts:
    """The certificate and key the TLS endpoints will use. `deep` is False when only the ssl module could
    look at them (no `cryptography`): then `certificates` is empty and only `key`/`error` are known."""

    certfile: str
    keyfile: str  # "" when the key is in the certificate file
    files: tuple[TlsFile, ...] = ()
    certificates: tuple[TlsCertificate, ...] = ()
    key: TlsKeyState = "unknown"
    key_index: int | None = None  # which certificate the key belongs to (0 is where the leaf must be)
    error: str | None = None  # what the parser said when something could not be loaded
    deep: bool = False
    now: float = 0.0  # when the facts were gathered, for the validity rules
    origin: str = ""  # "endpoints.NAME" for the certificate of a config file endpoint; "" for --ssl-certfile

    def file(self, role: str) -> TlsFile | None:
        for f in self.files:
            if f.role == role:
                return f
        return None


@dataclass(frozen=True)
class HostFacts:
    """The facts gathered for one set of endpoints."""

    platform: str  # "linux", "darwin", "win32"
    euid: int | None = None
    user: str | None = None
    linux: LinuxPrivilege | None = None
    lsm: LsmFacts | None = None
    container: str | None = None
    wsl: WslFacts | None = None
    windows: WindowsFacts | None = None
    ports: tuple[PortFacts, ...] = ()
    windows_side_ports: tuple[PortFacts, ...] = ()  # WSL: what Windows itself listens on
    resolved: tuple[tuple[str, tuple[str, ...]], ...] = ()  # host -> addresses (empty: does not resolve)
    # address -> whether this host has it (a trial bind to port 0; None: could not tell). Only specific
    # addresses are asked about: wildcards and loopback are local without one.
    local_addresses: tuple[tuple[str, bool | None], ...] = ()
    fds: tuple[FdInfo, ...] = ()
    executable: str | None = None  # the interpreter Windows' firewall will ask about
    tls: TlsFacts | None = None  # the certificate of the TLS endpoints, when there are any
    notes: tuple[str, ...] = field(default=())  # probes that could not run, for --json

    def port(self, port: int) -> PortFacts | None:
        for p in self.ports:
            if p.port == port:
                return p
        return None

    def windows_side_port(self, port: int) -> PortFacts | None:
        for p in self.windows_side_ports:
            if p.port == port:
                return p
        return None

    def addresses(self, host: str) -> tuple[str, ...] | None:
        """The addresses a host name resolved to; () when it does not resolve, None when not looked up."""
        for name, addrs in self.resolved:
            if name == host:
                return addrs
        return None

    def is_local(self, address: str) -> bool | None:
        """False when this host does not have `address`; None when unknown or not asked about."""
        for name, local in self.local_addresses:
            if name == address:
                return local
        return None

    def fd(self, fd: int) -> FdInfo | None:
        for info in self.fds:
            if info.fd == fd:
                return info
        return None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
