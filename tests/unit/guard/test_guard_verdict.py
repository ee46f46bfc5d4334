"""The verdict rules against synthetic facts. Assertions are on finding codes, never on prose."""

from __future__ import annotations

import dataclasses

import pytest

from kestrelpy.endpoints import FdEndpoint, TcpEndpoint, UnixEndpoint
from kestrelpy.guard.facts import (
    DynamicRange,
    FdInfo,
    HostFacts,
    HttpSysProcess,
    HttpSysQueue,
    HttpSysState,
    HttpSysUrl,
    LinuxPrivilege,
    Listener,
    LsmFacts,
    PortFacts,
    PortRange,
    WindowsFacts,
    WslFacts,
)
from kestrelpy.guard.verdict import (
    BindFailure,
    FailureKind,
    explain_failure,
    overlap,
    predict_findings,
)

NOBODY = LinuxPrivilege(
    threshold=1024,
    threshold_source="sysctl",
    euid=65534,
    user="nobody",
    capeff=0,
    capamb=0,
    no_new_privs=False,
    netns_owner="own",
    uid_map_initial=True,
    authbind=False,
)
ROOT = dataclasses.replace(NOBODY, euid=0, user="root", capeff=0x1FFFEFFFFFF)
USERNS_ROOT = dataclasses.replace(ROOT, capeff=0x1FFFFFFFFFF, netns_owner="outside", uid_map_initial=False)
AMBIENT = dataclasses.replace(NOBODY, capeff=0x400, capamb=0x400)


def linux_host(priv: LinuxPrivilege = NOBODY, *rows: Listener, **kw: object) -> HostFacts:
    ports = {r.port for r in rows}
    pfs = tuple(PortFacts(p, tuple(r for r in rows if r.port == p), "/proc/net/tcp") for p in sorted(ports))
    return HostFacts(platform="linux", euid=priv.euid, user=priv.user, linux=priv, ports=pfs, **kw)  # type: ignore[arg-type]


def codes(findings: list) -> list[str]:  # type: ignore[type-arg]
    return [f.code for f in findings]


def fail(kind: FailureKind, err: int | None = None, winerror: int | None = None) -> BindFailure:
    return BindFailure(kind, err, winerror, f"[Errno {err}] synthetic")


def listen(
    address: str,
    port: int,
    *,
    uid: int | None = 1000,
    pids: tuple[int, ...] = (42,),
    names: tuple[str, ...] = ("python3",),
) -> Listener:
    return Listener(
        6 if ":" in address else 4,
        address,
        port,
        "LISTEN",
        uid=uid,
        pids=pids,
        names=names,
        user="alice" if uid == 1000 else None,
    )


# --- Linux privilege -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("priv", "port", "expected"),
    [
        (NOBODY, 80, ["KP-LINUX-PRIVILEGED-PORT"]),
        (NOBODY, 1023, ["KP-LINUX-PRIVILEGED-PORT"]),
        (NOBODY, 1024, []),
        (NOBODY, 0, []),
        (ROOT, 80, []),
        (AMBIENT, 80, []),
        (dataclasses.replace(ROOT, capeff=0x1FFFEFFFBFF), 80, ["KP-LINUX-PRIVILEGED-PORT"]),
        (USERNS_ROOT, 80, ["KP-LINUX-USERNS-NOT-OWNER"]),
        (dataclasses.replace(USERNS_ROOT, netns_owner="unknown"), 80, ["KP-LINUX-USERNS-NOT-OWNER"]),
        (dataclasses.replace(NOBODY, threshold=80), 79, ["KP-LINUX-PRIVILEGED-PORT"]),
        (dataclasses.replace(NOBODY, threshold=80), 80, []),
        (dataclasses.replace(NOBODY, threshold=0), 1, []),
        (dataclasses.replace(NOBODY, authbind=True), 80, []),  # authbind decides; nothing to predict
    ],
)
def test_privileged_port_prediction(priv: LinuxPrivilege, port: int, expected: list[str]) -> None:
    for host in ("127.0.0.1", "::1", "0.0.0.0"):
        assert codes(predict_findings([TcpEndpoint(host, port)], linux_host(priv))) == expected


def test_privileged_prediction_is_an_error_and_names_a_high_port() -> None:
    (finding,) = predict_findings([TcpEndpoint("127.0.0.1", 443)], linux_host(NOBODY))
    assert finding.severity == "error"
    assert any("--port 8443" in r for r in finding.remedies)
    assert any("ip_unprivileged_port_start=443" in r for r in finding.remedies)  # the lowest value covering it


