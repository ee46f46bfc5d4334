"""Leak attacks on a real loopback server: clients that vanish in the middle of a request body, of a
response, or behind a pipelined request, and a long run of ordinary requests to a real process. Whatever
the clients do, every request's app task must end, the connection must leave the registry, and the
process must not grow.

Each test is bounded in time; the in-process ones sample the server's loop from the test thread (the set
of live connections, `asyncio.all_tasks`) before and after the attack, while an ordinary client keeps
asking for /ok and must be answered 200 throughout.
"""

from __future__ import annotations

import asyncio
import re
import signal
import socket
import struct
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from kestrelpy.platform import uvloop_available
from tests.support.attackers import OrdinaryClient
from tests.support.live_server import LiveServer
from tests.support.waiting import WAIT, wait_until

Start = Callable[..., Any]

HERE = Path(__file__).parent
LISTENING = re.compile(rb"Listening on http://127\.0\.0\.1:(\d+)")

ATTACKERS = 200
STREAMERS = 100
SENT_BODY = b"b" * 1_000  # what each vanishing client sends of its body before it goes
# Half announce a body far longer than they send; half send one chunk of a chunked body and no more.
UPLOADS = [
    b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 1000000\r\n\r\n" + SENT_BODY,
    b"POST /upload HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3e8\r\n" + SENT_BODY + b"\r\n",
]
STREAM_CHUNK = b"x" * 1024
STREAM_CHUNKS = 2_000  # at STREAM_PAUSE apart: a stream outlives every wait in these tests
STREAM_PAUSE = 0.02
FLOODERS = 20  # clients that stop reading a response sent as fast as the app can
FLOOD_CHUNK = b"x" * 65536
FLOOD_RCVBUF = 4096  # their receive buffer: small, so the server's write buffer fills at once


# -- sampling the server's loop from the test thread ----------------------------------------------


def connection_count(live: LiveServer) -> int:
    return len(live.connections())


def task_count(live: LiveServer) -> int:
    """The number of tasks alive on the server's loop (the sampling task itself included, every time)."""

    async def count() -> int:
        return len(asyncio.all_tasks())

    assert live.loop is not None
    return asyncio.run_coroutine_threadsafe(count(), live.loop).result(WAIT)


def connect_all(port: int, requests: list[bytes], rcvbuf: int | None = None) -> dict[int, socket.socket]:
    """One connection per request, the request sent on it; keyed by the client port the app sees."""
    socks: dict[int, socket.socket] = {}
    try:
        for data in requests:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            socks[id(sock)] = sock  # closed below if a later connect fails
            if rcvbuf is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            sock.settimeout(WAIT)
            sock.connect(("127.0.0.1", port))
            sock.sendall(data)
    except BaseException:
        close_all(socks)
        raise
    return {sock.getsockname()[1]: sock for sock in socks.values()}


def close_all(socks: dict[int, socket.socket]) -> None:
    for sock in socks.values():
        sock.close()


def vanish(sock: socket.socket, reset: bool) -> None:
    """Close without a word; with `reset` the kernel sends RST instead of FIN (SO_LINGER with zero time)."""
    if reset:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def vanish_all(socks: dict[int, socket.socket]) -> None:
    """Half leave with FIN, half with RST."""
    for index, sock in enumerate(socks.values()):
        vanish(sock, reset=index % 2 == 1)


async def answer_ok(send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


def start_ordinary(live: LiveServer, raw_client: Start) -> OrdinaryClient:
    ordinary = OrdinaryClient(lambda: raw_client(live.port, timeout=5))
    ordinary.start()
    return ordinary


def stop_ordinary(ordinary: OrdinaryClient, during: str) -> None:
    ordinary.stop.set()
    ordinary.join(WAIT)
    assert not ordinary.is_alive(), "the ordinary client did not stop"
    assert not ordinary.failures, ordinary.failures[:3]
    print(f"ordinary client {during}: {len(ordinary.latencies)} requests, p99 {ordinary.p99() * 1000:.1f} ms")


class AttackedApp:
    """/ok answers at once; the attack's requests go to `attacked`, whose tasks are held here.

    Held, so that a task the server leaks stays pending and counted instead of being collected as
    garbage (a pending task nothing else refers to is destroyed at the next collection, which would hide
    the leak from `asyncio.all_tasks`).
    """

    def __init__(self) -> None:
        self.tasks: list[asyncio.Task[Any]] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] == "/ok":
            await answer_ok(send)
            return
        task = asyncio.current_task()
        assert task is not None
        self.tasks.append(task)
        await self.attacked(scope["client"][1], receive, send)

    async def attacked(self, port: int, receive: Any, send: Any) -> None:
        raise NotImplementedError


