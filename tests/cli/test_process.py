"""The `kestrelpy` command as a user runs it: a real process, real signals, real exit codes."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.support.process_log import LISTENING, Running

HERE = Path(__file__).parent
ROOT = HERE.parent.parent


def kestrelpy(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "kestrelpy", *args],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )


def start(*args: str, env: dict[str, str] | None = None) -> Running:
    """Start kestrelpy on a free port and wait for its 'Listening on' line (no sleeping)."""
    proc = kestrelpy(*args, "--host", "127.0.0.1", "--port", "0", "--app-dir", str(HERE), env=env)
    server = Running(proc)
    try:
        server.port = int(server.expect(LISTENING.pattern).group(1))
    except AssertionError:
        proc.kill()
        raise
    return server


def test_serves_the_example_app_and_sigterm_exits_zero(procs: list[subprocess.Popen[str]]) -> None:
    server = start("cli_apps:hello")
    procs.append(server.proc)
    response = httpx.get(server.url + "/")
    assert response.status_code == 200
    assert response.text == "ok"
    assert response.headers["server"] == "kestrelpy"
    server.proc.send_signal(signal.SIGTERM)
    code, log = server.finish()
    assert code == 0, log
    assert "Traceback" not in log


def test_sigterm_during_a_slow_request_lets_it_finish(procs: list[subprocess.Popen[str]]) -> None:
    server = start("cli_apps:slow")
    procs.append(server.proc)
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"GET /?1.5 HTTP/1.1\r\nHost: t\r\n\r\n")
        server.expect("slow request started")
        server.proc.send_signal(signal.SIGTERM)
        response = _read_until_close(sock)
    assert response.startswith(b"HTTP/1.1 200 OK")
    assert b"connection: close" in response
    assert response.endswith(b"finished after 1.5")
    code, log = server.finish()
    assert code == 0, log
    # No new connection is accepted once shutdown began.
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", server.port), timeout=2).close()


def test_second_signal_forces_exit(procs: list[subprocess.Popen[str]]) -> None:
    server = start("cli_apps:slow")
    procs.append(server.proc)
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"GET /?30 HTTP/1.1\r\nHost: t\r\n\r\n")
        server.expect("slow request started")
        began = time.monotonic()
        server.proc.send_signal(signal.SIGINT)
        server.expect("Waiting for 1 connection")
        assert server.proc.poll() is None, "the first signal must wait for the slow request"
        server.proc.send_signal(signal.SIGINT)
        code, log = server.finish(timeout=10)
        assert time.monotonic() - began < 5
        assert _read_until_close(sock) == b""  # the unfinished response was cut, not faked
    assert code == 0, log


def test_graceful_timeout_cuts_requests_that_run_too_long(procs: list[subprocess.Popen[str]]) -> None:
    server = start("cli_apps:slow", "--timeout-graceful-shutdown", "0.5")
    procs.append(server.proc)
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"GET /?30 HTTP/1.1\r\nHost: t\r\n\r\n")
        server.expect("slow request started")
        server.proc.send_signal(signal.SIGTERM)
        code, log = server.finish(timeout=10)
    assert code == 0, log
    assert "Graceful shutdown timed out" in log


def test_lifespan_runs_startup_and_shutdown(procs: list[subprocess.Popen[str]], tmp_path: Path) -> None:
    marker = tmp_path / "events"
    server = start("cli_apps:recording_lifespan", env={"KESTRELPY_TEST_MARKER": str(marker)})
    procs.append(server.proc)
    assert marker.read_text() == "startup\n"
    assert httpx.get(server.url).status_code == 200
    server.proc.send_signal(signal.SIGTERM)
    code, log = server.finish()
    assert code == 0, log
    assert marker.read_text() == "startup\nshutdown\n"


def test_lifespan_startup_failure_exits_3_with_the_apps_message() -> None:
    proc = kestrelpy("cli_apps:failing_startup", "--port", "0", "--app-dir", str(HERE))
    _, err = proc.communicate(timeout=15)
    assert proc.returncode == 3, err
    assert "database unreachable" in err
    assert "Traceback" not in err


def test_factory_flag(procs: list[subprocess.Popen[str]]) -> None:
    server = start("cli_apps:make_app", "--factory")
    procs.append(server.proc)
    assert httpx.get(server.url).text == "ok"


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("no_such_module_xyz:app", "Could not import module 'no_such_module_xyz'"),
        ("cli_apps:missing", "Attribute 'missing' not found in module 'cli_apps'"),
        ("cli_apps", "module:attribute"),
    ],
)
def test_app_loading_errors_exit_2_with_one_clear_line(target: str, message: str) -> None:
    proc = kestrelpy(target, "--port", "0", "--app-dir", str(HERE))
    _, err = proc.communicate(timeout=15)
    assert proc.returncode == 2
    assert message in err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_import_error_inside_the_app_names_the_cause(tmp_path: Path) -> None:
    (tmp_path / "needs_dep.py").write_text("import definitely_missing_dependency_abc\n")
    proc = kestrelpy("needs_dep:app", "--port", "0", "--app-dir", str(tmp_path))
    _, err = proc.communicate(timeout=15)
    assert proc.returncode == 2
    assert "definitely_missing_dependency_abc" in err
    assert "Traceback" not in err


def test_bad_flag_values_exit_2_without_traceback() -> None:
    proc = kestrelpy("cli_apps:hello", "--timeout-keep-alive", "-1", "--app-dir", str(HERE))
    _, err = proc.communicate(timeout=15)
    assert proc.returncode == 2
    assert "--timeout-keep-alive" in err
    assert "Traceback" not in err


def test_console_script_and_module_agree() -> None:
    script = Path(sys.executable).with_name("kestrelpy")
    assert script.exists(), "the console script is installed next to the interpreter"
    by_script = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=15)
    by_module = subprocess.run(
        [sys.executable, "-m", "kestrelpy", "--help"], capture_output=True, text=True, timeout=15
    )
    assert by_script.returncode == by_module.returncode == 0
    assert by_script.stdout == by_module.stdout
    assert "--timeout-graceful-shutdown" in by_script.stdout


def _read_until_close(sock: socket.socket) -> bytes:
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return data
        if not chunk:
            return data
        data += chunk


def test_django_asgi_handler_end_to_end(procs: list[subprocess.Popen[str]]) -> None:
    server = start("django_site:application")
    procs.append(server.proc)
    with httpx.Client(base_url=server.url) as client:
        hello = client.get("/hello")
        assert hello.status_code == 200
        assert hello.text == "hello from django, path=/hello"
        echo = client.post("/echo?q=x", content=b"a" * 5000)
        assert echo.json() == {"method": "POST", "length": 5000, "q": "x"}
        assert client.get("/missing").status_code == 404