def test_container_hint_when_the_container_lowered_the_floor() -> None:
    facts = linux_host(dataclasses.replace(NOBODY, threshold=0), container="docker")
    (finding,) = predict_findings([TcpEndpoint("0.0.0.0", 80)], facts)
    assert (finding.code, finding.severity) == ("KP-CONTAINER-PUBLISH-HINT", "info")


@pytest.mark.parametrize(
    ("priv", "port", "lsm", "expected"),
    [
        (NOBODY, 80, None, "KP-LINUX-PRIVILEGED-PORT"),
        (USERNS_ROOT, 80, None, "KP-LINUX-USERNS-NOT-OWNER"),
        (NOBODY, 8080, LsmFacts(True, "system_u:system_r:httpd_t:s0"), "KP-LINUX-LSM-DENIED"),
        (ROOT, 80, LsmFacts(None, "kestrelpy (enforce)"), "KP-LINUX-LSM-DENIED"),
        (NOBODY, 8080, LsmFacts(None, "unconfined"), "KP-BIND-DENIED"),
    ],
)
def test_explain_eacces_on_linux(priv: LinuxPrivilege, port: int, lsm: LsmFacts | None, expected: str) -> None:
    facts = dataclasses.replace(linux_host(priv), lsm=lsm)
    finding = explain_failure(fail(FailureKind.DENIED, 13), TcpEndpoint("127.0.0.1", port), facts)
    assert (finding.code, finding.severity) == (expected, "error")


def test_explain_eperm_with_authbind() -> None:
    facts = linux_host(dataclasses.replace(NOBODY, authbind=True))
    ep = TcpEndpoint("127.0.0.1", 80)
    assert explain_failure(fail(FailureKind.NOT_PERMITTED, 1), ep, facts).code == "KP-LINUX-AUTHBIND-DENIED"
    assert explain_failure(fail(FailureKind.NOT_PERMITTED, 1), ep, linux_host()).code == "KP-BIND-DENIED"


# --- Port holders -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ours", "theirs", "expected"),
    [
        ("127.0.0.1", "127.0.0.1", "same"),
        ("127.0.0.1", "0.0.0.0", "same"),
        ("0.0.0.0", "127.0.0.1", "same"),
        ("127.0.0.1", "127.0.0.2", None),
        ("::1", "::", "same"),
        ("127.0.0.1", "::", "dual_v6_holder"),
        ("127.0.0.1", "::1", None),
        ("::", "127.0.0.1", "dual_v4_holder"),
        ("::1", "0.0.0.0", None),
    ],
)
def test_overlap_rules(ours: str, theirs: str, expected: str | None) -> None:
    assert overlap(ours, theirs, "linux") == expected


def test_windows_ipv6_wildcard_is_v6_only() -> None:
    assert overlap("127.0.0.1", "::", "win32") is None


def test_prediction_names_a_visible_holder() -> None:
    facts = linux_host(NOBODY, listen("0.0.0.0", 8000))
    (finding,) = predict_findings([TcpEndpoint("127.0.0.1", 8000)], facts)
    assert (finding.code, finding.severity) == ("KP-PORT-IN-USE", "error")
    assert any("kill 42" in r for r in finding.remedies)


def test_prediction_with_hidden_holder_points_at_the_command_that_shows_it() -> None:
    row = listen("127.0.0.1", 8000, uid=0, pids=(), names=())
    facts = linux_host(NOBODY, row)
    (finding,) = predict_findings([TcpEndpoint("127.0.0.1", 8000)], facts)
    assert finding.code == "KP-PORT-IN-USE"
    assert any("ss -ltnp" in r for r in finding.remedies)


def test_no_conflict_on_a_different_address_or_port() -> None:
    facts = linux_host(NOBODY, listen("127.0.0.2", 8000), listen("0.0.0.0", 8001))
    assert predict_findings([TcpEndpoint("127.0.0.1", 8000)], facts) == []


