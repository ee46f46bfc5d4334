"""SIGHUP to a supervisor started from a config file: the file is read again. When only endpoints changed,
the running workers change their listeners in place: a moved endpoint listens on its new address and stops
listening on the old one, an added one listens, one whose certificate changed serves the new one on the same
socket and drains the connections made with the old one, while the unchanged endpoint and its keep-alive
connections are not touched at all. A file that cannot be used is reported and the running configuration
stays; one whose app does not import is abandoned, and the running workers keep serving. Real processes,
real sockets."""

from __future__ import annotations

import http.client
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme

from tests.support.supervised import APP_DIR, SteadyClient, Supervised, get, launch, pids_answering, stop
from tests.support.tls_client import tls_get
from tests.support.waiting import WAIT, wait_until


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def presented(port: int, ca_file: Path) -> bytes:
    context = ssl.create_default_context(cafile=str(ca_file))
    context.check_hostname = False
    return tls_get(port, context, None)[0]


def refused(port: int) -> bool:
    try:
        get(port, timeout=2)
    except ConnectionRefusedError:
        return True
    return False


def launched(request: pytest.FixtureRequest, cwd: Path) -> Supervised:
    """kestrelpy started in `cwd` (stopped when the test ends), once its two workers serve."""
    server = Supervised(launch(cwd=cwd))
    request.addfinalizer(lambda: stop(server.proc))
    server.expect(r"All 2 worker\(s\) are serving")
    return server


def assert_stops_cleanly(server: Supervised) -> None:
    server.signal(signal.SIGTERM)
    code, log = server.finish()
    assert code == 0, log


def write_config(path: Path, endpoints: str, workers: int = 2, app: str = "sv_apps:pid", settings: str = "") -> None:
    path.write_text(
        f'app = "{app}"\napp_dir = "{APP_DIR}"\nworkers = {workers}\naccess_log = false\n{settings}{endpoints}'
    )


class KeptAlive:
    """One keep-alive connection that is never reopened: every request goes over the socket it opened with."""

    def __init__(self, port: int, context: ssl.SSLContext | None = None) -> None:
        if context is None:
            self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT)
        else:
            self.conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=WAIT, context=context)
        self.conn.auto_open = 0  # a closed connection raises NotConnected instead of reconnecting
        self.conn.connect()
        self.sock = self.conn.sock

    def send(self, path: str = "/") -> None:
        self.conn.request("GET", path)

    def answer(self) -> tuple[int, str | None, str]:
        """The status, Connection header and body of the response to what was sent."""
        response = self.conn.getresponse()
        return response.status, response.getheader("connection"), response.read().decode()

    def get(self, path: str = "/") -> tuple[int, str | None, str]:
        self.send(path)
        return self.answer()

    def certificate(self) -> bytes | None:
        sock = self.sock
        return sock.getpeercert(binary_form=True) if isinstance(sock, ssl.SSLSocket) else None

    @property
    def same_socket(self) -> bool:
        return self.conn.sock is self.sock and self.sock is not None and self.sock.fileno() != -1


class KeepRequesting:
    """A thread per KeptAlive connection, requesting on it one request after another until stopped."""

    def __init__(self, connections: list[KeptAlive]) -> None:
        self.connections = connections
        self.answers: list[tuple[int, str | None, str]] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._loop, args=(c,), daemon=True) for c in connections]

    def __enter__(self) -> KeepRequesting:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(WAIT)

    def _loop(self, connection: KeptAlive) -> None:
        while not self._stop.is_set():
            try:
                self.answers.append(connection.get())
            except (OSError, http.client.HTTPException) as exc:
                self.failures.append(f"{type(exc).__name__}: {exc}")
                return

    def wait_for_count(self, count: int) -> None:
        start = len(self.answers)
        assert wait_until(lambda: len(self.answers) - start >= count or bool(self.failures)), "no answers"


@dataclass
class Endpoints:
    """A config file's endpoints before and after a reload: `stable` stays, `moving` moves from port `old` to
    port `new`, and `secure` (TLS) changes from the certificate `first` to `second`."""

    ports: dict[str, int]
    certificates: dict[str, bytes]  # DER, by name
    client: ssl.SSLContext  # trusts both
    before: str
    after: str


def endpoints_to_change(tmp_path: Path) -> Endpoints:
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    pems = {}
    for name in ("first", "second"):
        leaf = ca.issue_cert("127.0.0.1")
        leaf.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / f"{name}.pem"))
        pems[name] = ssl.PEM_cert_to_DER_cert(leaf.cert_chain_pems[0].bytes().decode())
    client = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
    client.check_hostname = False
    ports = {name: free_port() for name in ("stable", "old", "new", "added", "secure")}
    before = f"""
[endpoints.stable]
url = "http://127.0.0.1:{ports["stable"]}"

[endpoints.moving]
url = "http://127.0.0.1:{ports["old"]}"

[endpoints.secure]
url = "https://127.0.0.1:{ports["secure"]}"
certificate = {{ path = "{tmp_path / "first.pem"}" }}
"""
    after = before.replace(f':{ports["old"]}"', f':{ports["new"]}"').replace("first.pem", "second.pem")
    return Endpoints(ports, pems, client, before, after)


