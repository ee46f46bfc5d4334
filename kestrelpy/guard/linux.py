"""Linux probes: pure parsers over /proc text, and collectors that read that text through a HostIO.

The kernel rule being mirrored (net/ipv4/af_inet.c, net/ipv6/af_inet6.c): a bind to a port p with
0 < p < net.ipv4.ip_unprivileged_port_start fails with EACCES unless the caller holds CAP_NET_BIND_SERVICE
in the user namespace that owns its network namespace. The sysctl is per network namespace, covers IPv6
too, and is missing on kernels before 4.11 (the floor is then 1024).

Port holders come from /proc/net/tcp{,6}, which every user can read (uid included); the process behind
a socket inode is only visible to root or to the socket's owner, via /proc/<pid>/fd. No external command
runs here: `ss` and `lsof` only appear in the remedies we print.
"""

from __future__ import annotations

import ipaddress
import re
import struct
from collections.abc import Iterable

from kestrelpy.guard.facts import LinuxPrivilege, Listener, LsmFacts, PortFacts, TcpState, WslFacts
from kestrelpy.guard.runner import HostIO
from kestrelpy.guard.screen import (
    LISTEN_MASK,
    STATUS_PATH,
    TCP_PATHS,
    THRESHOLD_PATH,
    UID_MAP_PATH,
    capability_counts,
    detect_container,
    parse_status,
    parse_threshold,
    parse_uid_map_initial,
    status_hex,
)

__all__ = [
    "OSRELEASE_PATH",
    "STATUS_PATH",
    "TCP_PATHS",
    "THRESHOLD_PATH",
    "UID_MAP_PATH",
    "capability_counts",
    "collect_lsm",
    "collect_port",
    "collect_privilege",
    "collect_threshold",
    "decode_address",
    "detect_container",
    "detect_wsl",
    "find_owners",
    "parse_proc_net_tcp",
    "parse_sock_diag",
    "parse_socket_link",
    "parse_status",
    "parse_threshold",
    "parse_uid_map_initial",
]

OSRELEASE_PATH = "/proc/sys/kernel/osrelease"

# include/net/tcp_states.h
_STATES: dict[int, TcpState] = {0x0A: "LISTEN", 0x06: "TIME_WAIT"}
_TIMER_TIME_WAIT = 3  # the "tr" column value for the time-wait timer


def decode_address(hexaddr: str, family: int, byteorder: str = "little") -> str:
    """/proc/net/tcp prints each 32-bit word of the address in host byte order."""
    raw = bytes.fromhex(hexaddr)
    if byteorder == "little":
        raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    if family == 4:
        return str(ipaddress.IPv4Address(raw))
    addr = ipaddress.IPv6Address(raw)
    mapped = addr.ipv4_mapped
    return str(mapped) if mapped is not None else str(addr)


def parse_proc_net_tcp(
    text: str | None,
    family: int,
    *,
    port: int | None = None,
    byteorder: str = "little",
    clock_ticks: int = 100,
) -> list[Listener]:
    """Rows of /proc/net/tcp or tcp6 in LISTEN or TIME_WAIT state, optionally only for one local port."""
    rows: list[Listener] = []
    for line in (text or "").splitlines()[1:]:
        parts = line.split()
        if len(parts) < 10 or not parts[0].endswith(":"):
            continue
        local, state_hex, timer, uid, inode = parts[1], parts[3], parts[5], parts[7], parts[9]
        addr_hex, _, port_hex = local.partition(":")
        try:
            row_port = int(port_hex, 16)
            state = _STATES.get(int(state_hex, 16))
        except ValueError:
            continue
        if state is None or (port is not None and row_port != port):
            continue
        address = decode_address(addr_hex, family, byteorder)
        seconds: float | None = None
        if state == "TIME_WAIT":
            kind, _, when = timer.partition(":")
            if kind.isdigit() and int(kind) == _TIMER_TIME_WAIT:
                seconds = round(int(when, 16) / clock_ticks, 1)
        inode_n = int(inode) if inode.isdigit() and inode != "0" else None
        rows.append(
            Listener(
                family=4 if ":" not in address else 6,
                address=address,
                port=row_port,
                state=state,
                uid=int(uid) if state == "LISTEN" and uid.isdigit() else None,
                inode=inode_n,
                timewait_seconds=seconds,
            )
        )
    return rows


_SOCKET_LINK = re.compile(r"^socket:\[(\d+)\]$")


def parse_socket_link(target: str) -> int | None:
    match = _SOCKET_LINK.match(target)
    return int(match.group(1)) if match else None


def find_owners(io: HostIO, inodes: Iterable[int]) -> tuple[dict[int, list[tuple[int, str]]], bool]:
    """Map socket inodes to (pid, comm) by walking /proc/<pid>/fd.

    Returns the map and whether every process's descriptor table could be read (False for non-root,
    where other users' processes stay hidden).
    """
    wanted = set(inodes)
    found: dict[int, list[tuple[int, str]]] = {}
    complete = True
    if not wanted:
        return found, complete
    for entry in io.list_dir("/proc") or []:
        if not entry.isdigit():
            continue
        fds = io.list_dir(f"/proc/{entry}/fd")
        if fds is None:
            complete = False
            continue
        for fd in fds:
            target = io.readlink(f"/proc/{entry}/fd/{fd}")
            inode = parse_socket_link(target) if target else None
            if inode in wanted:
                assert inode is not None
                comm = (io.read_text(f"/proc/{entry}/comm") or "?").strip()
                owners = found.setdefault(inode, [])
                if all(pid != int(entry) for pid, _ in owners):
                    owners.append((int(entry), comm))
        if wanted.issubset(found):
            break
    return found, complete