def test_dual_stack_prediction_is_a_warning_and_explanation_an_error() -> None:
    facts = linux_host(NOBODY, listen("::", 8000))
    ep = TcpEndpoint("127.0.0.1", 8000)
    (predicted,) = predict_findings([ep], facts)
    assert (predicted.code, predicted.severity) == ("KP-PORT-IN-USE-DUAL-STACK", "warning")
    explained = explain_failure(fail(FailureKind.IN_USE, 98), ep, facts)
    assert (explained.code, explained.severity) == ("KP-PORT-IN-USE-DUAL-STACK", "error")


def test_our_dual_stack_wildcard_against_an_ipv4_holder() -> None:
    facts = linux_host(NOBODY, listen("127.0.0.1", 8000))
    (finding,) = predict_findings([TcpEndpoint("::", 8000)], facts)
    assert (finding.code, finding.severity) == ("KP-PORT-IN-USE-DUAL-STACK", "error")


def test_reuse_port_with_same_user_is_a_sharing_warning() -> None:
    facts = dataclasses.replace(linux_host(NOBODY, listen("127.0.0.1", 8000, uid=65534)), euid=65534)
    ep = TcpEndpoint("127.0.0.1", 8000)
    assert codes(predict_findings([ep], facts, reuse_port=True)) == ["KP-PORT-REUSEPORT-SHARED"]
    other_user = linux_host(NOBODY, listen("127.0.0.1", 8000, uid=1000))
    assert codes(predict_findings([ep], other_user, reuse_port=True)) == ["KP-PORT-IN-USE"]


def test_time_wait_without_listener() -> None:
    tw = Listener(4, "127.0.0.1", 8000, "TIME_WAIT", timewait_seconds=42.3)
    facts = linux_host(NOBODY, tw)
    ep = TcpEndpoint("127.0.0.1", 8000)
    (predicted,) = predict_findings([ep], facts)
    assert (predicted.code, predicted.severity) == ("KP-PORT-TIME-WAIT", "warning")
    explained = explain_failure(fail(FailureKind.IN_USE, 98), ep, facts)
    assert (explained.code, explained.severity) == ("KP-PORT-TIME-WAIT", "error")
    assert any("42" in fact for fact in explained.facts)


def test_in_use_with_nothing_visible() -> None:
    finding = explain_failure(fail(FailureKind.IN_USE, 98), TcpEndpoint("127.0.0.1", 8000), linux_host())
    assert finding.code == "KP-PORT-IN-USE"


def test_overlapping_endpoints_in_one_command() -> None:
    eps = [TcpEndpoint("0.0.0.0", 8000), TcpEndpoint("127.0.0.1", 8000), TcpEndpoint("127.0.0.1", 8001)]
    assert codes(predict_findings(eps, linux_host())) == ["KP-ENDPOINTS-OVERLAP"]
    assert predict_findings([TcpEndpoint("127.0.0.1", 0), TcpEndpoint("127.0.0.1", 0)], linux_host()) == []


# --- Addresses and names ------------------------------------------------------------------------------


def test_unresolvable_host_is_predicted_and_explained() -> None:
    facts = dataclasses.replace(linux_host(), resolved=(("nope.invalid", ()),))
    ep = TcpEndpoint("nope.invalid", 8000)
    assert codes(predict_findings([ep], facts)) == ["KP-HOST-UNRESOLVED"]
    assert explain_failure(fail(FailureKind.UNRESOLVED, -2), ep, facts).code == "KP-HOST-UNRESOLVED"


def test_names_resolve_before_matching_holders() -> None:
    facts = dataclasses.replace(
        linux_host(NOBODY, listen("::1", 8000)), resolved=(("localhost", ("127.0.0.1", "::1")),)
    )
    assert codes(predict_findings([TcpEndpoint("localhost", 8000)], facts)) == ["KP-PORT-IN-USE"]


@pytest.mark.parametrize("platform", ["linux", "darwin", "win32"])
def test_address_not_available(platform: str) -> None:
    facts = HostFacts(platform=platform)
    finding = explain_failure(fail(FailureKind.NOT_AVAILABLE), TcpEndpoint("192.0.2.1", 8000), facts)
    assert finding.code == "KP-ADDR-NOT-AVAILABLE"


NOT_HERE = (("192.0.2.1", False), ("2001:db8::1", False), ("fe80::1%eth0", False), ("10.0.0.5", True))


