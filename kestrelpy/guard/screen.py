"""The pre-bind screen: the few cheap reads that tell an ordinary start it has nothing to fear.

Every server start runs `clear()` before binding. It answers True only when the full rules (collect.py
and verdict.py) could not find anything either; on any doubt it answers False and `predict()` runs the full
probes and rules, which name the problem. So the common case on Linux, a free port above the privileged
floor, costs one sysctl read and one sock_diag query per address family, and loads neither the fact
classes, the rules nor the message catalogue.

What makes the screen step aside (answer False):

* a port below the unprivileged floor without a capability that counts (Linux), or, on a Linux host that
  looks like a container, a low port that binds (the full rules add a note about publishing it);
  a port below 1024 for a non-root user elsewhere (macOS allows it on the wildcard address only);
* on Linux, any listening socket on a requested port (or, when sock_diag is unavailable, a TIME_WAIT row),
  whatever its address: whether it really conflicts is for the rules to say (on macOS the full rules
  look for holders only after a failed bind, so the screen does not either);
* a host name that does not resolve; two TCP endpoints on the same port; an inherited descriptor that is
  not a listening socket;
* an address this host does not have (the bind would fail with "address not available"). Wildcards,
  `localhost` and loopback addresses are taken as local without asking, so an ordinary start pays
  nothing; a specific address costs one trial bind to port 0 (`HostIO.address_is_local`), which takes
  no port and sends nothing;
* on Windows, a listener on the port in the IP Helper table, or an address other than loopback (the full
  rules add a note about the firewall prompt).

The small parsers the screen shares with the Linux probes live here so that both read the host the same
way; linux.py re-exports them.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Sequence
from typing import TYPE_CHECKING

from kestrelpy.endpoints import Endpoint, FdEndpoint, TcpEndpoint

if TYPE_CHECKING:
    from kestrelpy.guard.runner import HostIO

# The capability bit that lets a process bind ports below the unprivileged floor (linux/capability.h).
CAP_NET_BIND_SERVICE = 10
# The compiled-in floor used by kernels older than 4.11, which have no ip_unprivileged_port_start sysctl.
DEFAULT_UNPRIVILEGED_PORT_START = 1024

THRESHOLD_PATH = "/proc/sys/net/ipv4/ip_unprivileged_port_start"
STATUS_PATH = "/proc/self/status"
UID_MAP_PATH = "/proc/self/uid_map"
TCP_PATHS = {4: "/proc/net/tcp", 6: "/proc/net/tcp6"}

LISTEN_MASK = 1 << 0x0A  # TCP_LISTEN as a sock_diag state bit (include/net/tcp_states.h)
_LISTEN_OR_TIME_WAIT = ("0A", "06")
_DIAG_HEADER = 16  # struct nlmsghdr
_DIAG_MSG_SIZE = 72  # struct inet_diag_msg
# MIB_TCPROW_OWNER_PID / MIB_TCP6ROW_OWNER_PID (tcpmib.h): row size, offsets of the local port and the state
_WIN_ROWS = {4: (24, 8, 0), 6: (56, 20, 48)}
_WIN_LISTEN = 2  # MIB_TCP_STATE_LISTEN


# --------------------------------------------------------------------------------------------------
# Parsers shared with linux.py


def parse_threshold(text: str | None) -> tuple[int, bool]:
    """(floor, read_from_sysctl). A missing or unreadable file means a pre-4.11 kernel: 1024."""
    if text is not None:
        try:
            return int(text.strip()), True
        except ValueError:
            pass
    return DEFAULT_UNPRIVILEGED_PORT_START, False


def parse_status(text: str | None) -> dict[str, str]:
    """The `Key:\tvalue` lines of /proc/<pid>/status."""
    fields: dict[str, str] = {}
    for line in (text or "").splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields[key.strip()] = value.strip()
    return fields


def status_hex(fields: dict[str, str], key: str) -> int:
    try:
        return int(fields.get(key, "0"), 16)
    except ValueError:
        return 0


def parse_uid_map_initial(text: str | None) -> bool:
    """True for the initial user namespace, whose map is the identity over the whole uid range."""
    if text is None:
        return True  # no user namespaces compiled in: we are in the only one there is
    rows = [line.split() for line in text.splitlines() if line.strip()]
    return rows == [["0", "0", "4294967295"]]


def capability_counts(capeff: int, netns_owner: str, uid_map_initial: bool) -> bool:
    """True when CAP_NET_BIND_SERVICE is effective in the user namespace owning our network namespace."""
    if not capeff >> CAP_NET_BIND_SERVICE & 1:
        return False
    if netns_owner == "unknown":
        return uid_map_initial
    return netns_owner == "own"


def detect_container(io: HostIO) -> str | None:
    """A hint for wording remedies only (never used to decide)."""
    if io.read_text("/.dockerenv") is not None:
        return "docker"
    if io.env("KUBERNETES_SERVICE_HOST"):
        return "kubernetes"
    cgroup = io.read_text("/proc/1/cgroup") or ""
    for marker, name in (("kubepods", "kubernetes"), ("libpod", "podman"), ("docker", "docker")):
        if marker in cgroup:
            return name
    if io.env("container"):
        return io.env("container")
    return None


def needs_resolving(host: str) -> bool:
    """True for a host name (as opposed to an IP address or a wildcard spelling)."""
    if host in ("", "*", "+"):
        return False
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return True
    return False


# Spellings of "every address" an endpoint may carry.
_WILDCARD_HOSTS = frozenset({"", "*", "+", "0.0.0.0", "::"})
# Every host has these two; the rest of 127.0.0.0/8 only where the kernel routes the whole block to
# loopback (Linux, Windows). macOS and the BSDs configure 127.0.0.1 alone unless an alias is added.
_ALWAYS_LOOPBACK = frozenset({"127.0.0.1", "::1"})


def surely_local(address: str, platform: str) -> bool:
    """True for an address every host of `platform` can bind without asking the kernel: a wildcard
    spelling, `localhost` (kestrelpy binds whichever loopback families exist), 127.0.0.1 and ::1, and on
    Linux and Windows the rest of 127.0.0.0/8. False means only a trial bind can tell."""
    if address in _WILDCARD_HOSTS or address.lower() == "localhost":
        return True
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if ip.is_unspecified or str(ip) in _ALWAYS_LOOPBACK:
        return True
    return ip.version == 4 and ip.is_loopback and (platform.startswith("linux") or platform == "win32")


def bind_address(host: str, resolved: Sequence[str] | None) -> str | None:
    """The address a bind on `host` really tries: the IP literal itself (zone id kept), or for a name the
    first address it resolves to, as the server binds only that one. None when a name was not looked
    up or does not resolve."""
    if not needs_resolving(host) or host.lower() == "localhost":
        return host
    return resolved[0] if resolved else None


def addresses_to_try(host: str, resolved: Sequence[str] | None, platform: str) -> list[str]:
    """The addresses of `host` whose locality only a trial bind can tell: the literal, or each address a
    name resolves to; wildcards and loopback never need one."""
    if host.lower() == "localhost":
        return []
    candidates = list(resolved or ()) if needs_resolving(host) else [host]
    return [a for a in dict.fromkeys(candidates) if not surely_local(a, platform)]


# --------------------------------------------------------------------------------------------------
# Is anything on the port?


def sock_diag_has_port(data: bytes, port: int) -> bool:
    """Whether raw NETLINK_SOCK_DIAG replies hold a listening socket on `port` (linux.parse_sock_diag reads
    the same messages in full)."""
    offset = 0
    while offset + _DIAG_HEADER <= len(data):
        length, kind = struct.unpack_from("=IH", data, offset)  # netlink headers are in host byte order
        if length < _DIAG_HEADER or kind in (2, 3):  # NLMSG_ERROR, NLMSG_DONE
            return False
        body = offset + _DIAG_HEADER
        if length - _DIAG_HEADER >= _DIAG_MSG_SIZE and body + 6 <= len(data):
            state = data[body + 1]
            sport = int.from_bytes(data[body + 4 : body + 6], "big")  # network byte order
            if state == 0x0A and sport == port:
                return True
        offset += (length + 3) & ~3
    return False


def proc_net_tcp_has_port(text: str | None, port: int) -> bool:
    """Whether /proc/net/tcp{,6} text holds a LISTEN or TIME_WAIT row on local `port`."""
    for line in (text or "").splitlines()[1:]:
        parts = line.split()
        if len(parts) < 10 or not parts[0].endswith(":"):
            continue
        port_hex = parts[1].rpartition(":")[2]
        if parts[3].upper() in _LISTEN_OR_TIME_WAIT and port_hex.isalnum():
            try:
                if int(port_hex, 16) == port:
                    return True
            except ValueError:
                continue
    return False


def tcp_table_has_port(buf: bytes, family: int, port: int) -> bool:
    """Whether a raw GetExtendedTcpTable buffer lists a listener on `port` (windows.decode_tcp_table reads the
    same rows in full): a little-endian row count, then fixed-size rows of little-endian DWORDs."""
    if len(buf) < 4:
        return False
    size, port_at, state_at = _WIN_ROWS[family]
    count = int.from_bytes(buf[:4], "little")
    for i in range(count):
        row = 4 + i * size
        if row + size > len(buf):
            break
        state = int.from_bytes(buf[row + state_at : row + state_at + 4], "little")
        local = buf[row + port_at : row + port_at + 2]  # the low 16 bits, in network byte order
        if state == _WIN_LISTEN and int.from_bytes(local, "big") == port:
            return True
    return False


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def _windows_clear(io: HostIO, tcp: Sequence[TcpEndpoint], ports: Sequence[int]) -> bool:
    for endpoint in tcp:
        host = endpoint.host
        addresses = io.resolve(host) if needs_resolving(host) else (host,)
        if not all(_is_loopback(a) for a in addresses):  # wildcards included: the firewall will ask
            return False
    v4 = io.tcp_table(4)
    if v4 is None:
        return True  # without the table the full rules have no listeners to compare either
    v6 = io.tcp_table(6) or b""
    return not any(tcp_table_has_port(v4, 4, p) or tcp_table_has_port(v6, 6, p) for p in ports)


def _port_in_use(io: HostIO, ports: Sequence[int]) -> bool:
    v4, v6 = io.sock_diag(4, LISTEN_MASK), io.sock_diag(6, LISTEN_MASK)
    if v4 is not None and v6 is not None:
        return any(sock_diag_has_port(v4, p) or sock_diag_has_port(v6, p) for p in ports)
    texts = [io.read_text(path) for path in TCP_PATHS.values()]
    return any(proc_net_tcp_has_port(text, p) for text in texts for p in ports)


# --------------------------------------------------------------------------------------------------
# The screen


def clear(endpoints: Sequence[Endpoint], io: HostIO) -> bool:
    """True when no finding is possible for `endpoints`; False means: run the full probes and rules."""
    platform = io.platform
    ports: list[int] = []
    tcp: list[TcpEndpoint] = []
    for endpoint in endpoints:
        if isinstance(endpoint, FdEndpoint):
            info = io.inspect_fd(endpoint.fd)
            if not (info.is_socket and info.listening):
                return False
        elif isinstance(endpoint, TcpEndpoint):
            resolved = io.resolve(endpoint.host) if needs_resolving(endpoint.host) else None
            if resolved is not None and not resolved:
                return False
            target = bind_address(endpoint.host, resolved)
            if target is not None and not surely_local(target, platform) and io.address_is_local(target) is False:
                return False
            tcp.append(endpoint)
            if endpoint.port:
                ports.append(endpoint.port)
    if len(set(ports)) != len(ports):
        return False
    if platform == "win32":  # no privileged ports on Windows
        return _windows_clear(io, tcp, ports)
    if not ports:
        return True

    if platform.startswith("linux"):
        threshold = parse_threshold(io.read_text(THRESHOLD_PATH))[0]
        if not io.env("AUTHBIND_LIB"):  # with authbind the bind itself decides; no rule predicts it
            if any(p < threshold for p in ports):
                capeff = status_hex(parse_status(io.read_text(STATUS_PATH)), "CapEff")
                owner = io.netns_owner()
                if not capability_counts(capeff, owner, parse_uid_map_initial(io.read_text(UID_MAP_PATH))):
                    return False
            if any(threshold <= p < 1024 for p in ports) and detect_container(io) is not None:
                return False
        return not _port_in_use(io, ports)

    # macOS (and the BSDs) let a non-root user bind a low port on the wildcard address only.
    return not (any(p < 1024 for p in ports) and io.euid() not in (None, 0))
