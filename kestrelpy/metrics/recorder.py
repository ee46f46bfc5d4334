"""Metrics: what one serving process counts, in plain attributes, and its snapshot.

ServerState holds one when metrics are on (`state.metrics`) and None otherwise, so the protocols pay
one attribute test for it when off. What a protocol calls, whichever protocol it is:

    connection_opened(conn, now, rejected)   when a connection is accepted (after its TLS handshake);
                                             `rejected`: it is refused for --limit-concurrency
    connection_upgraded(old, new)            when another protocol object takes the connection over
    ServerState.connection_closed(conn, why) when it is gone; `why` is the RequestRejection that ended
                                             it, an error.type string, or None
    handshake_started(conn) / handshake_done(conn, ssl_object)   around a TLS handshake
    request_started(scope) / request_ended(scope, started, status, aborted)   once per request; the
                                             RequestCycle calls these, so a protocol that carries its
                                             requests in a RequestCycle has nothing more to do

Requests are counted by the methods of RFC 9110 (others as `_OTHER`), scheme, HTTP version and status,
so the number of series stays small whatever clients send. Histogram series keep per-bucket counts
(not cumulative) and the sum; the exposition adds them up.
"""

from __future__ import annotations

import weakref
from bisect import bisect_left
from collections.abc import Callable, Mapping
from typing import Any

from kestrelpy.metrics import instruments as inst
from kestrelpy.protocols.rejection import RequestRejection

Series = list[float]  # a histogram's counts per bucket (the last is +Inf), then the sum of the values
Value = float | Series
Snapshot = dict[str, dict[tuple[str, ...], Value]]  # instrument name -> attribute values -> value

# error.type of a connection a rejection ended: Kestrel's value where it names the same cause, else the
# rejection's own name (Kestrel lumps the others together as invalid_request_headers / _line).
_KESTREL_ERROR_TYPES = {
    RequestRejection.TOO_MANY_CONNECTIONS: "max_concurrent_connections_exceeded",
    RequestRejection.BODY_TOO_LARGE: "max_request_body_size_exceeded",
    RequestRejection.TOO_MANY_HEADERS: "max_request_header_count_exceeded",
    RequestRejection.HEADERS_TOO_LARGE: "max_request_headers_total_size_exceeded",
    RequestRejection.REQUEST_HEADERS_TIMEOUT: "request_headers_timeout",
    RequestRejection.REQUEST_BODY_TIMEOUT: "min_request_body_data_rate",
    RequestRejection.UNSUPPORTED_HTTP_VERSION: "invalid_http_version",
}
TLS_HANDSHAKE_FAILED = "tls_handshake_failed"


def error_type(why: RequestRejection | str | None) -> str:
    if why is None:
        return ""
    if isinstance(why, RequestRejection):
        return _KESTREL_ERROR_TYPES.get(why) or why.name.lower()
    return why


def new_series(bounds: tuple[float, ...]) -> Series:
    return [0] * (len(bounds) + 1) + [0.0]


def observe(series: Series, bounds: tuple[float, ...], value: float) -> None:
    series[bisect_left(bounds, value)] += 1  # bucket i holds bounds[i-1] < value <= bounds[i]
    series[-1] += value


def series_count(series: Series) -> int:
    return int(sum(series[:-1]))


def tls_version(ssl_object: Any) -> str:
    """`TLSv1.3` -> `1.3`, as tls.protocol.version wants it; "" when unknown."""
    version = ssl_object.version() if ssl_object is not None else None
    return version[4:] if isinstance(version, str) and version.startswith("TLSv") else ""


