"""Failed starts as a user sees them: a real `kestrelpy` process that cannot bind exits 1 with the guard's
finding, no traceback, and without running the application's lifespan startup."""

from __future__ import annotations

import json
import os
import shutil
import site
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

import kestrelpy

APP = """
import os

async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                with open(os.environ["KESTRELPY_TEST_MARKER"], "w") as f:
                    f.write("lifespan startup ran")
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})
"""

# Brings loopback up inside a fresh network namespace, then execs the rest of argv.
LO_UP = (
    "import fcntl,os,socket,struct,sys;s=socket.socket();r=struct.pack('16sh',b'lo',0);"
    "f=struct.unpack('16sh',fcntl.ioctl(s,0x8913,r))[1];fcntl.ioctl(s,0x8914,struct.pack('16sh',b'lo',f|1));"
    "os.execvp(sys.argv[1],sys.argv[1:])"
)
NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


@pytest.fixture
def marker_app() -> Iterator[tuple[Path, dict[str, str]]]:
    """An app that writes a marker file on lifespan startup, in a directory uid 65534 can read and write
    (pytest's own tmp_path is private to root), so a lifespan that ran would leave the marker behind."""
    root = Path(tempfile.mkdtemp(prefix="kestrelpy-guard-cli-"))
    try:
        os.chmod(root, 0o777)
        appdir = root / "app"
        appdir.mkdir(mode=0o755)
        (appdir / "marker_app.py").write_text(APP, encoding="utf-8")
        os.chmod(appdir / "marker_app.py", 0o644)
        project = str(Path(kestrelpy.__file__).resolve().parents[1])
        paths = [project, *site.getsitepackages(), os.environ.get("PYTHONPATH", "")]
        env = {
            **os.environ,
            "KESTRELPY_TEST_MARKER": str(root / "lifespan-ran"),
            "PYTHONPATH": os.pathsep.join(p for p in paths if p),
            "PYTHONDONTWRITEBYTECODE": "1",
        }
        yield appdir, env
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _serve_argv(python: str, appdir: Path, port: int) -> list[str]:
    return [python, "-m", "kestrelpy", "marker_app:app", "--app-dir", str(appdir), "--port", str(port)]


def _assert_clean_failure(done: subprocess.CompletedProcess[str], code: str, marker: Path) -> None:
    assert done.returncode == 1, done.stderr
    assert "kestrelpy cannot listen on 127.0.0.1:" in done.stderr
    assert f"[{code}]" in done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    assert not marker.exists(), "lifespan startup ran although the bind failed"
    # The prediction before the bind is one line; the full explanation appears once, in the final error.
    assert f"predicted: {code} on 127.0.0.1:" in done.stderr
    assert done.stderr.count(f"[{code}]") == 1, done.stderr
    assert done.stderr.count("How to fix it:") == 1, done.stderr


def test_port_held_by_another_socket_exits_1_with_the_holder(marker_app: tuple[Path, dict[str, str]]) -> None:
    appdir, env = marker_app
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        done = subprocess.run(
            _serve_argv(sys.executable, appdir, port), capture_output=True, text=True, env=env, timeout=30
        )
    _assert_clean_failure(done, "KP-PORT-IN-USE", Path(env["KESTRELPY_TEST_MARKER"]))
    assert f"pid {os.getpid()}" in done.stderr  # the holder is this test process, and it is named


def _unprivileged_python(env: dict[str, str]) -> str | None:
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    for exe in dict.fromkeys([sys.executable, f"/usr/bin/python{version}", f"/usr/local/bin/python{version}"]):
        if os.path.exists(exe):
            check = [*NOBODY, "/bin/sh", "-c", 'exec "$0" -c "import kestrelpy.cli"', exe]
            if subprocess.run(check, env=env, capture_output=True, timeout=20).returncode == 0:
                return exe
    return None


def test_privileged_port_as_unprivileged_user_exits_1(marker_app: tuple[Path, dict[str, str]]) -> None:
    if not sys.platform.startswith("linux") or os.geteuid() != 0:
        pytest.skip("needs root on Linux to create a network namespace and run as uid 65534")
    if shutil.which("unshare") is None or shutil.which("setpriv") is None:
        pytest.skip("needs util-linux `unshare` and `setpriv`")
    if subprocess.run(["unshare", "--net", "true"], capture_output=True).returncode != 0:
        pytest.skip("network namespaces are not permitted here")
    appdir, env = marker_app
    python = _unprivileged_python(env)
    if python is None:
        pytest.skip("no interpreter uid 65534 may run with kestrelpy importable")
    # A fresh network namespace has the kernel default floor of 1024, whatever the host uses.
    argv = ["unshare", "--net", "--", python, "-c", LO_UP, *NOBODY, *_serve_argv(python, appdir, 80)]
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=30)
    _assert_clean_failure(done, "KP-LINUX-PRIVILEGED-PORT", Path(env["KESTRELPY_TEST_MARKER"]))
    assert "uid 65534" in done.stderr


def test_check_subcommand_json(marker_app: tuple[Path, dict[str, str]]) -> None:
    _, env = marker_app
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "kestrelpy", "check", "--port", str(port), "--json"],
            capture_output=True,
            text=True,
            env=env,
            timeout=30,
        )
    assert done.returncode == 1, done.stderr
    doc = json.loads(done.stdout)
    assert [f["code"] for f in doc["findings"]] == ["KP-PORT-IN-USE"]
    assert doc["facts"]["ports"][0]["listeners"][0]["pids"] == [os.getpid()]
