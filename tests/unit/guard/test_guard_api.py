"""predict(), explain() and `kestrelpy check` end to end over recorded hosts (FixtureIO)."""

from __future__ import annotations

import io as _io
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from kestrelpy.endpoints import TcpEndpoint
from kestrelpy.guard import FixtureIO, RecordingIO, SystemIO, darwin, explain, linux, predict, windows
from kestrelpy.guard.command import build_parser, endpoints_from, run_check
from kestrelpy.guard.runner import CommandResult, command_key

Load = Callable[[str], str]


def nobody_host(load: Load, **extra: object) -> FixtureIO:
    """uid 65534 on a host where 127.0.0.1:18080 and four other ports are held by pid 4812 (python3.11)."""
    return FixtureIO(
        platform="linux",
        uid=65534,
        users={65534: "nobody"},
        files={
            linux.THRESHOLD_PATH: load("linux/ip_unprivileged_port_start_1024.txt"),
            linux.STATUS_PATH: load("linux/status_nobody.txt"),
            linux.UID_MAP_PATH: load("linux/uid_map_initial.txt"),
            "/proc/net/tcp": load("linux/proc_net_tcp_listen.txt"),
            "/proc/net/tcp6": load("linux/proc_net_tcp6_listen.txt"),
            "/proc/4812/comm": "python3.11\n",
        },
        dirs={"/proc": ["4812"], "/proc/4812/fd": ["3"]},
        links={"/proc/4812/fd/3": "socket:[49563]"},
        **extra,  # type: ignore[arg-type]
    )


def test_predict_linux_privileged_and_in_use(load: Load) -> None:
    findings = predict([TcpEndpoint("127.0.0.1", 80), TcpEndpoint("127.0.0.1", 18080)], probe=nobody_host(load))
    assert [f.code for f in findings] == ["KP-LINUX-PRIVILEGED-PORT", "KP-PORT-IN-USE"]
    assert "python3.11" in findings[1].summary and "4812" in findings[1].summary


def test_predict_runs_no_command_on_linux(load: Load) -> None:
    host = nobody_host(load)
    predict([TcpEndpoint("127.0.0.1", 8000), TcpEndpoint("127.0.0.1", 18080)], probe=host)
    assert host.ran == []


def test_explain_linux_real_error_shapes(load: Load) -> None:
    host = nobody_host(load)
    denied = PermissionError(13, "error while attempting to bind on address ('127.0.0.1', 80): permission denied")
    assert explain(denied, TcpEndpoint("127.0.0.1", 80), probe=host).code == "KP-LINUX-PRIVILEGED-PORT"
    in_use = OSError(
        98, "error while attempting to bind on address ('127.0.0.1', 18080): [errno 98] address already in use"
    )
    assert explain(in_use, TcpEndpoint("127.0.0.1", 18080), probe=host).code == "KP-PORT-IN-USE"
    none = OSError(None, "could not bind on any address out of [('192.0.2.1', 18081)]")
    assert explain(none, TcpEndpoint("192.0.2.1", 18081), probe=host).code == "KP-ADDR-NOT-AVAILABLE"


def test_explain_time_wait_from_recorded_row(load: Load) -> None:
    host = nobody_host(load)
    host.files = {**(host.files or {}), "/proc/net/tcp": load("linux/proc_net_tcp_timewait.txt")}
    finding = explain(OSError(98, "Address already in use"), TcpEndpoint("127.0.0.1", 18097), probe=host)
    assert finding.code == "KP-PORT-TIME-WAIT"
    assert any("60 s" in fact for fact in finding.facts)


class BrokenIO(FixtureIO):
    def read_text(self, path: str) -> str | None:
        raise RuntimeError("probe exploded")


def test_predict_and_explain_never_raise() -> None:
    broken = BrokenIO()
    assert predict([TcpEndpoint("127.0.0.1", 80)], probe=broken) == []
    finding = explain(OSError(98, "Address already in use"), TcpEndpoint("127.0.0.1", 80), probe=broken)
    assert finding.code == "KP-PORT-IN-USE"


def windows_host(load: Load, netstat: str, *, requestq: str | None = None) -> FixtureIO:
    commands = {
        command_key(windows.NETSTAT): load(f"windows/{netstat}"),
        command_key(windows.NETSTAT6): "",
        command_key(windows.EXCLUDED[4]): load("windows/excludedportrange_wsl_many.txt"),
        command_key(windows.EXCLUDED[6]): "",
        command_key(windows.DYNAMIC): load("windows/dynamicport_widened.txt"),
        command_key(windows.IPLISTEN): load("windows/iplisten.txt"),
        command_key(windows.URLACL): load("windows/urlacl.txt"),
        command_key(windows.tasklist_argv(1552)): '"WebApi2.exe","1552","N/A"\n',
    }
    if requestq is not None:
        commands[command_key(windows.SERVICESTATE)] = load(f"windows/{requestq}")
    return FixtureIO(platform="win32", uid=None, commands=commands)


