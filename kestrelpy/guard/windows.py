"""Windows probes. Imports on every OS: the only Windows API use (GetExtendedTcpTable) lives behind the
HostIO seam and is loaded lazily; everything here is a pure parser or a collector over that seam.

Windows has no privileged ports. A bind fails because something holds the port (WSAEADDRINUSE 10048, or
WSAEACCES 10013 when the holder bound it exclusively), because the port sits in a range Hyper-V/WinNAT
excluded (10013 with nothing listening), or because the kernel HTTP driver http.sys, shown as PID 4
"System", listens there for some service that registered a URL.

`netsh` and `netstat` output is localized, so the parsers key on numbers, indentation and URL shapes,
never on English words.
"""

from __future__ import annotations

import csv
import ctypes
import io as _io
import ipaddress
import re
from collections.abc import Iterable

from kestrelpy.guard.facts import (
    SYSTEM_PID,
    DynamicRange,
    HttpSysProcess,
    HttpSysQueue,
    HttpSysState,
    HttpSysUrl,
    Listener,
    PortFacts,
    PortRange,
    WindowsFacts,
)
from kestrelpy.guard.runner import HostIO

MIB_TCP_STATE_LISTEN = 2

NETSTAT = ("netstat", "-ano", "-p", "TCP")
NETSTAT6 = ("netstat", "-ano", "-p", "TCPv6")
SERVICESTATE = ("netsh", "http", "show", "servicestate", "view=requestq")
URLACL = ("netsh", "http", "show", "urlacl")
IPLISTEN = ("netsh", "http", "show", "iplisten")
EXCLUDED = {
    4: ("netsh", "interface", "ipv4", "show", "excludedportrange", "protocol=tcp"),
    6: ("netsh", "interface", "ipv6", "show", "excludedportrange", "protocol=tcp"),
}
DYNAMIC = ("netsh", "interface", "ipv4", "show", "dynamicport", "tcp")


def tasklist_argv(pid: int) -> tuple[str, ...]:
    return ("tasklist", "/svc", "/fo", "csv", "/nh", "/fi", f"PID eq {pid}")


# --------------------------------------------------------------------------------------------------
# Address helpers


