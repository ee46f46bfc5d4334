"""The metrics' pure parts: names, buckets, the text format, snapshots and their sum, the listener's
answers, the --metrics-bind checks."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from kestrelpy.asgi import Receive, Scope, Send
from kestrelpy.config import Config
from kestrelpy.errors import ConfigError
from kestrelpy.metrics import instruments as inst
from kestrelpy.metrics.exposition import render
from kestrelpy.metrics.listener import answer, reply_to
from kestrelpy.metrics.recorder import Metrics, error_type, new_series, observe
from kestrelpy.metrics.snapshot import Aggregate, decode, encode
from kestrelpy.protocols.cycle import RequestCycle
from kestrelpy.protocols.rejection import RequestRejection


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_prometheus_names_follow_the_opentelemetry_mapping() -> None:
    assert [i.prometheus_name for i in inst.INSTRUMENTS] == [
        "http_server_request_duration_seconds",
        "http_server_active_requests",
        "kestrel_active_connections",
        "kestrel_connection_duration_seconds",
        "kestrel_rejected_connections_total",
        "kestrel_queued_connections",
        "kestrel_upgraded_connections",
        "kestrel_tls_handshake_duration_seconds",
        "kestrel_active_tls_handshakes",
        "kestrelpy_worker_restarts_total",
        "kestrelpy_worker_recycles_total",
    ]
    assert inst.REQUEST_DURATION.labels == (
        "http_request_method",
        "url_scheme",
        "network_protocol_version",
        "http_response_status_code",
        "error_type",
    )


def test_a_value_on_a_bound_falls_in_that_bounds_bucket() -> None:
    bounds = (0.1, 1.0)
    series = new_series(bounds)
    for value in (0.1, 0.5, 1.0, 7.0):
        observe(series, bounds, value)
    assert series == [1, 2, 1, 8.6]


class Cycle:
    """What the recorder reads of a RequestCycle."""

    def __init__(self, method: str, status: int) -> None:
        self.scope = {"method": method, "scheme": "http", "http_version": "1.1"}
        self.status = status


class Connection:
    def __init__(self, *cycles: Cycle) -> None:
        self.active_cycles = cycles


class Stream:
    """What a RequestCycle needs of the protocol carrying its request, without a wire."""

    def __init__(self, metrics: Metrics) -> None:
        self.state = SimpleNamespace(metrics=metrics, access_log=False, clock=metrics.clock)
        self.flow = SimpleNamespace(write_paused=False)
        self.response_on_wire = False
        self.request_table = metrics.request_table("http", "1.1")

    def start_response(self, status: int, headers: object, trailers: bool) -> None:
        pass

    def send_body(self, body: bytes, more_body: bool) -> None:
        self.response_on_wire = True

    def fail_response(self, status: int, body: bytes) -> None:
        self.response_on_wire = True

    def complete_response(self, cycle: RequestCycle) -> float | None:
        return self.completed_at

    completed_at: float | None = None  # the clock the stream read as the response completed, if it did

    def abort(self) -> None:
        pass


def serve(
    metrics: Metrics,
    clock: Clock,
    method: str,
    status: int,
    elapsed: float,
    *,
    whole: bool = True,
    completed_at: float | None = None,
) -> None:
    """One request through RequestCycle.run, whose app takes `elapsed` seconds by `clock` and completes its
    response (`whole`) or raises after the first part of its body. `completed_at`: the clock the stream
    read as the response completed."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        clock.now += elapsed
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b"x", "more_body": not whole})
        if not whole:
            raise RuntimeError("cut short")

    scope = {"type": "http", "method": method, "scheme": "http", "http_version": "1.1"}
    stream: Any = Stream(metrics)
    stream.completed_at = completed_at
    asyncio.run(RequestCycle(stream, scope, False).run(app))


def test_requests_are_counted_with_other_methods_folded_and_errors_typed() -> None:
    clock = Clock()
    metrics = Metrics(clock)
    serve(metrics, clock, "GET", 200, 0.02)
    for _ in range(2):
        serve(metrics, clock, "BREW", 503, 0.0)
    serve(metrics, clock, "GET", 200, 0.0, whole=False)
    metrics.connection_opened(Connection(Cycle("GET", 0)), clock(), False)  # its app is answering it
    requests = metrics.snapshot()[inst.REQUEST_DURATION.name]
    assert sorted(requests) == [
        ("GET", "http", "1.1", "200", ""),
        ("GET", "http", "1.1", "200", "app_error"),
        ("_OTHER", "http", "1.1", "503", "503"),
    ]
    assert requests[("GET", "http", "1.1", "200", "")] == [0, 0, 1, *[0] * 12, pytest.approx(0.02)]
    assert requests[("_OTHER", "http", "1.1", "503", "503")] == [2, *[0] * 14, 0.0]
    assert metrics.snapshot()[inst.ACTIVE_REQUESTS.name] == {("GET", "http"): 1, ("_OTHER", "http"): 0}


