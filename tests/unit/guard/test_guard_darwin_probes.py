"""macOS parsers against recorded lsof and netstat output."""

from __future__ import annotations

from collections.abc import Callable

from kestrelpy.guard import darwin
from kestrelpy.guard.runner import FixtureIO

Load = Callable[[str], str]


def test_lsof_table_airplay_and_user_server(load: Load) -> None:
    rows = darwin.parse_lsof_table(load("darwin/lsof_airplay.txt"), 5000)
    assert [(r.names, r.pids, r.user, r.family, r.address) for r in rows] == [
        (("ControlCe",), (433,), "dz0ny", 4, "0.0.0.0"),
        (("ControlCe",), (433,), "dz0ny", 6, "::"),
        (("python",), (22030,), "jone", 4, "127.0.0.1"),
    ]


def test_lsof_table_without_numeric_port_is_skipped(load: Load) -> None:
    # Without -P lsof prints service names; the probe always passes -P, and a name is never guessed.
    assert darwin.parse_lsof_table(load("darwin/lsof_c0_service_name.txt")) == []


def test_lsof_table_from_linux_dual_stack(load: Load) -> None:
    (row,) = darwin.parse_lsof_table(load("linux/lsof_dualstack.txt"))
    assert (row.family, row.address, row.port, row.pids, row.user) == (6, "::", 18082, (28925,), "nobody")


def test_lsof_field_output(load: Load) -> None:
    (row,) = darwin.parse_lsof_fields(load("linux/lsof_F.txt"))
    assert (row.pids, row.names, row.port, row.address) == ((28925,), ("python3.11",), 18082, "0.0.0.0")
    assert darwin.parse_lsof_fields(load("linux/lsof_F.txt"), 80) == []


def test_netstat_anv_pid_column_and_tcp46(load: Load) -> None:
    rows = darwin.parse_netstat_anv(load("darwin/netstat_anv.txt"))
    assert [(r.family, r.address, r.port, r.pids) for r in rows] == [
        (4, "0.0.0.0", 80, (68606,)),
        (6, "::", 80, (68606,)),
        (4, "127.0.0.1", 6443, (68606,)),
    ]


def test_collect_port_prefers_lsof_and_falls_back_to_netstat(load: Load) -> None:
    lsof_text = "p433\ncControlCenter\nLdz0ny\nn*:5000\n"
    with_lsof = FixtureIO(platform="darwin", commands={" ".join(darwin.lsof_argv(5000)): lsof_text}, uid=501)
    pf = darwin.collect_port(with_lsof, 5000)
    assert (pf.source, [r.names for r in pf.listeners], pf.owners_visible) == ("lsof", [("ControlCenter",)], False)
    without = FixtureIO(platform="darwin", commands={" ".join(darwin.NETSTAT): load("darwin/netstat_anv.txt")})
    pf = darwin.collect_port(without, 80)
    assert pf.source == "netstat -anv" and len(pf.listeners) == 2
