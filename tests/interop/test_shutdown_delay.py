"""--shutdown-delay: after SIGTERM kestrelpy keeps serving (every response says Connection: close) so a
load balancer can take it out of rotation; clients hammering through the whole sequence lose nothing."""

from __future__ import annotations

import http.client
import signal
import threading
import time
from dataclasses import dataclass

import pytest

from tests.support.interop import kestrelpy, listening_urls

DELAY = 3.0
HAMMER_AFTER_DRAIN_STARTS = 1.0  # then the "load balancer" stops sending, well inside the delay


@dataclass
class Outcome:
    sent_at: float
    status: int
    connection: str | None


@pytest.mark.parametrize("workers", ["1", "2"])
def test_shutdown_delay_loses_no_request(workers: str) -> None:
    args = ("--port", "0", "--shutdown-delay", str(DELAY), "--no-access-log", "--workers", workers)
    with kestrelpy(*args) as server:
        url = listening_urls(server, int(workers))[0]
        host, _, port = url.removeprefix("http://").rpartition(":")
        outcomes: list[Outcome] = []
        failures: list[str] = []
        stop = threading.Event()

        def hammer() -> None:
            conn = http.client.HTTPConnection(host, int(port), timeout=20)  # reconnects after a close
            while not stop.is_set():
                sent_at = time.monotonic()
                try:
                    conn.request("GET", "/whoami")
                    response = conn.getresponse()
                    response.read()
                    outcomes.append(Outcome(sent_at, response.status, response.getheader("connection")))
                except Exception as exc:  # every kind of failure counts as a lost request
                    failures.append(repr(exc))
                    conn.close()
            conn.close()

        threads = [threading.Thread(target=hammer) for _ in range(4)]
        for t in threads:
            t.start()
        try:
            while len(outcomes) < 100:
                assert not failures, failures
                time.sleep(0.02)
            server.signal(signal.SIGTERM)
            server.wait_for(r"Serving 3\.0s more before closing the listeners", count=int(workers))
            drain_seen = time.monotonic()
            time.sleep(HAMMER_AFTER_DRAIN_STARTS)
        finally:
            stop.set()
            for t in threads:
                t.join(30)
        assert server.proc.wait(DELAY + 15) == 0
        during = [o for o in outcomes if o.sent_at > drain_seen]
        assert failures == [], failures[:5]
        assert {o.status for o in outcomes} == {200}
        assert len(during) >= 10, f"only {len(during)} requests were sent during the delay"
        assert all(o.connection == "close" for o in during), "a response during the delay kept the connection"
        before = [o for o in outcomes if o.sent_at <= drain_seen]
        assert any(o.connection != "close" for o in before)  # keep-alive was in use until the signal
        print(f"shutdown-delay: {len(outcomes)} requests, {len(during)} during the delay, {len(failures)} failed")
