"""Shared fixtures: the parser x loop matrix, an in-process server on a loopback port, a raw HTTP client.

`running_server(app, **config)` starts a real Server on 127.0.0.1 port 0 in a background thread that runs
its own event loop of the chosen kind, waits on the server's `started` event, and stops it (graceful
shutdown, then a forced one if that hangs) when the test ends. `raw_client(port)` opens a plain socket
that can send any bytes and read responses back, pipelined or not, chunked or close-delimited.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pytest

from kestrelpy.config import Config, Limits
from kestrelpy.platform import loop_factory, uvloop_available
from kestrelpy.server import Server

T = TypeVar("T")

# How long a test waits for anything that should happen promptly (a response, a close, a start).
WAIT = 10.0

PARSERS = ["httptools", "h11"]
LOOPS = ["uvloop", "asyncio"]


@pytest.fixture(params=PARSERS)
def parser(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(params=LOOPS)
def loop_kind(request: pytest.FixtureRequest) -> str:
    if request.param == "uvloop" and not uvloop_available():
        pytest.skip("uvloop is not installed")
    return str(request.param)


# -- the in-process server ---------------------------------------------------------------------------


class LiveServer:
    """A Server running in its own thread and event loop. Methods here are called from the test thread."""

    def __init__(self, config: Config, loop_kind: str, sockets: list[socket.socket] | None = None) -> None:
        self.config = config
        self.sockets = sockets  # pre-bound listening sockets, handed to serve() (the caller closes them)
        self.loop_kind = loop_kind
        self.server: Server | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.error: BaseException | None = None
        self._new_loop = loop_factory(loop_kind)
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"kestrelpy-{loop_kind}", daemon=True)

    # The server thread.

    def _run(self) -> None:
        loop = self._new_loop()
        self.loop = loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._main())
        except BaseException as exc:
            self.error = exc
        finally:
            try:
                loop.run_until_complete(loop.shutdown_asyncgens())
            finally:
                asyncio.set_event_loop(None)
                loop.close()
                self._ready.set()  # a failed start is reported once the thread has cleaned up

    async def _main(self) -> None:
        server = Server(self.config)
        self.server = server
        serving = asyncio.ensure_future(server.serve(self.sockets))
        started = asyncio.ensure_future(server.started.wait())
        await asyncio.wait({serving, started}, return_when=asyncio.FIRST_COMPLETED)
        if started.done():
            self._ready.set()
        else:
            started.cancel()
        await serving

    # The test thread.

    def start(self, wait: bool = True) -> LiveServer:
        """Start the thread; unless `wait` is false, return once `started` is set (or raise serve()'s error)."""
        self._thread.start()
        if not wait:
            return self
        if not self._ready.wait(WAIT):
            raise AssertionError(f"the server did not start within {WAIT}s")
        if self.error is not None:
            self._thread.join(WAIT)
            raise self.error
        assert self.server is not None and self.server.addresses, "started without a bound address"
        return self

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.addresses[0][1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_started(self, timeout: float = WAIT) -> bool:
        return self._ready.wait(timeout) and self.error is None

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def call(self, fn: Callable[[], T], timeout: float = WAIT) -> T:
        """Run `fn` on the server's loop (where connection objects may be touched) and return its result."""
        assert self.loop is not None
        result: Future[T] = Future()

        def run() -> None:
            try:
                result.set_result(fn())
            except BaseException as exc:
                result.set_exception(exc)

        self.loop.call_soon_threadsafe(run)
        return result.result(timeout)

    def connections(self) -> list[Any]:
        """The live connection objects (read on the server's loop)."""
        server = self.server
        assert server is not None
        return self.call(lambda: list(server._state.connections) if server._state is not None else [])

    def request_shutdown(self) -> None:
        if self.loop is None or self.server is None:
            raise AssertionError("the server thread has not created its loop yet")
        try:
            self.loop.call_soon_threadsafe(self.server.request_shutdown)
        except RuntimeError:  # the loop has already closed: serve() returned on its own
            if self.running:
                raise

    def join(self, timeout: float = WAIT) -> bool:
        """Wait for serve() to return; True when it did."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def stop(self, timeout: float = 5.0) -> None:
        """Graceful shutdown; if that hangs, a forced one; raise if even that does not end the server."""
        if not self.running:
            return
        self.request_shutdown()
        if self.join(timeout):
            return
        self.request_shutdown()  # a second request closes every connection at once
        if not self.join(timeout):
            raise AssertionError("the server did not stop after a forced shutdown")
        raise AssertionError(f"graceful shutdown did not finish within {timeout}s")


@pytest.fixture
def serve_app() -> Iterator[Callable[..., LiveServer]]:
    """`serve_app(app, loop_kind="asyncio", **config)`: a started LiveServer, stopped at teardown.

    Config overrides may include `keep_alive_timeout`, which goes to Limits. `sockets=[...]` serves
    already-listening sockets; `wait=False` returns before startup completes (see `wait_started`).
    """
    started: list[LiveServer] = []

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
        live = LiveServer(config, loop_kind, sockets)
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


# -- a raw HTTP/1.1 client -----------------------------------------------------------------------------


@dataclass
class RawResponse:
    status: int
    reason: str
    version: str
    headers: list[tuple[str, str]]  # names lower-cased, in wire order
    body: bytes
    head: bytes  # the status line and header lines exactly as received, blank line included
    chunked: bool = False
    chunks: list[bytes] = field(default_factory=list)
    trailers: list[tuple[str, str]] = field(default_factory=list)
    complete: bool = True  # False when the connection ended before the framing said the body was done

    def header(self, name: str) -> str | None:
        values = self.all(name)
        return values[0] if values else None

    def all(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key == name.lower()]

    def names(self) -> list[str]:
        return [key for key, _ in self.headers]


class ConnectionEnded(Exception):
    """The peer closed (or reset) the connection before a complete response arrived."""


class RawClient:
    """A blocking socket speaking HTTP/1.1 by hand, with a short timeout on every read."""

    def __init__(self, port: int, timeout: float = WAIT, rcvbuf: int | None = None) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(timeout)
        self.sock.connect(("127.0.0.1", port))
        self.timeout = timeout
        self.buffer = bytearray()
        self.eof = False

    @property
    def local_port(self) -> int:
        return int(self.sock.getsockname()[1])

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def close(self) -> None:
        self.sock.close()

    def _fill(self) -> bool:
        """One read into the buffer; False at EOF or reset."""
        if self.eof:
            return False
        try:
            data = self.sock.recv(65536)
        except (ConnectionResetError, ConnectionAbortedError):
            data = b""
        if not data:
            self.eof = True
            return False
        self.buffer += data
        return True

    def _line(self) -> bytes:
        while True:
            end = self.buffer.find(b"\r\n")
            if end >= 0:
                line = bytes(self.buffer[:end])
                del self.buffer[: end + 2]
                return line
            if not self._fill():
                raise ConnectionEnded(f"connection ended inside a line: {bytes(self.buffer)!r}")

    def _exactly(self, n: int) -> bytes:
        while len(self.buffer) < n:
            if not self._fill():
                raise ConnectionEnded(f"connection ended after {len(self.buffer)} of {n} bytes")
        data = bytes(self.buffer[:n])
        del self.buffer[:n]
        return data

    def read_until_close(self) -> bytes:
        """Everything left on the connection (the buffer included) up to the peer's close."""
        while self._fill():
            pass
        data = bytes(self.buffer)
        self.buffer.clear()
        return data

    def wait_closed(self, timeout: float = WAIT) -> bool:
        """True once the peer has closed within `timeout`; bytes read meanwhile stay in the buffer."""
        deadline = time.monotonic() + timeout
        try:
            while not self.eof:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self.sock.settimeout(remaining)
                self._fill()
        except TimeoutError:
            return False
        finally:
            self.sock.settimeout(self.timeout)
        return True

    def nothing_within(self, seconds: float) -> bool:
        """True when no byte (and no close) arrives within `seconds`: for checking that something is NOT sent."""
        if self.buffer or self.eof:
            return False
        self.sock.settimeout(seconds)
        try:
            self._fill()
        except TimeoutError:
            return True
        finally:
            self.sock.settimeout(self.timeout)
        return False

    def read_response(self, *, head_request: bool = False) -> RawResponse:
        """One response from the connection (an interim 1xx is returned on its own)."""
        raw_head = bytearray()
        status_line = self._line()
        if not status_line and self.eof:
            raise ConnectionEnded("no response")
        raw_head += status_line + b"\r\n"
        version, _, rest = status_line.decode("latin-1").partition(" ")
        code, _, reason = rest.partition(" ")
        headers: list[tuple[str, str]] = []
        while True:
            line = self._line()
            raw_head += line + b"\r\n"
            if not line:
                break
            name, _, value = line.decode("latin-1").partition(":")
            headers.append((name.strip().lower(), value.strip()))
        response = RawResponse(int(code), reason, version, headers, b"", bytes(raw_head))
        status = response.status
        if head_request or status < 200 or status in (204, 304):
            return response
        if "chunked" in (response.header("transfer-encoding") or "").lower():
            response.chunked = True
            try:
                self._read_chunks(response)
            except ConnectionEnded:
                response.complete = False
                response.body = b"".join(response.chunks)
            return response
        length = response.header("content-length")
        if length is not None:
            try:
                response.body = self._exactly(int(length))
            except ConnectionEnded:
                response.complete = False
                response.body = self.read_until_close()
            return response
        response.body = self.read_until_close()
        return response

    def _read_chunks(self, response: RawResponse) -> None:
        while True:
            size_line = self._line()
            size = int(size_line.split(b";")[0].strip(), 16)
            if size == 0:
                break
            response.chunks.append(self._exactly(size))
            if self._exactly(2) != b"\r\n":
                raise AssertionError("chunk not followed by CRLF")
        response.body = b"".join(response.chunks)
        while True:
            line = self._line()
            if not line:
                return
            name, _, value = line.decode("latin-1").partition(":")
            response.trailers.append((name.strip().lower(), value.strip()))

    def request(self, method: str = "GET", path: str = "/", headers: str = "", body: bytes = b"") -> RawResponse:
        """Send one HTTP/1.1 request (Host included; Content-Length when there is a body) and read its answer."""
        self.send(self.request_bytes(method, path, headers, body))
        return self.read_response(head_request=method == "HEAD")

    @staticmethod
    def request_bytes(method: str = "GET", path: str = "/", headers: str = "", body: bytes = b"") -> bytes:
        """A well-formed HTTP/1.1 request; `headers` are extra `Name: value\\r\\n` lines."""
        length = f"Content-Length: {len(body)}\r\n" if body or method in ("POST", "PUT") else ""
        return f"{method} {path} HTTP/1.1\r\nHost: test\r\n{length}{headers}\r\n".encode("latin-1") + body


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
