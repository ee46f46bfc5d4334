"""Windows parsers against recorded (partly localized) command output, and the IP Helper table decoder."""

from __future__ import annotations

import ctypes
import ipaddress
import struct
from collections.abc import Callable

import pytest

from kestrelpy.guard import windows
from kestrelpy.guard.facts import DynamicRange, PortRange

Load = Callable[[str], str]


def test_netstat_abo_pid4_rows(load: Load) -> None:
    rows = windows.parse_netstat_ano(load("windows/netstat_abo_pid4.txt"))
    assert [(r.address, r.port, r.pids) for r in rows] == [("0.0.0.0", 80, (4,)), ("::", 80, (4,))]


def test_netstat_ano_filters_by_port(load: Load) -> None:
    text = load("windows/netstat_ano_8082.txt")
    assert [(r.family, r.address) for r in windows.parse_netstat_ano(text, 8082)] == [(4, "0.0.0.0"), (6, "::")]
    assert windows.parse_netstat_ano(text, 80) == []


def test_netstat_listening_is_told_by_foreign_port_not_state_word() -> None:
    german = (
        "  TCP    127.0.0.1:5000         0.0.0.0:0              ABHÖREN         9120\n"
        "  TCP    127.0.0.1:5000         127.0.0.1:53211        HERGESTELLT     9120\n"
    )
    assert [(r.port, r.pids) for r in windows.parse_netstat_ano(german)] == [(5000, (9120,))]


def test_servicestate_requestq_links_pids_to_urls(load: Load) -> None:
    state = windows.parse_servicestate(load("windows/servicestate_requestq_sf.txt"))
    assert state.linked
    summary = [([p.pid for p in q.processes], [u.port for u in q.urls]) for q in state.queues]
    assert summary == [([944], [5985, 47001]), ([1552], [80])]
    assert state.queues[1].urls[0].raw == "HTTP://+:80/"


def test_servicestate_new_layout_has_images_and_services(load: Load) -> None:
    state = windows.parse_servicestate(load("windows/servicestate_requestq_new_processes.txt"))
    assert state.linked and len(state.queues) == 2
    first, second = state.queues
    assert [(p.pid, p.image, p.services) for p in first.processes] == [
        (2688, r"C:\Windows\System32\svchost.exe", ("NcHostAgent",))
    ]
    assert [(u.scheme, u.host, u.port, u.path) for u in first.urls] == [("https", "+", 443, "/HOSTAGENT/VSWITCH/")]
    assert [(p.pid, p.image) for p in second.processes] == [(1412, None)]
    assert [u.port for u in second.urls] == [5985, 47001]


def test_servicestate_session_view_is_unlinked(load: Load) -> None:
    state = windows.parse_servicestate(load("windows/servicestate_session_branchcache.txt"))
    assert not state.linked
    assert [u.port for u in state.urls] == [80]
    assert [p.pid for q in state.queues for p in q.processes] == [2668]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("HTTP://+:80/", ("http", "+", 80, "/")),
        ("<HTTP://+:5985/WSMAN/>", ("http", "+", 5985, "/WSMAN/")),
        ("HTTP://LOCALHOST:8080/", ("http", "LOCALHOST", 8080, "/")),
        ("https://*:443/", ("https", "*", 443, "/")),
        ("https://127.0.0.1:8000:127.0.0.1/", ("https", "127.0.0.1", 8000, "/")),
        ("http://[::1]:8081/x/", ("http", "::1", 8081, "/x/")),
        ("http://example/", ("http", "example", 80, "/")),
    ],
)
def test_url_shapes(raw: str, expected: tuple[str, str, int, str]) -> None:
    url = windows.parse_url(raw)
    assert url is not None and (url.scheme, url.host, url.port, url.path) == expected


def test_urlacl_reservations(load: Load) -> None:
    urls = windows.parse_urlacl(load("windows/urlacl.txt"))
    assert [(u.host, u.port, u.path) for u in urls] == [("+", 80, "/Temporary_Listen_Addresses/"), ("*", 5357, "/")]