def test_the_request_fast_path_literals_match_the_bounds() -> None:
    # RequestCycle.run writes the first three bounds and the sum's index as literals
    assert inst.REQUEST_BOUNDS[:3] == (0.005, 0.01, 0.025)
    assert len(new_series(inst.REQUEST_BOUNDS)) == 16


def test_the_request_fast_path_buckets_as_observe_does() -> None:
    clock = Clock()
    metrics = Metrics(clock)
    expected = new_series(inst.REQUEST_BOUNDS)
    # the first request of a series makes it; the others find it in the index (RequestCycle.run's own path)
    for elapsed in (0.0, 0.001, 0.005, 0.0075, 0.01, 0.02, 0.025, 0.03, 0.5, 11.0):
        clock.now = 0.0  # from 0, a value on a bound is the bound exactly
        serve(metrics, clock, "GET", 200, elapsed)
        observe(expected, inst.REQUEST_BOUNDS, elapsed)
    assert metrics.index is not None and metrics.index["http", "1.1"]["GET"][200] is not None
    assert metrics.snapshot()[inst.REQUEST_DURATION.name][("GET", "http", "1.1", "200", "")] == expected


def test_a_request_ends_at_the_clock_its_stream_read_as_the_response_completed() -> None:
    clock = Clock()
    metrics = Metrics(clock)
    for _ in range(2):  # the first makes the series, the second is counted by RequestCycle.run itself
        started = clock.now
        serve(metrics, clock, "GET", 200, 0.5, completed_at=started + 0.002)
    series = metrics.snapshot()[inst.REQUEST_DURATION.name][("GET", "http", "1.1", "200", "")]
    assert series == [2, *[0] * 14, pytest.approx(0.004)]


def test_a_connection_is_timed_across_an_upgrade_and_typed_by_its_rejection() -> None:
    clock = Clock()
    metrics = Metrics(clock)
    http, ws, refused = object(), object(), object()
    metrics.connection_opened(http, clock(), False)
    metrics.connection_opened(refused, clock(), True)
    metrics.connection_upgraded(http, ws)
    assert metrics.snapshot()[inst.ACTIVE_CONNECTIONS.name] == {(): 2}
    clock.now += 3
    metrics.connection_closed(refused, RequestRejection.TOO_MANY_CONNECTIONS)
    metrics.connection_closed(http, None)  # handed over: counted when the WebSocket ends
    metrics.connection_closed(ws, None)
    snapshot = metrics.snapshot()
    durations = snapshot[inst.CONNECTION_DURATION.name]
    assert set(durations) == {("max_concurrent_connections_exceeded",), ("",)}
    assert durations[("",)] == [*[0] * 8, 1, *[0] * 6, 3.0]  # 2 < 3 <= 5
    assert snapshot[inst.REJECTED_CONNECTIONS.name] == {(): 1}
    assert snapshot[inst.ACTIVE_CONNECTIONS.name] == {(): 0}


def test_error_types_are_kestrels_where_it_names_the_cause() -> None:
    assert error_type(RequestRejection.BODY_TOO_LARGE) == "max_request_body_size_exceeded"
    assert error_type(RequestRejection.MISSING_HOST) == "missing_host"
    assert error_type("io_error") == "io_error"
    assert error_type(None) == ""


def test_the_text_format_reads_back_with_prometheus_clients_parser() -> None:
    metrics = Metrics(Clock())
    metrics.request_done(Cycle("GET", 200), 0.001, 'odd "reason"\\\n')
    families = {f.name: f for f in text_string_to_metric_families(render(metrics.snapshot()))}
    assert set(families) == {i.prometheus_name.removesuffix("_total") for i in inst.INSTRUMENTS}
    samples = families["http_server_request_duration_seconds"].samples
    assert samples[0].labels["error_type"] == 'odd "reason"\\\n'
    assert "http_response_status_code" in samples[0].labels
    assert families["kestrel_rejected_connections"].type == "counter"
    assert families["kestrel_rejected_connections"].samples[0].value == 0


