"""The pre-bind screen: it may only say "clear" when the full probes and rules find nothing, and an
ordinary start must not load the rest of the guard."""

from __future__ import annotations

import itertools
import json
import random
import socket
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from kestrelpy.endpoints import Endpoint, FdEndpoint, TcpEndpoint
from kestrelpy.guard import FixtureIO, linux, predict, screen, windows
from kestrelpy.guard.collect import gather
from kestrelpy.guard.facts import FdInfo
from kestrelpy.guard.verdict import predict_findings

Load = Callable[[str], str]
ROOT = Path(__file__).resolve().parents[3]

STATUSES = ["status_nobody", "status_root", "status_ambient", "status_userns_root", "status_root_without_bind_cap"]
THRESHOLDS = ["ip_unprivileged_port_start_0", "ip_unprivileged_port_start_80", "ip_unprivileged_port_start_1024", None]
TCP_TABLES = [
    ("proc_net_tcp_listen", "proc_net_tcp6_listen"),
    ("proc_net_tcp_timewait", None),
    (None, None),
]
PORTS = [0, 1, 79, 80, 443, 1023, 1024, 5000, 8000, 18080, 18081, 18082, 18083, 18084, 18097]
HOSTS = [
    "127.0.0.1",
    "0.0.0.0",
    "::",
    "::1",
    "127.0.0.2",
    "localhost",
    "nope.invalid",
    "",
    "192.0.2.1",  # recorded as not on this host
    "10.0.0.5",  # recorded as on this host
    "198.51.100.7",  # the trial bind could not tell
    "fe80::1%eth0",
    "gone.example",  # resolves to an address this host lacks
    "mixed.example",  # a local first address, then one this host lacks
]
LOCAL = {"192.0.2.1": False, "10.0.0.5": True, "198.51.100.7": None, "fe80::1%eth0": False, "127.0.0.2": False}
NAMES = {
    "localhost": ("127.0.0.1", "::1"),
    "gone.example": ("192.0.2.1",),
    "mixed.example": ("10.0.0.5", "192.0.2.1"),
}


def _diag_message(family: int, address: str, port: int) -> bytes:
    import ipaddress
    import struct

    raw = ipaddress.ip_address(address).packed.ljust(16, b"\0")
    body = struct.pack("=BBBB", 2 if family == 4 else 10, 0x0A, 0, 0)
    body += struct.pack(">HH", port, 0) + raw + bytes(16) + struct.pack("=IQ", 0, 0)
    body += struct.pack("=IIIII", 0, 0, 0, 1000, 777)
    return struct.pack("=IHHII", 16 + len(body), 20, 2, 1, 4242) + body


def _done() -> bytes:
    import struct

    return struct.pack("=IHHII", 20, 3, 2, 1, 4242) + bytes(4)  # NLMSG_DONE


DONE = _done()


def _win_table(family: int, rows: Sequence[tuple[int, str, int]]) -> bytes:
    """A GetExtendedTcpTable buffer, (state, address, port) per row, laid out as tcpmib.h documents it."""
    import ipaddress
    import struct

    out = struct.pack("<I", len(rows))
    for state, address, port in rows:
        packed, net_port = ipaddress.ip_address(address).packed, int.from_bytes(port.to_bytes(2, "big"), "little")
        if family == 4:
            out += struct.pack("<I4sIIII", state, packed, net_port, 0, 0, 4242)
        else:
            out += struct.pack("<16sII16sIIII", packed, 0, net_port, bytes(16), 0, 0, state, 4242)
    return out


def _host(load: Load, rng: random.Random, platform: str) -> FixtureIO:
    files: dict[str, str] = {}
    status = rng.choice(STATUSES)
    files[linux.STATUS_PATH] = load(f"linux/{status}.txt")
    threshold = rng.choice(THRESHOLDS)
    if threshold is not None:
        files[linux.THRESHOLD_PATH] = load(f"linux/{threshold}.txt")
    files[linux.UID_MAP_PATH] = load(
        "linux/uid_map_userns_nobody.txt" if status == "status_userns_root" else "linux/uid_map_initial.txt"
    )
    v4, v6 = rng.choice(TCP_TABLES)
    if v4:
        files["/proc/net/tcp"] = load(f"linux/{v4}.txt")
    if v6:
        files["/proc/net/tcp6"] = load(f"linux/{v6}.txt")
    if rng.random() < 0.2:
        files["/.dockerenv"] = ""
    diag = None
    if rng.random() < 0.5:
        held = rng.sample(PORTS[1:], 2)
        diag = {4: _diag_message(4, "127.0.0.1", held[0]) + DONE, 6: _diag_message(6, "::", held[1]) + DONE}
    environ = {"AUTHBIND_LIB": "/usr/lib/authbind/libauthbind.so.1"} if rng.random() < 0.1 else {}
    tables = None
    if rng.random() < 0.7:
        held = rng.sample(PORTS[1:], 3)
        tables = {
            4: _win_table(4, [(2, "0.0.0.0", held[0]), (5, "127.0.0.1", held[1])]),
            6: _win_table(6, [(2, "::1", held[2])]),
        }
        if rng.random() < 0.2:
            del tables[6]
    return FixtureIO(
        platform=platform,
        uid=rng.choice([0, 1000, 65534, None]),
        owner=rng.choice(["own", "outside", "unknown"]),
        files=files,
        environ=environ,
        hosts=NAMES,
        local=LOCAL,
        diag=diag,
        tcp_tables=tables,
        fd_infos={3: FdInfo(3, True, True, 4, "127.0.0.1", 80), 4: FdInfo(4, True, False)},
    )


