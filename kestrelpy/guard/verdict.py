"""Facts in, findings out: the guard's pure rules.

Two entry points:

* `predict_findings(endpoints, facts)` runs before any bind. Every rule that matches is reported; an
  "error" finding means the probes are confident the bind will fail, "warning" that it may fail or
  misbehave, "info" that it will work with a caveat. Predictions are advice: the server still tries.
* `explain_failure(failure, endpoint, facts)` runs after a bind failed. `classify()` first turns the
  exception into a `BindFailure` (by errno, by winerror on Windows, by message only for Python 3.13's
  errno-less asyncio error); the first rule that matches below then explains it.

  ========================  ==========================================================================
  failure kind              rules, first match wins
  ========================  ==========================================================================
  UNRESOLVED                KP-HOST-UNRESOLVED
  NOT_AVAILABLE             KP-ADDR-NOT-AVAILABLE
  IN_USE                    a visible holder: KP-WIN-HTTP-SYS (PID 4), KP-MAC-AIRPLAY, KP-PORT-IN-USE,
                            KP-PORT-IN-USE-DUAL-STACK; none: KP-PORT-TIME-WAIT, KP-MAC-AIRPLAY (5000/7000),
                            KP-PORT-IN-USE (unseen)
  DENIED on Linux           port below the floor: KP-LINUX-USERNS-NOT-OWNER if we hold the capability,
                            else KP-LINUX-PRIVILEGED-PORT; otherwise KP-LINUX-LSM-DENIED if an LSM is
                            active, else KP-BIND-DENIED
  DENIED on macOS           port < 1024 on a specific address: KP-MAC-PRIVILEGED-ADDRESS, else KP-BIND-DENIED
  DENIED on Windows         PID 4 holds it: KP-WIN-HTTP-SYS; another holder: KP-WIN-EXCLUSIVE-HOLDER; in an
                            excluded range: KP-WIN-EXCLUDED-RANGE; else KP-WIN-ACCESS-DENIED
  NOT_PERMITTED (EPERM)     authbind active: KP-LINUX-AUTHBIND-DENIED, else KP-BIND-DENIED
  OTHER                     KP-BIND-FAILED
  ========================  ==========================================================================

Before a bind, an address the probes found this host does not have (a trial bind to port 0 failed with
"address not available") gives KP-ADDR-NOT-AVAILABLE and nothing else for that endpoint: the kernel checks
the address before the port, so no other rule can matter until the address changes.

Unix-socket and inherited-descriptor endpoints have their own small rules (KP-UNIX-*, KP-FD-*).
"""

from __future__ import annotations

import enum
import errno as errno_module
import ipaddress
import re
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import kestrelpy.guard.messages as m
from kestrelpy.endpoints import Endpoint, FdEndpoint, TcpEndpoint, UnixEndpoint
from kestrelpy.guard.facts import (
    SYSTEM_PID,
    HostFacts,
    LinuxPrivilege,
    Listener,
    PortFacts,
    PortRange,
    WindowsFacts,
)
from kestrelpy.guard.screen import bind_address, needs_resolving, surely_local

Severity = Literal["error", "warning", "info"]
Overlap = Literal["same", "dual_v6_holder", "dual_v4_holder"]


# --------------------------------------------------------------------------------------------------
# Findings


@dataclass(frozen=True)
class Finding:
    """One thing the guard wants the user to know, with the evidence and the remedies in order."""

    code: str
    severity: Severity
    endpoint: Endpoint | None
    summary: str
    remedies: tuple[str, ...] = ()
    facts: tuple[str, ...] = ()
    headline: str = ""

    def render(self) -> str:
        lines = [self.headline or self.code, self.summary]
        if self.facts:
            lines += ["", m.FACTS_HEADING, *(f"  - {fact}" for fact in self.facts)]
        if self.remedies:
            lines += ["", m.REMEDIES_HEADING, *(f"  {i}. {r}" for i, r in enumerate(self.remedies, 1))]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "severity": self.severity,
            "endpoint": self.endpoint.display() if self.endpoint is not None else None,
            "summary": self.summary,
            "facts": list(self.facts),
            "remedies": list(self.remedies),
        }


def _display(endpoint: Endpoint | None) -> str:
    return endpoint.display() if endpoint is not None else "the requested address"


