"""--metrics-bind with several workers: the supervisor serves the sum of every worker's counts, and keeps
the counts of workers that have exited. Real worker processes, real requests, prometheus_client's parser."""

from __future__ import annotations

import os
import signal
import sys
import threading

import pytest

from tests.support.scrape import check_histograms, scrape, scrape_until
from tests.support.supervised import Supervised, get, start

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals drive these tests")

REQUESTS = "http_server_request_duration_seconds_count"
METRICS_AT = r"Metrics at http://127\.0\.0\.1:(\d+)/metrics"


def start_with_metrics(servers: list[Supervised], *args: str) -> tuple[Supervised, int]:
    server = start("sv_apps:pid", "--metrics-bind", "127.0.0.1:0", *args)
    servers.append(server)
    return server, int(server.expect(METRICS_AT).group(1))


def requests_until_both_answer(port: int, at_least: int) -> dict[int, int]:
    """Requests on fresh connections, at least `at_least` and until two workers have answered; how many
    each worker answered."""
    answered: dict[int, int] = {}
    while sum(answered.values()) < at_least or len(answered) < 2:
        assert sum(answered.values()) < 500, answered
        pid = int(get(port)[1])
        answered[pid] = answered.get(pid, 0) + 1
    return answered


def test_two_workers_counts_add_up_exactly_in_one_scrape(servers: list[Supervised]) -> None:
    server, port = start_with_metrics(servers, "--workers", "2")
    answered = requests_until_both_answer(server.port, 30)
    total = sum(answered.values())
    result = scrape_until(port, REQUESTS, total)
    labels = {"http_request_method": "GET", "url_scheme": "http", "network_protocol_version": "1.1"}
    assert result.value(REQUESTS, **labels, http_response_status_code="200") == total
    assert result.value("kestrel_connection_duration_seconds_count") == total
    assert check_histograms(result) == 2
    assert result.value("kestrel_active_connections") == 0
    assert result.value("http_server_active_requests", http_request_method="GET", url_scheme="http") == 0
    assert result.value("kestrelpy_worker_restarts_total") == 0
    server.mark()  # a second look, a snapshot later, counts nothing twice
    assert scrape_until(port, "kestrel_connection_duration_seconds_count", total).total(REQUESTS) == total
    assert scrape(port, "/other").status == 404
    assert get(server.port, "/metrics")[1].isdigit()  # the app's port answers with the app


def test_counts_of_a_worker_that_exits_are_kept(servers: list[Supervised]) -> None:
    server, port = start_with_metrics(servers, "--workers", "2")
    answered = requests_until_both_answer(server.port, 10)
    total = sum(answered.values())
    scrape_until(port, REQUESTS, total)
    victim = next(iter(answered))
    mark = server.mark()
    os.kill(victim, signal.SIGKILL)  # replaced by the supervisor; what it had counted stays
    server.expect(rf"Worker \[{victim}\] .* unexpectedly", after=mark)
    server.expect(r"Worker \[\d+\] is serving", after=mark)
    after = scrape_until(port, "kestrelpy_worker_restarts_total", 1)
    assert after.total(REQUESTS) == total
    more = requests_until_both_answer(server.port, 6)
    assert scrape_until(port, REQUESTS, total + sum(more.values())).value("kestrelpy_worker_restarts_total") == 1


def test_recycled_workers_hand_over_their_last_counts(servers: list[Supervised]) -> None:
    server, port = start_with_metrics(servers, "--workers", "2", "--limit-max-requests", "4")
    mark = server.mark()
    answered = requests_until_both_answer(server.port, 24)
    server.expect(r"Worker \[\d+\] stopped", after=mark)  # a recycled worker has exited
    result = scrape_until(port, REQUESTS, sum(answered.values()), timeout=20)
    assert result.value("kestrelpy_worker_recycles_total") >= 1
    assert result.value("kestrelpy_worker_restarts_total") == 0
    check_histograms(result)


def test_a_worker_replaced_mid_request_reports_that_request_as_it_exits(servers: list[Supervised]) -> None:
    # The request completes while its worker drains, after the worker's last ping: only the snapshot a
    # worker sends as it exits carries it.
    server, port = start_with_metrics(servers, "--workers", "2")
    answered: list[tuple[int, str]] = []
    slow = threading.Thread(target=lambda: answered.append(get(server.port, "/slow?1.5")))
    slow.start()
    pid = int(server.expect(r"slow request started in (\d+)").group(1))
    mark = server.mark()
    server.signal(signal.SIGHUP)  # every worker is replaced, one at a time
    server.expect(rf"Worker \[{pid}\] stopped", after=mark, timeout=30)
    slow.join(10)
    assert answered and answered[0][0] == 200
    result = scrape_until(port, REQUESTS, 1)
    assert result.value("kestrelpy_worker_restarts_total") == 0
    assert result.value("kestrelpy_worker_recycles_total") == 0  # replaced on SIGHUP, not on its own request