def split_host_port(text: str) -> tuple[str, int] | None:
    """`0.0.0.0:80`, `[::]:80`, `[fe80::1%4]:80` -> (address, port)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        return None
    host = host.strip("[]").split("%", 1)[0]
    return host, int(port)


def _canonical(address: str) -> str:
    try:
        return str(ipaddress.ip_address(address))
    except ValueError:
        return address


# --------------------------------------------------------------------------------------------------
# netstat -ano


def parse_netstat_ano(text: str | None, port: int | None = None) -> list[Listener]:
    """Listening TCP rows of `netstat -ano`. A row listens when its foreign port is 0 (the state word is
    localized, e.g. LISTENING / ABHÖREN)."""
    rows: list[Listener] = []
    for line in (text or "").splitlines():
        parts = line.split()
        if len(parts) < 4 or not parts[0].upper().startswith("TCP") or not parts[-1].isdigit():
            continue
        local = split_host_port(parts[1])
        remote = split_host_port(parts[2])
        if local is None or remote is None or remote[1] != 0:
            continue
        address, local_port = local
        if port is not None and local_port != port:
            continue
        address = _canonical(address)
        rows.append(
            Listener(
                family=6 if ":" in address else 4,
                address=address,
                port=local_port,
                state="LISTEN",
                pids=(int(parts[-1]),),
            )
        )
    return rows


# --------------------------------------------------------------------------------------------------
# GetExtendedTcpTable buffers (MIB_TCPTABLE_OWNER_PID / MIB_TCP6TABLE_OWNER_PID, tcpmib.h)


class MibTcpRowOwnerPid(ctypes.Structure):
    _fields_ = [
        ("dwState", ctypes.c_uint32),
        ("dwLocalAddr", ctypes.c_uint32),
        ("dwLocalPort", ctypes.c_uint32),
        ("dwRemoteAddr", ctypes.c_uint32),
        ("dwRemotePort", ctypes.c_uint32),
        ("dwOwningPid", ctypes.c_uint32),
    ]


class MibTcp6RowOwnerPid(ctypes.Structure):
    _fields_ = [
        ("ucLocalAddr", ctypes.c_ubyte * 16),
        ("dwLocalScopeId", ctypes.c_uint32),
        ("dwLocalPort", ctypes.c_uint32),
        ("ucRemoteAddr", ctypes.c_ubyte * 16),
        ("dwRemoteScopeId", ctypes.c_uint32),
        ("dwRemotePort", ctypes.c_uint32),
        ("dwState", ctypes.c_uint32),
        ("dwOwningPid", ctypes.c_uint32),
    ]


def _net_port(value: int) -> int:
    """Ports are stored in network byte order in the low 16 bits of a DWORD."""
    low = value & 0xFFFF
    return ((low & 0xFF) << 8) | (low >> 8)


def decode_tcp_table(buf: bytes, family: int) -> list[Listener]:
    """Rows in LISTEN state from a raw GetExtendedTcpTable buffer (x86/ARM: little-endian DWORDs)."""
    if len(buf) < 4:
        return []
    count = int.from_bytes(buf[:4], "little")
    row_type: type[ctypes.Structure] = MibTcpRowOwnerPid if family == 4 else MibTcp6RowOwnerPid
    size = ctypes.sizeof(row_type)
    rows: list[Listener] = []
    for i in range(count):
        chunk = buf[4 + i * size : 4 + (i + 1) * size]
        if len(chunk) < size:
            break
        row = row_type.from_buffer_copy(chunk)
        if row.dwState != MIB_TCP_STATE_LISTEN:
            continue
        if isinstance(row, MibTcpRowOwnerPid):
            address = str(ipaddress.IPv4Address(int(row.dwLocalAddr).to_bytes(4, "little")))
        else:
            assert isinstance(row, MibTcp6RowOwnerPid)
            address = str(ipaddress.IPv6Address(bytes(row.ucLocalAddr)))
        rows.append(Listener(family, address, _net_port(row.dwLocalPort), "LISTEN", pids=(int(row.dwOwningPid),)))
    return rows


# --------------------------------------------------------------------------------------------------
# netsh http show servicestate (three layouts), urlacl, iplisten

_URL = re.compile(r"(?i)\bhttps?://[^\s<>]+")
_HEX_ID = re.compile(r":\s*[0-9A-Fa-f]{16}\s*$")
_PROCESS = re.compile(r"^[^:]+:\s*(\d+)\s*,\s*[^:]+:\s*(.*?)\s*$")  # "ID: 2688, image: C:\...\svchost.exe"


def parse_url(raw: str) -> HttpSysUrl | None:
    text = raw.strip().strip("<>")
    match = re.match(r"(?i)^(https?)://([^/]*)(/.*)?$", text)
    if not match:
        return None
    scheme = match.group(1).lower()
    authority, path = match.group(2), match.group(3) or "/"
    if authority.startswith("["):
        host, _, rest = authority[1:].partition("]")
        port_text = rest.lstrip(":").split(":", 1)[0]
    else:
        host, _, rest = authority.partition(":")
        port_text = rest.split(":", 1)[0]  # "127.0.0.1:8000:127.0.0.1" style keeps only the port
    port = int(port_text) if port_text.isdigit() else (443 if scheme == "https" else 80)
    return HttpSysUrl(raw=text, scheme=scheme, host=host, port=port, path=path)


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" \t"))


def _key(line: str) -> str:
    return line.strip().partition(":")[0].strip()


def parse_servicestate(text: str | None) -> HttpSysState:
    """`netsh http show servicestate [view=requestq]`, in any of the known layouts.

    Request-queue view: each queue lists its processes (a bare PID per line, or `ID: n, image: path`
    followed by a services line) and then its URL groups and registered URLs. Queues are told apart by
    their first key line (the queue name, localized) at a shallower indentation than the URL group the
    previous queue ended in; URL groups and server sessions are recognised by their 16-digit hex ids.
    Session view (the default): URLs hang under server sessions and PIDs under request queues with no
    link between them, so we return them apart (`linked=False`).
    """
    lines = [line.rstrip() for line in (text or "").splitlines()]
    body = [line for line in lines if line.strip() and not set(line.strip()) <= {"-"}]
    all_urls = tuple(u for u in (parse_url(m.group(0)) for line in body for m in _URL.finditer(line)) if u)
    content = [line for line in body[1:] if ":" in line or line.strip().isdigit() or _URL.search(line)]
    if not content:
        return HttpSysState(queues=(), linked=True, urls=all_urls)
    first = content[0]
    linked = not _HEX_ID.search(first)
    queue_key = _key(first)

    queues: list[HttpSysQueue] = []
    procs: list[HttpSysProcess] = []
    urls: list[HttpSysUrl] = []
    started = False
    group_indent: int | None = None  # indentation of the latest URL group / session id line
    last_proc_indent: int | None = None

    def flush() -> None:
        if started and (procs or urls):
            queues.append(HttpSysQueue(tuple(procs), tuple(urls)))

    for line in body[1:]:
        stripped = line.strip()
        ind = _indent(line)
        is_queue_key = linked and ":" in stripped and _key(line) == queue_key and not _URL.search(stripped)
        if is_queue_key and (not started or group_indent is None or ind <= group_indent):
            flush()
            procs, urls, started = [], [], True
            group_indent = None
            last_proc_indent = None
            continue
        if _HEX_ID.search(stripped):
            group_indent = ind if group_indent is None else min(group_indent, ind)
            continue
        if not linked and not started:
            started = True
        url_match = _URL.search(stripped)
        if url_match:
            url = parse_url(url_match.group(0))
            if url:
                urls.append(url)
            continue
        if stripped.isdigit():
            procs.append(HttpSysProcess(int(stripped)))
            continue
        proc = _PROCESS.match(stripped)
        if proc:
            image = proc.group(2)
            procs.append(HttpSysProcess(int(proc.group(1)), None if image in ("<?>", "") else image))
            last_proc_indent = ind
            continue
        if last_proc_indent is not None and ind == last_proc_indent and procs and not procs[-1].services:
            value = stripped.partition(":")[2].strip()
            if value and not value.isdigit():
                last = procs[-1]
                services = tuple(s for s in re.split(r"[,\s]+", value) if s)
                procs[-1] = HttpSysProcess(last.pid, last.image, services)
            last_proc_indent = None
    flush()
    if not linked:
        pids = tuple(p for q in queues for p in q.processes)
        return HttpSysState(queues=(HttpSysQueue(pids, ()),) if pids else (), linked=False, urls=all_urls)
    return HttpSysState(queues=tuple(queues), linked=True, urls=all_urls)


def parse_urlacl(text: str | None) -> tuple[HttpSysUrl, ...]:
    """URL reservations (permissions for http.sys clients, not live listeners)."""
    out = [parse_url(m.group(0)) for line in (text or "").splitlines() for m in _URL.finditer(line)]
    return tuple(u for u in out if u)


def parse_iplisten(text: str | None) -> tuple[str, ...]:
    """Addresses in http.sys's IP listen list; empty means it listens on every address."""
    found: list[str] = []
    for line in (text or "").splitlines():
        try:
            found.append(str(ipaddress.ip_address(line.strip())))
        except ValueError:
            continue
    return tuple(found)