def test_a_reload_that_changes_only_endpoints_leaves_the_workers_and_the_unchanged_endpoint_alone(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    change = endpoints_to_change(tmp_path)
    ports, pems, context = change.ports, change.certificates, change.client
    config = tmp_path / "kestrelpy.toml"
    write_config(config, change.before)
    server = launched(request, tmp_path)
    workers = server.worker_pids()
    assert get(ports["old"])[0] == 200
    stable = [KeptAlive(ports["stable"]) for _ in range(4)]
    secure = KeptAlive(ports["secure"], context)
    assert secure.get()[0] == 200 and secure.certificate() == pems["first"]

    write_config(config, change.after + f'\n[endpoints.added]\nurl = "http://127.0.0.1:{ports["added"]}"\n')
    mark = server.mark()
    with KeepRequesting(stable) as kept, SteadyClient(ports["stable"], concurrency=2) as client:
        kept.wait_for_count(20)
        client.wait_for_count(20)
        secure.send("/slow?2")  # in flight on the changed endpoint while it changes
        server.expect("slow request started", after=mark)
        server.signal(signal.SIGHUP)
        summary = (
            f"Configuration read again: endpoints added 127.0.0.1:{ports['new']} ([endpoints.moving]), "
            f"127.0.0.1:{ports['added']} ([endpoints.added]); removed 127.0.0.1:{ports['old']} "
            f"([endpoints.moving]); changed 127.0.0.1:{ports['secure']} ([endpoints.secure]); 1 unchanged"
        )
        server.expect(re.escape(summary) + "$", after=mark)
        server.expect("Only endpoints changed: changing the listeners of 2 worker", after=mark)
        for pid in workers:
            server.expect(rf"Worker \[{pid}\] serves the new endpoints", after=mark)
        kept.wait_for_count(20)
        client.wait_for_count(20)
        # the request in flight on the changed endpoint is answered, and its connection then closed
        assert secure.answer()[:2] == (200, "close")
    assert not secure.same_socket
    # the unchanged endpoint's connections served on, on the same sockets, by the same workers
    assert kept.failures == [] and client.failures == [], (kept.failures[:3], client.failures[:3])
    assert all(connection.same_socket for connection in stable)
    assert all(status == 200 and header != "close" for status, header, _ in kept.answers)
    assert {int(body) for _, _, body in kept.answers} <= set(workers)
    for connection in stable:
        assert connection.get()[:2] == (200, None)
    log = "".join(server.log[mark:])
    assert "Started worker" not in log and "to drain" not in log, log
    assert pids_answering(ports["stable"], workers) == set(workers)
    assert pids_answering(ports["new"], workers) == set(workers)
    assert pids_answering(ports["added"], workers) == set(workers)
    assert refused(ports["old"])
    assert all(presented(ports["secure"], tmp_path / "ca.pem") == pems["second"] for _ in range(8))
    assert_stops_cleanly(server)


def test_a_reload_whose_app_does_not_import_is_abandoned_and_the_running_workers_keep_serving(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    port = free_port()
    config = tmp_path / "kestrelpy.toml"
    endpoint = f'[endpoints.web]\nurl = "http://127.0.0.1:{port}"\n'
    write_config(config, endpoint)
    server = launched(request, tmp_path)
    workers = server.worker_pids()
    write_config(config, endpoint, app="sv_apps:missing")
    mark = server.mark()
    with SteadyClient(port, concurrency=2) as client:
        client.wait_for_count(20)
        server.signal(signal.SIGHUP)
        server.expect(r"Replacing 2 worker\(s\) one at a time: app changed", after=mark)
        server.expect(r"Reload abandoned: worker \[\d+\] could not start with it: .*sv_apps", after=mark)
        client.wait_for_count(20)
    assert client.failures == [], client.failures[:3]
    assert server.proc.poll() is None
    assert pids_answering(port, workers) == set(workers)
    assert not any("to drain" in line for line in server.log[mark:])

    # the running configuration is what the next SIGHUP compares with, and a usable file is taken up
    write_config(config, endpoint, settings="server_header = false\n")
    mark = server.mark()
    server.signal(signal.SIGHUP)
    server.expect(r"Replacing 2 worker\(s\) one at a time: server_header changed", after=mark)
    server.expect("Every worker has been replaced", after=mark)
    for pid in workers:
        server.expect(rf"Worker \[{pid}\] stopped", after=mark)
    assert_stops_cleanly(server)


def test_a_file_that_cannot_be_used_is_reported_and_the_running_configuration_stays(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    port = free_port()
    config = tmp_path / "kestrelpy.toml"
    write_config(config, f'[endpoints.web]\nurl = "http://127.0.0.1:{port}"\n')
    server = launched(request, tmp_path)
    workers = server.worker_pids()
    for broken, message in (
        (
            f'[endpoints.web]\nurll = "http://127.0.0.1:{port}"\n',
            f"{config}:6: unknown key `urll` in [endpoints.web]; did you mean `url`?",
        ),
        (
            f'[endpoints.web]\nurl = "https://127.0.0.1:{port}"\n'
            f'certificate = {{ path = "{tmp_path / "none.pem"}" }}\n',
            f"[endpoints.web] certificate.path {tmp_path / 'none.pem'}: no such file",
        ),
    ):
        write_config(config, broken)
        mark = server.mark()
        server.signal(signal.SIGHUP)
        line = server.expect("Not reloading the configuration", after=mark).string
        assert line.endswith(message + "\n"), line
        time.sleep(0.5)  # nothing may follow: no worker is replaced
        assert server.worker_pids(after=mark) == []
        assert not any("Replacing" in entry or "drain" in entry for entry in server.log[mark:])
        assert pids_answering(port, workers) == set(workers)
    write_config(config, f'[endpoints.web]\nurl = "http://127.0.0.1:{port}"\n', workers=3)
    mark = server.mark()
    server.signal(signal.SIGHUP)
    server.expect(r"Configuration read again: endpoints 1 unchanged", after=mark)
    server.expect(r"Only the worker count changed: now 3 worker\(s\); no worker is replaced", after=mark)
    # the file's new count (mark() reads what the server has logged meanwhile), beside the running two
    assert wait_until(lambda: server.mark() > 0 and len(server.worker_pids(after=mark)) == 1)
    assert pids_answering(port, [*workers, *server.worker_pids(after=mark)]) == {
        *workers,
        *server.worker_pids(after=mark),
    }
    assert not any("Replacing" in entry or "drain" in entry for entry in server.log[mark:])
    assert_stops_cleanly(server)


def test_a_single_process_changes_its_endpoints_in_place_and_says_what_takes_a_restart(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    change = endpoints_to_change(tmp_path)
    ports = change.ports
    config = tmp_path / "kestrelpy.toml"
    write_config(config, change.before, workers=1)
    server = Supervised(launch(cwd=tmp_path))
    request.addfinalizer(lambda: stop(server.proc))
    server.expect(rf"Listening on https://127\.0\.0\.1:{ports['secure']}")
    stable = KeptAlive(ports["stable"])
    assert stable.get()[2] == str(server.proc.pid)
    secure = KeptAlive(ports["secure"], change.client)
    assert secure.certificate() == change.certificates["first"]

    write_config(config, change.after, workers=1)
    mark = server.mark()
    with KeepRequesting([stable]) as kept:
        kept.wait_for_count(20)
        secure.send("/slow?2")
        server.expect("slow request started", after=mark)
        server.signal(signal.SIGHUP)
        server.expect(rf"Stopped listening on http://127\.0\.0\.1:{ports['old']}", after=mark)
        server.expect(rf"Serving https://127\.0\.0\.1:{ports['secure']} with its new settings; draining 1", after=mark)
        server.expect(rf"Listening on http://127\.0\.0\.1:{ports['new']}", after=mark)
        kept.wait_for_count(20)
        assert secure.answer()[:2] == (200, "close")
    assert kept.failures == [] and stable.same_socket, kept.failures[:3]
    assert all(status == 200 and header != "close" for status, header, _ in kept.answers)
    assert get(ports["new"])[1] == str(server.proc.pid)
    assert refused(ports["old"])
    assert presented(ports["secure"], tmp_path / "ca.pem") == change.certificates["second"]

    write_config(config, change.after, workers=1, settings="server_header = false\n")
    mark = server.mark()
    server.signal(signal.SIGHUP)
    server.expect("server_header changed, which a single server process takes up only when restarted", after=mark)
    assert stable.get()[:2] == (200, None) and stable.same_socket
    assert_stops_cleanly(server)


def test_spawned_workers_take_an_added_endpoint_over_their_channel(request: pytest.FixtureRequest) -> None:
    """The Windows start method (fresh interpreters, sockets handed over), run with the POSIX hand-over of
    descriptors: a running spawned worker is handed the new socket as a spawned one is at its start."""
    added = free_port()
    app = f"app='sv_apps:pid', app_dir={str(APP_DIR)!r}, workers=2, host='127.0.0.1'"
    script = (
        "import sys; from kestrelpy import logs; from kestrelpy.config import Config;"
        "from kestrelpy.supervisor import Supervisor, spawn_worker; from kestrelpy.worker import run_worker;"
        "logs.configure('info', access_log=False);"
        f"reread = lambda: Config({app}, port=0, binds=('127.0.0.1:{added}',));"
        f"sys.exit(Supervisor(Config({app}, port=0), run_worker, starter=spawn_worker, reread=reread).run())"
    )
    server = Supervised(subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.PIPE))
    request.addfinalizer(lambda: stop(server.proc))
    server.expect(r"All 2 worker\(s\) are serving")
    workers = server.worker_pids()
    mark = server.mark()
    server.signal(signal.SIGHUP)
    for pid in workers:
        server.expect(rf"Worker \[{pid}\] serves the new endpoints", after=mark)
    assert pids_answering(added, workers) == set(workers)
    assert_stops_cleanly(server)