def build(
    key: str,
    endpoint: Endpoint | None,
    severity: Severity,
    facts: Sequence[str] = (),
    *,
    explaining: bool = False,
    **fields: Any,
) -> Finding:
    """A finding from catalogue entry `key`, its templates filled with `fields`."""
    message = m.MESSAGES[key]
    values: dict[str, Any] = {"endpoint": _display(endpoint)}
    if isinstance(endpoint, TcpEndpoint):
        values.update(host=endpoint.host, port=endpoint.port, free_port=_next_port(endpoint.port))
    values.update(fields)
    remedies = tuple(r.format_map(values) for r in message.remedies)
    mode = "explain" if explaining else severity
    return Finding(
        code=message.code,
        severity=severity,
        endpoint=endpoint,
        summary=message.summary.format_map(values),
        remedies=tuple(r for r in remedies if r),
        facts=tuple(facts),
        headline=m.HEADLINE[mode].format(endpoint=values["endpoint"], code=message.code),
    )


def _next_port(port: int) -> int:
    return port + 1 if 0 < port < 65535 else 8080


# --------------------------------------------------------------------------------------------------
# Classifying the real exception


class FailureKind(enum.Enum):
    DENIED = "denied"  # EACCES / WSAEACCES
    NOT_PERMITTED = "not-permitted"  # EPERM (authbind)
    IN_USE = "in-use"
    NOT_AVAILABLE = "not-available"
    UNRESOLVED = "unresolved"
    OTHER = "other"


@dataclass(frozen=True)
class BindFailure:
    kind: FailureKind
    errno: int | None
    winerror: int | None
    text: str


# Per-OS errno values (the host's `errno` module only knows its own OS, and fixtures come from others).
_ERRNO_KINDS: dict[str, dict[int, FailureKind]] = {
    "linux": {
        13: FailureKind.DENIED,
        1: FailureKind.NOT_PERMITTED,
        98: FailureKind.IN_USE,
        99: FailureKind.NOT_AVAILABLE,
    },
    "darwin": {
        13: FailureKind.DENIED,
        1: FailureKind.NOT_PERMITTED,
        48: FailureKind.IN_USE,
        49: FailureKind.NOT_AVAILABLE,
    },
    # CPython maps WSAEACCES to errno 13 and passes WSAEADDRINUSE / WSAEADDRNOTAVAIL through (PC/errmap.h).
    "win32": {
        13: FailureKind.DENIED,
        10013: FailureKind.DENIED,
        10048: FailureKind.IN_USE,
        10049: FailureKind.NOT_AVAILABLE,
    },
}
_WINERROR_KINDS = {10013: FailureKind.DENIED, 10048: FailureKind.IN_USE, 10049: FailureKind.NOT_AVAILABLE}
_HOST_KINDS = {
    errno_module.EACCES: FailureKind.DENIED,
    errno_module.EPERM: FailureKind.NOT_PERMITTED,
    errno_module.EADDRINUSE: FailureKind.IN_USE,
    errno_module.EADDRNOTAVAIL: FailureKind.NOT_AVAILABLE,
}
_ERRNO_IN_TEXT = re.compile(r"\[errno (-?\d+)\]", re.IGNORECASE)
_WINERROR_IN_TEXT = re.compile(r"\[winerror (\d+)\]", re.IGNORECASE)
# Python 3.13+ asyncio, when every address failed with EADDRNOTAVAIL: OSError(None, this message).
_NO_ADDRESS_TEXT = "could not bind on any address"


def _platform_family(platform: str) -> str:
    if platform.startswith("linux"):
        return "linux"
    if platform == "darwin" or "bsd" in platform:
        return "darwin"
    return platform


def classify(error: BaseException, platform: str) -> BindFailure:
    """What kind of bind failure `error` is, on `platform` (the OS the error came from)."""
    text = str(error)
    if isinstance(error, socket.gaierror):
        return BindFailure(FailureKind.UNRESOLVED, error.errno, None, text)
    err = error.errno if isinstance(error, OSError) else None
    winerror = getattr(error, "winerror", None)
    if not isinstance(winerror, int):
        winerror = None
        found = _WINERROR_IN_TEXT.search(text)  # asyncio's re-raise keeps the code only in the message
        if found:
            winerror = int(found.group(1))
    if err is None:
        found = _ERRNO_IN_TEXT.search(text)
        if found:
            err = int(found.group(1))
    kind: FailureKind | None = None
    family = _platform_family(platform)
    if winerror is not None and family == "win32":
        kind = _WINERROR_KINDS.get(winerror)
    if kind is None and err is not None:
        table = _ERRNO_KINDS.get(family, _HOST_KINDS)
        kind = table.get(err)
    if kind is None and err is None and _NO_ADDRESS_TEXT in text.lower():
        kind = FailureKind.NOT_AVAILABLE
    if kind is None and isinstance(error, PermissionError):
        kind = FailureKind.DENIED
    return BindFailure(kind or FailureKind.OTHER, err, winerror, text)