def assert_back_to_baseline(live: LiveServer, app: AttackedApp, connections: int, tasks: int) -> None:
    """Every connection has left the registry and every task the attack caused has ended."""
    returned = wait_until(lambda: connection_count(live) == connections and task_count(live) == tasks)
    assert returned, (
        f"connections {connection_count(live)} (baseline {connections}), tasks {task_count(live)} (baseline {tasks})"
    )
    assert all(task.done() for task in app.tasks)


def served_meanwhile(ordinary: OrdinaryClient, since: int, requests: int = 20) -> bool:
    """Liveness, not speed: the ordinary client has had `requests` more answers since `since`."""
    return wait_until(lambda: len(ordinary.latencies) >= since + requests)


# -- clients vanishing in the middle of a request body ---------------------------------------------


class BodyReader(AttackedApp):
    """Reads the request body, noting who began sending and who left."""

    def __init__(self) -> None:
        super().__init__()
        self.reading: set[int] = set()  # client ports whose first body bytes reached the app
        self.disconnected: list[int] = []  # client ports whose receive() returned http.disconnect
        self.completed: list[int] = []

    async def attacked(self, port: int, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                self.disconnected.append(port)
                return
            if message["body"]:
                self.reading.add(port)
            if not message["more_body"]:
                self.completed.append(port)
                await answer_ok(send)
                return


def test_clients_vanishing_mid_body_end_their_app_tasks_and_connections(
    running_server: Start, raw_client: Start
) -> None:
    """200 clients each begin a body (a 1 MB Content-Length or a chunked one), send 1 KB of it, and
    vanish (half with FIN, half with RST) while the app waits in receive(). Each app's receive() returns
    http.disconnect, the live connections and the loop's tasks return to their counts before the attack,
    and an ordinary client is answered 200 throughout."""
    app = BodyReader()
    live = running_server(app)
    connections, tasks = connection_count(live), task_count(live)
    ordinary = start_ordinary(live, raw_client)
    attackers: dict[int, socket.socket] = {}
    try:
        # every framing meets both ways of vanishing
        attackers = connect_all(live.port, [UPLOADS[index // 2 % 2] for index in range(ATTACKERS)])
        assert wait_until(lambda: app.reading == set(attackers)), f"{len(app.reading)} apps began reading"
        assert served_meanwhile(ordinary, 0)  # while every attacker holds a body open
        since = len(ordinary.latencies)
        vanish_all(attackers)
        assert wait_until(lambda: len(app.disconnected) >= ATTACKERS), f"{len(app.disconnected)} disconnects"
        assert served_meanwhile(ordinary, since)
    finally:
        close_all(attackers)
        stop_ordinary(ordinary, "while clients vanished mid-body")
    assert sorted(app.disconnected) == sorted(attackers)  # each request exactly once
    assert not app.completed
    assert_back_to_baseline(live, app, connections, tasks)


# -- clients vanishing in the middle of a streamed response ----------------------------------------


class Streamer(AttackedApp):
    """Streams a long chunked response, `chunk` after `chunk` with `pause` seconds between them.

    When the client has gone, `send` must raise an OSError (ASGI HTTP spec: a server-specific subclass)
    and `receive` must then return http.disconnect; both are recorded per client port.
    """

    def __init__(self, chunk: bytes, pause: float) -> None:
        super().__init__()
        self.chunk = chunk
        self.pause = pause
        self.streaming: set[int] = set()
        self.send_raised: dict[int, type[BaseException]] = {}
        self.after_raise: dict[int, str] = {}  # what receive() returned once send had raised
        self.finished: list[int] = []

    async def attacked(self, port: int, receive: Any, send: Any) -> None:
        await receive()  # the (empty) request body
        await send({"type": "http.response.start", "status": 200, "headers": []})
        self.streaming.add(port)
        try:
            for _ in range(STREAM_CHUNKS):
                await send({"type": "http.response.body", "body": self.chunk, "more_body": True})
                await asyncio.sleep(self.pause)
        except OSError as exc:
            self.send_raised[port] = type(exc)
            self.after_raise[port] = (await receive())["type"]
            return
        self.finished.append(port)
        await send({"type": "http.response.body", "body": b""})


def held_back_count(live: LiveServer) -> int:
    """Connections whose transport has paused the app's writes (its buffer is over the high-water mark)."""
    server = live.server
    assert server is not None

    def count() -> int:
        state = server._state
        return 0 if state is None else sum(1 for conn in state.connections if conn.flow.write_paused)

    return live.call(count)


def assert_sends_stopped(app: Streamer, attackers: dict[int, socket.socket]) -> None:
    assert sorted(app.send_raised) == sorted(attackers)
    assert all(issubclass(kind, OSError) for kind in app.send_raised.values())
    assert set(app.after_raise.values()) == {"http.disconnect"}
    assert not app.finished


def test_clients_vanishing_mid_response_stop_the_apps_send(running_server: Start, raw_client: Start) -> None:
    """100 clients each start a long streamed response, read its first bytes and vanish (half with FIN,
    half with RST). Each app's send() raises an OSError and its receive() then returns http.disconnect;
    the live connections and the loop's tasks return to their counts before the attack, and an ordinary
    client is answered 200 throughout."""
    app = Streamer(STREAM_CHUNK, STREAM_PAUSE)
    live = running_server(app)
    connections, tasks = connection_count(live), task_count(live)
    ordinary = start_ordinary(live, raw_client)
    attackers: dict[int, socket.socket] = {}
    try:
        attackers = connect_all(live.port, [b"GET /stream HTTP/1.1\r\nHost: t\r\n\r\n"] * STREAMERS)
        for sock in attackers.values():
            assert sock.recv(4096).startswith(b"HTTP/1.1 200 ")  # a little of the response, no more
        assert wait_until(lambda: app.streaming == set(attackers)), f"{len(app.streaming)} apps streaming"
        assert served_meanwhile(ordinary, 0)  # while every stream is running
        since = len(ordinary.latencies)
        vanish_all(attackers)
        assert wait_until(lambda: len(app.after_raise) >= STREAMERS), f"{len(app.after_raise)} sends stopped"
        assert served_meanwhile(ordinary, since)
    finally:
        close_all(attackers)
        stop_ordinary(ordinary, "while clients vanished mid-response")
    assert_sends_stopped(app, attackers)
    assert_back_to_baseline(live, app, connections, tasks)


def test_clients_vanishing_while_send_waits_for_the_buffer_to_drain(running_server: Start, raw_client: Start) -> None:
    """20 clients each start a response the app sends as fast as it can, read its first bytes and stop
    reading, so the server's write buffer fills and every app waits in send() for it to drain; then they
    vanish (half with FIN, half with RST). Each waiting send() raises an OSError and receive() then
    returns http.disconnect; connections and tasks return to their counts before the attack, and an
    ordinary client is answered 200 throughout."""
    app = Streamer(FLOOD_CHUNK, 0.0)
    live = running_server(app)
    connections, tasks = connection_count(live), task_count(live)
    ordinary = start_ordinary(live, raw_client)
    attackers: dict[int, socket.socket] = {}
    try:
        attackers = connect_all(live.port, [b"GET /flood HTTP/1.1\r\nHost: t\r\n\r\n"] * FLOODERS, FLOOD_RCVBUF)
        for sock in attackers.values():
            assert sock.recv(4096).startswith(b"HTTP/1.1 200 ")
        assert wait_until(lambda: held_back_count(live) == FLOODERS), f"{held_back_count(live)} held back"
        assert served_meanwhile(ordinary, 0)  # while every flood is held back
        since = len(ordinary.latencies)
        vanish_all(attackers)
        assert wait_until(lambda: len(app.after_raise) >= FLOODERS), f"{len(app.after_raise)} sends stopped"
        assert served_meanwhile(ordinary, since)
    finally:
        close_all(attackers)
        stop_ordinary(ordinary, "while clients vanished with the write buffer full")
    assert_sends_stopped(app, attackers)
    assert_back_to_baseline(live, app, connections, tasks)


# -- clients vanishing behind a pipelined request -------------------------------------------------

POLLERS = 20
POLL_LIMIT = 3.0  # how long the long poll waits; the heartbeat (one beat a second) must notice first
PIPELINED = b"GET /poll HTTP/1.1\r\nHost: t\r\n\r\nGET /ok HTTP/1.1\r\nHost: t\r\n\r\n"  # /ok waits its turn


class LongPoll(AttackedApp):
    """A long poll that writes nothing until the client leaves (or POLL_LIMIT passes, then answers)."""

    def __init__(self) -> None:
        super().__init__()
        self.waiting: set[int] = set()
        self.left: list[int] = []  # receive() returned http.disconnect
        self.timed_out: list[int] = []

    async def attacked(self, port: int, receive: Any, send: Any) -> None:
        await receive()  # the (empty) request body
        self.waiting.add(port)
        try:
            message = await asyncio.wait_for(receive(), POLL_LIMIT)
        except asyncio.TimeoutError:
            self.timed_out.append(port)
            try:
                await answer_ok(send)
            except OSError:
                pass
            return
        if message["type"] == "http.disconnect":
            self.left.append(port)


def test_clients_vanishing_behind_a_pipelined_request_are_noticed(running_server: Start) -> None:
    """20 clients each pipeline /ok behind a long poll (an app waiting in receive() for the client to
    leave) and vanish, half with FIN, half with RST. Reading is paused while /ok is queued, yet each long
    poll's receive() must return http.disconnect before its own time runs out, and the connections and
    the loop's tasks return to their counts before the attack."""
    app = LongPoll()
    live = running_server(app)
    connections, tasks = connection_count(live), task_count(live)
    attackers: dict[int, socket.socket] = {}
    try:
        attackers = connect_all(live.port, [PIPELINED] * POLLERS)
        assert wait_until(lambda: app.waiting == set(attackers)), f"{len(app.waiting)} long polls waiting"
        vanish_all(attackers)
        ended = wait_until(lambda: len(app.left) + len(app.timed_out) >= POLLERS, POLL_LIMIT + WAIT)
        assert ended, f"{len(app.left) + len(app.timed_out)} of {POLLERS} long polls ended"
    finally:
        close_all(attackers)
    assert not app.timed_out, f"{len(app.timed_out)} of {POLLERS} long polls never saw their client leave"
    assert sorted(app.left) == sorted(attackers)
    assert_back_to_baseline(live, app, connections, tasks)


# -- 100,000 requests to a real process ------------------------------------------------------------


class Process:
    """A `kestrelpy` process on a free loopback port, its log in a file (so it can never block on a pipe)."""

    def __init__(self, proc: subprocess.Popen[bytes], log: Path) -> None:
        self.proc = proc
        self.log = log
        self.port = 0

    def wait_listening(self) -> None:
        def listening() -> bool:
            found = LISTENING.search(self.log.read_bytes())
            if found:
                self.port = int(found.group(1))
            return found is not None or self.proc.poll() is not None

        assert wait_until(listening, 15) and self.port, self.log.read_text()

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS line")


@pytest.fixture
def kestrelpy_process(tmp_path: Path) -> Iterator[Callable[..., Process]]:
    """`kestrelpy_process(*args)`: the console script serving leak_apps, listening; stopped by its PID."""
    started: list[Process] = []

    def start(*args: str) -> Process:
        log = tmp_path / f"server-{len(started)}.log"
        script = Path(sys.executable).with_name("kestrelpy")
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [str(script), *args, "--host", "127.0.0.1", "--port", "0", "--app-dir", str(HERE)],
                stdout=subprocess.DEVNULL,
                stderr=out,
            )
        process = Process(proc, log)
        started.append(process)
        process.wait_listening()
        return process

    yield start
    for process in started:
        if process.proc.poll() is None:
            process.proc.send_signal(signal.SIGTERM)
            try:
                process.proc.wait(WAIT)
            except subprocess.TimeoutExpired:
                process.proc.kill()
                process.proc.wait(WAIT)


HOSTS = 1_000  # more Host values than the server remembers as known-valid: that cache must stay bounded
STATUS_LINE = b"HTTP/1.1 "
STATUS_200 = b"HTTP/1.1 200 "
CONNECTIONS = 8
PIPELINE = 125  # requests sent back to back on one connection before its answers are read


class Counter:
    """Counts status lines in a byte stream read in pieces (a line may straddle two reads)."""

    def __init__(self, marker: bytes) -> None:
        self.marker = marker
        self.count = 0
        self._tail = b""

    def feed(self, data: bytes) -> None:
        data = self._tail + data
        self.count += data.count(self.marker)
        self._tail = data[-(len(self.marker) - 1) :]  # too short to hold a whole marker: none counted twice


def request(index: int) -> bytes:
    """A request of its own (path, query, Host); every fourth a POST with a small body for the app to read."""
    head = b"/leak/%d?n=%d HTTP/1.1\r\nHost: h%d.test\r\nUser-Agent: leak-test\r\n" % (index, index, index % HOSTS)
    if index % 4:
        return b"GET " + head + b"\r\n"
    return b"POST " + head + b"Content-Length: 16\r\n\r\n" + b"%016d" % index


def hammer(port: int, total: int) -> tuple[int, int]:
    """Send `total` pipelined keep-alive requests over CONNECTIONS sockets; return (responses, 200s)."""
    rounds, rest = divmod(total, CONNECTIONS * PIPELINE)
    assert not rest, "a whole number of rounds"
    socks = [socket.create_connection(("127.0.0.1", port), timeout=WAIT) for _ in range(CONNECTIONS)]
    counters = [(Counter(STATUS_LINE), Counter(STATUS_200)) for _ in socks]
    try:
        sent = 0
        for round_number in range(1, rounds + 1):
            for sock in socks:
                sock.sendall(b"".join(request(index) for index in range(sent, sent + PIPELINE)))
                sent += PIPELINE
            for sock, (responses, oks) in zip(socks, counters, strict=True):
                while responses.count < round_number * PIPELINE:
                    data = sock.recv(65536)
                    assert data, f"the server closed a connection after {responses.count} responses"
                    responses.feed(data)
                    oks.feed(data)
    finally:
        for sock in socks:
            sock.close()
    return sum(responses.count for responses, _ in counters), sum(oks.count for _, oks in counters)


@pytest.mark.slow
def test_100000_requests_leave_the_resident_set_flat(kestrelpy_process: Start, parser: str) -> None:
    """After 10,000 warm-up requests, 100,000 more (keep-alive, pipelined, several connections, each
    request with its own path and one of 1,000 Hosts) are all answered 200 and the server's resident set
    grows by less than 4 MiB, about 40 bytes a request: nothing is kept per request."""
    if not uvloop_available():
        pytest.skip("uvloop is not installed")
    if not Path("/proc/self/status").exists():
        pytest.skip("the resident set is read from /proc")
    server = kestrelpy_process("leak_apps:hello", "--http", parser, "--loop", "uvloop", "--no-access-log")
    assert hammer(server.port, 10_000) == (10_000, 10_000)
    before = server.rss_kib()
    assert hammer(server.port, 100_000) == (100_000, 100_000)
    after = server.rss_kib()
    print(f"{parser}: VmRSS {before} KiB -> {after} KiB after 100,000 requests ({after - before:+d} KiB)")
    assert after - before < 4 * 1024