class Metrics:
    """The counters of one serving process (see the module docstring for who calls what)."""

    __slots__ = ("_connections", "_handshakes", "_opened", "_requests", "_started", "_tls", "clock", "rejected")

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        # (method, scheme, version, status, aborted) -> Series; status 0 = none was sent
        self._requests: dict[tuple[str, str, str, int, str], Series] = {}
        self._started: dict[tuple[str, str], int] = {}  # (method, scheme) -> requests begun
        self._opened: dict[object, float] = {}  # live connection -> when it was accepted
        self._connections: dict[str, Series] = {}  # error.type -> durations of closed connections
        self._handshakes: dict[weakref.ref[Any], float] = {}  # connection in its TLS handshake -> since
        self._tls: dict[tuple[str, str], Series] = {}  # (error.type, TLS version) -> handshake durations
        self.rejected = 0

    # -- requests (RequestCycle.run) --------------------------------------------------------------

    def request_started(self, scope: Mapping[str, Any]) -> float:
        method = scope["method"]
        key = (method if method in inst.KNOWN_METHODS else inst.OTHER_METHOD, scope["scheme"])
        started = self._started
        started[key] = started.get(key, 0) + 1
        return self.clock()

    def request_ended(self, scope: Mapping[str, Any], started: float, status: int, aborted: str) -> None:
        """`status`: the one sent (0: none); `aborted`: why the response was cut short ("" if it was not)."""
        elapsed = self.clock() - started
        method = scope["method"]
        if method not in inst.KNOWN_METHODS:
            method = inst.OTHER_METHOD
        key = (method, scope["scheme"], scope["http_version"], status, aborted)
        series = self._requests.get(key)
        if series is None:
            series = self._requests[key] = new_series(inst.REQUEST_BOUNDS)
        observe(series, inst.REQUEST_BOUNDS, elapsed)

    # -- connections ------------------------------------------------------------------------------

    def connection_opened(self, conn: object, now: float, rejected: bool) -> None:
        self._opened[conn] = now
        if rejected:
            self.rejected += 1

    def connection_upgraded(self, old: object, new: object) -> None:
        opened = self._opened.pop(old, None)
        if opened is not None:
            self._opened[new] = opened

    def connection_closed(self, conn: object, why: RequestRejection | str | None) -> None:
        opened = self._opened.pop(conn, None)
        if opened is not None:
            self._record(self._connections, error_type(why), inst.CONNECTION_BOUNDS, self.clock() - opened)

    # -- TLS handshakes ---------------------------------------------------------------------------

    def handshake_started(self, conn: object) -> None:
        """`conn` is the protocol a TLS listener made for a connection it accepted: the loop calls its
        connection_made once the handshake is done, and drops it unannounced when the handshake fails,
        which the weak reference notices (failures are counted when the loop lets go of it)."""
        self._handshakes[weakref.ref(conn, self._handshake_failed)] = self.clock()

    def handshake_done(self, conn: object, ssl_object: Any) -> None:
        started = self._handshakes.pop(weakref.ref(conn), None)
        if started is not None:
            key = ("", tls_version(ssl_object))
            self._record(self._tls, key, inst.TLS_HANDSHAKE_BOUNDS, self.clock() - started)

    def _handshake_failed(self, ref: weakref.ref[Any]) -> None:
        started = self._handshakes.pop(ref, None)
        if started is not None:
            key = (TLS_HANDSHAKE_FAILED, "")
            self._record(self._tls, key, inst.TLS_HANDSHAKE_BOUNDS, self.clock() - started)

    @staticmethod
    def _record(table: dict[Any, Series], key: Any, bounds: tuple[float, ...], value: float) -> None:
        series = table.get(key)
        if series is None:
            series = table[key] = new_series(bounds)
        observe(series, bounds, value)

    # -- the snapshot -----------------------------------------------------------------------------

    def snapshot(self, *, upgraded: int = 0, queued: int = 0) -> Snapshot:
        """Every instrument's value now, with attribute values as strings ("" = not set). `upgraded`
        and `queued` are gauges the caller reads from where they are kept."""
        requests: dict[tuple[str, ...], Value] = {}
        ended: dict[tuple[str, str], int] = {}
        for (method, scheme, version, status, aborted), series in self._requests.items():
            error = aborted or (str(status) if status >= 500 else "")
            requests[(method, scheme, version, str(status) if status else "", error)] = list(series)
            ended[(method, scheme)] = ended.get((method, scheme), 0) + series_count(series)
        active: dict[tuple[str, ...], Value] = {key: count - ended.get(key, 0) for key, count in self._started.items()}
        return {
            inst.REQUEST_DURATION.name: requests,
            inst.ACTIVE_REQUESTS.name: active,
            inst.ACTIVE_CONNECTIONS.name: {(): len(self._opened)},
            inst.CONNECTION_DURATION.name: {(error,): list(s) for error, s in self._connections.items()},
            inst.REJECTED_CONNECTIONS.name: {(): self.rejected},
            inst.QUEUED_CONNECTIONS.name: {(): queued},
            inst.UPGRADED_CONNECTIONS.name: {(): upgraded},
            inst.TLS_HANDSHAKE_DURATION.name: {key: list(s) for key, s in self._tls.items()},
            inst.ACTIVE_TLS_HANDSHAKES.name: {(): len(self._handshakes)},
        }