# --------------------------------------------------------------------------------------------------
# Addresses


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None


def endpoint_addresses(endpoint: TcpEndpoint, facts: HostFacts) -> tuple[str, ...] | None:
    """The IP addresses an endpoint means; () when its name does not resolve, None when unknown."""
    host = endpoint.host
    if host in ("", "*", "+"):
        return ("0.0.0.0", "::")
    ip = _ip(host)
    if ip is not None:
        return (str(ip),)
    return facts.addresses(host)


def is_wildcard(address: str) -> bool:
    return address in ("0.0.0.0", "::")


def is_loopback(address: str) -> bool:
    ip = _ip(address)
    return ip is not None and ip.is_loopback


def overlap(ours: str, theirs: str, platform: str) -> Overlap | None:
    """Whether a socket on `theirs` blocks a bind on `ours` (same port).

    Same family: equal addresses, or either one the wildcard. Across families, only through a dual-stack
    IPv6 wildcard: Linux and macOS create `[::]` sockets dual-stack unless IPV6_V6ONLY is set (and
    /proc/net/tcp6 cannot say which), Windows creates them IPv6-only.
    """
    our_ip, their_ip = _ip(ours), _ip(theirs)
    if our_ip is None or their_ip is None:
        return None
    if our_ip.version == their_ip.version:
        if our_ip == their_ip or is_wildcard(ours) or is_wildcard(theirs):
            return "same"
        return None
    if _platform_family(platform) == "win32":
        return None
    if their_ip.version == 6 and theirs == "::":
        return "dual_v6_holder"
    if our_ip.version == 6 and ours == "::":
        return "dual_v4_holder"
    return None


def not_local_target(endpoint: TcpEndpoint, facts: HostFacts) -> str | None:
    """The address a bind on `endpoint` tries, when the probes found this host does not have it."""
    target = bind_address(endpoint.host, facts.addresses(endpoint.host))
    if target is None or surely_local(target, facts.platform):
        return None
    return target if facts.is_local(target) is False else None


# --------------------------------------------------------------------------------------------------
# Shared wording helpers


def _who(euid: int | None, user: str | None) -> str:
    if euid is None:
        return "this user"
    return f"uid {euid} ({user})" if user else f"uid {euid}"


def _where(row: Listener) -> str:
    return f"[{row.address}]:{row.port}" if ":" in row.address else f"{row.address}:{row.port}"


def _process_names(row: Listener, windows: WindowsFacts | None) -> tuple[str, ...]:
    if row.names:
        return row.names
    if windows is not None:
        images = {p.pid: p.image for p in windows.processes if p.image}
        return tuple(images[pid] for pid in row.pids if pid in images)
    return ()


def describe_holder(row: Listener, windows: WindowsFacts | None = None) -> str:
    names = _process_names(row, windows) or (("System",) if SYSTEM_PID in row.pids else ())
    pids = ", ".join(str(p) for p in row.pids)
    user = f"user {row.user}" if row.user else (f"uid {row.uid}" if row.uid is not None else "")
    if row.pids:
        inner = ", ".join(x for x in (f"pid {pids}", user) if x)
        return f"{'/'.join(names)} ({inner})" if names else f"a process ({inner})"
    if user:
        return f"{user} (uid {row.uid})" if row.user and row.uid is not None else user
    return "another program"


def _stop(row: Listener | None, platform: str, port: int) -> str:
    family = _platform_family(platform)
    if row is not None and row.pids:
        return m.STOP_PID.get(family, m.STOP_PID["linux"]).format(pid=row.pids[0])
    return m.FIND_AND_STOP.format(who_holds=_who_holds(platform, port))


def _who_holds(platform: str, port: int) -> str:
    return m.WHO_HOLDS.get(_platform_family(platform), m.WHO_HOLDS["linux"]).format(port=port)


def _listener_fact(row: Listener, source: str) -> str:
    owner = describe_holder(row) if (row.pids or row.uid is not None or row.user) else "(owner not visible)"
    if row.state == "TIME_WAIT":
        owner = f"({row.timewait_seconds} s left)" if row.timewait_seconds is not None else ""
    return m.FACT_LISTENER.format(state=row.state, where=_where(row), owner=owner, source=source)


def _suggested_port(port: int, floor: int) -> int:
    candidate = port + 8000 if port + 8000 <= 65535 else floor
    return max(candidate, floor)