@pytest.mark.parametrize("platform", ["linux", "darwin", "win32", "freebsd14"])
@pytest.mark.parametrize("host", ["192.0.2.1", "2001:db8::1", "fe80::1%eth0"])
def test_address_this_host_lacks_is_predicted(platform: str, host: str) -> None:
    facts = HostFacts(platform=platform, local_addresses=NOT_HERE)
    (finding,) = predict_findings([TcpEndpoint(host, 8000)], facts)
    assert (finding.code, finding.severity) == ("KP-ADDR-NOT-AVAILABLE", "error")
    assert len(finding.facts) == 1  # the trial bind that showed it
    assert "{" not in finding.render()


def test_address_not_here_is_the_only_finding_for_its_endpoint() -> None:
    # The kernel refuses the address before it looks at the port: privilege and holders come later.
    facts = linux_host(NOBODY, listen("0.0.0.0", 80), local_addresses=NOT_HERE)
    assert codes(predict_findings([TcpEndpoint("192.0.2.1", 80)], facts)) == ["KP-ADDR-NOT-AVAILABLE"]
    assert codes(predict_findings([TcpEndpoint("10.0.0.5", 80)], facts)) == [
        "KP-LINUX-PRIVILEGED-PORT",
        "KP-PORT-IN-USE",
    ]


@pytest.mark.parametrize(
    ("host", "local"),
    [
        ("10.0.0.5", True),  # the host has it
        ("198.51.100.7", None),  # the trial bind could not tell
        ("203.0.113.9", "absent"),  # never asked
    ],
)
def test_address_here_or_unknown_gives_no_finding(host: str, local: object) -> None:
    recorded = () if local == "absent" else ((host, local),)
    facts = linux_host(local_addresses=recorded)
    assert predict_findings([TcpEndpoint(host, 8000)], facts) == []


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "0.0.0.0", "::", "*", "", "localhost", "127.0.0.2"])
def test_wildcards_and_loopback_are_local_whatever_was_recorded(host: str) -> None:
    facts = linux_host(local_addresses=((host, False),), resolved=(("localhost", ("127.0.0.1", "::1")),))
    assert predict_findings([TcpEndpoint(host, 8000)], facts) == []


def test_loopback_beyond_127_0_0_1_is_asked_about_on_macos() -> None:
    # macOS configures 127.0.0.1 alone on lo0; 127.0.0.2 binds only after an alias is added.
    recorded = (("127.0.0.2", False),)
    mac = HostFacts(platform="darwin", euid=501, local_addresses=recorded)
    assert codes(predict_findings([TcpEndpoint("127.0.0.2", 8000)], mac)) == ["KP-ADDR-NOT-AVAILABLE"]
    for platform in ("linux", "win32"):  # both route all of 127.0.0.0/8 to loopback
        facts = HostFacts(platform=platform, local_addresses=recorded)
        assert predict_findings([TcpEndpoint("127.0.0.2", 8000)], facts) == []


def test_a_name_is_judged_by_the_address_the_bind_uses() -> None:
    # The server binds a name's first address only, so that one decides.
    first_missing = linux_host(
        resolved=(("svc.example", ("192.0.2.1", "10.0.0.5")),), local_addresses=(("192.0.2.1", False),)
    )
    (finding,) = predict_findings([TcpEndpoint("svc.example", 8000)], first_missing)
    assert finding.code == "KP-ADDR-NOT-AVAILABLE"
    assert len(finding.facts) == 2  # what the name resolved to, and the trial bind
    later_missing = linux_host(
        resolved=(("svc.example", ("10.0.0.5", "192.0.2.1")),), local_addresses=(("192.0.2.1", False),)
    )
    assert predict_findings([TcpEndpoint("svc.example", 8000)], later_missing) == []


def test_explaining_address_not_available_adds_the_trial_bind_when_known() -> None:
    ep = TcpEndpoint("192.0.2.1", 8000)
    bare = explain_failure(fail(FailureKind.NOT_AVAILABLE, 99), ep, linux_host())
    probed = explain_failure(fail(FailureKind.NOT_AVAILABLE, 99), ep, linux_host(local_addresses=NOT_HERE))
    assert bare.code == probed.code == "KP-ADDR-NOT-AVAILABLE"
    assert len(probed.facts) == len(bare.facts) + 1
    v6 = explain_failure(fail(FailureKind.NOT_AVAILABLE, 99), TcpEndpoint("2001:db8::1", 8000), linux_host())
    assert len(v6.remedies) == len(bare.remedies) + 1  # the IPv6-only remedy
    for finding in (bare, probed, v6):
        assert "{" not in finding.render()


