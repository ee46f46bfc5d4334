"""Shared fixtures: the parser x loop matrix, an in-process server on a loopback port, a raw HTTP client.

`running_server(app, **config)` starts a real Server (tests/support/live_server.py) on 127.0.0.1 port 0
and stops it (graceful shutdown, then a forced one if that hangs) when the test ends. `raw_client(port)`
opens a RawClient (tests/support/raw_client.py) that is closed when the test ends. With `manual_clock`,
the servers a test starts keep time by a ManualClock (tests/support/manual_clock.py) and sweep their
connections only on `manual_clock.beat()`.
"""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from kestrelpy.config import Config, Limits
from kestrelpy.platform import uvloop_available
from tests.support.live_server import LiveServer
from tests.support.manual_clock import ManualClock
from tests.support.raw_client import RawClient

PARSERS = ["httptools", "h11"]
LOOPS = ["uvloop", "asyncio"]


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist, known only when it is loaded
def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """`-n auto`: one worker more than there are CPUs. Most tests spend their time waiting on sockets,
    timers and child processes, so a spare worker keeps the CPUs busy; more would only slow the tests
    that measure latency."""
    return (os.cpu_count() or 1) + 1


@pytest.fixture(params=PARSERS)
def parser(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(params=LOOPS)
def loop_kind(request: pytest.FixtureRequest) -> str:
    if request.param == "uvloop" and not uvloop_available():
        pytest.skip("uvloop is not installed")
    return str(request.param)


# -- the in-process server ---------------------------------------------------------------------------


@pytest.fixture
def serve_app(request: pytest.FixtureRequest) -> Iterator[Callable[..., LiveServer]]:
    """`serve_app(app, loop_kind="asyncio", **config)`: a started LiveServer, stopped at teardown.

    Config overrides may include `keep_alive_timeout`, which goes to Limits. `sockets=[...]` serves
    already-listening sockets; `wait=False` returns before startup completes (see `wait_started`).
    """
    started: list[LiveServer] = []
    # A test that asks for `manual_clock` gets servers that keep time by it (see that fixture).
    clock = request.getfixturevalue("manual_clock") if "manual_clock" in request.fixturenames else None

    def start(
        app: Any,
        *,
        loop_kind: str = "asyncio",
        sockets: list[socket.socket] | None = None,
        wait: bool = True,
        **overrides: Any,
    ) -> LiveServer:
        overrides.setdefault("lifespan", "auto")
        overrides.setdefault("access_log", False)
        if "keep_alive_timeout" in overrides:
            overrides["limits"] = Limits(keep_alive_timeout=overrides.pop("keep_alive_timeout"))
        config = Config(app=app, host="127.0.0.1", port=0, loop=loop_kind, **overrides)
        live = LiveServer(config, loop_kind, sockets, clock)
        started.append(live)
        return live.start(wait)

    yield start
    errors = []
    for live in started:
        try:
            live.stop()
        except AssertionError as exc:
            errors.append(str(exc))
    assert not errors, errors


@pytest.fixture
def running_server(serve_app: Callable[..., LiveServer], parser: str, loop_kind: str) -> Callable[..., LiveServer]:
    """`running_server(app, **config)` on this test's parser and loop."""

    def start(app: Any, **overrides: Any) -> LiveServer:
        overrides.setdefault("http", parser)
        return serve_app(app, loop_kind=loop_kind, **overrides)

    return start


@pytest.fixture
def manual_clock() -> ManualClock:
    """Servers this test starts (serve_app, running_server) read this clock, and beat only on
    `manual_clock.beat()`: Server's clock and heartbeat seams."""
    return ManualClock()


# -- a raw HTTP/1.1 client -----------------------------------------------------------------------------


@pytest.fixture
def raw_client() -> Iterator[Callable[..., RawClient]]:
    """`raw_client(port, timeout=..., rcvbuf=...)`: a RawClient closed at teardown."""
    clients: list[RawClient] = []

    def connect(port: int, **kwargs: Any) -> RawClient:
        client = RawClient(port, **kwargs)
        clients.append(client)
        return client

    yield connect
    for client in clients:
        client.close()


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[str]]]:
    """kestrelpy processes a test starts, killed if the test leaves them running."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
