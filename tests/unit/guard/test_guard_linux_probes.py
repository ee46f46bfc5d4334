"""Linux parsers against recorded /proc text, and collectors over a FixtureIO."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from kestrelpy.guard import linux
from kestrelpy.guard.facts import Listener
from kestrelpy.guard.runner import FixtureIO

Load = Callable[[str], str]


def test_tcp4_listeners_decode_address_port_uid_inode(load: Load) -> None:
    rows = linux.parse_proc_net_tcp(load("linux/proc_net_tcp_listen.txt"), 4)
    assert [(r.address, r.port, r.state, r.uid, r.inode) for r in rows] == [
        ("0.0.0.0", 18083, "LISTEN", 65534, 49566),
        ("127.0.0.1", 18080, "LISTEN", 65534, 49563),
    ]


def test_tcp6_listeners_decode_wildcard_and_loopback(load: Load) -> None:
    rows = linux.parse_proc_net_tcp(load("linux/proc_net_tcp6_listen.txt"), 6)
    assert [(r.address, r.port) for r in rows] == [("::", 18082), ("::", 18084), ("::1", 18081)]
    assert all(r.family == 6 and r.uid == 65534 for r in rows)


def test_port_filter_keeps_only_that_port(load: Load) -> None:
    rows = linux.parse_proc_net_tcp(load("linux/proc_net_tcp6_listen.txt"), 6, port=18081)
    assert [(r.address, r.inode) for r in rows] == [("::1", 49564)]


def test_time_wait_row_reports_seconds_left_and_no_owner(load: Load) -> None:
    (row,) = linux.parse_proc_net_tcp(load("linux/proc_net_tcp_timewait.txt"), 4, clock_ticks=100)
    assert (row.address, row.port, row.state) == ("127.0.0.1", 18097, "TIME_WAIT")
    assert row.timewait_seconds == pytest.approx(59.8)
    assert row.uid is None and row.inode is None


def test_big_endian_hosts_print_network_order() -> None:
    assert linux.decode_address("7F000001", 4, "big") == "127.0.0.1"
    assert linux.decode_address("00000000000000000000000000000001", 6, "big") == "::1"
    assert linux.decode_address("0000000000000000FFFF00000100007F", 6, "little") == "127.0.0.1"


@pytest.mark.parametrize(
    ("name", "capeff", "capamb", "bind_cap"),
    [
        ("status_root.txt", 0x000001FFFEFFFFFF, 0, True),
        ("status_nobody.txt", 0, 0, False),
        ("status_ambient.txt", 0x400, 0x400, True),
        ("status_userns_root.txt", 0x000001FFFFFFFFFF, 0, True),
        ("status_root_without_bind_cap.txt", 0x000001FFFEFFFBFF, 0, False),
    ],
)
def test_status_capabilities(load: Load, name: str, capeff: int, capamb: int, bind_cap: bool) -> None:
    io = FixtureIO(files={linux.STATUS_PATH: load(f"linux/{name}")}, uid=0)
    priv = linux.collect_privilege(io)
    assert (priv.capeff, priv.capamb, priv.has_bind_capability) == (capeff, capamb, bind_cap)


def test_threshold_from_sysctl_and_missing_file_means_1024(load: Load) -> None:
    assert linux.parse_threshold(load("linux/ip_unprivileged_port_start_80.txt")) == (80, True)
    assert linux.parse_threshold(load("linux/ip_unprivileged_port_start_0.txt")) == (0, True)
    assert linux.parse_threshold(None) == (1024, False)
    assert linux.parse_threshold("garbage") == (1024, False)


def test_uid_map(load: Load) -> None:
    assert linux.parse_uid_map_initial(load("linux/uid_map_initial.txt"))
    assert not linux.parse_uid_map_initial(load("linux/uid_map_userns_nobody.txt"))


def test_capability_counts_only_in_the_owning_user_namespace(load: Load) -> None:
    files = {
        linux.STATUS_PATH: load("linux/status_userns_root.txt"),
        linux.UID_MAP_PATH: load("linux/uid_map_userns_nobody.txt"),
    }
    outside = linux.collect_privilege(FixtureIO(files=files, uid=0, owner="outside"))
    own = linux.collect_privilege(FixtureIO(files=files, uid=0, owner="own"))
    unknown = linux.collect_privilege(FixtureIO(files=files, uid=0, owner="unknown"))
    assert (outside.capability_counts, own.capability_counts, unknown.capability_counts) == (False, True, False)


def _proc_host(load: Load, *, readable: bool) -> FixtureIO:
    """A host where pid 4812 (python3.11) holds socket inode 49563 and pid 1 is unrelated."""
    dirs = {"/proc": ["1", "4812", "self", "net"], "/proc/1/fd": ["0"]}
    if readable:
        dirs["/proc/4812/fd"] = ["0", "3"]
    return FixtureIO(
        files={
            "/proc/net/tcp": load("linux/proc_net_tcp_listen.txt"),
            "/proc/net/tcp6": load("linux/proc_net_tcp6_listen.txt"),
            "/proc/4812/comm": "python3.11\n",
        },
        dirs=dirs,
        links={"/proc/1/fd/0": "/dev/null", "/proc/4812/fd/0": "/dev/null", "/proc/4812/fd/3": "socket:[49563]"},
        users={65534: "nobody"},
    )


def test_collect_port_names_the_holder_when_visible(load: Load) -> None:
    pf = linux.collect_port(_proc_host(load, readable=True), 18080)
    assert pf.owners_visible
    assert pf.listeners == (
        Listener(
            4, "127.0.0.1", 18080, "LISTEN", uid=65534, inode=49563, pids=(4812,), names=("python3.11",), user="nobody"
        ),
    )


def test_collect_port_reports_only_the_user_when_hidden(load: Load) -> None:
    pf = linux.collect_port(_proc_host(load, readable=False), 18080)
    assert not pf.owners_visible
    (row,) = pf.listeners
    assert (row.pids, row.uid, row.user) == ((), 65534, "nobody")


def test_no_walk_of_proc_when_nothing_listens(load: Load) -> None:
    io = _proc_host(load, readable=True)
    io.dirs = {}  # any directory listing would now come back empty-handed
    pf = linux.collect_port(io, 9)
    assert pf.listeners == () and pf.owners_visible


def test_wsl_and_container_detection(load: Load) -> None:
    wsl = linux.detect_wsl(
        FixtureIO(
            files={linux.OSRELEASE_PATH: load("linux/osrelease_wsl2.txt")},
            environ={"WSL_INTEROP": "/run/WSL/1_interop"},
        )
    )
    assert wsl is not None and (wsl.version, wsl.interop) == (2, True)
    assert linux.detect_wsl(FixtureIO(files={linux.OSRELEASE_PATH: "6.1.0-18-amd64\n"})) is None
    assert linux.detect_container(FixtureIO(files={"/.dockerenv": ""})) == "docker"
    assert linux.detect_container(FixtureIO(files={"/proc/1/cgroup": "0::/kubepods/burstable/pod1\n"})) == "kubernetes"
    assert linux.detect_container(FixtureIO()) is None


def test_lsm_detection() -> None:
    assert linux.collect_lsm(FixtureIO(files={"/sys/fs/selinux/enforce": "1"})).active
    assert linux.collect_lsm(FixtureIO(files={"/proc/self/attr/current": "nginx (enforce)\n"})).active
    assert not linux.collect_lsm(FixtureIO(files={"/proc/self/attr/current": "unconfined\n"})).active
    assert not linux.collect_lsm(FixtureIO()).active


def _diag_message(family: int, state: int, address: str, port: int, uid: int, inode: int) -> bytes:
    """One netlink message carrying an inet_diag_msg, laid out as linux/inet_diag.h documents it."""
    import ipaddress
    import struct

    raw = ipaddress.ip_address(address).packed.ljust(16, b"\0")
    body = struct.pack("=BBBB", 2 if family == 4 else 10, state, 0, 0)
    body += struct.pack(">HH", port, 0) + raw + bytes(16) + struct.pack("=IQ", 0, 0)
    body += struct.pack("=IIIII", 0, 0, 0, uid, inode)
    assert len(body) == 72
    return struct.pack("=IHHII", 16 + len(body), 20, 2, 1, 4242) + body


def test_sock_diag_replies_decode_listeners() -> None:
    import struct

    done = struct.pack("=IHHII", 20, 3, 2, 1, 4242) + bytes(4)
    v4 = _diag_message(4, 0x0A, "127.0.0.1", 18080, 65534, 49563) + _diag_message(4, 0x0A, "0.0.0.0", 22, 0, 7)
    v6 = _diag_message(6, 0x0A, "::", 18082, 65534, 49565) + _diag_message(6, 0x0A, "::ffff:127.0.0.1", 18090, 0, 9)
    rows4 = linux.parse_sock_diag(v4 + done, 4, 18080)
    assert [(r.address, r.port, r.uid, r.inode) for r in rows4] == [("127.0.0.1", 18080, 65534, 49563)]
    rows6 = linux.parse_sock_diag(v6 + done, 6)
    assert [(r.family, r.address, r.port) for r in rows6] == [(6, "::", 18082), (4, "127.0.0.1", 18090)]


def test_cheap_path_prefers_netlink_and_falls_back_to_proc(load: Load) -> None:
    reply = _diag_message(4, 0x0A, "127.0.0.1", 18080, 65534, 49563)
    host = _proc_host(load, readable=True)
    host.diag = {4: reply, 6: b""}
    pf = linux.collect_port(host, 18080, listeners_only=True)
    assert pf.source == "sock_diag netlink" and pf.listeners[0].pids == (4812,)
    host.diag = None  # netlink unavailable (e.g. seccomp): the /proc tables answer instead
    assert linux.collect_port(host, 18080, listeners_only=True).source.startswith("/proc/net/tcp")
