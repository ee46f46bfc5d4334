"""Attacks on a real loopback server, each bounded in time and count, with an ordinary client measuring
its latency throughout: the server must cut the attacker off and keep answering everyone else."""

from __future__ import annotations

import errno
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from kestrelpy.config import Limits

Start = Callable[..., Any]


def recording_app(calls: list[str]) -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        calls.append(scope["path"])
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})

    return app


class OrdinaryClient(threading.Thread):
    """Keeps asking for /ok on keep-alive connections (a new one every 20 requests), timing each."""

    def __init__(self, connect: Callable[[], Any]) -> None:
        super().__init__(daemon=True)
        self.connect = connect
        self.latencies: list[float] = []
        self.failures: list[str] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            client = self.connect()
            try:
                for _ in range(20):
                    started = time.perf_counter()
                    response = client.request("GET", "/ok")
                    self.latencies.append(time.perf_counter() - started)
                    if response.status != 200:
                        self.failures.append(f"status {response.status}")
                    if self.stop.wait(0.005):
                        break
            except Exception as exc:  # every failure is reported by the test
                self.failures.append(repr(exc))
            finally:
                client.close()

    def p99(self) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def test_slowloris_heads_get_408_while_others_are_served(running_server: Start, raw_client: Start) -> None:
    """500 connections each dribble a never-ending head; every one is answered 408 and closed within the
    request-headers timeout (plus the heartbeat's second), none reaches the app, and an ordinary client
    keeps being answered meanwhile."""
    calls: list[str] = []
    live = running_server(recording_app(calls), limits=Limits(request_headers_timeout=1.0, keep_alive_timeout=30))
    ordinary = OrdinaryClient(lambda: raw_client(live.port, timeout=5))
    ordinary.start()
    attackers = []
    for _ in range(500):
        sock = socket.create_connection(("127.0.0.1", live.port))
        sock.setblocking(False)
        sock.send(b"GET /slow HTTP/1.1\r\nHost: t\r\n")
        attackers.append(sock)
    received = {sock: b"" for sock in attackers}
    open_socks = set(attackers)
    started = time.monotonic()
    try:
        while open_socks and time.monotonic() - started < 8:
            for sock in list(open_socks):
                try:
                    data = sock.recv(4096)
                except BlockingIOError:
                    data = None
                except ConnectionResetError:
                    data = b""
                if data == b"":
                    open_socks.discard(sock)
                    continue
                if data:
                    received[sock] += data
                try:
                    sock.send(b"X-Drip: 1\r\n")  # one more header line, never the blank line
                except BlockingIOError:
                    pass
                except OSError as exc:
                    if exc.errno not in (errno.EPIPE, errno.ECONNRESET):
                        raise
            time.sleep(0.2)
        elapsed = time.monotonic() - started
    finally:
        ordinary.stop.set()
        ordinary.join(10)
        for sock in attackers:
            sock.close()
    assert not open_socks, f"{len(open_socks)} slow connections still open after {elapsed:.1f}s"
    assert elapsed < 5  # 1 s timeout, up to 2 heartbeats to notice, and scheduling slack
    answered = [data for data in received.values() if data.startswith(b"HTTP/1.1 408 Request Timeout\r\n")]
    assert len(answered) >= 490, f"only {len(answered)} of 500 read their 408"  # a few may see a reset
    assert "/slow" not in calls
    assert not ordinary.failures, ordinary.failures[:3]
    assert len(ordinary.latencies) > 20
    p99 = ordinary.p99()
    print(f"ordinary client during slowloris: {len(ordinary.latencies)} requests, p99 {p99 * 1000:.1f} ms")
    assert p99 < 1.0


def test_connection_flood_beyond_the_limit_gets_503_while_others_are_served(
    running_server: Start, raw_client: Start
) -> None:
    """With --limit-concurrency 50, 300 extra connections are each answered 503 and closed, the ones
    already open keep working, and the app sees none of the flood's requests."""
    calls: list[str] = []
    live = running_server(recording_app(calls), limits=Limits(max_concurrent_connections=50))
    holders = [raw_client(live.port, timeout=5) for _ in range(49)]
    for holder in holders[:5]:
        assert holder.request("GET", "/held").status == 200
    ordinary = raw_client(live.port, timeout=5)  # the 50th: within the limit
    assert ordinary.request("GET", "/ok").status == 200
    latencies = []
    statuses = []
    for _ in range(300):
        flood = raw_client(live.port, timeout=5)
        flood.send(b"GET /flood HTTP/1.1\r\nHost: t\r\n\r\n")
        statuses.append(flood.read_response().status)
        assert flood.wait_closed()
        flood.close()
        started = time.perf_counter()
        assert ordinary.request("GET", "/ok").status == 200
        latencies.append(time.perf_counter() - started)
    assert set(statuses) == {503}
    assert "/flood" not in calls
    p99 = sorted(latencies)[int(len(latencies) * 0.99)]
    print(f"ordinary client during the flood: p99 {p99 * 1000:.1f} ms")
    assert p99 < 1.0