# --------------------------------------------------------------------------------------------------
# Excluded and dynamic port ranges


_RANGE = re.compile(r"^\s*(\d+)\s+(\d+)\s*(\*)?\s*$")


def parse_excluded_ranges(text: str | None) -> tuple[PortRange, ...]:
    """A data line is two integers and an optional `*` (administered); every other line is ignored."""
    ranges: list[PortRange] = []
    for line in (text or "").splitlines():
        match = _RANGE.match(line)
        if match:
            ranges.append(PortRange(int(match.group(1)), int(match.group(2)), bool(match.group(3))))
    return tuple(ranges)


def parse_dynamic_port(text: str | None) -> DynamicRange | None:
    """The two integers after colons, in order: start port and number of ports."""
    numbers = [int(m.group(1)) for m in re.finditer(r":\s*(\d+)\s*$", text or "", re.MULTILINE)]
    if len(numbers) < 2:
        return None
    return DynamicRange(numbers[0], numbers[1])


def nearest_free_port(port: int, excluded: Iterable[PortRange], taken: Iterable[int] = ()) -> int | None:
    """The closest port to `port` (preferring the higher on a tie) outside every range and not taken."""
    ranges = list(excluded)
    busy = set(taken)
    for distance in range(1, 65536):
        for candidate in (port + distance, port - distance):
            if 1024 <= candidate <= 65535 and candidate not in busy and not any(candidate in r for r in ranges):
                return candidate
    return None