# --------------------------------------------------------------------------------------------------
# Linux privilege


def _privilege_facts(priv: LinuxPrivilege) -> list[str]:
    lines = [
        m.FACT_THRESHOLD.format(threshold=priv.threshold, path="/proc/sys/net/ipv4/ip_unprivileged_port_start")
        if priv.threshold_source == "sysctl"
        else m.FACT_THRESHOLD_DEFAULT,
        m.FACT_IDENTITY.format(
            who=_who(priv.euid, priv.user),
            capeff=priv.capeff,
            cap_state="set" if priv.has_bind_capability else "not set",
        ),
    ]
    if priv.capamb or priv.no_new_privs:
        lines.append(m.FACT_AMBIENT.format(capamb=priv.capamb, nnp=int(priv.no_new_privs)))
    if priv.has_bind_capability and priv.netns_owner == "outside":
        lines.append(m.FACT_NETNS_OUTSIDE)
    elif priv.has_bind_capability and priv.netns_owner == "unknown":
        lines.append(m.FACT_NETNS_UNKNOWN.format(uid_map="initial" if priv.uid_map_initial else "not initial"))
    if priv.authbind:
        lines.append(m.FACT_AUTHBIND)
    return lines


def _linux_privilege_finding(
    endpoint: TcpEndpoint, priv: LinuxPrivilege, extra: Sequence[str], explaining: bool
) -> Finding | None:
    port = endpoint.port
    if not 0 < port < priv.threshold or priv.capability_counts:
        return None
    key = "linux_userns_not_owner" if priv.has_bind_capability else "linux_privileged_port"
    return build(
        key,
        endpoint,
        "error",
        [*extra, *_privilege_facts(priv)],
        explaining=explaining,
        threshold=priv.threshold,
        threshold_last=priv.threshold - 1,
        who=_who(priv.euid, priv.user),
        suggested_port=_suggested_port(port, priv.threshold),
    )


# --------------------------------------------------------------------------------------------------
# Port holders


def _conflicts(
    endpoint: TcpEndpoint, addresses: Sequence[str], pf: PortFacts, platform: str, state: str = "LISTEN"
) -> list[tuple[Listener, Overlap, str]]:
    found: list[tuple[Listener, Overlap, str]] = []
    for row in pf.listeners:
        if row.state != state:
            continue
        for ours in addresses:
            kind = overlap(ours, row.address, platform)
            if kind is not None:
                found.append((row, kind, ours))
                break
    return found


def _httpsys_finding(
    endpoint: TcpEndpoint, row: Listener, facts: HostFacts, extra: Sequence[str], explaining: bool
) -> Finding:
    port = endpoint.port
    pf = facts.port(port)
    lines = [*extra, _listener_fact(row, pf.source if pf is not None else "")]
    registrant = "a URL registration the guard could not read (run `netsh http show servicestate view=requestq`)"
    stop_service = "`netsh http show servicestate view=requestq` names the process; stop or reconfigure it"
    windows = facts.windows
    state = windows.httpsys if windows else None
    if state is not None:
        images = {p.pid: p for p in (windows.processes if windows else ())}
        matching = [q for q in state.queues if any(u.port == port for u in q.urls)] if state.linked else []
        for queue in matching:
            procs = [images.get(p.pid, p) if p.image is None else p for p in queue.processes]
            named = [
                (f"{p.image.rsplit(chr(92), 1)[-1]} (pid {p.pid}" if p.image else f"pid {p.pid}")
                + (f", service {', '.join(p.services)}" if p.services else "")
                + (")" if p.image else "")
                for p in procs
            ]
            urls = ", ".join(u.raw for u in queue.urls if u.port == port)
            lines.append(m.FACT_HTTPSYS_QUEUE.format(processes=", ".join(named) or "no process", urls=urls))
        if matching:
            first = matching[0]
            procs = [images.get(p.pid, p) if p.image is None else p for p in first.processes]
            urls = ", ".join(u.raw for u in first.urls if u.port == port)
            who = ", ".join(
                (p.image.rsplit("\\", 1)[-1] if p.image else "a process") + f" (pid {p.pid})" for p in procs
            )
            registrant = f"{who or 'a request queue with no worker process'}, which registered {urls}"
            services = [s for p in procs for s in p.services]
            stop_service = (
                " or ".join(f"`net stop {s}`" for s in services)
                if services
                else (m.TASKKILL.format(pid=procs[0].pid) if procs else stop_service)
            ) + " (or change the URL it registers)"
        elif state.urls:
            urls = ", ".join(u.raw for u in state.urls if u.port == port)
            if urls:
                lines.append(m.FACT_HTTPSYS_URLS.format(urls=urls))
                registrant = f"the URL registration(s) {urls}"
    if windows is not None:
        if windows.iplisten:
            lines.append(m.FACT_IPLISTEN.format(addresses=", ".join(windows.iplisten)))
        reserved = ", ".join(u.raw for u in windows.reservations if u.port == port)
        if reserved:
            lines.append(m.FACT_RESERVATIONS.format(urls=reserved))
    return build(
        "win_http_sys",
        endpoint,
        "error",
        lines,
        explaining=explaining,
        registrant=registrant,
        stop_service=stop_service,
    )


