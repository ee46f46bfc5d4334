"""--metrics-otel: the same instruments through an OpenTelemetry meter (opentelemetry-api, optional).

Gauges and counters are observable instruments whose callbacks read the counters Metrics keeps. The API
has no observable histogram, so the three histograms are recorded as each request, connection and
handshake ends: that is the part that costs per request, and only with this option. Each serving process
publishes its own numbers; an OpenTelemetry backend sums processes as it sums hosts.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Iterable
from typing import Any

from kestrelpy.errors import ConfigError
from kestrelpy.metrics import instruments as inst
from kestrelpy.metrics.recorder import Metrics, Series, request_attributes

METER_NAME = "kestrelpy"
_MISSING = "--metrics-otel needs the OpenTelemetry API: pip install opentelemetry-api"


def check_installed() -> None:
    """Refuse --metrics-otel before anything starts when the API is not installed."""
    if importlib.util.find_spec("opentelemetry") is None or importlib.util.find_spec("opentelemetry.metrics") is None:
        raise ConfigError(_MISSING)


def _attributes(instrument: inst.Instrument, values: Iterable[str]) -> dict[str, str]:
    return {name: value for name, value in zip(instrument.attributes, values, strict=True) if value}


class OtelMetrics(Metrics):
    """Metrics that also publish through the meter `kestrelpy` of `meter_provider` (the global one by
    default). `upgraded` reads the open WebSockets, which ServerState counts."""

    __slots__ = ("_histograms", "_upgraded")

    def __init__(
        self,
        clock: Callable[[], float],
        handshake_timeout: float,
        upgraded: Callable[[], int],
        meter_provider: Any = None,
    ) -> None:
        super().__init__(clock, handshake_timeout)
        self.index = None  # every request through request_done, which records it here too
        try:
            from opentelemetry import metrics as otel
        except ImportError:
            raise ConfigError(_MISSING) from None
        from kestrelpy import __version__

        self._upgraded = upgraded
        meter = otel.get_meter(METER_NAME, __version__, meter_provider=meter_provider)
        self._histograms = {
            instrument.name: meter.create_histogram(
                instrument.name,
                instrument.unit,
                instrument.description,
                explicit_bucket_boundaries_advisory=instrument.bounds,
            )
            for instrument in (inst.REQUEST_DURATION, inst.CONNECTION_DURATION, inst.TLS_HANDSHAKE_DURATION)
        }
        gauges: list[tuple[inst.Instrument, Callable[[], Iterable[tuple[int, dict[str, str]]]]]] = [
            (inst.ACTIVE_REQUESTS, self._observe_active_requests),
            (inst.ACTIVE_CONNECTIONS, lambda: [(len(self._opened), {})]),
            (inst.REJECTED_CONNECTIONS, lambda: [(self.rejected, {})]),
            (inst.UPGRADED_CONNECTIONS, lambda: [(self._upgraded(), {})]),
            (inst.ACTIVE_TLS_HANDSHAKES, lambda: [(self.active_handshakes(), {})]),
        ]
        for instrument, read in gauges:
            callbacks = [_callback(otel, read)]
            if instrument.kind == "counter":
                meter.create_observable_counter(instrument.name, callbacks, instrument.unit, instrument.description)
            else:
                meter.create_observable_up_down_counter(
                    instrument.name, callbacks, instrument.unit, instrument.description
                )

    def _observe_active_requests(self) -> list[tuple[int, dict[str, str]]]:
        return [(count, _attributes(inst.ACTIVE_REQUESTS, key)) for key, count in self.active_requests().items()]

    def request_done(self, cycle: Any, elapsed: float, aborted: str) -> None:
        super().request_done(cycle, elapsed, aborted)
        scope = cycle.scope
        method = scope["method"] if scope["method"] in inst.KNOWN_METHODS else inst.OTHER_METHOD
        values = request_attributes(method, scope["scheme"], scope["http_version"], cycle.status, aborted)
        attributes: dict[str, str | int] = {**_attributes(inst.REQUEST_DURATION, values)}
        if cycle.status:
            attributes["http.response.status_code"] = cycle.status  # an int, as the conventions say
        self._histograms[inst.REQUEST_DURATION.name].record(elapsed, attributes)

    def _record(self, instrument: inst.Instrument, table: dict[Any, Series], key: Any, value: float) -> None:
        super()._record(instrument, table, key, value)
        self._histograms[instrument.name].record(value, _attributes(instrument, key))


def _callback(otel: Any, read: Callable[[], Iterable[tuple[int, dict[str, str]]]]) -> Callable[[Any], list[Any]]:
    def observe_now(options: Any) -> list[Any]:
        return [otel.Observation(value, attributes) for value, attributes in read()]

    return observe_now