def test_unknown_errno_still_gives_a_finding() -> None:
    finding = explain_failure(fail(FailureKind.OTHER, 24), TcpEndpoint("127.0.0.1", 8000), linux_host())
    assert finding.code == "KP-BIND-FAILED" and "[Errno 24]" in finding.render()


# --- macOS -------------------------------------------------------------------------------------------


def mac_host(euid: int = 501, *rows: Listener) -> HostFacts:
    pfs = tuple(PortFacts(r.port, (r,), "lsof") for r in rows)
    return HostFacts(platform="darwin", euid=euid, user="dev", ports=pfs)


@pytest.mark.parametrize(
    ("host", "port", "euid", "expected"),
    [
        ("127.0.0.1", 80, 501, ["KP-MAC-PRIVILEGED-ADDRESS"]),
        ("::1", 80, 501, ["KP-MAC-PRIVILEGED-ADDRESS"]),
        ("0.0.0.0", 80, 501, []),
        ("::", 80, 501, []),
        ("127.0.0.1", 80, 0, []),
        ("127.0.0.1", 1024, 501, []),
    ],
)
def test_macos_wildcard_only_rule(host: str, port: int, euid: int, expected: list[str]) -> None:
    assert codes(predict_findings([TcpEndpoint(host, port)], mac_host(euid))) == expected


def test_macos_airplay() -> None:
    row = Listener(4, "0.0.0.0", 5000, "LISTEN", pids=(433,), names=("ControlCe",), user="dev")
    ep = TcpEndpoint("127.0.0.1", 5000)
    assert codes(predict_findings([ep], mac_host(501, row))) == ["KP-MAC-AIRPLAY"]
    assert explain_failure(fail(FailureKind.IN_USE, 48), ep, mac_host(501, row)).code == "KP-MAC-AIRPLAY"
    # invisible (another user ran it) but the port is one AirPlay uses
    assert explain_failure(fail(FailureKind.IN_USE, 48), ep, mac_host(501)).code == "KP-MAC-AIRPLAY"
    assert (
        explain_failure(fail(FailureKind.IN_USE, 48), TcpEndpoint("127.0.0.1", 5001), mac_host(501)).code
        == "KP-PORT-IN-USE"
    )


def test_macos_eacces_explained() -> None:
    finding = explain_failure(fail(FailureKind.DENIED, 13), TcpEndpoint("127.0.0.1", 443), mac_host())
    assert finding.code == "KP-MAC-PRIVILEGED-ADDRESS"


# --- Windows -----------------------------------------------------------------------------------------

SF_QUEUES = HttpSysState(
    queues=(
        HttpSysQueue((HttpSysProcess(944),), (HttpSysUrl("HTTP://+:5985/WSMAN/", "http", "+", 5985, "/WSMAN/"),)),
        HttpSysQueue((HttpSysProcess(1552),), (HttpSysUrl("HTTP://+:80/", "http", "+", 80, "/"),)),
    ),
    linked=True,
    urls=(),
)


def win_host(*rows: Listener, windows: WindowsFacts | None = None) -> HostFacts:
    pfs = tuple(PortFacts(r.port, (r,), "GetExtendedTcpTable") for r in rows)
    return HostFacts(platform="win32", ports=pfs, windows=windows, executable=r"C:\Python313\python.exe")


def test_windows_has_no_privileged_ports() -> None:
    assert predict_findings([TcpEndpoint("127.0.0.1", 80)], win_host()) == []


def test_windows_pid4_is_http_sys_and_names_the_registrant() -> None:
    row = Listener(4, "0.0.0.0", 80, "LISTEN", pids=(4,))
    windows = WindowsFacts(httpsys=SF_QUEUES, processes=(HttpSysProcess(1552, "WebApi2.exe"),))
    facts = win_host(row, windows=windows)
    ep = TcpEndpoint("127.0.0.1", 80)
    (predicted,) = predict_findings([ep], facts)
    assert predicted.code == "KP-WIN-HTTP-SYS"
    assert "WebApi2.exe" in predicted.summary and "1552" in predicted.summary
    for failure in (fail(FailureKind.IN_USE, 10048, 10048), fail(FailureKind.DENIED, 13, 10013)):
        assert explain_failure(failure, ep, facts).code == "KP-WIN-HTTP-SYS"