def test_windows_http_sys_end_to_end(load: Load) -> None:
    host = windows_host(load, "netstat_abo_pid4.txt", requestq="servicestate_requestq_sf.txt")
    exc = OSError(10048, "Only one usage of each socket address")
    exc.winerror = 10048  # type: ignore[attr-defined]
    finding = explain(exc, TcpEndpoint("0.0.0.0", 80), probe=host)
    assert finding.code == "KP-WIN-HTTP-SYS"
    assert "WebApi2.exe (pid 1552)" in finding.summary and "HTTP://+:80/" in finding.summary
    assert any("System (pid 4)" in fact for fact in finding.facts)
    assert command_key(windows.SERVICESTATE) in host.ran


def test_windows_netsh_http_runs_only_after_pid4(load: Load) -> None:
    host = windows_host(load, "netstat_ano_8082.txt", requestq="servicestate_requestq_sf.txt")
    exc = OSError(10048, "in use")
    explain(exc, TcpEndpoint("0.0.0.0", 9000), probe=host)  # nothing on 9000
    assert not any(cmd.startswith("netsh http") for cmd in host.ran)
    assert not any("excludedportrange" in cmd for cmd in host.ran)  # 10048 is not 10013


def test_windows_10013_reads_excluded_ranges(load: Load) -> None:
    host = windows_host(load, "netstat_ano_8082.txt")
    exc = PermissionError(13, "An attempt was made to access a socket in a way forbidden")
    exc.winerror = 10013  # type: ignore[attr-defined]
    finding = explain(exc, TcpEndpoint("127.0.0.1", 8000), probe=host)
    assert finding.code == "KP-WIN-EXCLUDED-RANGE"
    assert any("--port 7948" in r for r in finding.remedies)


def test_windows_predict_reads_only_the_api_table(load: Load) -> None:
    host = windows_host(load, "netstat_abo_pid4.txt")
    predict([TcpEndpoint("127.0.0.1", 8000)], probe=host)
    assert host.ran == []  # no IP Helper table in the fixture, and no commands on the cheap path


def test_macos_check_through_lsof(load: Load) -> None:
    lsof = "p433\ncControlCenter\nLdev\nn*:5000\n"
    host = FixtureIO(
        platform="darwin", uid=501, users={501: "dev"}, commands={command_key(darwin.lsof_argv(5000)): lsof}
    )
    out = _io.StringIO()
    assert run_check(["--port", "5000"], out, probe=host) == 1
    assert "KP-MAC-AIRPLAY" in out.getvalue()
    out = _io.StringIO()
    assert run_check(["--host", "127.0.0.1", "--port", "443"], out, probe=host) == 1
    assert "KP-MAC-PRIVILEGED-ADDRESS" in out.getvalue()


# --- kestrelpy check ---------------------------------------------------------------------------------


def test_check_exit_codes_and_text(load: Load) -> None:
    out = _io.StringIO()
    assert run_check(["--port", "8000"], out, probe=nobody_host(load)) == 0
    assert "No problems found" in out.getvalue()
    out = _io.StringIO()
    assert run_check(["--port", "80"], out, probe=nobody_host(load)) == 1
    assert "KP-LINUX-PRIVILEGED-PORT" in out.getvalue()


def test_check_json_has_facts_and_findings(load: Load) -> None:
    out = _io.StringIO()
    status = run_check(["--bind", "127.0.0.1:80", "--bind", "[::1]:18081", "--json"], out, probe=nobody_host(load))
    doc = json.loads(out.getvalue())
    assert status == 1 and doc["ok"] is False
    assert [f["code"] for f in doc["findings"]] == ["KP-LINUX-PRIVILEGED-PORT", "KP-PORT-IN-USE"]
    assert doc["facts"]["linux"]["threshold"] == 1024
    assert doc["endpoints"] == ["127.0.0.1:80", "[::1]:18081"]


def test_dump_facts_replays_to_the_same_findings(load: Load, tmp_path: Path) -> None:
    out = _io.StringIO()
    status = run_check(
        ["--bind", "127.0.0.1:18080", "--port", "80", "--dump-facts", str(tmp_path)], out, probe=nobody_host(load)
    )
    assert status == 1
    assert (tmp_path / "manifest.json").is_file()
    replay = FixtureIO.from_dir(tmp_path)
    again = _io.StringIO()
    assert run_check(["--bind", "127.0.0.1:18080", "--port", "80"], again, probe=replay) == 1
    first = out.getvalue().split("Wrote")[0]
    assert again.getvalue() == first


