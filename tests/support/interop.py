"""Running kestrelpy (and nginx, systemd-socket-activate) as real child processes for the interop tests."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
APP_DIR = str(ROOT / "tests" / "interop")  # where interop_apps.py is
APP = "interop_apps:app"
LISTENING = re.compile(r"Listening on (\S+)")


def free_port(host: str = "127.0.0.1") -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class Process:
    """A child process whose stderr+stdout is collected line by line; waits use events, not sleeps."""

    def __init__(self, argv: Sequence[str], *, env: dict[str, str] | None = None, **kwargs: Any) -> None:
        self.argv = list(argv)
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self.proc = subprocess.Popen(
            self.argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            text=True,
            **kwargs,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    @property
    def output(self) -> str:
        with self._changed:
            return "\n".join(self.lines)

    def wait_for(self, pattern: str, count: int = 1, timeout: float = 15.0) -> list[re.Match[str]]:
        """Wait until `count` output lines match `pattern`; fail with the output if the process exits first."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                found = [m for m in map(regex.search, self.lines) if m]
                if len(found) >= count:
                    return found[:count]
                if self.proc.poll() is not None and not self._reader.is_alive():
                    raise AssertionError(f"process exited ({self.proc.returncode}) before {pattern!r}:\n{self.output}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"timed out waiting for {pattern!r}:\n{self.output}")
                self._changed.wait(min(left, 0.2))

    def signal(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM and wait; SIGKILL (by pid) if it does not end in time."""
        self.signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
            raise AssertionError(f"{self.argv[0]} ignored SIGTERM for {timeout}s:\n{self.output}") from None

    def __enter__(self) -> Process:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
        self._reader.join(5)


def kestrelpy(*args: str, app: str = APP, env: dict[str, str] | None = None, **kwargs: Any) -> Process:
    """`python -m kestrelpy APP --app-dir tests/interop ARGS` from the repository root."""
    full_env = {**os.environ, **(env or {})}
    for name in ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"):
        if env is None or name not in env:
            full_env.pop(name, None)
    return Process(
        [sys.executable, "-m", "kestrelpy", app, "--app-dir", APP_DIR, *args], env=full_env, cwd=ROOT, **kwargs
    )


def listening_urls(process: Process, count: int = 1) -> list[str]:
    return [m.group(1) for m in process.wait_for(LISTENING.pattern, count)]


def require_tool(name: str, package: str) -> str:
    import pytest

    path = shutil.which(name) or next(
        (p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}") if os.access(p, os.X_OK)), None
    )
    if path is None:
        pytest.skip(f"{name} is not installed (Debian package {package}; .ci/run installs it)")
    return path


def http_get(
    address: str | tuple[str, int], path: str = "/", headers: dict[str, str] | None = None, timeout: float = 10
) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 GET over a fresh connection (TCP (host, port) or a Unix socket path)."""
    if isinstance(address, str):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        sock.connect(address)
    else:
        sock = socket.create_connection(address, timeout=timeout)
    with sock:
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        sock.sendall(f"GET {path} HTTP/1.1\r\nhost: test\r\n{extra}connection: close\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    parsed = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return status, parsed, body


# -- nginx in front ----------------------------------------------------------------------------------


def wrap(site: str, work: Path) -> str:
    user = "user root;\n" if os.geteuid() == 0 else ""  # workers must reach the socket in a 0700 tmp dir
    temps = "".join(
        f"    {kind}_temp_path {work}/{kind};\n" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return (
        f"{user}daemon off;\nworker_processes 1;\npid {work}/nginx.pid;\nerror_log {work}/error.log warn;\n"
        "events { worker_connections 512; }\n"
        f"http {{\n    access_log off;\n{temps}{site}\n}}\n"
    )


def wait_until_accepting(port: int, process: Process, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            if process.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"nginx did not start:\n{process.output}") from None
            time.sleep(0.05)
