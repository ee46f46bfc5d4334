"""Every way to say where to listen, over real sockets: the socket factory directly, then the CLI."""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from kestrelpy.endpoints import FdEndpoint, TcpEndpoint, UnixEndpoint
from kestrelpy.errors import BindError
from kestrelpy.sockets import adopt_fd, bind_endpoints, close_sockets, listen_url
from tests.support.interop import free_port, http_get, kestrelpy, listening_urls

HAS_IPV6 = socket.has_ipv6
try:
    with socket.socket(socket.AF_INET6) as _probe:
        _probe.bind(("::1", 0))
except OSError:
    HAS_IPV6 = False
needs_ipv6 = pytest.mark.skipif(not HAS_IPV6, reason="this host has no IPv6 loopback")


def connects(family: int, address: tuple[str, int]) -> bool:
    with socket.socket(family, socket.SOCK_STREAM) as client:
        client.settimeout(5)
        try:
            client.connect(address)
        except OSError:
            return False
    return True


@needs_ipv6
def test_localhost_is_both_loopbacks_on_one_port() -> None:
    sockets = bind_endpoints([TcpEndpoint("localhost", 0)], 16)
    try:
        assert sorted(s.family for s in sockets) == [socket.AF_INET, socket.AF_INET6]
        ports = {s.getsockname()[1] for s in sockets}
        assert len(ports) == 1 and 0 not in ports
        port = ports.pop()
        assert connects(socket.AF_INET, ("127.0.0.1", port))
        assert connects(socket.AF_INET6, ("::1", port))
    finally:
        close_sockets(sockets)


@needs_ipv6
def test_localhost_fails_when_either_loopback_port_is_taken() -> None:
    port = free_port("::1")
    with socket.socket(socket.AF_INET6) as holder:
        holder.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        holder.bind(("::1", port))
        holder.listen()
        with pytest.raises(BindError) as caught:
            bind_endpoints([TcpEndpoint("127.0.0.1", 0), TcpEndpoint("localhost", port)], 16)
        assert str(port) in str(caught.value)
    # nothing stayed bound: the IPv4 half and the first endpoint were closed again
    assert connects(socket.AF_INET, ("127.0.0.1", port)) is False


@needs_ipv6
@pytest.mark.parametrize("host", ["*", "::"])
def test_any_address_is_dual_stack(host: str) -> None:
    [sock] = bind_endpoints([TcpEndpoint(host, 0)], 16)
    try:
        assert sock.family == socket.AF_INET6
        assert sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 0
        port = sock.getsockname()[1]
        assert connects(socket.AF_INET, ("127.0.0.1", port))
        assert connects(socket.AF_INET6, ("::1", port))
        assert listen_url(sock) == f"http://[::]:{port}"
    finally:
        close_sockets([sock])


def test_many_endpoints_at_once_and_all_or_nothing(tmp_path: Path) -> None:
    path = str(tmp_path / "a.sock")
    sockets = bind_endpoints([TcpEndpoint("127.0.0.1", 0), UnixEndpoint(path), TcpEndpoint("127.0.0.1", 0)], 16)
    try:
        assert len(sockets) == 3 and stat.S_ISSOCK(os.lstat(path).st_mode)
        taken = sockets[0].getsockname()[1]
    finally:
        close_sockets(sockets)
    assert not os.path.exists(path)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", taken))
        holder.listen()
        with pytest.raises(BindError):
            bind_endpoints([UnixEndpoint(path), TcpEndpoint("127.0.0.1", taken)], 16)
    assert not os.path.exists(path)  # the Unix socket bound first was closed and removed again


def test_unix_socket_mode_stale_replaced_and_removed(tmp_path: Path) -> None:
    path = str(tmp_path / "app.sock")
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(path)
    stale.close()  # the file stays behind, nobody listens: a crashed server's leftover
    [sock] = bind_endpoints([UnixEndpoint(path, 0o660)], 16)
    try:
        assert stat.S_IMODE(os.lstat(path).st_mode) == 0o660
        with socket.socket(socket.AF_UNIX) as client:
            client.connect(path)
    finally:
        close_sockets([sock])
    assert not os.path.exists(path)