def collect_privilege(io: HostIO) -> LinuxPrivilege:
    threshold, from_sysctl = parse_threshold(io.read_text(THRESHOLD_PATH))
    status = parse_status(io.read_text(STATUS_PATH))
    euid = io.euid()
    euid = euid if euid is not None else -1
    return LinuxPrivilege(
        threshold=threshold,
        threshold_source="sysctl" if from_sysctl else "default",
        euid=euid,
        user=io.user_name(euid) if euid >= 0 else None,
        capeff=status_hex(status, "CapEff"),
        capamb=status_hex(status, "CapAmb"),
        no_new_privs=status.get("NoNewPrivs", "0") == "1",
        netns_owner=io.netns_owner(),
        uid_map_initial=parse_uid_map_initial(io.read_text(UID_MAP_PATH)),
        authbind=bool(io.env("AUTHBIND_LIB")),
    )


def collect_threshold(io: HostIO) -> int:
    return parse_threshold(io.read_text(THRESHOLD_PATH))[0]


_DIAG_MSG = struct.Struct("=BBBBHH16s16sIQIIIII")  # inet_diag_msg (linux/inet_diag.h), 72 bytes


def parse_sock_diag(data: bytes, family: int, port: int | None = None) -> list[Listener]:
    """LISTEN rows from raw NETLINK_SOCK_DIAG replies (a run of netlink messages, each an inet_diag_msg)."""
    rows: list[Listener] = []
    offset = 0
    while offset + 16 <= len(data):
        length, kind = struct.unpack_from("=IH", data, offset)
        if length < 16 or kind in (2, 3):  # NLMSG_ERROR, NLMSG_DONE
            break
        body = offset + 16
        if length - 16 >= _DIAG_MSG.size:
            fields = _DIAG_MSG.unpack_from(data, body)
            _fam, state, _timer, _retrans, sport_be, _dport, src, _dst, _if, _cookie = fields[:10]
            uid, inode = fields[13], fields[14]
            row_port = int.from_bytes(struct.pack("=H", sport_be), "big")
            if state == 0x0A and (port is None or row_port == port):
                raw = src[:4] if family == 4 else src
                address = str(ipaddress.ip_address(raw))
                mapped = ipaddress.IPv6Address(raw).ipv4_mapped if family == 6 else None
                rows.append(
                    Listener(
                        family=4 if mapped is not None else family,
                        address=str(mapped) if mapped is not None else address,
                        port=row_port,
                        state="LISTEN",
                        uid=uid,
                        inode=inode or None,
                    )
                )
        offset += (length + 3) & ~3
    return rows


def collect_port(io: HostIO, port: int, *, owners: bool = True, listeners_only: bool = False) -> PortFacts:
    """Rows for `port` with holders named where visible.

    `listeners_only` (the cheap path before an ordinary start) asks the kernel for listening sockets over
    sock_diag netlink; otherwise, or when netlink is unavailable, /proc/net/tcp{,6} also give TIME_WAIT.
    """
    rows: list[Listener] = []
    source = "/proc/net/tcp, /proc/net/tcp6"
    diag = [io.sock_diag(f, LISTEN_MASK) for f in (4, 6)] if listeners_only else [None, None]
    if diag[0] is not None and diag[1] is not None:
        rows = parse_sock_diag(diag[0], 4, port) + parse_sock_diag(diag[1], 6, port)
        source = "sock_diag netlink"
    else:
        order, ticks = io.byteorder(), io.clock_ticks()
        for family, path in TCP_PATHS.items():
            text = io.read_text(path)
            rows += parse_proc_net_tcp(text, family, port=port, byteorder=order, clock_ticks=ticks)
    complete = True
    if owners:
        inodes = [r.inode for r in rows if r.state == "LISTEN" and r.inode is not None]
        found, complete = find_owners(io, inodes)
        named: list[Listener] = []
        for row in rows:
            holders = found.get(row.inode, []) if row.inode is not None else []
            named.append(
                Listener(
                    family=row.family,
                    address=row.address,
                    port=row.port,
                    state=row.state,
                    uid=row.uid,
                    inode=row.inode,
                    pids=tuple(pid for pid, _ in holders),
                    names=tuple(dict.fromkeys(name for _, name in holders)),
                    user=io.user_name(row.uid) if row.uid is not None else None,
                    timewait_seconds=row.timewait_seconds,
                )
            )
        rows = named
    return PortFacts(port=port, listeners=tuple(rows), source=source, owners_visible=complete)


def collect_lsm(io: HostIO) -> LsmFacts:
    enforce = io.read_text("/sys/fs/selinux/enforce")
    current = io.read_text("/proc/self/attr/current")
    return LsmFacts(
        selinux_enforcing=None if enforce is None else enforce.strip() == "1",
        context=current.strip("\x00\n ") if current else None,
    )


def detect_wsl(io: HostIO) -> WslFacts | None:
    release = (io.read_text(OSRELEASE_PATH) or "").strip()
    if "microsoft" not in release.lower():
        return None
    wsl2 = "wsl2" in release.lower() or "microsoft-standard" in release.lower()
    return WslFacts(version=2 if wsl2 else 1, interop=bool(io.env("WSL_INTEROP")))
