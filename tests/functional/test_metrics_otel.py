"""--metrics-otel: a real server publishes through the global OpenTelemetry meter provider, read here by the
SDK's in-memory reader."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from opentelemetry import metrics as otel
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from tests.support.live_server import LiveServer
from tests.support.raw_client import RawClient
from tests.support.waiting import WAIT, wait_until

# The global provider can be set once per process: these tests share one, in one xdist group.
pytestmark = pytest.mark.xdist_group("otel-global-provider")


@pytest.fixture(scope="module")
def reader() -> Iterator[InMemoryMetricReader]:
    in_memory = InMemoryMetricReader()
    otel.set_meter_provider(MeterProvider(metric_readers=[in_memory]))
    yield in_memory


async def app(scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


def points(reader: InMemoryMetricReader) -> dict[str, list[Any]]:
    """Instrument name -> its data points, from the meter `kestrelpy` (summed over every collection so far:
    the SDK's default temporality is cumulative)."""
    found: dict[str, list[Any]] = {}
    data = reader.get_metrics_data()
    for resource in data.resource_metrics if data is not None else ():
        for scope in resource.scope_metrics:
            if scope.scope.name == "kestrelpy":
                for metric in scope.metrics:
                    found.setdefault(metric.name, []).extend(metric.data.data_points)
    return found


def test_the_instruments_are_published_through_the_global_meter(
    serve_app: Callable[..., LiveServer], reader: InMemoryMetricReader
) -> None:
    live = serve_app(app, metrics_otel=True)
    assert live.server is not None and live.server.metrics_address is None  # no Prometheus listener asked for
    for _ in range(3):
        assert httpx.get(live.url, timeout=WAIT).text == "ok"
    held = RawClient(live.port)
    held.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
    assert held.read_response().status == 200

    found: dict[str, list[Any]] = {}

    def collected() -> bool:
        found.clear()
        found.update(points(reader))
        return sum(p.count for p in found.get("http.server.request.duration", [])) == 4

    assert wait_until(collected), found
    (request,) = found["http.server.request.duration"]
    assert dict(request.attributes) == {
        "http.request.method": "GET",
        "url.scheme": "http",
        "network.protocol.version": "1.1",
        "http.response.status_code": 200,
    }
    advised = [0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0]  # the conventions'
    assert list(request.explicit_bounds) == advised
    assert [p.value for p in found["kestrel.active_connections"]] == [1]  # the held one
    assert sum(p.count for p in found["kestrel.connection.duration"]) == 3
    assert [p.value for p in found["kestrel.rejected_connections"]] == [0]
    active = {tuple(sorted(p.attributes.items())): p.value for p in found["http.server.active_requests"]}
    assert active == {(("http.request.method", "GET"), ("url.scheme", "http")): 0}
    held.close()
