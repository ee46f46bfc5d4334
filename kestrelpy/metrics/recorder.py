"""Metrics: what one serving process counts, in plain attributes, and its snapshot.

ServerState holds one when metrics are on (`state.metrics`) and None otherwise, so the protocols pay
one attribute test for it when off. What a protocol calls, whichever protocol it is:

    connection_opened(conn, now, rejected)   when a connection is accepted (after its TLS handshake);
                                             `rejected`: it is refused for --limit-concurrency
    connection_upgraded(old, new)            when another protocol object takes the connection over
    ServerState.connection_closed(conn, why) when it is gone; `why` is the RequestRejection that ended
                                             it, an error.type string, or None
    handshake_started(conn) / handshake_done(conn, ssl_object)   around a TLS handshake
    request_table(scheme, version)           once per connection: what its Streams offer RequestCycle.run
                                             as `request_table`
    clock() / request_done(cycle, elapsed, why)   once per request, as its app starts and ends:
                                             RequestCycle.run counts a whole response whose series is
                                             in its stream's request table itself and calls
                                             request_done for the rest, so a protocol that carries its
                                             requests in RequestCycles has nothing more to do
    conn.active_cycles                       the RequestCycles a connection's apps are answering now,
                                             read for each snapshot (http.server.active_requests):
                                             no per-request cost

Requests are counted by the methods of RFC 9110 (others as `_OTHER`), scheme, HTTP version and status,
so the number of series stays small whatever clients send. Histogram series keep per-bucket counts
(not cumulative) and the sum; the exposition adds them up.
"""

from __future__ import annotations

import weakref
from bisect import bisect_left
from collections.abc import Callable
from typing import Any

from kestrelpy.metrics import instruments as inst
from kestrelpy.protocols.rejection import RequestRejection

Series = list[float]  # a histogram's counts per bucket (the last is +Inf), then the sum of the values
Value = float | Series
Snapshot = dict[str, dict[tuple[str, ...], Value]]  # instrument name -> attribute values -> value
# One scheme's and HTTP version's series of whole responses: method -> series by status, a list (indexing
# one costs less than a dictionary lookup; a status outside 100..999 never reaches it, see check_status).
RequestTable = dict[str, list[Series | None]]

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
# error.type of a connection the server closed on a timeout, as Kestrel names them
KEEP_ALIVE_TIMEOUT = "keep_alive_timeout"
MIN_RESPONSE_DATA_RATE = "min_response_data_rate"


def error_type(why: RequestRejection | str | None) -> str:
    if why is None:
        return ""
    if isinstance(why, RequestRejection):
        return _KESTREL_ERROR_TYPES.get(why) or why.name.lower()
    return why


def new_series(bounds: tuple[float, ...]) -> Series:
    # Counts are floats too (exact to 2**53): adding 1.0 to a float costs less than to an int past 256.
    return [0.0] * (len(bounds) + 2)


def observe(series: Series, bounds: tuple[float, ...], value: float) -> None:
    series[bisect_left(bounds, value)] += 1  # bucket i holds bounds[i-1] < value <= bounds[i]
    series[-1] += value


def tls_version(ssl_object: Any) -> str:
    """`TLSv1.3` -> `1.3`, as tls.protocol.version wants it; "" when unknown."""
    version = ssl_object.version() if ssl_object is not None else None
    return version[4:] if isinstance(version, str) and version.startswith("TLSv") else ""