def test_unix_socket_in_use_is_not_replaced(tmp_path: Path) -> None:
    path = str(tmp_path / "live.sock")
    with socket.socket(socket.AF_UNIX) as live:
        live.bind(path)
        live.listen()
        with pytest.raises(BindError):
            bind_endpoints([UnixEndpoint(path)], 16)
        with socket.socket(socket.AF_UNIX) as client:
            client.connect(path)  # the other server's socket is still there and still works


@pytest.mark.parametrize("kind", ["file", "directory"])
def test_a_non_socket_file_is_never_deleted(tmp_path: Path, kind: str) -> None:
    target = tmp_path / "app.sock"
    if kind == "file":
        target.write_text("precious")
    else:
        target.mkdir()
    with pytest.raises(BindError, match="will not delete"):
        bind_endpoints([UnixEndpoint(str(target))], 16)
    assert target.read_text() == "precious" if kind == "file" else target.is_dir()


def test_socket_file_replaced_by_a_newer_server_is_left_alone(tmp_path: Path) -> None:
    path = str(tmp_path / "app.sock")
    [ours] = bind_endpoints([UnixEndpoint(path)], 16)
    os.unlink(path)
    with socket.socket(socket.AF_UNIX) as newer:
        newer.bind(path)
        close_sockets([ours])
        assert stat.S_ISSOCK(os.lstat(path).st_mode)


def test_fd_adoption_checks_what_it_is_given() -> None:
    listening = socket.socket()
    listening.bind(("127.0.0.1", 0))
    listening.listen()
    adopted = adopt_fd(FdEndpoint(os.dup(listening.fileno())))
    try:
        assert adopted.getsockname() == listening.getsockname()
    finally:
        adopted.close()
        listening.close()

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        with pytest.raises(BindError, match="not a stream socket"):
            adopt_fd(FdEndpoint(udp.fileno()))
        assert udp.fileno() != -1  # refused, and left open for its owner
    with socket.socket() as bound_only:
        bound_only.bind(("127.0.0.1", 0))
        with pytest.raises(BindError, match="not listening"):
            adopt_fd(FdEndpoint(bound_only.fileno()))
    read_end, write_end = os.pipe()
    try:
        with pytest.raises(BindError):
            bind_endpoints([FdEndpoint(read_end)], 16)
    finally:
        os.close(write_end)
        try:
            os.close(read_end)
        except OSError:
            pass


# -- through the CLI ----------------------------------------------------------------------------


def test_cli_port_zero_logs_the_real_ports_and_serves_every_endpoint(tmp_path: Path) -> None:
    uds = str(tmp_path / "cli.sock")
    with kestrelpy(
        "--port",
        "0",
        "--bind",
        "127.0.0.1:0",
        "--uds",
        uds,
        "--uds-mode",
        "600",
        "--urls",
        "http://localhost:0" if HAS_IPV6 else "http://127.0.0.1:0",
        "--log-level",
        "info",
    ) as server:
        urls = listening_urls(server, 5 if HAS_IPV6 else 4)
        tcp = [u for u in urls if not u.startswith("http://unix:")]
        assert f"http://unix:{uds}" in urls
        assert all(not u.endswith(":0") for u in tcp), urls
        for url in tcp:
            host, _, port = url.removeprefix("http://").rpartition(":")
            status, _, body = http_get((host.strip("[]"), int(port)), "/whoami")
            assert status == 200 and json.loads(body)["server"][1] == int(port)
        status, _, body = http_get(uds, "/whoami")
        seen = json.loads(body)
        assert status == 200 and seen["server"] == [uds, None]  # ASGI: (path, None) on a Unix socket
        assert stat.S_IMODE(os.lstat(uds).st_mode) == 0o600
        assert server.stop() == 0
    assert not os.path.exists(uds)


def test_cli_inherited_fd(tmp_path: Path) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    fd = listener.fileno()
    try:
        with kestrelpy("--bind", f"fd://{fd}", pass_fds=(fd,)) as server:
            assert listening_urls(server) == [f"http://127.0.0.1:{port}"]
            assert http_get(("127.0.0.1", port), "/")[2] == b"ok"
            assert server.stop() == 0
    finally:
        listener.close()


