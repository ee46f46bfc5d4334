"""Attacks on a real loopback server, each bounded in time and count, with an ordinary client measuring
its latency throughout: the server must cut the attacker off and keep answering everyone else."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from kestrelpy.config import Limits
from tests.support.attackers import OrdinaryClient, drip_attack

# Each attack loads the machine and measures an ordinary client's latency meanwhile: one at a time.
pytestmark = pytest.mark.xdist_group("attacks")

Start = Callable[..., Any]


def recording_app(calls: list[str]) -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        calls.append(scope["path"])
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})

    return app


def test_slowloris_heads_get_408_while_others_are_served(running_server: Start, raw_client: Start) -> None:
    """500 connections each dribble a never-ending head; every one is answered 408 and closed within the
    request-headers timeout (plus the heartbeat's second), none reaches the app, and an ordinary client
    keeps being answered meanwhile."""
    calls: list[str] = []
    live = running_server(recording_app(calls), limits=Limits(request_headers_timeout=1.0, keep_alive_timeout=30))
    ordinary = OrdinaryClient(lambda: raw_client(live.port, timeout=5))
    ordinary.start()
    try:
        received, still_open, elapsed = drip_attack(
            live.port, 500, b"GET /slow HTTP/1.1\r\nHost: t\r\n", lambda i: b"X-Drip: 1\r\n", seconds=8, pause=0.2
        )  # one more header line each time, never the blank line
    finally:
        ordinary.stop.set()
        ordinary.join(10)
    assert not still_open, f"{still_open} slow connections still open after {elapsed:.1f}s"
    assert elapsed < 5  # 1 s timeout, up to 2 heartbeats to notice, and scheduling slack
    answered = [data for data in received if data.startswith(b"HTTP/1.1 408 Request Timeout\r\n")]
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


def body_reading_app(calls: list[str], disconnects: list[str]) -> Any:
    """Reads the whole request body, then answers 200; records the path and any disconnect it sees."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        calls.append(scope["path"])
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                disconnects.append(scope["path"])
                return
            if not message["more_body"]:
                break
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})

    return app


def test_stalled_bodies_get_408_while_others_are_served(running_server: Start, raw_client: Start) -> None:
    """200 connections announce a 100 000-byte body, then send 10 bytes of it and either stop or dribble a
    byte every half second. Below the minimum body rate once the grace period is over, every one is
    answered 408 and closed, each app waiting on a body sees http.disconnect, and an ordinary client
    keeps being answered meanwhile."""
    calls: list[str] = []
    disconnects: list[str] = []
    limits = Limits(min_request_body_rate=1000, min_request_body_grace=1.5, keep_alive_timeout=30)
    live = running_server(body_reading_app(calls, disconnects), limits=limits)
    ordinary = OrdinaryClient(lambda: raw_client(live.port, timeout=5))
    ordinary.start()
    opening = b"POST /stalled HTTP/1.1\r\nHost: t\r\nContent-Length: 100000\r\n\r\n" + b"x" * 10
    try:
        # Half dribble one byte each time, the other half say nothing more.
        received, still_open, elapsed = drip_attack(
            live.port, 200, opening, lambda i: b"x" if i % 2 == 0 else b"", seconds=10, pause=0.5
        )
    finally:
        ordinary.stop.set()
        ordinary.join(10)
    assert not still_open, f"{still_open} stalled connections still open after {elapsed:.1f}s"
    answered = [data for data in received if data.startswith(b"HTTP/1.1 408 Request Timeout\r\n")]
    assert len(answered) >= 190, f"only {len(answered)} of 200 read their 408"  # a few may see a reset
    assert calls.count("/stalled") == 200 and disconnects.count("/stalled") == 200
    assert not ordinary.failures, ordinary.failures[:3]
    assert len(ordinary.latencies) > 20
    p99 = ordinary.p99()
    print(f"ordinary client during stalled bodies: {len(ordinary.latencies)} requests, p99 {p99 * 1000:.1f} ms")
    assert p99 < 1.0


def test_slow_readers_of_a_large_stream_are_held_back_then_cut_off(running_server: Start, raw_client: Start) -> None:
    """8 clients ask for a 64 MiB stream sent in 64 KiB pieces and read 1 KiB every 0.2 s. The app's
    send waits on each unread socket, so it gets only a few MiB out per client and the server holds
    little of it; below the minimum response rate each connection is then aborted (the app's send
    raises), and an ordinary client keeps being answered throughout."""
    part = b"z" * (64 * 1024)
    parts = 1024
    readers = 8
    sent: dict[int, int] = {}
    ended: dict[int, BaseException | None] = {}

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] == "/ok":
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
            await send({"type": "http.response.body", "body": b"ok"})
            return
        who = int(scope["query_string"])
        sent[who] = 0
        length = b"%d" % (len(part) * parts)
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", length)]})
        try:
            for i in range(parts):
                await send({"type": "http.response.body", "body": part, "more_body": i < parts - 1})
                sent[who] += len(part)
        except OSError as exc:
            ended[who] = exc
        else:
            ended[who] = None

    limits = Limits(min_response_rate=4 * 1024 * 1024, min_response_grace=1.5)
    live = running_server(app, limits=limits)
    ordinary = OrdinaryClient(lambda: raw_client(live.port, timeout=5))
    ordinary.start()
    clients = [raw_client(live.port, timeout=5, rcvbuf=64 * 1024) for _ in range(readers)]
    for who, client in enumerate(clients):
        client.send(client.request_bytes("GET", f"/big?{who}"))
    read = [0] * readers
    buffered_peak = 0
    started = time.monotonic()
    try:
        while len(ended) < readers and time.monotonic() - started < 15:
            for who, client in enumerate(clients):
                if client.eof:
                    continue
                try:
                    data = client.sock.recv(1024)
                except (ConnectionResetError, TimeoutError):
                    data = b""
                if not data:
                    client.eof = True
                read[who] += len(data)
            buffered = live.call(
                lambda: sum(conn.transport.get_write_buffer_size() for conn in live.server._state.connections)
            )
            buffered_peak = max(buffered_peak, buffered)
            time.sleep(0.2)
    finally:
        ordinary.stop.set()
        ordinary.join(10)
    assert len(ended) == readers, f"{readers - len(ended)} streams neither finished nor were cut off"
    # Held back by backpressure: each app got at most a few MiB out while its client read a few KiB.
    assert max(read) < 1024 * 1024
    assert max(sent.values()) < 16 * 1024 * 1024, sent
    assert all(isinstance(error, OSError) for error in ended.values()), ended  # every send was refused
    assert buffered_peak <= readers * 2 * 1024 * 1024, f"the transports held {buffered_peak} bytes"
    assert not ordinary.failures, ordinary.failures[:3]
    assert len(ordinary.latencies) > 20
    p99 = ordinary.p99()
    mib = sum(sent.values()) / 1024 / 1024
    print(
        f"ordinary client during slow readers: {len(ordinary.latencies)} requests, p99 {p99 * 1000:.1f} ms; "
        f"the app got {mib:.1f} MiB out in all, peak server buffer {buffered_peak / 1024:.0f} KiB"
    )
    assert p99 < 1.0
