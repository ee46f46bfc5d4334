"""SIGHUP to a supervisor started from a config file: the file is read again, a moved endpoint listens on its
new address and stops listening on the old one, an added one listens, one whose certificate changed serves
the new one on the same socket, while a client requesting the unchanged endpoint all along sees no failure;
a file that cannot be used is reported and the running configuration stays. Real processes, real sockets."""

from __future__ import annotations

import re
import signal
import socket
import ssl
import time
from pathlib import Path

import pytest
import trustme

from tests.support.supervised import APP_DIR, SteadyClient, Supervised, get, launch, pids_answering, stop
from tests.support.tls_client import tls_get
from tests.support.waiting import wait_until


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


def write_config(path: Path, endpoints: str, workers: int = 2) -> None:
    path.write_text(f'app = "sv_apps:pid"\napp_dir = "{APP_DIR}"\nworkers = {workers}\naccess_log = false\n{endpoints}')


@pytest.mark.parametrize("keep_alive", [False, True], ids=["new-connections", "keep-alive"])
def test_a_reload_moves_adds_and_changes_endpoints_without_failing_the_unchanged_one(
    tmp_path: Path, request: pytest.FixtureRequest, keep_alive: bool
) -> None:
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    pems = {}
    for name in ("first", "second"):
        leaf = ca.issue_cert("127.0.0.1")
        leaf.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / f"{name}.pem"))
        pems[name] = ssl.PEM_cert_to_DER_cert(leaf.cert_chain_pems[0].bytes().decode())
    ports = {name: free_port() for name in ("stable", "old", "new", "added", "secure")}
    config = tmp_path / "kestrelpy.toml"
    endpoints = f"""
[endpoints.stable]
url = "http://127.0.0.1:{ports["stable"]}"

[endpoints.moving]
url = "http://127.0.0.1:{ports["old"]}"

[endpoints.secure]
url = "https://127.0.0.1:{ports["secure"]}"
certificate = {{ path = "{tmp_path / "first.pem"}" }}
"""
    write_config(config, endpoints)
    server = launched(request, tmp_path)
    old_workers = server.worker_pids()
    assert get(ports["old"])[0] == 200 and presented(ports["secure"], tmp_path / "ca.pem") == pems["first"]

    moved = endpoints.replace(f':{ports["old"]}"', f':{ports["new"]}"').replace("first.pem", "second.pem")
    write_config(config, moved + f'\n[endpoints.added]\nurl = "http://127.0.0.1:{ports["added"]}"\n')
    mark = server.mark()
    with SteadyClient(ports["stable"], concurrency=4, keep_alive=keep_alive) as client:
        client.wait_for_count(50)
        server.signal(signal.SIGHUP)
        summary = (
            f"Configuration read again: endpoints added 127.0.0.1:{ports['new']} ([endpoints.moving]), "
            f"127.0.0.1:{ports['added']} ([endpoints.added]); removed 127.0.0.1:{ports['old']} "
            f"([endpoints.moving]); changed 127.0.0.1:{ports['secure']} ([endpoints.secure]); 1 unchanged"
        )
        server.expect(re.escape(summary) + "$", after=mark)
        server.expect("Every worker has been replaced", after=mark)
        for pid in old_workers:
            server.expect(rf"Worker \[{pid}\] stopped", after=mark)
        client.wait_for_count(50)
    assert client.failures == [], client.failures[:5]
    new_workers = server.worker_pids(after=mark)
    assert len(new_workers) == 2 and not set(new_workers) & set(old_workers)
    assert pids_answering(ports["new"], new_workers) == set(new_workers)
    assert get(ports["added"])[0] == 200
    assert refused(ports["old"])
    assert presented(ports["secure"], tmp_path / "ca.pem") == pems["second"]
    server.signal(signal.SIGTERM)
    code, log = server.finish()
    assert code == 0, log


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
    server.expect("Every worker has been replaced", after=mark)
    for pid in workers:
        server.expect(rf"Worker \[{pid}\] stopped", after=mark)
    # the file's new count (mark() reads what the server has logged meanwhile)
    wait_until(lambda: server.mark() > 0 and len(server.worker_pids(after=mark)) == 3)
    server.signal(signal.SIGTERM)
    code, log = server.finish()
    assert code == 0, log