# --------------------------------------------------------------------------------------------------
# tasklist /svc /fo csv /nh


def parse_tasklist_csv(text: str | None) -> list[HttpSysProcess]:
    """Rows `"image","pid","services"`; columns by position because headers and "N/A" are localized."""
    processes: list[HttpSysProcess] = []
    for row in csv.reader(_io.StringIO(text or "")):
        if len(row) < 2 or not row[1].strip().isdigit():
            continue
        services = tuple(s.strip() for s in row[2].split(",") if s.strip()) if len(row) > 2 else ()
        if services and "/" in services[0]:  # "N/A" and its translations
            services = ()
        processes.append(HttpSysProcess(int(row[1]), row[0], services))
    return processes


# --------------------------------------------------------------------------------------------------
# Collectors


def collect_listeners(io: HostIO, port: int) -> PortFacts:
    """Listeners on `port`: the IP Helper table when available (language-neutral, no admin), else netstat."""
    rows: list[Listener] = []
    tables = [io.tcp_table(4), io.tcp_table(6)]
    if any(t is not None for t in tables):
        for family, table in zip((4, 6), tables, strict=True):
            rows += [r for r in decode_tcp_table(table or b"", family) if r.port == port]
        return PortFacts(port, tuple(rows), source="GetExtendedTcpTable")
    for argv in (NETSTAT, NETSTAT6):
        result = io.run(argv)
        if result is not None:
            rows += [r for r in parse_netstat_ano(result.stdout, port) if r not in rows]
    return PortFacts(port, tuple(rows), source="netstat -ano")


def name_processes(io: HostIO, pids: Iterable[int]) -> tuple[HttpSysProcess, ...]:
    named: list[HttpSysProcess] = []
    for pid in dict.fromkeys(pids):
        if pid in (0, SYSTEM_PID):
            continue
        result = io.run(tasklist_argv(pid))
        rows = parse_tasklist_csv(result.stdout if result else None)
        named.extend(r for r in rows if r.pid == pid)
    return tuple(named)


def collect_httpsys(io: HostIO) -> HttpSysState | None:
    result = io.run(SERVICESTATE)
    if result is None:
        return None
    state = parse_servicestate(result.stdout)
    if not state.linked or not state.queues:
        fallback = io.run(SERVICESTATE[:-1])
        if fallback is not None and not state.urls:
            state = parse_servicestate(fallback.stdout)
    return state


def collect_exclusions(io: HostIO) -> tuple[tuple[PortRange, ...] | None, DynamicRange | None]:
    ranges: list[PortRange] = []
    seen = False
    for argv in EXCLUDED.values():
        result = io.run(argv)
        if result is not None:
            seen = True
            ranges += [r for r in parse_excluded_ranges(result.stdout) if r not in ranges]
    dyn = io.run(DYNAMIC)
    return (tuple(ranges) if seen else None), parse_dynamic_port(dyn.stdout if dyn else None)


def collect_windows(io: HostIO, ports: Iterable[PortFacts], *, httpsys: bool, exclusions: bool) -> WindowsFacts:
    """The expensive Windows facts, each only when asked: http.sys after PID 4 is seen or a 10013,
    excluded ranges after a 10013 (or in `kestrelpy check`)."""
    port_list = list(ports)
    state = collect_httpsys(io) if httpsys else None
    iplisten: tuple[str, ...] = ()
    reservations: tuple[HttpSysUrl, ...] = ()
    if httpsys:
        listen = io.run(IPLISTEN)
        iplisten = parse_iplisten(listen.stdout if listen else None)
        acl = io.run(URLACL)
        reservations = parse_urlacl(acl.stdout if acl else None)
    excluded, dynamic = collect_exclusions(io) if exclusions else (None, None)
    pids = [pid for p in port_list for row in p.listeners for pid in row.pids]
    if state is not None:
        wanted = {p.port for p in port_list}
        for queue in state.queues:
            if not state.linked or any(u.port in wanted for u in queue.urls):
                pids += [proc.pid for proc in queue.processes if proc.image is None]
    return WindowsFacts(
        excluded=excluded,
        dynamic=dynamic,
        httpsys=state,
        reservations=reservations,
        iplisten=iplisten,
        processes=name_processes(io, pids),
    )