def test_cli_refuses_an_fd_that_is_not_a_listening_socket() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        fd = udp.fileno()
        with kestrelpy("--bind", f"fd://{fd}", pass_fds=(fd,)) as server:
            assert server.proc.wait(20) != 0
        assert "not a stream socket" in server.output and "Traceback" not in server.output


@needs_ipv6
@pytest.mark.parametrize("workers", ["1", "2"])
def test_same_endpoint_semantics_with_one_or_several_processes(workers: str) -> None:
    with kestrelpy("--workers", workers, "--bind", "localhost:0", "--bind", "*:0", "--no-access-log") as server:
        # Every worker logs its three listeners, and workers' lines interleave: wait for all of them.
        urls = sorted(set(listening_urls(server, 3 * int(workers))))
        loopback4 = next(u for u in urls if u.startswith("http://127.0.0.1:"))
        port = int(loopback4.rpartition(":")[2])
        assert f"http://[::1]:{port}" in urls  # localhost: both loopbacks, one port
        [any_url] = [u for u in urls if u.startswith("http://[::]:")]  # *: one dual-stack socket
        any_port = int(any_url.rpartition(":")[2])
        for address in (("127.0.0.1", port), ("::1", port), ("127.0.0.1", any_port), ("::1", any_port)):
            assert http_get(address, "/")[2] == b"ok", address
        assert server.stop() == 0


def ipv4_only_host(family: int, kind: int) -> socket.socket:
    """A socket factory playing a host without IPv6 (a kernel booted with ipv6.disable=1)."""
    if family == socket.AF_INET6:
        raise OSError(errno.EAFNOSUPPORT, "Address family not supported by protocol")
    return socket.socket(family, kind)


def test_any_address_falls_back_to_ipv4_without_ipv6() -> None:
    [sock] = bind_endpoints([TcpEndpoint("*", 0)], 16, new_socket=ipv4_only_host)
    try:
        assert sock.family == socket.AF_INET and sock.getsockname()[0] == "0.0.0.0"
        assert connects(socket.AF_INET, ("127.0.0.1", sock.getsockname()[1]))
    finally:
        close_sockets([sock])


def test_localhost_without_ipv6_is_the_ipv4_loopback_and_still_fails_when_taken() -> None:
    [sock] = bind_endpoints([TcpEndpoint("localhost", 0)], 16, new_socket=ipv4_only_host)
    try:
        assert sock.family == socket.AF_INET
        port = sock.getsockname()[1]
        with pytest.raises(BindError):
            bind_endpoints([TcpEndpoint("localhost", port)], 16, new_socket=ipv4_only_host)
    finally:
        close_sockets([sock])


UNSHARE = shutil.which("unshare")


@pytest.mark.skipif(os.geteuid() != 0 or UNSHARE is None, reason="needs root and unshare (util-linux)")
def test_localhost_in_a_network_without_ipv6_loopback() -> None:
    """For real: a fresh network namespace whose loopback has IPv6 switched off."""
    script = (
        "import socket\n"
        "from kestrelpy.endpoints import TcpEndpoint\n"
        "from kestrelpy.sockets import bind_endpoints\n"
        "socks = bind_endpoints([TcpEndpoint('localhost', 0)], 8)\n"
        "print(sorted(s.getsockname()[0] for s in socks))\n"
    )
    setup = "ip link set lo up && echo 1 > /proc/sys/net/ipv6/conf/lo/disable_ipv6"
    run = subprocess.run(
        [str(UNSHARE), "--net", "sh", "-c", f'{setup} && exec "$0" -c "$1"', sys.executable, script],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if run.returncode != 0 and "ip: not found" in run.stderr:
        pytest.skip("the ip command (iproute2) is missing")
    if run.returncode != 0 and "unshare failed" in run.stderr:
        pytest.skip(f"cannot create a network namespace here: {run.stderr.strip()}")
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "['127.0.0.1']"