def _holder_finding(
    endpoint: TcpEndpoint,
    conflict: tuple[Listener, Overlap, str],
    facts: HostFacts,
    extra: Sequence[str],
    *,
    explaining: bool,
    reuse_port: bool = False,
) -> Finding:
    row, kind, ours = conflict
    port = endpoint.port
    pf = facts.port(port)
    source = pf.source if pf else ""
    lines = [*extra, _listener_fact(row, source)]
    if pf is not None and not pf.owners_visible and not row.pids:
        lines.append(m.FACT_NOT_VISIBLE)
    platform = _platform_family(facts.platform)
    holder = describe_holder(row, facts.windows)
    stop = _stop(row, facts.platform, port)
    if platform == "win32" and SYSTEM_PID in row.pids:
        return _httpsys_finding(endpoint, row, facts, extra, explaining)
    if platform == "darwin" and port in (5000, 7000) and any(n.startswith("ControlCe") for n in row.names):
        return build("mac_airplay", endpoint, "error", lines, explaining=explaining, holder=holder)
    if reuse_port and not explaining and row.uid is not None and row.uid == facts.euid:
        return build("reuseport_shared", endpoint, "warning", lines, holder=holder, stop=stop)
    address = f"[{ours}]" if ":" in ours else ours
    if kind == "dual_v6_holder":
        severity: Severity = "error" if explaining else "warning"
        return build(
            "dualstack_v6_holder",
            endpoint,
            severity,
            lines,
            explaining=explaining,
            holder=holder,
            stop=stop,
            address=address,
        )
    if kind == "dual_v4_holder":
        return build(
            "dualstack_v4_holder",
            endpoint,
            "error",
            lines,
            explaining=explaining,
            holder=holder,
            stop=stop,
            holder_address=_where(row),
        )
    key = "port_in_use" if row.pids or platform == "win32" else "port_in_use_hidden"
    return build(
        key,
        endpoint,
        "error",
        lines,
        explaining=explaining,
        holder=holder,
        stop=stop,
        address=address,
        who_holds=_who_holds(facts.platform, port),
    )


def _time_wait_finding(
    endpoint: TcpEndpoint, rows: Sequence[Listener], extra: Sequence[str], explaining: bool
) -> Finding:
    seconds = max((r.timewait_seconds or 0.0) for r in rows)
    secs = f"{seconds:.0f}" if seconds else "60"
    lines = [*extra, m.FACT_TIME_WAIT.format(count=len(rows), port=endpoint.port, seconds=secs)]
    key = "port_time_wait" if explaining else "port_time_wait_warning"
    return build(
        key,
        endpoint,
        "error" if explaining else "warning",
        lines,
        explaining=explaining,
        count=len(rows),
        seconds=secs,
    )


# --------------------------------------------------------------------------------------------------
# Addresses this host does not have


def _addr_not_available(endpoint: TcpEndpoint, facts: HostFacts, extra: Sequence[str], explaining: bool) -> Finding:
    host = endpoint.host
    target = bind_address(host, facts.addresses(host))
    address = target or host
    shown = host if address == host else m.ADDRESS_OF_NAME.format(host=host, address=address)
    ip = _ip(address)
    publish = f"[{ip}]" if ip is not None and ip.version == 6 else (str(ip) if ip is not None else address)
    lines = list(extra)
    if target is not None and facts.is_local(target) is False:
        lines.append(m.FACT_NOT_LOCAL.format(address=target))
    platform = _platform_family(facts.platform)
    return build(
        "addr_not_available",
        endpoint,
        "error",
        lines,
        explaining=explaining,
        address=shown,
        publish=publish,
        ipv6_note=m.ADDR_IPV6_NOTE if ip is None or ip.version == 6 else "",
        list_addresses=m.LIST_ADDRESSES.get(platform, m.LIST_ADDRESSES["linux"]),
    )