def _endpoints(rng: random.Random) -> list[Endpoint]:
    endpoints: list[Endpoint] = [TcpEndpoint(rng.choice(HOSTS), rng.choice(PORTS))]
    if rng.random() < 0.3:
        endpoints.append(TcpEndpoint(rng.choice(HOSTS), rng.choice(PORTS)))
    if rng.random() < 0.2:
        endpoints.append(FdEndpoint(rng.choice([3, 4, 5])))
    return endpoints


def _full(endpoints: Sequence[Endpoint], io: FixtureIO) -> list[str]:
    return [f.code for f in predict_findings(endpoints, gather(endpoints, io))]


@pytest.mark.parametrize("platform", ["linux", "darwin", "freebsd14", "win32"])
def test_clear_only_when_the_full_rules_find_nothing(load: Load, platform: str) -> None:
    rng = random.Random(f"screen-{platform}")
    cleared = 0
    for _ in range(600):
        host, endpoints = _host(load, rng, platform), _endpoints(rng)
        if screen.clear(endpoints, host):
            cleared += 1
            assert _full(endpoints, host) == [], (endpoints, host.files, host.diag, host.environ)
            assert predict(endpoints, probe=host) == []
    assert cleared > 50  # the screen is not a no-op that always defers


def test_ordinary_start_is_clear_and_problems_are_not(load: Load) -> None:
    def host(**extra: object) -> FixtureIO:
        base = {
            linux.THRESHOLD_PATH: load("linux/ip_unprivileged_port_start_1024.txt"),
            linux.STATUS_PATH: load("linux/status_nobody.txt"),
            linux.UID_MAP_PATH: load("linux/uid_map_initial.txt"),
            "/proc/net/tcp": load("linux/proc_net_tcp_listen.txt"),
            "/proc/net/tcp6": load("linux/proc_net_tcp6_listen.txt"),
        }
        return FixtureIO(uid=65534, files=base, **extra)  # type: ignore[arg-type]

    assert screen.clear([TcpEndpoint("127.0.0.1", 8000)], host())
    assert screen.clear([TcpEndpoint("127.0.0.1", 0)], host())
    assert not screen.clear([TcpEndpoint("127.0.0.1", 80)], host())  # privileged for uid 65534
    assert screen.clear([TcpEndpoint("127.0.0.1", 80)], host(environ={"AUTHBIND_LIB": "x"}))
    assert not screen.clear([TcpEndpoint("127.0.0.2", 18080)], host())  # something listens on the port
    assert not screen.clear([TcpEndpoint("nope.invalid", 8000)], host())
    assert not screen.clear([TcpEndpoint("0.0.0.0", 8000), TcpEndpoint("127.0.0.1", 8000)], host())
    assert not screen.clear([FdEndpoint(3)], host())  # FixtureIO: descriptor 3 is not a socket
    assert not screen.clear([TcpEndpoint("192.0.2.1", 8000)], host(local=LOCAL))  # not on this host
    assert not screen.clear([TcpEndpoint("192.0.2.1", 0)], host(local=LOCAL))  # whatever the port
    assert not screen.clear([TcpEndpoint("gone.example", 8000)], host(local=LOCAL, hosts=NAMES))
    assert screen.clear([TcpEndpoint("mixed.example", 8000)], host(local=LOCAL, hosts=NAMES))
    assert screen.clear([TcpEndpoint("10.0.0.5", 8000)], host(local=LOCAL))
    assert screen.clear([TcpEndpoint("198.51.100.7", 8000)], host(local=LOCAL))  # unknown: the bind decides
    assert not screen.clear([TcpEndpoint("127.0.0.2", 8000)], host(platform="darwin", local=LOCAL))
    assert screen.clear([TcpEndpoint("127.0.0.1", 8000)], host(platform="win32"))
    assert not screen.clear([TcpEndpoint("0.0.0.0", 8000)], host(platform="win32"))  # the firewall will ask
    held = {4: _win_table(4, [(2, "0.0.0.0", 8000)]), 6: b""}
    assert not screen.clear([TcpEndpoint("127.0.0.1", 8000)], host(platform="win32", tcp_tables=held))