class Metrics:
    """The counters of one serving process (see the module docstring for who calls what)."""

    __slots__ = (
        "_accepted",
        "_connections",
        "_ending",
        "_handshakes",
        "_opened",
        "_requests",
        "_tls",
        "clock",
        "handshake_timeout",
        "index",
        "rejected",
    )

    def __init__(self, clock: Callable[[], float], handshake_timeout: float = 10.0) -> None:
        self.clock = clock
        self.handshake_timeout = handshake_timeout  # the loop closes a handshake still running after this
        # (method, scheme, version, status, aborted) -> Series; status 0 = none was sent
        self._requests: dict[tuple[str, str, str, int, str], Series] = {}
        # The same series of whole responses, by scheme, version, method and status: what RequestCycle.run
        # looks up itself, in the table of its scheme and version (None: it calls request_done for every
        # request, as OtelMetrics wants).
        self.index: dict[tuple[str, str], RequestTable] | None = {}
        self._opened: dict[object, float] = {}  # live connection -> when it was accepted
        self._accepted: dict[object, float] = {}  # connection past its TLS handshake -> when it was accepted
        self._ending: dict[object, str] = {}  # connection being closed by the server -> the error.type why
        self._connections: dict[tuple[str], Series] = {}  # (error.type,) -> durations of closed connections
        self._handshakes: dict[weakref.ref[Any], float] = {}  # connection in its TLS handshake -> since
        self._tls: dict[tuple[str, str], Series] = {}  # (error.type, TLS version) -> handshake durations
        self.rejected = 0

    # -- requests (RequestCycle.run) --------------------------------------------------------------

    def request_done(self, cycle: Any, elapsed: float, aborted: str) -> None:
        """`cycle`'s app ran for `elapsed` seconds: its response was completed with `cycle.status`
        (`aborted` ""), or cut short for `aborted` (its error.type; `cycle.status` is the status it had
        sent, 0 for none). RequestCycle.run counts a whole response of a series already in `index`
        itself, without a call (a call costs as much as the counting); everything else lands here."""
        observe(self._request_series(cycle, aborted), inst.REQUEST_BOUNDS, elapsed)

    def _request_series(self, cycle: Any, aborted: str) -> Series:
        """The series of a request the index has none for. A method outside KNOWN_METHODS is counted as
        `_OTHER` and never enters the index (it lands here each time), so a client cannot add series
        by inventing methods; aborted requests are rare and stay out of the index too."""
        scope, status = cycle.scope, cycle.status
        method, scheme, version = scope["method"], scope["scheme"], scope["http_version"]
        if method not in inst.KNOWN_METHODS:
            method = inst.OTHER_METHOD
        key = (method, scheme, version, status, aborted)
        series = self._requests.get(key)
        if series is None:
            series = self._requests[key] = new_series(inst.REQUEST_BOUNDS)
        if method != inst.OTHER_METHOD and not aborted and self.index is not None and 100 <= status <= 999:
            table = self.index.setdefault((scheme, version), {})
            by_status = table.get(method)
            if by_status is None:
                by_status = table[method] = [None] * 1000
            by_status[status] = series
        return series

    def request_table(self, scheme: str, version: str) -> RequestTable | None:
        """The index's series of whole responses with this scheme and HTTP version, looked up once per
        connection, so that a request need not read either from its scope (None: RequestCycle.run is
        not to count any itself). A request with others (HTTP/1.0 on an HTTP/1.1 connection, a scheme
        rewritten from forwarded fields) is a ScopeCountedCycle, which looks its own up."""
        return None if self.index is None else self.index.setdefault((scheme, version), {})

    # -- connections ------------------------------------------------------------------------------

    def connection_opened(self, conn: object, now: float, rejected: bool) -> None:
        # A TLS connection counts from its accept, its handshake included, as Kestrel counts it.
        self._opened[conn] = self._accepted.pop(conn, now) if self._accepted else now
        if rejected:
            self.rejected += 1

    def connection_upgraded(self, old: object, new: object) -> None:
        opened = self._opened.pop(old, None)
        if opened is not None:
            self._opened[new] = opened

    def connection_ending(self, conn: object, why: str) -> None:
        """The server is closing `conn` for `why`, an error.type (KEEP_ALIVE_TIMEOUT, ...): its close,
        which follows, is counted with it."""
        if conn in self._opened:
            self._ending[conn] = why

    def connection_closed(self, conn: object, why: RequestRejection | str | None) -> None:
        if self._ending:
            ending = self._ending.pop(conn, None)
            why = why or ending
        opened = self._opened.pop(conn, None)
        if opened is not None:
            self._record(inst.CONNECTION_DURATION, self._connections, (error_type(why),), self.clock() - opened)

    # -- TLS handshakes ---------------------------------------------------------------------------

    def handshake_started(self, conn: object) -> None:
        """`conn` is the protocol a TLS listener made for a connection it accepted: the loop calls its
        connection_made once the handshake is done, and drops it unannounced when the handshake fails,
        which the weak reference notices (so it must be weakly referable and in no reference cycle,
        or the failure is counted only when the garbage collector frees it)."""
        self._handshakes[weakref.ref(conn, self._handshake_failed)] = self.clock()

    def handshake_done(self, conn: object, ssl_object: Any, served_by: object = None) -> None:
        """`conn`'s handshake is done; `served_by`, the connection it hands the transport to, is
        counted from the accept when it opens."""
        started = self._handshakes.pop(weakref.ref(conn), None)
        if started is not None:
            if served_by is not None:
                self._accepted[served_by] = started
            key = ("", tls_version(ssl_object))
            self._record(inst.TLS_HANDSHAKE_DURATION, self._tls, key, self.clock() - started)

    def _handshake_failed(self, ref: weakref.ref[Any]) -> None:
        started = self._handshakes.pop(ref, None)
        if started is not None:
            key = (TLS_HANDSHAKE_FAILED, "")
            self._record(inst.TLS_HANDSHAKE_DURATION, self._tls, key, self.clock() - started)

    def active_handshakes(self) -> int:
        """Handshakes in progress. One older than the handshake timeout has failed even if its protocol
        is not freed yet (on asyncio a failed handshake's exception can hold it until the garbage
        collector runs): it is counted as failed now, at its age."""
        expired = self.clock() - self.handshake_timeout - 0.5
        for ref, started in list(self._handshakes.items()):
            if started < expired:
                self._handshake_failed(ref)
        return len(self._handshakes)

    def _record(self, instrument: inst.Instrument, table: dict[Any, Series], key: Any, value: float) -> None:
        """One value into `table`'s series for `key` (its attribute values, in `instrument`'s order)."""
        series = table.get(key)
        if series is None:
            series = table[key] = new_series(instrument.bounds)
        observe(series, instrument.bounds, value)

    # -- the snapshot -----------------------------------------------------------------------------

    def snapshot(self, *, upgraded: int = 0, queued: int = 0) -> Snapshot:
        """Every instrument's value now, with attribute values as strings ("" = not set). `upgraded`
        and `queued` are gauges the caller reads from where they are kept."""
        requests: dict[tuple[str, ...], Value] = {}
        for (method, scheme, version, status, aborted), series in self._requests.items():
            requests[request_attributes(method, scheme, version, status, aborted)] = list(series)
        return {
            inst.REQUEST_DURATION.name: requests,
            inst.ACTIVE_REQUESTS.name: {key: count for key, count in self.active_requests().items()},
            inst.ACTIVE_CONNECTIONS.name: {(): len(self._opened)},
            inst.CONNECTION_DURATION.name: {key: list(s) for key, s in self._connections.items()},
            inst.REJECTED_CONNECTIONS.name: {(): self.rejected},
            inst.QUEUED_CONNECTIONS.name: {(): queued},
            inst.UPGRADED_CONNECTIONS.name: {(): upgraded},
            inst.TLS_HANDSHAKE_DURATION.name: {key: list(s) for key, s in self._tls.items()},
            inst.ACTIVE_TLS_HANDSHAKES.name: {(): self.active_handshakes()},
        }

    def active_requests(self) -> dict[tuple[str, str], int]:
        """(method, scheme) -> requests whose app is running, read from the open connections; a pair
        once seen stays, at 0 when idle."""
        active = {(method, scheme): 0 for method, scheme, *_ in self._requests}
        for conn in self._opened:
            for cycle in getattr(conn, "active_cycles", ()):
                method = cycle.scope["method"]
                key = (method if method in inst.KNOWN_METHODS else inst.OTHER_METHOD, cycle.scope["scheme"])
                active[key] = active.get(key, 0) + 1
        return active


def request_attributes(method: str, scheme: str, version: str, status: int, aborted: str) -> tuple[str, ...]:
    """A request series' attribute values, in REQUEST_DURATION's order: error.type is why it was cut
    short, or the status of a 5xx."""
    error = aborted or (str(status) if status >= 500 else "")
    return (method, scheme, version, str(status) if status else "", error)