# --------------------------------------------------------------------------------------------------
# Windows exclusions


def _excluded_finding(
    endpoint: TcpEndpoint,
    rng: PortRange,
    windows: WindowsFacts,
    extra: Sequence[str],
    explaining: bool,
    taken: Sequence[int] = (),
) -> Finding:
    from kestrelpy.guard.windows import nearest_free_port

    port = endpoint.port
    free = nearest_free_port(port, windows.excluded or (), taken) or 8080
    lines = [
        *extra,
        m.FACT_RANGE.format(start=rng.start, end=rng.end, administered=" (administered)" if rng.administered else ""),
    ]
    dynamic = windows.dynamic
    if dynamic is not None:
        lines.append(m.FACT_DYNAMIC.format(start=dynamic.start, count=dynamic.count))
    if dynamic is not None and dynamic.start < 49152:
        dynamic_remedy = m.DYNAMIC_REMEDY_WIDENED.format(start=dynamic.start, count=dynamic.count)
    else:
        dynamic_remedy = m.DYNAMIC_REMEDY_DEFAULT
    administered = (
        m.ADMINISTERED_NOTE.format(start=rng.start, count=rng.end - rng.start + 1) if rng.administered else ""
    )
    return build(
        "win_excluded_range",
        endpoint,
        "error",
        lines,
        explaining=explaining,
        start=rng.start,
        end=rng.end,
        free_port=free,
        dynamic_remedy=dynamic_remedy,
        administered=administered,
    )


def _excluded_range(port: int, windows: WindowsFacts | None) -> PortRange | None:
    if windows is None or not windows.excluded:
        return None
    return next((r for r in windows.excluded if port in r), None)


# --------------------------------------------------------------------------------------------------
# Prediction


def _predict_fd(endpoint: FdEndpoint, facts: HostFacts) -> list[Finding]:
    info = facts.fd(endpoint.fd)
    if info is None:
        return []
    if not info.is_socket:
        return [
            build(
                "fd_not_socket",
                endpoint,
                "error",
                [m.FACT_FD.format(fd=info.fd, state="not a socket")],
                fd=info.fd,
            )
        ]
    if not info.listening:
        bound = f" bound to {info.address}:{info.port}" if info.address is not None else ""
        return [
            build(
                "fd_not_listening",
                endpoint,
                "error",
                [m.FACT_FD.format(fd=info.fd, state="socket, not listening")],
                fd=info.fd,
                bound=bound,
            )
        ]
    return []  # an inherited listening socket: the privilege question was settled by whoever bound it


def _predict_tcp(endpoint: TcpEndpoint, facts: HostFacts, reuse_port: bool) -> list[Finding]:
    findings: list[Finding] = []
    addresses = endpoint_addresses(endpoint, facts)
    if addresses == ():
        return [build("host_unresolved", endpoint, "error")]
    resolved_fact = []
    if addresses is not None and _ip(endpoint.host) is None and endpoint.host not in ("", "*", "+"):
        resolved_fact = [m.FACT_RESOLVED.format(host=endpoint.host, addresses=", ".join(addresses))]
    if not_local_target(endpoint, facts) is not None:
        return [_addr_not_available(endpoint, facts, resolved_fact, explaining=False)]
    addrs = addresses or ()
    platform = _platform_family(facts.platform)
    port = endpoint.port

    if platform == "linux" and facts.linux is not None and not facts.linux.authbind:
        found = _linux_privilege_finding(endpoint, facts.linux, resolved_fact, explaining=False)
        if found is not None:
            findings.append(found)
        elif facts.container and 0 < port < 1024 and facts.linux.threshold <= port:
            findings.append(
                build(
                    "container_publish_hint",
                    endpoint,
                    "info",
                    _privilege_facts(facts.linux),
                    container=facts.container,
                    threshold=facts.linux.threshold,
                )
            )
    if platform == "darwin" and 0 < port < 1024 and facts.euid not in (None, 0):
        specific = [a for a in addrs if not is_wildcard(a)]
        if specific:
            findings.append(
                build(
                    "mac_privileged_address",
                    endpoint,
                    "error",
                    [*resolved_fact, m.FACT_IDENTITY_MAC.format(who=_who(facts.euid, facts.user))],
                    host=specific[0],
                    suggested_port=_suggested_port(port, 1024),
                )
            )
    if platform == "win32":
        rng = _excluded_range(port, facts.windows)
        if rng is not None and facts.windows is not None:
            findings.append(_excluded_finding(endpoint, rng, facts.windows, resolved_fact, explaining=False))
        exposed = [a for a in addrs if not is_loopback(a)]
        if exposed:
            findings.append(
                build(
                    "win_firewall_prompt",
                    endpoint,
                    "info",
                    host=exposed[0],
                    executable=facts.executable or "python.exe",
                )
            )

    pf = facts.port(port) if port else None
    if pf is not None:
        conflicts = _conflicts(endpoint, addrs, pf, facts.platform)
        if conflicts:
            findings.append(
                _holder_finding(endpoint, conflicts[0], facts, resolved_fact, explaining=False, reuse_port=reuse_port)
            )
        else:
            waiting = [row for row, _, _ in _conflicts(endpoint, addrs, pf, facts.platform, "TIME_WAIT")]
            if waiting:
                findings.append(_time_wait_finding(endpoint, waiting, resolved_fact, explaining=False))
    if facts.wsl is not None and port:
        wpf = facts.windows_side_port(port)
        if wpf is not None and wpf.listeners:
            row = wpf.listeners[0]
            lines = [m.FACT_WINDOWS_SIDE.format(state=row.state, where=_where(row), owner=describe_holder(row))]
            findings.append(
                build(
                    "wsl_windows_holds_port",
                    endpoint,
                    "warning",
                    lines,
                    holder=describe_holder(row),
                    stop=_stop(row, "win32", port),
                )
            )
    return findings