def test_iplisten(load: Load) -> None:
    assert windows.parse_iplisten(load("windows/iplisten.txt")) == ("192.168.33.1", "127.0.0.0", "127.0.0.1")
    assert windows.parse_iplisten("IP addresses present in the IP listen list:\n---\n\n") == ()


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        (
            "excludedportrange_en.txt",
            [(80, 80, False), (5986, 5986, False), (47001, 47001, False), (51417, 51516, False), (51517, 51616, False)],
        ),
        (
            "excludedportrange_administered.txt",
            [(80, 80, False), (5986, 5986, False), (47001, 47001, False), (55679, 55679, True)],
        ),
        (
            "excludedportrange_wsl_many.txt",
            [
                (4294, 4393, False),
                (4394, 4493, False),
                (7949, 8048, False),
                (8049, 8148, False),
                (50000, 50059, True),
                (54235, 54235, False),
            ],
        ),
        ("excludedportrange_es.txt", [(1025, 1124, False)]),
        (
            "excludedportrange_ko.txt",
            [(5357, 5357, False), (8233, 8233, False), (13543, 13642, False), (50000, 50059, True)],
        ),
    ],
)
def test_excluded_ranges_any_language(load: Load, name: str, expected: list[tuple[int, int, bool]]) -> None:
    ranges = windows.parse_excluded_ranges(load(f"windows/{name}"))
    assert [(r.start, r.end, r.administered) for r in ranges] == expected


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("dynamicport_en.txt", DynamicRange(49152, 16384)),
        ("dynamicport_fr.txt", DynamicRange(49152, 16384)),
        ("dynamicport_widened.txt", DynamicRange(1024, 64511)),
    ],
)
def test_dynamic_port_any_language(load: Load, name: str, expected: DynamicRange) -> None:
    assert windows.parse_dynamic_port(load(f"windows/{name}")) == expected


def test_nearest_free_port_skips_ranges_and_taken_ports(load: Load) -> None:
    ranges = windows.parse_excluded_ranges(load("windows/excludedportrange_wsl_many.txt"))
    assert windows.nearest_free_port(8000, ranges) == 7948
    assert windows.nearest_free_port(8100, ranges) == 8149
    assert windows.nearest_free_port(5000, [PortRange(5000, 5000)], taken=[5001]) == 4999


def test_tasklist_csv_rows_by_position() -> None:
    # Synthetic rows in the documented `tasklist /svc /fo csv /nh` shape (image, PID, services).
    text = '"svchost.exe","2688","NcHostAgent"\n"python.exe","9120","N/A"\n"svchost.exe","944","WinRM,Foo"\n'
    rows = windows.parse_tasklist_csv(text)
    assert [(r.pid, r.image, r.services) for r in rows] == [
        (2688, "svchost.exe", ("NcHostAgent",)),
        (9120, "python.exe", ()),
        (944, "svchost.exe", ("WinRM", "Foo")),
    ]
    assert windows.parse_tasklist_csv("INFO: No tasks are running which match the specified criteria.\n") == []


def _pack_v4(rows: list[tuple[int, str, int, int]]) -> bytes:
    """A MIB_TCPTABLE_OWNER_PID buffer: (state, address, port, pid) per row, ports in network order."""
    out = struct.pack("<I", len(rows))
    for state, addr, port, pid in rows:
        out += struct.pack(
            "<IIIIII",
            state,
            int.from_bytes(ipaddress.IPv4Address(addr).packed, "little"),
            struct.unpack("<H", struct.pack(">H", port))[0],
            0,
            0,
            pid,
        )
    return out


def _pack_v6(rows: list[tuple[int, str, int, int]]) -> bytes:
    out = struct.pack("<I", len(rows))
    for state, addr, port, pid in rows:
        row = windows.MibTcp6RowOwnerPid()
        row.ucLocalAddr[:] = list(ipaddress.IPv6Address(addr).packed)
        row.dwLocalPort = struct.unpack("<H", struct.pack(">H", port))[0]
        row.dwState = state
        row.dwOwningPid = pid
        out += bytes(row)
    return out


def test_decode_tcp_table_v4_keeps_listeners_only() -> None:
    buf = _pack_v4([(2, "0.0.0.0", 80, 4), (5, "127.0.0.1", 51000, 77), (2, "127.0.0.1", 8000, 9120)])
    rows = windows.decode_tcp_table(buf, 4)
    assert [(r.address, r.port, r.pids) for r in rows] == [("0.0.0.0", 80, (4,)), ("127.0.0.1", 8000, (9120,))]


def test_decode_tcp_table_v6() -> None:
    assert ctypes.sizeof(windows.MibTcp6RowOwnerPid) == 56  # the documented layout, no padding
    rows = windows.decode_tcp_table(_pack_v6([(2, "::", 443, 4), (2, "::1", 5000, 12)]), 6)
    assert [(r.address, r.port, r.pids) for r in rows] == [("::", 443, (4,)), ("::1", 5000, (12,))]


def test_decode_tcp_table_tolerates_short_buffers() -> None:
    assert windows.decode_tcp_table(b"", 4) == []
    assert windows.decode_tcp_table(struct.pack("<I", 3), 4) == []
