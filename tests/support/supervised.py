"""Running `kestrelpy --workers N` as a real process and driving it with plain sockets."""

from __future__ import annotations

import http.client
import os
import re
import selectors
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
APP_DIR = ROOT / "tests" / "supervisor"  # where sv_apps.py is
LISTENING = re.compile(r"Listening on http://127\.0\.0\.1:(\d+)")


class Supervised:
    """A kestrelpy process whose stderr is read line by line while the test waits for what it expects."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stderr is not None
        self.proc = proc
        self.port = 0
        self.log: list[str] = []
        self._seen = 0
        self._fd = proc.stderr.fileno()
        self._pending = b""

    def expect(self, pattern: str, timeout: float = 20, *, after: int = 0) -> re.Match[str]:
        """The first stderr line from index `after` on matching `pattern`, reading more until `timeout`."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        index = after
        while True:
            while index < len(self.log):
                if found := regex.search(self.log[index]):
                    return found
                index += 1
            if not self._read(deadline):
                raise AssertionError(f"no line matching {pattern!r}:\n" + "".join(self.log))

    def mark(self) -> int:
        """An index into the log: `expect(..., after=mark)` ignores everything logged before now."""
        while self._read(time.monotonic() + 0.05):
            pass
        return len(self.log)

    def _read(self, deadline: float) -> bool:
        with selectors.DefaultSelector() as sel:
            sel.register(self._fd, selectors.EVENT_READ)
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not sel.select(remaining):
                return False
        data = os.read(self._fd, 65536)
        if not data:
            return False
        *lines, self._pending = (self._pending + data).split(b"\n")
        self.log.extend(line.decode(errors="replace") + "\n" for line in lines)
        return True

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def finish(self, timeout: float = 20) -> tuple[int, str]:
        deadline = time.monotonic() + timeout
        while self._read(deadline):
            pass
        code = self.proc.wait(max(deadline - time.monotonic(), 0.1))
        return code, "".join(self.log) + self._pending.decode(errors="replace")

    def worker_pids(self, pattern: str = r"Worker \[(\d+)\] is serving", after: int = 0) -> list[int]:
        return [int(m.group(1)) for line in self.log[after:] if (m := re.search(pattern, line))]


def launch(*args: str, cwd: Path = ROOT) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "kestrelpy", *args],
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,  # its own process group, so a test can signal the group as a terminal does
    )


def start(app: str, *args: str, app_dir: Path = APP_DIR) -> Supervised:
    """Start kestrelpy on a free port; wait until the supervisor says every worker is serving."""
    proc = launch(app, "--host", "127.0.0.1", "--port", "0", "--app-dir", str(app_dir), "--no-access-log", *args)
    server = Supervised(proc)
    try:
        server.port = int(server.expect(LISTENING.pattern).group(1))
        server.expect(r"All \d+ worker\(s\) are serving")
    except BaseException:
        stop(proc)
        raise
    return server


def stop(proc: subprocess.Popen[bytes]) -> None:
    """Kill a test's kestrelpy by its pid, and any worker it left (a worker also leaves on its own when
    its supervisor's channel closes)."""
    if proc.poll() is None:
        proc.kill()
    proc.wait(10)


def get(port: str | int, path: str = "/", timeout: float = 10) -> tuple[int, str]:
    """One request on a fresh connection (`Connection: close`); returns the status and body."""
    with socket.create_connection(("127.0.0.1", int(port)), timeout=timeout) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode())
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    raw = b"".join(chunks)
    head, _, body = raw.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 "):
        raise ConnectionError(f"no response: {raw!r}")
    return int(head.split(b" ", 2)[1]), body.decode()


@dataclass
class SteadyClient:
    """`concurrency` threads sending one request after another until stopped; counts what happened."""

    port: int
    concurrency: int = 1
    path: str = "/"
    keep_alive: bool = False  # one persistent connection per thread (reopened after `connection: close`)
    pids: list[int] = field(default_factory=list)
    sent_at: list[float] = field(default_factory=list)  # when the request answered by pids[i] was sent
    failures: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __enter__(self) -> SteadyClient:
        for _ in range(self.concurrency):
            thread = threading.Thread(target=self._loop, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(15)

    def _loop(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        while not self._stop.is_set():
            sent = time.monotonic()
            try:
                if self.keep_alive:
                    conn.request("GET", self.path)
                    response = conn.getresponse()
                    status, body = response.status, response.read().decode()
                else:
                    status, body = get(self.port, self.path)
                outcome = body if status == 200 else f"status {status}"
            except (OSError, http.client.HTTPException) as exc:
                outcome = f"{type(exc).__name__}: {exc}"
                conn.close()
            with self._lock:
                if outcome.isdigit():
                    self.pids.append(int(outcome))
                    self.sent_at.append(sent)
                else:
                    self.failures.append(outcome)

    def wait_for_pid(self, wanted: int, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if wanted in self.pids:
                    return
            time.sleep(0.05)
        raise AssertionError(f"worker {wanted} never answered; saw {sorted(set(self.pids))}")

    def pids_sent_after(self, moment: float) -> set[int]:
        with self._lock:
            return {pid for pid, sent in zip(self.pids, self.sent_at, strict=True) if sent > moment}

    def wait_for_count(self, count: int, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        start = len(self.pids)
        while time.monotonic() < deadline:
            if len(self.pids) - start >= count:
                return
            time.sleep(0.05)
        raise AssertionError(f"fewer than {count} responses in {timeout} s")


def pids_answering(port: int, wanted: Sequence[int], tries: int = 400) -> set[int]:
    """Requests on fresh connections until every pid in `wanted` has answered (or `tries` run out)."""
    seen: set[int] = set()
    for _ in range(tries):
        seen.add(int(get(port)[1]))
        if set(wanted) <= seen:
            break
    return seen
