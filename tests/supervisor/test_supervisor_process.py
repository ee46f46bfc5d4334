"""The supervisor as a user runs it: real worker processes on one loopback socket, real signals."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.support.supervised import (
    APP_DIR,
    LISTENING,
    SteadyClient,
    Supervised,
    get,
    launch,
    pids_answering,
    start,
    stop,
)

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals drive these tests")


def test_workers_share_the_socket_and_sigterm_exits_zero(servers: list[Supervised]) -> None:
    server = start("sv_apps:pid", "--workers", "2")
    servers.append(server)
    workers = server.worker_pids()
    assert len(set(workers)) == 2
    assert pids_answering(server.port, workers) == set(workers)
    assert server.proc.pid not in workers
    server.signal(signal.SIGTERM)
    code, log = server.finish()
    assert code == 0, log
    for pid in workers:
        assert f"Worker [{pid}] stopped" in log
    assert "Traceback" not in log


def test_web_concurrency_sets_the_worker_count(servers: list[Supervised]) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "kestrelpy", "sv_apps:pid", "--port", "0", "--app-dir", str(APP_DIR)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "WEB_CONCURRENCY": "3"},
    )
    server = Supervised(proc)
    servers.append(server)
    server.expect(r"All 3 worker\(s\) are serving")


def test_a_killed_worker_is_replaced_and_only_its_request_fails(servers: list[Supervised]) -> None:
    server = start("sv_apps:pid", "--workers", "2")
    servers.append(server)
    victim, survivor = server.worker_pids()
    mark = server.mark()
    with SteadyClient(server.port) as client:
        client.wait_for_count(20)
        os.kill(victim, signal.SIGKILL)
        server.expect(rf"Worker \[{victim}\] was killed by SIGKILL unexpectedly", after=mark)
        replacement = int(server.expect(r"Worker \[(\d+)\] is serving", after=mark).group(1))
        client.wait_for_pid(replacement)
    assert replacement not in (victim, survivor)
    # One sequential client has at most one request in flight on the victim when it dies.
    assert len(client.failures) <= 1, client.failures


@pytest.mark.parametrize("keep_alive", [False, True], ids=["new-connections", "keep-alive"])
def test_sighup_replaces_every_worker_without_a_failed_request(servers: list[Supervised], keep_alive: bool) -> None:
    server = start("sv_apps:pid", "--workers", "2")
    servers.append(server)
    old = set(server.worker_pids())
    mark = server.mark()
    with SteadyClient(server.port, concurrency=4, keep_alive=keep_alive) as client:
        client.wait_for_count(50)
        server.signal(signal.SIGHUP)
        server.expect("Every worker has been replaced", after=mark)
        for pid in old:
            server.expect(rf"Worker \[{pid}\] stopped", after=mark)
        new = set(server.worker_pids(after=mark))
        if not keep_alive:  # (persistent connections may all have moved to one of the new workers)
            for pid in new:
                client.wait_for_pid(pid)
        old_gone = time.monotonic()
        client.wait_for_count(50)
    assert len(new) == 2 and not new & old
    assert client.pids_sent_after(old_gone) <= new
    log = "".join(server.log[mark:])
    for pid in old:
        assert f"Worker [{pid}] stopped" in log
    assert client.failures == [], client.failures[:5]
    # Each new worker was serving before an old one was asked to drain.
    order = [line for line in server.log[mark:] if "is serving" in line or "to drain" in line]
    assert "is serving" in order[0], order


@pytest.mark.parametrize("to_group", [False, True], ids=["sigterm-to-supervisor", "ctrl-c-to-process-group"])
def test_stopping_lets_slow_requests_on_every_worker_finish(servers: list[Supervised], to_group: bool) -> None:
    """SIGTERM to the supervisor, or SIGINT to the whole process group as Ctrl+C in a terminal sends it
    (the workers must not take the group's signal as a second, forcing one)."""
    server = start("sv_apps:pid", "--workers", "2", "--timeout-graceful-shutdown", "10")
    servers.append(server)
    results: list[tuple[int, str] | Exception] = []

    def slow() -> None:
        try:
            results.append(get(server.port, "/slow?1.5", timeout=15))
        except OSError as exc:
            results.append(exc)

    threads = [threading.Thread(target=slow) for _ in range(4)]
    mark = server.mark()
    for thread in threads:
        thread.start()
    for _ in range(4):  # each expect() starts after the line the previous one matched
        found = server.expect("slow request started", after=mark)
        mark = next(i for i in range(mark, len(server.log)) if server.log[i] == found.string) + 1
    if to_group:
        os.killpg(server.proc.pid, signal.SIGINT)
    else:
        server.signal(signal.SIGTERM)
    for thread in threads:
        thread.join(15)
    code, log = server.finish()
    assert code == 0, log
    assert "closing every connection now" not in log
    assert len(results) == 4
    assert all(isinstance(r, tuple) and r[0] == 200 for r in results), results


def test_failing_lifespan_stops_the_server_with_exit_code_3() -> None:
    server = Supervised(launch("sv_apps:failing_startup", "--workers", "2", "--port", "0", "--app-dir", str(APP_DIR)))
    try:
        code, log = server.finish(timeout=30)
    finally:
        stop(server.proc)
    assert code == 3, log
    assert "kestrelpy: error: Application startup failed: database unreachable" in log
    assert len(re.findall(r"Started worker", log)) <= 2  # no restart loop
    assert "Traceback" not in log


def test_an_app_that_cannot_load_stops_the_server_with_exit_code_2() -> None:
    server = Supervised(launch("sv_apps:missing", "--workers", "2", "--port", "0", "--app-dir", str(APP_DIR)))
    try:
        code, log = server.finish(timeout=30)
    finally:
        stop(server.proc)
    assert code == 2, log
    assert "kestrelpy: error: Attribute 'missing' not found in module 'sv_apps'" in log
    assert "Traceback" not in log


def test_a_crash_loop_stops_the_server_with_a_clear_message() -> None:
    server = Supervised(launch("sv_apps:crashing_startup", "--workers", "2", "--port", "0", "--app-dir", str(APP_DIR)))
    try:
        code, log = server.finish(timeout=40)
    finally:
        stop(server.proc)
    assert code == 1, log
    assert re.search(r"kestrelpy: error: workers exited unexpectedly 5 times within 10 s", log), log
    assert "exited with code 7" in log


def test_a_hung_worker_is_killed_and_replaced(servers: list[Supervised]) -> None:
    server = start("sv_apps:pid", "--workers", "2", "--timeout-worker-healthcheck", "2")
    servers.append(server)
    mark = server.mark()
    blocker = threading.Thread(target=lambda: _ignore_errors(lambda: get(server.port, "/block", timeout=30)))
    blocker.start()
    hung = int(server.expect(r"worker (\d+) blocking its loop", after=mark).group(1))
    server.expect(rf"Worker \[{hung}\] has not reported for .* killing it", after=mark)
    server.expect(rf"Worker \[{hung}\] was killed by SIGKILL after it stopped reporting", after=mark)
    replacement = int(server.expect(r"Worker \[(\d+)\] is serving", after=mark).group(1))
    blocker.join(15)
    assert replacement != hung
    assert replacement in pids_answering(server.port, [replacement])


def test_a_worker_stuck_in_startup_is_killed_and_replaced(servers: list[Supervised]) -> None:
    args = ("--port", "0", "--app-dir", str(APP_DIR), "--workers", "2", "--timeout-worker-startup", "1")
    server = Supervised(launch("sv_apps:stuck_startup", *args))
    servers.append(server)
    stuck = int(server.expect(r"worker (\d+) stuck in startup").group(1))
    server.expect(rf"Worker \[{stuck}\] has not finished starting after .* killing it")
    mark = server.mark()
    server.expect(rf"Worker \[{stuck}\] was killed by SIGKILL after it did not finish starting; replacing it")
    replacement = int(server.expect(r"worker (\d+) stuck in startup", after=mark).group(1))
    assert replacement != stuck
    assert server.proc.poll() is None  # still supervising: a slow start is not a fatal error


def test_sigterm_stops_workers_still_starting_at_once() -> None:
    server = Supervised(launch("sv_apps:stuck_startup", "--port", "0", "--app-dir", str(APP_DIR), "--workers", "2"))
    try:
        first = server.expect(r"worker (\d+) stuck in startup").group(1)
        server.expect(rf"worker ((?!{first})\d+) stuck in startup")
        server.signal(signal.SIGTERM)
        code, log = server.finish(timeout=10)  # well inside --timeout-graceful-shutdown's 30 s
    finally:
        stop(server.proc)
    assert code == 0, log
    assert "killing it" not in log


def test_workers_still_starting_leave_when_their_supervisor_is_killed(servers: list[Supervised]) -> None:
    server = Supervised(launch("sv_apps:stuck_startup", "--port", "0", "--app-dir", str(APP_DIR), "--workers", "2"))
    servers.append(server)
    workers = [int(server.expect(r"worker (\d+) stuck in startup").group(1))]
    workers.append(int(server.expect(rf"worker ((?!{workers[0]})\d+) stuck in startup").group(1)))
    server.proc.kill()
    server.proc.wait(10)
    for pid in workers:
        server.expect(rf"Worker \[{pid}\] lost its supervisor while starting; leaving")
    deadline = time.monotonic() + 20
    while not all(_exited(pid) for pid in workers):
        assert time.monotonic() < deadline, "workers still starting without their supervisor"
        time.sleep(0.05)


def test_sigttin_adds_and_sigttou_removes_a_worker(servers: list[Supervised]) -> None:
    server = start("sv_apps:pid", "--workers", "2")
    servers.append(server)
    first = server.worker_pids()
    mark = server.mark()
    server.signal(signal.SIGTTIN)
    server.expect(r"received SIGTTIN; now 3 worker\(s\)", after=mark)
    added = int(server.expect(r"Worker \[(\d+)\] is serving", after=mark).group(1))
    assert pids_answering(server.port, [*first, added]) == {*first, added}
    mark = server.mark()
    server.signal(signal.SIGTTOU)
    server.expect(r"received SIGTTOU; now 2 worker\(s\)", after=mark)
    server.expect(rf"Worker \[{added}\] stopped", after=mark)
    assert {int(get(server.port)[1]) for _ in range(40)} <= set(first)


def test_max_requests_recycles_a_worker_without_a_failed_request(servers: list[Supervised]) -> None:
    server = start("sv_apps:pid", "--limit-max-requests", "20", "--limit-max-requests-jitter", "5")
    servers.append(server)
    (first,) = server.worker_pids()
    mark = server.mark()
    with SteadyClient(server.port, concurrency=2) as client:
        server.expect(rf"Replacing worker \[{first}\]: it served \d+ requests \(limit 2[0-5]\)", after=mark)
        second = int(server.expect(r"Worker \[(\d+)\] is serving", after=mark).group(1))
        server.expect(rf"Worker \[{first}\] stopped", after=mark)
        client.wait_for_pid(second)
    assert client.failures == [], client.failures[:5]


def test_memory_limit_recycles_a_leaking_worker_without_a_failed_request(servers: list[Supervised]) -> None:
    server = start("sv_apps:leaky", "--limit-worker-memory", "120")
    servers.append(server)
    (first,) = server.worker_pids()
    mark = server.mark()
    with SteadyClient(server.port) as client:
        server.expect(rf"Replacing worker \[{first}\]: it uses \d+ MiB \(limit 120 MiB\)", after=mark)
        second = int(server.expect(r"Worker \[(\d+)\] is serving", after=mark).group(1))
        server.expect(rf"Worker \[{first}\] stopped", after=mark)
        client.wait_for_pid(second)
    assert client.failures == [], client.failures[:5]


def _ignore_errors(call: object) -> None:
    try:
        call()  # type: ignore[operator]
    except OSError:
        pass


def test_spawned_workers_take_the_sockets_over_a_hand_over(servers: list[Supervised], tmp_path: Path) -> None:
    """The Windows start method (spawn a fresh interpreter, hand the sockets over), run here with the
    POSIX hand-over of descriptors: the same code path apart from socket.share/fromshare."""
    script = (
        "import sys; from kestrelpy import logs; from kestrelpy.config import Config;"
        "from kestrelpy.supervisor import Supervisor, spawn_worker; from kestrelpy.worker import run_worker;"
        "logs.configure('info', access_log=False);"
        f"sys.exit(Supervisor(Config(app='sv_apps:pid', port=0, workers=2, app_dir={str(APP_DIR)!r}),"
        " run_worker, starter=spawn_worker).run())"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    server = Supervised(proc)
    servers.append(server)
    server.port = int(server.expect(LISTENING.pattern).group(1))
    server.expect(r"All 2 worker\(s\) are serving")
    workers = server.worker_pids()
    assert pids_answering(server.port, workers) == set(workers)
    server.signal(signal.SIGTERM)
    code, log = server.finish()
    assert code == 0, log


def test_workers_leave_when_their_supervisor_is_killed(servers: list[Supervised]) -> None:
    server = start("sv_apps:pid", "--workers", "2")
    servers.append(server)
    workers = server.worker_pids()
    server.proc.kill()
    server.proc.wait(10)
    for pid in workers:
        server.expect(rf"Worker \[{pid}\] lost its supervisor")
    deadline = time.monotonic() + 20
    while not all(_exited(pid) for pid in workers):
        assert time.monotonic() < deadline, "workers still running without their supervisor"
        time.sleep(0.05)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", server.port), timeout=2).close()


def _exited(pid: int) -> bool:
    """True once `pid` is gone or a zombie (an orphan's new parent may be slow to reap it)."""
    if Path("/proc/self/status").exists():
        try:
            return "\nState:\tZ" in Path(f"/proc/{pid}/status").read_text()
        except FileNotFoundError:
            return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def _listening_sockets(port: int) -> int:
    """How many LISTEN sockets /proc/net/tcp shows on 127.0.0.1:`port` (one per SO_REUSEPORT worker)."""
    rows = Path("/proc/net/tcp").read_text().splitlines()[1:]
    return sum(1 for row in rows if row.split()[1] == f"0100007F:{port:04X}" and row.split()[3] == "0A")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SO_REUSEPORT balances only on Linux")
def test_reuse_port_gives_each_worker_its_own_listener(servers: list[Supervised]) -> None:
    shared = start("sv_apps:pid", "--workers", "2")
    servers.append(shared)
    assert _listening_sockets(shared.port) == 1
    server = start("sv_apps:pid", "--workers", "2", "--reuse-port")
    servers.append(server)
    assert _listening_sockets(server.port) == 2
    workers = server.worker_pids()
    assert pids_answering(server.port, workers) == set(workers)
    mark = server.mark()
    server.signal(signal.SIGHUP)
    for pid in workers:
        server.expect(rf"Worker \[{pid}\] stopped", after=mark)
    assert _listening_sockets(server.port) == 2
    new = server.worker_pids(after=mark)
    assert pids_answering(server.port, new) == set(new)
    server.signal(signal.SIGTERM)
    code, log = server.finish()
    assert code == 0, log