def test_address_not_on_this_host_before_binding(load: Load) -> None:
    host = nobody_host(load, local={"192.0.2.1": False, "10.0.0.5": True})
    assert [f.code for f in predict([TcpEndpoint("192.0.2.1", 8000)], probe=host)] == ["KP-ADDR-NOT-AVAILABLE"]
    assert predict([TcpEndpoint("10.0.0.5", 8000)], probe=host) == []
    out = _io.StringIO()
    assert run_check(["--host", "192.0.2.1", "--port", "8000"], out, probe=host) == 1
    assert "[KP-ADDR-NOT-AVAILABLE]" in out.getvalue() and "No problems found" not in out.getvalue()
    out = _io.StringIO()
    assert run_check(["--host", "10.0.0.5", "--port", "8000"], out, probe=host) == 0


def test_dump_facts_keeps_the_trial_binds(load: Load, tmp_path: Path) -> None:
    host = nobody_host(load, local={"192.0.2.1": False, "198.51.100.7": None})
    argv = ["--bind", "192.0.2.1:8000", "--bind", "198.51.100.7:8001", "--json"]
    out = _io.StringIO()
    assert run_check([*argv, "--dump-facts", str(tmp_path)], out, probe=host) == 1
    doc = json.loads(out.getvalue())
    assert doc["facts"]["local_addresses"] == [["192.0.2.1", False], ["198.51.100.7", None]]
    manifest = json.loads((tmp_path / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["local_addresses"] == {"192.0.2.1": False, "198.51.100.7": None}
    replay = FixtureIO.from_dir(tmp_path)
    assert replay.address_is_local("192.0.2.1") is False and replay.address_is_local("198.51.100.7") is None
    again = _io.StringIO()
    assert run_check(argv, again, probe=replay) == 1
    assert [f["code"] for f in json.loads(again.getvalue())["findings"]] == ["KP-ADDR-NOT-AVAILABLE"]


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "", "*", "127.0.0.1", "::1", "localhost", "LOCALHOST"])
def test_system_io_knows_wildcards_and_loopback_without_asking(host: str) -> None:
    assert SystemIO().address_is_local(host) is True


def test_system_io_cannot_tell_for_a_zone_naming_no_interface() -> None:
    assert SystemIO().address_is_local("fe80::1%no-such-interface") is None  # no name service is asked


def test_recording_io_keeps_commands(load: Load, tmp_path: Path) -> None:
    inner = windows_host(load, "netstat_abo_pid4.txt")
    rec = RecordingIO(inner)
    assert rec.run(windows.NETSTAT) == CommandResult(0, load("windows/netstat_abo_pid4.txt"))
    written = rec.dump(tmp_path)
    replay = FixtureIO.from_dir(tmp_path)
    assert replay.run(windows.NETSTAT) == CommandResult(0, load("windows/netstat_abo_pid4.txt"))
    assert "manifest.json" in written


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        ([], ["127.0.0.1:8000"]),
        (["--bind", "127.0.0.1:80"], ["127.0.0.1:80"]),
        (["--bind", "[::1]:8000", "--bind", ":8080"], ["[::1]:8000", "0.0.0.0:8080"]),
        (["--port", "9000", "--bind", "unix:/run/app.sock"], ["127.0.0.1:9000", "unix:/run/app.sock"]),
        (["--urls", "http://localhost:5000;http://+:80"], ["localhost:5000", "*:80"]),
        (["--uds", "/tmp/k.sock"], ["unix:/tmp/k.sock"]),
    ],
)
def test_check_reads_endpoints_as_the_server_does(argv: list[str], expected: list[str]) -> None:
    args = build_parser().parse_args(argv)
    assert [e.display() for e in endpoints_from(args)] == expected


@pytest.mark.parametrize(
    "argv", [["--bind", "::1:80"], ["--bind", "127.0.0.1"], ["--bind", "host:http"], ["--urls", "ftp://x:1"]]
)
def test_check_refuses_what_the_server_refuses(argv: list[str]) -> None:
    assert run_check(argv, _io.StringIO(), probe=FixtureIO()) == 2


def test_check_bad_arguments_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_check(["--bind", "nonsense"], _io.StringIO(), probe=FixtureIO()) == 2
    assert "--bind" in capsys.readouterr().err
