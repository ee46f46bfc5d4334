"""A kestrelpy process started by a test, whose log is read line by line as the test waits for it."""

from __future__ import annotations

import os
import re
import selectors
import subprocess
import sys
import time
from pathlib import Path

LISTENING = re.compile(r"Listening on http://127\.0\.0\.1:(\d+)")


def kestrelpy_in(
    cwd: Path, *args: str, env: dict[str, str] | None = None, stdout: int = subprocess.PIPE
) -> subprocess.Popen[str]:
    """`python -m kestrelpy ARGS` started in `cwd` (where a kestrelpy.toml may be), with no KESTRELPY_*
    variable or WEB_CONCURRENCY of the test run's environment, plus `env`."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("KESTRELPY_") and k != "WEB_CONCURRENCY"}
    return subprocess.Popen(
        [sys.executable, "-m", "kestrelpy", *args],
        cwd=cwd,
        stdout=stdout,
        stderr=subprocess.PIPE,
        text=True,
        env={**environ, **(env or {})},
    )


class Running:
    """A kestrelpy process whose stderr is read line by line as the test waits for what it expects."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stderr is not None
        self.proc = proc
        self.port = 0
        self.log: list[str] = []
        self._fd = proc.stderr.fileno()
        self._pending = b""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def expect(self, pattern: str, timeout: float = 15) -> re.Match[str]:
        """Read stderr until a line matches `pattern` (raw reads: a buffered readline hides lines)."""
        regex = re.compile(pattern)
        for line in self.log:
            if found := regex.search(line):
                return found
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as sel:
            sel.register(self._fd, selectors.EVENT_READ)
            while time.monotonic() < deadline:
                if not sel.select(deadline - time.monotonic()):
                    break
                data = os.read(self._fd, 65536)
                if not data:
                    break
                *lines, self._pending = (self._pending + data).split(b"\n")
                seen = len(self.log)
                self.log.extend(raw.decode() + "\n" for raw in lines)  # all of them: later calls search them
                for line in self.log[seen:]:
                    if found := regex.search(line):
                        return found
        raise AssertionError(f"no line matching {pattern!r}:\n" + "".join(self.log))

    def finish(self, timeout: float = 15) -> tuple[int, str]:
        """Wait for exit; return the exit code and everything written to stderr."""
        _, rest = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, "".join(self.log) + self._pending.decode() + rest


def wait_for_log_line(proc: subprocess.Popen[bytes], pattern: str, timeout: float = 15) -> str:
    """Read a process's stderr until `pattern` matches; its first group."""
    assert proc.stderr is not None
    seen = b""
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stderr.fileno(), selectors.EVENT_READ)
        while time.monotonic() < deadline and selector.select(deadline - time.monotonic()):
            data = os.read(proc.stderr.fileno(), 65536)
            if not data:
                break
            seen += data
            if found := re.search(pattern, seen.decode(errors="replace")):
                return found[1]
    raise AssertionError(f"no line matching {pattern!r}:\n{seen.decode(errors='replace')}")