def predict_findings(endpoints: Sequence[Endpoint], facts: HostFacts, *, reuse_port: bool = False) -> list[Finding]:
    findings: list[Finding] = []
    seen: list[tuple[TcpEndpoint, tuple[str, ...]]] = []
    for endpoint in endpoints:
        if isinstance(endpoint, FdEndpoint):
            findings += _predict_fd(endpoint, facts)
        elif isinstance(endpoint, TcpEndpoint):
            findings += _predict_tcp(endpoint, facts, reuse_port)
            addrs = endpoint_addresses(endpoint, facts) or ()
            for other, other_addrs in seen:
                if (
                    endpoint.port
                    and other.port == endpoint.port
                    and any(overlap(a, b, facts.platform) for a in addrs for b in other_addrs)
                ):
                    findings.append(
                        build(
                            "endpoints_overlap",
                            endpoint,
                            "error",
                            [m.FACT_OTHER_ENDPOINT.format(other=other.display())],
                            other=other.display(),
                        )
                    )
                    break
            seen.append((endpoint, addrs))
    return findings


# --------------------------------------------------------------------------------------------------
# Explanation


def _explain_tcp(failure: BindFailure, endpoint: TcpEndpoint, facts: HostFacts) -> Finding:
    error_fact = [m.FACT_ERROR.format(error=failure.text)]
    platform = _platform_family(facts.platform)
    port = endpoint.port
    kind = failure.kind
    if kind is FailureKind.UNRESOLVED:
        return build("host_unresolved", endpoint, "error", error_fact, explaining=True)
    if kind is FailureKind.NOT_AVAILABLE:
        resolved = facts.addresses(endpoint.host) if needs_resolving(endpoint.host) else None
        if resolved:
            error_fact.append(m.FACT_RESOLVED.format(host=endpoint.host, addresses=", ".join(resolved)))
        return _addr_not_available(endpoint, facts, error_fact, explaining=True)
    addrs = endpoint_addresses(endpoint, facts) or ()
    pf = facts.port(port)
    conflicts = _conflicts(endpoint, addrs, pf, facts.platform) if pf else []

    if kind is FailureKind.IN_USE:
        if conflicts:
            return _holder_finding(endpoint, conflicts[0], facts, error_fact, explaining=True)
        waiting = [row for row, _, _ in _conflicts(endpoint, addrs, pf, facts.platform, "TIME_WAIT")] if pf else []
        if waiting:
            return _time_wait_finding(endpoint, waiting, error_fact, explaining=True)
        if platform == "darwin" and port in (5000, 7000):
            return build(
                "mac_airplay",
                endpoint,
                "error",
                error_fact,
                explaining=True,
                holder="ControlCenter (not visible to this user)",
            )
        return build(
            "port_in_use_unseen",
            endpoint,
            "error",
            error_fact,
            explaining=True,
            address=endpoint.host,
            who_holds=_who_holds(facts.platform, port),
        )

    if kind is FailureKind.DENIED:
        if platform == "linux" and facts.linux is not None:
            found = _linux_privilege_finding(endpoint, facts.linux, error_fact, explaining=True)
            if found is not None:
                return found
            lines = [*error_fact, *_privilege_facts(facts.linux)]
            if facts.lsm is not None and facts.lsm.active:
                lsm = "SELinux enforcing" if facts.lsm.selinux_enforcing else f"context {facts.lsm.context}"
                allowed = (
                    f"port {port} is not below {facts.linux.threshold}"
                    if port >= facts.linux.threshold
                    else "CAP_NET_BIND_SERVICE is effective"
                )
                return build(
                    "linux_lsm_denied",
                    endpoint,
                    "error",
                    [*lines, m.FACT_LSM.format(lsm=lsm)],
                    explaining=True,
                    lsm=lsm,
                    allowed_because=allowed,
                )
            return build("bind_denied", endpoint, "error", lines, explaining=True, error=failure.text)
        if platform == "darwin":
            specific = [a for a in addrs if not is_wildcard(a)]
            if 0 < port < 1024 and (specific or not addrs):
                return build(
                    "mac_privileged_address",
                    endpoint,
                    "error",
                    [*error_fact, m.FACT_IDENTITY_MAC.format(who=_who(facts.euid, facts.user))],
                    explaining=True,
                    host=specific[0] if specific else endpoint.host,
                    suggested_port=_suggested_port(port, 1024),
                )
        if platform == "win32":
            if conflicts:
                row = conflicts[0][0]
                if SYSTEM_PID in row.pids:
                    return _httpsys_finding(endpoint, row, facts, error_fact, explaining=True)
                lines = [*error_fact, _listener_fact(row, pf.source if pf else "")]
                return build(
                    "win_exclusive_holder",
                    endpoint,
                    "error",
                    lines,
                    explaining=True,
                    holder=describe_holder(row, facts.windows),
                    stop=_stop(row, "win32", port),
                )
            rng = _excluded_range(port, facts.windows)
            if rng is not None and facts.windows is not None:
                return _excluded_finding(endpoint, rng, facts.windows, error_fact, explaining=True)
            probed = facts.windows is not None and facts.windows.excluded is not None
            return build(
                "win_denied_unexplained",
                endpoint,
                "error",
                error_fact,
                explaining=True,
                probe_note="" if probed else " (the excluded ranges could not be read)",
            )
        return build("bind_denied", endpoint, "error", error_fact, explaining=True, error=failure.text)

    if kind is FailureKind.NOT_PERMITTED:
        if facts.linux is not None and facts.linux.authbind:
            return build(
                "linux_authbind_denied",
                endpoint,
                "error",
                [*error_fact, *_privilege_facts(facts.linux)],
                explaining=True,
                who=_who(facts.linux.euid, facts.linux.user),
                user=facts.linux.user or facts.linux.euid,
                threshold=facts.linux.threshold,
                suggested_port=_suggested_port(port, 1024),
            )
        return build("bind_denied", endpoint, "error", error_fact, explaining=True, error=failure.text)
    return build("bind_failed", endpoint, "error", error_fact, explaining=True, error=failure.text)


