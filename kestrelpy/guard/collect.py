"""Which probes run, and when: the guard's cost budget in one function.

* Before an ordinary start, screen.py runs first and usually settles it; only when it sees something does
  `predict` come here. Then too only cheap reads run. On Linux that is a handful of /proc files
  and no external command; the /proc/<pid>/fd walk that names a holder only happens when a socket
  already listens on the port. On macOS nothing external runs. On Windows only the IP Helper table is
  read; `netsh` waits for a PID 4 holder.
* After a failed bind (`explain`) the probes relevant to that failure run again: holders for
  "address in use", LSM state for EACCES, excluded ranges and http.sys for WSAEACCES.
* `kestrelpy check` (`thorough=True`) runs everything a user may want to see, still one command at a
  time with the runner's 2 s timeout.
* On every OS, a specific TCP address (not a wildcard, not loopback) costs one trial bind to port 0 to
  learn whether this host has it; a name costs one per address it resolves to. Skipped when the bind
  failed for a reason that has nothing to do with the address.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import kestrelpy.guard.linux as linux
from kestrelpy.endpoints import Endpoint, FdEndpoint, TcpEndpoint
from kestrelpy.guard.facts import SYSTEM_PID, HostFacts, PortFacts
from kestrelpy.guard.runner import HostIO
from kestrelpy.guard.screen import addresses_to_try, needs_resolving
from kestrelpy.guard.verdict import BindFailure, FailureKind

WSL_NETSTAT = ("netstat.exe", "-ano", "-p", "TCP")


def gather(
    endpoints: Sequence[Endpoint],
    io: HostIO,
    *,
    thorough: bool = False,
    failure: BindFailure | None = None,
) -> HostFacts:
    platform = io.platform
    kind = failure.kind if failure is not None else None
    tcp = [e for e in endpoints if isinstance(e, TcpEndpoint)]
    ports = sorted({e.port for e in tcp if e.port})
    hosts = sorted({e.host for e in tcp if needs_resolving(e.host)})
    resolved = tuple((host, io.resolve(host)) for host in hosts)
    local_addresses: tuple[tuple[str, bool | None], ...] = ()
    if kind in (None, FailureKind.NOT_AVAILABLE):
        local_addresses = _locality(io, tcp, dict(resolved), platform)
    fds = tuple(io.inspect_fd(e.fd) for e in endpoints if isinstance(e, FdEndpoint))
    euid = io.euid()
    user = io.user_name(euid) if euid is not None else None
    notes: list[str] = []

    if platform.startswith("linux"):
        priv = linux.collect_privilege(io)
        denied = kind in (FailureKind.DENIED, FailureKind.NOT_PERMITTED)
        holders = kind in (None, FailureKind.IN_USE) or thorough
        cheap = kind is None and not thorough
        port_facts = tuple(linux.collect_port(io, p, listeners_only=cheap) for p in ports) if holders else ()
        wsl = linux.detect_wsl(io)
        windows_side: tuple[PortFacts, ...] = ()
        if wsl is not None and wsl.interop and (thorough or kind is FailureKind.IN_USE):
            result = io.run(WSL_NETSTAT)
            import kestrelpy.guard.windows as windows

            if result is None:
                notes.append("WSL interop: netstat.exe did not run")
            else:
                windows_side = tuple(
                    PortFacts(p, tuple(windows.parse_netstat_ano(result.stdout, p)), "netstat.exe -ano") for p in ports
                )
        low = any(0 < p < 1024 for p in ports)
        return HostFacts(
            platform="linux",
            euid=euid,
            user=user,
            linux=priv,
            lsm=linux.collect_lsm(io) if denied or thorough else None,
            container=linux.detect_container(io) if low or thorough else None,
            wsl=wsl,
            ports=port_facts,
            windows_side_ports=windows_side,
            resolved=resolved,
            local_addresses=local_addresses,
            fds=fds,
            notes=tuple(notes),
        )

    if platform == "darwin":
        import kestrelpy.guard.darwin as darwin  # per-OS probes load only on their OS (and in tests)

        wanted = thorough or kind is FailureKind.IN_USE
        return HostFacts(
            platform="darwin",
            euid=euid,
            user=user,
            ports=tuple(darwin.collect_port(io, p) for p in ports) if wanted else (),
            resolved=resolved,
            local_addresses=local_addresses,
            fds=fds,
        )

    if platform == "win32":
        import kestrelpy.guard.windows as windows

        denied = kind is FailureKind.DENIED
        full = thorough or kind is not None
        port_facts = tuple(
            windows.collect_listeners(io, p) if full or io.tcp_table(4) is not None else PortFacts(p, (), "not probed")
            for p in ports
        )
        system_held = any(SYSTEM_PID in row.pids for pf in port_facts for row in pf.listeners)
        needs_names = any(row.pids for pf in port_facts for row in pf.listeners)
        win = None
        if system_held or denied or thorough or needs_names:
            win = windows.collect_windows(io, port_facts, httpsys=system_held, exclusions=denied or thorough)
        return HostFacts(
            platform="win32",
            euid=euid,
            user=user,
            windows=win,
            ports=port_facts,
            resolved=resolved,
            local_addresses=local_addresses,
            fds=fds,
            executable=sys.executable,
        )

    return HostFacts(
        platform=platform,
        euid=euid,
        user=user,
        resolved=resolved,
        local_addresses=local_addresses,
        fds=fds,
        notes=(f"no probes for platform {platform!r}",),
    )


def _locality(
    io: HostIO, tcp: Sequence[TcpEndpoint], resolved: dict[str, tuple[str, ...]], platform: str
) -> tuple[tuple[str, bool | None], ...]:
    answers: dict[str, bool | None] = {}
    for endpoint in tcp:
        for address in addresses_to_try(endpoint.host, resolved.get(endpoint.host), platform):
            if address not in answers:
                answers[address] = io.address_is_local(address)
    return tuple(answers.items())