class CountingIO(FixtureIO):
    """A recorded host that counts the trial binds it is asked for."""

    def __init__(self, **kw: object) -> None:
        super().__init__(**kw)  # type: ignore[arg-type]
        self.asked: list[str] = []

    def address_is_local(self, host: str) -> bool | None:
        self.asked.append(host)
        return super().address_is_local(host)


@pytest.mark.parametrize("platform", ["linux", "darwin", "win32"])
def test_wildcards_and_loopback_cost_no_trial_bind(platform: str) -> None:
    for host in ["127.0.0.1", "::1", "0.0.0.0", "::", "*", "", "localhost"]:
        io = CountingIO(platform=platform, hosts=NAMES)
        screen.clear([TcpEndpoint(host, 8000)], io)
        gather([TcpEndpoint(host, 8000)], io, thorough=True)
        assert io.asked == [], host
    io = CountingIO(platform=platform, local=LOCAL)
    assert not screen.clear([TcpEndpoint("192.0.2.1", 8000)], io)
    assert io.asked == ["192.0.2.1"]  # one trial bind for a specific address


def test_a_name_has_each_address_it_resolves_to_checked() -> None:
    io = CountingIO(hosts=NAMES, local=LOCAL)
    facts = gather([TcpEndpoint("mixed.example", 8000)], io, thorough=True)
    assert io.asked == ["10.0.0.5", "192.0.2.1"]
    assert facts.local_addresses == (("10.0.0.5", True), ("192.0.2.1", False))


def test_shared_parsers_agree_with_the_full_linux_parsers(load: Load) -> None:
    for name, family in [("proc_net_tcp_listen", 4), ("proc_net_tcp6_listen", 6), ("proc_net_tcp_timewait", 4)]:
        text = load(f"linux/{name}.txt")
        seen = {row.port for row in linux.parse_proc_net_tcp(text, family)}
        for port in range(18075, 18100):
            assert screen.proc_net_tcp_has_port(text, port) is (port in seen), (name, port)
    replies = b"".join(_diag_message(4, "127.0.0.1", p) for p in (22, 8000, 18080)) + DONE
    for port in itertools.chain(range(7995, 8005), [22, 18080, 18081]):
        assert screen.sock_diag_has_port(replies, port) is bool(linux.parse_sock_diag(replies, 4, port))
    assert not screen.sock_diag_has_port(b"", 8000)
    rows = [(2, "0.0.0.0", 80), (5, "127.0.0.1", 8000), (2, "127.0.0.1", 18080), (2, "::", 443), (2, "::1", 5000)]
    for family in (4, 6):
        table = _win_table(family, [r for r in rows if (":" in r[1]) is (family == 6)])
        listening = {row.port for row in windows.decode_tcp_table(table, family)}
        for port in (80, 443, 5000, 8000, 18080, 20480, 1):
            assert screen.tcp_table_has_port(table, family, port) is (port in listening), (family, port)
        assert not screen.tcp_table_has_port(table[:-1], family, 5000 if family == 6 else 18080)  # cut short


def _guard_modules_after(setup: str, endpoints: str) -> tuple[int, list[str]]:
    """(findings, guard modules loaded) after one predict() in a fresh interpreter that imported the server."""
    code = (
        "import json, socket, sys, kestrelpy.server\n"
        "from kestrelpy import guard\n"
        "from kestrelpy.endpoints import FdEndpoint, tcp_endpoint\n"
        f"{setup}\n"
        f"findings = guard.predict({endpoints})\n"
        "print(json.dumps([len(findings), sorted(m for m in sys.modules if m.startswith('kestrelpy.guard'))]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    count, modules = json.loads(out.stdout)
    return count, modules


def test_an_ordinary_start_loads_only_the_screen() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # free once closed, and above the privileged floor
    count, modules = _guard_modules_after("", f"[tcp_endpoint('127.0.0.1', {port})]")
    assert (count, modules) == (0, ["kestrelpy.guard", "kestrelpy.guard.screen", "kestrelpy.guard.system"])
    # An inherited listening socket (systemd socket activation) adds only the descriptor's fact class.
    setup = "s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen()"
    count, modules = _guard_modules_after(setup, "[FdEndpoint(s.fileno())]")
    assert count == 0
    assert modules == ["kestrelpy.guard", "kestrelpy.guard.fdinfo", "kestrelpy.guard.screen", "kestrelpy.guard.system"]
