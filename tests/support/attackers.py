"""Attackers and their yardstick: non-blocking sockets that dribble requests at a server, and an ordinary
client that keeps asking for /ok meanwhile and times every answer."""

from __future__ import annotations

import errno
import socket
import threading
import time
from collections.abc import Callable
from typing import Any


def poll_read(sock: socket.socket) -> bytes | None:
    """What a non-blocking attacker socket has received: None for nothing yet, b"" once it is closed."""
    try:
        return sock.recv(4096)
    except BlockingIOError:
        return None
    except ConnectionResetError:
        return b""


def poll_send(sock: socket.socket, data: bytes) -> None:
    """Send from a non-blocking attacker socket, ignoring a full buffer or a connection already gone."""
    try:
        sock.send(data)
    except BlockingIOError:
        pass
    except OSError as exc:
        if exc.errno not in (errno.EPIPE, errno.ECONNRESET):
            raise


def drip_attack(
    port: int, count: int, opening: bytes, drip: Callable[[int], bytes], *, seconds: float, pause: float
) -> tuple[list[bytes], int, float]:
    """Open `count` non-blocking connections that each send `opening`; then every `pause` seconds send
    `drip(i)` (nothing when empty) on each one still open, collecting what the server answers, until the
    server has closed them all or `seconds` pass. Returns what each received, how many were still open,
    and how long it took. The sockets are closed on the way out."""
    attackers = []
    try:
        for _ in range(count):
            sock = socket.create_connection(("127.0.0.1", port))
            sock.setblocking(False)
            attackers.append(sock)
            sock.send(opening)
        received = [b""] * count
        still_open = set(range(count))
        started = time.monotonic()
        while still_open and time.monotonic() - started < seconds:
            for i in list(still_open):
                data = poll_read(attackers[i])
                if data == b"":
                    still_open.discard(i)
                    continue
                if data:
                    received[i] += data
                more = drip(i)
                if more:
                    poll_send(attackers[i], more)
            time.sleep(pause)
        return received, len(still_open), time.monotonic() - started
    finally:
        for sock in attackers:
            sock.close()


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
