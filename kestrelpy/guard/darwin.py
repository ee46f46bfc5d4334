"""macOS probes: pure parsers for `lsof` and `netstat -anv` output, and a collector over the HostIO seam.

The rule being mirrored (XNU bsd/netinet/in_pcb.c, in_pcbbind): since macOS 10.14 a process without root
may bind a port below 1024 only on the unspecified address (0.0.0.0 / ::); any specific address,
loopback included, still fails with EACCES. ControlCenter (the AirPlay Receiver) listens on 5000 and 7000
since macOS 12. `lsof` run by a non-root user only shows that user's own processes.
"""

from __future__ import annotations

import ipaddress
import re

from kestrelpy.guard.facts import Listener, PortFacts
from kestrelpy.guard.runner import HostIO

RESERVED_PORT_LIMIT = 1024  # IPPORT_RESERVED
AIRPLAY_PORTS = (5000, 7000)
AIRPLAY_NAMES = ("ControlCe", "ControlCenter")


def lsof_argv(port: int) -> tuple[str, ...]:
    return ("lsof", "-nP", f"-iTCP:{port}", "-sTCP:LISTEN", "+c0", "-FpcLn")


NETSTAT = ("netstat", "-anv", "-p", "tcp")


def _address(host: str, family: int) -> str:
    if host in ("*", ""):
        return "0.0.0.0" if family == 4 else "::"
    if host.lower() == "localhost":
        return "127.0.0.1" if family == 4 else "::1"
    try:
        return str(ipaddress.ip_address(host.strip("[]").split("%", 1)[0]))
    except ValueError:
        return host


def _split_name(name: str) -> tuple[str, str] | None:
    """lsof NAME column `*:5000`, `127.0.0.1:5000`, `[::1]:5000` -> (host, port text)."""
    name = name.split(" ", 1)[0]
    host, sep, port = name.rpartition(":")
    return (host, port) if sep else None


def parse_lsof_table(text: str | None, port: int | None = None) -> list[Listener]:
    """The default `lsof -nP -iTCP -sTCP:LISTEN` table: COMMAND PID USER FD TYPE DEVICE SIZE/OFF NODE NAME."""
    rows: list[Listener] = []
    for line in (text or "").splitlines():
        parts = line.split()
        if len(parts) < 9 or not parts[1].isdigit() or "TCP" not in parts:
            continue
        tcp = parts.index("TCP")
        family = 6 if any(token.upper() == "IPV6" for token in parts[:tcp]) else 4
        split = _split_name(parts[tcp + 1]) if tcp + 1 < len(parts) else None
        if split is None or not split[1].isdigit():
            continue
        row_port = int(split[1])
        if port is not None and row_port != port:
            continue
        rows.append(
            Listener(
                family=family,
                address=_address(split[0], family),
                port=row_port,
                state="LISTEN",
                pids=(int(parts[1]),),
                names=(parts[0],),
                user=parts[2],
            )
        )
    return rows


def parse_lsof_fields(text: str | None, port: int | None = None) -> list[Listener]:
    """`lsof -F pcLn` output: one field per line, the first character names it (p pid, c command,
    L login, n name); a `p` line starts a new process whose `n` lines are its sockets."""
    rows: list[Listener] = []
    pid: int | None = None
    command = user = None
    family = 4
    for line in (text or "").splitlines():
        if not line:
            continue
        tag, value = line[0], line[1:]
        if tag == "p":
            pid = int(value) if value.isdigit() else None
            command = user = None
        elif tag == "c":
            command = value
        elif tag == "L":
            user = value
        elif tag == "t":
            family = 6 if value.upper() == "IPV6" else 4
        elif tag == "n" and pid is not None:
            split = _split_name(value)
            if split is None or not split[1].isdigit():
                continue
            row_port = int(split[1])
            if port is not None and row_port != port:
                continue
            host = split[0]
            fam = 6 if host.startswith("[") or (host.count(":") > 1) else family
            rows.append(
                Listener(
                    family=fam,
                    address=_address(host, fam),
                    port=row_port,
                    state="LISTEN",
                    pids=(pid,),
                    names=(command,) if command else (),
                    user=user,
                )
            )
    return rows


_NETSTAT_ADDR = re.compile(r"^(.*)\.(\d+|\*)$")


def parse_netstat_anv(text: str | None, port: int | None = None) -> list[Listener]:
    """`netstat -anv -p tcp`: addresses end in `.port`; LISTEN rows only; the pid column follows the two
    buffer sizes after the state."""
    rows: list[Listener] = []
    for line in (text or "").splitlines():
        parts = line.split()
        if len(parts) < 9 or not parts[0].startswith("tcp") or parts[5] != "LISTEN":
            continue
        match = _NETSTAT_ADDR.match(parts[3])
        if not match or not match.group(2).isdigit():
            continue
        row_port = int(match.group(2))
        if port is not None and row_port != port:
            continue
        pid = int(parts[8]) if parts[8].isdigit() else None
        proto = parts[0]
        families = (4, 6) if proto == "tcp46" else ((6,) if proto == "tcp6" else (4,))
        for family in families:
            rows.append(
                Listener(
                    family=family,
                    address=_address(match.group(1), family),
                    port=row_port,
                    state="LISTEN",
                    pids=(pid,) if pid is not None else (),
                )
            )
    return rows


def collect_port(io: HostIO, port: int) -> PortFacts:
    result = io.run(lsof_argv(port))
    if result is not None:
        is_root = io.euid() == 0
        return PortFacts(port, tuple(parse_lsof_fields(result.stdout, port)), "lsof", owners_visible=is_root)
    fallback = io.run(NETSTAT)
    return PortFacts(port, tuple(parse_netstat_anv(fallback.stdout if fallback else None, port)), "netstat -anv")
