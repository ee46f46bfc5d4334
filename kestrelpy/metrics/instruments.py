"""What is measured, declared once: the Prometheus exposition, the OpenTelemetry meter and docs/metrics.md
all follow from these declarations.

Connection instruments carry Kestrel's names and meanings (its `Microsoft.AspNetCore.Server.Kestrel`
meter, as OpenTelemetry's semantic conventions record them); request instruments are OpenTelemetry's
HTTP server conventions. Two are the supervisor's own. A name becomes a Prometheus name by
OpenTelemetry's compatibility rules: dots and other invalid characters become underscores, a unit of
seconds adds `_seconds`, a monotonic counter adds `_total`, and an annotation unit such as
`{connection}` adds nothing. Attribute names become label names the same way (`http.request.method`
-> `http_request_method`).
"""

from __future__ import annotations

from dataclasses import dataclass

# Bucket boundaries, in seconds, as the conventions advise for each histogram.
REQUEST_BOUNDS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
CONNECTION_BOUNDS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
TLS_HANDSHAKE_BOUNDS = REQUEST_BOUNDS

# http.request.method: the methods of RFC 9110 section 9 and PATCH (RFC 5789); any other is `_OTHER`,
# as the conventions require, so a client cannot make a series per invented method.
KNOWN_METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"))
OTHER_METHOD = "_OTHER"


@dataclass(frozen=True)
class Instrument:
    name: str  # the OpenTelemetry name
    kind: str  # counter | updown | histogram
    unit: str  # UCUM, as the conventions give it
    description: str
    attributes: tuple[str, ...] = ()
    bounds: tuple[float, ...] = ()  # histograms only

    @property
    def prometheus_name(self) -> str:
        base = self.name.replace(".", "_")
        if self.unit == "s":
            base += "_seconds"
        return base + "_total" if self.kind == "counter" else base

    @property
    def prometheus_type(self) -> str:
        return {"counter": "counter", "updown": "gauge", "histogram": "histogram"}[self.kind]

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(name.replace(".", "_") for name in self.attributes)


REQUEST_DURATION = Instrument(
    "http.server.request.duration",
    "histogram",
    "s",
    "Duration of HTTP server requests.",
    ("http.request.method", "url.scheme", "network.protocol.version", "http.response.status_code", "error.type"),
    REQUEST_BOUNDS,
)
ACTIVE_REQUESTS = Instrument(
    "http.server.active_requests",
    "updown",
    "{request}",
    "Number of active HTTP server requests.",
    ("http.request.method", "url.scheme"),
)
ACTIVE_CONNECTIONS = Instrument(
    "kestrel.active_connections",
    "updown",
    "{connection}",
    "Number of connections that are currently active on the server.",
)
CONNECTION_DURATION = Instrument(
    "kestrel.connection.duration",
    "histogram",
    "s",
    "The duration of connections on the server.",
    ("error.type",),
    CONNECTION_BOUNDS,
)
REJECTED_CONNECTIONS = Instrument(
    "kestrel.rejected_connections",
    "counter",
    "{connection}",
    "Number of connections rejected by the server (over --limit-concurrency).",
)
QUEUED_CONNECTIONS = Instrument(
    "kestrel.queued_connections",
    "updown",
    "{connection}",
    "Number of connections that are currently queued and are waiting to start (the listen backlog).",
)
UPGRADED_CONNECTIONS = Instrument(
    "kestrel.upgraded_connections",
    "updown",
    "{connection}",
    "Number of connections that are currently upgraded (WebSockets).",
)
TLS_HANDSHAKE_DURATION = Instrument(
    "kestrel.tls_handshake.duration",
    "histogram",
    "s",
    "The duration of TLS handshakes on the server.",
    ("error.type", "tls.protocol.version"),
    TLS_HANDSHAKE_BOUNDS,
)
ACTIVE_TLS_HANDSHAKES = Instrument(
    "kestrel.active_tls_handshakes",
    "updown",
    "{handshake}",
    "Number of TLS handshakes that are currently in progress on the server.",
)
WORKER_RESTARTS = Instrument(
    "kestrelpy.worker.restarts",
    "counter",
    "{worker}",
    "Workers replaced after an unexpected exit (a crash, or killed when blocked or stuck starting).",
)
WORKER_RECYCLES = Instrument(
    "kestrelpy.worker.recycles",
    "counter",
    "{worker}",
    "Workers that asked to be replaced (--limit-max-requests or --limit-worker-memory).",
)

# In the order they are shown.
INSTRUMENTS = (
    REQUEST_DURATION,
    ACTIVE_REQUESTS,
    ACTIVE_CONNECTIONS,
    CONNECTION_DURATION,
    REJECTED_CONNECTIONS,
    QUEUED_CONNECTIONS,
    UPGRADED_CONNECTIONS,
    TLS_HANDSHAKE_DURATION,
    ACTIVE_TLS_HANDSHAKES,
    WORKER_RESTARTS,
    WORKER_RECYCLES,
)
BY_NAME = {instrument.name: instrument for instrument in INSTRUMENTS}