def test_windows_10013_with_another_holder_is_exclusive() -> None:
    row = Listener(4, "0.0.0.0", 5000, "LISTEN", pids=(1200,))
    facts = win_host(row, windows=WindowsFacts(processes=(HttpSysProcess(1200, "svchost.exe"),)))
    ep = TcpEndpoint("127.0.0.1", 5000)
    assert explain_failure(fail(FailureKind.DENIED, 13, 10013), ep, facts).code == "KP-WIN-EXCLUSIVE-HOLDER"
    assert explain_failure(fail(FailureKind.IN_USE, 10048, 10048), ep, facts).code == "KP-PORT-IN-USE"


def test_windows_10013_in_excluded_range_suggests_the_nearest_free_port() -> None:
    windows = WindowsFacts(excluded=(PortRange(7949, 8048), PortRange(8049, 8148)), dynamic=DynamicRange(1024, 64511))
    ep = TcpEndpoint("127.0.0.1", 8000)
    finding = explain_failure(fail(FailureKind.DENIED, 13, 10013), ep, win_host(windows=windows))
    assert finding.code == "KP-WIN-EXCLUDED-RANGE"
    assert any("--port 7948" in r for r in finding.remedies)
    assert any("start=49152" in r for r in finding.remedies)  # the widened dynamic range
    assert codes(predict_findings([ep], win_host(windows=windows))) == ["KP-WIN-EXCLUDED-RANGE"]


def test_windows_10013_with_nothing_found() -> None:
    finding = explain_failure(
        fail(FailureKind.DENIED, 13, 10013), TcpEndpoint("127.0.0.1", 8000), win_host(windows=WindowsFacts(excluded=()))
    )
    assert finding.code == "KP-WIN-ACCESS-DENIED"


def test_windows_firewall_notice_only_off_loopback() -> None:
    assert codes(predict_findings([TcpEndpoint("0.0.0.0", 8000)], win_host())) == ["KP-WIN-FIREWALL-PROMPT"]
    assert predict_findings([TcpEndpoint("127.0.0.1", 8000)], win_host()) == []


def test_wsl_warns_when_windows_holds_the_port() -> None:
    windows_side = (PortFacts(8000, (Listener(4, "127.0.0.1", 8000, "LISTEN", pids=(9120,)),), "netstat.exe"),)
    facts = dataclasses.replace(linux_host(), wsl=WslFacts(2, True), windows_side_ports=windows_side)
    (finding,) = predict_findings([TcpEndpoint("127.0.0.1", 8000)], facts)
    assert (finding.code, finding.severity) == ("KP-WSL-WINDOWS-HOLDS-PORT", "warning")


# --- Other endpoint kinds ---------------------------------------------------------------------------


def test_inherited_listening_socket_skips_the_privilege_probe() -> None:
    facts = dataclasses.replace(linux_host(NOBODY), fds=(FdInfo(3, True, True, 4, "127.0.0.1", 80),))
    assert predict_findings([FdEndpoint(3)], facts) == []


def test_inherited_descriptor_problems() -> None:
    facts = dataclasses.replace(linux_host(), fds=(FdInfo(3, False), FdInfo(4, True, False, 4, "127.0.0.1", 9)))
    assert codes(predict_findings([FdEndpoint(3), FdEndpoint(4)], facts)) == ["KP-FD-NOT-SOCKET", "KP-FD-NOT-LISTENING"]


def test_unix_socket_explanations() -> None:
    ep = UnixEndpoint("/run/app.sock")
    assert explain_failure(fail(FailureKind.IN_USE, 98), ep, linux_host()).code == "KP-UNIX-SOCKET-IN-USE"
    assert explain_failure(fail(FailureKind.DENIED, 13), ep, linux_host()).code == "KP-UNIX-SOCKET-DENIED"


def test_render_has_headline_facts_and_numbered_remedies() -> None:
    finding = explain_failure(fail(FailureKind.DENIED, 13), TcpEndpoint("127.0.0.1", 80), linux_host())
    text = finding.render()
    lines = text.splitlines()
    assert "127.0.0.1:80" in lines[0] and "KP-LINUX-PRIVILEGED-PORT" in lines[0]
    assert lines[1] == finding.summary
    numbered = [line for line in lines if line.lstrip()[:2] in {f"{i}." for i in range(1, 10)}]
    assert len(numbered) == len(finding.remedies) >= 5
    assert "{" not in text.replace("{name:", "")  # every template field was filled