def test_a_snapshot_survives_the_channel_and_garbage_does_not_pass() -> None:
    metrics = Metrics(Clock())
    metrics.connection_opened(object(), 100.0, True)
    snapshot = metrics.snapshot(upgraded=2, queued=1)
    assert decode(encode(snapshot)) == snapshot
    line = encode(snapshot)
    assert decode(line[: len(line) // 2]) is None
    assert decode('{"kestrel.nothing": []}') is None
    assert decode('{"kestrel.connection.duration": [["", [1, 2]]]}') is None  # not a histogram's length
    assert decode("[]") is None


def test_the_sum_keeps_an_exited_workers_counters_but_not_its_gauges() -> None:
    first, second = Metrics(Clock()), Metrics(Clock())
    for metrics in (first, second):
        metrics.connection_opened(object(), 100.0, True)
    total = Aggregate()
    total.update(1, encode(first.snapshot()))
    total.update(2, encode(second.snapshot()))
    total.update(2, "not json")  # ignored: the last good snapshot stays
    assert total.total()[inst.REJECTED_CONNECTIONS.name] == {(): 2}
    assert total.total()[inst.ACTIVE_CONNECTIONS.name] == {(): 2}
    total.worker_exited(1)
    total.restarts += 1
    summed = total.total(queued=3)
    assert summed[inst.REJECTED_CONNECTIONS.name] == {(): 2}
    assert summed[inst.ACTIVE_CONNECTIONS.name] == {(): 1}
    assert summed[inst.QUEUED_CONNECTIONS.name] == {(): 3}
    assert summed[inst.WORKER_RESTARTS.name] == {(): 1}


@pytest.mark.parametrize(
    ("head", "status"),
    [
        (b"GET /metrics HTTP/1.1\r\n\r\n", 200),
        (b"GET /metrics?x=1 HTTP/1.0\r\n\r\n", 200),
        (b"GET / HTTP/1.1\r\n\r\n", 404),
        (b"GET /metrics/ HTTP/1.1\r\n\r\n", 404),
        (b"DELETE /metrics HTTP/1.1\r\n\r\n", 405),
        (b"GET /metrics\r\n\r\n", 400),
        (b"\x16\x03\x01\x02\x00\r\n\r\n", 400),
    ],
)
def test_the_listener_answers_get_metrics_and_nothing_else(head: bytes, status: int) -> None:
    assert answer(head, lambda: "x 1\n").startswith(b"HTTP/1.1 %d " % status)


def test_the_listener_waits_for_a_whole_head_and_refuses_a_huge_one() -> None:
    assert reply_to(b"GET /metrics HTTP/1.1\r\nHost: x\r\n", lambda: "") is None
    assert (reply_to(b"x" * 9000, lambda: "") or b"").startswith(b"HTTP/1.1 431 ")


def test_metrics_bind_must_not_be_the_apps_port() -> None:
    with pytest.raises(ConfigError, match=r"--metrics-bind 127\.0\.0\.1:8000 is the app's endpoint"):
        Config(app="a:b", port=8000, metrics_bind="127.0.0.1:8000")
    with pytest.raises(ConfigError, match="is the app's endpoint"):
        Config(app="a:b", host="0.0.0.0", port=8000, metrics_bind=":8000")
    with pytest.raises(ConfigError, match="--metrics-bind 'nonsense'"):
        Config(app="a:b", metrics_bind="nonsense")
    assert Config(app="a:b", port=8000, metrics_bind="127.0.0.1:9100").metrics_endpoint() is not None
    assert Config(app="a:b", port=0, metrics_bind="127.0.0.1:0").metrics_endpoint() is not None


class Handshake:
    """Stands for the protocol a TLS listener makes: weakly referable, in no reference cycle."""


def test_a_handshake_is_timed_to_its_end_or_counted_failed_when_dropped_or_too_old() -> None:
    clock = Clock()
    metrics = Metrics(clock, handshake_timeout=10.0)
    done, dropped, stuck = Handshake(), Handshake(), Handshake()
    for handshake in (done, dropped, stuck):
        metrics.handshake_started(handshake)
    clock.now += 0.02
    metrics.handshake_done(done, None)
    del dropped  # the loop lets go of a failed handshake's protocol without a word
    assert metrics.active_handshakes() == 1
    clock.now += 11.0  # past the timeout: the loop has closed it, whether or not it is freed yet
    assert metrics.active_handshakes() == 0
    tls = metrics.snapshot()[inst.TLS_HANDSHAKE_DURATION.name]
    sums = {key: value[-1] for key, value in tls.items() if isinstance(value, list)}
    assert sums == {("", ""): pytest.approx(0.02), ("tls_handshake_failed", ""): pytest.approx(0.02 + 11.02)}
    assert stuck is not None