def explain_failure(failure: BindFailure, endpoint: Endpoint, facts: HostFacts) -> Finding:
    if isinstance(endpoint, TcpEndpoint):
        return _explain_tcp(failure, endpoint, facts)
    error_fact = [m.FACT_ERROR.format(error=failure.text)]
    if isinstance(endpoint, UnixEndpoint):
        if failure.kind is FailureKind.IN_USE:
            return build(
                "unix_in_use",
                endpoint,
                "error",
                error_fact,
                explaining=True,
                path=endpoint.path,
                holder_note="",
            )
        if failure.kind in (FailureKind.DENIED, FailureKind.NOT_PERMITTED):
            return build(
                "unix_denied",
                endpoint,
                "error",
                error_fact,
                explaining=True,
                path=endpoint.path,
                error=failure.text,
            )
    if isinstance(endpoint, FdEndpoint):
        found = _predict_fd(endpoint, facts)
        if found:
            first = found[0]
            return build(
                "fd_not_socket" if first.code == "KP-FD-NOT-SOCKET" else "fd_not_listening",
                endpoint,
                "error",
                [*error_fact, *first.facts],
                explaining=True,
                fd=endpoint.fd,
                bound="",
            )
    return build("bind_failed", endpoint, "error", error_fact, explaining=True, error=failure.text)


@dataclass(frozen=True)
class Report:
    """Facts and findings together, for `kestrelpy check --json`."""

    facts: HostFacts
    findings: tuple[Finding, ...] = field(default=())

    @property
    def blocking(self) -> bool:
        return any(f.severity == "error" for f in self.findings)
